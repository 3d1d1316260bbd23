/* sinusoid.c — y = amplitude * sin(x - phase) over a row (MAML's sinusoid tasks, Finn,
 * Abbeel & Levine 2017, §5.1; the binding's tasks.c draws the inputs).
 *
 * The sine is computed in double precision and rounded to float32 once (y is within
 * half an ulp of the float32 formula's exact sine, where NumPy's float32 sine may be an
 * ulp off): argument reduction by pi/2 in three parts (Cody & Waite), then the kernel
 * polynomials of fdlibm's __kernel_sin / __kernel_cos (|error| < 2^-58 on [-pi/4, pi/4]).
 * Arguments from 2^19 on (and inf, NaN) go to the C library's sin. Nothing here fuses
 * multiply-adds (the pragma below; the AVX2 variant of the loop is compiled without FMA
 * too), so the bits are the same on every x86-64 build and either variant.
 */

/* No fused multiply-adds in this file, whatever METALEARN_CFLAGS enables (-march=native
 * turns on FMA, and GCC then contracts the polynomials' multiply-adds) */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "sinusoid.h"
#include "cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

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
    const double s = r + r * z *
                             ((-1.66666666666666324348e-01 + z * 8.33333333332248946124e-03) +
                              z2 * ((-1.98412698298579493134e-04 + z * 2.75573137070700676789e-06) +
                                    z2 * (-2.50507602534068634195e-08 +
                                          z * 1.58969099521155010221e-10)));
    const double c = (1.0 - 0.5 * z) +
                     z2 * ((4.16666666666666019037e-02 + z * -1.38888888888741095749e-03) +
                           z2 * ((2.48015872894767294178e-05 + z * -2.75573143513906633035e-07) +
                                 z2 * (2.08757232129817482790e-09 +
                                       z * -1.13596475577881948265e-11)));
    /* quadrant n mod 4: sin, cos, -sin, -cos; picked with bit masks, not branches (a
     * branch on the quadrant is mispredicted half the time) */
    uint64_t sb, cb;
    memcpy(&sb, &s, sizeof sb);
    memcpy(&cb, &c, sizeof cb);
    const uint64_t odd = (uint64_t)0 - (n & 1);
    const uint64_t yb = ((sb & ~odd) | (cb & odd)) ^ ((n & 2) << 62);
    double y;
    memcpy(&y, &yb, sizeof y);
    return y;
}

/* The float32 formula: (x - phase) rounded to float32, its sine, times the float32
 * amplitude. Compiled for AVX2 (without FMA: the same operations as the baseline, so the
 * same bits) and for the baseline; with AVX2 the loop runs four doubles at a time. */
ML_INLINE void sinusoid_row_body(const float *restrict x, float ph, float amp, float *restrict y,
                                 int64_t m) {
    int large = 0;
    for (int64_t i = 0; i < m; i++) {
        const float v = x[i] - ph;
        large |= !(fabsf(v) < 524288.0f);
        y[i] = amp * (float)sin_f64((double)v);
    }
    if (large) /* large, inf or NaN: the C library's sin */
        for (int64_t i = 0; i < m; i++) {
            const float v = x[i] - ph;
            if (!(fabsf(v) < 524288.0f)) y[i] = amp * (float)sin((double)v);
        }
}
ML_CPU_CLONES(sinusoid_row,
              (const float *restrict x, float ph, float amp, float *restrict y, int64_t m),
              (x, ph, amp, y, m))

void ml_sinusoid(const float *x, float phase, float amplitude, float *y, int64_t m) {
    sinusoid_row(x, phase, amplitude, y, m);
}
