/* record.c — the recorder: what an op calls (ML_TRACE) while a trace records on its
 * thread. Each call appends an entry {op id, replay function, input slots, output slots,
 * parameters} to the trace this thread records. Beginning, ending, fusing and replaying a
 * trace is the trace layer's (trace/), above the ops; the recorder sits in the core, below
 * them, as the graph's nodes do (node.c), so that every op records without calling up a
 * layer. It stores the op id an entry is given and reads nothing of it.
 *
 * A tensor an entry reads that no entry made and that is not a declared input is captured
 * by reference (weights, constants): a replay reads its current values. */
#include <stdio.h>

#include "record.h"

_Thread_local ml_trace *ml__trace_active;

/* The first table holds 128 tensors (a small step's), doubling after that. */
static int seen_put(ml_trace *tr, ml_tensor *t, int32_t slot) {
    if (!tr->seen.cap && !ml__ptrmap_reserve(&tr->seen, 128)) return 0;
    const int added = ml__ptrmap_put(&tr->seen, t, slot);
    if (added < 0) return 0;
    if (added) ml_retain(t);
    return 1;
}

int32_t ml__trace_slot_of(const ml_trace *tr, const ml_tensor *t) {
    return ml__ptrmap_get(&tr->seen, t);
}

int32_t ml__trace_add_slot(ml_trace *tr, ml_tensor *t, int capture) {
    if (tr->n_slots == tr->cap_slots) {
        int32_t cap = tr->cap_slots ? tr->cap_slots * 2 : 64;
        ml_tensor **c = realloc(tr->captured, (size_t)cap * sizeof *c);
        if (!c) return -1;
        tr->captured = c;
        int64_t (*shapes)[ML_MAX_DIMS + 1] = realloc(tr->slot_shapes, (size_t)cap * sizeof *shapes);
        if (!shapes) return -1;
        tr->slot_shapes = shapes;
        tr->cap_slots = cap;
    }
    const int32_t s = tr->n_slots;
    tr->slot_shapes[s][0] = t->ndim;
    memcpy(&tr->slot_shapes[s][1], t->shape, sizeof t->shape[0] * ML_MAX_DIMS);
    tr->captured[s] = capture ? t : NULL;
    if (!seen_put(tr, t, s)) return -1;
    if (capture) ml_retain(t);
    return tr->n_slots++;
}

void ml__trace_drop_map(ml_trace *tr) {
    for (size_t i = 0; i < tr->seen.cap; i++) ml_release((ml_tensor *)tr->seen.keys[i]);
    ml__ptrmap_free(&tr->seen);
}

static void fail(ml_trace *tr, ml_status st) {
    if (tr->error == ML_OK) {
        tr->error = st;
        snprintf(tr->error_msg, sizeof tr->error_msg, "%s", ml_last_error());
    }
}

void ml__trace_fail(ml_status st) {
    if (ml__trace_active) fail(ml__trace_active, st);
}

void ml__trace_record(unsigned op, ml_replay_fn fn, int n_in, ml_tensor *const *in, ml_tensor *out,
                      const void *params, size_t params_size) {
    ml__trace_record_n(op, fn, n_in, in, out ? 1 : 0, &out, params, params_size);
}

void ml__trace_record_n(unsigned op, ml_replay_fn fn, int n_in, ml_tensor *const *in, int n_out,
                        ml_tensor *const *out, const void *params, size_t params_size) {
    ml_trace *tr = ml__trace_active;
    if (!tr || tr->error) return;
    if (n_out < 0 || n_out > ML_TRACE_MAX_OUT)
        return fail(tr, ml_set_error(ML_ERR_VALUE, "trace: an entry of %d outputs (at most %d)",
                                     n_out, ML_TRACE_MAX_OUT));
    if (tr->n_entries == tr->cap_entries) {
        int32_t cap = tr->cap_entries ? tr->cap_entries * 2 : 128;
        trace_entry *e = realloc(tr->entries, (size_t)cap * sizeof *e);
        if (!e) return fail(tr, ml_set_error(ML_ERR_OOM, "out of memory while tracing"));
        tr->entries = e;
        tr->cap_entries = cap;
    }
    trace_entry *e = &tr->entries[tr->n_entries];
    memset(e, 0, sizeof *e);
    e->op = op;
    e->fn = fn;
    e->n_in = n_in;
    e->in = malloc((size_t)(n_in ? n_in : 1) * sizeof *e->in);
    e->params = malloc(params_size ? params_size : 1);
    if (!e->in || !e->params) {
        free(e->in);
        free(e->params);
        return fail(tr, ml_set_error(ML_ERR_OOM, "out of memory while tracing"));
    }
    if (params_size) memcpy(e->params, params, params_size);
    e->params_size = params_size;
    for (int i = 0; i < n_in; i++) {
        int32_t s = in[i] ? ml__ptrmap_get(&tr->seen, in[i]) : -1;
        if (in[i] && s < 0 && in[i]->serial >= tr->first_serial && !in[i]->constant) {
            /* computed during the trace by something that recorded nothing: a replay
             * would reuse this call's value, so the trace cannot be trusted */
            free(e->in);
            free(e->params);
            return fail(tr, ml_set_error(ML_ERR_GRAPH,
                                         "an op used inside this function cannot be traced "
                                         "(a tensor of shape %s was computed by an op that "
                                         "records nothing); run it eagerly",
                                         ML_SHAPE_STR(in[i])));
        }
        if (in[i] && s < 0) { /* not made inside the trace: a captured constant */
            s = ml__trace_add_slot(tr, in[i], 1);
            if (s < 0) {
                free(e->in);
                free(e->params);
                return fail(tr, ml_set_error(ML_ERR_OOM, "out of memory while tracing"));
            }
        }
        e->in[i] = s; /* -1: an optional input given as NULL (a linear without bias) */
    }
    e->out = -1;
    for (int o = 0; o < n_out; o++) {
        int32_t s = ml__trace_add_slot(tr, out[o], 0);
        if (s < 0) {
            free(e->in);
            free(e->params);
            return fail(tr, ml_set_error(ML_ERR_OOM, "out of memory while tracing"));
        }
        if (o == 0)
            e->out = s;
        else
            e->extra[e->n_extra++] = s;
    }
    tr->n_entries++;
}
