/* grad.c — ml_grad: reverse mode over the recorded graph, to any order.
 *
 * The layer above the ops: it runs each node's backward formula (the op's row,
 * ops/ops.h), and the formulas are written with the same differentiable ops, so under
 * ML_GRAD_CREATE_GRAPH the gradient is itself recorded. The steps, in order:
 *   1. check the arguments (check_args);
 *   2. the sub-graph that requires grad, in topological order (build_topo), and which of
 *      its tensors lead to an input (mark_needed): only their backward runs;
 *   3. seed the outputs (seed_outputs) and walk the slots in reverse (run_node), summing
 *      each input's gradient terms in that order, except two kinds kept apart until the
 *      tensor's own turn (settle): a narrow's term (all of a tensor's narrows: one concat)
 *      and a 2-D weight's term of a 2-D product (all of its products: one GEMM);
 *   4. zeros for an input reached only through piecewise-constant ops (fill_flat_zeros),
 *      then, when every input has one (check_used), hand the gradients out (hand_out). */
#include <math.h>

#include "../core/ptrmap.h"
#include "../ops/ops.h"

/* A gradient term that a narrow of the slot's tensor passes back: g for the rows
 * [start, start + g's length) of axis `axis`, zeros elsewhere. */
typedef struct {
    ml_tensor *g;
    int64_t start;
    int axis;
    int32_t order; /* arrival */
} piece;

/* Per tensor in the sub-graph: its gradient so far, whether it leads to an input, and the
 * terms kept apart until the tensor's own turn (settle): those its narrows passed back,
 * and, for a 2-D b of several products a @ b (or a @ b^T), the pairs (l, r) whose l^T r
 * are b's terms. */
typedef struct {
    ml_tensor *t;
    ml_tensor *grad;
    int needed;
    piece *pieces;
    int32_t n_pieces, cap_pieces;
    ml_tensor **pairs; /* l0, r0, l1, r1, ... */
    int32_t n_pairs, cap_pairs;
    /* a batch norm's output whose backward ran folded into a pool's (fold): the terms for
     * its node's inputs (x, gamma?, beta?), handed on at this slot's own turn */
    ml_tensor *folded[3];
    int has_folded;
} gslot;

typedef struct {
    gslot *slots;
    int32_t n, cap;
    ml_ptrmap map;  /* tensor -> its slot */
    int32_t *uses;  /* per slot: how often its tensor is an input of a node in the graph
                     * (count_uses, made at the first fold tried); NULL until then */
    int n_inputs;   /* ml_grad's inputs: their gradients are handed out, never folded */
    ml_tensor *const *inputs;
} graph;

/* Checks that inputs were not modified in place since they were recorded. */
static ml_status check_versions(const ml_tensor *out) {
    const ml_node *n = out->node;
    for (int i = 0; i < n->n_inputs; i++) {
        /* an input held as an edge only has no storage left: its values are never read */
        if (n->inputs[i]->storage && n->inputs[i]->storage->version != n->input_versions[i])
            return ml_set_error(ML_ERR_GRAPH,
                                "input %d of '%s' (shape %s) was modified in place after it was "
                                "used; its gradient would be wrong",
                                i, n->op->name, ML_SHAPE_STR(n->inputs[i]));
    }
    if (out->storage && out->storage->version != n->out_version)
        return ml_set_error(ML_ERR_GRAPH,
                            "the output of '%s' was modified in place after it was computed",
                            n->op->name);
    return ML_OK;
}

static int graph_add(graph *g, ml_tensor *t) {
    if (g->n == g->cap) {
        int32_t cap = g->cap ? 2 * g->cap : 64;
        gslot *s = realloc(g->slots, (size_t)cap * sizeof *s);
        if (!s) return -1;
        g->slots = s;
        g->cap = cap;
    }
    if (ml__ptrmap_put(&g->map, t, g->n) < 0) return -1;
    g->slots[g->n] = (gslot){.t = t};
    return g->n++;
}

/* Post-order DFS from the outputs without recursion: slots end up in topological order
 * (every tensor after all of its inputs). */
static ml_status build_topo(graph *g, int n_outputs, ml_tensor *const *outputs) {
    typedef struct {
        ml_tensor *t;
        int next;
    } frame;
    int32_t cap = 256, top = 0;
    frame *stack = malloc((size_t)cap * sizeof *stack);
    ml_ptrmap seen = {0};
    if (!stack || !ml__ptrmap_reserve(&seen, 64)) {
        free(stack);
        return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    }
    ml_status st = ML_OK;
    for (int o = 0; o < n_outputs && st == ML_OK; o++) {
        ml_tensor *root = outputs[o];
        if (ml__ptrmap_get(&seen, root) >= 0 || !root->requires_grad) continue;
        if (ml__ptrmap_put(&seen, root, 1) < 0) goto oom;
        stack[top++] = (frame){root, 0};
        while (top > 0) {
            frame *f = &stack[top - 1];
            ml_node *node = f->t->node;
            if (node && f->next < node->n_inputs) {
                ml_tensor *in = node->inputs[f->next++];
                if (!in->requires_grad || ml__ptrmap_get(&seen, in) >= 0) continue;
                if (ml__ptrmap_put(&seen, in, 1) < 0) goto oom;
                if (top == cap) {
                    frame *s = realloc(stack, (size_t)cap * 2 * sizeof *s);
                    if (!s) goto oom;
                    stack = s;
                    cap *= 2;
                }
                stack[top++] = (frame){in, 0};
                continue;
            }
            if (graph_add(g, f->t) < 0) goto oom;
            top--;
        }
    }
    free(stack);
    ml__ptrmap_free(&seen);
    return st;
oom:
    free(stack);
    ml__ptrmap_free(&seen);
    return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
}

/* Marks the tensors that lead to an input: only their backward needs to run. The slots
 * are in topological order, so one forward pass sees every input's mark first. */
static void mark_needed(graph *g, int n_inputs, ml_tensor *const *inputs) {
    for (int j = 0; j < n_inputs; j++) {
        int32_t k = ml__ptrmap_get(&g->map, inputs[j]);
        if (k >= 0) g->slots[k].needed = 1;
    }
    for (int32_t k = 0; k < g->n; k++) {
        ml_node *node = g->slots[k].t->node;
        if (!node || g->slots[k].needed) continue;
        for (int i = 0; i < node->n_inputs; i++) {
            int32_t p = ml__ptrmap_get(&g->map, node->inputs[i]);
            if (p >= 0 && g->slots[p].needed) {
                g->slots[k].needed = 1;
                break;
            }
        }
    }
}

/* Whether slot's sum may take g in place: nothing else holds the sum or its storage (a
 * backward's fresh result, not a view, a seed the caller passed or NumPy's memory), the add
 * would record nothing (no graph on either, or grad mode off: ml__should_record) and no
 * trace is watching (it would miss the add), and the shapes match (no broadcast). */
static int sum_in_place(const ml_tensor *sum, ml_tensor *g) {
    ml_tensor *ins[2] = {(ml_tensor *)sum, g};
    if (sum->refcount != 1 || sum->node || !sum->storage || sum->storage->refcount != 1 ||
        sum->storage->free_fn || ml__trace_active || ml__should_record(2, ins) ||
        sum->ndim != g->ndim)
        return 0;
    for (int d = 0; d < sum->ndim; d++)
        if (sum->shape[d] != g->shape[d]) return 0;
    return 1;
}

static ml_status accumulate(gslot *slot, ml_tensor *g) {
    if (!slot->grad) {
        ml_retain(g);
        slot->grad = g;
        return ML_OK;
    }
    if (sum_in_place(slot->grad, g)) return ml__add_into(slot->grad, g);
    ml_tensor *sum = NULL;
    ml_status st = ml_add(&sum, slot->grad, g);
    if (st) return st;
    ml_release(slot->grad);
    slot->grad = sum;
    return ML_OK;
}

/* Each output that requires grad starts with grad_outputs[o], or ones. */
static ml_status seed_outputs(graph *g, int n_outputs, ml_tensor *const *outputs,
                              ml_tensor *const *grad_outputs) {
    ml_status st = ML_OK;
    for (int o = 0; o < n_outputs && st == ML_OK; o++) {
        int32_t k = ml__ptrmap_get(&g->map, outputs[o]);
        if (k < 0) continue; /* does not require grad: contributes nothing */
        ml_tensor *seed = NULL;
        if (grad_outputs && grad_outputs[o]) {
            seed = grad_outputs[o];
            ml_retain(seed);
        } else if ((st = ml_tensor_full(&seed, outputs[o]->ndim, outputs[o]->shape, 1.0f))) {
            break;
        }
        st = accumulate(&g->slots[k], seed);
        ml_release(seed);
    }
    return st;
}

static ml_status add_piece(gslot *to, const gslot *from) {
    if (to->n_pieces == to->cap_pieces) {
        int32_t cap = to->cap_pieces ? 2 * to->cap_pieces : 8;
        piece *p = realloc(to->pieces, (size_t)cap * sizeof *p);
        if (!p) return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
        to->pieces = p;
        to->cap_pieces = cap;
    }
    const ml_node *node = from->t->node;
    ml_retain(from->grad);
    to->pieces[to->n_pieces] = (piece){from->grad, node->iparams[1], (int)node->iparams[0],
                                       to->n_pieces};
    to->n_pieces++;
    return ML_OK;
}

static ml_status add_pair(gslot *to, ml_tensor *l, ml_tensor *r) {
    if (to->n_pairs == to->cap_pairs) {
        int32_t cap = to->cap_pairs ? 2 * to->cap_pairs : 8;
        ml_tensor **p = realloc(to->pairs, (size_t)cap * 2 * sizeof *p);
        if (!p) return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
        to->pairs = p;
        to->cap_pairs = cap;
    }
    ml_retain(l);
    ml_retain(r);
    to->pairs[2 * to->n_pairs] = l;
    to->pairs[2 * to->n_pairs + 1] = r;
    to->n_pairs++;
    return ML_OK;
}

static int piece_cmp(const void *a, const void *b) {
    const piece *p = a, *q = b;
    if (p->start != q->start) return p->start < q->start ? -1 : 1;
    return p->order < q->order ? -1 : p->order > q->order;
}

static void drop_folded(gslot *slot) {
    for (int i = 0; i < 3; i++) ml_release(slot->folded[i]), slot->folded[i] = NULL;
    slot->has_folded = 0;
}

static void drop_deferred(gslot *slot) {
    for (int32_t i = 0; i < slot->n_pieces; i++) ml_release(slot->pieces[i].g);
    free(slot->pieces);
    slot->pieces = NULL;
    slot->n_pieces = slot->cap_pieces = 0;
    for (int32_t i = 0; i < 2 * slot->n_pairs; i++) ml_release(slot->pairs[i]);
    free(slot->pairs);
    slot->pairs = NULL;
    slot->n_pairs = slot->cap_pairs = 0;
}

/* Fewer pairs than this are summed term by term (l^T r each, in the order they came: in a
 * trace each product and its sum fuse into one accumulating GEMM, matmul_into, and two
 * copies would cost more than they save: the MAML sinusoid step's weights are used twice,
 * benchmarks/run_all.py maml-sin); this many or more are one GEMM. */
#define JOIN_PAIRS 4

/* b's term from its pairs: [l0; l1; ...]^T [r0; r1; ...] (the rows of all products in the
 * order their backward ran): one GEMM instead of one per product and their sum. */
static ml_status settle_pairs(gslot *slot) {
    int32_t n = slot->n_pairs;
    ml_status st = ML_OK;
    if (n < JOIN_PAIRS) {
        for (int32_t i = 0; i < n && st == ML_OK; i++) {
            ml_tensor *term = NULL;
            st = ml_matmul(&term, slot->pairs[2 * i], slot->pairs[2 * i + 1], 1, 0);
            if (st == ML_OK) st = accumulate(slot, term);
            ml_release(term);
        }
        return st;
    }
    ml_tensor *ls = NULL, *rs = NULL, *term = NULL;
    ml_tensor **parts = malloc((size_t)n * sizeof *parts);
    if (!parts) return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    for (int32_t i = 0; i < n; i++) parts[i] = slot->pairs[2 * i];
    st = ml_concat(&ls, n, parts, 0);
    for (int32_t i = 0; i < n; i++) parts[i] = slot->pairs[2 * i + 1];
    if (st == ML_OK) st = ml_concat(&rs, n, parts, 0);
    free(parts);
    if (st == ML_OK) st = ml_matmul(&term, ls, rs, 1, 0);
    if (st == ML_OK) st = accumulate(slot, term);
    ml_release(term);
    ml_release(ls);
    ml_release(rs);
    return st;
}

/* Adds the slot's narrow pieces to its gradient. Pieces along one axis that do not overlap
 * are one concat, zeros filling the rows no narrow took: each element is then the one term
 * that reached it, as the padded copies' sum gave (0 + g is g). Overlapping pieces (or
 * pieces along different axes) are padded and summed in the order they came. */
static ml_status settle(gslot *slot) {
    if (slot->n_pairs) {
        ml_status st = settle_pairs(slot);
        if (st) return st;
    }
    if (!slot->n_pieces) {
        drop_deferred(slot);
        return ML_OK;
    }
    piece *ps = slot->pieces;
    int32_t n = slot->n_pieces;
    const ml_tensor *x = slot->t;
    int axis = ps[0].axis;
    int disjoint = 1;
    for (int32_t i = 1; i < n; i++) disjoint &= ps[i].axis == axis;
    ml_status st = ML_OK;
    if (disjoint) {
        qsort(ps, (size_t)n, sizeof *ps, piece_cmp);
        for (int32_t i = 0; i + 1 < n; i++)
            disjoint &= ps[i].start + ps[i].g->shape[axis] <= ps[i + 1].start;
    }
    if (!disjoint) {
        /* back to arrival order, and the narrow's own backward (a padded copy) per piece */
        for (int32_t i = 0; i < n; i++)
            while (ps[i].order != i) {
                piece tmp = ps[ps[i].order];
                ps[ps[i].order] = ps[i];
                ps[i] = tmp;
            }
        for (int32_t i = 0; i < n && st == ML_OK; i++) {
            ml_tensor *pad = NULL;
            st = ml_pad_axis(&pad, ps[i].g, ps[i].axis, ps[i].start, x->shape[ps[i].axis]);
            if (st == ML_OK) st = accumulate(slot, pad);
            ml_release(pad);
        }
        drop_deferred(slot);
        return st;
    }
    /* the parts in row order: the pieces and, between them, zeros (made here: zeros[]) */
    ml_tensor **parts = malloc((size_t)(3 * n + 2) * sizeof *parts);
    if (!parts) return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    ml_tensor **zeros = parts + 2 * n + 1;
    int np = 0, nz = 0;
    int64_t at = 0, shape[ML_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    for (int32_t i = 0; i <= n && st == ML_OK; i++) {
        int64_t next = i < n ? ps[i].start : x->shape[axis];
        if (next > at) {
            shape[axis] = next - at;
            st = ml_tensor_full(&zeros[nz], x->ndim, shape, 0.0f);
            if (st) break;
            parts[np++] = zeros[nz++];
        }
        if (i < n) {
            parts[np++] = ps[i].g;
            at = ps[i].start + ps[i].g->shape[axis];
        }
    }
    if (st == ML_OK) {
        ml_tensor *whole = NULL;
        if (np == 1) {
            whole = parts[0];
            ml_retain(whole);
        } else {
            st = ml_concat(&whole, np, parts, axis);
        }
        if (st == ML_OK) st = accumulate(slot, whole);
        ml_release(whole);
    }
    for (int i = 0; i < nz; i++) ml_release(zeros[i]);
    free(parts);
    drop_deferred(slot);
    return st;
}

/* want[i]: whether node's input i has a slot that leads to an input of the call (its
 * gradient is wanted) */
static void wanted_inputs(const graph *g, const ml_node *node, unsigned char *want) {
    for (int i = 0; i < node->n_inputs; i++) {
        int32_t p = ml__ptrmap_get(&g->map, node->inputs[i]);
        want[i] = p >= 0 && g->slots[p].needed;
    }
}

/* Runs the backward of slot's node (slot has a gradient and leads to an input) and adds
 * each wanted input's term to that input's slot, in input order. */
static ml_status run_node(graph *g, gslot *slot) {
    ml_node *node = slot->t->node;
    ml_status st = check_versions(slot->t);
    if (st) return st;
    ml_tensor *gin_inline[3] = {0};
    ml_tensor **gin = node->n_inputs <= 3 ? gin_inline
                                          : calloc((size_t)node->n_inputs, sizeof *gin);
    if (!gin) return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    unsigned char want_inline[8];
    unsigned char *want = node->n_inputs <= 8 ? want_inline : malloc((size_t)node->n_inputs);
    if (!want) {
        if (gin != gin_inline) free(gin);
        return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    }
    wanted_inputs(g, node, want);
    /* b's term of a @ b (both 2-D, a not transposed) is a^T g, of a @ b^T g^T a: kept as
     * the pair (a, g) or (g, a), so that b's terms over all its products are one GEMM (a
     * weight used at every step of a recurrence, and at every step of its gradient)
     * instead of one small GEMM per product and their sum */
    int pair = node->op == &ml_op_table[OP_MATMUL] && want[1] && node->iparams[0] == 0 &&
               node->inputs[0]->ndim == 2 && node->inputs[1]->ndim == 2;
    int pair_tb = pair && node->iparams[1] != 0;
    if (pair) want[1] = 0;
    if (node->op == &ml_op_table[OP_NARROW]) {
        /* kept as a piece: the pieces of a tensor cut into steps or gates become one concat
         * instead of a zero-padded copy of the whole tensor per narrow, summed */
        if (want[0]) st = add_piece(&g->slots[ml__ptrmap_get(&g->map, node->inputs[0])], slot);
        if (want != want_inline) free(want);
        return st;
    }
    /* inputs whose storage went back (ML_RECOMPUTE) and whose values this backward reads:
     * recomputed for it, given back after it; one only a trace reads (trace_read), only
     * while a trace records */
    ml_tensor *remat[8];
    int n_remat = 0;
    for (int i = 0; i < node->n_inputs && st == ML_OK; i++) {
        ml_tensor *in = node->inputs[i];
        if (in->storage || (i < 30 && (node->edge_mask & (1u << i)))) continue;
        if (i < 30 && (node->op->trace_read & (1u << i)) && !ml__trace_active) continue;
        if ((st = ml__recompute(in)) == ML_OK && n_remat < 8) remat[n_remat++] = in;
    }
    if (st) {
        if (want != want_inline) free(want);
        if (gin != gin_inline) free(gin);
        return st;
    }
    const unsigned char *prev_want = ml__grad_wanted;
    ml__grad_wanted = want;
    st = node->op->backward(slot->t, slot->grad, gin);
    ml__grad_wanted = prev_want;
    for (int i = 0; i < node->n_inputs; i++) {
        if (st == ML_OK && gin[i] && want[i]) /* the input has a needed slot */
            st = accumulate(&g->slots[ml__ptrmap_get(&g->map, node->inputs[i])], gin[i]);
        ml_release(gin[i]);
    }
    if (st == ML_OK && pair)
        st = add_pair(&g->slots[ml__ptrmap_get(&g->map, node->inputs[1])],
                      pair_tb ? slot->grad : node->inputs[0],
                      pair_tb ? node->inputs[0] : slot->grad);
    /* after the pair took its reference: a recomputed `a` kept for the joined GEMM stays
     * (settle_pairs reads it after this node has run) */
    for (int i = 0; i < n_remat; i++) ml__maybe_drop(remat[i]);
    if (want != want_inline) free(want);
    if (gin != gin_inline) free(gin);
    return st;
}

/* ------------------------------------------------------------------ the pool fold
 * max_pool2d(batch_norm(x)) or max_pool2d(relu(batch_norm(x))), the conv4 networks' block,
 * in a first-order backward (grad mode off, no trace recording: ProtoNet's episodes, Keras'
 * fit, a MAML outer step's forward blocks where nothing else uses them): the pool's, the
 * relu's and the batch norm's backwards run as one at the pool's turn
 * (ml__batch_norm_backward_pooled), which makes what the pool (and the relu) pass back a
 * chunk of rows at a time inside batch norm's two passes instead of as tensors of the
 * block's input size, written and read back (the Omniglot ProtoNet episode's first block:
 * 40 MB each). The same formulas on the same rows: the same bits. Only where nothing else
 * can see the gradients skipped: the batch norm's output (and the relu's) each have one use
 * in the graph (the pool's, the relu's), are not inputs of this ml_grad and got no seed;
 * batch norm's terms reach its inputs at batch norm's own turn (hand_folded), so every
 * gradient sum adds its terms in the order the unfolded sweep adds them. */

static ml_status count_uses(graph *g) {
    g->uses = calloc((size_t)g->n + 1, sizeof *g->uses);
    if (!g->uses) return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    for (int32_t k = 0; k < g->n; k++) {
        const ml_node *node = g->slots[k].t->node;
        for (int i = 0; node && i < node->n_inputs; i++) {
            int32_t p = ml__ptrmap_get(&g->map, node->inputs[i]);
            if (p >= 0) g->uses[p]++;
        }
    }
    return ML_OK;
}

/* t's slot when one node of the graph uses t, once, and t's gradient is nobody else's to
 * see (not an input, no term yet); -1 otherwise */
static int32_t sole_use(const graph *g, const ml_tensor *t) {
    int32_t k = ml__ptrmap_get(&g->map, t);
    if (k < 0 || g->uses[k] != 1) return -1;
    const gslot *s = &g->slots[k];
    if (!s->needed || s->grad || s->n_pieces || s->n_pairs || s->has_folded) return -1;
    for (int j = 0; j < g->n_inputs; j++)
        if (g->inputs[j] == t) return -1;
    return k;
}

/* Runs slot's backward folded when slot is such a pool's output (*done = 1), else leaves it
 * to run_node (*done = 0). */
static ml_status try_fold(graph *g, gslot *slot, int *done) {
    *done = 0;
    ml_node *pool = slot->t->node;
    if (!ml__max_pool2d_foldable(pool) || ml_is_grad_enabled() || ml__trace_active) return ML_OK;
    /* the pool's input: y, or r = relu(y) (a relu then a pool: Keras' Sequential runs the
     * pool first, keras/models.py's _relu_then_max_pool, but a functional model may not) */
    ml_tensor *y = pool->inputs[0], *r = NULL;
    if (y->node && y->node->op == &ml_op_table[OP_RELU]) {
        r = y;
        y = r->node->inputs[0];
        if (!slot->t->storage) return ML_OK; /* the relu's mask is read off the pool's output */
    }
    if (!y->node || !ml__batch_norm_foldable(y->node)) return ML_OK;
    const ml_node *bn = y->node;
    /* what its backward reads: x, and gamma (beta is not read); one that went back is
     * recomputed by run_node's path instead */
    if (!bn->inputs[0]->storage || (bn->iparams[1] && !bn->inputs[1]->storage)) return ML_OK;
    ml_status st = ML_OK;
    if (!g->uses && (st = count_uses(g))) return st;
    const int32_t ky = sole_use(g, y);
    if (ky < 0 || (r && sole_use(g, r) < 0)) return ML_OK;
    if ((st = check_versions(slot->t)) || (r && (st = check_versions(r))) ||
        (st = check_versions(y)))
        return st;
    unsigned char want[3] = {0};
    wanted_inputs(g, bn, want);
    gslot *ys = &g->slots[ky];
    if ((st = ml__batch_norm_backward_pooled(bn, pool, r ? slot->t : NULL, slot->grad, want,
                                             ys->folded)))
        return st;
    ys->has_folded = 1;
    *done = 1;
    return ML_OK;
}

/* A folded batch norm's turn: its terms to its inputs, in input order (as run_node) */
static ml_status hand_folded(graph *g, gslot *slot) {
    const ml_node *bn = slot->t->node;
    ml_status st = ML_OK;
    for (int i = 0; i < bn->n_inputs && i < 3; i++)
        if (st == ML_OK && slot->folded[i])
            st = accumulate(&g->slots[ml__ptrmap_get(&g->map, bn->inputs[i])], slot->folded[i]);
    drop_folded(slot);
    return st;
}

/* The reverse topological sweep. An intermediate gradient is released once its node has
 * run; an input's is kept for the caller. */
static ml_status sweep(graph *g, int n_inputs, ml_tensor *const *inputs) {
    ml_status st = ML_OK;
    for (int32_t k = g->n - 1; k >= 0 && st == ML_OK; k--) {
        gslot *slot = &g->slots[k];
        if ((st = settle(slot))) break; /* every narrow of it has run: its pieces are in */
        if (slot->has_folded) {
            if ((st = hand_folded(g, slot))) break;
            continue;
        }
        if (!slot->t->node || !slot->needed || !slot->grad) continue;
        int folded = 0;
        if ((st = try_fold(g, slot, &folded))) break;
        if (!folded && (st = run_node(g, slot))) break;
        int is_input = 0;
        for (int j = 0; j < n_inputs; j++) is_input |= inputs[j] == slot->t;
        if (!is_input) {
            ml_release(slot->grad);
            slot->grad = NULL;
        }
    }
    return st;
}

/* An input the outputs depend on only through piecewise-constant ops (sign, step, a
 * relu's mask) got no gradient term: its gradient is zeros, as in TensorFlow and
 * PyTorch, not "unused". Under create_graph the zeros are step(x > +inf) recorded on x
 * (a flat op), so that differentiating them again gives zeros too. */
static ml_status fill_flat_zeros(graph *g, int n_inputs, ml_tensor *const *inputs,
                                 int create_graph) {
    ml_status st = ML_OK;
    for (int j = 0; j < n_inputs && st == ML_OK; j++) {
        int32_t k = ml__ptrmap_get(&g->map, inputs[j]);
        if (k < 0 || g->slots[k].grad) continue;
        const ml_tensor *x = inputs[j];
        st = create_graph ? ml_step(&g->slots[k].grad, inputs[j], INFINITY)
                          : ml_tensor_full(&g->slots[k].grad, x->ndim, x->shape, 0.0f);
    }
    return st;
}

/* Every input has a gradient, unless ML_GRAD_ALLOW_UNUSED lets it have none. */
static ml_status check_used(graph *g, int n_inputs, ml_tensor *const *inputs, int allow_unused) {
    for (int j = 0; j < n_inputs; j++) {
        int32_t k = ml__ptrmap_get(&g->map, inputs[j]);
        if (!(k >= 0 ? g->slots[k].grad : NULL) && !allow_unused)
            return ml_set_error(ML_ERR_GRAPH,
                                "grad: input %d (shape %s) is not used to compute the outputs "
                                "(pass allow_unused=True to get None)",
                                j, ML_SHAPE_STR(inputs[j]));
    }
    return ML_OK;
}

/* grads[j] (NULL on entry): input j's gradient as a new reference, NULL when unused; all
 * NULL again on failure. */
static ml_status hand_out(graph *g, ml_tensor **grads, int n_inputs, ml_tensor *const *inputs,
                          int create_graph) {
    ml_status st = ML_OK;
    for (int j = 0; j < n_inputs; j++) {
        int32_t k = ml__ptrmap_get(&g->map, inputs[j]);
        grads[j] = k >= 0 ? g->slots[k].grad : NULL;
        if (grads[j] && !create_graph && grads[j]->node) {
            /* Without create_graph nothing was recorded; a grad_output passed in may still
             * carry a graph: hand back a leaf. */
            ml_tensor *leaf = NULL;
            st = ml_detach(&leaf, grads[j]);
            if (st) break;
            grads[j] = leaf;
            continue;
        }
        ml_retain(grads[j]);
    }
    if (st) {
        for (int j = 0; j < n_inputs; j++) ml_release(grads[j]), grads[j] = NULL;
    }
    return st;
}

static ml_status check_args(int n_outputs, ml_tensor *const *outputs, int n_inputs,
                            ml_tensor *const *inputs, ml_tensor *const *grad_outputs,
                            unsigned flags) {
    const unsigned known = ML_GRAD_CREATE_GRAPH | ML_GRAD_ALLOW_UNUSED;
    if (flags & ~known)
        return ml_set_error(ML_ERR_VALUE,
                            "grad: unknown flags 0x%x (known: ML_GRAD_CREATE_GRAPH "
                            "0x%x, ML_GRAD_ALLOW_UNUSED 0x%x)",
                            flags & ~known, (unsigned)ML_GRAD_CREATE_GRAPH,
                            (unsigned)ML_GRAD_ALLOW_UNUSED);
    if (n_outputs < 1 || n_inputs < 1)
        return ml_set_error(ML_ERR_VALUE, "grad needs at least one output and one input");
    for (int j = 0; j < n_inputs; j++) {
        if (!inputs[j]) return ml_set_error(ML_ERR_VALUE, "grad: input %d is NULL", j);
        if (!inputs[j]->requires_grad)
            return ml_set_error(ML_ERR_GRAPH,
                                "grad: input %d (shape %s) does not require grad; set "
                                "requires_grad=True on it before computing the outputs",
                                j, ML_SHAPE_STR(inputs[j]));
    }
    for (int o = 0; o < n_outputs; o++) {
        if (!outputs[o]) return ml_set_error(ML_ERR_VALUE, "grad: output %d is NULL", o);
        if (grad_outputs && grad_outputs[o]) {
            if (!ml__same_shape(grad_outputs[o], outputs[o]))
                return ml_set_error(
                    ML_ERR_SHAPE, "grad: grad_outputs[%d] has shape %s but output %d has shape %s",
                    o, ML_SHAPE_STR(grad_outputs[o]), o, ML_SHAPE_STR(outputs[o]));
        } else if (outputs[o]->numel != 1) {
            return ml_set_error(ML_ERR_SHAPE,
                                "grad: output %d has shape %s; a non-scalar output needs "
                                "grad_outputs",
                                o, ML_SHAPE_STR(outputs[o]));
        }
    }
    return ML_OK;
}

ml_status ml_grad(ml_tensor **grads, int n_outputs, ml_tensor *const *outputs, int n_inputs,
                  ml_tensor *const *inputs, ml_tensor *const *grad_outputs, unsigned flags) {
    ml_status st = check_args(n_outputs, outputs, n_inputs, inputs, grad_outputs, flags);
    if (st) return st;
    const int create_graph = (flags & ML_GRAD_CREATE_GRAPH) != 0;
    const int allow_unused = (flags & ML_GRAD_ALLOW_UNUSED) != 0;

    graph g = {.n_inputs = n_inputs, .inputs = inputs};
    if (!ml__ptrmap_reserve(&g.map, 64))
        return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    st = build_topo(&g, n_outputs, outputs);
    /* the backward formulas record only under create_graph */
    int prev_mode = ml_set_grad_enabled(create_graph);
    if (st == ML_OK) {
        mark_needed(&g, n_inputs, inputs);
        st = seed_outputs(&g, n_outputs, outputs, grad_outputs);
        if (st == ML_OK) st = sweep(&g, n_inputs, inputs);
        if (st == ML_OK) st = fill_flat_zeros(&g, n_inputs, inputs, create_graph);
        if (st == ML_OK) st = check_used(&g, n_inputs, inputs, allow_unused);
        for (int j = 0; j < n_inputs; j++) grads[j] = NULL;
        if (st == ML_OK) st = hand_out(&g, grads, n_inputs, inputs, create_graph);
    }
    ml_set_grad_enabled(prev_mode);
    for (int32_t k = 0; k < g.n; k++) {
        ml_release(g.slots[k].grad);
        drop_deferred(&g.slots[k]);
        drop_folded(&g.slots[k]);
    }
    free(g.slots);
    free(g.uses);
    ml__ptrmap_free(&g.map);
    return st;
}
