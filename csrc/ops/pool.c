/* pool.c — 2-D max and average pooling, channels-last (NHWC) as Keras, and their backward
 * ops, each with its own backward so gradients of any order stay exact:
 *
 *   max_pool2d(x)           y = x at the first maximum of each window (argmax saved: its
 *                           position in the window, one byte for windows of up to 255
 *                           positions, an eighth of PyTorch's int64 index; int32 above)
 *   max_pool2d_scatter(g)   dx: g added at the argmax positions   (the adjoint of the gather)
 *   max_pool2d_gather(G)    G read at the argmax positions        (the adjoint of the scatter)
 *     d max_pool2d = scatter, d scatter = gather, d gather = scatter; the argmax is a
 *     constant of the graph (a max is piecewise linear).
 *   avg_pool2d(x)           y = mean of the window's elements inside the input
 *   avg_pool2d_grad(g)      dx = sum over windows covering x of g / count(window)
 *     d avg_pool2d = avg_pool2d_grad and d avg_pool2d_grad = avg_pool2d (the two are
 *     adjoints of each other).
 * GlobalAveragePooling2D is a mean over axes (1, 2): ml_global_avg_pool2d.
 */
#include <math.h>

#include "ops.h"
#include "../kernels/cpu.h"

#define IN(k) (out->node->inputs[k])


/* Checks a pool's arguments and plans its geometry (Keras' 'same'/'valid' rules). */
static ml_status pool_plan(const char *name, ml_tensor **out, ml_tensor *x, int ph, int pw, int sh,
                           int sw, ml_padding padding, ml_win2d *g) {
    if (!out || !x) return ml_set_error(ML_ERR_VALUE, "%s: input tensor is NULL", name);
    if (ph <= 0 || pw <= 0)
        return ml_set_error(ML_ERR_VALUE, "%s: pool size must be positive, got (%d, %d)", name, ph,
                            pw);
    return ml__win2d_plan(name, x, ph, pw, sh, sw, padding, g);
}

/* Valid window range [i0, i1) of output row o along one dim. */
static inline void win_range(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t size,
                             int64_t *i0, int64_t *i1) {
    int64_t a = o * stride - pad, b = a + k;
    *i0 = a < 0 ? 0 : a;
    *i1 = b > size ? size : b;
}

/* --------------------------------------------------------------- max pool */

/* The argmax of an output is its position in the (unclipped) window, p = (ih - oh sh +
 * pt) kw + (iw - ow sw + pl): a byte when the window has at most ARG_BYTE_MAX positions
 * (every pool but a large global one), else an int32. It is kept by the pool's node and
 * by each scatter/gather node of the graph (a MAML inner loop's step holds two per
 * pool), so a quarter of an int32 offset's bytes matters (benchmarks/conv84.py --peak). */
#define ARG_BYTE_MAX 255
static inline int arg_is_byte(const ml_win2d *g) { return g->kh * g->kw <= ARG_BYTE_MAX; }
static inline size_t arg_size(const ml_win2d *g) { return arg_is_byte(g) ? 1 : sizeof(int32_t); }

/* Per output pixel: pass 1 takes the max over the window (vectorised over channels), pass 2
 * finds the first position holding it (first maximum wins, as PyTorch; a NaN is the max
 * once met, and the first NaN is its position). */
ML_INLINE void maxpool_kernel_body(const ml_win2d *g, const float *x, float *y, void *arg,
                                   int32_t *pos, int64_t n_lo, int64_t n_hi) {
    const int64_t C = g->c;
    uint8_t *arg8 = arg_is_byte(g) ? arg : NULL;
    int32_t *arg32 = arg_is_byte(g) ? NULL : arg;
    for (int64_t n = n_lo; n < n_hi; n++) {
        const float *img = x + n * g->h * g->w * C;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            int64_t h0, h1;
            win_range(oh, g->sh, g->pt, g->kh, g->h, &h0, &h1);
            for (int64_t ow = 0; ow < g->ow; ow++) {
                int64_t w0, w1;
                win_range(ow, g->sw, g->pl, g->kw, g->w, &w0, &w1);
                int64_t o = ((n * g->oh + oh) * g->ow + ow) * C;
                float *restrict m = y + o;
                const int64_t ah = oh * g->sh - g->pt, aw = ow * g->sw - g->pl;
                const float *first = img + (h0 * g->w + w0) * C;
                for (int64_t c = 0; c < C; c++) m[c] = first[c];
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) {
                        const float *restrict src = img + (ih * g->w + iw) * C;
                        for (int64_t c = 0; c < C; c++) {
                            float v = src[c], cur = m[c];
                            m[c] = (v > cur || (v != v && cur == cur)) ? v : cur;
                        }
                    }
                for (int64_t c = 0; c < C; c++) pos[c] = -1;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) {
                        const int32_t p = (int32_t)((ih - ah) * g->kw + (iw - aw));
                        const float *restrict src = img + (ih * g->w + iw) * C;
                        for (int64_t c = 0; c < C; c++) {
                            float v = src[c];
                            int hit = (v == m[c]) | (v != v);
                            pos[c] = (pos[c] < 0 && hit) ? p : pos[c];
                        }
                    }
                if (arg8)
                    for (int64_t c = 0; c < C; c++) arg8[o + c] = (uint8_t)pos[c];
                else
                    for (int64_t c = 0; c < C; c++) arg32[o + c] = pos[c];
            }
        }
    }
}
/* compiled for AVX2 and for the baseline (the channel loops vectorise at either width) */
ML_CPU_CLONES(maxpool_kernel,
              (const ml_win2d *g, const float *x, float *y, void *arg, int32_t *pos, int64_t n_lo,
               int64_t n_hi),
              (g, x, y, arg, pos, n_lo, n_hi))

/* Images are split over the thread pool (in a fixed number of chunks; every output and
 * every scattered gradient belongs to one image, so results do not depend on threads). */
#define POOL_CHUNKS 8
#define PAR_MIN_ELEMS (1 << 16)
typedef struct pool_job {
    const ml_win2d *g;
    const float *x;
    float *y;
    void *arg;
    int32_t *pos;
    int64_t step;             /* images per chunk */
    const void *idx;          /* scatter / gather: the argmax (window positions) */
    const int64_t *rel;       /* byte argmax: window position -> offset from its corner */
    const float *gin;
    float *o;
    int scatter;
} pool_job;

static void maxpool_part(void *ctx, int64_t i) {
    const pool_job *j = ctx;
    int64_t lo = i * j->step, hi = lo + j->step < j->g->n ? lo + j->step : j->g->n;
    maxpool_kernel(j->g, j->x, j->y, j->arg, j->pos + i * (j->g->c ? j->g->c : 1), lo, hi);
}

/* The offset of a window position p from the window's corner (an int32 argmax) */
static inline int64_t pos_offset(const ml_win2d *g, int64_t p) {
    return ((p / g->kw) * g->w + p % g->kw) * g->c;
}

/* Whether the windows tile the input without overlap or padding (stride = window, every
 * window inside: Keras' MaxPool2D(2) on 'valid'); a last row or column no window covers
 * (a 7-row input) is allowed. */
static inline int tiles(const ml_win2d *g) {
    return g->sh == g->kh && g->sw == g->kw && g->pt == 0 && g->pl == 0 && g->oh * g->kh <= g->h &&
           g->ow * g->kw <= g->w;
}

/* g where keep, else +0, with the bits of the scatter's 0 + g (a -0 gradient becomes +0):
 * branch-free (a mask, not a select the compiler may turn into a jump on a random argmax),
 * so the channel loops that call it vectorise */
ML_INLINE float kept_grad(float g, int keep) {
    uint32_t b;
    memcpy(&b, &g, sizeof b);
    b &= 0u - (uint32_t)keep;
    float v;
    memcpy(&v, &b, sizeof v);
    return v + 0.0f;
}

/* The scatter of tiling windows (byte argmax): every input element is written once, the
 * gradient where it is its window's argmax and zero elsewhere, with no memset of the
 * output first and no read-modify-write (kept_grad: branch-free, the bits of the old
 * 0 + g). Rows and columns no window covers are zeroed. */
static void scatter_tiles(const ml_win2d *g, const uint8_t *a8, const int64_t *rel,
                          const float *gin, float *o, int64_t lo, int64_t hi) {
    const int64_t C = g->c, per_y = g->oh * g->ow * C, per_x = g->h * g->w * C;
    const int64_t kk = g->kh * g->kw, row = g->w * C;
    for (int64_t n = lo; n < hi; n++) {
        float *img = o + n * per_x;
        int64_t t = n * per_y;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            for (int64_t ow = 0; ow < g->ow; ow++, t += C) {
                float *at = img + (oh * g->kh * g->w + ow * g->kw) * C;
                const uint8_t *a = a8 + t;
                const float *gv = gin + t;
                for (int64_t p = 0; p < kk; p++) {
                    float *d = at + rel[p];
                    const uint32_t pp = (uint32_t)p;
                    for (int64_t c = 0; c < C; c++) d[c] = kept_grad(gv[c], a[c] == pp);
                }
            }
            const int64_t right = g->w - g->ow * g->kw; /* columns no window covers */
            if (right)
                for (int64_t r = 0; r < g->kh; r++)
                    memset(img + (oh * g->kh + r) * row + g->ow * g->kw * C, 0,
                           (size_t)(right * C) * sizeof(float));
        }
        const int64_t below = g->h - g->oh * g->kh; /* rows no window covers */
        if (below) memset(img + g->oh * g->kh * row, 0, (size_t)(below * row) * sizeof(float));
    }
}

/* Scatter: each image's outputs added in output order t, as the flat offsets were before
 * (the same sums, the same bits). Per output pixel its window's corner, per channel the
 * argmax's offset from it (a table for byte positions). */
static void index_part(void *ctx, int64_t i) {
    const pool_job *j = ctx;
    const ml_win2d *g = j->g;
    int64_t lo = i * j->step, hi = lo + j->step < g->n ? lo + j->step : g->n;
    const int64_t C = g->c, per_y = g->oh * g->ow * C, per_x = g->h * g->w * C;
    const uint8_t *a8 = j->rel ? j->idx : NULL;
    const int32_t *a32 = j->rel ? NULL : j->idx;
    const int64_t *rel = j->rel;
    const float *gin = j->gin;
    float *o = j->o;
    if (j->scatter && a8 && tiles(g)) {
        scatter_tiles(g, a8, rel, gin, o, lo, hi);
        return;
    }
    if (j->scatter) memset(o + lo * per_x, 0, (size_t)((hi - lo) * per_x) * sizeof(float));
    for (int64_t n = lo; n < hi; n++) {
        const int64_t img = n * per_x;
        int64_t t = n * per_y;
        for (int64_t oh = 0; oh < g->oh; oh++)
            for (int64_t ow = 0; ow < g->ow; ow++, t += C) {
                const int64_t at = img + ((oh * g->sh - g->pt) * g->w + (ow * g->sw - g->pl)) * C;
                if (j->scatter && a8)
                    for (int64_t c = 0; c < C; c++) o[at + rel[a8[t + c]] + c] += gin[t + c];
                else if (j->scatter)
                    for (int64_t c = 0; c < C; c++)
                        o[at + pos_offset(g, a32[t + c]) + c] += gin[t + c];
                else if (a8)
                    for (int64_t c = 0; c < C; c++) o[t + c] = gin[at + rel[a8[t + c]] + c];
                else
                    for (int64_t c = 0; c < C; c++)
                        o[t + c] = gin[at + pos_offset(g, a32[t + c]) + c];
            }
    }
}

/* y = max pool of x with geometry g, and the argmax of every output (a new array the
 * caller frees: offsets within the output's image) when arg_out is not NULL. */
static ml_status maxpool_geom(ml_tensor **out, void **arg_out, ml_tensor *x, const ml_win2d *gp) {
    const ml_win2d g = *gp;
    ml_status st = ml__win2d_check_x("max_pool2d", x, &g);
    if (st) return st;
    if (g.h * g.w * g.c > INT32_MAX)
        return ml_set_error(ML_ERR_VALUE, "max_pool2d: an image of shape %s is too large",
                            ML_SHAPE_STR(x));
    int64_t shape[4] = {g.n, g.oh, g.ow, g.c};
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, 4, shape))) return st;
    void *arg = malloc((size_t)(o->numel ? o->numel : 1) * arg_size(&g));
    const int64_t chunks = g.n < POOL_CHUNKS ? (g.n ? g.n : 1) : POOL_CHUNKS;
    int32_t *pos = malloc((size_t)chunks * (size_t)(g.c ? g.c : 1) * sizeof(int32_t));
    if (!arg || !pos) {
        free(pos);
        free(arg);
        ml_release(o);
        return ml_set_error(ML_ERR_OOM, "max_pool2d: out of memory");
    }
    pool_job pj = {&g,   x->data, o->data, arg,  pos, (g.n + chunks - 1) / chunks,
                   NULL, NULL,    NULL,    NULL, 0};
    if (o->numel >= PAR_MIN_ELEMS)
        ml__parallel_for((g.n + pj.step - 1) / pj.step, 0, maxpool_part, &pj);
    else
        maxpool_kernel(&g, x->data, o->data, arg, pos, 0, g.n);
    free(pos);
    if (arg_out)
        *arg_out = arg;
    else
        free(arg);
    *out = o;
    return ML_OK;
}

/* In a trace the argmax is not a tensor: the backward ops (scatter, gather) take the
 * pool's input x and recompute it from the replay's own x. */
typedef struct {
    ml_win2d g;
    int scatter;
} pool_params;

static ml_status replay_max_pool(ml_tensor **out, ml_tensor **in, const void *params) {
    return maxpool_geom(out, NULL, in[0], &((const pool_params *)params)->g);
}

ml_status ml_max_pool2d(ml_tensor **out, ml_tensor *x, int pool_h, int pool_w, int stride_h,
                        int stride_w, ml_padding padding) {
    ml_win2d g;
    ml_status st = pool_plan("max_pool2d", out, x, pool_h, pool_w, stride_h, stride_w, padding, &g);
    if (st) return st;
    ml_tensor *o = NULL;
    void *arg = NULL;
    if ((st = maxpool_geom(&o, &arg, x, &g))) return st;
    const pool_params pp = {g, 0};
    ML_TRACE(OP_MAX_POOL2D, replay_max_pool, 1, &x, o, &pp);
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, OP_MAX_POOL2D, 1, &x, &node))) {
            free(arg);
            ml_release(o);
            return st;
        }
        ml__win2d_store(&g, node->iparams);
        node->index = arg; /* window positions (arg_size); only this file reads them */
        node->n_index = o->numel;
    } else {
        free(arg);
    }
    *out = o;
    return ML_OK;
}

/* The scatter (max pool's backward) or gather (the scatter's backward) of gin through the
 * argmax idx (n_idx entries) into a new tensor o. */
static void apply_index(const ml_win2d *gp, const void *idx, int64_t n_idx, const ml_tensor *gin,
                        ml_tensor *o, int scatter) {
    const ml_win2d g = *gp;
    if (n_idx == g.n * g.oh * g.ow * g.c && g.n > 0) {
        const int64_t chunks = g.n < POOL_CHUNKS ? g.n : POOL_CHUNKS;
        int64_t rel[ARG_BYTE_MAX + 1];
        if (arg_is_byte(&g))
            for (int64_t p = 0; p < g.kh * g.kw; p++) rel[p] = ((p / g.kw) * g.w + p % g.kw) * g.c;
        pool_job pj = {&g,        NULL,
                       NULL,      NULL,
                       NULL,      (g.n + chunks - 1) / chunks,
                       idx,       arg_is_byte(&g) ? rel : NULL,
                       gin->data, o->data,
                       scatter};
        const int64_t parts = (g.n + pj.step - 1) / pj.step;
        if (o->numel + gin->numel >= PAR_MIN_ELEMS)
            ml__parallel_for(parts, 0, index_part, &pj);
        else
            for (int64_t i = 0; i < parts; i++) index_part(&pj, i);
    } else if (scatter) { /* no images: nothing to scatter */
        memset(o->data, 0, (size_t)o->numel * sizeof(float));
    }
}

static ml_status check_index_grad(const ml_win2d *g, const ml_tensor *gin, int scatter) {
    int64_t xshape[4] = {g->n, g->h, g->w, g->c}, yshape[4] = {g->n, g->oh, g->ow, g->c};
    const int64_t *want = scatter ? yshape : xshape;
    if (gin->ndim != 4 || gin->shape[0] != want[0] || gin->shape[1] != want[1] ||
        gin->shape[2] != want[2] || gin->shape[3] != want[3])
        return ml_set_error(ML_ERR_SHAPE, "%s: expected a gradient of shape %s, got %s",
                            scatter ? "max_pool2d_scatter" : "max_pool2d_gather",
                            ml__shape_str((char[160]){0}, 160, 4, want), ML_SHAPE_STR(gin));
    return ML_OK;
}

static ml_status replay_pool_index(ml_tensor **out, ml_tensor **in, const void *params) {
    const pool_params *p = params;
    ml_status st = check_index_grad(&p->g, in[0], p->scatter);
    if (st) return st;
    ml_tensor *y = NULL, *o = NULL;
    void *arg = NULL;
    if ((st = maxpool_geom(&y, &arg, in[1], &p->g))) return st;
    ml_release(y);
    int64_t xshape[4] = {p->g.n, p->g.h, p->g.w, p->g.c},
            yshape[4] = {p->g.n, p->g.oh, p->g.ow, p->g.c};
    if ((st = ml__new(&o, 4, p->scatter ? xshape : yshape))) {
        free(arg);
        return st;
    }
    apply_index(&p->g, arg, p->g.n * p->g.oh * p->g.ow * p->g.c, in[0], o, p->scatter);
    free(arg);
    *out = o;
    return ML_OK;
}

/* Records a scatter or gather op that shares (copies) the argmax of `src_node`; x is the
 * max pool's input, kept as the op's second input (no gradient flows to it: the argmax is
 * piecewise constant) so that a trace can recompute the argmax. */
static ml_status index_op(ml_tensor **out, ml_tensor *gin, const ml_node *src, ml_tensor *x,
                          int scatter) {
    ml_win2d g;
    ml__win2d_load(&g, src->iparams);
    int64_t xshape[4] = {g.n, g.h, g.w, g.c}, yshape[4] = {g.n, g.oh, g.ow, g.c};
    const char *name = scatter ? "max_pool2d_scatter" : "max_pool2d_gather";
    ml_status st = check_index_grad(&g, gin, scatter);
    if (st) return st;
    const int64_t n_idx = src->n_index;
    const void *idx = src->index;
    ml_tensor *o = NULL;
    if ((st = ml__new(&o, 4, scatter ? xshape : yshape))) return st;
    apply_index(&g, idx, n_idx, gin, o, scatter);
    ml_tensor *ins[2] = {gin, x};
    const pool_params pp = {g, scatter};
    ML_TRACE(scatter ? OP_MAX_POOL2D_SCATTER : OP_MAX_POOL2D_GATHER, replay_pool_index, 2, ins, o,
             &pp);
    ml_node *node = NULL;
    if (ml__should_record(1, &gin)) {
        if ((st = ml__record(o, scatter ? OP_MAX_POOL2D_SCATTER : OP_MAX_POOL2D_GATHER, 2, ins,
                             &node))) {
            ml_release(o);
            return st;
        }
        ml__win2d_store(&g, node->iparams);
        node->index = malloc((size_t)(n_idx ? n_idx : 1) * arg_size(&g));
        if (!node->index) {
            ml_release(o);
            return ml_set_error(ML_ERR_OOM, "%s: out of memory", name);
        }
        if (n_idx) memcpy(node->index, idx, (size_t)n_idx * arg_size(&g));
        node->n_index = n_idx;
    }
    *out = o;
    return ML_OK;
}

/* x, the max pool's input: the forward's only input, the second of a scatter or gather */
ml_status ml__max_pool2d_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    return index_op(&gin[0], g, out->node, IN(0), 1);
}
ml_status ml__max_pool2d_scatter_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    return index_op(&gin[0], g, out->node, IN(1), 0);
}
ml_status ml__max_pool2d_gather_backward(ml_tensor *out, ml_tensor *g, ml_tensor **gin) {
    return index_op(&gin[0], g, out->node, IN(1), 1);
}

/* ------------------------------------------ max pool folded into batch norm's backward */

int ml__max_pool2d_foldable(const ml_node *pool) {
    if (pool->op != &ml_op_table[OP_MAX_POOL2D] || !pool->index) return 0;
    ml_win2d g;
    ml__win2d_load(&g, pool->iparams);
    return arg_is_byte(&g) && tiles(&g) && g.n > 0 && g.c > 0 &&
           pool->n_index == g.n * g.oh * g.ow * g.c;
}

/* The rows (pixels) [r0, r1) of what max_pool2d's backward gives its input, scatter(g), or
 * with y, what the pool's and a relu's before it give the relu's input, relu_grad(scatter(g),
 * relu output): g at its window's argmax (where the pool's output y, the relu's output
 * there, is not 0), +0 elsewhere, by the scatter's kept_grad and relu_grad's select
 * (ml__relu_grad): the same bits. */
ML_INLINE void pool_relu_rows_body(const ml_win2d *g, const uint8_t *a8, const float *y,
                                   const float *gin, int64_t r0, int64_t r1, float *out) {
    const int64_t C = g->c, hw = g->h * g->w;
    /* pixel r0's image, row and column, then counted on (no divisions per pixel) */
    int64_t n = r0 / hw, h = (r0 % hw) / g->w, w = r0 % g->w;
    for (int64_t r = r0; r < r1; r++) {
        float *o = out + (r - r0) * C;
        const int64_t oh = h / g->kh, ow = w / g->kw, ph = h - oh * g->kh, pw = w - ow * g->kw;
        const int covered = oh < g->oh && ow < g->ow;
        const int64_t t = ((n * g->oh + oh) * g->ow + ow) * C;
        if (++w == g->w) {
            w = 0;
            if (++h == g->h) h = 0, n++;
        }
        if (!covered) { /* a row or column no window covers */
            for (int64_t c = 0; c < C; c++) o[c] = 0.0f;
            continue;
        }
        const uint32_t pos = (uint32_t)(ph * g->kw + pw);
        const uint8_t *a = a8 + t;
        const float *gv = gin + t, *yv = y ? y + t : NULL;
        for (int64_t c = 0; c < C; c++)
            o[c] = kept_grad(gv[c], (a[c] == pos) & (!yv || yv[c] != 0.0f));
    }
}
ML_CPU_CLONES(pool_relu_rows,
              (const ml_win2d *g, const uint8_t *a8, const float *y, const float *gin, int64_t r0,
               int64_t r1, float *out),
              (g, a8, y, gin, r0, r1, out))

void ml__max_pool2d_relu_grad_rows(const ml_node *pool, const float *y, const float *g, int64_t r0,
                                   int64_t r1, float *out) {
    ml_win2d geo;
    ml__win2d_load(&geo, pool->iparams);
    pool_relu_rows(&geo, (const uint8_t *)pool->index, y, g, r0, r1, out);
}

/* --------------------------------------------------------------- avg pool */

/* y = avgpool(x) (forward) or x += adjoint(y) (grad=1, dx zeroed by the caller). */
static void avgpool_kernel(const ml_win2d *g, float *x, float *y, int grad) {
    const int64_t C = g->c;
    for (int64_t n = 0; n < g->n; n++) {
        float *img = x + n * g->h * g->w * C;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            int64_t h0, h1;
            win_range(oh, g->sh, g->pt, g->kh, g->h, &h0, &h1);
            for (int64_t ow = 0; ow < g->ow; ow++) {
                int64_t w0, w1;
                win_range(ow, g->sw, g->pl, g->kw, g->w, &w0, &w1);
                float *m = y + ((n * g->oh + oh) * g->ow + ow) * C;
                int64_t cnt = (h1 - h0) * (w1 - w0);
                float inv = cnt > 0 ? 1.0f / (float)cnt : 0.0f;
                if (!grad) {
                    for (int64_t c = 0; c < C; c++) m[c] = 0.0f;
                    for (int64_t ih = h0; ih < h1; ih++)
                        for (int64_t iw = w0; iw < w1; iw++) {
                            const float *src = img + (ih * g->w + iw) * C;
                            for (int64_t c = 0; c < C; c++) m[c] += src[c];
                        }
                    for (int64_t c = 0; c < C; c++) m[c] *= inv;
                } else {
                    for (int64_t ih = h0; ih < h1; ih++)
                        for (int64_t iw = w0; iw < w1; iw++) {
                            float *dst = img + (ih * g->w + iw) * C;
                            for (int64_t c = 0; c < C; c++) dst[c] += m[c] * inv;
                        }
                }
            }
        }
    }
}

static ml_status avg_geom(ml_tensor **out, ml_tensor *x, const ml_win2d *g);
static ml_status avg_grad_geom(ml_tensor **out, ml_tensor *gy, const ml_win2d *g);

static ml_status replay_avg_pool(ml_tensor **out, ml_tensor **in, const void *params) {
    const pool_params *p = params; /* scatter: the gradient op (which checks its input) */
    if (p->scatter) return avg_grad_geom(out, in[0], &p->g);
    ml_status st = ml__win2d_check_x("avg_pool2d", in[0], &p->g);
    return st ? st : avg_geom(out, in[0], &p->g);
}

static ml_status avg_geom(ml_tensor **out, ml_tensor *x, const ml_win2d *g) {
    int64_t shape[4] = {g->n, g->oh, g->ow, g->c};
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, 4, shape);
    if (st) return st;
    avgpool_kernel(g, x->data, o->data, 0);
    const pool_params pp = {*g, 0};
    ML_TRACE(OP_AVG_POOL2D, replay_avg_pool, 1, &x, o, &pp);
    ml_node *node = NULL;
    if (ml__should_record(1, &x)) {
        if ((st = ml__record(o, OP_AVG_POOL2D, 1, &x, &node))) {
            ml_release(o);
            return st;
        }
        ml__win2d_store(g, node->iparams);
    }
    *out = o;
    return ML_OK;
}

static ml_status avg_grad_geom(ml_tensor **out, ml_tensor *gy, const ml_win2d *g) {
    if (gy->ndim != 4 || gy->shape[0] != g->n || gy->shape[1] != g->oh || gy->shape[2] != g->ow ||
        gy->shape[3] != g->c)
        return ml_set_error(ML_ERR_SHAPE,
                            "avg_pool2d_grad: expected a gradient of shape "
                            "(%lld, %lld, %lld, %lld), got %s",
                            (long long)g->n, (long long)g->oh, (long long)g->ow, (long long)g->c,
                            ML_SHAPE_STR(gy));
    int64_t shape[4] = {g->n, g->h, g->w, g->c};
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, 4, shape);
    if (st) return st;
    memset(o->data, 0, (size_t)o->numel * sizeof(float));
    avgpool_kernel(g, o->data, gy->data, 1);
    const pool_params pp = {*g, 1};
    ML_TRACE(OP_AVG_POOL2D_GRAD, replay_avg_pool, 1, &gy, o, &pp);
    ml_node *node = NULL;
    if (ml__should_record(1, &gy)) {
        if ((st = ml__record(o, OP_AVG_POOL2D_GRAD, 1, &gy, &node))) {
            ml_release(o);
            return st;
        }
        ml__win2d_store(g, node->iparams);
    }
    *out = o;
    return ML_OK;
}

ml_status ml_avg_pool2d(ml_tensor **out, ml_tensor *x, int pool_h, int pool_w, int stride_h,
                        int stride_w, ml_padding padding) {
    ml_win2d g;
    ml_status st = pool_plan("avg_pool2d", out, x, pool_h, pool_w, stride_h, stride_w, padding, &g);
    return st ? st : avg_geom(out, x, &g);
}

ml_status ml__avg_pool2d_backward(ml_tensor *out, ml_tensor *gy, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    return avg_grad_geom(&gin[0], gy, &g);
}

ml_status ml__avg_pool2d_grad_backward(ml_tensor *out, ml_tensor *G, ml_tensor **gin) {
    ml_win2d g;
    ml__win2d_load(&g, out->node->iparams);
    if (G->ndim != 4 || G->shape[0] != g.n || G->shape[1] != g.h || G->shape[2] != g.w ||
        G->shape[3] != g.c)
        return ml_set_error(ML_ERR_SHAPE,
                            "avg_pool2d_grad: gradient of shape %s does not match "
                            "its input",
                            ML_SHAPE_STR(G));
    return avg_geom(&gin[0], G, &g);
}

/* ---------------------------------------------------- global average pool */

ml_status ml_global_avg_pool2d(ml_tensor **out, ml_tensor *x, int keepdims) {
    if (!out || !x) return ml_set_error(ML_ERR_VALUE, "global_avg_pool2d: input tensor is NULL");
    if (x->ndim != 4)
        return ml_set_error(ML_ERR_SHAPE,
                            "global_avg_pool2d: expected a 4-D input (batch, height, "
                            "width, channels), got shape %s",
                            ML_SHAPE_STR(x));
    int axes[2] = {1, 2};
    return ml_mean(out, x, 2, axes, keepdims);
}
