/* random.c — tensors drawn from the core's seeded generator (core/rng.c): uniform, normal
 * and truncated normal. A trace records each draw; its replay draws new numbers. */
#include <math.h>

#include "ops.h"

/* a replay draws new numbers: random ops are recorded like any other op */
typedef struct {
    int kind, ndim;
    int64_t shape[ML_MAX_DIMS];
    float a, b;
} rng_params;
static ml_status replay_rng(ml_tensor **out, ml_tensor **in, const void *p) {
    const rng_params *r = p;
    if (r->kind == 0) return ml_random_uniform(out, r->ndim, r->shape, r->a, r->b);
    if (r->kind == 1) return ml_random_normal(out, r->ndim, r->shape, r->a, r->b);
    return ml_truncated_normal(out, r->ndim, r->shape, r->a, r->b);
}
static void trace_rng(int kind, ml_tensor *o, float a, float b) {
    static const ml_op_id ops[3] = {OP_RANDOM_UNIFORM, OP_RANDOM_NORMAL, OP_TRUNCATED_NORMAL};
    rng_params r = {kind, o->ndim, {0}, a, b};
    for (int i = 0; i < o->ndim; i++) r.shape[i] = o->shape[i];
    ML_TRACE(ops[kind], replay_rng, 0, NULL, o, &r);
}

ml_status ml_random_uniform(ml_tensor **out, int ndim, const int64_t *shape, float minval,
                            float maxval) {
    if (!(minval <= maxval) || !isfinite(minval) || !isfinite(maxval))
        return ml_set_error(ML_ERR_VALUE,
                            "random_uniform: need finite minval <= maxval, got %g and %g",
                            (double)minval, (double)maxval);
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    ml__rng_fill_uniform((*out)->data, (*out)->numel, minval, maxval);
    trace_rng(0, *out, minval, maxval);
    return ML_OK;
}

ml_status ml_random_normal(ml_tensor **out, int ndim, const int64_t *shape, float mean,
                           float stddev) {
    if (!(stddev >= 0) || !isfinite(stddev) || !isfinite(mean))
        return ml_set_error(ML_ERR_VALUE,
                            "random_normal: need a finite mean and stddev >= 0, got %g and %g",
                            (double)mean, (double)stddev);
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    ml__rng_fill_normal((*out)->data, (*out)->numel, mean, stddev);
    trace_rng(1, *out, mean, stddev);
    return ML_OK;
}

ml_status ml_truncated_normal(ml_tensor **out, int ndim, const int64_t *shape, float mean,
                              float stddev) {
    if (!(stddev >= 0) || !isfinite(stddev) || !isfinite(mean))
        return ml_set_error(ML_ERR_VALUE,
                            "truncated_normal: need a finite mean and stddev >= 0, got %g and %g",
                            (double)mean, (double)stddev);
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    ml__rng_fill_truncated_normal((*out)->data, (*out)->numel, mean, stddev);
    trace_rng(2, *out, mean, stddev);
    return ML_OK;
}

