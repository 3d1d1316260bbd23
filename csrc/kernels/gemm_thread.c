/*
 * gemm_thread.c — a large product split over the thread pool (core/threads.c).
 *
 * The split comes after the path: the product's path is chosen from its whole shape
 * (gemm_path.c) and every part runs it. Parts are blocks of rows of C or, when C has few
 * rows, blocks of columns, each of at least PAR_MIN_MACS / 2 multiply-adds (never small
 * enough for the plain loops of tiny products), and they start on the path's tile grid
 * (SPLIT_UNIT). Every element of C is then computed by the same kernel, with the same k
 * blocking (kc depends on k alone), in the same place of the same tile as on one thread,
 * so the result has the same bits for any number of threads. How many parts there are
 * depends on the thread count; what each element is does not.
 */
#include "gemm_internal.h"
#include "metalearn.h"
#include "../core/threads.h"

/* Where a split may cut, per path: rows and columns of C in multiples of these (0: never
 * that way). A multiple of the kernel's tile keeps every element in the tile it has on
 * one thread, computed by the same instructions: the same arithmetic is not enough, as
 * which of two NaNs an operation returns depends on the instruction form the compiler
 * chose, which can differ between the code for a full tile and an edge. */
static const struct {
    int rows, cols;
} SPLIT_UNIT[] = {
    [PATH_PORTABLE] = {MR, NR},     [PATH_PACKED] = {MR, NR}, /* micro-kernel tiles */
    [PATH_SMALL] = {MR_S, 16},                             /* MR_S x 16 tiles */
    [PATH_SMALL_W] = {3 * MR_W, 0},  /* 4-row and 2-row tiles; columns 24 + 16s from the left */
    [PATH_DOTS_NT] = {MR, 0},        /* 2-row tiles (n < 16: never by columns) */
    [PATH_OUTER] = {MR, 0},          /* a row at a time; the column loop depends on n */
    [PATH_DOTS] = {3 * 4, 0},        /* groups of 4 rows */
    [PATH_GEMV_T] = {120, 0},        /* blocks of 40 rows (lcm with MR) */
    [PATH_ROW] = {0, 80},            /* blocks of 40 columns (lcm with NR) */
};

typedef struct gemm_job {
    int path, ta, tb;
    int64_t m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c;
    int64_t lda, ldb, ldc;
    int split_rows;
    int64_t step;        /* rows or columns per part */
    const gemm_epi *epi; /* or NULL */
} gemm_job;

static void gemm_part(void *ctx, int64_t i) {
    const gemm_job *j = ctx;
    const int64_t lo = i * j->step;
    gemm_epi e; /* this part's place in the whole product */
    if (j->epi) {
        e = *j->epi;
        if (j->split_rows)
            e.row0 += lo;
        else
            e.col0 += lo;
    }
    if (j->split_rows) {
        const int64_t rows = min64(j->step, j->m - lo);
        const float *a = j->ta ? j->a + lo : j->a + lo * j->lda;
        ml__gemm_run(j->path, j->ta, j->tb, rows, j->n, j->k, j->alpha, a, j->lda, j->b, j->ldb,
                     j->beta, j->c + lo * j->ldc, j->ldc, j->epi ? &e : NULL);
    } else {
        const int64_t cols = min64(j->step, j->n - lo);
        const float *b = j->tb ? j->b + lo * j->ldb : j->b + lo;
        ml__gemm_run(j->path, j->ta, j->tb, j->m, cols, j->k, j->alpha, j->a, j->lda, b, j->ldb,
                     j->beta, j->c + lo, j->ldc, j->epi ? &e : NULL);
    }
}

void ml__gemm_threaded(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                       float *c, int64_t ldc, const gemm_epi *epi) {
    const double macs = (double)m * (double)n * (double)k;
    const int path = ml__gemm_path(use_avx2, ta, tb, m, n, k);
    int t = ml__in_parallel() ? 1 : ml_get_num_threads();
    if (t > 1 && macs >= PAR_MIN_MACS && k > 0 && alpha != 0.0f) {
        gemm_job j = {path, ta, tb, m, n, k, alpha, beta, a, b, c, lda, ldb, ldc, 0, 0, epi};
        /* parts: enough for the threads, each at least PAR_MIN_MACS / 2 */
        int64_t parts = (int64_t)(macs / (PAR_MIN_MACS / 2));
        if (parts > t) parts = t;
        /* Each part reads all of the operand that is not split: split the larger one
         * (rows of A when m >= n, else columns of B), if it has enough tiles. */
        const int unit_m = SPLIT_UNIT[path].rows, unit_n = SPLIT_UNIT[path].cols;
        const int rows_ok = unit_m && m >= parts * 4 * MR;
        const int cols_ok = unit_n && n >= parts * 2 * NR;
        if (rows_ok && (m >= n || !cols_ok)) {
            j.split_rows = 1;
            j.step = round_up(ceil_div(m, parts), unit_m);
            parts = ceil_div(m, j.step);
        } else if (cols_ok) {
            j.step = round_up(ceil_div(n, parts), unit_n);
            parts = ceil_div(n, j.step);
        } else {
            parts = 1;
        }
        if (parts > 1) {
            ml__parallel_for(parts, t, gemm_part, &j);
            return;
        }
    }
    ml__gemm_run(path, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epi);
}
