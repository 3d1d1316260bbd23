/*
 * gemm.h — internal declarations of the single-precision GEMM (not part of the public API).
 */
#ifndef ML_KERNELS_GEMM_H
#define ML_KERNELS_GEMM_H

#include <stdint.h>

/* ml_sgemm restricted to the portable C kernel, whatever the CPU or ML_KERNEL says.
 * Exposed so tests can check both paths in one process (ML_KERNEL is read only once). */
void ml_sgemm_portable(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k,
                       float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                       float beta, float *c, int64_t ldc);

/* count products C_t = alpha op(A_t) op(B_t) + beta C_t with A_t = a + t * stride_a (and
 * likewise B_t, C_t), on the calling thread; each equals ml_sgemm of the same shape. */
void ml__sgemm_batch(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t lda, int64_t stride_a, const float *b, int64_t ldb,
                     int64_t stride_b, float beta, float *c, int64_t ldc, int64_t stride_c,
                     int64_t count);

/* c[r][j] = a[r] * b[j], rows x n with row stride n: the bits ml_sgemm gives for any
 * k == 1 product with alpha 1 and beta 0 (a[r] = op(A)[r][0], b[j] = op(B)[0][j]), for any
 * subset of its rows. 1 when done (rows may be 0: the question alone); 0, computing
 * nothing, where the kernel in use would not give one rounded multiply per element (the
 * portable kernel). */
int ml__sgemm_outer_rows(int64_t rows, int64_t n, const float *a, const float *b, float *c);

/* The element-wise ops ml__sgemm_into applies to a product's element x as it is stored,
 * with u the op's other operand and m a mask; each the unfused op's formula (elementwise.c):
 * ADD x + u; ADD_RELU x + u unless it is < 0 (then +0; NaN passes); RELU_GRAD +0 where
 * u is +-0, else x (u a relu's output: a NaN u passes x); ADD_MASK +0 where m is +-0, else
 * u + x (add + relu_grad). */
enum { ML_EPI_ADD = 1, ML_EPI_ADD_RELU, ML_EPI_RELU_GRAD, ML_EPI_ADD_MASK };

/* out = epi(A op(B), u, mask) for A m x k (not transposed, row stride k) and B (k x n, or
 * n x k when transposed; row stride its last dim), out, u and mask m x n row-major, but
 * that row r of u is row r / u_div (u_div > 1: one row per group of rows, a bias per
 * task). The product's bits are ml_sgemm's, the op's the unfused op's. 1 when done (a
 * NULL: the question alone); 0, computing nothing, where this is not the kernel ml_sgemm
 * would use for the product (the epilogue is in the packed driver, threaded as ml_sgemm,
 * and in the one-thread 2 x 40 tiles of n = 40), or (a given) B^T's buffer cannot be had. */
int ml__sgemm_into(int transpose_b, int64_t m, int64_t n, int64_t k, const float *a, const float *b,
                   int epi, const float *u, int64_t u_div, const float *mask, float *out);

#endif /* ML_KERNELS_GEMM_H */
