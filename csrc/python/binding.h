/* binding.h — what the files of metalearn._core share. Only csrc/python/ includes Python.h.
 *
 * The binding is laid out as CPython's Modules/_sqlite: one Python type per file
 * (tensor.c with indexing.c, optimizer.c, trace.c, memory.c), the module functions by
 * subject (ops.c, grad.c, files.c, runtime.c, nn.c, tasks.c), the conversions every file
 * uses (convert.c), and module.c, which only creates the module and registers the parts.
 * Every name shared between the files starts with mlpy_ (MLPY_ for macros).
 *
 * Every call has the same shape: parse -> convert to ml_tensor (with the GIL) -> validate
 * -> compute (the GIL released when the work is large) -> map the status to an exception
 * -> release at one place. Whatever the C call reads stays referenced by the call itself
 * while the GIL is released: another thread may meanwhile drop the caller's references.
 */
#ifndef MLPY_BINDING_H
#define MLPY_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#endif
#define PY_ARRAY_UNIQUE_SYMBOL metalearn_ARRAY_API
#ifndef MLPY_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stdint.h>
#include <string.h>

#include "metalearn.h"

/* ------------------------------------------------------------ Tensor (tensor.c) */

typedef struct {
    PyObject_HEAD ml_tensor *t;
    PyObject *weakreflist;
    Py_ssize_t bshape[ML_MAX_DIMS]; /* buffer protocol shape/strides */
    Py_ssize_t bstrides[ML_MAX_DIMS];
} mlpy_TensorObject;

extern PyTypeObject mlpy_TensorType;

#define mlpy_Tensor_Check(o) PyObject_TypeCheck(o, &mlpy_TensorType)
/* The ml_tensor of a Tensor (borrowed). */
#define MLPY_T(o) (((mlpy_TensorObject *)(o))->t)

/* Tensor(data, requires_grad=False): the type's tp_new, also _core.tensor. */
PyObject *mlpy_tensor_new(PyTypeObject *type, PyObject *args, PyObject *kwds);
/* a (op) b for Tensors, numbers and array-likes: the number protocol's path and the
 * module's add/subtract/... ; `name` names the op in conversion errors. */
typedef ml_status (*mlpy_binary_fn)(ml_tensor **, ml_tensor *, ml_tensor *);
PyObject *mlpy_binary(PyObject *a, PyObject *b, mlpy_binary_fn fn, const char *name);
/* sum/mean/max of x over axis (None, an int or a tuple; () reduces nothing). */
typedef ml_status (*mlpy_reduce_fn)(ml_tensor **, ml_tensor *, int, const int *, int);
PyObject *mlpy_reduce(ml_tensor *x, PyObject *axis, int keepdims, mlpy_reduce_fn fn,
                      const char *name);
/* t[key] (indexing.c): NumPy's basic indexing, one integer array or one boolean mask. */
PyObject *mlpy_tensor_getitem(mlpy_TensorObject *self, PyObject *key);

/* ------------------------------------------------------ conversions (convert.c) */

/* Elements an op touches from which the binding releases the GIL around it; a smaller op
 * returns before another thread would gain anything from the GIL. */
#define MLPY_BIG_WORK 32768

/* Runs a C call, releasing the GIL when `work` (elements touched) is large. */
#define MLPY_CALL(st, work, expr)                 \
    do {                                          \
        if ((work) >= MLPY_BIG_WORK) {            \
            Py_BEGIN_ALLOW_THREADS(st) = (expr);  \
            Py_END_ALLOW_THREADS                  \
        } else {                                  \
            (st) = (expr);                        \
        }                                         \
    } while (0)

/* t's shape as "(3, 4)", in a buffer that lives to the end of the enclosing block. */
#define MLPY_SHAPE_STR(t) ml_shape_str((char[160]){0}, 160, ml_ndim(t), ml_shape(t))

/* Sets the Python exception for a failed status (message from ml_last_error) -> NULL. */
PyObject *mlpy_raise_status(ml_status st);
/* Wraps a new ml_tensor reference (stolen) in a Tensor; NULL t: the error is set. */
PyObject *mlpy_wrap(ml_tensor *t);
/* mlpy_raise_status(st) on failure, else mlpy_wrap(*out). */
PyObject *mlpy_wrap_status(ml_status st, ml_tensor **out);
/* The name of o's type, for messages. */
const char *mlpy_type_name(PyObject *o);
/* A Tensor, number or array-like to a new ml_tensor reference (NULL with an exception).
 * Tensors are shared; numbers and arrays copied. */
ml_tensor *mlpy_as_ml(PyObject *o, const char *what);
/* Integer array-like to a C-contiguous int64 ndarray. */
PyArrayObject *mlpy_to_index_array(PyObject *obj, const char *what);
/* Tuple/list of ints (one -1 inferred from numel when numel >= 0). */
int mlpy_parse_shape(PyObject *obj, int *ndim, int64_t *shape, int64_t numel, const char *what);
/* One axis argument (an int or an object with __index__; NULL gives dflt): a TypeError
 * for other types, a ValueError for a value outside the C int range. 0 or -1. */
int mlpy_axis_arg(PyObject *obj, int dflt, int *axis, const char *what);
/* axis=None | int | sequence -> n (0: all; -1: the empty tuple) and axes. */
int mlpy_parse_axes(PyObject *obj, int *n, int *axes, const char *what);
/* perm=None | a sequence of t's rank of axes -> perm, *have (0 for None). */
int mlpy_parse_perm(PyObject *obj, const ml_tensor *t, int *perm, int *have);

/* How mlpy_tensor_array reads a list (a named bit set). */
enum {
    MLPY_LIST_ONE = 1u << 0,     /* a lone Tensor (or ndarray, with CONVERT) is a list of one */
    MLPY_LIST_CONVERT = 1u << 1, /* entries may be numbers or array-likes (copied) */
    MLPY_LIST_NONE = 1u << 2,    /* None entries are left NULL */
};
/* The tensors of a sequence as a new array of new references (mlpy_release_tensors
 * frees both), *n its length; NULL with an exception. The references are the call's own:
 * another thread may empty the caller's list while the call runs without the GIL.
 * Messages name `fn` and the argument `arg` ("grad: inputs[1] must be a Tensor"). */
ml_tensor **mlpy_tensor_array(PyObject *obj, Py_ssize_t *n, const char *fn, const char *arg,
                              unsigned how);
/* Releases ts[0..n) (NULL entries allowed) and frees the array (NULL allowed). */
void mlpy_release_tensors(ml_tensor **ts, Py_ssize_t n);
/* A list of n Tensors (None for NULL entries) taking the references in outs (stolen,
 * entries set to NULL); NULL with an exception (every reference released). */
PyObject *mlpy_tensor_list(ml_tensor **outs, Py_ssize_t n);

/* --------------------------------------------------------------- the other parts */

/* Method tables of the binding's files, registered by module.c. */
extern PyMethodDef mlpy_ops_methods[];
extern PyMethodDef mlpy_grad_methods[];
extern PyMethodDef mlpy_files_methods[];
extern PyMethodDef mlpy_runtime_methods[];
extern PyMethodDef mlpy_optimizer_methods[];
extern PyMethodDef mlpy_trace_methods[];
extern PyMethodDef mlpy_nn_methods[];
extern PyMethodDef mlpy_memory_methods[];
extern PyMethodDef mlpy_tasks_methods[];
/* Each adds its part's types (or warnings) to the module: 0, or -1 with an exception. */
int mlpy_tensor_init(PyObject *module);
int mlpy_optimizer_init(PyObject *module);
int mlpy_trace_init(PyObject *module);
int mlpy_memory_init(PyObject *module);
int mlpy_runtime_init(PyObject *module);

/* Keeps obj alive as long as the trace this thread records, if any (a replay of the trace
 * uses obj again: an optimizer it steps). 0, or -1 with an exception. (trace.c) */
int mlpy_keep_alive_in_trace(PyObject *obj);

/* Method tables: flags, the cast, and the text signature that starts a function's
 * docstring, read by inspect.signature and IDEs: MLPY_SIG("add", "a, b, /") is
 * "add($module, a, b, /)\n--\n\n". Parameters of a function that takes no keywords
 * (METH_O, METH_FASTCALL, METH_VARARGS) are positional-only, before the "/". Methods
 * write theirs out with $self ("numpy($self, /)\n--\n\n"). */
#define MLPY_KW (METH_VARARGS | METH_KEYWORDS)
#define MLPY_FN(fn) ((PyCFunction)(void (*)(void))(fn))
#define MLPY_SIG(name, params) name "($module, " params ")\n--\n\n"

#endif /* MLPY_BINDING_H */
