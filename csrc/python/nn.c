/* nn.c — binding of the neural-network layer ops (conv, pooling, normalisation). */
#include "binding.h"

#include <strings.h>

/* int or pair of ints -> (a, b); positive values only are checked by the C core. */
static int parse_pair(PyObject *obj, int *a, int *b, const char *fn, const char *what) {
    if (PyLong_Check(obj)) {
        long v = PyLong_AsLong(obj);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < -0x7fffffffL || v > 0x7fffffffL) goto bad;
        *a = *b = (int)v;
        return 0;
    }
    if (PyTuple_Check(obj) || PyList_Check(obj)) {
        PyObject *seq = PySequence_Fast(obj, what);
        if (!seq) return -1;
        if (PySequence_Fast_GET_SIZE(seq) != 2) {
            Py_DECREF(seq);
            goto bad;
        }
        long v[2];
        for (int i = 0; i < 2; i++) {
            PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyLong_Check(it)) {
                Py_DECREF(seq);
                goto bad;
            }
            v[i] = PyLong_AsLong(it);
            if ((v[i] == -1 && PyErr_Occurred()) || v[i] < -0x7fffffffL || v[i] > 0x7fffffffL) {
                Py_DECREF(seq);
                PyErr_Clear();
                goto bad;
            }
        }
        Py_DECREF(seq);
        *a = (int)v[0];
        *b = (int)v[1];
        return 0;
    }
bad:
    PyErr_Format(PyExc_ValueError, "%s: %s must be an int or a pair of ints, got %R", fn, what,
                 obj);
    return -1;
}

static int parse_padding(PyObject *obj, ml_padding *p, const char *fn) {
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s && !strcasecmp(s, "valid"))
        *p = ML_PAD_VALID;
    else if (s && !strcasecmp(s, "same"))
        *p = ML_PAD_SAME;
    else {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%s: padding must be 'valid' or 'same', got %R", fn,
                         obj);
        return -1;
    }
    return 0;
}

static PyObject *nn_conv2d(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "kernel", "bias", "strides", "padding", NULL};
    PyObject *xo, *ko, *bo = Py_None, *so = NULL, *po = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OOO:conv2d", kwlist, &xo, &ko, &bo, &so, &po))
        return NULL;
    int sh = 1, sw = 1;
    ml_padding pad = ML_PAD_VALID;
    if (so && so != Py_None && parse_pair(so, &sh, &sw, "conv2d", "strides") < 0) return NULL;
    if (po && parse_padding(po, &pad, "conv2d") < 0) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "conv2d"), *k = x ? mlpy_as_ml(ko, "conv2d") : NULL, *b = NULL;
    if (k && bo != Py_None) b = mlpy_as_ml(bo, "conv2d");
    if (!k || (bo != Py_None && !b)) {
        ml_release(x);
        ml_release(k);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    const int64_t *ks = ml_shape(k);
    int64_t work = ml_numel(x) * (ml_ndim(k) == 4 ? ks[0] * ks[1] * ks[3] : 1);
    MLPY_CALL(st, work, ml_conv2d(&out, x, k, b, sh, sw, pad));
    ml_release(x);
    ml_release(k);
    ml_release(b);
    return mlpy_wrap_status(st, &out);
}

typedef ml_status (*conv_like_fn)(ml_tensor **, ml_tensor *, ml_tensor *, ml_tensor *, int, int,
                                  ml_padding);

/* conv2d_batched and depthwise_conv2d take the same arguments (x, kernel, bias=None,
   strides, padding); `rank` is the kernel's rank and w0, w1, w2 the kernel axes whose
   product, times x's size, sizes the work for the GIL release */
static PyObject *conv_like(PyObject *args, PyObject *kwds, const char *name, conv_like_fn fn,
                           int rank, int w0, int w1, int w2) {
    static char *kwlist[] = {"x", "kernel", "bias", "strides", "padding", NULL};
    char fmt[64];
    snprintf(fmt, sizeof fmt, "OO|OOO:%s", name);
    PyObject *xo, *ko, *bo = Py_None, *so = NULL, *po = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &xo, &ko, &bo, &so, &po)) return NULL;
    int sh = 1, sw = 1;
    ml_padding pad = ML_PAD_VALID;
    if (so && so != Py_None && parse_pair(so, &sh, &sw, name, "strides") < 0) return NULL;
    if (po && parse_padding(po, &pad, name) < 0) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, name);
    ml_tensor *k = x ? mlpy_as_ml(ko, name) : NULL, *b = NULL;
    if (k && bo != Py_None) b = mlpy_as_ml(bo, name);
    if (!k || (bo != Py_None && !b)) {
        ml_release(x);
        ml_release(k);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st;
    const int64_t *ks = ml_shape(k);
    int64_t work = ml_numel(x) * (ml_ndim(k) == rank ? ks[w0] * ks[w1] * ks[w2] : 1);
    MLPY_CALL(st, work, fn(&out, x, k, b, sh, sw, pad));
    ml_release(x);
    ml_release(k);
    ml_release(b);
    return mlpy_wrap_status(st, &out);
}

static PyObject *nn_conv2d_batched(PyObject *m, PyObject *args, PyObject *kwds) {
    return conv_like(args, kwds, "conv2d_batched", ml_conv2d_batched, 5, 1, 2, 4);
}

static PyObject *nn_depthwise_conv2d(PyObject *m, PyObject *args, PyObject *kwds) {
    return conv_like(args, kwds, "depthwise_conv2d", ml_depthwise_conv2d, 4, 0, 1, 3);
}

typedef ml_status (*pool_fn)(ml_tensor **, ml_tensor *, int, int, int, int, ml_padding);

static PyObject *pool(PyObject *args, PyObject *kwds, pool_fn fn, const char *name,
                      const char *fmt) {
    static char *kwlist[] = {"x", "pool_size", "strides", "padding", NULL};
    PyObject *xo, *ps = NULL, *so = NULL, *po = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &xo, &ps, &so, &po)) return NULL;
    int ph = 2, pw = 2, sh, sw;
    ml_padding pad = ML_PAD_VALID;
    if (ps && ps != Py_None && parse_pair(ps, &ph, &pw, name, "pool_size") < 0) return NULL;
    sh = ph;
    sw = pw;
    if (so && so != Py_None && parse_pair(so, &sh, &sw, name, "strides") < 0) return NULL;
    if (po && parse_padding(po, &pad, name) < 0) return NULL;
    ml_tensor *x = mlpy_as_ml(xo, name);
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(x) * 2, fn(&out, x, ph, pw, sh, sw, pad));
    ml_release(x);
    return mlpy_wrap_status(st, &out);
}

static PyObject *nn_max_pool2d(PyObject *m, PyObject *args, PyObject *kwds) {
    return pool(args, kwds, ml_max_pool2d, "max_pool2d", "O|OOO:max_pool2d");
}
static PyObject *nn_avg_pool2d(PyObject *m, PyObject *args, PyObject *kwds) {
    return pool(args, kwds, ml_avg_pool2d, "avg_pool2d", "O|OOO:avg_pool2d");
}

static PyObject *nn_global_avg_pool2d(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "keepdims", NULL};
    PyObject *xo;
    int keep = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:global_avg_pool2d", kwlist, &xo, &keep))
        return NULL;
    ml_tensor *x = mlpy_as_ml(xo, "global_avg_pool2d");
    if (!x) return NULL;
    ml_tensor *out = NULL;
    ml_status st;
    MLPY_CALL(st, ml_numel(x), ml_global_avg_pool2d(&out, x, keep));
    ml_release(x);
    return mlpy_wrap_status(st, &out);
}

/* None -> NULL; a Tensor or array-like -> a new reference; *err set on failure. */
static ml_tensor *optional(PyObject *o, const char *what, int *err) {
    if (!o || o == Py_None) return NULL;
    ml_tensor *t = mlpy_as_ml(o, what);
    if (!t) *err = 1;
    return t;
}

static PyObject *nn_batch_norm(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x",        "gamma",    "beta",    "moving_mean", "moving_variance",
                             "training", "momentum", "epsilon", "axis",        NULL};
    PyObject *xo, *go = Py_None, *bo = Py_None, *mmo = Py_None, *mvo = Py_None, *axis_o = NULL;
    int training = 0, axis = -1;
    double momentum = 0.99, epsilon = 1e-3;
    /* the axis as every other op reads it: a huge value is a ValueError, not an OverflowError */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOOOpddO:batch_norm", kwlist, &xo, &go, &bo,
                                     &mmo, &mvo, &training, &momentum, &epsilon, &axis_o) ||
        mlpy_axis_arg(axis_o, -1, &axis, "batch_norm") < 0)
        return NULL;
    if (training) {
        /* the moving statistics are updated in place: a converted copy would lose it */
        if ((mmo != Py_None && !mlpy_Tensor_Check(mmo)) ||
            (mvo != Py_None && !mlpy_Tensor_Check(mvo))) {
            PyErr_SetString(PyExc_TypeError,
                            "batch_norm: in training mode moving_mean and "
                            "moving_variance must be Tensors (they are updated in place) or None");
            return NULL;
        }
    }
    int err = 0;
    ml_tensor *x = optional(xo, "batch_norm", &err);
    if (!x && !err) {
        PyErr_SetString(PyExc_TypeError, "batch_norm: expected a tensor or an array, got None");
        return NULL;
    }
    ml_tensor *g = err ? NULL : optional(go, "batch_norm", &err);
    ml_tensor *b = err ? NULL : optional(bo, "batch_norm", &err);
    ml_tensor *mm = err ? NULL : optional(mmo, "batch_norm", &err);
    ml_tensor *mv = err ? NULL : optional(mvo, "batch_norm", &err);
    ml_tensor *out = NULL;
    ml_status st = ML_OK;
    if (!err)
        MLPY_CALL(st, ml_numel(x) * 4,
                  ml_batch_norm(&out, x, g, b, mm, mv, training, (float)momentum, (float)epsilon,
                                axis));
    ml_release(x);
    ml_release(g);
    ml_release(b);
    ml_release(mm);
    ml_release(mv);
    if (err) return NULL;
    return mlpy_wrap_status(st, &out);
}

/* the LSTM cell (Keras' default activations): z (B, 4u), c_prev (B, u) -> [h | c] */
static PyObject *nn_lstm_cell(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"z", "c_prev", NULL};
    PyObject *zo, *co;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:lstm_cell", kwlist, &zo, &co)) return NULL;
    return mlpy_binary(zo, co, ml_lstm_cell, "lstm_cell"); /* two tensors in, one out */
}

static PyObject *nn_batch_norm_grouped(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "gamma", "beta", "epsilon", "axis", NULL};
    PyObject *xo, *go = Py_None, *bo = Py_None, *axis_o = NULL;
    int axis = -1;
    double epsilon = 1e-3;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOdO:batch_norm_grouped", kwlist, &xo, &go, &bo,
                                     &epsilon, &axis_o) ||
        mlpy_axis_arg(axis_o, -1, &axis, "batch_norm_grouped") < 0)
        return NULL;
    int err = 0;
    ml_tensor *x = optional(xo, "batch_norm_grouped", &err);
    if (!x && !err) {
        PyErr_SetString(PyExc_TypeError,
                        "batch_norm_grouped: expected a tensor or an array, got None");
        return NULL;
    }
    ml_tensor *g = err ? NULL : optional(go, "batch_norm_grouped", &err);
    ml_tensor *b = err ? NULL : optional(bo, "batch_norm_grouped", &err);
    ml_tensor *out = NULL;
    ml_status st = ML_OK;
    if (!err)
        MLPY_CALL(st, ml_numel(x) * 4, ml_batch_norm_grouped(&out, x, g, b, (float)epsilon, axis));
    ml_release(x);
    ml_release(g);
    ml_release(b);
    if (err) return NULL;
    return mlpy_wrap_status(st, &out);
}

PyMethodDef mlpy_nn_methods[] = {
    {"lstm_cell", MLPY_FN(nn_lstm_cell), MLPY_KW,
     MLPY_SIG("lstm_cell", "/, z, c_prev") "One LSTM step's gates (Keras' order i, f, c, o; "
                                           "sigmoid and tanh): z (B, 4u), c_prev (B, u) -> "
                                           "[h | c] (B, 2u)."},
    {"conv2d", MLPY_FN(nn_conv2d), MLPY_KW,
     MLPY_SIG("conv2d",
              "/, x, kernel, bias=None, strides=(1, 1), padding='valid'") "2-D convolution, "
                                                                          "channels-last: x (N, H, "
                                                                          "W, C), kernel (KH, KW, "
                                                                          "C, F), bias (F,)."},
    {"conv2d_batched", MLPY_FN(nn_conv2d_batched), MLPY_KW,
     MLPY_SIG("conv2d_batched",
              "/, x, kernel, bias=None, strides=(1, 1), padding='valid'") "conv2d over T tasks, "
                                                                          "each with its own "
                                                                          "kernel: x (T, N, H, W, "
                                                                          "C), kernel (T, KH, KW, "
                                                                          "C, F), bias (T, F)."},
    {"depthwise_conv2d", MLPY_FN(nn_depthwise_conv2d), MLPY_KW,
     MLPY_SIG("depthwise_conv2d",
              "/, x, kernel, bias=None, strides=(1, 1), padding='valid'") "Depthwise 2-D "
                                                                          "convolution: x (N, H, "
                                                                          "W, C), kernel (KH, KW, "
                                                                          "C, M), bias (C*M,)."},
    {"max_pool2d", MLPY_FN(nn_max_pool2d), MLPY_KW,
     MLPY_SIG(
         "max_pool2d",
         "/, x, pool_size=(2, 2), strides=None, padding='valid'") "Max pooling, channels-last; "
                                                                  "strides default to pool_size."},
    {"avg_pool2d", MLPY_FN(nn_avg_pool2d), MLPY_KW,
     MLPY_SIG(
         "avg_pool2d",
         "/, x, pool_size=(2, 2), strides=None, padding='valid'") "Average pooling, channels-last; "
                                                                  "with 'same' only elements "
                                                                  "inside the input count."},
    {"global_avg_pool2d", MLPY_FN(nn_global_avg_pool2d), MLPY_KW,
     MLPY_SIG("global_avg_pool2d",
              "/, x, keepdims=False") "Mean over height and width of (N, H, W, C)."},
    {"batch_norm", MLPY_FN(nn_batch_norm), MLPY_KW,
     MLPY_SIG(
         "batch_norm",
         "/, x, gamma=None, beta=None, moving_mean=None, moving_variance=None, "
         "training=False, momentum=0.99, epsilon=0.001, axis=-1") "Batch normalisation as Keras. "
                                                                  "training=True uses the batch's "
                                                                  "mean and biased variance "
                                                                  "and updates the moving "
                                                                  "statistics in place (no "
                                                                  "gradient through that update)."},
    {"batch_norm_grouped", MLPY_FN(nn_batch_norm_grouped), MLPY_KW,
     MLPY_SIG(
         "batch_norm_grouped",
         "/, x, gamma=None, beta=None, epsilon=0.001, axis=-1") "Training-mode batch normalisation "
                                                                "of independent groups: x's first "
                                                                "axis indexes the "
                                                                "groups (e.g. the tasks of a "
                                                                "meta-batch), each normalised with "
                                                                "its own batch statistics "
                                                                "and its own gamma[g], beta[g] "
                                                                "(shape (groups, channels)). "
                                                                "Equals batch_norm on each "
                                                                "x[g] with no moving statistics."},
    {NULL},
};
