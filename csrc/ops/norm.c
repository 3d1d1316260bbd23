/* norm.c — batch normalisation (Ioffe & Szegedy 2015) as Keras' BatchNormalization layer.
 *
 * Composed of differentiable ops (mean, subtract, square, pow -0.5, multiply, add), so its
 * gradients of every order come from theirs: MAML's inner loop through batch statistics
 * needs no special case. The moving statistics are updated in place with no gradient,
 * only after the output has been computed (a failure leaves them as they were).
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
    int axes[ML_MAX_DIMS], n_axes = 0;
    for (int d = 0; d < x->ndim; d++) {
        bshape[d] = d == ax ? c : 1;
        if (d != ax) axes[n_axes++] = d;
    }
    const int nd = x->ndim;

    ml_scope s = {0};
    ml_tensor *mean, *var, *result = NULL;
    if (training) {
        mean = ML_SX(&s, x, ml_mean(&o_, a_, n_axes, axes, 1));
        ml_tensor *xc = SUB(&s, x, mean);
        var = ML_SX(&s, SQUARE(&s, xc), ml_mean(&o_, a_, n_axes, axes, 1));
        ml_tensor *inv = POWS(&s, ADDS(&s, var, epsilon), -0.5f);
        ml_tensor *scale = gamma ? MUL(&s, inv, RESHAPE(&s, gamma, nd, bshape)) : inv;
        ml_tensor *y = MUL(&s, xc, scale);
        if (beta) y = ADD(&s, y, RESHAPE(&s, beta, nd, bshape));
        result = ml__keep(y);
    } else {
        mean = RESHAPE(&s, moving_mean, nd, bshape);
        var = RESHAPE(&s, moving_var, nd, bshape);
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
                moving_mean->data[i] = moving_mean->data[i] * keep + mean->data[i] * take;
            moving_mean->storage->version++;
        }
        if (moving_var) {
            for (int64_t i = 0; i < c; i++)
                moving_var->data[i] = moving_var->data[i] * keep + var->data[i] * take;
            moving_var->storage->version++;
        }
    }
    ml__scope_end(&s);
    if (s.status != ML_OK) {
        ml_release(result);
        return s.status;
    }
    *out = result;
    return ML_OK;
}
