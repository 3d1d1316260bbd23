/* test_vmath.c — the vectorised transcendentals (kernels/vmath.c) against double-precision
 * references over dense sweeps of float32 bit patterns, and special values against libm. */
#include <math.h>
#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/vmath.h"

static int failures;

static double ulp_of(double v) {
    float f = (float)fabs(v);
    if (f < 1.17549435e-38f) return 1.40129846e-45; /* denormal spacing */
    return (double)(nextafterf(f, INFINITY) - f);
}

typedef void (*vfn)(int64_t, const float *, float *);
static double ref_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }
static double ref_gelu(double v) { return 0.5 * v * (1.0 + erf(v / sqrt(2.0))); }

/* Sweeps floats from lo to hi (both signs handled by the caller's range) with about
 * `count` points; returns the max error in ulps of the reference (and absolute error). */
static void sweep(const char *name, vfn f, double (*ref)(double), float lo, float hi, int64_t count,
                  double max_ulp, double max_abs) {
    float *x = malloc((size_t)count * sizeof(float)), *y = malloc((size_t)count * sizeof(float));
    int64_t n = 0;
    /* uniform in the bit pattern of |x| for each sign: covers every binade */
    for (int s = 0; s < 2; s++) {
        float a = s ? -hi : lo, b = s ? -lo : hi;
        if (s == 0 && lo < 0) a = 0.0f;
        if (s == 1 && lo >= 0) continue;
        if (s == 1) {
            a = 0.0f;
            b = -lo;
        }
        float hi_abs = s ? b : b;
        uint32_t ua, ub;
        memcpy(&ua, &a, 4);
        memcpy(&ub, &hi_abs, 4);
        int64_t m = count / 2;
        for (int64_t i = 0; i < m && n < count; i++) {
            uint32_t u = ua + (uint32_t)((double)(ub - ua) * (double)i / (double)m);
            float v;
            memcpy(&v, &u, 4);
            x[n++] = s ? -v : v;
        }
    }
    f(n, x, y);
    double worst_ulp = 0, worst_abs = 0;
    float at_ulp = 0, at_abs = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = ref((double)x[i]);
        double e = fabs((double)y[i] - r);
        double u = e / ulp_of(r);
        if (u > worst_ulp) {
            worst_ulp = u;
            at_ulp = x[i];
        }
        if (e > worst_abs) {
            worst_abs = e;
            at_abs = x[i];
        }
    }
    int ok = worst_ulp <= max_ulp || worst_abs <= max_abs;
    printf("test_vmath: %-8s %9lld points in [%g, %g]: max %.2f ulp (at %g), max abs %.2e (at %g) "
           "%s\n",
           name, (long long)n, (double)lo, (double)hi, worst_ulp, (double)at_ulp, worst_abs,
           (double)at_abs, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(x);
    free(y);
}

/* Special values: same as libm's (NaN as NaN). */
static void specials(const char *name, vfn f, vfn portable) {
    float xs[] = {0.0f,    -0.0f,           INFINITY, -INFINITY, NAN,   1e-45f, -1e-45f,
                  1e-40f,  1.17549435e-38f, 88.0f,    88.8f,     89.0f, -87.0f, -88.0f,
                  -100.0f, -104.0f,         3.4e38f,  -3.4e38f,  1.0f,  -1.0f,  0.5f,
                  9.0f,    -9.5f,           20.0f,    -20.0f};
    const int n = (int)(sizeof xs / sizeof xs[0]);
    float a[32], b[32];
    f(n, xs, a);
    portable(n, xs, b);
    for (int i = 0; i < n; i++) {
        int same = (isnan(a[i]) && isnan(b[i])) || a[i] == b[i] ||
                   fabsf(a[i] - b[i]) <= 4e-7f * fmaxf(1.0f, fabsf(b[i]));
        if (!same) {
            printf("test_vmath: %s(%g) = %g, libm %g  FAIL\n", name, (double)xs[i], (double)a[i],
                   (double)b[i]);
            failures++;
        }
    }
}

/* ml__vadam (AVX2 when the CPU has it) against Kingma & Ba's update in double, over
 * lengths with and without an 8-wide tail, plain and AMSGrad, several steps. */
static void adam_check(int amsgrad) {
    enum { N = 1003, STEPS = 5 };
    static float p[N], g[N], m[N], v[N], vh[N];
    static double pd[N], md[N], vd[N], vhd[N];
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-7f;
    for (int i = 0; i < N; i++) {
        p[i] = (float)(pd[i] = sin(i * 0.1));
        m[i] = v[i] = vh[i] = 0;
        md[i] = vd[i] = vhd[i] = 0;
    }
    double worst = 0;
    for (int t = 1; t <= STEPS; t++) {
        for (int i = 0; i < N; i++) g[i] = (float)(cos(i * 0.37 + t) * (i % 7 == 0 ? 1e-3 : 1.0));
        float lrt = (float)(1e-2 * sqrt(1 - pow(b2, t)) / (1 - pow(b1, t)));
        ml__vadam(N - (t % 2), p, g, m, v, amsgrad ? vh : NULL, lrt, b1, b2, eps);
        for (int i = 0; i < N - (t % 2); i++) {
            md[i] = b1 * md[i] + (1 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1 - b2) * (double)g[i] * g[i];
            double vv = vd[i];
            if (amsgrad) vv = vhd[i] = vhd[i] > vv ? vhd[i] : vv;
            pd[i] -= lrt * md[i] / (sqrt(vv) + eps);
        }
    }
    for (int i = 0; i < N; i++) {
        double e = fabs(p[i] - pd[i]) / (1e-6 + fabs(pd[i]));
        if (e > worst) worst = e;
    }
    if (!(worst < 1e-5)) {
        printf("test_vmath: adam%s FAIL: worst relative error %.3g\n", amsgrad ? " (amsgrad)" : "",
               worst);
        failures++;
    }
}

/* Adam flushes denormals (see ml__vadam): a decayed m below FLT_MIN becomes 0, a step
 * that would be denormal is 0, the caller's MXCSR is put back. Under IEEE gradual
 * underflow m would stay 0.9e-39 and p = 0 would become about -1e-41. */
typedef void (*adam_fn)(int64_t, float *, const float *, float *, float *, float *, float, float,
                        float, float);
static void adam_denormal_check(const char *name, adam_fn f) {
    enum { N = 19 }; /* two vectors and a tail */
    float p[N], g[N], m[N], v[N];
    for (int i = 0; i < N; i++) {
        g[i] = 0.0f;
        p[i] = (i % 2) ? 0.5f : 0.0f;
        m[i] = (i % 3) ? 1e-39f : 1e-36f; /* denormal, or normal with a denormal step */
        v[i] = (i % 3) ? 1e-30f : 1e4f;
    }
#if defined(__x86_64__) || defined(__SSE__)
    const unsigned int csr = _mm_getcsr();
#endif
    f(N, p, g, m, v, NULL, 1e-3f, 0.9f, 0.999f, 1e-7f);
#if defined(__x86_64__) || defined(__SSE__)
    /* the modes (all but the sticky exception flags, bits 0-5) are the caller's again */
    if ((_mm_getcsr() & ~0x3fu) != (csr & ~0x3fu)) {
        printf("test_vmath: %s left MXCSR changed FAIL\n", name);
        failures++;
    }
    { /* an invalid operation inside Adam (inf - inf) stays flagged for the caller */
        float pp[9], gg[9], mm[9], vv[9];
        for (int i = 0; i < 9; i++) pp[i] = 1.0f, gg[i] = INFINITY, mm[i] = -INFINITY, vv[i] = 1.0f;
        _mm_setcsr(_mm_getcsr() & ~0x3fu);
        f(9, pp, gg, mm, vv, NULL, 1e-3f, 0.9f, 0.999f, 1e-7f);
        if (!(_mm_getcsr() & 0x1u)) {
            printf("test_vmath: %s cleared the invalid flag FAIL\n", name);
            failures++;
        }
        _mm_setcsr(csr);
    }
    volatile float tiny = 1e-39f; /* gradual underflow is back for the caller */
    if (!(tiny * 0.5f > 0.0f)) {
        printf("test_vmath: %s left denormals flushed FAIL\n", name);
        failures++;
    }
    for (int i = 0; i < N; i++) {
        const float want_m = (i % 3) ? 0.0f : 0.9f * 1e-36f, want_p = (i % 2) ? 0.5f : 0.0f;
        if (m[i] != want_m || p[i] != want_p) {
            printf("test_vmath: %s denormal flush FAIL at %d: m %g p %g\n", name, i, (double)m[i],
                   (double)p[i]);
            failures++;
        }
    }
#else
    (void)name;
#endif
}

int main(void) {
    adam_check(0);
    adam_check(1);
    adam_denormal_check("adam", ml__vadam);
    adam_denormal_check("adam/portable", ml__vadam_portable);
    const int64_t N = 1 << 21;
    sweep("exp", ml__vexp, exp, 0.0f, 88.7f, N, 2.0, 0);
    sweep("exp-", ml__vexp, exp, -103.0f, 0.0f, N, 2.0, 0);
    sweep("log", ml__vlog, log, 1e-45f, 3.4e38f, N, 2.0, 0);
    sweep("tanh", ml__vtanh, tanh, -20.0f, 20.0f, N, 3.0, 0);
    sweep("sigmoid", ml__vsigmoid, ref_sigmoid, -110.0f, 110.0f, N, 3.0, 0);
    sweep("erf", ml__verf, erf, -6.0f, 6.0f, N, 4.0, 3e-7);
    /* gelu = x/2 (1 + erf): the float sum cancels for x << 0 in libm's form too, so an
     * absolute bound (libm's own float formula is off by up to ~4e-7 there) */
    sweep("gelu", ml__vgelu, ref_gelu, -12.0f, 12.0f, N, 4.0, 1e-6);
    sweep("gelu/libm", ml__vgelu_portable, ref_gelu, -12.0f, 12.0f, N, 4.0, 1e-6);
    specials("exp", ml__vexp, ml__vexp_portable);
    specials("log", ml__vlog, ml__vlog_portable);
    specials("tanh", ml__vtanh, ml__vtanh_portable);
    specials("sigmoid", ml__vsigmoid, ml__vsigmoid_portable);
    specials("erf", ml__verf, ml__verf_portable);
    specials("gelu", ml__vgelu, ml__vgelu_portable);
    /* in place, odd lengths (tails) */
    float buf[13], ref[13];
    for (int i = 0; i < 13; i++) buf[i] = ref[i] = (float)i * 0.37f - 2.0f;
    ml__vexp_portable(13, ref, ref);
    ml__vexp(13, buf, buf);
    for (int i = 0; i < 13; i++)
        if (fabsf(buf[i] - ref[i]) > 3e-7f * ref[i]) {
            printf("test_vmath: in-place exp FAIL\n");
            failures++;
        }
    printf("test_vmath: %s\n", failures ? "FAILED" : "all passed");
    return failures != 0;
}
