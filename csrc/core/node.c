/* node.c — grad mode and the graph's nodes: whether an op records, and recording one. The
 * reverse walk over the nodes (ml_grad) is autograd/'s: it runs the ops' backward formulas,
 * a layer above the core. */
#include "internal.h"

static _Thread_local int ml_grad_disabled; /* 0: grad mode on (the default) */
_Thread_local const unsigned char *ml__grad_wanted;

int ml_is_grad_enabled(void) { return !ml_grad_disabled; }

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

ml_status ml__record_node(ml_tensor *out, const ml_op_def *op, int n, ml_tensor *const *inputs,
                          ml_node **node_out) {
    ml_node *node = ml__node_alloc(); /* zeroed */
    if (!node) return ml_set_error(ML_ERR_OOM, "out of memory recording '%s'", op->name);
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
            return ml_set_error(ML_ERR_OOM, "out of memory recording '%s'", op->name);
        }
    }
    node->op = op;
    node->n_inputs = n;
    for (int i = 0; i < n; i++) {
        node->inputs[i] = inputs[i];
        /* an input whose storage went back (ML_RECOMPUTE) and that this op's eager form did
         * not read (ml_op_def.trace_read): the version its recompute will carry */
        const ml_storage *st = __atomic_load_n(&inputs[i]->storage, __ATOMIC_ACQUIRE);
        node->input_versions[i] = st ? st->version : inputs[i]->node->out_version;
        ml_retain(inputs[i]);
        __atomic_add_fetch(&inputs[i]->node_refs, 1, __ATOMIC_RELAXED);
        const int small_kept = (op->unread & ML_RECOMPUTE) &&
                               inputs[i]->numel < ML_RECOMPUTE_MIN_NUMEL;
        if (i < 30 && (op->unread & ML_UNREAD_IN(i)) && !small_kept) {
            __atomic_add_fetch(&inputs[i]->edge_refs, 1, __ATOMIC_RELAXED);
            node->edge_mask |= 1u << i;
        }
    }
    node->out_version = out->storage->version;
    out->node = node;
    out->requires_grad = 1;
    if (node_out) *node_out = node;
    return ML_OK;
}
