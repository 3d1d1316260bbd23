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

/* conv2d's passes, for ml__wino_tile */
enum { ML_WINO_FORWARD, ML_WINO_INPUT_GRAD, ML_WINO_KERNEL_GRAD };

/* The algorithm conv2d of this shape (3x3, stride 1, 'same', n images of h x w, c -> f
 * channels: the layer's, for all three passes) takes for `pass`: 0 the direct im2col path,
 * 2 F(2x2, 3x3), 4 F(4x4, 3x3). A fixed table of the shape (benchmarks/conv_layers.py
 * measured it), never of a timing or of the threads. */
int ml__wino_tile(int pass, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f);

/* For benchmarks/conv_layers.py only (set through ctypes): 0 (the default) the table above;
 * 1 direct, 2 F(2x2), 4 F(4x4) for every 3x3 stride-1 'same' convolution. */
extern int ml__wino_force;

/* y = conv2d(x, k) + b (b may be NULL) by F(m x m, 3x3), m 2 or 4. flip: use
 * k'[i][j][a][b] = k[2-i][2-j][b][a], so with x the output gradient (c its channels, i.e.
 * k's filters) and f = k's input channels the result is conv2d's input gradient. 0 when
 * done, -1 out of memory (y undefined). */
int ml__wino_conv(int m, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                  const float *k, int flip, const float *b, float *y);

/* dk (3, 3, c, f) = conv2d's kernel gradient for input x (n, h, w, c) and output gradient
 * gy (n, h, w, f) by F(m x m, 3x3): G^T [sum over tiles (A gy A^T) . (B^T x B)] G, the
 * adjoint in k of the forward above. 0 when done, -1 out of memory (dk undefined). */
int ml__wino_kernel_grad(int m, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f,
                         const float *x, const float *gy, float *dk);

#endif /* ML_KERNELS_WINOGRAD_H */
