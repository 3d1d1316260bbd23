/* optimizer.c — the Optimizer type (a C SGD, Adam or RMSprop) and the module functions SGD,
 * Adam and RMSprop that make one. step() takes the parameters (Tensors, updated in place) and their
 * gradients (Tensors or array-likes); nothing changes on error. */
#include "binding.h"

typedef struct {
    PyObject_HEAD ml_optimizer *opt;
} OptimizerObject;

static PyTypeObject OptimizerType;

static void Optimizer_dealloc(OptimizerObject *self) {
    ml_optimizer_free(self->opt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *new_optimizer(ml_status st, ml_optimizer *opt) {
    if (st) return mlpy_raise_status(st);
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

static PyObject *mod_RMSprop(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"learning_rate", "rho", "momentum", "epsilon", "centered", NULL};
    double lr = 0.001, rho = 0.9, momentum = 0.0, eps = 1e-7;
    int centered = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ddddp:RMSprop", kwlist, &lr, &rho, &momentum,
                                     &eps, &centered))
        return NULL;
    ml_optimizer *opt = NULL;
    ml_status st = ml_rmsprop_new(&opt, (float)lr, rho, (float)momentum, (float)eps, centered);
    return new_optimizer(st, opt);
}

static PyObject *mod_Adam(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", NULL};
    double lr = 0.001, b1 = 0.9, b2 = 0.999, eps = 1e-7;
    int amsgrad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ddddp:Adam", kwlist, &lr, &b1, &b2, &eps,
                                     &amsgrad))
        return NULL;
    ml_optimizer *opt = NULL;
    ml_status st = ml_adam_new(&opt, (float)lr, (float)b1, (float)b2, (float)eps, amsgrad);
    return new_optimizer(st, opt);
}

/* step(params, grads): grads may be Tensors or arrays; params must be Tensors */
static PyObject *Optimizer_step(OptimizerObject *self, PyObject *args) {
    PyObject *po, *go;
    if (!PyArg_ParseTuple(args, "OO:step", &po, &go)) return NULL;
    Py_ssize_t n = 0, ng = 0;
    /* references of the call's own: the GIL may be released during the step */
    ml_tensor **params = mlpy_tensor_array(po, &n, "optimizer step", "params", 0);
    ml_tensor **grads = params ? mlpy_tensor_array(go, &ng, "optimizer step", "grads",
                                                   MLPY_LIST_CONVERT)
                               : NULL;
    PyObject *result = NULL;
    if (!grads) goto done;
    if (n != ng || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "optimizer step: %zd parameters but %zd gradients", n, ng);
        goto done;
    }
    ml_status st;
    int64_t work = 0;
    for (Py_ssize_t i = 0; i < n; i++) work += ml_numel(params[i]);
    MLPY_CALL(st, work, ml_optimizer_step(self->opt, (int)n, params, grads));
    if (st) {
        mlpy_raise_status(st);
        goto done;
    }
    /* a replay of the trace this thread records steps it again */
    if (mlpy_keep_alive_in_trace((PyObject *)self) < 0) goto done;
    result = Py_None;
    Py_INCREF(result);
done:
    mlpy_release_tensors(params, n);
    mlpy_release_tensors(grads, ng);
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
            PyObject *w = st ? mlpy_raise_status(st) : mlpy_wrap(t);
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

/* restore(params, iterations, slots): slots as slots() returns them, a list per parameter
 * of its slot tensors (or array-likes, copied); the C call checks everything first */
static PyObject *Optimizer_restore(OptimizerObject *self, PyObject *args) {
    PyObject *po, *so;
    long long iterations;
    if (!PyArg_ParseTuple(args, "OLO:restore", &po, &iterations, &so)) return NULL;
    Py_ssize_t n = 0, ns = ml_optimizer_n_slots(self->opt), total = 0;
    ml_tensor **params = mlpy_tensor_array(po, &n, "optimizer restore", "params", 0);
    ml_tensor **slots = NULL;
    PyObject *flat = NULL, *result = NULL;
    if (!params) goto done;
    flat = PyList_New(0);
    PyObject *seq = flat ? PySequence_Fast(so, "optimizer restore: slots must be a list") : NULL;
    if (!seq) goto done;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError,
                     "optimizer restore: slots for %zd parameters, but %zd parameters given",
                     PySequence_Fast_GET_SIZE(seq), n);
        Py_DECREF(seq);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *inner = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, i),
                                          "optimizer restore: each parameter's slots must be a "
                                          "list");
        int bad = !inner;
        if (inner && PySequence_Fast_GET_SIZE(inner) != ns) {
            PyErr_Format(PyExc_ValueError,
                         "optimizer restore: parameter %zd has %zd slots, this optimizer keeps "
                         "%zd",
                         i, PySequence_Fast_GET_SIZE(inner), ns);
            bad = 1;
        }
        for (Py_ssize_t k = 0; !bad && k < ns; k++)
            bad = PyList_Append(flat, PySequence_Fast_GET_ITEM(inner, k)) < 0;
        Py_XDECREF(inner);
        if (bad) {
            Py_DECREF(seq);
            goto done;
        }
    }
    Py_DECREF(seq);
    slots = mlpy_tensor_array(flat, &total, "optimizer restore", "slots", MLPY_LIST_CONVERT);
    if (!slots && PyErr_Occurred()) goto done;
    if (n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "optimizer restore: too many parameters");
        goto done;
    }
    ml_status st = ml_optimizer_restore(self->opt, (int)n, params, (int64_t)iterations, slots);
    if (st) {
        mlpy_raise_status(st);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    mlpy_release_tensors(params, n);
    mlpy_release_tensors(slots, total);
    Py_XDECREF(flat);
    return result;
}

static PyObject *Optimizer_reset(OptimizerObject *self, PyObject *unused) {
    ml_optimizer_reset(self->opt);
    Py_RETURN_NONE;
}

static PyObject *Optimizer_get_lr(OptimizerObject *self, void *c) {
    return PyFloat_FromDouble(ml_optimizer_learning_rate(self->opt));
}
static int Optimizer_set_lr(OptimizerObject *self, PyObject *v, void *c) {
    double lr = v ? PyFloat_AsDouble(v) : -1;
    if (lr == -1.0 && PyErr_Occurred()) return -1;
    ml_status st = ml_optimizer_set_learning_rate(self->opt, (float)lr);
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    return 0;
}
static PyObject *Optimizer_get_wd(OptimizerObject *self, void *c) {
    return PyFloat_FromDouble(ml_optimizer_weight_decay(self->opt));
}
static int Optimizer_set_wd(OptimizerObject *self, PyObject *v, void *c) {
    double wd = v ? PyFloat_AsDouble(v) : -1;
    if (wd == -1.0 && PyErr_Occurred()) return -1;
    ml_status st = ml_optimizer_set_weight_decay(self->opt, (float)wd);
    if (st) {
        mlpy_raise_status(st);
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
    {"learning_rate", (getter)Optimizer_get_lr, (setter)Optimizer_set_lr, "The learning rate.",
     NULL},
    {"weight_decay", (getter)Optimizer_get_wd, (setter)Optimizer_set_wd,
     "Decoupled weight decay (Keras 3's), applied before each update; 0 is none.", NULL},
    {"iterations", (getter)Optimizer_get_iterations, NULL, "Steps taken.", NULL},
    {"n_params", (getter)Optimizer_get_n_params, NULL, "Parameters (0 before the first step).",
     NULL},
    {NULL},
};

static PyMethodDef Optimizer_methods[] = {
    {"step", (PyCFunction)Optimizer_step, METH_VARARGS,
     "step($self, params, grads, /)\n--\n\n"
     "One update of every parameter, in place; nothing changes on error."},
    {"slots", (PyCFunction)Optimizer_slots, METH_NOARGS,
     "slots($self, /)\n--\n\nCopies of the state: a list per parameter of its slot tensors."},
    {"restore", (PyCFunction)Optimizer_restore, METH_VARARGS,
     "restore($self, params, iterations, slots, /)\n--\n\n"
     "Sets the state slots() and iterations read (slots: a list per parameter); the "
     "parameter list is fixed as by a first step. Nothing changes on error."},
    {"reset", (PyCFunction)Optimizer_reset, METH_NOARGS,
     "reset($self, /)\n--\n\nZero the state and the iteration count."},
    {NULL},
};

static PyTypeObject OptimizerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "metalearn._core.Optimizer",
    .tp_basicsize = sizeof(OptimizerObject),
    .tp_dealloc = (destructor)Optimizer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A C optimizer (made by _core.SGD or _core.Adam).",
    .tp_methods = Optimizer_methods,
    .tp_getset = Optimizer_getset,
};

int mlpy_optimizer_init(PyObject *module) {
    if (PyType_Ready(&OptimizerType) < 0) return -1;
    return PyModule_AddObjectRef(module, "Optimizer", (PyObject *)&OptimizerType);
}

PyMethodDef mlpy_optimizer_methods[] = {
    {"SGD", MLPY_FN(mod_SGD), MLPY_KW,
     "SGD($module, /, learning_rate=0.01, momentum=0.0, nesterov=False)\n--\n\n"
     "SGD with momentum and Nesterov as Keras."},
    {"Adam", MLPY_FN(mod_Adam), MLPY_KW,
     "Adam($module, /, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, "
     "amsgrad=False)\n--\n\n"
     "Adam (Kingma & Ba 2015) as Keras computes it; AMSGrad (Reddi et al. 2018)."},
    {"RMSprop", MLPY_FN(mod_RMSprop), MLPY_KW,
     "RMSprop($module, /, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07, "
     "centered=False)\n--\n\n"
     "RMSprop as Keras 3 computes it (momentum, centred)."},
    {NULL},
};
