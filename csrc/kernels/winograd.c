/* winograd.c — F(2x2, 3x3) convolutions, channels last (see winograd.h).
 *
 * With d a 4x4 input tile, g a 3x3 kernel and the matrices of Lavin & Gray (2016)
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 * an output tile is A^T [(G g G^T) . (B^T d B)] A. Every transform is additions (and
 * halvings, exact), so the only rounding beyond the direct algorithm's is in the sums of
 * the transforms: the error is a small multiple of the direct one's (tests/core/
 * test_conv_ops.py states the bound against float64).
 *
 * A call works on chunks of tiles (a tile: one image's 2x2 output pixels, numbered image by
 * image, row by row): each chunk transforms its input tiles into V (16 x tiles x c), runs
 * the 16 GEMMs V_s U_s (U_s = the transformed kernel, c x f) into M (16 x tiles x f) and
 * transforms M back into the output. A chunk's V and M stay in a thread's scratch buffer,
 * sized to stay in L2 (WINO_CHUNK_FLOATS; wide layers take more tiles: chunk_tiles).
 */
#include "winograd.h"

#include <stdatomic.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"
#include "gemm.h"
#include "scratch.h"

/* V + M of a chunk, in floats: 384 KiB (the L2 is 512 KiB-1 MiB a core on the machines
 * measured; benchmarks/conv_layers.py). */
#define WINO_CHUNK_FLOATS (96 * 1024)
/* The kernel gradient's tile range is cut into at most this many parts (by the shape): the
 * threads' share of the work, each part's partial sum its own, summed in part order. */
#define WINO_PARTS 4

int ml__wino_force = 0;

int ml__wino_tile(int pass, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f) {
    if (ml__wino_force) return ml__wino_force == 1 ? 0 : ml__wino_force;
    /* The transforms cost about (c + f) additions a tile per channel against 16 c f
     * multiply-adds of the products: they pay from 16 channels each way. A 3x3 image
     * (Omniglot's fourth block) is one 4x4 tile for 9 outputs (16 multiplies where the
     * direct algorithm makes 81 for 9, against 36 for 4 on a large image): measured ~13 %
     * slower than the direct path's forward, so images under 4x4 stay direct. */
    if (!(n > 0 && h >= 4 && w >= 4 && c >= 16 && f >= 16)) return 0;
    /* F(4x4): 36 multiplies for 16 outputs (F(2x2): 64), but 6x6 input tiles cost about
     * 2.5x F(2x2)'s transforms per output, and an image of h rows takes ceil(h / 4) tile
     * rows (10 -> 12, 7 -> 8: a third of the work padding). benchmarks/conv_layers.py
     * --algos, one thread, CPU time, F(4x4) / F(2x2) for forward, input and kernel
     * gradient: 42x42x32 1.21, 1.21, 1.36; 21x21x32 1.14, 1.15, 1.28; 14x14x64 (200 images)
     * 1.07, 1.06, 1.11 and (80) 1.01, 1.00, 1.04; 10x10x32 0.91, 0.88, 0.96; 7x7x64 0.99,
     * 0.99, 1.11 (80) and 3x3 0.62-0.90. So F(4x4) from 20x20 on, where its gain was >= 10 %
     * in all three passes. ResNet-12's wider layers (--algos --only r12, 100 images, the same
     * loaded machine, a quick run and a full one): 64 -> 160 at 42x42 1.10-1.44, 160 -> 160
     * at 42x42 1.16-1.29, 160 -> 320 at 21x21 1.02-1.23 (1.12 on average over the passes),
     * 320 -> 320 at 21x21 1.26-1.37, all faster in every pass; at 10x10 320 -> 640 0.96-1.01
     * and 640 -> 640 1.00-1.17 (1.00-1.03 in the full run), so from 20x20 on whatever the
     * channels, and F(2x2) below. The
     * same for all three passes, so a layer's forward and its gradients (and their double
     * backward) take one algorithm. */
    if (h >= 20 && w >= 20) return 4;
    return 2;
}

/* Tiles a chunk of c -> f channels takes: as many as fit WINO_CHUNK_FLOATS, but
 * WINO_WIDE_TILES where that would be fewer than WINO_WIDE_BELOW (from 192 channels in
 * and out together). A chunk's 16 products are (tiles x c) x (c x f): with few tiles each
 * one reads its 16 transformed kernels (c f floats each: 6.5 MiB at 320 -> 320) for little
 * arithmetic, and the kernel gradient reads and writes its part's 16 c f partial sums per
 * chunk. ResNet-12's layers at 100 images (benchmarks/conv_layers.py --only r12, one
 * thread, GFLOP/s of the direct algorithm, 16 -> 128 tiles): 640 -> 640 at 10x10 forward
 * 131 -> 202, kernel gradient 111 -> 215; 320 -> 320 at 21x21 kernel gradient 120 -> 186;
 * 160 -> 160 at 42x42 184 -> 193 and 169 -> 194. At 64 -> 64 (48 tiles) 128 tiles
 * measured no faster, so the L2-sized chunk stays there. A rule of the shape: the chunking,
 * hence the bits, never depend on the threads. */
#define WINO_WIDE_BELOW 32
#define WINO_WIDE_TILES 128

static int64_t chunk_tiles(int m, int64_t c, int64_t f) {
    int64_t t = WINO_CHUNK_FLOATS / ((m + 2) * (m + 2) * (c + f));
    if (WINO_CHUNK_FLOATS / (16 * (c + f)) < WINO_WIDE_BELOW) t = WINO_WIDE_TILES;
    if (t > 256) t = 256;
    return t > 0 ? t : 1;
}

typedef struct wino_job {
    int64_t n, h, w, c, f, th, tw, T, tc, chunks, parts;
    int64_t m, S; /* output tile side (2 or 4) and transformed positions ((m + 2)^2) */
    const float *x, *u, *b, *gy;
    float *y, *du;
    atomic_int failed;
} wino_job;

enum { TR_INPUT, TR_OUTPUT, TR_GRAD };

/* 8 channels at a time in GCC/Clang vector types: one AVX register, or two SSE ones in the
 * baseline clone; a channel's arithmetic is the same in every lane and in the tail's
 * partial vector (loaded into zeros, stored lane by lane), so the bits do not depend on
 * where a channel falls. */
typedef float v8 __attribute__((vector_size(32)));
/* the v8 helpers are always inlined: no call passes one, so the baseline clone's ABI note
 * about returning an AVX-sized vector does not apply */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

ML_INLINE v8 ld8(const float *p, int64_t l) {
    v8 v = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(&v, p, (size_t)l * sizeof(float));
    return v;
}

ML_INLINE void st8(float *p, v8 v, int64_t l) { memcpy(p, &v, (size_t)l * sizeof(float)); }

/* B^T d B for channels [c, c + l) of the 16 pixels p, into o[s * sS + c]. */
ML_INLINE void tile_input(const float *const *p, float *o, int64_t sS, int64_t c, int64_t l) {
    v8 d[4][4];
    for (int q = 0; q < 4; q++) { /* B^T d: rows */
        const v8 a0 = ld8(p[q] + c, l), a1 = ld8(p[4 + q] + c, l), a2 = ld8(p[8 + q] + c, l),
                 a3 = ld8(p[12 + q] + c, l);
        d[0][q] = a0 - a2;
        d[1][q] = a1 + a2;
        d[2][q] = a2 - a1;
        d[3][q] = a1 - a3;
    }
    for (int i = 0; i < 4; i++) { /* (B^T d) B: columns */
        st8(o + (i * 4 + 0) * sS + c, d[i][0] - d[i][2], l);
        st8(o + (i * 4 + 1) * sS + c, d[i][1] + d[i][2], l);
        st8(o + (i * 4 + 2) * sS + c, d[i][2] - d[i][1], l);
        st8(o + (i * 4 + 3) * sS + c, d[i][1] - d[i][3], l);
    }
}

/* A g A^T (A = [1 0; 1 1; 1 -1; 0 -1]) for channels [c, c + l) of the 2x2 pixels p. */
ML_INLINE void tile_grad(const float *const *p, float *o, int64_t sS, int64_t c, int64_t l) {
    v8 d[4][2];
    for (int q = 0; q < 2; q++) {
        const v8 g0 = ld8(p[q] + c, l), g1 = ld8(p[2 + q] + c, l);
        d[0][q] = g0;
        d[1][q] = g0 + g1;
        d[2][q] = g0 - g1;
        d[3][q] = -g1;
    }
    for (int i = 0; i < 4; i++) {
        st8(o + (i * 4 + 0) * sS + c, d[i][0], l);
        st8(o + (i * 4 + 1) * sS + c, d[i][0] + d[i][1], l);
        st8(o + (i * 4 + 2) * sS + c, d[i][0] - d[i][1], l);
        st8(o + (i * 4 + 3) * sS + c, -d[i][1], l);
    }
}

/* A^T M A (+ b) for channels [c, c + l) of the transformed tile m, into the 2x2 pixels q. */
ML_INLINE void tile_output(const float *m, float *const *q, const float *b, int64_t sS, int64_t c,
                           int64_t l) {
    v8 d[2][4];
    for (int a = 0; a < 4; a++) { /* A^T M: rows */
        const v8 m0 = ld8(m + a * sS + c, l), m1 = ld8(m + (4 + a) * sS + c, l),
                 m2 = ld8(m + (8 + a) * sS + c, l), m3 = ld8(m + (12 + a) * sS + c, l);
        d[0][a] = m0 + m1 + m2;
        d[1][a] = m1 - m2 - m3;
    }
    const v8 bv = ld8(b + c, l);
    for (int i = 0; i < 2; i++) { /* (A^T M) A: columns */
        st8(q[i * 2] + c, (d[i][0] + d[i][1] + d[i][2]) + bv, l);
        st8(q[i * 2 + 1] + c, (d[i][1] - d[i][2] - d[i][3]) + bv, l);
    }
}

ML_INLINE void wino_tiles_m(const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS,
                            float *buf, const float *zeros, float *sink, const int m);
ML_INLINE void wino_tiles_body(const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS,
                               float *buf, const float *zeros, float *sink) {
    wino_tiles_m(j, kind, t0, t1, sS, buf, zeros, sink, 2);
}
/* compiled for AVX2 and for the baseline: additions only, the same bits on both */
ML_CPU_CLONES(wino_tiles,
              (const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS, float *buf,
               const float *zeros, float *sink),
              (j, kind, t0, t1, sS, buf, zeros, sink))

/* F(4x4, 3x3) (interpolation points 0, 1, -1, 2, -2 and infinity; Lavin & Gray 2016):
 *   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
 *          0 4 0 -5 0 1]
 *   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * B^T and A^T are small integers: the per-tile transforms below are additions and
 * multiplications by powers of two (exact, so contracting them could not change a bit);
 * 5 d is written 4 d + d. G's thirds and sixths are applied once a call, in double. */

/* one column (or row) of B^T d: d0..d5 -> r[0..5] */
ML_INLINE void bt6(const v8 *d, v8 *r) {
    const v8 d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3], d4 = d[4], d5 = d[5];
    const v8 t0 = d4 - 4.0f * d2, t1 = d3 - 4.0f * d1, t2 = d4 - d2, t3 = 2.0f * (d3 - d1);
    r[0] = 4.0f * (d0 - d2) + (d4 - d2);
    r[1] = t0 + t1;
    r[2] = t0 - t1;
    r[3] = t2 + t3;
    r[4] = t2 - t3;
    r[5] = 4.0f * (d1 - d3) + (d5 - d3);
}

/* B^T d B for channels [c, c + l) of the 36 pixels p, into o[s * sS + c]. */
ML_INLINE void tile_input4(const float *const *p, float *o, int64_t sS, int64_t c, int64_t l) {
    v8 d[6][6], r[6];
    for (int q = 0; q < 6; q++) {
        v8 a[6];
        for (int i = 0; i < 6; i++) a[i] = ld8(p[i * 6 + q] + c, l);
        bt6(a, r);
        for (int i = 0; i < 6; i++) d[i][q] = r[i];
    }
    for (int i = 0; i < 6; i++) {
        bt6(d[i], r);
        for (int q = 0; q < 6; q++) st8(o + (i * 6 + q) * sS + c, r[q], l);
    }
}

/* one column of A g (A = (A^T)^T, 6 x 4): g0..g3 -> r[0..5] */
ML_INLINE void a6(const v8 *g, v8 *r) {
    const v8 g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3];
    const v8 e = g0 + g2, od = g1 + g3, e2 = g0 + 4.0f * g2, o2 = 2.0f * g1 + 8.0f * g3;
    r[0] = g0;
    r[1] = e + od;
    r[2] = e - od;
    r[3] = e2 + o2;
    r[4] = e2 - o2;
    r[5] = g3;
}

/* A g A^T for channels [c, c + l) of the 4x4 pixels p. */
ML_INLINE void tile_grad4(const float *const *p, float *o, int64_t sS, int64_t c, int64_t l) {
    v8 d[6][4], r[6];
    for (int q = 0; q < 4; q++) {
        v8 a[4];
        for (int i = 0; i < 4; i++) a[i] = ld8(p[i * 4 + q] + c, l);
        a6(a, r);
        for (int i = 0; i < 6; i++) d[i][q] = r[i];
    }
    for (int i = 0; i < 6; i++) {
        a6(d[i], r);
        for (int q = 0; q < 6; q++) st8(o + (i * 6 + q) * sS + c, r[q], l);
    }
}

/* one column of A^T M: m0..m5 -> r[0..3] */
ML_INLINE void at4(const v8 *m, v8 *r) {
    const v8 m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5];
    const v8 s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    r[0] = m0 + s12 + s34;
    r[1] = d12 + 2.0f * d34;
    r[2] = s12 + 4.0f * s34;
    r[3] = d12 + 8.0f * d34 + m5;
}

/* A^T M A (+ b) for channels [c, c + l) of the transformed tile m, into the 4x4 pixels q. */
ML_INLINE void tile_output4(const float *m, float *const *q, const float *b, int64_t sS, int64_t c,
                            int64_t l) {
    v8 d[4][6], r[4];
    for (int a = 0; a < 6; a++) {
        v8 e[6];
        for (int i = 0; i < 6; i++) e[i] = ld8(m + (i * 6 + a) * sS + c, l);
        at4(e, r);
        for (int i = 0; i < 4; i++) d[i][a] = r[i];
    }
    const v8 bv = ld8(b + c, l);
    for (int i = 0; i < 4; i++) {
        at4(d[i], r);
        for (int a = 0; a < 4; a++) st8(q[i * 4 + a] + c, r[a] + bv, l);
    }
}

/* The transforms of tiles [t0, t1) for F(m x m, 3x3), m = 2 or 4 (a constant at each
 * call, so the branches on it fold away); n = m + 2 is the input tile's side:
 * TR_INPUT   buf[s][t - t0][:] = (B^T d B)[s] for x's n x n tile d at m * (ty, tx) - 1
 *            (zeros outside the image);
 * TR_OUTPUT  y's m x m tile = A^T M A (+ b) for M = buf[.][t - t0][:], pixels outside the
 *            image written to a sink;
 * TR_GRAD    buf[s][t - t0][:] = (A g A^T)[s] for gy's m x m tile g (zeros outside).
 * sS: the stride of s (stride_of: the chunk's tiles and a pad). */
ML_INLINE void wino_tiles_m(const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS,
                            float *buf, const float *zeros, float *sink, const int m) {
    const int64_t per = j->th * j->tw, H = j->h, W = j->w;
    const int64_t C = kind == TR_INPUT ? j->c : j->f;
    const float *b = j->b ? j->b : zeros;
    const int n = m + 2;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t img = t / per, r = t % per, ty = r / j->tw, tx = r % j->tw;
        float *o = buf + (t - t0) * C;
        int64_t c = 0;
        if (kind == TR_INPUT) {
            const float *p[36];
            for (int i = 0; i < n; i++)
                for (int q = 0; q < n; q++) {
                    const int64_t yy = m * ty - 1 + i, xx = m * tx - 1 + q;
                    p[i * n + q] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                                       ? j->x + ((img * H + yy) * W + xx) * C
                                       : zeros;
                }
            for (; c + 8 <= C; c += 8)
                m == 2 ? tile_input(p, o, sS, c, 8) : tile_input4(p, o, sS, c, 8);
            if (c < C) m == 2 ? tile_input(p, o, sS, c, C - c) : tile_input4(p, o, sS, c, C - c);
        } else if (kind == TR_GRAD) {
            const float *p[16];
            for (int i = 0; i < m; i++)
                for (int q = 0; q < m; q++) {
                    const int64_t yy = m * ty + i, xx = m * tx + q;
                    p[i * m + q] = (yy < H && xx < W) ? j->gy + ((img * H + yy) * W + xx) * C
                                                      : zeros;
                }
            for (; c + 8 <= C; c += 8)
                m == 2 ? tile_grad(p, o, sS, c, 8) : tile_grad4(p, o, sS, c, 8);
            if (c < C) m == 2 ? tile_grad(p, o, sS, c, C - c) : tile_grad4(p, o, sS, c, C - c);
        } else {
            float *q[16];
            for (int i = 0; i < m; i++)
                for (int a = 0; a < m; a++) {
                    const int64_t yy = m * ty + i, xx = m * tx + a;
                    q[i * m + a] = (yy < H && xx < W) ? j->y + ((img * H + yy) * W + xx) * C : sink;
                }
            for (; c + 8 <= C; c += 8)
                m == 2 ? tile_output(o, q, b, sS, c, 8) : tile_output4(o, q, b, sS, c, 8);
            if (c < C)
                m == 2 ? tile_output(o, q, b, sS, c, C - c) : tile_output4(o, q, b, sS, c, C - c);
        }
    }
}
ML_INLINE void wino4_tiles_body(const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS,
                                float *buf, const float *zeros, float *sink) {
    wino_tiles_m(j, kind, t0, t1, sS, buf, zeros, sink, 4);
}
/* compiled for AVX2 (without FMA) and for the baseline, like wino_tiles */
ML_CPU_CLONES(wino4_tiles,
              (const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS, float *buf,
               const float *zeros, float *sink),
              (j, kind, t0, t1, sS, buf, zeros, sink))


/* The kernel transforms work on KB output channels (b) or U entries (a) at a time, the
 * innermost loops running over them in order so that they vectorise (ML_CPU_CLONES below);
 * every entry's arithmetic is the same whatever its lane: the same bits as one at a time. */
#define KB 64

/* g[i][q][e]: tap (i, q) of the 3x3 kernel of input channel a and output channel b0 + e,
 * e < nb (flipped and transposed when flip: the input gradient's kernel). */
ML_INLINE void kernel_gather(int64_t c, int64_t f, const float *k, int flip, int64_t a, int64_t b0,
                             int64_t nb, float g[3][3][KB]) {
    const int64_t cf = c * f;
    for (int i = 0; i < 3; i++)
        for (int q = 0; q < 3; q++)
            for (int64_t e = 0; e < nb; e++)
                g[i][q][e] = flip ? k[((2 - i) * 3 + (2 - q)) * cf + (b0 + e) * c + a]
                                  : k[(i * 3 + q) * cf + a * f + b0 + e];
}

/* U[s][a][b] = (G g G^T)[s] for the 3x3 kernel g of input channel a and every output
 * channel b. */
ML_INLINE void kernel_transform(int64_t c, int64_t f, const float *k, int flip, float *u,
                                int64_t a) {
    const int64_t cf = c * f;
    for (int64_t b0 = 0; b0 < f; b0 += KB) {
        const int64_t nb = f - b0 < KB ? f - b0 : KB;
        float g[3][3][KB], d[4][3][KB];
        kernel_gather(c, f, k, flip, a, b0, nb, g);
        for (int q = 0; q < 3; q++) /* G g */
            for (int64_t e = 0; e < nb; e++) {
                d[0][q][e] = g[0][q][e];
                d[1][q][e] = 0.5f * (g[0][q][e] + g[1][q][e] + g[2][q][e]);
                d[2][q][e] = 0.5f * (g[0][q][e] - g[1][q][e] + g[2][q][e]);
                d[3][q][e] = g[2][q][e];
            }
        for (int i = 0; i < 4; i++) { /* (G g) G^T */
            float *o = u + (i * 4) * cf + a * f + b0;
            for (int64_t e = 0; e < nb; e++) {
                o[e] = d[i][0][e];
                o[cf + e] = 0.5f * (d[i][0][e] + d[i][1][e] + d[i][2][e]);
                o[2 * cf + e] = 0.5f * (d[i][0][e] - d[i][1][e] + d[i][2][e]);
                o[3 * cf + e] = d[i][2][e];
            }
        }
    }
}

/* F(4x4, 3x3)'s G (see above), in double: G g G^T and G^T dU G are rounded to float once. */
static const double G4[6][3] = {{0.25, 0, 0},
                                {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                {0, 0, 1}};

/* kernel_transform for F(4x4, 3x3): U[s][a][b], s < 36. The taps are widened to double
 * in the products with G4 (exactly, as a double copy of them would be). */
ML_INLINE void kernel_transform4(int64_t c, int64_t f, const float *k, int flip, float *u,
                                 int64_t a) {
    const int64_t cf = c * f;
    for (int64_t b0 = 0; b0 < f; b0 += KB) {
        const int64_t nb = f - b0 < KB ? f - b0 : KB;
        float g[3][3][KB];
        double d[6][3][KB];
        kernel_gather(c, f, k, flip, a, b0, nb, g);
        for (int i = 0; i < 6; i++) /* G g */
            for (int q = 0; q < 3; q++)
                for (int64_t e = 0; e < nb; e++)
                    d[i][q][e] = G4[i][0] * g[0][q][e] + G4[i][1] * g[1][q][e] +
                                 G4[i][2] * g[2][q][e];
        for (int i = 0; i < 6; i++) /* (G g) G^T */
            for (int q = 0; q < 6; q++) {
                float *o = u + (i * 6 + q) * cf + a * f + b0;
                for (int64_t e = 0; e < nb; e++)
                    o[e] = (float)(d[i][0][e] * G4[q][0] + d[i][1][e] * G4[q][1] +
                                   d[i][2][e] * G4[q][2]);
            }
    }
}

/* The distance between two of a chunk's transformed matrices of `ch` channels: the
 * chunk's tiles and 64 bytes more, so that the rows a tile's transform reads or writes
 * do not share their address modulo 4 KiB (they would fall in one L1 set and alias the
 * loads, and the transforms ran at a third of the speed). */
static int64_t stride_of(const wino_job *j, int64_t ch) { return j->tc * ch + 16; }

/* A chunk's scratch: V (S x tc x c), M or the gradient's V (S x tc x f), zeros, sink. */
static float *chunk_buffer(const wino_job *j) {
    const int64_t cm = j->c > j->f ? j->c : j->f,
                  vm = j->S * (stride_of(j, j->c) + stride_of(j, j->f));
    float *buf = ml__scratch(ML_SCRATCH_CONV_COLS, (size_t)(vm + 2 * cm));
    if (buf) memset(buf + vm, 0, (size_t)cm * sizeof(float));
    return buf;
}

static void transform_tiles(const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS,
                            float *buf, const float *zeros, float *sink) {
    if (j->m == 4)
        wino4_tiles(j, kind, t0, t1, sS, buf, zeros, sink);
    else
        wino_tiles(j, kind, t0, t1, sS, buf, zeros, sink);
}

static void conv_chunk(void *ctx, int64_t ci) {
    wino_job *j = ctx;
    float *v = chunk_buffer(j);
    if (!v) {
        atomic_store(&j->failed, 1);
        return;
    }
    const int64_t tc = j->tc, t0 = ci * tc, nt = j->T - t0 < tc ? j->T - t0 : tc, S = j->S;
    const int64_t sv = stride_of(j, j->c), sm = stride_of(j, j->f);
    float *m = v + S * sv, *zeros = m + S * sm, *sink = zeros + (j->c > j->f ? j->c : j->f);
    transform_tiles(j, TR_INPUT, t0, t0 + nt, sv, v, zeros, sink);
    ml__sgemm_batch(0, 0, nt, j->f, j->c, 1.0f, v, j->c, sv, j->u, j->f, j->c * j->f, 0.0f, m, j->f,
                    sm, S);
    transform_tiles(j, TR_OUTPUT, t0, t0 + nt, sm, m, zeros, sink);
}

/* The job's tiling for output tiles of m x m pixels. */
static void job_tiles(wino_job *j, int m) {
    j->m = m;
    j->S = (m + 2) * (m + 2);
    j->th = (j->h + m - 1) / m;
    j->tw = (j->w + m - 1) / m;
    j->T = j->n * j->th * j->tw;
    j->tc = chunk_tiles(m, j->c, j->f);
    j->chunks = (j->T + j->tc - 1) / j->tc;
}

/* The kernel transform and the kernel gradient's last step run on the pool too, split
 * where each output is its own (an input channel's kernels; ranges of U's entries): the
 * split changes no bits. Below this many kernels (c x f) they stay on the calling thread.
 * They were a serial 4-5 % of MAML conv4's step on two threads (docs/PERFORMANCE.md). */
#define WINO_PAR_KERNELS 1024
/* U's entries a task of the kernel gradient's last step takes */
#define WINO_FINISH_STEP 256

typedef struct kernel_job {
    const wino_job *j;
    const float *k;
    float *u, *dk;
    int flip;
} kernel_job;

/* The kernel gradient's last step for U's entries [a0, a1) of each position: the parts'
 * sums added in part order (independent of the threads), then dk = G^T dU G. */
ML_INLINE void kernel_grad_finish(const wino_job *j, float *dk, int64_t a0, int64_t a1) {
    const int64_t cf = j->c * j->f, e = j->S * cf;
    float *du = j->du;
    for (int64_t p = 1; p < j->parts; p++) {
        for (int64_t s = 0; s < j->S; s++) {
            const float *restrict src = du + p * e + s * cf;
            float *restrict dst = du + s * cf;
            for (int64_t a = a0; a < a1; a++) dst[a] += src[a];
        }
    }
    for (int64_t b0 = a0; b0 < a1; b0 += KB) {
        const int64_t na = a1 - b0 < KB ? a1 - b0 : KB;
        if (j->m == 4) { /* dk = G^T dU G, in double */
            double d[3][6][KB];
            for (int q = 0; q < 6; q++)
                for (int i = 0; i < 3; i++) {
                    for (int64_t t = 0; t < na; t++) d[i][q][t] = 0;
                    for (int r = 0; r < 6; r++) {
                        const float *src = du + (r * 6 + q) * cf + b0;
                        for (int64_t t = 0; t < na; t++) d[i][q][t] += G4[r][i] * src[t];
                    }
                }
            for (int i = 0; i < 3; i++)
                for (int q = 0; q < 3; q++) {
                    float *o = dk + (i * 3 + q) * cf + b0;
                    for (int64_t t = 0; t < na; t++) {
                        double s = 0;
                        for (int r = 0; r < 6; r++) s += d[i][r][t] * G4[r][q];
                        o[t] = (float)s;
                    }
                }
            continue;
        }
        /* dk = G^T dU G, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1] */
        float d[3][4][KB];
        for (int q = 0; q < 4; q++) {
            const float *u0 = du + q * cf + b0, *u1 = du + (4 + q) * cf + b0,
                        *u2 = du + (8 + q) * cf + b0, *u3 = du + (12 + q) * cf + b0;
            for (int64_t t = 0; t < na; t++) {
                d[0][q][t] = u0[t] + 0.5f * (u1[t] + u2[t]);
                d[1][q][t] = 0.5f * (u1[t] - u2[t]);
                d[2][q][t] = 0.5f * (u1[t] + u2[t]) + u3[t];
            }
        }
        for (int i = 0; i < 3; i++) {
            float *o = dk + (i * 3) * cf + b0;
            for (int64_t t = 0; t < na; t++) {
                o[t] = d[i][0][t] + 0.5f * (d[i][1][t] + d[i][2][t]);
                o[cf + t] = 0.5f * (d[i][1][t] - d[i][2][t]);
                o[2 * cf + t] = 0.5f * (d[i][1][t] + d[i][2][t]) + d[i][3][t];
            }
        }
    }
}

/* The kernel transform of input channel i (kind 0), or the kernel gradient's last step for
 * U's entries [i * WINO_FINISH_STEP, ...) (kind 1): vectorised at the machine's width. */
ML_INLINE void wino_kernel_body(const kernel_job *t, int kind, int64_t i) {
    const wino_job *j = t->j;
    if (kind == 1) {
        const int64_t cf = j->c * j->f, a0 = i * WINO_FINISH_STEP;
        kernel_grad_finish(j, t->dk, a0, a0 + WINO_FINISH_STEP < cf ? a0 + WINO_FINISH_STEP : cf);
    } else if (j->m == 4) {
        kernel_transform4(j->c, j->f, t->k, t->flip, t->u, i);
    } else {
        kernel_transform(j->c, j->f, t->k, t->flip, t->u, i);
    }
}
ML_CPU_CLONES(wino_kernel, (const kernel_job *t, int kind, int64_t i), (t, kind, i))

static void kernel_transform_part(void *ctx, int64_t a) { wino_kernel(ctx, 0, a); }

int ml__wino_conv(int m, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                  const float *k, int flip, const float *b, float *y) {
    wino_job j = {.n = n, .h = h, .w = w, .c = c, .f = f, .x = x, .b = b, .y = y};
    job_tiles(&j, m == 4 ? 4 : 2);
    /* the transformed kernel: the calling thread's buffer, read by every chunk */
    float *u = ml__scratch(ML_SCRATCH_CONV_PARTS, (size_t)(j.S * c * f));
    if (!u) return -1;
    kernel_job kt = {.j = &j, .k = k, .u = u, .flip = flip};
    ml__parallel_for(c, c * f >= WINO_PAR_KERNELS ? 0 : 1, kernel_transform_part, &kt);
    j.u = u;
    atomic_init(&j.failed, 0);
    ml__parallel_for(j.chunks, 0, conv_chunk, &j);
    return atomic_load(&j.failed) ? -1 : 0;
}

/* Part p's sum over its chunks of V_s^T W_s, into its own S x c x f slice of du. */
static void kernel_grad_part(void *ctx, int64_t p) {
    wino_job *j = ctx;
    float *v = chunk_buffer(j);
    if (!v) {
        atomic_store(&j->failed, 1);
        return;
    }
    const int64_t tc = j->tc, c = j->c, f = j->f, S = j->S, sv = stride_of(j, c),
                  sw = stride_of(j, f);
    float *wg = v + S * sv, *zeros = wg + S * sw, *sink = zeros + (c > f ? c : f);
    float *du = j->du + p * S * c * f;
    const int64_t c0 = p * j->chunks / j->parts, c1 = (p + 1) * j->chunks / j->parts;
    for (int64_t ci = c0; ci < c1; ci++) {
        const int64_t t0 = ci * tc, nt = j->T - t0 < tc ? j->T - t0 : tc;
        transform_tiles(j, TR_INPUT, t0, t0 + nt, sv, v, zeros, sink);
        transform_tiles(j, TR_GRAD, t0, t0 + nt, sw, wg, zeros, sink);
        ml__sgemm_batch(1, 0, c, f, nt, 1.0f, v, c, sv, wg, f, sw, ci == c0 ? 0.0f : 1.0f, du, f,
                        c * f, S);
    }
}

static void kernel_grad_finish_part(void *ctx, int64_t i) { wino_kernel(ctx, 1, i); }

int ml__wino_kernel_grad(int m, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f,
                         const float *x, const float *gy, float *dk) {
    wino_job j = {.n = n, .h = h, .w = w, .c = c, .f = f, .x = x, .gy = gy};
    job_tiles(&j, m == 4 ? 4 : 2);
    j.parts = j.chunks < WINO_PARTS ? j.chunks : WINO_PARTS;
    float *du = ml__scratch(ML_SCRATCH_CONV_PARTS, (size_t)(j.parts * j.S * c * f));
    if (!du) return -1;
    j.du = du;
    atomic_init(&j.failed, 0);
    ml__parallel_for(j.parts, 0, kernel_grad_part, &j);
    if (atomic_load(&j.failed)) return -1;
    kernel_job kt = {.j = &j, .dk = dk};
    const int64_t cf = c * f, tasks = (cf + WINO_FINISH_STEP - 1) / WINO_FINISH_STEP;
    ml__parallel_for(tasks, cf >= WINO_PAR_KERNELS ? 0 : 1, kernel_grad_finish_part, &kt);
    return 0;
}
