/* fused.c — the fused forms: the replays of the entries the fuser (fuse.c) makes of a
 * pair of entries, the second the only reader of the first's output t. Each computes every
 * element with the same float operations, in the same order, as the pair, so a replay
 * gives the same bits; the intermediate t is never written. Where a replay's inputs do not
 * allow the one pass (shapes other than the trace's, a kernel without the product form),
 * it runs the pair as recorded. In second-order MAML on sinusoids these are the bias add
 * before each relu and the gradient sum before each relu_grad, and the products read by
 * them: passes over (25, 10, 40) activations, each costing as much as the arithmetic. */
#include <string.h>

#include "../kernels/cpu.h"
#include "../kernels/gemm.h"
#include "../ops/fusion.h"
#include "fuse.h"

/* relu(a + b) (ml__add_relu: the binary kernel's BIN_ADD_RELU formula). */
ml_status ml__replay_add_relu(ml_tensor **out, ml_tensor **in, const void *params) {
    (void)params;
    return ml__add_relu(out, in[0], in[1]);
}

/* relu_grad(a + b, m) = (m != 0 ? a + b : 0), a, b and m of one shape. The sum is made by
 * the add's own kernel (ml__binary_range_at, chunk by chunk into o): a separately compiled
 * a + b may take its operands in the other order, and when both are NaN x86 returns the
 * first one's payload and sign, so only the add's own code gives its bits. Then the mask,
 * in place, on the chunk still in L1. */
static inline __attribute__((always_inline)) void relu_grad_mask(const float *restrict m,
                                                                 float *restrict o, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &o[i], sizeof bits);
        bits &= 0u - (uint32_t)(m[i] != 0); /* +0.0f where m is +-0; NaN m keeps o */
        memcpy(&o[i], &bits, sizeof bits);
    }
}
ML_INLINE void relu_grad_mask_inplace_body(const float *restrict m, float *restrict o, int64_t n) {
    relu_grad_mask(m, o, n);
}
ML_CPU_CLONES(relu_grad_mask_inplace, (const float *restrict m, float *restrict o, int64_t n),
              (m, o, n))
static void add_relu_grad_range(const ml_tensor *a, const ml_tensor *b, const ml_tensor *m,
                                ml_tensor *o, const ml_walk_plan *w, int64_t p0, int64_t p1) {
    for (int64_t c = p0; c < p1; c += 2048) {
        const int64_t e = c + 2048 < p1 ? c + 2048 : p1;
        ml__binary_range_at(BIN_ADD, a, a->data, 0, b, b->data, 0, o, w, c, e);
        relu_grad_mask_inplace(m->data + c, o->data + c, e - c);
    }
}
typedef struct {
    const ml_tensor *a, *b, *m;
    ml_tensor *o;
    const ml_walk_plan *w;
    int64_t n, step;
} arg_job;
static void arg_part(void *ctx, int64_t i) {
    const arg_job *j = ctx;
    const int64_t lo = i * j->step, hi = lo + j->step < j->n ? lo + j->step : j->n;
    add_relu_grad_range(j->a, j->b, j->m, j->o, j->w, lo, hi);
}
ml_status ml__replay_add_relu_grad(ml_tensor **out, ml_tensor **in, const void *params) {
    (void)params;
    ml_tensor *a = in[0], *b = in[1], *m = in[2];
    /* a + b may broadcast (one addend's broadcast_to fused in, see ml__replay_broadcast_into),
     * as long as the sum has m's shape; else the pair as recorded */
    int nd = 0;
    int64_t shape[ML_MAX_DIMS];
    const int fits = a && b && m && a->ndim <= m->ndim && b->ndim <= m->ndim &&
                     ml__broadcast_shape_of(a, b, &nd, shape) && nd == m->ndim &&
                     !memcmp(shape, m->shape, (size_t)nd * sizeof *shape);
    if (!fits) {
        ml_tensor *t = NULL;
        ml_status st = ml_add(&t, a, b);
        if (st) return st;
        st = ml__relu_grad(out, t, m);
        ml_release(t);
        return st;
    }
    ml_walk_plan w;
    ml__make_walk(a, b, nd, shape, &w);
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, nd, shape);
    if (st) return st;
    const int64_t n = o->numel, step = ml__split_step(n, ML_BIN_PAR_MIN);
    if (step) {
        arg_job j = {a, b, m, o, &w, n, step};
        ml__parallel_for((n + step - 1) / step, 0, arg_part, &j);
    } else if (n > 0) {
        add_relu_grad_range(a, b, m, o, &w, 0, n);
    }
    *out = o;
    return ML_OK;
}

/* The fused reader r run as recorded on t, its fused input (released), with its other
 * inputs args: the fallback of a fused replay */
static ml_status read_recorded(const ml_fused_reader *r, ml_tensor **args, ml_tensor *t,
                               ml_tensor **out) {
    args[r->t_index] = t;
    ml_status st = r->f2(out, args, r->p2);
    ml_release(t);
    return st;
}

/* broadcast_to(x) read only by an element-wise op that broadcasts its operands itself (a
 * binary op, or the fused add + relu_grad): the op reads x directly. Each output element
 * is the same operation on the same values, so the bits are the pair's; the (25, 10, 40)
 * copy of a (25, 1, 40) gradient in second-order MAML is never written. in[0] is x, the
 * op's other inputs follow in order; when x would change the op's output shape (it was
 * broadcast past the other operands' shape), x is broadcast first, as recorded. */
ml_status ml__replay_broadcast_into(ml_tensor **out, ml_tensor **in, const void *params) {
    const ml_broadcast_into_params *p = params;
    ml_tensor *args[3];
    for (int i = 0, j = 1; i < p->r.n_in2; i++) args[i] = i == p->r.t_index ? in[0] : in[j++];
    /* the op's output shape with x and with its broadcast (the broadcast of all inputs),
     * its rank included: a broadcast that only prepends 1s changes the output's rank */
    const int nd = p->ndim;
    int direct = 1, rank_x = 0;
    int64_t with_b[ML_MAX_DIMS], with_x[ML_MAX_DIMS];
    for (int i = 0; i < nd; i++) with_b[i] = with_x[i] = 1;
    for (int i = 0; i < p->r.n_in2; i++) {
        const ml_tensor *t = args[i];
        if (!t || t->ndim > nd) {
            direct = 0;
            break;
        }
        if (t->ndim > rank_x) rank_x = t->ndim;
        for (int d = 0; d < nd; d++) {
            const int it = t->ndim - nd + d;
            const int64_t dt = i == p->r.t_index ? p->shape[d] : it >= 0 ? t->shape[it] : 1;
            const int64_t dx = it >= 0 ? t->shape[it] : 1; /* (x itself at t_index) */
            if (dt != 1) with_b[d] = dt;
            if (dx != 1) with_x[d] = dx;
        }
    }
    if (direct && rank_x == nd && !memcmp(with_b, with_x, (size_t)nd * sizeof *with_b))
        return p->r.f2(out, args, p->r.p2);
    ml_tensor *t = NULL;
    ml_status st = ml_broadcast_to(&t, in[0], p->ndim, p->shape);
    return st ? st : read_recorded(&p->r, args, t, out);
}

/* An outer product (a matmul with k == 1: T[t][i][j] = a[t][i] b[t][j] for each batch
 * entry t) read only by an element-wise op: a binary op, or the fused add + relu_grad with
 * T as an addend. The op reads T's rows from a small buffer that ml__sgemm_outer_rows
 * refills as the op goes, so T, as large as the op's output, is never written nor read
 * back (in second-order MAML on sinusoids: x w1 in each forward and dL/dy w3^T in each
 * backward of the 1-input, 1-output network, six (25, 10, 40) tensors a step). Each element
 * is T's bits (the matmul kernel's multiply) then the op's, so the pair's. in[0], in[1] are
 * the matmul's operands, the op's other inputs follow in order. Where the kernel or the
 * shapes do not allow it, the pair runs as recorded. */

#define OUTER_CHUNK 2048 /* floats of T per refill: 8 kB, in L1 with the op's other rows */

typedef struct {
    int op, t_index;
    const ml_tensor *x, *y, *m; /* the op's operands (T's is a header: shape, no data) */
    const float *a, *b;
    int64_t m_rows, n, chunk_rows, rows, part_rows;
    ml_tensor *o;
    const ml_walk_plan *w;
    int direct, o_col; /* outer_rows_direct, with the other operand's layout */
    int64_t o_task, o_row;
} outer_job;

/* The layout outer_rows_direct reads the op's other operand u with in an output of shape
 * (batch..., m, n): 1 and its offsets per batch entry, row and column (0 where broadcast),
 * or 0 when u broadcasts over only some of the batch dims (the general walk then). */
static int direct_layout(const ml_tensor *u, int nd, const int64_t *shape, int64_t *o_task,
                         int64_t *o_row, int *o_col) {
    if (u->ndim > nd || nd < 2) return 0;
    int64_t dims[ML_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        const int iu = u->ndim - nd + d;
        dims[d] = iu >= 0 ? u->shape[iu] : 1;
    }
    const int64_t un = dims[nd - 1], um = dims[nd - 2];
    int all = 1, none = 1; /* u's batch dims: all T's, or all 1 */
    for (int d = 0; d < nd - 2; d++) {
        all &= dims[d] == shape[d];
        none &= dims[d] == 1;
    }
    if (!all && !none) return 0;
    *o_col = un != 1;
    *o_row = um != 1 ? un : 0;
    *o_task = none ? 0 : um * un;
    return 1;
}

/* Rows [r0, r1) of T and of the op's output when the op's other operand u has one simple
 * layout: its batch index t adds o_task floats (0: one for all), its row index o_row (0:
 * one row per batch entry, as a bias or a per-task weight row) and its column o_col (0:
 * one value per row). T's rows of a batch entry are made by the matmul's kernel
 * (ml__sgemm_outer_rows: its multiply, so its bits, NaNs' signs included) into buf, and
 * the op reads them row by row with u's row, without the broadcast walk: that walk costs
 * ~11 cycles a row of its own, as much as the op on a 40-float row (the fused bias add +
 * relu of MAML's sinusoid forward, benchmarks/run_all.py maml-sin). The mask, when given,
 * is relu_grad's (relu_grad_mask), row by row. */
ML_INLINE void outer_rows_direct_body(int op, int t_index, const float *a, const float *b,
                                      int64_t m_rows, int64_t n, const float *od, int64_t o_task,
                                      int64_t o_row, int o_col, const float *mask, float *out,
                                      int64_t r0, int64_t r1, float *buf) {
    for (int64_t r = r0; r < r1;) { /* the rows of one batch entry t at a time */
        const int64_t t = r / m_rows, i0 = r % m_rows;
        int64_t end = (t + 1) * m_rows < r1 ? (t + 1) * m_rows : r1;
        if (end - r > OUTER_CHUNK / n) end = r + OUTER_CHUNK / n; /* what buf holds */
        ml__sgemm_outer_rows(end - r, n, a + r, b + t * n, buf);
        for (int64_t i = i0; r < end; i++, r++) {
            const float *trow = buf + (i - i0) * n, *urow = od + t * o_task + i * o_row;
            float *dst = out + r * n;
            if (t_index == 0)
                ml__bin_row(op, n, trow, 1, urow, o_col, dst);
            else
                ml__bin_row(op, n, urow, o_col, trow, 1, dst);
            if (mask) relu_grad_mask(mask + r * n, dst, n);
        }
    }
}
ML_CPU_CLONES(outer_rows_direct,
              (int op, int t_index, const float *a, const float *b, int64_t m_rows, int64_t n,
               const float *od, int64_t o_task, int64_t o_row, int o_col, const float *mask,
               float *out, int64_t r0, int64_t r1, float *buf),
              (op, t_index, a, b, m_rows, n, od, o_task, o_row, o_col, mask, out, r0, r1, buf))

static void outer_part(void *ctx, int64_t part) {
    const outer_job *j = ctx;
    const int64_t r0 = part * j->part_rows;
    const int64_t r1 = r0 + j->part_rows < j->rows ? r0 + j->part_rows : j->rows;
    float buf[OUTER_CHUNK];
    if (j->direct) {
        const ml_tensor *other = j->t_index == 0 ? j->y : j->x;
        outer_rows_direct(j->op, j->t_index, j->a, j->b, j->m_rows, j->n, other->data, j->o_task,
                          j->o_row, j->o_col, j->m ? j->m->data : NULL, j->o->data, r0, r1, buf);
        return;
    }
    for (int64_t c = r0; c < r1; c += j->chunk_rows) {
        const int64_t ce = c + j->chunk_rows < r1 ? c + j->chunk_rows : r1;
        for (int64_t r = c; r < ce;) { /* T's rows of one batch entry at a time */
            const int64_t t = r / j->m_rows;
            const int64_t end = (t + 1) * j->m_rows < ce ? (t + 1) * j->m_rows : ce;
            ml__sgemm_outer_rows(end - r, j->n, j->a + r, j->b + t * j->n, buf + (r - c) * j->n);
            r = end;
        }
        const int64_t p0 = c * j->n, p1 = ce * j->n;
        ml__binary_range_at(j->op, j->x, j->t_index == 0 ? buf : j->x->data,
                            j->t_index == 0 ? p0 : 0, j->y, j->t_index == 1 ? buf : j->y->data,
                            j->t_index == 1 ? p0 : 0, j->o, j->w, p0, p1);
        if (j->m) relu_grad_mask_inplace(j->m->data + p0, j->o->data + p0, p1 - p0);
    }
}

ml_status ml__replay_outer_into(ml_tensor **out, ml_tensor **in, const void *params) {
    const ml_outer_into_params *p = params;
    ml_tensor *a = in[0], *b = in[1];
    ml_tensor *args[3] = {NULL, NULL, NULL};
    for (int i = 0, k = 2; i < p->r.n_in2; i++) args[i] = i == p->r.t_index ? NULL : in[k++];
    /* T: a and b with the same batch dims and k == 1, on a kernel whose product is one
     * multiply (ml__sgemm_outer_rows) */
    ml_tensor t = {0};
    int fits = a && b && a->ndim == b->ndim && a->ndim >= 2 &&
               ml__sgemm_outer_rows(0, 0, NULL, NULL, NULL);
    int64_t m = 0, n = 0;
    if (fits) {
        const int nd = a->ndim;
        m = p->ta ? a->shape[nd - 1] : a->shape[nd - 2];
        n = p->tb ? b->shape[nd - 2] : b->shape[nd - 1];
        const int64_t ka = p->ta ? a->shape[nd - 2] : a->shape[nd - 1];
        const int64_t kb = p->tb ? b->shape[nd - 1] : b->shape[nd - 2];
        fits = ka == 1 && kb == 1 && m >= 1 && n >= 1 && n <= OUTER_CHUNK &&
               !memcmp(a->shape, b->shape, (size_t)(nd - 2) * sizeof *a->shape);
        t.ndim = nd;
        t.numel = m * n;
        for (int d = 0; d < nd - 2; d++) {
            t.shape[d] = a->shape[d];
            t.numel *= a->shape[d];
        }
        t.shape[nd - 2] = m;
        t.shape[nd - 1] = n;
        fits = fits && t.numel > 0;
    }
    const int arg = p->r.op == OP_ADD_RELU_GRAD;
    const ml_tensor *x = p->r.t_index == 0 ? &t : args[0], *y = p->r.t_index == 1 ? &t : args[1];
    const ml_tensor *mask = arg ? args[2] : NULL;
    int nd = 0;
    int64_t shape[ML_MAX_DIMS];
    /* the op's output is T's shape (the other operands broadcast into it) */
    fits = fits && x && y && (!arg || mask) && ml__broadcast_shape_of(x, y, &nd, shape) &&
           nd == t.ndim && !memcmp(shape, t.shape, (size_t)nd * sizeof *shape) &&
           (!mask || (mask->ndim == nd && !memcmp(mask->shape, shape, (size_t)nd * sizeof *shape)));
    if (!fits) {
        ml_tensor *tt = NULL;
        ml_status st = ml_matmul(&tt, a, b, p->ta, p->tb);
        return st ? st : read_recorded(&p->r, args, tt, out);
    }
    ml_tensor *o = NULL;
    ml_status st = ml__new(&o, nd, shape);
    if (st) return st;
    ml_walk_plan w;
    ml__make_walk(x, y, nd, shape, &w);
    /* chunks of whole rows of T starting at multiples of 64 elements where that fits (the
     * starts of the thread parts of an unfused op) */
    const int64_t low = n & -n, q = 64 / (low < 64 ? low : 64); /* rows: a multiple of 64 */
    int64_t chunk_rows = OUTER_CHUNK / n;
    if (chunk_rows >= q) chunk_rows -= chunk_rows % q;
    outer_job j = {arg ? BIN_ADD : p->r.kernel,
                   p->r.t_index,
                   x,
                   y,
                   mask,
                   a->data,
                   b->data,
                   m,
                   n,
                   chunk_rows,
                   t.numel / n,
                   t.numel / n,
                   o,
                   &w,
                   0,
                   0,
                   0,
                   0};
    /* (an operand of T's own shape: the chunks below, one op call a chunk) */
    j.direct = direct_layout(p->r.t_index == 0 ? y : x, nd, shape, &j.o_task, &j.o_row, &j.o_col) &&
               (j.o_col == 0 || j.o_row == 0 || j.o_task == 0);
    int64_t parts = 1;
    if (ml__split_step(t.numel, ML_BIN_PAR_MIN)) {
        const int64_t threads = ml_get_num_threads();
        j.part_rows = (j.rows + threads - 1) / threads;
        j.part_rows = (j.part_rows + chunk_rows - 1) / chunk_rows * chunk_rows;
        parts = (j.rows + j.part_rows - 1) / j.part_rows;
    }
    if (parts > 1)
        ml__parallel_for(parts, 0, outer_part, &j);
    else
        outer_part(&j, 0);
    *out = o;
    return ML_OK;
}

/* A product (k > 1 when traced) and the reshape that is its only reader: the product with
 * the reshape's shape (a reshape of a new tensor is its data under a new shape). An entry
 * of its own so that the product can then take in the element-wise op reading the
 * reshape (ml__replay_matmul_into): in MAML's vectorised steps, the (250, 40) products of 25
 * tasks' stacked rows are reshaped to (25, 10, 40) to meet per-task operands. */
ml_status ml__replay_matmul_view(ml_tensor **out, ml_tensor **in, const void *params) {
    const ml_matmul_view_params *p = params;
    ml_tensor *t = NULL;
    ml_status st = ml_matmul(&t, in[0], in[1], p->ta, p->tb);
    if (st) return st;
    st = ml_reshape(out, t, p->ndim, p->shape);
    ml_release(t);
    return st;
}

/* A product T = A op(B) (A not transposed, B 2-D: one GEMM over A's rows, as ml_matmul
 * runs it), perhaps reshaped (v.ndim > 0), read only by an element-wise op the GEMM can
 * apply as it stores T's elements (ml__sgemm_into): x + u, relu(x + u) with u of T's shape
 * or one row per batch entry (a bias), relu_grad(x, u), or add + relu_grad with T as an
 * addend. T is never written nor read back: in MAML sinusoid's second-order step, six of
 * the nine 250 x 40 x 40 products are read by such an op. Each element is the product's
 * bits and then the op's formula, so the unfused pair's (of a sum of two NaNs, either
 * NaN: which one x86 keeps depends on the instruction's operand order, free to the
 * compiler in the unfused op too). in[0], in[1] are the product's operands, the op's other
 * inputs follow; where the kernel or the layouts do not allow it, the product (its reshape)
 * and the op run as recorded. T is not made in chunks read by the op as the outer form
 * does: a GEMM split into calls loses what the op gains. */
ml_status ml__replay_matmul_into(ml_tensor **out, ml_tensor **in, const void *params) {
    const ml_matmul_into_params *p = params;
    ml_tensor *a = in[0], *b = in[1];
    ml_tensor *args[3] = {NULL, NULL, NULL};
    for (int i = 0, k = 2; i < p->r.n_in2; i++) args[i] = i == p->r.t_index ? NULL : in[k++];
    const int arg = p->r.op == OP_ADD_RELU_GRAD;
    const int kernel = p->r.kernel; /* -1 for add + relu_grad */
    const int epi = arg                                            ? ML_EPI_ADD_MASK
                    : kernel == BIN_ADD                            ? ML_EPI_ADD
                    : kernel == BIN_ADD_RELU                       ? ML_EPI_ADD_RELU
                    : kernel == BIN_RELU_GRAD && p->r.t_index == 0 ? ML_EPI_RELU_GRAD
                                                                   : 0;
    const ml_tensor *u = args[p->r.t_index == 0 ? 1 : 0], *mask = arg ? args[2] : NULL;
    int64_t rows = 0, n = 0, k = 0, u_div = 1, tshape[ML_MAX_DIMS];
    int nd = 0;
    int fits = epi && a && b && u && (!arg || mask) && !p->v.ta && a->ndim >= 2 && b->ndim == 2;
    if (fits) {
        k = a->shape[a->ndim - 1];
        n = p->v.tb ? b->shape[0] : b->shape[1];
        rows = k > 0 ? a->numel / k : 0;
        fits = (p->v.tb ? b->shape[1] : b->shape[0]) == k && rows > 0 &&
               ml__sgemm_into(p->v.tb, rows, n, k, NULL, NULL, epi, NULL, 1, NULL, NULL);
    }
    if (fits) { /* T's shape: the reshape's, or the product's; u of T's shape or one row a
                   batch entry (dim -2 of 1), the mask of T's shape */
        nd = p->v.ndim ? p->v.ndim : a->ndim;
        memcpy(tshape, p->v.ndim ? p->v.shape : a->shape, (size_t)nd * sizeof *tshape);
        if (!p->v.ndim) tshape[nd - 1] = n;
        fits = u->ndim == nd && tshape[nd - 1] == n &&
               (!mask ||
                (mask->ndim == nd && !memcmp(mask->shape, tshape, (size_t)nd * sizeof *tshape)));
        for (int d = 0; fits && d < nd; d++)
            fits = u->shape[d] == tshape[d] || (d == nd - 2 && u->shape[d] == 1);
        if (fits && u->shape[nd - 2] == 1) u_div = tshape[nd - 2];
    }
    if (fits) {
        ml_tensor *o = NULL;
        ml_status st = ml__new(&o, nd, tshape);
        if (st) return st;
        if (ml__sgemm_into(p->v.tb, rows, n, k, a->data, b->data, epi, u->data, u_div,
                           mask ? mask->data : NULL, o->data)) {
            *out = o;
            return ML_OK;
        }
        ml_release(o); /* no buffer for B^T: as recorded, as the kernel itself falls back */
    }
    ml_tensor *tt = NULL; /* the pair (or the three) as recorded */
    ml_status st = p->v.ndim ? ml__replay_matmul_view(&tt, in, &p->v)
                             : ml_matmul(&tt, a, b, p->v.ta, p->v.tb);
    return st ? st : read_recorded(&p->r, args, tt, out);
}

