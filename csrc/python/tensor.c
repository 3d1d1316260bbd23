/* tensor.c — the Tensor type: construction, the number protocol (the hot path of `a + b`:
 * from the interpreter to C with no Python in between), the sequence, mapping (indexing.c)
 * and buffer protocols, methods and properties. Tensor is a static type with number slots
 * because per-op overhead is the point. */
#include "binding.h"

#include <math.h>

static PyObject *shape_tuple(const ml_tensor *t) {
    const int nd = ml_ndim(t);
    const int64_t *shape = ml_shape(t);
    PyObject *tup = PyTuple_New(nd);
    if (!tup) return NULL;
    for (int i = 0; i < nd; i++) {
        PyObject *v = PyLong_FromLongLong(shape[i]);
        if (!v) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, i, v);
    }
    return tup;
}

/* ---- Tensor construction ---- */

PyObject *mlpy_tensor_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "requires_grad", NULL};
    PyObject *data = NULL;
    int requires_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Op:Tensor", kwlist, &data, &requires_grad))
        return NULL;
    ml_tensor *t = NULL;
    if (!data) {
        if (ml_tensor_scalar(&t, 0.0f)) return mlpy_raise_status(ML_ERR_OOM);
    } else if (mlpy_Tensor_Check(data)) {
        if (ml_copy(&t, MLPY_T(data))) return mlpy_raise_status(ML_ERR_OOM);
    } else if (!(t = mlpy_as_ml(data, "Tensor"))) {
        return NULL;
    }
    ml_set_requires_grad(t, requires_grad); /* a new leaf: cannot fail */
    mlpy_TensorObject *o = (mlpy_TensorObject *)type->tp_alloc(type, 0);
    if (!o) {
        ml_release(t);
        return NULL;
    }
    o->t = t;
    o->weakreflist = NULL;
    return (PyObject *)o;
}

static void Tensor_dealloc(mlpy_TensorObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (tp->tp_flags & Py_TPFLAGS_HAVE_GC) PyObject_GC_UnTrack(self);
    if (self->weakreflist) PyObject_ClearWeakRefs((PyObject *)self);
    ml_release(self->t);
    self->t = NULL;
    tp->tp_free((PyObject *)self);
}

/* ---- number protocol: the hot path of `a + b` ---- */

PyObject *mlpy_binary(PyObject *a, PyObject *b, mlpy_binary_fn fn, const char *name) {
    ml_tensor *ta = mlpy_as_ml(a, name);
    if (!ta) return NULL;
    ml_tensor *tb = mlpy_as_ml(b, name);
    if (!tb) {
        ml_release(ta);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    const int64_t na = ml_numel(ta), nb = ml_numel(tb);
    MLPY_CALL(st, na > nb ? na : nb, fn(&out, ta, tb));
    ml_release(ta);
    ml_release(tb);
    return mlpy_wrap_status(st, &out);
}

/* Operators give way to other types they cannot handle (so Python tries the reflection). */
static int operand_ok(PyObject *o) {
    return mlpy_Tensor_Check(o) || PyFloat_Check(o) || PyLong_Check(o) || PyArray_Check(o) ||
           PyList_Check(o) || PyTuple_Check(o) || PyArray_IsScalar(o, Number);
}

#define NB_BINARY(name, fn, label)                                      \
    static PyObject *name(PyObject *a, PyObject *b) {                   \
        if (!operand_ok(a) || !operand_ok(b)) Py_RETURN_NOTIMPLEMENTED; \
        return mlpy_binary(a, b, fn, label);                            \
    }
NB_BINARY(nb_add, ml_add, "add")
NB_BINARY(nb_sub, ml_sub, "subtract")
NB_BINARY(nb_mul, ml_mul, "multiply")
NB_BINARY(nb_div, ml_div, "divide")

static ml_status matmul2(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return ml_matmul(out, a, b, 0, 0);
}
NB_BINARY(nb_matmul, matmul2, "matmul")

static PyObject *nb_neg(PyObject *a) {
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_neg(&out, MLPY_T(a)), &out);
}

static PyObject *nb_pos(PyObject *a) {
    Py_INCREF(a);
    return a;
}

static PyObject *nb_pow(PyObject *a, PyObject *b, PyObject *mod) {
    if (mod != Py_None) Py_RETURN_NOTIMPLEMENTED;
    if (!mlpy_Tensor_Check(a)) { /* number ** tensor = exp(log(number) * tensor) */
        if (!PyFloat_Check(a) && !PyLong_Check(a)) Py_RETURN_NOTIMPLEMENTED;
        double base = PyFloat_AsDouble(a);
        if (base <= 0) {
            PyErr_SetString(PyExc_ValueError, "pow: a number ** tensor needs a positive base");
            return NULL;
        }
        ml_tensor *scaled = NULL, *out = NULL;
        ml_status st = ml_mul_scalar(&scaled, MLPY_T(b), (float)log(base));
        if (!st) st = ml_exp(&out, scaled);
        ml_release(scaled);
        return mlpy_wrap_status(st, &out);
    }
    if (!PyFloat_Check(b) && !PyLong_Check(b)) {
        PyErr_Format(PyExc_TypeError, "pow: the exponent must be a number, got %.100s",
                     mlpy_type_name(b));
        return NULL;
    }
    double e = PyFloat_AsDouble(b);
    if (e == -1.0 && PyErr_Occurred()) return NULL;
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_pow_scalar(&out, MLPY_T(a), (float)e), &out);
}

/* NumPy's rule: one element (of any ndim) is its truth value, NaN true; none or several
 * are ambiguous (ValueError, with NumPy's words) */
static int nb_bool(PyObject *a) {
    ml_tensor *t = MLPY_T(a);
    if (ml_numel(t) == 0) {
        PyErr_Format(PyExc_ValueError,
                     "The truth value of an empty tensor is ambiguous "
                     "(shape %s); use t.size > 0 to check that it is not empty",
                     MLPY_SHAPE_STR(t));
        return -1;
    }
    if (ml_numel(t) != 1) {
        PyErr_Format(PyExc_ValueError,
                     "The truth value of a tensor with more than one element "
                     "is ambiguous (shape %s); use np.any(t) or np.all(t)",
                     MLPY_SHAPE_STR(t));
        return -1;
    }
    return ml_data(t)[0] != 0.0f;
}

/* float(t) and int(t): a one-element tensor of any ndim, as float() always took here, as
 * PyTorch and t.item() do. NumPy 2.4 refuses ndim > 0 ("only 0-dimensional arrays can be
 * converted to Python scalars"; 1.25 to 2.3, which metalearn supports, warn): refusing it
 * here would break float() for callers that had it, and int() must not differ from float().
 * int() truncates toward zero as int(float) and NumPy's int(np.float32(2.5)) do; NaN and
 * infinities raise ValueError and OverflowError as int(float('nan')) does. */
static int one_value(PyObject *a, const char *type, double *v) {
    ml_tensor *t = MLPY_T(a);
    if (ml_numel(t) != 1) {
        PyErr_Format(PyExc_TypeError,
                     "only a tensor with one element can be converted to a "
                     "Python %s, got shape %s",
                     type, MLPY_SHAPE_STR(t));
        return -1;
    }
    *v = ml_data(t)[0];
    return 0;
}

static PyObject *nb_float(PyObject *a) {
    double v;
    return one_value(a, "float", &v) < 0 ? NULL : PyFloat_FromDouble(v);
}

static PyObject *nb_int(PyObject *a) {
    double v;
    return one_value(a, "int", &v) < 0 ? NULL : PyLong_FromDouble(v);
}

/* operator.index(t) (list[t], range(t), a NumPy index): a 0-d tensor holding an integral
 * value, and nothing else. NumPy takes only 0-d arrays of an integer dtype and refuses float
 * arrays whatever they hold (operator.index(np.float32(2.0)) is a TypeError); a metalearn
 * tensor is always float32, so its integer tensors are the ones whose value is integral
 * (labels, class ids). 2.5 or NaN is a TypeError, never a truncation; a one-element tensor
 * of ndim > 0 is refused as NumPy refuses np.array([2]) ("only integer scalar arrays"). */
static PyObject *nb_index(PyObject *a) {
    ml_tensor *t = MLPY_T(a);
    if (ml_ndim(t) != 0) {
        PyErr_Format(PyExc_TypeError,
                     "only a 0-d tensor with an integral value can be used as "
                     "an integer index, got shape %s",
                     MLPY_SHAPE_STR(t));
        return NULL;
    }
    const double v = ml_data(t)[0];
    if (!(fabs(v) < 9.3e18) || floor(v) != v) { /* range first: NaN, inf */
        PyObject *f = PyFloat_FromDouble(v);
        if (f) {
            PyErr_Format(PyExc_TypeError,
                         "only a tensor with an integral value can be used as "
                         "an integer index, got %R",
                         f);
            Py_DECREF(f);
        }
        return NULL;
    }
    return PyLong_FromDouble(v);
}

static PyNumberMethods tensor_as_number = {
    .nb_add = nb_add,
    .nb_subtract = nb_sub,
    .nb_multiply = nb_mul,
    .nb_true_divide = nb_div,
    .nb_negative = nb_neg,
    .nb_positive = nb_pos,
    .nb_power = nb_pow,
    .nb_bool = nb_bool,
    .nb_int = nb_int,
    .nb_float = nb_float,
    .nb_index = nb_index,
    .nb_matrix_multiply = nb_matmul,
};

/* ---- buffer protocol: np.asarray(t) shares memory ----
 * An export does not bump the storage's version (the in-place check): an export is not a
 * write, and most exports only read (a loss logged through NumPy before its gradient,
 * metrics, tests comparing values); bumping on every writable export would make library
 * paths that read through NumPy (MetaLearner.fit) fail the check. So a write through a
 * view goes undetected, and the Tensor docstring says so. */

static int Tensor_getbuffer(mlpy_TensorObject *self, Py_buffer *view, int flags) {
    ml_tensor *t = self->t;
    const int nd = ml_ndim(t);
    const int64_t *shape = ml_shape(t);
    Py_ssize_t stride = sizeof(float);
    for (int i = nd - 1; i >= 0; i--) {
        self->bshape[i] = (Py_ssize_t)shape[i];
        self->bstrides[i] = stride;
        stride *= (Py_ssize_t)shape[i];
    }
    view->buf = ml_data(t);
    view->obj = (PyObject *)self;
    Py_INCREF(self);
    view->len = stride; /* the product of the shape, in bytes */
    view->readonly = 0;
    view->itemsize = sizeof(float);
    view->format = (flags & PyBUF_FORMAT) ? "f" : NULL;
    view->ndim = nd;
    view->shape = (flags & PyBUF_ND) ? self->bshape : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? self->bstrides : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

static PyBufferProcs tensor_as_buffer = {(getbufferproc)Tensor_getbuffer, NULL};

/* ---- methods and properties ---- */

static PyObject *Tensor_numpy(mlpy_TensorObject *self, PyObject *unused) {
    /* an ndarray over the tensor's memory; it keeps the tensor alive through its base */
    const int nd = ml_ndim(self->t);
    const int64_t *shape = ml_shape(self->t);
    npy_intp dims[ML_MAX_DIMS];
    for (int i = 0; i < nd; i++) dims[i] = (npy_intp)shape[i];
    PyObject *arr = PyArray_SimpleNewFromData(nd, dims, NPY_FLOAT32, ml_data(self->t));
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(self);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *Tensor_array(mlpy_TensorObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"dtype", "copy", NULL};
    PyObject *dtype = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:__array__", kwlist, &dtype, &copy))
        return NULL;
    PyObject *arr = Tensor_numpy(self, NULL);
    if (!arr) return NULL;
    if (dtype != Py_None || copy == Py_True) {
        PyArray_Descr *descr = NULL;
        if (dtype != Py_None && !PyArray_DescrConverter(dtype, &descr)) {
            Py_DECREF(arr);
            return NULL;
        }
        if (!descr) descr = PyArray_DescrFromType(NPY_FLOAT32);
        PyObject *r = PyArray_FromAny(arr, descr, 0, 0, NPY_ARRAY_ENSURECOPY, NULL);
        Py_DECREF(arr);
        return r;
    }
    return arr;
}

static PyObject *Tensor_item(mlpy_TensorObject *self, PyObject *unused) {
    return nb_float((PyObject *)self);
}

static PyObject *Tensor_tolist(mlpy_TensorObject *self, PyObject *unused) {
    PyObject *arr = Tensor_numpy(self, NULL);
    if (!arr) return NULL;
    PyObject *r = PyArray_ToList((PyArrayObject *)arr);
    Py_DECREF(arr);
    return r;
}

static PyObject *Tensor_detach(mlpy_TensorObject *self, PyObject *unused) {
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_detach(&out, self->t), &out);
}

static PyObject *Tensor_reshape(mlpy_TensorObject *self, PyObject *args) {
    PyObject *shape_obj = PyTuple_GET_SIZE(args) == 1 ? PyTuple_GET_ITEM(args, 0) : args;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (mlpy_parse_shape(shape_obj, &nd, shape, ml_numel(self->t), "reshape") < 0) return NULL;
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_reshape(&out, self->t, nd, shape), &out);
}

static PyObject *Tensor_transpose(mlpy_TensorObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"perm", NULL};
    PyObject *perm_obj = Py_None;
    if (PyTuple_GET_SIZE(args) > 1) {
        perm_obj = args; /* t.transpose(1, 0) */
    } else if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:transpose", kwlist, &perm_obj)) {
        return NULL;
    }
    int perm[ML_MAX_DIMS], have;
    if (mlpy_parse_perm(perm_obj, self->t, perm, &have) < 0) return NULL;
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_transpose(&out, self->t, have ? perm : NULL), &out);
}

PyObject *mlpy_reduce(ml_tensor *x, PyObject *axis, int keepdims, mlpy_reduce_fn fn,
                      const char *name) {
    int n, axes[ML_MAX_DIMS];
    if (mlpy_parse_axes(axis, &n, axes, name) < 0) return NULL;
    ml_tensor *out = NULL;
    if (n < 0) { /* axis=(): nothing reduced */
        ml_retain(x);
        return mlpy_wrap(x);
    }
    ml_status st;
    MLPY_CALL(st, ml_numel(x), fn(&out, x, n, axes, keepdims));
    return mlpy_wrap_status(st, &out);
}

/* t.sum(axis=None, keepdims=False); NumPy's np.sum(t) calls t.sum(axis=, dtype=, out=,
 * keepdims=): dtype float32/None and out=None are accepted, anything else refused */
#define TENSOR_REDUCE(pyname, fn, label)                                                    \
    static PyObject *pyname(mlpy_TensorObject *self, PyObject *args, PyObject *kwds) {      \
        static char *kwlist[] = {"axis", "keepdims", "dtype", "out", NULL};                 \
        PyObject *axis = Py_None, *dtype = Py_None, *out = Py_None;                         \
        int keepdims = 0;                                                                   \
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$pOO:" label, kwlist, &axis,        \
                                         &keepdims, &dtype, &out))                          \
            return NULL;                                                                    \
        if (out != Py_None || (dtype != Py_None && !numpy_float32(dtype))) {                \
            PyErr_SetString(PyExc_TypeError, label ": only dtype=float32 and out=None are " \
                            "supported on a Tensor");                                       \
            return NULL;                                                                    \
        }                                                                                   \
        return mlpy_reduce(self->t, axis, keepdims, fn, label);                             \
    }

static int numpy_float32(PyObject *dtype) {
    PyArray_Descr *d = NULL;
    if (!PyArray_DescrConverter(dtype, &d)) {
        PyErr_Clear();
        return 0;
    }
    int ok = d->type_num == NPY_FLOAT32;
    Py_DECREF(d);
    return ok;
}
TENSOR_REDUCE(Tensor_sum, ml_sum, "sum")
TENSOR_REDUCE(Tensor_mean, ml_mean, "mean")
TENSOR_REDUCE(Tensor_max, ml_max, "max")

static Py_ssize_t Tensor_len(mlpy_TensorObject *self) {
    if (ml_ndim(self->t) == 0) {
        PyErr_SetString(PyExc_TypeError, "len() of a 0-d tensor");
        return -1;
    }
    return (Py_ssize_t)ml_shape(self->t)[0];
}

static PyObject *Tensor_item_at(mlpy_TensorObject *self, Py_ssize_t i) {
    if (ml_ndim(self->t) == 0) {
        PyErr_SetString(PyExc_TypeError, "iteration over a 0-d tensor");
        return NULL;
    }
    if (i < 0 || i >= (Py_ssize_t)ml_shape(self->t)[0]) {
        PyErr_SetString(PyExc_IndexError, "tensor index out of range");
        return NULL;
    }
    PyObject *key = PyLong_FromSsize_t(i);
    if (!key) return NULL;
    PyObject *r = mlpy_tensor_getitem(self, key);
    Py_DECREF(key);
    return r;
}

static PySequenceMethods tensor_as_sequence = {.sq_length = (lenfunc)Tensor_len,
                                               .sq_item = (ssizeargfunc)Tensor_item_at};

static PyMappingMethods tensor_as_mapping = {(lenfunc)Tensor_len, (binaryfunc)mlpy_tensor_getitem,
                                             NULL};

static PyObject *Tensor_repr(mlpy_TensorObject *self) {
    PyObject *arr = Tensor_numpy(self, NULL);
    if (!arr) return NULL;
    PyObject *s = PyObject_Repr(arr);
    Py_DECREF(arr);
    if (!s) return NULL;
    const char *op = ml_op_name(self->t);
    PyObject *r;
    if (*op)
        r = PyUnicode_FromFormat("<Tensor shape=%s op=%s\n%U>", MLPY_SHAPE_STR(self->t), op, s);
    else if (ml_requires_grad(self->t))
        r = PyUnicode_FromFormat("<Tensor shape=%s requires_grad=True\n%U>",
                                 MLPY_SHAPE_STR(self->t), s);
    else
        r = PyUnicode_FromFormat("<Tensor shape=%s\n%U>", MLPY_SHAPE_STR(self->t), s);
    Py_DECREF(s);
    return r;
}

static PyObject *Tensor_get_shape(mlpy_TensorObject *self, void *c) { return shape_tuple(self->t); }
static PyObject *Tensor_get_ndim(mlpy_TensorObject *self, void *c) {
    return PyLong_FromLong(ml_ndim(self->t));
}
static PyObject *Tensor_get_size(mlpy_TensorObject *self, void *c) {
    return PyLong_FromLongLong(ml_numel(self->t));
}
static PyObject *Tensor_get_dtype(mlpy_TensorObject *self, void *c) {
    return (PyObject *)PyArray_DescrFromType(NPY_FLOAT32);
}
static PyObject *Tensor_get_requires_grad(mlpy_TensorObject *self, void *c) {
    return PyBool_FromLong(ml_requires_grad(self->t));
}
static int Tensor_set_requires_grad(mlpy_TensorObject *self, PyObject *v, void *c) {
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete requires_grad");
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0) return -1;
    ml_status st = ml_set_requires_grad(self->t, b);
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    return 0;
}
static PyObject *Tensor_get_is_leaf(mlpy_TensorObject *self, void *c) {
    return PyBool_FromLong(ml_is_leaf(self->t));
}
static PyObject *Tensor_get_op(mlpy_TensorObject *self, void *c) {
    return PyUnicode_FromString(ml_op_name(self->t));
}
static PyObject *Tensor_get_T(mlpy_TensorObject *self, void *c) {
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_transpose(&out, self->t, NULL), &out);
}
static PyObject *Tensor_get_version(mlpy_TensorObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(ml_version(self->t));
}

static PyGetSetDef Tensor_getset[] = {
    {"shape", (getter)Tensor_get_shape, NULL, "The shape, a tuple of ints.", NULL},
    {"ndim", (getter)Tensor_get_ndim, NULL, "Number of dimensions.", NULL},
    {"size", (getter)Tensor_get_size, NULL, "Number of elements.", NULL},
    {"dtype", (getter)Tensor_get_dtype, NULL, "Always numpy.float32.", NULL},
    {"requires_grad", (getter)Tensor_get_requires_grad, (setter)Tensor_set_requires_grad,
     "Whether ops on this tensor are recorded for autograd (settable on leaves).", NULL},
    {"is_leaf", (getter)Tensor_get_is_leaf, NULL, "True when no recorded op made this tensor.",
     NULL},
    {"op", (getter)Tensor_get_op, NULL, "Name of the op that made this tensor ('' for a leaf).",
     NULL},
    {"T", (getter)Tensor_get_T, NULL, "The tensor with its dimensions reversed.", NULL},
    {"_version", (getter)Tensor_get_version, NULL, "In-place write counter.", NULL},
    {NULL},
};

static PyMethodDef Tensor_methods[] = {
    {"numpy", (PyCFunction)Tensor_numpy, METH_NOARGS,
     "numpy($self, /)\n--\n\nAn ndarray sharing this tensor's memory.\n\n"
     "Writes through it are not seen by autograd's in-place check (see Tensor)."},
    {"__array__", MLPY_FN(Tensor_array), MLPY_KW,
     "__array__($self, /, dtype=None, copy=None)\n--\n\n"
     "The NumPy array protocol: the tensor's memory, or a copy for another dtype or copy=True."},
    {"item", (PyCFunction)Tensor_item, METH_NOARGS,
     "item($self, /)\n--\n\nThe value of a one-element tensor."},
    {"tolist", (PyCFunction)Tensor_tolist, METH_NOARGS,
     "tolist($self, /)\n--\n\nNested lists of Python floats."},
    {"detach", (PyCFunction)Tensor_detach, METH_NOARGS,
     "detach($self, /)\n--\n\nA leaf sharing this tensor's memory, cut from the graph."},
    {"reshape", (PyCFunction)Tensor_reshape, METH_VARARGS,
     "reshape($self, /, *shape)\n--\n\n"
     "The tensor with a new shape of as many elements (one -1 allowed); t.reshape(2, 3) or "
     "t.reshape((2, 3))."},
    {"transpose", MLPY_FN(Tensor_transpose), MLPY_KW,
     "transpose($self, /, perm=None)\n--\n\n"
     "The dims permuted (reversed by default); t.transpose(1, 0) also works."},
    {"sum", MLPY_FN(Tensor_sum), MLPY_KW,
     "sum($self, /, axis=None, *, keepdims=False, dtype=None, out=None)\n--\n\n"
     "Sum over axis (all by default); dtype and out as NumPy's (float32 and None only)."},
    {"mean", MLPY_FN(Tensor_mean), MLPY_KW,
     "mean($self, /, axis=None, *, keepdims=False, dtype=None, out=None)\n--\n\n"
     "Mean over axis (all by default); dtype and out as NumPy's (float32 and None only)."},
    {"max", MLPY_FN(Tensor_max), MLPY_KW,
     "max($self, /, axis=None, *, keepdims=False, dtype=None, out=None)\n--\n\n"
     "Maximum over axis (all by default); dtype and out as NumPy's (float32 and None only)."},
    {NULL},
};

PyTypeObject mlpy_TensorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "metalearn.Tensor",
    .tp_basicsize = sizeof(mlpy_TensorObject),
    .tp_dealloc = (destructor)Tensor_dealloc,
    .tp_repr = (reprfunc)Tensor_repr,
    .tp_as_number = &tensor_as_number,
    .tp_as_sequence = &tensor_as_sequence,
    .tp_as_mapping = &tensor_as_mapping,
    .tp_as_buffer = &tensor_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Tensor(data=0.0, requires_grad=False)\n--\n\n"
              "A float32, C-contiguous, refcounted array of up to 8 dimensions. Ops on tensors\n"
              "that require grad are recorded for metalearn.grad. np.asarray(t) shares memory.\n\n"
              "In-place writes: Variable.assign, metalearn._core.assign and optimizer steps\n"
              "bump the tensor's version, and a later gradient through a graph that used the\n"
              "old values raises. Writes through a NumPy view (np.asarray(t), t.numpy(),\n"
              "memoryview) are not seen by that check: a gradient computed afterwards uses the\n"
              "new values. Reading through a view is always safe; write with Variable.assign.",
    .tp_weaklistoffset = offsetof(mlpy_TensorObject, weakreflist),
    .tp_methods = Tensor_methods,
    .tp_getset = Tensor_getset,
    .tp_new = mlpy_tensor_new,
};

int mlpy_tensor_init(PyObject *module) {
    if (PyType_Ready(&mlpy_TensorType) < 0) return -1;
    /* NumPy defers to Tensor's reflected operators (ndarray + Tensor -> Tensor) */
    if (PyDict_SetItemString(mlpy_TensorType.tp_dict, "__array_ufunc__", Py_None) < 0) return -1;
    PyType_Modified(&mlpy_TensorType);
    return PyModule_AddObjectRef(module, "Tensor", (PyObject *)&mlpy_TensorType);
}

/* -------------------------------------------------------- module functions */
