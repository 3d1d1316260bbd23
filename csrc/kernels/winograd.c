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

int ml__wino_pays(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f) {
    /* The transforms cost about (c + f) additions a tile per channel against 16 c f
     * multiply-adds of the products: they pay from 16 channels each way. A 3x3 image
     * (Omniglot's fourth block) is one 4x4 tile for 9 outputs (16 multiplies where the
     * direct algorithm makes 81 for 9, against 36 for 4 on a large image): measured ~13 %
     * slower than the direct path's forward, so images under 4x4 stay direct. */
    return n > 0 && h >= 4 && w >= 4 && c >= 16 && f >= 16;
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

static int64_t chunk_tiles(int64_t c, int64_t f) {
    int64_t t = WINO_CHUNK_FLOATS / (16 * (c + f));
    if (t < WINO_WIDE_BELOW) t = WINO_WIDE_TILES;
    if (t > 256) t = 256;
    return t;
}

typedef struct wino_job {
    int64_t n, h, w, c, f, th, tw, T, tc, chunks, parts;
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

/* The transforms of tiles [t0, t1):
 * TR_INPUT   buf[s][t - t0][:] = (B^T d B)[s] for x's 4x4 tile d (zeros outside the image);
 * TR_OUTPUT  y's 2x2 tile = A^T M A (+ b) for M = buf[.][t - t0][:], pixels outside the
 *            image written to a sink;
 * TR_GRAD    buf[s][t - t0][:] = (A g A^T)[s] for gy's 2x2 tile g (zeros outside).
 * sS: the stride of s (stride_of: the chunk's tiles and a pad). */
ML_INLINE void wino_tiles_body(const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS,
                               float *buf, const float *zeros, float *sink) {
    const int64_t per = j->th * j->tw, H = j->h, W = j->w;
    const int64_t C = kind == TR_INPUT ? j->c : j->f;
    const float *b = j->b ? j->b : zeros;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t img = t / per, r = t % per, ty = r / j->tw, tx = r % j->tw;
        float *o = buf + (t - t0) * C;
        int64_t c = 0;
        if (kind == TR_INPUT) {
            const float *p[16];
            for (int i = 0; i < 4; i++)
                for (int q = 0; q < 4; q++) {
                    const int64_t yy = 2 * ty - 1 + i, xx = 2 * tx - 1 + q;
                    p[i * 4 + q] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                                       ? j->x + ((img * H + yy) * W + xx) * C
                                       : zeros;
                }
            for (; c + 8 <= C; c += 8) tile_input(p, o, sS, c, 8);
            if (c < C) tile_input(p, o, sS, c, C - c);
        } else if (kind == TR_GRAD) {
            const float *p[4];
            for (int i = 0; i < 2; i++)
                for (int q = 0; q < 2; q++) {
                    const int64_t yy = 2 * ty + i, xx = 2 * tx + q;
                    p[i * 2 + q] = (yy < H && xx < W) ? j->gy + ((img * H + yy) * W + xx) * C
                                                      : zeros;
                }
            for (; c + 8 <= C; c += 8) tile_grad(p, o, sS, c, 8);
            if (c < C) tile_grad(p, o, sS, c, C - c);
        } else {
            float *q[4];
            for (int i = 0; i < 2; i++)
                for (int a = 0; a < 2; a++) {
                    const int64_t yy = 2 * ty + i, xx = 2 * tx + a;
                    q[i * 2 + a] = (yy < H && xx < W) ? j->y + ((img * H + yy) * W + xx) * C : sink;
                }
            for (; c + 8 <= C; c += 8) tile_output(o, q, b, sS, c, 8);
            if (c < C) tile_output(o, q, b, sS, c, C - c);
        }
    }
}
/* compiled for AVX2 and for the baseline: additions only, the same bits on both */
ML_CPU_CLONES(wino_tiles,
              (const wino_job *j, int kind, int64_t t0, int64_t t1, int64_t sS, float *buf,
               const float *zeros, float *sink),
              (j, kind, t0, t1, sS, buf, zeros, sink))

/* U[s][a][b] = (G g G^T)[s] for the 3x3 kernel g of input channel a and output channel b
 * (flipped and transposed when flip: the input gradient's kernel). */
static void kernel_transform(int64_t c, int64_t f, const float *k, int flip, float *u) {
    for (int64_t a = 0; a < c; a++)
        for (int64_t b = 0; b < f; b++) {
            float g[3][3], d[4][3];
            for (int i = 0; i < 3; i++)
                for (int q = 0; q < 3; q++)
                    g[i][q] = flip ? k[((2 - i) * 3 + (2 - q)) * c * f + b * c + a]
                                   : k[(i * 3 + q) * c * f + a * f + b];
            for (int q = 0; q < 3; q++) { /* G g */
                d[0][q] = g[0][q];
                d[1][q] = 0.5f * (g[0][q] + g[1][q] + g[2][q]);
                d[2][q] = 0.5f * (g[0][q] - g[1][q] + g[2][q]);
                d[3][q] = g[2][q];
            }
            for (int i = 0; i < 4; i++) { /* (G g) G^T */
                float *o = u + (i * 4) * c * f + a * f + b;
                o[0] = d[i][0];
                o[c * f] = 0.5f * (d[i][0] + d[i][1] + d[i][2]);
                o[2 * c * f] = 0.5f * (d[i][0] - d[i][1] + d[i][2]);
                o[3 * c * f] = d[i][2];
            }
        }
}

/* The distance between two of a chunk's 16 transformed matrices of `ch` channels: the
 * chunk's tiles and 64 bytes more, so that the 16 rows a tile's transform reads or writes
 * do not share their address modulo 4 KiB (they would fall in one L1 set and alias the
 * loads, and the transforms ran at a third of the speed). */
static int64_t stride_of(const wino_job *j, int64_t ch) { return j->tc * ch + 16; }

/* A chunk's scratch: V (16 x tc x c), M or the gradient's V (16 x tc x f), zeros, sink. */
static float *chunk_buffer(const wino_job *j) {
    const int64_t cm = j->c > j->f ? j->c : j->f,
                  vm = 16 * (stride_of(j, j->c) + stride_of(j, j->f));
    float *buf = ml__scratch(ML_SCRATCH_CONV_COLS, (size_t)(vm + 2 * cm));
    if (buf) memset(buf + vm, 0, (size_t)cm * sizeof(float));
    return buf;
}

static void conv_chunk(void *ctx, int64_t ci) {
    wino_job *j = ctx;
    float *v = chunk_buffer(j);
    if (!v) {
        atomic_store(&j->failed, 1);
        return;
    }
    const int64_t tc = j->tc, t0 = ci * tc, nt = j->T - t0 < tc ? j->T - t0 : tc;
    const int64_t sv = stride_of(j, j->c), sm = stride_of(j, j->f);
    float *m = v + 16 * sv, *zeros = m + 16 * sm, *sink = zeros + (j->c > j->f ? j->c : j->f);
    wino_tiles(j, TR_INPUT, t0, t0 + nt, sv, v, zeros, sink);
    ml__sgemm_batch(0, 0, nt, j->f, j->c, 1.0f, v, j->c, sv, j->u, j->f, j->c * j->f, 0.0f, m, j->f,
                    sm, 16);
    wino_tiles(j, TR_OUTPUT, t0, t0 + nt, sm, m, zeros, sink);
}

int ml__wino_conv(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                  const float *k, int flip, const float *b, float *y) {
    wino_job j = {.n = n, .h = h, .w = w, .c = c, .f = f, .x = x, .b = b, .y = y};
    j.th = (h + 1) / 2;
    j.tw = (w + 1) / 2;
    j.T = n * j.th * j.tw;
    j.tc = chunk_tiles(c, f);
    j.chunks = (j.T + j.tc - 1) / j.tc;
    /* the transformed kernel: the calling thread's buffer, read by every chunk */
    float *u = ml__scratch(ML_SCRATCH_CONV_PARTS, (size_t)(16 * c * f));
    if (!u) return -1;
    kernel_transform(c, f, k, flip, u);
    j.u = u;
    atomic_init(&j.failed, 0);
    ml__parallel_for(j.chunks, 0, conv_chunk, &j);
    return atomic_load(&j.failed) ? -1 : 0;
}

/* Part p's sum over its chunks of V_s^T W_s, into its own 16 x c x f slice of du. */
static void kernel_grad_part(void *ctx, int64_t p) {
    wino_job *j = ctx;
    float *v = chunk_buffer(j);
    if (!v) {
        atomic_store(&j->failed, 1);
        return;
    }
    const int64_t tc = j->tc, c = j->c, f = j->f, sv = stride_of(j, c), sw = stride_of(j, f);
    float *wg = v + 16 * sv, *zeros = wg + 16 * sw, *sink = zeros + (c > f ? c : f);
    float *du = j->du + p * 16 * c * f;
    const int64_t c0 = p * j->chunks / j->parts, c1 = (p + 1) * j->chunks / j->parts;
    for (int64_t ci = c0; ci < c1; ci++) {
        const int64_t t0 = ci * tc, nt = j->T - t0 < tc ? j->T - t0 : tc;
        wino_tiles(j, TR_INPUT, t0, t0 + nt, sv, v, zeros, sink);
        wino_tiles(j, TR_GRAD, t0, t0 + nt, sw, wg, zeros, sink);
        ml__sgemm_batch(1, 0, c, f, nt, 1.0f, v, c, sv, wg, f, sw, ci == c0 ? 0.0f : 1.0f, du, f,
                        c * f, 16);
    }
}

int ml__wino_kernel_grad(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                         const float *gy, float *dk) {
    wino_job j = {.n = n, .h = h, .w = w, .c = c, .f = f, .x = x, .gy = gy};
    j.th = (h + 1) / 2;
    j.tw = (w + 1) / 2;
    j.T = n * j.th * j.tw;
    j.tc = chunk_tiles(c, f);
    j.chunks = (j.T + j.tc - 1) / j.tc;
    j.parts = j.chunks < WINO_PARTS ? j.chunks : WINO_PARTS;
    float *du = ml__scratch(ML_SCRATCH_CONV_PARTS, (size_t)(j.parts * 16 * c * f));
    if (!du) return -1;
    j.du = du;
    atomic_init(&j.failed, 0);
    ml__parallel_for(j.parts, 0, kernel_grad_part, &j);
    if (atomic_load(&j.failed)) return -1;
    const int64_t e = 16 * c * f;
    for (int64_t p = 1; p < j.parts; p++) { /* part order: independent of the threads */
        const float *restrict src = du + p * e;
        for (int64_t t = 0; t < e; t++) du[t] += src[t];
    }
    /* dk = G^T dU G, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1] */
    const int64_t cf = c * f;
    for (int64_t a = 0; a < cf; a++) {
        float d[3][4];
        for (int q = 0; q < 4; q++) {
            const float u0 = du[q * cf + a], u1 = du[(4 + q) * cf + a], u2 = du[(8 + q) * cf + a],
                        u3 = du[(12 + q) * cf + a];
            d[0][q] = u0 + 0.5f * (u1 + u2);
            d[1][q] = 0.5f * (u1 - u2);
            d[2][q] = 0.5f * (u1 + u2) + u3;
        }
        for (int i = 0; i < 3; i++) {
            dk[(i * 3 + 0) * cf + a] = d[i][0] + 0.5f * (d[i][1] + d[i][2]);
            dk[(i * 3 + 1) * cf + a] = 0.5f * (d[i][1] - d[i][2]);
            dk[(i * 3 + 2) * cf + a] = 0.5f * (d[i][1] + d[i][2]) + d[i][3];
        }
    }
    return 0;
}
