/*
 * gemm_small.c — unpacked register-tiled AVX2 kernels for small products (BLIS's "sup",
 * skinny/unpacked, kernels).
 *
 * Few-shot learning's products are small (5..250 rows, 40..784 columns), and MAML's
 * per-task ones tiny (10 x 40 x 40: a few thousand multiply-adds), where copying A and B
 * into panels costs as much as the arithmetic. These kernels read op(A) and op(B) in place
 * (B^T first copied to row-major, k x n floats) and keep a tile of C in registers for the
 * whole k loop, k in SMALL_KC slices: MR_S x 16 tiles (PATH_SMALL); for n % 16 == 8,
 * 4 x 24 then 4 x 16 tiles so no 8-wide edge is left, and 2 x 40 tiles at n = 40
 * (PATH_SMALL_W). Every element of C is one FMA chain over k in order, whichever tile (or
 * thread) holds it, so all of PATH_SMALL_W's tilings give the same bits. The element-wise
 * epilogue (gemm_epilogue.h) is applied to each tile once final, or, in the 2 x 40 tiles of
 * ml__sgemm_into, in registers before the store.
 */
#include "gemm_internal.h"
#include "scratch.h"

#include <stddef.h>

#if ML_HAVE_AVX2
/* One MR_S x 16 tile of C (mr rows, nr <= 16 columns, both at least 1): op(B) is read in
 * place row by row (row-major with stride ldb, already un-transposed by the caller), A
 * element by element (broadcast), the tile lives in registers for the whole k loop and is
 * stored once. Partial columns use masked loads and stores. mr is a constant after
 * inlining, so the row loops unroll and the accumulators stay in registers. (Long: one k
 * loop per kind of column count, each with its loads of B written out.) */
ML_TARGET_AVX2 ML_INLINE void small_tile(const int mr, int ta, int64_t k, float alpha,
                                         const float *a, int64_t lda, const float *b, int64_t ldb,
                                         float beta, float *c, int64_t ldc, int nr) {
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
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0,
                                          acc0[r]);
                acc1[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + (p + 1) * as_p), b1,
                                          acc1[r]);
            }
        }
        if (p < k) {
            const __m256 b0 = _mm256_loadu_ps(b + p * ldb);
            for (int r = 0; r < mr; ++r)
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0,
                                          acc0[r]);
        }
        for (int r = 0; r < mr; ++r) acc0[r] = _mm256_add_ps(acc0[r], acc1[r]);
    } else {
#pragma GCC unroll 4
        for (int64_t p = 0; p < k; ++p) {
            const __m256 b0 = _mm256_maskload_ps(b + p * ldb, m0);
            for (int r = 0; r < mr; ++r)
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0,
                                          acc0[r]);
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

/* One tile of up to 4 rows x 8 nv columns (nv 1..3, nr <= 8 nv, the last vector masked
 * when nr is short), for PATH_SMALL_W: every element one FMA chain over k, in order, so the
 * bits do not depend on which tile (or thread) holds a column. 4 x 24 has the 12
 * accumulators of 6 x 16 with 3 loads of B and 4 broadcasts a step (7 loads for 12 FMAs,
 * against 8), and n = 40 splits as 24 + 16 with no 8-wide edge (run_all.py sgemm
 * 250x40x40). Its register allocation is fragile: after any edit here, measure that row
 * (small edits have cost it half its speed). */
ML_TARGET_AVX2 ML_INLINE void small_tile_w(const int mr, const int nv, int ta, int64_t k,
                                           float alpha, const float *a, int64_t lda, const float *b,
                                           int64_t ldb, float beta, float *c, int64_t ldc, int nr) {
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
                acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * as_i + p * as_p), b0,
                                          acc0[r]);
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
                                            int64_t lda, const float *b, int64_t ldb, __m256 c0[5],
                                            __m256 c1[5]) {
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
                                              int64_t ldb, float beta, float *c, int64_t ldc) {
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
                                                  int64_t ldb, float *c, const float *const u[2],
                                                  const float *const m[2]) {
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
 * keeps alpha and beta in registers through the k loop and spills a broadcast of A to the
 * stack (a third slower: gemm_shapes.py 10x40x40). */
ML_TARGET_AVX2 __attribute__((noinline)) static void
small_tile_2x40_2(int ta, int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float beta, float *c, int64_t ldc) {
    small_tile_2x40(2, ta, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

ML_TARGET_AVX2 __attribute__((noinline)) static void
small_tile_2x40_1(int ta, int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float beta, float *c, int64_t ldc) {
    small_tile_2x40(1, ta, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* (gemm_internal.h) A transposed B is first copied to row-major (k x n floats, cheap next
 * to the m k n multiply-adds); k runs in SMALL_KC slices, the later ones accumulating into
 * C. (Long: one loop over tiles per tile shape, each switching to constant tile sizes.) */
ML_TARGET_AVX2 int ml__gemm_small_avx2(int wide, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                       float alpha, const float *a, int64_t lda, const float *b,
                                       int64_t ldb, float beta, float *c, int64_t ldc,
                                       const gemm_epi *epi) {
    /* A B^T with B much larger than A and C (an LSTM's dz @ U^T, 32 x 512 times 512 x 128
     * B^T, at every step of its backward): C^T = B A^T, copying A^T and C^T (m (k + n)
     * floats) instead of B^T (k n). Each element is the same FMA chain over k in the same
     * SMALL_KC slices (fma(x, y, z) = fma(y, x, z)), so the same bits, where no tile of
     * either form has 8 columns (the two-chain nr == 8 tile: n % 16 != 8; m % 16 == 0
     * also keeps C^T's tiles full: 5 or 75 rows were slower, gemm_shapes.py 5x784x256
     * B^T). */
    if (tb && !wide && !ta && beta == 0.0f && !epi && m % 16 == 0 && n % 16 != 8 &&
        2 * m * (k + n) <= n * k) {
        float *at = ml__scratch(ML_SCRATCH_GEMM, (size_t)(m * (k + n)));
        if (!at) return 0;
        float *ct = at + m * k;
        ml__gemm_transpose_avx2(m, k, a, lda, at, m);
        ml__gemm_small_avx2(0, 0, 0, n, m, k, alpha, b, ldb, at, m, 0.0f, ct, m, NULL);
        ml__gemm_transpose_avx2(n, m, ct, m, c, ldc);
        return 1;
    }
    if (tb) {
        float *bt = ml__scratch(ML_SCRATCH_GEMM, (size_t)(k * n));
        if (!bt) return 0;
        ml__gemm_transpose_avx2(n, k, b, ldb, bt, n);
        b = bt;
        ldb = n;
    }
    const int64_t as_i = ta ? 1 : lda;
    if (k > SMALL_KC) {
        const int64_t as_p = ta ? lda : 1;
        for (int64_t p0 = 0; p0 < k; p0 += SMALL_KC) {
            const int64_t kc = min64(SMALL_KC, k - p0);
            ml__gemm_small_avx2(wide, ta, 0, m, n, kc, alpha, a + p0 * as_p, lda, b + p0 * ldb, ldb,
                                p0 ? 1.0f : beta, c, ldc, p0 + kc >= k ? epi : NULL);
        }
        return 1;
    }
    if (wide && n == 40) { /* 2 x 40 tiles (gemm_shapes.py 10x10x40 and 10x40x40) */
        for (int64_t i0 = 0; i0 < m; i0 += 2) {
            (m - i0 >= 2 ? small_tile_2x40_2 : small_tile_2x40_1)(ta, k, alpha, a + i0 * as_i, lda,
                                                                  b, ldb, beta, c + i0 * ldc, ldc);
            if (epi)
                ml__gemm_epi_tile_avx2(epi, c + i0 * ldc, ldc, i0, 0, (int)min64(2, m - i0), 40);
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
                /* clang-format off: a table, one case a line */
                switch (mr) {
                case 4: ML_W_TILE(4); break;
                case 3: ML_W_TILE(3); break;
                case 2: ML_W_TILE(2); break;
                default: ML_W_TILE(1); break;
                }
                /* clang-format on */
#undef ML_W_TILE
                if (epi) ml__gemm_epi_tile_avx2(epi, cij, ldc, i0, j0, mr, nr);
                j0 += nr;
            }
        }
        return 1;
    }
    for (int64_t i0 = 0, mr; i0 < m; i0 += mr) {
        /* the last 7 or 8 rows as two tiles of 3 or 4: a 1- or 2-row tile has too few FMA
         * chains to hide their latency (each element's chain is the same in any tile) */
        const int64_t left = m - i0;
        mr = left > MR_S + 2 ? MR_S : left > MR_S ? 4 : left;
        const float *ai = a + i0 * as_i;
        for (int64_t j0 = 0; j0 < n; j0 += 16) {
            const int nr = (int)min64(16, n - j0);
            float *cij = c + i0 * ldc + j0;
            /* clang-format off: a table, one case a line */
            switch (mr) {
            case 6: small_tile(6, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 5: small_tile(5, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 4: small_tile(4, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 3: small_tile(3, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            case 2: small_tile(2, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            default: small_tile(1, ta, k, alpha, ai, lda, b + j0, ldb, beta, cij, ldc, nr); break;
            }
            /* clang-format on */
            if (epi) ml__gemm_epi_tile_avx2(epi, cij, ldc, i0, j0, mr, nr);
        }
    }
    return 1;
}

/* The epilogue tiles as functions of their own, one per op and row count (as
 * small_tile_2x40_2: inlined into the loop over tiles, GCC spills). */
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

/* (gemm_internal.h) B^T is first copied to row-major, as ml__gemm_small_avx2 does; 0 when
 * that copy's buffer cannot be had (nothing computed). */
ML_TARGET_AVX2 int ml__gemm_2x40_epi_avx2(int tb, int epi, int64_t m, int64_t k, const float *a,
                                          const float *b, const float *u, int64_t u_div,
                                          const float *mask, float *out) {
    const int64_t n = 40;
    if (tb) {
        float *bt = ml__scratch(ML_SCRATCH_GEMM, (size_t)(k * n));
        if (!bt) return 0;
        ml__gemm_transpose_avx2(n, k, b, k, bt, n);
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
}
#endif
