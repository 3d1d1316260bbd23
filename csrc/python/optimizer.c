/* optimizer.c — the Optimizer type (a C SGD, Adam, RMSprop, Adagrad or Nadam) and the module
 * functions SGD, Adam, RMSprop, Adagrad and Nadam that make one; clipping, EMA, excluded
 * parameters and the learning-rate schedule are its properties. step() takes the parameters (Tensors, updated in place) and their
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

static PyObject *mod_Adagrad(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"learning_rate", "initial_accumulator_value", "epsilon", NULL};
    double lr = 0.001, init = 0.1, eps = 1e-7;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ddd:Adagrad", kwlist, &lr, &init, &eps))
        return NULL;
    ml_optimizer *opt = NULL;
    ml_status st = ml_adagrad_new(&opt, (float)lr, (float)init, (float)eps);
    return new_optimizer(st, opt);
}

static PyObject *mod_Nadam(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"learning_rate", "beta_1", "beta_2", "epsilon", NULL};
    double lr = 0.001, b1 = 0.9, b2 = 0.999, eps = 1e-7;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|dddd:Nadam", kwlist, &lr, &b1, &b2, &eps))
        return NULL;
    ml_optimizer *opt = NULL;
    ml_status st = ml_nadam_new(&opt, (float)lr, (float)b1, (float)b2, (float)eps);
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

/* finalize_variable_values(params): the moving average into the parameters (EMA) */
static PyObject *Optimizer_finalize(OptimizerObject *self, PyObject *po) {
    Py_ssize_t n = 0;
    ml_tensor **params = mlpy_tensor_array(po, &n, "finalize_variable_values", "params", 0);
    if (!params) return NULL;
    ml_status st = n > INT32_MAX ? ml_set_error(ML_ERR_VALUE, "too many parameters")
                                 : ml_optimizer_finalize_variable_values(self->opt, (int)n, params);
    mlpy_release_tensors(params, n);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

/* set_use_ema(use_ema, ema_momentum=0.99, ema_overwrite_frequency=0) */
static PyObject *Optimizer_set_use_ema(OptimizerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"use_ema", "ema_momentum", "ema_overwrite_frequency", NULL};
    int use = 0;
    double mom = 0.99;
    long long freq = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "p|dL:set_use_ema", kwlist, &use, &mom, &freq))
        return NULL;
    ml_status st = ml_optimizer_set_use_ema(self->opt, use, (float)mom, (int64_t)freq);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
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
static const char *const CLIP_KINDS[] = {NULL, "clipvalue", "clipnorm", "global_clipnorm"};

/* clip: None, or (kind, threshold) with kind "clipvalue", "clipnorm" or "global_clipnorm" */
static PyObject *Optimizer_get_clip(OptimizerObject *self, void *c) {
    for (int k = ML_CLIP_VALUE; k <= ML_CLIP_GLOBAL_NORM; k++) {
        float v = ml_optimizer_clip(self->opt, (ml_clip_kind)k);
        if (v > 0) return Py_BuildValue("(sd)", CLIP_KINDS[k], (double)v);
    }
    Py_RETURN_NONE;
}
static int Optimizer_set_clip(OptimizerObject *self, PyObject *v, void *c) {
    const char *kind = NULL;
    double value = 0;
    if (v && v != Py_None && !PyArg_ParseTuple(v, "sd:clip", &kind, &value)) return -1;
    int k = ML_CLIP_NONE;
    for (int i = ML_CLIP_VALUE; kind && i <= ML_CLIP_GLOBAL_NORM; i++)
        if (!strcmp(kind, CLIP_KINDS[i])) k = i;
    if (kind && k == ML_CLIP_NONE) {
        PyErr_Format(PyExc_ValueError,
                     "clip: unknown kind %R (clipvalue, clipnorm or global_clipnorm)",
                     PyTuple_GET_ITEM(v, 0));
        return -1;
    }
    ml_status st = ml_optimizer_set_clip(self->opt, (ml_clip_kind)k, (float)value);
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    return 0;
}

/* exclude_from_weight_decay: a list of flags, one per parameter of the step's list */
static PyObject *Optimizer_get_exclude(OptimizerObject *self, void *c) {
    int n = ml_optimizer_n_params(self->opt);
    PyObject *out = PyList_New(n);
    for (int i = 0; out && i < n; i++)
        PyList_SET_ITEM(out, i,
                        PyBool_FromLong(ml_optimizer_exclude_from_weight_decay(self->opt, i)));
    return out;
}
static int Optimizer_set_exclude(OptimizerObject *self, PyObject *v, void *c) {
    PyObject *seq = v ? PySequence_Fast(v, "exclude_from_weight_decay must be a list of bools")
                      : NULL;
    if (!seq) {
        if (!v) PyErr_SetString(PyExc_TypeError, "exclude_from_weight_decay cannot be deleted");
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *flags = n > INT32_MAX ? NULL : PyMem_Malloc((size_t)(n ? n : 1) * sizeof *flags);
    int bad = !flags;
    if (bad) PyErr_NoMemory();
    for (Py_ssize_t i = 0; !bad && i < n; i++) {
        int f = PyObject_IsTrue(PySequence_Fast_GET_ITEM(seq, i));
        bad = f < 0;
        if (!bad) flags[i] = f;
    }
    Py_DECREF(seq);
    ml_status st = bad ? ML_OK
                       : ml_optimizer_set_exclude_from_weight_decay(self->opt, (int)n, flags);
    PyMem_Free(flags);
    if (bad) return -1;
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    return 0;
}

static PyObject *Optimizer_get_use_ema(OptimizerObject *self, void *c) {
    return PyBool_FromLong(ml_optimizer_use_ema(self->opt));
}

static const char *const SCHEDULES[] = {NULL,          "ExponentialDecay",       "InverseTimeDecay",
                                        "CosineDecay", "PiecewiseConstantDecay", "PolynomialDecay"};

/* learning_rate_schedule: None, or (class name, numbers) as ml_optimizer_set_learning_rate_
 * schedule takes them (CosineDecay's warmup_target None is NaN) */
static PyObject *Optimizer_get_schedule(OptimizerObject *self, void *c) {
    ml_schedule k = ml_optimizer_learning_rate_schedule(self->opt);
    if (k == ML_SCHEDULE_NONE) Py_RETURN_NONE;
    return PyUnicode_FromString(SCHEDULES[k]);
}
static int Optimizer_set_schedule(OptimizerObject *self, PyObject *v, void *c) {
    const char *name = NULL;
    PyObject *nums = NULL;
    if (v && v != Py_None && !PyArg_ParseTuple(v, "sO:learning_rate_schedule", &name, &nums))
        return -1;
    int k = ML_SCHEDULE_NONE;
    for (int i = ML_SCHEDULE_EXPONENTIAL_DECAY; name && i <= ML_SCHEDULE_POLYNOMIAL_DECAY; i++)
        if (!strcmp(name, SCHEDULES[i])) k = i;
    if (name && k == ML_SCHEDULE_NONE) {
        PyErr_Format(PyExc_ValueError, "unknown learning-rate schedule %R", PyTuple_GET_ITEM(v, 0));
        return -1;
    }
    double *a = NULL;
    Py_ssize_t n = 0;
    if (nums) {
        PyObject *seq = PySequence_Fast(nums, "learning_rate_schedule: numbers must be a list");
        if (!seq) return -1;
        n = PySequence_Fast_GET_SIZE(seq);
        a = n > INT32_MAX ? NULL : PyMem_Malloc((size_t)(n ? n : 1) * sizeof *a);
        int bad = !a;
        if (bad) PyErr_NoMemory();
        for (Py_ssize_t i = 0; !bad && i < n; i++) {
            a[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
            bad = a[i] == -1.0 && PyErr_Occurred();
        }
        Py_DECREF(seq);
        if (bad) {
            PyMem_Free(a);
            return -1;
        }
    }
    ml_status st = ml_optimizer_set_learning_rate_schedule(self->opt, (ml_schedule)k, a, (int)n);
    PyMem_Free(a);
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
    {"clip", (getter)Optimizer_get_clip, (setter)Optimizer_set_clip,
     "Gradient clipping: None or (\"clipvalue\" | \"clipnorm\" | \"global_clipnorm\", "
     "threshold); a threshold of 0 is none, as Keras.",
     NULL},
    {"exclude_from_weight_decay", (getter)Optimizer_get_exclude, (setter)Optimizer_set_exclude,
     "Per parameter of the step's list: True when it does not decay.", NULL},
    {"use_ema", (getter)Optimizer_get_use_ema, NULL,
     "Whether a moving average of the parameters is kept (set_use_ema).", NULL},
    {"learning_rate_schedule", (getter)Optimizer_get_schedule, (setter)Optimizer_set_schedule,
     "None, or (schedule class name, numbers): the rate of each step is computed from the "
     "step count (ml_optimizer_set_learning_rate_schedule gives the numbers' order).",
     NULL},
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
    {"finalize_variable_values", (PyCFunction)Optimizer_finalize, METH_O,
     "finalize_variable_values($self, params, /)\n--\n\n"
     "Sets the parameters to their moving average (with EMA, after a step)."},
    {"set_use_ema", (PyCFunction)(void (*)(void))Optimizer_set_use_ema,
     METH_VARARGS | METH_KEYWORDS,
     "set_use_ema($self, /, use_ema, ema_momentum=0.99, ema_overwrite_frequency=0)\n--\n\n"
     "Keep a moving average of the parameters (the last slot); before the first step."},
    {"reset", (PyCFunction)Optimizer_reset, METH_NOARGS,
     "reset($self, /)\n--\n\nZero the state and the iteration count."},
    {NULL},
};

static PyTypeObject OptimizerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "metalearn._core.Optimizer",
    .tp_basicsize = sizeof(OptimizerObject),
    .tp_dealloc = (destructor)Optimizer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A C optimizer (made by _core.SGD, Adam, RMSprop, Adagrad or Nadam).",
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
    {"Adagrad", MLPY_FN(mod_Adagrad), MLPY_KW,
     "Adagrad($module, /, learning_rate=0.001, initial_accumulator_value=0.1, "
     "epsilon=1e-07)\n--\n\n"
     "Adagrad as Keras 3 computes it."},
    {"Nadam", MLPY_FN(mod_Nadam), MLPY_KW,
     "Nadam($module, /, learning_rate=0.001, beta_1=0.9, beta_2=0.999, "
     "epsilon=1e-07)\n--\n\n"
     "Nadam (Dozat 2016) as Keras 3 computes it."},
    {NULL},
};
