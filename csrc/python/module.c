/* module.c — metalearn._core: the only C file that includes Python.h and NumPy.
 *
 * Every call has the same shape: parse -> convert to ml_tensor (with the GIL) -> validate
 * -> compute (the GIL released when the work is large) -> map the status to an exception
 * -> release at one place. Tensor is a static type with number slots, so `a + b` goes
 * from the interpreter to C with no Python in between (per-op overhead is the point).
 */
#define ML_BINDING_MAIN
#include "binding.h"

#include <math.h>
#include <unistd.h>

/* The trace this thread records (borrowed: the thread's state dict holds it until the
 * recording ends, so another thread cannot free it meanwhile); optimizers stepped while it
 * records go into its keep-alive list. Per thread: two threads may record at once. */
typedef struct TraceObject TraceObject;
static _Thread_local TraceObject *recording_trace;
static int keep_alive_in_trace(PyObject *obj);

/* ------------------------------------------------------------------ errors */

PyObject *raise_status(ml_status st) {
    PyObject *exc = PyExc_ValueError;
    switch (st) {
    case ML_ERR_TYPE: exc = PyExc_TypeError; break;
    case ML_ERR_OOM: exc = PyExc_MemoryError; break;
    case ML_ERR_IO: exc = PyExc_OSError; break;
    default: break;
    }
    PyErr_SetString(exc, ml_last_error());
    return NULL;
}


/* ------------------------------------------------------------------ Tensor */


/* Wraps a new reference to t (stolen) in a Tensor; NULL t means the error is set. */
PyObject *wrap(ml_tensor *t) {
    if (!t) return NULL;
    TensorObject *o = PyObject_New(TensorObject, &TensorType);
    if (!o) {
        ml_release(t);
        return NULL;
    }
    o->t = t;
    o->weakreflist = NULL;
    return (PyObject *)o;
}

/* `out` is read after `st` is computed (C leaves argument order unspecified). */
PyObject *wrap_status(ml_status st, ml_tensor **out) {
    if (st) return raise_status(st);
    return wrap(*out);
}

static const char *type_name(PyObject *o) { return Py_TYPE(o)->tp_name; }

/* Any array-like to a new float32 C-contiguous ndarray; object, complex, string and
 * other non-real dtypes are refused with a TypeError naming the dtype. */
static PyArrayObject *to_float_array(PyObject *obj, const char *what) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: cannot convert %.100s to a float32 tensor", what,
                         type_name(obj));
        }
        return NULL;
    }
    char kind = PyArray_DESCR(arr)->kind;
    if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f') {
        PyObject *dt = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError, "%s: expected real numbers (bool, int or float), got an "
                     "array of dtype %s",
                     what, dt ? PyUnicode_AsUTF8(dt) : "?");
        Py_XDECREF(dt);
        Py_DECREF(arr);
        return NULL;
    }
    if (PyArray_NDIM(arr) > ML_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: tensors have at most %d dimensions, got %d", what,
                     ML_MAX_DIMS, PyArray_NDIM(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *f = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)arr, PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_NOTSWAPPED | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(arr);
    return f;
}

static ml_status tensor_from_array(ml_tensor **out, PyArrayObject *f) {
    int64_t shape[ML_MAX_DIMS];
    int nd = PyArray_NDIM(f);
    for (int i = 0; i < nd; i++) shape[i] = PyArray_DIM(f, i);
    return ml_tensor_from_data(out, nd, shape, (const float *)PyArray_DATA(f));
}

/* Converts o to a new ml_tensor reference. Tensors are shared; numbers and arrays copied. */
ml_tensor *as_ml(PyObject *o, const char *what) {
    if (Tensor_Check(o)) {
        ml_retain(T(o));
        return T(o);
    }
    ml_tensor *t = NULL;
    if (PyFloat_CheckExact(o) || PyLong_CheckExact(o) || PyBool_Check(o)) {
        double v = PyFloat_AsDouble(o);
        if (v == -1.0 && PyErr_Occurred()) return NULL;
        if (ml_tensor_scalar(&t, (float)v)) return (ml_tensor *)raise_status(ML_ERR_OOM);
        return t;
    }
    if (o == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected a tensor or an array, got None", what);
        return NULL;
    }
    PyArrayObject *f = to_float_array(o, what);
    if (!f) return NULL;
    ml_status st = tensor_from_array(&t, f);
    Py_DECREF(f);
    if (st) return (ml_tensor *)raise_status(st);
    return t;
}

/* int64 indices from any integer array-like (floats holding integers accepted). */
PyArrayObject *to_index_array(PyObject *obj, const char *what) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) return NULL;
    char kind = PyArray_DESCR(arr)->kind;
    if (kind == 'f') {
        PyArrayObject *as64 = (PyArrayObject *)PyArray_FromAny(
            (PyObject *)arr, PyArray_DescrFromType(NPY_FLOAT64), 0, 0,
            NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_NOTSWAPPED, NULL);
        Py_DECREF(arr);
        if (!as64) return NULL;
        const double *d = PyArray_DATA(as64);
        for (npy_intp i = 0; i < PyArray_SIZE(as64); i++) {
            /* range first: converting NaN or 1e300 to int64 is undefined behaviour */
            if (!(fabs(d[i]) < 9.0e18) || floor(d[i]) != d[i]) {
                char *txt = PyOS_double_to_string(d[i], 'r', 0, 0, NULL);
                PyErr_Format(PyExc_ValueError, "%s: expected integer labels, got %s at position %zd",
                             what, txt ? txt : "?", (Py_ssize_t)i);
                PyMem_Free(txt);
                Py_DECREF(as64);
                return NULL;
            }
        }
        arr = as64;
        kind = 'i';
    }
    if (kind != 'i' && kind != 'u' && kind != 'b') {
        PyObject *dt = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError, "%s: expected integers, got an array of dtype %s", what,
                     dt ? PyUnicode_AsUTF8(dt) : "?");
        Py_XDECREF(dt);
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *r = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)arr, PyArray_DescrFromType(NPY_INT64), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_NOTSWAPPED | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(arr);
    return r;
}

/* A shape from a tuple/list of ints (or one int). -1 once is inferred when numel >= 0. */
int parse_shape(PyObject *obj, int *ndim, int64_t *shape, int64_t numel,
                       const char *what) {
    if (PyLong_Check(obj)) {
        shape[0] = PyLong_AsLongLong(obj);
        if (shape[0] == -1 && PyErr_Occurred()) return -1;
        *ndim = 1;
    } else {
        PyObject *seq = PySequence_Fast(obj, "shape must be a tuple or list of ints");
        if (!seq) {
            PyErr_Format(PyExc_TypeError, "%s: shape must be a tuple or list of ints, got %.100s",
                         what, type_name(obj));
            return -1;
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n > ML_MAX_DIMS) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions, got %zd", what,
                         ML_MAX_DIMS, n);
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyIndex_Check(item)) {
                Py_DECREF(seq);
                PyErr_Format(PyExc_TypeError, "%s: shape entries must be ints, got %.100s", what,
                             type_name(item));
                return -1;
            }
            shape[i] = PyLong_AsLongLong(item);
            if (shape[i] == -1 && PyErr_Occurred()) {
                Py_DECREF(seq);
                PyErr_Format(PyExc_ValueError, "%s: shape entry %zd is too large", what, i);
                return -1;
            }
        }
        *ndim = (int)n;
        Py_DECREF(seq);
    }
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < *ndim; i++) {
        if (shape[i] == -1 && numel >= 0) {
            if (infer >= 0) {
                PyErr_Format(PyExc_ValueError, "%s: only one dimension can be -1", what);
                return -1;
            }
            infer = i;
        } else if (shape[i] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: negative dimension %lld", what, (long long)shape[i]);
            return -1;
        } else if (shape[i] && known > INT64_MAX / shape[i]) {
            known = INT64_MAX; /* the core reports the overflow */
        } else {
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || numel % known) {
            PyErr_Format(PyExc_ValueError, "%s: cannot reshape %lld elements with a -1 in the "
                         "shape",
                         what, (long long)numel);
            return -1;
        }
        shape[infer] = numel / known;
    }
    return 0;
}

/* An axis argument (an int or anything with __index__) as the core's int. The core
 * reports an axis out of range, as the caller gave it, with the tensor's rank
 * (ml__axis_error); a value no int holds is refused here, also as given: clamping it
 * first made reduce_sum(axis=100) report "axis 9". NULL (argument left out): `dflt`. */
int axis_arg(PyObject *obj, int dflt, int *axis, const char *what) {
    *axis = dflt;
    if (!obj) return 0;
    PyObject *idx = PyNumber_Index(obj);
    if (!idx) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: axis must be an int, got %.100s", what, type_name(obj));
        return -1;
    }
    int overflow;
    long long a = PyLong_AsLongLongAndOverflow(idx, &overflow);
    if (!overflow && a >= INT_MIN && a <= INT_MAX) {
        Py_DECREF(idx);
        *axis = (int)a;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "%s: axis %S is out of range (a tensor has at most %d axes)",
                 what, idx, ML_MAX_DIMS);
    Py_DECREF(idx);
    return -1;
}

/* axis=None | int | tuple/list of ints -> n_axes (0: all) and axes */
int parse_axes(PyObject *obj, int *n, int *axes, const char *what) {
    *n = 0;
    if (!obj || obj == Py_None) return 0;
    if (PyLong_Check(obj)) {
        if (axis_arg(obj, 0, &axes[0], what) < 0) return -1;
        *n = 1;
        return 0;
    }
    PyObject *seq = PySequence_Fast(obj, "axis");
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: axis must be None, an int or a tuple of ints, got %.100s",
                     what, type_name(obj));
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (len > ML_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: too many axes (%zd)", what, len);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        if (axis_arg(PySequence_Fast_GET_ITEM(seq, i), 0, &axes[i], what) < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    *n = (int)len;
    Py_DECREF(seq);
    if (*n == 0) { /* axis=() reduces nothing: NumPy returns the input */
        *n = -1;
    }
    return 0;
}

static PyObject *shape_tuple(const ml_tensor *t) {
    PyObject *tup = PyTuple_New(t->ndim);
    if (!tup) return NULL;
    for (int i = 0; i < t->ndim; i++) {
        PyObject *v = PyLong_FromLongLong(t->shape[i]);
        if (!v) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, i, v);
    }
    return tup;
}

/* ---- Tensor construction ---- */

static PyObject *Tensor_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "requires_grad", NULL};
    PyObject *data = NULL;
    int requires_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Op:Tensor", kwlist, &data, &requires_grad))
        return NULL;
    ml_tensor *t = NULL;
    if (!data) {
        if (ml_tensor_scalar(&t, 0.0f)) return raise_status(ML_ERR_OOM);
    } else if (Tensor_Check(data)) {
        if (ml_copy(&t, T(data))) return raise_status(ML_ERR_OOM);
    } else if (!(t = as_ml(data, "Tensor"))) {
        return NULL;
    }
    t->requires_grad = requires_grad;
    TensorObject *o = (TensorObject *)type->tp_alloc(type, 0);
    if (!o) {
        ml_release(t);
        return NULL;
    }
    o->t = t;
    o->weakreflist = NULL;
    return (PyObject *)o;
}

static void Tensor_dealloc(TensorObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (tp->tp_flags & Py_TPFLAGS_HAVE_GC) PyObject_GC_UnTrack(self);
    if (self->weakreflist) PyObject_ClearWeakRefs((PyObject *)self);
    ml_release(self->t);
    self->t = NULL;
    tp->tp_free((PyObject *)self);
}

/* ---- number protocol: the hot path of `a + b` ---- */

typedef ml_status (*binary_fn)(ml_tensor **, ml_tensor *, ml_tensor *);

static PyObject *binary(PyObject *a, PyObject *b, binary_fn fn, const char *name) {
    ml_tensor *ta = as_ml(a, name);
    if (!ta) return NULL;
    ml_tensor *tb = as_ml(b, name);
    if (!tb) {
        ml_release(ta);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    int64_t work = ta->numel > tb->numel ? ta->numel : tb->numel;
    CALL(st, work, fn(&out, ta, tb));
    ml_release(ta);
    ml_release(tb);
    return wrap_status(st, &out);
}

/* Operators give way to other types they cannot handle (so Python tries the reflection). */
static int operand_ok(PyObject *o) {
    return Tensor_Check(o) || PyFloat_Check(o) || PyLong_Check(o) || PyArray_Check(o) ||
           PyList_Check(o) || PyTuple_Check(o) || PyArray_IsScalar(o, Number);
}

#define NB_BINARY(name, fn, label)                                        \
    static PyObject *name(PyObject *a, PyObject *b) {                     \
        if (!operand_ok(a) || !operand_ok(b)) Py_RETURN_NOTIMPLEMENTED;   \
        return binary(a, b, fn, label);                                   \
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
    return wrap_status(ml_neg(&out, T(a)), &out);
}

static PyObject *nb_pos(PyObject *a) {
    Py_INCREF(a);
    return a;
}

static PyObject *nb_pow(PyObject *a, PyObject *b, PyObject *mod) {
    if (mod != Py_None) Py_RETURN_NOTIMPLEMENTED;
    if (!Tensor_Check(a)) { /* number ** tensor = exp(log(number) * tensor) */
        if (!PyFloat_Check(a) && !PyLong_Check(a)) Py_RETURN_NOTIMPLEMENTED;
        double base = PyFloat_AsDouble(a);
        if (base <= 0) {
            PyErr_SetString(PyExc_ValueError, "pow: a number ** tensor needs a positive base");
            return NULL;
        }
        ml_tensor *scaled = NULL, *out = NULL;
        ml_status st = ml_mul_scalar(&scaled, T(b), (float)log(base));
        if (!st) st = ml_exp(&out, scaled);
        ml_release(scaled);
        return wrap_status(st, &out);
    }
    if (!PyFloat_Check(b) && !PyLong_Check(b)) {
        PyErr_Format(PyExc_TypeError, "pow: the exponent must be a number, got %.100s",
                     type_name(b));
        return NULL;
    }
    double e = PyFloat_AsDouble(b);
    if (e == -1.0 && PyErr_Occurred()) return NULL;
    ml_tensor *out = NULL;
    return wrap_status(ml_pow_scalar(&out, T(a), (float)e), &out);
}

/* NumPy's rule: one element (of any ndim) is its truth value, NaN true; none or several
 * are ambiguous (ValueError, with NumPy's words) */
static int nb_bool(PyObject *a) {
    const ml_tensor *t = T(a);
    if (t->numel == 0) {
        PyErr_Format(PyExc_ValueError, "The truth value of an empty tensor is ambiguous "
                     "(shape %s); use t.size > 0 to check that it is not empty",
                     ML_SHAPE_STR(t));
        return -1;
    }
    if (t->numel != 1) {
        PyErr_Format(PyExc_ValueError, "The truth value of a tensor with more than one element "
                     "is ambiguous (shape %s); use np.any(t) or np.all(t)", ML_SHAPE_STR(t));
        return -1;
    }
    return t->data[0] != 0.0f;
}

/* float(t) and int(t): a one-element tensor of any ndim, as float() always took here, as
 * PyTorch and t.item() do. NumPy 2.4 refuses ndim > 0 ("only 0-dimensional arrays can be
 * converted to Python scalars"; 1.25 to 2.3, which metalearn supports, warn): refusing it
 * here would break float() for callers that had it, and int() must not differ from float().
 * int() truncates toward zero as int(float) and NumPy's int(np.float32(2.5)) do; NaN and
 * infinities raise ValueError and OverflowError as int(float('nan')) does. */
static int one_value(PyObject *a, const char *type, double *v) {
    const ml_tensor *t = T(a);
    if (t->numel != 1) {
        PyErr_Format(PyExc_TypeError, "only a tensor with one element can be converted to a "
                     "Python %s, got shape %s", type, ML_SHAPE_STR(t));
        return -1;
    }
    *v = t->data[0];
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
    const ml_tensor *t = T(a);
    if (t->ndim != 0) {
        PyErr_Format(PyExc_TypeError, "only a 0-d tensor with an integral value can be used as "
                     "an integer index, got shape %s", ML_SHAPE_STR(t));
        return NULL;
    }
    const double v = t->data[0];
    if (!(fabs(v) < 9.3e18) || floor(v) != v) { /* range first: NaN, inf */
        PyObject *f = PyFloat_FromDouble(v);
        if (f) {
            PyErr_Format(PyExc_TypeError, "only a tensor with an integral value can be used as "
                         "an integer index, got %R", f);
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
 * metrics, tests comparing values). Bumping on every writable export was tried: np.asarray
 * cost the same (224 ns), but 675 of 2004 tests failed with "modified in place", library
 * paths among them (MetaLearner.fit), so a write through a view goes undetected and the
 * Tensor docstring says so. */

static int Tensor_getbuffer(TensorObject *self, Py_buffer *view, int flags) {
    ml_tensor *t = self->t;
    Py_ssize_t stride = sizeof(float);
    for (int i = t->ndim - 1; i >= 0; i--) {
        self->bshape[i] = (Py_ssize_t)t->shape[i];
        self->bstrides[i] = stride;
        stride *= (Py_ssize_t)t->shape[i];
    }
    view->buf = t->data;
    view->obj = (PyObject *)self;
    Py_INCREF(self);
    view->len = (Py_ssize_t)(t->numel * (int64_t)sizeof(float));
    view->readonly = 0;
    view->itemsize = sizeof(float);
    view->format = (flags & PyBUF_FORMAT) ? "f" : NULL;
    view->ndim = t->ndim;
    view->shape = (flags & PyBUF_ND) ? self->bshape : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? self->bstrides : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

static PyBufferProcs tensor_as_buffer = {(getbufferproc)Tensor_getbuffer, NULL};

/* ---- methods and properties ---- */

static PyObject *Tensor_numpy(TensorObject *self, PyObject *unused) {
    /* an ndarray over the tensor's memory; it keeps the tensor alive through its base */
    npy_intp dims[ML_MAX_DIMS];
    for (int i = 0; i < self->t->ndim; i++) dims[i] = (npy_intp)self->t->shape[i];
    PyObject *arr = PyArray_SimpleNewFromData(self->t->ndim, dims, NPY_FLOAT32, self->t->data);
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(self);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *Tensor_array(TensorObject *self, PyObject *args, PyObject *kwds) {
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

static PyObject *Tensor_item(TensorObject *self, PyObject *unused) { return nb_float((PyObject *)self); }

static PyObject *Tensor_tolist(TensorObject *self, PyObject *unused) {
    PyObject *arr = Tensor_numpy(self, NULL);
    if (!arr) return NULL;
    PyObject *r = PyArray_ToList((PyArrayObject *)arr);
    Py_DECREF(arr);
    return r;
}

static PyObject *Tensor_detach(TensorObject *self, PyObject *unused) {
    ml_tensor *out = NULL;
    return wrap_status(ml_detach(&out, self->t), &out);
}

static PyObject *Tensor_reshape(TensorObject *self, PyObject *args) {
    PyObject *shape_obj = PyTuple_GET_SIZE(args) == 1 ? PyTuple_GET_ITEM(args, 0) : args;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (parse_shape(shape_obj, &nd, shape, self->t->numel, "reshape") < 0) return NULL;
    ml_tensor *out = NULL;
    return wrap_status(ml_reshape(&out, self->t, nd, shape), &out);
}

static int parse_perm(PyObject *obj, const ml_tensor *t, int *perm, int *have) {
    *have = 0;
    if (!obj || obj == Py_None) return 0;
    PyObject *seq = PySequence_Fast(obj, "perm must be a sequence of ints");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != t->ndim) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "transpose: perm has %zd entries for a tensor of shape %s",
                     n, ML_SHAPE_STR(t));
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (axis_arg(PySequence_Fast_GET_ITEM(seq, i), 0, &perm[i], "transpose") < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    *have = 1;
    return 0;
}

static PyObject *Tensor_transpose(TensorObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"perm", NULL};
    PyObject *perm_obj = Py_None;
    if (PyTuple_GET_SIZE(args) > 1) {
        perm_obj = args; /* t.transpose(1, 0) */
    } else if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:transpose", kwlist, &perm_obj)) {
        return NULL;
    }
    int perm[ML_MAX_DIMS], have;
    if (parse_perm(perm_obj, self->t, perm, &have) < 0) return NULL;
    ml_tensor *out = NULL;
    return wrap_status(ml_permute(&out, self->t, have ? perm : NULL), &out);
}

typedef ml_status (*reduce_fn)(ml_tensor **, ml_tensor *, int, const int *, int);

static PyObject *reduce_common(ml_tensor *x, PyObject *axis, int keepdims, reduce_fn fn,
                               const char *name) {
    int n, axes[ML_MAX_DIMS];
    if (parse_axes(axis, &n, axes, name) < 0) return NULL;
    ml_tensor *out = NULL;
    if (n < 0) { /* axis=(): nothing reduced */
        ml_retain(x);
        return wrap(x);
    }
    ml_status st;
    CALL(st, x->numel, fn(&out, x, n, axes, keepdims));
    return wrap_status(st, &out);
}

/* t.sum(axis=None, keepdims=False); NumPy's np.sum(t) calls t.sum(axis=, dtype=, out=,
 * keepdims=): dtype float32/None and out=None are accepted, anything else refused */
#define TENSOR_REDUCE(pyname, fn, label)                                                    \
    static PyObject *pyname(TensorObject *self, PyObject *args, PyObject *kwds) {           \
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
        return reduce_common(self->t, axis, keepdims, fn, label);                           \
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

static Py_ssize_t Tensor_len(TensorObject *self) {
    if (self->t->ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "len() of a 0-d tensor");
        return -1;
    }
    return (Py_ssize_t)self->t->shape[0];
}

/* A boolean scalar index: Python's bool, NumPy's bool_, a 0-d bool array */
static int is_bool_scalar(PyObject *k) {
    if (PyLong_CheckExact(k) || PySlice_Check(k)) return 0; /* t[0], t[1:3]: no type walk */
    return PyBool_Check(k) || PyArray_IsScalar(k, Bool) ||
           (PyArray_Check(k) && PyArray_NDIM((PyArrayObject *)k) == 0 &&
            PyArray_ISBOOL((PyArrayObject *)k));
}

/* t[mask] along axis, NumPy's boolean indexing: mask (bool, ndim md >= 1) has the shape of
 * cur's dims axis .. axis + md - 1, which become one dim of the selected positions (C order),
 * taken with gather (so differentiable: the gradient scatters back, zeros elsewhere). */
static ml_status mask_select(ml_tensor **out, ml_tensor *cur, int axis, PyArrayObject *mask,
                             int64_t *count) {
    const int md = PyArray_NDIM(mask);
    for (int d = 0; d < md; d++)
        if (cur->shape[axis + d] != (int64_t)PyArray_DIM(mask, d)) {
            PyErr_Format(PyExc_IndexError, "boolean index did not match indexed tensor along "
                         "axis %d; size of axis is %lld but size of corresponding boolean axis "
                         "is %lld", axis + d, (long long)cur->shape[axis + d],
                         (long long)PyArray_DIM(mask, d));
            return ML_ERR_VALUE;
        }
    PyArrayObject *flat = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)mask, PyArray_DescrFromType(NPY_BOOL), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!flat) return ML_ERR_VALUE;
    const npy_bool *m = PyArray_DATA(flat);
    const npy_intp n = PyArray_SIZE(flat);
    npy_intp k = 0;
    for (npy_intp i = 0; i < n; i++) k += m[i] != 0;
    if (k > INT_MAX) {
        Py_DECREF(flat);
        PyErr_SetString(PyExc_IndexError, "a boolean index selects more than 2^31 - 1 entries");
        return ML_ERR_VALUE;
    }
    int64_t *pos = PyMem_Malloc((size_t)(k ? k : 1) * sizeof *pos);
    if (!pos) {
        Py_DECREF(flat);
        PyErr_NoMemory();
        return ML_ERR_OOM;
    }
    for (npy_intp i = 0, j = 0; i < n; i++)
        if (m[i]) pos[j++] = i;
    Py_DECREF(flat);
    /* the mask's dims as one (a view of the same data), then the gather */
    int64_t shape[ML_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < cur->ndim; d++) {
        if (d > axis && d < axis + md) shape[nd - 1] *= cur->shape[d];
        else shape[nd++] = cur->shape[d];
    }
    ml_tensor *merged = NULL;
    ml_status st = ml_reshape(&merged, cur, nd, shape);
    if (!st) st = ml_gather(out, merged, (int)k, pos, axis);
    ml_release(merged);
    PyMem_Free(pos);
    *count = k;
    if (st) raise_status(st);
    return st;
}

/* An integer index: a Python or NumPy int, a 0-d integer array or a 0-d tensor (NumPy's
 * a[np.array(1)] is a[1]); not a bool (is_bool_scalar is asked first) */
static int is_int_index(PyObject *k) {
    if (PyArray_Check(k))
        return PyArray_NDIM((PyArrayObject *)k) == 0 &&
               PyArray_ISINTEGER((PyArrayObject *)k);
    if (Tensor_Check(k)) return T(k)->ndim == 0;
    return PyIndex_Check(k);
}

/* Indexing: ints, slices (any step), None, Ellipsis, one integer array (gather), or one
 * boolean mask (NumPy's rule: the dims it covers become one, of the selected entries), and
 * a boolean scalar on its own (t[True]: a new axis of 1, t[False]: of 0, as NumPy). Python's
 * bools are ints: unless caught first, t[True] and t[[True, False, True]] read rows 1 and
 * 1, 0, 1. Where the array and an int are apart (t[0, :, idx]) NumPy puts the array's
 * dim first, and so does this. Several arrays (NumPy pairs them up) are refused, as they
 * were read as an outer product. Every error is an exception; no index is read as another
 * kind. */
static PyObject *Tensor_getitem(TensorObject *self, PyObject *key) {
    PyObject *items = PyTuple_Check(key) ? (Py_INCREF(key), key) : PyTuple_Pack(1, key);
    if (!items) return NULL;
    ml_tensor *cur = self->t;
    ml_retain(cur);
    Py_ssize_t nk = PyTuple_GET_SIZE(items);
    /* array-likes as NumPy arrays, once: a boolean mask covers as many dims as it has (on
     * the stack for the usual keys: a PyMem_Calloc cost t[0] a sixth of its time) */
    PyObject *arrs_inline[8] = {NULL};
    PyObject **arrs = nk <= 8 ? arrs_inline : PyMem_Calloc((size_t)nk, sizeof *arrs);
    int n_real = 0, has_ellipsis = 0;
    const int ndim0 = cur->ndim;
    /* the array index's place in the key and in the result; the ints' first and last place */
    Py_ssize_t array_at = -1, int_lo = -1, int_hi = -1, n_int = 0;
    int array_dim = -1;
    /* final shape: built as we go; ints drop a dim, None adds one */
    int64_t final_shape[ML_MAX_DIMS * 2];
    int final_nd = 0, axis = 0;
    ml_status st = ML_OK;
    PyArrayObject *idx = NULL;
    if (!arrs) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *k = PyTuple_GET_ITEM(items, i);
        if (PyLong_CheckExact(k) || PySlice_Check(k)) { /* the common keys, first */
            n_real++;
            if (PySlice_Check(k)) continue;
            if (int_lo < 0) int_lo = i;
            int_hi = i;
            n_int++;
        } else if (k == Py_Ellipsis) {
            has_ellipsis++;
        } else if (is_bool_scalar(k)) {
            if (nk != 1) {
                PyErr_SetString(PyExc_TypeError, "a boolean scalar index is supported only on "
                                "its own (t[True] adds an axis of 1, t[False] of 0); use None "
                                "or a boolean array");
                goto fail;
            }
        } else if (k != Py_None) {
            if ((PyArray_Check(k) || PyList_Check(k)) && !(arrs[i] = PyArray_FROM_O(k)))
                goto fail;
            const int bool_mask = arrs[i] && PyArray_ISBOOL((PyArrayObject *)arrs[i]);
            n_real += bool_mask ? PyArray_NDIM((PyArrayObject *)arrs[i]) : 1;
            if (is_int_index(k)) {
                if (int_lo < 0) int_lo = i;
                int_hi = i;
                n_int++;
            } else if (arrs[i] || Tensor_Check(k)) {
                if (array_at >= 0) {
                    PyErr_SetString(PyExc_IndexError, "only one integer or boolean array per "
                                    "index is supported (NumPy pairs several up); index in "
                                    "steps");
                    goto fail;
                }
                array_at = i;
            }
        }
    }
    if (has_ellipsis > 1 || n_real > ndim0) {
        PyErr_Format(PyExc_IndexError, "too many indices for a tensor of shape %s",
                     ML_SHAPE_STR(cur));
        goto fail;
    }
    if (nk == 1 && is_bool_scalar(PyTuple_GET_ITEM(items, 0))) {
        /* a new leading axis of 1; of 0 (a gather of no rows) for False */
        const int keep = PyObject_IsTrue(PyTuple_GET_ITEM(items, 0));
        if (keep < 0) goto fail;
        int64_t shape[ML_MAX_DIMS];
        if (ndim0 >= ML_MAX_DIMS) goto too_many;
        shape[0] = 1;
        memcpy(shape + 1, cur->shape, (size_t)ndim0 * sizeof *shape);
        ml_tensor *one = NULL, *out = NULL;
        st = ml_reshape(&one, cur, ndim0 + 1, shape);
        if (!st && !keep) {
            const int64_t none = 0;
            st = ml_gather(&out, one, 0, &none, 0);
            ml_release(one);
        } else {
            out = one;
        }
        ml_release(cur);
        if (arrs != arrs_inline) PyMem_Free(arrs);
        Py_DECREF(items);
        return wrap_status(st, &out);
    }
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *k = PyTuple_GET_ITEM(items, i);
        ml_tensor *next = NULL;
        if (k == Py_None) {
            if (final_nd >= ML_MAX_DIMS) goto too_many;
            final_shape[final_nd++] = 1;
            continue;
        }
        if (k == Py_Ellipsis) {
            int span = ndim0 - n_real;
            for (int j = 0; j < span; j++) final_shape[final_nd++] = cur->shape[axis + j];
            axis += span;
            continue;
        }
        int64_t dim = cur->shape[axis];
        if (!PyLong_CheckExact(k) && !PySlice_Check(k) && arrs[i] &&
            PyArray_ISBOOL((PyArrayObject *)arrs[i])) {
            PyArrayObject *mask = (PyArrayObject *)arrs[i];
            int64_t count = 0;
            if (mask_select(&next, cur, axis, mask, &count)) goto fail;
            ml_release(cur);
            cur = next;
            if (final_nd >= ML_MAX_DIMS) goto too_many;
            array_dim = final_nd;
            final_shape[final_nd++] = count;
            axis++;
            continue;
        }
        if (PyLong_CheckExact(k) || (!PySlice_Check(k) && is_int_index(k))) {
            Py_ssize_t v = PyNumber_AsSsize_t(k, PyExc_IndexError);
            if (v == -1 && PyErr_Occurred()) goto fail;
            if (v < -dim || v >= dim) {
                PyErr_Format(PyExc_IndexError, "index %zd is out of bounds for axis %d with size %lld",
                             v, axis, (long long)dim);
                goto fail;
            }
            if (v < 0) v += dim;
            st = ml_narrow(&next, cur, axis, v, 1);
            if (st) goto status_fail;
            ml_release(cur);
            cur = next;
            axis++; /* this dim is dropped from final_shape */
            continue;
        }
        if (PySlice_Check(k)) {
            Py_ssize_t start, stop, step;
            if (PySlice_Unpack(k, &start, &stop, &step) < 0) goto fail;
            Py_ssize_t len = PySlice_AdjustIndices((Py_ssize_t)dim, &start, &stop, step);
            if (step == 1) {
                st = ml_narrow(&next, cur, axis, start, len);
            } else {
                int64_t *pos = PyMem_Malloc((size_t)(len ? len : 1) * sizeof(int64_t));
                if (!pos) {
                    PyErr_NoMemory();
                    goto fail;
                }
                for (Py_ssize_t j = 0; j < len; j++) pos[j] = start + j * step;
                st = ml_gather(&next, cur, (int)len, pos, axis);
                PyMem_Free(pos);
            }
            if (st) goto status_fail;
            ml_release(cur);
            cur = next;
            if (final_nd >= ML_MAX_DIMS) goto too_many;
            final_shape[final_nd++] = len;
            axis++;
            continue;
        }
        if (arrs[i] || Tensor_Check(k)) {
            idx = to_index_array(arrs[i] ? arrs[i] : k, "index");
            if (!idx) goto fail;
            if (PyArray_NDIM(idx) != 1) {
                PyErr_SetString(PyExc_IndexError, "only 1-D integer index arrays are supported");
                goto fail;
            }
            st = ml_gather(&next, cur, (int)PyArray_SIZE(idx), PyArray_DATA(idx), axis);
            Py_CLEAR(idx);
            if (st) goto status_fail;
            ml_release(cur);
            cur = next;
            if (final_nd >= ML_MAX_DIMS) goto too_many;
            array_dim = final_nd;
            final_shape[final_nd++] = cur->shape[axis];
            axis++;
            continue;
        }
        PyErr_Format(PyExc_IndexError, "unsupported index of type %.100s", type_name(k));
        goto fail;
    }
    for (int j = axis; j < cur->ndim; j++) {
        if (final_nd >= ML_MAX_DIMS) goto too_many;
        final_shape[final_nd++] = cur->shape[j];
    }
    for (Py_ssize_t i = 0; i < nk; i++) Py_XDECREF(arrs[i]);
    if (arrs != arrs_inline) PyMem_Free(arrs);
    Py_DECREF(items);
    {
        ml_tensor *out = NULL;
        st = ml_reshape(&out, cur, final_nd, final_shape);
        ml_release(cur);
        /* the array and the ints are NumPy's advanced indices: apart in the key (a slice,
         * None or Ellipsis between), their dim goes first */
        const Py_ssize_t lo = int_lo < 0 || array_at < int_lo ? array_at : int_lo;
        const Py_ssize_t hi = int_hi > array_at ? int_hi : array_at;
        if (!st && array_at >= 0 && n_int > 0 && array_dim > 0 && hi - lo + 1 > n_int + 1) {
            int perm[ML_MAX_DIMS];
            perm[0] = array_dim;
            for (int d = 0, j = 1; d < final_nd; d++)
                if (d != array_dim) perm[j++] = d;
            ml_tensor *moved = NULL;
            st = ml_permute(&moved, out, perm);
            ml_release(out);
            out = moved;
        }
        return wrap_status(st, &out);
    }
too_many:
    PyErr_Format(PyExc_IndexError, "indexing gives more than %d dimensions", ML_MAX_DIMS);
    goto fail;
status_fail:
    raise_status(st);
fail:
    Py_XDECREF(idx);
    if (arrs)
        for (Py_ssize_t i = 0; i < nk; i++) Py_XDECREF(arrs[i]);
    if (arrs != arrs_inline) PyMem_Free(arrs);
    Py_DECREF(items);
    ml_release(cur);
    return NULL;
}

/* t[i] for iteration: `for row in t` walks the first axis */
static PyObject *Tensor_item_at(TensorObject *self, Py_ssize_t i) {
    if (self->t->ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "iteration over a 0-d tensor");
        return NULL;
    }
    if (i < 0 || i >= (Py_ssize_t)self->t->shape[0]) {
        PyErr_SetString(PyExc_IndexError, "tensor index out of range");
        return NULL;
    }
    PyObject *key = PyLong_FromSsize_t(i);
    if (!key) return NULL;
    PyObject *r = Tensor_getitem(self, key);
    Py_DECREF(key);
    return r;
}

static PySequenceMethods tensor_as_sequence = {.sq_length = (lenfunc)Tensor_len,
                                               .sq_item = (ssizeargfunc)Tensor_item_at};

static PyMappingMethods tensor_as_mapping = {(lenfunc)Tensor_len, (binaryfunc)Tensor_getitem, NULL};

static PyObject *Tensor_repr(TensorObject *self) {
    PyObject *arr = Tensor_numpy(self, NULL);
    if (!arr) return NULL;
    PyObject *s = PyObject_Repr(arr);
    Py_DECREF(arr);
    if (!s) return NULL;
    const char *op = ml_op_name(self->t);
    PyObject *r;
    if (*op)
        r = PyUnicode_FromFormat("<Tensor shape=%s op=%s\n%U>", ML_SHAPE_STR(self->t), op, s);
    else if (self->t->requires_grad)
        r = PyUnicode_FromFormat("<Tensor shape=%s requires_grad=True\n%U>", ML_SHAPE_STR(self->t), s);
    else
        r = PyUnicode_FromFormat("<Tensor shape=%s\n%U>", ML_SHAPE_STR(self->t), s);
    Py_DECREF(s);
    return r;
}

static PyObject *Tensor_get_shape(TensorObject *self, void *c) { return shape_tuple(self->t); }
static PyObject *Tensor_get_ndim(TensorObject *self, void *c) { return PyLong_FromLong(self->t->ndim); }
static PyObject *Tensor_get_size(TensorObject *self, void *c) {
    return PyLong_FromLongLong(self->t->numel);
}
static PyObject *Tensor_get_dtype(TensorObject *self, void *c) {
    return (PyObject *)PyArray_DescrFromType(NPY_FLOAT32);
}
static PyObject *Tensor_get_requires_grad(TensorObject *self, void *c) {
    return PyBool_FromLong(self->t->requires_grad);
}
static int Tensor_set_requires_grad(TensorObject *self, PyObject *v, void *c) {
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete requires_grad");
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0) return -1;
    ml_status st = ml_set_requires_grad(self->t, b);
    if (st) {
        raise_status(st);
        return -1;
    }
    return 0;
}
static PyObject *Tensor_get_is_leaf(TensorObject *self, void *c) {
    return PyBool_FromLong(ml_is_leaf(self->t));
}
static PyObject *Tensor_get_op(TensorObject *self, void *c) {
    return PyUnicode_FromString(ml_op_name(self->t));
}
static PyObject *Tensor_get_T(TensorObject *self, void *c) {
    ml_tensor *out = NULL;
    return wrap_status(ml_permute(&out, self->t, NULL), &out);
}
static PyObject *Tensor_get_version(TensorObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(ml_version(self->t));
}

static PyGetSetDef Tensor_getset[] = {
    {"shape", (getter)Tensor_get_shape, NULL, "The shape, a tuple of ints.", NULL},
    {"ndim", (getter)Tensor_get_ndim, NULL, "Number of dimensions.", NULL},
    {"size", (getter)Tensor_get_size, NULL, "Number of elements.", NULL},
    {"dtype", (getter)Tensor_get_dtype, NULL, "Always numpy.float32.", NULL},
    {"requires_grad", (getter)Tensor_get_requires_grad, (setter)Tensor_set_requires_grad,
     "Whether ops on this tensor are recorded for autograd (settable on leaves).", NULL},
    {"is_leaf", (getter)Tensor_get_is_leaf, NULL, "True when no recorded op made this tensor.", NULL},
    {"op", (getter)Tensor_get_op, NULL, "Name of the op that made this tensor ('' for a leaf).", NULL},
    {"T", (getter)Tensor_get_T, NULL, "The tensor with its dimensions reversed.", NULL},
    {"_version", (getter)Tensor_get_version, NULL, "In-place write counter.", NULL},
    {NULL},
};

static PyMethodDef Tensor_methods[] = {
    {"numpy", (PyCFunction)Tensor_numpy, METH_NOARGS,
     "numpy() -> ndarray sharing this tensor's memory.\n\n"
     "Writes through it are not seen by autograd's in-place check (see Tensor)."},
    {"__array__", (PyCFunction)(void (*)(void))Tensor_array, METH_VARARGS | METH_KEYWORDS, NULL},
    {"item", (PyCFunction)Tensor_item, METH_NOARGS, "The value of a one-element tensor."},
    {"tolist", (PyCFunction)Tensor_tolist, METH_NOARGS, "Nested lists of Python floats."},
    {"detach", (PyCFunction)Tensor_detach, METH_NOARGS,
     "A leaf sharing this tensor's memory, cut from the graph."},
    {"reshape", (PyCFunction)Tensor_reshape, METH_VARARGS, "reshape(*shape) (one -1 allowed)."},
    {"transpose", (PyCFunction)(void (*)(void))Tensor_transpose, METH_VARARGS | METH_KEYWORDS,
     "transpose(perm=None): permute the dims (reverse them by default)."},
    {"sum", (PyCFunction)(void (*)(void))Tensor_sum, METH_VARARGS | METH_KEYWORDS,
     "sum(axis=None, keepdims=False)"},
    {"mean", (PyCFunction)(void (*)(void))Tensor_mean, METH_VARARGS | METH_KEYWORDS,
     "mean(axis=None, keepdims=False)"},
    {"max", (PyCFunction)(void (*)(void))Tensor_max, METH_VARARGS | METH_KEYWORDS,
     "max(axis=None, keepdims=False)"},
    {NULL},
};

PyTypeObject TensorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "metalearn.Tensor",
    .tp_basicsize = sizeof(TensorObject),
    .tp_dealloc = (destructor)Tensor_dealloc,
    .tp_repr = (reprfunc)Tensor_repr,
    .tp_as_number = &tensor_as_number,
    .tp_as_sequence = &tensor_as_sequence,
    .tp_as_mapping = &tensor_as_mapping,
    .tp_as_buffer = &tensor_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Tensor(data, requires_grad=False)\n\n"
              "A float32, C-contiguous, refcounted array of up to 8 dimensions. Ops on tensors\n"
              "that require grad are recorded for metalearn.grad. np.asarray(t) shares memory.\n\n"
              "In-place writes: Variable.assign, metalearn._core.assign and optimizer steps\n"
              "bump the tensor's version, and a later gradient through a graph that used the\n"
              "old values raises. Writes through a NumPy view (np.asarray(t), t.numpy(),\n"
              "memoryview) are not seen by that check: a gradient computed afterwards uses the\n"
              "new values. Reading through a view is always safe; write with Variable.assign.",
    .tp_weaklistoffset = offsetof(TensorObject, weakreflist),
    .tp_methods = Tensor_methods,
    .tp_getset = Tensor_getset,
    .tp_new = Tensor_new,
};

/* -------------------------------------------------------- module functions */

/* tensor(data, requires_grad=False): always a copy */
static PyObject *mod_tensor(PyObject *m, PyObject *args, PyObject *kwds) {
    return Tensor_new(&TensorType, args, kwds);
}

typedef struct {
    PyObject *arr;
} np_owner;

static void release_array(void *ctx) {
    /* may run on any thread, with or without the GIL */
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF((PyObject *)ctx);
    PyGILState_Release(g);
}

/* as_tensor(array): shares a float32 C-contiguous writable ndarray's memory, else copies */
static PyObject *mod_as_tensor(PyObject *m, PyObject *obj) {
    if (Tensor_Check(obj)) {
        Py_INCREF(obj);
        return obj;
    }
    if (PyArray_Check(obj)) {
        PyArrayObject *a = (PyArrayObject *)obj;
        if (PyArray_TYPE(a) == NPY_FLOAT32 && PyArray_IS_C_CONTIGUOUS(a) &&
            PyArray_ISALIGNED(a) && PyArray_ISNOTSWAPPED(a) && PyArray_ISWRITEABLE(a) && PyArray_NDIM(a) <= ML_MAX_DIMS) {
            int64_t shape[ML_MAX_DIMS];
            for (int i = 0; i < PyArray_NDIM(a); i++) shape[i] = PyArray_DIM(a, i);
            ml_tensor *t = NULL;
            Py_INCREF(obj);
            ml_status st = ml_tensor_wrap(&t, PyArray_NDIM(a), shape, PyArray_DATA(a),
                                          release_array, obj);
            if (st) {
                Py_DECREF(obj);
                return raise_status(st);
            }
            return wrap(t);
        }
    }
    return wrap(as_ml(obj, "as_tensor"));
}

static PyObject *filled(PyObject *args, PyObject *kwds, float value, int has_value,
                        const char *name) {
    static char *kwlist[] = {"shape", "value", NULL};
    static char *kwlist1[] = {"shape", NULL};
    PyObject *shape_obj;
    double v = value;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, has_value ? "Od" : "O",
                                     has_value ? kwlist : kwlist1, &shape_obj, &v))
        return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (parse_shape(shape_obj, &nd, shape, -1, name) < 0) return NULL;
    ml_tensor *out = NULL;
    return wrap_status(ml_tensor_full(&out, nd, shape, (float)v), &out);
}
static PyObject *mod_zeros(PyObject *m, PyObject *a, PyObject *k) { return filled(a, k, 0, 0, "zeros"); }
static PyObject *mod_ones(PyObject *m, PyObject *a, PyObject *k) { return filled(a, k, 1, 0, "ones"); }
static PyObject *mod_full(PyObject *m, PyObject *a, PyObject *k) { return filled(a, k, 0, 1, "full"); }

/* ---- unary and binary ops, driven by tables ---- */

typedef ml_status (*unary_fn)(ml_tensor **, ml_tensor *);

static PyObject *unary(PyObject *x, unary_fn fn, const char *name) {
    ml_tensor *t = as_ml(x, name);
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    CALL(st, t->numel * 8, fn(&out, t));
    ml_release(t);
    return wrap_status(st, &out);
}

#define UNARY_OPS(X)                 \
    X(neg, ml_neg, "negative")       \
    X(square, ml_square, "square")   \
    X(sqrt, ml_sqrt, "sqrt")         \
    X(exp, ml_exp, "exp")            \
    X(log, ml_log, "log")            \
    X(abs, ml_abs, "abs")            \
    X(sign, ml_sign, "sign")         \
    X(relu, ml_relu, "relu")         \
    X(sigmoid, ml_sigmoid, "sigmoid") \
    X(tanh, ml_tanh, "tanh")         \
    X(erf, ml_erf, "erf")            \
    X(gelu, ml_gelu, "gelu")

#define DEF_UNARY(py, fn, label) \
    static PyObject *mod_##py(PyObject *m, PyObject *x) { return unary(x, fn, label); }
UNARY_OPS(DEF_UNARY)
#undef DEF_UNARY

#define BINARY_OPS(X)                  \
    X(add, ml_add, "add")              \
    X(sub, ml_sub, "subtract")         \
    X(mul, ml_mul, "multiply")         \
    X(div, ml_div, "divide")           \
    X(maximum, ml_maximum, "maximum")  \
    X(minimum, ml_minimum, "minimum")

#define DEF_BINARY(py, fn, label)                                                     \
    static PyObject *mod_##py(PyObject *m, PyObject *const *args, Py_ssize_t nargs) { \
        if (nargs != 2) {                                                             \
            PyErr_Format(PyExc_TypeError, label "() takes 2 arguments (%zd given)", nargs); \
            return NULL;                                                              \
        }                                                                             \
        return binary(args[0], args[1], fn, label);                                   \
    }
BINARY_OPS(DEF_BINARY)
#undef DEF_BINARY

/* ops with one tensor and one float parameter */
typedef ml_status (*unary_f_fn)(ml_tensor **, ml_tensor *, float);

static PyObject *unary_f(PyObject *args, PyObject *kwds, unary_f_fn fn, const char *fmt,
                         char **kwlist, double dflt) {
    PyObject *x;
    double p = dflt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &x, &p)) return NULL;
    ml_tensor *t = as_ml(x, kwlist[0]);
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    CALL(st, t->numel * 8, fn(&out, t, (float)p));
    ml_release(t);
    return wrap_status(st, &out);
}

static PyObject *mod_pow(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"x", "exponent", NULL};
    return unary_f(args, kwds, ml_pow_scalar, "Od:pow", kw, 1.0);
}
static PyObject *mod_leaky_relu(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"x", "negative_slope", NULL};
    return unary_f(args, kwds, ml_leaky_relu, "O|d:leaky_relu", kw, 0.2);
}
static PyObject *mod_elu(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"x", "alpha", NULL};
    return unary_f(args, kwds, ml_elu, "O|d:elu", kw, 1.0);
}

static PyObject *mod_clip(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "clip_value_min", "clip_value_max", NULL};
    PyObject *x;
    double lo, hi;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Odd:clip", kwlist, &x, &lo, &hi)) return NULL;
    ml_tensor *t = as_ml(x, "clip");
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_clip(&out, t, (float)lo, (float)hi);
    ml_release(t);
    return wrap_status(st, &out);
}

static PyObject *mod_softmax_like(PyObject *args, PyObject *kwds, int log) {
    static char *kwlist[] = {"x", "axis", NULL};
    PyObject *x, *axis_o = NULL;
    int axis;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, log ? "O|O:log_softmax" : "O|O:softmax", kwlist,
                                     &x, &axis_o) ||
        axis_arg(axis_o, -1, &axis, log ? "log_softmax" : "softmax") < 0)
        return NULL;
    ml_tensor *t = as_ml(x, log ? "log_softmax" : "softmax");
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    CALL(st, t->numel * 8, (log ? ml_log_softmax : ml_softmax)(&out, t, axis));
    ml_release(t);
    return wrap_status(st, &out);
}
static PyObject *mod_softmax(PyObject *m, PyObject *a, PyObject *k) { return mod_softmax_like(a, k, 0); }
static PyObject *mod_log_softmax(PyObject *m, PyObject *a, PyObject *k) { return mod_softmax_like(a, k, 1); }

static PyObject *mod_matmul(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"a", "b", "transpose_a", "transpose_b", NULL};
    PyObject *a, *b;
    int ta = 0, tb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|pp:matmul", kwlist, &a, &b, &ta, &tb))
        return NULL;
    ml_tensor *x = as_ml(a, "matmul"), *y = x ? as_ml(b, "matmul") : NULL;
    if (!y) {
        ml_release(x);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    int64_t k = ta ? (x->ndim ? x->shape[0] : 0) : (x->ndim ? x->shape[x->ndim - 1] : 0);
    CALL(st, (x->numel + y->numel) * (k > 0 ? k : 1) / 4, ml_matmul(&out, x, y, ta, tb));
    ml_release(x);
    ml_release(y);
    return wrap_status(st, &out);
}

static int parse_activation(PyObject *obj, ml_activation *act) {
    if (!obj || obj == Py_None) {
        *act = ML_ACT_NONE;
        return 0;
    }
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s && (!strcmp(s, "linear") || !strcmp(s, "none"))) *act = ML_ACT_NONE;
    else if (s && !strcmp(s, "relu")) *act = ML_ACT_RELU;
    else if (s && !strcmp(s, "sigmoid")) *act = ML_ACT_SIGMOID;
    else if (s && !strcmp(s, "tanh")) *act = ML_ACT_TANH;
    else {
        PyErr_SetString(PyExc_ValueError, "linear: activation must be None, 'linear', 'relu', "
                        "'sigmoid' or 'tanh'");
        return -1;
    }
    return 0;
}

static PyObject *mod_linear(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "kernel", "bias", "activation", NULL};
    PyObject *xo, *wo, *bo = Py_None, *acto = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO:linear", kwlist, &xo, &wo, &bo, &acto))
        return NULL;
    ml_activation act;
    if (parse_activation(acto, &act) < 0) return NULL;
    ml_tensor *x = as_ml(xo, "linear"), *w = x ? as_ml(wo, "linear") : NULL, *b = NULL;
    if (w && bo != Py_None) b = as_ml(bo, "linear");
    if (!w || (bo != Py_None && !b)) {
        ml_release(x);
        ml_release(w);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    CALL(st, x->numel * (w->ndim == 2 ? w->shape[1] : 1) / 4, ml_linear(&out, x, w, b, act));
    ml_release(x);
    ml_release(w);
    ml_release(b);
    return wrap_status(st, &out);
}

static PyObject *mod_reshape(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "shape", NULL};
    PyObject *xo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:reshape", kwlist, &xo, &so)) return NULL;
    ml_tensor *x = as_ml(xo, "reshape");
    if (!x) return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    ml_tensor *out = NULL;
    ml_status st = ML_OK;
    if (parse_shape(so, &nd, shape, x->numel, "reshape") < 0) {
        ml_release(x);
        return NULL;
    }
    st = ml_reshape(&out, x, nd, shape);
    ml_release(x);
    return wrap_status(st, &out);
}

static PyObject *mod_transpose(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "perm", NULL};
    PyObject *xo, *po = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:transpose", kwlist, &xo, &po)) return NULL;
    ml_tensor *x = as_ml(xo, "transpose");
    if (!x) return NULL;
    int perm[ML_MAX_DIMS], have;
    ml_tensor *out = NULL;
    if (parse_perm(po, x, perm, &have) < 0) {
        ml_release(x);
        return NULL;
    }
    ml_status st = ml_permute(&out, x, have ? perm : NULL);
    ml_release(x);
    return wrap_status(st, &out);
}

typedef ml_status (*shape_fn)(ml_tensor **, ml_tensor *, int, const int64_t *);

static PyObject *to_shape_op(PyObject *args, PyObject *kwds, shape_fn fn, const char *name) {
    static char *kwlist[] = {"x", "shape", NULL};
    PyObject *xo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &xo, &so)) return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (parse_shape(so, &nd, shape, -1, name) < 0) return NULL;
    ml_tensor *x = as_ml(xo, name);
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st = fn(&out, x, nd, shape);
    ml_release(x);
    return wrap_status(st, &out);
}
static PyObject *mod_broadcast_to(PyObject *m, PyObject *a, PyObject *k) {
    return to_shape_op(a, k, ml_broadcast_to, "broadcast_to");
}
static PyObject *mod_sum_to(PyObject *m, PyObject *a, PyObject *k) {
    return to_shape_op(a, k, ml_sum_to, "sum_to");
}

static PyObject *mod_concat(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"values", "axis", NULL};
    PyObject *vo, *axis_o = NULL;
    int axis;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:concat", kwlist, &vo, &axis_o) ||
        axis_arg(axis_o, 0, &axis, "concat") < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(vo, "concat: expected a list of tensors");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > INT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "concat: expected a non-empty list of tensors");
        return NULL;
    }
    ml_tensor **xs = PyMem_Calloc((size_t)n, sizeof *xs);
    ml_tensor *out = NULL;
    ml_status st = ML_OK;
    int ok = xs != NULL;
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = (xs[i] = as_ml(PySequence_Fast_GET_ITEM(seq, i), "concat")) != NULL;
    if (ok) st = ml_concat(&out, (int)n, xs, axis);
    for (Py_ssize_t i = 0; xs && i < n; i++) ml_release(xs[i]);
    PyMem_Free(xs);
    Py_DECREF(seq);
    if (!xs) return PyErr_NoMemory();
    if (!ok) return NULL;
    return wrap_status(st, &out);
}

static PyObject *mod_narrow(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "axis", "start", "length", NULL};
    PyObject *xo, *axis_o;
    int axis;
    long long start, length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOLL:narrow", kwlist, &xo, &axis_o, &start,
                                     &length) ||
        axis_arg(axis_o, 0, &axis, "narrow") < 0)
        return NULL;
    ml_tensor *x = as_ml(xo, "narrow");
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_narrow(&out, x, axis, start, length);
    ml_release(x);
    return wrap_status(st, &out);
}

static PyObject *mod_gather(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "indices", "axis", NULL};
    PyObject *xo, *io, *axis_o = NULL;
    int axis;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:gather", kwlist, &xo, &io, &axis_o) ||
        axis_arg(axis_o, 0, &axis, "gather") < 0)
        return NULL;
    PyArrayObject *idx = to_index_array(io, "gather");
    if (!idx) return NULL;
    if (PyArray_NDIM(idx) > 1 || PyArray_SIZE(idx) > INT32_MAX) {
        Py_DECREF(idx);
        PyErr_SetString(PyExc_ValueError, "gather: indices must be a 1-D integer array");
        return NULL;
    }
    ml_tensor *x = as_ml(xo, "gather"), *out = NULL;
    ml_status st = x ? ml_gather(&out, x, (int)PyArray_SIZE(idx), PyArray_DATA(idx), axis) : ML_OK;
    ml_release(x);
    Py_DECREF(idx);
    if (!x) return NULL;
    return wrap_status(st, &out);
}

static PyObject *mod_one_hot(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"labels", "depth", NULL};
    PyObject *lo;
    long long depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OL:one_hot", kwlist, &lo, &depth)) return NULL;
    PyArrayObject *idx = to_index_array(lo, "one_hot");
    if (!idx) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_one_hot(&out, PyArray_SIZE(idx), PyArray_DATA(idx), depth);
    Py_DECREF(idx);
    return wrap_status(st, &out);
}

#define MOD_REDUCE(pyname, fn, label)                                                         \
    static PyObject *pyname(PyObject *m, PyObject *args, PyObject *kwds) {                    \
        static char *kwlist[] = {"x", "axis", "keepdims", NULL};                              \
        PyObject *xo, *axis = Py_None;                                                        \
        int keepdims = 0;                                                                     \
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|Op:" label, kwlist, &xo, &axis, &keepdims)) \
            return NULL;                                                                      \
        ml_tensor *x = as_ml(xo, label);                                                      \
        if (!x) return NULL;                                                                  \
        PyObject *r = reduce_common(x, axis, keepdims, fn, label);                            \
        ml_release(x);                                                                        \
        return r;                                                                             \
    }
MOD_REDUCE(mod_reduce_sum, ml_sum, "reduce_sum")
MOD_REDUCE(mod_reduce_mean, ml_mean, "reduce_mean")
MOD_REDUCE(mod_reduce_max, ml_max, "reduce_max")

/* ---- losses ---- */

typedef ml_status (*loss_fn)(ml_tensor **, ml_tensor *, ml_tensor *, int);

static ml_status mse3(ml_tensor **o, ml_tensor *t, ml_tensor *p, int unused) {
    return ml_mean_squared_error(o, t, p);
}

static PyObject *loss_common(PyObject *args, PyObject *kwds, loss_fn fn, const char *name,
                             int has_logits) {
    static char *kwlist[] = {"y_true", "y_pred", "from_logits", NULL};
    static char *kwlist2[] = {"y_true", "y_pred", NULL};
    PyObject *to, *po;
    int from_logits = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, has_logits ? "OO|p" : "OO",
                                     has_logits ? kwlist : kwlist2, &to, &po, &from_logits))
        return NULL;
    ml_tensor *t = as_ml(to, name), *p = t ? as_ml(po, name) : NULL;
    if (!p) {
        ml_release(t);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    CALL(st, p->numel * 8, fn(&out, t, p, from_logits));
    ml_release(t);
    ml_release(p);
    return wrap_status(st, &out);
}
static PyObject *mod_mse(PyObject *m, PyObject *a, PyObject *k) {
    return loss_common(a, k, mse3, "mean_squared_error", 0);
}
static PyObject *mod_cce(PyObject *m, PyObject *a, PyObject *k) {
    return loss_common(a, k, ml_categorical_crossentropy, "categorical_crossentropy", 1);
}
static PyObject *mod_bce(PyObject *m, PyObject *a, PyObject *k) {
    return loss_common(a, k, ml_binary_crossentropy, "binary_crossentropy", 1);
}

static PyObject *mod_scce(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"y_true", "y_pred", "from_logits", NULL};
    PyObject *to, *po;
    int from_logits = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|p:sparse_categorical_crossentropy", kwlist,
                                     &to, &po, &from_logits))
        return NULL;
    PyArrayObject *labels = NULL;
    if (Tensor_Check(to)) { /* labels read in C when the op runs (traces replay them) */
        ml_tensor *p = as_ml(po, "sparse_categorical_crossentropy"), *out = NULL;
        if (!p) return NULL;
        ml_status st;
        CALL(st, p->numel * 8, ml_sparse_categorical_crossentropy_t(&out, T(to), p, from_logits));
        ml_release(p);
        return wrap_status(st, &out);
    }
    labels = to_index_array(to, "sparse_categorical_crossentropy");
    if (!labels) return NULL;
    ml_tensor *p = as_ml(po, "sparse_categorical_crossentropy"), *out = NULL;
    ml_status st = ML_OK;
    if (p) {
        /* Keras accepts labels shaped (N,) or (N, 1) */
        CALL(st, p->numel * 8,
             ml_sparse_categorical_crossentropy(&out, PyArray_SIZE(labels), PyArray_DATA(labels),
                                                p, from_logits));
    }
    ml_release(p);
    Py_DECREF(labels);
    if (!p) return NULL;
    return wrap_status(st, &out);
}

/* ---- autograd ---- */

/* A Tensor or a sequence of Tensors -> new array of borrowed ml_tensor pointers */
/* Releases ts[0..n) (NULL entries allowed) and frees the array. */
static void release_tensors(ml_tensor **ts, Py_ssize_t n) {
    for (Py_ssize_t i = 0; ts && i < n; i++) ml_release(ts[i]);
    PyMem_Free(ts);
}

/* The tensors of a Tensor or a sequence of them: new references (release_tensors). */
static ml_tensor **tensor_list(PyObject *obj, Py_ssize_t *n, const char *what, int allow_none) {
    PyObject *seq;
    if (Tensor_Check(obj)) {
        seq = PyTuple_Pack(1, obj);
    } else {
        seq = PySequence_Fast(obj, "expected a tensor or a list of tensors");
        if (!seq) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a Tensor or a list of Tensors, got %.100s",
                         what, type_name(obj));
            return NULL;
        }
    }
    if (!seq) return NULL;
    *n = PySequence_Fast_GET_SIZE(seq);
    ml_tensor **ts = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof *ts);
    if (!ts) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        if (allow_none && it == Py_None) continue;
        if (!Tensor_Check(it)) {
            PyErr_Format(PyExc_TypeError, "%s[%zd] must be a Tensor, got %.100s", what, i,
                         type_name(it));
            release_tensors(ts, i);
            Py_DECREF(seq);
            return NULL;
        }
        /* a reference of our own: the call may release the GIL, and another thread may
         * then empty the caller's list (the list's items were the only owners) */
        ts[i] = T(it);
        ml_retain(ts[i]);
    }
    Py_DECREF(seq);
    return ts;
}

static PyObject *mod_grad(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"outputs", "inputs", "grad_outputs", "create_graph", "allow_unused", NULL};
    PyObject *oo, *io, *go = Py_None;
    int create_graph = 0, allow_unused = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Opp:grad", kwlist, &oo, &io, &go,
                                     &create_graph, &allow_unused))
        return NULL;
    Py_ssize_t no = 0, ni = 0, ng = 0;
    ml_tensor **outs = NULL, **ins = NULL, **gouts = NULL, **grads = NULL;
    ml_tensor **owned_g = NULL; /* grad_outputs converted from arrays */
    PyObject *result = NULL;
    if (!(outs = tensor_list(oo, &no, "grad: outputs", 0))) goto done;
    if (!(ins = tensor_list(io, &ni, "grad: inputs", 0))) goto done;
    if (no < 1 || ni < 1 || no > INT32_MAX || ni > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "grad: needs at least one output and one input");
        goto done;
    }
    if (go != Py_None) {
        PyObject *seq = Tensor_Check(go) || PyArray_Check(go) ? PyTuple_Pack(1, go)
                                                              : PySequence_Fast(go, "grad_outputs");
        if (!seq) goto done;
        ng = PySequence_Fast_GET_SIZE(seq);
        if (ng != no) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "grad: %zd grad_outputs for %zd outputs", ng, no);
            goto done;
        }
        gouts = PyMem_Calloc((size_t)ng, sizeof *gouts);
        owned_g = PyMem_Calloc((size_t)ng, sizeof *owned_g);
        if (!gouts || !owned_g) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < ng; i++) {
            PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
            if (it == Py_None) continue;
            if (!(owned_g[i] = as_ml(it, "grad_outputs"))) {
                Py_DECREF(seq);
                goto done;
            }
            gouts[i] = owned_g[i];
        }
        Py_DECREF(seq);
    }
    grads = PyMem_Calloc((size_t)ni, sizeof *grads);
    if (!grads) {
        PyErr_NoMemory();
        goto done;
    }
    ml_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ml_grad(grads, (int)no, outs, (int)ni, ins, gouts, create_graph, allow_unused);
    Py_END_ALLOW_THREADS
    if (st) {
        raise_status(st);
        goto done;
    }
    result = PyList_New(ni);
    for (Py_ssize_t j = 0; j < ni; j++) {
        PyObject *g = grads[j] ? wrap(grads[j]) : (Py_INCREF(Py_None), Py_None);
        grads[j] = NULL;
        if (!g || !result) {
            Py_XDECREF(g);
            continue;
        }
        PyList_SET_ITEM(result, j, g);
    }
    if (result && PyErr_Occurred()) Py_CLEAR(result);
done:
    for (Py_ssize_t i = 0; owned_g && i < ng; i++) ml_release(owned_g[i]);
    for (Py_ssize_t j = 0; grads && j < ni; j++) ml_release(grads[j]);
    release_tensors(outs, no);
    release_tensors(ins, ni);
    PyMem_Free(gouts);
    PyMem_Free(owned_g);
    PyMem_Free(grads);
    return result;
}

static PyObject *mod_is_grad_enabled(PyObject *m, PyObject *unused) {
    return PyBool_FromLong(ml_grad_enabled());
}

static PyObject *mod_set_grad_enabled(PyObject *m, PyObject *v) {
    int b = PyObject_IsTrue(v);
    if (b < 0) return NULL;
    return PyBool_FromLong(ml_set_grad_enabled(b));
}

static PyObject *mod_assign(PyObject *m, PyObject *args) {
    PyObject *dst, *src;
    if (!PyArg_ParseTuple(args, "O!O:assign", &TensorType, &dst, &src)) return NULL;
    ml_tensor *s = as_ml(src, "assign");
    if (!s) return NULL;
    ml_status st = ml_assign(T(dst), s);
    ml_release(s);
    if (st) return raise_status(st);
    Py_RETURN_NONE;
}

/* ---- random ---- */

static PyObject *mod_seed(PyObject *m, PyObject *arg) {
    unsigned long long s = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred()) return NULL;
    ml_rng_seed(s);
    Py_RETURN_NONE;
}

typedef ml_status (*rng_fn)(ml_tensor **, int, const int64_t *, float, float);

static PyObject *rng_common(PyObject *args, PyObject *kwds, rng_fn fn, char **kwlist,
                            const char *fmt, double a, double b) {
    PyObject *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &so, &a, &b)) return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (parse_shape(so, &nd, shape, -1, kwlist[0]) < 0) return NULL;
    ml_tensor *out = NULL;
    return wrap_status(fn(&out, nd, shape, (float)a, (float)b), &out);
}
static PyObject *mod_random_uniform(PyObject *m, PyObject *a, PyObject *k) {
    static char *kw[] = {"shape", "minval", "maxval", NULL};
    return rng_common(a, k, ml_rng_uniform, kw, "O|dd:random_uniform", 0.0, 1.0);
}
static PyObject *mod_random_normal(PyObject *m, PyObject *a, PyObject *k) {
    static char *kw[] = {"shape", "mean", "stddev", NULL};
    return rng_common(a, k, ml_rng_normal, kw, "O|dd:random_normal", 0.0, 1.0);
}
static PyObject *mod_truncated_normal(PyObject *m, PyObject *a, PyObject *k) {
    static char *kw[] = {"shape", "mean", "stddev", NULL};
    return rng_common(a, k, ml_rng_truncated_normal, kw, "O|dd:truncated_normal", 0.0, 1.0);
}

static PyObject *mod_permutation(PyObject *m, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "permutation: n must be >= 0, got %lld", n);
        return NULL;
    }
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *arr = PyArray_SimpleNew(1, dims, NPY_INT64);
    if (!arr) return NULL;
    ml_rng_permutation((int64_t *)PyArray_DATA((PyArrayObject *)arr), n);
    return arr;
}

/* ---- files ---- */

static PyObject *mod_save_tensors(PyObject *m, PyObject *args) {
    PyObject *path_obj, *names_obj, *tensors_obj, *path_bytes = NULL;
    if (!PyArg_ParseTuple(args, "OOO:save_tensors", &path_obj, &names_obj, &tensors_obj)) return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path_bytes)) return NULL;
    /* a tuple, not PySequence_Fast's list: the C strings below are read with the GIL
     * released, and another thread could clear a list (freeing the names) meanwhile */
    PyObject *names = PySequence_Check(names_obj) ? PySequence_Tuple(names_obj) : NULL;
    if (!names && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "save_tensors: names must be a list of str");
    PyObject *tens = names ? PySequence_Fast(tensors_obj, "save_tensors: tensors must be a list") : NULL;
    Py_ssize_t n = 0;
    const char **cnames = NULL;
    ml_tensor **ts = NULL;
    PyObject *result = NULL;
    if (!tens) goto done;
    n = PySequence_Fast_GET_SIZE(names);
    if (n != PySequence_Fast_GET_SIZE(tens) || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "save_tensors: %zd names for %zd tensors", n,
                     PySequence_Fast_GET_SIZE(tens));
        goto done;
    }
    cnames = PyMem_Calloc((size_t)(n ? n : 1), sizeof *cnames);
    ts = PyMem_Calloc((size_t)(n ? n : 1), sizeof *ts);
    if (!cnames || !ts) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *nm = PySequence_Fast_GET_ITEM(names, i);
        if (!PyUnicode_Check(nm)) {
            PyErr_Format(PyExc_TypeError, "save_tensors: name %zd must be a str, got %.100s", i,
                         type_name(nm));
            goto done;
        }
        Py_ssize_t len;
        if (!(cnames[i] = PyUnicode_AsUTF8AndSize(nm, &len))) goto done;
        /* the file stores C strings: a NUL would cut the name short without a word */
        if (strlen(cnames[i]) != (size_t)len) {
            PyErr_Format(PyExc_ValueError, "save_tensors: tensor name %R (entry %zd) contains a "
                         "NUL character", nm, i);
            goto done;
        }
        if (!(ts[i] = as_ml(PySequence_Fast_GET_ITEM(tens, i), "save_tensors"))) goto done;
    }
    ml_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ml_save_tensors(PyBytes_AS_STRING(path_bytes), (int)n, cnames, ts);
    Py_END_ALLOW_THREADS
    if (st) {
        raise_status(st);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; ts && i < n; i++) ml_release(ts[i]);
    PyMem_Free(ts);
    PyMem_Free(cnames);
    Py_XDECREF(names);
    Py_XDECREF(tens);
    Py_XDECREF(path_bytes);
    return result;
}

static PyObject *mod_load_tensors(PyObject *m, PyObject *path_obj) {
    PyObject *path_bytes = NULL;
    if (!PyUnicode_FSConverter(path_obj, &path_bytes)) return NULL;
    int n = 0;
    char **names = NULL;
    ml_tensor **ts = NULL;
    ml_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ml_load_tensors(PyBytes_AS_STRING(path_bytes), &n, &names, &ts);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st) return raise_status(st);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        ml_tensor *t = ts[i];
        npy_intp dims[ML_MAX_DIMS];
        for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
        PyObject *arr = PyArray_SimpleNew(t->ndim, dims, NPY_FLOAT32);
        PyObject *name = PyUnicode_DecodeUTF8(names[i], (Py_ssize_t)strlen(names[i]), "replace");
        PyObject *pair = arr && name ? PyTuple_Pack(2, name, arr) : NULL;
        if (arr && t->numel) memcpy(PyArray_DATA((PyArrayObject *)arr), t->data, (size_t)t->numel * 4);
        Py_XDECREF(arr);
        Py_XDECREF(name);
        if (!pair) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    ml_free_loaded(n, names, ts);
    return list;
}

/* write_file(path, data): bytes written as weight files are (a unique temporary file,
 * fsync, rename; links followed, special files refused), for the Python side's own files
 * (MetaLearner's config.json) */
static PyObject *mod_write_file(PyObject *m, PyObject *args) {
    PyObject *path_bytes = NULL;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "O&y*:write_file", PyUnicode_FSConverter, &path_bytes, &data))
        return NULL;
    ml_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ml__write_atomic(PyBytes_AS_STRING(path_bytes), data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    Py_DECREF(path_bytes);
    if (st) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *mod_kernel_name(PyObject *m, PyObject *unused) {
    return PyUnicode_FromString(ml_kernel_name());
}

/* ------------------------------------------------------------- optimizers */

typedef struct {
    PyObject_HEAD
    ml_optimizer *opt;
} OptimizerObject;

static PyTypeObject OptimizerType;

static void Optimizer_dealloc(OptimizerObject *self) {
    ml_optimizer_free(self->opt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *new_optimizer(ml_status st, ml_optimizer *opt) {
    if (st) return raise_status(st);
    OptimizerObject *o = PyObject_New(OptimizerObject, &OptimizerType);
    if (!o) {
        ml_optimizer_free(opt);
        return NULL;
    }
    o->opt = opt;
    return (PyObject *)o;
}

static PyObject *mod_SGD(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"learning_rate", "momentum", "nesterov", NULL};
    double lr = 0.01, momentum = 0.0;
    int nesterov = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ddp:SGD", kwlist, &lr, &momentum, &nesterov))
        return NULL;
    ml_optimizer *opt = NULL;
    ml_status st = ml_sgd_new(&opt, (float)lr, (float)momentum, nesterov);
    return new_optimizer(st, opt);
}

static PyObject *mod_Adam(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", NULL};
    double lr = 0.001, b1 = 0.9, b2 = 0.999, eps = 1e-7;
    int amsgrad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ddddp:Adam", kwlist, &lr, &b1, &b2, &eps, &amsgrad))
        return NULL;
    ml_optimizer *opt = NULL;
    ml_status st = ml_adam_new(&opt, (float)lr, (float)b1, (float)b2, (float)eps, amsgrad);
    return new_optimizer(st, opt);
}

/* step(params, grads): grads may be Tensors or arrays; params must be Tensors */
static PyObject *Optimizer_step(OptimizerObject *self, PyObject *args) {
    PyObject *po, *go;
    if (!PyArg_ParseTuple(args, "OO:step", &po, &go)) return NULL;
    PyObject *ps = PySequence_Fast(po, "step: params must be a list of Tensors");
    PyObject *gs = ps ? PySequence_Fast(go, "step: grads must be a list") : NULL;
    Py_ssize_t n = 0;
    ml_tensor **params = NULL, **grads = NULL;
    PyObject *result = NULL;
    if (!gs) goto done;
    n = PySequence_Fast_GET_SIZE(ps);
    if (n != PySequence_Fast_GET_SIZE(gs) || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "optimizer step: %zd parameters but %zd gradients", n,
                     PySequence_Fast_GET_SIZE(gs));
        goto done;
    }
    params = PyMem_Calloc((size_t)(n ? n : 1), sizeof *params);
    grads = PyMem_Calloc((size_t)(n ? n : 1), sizeof *grads);
    if (!params || !grads) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(ps, i);
        if (!Tensor_Check(p)) {
            PyErr_Format(PyExc_TypeError, "optimizer step: parameter %zd must be a Tensor or "
                         "Variable, got %.100s",
                         i, type_name(p));
            goto done;
        }
        params[i] = T(p);
        ml_retain(params[i]);
        if (!(grads[i] = as_ml(PySequence_Fast_GET_ITEM(gs, i), "optimizer step"))) goto done;
    }
    ml_status st;
    int64_t work = 0;
    for (Py_ssize_t i = 0; i < n; i++) work += params[i]->numel;
    CALL(st, work, ml_optimizer_step(self->opt, (int)n, params, grads));
    if (st) {
        raise_status(st);
        goto done;
    }
    if (keep_alive_in_trace((PyObject *)self) < 0) goto done; /* a replay steps it again */
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; i < n && params; i++) {
        ml_release(params[i]);
        if (grads) ml_release(grads[i]);
    }
    PyMem_Free(params);
    PyMem_Free(grads);
    Py_XDECREF(ps);
    Py_XDECREF(gs);
    return result;
}

static PyObject *Optimizer_slots(OptimizerObject *self, PyObject *unused) {
    int np = ml_optimizer_n_params(self->opt), ns = ml_optimizer_n_slots(self->opt);
    PyObject *outer = PyList_New(np);
    for (int i = 0; outer && i < np; i++) {
        PyObject *inner = PyList_New(ns);
        for (int s = 0; inner && s < ns; s++) {
            ml_tensor *t = NULL;
            ml_status st = ml_optimizer_slot(&t, self->opt, i, s);
            PyObject *w = st ? raise_status(st) : wrap(t);
            if (!w) {
                Py_CLEAR(inner);
                break;
            }
            PyList_SET_ITEM(inner, s, w);
        }
        if (!inner) {
            Py_CLEAR(outer);
            break;
        }
        PyList_SET_ITEM(outer, i, inner);
    }
    return outer;
}

static PyObject *Optimizer_reset(OptimizerObject *self, PyObject *unused) {
    ml_optimizer_reset(self->opt);
    Py_RETURN_NONE;
}

static PyObject *Optimizer_get_lr(OptimizerObject *self, void *c) {
    return PyFloat_FromDouble(ml_optimizer_get_lr(self->opt));
}
static int Optimizer_set_lr(OptimizerObject *self, PyObject *v, void *c) {
    double lr = v ? PyFloat_AsDouble(v) : -1;
    if (lr == -1.0 && PyErr_Occurred()) return -1;
    ml_status st = ml_optimizer_set_lr(self->opt, (float)lr);
    if (st) {
        raise_status(st);
        return -1;
    }
    return 0;
}
static PyObject *Optimizer_get_iterations(OptimizerObject *self, void *c) {
    return PyLong_FromLongLong(ml_optimizer_iterations(self->opt));
}
static PyObject *Optimizer_get_n_params(OptimizerObject *self, void *c) {
    return PyLong_FromLong(ml_optimizer_n_params(self->opt));
}

static PyGetSetDef Optimizer_getset[] = {
    {"learning_rate", (getter)Optimizer_get_lr, (setter)Optimizer_set_lr, "The learning rate.", NULL},
    {"iterations", (getter)Optimizer_get_iterations, NULL, "Steps taken.", NULL},
    {"n_params", (getter)Optimizer_get_n_params, NULL, "Parameters (0 before the first step).", NULL},
    {NULL},
};

static PyMethodDef Optimizer_methods[] = {
    {"step", (PyCFunction)Optimizer_step, METH_VARARGS,
     "step(params, grads): one update of every parameter, in place; nothing changes on error."},
    {"slots", (PyCFunction)Optimizer_slots, METH_NOARGS,
     "Copies of the state: a list per parameter of its slot tensors."},
    {"reset", (PyCFunction)Optimizer_reset, METH_NOARGS, "Zero the state and the iteration count."},
    {NULL},
};

static PyTypeObject OptimizerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "metalearn._core.Optimizer",
    .tp_basicsize = sizeof(OptimizerObject),
    .tp_dealloc = (destructor)Optimizer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A C optimizer (made by _core.SGD or _core.Adam).",
    .tp_methods = Optimizer_methods,
    .tp_getset = Optimizer_getset,
};

/* ------------------------------------------------------------------- traces */

/* A recorded computation (metalearn.function builds on it). Optimizers stepped while
 * recording are kept alive by the trace, since replays step them again.
 *
 * Threads: recording belongs to the thread that began it (the C core refuses trace_end and
 * trace_abort from others). While it records, that thread's state dict holds the trace, so
 * dropping the last other reference (on any thread) cannot free it under the recorder; the
 * dict lets go at trace_end/trace_abort, or when the thread ends. A finished trace replays
 * on any thread, several at once (the C trace is read-only then). */
struct TraceObject {
    PyObject_HEAD
    ml_trace *trace;
    PyObject *keepalive; /* list */
};

static PyTypeObject TraceType;

/* the thread state dict's key for the trace this thread records */
#define RECORDING_KEY "metalearn._core.recording_trace"

static void Trace_dealloc(TraceObject *self) {
    /* only the recorder's state dict can drop the last reference of a recording trace: this
     * runs on the recording thread (at its end), where the C trace stops recording */
    if (recording_trace == self) recording_trace = NULL;
    ml_trace_free(self->trace);
    Py_XDECREF(self->keepalive);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int keep_alive_in_trace(PyObject *obj) {
    return recording_trace ? PyList_Append(recording_trace->keepalive, obj) : 0;
}

/* This thread no longer records tr: forget it (its state dict lets go of it). */
static void forget_recording(TraceObject *tr) {
    if (recording_trace != tr) return;
    recording_trace = NULL;
    PyObject *d = PyThreadState_GetDict();
    if (d && PyDict_GetItemString(d, RECORDING_KEY) == (PyObject *)tr) {
        PyObject *et, *ev, *tb; /* keep an exception being raised (a failed trace_end) */
        PyErr_Fetch(&et, &ev, &tb);
        if (PyDict_DelItemString(d, RECORDING_KEY) < 0) PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
}

/* the tensors of a trace call (None allowed for an absent output): new references */
static ml_tensor **tensor_seq(PyObject *obj, Py_ssize_t *n, const char *what) {
    return tensor_list(obj, n, what, 1);
}

static PyObject *mod_trace_begin(PyObject *m, PyObject *inputs) {
    Py_ssize_t n;
    PyObject *d = PyThreadState_GetDict();
    if (!d) {
        PyErr_SetString(PyExc_RuntimeError, "trace_begin: no thread state dict");
        return NULL;
    }
    ml_tensor **ts = tensor_seq(inputs, &n, "trace_begin");
    if (!ts) return NULL;
    TraceObject *tr = PyObject_New(TraceObject, &TraceType);
    if (!tr) {
        release_tensors(ts, n);
        return NULL;
    }
    tr->trace = NULL;
    tr->keepalive = PyList_New(0);
    ml_status st = tr->keepalive ? ml_trace_begin(&tr->trace, (int)n, ts) : ML_ERR_OOM;
    release_tensors(ts, n); /* the C trace holds its own references */
    if (st) {
        int set = tr->keepalive == NULL; /* PyList_New set the exception */
        Py_DECREF(tr);
        return set ? NULL : raise_status(st);
    }
    if (PyDict_SetItemString(d, RECORDING_KEY, (PyObject *)tr) < 0) {
        ml_trace_abort(tr->trace);
        Py_DECREF(tr);
        return NULL;
    }
    recording_trace = tr;
    return (PyObject *)tr;
}

static PyObject *mod_trace_end(PyObject *m, PyObject *args) {
    TraceObject *tr;
    PyObject *outputs;
    if (!PyArg_ParseTuple(args, "O!O:trace_end", &TraceType, &tr, &outputs)) return NULL;
    Py_ssize_t n;
    ml_tensor **ts = tensor_seq(outputs, &n, "trace_end");
    if (!ts) {
        if (recording_trace == tr) { /* bad outputs: the recording stops (it failed) */
            ml_trace_abort(tr->trace);
            forget_recording(tr);
        }
        return NULL;
    }
    /* on the recording thread the C trace stops recording whatever the outcome; on another
     * thread it refuses and changes nothing */
    ml_status st = ml_trace_end(tr->trace, (int)n, ts);
    release_tensors(ts, n);
    forget_recording(tr);
    if (st) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *mod_trace_abort(PyObject *m, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &TraceType)) {
        PyErr_SetString(PyExc_TypeError, "trace_abort expects a trace");
        return NULL;
    }
    TraceObject *tr = (TraceObject *)arg;
    ml_status st = ml_trace_abort(tr->trace);
    if (st) return raise_status(st); /* recorded by another thread: nothing changed */
    forget_recording(tr);
    Py_RETURN_NONE;
}

static PyObject *mod_is_tracing(PyObject *m, PyObject *unused) {
    return PyBool_FromLong(ml_trace_is_recording());
}

static PyObject *outputs_list(ml_tensor **outs, int n) {
    PyObject *list = PyList_New(n);
    for (int o = 0; o < n; o++) {
        PyObject *w = outs[o] ? wrap(outs[o]) : (Py_INCREF(Py_None), Py_None);
        outs[o] = NULL;
        if (!list || !w) {
            Py_XDECREF(w);
            continue;
        }
        PyList_SET_ITEM(list, o, w);
    }
    for (int o = 0; o < n; o++) ml_release(outs[o]);
    if (list && PyErr_Occurred()) Py_CLEAR(list);
    return list;
}

/* GradientTapes recording on this thread (metalearn.tape keeps it equal to the length of
 * its per-thread tape stack): the replay path reads it here, a C thread-local, instead of
 * a Python thread-local lookup per call. */
static _Thread_local Py_ssize_t tapes_recording;

static PyObject *mod_set_tapes_recording(PyObject *m, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    tapes_recording = n > 0 ? n : 0;
    Py_RETURN_NONE;
}

/* Whether a replay of these inputs would differ from running the function: this thread
 * records a trace (the ops must run, to be recorded), or grad mode is on and a tape
 * records or an input requires grad (an eager call's outputs would carry a graph; a
 * replay records nothing). Flags and one test per input: nothing worth the name on the
 * replay path. */
static int must_run_eagerly(ml_tensor *const *ts, Py_ssize_t n) {
    if (ml_trace_is_recording()) return 1;
    if (!ml_grad_enabled()) return 0;
    if (tapes_recording) return 1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (ts[i] && ts[i]->requires_grad) return 1;
    return 0;
}

static PyObject *mod_must_run_eagerly(PyObject *m, PyObject *inputs) {
    Py_ssize_t n;
    ml_tensor **ts = tensor_seq(inputs, &n, "must_run_eagerly");
    if (!ts) return NULL;
    int r = must_run_eagerly(ts, n);
    release_tensors(ts, n);
    return PyBool_FromLong(r);
}

/* trace_replay(trace, inputs) -> list of output Tensors; try_replay: None instead when the
 * call must run eagerly (must_run_eagerly) */
static PyObject *trace_replay_impl(PyObject *args, int try_only) {
    TraceObject *tr;
    PyObject *inputs;
    if (!PyArg_ParseTuple(args, "O!O:trace_replay", &TraceType, &tr, &inputs)) return NULL;
    Py_ssize_t n;
    ml_tensor **ts = tensor_seq(inputs, &n, "trace_replay");
    if (!ts) return NULL;
    if (try_only && must_run_eagerly(ts, n)) {
        release_tensors(ts, n);
        Py_RETURN_NONE;
    }
    if (n != ml_trace_n_inputs(tr->trace)) {
        release_tensors(ts, n);
        PyErr_Format(PyExc_ValueError, "replay: %zd inputs for a trace of %d", n,
                     ml_trace_n_inputs(tr->trace));
        return NULL;
    }
    int n_out = ml_trace_n_outputs(tr->trace);
    ml_tensor **outs = PyMem_Calloc((size_t)(n_out ? n_out : 1), sizeof *outs);
    if (!outs) {
        release_tensors(ts, n);
        return PyErr_NoMemory();
    }
    ml_status st;
    /* tr stays alive: the caller's argument tuple holds it */
    Py_BEGIN_ALLOW_THREADS
    st = ml_trace_replay(tr->trace, ts, outs);
    Py_END_ALLOW_THREADS
    release_tensors(ts, n);
    PyObject *r = st ? raise_status(st) : outputs_list(outs, n_out);
    PyMem_Free(outs);
    return r;
}

static PyObject *mod_trace_replay(PyObject *m, PyObject *args) { return trace_replay_impl(args, 0); }
static PyObject *mod_trace_try_replay(PyObject *m, PyObject *args) { return trace_replay_impl(args, 1); }

/* one thread count for the whole core: large ops and task-parallel replays
 * (ml_set_num_threads; METALEARN_NUM_THREADS or the number of cores by default) */
static int num_threads(void) { return ml_get_num_threads(); }

/* trace_replay_many(trace, [inputs per call], n_threads=None) -> [[outputs] per call] */
static PyObject *mod_trace_replay_many(PyObject *m, PyObject *args) {
    TraceObject *tr;
    PyObject *calls;
    int n_threads = 0;
    if (!PyArg_ParseTuple(args, "O!O|i:trace_replay_many", &TraceType, &tr, &calls, &n_threads))
        return NULL;
    if (n_threads <= 0) n_threads = num_threads();
    PyObject *seq = PySequence_Fast(calls, "trace_replay_many: expected a list of input lists");
    if (!seq) return NULL;
    Py_ssize_t n_calls = PySequence_Fast_GET_SIZE(seq);
    int n_in = ml_trace_n_inputs(tr->trace), n_out = ml_trace_n_outputs(tr->trace);
    ml_tensor **ins = PyMem_Calloc((size_t)(n_calls * n_in + 1), sizeof *ins);
    ml_tensor **outs = PyMem_Calloc((size_t)(n_calls * n_out + 1), sizeof *outs);
    Py_ssize_t n_held = 0; /* ins[0..n_held) are references of ours */
    PyObject *result = NULL;
    if (!ins || !outs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = 0; c < n_calls; c++) {
        Py_ssize_t n;
        ml_tensor **ts = tensor_seq(PySequence_Fast_GET_ITEM(seq, c), &n, "trace_replay_many");
        if (!ts) goto done;
        if (n != n_in) {
            release_tensors(ts, n);
            PyErr_Format(PyExc_ValueError, "replay: call %zd has %zd inputs, the trace takes %d", c,
                         n, n_in);
            goto done;
        }
        memcpy(ins + c * n_in, ts, (size_t)n_in * sizeof *ts);
        n_held += n_in;
        PyMem_Free(ts); /* the references moved into ins */
    }
    ml_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ml_trace_replay_many(tr->trace, (int)n_calls, ins, outs, n_threads);
    Py_END_ALLOW_THREADS
    if (st) {
        raise_status(st);
        goto done;
    }
    result = PyList_New(n_calls);
    for (Py_ssize_t c = 0; result && c < n_calls; c++) {
        PyObject *l = outputs_list(outs + c * n_out, n_out);
        if (!l) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, c, l);
    }
    for (Py_ssize_t i = 0; i < n_calls * n_out; i++) ml_release(outs[i]), outs[i] = NULL;
done:
    for (Py_ssize_t i = 0; ins && i < n_held; i++) ml_release(ins[i]);
    PyMem_Free(ins);
    PyMem_Free(outs);
    Py_DECREF(seq);
    return result;
}

static PyObject *mod_trace_n_ops(PyObject *m, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &TraceType)) {
        PyErr_SetString(PyExc_TypeError, "trace_n_ops expects a trace");
        return NULL;
    }
    return PyLong_FromLong(ml_trace_n_ops(((TraceObject *)arg)->trace));
}

/* describe() -> the trace as text (ml_trace_format); "" while it records */
static PyObject *Trace_describe(TraceObject *self, PyObject *unused) {
    const size_t n = ml_trace_format(self->trace, NULL, 0);
    char *buf = PyMem_Malloc(n + 1);
    if (!buf) return PyErr_NoMemory();
    ml_trace_format(self->trace, buf, n + 1);
    PyObject *text = PyUnicode_FromStringAndSize(buf, (Py_ssize_t)n);
    PyMem_Free(buf);
    return text;
}

static PyMethodDef Trace_methods[] = {
    {"describe", (PyCFunction)Trace_describe, METH_NOARGS,
     "describe($self, /)\n--\n\nThe entries by op name with shapes, fused ones marked."},
    {NULL},
};

static PyTypeObject TraceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "metalearn._core.Trace",
    .tp_basicsize = sizeof(TraceObject),
    .tp_dealloc = (destructor)Trace_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A recorded computation, replayed from C (see metalearn.function).",
    .tp_methods = Trace_methods,
};

static PyObject *mod_set_num_threads(PyObject *m, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 64) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be in [1, 64], got %ld", n);
        return NULL;
    }
    ml_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *mod_get_num_threads(PyObject *m, PyObject *unused) {
    return PyLong_FromLong(num_threads());
}

/* ------------------------------------------------------------------ module */

#define KW (METH_VARARGS | METH_KEYWORDS)
#define F(fn) ((PyCFunction)(void (*)(void))(fn))

static PyMethodDef module_methods[] = {
    {"tensor", F(mod_tensor), KW, "tensor(data, requires_grad=False): a float32 copy of data."},
    {"as_tensor", F(mod_as_tensor), METH_O,
     "as_tensor(array): shares a float32 C-contiguous writable ndarray's memory, else copies."},
    {"zeros", F(mod_zeros), KW, "zeros(shape)"},
    {"ones", F(mod_ones), KW, "ones(shape)"},
    {"full", F(mod_full), KW, "full(shape, value)"},
#define REG_UNARY(py, fn, label) {#py, F(mod_##py), METH_O, label "(x), element-wise"},
    UNARY_OPS(REG_UNARY)
#undef REG_UNARY
#define REG_BINARY(py, fn, label) {#py, F(mod_##py), METH_FASTCALL, label "(a, b), broadcasting"},
    BINARY_OPS(REG_BINARY)
#undef REG_BINARY
    {"pow", F(mod_pow), KW, "pow(x, exponent): x ** exponent for a number exponent"},
    {"leaky_relu", F(mod_leaky_relu), KW, "leaky_relu(x, negative_slope=0.2)"},
    {"elu", F(mod_elu), KW, "elu(x, alpha=1.0)"},
    {"clip", F(mod_clip), KW, "clip(x, clip_value_min, clip_value_max)"},
    {"softmax", F(mod_softmax), KW, "softmax(x, axis=-1)"},
    {"log_softmax", F(mod_log_softmax), KW, "log_softmax(x, axis=-1)"},
    {"matmul", F(mod_matmul), KW, "matmul(a, b, transpose_a=False, transpose_b=False)"},
    {"linear", F(mod_linear), KW, "linear(x, kernel, bias=None, activation=None): act(x @ kernel + bias)"},
    {"reshape", F(mod_reshape), KW, "reshape(x, shape)"},
    {"transpose", F(mod_transpose), KW, "transpose(x, perm=None)"},
    {"broadcast_to", F(mod_broadcast_to), KW, "broadcast_to(x, shape)"},
    {"sum_to", F(mod_sum_to), KW, "sum_to(x, shape): sums x down to shape"},
    {"concat", F(mod_concat), KW, "concat(values, axis=0)"},
    {"narrow", F(mod_narrow), KW, "narrow(x, axis, start, length)"},
    {"gather", F(mod_gather), KW, "gather(x, indices, axis=0)"},
    {"one_hot", F(mod_one_hot), KW, "one_hot(labels, depth)"},
    {"reduce_sum", F(mod_reduce_sum), KW, "reduce_sum(x, axis=None, keepdims=False)"},
    {"reduce_mean", F(mod_reduce_mean), KW, "reduce_mean(x, axis=None, keepdims=False)"},
    {"reduce_max", F(mod_reduce_max), KW, "reduce_max(x, axis=None, keepdims=False)"},
    {"mean_squared_error", F(mod_mse), KW, "mean_squared_error(y_true, y_pred): per sample"},
    {"categorical_crossentropy", F(mod_cce), KW,
     "categorical_crossentropy(y_true, y_pred, from_logits=False): per sample"},
    {"sparse_categorical_crossentropy", F(mod_scce), KW,
     "sparse_categorical_crossentropy(y_true, y_pred, from_logits=False): per sample"},
    {"binary_crossentropy", F(mod_bce), KW,
     "binary_crossentropy(y_true, y_pred, from_logits=False): per sample"},
    {"grad", F(mod_grad), KW,
     "grad(outputs, inputs, grad_outputs=None, create_graph=False, allow_unused=False)"},
    {"is_grad_enabled", F(mod_is_grad_enabled), METH_NOARGS, "Whether grad mode is on (this thread)."},
    {"set_grad_enabled", F(mod_set_grad_enabled), METH_O,
     "set_grad_enabled(flag) -> previous flag (this thread)."},
    {"assign", F(mod_assign), METH_VARARGS, "assign(dst, src): copy values into dst in place."},
    {"seed", F(mod_seed), METH_O, "seed(n): reseed the global generator."},
    {"random_uniform", F(mod_random_uniform), KW, "random_uniform(shape, minval=0, maxval=1)"},
    {"random_normal", F(mod_random_normal), KW, "random_normal(shape, mean=0, stddev=1)"},
    {"truncated_normal", F(mod_truncated_normal), KW, "truncated_normal(shape, mean=0, stddev=1)"},
    {"permutation", F(mod_permutation), METH_O, "permutation(n) -> int64 ndarray"},
    {"save_tensors", F(mod_save_tensors), METH_VARARGS, "save_tensors(path, names, tensors)"},
    {"load_tensors", F(mod_load_tensors), METH_O, "load_tensors(path) -> [(name, ndarray)]"},
    {"write_file", F(mod_write_file), METH_VARARGS,
     "write_file(path, data): bytes written atomically, as weight files are"},
    {"kernel_name", F(mod_kernel_name), METH_NOARGS, "'avx2' or 'portable'"},
    {"trace_begin", F(mod_trace_begin), METH_O, "trace_begin(inputs) -> Trace (records this thread's ops)"},
    {"trace_end", F(mod_trace_end), METH_VARARGS, "trace_end(trace, outputs)"},
    {"trace_abort", F(mod_trace_abort), METH_O, "trace_abort(trace): stop recording"},
    {"trace_replay", F(mod_trace_replay), METH_VARARGS, "trace_replay(trace, inputs) -> outputs"},
    {"trace_try_replay", F(mod_trace_try_replay), METH_VARARGS,
     "trace_try_replay(trace, inputs) -> outputs, or None when the call must run eagerly (this "
     "thread records a trace, or grad mode is on and a tape records or an input requires grad)"},
    {"must_run_eagerly", F(mod_must_run_eagerly), METH_O,
     "must_run_eagerly(inputs) -> whether trace_try_replay would refuse these inputs now"},
    {"_set_tapes_recording", F(mod_set_tapes_recording), METH_O,
     "_set_tapes_recording(n): GradientTapes recording on this thread (metalearn.tape)"},
    {"is_tracing", F(mod_is_tracing), METH_NOARGS, "Whether this thread records a trace."},
    {"trace_replay_many", F(mod_trace_replay_many), METH_VARARGS,
     "trace_replay_many(trace, calls, n_threads=0) -> outputs per call, over threads"},
    {"trace_n_ops", F(mod_trace_n_ops), METH_O, "number of recorded ops"},
    {"set_num_threads", F(mod_set_num_threads), METH_O,
     "set_num_threads(n): threads for task-parallel replays (env METALEARN_NUM_THREADS)"},
    {"get_num_threads", F(mod_get_num_threads), METH_NOARGS, "threads for task-parallel replays"},
    {"SGD", F(mod_SGD), KW, "SGD(learning_rate=0.01, momentum=0.0, nesterov=False)"},
    {"Adam", F(mod_Adam), KW,
     "Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False)"},
    {NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "metalearn._core",
    "The metalearn C core: tensors, autograd, ops, optimizers, random, files.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    if (PyType_Ready(&TensorType) < 0 || PyType_Ready(&OptimizerType) < 0 ||
        PyType_Ready(&TraceType) < 0)
        return NULL;
    /* NumPy defers to Tensor's reflected operators (ndarray + Tensor -> Tensor) */
    if (PyDict_SetItemString(TensorType.tp_dict, "__array_ufunc__", Py_None) < 0) return NULL;
    PyType_Modified(&TensorType);
    PyObject *m = PyModule_Create(&core_module);
    if (!m) return NULL;
    if (PyModule_AddFunctions(m, ml_nn_methods) < 0 ||
        PyModule_AddFunctions(m, ml_memory_methods) < 0 ||
        PyModule_AddFunctions(m, ml_tasks_methods) < 0 || ml_memory_init(m) < 0 ||
        PyModule_AddObjectRef(m, "Tensor", (PyObject *)&TensorType) < 0 ||
        PyModule_AddObjectRef(m, "Optimizer", (PyObject *)&OptimizerType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DIMS", ML_MAX_DIMS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* a refused METALEARN_NUM_THREADS: a Python warning (filterable by module "metalearn"),
     * not the core's line on stderr; named after the module, as no Python frame runs it */
    char why[200];
    if (ml__num_threads_env_warning(why, sizeof why) &&
        PyErr_WarnExplicit(PyExc_RuntimeWarning, why, "metalearn._core", 0, "metalearn._core",
                           NULL)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
