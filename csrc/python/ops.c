/* ops.c — the module's op functions: tensors from data, element-wise ops (expanded from
 * ops/ops.def's rows), matmul and linear, shape ops, reductions, losses and random
 * tensors. Each converts its arguments (mlpy_as_ml), calls the core, and wraps the result;
 * the GIL is released when the work is large (MLPY_CALL). */
#include "binding.h"

/* ---- tensors from data ---- */

/* tensor(data, requires_grad=False): always a copy */
static PyObject *mod_tensor(PyObject *m, PyObject *args, PyObject *kwds) {
    return mlpy_tensor_new(&mlpy_TensorType, args, kwds);
}

static void release_array(void *ctx) {
    /* may run on any thread, with or without the GIL */
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF((PyObject *)ctx);
    PyGILState_Release(g);
}

/* as_tensor(array): shares a float32 C-contiguous writable ndarray's memory, else copies */
static PyObject *mod_as_tensor(PyObject *m, PyObject *obj) {
    if (mlpy_Tensor_Check(obj)) {
        Py_INCREF(obj);
        return obj;
    }
    if (PyArray_Check(obj)) {
        PyArrayObject *a = (PyArrayObject *)obj;
        if (PyArray_TYPE(a) == NPY_FLOAT32 && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) &&
            PyArray_ISNOTSWAPPED(a) && PyArray_ISWRITEABLE(a) && PyArray_NDIM(a) <= ML_MAX_DIMS) {
            int64_t shape[ML_MAX_DIMS];
            for (int i = 0; i < PyArray_NDIM(a); i++) shape[i] = PyArray_DIM(a, i);
            ml_tensor *t = NULL;
            Py_INCREF(obj);
            ml_status st = ml_tensor_wrap(&t, PyArray_NDIM(a), shape, PyArray_DATA(a),
                                          release_array, obj);
            if (st) {
                Py_DECREF(obj);
                return mlpy_raise_status(st);
            }
            return mlpy_wrap(t);
        }
    }
    return mlpy_wrap(mlpy_as_ml(obj, "as_tensor"));
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
    if (mlpy_parse_shape(shape_obj, &nd, shape, -1, name) < 0) return NULL;
    ml_tensor *out = NULL;
    return mlpy_wrap_status(ml_tensor_full(&out, nd, shape, (float)v), &out);
}
static PyObject *mod_zeros(PyObject *m, PyObject *a, PyObject *k) {
    return filled(a, k, 0, 0, "zeros");
}
static PyObject *mod_ones(PyObject *m, PyObject *a, PyObject *k) {
    return filled(a, k, 1, 0, "ones");
}
static PyObject *mod_full(PyObject *m, PyObject *a, PyObject *k) {
    return filled(a, k, 0, 1, "full");
}

/* ---- unary and binary ops: the rows of ops.def ---- */

typedef ml_status (*unary_fn)(ml_tensor **, ml_tensor *);

static PyObject *unary(PyObject *x, unary_fn fn, const char *name) {
    ml_tensor *t = mlpy_as_ml(x, name);
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(t) * 8, fn(&out, t));
    ml_release(t);
    return mlpy_wrap_status(st, &out);
}

/* The binding's element-wise functions are ops.def's UNARY and BINARY rows: each row
 * expands to MLPY_UNARY(py, ml_<name>, label) or MLPY_BINARY(...), defined before each
 * inclusion (here the functions, below their method table entries). A new row of either
 * form needs nothing here. */
#define ML_PY_UNARY(py, name, label) MLPY_UNARY(py, ml_##name, label)
#define ML_PY_BINARY(py, name, label) MLPY_BINARY(py, ml_##name, label)
#define ML_PY_CALL(py, name, label)
#define ML_PY_NONE(py, name, label)
#define ML_OP(ID, name, inputs, grad, form, py, label) ML_PY_##form(py, name, label)

#define MLPY_UNARY(py, fn, label) \
    static PyObject *mod_##py(PyObject *m, PyObject *x) { return unary(x, fn, label); }
#define MLPY_BINARY(py, fn, label)                                                          \
    static PyObject *mod_##py(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {       \
        if (nargs != 2) {                                                                   \
            PyErr_Format(PyExc_TypeError, label "() takes 2 arguments (%zd given)", nargs); \
            return NULL;                                                                    \
        }                                                                                   \
        return mlpy_binary(args[0], args[1], fn, label);                                    \
    }
#include "../ops/ops.def"
#undef MLPY_UNARY
#undef MLPY_BINARY

/* ops with one tensor and one float parameter */
typedef ml_status (*unary_f_fn)(ml_tensor **, ml_tensor *, float);

static PyObject *unary_f(PyObject *args, PyObject *kwds, unary_f_fn fn, const char *fmt,
                         char **kwlist, double dflt) {
    PyObject *x;
    double p = dflt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &x, &p)) return NULL;
    ml_tensor *t = mlpy_as_ml(x, strchr(fmt, ':') + 1); /* messages name the op: fmt's tail */
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(t) * 8, fn(&out, t, (float)p));
    ml_release(t);
    return mlpy_wrap_status(st, &out);
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
static PyObject *mod_step(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"x", "threshold", NULL};
    return unary_f(args, kwds, ml_step, "O|d:step", kw, 0.0);
}
static PyObject *mod_add_scalar(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"x", "value", NULL};
    return unary_f(args, kwds, ml_add_scalar, "Od:add_scalar", kw, 0.0);
}
static PyObject *mod_mul_scalar(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"x", "value", NULL};
    return unary_f(args, kwds, ml_mul_scalar, "Od:mul_scalar", kw, 1.0);
}

static PyObject *mod_clip(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "clip_value_min", "clip_value_max", NULL};
    PyObject *x;
    double lo, hi;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Odd:clip", kwlist, &x, &lo, &hi)) return NULL;
    ml_tensor *t = mlpy_as_ml(x, "clip");
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_clip(&out, t, (float)lo, (float)hi);
    ml_release(t);
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_softmax_like(PyObject *args, PyObject *kwds, int log) {
    static char *kwlist[] = {"x", "axis", NULL};
    PyObject *x, *axis_o = NULL;
    int axis;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, log ? "O|O:log_softmax" : "O|O:softmax", kwlist,
                                     &x, &axis_o) ||
        mlpy_axis_arg(axis_o, -1, &axis, log ? "log_softmax" : "softmax") < 0)
        return NULL;
    ml_tensor *t = mlpy_as_ml(x, log ? "log_softmax" : "softmax");
    if (!t) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(t) * 8, (log ? ml_log_softmax : ml_softmax)(&out, t, axis));
    ml_release(t);
    return mlpy_wrap_status(st, &out);
}
static PyObject *mod_softmax(PyObject *m, PyObject *a, PyObject *k) {
    return mod_softmax_like(a, k, 0);
}
static PyObject *mod_log_softmax(PyObject *m, PyObject *a, PyObject *k) {
    return mod_softmax_like(a, k, 1);
}

static PyObject *mod_matmul(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"a", "b", "transpose_a", "transpose_b", NULL};
    PyObject *a, *b;
    int ta = 0, tb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|pp:matmul", kwlist, &a, &b, &ta, &tb))
        return NULL;
    ml_tensor *x = mlpy_as_ml(a, "matmul"), *y = x ? mlpy_as_ml(b, "matmul") : NULL;
    if (!y) {
        ml_release(x);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    const int xd = ml_ndim(x);
    const int64_t k = xd ? ml_shape(x)[ta ? 0 : xd - 1] : 0;
    MLPY_CALL(st, (ml_numel(x) + ml_numel(y)) * (k > 0 ? k : 1) / 4, ml_matmul(&out, x, y, ta, tb));
    ml_release(x);
    ml_release(y);
    return mlpy_wrap_status(st, &out);
}

static int parse_activation(PyObject *obj, ml_activation *act) {
    if (!obj || obj == Py_None) {
        *act = ML_ACT_NONE;
        return 0;
    }
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s && (!strcmp(s, "linear") || !strcmp(s, "none")))
        *act = ML_ACT_NONE;
    else if (s && !strcmp(s, "relu"))
        *act = ML_ACT_RELU;
    else if (s && !strcmp(s, "sigmoid"))
        *act = ML_ACT_SIGMOID;
    else if (s && !strcmp(s, "tanh"))
        *act = ML_ACT_TANH;
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
    ml_tensor *x = mlpy_as_ml(xo, "linear"), *w = x ? mlpy_as_ml(wo, "linear") : NULL, *b = NULL;
    if (w && bo != Py_None) b = mlpy_as_ml(bo, "linear");
    if (!w || (bo != Py_None && !b)) {
        ml_release(x);
        ml_release(w);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(x) * (ml_ndim(w) == 2 ? ml_shape(w)[1] : 1) / 4,
              ml_linear(&out, x, w, b, act));
    ml_release(x);
    ml_release(w);
    ml_release(b);
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_reshape(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "shape", NULL};
    PyObject *xo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:reshape", kwlist, &xo, &so)) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "reshape");
    if (!x) return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    ml_tensor *out = NULL;
    ml_status st = ML_OK;
    if (mlpy_parse_shape(so, &nd, shape, ml_numel(x), "reshape") < 0) {
        ml_release(x);
        return NULL;
    }
    st = ml_reshape(&out, x, nd, shape);
    ml_release(x);
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_transpose(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "perm", NULL};
    PyObject *xo, *po = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:transpose", kwlist, &xo, &po)) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "transpose");
    if (!x) return NULL;
    int perm[ML_MAX_DIMS], have;
    ml_tensor *out = NULL;
    if (mlpy_parse_perm(po, x, perm, &have) < 0) {
        ml_release(x);
        return NULL;
    }
    ml_status st = ml_transpose(&out, x, have ? perm : NULL);
    ml_release(x);
    return mlpy_wrap_status(st, &out);
}

typedef ml_status (*shape_fn)(ml_tensor **, ml_tensor *, int, const int64_t *);

static PyObject *to_shape_op(PyObject *args, PyObject *kwds, shape_fn fn, const char *name) {
    static char *kwlist[] = {"x", "shape", NULL};
    PyObject *xo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &xo, &so)) return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (mlpy_parse_shape(so, &nd, shape, -1, name) < 0) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, name);
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st = fn(&out, x, nd, shape);
    ml_release(x);
    return mlpy_wrap_status(st, &out);
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
        mlpy_axis_arg(axis_o, 0, &axis, "concat") < 0)
        return NULL;
    Py_ssize_t n = 0;
    ml_tensor **xs = mlpy_tensor_array(vo, &n, "concat", "values", MLPY_LIST_CONVERT);
    if (!xs) return NULL;
    if (n < 1 || n > INT32_MAX) {
        mlpy_release_tensors(xs, n);
        PyErr_SetString(PyExc_ValueError, "concat: expected a non-empty list of tensors");
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st = ml_concat(&out, (int)n, xs, axis);
    mlpy_release_tensors(xs, n);
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_narrow(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "axis", "start", "length", NULL};
    PyObject *xo, *axis_o;
    int axis;
    long long start, length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOLL:narrow", kwlist, &xo, &axis_o, &start,
                                     &length) ||
        mlpy_axis_arg(axis_o, 0, &axis, "narrow") < 0)
        return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "narrow");
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_narrow(&out, x, axis, start, length);
    ml_release(x);
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_pad_axis(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "axis", "start", "size", NULL};
    PyObject *xo, *axis_o;
    int axis;
    long long start, size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOLL:pad_axis", kwlist, &xo, &axis_o, &start,
                                     &size) ||
        mlpy_axis_arg(axis_o, 0, &axis, "pad_axis") < 0)
        return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "pad_axis");
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_pad_axis(&out, x, axis, start, size);
    ml_release(x);
    return mlpy_wrap_status(st, &out);
}

/* indices as gather and scatter_add take them: a 1-D integer array-like of at most
 * INT32_MAX entries (new reference), NULL with an exception */
static PyArrayObject *index_list(PyObject *obj, const char *what) {
    PyArrayObject *idx = mlpy_to_index_array(obj, what);
    if (idx && (PyArray_NDIM(idx) > 1 || PyArray_SIZE(idx) > INT32_MAX)) {
        Py_DECREF(idx);
        PyErr_Format(PyExc_ValueError, "%s: indices must be a 1-D integer array", what);
        return NULL;
    }
    return idx;
}

static PyObject *mod_scatter_add(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "indices", "axis", "size", NULL};
    PyObject *xo, *io, *axis_o;
    int axis;
    long long size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOL:scatter_add", kwlist, &xo, &io, &axis_o,
                                     &size) ||
        mlpy_axis_arg(axis_o, 0, &axis, "scatter_add") < 0)
        return NULL;
    PyArrayObject *idx = index_list(io, "scatter_add");
    if (!idx) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "scatter_add"), *out = NULL;
    ml_status st = x ? ml_scatter_add(&out, x, (int)PyArray_SIZE(idx), PyArray_DATA(idx), axis,
                                      size)
                     : ML_OK;
    ml_release(x);
    Py_DECREF(idx);
    if (!x) return NULL;
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_pick(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "labels", NULL};
    PyObject *xo, *lo;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:pick", kwlist, &xo, &lo)) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "pick");
    if (!x) return NULL;
    PyArrayObject *labels = mlpy_to_index_array(lo, "pick");
    if (!labels) {
        ml_release(x);
        return NULL;
    }
    /* labels index every row of x: its shape is x's without the class axis */
    int same = ml_ndim(x) >= 1 && PyArray_NDIM(labels) == ml_ndim(x) - 1;
    for (int i = 0; same && i < PyArray_NDIM(labels); i++)
        same = PyArray_DIM(labels, i) == ml_shape(x)[i];
    ml_tensor *out = NULL;
    ml_status st = ML_OK;
    /* with the GIL held: ml_pick checks the labels, then reads them again */
    if (same) {
        st = ml_pick(&out, x, PyArray_SIZE(labels), PyArray_DATA(labels));
    } else {
        PyObject *dims = PyObject_GetAttrString((PyObject *)labels, "shape");
        PyObject *text = dims ? PyObject_Str(dims) : NULL;
        if (text)
            PyErr_Format(PyExc_ValueError,
                         "pick: labels of shape %U for x of shape %s: labels "
                         "need x's shape without its last axis",
                         text, MLPY_SHAPE_STR(x));
        Py_XDECREF(text);
        Py_XDECREF(dims);
    }
    ml_release(x);
    Py_DECREF(labels);
    if (!same) return NULL;
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_gather(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "indices", "axis", NULL};
    PyObject *xo, *io, *axis_o = NULL;
    int axis;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:gather", kwlist, &xo, &io, &axis_o) ||
        mlpy_axis_arg(axis_o, 0, &axis, "gather") < 0)
        return NULL;
    PyArrayObject *idx = mlpy_to_index_array(io, "gather");
    if (!idx) return NULL;
    if (PyArray_NDIM(idx) > 1 || PyArray_SIZE(idx) > INT32_MAX) {
        Py_DECREF(idx);
        PyErr_SetString(PyExc_ValueError, "gather: indices must be a 1-D integer array");
        return NULL;
    }
    ml_tensor *x = mlpy_as_ml(xo, "gather"), *out = NULL;
    ml_status st = x ? ml_gather(&out, x, (int)PyArray_SIZE(idx), PyArray_DATA(idx), axis) : ML_OK;
    ml_release(x);
    Py_DECREF(idx);
    if (!x) return NULL;
    return mlpy_wrap_status(st, &out);
}

static PyObject *mod_one_hot(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"labels", "depth", NULL};
    PyObject *lo;
    long long depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OL:one_hot", kwlist, &lo, &depth)) return NULL;
    PyArrayObject *idx = mlpy_to_index_array(lo, "one_hot");
    if (!idx) return NULL;
    ml_tensor *out = NULL;
    ml_status st = ml_one_hot(&out, PyArray_SIZE(idx), PyArray_DATA(idx), depth);
    Py_DECREF(idx);
    return mlpy_wrap_status(st, &out);
}

#define MOD_REDUCE(pyname, fn, label)                                                   \
    static PyObject *pyname(PyObject *m, PyObject *args, PyObject *kwds) {              \
        static char *kwlist[] = {"x", "axis", "keepdims", NULL};                        \
        PyObject *xo, *axis = Py_None;                                                  \
        int keepdims = 0;                                                               \
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|Op:" label, kwlist, &xo, &axis, \
                                         &keepdims))                                    \
            return NULL;                                                                \
        ml_tensor *x = mlpy_as_ml(xo, label);                                           \
        if (!x) return NULL;                                                            \
        PyObject *r = mlpy_reduce(x, axis, keepdims, fn, label);                        \
        ml_release(x);                                                                  \
        return r;                                                                       \
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
    ml_tensor *t = mlpy_as_ml(to, name), *p = t ? mlpy_as_ml(po, name) : NULL;
    if (!p) {
        ml_release(t);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(p) * 8, fn(&out, t, p, from_logits));
    ml_release(t);
    ml_release(p);
    return mlpy_wrap_status(st, &out);
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
    if (mlpy_Tensor_Check(to)) { /* labels read in C when the op runs (traces replay them) */
        ml_tensor *p = mlpy_as_ml(po, "sparse_categorical_crossentropy"), *out = NULL;
        if (!p) return NULL;
        ml_status st;
        MLPY_CALL(st, ml_numel(p) * 8,
                  ml_sparse_categorical_crossentropy_t(&out, MLPY_T(to), p, from_logits));
        ml_release(p);
        return mlpy_wrap_status(st, &out);
    }
    labels = mlpy_to_index_array(to, "sparse_categorical_crossentropy");
    if (!labels) return NULL;
    ml_tensor *p = mlpy_as_ml(po, "sparse_categorical_crossentropy"), *out = NULL;
    ml_status st = ML_OK;
    if (p) {
        /* Keras accepts labels shaped (N,) or (N, 1) */
        MLPY_CALL(st, ml_numel(p) * 8,
                  ml_sparse_categorical_crossentropy(&out, PyArray_SIZE(labels),
                                                     PyArray_DATA(labels), p, from_logits));
    }
    ml_release(p);
    Py_DECREF(labels);
    if (!p) return NULL;
    return mlpy_wrap_status(st, &out);
}

/* ---- random ---- */

static PyObject *mod_seed(PyObject *m, PyObject *arg) {
    unsigned long long s = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred()) return NULL;
    ml_rng_seed(s);
    Py_RETURN_NONE;
}

static PyObject *mod_rng_state(PyObject *m, PyObject *unused) {
    uint64_t s[4];
    ml_rng_state(s);
    return Py_BuildValue("(KKKK)", (unsigned long long)s[0], (unsigned long long)s[1],
                         (unsigned long long)s[2], (unsigned long long)s[3]);
}

static PyObject *mod_rng_set_state(PyObject *m, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "rng_set_state: the state must be 4 integers");
    if (!seq) return NULL;
    uint64_t s[4];
    int ok = PySequence_Fast_GET_SIZE(seq) == 4;
    if (!ok)
        PyErr_Format(PyExc_ValueError, "rng_set_state: the state must be 4 integers, got %zd",
                     PySequence_Fast_GET_SIZE(seq));
    for (int i = 0; ok && i < 4; i++) {
        PyObject *w = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(w)) {
            PyErr_Format(PyExc_TypeError, "rng_set_state: word %d is a %s, not an int", i,
                         Py_TYPE(w)->tp_name);
            ok = 0;
            break;
        }
        s[i] = PyLong_AsUnsignedLongLong(w); /* refuses negatives and words over 64 bits */
        if (PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "rng_set_state: word %d is not in [0, 2**64)", i);
            ok = 0;
        }
    }
    Py_DECREF(seq);
    if (!ok) return NULL;
    ml_status st = ml_rng_set_state(s);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

typedef ml_status (*rng_fn)(ml_tensor **, int, const int64_t *, float, float);

static PyObject *rng_common(PyObject *args, PyObject *kwds, rng_fn fn, char **kwlist,
                            const char *fmt, double a, double b) {
    PyObject *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &so, &a, &b)) return NULL;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if (mlpy_parse_shape(so, &nd, shape, -1, kwlist[0]) < 0) return NULL;
    ml_tensor *out = NULL;
    return mlpy_wrap_status(fn(&out, nd, shape, (float)a, (float)b), &out);
}
static PyObject *mod_random_uniform(PyObject *m, PyObject *a, PyObject *k) {
    static char *kw[] = {"shape", "minval", "maxval", NULL};
    return rng_common(a, k, ml_random_uniform, kw, "O|dd:random_uniform", 0.0, 1.0);
}
static PyObject *mod_random_normal(PyObject *m, PyObject *a, PyObject *k) {
    static char *kw[] = {"shape", "mean", "stddev", NULL};
    return rng_common(a, k, ml_random_normal, kw, "O|dd:random_normal", 0.0, 1.0);
}
static PyObject *mod_truncated_normal(PyObject *m, PyObject *a, PyObject *k) {
    static char *kw[] = {"shape", "mean", "stddev", NULL};
    return rng_common(a, k, ml_truncated_normal, kw, "O|dd:truncated_normal", 0.0, 1.0);
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


PyMethodDef mlpy_ops_methods[] = {
    {"tensor", MLPY_FN(mod_tensor), MLPY_KW,
     MLPY_SIG("tensor", "/, data=0.0, requires_grad=False") "A float32 copy of data."},
    {"as_tensor", MLPY_FN(mod_as_tensor), METH_O,
     MLPY_SIG("as_tensor",
              "array, /") "Shares a float32 C-contiguous writable ndarray's memory, else copies."},
    {"zeros", MLPY_FN(mod_zeros), MLPY_KW, MLPY_SIG("zeros", "/, shape") "A tensor of zeros."},
    {"ones", MLPY_FN(mod_ones), MLPY_KW, MLPY_SIG("ones", "/, shape") "A tensor of ones."},
    {"full", MLPY_FN(mod_full), MLPY_KW,
     MLPY_SIG("full", "/, shape, value") "A tensor filled with value."},
#define MLPY_UNARY(py, fn, label) \
    {#py, MLPY_FN(mod_##py), METH_O, MLPY_SIG(#py, "x, /") label "(x), element-wise."},
#define MLPY_BINARY(py, fn, label) \
    {#py, MLPY_FN(mod_##py), METH_FASTCALL, MLPY_SIG(#py, "a, b, /") label "(a, b), broadcasting."},
#include "../ops/ops.def"
#undef MLPY_UNARY
#undef MLPY_BINARY
#undef ML_OP
    {"pow", MLPY_FN(mod_pow), MLPY_KW,
     MLPY_SIG("pow", "/, x, exponent") "x ** exponent for a number exponent."},
    {"leaky_relu", MLPY_FN(mod_leaky_relu), MLPY_KW,
     MLPY_SIG("leaky_relu", "/, x, negative_slope=0.2") "x where x > 0, else negative_slope * x."},
    {"elu", MLPY_FN(mod_elu), MLPY_KW,
     MLPY_SIG("elu", "/, x, alpha=1.0") "x where x > 0, else alpha * (exp(x) - 1)."},
    {"step", MLPY_FN(mod_step), MLPY_KW,
     MLPY_SIG("step", "/, x, threshold=0.0") "1 where x > threshold, else 0; a zero gradient."},
    {"add_scalar", MLPY_FN(mod_add_scalar), MLPY_KW,
     MLPY_SIG("add_scalar", "/, x, value") "x + value for a number value."},
    {"mul_scalar", MLPY_FN(mod_mul_scalar), MLPY_KW,
     MLPY_SIG("mul_scalar", "/, x, value") "x * value for a number value."},
    {"clip", MLPY_FN(mod_clip), MLPY_KW,
     MLPY_SIG(
         "clip",
         "/, x, clip_value_min, clip_value_max") "min(max(x, clip_value_min), clip_value_max)."},
    {"softmax", MLPY_FN(mod_softmax), MLPY_KW, MLPY_SIG("softmax", "/, x, axis=-1") "Softmax."},
    {"log_softmax", MLPY_FN(mod_log_softmax), MLPY_KW,
     MLPY_SIG("log_softmax", "/, x, axis=-1") "Log of the softmax, computed stably."},
    {"matmul", MLPY_FN(mod_matmul), MLPY_KW,
     MLPY_SIG("matmul",
              "/, a, b, transpose_a=False, transpose_b=False") "a @ b over the last two dims, "
                                                               "leading dims broadcast."},
    {"linear", MLPY_FN(mod_linear), MLPY_KW,
     MLPY_SIG("linear",
              "/, x, kernel, bias=None, activation=None") "activation(x @ kernel + bias); "
                                                          "activation None, 'linear', 'relu', "
                                                          "'sigmoid' or 'tanh'."},
    {"reshape", MLPY_FN(mod_reshape), MLPY_KW,
     MLPY_SIG("reshape", "/, x, shape") "x with a new shape of as many elements (one -1 allowed)."},
    {"transpose", MLPY_FN(mod_transpose), MLPY_KW,
     MLPY_SIG("transpose", "/, x, perm=None") "x with its dims permuted (reversed by default)."},
    {"broadcast_to", MLPY_FN(mod_broadcast_to), MLPY_KW,
     MLPY_SIG("broadcast_to", "/, x, shape") "x broadcast to shape, as NumPy."},
    {"sum_to", MLPY_FN(mod_sum_to), MLPY_KW,
     MLPY_SIG("sum_to", "/, x, shape") "x summed down to shape (the reverse of broadcasting)."},
    {"concat", MLPY_FN(mod_concat), MLPY_KW,
     MLPY_SIG("concat", "/, values, axis=0") "The tensors of values joined along axis."},
    {"narrow", MLPY_FN(mod_narrow), MLPY_KW,
     MLPY_SIG("narrow",
              "/, x, axis, start, length") "x[..., start:start + length, ...] along axis."},
    {"pad_axis", MLPY_FN(mod_pad_axis), MLPY_KW,
     MLPY_SIG("pad_axis", "/, x, axis, start, size") "Zeros with dim axis of size rows, x at rows "
                                                     "[start, start + x.shape[axis]) (narrow's "
                                                     "transpose)."},
    {"scatter_add", MLPY_FN(mod_scatter_add), MLPY_KW,
     MLPY_SIG("scatter_add",
              "/, x, indices, axis, size") "Zeros with dim axis of size rows, x's slices added at "
                                           "rows indices (gather's transpose)."},
    {"pick", MLPY_FN(mod_pick), MLPY_KW,
     MLPY_SIG("pick", "/, x, labels") "x[..., labels[...]] along the last axis: x (..., c), "
                                      "integer labels (...) -> (...)."},
    {"gather", MLPY_FN(mod_gather), MLPY_KW,
     MLPY_SIG("gather", "/, x, indices, axis=0") "The rows of x along axis picked by indices."},
    {"one_hot", MLPY_FN(mod_one_hot), MLPY_KW,
     MLPY_SIG("one_hot", "/, labels, depth") "One-hot rows (len(labels), depth)."},
    {"reduce_sum", MLPY_FN(mod_reduce_sum), MLPY_KW,
     MLPY_SIG("reduce_sum", "/, x, axis=None, keepdims=False") "Sum over axis (all by default)."},
    {"reduce_mean", MLPY_FN(mod_reduce_mean), MLPY_KW,
     MLPY_SIG("reduce_mean", "/, x, axis=None, keepdims=False") "Mean over axis (all by default)."},
    {"reduce_max", MLPY_FN(mod_reduce_max), MLPY_KW,
     MLPY_SIG("reduce_max",
              "/, x, axis=None, keepdims=False") "Maximum over axis (all by default); the gradient "
                                                 "is split between tied maxima."},
    {"mean_squared_error", MLPY_FN(mod_mse), MLPY_KW,
     MLPY_SIG("mean_squared_error", "/, y_true, y_pred") "Per sample, over the last axis."},
    {"categorical_crossentropy", MLPY_FN(mod_cce), MLPY_KW,
     MLPY_SIG("categorical_crossentropy",
              "/, y_true, y_pred, from_logits=False") "Per sample, over the last axis, as "
                                                      "keras.losses."},
    {"sparse_categorical_crossentropy", MLPY_FN(mod_scce), MLPY_KW,
     MLPY_SIG("sparse_categorical_crossentropy",
              "/, y_true, y_pred, from_logits=False") "Per sample; y_true integer labels (a "
                                                      "Tensor's are read when the op runs)."},
    {"binary_crossentropy", MLPY_FN(mod_bce), MLPY_KW,
     MLPY_SIG("binary_crossentropy",
              "/, y_true, y_pred, from_logits=False") "Per sample, over the last axis, as "
                                                      "keras.losses."},
    {"seed", MLPY_FN(mod_seed), METH_O, MLPY_SIG("seed", "n, /") "Reseeds the global generator."},
    {"rng_state", MLPY_FN(mod_rng_state), METH_NOARGS,
     MLPY_SIG("rng_state", "/") "The global generator's state: a tuple of 4 unsigned 64-bit ints."},
    {"rng_set_state", MLPY_FN(mod_rng_set_state), METH_O,
     MLPY_SIG("rng_set_state", "state, /") "Sets the state rng_state() returned; nothing changes "
                                           "on error."},
    {"random_uniform", MLPY_FN(mod_random_uniform), MLPY_KW,
     MLPY_SIG("random_uniform", "/, shape, minval=0.0, maxval=1.0") "Uniform in [minval, maxval)."},
    {"random_normal", MLPY_FN(mod_random_normal), MLPY_KW,
     MLPY_SIG("random_normal", "/, shape, mean=0.0, stddev=1.0") "Normal values."},
    {"truncated_normal", MLPY_FN(mod_truncated_normal), MLPY_KW,
     MLPY_SIG("truncated_normal",
              "/, shape, mean=0.0, stddev=1.0") "Normal values redrawn until within two standard "
                                                "deviations (as Keras)."},
    {"permutation", MLPY_FN(mod_permutation), METH_O,
     MLPY_SIG("permutation", "n, /") "A random permutation of range(n), an int64 ndarray."},
    {NULL},
};
