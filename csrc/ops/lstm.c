/* lstm.c — the LSTM cell as one op (Keras' gates i, f, c, o; sigmoid and tanh), its
 * backward as one op, and that backward's backward as one pass, so a second-order MAML step
 * through an LSTM runs three fused passes per time step where it ran some forty ops.
 *
 *   lstm_cell(z, c_prev) = [h | c]            z (B, 4u): the gates' pre-activations
 *     i, f, o = sigmoid(z_i, z_f, z_o), g = tanh(z_c)
 *     c = f c_prev + i g,  h = o tanh(c)      (B, 2u): h then c along the last axis
 *
 * The forward also keeps the gates and tanh(c), s = [i | f | g | o | tanh(c)] (B, 5u), a
 * tensor of its own that its node (and the backward's) hold as an extra input needing no
 * gradient, as PyTorch saves tensors for a backward: the backwards read it instead of
 * computing the five transcendentals again. Their formulas differentiate through z, not s,
 * so s getting no gradient is exact.
 *
 * Orders of differentiation:
 *   1. lstm_cell's backward is lstm_cell_grad(z, c_prev, [dh | dc], s) = [dz | dc_prev]
 *      (B, 5u), one pass (two tensors without a narrow when nothing is recorded).
 *   2. lstm_cell_grad's backward: when nothing is recorded (grad mode off: MAML's outer
 *      gradient), one pass of the closed form below (lstm_cell_grad2, a trace entry only);
 *      when it is recorded (a third order), the same formula written with ops
 *      (grad2_formula), which recompute the gates from z and are differentiable again.
 * The two forms of each order compute the same formula; where grad mode differs, their
 * last bits may differ (as batch_norm's backward, ops/norm.c). */
#include <string.h>

#include "ops.h"
#include "../kernels/cpu.h"
#include "../kernels/vmath.h"
#include "fusion.h"

/* ------------------------------------------------------------------ kernels */

enum { K_FWD, K_GRAD, K_GRAD2 };

/* The rows [r0, r1) of one pass. Each row is computed by the same code whatever the split
 * (the thread count only decides which rows a thread takes), and the loops are plain
 * float arithmetic compiled twice (ML_CPU_CLONES: AVX2 without FMA, and baseline), so both
 * variants round alike; the forward's sigmoid and tanh are the vector math's
 * (kernels/vmath.c), the unary ops' own functions, so the forward gives the bits of the
 * composed ops (sigmoid, tanh, mul, add) wherever u is a multiple of 8 (the same 8-lane
 * groups).
 *   K_FWD:   a = z (B,4u), b = c_prev (B,u) -> o0 = [h | c] (B,2u), o1 = s (B,5u)
 *   K_GRAD:  a = s, b = c_prev, c = [dh | dc] (B,2u) -> o0 = dz (row stride s0),
 *            o1 = dc_prev (row stride s1)
 *   K_GRAD2: a = s, b = c_prev, c = [dh | dc], d = G = [Gz | Gc] (B,5u) -> o0 = dz,
 *            o1 = dc_prev, o2 = [ddh | ddc] (B,2u) */
/* One row of each pass, each pointer a distinct array (restrict parameters: GCC vectorises
 * the loops only when it knows that no output aliases an input). */
ML_INLINE void fwd_row(int64_t u, const float *restrict z, const float *restrict cp,
                       float *restrict h, float *restrict cn, float *restrict s) {
    float *si = s, *sf = s + u, *sg = s + 2 * u, *so = s + 3 * u, *st = s + 4 * u;
    ml__vsigmoid(2 * u, z, si); /* i and f lie side by side in z and in s */
    ml__vtanh(u, z + 2 * u, sg);
    ml__vsigmoid(u, z + 3 * u, so);
    for (int64_t j = 0; j < u; j++) cn[j] = sf[j] * cp[j] + si[j] * sg[j];
    ml__vtanh(u, cn, st);
    for (int64_t j = 0; j < u; j++) h[j] = so[j] * st[j];
}

ML_INLINE void grad_row(int64_t u, const float *restrict gi, const float *restrict gf,
                        const float *restrict gg, const float *restrict go,
                        const float *restrict tc, const float *restrict cp,
                        const float *restrict dh, const float *restrict dc, float *restrict zi,
                        float *restrict zf, float *restrict zg, float *restrict zo,
                        float *restrict dcp) {
    for (int64_t j = 0; j < u; j++) {
        const float t = tc[j], i = gi[j], f = gf[j], g = gg[j], o = go[j];
        const float dct = dc[j] + dh[j] * (o * (1.0f - t * t));
        zi[j] = dct * g * (i * (1.0f - i));
        zf[j] = dct * cp[j] * (f * (1.0f - f));
        zg[j] = dct * i * (1.0f - g * g);
        zo[j] = dh[j] * t * (o * (1.0f - o));
        dcp[j] = dct * f;
    }
}

/* The gradient of L = <G, lstm_cell_grad(z, c_prev, [dh | dc])> with respect to z, c_prev,
 * dh and dc. With dct = dc + dh o (1 - t^2), t = tanh(c):
 *   S  = Gi g i' + Gf c_prev f' + Gg i g' + Gc f   (dL/d dct; i' = i (1 - i), ...)
 *   Lc = (1 - t^2) dh (Go o' - 2 t o S)            (dL/dc through t)
 * and dL/d{i, f, g, o, c_prev} by the product rule, c = f c_prev + i g carrying Lc to i, f,
 * g and c_prev. */
ML_INLINE void grad2_row(int64_t u, const float *restrict s, const float *restrict cp,
                         const float *restrict dhc, const float *restrict G, float *restrict dz,
                         float *restrict dcp, float *restrict ddhc) {
    const float *gi = s, *gf = s + u, *gg = s + 2 * u, *go = s + 3 * u, *tc = s + 4 * u;
    const float *dh = dhc, *dc = dhc + u;
    const float *Gi = G, *Gf = G + u, *Gg = G + 2 * u, *Go = G + 3 * u, *Gc = G + 4 * u;
    for (int64_t j = 0; j < u; j++) {
        const float t = tc[j], i = gi[j], f = gf[j], g = gg[j], o = go[j], x = cp[j];
        const float h0 = dh[j];
        const float di = i * (1.0f - i), df = f * (1.0f - f), dg = 1.0f - g * g;
        const float dO = o * (1.0f - o), dt = 1.0f - t * t, q = o * dt;
        const float dct = dc[j] + h0 * q;
        const float S = Gi[j] * g * di + Gf[j] * x * df + Gg[j] * i * dg + Gc[j] * f;
        const float Lc = dt * h0 * (Go[j] * dO - 2.0f * t * o * S);
        const float Li = dct * (Gi[j] * g * (1.0f - 2.0f * i) + Gg[j] * dg) + Lc * g;
        const float Lf = dct * (Gf[j] * x * (1.0f - 2.0f * f) + Gc[j]) + Lc * x;
        const float Lg = dct * (Gi[j] * di - 2.0f * Gg[j] * i * g) + Lc * i;
        const float Lo = h0 * (S * dt + Go[j] * t * (1.0f - 2.0f * o));
        dz[j] = Li * di;
        dz[u + j] = Lf * df;
        dz[2 * u + j] = Lg * dg;
        dz[3 * u + j] = Lo * dO;
        dcp[j] = dct * Gf[j] * df + Lc * f;
        ddhc[j] = S * q + Go[j] * t * dO;
        ddhc[u + j] = S;
    }
}

/* The rows [r0, r1) of one pass. Each row is computed by the same code whatever the split
 * (the thread count only decides which rows a thread takes), and the loops are plain
 * float arithmetic compiled twice (ML_CPU_CLONES: AVX2 without FMA, and baseline), so both
 * variants round alike; the forward's sigmoid and tanh are the vector math's
 * (kernels/vmath.c), the unary ops' own functions, so the forward gives the bits of the
 * composed ops (sigmoid, tanh, mul, add) wherever u is a multiple of 8 (the same 8-lane
 * groups).
 *   K_FWD:   a = z (B,4u), b = c_prev (B,u) -> o0 = [h | c] (B,2u), o1 = s (B,5u)
 *   K_GRAD:  a = s, b = c_prev, c = [dh | dc] (B,2u) -> o0 = dz (row stride s0),
 *            o1 = dc_prev (row stride s1)
 *   K_GRAD2: a = s, b = c_prev, c = [dh | dc], d = G = [Gz | Gc] (B,5u) -> o0 = dz,
 *            o1 = dc_prev, o2 = [ddh | ddc] (B,2u) */
ML_INLINE void lstm_rows_body(int k, int64_t r0, int64_t r1, int64_t u, const float *a,
                              const float *b, const float *c, const float *d, float *o0, int64_t s0,
                              float *o1, int64_t s1, float *o2) {
    for (int64_t r = r0; r < r1; r++) {
        const float *cp = b + r * u;
        if (k == K_FWD) {
            float *h = o0 + r * 2 * u;
            fwd_row(u, a + r * 4 * u, cp, h, h + u, o1 + r * 5 * u);
        } else if (k == K_GRAD) {
            const float *s = a + r * 5 * u, *dh = c + r * 2 * u;
            float *dz = o0 + r * s0;
            grad_row(u, s, s + u, s + 2 * u, s + 3 * u, s + 4 * u, cp, dh, dh + u, dz, dz + u,
                     dz + 2 * u, dz + 3 * u, o1 + r * s1);
        } else {
            grad2_row(u, a + r * 5 * u, cp, c + r * 2 * u, d + r * 5 * u, o0 + r * s0, o1 + r * s1,
                      o2 + r * 2 * u);
        }
    }
}
ML_CPU_CLONES(lstm_rows,
              (int k, int64_t r0, int64_t r1, int64_t u, const float *a, const float *b,
               const float *c, const float *d, float *o0, int64_t s0, float *o1, int64_t s1,
               float *o2),
              (k, r0, r1, u, a, b, c, d, o0, s0, o1, s1, o2))

typedef struct {
    int k;
    int64_t rows, u, per;
    const float *a, *b, *c, *d;
    float *o0, *o1, *o2;
    int64_t s0, s1;
} rows_job;

static void rows_part(void *ctx, int64_t p) {
    const rows_job *j = ctx;
    const int64_t r0 = p * j->per, r1 = r0 + j->per < j->rows ? r0 + j->per : j->rows;
    lstm_rows(j->k, r0, r1, j->u, j->a, j->b, j->c, j->d, j->o0, j->s0, j->o1, j->s1, j->o2);
}

/* Whole rows per thread from ML_BIN_PAR_MIN elements of one gate on (as the element-wise
 * ops split): which rows a thread runs never changes a row's bits. */
static void run_rows(rows_job *j) {
    const int64_t step = ml__split_step(j->rows * j->u, ML_BIN_PAR_MIN);
    if (step && j->rows > 1) {
        j->per = (step + j->u - 1) / j->u;
        ml__parallel_for((j->rows + j->per - 1) / j->per, 0, rows_part, j);
        return;
    }
    lstm_rows(j->k, 0, j->rows, j->u, j->a, j->b, j->c, j->d, j->o0, j->s0, j->o1, j->s1, j->o2);
}

/* ------------------------------------------------------------------ checks */

/* z (B, 4u), c_prev (B, u): u from c_prev. */
static ml_status check_cell(const char *name, const ml_tensor *z, const ml_tensor *cp) {
    if (!z || !cp) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name);
    if (cp->ndim != 2 || cp->shape[1] < 1)
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: c_prev must have shape (batch, units) with units >= 1, got %s",
                            name, ML_SHAPE_STR(cp));
    if (z->ndim != 2 || z->shape[0] != cp->shape[0] || z->shape[1] != 4 * cp->shape[1])
        return ml_set_error(ML_ERR_SHAPE,
                            "%s: z must have shape (batch, 4 * units) = (%lld, %lld) for c_prev "
                            "of shape %s, got %s",
                            name, (long long)cp->shape[0], (long long)(4 * cp->shape[1]),
                            ML_SHAPE_STR(cp), ML_SHAPE_STR(z));
    return ML_OK;
}

/* the internal ops' other inputs, made by lstm_cell: a mismatch is a bug, not user input */
static ml_status check_like(const char *name, const ml_tensor *t, int64_t rows, int64_t cols,
                            const char *what) {
    if (!t || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return ml_set_error(ML_ERR_SHAPE, "%s: %s must have shape (%lld, %lld)", name, what,
                            (long long)rows, (long long)cols);
    return ML_OK;
}

static ml_status check_grad(const char *name, ml_tensor *z, ml_tensor *cp, ml_tensor *dhc,
                            ml_tensor *s, ml_tensor *G) {
    ml_status st = check_cell(name, z, cp);
    const int64_t B = st ? 0 : cp->shape[0], u = st ? 0 : cp->shape[1];
    if (!st) st = check_like(name, dhc, B, 2 * u, "the output gradient");
    if (!st) st = check_like(name, s, B, 5 * u, "the saved gates");
    if (!st && G) st = check_like(name, G, B, 5 * u, "the gradient of [dz | dc_prev]");
    return st;
}

static ml_status new2(ml_tensor **t, int64_t rows, int64_t cols) {
    const int64_t shape[2] = {rows, cols};
    return ml__new(t, 2, shape);
}

/* ------------------------------------------------------------------ forward */

/* [h | c] and s from z and c_prev (shapes checked), recorded on neither tape nor trace */
static ml_status cell_forward(ml_tensor **y, ml_tensor **s, ml_tensor *z, ml_tensor *cp) {
    const int64_t B = cp->shape[0], u = cp->shape[1];
    *y = *s = NULL;
    ml_status st = new2(y, B, 2 * u);
    if (!st) st = new2(s, B, 5 * u);
    if (st) {
        ml_release(*y), *y = NULL;
        return st;
    }
    rows_job j = {.k = K_FWD,
                  .rows = B,
                  .u = u,
                  .a = z->data,
                  .b = cp->data,
                  .o0 = (*y)->data,
                  .o1 = (*s)->data};
    run_rows(&j);
    return ML_OK;
}

typedef struct {
    int unused;
} none_params;

/* a trace's forward entry: [h | c] and s, as the eager call made them */
static ml_status replay_cell(ml_tensor **out, ml_tensor **in, const void *params) {
    (void)params;
    ml_status st = cell_forward(&out[0], &out[1], in[0], in[1]);
    if (st) return st;
    if (ml__should_record(2, in)) { /* a replay under grad mode: a tape as eagerly */
        ml_tensor *ins[3] = {in[0], in[1], out[1]};
        if ((st = ml__record(out[0], OP_LSTM_CELL, 3, ins, NULL))) {
            ml_release(out[0]), ml_release(out[1]);
            out[0] = out[1] = NULL;
        }
    }
    return st;
}

ml_status ml_lstm_cell(ml_tensor **out, ml_tensor *z, ml_tensor *c_prev) {
    ml_status st = check_cell("lstm_cell", z, c_prev);
    if (st) return st;
    ml_tensor *y = NULL, *s = NULL;
    if ((st = cell_forward(&y, &s, z, c_prev))) return st;
    ml_tensor *ins[3] = {z, c_prev, s};
    if (ml__should_record(2, ins) && (st = ml__record(y, OP_LSTM_CELL, 3, ins, NULL))) {
        ml_release(y), ml_release(s);
        return st;
    }
    if (ml__trace_active) {
        ml_tensor *outs[2] = {y, s};
        none_params p = {0};
        ml__trace_record_n(OP_LSTM_CELL, replay_cell, 2, ins, 2, outs, &p, sizeof p);
    }
    ml_release(s); /* the node holds it when recorded */
    *out = y;
    return ML_OK;
}

/* ------------------------------------------------------------ first order */

#define IN(k) (out->node->inputs[k])

/* dz (row stride s0) and dc_prev (row stride s1) into o0, o1 */
static void grad_pass(ml_tensor *s, ml_tensor *cp, ml_tensor *dhc, float *o0, int64_t s0, float *o1,
                      int64_t s1) {
    rows_job j = {.k = K_GRAD,
                  .rows = cp->shape[0],
                  .u = cp->shape[1],
                  .a = s->data,
                  .b = cp->data,
                  .c = dhc->data,
                  .o0 = o0,
                  .s0 = s0,
                  .o1 = o1,
                  .s1 = s1};
    run_rows(&j);
}

/* the recorded form: [dz | dc_prev] (B, 5u), a node of its own (its backward below) */
static ml_status replay_grad_joined(ml_tensor **out, ml_tensor **in, const void *params);
ml_status ml__lstm_cell_grad(ml_tensor **out, ml_tensor *z, ml_tensor *cp, ml_tensor *dhc,
                             ml_tensor *s) {
    ml_status st = check_grad("lstm_cell_grad", z, cp, dhc, s, NULL);
    if (st) return st;
    const int64_t B = cp->shape[0], u = cp->shape[1];
    ml_tensor *o = NULL;
    if ((st = new2(&o, B, 5 * u))) return st;
    grad_pass(s, cp, dhc, o->data, 5 * u, o->data + 4 * u, 5 * u);
    ml_tensor *ins[4] = {z, cp, dhc, s};
    if (ml__should_record(3, ins) && (st = ml__record(o, OP_LSTM_CELL_GRAD, 4, ins, NULL))) {
        ml_release(o);
        return st;
    }
    none_params p = {0};
    ML_TRACE(OP_LSTM_CELL_GRAD, replay_grad_joined, 4, ins, o, &p);
    *out = o;
    return ML_OK;
}
static ml_status replay_grad_joined(ml_tensor **out, ml_tensor **in, const void *params) {
    (void)params;
    return ml__lstm_cell_grad(out, in[0], in[1], in[2], in[3]);
}

/* A trace's entry for the unrecorded first order (grad mode off): dz and dc_prev, those of
 * `which` (bit 0, bit 1) in that order, from (s, c_prev, [dh | dc]). */
typedef struct {
    int which;
} which_params;

static ml_status grad_split(ml_tensor *s, ml_tensor *cp, ml_tensor *dhc, int which, ml_tensor **dz,
                            ml_tensor **dcp) {
    const int64_t B = cp->shape[0], u = cp->shape[1];
    ml_tensor *a = NULL, *b = NULL;
    ml_status st = new2(&a, B, 4 * u);
    if (!st) st = new2(&b, B, u);
    if (st) {
        ml_release(a), ml_release(b);
        return st;
    }
    grad_pass(s, cp, dhc, a->data, 4 * u, b->data, u); /* both: one pass, branch-free */
    if (which & 1)
        *dz = a;
    else
        ml_release(a);
    if (which & 2)
        *dcp = b;
    else
        ml_release(b);
    return ML_OK;
}

static ml_status replay_grad_split(ml_tensor **out, ml_tensor **in, const void *params) {
    const int which = ((const which_params *)params)->which;
    ml_tensor *o[2] = {NULL, NULL};
    ml_status st = grad_split(in[0], in[1], in[2], which, &o[0], &o[1]);
    if (st) return st;
    for (int w = 0, n = 0; w < 2; w++)
        if (which & (1 << w)) out[n++] = o[w];
    return ML_OK;
}

/* lstm_cell's backward: gin[0] = dz, gin[1] = dc_prev (IN(2), the saved gates: none) */
ml_status ml__lstm_cell_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_tensor *z = IN(0), *cp = IN(1), *s = IN(2);
    const int which = (ml__wants(0, z) ? 1 : 0) | (ml__wants(1, cp) ? 2 : 0);
    if (!which) return ML_OK;
    ml_status st = check_grad("lstm_cell_grad", z, cp, g, s, NULL);
    if (st) return st;
    if (!ml_is_grad_enabled()) { /* nothing recorded: both gradients in place, no narrows */
        if ((st = grad_split(s, cp, g, which, &gin[0], &gin[1]))) return st;
        if (ml__trace_active) {
            ml_tensor *ins[3] = {s, cp, g}, *outs[2];
            int n = 0;
            if (which & 1) outs[n++] = gin[0];
            if (which & 2) outs[n++] = gin[1];
            which_params p = {which};
            ml__trace_record_n(OP_LSTM_CELL_GRAD, replay_grad_split, 3, ins, n, outs, &p, sizeof p);
        }
        return ML_OK;
    }
    const int64_t u = cp->shape[1];
    ml_tensor *d = NULL;
    if ((st = ml__lstm_cell_grad(&d, z, cp, g, s))) return st;
    if (which & 1) st = ml_narrow(&gin[0], d, 1, 0, 4 * u);
    if (!st && (which & 2)) st = ml_narrow(&gin[1], d, 1, 4 * u, u);
    ml_release(d);
    if (st) {
        ml_release(gin[0]), ml_release(gin[1]);
        gin[0] = gin[1] = NULL;
    }
    return st;
}

/* ----------------------------------------------------------- second order */

/* dz, dc_prev and [ddh | ddc] of `which` (bits 0, 1, 2), from (s, c_prev, [dh | dc], G) */
static ml_status grad2_split(ml_tensor *s, ml_tensor *cp, ml_tensor *dhc, ml_tensor *G, int which,
                             ml_tensor **o) {
    const int64_t B = cp->shape[0], u = cp->shape[1];
    ml_tensor *t[3] = {NULL, NULL, NULL};
    ml_status st = new2(&t[0], B, 4 * u);
    if (!st) st = new2(&t[1], B, u);
    if (!st) st = new2(&t[2], B, 2 * u);
    if (st) {
        for (int w = 0; w < 3; w++) ml_release(t[w]);
        return st;
    }
    rows_job j = {.k = K_GRAD2,
                  .rows = B,
                  .u = u,
                  .a = s->data,
                  .b = cp->data,
                  .c = dhc->data,
                  .d = G->data,
                  .o0 = t[0]->data,
                  .s0 = 4 * u,
                  .o1 = t[1]->data,
                  .s1 = u,
                  .o2 = t[2]->data};
    run_rows(&j);
    for (int w = 0; w < 3; w++) {
        if (which & (1 << w))
            o[w] = t[w];
        else
            ml_release(t[w]);
    }
    return ML_OK;
}

static ml_status replay_grad2(ml_tensor **out, ml_tensor **in, const void *params) {
    const int which = ((const which_params *)params)->which;
    ml_tensor *o[3] = {NULL, NULL, NULL};
    ml_status st = grad2_split(in[0], in[1], in[2], in[3], which, o);
    if (st) return st;
    for (int w = 0, n = 0; w < 3; w++)
        if (which & (1 << w)) out[n++] = o[w];
    return ML_OK;
}

#define TANH(s, a) ML_S1(ml_tanh, s, a)
#define NARROW(s, a, start, len) ML_SX(s, a, ml_narrow(&o_, a_, 1, (start), (len)))
#define CONCAT(s, n, xs) ({                                                         \
    ml_tensor *o_ = NULL;                                                           \
    int ok_ = ML_S_OK(s);                                                           \
    for (int k_ = 0; k_ < (n); k_++) ok_ = ok_ && (xs)[k_];                         \
    ok_ ? ml__push((s), ml_concat(&o_, (n), (xs), 1), &o_) : NULL; })
/* 1 - a and 1 - 2a */
#define ONE_MINUS(s, a) ADDS(s, NEG(s, a), 1.0f)
#define ONE_MINUS_2(s, a) ADDS(s, MULS(s, a, -2.0f), 1.0f)

/* The same formula as K_GRAD2, written with differentiable ops on (z, c_prev, [dh | dc], G),
 * the gates recomputed from z: what a gradient of this order records. Three scopes, as
 * the formula makes more tensors than one holds; a failure leaves NULLs that the later
 * scopes pass on, and the first failing scope's status is returned. */
static ml_status grad2_formula(ml_tensor *z, ml_tensor *cp, ml_tensor *dhc, ml_tensor *G, int which,
                               ml_tensor **gin) {
    const int64_t u = cp->shape[1];
    ml_scope a = {0}, b = {0}, c = {0};
    ml_tensor *i = SIGMOID(&a, NARROW(&a, z, 0, u)), *f = SIGMOID(&a, NARROW(&a, z, u, u));
    ml_tensor *g = TANH(&a, NARROW(&a, z, 2 * u, u)), *o = SIGMOID(&a, NARROW(&a, z, 3 * u, u));
    ml_tensor *t = TANH(&a, ADD(&a, MUL(&a, f, cp), MUL(&a, i, g)));
    ml_tensor *dh = NARROW(&a, dhc, 0, u), *dc = NARROW(&a, dhc, u, u);
    ml_tensor *Gi = NARROW(&a, G, 0, u), *Gf = NARROW(&a, G, u, u), *Gg = NARROW(&a, G, 2 * u, u);
    ml_tensor *Go = NARROW(&a, G, 3 * u, u), *Gc = NARROW(&a, G, 4 * u, u);
    ml_tensor *di = MUL(&a, i, ONE_MINUS(&a, i)), *df = MUL(&a, f, ONE_MINUS(&a, f));
    ml_tensor *dg = ONE_MINUS(&a, SQUARE(&a, g)), *dO = MUL(&a, o, ONE_MINUS(&a, o));
    ml_tensor *dt = ONE_MINUS(&b, SQUARE(&b, t)), *q = MUL(&b, o, dt);
    ml_tensor *dct = ADD(&b, dc, MUL(&b, dh, q));
    ml_tensor *S = ADD(&b, ADD(&b, MUL(&b, MUL(&b, Gi, g), di), MUL(&b, MUL(&b, Gf, cp), df)),
                       ADD(&b, MUL(&b, MUL(&b, Gg, i), dg), MUL(&b, Gc, f)));
    ml_tensor *Lc = MUL(&b, MUL(&b, dt, dh),
                        SUB(&b, MUL(&b, Go, dO), MUL(&b, MULS(&b, MUL(&b, t, o), 2.0f), S)));
    ml_tensor *dz = NULL, *dcp = NULL, *ddhc = NULL;
    if (which & 1) {
        ml_tensor *Li = ADD(
            &c, MUL(&c, dct, ADD(&c, MUL(&c, MUL(&c, Gi, g), ONE_MINUS_2(&c, i)), MUL(&c, Gg, dg))),
            MUL(&c, Lc, g));
        ml_tensor *Lf = ADD(&c,
                            MUL(&c, dct, ADD(&c, MUL(&c, MUL(&c, Gf, cp), ONE_MINUS_2(&c, f)), Gc)),
                            MUL(&c, Lc, cp));
        ml_tensor *Lg = ADD(
            &c, MUL(&c, dct, SUB(&c, MUL(&c, Gi, di), MULS(&c, MUL(&c, MUL(&c, Gg, i), g), 2.0f))),
            MUL(&c, Lc, i));
        ml_tensor *Lo = MUL(&c, dh,
                            ADD(&c, MUL(&c, S, dt), MUL(&c, MUL(&c, Go, t), ONE_MINUS_2(&c, o))));
        ml_tensor *parts[4] = {MUL(&c, Li, di), MUL(&c, Lf, df), MUL(&c, Lg, dg), MUL(&c, Lo, dO)};
        dz = CONCAT(&c, 4, parts);
    }
    if (which & 2) dcp = ADD(&b, MUL(&b, MUL(&b, dct, Gf), df), MUL(&b, Lc, f));
    if (which & 4) {
        ml_tensor *parts[2] = {ADD(&b, MUL(&b, S, q), MUL(&b, MUL(&b, Go, t), dO)), S};
        ddhc = CONCAT(&b, 2, parts);
    }
    ml_status st = a.status ? a.status : b.status ? b.status : c.status;
    if (!st) {
        gin[0] = ml__keep(dz);
        gin[1] = ml__keep(dcp);
        gin[2] = ml__keep(ddhc);
    }
    ml__scope_end(&c);
    ml__scope_end(&b);
    ml__scope_end(&a);
    return st;
}

/* lstm_cell_grad's backward: gin[0..2] for z, c_prev and [dh | dc] (IN(3), s: none) */
ml_status ml__lstm_cell_grad_backward(ml_tensor *out, ml_tensor *G, ml_tensor **gin) {
    ml_tensor *z = IN(0), *cp = IN(1), *dhc = IN(2), *s = IN(3);
    const int which = (ml__wants(0, z) ? 1 : 0) | (ml__wants(1, cp) ? 2 : 0) |
                      (ml__wants(2, dhc) ? 4 : 0);
    if (!which) return ML_OK;
    ml_status st = check_grad("lstm_cell_grad2", z, cp, dhc, s, G);
    if (st) return st;
    if (ml_is_grad_enabled()) return grad2_formula(z, cp, dhc, G, which, gin);
    if ((st = grad2_split(s, cp, dhc, G, which, gin))) return st;
    if (ml__trace_active) {
        ml_tensor *ins[4] = {s, cp, dhc, G}, *outs[3];
        int n = 0;
        for (int w = 0; w < 3; w++)
            if (which & (1 << w)) outs[n++] = gin[w];
        which_params p = {which};
        ml__trace_record_n(OP_LSTM_CELL_GRAD2, replay_grad2, 4, ins, n, outs, &p, sizeof p);
    }
    return ML_OK;
}
