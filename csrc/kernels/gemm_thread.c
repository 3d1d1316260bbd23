/*
 * gemm_thread.c — a large product split over the thread pool (core/threads.c).
 *
 * The split comes after the path: the product's path is chosen from its whole shape
 * (gemm_path.c) and every part runs it. Parts are blocks of rows of C or, when C has few
 * rows, blocks of columns (multiples of MR rows or NR columns), each of at least
 * PAR_MIN_MACS / 2 multiply-adds (never small enough for the plain loops of tiny
 * products). Every element of C is then computed by the same kernel with the same k
 * blocking (kc depends on k alone) as on one thread, so the result has the same bits for
 * any number of threads. How many parts there are
 * depends on the thread count; what each element is does not.
 */
#include "gemm_internal.h"
#include "../core/internal.h"

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

static void gemm_part(void *ctx, int64_t i)
{
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
        ml__gemm_run(j->path, j->ta, j->tb, rows, j->n, j->k, j->alpha, a, j->lda, j->b,
                     j->ldb, j->beta, j->c + lo * j->ldc, j->ldc, j->epi ? &e : NULL);
    } else {
        const int64_t cols = min64(j->step, j->n - lo);
        const float *b = j->tb ? j->b + lo * j->ldb : j->b + lo;
        ml__gemm_run(j->path, j->ta, j->tb, j->m, cols, j->k, j->alpha, j->a, j->lda, b,
                     j->ldb, j->beta, j->c + lo, j->ldc, j->epi ? &e : NULL);
    }
}

void ml__gemm_threaded(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k,
                       float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                       float beta, float *c, int64_t ldc, const gemm_epi *epi)
{
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
        const int rows_ok = m >= parts * 4 * MR, cols_ok = n >= parts * 2 * NR;
        if (rows_ok && (m >= n || !cols_ok)) {
            j.split_rows = 1;
            j.step = round_up(ceil_div(m, parts), MR);
            parts = ceil_div(m, j.step);
        } else if (cols_ok) {
            j.step = round_up(ceil_div(n, parts), NR);
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
