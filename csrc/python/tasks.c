/* tasks.c — a batch of sinusoid regression tasks (metalearn.tasks.Sinusoid) in one call.
 *
 * MAML's sinusoid tasks (Finn, Abbeel & Levine 2017, §5.1): y = amplitude * sin(x - phase).
 * The draws come from the caller's numpy Generator through its bit generator's C interface
 * (numpy/random/bitgen.h), in the order and with the formula of Generator.uniform
 * (lower + (upper - lower) * next_double): b amplitudes, b phases, then b rows of
 * k + q inputs. So the tasks are the numpy sampler's, and the Generator is left where
 * three uniform() calls would leave it. In NumPy the batch took three uniform() calls,
 * a sine and four copies, 13 us for 25 tasks of 20 points (about 7 % of a MAML sinusoid
 * meta-step); here it is one pass.
 *
 * The sine is computed in double precision and rounded to float32 once (y is within
 * half an ulp of the float32 formula's exact sine, where NumPy's float32 sine may be an
 * ulp off): argument reduction by pi/2 in three parts (Cody & Waite), then the kernel
 * polynomials of fdlibm's __kernel_sin / __kernel_cos (|error| < 2^-58 on [-pi/4, pi/4]).
 * Arguments from 2^19 on (and inf, NaN) go to the C library's sin. Nothing here fuses
 * multiply-adds (the pragma below; the AVX2 clone of the loop has no FMA either), so the
 * bits are the same on every x86-64 build.
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

/* sin(v) for |v| < 2^19 (the caller sends the others to the C library). Branch-free, so
 * that a loop over it vectorises. */
static inline double sin_f64(double v) {
    /* pi/2 = P1 + P2 + P3, P1 and P2 with 33 significant bits: q * P1 and q * P2 are
     * exact for |q| < 2^20 (fdlibm's pio2_1, pio2_2, pio2_3) */
    static const double P1 = 1.57079632673412561417e+00, P2 = 6.07710050630396597660e-11,
                        P3 = 2.02226624871116645580e-21;
    /* round(v 2/pi): adding 1.5 2^52 leaves the integer in the low bits of the sum */
    const double shifted = v * 6.36619772367581382433e-01 + 0x1.8p52;
    const double q = shifted - 0x1.8p52;
    uint64_t n;
    memcpy(&n, &shifted, sizeof n);
    const double r = ((v - q * P1) - q * P2) - q * P3;
    const double z = r * r, z2 = z * z;
    /* the polynomials in Estrin's form: shorter dependency chains than Horner's */
    const double s = r + r * z * ((-1.66666666666666324348e-01 + z * 8.33333333332248946124e-03) +
                     z2 * ((-1.98412698298579493134e-04 + z * 2.75573137070700676789e-06) +
                     z2 * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)));
    const double c = (1.0 - 0.5 * z) + z2 * ((4.16666666666666019037e-02 +
                     z * -1.38888888888741095749e-03) + z2 * ((2.48015872894767294178e-05 +
                     z * -2.75573143513906633035e-07) + z2 * (2.08757232129817482790e-09 +
                     z * -1.13596475577881948265e-11)));
    /* quadrant n mod 4: sin, cos, -sin, -cos; picked with bit masks, not branches (a
     * branch on the quadrant is mispredicted half the time: 31 cycles a point) */
    uint64_t sb, cb;
    memcpy(&sb, &s, sizeof sb);
    memcpy(&cb, &c, sizeof cb);
    const uint64_t odd = (uint64_t)0 - (n & 1);
    const uint64_t yb = ((sb & ~odd) | (cb & odd)) ^ ((n & 2) << 62);
    double y;
    memcpy(&y, &yb, sizeof y);
    return y;
}

/* y[i] = amp * sin(x[i] - ph), the float32 formula: (x - phase) rounded to float32, its
 * sine, times the float32 amplitude. Cloned for AVX2 (no FMA: the same operations as the
 * baseline build, so the same bits), where the loop runs four doubles at a time. */
__attribute__((target_clones("avx2", "default"))) static void
sines(const float *restrict x, float ph, float amp, float *restrict y, Py_ssize_t m) {
    int large = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        const float v = x[i] - ph;
        large |= !(fabsf(v) < 524288.0f);
        y[i] = amp * (float)sin_f64((double)v);
    }
    if (large) /* large, inf or NaN: the C library's sin */
        for (Py_ssize_t i = 0; i < m; i++) {
            const float v = x[i] - ph;
            if (!(fabsf(v) < 524288.0f)) y[i] = amp * (float)sin((double)v);
        }
}

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
        PyErr_Format(PyExc_ValueError, "sinusoid_batch: need b >= 1, k >= 1, q >= 0 (and a "
                     "batch that fits in memory), got b=%zd, k=%zd, q=%zd", b, k, q);
        return NULL;
    }
    PyObject *capsule = PyObject_GetAttrString(bit_generator, "capsule");
    if (!capsule) return NULL;
    bitgen_t *bg = PyCapsule_GetPointer(capsule, "BitGenerator");
    Py_DECREF(capsule); /* (the bit generator owns the capsule and the state) */
    if (!bg) return NULL;
    const double a_r = a_hi - a_lo, p_r = p_hi - p_lo, x_r = x_hi - x_lo;
    if (!isfinite(a_r) || !isfinite(p_r) || !isfinite(x_r) || !isfinite(a_lo) ||
        !isfinite(p_lo) || !isfinite(x_lo)) {
        char msg[200]; /* (PyErr_Format has no %g) */
        snprintf(msg, sizeof msg, "sinusoid_batch: a range is not finite: amplitude (%g, %g), "
                 "phase (%g, %g), x (%g, %g)", a_lo, a_hi, p_lo, p_hi, x_lo, x_hi);
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
     * whose iterations overlap (for 25 tasks: 12.9 us interleaved, 9.6 us apart, with the
     * branchy quadrant select of the time) */
    for (Py_ssize_t t = 0; t < b; t++) {
        float *xs = d[0] + t * k, *xq = d[2] + t * q;
        for (Py_ssize_t i = 0; i < k; i++) xs[i] = (float)(x_lo + x_r * bg->next_double(bg->state));
        for (Py_ssize_t i = 0; i < q; i++) xq[i] = (float)(x_lo + x_r * bg->next_double(bg->state));
    }
    for (int set = 0; set < 2; set++) {
        const Py_ssize_t m = set ? q : k;
        for (Py_ssize_t t = 0; t < b; t++)
            sines(d[2 * set] + t * m, ph[t], amp[t], d[2 * set + 1] + t * m, m);
    }
    return Py_BuildValue("(NNNNNN)", out[0], out[1], out[2], out[3], out[4], out[5]);
}

PyMethodDef mlpy_tasks_methods[] = {
    {"sinusoid_batch", tasks_sinusoid_batch, METH_VARARGS,
     MLPY_SIG("sinusoid_batch", "bit_generator, b, k, q, amp_lo, amp_hi, phase_lo, phase_hi, "
                                "x_lo, x_hi, /")
     "b sinusoid tasks y = amplitude * sin(x - phase), drawn as Generator.uniform would "
     "(amplitudes, phases, then b rows of k + q inputs). Returns float32 arrays "
     "(support_x, support_y (b, k, 1), query_x, query_y (b, q, 1), amplitude, phase (b,)). "
     "The caller holds the bit generator's lock."},
    {NULL},
};
