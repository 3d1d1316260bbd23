/* vmath.c — vectorised float32 transcendental kernels for the one-input element-wise ops:
 * exp, log, tanh, sigmoid, erf, gelu over arrays.
 *
 * AVX2+FMA versions (chosen at run time by kernels/cpu.c; ML_KERNEL=portable forces the C
 * loops) use Cephes-style range reduction and polynomials (S. L. Moshier, Cephes Math
 * Library: expf, logf, tanhf) and, for erf, the rational approximation on [-4, 4] used by
 * Eigen / XLA. Accuracy against libm over dense sweeps is checked by tests/test_vmath.c
 * (exp, log, tanh, sigmoid within 3 ulp; erf within 3e-7 absolute, ~5 ulp near |erf| = 1).
 * A vector of 8 holding any lane outside the polynomial's range (overflow, underflow into
 * denormals, NaN, log of x <= 0, ...) is computed lane by lane with libm, so special values
 * behave exactly as the C library's.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "vmath.h"
#include "cpu.h"

#if ML_HAVE_AVX2
#include <immintrin.h>
#endif

/* ------------------------------------------------------------ scalar forms */

static inline float s_sigmoid(float v) {
    if (v >= 0) return 1.0f / (1.0f + expf(-v));
    float e = expf(v);
    return e / (1.0f + e);
}
static inline float s_gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

static void p_exp(int64_t n, const float *x, float *o) {
    for (int64_t i = 0; i < n; i++) o[i] = expf(x[i]);
}
static void p_log(int64_t n, const float *x, float *o) {
    for (int64_t i = 0; i < n; i++) o[i] = logf(x[i]);
}
static void p_tanh(int64_t n, const float *x, float *o) {
    for (int64_t i = 0; i < n; i++) o[i] = tanhf(x[i]);
}
static void p_sigmoid(int64_t n, const float *x, float *o) {
    for (int64_t i = 0; i < n; i++) o[i] = s_sigmoid(x[i]);
}
static void p_erf(int64_t n, const float *x, float *o) {
    for (int64_t i = 0; i < n; i++) o[i] = erff(x[i]);
}
static void p_gelu(int64_t n, const float *x, float *o) {
    for (int64_t i = 0; i < n; i++) o[i] = s_gelu(x[i]);
}

static void p_adam(int64_t n, float *restrict p, const float *restrict g, float *restrict m,
                   float *restrict v, float *restrict vhat, float lr_t, float b1, float b2,
                   float eps) {
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    for (int64_t j = 0; j < n; j++) {
        m[j] += (g[j] - m[j]) * c1;
        v[j] += (g[j] * g[j] - v[j]) * c2;
        float vv = v[j];
        if (vhat) { /* AMSGrad (Reddi et al. 2018): the max of all past v */
            vhat[j] = vhat[j] > vv ? vhat[j] : vv;
            vv = vhat[j];
        }
        p[j] -= lr_t * m[j] / (sqrtf(vv) + eps);
    }
}

#if ML_HAVE_AVX2
/* ------------------------------------------------------------ AVX2 cores */

#define SET1 _mm256_set1_ps

/* exp(x) for x in [EXP_LO, EXP_HI] (normal results). Cephes expf: x = n ln2 + r,
 * |r| <= ln2/2, exp(r) = 1 + r + r^2 P(r), times 2^n built in the exponent field. */
#define EXP_HI 88.37626f
#define EXP_LO -87.33654f
ML_TARGET_AVX2 static inline __m256 exp_core(__m256 x) {
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, SET1(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, SET1(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, SET1(-2.12194440e-4f), r);
    __m256 p = SET1(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, SET1(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, SET1(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, SET1(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, SET1(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, SET1(5.0000001201E-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), SET1(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* lanes where !(lo <= x <= hi) (NaN included) */
ML_TARGET_AVX2 static inline int outside(__m256 x, float lo, float hi) {
    __m256 ok = _mm256_and_ps(_mm256_cmp_ps(x, SET1(lo), _CMP_GE_OQ),
                              _mm256_cmp_ps(x, SET1(hi), _CMP_LE_OQ));
    return _mm256_movemask_ps(ok) != 0xff;
}

/* log(x) for normal positive finite x. Cephes logf: x = m 2^e, m in [sqrt(1/2), sqrt(2)),
 * log(1 + f) = f - f^2/2 + f^3 P(f). */
ML_TARGET_AVX2 static inline __m256 log_core(__m256 x) {
    __m256i xi = _mm256_castps_si256(x);
    __m256i ei = _mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(126));
    /* mantissa in [0.5, 1) */
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(xi,
                                                                    _mm256_set1_epi32(0x007fffff)),
                                                   _mm256_set1_epi32(0x3f000000)));
    __m256 e = _mm256_cvtepi32_ps(ei);
    __m256 small = _mm256_cmp_ps(m, SET1(0.707106781186547524f), _CMP_LT_OQ);
    /* m < sqrt(1/2): use 2m - 1 and e - 1; else m - 1 */
    e = _mm256_sub_ps(e, _mm256_and_ps(small, SET1(1.0f)));
    __m256 f = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), SET1(1.0f));
    __m256 z = _mm256_mul_ps(f, f);
    __m256 p = SET1(7.0376836292E-2f);
    p = _mm256_fmadd_ps(p, f, SET1(-1.1514610310E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(1.1676998740E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(-1.2420140846E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(1.4249322787E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(-1.6668057665E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(2.0000714765E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(-2.4999993993E-1f));
    p = _mm256_fmadd_ps(p, f, SET1(3.3333331174E-1f));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f), z);
    y = _mm256_fmadd_ps(e, SET1(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(z, SET1(0.5f), y);
    return _mm256_fmadd_ps(e, SET1(0.693359375f), _mm256_add_ps(f, y));
}

/* tanh: |x| < 0.625: Cephes' odd polynomial; else sign(x) (1 - 2 / (exp(2|x|) + 1)),
 * |x| clamped to 9 (tanh(9) rounds to 1). */
ML_TARGET_AVX2 static inline __m256 tanh_core(__m256 x) {
    const __m256 sign = SET1(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = SET1(-5.70498872745E-3f);
    p = _mm256_fmadd_ps(p, z, SET1(2.06390887954E-2f));
    p = _mm256_fmadd_ps(p, z, SET1(-5.37397155531E-2f));
    p = _mm256_fmadd_ps(p, z, SET1(1.33314422036E-1f));
    p = _mm256_fmadd_ps(p, z, SET1(-3.33332819422E-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    __m256 e = exp_core(_mm256_mul_ps(_mm256_min_ps(ax, SET1(9.0f)), SET1(2.0f)));
    __m256 big = _mm256_sub_ps(SET1(1.0f), _mm256_div_ps(SET1(2.0f), _mm256_add_ps(e, SET1(1.0f))));
    big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    return _mm256_blendv_ps(small, big, _mm256_cmp_ps(ax, SET1(0.625f), _CMP_GE_OQ));
}

/* sigmoid as the scalar form: e = exp(-|x|), r = 1 / (1 + e), x >= 0 ? r : e r. */
ML_TARGET_AVX2 static inline __m256 sigmoid_core(__m256 x) {
    __m256 nax = _mm256_or_ps(x, SET1(-0.0f));
    __m256 e = exp_core(nax);
    __m256 r = _mm256_div_ps(SET1(1.0f), _mm256_add_ps(SET1(1.0f), e));
    return _mm256_blendv_ps(r, _mm256_mul_ps(e, r), _mm256_cmp_ps(x, SET1(0.0f), _CMP_LT_OQ));
}

/* erf on [-4, 4] (clamped: |erf| rounds to 1 beyond): x P(x^2) / Q(x^2) (Eigen, XLA). */
ML_TARGET_AVX2 static inline __m256 erf_core(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, SET1(-4.0f)), SET1(4.0f));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = SET1(-2.72614225801306e-10f);
    p = _mm256_fmadd_ps(p, z, SET1(2.77068142495902e-08f));
    p = _mm256_fmadd_ps(p, z, SET1(-2.10102402082508e-06f));
    p = _mm256_fmadd_ps(p, z, SET1(-5.69250639462346e-05f));
    p = _mm256_fmadd_ps(p, z, SET1(-7.34990630326855e-04f));
    p = _mm256_fmadd_ps(p, z, SET1(-2.95459980854025e-03f));
    p = _mm256_fmadd_ps(p, z, SET1(-1.60960333262415e-02f));
    __m256 q = SET1(-1.45660718464996e-05f);
    q = _mm256_fmadd_ps(q, z, SET1(-2.13374055278905e-04f));
    q = _mm256_fmadd_ps(q, z, SET1(-1.68282697438203e-03f));
    q = _mm256_fmadd_ps(q, z, SET1(-7.37332916720468e-03f));
    q = _mm256_fmadd_ps(q, z, SET1(-1.42647390514189e-02f));
    __m256 r = _mm256_mul_ps(x, _mm256_div_ps(p, q)); /* x (p/q): no underflow for tiny x */
    return _mm256_min_ps(_mm256_max_ps(r, SET1(-1.0f)), SET1(1.0f));
}

ML_TARGET_AVX2 static inline __m256 gelu_core(__m256 x) {
    __m256 t = erf_core(_mm256_mul_ps(x, SET1(0.70710678118654752f)));
    return _mm256_mul_ps(_mm256_mul_ps(SET1(0.5f), x), _mm256_add_ps(SET1(1.0f), t));
}

/* One driver per function: full vectors through CORE when every lane is in [LO, HI],
 * else (and for the tail) the scalar form. */
#define ML_VLOOP(NAME, CORE, SCALAR, LO, HI)                                                  \
    ML_TARGET_AVX2 static void NAME(int64_t n, const float *x, float *o) {                   \
        int64_t i = 0;                                                                        \
        for (; i + 8 <= n; i += 8) {                                                          \
            __m256 v = _mm256_loadu_ps(x + i);                                                \
            if (outside(v, LO, HI)) {                                                         \
                for (int j = 0; j < 8; j++) o[i + j] = SCALAR(x[i + j]);                      \
                continue;                                                                     \
            }                                                                                 \
            _mm256_storeu_ps(o + i, CORE(v));                                                 \
        }                                                                                     \
        for (; i < n; i++) o[i] = SCALAR(x[i]);                                               \
    }

ML_VLOOP(a_exp, exp_core, expf, EXP_LO, EXP_HI)
ML_VLOOP(a_log, log_core, logf, 1.17549435e-38f, 3.40282347e+38f)
ML_VLOOP(a_tanh, tanh_core, tanhf, -INFINITY, INFINITY)
ML_VLOOP(a_sigmoid, sigmoid_core, s_sigmoid, -87.0f, 87.0f)
ML_VLOOP(a_erf, erf_core, erff, -INFINITY, INFINITY)
ML_VLOOP(a_gelu, gelu_core, s_gelu, -1e30f, 1e30f)
#endif

#if ML_HAVE_AVX2
/* 8 lanes of exact vsqrtps/vdivps, where the SSE loop GCC makes of p_adam runs 4
 * (run_all.py dense b32 / b256: Adam over the 784-128-10 network's 101k parameters is a
 * large part of its step). Software prefetching on the four streams is no better than the
 * hardware prefetcher. */
ML_TARGET_AVX2 static void a_adam(int64_t n, float *restrict p, const float *restrict g,
                                  float *restrict m, float *restrict v, float *restrict vhat,
                                  float lr_t, float b1, float b2, float eps) {
    const __m256 c1 = SET1(1.0f - b1), c2 = SET1(1.0f - b2), lr = SET1(lr_t), ep = SET1(eps);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 gj = _mm256_loadu_ps(g + j);
        __m256 mj = _mm256_loadu_ps(m + j), vj = _mm256_loadu_ps(v + j);
        mj = _mm256_fmadd_ps(_mm256_sub_ps(gj, mj), c1, mj);
        vj = _mm256_fmadd_ps(_mm256_fmsub_ps(gj, gj, vj), c2, vj);
        _mm256_storeu_ps(m + j, mj);
        _mm256_storeu_ps(v + j, vj);
        if (vhat) {
            vj = _mm256_max_ps(_mm256_loadu_ps(vhat + j), vj);
            _mm256_storeu_ps(vhat + j, vj);
        }
        __m256 step = _mm256_div_ps(_mm256_mul_ps(lr, mj), _mm256_add_ps(_mm256_sqrt_ps(vj), ep));
        _mm256_storeu_ps(p + j, _mm256_sub_ps(_mm256_loadu_ps(p + j), step));
    }
    if (j < n) p_adam(n - j, p + j, g + j, m + j, v + j, vhat ? vhat + j : NULL, lr_t, b1, b2, eps);
}
#endif

/* --------------------------------------------------------------- dispatch */

/* the vector math follows the one instruction-set choice */
ML_KERNEL_SITE(vmath, "vmath", ML_HAVE_AVX2)

#if ML_HAVE_AVX2
#define ML_DISPATCH(NAME, A, P)                                                               \
    void NAME(int64_t n, const float *x, float *o) { (ml__cpu_avx2() ? A : P)(n, x, o); }
#else
#define ML_DISPATCH(NAME, A, P)                                                               \
    void NAME(int64_t n, const float *x, float *o) { P(n, x, o); }
#endif
ML_DISPATCH(ml__vexp, a_exp, p_exp)
ML_DISPATCH(ml__vlog, a_log, p_log)
ML_DISPATCH(ml__vtanh, a_tanh, p_tanh)
ML_DISPATCH(ml__vsigmoid, a_sigmoid, p_sigmoid)
ML_DISPATCH(ml__verf, a_erf, p_erf)
ML_DISPATCH(ml__vgelu, a_gelu, p_gelu)

void ml__vexp_portable(int64_t n, const float *x, float *o) { p_exp(n, x, o); }
void ml__vlog_portable(int64_t n, const float *x, float *o) { p_log(n, x, o); }
void ml__vtanh_portable(int64_t n, const float *x, float *o) { p_tanh(n, x, o); }
void ml__vsigmoid_portable(int64_t n, const float *x, float *o) { p_sigmoid(n, x, o); }
void ml__verf_portable(int64_t n, const float *x, float *o) { p_erf(n, x, o); }
void ml__vgelu_portable(int64_t n, const float *x, float *o) { p_gelu(n, x, o); }

/* Adam runs with denormals flushed to zero (MXCSR FTZ and DAZ, set for the loop and put
 * back after it, on this thread only), as TensorFlow's CPU kernels run. A unit that stops
 * receiving gradient (a dead ReLU) has its m decay by b1 per step into the denormal range
 * within a few hundred steps, and its step lr m / (sqrt(v) + eps) sooner; the divider
 * takes a microcode assist on every denormal operand or result, which makes the 784-128-10
 * network's Adam twice as slow once enough units have died (benchmarks/dense_step.py
 * --drift: the time per step must not grow over a long run). What a flush drops is
 * tiny: a flushed m is below 1.2e-38, so its step is below lr 1.2e-38 / eps (1.2e-34 for
 * lr = 1e-3 and Keras's eps = 1e-7), which leaves any |p| above ~1e-27 unchanged. Both
 * kernels flush; off x86 (no MXCSR) the loops run IEEE. (Where m - (1 - b1) m is not one
 * fused multiply-add, as in the scalar loop built without FMA, the product flushes first
 * and m stays near 1e-37 instead of reaching 0: no denormal either way.) */
#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#define FTZ_DAZ_BEGIN                                                                         \
    const unsigned int csr_saved = _mm_getcsr();                                              \
    _mm_setcsr(csr_saved | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
/* the caller's modes back; exception flags the loop raised stay raised */
#define FTZ_DAZ_END _mm_setcsr((_mm_getcsr() & ~0x8040u) | (csr_saved & 0x8040u));
#else
#define FTZ_DAZ_BEGIN
#define FTZ_DAZ_END
#endif

void ml__vadam(int64_t n, float *p, const float *g, float *m, float *v, float *vhat, float lr_t,
               float b1, float b2, float eps) {
    FTZ_DAZ_BEGIN
#if ML_HAVE_AVX2
    if (ml__cpu_avx2())
        a_adam(n, p, g, m, v, vhat, lr_t, b1, b2, eps);
    else
#endif
        p_adam(n, p, g, m, v, vhat, lr_t, b1, b2, eps);
    FTZ_DAZ_END
}
void ml__vadam_portable(int64_t n, float *p, const float *g, float *m, float *v, float *vhat,
                        float lr_t, float b1, float b2, float eps) {
    FTZ_DAZ_BEGIN
    p_adam(n, p, g, m, v, vhat, lr_t, b1, b2, eps);
    FTZ_DAZ_END
}
