/* fuse.h — the trace layer's own declarations: the fuser (fuse.c), which a trace runs when
 * its recording ends, and the fused forms it makes (fused.c). */
#ifndef ML_TRACE_FUSE_H
#define ML_TRACE_FUSE_H

#include "../core/record.h"
#include "../ops/ops.h"

/* Each slot's last reader (entry index; n_entries for the trace's outputs). (trace.c) */
void ml__trace_last_use(ml_trace *tr);
/* Merges pairs of entries into their fused forms, by the rules of fuse.c's table. */
void ml__trace_fuse(ml_trace *tr);

/* The parameters of a fused entry are at most this many bytes. */
#define ML_FUSED_PARAMS 256

/* The op an entry is fused into (its reader): what it is, its replay and parameters (run
 * as recorded where the fused form falls back), its input count, and which of its inputs
 * the entry's output was. */
typedef struct {
    ml_op_id op;
    int kernel;            /* its BIN_ formula (ops/fusion.h), or -1: add + relu_grad */
    ml_replay_fn f2;
    int t_index, n_in2;
    size_t p2_size;
    unsigned char p2[64];
} ml_fused_reader;

/* OP_BROADCAST_INTO: a broadcast_to (its target shape) into its reader */
typedef struct {
    ml_fused_reader r;
    int ndim;
    int64_t shape[ML_MAX_DIMS];
} ml_broadcast_into_params;

/* OP_OUTER_INTO: an outer product (its transposes) into its reader */
typedef struct {
    ml_fused_reader r;
    int ta, tb;
} ml_outer_into_params;

/* OP_MATMUL_VIEW: a product and its reshape (the reshape's shape) */
typedef struct {
    int ta, tb, ndim;
    int64_t shape[ML_MAX_DIMS];
} ml_matmul_view_params;

/* OP_MATMUL_INTO: a product (reshaped when v.ndim > 0) into its reader */
typedef struct {
    ml_fused_reader r;
    ml_matmul_view_params v;
} ml_matmul_into_params;

_Static_assert(sizeof(ml_broadcast_into_params) <= ML_FUSED_PARAMS &&
                   sizeof(ml_outer_into_params) <= ML_FUSED_PARAMS &&
                   sizeof(ml_matmul_view_params) <= ML_FUSED_PARAMS &&
                   sizeof(ml_matmul_into_params) <= ML_FUSED_PARAMS,
               "fused parameters too large");

/* The fused replays (fused.c): in[] holds the first entry's inputs, then the reader's
 * other inputs in order. */
ml_status ml__replay_add_relu(ml_tensor **out, ml_tensor **in, const void *params);
ml_status ml__replay_add_relu_grad(ml_tensor **out, ml_tensor **in, const void *params);
ml_status ml__replay_broadcast_into(ml_tensor **out, ml_tensor **in, const void *params);
ml_status ml__replay_outer_into(ml_tensor **out, ml_tensor **in, const void *params);
ml_status ml__replay_matmul_view(ml_tensor **out, ml_tensor **in, const void *params);
ml_status ml__replay_matmul_into(ml_tensor **out, ml_tensor **in, const void *params);

#endif /* ML_TRACE_FUSE_H */
