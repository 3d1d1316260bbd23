/* autograd.c — grad mode, recording nodes, and ml_grad (reverse mode, any order). */
#include <math.h>

#include "internal.h"
#include "ptrmap.h"

static _Thread_local int ml_grad_disabled; /* 0: grad mode on (the default) */
_Thread_local const unsigned char *ml__grad_wanted;

int ml_grad_enabled(void) { return !ml_grad_disabled; }

int ml_set_grad_enabled(int enabled) {
    int prev = !ml_grad_disabled;
    ml_grad_disabled = !enabled;
    return prev;
}

int ml__should_record(int n, ml_tensor *const *inputs) {
    if (ml_grad_disabled) return 0;
    for (int i = 0; i < n; i++)
        if (inputs[i] && inputs[i]->requires_grad) return 1;
    return 0;
}

ml_status ml__record(ml_tensor *out, ml_op_id op, int n, ml_tensor *const *inputs,
                     ml_node **node_out) {
    ml_node *node = ml__node_alloc(); /* zeroed */
    if (!node) return ml_set_error(ML_ERR_OOM, "out of memory recording '%s'", ml_op_table[op].name);
    if (n <= 3) {
        node->inputs = node->inputs_inline;
        node->input_versions = node->versions_inline;
    } else {
        node->inputs = malloc((size_t)n * sizeof *node->inputs);
        node->input_versions = malloc((size_t)n * sizeof *node->input_versions);
        if (!node->inputs || !node->input_versions) {
            free(node->inputs);
            free(node->input_versions);
            ml__node_free(node);
            return ml_set_error(ML_ERR_OOM, "out of memory recording '%s'", ml_op_table[op].name);
        }
    }
    node->op = op;
    node->n_inputs = n;
    for (int i = 0; i < n; i++) {
        node->inputs[i] = inputs[i];
        node->input_versions[i] = inputs[i]->storage->version;
        ml_retain(inputs[i]);
    }
    node->out_version = out->storage->version;
    out->node = node;
    out->requires_grad = 1;
    if (node_out) *node_out = node;
    return ML_OK;
}

ml_status ml__check_versions(const ml_tensor *out) {
    const ml_node *n = out->node;
    for (int i = 0; i < n->n_inputs; i++) {
        if (n->inputs[i]->storage->version != n->input_versions[i])
            return ml_set_error(ML_ERR_GRAPH,
                                "input %d of '%s' (shape %s) was modified in place after it was "
                                "used; its gradient would be wrong",
                                i, ml_op_table[n->op].name, ML_SHAPE_STR(n->inputs[i]));
    }
    if (out->storage->version != n->out_version)
        return ml_set_error(ML_ERR_GRAPH,
                            "the output of '%s' was modified in place after it was computed",
                            ml_op_table[n->op].name);
    return ML_OK;
}

/* ------------------------------------------------------------------ ml_grad */

/* Per tensor in the sub-graph: its gradient so far and whether it leads to an input. */
typedef struct {
    ml_tensor *t;
    ml_tensor *grad;
    int needed;
} gslot;

typedef struct {
    gslot *slots;
    int32_t n, cap;
    ml_ptrmap map; /* tensor -> its slot */
} graph;

static int graph_add(graph *g, ml_tensor *t) {
    if (g->n == g->cap) {
        int32_t cap = g->cap ? 2 * g->cap : 64;
        gslot *s = realloc(g->slots, (size_t)cap * sizeof *s);
        if (!s) return -1;
        g->slots = s;
        g->cap = cap;
    }
    if (ml__ptrmap_put(&g->map, t, g->n) < 0) return -1;
    g->slots[g->n] = (gslot){t, NULL, 0};
    return g->n++;
}

/* Post-order DFS from the outputs without recursion: slots end up in topological order
 * (every tensor after all of its inputs). */
static ml_status build_topo(graph *g, int n_outputs, ml_tensor *const *outputs) {
    typedef struct { ml_tensor *t; int next; } frame;
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

static ml_status accumulate(gslot *slot, ml_tensor *g) {
    if (!slot->grad) {
        ml_retain(g);
        slot->grad = g;
        return ML_OK;
    }
    ml_tensor *sum = NULL;
    ml_status st = ml_add(&sum, slot->grad, g);
    if (st) return st;
    ml_release(slot->grad);
    slot->grad = sum;
    return ML_OK;
}

ml_status ml_grad(ml_tensor **grads, int n_outputs, ml_tensor *const *outputs, int n_inputs,
                  ml_tensor *const *inputs, ml_tensor *const *grad_outputs, unsigned flags) {
    const unsigned known = ML_GRAD_CREATE_GRAPH | ML_GRAD_ALLOW_UNUSED;
    if (flags & ~known)
        return ml_set_error(ML_ERR_VALUE, "grad: unknown flags 0x%x (known: ML_GRAD_CREATE_GRAPH "
                            "0x%x, ML_GRAD_ALLOW_UNUSED 0x%x)", flags & ~known,
                            (unsigned)ML_GRAD_CREATE_GRAPH, (unsigned)ML_GRAD_ALLOW_UNUSED);
    const int create_graph = (flags & ML_GRAD_CREATE_GRAPH) != 0;
    const int allow_unused = (flags & ML_GRAD_ALLOW_UNUSED) != 0;
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
                return ml_set_error(ML_ERR_SHAPE,
                                    "grad: grad_outputs[%d] has shape %s but output %d has shape %s",
                                    o, ML_SHAPE_STR(grad_outputs[o]), o, ML_SHAPE_STR(outputs[o]));
        } else if (outputs[o]->numel != 1) {
            return ml_set_error(ML_ERR_SHAPE,
                                "grad: output %d has shape %s; a non-scalar output needs "
                                "grad_outputs",
                                o, ML_SHAPE_STR(outputs[o]));
        }
    }

    graph g = {0};
    ml_status st = ML_OK;
    if (!ml__ptrmap_reserve(&g.map, 64))
        return ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
    st = build_topo(&g, n_outputs, outputs);
    int prev_mode = ml_set_grad_enabled(create_graph);
    if (st) goto done;

    /* Mark the tensors that lead to an input: only their backward needs to run. */
    for (int j = 0; j < n_inputs; j++) {
        int32_t k = ml__ptrmap_get(&g.map, inputs[j]);
        if (k >= 0) g.slots[k].needed = 1;
    }
    for (int32_t k = 0; k < g.n; k++) {
        ml_node *node = g.slots[k].t->node;
        if (!node || g.slots[k].needed) continue;
        for (int i = 0; i < node->n_inputs; i++) {
            int32_t p = ml__ptrmap_get(&g.map, node->inputs[i]);
            if (p >= 0 && g.slots[p].needed) {
                g.slots[k].needed = 1;
                break;
            }
        }
    }

    /* Seed the outputs. */
    for (int o = 0; o < n_outputs && st == ML_OK; o++) {
        int32_t k = ml__ptrmap_get(&g.map, outputs[o]);
        if (k < 0) continue; /* does not require grad: contributes nothing */
        ml_tensor *seed = NULL;
        if (grad_outputs && grad_outputs[o]) {
            seed = grad_outputs[o];
            ml_retain(seed);
        } else if ((st = ml_tensor_full(&seed, outputs[o]->ndim, outputs[o]->shape, 1.0f))) {
            break;
        }
        st = accumulate(&g.slots[k], seed);
        ml_release(seed);
    }

    /* Reverse topological sweep. */
    for (int32_t k = g.n - 1; k >= 0 && st == ML_OK; k--) {
        gslot *slot = &g.slots[k];
        ml_node *node = slot->t->node;
        if (!node || !slot->needed || !slot->grad) continue;
        if ((st = ml__check_versions(slot->t))) break;
        ml_tensor *gin_inline[3] = {0};
        ml_tensor **gin = node->n_inputs <= 3 ? gin_inline
                                              : calloc((size_t)node->n_inputs, sizeof *gin);
        if (!gin) {
            st = ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
            break;
        }
        unsigned char want_inline[8];
        unsigned char *want = node->n_inputs <= 8 ? want_inline : malloc((size_t)node->n_inputs);
        if (!want) {
            if (gin != gin_inline) free(gin);
            st = ml_set_error(ML_ERR_OOM, "out of memory in ml_grad");
            break;
        }
        for (int i = 0; i < node->n_inputs; i++) {
            int32_t p = ml__ptrmap_get(&g.map, node->inputs[i]);
            want[i] = p >= 0 && g.slots[p].needed;
        }
        const unsigned char *prev_want = ml__grad_wanted;
        ml__grad_wanted = want;
        st = ml_op_table[node->op].backward(slot->t, slot->grad, gin);
        ml__grad_wanted = prev_want;
        for (int i = 0; i < node->n_inputs; i++) {
            if (st == ML_OK && gin[i] && want[i]) /* the input has a needed slot */
                st = accumulate(&g.slots[ml__ptrmap_get(&g.map, node->inputs[i])], gin[i]);
            ml_release(gin[i]);
        }
        if (want != want_inline) free(want);
        if (gin != gin_inline) free(gin);
        /* An intermediate gradient is no longer needed once its node has run. */
        int is_input = 0;
        for (int j = 0; j < n_inputs; j++) is_input |= inputs[j] == slot->t;
        if (!is_input) {
            ml_release(slot->grad);
            slot->grad = NULL;
        }
    }

    /* An input the outputs depend on only through piecewise-constant ops (sign, step, a
     * relu's mask) got no gradient term: its gradient is zeros, as in TensorFlow and
     * PyTorch, not "unused". Under create_graph the zeros are step(x > +inf) recorded on x
     * (a flat op), so that differentiating them again gives zeros too. */
    for (int j = 0; j < n_inputs && st == ML_OK; j++) {
        int32_t k = ml__ptrmap_get(&g.map, inputs[j]);
        if (k < 0 || g.slots[k].grad) continue;
        const ml_tensor *x = inputs[j];
        st = create_graph ? ml_step(&g.slots[k].grad, inputs[j], INFINITY)
                          : ml_tensor_full(&g.slots[k].grad, x->ndim, x->shape, 0.0f);
    }
    if (st == ML_OK) {
        for (int j = 0; j < n_inputs; j++) {
            int32_t k = ml__ptrmap_get(&g.map, inputs[j]);
            ml_tensor *gj = k >= 0 ? g.slots[k].grad : NULL;
            if (!gj && !allow_unused) {
                st = ml_set_error(ML_ERR_GRAPH,
                                  "grad: input %d (shape %s) is not used to compute the outputs "
                                  "(pass allow_unused=True to get None)",
                                  j, ML_SHAPE_STR(inputs[j]));
                break;
            }
        }
    }
    for (int j = 0; j < n_inputs; j++) grads[j] = NULL;
    if (st == ML_OK) {
        for (int j = 0; j < n_inputs; j++) {
            int32_t k = ml__ptrmap_get(&g.map, inputs[j]);
            grads[j] = k >= 0 ? g.slots[k].grad : NULL;
            if (grads[j] && !create_graph && grads[j]->node) {
                /* Without create_graph nothing was recorded; a grad_output passed in may
                 * still carry a graph: hand back a leaf. */
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
    }

done:
    ml_set_grad_enabled(prev_mode);
    for (int32_t k = 0; k < g.n; k++) ml_release(g.slots[k].grad);
    free(g.slots);
    ml__ptrmap_free(&g.map);
    return st;
}
