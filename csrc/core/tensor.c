/* tensor.c — errors, tensor lifetime and shapes. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

/* ------------------------------------------------------------------ errors */

static _Thread_local char ml_error_buf[512];

const char *ml_last_error(void) { return ml_error_buf; }

ml_status ml_set_error(ml_status status, const char *fmt, ...) {
    /* formatted aside first: an argument may be ml_last_error() itself */
    char buf[sizeof ml_error_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(ml_error_buf, buf, sizeof buf);
    return status;
}

/* ------------------------------------------------------------------ shapes */

const char *ml__shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t used = 0;
    used += (size_t)snprintf(buf + used, size - used, "(");
    for (int i = 0; i < ndim && used < size; i++) {
        used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld",
                                 (long long)shape[i]);
    }
    if (used < size) snprintf(buf + used, size - used, ndim == 1 ? ",)" : ")");
    return buf;
}

const char *ml_shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    return ml__shape_str(buf, size, ndim, shape);
}

int ml__axis(int axis, int ndim) {
    if (axis < 0) axis += ndim;
    return (axis < 0 || axis >= ndim) ? -1 : axis;
}

ml_status ml__check_shape(int ndim, const int64_t *shape, int64_t *numel_out) {
    if (ndim < 0 || ndim > ML_MAX_DIMS)
        return ml_set_error(ML_ERR_VALUE, "a tensor has 0 to %d dimensions, got %d", ML_MAX_DIMS,
                            ndim);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return ml_set_error(ML_ERR_VALUE, "negative dimension %lld in shape %s",
                                (long long)shape[i],
                                ml__shape_str((char[160]){0}, 160, ndim, shape));
        /* Refuse products whose byte count overflows: 2^40 x 2^40 must not wrap. (An
         * overflow-checked multiply, not a division per dimension: this runs for every
         * tensor an op makes.) */
        if (__builtin_mul_overflow(numel, shape[i], &numel) || numel > INT64_MAX / 4)
            return ml_set_error(ML_ERR_OOM, "shape %s is too large to allocate",
                                ml__shape_str((char[160]){0}, 160, ndim, shape));
    }
    *numel_out = numel;
    return ML_OK;
}

int ml__same_shape(const ml_tensor *a, const ml_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* ----------------------------------------------------------------- storage */

/* ---------------------------------------------------------- buffer pool
 * A training step makes and frees the same tensor sizes again and again. Large blocks
 * from malloc are fresh mmaps whose every page faults and is zeroed on first touch, a cost
 * the conv4 step pays per tensor (the maml-omniglot row of benchmarks/run_all.py), so
 * freed storage goes to a per-thread cache of power-of-two blocks and the next tensor of
 * that class reuses it. Bounded per thread; off in sanitizer builds so ASan still sees
 * every use after free. */
#if defined(__SANITIZE_ADDRESS__)
#define ML_POOL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ML_POOL 0
#endif
#endif
#ifndef ML_POOL
#define ML_POOL 1
#endif

/* four classes per power of two (sizes 1, 1.25, 1.5, 1.75 x 2^k): a block wastes at most
 * 25 %, so a 40 MB activation takes a 40 MB block, not a 64 MB one */
#define POOL_CLASSES 192
#define POOL_MAX_BYTES ((size_t)1 << 30) /* or live_high, whichever is larger */

/* Tensor and node structs are cached per thread too (a replayed MAML sinusoid step made
 * ~180 malloc/free pairs for them, one per op): a bounded free list of each. */
#define POOL_STRUCTS 512
enum { STRUCT_TENSOR, STRUCT_NODE, STRUCT_KINDS };
typedef struct {
    void *items[POOL_STRUCTS];
    int n;
} struct_list;

/* Each class's free blocks form a list threaded through the blocks themselves (the first
 * word of a free block points to the next), bounded by bytes only: a MAML meta-batch of 32
 * conv4 tasks frees ~160 activations of one class at its meta-backward, and a cap of 16 a
 * class sent the rest back to the system, to be mapped, faulted and zeroed afresh on the
 * next step (13 % of that step in the kernel). */
typedef struct {
    void *blocks[POOL_CLASSES];
    size_t bytes;
    /* when each class was last taken from or given to (a count of this pool's uses): a
     * release that does not fit evicts the least recently used classes first */
    uint64_t tick, last_use[POOL_CLASSES];
    struct_list structs[STRUCT_KINDS];
} block_pool;

/* Bytes of tensor storage the core has allocated and not yet released (pooled blocks
 * count from their taking to their return), its high-water mark, and the bytes the
 * threads' pools hold for reuse: ml_storage_stats. Relaxed atomics: counters, no order. */
static int64_t live_bytes, peak_bytes, pooled_bytes;
/* The most storage ever live at once (never reset, unlike peak_bytes): a thread's pool may
 * hold that much. A step whose activations are gigabytes (ProtoNet conv4-64 on 30 ways of
 * 84x84 images: 867 MB per layer output) then reuses its blocks instead of mapping them
 * afresh, page faults and the kernel's zeroing included (45 % of that step); the process's
 * footprint grows by at most that much for each thread that frees tensors. */
static int64_t live_high;
/* Tests only (ml__set_pool_room): a fixed room for every pool instead of the rule above. */
static size_t room_override;

void ml__set_pool_room(size_t bytes) { __atomic_store_n(&room_override, bytes, __ATOMIC_RELAXED); }

static void count_live(int64_t delta) {
    int64_t now = __atomic_add_fetch(&live_bytes, delta, __ATOMIC_RELAXED);
    int64_t peak = __atomic_load_n(&peak_bytes, __ATOMIC_RELAXED);
    while (now > peak && !__atomic_compare_exchange_n(&peak_bytes, &peak, now, 1, __ATOMIC_RELAXED,
                                                      __ATOMIC_RELAXED)) {
    }
    int64_t high = __atomic_load_n(&live_high, __ATOMIC_RELAXED);
    while (now > high && !__atomic_compare_exchange_n(&live_high, &high, now, 1, __ATOMIC_RELAXED,
                                                      __ATOMIC_RELAXED)) {
    }
}

void ml_storage_stats(int64_t stats[3], int reset_peak) {
    stats[0] = __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
    stats[1] = reset_peak ? __atomic_exchange_n(&peak_bytes, stats[0], __ATOMIC_RELAXED)
                          : __atomic_load_n(&peak_bytes, __ATOMIC_RELAXED);
    stats[2] = __atomic_load_n(&pooled_bytes, __ATOMIC_RELAXED);
}

static _Thread_local block_pool *tls_pool;
/* Set when the thread's pool was destroyed at its exit: tensors released later on that
 * thread (by another pthread key's destructor) go straight to free(). */
static _Thread_local int tls_pool_gone;
static pthread_key_t pool_key;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_destroy(void *p) {
    block_pool *pool = p;
    for (int c = 0; c < POOL_CLASSES; c++)
        while (pool->blocks[c]) {
            void *b = pool->blocks[c];
            pool->blocks[c] = *(void **)b;
            free(b);
        }
    __atomic_sub_fetch(&pooled_bytes, (int64_t)pool->bytes, __ATOMIC_RELAXED);
    for (int kind = 0; kind < STRUCT_KINDS; kind++)
        for (int i = 0; i < pool->structs[kind].n; i++) free(pool->structs[kind].items[i]);
    free(pool);
    tls_pool = NULL; /* destructors run on the exiting thread itself */
    tls_pool_gone = 1;
}

static void pool_key_init(void) { (void)pthread_key_create(&pool_key, pool_destroy); }

static block_pool *get_pool(void) {
    if (!ML_POOL || tls_pool_gone) return NULL;
    if (!tls_pool) {
        pthread_once(&pool_once, pool_key_init);
        tls_pool = calloc(1, sizeof *tls_pool);
        if (tls_pool) (void)pthread_setspecific(pool_key, tls_pool); /* freed at thread exit */
    }
    return tls_pool;
}

void *ml__thread_pool(void) { return tls_pool_gone ? NULL : tls_pool; }

static size_t class_bytes(int c) { return ((size_t)(4 + (c & 3)) << (c >> 2)) >> 2; }

/* The smallest class holding `bytes` (64 bytes at least), in closed form: the search up
 * from 64 bytes would take ~40 steps for a 40 kB tensor, on every op. */
static int size_class(size_t bytes) {
    if (bytes <= 64) return 6 * 4;
    const int e = 63 - __builtin_clzll((unsigned long long)bytes); /* 2^e <= bytes < 2^(e+1) */
    if (e >= POOL_CLASSES / 4) return -1;
    const size_t base = (size_t)1 << e;
    const int q = (int)(((bytes - base) * 4 + base - 1) >> e); /* quarters above 2^e, up */
    const int c = e * 4 + q;
    return c < POOL_CLASSES ? c : -1;
}

/* Make room for a block of class `keep` by freeing blocks of the classes used least
 * recently. One workload's steady state never needs this (its pool holds at most what it
 * had live at once, within the room); a new workload in the same process does: a pool full
 * of the last model's sizes sent every block of the next model's back to the system, to be
 * mapped, faulted and zeroed afresh each step (MAML conv4 at 84x84 after the conv4
 * Omniglot rows of benchmarks/run_all.py: 2.3 s a step against 1.7 s in a fresh process). */
static void evict(block_pool *pool, int keep, size_t room) {
    while (pool->bytes + class_bytes(keep) > room) {
        int victim = -1;
        for (int k = 0; k < POOL_CLASSES; k++)
            if (k != keep && pool->blocks[k] &&
                (victim < 0 || pool->last_use[k] < pool->last_use[victim]))
                victim = k;
        if (victim < 0) return;
        void *b = pool->blocks[victim];
        pool->blocks[victim] = *(void **)b;
        pool->bytes -= class_bytes(victim);
        __atomic_sub_fetch(&pooled_bytes, (int64_t)class_bytes(victim), __ATOMIC_RELAXED);
        free(b);
    }
}

static ml_storage *storage_new(int64_t numel) {
    /* Header and data in one block; data 64-byte aligned for vector loads. */
    size_t header = (sizeof(ml_storage) + 63) & ~(size_t)63;
    size_t bytes = header + (size_t)(numel > 0 ? numel : 1) * sizeof(float);
    int c = size_class(bytes);
    void *block = NULL;
    block_pool *pool = c >= 0 ? get_pool() : NULL;
    if (pool) pool->last_use[c] = ++pool->tick;
    if (pool && pool->blocks[c]) {
        block = pool->blocks[c];
        pool->blocks[c] = *(void **)block;
        pool->bytes -= class_bytes(c);
        __atomic_sub_fetch(&pooled_bytes, (int64_t)class_bytes(c), __ATOMIC_RELAXED);
    } else if (posix_memalign(&block, 64, c >= 0 ? class_bytes(c) : bytes) != 0) {
        return NULL;
    }
    count_live((int64_t)(c >= 0 ? class_bytes(c) : bytes));
    ml_storage *s = block;
    s->refcount = 1;
    s->data = (float *)((char *)block + header);
    s->free_fn = NULL;
    s->free_ctx = NULL;
    s->version = 0;
    s->size_class = c;
    s->bytes = c >= 0 ? class_bytes(c) : bytes;
    return s;
}

static void storage_release(ml_storage *s) {
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (s->free_fn) {
        s->free_fn(s->free_ctx);
        free(s);
        return;
    }
    int c = s->size_class;
    count_live(-(int64_t)s->bytes);
    block_pool *pool = c >= 0 ? get_pool() : NULL;
    size_t room = POOL_MAX_BYTES;
    const int64_t high = __atomic_load_n(&live_high, __ATOMIC_RELAXED);
    if (high > 0 && (size_t)high > room) room = (size_t)high;
    const size_t fixed = __atomic_load_n(&room_override, __ATOMIC_RELAXED);
    if (fixed) room = fixed;
    if (pool) {
        pool->last_use[c] = ++pool->tick;
        if (pool->bytes + class_bytes(c) > room && class_bytes(c) <= room) evict(pool, c, room);
    }
    if (pool && pool->bytes + class_bytes(c) <= room) {
        *(void **)s = pool->blocks[c];
        pool->blocks[c] = s;
        pool->bytes += class_bytes(c);
        __atomic_add_fetch(&pooled_bytes, (int64_t)class_bytes(c), __ATOMIC_RELAXED);
        return;
    }
    free(s);
}

static uint64_t serial_counter;

uint64_t ml__next_serial(void) { return __atomic_load_n(&serial_counter, __ATOMIC_RELAXED) + 1; }

/* A struct of `kind` from this thread's free list, else from malloc; and its return. */
static void *struct_get(int kind, size_t size) {
    block_pool *pool = get_pool();
    struct_list *l = pool ? &pool->structs[kind] : NULL;
    return l && l->n ? l->items[--l->n] : malloc(size);
}

static void struct_put(int kind, void *p) {
    block_pool *pool = get_pool();
    struct_list *l = pool ? &pool->structs[kind] : NULL;
    if (l && l->n < POOL_STRUCTS)
        l->items[l->n++] = p;
    else
        free(p);
}

static ml_tensor *tensor_alloc(int ndim, const int64_t *shape, int64_t numel) {
    ml_tensor *t = struct_get(STRUCT_TENSOR, sizeof *t);
    if (!t) return NULL;
    t->serial = __atomic_add_fetch(&serial_counter, 1, __ATOMIC_RELAXED);
    t->constant = 0;
    t->edge_refs = 0;
    t->node_refs = 0;
    t->refcount = 1;
    t->ndim = ndim;
    t->requires_grad = 0;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    for (int i = ndim; i < ML_MAX_DIMS; i++) t->shape[i] = 1;
    t->numel = numel;
    t->storage = NULL;
    t->data = NULL;
    t->node = NULL;
    t->next_dead = NULL;
    return t;
}

static void tensor_free(ml_tensor *t) { struct_put(STRUCT_TENSOR, t); }

ml_node *ml__node_alloc(void) {
    ml_node *n = struct_get(STRUCT_NODE, sizeof *n);
    if (n) memset(n, 0, sizeof *n);
    return n;
}

void ml__node_free(ml_node *n) { struct_put(STRUCT_NODE, n); }

ml_status ml__new(ml_tensor **out, int ndim, const int64_t *shape) {
    int64_t numel;
    ml_status st = ml__check_shape(ndim, shape, &numel);
    if (st) return st;
    ml_tensor *t = tensor_alloc(ndim, shape, numel);
    ml_storage *s = t ? storage_new(numel) : NULL;
    if (!s) {
        if (t) tensor_free(t);
        return ml_set_error(ML_ERR_OOM, "out of memory allocating a tensor of shape %s",
                            ml__shape_str((char[160]){0}, 160, ndim, shape));
    }
    t->storage = s;
    t->data = s->data;
    *out = t;
    return ML_OK;
}

ml_status ml__view(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape) {
    int64_t numel;
    ml_status st = ml__check_shape(ndim, shape, &numel);
    if (st) return st;
    if (numel != x->numel)
        return ml_set_error(ML_ERR_SHAPE, "cannot view a tensor of shape %s as %s", ML_SHAPE_STR(x),
                            ml__shape_str((char[160]){0}, 160, ndim, shape));
    ml_tensor *t = tensor_alloc(ndim, shape, numel);
    if (!t) return ml_set_error(ML_ERR_OOM, "out of memory");
    __atomic_add_fetch(&x->storage->refcount, 1, __ATOMIC_RELAXED);
    t->storage = x->storage;
    t->data = x->data;
    *out = t;
    return ML_OK;
}

ml_status ml_tensor_zeros(ml_tensor **out, int ndim, const int64_t *shape) {
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    memset((*out)->data, 0, (size_t)(*out)->numel * sizeof(float));
    ml__constant(*out);
    return ML_OK;
}

ml_status ml_tensor_full(ml_tensor **out, int ndim, const int64_t *shape, float value) {
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    float *d = (*out)->data;
    for (int64_t i = 0; i < (*out)->numel; i++) d[i] = value;
    ml__constant(*out);
    return ML_OK;
}

ml_status ml__ones_like(ml_tensor **out, const ml_tensor *x) {
    return ml_tensor_full(out, x->ndim, x->shape, 1.0f);
}

ml_status ml_tensor_scalar(ml_tensor **out, float value) {
    return ml_tensor_full(out, 0, NULL, value);
}

ml_status ml_tensor_from_data(ml_tensor **out, int ndim, const int64_t *shape, const float *data) {
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    if ((*out)->numel) memcpy((*out)->data, data, (size_t)(*out)->numel * sizeof(float));
    ml__constant(*out);
    return ML_OK;
}

ml_status ml_tensor_wrap(ml_tensor **out, int ndim, const int64_t *shape, float *data,
                         ml_free_fn free_fn, void *ctx) {
    int64_t numel;
    ml_status st = ml__check_shape(ndim, shape, &numel);
    if (st) return st;
    if (!data && numel > 0) return ml_set_error(ML_ERR_VALUE, "ml_tensor_wrap: data is NULL");
    ml_tensor *t = tensor_alloc(ndim, shape, numel);
    ml_storage *s = t ? malloc(sizeof *s) : NULL;
    if (!s) {
        if (t) tensor_free(t);
        return ml_set_error(ML_ERR_OOM, "out of memory");
    }
    s->refcount = 1;
    s->data = data;
    s->free_fn = free_fn;
    s->free_ctx = ctx;
    s->version = 0;
    s->size_class = -1;
    s->bytes = 0; /* not the core's memory: not counted */
    t->storage = s;
    t->data = data;
    t->constant = 1;
    *out = t;
    return ML_OK;
}

void ml_retain(ml_tensor *t) {
    if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
}

static void node_free_shallow(ml_node *n) {
    if (n->inputs != n->inputs_inline) free(n->inputs);
    if (n->input_versions != n->versions_inline) free(n->input_versions);
    free(n->index);
    ml__node_free(n);
}

/* t still lives (refs references) but may hold only edges: then no backward will read
 * its values (internal.h, ML_UNREAD_*), and its storage goes back now rather than with
 * the graph. Not when the storage is shared (a view of it would keep the bytes anyway). */
static void maybe_drop_storage(ml_tensor *t, int64_t refs) {
    ml_node *n = t->node;
    if (!n) return;
    const unsigned u = n->op->unread;
    const int edges = refs == __atomic_load_n(&t->edge_refs, __ATOMIC_RELAXED) &&
                      (u & ML_UNREAD_OUT);
    int recompute = !edges && (u & ML_RECOMPUTE) && t->numel >= ML_RECOMPUTE_MIN_NUMEL &&
                    refs == __atomic_load_n(&t->node_refs, __ATOMIC_RELAXED);
    for (int i = 0; recompute && i < n->n_inputs; i++)
        recompute = n->inputs[i]->storage != NULL; /* what it is recomputed from */
    if (!edges && !recompute) return;
    ml_storage *s = __atomic_load_n(&t->storage, __ATOMIC_ACQUIRE);
    if (!s || __atomic_load_n(&s->refcount, __ATOMIC_ACQUIRE) != 1 ||
        !__atomic_compare_exchange_n(&t->storage, &s, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
    t->data = NULL;
    storage_release(s);
    if (recompute && n->edge_mask) { /* its inputs' values are read to recompute it */
        for (int i = 0; i < n->n_inputs && i < 30; i++)
            if (n->edge_mask & (1u << i))
                __atomic_sub_fetch(&n->inputs[i]->edge_refs, 1, __ATOMIC_RELAXED);
        n->edge_mask = 0;
    }
}

void ml__maybe_drop(ml_tensor *t) {
    maybe_drop_storage(t, __atomic_load_n(&t->refcount, __ATOMIC_ACQUIRE));
}

/* Releasing the last output of a long graph (10^5 chained ops) must not recurse once per
 * node: dead tensors go on an intrusive list and are freed in a loop. */
void ml_release(ml_tensor *t) {
    if (!t) return;
    const int64_t left = __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL);
    if (left != 0) {
        maybe_drop_storage(t, left);
        return;
    }
    ml_tensor *dead = t;
    t->next_dead = NULL;
    while (dead) {
        ml_tensor *cur = dead;
        dead = cur->next_dead;
        ml_node *n = cur->node;
        if (n) {
            for (int i = 0; i < n->n_inputs; i++) {
                ml_tensor *in = n->inputs[i];
                if (i < 30 && (n->edge_mask & (1u << i)))
                    __atomic_sub_fetch(&in->edge_refs, 1, __ATOMIC_RELAXED);
                __atomic_sub_fetch(&in->node_refs, 1, __ATOMIC_RELAXED);
                const int64_t in_left = __atomic_sub_fetch(&in->refcount, 1, __ATOMIC_ACQ_REL);
                if (in_left == 0) {
                    in->next_dead = dead;
                    dead = in;
                } else {
                    maybe_drop_storage(in, in_left);
                }
            }
            node_free_shallow(n);
        }
        if (cur->storage) storage_release(cur->storage);
        tensor_free(cur);
    }
}

int ml_ndim(const ml_tensor *t) { return t->ndim; }
const int64_t *ml_shape(const ml_tensor *t) { return t->shape; }
int64_t ml_numel(const ml_tensor *t) { return t->numel; }
float *ml_data(ml_tensor *t) { return t->data; }
int ml_requires_grad(const ml_tensor *t) { return t->requires_grad; }
int ml_is_leaf(const ml_tensor *t) { return t->node == NULL; }
uint64_t ml_version(const ml_tensor *t) { return t->storage->version; }

const char *ml_op_name(const ml_tensor *t) { return t->node ? t->node->op->name : ""; }

ml_status ml_set_requires_grad(ml_tensor *t, int requires_grad) {
    if (t->node)
        return ml_set_error(ML_ERR_GRAPH,
                            "requires_grad can only be changed on a leaf tensor; this one was "
                            "made by '%s' (use detach() first)",
                            t->node->op->name);
    t->requires_grad = requires_grad ? 1 : 0;
    return ML_OK;
}

ml_status ml_copy(ml_tensor **out, const ml_tensor *t) {
    ml_status st = ml_tensor_from_data(out, t->ndim, t->shape, t->data);
    if (st == ML_OK) (*out)->constant = t->constant; /* a copy of a computed value is computed */
    return st;
}
