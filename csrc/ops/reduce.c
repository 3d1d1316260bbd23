/* reduce.c — sum, mean, max over axes; sum_to/broadcast_to; softmax and log_softmax. */
#include <math.h>

#include "ops.h"
#include "../kernels/cpu.h"

enum { RED_SUM, RED_MAX };

/* max that keeps a NaN once seen, as NumPy's max does */
static inline float max_nan(float m, float v) {
    return (m != m || v > m || v != v) ? (m != m ? m : v) : m;
}

/* The contiguous case: x seen as (outer, red, inner); outputs [o0, o1) x [i0, i1).
 * A sum with inner > 1 runs its reduced rows in chunks fixed by the shape alone
 * (red_chunk_rows: ~RED_CHUNK_FLOATS floats): each output is the chunks' partial sums added
 * in chunk order, so a long, narrow sum (a conv bias's gradient: (N H W, C)) can run its
 * chunks over the thread pool (part: chunks x inner floats, by_chunk) and give the bits of
 * the one-thread run. Splitting such a sum by columns instead had each thread read every
 * row for a few of its floats (two threads at 16 of 32 channels: both read all of x, each
 * summing one chain at a time): 4 % of the two-thread MAML 84x84 step, 1 % on one. */
typedef struct {
    int kind;
    const float *xd;
    float *out;
    int64_t outer, red, inner, o_step, i_step;
    int64_t rc;  /* rows a chunk */
    float *part; /* by_chunk: chunk k's partial sums at part + k inner */
    int by_chunk;
} red_job;

#define RED_CHUNK_FLOATS (1 << 15)
static int64_t red_chunk_rows(int64_t inner) {
    const int64_t r = RED_CHUNK_FLOATS / inner;
    return r < 1 ? 1 : r;
}

/* dst[q] += the sum over rows r of src[r * inner + q], q < 8 nv, row after row: nv
 * vectors of 8 floats (GCC's vector type: one ymm register in the AVX2 variant, two xmm
 * in the baseline one), nv a constant once inlined so the accumulators stay in registers (a
 * float array of them was partly kept on the stack) */
typedef float ml_v8 __attribute__((vector_size(32), aligned(4), may_alias));
static inline __attribute__((always_inline)) void
col_sums(const float *restrict src, float *restrict dst, int64_t red, int64_t inner, const int nv) {
    ml_v8 acc[8];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) acc[v] = (ml_v8){0};
    for (int64_t r = 0; r < red; r++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) acc[v] += *(const ml_v8 *)(src + r * inner + 8 * v);
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) *(ml_v8 *)(dst + 8 * v) += acc[v];
}

/* dst[c] += the sum of src's `rows` rows at column c (summed from zero, then added), for
 * c in [i0, i1): blocks of columns summed down the rows in registers. A block of 8 nv
 * columns is nv independent add chains, which the CPU runs at once; 8 columns at a time
 * would run them one after another (the middle-axis sums of MAML Omniglot's and the
 * sinusoid's backward, benchmarks/run_all.py's maml rows) */
ML_INLINE void red_sum_rows(const float *restrict src, float *restrict dst, int64_t rows,
                            int64_t inner, int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + 64 <= i1; i += 64) col_sums(src + i, dst + i, rows, inner, 8);
    if (i + 40 <= i1) col_sums(src + i, dst + i, rows, inner, 5), i += 40;
    if (i + 32 <= i1) col_sums(src + i, dst + i, rows, inner, 4), i += 32;
    for (; i + 8 <= i1; i += 8) col_sums(src + i, dst + i, rows, inner, 1);
    float acc[8] = {0}; /* the last < 8 columns */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = i; c < i1; c++) acc[c - i] += src[r * inner + c];
    for (int64_t c = i; c < i1; c++) dst[c] += acc[c - i];
}

/* Compiled for AVX2 and for the baseline (ML_CPU_CLONES; the library is built for baseline
 * x86-64): at SSE width alone, summing a middle axis ((25, 10, 40) -> (25, 1, 40) in
 * vectorised MAML's backward) runs at half speed. by_chunk: [o0, o1) are chunks (outer is
 * 1), each summed into its zeroed part. */
ML_INLINE void red_block_body(const red_job *j, int64_t o0, int64_t o1, int64_t i0, int64_t i1) {
    const int kind = j->kind;
    const int64_t red = j->red, inner = j->inner, rc = j->rc;
    if (j->by_chunk) {
        for (int64_t k = o0; k < o1; k++) {
            float *p = j->part + k * inner;
            const int64_t r0 = k * rc, rows = r0 + rc < red ? rc : red - r0;
            for (int64_t c = 0; c < inner; c++) p[c] = 0.0f;
            red_sum_rows(j->xd + r0 * inner, p, rows, inner, 0, inner);
        }
        return;
    }
    for (int64_t o = o0; o < o1; o++) {
        float *restrict dst = j->out + o * inner; /* the output never overlaps x */
        const float *restrict src = j->xd + o * red * inner;
        if (inner == 1) {
            if (kind == RED_SUM) {
                /* four partial sums: vectorisable and more accurate than one chain */
                float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int64_t r = 0;
                for (; r + 4 <= red; r += 4) {
                    s0 += src[r];
                    s1 += src[r + 1];
                    s2 += src[r + 2];
                    s3 += src[r + 3];
                }
                for (; r < red; r++) s0 += src[r];
                dst[0] = (s0 + s1) + (s2 + s3);
            } else {
                float m = -INFINITY;
                for (int64_t r = 0; r < red; r++) m = max_nan(m, src[r]);
                dst[0] = m;
            }
        } else {
            if (kind == RED_SUM) {
                for (int64_t r0 = 0; r0 < red; r0 += rc)
                    red_sum_rows(src + r0 * inner, dst, r0 + rc < red ? rc : red - r0, inner, i0,
                                 i1);
            } else {
                for (int64_t r = 0; r < red; r++) {
                    const float *row = src + r * inner;
                    for (int64_t c = i0; c < i1; c++) dst[c] = max_nan(dst[c], row[c]);
                }
            }
        }
    }
}
ML_CPU_CLONES(red_block, (const red_job *j, int64_t o0, int64_t o1, int64_t i0, int64_t i1),
              (j, o0, o1, i0, i1))

/* Reductions of >= RED_PAR_MIN inputs are split over the pool by output rows or columns. */
#define RED_PAR_MIN (1 << 16)
static void red_part(void *ctx, int64_t t) {
    const red_job *j = ctx;
    if (j->by_chunk) {
        red_block(j, t, t + 1, 0, j->inner);
    } else if (j->o_step < j->outer) {
        int64_t o0 = t * j->o_step, o1 = o0 + j->o_step < j->outer ? o0 + j->o_step : j->outer;
        red_block(j, o0, o1, 0, j->inner);
    } else {
        int64_t i0 = t * j->i_step, i1 = i0 + j->i_step < j->inner ? i0 + j->i_step : j->inner;
        red_block(j, 0, j->outer, i0, i1);
    }
}

/* Reduces x over the axes flagged in `reduced` into out (numel = product of kept dims).
 * When the reduced axes form one contiguous block, x is seen as (outer, red, inner) and
 * the loops stay unit-stride; otherwise a multi-index walk handles any axis set. */
static void reduce_into(int kind, const ml_tensor *x, const int *reduced, float *out,
                        int64_t out_numel) {
    const float *xd = x->data;
    int nd = x->ndim;
    float init = kind == RED_SUM ? 0.0f : -INFINITY;
    for (int64_t i = 0; i < out_numel; i++) out[i] = init;
    if (x->numel == 0) return;
    int first = -1, last = -1, contiguous = 1;
    for (int d = 0; d < nd; d++) {
        if (!reduced[d] || x->shape[d] == 1) continue;
        if (first < 0)
            first = d;
        else if (last != d - 1) {
            /* a kept axis of size > 1 lies between reduced ones */
            for (int e = last + 1; e < d; e++)
                if (x->shape[e] != 1) contiguous = 0;
        }
        last = d;
    }
    if (first < 0) { /* only size-1 axes are reduced: a copy */
        memcpy(out, xd, (size_t)x->numel * sizeof(float));
        return;
    }
    if (contiguous) {
        int64_t outer = 1, red = 1, inner = 1;
        for (int d = 0; d < first; d++) outer *= x->shape[d];
        for (int d = first; d <= last; d++) red *= x->shape[d];
        for (int d = last + 1; d < nd; d++) inner *= x->shape[d];
        red_job j = {kind, xd, out, outer, red, inner, outer, inner, red_chunk_rows(inner)};
        const int64_t chunks = (red + j.rc - 1) / j.rc;
        int threads = ml_get_num_threads();
        if (x->numel >= RED_PAR_MIN && threads > 1 && !ml__in_parallel()) {
            /* whole rows (outer), the chunks of a narrow sum, or column blocks (inner);
             * every output is the same sum of the same chunk partials, in the same order,
             * as unsplit */
            if (outer >= 2) {
                j.o_step = (outer + threads - 1) / threads;
                ml__parallel_for((outer + j.o_step - 1) / j.o_step, 0, red_part, &j);
                return;
            }
            /* + 1: never malloc(0); on failure, the serial run below (the same bits) */
            if (kind == RED_SUM && inner > 1 && inner < 1024 && chunks >= 2 &&
                (j.part = malloc((size_t)(chunks * inner) * sizeof(float) + 1))) {
                j.by_chunk = 1;
                ml__parallel_for(chunks, 0, red_part, &j);
                for (int64_t k = 0; k < chunks; k++)
                    for (int64_t c = 0; c < inner; c++) out[c] += j.part[k * inner + c];
                free(j.part);
                return;
            }
            if (inner >= 32) {
                j.i_step = ((inner + threads - 1) / threads + 15) / 16 * 16;
                ml__parallel_for((inner + j.i_step - 1) / j.i_step, 0, red_part, &j);
                return;
            }
        }
        red_block(&j, 0, outer, 0, inner);
        return;
    }
    /* general: out offset strides with 0 on reduced axes */
    int64_t ostride[ML_MAX_DIMS], idx[ML_MAX_DIMS] = {0}, s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        if (reduced[d])
            ostride[d] = 0;
        else {
            ostride[d] = s;
            s *= x->shape[d];
        }
    }
    int64_t off = 0;
    for (int64_t i = 0; i < x->numel; i++) {
        float v = xd[i];
        if (kind == RED_SUM)
            out[off] += v;
        else
            out[off] = max_nan(out[off], v);
        for (int d = nd - 1; d >= 0; d--) {
            idx[d]++;
            off += ostride[d];
            if (idx[d] < x->shape[d]) break;
            off -= ostride[d] * idx[d];
            idx[d] = 0;
        }
    }
}

/* Parses axes into a flag per dim and the kept shape. */
static ml_status parse_axes(const ml_tensor *x, int n_axes, const int *axes, int keepdims,
                            const char *name, int *reduced, int *ndim_out, int64_t *shape_out) {
    for (int d = 0; d < x->ndim; d++) reduced[d] = n_axes == 0;
    for (int i = 0; i < n_axes; i++) {
        int a = ml__axis(axes[i], x->ndim);
        if (a < 0) return ml__axis_error(name, axes[i], x);
        if (reduced[a]) return ml_set_error(ML_ERR_VALUE, "%s: axis %d is repeated", name, axes[i]);
        reduced[a] = 1;
    }
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (!reduced[d])
            shape_out[nd++] = x->shape[d];
        else if (keepdims)
            shape_out[nd++] = 1;
    }
    *ndim_out = nd;
    return ML_OK;
}

typedef struct {
    int n_axes, axes[ML_MAX_DIMS], keepdims, kind;
    ml_op_id op;
    const char *name;
} reduce_params;
static ml_status reduce_op(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims,
                           int kind, ml_op_id op, const char *name);
static ml_status replay_reduce(ml_tensor **out, ml_tensor **in, const void *params) {
    const reduce_params *r = params;
    return reduce_op(out, in[0], r->n_axes, r->axes, r->keepdims, r->kind, r->op, r->name);
}

static ml_status reduce_op(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims,
                           int kind, ml_op_id op, const char *name) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name);
    if (n_axes < 0 || (n_axes > 0 && !axes) || n_axes > x->ndim)
        return ml_set_error(ML_ERR_VALUE, "%s: %d axes given for a tensor of shape %s", name,
                            n_axes, ML_SHAPE_STR(x));
    int reduced[ML_MAX_DIMS], nd = 0;
    int64_t shape[ML_MAX_DIMS];
    ml_status st = parse_axes(x, n_axes, axes, keepdims, name, reduced, &nd, shape);
    if (st) return st;
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++)
        if (reduced[d]) count *= x->shape[d];
    if (kind == RED_MAX && count == 0)
        return ml_set_error(ML_ERR_VALUE, "%s: cannot take the max over an empty axis (shape %s)",
                            name, ML_SHAPE_STR(x));
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, nd, shape))) return st;
    reduce_into(kind, x, reduced, o->data, o->numel);
    if (op == OP_MEAN) {
        float inv = count ? 1.0f / (float)count : NAN;
        for (int64_t i = 0; i < o->numel; i++) o->data[i] *= inv;
    }
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, op, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        for (int d = 0; d < x->ndim; d++) node->iparams[d] = reduced[d];
        node->fparams[0] = (float)count;
    }
    reduce_params rp = {n_axes, {0}, keepdims, kind, op, name};
    for (int i = 0; i < n_axes; i++) rp.axes[i] = axes[i];
    ML_TRACE(op, replay_reduce, 1, &x, o, &rp);
    *out = o;
    return ML_OK;
}

ml_status ml_sum(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims) {
    return reduce_op(out, x, n_axes, axes, keepdims, RED_SUM, OP_SUM, "reduce_sum");
}
ml_status ml_mean(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims) {
    return reduce_op(out, x, n_axes, axes, keepdims, RED_SUM, OP_MEAN, "reduce_mean");
}
ml_status ml_max(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims) {
    return reduce_op(out, x, n_axes, axes, keepdims, RED_MAX, OP_MAX, "reduce_max");
}

#define IN(k) (out->node->inputs[k])

/* g reshaped to keep the reduced dims as 1, then broadcast back to x's shape */
static ml_tensor *expand_back(ml_scope *s, ml_tensor *out, ml_tensor *g) {
    ml_tensor *x = IN(0);
    int64_t kshape[ML_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) kshape[d] = out->node->iparams[d] ? 1 : x->shape[d];
    ml_tensor *gk = RESHAPE(s, g, x->ndim, kshape);
    return BCAST_TO(s, gk, x->ndim, x->shape);
}

ml_status ml__sum_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    gin[0] = ml__keep(expand_back(&s, out, g));
    ml__scope_end(&s);
    return s.status;
}

ml_status ml__mean_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    gin[0] = ml__keep(MULS(&s, expand_back(&s, out, g), 1.0f / out->node->fparams[0]));
    ml__scope_end(&s);
    return s.status;
}

/* The gradient goes to the maxima, split evenly between ties. */
ml_status ml__max_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *x = IN(0);
    ml_tensor *mask = EQUAL(&s, x, expand_back(&s, out, out));
    int axes[ML_MAX_DIMS], n = 0;
    for (int d = 0; d < x->ndim; d++)
        if (out->node->iparams[d]) axes[n++] = d;
    ml_tensor *ties = SUM_AXES(&s, mask, n, axes, 1);
    ml_tensor *share = DIV(&s, mask, ties);
    gin[0] = ml__keep(MUL(&s, expand_back(&s, out, g), share));
    ml__scope_end(&s);
    return s.status;
}

/* --------------------------------------------------- broadcast_to and sum_to */

typedef struct {
    int ndim;
    int64_t shape[ML_MAX_DIMS];
} shape_params;
static ml_status replay_broadcast_to(ml_tensor **out, ml_tensor **in, const void *params) {
    const shape_params *s = params;
    return ml_broadcast_to(out, in[0], s->ndim, s->shape);
}
static ml_status replay_sum_to(ml_tensor **out, ml_tensor **in, const void *params) {
    const shape_params *s = params;
    return ml_sum_to(out, in[0], s->ndim, s->shape);
}
static shape_params make_shape_params(int ndim, const int64_t *shape) {
    shape_params s = {ndim, {0}};
    for (int i = 0; i < ndim; i++) s.shape[i] = shape[i];
    return s;
}

ml_status ml_broadcast_to(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "broadcast_to: input tensor is NULL");
    int64_t numel;
    ml_status st = ml__check_shape(ndim, shape, &numel);
    if (st) return st;
    int ok = ndim >= x->ndim;
    for (int i = 0; ok && i < x->ndim; i++) {
        int64_t d = x->shape[x->ndim - 1 - i], t = shape[ndim - 1 - i];
        ok = d == t || d == 1;
    }
    if (!ok)
        return ml_set_error(ML_ERR_SHAPE, "broadcast_to: cannot broadcast shape %s to %s",
                            ML_SHAPE_STR(x), ml__shape_str((char[160]){0}, 160, ndim, shape));
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, ndim, shape))) return st;
    if (numel > 0) {
        /* strided copy: stride 0 on broadcast dims */
        int64_t str[ML_MAX_DIMS], idx[ML_MAX_DIMS] = {0}, s = 1;
        for (int i = ndim - 1; i >= 0; i--) {
            int ix = x->ndim - ndim + i;
            int64_t d = ix >= 0 ? x->shape[ix] : 1;
            str[i] = d == 1 ? 0 : s;
            s *= d;
        }
        /* the trailing dims x does not broadcast are one contiguous block of x: copy it
         * whole (a (40, 1) kernel to (25, 40, 1) is 25 copies of 40, not 1000 of 1) */
        int d0 = ndim;
        while (d0 > 0 && (str[d0 - 1] != 0 || shape[d0 - 1] == 1)) d0--;
        const int block = d0 < ndim || ndim == 0; /* else the last dim itself is broadcast */
        const int last = block ? d0 : ndim - 1;
        int64_t inner = 1, off = 0;
        for (int d = last; d < ndim; d++) inner *= shape[d];
        /* a broadcast dim just outside the block repeats the same source block: copy it
         * `rep` times in a loop of its own, not one memcpy call per row ((25, 1, 1) to
         * (25, 10, 1) would be 250 calls of 4 bytes: the sinusoid MAML's per-task biases,
         * benchmarks/run_all.py's maml-sin rows) */
        int outer_dims = last;
        int64_t rep = 1;
        if (outer_dims > 0 && str[outer_dims - 1] == 0) rep = shape[--outer_dims];
        float *dst = o->data;
        for (int64_t r = 0; r < numel / (inner * rep); r++) {
            const float *restrict src = x->data + off;
            if (!block || inner == 1) { /* one source value, rep * inner times */
                const float v = src[0];
                for (int64_t j = 0; j < rep * inner; j++) dst[j] = v;
                dst += rep * inner;
            } else if (inner < 1024) {
                for (int64_t j = 0; j < rep; j++, dst += inner) {
                    float *restrict d = dst;
                    for (int64_t i = 0; i < inner; i++) d[i] = src[i];
                }
            } else {
                for (int64_t j = 0; j < rep; j++, dst += inner)
                    memcpy(dst, src, (size_t)inner * sizeof(float));
            }
            for (int d = outer_dims - 1; d >= 0; d--) {
                idx[d]++;
                off += str[d];
                if (idx[d] < shape[d]) break;
                off -= str[d] * idx[d];
                idx[d] = 0;
            }
        }
    }
    if (ml__should_record(1, &x) && (st = ml__record(o, OP_BROADCAST_TO, 1, &x, NULL))) {
        ml_release(o);
        return st;
    }
    shape_params sp = make_shape_params(ndim, shape);
    ML_TRACE(OP_BROADCAST_TO, replay_broadcast_to, 1, &x, o, &sp);
    *out = o;
    return ML_OK;
}

ml_status ml__broadcast_to_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    gin[0] = ml__keep(SUM_TO(&s, g, IN(0)));
    ml__scope_end(&s);
    return s.status;
}

ml_status ml_sum_to(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "sum_to: input tensor is NULL");
    int64_t numel;
    ml_status st = ml__check_shape(ndim, shape, &numel);
    if (st) return st;
    int ok = ndim <= x->ndim;
    for (int i = 0; ok && i < ndim; i++) {
        int64_t d = x->shape[x->ndim - 1 - i], t = shape[ndim - 1 - i];
        ok = d == t || t == 1;
    }
    if (!ok)
        return ml_set_error(ML_ERR_SHAPE, "sum_to: cannot sum shape %s down to %s", ML_SHAPE_STR(x),
                            ml__shape_str((char[160]){0}, 160, ndim, shape));
    if (ndim == x->ndim) {
        int same = 1;
        for (int i = 0; i < ndim; i++) same &= x->shape[i] == shape[i];
        if (same) { /* nothing to sum: the same tensor */
            ml_retain(x);
            *out = x;
            return ML_OK;
        }
    }
    int reduced[ML_MAX_DIMS];
    int lead = x->ndim - ndim;
    for (int d = 0; d < x->ndim; d++)
        reduced[d] = d < lead || (shape[d - lead] == 1 && x->shape[d] != 1);
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, ndim, shape))) return st;
    reduce_into(RED_SUM, x, reduced, o->data, o->numel);
    if (ml__should_record(1, &x) && (st = ml__record(o, OP_SUM_TO, 1, &x, NULL))) {
        ml_release(o);
        return st;
    }
    shape_params sp = make_shape_params(ndim, shape);
    ML_TRACE(OP_SUM_TO, replay_sum_to, 1, &x, o, &sp);
    *out = o;
    return ML_OK;
}

ml_status ml__sum_to_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    gin[0] = ml__keep(BCAST_TO(&s, g, IN(0)->ndim, IN(0)->shape));
    ml__scope_end(&s);
    return s.status;
}

/* ------------------------------------------------------ softmax, log_softmax */

/* x seen as (outer, n, inner) around `axis`; max-shifted for stability. */
static void softmax_kernel(const ml_tensor *x, int axis, float *o, int log) {
    int64_t outer = 1, n = x->shape[axis], inner = 1;
    for (int d = 0; d < axis; d++) outer *= x->shape[d];
    for (int d = axis + 1; d < x->ndim; d++) inner *= x->shape[d];
    for (int64_t a = 0; a < outer; a++) {
        for (int64_t i = 0; i < inner; i++) {
            const float *src = x->data + a * n * inner + i;
            float *dst = o + a * n * inner + i;
            float m = -INFINITY;
            for (int64_t k = 0; k < n; k++) m = src[k * inner] > m ? src[k * inner] : m;
            if (m == -INFINITY) m = 0; /* all -inf: avoid inf - inf */
            float sum = 0;
            for (int64_t k = 0; k < n; k++) {
                float e = expf(src[k * inner] - m);
                if (!log) dst[k * inner] = e;
                sum += e;
            }
            if (log) {
                float lse = m + logf(sum);
                for (int64_t k = 0; k < n; k++) dst[k * inner] = src[k * inner] - lse;
            } else {
                float inv = 1.0f / sum;
                for (int64_t k = 0; k < n; k++) dst[k * inner] *= inv;
            }
        }
    }
}

static ml_status softmax_op(ml_tensor **out, ml_tensor *x, int axis, int log);
typedef struct {
    int axis, log;
} softmax_params;
static ml_status replay_softmax(ml_tensor **out, ml_tensor **in, const void *params) {
    const softmax_params *s = params;
    return softmax_op(out, in[0], s->axis, s->log);
}

static ml_status softmax_op(ml_tensor **out, ml_tensor *x, int axis, int log) {
    const char *name = log ? "log_softmax" : "softmax";
    if (!x) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name);
    int a = ml__axis(axis, x->ndim);
    if (a < 0) return ml__axis_error(name, axis, x);
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim, x->shape);
    if (st) return st;
    softmax_kernel(x, a, o->data, log);
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, log ? OP_LOG_SOFTMAX : OP_SOFTMAX, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = a;
    }
    softmax_params smp = {a, log};
    ML_TRACE(log ? OP_LOG_SOFTMAX : OP_SOFTMAX, replay_softmax, 1, &x, o, &smp);
    *out = o;
    return ML_OK;
}

ml_status ml_softmax(ml_tensor **out, ml_tensor *x, int axis) {
    return softmax_op(out, x, axis, 0);
}
ml_status ml_log_softmax(ml_tensor **out, ml_tensor *x, int axis) {
    return softmax_op(out, x, axis, 1);
}

/* softmax: dx = y * (g - sum(g * y, axis)) */
ml_status ml__softmax_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    int axis = (int)out->node->iparams[0];
    ml_tensor *dot = SUM_AXES(&s, MUL(&s, g, out), 1, &axis, 1);
    gin[0] = ml__keep(MUL(&s, out, SUB(&s, g, dot)));
    ml__scope_end(&s);
    return s.status;
}

/* log_softmax: dx = g - exp(y) * sum(g, axis) */
ml_status ml__log_softmax_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    int axis = (int)out->node->iparams[0];
    ml_tensor *gsum = SUM_AXES(&s, g, 1, &axis, 1);
    gin[0] = ml__keep(SUB(&s, g, MUL(&s, EXP(&s, out), gsum)));
    ml__scope_end(&s);
    return s.status;
}
