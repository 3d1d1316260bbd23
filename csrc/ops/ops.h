/* ops.h — what the ops' files share, and what the layers above them (autograd/, trace/,
 * memory/) use of the ops beyond the public header: the op ids and their table (from
 * ops.def), the scoped composition the backward formulas are written in, and helpers. */
#ifndef ML_OPS_H
#define ML_OPS_H

#include "../core/internal.h"

/* Every op a tape node or a trace entry names, in the order of ops.def (its rows say what
 * each is); a trace entry stores the id. */
typedef enum ml_op_id {
#define ML_OP(ID, name, inputs, grad, form, py, label) OP_##ID,
#include "ops.def"
#undef ML_OP
    OP_COUNT
} ml_op_id;

/* One row per op (op_table.c): what an op hands to the core when it records a node. */
extern const ml_op_def ml_op_table[OP_COUNT];

/* Attaches a node for op to out, retaining the inputs (core's ml__record_node with the
 * op's row). Returns the node for params. */
static inline ml_status ml__record(ml_tensor *out, ml_op_id op, int n, ml_tensor *const *inputs,
                                   ml_node **node_out) {
    return ml__record_node(out, &ml_op_table[op], n, inputs, node_out);
}

/* The one message for an axis out of range (ops/shape.c): names the op, the axis as the
 * caller gave it (not normalised) and the tensor's rank and shape; ML_ERR_VALUE. */
ml_status ml__axis_error(const char *op, int axis, const ml_tensor *x);

/* Gives t (an ML_RECOMPUTE op's output whose storage went back) its values again, from
 * its node's inputs (recomputed first where they went back too), by the forward's kernel
 * with nothing recorded: the same bits (op_table.c). */
ml_status ml__recompute(ml_tensor *t);

/* ---- broadcasting helpers (ops/elementwise.c) ---- */
ml_status ml__broadcast_shape(const ml_tensor *a, const ml_tensor *b, int *ndim, int64_t *shape,
                              const char *opname);

/* ---- scoped composition for backward formulas ----
 * Ops used inside a backward pass return new references; a scope collects them and releases
 * them all at the end, so a formula reads like math: MUL(s, g, EXP(s, x)). A failed op
 * makes every later op in the scope return NULL, and the scope keeps the first status. */
#define ML_SCOPE_MAX 48
typedef struct ml_scope {
    ml_tensor *items[ML_SCOPE_MAX];
    int n;
    ml_status status;
} ml_scope;

/* `slot` is read after `st` is computed: argument order in C is unspecified. */
static inline ml_tensor *ml__push(ml_scope *s, ml_status st, ml_tensor **slot) {
    ml_tensor *t = *slot;
    if (st != ML_OK) {
        if (s->status == ML_OK) s->status = st;
        return NULL;
    }
    if (s->n >= ML_SCOPE_MAX) {
        ml_release(t);
        s->status = ml_set_error(ML_ERR_GRAPH, "internal: backward scope overflow");
        return NULL;
    }
    s->items[s->n++] = t;
    return t;
}
/* Hands t out of the scope as a new reference (NULL stays NULL). */
static inline ml_tensor *ml__keep(ml_tensor *t) {
    if (t) ml_retain(t);
    return t;
}
static inline void ml__scope_end(ml_scope *s) {
    for (int i = 0; i < s->n; i++) ml_release(s->items[i]);
    s->n = 0;
}

#define ML_S_OK(s) ((s)->status == ML_OK)
/* Each argument is evaluated once (statement expressions); NULL in, NULL out. */
#define ML_S2(fn, s, a, b) ({                                                       \
    ml_tensor *a_ = (a), *b_ = (b), *o_ = NULL;                                     \
    (ML_S_OK(s) && a_ && b_) ? ml__push((s), fn(&o_, a_, b_), &o_) : NULL; })
#define ML_S1(fn, s, a) ({                                                          \
    ml_tensor *a_ = (a), *o_ = NULL;                                                \
    (ML_S_OK(s) && a_) ? ml__push((s), fn(&o_, a_), &o_) : NULL; })
#define ML_S1F(fn, s, a, f) ({                                                      \
    ml_tensor *a_ = (a), *o_ = NULL;                                                \
    (ML_S_OK(s) && a_) ? ml__push((s), fn(&o_, a_, (f)), &o_) : NULL; })
#define ADD(s, a, b) ML_S2(ml_add, s, a, b)
#define SUB(s, a, b) ML_S2(ml_sub, s, a, b)
#define MUL(s, a, b) ML_S2(ml_mul, s, a, b)
#define DIV(s, a, b) ML_S2(ml_div, s, a, b)
#define NEG(s, a) ML_S1(ml_neg, s, a)
#define SQUARE(s, a) ML_S1(ml_square, s, a)
#define EXP(s, a) ML_S1(ml_exp, s, a)
#define SIGMOID(s, a) ML_S1(ml_sigmoid, s, a)
#define LOG(s, a) ML_S1(ml_log, s, a)
#define SIGN(s, a) ML_S1(ml_sign, s, a)
#define ERF(s, a) ML_S1(ml_erf, s, a)
#define RELU(s, a) ML_S1(ml_relu, s, a)
#define ABS(s, a) ML_S1(ml_abs, s, a)
#define SOFTMAX(s, a, ax) ML_S1F(ml_softmax, s, a, ax)
#define LOG_SOFTMAX(s, a, ax) ML_S1F(ml_log_softmax, s, a, ax)
#define POWS(s, a, p) ML_S1F(ml_pow_scalar, s, a, p)
#define ADDS(s, a, v) ML_S1F(ml_add_scalar, s, a, v)
#define MULS(s, a, v) ML_S1F(ml_mul_scalar, s, a, v)
#define STEP(s, a, th) ML_S1F(ml_step, s, a, th)
#define MATMUL(s, a, b, ta, tb) ({                                                  \
    ml_tensor *a_ = (a), *b_ = (b), *o_ = NULL;                                     \
    (ML_S_OK(s) && a_ && b_) ? ml__push((s), ml_matmul(&o_, a_, b_, (ta), (tb)), &o_) : NULL; })
#define ML_SX(s, a, CALL) ({                                                        \
    ml_tensor *a_ = (a), *o_ = NULL;                                                \
    (ML_S_OK(s) && a_) ? ml__push((s), CALL, &o_) : NULL; })
#define RESHAPE(s, a, nd, sh) ML_SX(s, a, ml_reshape(&o_, a_, (nd), (sh)))
#define RESHAPE_LIKE(s, a, like) RESHAPE(s, a, (like)->ndim, (like)->shape)
#define BCAST_TO(s, a, nd, sh) ML_SX(s, a, ml_broadcast_to(&o_, a_, (nd), (sh)))
#define SUM_TO(s, a, like) ML_SX(s, a, ml_sum_to(&o_, a_, (like)->ndim, (like)->shape))
#define SUM_AXES(s, a, n, axes, keep) ML_SX(s, a, ml_sum(&o_, a_, (n), (axes), (keep)))
#define EQUAL(s, a, b) ML_S2(ml__equal, s, a, b)
#define RELU_GRAD(s, g, x) ML_S2(ml__relu_grad, s, g, x)

/* The backward of the piecewise-constant ops: no input gets a gradient (ml_grad gives a
 * connected input that gets none zeros). */
ml_status ml__flat_backward(ml_tensor *out, ml_tensor *gout, ml_tensor **gin);
/* acc += g in place with ml_add(acc, g)'s bits (acc and g of one shape; acc held by the
 * caller alone: ml_grad's gradient sums). Records nothing. */
ml_status ml__add_into(ml_tensor *acc, ml_tensor *g);
/* 1 where a == b (broadcast), zero gradient. Used by max's backward. */
ml_status ml__equal(ml_tensor **out, ml_tensor *a, ml_tensor *b);
/* g where x != 0, else +0: relu's backward, x a relu's output (>= 0, -0.0 or NaN: so 0
 * exactly where the input was <= 0, as PyTorch's threshold_backward) or a 0/1 mask */
ml_status ml__relu_grad(ml_tensor **out, ml_tensor *g, ml_tensor *x);

/* ---- layer ops (ops/conv.c, ops/pool.c) ----
 * Window geometry shared by conv2d and the pools, with explicit paddings so the backward
 * ops (which may see only the gradient) know every size. Stored in a node's iparams. */
typedef struct ml_win2d {
    int64_t n, h, w, c;    /* input (N, H, W, C) */
    int64_t kh, kw;        /* window */
    int64_t sh, sw;        /* strides */
    int64_t pt, pl;        /* zero padding before the first row / column */
    int64_t oh, ow;        /* output rows / columns */
} ml_win2d;
#define ML_WIN2D_NPARAMS 12
void ml__win2d_store(const ml_win2d *g, int64_t *iparams);
void ml__win2d_load(ml_win2d *g, const int64_t *iparams);
/* Validates x (4-D), window, strides and padding and fills g (Keras/TF 'same'/'valid'). */
ml_status ml__win2d_plan(const char *name, const ml_tensor *x, int64_t kh, int64_t kw, int sh,
                         int sw, ml_padding padding, ml_win2d *g);
/* Whether x has the (n, h, w, c) input shape of g (a replay's input, a gradient's source). */
ml_status ml__win2d_check_x(const char *name, const ml_tensor *x, const ml_win2d *g);
/* conv2d with explicit geometry; x (N,H,W,C), k (KH,KW,C,F), b (F) or NULL */
ml_status ml__conv2d_geom(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                          const ml_win2d *g);
/* d<g, conv2d(x, k)>/dx: g (N,OH,OW,F), k (KH,KW,C,F) -> (N,H,W,C) */
ml_status ml__conv2d_input_grad(ml_tensor **out, ml_tensor *g, ml_tensor *k, const ml_win2d *geo);
/* d<g, conv2d(x, k)>/dk: x (N,H,W,C), g (N,OH,OW,F) -> (KH,KW,C,F) */
ml_status ml__conv2d_kernel_grad(ml_tensor **out, ml_tensor *x, ml_tensor *g, const ml_win2d *geo);

/* max_pool2d(v)'s or max_pool2d(relu(v))'s backward folded into the producer of v (ml_grad's
 * fold, for batch norm: ml__batch_norm_backward_pooled): whether the pool node's windows
 * tile its input with a byte argmax, and the gradient the pool (and the relu) pass back to
 * v's rows (pixels) [r0, r1) (out: (r1 - r0) x C floats) from the pool's gradient g (and
 * its output y where a relu is between, NULL where not): the bits scatter(g), or
 * relu_grad(scatter(g), relu(v)), gives those rows. */
int ml__max_pool2d_foldable(const ml_node *pool);
void ml__max_pool2d_relu_grad_rows(const ml_node *pool, const float *y, const float *g, int64_t r0,
                                   int64_t r1, float *out);

/* Batch norm's first-order backward where its output y reaches the loss only through
 * max_pool2d(y) or max_pool2d(relu(y)) (ml_grad's fold): bn a training-mode node the fold
 * can take (ungrouped, 4-D, channels last: ml__batch_norm_foldable), pool the pool's node
 * (foldable), gp its gradient, py its output where a relu is between (NULL where not).
 * gin[i] (NULL on entry) gets input i's gradient where want[i]: the bits the pool's (the
 * relu's) and ml__batch_norm_backward give, without the gradient tensors of y's size
 * between them. Grad mode off, no trace recording. */
int ml__batch_norm_foldable(const ml_node *bn);
ml_status ml__batch_norm_backward_pooled(const ml_node *bn, const ml_node *pool,
                                         const ml_tensor *py, const ml_tensor *gp,
                                         const unsigned char *want, ml_tensor **gin);

#endif /* ML_OPS_H */
