/*
 * gemm_epilogue.c — an element-wise op on a tile of C that holds its final sums (see
 * gemm_epilogue.h): eight lanes at a time with AVX2, element by element otherwise.
 */
#include "gemm_internal.h"

#include <stddef.h>

void ml__gemm_epi_tile_scalar(const gemm_epi *e, float *c, int64_t ldc, int64_t i0, int64_t j0,
                              int rows, int cols) {
    for (int r = 0; r < rows; ++r) {
        const int64_t row = e->row0 + i0 + r, col = e->col0 + j0;
        const float *u = e->u + row / e->u_div * e->ldu + col;
        const float *m = e->mask ? e->mask + row * e->ldu + col : NULL;
        for (int j = 0; j < cols; ++j)
            c[r * ldc + j] = epi_one(e->op, c[r * ldc + j], u[j], m ? m[j] : 0.0f);
    }
}

#if ML_HAVE_AVX2
ML_TARGET_AVX2 void ml__gemm_epi_tile_avx2(const gemm_epi *e, float *c, int64_t ldc, int64_t i0,
                                           int64_t j0, int rows, int cols) {
    const int vec = cols & ~7;
    for (int r = 0; r < rows; ++r) {
        const int64_t row = e->row0 + i0 + r, col = e->col0 + j0;
        const float *u = e->u + row / e->u_div * e->ldu + col;
        const float *m = e->mask ? e->mask + row * e->ldu + col : NULL;
        float *cr = c + r * ldc;
        for (int j = 0; j < vec; j += 8)
            _mm256_storeu_ps(cr + j, epi_vec(e->op, _mm256_loadu_ps(cr + j), _mm256_loadu_ps(u + j),
                                             m ? m + j : NULL));
        for (int j = vec; j < cols; ++j) cr[j] = epi_one(e->op, cr[j], u[j], m ? m[j] : 0.0f);
    }
}
#endif
