/* ptrmap.h — a map from pointers to non-negative int32 values, for the sets and indices of
 * tensors built while walking a graph (autograd's topological order and visited set, a
 * trace's captured tensors). Open addressing with linear probing over a power-of-two
 * table kept at most half full; keys are compared by address (NULL is not a key). A zeroed
 * ml_ptrmap is an empty map; ml__ptrmap_free releases its table. */
#ifndef ML_CORE_PTRMAP_H
#define ML_CORE_PTRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct ml_ptrmap {
    const void **keys; /* cap slots, NULL where free */
    int32_t *vals;
    size_t cap;        /* 0 or a power of two */
    size_t n;          /* keys held */
} ml_ptrmap;

/* Room for n keys without growing (the table at most half full); 0 when out of memory
 * (the map is unchanged). */
int ml__ptrmap_reserve(ml_ptrmap *m, size_t n);
void ml__ptrmap_free(ml_ptrmap *m);

/* k's first slot: the address bits mixed (half of MurmurHash3's 64-bit finaliser), since
 * heap pointers differ mostly in their middle bits */
static inline size_t ml__ptrmap_slot(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

/* k's value, or -1 when k is not in the map */
static inline int32_t ml__ptrmap_get(const ml_ptrmap *m, const void *k) {
    if (!m->cap) return -1;
    for (size_t i = ml__ptrmap_slot(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == k) return m->vals[i];
        if (!m->keys[i]) return -1;
    }
}

/* Sets k's value to v, growing the table when needed: 1 when k was added, 0 when it was
 * there (its value replaced), -1 when out of memory (the map is unchanged). */
static inline int ml__ptrmap_put(ml_ptrmap *m, const void *k, int32_t v) {
    if ((m->n + 1) * 2 > m->cap && !ml__ptrmap_reserve(m, m->n + 1)) return -1;
    size_t i = ml__ptrmap_slot(k, m->cap);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & (m->cap - 1);
    const int added = !m->keys[i];
    m->keys[i] = k;
    m->vals[i] = v;
    m->n += (size_t)added;
    return added;
}

#endif /* ML_CORE_PTRMAP_H */
