/* conv.c — 2-D convolution, channels-last (NHWC) as Keras, and its two transposes.
 *
 * Three ops, each linear in each of its two tensor arguments, differentiate into one another
 * (as matmul's NN/NT/TN products do):
 *
 *   conv2d(x, k)               y[n,o,p,f] = sum_{i,j,c} x[n, o*sh+i-pt, p*sw+j-pl, c] k[i,j,c,f]
 *   conv2d_input_grad(g, k)    the adjoint in x:  <g, conv2d(x, k)> = <input_grad(g, k), x>
 *   conv2d_kernel_grad(x, g)   the adjoint in k:  <g, conv2d(x, k)> = <kernel_grad(x, g), k>
 *
 * so for an upstream G:
 *   d conv2d:      dx = input_grad(G, k)      dk = kernel_grad(x, G)     db = sum(G, N,OH,OW)
 *   d input_grad:  dg = conv2d(G, k)          dk = kernel_grad(G, g)
 *   d kernel_grad: dx = input_grad(g, G)      dg = conv2d(x, G)
 * and gradients of any order stay inside the trio.
 *
 * Kernels: im2col + the blocked GEMM (ml_sgemm). A row of the column matrix is one output
 * pixel's receptive field in (kh, kw, c) order, which is the kernel's own memory order, so
 * the kernel is used in place as a (KH*KW*C, F) matrix. Images are processed in chunks whose
 * column matrix fits a per-thread buffer that is kept between calls (no malloc per call:
 * kernels/scratch.h).
 * A 1x1 kernel with stride 1 and no padding skips im2col (the input is the column matrix).
 * A 3x3 kernel at stride 1 with 'same' padding runs through Winograd's F(2x2, 3x3)
 * (kernels/winograd.c: 16 multiplies for 4 outputs instead of 36) or F(4x4, 3x3) (36 for 16
 * instead of 144) where the shape's table says it pays (ml__wino_tile): forward, the input gradient as the forward with the kernel
 * flipped and transposed, and the kernel gradient in the transformed domain. The choice is
 * the shape's, so the three ops keep their contracts and their gradients of every order.
 *
 * conv2d_batched is conv2d over a meta-batch of T tasks, each with its own kernel: x
 * (T,N,H,W,C), k (T,KH,KW,C,F), bias (T,F) -> (T,N,OH,OW,F) (MAML's per-task fast weights).
 * It and the trio's batched forms (the same ops with a task count, iparams[ML_WIN2D_NPARAMS]:
 * 0 unbatched) run the kernels above task by task, on one task's shape, so each task's numbers
 * are those conv2d gives it alone; the identities above hold per task (db sums over N,OH,OW).
 */
#include <stdatomic.h>

#include "ops.h"
#include "../kernels/scratch.h"
#include "../kernels/winograd.h"

#define IN(k) (out->node->inputs[k])

/* ------------------------------------------------------------------ geometry */

void ml__win2d_store(const ml_win2d *g, int64_t *p) {
    p[0] = g->n;
    p[1] = g->h;
    p[2] = g->w;
    p[3] = g->c;
    p[4] = g->kh;
    p[5] = g->kw;
    p[6] = g->sh;
    p[7] = g->sw;
    p[8] = g->pt;
    p[9] = g->pl;
    p[10] = g->oh;
    p[11] = g->ow;
}

void ml__win2d_load(ml_win2d *g, const int64_t *p) {
    g->n = p[0];
    g->h = p[1];
    g->w = p[2];
    g->c = p[3];
    g->kh = p[4];
    g->kw = p[5];
    g->sh = p[6];
    g->sw = p[7];
    g->pt = p[8];
    g->pl = p[9];
    g->oh = p[10];
    g->ow = p[11];
}

_Static_assert(ML_WIN2D_NPARAMS + 1 <= ML_NODE_MAX_IPARAMS, "iparams too small for ml_win2d");

/* Column matrices up to this size (floats) per chunk of images: 2 MiB, about an L2/L3 share. */
#define COLS_TARGET (512 * 1024)
/* At least this many chunks when there are enough images, so that the chunks spread over
 * the threads. The chunking depends on the geometry only, never on the thread count, so
 * results are the same for any number of threads. */
#define MIN_CHUNKS 4

static int64_t chunk_images(const ml_win2d *g) {
    int64_t per = g->oh * g->ow * g->kh * g->kw * g->c;
    if (per <= 0) return g->n > 0 ? g->n : 1;
    int64_t n = COLS_TARGET / per;
    int64_t spread = (g->n + MIN_CHUNKS - 1) / MIN_CHUNKS;
    if (n > spread) n = spread;
    if (n < 1) n = 1;
    if (n > g->n) n = g->n;
    return n > 0 ? n : 1;
}

/* 3x3, stride 1, one pixel of zero padding each side, output the input's size. */
static int is_wino_geom(const ml_win2d *g) {
    return g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->pt == 1 && g->pl == 1 &&
           g->oh == g->h && g->ow == g->w;
}

static int is_pointwise(const ml_win2d *g) {
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->pt == 0 && g->pl == 0 &&
           g->oh == g->h && g->ow == g->w;
}

/* im2col of images [n0, n0 + nn) into cols (nn*OH*OW, KH*KW*C). */
static void im2col(const ml_win2d *g, const float *x, int64_t n0, int64_t nn, float *cols) {
    const int64_t C = g->c, KWC = g->kw * C, KK = g->kh * KWC;
    float *row = cols;
    for (int64_t n = n0; n < n0 + nn; n++) {
        const float *img = x + n * g->h * g->w * C;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            for (int64_t ow = 0; ow < g->ow; ow++, row += KK) {
                float *dst = row;
                int64_t iw0 = ow * g->sw - g->pl;
                for (int64_t i = 0; i < g->kh; i++, dst += KWC) {
                    int64_t ih = oh * g->sh + i - g->pt;
                    if (ih < 0 || ih >= g->h) {
                        memset(dst, 0, (size_t)KWC * sizeof(float));
                        continue;
                    }
                    const float *src = img + ih * g->w * C;
                    if (iw0 >= 0 && iw0 + g->kw <= g->w) {
                        memcpy(dst, src + iw0 * C, (size_t)KWC * sizeof(float));
                        continue;
                    }
                    for (int64_t j = 0; j < g->kw; j++) {
                        int64_t iw = iw0 + j;
                        if (iw < 0 || iw >= g->w)
                            memset(dst + j * C, 0, (size_t)C * sizeof(float));
                        else
                            memcpy(dst + j * C, src + iw * C, (size_t)C * sizeof(float));
                    }
                }
            }
        }
    }
}

/* col2im: adds the column matrix of images [n0, n0 + nn) back into dx (already zeroed). */
static void col2im(const ml_win2d *g, const float *cols, int64_t n0, int64_t nn, float *dx) {
    const int64_t C = g->c, KWC = g->kw * C, KK = g->kh * KWC;
    const float *row = cols;
    for (int64_t n = n0; n < n0 + nn; n++) {
        float *img = dx + n * g->h * g->w * C;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            for (int64_t ow = 0; ow < g->ow; ow++, row += KK) {
                const float *src = row;
                int64_t iw0 = ow * g->sw - g->pl;
                for (int64_t i = 0; i < g->kh; i++, src += KWC) {
                    int64_t ih = oh * g->sh + i - g->pt;
                    if (ih < 0 || ih >= g->h) continue;
                    float *dst = img + ih * g->w * C;
                    if (iw0 >= 0 && iw0 + g->kw <= g->w) {
                        float *d = dst + iw0 * C;
                        for (int64_t t = 0; t < KWC; t++) d[t] += src[t];
                        continue;
                    }
                    for (int64_t j = 0; j < g->kw; j++) {
                        int64_t iw = iw0 + j;
                        if (iw < 0 || iw >= g->w) continue;
                        float *d = dst + iw * C;
                        const float *s2 = src + j * C;
                        for (int64_t c = 0; c < C; c++) d[c] += s2[c];
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ kernels */

/* One task per chunk of images; each worker uses its own column buffer. */
typedef struct conv_job {
    const ml_win2d *g;
    int64_t F, KK, P, step;
    const float *x, *k, *b, *gy;
    float *y, *dx, *dk, *parts;
    atomic_int failed;
} conv_job;

static void forward_chunk(void *ctx, int64_t ci) {
    conv_job *j = ctx;
    const ml_win2d *g = j->g;
    const int64_t n0 = ci * j->step, nn = g->n - n0 < j->step ? g->n - n0 : j->step;
    const int64_t P = j->P, KK = j->KK, F = j->F;
    float *y = j->y + n0 * P * F;
    if (is_pointwise(g)) {
        ml_sgemm(0, 0, nn * P, F, KK, 1.0f, j->x + n0 * P * KK, KK, j->k, F, 0.0f, y, F);
    } else {
        float *cols = ml__scratch(ML_SCRATCH_CONV_COLS, (size_t)(nn * P * KK));
        if (!cols) {
            atomic_store(&j->failed, 1);
            return;
        }
        im2col(g, j->x, n0, nn, cols);
        ml_sgemm(0, 0, nn * P, F, KK, 1.0f, cols, KK, j->k, F, 0.0f, y, F);
    }
    if (j->b) {
        const float *restrict b = j->b;
        for (int64_t r = 0, rows = nn * P; r < rows; r++) {
            float *restrict row = y + r * F;
            for (int64_t f = 0; f < F; f++) row[f] += b[f];
        }
    }
}

static void input_grad_chunk(void *ctx, int64_t ci) {
    conv_job *j = ctx;
    const ml_win2d *g = j->g;
    const int64_t n0 = ci * j->step, nn = g->n - n0 < j->step ? g->n - n0 : j->step;
    const int64_t P = j->P, KK = j->KK, F = j->F;
    const float *gy = j->gy + n0 * P * F;
    if (is_pointwise(g)) {
        ml_sgemm(0, 1, nn * P, KK, F, 1.0f, gy, F, j->k, F, 0.0f, j->dx + n0 * P * KK, KK);
        return;
    }
    const int64_t img = g->h * g->w * g->c;
    memset(j->dx + n0 * img, 0, (size_t)(nn * img) * sizeof(float));
    float *cols = ml__scratch(ML_SCRATCH_CONV_COLS, (size_t)(nn * P * KK));
    if (!cols) {
        atomic_store(&j->failed, 1);
        return;
    }
    ml_sgemm(0, 1, nn * P, KK, F, 1.0f, gy, F, j->k, F, 0.0f, cols, KK);
    col2im(g, cols, n0, nn, j->dx);
}

/* Chunk ci's share of dk (chunk 0 into dk itself, the others into their own slices of
 * parts); summed in chunk order afterwards. */
static void kernel_grad_chunk(void *ctx, int64_t ci) {
    conv_job *j = ctx;
    const ml_win2d *g = j->g;
    const int64_t n0 = ci * j->step, nn = g->n - n0 < j->step ? g->n - n0 : j->step;
    const int64_t P = j->P, KK = j->KK, F = j->F;
    float *dst = ci == 0 ? j->dk : j->parts + (ci - 1) * KK * F;
    const float *gy = j->gy + n0 * P * F;
    if (is_pointwise(g)) {
        ml_sgemm(1, 0, KK, F, nn * P, 1.0f, j->x + n0 * P * KK, KK, gy, F, 0.0f, dst, F);
        return;
    }
    float *cols = ml__scratch(ML_SCRATCH_CONV_COLS, (size_t)(nn * P * KK));
    if (!cols) {
        atomic_store(&j->failed, 1);
        return;
    }
    im2col(g, j->x, n0, nn, cols);
    ml_sgemm(1, 0, KK, F, nn * P, 1.0f, cols, KK, gy, F, 0.0f, dst, F);
}

static ml_status oom(void) {
    return ml_set_error(ML_ERR_OOM, "conv2d: out of memory for the column buffer");
}

static ml_status conv_forward_kernel(const ml_win2d *g, int64_t F, const float *x, const float *k,
                                     const float *b, float *y) {
    const int64_t KK = g->kh * g->kw * g->c, P = g->oh * g->ow;
    if (g->n == 0 || P == 0 || F == 0) return ML_OK;
    const int m = is_wino_geom(g) ? ml__wino_tile(ML_WINO_FORWARD, g->n, g->h, g->w, g->c, F) : 0;
    if (m) return ml__wino_conv(m, g->n, g->h, g->w, g->c, F, x, k, 0, b, y) ? oom() : ML_OK;
    conv_job j = {.g = g, .F = F, .KK = KK, .P = P, .x = x, .k = k, .b = b, .y = y};
    j.step = is_pointwise(g) ? (g->n + MIN_CHUNKS - 1) / MIN_CHUNKS : chunk_images(g);
    atomic_init(&j.failed, 0);
    ml__parallel_for((g->n + j.step - 1) / j.step, 0, forward_chunk, &j);
    return atomic_load(&j.failed) ? oom() : ML_OK;
}

static ml_status conv_input_grad_kernel(const ml_win2d *g, int64_t F, const float *gy,
                                        const float *k, float *dx) {
    const int64_t KK = g->kh * g->kw * g->c, P = g->oh * g->ow;
    const int64_t xn = g->n * g->h * g->w * g->c;
    if (xn == 0) return ML_OK;
    if (P == 0 || KK == 0) {
        memset(dx, 0, (size_t)xn * sizeof(float));
        return ML_OK;
    }
    const int m = is_wino_geom(g) ? ml__wino_tile(ML_WINO_INPUT_GRAD, g->n, g->h, g->w, g->c, F)
                                  : 0;
    if (m) return ml__wino_conv(m, g->n, g->h, g->w, F, g->c, gy, k, 1, NULL, dx) ? oom() : ML_OK;
    conv_job j = {.g = g, .F = F, .KK = KK, .P = P, .k = k, .gy = gy, .dx = dx};
    j.step = is_pointwise(g) ? (g->n + MIN_CHUNKS - 1) / MIN_CHUNKS : chunk_images(g);
    atomic_init(&j.failed, 0);
    ml__parallel_for((g->n + j.step - 1) / j.step, 0, input_grad_chunk, &j);
    return atomic_load(&j.failed) ? oom() : ML_OK;
}

static ml_status conv_kernel_grad_kernel(const ml_win2d *g, int64_t F, const float *x,
                                         const float *gy, float *dk) {
    const int64_t KK = g->kh * g->kw * g->c, P = g->oh * g->ow;
    if (KK == 0 || F == 0) return ML_OK;
    if (g->n == 0 || P == 0) {
        memset(dk, 0, (size_t)(KK * F) * sizeof(float));
        return ML_OK;
    }
    const int m = is_wino_geom(g) ? ml__wino_tile(ML_WINO_KERNEL_GRAD, g->n, g->h, g->w, g->c, F)
                                  : 0;
    if (m) return ml__wino_kernel_grad(m, g->n, g->h, g->w, g->c, F, x, gy, dk) ? oom() : ML_OK;
    conv_job j = {.g = g, .F = F, .KK = KK, .P = P, .x = x, .gy = gy, .dk = dk};
    j.step = is_pointwise(g) ? (g->n + MIN_CHUNKS - 1) / MIN_CHUNKS : chunk_images(g);
    const int64_t chunks = (g->n + j.step - 1) / j.step;
    if (chunks > 1) {
        /* partial kernel gradients: the calling thread's buffer, kept between calls */
        j.parts = ml__scratch(ML_SCRATCH_CONV_PARTS, (size_t)((chunks - 1) * KK * F));
        if (!j.parts) return oom();
    }
    atomic_init(&j.failed, 0);
    ml__parallel_for(chunks, 0, kernel_grad_chunk, &j);
    if (atomic_load(&j.failed)) return oom();
    for (int64_t c = 1; c < chunks; c++) { /* fixed order: independent of the threads */
        const float *restrict src = j.parts + (c - 1) * KK * F;
        float *restrict d = dk;
        for (int64_t t = 0, e = KK * F; t < e; t++) d[t] += src[t];
    }
    return ML_OK;
}

/* ------------------------------------------------------------- shape checks */

/* Shared with the pools (declared in internal.h): x has the geometry's input shape. */
ml_status ml__win2d_check_x(const char *name, const ml_tensor *x, const ml_win2d *g) {
    if (x->ndim != 4 || x->shape[0] != g->n || x->shape[1] != g->h || x->shape[2] != g->w ||
        x->shape[3] != g->c)
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected input of shape (%lld, %lld, %lld, %lld), "
                            "got %s",
                            name, (long long)g->n, (long long)g->h, (long long)g->w,
                            (long long)g->c, ML_SHAPE_STR(x));
    return ML_OK;
}

/* A tensor of one task's shape `dims` (4-D), with a leading task axis of t when t > 0. */
static int task_shaped(const ml_tensor *x, int64_t t, const int64_t *dims) {
    const int o = t > 0;
    if (x->ndim != 4 + o || (o && x->shape[0] != t)) return 0;
    for (int i = 0; i < 4; i++)
        if (dims[i] >= 0 && x->shape[i + o] != dims[i]) return 0;
    return 1;
}

static ml_status check_geom_k(const char *name, const ml_tensor *k, const ml_win2d *g, int64_t t) {
    const int64_t d[4] = {g->kh, g->kw, g->c, -1};
    if (!task_shaped(k, t, d))
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected kernel of shape %s(%lld, %lld, %lld, F), "
                            "got %s",
                            name, t > 0 ? "tasks x " : "", (long long)g->kh, (long long)g->kw,
                            (long long)g->c, ML_SHAPE_STR(k));
    return ML_OK;
}

static ml_status check_geom_g(const char *name, const ml_tensor *gy, const ml_win2d *g, int64_t F,
                              int64_t t) {
    const int64_t d[4] = {g->n, g->oh, g->ow, F};
    if (!task_shaped(gy, t, d))
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected gradient of shape %s(%lld, %lld, %lld, %lld), "
                            "got %s",
                            name, t > 0 ? "tasks x " : "", (long long)g->n, (long long)g->oh,
                            (long long)g->ow, (long long)F, ML_SHAPE_STR(gy));
    return ML_OK;
}

/* A trace replays the three convolution ops with the geometry they were recorded with (a
 * replay's inputs have the recorded shapes, so the geometry is the same). */
typedef struct {
    ml_win2d g;
    ml_op_id op;
    int64_t t; /* tasks (0: unbatched) */
} conv_params;

static ml_status conv_t(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                        const ml_win2d *g, int64_t t);
static ml_status input_grad_t(ml_tensor **out, ml_tensor *gy, ml_tensor *k, const ml_win2d *g,
                              int64_t t);
static ml_status kernel_grad_t(ml_tensor **out, ml_tensor *x, ml_tensor *gy, const ml_win2d *g,
                               int64_t t);

static ml_status replay_conv(ml_tensor **out, ml_tensor **in, const void *params) {
    const conv_params *p = params;
    if (p->op == OP_CONV2D || p->op == OP_CONV2D_BATCHED)
        return conv_t(out, in[0], in[1], in[2], &p->g, p->t);
    if (p->op == OP_CONV2D_INPUT_GRAD) return input_grad_t(out, in[0], in[1], &p->g, p->t);
    return kernel_grad_t(out, in[0], in[1], &p->g, p->t);
}

static ml_status finish(ml_tensor **out, ml_tensor *o, ml_op_id op, int n, ml_tensor **ins,
                        const ml_win2d *g, int64_t t) {
    const conv_params cp = {*g, op, t};
    /* conv2d always as (x, kernel, bias or NULL) */
    int fwd = op == OP_CONV2D || op == OP_CONV2D_BATCHED;
    ML_TRACE(op, replay_conv, fwd ? 3 : n, ins, o, &cp);
    ml_node *node = NULL;
    if (ml__should_record(n, ins)) {
        ml_status st = ml__record(o, op, n, ins, &node);
        if (st) {
            ml_release(o);
            return st;
        }
        ml__win2d_store(g, node->iparams);
        node->iparams[ML_WIN2D_NPARAMS] = t;
    }
    *out = o;
    return ML_OK;
}

static ml_status check_x_t(const char *name, const ml_tensor *x, const ml_win2d *g, int64_t t) {
    if (t == 0) return ml__win2d_check_x(name, x, g);
    const int64_t d[4] = {g->n, g->h, g->w, g->c};
    if (!task_shaped(x, t, d))
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected input of shape (%lld, %lld, %lld, %lld, %lld), got %s",
                            name, (long long)t, (long long)g->n, (long long)g->h, (long long)g->w,
                            (long long)g->c, ML_SHAPE_STR(x));
    return ML_OK;
}

/* ------------------------------------------------------------------- conv2d */

/* The per-task strides of a task-batched op's operands (t > 0), the one task's otherwise. */
static int64_t tasks_of(int64_t t) { return t > 0 ? t : 1; }

static ml_status conv_t(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                        const ml_win2d *g, int64_t t) {
    const char *name = t > 0 ? "conv2d_batched" : "conv2d";
    ml_status st;
    if ((st = check_x_t(name, x, g, t)) || (st = check_geom_k(name, k, g, t))) return st;
    const int o = t > 0;
    int64_t F = k->shape[3 + o];
    if (b && (b->ndim != 1 + o || (o && b->shape[0] != t) || b->shape[o] != F))
        return ml_set_error(ML_ERR_SHAPE, "%s: bias must have shape %s(%lld,), got %s", name,
                            o ? "tasks x " : "", (long long)F, ML_SHAPE_STR(b));
    int64_t shape[5] = {t, g->n, g->oh, g->ow, F};
    ml_tensor *y = NULL;
    if ((st = ml__new(&y, 4 + o, shape + 1 - o))) return st;
    const int64_t xs = g->n * g->h * g->w * g->c, ks = g->kh * g->kw * g->c * F;
    const int64_t ys = g->n * g->oh * g->ow * F;
    for (int64_t i = 0; i < tasks_of(t); i++) {
        st = conv_forward_kernel(g, F, x->data + i * xs, k->data + i * ks,
                                 b ? b->data + i * F : NULL, y->data + i * ys);
        if (st) {
            ml_release(y);
            return st;
        }
    }
    ml_tensor *ins[3] = {x, k, b};
    return finish(out, y, o ? OP_CONV2D_BATCHED : OP_CONV2D, b ? 3 : 2, ins, g, t);
}

ml_status ml__conv2d_geom(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                          const ml_win2d *g) {
    return conv_t(out, x, k, b, g, 0);
}

/* Output size and leading pad of one spatial dim, Keras/TF rules. */
static void same_or_valid(int64_t size, int64_t win, int64_t stride, ml_padding padding,
                          int64_t *out_size, int64_t *pad_before) {
    if (padding == ML_PAD_SAME) {
        int64_t o = (size + stride - 1) / stride;
        int64_t total = (o - 1) * stride + win - size;
        if (total < 0) total = 0;
        *out_size = o;
        *pad_before = total / 2;
    } else {
        *out_size = size >= win ? (size - win) / stride + 1 : 0;
        *pad_before = 0;
    }
}

/* Shared by conv2d and the pools (declared in internal.h). */
ml_status ml__win2d_plan(const char *name, const ml_tensor *x, int64_t kh, int64_t kw, int sh,
                         int sw, ml_padding padding, ml_win2d *g) {
    if (x->ndim != 4)
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected a 4-D input (batch, height, width, "
                            "channels), got shape %s",
                            name, ML_SHAPE_STR(x));
    if (sh <= 0 || sw <= 0)
        return ml_set_error(ML_ERR_VALUE, "%s: strides must be positive, got (%d, %d)", name, sh,
                            sw);
    if (padding != ML_PAD_SAME && padding != ML_PAD_VALID)
        return ml_set_error(ML_ERR_VALUE, "%s: padding must be 'same' or 'valid'", name);
    g->n = x->shape[0];
    g->h = x->shape[1];
    g->w = x->shape[2];
    g->c = x->shape[3];
    g->kh = kh;
    g->kw = kw;
    g->sh = sh;
    g->sw = sw;
    same_or_valid(g->h, kh, sh, padding, &g->oh, &g->pt);
    same_or_valid(g->w, kw, sw, padding, &g->ow, &g->pl);
    if (padding == ML_PAD_VALID && (kh > g->h || kw > g->w))
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: window %lldx%lld is larger than the input %lldx%lld "
                            "(shape %s) with padding 'valid': the output would be empty",
                            name, (long long)kh, (long long)kw, (long long)g->h, (long long)g->w,
                            ML_SHAPE_STR(x));
    return ML_OK;
}

ml_status ml_conv2d(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias, int stride_h,
                    int stride_w, ml_padding padding) {
    if (!out || !x || !kernel) return ml_set_error(ML_ERR_VALUE, "conv2d: input tensor is NULL");
    if (x->ndim != 4)
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d: expected a 4-D input (batch, height, width, "
                            "channels), got shape %s",
                            ML_SHAPE_STR(x));
    if (kernel->ndim != 4)
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d: expected a 4-D kernel (height, width, "
                            "in_channels, filters), got shape %s",
                            ML_SHAPE_STR(kernel));
    if (kernel->shape[2] != x->shape[3])
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d: input has %lld channels but kernel expects %lld, "
                            "got shapes %s and %s",
                            (long long)x->shape[3], (long long)kernel->shape[2], ML_SHAPE_STR(x),
                            ML_SHAPE_STR(kernel));
    if (kernel->shape[0] < 1 || kernel->shape[1] < 1 || kernel->shape[2] < 1 ||
        kernel->shape[3] < 1)
        return ml_set_error(ML_ERR_SHAPE, "conv2d: kernel dimensions must be positive, got %s",
                            ML_SHAPE_STR(kernel));
    int64_t F = kernel->shape[3];
    if (bias && (bias->ndim != 1 || bias->shape[0] != F))
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d: bias must have shape (%lld,) for a kernel of "
                            "shape %s, got %s",
                            (long long)F, ML_SHAPE_STR(kernel), ML_SHAPE_STR(bias));
    ml_win2d g;
    ml_status st = ml__win2d_plan("conv2d", x, kernel->shape[0], kernel->shape[1], stride_h,
                                  stride_w, padding, &g);
    if (st) return st;
    return ml__conv2d_geom(out, x, kernel, bias, &g);
}

ml_status ml_conv2d_batched(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias,
                            int stride_h, int stride_w, ml_padding padding) {
    if (!out || !x || !kernel)
        return ml_set_error(ML_ERR_VALUE, "conv2d_batched: input tensor is NULL");
    if (x->ndim != 5)
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d_batched: expected a 5-D input (tasks, batch, height, width, "
                            "channels), got shape %s",
                            ML_SHAPE_STR(x));
    if (kernel->ndim != 5)
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d_batched: expected a 5-D kernel (tasks, height, width, "
                            "in_channels, filters), got shape %s",
                            ML_SHAPE_STR(kernel));
    if (x->shape[0] != kernel->shape[0] || x->shape[0] < 1)
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d_batched: input and kernel must have the same number of "
                            "tasks (at least 1), got shapes %s and %s",
                            ML_SHAPE_STR(x), ML_SHAPE_STR(kernel));
    if (kernel->shape[3] != x->shape[4])
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d_batched: input has %lld channels but kernel expects %lld, "
                            "got shapes %s and %s",
                            (long long)x->shape[4], (long long)kernel->shape[3], ML_SHAPE_STR(x),
                            ML_SHAPE_STR(kernel));
    for (int i = 1; i < 5; i++)
        if (kernel->shape[i] < 1)
            return ml_set_error(ML_ERR_SHAPE,
                                "conv2d_batched: kernel dimensions must be positive, got %s",
                                ML_SHAPE_STR(kernel));
    const int64_t t = x->shape[0], F = kernel->shape[4];
    if (bias && (bias->ndim != 2 || bias->shape[0] != t || bias->shape[1] != F))
        return ml_set_error(ML_ERR_SHAPE,
                            "conv2d_batched: bias must have shape (%lld, %lld) for a kernel of "
                            "shape %s, got %s",
                            (long long)t, (long long)F, ML_SHAPE_STR(kernel), ML_SHAPE_STR(bias));
    /* one task's input, for the geometry (its messages name the task's shape) */
    ml_tensor one = *x;
    one.ndim = 4;
    for (int i = 0; i < 4; i++) one.shape[i] = x->shape[i + 1];
    ml_win2d g;
    ml_status st = ml__win2d_plan("conv2d_batched", &one, kernel->shape[1], kernel->shape[2],
                                  stride_h, stride_w, padding, &g);
    if (st) return st;
    return conv_t(out, x, kernel, bias, &g, t);
}

static ml_status conv_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    const int64_t t = out->node->iparams[ML_WIN2D_NPARAMS];
    ml_tensor *x = IN(0), *k = IN(1), *b = out->node->n_inputs > 2 ? IN(2) : NULL;
    ml_status st = ML_OK;
    if (ml__wants(0, x) && (st = input_grad_t(&gin[0], gy, k, &g, t))) return st;
    if (ml__wants(1, k) && (st = kernel_grad_t(&gin[1], x, gy, &g, t))) return st;
    if (ml__wants(2, b)) {
        /* over the images and pixels (of each task) */
        int axes[3] = {0, 1, 2};
        if (t > 0)
            for (int i = 0; i < 3; i++) axes[i]++;
        st = ml_sum(&gin[2], gy, 3, axes, 0);
    }
    return st;
}

ml_status ml__conv2d_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    return conv_backward(out, gy, gin);
}

ml_status ml__conv2d_batched_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    return conv_backward(out, gy, gin);
}

/* -------------------------------------------------------- conv2d_input_grad */

static ml_status input_grad_t(ml_tensor **out, ml_tensor *gy, ml_tensor *k, const ml_win2d *g,
                              int64_t t) {
    ml_status st;
    const int o = t > 0;
    if ((st = check_geom_k("conv2d_input_grad", k, g, t)) ||
        (st = check_geom_g("conv2d_input_grad", gy, g, k->shape[3 + o], t)))
        return st;
    const int64_t F = k->shape[3 + o];
    int64_t shape[5] = {t, g->n, g->h, g->w, g->c};
    ml_tensor *dx = NULL;
    if ((st = ml__new(&dx, 4 + o, shape + 1 - o))) return st;
    const int64_t xs = g->n * g->h * g->w * g->c, ks = g->kh * g->kw * g->c * F;
    const int64_t ys = g->n * g->oh * g->ow * F;
    for (int64_t i = 0; i < tasks_of(t); i++) {
        st = conv_input_grad_kernel(g, F, gy->data + i * ys, k->data + i * ks, dx->data + i * xs);
        if (st) {
            ml_release(dx);
            return st;
        }
    }
    ml_tensor *ins[2] = {gy, k};
    return finish(out, dx, OP_CONV2D_INPUT_GRAD, 2, ins, g, t);
}

ml_status ml__conv2d_input_grad(ml_tensor **out, ml_tensor *gy, ml_tensor *k, const ml_win2d *g) {
    return input_grad_t(out, gy, k, g, 0);
}

ml_status ml__conv2d_input_grad_backward(ml_tensor *out, ml_tensor *G, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    const int64_t t = out->node->iparams[ML_WIN2D_NPARAMS];
    ml_tensor *gy = IN(0), *k = IN(1);
    ml_status st = ML_OK;
    if (ml__wants(0, gy) && (st = conv_t(&gin[0], G, k, NULL, &g, t))) return st;
    if (ml__wants(1, k)) st = kernel_grad_t(&gin[1], G, gy, &g, t);
    return st;
}

/* ------------------------------------------------------- conv2d_kernel_grad */

static ml_status kernel_grad_t(ml_tensor **out, ml_tensor *x, ml_tensor *gy, const ml_win2d *g,
                               int64_t t) {
    ml_status st;
    const int o = t > 0;
    if ((st = check_x_t("conv2d_kernel_grad", x, g, t)) ||
        (st = check_geom_g("conv2d_kernel_grad", gy, g, -1, t)))
        return st;
    const int64_t F = gy->shape[3 + o];
    int64_t shape[5] = {t, g->kh, g->kw, g->c, F};
    ml_tensor *dk = NULL;
    if ((st = ml__new(&dk, 4 + o, shape + 1 - o))) return st;
    const int64_t xs = g->n * g->h * g->w * g->c, ks = g->kh * g->kw * g->c * F;
    const int64_t ys = g->n * g->oh * g->ow * F;
    for (int64_t i = 0; i < tasks_of(t); i++) {
        st = conv_kernel_grad_kernel(g, F, x->data + i * xs, gy->data + i * ys, dk->data + i * ks);
        if (st) {
            ml_release(dk);
            return st;
        }
    }
    ml_tensor *ins[2] = {x, gy};
    return finish(out, dk, OP_CONV2D_KERNEL_GRAD, 2, ins, g, t);
}

ml_status ml__conv2d_kernel_grad(ml_tensor **out, ml_tensor *x, ml_tensor *gy, const ml_win2d *g) {
    return kernel_grad_t(out, x, gy, g, 0);
}

ml_status ml__conv2d_kernel_grad_backward(ml_tensor *out, ml_tensor *G, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    const int64_t t = out->node->iparams[ML_WIN2D_NPARAMS];
    ml_tensor *x = IN(0), *gy = IN(1);
    ml_status st = ML_OK;
    if (ml__wants(0, x) && (st = input_grad_t(&gin[0], gy, G, &g, t))) return st;
    if (ml__wants(1, gy)) st = conv_t(&gin[1], x, G, NULL, &g, t);
    return st;
}
