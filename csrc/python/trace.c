/* trace.c — the Trace type (a recorded computation, metalearn.function builds on it) and
 * the module functions that record, replay and inspect traces. Optimizers stepped while
 * recording are kept alive by the trace, since replays step them again.
 *
 * Threads: recording belongs to the thread that began it (the C core refuses trace_end and
 * trace_abort from others). While it records, that thread's state dict holds the trace, so
 * dropping the last other reference (on any thread) cannot free it under the recorder; the
 * dict lets go at trace_end/trace_abort, or when the thread ends. A finished trace replays
 * on any thread, several at once (the C trace is read-only then). */
#include "binding.h"

typedef struct TraceObject {
    PyObject_HEAD ml_trace *trace;
    PyObject *keepalive; /* list */
} TraceObject;

/* The trace this thread records (borrowed: the thread's state dict holds it until the
 * recording ends, so another thread cannot free it meanwhile); optimizers stepped while it
 * records go into its keep-alive list. Per thread: two threads may record at once. */
static _Thread_local TraceObject *recording_trace;

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

int mlpy_keep_alive_in_trace(PyObject *obj) {
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

/* The tensors of a trace call (None allowed for an absent output): new references. */
static ml_tensor **tensor_seq(PyObject *obj, Py_ssize_t *n, const char *fn, const char *arg) {
    return mlpy_tensor_array(obj, n, fn, arg, MLPY_LIST_ONE | MLPY_LIST_NONE);
}

static PyObject *mod_trace_begin(PyObject *m, PyObject *inputs) {
    Py_ssize_t n;
    PyObject *d = PyThreadState_GetDict();
    if (!d) {
        PyErr_SetString(PyExc_RuntimeError, "trace_begin: no thread state dict");
        return NULL;
    }
    ml_tensor **ts = tensor_seq(inputs, &n, "trace_begin", "inputs");
    if (!ts) return NULL;
    TraceObject *tr = PyObject_New(TraceObject, &TraceType);
    if (!tr) {
        mlpy_release_tensors(ts, n);
        return NULL;
    }
    tr->trace = NULL;
    tr->keepalive = PyList_New(0);
    ml_status st = tr->keepalive ? ml_trace_begin(&tr->trace, (int)n, ts) : ML_ERR_OOM;
    mlpy_release_tensors(ts, n); /* the C trace holds its own references */
    if (st) {
        int set = tr->keepalive == NULL; /* PyList_New set the exception */
        Py_DECREF(tr);
        return set ? NULL : mlpy_raise_status(st);
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
    ml_tensor **ts = tensor_seq(outputs, &n, "trace_end", "outputs");
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
    mlpy_release_tensors(ts, n);
    forget_recording(tr);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *mod_trace_abort(PyObject *m, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &TraceType)) {
        PyErr_SetString(PyExc_TypeError, "trace_abort expects a trace");
        return NULL;
    }
    TraceObject *tr = (TraceObject *)arg;
    ml_status st = ml_trace_abort(tr->trace);
    if (st) return mlpy_raise_status(st); /* recorded by another thread: nothing changed */
    forget_recording(tr);
    Py_RETURN_NONE;
}

static PyObject *mod_is_tracing(PyObject *m, PyObject *unused) {
    return PyBool_FromLong(ml_is_tracing());
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
    if (ml_is_tracing()) return 1;
    if (!ml_is_grad_enabled()) return 0;
    if (tapes_recording) return 1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (ts[i] && ml_requires_grad(ts[i])) return 1;
    return 0;
}

static PyObject *mod_must_run_eagerly(PyObject *m, PyObject *inputs) {
    Py_ssize_t n;
    ml_tensor **ts = tensor_seq(inputs, &n, "must_run_eagerly", "inputs");
    if (!ts) return NULL;
    int r = must_run_eagerly(ts, n);
    mlpy_release_tensors(ts, n);
    return PyBool_FromLong(r);
}

/* trace_replay(trace, inputs) -> list of output Tensors; try_replay: None instead when the
 * call must run eagerly (must_run_eagerly) */
static PyObject *trace_replay_impl(PyObject *args, int try_only) {
    TraceObject *tr;
    PyObject *inputs;
    if (!PyArg_ParseTuple(args, "O!O:trace_replay", &TraceType, &tr, &inputs)) return NULL;
    Py_ssize_t n;
    ml_tensor **ts = tensor_seq(inputs, &n, "trace_replay", "inputs");
    if (!ts) return NULL;
    if (try_only && must_run_eagerly(ts, n)) {
        mlpy_release_tensors(ts, n);
        Py_RETURN_NONE;
    }
    if (n != ml_trace_n_inputs(tr->trace)) {
        mlpy_release_tensors(ts, n);
        PyErr_Format(PyExc_ValueError, "replay: %zd inputs for a trace of %d", n,
                     ml_trace_n_inputs(tr->trace));
        return NULL;
    }
    int n_out = ml_trace_n_outputs(tr->trace);
    ml_tensor **outs = PyMem_Calloc((size_t)(n_out ? n_out : 1), sizeof *outs);
    if (!outs) {
        mlpy_release_tensors(ts, n);
        return PyErr_NoMemory();
    }
    ml_status st;
    /* tr stays alive: the caller's argument tuple holds it */
    Py_BEGIN_ALLOW_THREADS st = ml_trace_replay(tr->trace, ts, outs);
    Py_END_ALLOW_THREADS mlpy_release_tensors(ts, n);
    PyObject *r = st ? mlpy_raise_status(st) : mlpy_tensor_list(outs, n_out);
    PyMem_Free(outs);
    return r;
}

static PyObject *mod_trace_replay(PyObject *m, PyObject *args) {
    return trace_replay_impl(args, 0);
}
static PyObject *mod_trace_try_replay(PyObject *m, PyObject *args) {
    return trace_replay_impl(args, 1);
}

/* trace_replay_many(trace, [inputs per call], n_threads=None) -> [[outputs] per call] */
static PyObject *mod_trace_replay_many(PyObject *m, PyObject *args) {
    TraceObject *tr;
    PyObject *calls;
    int n_threads = 0;
    if (!PyArg_ParseTuple(args, "O!O|i:trace_replay_many", &TraceType, &tr, &calls, &n_threads))
        return NULL;
    /* one thread count for the whole core: large ops and task-parallel replays */
    if (n_threads <= 0) n_threads = ml_get_num_threads();
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
        ml_tensor **ts = tensor_seq(PySequence_Fast_GET_ITEM(seq, c), &n, "trace_replay_many",
                                    "inputs");
        if (!ts) goto done;
        if (n != n_in) {
            mlpy_release_tensors(ts, n);
            PyErr_Format(PyExc_ValueError, "replay: call %zd has %zd inputs, the trace takes %d", c,
                         n, n_in);
            goto done;
        }
        memcpy(ins + c * n_in, ts, (size_t)n_in * sizeof *ts);
        n_held += n_in;
        PyMem_Free(ts); /* the references moved into ins */
    }
    ml_status st;
    Py_BEGIN_ALLOW_THREADS st = ml_trace_replay_many(tr->trace, (int)n_calls, ins, outs, n_threads);
    Py_END_ALLOW_THREADS if (st) {
        mlpy_raise_status(st);
        goto done;
    }
    result = PyList_New(n_calls);
    for (Py_ssize_t c = 0; result && c < n_calls; c++) {
        PyObject *l = mlpy_tensor_list(outs + c * n_out, n_out);
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
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "metalearn._core.Trace",
    .tp_basicsize = sizeof(TraceObject),
    .tp_dealloc = (destructor)Trace_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A recorded computation, replayed from C (see metalearn.function).",
    .tp_methods = Trace_methods,
};

int mlpy_trace_init(PyObject *module) {
    /* not added to the module: traces come from trace_begin only */
    return PyType_Ready(&TraceType);
}


PyMethodDef mlpy_trace_methods[] = {
    {"trace_begin", MLPY_FN(mod_trace_begin), METH_O,
     MLPY_SIG("trace_begin", "inputs, /") "Starts recording this thread's ops -> a Trace."},
    {"trace_end", MLPY_FN(mod_trace_end), METH_VARARGS,
     MLPY_SIG("trace_end",
              "trace, outputs, /") "Ends the recording (on the thread that began it)."},
    {"trace_abort", MLPY_FN(mod_trace_abort), METH_O,
     MLPY_SIG("trace_abort", "trace, /") "Stops a recording after a failure."},
    {"trace_replay", MLPY_FN(mod_trace_replay), METH_VARARGS,
     MLPY_SIG("trace_replay", "trace, inputs, /") "Replays the trace with new inputs -> outputs."},
    {"trace_try_replay", MLPY_FN(mod_trace_try_replay), METH_VARARGS,
     MLPY_SIG("trace_try_replay",
              "trace, inputs, /") "trace_replay's outputs, or None when the call must run eagerly "
                                  "(this thread records a "
                                  "trace, or grad mode is on and a tape records or an input "
                                  "requires grad)."},
    {"must_run_eagerly", MLPY_FN(mod_must_run_eagerly), METH_O,
     MLPY_SIG("must_run_eagerly",
              "inputs, /") "Whether trace_try_replay would refuse these inputs now."},
    {"_set_tapes_recording", MLPY_FN(mod_set_tapes_recording), METH_O,
     MLPY_SIG("_set_tapes_recording",
              "n, /") "GradientTapes recording on this thread (kept by metalearn.tape)."},
    {"is_tracing", MLPY_FN(mod_is_tracing), METH_NOARGS,
     MLPY_SIG("is_tracing", "/") "Whether this thread records a trace."},
    {"trace_replay_many", MLPY_FN(mod_trace_replay_many), METH_VARARGS,
     MLPY_SIG("trace_replay_many",
              "trace, calls, n_threads=0, /") "Independent replays (a list of inputs per call) "
                                              "over threads -> outputs per call; "
                                              "the results do not depend on n_threads (0: "
                                              "get_num_threads())."},
    {"trace_n_ops", MLPY_FN(mod_trace_n_ops), METH_O,
     MLPY_SIG("trace_n_ops", "trace, /") "The number of recorded ops."},
    {NULL},
};
