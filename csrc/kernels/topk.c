/* topk.c — the scores of the knowledge memory's key scan (see topk.h for the contract).
 *
 * A single query is a matrix-vector product: each key is read once and used once, so the
 * scan runs at the speed of memory, not of arithmetic, and the GEMM's packing and tile
 * padding (a 1-row tile is mostly empty) would only add traffic. The loops here stream the
 * keys once; for a few queries a key row stays in L1 while every query is scored with it.
 *
 * The sum of a dot product is split over LANES independent partial sums (position i goes
 * to sum i mod LANES): without -ffast-math the compiler may not reorder a sum, but these
 * lanes are separate variables it vectorises as they are (four SSE registers in the
 * portable C; the AVX2 variants below hold them in two ymm registers by hand), with the same
 * roundings in both. The lanes are then added in a fixed tree. */
#include "topk.h"
#include "cpu.h"

#include <string.h>

#define LANES 16

/* The fixed tree over the lanes: halves added pairwise, written out so that it unrolls. */
ML_INLINE float lanes_sum(const float *a) {
    float b[8], c[4];
    for (int l = 0; l < 8; l++) b[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) c[l] = b[l] + b[l + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* acc = the dot product of q with a key by lanes; KEY_AT(i) reads element i of the key as a
 * float. */
#define DOT_LANES(acc, q, d, KEY_AT)                                                      \
    do {                                                                                  \
        float a_[LANES] = {0};                                                            \
        int64_t i_ = 0;                                                                   \
        for (; i_ + LANES <= (d); i_ += LANES)                                            \
            for (int l_ = 0; l_ < LANES; l_++) a_[l_] += (q)[i_ + l_] * KEY_AT(i_ + l_);  \
        for (int l_ = 0; i_ + l_ < (d); l_++) a_[l_] += (q)[i_ + l_] * KEY_AT(i_ + l_);   \
        acc = lanes_sum(a_);                                                              \
    } while (0)

ML_INLINE void key_scores_body(int64_t n, const float *q, int64_t nb, const float *keys, int64_t d,
                               float *s) {
    for (int64_t j = 0; j < nb; j++) {
        const float *k = keys + j * d;
        for (int64_t i = 0; i < n; i++) {
            const float *qi = q + i * d;
            float acc;
#define AT(p) k[p]
            DOT_LANES(acc, qi, d, AT);
#undef AT
            s[i * nb + j] = acc;
        }
    }
}
static void key_scores_portable(int64_t n, const float *q, int64_t nb, const float *keys, int64_t d,
                                float *s) {
    key_scores_body(n, q, nb, keys, d, s);
}

/* The AVX2 scans (float32, float16, int8 keys): per key and query the two 8-lane
 * accumulators of DOT_LANES' 16 lanes, the same operations in the same order, then
 * lanes_sum's tree in registers (a store and 16 scalar reloads per key would cost more
 * than reading the key when keys are compact). WIDEN(p) reads 8 key elements at p as
 * floats, exactly (float16: F16C's vcvtph2ps; int8: sign-extend and convert). One key at a
 * time: interleaving two or four keys (more independent add chains) measured slower from
 * DRAM on the EPYC of benchmarks/memory_query.py, the hardware prefetcher streaming one row
 * at a time best. */
#if ML_HAVE_AVX2
#include <immintrin.h>

/* lanes_sum of the lanes held in lo (0-7) and hi (8-15), the same additions in registers:
 * b = lo + hi, c = b[0:4] + b[4:8], then (c0 + c2) + (c1 + c3). */
ML_TARGET_AVX2_NOFMA ML_INLINE float lanes_sum_avx2(__m256 lo, __m256 hi) {
    const __m256 b = _mm256_add_ps(lo, hi);
    const __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
    const __m128 e = _mm_add_ps(c, _mm_movehl_ps(c, c)); /* c0 + c2, c1 + c3 */
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)));
}

#define SCAN_AVX2(NAME, TARGET, KT, WIDEN, TAIL_AT)                                            \
    TARGET static void NAME(int64_t n, const float *q, int64_t nb, const KT *keys,             \
                            const float *scales, int64_t d, float *s) {                        \
        for (int64_t j = 0; j < nb; j++) {                                                     \
            const KT *k = keys + j * d;                                                        \
            for (int64_t i = 0; i < n; i++) {                                                  \
                const float *qi = q + i * d;                                                   \
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                     \
                int64_t t = 0;                                                                 \
                for (; t + LANES <= d; t += LANES) {                                           \
                    a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(qi + t), WIDEN(k + t))); \
                    a1 = _mm256_add_ps(a1,                                                     \
                                       _mm256_mul_ps(_mm256_loadu_ps(qi + t + 8), WIDEN(k + t + 8))); \
                }                                                                              \
                float v;                                                                       \
                if (t == d) {                                                                  \
                    v = lanes_sum_avx2(a0, a1);                                                \
                } else { /* the tail, lane by lane as DOT_LANES */                             \
                    float a[LANES];                                                            \
                    _mm256_storeu_ps(a, a0);                                                   \
                    _mm256_storeu_ps(a + 8, a1);                                               \
                    for (int l = 0; t + l < d; l++) a[l] += qi[t + l] * TAIL_AT(k[t + l]);     \
                    v = lanes_sum(a);                                                          \
                }                                                                              \
                s[i * nb + j] = scales ? scales[j] * v : v;                                    \
            }                                                                                  \
        }                                                                                      \
    }
#endif

#if ML_HAVE_AVX2
#define WIDEN_F32(p) _mm256_loadu_ps(p)
#define AT_F32(x) (x)
SCAN_AVX2(key_scores_avx2, ML_TARGET_AVX2_NOFMA, float, WIDEN_F32, AT_F32)
ML_KERNEL_SITE(key_scores, "key_scores", 1)
#else
ML_KERNEL_SITE(key_scores, "key_scores", 0)
#endif

void ml__key_scores(int64_t n, const float *q, int64_t nb, const float *keys, int64_t d, float *s) {
#if ML_HAVE_AVX2
    if (ml__cpu_avx2()) {
        key_scores_avx2(n, q, nb, keys, NULL, d, s);
        return;
    }
#endif
    key_scores_portable(n, q, nb, keys, d, s);
}

/* ml__key_scores with one query over keys held in cache (the IVF centroids): four keys
 * per pass share each load of the query, and their lane trees run side by side (the four
 * vectors c = b[0:4] + b[4:8] transposed, so (c0 + c2) + (c1 + c3) is three vector adds):
 * the same multiplies and adds per key as key_scores_avx2, so the same bits. From DRAM one
 * key at a time streams best (see above); from L1/L2 the shared query loads and the four
 * independent chains win. Keys of a length other than a multiple of 16, and the last nb % 4,
 * take key_scores_avx2. */
#if ML_HAVE_AVX2
#define ACC2(a, b, k, t)                                                   \
    a = _mm256_add_ps(a, _mm256_mul_ps(qa, _mm256_loadu_ps((k) + (t))));   \
    b = _mm256_add_ps(b, _mm256_mul_ps(qb, _mm256_loadu_ps((k) + (t) + 8)))
ML_TARGET_AVX2_NOFMA ML_INLINE __m128 lanes_half(__m256 lo, __m256 hi) {
    const __m256 b = _mm256_add_ps(lo, hi);
    return _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
}
ML_TARGET_AVX2_NOFMA static void cached_scores_avx2(const float *q, int64_t nb, const float *keys,
                                                    int64_t d, float *s) {
    int64_t j = 0;
    if (d % LANES == 0)
        for (; j + 4 <= nb; j += 4) {
            const float *k0 = keys + j * d, *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, e0 = a0,
                   e1 = a0;
            for (int64_t t = 0; t < d; t += LANES) {
                const __m256 qa = _mm256_loadu_ps(q + t), qb = _mm256_loadu_ps(q + t + 8);
                ACC2(a0, a1, k0, t);
                ACC2(b0, b1, k1, t);
                ACC2(c0, c1, k2, t);
                ACC2(e0, e1, k3, t);
            }
            __m128 r0 = lanes_half(a0, a1), r1 = lanes_half(b0, b1), r2 = lanes_half(c0, c1),
                   r3 = lanes_half(e0, e1);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3); /* r_i: element i of each key's c */
            _mm_storeu_ps(s + j, _mm_add_ps(_mm_add_ps(r0, r2), _mm_add_ps(r1, r3)));
        }
    if (j < nb) key_scores_avx2(1, q, nb - j, keys + j * d, NULL, d, s + j);
}
#undef ACC2
#endif

void ml__key_scores_cached(const float *q, int64_t nb, const float *keys, int64_t d, float *s) {
#if ML_HAVE_AVX2
    if (ml__cpu_avx2()) { /* the "key_scores" site: the same kernel, in another order */
        cached_scores_avx2(q, nb, keys, d, s);
        return;
    }
#endif
    key_scores_portable(1, q, nb, keys, d, s);
}

/* binary16 -> float32 without branches (F. Giesen's method): the 15 bits of exponent and
 * mantissa shifted into a float32 and multiplied by 2^112 give the value exactly, normal
 * or subnormal; infinities and NaNs never occur (keys are finite and at most 1 in size). */
ML_INLINE float half_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7fffu) << 13;
    float f;
    memcpy(&f, &bits, 4);
    f *= 0x1p112f;
    memcpy(&bits, &f, 4);
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &bits, 4);
    return f;
}

float ml__f16_to_f32(uint16_t h) {
    if ((h & 0x7c00u) == 0x7c00u) { /* inf / NaN: not in a key, but exact all the same */
        uint32_t bits = ((uint32_t)(h & 0x8000u) << 16) | 0x7f800000u |
                        ((uint32_t)(h & 0x03ffu) << 13);
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    return half_to_float(h);
}

uint16_t ml__f32_to_f16(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    b &= 0x7fffffffu;
    if (b >= 0x7f800000u) return sign | (b > 0x7f800000u ? 0x7e00u : 0x7c00u);
    if (b >= 0x47800000u) return sign | 0x7c00u; /* >= 65536: infinity */
    if (b < 0x38800000u) {                       /* below 2^-14: a subnormal half (or 0) */
        /* value / 2^-24 rounded to nearest even: adding 0.5 (as float) does exactly that */
        float f;
        memcpy(&f, &b, 4);
        f += 0.5f;
        uint32_t fb;
        memcpy(&fb, &f, 4);
        return sign | (uint16_t)(fb - 0x3f000000u);
    }
    /* normal: rebias the exponent, round the 13 dropped bits to nearest even */
    uint32_t mant_odd = (b >> 13) & 1u;
    b += 0xc8000fffu + mant_odd; /* (15 - 127) << 23 rebias, + rounding */
    return sign | (uint16_t)(b >> 13);
}

/* float16 keys: the portable form widens a key into a row of floats (half_to_float, exact)
 * and runs the float32 lanes over it; the AVX2 form widens 8 halves at once with F16C's
 * vcvtph2ps (exact too) into the same lanes in the same order, so both give the same bits.
 * Hand-written, as a compiler does not vectorise the bit-twiddled widening well enough for
 * the scan to stay at memory speed. */
static void key_scores_f16_portable(int64_t n, const float *q, int64_t nb, const uint16_t *keys,
                                    int64_t d, float *s) {
    float row[512];
    for (int64_t j = 0; j < nb; j++) {
        const uint16_t *k = keys + j * d;
        for (int64_t i = 0; i < n; i++) {
            const float *qi = q + i * d;
            float acc;
            if (d <= 512) {
                if (i == 0)
                    for (int64_t t = 0; t < d; t++) row[t] = half_to_float(k[t]);
#define AT(p) row[p]
                DOT_LANES(acc, qi, d, AT);
#undef AT
            } else {
#define AT(p) half_to_float(k[p])
                DOT_LANES(acc, qi, d, AT);
#undef AT
            }
            s[i * nb + j] = acc;
        }
    }
}

#if ML_HAVE_AVX2
#define WIDEN_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
SCAN_AVX2(key_scores_f16_avx2, __attribute__((target("avx2,f16c"))), uint16_t, WIDEN_F16,
          half_to_float)
ML_KERNEL_SITE(key_scores_f16, "key_scores_f16", 1)
#else
ML_KERNEL_SITE(key_scores_f16, "key_scores_f16", 0)
#endif

void ml__key_scores_f16(int64_t n, const float *q, int64_t nb, const uint16_t *keys, int64_t d,
                        float *s) {
#if ML_HAVE_AVX2
    if (ml__cpu_avx2()) { /* every CPU with AVX2 and FMA has F16C */
        key_scores_f16_avx2(n, q, nb, keys, NULL, d, s);
        return;
    }
#endif
    key_scores_f16_portable(n, q, nb, keys, d, s);
}

ML_INLINE void key_scores_i8_body(int64_t n, const float *q, int64_t nb, const int8_t *keys,
                                  const float *scales, int64_t d, float *s) {
    for (int64_t j = 0; j < nb; j++) {
        const int8_t *k = keys + j * d;
        for (int64_t i = 0; i < n; i++) {
            const float *qi = q + i * d;
            float acc;
#define AT(p) (float)k[p]
            DOT_LANES(acc, qi, d, AT);
#undef AT
            s[i * nb + j] = scales[j] * acc;
        }
    }
}
static void key_scores_i8_portable(int64_t n, const float *q, int64_t nb, const int8_t *keys,
                                   const float *scales, int64_t d, float *s) {
    key_scores_i8_body(n, q, nb, keys, scales, d, s);
}

#if ML_HAVE_AVX2
#define WIDEN_I8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define AT_I8(x) ((float)(x))
SCAN_AVX2(key_scores_i8_avx2, ML_TARGET_AVX2_NOFMA, int8_t, WIDEN_I8, AT_I8)
ML_KERNEL_SITE(key_scores_i8, "key_scores_i8", 1)
#else
ML_KERNEL_SITE(key_scores_i8, "key_scores_i8", 0)
#endif

void ml__key_scores_i8(int64_t n, const float *q, int64_t nb, const int8_t *keys,
                       const float *scales, int64_t d, float *s) {
#if ML_HAVE_AVX2
    if (ml__cpu_avx2()) {
        key_scores_i8_avx2(n, q, nb, keys, scales, d, s);
        return;
    }
#endif
    key_scores_i8_portable(n, q, nb, keys, scales, d, s);
}

/* Exact integer dot products (topk.h). The AVX2 form multiplies 32 unsigned by 32 signed
 * bytes and adds pairs into int16 (vpmaddubsw: no saturation, as q <= 127), then pairs into
 * int32 (vpmaddwd by ones), four rows sharing each load of q; the sums are exact, so they
 * equal the portable loop's whatever the order. */
static void int8_dots_portable(const uint8_t *q, int64_t nb, const int8_t *c, int64_t d,
                               int32_t *out) {
    for (int64_t j = 0; j < nb; j++) {
        int32_t acc = 0;
        for (int64_t t = 0; t < d; t++) acc += (int32_t)q[t] * c[j * d + t];
        out[j] = acc;
    }
}

#if ML_HAVE_AVX2
ML_TARGET_AVX2_NOFMA static void int8_dots_avx2(const uint8_t *q, int64_t nb, const int8_t *c,
                                                int64_t d, int32_t *out) {
    const int64_t d32 = d & ~(int64_t)31;
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t j = 0;
    for (; j + 4 <= nb; j += 4) {
        const int8_t *c0 = c + j * d;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t t = 0; t < d32; t += 32) {
            const __m256i qq = _mm256_loadu_si256((const __m256i *)(q + t));
#define ROW(r)                                                                                  \
    _mm256_madd_epi16(                                                                          \
        _mm256_maddubs_epi16(qq, _mm256_loadu_si256((const __m256i *)(c0 + (r) * d + t))), ones)
            a0 = _mm256_add_epi32(a0, ROW(0));
            a1 = _mm256_add_epi32(a1, ROW(1));
            a2 = _mm256_add_epi32(a2, ROW(2));
            a3 = _mm256_add_epi32(a3, ROW(3));
#undef ROW
        }
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
        int32_t r[4];
        _mm_storeu_si128((__m128i *)r,
                         _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
        for (int e = 0; e < 4; e++) {
            for (int64_t t = d32; t < d; t++) r[e] += (int32_t)q[t] * c0[e * d + t];
            out[j + e] = r[e];
        }
    }
    int8_dots_portable(q, nb - j, c + j * d, d, out + j);
}
ML_KERNEL_SITE(int8_dots, "int8_dots", 1)
#else
ML_KERNEL_SITE(int8_dots, "int8_dots", 0)
#endif

void ml__int8_dots(const uint8_t *q, int64_t nb, const int8_t *c, int64_t d, int32_t *out) {
#if ML_HAVE_AVX2
    if (ml__cpu_avx2()) {
        int8_dots_avx2(q, nb, c, d, out);
        return;
    }
#endif
    int8_dots_portable(q, nb, c, d, out);
}
