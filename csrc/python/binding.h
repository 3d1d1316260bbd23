/* binding.h — what the binding's files share (only csrc/python/ includes Python.h). */
#ifndef ML_BINDING_H
#define ML_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#endif
#define PY_ARRAY_UNIQUE_SYMBOL metalearn_ARRAY_API
#ifndef ML_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "../core/internal.h"

typedef struct {
    PyObject_HEAD
    ml_tensor *t;
    PyObject *weakreflist;
    Py_ssize_t bshape[ML_MAX_DIMS]; /* buffer protocol shape/strides */
    Py_ssize_t bstrides[ML_MAX_DIMS];
} TensorObject;

extern PyTypeObject TensorType;

#define Tensor_Check(o) PyObject_TypeCheck(o, &TensorType)
#define T(o) (((TensorObject *)(o))->t)

/* Runs a C call, releasing the GIL when `work` (elements touched) is large. */
#define CALL(st, work, expr)                      \
    do {                                          \
        if ((work) >= ML_BIG_WORK) {              \
            Py_BEGIN_ALLOW_THREADS(st) = (expr);  \
            Py_END_ALLOW_THREADS                  \
        } else {                                  \
            (st) = (expr);                        \
        }                                         \
    } while (0)

/* Sets the Python exception for a failed status (message from ml_last_error) -> NULL. */
PyObject *raise_status(ml_status st);
/* Wraps a new ml_tensor reference (stolen) in a Tensor. */
PyObject *wrap(ml_tensor *t);
/* raise_status(st) on failure, else wrap(*out). */
PyObject *wrap_status(ml_status st, ml_tensor **out);
/* A Tensor, number or array-like to a new ml_tensor reference (NULL with an exception). */
ml_tensor *as_ml(PyObject *o, const char *what);
/* Integer array-like to a C-contiguous int64 ndarray. */
PyArrayObject *to_index_array(PyObject *obj, const char *what);
/* Tuple/list of ints (one -1 inferred from numel when numel >= 0). */
int parse_shape(PyObject *obj, int *ndim, int64_t *shape, int64_t numel, const char *what);
/* One axis argument (an int or an object with __index__; NULL gives dflt): a TypeError
 * for other types, a ValueError for a value outside the C int range. 0 or -1. */
int axis_arg(PyObject *obj, int dflt, int *axis, const char *what);
/* axis=None | int | sequence -> n (0: all; -1: the empty tuple) and axes. */
int parse_axes(PyObject *obj, int *n, int *axes, const char *what);

/* Method tables of the other binding files, registered by module.c. */
extern PyMethodDef ml_nn_methods[];
extern PyMethodDef ml_memory_methods[];
extern PyMethodDef ml_tasks_methods[];
/* Adds the memory binding's types to the module; 0 on success, -1 with an exception. */
int ml_memory_init(PyObject *module);

#endif /* ML_BINDING_H */
