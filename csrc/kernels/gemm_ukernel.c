/*
 * gemm_ukernel.c — the micro-kernels of the packed driver: an MR x NR tile of C held in
 * registers for a whole kc-long rank update, a packed MR-tall panel of A times an NR-wide
 * panel of B (BLIS's gemm micro-kernel).
 *
 * AVX2+FMA: 6 x 16 (12 ymm accumulators, 2 for B, 1 broadcast of A: 15 of the 16 ymm
 * registers, the BLIS Haswell/Zen shape), compiled with a function target attribute and
 * run only where kernels/cpu.c chose AVX2. Portable: the same tile in plain C that the
 * compiler vectorises for the baseline instruction set.
 */
#include "gemm_internal.h"

#include <string.h>

/* Stores an MR x NR accumulator tile, clipped to mr x nr: C = alpha*acc + beta*C, C not
 * read when beta == 0. */
static void store_tile(const float acc[MR][NR], float *c, int64_t ldc, float alpha, float beta,
                       int mr, int nr) {
    for (int i = 0; i < mr; ++i) {
        float *ci = c + i * ldc;
        if (beta == 0.0f)
            for (int j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j];
        else
            for (int j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
}

/* (gemm_internal.h) Out of line and never inlined: every part of a product, on any
 * thread, runs this one compiled copy. Two copies inlined into two callers may order a
 * sum's operands differently, which is invisible but for which of two NaNs a sum returns
 * (x86 keeps the first operand's): a split over threads changed a NaN's sign. */
__attribute__((noinline)) void ml__gemm_ukr_portable(int64_t kc, const float *restrict a,
                                                     const float *restrict b, int64_t bs, float *c,
                                                     int64_t ldc, float alpha, float beta, int mr,
                                                     int nr) {
    float acc[MR][NR];
    /* Two MR x 8 halves: 6x8 accumulators fit the 16 SSE registers of baseline x86-64 (or
     * NEON's 32) once vectorized, where one 6x16 tile would spill. */
    for (int h = 0; h < NR; h += 8) {
        float t[MR][8];
        memset(t, 0, sizeof t);
        if (h < nr) {
            const float *ap = a, *bp = b + h;
            for (int64_t p = 0; p < kc; ++p) {
                for (int i = 0; i < MR; ++i)
                    for (int j = 0; j < 8; ++j) t[i][j] += ap[i] * bp[j];
                ap += MR;
                bp += bs;
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < 8; ++j) acc[i][h + j] = t[i][j];
    }
    store_tile((const float (*)[NR])acc, c, ldc, alpha, beta, mr, nr);
}

#if ML_HAVE_AVX2
/* (gemm_internal.h) Long: the tile is written out register by register, as BLIS's
 * assembly kernels are, so that the 12 accumulators stay in registers. */
ML_TARGET_AVX2 __attribute__((noinline)) void ml__gemm_ukr_avx2(int64_t kc, const float *restrict a,
                                                                const float *restrict b, int64_t bs,
                                                                float *c, int64_t ldc, float alpha,
                                                                float beta, int mr, int nr) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

    /* The tile of C is written at the end; ask for its lines now so the store does not
     * wait on memory. */
    for (int i = 0; i < mr; ++i) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + NR - 1), _MM_HINT_T0);
    }

#define ML_STEP()                                                                             \
    do {                                                                                      \
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);                    \
        __m256 av;                                                                            \
        av = _mm256_broadcast_ss(a + 0);                                                      \
        c00 = _mm256_fmadd_ps(av, b0, c00);                                                   \
        c01 = _mm256_fmadd_ps(av, b1, c01);                                                   \
        av = _mm256_broadcast_ss(a + 1);                                                      \
        c10 = _mm256_fmadd_ps(av, b0, c10);                                                   \
        c11 = _mm256_fmadd_ps(av, b1, c11);                                                   \
        av = _mm256_broadcast_ss(a + 2);                                                      \
        c20 = _mm256_fmadd_ps(av, b0, c20);                                                   \
        c21 = _mm256_fmadd_ps(av, b1, c21);                                                   \
        av = _mm256_broadcast_ss(a + 3);                                                      \
        c30 = _mm256_fmadd_ps(av, b0, c30);                                                   \
        c31 = _mm256_fmadd_ps(av, b1, c31);                                                   \
        av = _mm256_broadcast_ss(a + 4);                                                      \
        c40 = _mm256_fmadd_ps(av, b0, c40);                                                   \
        c41 = _mm256_fmadd_ps(av, b1, c41);                                                   \
        av = _mm256_broadcast_ss(a + 5);                                                      \
        c50 = _mm256_fmadd_ps(av, b0, c50);                                                   \
        c51 = _mm256_fmadd_ps(av, b1, c51);                                                   \
        a += MR;                                                                              \
        b += bs;                                                                              \
    } while (0)

    /* A ragged panel of at most 8 columns (n = 40 is 16 + 16 + 8) needs half the FMAs:
     * 6 chains instead of 12 still keep the two FMA pipes mostly busy. */
#define ML_HALF_STEP()                                                                        \
    do {                                                                                      \
        const __m256 b0 = _mm256_loadu_ps(b);                                                 \
        c00 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 0), b0, c00);                           \
        c10 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), b0, c10);                           \
        c20 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), b0, c20);                           \
        c30 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), b0, c30);                           \
        c40 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4), b0, c40);                           \
        c50 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 5), b0, c50);                           \
        a += MR;                                                                              \
        b += bs;                                                                              \
    } while (0)

    int64_t p = 0;
    if (nr <= 8) {
        for (; p + 4 <= kc; p += 4) {
            ML_HALF_STEP();
            ML_HALF_STEP();
            ML_HALF_STEP();
            ML_HALF_STEP();
        }
        for (; p < kc; ++p) ML_HALF_STEP();
    } else {
        for (; p + 4 <= kc; p += 4) {
            ML_STEP();
            ML_STEP();
            ML_STEP();
            ML_STEP();
        }
        for (; p < kc; ++p) ML_STEP();
    }
#undef ML_STEP
#undef ML_HALF_STEP

    const __m256 va = _mm256_set1_ps(alpha);
    if (mr == MR && nr == NR) {
#define ML_ROW(i, r0, r1)                                                                     \
    do {                                                                                      \
        float *ci = c + (i) * ldc;                                                            \
        if (beta == 0.0f) {                                                                   \
            _mm256_storeu_ps(ci, _mm256_mul_ps(va, r0));                                      \
            _mm256_storeu_ps(ci + 8, _mm256_mul_ps(va, r1));                                  \
        } else {                                                                              \
            const __m256 vb = _mm256_set1_ps(beta);                                           \
            _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, r0, _mm256_mul_ps(vb, _mm256_loadu_ps(ci))));\
            _mm256_storeu_ps(ci + 8,                                                          \
                             _mm256_fmadd_ps(va, r1, _mm256_mul_ps(vb, _mm256_loadu_ps(ci + 8))));\
        }                                                                                     \
    } while (0)
        ML_ROW(0, c00, c01);
        ML_ROW(1, c10, c11);
        ML_ROW(2, c20, c21);
        ML_ROW(3, c30, c31);
        ML_ROW(4, c40, c41);
        ML_ROW(5, c50, c51);
#undef ML_ROW
    } else if (mr == MR && nr == 8) {
#define ML_ROW8(i, r0)                                                                        \
    do {                                                                                      \
        float *ci = c + (i) * ldc;                                                            \
        if (beta == 0.0f)                                                                     \
            _mm256_storeu_ps(ci, _mm256_mul_ps(va, r0));                                      \
        else                                                                                  \
            _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, r0, _mm256_mul_ps(_mm256_set1_ps(beta),  \
                                                                       _mm256_loadu_ps(ci)))); \
    } while (0)
        ML_ROW8(0, c00);
        ML_ROW8(1, c10);
        ML_ROW8(2, c20);
        ML_ROW8(3, c30);
        ML_ROW8(4, c40);
        ML_ROW8(5, c50);
#undef ML_ROW8
    } else {
        float acc[MR][NR];
        _mm256_storeu_ps(acc[0], c00), _mm256_storeu_ps(acc[0] + 8, c01);
        _mm256_storeu_ps(acc[1], c10), _mm256_storeu_ps(acc[1] + 8, c11);
        _mm256_storeu_ps(acc[2], c20), _mm256_storeu_ps(acc[2] + 8, c21);
        _mm256_storeu_ps(acc[3], c30), _mm256_storeu_ps(acc[3] + 8, c31);
        _mm256_storeu_ps(acc[4], c40), _mm256_storeu_ps(acc[4] + 8, c41);
        _mm256_storeu_ps(acc[5], c50), _mm256_storeu_ps(acc[5] + 8, c51);
        store_tile((const float (*)[NR])acc, c, ldc, alpha, beta, mr, nr);
    }
}
#endif
