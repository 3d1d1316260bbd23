/* norm.c — batch normalisation (Ioffe & Szegedy 2015) as Keras' BatchNormalization layer.
 *
 * Training mode is one fused op (OP_BATCH_NORM): per channel, the mean and the biased
 * variance (two passes, double accumulators), then y = (x - mean) * gamma * inv + beta with
 * inv = 1/sqrt(var + eps) in a third. Its backward,
 *   dx = gamma * inv * (g - mean(g) - xhat * mean(g * xhat)),  dgamma = sum(g * xhat),
 *   dbeta = sum(g)   (means and sums over every axis but the channel's),
 * runs as two fused C passes from the forward's statistics. With grad mode off (a first-order
 * backward, where nothing would be recorded anyway) that is all; with it on (MAML's inner
 * step) dx and dgamma are recorded ops of their own (batch_norm_dx, batch_norm_dgamma, the same
 * passes: the same bits) whose backwards are fused passes again, or the same formulas in
 * differentiable ops when a third order is recorded: gradients of every order work (MAML
 * through batch statistics).
 * Inference mode is composed of elementwise ops with the moving statistics.
 * Grouped (ml_batch_norm_grouped): the input's first axis indexes independent groups (the
 * tasks of a vectorised MAML meta-batch), each normalised with its own statistics and its
 * own gamma/beta rows (shape (G, C)): the same kernels run once per group slice.
 * The moving statistics are updated in place with no gradient, only after the output has
 * been computed (a failure leaves them as they were).
 */
#include <math.h>

#include "ops.h"
#include "../kernels/cpu.h"
#include "../kernels/scratch.h"

/* The statistics and normalisation loops are plain C the compiler vectorises; the two
 * range functions (forward, backward) are compiled for AVX2 as well as for the baseline
 * (ML_CPU_CLONES), with the statistics inlined, so they run on 4 doubles / 8 floats at a
 * time where the CPU can. */

static ml_status check_vec(const char *what, const ml_tensor *t, int64_t c, const ml_tensor *x,
                           int axis) {
    if (t && (t->ndim != 1 || t->shape[0] != c))
        return ml_set_error(ML_ERR_SHAPE,
                            "batch_norm: %s must have shape (%lld,) for an input of "
                            "shape %s normalised along axis %d, got %s",
                            what, (long long)c, ML_SHAPE_STR(x), axis, ML_SHAPE_STR(t));
    return ML_OK;
}


/* x seen as (outer, c, inner) around the channel axis ax */
/* x seen as (groups, outer, c, inner): groups is 1, or x's first axis when grouped */
typedef struct bn_geom {
    int64_t groups, outer, c, inner, count, slice;
    int grouped;
} bn_geom;

static bn_geom bn_geom_of(const ml_tensor *x, int ax, int grouped) {
    bn_geom g = {grouped ? x->shape[0] : 1, 1, x->shape[ax], 1, 0, 0, grouped};
    for (int d = grouped ? 1 : 0; d < ax; d++) g.outer *= x->shape[d];
    for (int d = ax + 1; d < x->ndim; d++) g.inner *= x->shape[d];
    g.count = g.outer * g.inner;
    g.slice = g.count * g.c;
    return g;
}

#define BN_BLOCK 16

/* The channels-last block sums run 8 channels at a time down a block's rows with the sums in
 * registers: row after row into an array of C sums stored and reloaded every sum each row,
 * each add waiting on the previous row's store. Each channel's sum is the same adds in the
 * same order (from zero, row by row), so the bits are those of the scalar loop; GCC's vector
 * type is one ymm register in the AVX2 clone, two xmm in the baseline one. */
typedef float bn_v8 __attribute__((vector_size(32), aligned(4), may_alias));
#define BN_LD8(p) (*(const bn_v8 *)(const void *)(p))
#define BN_ST8(p, v) (*(bn_v8 *)(void *)(p) = (v))
#define BN_ALWAYS static inline __attribute__((always_inline))

/* tmp[c, c + 8 nv) = the sums over rows [o0, o1) of x (mean NULL) or of (x - mean)^2: nv
 * vectors (a constant once inlined), nv independent add chains the CPU runs at once (one
 * chain alone would wait on each add's latency, row after row) */
BN_ALWAYS void bn_sums_v8(const float *x, int64_t o0, int64_t o1, int64_t C, const float *mean,
                          float *tmp, int64_t c, const int nv) {
    bn_v8 acc[4], m[4];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        acc[v] = (bn_v8){0};
        m[v] = mean ? BN_LD8(mean + c + 8 * v) : (bn_v8){0};
    }
    for (int64_t o = o0; o < o1; o++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            const bn_v8 val = BN_LD8(x + o * C + c + 8 * v);
            if (mean) {
                const bn_v8 d = val - m[v];
                acc[v] += d * d;
            } else {
                acc[v] += val;
            }
        }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) BN_ST8(tmp + c + 8 * v, acc[v]);
}

/* t1, t2 [c, c + 8 nv) = the sums over rows [r0, r1) of g and of g xhat */
BN_ALWAYS void bn_grad_sums_v8(const float *xd, const float *gd, int64_t r0, int64_t r1, int64_t C,
                               const float *mean, const float *inv, float *t1, float *t2, int64_t c,
                               const int nv) {
    bn_v8 a1[4], a2[4], m[4], iv[4];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        a1[v] = a2[v] = (bn_v8){0};
        m[v] = BN_LD8(mean + c + 8 * v);
        iv[v] = BN_LD8(inv + c + 8 * v);
    }
    for (int64_t r = r0; r < r1; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            const bn_v8 gv = BN_LD8(gd + r * C + c + 8 * v);
            a1[v] += gv;
            a2[v] += gv * ((BN_LD8(xd + r * C + c + 8 * v) - m[v]) * iv[v]);
        }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        BN_ST8(t1 + c + 8 * v, a1[v]);
        BN_ST8(t2 + c + 8 * v, a2[v]);
    }
}

/* t[q C + c, + 8 nv) for q = g, v, g xhat, v xhat, v g: the sums over rows [r0, r1) */
BN_ALWAYS void bn_grad2_sums_v8(const float *xd, const float *gd, const float *vd, int64_t r0,
                                int64_t r1, int64_t C, const float *mean, const float *inv,
                                float *t, int64_t c, const int nv) {
    bn_v8 a[2][5], m[2], iv[2];
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++) {
        for (int q = 0; q < 5; q++) a[v][q] = (bn_v8){0};
        m[v] = BN_LD8(mean + c + 8 * v);
        iv[v] = BN_LD8(inv + c + 8 * v);
    }
    for (int64_t r = r0; r < r1; r++)
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) {
            const int64_t o = r * C + c + 8 * v;
            const bn_v8 gv = BN_LD8(gd + o), vv = BN_LD8(vd + o);
            const bn_v8 xh = (BN_LD8(xd + o) - m[v]) * iv[v];
            a[v][0] += gv, a[v][1] += vv, a[v][2] += gv * xh, a[v][3] += vv * xh;
            a[v][4] += vv * gv;
        }
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++)
        for (int q = 0; q < 5; q++) BN_ST8(t + q * C + c + 8 * v, a[v][q]);
}

/* A group's statistics and gradient sums are taken over chunks of its outer rows, the rows
 * a chunk fixed by the shape alone (bn_chunk_rows: ~BN_CHUNK_FLOATS floats, a multiple of
 * BN_BLOCK rows): each chunk's partial sums in double, then the partials added in chunk
 * order. Chunks are independent, so a large group's passes run their chunks over the
 * thread pool (bn_phase) and the result is the same bits for any thread count (the
 * determinism contract, ARCHITECTURE.md). Each thread streams whole rows: splitting the
 * channels instead (each thread half of every row) was measured 2x slower on two threads
 * than on one here, the two cores' prefetchers pulling each other's cache lines. */
#define BN_CHUNK_FLOATS (1 << 15)

static int64_t bn_chunk_rows(const bn_geom *g) {
    const int64_t row = g->c * g->inner; /* > 0: the entry points refuse empty inputs */
    int64_t r = row > 0 ? BN_CHUNK_FLOATS / row : 1;
    if (r < 1) r = 1;
    if (g->inner == 1) r = (r + BN_BLOCK - 1) / BN_BLOCK * BN_BLOCK;
    return r;
}

/* out[c] += the sum over rows of x[row][c] (mean NULL) or of (x[row][c] - mean[c])^2, for
 * channels-last x (rows x C): float over blocks of BN_BLOCK rows, then double; a block
 * whose float sum leaves the float range (values near 1e37, deviations beyond 1e19) is
 * summed again in double. tmp: C floats. */
ML_INLINE void bn_block_sums(const float *x, int64_t rows, int64_t C, const float *mean, float *tmp,
                             double *out) {
    for (int64_t o0 = 0; o0 < rows; o0 += BN_BLOCK) {
        const int64_t o1 = o0 + BN_BLOCK < rows ? o0 + BN_BLOCK : rows;
        /* 8 channels at a time down the block's rows, in a register (BN_V8) */
        int64_t c = 0;
        for (; c + 32 <= C; c += 32) bn_sums_v8(x, o0, o1, C, mean, tmp, c, 4);
        for (; c + 8 <= C; c += 8) bn_sums_v8(x, o0, o1, C, mean, tmp, c, 1);
        for (; c < C; c++) {
            float t = 0.0f;
            for (int64_t o = o0; o < o1; o++) {
                const float v = x[o * C + c];
                t += mean ? (v - mean[c]) * (v - mean[c]) : v;
            }
            tmp[c] = t;
        }
        for (int64_t c = 0; c < C; c++) {
            if (isfinite(tmp[c])) {
                out[c] += tmp[c];
                continue;
            }
            double t = 0.0;
            for (int64_t o = o0; o < o1; o++) {
                const double d = (double)x[o * C + c] - (mean ? (double)mean[c] : 0.0);
                t += mean ? d * d : d;
            }
            out[c] += t;
        }
    }
}

/* One chunk's part of the statistics: out[c] = the sum over rows [r0, r1) of x (mean NULL)
 * or of (x - mean)^2, channel c. Channels last: bn_block_sums (8-lane float adds over
 * blocks of rows, the conversion to double once per block: it was a third of the
 * statistics pass; a block's float error is ~BN_BLOCK ulp of its terms, far inside
 * float32 batch norm's tolerance). Axes after the channel: in double, row by row. tmp: C
 * floats. */
ML_INLINE void bn_sum_rows(const bn_geom *g, const float *x, int64_t r0, int64_t r1,
                           const float *mean, float *tmp, double *out) {
    const int64_t C = g->c, inner = g->inner;
    for (int64_t c = 0; c < C; c++) out[c] = 0.0;
    if (inner == 1) {
        bn_block_sums(x + r0 * C, r1 - r0, C, mean, tmp, out);
        return;
    }
    for (int64_t o = r0; o < r1; o++) {
        const float *row = x + o * C * inner;
        for (int64_t c = 0; c < C; c++) {
            double t = 0.0;
            if (mean) {
                const double m = mean[c];
                for (int64_t i = 0; i < inner; i++) {
                    const double d = (double)row[c * inner + i] - m;
                    t += d * d;
                }
            } else {
                for (int64_t i = 0; i < inner; i++) t += row[c * inner + i];
            }
            out[c] += t;
        }
    }
}

typedef struct bn_params {
    int ax, has_gamma, has_beta, grouped;
    float eps;
} bn_params;

static ml_status bn_train(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta, int ax,
                          int grouped, float eps, float *mean_out, float *var_out);

static ml_status replay_bn(ml_tensor **out, ml_tensor **in, const void *params) {
    const bn_params *p = params;
    int k = 1;
    ml_tensor *gamma = p->has_gamma ? in[k++] : NULL;
    ml_tensor *beta = p->has_beta ? in[k++] : NULL;
    return bn_train(out, in[0], gamma, beta, p->ax, p->grouped, p->eps, NULL, NULL);
}

/* Groups are independent (each its own statistics): a grouped batch norm with at least as
 * many groups as threads runs ranges of groups over the thread pool, each group's chunks
 * in order in one task; any other large input runs each group's passes with its chunks
 * over the pool (bn_phase). Either way each chunk's partial sums are the same and are
 * added in the same order: the same result for any thread count. Task-by-task MAML
 * through a conv net (one group a call) runs on the second. */
#define BN_PAR_MIN (1 << 14)

/* the passes over a group's chunks (BN_GSUM2, BN_OUT2: batch_norm_dx's backward) */
enum { BN_SUM, BN_SQ, BN_NORM, BN_GSUM, BN_DX, BN_GSUM2, BN_OUT2 };

/* partial sums a chunk keeps: C doubles each (BN_GSUM2 takes five) */
#define BN_PARTS 5

/* gy for a backward that is not a tensor but the backward of max_pool2d(y) or of
 * max_pool2d(relu(y)) (ml_grad's fold): made a chunk's rows at a time
 * (ml__max_pool2d_relu_grad_rows) from the pool's node, its gradient gp and, where a relu is
 * between, its output py (NULL where not). Channels last only (the fold's
 * ml__batch_norm_foldable). */
typedef struct bn_pooled {
    const ml_node *pool;
    const float *py, *gp;
} bn_pooled;

/* One group's pass over its chunks: the group's x (and gy in the backward), its output
 * (y for BN_NORM, dx for BN_DX) and the per-channel vectors the pass reads. */
typedef struct bn_pass {
    const bn_geom *g;
    const float *x, *gy, *v; /* v: BN_GSUM2, BN_OUT2's upstream gradient */
    float *out, *out2;       /* out2: BN_OUT2's gradient for gy */
    const float *mean, *inv; /* BN_SQ: mean; BN_GSUM(2): mean, inv; the others: mean */
    const float *v1, *v2, *v3; /* BN_NORM: scale, shift; BN_DX: k, a, b; BN_OUT2: v1 (7C) */
    int phase;
    int64_t rows, chunks; /* rows a chunk (bn_chunk_rows), chunks a group */
    double *part; /* chunks x BN_PARTS C: each chunk's partial sums (BN_GSUM: sg, sgx) */
    float *tmp;   /* chunks x BN_PARTS C floats of scratch */
    const bn_pooled *pooled; /* BN_GSUM, BN_DX: gy made from a pool's gradient (NULL: s->gy) */
    int failed;              /* a thread's rows buffer (bn_pooled_chunk) could not be had */
} bn_pass;

/* y = (x - mean) * scale + shift over rows [r0, r1) */
ML_INLINE void bn_norm_rows(const bn_geom *g, const float *xd, float *od, const float *mean,
                            const float *scale, const float *shift, int64_t r0, int64_t r1) {
    const int64_t C = g->c, inner = g->inner;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = xd + r * C * inner;
        float *yr = od + r * C * inner;
        if (inner == 1) {
            for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] - mean[c]) * scale[c] + shift[c];
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float m = mean[c], sc = scale[c], sh = shift[c];
                for (int64_t i = 0; i < inner; i++)
                    yr[c * inner + i] = (xr[c * inner + i] - m) * sc + sh;
            }
        }
    }
}

/* The backward's sums over rows [r0, r1), channels last (inner == 1): sg[c] = sum of g and
 * sgx[c] = sum of g * xhat, in float over blocks of rows as bn_block_sums sums (t1, t2: C
 * floats of scratch), a block in double where float's range is exceeded. */
ML_INLINE void bn_grad_sums_last(const bn_geom *g, const float *xd, const float *gd,
                                 const float *mean, const float *inv, int64_t rb, int64_t re,
                                 float *t1, float *t2, double *sg, double *sgx) {
    const int64_t C = g->c;
    for (int64_t c = 0; c < C; c++) sg[c] = sgx[c] = 0.0;
    for (int64_t r0 = rb; r0 < re; r0 += BN_BLOCK) {
        const int64_t r1 = r0 + BN_BLOCK < re ? r0 + BN_BLOCK : re;
        int64_t c = 0;
        for (; c + 32 <= C; c += 32) bn_grad_sums_v8(xd, gd, r0, r1, C, mean, inv, t1, t2, c, 4);
        for (; c + 8 <= C; c += 8) bn_grad_sums_v8(xd, gd, r0, r1, C, mean, inv, t1, t2, c, 1);
        for (; c < C; c++) {
            float u1 = 0.0f, u2 = 0.0f;
            for (int64_t r = r0; r < r1; r++) {
                u1 += gd[r * C + c];
                u2 += gd[r * C + c] * ((xd[r * C + c] - mean[c]) * inv[c]);
            }
            t1[c] = u1;
            t2[c] = u2;
        }
        for (int64_t c = 0; c < C; c++) {
            if (isfinite(t1[c]) && isfinite(t2[c])) {
                sg[c] += t1[c];
                sgx[c] += t2[c];
                continue;
            }
            double u1 = 0.0, u2 = 0.0; /* float range exceeded: this block in double */
            for (int64_t r = r0; r < r1; r++) {
                const float gv = gd[r * C + c];
                u1 += gv;
                u2 += (double)gv * (double)((xd[r * C + c] - mean[c]) * inv[c]);
            }
            sg[c] += u1;
            sgx[c] += u2;
        }
    }
}

/* The same sums with axes after the channel (inner > 1): in double, row by row. */
ML_INLINE void bn_grad_sums_inner(const bn_geom *g, const float *xd, const float *gd,
                                  const float *mean, const float *inv, int64_t r0, int64_t r1,
                                  double *sg, double *sgx) {
    const int64_t C = g->c, inner = g->inner;
    for (int64_t c = 0; c < C; c++) sg[c] = sgx[c] = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = xd + r * C * inner, *gr = gd + r * C * inner;
        for (int64_t c = 0; c < C; c++) {
            double t = 0.0, u = 0.0;
            const float m = mean[c], iv = inv[c];
            for (int64_t i = 0; i < inner; i++) {
                float gv = gr[c * inner + i];
                t += gv;
                u += (double)gv * (double)((xr[c * inner + i] - m) * iv);
            }
            sg[c] += t;
            sgx[c] += u;
        }
    }
}

/* dx = k * (g - a - (x - mean) * b) over rows [r0, r1), with k = gamma * inv, a = mean(g)
 * and b = mean(g xhat) * inv per channel. */
ML_INLINE void bn_grad_dx(const bn_geom *g, const float *xd, const float *gd, const float *k,
                          const float *a, const float *b, const float *mean, float *od, int64_t r0,
                          int64_t r1) {
    const int64_t C = g->c, inner = g->inner;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = xd + r * C * inner, *gr = gd + r * C * inner;
        float *dr = od + r * C * inner;
        if (inner == 1) {
            for (int64_t c = 0; c < C; c++)
                dr[c] = k[c] * (gr[c] - a[c] - (xr[c] - mean[c]) * b[c]);
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float kc = k[c], ac = a[c], bc = b[c], m = mean[c];
                for (int64_t i = 0; i < inner; i++)
                    dr[c * inner + i] = kc *
                                        (gr[c * inner + i] - ac - (xr[c * inner + i] - m) * bc);
            }
        }
    }
}

/* batch_norm_dx's backward. Its output is dx = gamma inv (g - mean(g) - xhat mean(g xhat))
 * (per channel; xhat = (x - mean) inv), and for an upstream gradient v of dx:
 *   d/dg     = gamma inv (v - mean(v) - xhat p)              (batch_norm_dx of v)
 *   d/dgamma = inv N (mean(v g) - mean(g) mean(v) - m p)
 *   d/dx     = -gamma inv^2 (xhat (mean(v g) - mean(g) mean(v) - 3 m p)
 *                            + p (g - mean(g)) + m (v - mean(v)))
 * with m = mean(g xhat), p = mean(v xhat), N the count (differentiating xhat and inv,
 * d xhat_i/d x_j = inv (delta_ij - 1/N - xhat_i xhat_j / N), d inv/d x_j = -inv^2 xhat_j / N;
 * checked against finite differences, tests/core/test_conv_ops.py). One pass takes the five
 * sums, one writes both gradients. */

/* The five sums over rows [rb, re): out[q C + c] for q = g, v, g xhat, v xhat, v g; channels
 * last in float over blocks of rows (t: 5C floats) as bn_grad_sums_last, a block in double
 * where float's range is exceeded; axes after the channel in double, row by row. */
ML_INLINE void bn_grad2_sums(const bn_geom *g, const float *xd, const float *gd, const float *vd,
                             const float *mean, const float *inv, int64_t rb, int64_t re, float *t,
                             double *out) {
    const int64_t C = g->c, inner = g->inner;
    for (int64_t c = 0; c < BN_PARTS * C; c++) out[c] = 0.0;
    if (inner > 1) {
        for (int64_t r = rb; r < re; r++)
            for (int64_t c = 0; c < C; c++) {
                const int64_t o = (r * C + c) * inner;
                double u[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
                for (int64_t i = 0; i < inner; i++) {
                    const double gv = gd[o + i], vv = vd[o + i];
                    const double xh = (double)((xd[o + i] - mean[c]) * inv[c]);
                    u[0] += gv, u[1] += vv, u[2] += gv * xh, u[3] += vv * xh, u[4] += vv * gv;
                }
                for (int q = 0; q < 5; q++) out[q * C + c] += u[q];
            }
        return;
    }
    for (int64_t r0 = rb; r0 < re; r0 += BN_BLOCK) {
        const int64_t r1 = r0 + BN_BLOCK < re ? r0 + BN_BLOCK : re;
        int64_t c0 = 0;
        for (; c0 + 16 <= C; c0 += 16) bn_grad2_sums_v8(xd, gd, vd, r0, r1, C, mean, inv, t, c0, 2);
        for (; c0 + 8 <= C; c0 += 8) bn_grad2_sums_v8(xd, gd, vd, r0, r1, C, mean, inv, t, c0, 1);
        for (int64_t c = c0; c < C; c++) {
            float u[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t r = r0; r < r1; r++) {
                const float gv = gd[r * C + c], vv = vd[r * C + c];
                const float xh = (xd[r * C + c] - mean[c]) * inv[c];
                u[0] += gv, u[1] += vv, u[2] += gv * xh, u[3] += vv * xh, u[4] += vv * gv;
            }
            for (int q = 0; q < 5; q++) t[q * C + c] = u[q];
        }
        for (int64_t c = 0; c < C; c++) {
            int fin = 1;
            for (int q = 0; q < 5; q++) fin &= isfinite(t[q * C + c]) != 0;
            if (fin) {
                for (int q = 0; q < 5; q++) out[q * C + c] += t[q * C + c];
                continue;
            }
            double u[5] = {0.0, 0.0, 0.0, 0.0, 0.0}; /* this block in double */
            for (int64_t r = r0; r < r1; r++) {
                const double gv = gd[r * C + c], vv = vd[r * C + c];
                const double xh = (double)((xd[r * C + c] - mean[c]) * inv[c]);
                u[0] += gv, u[1] += vv, u[2] += gv * xh, u[3] += vv * xh, u[4] += vv * gv;
            }
            for (int q = 0; q < 5; q++) out[q * C + c] += u[q];
        }
    }
}

/* Both gradients over rows [r0, r1) from per-channel coefficients f (7 arrays of C, made by
 * bn_group_backward2): dx = f0 (x - mean) + f1 g + f2 v + f3 and dg = f4 v + f5 (x - mean)
 * + f6; either output may be NULL. */
ML_INLINE void bn_grad2_out(const bn_geom *g, const float *xd, const float *gd, const float *vd,
                            const float *mean, const float *f, float *dx, float *dg, int64_t r0,
                            int64_t r1) {
    const int64_t C = g->c, inner = g->inner;
    const float *f0 = f, *f1 = f + C, *f2 = f + 2 * C, *f3 = f + 3 * C;
    const float *f4 = f + 4 * C, *f5 = f + 5 * C, *f6 = f + 6 * C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t o = r * C * inner;
        const float *xr = xd + o, *gr = gd + o, *vr = vd + o;
        if (inner == 1) {
            if (dx)
                for (int64_t c = 0; c < C; c++)
                    dx[o + c] = f0[c] * (xr[c] - mean[c]) + f1[c] * gr[c] + f2[c] * vr[c] + f3[c];
            if (dg)
                for (int64_t c = 0; c < C; c++)
                    dg[o + c] = f4[c] * vr[c] + f5[c] * (xr[c] - mean[c]) + f6[c];
            continue;
        }
        for (int64_t c = 0; c < C; c++) {
            const int64_t b = c * inner;
            const float m = mean[c];
            if (dx)
                for (int64_t i = 0; i < inner; i++)
                    dx[o + b + i] = f0[c] * (xr[b + i] - m) + f1[c] * gr[b + i] +
                                    f2[c] * vr[b + i] + f3[c];
            if (dg)
                for (int64_t i = 0; i < inner; i++)
                    dg[o + b + i] = f4[c] * vr[b + i] + f5[c] * (xr[b + i] - m) + f6[c];
        }
    }
}

/* BN_GSUM or BN_DX over rows [r0, r1) (channels last) with gy made for those rows in this
 * thread's buffer first (bn_pass.pooled): the same sums and the same dx loop, shifted to the
 * buffer's rows, so the same bits as on a gy tensor holding those rows */
ML_INLINE void bn_pooled_chunk(bn_pass *s, int64_t r0, int64_t r1, double *p, float *t) {
    const bn_geom *g = s->g;
    const int64_t C = g->c;
    float *gy = ml__scratch(ML_SCRATCH_BN_ROWS, (size_t)((r1 - r0) * C));
    if (!gy) {
        __atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const bn_pooled *src = s->pooled;
    ml__max_pool2d_relu_grad_rows(src->pool, src->py, src->gp, r0, r1, gy);
    const float *x = s->x + r0 * C;
    if (s->phase == BN_GSUM)
        bn_grad_sums_last(g, x, gy, s->mean, s->inv, 0, r1 - r0, t, t + C, p, p + C);
    else
        bn_grad_dx(g, x, gy, s->v1, s->v2, s->v3, s->mean, s->out + r0 * C, 0, r1 - r0);
}

/* Chunk k of the pass s->phase */
ML_INLINE void bn_chunk_body(bn_pass *s, int64_t k) {
    const bn_geom *g = s->g;
    const int64_t C = g->c;
    const int64_t r0 = k * s->rows, r1 = r0 + s->rows < g->outer ? r0 + s->rows : g->outer;
    double *p = s->part + k * BN_PARTS * C;
    float *t = s->tmp + k * BN_PARTS * C;
    switch (s->phase) {
    case BN_SUM: bn_sum_rows(g, s->x, r0, r1, NULL, t, p); break;
    case BN_SQ: bn_sum_rows(g, s->x, r0, r1, s->mean, t, p); break;
    case BN_NORM: bn_norm_rows(g, s->x, s->out, s->mean, s->v1, s->v2, r0, r1); break;
    case BN_GSUM:
        if (s->pooled)
            bn_pooled_chunk(s, r0, r1, p, t);
        else if (g->inner == 1)
            bn_grad_sums_last(g, s->x, s->gy, s->mean, s->inv, r0, r1, t, t + C, p, p + C);
        else
            bn_grad_sums_inner(g, s->x, s->gy, s->mean, s->inv, r0, r1, p, p + C);
        break;
    case BN_DX:
        if (s->pooled)
            bn_pooled_chunk(s, r0, r1, p, t);
        else
            bn_grad_dx(g, s->x, s->gy, s->v1, s->v2, s->v3, s->mean, s->out, r0, r1);
        break;
    case BN_GSUM2: bn_grad2_sums(g, s->x, s->gy, s->v, s->mean, s->inv, r0, r1, t, p); break;
    default: bn_grad2_out(g, s->x, s->gy, s->v, s->mean, s->v1, s->out, s->out2, r0, r1); break;
    }
}
ML_CPU_CLONES(bn_chunk, (bn_pass * s, int64_t k), (s, k))

static void bn_chunk_task(void *ctx, int64_t k) { bn_chunk(ctx, k); }

/* Runs the pass `phase` over all chunks of s's group: on the pool when threads > 1. */
static void bn_phase(bn_pass *s, int phase, int threads) {
    s->phase = phase;
    if (threads > 1 && s->chunks > 1)
        ml__parallel_for(s->chunks, threads, bn_chunk_task, s);
    else
        for (int64_t k = 0; k < s->chunks; k++) bn_chunk(s, k);
}

/* out[c] = the chunks' partials at offset off (a multiple of C) of each, added in chunk
 * order */
static void bn_combine(const bn_pass *s, int64_t off, double *out) {
    const int64_t C = s->g->c;
    for (int64_t c = 0; c < C; c++) out[c] = 0.0;
    for (int64_t k = 0; k < s->chunks; k++) {
        const double *p = s->part + k * BN_PARTS * C + off;
        for (int64_t c = 0; c < C; c++) out[c] += p[c];
    }
}

/* The group's per-channel mean, biased variance and inv = 1/sqrt(var + eps): two passes
 * (the sum, then the squared deviations from the mean), sums in double. acc: 2C doubles. */
static void bn_group_stats(bn_pass *s, float eps, int threads, double *acc, float *mean, float *var,
                           float *inv) {
    const bn_geom *g = s->g;
    const int64_t C = g->c;
    double *sum = acc, *sq = acc + C;
    bn_phase(s, BN_SUM, threads);
    bn_combine(s, 0, sum);
    for (int64_t c = 0; c < C; c++) mean[c] = (float)(sum[c] / (double)g->count);
    s->mean = mean;
    bn_phase(s, BN_SQ, threads);
    bn_combine(s, 0, sq);
    for (int64_t c = 0; c < C; c++) {
        double v = sq[c] / (double)g->count;
        var[c] = (float)v;
        inv[c] = (float)(1.0 / sqrt(v + (double)eps));
    }
}

/* what a job computes */
enum {
    BN_JOB_FORWARD,  /* y */
    BN_JOB_BACKWARD, /* the fused first-order backward: dx, dgamma, dbeta */
    BN_JOB_DX_GRAD   /* batch_norm_dx's backward: dx (o), dg (o2), dgamma */
};

typedef struct bn_job {
    const bn_geom *g;
    const float *x, *gamma, *beta, *gy, *v;
    float *o, *o2, *dx, *dgamma, *dbeta;
    float eps;
    float *mean_out, *var_out;
    float *stats_save;       /* per group: mean (C), inv (C), for a recompute or a backward */
    const float *stats_load; /* a recompute or a backward: those statistics, not computed again */
    int kind;                /* BN_JOB_* */
    const bn_pooled *pooled; /* BN_JOB_BACKWARD from a pool (ungrouped); gy NULL then */
    int64_t step;            /* groups per task of a run over groups */
    int failed;
} bn_job;

/* Group gi's mean and inv: a recompute's saved ones (the forward's own: the same bits, two
 * passes fewer; var is then left unset), else bn_group_stats over s's chunks, kept in
 * stats_save when the job has one. */
static void bn_group_mean_inv(const bn_job *j, int64_t gi, bn_pass *s, int threads, double *acc,
                              float *mean, float *var, float *inv) {
    const int64_t C = j->g->c;
    if (j->stats_load) {
        memcpy(mean, j->stats_load + gi * 2 * C, (size_t)C * sizeof(float));
        memcpy(inv, j->stats_load + gi * 2 * C + C, (size_t)C * sizeof(float));
        return;
    }
    bn_group_stats(s, j->eps, threads, acc, mean, var, inv);
    if (j->stats_save) {
        memcpy(j->stats_save + gi * 2 * C, mean, (size_t)C * sizeof(float));
        memcpy(j->stats_save + gi * 2 * C + C, inv, (size_t)C * sizeof(float));
    }
}

/* The training-mode forward of group gi. f: 5C floats of scratch. */
static void bn_group_forward(bn_job *j, int64_t gi, bn_pass *s, int threads, double *acc,
                             float *f) {
    const bn_geom *g = j->g;
    const int64_t C = g->c;
    float *mean = f, *var = f + C, *inv = f + 2 * C, *scale = f + 3 * C, *shift = f + 4 * C;
    const float *gd = j->gamma ? j->gamma + gi * C : NULL;
    const float *bd = j->beta ? j->beta + gi * C : NULL;
    s->x = j->x + gi * g->slice;
    s->out = j->o + gi * g->slice;
    bn_group_mean_inv(j, gi, s, threads, acc, mean, var, inv);
    for (int64_t c = 0; c < C; c++) {
        scale[c] = gd ? inv[c] * gd[c] : inv[c];
        shift[c] = bd ? bd[c] : 0.0f;
    }
    s->mean = mean;
    s->v1 = scale;
    s->v2 = shift;
    bn_phase(s, BN_NORM, threads);
    /* statistics for the moving averages (ungrouped only: one group) */
    if (j->mean_out) memcpy(j->mean_out, mean, (size_t)C * sizeof(float));
    if (j->var_out) memcpy(j->var_out, var, (size_t)C * sizeof(float));
}

/* The first-order backward of group gi (grad mode off): the statistics (recomputed, or
 * the forward's own), the sums, dx. f: 6C floats of scratch. */
static void bn_group_backward(bn_job *j, int64_t gi, bn_pass *s, int threads, double *acc,
                              float *f) {
    const bn_geom *g = j->g;
    const int64_t C = g->c;
    float *mean = f, *var = f + C, *inv = f + 2 * C, *a = f + 3 * C, *b = f + 4 * C, *k = f + 5 * C;
    double *sg = acc, *sgx = acc + C;
    const float *gam = j->gamma ? j->gamma + gi * C : NULL;
    s->x = j->x + gi * g->slice;
    s->gy = j->gy ? j->gy + gi * g->slice : NULL;
    s->out = j->dx ? j->dx + gi * g->slice : NULL;
    s->pooled = j->pooled;
    bn_group_mean_inv(j, gi, s, threads, acc, mean, var, inv);
    s->mean = mean;
    s->inv = inv;
    bn_phase(s, BN_GSUM, threads);
    bn_combine(s, 0, sg);
    bn_combine(s, C, sgx);
    if (j->dgamma)
        for (int64_t c = 0; c < C; c++) j->dgamma[gi * C + c] = (float)sgx[c];
    if (j->dbeta)
        for (int64_t c = 0; c < C; c++) j->dbeta[gi * C + c] = (float)sg[c];
    if (!j->dx) return;
    for (int64_t c = 0; c < C; c++) {
        k[c] = gam ? gam[c] * inv[c] : inv[c];
        a[c] = (float)(sg[c] / (double)g->count);           /* mean(g) */
        b[c] = (float)(sgx[c] / (double)g->count) * inv[c]; /* mean(g xhat) inv */
    }
    s->v1 = k;
    s->v2 = a;
    s->v3 = b;
    bn_phase(s, BN_DX, threads);
}

/* batch_norm_dx's backward for group gi (grad mode off): the statistics (the node's own), the
 * five sums, the coefficients of the formulas above bn_grad2_sums, then dx and dg in one
 * pass. f: 10C floats of scratch; acc: BN_PARTS C doubles. */
static void bn_group_dx_grad(bn_job *j, int64_t gi, bn_pass *s, int threads, double *acc,
                             float *f) {
    const bn_geom *g = j->g;
    const int64_t C = g->c;
    const double n = (double)g->count;
    float *mean = f, *var = f + C, *inv = f + 2 * C, *cf = f + 3 * C;
    const float *gam = j->gamma ? j->gamma + gi * C : NULL;
    s->x = j->x + gi * g->slice;
    s->gy = j->gy + gi * g->slice;
    s->v = j->v + gi * g->slice;
    s->out = j->o ? j->o + gi * g->slice : NULL;
    s->out2 = j->o2 ? j->o2 + gi * g->slice : NULL;
    bn_group_mean_inv(j, gi, s, threads, acc, mean, var, inv);
    s->mean = mean;
    s->inv = inv;
    bn_phase(s, BN_GSUM2, threads);
    for (int q = 0; q < 5; q++) bn_combine(s, q * C, acc + q * C);
    for (int64_t c = 0; c < C; c++) {
        const double gm = acc[c] / n, vm = acc[C + c] / n, m = acc[2 * C + c] / n;
        const double p = acc[3 * C + c] / n, vg = acc[4 * C + c] / n;
        const double iv = inv[c], ga = gam ? gam[c] : 1.0, k = ga * iv, k2 = -ga * iv * iv;
        if (j->dgamma) j->dgamma[gi * C + c] = (float)(iv * n * (vg - gm * vm - m * p));
        cf[c] = (float)(k2 * iv * (vg - gm * vm - 3.0 * m * p)); /* dx: (x - mean) */
        cf[C + c] = (float)(k2 * p);                           /* dx: g */
        cf[2 * C + c] = (float)(k2 * m);                       /* dx: v */
        cf[3 * C + c] = (float)(-k2 * (p * gm + m * vm));      /* dx: 1 */
        cf[4 * C + c] = (float)k;                              /* dg: v */
        cf[5 * C + c] = (float)(-k * iv * p);                  /* dg: (x - mean) */
        cf[6 * C + c] = (float)(-k * vm);                      /* dg: 1 */
    }
    if (!s->out && !s->out2) return;
    s->v1 = cf;
    bn_phase(s, BN_OUT2, threads);
}

/* Groups [g0, g1), one after the other, each pass over a group's chunks on `threads`. */
static void bn_groups(bn_job *j, int64_t g0, int64_t g1, int threads) {
    const bn_geom *g = j->g;
    const int64_t C = g->c;
    bn_pass s = {.g = g, .rows = bn_chunk_rows(g)};
    s.chunks = (g->outer + s.rows - 1) / s.rows;
    /* + 1: never malloc(0), which may return NULL */
    s.part = malloc((size_t)(s.chunks * BN_PARTS * C) * sizeof(double) + 1);
    s.tmp = malloc((size_t)(s.chunks * BN_PARTS * C) * sizeof(float) + 1);
    double *acc = malloc((size_t)C * BN_PARTS * sizeof(double) + 1);
    float *f = malloc((size_t)C * 10 * sizeof(float) + 1);
    if (s.part && s.tmp && acc && f) {
        for (int64_t gi = g0; gi < g1; gi++) {
            if (j->kind == BN_JOB_BACKWARD)
                bn_group_backward(j, gi, &s, threads, acc, f);
            else if (j->kind == BN_JOB_DX_GRAD)
                bn_group_dx_grad(j, gi, &s, threads, acc, f);
            else
                bn_group_forward(j, gi, &s, threads, acc, f);
        }
    } else {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    }
    if (__atomic_load_n(&s.failed, __ATOMIC_RELAXED))
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    free(s.part);
    free(s.tmp);
    free(acc);
    free(f);
}

/* Task i of a run over groups: groups [i * step, (i + 1) * step), each on this thread. */
static void bn_part(void *ctx, int64_t i) {
    bn_job *j = ctx;
    int64_t g0 = i * j->step, g1 = g0 + j->step < j->g->groups ? g0 + j->step : j->g->groups;
    bn_groups(j, g0, g1, 1);
}

/* Runs the job over all groups: ranges of groups over the pool when a large input has at
 * least as many groups as threads, else the groups in turn with each pass's chunks over the
 * pool (or all on this thread for a small input). Returns whether it ran out of memory. */
static int bn_run(bn_job *j) {
    const int64_t G = j->g->groups;
    const int t = ml__in_parallel() ? 1 : ml_get_num_threads();
    const int big = t > 1 && G * j->g->slice >= BN_PAR_MIN;
    if (big && G >= t) {
        j->step = (G + t - 1) / t;
        ml__parallel_for((G + j->step - 1) / j->step, 0, bn_part, j);
    } else {
        bn_groups(j, 0, G, big ? t : 1);
    }
    return j->failed;
}

/* stats_load: a recompute of a recorded node's output (ml__batch_norm_recompute) from the
 * statistics its first run saved (the same mean and inv, the same normalise loop: the same
 * bits, one pass instead of three); nothing is recorded then. */
static ml_status bn_train_stats(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                                int ax, int grouped, float eps, float *mean_out, float *var_out,
                                const float *stats_load);

/* The fused training-mode forward. mean_out/var_out (c floats each, may be NULL) receive
 * the batch statistics for the caller's moving-statistics update. A trace records this op
 * with its inputs (x, gamma?, beta?) and params; the moving-statistics update is done by
 * ml_batch_norm outside it and is NOT replayed (a replay sees the statistics' values of
 * its own inputs only through y). */
static ml_status bn_train(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta, int ax,
                          int grouped, float eps, float *mean_out, float *var_out) {
    return bn_train_stats(out, x, gamma, beta, ax, grouped, eps, mean_out, var_out, NULL);
}

static ml_status bn_train_stats(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                                int ax, int grouped, float eps, float *mean_out, float *var_out,
                                const float *stats_load) {
    bn_geom g = bn_geom_of(x, ax, grouped);
    if (g.count == 0)
        return ml_set_error(ML_ERR_SHAPE,
                            "batch_norm: cannot take batch statistics of an "
                            "empty input of shape %s",
                            ML_SHAPE_STR(x));
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim, x->shape);
    if (st) return st;
    ml_tensor *ins[3];
    int n = 0;
    ins[n++] = x;
    if (gamma) ins[n++] = gamma;
    if (beta) ins[n++] = beta;
    const int record = !stats_load && ml__should_record(n, ins);
    /* a recorded node keeps its statistics (2 C floats a group) for a recompute */
    float *save = record ? malloc((size_t)(2 * g.groups * g.c) * sizeof(float) + 1) : NULL;
    if (record && !save) {
        ml_release(o);
        return ml_set_error(ML_ERR_OOM, "batch_norm: out of memory");
    }
    bn_job j = {.g = &g,
                .x = x->data,
                .gamma = gamma ? gamma->data : NULL,
                .beta = beta ? beta->data : NULL,
                .o = o->data,
                .eps = eps,
                .mean_out = mean_out,
                .var_out = var_out,
                .stats_save = save,
                .stats_load = stats_load};
    if (bn_run(&j)) {
        free(save);
        ml_release(o);
        return ml_set_error(ML_ERR_OOM, "batch_norm: out of memory");
    }
    if (stats_load) { /* a recompute: nothing recorded, nothing traced */
        *out = o;
        return ML_OK;
    }
    if (record) {
        ml_node *node = NULL;
        if ((st = ml__record(o, OP_BATCH_NORM, n, ins, &node))) {
            free(save);
            ml_release(o);
            return st;
        }
        node->index = (int64_t *)(void *)save; /* floats; read by ml__batch_norm_recompute */
        node->iparams[0] = ax;
        node->iparams[1] = gamma != NULL;
        node->iparams[2] = beta != NULL;
        node->iparams[3] = grouped;
        node->fparams[0] = eps;
    }
    bn_params bp = {ax, gamma != NULL, beta != NULL, grouped, eps};
    ML_TRACE(OP_BATCH_NORM, replay_bn, n, ins, o, &bp);
    *out = o;
    return ML_OK;
}

/* stats_load: the statistics a recorded forward saved (mean and inv, 2 C floats a group;
 * bn_stats of the same x gives the same bits), or NULL to compute them, then kept in
 * stats_save when it is not NULL (a recorded batch_norm_dx or batch_norm_dgamma's node).
 * pooled: gy made from a pool's gradient (gy NULL then), or NULL. */
static ml_status bn_backward_fast(const bn_geom *g, ml_tensor *x, ml_tensor *gamma, float eps,
                                  ml_tensor *gy, ml_tensor **dx, ml_tensor **dgamma,
                                  ml_tensor **dbeta, const float *stats_load, float *stats_save,
                                  const bn_pooled *pooled) {
    const int64_t C = g->c, G = g->groups;
    if (dx) *dx = NULL;
    if (dgamma) *dgamma = NULL;
    if (dbeta) *dbeta = NULL;
    ml_status st = ML_OK;
    /* dgamma and dbeta have gamma's and beta's shape: (C), or (G, C) when grouped */
    const int64_t pshape[2] = {G, C};
    const int pnd = g->grouped ? 2 : 1;
    const int64_t *ps = g->grouped ? pshape : pshape + 1;
    if ((dgamma && (st = ml__new(dgamma, pnd, ps))) || (dbeta && (st = ml__new(dbeta, pnd, ps))) ||
        (dx && (st = ml__new(dx, x->ndim, x->shape))))
        goto done;
    bn_job j = {.g = g,
                .x = x->data,
                .gamma = gamma ? gamma->data : NULL,
                .gy = gy ? gy->data : NULL,
                .dx = dx ? (*dx)->data : NULL,
                .dgamma = dgamma ? (*dgamma)->data : NULL,
                .dbeta = dbeta ? (*dbeta)->data : NULL,
                .eps = eps,
                .stats_load = stats_load,
                .stats_save = stats_save,
                .kind = BN_JOB_BACKWARD,
                .pooled = pooled};
    if (bn_run(&j)) st = ml_set_error(ML_ERR_OOM, "batch_norm backward: out of memory");
done:
    if (st) { /* nothing half-made is returned */
        if (dx) ml_release(*dx), *dx = NULL;
        if (dgamma) ml_release(*dgamma), *dgamma = NULL;
        if (dbeta) ml_release(*dbeta), *dbeta = NULL;
    }
    return st;
}

/* Replay of the fast backward from (x, gy, gamma?): the outputs the eager call made (dx,
 * dgamma, dbeta; `which` has bit w for each, and out[] holds them in that order), from
 * the same call, so a replay gives the eager run's bits. One entry for all three: as
 * three, each recomputed the statistics and the sums (MAML Omniglot: ten passes over
 * (32, 75, 256) tensors a layer instead of four). */
typedef struct bn_grad_params {
    int ax, which, has_gamma, grouped;
    float eps;
} bn_grad_params;

static ml_status replay_bn_grad(ml_tensor **out, ml_tensor **in, const void *params) {
    const bn_grad_params *p = params;
    ml_tensor *x = in[0], *gy = in[1], *gamma = p->has_gamma ? in[2] : NULL;
    bn_geom geo = bn_geom_of(x, p->ax, p->grouped);
    ml_tensor **o[3] = {NULL, NULL, NULL};
    for (int w = 0, n = 0; w < 3; w++)
        if (p->which & (1 << w)) o[w] = &out[n++];
    return bn_backward_fast(&geo, x, gamma, p->eps, gy, o[0], o[1], o[2], NULL, NULL, NULL);
}

/* ---- batch norm's backward as ops of their own, for gradients of higher order ----
 * With grad mode on (MAML's inner step, whose gradient is differentiated again), the
 * backward's dx and dgamma are two recorded ops, batch_norm_dx(x, g, gamma?) and
 * batch_norm_dgamma(x, g), each one fused pass (two for dx) from the forward's statistics,
 * with backwards of their own: one pass of sums and one of outputs when nothing is recorded
 * (MAML's outer gradient), the formulas in differentiable ops when something is (a third
 * order). Composed of elementwise ops, as it was, the inner step's backward took some
 * twelve passes over the activation a layer, and its backward as many again. A node keeps
 * the statistics (mean, inv: 2 C floats a group) in its index, as batch_norm's does. */

/* the reduced axes of x (every axis but the channel's and, when grouped, the group's) and
 * the shape gamma broadcasts to (1 on the reduced axes); returns their number */
static int bn_reduced_axes(const ml_tensor *x, int ax, int grouped, int *axes, int64_t *bshape) {
    int n = 0;
    for (int d = 0; d < x->ndim; d++) {
        const int kept = d == ax || (grouped && d == 0);
        bshape[d] = kept ? x->shape[d] : 1;
        if (!kept) axes[n++] = d;
    }
    return n;
}

/* batch_norm_dx (wants_dx) or batch_norm_dgamma (!wants_dx) of (x, g, gamma?): one recorded
 * op. stats: the statistics the caller's node keeps, or NULL (a replay) to compute them. */
static ml_status bn_grad_op(ml_tensor **out, int wants_dx, ml_tensor *x, ml_tensor *gy,
                            ml_tensor *gamma, int ax, int grouped, float eps, const float *stats);

static ml_status replay_bn_grad_op(ml_tensor **out, ml_tensor **in, const void *params) {
    const bn_grad_params *p = params;
    return bn_grad_op(out, p->which == 1, in[0], in[1], p->has_gamma ? in[2] : NULL, p->ax,
                      p->grouped, p->eps, NULL);
}

static ml_status bn_grad_op(ml_tensor **out, int wants_dx, ml_tensor *x, ml_tensor *gy,
                            ml_tensor *gamma, int ax, int grouped, float eps, const float *stats) {
    bn_geom geo = bn_geom_of(x, ax, grouped);
    ml_tensor *ins[3] = {x, gy, gamma};
    const int n = gamma ? 3 : 2;
    const int record = ml__should_record(n, ins);
    /* a recorded node keeps the statistics: the caller's, or those this run computes */
    const size_t stats_bytes = (size_t)(2 * geo.groups * geo.c) * sizeof(float);
    float *keep = record ? malloc(stats_bytes + 1) : NULL;
    if (record && !keep) return ml_set_error(ML_ERR_OOM, "batch_norm: out of memory");
    if (keep && stats) memcpy(keep, stats, stats_bytes);
    ml_tensor *o = NULL;
    ml_status st = bn_backward_fast(&geo, x, gamma, eps, gy, wants_dx ? &o : NULL,
                                    wants_dx ? NULL : &o, NULL, stats, stats ? NULL : keep, NULL);
    if (st) {
        free(keep);
        return st;
    }
    if (record) {
        ml_node *node = NULL;
        if ((st = ml__record(o, wants_dx ? OP_BATCH_NORM_DX : OP_BATCH_NORM_DGAMMA, n, ins,
                             &node))) {
            free(keep);
            ml_release(o);
            return st;
        }
        node->index = (int64_t *)(void *)keep; /* floats; read by the backwards below */
        node->iparams[0] = ax;
        node->iparams[1] = gamma != NULL;
        node->iparams[3] = grouped;
        node->fparams[0] = eps;
    }
    bn_grad_params p = {ax, wants_dx ? 1 : 2, gamma != NULL, grouped, eps};
    ML_TRACE(wants_dx ? OP_BATCH_NORM_DX : OP_BATCH_NORM_DGAMMA, replay_bn_grad_op, n, ins, o, &p);
    *out = o;
    return ML_OK;
}

/* batch_norm_dx's backward in one job (grad mode off): d/dx, d/dg, d/dgamma of <v, dx> (each
 * wanted where its pointer is not NULL) from the statistics stats, or computed when NULL */
static ml_status bn_dx_grad_fast(const bn_geom *g, ml_tensor *x, ml_tensor *gy, ml_tensor *gamma,
                                 ml_tensor *v, float eps, ml_tensor **dx, ml_tensor **dg,
                                 ml_tensor **dgamma, const float *stats) {
    ml_tensor **outs[3] = {dx, dg, dgamma};
    for (int i = 0; i < 3; i++)
        if (outs[i]) *outs[i] = NULL;
    ml_status st = ML_OK;
    if ((dx && (st = ml__new(dx, x->ndim, x->shape))) ||
        (dg && (st = ml__new(dg, x->ndim, x->shape))) ||
        (dgamma && (st = ml__new(dgamma, gamma->ndim, gamma->shape))))
        goto done;
    bn_job j = {.g = g,
                .x = x->data,
                .gamma = gamma ? gamma->data : NULL,
                .gy = gy->data,
                .v = v->data,
                .o = dx ? (*dx)->data : NULL,
                .o2 = dg ? (*dg)->data : NULL,
                .dgamma = dgamma ? (*dgamma)->data : NULL,
                .eps = eps,
                .stats_load = stats,
                .kind = BN_JOB_DX_GRAD};
    if (bn_run(&j)) st = ml_set_error(ML_ERR_OOM, "batch_norm: out of memory");
done:
    if (st)
        for (int i = 0; i < 3; i++)
            if (outs[i]) ml_release(*outs[i]), *outs[i] = NULL;
    return st;
}

/* a trace's replay of bn_dx_grad_fast: in (x, g, v, gamma?), the outputs `which` names */
static ml_status replay_bn_dx_grad(ml_tensor **out, ml_tensor **in, const void *params) {
    const bn_grad_params *p = params;
    ml_tensor *gamma = p->has_gamma ? in[3] : NULL;
    bn_geom geo = bn_geom_of(in[0], p->ax, p->grouped);
    ml_tensor **o[3] = {NULL, NULL, NULL};
    for (int w = 0, n = 0; w < 3; w++)
        if (p->which & (1 << w)) o[w] = &out[n++];
    return bn_dx_grad_fast(&geo, in[0], in[1], gamma, in[2], p->eps, o[0], o[1], o[2], NULL);
}

#define IN(k) (out->node->inputs[k])

/* batch_norm_dx's backward: gin[0..2] for x, g and gamma (the formulas above bn_grad2_sums) */
ml_status ml__batch_norm_dx_backward(ml_tensor *out, ml_tensor *v, ml_tensor **gin) {
    const ml_node *node = out->node;
    const int ax = (int)node->iparams[0], has_gamma = (int)node->iparams[1];
    const int grouped = (int)node->iparams[3];
    const float eps = node->fparams[0];
    const float *stats = (const float *)(const void *)node->index;
    ml_tensor *x = IN(0), *g = IN(1), *gamma = has_gamma ? IN(2) : NULL;
    const int need_x = ml__wants(0, x), need_g = ml__wants(1, g);
    const int need_gam = gamma && ml__wants(2, gamma);
    bn_geom geo = bn_geom_of(x, ax, grouped);
    if (!ml_is_grad_enabled()) {
        ml_status st = bn_dx_grad_fast(&geo, x, g, gamma, v, eps, need_x ? &gin[0] : NULL,
                                       need_g ? &gin[1] : NULL, need_gam ? &gin[2] : NULL, stats);
        if (st || !ml__trace_active) return st;
        ml_tensor *ins[4] = {x, g, v, gamma}, *outs[3];
        bn_grad_params gp = {ax, 0, has_gamma, grouped, eps};
        int n_out = 0;
        for (int w = 0; w < (gamma ? 3 : 2); w++)
            if (gin[w]) gp.which |= 1 << w, outs[n_out++] = gin[w];
        if (n_out)
            ml__trace_record_n(OP_BATCH_NORM_DX_GRAD, replay_bn_dx_grad, gamma ? 4 : 3, ins, n_out,
                               outs, &gp, sizeof gp);
        return ML_OK;
    }
    /* a third order: the same formulas in differentiable ops */
    const int nd = x->ndim;
    int64_t bshape[ML_MAX_DIMS];
    int axes[ML_MAX_DIMS];
    const int n_axes = bn_reduced_axes(x, ax, grouped, axes, bshape);
    ml_scope s = {0};
    ml_tensor *dx = NULL, *dg = NULL, *dgam = NULL;
    if (need_g) dg = ML_SX(&s, x, bn_grad_op(&o_, 1, a_, v, gamma, ax, grouped, eps, stats));
    if (need_gam) {
        ml_tensor *d0 = ML_SX(&s, x, bn_grad_op(&o_, 1, a_, g, NULL, ax, grouped, eps, stats));
        dgam = RESHAPE_LIKE(&s, SUM_AXES(&s, MUL(&s, v, d0), n_axes, axes, 1), gamma);
    }
    if (need_x) {
#define MEAN(t) ML_SX(&s, t, ml_mean(&o_, a_, n_axes, axes, 1))
        ml_tensor *xhat = ML_SX(&s, x, bn_train(&o_, a_, NULL, NULL, ax, grouped, eps, NULL, NULL));
        ml_tensor *var = MEAN(SQUARE(&s, SUB(&s, x, MEAN(x))));
        ml_tensor *inv2 = POWS(&s, ADDS(&s, var, eps), -1.0f); /* inv^2 */
        ml_tensor *gm = MEAN(g), *vm = MEAN(v), *m = MEAN(MUL(&s, g, xhat));
        ml_tensor *p = MEAN(MUL(&s, v, xhat)), *vg = MEAN(MUL(&s, v, g));
        ml_tensor *c = SUB(&s, SUB(&s, vg, MUL(&s, gm, vm)), MULS(&s, MUL(&s, m, p), 3.0f));
        ml_tensor *t = ADD(&s, MUL(&s, xhat, c), MUL(&s, p, SUB(&s, g, gm)));
        t = ADD(&s, t, MUL(&s, m, SUB(&s, v, vm)));
        ml_tensor *k = gamma ? MUL(&s, inv2, RESHAPE(&s, gamma, nd, bshape)) : inv2;
        dx = NEG(&s, MUL(&s, t, k));
#undef MEAN
    }
    if (ML_S_OK(&s)) {
        gin[0] = ml__keep(dx);
        gin[1] = ml__keep(dg);
        if (has_gamma) gin[2] = ml__keep(dgam);
    }
    ml__scope_end(&s);
    return s.status;
}

/* batch_norm_dgamma's backward: gin[0..1] for x and g of <w, sum(g xhat)>: w xhat for g (the
 * forward normalising with gamma w), batch_norm_dx(x, g, w) for x */
ml_status ml__batch_norm_dgamma_backward(ml_tensor *out, ml_tensor *w, ml_tensor **gin) {
    const ml_node *node = out->node;
    const int ax = (int)node->iparams[0], grouped = (int)node->iparams[3];
    const float eps = node->fparams[0];
    const float *stats = (const float *)(const void *)node->index;
    ml_tensor *x = IN(0), *g = IN(1);
    const int need_x = ml__wants(0, x), need_g = ml__wants(1, g);
    ml_status st = ML_OK;
    if (need_x && (st = bn_grad_op(&gin[0], 1, x, g, w, ax, grouped, eps, stats))) return st;
    if (!need_g) return ML_OK;
    if (ml_is_grad_enabled()) /* differentiable in x and w: batch_norm's own node */
        st = bn_train(&gin[1], x, w, NULL, ax, grouped, eps, NULL, NULL);
    else if (!(st = bn_train_stats(&gin[1], x, w, NULL, ax, grouped, eps, NULL, NULL, stats))) {
        bn_params bp = {ax, 1, 0, grouped, eps}; /* traced as the forward it is */
        ml_tensor *ins[2] = {x, w};
        ML_TRACE(OP_BATCH_NORM, replay_bn, 2, ins, gin[1], &bp);
    }
    if (st) ml_release(gin[0]), gin[0] = NULL;
    return st;
}

/* The training-mode forward of a recorded node again (ml__recompute) */
ml_status ml__batch_norm_recompute(ml_tensor **out, const ml_node *node) {
    const int has_gamma = (int)node->iparams[1], has_beta = (int)node->iparams[2];
    ml_tensor *gamma = has_gamma ? node->inputs[1] : NULL;
    ml_tensor *beta = has_beta ? node->inputs[1 + has_gamma] : NULL;
    return bn_train_stats(out, node->inputs[0], gamma, beta, (int)node->iparams[0],
                          (int)node->iparams[3], node->fparams[0], NULL, NULL,
                          (const float *)(const void *)node->index);
}

ml_status ml__batch_norm_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    const ml_node *node = out->node;
    const int ax = (int)node->iparams[0];
    const int has_gamma = (int)node->iparams[1], has_beta = (int)node->iparams[2];
    const int grouped = (int)node->iparams[3];
    const float eps = node->fparams[0];
    ml_tensor *x = IN(0);
    ml_tensor *gamma = has_gamma ? IN(1) : NULL;
    ml_tensor *beta = has_beta ? IN(1 + has_gamma) : NULL;
    const int ig = has_gamma ? 1 : -1, ib = has_beta ? 1 + has_gamma : -1;
    const int need_x = ml__wants(0, x), need_g = ml__wants(ig, gamma), need_b = ml__wants(ib, beta);
    bn_geom geo = bn_geom_of(x, ax, grouped);
    if (!ml_is_grad_enabled()) {
        ml_status st = bn_backward_fast(&geo, x, gamma, eps, gy, need_x ? &gin[0] : NULL,
                                        need_g ? &gin[ig] : NULL, need_b ? &gin[ib] : NULL,
                                        (const float *)(const void *)node->index, NULL, NULL);
        if (st) {
            for (int i = 0; i < node->n_inputs; i++) {
                ml_release(gin[i]);
                gin[i] = NULL;
            }
            return st;
        }
        if (ml__trace_active) {
            ml_tensor *ins[3] = {x, gy, gamma}, *outs[3];
            const int idx[3] = {0, ig, ib};
            bn_grad_params gp = {ax, 0, has_gamma, grouped, eps};
            int n_out = 0;
            for (int w = 0; w < 3; w++) {
                if (idx[w] < 0 || !gin[idx[w]]) continue;
                gp.which |= 1 << w;
                outs[n_out++] = gin[idx[w]];
            }
            if (n_out)
                ml__trace_record_n(OP_BATCH_NORM_GRAD, replay_bn_grad, gamma ? 3 : 2, ins, n_out,
                                   outs, &gp, sizeof gp);
        }
        return st;
    }
    /* grad mode: dx and dgamma as the recorded ops above, dbeta a sum */
    int64_t bshape[ML_MAX_DIMS];
    int axes[ML_MAX_DIMS];
    const int n_axes = bn_reduced_axes(x, ax, grouped, axes, bshape);
    const float *stats = (const float *)(const void *)node->index;
    ml_scope s = {0};
    ml_tensor *dx = NULL, *dg = NULL, *db = NULL;
    if (need_x) dx = ML_SX(&s, x, bn_grad_op(&o_, 1, a_, gy, gamma, ax, grouped, eps, stats));
    if (need_g) dg = ML_SX(&s, x, bn_grad_op(&o_, 0, a_, gy, NULL, ax, grouped, eps, stats));
    if (need_b) db = RESHAPE_LIKE(&s, SUM_AXES(&s, gy, n_axes, axes, 0), beta);
    if (ML_S_OK(&s)) {
        gin[0] = ml__keep(dx);
        if (ig > 0) gin[ig] = ml__keep(dg);
        if (ib > 0) gin[ib] = ml__keep(db);
    }
    ml__scope_end(&s);
    return s.status;
}

int ml__batch_norm_foldable(const ml_node *bn) {
    const ml_tensor *x = bn->inputs[0];
    return bn->op == &ml_op_table[OP_BATCH_NORM] && !bn->iparams[3] && x->ndim == 4 &&
           bn->iparams[0] == 3 && bn->index;
}

ml_status ml__batch_norm_backward_pooled(const ml_node *bn, const ml_node *pool,
                                         const ml_tensor *py, const ml_tensor *gp,
                                         const unsigned char *want, ml_tensor **gin) {
    const int has_gamma = (int)bn->iparams[1], has_beta = (int)bn->iparams[2];
    ml_tensor *x = bn->inputs[0], *gamma = has_gamma ? bn->inputs[1] : NULL;
    const int ig = has_gamma ? 1 : -1, ib = has_beta ? 1 + has_gamma : -1;
    const bn_geom geo = bn_geom_of(x, 3, 0);
    const bn_pooled src = {pool, py ? py->data : NULL, gp->data};
    return bn_backward_fast(&geo, x, gamma, bn->fparams[0], NULL, want[0] ? &gin[0] : NULL,
                            ig > 0 && want[ig] ? &gin[ig] : NULL,
                            ib > 0 && want[ib] ? &gin[ib] : NULL,
                            (const float *)(const void *)bn->index, NULL, &src);
}

ml_status ml_batch_norm(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                        ml_tensor *moving_mean, ml_tensor *moving_var, int training, float momentum,
                        float epsilon, int axis) {
    if (!out || !x) return ml_set_error(ML_ERR_VALUE, "batch_norm: input tensor is NULL");
    if (x->ndim < 2)
        return ml_set_error(ML_ERR_SHAPE,
                            "batch_norm: expected an input with at least 2 "
                            "dimensions (batch, ..., channels), got shape %s",
                            ML_SHAPE_STR(x));
    int ax = ml__axis(axis, x->ndim);
    if (ax < 0)
        return ml_set_error(ML_ERR_VALUE,
                            "batch_norm: axis %d is out of range for an input of "
                            "shape %s",
                            axis, ML_SHAPE_STR(x));
    if (!(epsilon >= 0.0f) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE,
                            "batch_norm: epsilon must be a non-negative number, "
                            "got %g",
                            (double)epsilon);
    if (!isfinite(momentum))
        return ml_set_error(ML_ERR_VALUE, "batch_norm: momentum must be finite, got %g",
                            (double)momentum);
    int64_t c = x->shape[ax];
    ml_status st;
    if ((st = check_vec("gamma", gamma, c, x, axis)) ||
        (st = check_vec("beta", beta, c, x, axis)) ||
        (st = check_vec("moving_mean", moving_mean, c, x, axis)) ||
        (st = check_vec("moving_variance", moving_var, c, x, axis)))
        return st;
    if (!training && (!moving_mean || !moving_var))
        return ml_set_error(ML_ERR_VALUE, "batch_norm: inference mode needs the moving mean and "
                                          "variance");
    if (training) {
        int64_t count = c ? x->numel / c : 0;
        if (count == 0)
            return ml_set_error(ML_ERR_SHAPE,
                                "batch_norm: cannot take batch statistics of an "
                                "empty input of shape %s",
                                ML_SHAPE_STR(x));
    }

    /* the statistics' broadcast shape: 1 everywhere but the channel axis */
    int64_t bshape[ML_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) bshape[d] = d == ax ? c : 1;
    const int nd = x->ndim;

    ml_scope s = {0};
    ml_tensor *result = NULL;
    float *stats = NULL;
    if (training) {
        stats = malloc((size_t)(c ? c : 1) * 2 * sizeof(float));
        if (!stats) return ml_set_error(ML_ERR_OOM, "batch_norm: out of memory");
        s.status = bn_train(&result, x, gamma, beta, ax, 0, epsilon, stats, stats + c);
    } else {
        ml_tensor *mean = RESHAPE(&s, moving_mean, nd, bshape);
        ml_tensor *var = RESHAPE(&s, moving_var, nd, bshape);
        ml_tensor *inv = POWS(&s, ADDS(&s, var, epsilon), -0.5f);
        ml_tensor *scale = gamma ? MUL(&s, inv, RESHAPE(&s, gamma, nd, bshape)) : inv;
        ml_tensor *y = MUL(&s, SUB(&s, x, mean), scale);
        if (beta) y = ADD(&s, y, RESHAPE(&s, beta, nd, bshape));
        result = ml__keep(y);
    }
    if (s.status == ML_OK && training) {
        /* no gradient flows through the moving statistics' update */
        const float keep = momentum, take = 1.0f - momentum;
        if (moving_mean) {
            for (int64_t i = 0; i < c; i++)
                moving_mean->data[i] = moving_mean->data[i] * keep + stats[i] * take;
            moving_mean->storage->version++;
        }
        if (moving_var) {
            for (int64_t i = 0; i < c; i++)
                moving_var->data[i] = moving_var->data[i] * keep + stats[c + i] * take;
            moving_var->storage->version++;
        }
    }
    ml__scope_end(&s);
    free(stats);
    if (s.status != ML_OK) {
        ml_release(result);
        return s.status;
    }
    *out = result;
    return ML_OK;
}

ml_status ml_batch_norm_grouped(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                                float epsilon, int axis) {
    if (!out || !x) return ml_set_error(ML_ERR_VALUE, "batch_norm_grouped: input tensor is NULL");
    if (x->ndim < 3)
        return ml_set_error(ML_ERR_SHAPE,
                            "batch_norm_grouped: expected an input with at least "
                            "3 dimensions (groups, batch, ..., channels), got shape %s",
                            ML_SHAPE_STR(x));
    int ax = ml__axis(axis, x->ndim);
    if (ax < 1)
        return ml_set_error(ML_ERR_VALUE,
                            "batch_norm_grouped: axis %d is out of range or the "
                            "group axis for an input of shape %s",
                            axis, ML_SHAPE_STR(x));
    if (!(epsilon >= 0.0f) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE,
                            "batch_norm_grouped: epsilon must be a non-negative "
                            "number, got %g",
                            (double)epsilon);
    const int64_t G = x->shape[0], C = x->shape[ax];
    const ml_tensor *vecs[2] = {gamma, beta};
    const char *names[2] = {"gamma", "beta"};
    for (int i = 0; i < 2; i++)
        if (vecs[i] && (vecs[i]->ndim != 2 || vecs[i]->shape[0] != G || vecs[i]->shape[1] != C))
            return ml_set_error(ML_ERR_SHAPE,
                                "batch_norm_grouped: %s must have shape (%lld, %lld) "
                                "(groups, channels) for an input of shape %s, got %s",
                                names[i], (long long)G, (long long)C, ML_SHAPE_STR(x),
                                ML_SHAPE_STR(vecs[i]));
    if (x->numel == 0)
        return ml_set_error(ML_ERR_SHAPE,
                            "batch_norm_grouped: cannot take batch statistics of "
                            "an empty input of shape %s",
                            ML_SHAPE_STR(x));
    return bn_train(out, x, gamma, beta, ax, 1, epsilon, NULL, NULL);
}
