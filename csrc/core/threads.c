/* threads.c — the core's thread count and a small persistent pthread pool for splitting
 * one large op (a GEMM, a convolution) over the cores.
 *
 * Determinism: callers split work into tasks whose results do not depend on which thread
 * runs them or on how many threads there are (disjoint output rows / images; partial sums
 * reduced afterwards in a fixed order), so a result is the same for every thread count.
 *
 * The pool starts lazily (first parallel call with n > 1), keeps its workers parked on a
 * condition variable between calls (no thread creation per op, and the workers' per-thread
 * GEMM / column buffers survive between ops), and is used by one caller at a time: a second
 * thread arriving while it is busy, or a call made from inside a worker (nesting), runs its
 * tasks serially on the calling thread. After fork() the child starts with no pool.
 *
 * Workers join a job; they are not waited for. Tasks are claimed from a shared counter,
 * and once the caller has run out of tasks it closes the job: a worker that wakes up
 * after that skips it. The caller waits only for workers that joined (they are running
 * a task, or about to find none left), never for one still being woken by the kernel:
 * on a virtual machine that took 50-150 us, and an element-wise op of 20 us waited that
 * long for a worker whose share the caller had already done (MAML Omniglot at two
 * threads: its element-wise ops summed to 3.3 ms against 2.1 ms on one thread).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define ML_MAX_THREADS 64
/* Polling before blocking, in rounds of a pause instruction (some 10-50 us in all). */
#define SPIN_ROUNDS 1000
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

static atomic_int g_threads; /* 0: not set yet */

static atomic_int g_env_warned; /* a refused METALEARN_NUM_THREADS was reported */

/* METALEARN_NUM_THREADS when it is a whole number in [1, ML_MAX_THREADS] (blanks around
 * it allowed; unset or empty: the online CPUs). Anything else is refused and `why` (when
 * not NULL) says what was refused and what is used instead: a larger number gives
 * ML_MAX_THREADS, anything else ("abc", "2x", "-3", "0") the online CPUs. */
static int env_threads(char *why, size_t cap) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int fallback = cpus < 1 ? 1 : cpus > ML_MAX_THREADS ? ML_MAX_THREADS : (int)cpus;
    if (why && cap) why[0] = 0;
    const char *env = getenv("METALEARN_NUM_THREADS");
    const char *s = env;
    while (s && (*s == ' ' || *s == '\t')) s++;
    if (!s || !*s) return fallback;
    char *end;
    long long v = strtoll(s, &end, 10); /* out of range: LLONG_MIN/MAX, refused below */
    while (end != s && (*end == ' ' || *end == '\t' || *end == '\n')) end++;
    int whole = end != s && *end == 0;
    if (whole && v >= 1 && v <= ML_MAX_THREADS) return (int)v;
    int used = whole && v > ML_MAX_THREADS ? ML_MAX_THREADS : fallback;
    const char *more = strlen(env) > 40 ? "..." : "";
    if (why && cap && used == ML_MAX_THREADS && whole && v > ML_MAX_THREADS)
        snprintf(why, cap, "METALEARN_NUM_THREADS='%.40s%s' is more than %d threads; using %d", env,
                 more, ML_MAX_THREADS, used);
    else if (why && cap)
        snprintf(why, cap,
                 "METALEARN_NUM_THREADS='%.40s%s' is not a whole number from 1 to %d; "
                 "using %d (the online CPUs)",
                 env, more, ML_MAX_THREADS, used);
    return used;
}

int ml_num_threads_env_warning(char *why, size_t cap) {
    env_threads(why, cap);
    return why[0] && !atomic_exchange(&g_env_warned, 1);
}

/* A refused value is reported once per process: as a Python warning when the binding
 * claimed it at import, else here on stderr (a C program sees it on first use). */
static int default_threads(void) {
    char why[200];
    int n = env_threads(why, sizeof why);
    if (why[0] && !atomic_exchange(&g_env_warned, 1)) fprintf(stderr, "metalearn: %s\n", why);
    return n;
}

void ml_set_num_threads(int n) {
    if (n <= 0) n = default_threads();
    if (n > ML_MAX_THREADS) n = ML_MAX_THREADS;
    atomic_store(&g_threads, n);
}

int ml_get_num_threads(void) {
    int n = atomic_load(&g_threads);
    if (n > 0) return n;
    n = default_threads();
    int expected = 0;
    atomic_compare_exchange_strong(&g_threads, &expected, n);
    return atomic_load(&g_threads);
}

/* ------------------------------------------------------------------ the pool */

static _Thread_local int tl_in_parallel; /* inside a pool worker or a running region */

int ml__in_parallel(void) { return tl_in_parallel; }
void ml__set_in_parallel(int on) { tl_in_parallel = on; }

typedef struct pool_job {
    ml__task_fn fn;
    void *ctx;
    int64_t n_tasks;
    int n_threads;          /* the caller and its helpers */
    atomic_llong next;      /* next task index to take (more than 64 tasks) */
    atomic_ullong taken;    /* one bit per task taken (up to 64 tasks) */
} pool_job;

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;   /* guards the fields below */
static pthread_cond_t pool_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER; /* one caller at a time */
static int pool_workers;        /* started workers */
static uint64_t pool_gen;       /* bumped per job */
static atomic_ullong pool_gen_a;  /* its copy, read without the lock while spinning */
static atomic_int pool_running_a; /* copy of pool_running, likewise */
static int pool_wanted;         /* workers asked to join the current job */
static int pool_running;        /* workers that joined the current job and are still in it */
static int pool_closed;         /* the caller has run out of tasks: no more joining */
static pool_job *pool_cur;
static uint64_t start_gen[ML_MAX_THREADS]; /* pool_gen when each worker was created */

/* Thread r (the caller 0, worker w as w + 1) first runs its own block of tasks, then
 * takes whatever is left. Ops split the same way from one to the next (halves of an
 * element-wise op, row blocks of a GEMM), so each core keeps working on the part of a
 * buffer that is already in its cache: when whichever thread came first took the first
 * task, half of the lines an op wrote were still modified in the other core's L2 and an
 * element-wise op after a two-thread GEMM ran 6x slower (128 against 20 us). A late
 * worker's block is taken by the caller, as before. */
static void run_tasks(pool_job *job, int r) {
    const int64_t n = job->n_tasks;
    if (n > 64) {
        for (;;) {
            int64_t i = atomic_fetch_add(&job->next, 1);
            if (i >= n) break;
            job->fn(job->ctx, i);
        }
        return;
    }
    const int64_t t = job->n_threads, lo = n * r / t, hi = n * (r + 1) / t;
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = pass ? 0 : lo; i < (pass ? n : hi); i++) {
            const unsigned long long bit = 1ULL << i;
            if (atomic_load_explicit(&job->taken, memory_order_relaxed) & bit) continue;
            if (atomic_fetch_or(&job->taken, bit) & bit) continue;
            job->fn(job->ctx, i);
        }
    }
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    tl_in_parallel = 1;
    pthread_mutex_lock(&pool_mu);
    uint64_t seen = start_gen[id];
    for (;;) {
        if (pool_gen == seen) {
            /* A parked worker is woken by the kernel (tens of microseconds); jobs often come
             * in bursts (the ops of one step), so poll a little before sleeping. */
            pthread_mutex_unlock(&pool_mu);
            for (int s = 0;
                 s < SPIN_ROUNDS && atomic_load_explicit(&pool_gen_a, memory_order_acquire) == seen;
                 s++)
                cpu_relax();
            pthread_mutex_lock(&pool_mu);
        }
        while (pool_gen == seen) pthread_cond_wait(&pool_work, &pool_mu);
        seen = pool_gen;
        if (id >= pool_wanted || pool_closed) continue; /* not needed, or too late */
        pool_job *job = pool_cur;
        atomic_store_explicit(&pool_running_a, ++pool_running, memory_order_release);
        pthread_mutex_unlock(&pool_mu);
        run_tasks(job, id + 1);
        pthread_mutex_lock(&pool_mu);
        atomic_store_explicit(&pool_running_a, pool_running - 1, memory_order_release);
        if (--pool_running == 0) pthread_cond_signal(&pool_done);
    }
    return NULL;
}

static void atfork_child(void) {
    /* The workers did not survive the fork: start over with no pool. */
    pthread_mutex_init(&pool_mu, NULL);
    pthread_mutex_init(&pool_owner, NULL);
    pthread_cond_init(&pool_work, NULL);
    pthread_cond_init(&pool_done, NULL);
    pool_workers = 0;
    pool_running = 0;
    atomic_store(&pool_running_a, 0);
    pool_wanted = 0;
    pool_closed = 0;
    pool_cur = NULL;
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_init(void) { pthread_atfork(NULL, NULL, atfork_child); }

/* Starts workers up to `want` (called with pool_mu held); returns how many exist. */
static int ensure_workers(int want) {
    while (pool_workers < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_gen[pool_workers] = pool_gen;
        int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)pool_workers);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool_workers++;
    }
    return pool_workers;
}

void ml__parallel_for(int64_t n_tasks, int max_threads, ml__task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    int t = ml_get_num_threads();
    if (max_threads > 0 && t > max_threads) t = max_threads;
    if (t > n_tasks) t = (int)n_tasks;
    if (t <= 1 || tl_in_parallel || pthread_mutex_trylock(&pool_owner) != 0) {
        for (int64_t i = 0; i < n_tasks; i++) fn(ctx, i);
        return;
    }
    pthread_once(&atfork_once, atfork_init);
    pool_job job = {fn, ctx, n_tasks, 1, 0, 0};
    pthread_mutex_lock(&pool_mu);
    int helpers = ensure_workers(t - 1);
    if (helpers > t - 1) helpers = t - 1;
    job.n_threads = helpers + 1; /* before the workers can see the job */
    pool_cur = &job;
    pool_wanted = helpers;
    pool_running = 0;
    pool_closed = 0;
    atomic_store_explicit(&pool_running_a, 0, memory_order_release);
    pool_gen++;
    atomic_store_explicit(&pool_gen_a, pool_gen, memory_order_release);
    pthread_cond_broadcast(&pool_work);
    pthread_mutex_unlock(&pool_mu);

    tl_in_parallel = 1;
    run_tasks(&job, 0);
    tl_in_parallel = 0;

    /* every task is taken: close the job, then wait for the workers that joined it */
    pthread_mutex_lock(&pool_mu);
    pool_closed = 1;
    if (pool_running > 0) {
        pthread_mutex_unlock(&pool_mu);
        for (int s = 0;
             s < SPIN_ROUNDS && atomic_load_explicit(&pool_running_a, memory_order_acquire) > 0;
             s++)
            cpu_relax();
        pthread_mutex_lock(&pool_mu);
    }
    while (pool_running > 0) pthread_cond_wait(&pool_done, &pool_mu);
    pool_cur = NULL;
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&pool_owner);
}
