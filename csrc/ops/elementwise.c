/* elementwise.c — broadcasting binary ops and one-input ops, forward and backward side by
 * side. Backward formulas use the public differentiable ops, so they can be differentiated
 * again (the scope macros of internal.h keep them short). */
#include <math.h>
#include <string.h>

#include "../core/internal.h"
#include "../kernels/cpu.h"
#include "../kernels/gemm.h"
#include "../kernels/vmath.h"

#define NULL_CHECK1(name, x) \
    if (!(x)) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name)
#define NULL_CHECK2(name, a, b) \
    if (!(a) || !(b)) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name)

/* ------------------------------------------------------------ broadcasting */

/* The broadcast shape of a and b (NumPy's rule) into nd / shape; 0 when they do not
 * broadcast. Sets no error: ml__broadcast_shape reports one, and the fused replays fall
 * back to the ops as recorded. */
static int broadcast_shape_of(const ml_tensor *a, const ml_tensor *b, int *nd, int64_t *shape) {
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

ml_status ml__broadcast_shape(const ml_tensor *a, const ml_tensor *b, int *ndim,
                              int64_t *shape, const char *opname) {
    if (!broadcast_shape_of(a, b, ndim, shape))
        return ml_set_error(ML_ERR_SHAPE, "%s: shapes %s and %s cannot be broadcast together",
                            opname, ML_SHAPE_STR(a), ML_SHAPE_STR(b));
    return ML_OK;
}

/* Element strides of x inside a broadcast shape of ndim dims (0 where x is broadcast). */
static void broadcast_strides(const ml_tensor *x, int ndim, const int64_t *shape,
                              int64_t *strides) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        int ix = x->ndim - ndim + i;
        int64_t d = ix >= 0 ? x->shape[ix] : 1;
        strides[i] = (d == 1 && shape[i] != 1) ? 0 : s;
        s *= d;
    }
}

/* How a broadcast binary op walks its output: the output's dims with a's and b's strides
 * (0 where broadcast), dims of size 1 dropped and neighbours merged where both operands are
 * contiguous across them. A (25, 10, 1) + (25, 1, 1) bias add walks 25 rows of 10, not 250
 * rows of 1 (~12 cycles of loop overhead each, 3 us of a MAML sinusoid replay). */
typedef struct {
    int nd;
    int64_t shape[ML_MAX_DIMS], sa[ML_MAX_DIMS], sb[ML_MAX_DIMS];
} walk_plan;
static void make_walk(const ml_tensor *a, const ml_tensor *b, int nd, const int64_t *shape,
                      walk_plan *w) {
    int64_t sa[ML_MAX_DIMS], sb[ML_MAX_DIMS];
    broadcast_strides(a, nd, shape, sa);
    broadcast_strides(b, nd, shape, sb);
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

/* ------------------------------------------------------------ binary kernels */

enum { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV, BIN_MAX, BIN_MIN, BIN_EQ, BIN_RELU_GRAD,
       BIN_ADD_RELU /* relu(x + y): a traced add whose only reader is a relu (see
                       ml__fuse_elementwise), with the two ops' exact roundings */ };

/* One row of a binary op; sa/sb are 0 (broadcast) or 1. Compiled into both variants of
 * its callers (ML_CPU_CLONES). */
#define ROW(EXPR)                                                                 \
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

static inline __attribute__((always_inline)) void
bin_row(int op, int64_t n, const float *restrict a, int sa, const float *restrict b, int sb,
        float *restrict o) {
    switch (op) {
    case BIN_ADD: ROW(x + y); break;
    case BIN_SUB: ROW(x - y); break;
    case BIN_MUL: ROW(x * y); break;
    case BIN_DIV: ROW(x / y); break;
    /* NaN propagates as in NumPy's maximum/minimum */
    case BIN_MAX: ROW(x != x || x > y ? x : y); break;
    case BIN_MIN: ROW(x != x || x < y ? x : y); break;
    case BIN_EQ: ROW(x == y ? 1.0f : 0.0f); break;
    /* relu's formulas (UN_RELU): NaN passes, as in NumPy and PyTorch; y is a relu's output
     * (ml__relu_grad), so y != 0 is y <= 0's complement, and compiles as x > 0 did (the
     * compare reads y from memory: one instruction fewer than y <= 0 a vector) */
    case BIN_RELU_GRAD: ROW(y != 0 ? x : 0.0f); break;
    case BIN_ADD_RELU: ROW(x + y < 0 ? 0.0f : x + y); break;
    }
}

/* Output elements [p0, p1) of a broadcast binary op. The start is found once (row and
 * multi-index), then rows are walked as in an unsplit run. Compiled twice (ML_CPU_CLONES:
 * AVX2 and baseline) as a whole, with the row kernel inlined: a broadcast over a middle axis ((25, 10, 40) * (25, 1, 40) in
 * vectorised MAML) is hundreds of 40-element rows, where a dispatched call per row cost
 * as much as the row. a and b give the shapes; their element e is read at ad[e - ash] and
 * bd[e - bsh] (a->data and 0 but for an operand made chunk by chunk, replay_outer_into). */
ML_INLINE void binary_range_at_body(
    int op, const ml_tensor *a, const float *ad, int64_t ash, const ml_tensor *b,
    const float *bd, int64_t bsh, ml_tensor *out, const walk_plan *w, int64_t p0, int64_t p1) {
    int64_t n = out->numel;
    if (a->numel == n && b->numel == n) {
        bin_row(op, p1 - p0, ad + (p0 - ash), 1, bd + (p0 - bsh), 1, out->data + p0);
        return;
    }
    if (a->numel == n && b->numel == 1) {
        bin_row(op, p1 - p0, ad + (p0 - ash), 1, bd - bsh, 0, out->data + p0);
        return;
    }
    if (a->numel == 1 && b->numel == n) {
        bin_row(op, p1 - p0, ad - ash, 0, bd + (p0 - bsh), 1, out->data + p0);
        return;
    }
    const int nd = w->nd;
    const int64_t *shape = w->shape, *sa = w->sa, *sb = w->sb;
    int64_t idx[ML_MAX_DIMS] = {0};
    int64_t inner = shape[nd - 1];
    int ia = sa[nd - 1] != 0, ib = sb[nd - 1] != 0;
    int64_t row = p0 / inner, col = p0 % inner, oa = -ash, ob = -bsh;
    for (int d = nd - 2; d >= 0; d--) {
        idx[d] = row % shape[d];
        row /= shape[d];
        oa += idx[d] * sa[d];
        ob += idx[d] * sb[d];
    }
    for (int64_t p = p0; p < p1;) {
        int64_t len = inner - col < p1 - p ? inner - col : p1 - p;
        bin_row(op, len, ad + (oa + (ia ? col : 0)), ia, bd + (ob + (ib ? col : 0)), ib,
                out->data + p);
        p += len;
        col = 0;
        /* advance the multi-index over the outer dims */
        for (int d = nd - 2; d >= 0; d--) {
            idx[d]++;
            oa += sa[d];
            ob += sb[d];
            if (idx[d] < shape[d]) break;
            oa -= sa[d] * idx[d];
            ob -= sb[d] * idx[d];
            idx[d] = 0;
        }
    }
}
ML_CPU_CLONES(binary_range_at,
              (int op, const ml_tensor *a, const float *ad, int64_t ash, const ml_tensor *b,
               const float *bd, int64_t bsh, ml_tensor *out, const walk_plan *w, int64_t p0,
               int64_t p1),
              (op, a, ad, ash, b, bd, bsh, out, w, p0, p1))
static void binary_range(int op, const ml_tensor *a, const ml_tensor *b, ml_tensor *out,
                         const walk_plan *w, int64_t p0, int64_t p1) {
    binary_range_at(op, a, a->data, 0, b, b->data, 0, out, w, p0, p1);
}

/* Large outputs are split over the thread pool in blocks whose starts are multiples of 64
 * output elements; each element is computed by the same exact IEEE operation whichever
 * block it falls in, so the result does not depend on the thread count. split_step: the
 * block length, one block per thread, or 0 to run on this thread (fewer than min
 * elements, one thread, or already inside the pool). */
static int64_t split_step(int64_t n, int64_t min) {
    if (n < min || ml__in_parallel()) return 0;
    const int64_t parts = ml_get_num_threads();
    return parts > 1 ? ((n + parts - 1) / parts + 63) / 64 * 64 : 0;
}
#define BIN_PAR_MIN (1 << 14) /* 16 k: MAML Omniglot's support-side tensors (32 x 5 x 256) too */
typedef struct {
    int op;
    const ml_tensor *a, *b;
    ml_tensor *out;
    const walk_plan *w;
    int64_t step;
} bin_job;
static void bin_part(void *ctx, int64_t i) {
    const bin_job *j = ctx;
    int64_t lo = i * j->step, hi = lo + j->step < j->out->numel ? lo + j->step : j->out->numel;
    binary_range(j->op, j->a, j->b, j->out, j->w, lo, hi);
}

static void binary_apply(int op, const ml_tensor *a, const ml_tensor *b, ml_tensor *out) {
    int64_t n = out->numel;
    if (n == 0) return;
    walk_plan w;
    make_walk(a, b, out->ndim, out->shape, &w);
    const int64_t step = split_step(n, BIN_PAR_MIN);
    if (step) {
        bin_job j = {op, a, b, out, &w, step};
        ml__parallel_for((n + step - 1) / step, 0, bin_part, &j);
        return;
    }
    binary_range(op, a, b, out, &w, 0, n);
}

typedef struct { int kernel; ml_op_id op; const char *name; } binary_params;
static ml_status binary_op(ml_tensor **out, ml_tensor *a, ml_tensor *b, int kernel,
                           ml_op_id op, const char *name);
static ml_status replay_binary(ml_tensor **out, ml_tensor **in, const void *params) {
    const binary_params *p = params;
    return binary_op(out, in[0], in[1], p->kernel, p->op, p->name);
}

static ml_status binary_op(ml_tensor **out, ml_tensor *a, ml_tensor *b, int kernel,
                           ml_op_id op, const char *name) {
    NULL_CHECK2(name, a, b);
    int nd;
    int64_t shape[ML_MAX_DIMS];
    ml_status st = ml__broadcast_shape(a, b, &nd, shape, name);
    if (st) return st;
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, nd, shape))) return st;
    binary_apply(kernel, a, b, o);
    ml_tensor *ins[2] = {a, b};
    if ((int)op >= 0 && ml__should_record(2, ins) && (st = ml__record(o, op, 2, ins, NULL))) {
        ml_release(o);
        return st;
    }
    binary_params bp = {kernel, op, name};
    ML_TRACE(replay_binary, 2, ins, o, &bp);
    *out = o;
    return ML_OK;
}

ml_status ml_add(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_ADD, OP_ADD, "add");
}
ml_status ml_sub(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_SUB, OP_SUB, "subtract");
}
ml_status ml_mul(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_MUL, OP_MUL, "multiply");
}
ml_status ml_div(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_DIV, OP_DIV, "divide");
}
ml_status ml_maximum(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_MAX, OP_MAXIMUM, "maximum");
}
ml_status ml_minimum(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_MIN, OP_MINIMUM, "minimum");
}
/* relu's backward in one pass, 0 where the relu's output y is 0 (+0 or -0: y <= 0, as
 * y is never below 0) and g elsewhere, NaN included (PyTorch's threshold_backward: an
 * infinite g below zero gives 0, not inf * 0; a NaN activation passes g on, so the NaN
 * reaches the weights' gradients as it reached the loss): was g * step(x), two passes over
 * the activations and a mask tensor, twice per hidden layer in second-order MAML. */
ml_status ml__relu_grad(ml_tensor **out, ml_tensor *g, ml_tensor *x) {
    return binary_op(out, g, x, BIN_RELU_GRAD, OP_RELU_GRAD, "relu_grad");
}

/* ---------------------------------------------------- fusion of traced pairs
 * A trace (core/trace.c) asks whether two consecutive entries, the second the only reader
 * of the first's output t, can run as one pass. Each fused form computes every element
 * with the same float operations, in the same order, as the pair, so a replay gives the
 * same bits; the intermediate is never written. In second-order MAML on sinusoids these
 * are the bias add before each relu and the gradient sum before each relu_grad: ~9 passes
 * over (25, 10, 40) activations, each costing as much as the arithmetic. */

/* relu_grad(a + b, m) = (m != 0 ? a + b : 0), a, b and m of one shape. The sum is made by
 * the add's own kernel (binary_range, chunk by chunk into o): a separately compiled a + b
 * may take its operands in the other order, and when both are NaN x86 returns the first
 * one's payload and sign, so only the add's own code gives its bits. Then the mask, in
 * place, on the chunk still in L1. */
static inline __attribute__((always_inline)) void relu_grad_mask(const float *restrict m,
                                                                 float *restrict o, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &o[i], sizeof bits);
        bits &= 0u - (uint32_t)(m[i] != 0); /* +0.0f where m is +-0; NaN m keeps o */
        memcpy(&o[i], &bits, sizeof bits);
    }
}
ML_INLINE void relu_grad_mask_inplace_body(const float *restrict m, float *restrict o,
                                           int64_t n) {
    relu_grad_mask(m, o, n);
}
ML_CPU_CLONES(relu_grad_mask_inplace, (const float *restrict m, float *restrict o, int64_t n),
              (m, o, n))
static void add_relu_grad_range(const ml_tensor *a, const ml_tensor *b, const ml_tensor *m,
                                ml_tensor *o, const walk_plan *w, int64_t p0, int64_t p1) {
    for (int64_t c = p0; c < p1; c += 2048) {
        const int64_t e = c + 2048 < p1 ? c + 2048 : p1;
        binary_range(BIN_ADD, a, b, o, w, c, e);
        relu_grad_mask_inplace(m->data + c, o->data + c, e - c);
    }
}
typedef struct {
    const ml_tensor *a, *b, *m;
    ml_tensor *o;
    const walk_plan *w;
    int64_t n, step;
} arg_job;
static void arg_part(void *ctx, int64_t i) {
    const arg_job *j = ctx;
    const int64_t lo = i * j->step, hi = lo + j->step < j->n ? lo + j->step : j->n;
    add_relu_grad_range(j->a, j->b, j->m, j->o, j->w, lo, hi);
}
static ml_status replay_add_relu_grad(ml_tensor **out, ml_tensor **in, const void *params) {
    (void)params;
    ml_tensor *a = in[0], *b = in[1], *m = in[2];
    /* a + b may broadcast (one addend's broadcast_to fused in, see replay_broadcast_into),
     * as long as the sum has m's shape; else the pair as recorded */
    int nd = 0;
    int64_t shape[ML_MAX_DIMS];
    const int fits = a && b && m && a->ndim <= m->ndim && b->ndim <= m->ndim &&
                     broadcast_shape_of(a, b, &nd, shape) && nd == m->ndim &&
                     !memcmp(shape, m->shape, (size_t)nd * sizeof *shape);
    if (!fits) {
        ml_tensor *t = NULL;
        ml_status st = ml_add(&t, a, b);
        if (st) return st;
        st = ml__relu_grad(out, t, m);
        ml_release(t);
        return st;
    }
    walk_plan w;
    make_walk(a, b, nd, shape, &w);
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, nd, shape);
    if (st) return st;
    const int64_t n = o->numel, step = split_step(n, BIN_PAR_MIN);
    if (step) {
        arg_job j = {a, b, m, o, &w, n, step};
        ml__parallel_for((n + step - 1) / step, 0, arg_part, &j);
    } else if (n > 0) {
        add_relu_grad_range(a, b, m, o, &w, 0, n);
    }
    *out = o;
    return ML_OK;
}

/* A comparison has a zero gradient: recorded as a flat op (ml__flat_backward). */
ml_status ml__equal(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_EQ, OP_EQUAL, "equal");
}

ml_status ml__flat_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    (void)out, (void)g, (void)gin; /* gin stays NULL: zero */
    return ML_OK;
}

#define IN(k) (out->node->inputs[k])
#define NEEDS(k) ml__wants(k, IN(k))

ml_status ml__add_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    if (NEEDS(0)) gin[0] = ml__keep(SUM_TO(&s, g, IN(0)));
    if (NEEDS(1)) gin[1] = ml__keep(SUM_TO(&s, g, IN(1)));
    ml__scope_end(&s);
    return s.status;
}

ml_status ml__sub_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    if (NEEDS(0)) gin[0] = ml__keep(SUM_TO(&s, g, IN(0)));
    if (NEEDS(1)) gin[1] = ml__keep(SUM_TO(&s, NEG(&s, g), IN(1)));
    ml__scope_end(&s);
    return s.status;
}

ml_status ml__mul_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    if (NEEDS(0)) gin[0] = ml__keep(SUM_TO(&s, MUL(&s, g, IN(1)), IN(0)));
    if (NEEDS(1)) gin[1] = ml__keep(SUM_TO(&s, MUL(&s, g, IN(0)), IN(1)));
    ml__scope_end(&s);
    return s.status;
}

/* relu_grad(g, x) is linear in g with the fixed mask of x (whose own derivative is zero
 * almost everywhere, as for step): d/dg = relu_grad(gout, x); nothing flows to x. */
ml_status ml__relu_grad_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    if (NEEDS(0)) gin[0] = ml__keep(SUM_TO(&s, RELU_GRAD(&s, g, IN(1)), IN(0)));
    ml__scope_end(&s);
    return s.status;
}

/* d(a/b)/da = 1/b; d(a/b)/db = -a/b^2 = -out/b */
ml_status ml__div_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *g_over_b = DIV(&s, g, IN(1));
    if (NEEDS(0)) gin[0] = ml__keep(SUM_TO(&s, g_over_b, IN(0)));
    if (NEEDS(1)) gin[1] = ml__keep(SUM_TO(&s, NEG(&s, MUL(&s, g_over_b, out)), IN(1)));
    ml__scope_end(&s);
    return s.status;
}

/* max/min: the gradient goes to the winner; ties split it evenly (as PyTorch). */
static ml_status minmax_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin, int is_max) {
    ml_scope s = {0};
    ml_tensor *a = IN(0), *b = IN(1);
    ml_tensor *diff = is_max ? SUB(&s, a, b) : SUB(&s, b, a);
    ml_tensor *wins_a = ADD(&s, STEP(&s, diff, 0.0f), MULS(&s, EQUAL(&s, a, b), 0.5f));
    if (NEEDS(0)) gin[0] = ml__keep(SUM_TO(&s, MUL(&s, g, wins_a), a));
    if (NEEDS(1))
        gin[1] = ml__keep(SUM_TO(&s, MUL(&s, g, ADDS(&s, NEG(&s, wins_a), 1.0f)), b));
    ml__scope_end(&s);
    return s.status;
}
ml_status ml__maximum_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    return minmax_backward(out, g, gin, 1);
}
ml_status ml__minimum_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    return minmax_backward(out, g, gin, 0);
}

/* ------------------------------------------------------------- unary kernels */

enum {
    UN_NEG, UN_SQUARE, UN_SQRT, UN_EXP, UN_LOG, UN_ABS, UN_SIGN, UN_RELU, UN_SIGMOID, UN_TANH,
    UN_ERF, UN_GELU, UN_POW, UN_ADDS, UN_MULS, UN_LEAKY, UN_ELU, UN_CLIP, UN_STEP, UN_RANGE
};

ML_INLINE void un_kernel_body(int k, int64_t n, const float *restrict x, float *restrict o,
                              float p, float q) {
    switch (k) {
    case UN_NEG: for (int64_t i = 0; i < n; i++) o[i] = -x[i]; break;
    case UN_SQUARE: for (int64_t i = 0; i < n; i++) o[i] = x[i] * x[i]; break;
    case UN_SQRT: for (int64_t i = 0; i < n; i++) o[i] = sqrtf(x[i]); break;
    case UN_EXP: ml__vexp(n, x, o); break;
    case UN_LOG: ml__vlog(n, x, o); break;
    case UN_ABS: for (int64_t i = 0; i < n; i++) o[i] = fabsf(x[i]); break;
    case UN_SIGN:
        for (int64_t i = 0; i < n; i++) o[i] = (float)((x[i] > 0) - (x[i] < 0));
        break;
    /* 0 > x ? 0 : x, MAXPS(0, x): NaN and -0.0 pass as in NumPy's maximum(x, 0) and
     * PyTorch's relu (x > 0 ? x : 0, as this was, made relu(NaN) 0: a finite loss while
     * the backward wrote NaN into the weights) */
    case UN_RELU: for (int64_t i = 0; i < n; i++) o[i] = 0.0f > x[i] ? 0.0f : x[i]; break;
    /* exp, log, sigmoid (split by sign so exp never overflows), tanh, erf, gelu:
     * vectorised polynomial kernels (kernels/vmath.c), libm for special lanes */
    case UN_SIGMOID: ml__vsigmoid(n, x, o); break;
    case UN_TANH: ml__vtanh(n, x, o); break;
    case UN_ERF: ml__verf(n, x, o); break;
    case UN_GELU: ml__vgelu(n, x, o); break;
    case UN_POW:
        if (p == 2.0f) for (int64_t i = 0; i < n; i++) o[i] = x[i] * x[i];
        else if (p == 1.0f) for (int64_t i = 0; i < n; i++) o[i] = x[i];
        else if (p == 0.0f) for (int64_t i = 0; i < n; i++) o[i] = 1.0f;
        else for (int64_t i = 0; i < n; i++) o[i] = powf(x[i], p);
        break;
    case UN_ADDS: for (int64_t i = 0; i < n; i++) o[i] = x[i] + p; break;
    case UN_MULS: for (int64_t i = 0; i < n; i++) o[i] = x[i] * p; break;
    case UN_LEAKY: for (int64_t i = 0; i < n; i++) o[i] = x[i] > 0 ? x[i] : p * x[i]; break;
    case UN_ELU: /* expm1: expf(x) - 1 lost ~4 digits near 0 (elu(-1e-4) off by 6e-4) */
        for (int64_t i = 0; i < n; i++) o[i] = x[i] > 0 ? x[i] : p * expm1f(x[i]);
        break;
    case UN_CLIP:
        /* NaN stays NaN, as in NumPy's clip */
        for (int64_t i = 0; i < n; i++) o[i] = x[i] < p ? p : (x[i] > q ? q : x[i]);
        break;
    case UN_STEP: for (int64_t i = 0; i < n; i++) o[i] = x[i] > p ? 1.0f : 0.0f; break;
    case UN_RANGE:
        for (int64_t i = 0; i < n; i++) o[i] = (x[i] >= p && x[i] <= q) ? 1.0f : 0.0f;
        break;
    }
}
ML_CPU_CLONES(un_kernel,
              (int k, int64_t n, const float *restrict x, float *restrict o, float p, float q),
              (k, n, x, o, p, q))

/* Large arrays are split over the thread pool in blocks whose starts are multiples of 64
 * elements: every element is computed by the same code (vector lanes stay aligned with an
 * unsplit run's), so the result does not depend on the thread count. */
#define UN_PAR_MIN (1 << 14)
typedef struct { int k; int64_t n, step; const float *x; float *o; float p, q; } un_job;
static void un_part(void *ctx, int64_t i) {
    const un_job *j = ctx;
    int64_t lo = i * j->step, len = j->n - lo < j->step ? j->n - lo : j->step;
    un_kernel(j->k, len, j->x + lo, j->o + lo, j->p, j->q);
}
static void un_apply(int k, int64_t n, const float *x, float *o, float p, float q) {
    const int64_t step = split_step(n, UN_PAR_MIN);
    if (step) {
        un_job j = {k, n, step, x, o, p, q};
        ml__parallel_for((n + step - 1) / step, 0, un_part, &j);
        return;
    }
    un_kernel(k, n, x, o, p, q);
}

typedef struct { int kernel; ml_op_id op; const char *name; float p, q; } unary_params;
static ml_status unary_op(ml_tensor **out, ml_tensor *x, int kernel, ml_op_id op,
                          const char *name, float p, float q);
static ml_status replay_unary(ml_tensor **out, ml_tensor **in, const void *params) {
    const unary_params *u = params;
    return unary_op(out, in[0], u->kernel, u->op, u->name, u->p, u->q);
}

static ml_status unary_op(ml_tensor **out, ml_tensor *x, int kernel, ml_op_id op,
                          const char *name, float p, float q) {
    NULL_CHECK1(name, x);
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim, x->shape);
    if (st) return st;
    un_apply(kernel, x->numel, x->data, o->data, p, q);
    ml_node *node = NULL;
    if ((int)op >= 0 && ml__should_record(1, &x)) {
        if ((st = ml__record(o, op, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        node->fparams[0] = p;
        node->fparams[1] = q;
    }
    unary_params up = {kernel, op, name, p, q};
    ML_TRACE(replay_unary, 1, &x, o, &up);
    *out = o;
    return ML_OK;
}

#define UNARY(fname, kernel, op, name) \
    ml_status fname(ml_tensor **out, ml_tensor *x) { return unary_op(out, x, kernel, op, name, 0, 0); }
UNARY(ml_neg, UN_NEG, OP_NEG, "negative")
UNARY(ml_square, UN_SQUARE, OP_SQUARE, "square")
UNARY(ml_sqrt, UN_SQRT, OP_SQRT, "sqrt")
UNARY(ml_exp, UN_EXP, OP_EXP, "exp")
UNARY(ml_log, UN_LOG, OP_LOG, "log")
UNARY(ml_abs, UN_ABS, OP_ABS, "abs")
UNARY(ml_sign, UN_SIGN, OP_SIGN, "sign")
UNARY(ml_relu, UN_RELU, OP_RELU, "relu")
UNARY(ml_sigmoid, UN_SIGMOID, OP_SIGMOID, "sigmoid")
UNARY(ml_tanh, UN_TANH, OP_TANH, "tanh")
UNARY(ml_erf, UN_ERF, OP_ERF, "erf")
UNARY(ml_gelu, UN_GELU, OP_GELU, "gelu")
#undef UNARY

ml_status ml_pow_scalar(ml_tensor **out, ml_tensor *x, float exponent) {
    return unary_op(out, x, UN_POW, OP_POW_SCALAR, "pow", exponent, 0);
}
ml_status ml_add_scalar(ml_tensor **out, ml_tensor *x, float value) {
    return unary_op(out, x, UN_ADDS, OP_ADD_SCALAR, "add", value, 0);
}
ml_status ml_mul_scalar(ml_tensor **out, ml_tensor *x, float value) {
    return unary_op(out, x, UN_MULS, OP_MUL_SCALAR, "multiply", value, 0);
}
ml_status ml_leaky_relu(ml_tensor **out, ml_tensor *x, float negative_slope) {
    return unary_op(out, x, UN_LEAKY, OP_LEAKY_RELU, "leaky_relu", negative_slope, 0);
}
ml_status ml_elu(ml_tensor **out, ml_tensor *x, float alpha) {
    return unary_op(out, x, UN_ELU, OP_ELU, "elu", alpha, 0);
}
ml_status ml_clip(ml_tensor **out, ml_tensor *x, float lo, float hi) {
    if (!(lo <= hi))
        return ml_set_error(ML_ERR_VALUE, "clip: lower bound %g is above upper bound %g",
                            (double)lo, (double)hi);
    return unary_op(out, x, UN_CLIP, OP_CLIP, "clip", lo, hi);
}
ml_status ml_step(ml_tensor **out, ml_tensor *x, float threshold) {
    return unary_op(out, x, UN_STEP, OP_STEP, "step", threshold, 0);
}
static ml_status range_mask(ml_tensor **out, ml_tensor *x, float lo, float hi) {
    return unary_op(out, x, UN_RANGE, OP_RANGE_MASK, "range_mask", lo, hi);
}

#define X IN(0)
#define P (out->node->fparams[0])
#define Q (out->node->fparams[1])
#define UNARY_BACKWARD(name, EXPR)                                     \
    ml_status name(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {    \
        ml_scope s = {0};                                              \
        (void)out;                                                     \
        gin[0] = ml__keep(EXPR);                                       \
        ml__scope_end(&s);                                             \
        return s.status;                                               \
    }

UNARY_BACKWARD(ml__neg_backward, NEG(&s, g))
UNARY_BACKWARD(ml__square_backward, MUL(&s, g, MULS(&s, X, 2.0f)))
UNARY_BACKWARD(ml__sqrt_backward, DIV(&s, MULS(&s, g, 0.5f), out))
UNARY_BACKWARD(ml__exp_backward, MUL(&s, g, out))
UNARY_BACKWARD(ml__log_backward, DIV(&s, g, X))
UNARY_BACKWARD(ml__abs_backward, MUL(&s, g, SIGN(&s, X)))
/* the mask from relu's output (y == 0 exactly where x <= 0; a NaN passes both): the
 * pre-activation need not stay alive for the backward, and in a trace the add that made
 * it can be fused with the relu (ml__fuse_elementwise) */
UNARY_BACKWARD(ml__relu_backward, RELU_GRAD(&s, g, out))
/* sigmoid' = s (1 - s) */
UNARY_BACKWARD(ml__sigmoid_backward, MUL(&s, g, MUL(&s, out, ADDS(&s, NEG(&s, out), 1.0f))))
/* tanh' = 1 - tanh^2 */
UNARY_BACKWARD(ml__tanh_backward, MUL(&s, g, ADDS(&s, NEG(&s, SQUARE(&s, out)), 1.0f)))
/* erf'(x) = 2/sqrt(pi) exp(-x^2) */
UNARY_BACKWARD(ml__erf_backward,
               MUL(&s, g, MULS(&s, EXP(&s, NEG(&s, SQUARE(&s, X))), 1.1283791670955126f)))
/* gelu(x) = x Phi(x): gelu'(x) = Phi(x) + x phi(x), Phi(x) = (1 + erf(x/sqrt2))/2,
 * phi(x) = exp(-x^2/2)/sqrt(2 pi) */
UNARY_BACKWARD(ml__gelu_backward,
               MUL(&s, g,
                   ADD(&s, MULS(&s, ADDS(&s, ERF(&s, MULS(&s, X, 0.70710678118654752f)), 1.0f), 0.5f),
                       MUL(&s, X, MULS(&s, EXP(&s, MULS(&s, SQUARE(&s, X), -0.5f)),
                                       0.3989422804014327f)))))
/* d x^p = p x^(p-1) */
UNARY_BACKWARD(ml__pow_scalar_backward,
               P == 0.0f ? MULS(&s, g, 0.0f) : MUL(&s, g, MULS(&s, POWS(&s, X, P - 1.0f), P)))
UNARY_BACKWARD(ml__add_scalar_backward, ml__push(&s, (ml_retain(g), ML_OK), &g))
UNARY_BACKWARD(ml__mul_scalar_backward, MULS(&s, g, P))
/* slope 1 above zero, P below */
UNARY_BACKWARD(ml__leaky_relu_backward,
               MUL(&s, g, ADDS(&s, MULS(&s, STEP(&s, X, 0.0f), 1.0f - P), P)))
/* elu' = alpha e^x = out + alpha where x <= 0 (differentiable through out), else 1: +inf
 * and NaN take 1, as in PyTorch's elu_backward (x <= 0 ? ... : g). The branch is selected by
 * relu_grad, not multiplied by a 0/1 mask: 0 * (out + alpha) was NaN at +inf and NaN. */
ml_status ml__elu_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *mask = NULL;
    ml_tensor *below = ml__push(&s, range_mask(&mask, X, -INFINITY, 0.0f), &mask);
    ml_tensor *above = ADDS(&s, NEG(&s, below), 1.0f);
    ml_tensor *d = ADD(&s, above, RELU_GRAD(&s, ADDS(&s, out, P), below));
    gin[0] = ml__keep(MUL(&s, g, d));
    ml__scope_end(&s);
    return s.status;
}
/* the gradient passes where lo <= x <= hi (as TensorFlow's clip_by_value) */
ml_status ml__clip_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *mask = NULL;
    ml_tensor *m = ml__push(&s, range_mask(&mask, X, P, Q), &mask);
    gin[0] = ml__keep(MUL(&s, g, m));
    ml__scope_end(&s);
    return s.status;
}

/* The op an entry is fused into: its replay and parameters, its input count, and which of
 * its inputs the entry's output was */
typedef struct {
    ml_replay_fn f2;
    int t_index, n_in2;
    size_t p2_size;
    unsigned char p2[64];
} fused_reader;
static int set_reader(fused_reader *r, ml_replay_fn f2, const void *p2, size_t p2_size,
                      int n_in2, int t_index) {
    if (n_in2 > 3 || p2_size > sizeof r->p2) return 0;
    *r = (fused_reader){f2, t_index, n_in2, p2_size, {0}};
    memcpy(r->p2, p2, p2_size);
    return 1;
}

/* The fused reader r run as recorded on t, its fused input (released), with its other
 * inputs args: the fallback of a fused replay */
static ml_status read_recorded(const fused_reader *r, ml_tensor **args, ml_tensor *t,
                               ml_tensor **out) {
    args[r->t_index] = t;
    ml_status st = r->f2(out, args, r->p2);
    ml_release(t);
    return st;
}

/* broadcast_to(x) read only by an element-wise op that broadcasts its operands itself (a
 * binary op, or the fused add + relu_grad): the op reads x directly. Each output element
 * is the same operation on the same values, so the bits are the pair's; the (25, 10, 40)
 * copy of a (25, 1, 40) gradient in second-order MAML is never written. in[0] is x, the
 * op's other inputs follow in order; when x would change the op's output shape (it was
 * broadcast past the other operands' shape), x is broadcast first, as recorded. */
typedef struct {
    fused_reader r;
    int ndim;
    int64_t shape[ML_MAX_DIMS];
} broadcast_into_params;
_Static_assert(sizeof(broadcast_into_params) <= ML_FUSED_PARAMS, "fused parameters too large");

static ml_status replay_broadcast_into(ml_tensor **out, ml_tensor **in, const void *params) {
    const broadcast_into_params *p = params;
    ml_tensor *args[3];
    for (int i = 0, j = 1; i < p->r.n_in2; i++) args[i] = i == p->r.t_index ? in[0] : in[j++];
    /* the op's output shape with x and with its broadcast (the broadcast of all inputs),
     * its rank included: a broadcast that only prepends 1s changes the output's rank */
    const int nd = p->ndim;
    int direct = 1, rank_x = 0;
    int64_t with_b[ML_MAX_DIMS], with_x[ML_MAX_DIMS];
    for (int i = 0; i < nd; i++) with_b[i] = with_x[i] = 1;
    for (int i = 0; i < p->r.n_in2; i++) {
        const ml_tensor *t = args[i];
        if (!t || t->ndim > nd) { direct = 0; break; }
        if (t->ndim > rank_x) rank_x = t->ndim;
        for (int d = 0; d < nd; d++) {
            const int it = t->ndim - nd + d;
            const int64_t dt = i == p->r.t_index ? p->shape[d] : it >= 0 ? t->shape[it] : 1;
            const int64_t dx = it >= 0 ? t->shape[it] : 1; /* (x itself at t_index) */
            if (dt != 1) with_b[d] = dt;
            if (dx != 1) with_x[d] = dx;
        }
    }
    if (direct && rank_x == nd && !memcmp(with_b, with_x, (size_t)nd * sizeof *with_b))
        return p->r.f2(out, args, p->r.p2);
    ml_tensor *t = NULL;
    ml_status st = ml_broadcast_to(&t, in[0], p->ndim, p->shape);
    return st ? st : read_recorded(&p->r, args, t, out);
}

/* An outer product (a matmul with k == 1: T[t][i][j] = a[t][i] b[t][j] for each batch
 * entry t) read only by an element-wise op: a binary op, or the fused add + relu_grad with
 * T as an addend. The op reads T's rows from a small buffer that ml__sgemm_outer_rows
 * refills as the op goes, so T, as large as the op's output, is never written nor read
 * back (in second-order MAML on sinusoids: x w1 in each forward and dL/dy w3^T in each
 * backward of the 1-input, 1-output network, six (25, 10, 40) tensors a step; the replay
 * went from ~144 to ~141 us, with outer_avx2 keeping b in registers). Each element
 * is T's bits (the matmul kernel's multiply) then the op's, so the pair's. in[0], in[1] are
 * the matmul's operands, the op's other inputs follow in order. Where the kernel or the
 * shapes do not allow it, the pair runs as recorded. */
typedef struct {
    fused_reader r;
    int ta, tb;
} outer_into_params;
_Static_assert(sizeof(outer_into_params) <= ML_FUSED_PARAMS, "fused parameters too large");

#define OUTER_CHUNK 2048 /* floats of T per refill: 8 kB, in L1 with the op's other rows */

typedef struct {
    int op, t_index;
    const ml_tensor *x, *y, *m; /* the op's operands (T's is a header: shape, no data) */
    const float *a, *b;
    int64_t m_rows, n, chunk_rows, rows, part_rows;
    ml_tensor *o;
    const walk_plan *w;
    int direct, o_col; /* outer_rows_direct, with the other operand's layout */
    int64_t o_task, o_row;
} outer_job;

/* The layout outer_rows_direct reads the op's other operand u with in an output of shape
 * (batch..., m, n): 1 and its offsets per batch entry, row and column (0 where broadcast),
 * or 0 when u broadcasts over only some of the batch dims (the general walk then). */
static int direct_layout(const ml_tensor *u, int nd, const int64_t *shape, int64_t *o_task,
                         int64_t *o_row, int *o_col) {
    if (u->ndim > nd || nd < 2) return 0;
    int64_t dims[ML_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        const int iu = u->ndim - nd + d;
        dims[d] = iu >= 0 ? u->shape[iu] : 1;
    }
    const int64_t un = dims[nd - 1], um = dims[nd - 2];
    int all = 1, none = 1; /* u's batch dims: all T's, or all 1 */
    for (int d = 0; d < nd - 2; d++) {
        all &= dims[d] == shape[d];
        none &= dims[d] == 1;
    }
    if (!all && !none) return 0;
    *o_col = un != 1;
    *o_row = um != 1 ? un : 0;
    *o_task = none ? 0 : um * un;
    return 1;
}

/* Rows [r0, r1) of T and of the op's output when the op's other operand u has one simple
 * layout: its batch index t adds o_task floats (0: one for all), its row index o_row (0:
 * one row per batch entry, as a bias or a per-task weight row) and its column o_col (0:
 * one value per row). T's rows of a batch entry are made by the matmul's kernel
 * (ml__sgemm_outer_rows: its multiply, so its bits, NaNs' signs included) into buf, and
 * the op reads them row by row with u's row, without the broadcast walk: that walk cost
 * ~11 cycles a row of its own, as much as the op on a 40-float row (the fused bias add +
 * relu of MAML's sinusoid forward). The mask, when given, is relu_grad's (relu_grad_mask),
 * row by row. */
ML_INLINE void outer_rows_direct_body(
    int op, int t_index, const float *a, const float *b, int64_t m_rows, int64_t n,
    const float *od, int64_t o_task, int64_t o_row, int o_col, const float *mask,
    float *out, int64_t r0, int64_t r1, float *buf) {
    for (int64_t r = r0; r < r1;) { /* the rows of one batch entry t at a time */
        const int64_t t = r / m_rows, i0 = r % m_rows;
        int64_t end = (t + 1) * m_rows < r1 ? (t + 1) * m_rows : r1;
        if (end - r > OUTER_CHUNK / n) end = r + OUTER_CHUNK / n; /* what buf holds */
        ml__sgemm_outer_rows(end - r, n, a + r, b + t * n, buf);
        for (int64_t i = i0; r < end; i++, r++) {
            const float *trow = buf + (i - i0) * n, *urow = od + t * o_task + i * o_row;
            float *dst = out + r * n;
            if (t_index == 0)
                bin_row(op, n, trow, 1, urow, o_col, dst);
            else
                bin_row(op, n, urow, o_col, trow, 1, dst);
            if (mask) relu_grad_mask(mask + r * n, dst, n);
        }
    }
}
ML_CPU_CLONES(outer_rows_direct,
              (int op, int t_index, const float *a, const float *b, int64_t m_rows, int64_t n,
               const float *od, int64_t o_task, int64_t o_row, int o_col, const float *mask,
               float *out, int64_t r0, int64_t r1, float *buf),
              (op, t_index, a, b, m_rows, n, od, o_task, o_row, o_col, mask, out, r0, r1, buf))

static void outer_part(void *ctx, int64_t part) {
    const outer_job *j = ctx;
    const int64_t r0 = part * j->part_rows;
    const int64_t r1 = r0 + j->part_rows < j->rows ? r0 + j->part_rows : j->rows;
    float buf[OUTER_CHUNK];
    if (j->direct) {
        const ml_tensor *other = j->t_index == 0 ? j->y : j->x;
        outer_rows_direct(j->op, j->t_index, j->a, j->b, j->m_rows, j->n, other->data,
                          j->o_task, j->o_row, j->o_col, j->m ? j->m->data : NULL, j->o->data,
                          r0, r1, buf);
        return;
    }
    for (int64_t c = r0; c < r1; c += j->chunk_rows) {
        const int64_t ce = c + j->chunk_rows < r1 ? c + j->chunk_rows : r1;
        for (int64_t r = c; r < ce;) { /* T's rows of one batch entry at a time */
            const int64_t t = r / j->m_rows;
            const int64_t end = (t + 1) * j->m_rows < ce ? (t + 1) * j->m_rows : ce;
            ml__sgemm_outer_rows(end - r, j->n, j->a + r, j->b + t * j->n, buf + (r - c) * j->n);
            r = end;
        }
        const int64_t p0 = c * j->n, p1 = ce * j->n;
        binary_range_at(j->op, j->x, j->t_index == 0 ? buf : j->x->data, j->t_index == 0 ? p0 : 0,
                        j->y, j->t_index == 1 ? buf : j->y->data, j->t_index == 1 ? p0 : 0,
                        j->o, j->w, p0, p1);
        if (j->m) relu_grad_mask_inplace(j->m->data + p0, j->o->data + p0, p1 - p0);
    }
}

static ml_status replay_outer_into(ml_tensor **out, ml_tensor **in, const void *params) {
    const outer_into_params *p = params;
    ml_tensor *a = in[0], *b = in[1];
    ml_tensor *args[3] = {NULL, NULL, NULL};
    for (int i = 0, k = 2; i < p->r.n_in2; i++) args[i] = i == p->r.t_index ? NULL : in[k++];
    /* T: a and b with the same batch dims and k == 1, on a kernel whose product is one
     * multiply (ml__sgemm_outer_rows) */
    ml_tensor t = {0};
    int fits = a && b && a->ndim == b->ndim && a->ndim >= 2 &&
               ml__sgemm_outer_rows(0, 0, NULL, NULL, NULL);
    int64_t m = 0, n = 0;
    if (fits) {
        const int nd = a->ndim;
        m = p->ta ? a->shape[nd - 1] : a->shape[nd - 2];
        n = p->tb ? b->shape[nd - 2] : b->shape[nd - 1];
        const int64_t ka = p->ta ? a->shape[nd - 2] : a->shape[nd - 1];
        const int64_t kb = p->tb ? b->shape[nd - 1] : b->shape[nd - 2];
        fits = ka == 1 && kb == 1 && m >= 1 && n >= 1 && n <= OUTER_CHUNK &&
               !memcmp(a->shape, b->shape, (size_t)(nd - 2) * sizeof *a->shape);
        t.ndim = nd;
        t.numel = m * n;
        for (int d = 0; d < nd - 2; d++) {
            t.shape[d] = a->shape[d];
            t.numel *= a->shape[d];
        }
        t.shape[nd - 2] = m;
        t.shape[nd - 1] = n;
        fits = fits && t.numel > 0;
    }
    const int arg = p->r.f2 == replay_add_relu_grad;
    const ml_tensor *x = p->r.t_index == 0 ? &t : args[0], *y = p->r.t_index == 1 ? &t : args[1];
    const ml_tensor *mask = arg ? args[2] : NULL;
    int nd = 0;
    int64_t shape[ML_MAX_DIMS];
    /* the op's output is T's shape (the other operands broadcast into it) */
    fits = fits && x && y && (!arg || mask) && broadcast_shape_of(x, y, &nd, shape) &&
           nd == t.ndim && !memcmp(shape, t.shape, (size_t)nd * sizeof *shape) &&
           (!mask || (mask->ndim == nd && !memcmp(mask->shape, shape, (size_t)nd * sizeof *shape)));
    if (!fits) {
        ml_tensor *tt = NULL;
        ml_status st = ml_matmul(&tt, a, b, p->ta, p->tb);
        return st ? st : read_recorded(&p->r, args, tt, out);
    }
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, nd, shape);
    if (st) return st;
    walk_plan w;
    make_walk(x, y, nd, shape, &w);
    /* chunks of whole rows of T starting at multiples of 64 elements where that fits (the
     * starts of the thread parts of an unfused op) */
    const int64_t low = n & -n, q = 64 / (low < 64 ? low : 64); /* rows: a multiple of 64 */
    int64_t chunk_rows = OUTER_CHUNK / n;
    if (chunk_rows >= q) chunk_rows -= chunk_rows % q;
    outer_job j = {arg ? BIN_ADD : ((const binary_params *)p->r.p2)->kernel, p->r.t_index, x, y, mask,
                   a->data, b->data, m, n, chunk_rows, t.numel / n, t.numel / n, o, &w,
                   0, 0, 0, 0};
    /* (an operand of T's own shape: the chunks below, one op call a chunk) */
    j.direct = direct_layout(p->r.t_index == 0 ? y : x, nd, shape, &j.o_task, &j.o_row, &j.o_col) &&
               (j.o_col == 0 || j.o_row == 0 || j.o_task == 0);
    int64_t parts = 1;
    if (split_step(t.numel, BIN_PAR_MIN)) {
        const int64_t threads = ml_get_num_threads();
        j.part_rows = (j.rows + threads - 1) / threads;
        j.part_rows = (j.part_rows + chunk_rows - 1) / chunk_rows * chunk_rows;
        parts = (j.rows + j.part_rows - 1) / j.part_rows;
    }
    if (parts > 1)
        ml__parallel_for(parts, 0, outer_part, &j);
    else
        outer_part(&j, 0);
    *out = o;
    return ML_OK;
}

/* A product (k > 1 when traced) and the reshape that is its only reader: the product with
 * the reshape's shape (a reshape of a new tensor is its data under a new shape). An entry
 * of its own so that the product can then take in the element-wise op reading the
 * reshape (replay_matmul_into): in MAML's vectorised steps, the (250, 40) products of 25
 * tasks' stacked rows are reshaped to (25, 10, 40) to meet per-task operands. */
typedef struct {
    int ta, tb, ndim;
    int64_t shape[ML_MAX_DIMS];
} matmul_view_params;

static ml_status replay_matmul_view(ml_tensor **out, ml_tensor **in, const void *params) {
    const matmul_view_params *p = params;
    ml_tensor *t = NULL;
    ml_status st = ml_matmul(&t, in[0], in[1], p->ta, p->tb);
    if (st) return st;
    st = ml_reshape(out, t, p->ndim, p->shape);
    ml_release(t);
    return st;
}

/* A product T = A op(B) (A not transposed, B 2-D: one GEMM over A's rows, as ml_matmul
 * runs it), perhaps reshaped (v.ndim > 0), read only by an element-wise op the GEMM can
 * apply as it stores T's elements (ml__sgemm_into): x + u, relu(x + u) with u of T's shape
 * or one row per batch entry (a bias), relu_grad(x, u), or add + relu_grad with T as an
 * addend. T is never written nor read back: in MAML sinusoid's second-order step, six of
 * the nine 250 x 40 x 40 products are read by such an op. Each element is the product's
 * bits and then the op's formula, so the unfused pair's (of a sum of two NaNs, either
 * NaN: which one x86 keeps depends on the instruction's operand order, free to the
 * compiler in the unfused op too). in[0], in[1] are the product's operands, the op's other
 * inputs follow; where the kernel or the layouts do not allow it, the product (its reshape)
 * and the op run as recorded. Chunks of T made by the GEMM and read by the op were tried
 * first (as replay_outer_into): the GEMM split into calls lost what the op gained. */
typedef struct {
    fused_reader r;
    matmul_view_params v;
} matmul_into_params;
_Static_assert(sizeof(matmul_into_params) <= ML_FUSED_PARAMS, "fused parameters too large");

static ml_status replay_matmul_into(ml_tensor **out, ml_tensor **in, const void *params) {
    const matmul_into_params *p = params;
    ml_tensor *a = in[0], *b = in[1];
    ml_tensor *args[3] = {NULL, NULL, NULL};
    for (int i = 0, k = 2; i < p->r.n_in2; i++) args[i] = i == p->r.t_index ? NULL : in[k++];
    const int arg = p->r.f2 == replay_add_relu_grad;
    const int kernel = arg ? -1 : ((const binary_params *)p->r.p2)->kernel;
    const int epi = arg ? ML_EPI_ADD_MASK
                  : kernel == BIN_ADD ? ML_EPI_ADD
                  : kernel == BIN_ADD_RELU ? ML_EPI_ADD_RELU
                  : kernel == BIN_RELU_GRAD && p->r.t_index == 0 ? ML_EPI_RELU_GRAD : 0;
    const ml_tensor *u = args[p->r.t_index == 0 ? 1 : 0], *mask = arg ? args[2] : NULL;
    int64_t rows = 0, n = 0, k = 0, u_div = 1, tshape[ML_MAX_DIMS];
    int nd = 0;
    int fits = epi && a && b && u && (!arg || mask) && !p->v.ta && a->ndim >= 2 && b->ndim == 2;
    if (fits) {
        k = a->shape[a->ndim - 1];
        n = p->v.tb ? b->shape[0] : b->shape[1];
        rows = k > 0 ? a->numel / k : 0;
        fits = (p->v.tb ? b->shape[1] : b->shape[0]) == k && rows > 0 &&
               ml__sgemm_into(p->v.tb, rows, n, k, NULL, NULL, epi, NULL, 1, NULL, NULL);
    }
    if (fits) { /* T's shape: the reshape's, or the product's; u of T's shape or one row a
                   batch entry (dim -2 of 1), the mask of T's shape */
        nd = p->v.ndim ? p->v.ndim : a->ndim;
        memcpy(tshape, p->v.ndim ? p->v.shape : a->shape, (size_t)nd * sizeof *tshape);
        if (!p->v.ndim) tshape[nd - 1] = n;
        fits = u->ndim == nd && tshape[nd - 1] == n && (!mask || (mask->ndim == nd &&
               !memcmp(mask->shape, tshape, (size_t)nd * sizeof *tshape)));
        for (int d = 0; fits && d < nd; d++)
            fits = u->shape[d] == tshape[d] || (d == nd - 2 && u->shape[d] == 1);
        if (fits && u->shape[nd - 2] == 1) u_div = tshape[nd - 2];
    }
    if (fits) {
        ml_tensor *o = NULL;
        ml_status st = ml__new(&o, nd, tshape);
        if (st) return st;
        if (ml__sgemm_into(p->v.tb, rows, n, k, a->data, b->data, epi, u->data, u_div,
                           mask ? mask->data : NULL, o->data)) {
            *out = o;
            return ML_OK;
        }
        ml_release(o); /* no buffer for B^T: as recorded, as the kernel itself falls back */
    }
    ml_tensor *tt = NULL; /* the pair (or the three) as recorded */
    ml_status st = p->v.ndim ? replay_matmul_view(&tt, in, &p->v)
                             : ml_matmul(&tt, a, b, p->v.ta, p->v.tb);
    return st ? st : read_recorded(&p->r, args, tt, out);
}

int ml__fuse_stage(ml_replay_fn fn, const void *params) {
    int nd, ta, tb;
    int64_t shape[ML_MAX_DIMS];
    if (ml__broadcast_replay_shape(fn, params, &nd, shape)) return 2;
    if (fn == replay_matmul_view) return 4;
    const int product = ml__matmul_replay_kind(fn, params, &ta, &tb);
    return product == ML_PRODUCT_OUTER ? 1 : product == ML_PRODUCT_GEMM ? 3 : 0;
}

/* (declared in internal.h; comments at replay_add_relu_grad and replay_broadcast_into) */
ml_replay_fn ml__fuse_elementwise(ml_replay_fn f1, const void *p1, ml_replay_fn f2,
                                  const void *p2, size_t p2_size, int n_in2, int t_index,
                                  void *params, size_t *params_size) {
    broadcast_into_params bp = {0};
    if (ml__broadcast_replay_shape(f1, p1, &bp.ndim, bp.shape)) {
        if ((f2 != replay_binary && (f2 != replay_add_relu_grad || t_index == 2)) ||
            !set_reader(&bp.r, f2, p2, p2_size, n_in2, t_index))
            return NULL;
        memcpy(params, &bp, sizeof bp);
        *params_size = sizeof bp;
        return replay_broadcast_into;
    }
    int ta = 0, tb = 0;
    const int product = ml__matmul_replay_kind(f1, p1, &ta, &tb);
    matmul_into_params mp = {.v = {ta, tb, 0, {0}}};
    if (product == ML_PRODUCT_GEMM && ml__reshape_replay_shape(f2, p2, &mp.v.ndim, mp.v.shape)) {
        memcpy(params, &mp.v, sizeof mp.v);
        *params_size = sizeof mp.v;
        return replay_matmul_view;
    }
    if (product || f1 == replay_matmul_view) { /* into a binary op or add + relu_grad */
        if ((f2 != replay_binary && f2 != replay_add_relu_grad) || t_index > 1) return NULL;
        if (product == ML_PRODUCT_OUTER) {
            outer_into_params op = {.ta = ta, .tb = tb};
            if (!set_reader(&op.r, f2, p2, p2_size, n_in2, t_index)) return NULL;
            memcpy(params, &op, sizeof op);
            *params_size = sizeof op;
            return replay_outer_into;
        }
        if (f1 == replay_matmul_view) mp.v = *(const matmul_view_params *)p1;
        if (!set_reader(&mp.r, f2, p2, p2_size, n_in2, t_index)) return NULL;
        memcpy(params, &mp, sizeof mp);
        *params_size = sizeof mp;
        return replay_matmul_into;
    }
    if (f1 != replay_binary || ((const binary_params *)p1)->kernel != BIN_ADD) return NULL;
    if (f2 == replay_unary && ((const int *)p2)[0] == UN_RELU) {
        const binary_params bq = {BIN_ADD_RELU, OP_ADD, "add_relu"};
        memcpy(params, &bq, sizeof bq);
        *params_size = sizeof bq;
        return replay_binary;
    }
    if (f2 == replay_binary && ((const binary_params *)p2)->kernel == BIN_RELU_GRAD &&
        t_index == 0) {
        *params_size = 0;
        return replay_add_relu_grad;
    }
    return NULL;
}
