/* fuse.c — the fuser: when a trace ends, pairs of entries where the second is the only
 * reader of the first's output become one entry, in the second's place, where a rule of
 * the table below gives the pair a fused form (fused.c: the same bits, one pass instead of
 * two, the intermediate never written).
 *
 * The first may be any number of entries earlier, provided that no entry in between works
 * in place (an optimizer step: its out is -1), so the first's inputs hold the same values
 * at the second; slots are otherwise written once. A failed allocation leaves the pair as
 * it was. The fuser reads what each entry is from its op id and its slots' shapes; of an
 * op's parameters it reads only what the op shows through a typed accessor (ops/fusion.h)
 * and the fused forms' own. */
#include <string.h>

#include "../ops/fusion.h"
#include "fuse.h"

/* A pair the rules look at: the producer e, its only reader f, and which of f's inputs e's
 * output is. */
typedef struct {
    const ml_trace *tr;
    const trace_entry *e, *f;
    int t_index;
} fuse_pair;

/* Fills a fused entry's parameters (at most ML_FUSED_PARAMS bytes) and their size; 0 when
 * the fused form cannot hold this pair. */
typedef int (*fuse_params_fn)(const fuse_pair *p, void *params, size_t *size);

/* A reader class: any op the broadcast binary kernel computes (ml__binary_kernel), or the
 * fused add + relu_grad; both broadcast their operands themselves. */
#define READS_ELEMENTWISE (-1)

typedef struct {
    int pass;           /* rules run pass by pass (below) */
    ml_op_id producer;
    int form;           /* OP_MATMUL: ML_PRODUCT_OUTER / ML_PRODUCT_GEMM (ops/fusion.h) */
    int reader;         /* an op id, or READS_ELEMENTWISE */
    int t_max;          /* the producer's output is the reader's input 0..t_max */
    ml_op_id fused;     /* what the pair becomes */
    ml_replay_fn replay;
    fuse_params_fn params;
} fuse_rule;

/* The reader's recorded op, kept in a fused form (its fallback; what it computes). */
static int set_reader(ml_fused_reader *r, const fuse_pair *p) {
    const trace_entry *f = p->f;
    if (f->n_in > 3 || f->params_size > sizeof r->p2) return 0;
    *r = (ml_fused_reader){f->op,   f->op == OP_ADD_RELU_GRAD ? -1 : ml__binary_kernel(f->op),
                           f->fn,   p->t_index,
                           f->n_in, f->params_size,
                           {0}};
    memcpy(r->p2, f->params, f->params_size);
    return 1;
}

static int no_params(const fuse_pair *p, void *params, size_t *size) {
    (void)p, (void)params;
    *size = 0;
    return 1;
}

/* the product's transposes (a matmul entry, or the matmul_view it became) */
static ml_matmul_view_params product_of(const trace_entry *e) {
    if (e->op == OP_MATMUL_VIEW) return *(const ml_matmul_view_params *)e->params;
    ml_matmul_view_params v = {0};
    ml__matmul_traced_form(e->params, &v.ta, &v.tb);
    return v;
}

static int broadcast_into(const fuse_pair *p, void *params, size_t *size) {
    ml_broadcast_into_params bp = {0};
    const int64_t *target = p->tr->slot_shapes[p->e->out]; /* broadcast_to's shape */
    bp.ndim = (int)target[0];
    memcpy(bp.shape, target + 1, (size_t)bp.ndim * sizeof *bp.shape);
    if (!set_reader(&bp.r, p)) return 0;
    memcpy(params, &bp, sizeof bp);
    *size = sizeof bp;
    return 1;
}

static int outer_into(const fuse_pair *p, void *params, size_t *size) {
    const ml_matmul_view_params v = product_of(p->e);
    ml_outer_into_params op = {.ta = v.ta, .tb = v.tb};
    if (!set_reader(&op.r, p)) return 0;
    memcpy(params, &op, sizeof op);
    *size = sizeof op;
    return 1;
}

static int matmul_view(const fuse_pair *p, void *params, size_t *size) {
    ml_matmul_view_params v = product_of(p->e);
    const int64_t *target = p->tr->slot_shapes[p->f->out]; /* the reshape's shape */
    v.ndim = (int)target[0];
    memcpy(v.shape, target + 1, (size_t)v.ndim * sizeof *v.shape);
    memcpy(params, &v, sizeof v);
    *size = sizeof v;
    return 1;
}

static int matmul_into(const fuse_pair *p, void *params, size_t *size) {
    ml_matmul_into_params mp = {.v = product_of(p->e)};
    if (!set_reader(&mp.r, p)) return 0;
    memcpy(params, &mp, sizeof mp);
    *size = sizeof mp;
    return 1;
}

/* The rules. Pass by pass: the add + relu and add + relu_grad pairs form first (an outer
 * product, a broadcast or a product fused into the add would leave the add no fused form
 * with its relu or relu_grad); then outer products, broadcasts and other products into
 * their element-wise readers; a product first takes in its reshape (pass 3), then, as a
 * matmul_view, the reshape's reader (pass 4). */
static const fuse_rule rules[] = {
    /* pass producer    form              reader             t  fused */
    {0, OP_ADD, 0, OP_RELU, 0, OP_ADD_RELU, ml__replay_add_relu, no_params},
    {0, OP_ADD, 0, OP_RELU_GRAD, 0, OP_ADD_RELU_GRAD, ml__replay_add_relu_grad, no_params},
    {1, OP_MATMUL, ML_PRODUCT_OUTER, READS_ELEMENTWISE, 1, OP_OUTER_INTO, ml__replay_outer_into,
     outer_into},
    {2, OP_BROADCAST_TO, 0, READS_ELEMENTWISE, 1, OP_BROADCAST_INTO, ml__replay_broadcast_into,
     broadcast_into},
    {3, OP_MATMUL, ML_PRODUCT_GEMM, OP_RESHAPE, 0, OP_MATMUL_VIEW, ml__replay_matmul_view,
     matmul_view},
    {3, OP_MATMUL, ML_PRODUCT_GEMM, READS_ELEMENTWISE, 1, OP_MATMUL_INTO, ml__replay_matmul_into,
     matmul_into},
    {4, OP_MATMUL_VIEW, 0, READS_ELEMENTWISE, 1, OP_MATMUL_INTO, ml__replay_matmul_into,
     matmul_into},
};
#define N_RULES ((int)(sizeof rules / sizeof rules[0]))
_Static_assert(OP_COUNT <= 256, "a fused entry keeps its parts' op ids in bytes");
#define N_PASSES 5

static int form_of(const trace_entry *e) {
    int ta, tb;
    return e->op == OP_MATMUL ? ml__matmul_traced_form(e->params, &ta, &tb) : 0;
}

/* Whether a rule of this pass takes e as its producer. */
static int is_producer(int pass, const trace_entry *e) {
    for (int r = 0; r < N_RULES; r++)
        if (rules[r].pass == pass && rules[r].producer == e->op && rules[r].form == form_of(e))
            return 1;
    return 0;
}

static int reads(const fuse_rule *rule, const fuse_pair *p) {
    const ml_op_id op = p->f->op;
    if (p->t_index < 0 || p->t_index > rule->t_max) return 0;
    if (rule->reader == READS_ELEMENTWISE)
        return ml__binary_kernel(op) >= 0 || op == OP_ADD_RELU_GRAD;
    return (int)op == rule->reader;
}

/* The recorded ops an entry computes: its own, or those it was fused from. */
static int parts_of(const trace_entry *x, unsigned char *parts) {
    if (x->n_parts) {
        memcpy(parts, x->parts, (size_t)x->n_parts);
        return x->n_parts;
    }
    parts[0] = (unsigned char)x->op;
    return 1;
}

/* The first rule of this pass that fuses the pair: its parameters into params. */
static const fuse_rule *match(int pass, const fuse_pair *p, void *params, size_t *size) {
    for (int r = 0; r < N_RULES; r++) {
        const fuse_rule *rule = &rules[r];
        if (rule->pass == pass && rule->producer == p->e->op && rule->form == form_of(p->e) &&
            reads(rule, p) && rule->params(p, params, size))
            return rule;
    }
    return NULL;
}

/* Replaces f by the fused entry of (e, f) by the rule; e is then gone. 0 (and nothing
 * changed) when out of memory. */
static int fuse_entry(ml_trace *tr, trace_entry *e, trace_entry *f, int t_index,
                      const fuse_rule *rule, const void *params, size_t params_size) {
    const int n_in = e->n_in + f->n_in - 1;
    int32_t *in = malloc((size_t)n_in * sizeof *in);
    void *p = malloc(params_size ? params_size : 1);
    if (!in || !p) {
        free(in);
        free(p);
        return 0;
    }
    int w = 0;
    for (int i = 0; i < e->n_in; i++) in[w++] = e->in[i];
    for (int i = 0; i < f->n_in; i++)
        if (i != t_index) in[w++] = f->in[i];
    if (params_size) memcpy(p, params, params_size);
    unsigned char parts[2 * ML_TRACE_MAX_PARTS];
    int n_parts = parts_of(e, parts);
    n_parts += parts_of(f, parts + n_parts);
    ML_ASSERT(n_parts <= ML_TRACE_MAX_PARTS);
    if (n_parts > ML_TRACE_MAX_PARTS) n_parts = ML_TRACE_MAX_PARTS; /* (only what prints) */
    const int32_t j = (int32_t)(f - tr->entries);
    free(f->in);
    free(f->params);
    *f = (trace_entry){.fn = rule->replay,
                       .in = in,
                       .params = p,
                       .params_size = params_size,
                       .n_in = n_in,
                       .out = f->out,
                       .op = rule->fused,
                       .n_parts = (unsigned char)n_parts};
    memcpy(f->parts, parts, (size_t)n_parts);
    /* e's inputs are now read at j: extend their last use (slot freeing at replay) */
    for (int i = 0; i < e->n_in; i++)
        if (e->in[i] >= 0 && tr->last_use[e->in[i]] < j) tr->last_use[e->in[i]] = j;
    free(e->in);
    free(e->params);
    return 1;
}

/* One pass: each producer of the pass whose only reader is fused with it, in entry
 * order. Returns the number of pairs fused. */
static int fuse_pass(ml_trace *tr, int pass) {
    const int32_t n = tr->n_entries;
    int32_t *reads_of = calloc((size_t)(tr->n_slots ? tr->n_slots : 1), sizeof *reads_of);
    int32_t *barrier = malloc((size_t)(n + 1) * sizeof *barrier); /* in-place entries before k */
    unsigned char *gone = calloc((size_t)(n ? n : 1), 1);
    int fused = 0;
    if (!reads_of || !barrier || !gone) goto done;
    barrier[0] = 0;
    for (int32_t k = 0; k < n; k++) {
        const trace_entry *e = &tr->entries[k];
        for (int i = 0; i < e->n_in; i++)
            if (e->in[i] >= 0) reads_of[e->in[i]]++;
        barrier[k + 1] = barrier[k] + (e->out < 0);
    }
    for (int32_t k = 0; k < n; k++) {
        trace_entry *e = &tr->entries[k];
        if (e->out < 0 || e->n_extra || reads_of[e->out] != 1 || !is_producer(pass, e)) continue;
        const int32_t j = tr->last_use[e->out]; /* its only reader (n_entries: an output) */
        if (j <= k || j >= n || barrier[j] != barrier[k + 1]) continue;
        trace_entry *f = &tr->entries[j];
        if (f->out < 0 || f->n_extra) continue;
        int t_index = -1;
        for (int i = 0; i < f->n_in; i++)
            if (f->in[i] == e->out) t_index = i;
        const fuse_pair pair = {tr, e, f, t_index};
        unsigned char params[ML_FUSED_PARAMS];
        size_t params_size = 0;
        const fuse_rule *rule = match(pass, &pair, params, &params_size);
        if (!rule || !fuse_entry(tr, e, f, t_index, rule, params, params_size)) continue;
        gone[k] = 1;
        fused++;
    }
    if (fused) {
        int32_t w = 0;
        for (int32_t k = 0; k < n; k++)
            if (!gone[k]) tr->entries[w++] = tr->entries[k];
        tr->n_entries = w;
        ml__trace_last_use(tr);
    }
done:
    free(reads_of);
    free(barrier);
    free(gone);
    return fused;
}

void ml__trace_fuse(ml_trace *tr) {
    for (int pass = 0; pass < N_PASSES; pass++) fuse_pass(tr, pass);
}
