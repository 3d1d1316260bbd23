/* op_table.c — one row per op of ops.def: name, number of inputs (-1: any), backward
 * (ml__<name>_backward; ml__flat_backward for the piecewise-constant ops; NULL for the
 * ops only traces record). The rows, the enum ml_op_id and the backward declarations all
 * expand ops.def, so they cannot drift apart. */
#include "ops.h"

#define DECLARE_BACKWARD(name) \
    ml_status ml__##name##_backward(ml_tensor *, ml_tensor *, ml_tensor **);
#define DECLARE_FLAT(name)
#define DECLARE_REPLAY(name)
#define ML_OP(ID, name, inputs, grad, form, py, label) DECLARE_##grad(name)
#include "ops.def"
#undef ML_OP

#define GRAD_BACKWARD(name) ml__##name##_backward
#define GRAD_FLAT(name) ml__flat_backward
#define GRAD_REPLAY(name) NULL

/* What each backward never reads the values of (internal.h, ML_UNREAD_*), read off its
 * formula: the inputs it needs only the shape of, and its output when the formula does
 * not use it. An op not listed keeps all (safe). An input that the backward hands to
 * another op as an operand (max_pool2d's x, kept for traces' recomputed argmax) stays
 * read, and is listed in TRACE_READ below. Used by what the MAML conv step keeps
 * (benchmarks/conv84.py --peak). */
#define IN0 ML_UNREAD_IN(0)
#define IN1 ML_UNREAD_IN(1)
#define IN2 ML_UNREAD_IN(2)
#define OUT ML_UNREAD_OUT
/* clang-format off */
#define UNREAD(id)                                                                     \
    ((id) == OP_ADD                                  ? IN0 | IN1 | OUT /* g, -g */   \
     : (id) == OP_SUB                                 ? IN0 | IN1 | OUT | ML_RECOMPUTE \
     : (id) == OP_MUL                                 ? OUT /* g b, g a */             \
     : (id) == OP_NEG || (id) == OP_ADD_SCALAR        ? IN0 | OUT                      \
     : (id) == OP_MUL_SCALAR                          ? IN0 | OUT /* g p */            \
     : (id) == OP_SQUARE || (id) == OP_POW_SCALAR     ? OUT /* from x */               \
     : (id) == OP_RELU                                ? IN0 /* the mask from out */    \
     : (id) == OP_RELU_GRAD                           ? IN0 | OUT /* mask from x */    \
     : (id) == OP_RESHAPE || (id) == OP_BROADCAST_TO  ? IN0 | OUT                      \
     : (id) == OP_SUM_TO || (id) == OP_SUM            ? IN0 | OUT                      \
     : (id) == OP_MEAN                                ? IN0 | OUT                      \
     : (id) == OP_CONV2D                              ? IN2 | OUT /* x, k; not b */    \
     : (id) == OP_CONV2D_INPUT_GRAD                   ? OUT                            \
     : (id) == OP_CONV2D_KERNEL_GRAD                  ? OUT                            \
     : (id) == OP_MAX_POOL2D                          ? OUT /* the argmax */           \
     : (id) == OP_MAX_POOL2D_SCATTER                  ? IN0 | OUT /* the argmax */     \
     : (id) == OP_MAX_POOL2D_GATHER                   ? IN0 | OUT                      \
     : (id) == OP_BATCH_NORM                          ? OUT | ML_RECOMPUTE             \
     : (id) == OP_BATCH_NORM_DX                       ? OUT                            \
     : (id) == OP_BATCH_NORM_DGAMMA                   ? OUT                            \
     : 0u)
/* clang-format on */

/* The inputs only a trace's replay reads (ml_op_def.trace_read): max pooling's x, which
 * its backward and its scatter's and gather's hand on to the scatter or gather they record
 * (their eager forms read the argmax the node keeps). The MAML conv step recomputed each
 * batch-norm output it pools up to three times for them. */
#define TRACE_READ(id)                                                                   \
    ((id) == OP_MAX_POOL2D                                           ? IN0               \
     : (id) == OP_MAX_POOL2D_SCATTER || (id) == OP_MAX_POOL2D_GATHER ? IN1               \
                                                                     : 0u)

const ml_op_def ml_op_table[] = {
#define ML_OP(ID, name, inputs, grad, form, py, label) \
    [OP_##ID] = {#name, inputs, GRAD_##grad(name), UNREAD(OP_##ID), TRACE_READ(OP_##ID)},
#include "ops.def"
#undef ML_OP
};

ml_status ml__batch_norm_recompute(ml_tensor **out, const ml_node *node);

static int64_t recomputes; /* ml_recompute_count; relaxed: a counter */

int64_t ml_recompute_count(void) { return __atomic_load_n(&recomputes, __ATOMIC_RELAXED); }

ml_status ml__recompute(ml_tensor *t) {
    ml_node *n = t->node;
    ml_status st = ML_OK;
    for (int i = 0; i < n->n_inputs && st == ML_OK; i++)
        if (!n->inputs[i]->storage) st = ml__recompute(n->inputs[i]);
    if (st) return st;
    /* the forward's kernel again, recording nothing (no node, no trace entry) */
    const int grad_was = ml_set_grad_enabled(0);
    ml_trace *tr = ml__trace_active;
    ml__trace_active = NULL;
    ml_tensor *o = NULL;
    if (n->op == &ml_op_table[OP_SUB])
        st = ml_sub(&o, n->inputs[0], n->inputs[1]);
    else if (n->op == &ml_op_table[OP_BATCH_NORM])
        st = ml__batch_norm_recompute(&o, n);
    else
        st = ml_set_error(ML_ERR_GRAPH, "internal: '%s' cannot be recomputed", n->op->name);
    ml__trace_active = tr;
    ml_set_grad_enabled(grad_was);
    if (st) return st;
    __atomic_add_fetch(&recomputes, 1, __ATOMIC_RELAXED);
    ml_storage *s = o->storage;
    __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
    s->version = n->out_version;
    t->data = o->data;
    __atomic_store_n(&t->storage, s, __ATOMIC_RELEASE);
    ml_release(o);
    return ML_OK;
}

_Static_assert(sizeof ml_op_table / sizeof ml_op_table[0] == OP_COUNT,
               "ml_op_table needs one row per ml_op_id");
