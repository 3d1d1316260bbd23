/* internal.h — what the core's files share and the public header does not show. */
#ifndef ML_INTERNAL_H
#define ML_INTERNAL_H

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metalearn.h"

/* Internal invariants: compiled into debug and sanitizer builds (not into -DNDEBUG). */
#define ML_ASSERT(cond) assert(cond)

/* Memory shared by a tensor and its views (reshape, detach). One allocation holds the
 * header and, when the storage owns its data, the floats after it. */
typedef struct ml_storage {
    int64_t refcount;
    float *data;
    ml_free_fn free_fn; /* external memory (NumPy); NULL when owned */
    void *free_ctx;
    uint64_t version; /* bumped by every in-place write */
    int size_class;   /* buffer-pool class of the block (-1: not pooled) */
} ml_storage;

typedef struct ml_node ml_node;

struct ml_tensor {
    int64_t refcount;
    int ndim;
    int requires_grad;
    int64_t shape[ML_MAX_DIMS];
    int64_t numel;
    ml_storage *storage;
    float *data;        /* == storage->data */
    ml_node *node;      /* the op that made this tensor; NULL for a leaf */
    uint64_t serial;    /* creation order (process-wide): tells a trace what it made */
    int constant;       /* made from values (data, fill, one-hot), not computed from tensors */
    ml_tensor *next_dead; /* intrusive list used while releasing a graph without recursion */
};

/* One entry per op: its name, its number of tensor inputs (-1: variable), its backward
 * (NULL for the ops only traces record: ops.def's REPLAY rows).
 * backward(out, gout, gin): gin[i] gets d<gout,out>/d input_i as a new reference, or NULL
 * when input i needs no gradient. It is written with public differentiable ops, so under
 * create_graph the gradient is recorded like any forward computation. */
typedef ml_status (*ml_backward_fn)(ml_tensor *out, ml_tensor *gout, ml_tensor **gin);

/* Every op a tape node or a trace entry names, in the order of ops/ops.def (its rows
 * say what each is). The list is the core's vocabulary: a declaration, no code. */
typedef enum ml_op_id {
#define ML_OP(ID, name, inputs, grad, form, py, label) OP_##ID,
#include "../ops/ops.def"
#undef ML_OP
    OP_COUNT
} ml_op_id;

typedef struct ml_op_def {
    const char *name;
    int n_inputs;
    ml_backward_fn backward;
} ml_op_def;

extern const ml_op_def ml_op_table[OP_COUNT];

#define ML_NODE_MAX_IPARAMS (2 * ML_MAX_DIMS + 2)

struct ml_node {
    ml_op_id op;
    int n_inputs;
    ml_tensor **inputs;           /* owned references */
    uint64_t *input_versions;     /* storage versions when recorded */
    uint64_t out_version;
    float fparams[4];
    int64_t iparams[ML_NODE_MAX_IPARAMS];
    int64_t n_index;              /* gather/scatter/pick indices, owned copy */
    int64_t *index;
    ml_tensor *inputs_inline[3];
    uint64_t versions_inline[3];
};

/* ---- tensors (tensor.c) ---- */
/* An uninitialised tensor of shape (data not zeroed); validates the shape. */
ml_status ml__new(ml_tensor **out, int ndim, const int64_t *shape);
ml_status ml__check_shape(int ndim, const int64_t *shape, int64_t *numel_out);
/* A tensor viewing x's storage with a new shape of the same numel. */
ml_status ml__view(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape);
int ml__same_shape(const ml_tensor *a, const ml_tensor *b);
/* "(3, 4)" into buf */
const char *ml__shape_str(char *buf, size_t size, int ndim, const int64_t *shape);
#define ML_SHAPE_STR(t) ml__shape_str((char[160]){0}, 160, (t)->ndim, (t)->shape)
/* Normalises a possibly negative axis; returns -1 when out of range. */
int ml__axis(int axis, int ndim);
/* The one message for an axis out of range (ops/shape.c): names the op, the axis as the
 * caller gave it (not normalised) and the tensor's rank and shape; ML_ERR_VALUE. */
ml_status ml__axis_error(const char *op, int axis, const ml_tensor *x);

/* ---- autograd (autograd.c) ---- */
/* Whether an op with these inputs records a node. */
int ml__should_record(int n, ml_tensor *const *inputs);
/* Attaches a node for `op` to out, retaining the inputs. Returns the node for params. */
ml_status ml__record(ml_tensor *out, ml_op_id op, int n, ml_tensor *const *inputs,
                     ml_node **node_out);
/* Checks that inputs were not modified in place since they were recorded. */
ml_status ml__check_versions(const ml_tensor *out);

/* ---- broadcasting helpers (ops/elementwise.c) ---- */
ml_status ml__broadcast_shape(const ml_tensor *a, const ml_tensor *b, int *ndim,
                              int64_t *shape, const char *opname);

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
/* 1 where a == b (broadcast), zero gradient. Used by max's backward. */
ml_status ml__equal(ml_tensor **out, ml_tensor *a, ml_tensor *b);
/* g where x != 0, else +0: relu's backward, x a relu's output (>= 0, -0.0 or NaN: so 0
 * exactly where the input was <= 0, as PyTorch's threshold_backward) or a 0/1 mask */
ml_status ml__relu_grad(ml_tensor **out, ml_tensor *g, ml_tensor *x);
/* Zeroed node structs from a per-thread cache (tensor.c), and their return. */
ml_node *ml__node_alloc(void);
void ml__node_free(ml_node *n);
/* This thread's buffer pool, without making one; NULL once it was destroyed at thread
 * exit (tests). */
void *ml__thread_pool(void);
/* A constant (no-grad) tensor of ones shaped like x. */
ml_status ml__ones_like(ml_tensor **out, const ml_tensor *x);

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
ml_status ml__win2d_plan(const char *name, const ml_tensor *x, int64_t kh, int64_t kw,
                         int sh, int sw, ml_padding padding, ml_win2d *g);
/* Whether x has the (n, h, w, c) input shape of g (a replay's input, a gradient's source). */
ml_status ml__win2d_check_x(const char *name, const ml_tensor *x, const ml_win2d *g);
/* conv2d with explicit geometry; x (N,H,W,C), k (KH,KW,C,F), b (F) or NULL */
ml_status ml__conv2d_geom(ml_tensor **out, ml_tensor *x, ml_tensor *k, ml_tensor *b,
                          const ml_win2d *g);
/* d<g, conv2d(x, k)>/dx: g (N,OH,OW,F), k (KH,KW,C,F) -> (N,H,W,C) */
ml_status ml__conv2d_input_grad(ml_tensor **out, ml_tensor *g, ml_tensor *k, const ml_win2d *geo);
/* d<g, conv2d(x, k)>/dk: x (N,H,W,C), g (N,OH,OW,F) -> (KH,KW,C,F) */
ml_status ml__conv2d_kernel_grad(ml_tensor **out, ml_tensor *x, ml_tensor *g, const ml_win2d *geo);

/* ---- tracing (the recorder: core/record.c; the trace: trace/) ----
 * An op that makes a tensor from data calls ML_TRACE after success, with its op id (the
 * entry's name in ops.def: what the fuser and ml_trace_print read) and a replay function
 * that recomputes it from the same parameters (copied) and new inputs. */
typedef ml_status (*ml_replay_fn)(ml_tensor **out, ml_tensor **in, const void *params);
extern _Thread_local ml_trace *ml__trace_active;

/* While ml_grad runs a node's backward: per input of that node, whether its gradient is
 * used (the input leads to a requested one); NULL elsewhere. A backward skips the others:
 * a meta-parameter requires grad, but the inner step of MAML asks only for the fast
 * weights, so the shared kernel's gradient there (a full GEMM) would be thrown away. */
extern _Thread_local const unsigned char *ml__grad_wanted;
static inline int ml__wants(int i, const ml_tensor *t) {
    return t && t->requires_grad && (!ml__grad_wanted || ml__grad_wanted[i]);
}
void ml__trace_record(ml_op_id op, ml_replay_fn fn, int n_in, ml_tensor *const *in,
                      ml_tensor *out, const void *params, size_t params_size);
/* An entry with up to ML_TRACE_MAX_OUT outputs: its replay function writes out[0..n_out-1]
 * (one pass that makes several tensors, e.g. a batch norm's three gradients). */
#define ML_TRACE_MAX_OUT 3
void ml__trace_record_n(ml_op_id op, ml_replay_fn fn, int n_in, ml_tensor *const *in,
                        int n_out, ml_tensor *const *out, const void *params,
                        size_t params_size);
/* Serial number the next tensor will get (traces compare against it). */
uint64_t ml__next_serial(void);
/* Marks t as a constant: made from values, so a trace may capture it by value. */
static inline ml_tensor *ml__constant(ml_tensor *t) {
    if (t) t->constant = 1;
    return t;
}
/* Marks the active trace as failed (its end reports the status). */
void ml__trace_fail(ml_status st);
#define ML_TRACE(op, fn, n, ins, out, params)                                       \
    do {                                                                            \
        if (ml__trace_active)                                                       \
            ml__trace_record((op), (fn), (n), (ins), (out), (params), sizeof *(params)); \
    } while (0)

/* Little-endian encoding of the file formats (weights, memory), whatever the host. */
static inline void ml__put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void ml__put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t ml__get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static inline uint64_t ml__get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* io/weights.c: unique temporary file next to the (link-resolved) target + fsync +
 * rename + fsync of the directory (weights and memory files); special files refused. */
ml_status ml__write_atomic(const char *path, const void *buf, size_t size);

/* ---- threads (core/threads.c) ----
 * ml__parallel_for runs fn(ctx, i) for i in [0, n_tasks) over at most max_threads threads
 * (<= 0: ml_get_num_threads()) of a persistent pool; tasks must not depend on which thread
 * runs them. Serial when one thread is asked for, inside a worker (no nesting) or while
 * another caller holds the pool. ml__set_in_parallel(1) marks a thread that already runs
 * in parallel with others (e.g. a task-parallel replay worker) so its ops stay serial. */
typedef void (*ml__task_fn)(void *ctx, int64_t i);
void ml__parallel_for(int64_t n_tasks, int max_threads, ml__task_fn fn, void *ctx);
int ml__in_parallel(void);
void ml__set_in_parallel(int on);

#endif /* ML_INTERNAL_H */
