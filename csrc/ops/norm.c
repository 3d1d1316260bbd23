/* norm.c — batch normalisation (Ioffe & Szegedy 2015) as Keras' BatchNormalization layer.
 *
 * Training mode is one fused op (OP_BATCH_NORM): per channel, the mean and the biased
 * variance (two passes, double accumulators), then y = (x - mean) * gamma * inv + beta with
 * inv = 1/sqrt(var + eps) in a third. Its backward,
 *   dx = gamma * inv * (g - mean(g) - xhat * mean(g * xhat)),  dgamma = sum(g * xhat),
 *   dbeta = sum(g)   (means and sums over every axis but the channel's),
 * is composed of differentiable public ops (xhat is recomputed by the fused op itself, inv
 * from mean/sub/square/mean/pow) whenever grad mode is on, so gradients of every order
 * work (MAML through batch statistics). With grad mode off (a first-order backward, where
 * nothing would be recorded anyway) the same formula runs as two fused C passes.
 * Inference mode is composed of elementwise ops with the moving statistics.
 * The moving statistics are updated in place with no gradient, only after the output has
 * been computed (a failure leaves them as they were).
 */
#include <math.h>

#include "../core/internal.h"

static ml_status check_vec(const char *what, const ml_tensor *t, int64_t c, const ml_tensor *x,
                           int axis) {
    if (t && (t->ndim != 1 || t->shape[0] != c))
        return ml_set_error(ML_ERR_SHAPE, "batch_norm: %s must have shape (%lld,) for an input of "
                            "shape %s normalised along axis %d, got %s", what, (long long)c,
                            ML_SHAPE_STR(x), axis, ML_SHAPE_STR(t));
    return ML_OK;
}


/* x seen as (outer, c, inner) around the channel axis ax */
typedef struct bn_geom {
    int64_t outer, c, inner, count;
} bn_geom;

static bn_geom bn_geom_of(const ml_tensor *x, int ax) {
    bn_geom g = {1, x->shape[ax], 1, 0};
    for (int d = 0; d < ax; d++) g.outer *= x->shape[d];
    for (int d = ax + 1; d < x->ndim; d++) g.inner *= x->shape[d];
    g.count = g.outer * g.inner;
    return g;
}

/* Per-channel mean, biased variance and 1/sqrt(var + eps) (two passes, double sums).
 * acc: 2*c doubles of scratch. */
static void bn_stats(const bn_geom *g, const float *x, float eps, double *acc, float *mean,
                     float *var, float *inv) {
    const int64_t C = g->c, inner = g->inner;
    double *s = acc, *q = acc + C;
    for (int64_t c = 0; c < C; c++) s[c] = q[c] = 0.0;
    for (int64_t o = 0; o < g->outer; o++) {
        const float *row = x + o * C * inner;
        if (inner == 1) {
            for (int64_t c = 0; c < C; c++) s[c] += row[c];
        } else {
            for (int64_t c = 0; c < C; c++) {
                double t = 0.0;
                for (int64_t i = 0; i < inner; i++) t += row[c * inner + i];
                s[c] += t;
            }
        }
    }
    for (int64_t c = 0; c < C; c++) mean[c] = (float)(s[c] / (double)g->count);
    for (int64_t o = 0; o < g->outer; o++) {
        const float *row = x + o * C * inner;
        if (inner == 1) {
            for (int64_t c = 0; c < C; c++) {
                double d = (double)row[c] - (double)mean[c];
                q[c] += d * d;
            }
        } else {
            for (int64_t c = 0; c < C; c++) {
                double t = 0.0, m = mean[c];
                for (int64_t i = 0; i < inner; i++) {
                    double d = (double)row[c * inner + i] - m;
                    t += d * d;
                }
                q[c] += t;
            }
        }
    }
    for (int64_t c = 0; c < C; c++) {
        double v = q[c] / (double)g->count;
        var[c] = (float)v;
        inv[c] = (float)(1.0 / sqrt(v + (double)eps));
    }
}

typedef struct bn_params {
    int ax, has_gamma, has_beta;
    float eps;
} bn_params;

static ml_status bn_train(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                          int ax, float eps, float *mean_out, float *var_out);

static ml_status replay_bn(ml_tensor **out, ml_tensor **in, const void *params) {
    const bn_params *p = params;
    int k = 1;
    ml_tensor *gamma = p->has_gamma ? in[k++] : NULL;
    ml_tensor *beta = p->has_beta ? in[k++] : NULL;
    return bn_train(out, in[0], gamma, beta, p->ax, p->eps, NULL, NULL);
}

/* The fused training-mode forward. mean_out/var_out (c floats each, may be NULL) receive
 * the batch statistics for the caller's moving-statistics update. A trace records this op
 * with its inputs (x, gamma?, beta?) and params; the moving-statistics update is done by
 * ml_batch_norm outside it and is NOT replayed (a replay sees the statistics' values of
 * its own inputs only through y). */
static ml_status bn_train(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                          int ax, float eps, float *mean_out, float *var_out) {
    bn_geom g = bn_geom_of(x, ax);
    const int64_t C = g.c, inner = g.inner;
    if (g.count == 0)
        return ml_set_error(ML_ERR_SHAPE, "batch_norm: cannot take batch statistics of an "
                            "empty input of shape %s", ML_SHAPE_STR(x));
    double *acc = malloc((size_t)C * 2 * sizeof(double));
    float *f = malloc((size_t)C * 5 * sizeof(float));
    if (!acc || !f) {
        free(acc);
        free(f);
        return ml_set_error(ML_ERR_OOM, "batch_norm: out of memory");
    }
    float *mean = f, *var = f + C, *inv = f + 2 * C, *scale = f + 3 * C, *shift = f + 4 * C;
    bn_stats(&g, x->data, eps, acc, mean, var, inv);
    free(acc);
    for (int64_t c = 0; c < C; c++) {
        scale[c] = gamma ? inv[c] * gamma->data[c] : inv[c];
        shift[c] = beta ? beta->data[c] : 0.0f;
    }
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim, x->shape);
    if (st) {
        free(f);
        return st;
    }
    const float *xd = x->data;
    float *od = o->data;
    for (int64_t r = 0; r < g.outer; r++) {
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
    if (mean_out) memcpy(mean_out, mean, (size_t)C * sizeof(float));
    if (var_out) memcpy(var_out, var, (size_t)C * sizeof(float));
    free(f);
    ml_tensor *ins[3];
    int n = 0;
    ins[n++] = x;
    if (gamma) ins[n++] = gamma;
    if (beta) ins[n++] = beta;
    if (ml__should_record(n, ins)) {
        ml_node *node = NULL;
        if ((st = ml__record(o, OP_BATCH_NORM, n, ins, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = ax;
        node->iparams[1] = gamma != NULL;
        node->iparams[2] = beta != NULL;
        node->fparams[0] = eps;
    }
    bn_params bp = {ax, gamma != NULL, beta != NULL, eps};
    ML_TRACE(replay_bn, n, ins, o, &bp);
    *out = o;
    return ML_OK;
}

/* First-order backward with grad mode off: two fused passes (statistics are recomputed). */
static ml_status bn_backward_fast(const bn_geom *g, ml_tensor *x, ml_tensor *gamma, float eps,
                                  ml_tensor *gy, ml_tensor **dx, ml_tensor **dgamma,
                                  ml_tensor **dbeta) {
    const int64_t C = g->c, inner = g->inner;
    double *acc = malloc((size_t)C * 4 * sizeof(double));
    float *f = malloc((size_t)C * 6 * sizeof(float));
    ml_status st = ML_OK;
    if (!acc || !f) {
        st = ml_set_error(ML_ERR_OOM, "batch_norm backward: out of memory");
        goto done;
    }
    float *mean = f, *var = f + C, *inv = f + 2 * C, *a = f + 3 * C, *b = f + 4 * C,
          *k = f + 5 * C;
    bn_stats(g, x->data, eps, acc, mean, var, inv);
    double *sg = acc + 2 * C, *sgx = acc + 3 * C;
    for (int64_t c = 0; c < C; c++) sg[c] = sgx[c] = 0.0;
    const float *xd = x->data, *gd = gy->data;
    for (int64_t r = 0; r < g->outer; r++) {
        const float *xr = xd + r * C * inner, *gr = gd + r * C * inner;
        if (inner == 1) {
            for (int64_t c = 0; c < C; c++) {
                sg[c] += gr[c];
                sgx[c] += (double)gr[c] * (double)((xr[c] - mean[c]) * inv[c]);
            }
        } else {
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
    int64_t shape1[1] = {C};
    if (dgamma) {
        if ((st = ml__new(dgamma, 1, shape1))) goto done;
        for (int64_t c = 0; c < C; c++) (*dgamma)->data[c] = (float)sgx[c];
    }
    if (dbeta) {
        if ((st = ml__new(dbeta, 1, shape1))) goto done;
        for (int64_t c = 0; c < C; c++) (*dbeta)->data[c] = (float)sg[c];
    }
    if (dx) {
        /* dx = k * (g - mg - (x - mean) * inv * mgx) = k*g - k*mg - (x - mean) * b */
        for (int64_t c = 0; c < C; c++) {
            k[c] = gamma ? gamma->data[c] * inv[c] : inv[c];
            a[c] = (float)(sg[c] / (double)g->count);                    /* mean(g) */
            b[c] = (float)(sgx[c] / (double)g->count) * inv[c];          /* mean(g xhat) inv */
        }
        if ((st = ml__new(dx, x->ndim, x->shape))) goto done;
        float *od = (*dx)->data;
        for (int64_t r = 0; r < g->outer; r++) {
            const float *xr = xd + r * C * inner, *gr = gd + r * C * inner;
            float *dr = od + r * C * inner;
            if (inner == 1) {
                for (int64_t c = 0; c < C; c++)
                    dr[c] = k[c] * (gr[c] - a[c] - (xr[c] - mean[c]) * b[c]);
            } else {
                for (int64_t c = 0; c < C; c++) {
                    const float kc = k[c], ac = a[c], bc = b[c], m = mean[c];
                    for (int64_t i = 0; i < inner; i++)
                        dr[c * inner + i] =
                            kc * (gr[c * inner + i] - ac - (xr[c * inner + i] - m) * bc);
                }
            }
        }
    }
done:
    free(acc);
    free(f);
    return st;
}

/* Replay of one output of the fast backward (0: dx, 1: dgamma, 2: dbeta) from (x, gy,
 * gamma?): the same loops, so a replay gives the eager run's bits. */
typedef struct bn_grad_params {
    int ax, which, has_gamma;
    float eps;
} bn_grad_params;

static ml_status replay_bn_grad(ml_tensor **out, ml_tensor **in, const void *params) {
    const bn_grad_params *p = params;
    ml_tensor *x = in[0], *gy = in[1], *gamma = p->has_gamma ? in[2] : NULL;
    bn_geom geo = bn_geom_of(x, p->ax);
    *out = NULL;
    return bn_backward_fast(&geo, x, gamma, p->eps, gy, p->which == 0 ? out : NULL,
                            p->which == 1 ? out : NULL, p->which == 2 ? out : NULL);
}

#define IN(k) (out->node->inputs[k])

ml_status ml__batch_norm_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    const ml_node *node = out->node;
    const int ax = (int)node->iparams[0];
    const int has_gamma = (int)node->iparams[1], has_beta = (int)node->iparams[2];
    const float eps = node->fparams[0];
    ml_tensor *x = IN(0);
    ml_tensor *gamma = has_gamma ? IN(1) : NULL;
    ml_tensor *beta = has_beta ? IN(1 + has_gamma) : NULL;
    const int ig = has_gamma ? 1 : -1, ib = has_beta ? 1 + has_gamma : -1;
    const int need_x = x->requires_grad, need_g = gamma && gamma->requires_grad,
              need_b = beta && beta->requires_grad;
    bn_geom geo = bn_geom_of(x, ax);
    if (!ml_grad_enabled()) {
        ml_status st = bn_backward_fast(&geo, x, gamma, eps, gy, need_x ? &gin[0] : NULL,
                                        need_g ? &gin[ig] : NULL, need_b ? &gin[ib] : NULL);
        if (st) {
            for (int i = 0; i < node->n_inputs; i++) {
                ml_release(gin[i]);
                gin[i] = NULL;
            }
            return st;
        }
        if (ml__trace_active) {
            ml_tensor *ins[3] = {x, gy, gamma};
            const int idx[3] = {0, ig, ib};
            for (int w = 0; w < 3; w++) {
                if (idx[w] < 0 || !gin[idx[w]]) continue;
                bn_grad_params gp = {ax, w, has_gamma, eps};
                ML_TRACE(replay_bn_grad, gamma ? 3 : 2, ins, gin[idx[w]], &gp);
            }
        }
        return st;
    }
    const int nd = x->ndim;
    int64_t bshape[ML_MAX_DIMS], cshape[1] = {geo.c};
    int axes[ML_MAX_DIMS], n_axes = 0;
    for (int d = 0; d < nd; d++) {
        bshape[d] = d == ax ? geo.c : 1;
        if (d != ax) axes[n_axes++] = d;
    }
    const float inv_n = 1.0f / (float)geo.count;
    ml_scope s = {0};
    /* xhat by the fused op itself (differentiable: its node is this op with no affine) */
    ml_tensor *xhat = ML_SX(&s, x, bn_train(&o_, a_, NULL, NULL, ax, eps, NULL, NULL));
    ml_tensor *sg = (need_x || need_b) ? SUM_AXES(&s, gy, n_axes, axes, 1) : NULL;
    ml_tensor *sgx = (need_x || need_g) ? SUM_AXES(&s, MUL(&s, gy, xhat), n_axes, axes, 1) : NULL;
    ml_tensor *dx = NULL, *dg = NULL, *db = NULL;
    if (need_x) {
        ml_tensor *mean = ML_SX(&s, x, ml_mean(&o_, a_, n_axes, axes, 1));
        ml_tensor *var = ML_SX(&s, SQUARE(&s, SUB(&s, x, mean)), ml_mean(&o_, a_, n_axes, axes, 1));
        ml_tensor *inv = POWS(&s, ADDS(&s, var, eps), -0.5f);
        ml_tensor *k = gamma ? MUL(&s, inv, RESHAPE(&s, gamma, nd, bshape)) : inv;
        ml_tensor *t = SUB(&s, gy, MULS(&s, sg, inv_n));
        t = SUB(&s, t, MUL(&s, xhat, MULS(&s, sgx, inv_n)));
        dx = MUL(&s, t, k);
    }
    if (need_g) dg = RESHAPE(&s, sgx, 1, cshape);
    if (need_b) db = RESHAPE(&s, sg, 1, cshape);
    if (ML_S_OK(&s)) {
        gin[0] = ml__keep(dx);
        if (ig > 0) gin[ig] = ml__keep(dg);
        if (ib > 0) gin[ib] = ml__keep(db);
    }
    ml__scope_end(&s);
    return s.status;
}

ml_status ml_batch_norm(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                        ml_tensor *moving_mean, ml_tensor *moving_var, int training,
                        float momentum, float epsilon, int axis) {
    if (!out || !x) return ml_set_error(ML_ERR_VALUE, "batch_norm: input tensor is NULL");
    if (x->ndim < 2)
        return ml_set_error(ML_ERR_SHAPE, "batch_norm: expected an input with at least 2 "
                            "dimensions (batch, ..., channels), got shape %s", ML_SHAPE_STR(x));
    int ax = ml__axis(axis, x->ndim);
    if (ax < 0)
        return ml_set_error(ML_ERR_VALUE, "batch_norm: axis %d is out of range for an input of "
                            "shape %s", axis, ML_SHAPE_STR(x));
    if (!(epsilon >= 0.0f) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE, "batch_norm: epsilon must be a non-negative number, "
                            "got %g", (double)epsilon);
    if (!isfinite(momentum))
        return ml_set_error(ML_ERR_VALUE, "batch_norm: momentum must be finite, got %g",
                            (double)momentum);
    int64_t c = x->shape[ax];
    ml_status st;
    if ((st = check_vec("gamma", gamma, c, x, axis)) || (st = check_vec("beta", beta, c, x, axis)) ||
        (st = check_vec("moving_mean", moving_mean, c, x, axis)) ||
        (st = check_vec("moving_variance", moving_var, c, x, axis)))
        return st;
    if (!training && (!moving_mean || !moving_var))
        return ml_set_error(ML_ERR_VALUE, "batch_norm: inference mode needs the moving mean and "
                            "variance");
    if (training) {
        int64_t count = c ? x->numel / c : 0;
        if (count == 0)
            return ml_set_error(ML_ERR_SHAPE, "batch_norm: cannot take batch statistics of an "
                                "empty input of shape %s", ML_SHAPE_STR(x));
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
        s.status = bn_train(&result, x, gamma, beta, ax, epsilon, stats, stats + c);
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
