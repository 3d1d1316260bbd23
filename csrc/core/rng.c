/* rng.c — the seeded generator: xoshiro256** seeded through splitmix64 (xoshiro.h). One
 * stream per process, so the same seed gives the same numbers bit for bit. The random ops
 * that make tensors from it are ops/random.c's.
 * A lock makes each seed and each whole draw (an array, a permutation) one step of that
 * stream, so threads drawing at once (replays run without the GIL) never tear its state:
 * each gets a contiguous block of the stream, in an order set by timing. */
#include <math.h>
#include <pthread.h>

#include "internal.h"
#include "xoshiro.h"

static uint64_t rng_state[4];
static int rng_seeded;
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;

static void seed_locked(uint64_t seed) {
    ml__xoshiro_seed(rng_state, seed);
    rng_seeded = 1;
}

void ml_rng_seed(uint64_t seed) {
    pthread_mutex_lock(&rng_lock);
    seed_locked(seed);
    pthread_mutex_unlock(&rng_lock);
}

/* the next number of the stream; the caller holds rng_lock */
static uint64_t next_u64(void) {
    if (!rng_seeded) seed_locked(0);
    return ml__xoshiro_next(rng_state);
}

/* The stream's position, for checkpoints: a process that sets it draws what this one would
 * have drawn next. An unseeded stream reports the state seed 0 gives it. */
void ml_rng_state(uint64_t out[4]) {
    pthread_mutex_lock(&rng_lock);
    if (!rng_seeded) seed_locked(0);
    for (int i = 0; i < 4; i++) out[i] = rng_state[i];
    pthread_mutex_unlock(&rng_lock);
}

ml_status ml_rng_set_state(const uint64_t state[4]) {
    /* xoshiro's one forbidden state: all zero gives zeros forever */
    if (!(state[0] | state[1] | state[2] | state[3]))
        return ml_set_error(ML_ERR_VALUE, "rng state: all four words are zero, which "
                                          "xoshiro256** cannot leave; not a saved state");
    pthread_mutex_lock(&rng_lock);
    for (int i = 0; i < 4; i++) rng_state[i] = state[i];
    rng_seeded = 1;
    pthread_mutex_unlock(&rng_lock);
    return ML_OK;
}

uint64_t ml_rng_next_u64(void) {
    pthread_mutex_lock(&rng_lock);
    uint64_t r = next_u64();
    pthread_mutex_unlock(&rng_lock);
    return r;
}

/* uniform in [0, 1) with 24 random bits: every value is exact in float32 */
static inline float next_unit(void) { return (float)(next_u64() >> 40) * 0x1.0p-24f; }

/* standard normal by Box-Muller, in double so the tails are right */
static double next_normal(void) {
    double u1 = ((double)(next_u64() >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    double u2 = (double)(next_u64() >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* The draws of the random ops (ops/random.c): d[0..n) from the stream, each call one
 * contiguous block of it. */
void ml__rng_fill_uniform(float *d, int64_t n, float lo, float hi) {
    pthread_mutex_lock(&rng_lock);
    for (int64_t i = 0; i < n; i++) d[i] = lo + (hi - lo) * next_unit();
    pthread_mutex_unlock(&rng_lock);
}

void ml__rng_fill_normal(float *d, int64_t n, float mean, float stddev) {
    pthread_mutex_lock(&rng_lock);
    for (int64_t i = 0; i < n; i++) d[i] = mean + stddev * (float)next_normal();
    pthread_mutex_unlock(&rng_lock);
}

void ml__rng_fill_truncated_normal(float *d, int64_t n, float mean, float stddev) {
    pthread_mutex_lock(&rng_lock);
    for (int64_t i = 0; i < n; i++) {
        double z;
        do z = next_normal();
        while (z < -2.0 || z > 2.0); /* 95% accepted */
        d[i] = mean + stddev * (float)z;
    }
    pthread_mutex_unlock(&rng_lock);
}

/* uniform in [0, n) without modulo bias (Lemire 2019, "Fast random integer generation
 * in an interval") */
static uint64_t next_below(uint64_t n) {
    __uint128_t m = (__uint128_t)next_u64() * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (__uint128_t)next_u64() * n;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

ml_status ml_rng_permutation(int64_t *out, int64_t n) {
    if (n < 0)
        return ml_set_error(ML_ERR_VALUE, "permutation: n must be >= 0, got %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) out[i] = i;
    pthread_mutex_lock(&rng_lock);
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)next_below((uint64_t)i + 1);
        int64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
    pthread_mutex_unlock(&rng_lock);
    return ML_OK;
}
