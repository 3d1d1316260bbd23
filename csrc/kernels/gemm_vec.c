/*
 * gemm_vec.c — AVX2 kernels for products shaped like vectors, where a register tile would
 * be mostly empty lanes: k == 1 (an outer product), n == 1 (a matrix-vector product, A
 * or A^T), m == 1 (a row vector times B), and A B^T with few columns (dot products of
 * rows). MAML's per-task products for a 1-input, 1-output network are of these shapes
 * (x^T dZ, dZ w^T, ...). Each element of C is computed the same way wherever its block
 * starts, so a split over threads changes no bit (gemm_internal.h's contract).
 */
#include "gemm_internal.h"

#include <math.h>

#if ML_HAVE_AVX2
/* c[i][0 : 8 nv] = a[i sa] * b[0 : 8 nv] for m rows (ml__gemm_outer_avx2's common case) */
ML_TARGET_AVX2 static inline __attribute__((always_inline)) void
outer_rows_avx2(const int nv, int64_t m, const float *a, int64_t sa, const float *b, float *c,
                int64_t ldc) {
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
ML_TARGET_AVX2 void ml__gemm_outer_avx2(int ta, int tb, int64_t m, int64_t n, float alpha,
                                        const float *a, int64_t lda, const float *b, int64_t ldb,
                                        float beta, float *c, int64_t ldc) {
    const int64_t sa = ta ? 1 : lda, sb = tb ? ldb : 1; /* op(A)[i][0], op(B)[0][j] */
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    const int64_t n8 = sb == 1 ? n / 8 * 8 : 0;
    if (alpha == 1.0f && beta == 0.0f && sb == 1 && n == n8 && n <= 64) {
        /* the common case (a layer's product, C written, not accumulated): 1 * x is x, so
         * the same bits with one multiply and b held in registers (the general loop below
         * takes twice the time of its stores) */
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

/* n == 1 with A not transposed: each element of C is a dot product of a row of A
 * (contiguous) with the vector op(B) (contiguous: the caller checks), eight lanes then a
 * horizontal sum. (The register tiles would first copy A to column order.) */
ML_TARGET_AVX2 void ml__gemm_dots_avx2(int64_t m, int64_t k, float alpha, const float *a,
                                       int64_t lda, const float *x, float beta, float *c,
                                       int64_t ldc) {
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
        __m128 o = _mm_mul_ps(va,
                              _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
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
 * (ten FMA chains: with one chain per vector each step waits on the FMA latency), added
 * at the end. Each output's sum is formed the same way wherever its
 * block starts, so a split over threads changes nothing. w(p) = wv[p * wstride]. */
ML_TARGET_AVX2 ML_INLINE void lanes40(int w, int64_t k, const float *wv, int64_t wstride,
                                      const float *base, int64_t ld, float alpha, float beta,
                                      float *o, int64_t ldo) {
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
 * time, each a lane summed over k (lanes40), so every row rounds alike wherever a split
 * over threads starts (16-wide tiles with an 8-wide edge would not: the edge moves with
 * the split and rounds differently). */
ML_TARGET_AVX2 void ml__gemm_gemv_t_avx2(int64_t m, int64_t k, float alpha, const float *a,
                                         int64_t lda, const float *x, int64_t incx, float beta,
                                         float *c, int64_t ldc) {
    for (int64_t i0 = 0; i0 < m; i0 += 40)
        lanes40((int)min64(40, m - i0), k, x, incx, a + i0, lda, alpha, beta, c + i0 * ldc, ldc);
}

/* m == 1, B not transposed: the row vector op(A) times B, 40 columns of C at a time
 * (lanes40). The register tiles would be three 16-wide tiles of one row, each waiting on
 * one FMA chain per vector (1 x 40 x 10: MAML's x^T dZ for a 1-input layer). */
ML_TARGET_AVX2 void ml__gemm_row_avx2(int ta, int64_t n, int64_t k, float alpha, const float *a,
                                      int64_t lda, const float *b, int64_t ldb, float beta,
                                      float *c) {
    for (int64_t j0 = 0; j0 < n; j0 += 40)
        lanes40((int)min64(40, n - j0), k, a, ta ? lda : 1, b + j0, ldb, alpha, beta, c + j0, 1);
}

/* Lane sums without vhaddps (4 uops, one every 2 cycles on Zen 4): of x0..x3, lanes 0..3
 * of each 128-bit half become (l0 + l2) + (l1 + l3) of that half, in fewer cycles than
 * hadd (gemm_shapes.py 10x40x10 B^T). */
ML_TARGET_AVX2 ML_INLINE __m256 fold4(__m256 x0, __m256 x1, __m256 x2, __m256 x3) {
    const __m256 a = _mm256_add_ps(_mm256_unpacklo_ps(x0, x1), _mm256_unpackhi_ps(x0, x1));
    const __m256 b = _mm256_add_ps(_mm256_unpacklo_ps(x2, x3), _mm256_unpackhi_ps(x2, x3));
    return _mm256_add_ps(_mm256_shuffle_ps(a, b, 0x44), _mm256_shuffle_ps(a, b, 0xEE));
}

/* The sums of four (hsum4) or eight (hsum8) vectors' lanes, each by the same tree
 * ((l0 + l2) + (l1 + l3)) + ((l4 + l6) + (l5 + l7)): every element of a dots_nt product
 * is summed this way, wherever its tile lies, so a thread split does not change its bits. */
ML_TARGET_AVX2 ML_INLINE __m128 hsum4(__m256 x0, __m256 x1, __m256 x2, __m256 x3) {
    const __m256 f = fold4(x0, x1, x2, x3);
    return _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
}

ML_TARGET_AVX2 ML_INLINE __m256 hsum8(const __m256 x[4], const __m256 y[4]) {
    const __m256 f = fold4(x[0], x[1], x[2], x[3]), g = fold4(y[0], y[1], y[2], y[3]);
    return _mm256_add_ps(_mm256_permute2f128_ps(f, g, 0x20), _mm256_permute2f128_ps(f, g, 0x31));
}

/* One dots_nt tile: mr (1, 2) rows of A times nr (1..5) rows of B, mr * nr vector
 * accumulators, each one lane-wise FMA chain over k. Constants after inlining, so the
 * accumulators stay in registers. 2 x 5 needs 7 loads for 10 FMAs, and 10 x 10 splits into
 * 2 x 5 tiles with no lane wasted (3 x 4 tiles computed 144 dot products for its 100). */
ML_TARGET_AVX2 ML_INLINE void dots_nt_tile(const int mr, const int nr, int64_t k, __m256i tail,
                                           float alpha, const float *a, int64_t lda, const float *b,
                                           int64_t ldb, float beta, float *c, int64_t ldc) {
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
 * split evenly into parts of at most 5 columns. The register tiles would first transpose
 * B and then fill 16-lane tiles with 10 columns (the 10 x 40 x 10 products of MAML's
 * low-rank fast weights: a third of the FMA peak; gemm_shapes.py 10x40x10 B^T). */
ML_TARGET_AVX2 void ml__gemm_dots_nt_avx2(int64_t m, int64_t n, int64_t k, float alpha,
                                          const float *a, int64_t lda, const float *b, int64_t ldb,
                                          float beta, float *c, int64_t ldc) {
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k % 8)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const int parts = (int)((n + 4) / 5), base = (int)n / parts, extra = (int)n % parts;
    for (int64_t i0 = 0; i0 < m; i0 += 2) {
        const int mr = (int)min64(2, m - i0);
        const float *ai = a + i0 * lda;
        float *ci = c + i0 * ldc;
        /* long rows (k >= 256): the next two towards L2 while these are summed. A is read
         * once, and MAML Omniglot's queries (75 x 784 x 5 B^T per task) come from L3 or
         * memory; rows already in L2 (short ones) only lose to the prefetches (run_all.py
         * maml-omniglot; gemm_shapes.py 75x784x5 B^T) */
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
                ML_TILE(1, 1);
                ML_TILE(1, 2);
                ML_TILE(1, 3);
                ML_TILE(1, 4);
                ML_TILE(1, 5);
                ML_TILE(2, 1);
                ML_TILE(2, 2);
                ML_TILE(2, 3);
                ML_TILE(2, 4);
                ML_TILE(2, 5);
#undef ML_TILE
            }
            j0 += nr;
        }
    }
}

/* A batch of PATH_ROW or PATH_GEMV_T products (sums of k rows of 40 weighted by a vector:
 * MAML's x^T dZ and dZ^T w per task), lanes40 inlined into the loop over products: the
 * same calls ml__gemm_row_avx2 and ml__gemm_gemv_t_avx2 make, without the dispatch of
 * each product by its path. */
ML_TARGET_AVX2 void ml__gemm_lanes40_batch(int row, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                           float alpha, const float *a, int64_t lda, int64_t sa,
                                           const float *b, int64_t ldb, int64_t sb, float beta,
                                           float *c, int64_t ldc, int64_t sc, int64_t count) {
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
