/*
 * winograd.h — 3x3 stride-1 'same' convolutions by Winograd's F(2x2, 3x3) (internal).
 *
 * Channels-last arrays: x (n, h, w, c), k (3, 3, c, f), y (n, h, w, f), the zero padding
 * one pixel on each side (Keras 'same' for a 3x3 window at stride 1). An output tile of
 * 2x2 pixels is A^T [(G k G^T) . (B^T d B)] A for its 4x4 input tile d (Lavin & Gray 2016),
 * so the 16 positions of the transformed tiles are 16 independent GEMMs of
 * (tiles x c) x (c x f): 16 multiplies for 4 outputs instead of 36.
 *
 * Tiles are processed in chunks whose size depends on the shape only; threads share out
 * whole chunks (forward) or whole parts of the tile range (kernel gradient, summed in part
 * order), so results are the same bits for any thread count.
 */
#ifndef ML_KERNELS_WINOGRAD_H
#define ML_KERNELS_WINOGRAD_H

#include <stdint.h>

/* 1 where conv2d of this shape (3x3, stride 1, 'same', n images of h x w, c -> f
 * channels) runs through Winograd, 0 where the direct im2col path does: a fixed rule of
 * the shape (benchmarks/conv_layers.py measured it), never of a timing or of the threads. */
int ml__wino_pays(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f);

/* y = conv2d(x, k) + b (b may be NULL). flip: use k'[i][j][a][b] = k[2-i][2-j][b][a], so
 * with x the output gradient (c its channels, i.e. k's filters) and f = k's input channels
 * the result is conv2d's input gradient. 0 when done, -1 out of memory (y undefined). */
int ml__wino_conv(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                  const float *k, int flip, const float *b, float *y);

/* dk (3, 3, c, f) = conv2d's kernel gradient for input x (n, h, w, c) and output gradient
 * gy (n, h, w, f): G^T [sum over tiles (A gy A^T) . (B^T x B)] G, the adjoint in k of the
 * forward above. 0 when done, -1 out of memory (dk undefined). */
int ml__wino_kernel_grad(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                         const float *gy, float *dk);

#endif /* ML_KERNELS_WINOGRAD_H */
