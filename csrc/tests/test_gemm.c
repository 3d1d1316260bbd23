/*
 * test_gemm.c — checks ml_sgemm (run-time chosen kernel) and ml_sgemm_portable against a
 * double-precision reference: many shapes (empty, tiny, primes, few-shot, blocked), all
 * four transpose cases, alpha/beta cases (beta = 0 over a NaN-filled C), padded leading
 * dimensions, untouched padding, and concurrent callers. And the determinism contract
 * (kernels/gemm_path.c): a product split over 2 or 3 threads has the bits of one thread's,
 * NaNs' signs included, on every path and both instruction sets.
 *
 *   make -C csrc build/tests/test_gemm && csrc/build/tests/test_gemm
 */
#define _POSIX_C_SOURCE 200809L

#include "metalearn.h"
#include "../kernels/cpu.h"
#include "../kernels/gemm.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*gemm_fn)(int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                        const float *, int64_t, float, float *, int64_t);

static _Atomic long g_checks, g_failures; /* updated by the threads too */
static const float SENTINEL = 12345.0f;

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(uint64_t *s) {
    uint64_t x = *s; /* xorshift64* */
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}
static float uniform(uint64_t *s) {
    return (float)((next_u64(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}
static int64_t rand_int(uint64_t *s, int64_t lo, int64_t hi) {
    return lo + (int64_t)(next_u64(s) % (uint64_t)(hi - lo + 1));
}

/* One case: op(A) m x k, op(B) k x n, leading dimensions padded by `pad`. Returns the
 * number of failed elements (and prints the first few). */
static long run_case(gemm_fn fn, const char *path, int ta, int tb, int64_t m, int64_t n, int64_t k,
                     float alpha, float beta, int64_t pad, uint64_t *rng) {
    /* stored shapes */
    const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
    const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
    const int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
    const size_t a_len = (size_t)(a_rows * lda) + 1, b_len = (size_t)(b_rows * ldb) + 1;
    const size_t c_len = (size_t)(m * ldc) + 1;
    float *a = malloc(a_len * sizeof *a), *b = malloc(b_len * sizeof *b);
    float *c = malloc(c_len * sizeof *c), *c0 = malloc(c_len * sizeof *c0);
    if (!a || !b || !c || !c0) {
        fprintf(stderr, "test_gemm: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < a_len; ++i) a[i] = uniform(rng);
    for (size_t i = 0; i < b_len; ++i) b[i] = uniform(rng);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < ldc; ++j)
            c0[i * ldc + j] = j >= n ? SENTINEL : beta == 0.0f ? NAN : uniform(rng);
    c0[c_len - 1] = SENTINEL;
    memcpy(c, c0, c_len * sizeof *c);

    fn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);

    long bad = 0;
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < ldc; ++j) {
            const float got = c[i * ldc + j];
            ++g_checks;
            if (j >= n) { /* padding must be left alone */
                if (got != SENTINEL) ++bad;
                continue;
            }
            double s = 0.0, mag = 0.0;
            for (int64_t p = 0; p < k; ++p) {
                const double x = ta ? a[p * lda + i] : a[i * lda + p];
                const double y = tb ? b[j * ldb + p] : b[p * ldb + j];
                s += x * y;
                mag += fabs(x * y);
            }
            double want = (double)alpha * s;
            mag *= fabs((double)alpha);
            if (beta != 0.0f) {
                want += (double)beta * c0[i * ldc + j];
                mag += fabs((double)beta * c0[i * ldc + j]);
            }
            /* float rounding grows at worst ~k * eps: allow 1e-6 per term of the sum */
            const double tol = (1e-6 * (double)(k + 2)) * (mag + 1e-30) + 1e-30;
            if (!(fabs((double)got - want) <= tol)) {
                if (g_failures + bad < 10)
                    fprintf(stderr,
                            "FAIL %s ta=%d tb=%d m=%lld n=%lld k=%lld alpha=%g beta=%g pad=%lld "
                            "C[%lld][%lld] = %.9g, want %.9g\n",
                            path, ta, tb, (long long)m, (long long)n, (long long)k, (double)alpha,
                            (double)beta, (long long)pad, (long long)i, (long long)j, (double)got,
                            want);
                ++bad;
            }
        }
    }
    ++g_checks;
    if (c[c_len - 1] != SENTINEL) ++bad; /* nothing past the last row */
    g_failures += bad;
    free(a), free(b), free(c), free(c0);
    return bad;
}

static const struct {
    float alpha, beta;
} AB[] = {
    {1.0f, 0.0f}, {1.0f, 1.0f}, {-0.5f, 2.0f}, {2.5f, -1.0f}, {0.0f, 0.5f}, {0.75f, 0.0f},
};

static void run_shape(int64_t m, int64_t n, int64_t k, int all_ab) {
    static const gemm_fn fns[2] = {ml_sgemm, ml_sgemm_portable};
    static const char *names[2] = {"ml_sgemm", "ml_sgemm_portable"};
    const int n_ab = all_ab ? (int)(sizeof AB / sizeof AB[0]) : 2;
    for (int f = 0; f < 2; ++f)
        for (int t = 0; t < 4; ++t)
            for (int q = 0; q < n_ab; ++q) {
                const int64_t pad = (q % 2) ? 3 + q : 0;
                run_case(fns[f], names[f], t >> 1, t & 1, m, n, k, AB[q].alpha, AB[q].beta, pad,
                         &g_rng);
            }
}

/* Several threads at once, each with its own shapes (and thus buffer sizes). */
static void *thread_main(void *arg) {
    uint64_t rng = 0x1234567ull + (uint64_t)(uintptr_t)arg * 7919u;
    long bad = 0;
    for (int it = 0; it < 6; ++it) {
        const int64_t m = rand_int(&rng, 1, 200), n = rand_int(&rng, 1, 200);
        const int64_t k = rand_int(&rng, 1, 300);
        bad += run_case(ml_sgemm, "thread", it & 1, (it >> 1) & 1, m, n, k, 1.0f, 0.0f, 1, &rng);
    }
    return (void *)(intptr_t)bad;
}

/* ---------------------------------------------------- the determinism contract */

/* Products large enough to be split (at least PAR_MIN_MACS multiply-adds), one for each
 * path the table picks, split by rows and by columns: m, n, k, ta, tb */
static const int64_t SPLIT[][5] = {
    {120, 48, 520, 0, 0},  /* packed, split by rows */ {18, 256, 520, 0, 0}, /* ... columns */
    {200, 150, 300, 1, 1}, /* packed, both transposed */ {300, 128, 72, 0, 0}, /* small */
    {120, 56, 72, 0, 1},   /* small, 4 x 24 tiles, B^T */ {120, 40, 100, 0, 0}, /* n = 40 */
    {6000, 56, 16, 0, 0},  /* 4 x 24 tiles, 2 slices */ {2400, 5, 784, 0, 1}, /* A B^T, dots */
    {4096, 600, 1, 1, 0},  /* outer product */ {4096, 1, 600, 0, 0}, /* A x */
    {4096, 1, 600, 1, 0},  /* A^T x */ {1, 4200, 512, 0, 0}, /* row . B */
    {30, 4000, 40, 0, 0},  /* small, split by columns */ {2030, 56, 40, 0, 0}, /* 4-row tiles */
    {2030, 40, 40, 0, 0},  /* 2 x 40 tiles, odd parts */ {2029, 1, 600, 0, 0}, /* 4-row groups */
};

/* inputs of a split case: random, with NaNs of both signs, infinities and zeros that meet
 * in the same sums (which NaN a sum returns depends on its operands' order) */
static void fill_special(float *x, size_t n, uint64_t *rng) {
    for (size_t i = 0; i < n; ++i) x[i] = uniform(rng);
    const float special[6] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f};
    for (size_t i = 0; i < n; i += 97) x[i] = special[(i / 97) % 6];
}

static void check_split(int64_t m, int64_t n, int64_t k, int ta, int tb, const char *isa) {
    const size_t a_len = (size_t)(m * k), b_len = (size_t)(k * n), c_len = (size_t)(m * n);
    float *a = malloc(a_len * sizeof *a), *b = malloc(b_len * sizeof *b);
    float *one = malloc(c_len * sizeof *one), *many = malloc(c_len * sizeof *many);
    if (!a || !b || !one || !many) {
        fprintf(stderr, "test_gemm: out of memory\n");
        exit(2);
    }
    uint64_t rng = 0xC0FFEEull + (uint64_t)(m * 31 + n * 7 + k);
    fill_special(a, a_len, &rng);
    fill_special(b, b_len, &rng);
    const int64_t lda = ta ? m : k, ldb = tb ? k : n;
    ml_set_num_threads(1);
    ml_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, one, n);
    for (int threads = 2; threads <= 3; ++threads) {
        ml_set_num_threads(threads);
        ml_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, many, n);
        ++g_checks;
        if (memcmp(one, many, c_len * sizeof *one) != 0) {
            fprintf(stderr,
                    "FAIL %s: %lldx%lldx%lld ta=%d tb=%d on %d threads differs from one "
                    "thread\n",
                    isa, (long long)m, (long long)n, (long long)k, ta, tb, threads);
            ++g_failures;
        }
    }
    free(a), free(b), free(one), free(many);
}

/* Each split case on the portable and (where the CPU has it) the AVX2 kernels: the choice
 * is switched through the one decision, kernels/cpu.h. */
static void test_thread_counts(void) {
    const int threads_before = ml_get_num_threads();
    for (int portable = 1; portable >= 0; --portable) {
        atomic_store(&ml__cpu_isa, portable ? ML_CPU_PORTABLE : ML_CPU_UNDECIDED);
        if (!portable && !ml__cpu_avx2()) break; /* (decided from the CPU again) */
        for (size_t i = 0; i < sizeof SPLIT / sizeof SPLIT[0]; ++i)
            check_split(SPLIT[i][0], SPLIT[i][1], SPLIT[i][2], (int)SPLIT[i][3], (int)SPLIT[i][4],
                        portable ? "portable" : "avx2");
    }
    atomic_store(&ml__cpu_isa, ML_CPU_UNDECIDED);
    ml_set_num_threads(threads_before);
}

int main(void) {
    static const int64_t shapes[][3] = {
        /* m, n, k */
        {1, 1, 1},
        {0, 5, 7},
        {5, 0, 7},
        {5, 7, 0},
        {0, 0, 0},
        {1, 17, 1},
        {2, 3, 4},
        {7, 13, 29},
        {13, 7, 29},
        {29, 13, 7},
        {6, 16, 8},
        {12, 32, 64},
        {5, 15, 17},
        {7, 17, 5},
        {31, 33, 37},
        {1, 100, 50},
        {100, 1, 50},
        {64, 64, 1},
        {10, 1, 40},
        {250, 40, 40},
        {5, 784, 256},
        {75, 784, 256},
        {32, 784, 128},
        {144, 48, 256},
        {145, 49, 257},
        {257, 129, 65},
        {300, 35, 513},
        {61, 97, 600},
        /* MAML sinusoid's per-task products (the unpacked small kernel), and its edges */
        {10, 40, 40},
        {40, 40, 10},
        {40, 1, 10},
        {1, 40, 10},
        {10, 40, 1},
        {3, 9, 512},
        {4, 16, 513},
        {64, 64, 16},
        {9, 1, 3},
        /* outer products (k == 1) and row dot products (n == 1), with 8-lane tails */
        {7, 33, 1},
        {33, 7, 1},
        {1, 8, 1},
        {13, 1, 1},
        {33, 1, 9},
        {5, 1, 8},
        {3, 1, 17},
        {1, 1, 40},
        {250, 1, 40},
        /* the unpacked kernel on larger products: k in 64-long slices (and a 1-long last
         * slice), 8-column edges (even/odd accumulators), A^T up to 64 rows and past */
        {40, 40, 250},
        {100, 24, 130},
        {7, 8, 65},
        {64, 40, 300},
        {65, 40, 300},
        {20, 56, 129},
        {9, 8, 3},
        /* A B^T with under 16 columns as dot products: 2-row tiles (a 1-row last one
         * for odd m), columns in parts of at most 5 (13 = 5 + 4 + 4, 11 = 4 + 4 + 3),
         * k with and without an 8-lane tail */
        {10, 10, 40},
        {100, 4, 40},
        {4, 5, 8},
        {8, 15, 9},
        {2, 3, 512},
        {6, 5, 784},
        {4, 3, 1030},
        {11, 13, 37},
        {9, 7, 16},
        {1, 5, 64},
        {3, 11, 8},
        {5, 2, 23},
        {7, 14, 41},
        {75, 5, 784},
        /* the unpacked kernel past k = 512 for a few rows; a matrix-vector product with a
         * strided B column (the padded cases) and with a long k */
        {12, 24, 700},
        {3, 17, 1030},
        {200, 1, 700},
        {7, 1, 3},
        {33, 1, 5},
        {70, 1, 9},
    };
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);

    printf("test_gemm: kernel %s\n", ml_kernel_name());
    for (int s = 0; s < n_shapes; ++s) run_shape(shapes[s][0], shapes[s][1], shapes[s][2], 1);
    /* past every cache block: NC (4080), MC (144) and KC (256) all split */
    run_shape(150, 4100, 260, 0);
    for (int r = 0; r < 40; ++r) {
        const int64_t m = rand_int(&g_rng, 1, 70), n = rand_int(&g_rng, 1, 70);
        const int64_t k = rand_int(&g_rng, 1, 70);
        run_shape(m, n, k, r % 4 == 0);
    }

    /* alpha == 0: A and B are not read (BLAS semantics), so NaN there must not show up */
    {
        float a[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, b[6] = {NAN, NAN, NAN, NAN, NAN, NAN};
        float c[4] = {1, 2, 3, 4};
        ml_sgemm(0, 0, 2, 2, 3, 0.0f, a, 3, b, 2, 0.5f, c, 2);
        g_checks += 4;
        if (c[0] != 0.5f || c[1] != 1.0f || c[2] != 1.5f || c[3] != 2.0f) {
            fprintf(stderr, "FAIL alpha=0 case\n");
            ++g_failures;
        }
    }

    /* ml__sgemm_batch: each product the same bits as ml_sgemm of that shape */
    {
        /* with m == 1 or n == 1 (and 45 > 40 lanes) the batch runs its own loop */
        static const int64_t bs[][3] = {{10, 40, 1},  {10, 1, 40}, {10, 10, 40}, {10, 40, 10},
                                        {75, 5, 784}, {3, 7, 5},   {1, 40, 10},  {40, 1, 10},
                                        {1, 45, 10},  {45, 1, 7},  {13, 1, 41}};
        for (int s = 0; s < (int)(sizeof bs / sizeof bs[0]); ++s)
            for (int t = 0; t < 4; ++t) {
                const int ta = t >> 1, tb = t & 1;
                const int64_t m = bs[s][0], n = bs[s][1], k = bs[s][2], count = 5;
                const int64_t lda = ta ? m : k, ldb = tb ? k : n;
                const int64_t sa = m * k + 3, sb = k * n + 1, sc = m * n + 2;
                float *a = malloc(sizeof(float) * (size_t)(sa * count));
                float *b = malloc(sizeof(float) * (size_t)(sb * count));
                float *c1 = malloc(sizeof(float) * (size_t)(sc * count));
                float *c2 = malloc(sizeof(float) * (size_t)(sc * count));
                for (int64_t i = 0; i < sa * count; ++i) a[i] = uniform(&g_rng);
                for (int64_t i = 0; i < sb * count; ++i) b[i] = uniform(&g_rng);
                for (int64_t i = 0; i < sc * count; ++i) c1[i] = c2[i] = uniform(&g_rng);
                ml__sgemm_batch(ta, tb, m, n, k, 0.5f, a, lda, sa, b, ldb, sb, 0.25f, c1, n, sc,
                                count);
                for (int64_t i = 0; i < count; ++i)
                    ml_sgemm(ta, tb, m, n, k, 0.5f, a + i * sa, lda, b + i * sb, ldb, 0.25f,
                             c2 + i * sc, n);
                ++g_checks;
                if (memcmp(c1, c2, sizeof(float) * (size_t)(sc * count)) != 0) {
                    fprintf(stderr,
                            "FAIL ml__sgemm_batch ta=%d tb=%d %lldx%lldx%lld differs from "
                            "ml_sgemm\n",
                            ta, tb, (long long)m, (long long)n, (long long)k);
                    ++g_failures;
                }
                free(a), free(b), free(c1), free(c2);
            }
    }

    test_thread_counts();

    enum { N_THREADS = 4 };
    pthread_t th[N_THREADS];
    for (intptr_t t = 0; t < N_THREADS; ++t)
        if (pthread_create(&th[t], NULL, thread_main, (void *)t) != 0) {
            fprintf(stderr, "test_gemm: pthread_create failed\n");
            return 2;
        }
    for (int t = 0; t < N_THREADS; ++t) {
        void *r;
        pthread_join(th[t], &r);
        (void)r; /* failures are counted in g_failures too */
    }

    if (g_failures) {
        printf("test_gemm: %ld of %ld checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    printf("test_gemm: %ld checks passed\n", g_checks);
    return 0;
}
