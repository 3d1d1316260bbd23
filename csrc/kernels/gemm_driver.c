/*
 * gemm_driver.c — the packed path: the five loops around the micro-kernel, as Goto & van
 * de Geijn, "Anatomy of high-performance matrix multiplication" (ACM TOMS 2008), refactored
 * by BLIS:
 *
 *   loop 5  for jc in n step NC          B block kc x nc lives in L3
 *   loop 4    for pc in k step KC        rank-kc update; pack B[pc:, jc:] into NR-wide panels
 *   loop 3      for ic in m step MC      A block mc x kc lives in L2; pack it into MR-tall panels
 *   loop 2        for jr in nc step NR   one B panel (kc x NR) stays in L1 across loop 1
 *   loop 1          for ir in mc step MR micro-kernel: MR x NR tile of C held in registers
 *
 * When B is not transposed and op(A) fits one MC block, each B panel is used by a single
 * sweep of loop 1, so the micro-kernel reads B in place (row stride ldb) instead of copying
 * it first; only a ragged last panel is packed (for its padding). Also here: the plain
 * loops of products too small to pay for packing.
 */
#include "gemm_internal.h"
#include "scratch.h"

#include <stddef.h>

/* ------------------------------------------------------------ unpacked loops */

/* (gemm_internal.h) Inner loops run along contiguous memory where they can so the
 * compiler vectorizes them (axpy form when B is not transposed, dot form with 8 partial
 * sums otherwise). */
ML_INLINE void direct_body(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                           const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                           float *c, int64_t ldc) {
    gemm_scale_c(m, n, beta, c, ldc);
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

void ml__gemm_direct_portable(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                              const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                              float *c, int64_t ldc) {
    direct_body(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#if ML_HAVE_AVX2
ML_TARGET_AVX2 void ml__gemm_direct_avx2(int ta, int tb, int64_t m, int64_t n, int64_t k,
                                         float alpha, const float *a, int64_t lda, const float *b,
                                         int64_t ldb, float beta, float *c, int64_t ldc) {
    direct_body(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#endif

/* ------------------------------------------------------------ the five loops */

/* The blocks of one product: the cache blocks of gemm_config.h balanced to its shape. */
typedef struct blocking {
    int64_t mc, kc, nc; /* balanced block sizes */
    int direct_b;       /* read op(B) in place instead of packing it */
    size_t a_floats, b_floats;
} blocking;

static blocking plan(int tb, int64_t m, int64_t n, int64_t k) {
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

/* The five loops around the micro-kernel (BLIS's gemm variant: Van Zee & van de Geijn,
 * "BLIS: a framework for rapidly instantiating BLAS functionality", ACM TOMS 2015), once
 * per instruction set, each calling its own packers, micro-kernel and epilogue. */
#define ML_DEFINE_DRIVER(NAME, UKR, PACK_A, PACK_B, EPI_TILE, ATTR)                           \
    ATTR static void NAME(const blocking *bl, int ta, int tb, int64_t m, int64_t n, int64_t k, \
                          float alpha, const float *a, int64_t lda, const float *b,           \
                          int64_t ldb, float beta, float *c, int64_t ldc, float *abuf,        \
                          float *bbuf, const gemm_epi *epi)                                   \
    {                                                                                         \
        /* loop 5: column blocks of C and B, nc wide (a B block lives in L3) */               \
        for (int64_t jc = 0; jc < n; jc += bl->nc) {                                          \
            const int64_t nc = min64(bl->nc, n - jc);                                         \
            /* loop 4: rank-kc updates; B[pc:, jc:] packed into NR-wide panels */             \
            for (int64_t pc = 0; pc < k; pc += bl->kc) {                                      \
                const int64_t kc = min64(bl->kc, k - pc);                                     \
                const float beta_eff = pc == 0 ? beta : 1.0f; /* later passes accumulate */   \
                if (!bl->direct_b) PACK_B(tb, kc, nc, b, ldb, pc, jc, bbuf);                  \
                /* loop 3: row blocks of C and A, mc tall; A's block packed (lives in L2) */  \
                for (int64_t ic = 0; ic < m; ic += bl->mc) {                                  \
                    const int64_t mc = min64(bl->mc, m - ic);                                 \
                    PACK_A(ta, mc, kc, a, lda, ic, pc, abuf);                                 \
                    /* loop 2: NR-wide panels of B (one stays in L1 across loop 1) */        \
                    for (int64_t jr = 0; jr < nc; jr += NR) {                                 \
                        const int nr = (int)min64(NR, nc - jr);                               \
                        const float *bp = bbuf + jr * kc;                                     \
                        int64_t bs = NR;                                                      \
                        if (bl->direct_b) {                                                   \
                            if (nr == NR) {                                                   \
                                bp = b + pc * ldb + jc + jr;                                  \
                                bs = ldb;                                                     \
                            } else { /* ragged last panel: pad it */                         \
                                PACK_B(0, kc, nr, b, ldb, pc, jc + jr, bbuf);                 \
                                bp = bbuf;                                                    \
                            }                                                                 \
                        }                                                                     \
                        float *cj = c + ic * ldc + jc + jr;                                   \
                        /* loop 1: MR-tall panels of A: the micro-kernel, an MR x NR tile */  \
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

ML_DEFINE_DRIVER(driver_portable, ml__gemm_ukr_portable, ml__gemm_pack_a, ml__gemm_pack_b,
                 ml__gemm_epi_tile_scalar, )
#if ML_HAVE_AVX2
ML_DEFINE_DRIVER(driver_avx2, ml__gemm_ukr_avx2, ml__gemm_pack_a_avx2, ml__gemm_pack_b_avx2,
                 ml__gemm_epi_tile_avx2, ML_TARGET_AVX2)
#endif

int ml__gemm_packed(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                    int64_t ldc, const gemm_epi *epi) {
    const blocking bl = plan(tb, m, n, k);
    const size_t a_floats = (bl.a_floats + 15) & ~(size_t)15; /* keep B 64-byte aligned */
    float *buf = ml__scratch(ML_SCRATCH_GEMM, a_floats + bl.b_floats);
    if (!buf) {
        ml__gemm_direct_portable(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
#if ML_HAVE_AVX2
    if (use_avx2) {
        driver_avx2(&bl, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, buf, buf + a_floats,
                    epi);
        return 1;
    }
#endif
    driver_portable(&bl, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, buf, buf + a_floats,
                    epi);
    return 1;
}
