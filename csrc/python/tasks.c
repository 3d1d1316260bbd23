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

/* episode_images(x, rows, bit_generator, pad, flip, brightness, contrast, saturation, mean,
 * std) -> float32 (m, h, w, c): the uint8 images x[rows] of an episode (x (n, h, w, c),
 * C-contiguous, memory-mapped from the dataset cache: only these rows are read), as float32
 * in [0, 1], optionally augmented, then normalised ((v - mean[ch]) / std[ch]).
 *
 * The augmentation of the MetaOptNet / ProtoNet reproductions (torchvision's RandomCrop
 * with padding, RandomHorizontalFlip, ColorJitter), in a fixed order: crop of the image
 * zero-padded by `pad` on each side (offsets uniform in 0..2*pad), horizontal flip with
 * probability 1/2, then brightness (v * f), contrast (blend with the mean of the image's
 * luma: v * f + mean_luma * (1 - f)) and saturation (blend with each pixel's luma), each
 * factor uniform in [1 - s, 1 + s] and each result clamped to [0, 1]; luma is ITU-R 601
 * (0.299 R + 0.587 G + 0.114 B), as PIL's convert("L"). Per image the draws come from the
 * bit generator in this order: dy, dx (when pad > 0), flip (when flip), then the three
 * factors (each when its strength > 0), each one next_double. Unlike torchvision, values
 * are not rounded to 8 bits between steps, and the jitter order is fixed rather than
 * shuffled. bit_generator None: no augmentation (pad, flip and strengths must be 0). */
static double draw(bitgen_t *bg) { return bg->next_double(bg->state); }

static float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

static PyObject *tasks_episode_images(PyObject *self, PyObject *args) {
    PyObject *xo, *rowso, *bit_generator, *meano, *stdo;
    Py_ssize_t pad;
    int flip;
    double bright, contrast, sat;
    if (!PyArg_ParseTuple(args, "OOOnpdddOO:episode_images", &xo, &rowso, &bit_generator, &pad,
                          &flip, &bright, &contrast, &sat, &meano, &stdo))
        return NULL;
    if (!PyArray_Check(xo) || PyArray_TYPE((PyArrayObject *)xo) != NPY_UINT8 ||
        PyArray_NDIM((PyArrayObject *)xo) != 4 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)xo)) {
        PyErr_SetString(PyExc_ValueError,
                        "episode_images: x must be a C-contiguous uint8 array (n, h, w, c)");
        return NULL;
    }
    PyArrayObject *x = (PyArrayObject *)xo;
    const npy_intp n = PyArray_DIM(x, 0), h = PyArray_DIM(x, 1), w = PyArray_DIM(x, 2),
                   c = PyArray_DIM(x, 3);
    PyArrayObject *rows = (PyArrayObject *)PyArray_FROMANY(rowso, NPY_INT64, 1, 1,
                                                           NPY_ARRAY_CARRAY_RO);
    if (!rows) return NULL;
    const npy_intp m = PyArray_DIM(rows, 0);
    const int64_t *r = PyArray_DATA(rows);
    for (npy_intp i = 0; i < m; i++)
        if (r[i] < 0 || r[i] >= n) {
            PyErr_Format(PyExc_IndexError, "episode_images: row %lld is outside 0..%lld",
                         (long long)r[i], (long long)n - 1);
            Py_DECREF(rows);
            return NULL;
        }
    const int augment = bit_generator != Py_None;
    const char *bad = NULL;
    if (pad < 0 || pad > h || pad > w)
        bad = "pad must be in 0..min(height, width)";
    else if (!(bright >= 0 && bright <= 1 && contrast >= 0 && contrast <= 1 && sat >= 0 &&
               sat <= 1))
        bad = "brightness, contrast and saturation must be in [0, 1]";
    else if ((contrast > 0 || sat > 0) && c != 3 && c != 1)
        bad = "colour jitter needs 1 or 3 channels";
    else if (sat > 0 && c != 3)
        bad = "saturation needs 3 channels (RGB)";
    else if (!augment && (pad || flip || bright > 0 || contrast > 0 || sat > 0))
        bad = "augmentation needs a bit generator";
    if (bad) {
        PyErr_Format(PyExc_ValueError, "episode_images: %s", bad);
        Py_DECREF(rows);
        return NULL;
    }
    float mean[4] = {0, 0, 0, 0}, inv_std[4] = {1, 1, 1, 1};
    for (int k = 0; k < 2; k++) {
        PyObject *o = k ? stdo : meano;
        if (o == Py_None) continue;
        PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(o, NPY_FLOAT64, 1, 1,
                                                            NPY_ARRAY_CARRAY_RO);
        if (!a) {
            Py_DECREF(rows);
            return NULL;
        }
        const double *v = PyArray_DATA(a);
        if (PyArray_DIM(a, 0) != c || c > 4) {
            PyErr_Format(PyExc_ValueError, "episode_images: %s needs one value per channel (%lld)",
                         k ? "std" : "mean", (long long)c);
            Py_DECREF(a);
            Py_DECREF(rows);
            return NULL;
        }
        for (npy_intp ch = 0; ch < c; ch++) {
            if (k && !(v[ch] > 0 && isfinite(v[ch]))) {
                PyErr_SetString(PyExc_ValueError, "episode_images: std must be finite and > 0");
                Py_DECREF(a);
                Py_DECREF(rows);
                return NULL;
            }
            if (k)
                inv_std[ch] = (float)(1.0 / v[ch]);
            else
                mean[ch] = (float)v[ch];
        }
        Py_DECREF(a);
    }
    bitgen_t *bg = NULL;
    if (augment) {
        PyObject *capsule = PyObject_GetAttrString(bit_generator, "capsule");
        if (!capsule) {
            Py_DECREF(rows);
            return NULL;
        }
        bg = PyCapsule_GetPointer(capsule, "BitGenerator");
        Py_DECREF(capsule);
        if (!bg) {
            Py_DECREF(rows);
            return NULL;
        }
    }
    npy_intp dims[4] = {m, h, w, c};
    PyObject *out = PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!out) {
        Py_DECREF(rows);
        return NULL;
    }
    float *o = PyArray_DATA((PyArrayObject *)out);
    const uint8_t *src = PyArray_DATA(x);
    const npy_intp plane = h * w * c;
    const float to01 = 1.0f / 255.0f;
    for (npy_intp i = 0; i < m; i++) {
        const uint8_t *img = src + r[i] * plane;
        float *dst = o + i * plane;
        npy_intp dy = 0, dx = 0;
        int mirror = 0;
        float fb = 1, fc = 1, fs = 1;
        if (augment) {
            if (pad) {
                dy = (npy_intp)(draw(bg) * (double)(2 * pad + 1));
                dx = (npy_intp)(draw(bg) * (double)(2 * pad + 1));
            }
            if (flip) mirror = draw(bg) < 0.5;
            if (bright > 0) fb = (float)(1 - bright + 2 * bright * draw(bg));
            if (contrast > 0) fc = (float)(1 - contrast + 2 * contrast * draw(bg));
            if (sat > 0) fs = (float)(1 - sat + 2 * sat * draw(bg));
        }
        /* crop of the zero-padded image at (dy, dx), then the flip */
        for (npy_intp y = 0; y < h; y++) {
            const npy_intp sy = y + dy - pad;
            for (npy_intp xx = 0; xx < w; xx++) {
                const npy_intp sx = (mirror ? w - 1 - xx : xx) + dx - pad;
                float *px = dst + (y * w + xx) * c;
                if (sy < 0 || sy >= h || sx < 0 || sx >= w)
                    for (npy_intp ch = 0; ch < c; ch++) px[ch] = 0.0f;
                else
                    for (npy_intp ch = 0; ch < c; ch++)
                        px[ch] = (float)img[(sy * w + sx) * c + ch] * to01;
            }
        }
        const npy_intp pixels = h * w;
        if (fb != 1)
            for (npy_intp k = 0; k < plane; k++) dst[k] = clamp01(dst[k] * fb);
        if (fc != 1) {
            double total = 0; /* the mean of the luma, in double: the same for any order */
            for (npy_intp p = 0; p < pixels; p++)
                total += c == 3
                             ? 0.299 * dst[3 * p] + 0.587 * dst[3 * p + 1] + 0.114 * dst[3 * p + 2]
                             : dst[p];
            const float mu = (float)(total / (double)pixels) * (1 - fc);
            for (npy_intp k = 0; k < plane; k++) dst[k] = clamp01(dst[k] * fc + mu);
        }
        if (fs != 1)
            for (npy_intp p = 0; p < pixels; p++) {
                float *px = dst + 3 * p;
                const float g = (0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2]) * (1 - fs);
                for (int ch = 0; ch < 3; ch++) px[ch] = clamp01(px[ch] * fs + g);
            }
        if (meano != Py_None || stdo != Py_None)
            for (npy_intp p = 0; p < pixels; p++)
                for (npy_intp ch = 0; ch < c; ch++)
                    dst[p * c + ch] = (dst[p * c + ch] - mean[ch]) * inv_std[ch];
    }
    Py_DECREF(rows);
    return out;
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
    {"episode_images", tasks_episode_images, METH_VARARGS,
     MLPY_SIG("episode_images",
              "x, rows, bit_generator, pad, flip, brightness, contrast, saturation, mean, std, "
              "/") "float32 images x[rows] / 255 of a uint8 (n, h, w, c) array, augmented "
                   "(random crop of the zero-padded image, horizontal flip, brightness, "
                   "contrast, saturation; draws from bit_generator, None for none) and "
                   "normalised per channel. The caller holds the bit generator's lock."},
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
