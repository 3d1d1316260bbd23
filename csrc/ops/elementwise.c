/* elementwise.c — broadcasting binary ops and one-input ops, forward and backward side by
 * side. Backward formulas use the public differentiable ops, so they can be differentiated
 * again (the scope macros of internal.h keep them short). */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "../kernels/cpu.h"
#include "../kernels/vmath.h"
#include "fusion.h"

#define NULL_CHECK1(name, x) \
    if (!(x)) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name)
#define NULL_CHECK2(name, a, b) \
    if (!(a) || !(b)) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name)

/* ------------------------------------------------------------ broadcasting
 * (the shape rule, the walk and the row kernel are ops/fusion.h's: the fused forms of a
 * trace run them too) */

ml_status ml__broadcast_shape(const ml_tensor *a, const ml_tensor *b, int *ndim, int64_t *shape,
                              const char *opname) {
    if (!ml__broadcast_shape_of(a, b, ndim, shape))
        return ml_set_error(ML_ERR_SHAPE, "%s: shapes %s and %s cannot be broadcast together",
                            opname, ML_SHAPE_STR(a), ML_SHAPE_STR(b));
    return ML_OK;
}

/* ------------------------------------------------------------ binary kernels */

/* The start is found once (row and multi-index), then rows are walked as in an unsplit
 * run. Compiled twice (ML_CPU_CLONES: AVX2 and baseline) as a whole, with the row kernel
 * inlined: a broadcast over a middle axis ((25, 10, 40) * (25, 1, 40) in vectorised MAML)
 * is hundreds of 40-element rows, where a dispatched call per row would cost as much as
 * the row. */
ML_INLINE void binary_range_at_body(int op, const ml_tensor *a, const float *ad, int64_t ash,
                                    const ml_tensor *b, const float *bd, int64_t bsh,
                                    ml_tensor *out, const ml_walk_plan *w, int64_t p0, int64_t p1) {
    int64_t n = out->numel;
    if (a->numel == n && b->numel == n) {
        ml__bin_row(op, p1 - p0, ad + (p0 - ash), 1, bd + (p0 - bsh), 1, out->data + p0);
        return;
    }
    if (a->numel == n && b->numel == 1) {
        ml__bin_row(op, p1 - p0, ad + (p0 - ash), 1, bd - bsh, 0, out->data + p0);
        return;
    }
    if (a->numel == 1 && b->numel == n) {
        ml__bin_row(op, p1 - p0, ad - ash, 0, bd + (p0 - bsh), 1, out->data + p0);
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
        ml__bin_row(op, len, ad + (oa + (ia ? col : 0)), ia, bd + (ob + (ib ? col : 0)), ib,
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
               const float *bd, int64_t bsh, ml_tensor *out, const ml_walk_plan *w, int64_t p0,
               int64_t p1),
              (op, a, ad, ash, b, bd, bsh, out, w, p0, p1))

/* (declared in fusion.h: the fused forms of a trace walk their operands with it too) */
void ml__binary_range_at(int op, const ml_tensor *a, const float *ad, int64_t ash,
                         const ml_tensor *b, const float *bd, int64_t bsh, ml_tensor *out,
                         const ml_walk_plan *w, int64_t p0, int64_t p1) {
    binary_range_at(op, a, ad, ash, b, bd, bsh, out, w, p0, p1);
}
static void binary_range(int op, const ml_tensor *a, const ml_tensor *b, ml_tensor *out,
                         const ml_walk_plan *w, int64_t p0, int64_t p1) {
    binary_range_at(op, a, a->data, 0, b, b->data, 0, out, w, p0, p1);
}

/* Large outputs split over the thread pool as ml__split_step says (fusion.h): the same
 * bits for any thread count. */
typedef struct {
    int op;
    const ml_tensor *a, *b;
    ml_tensor *out;
    const ml_walk_plan *w;
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
    ml_walk_plan w;
    ml__make_walk(a, b, out->ndim, out->shape, &w);
    const int64_t step = ml__split_step(n, ML_BIN_PAR_MIN);
    if (step) {
        bin_job j = {op, a, b, out, &w, step};
        ml__parallel_for((n + step - 1) / step, 0, bin_part, &j);
        return;
    }
    binary_range(op, a, b, out, &w, 0, n);
}

typedef struct {
    int kernel;
    ml_op_id op;
    const char *name;
} binary_params;
static ml_status binary_op(ml_tensor **out, ml_tensor *a, ml_tensor *b, int kernel, ml_op_id op,
                           const char *name);
static ml_status replay_binary(ml_tensor **out, ml_tensor **in, const void *params) {
    const binary_params *p = params;
    return binary_op(out, in[0], in[1], p->kernel, p->op, p->name);
}

static ml_status binary_op(ml_tensor **out, ml_tensor *a, ml_tensor *b, int kernel, ml_op_id op,
                           const char *name) {
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
    ML_TRACE(op, replay_binary, 2, ins, o, &bp);
    *out = o;
    return ML_OK;
}

ml_status ml_add(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_ADD, OP_ADD, "add");
}

/* acc += g, for ml_grad's gradient sums (an accumulator only its slot holds: the caller
 * checks), with ml_add(acc, g)'s bits: the same compiled kernel and operand order, so a
 * NaN + NaN keeps acc's payload as there (x86 keeps the first operand's; a separate loop,
 * `acc[i] += g[i]`, compiled to g + acc). The kernel's a and out are then one buffer, each
 * element read before its own store and no other, in every loop form of ml__bin_row (a
 * pure element map): its restrict promises no more than that. Saves the new buffer's
 * first-touch page faults and a third stream of memory traffic. */
ml_status ml__add_into(ml_tensor *acc, ml_tensor *g) {
    if (acc->numel != g->numel) /* the caller matched the shapes */
        return ml_set_error(ML_ERR_SHAPE, "add_into: shapes %s and %s differ", ML_SHAPE_STR(acc),
                            ML_SHAPE_STR(g));
    binary_apply(BIN_ADD, acc, g, acc);
    acc->storage->version++;
    return ML_OK;
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
 * reaches the weights' gradients as it reached the loss). One pass where g * step(x)
 * would take two and a mask tensor, twice per hidden layer in second-order MAML. */
ml_status ml__relu_grad(ml_tensor **out, ml_tensor *g, ml_tensor *x) {
    return binary_op(out, g, x, BIN_RELU_GRAD, OP_RELU_GRAD, "relu_grad");
}

/* (fusion.h) */
ml_status ml__add_relu(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    return binary_op(out, a, b, BIN_ADD_RELU, OP_ADD_RELU, "add_relu");
}

int ml__binary_kernel(ml_op_id op) {
    switch (op) {
    case OP_ADD: return BIN_ADD;
    case OP_SUB: return BIN_SUB;
    case OP_MUL: return BIN_MUL;
    case OP_DIV: return BIN_DIV;
    case OP_MAXIMUM: return BIN_MAX;
    case OP_MINIMUM: return BIN_MIN;
    case OP_EQUAL: return BIN_EQ;
    case OP_RELU_GRAD: return BIN_RELU_GRAD;
    case OP_ADD_RELU: return BIN_ADD_RELU;
    default: return -1;
    }
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
    if (NEEDS(1)) gin[1] = ml__keep(SUM_TO(&s, MUL(&s, g, ADDS(&s, NEG(&s, wins_a), 1.0f)), b));
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

/* clang-format off: a table, one case a line */
enum {
    UN_NEG,
    UN_SQUARE,
    UN_SQRT,
    UN_EXP,
    UN_LOG,
    UN_ABS,
    UN_SIGN,
    UN_RELU,
    UN_SIGMOID,
    UN_TANH,
    UN_ERF,
    UN_GELU,
    UN_POW,
    UN_ADDS,
    UN_MULS,
    UN_LEAKY,
    UN_ELU,
    UN_CLIP,
    UN_STEP,
    UN_RANGE,
    UN_SOFTPLUS
};
/* clang-format on */

ML_INLINE void un_kernel_body(int k, int64_t n, const float *restrict x, float *restrict o, float p,
                              float q) {
    /* clang-format off: a table, one case a line */
    switch (k) {
    case UN_NEG:
        for (int64_t i = 0; i < n; i++) o[i] = -x[i];
        break;
    case UN_SQUARE:
        for (int64_t i = 0; i < n; i++) o[i] = x[i] * x[i];
        break;
    case UN_SQRT:
        for (int64_t i = 0; i < n; i++) o[i] = sqrtf(x[i]);
        break;
    case UN_EXP: ml__vexp(n, x, o); break;
    case UN_LOG: ml__vlog(n, x, o); break;
    case UN_ABS:
        for (int64_t i = 0; i < n; i++) o[i] = fabsf(x[i]);
        break;
    case UN_SIGN:
        for (int64_t i = 0; i < n; i++) o[i] = (float)((x[i] > 0) - (x[i] < 0));
        break;
    /* 0 > x ? 0 : x, MAXPS(0, x): NaN and -0.0 pass as in NumPy's maximum(x, 0) and
     * PyTorch's relu (x > 0 ? x : 0, as this was, made relu(NaN) 0: a finite loss while
     * the backward wrote NaN into the weights) */
    case UN_RELU:
        for (int64_t i = 0; i < n; i++) o[i] = 0.0f > x[i] ? 0.0f : x[i];
        break;
    /* exp, log, sigmoid (split by sign so exp never overflows), tanh, erf, gelu:
     * vectorised polynomial kernels (kernels/vmath.c), libm for special lanes */
    case UN_SIGMOID: ml__vsigmoid(n, x, o); break;
    case UN_TANH: ml__vtanh(n, x, o); break;
    case UN_ERF: ml__verf(n, x, o); break;
    case UN_GELU: ml__vgelu(n, x, o); break;
    case UN_POW:
        if (p == 2.0f)
            for (int64_t i = 0; i < n; i++) o[i] = x[i] * x[i];
        else if (p == 1.0f)
            for (int64_t i = 0; i < n; i++) o[i] = x[i];
        else if (p == 0.0f)
            for (int64_t i = 0; i < n; i++) o[i] = 1.0f;
        else
            for (int64_t i = 0; i < n; i++) o[i] = powf(x[i], p);
        break;
    case UN_ADDS:
        for (int64_t i = 0; i < n; i++) o[i] = x[i] + p;
        break;
    case UN_MULS:
        for (int64_t i = 0; i < n; i++) o[i] = x[i] * p;
        break;
    case UN_LEAKY:
        for (int64_t i = 0; i < n; i++) o[i] = x[i] > 0 ? x[i] : p * x[i];
        break;
    case UN_ELU: /* expm1: expf(x) - 1 loses ~4 digits near 0 (elu(-1e-4) off by 6e-4) */
        for (int64_t i = 0; i < n; i++) o[i] = x[i] > 0 ? x[i] : p * expm1f(x[i]);
        break;
    case UN_CLIP:
        /* NaN stays NaN, as in NumPy's clip */
        for (int64_t i = 0; i < n; i++) o[i] = x[i] < p ? p : (x[i] > q ? q : x[i]);
        break;
    case UN_STEP:
        for (int64_t i = 0; i < n; i++) o[i] = x[i] > p ? 1.0f : 0.0f;
        break;
    case UN_SOFTPLUS: /* max(x, 0) + log1p(exp(-|x|)): exp never overflows; NaN stays NaN */
        for (int64_t i = 0; i < n; i++)
            o[i] = (x[i] > 0.0f ? x[i] : 0.0f) + log1pf(expf(-fabsf(x[i])));
        break;
    case UN_RANGE:
        for (int64_t i = 0; i < n; i++) o[i] = (x[i] >= p && x[i] <= q) ? 1.0f : 0.0f;
        break;
    }
    /* clang-format on */
}
ML_CPU_CLONES(un_kernel,
              (int k, int64_t n, const float *restrict x, float *restrict o, float p, float q),
              (k, n, x, o, p, q))

/* Large arrays are split over the thread pool in blocks whose starts are multiples of 64
 * elements: every element is computed by the same code (vector lanes stay aligned with an
 * unsplit run's), so the result does not depend on the thread count. */
#define UN_PAR_MIN (1 << 14)
typedef struct {
    int k;
    int64_t n, step;
    const float *x;
    float *o;
    float p, q;
} un_job;
static void un_part(void *ctx, int64_t i) {
    const un_job *j = ctx;
    int64_t lo = i * j->step, len = j->n - lo < j->step ? j->n - lo : j->step;
    un_kernel(j->k, len, j->x + lo, j->o + lo, j->p, j->q);
}
static void un_apply(int k, int64_t n, const float *x, float *o, float p, float q) {
    const int64_t step = ml__split_step(n, UN_PAR_MIN);
    if (step) {
        un_job j = {k, n, step, x, o, p, q};
        ml__parallel_for((n + step - 1) / step, 0, un_part, &j);
        return;
    }
    un_kernel(k, n, x, o, p, q);
}

typedef struct {
    int kernel;
    ml_op_id op;
    const char *name;
    float p, q;
} unary_params;
static ml_status unary_op(ml_tensor **out, ml_tensor *x, int kernel, ml_op_id op, const char *name,
                          float p, float q);
static ml_status replay_unary(ml_tensor **out, ml_tensor **in, const void *params) {
    const unary_params *u = params;
    return unary_op(out, in[0], u->kernel, u->op, u->name, u->p, u->q);
}

static ml_status unary_op(ml_tensor **out, ml_tensor *x, int kernel, ml_op_id op, const char *name,
                          float p, float q) {
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
    ML_TRACE(op, replay_unary, 1, &x, o, &up);
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
UNARY(ml_softplus, UN_SOFTPLUS, OP_SOFTPLUS, "softplus")
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
 * it can be fused with the relu (trace/fuse.c) */
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
UNARY_BACKWARD(
    ml__gelu_backward,
    MUL(&s, g,
        ADD(&s, MULS(&s, ADDS(&s, ERF(&s, MULS(&s, X, 0.70710678118654752f)), 1.0f), 0.5f),
            MUL(&s, X, MULS(&s, EXP(&s, MULS(&s, SQUARE(&s, X), -0.5f)), 0.3989422804014327f)))))
/* softplus'(x) = sigmoid(x) (1/2 at 0, as Keras and PyTorch) */
UNARY_BACKWARD(ml__softplus_backward, MUL(&s, g, SIGMOID(&s, X)))
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
 * relu_grad, not multiplied by a 0/1 mask: 0 * (out + alpha) is NaN at +inf and NaN. */
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
