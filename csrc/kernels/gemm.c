/*
 * gemm.c — single-precision GEMM: C = alpha * op(A) @ op(B) + beta * C, row-major.
 *
 * The structure follows Goto & van de Geijn, "Anatomy of high-performance matrix
 * multiplication" (ACM TOMS 2008) as refactored by BLIS (Van Zee & van de Geijn 2015):
 *
 *   for jc in n step NC          B block kc x nc lives in L3
 *     for pc in k step KC        rank-kc update; pack B[pc:, jc:] into NR-wide panels
 *       for ic in m step MC      A block mc x kc lives in L2; pack it into MR-tall panels
 *         for jr in nc step NR   one B panel (kc x NR) stays in L1 across the ir loop
 *           for ir in mc step MR micro-kernel: MR x NR tile of C held in registers
 *
 * Packing makes the micro-kernel's loads unit-stride whatever the transposes and strides
 * (the packing routines absorb op()), and padding the panels with zeros to full MR / NR
 * lets one micro-kernel serve the edge tiles: only its store is clipped.
 *
 * Small shapes (few-shot learning: 5..250 rows, 40..784 columns) change the trade-offs:
 *  - a tiny product does not pay for packing: it runs plain loops;
 *  - when B is not transposed and op(A) fits one MC block, each B panel is used by a
 *    single sweep of the ir loop, so the micro-kernel reads B in place (row stride ldb)
 *    instead of copying it first; only a ragged last panel is packed (for padding);
 *  - block sizes are balanced (k = 300 runs as 2 x 150, not 256 + 44);
 *  - with AVX2, skinny products (250x40x40, 5x784x256, ...) skip packing altogether: an
 *    unpacked register-tiled kernel with k in 64-long slices, and their own kernels for
 *    outer products, matrix-vector products and A B^T with few columns. gemm_path picks
 *    one per product from its whole shape, and the threaded parts of a product all run
 *    that one, so a product rounds the same on any number of threads.
 *
 * Two micro-kernels share the driver: AVX2+FMA (6x16: 12 ymm accumulators, 2 for B,
 * 1 broadcast of A = 15 of the 16 ymm registers, the BLIS Haswell/Zen shape), compiled
 * with a function target attribute and chosen at run time, and a portable C one.
 */
#define _POSIX_C_SOURCE 200809L

#include "metalearn.h"
#include "gemm.h"
#include "cpu.h"
#include "scratch.h"
#include "../core/internal.h"

#include <pthread.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if ML_HAVE_AVX2
#include <immintrin.h>
/* y is used from a register: GCC otherwise folds one load into every FMA that reads it */
#define ML_IN_REGISTER(y) __asm__("" : "+x"(y))
#endif

/* Register tile. */
#define MR 6
#define NR 16
#define MR_W 4 /* rows of a PATH_SMALL_W tile (small_tile_w) */
/* Cache blocks (upper bounds; the driver balances them to the problem). KC*NR*4 = 16 KiB:
 * the B panel takes half of a 32 KiB L1d; MC*KC*4 = 144 KiB of A sits in L2 (>= 512 KiB on
 * current x86); KC*NC*4 = 4 MiB of B sits in L3. */
#ifndef MC
#define MC 144
#endif
#ifndef KC
#define KC 256
#endif
#ifndef NC
#define NC 4080
#endif

/* Below this many multiply-adds the packed path's fixed costs dominate. */
#define TINY_FLOPS 4096
/* Where the AVX2 path uses the unpacked register-blocked kernel (small_avx2) instead of
 * packing: MAML's per-task products (10x40x40, 40x40x10, ...) are a few thousand to tens
 * of thousands of multiply-adds, where packing costs as much as the arithmetic; and with
 * k cut into SMALL_KC slices it also beats the packed driver on the skinny shapes of
 * few-shot learning up to k = SMALL_MAX_K (measured, benchmarks/run_all.py and a C sweep:
 * 250x40x40 83 -> 102 GFLOP/s, 40x40x250 (A^T) 74 -> 100, 5x784x256 69 -> 94, 75x784x256
 * 92 -> 104; large square products the same). Not when B's slice would outgrow L2
 * (n > SMALL_MAX_N: every row tile re-reads it), nor for A^T with many rows and a long k,
 * where packing A measured faster (784x128x256 A^T: 99 vs 91). */
#define SMALL_MACS 65536
#define SMALL_MAX_K 512
#define SMALL_LONG_K_MAX_M 16
#define SMALL_MAX_N 2048
#define SMALL_KC 64
#define DOTS_NT_MAX_N 16 /* below this many columns, A B^T as dot products (dots_nt_avx2) */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ------------------------------------------------------------ C = beta * C */

static void scale_c(int64_t m, int64_t n, float beta, float *c, int64_t ldc)
{
    for (int64_t i = 0; i < m; ++i) {
        float *ci = c + i * ldc;
        if (beta == 0.0f) {
            for (int64_t j = 0; j < n; ++j) ci[j] = 0.0f; /* never read: C may be NaN */
        } else if (beta != 1.0f) {
            for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
        }
    }
}

/* --------------------------------------------------------- unpacked loops */

/* Plain loops, no buffers: for tiny products and when a packing buffer cannot be had.
 * Inner loops run along contiguous memory where they can so the compiler vectorizes them
 * (axpy form when B is not transposed, dot form with 8 partial sums otherwise). */
ML_INLINE void direct_body(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                           const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                           float *c, int64_t ldc)
{
    scale_c(m, n, beta, c, ldc);
    /* axpy form streams rows of B; with very few columns (n = 1: a matrix-vector product)
     * its inner loop is too short, and the dot form is used as when B is transposed. */
    const int dot = tb || n < 8;
    const int64_t bsp = tb ? 1 : ldb, bsj = tb ? ldb : 1; /* op(B)[p][j] = b[p*bsp + j*bsj] */
    for (int64_t i = 0; i < m; ++i) {
        float *restrict ci = c + i * ldc;
        if (!dot) {
            for (int64_t p = 0; p < k; ++p) {
                const float aip = alpha * (ta ? a[p * lda + i] : a[i * lda + p]);
                const float *restrict bp = b + p * ldb;
                for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
            }
        } else {
            for (int64_t j = 0; j < n; ++j) {
                const float *restrict bj = b + j * bsj;
                float s[8] = {0};
                int64_t p = 0;
                for (; p + 8 <= k; p += 8)
                    for (int q = 0; q < 8; ++q)
                        s[q] += (ta ? a[(p + q) * lda + i] : a[i * lda + p + q]) *
                                bj[(p + q) * bsp];
                float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
                for (; p < k; ++p) t += (ta ? a[p * lda + i] : a[i * lda + p]) * bj[p * bsp];
                ci[j] += alpha * t;
            }
        }
    }
}

static void direct_portable(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                            float *c, int64_t ldc)
{
    direct_body(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* ---------------------------------------------------------------- packing */

/* A block (mc x kc of op(A), from row ic, column pc) into MR-tall panels, each stored
 * column by column (MR consecutive floats per k step); rows past mc are zero. */
ML_INLINE void pack_a(int ta, int64_t mc, int64_t kc, const float *a, int64_t lda, int64_t ic,
                      int64_t pc, float *restrict dst)
{
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        const int mr = (int)min64(MR, mc - i0);
        if (!ta) {
            const float *src = a + (ic + i0) * lda + pc;
            if (mr == MR) {
                for (int64_t p = 0; p < kc; ++p)
                    for (int ii = 0; ii < MR; ++ii) dst[p * MR + ii] = src[ii * lda + p];
            } else {
                for (int64_t p = 0; p < kc; ++p)
                    for (int ii = 0; ii < MR; ++ii)
                        dst[p * MR + ii] = ii < mr ? src[ii * lda + p] : 0.0f;
            }
        } else {
            /* op(A)[i][p] = a[p*lda + i]: each k step is a contiguous run of mr floats */
            const float *src = a + pc * lda + ic + i0;
            if (mr == MR) {
                for (int64_t p = 0; p < kc; ++p)
                    for (int ii = 0; ii < MR; ++ii) dst[p * MR + ii] = src[p * lda + ii];
            } else {
                for (int64_t p = 0; p < kc; ++p)
                    for (int ii = 0; ii < MR; ++ii)
                        dst[p * MR + ii] = ii < mr ? src[p * lda + ii] : 0.0f;
            }
        }
        dst += MR * kc;
    }
}

/* B block (kc x nc of op(B), from row pc, column jc) into NR-wide panels, each stored row
 * by row (NR consecutive floats per k step); columns past nc are zero. */
ML_INLINE void pack_b(int tb, int64_t kc, int64_t nc, const float *b, int64_t ldb, int64_t pc,
                      int64_t jc, float *restrict dst)
{
    for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        const int nr = (int)min64(NR, nc - j0);
        if (!tb) {
            const float *src = b + pc * ldb + jc + j0;
            if (nr == NR) {
                for (int64_t p = 0; p < kc; ++p)
                    for (int jj = 0; jj < NR; ++jj) dst[p * NR + jj] = src[p * ldb + jj];
            } else {
                for (int64_t p = 0; p < kc; ++p)
                    for (int jj = 0; jj < NR; ++jj)
                        dst[p * NR + jj] = jj < nr ? src[p * ldb + jj] : 0.0f;
            }
        } else {
            /* op(B)[p][j] = b[j*ldb + p]: gather across NR rows of the stored matrix */
            const float *src = b + (jc + j0) * ldb + pc;
            if (nr == NR) {
                for (int64_t p = 0; p < kc; ++p)
                    for (int jj = 0; jj < NR; ++jj) dst[p * NR + jj] = src[jj * ldb + p];
            } else {
                for (int64_t p = 0; p < kc; ++p)
                    for (int jj = 0; jj < NR; ++jj)
                        dst[p * NR + jj] = jj < nr ? src[jj * ldb + p] : 0.0f;
            }
        }
        dst += NR * kc;
    }
}

/* ----------------------------------------------------------- micro-kernels */

/* Stores an MR x NR accumulator tile, clipped to mr x nr: C = alpha*acc + beta*C, C not
 * read when beta == 0. */
static void store_tile(const float acc[MR][NR], float *c, int64_t ldc, float alpha, float beta,
                       int mr, int nr)
{
    for (int i = 0; i < mr; ++i) {
        float *ci = c + i * ldc;
        if (beta == 0.0f)
            for (int j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j];
        else
            for (int j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
}

/* a: packed MR x kc panel; b: kc rows of NR floats, row stride bs (NR when packed, ldb
 * when B is read in place). */
ML_INLINE void ukr_portable(int64_t kc, const float *restrict a, const float *restrict b,
                            int64_t bs, float *c, int64_t ldc, float alpha, float beta, int mr,
                            int nr)
{
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
    store_tile((const float(*)[NR])acc, c, ldc, alpha, beta, mr, nr);
}

#if ML_HAVE_AVX2
ML_TARGET_AVX2 __attribute__((noinline)) static void ukr_avx2(int64_t kc, const float *restrict a,
                                       const float *restrict b, int64_t bs, float *c,
                                       int64_t ldc, float alpha, float beta, int mr, int nr)
{
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
        store_tile((const float(*)[NR])acc, c, ldc, alpha, beta, mr, nr);
    }
}

/* d (8x8, leading dimension ldd) = s^T for s (8x8, ld lds), through registers. */
ML_TARGET_AVX2 ML_INLINE void transpose8x8(const float *s, int64_t lds, float *d, int64_t ldd)
{
    const __m256 r0 = _mm256_loadu_ps(s + 0 * lds), r1 = _mm256_loadu_ps(s + 1 * lds);
    const __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
    const __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
    const __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(d + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* A block packed as pack_a does, with the not-transposed full panels (six rows of A read
 * along k) moved through registers: 8 k steps of the 6 rows are loaded as 8-float rows and
 * transposed, and each k step's 6 floats are stored as 8 (the next store overwrites the 2
 * extra; the last of a run is stored as 4 + 2 so nothing past the panel is written). The
 * scalar gather it replaces was a fifth of the time of MAML Omniglot's 2400x784x256
 * products. */
ML_TARGET_AVX2 ML_INLINE void pack_a_avx2(int ta, int64_t mc, int64_t kc, const float *a,
                                          int64_t lda, int64_t ic, int64_t pc,
                                          float *restrict dst)
{
    const int64_t full = mc / MR * MR, k8 = kc / 8 * 8;
    if (ta && full) { /* each k step's 6 floats are contiguous: move them as 4 + 2 */
        for (int64_t i0 = 0; i0 < full; i0 += MR) {
            const float *s = a + pc * lda + ic + i0;
            for (int64_t p = 0; p < kc; ++p) {
                _mm_storeu_ps(dst + p * MR, _mm_loadu_ps(s + p * lda));
                _mm_storel_pi((__m64 *)(dst + p * MR + 4),
                              _mm_loadl_pi(_mm_setzero_ps(), (const __m64 *)(s + p * lda + 4)));
            }
            dst += MR * kc;
        }
        if (full < mc) pack_a(1, mc - full, kc, a, lda, ic + full, pc, dst);
        return;
    }
    if (ta || !full || kc < 8) {
        pack_a(ta, mc, kc, a, lda, ic, pc, dst);
        return;
    }
    for (int64_t i0 = 0; i0 < full; i0 += MR) {
        const float *s = a + (ic + i0) * lda + pc;
        for (int64_t p = 0; p < k8; p += 8) {
            const __m256 r0 = _mm256_loadu_ps(s + 0 * lda + p), r1 = _mm256_loadu_ps(s + 1 * lda + p);
            const __m256 r2 = _mm256_loadu_ps(s + 2 * lda + p), r3 = _mm256_loadu_ps(s + 3 * lda + p);
            const __m256 r4 = _mm256_loadu_ps(s + 4 * lda + p), r5 = _mm256_loadu_ps(s + 5 * lda + p);
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
            const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
            /* rows 4, 5 of k step q sit in lanes (q & 3) * 2 of t4 / t5's 128-bit half q >> 2 */
            const __m256 w0 = _mm256_shuffle_ps(t4, t4, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 w1 = _mm256_shuffle_ps(t4, t4, _MM_SHUFFLE(3, 2, 3, 2));
            const __m256 w2 = _mm256_shuffle_ps(t5, t5, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 w3 = _mm256_shuffle_ps(t5, t5, _MM_SHUFFLE(3, 2, 3, 2));
            float *d = dst + p * MR;
            _mm256_storeu_ps(d + 0 * MR, _mm256_permute2f128_ps(u0, w0, 0x20));
            _mm256_storeu_ps(d + 1 * MR, _mm256_permute2f128_ps(u1, w1, 0x20));
            _mm256_storeu_ps(d + 2 * MR, _mm256_permute2f128_ps(u2, w2, 0x20));
            _mm256_storeu_ps(d + 3 * MR, _mm256_permute2f128_ps(u3, w3, 0x20));
            _mm256_storeu_ps(d + 4 * MR, _mm256_permute2f128_ps(u0, w0, 0x31));
            _mm256_storeu_ps(d + 5 * MR, _mm256_permute2f128_ps(u1, w1, 0x31));
            _mm256_storeu_ps(d + 6 * MR, _mm256_permute2f128_ps(u2, w2, 0x31));
            const __m256 last = _mm256_permute2f128_ps(u3, w3, 0x31);
            _mm_storeu_ps(d + 7 * MR, _mm256_castps256_ps128(last));
            _mm_storel_pi((__m64 *)(d + 7 * MR + 4), _mm256_extractf128_ps(last, 1));
        }
        for (int64_t p = k8; p < kc; ++p)
            for (int ii = 0; ii < MR; ++ii) dst[p * MR + ii] = s[ii * lda + p];
        dst += MR * kc;
    }
    if (full < mc) pack_a(0, mc - full, kc, a, lda, ic + full, pc, dst);
}

/* op(B) = B^T packed with 8x8 register transposes: the scalar gather of pack_b reads 16
 * strided streams one float at a time and costs as much as the multiply for m ~ 5. */
ML_TARGET_AVX2 ML_INLINE void pack_b_avx2(int tb, int64_t kc, int64_t nc, const float *b,
                                          int64_t ldb, int64_t pc, int64_t jc,
                                          float *restrict dst)
{
    if (!tb) {
        pack_b(0, kc, nc, b, ldb, pc, jc, dst);
        return;
    }
    const int64_t nc_full = nc / NR * NR;
    const int64_t kc8 = kc / 8 * 8;
    for (int64_t j0 = 0; j0 < nc_full; j0 += NR) {
        for (int h = 0; h < NR; h += 8) {
            const float *src = b + (jc + j0 + h) * ldb + pc;
            for (int64_t p = 0; p < kc8; p += 8) {
                transpose8x8(src + p, ldb, dst + p * NR + h, NR);
            }
            for (int64_t p = kc8; p < kc; ++p)
                for (int jj = 0; jj < 8; ++jj) dst[p * NR + h + jj] = src[jj * ldb + p];
        }
        dst += NR * kc;
    }
    if (nc_full < nc) pack_b(1, kc, nc - nc_full, b, ldb, pc, jc + nc_full, dst);
}
#endif

/* ------------------------------------------------------------- epilogue */

/* An element-wise op applied to C's elements once they hold the product (ml__sgemm_into
 * outside the 2 x 40 tiles): by the packed driver and the unpacked tiles after a tile's
 * last k block, on the tile while it is in L1, so the product is never written out and
 * read back. row0 and col0 place this call's C in the whole product, whose rows u and
 * mask follow (row r of u is row r / u_div; both ldu = the whole product's n). */
typedef struct gemm_epi {
    int op; /* ML_EPI_* */
    const float *u, *mask;
    int64_t u_div, ldu, row0, col0;
} gemm_epi;

/* One element: epi_vec's formulas, lane by lane. */
static inline float epi_one(int op, float x, float u, float m)
{
    switch (op) {
    case ML_EPI_ADD: return x + u;
    case ML_EPI_ADD_RELU: x = x + u; return 0.0f > x ? 0.0f : x;
    case ML_EPI_RELU_GRAD: return u != 0.0f ? x : 0.0f;
    default: x = u + x; return m != 0.0f ? x : 0.0f; /* ML_EPI_ADD_MASK */
    }
}

/* rows x cols of C at (i0, j0) of this call's C */
static void epi_tile_scalar(const gemm_epi *e, float *c, int64_t ldc, int64_t i0, int64_t j0,
                            int rows, int cols)
{
    for (int r = 0; r < rows; ++r) {
        const int64_t row = e->row0 + i0 + r, col = e->col0 + j0;
        const float *u = e->u + row / e->u_div * e->ldu + col;
        const float *m = e->mask ? e->mask + row * e->ldu + col : NULL;
        for (int j = 0; j < cols; ++j)
            c[r * ldc + j] = epi_one(e->op, c[r * ldc + j], u[j], m ? m[j] : 0.0f);
    }
}

#if ML_HAVE_AVX2
/* Eight elements: x the product's, u the op's operand, m where the mask is read (ADD_MASK).
 * A constant op once inlined (the 2 x 40 tiles' epilogue). */
ML_TARGET_AVX2 ML_INLINE __m256 epi_vec(const int op, __m256 x, __m256 u, const float *m)
{
    const __m256 zero = _mm256_setzero_ps();
    switch (op) {
    case ML_EPI_ADD: return _mm256_add_ps(x, u);
    case ML_EPI_ADD_RELU: /* 0 > x + u ? 0 : x + u: MAXPS returns its second operand when
                             either is NaN (or both are zeros), so NaN and -0.0 pass */
        return _mm256_max_ps(zero, _mm256_add_ps(x, u));
    case ML_EPI_RELU_GRAD: /* +0 where u is +-0 (u a relu's output; a NaN u keeps x) */
        return _mm256_and_ps(x, _mm256_cmp_ps(u, zero, _CMP_NEQ_UQ));
    default: /* ML_EPI_ADD_MASK: (u + x), +0 where the mask is +-0 */
        x = _mm256_add_ps(u, x);
        return _mm256_and_ps(x, _mm256_cmp_ps(_mm256_loadu_ps(m), zero, _CMP_NEQ_UQ));
    }
}

ML_TARGET_AVX2 static void epi_tile_avx2(const gemm_epi *e, float *c, int64_t ldc, int64_t i0,
                                         int64_t j0, int rows, int cols)
{
    const int vec = cols & ~7;
    for (int r = 0; r < rows; ++r) {
        const int64_t row = e->row0 + i0 + r, col = e->col0 + j0;
        const float *u = e->u + row / e->u_div * e->ldu + col;
        const float *m = e->mask ? e->mask + row * e->ldu + col : NULL;
        float *cr = c + r * ldc;
        for (int j = 0; j < vec; j += 8)
            _mm256_storeu_ps(cr + j, epi_vec(e->op, _mm256_loadu_ps(cr + j),
                                             _mm256_loadu_ps(u + j), m ? m + j : NULL));
        for (int j = vec; j < cols; ++j) cr[j] = epi_one(e->op, cr[j], u[j], m ? m[j] : 0.0f);
    }
}
#endif

/* ------------------------------------------------------------------ driver */

typedef struct blocking {
    int64_t mc, kc, nc; /* balanced block sizes */
    int direct_b;       /* read op(B) in place instead of packing it */
    size_t a_floats, b_floats;
} blocking;

static blocking plan(int tb, int64_t m, int64_t n, int64_t k)
{
    blocking bl;
    bl.kc = ceil_div(k, ceil_div(k, KC));
    bl.mc = round_up(ceil_div(m, ceil_div(m, MC)), MR);
    /* One MC block means each B panel is swept once, right after it is loaded: copying it
     * first would only add a pass over B (it dominates when m is a handful of rows). */
    bl.direct_b = !tb && m <= MC;
    bl.nc = bl.direct_b ? n : round_up(ceil_div(n, ceil_div(n, NC)), NR);
    bl.a_floats = (size_t)(bl.mc * bl.kc);
    bl.b_floats = (size_t)(bl.kc * (bl.direct_b ? NR : bl.nc));
    return bl;
}

/* The five loops around the micro-kernel; instantiated once per kernel so the compiler
 * inlines the micro-kernel and vectorizes the packing for the kernel's ISA. */
#define ML_DEFINE_DRIVER(NAME, UKR, PACK_A, PACK_B, EPI_TILE, ATTR)                                                    \
    ATTR static void NAME(const blocking *bl, int ta, int tb, int64_t m, int64_t n, int64_t k, \
                          float alpha, const float *a, int64_t lda, const float *b,           \
                          int64_t ldb, float beta, float *c, int64_t ldc, float *abuf,        \
                          float *bbuf, const gemm_epi *epi)                                   \
    {                                                                                         \
        for (int64_t jc = 0; jc < n; jc += bl->nc) {                                          \
            const int64_t nc = min64(bl->nc, n - jc);                                         \
            for (int64_t pc = 0; pc < k; pc += bl->kc) {                                      \
                const int64_t kc = min64(bl->kc, k - pc);                                     \
                const float beta_eff = pc == 0 ? beta : 1.0f; /* later passes accumulate */   \
                if (!bl->direct_b) PACK_B(tb, kc, nc, b, ldb, pc, jc, bbuf);                  \
                for (int64_t ic = 0; ic < m; ic += bl->mc) {                                  \
                    const int64_t mc = min64(bl->mc, m - ic);                                 \
                    PACK_A(ta, mc, kc, a, lda, ic, pc, abuf);                                 \
                    for (int64_t jr = 0; jr < nc; jr += NR) {                                 \
                        const int nr = (int)min64(NR, nc - jr);                               \
                        const float *bp = bbuf + jr * kc;                                     \
                        int64_t bs = NR;                                                      \
                        if (bl->direct_b) {                                                   \
                            if (nr == NR) {                                                   \
                                bp = b + pc * ldb + jc + jr;                                  \
                                bs = ldb;                                                     \
                            } else { /* ragged last panel: pad it */                         \
                                pack_b(0, kc, nr, b, ldb, pc, jc + jr, bbuf);                 \
                                bp = bbuf;                                                    \
                            }                                                                 \
                        }                                                                     \
                        float *cj = c + ic * ldc + jc + jr;                                   \
                        for (int64_t ir = 0; ir < mc; ir += MR) {                             \
                            const int mr = (int)min64(MR, mc - ir);                           \
                            UKR(kc, abuf + ir * kc, bp, bs, cj + ir * ldc, ldc, alpha,        \
                                beta_eff, mr, nr);                                            \
                            if (epi && pc + kc >= k) /* the tile is final, and in L1 */       \
                                EPI_TILE(epi, cj + ir * ldc, ldc, ic + ir, jc + jr, mr, nr);  \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

ML_DEFINE_DRIVER(driver_portable, ukr_portable, pack_a, pack_b, epi_tile_scalar, )
#if ML_HAVE_AVX2
ML_DEFINE_DRIVER(driver_avx2, ukr_avx2, pack_a_avx2, pack_b_avx2, epi_tile_avx2, ML_TARGET_AVX2)

/* One MR_S x 16 tile of C (mr rows, nr <= 16 columns, both at least 1): op(B) is read in
 * place row by row (row-major with stride ldb, already un-transposed by the caller), A
 * element by element (broadcast), the tile lives in registers for the whole k loop and is
 * stored once. Partial columns use masked loads and stores. mr is a constant after
 * inlining, so the row loops unroll and the accumulators stay in registers. */
#define MR_S 6 /* 12 accumulators + 2 rows of B + 1 broadcast: 15 of the 16 ymm registers */
ML_TARGET_AVX2 ML_INLINE void small_tile(const int mr, int ta, int64_t k, float alpha,
                                         const float *a, int64_t lda, const float *b,
                                         int64_t ldb, float beta, float *c, int64_t ldc, int nr)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    __m256 acc0[MR_S], acc1[MR_S];
    for (int r = 0; r < mr; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    const int64_t as_p = ta ? lda : 1, as_i = ta ? 1 : lda; /* op(A)[i][p] */
    if (nr == 16) {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb), b1 = _mm256_loadu_ps(b + p * ldb + 8);
            for (int r = 0; r < mr; ++r) {
                const __m256 av = _mm256_broadcast_ss(a + r * as_i + p * as_p);
                acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
            }
        }
    } else if (nr > 8) {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb);
            const __m256 b1 = _mm256_maskload_ps(b + p * ldb + 8, m1);
            for (int r = 0; r < mr; ++r) {
                const __m256 av = _mm256_broadcast_ss(a + r * as_i + p * as_p);
                acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
            }
        }
    } else if (nr == 8) {
        /* n = 40 is 16 + 16 + 8. Even and odd p go to two sets of accumulators: 12 FMA
         * chains, where 6 would leave the pipes waiting on the FMA latency. */
        int64_t p = 0;
#pragma GCC unroll 2
        for (; p + 2 <= k; p += 2) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb), b1 = _mm256_loadu_ps(b + (p + 1) * ldb);
            for (int r = 0; r < mr; ++r) {
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + (p + 1) * as_p), b1,
                                          acc1[r]);
            }
        }
        if (p < k) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb);
            for (int r = 0; r < mr; ++r)
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0, acc0[r]);
        }
        for (int r = 0; r < mr; ++r) acc0[r] = _mm256_add_ps(acc0[r], acc1[r]);
    } else {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = _mm256_maskload_ps(b + p * ldb, m0);
            for (int r = 0; r < mr; ++r)
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0, acc0[r]);
        }
    }
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int r = 0; r < mr; ++r) {
        float *cr = c + r * ldc;
        __m256 o0 = _mm256_mul_ps(va, acc0[r]), o1 = _mm256_mul_ps(va, acc1[r]);
        if (nr == 16) {
            if (beta != 0.0f) { /* C is not read when beta == 0: it may hold NaN */
                o0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), o0);
                o1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), o1);
            }
            _mm256_storeu_ps(cr, o0);
            _mm256_storeu_ps(cr + 8, o1);
        } else if (nr == 8) { /* a full half: no masks */
            if (beta != 0.0f) o0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), o0);
            _mm256_storeu_ps(cr, o0);
        } else {
            if (beta != 0.0f) {
                o0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr, m0), o0);
                o1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8, m1), o1);
            }
            _mm256_maskstore_ps(cr, m0, o0);
            _mm256_maskstore_ps(cr + 8, m1, o1);
        }
    }
}

/* dst (cols x rows, leading dimension ldd) = src^T for src (rows x cols, ld lds): 8x8
 * blocks through registers (a scalar gather reads a column at a time and cost as much as
 * the small products it feeds), scalar edges. */
ML_TARGET_AVX2 static void transpose_avx2(int64_t rows, int64_t cols, const float *src,
                                          int64_t lds, float *dst, int64_t ldd)
{
    const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    for (int64_t i = 0; i < r8; i += 8) {
        for (int64_t j = 0; j < c8; j += 8) {
            transpose8x8(src + i * lds + j, lds, dst + j * ldd + i, ldd);
        }
        for (int64_t j = c8; j < cols; ++j)
            for (int64_t ii = i; ii < i + 8; ++ii) dst[j * ldd + ii] = src[ii * lds + j];
    }
    for (int64_t i = r8; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

/* c[i][0 : 8 nv] = a[i sa] * b[0 : 8 nv] for m rows (outer_avx2's common case) */
ML_TARGET_AVX2 static inline __attribute__((always_inline)) void
outer_rows_avx2(const int nv, int64_t m, const float *a, int64_t sa, const float *b, float *c,
                int64_t ldc)
{
    __m256 bv[8];
#pragma GCC unroll 8
    for (int v = 0; v < nv; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
    for (int64_t i = 0; i < m; ++i) {
        const __m256 vai = _mm256_set1_ps(a[i * sa]);
        float *ci = c + i * ldc;
#pragma GCC unroll 8
        for (int v = 0; v < nv; ++v) _mm256_storeu_ps(ci + 8 * v, _mm256_mul_ps(vai, bv[v]));
    }
}

/* k == 1: C = alpha a b^T + beta C, an outer product (a 1-unit layer: x (n x 1) times a
 * (1 x N) kernel, or dZ (n x 1) times a (N x 1) kernel transposed). As a tile it would
 * transpose or mask its way through one multiply per element; here each row of C is a
 * scaled copy of b. Same rounding as small_tile: alpha (a_i b_j), then beta C. */
ML_TARGET_AVX2 static void outer_avx2(int ta, int tb, int64_t m, int64_t n, float alpha,
                                      const float *a, int64_t lda, const float *b, int64_t ldb,
                                      float beta, float *c, int64_t ldc)
{
    const int64_t sa = ta ? 1 : lda, sb = tb ? ldb : 1; /* op(A)[i][0], op(B)[0][j] */
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    const int64_t n8 = sb == 1 ? n / 8 * 8 : 0;
    if (alpha == 1.0f && beta == 0.0f && sb == 1 && n == n8 && n <= 64) {
        /* the common case (a layer's product, C written, not accumulated): 1 * x is x, so
         * the same bits with one multiply and b held in registers (was ~100 cycles for a
         * 10 x 40 task, twice its stores) */
        switch (n8 / 8) { /* constant trip counts: b stays in registers (an array indexed
                              by a variable is kept on the stack and reloaded per store) */
        case 1: outer_rows_avx2(1, m, a, sa, b, c, ldc); return;
        case 2: outer_rows_avx2(2, m, a, sa, b, c, ldc); return;
        case 3: outer_rows_avx2(3, m, a, sa, b, c, ldc); return;
        case 4: outer_rows_avx2(4, m, a, sa, b, c, ldc); return;
        case 5: outer_rows_avx2(5, m, a, sa, b, c, ldc); return;
        case 6: outer_rows_avx2(6, m, a, sa, b, c, ldc); return;
        case 7: outer_rows_avx2(7, m, a, sa, b, c, ldc); return;
        case 8: outer_rows_avx2(8, m, a, sa, b, c, ldc); return;
        }
    }
    for (int64_t i = 0; i < m; ++i) {
        const float ai = a[i * sa];
        const __m256 vai = _mm256_set1_ps(ai);
        float *ci = c + i * ldc;
        for (int64_t j = 0; j < n8; j += 8) {
            __m256 o = _mm256_mul_ps(va, _mm256_mul_ps(vai, _mm256_loadu_ps(b + j)));
            if (beta != 0.0f) o = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + j), o);
            _mm256_storeu_ps(ci + j, o);
        }
        for (int64_t j = n8; j < n; ++j) {
            const float o = alpha * (ai * b[j * sb]);
            ci[j] = beta != 0.0f ? fmaf(beta, ci[j], o) : o;
        }
    }
}

/* n == 1 with A not transposed: each element of C is a dot product of a row of A (contiguous)
 * with the vector op(B) (contiguous: the caller checks), eight lanes then a horizontal sum.
 * (The transposed form small_avx2 otherwise uses would first copy A to column order.) */
ML_TARGET_AVX2 static void dots_avx2(int64_t m, int64_t k, float alpha, const float *a,
                                     int64_t lda, const float *x, float beta, float *c,
                                     int64_t ldc)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int64_t k8 = k / 8 * 8;
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k - k8)), lane);
    const __m128 va = _mm_set1_ps(alpha);
    /* four rows at a time: four accumulators, summed across lanes together (two hadd
     * levels and a half add give the four sums in one vector; a row alone took as long in
     * its horizontal sum as in its five FMAs at k = 40). Every row's sum is formed the same
     * way whichever group it falls in: lanes (0+1)+(2+3) and (4+5)+(6+7), then the halves. */
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a0 = a + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t p = 0; p < k8; p += 8) {
            const __m256 xv = _mm256_loadu_ps(x + p);
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + p), xv, s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a1 + p), xv, s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a2 + p), xv, s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a3 + p), xv, s3);
        }
        if (k8 < k) {
            const __m256 xv = _mm256_maskload_ps(x + k8, tail);
            s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a0 + k8, tail), xv, s0);
            s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a1 + k8, tail), xv, s1);
            s2 = _mm256_fmadd_ps(_mm256_maskload_ps(a2 + k8, tail), xv, s2);
            s3 = _mm256_fmadd_ps(_mm256_maskload_ps(a3 + k8, tail), xv, s3);
        }
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
        __m128 o = _mm_mul_ps(va, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        float t[4];
        _mm_storeu_ps(t, o);
        for (int r = 0; r < 4; ++r) {
            float *cr = c + (i + r) * ldc;
            *cr = beta != 0.0f ? fmaf(beta, *cr, t[r]) : t[r];
        }
    }
    for (; i < m; ++i) { /* the last rows: the same sums, one row in the group */
        const float *ai = a + i * lda;
        __m256 s0 = _mm256_setzero_ps();
        for (int64_t p = 0; p < k8; p += 8)
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ai + p), _mm256_loadu_ps(x + p), s0);
        if (k8 < k)
            s0 = _mm256_fmadd_ps(_mm256_maskload_ps(ai + k8, tail),
                                 _mm256_maskload_ps(x + k8, tail), s0);
        const __m256 z = _mm256_setzero_ps();
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, z), z);
        const float o = alpha * _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(h),
                                                         _mm256_extractf128_ps(h, 1)));
        c[i * ldc] = beta != 0.0f ? fmaf(beta, c[i * ldc], o) : o;
    }
}

/* Up to 40 contiguous output floats, o[j] = alpha * sum_p w(p) * v_p[j] (+ beta o[j]),
 * v_p = base + p * ld: five vectors of lanes, with even and odd p in two accumulator sets
 * (ten FMA chains: a single chain per vector waited on the FMA latency, ~4 cycles a step,
 * for a k of 10), added at the end. Each output's sum is formed the same way wherever its
 * block starts, so a split over threads changes nothing. w(p) = wv[p * wstride]. */
ML_TARGET_AVX2 ML_INLINE void lanes40(int w, int64_t k, const float *wv, int64_t wstride,
                                      const float *base, int64_t ld, float alpha, float beta,
                                      float *o, int64_t ldo)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i mk[5];
    __m256 e[5], d[5];
#pragma GCC unroll 5
    for (int v = 0; v < 5; ++v) {
        mk[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8 * v), lane);
        e[v] = d[v] = _mm256_setzero_ps();
    }
    const int nv = (w + 7) / 8;
    int64_t p = 0;
    /* five vectors always (masked ones read nothing): a constant count keeps the ten
     * accumulators in registers (a loop to nv spilled them to the stack every step) */
#define ML_LANES_STEP(ACC, P, LOAD)                                                        \
    do {                                                                                   \
        const __m256 xp = _mm256_broadcast_ss(wv + (P) * wstride);                         \
        const float *row = base + (P) * ld;                                                \
        _Pragma("GCC unroll 5") for (int v = 0; v < 5; ++v)                                \
            ACC[v] = _mm256_fmadd_ps(LOAD, xp, ACC[v]);                                    \
    } while (0)
    if (w == 40) {
        for (; p + 2 <= k; p += 2) {
            ML_LANES_STEP(e, p, _mm256_loadu_ps(row + 8 * v));
            ML_LANES_STEP(d, p + 1, _mm256_loadu_ps(row + 8 * v));
        }
        if (p < k) ML_LANES_STEP(e, p, _mm256_loadu_ps(row + 8 * v));
    } else { /* masked lanes read nothing */
        for (; p + 2 <= k; p += 2) {
            ML_LANES_STEP(e, p, _mm256_maskload_ps(row + 8 * v, mk[v]));
            ML_LANES_STEP(d, p + 1, _mm256_maskload_ps(row + 8 * v, mk[v]));
        }
        if (p < k) ML_LANES_STEP(e, p, _mm256_maskload_ps(row + 8 * v, mk[v]));
    }
#undef ML_LANES_STEP
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 5
    for (int v = 0; v < 5; ++v) { /* as small_tile: alpha acc, then beta C (not read at 0) */
        if (v >= nv) break;
        __m256 r = _mm256_mul_ps(va, _mm256_add_ps(e[v], d[v]));
        if (ldo == 1) {
            float *ov = o + 8 * v;
            if (8 * v + 8 <= w) {
                if (beta != 0.0f) r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ov), r);
                _mm256_storeu_ps(ov, r);
            } else {
                if (beta != 0.0f) r = _mm256_fmadd_ps(vb, _mm256_maskload_ps(ov, mk[v]), r);
                _mm256_maskstore_ps(ov, mk[v], r);
            }
        } else {
            float t[8];
            _mm256_storeu_ps(t, r);
            for (int j = 0; j < 8 && 8 * v + j < w; ++j) {
                float *oj = o + (8 * v + j) * ldo;
                *oj = beta != 0.0f ? fmaf(beta, *oj, t[j]) : t[j];
            }
        }
    }
}

/* n == 1 with A transposed (stored k x m): C = alpha A^T x + beta C, 40 rows of C at a
 * time, each a lane summed over k (lanes40). (Computed before as the 1 x m transposed
 * product in 16-wide tiles, whose 8-wide edge rounds differently: a row split moved that
 * edge and the result changed with the thread count.) */
ML_TARGET_AVX2 static void gemv_t_avx2(int64_t m, int64_t k, float alpha, const float *a,
                                       int64_t lda, const float *x, int64_t incx, float beta,
                                       float *c, int64_t ldc)
{
    for (int64_t i0 = 0; i0 < m; i0 += 40)
        lanes40((int)min64(40, m - i0), k, x, incx, a + i0, lda, alpha, beta, c + i0 * ldc, ldc);
}

/* m == 1, B not transposed: the row vector op(A) times B, 40 columns of C at a time
 * (lanes40). Through the register tiles it was three 16-wide tiles, each waiting on one
 * FMA chain per vector: ~100 cycles for 1 x 40 x 10 (MAML's x^T dZ for a 1-input layer). */
ML_TARGET_AVX2 static void row_avx2(int ta, int64_t n, int64_t k, float alpha, const float *a,
                                    int64_t lda, const float *b, int64_t ldb, float beta,
                                    float *c)
{
    for (int64_t j0 = 0; j0 < n; j0 += 40)
        lanes40((int)min64(40, n - j0), k, a, ta ? lda : 1, b + j0, ldb, alpha, beta, c + j0, 1);
}

/* Lane sums without vhaddps (4 uops, one every 2 cycles on Zen 4): of x0..x3, lanes 0..3
 * of each 128-bit half become (l0 + l2) + (l1 + l3) of that half. 10 x 10 x 40 products
 * spent ~20 cycles a 2 x 5 tile summing with hadd, ~16 this way. */
ML_TARGET_AVX2 ML_INLINE __m256 fold4(__m256 x0, __m256 x1, __m256 x2, __m256 x3)
{
    const __m256 a = _mm256_add_ps(_mm256_unpacklo_ps(x0, x1), _mm256_unpackhi_ps(x0, x1));
    const __m256 b = _mm256_add_ps(_mm256_unpacklo_ps(x2, x3), _mm256_unpackhi_ps(x2, x3));
    return _mm256_add_ps(_mm256_shuffle_ps(a, b, 0x44), _mm256_shuffle_ps(a, b, 0xEE));
}

/* The sums of four (hsum4) or eight (hsum8) vectors' lanes, each by the same tree
 * ((l0 + l2) + (l1 + l3)) + ((l4 + l6) + (l5 + l7)): every element of a dots_nt product
 * is summed this way, wherever its tile lies, so a thread split does not change its bits. */
ML_TARGET_AVX2 ML_INLINE __m128 hsum4(__m256 x0, __m256 x1, __m256 x2, __m256 x3)
{
    const __m256 f = fold4(x0, x1, x2, x3);
    return _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
}

ML_TARGET_AVX2 ML_INLINE __m256 hsum8(const __m256 x[4], const __m256 y[4])
{
    const __m256 f = fold4(x[0], x[1], x[2], x[3]), g = fold4(y[0], y[1], y[2], y[3]);
    return _mm256_add_ps(_mm256_permute2f128_ps(f, g, 0x20), _mm256_permute2f128_ps(f, g, 0x31));
}

/* One dots_nt tile: mr (1, 2) rows of A times nr (1..5) rows of B, mr * nr vector
 * accumulators, each one lane-wise FMA chain over k. Constants after inlining, so the
 * accumulators stay in registers. 2 x 5 needs 7 loads for 10 FMAs, and 10 x 10 splits into
 * 2 x 5 tiles with no lane wasted (3 x 4 tiles computed 144 dot products for its 100). */
ML_TARGET_AVX2 ML_INLINE void dots_nt_tile(const int mr, const int nr, int64_t k,
                                           __m256i tail, float alpha, const float *a,
                                           int64_t lda, const float *b, int64_t ldb,
                                           float beta, float *c, int64_t ldc)
{
    __m256 acc[2][5];
    for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nr; ++j) acc[r][j] = _mm256_setzero_ps();
    const int64_t k8 = k / 8 * 8;
#define ML_DOT_STEP(LOAD, p)                                                                  \
    do {                                                                                      \
        __m256 x[2];                                                                          \
        for (int r = 0; r < mr; ++r) x[r] = LOAD(a + r * lda + (p));                          \
        for (int j = 0; j < nr; ++j) {                                                        \
            __m256 y = LOAD(b + j * ldb + (p));                                               \
            ML_IN_REGISTER(y);                                                                \
            for (int r = 0; r < mr; ++r) acc[r][j] = _mm256_fmadd_ps(x[r], y, acc[r][j]);    \
        }                                                                                     \
    } while (0)
#define ML_LOADU(ptr) _mm256_loadu_ps(ptr)
#define ML_LOADT(ptr) _mm256_maskload_ps(ptr, tail)
    for (int64_t p = 0; p < k8; p += 8) ML_DOT_STEP(ML_LOADU, p);
    if (k8 < k) ML_DOT_STEP(ML_LOADT, k8);
#undef ML_LOADU
#undef ML_LOADT
#undef ML_DOT_STEP
    const __m128 va = _mm_set1_ps(alpha), vb = _mm_set1_ps(beta);
    const int n4 = nr < 4 ? nr : 4;
    const __m128i keep = _mm_cmpgt_epi32(_mm_set1_epi32(n4), _mm_setr_epi32(0, 1, 2, 3));
    if (mr == 2 && n4 == 4) { /* columns 0..3 of both rows: one vector of 8 sums */
        __m256 o = _mm256_mul_ps(_mm256_set1_ps(alpha), hsum8(acc[0], acc[1]));
        if (beta != 0.0f)
            o = _mm256_fmadd_ps(_mm256_set1_ps(beta),
                                _mm256_set_m128(_mm_loadu_ps(c + ldc), _mm_loadu_ps(c)), o);
        _mm_storeu_ps(c, _mm256_castps256_ps128(o));
        _mm_storeu_ps(c + ldc, _mm256_extractf128_ps(o, 1));
    } else {
        for (int r = 0; r < mr; ++r) { /* missing columns repeat column 0, not stored */
            const __m256 *q = acc[r];
            __m128 o = _mm_mul_ps(va, hsum4(q[0], q[n4 > 1], q[n4 > 2 ? 2 : 0], q[n4 > 3 ? 3 : 0]));
            float *cr = c + r * ldc;
            if (beta != 0.0f) o = _mm_fmadd_ps(vb, _mm_maskload_ps(cr, keep), o);
            if (n4 == 4)
                _mm_storeu_ps(cr, o);
            else
                _mm_maskstore_ps(cr, keep, o);
        }
    }
    if (nr == 5) { /* column 4 of both rows in one sum: lanes r0, r1, r0, r1 */
        float s[4];
        _mm_storeu_ps(s, hsum4(acc[0][4], acc[mr - 1][4], acc[0][4], acc[mr - 1][4]));
        for (int r = 0; r < mr; ++r) {
            float *o = c + r * ldc + 4;
            *o = beta != 0.0f ? fmaf(beta, *o, alpha * s[r]) : alpha * s[r];
        }
    }
}

/* C = alpha A B^T + beta C with few columns (n < DOTS_NT_MAX_N): rows of A and rows of B
 * are both contiguous along k, so each element is a dot product. Tiles of 2 rows and n
 * split evenly into parts of at most 5 columns. The small kernel would first transpose B
 * and then fill 16-lane tiles with 10 columns (the 10 x 10 x 40 products of MAML's
 * low-rank fast weights ran at a third of the FMA peak that way). */
ML_TARGET_AVX2 static void dots_nt_avx2(int64_t m, int64_t n, int64_t k, float alpha,
                                        const float *a, int64_t lda, const float *b,
                                        int64_t ldb, float beta, float *c, int64_t ldc)
{
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k % 8)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const int parts = (int)((n + 4) / 5), base = (int)n / parts, extra = (int)n % parts;
    for (int64_t i0 = 0; i0 < m; i0 += 2) {
        const int mr = (int)min64(2, m - i0);
        const float *ai = a + i0 * lda;
        float *ci = c + i0 * ldc;
        /* long rows: the next two towards L2 while these are summed. A is read once, and
         * MAML Omniglot's 2400 x 784 queries come from L3 or memory (75 x 5 x 784 for 32
         * tasks, in its step: ~1.0 -> ~0.65 ms; from L2, 220 -> 250 us, so not for short
         * rows) */
        if (k >= 256 && i0 + 2 < m)
            for (int64_t p = 0; p < min64(2, m - i0 - 2) * lda; p += 16)
                _mm_prefetch((const char *)(ai + 2 * lda + p), _MM_HINT_T1);
        int64_t j0 = 0;
        for (int t = 0; t < parts; ++t) {
            const int nr = base + (t < extra);
            const float *bj = b + j0 * ldb;
            float *cij = ci + j0;
            switch (mr * 8 + nr) { /* constant shapes: accumulators in registers */
#define ML_TILE(R, N)                                                                         \
    case R * 8 + N: dots_nt_tile(R, N, k, tail, alpha, ai, lda, bj, ldb, beta, cij, ldc); break
            ML_TILE(1, 1); ML_TILE(1, 2); ML_TILE(1, 3); ML_TILE(1, 4); ML_TILE(1, 5);
            ML_TILE(2, 1); ML_TILE(2, 2); ML_TILE(2, 3); ML_TILE(2, 4); ML_TILE(2, 5);
#undef ML_TILE
            }
            j0 += nr;
        }
    }
}

/* One tile of up to 4 rows x 8 nv columns (nv 1..3, nr <= 8 nv, the last vector masked
 * when nr is short), for PATH_SMALL_W: every element one FMA chain over k, in order, so the
 * bits do not depend on which tile (or thread) holds a column. 4 x 24 has the 12
 * accumulators of 6 x 16 with 3 loads of B and 4 broadcasts a step (7 loads for 12 FMAs,
 * against 8), and n = 40 splits as 24 + 16 with no 8-wide edge: 250 x 40 x 40 went from
 * 101 to 108 GFLOP/s (a standalone prototype with k fixed and no alpha reached 113; the
 * register allocation of this tile is fragile: small edits here measured 41-63). */
ML_TARGET_AVX2 ML_INLINE void small_tile_w(const int mr, const int nv, int ta, int64_t k,
                                           float alpha, const float *a, int64_t lda,
                                           const float *b, int64_t ldb, float beta, float *c,
                                           int64_t ldc, int nr)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i ml = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8 * (nv - 1)), lane);
    const int full = nr == 8 * nv;
    __m256 acc0[MR_W], acc1[MR_W], acc2[MR_W];
    for (int r = 0; r < mr; ++r) acc0[r] = acc1[r] = acc2[r] = _mm256_setzero_ps();
    const int64_t as_p = ta ? lda : 1, as_i = ta ? 1 : lda; /* op(A)[i][p] */
    /* the last vector of B's row: loaded whole, or masked (reads nothing past nr) */
#define ML_LAST(p) (full ? _mm256_loadu_ps(b + (p) * ldb + 8 * (nv - 1)) \
                         : _mm256_maskload_ps(b + (p) * ldb + 8 * (nv - 1), ml))
    if (nv == 3) {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb), b1 = _mm256_loadu_ps(b + p * ldb + 8);
            const __m256 b2 = ML_LAST(p);
            for (int r = 0; r < mr; ++r) {
                const __m256 av = _mm256_broadcast_ss(a + r * as_i + p * as_p);
                acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
                acc2[r] = _mm256_fmadd_ps(av, b2, acc2[r]);
            }
        }
    } else if (nv == 2) {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb), b1 = ML_LAST(p);
            for (int r = 0; r < mr; ++r) {
                const __m256 av = _mm256_broadcast_ss(a + r * as_i + p * as_p);
                acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
            }
        }
    } else {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = ML_LAST(p);
            for (int r = 0; r < mr; ++r)
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0, acc0[r]);
        }
    }
#undef ML_LAST
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int r = 0; r < mr; ++r) {
        float *cr = c + r * ldc;
        const __m256 o3[3] = {_mm256_mul_ps(va, acc0[r]), _mm256_mul_ps(va, acc1[r]),
                              _mm256_mul_ps(va, acc2[r])};
        for (int v = 0; v < nv; ++v) {
            __m256 o = o3[v];
            if (v < nv - 1 || full) {
                if (beta != 0.0f) o = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8 * v), o);
                _mm256_storeu_ps(cr + 8 * v, o);
            } else { /* C is not read when beta == 0: it may hold NaN */
                if (beta != 0.0f) o = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8 * v, ml), o);
                _mm256_maskstore_ps(cr + 8 * v, ml, o);
            }
        }
    }
}

/* The 2 x 40 tile's products: c0 (row 0) and c1 (row 1, when mr is 2), each element one
 * FMA chain over k in order */
ML_TARGET_AVX2 ML_INLINE void tile_2x40_acc(const int mr, int ta, int64_t k, const float *a,
                                            int64_t lda, const float *b, int64_t ldb,
                                            __m256 c0[5], __m256 c1[5])
{
#pragma GCC unroll 5
    for (int v = 0; v < 5; ++v) c0[v] = c1[v] = _mm256_setzero_ps();
    const int64_t as_p = ta ? lda : 1, as_i = ta ? 1 : lda; /* op(A)[i][p] */
    for (int64_t p = 0; p < k; ++p) {
        const __m256 a0 = _mm256_broadcast_ss(a + p * as_p);
        const __m256 a1 = mr > 1 ? _mm256_broadcast_ss(a + as_i + p * as_p) : a0;
#pragma GCC unroll 5
        for (int v = 0; v < 5; ++v) {
            __m256 y = _mm256_loadu_ps(b + p * ldb + 8 * v);
            ML_IN_REGISTER(y);
            c0[v] = _mm256_fmadd_ps(a0, y, c0[v]);
            if (mr > 1) c1[v] = _mm256_fmadd_ps(a1, y, c1[v]);
        }
    }
}

/* One tile of up to 2 rows x 40 columns for PATH_SMALL_W at n = 40: the same FMA chain an
 * element, alpha and beta as small_tile_w, so either tile gives the same bits. 2 x 40 has
 * 10 accumulators for 5 loads of B and 2 broadcasts a step; 10 rows were 4 + 4 + 2 rows of
 * 24 + 16 tiles, the 2-row ones waiting on their FMA chains. */
ML_TARGET_AVX2 ML_INLINE void small_tile_2x40(const int mr, int ta, int64_t k, float alpha,
                                              const float *a, int64_t lda, const float *b,
                                              int64_t ldb, float beta, float *c, int64_t ldc)
{
    /* two 1-D arrays: a 2-D one was kept in memory beside its registers */
    __m256 c0[5], c1[5];
    tile_2x40_acc(mr, ta, k, a, lda, b, ldb, c0, c1);
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 5
    for (int v = 0; v < 5; ++v)
        for (int r = 0; r < mr; ++r) {
            float *o = c + r * ldc + 8 * v;
            __m256 x = _mm256_mul_ps(va, r ? c1[v] : c0[v]);
            if (beta != 0.0f) x = _mm256_fmadd_ps(vb, _mm256_loadu_ps(o), x);
            _mm256_storeu_ps(o, x);
        }
}

/* small_tile_2x40 with alpha 1, beta 0 and an element-wise op applied to each element
 * before it is stored (ml__sgemm_into): x the product's element, u[r] row r's operand,
 * m[r] its mask. Each is the unfused op's formula on the same values (see ML_EPI_*). */
ML_TARGET_AVX2 ML_INLINE void small_tile_2x40_epi(const int mr, const int epi, int64_t k,
                                                  const float *a, int64_t lda, const float *b,
                                                  int64_t ldb, float *c,
                                                  const float *const u[2],
                                                  const float *const m[2])
{
    __m256 c0[5], c1[5];
    tile_2x40_acc(mr, 0, k, a, lda, b, ldb, c0, c1);
#pragma GCC unroll 5
    for (int v = 0; v < 5; ++v)
        for (int r = 0; r < mr; ++r) /* alpha 1: the product's bits */
            _mm256_storeu_ps(c + r * 40 + 8 * v,
                             epi_vec(epi, r ? c1[v] : c0[v], _mm256_loadu_ps(u[r] + 8 * v),
                                     m[r] ? m[r] + 8 * v : NULL));
}

/* The 2- and 1-row tiles as functions of their own: inlined into a loop over tiles, GCC
 * kept alpha and beta in registers through the k loop and spilled a broadcast of A to the
 * stack (58 GFLOP/s instead of 86 at 10 x 40 x 10). */
ML_TARGET_AVX2 __attribute__((noinline)) static void
small_tile_2x40_2(int ta, int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float beta, float *c, int64_t ldc)
{
    small_tile_2x40(2, ta, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

ML_TARGET_AVX2 __attribute__((noinline)) static void
small_tile_2x40_1(int ta, int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float beta, float *c, int64_t ldc)
{
    small_tile_2x40(1, ta, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* C = alpha op(A) op(B) + beta C in register tiles, no packing (PATH_SMALL). A transposed
 * B is first copied to row-major (k x n floats, cheap next to the m k n multiply-adds); k
 * runs in SMALL_KC slices, the later ones accumulating into C. Returns 0 when the copy's
 * buffer cannot be had. */
ML_TARGET_AVX2 static int small_avx2(int wide, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                     float alpha, const float *a, int64_t lda, const float *b,
                                     int64_t ldb, float beta, float *c, int64_t ldc,
                                     const gemm_epi *epi)
{
    if (tb) {
        float *bt = ml__scratch(ML_SCRATCH_GEMM, (size_t)(k * n));
        if (!bt) return 0;
        transpose_avx2(n, k, b, ldb, bt, n);
        b = bt;
        ldb = n;
    }
    const int64_t as_i = ta ? 1 : lda;
    if (k > SMALL_KC) {
        const int64_t as_p = ta ? lda : 1;
        for (int64_t p0 = 0; p0 < k; p0 += SMALL_KC) {
            const int64_t kc = min64(SMALL_KC, k - p0);
            small_avx2(wide, ta, 0, m, n, kc, alpha, a + p0 * as_p, lda, b + p0 * ldb, ldb,
                       p0 ? 1.0f : beta, c, ldc, p0 + kc >= k ? epi : NULL);
        }
        return 1;
    }
    if (wide && n == 40) { /* 2 x 40 tiles (10 x 40 x 10 x 25 tasks: 2.61 -> 2.33 us) */
        for (int64_t i0 = 0; i0 < m; i0 += 2) {
            (m - i0 >= 2 ? small_tile_2x40_2 : small_tile_2x40_1)(ta, k, alpha, a + i0 * as_i, lda,
                                                                  b, ldb, beta, c + i0 * ldc, ldc);
            if (epi) epi_tile_avx2(epi, c + i0 * ldc, ldc, i0, 0, (int)min64(2, m - i0), 40);
        }
        return 1;
    }
    if (wide) { /* PATH_SMALL_W: 4-row tiles, 24 columns first where n % 16 == 8, then 16s */
        for (int64_t i0 = 0; i0 < m; i0 += MR_W) {
            const int mr = (int)min64(MR_W, m - i0);
            const float *ai = a + i0 * as_i;
            for (int64_t j0 = 0; j0 < n;) {
                const int64_t left = n - j0;
                const int nr = (int)(left % 16 == 8 && left >= 24 ? 24 : min64(16, left));
                const int nv = (nr + 7) / 8;
                float *cij = c + i0 * ldc + j0;
#define ML_W_TILE(MR)                                                                          \
    (nv == 3   ? small_tile_w(MR, 3, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr) \
     : nv == 2 ? small_tile_w(MR, 2, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr) \
               : small_tile_w(MR, 1, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr))
                switch (mr) {
                case 4: ML_W_TILE(4); break;
                case 3: ML_W_TILE(3); break;
                case 2: ML_W_TILE(2); break;
                default: ML_W_TILE(1); break;
                }
#undef ML_W_TILE
                if (epi) epi_tile_avx2(epi, cij, ldc, i0, j0, mr, nr);
                j0 += nr;
            }
        }
        return 1;
    }
    for (int64_t i0 = 0; i0 < m; i0 += MR_S) {
        const int mr = (int)min64(MR_S, m - i0);
        const float *ai = a + i0 * as_i;
        for (int64_t j0 = 0; j0 < n; j0 += 16) {
            const int nr = (int)min64(16, n - j0);
            float *cij = c + i0 * ldc + j0;
            switch (mr) {
            case 6: small_tile(6, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 5: small_tile(5, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 4: small_tile(4, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 3: small_tile(3, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 2: small_tile(2, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            default: small_tile(1, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            }
            if (epi) epi_tile_avx2(epi, cij, ldc, i0, j0, mr, nr);
        }
    }
    return 1;
}

ML_TARGET_AVX2 static void direct_avx2(int ta, int tb, int64_t m, int64_t n, int64_t k,
                                       float alpha, const float *a, int64_t lda,
                                       const float *b, int64_t ldb, float beta, float *c,
                                       int64_t ldc)
{
    direct_body(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#endif

/* ---------------------------------------------------------------- dispatch */

/* the GEMM's kernels (gemm_path) follow the one instruction-set choice */
ML_KERNEL_SITE(gemm, "gemm", ML_HAVE_AVX2)

/* Which kernel computes a product, chosen once from its whole shape: the parts of a
 * threaded product use the same one (a part's smaller shape could otherwise pick another
 * kernel, with another rounding, and the result would depend on the thread count). */
enum {
    PATH_PORTABLE, PATH_PACKED,
    PATH_SMALL,   /* small_avx2: register tiles, B^T copied, k in slices */
    PATH_SMALL_W, /* small_avx2, n % 16 == 8: 4 x 24 / 4 x 16 tiles, 2 x 40 at n = 40 */
    PATH_DOTS_NT, /* dots_nt_avx2: A B^T, few columns */
    PATH_OUTER,   /* outer_avx2: k == 1 */
    PATH_DOTS,    /* dots_avx2: n == 1, rows of A */
    PATH_GEMV_T,  /* gemv_t_avx2: n == 1, A transposed */
    PATH_ROW,     /* row_avx2: m == 1, B not transposed */
};

static int gemm_path(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k)
{
    if (!use_avx2) return PATH_PORTABLE;
    if (k <= 0) return PATH_PACKED;
    /* any k: B's few rows stay in L1 while rows of A stream past (MAML Omniglot's low-rank
     * x A^T, 75x5x784 per task, ran at 15 % of the FMA peak through the packed driver) */
    if (!ta && tb && n < DOTS_NT_MAX_N && k >= 8) return PATH_DOTS_NT;
    if (k == 1) return PATH_OUTER;
    if (n == 1) return ta ? PATH_GEMV_T : PATH_DOTS;
    if (m == 1 && !tb && k <= SMALL_MAX_K) return PATH_ROW;
    if (n < 8 && m > 1) return PATH_PACKED;  /* lanes along n would be mostly empty */
    /* past SMALL_MAX_K only for a handful of rows (5x256x784: 74 -> 87 GFLOP/s). Not for
     * MAML Omniglot's 2400x256x784 (96 packed, 91 unpacked), nor the dense layer at batch
     * 32: 32x128x784 gains 8 % on one thread, but split over two its step was 5 % slower */
    if (k > SMALL_MAX_K && m > SMALL_LONG_K_MAX_M) return PATH_PACKED;
    /* the unpacked kernel reads op(B) row-major: B^T is first copied, k x n floats */
    if (tb && (double)k * (double)n > (double)SMALL_MAX_K * SMALL_MAX_N) return PATH_PACKED;
    const int small = (double)m * (double)n * (double)k <= SMALL_MACS ||
                      (n <= SMALL_MAX_N && (!ta || m <= 64 || k <= SMALL_KC));
    if (!small) return PATH_PACKED;
    /* n = 24, 40, 56, ...: 24 + 16s, no 8-wide edge; from 8 rows (5 x 56 x 256 as one
     * 6-row tile beat a 4-row and a 1-row one: 90 against 78 GFLOP/s) */
    return n % 16 == 8 && n >= 24 && m >= 2 * MR_W ? PATH_SMALL_W : PATH_SMALL;
}

/* The product by path, and epi on its tiles where the kernel applies it (the unpacked
 * tiles, the packed drivers): 1 when it did, 0 when C still needs it. */
static int sgemm_run(int path, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                     float *c, int64_t ldc, const gemm_epi *epi)
{
    if (k <= 0 || alpha == 0.0f) { /* BLAS: op(A)@op(B) is not computed at all */
        scale_c(m, n, beta, c, ldc);
        return 0;
    }
#if ML_HAVE_AVX2
    if ((path == PATH_SMALL || path == PATH_SMALL_W) &&
        small_avx2(path == PATH_SMALL_W, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                   epi))
        return 1;
    if (path == PATH_DOTS_NT) {
        dots_nt_avx2(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    if (path == PATH_OUTER) {
        outer_avx2(ta, tb, m, n, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    /* op(B) is one column: contiguous when B is transposed (1 x k), else stride ldb */
    const int64_t incx = tb ? 1 : ldb;
    if (path == PATH_GEMV_T) {
        gemv_t_avx2(m, k, alpha, a, lda, b, incx, beta, c, ldc);
        return 0;
    }
    if (path == PATH_ROW) {
        row_avx2(ta, n, k, alpha, a, lda, b, ldb, beta, c);
        return 0;
    }
    if (path == PATH_DOTS) {
        const float *x = b;
        if (incx != 1) { /* a strided column: k floats gathered */
            float *xb = ml__scratch(ML_SCRATCH_GEMM, (size_t)k);
            if (!xb) { /* no buffer: the portable loops */
                direct_portable(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
                return 0;
            }
            for (int64_t p = 0; p < k; ++p) xb[p] = b[p * incx];
            x = xb;
        }
        dots_avx2(m, k, alpha, a, lda, x, beta, c, ldc);
        return 0;
    }
#endif
    const int use_avx2 = path != PATH_PORTABLE;
#if !ML_HAVE_AVX2
    (void)use_avx2;
#endif
    if ((double)m * (double)n * (double)k <= TINY_FLOPS) {
#if ML_HAVE_AVX2
        if (use_avx2) {
            direct_avx2(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            return 0;
        }
#endif
        direct_portable(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    const blocking bl = plan(tb, m, n, k);
    const size_t a_floats = (bl.a_floats + 15) & ~(size_t)15; /* keep B 64-byte aligned */
    float *buf = ml__scratch(ML_SCRATCH_GEMM, a_floats + bl.b_floats);
    if (!buf) {
        direct_portable(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
#if ML_HAVE_AVX2
    if (use_avx2) {
        driver_avx2(&bl, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, buf,
                    buf + a_floats, epi);
        return 1;
    }
#endif
    driver_portable(&bl, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, buf,
                    buf + a_floats, epi);
    return 1;
}

/* C = alpha op(A) op(B) + beta C by path, then epi on C's elements (NULL: none): on each
 * tile as it is final where the kernel has tiles, else in a pass over C after it. */
static void sgemm(int path, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                  float *c, int64_t ldc, const gemm_epi *epi)
{
    if (m <= 0 || n <= 0) return;
    if (!sgemm_run(path, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epi) && epi)
        for (int64_t i = 0; i < m; ++i) epi_tile_scalar(epi, c + i * ldc, ldc, i, 0, 1, (int)n);
}

/* ------------------------------------------------------------- threading */

/* A large product is split over the pool into blocks of rows of C (multiples of MR) or,
 * when C has few rows, blocks of columns (multiples of NR). Every element of C is
 * computed by the same micro-kernel with the same k blocking (kc depends on k alone) and
 * the parts are never tiny, so the result is bit-identical to one thread's. */
#define PAR_MIN_MACS (1 << 21) /* ~20 us of one core: below, waking a worker costs more
                                (1 << 22 left the 784-128 dense layer at batch 32 on one core) */

typedef struct gemm_job {
    int path, ta, tb;
    int64_t m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c;
    int64_t lda, ldb, ldc;
    int split_rows;
    int64_t step; /* rows or columns per part */
    const gemm_epi *epi; /* or NULL */
} gemm_job;

static void gemm_part(void *ctx, int64_t i)
{
    const gemm_job *j = ctx;
    const int64_t lo = i * j->step;
    gemm_epi e; /* this part's place in the whole product */
    if (j->epi) {
        e = *j->epi;
        if (j->split_rows)
            e.row0 += lo;
        else
            e.col0 += lo;
    }
    if (j->split_rows) {
        const int64_t rows = min64(j->step, j->m - lo);
        const float *a = j->ta ? j->a + lo : j->a + lo * j->lda;
        sgemm(j->path, j->ta, j->tb, rows, j->n, j->k, j->alpha, a, j->lda, j->b, j->ldb,
              j->beta, j->c + lo * j->ldc, j->ldc, j->epi ? &e : NULL);
    } else {
        const int64_t cols = min64(j->step, j->n - lo);
        const float *b = j->tb ? j->b + lo * j->ldb : j->b + lo;
        sgemm(j->path, j->ta, j->tb, j->m, cols, j->k, j->alpha, j->a, j->lda, b, j->ldb,
              j->beta, j->c + lo, j->ldc, j->epi ? &e : NULL);
    }
}

static void sgemm_threaded(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k,
                           float alpha, const float *a, int64_t lda, const float *b,
                           int64_t ldb, float beta, float *c, int64_t ldc, const gemm_epi *epi)
{
    const double macs = (double)m * (double)n * (double)k;
    const int path = gemm_path(use_avx2, ta, tb, m, n, k);
    int t = ml__in_parallel() ? 1 : ml_get_num_threads();
    if (t > 1 && macs >= PAR_MIN_MACS && k > 0 && alpha != 0.0f) {
        gemm_job j = {path, ta, tb, m, n, k, alpha, beta, a, b, c, lda, ldb, ldc, 0, 0, epi};
        /* parts: enough for the threads, each at least PAR_MIN_MACS / 2 */
        int64_t parts = (int64_t)(macs / (PAR_MIN_MACS / 2));
        if (parts > t) parts = t;
        /* Each part reads all of the operand that is not split: split the larger one
         * (rows of A when m >= n, else columns of B), if it has enough tiles. */
        const int rows_ok = m >= parts * 4 * MR, cols_ok = n >= parts * 2 * NR;
        if (rows_ok && (m >= n || !cols_ok)) {
            j.split_rows = 1;
            j.step = round_up(ceil_div(m, parts), MR);
            parts = ceil_div(m, j.step);
        } else if (cols_ok) {
            j.step = round_up(ceil_div(n, parts), NR);
            parts = ceil_div(n, j.step);
        } else {
            parts = 1;
        }
        if (parts > 1) {
            ml__parallel_for(parts, t, gemm_part, &j);
            return;
        }
    }
    sgemm(path, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epi);
}

void ml_sgemm(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
              int64_t ldc)
{
    sgemm_threaded(ml__cpu_avx2(), transpose_a != 0, transpose_b != 0, m, n, k,
                   alpha, a, lda, b, ldb, beta, c, ldc, NULL);
}

#if ML_HAVE_AVX2
/* A batch of PATH_ROW or PATH_GEMV_T products (sums of k rows of 40 weighted by a vector:
 * MAML's x^T dZ and dZ^T w per task), lanes40 inlined into the loop over products: the
 * same calls row_avx2 and gemv_t_avx2 make, without sgemm's dispatch per product. */
ML_TARGET_AVX2 static void lanes40_batch(int row, int ta, int tb, int64_t m, int64_t n,
                                         int64_t k, float alpha, const float *a, int64_t lda,
                                         int64_t sa, const float *b, int64_t ldb, int64_t sb,
                                         float beta, float *c, int64_t ldc, int64_t sc,
                                         int64_t count)
{
    const int64_t incx = tb ? 1 : ldb; /* GEMV_T: op(B) is one column */
    for (int64_t t = 0; t < count; ++t) {
        const float *at = a + t * sa, *bt = b + t * sb;
        float *ct = c + t * sc;
        if (row)
            for (int64_t j0 = 0; j0 < n; j0 += 40)
                lanes40((int)min64(40, n - j0), k, at, ta ? lda : 1, bt + j0, ldb, alpha, beta,
                        ct + j0, 1);
        else if (ldc == 1) /* C one column, contiguous: the store loop without a stride */
            for (int64_t i0 = 0; i0 < m; i0 += 40)
                lanes40((int)min64(40, m - i0), k, bt, incx, at + i0, lda, alpha, beta, ct + i0, 1);
        else
            for (int64_t i0 = 0; i0 < m; i0 += 40)
                lanes40((int)min64(40, m - i0), k, bt, incx, at + i0, lda, alpha, beta,
                        ct + i0 * ldc, ldc);
    }
}
#endif

/* `count` products of one shape at fixed strides, on the calling thread, the kernel chosen
 * once: MAML's per-task products (25 tasks of 10x40 outer products, ...) cost less than
 * their dispatch through ml_sgemm one by one. Each equals ml_sgemm of the same shape. */
void ml__sgemm_batch(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k,
                     float alpha, const float *a, int64_t lda, int64_t stride_a, const float *b,
                     int64_t ldb, int64_t stride_b, float beta, float *c, int64_t ldc,
                     int64_t stride_c, int64_t count)
{
    const int ta = transpose_a != 0, tb = transpose_b != 0;
    const int path = gemm_path(ml__cpu_avx2(), ta, tb, m, n, k);
#if ML_HAVE_AVX2
    if (path == PATH_DOTS && (tb || ldb == 1) && alpha != 0.0f && k > 0 && m > 0) {
        for (int64_t t = 0; t < count; ++t) /* op(B) contiguous: no gather, no dispatch */
            dots_avx2(m, k, alpha, a + t * stride_a, lda, b + t * stride_b, beta,
                      c + t * stride_c, ldc);
        return;
    }
    if ((path == PATH_ROW || path == PATH_GEMV_T) && alpha != 0.0f && k > 0 && m > 0 && n > 0) {
        lanes40_batch(path == PATH_ROW, ta, tb, m, n, k, alpha, a, lda, stride_a, b, ldb,
                      stride_b, beta, c, ldc, stride_c, count);
        return;
    }
#endif
    for (int64_t t = 0; t < count; ++t)
        sgemm(path, ta, tb, m, n, k, alpha, a + t * stride_a, lda, b + t * stride_b, ldb, beta,
              c + t * stride_c, ldc, NULL);
}

/* (gemm.h) On the AVX2 kernel every k == 1 product with alpha 1 and beta 0 is outer_avx2,
 * one multiply per element (alpha 1 multiplies exactly where it is applied), whatever the
 * transposes, strides, split or rows of C a call covers; that is what makes a fused
 * reader's rows the same bits. The portable kernel sums (0 + a b: -0 would become +0), so
 * there the caller computes the product itself. */
int ml__sgemm_outer_rows(int64_t rows, int64_t n, const float *a, const float *b, float *c)
{
#if ML_HAVE_AVX2
    if (!ml__cpu_avx2()) return 0;
    if (rows > 0 && n > 0) outer_avx2(0, 0, rows, n, 1.0f, a, 1, b, n, 0.0f, c, n);
    return 1;
#else
    (void)rows, (void)n, (void)a, (void)b, (void)c;
    return 0;
#endif
}

#if ML_HAVE_AVX2
/* the epilogue tiles as functions of their own, one per op and row count (as
 * small_tile_2x40_2: inlined into the loop over tiles, GCC spilled) */
#define ML_EPI_TILE(NAME, MR, EPI)                                                          \
    ML_TARGET_AVX2 __attribute__((noinline)) static void NAME(                              \
        int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,      \
        const float *const u[2], const float *const m[2])                                   \
    {                                                                                       \
        small_tile_2x40_epi(MR, EPI, k, a, lda, b, ldb, c, u, m);                           \
    }
ML_EPI_TILE(epi_add_2, 2, ML_EPI_ADD)
ML_EPI_TILE(epi_add_1, 1, ML_EPI_ADD)
ML_EPI_TILE(epi_add_relu_2, 2, ML_EPI_ADD_RELU)
ML_EPI_TILE(epi_add_relu_1, 1, ML_EPI_ADD_RELU)
ML_EPI_TILE(epi_relu_grad_2, 2, ML_EPI_RELU_GRAD)
ML_EPI_TILE(epi_relu_grad_1, 1, ML_EPI_RELU_GRAD)
ML_EPI_TILE(epi_add_mask_2, 2, ML_EPI_ADD_MASK)
ML_EPI_TILE(epi_add_mask_1, 1, ML_EPI_ADD_MASK)
#undef ML_EPI_TILE
typedef void (*epi_tile_fn)(int64_t, const float *, int64_t, const float *, int64_t, float *,
                            const float *const[2], const float *const[2]);
#endif

int ml__sgemm_into(int transpose_b, int64_t m, int64_t n, int64_t k, const float *a,
                   const float *b, int epi, const float *u, int64_t u_div, const float *mask,
                   float *out)
{
#if ML_HAVE_AVX2
    const int tb = transpose_b != 0;
    if (!ml__cpu_avx2() || k <= 0 || m <= 0 || n <= 0 || epi < ML_EPI_ADD ||
        epi > ML_EPI_ADD_MASK || u_div < 1)
        return 0;
    const int path = gemm_path(1, 0, tb, m, n, k);
    /* PATH_SMALL_W at n = 40 with k in one slice, one thread: the op in the 2 x 40 tiles'
     * registers. Else the packed or unpacked tiles, threaded as ml_sgemm, each applying
     * the op to its tile once it is final, from L1. */
    if (n != 40 || k > SMALL_KC || (double)m * (double)n * (double)k >= PAR_MIN_MACS ||
        path != PATH_SMALL_W) {
        if (path != PATH_PACKED && path != PATH_SMALL && path != PATH_SMALL_W) return 0;
        if (!a) return 1;
        const gemm_epi e = {epi, u, mask, u_div, n, 0, 0};
        sgemm_threaded(1, 0, tb, m, n, k, 1.0f, a, k, b, tb ? k : n, 0.0f, out, n, &e);
        return 1;
    }
    if (!a) return 1; /* the question alone */
    const int64_t ldb = tb ? k : n;
    if (tb) { /* as small_avx2: B^T copied to row-major first */
        float *bt = ml__scratch(ML_SCRATCH_GEMM, (size_t)(k * n));
        if (!bt) return 0;
        transpose_avx2(n, k, b, ldb, bt, n);
        b = bt;
    }
    static const epi_tile_fn tiles[4][2] = {{epi_add_1, epi_add_2},
                                            {epi_add_relu_1, epi_add_relu_2},
                                            {epi_relu_grad_1, epi_relu_grad_2},
                                            {epi_add_mask_1, epi_add_mask_2}};
    for (int64_t i0 = 0; i0 < m; i0 += 2) {
        const int two = m - i0 >= 2;
        const int64_t i1 = two ? i0 + 1 : i0;
        const float *const ur[2] = {u + i0 / u_div * n, u + i1 / u_div * n};
        const float *const mr[2] = {mask ? mask + i0 * n : NULL, mask ? mask + i1 * n : NULL};
        tiles[epi - ML_EPI_ADD][two](k, a + i0 * k, k, b, n, out + i0 * n, ur, mr);
    }
    return 1;
#else
    (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)b, (void)epi, (void)u;
    (void)u_div, (void)mask, (void)out;
    return 0;
#endif
}

void ml_sgemm_portable(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k,
                       float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                       float beta, float *c, int64_t ldc)
{
    sgemm(PATH_PORTABLE, transpose_a != 0, transpose_b != 0, m, n, k, alpha, a, lda, b, ldb,
          beta, c, ldc, NULL);
}
