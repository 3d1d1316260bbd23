/* test_threads.c — ops split over threads give the same bits for every thread count:
 * GEMM (row and column splits, all transposes), conv2d and its two gradients; traces
 * recorded, ended, freed and replayed from several threads. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metalearn.h"
#include "core/internal.h"
#include <stdatomic.h>
#include <unistd.h>

static int passed, failed;
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) passed++;                                               \
        else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
    } while (0)

static uint64_t rs = 88172645463325252ull;
static float frand(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((rs >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static void gemm_case(int ta, int tb, int64_t m, int64_t n, int64_t k, float beta) {
    float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n);
    float *c0 = malloc(sizeof(float) * m * n), *c1 = malloc(sizeof(float) * m * n);
    for (int64_t i = 0; i < m * k; i++) a[i] = frand();
    for (int64_t i = 0; i < k * n; i++) b[i] = frand();
    for (int64_t i = 0; i < m * n; i++) c0[i] = c1[i] = frand();
    const int64_t lda = ta ? m : k, ldb = tb ? k : n;
    int same = 1;
    float *init = malloc(sizeof(float) * m * n);
    for (int64_t i = 0; i < m * n; i++) init[i] = (float)(i % 7) - 3.0f;
    memcpy(c0, init, sizeof(float) * m * n);
    ml_set_num_threads(1);
    ml_sgemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, beta, c0, n);
    for (int t = 2; t <= 3; t++) {
        memcpy(c1, init, sizeof(float) * m * n);
        ml_set_num_threads(t);
        ml_sgemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, beta, c1, n);
        if (memcmp(c0, c1, sizeof(float) * m * n) != 0) same = 0;
    }
    CHECK(same, "sgemm ta=%d tb=%d %lldx%lldx%lld: threads change the result", ta, tb, (long long)m,
          (long long)n, (long long)k);
    free(init);
    free(a);
    free(b);
    free(c0);
    free(c1);
}

static ml_tensor *randt(int nd, const int64_t *shape) {
    ml_tensor *t = NULL;
    if (ml_tensor_zeros(&t, nd, shape)) return NULL;
    for (int64_t i = 0; i < ml_numel(t); i++) ml_data(t)[i] = frand();
    return t;
}

/* conv2d forward, dx, dk, db for one thread count; results into fresh buffers */
static void conv_run(int threads, ml_tensor *x, ml_tensor *k, ml_tensor *b, ml_tensor *gy,
                     float **outs, int64_t *sizes) {
    ml_set_num_threads(threads);
    ml_tensor *y = NULL, *g[3] = {0};
    ml_status st = ml_conv2d(&y, x, k, b, 1, 1, ML_PAD_SAME);
    CHECK(st == ML_OK, "conv2d failed");
    ml_tensor *ins[3] = {x, k, b};
    st = ml_grad(g, 1, &y, 3, ins, &gy, 0);
    CHECK(st == ML_OK, "conv2d grad failed");
    ml_tensor *all[4] = {y, g[0], g[1], g[2]};
    for (int i = 0; i < 4; i++) {
        sizes[i] = ml_numel(all[i]);
        outs[i] = malloc(sizeof(float) * sizes[i]);
        memcpy(outs[i], ml_data(all[i]), sizeof(float) * sizes[i]);
        ml_release(all[i]);
    }
}

static void conv_case(int64_t n, int64_t h, int64_t c, int64_t f) {
    int64_t xs[4] = {n, h, h, c}, ks[4] = {3, 3, c, f}, bs[1] = {f}, gs[4] = {n, h, h, f};
    ml_tensor *x = randt(4, xs), *k = randt(4, ks), *b = randt(1, bs), *gy = randt(4, gs);
    ml_set_requires_grad(x, 1);
    ml_set_requires_grad(k, 1);
    ml_set_requires_grad(b, 1);
    float *r1[4], *r2[4];
    int64_t s1[4], s2[4];
    conv_run(1, x, k, b, gy, r1, s1);
    conv_run(2, x, k, b, gy, r2, s2);
    const char *names[4] = {"y", "dx", "dk", "db"};
    for (int i = 0; i < 4; i++) {
        CHECK(s1[i] == s2[i] && memcmp(r1[i], r2[i], sizeof(float) * s1[i]) == 0,
              "conv2d n=%lld h=%lld c=%lld f=%lld: %s differs between 1 and 2 threads",
              (long long)n, (long long)h, (long long)c, (long long)f, names[i]);
        free(r1[i]);
        free(r2[i]);
    }
    ml_release(x);
    ml_release(k);
    ml_release(b);
    ml_release(gy);
}


/* max pool (forward, scatter, gather through a second-order graph) and big unary ops */
static void pool_unary_case(void) {
    int64_t xs[4] = {16, 28, 28, 64};
    ml_tensor *x = randt(4, xs);
    ml_set_requires_grad(x, 1);
    float *res[2][4];
    int64_t sz[4];
    for (int r = 0; r < 2; r++) {
        ml_set_num_threads(r + 1);
        ml_tensor *t = NULL, *y = NULL, *e = NULL, *s = NULL, *g = NULL;
        CHECK(ml_tanh(&t, x) == ML_OK, "tanh");
        CHECK(ml_max_pool2d(&y, t, 2, 2, 2, 2, ML_PAD_VALID) == ML_OK, "max_pool2d");
        CHECK(ml_exp(&e, y) == ML_OK, "exp");
        CHECK(ml_sum(&s, e, 0, NULL, 0) == ML_OK, "sum");
        CHECK(ml_grad(&g, 1, &s, 1, &x, NULL, 0) == ML_OK, "grad");
        ml_tensor *all[4] = {t, y, e, g};
        for (int i = 0; i < 4; i++) {
            sz[i] = ml_numel(all[i]);
            res[r][i] = malloc(sizeof(float) * sz[i]);
            memcpy(res[r][i], ml_data(all[i]), sizeof(float) * sz[i]);
        }
        ml_release(t);
        ml_release(y);
        ml_release(e);
        ml_release(s);
        ml_release(g);
    }
    const char *names[4] = {"tanh", "max_pool2d", "exp", "grad"};
    for (int i = 0; i < 4; i++) {
        CHECK(memcmp(res[0][i], res[1][i], sizeof(float) * sz[i]) == 0,
              "%s differs between 1 and 2 threads", names[i]);
        free(res[0][i]);
        free(res[1][i]);
    }
    ml_release(x);
}

/* Broadcast binary ops and reductions (split by output blocks / independent output rows
 * or columns) give the same bits on 1, 2 and 3 threads. */
#define BR_N 12
static int br_run(int threads, float **res, int64_t *sz) {
    ml_set_num_threads(threads);
    int64_t xs[4] = {16, 28, 28, 64}, cs[1] = {64}, ks[4] = {16, 1, 1, 64}, hs[4] = {1, 28, 1, 1};
    int64_t rs2[2] = {7, 10001}, cols[2] = {7, 1}, tall[2] = {3, 30001};
    rs = 12345;
    ml_tensor *x = randt(4, xs), *y = randt(4, xs), *c = randt(1, cs), *k = randt(4, ks),
              *h = randt(4, hs), *r = randt(2, rs2), *rc = randt(2, cols), *t = randt(2, tall);
    ml_tensor *o[BR_N] = {0};
    int ax012[3] = {0, 1, 2}, ax3[1] = {3}, ax12[2] = {1, 2}, ax0[1] = {0}, ax1[1] = {1};
    int ok = 1;
    ok &= ml_mul(&o[0], x, y) == ML_OK;
    ok &= ml_add(&o[1], x, c) == ML_OK;
    ok &= ml_div(&o[2], x, k) == ML_OK;
    ok &= ml_maximum(&o[3], h, x) == ML_OK;
    ok &= ml_sub(&o[4], r, rc) == ML_OK;       /* blocks cut rows of 10001 */
    ok &= ml_sum(&o[5], x, 3, ax012, 1) == ML_OK; /* one row: column blocks */
    ok &= ml_sum(&o[6], x, 1, ax3, 0) == ML_OK;   /* many rows, inner 1 */
    ok &= ml_mean(&o[7], x, 2, ax12, 1) == ML_OK; /* 16 rows x 64 columns */
    ok &= ml_max(&o[8], x, 1, ax0, 0) == ML_OK;
    ok &= ml_sum(&o[9], t, 1, ax1, 0) == ML_OK;   /* 3 rows on 2 threads */
    ok &= ml_sum(&o[10], x, 0, NULL, 0) == ML_OK; /* a single sum: never split */
    ok &= ml_sum(&o[11], r, 1, ax0, 1) == ML_OK;  /* one row, 10001 columns */
    for (int i = 0; i < BR_N; i++) {
        if (!o[i]) {
            ok = 0;
            continue;
        }
        sz[i] = ml_numel(o[i]);
        res[i] = malloc(sizeof(float) * sz[i]);
        memcpy(res[i], ml_data(o[i]), sizeof(float) * sz[i]);
        ml_release(o[i]);
    }
    ml_release(x);
    ml_release(y);
    ml_release(c);
    ml_release(k);
    ml_release(h);
    ml_release(r);
    ml_release(rc);
    ml_release(t);
    return ok;
}

static void binary_reduce_case(void) {
    float *res[3][BR_N] = {{0}};
    int64_t sz[3][BR_N] = {{0}};
    for (int t = 0; t < 3; t++)
        CHECK(br_run(t + 1, res[t], sz[t]), "binary/reduce ops ran on %d threads", t + 1);
    for (int i = 0; i < BR_N; i++) {
        for (int t = 1; t < 3; t++)
            CHECK(res[0][i] && res[t][i] && sz[0][i] == sz[t][i] &&
                      memcmp(res[0][i], res[t][i], sizeof(float) * sz[0][i]) == 0,
                  "binary/reduce case %d differs between 1 and %d threads", i, t + 1);
        for (int t = 0; t < 3; t++) free(res[t][i]);
    }
}

/* A tensor released at thread exit by another pthread key's destructor that runs after
 * the library's pool was destroyed: the pool must be gone for that thread (not a freed
 * block the release would write into). */
void *ml__thread_pool(void); /* internal (csrc/core/tensor.c) */
static pthread_key_t late_key;
static int late_saw_dead_pool = -1;
static void late_release(void *t) {
    late_saw_dead_pool = ml__thread_pool() == NULL;
    ml_release(t); /* must go to free(), not into the destroyed pool */
}
static void *late_thread(void *arg) {
    (void)arg;
    int64_t sh[1] = {4};
    ml_tensor *t = NULL, *u = NULL;
    ml_tensor_full(&t, 1, sh, 1.0f); /* this thread's pool now exists */
    ml_tensor_full(&u, 1, sh, 2.0f);
    ml_release(u);                   /* a struct and a block cached in it */
    pthread_setspecific(late_key, t);
    return NULL;
}

/* The buffer pool makes room for a new size by evicting the least recently used sizes
 * (a second model in the same process reuses its blocks instead of mapping them afresh).
 * In a fresh thread (an empty pool) with a room of 1 MiB: blocks of class A, then one of
 * class C, fill it; a block of class B then evicts A's blocks, not C's (used later), and
 * is kept: the next tensor of class B or C comes from the pool (the pooled bytes drop). */
static int64_t pooled_now(void) {
    int64_t st[3];
    ml_storage_stats(st, 0);
    return st[2];
}
static ml_tensor *floats(int64_t n) {
    ml_tensor *t = NULL;
    int64_t sh[1] = {n};
    return ml_tensor_full(&t, 1, sh, 1.0f) == ML_OK ? t : NULL;
}
static int lru_ok[8], lru_pooled = -1;
static void *lru_thread(void *arg) {
    (void)arg;
    const int64_t a_n = 40000, b_n = 60000, c_n = 50000; /* 160, 256 and 224 kB classes */
    ml_tensor *a[4], *c, *b;
    for (int i = 0; i < 4; i++) a[i] = floats(a_n);
    c = floats(c_n);
    b = floats(b_n);
    if (!a[0] || !a[1] || !a[2] || !a[3] || !b || !c) return NULL;
    lru_pooled = ml__thread_pool() != NULL; /* no pool in sanitizer builds */
    const int64_t p0 = pooled_now();
    for (int i = 0; i < 4; i++) ml_release(a[i]);
    const int64_t a_bytes = (pooled_now() - p0) / 4;
    ml_release(c); /* used after A */
    const int64_t c_bytes = pooled_now() - p0 - 4 * a_bytes;
    lru_ok[0] = a_bytes > 160000 && c_bytes > 200000 && 4 * a_bytes + c_bytes <= 1 << 20;
    ml_release(b); /* does not fit: A's blocks go, oldest class first */
    const int64_t p1 = pooled_now();
    lru_ok[1] = p1 - p0 <= 1 << 20 && p1 - p0 > c_bytes;
    b = floats(b_n); /* from the pool */
    lru_ok[2] = b && pooled_now() < p1;
    const int64_t p2 = pooled_now();
    c = floats(c_n); /* C was kept */
    lru_ok[3] = c && p2 - pooled_now() == c_bytes;
    ml_release(b);
    ml_release(c);
    return NULL;
}
static void pool_lru_case(void) {
    ml__set_pool_room(1 << 20);
    pthread_t th;
    pthread_create(&th, NULL, lru_thread, NULL);
    pthread_join(th, NULL);
    ml__set_pool_room(0);
    if (lru_pooled == 0) {
        printf("test_threads: no buffer pool in this build (sanitizers): LRU case not run\n");
        return;
    }
    CHECK(lru_ok[0], "pool: four blocks of A and one of C did not fill the 1 MiB pool");
    CHECK(lru_ok[1], "pool: B's block was not kept within the room after evicting");
    CHECK(lru_ok[2], "pool: B's next tensor did not come from the pool");
    CHECK(lru_ok[3], "pool: C's block was evicted before A's (least recently used first)");
}

/* ml__parallel_for runs every task exactly once: up to 64 tasks by home blocks with
 * stealing (a bit per task), past 64 from a shared counter; with workers spinning, with
 * workers asleep (a pause before the job), and with slow tasks that leave a worker's
 * block to the caller or the caller's to a worker. */
static atomic_int task_runs[200];
static void count_task(void *ctx, int64_t i) {
    const int slow = *(const int *)ctx;
    if (slow && (i % 3 == 0)) usleep(200);
    atomic_fetch_add(&task_runs[i], 1);
}
static void parallel_for_cases(void) {
    const int64_t sizes[] = {1, 2, 3, 5, 63, 64, 65, 130, 200};
    int bad = 0, jobs = 0;
    for (int threads = 1; threads <= 4; threads++) {
        ml_set_num_threads(threads);
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
            for (int slow = 0; slow < 2; slow++)
                for (int asleep = 0; asleep < 2; asleep++) {
                    const int64_t n = sizes[si];
                    for (int64_t i = 0; i < n; i++) atomic_store(&task_runs[i], 0);
                    if (asleep) usleep(3000); /* past the workers' spin: they block */
                    ml__parallel_for(n, 0, count_task, &slow);
                    jobs++;
                    for (int64_t i = 0; i < n; i++)
                        if (atomic_load(&task_runs[i]) != 1) {
                            if (bad++ < 5)
                                printf("parallel_for: %lld tasks, %d threads, slow %d, asleep %d: "
                                       "task %lld ran %d times\n",
                                       (long long)n, threads, slow, asleep, (long long)i,
                                       atomic_load(&task_runs[i]));
                        }
                }
    }
    CHECK(bad == 0, "%d tasks did not run exactly once over %d jobs", bad, jobs);
    ml_set_num_threads(1);
}


/* ------------------------------------------------------------------ traces and threads */

#define OK(expr) CHECK((expr) == ML_OK, "%s -> %s", #expr, ml_last_error())

/* A step barrier for two threads: each phase is entered by one side only. */
static pthread_mutex_t ph_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ph_cv = PTHREAD_COND_INITIALIZER;
static int phase;
static void wait_phase(int p) {
    pthread_mutex_lock(&ph_mu);
    while (phase < p) pthread_cond_wait(&ph_cv, &ph_mu);
    pthread_mutex_unlock(&ph_mu);
}
static void set_phase(int p) {
    pthread_mutex_lock(&ph_mu);
    phase = p;
    pthread_cond_broadcast(&ph_cv);
    pthread_mutex_unlock(&ph_mu);
}

static ml_tensor *vec(float v) {
    int64_t sh[1] = {4};
    ml_tensor *t = NULL;
    ml_tensor_full(&t, 1, sh, v);
    return t;
}

/* Two threads record at the same time, interleaved op by op: each trace holds its own
 * thread's ops (and its own optimizer's step) only. */
typedef struct {
    int id;
    ml_tensor *x, *w;
    ml_optimizer *opt;
    ml_trace *tr;
    ml_status st;
} rec_job;

static void *record_interleaved(void *arg) {
    rec_job *j = arg;
    ml_tensor *y = NULL, *z = NULL;
    wait_phase(j->id == 0 ? 0 : 1);
    j->st = ml_trace_begin(&j->tr, 1, &j->x);
    set_phase(j->id == 0 ? 1 : 2); /* A began, then B began */
    wait_phase(j->id == 0 ? 2 : 3);
    /* A: y = x * 3, SGD step on w with y; B (after A): y = x + 1 */
    if (!j->st) j->st = j->id == 0 ? ml_mul_scalar(&y, j->x, 3.0f) : ml_add_scalar(&y, j->x, 1.0f);
    if (!j->st && j->id == 0) j->st = ml_optimizer_step(j->opt, 1, &j->w, &y);
    if (!j->st) j->st = ml_mul_scalar(&z, y, 2.0f);
    set_phase(j->id == 0 ? 3 : 4);
    wait_phase(j->id == 0 ? 4 : 3);
    if (!j->st) j->st = ml_trace_end(j->tr, 1, &z);
    ml_release(y);
    ml_release(z);
    return NULL;
}

static void trace_two_recorders(void) {
    phase = 0;
    rec_job jobs[2] = {{0}, {0}};
    for (int i = 0; i < 2; i++) {
        jobs[i].id = i;
        jobs[i].x = vec(1.0f);
        jobs[i].w = vec(10.0f);
    }
    OK(ml_sgd_new(&jobs[0].opt, 0.5f, 0.0f, 0));
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, record_interleaved, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) CHECK(jobs[i].st == ML_OK, "recorder %d: %s", i, ml_last_error());
    if (jobs[0].st || jobs[1].st) return;
    CHECK(ml_trace_n_ops(jobs[0].tr) == 3, "A's trace holds %d entries, expected mul, step, mul",
          ml_trace_n_ops(jobs[0].tr));
    CHECK(ml_trace_n_ops(jobs[1].tr) == 2, "B's trace holds %d entries, expected add, mul",
          ml_trace_n_ops(jobs[1].tr));
    /* replays: A gives 2 * 3x and steps w by -0.5 * 3x; B gives 2 * (x + 1) */
    ml_tensor *x2 = vec(2.0f), *out[2] = {NULL, NULL};
    OK(ml_trace_replay(jobs[0].tr, &x2, &out[0]));
    OK(ml_trace_replay(jobs[1].tr, &x2, &out[1]));
    CHECK(out[0] && ml_data(out[0])[0] == 12.0f, "A's replay gave %g, expected 12",
          out[0] ? (double)ml_data(out[0])[0] : -1.0);
    CHECK(out[1] && ml_data(out[1])[0] == 6.0f, "B's replay gave %g, expected 6",
          out[1] ? (double)ml_data(out[1])[0] : -1.0);
    /* w: 10 - 0.5*3 (recording) - 0.5*6 (replay) */
    CHECK(ml_data(jobs[0].w)[0] == 5.5f, "w after A's step and replay: %g, expected 5.5",
          (double)ml_data(jobs[0].w)[0]);
    CHECK(ml_data(jobs[1].w)[0] == 10.0f, "B's w was stepped: %g", (double)ml_data(jobs[1].w)[0]);
    ml_release(x2);
    ml_release(out[0]);
    ml_release(out[1]);
    for (int i = 0; i < 2; i++) {
        ml_trace_free(jobs[i].tr);
        ml_release(jobs[i].x);
        ml_release(jobs[i].w);
    }
    ml_optimizer_free(jobs[0].opt);
}

/* Recording belongs to its thread: another thread's end and abort are refused and change
 * nothing; its free is deferred to the recorder's end, which reports it. */
typedef struct {
    ml_tensor *x;
    ml_trace *tr;
    int mode; /* 0: end/abort from another thread; 1: freed by another thread */
    ml_status end_st, later_begin_st;
    float value;
} owner_job;

static void *own_recorder(void *arg) {
    owner_job *j = arg;
    ml_tensor *y = NULL, *z = NULL;
    j->end_st = ml_trace_begin(&j->tr, 1, &j->x);
    if (!j->end_st) j->end_st = ml_mul_scalar(&y, j->x, 2.0f);
    set_phase(1);
    wait_phase(2); /* the main thread tries to end, abort or free the trace */
    if (!j->end_st) j->end_st = ml_add_scalar(&z, y, 1.0f); /* still recorded, into live memory */
    if (!j->end_st) {
        j->value = ml_data(z)[0];
        j->end_st = ml_trace_end(j->tr, 1, &z);
    }
    ml_trace *again = NULL;
    j->later_begin_st = ml_trace_begin(&again, 1, &j->x); /* not stuck recording */
    if (!j->later_begin_st) ml_trace_free(again);
    ml_release(y);
    ml_release(z);
    return NULL;
}

static void trace_owner_cases(void) {
    for (int mode = 0; mode < 2; mode++) {
        phase = 0;
        owner_job j = {vec(1.0f), NULL, mode, ML_OK, ML_OK, 0.0f};
        pthread_t th;
        pthread_create(&th, NULL, own_recorder, &j);
        wait_phase(1);
        if (mode == 0) {
            ml_tensor *none = NULL;
            CHECK(ml_trace_end(j.tr, 1, &none) == ML_ERR_GRAPH,
                  "trace_end from another thread was not refused");
            CHECK(strstr(ml_last_error(), "another thread") != NULL, "message: %s",
                  ml_last_error());
            CHECK(ml_trace_abort(j.tr) == ML_ERR_GRAPH,
                  "trace_abort from another thread was not refused");
            CHECK(ml_is_tracing() == 0, "the main thread reads as recording");
        } else {
            ml_trace_free(j.tr); /* deferred: the recorder is still using it */
        }
        set_phase(2);
        pthread_join(th, NULL);
        CHECK(j.value == 3.0f, "the recorder's ops after the interference: %g", (double)j.value);
        if (mode == 0) {
            CHECK(j.end_st == ML_OK, "the recorder could not end its trace: %s", ml_last_error());
            ml_tensor *out = NULL, *x2 = vec(5.0f);
            OK(ml_trace_replay(j.tr, &x2, &out));
            CHECK(out && ml_data(out)[0] == 11.0f, "replay on another thread: %g",
                  out ? (double)ml_data(out)[0] : -1.0);
            ml_tensor *z = NULL;
            CHECK(ml_trace_end(j.tr, 1, &z) == ML_ERR_GRAPH, "a second trace_end was not refused");
            ml_release(out);
            ml_release(x2);
            ml_trace_free(j.tr);
        } else {
            CHECK(j.end_st == ML_ERR_GRAPH, "the end of a trace freed meanwhile returned %d",
                  j.end_st);
        }
        CHECK(j.later_begin_st == ML_OK, "the recorder stayed stuck recording (mode %d)", mode);
        ml_release(j.x);
    }
}

/* A finished trace replays on several threads at once with the one-thread results; a
 * replay is refused while this thread records. */
typedef struct {
    ml_trace *tr;
    int bad;
} replay_job2;

static void *replay_many_times(void *arg) {
    replay_job2 *j = arg;
    for (int i = 0; i < 200; i++) {
        ml_tensor *x = vec((float)i), *y = NULL;
        if (ml_trace_replay(j->tr, &x, &y) || ml_data(y)[3] != (float)i * 3.0f + 1.0f) j->bad++;
        ml_release(x);
        ml_release(y);
    }
    return NULL;
}

static void trace_concurrent_replays(void) {
    ml_tensor *x = vec(0.0f), *a = NULL, *b = NULL;
    ml_trace *tr = NULL;
    OK(ml_trace_begin(&tr, 1, &x));
    OK(ml_mul_scalar(&a, x, 3.0f));
    OK(ml_add_scalar(&b, a, 1.0f));
    CHECK(ml_is_tracing() == 1, "the recording thread reads as not recording");
    OK(ml_trace_end(tr, 1, &b));
    CHECK(ml_is_tracing() == 0, "still recording after the end");
    {
        ml_trace *outer = NULL;
        ml_tensor *got = NULL;
        OK(ml_trace_begin(&outer, 1, &x));
        CHECK(ml_trace_replay(tr, &x, &got) == ML_ERR_GRAPH,
              "a replay while recording was not refused");
        CHECK(ml_trace_replay_many(tr, 1, &x, &got, 2) == ML_ERR_GRAPH,
              "replay_many while recording was not refused");
        OK(ml_trace_abort(outer));
        CHECK(ml_is_tracing() == 0, "still recording after the abort");
        OK(ml_trace_abort(outer)); /* not recording: nothing to do */
        ml_trace_free(outer);
    }
    replay_job2 jobs[4] = {{tr, 0}, {tr, 0}, {tr, 0}, {tr, 0}};
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, replay_many_times, &jobs[i]);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        CHECK(jobs[i].bad == 0, "thread %d: %d wrong replays", i, jobs[i].bad);
    ml_release(x);
    ml_release(a);
    ml_release(b);
    ml_trace_free(tr);
}

int main(void) {
    {
        int64_t sh[1] = {1};
        ml_tensor *t = NULL;
        ml_tensor_full(&t, 1, sh, 0.0f); /* the pool's key exists before late_key */
        ml_release(t);
        pthread_key_create(&late_key, late_release);
        pthread_t th;
        pthread_create(&th, NULL, late_thread, NULL);
        pthread_join(th, NULL);
        CHECK(late_saw_dead_pool == 1,
              "a release after the thread's pool was destroyed still "
              "saw the pool (%d)",
              late_saw_dead_pool);
    }
    pool_lru_case();
    parallel_for_cases();
    trace_two_recorders();
    trace_owner_cases();
    trace_concurrent_replays();
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 300, 200, 150, 0.0f);  /* row split */
            gemm_case(ta, tb, 30, 700, 300, 1.0f);   /* column split */
            gemm_case(ta, tb, 257, 129, 513, 0.5f);  /* ragged edges, beta */
            /* the kernel is chosen from the whole product: a 64-row part of this one
             * would pick the unpacked kernel for A^T, the whole picks the packed one */
            gemm_case(ta, tb, 130, 120, 256, 0.0f);
            /* unpacked kernel, columns split 48 + 48 + 4 at three threads */
            gemm_case(ta, tb, 62, 100, 512, 1.0f);
            /* few columns, long k (A B^T as dot products), rows split */
            gemm_case(ta, tb, 300, 10, 1000, 0.5f);
            /* a long k with few rows (the unpacked kernel), columns split */
            gemm_case(ta, tb, 12, 300, 800, 0.0f);
            /* 3 threads split 97 columns 48 + 48 + 1: the 1-column part must not take the
             * matrix-vector kernel the whole product does not use */
            gemm_case(ta, tb, 64, 97, 512, 0.0f);
            /* one column, rows split (A^T x: 1032 + 1032 rows at 2 threads) */
            gemm_case(ta, tb, 2064, 1, 1024, 0.5f);
            /* 4 x 24 / 4 x 16 tiles (n % 16 == 8): columns split 224 + 200 and 144 + 144
             * + 136, each part tiled from its own start; rows split for n = 40 */
            gemm_case(ta, tb, 20, 424, 500, 0.5f);
            gemm_case(ta, tb, 250, 40, 400, 0.0f);
            /* ... and 48 + 48 + 8 at three threads: an 8-wide part still one chain a column */
            gemm_case(ta, tb, 60, 104, 512, 0.0f);
        }
    conv_case(9, 14, 8, 16);
    conv_case(20, 7, 64, 64);
    conv_case(3, 28, 1, 64);
    pool_unary_case();
    binary_reduce_case();
    ml_set_num_threads(0);
    CHECK(ml_get_num_threads() >= 1, "default thread count");
    printf("test_threads: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
