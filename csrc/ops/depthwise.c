/* depthwise.c — depthwise 2-D convolution, channels-last (NHWC) as Keras, and its two
 * transposes.
 *
 * Each input channel c is convolved with its own M filters (M = the depth multiplier); output
 * channel c*M + m (TensorFlow's and Keras' order) is
 *
 *   dw(x, k)               y[n,o,p,cM+m] = sum_{i,j} x[n, o*sh+i-pt, p*sw+j-pl, c] k[i,j,c,m]
 *   dw_input_grad(g, k)    the adjoint in x:  <g, dw(x, k)> = <input_grad(g, k), x>
 *   dw_kernel_grad(x, g)   the adjoint in k:  <g, dw(x, k)> = <kernel_grad(x, g), k>
 *
 * The three are linear in each tensor argument and differentiate into one another exactly as
 * conv2d's trio (conv.c), so gradients of any order stay inside them.
 *
 * Kernels: direct loops (no im2col: a depthwise product has C*M multiplies per tap, too few
 * for a GEMM to pay). The forward and the input gradient share out whole images; the kernel
 * gradient shares out the taps (i, j), each summing over (n, o, p) in a fixed order, so the
 * bits do not depend on the thread count. The inner loops run over contiguous channels. */
#include "ops.h"

#define IN(k) (out->node->inputs[k])

typedef struct dw_job {
    const ml_win2d *g;
    int64_t M;
    const float *x, *k, *b, *gy;
    float *y, *dx, *dk;
} dw_job;

/* Output rows o whose tap i lands inside the input: o*sh + i - pt in [0, h). */
static int64_t tap_ih(const ml_win2d *g, int64_t o, int64_t i) { return o * g->sh + i - g->pt; }

static void forward_image(void *ctx, int64_t n) {
    const dw_job *j = ctx;
    const ml_win2d *g = j->g;
    const int64_t C = g->c, M = j->M, F = C * M;
    const float *img = j->x + n * g->h * g->w * C;
    float *y = j->y + n * g->oh * g->ow * F;
    for (int64_t o = 0; o < g->oh; o++) {
        for (int64_t p = 0; p < g->ow; p++) {
            float *restrict yo = y + (o * g->ow + p) * F;
            for (int64_t f = 0; f < F; f++) yo[f] = j->b ? j->b[f] : 0.0f;
            for (int64_t i = 0; i < g->kh; i++) {
                int64_t ih = tap_ih(g, o, i);
                if (ih < 0 || ih >= g->h) continue;
                for (int64_t t = 0; t < g->kw; t++) {
                    int64_t iw = p * g->sw + t - g->pl;
                    if (iw < 0 || iw >= g->w) continue;
                    const float *restrict xs = img + (ih * g->w + iw) * C;
                    const float *restrict ks = j->k + (i * g->kw + t) * F;
                    if (M == 1) {
                        for (int64_t c = 0; c < C; c++) yo[c] += xs[c] * ks[c];
                    } else {
                        for (int64_t c = 0; c < C; c++)
                            for (int64_t m = 0; m < M; m++) yo[c * M + m] += xs[c] * ks[c * M + m];
                    }
                }
            }
        }
    }
}

static void input_grad_image(void *ctx, int64_t n) {
    const dw_job *j = ctx;
    const ml_win2d *g = j->g;
    const int64_t C = g->c, M = j->M, F = C * M;
    float *dx = j->dx + n * g->h * g->w * C;
    const float *gy = j->gy + n * g->oh * g->ow * F;
    memset(dx, 0, (size_t)(g->h * g->w * C) * sizeof(float));
    for (int64_t o = 0; o < g->oh; o++) {
        for (int64_t p = 0; p < g->ow; p++) {
            const float *restrict go = gy + (o * g->ow + p) * F;
            for (int64_t i = 0; i < g->kh; i++) {
                int64_t ih = tap_ih(g, o, i);
                if (ih < 0 || ih >= g->h) continue;
                for (int64_t t = 0; t < g->kw; t++) {
                    int64_t iw = p * g->sw + t - g->pl;
                    if (iw < 0 || iw >= g->w) continue;
                    float *restrict xs = dx + (ih * g->w + iw) * C;
                    const float *restrict ks = j->k + (i * g->kw + t) * F;
                    if (M == 1) {
                        for (int64_t c = 0; c < C; c++) xs[c] += go[c] * ks[c];
                    } else {
                        for (int64_t c = 0; c < C; c++) {
                            float s = 0.0f;
                            for (int64_t m = 0; m < M; m++) s += go[c * M + m] * ks[c * M + m];
                            xs[c] += s;
                        }
                    }
                }
            }
        }
    }
}

/* One tap (i, t) of dk, summed over images, rows and columns in that order. */
static void kernel_grad_tap(void *ctx, int64_t tap) {
    const dw_job *j = ctx;
    const ml_win2d *g = j->g;
    const int64_t C = g->c, M = j->M, F = C * M;
    const int64_t i = tap / g->kw, t = tap % g->kw;
    float *restrict dk = j->dk + tap * F;
    memset(dk, 0, (size_t)F * sizeof(float));
    for (int64_t n = 0; n < g->n; n++) {
        const float *img = j->x + n * g->h * g->w * C;
        const float *gy = j->gy + n * g->oh * g->ow * F;
        for (int64_t o = 0; o < g->oh; o++) {
            int64_t ih = tap_ih(g, o, i);
            if (ih < 0 || ih >= g->h) continue;
            for (int64_t p = 0; p < g->ow; p++) {
                int64_t iw = p * g->sw + t - g->pl;
                if (iw < 0 || iw >= g->w) continue;
                const float *restrict xs = img + (ih * g->w + iw) * C;
                const float *restrict go = gy + (o * g->ow + p) * F;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t m = 0; m < M; m++) dk[c * M + m] += xs[c] * go[c * M + m];
            }
        }
    }
}

/* ------------------------------------------------------------- shape checks */

static ml_status check_k(const char *name, const ml_tensor *k, const ml_win2d *g) {
    if (k->ndim != 4 || k->shape[0] != g->kh || k->shape[1] != g->kw || k->shape[2] != g->c ||
        k->shape[3] < 1)
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected kernel of shape (%lld, %lld, %lld, M), got %s", name,
                            (long long)g->kh, (long long)g->kw, (long long)g->c, ML_SHAPE_STR(k));
    return ML_OK;
}

/* gy (N, OH, OW, C*M); M < 0: any positive multiple of C. */
static ml_status check_g(const char *name, const ml_tensor *gy, const ml_win2d *g, int64_t M) {
    if (gy->ndim != 4 || gy->shape[0] != g->n || gy->shape[1] != g->oh || gy->shape[2] != g->ow ||
        (M >= 0 && gy->shape[3] != g->c * M) ||
        (M < 0 && (g->c < 1 || gy->shape[3] < g->c || gy->shape[3] % g->c != 0)))
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: expected gradient of shape (%lld, %lld, %lld, %lld*M), got %s",
                            name, (long long)g->n, (long long)g->oh, (long long)g->ow,
                            (long long)g->c, ML_SHAPE_STR(gy));
    return ML_OK;
}

/* A trace replays the three ops with the geometry they were recorded with. */
typedef struct {
    ml_win2d g;
    ml_op_id op;
} dw_params;

static ml_status dw_geom(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                         const ml_win2d *g);
static ml_status dw_input_grad(ml_tensor **out, ml_tensor *gy, ml_tensor *k, const ml_win2d *g);
static ml_status dw_kernel_grad(ml_tensor **out, ml_tensor *x, ml_tensor *gy, const ml_win2d *g);

static ml_status replay_dw(ml_tensor **out, ml_tensor **in, const void *params) {
    const dw_params *p = params;
    if (p->op == OP_DEPTHWISE_CONV2D) return dw_geom(out, in[0], in[1], in[2], &p->g);
    if (p->op == OP_DEPTHWISE_CONV2D_INPUT_GRAD) return dw_input_grad(out, in[0], in[1], &p->g);
    return dw_kernel_grad(out, in[0], in[1], &p->g);
}

static ml_status finish(ml_tensor **out, ml_tensor *o, ml_op_id op, int n, ml_tensor **ins,
                        const ml_win2d *g) {
    const dw_params dp = {*g, op};
    /* the forward always as (x, kernel, bias or NULL) */
    ML_TRACE(op, replay_dw, op == OP_DEPTHWISE_CONV2D ? 3 : n, ins, o, &dp);
    ml_node *node = NULL;
    if (ml__should_record(n, ins)) {
        ml_status st = ml__record(o, op, n, ins, &node);
        if (st) {
            ml_release(o);
            return st;
        }
        ml__win2d_store(g, node->iparams);
    }
    *out = o;
    return ML_OK;
}

/* --------------------------------------------------------- depthwise_conv2d */

static ml_status dw_geom(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                         const ml_win2d *g) {
    ml_status st;
    if ((st = ml__win2d_check_x("depthwise_conv2d", x, g)) ||
        (st = check_k("depthwise_conv2d", k, g)))
        return st;
    const int64_t M = k->shape[3], F = g->c * M;
    if (b && (b->ndim != 1 || b->shape[0] != F))
        return ml_set_error(ML_ERR_SHAPE, "depthwise_conv2d: bias must have shape (%lld,), got %s",
                            (long long)F, ML_SHAPE_STR(b));
    int64_t shape[4] = {g->n, g->oh, g->ow, F};
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, 4, shape))) return st;
    dw_job j = {.g = g, .M = M, .x = x->data, .k = k->data, .b = b ? b->data : NULL, .y = o->data};
    if (g->oh * g->ow * F > 0) ml__parallel_for(g->n, 0, forward_image, &j);
    ml_tensor *ins[3] = {x, k, b};
    return finish(out, o, OP_DEPTHWISE_CONV2D, b ? 3 : 2, ins, g);
}

ml_status ml_depthwise_conv2d(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias,
                              int stride_h, int stride_w, ml_padding padding) {
    if (!out || !x || !kernel)
        return ml_set_error(ML_ERR_VALUE, "depthwise_conv2d: input tensor is NULL");
    if (x->ndim != 4)
        return ml_set_error(ML_ERR_SHAPE,
                            "depthwise_conv2d: expected a 4-D input (batch, height, width, "
                            "channels), got shape %s",
                            ML_SHAPE_STR(x));
    if (kernel->ndim != 4)
        return ml_set_error(ML_ERR_SHAPE,
                            "depthwise_conv2d: expected a 4-D kernel (height, width, "
                            "in_channels, depth_multiplier), got shape %s",
                            ML_SHAPE_STR(kernel));
    if (kernel->shape[2] != x->shape[3])
        return ml_set_error(ML_ERR_SHAPE,
                            "depthwise_conv2d: input has %lld channels but kernel expects %lld, "
                            "got shapes %s and %s",
                            (long long)x->shape[3], (long long)kernel->shape[2], ML_SHAPE_STR(x),
                            ML_SHAPE_STR(kernel));
    if (kernel->shape[0] < 1 || kernel->shape[1] < 1 || kernel->shape[2] < 1 ||
        kernel->shape[3] < 1)
        return ml_set_error(ML_ERR_SHAPE,
                            "depthwise_conv2d: kernel dimensions must be positive, got %s",
                            ML_SHAPE_STR(kernel));
    ml_win2d g;
    ml_status st = ml__win2d_plan("depthwise_conv2d", x, kernel->shape[0], kernel->shape[1],
                                  stride_h, stride_w, padding, &g);
    if (st) return st;
    return dw_geom(out, x, kernel, bias, &g);
}

ml_status ml__depthwise_conv2d_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    ml_tensor *x = IN(0), *k = IN(1), *b = out->node->n_inputs > 2 ? IN(2) : NULL;
    ml_status st = ML_OK;
    if (ml__wants(0, x) && (st = dw_input_grad(&gin[0], gy, k, &g))) return st;
    if (ml__wants(1, k) && (st = dw_kernel_grad(&gin[1], x, gy, &g))) return st;
    if (ml__wants(2, b)) {
        int axes[3] = {0, 1, 2};
        st = ml_sum(&gin[2], gy, 3, axes, 0);
    }
    return st;
}

/* ---------------------------------------------- depthwise_conv2d_input_grad */

static ml_status dw_input_grad(ml_tensor **out, ml_tensor *gy, ml_tensor *k, const ml_win2d *g) {
    ml_status st;
    if ((st = check_k("depthwise_conv2d_input_grad", k, g)) ||
        (st = check_g("depthwise_conv2d_input_grad", gy, g, k->shape[3])))
        return st;
    int64_t shape[4] = {g->n, g->h, g->w, g->c};
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, 4, shape))) return st;
    dw_job j = {.g = g, .M = k->shape[3], .k = k->data, .gy = gy->data, .dx = o->data};
    if (g->h * g->w * g->c > 0) ml__parallel_for(g->n, 0, input_grad_image, &j);
    ml_tensor *ins[2] = {gy, k};
    return finish(out, o, OP_DEPTHWISE_CONV2D_INPUT_GRAD, 2, ins, g);
}

ml_status ml__depthwise_conv2d_input_grad_backward(ml_tensor *out, ml_tensor *G, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    ml_tensor *gy = IN(0), *k = IN(1);
    ml_status st = ML_OK;
    if (ml__wants(0, gy) && (st = dw_geom(&gin[0], G, k, NULL, &g))) return st;
    if (ml__wants(1, k)) st = dw_kernel_grad(&gin[1], G, gy, &g);
    return st;
}

/* --------------------------------------------- depthwise_conv2d_kernel_grad */

static ml_status dw_kernel_grad(ml_tensor **out, ml_tensor *x, ml_tensor *gy, const ml_win2d *g) {
    ml_status st;
    if ((st = ml__win2d_check_x("depthwise_conv2d_kernel_grad", x, g)) ||
        (st = check_g("depthwise_conv2d_kernel_grad", gy, g, -1)))
        return st;
    const int64_t M = gy->shape[3] / g->c;
    int64_t shape[4] = {g->kh, g->kw, g->c, M};
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, 4, shape))) return st;
    dw_job j = {.g = g, .M = M, .x = x->data, .gy = gy->data, .dk = o->data};
    if (g->c * M > 0) ml__parallel_for(g->kh * g->kw, 0, kernel_grad_tap, &j);
    ml_tensor *ins[2] = {x, gy};
    return finish(out, o, OP_DEPTHWISE_CONV2D_KERNEL_GRAD, 2, ins, g);
}

ml_status ml__depthwise_conv2d_kernel_grad_backward(ml_tensor *out, ml_tensor *G, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    ml_tensor *x = IN(0), *gy = IN(1);
    ml_status st = ML_OK;
    if (ml__wants(0, x) && (st = dw_input_grad(&gin[0], gy, G, &g))) return st;
    if (ml__wants(1, gy)) st = dw_geom(&gin[1], x, G, NULL, &g);
    return st;
}
