/* trace.c — record a computation once, replay it from C with new inputs.
 *
 * While a trace is active on a thread, every op that makes a tensor from data appends an
 * entry {op id, replay function, input slots, output slot, parameters} (the recorder,
 * core/record.c). Backward passes are made of the same public ops, so a traced function
 * that calls ml_grad (even with create_graph, as second-order MAML does) is recorded as
 * the flat list of forward, backward and double-backward ops. Tensors used by an entry
 * that no entry made and that are not declared inputs are captured by reference
 * (weights, constants): a replay reads their current values, so in-place weight updates
 * between replays are seen. When recording ends, the fuser (fuse.c) merges pairs of
 * entries into one pass where a rule of its table applies.
 *
 * Replays run with grad mode off (nothing is recorded) and free each intermediate after
 * its last use. ml_trace_replay_many runs independent calls (the tasks of a meta-batch)
 * on several threads; each call's results are its own, so any reduction over calls the
 * caller does in call order is independent of the thread count.
 *
 * Threads: recording belongs to the thread that began it. Ending or aborting a trace from
 * another thread is refused (the recorder would otherwise go on recording into a trace
 * someone else finished); freeing it from another thread while it records is deferred to
 * the recorder's end or abort (its per-thread pointer would otherwise dangle). A finished
 * trace is read-only: any number of threads may replay it at once, each replay's
 * intermediates are its own (on its stack or heap). What the replays share is what the
 * trace captured by reference: in-place entries (optimizer steps, batch-norm statistics)
 * write into those tensors and optimizers, so concurrent replays of a training step race
 * on the model exactly as two eager steps would. */
#include <pthread.h>
#include <stdio.h>

#include "../core/record.h"
#include "fuse.h"

static int state_of(const ml_trace *tr) { return __atomic_load_n(&tr->state, __ATOMIC_ACQUIRE); }

ml_status ml_trace_begin(ml_trace **out, int n_inputs, ml_tensor *const *inputs) {
    if (ml__trace_active)
        return ml_set_error(ML_ERR_GRAPH, "a trace is already being recorded on this thread");
    if (n_inputs < 0 || (n_inputs && !inputs))
        return ml_set_error(ML_ERR_VALUE, "trace: bad inputs");
    ml_trace *tr = calloc(1, sizeof *tr);
    if (!tr) return ml_set_error(ML_ERR_OOM, "out of memory");
    tr->n_inputs = n_inputs;
    tr->first_serial = ml__next_serial();
    tr->input_shapes = malloc((size_t)(n_inputs ? n_inputs : 1) * sizeof *tr->input_shapes);
    if (!tr->input_shapes) {
        free(tr);
        return ml_set_error(ML_ERR_OOM, "out of memory");
    }
    for (int i = 0; i < n_inputs; i++) {
        if (!inputs[i]) {
            ml_trace_free(tr);
            return ml_set_error(ML_ERR_VALUE, "trace: input %d is NULL", i);
        }
        if (ml__trace_slot_of(tr, inputs[i]) >= 0) {
            ml_trace_free(tr);
            return ml_set_error(ML_ERR_VALUE,
                                "trace: input %d is the same tensor as an earlier input", i);
        }
        tr->input_shapes[i][0] = inputs[i]->ndim;
        memcpy(&tr->input_shapes[i][1], inputs[i]->shape, sizeof inputs[i]->shape[0] * ML_MAX_DIMS);
        if (ml__trace_add_slot(tr, inputs[i], 0) < 0) {
            ml_trace_free(tr);
            return ml_set_error(ML_ERR_OOM, "out of memory");
        }
    }
    tr->owner = pthread_self();
    __atomic_store_n(&tr->state, TR_RECORDING, __ATOMIC_RELEASE);
    ml__trace_active = tr;
    *out = tr;
    return ML_OK;
}

static void trace_destroy(ml_trace *tr);

/* Ends recording on this thread, which must be the recorder: ML_OK, or an error (and
 * nothing changed) for a trace that is finished, stopped or recorded by another thread.
 * *freed is set when another thread freed the trace meanwhile: it is gone on return. */
static ml_status stop_recording(ml_trace *tr, const char *what, int next_state, int *freed) {
    *freed = 0;
    int st = state_of(tr);
    if (st == TR_FINISHED)
        return ml_set_error(ML_ERR_GRAPH, "%s: the trace is already finished", what);
    if (st == TR_STOPPED)
        return ml_set_error(ML_ERR_GRAPH,
                            "%s: the trace was aborted (or its end failed); it "
                            "can only be freed",
                            what);
    if (!pthread_equal(tr->owner, pthread_self()))
        return ml_set_error(ML_ERR_GRAPH,
                            "%s: the trace is being recorded on another thread; "
                            "only the thread that began it can end or abort it",
                            what);
    if (ml__trace_active == tr) ml__trace_active = NULL;
    if (__atomic_exchange_n(&tr->state, next_state, __ATOMIC_ACQ_REL) == TR_FREE_PENDING) {
        trace_destroy(tr);
        *freed = 1;
        return ml_set_error(ML_ERR_GRAPH,
                            "%s: the trace was freed by another thread while it "
                            "was recording",
                            what);
    }
    return ML_OK;
}

void ml__trace_last_use(ml_trace *tr) {
    for (int32_t s = 0; s < tr->n_slots; s++) tr->last_use[s] = -1;
    for (int32_t k = 0; k < tr->n_entries; k++)
        for (int i = 0; i < tr->entries[k].n_in; i++)
            if (tr->entries[k].in[i] >= 0) tr->last_use[tr->entries[k].in[i]] = k;
    for (int o = 0; o < tr->n_outputs; o++)
        if (tr->output_slots[o] >= 0) tr->last_use[tr->output_slots[o]] = tr->n_entries;
}

ml_status ml_trace_end(ml_trace *tr, int n_outputs, ml_tensor *const *outputs) {
    if (!tr) return ml_set_error(ML_ERR_VALUE, "trace_end: the trace is NULL");
    if (n_outputs < 0 || (n_outputs && !outputs))
        return ml_set_error(ML_ERR_VALUE, "trace_end: bad outputs");
    int freed;
    /* STOPPED until it has succeeded: a failed end leaves a trace that can only be freed */
    ml_status st = stop_recording(tr, "trace_end", TR_STOPPED, &freed);
    if (st) return st;
    st = tr->error;
    if (st) return ml_set_error(st, "tracing failed: %s", tr->error_msg);
    tr->output_slots = malloc((size_t)(n_outputs ? n_outputs : 1) * sizeof *tr->output_slots);
    if (!tr->output_slots) return ml_set_error(ML_ERR_OOM, "out of memory");
    tr->n_outputs = n_outputs;
    for (int o = 0; o < n_outputs; o++) {
        int32_t s = outputs[o] ? ml__trace_slot_of(tr, outputs[o]) : -1;
        if (s < 0 && outputs[o] && outputs[o]->serial >= tr->first_serial && !outputs[o]->constant)
            return ml_set_error(ML_ERR_GRAPH,
                                "output %d of the traced function was computed by "
                                "an op that cannot be traced; run it eagerly",
                                o);
        if (s < 0 && outputs[o]) { /* an output no op made: a captured constant */
            s = ml__trace_add_slot(tr, outputs[o], 1);
            if (s < 0) return ml_set_error(ML_ERR_OOM, "out of memory");
        }
        tr->output_slots[o] = s;
    }
    tr->last_use = malloc((size_t)(tr->n_slots ? tr->n_slots : 1) * sizeof *tr->last_use);
    if (!tr->last_use) return ml_set_error(ML_ERR_OOM, "out of memory");
    ml__trace_last_use(tr);
    ml__trace_fuse(tr);
    ml__trace_drop_map(tr); /* the address map is only needed while recording */
    __atomic_store_n(&tr->state, TR_FINISHED, __ATOMIC_RELEASE);
    return ML_OK;
}

ml_status ml_trace_abort(ml_trace *tr) {
    if (!tr) return ML_OK;
    int st = state_of(tr);
    if (st != TR_RECORDING && st != TR_FREE_PENDING)
        return ML_OK; /* not recording: nothing to stop */
    int freed;
    ml_status s = stop_recording(tr, "trace_abort", TR_STOPPED, &freed);
    return freed ? ML_OK : s;
}

int ml_is_tracing(void) { return ml__trace_active != NULL; }

void ml_trace_free(ml_trace *tr) {
    if (!tr) return;
    if (ml__trace_active == tr) {
        ml__trace_active = NULL; /* this thread records it: it stops */
    } else if (!pthread_equal(tr->owner, pthread_self())) {
        int expected = TR_RECORDING;
        if (__atomic_compare_exchange_n(&tr->state, &expected, TR_FREE_PENDING, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return; /* another thread records it: freed when that thread ends or aborts it */
    }
    trace_destroy(tr);
}

static void trace_destroy(ml_trace *tr) {
    for (int32_t k = 0; k < tr->n_entries; k++) {
        free(tr->entries[k].in);
        free(tr->entries[k].params);
    }
    free(tr->entries);
    for (int32_t s = 0; s < tr->n_slots; s++) ml_release(tr->captured[s]);
    free(tr->captured);
    free(tr->slot_shapes);
    ml__trace_drop_map(tr);
    free(tr->last_use);
    free(tr->output_slots);
    free(tr->input_shapes);
    free(tr);
}

int ml_trace_n_ops(const ml_trace *tr) { return tr->n_entries; }
int ml_trace_n_inputs(const ml_trace *tr) { return tr->n_inputs; }
int ml_trace_n_outputs(const ml_trace *tr) { return tr->n_outputs; }

static ml_status check_inputs(const ml_trace *tr, ml_tensor *const *inputs) {
    for (int i = 0; i < tr->n_inputs; i++) {
        const int64_t *want = tr->input_shapes[i];
        int ok = inputs[i] && inputs[i]->ndim == want[0];
        for (int d = 0; ok && d < want[0]; d++) ok = inputs[i]->shape[d] == want[1 + d];
        if (!ok)
            return ml_set_error(ML_ERR_SHAPE,
                                "replay: input %d has shape %s but the trace was "
                                "recorded for shape %s",
                                i, inputs[i] ? ML_SHAPE_STR(inputs[i]) : "NULL",
                                ml__shape_str((char[160]){0}, 160, (int)want[0], want + 1));
    }
    return ML_OK;
}

/* One replay on this thread; outputs get new references. */
static ml_status replay_one(const ml_trace *tr, ml_tensor *const *inputs, ml_tensor **outputs) {
    /* slots on the stack for traces of up to 512 tensors: no allocation per replay */
    ml_tensor *slot_inline[512];
    ml_tensor **slot = tr->n_slots <= 512 ? slot_inline : calloc((size_t)tr->n_slots, sizeof *slot);
    if (!slot) return ml_set_error(ML_ERR_OOM, "out of memory in replay");
    if (slot == slot_inline) memset(slot_inline, 0, (size_t)tr->n_slots * sizeof *slot);
    int prev = ml_set_grad_enabled(0);
    ml_status st = ML_OK;
    for (int i = 0; i < tr->n_inputs; i++) {
        slot[i] = inputs[i];
        ml_retain(inputs[i]);
    }
    for (int32_t s = tr->n_inputs; s < tr->n_slots; s++)
        if (tr->captured[s]) {
            slot[s] = tr->captured[s];
            ml_retain(slot[s]);
        }
    ml_tensor *ins_inline[32];
    for (int32_t k = 0; k < tr->n_entries && st == ML_OK; k++) {
        const trace_entry *e = &tr->entries[k];
        ml_tensor **ins = e->n_in <= 32 ? ins_inline : malloc((size_t)e->n_in * sizeof *ins);
        if (!ins) {
            st = ml_set_error(ML_ERR_OOM, "out of memory in replay");
            break;
        }
        for (int i = 0; i < e->n_in; i++) ins[i] = e->in[i] >= 0 ? slot[e->in[i]] : NULL;
        ml_tensor *o[ML_TRACE_MAX_OUT] = {NULL};
        st = e->fn(o, ins, e->params);
        if (ins != ins_inline) free(ins);
        if (st) break;
        if (e->out >= 0) {
            ml_release(slot[e->out]);
            slot[e->out] = o[0];
        } else {
            ml_release(o[0]);
        }
        for (int x = 0; x < e->n_extra; x++) {
            ml_release(slot[e->extra[x]]);
            slot[e->extra[x]] = o[1 + x];
        }
        /* free what no later entry and no output reads */
        for (int i = 0; i < e->n_in; i++) {
            int32_t s = e->in[i];
            if (s >= 0 && tr->last_use[s] == k && slot[s]) {
                ml_release(slot[s]);
                slot[s] = NULL;
            }
        }
    }
    if (st == ML_OK) {
        for (int o = 0; o < tr->n_outputs; o++) {
            int32_t s = tr->output_slots[o];
            outputs[o] = s >= 0 ? slot[s] : NULL;
            ml_retain(outputs[o]);
        }
    }
    for (int32_t s = 0; s < tr->n_slots; s++) ml_release(slot[s]);
    if (slot != slot_inline) free(slot);
    ml_set_grad_enabled(prev);
    return st;
}

ml_status ml_trace_replay(ml_trace *tr, ml_tensor *const *inputs, ml_tensor **outputs) {
    if (!tr || state_of(tr) != TR_FINISHED)
        return ml_set_error(ML_ERR_VALUE, "replay: the trace is not finished");
    if (ml__trace_active)
        return ml_set_error(ML_ERR_GRAPH, "replay: cannot replay while recording a trace");
    ml_status st = check_inputs(tr, inputs);
    if (st) return st;
    return replay_one(tr, inputs, outputs);
}

typedef struct {
    ml_trace *tr;
    int n_calls, n_threads, first;
    ml_tensor *const *inputs;
    ml_tensor **outputs;
    ml_status status;
    char error[256];
} replay_job;

static void *replay_worker(void *arg) {
    replay_job *job = arg;
    /* the calls already run in parallel: the ops inside them stay serial */
    int was_parallel = ml__in_parallel();
    if (job->n_threads > 1) ml__set_in_parallel(1);
    for (int c = job->first; c < job->n_calls && job->status == ML_OK; c += job->n_threads) {
        ml_status st = replay_one(job->tr, job->inputs + (size_t)c * job->tr->n_inputs,
                                  job->outputs + (size_t)c * job->tr->n_outputs);
        if (st) {
            job->status = st;
            snprintf(job->error, sizeof job->error, "%s", ml_last_error());
        }
    }
    ml__set_in_parallel(was_parallel);
    return NULL;
}

ml_status ml_trace_replay_many(ml_trace *tr, int n_calls, ml_tensor *const *inputs,
                               ml_tensor **outputs, int n_threads) {
    if (!tr || state_of(tr) != TR_FINISHED)
        return ml_set_error(ML_ERR_VALUE, "replay: the trace is not finished");
    if (ml__trace_active) /* this thread's share would run its ops into the trace it records */
        return ml_set_error(ML_ERR_GRAPH, "replay: cannot replay while recording a trace");
    if (n_calls < 0) return ml_set_error(ML_ERR_VALUE, "replay: negative call count");
    for (int c = 0; c < n_calls; c++) {
        ml_status st = check_inputs(tr, inputs + (size_t)c * tr->n_inputs);
        if (st) return st;
    }
    for (size_t i = 0; i < (size_t)n_calls * tr->n_outputs; i++) outputs[i] = NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > n_calls) n_threads = n_calls > 0 ? n_calls : 1;
    replay_job jobs[64];
    if (n_threads > 64) n_threads = 64;
    pthread_t threads[64];
    int started[64] = {0};
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = (replay_job){tr, n_calls, n_threads, t, inputs, outputs, ML_OK, {0}};
        /* thread 0 is this thread: the work of one call never waits for a thread start */
        if (t > 0) started[t] = pthread_create(&threads[t], NULL, replay_worker, &jobs[t]) == 0;
    }
    for (int t = 1; t < n_threads; t++)
        if (!started[t]) replay_worker(&jobs[t]); /* no thread: do its share here */
    replay_worker(&jobs[0]);
    for (int t = 1; t < n_threads; t++)
        if (started[t]) pthread_join(threads[t], NULL);
    for (int t = 0; t < n_threads; t++) {
        if (jobs[t].status) {
            for (size_t i = 0; i < (size_t)n_calls * tr->n_outputs; i++) {
                ml_release(outputs[i]);
                outputs[i] = NULL;
            }
            return ml_set_error(jobs[t].status, "%s", jobs[t].error);
        }
    }
    return ML_OK;
}
