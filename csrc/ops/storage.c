/* storage.c — the ops on a tensor's memory rather than its values: detach (a leaf that
 * shares it) and assign (an in-place copy into it). Traces record both: a replay detaches
 * its own tensor, and writes the weights it captured. */
#include "ops.h"

typedef struct {
    int unused;
} no_params;
static ml_status replay_detach(ml_tensor **out, ml_tensor **in, const void *p) {
    return ml_detach(out, in[0]);
}
static ml_status replay_assign(ml_tensor **out, ml_tensor **in, const void *p) {
    *out = NULL;
    return ml_assign(in[0], in[1]);
}

ml_status ml_detach(ml_tensor **out, ml_tensor *t) {
    ml_status st = ml__view(out, t, t->ndim, t->shape);
    no_params np = {0};
    if (st == ML_OK) ML_TRACE(OP_DETACH, replay_detach, 1, &t, *out, &np);
    return st;
}

ml_status ml_assign(ml_tensor *dst, const ml_tensor *src) {
    if (dst->numel != src->numel)
        return ml_set_error(ML_ERR_SHAPE,
                            "cannot assign a value of shape %s to a tensor of shape %s",
                            ML_SHAPE_STR(src), ML_SHAPE_STR(dst));
    if (dst->data != src->data) memmove(dst->data, src->data, (size_t)dst->numel * sizeof(float));
    dst->storage->version++;
    ml_tensor *ins[2] = {dst, (ml_tensor *)src};
    no_params np = {0};
    ML_TRACE(OP_ASSIGN, replay_assign, 2, ins, NULL, &np);
    return ML_OK;
}
