/* convert.c — the conversions every file of the binding uses: statuses to exceptions,
 * ml_tensor to Tensor and back, array-likes to tensors, shapes, axes and lists of tensors. */
#include "binding.h"

#include <limits.h>
#include <math.h>

/* ------------------------------------------------------------------ errors */

PyObject *mlpy_raise_status(ml_status st) {
    PyObject *exc = PyExc_ValueError;
    /* clang-format off: a table, one case a line */
    switch (st) {
    case ML_ERR_TYPE: exc = PyExc_TypeError; break;
    case ML_ERR_OOM: exc = PyExc_MemoryError; break;
    case ML_ERR_IO: exc = PyExc_OSError; break;
    default: break;
    }
    /* clang-format on */
    PyErr_SetString(exc, ml_last_error());
    return NULL;
}

const char *mlpy_type_name(PyObject *o) { return Py_TYPE(o)->tp_name; }

/* ------------------------------------------------------ ml_tensor -> Tensor */

PyObject *mlpy_wrap(ml_tensor *t) {
    if (!t) return NULL;
    mlpy_TensorObject *o = PyObject_New(mlpy_TensorObject, &mlpy_TensorType);
    if (!o) {
        ml_release(t);
        return NULL;
    }
    o->t = t;
    o->weakreflist = NULL;
    return (PyObject *)o;
}

/* `out` is read after `st` is computed (C leaves argument order unspecified). */
PyObject *mlpy_wrap_status(ml_status st, ml_tensor **out) {
    if (st) return mlpy_raise_status(st);
    return mlpy_wrap(*out);
}

/* --------------------------------------------------- array-like -> ml_tensor */

/* Any array-like to a new float32 C-contiguous ndarray; object, complex, string and
 * other non-real dtypes are refused with a TypeError naming the dtype. */
static PyArrayObject *to_float_array(PyObject *obj, const char *what) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: cannot convert %.100s to a float32 tensor", what,
                         mlpy_type_name(obj));
        }
        return NULL;
    }
    char kind = PyArray_DESCR(arr)->kind;
    if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f') {
        PyObject *dt = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError,
                     "%s: expected real numbers (bool, int or float), got an "
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
    PyArrayObject *f = (PyArrayObject *)PyArray_FromAny((PyObject *)arr,
                                                        PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
                                                        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                                            NPY_ARRAY_NOTSWAPPED |
                                                            NPY_ARRAY_FORCECAST,
                                                        NULL);
    Py_DECREF(arr);
    return f;
}

static ml_status tensor_from_array(ml_tensor **out, PyArrayObject *f) {
    int64_t shape[ML_MAX_DIMS];
    int nd = PyArray_NDIM(f);
    for (int i = 0; i < nd; i++) shape[i] = PyArray_DIM(f, i);
    return ml_tensor_from_data(out, nd, shape, (const float *)PyArray_DATA(f));
}

ml_tensor *mlpy_as_ml(PyObject *o, const char *what) {
    if (mlpy_Tensor_Check(o)) {
        ml_retain(MLPY_T(o));
        return MLPY_T(o);
    }
    ml_tensor *t = NULL;
    if (PyFloat_CheckExact(o) || PyLong_CheckExact(o) || PyBool_Check(o)) {
        double v = PyFloat_AsDouble(o);
        if (v == -1.0 && PyErr_Occurred()) return NULL;
        if (ml_tensor_scalar(&t, (float)v)) return (ml_tensor *)mlpy_raise_status(ML_ERR_OOM);
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
    if (st) return (ml_tensor *)mlpy_raise_status(st);
    return t;
}

/* int64 indices from any integer array-like (floats holding integers accepted). */
PyArrayObject *mlpy_to_index_array(PyObject *obj, const char *what) {
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
                PyErr_Format(PyExc_ValueError,
                             "%s: expected integer labels, got %s at position %zd", what,
                             txt ? txt : "?", (Py_ssize_t)i);
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
    PyArrayObject *r = (PyArrayObject *)PyArray_FromAny((PyObject *)arr,
                                                        PyArray_DescrFromType(NPY_INT64), 0, 0,
                                                        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                                            NPY_ARRAY_NOTSWAPPED |
                                                            NPY_ARRAY_FORCECAST,
                                                        NULL);
    Py_DECREF(arr);
    return r;
}

/* ------------------------------------------------------------ shapes and axes */

/* The entries of a tuple/list of ints into shape; 0 or -1. */
static int shape_entries(PyObject *obj, int *ndim, int64_t *shape, const char *what) {
    PyObject *seq = PySequence_Fast(obj, "shape must be a tuple or list of ints");
    if (!seq) {
        PyErr_Format(PyExc_TypeError, "%s: shape must be a tuple or list of ints, got %.100s", what,
                     mlpy_type_name(obj));
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > ML_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions, got %zd", what, ML_MAX_DIMS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyIndex_Check(item)) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "%s: shape entries must be ints, got %.100s", what,
                         mlpy_type_name(item));
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
    return 0;
}

/* A shape from a tuple/list of ints (or one int). -1 once is inferred when numel >= 0. */
int mlpy_parse_shape(PyObject *obj, int *ndim, int64_t *shape, int64_t numel, const char *what) {
    if (PyLong_Check(obj)) {
        shape[0] = PyLong_AsLongLong(obj);
        if (shape[0] == -1 && PyErr_Occurred()) return -1;
        *ndim = 1;
    } else if (shape_entries(obj, ndim, shape, what) < 0) {
        return -1;
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
            PyErr_Format(PyExc_ValueError, "%s: negative dimension %lld", what,
                         (long long)shape[i]);
            return -1;
        } else if (shape[i] && known > INT64_MAX / shape[i]) {
            known = INT64_MAX; /* the core reports the overflow */
        } else {
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || numel % known) {
            PyErr_Format(PyExc_ValueError,
                         "%s: cannot reshape %lld elements with a -1 in the "
                         "shape",
                         what, (long long)numel);
            return -1;
        }
        shape[infer] = numel / known;
    }
    return 0;
}

/* An axis argument (an int or anything with __index__) as the core's int. The core
 * reports an axis out of range, as the caller gave it, with the tensor's rank; a value no
 * int holds is refused here, also as given (reduce_sum(axis=100) says "axis 100", not a
 * clamped value). NULL (argument left out): `dflt`. */
int mlpy_axis_arg(PyObject *obj, int dflt, int *axis, const char *what) {
    *axis = dflt;
    if (!obj) return 0;
    PyObject *idx = PyNumber_Index(obj);
    if (!idx) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: axis must be an int, got %.100s", what,
                     mlpy_type_name(obj));
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
int mlpy_parse_axes(PyObject *obj, int *n, int *axes, const char *what) {
    *n = 0;
    if (!obj || obj == Py_None) return 0;
    if (PyLong_Check(obj)) {
        if (mlpy_axis_arg(obj, 0, &axes[0], what) < 0) return -1;
        *n = 1;
        return 0;
    }
    PyObject *seq = PySequence_Fast(obj, "axis");
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s: axis must be None, an int or a tuple of ints, got %.100s", what,
                     mlpy_type_name(obj));
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (len > ML_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: too many axes (%zd)", what, len);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        if (mlpy_axis_arg(PySequence_Fast_GET_ITEM(seq, i), 0, &axes[i], what) < 0) {
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

int mlpy_parse_perm(PyObject *obj, const ml_tensor *t, int *perm, int *have) {
    *have = 0;
    if (!obj || obj == Py_None) return 0;
    PyObject *seq = PySequence_Fast(obj, "perm must be a sequence of ints");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != ml_ndim(t)) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "transpose: perm has %zd entries for a tensor of shape %s",
                     n, MLPY_SHAPE_STR(t));
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (mlpy_axis_arg(PySequence_Fast_GET_ITEM(seq, i), 0, &perm[i], "transpose") < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    *have = 1;
    return 0;
}

/* ------------------------------------------------------------ lists of tensors */

void mlpy_release_tensors(ml_tensor **ts, Py_ssize_t n) {
    for (Py_ssize_t i = 0; ts && i < n; i++) ml_release(ts[i]);
    PyMem_Free(ts);
}

ml_tensor **mlpy_tensor_array(PyObject *obj, Py_ssize_t *n, const char *fn, const char *arg,
                              unsigned how) {
    PyObject *seq;
    const int lone = (how & MLPY_LIST_ONE) &&
                     (mlpy_Tensor_Check(obj) || ((how & MLPY_LIST_CONVERT) && PyArray_Check(obj)));
    if (lone) {
        seq = PyTuple_Pack(1, obj);
    } else {
        seq = PySequence_Fast(obj, "expected a list of tensors");
        if (!seq) {
            PyErr_Clear();
            const char *fmt = (how & MLPY_LIST_ONE)
                                  ? "%s: %s must be a Tensor or a list of Tensors, got %.100s"
                                  : "%s: %s must be a list of tensors, got %.100s";
            PyErr_Format(PyExc_TypeError, fmt, fn, arg, mlpy_type_name(obj));
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
        if ((how & MLPY_LIST_NONE) && it == Py_None) continue;
        if (how & MLPY_LIST_CONVERT) {
            ts[i] = mlpy_as_ml(it, fn);
        } else if (mlpy_Tensor_Check(it)) {
            ts[i] = MLPY_T(it);
            ml_retain(ts[i]);
        } else {
            PyErr_Format(PyExc_TypeError, "%s: %s[%zd] must be a Tensor, got %.100s", fn, arg, i,
                         mlpy_type_name(it));
        }
        if (!ts[i]) {
            mlpy_release_tensors(ts, i);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    return ts;
}

PyObject *mlpy_tensor_list(ml_tensor **outs, Py_ssize_t n) {
    PyObject *list = PyList_New(n);
    for (Py_ssize_t o = 0; o < n; o++) {
        PyObject *w = outs[o] ? mlpy_wrap(outs[o]) : (Py_INCREF(Py_None), Py_None);
        outs[o] = NULL;
        if (!list || !w) {
            Py_XDECREF(w);
            continue;
        }
        PyList_SET_ITEM(list, o, w);
    }
    if (list && PyErr_Occurred()) Py_CLEAR(list);
    return list;
}
