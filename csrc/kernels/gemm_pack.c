/*
 * gemm_pack.c — packing for the GEMM's driver (Goto & van de Geijn 2008; BLIS's packm).
 *
 * The driver copies a block of op(A) into MR-tall panels and a block of op(B) into
 * NR-wide panels so that the micro-kernel reads both with unit stride whatever the
 * transposes and strides (packing absorbs op()), and pads the panels with zeros to full
 * MR / NR so that one micro-kernel serves the edge tiles (only its store is clipped).
 * The AVX2 packers move transposed data through 8x8 register transposes; both sets give
 * the same panels. Also here: B^T copied to row-major for the unpacked kernels.
 */
#include "gemm_internal.h"

/* (gemm_internal.h: ml__gemm_pack_a) inlined into both instruction sets' packers */
ML_INLINE void pack_a(int ta, int64_t mc, int64_t kc, const float *a, int64_t lda, int64_t ic,
                      int64_t pc, float *restrict dst) {
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

/* (gemm_internal.h: ml__gemm_pack_b) inlined into both instruction sets' packers */
ML_INLINE void pack_b(int tb, int64_t kc, int64_t nc, const float *b, int64_t ldb, int64_t pc,
                      int64_t jc, float *restrict dst) {
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

void ml__gemm_pack_a(int ta, int64_t mc, int64_t kc, const float *a, int64_t lda, int64_t ic,
                     int64_t pc, float *restrict dst) {
    pack_a(ta, mc, kc, a, lda, ic, pc, dst);
}

void ml__gemm_pack_b(int tb, int64_t kc, int64_t nc, const float *b, int64_t ldb, int64_t pc,
                     int64_t jc, float *restrict dst) {
    pack_b(tb, kc, nc, b, ldb, pc, jc, dst);
}

#if ML_HAVE_AVX2
/* d (8x8, leading dimension ldd) = s^T for s (8x8, ld lds), through registers. */
ML_TARGET_AVX2 ML_INLINE void transpose8x8(const float *s, int64_t lds, float *d, int64_t ldd) {
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
 * extra; the last of a run is stored as 4 + 2 so nothing past the panel is written). A
 * scalar gather here is a fifth of the time of MAML Omniglot's 2400x784x256 products
 * (gemm_shapes.py 2400x784x256). */
ML_TARGET_AVX2 void ml__gemm_pack_a_avx2(int ta, int64_t mc, int64_t kc, const float *a,
                                         int64_t lda, int64_t ic, int64_t pc, float *restrict dst) {
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
            const __m256 r0 = _mm256_loadu_ps(s + 0 * lda + p),
                         r1 = _mm256_loadu_ps(s + 1 * lda + p);
            const __m256 r2 = _mm256_loadu_ps(s + 2 * lda + p),
                         r3 = _mm256_loadu_ps(s + 3 * lda + p);
            const __m256 r4 = _mm256_loadu_ps(s + 4 * lda + p),
                         r5 = _mm256_loadu_ps(s + 5 * lda + p);
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
ML_TARGET_AVX2 void ml__gemm_pack_b_avx2(int tb, int64_t kc, int64_t nc, const float *b,
                                         int64_t ldb, int64_t pc, int64_t jc, float *restrict dst) {
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

/* (gemm_internal.h) B^T for the unpacked kernels, which read op(B) row-major: 8x8 blocks
 * through registers (a scalar gather reads a column at a time, as slow as the small
 * products it feeds), scalar edges. */
ML_TARGET_AVX2 void ml__gemm_transpose_avx2(int64_t rows, int64_t cols, const float *src,
                                            int64_t lds, float *dst, int64_t ldd) {
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
#endif
