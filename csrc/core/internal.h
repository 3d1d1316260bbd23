/* internal.h — the core's private structures: tensors and their storage, graph nodes, grad
 * mode, the generator, the trace recorder. The layers above the core that handle tensors
 * include it (io, ops, optim, autograd, trace, memory; the kernels see only threads.h); the
 * core includes nothing above itself (tests/test_layering.py). */
#ifndef ML_INTERNAL_H
#define ML_INTERNAL_H

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metalearn.h"
#include "threads.h"

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
    size_t bytes;     /* the block's size (owned storage; ml_storage_stats) */
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
    int edge_refs;      /* of refcount, the nodes holding it as an edge only (ML_UNREAD_IN);
                         * storage NULL once only such edges remain (ml_release) */
    int node_refs;      /* of refcount, the nodes holding it (edges or not): ML_RECOMPUTE */
    ml_tensor *next_dead; /* intrusive list used while releasing a graph without recursion */
};

/* What the core knows of an op: this row, which the op hands to ml__record_node (ops/ops.h's
 * table holds one per op of ops/ops.def). The core reads only the name (ml_op_name,
 * messages); ml_grad (autograd/) calls the backward. The core names no op itself.
 * backward(out, gout, gin): gin[i] gets d<gout,out>/d input_i as a new reference, or NULL
 * when input i needs no gradient. It is written with public differentiable ops, so under
 * create_graph the gradient is recorded like any forward computation. NULL for the ops
 * only traces record (ops.def's REPLAY rows). */
typedef ml_status (*ml_backward_fn)(ml_tensor *out, ml_tensor *gout, ml_tensor **gin);

typedef struct ml_op_def {
    const char *name;
    int n_inputs; /* tensor inputs, -1: a variable count */
    ml_backward_fn backward;
    unsigned unread; /* ML_UNREAD_* bits: what the backward never reads the values of */
    /* ML_UNREAD_IN bits: inputs the eager backward hands on only as operands of the ops it
     * records, whose values only a trace's replay reads (max pooling's x: the replay finds
     * the argmax from it). ml_grad recomputes one that went back only while a trace
     * records; a node may hold it without its values (ml__record_node). */
    unsigned trace_read;
} ml_op_def;

/* An op's backward that needs only the shape of its input i (add's, sum's) or of its
 * output (every op whose formula does not name `out`'s values) says so in its row's
 * `unread` (ops/op_table.c). The node then holds input i as an edge only (ml_tensor's
 * edge_refs), and a tensor whose every remaining reference is such an edge, made by an op
 * that does not read its own output, gives its storage back: it is a step of the graph
 * walk, not a value (ml_release). As PyTorch keeps only what a backward saves: relu's
 * input, max_pool2d_scatter's gradient, the terms of batch norm's backward formula. */
#define ML_UNREAD_IN(i) (1u << (i)) /* i < 30 */
#define ML_UNREAD_OUT (1u << 31)
/* The output is a cheap, deterministic function of its inputs (a subtraction, a batch
 * norm's forward): held by graph nodes only, it gives its storage back even when a
 * backward reads it (its node then holds its inputs' values), and ml_grad recomputes it
 * (ops' ml__recompute, the same kernel: the same bits) just before a backward that reads
 * it, giving it back again after. */
#define ML_RECOMPUTE (1u << 30)
/* Only outputs this large are recomputed (a smaller one would save less than the call
 * costs: the MLP MAML step's tensors stay as they are); and a recomputable op's node holds
 * its smaller inputs as values even where its backward reads only their shape (x - mean's
 * mean), so that what it is recomputed from stays. */
#define ML_RECOMPUTE_MIN_NUMEL 16384

#define ML_NODE_MAX_IPARAMS (2 * ML_MAX_DIMS + 2)

struct ml_node {
    const ml_op_def *op;          /* the op's row: its name and backward */
    int n_inputs;
    ml_tensor **inputs;           /* owned references */
    uint64_t *input_versions;     /* storage versions when recorded */
    uint64_t out_version;
    float fparams[4];
    int64_t iparams[ML_NODE_MAX_IPARAMS];
    int64_t n_index;              /* gather/scatter/pick indices, owned copy */
    int64_t *index;
    uint32_t edge_mask;           /* bit i: inputs[i] is held as an edge (op->unread) */
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

/* ---- grad mode and nodes (node.c) ---- */
/* Whether an op with these inputs records a node. */
int ml__should_record(int n, ml_tensor *const *inputs);
/* Attaches a node for `op` (the op's row: ops call ml__record, ops/ops.h) to out, retaining
 * the inputs. Returns the node for params. */
ml_status ml__record_node(ml_tensor *out, const ml_op_def *op, int n, ml_tensor *const *inputs,
                          ml_node **node_out);

/* While ml_grad (autograd/) runs a node's backward: per input of that node, whether its
 * gradient is used (the input leads to a requested one); NULL elsewhere. A backward skips
 * the others: a meta-parameter requires grad, but the inner step of MAML asks only for
 * the fast weights, so the shared kernel's gradient there (a full GEMM) would be thrown
 * away. Grad-mode state, so the core holds it: autograd/ sets it, the backwards read it. */
extern _Thread_local const unsigned char *ml__grad_wanted;
static inline int ml__wants(int i, const ml_tensor *t) {
    return t && t->requires_grad && (!ml__grad_wanted || ml__grad_wanted[i]);
}

/* Gives t's storage back if only graph edges hold it, or only nodes and its op is
 * ML_RECOMPUTE (after ml_grad recomputed it for one backward). */
void ml__maybe_drop(ml_tensor *t);

/* Zeroed node structs from a per-thread cache (tensor.c), and their return. */
ml_node *ml__node_alloc(void);
void ml__node_free(ml_node *n);
/* This thread's buffer pool, without making one; NULL once it was destroyed at thread
 * exit (tests). */
void *ml__thread_pool(void);
/* Tests only: every thread pool's room in bytes (0: the rule of tensor.c). */
void ml__set_pool_room(size_t bytes);
/* A constant (no-grad) tensor of ones shaped like x. */
ml_status ml__ones_like(ml_tensor **out, const ml_tensor *x);

/* ---- the global generator (rng.c) ----
 * d[0..n) drawn from the stream in one step (a contiguous block of it, under its lock):
 * uniform in [lo, hi), normal, normal redrawn until within two standard deviations. */
void ml__rng_fill_uniform(float *d, int64_t n, float lo, float hi);
void ml__rng_fill_normal(float *d, int64_t n, float mean, float stddev);
void ml__rng_fill_truncated_normal(float *d, int64_t n, float mean, float stddev);

/* ---- tracing (the recorder: core/record.c; the trace: trace/) ----
 * An op that makes a tensor from data calls ML_TRACE after success, with its op id (its
 * row number in ops/ops.def: the recorder stores it, the fuser and ml_trace_print read it)
 * and a replay function that recomputes it from the same parameters (copied) and new
 * inputs. */
typedef ml_status (*ml_replay_fn)(ml_tensor **out, ml_tensor **in, const void *params);
extern _Thread_local ml_trace *ml__trace_active;

void ml__trace_record(unsigned op, ml_replay_fn fn, int n_in, ml_tensor *const *in, ml_tensor *out,
                      const void *params, size_t params_size);
/* An entry with up to ML_TRACE_MAX_OUT outputs: its replay function writes out[0..n_out-1]
 * (one pass that makes several tensors, e.g. a batch norm's three gradients). */
#define ML_TRACE_MAX_OUT 3
void ml__trace_record_n(unsigned op, ml_replay_fn fn, int n_in, ml_tensor *const *in, int n_out,
                        ml_tensor *const *out, const void *params, size_t params_size);
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

#endif /* ML_INTERNAL_H */
