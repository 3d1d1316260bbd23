/* xoshiro.h — the generator of every seeded stream in the core: xoshiro256** (Blackman &
 * Vigna 2018, "Scrambled linear pseudorandom number generators") on a 4-word state seeded
 * through splitmix64. Users: the process-wide stream of rng.c (behind its lock) and each
 * knowledge memory's own stream (memory/memory.c, behind the memory's lock). Inline: a draw
 * is a dozen instructions. */
#ifndef ML_CORE_XOSHIRO_H
#define ML_CORE_XOSHIRO_H

#include <stdint.h>

static inline uint64_t ml__splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* the state for a seed: four splitmix64 outputs (never all zero) */
static inline void ml__xoshiro_seed(uint64_t s[4], uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s[i] = ml__splitmix64(&x);
}

static inline uint64_t ml__xoshiro_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* the next 64 bits of the stream, advancing s */
static inline uint64_t ml__xoshiro_next(uint64_t s[4]) {
    const uint64_t result = ml__xoshiro_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ml__xoshiro_rotl(s[3], 45);
    return result;
}

#endif /* ML_CORE_XOSHIRO_H */
