/* loss.c — the Keras losses, per sample (reduced over the last axis).
 * From logits, cross-entropy is one fused op (a stable log-sum-exp, and a backward
 * softmax(x) - y written with differentiable ops); from probabilities it is composed of
 * the ops Keras uses, clipping included, so gradients match Keras exactly. */
#include <math.h>

#include "ops.h"

#define IN(k) (out->node->inputs[k])
#define ML_EPSILON 1e-7f /* keras.config.epsilon() */

/* mean over the last axis, the per-sample reduction of every Keras loss */
static ml_status ml_mean_lastaxis__(ml_tensor **out, ml_tensor *x, int unused) {
    (void)unused;
    int axis = -1;
    return ml_mean(out, x, 1, &axis, 0);
}

/* Keras' squeeze_or_expand_to_same_rank: when the ranks differ by one and the longer ends
 * in 1, a rank-1 shorter one gains a trailing 1, otherwise the longer one loses it. So
 * targets (N,) against predictions (N, 1) pair element by element instead of broadcasting
 * to (N, N). A scalar is left to broadcast. The reshapes are views and record as ops, so
 * gradients and traces see them. */
static void match_rank(ml_scope *s, ml_tensor **a, ml_tensor **b) {
    ml_tensor **lo = (*a)->ndim < (*b)->ndim ? a : b, **hi = lo == a ? b : a;
    int nd = (*lo)->ndim;
    if (nd < 1 || (*hi)->ndim != nd + 1 || (*hi)->shape[nd] != 1) return;
    if (nd == 1) {
        int64_t col[2] = {(*lo)->shape[0], 1};
        *lo = RESHAPE(s, *lo, 2, col);
    } else {
        *hi = RESHAPE(s, *hi, nd, (*hi)->shape);
    }
}

ml_status ml_mean_squared_error(ml_tensor **out, ml_tensor *y_true, ml_tensor *y_pred) {
    if (!y_true || !y_pred)
        return ml_set_error(ML_ERR_VALUE, "mean_squared_error: input tensor is NULL");
    if (y_pred->ndim < 1)
        return ml_set_error(ML_ERR_SHAPE, "mean_squared_error: y_pred must have at least 1 "
                                          "dimension, got a scalar");
    ml_scope s = {0};
    match_rank(&s, &y_true, &y_pred);
    ml_tensor *r = ml__keep(ML_S1F(ml_mean_lastaxis__, &s, SQUARE(&s, SUB(&s, y_pred, y_true)), 0));
    ml__scope_end(&s);
    if (s.status) return s.status;
    *out = r;
    return ML_OK;
}

/* row-wise log-sum-exp of x seen as (rows, c) */
static void row_lse(const float *x, int64_t rows, int64_t c, float *lse) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * c;
        float m = -INFINITY, sum = 0;
        for (int64_t j = 0; j < c; j++) m = row[j] > m ? row[j] : m;
        if (m == -INFINITY) m = 0;
        for (int64_t j = 0; j < c; j++) sum += expf(row[j] - m);
        lse[r] = m + logf(sum);
    }
}

static ml_status softmax_ce(ml_tensor **out, ml_tensor *y_true, ml_tensor *logits);
typedef struct {
    int unused;
} no_params;
static ml_status replay_softmax_ce(ml_tensor **out, ml_tensor **in, const void *p) {
    return softmax_ce(out, in[0], in[1]);
}
static ml_status softmax_ce(ml_tensor **out, ml_tensor *y_true, ml_tensor *logits) {
    if (!ml__same_shape(y_true, logits))
        return ml_set_error(ML_ERR_SHAPE,
                            "categorical_crossentropy: y_true has shape %s but "
                            "y_pred has shape %s",
                            ML_SHAPE_STR(y_true), ML_SHAPE_STR(logits));
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, logits->ndim - 1, logits->shape);
    if (st) return st;
    int64_t c = logits->shape[logits->ndim - 1];
    for (int64_t r = 0; r < o->numel; r++) {
        const float *x = logits->data + r * c, *y = y_true->data + r * c;
        float lse;
        row_lse(x, 1, c, &lse);
        float loss = 0;
        for (int64_t j = 0; j < c; j++) loss += y[j] * (lse - x[j]);
        o->data[r] = loss;
    }
    ml_tensor *ins[2] = {y_true, logits};
    if (ml__should_record(2, ins) && (st = ml__record(o, OP_SOFTMAX_CE, 2, ins, NULL))) {
        ml_release(o);
        return st;
    }
    no_params np = {0};
    ML_TRACE(OP_SOFTMAX_CE, replay_softmax_ce, 2, ins, o, &np);
    *out = o;
    return ML_OK;
}

/* d/dx = softmax(x) * sum(y) - y;  d/dy = -log_softmax(x) */
ml_status ml__softmax_ce_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *y = IN(0), *x = IN(1);
    int64_t col[ML_MAX_DIMS];
    memcpy(col, x->shape, sizeof col);
    col[x->ndim - 1] = 1;
    ml_tensor *gc = RESHAPE(&s, g, x->ndim, col);
    int axis = x->ndim - 1;
    if (ml__wants(1, x)) {
        ml_tensor *ysum = SUM_AXES(&s, y, 1, &axis, 1);
        gin[1] = ml__keep(MUL(&s, gc, SUB(&s, MUL(&s, SOFTMAX(&s, x, axis), ysum), y)));
    }
    if (ml__wants(0, y)) gin[0] = ml__keep(MUL(&s, gc, NEG(&s, LOG_SOFTMAX(&s, x, axis))));
    ml__scope_end(&s);
    return s.status;
}

ml_status ml_categorical_crossentropy(ml_tensor **out, ml_tensor *y_true, ml_tensor *y_pred,
                                      int from_logits) {
    if (!y_true || !y_pred)
        return ml_set_error(ML_ERR_VALUE, "categorical_crossentropy: input tensor is NULL");
    if (y_pred->ndim < 1 || !ml__same_shape(y_true, y_pred))
        return ml_set_error(ML_ERR_SHAPE,
                            "categorical_crossentropy: y_true has shape %s but "
                            "y_pred has shape %s; they must match, with classes on the last axis",
                            ML_SHAPE_STR(y_true), ML_SHAPE_STR(y_pred));
    if (from_logits) return softmax_ce(out, y_true, y_pred);
    /* Keras: p = y_pred / sum(y_pred); p = clip(p, eps, 1 - eps); -sum(y_true * log(p)) */
    ml_scope s = {0};
    int axis = y_pred->ndim - 1;
    ml_tensor *p = DIV(&s, y_pred, SUM_AXES(&s, y_pred, 1, &axis, 1));
    ml_tensor *pc = NULL, *clipped = NULL;
    if (p) clipped = ml__push(&s, ml_clip(&pc, p, ML_EPSILON, 1.0f - ML_EPSILON), &pc);
    ml_tensor *r = ml__keep(NEG(&s, SUM_AXES(&s, MUL(&s, y_true, LOG(&s, clipped)), 1, &axis, 0)));
    ml__scope_end(&s);
    if (s.status) return s.status;
    *out = r;
    return ML_OK;
}

/* Labels arrive in a float tensor (integer values) that is an input of the op, read when
 * it runs: a traced step replays with each call's labels, in the forward and in the
 * backward (whose one-hot is made from the same tensor by a recorded op). */
static ml_status read_labels(const ml_tensor *labels, int64_t c, int64_t **idx_out) {
    int64_t n = labels->numel;
    int64_t *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    if (!idx) return ml_set_error(ML_ERR_OOM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        float v = labels->data[i];
        /* range first: converting NaN or 1e30 to an integer is undefined behaviour */
        if (!(v >= 0 && v < (float)c) || v != (float)(int64_t)v) {
            free(idx);
            return ml_set_error(ML_ERR_VALUE,
                                "sparse_categorical_crossentropy: label %g at "
                                "position %lld is not an integer in [0, %lld)",
                                (double)v, (long long)i, (long long)c);
        }
        idx[i] = (int64_t)v;
    }
    *idx_out = idx;
    return ML_OK;
}

typedef struct {
    int64_t depth;
} one_hot_params;
static ml_status one_hot_t(ml_tensor **out, ml_tensor *labels, int64_t depth);
static ml_status replay_one_hot_t(ml_tensor **out, ml_tensor **in, const void *p) {
    return one_hot_t(out, in[0], ((const one_hot_params *)p)->depth);
}

/* one-hot rows (n, depth) of a label tensor; a constant (no gradient) */
static ml_status one_hot_t(ml_tensor **out, ml_tensor *labels, int64_t depth) {
    int64_t *idx = NULL;
    ml_status st = read_labels(labels, depth, &idx);
    if (st) return st;
    st = ml_one_hot(out, labels->numel, idx, depth);
    free(idx);
    one_hot_params op = {depth};
    if (st == ML_OK) ML_TRACE(OP_ONE_HOT, replay_one_hot_t, 1, &labels, *out, &op);
    return st;
}

static ml_status sparse_softmax_ce(ml_tensor **out, ml_tensor *labels, ml_tensor *logits);
static ml_status replay_sparse_softmax_ce(ml_tensor **out, ml_tensor **in, const void *p) {
    return sparse_softmax_ce(out, in[1], in[0]);
}

static ml_status sparse_softmax_ce(ml_tensor **out, ml_tensor *labels, ml_tensor *logits) {
    int64_t c = logits->shape[logits->ndim - 1];
    int64_t *idx = NULL;
    ml_status st = read_labels(labels, c, &idx);
    if (st) return st;
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, logits->ndim - 1, logits->shape))) {
        free(idx);
        return st;
    }
    for (int64_t r = 0; r < labels->numel; r++) {
        float lse;
        row_lse(logits->data + r * c, 1, c, &lse);
        o->data[r] = lse - logits->data[r * c + idx[r]];
    }
    free(idx);
    ml_tensor *ins[2] = {logits, labels};
    if (ml__should_record(2, ins) && (st = ml__record(o, OP_SPARSE_SOFTMAX_CE, 2, ins, NULL))) {
        ml_release(o);
        return st;
    }
    no_params np = {0};
    ML_TRACE(OP_SPARSE_SOFTMAX_CE, replay_sparse_softmax_ce, 2, ins, o, &np);
    *out = o;
    return ML_OK;
}

/* d/dx = softmax(x) - one_hot(labels) */
ml_status ml__sparse_softmax_ce_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *x = IN(0), *oh = NULL;
    if (!ml__wants(0, x)) return ML_OK;
    int64_t c = x->shape[x->ndim - 1];
    int64_t col[ML_MAX_DIMS];
    memcpy(col, x->shape, sizeof col);
    col[x->ndim - 1] = 1;
    ml_tensor *onehot = ml__push(&s, one_hot_t(&oh, IN(1), c), &oh);
    ml_tensor *diff = SUB(&s, SOFTMAX(&s, x, x->ndim - 1), RESHAPE_LIKE(&s, onehot, x));
    gin[0] = ml__keep(MUL(&s, RESHAPE(&s, g, x->ndim, col), diff));
    ml__scope_end(&s);
    return s.status;
}

ml_status ml_sparse_categorical_crossentropy_t(ml_tensor **out, ml_tensor *labels,
                                               ml_tensor *y_pred, int from_logits) {
    if (!labels || !y_pred)
        return ml_set_error(ML_ERR_VALUE, "sparse_categorical_crossentropy: input tensor is NULL");
    if (y_pred->ndim < 1)
        return ml_set_error(ML_ERR_SHAPE, "sparse_categorical_crossentropy: y_pred needs a class "
                                          "axis, got a scalar");
    int64_t c = y_pred->shape[y_pred->ndim - 1], rows = c ? y_pred->numel / c : 0;
    if (labels->numel != rows)
        return ml_set_error(ML_ERR_SHAPE,
                            "sparse_categorical_crossentropy: %lld labels for "
                            "predictions of shape %s (expected %lld)",
                            (long long)labels->numel, ML_SHAPE_STR(y_pred), (long long)rows);
    if (labels->requires_grad)
        return ml_set_error(ML_ERR_VALUE, "sparse_categorical_crossentropy: labels cannot "
                                          "require grad");
    int64_t *check = NULL;
    ml_status st = read_labels(labels, c, &check); /* refuse bad labels before any op runs */
    free(check);
    if (st) return st;
    if (from_logits) return sparse_softmax_ce(out, labels, y_pred);
    /* Keras 3 (JAX, PyTorch and NumPy backends), as categorical_crossentropy: rescale to
     * sum 1, clip, log, then pick each row's label (a one-hot made from the label tensor
     * when the op runs, so a trace replays with each call's labels). Clipping before the
     * rescale (the TensorFlow backend) differs for rows that do not sum to 1. */
    ml_scope s = {0};
    int axis = y_pred->ndim - 1;
    ml_tensor *p = DIV(&s, y_pred, SUM_AXES(&s, y_pred, 1, &axis, 1));
    ml_tensor *pc = NULL, *clipped = NULL, *oh = NULL, *onehot = NULL;
    if (p) clipped = ml__push(&s, ml_clip(&pc, p, ML_EPSILON, 1.0f - ML_EPSILON), &pc);
    if (clipped) onehot = ml__push(&s, one_hot_t(&oh, labels, c), &oh);
    ml_tensor *picked = MUL(&s, RESHAPE_LIKE(&s, onehot, y_pred), LOG(&s, clipped));
    ml_tensor *res = ml__keep(NEG(&s, SUM_AXES(&s, picked, 1, &axis, 0)));
    ml__scope_end(&s);
    if (s.status) return s.status;
    *out = res;
    return ML_OK;
}

ml_status ml_sparse_categorical_crossentropy(ml_tensor **out, int64_t n, const int64_t *labels,
                                             ml_tensor *y_pred, int from_logits) {
    if (!y_pred)
        return ml_set_error(ML_ERR_VALUE, "sparse_categorical_crossentropy: y_pred is NULL");
    if (y_pred->ndim < 1)
        return ml_set_error(ML_ERR_SHAPE, "sparse_categorical_crossentropy: y_pred needs a class "
                                          "axis, got a scalar");
    int64_t c = y_pred->shape[y_pred->ndim - 1], rows = c ? y_pred->numel / c : 0;
    if (n != rows || n < 0 || (n > 0 && !labels))
        return ml_set_error(ML_ERR_SHAPE,
                            "sparse_categorical_crossentropy: %lld labels for "
                            "predictions of shape %s (expected %lld)",
                            (long long)n, ML_SHAPE_STR(y_pred), (long long)rows);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= c || labels[i] >= ((int64_t)1 << 24))
            return ml_set_error(ML_ERR_VALUE,
                                "sparse_categorical_crossentropy: label %lld at "
                                "position %lld is outside [0, %lld)",
                                (long long)labels[i], (long long)i, (long long)c);
    /* the labels become a constant tensor (exact in float32 below 2^24) */
    int64_t shape[1] = {n};
    ml_tensor *lt = NULL;
    ml_status st = ml__new(&lt, 1, shape);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) lt->data[i] = (float)labels[i];
    st = ml_sparse_categorical_crossentropy_t(out, lt, y_pred, from_logits);
    ml_release(lt);
    return st;
}

ml_status ml_binary_crossentropy(ml_tensor **out, ml_tensor *y_true, ml_tensor *y_pred,
                                 int from_logits) {
    if (!y_true || !y_pred)
        return ml_set_error(ML_ERR_VALUE, "binary_crossentropy: input tensor is NULL");
    if (y_pred->ndim < 1)
        return ml_set_error(ML_ERR_SHAPE, "binary_crossentropy: y_pred must have at least 1 "
                                          "dimension, got a scalar");
    ml_scope s = {0};
    ml_tensor *t = y_true, *x = y_pred;
    match_rank(&s, &t, &x);
    /* Keras refuses any other mismatch: (N, 1) targets broadcast against (N, C)
     * predictions would be a number, and a wrong one */
    if (s.status == ML_OK && !ml__same_shape(t, x))
        s.status = ml_set_error(ML_ERR_SHAPE,
                                "binary_crossentropy: y_true has shape %s but "
                                "y_pred has shape %s; they must match (up to a trailing "
                                "axis of 1)",
                                ML_SHAPE_STR(y_true), ML_SHAPE_STR(y_pred));
    ml_tensor *per_elem;
    if (from_logits) {
        /* max(x, 0) - x y + log(1 + exp(-|x|)): never overflows (TensorFlow's
         * sigmoid_cross_entropy_with_logits) */
        per_elem = ADD(&s, SUB(&s, RELU(&s, x), MUL(&s, x, t)),
                       LOG(&s, ADDS(&s, EXP(&s, NEG(&s, ABS(&s, x))), 1.0f)));
    } else {
        /* Keras 3: p = clip(p, eps, 1 - eps); -(y log(p) + (1 - y) log(1 - p)). The clip's
         * gradient is zero outside the range, and both logs stay finite: 1 - p >= 1.19e-7
         * in float32. (tf.keras 2 added eps inside the logs as well.) */
        ml_tensor *pc = NULL, *p = NULL;
        if (s.status == ML_OK)
            p = ml__push(&s, ml_clip(&pc, x, ML_EPSILON, 1.0f - ML_EPSILON), &pc);
        ml_tensor *pos = MUL(&s, t, LOG(&s, p));
        ml_tensor *one_minus_y = ADDS(&s, NEG(&s, t), 1.0f);
        ml_tensor *neg = MUL(&s, one_minus_y, LOG(&s, ADDS(&s, NEG(&s, p), 1.0f)));
        per_elem = NEG(&s, ADD(&s, pos, neg));
    }
    ml_tensor *r = ml__keep(ML_S1F(ml_mean_lastaxis__, &s, per_elem, 0));
    ml__scope_end(&s);
    if (s.status) return s.status;
    *out = r;
    return ML_OK;
}
