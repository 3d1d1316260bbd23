/*
 * scratch.c — per-thread scratch buffers (see scratch.h): growth, with the size checked
 * for overflow, and their release when a thread exits.
 */
#define _POSIX_C_SOURCE 200809L

#include "scratch.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

_Thread_local ml_scratch_buf ml__scratch_tl[ML_SCRATCH_SLOTS];

static pthread_key_t key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static int key_ok;

/* At thread exit (value: the thread's slots): destructors run on the exiting thread. */
static void release(void *slots) {
    ml_scratch_buf *s = slots;
    for (int i = 0; i < ML_SCRATCH_SLOTS; ++i) {
        free(s[i].buf);
        s[i].buf = NULL;
        s[i].cap = 0;
    }
}

static void key_init(void) { key_ok = pthread_key_create(&key, release) == 0; }

float *ml__scratch_grow(int slot, size_t floats) {
    if (floats > (SIZE_MAX - 63) / sizeof(float)) return NULL;
    const size_t bytes = (floats * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) return NULL;
    ml_scratch_buf *s = &ml__scratch_tl[slot];
    free(s->buf);
    s->buf = p;
    s->cap = bytes / sizeof(float);
    pthread_once(&key_once, key_init);
    /* (without the key a thread's buffers outlive it: memory, never a wrong result) */
    if (key_ok) pthread_setspecific(key, ml__scratch_tl);
    return p;
}
