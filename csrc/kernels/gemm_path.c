/*
 * gemm_path.c — the path table: which kernel computes a product, from its shape.
 *
 * The rules, in order; the first that holds picks the path (m x k times k x n, ta / tb:
 * op(A) / op(B) transposed; thresholds in gemm_config.h, each with the benchmark that set
 * it):
 *
 *   #   holds when                                     path          because
 *   1   the portable instruction set                   PORTABLE      no AVX2 kernels
 *   2   k <= 0                                         PACKED        C = beta C only
 *   3   tb, !ta, n < DOTS_NT_MAX_N, k >= 8             DOTS_NT       B's few rows stay in L1
 *   4   k == 1                                         OUTER         one multiply an element
 *   5   n == 1                                         GEMV_T (ta)   lanes along m
 *                                                      DOTS (!ta)    rows of A are contiguous
 *   6   m == 1, !tb, k <= SMALL_MAX_K                  ROW           lanes along n
 *   7   n < 8 (m > 1)                                  PACKED        8-lane rows mostly empty
 *   8   k > SMALL_MAX_K, m > SMALL_LONG_K_MAX_M        PACKED        long k, many rows
 *   9   tb, k n > SMALL_MAX_K SMALL_MAX_N              PACKED        B^T's copy outgrows L2
 *  10   m n k > SMALL_MACS, and n > SMALL_MAX_N or     PACKED        B's slice outgrows L2 /
 *       (ta, m > SMALL_AT_MAX_M, k > SMALL_KC)                       packing A^T pays
 *  11   n % 16 == 8, n >= 24, m >= SMALL_W_MIN_M       SMALL_W       24 + 16s: no 8-wide edge
 *  12   otherwise                                      SMALL         register tiles, no packing
 *
 * A PACKED product of at most TINY_FLOPS multiply-adds runs as plain loops (gemm.c).
 *
 * The determinism contract: the table reads the product's shape and the instruction set
 * (chosen once for the process, kernels/cpu.c) and nothing else: not the thread count, not
 * a timing. A threaded product is split after its path is chosen, and every part runs
 * that path (gemm_thread.c): a part's own smaller shape could pick another kernel, with
 * another rounding, and the result would depend on the number of threads.
 */
#include "gemm_internal.h"

int ml__gemm_path(int use_avx2, int ta, int tb, int64_t m, int64_t n, int64_t k) {
    if (!use_avx2) return PATH_PORTABLE;                                   /* 1 */
    if (k <= 0) return PATH_PACKED;                                        /* 2 */
    if (!ta && tb && n < DOTS_NT_MAX_N && k >= 8) return PATH_DOTS_NT;     /* 3 */
    if (k == 1) return PATH_OUTER;                                         /* 4 */
    if (n == 1) return ta ? PATH_GEMV_T : PATH_DOTS;                       /* 5 */
    if (m == 1 && !tb && k <= SMALL_MAX_K) return PATH_ROW;                /* 6 */
    if (n < 8 && m > 1) return PATH_PACKED;                                /* 7 */
    if (k > SMALL_MAX_K && m > SMALL_LONG_K_MAX_M) return PATH_PACKED;     /* 8 */
    if (tb && (double)k * (double)n > (double)SMALL_MAX_K * SMALL_MAX_N)   /* 9 */
        return PATH_PACKED;
    const int small = (double)m * (double)n * (double)k <= SMALL_MACS ||   /* 10 */
                      (n <= SMALL_MAX_N && (!ta || m <= SMALL_AT_MAX_M || k <= SMALL_KC));
    if (!small) return PATH_PACKED;
    return n % 16 == 8 && n >= 24 && m >= SMALL_W_MIN_M ? PATH_SMALL_W     /* 11 */
                                                        : PATH_SMALL;      /* 12 */
}
