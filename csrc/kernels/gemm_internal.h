/*
 * gemm_internal.h — what the GEMM's files share (internal to csrc/kernels/gemm*.c).
 *
 * The single-precision GEMM, C = alpha op(A) op(B) + beta C (row-major), is laid out as
 * BLIS lays out its level-3 operations, one file per concern:
 *
 *   gemm.c           the front: ml_sgemm and the batched and fused entry points, and the
 *                    run of one product by the kernel its path names
 *   gemm_path.c      the path table: which kernel computes a product, from its shape
 *   gemm_config.h    register tiles, cache blocks and path thresholds, each with the
 *                    benchmark that set it
 *   gemm_thread.c    the split of a large product over the thread pool
 *   gemm_driver.c    the five loops around the micro-kernel (the packed path), and the
 *                    plain loops of tiny products
 *   gemm_pack.c      packing blocks of A and B into panels; B^T copied to row-major
 *   gemm_ukernel.c   the micro-kernels: AVX2+FMA 6 x 16 and portable C
 *   gemm_small.c     unpacked register-tiled kernels for small products
 *   gemm_vec.c       products shaped like vectors: outer products, matrix-vector, A B^T
 *                    with few columns
 *   gemm_epilogue.[ch] element-wise ops applied to C's tiles as they are final
 *
 * with the per-thread buffers in scratch.c and the instruction-set choice in cpu.c.
 *
 * The determinism contract: a product's path depends on its shape (and the instruction
 * set, fixed for the process) alone, never on the thread count or a timing, and the parts
 * of a threaded product all run the path of the whole; every kernel computes an element
 * of C the same way wherever its tile or part starts. So a product rounds the same on any
 * number of threads.
 */
#ifndef ML_KERNELS_GEMM_INTERNAL_H
#define ML_KERNELS_GEMM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cpu.h"
#include "gemm.h"
#include "gemm_config.h"
#include "gemm_epilogue.h"

#if ML_HAVE_AVX2
#include <immintrin.h>
/* y is used from a register: GCC otherwise folds one load into every FMA that reads it */
#define ML_IN_REGISTER(y) __asm__("" : "+x"(y))
#endif

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* C = beta C (beta == 0 writes zeros: C is not read, it may hold NaN) */
static inline void gemm_scale_c(int64_t m, int64_t n, float beta, float *c, int64_t ldc) {
    for (int64_t i = 0; i < m; ++i) {
        float *ci = c + i * ldc;
        if (beta == 0.0f) {
            for (int64_t j = 0; j < n; ++j) ci[j] = 0.0f; /* never read: C may be NaN */
        } else if (beta != 1.0f) {
            for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
        }
    }
}

/* ------------------------------------------------------------ paths (gemm_path.c) */

/* The kernels a product can run on, chosen by ml__gemm_path from its whole shape. */
enum {
    PATH_PORTABLE, /* the portable instruction set: the packed driver's C micro-kernel */
    PATH_PACKED,   /* the packed driver (AVX2 micro-kernel), plain loops when tiny */
    PATH_SMALL,    /* ml__gemm_small_avx2: register tiles, B^T copied, k in slices */
    PATH_SMALL_W,  /* ml__gemm_small_avx2, n % 16 == 8: 4 x 24 / 4 x 16 tiles, 2 x 40 at n = 40 */
    PATH_DOTS_NT,  /* ml__gemm_dots_nt_avx2: A B^T, few columns */
    PATH_OUTER,    /* ml__gemm_outer_avx2: k == 1 */
    PATH_DOTS,     /* ml__gemm_dots_avx2: n == 1, rows of A */
    PATH_GEMV_T,   /* ml__gemm_gemv_t_avx2: n == 1, A transposed */
    PATH_ROW,      /* ml__gemm_row_avx2: m == 1, B not transposed */
};

ML_HIDDEN int ml__gemm_path(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k);

/* ------------------------------------------------------------ the front (gemm.c) */

/* C = alpha op(A) op(B) + beta C on the kernel of path, then epi (NULL: none) on C's
 * elements: on each tile as it is final where the kernel has tiles, else in a pass over C
 * after it. On the calling thread. */
ML_HIDDEN void ml__gemm_run(int path, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                            float *c, int64_t ldc, const gemm_epi *epi);

/* ------------------------------------------------------------ threading (gemm_thread.c) */

/* The product on the path of its shape, split over the thread pool when it is large (the
 * calling thread alone inside a parallel region). */
ML_HIDDEN void ml__gemm_threaded(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                 float alpha, const float *a, int64_t lda, const float *b,
                                 int64_t ldb, float beta, float *c, int64_t ldc,
                                 const gemm_epi *epi);

/* ------------------------------------------------------------ driver (gemm_driver.c) */

/* Plain loops, no buffers: tiny products, and the fallback when a buffer cannot be had. */
ML_HIDDEN void ml__gemm_direct_portable(int ta, int tb, int64_t m, int64_t n, int64_t k,
                                        float alpha, const float *a, int64_t lda, const float *b,
                                        int64_t ldb, float beta, float *c, int64_t ldc);
ML_HIDDEN void ml__gemm_direct_avx2(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                                    const float *a, int64_t lda, const float *b, int64_t ldb,
                                    float beta, float *c, int64_t ldc);

/* The packed path (k > 0, alpha != 0): the five loops around the AVX2 (use_avx2) or
 * portable micro-kernel, epi applied to each tile once it is final. 1 when done; 0 when
 * the packing buffer cannot be had (the plain loops computed C, without epi). */
ML_HIDDEN int ml__gemm_packed(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k,
                              float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                              float beta, float *c, int64_t ldc, const gemm_epi *epi);

/* ------------------------------------------------------------ packing (gemm_pack.c) */

/* A block (mc x kc of op(A), from row ic, column pc) into MR-tall panels, each stored
 * column by column (MR floats per k step); rows past mc are zero. */
ML_HIDDEN void ml__gemm_pack_a(int ta, int64_t mc, int64_t kc, const float *a, int64_t lda,
                               int64_t ic, int64_t pc, float *restrict dst);
/* B block (kc x nc of op(B), from row pc, column jc) into NR-wide panels, each stored row
 * by row (NR floats per k step); columns past nc are zero. */
ML_HIDDEN void ml__gemm_pack_b(int tb, int64_t kc, int64_t nc, const float *b, int64_t ldb,
                               int64_t pc, int64_t jc, float *restrict dst);
/* the same two with AVX2 register transposes (the same values) */
ML_HIDDEN void ml__gemm_pack_a_avx2(int ta, int64_t mc, int64_t kc, const float *a, int64_t lda,
                                    int64_t ic, int64_t pc, float *restrict dst);
ML_HIDDEN void ml__gemm_pack_b_avx2(int tb, int64_t kc, int64_t nc, const float *b, int64_t ldb,
                                    int64_t pc, int64_t jc, float *restrict dst);
/* dst (cols x rows, leading dimension ldd) = src^T for src (rows x cols, ld lds) */
ML_HIDDEN void ml__gemm_transpose_avx2(int64_t rows, int64_t cols, const float *src, int64_t lds,
                                       float *dst, int64_t ldd);

/* ------------------------------------------------------------ micro-kernels (gemm_ukernel.c) */

/* C (mr x nr of an MR x NR tile) = alpha a b + beta C, C not read when beta == 0. a: a
 * packed MR x kc panel; b: kc rows of NR floats, row stride bs (NR when packed, ldb when
 * B is read in place). */
ML_HIDDEN void ml__gemm_ukr_portable(int64_t kc, const float *restrict a, const float *restrict b,
                                     int64_t bs, float *c, int64_t ldc, float alpha, float beta,
                                     int mr, int nr);
ML_HIDDEN void ml__gemm_ukr_avx2(int64_t kc, const float *restrict a, const float *restrict b,
                                 int64_t bs, float *c, int64_t ldc, float alpha, float beta, int mr,
                                 int nr);

/* ------------------------------------------------------------ small shapes (gemm_small.c) */

/* PATH_SMALL (wide 0) and PATH_SMALL_W (wide 1): C = alpha op(A) op(B) + beta C in
 * register tiles, no packing, epi on each tile once final. 0 when B^T's copy cannot be
 * had (nothing computed). */
ML_HIDDEN int ml__gemm_small_avx2(int wide, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                  float alpha, const float *a, int64_t lda, const float *b,
                                  int64_t ldb, float beta, float *c, int64_t ldc,
                                  const gemm_epi *epi);
/* out (m x 40, row-major) = epi(A op(B), u, mask) in 2 x 40 tiles, the op in registers
 * before the store: ml__sgemm_into's one-thread case, arguments as there (n = 40). 0 when
 * B^T's copy cannot be had (nothing computed). */
ML_HIDDEN int ml__gemm_2x40_epi_avx2(int tb, int epi, int64_t m, int64_t k, const float *a,
                                     const float *b, const float *u, int64_t u_div,
                                     const float *mask, float *out);

/* ------------------------------------------------------------ vector shapes (gemm_vec.c) */

ML_HIDDEN void ml__gemm_outer_avx2(int ta, int tb, int64_t m, int64_t n, float alpha,
                                   const float *a, int64_t lda, const float *b, int64_t ldb,
                                   float beta, float *c, int64_t ldc);
ML_HIDDEN void ml__gemm_dots_avx2(int64_t m, int64_t k, float alpha, const float *a, int64_t lda,
                                  const float *x, float beta, float *c, int64_t ldc);
ML_HIDDEN void ml__gemm_gemv_t_avx2(int64_t m, int64_t k, float alpha, const float *a, int64_t lda,
                                    const float *x, int64_t incx, float beta, float *c,
                                    int64_t ldc);
ML_HIDDEN void ml__gemm_row_avx2(int ta, int64_t n, int64_t k, float alpha, const float *a,
                                 int64_t lda, const float *b, int64_t ldb, float beta, float *c);
ML_HIDDEN void ml__gemm_dots_nt_avx2(int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                                     int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                                     int64_t ldc);
/* count PATH_ROW (row 1) or PATH_GEMV_T (row 0) products at fixed strides */
ML_HIDDEN void ml__gemm_lanes40_batch(int row, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                      float alpha, const float *a, int64_t lda, int64_t sa,
                                      const float *b, int64_t ldb, int64_t sb, float beta, float *c,
                                      int64_t ldc, int64_t sc, int64_t count);

#endif /* ML_KERNELS_GEMM_INTERNAL_H */
