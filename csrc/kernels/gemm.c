/*
 * gemm.c — single-precision GEMM, C = alpha op(A) op(B) + beta C (row-major): the front.
 *
 * The entry points of gemm.h and metalearn.h: each product's path comes from the path
 * table (gemm_path.c), a large one is split over the threads (gemm_thread.c), and each
 * product, or part, runs on the kernel its path names (the run below). The kernels and
 * where each file fits: gemm_internal.h.
 */
#include "metalearn.h"
#include "gemm_internal.h"
#include "scratch.h"

#include <stddef.h>

/* the GEMM's kernels (ml__gemm_path) follow the one instruction-set choice */
ML_KERNEL_SITE(gemm, "gemm", ML_HAVE_AVX2)

/* The product on the kernel its path names, and epi on its tiles where the kernel applies
 * it (the unpacked tiles, the packed drivers): 1 when it did, 0 when C still needs it. */
static int run_kernel(int path, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                      float *c, int64_t ldc, const gemm_epi *epi) {
    if (k <= 0 || alpha == 0.0f) { /* BLAS: op(A)@op(B) is not computed at all */
        gemm_scale_c(m, n, beta, c, ldc);
        return 0;
    }
#if ML_HAVE_AVX2
    if ((path == PATH_SMALL || path == PATH_SMALL_W) &&
        ml__gemm_small_avx2(path == PATH_SMALL_W, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,
                            ldc, epi))
        return 1;
    if (path == PATH_DOTS_NT) {
        ml__gemm_dots_nt_avx2(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    if (path == PATH_OUTER) {
        ml__gemm_outer_avx2(ta, tb, m, n, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    /* op(B) is one column: contiguous when B is transposed (1 x k), else stride ldb */
    const int64_t incx = tb ? 1 : ldb;
    if (path == PATH_GEMV_T) {
        ml__gemm_gemv_t_avx2(m, k, alpha, a, lda, b, incx, beta, c, ldc);
        return 0;
    }
    if (path == PATH_ROW) {
        ml__gemm_row_avx2(ta, n, k, alpha, a, lda, b, ldb, beta, c);
        return 0;
    }
    if (path == PATH_DOTS) {
        const float *x = b;
        if (incx != 1) { /* a strided column: k floats gathered */
            float *xb = ml__scratch(ML_SCRATCH_GEMM, (size_t)k);
            if (!xb) { /* no buffer: the portable loops */
                ml__gemm_direct_portable(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
                return 0;
            }
            for (int64_t p = 0; p < k; ++p) xb[p] = b[p * incx];
            x = xb;
        }
        ml__gemm_dots_avx2(m, k, alpha, a, lda, x, beta, c, ldc);
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
            ml__gemm_direct_avx2(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            return 0;
        }
#endif
        ml__gemm_direct_portable(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    return ml__gemm_packed(use_avx2, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epi);
}

/* (gemm_internal.h) */
void ml__gemm_run(int path, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                  int64_t ldc, const gemm_epi *epi) {
    if (m <= 0 || n <= 0) return;
    if (!run_kernel(path, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epi) && epi)
        for (int64_t i = 0; i < m; ++i)
            ml__gemm_epi_tile_scalar(epi, c + i * ldc, ldc, i, 0, 1, (int)n);
}

void ml_sgemm(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
              int64_t ldc) {
    ml__gemm_threaded(ml__cpu_avx2(), transpose_a != 0, transpose_b != 0, m, n, k, alpha, a, lda, b,
                      ldb, beta, c, ldc, NULL);
}

/* `count` products of one shape at fixed strides, on the calling thread, the kernel chosen
 * once: MAML's per-task products (25 tasks of 10x40 outer products, ...) cost less than
 * their dispatch through ml_sgemm one by one. Each equals ml_sgemm of the same shape. */
void ml__sgemm_batch(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t lda, int64_t stride_a, const float *b, int64_t ldb,
                     int64_t stride_b, float beta, float *c, int64_t ldc, int64_t stride_c,
                     int64_t count) {
    const int ta = transpose_a != 0, tb = transpose_b != 0;
    const int path = ml__gemm_path(ml__cpu_avx2(), ta, tb, m, n, k);
#if ML_HAVE_AVX2
    if (path == PATH_DOTS && (tb || ldb == 1) && alpha != 0.0f && k > 0 && m > 0) {
        for (int64_t t = 0; t < count; ++t) /* op(B) contiguous: no gather, no dispatch */
            ml__gemm_dots_avx2(m, k, alpha, a + t * stride_a, lda, b + t * stride_b, beta,
                               c + t * stride_c, ldc);
        return;
    }
    if ((path == PATH_ROW || path == PATH_GEMV_T) && alpha != 0.0f && k > 0 && m > 0 && n > 0) {
        ml__gemm_lanes40_batch(path == PATH_ROW, ta, tb, m, n, k, alpha, a, lda, stride_a, b, ldb,
                               stride_b, beta, c, ldc, stride_c, count);
        return;
    }
#endif
    for (int64_t t = 0; t < count; ++t)
        ml__gemm_run(path, ta, tb, m, n, k, alpha, a + t * stride_a, lda, b + t * stride_b, ldb,
                     beta, c + t * stride_c, ldc, NULL);
}

/* (gemm.h) On the AVX2 kernel every k == 1 product with alpha 1 and beta 0 is the outer
 * product kernel (gemm_vec.c),
 * one multiply per element (alpha 1 multiplies exactly where it is applied), whatever the
 * transposes, strides, split or rows of C a call covers; that is what makes a fused
 * reader's rows the same bits. The portable kernel sums (0 + a b: -0 would become +0), so
 * there the caller computes the product itself. */
int ml__sgemm_outer_rows(int64_t rows, int64_t n, const float *a, const float *b, float *c) {
#if ML_HAVE_AVX2
    if (!ml__cpu_avx2()) return 0;
    if (rows > 0 && n > 0) ml__gemm_outer_avx2(0, 0, rows, n, 1.0f, a, 1, b, n, 0.0f, c, n);
    return 1;
#else
    (void)rows, (void)n, (void)a, (void)b, (void)c;
    return 0;
#endif
}

int ml__sgemm_into(int transpose_b, int64_t m, int64_t n, int64_t k, const float *a, const float *b,
                   int epi, const float *u, int64_t u_div, const float *mask, float *out) {
#if ML_HAVE_AVX2
    const int tb = transpose_b != 0;
    if (!ml__cpu_avx2() || k <= 0 || m <= 0 || n <= 0 || epi < ML_EPI_ADD ||
        epi > ML_EPI_ADD_MASK || u_div < 1)
        return 0;
    const int path = ml__gemm_path(1, 0, tb, m, n, k);
    /* PATH_SMALL_W at n = 40 with k in one slice, one thread: the op in the 2 x 40 tiles'
     * registers. Else the packed or unpacked tiles, threaded as ml_sgemm, each applying
     * the op to its tile once it is final, from L1. */
    if (n != 40 || k > SMALL_KC || (double)m * (double)n * (double)k >= PAR_MIN_MACS ||
        path != PATH_SMALL_W) {
        if (path != PATH_PACKED && path != PATH_SMALL && path != PATH_SMALL_W) return 0;
        if (!a) return 1;
        const gemm_epi e = {epi, u, mask, u_div, n, 0, 0};
        ml__gemm_threaded(1, 0, tb, m, n, k, 1.0f, a, k, b, tb ? k : n, 0.0f, out, n, &e);
        return 1;
    }
    if (!a) return 1; /* the question alone */
    return ml__gemm_2x40_epi_avx2(tb, epi, m, k, a, b, u, u_div, mask, out);
#else
    (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)b, (void)epi, (void)u;
    (void)u_div, (void)mask, (void)out;
    return 0;
#endif
}

void ml_sgemm_portable(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k,
                       float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                       float beta, float *c, int64_t ldc) {
    ml__gemm_run(PATH_PORTABLE, transpose_a != 0, transpose_b != 0, m, n, k, alpha, a, lda, b, ldb,
                 beta, c, ldc, NULL);
}
