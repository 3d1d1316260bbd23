/* topk.h — the scores of a key scan (internal; see topk.c): the dot products of a few
 * queries with a block of stored keys, for the knowledge memory's exact search
 * (memory/memory.c), which keeps the top-k of them.
 *
 * Every score is the same function of one query row and one key row, computed in the same
 * order wherever the key sits in a block and however many queries come with it: 16
 * partial sums over the positions i = l mod 16, then a fixed tree over them. So a scan split
 * across threads by blocks of keys gives every key the bits a one-thread scan gives it.
 * The AVX2 variants (hand-written, no FMA: a multiply then an add per lane, the lane tree
 * in registers) round exactly as the portable C. */
#ifndef ML_KERNELS_TOPK_H
#define ML_KERNELS_TOPK_H

#include <stdint.h>

/* s[i * nb + j] = q[i] · key[j] for n queries q (n x d) and nb float32 keys (nb x d). */
void ml__key_scores(int64_t n, const float *q, int64_t nb, const float *keys, int64_t d, float *s);
/* ml__key_scores for one query (n = 1), the same bits, faster over keys in cache (the IVF
 * index's centroids). */
void ml__key_scores_cached(const float *q, int64_t nb, const float *keys, int64_t d, float *s);
/* The same over float16 keys (IEEE binary16 bits), widened exactly to float32. */
void ml__key_scores_f16(int64_t n, const float *q, int64_t nb, const uint16_t *keys, int64_t d,
                        float *s);
/* The same over int8 keys with one scale per key: s = scale[j] * (q[i] · key[j]). */
void ml__key_scores_i8(int64_t n, const float *q, int64_t nb, const int8_t *keys,
                       const float *scales, int64_t d, float *s);

/* out[j] = q · c[j] for nb int8 rows c (nb x d) and one row q (d) of integers in [0, 127],
 * exactly: integer products and sums, so every variant and every order gives the same value
 * (q <= 127 keeps a pair of products inside int16, d <= 2^16 every sum inside int32). The
 * IVF index's coarse prefilter (memory.c: q is a signed 7-bit row plus 64). */
void ml__int8_dots(const uint8_t *q, int64_t nb, const int8_t *c, int64_t d, int32_t *out);

/* float32 -> binary16, round to nearest even (finite inputs; overflow gives +-inf). */
uint16_t ml__f32_to_f16(float x);
/* binary16 -> float32, exact for every finite half. */
float ml__f16_to_f32(uint16_t h);

#endif /* ML_KERNELS_TOPK_H */
