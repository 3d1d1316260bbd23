/* matmul.c — batched matmul with transposes, and the fused linear layer act(x @ w + b). */
#include <math.h>

#include "ops.h"
#include "../kernels/gemm.h"
#include "fusion.h"

#define IN(k) (out->node->inputs[k])

/* ------------------------------------------------------------------- matmul */

/* The products of a batched matmul run in ranges of batch entries (one range unless noted
 * below); entry t's operands sit at the offsets its batch index gives. A batch of many
 * small products (MAML's per-task corrections: 32 tasks of 75x784x5) is too small per
 * product for a GEMM to split, but the batch can be: its ranges run over the thread pool,
 * each product computed exactly as on one thread (ml_sgemm does not split inside a pool
 * task). The batch splits from BATCH_PAR_MIN multiply-adds in all: small enough that
 * MAML Omniglot's 32 x 75 x 128 corrections split as the element-wise op that reads them
 * does (each thread then runs its own block first), large enough that a split pays for its
 * handoff (the maml-omniglot row of benchmarks/run_all.py at 2 threads set it). */
#define BATCH_PAR_MIN (1 << 19)
#define SPLIT_MACS (1 << 21) /* ml_sgemm's own threshold for splitting one product */

typedef struct {
    int ta, tb, nbatch;
    int64_t m, n, k, lda, ldb, step, batches;
    const int64_t *shape, *sa, *sb; /* batch dims and element strides (0: broadcast) */
    const float *a, *b;
    float *c;
} batch_job;

static void batch_part(void *ctx, int64_t part) {
    const batch_job *j = ctx;
    const int64_t t0 = part * j->step;
    const int64_t t1 = (part + 1) * j->step < j->batches ? (part + 1) * j->step : j->batches;
    /* one batch axis, products too small for ml_sgemm to split over threads: fixed
     * strides, one dispatch for the range (the results are the same bits either way) */
    if (j->nbatch == 1 && (double)j->m * j->n * j->k < SPLIT_MACS) {
        ml__sgemm_batch(j->ta, j->tb, j->m, j->n, j->k, 1.0f, j->a + t0 * j->sa[0], j->lda,
                        j->sa[0], j->b + t0 * j->sb[0], j->ldb, j->sb[0], 0.0f,
                        j->c + t0 * j->m * j->n, j->n, j->m * j->n, t1 - t0);
        return;
    }
    for (int64_t t = t0; t < t1; t++) {
        int64_t oa = 0, ob = 0, rest = t;
        for (int d = j->nbatch - 1; d >= 0; d--) {
            const int64_t i = rest % j->shape[d];
            rest /= j->shape[d];
            oa += i * j->sa[d];
            ob += i * j->sb[d];
        }
        ml_sgemm(j->ta, j->tb, j->m, j->n, j->k, 1.0f, j->a + oa, j->lda, j->b + ob, j->ldb, 0.0f,
                 j->c + t * j->m * j->n, j->n);
    }
}

/* outer: the product had k == 1 when traced (an outer product per batch entry), which a
 * trace may compute inside the element-wise op that reads it (trace/fuse.c); gemm: it was
 * one GEMM over a's rows (b 2-D, a not transposed), which may likewise apply an
 * element-wise op as it stores its elements */
typedef struct {
    int ta, tb, outer, gemm;
} matmul_params;
static ml_status replay_matmul(ml_tensor **out, ml_tensor **in, const void *params) {
    const matmul_params *p = params;
    return ml_matmul(out, in[0], in[1], p->ta, p->tb);
}
/* (fusion.h: the fuser asks an OP_MATMUL entry's parameters) */
int ml__matmul_traced_form(const void *params, int *ta, int *tb) {
    const matmul_params *p = params;
    *ta = p->ta;
    *tb = p->tb;
    return p->outer ? ML_PRODUCT_OUTER : p->gemm ? ML_PRODUCT_GEMM : 0;
}
typedef struct {
    ml_activation act;
} linear_params;
static ml_status replay_linear(ml_tensor **out, ml_tensor **in, const void *params) {
    return ml_linear(out, in[0], in[1], in[2], ((const linear_params *)params)->act);
}

ml_status ml_matmul(ml_tensor **out, ml_tensor *a, ml_tensor *b, int ta, int tb) {
    if (!a || !b) return ml_set_error(ML_ERR_VALUE, "matmul: input tensor is NULL");
    if (a->ndim < 2 || b->ndim < 2)
        return ml_set_error(ML_ERR_SHAPE,
                            "matmul: both inputs need at least 2 dimensions, got "
                            "shapes %s and %s",
                            ML_SHAPE_STR(a), ML_SHAPE_STR(b));
    int na = a->ndim, nb = b->ndim;
    int64_t m = ta ? a->shape[na - 1] : a->shape[na - 2];
    int64_t ka = ta ? a->shape[na - 2] : a->shape[na - 1];
    int64_t kb = tb ? b->shape[nb - 1] : b->shape[nb - 2];
    int64_t n = tb ? b->shape[nb - 2] : b->shape[nb - 1];
    if (ka != kb)
        return ml_set_error(ML_ERR_SHAPE, "matmul: shapes %s%s and %s%s do not align: %lld != %lld",
                            ML_SHAPE_STR(a), ta ? " (transposed)" : "", ML_SHAPE_STR(b),
                            tb ? " (transposed)" : "", (long long)ka, (long long)kb);
    /* broadcast the batch dims */
    int nbatch = (na > nb ? na : nb) - 2;
    int64_t shape[ML_MAX_DIMS];
    for (int i = 0; i < nbatch; i++) {
        int ia = na - 2 - nbatch + i, ib = nb - 2 - nbatch + i;
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return ml_set_error(ML_ERR_SHAPE,
                                "matmul: batch dimensions of %s and %s cannot be "
                                "broadcast together",
                                ML_SHAPE_STR(a), ML_SHAPE_STR(b));
        shape[i] = da == 1 ? db : da;
    }
    shape[nbatch] = m;
    shape[nbatch + 1] = n;
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, nbatch + 2, shape);
    if (st) return st;
    int64_t lda = a->shape[na - 1], ldb = b->shape[nb - 1];
    int64_t asz = a->shape[na - 2] * a->shape[na - 1], bsz = b->shape[nb - 2] * b->shape[nb - 1];
    int64_t batches = (m * n) != 0 ? o->numel / (m * n) : 0;
    if (nb == 2 && !ta) {
        /* every batch of a against one b: a single GEMM over all rows */
        ml_sgemm(0, tb, m * batches, n, ka, 1.0f, a->data, lda, b->data, ldb, 0.0f, o->data, n);
    } else {
        /* element strides of each batch index in a and b (0 where broadcast) */
        int64_t sa[ML_MAX_DIMS], sb[ML_MAX_DIMS];
        int64_t s_a = asz, s_b = bsz;
        for (int i = nbatch - 1; i >= 0; i--) {
            int ia = na - 2 - nbatch + i, ib = nb - 2 - nbatch + i;
            int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
            sa[i] = da == 1 ? 0 : s_a;
            sb[i] = db == 1 ? 0 : s_b;
            s_a *= da;
            s_b *= db;
        }
        const int threads = ml__in_parallel() ? 1 : ml_get_num_threads();
        int64_t parts = 1; /* (a product a GEMM would split itself stays in one range) */
        if (threads > 1 && batches > 1 && (double)batches * m * n * ka >= BATCH_PAR_MIN &&
            (double)m * n * ka < SPLIT_MACS)
            parts = threads;
        const int64_t step = batches > parts ? (batches + parts - 1) / parts : 1;
        batch_job j = {ta,   tb,      nbatch, m,  n,  ka,      lda,     ldb,
                       step, batches, shape,  sa, sb, a->data, b->data, o->data};
        ml__parallel_for((batches + step - 1) / step, 0, batch_part, &j);
    }
    ml_tensor *ins[2] = {a, b};
    ml_node *node = NULL;
    if (ml__should_record(2, ins)) {
        if ((st = ml__record(o, OP_MATMUL, 2, ins, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = ta;
        node->iparams[1] = tb;
    }
    matmul_params mp = {ta, tb, ka == 1, nb == 2 && !ta};
    ML_TRACE(OP_MATMUL, replay_matmul, 2, ins, o, &mp);
    *out = o;
    return ML_OK;
}

/* For C = op(A) op(B) with upstream G (Giles 2008, "matrix derivative results"):
 *   NN: dA = G B^T,   dB = A^T G        TN: dA = B G^T,   dB = A G
 *   NT: dA = G B,     dB = G^T A        TT: dA = B^T G^T, dB = G^T A^T
 * each written as one matmul with transpose flags, then summed over broadcast batches. */
ml_status ml__matmul_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *a = IN(0), *b = IN(1);
    int ta = (int)out->node->iparams[0], tb = (int)out->node->iparams[1];
    if (ml__wants(0, a)) {
        ml_tensor *ga = !ta ? MATMUL(&s, g, b, 0, !tb) : MATMUL(&s, b, g, tb, 1);
        gin[0] = ml__keep(SUM_TO(&s, ga, a));
    }
    if (ml__wants(1, b)) {
        ml_tensor *gb;
        if (b->ndim == 2 && a->ndim > 2 && !ta) {
            /* b shared by every batch: fold the batches into rows, one GEMM, no sum */
            int64_t k = a->shape[a->ndim - 1], n = g->shape[g->ndim - 1];
            int64_t a2[2] = {a->numel / (k ? k : 1), k}, g2[2] = {g->numel / (n ? n : 1), n};
            ml_tensor *af = RESHAPE(&s, a, 2, a2), *gf = RESHAPE(&s, g, 2, g2);
            gb = !tb ? MATMUL(&s, af, gf, 1, 0) : MATMUL(&s, gf, af, 1, 0);
        } else {
            gb = !tb ? MATMUL(&s, a, g, !ta, 0) : MATMUL(&s, g, a, 1, ta);
        }
        gin[1] = ml__keep(SUM_TO(&s, gb, b));
    }
    ml__scope_end(&s);
    return s.status;
}

/* ------------------------------------------------------------------- linear */

ml_status ml_linear(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, ml_activation act) {
    if (!x || !w) return ml_set_error(ML_ERR_VALUE, "linear: input tensor is NULL");
    if (act < ML_ACT_NONE || act > ML_ACT_TANH)
        return ml_set_error(ML_ERR_VALUE, "linear: unknown activation %d", (int)act);
    if (w->ndim != 2)
        return ml_set_error(ML_ERR_SHAPE, "linear: kernel must be 2-D (in, out), got shape %s",
                            ML_SHAPE_STR(w));
    int64_t k = w->shape[0], n = w->shape[1];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != k)
        return ml_set_error(ML_ERR_SHAPE, "linear: expected input with last dimension %lld, got %s",
                            (long long)k, ML_SHAPE_STR(x));
    if (b && (b->ndim != 1 || b->shape[0] != n))
        return ml_set_error(ML_ERR_SHAPE, "linear: bias must have shape (%lld,), got %s",
                            (long long)n, ML_SHAPE_STR(b));
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = n;
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim, shape);
    if (st) return st;
    int64_t rows = k ? x->numel / k : (n ? o->numel / n : 0);
    ml_sgemm(0, 0, rows, n, k, 1.0f, x->data, k, w->data, n, 0.0f, o->data, n);
    /* epilogue: bias and activation while the rows are in cache */
    float *od = o->data;
    const float *bd = b ? b->data : NULL;
    for (int64_t r = 0; r < rows; r++) {
        float *row = od + r * n;
        if (bd)
            for (int64_t j = 0; j < n; j++) row[j] += bd[j];
        switch (act) {
        case ML_ACT_RELU:
            /* relu's formula (elementwise.c): NaN passes, as in ml_relu */
            for (int64_t j = 0; j < n; j++) row[j] = 0.0f > row[j] ? 0.0f : row[j];
            break;
        case ML_ACT_SIGMOID:
            for (int64_t j = 0; j < n; j++) {
                float v = row[j];
                if (v >= 0)
                    row[j] = 1.0f / (1.0f + expf(-v));
                else {
                    float e = expf(v);
                    row[j] = e / (1.0f + e);
                }
            }
            break;
        case ML_ACT_TANH:
            for (int64_t j = 0; j < n; j++) row[j] = tanhf(row[j]);
            break;
        default: break;
        }
    }
    ml_tensor *ins[3] = {x, w, b};
    int nin = b ? 3 : 2;
    ml_node *node = NULL;
    if (ml__should_record(nin, ins)) {
        if ((st = ml__record(o, OP_LINEAR, nin, ins, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = act;
    }
    linear_params lp = {act};
    ML_TRACE(OP_LINEAR, replay_linear, 3, ins, o, &lp);
    *out = o;
    return ML_OK;
}

ml_status ml__linear_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *x = IN(0), *w = IN(1), *b = out->node->n_inputs > 2 ? IN(2) : NULL;
    ml_tensor *gz = g;
    /* clang-format off: a table, one case a line */
    switch ((ml_activation)out->node->iparams[0]) {
    case ML_ACT_RELU: gz = RELU_GRAD(&s, g, out); break; /* out <= 0 where z <= 0 */
    case ML_ACT_SIGMOID: gz = MUL(&s, g, MUL(&s, out, ADDS(&s, NEG(&s, out), 1.0f))); break;
    case ML_ACT_TANH: gz = MUL(&s, g, ADDS(&s, NEG(&s, SQUARE(&s, out)), 1.0f)); break;
    default: break;
    }
    /* clang-format on */
    int64_t k = w->shape[0], n = w->shape[1];
    int64_t rows = k ? x->numel / k : out->numel / (n ? n : 1);
    int64_t x2[2] = {rows, k}, g2[2] = {rows, n};
    ml_tensor *gz2 = RESHAPE(&s, gz, 2, g2);
    if (ml__wants(0, x)) gin[0] = ml__keep(RESHAPE_LIKE(&s, MATMUL(&s, gz2, w, 0, 1), x));
    if (ml__wants(1, w)) gin[1] = ml__keep(MATMUL(&s, RESHAPE(&s, x, 2, x2), gz2, 1, 0));
    if (ml__wants(2, b)) {
        int axis0 = 0;
        gin[2] = ml__keep(SUM_AXES(&s, gz2, 1, &axis0, 0));
    }
    ml__scope_end(&s);
    return s.status;
}
