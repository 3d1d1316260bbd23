/* tasks.c — a batch of sinusoid regression tasks (metalearn.tasks.Sinusoid) in one call.
 *
 * MAML's sinusoid tasks (Finn, Abbeel & Levine 2017, §5.1): y = amplitude * sin(x - phase).
 * The draws come from the caller's numpy Generator through its bit generator's C interface
 * (numpy/random/bitgen.h), in the order and with the formula of Generator.uniform
 * (lower + (upper - lower) * next_double): b amplitudes, b phases, then b rows of
 * k + q inputs. So the tasks are the numpy sampler's, and the Generator is left where
 * three uniform() calls would leave it. In NumPy the batch took three uniform() calls,
 * a sine and four copies; here it is one pass. The sine is the kernel ml_sinusoid
 * (kernels/sinusoid.c: the same bits on every x86-64 build).
 */
#include "binding.h"

/* No fused multiply-adds in this file, whatever METALEARN_CFLAGS enables (-march=native
 * turns on FMA, and GCC then contracts lo + r * u, which Generator.uniform rounds twice) */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <numpy/random/bitgen.h>

static PyObject *new_f32(int nd, npy_intp d0, npy_intp d1, npy_intp d2) {
    npy_intp dims[3] = {d0, d1, d2};
    return PyArray_SimpleNew(nd, dims, NPY_FLOAT32);
}

/* sinusoid_batch(bit_generator, b, k, q, amp_lo, amp_hi, ph_lo, ph_hi, x_lo, x_hi) ->
 * (support_x, support_y, query_x, query_y, amplitude, phase). The bit generator object
 * itself, not its capsule: the argument keeps the state the capsule points to alive. */
static PyObject *tasks_sinusoid_batch(PyObject *self, PyObject *args) {
    PyObject *bit_generator;
    Py_ssize_t b, k, q;
    double a_lo, a_hi, p_lo, p_hi, x_lo, x_hi;
    if (!PyArg_ParseTuple(args, "Onnndddddd:sinusoid_batch", &bit_generator, &b, &k, &q, &a_lo,
                          &a_hi, &p_lo, &p_hi, &x_lo, &x_hi))
        return NULL;
    const Py_ssize_t big = (Py_ssize_t)1 << 40;
    if (b < 1 || k < 1 || q < 0 || b > big || k > big || q > big || k + q > big / b) {
        PyErr_Format(PyExc_ValueError,
                     "sinusoid_batch: need b >= 1, k >= 1, q >= 0 (and a "
                     "batch that fits in memory), got b=%zd, k=%zd, q=%zd",
                     b, k, q);
        return NULL;
    }
    PyObject *capsule = PyObject_GetAttrString(bit_generator, "capsule");
    if (!capsule) return NULL;
    bitgen_t *bg = PyCapsule_GetPointer(capsule, "BitGenerator");
    Py_DECREF(capsule); /* (the bit generator owns the capsule and the state) */
    if (!bg) return NULL;
    const double a_r = a_hi - a_lo, p_r = p_hi - p_lo, x_r = x_hi - x_lo;
    if (!isfinite(a_r) || !isfinite(p_r) || !isfinite(x_r) || !isfinite(a_lo) || !isfinite(p_lo) ||
        !isfinite(x_lo)) {
        char msg[200]; /* (PyErr_Format has no %g) */
        snprintf(msg, sizeof msg,
                 "sinusoid_batch: a range is not finite: amplitude (%g, %g), "
                 "phase (%g, %g), x (%g, %g)",
                 a_lo, a_hi, p_lo, p_hi, x_lo, x_hi);
        PyErr_SetString(PyExc_OverflowError, msg);
        return NULL;
    }
    PyObject *out[6] = {new_f32(3, b, k, 1), new_f32(3, b, k, 1), new_f32(3, b, q, 1),
                        new_f32(3, b, q, 1), new_f32(1, b, 0, 0), new_f32(1, b, 0, 0)};
    for (int i = 0; i < 6; i++)
        if (!out[i]) {
            for (int j = 0; j < 6; j++) Py_XDECREF(out[j]);
            return NULL;
        }
    float *d[6];
    for (int i = 0; i < 6; i++) d[i] = PyArray_DATA((PyArrayObject *)out[i]);
    float *amp = d[4], *ph = d[5];
    for (Py_ssize_t t = 0; t < b; t++) amp[t] = (float)(a_lo + a_r * bg->next_double(bg->state));
    for (Py_ssize_t t = 0; t < b; t++) ph[t] = (float)(p_lo + p_r * bg->next_double(bg->state));
    /* the draws first (calls through a pointer), then the sines in a loop of their own,
     * whose iterations overlap (interleaved, each sine waited on its draw) */
    for (Py_ssize_t t = 0; t < b; t++) {
        float *xs = d[0] + t * k, *xq = d[2] + t * q;
        for (Py_ssize_t i = 0; i < k; i++) xs[i] = (float)(x_lo + x_r * bg->next_double(bg->state));
        for (Py_ssize_t i = 0; i < q; i++) xq[i] = (float)(x_lo + x_r * bg->next_double(bg->state));
    }
    for (int set = 0; set < 2; set++) {
        const Py_ssize_t m = set ? q : k;
        for (Py_ssize_t t = 0; t < b; t++)
            ml_sinusoid(d[2 * set] + t * m, ph[t], amp[t], d[2 * set + 1] + t * m, m);
    }
    return Py_BuildValue("(NNNNNN)", out[0], out[1], out[2], out[3], out[4], out[5]);
}

/* _kernel_variants() -> {site: "avx2" or "portable"}: each run-time dispatch site of the
 * core and the variant it runs (kernels/cpu.h). Private: for the tests of ML_KERNEL. (Here
 * beside the binding's one direct kernel call rather than in a file of its own.) */
static PyObject *tasks_kernel_variants(PyObject *self, PyObject *unused) {
    const char *names[64], *variants[64];
    const int n = ml_kernel_variants(names, variants, 64);
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < n && i < 64; i++) {
        PyObject *v = PyUnicode_FromString(variants[i]);
        if (!v || PyDict_SetItemString(d, names[i], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(v);
    }
    return d;
}

PyMethodDef mlpy_tasks_methods[] = {
    {"_kernel_variants", tasks_kernel_variants, METH_NOARGS,
     MLPY_SIG(
         "_kernel_variants",
         "/") "{site: 'avx2' or 'portable'}: every run-time kernel dispatch of the C core and the "
              "variant it runs (ML_KERNEL=portable makes them all 'portable'). For tests."},
    {"sinusoid_batch", tasks_sinusoid_batch, METH_VARARGS,
     MLPY_SIG("sinusoid_batch", "bit_generator, b, k, q, amp_lo, amp_hi, phase_lo, phase_hi, "
                                "x_lo, x_hi, /") "b sinusoid tasks y = amplitude * sin(x - phase), "
                                                 "drawn as Generator.uniform would "
                                                 "(amplitudes, phases, then b rows of k + q "
                                                 "inputs). Returns float32 arrays "
                                                 "(support_x, support_y (b, k, 1), query_x, "
                                                 "query_y (b, q, 1), amplitude, phase (b,)). "
                                                 "The caller holds the bit generator's lock."},
    {NULL},
};
