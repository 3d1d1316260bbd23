/* fusion.h — what the ops show the trace's fuser (trace/fuse.c) and its fused forms
 * (trace/fused.c): the pieces of the broadcast binary kernel (ops/elementwise.c) that a
 * fused form runs with its own operands, and what a recorded op was (typed accessors: the
 * fuser reads no op's parameters itself). Nothing in the core includes it. */
#ifndef ML_OPS_FUSION_H
#define ML_OPS_FUSION_H

#include "ops.h"

/* ---- the broadcast binary kernel (ops/elementwise.c) ---- */

/* The formula of a binary op, one per kernel. */
enum {
    BIN_ADD,
    BIN_SUB,
    BIN_MUL,
    BIN_DIV,
    BIN_MAX,
    BIN_MIN,
    BIN_EQ,
    BIN_RELU_GRAD,
    BIN_ADD_RELU /* relu(x + y) in one pass with the two ops' roundings (OP_ADD_RELU) */
};

/* The kernel that computes op (its BIN_ formula) when the op is a broadcast binary op,
 * else -1. */
int ml__binary_kernel(ml_op_id op);

/* relu(a + b), the fused form of an add whose only reader is a relu: each element is the
 * add's bits, then relu's. For replays (grad mode off): it records no tape node. */
ml_status ml__add_relu(ml_tensor **out, ml_tensor *a, ml_tensor *b);

/* One row of a binary op; sa/sb are 0 (broadcast) or 1. Inlined into each caller, which
 * is cloned for AVX2 as a whole. */
#define ML_BIN_ROW(EXPR)                                                          \
    do {                                                                          \
        if (sa && sb) {                                                           \
            for (int64_t i = 0; i < n; i++) { float x = a[i], y = b[i]; o[i] = (EXPR); } \
        } else if (sa) {                                                          \
            float y = b[0];                                                       \
            for (int64_t i = 0; i < n; i++) { float x = a[i]; o[i] = (EXPR); }    \
        } else if (sb) {                                                          \
            float x = a[0];                                                       \
            for (int64_t i = 0; i < n; i++) { float y = b[i]; o[i] = (EXPR); }    \
        } else {                                                                  \
            float x = a[0], y = b[0], r = (EXPR);                                 \
            for (int64_t i = 0; i < n; i++) o[i] = r;                             \
        }                                                                         \
    } while (0)

static inline
    __attribute__((always_inline)) void ml__bin_row(int op, int64_t n, const float *restrict a,
                                                    int sa, const float *restrict b, int sb,
                                                    float *restrict o) {
    /* clang-format off: a table, one case a line */
    switch (op) {
    case BIN_ADD: ML_BIN_ROW(x + y); break;
    case BIN_SUB: ML_BIN_ROW(x - y); break;
    case BIN_MUL: ML_BIN_ROW(x * y); break;
    case BIN_DIV: ML_BIN_ROW(x / y); break;
    /* NaN propagates as in NumPy's maximum/minimum */
    case BIN_MAX: ML_BIN_ROW(x != x || x > y ? x : y); break;
    case BIN_MIN: ML_BIN_ROW(x != x || x < y ? x : y); break;
    case BIN_EQ: ML_BIN_ROW(x == y ? 1.0f : 0.0f); break;
    /* relu's formulas (UN_RELU): NaN passes, as in NumPy and PyTorch; y is a relu's output
     * (ml__relu_grad), so y != 0 is y <= 0's complement, and compiles as x > 0 did (the
     * compare reads y from memory: one instruction fewer than y <= 0 a vector) */
    case BIN_RELU_GRAD: ML_BIN_ROW(y != 0 ? x : 0.0f); break;
    case BIN_ADD_RELU: ML_BIN_ROW(x + y < 0 ? 0.0f : x + y); break;
    }
    /* clang-format on */
}

/* The broadcast shape of a and b (NumPy's rule) into nd / shape; 0 when they do not
 * broadcast. Sets no error: ml__broadcast_shape reports one, and the fused replays fall
 * back to the ops as recorded. */
static inline int ml__broadcast_shape_of(const ml_tensor *a, const ml_tensor *b, int *nd,
                                         int64_t *shape) {
    const int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n; i++) {
        const int ia = a->ndim - n + i, ib = b->ndim - n + i;
        const int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1) return 0;
        shape[i] = da == 1 ? db : da;
    }
    *nd = n;
    return 1;
}

/* How a broadcast binary op walks its output: the output's dims with a's and b's strides
 * (0 where broadcast), dims of size 1 dropped and neighbours merged where both operands are
 * contiguous across them. A (25, 10, 1) + (25, 1, 1) bias add walks 25 rows of 10, not 250
 * rows of 1 (each row costs ~12 cycles of loop overhead; benchmarks/run_all.py maml-sin). */
typedef struct {
    int nd;
    int64_t shape[ML_MAX_DIMS], sa[ML_MAX_DIMS], sb[ML_MAX_DIMS];
} ml_walk_plan;

/* Element strides of x inside a broadcast shape of ndim dims (0 where x is broadcast). */
static inline void ml__broadcast_strides(const ml_tensor *x, int ndim, const int64_t *shape,
                                         int64_t *strides) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        int ix = x->ndim - ndim + i;
        int64_t d = ix >= 0 ? x->shape[ix] : 1;
        strides[i] = (d == 1 && shape[i] != 1) ? 0 : s;
        s *= d;
    }
}

static inline void ml__make_walk(const ml_tensor *a, const ml_tensor *b, int nd,
                                 const int64_t *shape, ml_walk_plan *w) {
    int64_t sa[ML_MAX_DIMS], sb[ML_MAX_DIMS];
    ml__broadcast_strides(a, nd, shape, sa);
    ml__broadcast_strides(b, nd, shape, sb);
    w->nd = 0;
    for (int d = 0; d < nd; d++) {
        if (shape[d] == 1) continue;
        const int t = w->nd - 1;
        if (t >= 0 && w->sa[t] == sa[d] * shape[d] && w->sb[t] == sb[d] * shape[d]) {
            w->shape[t] *= shape[d]; /* dims t and d walk as one */
            w->sa[t] = sa[d];
            w->sb[t] = sb[d];
            continue;
        }
        w->shape[w->nd] = shape[d];
        w->sa[w->nd] = sa[d];
        w->sb[w->nd] = sb[d];
        w->nd++;
    }
    if (w->nd == 0) { /* a single element */
        w->nd = 1;
        w->shape[0] = 1;
        w->sa[0] = w->sb[0] = 0;
    }
}

/* Output elements [p0, p1) of the broadcast binary op `op` (a BIN_ kernel) of a and b
 * into out, walked by w. a and b give the shapes; their element e is read at ad[e - ash]
 * and bd[e - bsh] (a->data and 0 but for an operand made chunk by chunk, as the fused
 * outer product makes it). */
void ml__binary_range_at(int op, const ml_tensor *a, const float *ad, int64_t ash,
                         const ml_tensor *b, const float *bd, int64_t bsh, ml_tensor *out,
                         const ml_walk_plan *w, int64_t p0, int64_t p1);

/* Large outputs are split over the thread pool in blocks whose starts are multiples of 64
 * output elements; each element is computed by the same exact IEEE operation whichever
 * block it falls in, so the result does not depend on the thread count. The block length,
 * one block per thread, or 0 to run on this thread (fewer than min elements, one thread,
 * or already inside the pool). */
static inline int64_t ml__split_step(int64_t n, int64_t min) {
    if (n < min || ml__in_parallel()) return 0;
    const int64_t parts = ml_get_num_threads();
    return parts > 1 ? ((n + parts - 1) / parts + 63) / 64 * 64 : 0;
}
/* From 16 k elements a binary op splits (MAML Omniglot's support-side tensors, 32 x 5 x
 * 256, gain from 2 threads: benchmarks/run_all.py maml-omniglot) */
#define ML_BIN_PAR_MIN (1 << 14)

/* ---- products (ops/matmul.c) ---- */

/* What a traced matmul (an OP_MATMUL entry's parameters) is to the fuser, and its
 * transposes: ML_PRODUCT_OUTER, k == 1 (an outer product per batch entry); ML_PRODUCT_GEMM,
 * k > 1 and one GEMM over a's rows (b 2-D, a not transposed); 0, neither. */
enum { ML_PRODUCT_OUTER = 1, ML_PRODUCT_GEMM };
int ml__matmul_traced_form(const void *params, int *ta, int *tb);

#endif /* ML_OPS_FUSION_H */
