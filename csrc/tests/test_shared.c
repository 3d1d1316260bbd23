/* test_shared.c — the infrastructure the core's layers share (issue 19's "once" list).
 *
 * The one run-time choice of instruction set (kernels/cpu.h): every
 * dispatch site of the core is listed with the variant it runs, ML_KERNEL=portable makes
 * them all portable, and every op built on them gives the same results on the portable
 * and the AVX2 variants: the same bits where both variants do the same float operations
 * (element-wise ops, max pool, sums, batch norm, the sinusoid: loops compiled twice,
 * without FMA), float32 rounding apart where the AVX2 kernels fuse multiply-adds or use
 * their own polynomials (GEMM, exp/tanh/sigmoid/gelu, the fused replays' products).
 * The variant is switched in-process through the decision itself (ml__cpu_isa).
 *
 * The per-thread scratch buffers (kernels/scratch.h): sizes that overflow are refused
 * and leave the buffer as it was, slots are distinct, aligned and reused, and a thread's
 * buffers are freed when it exits (the sanitizer build's leak check sees them otherwise).
 *
 * The seeded streams' generator (core/xoshiro.h) against the published algorithms'
 * outputs, and the global stream of rng.c built on it; the pointer map (core/ptrmap.h)
 * through growth, replacement and absent keys.
 *
 * Standalone: prints "N passed, M failed" and exits nonzero on failure. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "core/ptrmap.h"
#include "core/xoshiro.h"
#include "kernels/cpu.h"
#include "kernels/scratch.h"
#include "kernels/sinusoid.h"
#include "kernels/topk.h"
#include "metalearn.h"

static int n_pass, n_fail;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) n_pass++;                                                                   \
        else {                                                                                \
            n_fail++;                                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                       \
            printf(__VA_ARGS__);                                                              \
            printf("\n");                                                                     \
        }                                                                                     \
    } while (0)

#define OK(expr) CHECK((expr) == ML_OK, "%s -> %s", #expr, ml_last_error())

/* every site the library registers (cpu.h): a site missing here is a dispatch the tests
 * would not see */
/* clang-format off: a table, one case a line */
static const char *const SITES[] = {
    "gemm",
    "vmath",
    "sinusoid_row",
    "binary_range_at",
    "un_kernel",
    "outer_rows_direct",
    "relu_grad_mask_inplace",
    "red_block",
    "maxpool_kernel",
    "bn_chunk",
    "pool_relu_rows",
    "key_scores",
    "key_scores_f16",
    "key_scores_i8",
    "int8_dots",
    "wino_tiles",
    "wino4_tiles",
    "wino_kernel",
    "lstm_rows",
};
/* clang-format on */
#define N_SITES ((int)(sizeof SITES / sizeof SITES[0]))

static void set_isa(int isa) { atomic_store(&ml__cpu_isa, isa); }

static int cpu_has_avx2(void) {
#if ML_HAVE_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* the variant ml_kernel_variants gives for a site (NULL: not listed) */
static const char *variant_of(const char *site) {
    const char *names[64], *variants[64];
    const int n = ml_kernel_variants(names, variants, 64);
    for (int i = 0; i < n && i < 64; i++)
        if (!strcmp(names[i], site)) return variants[i];
    return NULL;
}

static ml_tensor *filled(int ndim, const int64_t *shape, unsigned seed) {
    ml_tensor *t = NULL;
    if (ml_tensor_zeros(&t, ndim, shape) != ML_OK) abort(); /* test setup only */
    float *d = ml_data(t);
    for (int64_t i = 0; i < ml_numel(t); i++) {
        seed = seed * 1103515245u + 12345u;
        d[i] = (float)((seed >> 8) % 4001) / 1000.0f - 2.0f;
    }
    return t;
}

/* ------------------------------------------------------------- the programs */

/* Each program computes one result from inputs of its own (fixed seeds). */
typedef ml_tensor *(*program_fn)(int variant);

/* GEMM shapes, one per kind of kernel the path table can pick (gemm_path.c) */
/* clang-format off: a table, one case a line */
static const struct {
    int64_t m, k, n;
    int ta, tb;
} PRODUCTS[] = {
    {250, 40, 40, 0, 0},   /* small, 24 + 16 tiles */ {10, 40, 40, 0, 0},  /* 2 x 40 tiles */
    {10, 1, 40, 0, 0},     /* outer product */ {40, 10, 1, 0, 0},   /* rows of A . x */
    {40, 10, 1, 1, 0},     /* A^T x */ {1, 10, 40, 0, 0},   /* row . B */
    {75, 784, 5, 0, 1},    /* A B^T, few columns */ {5, 784, 256, 0, 0}, /* long k, few rows */
    {300, 200, 150, 0, 0}, /* packed */ {160, 90, 70, 1, 1}, /* packed, both T */
    {3, 5, 7, 0, 0},     /* tiny */
};
/* clang-format on */
#define N_PRODUCTS ((int)(sizeof PRODUCTS / sizeof PRODUCTS[0]))

static ml_tensor *prog_matmul(int v) {
    const int64_t m = PRODUCTS[v].m, k = PRODUCTS[v].k, n = PRODUCTS[v].n;
    const int64_t sa[2] = {PRODUCTS[v].ta ? k : m, PRODUCTS[v].ta ? m : k};
    const int64_t sb[2] = {PRODUCTS[v].tb ? n : k, PRODUCTS[v].tb ? k : n};
    ml_tensor *a = filled(2, sa, 1u + (unsigned)v), *b = filled(2, sb, 100u + (unsigned)v);
    ml_tensor *c = NULL;
    OK(ml_matmul(&c, a, b, PRODUCTS[v].ta, PRODUCTS[v].tb));
    ml_release(a), ml_release(b);
    return c;
}

/* a broadcast over a middle axis, as vectorised MAML's bias add (binary_range_at) */
static ml_tensor *prog_broadcast_add(int v) {
    const int64_t sx[3] = {25, 10, 40}, sy[3] = {25, 1, 40};
    ml_tensor *x = filled(3, sx, 7), *y = filled(3, sy, 8), *o = NULL;
    OK(ml_add(&o, x, y));
    ml_release(x), ml_release(y);
    return o;
}

/* unary kernels (un_kernel), with the vector math (vmath) for exp .. gelu */
static ml_tensor *prog_unary(int v) {
    const int64_t s[1] = {1000};
    ml_tensor *x = filled(1, s, 11), *o = NULL;
    /* clang-format off: a table, one case a line */
    switch (v) {
    case 0: OK(ml_relu(&o, x)); break;
    case 1: OK(ml_exp(&o, x)); break;
    case 2: OK(ml_tanh(&o, x)); break;
    case 3: OK(ml_sigmoid(&o, x)); break;
    default: OK(ml_gelu(&o, x)); break;
    }
    /* clang-format on */
    ml_release(x);
    return o;
}

/* a sum over a middle axis (red_block) */
static ml_tensor *prog_sum(int v) {
    const int64_t s[3] = {25, 10, 40};
    const int axis = 1;
    ml_tensor *x = filled(3, s, 13), *o = NULL;
    OK(ml_sum(&o, x, 1, &axis, 1));
    ml_release(x);
    return o;
}

static ml_tensor *prog_max_pool(int v) {
    const int64_t s[4] = {2, 9, 9, 5};
    ml_tensor *x = filled(4, s, 17), *o = NULL;
    OK(ml_max_pool2d(&o, x, 3, 3, 2, 2, ML_PAD_SAME));
    ml_release(x);
    return o;
}

/* batch norm in training mode (bn_chunk), and its first-order gradient with
 * respect to x (bn_chunk too: no graph is recorded) */
static ml_tensor *prog_batch_norm(int v) {
    const int64_t s[4] = {8, 4, 4, 6}, c[1] = {6};
    ml_tensor *x = filled(4, s, 19), *gamma = filled(1, c, 20), *beta = filled(1, c, 21);
    ml_tensor *y = NULL, *w = filled(4, s, 22), *yw = NULL, *loss = NULL, *dx = NULL;
    ml_set_requires_grad(x, 1);
    OK(ml_batch_norm(&y, x, gamma, beta, NULL, NULL, 1, 0.99f, 1e-3f, -1));
    if (v == 1) { /* <y, w> differentiated: dx */
        OK(ml_mul(&yw, y, w));
        OK(ml_sum(&loss, yw, 0, NULL, 0));
        OK(ml_grad(&dx, 1, &loss, 1, &x, NULL, 0));
        ml_release(y);
        y = dx;
    }
    ml_release(x), ml_release(gamma), ml_release(beta), ml_release(w);
    ml_release(yw), ml_release(loss);
    return y;
}

/* the LSTM cell (lstm_rows): v = 0 its [h | c], v = 1 dz of <[h | c], w> */
static ml_tensor *prog_lstm(int v) {
    const int64_t sz[2] = {3, 64}, sc[2] = {3, 16}, sy[2] = {3, 32};
    ml_tensor *z = filled(2, sz, 33), *c = filled(2, sc, 34), *w = filled(2, sy, 35);
    ml_tensor *y = NULL, *yw = NULL, *loss = NULL, *dz = NULL;
    ml_set_requires_grad(z, 1);
    OK(ml_lstm_cell(&y, z, c));
    if (v == 1) {
        OK(ml_mul(&yw, y, w));
        OK(ml_sum(&loss, yw, 0, NULL, 0));
        OK(ml_grad(&dz, 1, &loss, 1, &z, NULL, 0));
        ml_release(y);
        y = dz;
    }
    ml_release(z), ml_release(c), ml_release(w), ml_release(yw), ml_release(loss);
    return y;
}

static ml_tensor *prog_sinusoid(int v) {
    const int64_t s[1] = {203};
    ml_tensor *x = filled(1, s, 23), *y = NULL;
    OK(ml_tensor_zeros(&y, 1, s));
    float *xd = ml_data(x);
    xd[5] = 1e6f; /* past the reduction's range: the C library's sin */
    ml_sinusoid(xd, 0.7f, 3.5f, ml_data(y), ml_numel(x));
    ml_release(x);
    return y;
}

/* Traced, then replayed: the fused entries of the replay. v = 0: a task-batched layer's
 * outer product + bias + relu (outer_rows_direct); v = 1: add + relu_grad of a backward
 * (relu_grad_mask_inplace). */
static ml_tensor *prog_fused(int v) {
    const int64_t sx[3] = {25, 10, 1}, sw[3] = {25, 1, 40}, sb[3] = {25, 1, 40};
    const int64_t sg[3] = {25, 10, 40};
    ml_tensor *ins[4] = {filled(3, sx, 29), filled(3, sw, 30), filled(3, v ? sg : sb, 31),
                         filled(3, sg, 32)};
    ml_tensor *t = NULL, *sum = NULL, *res = NULL;
    ml_trace *tr = NULL;
    OK(ml_trace_begin(&tr, 4, ins));
    OK(ml_matmul(&t, ins[0], ins[1], 0, 0));
    if (v == 0) {
        OK(ml_add(&sum, t, ins[2]));
        OK(ml_relu(&res, sum));
    } else {
        OK(ml_add(&sum, ins[2], ins[3]));
        OK(ml__relu_grad(&res, sum, t));
    }
    OK(ml_trace_end(tr, 1, &res));
    ml_release(res), ml_release(sum), ml_release(t);
    res = NULL;
    OK(ml_trace_replay(tr, ins, &res));
    ml_trace_free(tr);
    for (int i = 0; i < 4; i++) ml_release(ins[i]);
    return res;
}

/* ------------------------------------------------------------- the checks */

static const struct {
    const char *name;
    program_fn fn;
    int variants, exact; /* exact: the same bits on both */
} PROGRAMS[] = {
    {"matmul", prog_matmul, N_PRODUCTS, 0},
    {"broadcast add", prog_broadcast_add, 1, 1},
    {"relu", prog_unary, 1, 1},
    {"exp/tanh/sigmoid/gelu", prog_unary, 5, 0},
    {"sum over a middle axis", prog_sum, 1, 1},
    {"max pool", prog_max_pool, 1, 1},
    {"batch norm", prog_batch_norm, 2, 1},
    {"sinusoid", prog_sinusoid, 1, 1},
    {"fused replay", prog_fused, 2, 0},
    {"lstm cell", prog_lstm, 2, 0},
};
#define N_PROGRAMS ((int)(sizeof PROGRAMS / sizeof PROGRAMS[0]))

/* a and b agree: the same shape, and per element the same bits (exact), or both NaN or
 * within float32 rounding of a sum of products */
static int agree(ml_tensor *a, ml_tensor *b, int exact, double *worst) {
    *worst = 0;
    if (!a || !b || ml_ndim(a) != ml_ndim(b) ||
        memcmp(ml_shape(a), ml_shape(b), (size_t)ml_ndim(a) * sizeof(int64_t)))
        return 0;
    const float *x = ml_data(a), *y = ml_data(b);
    for (int64_t i = 0; i < ml_numel(a); i++) {
        if (exact) {
            if (memcmp(&x[i], &y[i], sizeof(float))) return 0;
            continue;
        }
        if (isnan(x[i]) || isnan(y[i])) {
            if (!(isnan(x[i]) && isnan(y[i]))) return 0;
            continue;
        }
        const double err = fabs((double)x[i] - (double)y[i]) / (1.0 + fabs((double)y[i]));
        if (err > *worst) *worst = err;
        if (err > 1e-4) return 0; /* (k = 784 sums of products: ~3e-5 apart) */
    }
    return 1;
}

static void test_results_agree(void) {
    if (!cpu_has_avx2()) {
        printf("test_dispatch: this CPU has no AVX2+FMA: only the portable variants run\n");
        return;
    }
    for (int p = 0; p < N_PROGRAMS; p++) {
        int first = !strcmp(PROGRAMS[p].name, "exp/tanh/sigmoid/gelu"); /* 0 was relu */
        for (int v = first; v < PROGRAMS[p].variants; v++) {
            set_isa(ML_CPU_PORTABLE);
            ml_tensor *portable = PROGRAMS[p].fn(v);
            set_isa(ML_CPU_AVX2);
            ml_tensor *avx2 = PROGRAMS[p].fn(v);
            double worst = 0;
            CHECK(agree(avx2, portable, PROGRAMS[p].exact, &worst),
                  "%s (case %d): the AVX2 and portable variants disagree (worst relative "
                  "difference %.3g)",
                  PROGRAMS[p].name, v, worst);
            ml_release(portable), ml_release(avx2);
        }
    }
    set_isa(ML_CPU_UNDECIDED);
}

/* ML_KERNEL=portable, read when the choice is made, makes every site portable; without it
 * the choice is the CPU's. Every site is listed. */
static void test_ml_kernel(void) {
    const char *saved = getenv("ML_KERNEL");
    char *copy = saved ? strdup(saved) : NULL;
    float one = 1.0f, dot = 0.0f; /* links kernels/topk.o (the memory's scan) and its sites */
    ml__key_scores(1, &one, 1, &one, 1, &dot);

    setenv("ML_KERNEL", "portable", 1);
    set_isa(ML_CPU_UNDECIDED);
    CHECK(ml__cpu_avx2() == 0, "ML_KERNEL=portable: the AVX2 variants were chosen");
    CHECK(!strcmp(ml_kernel_name(), "portable"), "ML_KERNEL=portable: kernel %s", ml_kernel_name());
    for (int i = 0; i < N_SITES; i++) {
        const char *v = variant_of(SITES[i]);
        CHECK(v && !strcmp(v, "portable"), "ML_KERNEL=portable: site %s runs %s", SITES[i],
              v ? v : "(not listed)");
    }

    unsetenv("ML_KERNEL");
    set_isa(ML_CPU_UNDECIDED);
    const char *want = cpu_has_avx2() ? "avx2" : "portable";
    CHECK(ml__cpu_avx2() == cpu_has_avx2(), "no ML_KERNEL: the choice is not the CPU's");
    CHECK(!strcmp(ml_kernel_name(), want), "no ML_KERNEL: kernel %s, want %s", ml_kernel_name(),
          want);
    for (int i = 0; i < N_SITES; i++) {
        const char *v = variant_of(SITES[i]);
        CHECK(v && !strcmp(v, want), "no ML_KERNEL: site %s runs %s, want %s", SITES[i],
              v ? v : "(not listed)", want);
    }

    const char *names[64], *variants[64];
    const int n = ml_kernel_variants(names, variants, 64);
    CHECK(n == N_SITES, "%d dispatch sites listed, %d known to this test", n, N_SITES);

    if (copy) setenv("ML_KERNEL", copy, 1);
    free(copy);
    set_isa(ML_CPU_UNDECIDED);
}

/* ------------------------------------------------------------- scratch */

static int aligned64(const void *p) { return ((uintptr_t)p & 63) == 0; }

/* every slot grown, written end to end, and left to the thread's exit */
static void *grow_all_slots(void *unused) {
    (void)unused;
    for (int s = 0; s < ML_SCRATCH_SLOTS; s++) {
        float *p = ml__scratch(s, 1000 + 100 * (size_t)s);
        if (!p) return NULL;
        for (int i = 0; i < 1000 + 100 * s; i++) p[i] = (float)i;
    }
    return (void *)1;
}

static void test_scratch(void) {
    float *gemm = ml__scratch(ML_SCRATCH_GEMM, 100);
    float *cols = ml__scratch(ML_SCRATCH_CONV_COLS, 100);
    CHECK(gemm && cols && gemm != cols, "two slots share a buffer");
    CHECK(aligned64(gemm) && aligned64(cols), "buffers not 64-byte aligned");
    gemm[99] = 7.0f;
    CHECK(ml__scratch(ML_SCRATCH_GEMM, 50) == gemm, "a smaller request moved the buffer");
    CHECK(gemm[99] == 7.0f, "a smaller request changed the buffer");

    /* sizes whose byte count overflows (it wrapped to a few bytes, a buffer far too small) */
    const size_t huge[3] = {SIZE_MAX, SIZE_MAX / sizeof(float) + 1, SIZE_MAX / sizeof(float) - 3};
    for (int i = 0; i < 3; i++)
        for (int s = 0; s < ML_SCRATCH_SLOTS; s++)
            CHECK(ml__scratch(s, huge[i]) == NULL, "slot %d: %zu floats not refused", s, huge[i]);
    CHECK(ml__scratch(ML_SCRATCH_GEMM, 100) == gemm && gemm[99] == 7.0f,
          "a refused size changed the buffer");

    float *big = ml__scratch(ML_SCRATCH_GEMM, 1 << 20);
    CHECK(big && aligned64(big), "growing the buffer failed");
    if (big) big[(1 << 20) - 1] = 1.0f; /* the whole length is there (ASan) */

    pthread_t th;
    void *ok = NULL;
    CHECK(pthread_create(&th, NULL, grow_all_slots, NULL) == 0 && pthread_join(th, &ok) == 0 && ok,
          "a thread's scratch buffers");
}

/* ------------------------------------------------------------- xoshiro */

/* splitmix64 from 0: the outputs of Vigna's reference splitmix64.c; xoshiro256** from the
 * states seeded with 0 and 42: the reference xoshiro256starstar.c's next() (computed by
 * an independent transcription of both in Python) */
static void test_xoshiro(void) {
    static const uint64_t split0[4] = {0xe220a8397b1dcdafull, 0x6e789e6aa1b965f4ull,
                                       0x06c45d188009454full, 0xf88bb8a8724c81ecull};
    static const uint64_t next[2][4] = {{0x99ec5f36cb75f2b4ull, 0xbf6e1f784956452aull,
                                         0x1a5f849d4933e6e0ull, 0x6aa594f1262d2d2cull},
                                        {0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull,
                                         0xae17533239e499a1ull, 0xecb8ad4703b360a1ull}};
    uint64_t x = 0, s[4];
    for (int i = 0; i < 4; i++) {
        const uint64_t z = ml__splitmix64(&x);
        CHECK(z == split0[i], "splitmix64 output %d: %016llx", i, (unsigned long long)z);
    }
    for (int k = 0; k < 2; k++) {
        ml__xoshiro_seed(s, k ? 42 : 0);
        for (int i = 0; i < 4; i++) {
            const uint64_t r = ml__xoshiro_next(s);
            CHECK(r == next[k][i], "xoshiro256** seed %d, output %d: %016llx", k ? 42 : 0, i,
                  (unsigned long long)r);
        }
    }
    /* the global stream: uniform = lo + (hi - lo) * (24 top bits / 2^24) of each output */
    const float want[3] = {0.4011528491973877f, -0.4424976110458374f, 0.6792548894882202f};
    const int64_t shape[1] = {3};
    ml_tensor *u = NULL;
    ml_rng_seed(7);
    OK(ml_random_uniform(&u, 1, shape, -1.0f, 1.0f));
    for (int i = 0; u && i < 3; i++)
        CHECK(ml_data(u)[i] == want[i], "seed 7, uniform %d: %.9g, want %.9g", i,
              (double)ml_data(u)[i], (double)want[i]);
    ml_release(u);
}

/* ------------------------------------------------------------- pointer map */

static void test_ptrmap(void) {
    enum { N = 5000 };
    static char objects[N], others[N]; /* distinct addresses: keys, and keys never put */
    ml_ptrmap m = {0};
    CHECK(ml__ptrmap_get(&m, &objects[0]) == -1, "an empty map holds a key");
    int added = 0;
    for (int i = 0; i < N; i++) added += ml__ptrmap_put(&m, &objects[i], i) == 1;
    CHECK(added == N && m.n == N, "%d of %d keys added, %zu held", added, N, m.n);
    CHECK(m.cap >= 2 * (size_t)N && (m.cap & (m.cap - 1)) == 0, "table of %zu slots", m.cap);
    int right = 0;
    for (int i = 0; i < N; i++) right += ml__ptrmap_get(&m, &objects[i]) == i;
    CHECK(right == N, "%d of %d keys have their value after growing", right, N);
    CHECK(ml__ptrmap_put(&m, &objects[17], 99) == 0 && ml__ptrmap_get(&m, &objects[17]) == 99 &&
              m.n == N,
          "a key put again: its value replaced, no new key");
    int absent = 0;
    for (int i = 0; i < N; i++) absent += ml__ptrmap_get(&m, &others[i]) == -1;
    CHECK(absent == N, "%d of %d absent keys found absent", absent, N);
    ml__ptrmap_free(&m);
    CHECK(m.cap == 0 && m.n == 0 && ml__ptrmap_get(&m, &objects[1]) == -1, "a freed map is empty");
    CHECK(ml__ptrmap_reserve(&m, 1000) && m.cap >= 2000 && m.n == 0, "reserve");
    ml__ptrmap_free(&m);
}

int main(void) {
    test_ml_kernel();
    test_results_agree();
    test_scratch();
    test_xoshiro();
    test_ptrmap();
    printf("test_shared: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
