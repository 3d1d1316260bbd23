/* runtime.c — what the core runs with: the kernel chosen at run time and the thread count
 * (one for the whole core: large ops and task-parallel replays). */
#include "binding.h"

static PyObject *mod_kernel_name(PyObject *m, PyObject *unused) {
    return PyUnicode_FromString(ml_kernel_name());
}

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
    return PyLong_FromLong(ml_get_num_threads());
}

static PyObject *mod_storage_stats(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"reset_peak", NULL};
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:_storage_stats", kwlist, &reset)) return NULL;
    int64_t st[3];
    ml_storage_stats(st, reset);
    return Py_BuildValue("{sLsLsLsL}", "live", (long long)st[0], "peak", (long long)st[1], "pooled",
                         (long long)st[2], "recomputed", (long long)ml_recompute_count());
}

/* A refused METALEARN_NUM_THREADS: a Python warning (filterable by module "metalearn"),
 * not the core's line on stderr; named after the module, as no Python frame runs it. */
int mlpy_runtime_init(PyObject *module) {
    char why[200];
    if (ml_num_threads_env_warning(why, sizeof why) &&
        PyErr_WarnExplicit(PyExc_RuntimeWarning, why, "metalearn._core", 0, "metalearn._core",
                           NULL))
        return -1;
    return 0;
}


PyMethodDef mlpy_runtime_methods[] = {
    {"kernel_name", MLPY_FN(mod_kernel_name), METH_NOARGS,
     MLPY_SIG("kernel_name", "/") "'avx2' or 'portable': the GEMM kernel chosen at run time."},
    {"set_num_threads", MLPY_FN(mod_set_num_threads), METH_O,
     MLPY_SIG("set_num_threads", "n, /") "Threads for large ops and task-parallel replays "
                                         "(default: METALEARN_NUM_THREADS, else "
                                         "the online CPUs). Results do not depend on it."},
    {"get_num_threads", MLPY_FN(mod_get_num_threads), METH_NOARGS,
     MLPY_SIG("get_num_threads", "/") "Threads for large ops and task-parallel replays."},
    {"_storage_stats", MLPY_FN(mod_storage_stats), MLPY_KW,
     MLPY_SIG("_storage_stats", "reset_peak=False") "{'live', 'peak', 'pooled', 'recomputed'}: "
                                                    "bytes of tensor storage in use now, the most "
                                                    "in use at once (since the last "
                                                    "reset_peak=True), and kept by the buffer "
                                                    "pools for reuse; tensors a gradient has "
                                                    "recomputed since the start. For tests and "
                                                    "benchmarks."},
    {NULL},
};
