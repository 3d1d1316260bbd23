/* record.h — a trace's data: what the recorder (core/record.c) appends to and what the
 * trace layer (trace/: ending, fusion, replay, printing) reads. Not for ops: they record
 * through ML_TRACE (internal.h). */
#ifndef ML_RECORD_H
#define ML_RECORD_H

#include <pthread.h>

#include "internal.h"
#include "ptrmap.h"

/* The most recorded ops one fused entry computes (a product, its reshape, an add and a
 * relu_grad: trace/fuse.c's rules chain at most four). */
#define ML_TRACE_MAX_PARTS 6

/* One recorded op: inputs and outputs are slots (below). The fields a replay reads come
 * first, and an entry is one 64-byte cache line on a 64-bit host (a replay walks them). */
typedef struct trace_entry {
    ml_replay_fn fn;
    int32_t *in;      /* slots */
    void *params;     /* owned copy */
    size_t params_size;
    int n_in;
    int32_t out;      /* slot, or -1 for in-place entries */
    int n_extra;      /* outputs after the first (ml__trace_record_n) */
    int32_t extra[ML_TRACE_MAX_OUT - 1]; /* their slots */
    unsigned op;      /* what it computes: its ml_op_id (ops/ops.h), which the fuser and
                       * ml_trace_print read */
    /* a fused entry (n_parts > 1): the recorded ops it computes, in order */
    unsigned char n_parts;
    unsigned char parts[ML_TRACE_MAX_PARTS];
} trace_entry;

struct ml_trace {
    int n_inputs, n_outputs;
    int64_t (*input_shapes)[ML_MAX_DIMS + 1];
    int32_t *output_slots;
    /* slots: 0..n_inputs-1 are inputs, then constants and entry outputs, in order */
    int32_t n_slots, cap_slots;
    ml_tensor **captured;     /* per slot: the constant (retained) or NULL */
    int64_t (*slot_shapes)[ML_MAX_DIMS + 1]; /* per slot: ndim, then the shape */
    int32_t *last_use;        /* per slot: last entry reading it (or n_entries for outputs) */
    trace_entry *entries;
    int32_t n_entries, cap_entries;
    /* while recording: tensor pointer -> slot (every seen tensor is retained so an address
     * cannot be reused by another tensor during the trace) */
    ml_ptrmap seen;
    ml_status error;          /* first failure while recording */
    char error_msg[256];      /* and its message (later calls may overwrite the last error) */
    uint64_t first_serial;    /* tensors from this serial on were made during the trace */
    int state;                /* trace_state, read and written atomically */
    pthread_t owner;          /* the thread recording it (while RECORDING / FREE_PENDING) */
};

/* RECORDING -> FINISHED (ended) or STOPPED (aborted, or its end failed); RECORDING ->
 * FREE_PENDING when another thread frees it while it records: the recorder's end or abort
 * then frees it. */
enum trace_state { TR_RECORDING = 1, TR_FREE_PENDING, TR_STOPPED, TR_FINISHED };

/* The slot of tensor t (-1: not seen in this trace). */
int32_t ml__trace_slot_of(const ml_trace *tr, const ml_tensor *t);
/* A new slot for t, mapped from t's address; with capture, the trace keeps t (retained)
 * and replays read it: a constant or a weight. -1 when out of memory. */
int32_t ml__trace_add_slot(ml_trace *tr, ml_tensor *t, int capture);
/* Releases the address map (only recording needs it). */
void ml__trace_drop_map(ml_trace *tr);

#endif /* ML_RECORD_H */
