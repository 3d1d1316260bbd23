/*
 * gemm_epilogue.h — element-wise ops applied to a GEMM's output as it is stored (internal).
 *
 * ml__sgemm_into fuses a product with the element-wise op that reads it: the op is applied
 * to each tile of C once the tile holds its final sums, while it is in L1 (the packed
 * driver, the unpacked tiles) or in registers (the 2 x 40 tiles), so the product is never
 * written out and read back. Each op's formula is the unfused op's (ops/elementwise.c), on
 * the same values, so the bits are the unfused pair's.
 */
#ifndef ML_KERNELS_GEMM_EPILOGUE_H
#define ML_KERNELS_GEMM_EPILOGUE_H

#include <stdint.h>

#include "cpu.h"
#include "gemm.h"

#if ML_HAVE_AVX2
#include <immintrin.h>
#endif

/* The op and its operands for a call's C: row0 and col0 place this call's C in the whole
 * product (a part of a threaded product starts inside it), whose rows u and mask follow
 * (row r of u is row r / u_div; both ldu = the whole product's n). */
typedef struct gemm_epi {
    int op; /* ML_EPI_* (gemm.h) */
    const float *u, *mask;
    int64_t u_div, ldu, row0, col0;
} gemm_epi;

/* One element: epi_vec's formulas, lane by lane. */
static inline float epi_one(int op, float x, float u, float m) {
    switch (op) {
    case ML_EPI_ADD: return x + u;
    case ML_EPI_ADD_RELU: x = x + u; return 0.0f > x ? 0.0f : x;
    case ML_EPI_RELU_GRAD: return u != 0.0f ? x : 0.0f;
    default: x = u + x; return m != 0.0f ? x : 0.0f; /* ML_EPI_ADD_MASK */
    }
}

#if ML_HAVE_AVX2
/* Eight elements: x the product's, u the op's operand, m where the mask is read (ADD_MASK).
 * A constant op once inlined (the 2 x 40 tiles' epilogue). */
ML_TARGET_AVX2 ML_INLINE __m256 epi_vec(const int op, __m256 x, __m256 u, const float *m) {
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
#endif

/* The op on rows x cols of C at (i0, j0) of this call's C (row stride ldc). */
ML_HIDDEN void ml__gemm_epi_tile_scalar(const gemm_epi *e, float *c, int64_t ldc, int64_t i0,
                                        int64_t j0, int rows, int cols);
ML_HIDDEN void ml__gemm_epi_tile_avx2(const gemm_epi *e, float *c, int64_t ldc, int64_t i0,
                                      int64_t j0, int rows, int cols);

#endif /* ML_KERNELS_GEMM_EPILOGUE_H */
