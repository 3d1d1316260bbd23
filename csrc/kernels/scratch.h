/*
 * scratch.h — per-thread scratch buffers, one per purpose (internal).
 *
 * A kernel that needs working memory (the GEMM's packed panels, the convolution's column
 * matrix) asks for it here instead of calling malloc per call: each thread keeps one
 * 64-byte aligned buffer per slot, grown on demand and kept between calls, never shared
 * with another thread, and freed when the thread exits. The slots are separate because
 * their users are live at once (a convolution's column matrix is an operand of the GEMM
 * that packs into its own buffer).
 */
#ifndef ML_KERNELS_SCRATCH_H
#define ML_KERNELS_SCRATCH_H

#include <stddef.h>

#include "cpu.h"

enum ml_scratch_slot {
    ML_SCRATCH_GEMM,       /* the GEMM: packed blocks, B^T copied, a gathered column */
    ML_SCRATCH_CONV_COLS,  /* conv2d: a chunk of images' column matrix */
    ML_SCRATCH_CONV_PARTS, /* conv2d's kernel gradient: the chunks' partial sums */
    ML_SCRATCH_BN_ROWS,    /* batch norm's backward from a pool: a chunk's gradient rows */
    ML_SCRATCH_SLOTS
};

typedef struct ml_scratch_buf {
    float *buf;
    size_t cap; /* floats */
} ml_scratch_buf;

extern ML_HIDDEN _Thread_local ml_scratch_buf ml__scratch_tl[ML_SCRATCH_SLOTS];
ML_HIDDEN float *ml__scratch_grow(int slot, size_t floats);

/* This thread's buffer for slot, at least floats long and 64-byte aligned; NULL when the
 * size overflows or memory runs out. Its contents are undefined (a grown buffer is a new
 * one) and it stays valid until the next call for the same slot on this thread. */
static inline float *ml__scratch(int slot, size_t floats) {
    ml_scratch_buf *s = &ml__scratch_tl[slot];
    return floats <= s->cap ? s->buf : ml__scratch_grow(slot, floats);
}

#endif /* ML_KERNELS_SCRATCH_H */
