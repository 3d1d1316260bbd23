/* shape.c — reshape, transpose, concat, narrow/pad_axis, gather/scatter_add, pick, one_hot.
 * Each pair is the other's backward, so gradients of any order stay inside this set. */
#include <stdio.h>

#include "ops.h"

#define IN(k) (out->node->inputs[k])

/* replay functions for traces: the same op with the recorded parameters */
typedef struct {
    int ndim;
    int64_t shape[ML_MAX_DIMS];
} reshape_params;
static ml_status replay_reshape(ml_tensor **out, ml_tensor **in, const void *p) {
    return ml_reshape(out, in[0], ((const reshape_params *)p)->ndim,
                      ((const reshape_params *)p)->shape);
}
typedef struct {
    int perm[ML_MAX_DIMS];
} transpose_params;
static ml_status replay_transpose(ml_tensor **out, ml_tensor **in, const void *p) {
    return ml_transpose(out, in[0], ((const transpose_params *)p)->perm);
}
typedef struct {
    int n, axis;
} concat_params;
static ml_status replay_concat(ml_tensor **out, ml_tensor **in, const void *p) {
    return ml_concat(out, ((const concat_params *)p)->n, in, ((const concat_params *)p)->axis);
}
typedef struct {
    int axis;
    int64_t start, len;
} range_params;
static ml_status replay_narrow(ml_tensor **out, ml_tensor **in, const void *p) {
    const range_params *r = p;
    return ml_narrow(out, in[0], r->axis, r->start, r->len);
}
static ml_status replay_pad_axis(ml_tensor **out, ml_tensor **in, const void *p) {
    const range_params *r = p;
    return ml_pad_axis(out, in[0], r->axis, r->start, r->len);
}
/* variable length: the indices follow the header */
typedef struct {
    int axis, scatter, n;
    int64_t size;
    int64_t idx[];
} index_params;
static ml_status gather_like(ml_tensor **out, ml_tensor *x, int n, const int64_t *idx, int axis,
                             int64_t size, int scatter);
static ml_status replay_gather(ml_tensor **out, ml_tensor **in, const void *p) {
    const index_params *g = p;
    return gather_like(out, in[0], g->n, g->idx, g->axis, g->size, g->scatter);
}
static ml_status replay_pick(ml_tensor **out, ml_tensor **in, const void *p) {
    const index_params *g = p;
    return ml_pick(out, in[0], g->n, g->idx);
}
/* records an op whose parameters end in an index list */
static void trace_indexed(ml_op_id op, ml_replay_fn fn, ml_tensor *x, ml_tensor *o, int axis,
                          int scatter, int n, int64_t size, const int64_t *idx) {
    if (!ml__trace_active) return;
    size_t bytes = sizeof(index_params) + (size_t)n * sizeof(int64_t);
    index_params *p = malloc(bytes);
    if (!p) {
        ml__trace_fail(ml_set_error(ML_ERR_OOM, "out of memory while tracing"));
        return;
    }
    p->axis = axis;
    p->scatter = scatter;
    p->n = n;
    p->size = size;
    if (n) memcpy(p->idx, idx, (size_t)n * sizeof(int64_t));
    ml__trace_record(op, fn, 1, &x, o, p, bytes);
    free(p);
}

/* ------------------------------------------------------------------ reshape */

ml_status ml_reshape(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "reshape: input tensor is NULL");
    int64_t numel;
    ml_status st = ml__check_shape(ndim, shape, &numel);
    if (st) return st;
    if (numel != x->numel)
        return ml_set_error(ML_ERR_SHAPE,
                            "reshape: cannot reshape a tensor of shape %s (%lld "
                            "elements) into shape %s",
                            ML_SHAPE_STR(x), (long long)x->numel,
                            ml__shape_str((char[160]){0}, 160, ndim, shape));
    ml_tensor *o = NULL;
    if ((st = ml__view(&o, x, ndim, shape))) return st; /* shares memory: no copy */
    if (ml__should_record(1, &x) && (st = ml__record(o, OP_RESHAPE, 1, &x, NULL))) {
        ml_release(o);
        return st;
    }
    reshape_params rp = {ndim, {0}};
    for (int i = 0; i < ndim; i++) rp.shape[i] = shape[i];
    ML_TRACE(OP_RESHAPE, replay_reshape, 1, &x, o, &rp);
    *out = o;
    return ML_OK;
}

ml_status ml__reshape_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    gin[0] = ml__keep(RESHAPE_LIKE(&s, g, IN(0)));
    ml__scope_end(&s);
    return s.status;
}

/* ---------------------------------------------------------------- transpose */

static void permute_kernel(const ml_tensor *x, const int *perm, ml_tensor *o) {
    int nd = x->ndim;
    if (o->numel == 0) return;
    if (nd == 2 && perm[0] == 1) { /* plain transpose, blocked for the cache */
        int64_t r = x->shape[0], c = x->shape[1];
        for (int64_t i0 = 0; i0 < r; i0 += 32)
            for (int64_t j0 = 0; j0 < c; j0 += 32)
                for (int64_t i = i0; i < i0 + 32 && i < r; i++)
                    for (int64_t j = j0; j < j0 + 32 && j < c; j++)
                        o->data[j * r + i] = x->data[i * c + j];
        return;
    }
    int64_t xstride[ML_MAX_DIMS], st[ML_MAX_DIMS], idx[ML_MAX_DIMS] = {0}, s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        xstride[d] = s;
        s *= x->shape[d];
    }
    for (int d = 0; d < nd; d++) st[d] = xstride[perm[d]]; /* stride in x of out's dim d */
    int64_t off = 0;
    for (int64_t i = 0; i < o->numel; i++) {
        o->data[i] = x->data[off];
        for (int d = nd - 1; d >= 0; d--) {
            idx[d]++;
            off += st[d];
            if (idx[d] < o->shape[d]) break;
            off -= st[d] * idx[d];
            idx[d] = 0;
        }
    }
}

ml_status ml__axis_error(const char *op, int axis, const ml_tensor *x) {
    return ml_set_error(ML_ERR_VALUE,
                        "%s: axis %d is out of range for a tensor of rank %d "
                        "(shape %s)",
                        op, axis, x->ndim, ML_SHAPE_STR(x));
}

ml_status ml_transpose(ml_tensor **out, ml_tensor *x, const int *perm) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "transpose: input tensor is NULL");
    int nd = x->ndim, p[ML_MAX_DIMS], seen[ML_MAX_DIMS] = {0};
    for (int d = 0; d < nd; d++) {
        p[d] = perm ? perm[d] : nd - 1 - d;
        int a = ml__axis(p[d], nd);
        if (a < 0 || seen[a]) {
            char given[16 * ML_MAX_DIMS] = "", *w = given;
            for (int e = 0; e < nd; e++)
                w += snprintf(w, (size_t)(given + sizeof given - w), "%s%d", e ? ", " : "",
                              perm ? perm[e] : nd - 1 - e);
            return ml_set_error(ML_ERR_VALUE,
                                "transpose: perm (%s) is not a permutation of the "
                                "%d axes of a tensor of shape %s (axis %d %s)",
                                given, nd, ML_SHAPE_STR(x), p[d],
                                a < 0 ? "is out of range" : "is repeated");
        }
        seen[a] = 1;
        p[d] = a;
    }
    int64_t shape[ML_MAX_DIMS];
    for (int d = 0; d < nd; d++) shape[d] = x->shape[p[d]];
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, nd, shape);
    if (st) return st;
    permute_kernel(x, p, o);
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, OP_TRANSPOSE, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        for (int d = 0; d < nd; d++) node->iparams[d] = p[d];
    }
    transpose_params pp;
    for (int d = 0; d < nd; d++) pp.perm[d] = p[d];
    ML_TRACE(OP_TRANSPOSE, replay_transpose, 1, &x, o, &pp);
    *out = o;
    return ML_OK;
}

ml_status ml__transpose_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    int inv[ML_MAX_DIMS];
    for (int d = 0; d < out->ndim; d++) inv[out->node->iparams[d]] = d;
    ml_tensor *r = NULL;
    gin[0] = ml__keep(ml__push(&s, ml_transpose(&r, g, inv), &r));
    ml__scope_end(&s);
    return s.status;
}

/* ------------------------------------------------------------ concat/narrow */

static void outer_inner(const ml_tensor *x, int axis, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < axis; d++) *outer *= x->shape[d];
    for (int d = axis + 1; d < x->ndim; d++) *inner *= x->shape[d];
}

ml_status ml_concat(ml_tensor **out, int n, ml_tensor *const *xs, int axis) {
    if (n < 1 || !xs) return ml_set_error(ML_ERR_VALUE, "concat: needs at least one tensor");
    for (int i = 0; i < n; i++)
        if (!xs[i]) return ml_set_error(ML_ERR_VALUE, "concat: tensor %d is NULL", i);
    const ml_tensor *x0 = xs[0];
    int a = ml__axis(axis, x0->ndim);
    if (a < 0) return ml__axis_error("concat", axis, x0);
    int64_t shape[ML_MAX_DIMS];
    for (int d = 0; d < x0->ndim; d++) shape[d] = x0->shape[d];
    shape[a] = 0;
    for (int i = 0; i < n; i++) {
        int ok = xs[i]->ndim == x0->ndim;
        for (int d = 0; ok && d < x0->ndim; d++) ok = d == a || xs[i]->shape[d] == x0->shape[d];
        if (!ok)
            return ml_set_error(ML_ERR_SHAPE,
                                "concat: tensor %d has shape %s, which does not "
                                "match shape %s outside axis %d",
                                i, ML_SHAPE_STR(xs[i]), ML_SHAPE_STR(x0), a);
        shape[a] += xs[i]->shape[a];
    }
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x0->ndim, shape);
    if (st) return st;
    int64_t outer, inner;
    outer_inner(o, a, &outer, &inner);
    int64_t orow = shape[a] * inner, off = 0;
    for (int i = 0; i < n; i++) {
        int64_t chunk = xs[i]->shape[a] * inner;
        for (int64_t r = 0; r < outer && chunk; r++)
            memcpy(o->data + r * orow + off, xs[i]->data + r * chunk,
                   (size_t)chunk * sizeof(float));
        off += chunk;
    }
    ml_node *node = NULL;
    if (ml__should_record(n, xs)) {
        if ((st = ml__record(o, OP_CONCAT, n, xs, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = a;
    }
    concat_params cp = {n, a};
    ML_TRACE(OP_CONCAT, replay_concat, n, xs, o, &cp);
    *out = o;
    return ML_OK;
}

ml_status ml__concat_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    int axis = (int)out->node->iparams[0];
    int64_t start = 0;
    ml_status st = ML_OK;
    for (int i = 0; i < out->node->n_inputs && st == ML_OK; i++) {
        ml_tensor *x = IN(i);
        if (ml__wants(i, x)) st = ml_narrow(&gin[i], g, axis, start, x->shape[axis]);
        start += x->shape[axis];
    }
    return st;
}

static void copy_block(const ml_tensor *src, ml_tensor *dst, int axis, int64_t src_start,
                       int64_t dst_start, int64_t len) {
    int64_t outer, inner;
    outer_inner(src, axis, &outer, &inner);
    int64_t srow = src->shape[axis] * inner, drow = dst->shape[axis] * inner;
    if (len * inner == 0) return;
    for (int64_t r = 0; r < outer; r++)
        memcpy(dst->data + r * drow + dst_start * inner, src->data + r * srow + src_start * inner,
               (size_t)(len * inner) * sizeof(float));
}

ml_status ml_narrow(ml_tensor **out, ml_tensor *x, int axis, int64_t start, int64_t length) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "narrow: input tensor is NULL");
    int a = ml__axis(axis, x->ndim);
    if (a < 0) return ml__axis_error("narrow", axis, x);
    /* both bounds against the size, never start + length: that can overflow */
    if (start < 0 || length < 0 || start > x->shape[a] || length > x->shape[a] - start)
        return ml_set_error(ML_ERR_VALUE,
                            "narrow: start %lld and length %lld do not fit in "
                            "axis %d (size %lld) of a tensor of shape %s",
                            (long long)start, (long long)length, axis, (long long)x->shape[a],
                            ML_SHAPE_STR(x));
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[a] = length;
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim, shape);
    if (st) return st;
    copy_block(x, o, a, start, 0, length);
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, OP_NARROW, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = a;
        node->iparams[1] = start;
    }
    range_params rp = {a, start, length};
    ML_TRACE(OP_NARROW, replay_narrow, 1, &x, o, &rp);
    *out = o;
    return ML_OK;
}

ml_status ml__narrow_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    int a = (int)out->node->iparams[0];
    return ml_pad_axis(&gin[0], g, a, out->node->iparams[1], IN(0)->shape[a]);
}

ml_status ml_pad_axis(ml_tensor **out, ml_tensor *x, int axis, int64_t start, int64_t size) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "pad_axis: input tensor is NULL");
    int a = ml__axis(axis, x->ndim);
    if (a < 0) return ml__axis_error("pad_axis", axis, x);
    if (start < 0 || size < 0 || start > size || x->shape[a] > size - start)
        return ml_set_error(ML_ERR_VALUE,
                            "pad_axis: %lld rows at start %lld do not fit in size "
                            "%lld",
                            (long long)x->shape[a], (long long)start, (long long)size);
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[a] = size;
    ml_tensor *o = NULL;
    ml_status st = ml_tensor_zeros(&o, x->ndim, shape);
    if (st) return st;
    copy_block(x, o, a, 0, start, x->shape[a]);
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, OP_PAD_AXIS, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = a;
        node->iparams[1] = start;
    }
    range_params rp = {a, start, size};
    ML_TRACE(OP_PAD_AXIS, replay_pad_axis, 1, &x, o, &rp);
    *out = o;
    return ML_OK;
}

ml_status ml__pad_axis_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    int a = (int)out->node->iparams[0];
    return ml_narrow(&gin[0], g, a, out->node->iparams[1], IN(0)->shape[a]);
}

/* ------------------------------------------------------- gather/scatter_add */

static ml_status copy_indices(ml_node *node, int n, const int64_t *idx) {
    node->index = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!node->index) return ml_set_error(ML_ERR_OOM, "out of memory");
    if (n) memcpy(node->index, idx, (size_t)n * sizeof(int64_t));
    node->n_index = n;
    return ML_OK;
}

static ml_status check_indices(const char *name, int n, const int64_t *idx, int64_t dim) {
    if (n < 0 || (n > 0 && !idx)) return ml_set_error(ML_ERR_VALUE, "%s: bad index list", name);
    for (int i = 0; i < n; i++)
        if (idx[i] < -dim || idx[i] >= dim)
            return ml_set_error(ML_ERR_VALUE,
                                "%s: index %lld is out of range for an axis of "
                                "size %lld",
                                name, (long long)idx[i], (long long)dim);
    return ML_OK;
}

/* A gather copies, for each outer row, the picked slices of x; ranges of indices run over
 * the pool when the output is large (a meta-batch of images), one range otherwise. */
#define GATHER_PAR_MIN (1 << 18) /* floats: below, a copy is quicker than a handoff */
typedef struct {
    const float *x;
    float *o;
    const int64_t *idx;
    int64_t dim, inner, outer, xrow, orow, step, n;
} gather_job;

static void gather_part(void *ctx, int64_t t) {
    const gather_job *j = ctx;
    const int64_t i1 = (t + 1) * j->step < j->n ? (t + 1) * j->step : j->n;
    for (int64_t r = 0; r < j->outer; r++)
        for (int64_t i = t * j->step; i < i1; i++) {
            const int64_t k = j->idx[i] < 0 ? j->idx[i] + j->dim : j->idx[i];
            memcpy(j->o + r * j->orow + i * j->inner, j->x + r * j->xrow + k * j->inner,
                   (size_t)j->inner * sizeof(float));
        }
}

static ml_status gather_like(ml_tensor **out, ml_tensor *x, int n, const int64_t *idx, int axis,
                             int64_t size, int scatter) {
    const char *name = scatter ? "scatter_add" : "gather";
    if (!x) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name);
    int a = ml__axis(axis, x->ndim);
    if (a < 0) return ml__axis_error(name, axis, x);
    int64_t dim = scatter ? size : x->shape[a];
    if (scatter && (size < 0 || x->shape[a] != n))
        return ml_set_error(ML_ERR_SHAPE, "scatter_add: %d indices for axis %d of shape %s", n, a,
                            ML_SHAPE_STR(x));
    ml_status st = check_indices(name, n, idx, dim);
    if (st) return st;
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[a] = scatter ? size : n;
    ml_tensor *o = NULL;
    /* a gather writes every element: no need to clear it first */
    if ((st = scatter ? ml_tensor_zeros(&o, x->ndim, shape) : ml__new(&o, x->ndim, shape)))
        return st;
    int64_t outer, inner;
    outer_inner(x, a, &outer, &inner);
    int64_t xrow = x->shape[a] * inner, orow = shape[a] * inner;
    if (scatter) {
        for (int64_t r = 0; r < outer; r++) {
            for (int i = 0; i < n; i++) {
                int64_t k = idx[i] < 0 ? idx[i] + dim : idx[i];
                float *dst = o->data + r * orow + k * inner;
                const float *src = x->data + r * xrow + (int64_t)i * inner;
                for (int64_t j = 0; j < inner; j++) dst[j] += src[j];
            }
        }
    } else {
        const int64_t parts = o->numel >= GATHER_PAR_MIN ? ml_get_num_threads() : 1;
        gather_job j = {x->data, o->data, idx,
                        dim,     inner,   outer,
                        xrow,    orow,    n > parts ? (n + parts - 1) / parts : 1,
                        n};
        ml__parallel_for((n + j.step - 1) / j.step, 0, gather_part, &j);
    }
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, scatter ? OP_SCATTER_ADD : OP_GATHER, 1, &x, &node)) ||
            (st = copy_indices(node, n, idx))) {
            ml_release(o);
            return st;
        }
        node->iparams[0] = a;
    }
    trace_indexed(scatter ? OP_SCATTER_ADD : OP_GATHER, replay_gather, x, o, a, scatter, n, size,
                  idx);
    *out = o;
    return ML_OK;
}

ml_status ml_gather(ml_tensor **out, ml_tensor *x, int n, const int64_t *indices, int axis) {
    return gather_like(out, x, n, indices, axis, 0, 0);
}
ml_status ml_scatter_add(ml_tensor **out, ml_tensor *x, int n, const int64_t *indices, int axis,
                         int64_t size) {
    return gather_like(out, x, n, indices, axis, size, 1);
}

ml_status ml__gather_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    const ml_node *n = out->node;
    int a = (int)n->iparams[0];
    return ml_scatter_add(&gin[0], g, (int)n->n_index, n->index, a, IN(0)->shape[a]);
}

ml_status ml__scatter_add_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    const ml_node *n = out->node;
    return ml_gather(&gin[0], g, (int)n->n_index, n->index, (int)n->iparams[0]);
}

/* ----------------------------------------------------------- pick, one_hot */

ml_status ml_one_hot(ml_tensor **out, int64_t n, const int64_t *labels, int64_t depth) {
    if (n < 0 || depth < 1 || (n > 0 && !labels))
        return ml_set_error(ML_ERR_VALUE, "one_hot: needs labels and a depth >= 1 (got %lld)",
                            (long long)depth);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= depth)
            return ml_set_error(ML_ERR_VALUE, "label %lld at position %lld is outside [0, %lld)",
                                (long long)labels[i], (long long)i, (long long)depth);
    int64_t shape[2] = {n, depth};
    ml_status st = ml_tensor_zeros(out, 2, shape);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) (*out)->data[i * depth + labels[i]] = 1.0f;
    ml__constant(*out);
    return ML_OK;
}

ml_status ml_pick(ml_tensor **out, ml_tensor *x, int64_t n, const int64_t *labels) {
    if (!x) return ml_set_error(ML_ERR_VALUE, "pick: input tensor is NULL");
    if (x->ndim < 1)
        return ml_set_error(ML_ERR_SHAPE, "pick: needs a tensor with a class axis, got a scalar");
    int64_t c = x->shape[x->ndim - 1], rows = c ? x->numel / c : 0;
    if (n != rows)
        return ml_set_error(ML_ERR_SHAPE,
                            "labels: %lld labels for predictions of shape %s "
                            "(expected %lld)",
                            (long long)n, ML_SHAPE_STR(x), (long long)rows);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= c)
            return ml_set_error(ML_ERR_VALUE,
                                "label %lld at position %lld is outside [0, %lld) "
                                "for predictions of shape %s",
                                (long long)labels[i], (long long)i, (long long)c, ML_SHAPE_STR(x));
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, x->ndim - 1, x->shape);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) o->data[i] = x->data[i * c + labels[i]];
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, OP_PICK, 1, &x, &node)) ||
            (st = copy_indices(node, (int)n, labels))) {
            ml_release(o);
            return st;
        }
    }
    trace_indexed(OP_PICK, replay_pick, x, o, 0, 0, (int)n, 0, labels);
    *out = o;
    return ML_OK;
}

/* d out_i / d x_ij = [j == label_i]: g[..., None] * one_hot */
ml_status ml__pick_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    ml_scope s = {0};
    ml_tensor *x = IN(0), *oh = NULL;
    int64_t c = x->shape[x->ndim - 1];
    int64_t col[ML_MAX_DIMS];
    memcpy(col, x->shape, sizeof col);
    col[x->ndim - 1] = 1;
    ml_tensor *onehot = ml__push(&s, ml_one_hot(&oh, out->node->n_index, out->node->index, c), &oh);
    gin[0] = ml__keep(MUL(&s, RESHAPE(&s, g, x->ndim, col), RESHAPE_LIKE(&s, onehot, x)));
    ml__scope_end(&s);
    return s.status;
}
