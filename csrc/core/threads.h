/* threads.h — the core's thread pool (core/threads.c), on its own so that the kernels use it
 * without seeing tensors (they include this, never internal.h).
 *
 * ml__parallel_for runs fn(ctx, i) for i in [0, n_tasks) over at most max_threads threads
 * (<= 0: ml_get_num_threads()) of a persistent pool; tasks must not depend on which thread
 * runs them. Serial when one thread is asked for, inside a worker (no nesting) or while
 * another caller holds the pool. ml__set_in_parallel(1) marks a thread that already runs
 * in parallel with others (e.g. a task-parallel replay worker) so its ops stay serial. */
#ifndef ML_THREADS_H
#define ML_THREADS_H

#include <stdint.h>

typedef void (*ml__task_fn)(void *ctx, int64_t i);
void ml__parallel_for(int64_t n_tasks, int max_threads, ml__task_fn fn, void *ctx);
int ml__in_parallel(void);
void ml__set_in_parallel(int on);

#endif /* ML_THREADS_H */
