/* ptrmap.c — the growth and release of ml_ptrmap's table (see ptrmap.h). */
#include "ptrmap.h"

#include <stdlib.h>

int ml__ptrmap_reserve(ml_ptrmap *m, size_t n) {
    size_t cap = m->cap ? m->cap : 64;
    while (cap < 2 * n) {
        if (cap > SIZE_MAX / 4 / sizeof *m->keys) return 0;
        cap *= 2;
    }
    if (cap == m->cap) return 1;
    const void **keys = calloc(cap, sizeof *keys);
    int32_t *vals = malloc(cap * sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return 0;
    }
    for (size_t i = 0; i < m->cap; i++) { /* rehash into the larger table */
        if (!m->keys[i]) continue;
        size_t j = ml__ptrmap_slot(m->keys[i], cap);
        while (keys[j]) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 1;
}

void ml__ptrmap_free(ml_ptrmap *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->n = 0;
}
