/* memory.c — the knowledge memory of Kaiser, Nachum, Roy & Bengio 2017, "Learning to
 * Remember Rare Events" (ICLR), §3.
 *
 * m slots, each a key (L2-normalised, d floats), a value (an int64 label and an optional
 * payload of p floats) and an age. Occupied slots are always the prefix [0, count): empty
 * slots count as the oldest and are filled in index order, so a search costs in proportion
 * to what is stored.
 *
 *  - query: exact cosine search over every occupied key. Scores come from the GEMM kernel
 *    (Q · K_blockᵀ for blocks of keys that stay in cache), a per-query top-k list keeps
 *    the best k (ties: lower index first).
 *  - update: the paper's rule, one query after the other (each sees the writes of the
 *    queries before it in the batch); ages grow by one per call (one "step" as the paper's
 *    code), and every slot a call touches ends at age 0.
 *  - read and loss: composed of public differentiable ops (normalise, matmul, softmax,
 *    relu) around a non-differentiable top-k selection whose keys enter as constants, so
 *    the gradient reaches the queries and can be differentiated again, to any order.
 *  - save/load: the file format (version 2: 64-byte aligned slabs that a read-only map can
 *    search in place; version 1 still read) is memory/mmap.c's; written to a temporary
 *    file, fsynced and renamed over the target (as weights.c). ml_memory_open_mapped
 *    searches a file where it lies: the slabs point into a read-only map, writes refused.
 *
 * A pthread rwlock lets queries run concurrently while updates, clears and loads are
 * exclusive (the binding releases the GIL during long calls). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/threads.h"
#include "../core/xoshiro.h"
#include "../io/io.h"
#include "../kernels/topk.h"
#include "../ops/ops.h" /* the scoped composition its differentiable read and loss use */
#include "mmap.h"

#define ML_MEMORY_LOAD_MAX_BYTES (4.0 * 1073741824.0)

struct ml_memory {
    int64_t capacity, key_size, payload_size, count;
    int64_t n_removed; /* slots of [0, count) emptied by remove: label -1, zero key */
    float *keys;      /* capacity * key_size, rows L2-normalised (zero rows stay zero) */
    float *payloads;  /* capacity * payload_size (NULL when payload_size == 0) */
    int64_t *labels;  /* capacity */
    int64_t *ages;    /* capacity */
    /* opt-in compact copies of the keys that the scan reads instead (half or a quarter of
     * the bytes); the float32 keys stay the truth for updates, reads and files */
    int key_dtype;     /* ML_KEY_FLOAT32, ML_KEY_FLOAT16, ML_KEY_INT8 */
    uint16_t *keys16;  /* capacity * key_size binary16 */
    int8_t *keys8;     /* capacity * key_size, key ~ scale * keys8 */
    float *scales;     /* capacity: max |key| / 127 */
    uint64_t seed, rng[4];
    struct ivf_index *ivf; /* the approximate index (NULL: every search is exact) */
    /* read-only (opened with ml_memory_open_mapped): every write is refused. When file.map
     * is set, keys, labels, ages and payloads point into it (file.count rows) */
    int read_only;
    ml__memfile file;
    pthread_rwlock_t lock;
};

/* IVF-flat (Jégou et al. 2011, as FAISS IndexIVFFlat): nlist centroids from a seeded
 * spherical k-means on a sample of the keys, and per centroid the list of the slots whose
 * key is nearest to it (the highest dot product, ties to the lower list). A search scores
 * the query against the centroids, scans the nprobe nearest lists with the key scan's
 * kernel and keeps a top-k. Every key write moves its slot to the list of its new key, so
 * the lists always partition the occupied slots. A list is an unordered array (removal
 * swaps in the last entry): the top-k order (score down, slot up) is total, so the result
 * does not depend on the order a list holds its slots in. */
typedef struct ivf_index {
    int64_t nlist, nprobe, n_iter, sample;
    uint64_t seed;
    float *centroids;  /* nlist x d, normalised */
    int64_t **ids;     /* nlist arrays of slots */
    float **vecs;      /* nlist arrays of their float32 keys, in list order (as FAISS keeps its
                        * codes): a probe streams one contiguous array, no gather */
    /* build_index lays every list's keys out in one block, in list order, on huge pages
     * where the system has them (ml__alloc_huge); a list that outgrows its room there moves
     * to an array of its own */
    float *slab;
    int64_t slab_floats;
    int64_t *len, *cap;
    int64_t *slot_list; /* per slot: its list, -1 when not indexed (empty, removed) */
    int64_t *slot_pos;  /* per slot: its position in that list */
    /* the coarse prefilter's copy of the centroids (see coarse_probe): c ~ cscale * cent8,
     * and per centroid its error |c - cscale * cent8|, the norm of that copy and |c|
     * (NULL: no prefilter, every search scans the float32 centroids) */
    int8_t *cent8;
    double *cbound; /* 3 x nlist: the errors, the copies' norms, the |c| */
    float *cscale;
    int32_t *csum; /* per centroid: the sum of its int8 copy */
    int stale; /* a list could not grow (out of memory): searches are exact until rebuilt */
} ivf_index;

#define NORM_EPS 1e-12f /* |q| = sqrt(sum q^2 + eps): a zero query stays zero, finitely */
#define MASKED (-1e30f) /* logit of a top-k position the memory could not fill */
#define MAX_SIZE ((int64_t)1 << 40)
#define UPDATE_CHUNK 32 /* queries searched together by an update */
/* Batches of up to SCAN_MAX_QUERIES queries take the key scan (kernels/topk.c: each key
 * streamed once, no GEMM tiles); larger ones the GEMM over blocks of keys, which reuses
 * each key across many queries. The crossover is measured by benchmarks/memory_query.py. */
#define SCAN_MAX_QUERIES 8
#define QUERY_STACK_FLOATS 2048 /* normalised queries a query keeps on its stack */

/* ------------------------------------------------------------------ rng */

/* the memory's own stream (seeded with its seed: core/xoshiro.h); uniform in [0, n) without
 * modulo bias (rejection) */
static uint64_t rng_below(uint64_t *s, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, r;
    do r = ml__xoshiro_next(s);
    while (r >= limit);
    return r % n;
}

/* ------------------------------------------------------------ lifetime */

static ml_status alloc_slabs(ml_memory *m) {
    size_t cap = (size_t)m->capacity;
    m->keys = calloc(cap * (size_t)m->key_size, sizeof(float));
    m->labels = calloc(cap, sizeof(int64_t));
    m->ages = calloc(cap, sizeof(int64_t));
    m->payloads = m->payload_size ? calloc(cap * (size_t)m->payload_size, sizeof(float)) : NULL;
    if (!m->keys || !m->labels || !m->ages || (m->payload_size && !m->payloads))
        return ml_set_error(ML_ERR_OOM,
                            "KnowledgeMemory: out of memory for %lld slots of "
                            "key size %lld and payload size %lld",
                            (long long)m->capacity, (long long)m->key_size,
                            (long long)m->payload_size);
    return ML_OK;
}

static void free_slabs(ml_memory *m) {
    if (m->file.map) {
        ml__memfile_unmap(&m->file); /* the slabs were the map's */
    } else {
        free(m->keys);
        free(m->labels);
        free(m->ages);
        free(m->payloads);
    }
    free(m->keys16);
    free(m->keys8);
    free(m->scales);
}

/* The compact copy of slot j's key (after any write of it). int8: scale = max|x| / 127 and
 * x / scale rounded to nearest even; a zero key is zeros with scale 0. */
static void sync_compact(ml_memory *m, int64_t j) {
    const int64_t d = m->key_size;
    const float *x = m->keys + j * d;
    if (m->key_dtype == ML_KEY_FLOAT16) {
        for (int64_t i = 0; i < d; i++) m->keys16[j * d + i] = ml__f32_to_f16(x[i]);
    } else if (m->key_dtype == ML_KEY_INT8) {
        float amax = 0;
        for (int64_t i = 0; i < d; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
        for (int64_t i = 0; i < d; i++) {
            float v = rintf(x[i] * inv);
            m->keys8[j * d + i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        m->scales[j] = scale;
    }
}

/* ------------------------------------------------------- the IVF index's lists */

/* Whether a list's keys p lie in the index's block (not an array of their own). */
static int in_slab(const ivf_index *x, const float *p) {
    const uintptr_t a = (uintptr_t)p, b = (uintptr_t)x->slab;
    return x->slab && a >= b && a < b + (uintptr_t)x->slab_floats * sizeof(float);
}

static void ivf_free(ivf_index *x) {
    if (!x) return;
    if (x->ids)
        for (int64_t l = 0; l < x->nlist; l++) free(x->ids[l]);
    if (x->vecs)
        for (int64_t l = 0; l < x->nlist; l++)
            if (!in_slab(x, x->vecs[l])) free(x->vecs[l]);
    free(x->slab);
    free(x->ids);
    free(x->vecs);
    free(x->len);
    free(x->cap);
    free(x->centroids);
    free(x->cent8);
    free(x->cbound);
    free(x->cscale);
    free(x->csum);
    free(x->slot_list);
    free(x->slot_pos);
    free(x);
}

/* Centroids scored IVF_TILE at a time (a stack buffer, whatever nlist is). */
#define IVF_TILE 256

static void coarse_probe(const ivf_index *v, const float *q, int64_t d, int64_t nprobe, int64_t *pi,
                         float *ps);

/* The nearest centroid of each of n normalised rows x (n x d): the highest score by the key
 * scan's kernel (so a key and a query of the same bits get the same list), ties to the lower
 * list: the search's coarse step with one list (its prefilter included). */
static void nearest_lists(const ivf_index *v, int64_t n, const float *x, int64_t d, int64_t *out) {
    for (int64_t i = 0; i < n; i++) {
        float s;
        coarse_probe(v, x + i * d, d, 1, out + i, &s);
    }
}

static void ivf_unlink(ivf_index *v, int64_t j, int64_t d) {
    int64_t l = v->slot_list[j];
    if (l < 0) return;
    int64_t pos = v->slot_pos[j], last = v->ids[l][--v->len[l]];
    v->ids[l][pos] = last;
    memmove(v->vecs[l] + pos * d, v->vecs[l] + v->len[l] * d, (size_t)d * sizeof(float));
    v->slot_pos[last] = pos;
    v->slot_list[j] = v->slot_pos[j] = -1;
}

static void ivf_link(ivf_index *v, int64_t j, int64_t l, const float *key, int64_t d) {
    if (v->len[l] == v->cap[l]) {
        int64_t nc = v->cap[l] ? 2 * v->cap[l] : 16;
        int64_t *g = realloc(v->ids[l], (size_t)nc * sizeof(int64_t));
        if (g) v->ids[l] = g;
        float *f = NULL;
        if (g && in_slab(v, v->vecs[l])) { /* out of the block: an array of its own */
            if ((f = malloc((size_t)(nc * d) * sizeof(float))))
                memcpy(f, v->vecs[l], (size_t)(v->len[l] * d) * sizeof(float));
        } else if (g) {
            f = realloc(v->vecs[l], (size_t)(nc * d) * sizeof(float));
        }
        if (!f) { /* the slot is in no list: exact searches until build_index */
            v->stale = 1;
            return;
        }
        v->vecs[l] = f;
        v->cap[l] = nc;
    }
    v->slot_list[j] = l;
    v->slot_pos[j] = v->len[l];
    memcpy(v->vecs[l] + v->len[l] * d, key, (size_t)d * sizeof(float));
    v->ids[l][v->len[l]++] = j;
}

/* After any write of slot j's key or label: the compact copy and the index follow it (an
 * occupied slot goes to the list of its key's nearest centroid, an emptied one leaves). */
static void key_written_to(ml_memory *m, int64_t j, int64_t l) { /* l: its list, or -1 */
    sync_compact(m, j);
    ivf_index *v = m->ivf;
    if (!v) return;
    ivf_unlink(v, j, m->key_size);
    if (m->labels[j] == -1) return;
    if (l < 0) nearest_lists(v, 1, m->keys + j * m->key_size, m->key_size, &l);
    ivf_link(v, j, l, m->keys + j * m->key_size, m->key_size);
}

static void key_written(ml_memory *m, int64_t j) { key_written_to(m, j, -1); }

ml_status ml_memory_set_key_dtype(ml_memory *mem, int dtype) {
    const char *what = "KnowledgeMemory.key_dtype";
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    if (dtype != ML_KEY_FLOAT32 && dtype != ML_KEY_FLOAT16 && dtype != ML_KEY_INT8)
        return ml_set_error(ML_ERR_VALUE,
                            "%s: unknown key type %d (float32 %d, float16 %d, int8 %d)", what,
                            dtype, ML_KEY_FLOAT32, ML_KEY_FLOAT16, ML_KEY_INT8);
    const size_t n = (size_t)(mem->capacity * mem->key_size);
    uint16_t *k16 = dtype == ML_KEY_FLOAT16 ? calloc(n, sizeof(uint16_t)) : NULL;
    int8_t *k8 = dtype == ML_KEY_INT8 ? calloc(n, 1) : NULL;
    float *sc = dtype == ML_KEY_INT8 ? calloc((size_t)mem->capacity, sizeof(float)) : NULL;
    if ((dtype == ML_KEY_FLOAT16 && !k16) || (dtype == ML_KEY_INT8 && (!k8 || !sc))) {
        free(k16), free(k8), free(sc);
        return ml_set_error(ML_ERR_OOM, "%s: out of memory for %lld compact keys", what,
                            (long long)mem->capacity);
    }
    pthread_rwlock_wrlock(&mem->lock);
    free(mem->keys16), free(mem->keys8), free(mem->scales);
    mem->keys16 = k16, mem->keys8 = k8, mem->scales = sc;
    mem->key_dtype = dtype;
    for (int64_t j = 0; j < mem->count; j++) sync_compact(mem, j);
    pthread_rwlock_unlock(&mem->lock);
    return ML_OK;
}

int ml_memory_key_dtype(const ml_memory *mem) { return mem ? mem->key_dtype : ML_KEY_FLOAT32; }

ml_status ml_memory_new(ml_memory **out, int64_t capacity, int64_t key_size, int64_t payload_size,
                        uint64_t seed) {
    if (!out) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory: output pointer is NULL");
    if (capacity <= 0 || key_size <= 0 || payload_size < 0)
        return ml_set_error(ML_ERR_VALUE,
                            "KnowledgeMemory: need capacity > 0, key_size > 0 and "
                            "payload_size >= 0, got capacity=%lld, key_size=%lld, "
                            "payload_size=%lld",
                            (long long)capacity, (long long)key_size, (long long)payload_size);
    if (capacity > MAX_SIZE / key_size || (payload_size && capacity > MAX_SIZE / payload_size))
        return ml_set_error(ML_ERR_OOM,
                            "KnowledgeMemory: %lld slots of key size %lld and payload "
                            "size %lld are too large",
                            (long long)capacity, (long long)key_size, (long long)payload_size);
    ml_memory *m = calloc(1, sizeof *m);
    if (!m) return ml_set_error(ML_ERR_OOM, "KnowledgeMemory: out of memory");
    m->capacity = capacity;
    m->key_size = key_size;
    m->payload_size = payload_size;
    m->seed = seed;
    ml__xoshiro_seed(m->rng, seed);
    ml_status st = alloc_slabs(m);
    if (!st && pthread_rwlock_init(&m->lock, NULL) != 0)
        st = ml_set_error(ML_ERR_OOM, "KnowledgeMemory: cannot create its lock");
    if (st) {
        free_slabs(m);
        free(m);
        return st;
    }
    *out = m;
    return ML_OK;
}

void ml_memory_free(ml_memory *mem) {
    if (!mem) return;
    pthread_rwlock_destroy(&mem->lock);
    ivf_free(mem->ivf);
    free_slabs(mem);
    free(mem);
}

int64_t ml_memory_capacity(const ml_memory *mem) { return mem ? mem->capacity : 0; }
int64_t ml_memory_key_size(const ml_memory *mem) { return mem ? mem->key_size : 0; }
int64_t ml_memory_payload_size(const ml_memory *mem) { return mem ? mem->payload_size : 0; }

int64_t ml_memory_size(ml_memory *mem) {
    if (!mem) return 0;
    pthread_rwlock_rdlock(&mem->lock);
    int64_t c = mem->count - mem->n_removed;
    pthread_rwlock_unlock(&mem->lock);
    return c;
}

double ml_memory_occupancy(ml_memory *mem) {
    return mem ? (double)ml_memory_size(mem) / (double)mem->capacity : 0.0;
}

static void clear_locked(ml_memory *m) {
    size_t cap = (size_t)m->capacity;
    memset(m->keys, 0, cap * (size_t)m->key_size * sizeof(float));
    if (m->keys16) memset(m->keys16, 0, cap * (size_t)m->key_size * sizeof(uint16_t));
    if (m->keys8) memset(m->keys8, 0, cap * (size_t)m->key_size);
    if (m->scales) memset(m->scales, 0, cap * sizeof(float));
    memset(m->labels, 0, cap * sizeof(int64_t));
    memset(m->ages, 0, cap * sizeof(int64_t));
    if (m->payloads) memset(m->payloads, 0, cap * (size_t)m->payload_size * sizeof(float));
    m->count = 0;
    m->n_removed = 0;
    ml__xoshiro_seed(m->rng, m->seed);
    if (m->ivf) { /* the centroids stay, the lists empty */
        for (int64_t l = 0; l < m->ivf->nlist; l++) m->ivf->len[l] = 0;
        for (size_t j = 0; j < cap; j++) m->ivf->slot_list[j] = m->ivf->slot_pos[j] = -1;
    }
}

/* Writes to a read-only memory are refused (the map is PROT_READ: a write would fault). */
static ml_status refuse_read_only(const ml_memory *m, const char *what) {
    if (!m->read_only) return ML_OK;
    return ml_set_error(ML_ERR_VALUE,
                        "%s: this memory is read-only (opened with mmap_mode='r'); "
                        "KnowledgeMemory.open(path) loads a copy that can be written",
                        what);
}

int ml_memory_read_only(const ml_memory *mem) { return mem ? mem->read_only : 0; }

ml_status ml_memory_clear(ml_memory *mem) {
    if (!mem) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.clear: memory is NULL");
    ml_status st = refuse_read_only(mem, "KnowledgeMemory.clear");
    if (st) return st;
    pthread_rwlock_wrlock(&mem->lock);
    clear_locked(mem);
    pthread_rwlock_unlock(&mem->lock);
    return ML_OK;
}

ml_status ml_memory_state(ml_memory *mem, float *keys, int64_t *labels, int64_t *ages,
                          float *payloads) {
    if (!mem) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory: memory is NULL");
    pthread_rwlock_rdlock(&mem->lock);
    /* a mapped memory's slabs hold its count rows; the slots after them are empty (zeros) */
    const size_t cap = (size_t)mem->capacity, rows = mem->file.map ? (size_t)mem->count : cap,
                 d = (size_t)mem->key_size, p = (size_t)mem->payload_size;
    if (keys) {
        memcpy(keys, mem->keys, rows * d * sizeof(float));
        memset(keys + rows * d, 0, (cap - rows) * d * sizeof(float));
    }
    if (labels) {
        memcpy(labels, mem->labels, rows * sizeof(int64_t));
        memset(labels + rows, 0, (cap - rows) * sizeof(int64_t));
    }
    if (ages) {
        memcpy(ages, mem->ages, rows * sizeof(int64_t));
        memset(ages + rows, 0, (cap - rows) * sizeof(int64_t));
    }
    if (payloads && mem->payloads) {
        memcpy(payloads, mem->payloads, rows * p * sizeof(float));
        memset(payloads + rows * p, 0, (cap - rows) * p * sizeof(float));
    }
    pthread_rwlock_unlock(&mem->lock);
    return ML_OK;
}

/* ------------------------------------------------------------- search */

/* dst = src / sqrt(|src|^2 + eps), the norm summed in double */
static void normalize_row(float *dst, const float *src, int64_t d) {
    double ss = 0;
    for (int64_t i = 0; i < d; i++) ss += (double)src[i] * src[i];
    float inv = (float)(1.0 / sqrt(ss + (double)NORM_EPS));
    for (int64_t i = 0; i < d; i++) dst[i] = src[i] * inv;
}

static ml_status check_queries(const char *what, int64_t n, const float *q, int64_t d) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            if (!isfinite(q[i * d + j]))
                return ml_set_error(ML_ERR_VALUE,
                                    "%s: query %lld holds a non-finite value (%g "
                                    "at position %lld)",
                                    what, (long long)i, (double)q[i * d + j], (long long)j);
    return ML_OK;
}

/* Inserts (s, j) into the descending list (sim, idx) of length *len <= k; equal scores keep
 * the earlier (lower) index first. */
static inline void topk_push(float *sim, int64_t *idx, int64_t *len, int64_t k, float s,
                             int64_t j) {
    int64_t p = *len < k ? (*len)++ : k - 1;
    while (p > 0 && sim[p - 1] < s) {
        sim[p] = sim[p - 1];
        idx[p] = idx[p - 1];
        p--;
    }
    sim[p] = s;
    idx[p] = j;
}

/* Which slots a search may return, when not all of [0, count): removed slots never (label
 * -1), and with an allow list only slots whose label is in it (sorted ascending). Checked
 * only for a score that would enter a top-k list, so it costs nothing on most keys. */
typedef struct {
    const int64_t *labels;
    const int64_t *allow; /* NULL: every label */
    int64_t n_allow;
} slot_filter;

static inline int accepted(const slot_filter *f, int64_t j) {
    if (!f) return 1;
    const int64_t y = f->labels[j];
    if (y == -1) return 0;
    if (!f->allow) return 1;
    int64_t lo = 0, hi = f->n_allow;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (f->allow[mid] < y)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < f->n_allow && f->allow[lo] == y;
}

/* Offers the scores row[0 : nb] of slots base .. base + nb - 1 (in slot order) to one
 * query's list; the order is (score descending, slot ascending), so the list is the top-k
 * under that total order whatever blocks the slots came in, as long as each block comes in
 * slot order and blocks are offered in slot order. */
/* Whether any of the 8 scores at row beats thr: comparisons only (no value changes), as
 * one vector compare where the compiler vectorises it. Most blocks of a scan hold no score
 * that enters a full top-k list, so the list is looked at only where one does. */
static inline int any_above(const float *row, float thr) {
    int any = 0;
    for (int e = 0; e < 8; e++) any |= row[e] > thr;
    return any;
}

static inline int any_at_least(const float *row, float thr) {
    int any = 0;
    for (int e = 0; e < 8; e++) any |= row[e] >= thr;
    return any;
}

static inline void offer_row(float *ts, int64_t *ti, int64_t *len, int64_t k, const float *row,
                             int64_t nb, int64_t base, const slot_filter *f) {
    int64_t l = *len;
    float thr = l < k ? -INFINITY : ts[k - 1];
    for (int64_t j = 0; j < nb; j++) {
        if (l == k && (j & 7) == 0 && j + 8 <= nb && !any_above(row + j, thr)) {
            j += 7; /* none of row[j .. j + 7] enters */
            continue;
        }
        /* NaN never enters: keys and queries are finite */
        if ((row[j] > thr || l < k) && accepted(f, base + j)) {
            topk_push(ts, ti, &l, k, row[j], base + j);
            thr = l < k ? -INFINITY : ts[k - 1];
        }
    }
    *len = l;
}

/* Top-k over the occupied slots for n normalised queries qn (n x d): idx (n x k), sim
 * (n x k), padded with -1 / -inf when fewer than k slots are occupied. Caller holds the
 * lock. */
static int64_t search_block(int64_t n, int64_t c) {
    int64_t block = 262144 / (n > 0 ? n : 1);
    if (block < 256) block = 256;
    if (block > 8192) block = 8192;
    return block > c ? c : block;
}

/* A threaded scan gives each task SCAN_TASK_KEYS consecutive slots (a constant, so the
 * split is the shape's, not the thread count's: ARCHITECTURE's determinism contract); it
 * scores them SCAN_TILE at a time into a buffer on its stack. */
#define SCAN_TASK_KEYS 4096
#define SCAN_TILE 64
#define SCAN_STACK_HITS 1024 /* task lists of a scan that fit on the stack */

typedef struct {
    const ml_memory *m;
    int64_t n, k, c;
    const float *qn;
    const slot_filter *f;
    float *tsim;   /* n_tasks x n x k: each task's own top-k lists */
    int64_t *tidx;
} scan_ctx;

static void scan_task(void *vctx, int64_t t) {
    const scan_ctx *x = vctx;
    const int64_t n = x->n, k = x->k, d = x->m->key_size;
    const int64_t j0 = t * SCAN_TASK_KEYS;
    const int64_t j1 = j0 + SCAN_TASK_KEYS < x->c ? j0 + SCAN_TASK_KEYS : x->c;
    float *ts = x->tsim + t * n * k;
    int64_t *ti = x->tidx + t * n * k, len[SCAN_MAX_QUERIES] = {0};
    float s[SCAN_MAX_QUERIES * SCAN_TILE];
    for (int64_t i = 0; i < n * k; i++) {
        ts[i] = -INFINITY;
        ti[i] = -1;
    }
    for (int64_t b = j0; b < j1; b += SCAN_TILE) {
        int64_t nb = j1 - b < SCAN_TILE ? j1 - b : SCAN_TILE;
        const ml_memory *m = x->m;
        if (m->key_dtype == ML_KEY_FLOAT16)
            ml__key_scores_f16(n, x->qn, nb, m->keys16 + b * d, d, s);
        else if (m->key_dtype == ML_KEY_INT8)
            ml__key_scores_i8(n, x->qn, nb, m->keys8 + b * d, m->scales + b, d, s);
        else
            ml__key_scores(n, x->qn, nb, m->keys + b * d, d, s);
        for (int64_t i = 0; i < n; i++)
            offer_row(ts + i * k, ti + i * k, &len[i], k, s + i * nb, nb, b, x->f);
    }
}

/* The key scan for n <= SCAN_MAX_QUERIES queries: tasks of SCAN_TASK_KEYS slots over the
 * thread pool, each with its own top-k lists, merged in task (= slot) order. */
static int64_t scan_tasks(int64_t c) { return (c + SCAN_TASK_KEYS - 1) / SCAN_TASK_KEYS; }

/* Float32 scores for the top-k that compact keys chose, re-sorted (score down, slot up). */
static void rescore_f32(const ml_memory *m, int64_t n, const float *qn, int64_t k, int64_t *idx,
                        float *sim) {
    for (int64_t i = 0; i < n; i++) {
        float *ts = sim + i * k;
        int64_t *ti = idx + i * k, l = 0;
        for (int64_t e = 0; e < k && ti[e] >= 0; e++, l++)
            ml__key_scores(1, qn + i * m->key_size, 1, m->keys + ti[e] * m->key_size, m->key_size,
                           &ts[e]);
        for (int64_t e = 1; e < l; e++) { /* insertion sort: score down, slot up */
            float sv = ts[e];
            int64_t iv = ti[e], p = e;
            while (p > 0 && (ts[p - 1] < sv || (ts[p - 1] == sv && ti[p - 1] > iv))) {
                ts[p] = ts[p - 1];
                ti[p] = ti[p - 1];
                p--;
            }
            ts[p] = sv;
            ti[p] = iv;
        }
    }
}

/* tsim, tidx: scan_tasks(count) * n * k each (NULL: allocated here) */
static ml_status scan_search(const ml_memory *m, int64_t n, const float *qn, int64_t k,
                             int64_t *idx, float *sim, const slot_filter *f, float *tsim,
                             int64_t *tidx) {
    const int64_t c = m->count, tasks = scan_tasks(c);
    scan_ctx x = {.m = m, .n = n, .k = k, .c = c, .qn = qn, .f = f, .tsim = tsim, .tidx = tidx};
    float tsim_s[SCAN_STACK_HITS]; /* a small scan's task lists: on the stack, no malloc */
    int64_t tidx_s[SCAN_STACK_HITS];
    const int small = tasks * n * k <= SCAN_STACK_HITS;
    if (!tsim) x.tsim = small ? tsim_s : malloc((size_t)(tasks * n * k) * sizeof(float));
    if (!tidx) x.tidx = small ? tidx_s : malloc((size_t)(tasks * n * k) * sizeof(int64_t));
    if (!x.tsim || !x.tidx) {
        if (x.tsim != tsim && x.tsim != tsim_s) free(x.tsim);
        if (x.tidx != tidx && x.tidx != tidx_s) free(x.tidx);
        return ml_set_error(ML_ERR_OOM,
                            "KnowledgeMemory: out of memory for a search of %lld "
                            "queries",
                            (long long)n);
    }
    ml__parallel_for(tasks, 0, scan_task, &x);
    for (int64_t i = 0; i < n; i++) {
        int64_t l = 0;
        for (int64_t t = 0; t < tasks; t++) {
            const float *ts = x.tsim + (t * n + i) * k;
            const int64_t *ti = x.tidx + (t * n + i) * k;
            float thr = l < k ? -INFINITY : sim[i * k + k - 1];
            for (int64_t e = 0; e < k && ti[e] >= 0; e++) {
                if (!(ts[e] > thr || l < k)) break; /* the rest of a sorted list is no better */
                topk_push(sim + i * k, idx + i * k, &l, k, ts[e], ti[e]);
                thr = l < k ? -INFINITY : sim[i * k + k - 1];
            }
        }
    }
    if (m->key_dtype != ML_KEY_FLOAT32) rescore_f32(m, n, qn, k, idx, sim);
    if (x.tsim != tsim && x.tsim != tsim_s) free(x.tsim);
    if (x.tidx != tidx && x.tidx != tidx_s) free(x.tidx);
    return ML_OK;
}

/* What a search may be given so that it cannot fail (NULL members: allocated by it):
 * scratch, n * search_block(n, capacity) floats; lens, n; tsim and tidx,
 * scan_tasks(capacity) * SCAN_MAX_QUERIES^2 (a scan asks k <= n); with an index, psim and
 * probe n * nprobe, isim and iidx n * nprobe * k. */
typedef struct {
    float *scratch, *tsim, *psim, *isim;
    int64_t *lens, *tidx, *probe, *iidx;
} search_buffers;

/* Inserts (s, j) into the list (sim, idx) of length *len <= k ordered by score down, then
 * slot up (a total order: the list does not depend on the order slots are offered in). */
static inline void topk_push_ordered(float *sim, int64_t *idx, int64_t *len, int64_t k, float s,
                                     int64_t j) {
    if (*len == k && !(s > sim[k - 1] || (s == sim[k - 1] && j < idx[k - 1]))) return;
    int64_t p = *len < k ? (*len)++ : k - 1;
    while (p > 0 && (sim[p - 1] < s || (sim[p - 1] == s && idx[p - 1] > j))) {
        sim[p] = sim[p - 1];
        idx[p] = idx[p - 1];
        p--;
    }
    sim[p] = s;
    idx[p] = j;
}

/* Keys gathered from a list into a tile on the stack (IVF_GATHER floats) before the key
 * scan's kernel scores them; longer keys are scored in place, one at a time. */
#define IVF_GATHER 4096
/* A search of at most IVF_STACK_LISTS (query, list) pairs and IVF_STACK_HITS top-k entries
 * over them needs no heap; one over at most IVF_SERIAL_WORK key elements (one exact-scan
 * task's worth, SCAN_TASK_KEYS keys of 128, as the exact scan never splits less) runs on
 * the calling thread: waking the pool would cost more than it saves. */
#define IVF_STACK_LISTS 64
#define IVF_STACK_HITS 1024
#define IVF_SERIAL_WORK ((int64_t)SCAN_TASK_KEYS * 128)

typedef struct {
    const ml_memory *m;
    int64_t n, k, nprobe;
    const float *qn;
    const int64_t *probe; /* n x nprobe lists */
    const slot_filter *f;
    float *isim; /* n x ivf_groups(nprobe) x k (room for n x nprobe x k): each task's top-k */
    int64_t *iidx;
} ivf_ctx;

/* Offers every key of list l to the top-k (ts, ti, *len) of the normalised query q, under
 * the total order (score down, slot up): the list it ends with does not depend on the
 * order of the lists offered, nor on how they are split between top-k lists later merged. */
static void scan_list(const ml_memory *m, const float *q, int64_t l, int64_t k, float *ts,
                      int64_t *ti, int64_t *plen, const slot_filter *f) {
    const ivf_index *v = m->ivf;
    const int64_t d = m->key_size, *ids = v->ids[l], nl = v->len[l];
    const int64_t tile = d <= IVF_GATHER ? (IVF_GATHER / d < SCAN_TILE ? IVF_GATHER / d : SCAN_TILE)
                                         : 1;
    int64_t len = *plen;
    float sc[SCAN_TILE];
    uint16_t gh[IVF_GATHER];
    int8_t gi[IVF_GATHER];
    for (int64_t b = 0; b < nl; b += tile) {
        const int64_t nb = nl - b < tile ? nl - b : tile;
        if (d > IVF_GATHER) { /* nb == 1: the key is contiguous where it is */
            const int64_t j = ids[b];
            if (m->key_dtype == ML_KEY_FLOAT16)
                ml__key_scores_f16(1, q, 1, m->keys16 + j * d, d, sc);
            else if (m->key_dtype == ML_KEY_INT8)
                ml__key_scores_i8(1, q, 1, m->keys8 + j * d, m->scales + j, d, sc);
            else
                ml__key_scores(1, q, 1, m->keys + j * d, d, sc);
        } else if (m->key_dtype == ML_KEY_FLOAT16) {
            for (int64_t e = 0; e < nb; e++)
                memcpy(gh + e * d, m->keys16 + ids[b + e] * d, (size_t)d * sizeof(uint16_t));
            ml__key_scores_f16(1, q, nb, gh, d, sc);
        } else if (m->key_dtype == ML_KEY_INT8) {
            float gs[SCAN_TILE];
            for (int64_t e = 0; e < nb; e++) {
                memcpy(gi + e * d, m->keys8 + ids[b + e] * d, (size_t)d);
                gs[e] = m->scales[ids[b + e]];
            }
            ml__key_scores_i8(1, q, nb, gi, gs, d, sc);
        } else { /* float32: the list's own copy, contiguous */
            ml__key_scores(1, q, nb, v->vecs[l] + b * d, d, sc);
        }
        for (int64_t e = 0; e < nb; e++) {
            /* a block of 8 below the full list's last score cannot enter (an equal score can,
             * with a lower slot: lists here come in no slot order) */
            if (len == k && (e & 7) == 0 && e + 8 <= nb && !any_at_least(sc + e, ts[k - 1])) {
                e += 7;
                continue;
            }
            if (accepted(f, ids[b + e])) topk_push_ordered(ts, ti, &len, k, sc[e], ids[b + e]);
        }
    }
    *plen = len;
}

/* A task of a threaded search: IVF_GROUP consecutive lists of one query's probes (a
 * constant: the split is the shape's), one top-k over them. */
#define IVF_GROUP 8
static int64_t ivf_groups(int64_t nprobe) { return (nprobe + IVF_GROUP - 1) / IVF_GROUP; }

static void ivf_task(void *vctx, int64_t t) {
    const ivf_ctx *x = vctx;
    const int64_t k = x->k, groups = ivf_groups(x->nprobe), i = t / groups;
    const int64_t p0 = i * x->nprobe + (t % groups) * IVF_GROUP;
    const int64_t p1 = p0 + IVF_GROUP < (i + 1) * x->nprobe ? p0 + IVF_GROUP : (i + 1) * x->nprobe;
    float *ts = x->isim + t * k;
    int64_t *ti = x->iidx + t * k, len = 0;
    for (int64_t e = 0; e < k; e++) ts[e] = -INFINITY, ti[e] = -1;
    for (int64_t p = p0; p < p1; p++)
        if (x->probe[p] >= 0)
            scan_list(x->m, x->qn + i * x->m->key_size, x->probe[p], k, ts, ti, &len, x->f);
}

/* Integer copy of a row x (d floats) in [-top, top]: x ~ *scale * r, with the exact error and
 * norms of that copy in double (e[0] = |x - scale * r|, e[1] = |scale * r|, e[2] = |x|). Any
 * rounding of r would do: the bound of coarse_probe uses the error actually made. */
static void quantize_row(const float *x, int64_t d, int top, int8_t *r, float *scale, double *e) {
    float mx = 0;
    for (int64_t i = 0; i < d; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
    const float sc = mx / (float)top, inv = mx > 0 ? (float)top / mx : 0.0f;
    double err = 0, nt = 0, nx = 0;
    for (int64_t i = 0; i < d; i++) {
        float t = rintf(x[i] * inv);
        r[i] = (int8_t)(t > top ? top : t < -top ? -top : t);
        const double back = (double)sc * r[i]; /* exact: 24 x 8 bits */
        err += ((double)x[i] - back) * ((double)x[i] - back);
        nt += back * back;
        nx += (double)x[i] * x[i];
    }
    *scale = sc;
    e[0] = sqrt(err), e[1] = sqrt(nt), e[2] = sqrt(nx);
}

/* The prefilter runs where it saves: few lists probed of many, keys of at most 1024 floats,
 * and float32 centroids over 1 MiB (beyond L2: a scan of them streams from L3, while their
 * int8 copy stays in L2; smaller ones are read from L2 as fast as the int8 pass, which then
 * only adds, as measured on Omniglot's 2,037 x 64). A rule on the shape only; either way
 * the probed lists are the same. */
#define IVF_PREFILTER_MIN_BYTES ((int64_t)1 << 20)
#define IVF_PREFILTER_MIN_NLIST 256
#define IVF_PREFILTER_MAX_D 1024
#define IVF_PREFILTER_STACK 4096 /* centroid bounds kept on the stack (more: the heap) */
static int use_prefilter(const ivf_index *v, int64_t d, int64_t nprobe) {
    return v->cent8 && v->nlist >= IVF_PREFILTER_MIN_NLIST && 8 * nprobe <= v->nlist &&
           d <= IVF_PREFILTER_MAX_D &&
           v->nlist * d * (int64_t)sizeof(float) > IVF_PREFILTER_MIN_BYTES;
}

/* Builds the prefilter's copy of the centroids (none when out of memory or not of use:
 * searches then scan the float32 centroids, with the same result). */
static void build_prefilter(ivf_index *v, int64_t d) {
    if (v->nlist < IVF_PREFILTER_MIN_NLIST || d > IVF_PREFILTER_MAX_D ||
        v->nlist * d * (int64_t)sizeof(float) <= IVF_PREFILTER_MIN_BYTES)
        return;
    v->cent8 = malloc((size_t)(v->nlist * d));
    v->cbound = malloc((size_t)(v->nlist * 3) * sizeof(double));
    v->cscale = malloc((size_t)v->nlist * sizeof(float));
    v->csum = malloc((size_t)v->nlist * sizeof(int32_t));
    if (!v->cent8 || !v->cbound || !v->cscale || !v->csum) {
        free(v->cent8), free(v->cbound), free(v->cscale), free(v->csum);
        v->cent8 = NULL, v->cbound = NULL, v->cscale = NULL, v->csum = NULL;
        return;
    }
    for (int64_t l = 0; l < v->nlist; l++) {
        double e[3];
        quantize_row(v->centroids + l * d, d, 127, v->cent8 + l * d, v->cscale + l, e);
        for (int t = 0; t < 3; t++) v->cbound[t * v->nlist + l] = e[t];
        int32_t sum = 0;
        for (int64_t i = 0; i < d; i++) sum += v->cent8[l * d + i];
        v->csum[l] = sum;
    }
}

/* any_above and any_at_least over 8 doubles (comparisons only: packed compares) */
static inline int any_above_d(const double *row, double thr) {
    int any = 0;
    for (int e = 0; e < 8; e++) any |= row[e] > thr;
    return any;
}

static inline int any_at_least_d(const double *row, double thr) {
    int any = 0;
    for (int e = 0; e < 8; e++) any |= row[e] >= thr;
    return any;
}

/* Whether (sa, ia) ranks below (sb, ib) in the order (score down, list up). */
static inline int ranks_below(float sa, int64_t ia, float sb, int64_t ib) {
    return sa < sb || (sa == sb && ia > ib);
}

/* Restores the heap property below position p of the heap (hs, hi) of n entries whose root
 * ranks lowest. */
static void sift_down(float *hs, int64_t *hi, int64_t n, int64_t p) {
    for (;;) {
        int64_t w = p, a = 2 * p + 1, b = a + 1;
        if (a < n && ranks_below(hs[a], hi[a], hs[w], hi[w])) w = a;
        if (b < n && ranks_below(hs[b], hi[b], hs[w], hi[w])) w = b;
        if (w == p) return;
        const float ts = hs[p];
        const int64_t ti = hi[p];
        hs[p] = hs[w], hi[p] = hi[w], hs[w] = ts, hi[w] = ti;
        p = w;
    }
}

/* Above this many lists the coarse step keeps its top-nprobe in a heap (log nprobe moves per
 * centroid that enters) rather than a sorted list (nprobe / 2 moves): a rule on the shape, the
 * same lists either way, the order (score down, list up) being total. */
#define IVF_HEAP_NPROBE 16

/* The coarse step over every centroid (coarse_probe without the prefilter). */
static void coarse_all(const ivf_index *v, const float *q, int64_t d, int64_t nprobe, int64_t *pi,
                       float *ps) {
    float s[IVF_TILE];
    int64_t len = 0;
    if (nprobe <= IVF_HEAP_NPROBE) {
        for (int64_t c0 = 0; c0 < v->nlist; c0 += IVF_TILE) {
            const int64_t nb = v->nlist - c0 < IVF_TILE ? v->nlist - c0 : IVF_TILE;
            ml__key_scores_cached(q, nb, v->centroids + c0 * d, d, s);
            offer_row(ps, pi, &len, nprobe, s, nb, c0, NULL);
        }
        return;
    }
    /* (ps, pi) as a heap whose root ranks lowest; centroids come in list order, so one that
     * only ties the root (a higher list) never enters */
    for (int64_t c0 = 0; c0 < v->nlist; c0 += IVF_TILE) {
        const int64_t nb = v->nlist - c0 < IVF_TILE ? v->nlist - c0 : IVF_TILE;
        ml__key_scores_cached(q, nb, v->centroids + c0 * d, d, s);
        for (int64_t c = 0; c < nb; c++) {
            if (len < nprobe) { /* sift up */
                int64_t p = len++;
                while (p > 0 && ranks_below(s[c], c0 + c, ps[(p - 1) / 2], pi[(p - 1) / 2])) {
                    ps[p] = ps[(p - 1) / 2], pi[p] = pi[(p - 1) / 2];
                    p = (p - 1) / 2;
                }
                ps[p] = s[c], pi[p] = c0 + c;
                continue;
            }
            if ((c & 7) == 0 && c + 8 <= nb && !any_above(s + c, ps[0])) {
                c += 7; /* none of s[c .. c + 7] enters */
                continue;
            }
            if (s[c] > ps[0]) {
                ps[0] = s[c], pi[0] = c0 + c;
                sift_down(ps, pi, len, 0);
            }
        }
    }
    /* heap sort: the lowest-ranked root to the end, so (ps, pi) ends best first */
    for (int64_t n = len; n > 1; n--) {
        const float ts = ps[0];
        const int64_t ti = pi[0];
        ps[0] = ps[n - 1], pi[0] = pi[n - 1], ps[n - 1] = ts, pi[n - 1] = ti;
        sift_down(ps, pi, n - 1, 0);
    }
}

/* The top-nprobe centroids of the normalised query q, (pi, ps): score down, list up, by the
 * float32 scores of the key scan's kernel (ml__key_scores).
 *
 * With the prefilter, the same centroids come from fewer float32 scores. An exact integer
 * pass (a 7-bit copy of q, int8 copies of the centroids: a quarter of the bytes, in L2)
 * gives a ~ s_c for every centroid, with a proven bound |s_c - a_c| <= B_c:
 *   q.c - q~.c~ = q.(c - c~) + (q - q~).c~, so |q.c - a_c| <= |q| e_c + |q - q~| |c~|,
 * and the float32 lane sum s_c differs from q.c by at most (d + 8) u |q| |c| (a product and
 * at most d/16 + 5 additions on any term's path, u = 2^-24). Let L be the nprobe-th largest
 * lower bound a_c - B_c: at least nprobe centroids score >= L, so every centroid of the
 * top nprobe scores >= L, and has a_c + B_c >= L. Only those are scored in float32 and
 * offered in list order, which gives the top nprobe of a full scan bit for bit. */
static void coarse_probe(const ivf_index *v, const float *q, int64_t d, int64_t nprobe, int64_t *pi,
                         float *ps) {
    const int64_t nl = v->nlist;
    for (int64_t e = 0; e < nprobe; e++) pi[e] = -1, ps[e] = -INFINITY;
    if (!use_prefilter(v, d, nprobe)) {
        coarse_all(v, q, d, nprobe, pi, ps);
        return;
    }
    /* hi: each centroid's upper bound; lo: the nprobe largest lower bounds, descending */
    double hi_s[IVF_PREFILTER_STACK], lo_s[IVF_PREFILTER_STACK / 8];
    double *hi = nl <= IVF_PREFILTER_STACK ? hi_s : malloc((size_t)nl * sizeof(double));
    double *lo = nprobe <= IVF_PREFILTER_STACK / 8 ? lo_s : malloc((size_t)nprobe * sizeof(double));
    if (!hi || !lo) { /* out of memory: every centroid, the same result */
        if (hi != hi_s) free(hi);
        if (lo != lo_s) free(lo);
        coarse_all(v, q, d, nprobe, pi, ps);
        return;
    }
    /* q in 7 bits (the kernel's unsigned side: q7 + 64 in [1, 127]) */
    uint8_t qu[IVF_PREFILTER_MAX_D];
    int8_t q7[IVF_PREFILTER_MAX_D];
    float sq;
    double eq[3];
    quantize_row(q, d, 63, q7, &sq, eq);
    for (int64_t i = 0; i < d; i++) qu[i] = (uint8_t)(q7[i] + 64);
    const double fe = 1.01 * (double)(d + 8) * 0x1p-24; /* float32 rounding, relative */
    /* lo: the nprobe largest lower bounds, descending (its last one is L) */
    int64_t nlo = 0, len = 0;
    /* the bound's per-query factors: b_c = w0 e_c + w1 |c~| + w2 |c| */
    const double w0 = eq[2] * (1 + 1e-9), w1 = eq[0] * (1 + 1e-9), w2 = fe * eq[2] * (1 + 1e-9);
    int32_t dots[IVF_TILE];
    double low[IVF_TILE];
    for (int64_t c0 = 0; c0 < nl; c0 += IVF_TILE) {
        const int64_t nb = nl - c0 < IVF_TILE ? nl - c0 : IVF_TILE;
        ml__int8_dots(qu, nb, v->cent8 + c0 * d, d, dots);
        const double *e0 = v->cbound + c0, *e1 = e0 + nl, *e2 = e1 + nl;
        const float *cs = v->cscale + c0;
        for (int64_t c = 0; c < nb; c++) { /* (vectorised: no branch) */
            /* a_c, and the bound widened by 1e-9 of itself and 1e-30 for double roundings */
            const double a = (double)sq * cs[c] * (dots[c] - 64 * v->csum[c0 + c]);
            const double b = w0 * e0[c] + w1 * e1[c] + w2 * e2[c] + 1e-30;
            hi[c0 + c] = a + b;
            low[c] = a - b;
        }
        for (int64_t c = 0; c < nb; c++) {
            /* a block of 8 none of which enters the full list: skipped in one test */
            if (nlo == nprobe && (c & 7) == 0 && c + 8 <= nb &&
                !any_above_d(low + c, lo[nprobe - 1])) {
                c += 7;
                continue;
            }
            const double l = low[c];
            if (nlo == nprobe && !(l > lo[nprobe - 1])) continue;
            int64_t p = nlo < nprobe ? nlo++ : nprobe - 1;
            while (p > 0 && lo[p - 1] < l) lo[p] = lo[p - 1], p--;
            lo[p] = l;
        }
    }
    const double thr = lo[nlo - 1];
    /* the candidates, in list order, scored by blocks of 8 where a block holds one (a
     * non-candidate scored with them has s_c <= a_c + B_c < L: it cannot stay in the top
     * nprobe, at least nprobe centroids scoring >= L) */
    for (int64_t c0 = 0; c0 < nl; c0 += 8) {
        const int64_t nb = nl - c0 < 8 ? nl - c0 : 8;
        if (nb == 8 && !any_at_least_d(hi + c0, thr)) continue;
        float sc[8];
        ml__key_scores(1, q, nb, v->centroids + c0 * d, d, sc);
        offer_row(ps, pi, &len, nprobe, sc, nb, c0, NULL);
    }
    if (hi != hi_s) free(hi);
    if (lo != lo_s) free(lo);
}

/* The approximate search: per query the nprobe nearest lists (centroid scores, ties to the
 * lower list), one task per (query, list) over the thread pool, each task's top-k merged
 * in task order under the total order, so any thread count gives the same result. */
static ml_status ivf_search(const ml_memory *m, int64_t n, const float *qn, int64_t k,
                            int64_t nprobe, int64_t *idx, float *sim, const slot_filter *f,
                            const search_buffers *buf) {
    const ivf_index *v = m->ivf;
    const int64_t d = m->key_size;
    /* a small search (one query, a few lists) keeps its scratch on the stack: no malloc */
    int64_t probe_s[IVF_STACK_LISTS], iidx_s[IVF_STACK_HITS];
    float psim_s[IVF_STACK_LISTS], isim_s[IVF_STACK_HITS];
    const int small = n * nprobe <= IVF_STACK_LISTS && n * nprobe * k <= IVF_STACK_HITS;
    int64_t *probe = buf && buf->probe ? buf->probe
                     : small           ? probe_s
                                       : malloc((size_t)(n * nprobe) * sizeof(int64_t));
    float *psim = buf && buf->psim ? buf->psim
                  : small          ? psim_s
                                   : malloc((size_t)(n * nprobe) * sizeof(float));
    float *isim = buf && buf->isim ? buf->isim
                  : small          ? isim_s
                                   : malloc((size_t)(n * nprobe * k) * sizeof(float));
    int64_t *iidx = buf && buf->iidx ? buf->iidx
                    : small          ? iidx_s
                                     : malloc((size_t)(n * nprobe * k) * sizeof(int64_t));
    ml_status st = ML_OK;
    if (!probe || !psim || !isim || !iidx) {
        st = ml_set_error(ML_ERR_OOM, "KnowledgeMemory: out of memory for a search of %lld queries",
                          (long long)n);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) /* the coarse step: top-nprobe centroids */
        coarse_probe(v, qn + i * d, d, nprobe, probe + i * nprobe, psim + i * nprobe);
    ivf_ctx x = {.m = m,
                 .n = n,
                 .k = k,
                 .nprobe = nprobe,
                 .qn = qn,
                 .probe = probe,
                 .f = f,
                 .isim = isim,
                 .iidx = iidx};
    /* Few keys to scan: the calling thread scans them, as waking the pool costs more than
     * the scan (every task's list is merged in task order, so this changes no bit). */
    int64_t keys = 0;
    for (int64_t t = 0; t < n * nprobe; t++) keys += probe[t] >= 0 ? v->len[probe[t]] : 0;
    if (keys * d <= IVF_SERIAL_WORK) {
        /* one top-k per query over all its lists (the same list as merging one per list,
         * the order being total), whose full list's threshold skips most blocks early */
        for (int64_t i = 0; i < n; i++) {
            int64_t l = 0;
            for (int64_t t = i * nprobe; t < (i + 1) * nprobe; t++)
                if (probe[t] >= 0)
                    scan_list(m, qn + i * d, probe[t], k, sim + i * k, idx + i * k, &l, f);
        }
        goto rescore;
    }
    const int64_t groups = ivf_groups(nprobe);
    ml__parallel_for(n * groups, 0, ivf_task, &x);
    for (int64_t i = 0; i < n; i++) {
        int64_t l = 0;
        for (int64_t t = i * groups; t < (i + 1) * groups; t++)
            for (int64_t e = 0; e < k && iidx[t * k + e] >= 0; e++)
                topk_push_ordered(sim + i * k, idx + i * k, &l, k, isim[t * k + e],
                                  iidx[t * k + e]);
    }
rescore:
    if (m->key_dtype != ML_KEY_FLOAT32) rescore_f32(m, n, qn, k, idx, sim);
done:
    if ((!buf || probe != buf->probe) && probe != probe_s) free(probe);
    if ((!buf || psim != buf->psim) && psim != psim_s) free(psim);
    if ((!buf || isim != buf->isim) && isim != isim_s) free(isim);
    if ((!buf || iidx != buf->iidx) && iidx != iidx_s) free(iidx);
    return st;
}

/* allow, n_allow: only slots with these labels (sorted; NULL: any). Removed slots never. */
/* nprobe: 0, the index's own (an exact search without an index); > 0, that many lists
 * (the caller checked there is an index and nprobe <= nlist); -1, exact. */
static ml_status search(const ml_memory *m, int64_t n, const float *qn, int64_t k, int64_t *idx,
                        float *sim, const search_buffers *buf, const int64_t *allow,
                        int64_t n_allow, int64_t nprobe) {
    const slot_filter filter = {m->labels, allow, n_allow};
    const slot_filter *f = m->n_removed || allow ? &filter : NULL;
    float *scratch = buf ? buf->scratch : NULL;
    int64_t *lens = buf ? buf->lens : NULL;
    int64_t c = m->count, d = m->key_size;
    for (int64_t i = 0; i < n * k; i++) {
        idx[i] = -1;
        sim[i] = -INFINITY;
    }
    if (n == 0 || k == 0 || c == 0) return ML_OK;
    if (nprobe >= 0 && m->ivf && !m->ivf->stale) {
        /* removed slots are in no list: only a label filter needs checking */
        const slot_filter *lf = allow ? &filter : NULL;
        return ivf_search(m, n, qn, k, nprobe ? nprobe : m->ivf->nprobe, idx, sim, lf, buf);
    }
    if (n <= SCAN_MAX_QUERIES)
        return scan_search(m, n, qn, k, idx, sim, f, buf ? buf->tsim : NULL,
                           buf ? buf->tidx : NULL);
    int64_t block = search_block(n, c);
    float *s = scratch ? scratch : malloc((size_t)n * (size_t)block * sizeof(float));
    int64_t *len = lens ? lens : malloc((size_t)n * sizeof(int64_t));
    if (!s || !len) {
        if (s != scratch) free(s);
        if (len != lens) free(len);
        return ml_set_error(ML_ERR_OOM,
                            "KnowledgeMemory: out of memory for a search of %lld "
                            "queries",
                            (long long)n);
    }
    memset(len, 0, (size_t)n * sizeof(int64_t));
    for (int64_t b0 = 0; b0 < c; b0 += block) {
        int64_t nb = c - b0 < block ? c - b0 : block;
        /* s (n x nb) = qn (n x d) @ keys[b0 : b0 + nb]ᵀ */
        ml_sgemm(0, 1, n, nb, d, 1.0f, qn, d, m->keys + b0 * d, d, 0.0f, s, nb);
        for (int64_t i = 0; i < n; i++)
            offer_row(sim + i * k, idx + i * k, &len[i], k, s + i * nb, nb, b0, f);
    }
    if (s != scratch) free(s);
    if (len != lens) free(len);
    return ML_OK;
}

/* Normalised copies of the n queries (caller frees). */
static ml_status normalized_copy(float **out, const char *what, int64_t n, const float *q,
                                 int64_t d) {
    float *qn = malloc((size_t)(n ? n : 1) * (size_t)d * sizeof(float));
    if (!qn)
        return ml_set_error(ML_ERR_OOM, "%s: out of memory for %lld queries", what, (long long)n);
    for (int64_t i = 0; i < n; i++) normalize_row(qn + i * d, q + i * d, d);
    *out = qn;
    return ML_OK;
}

static ml_status check_k(const char *what, const ml_memory *m, int64_t k) {
    if (k <= 0 || k > m->capacity)
        return ml_set_error(ML_ERR_VALUE, "%s: k must be in [1, capacity=%lld], got %lld", what,
                            (long long)m->capacity, (long long)k);
    return ML_OK;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

ml_status ml_memory_query(ml_memory *mem, int64_t n, const float *q, int64_t k, int64_t *out_idx,
                          float *out_sim, int64_t *out_labels, float *out_payloads) {
    return ml_memory_query_where(mem, n, q, k, -1, NULL, 0, out_idx, out_sim, out_labels,
                                 out_payloads);
}

ml_status ml_memory_query_where(ml_memory *mem, int64_t n, const float *q, int64_t k,
                                int64_t n_labels, const int64_t *labels, int64_t nprobe,
                                int64_t *out_idx, float *out_sim, int64_t *out_labels,
                                float *out_payloads) {
    const char *what = "KnowledgeMemory.query";
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    if (n_labels > 0 && !labels)
        return ml_set_error(ML_ERR_VALUE, "%s: %lld labels to filter by but no array", what,
                            (long long)n_labels);
    if (n < 0 || (n > 0 && !q))
        return ml_set_error(ML_ERR_VALUE, "%s: bad query batch (n=%lld)", what, (long long)n);
    if (nprobe < -1)
        return ml_set_error(ML_ERR_VALUE,
                            "%s: nprobe must be >= 1 (or 0: the index's own, -1: exact), got %lld",
                            what, (long long)nprobe);
    ml_status st = check_k(what, mem, k);
    if (st) return st;
    int64_t d = mem->key_size, p = mem->payload_size;
    if ((st = check_queries(what, n, q, d))) return st;
    if (n == 0) return ML_OK;
    float *qn = NULL, *sim = NULL;
    int64_t *idx = NULL;
    int64_t *allow = NULL, n_allow = 0;
    if (n_labels >= 0) { /* the allow list, sorted and without repeats */
        allow = malloc((size_t)(n_labels ? n_labels : 1) * sizeof(int64_t));
        if (!allow) return ml_set_error(ML_ERR_OOM, "%s: out of memory", what);
        if (n_labels) memcpy(allow, labels, (size_t)n_labels * sizeof(int64_t));
        qsort(allow, (size_t)n_labels, sizeof(int64_t), cmp_i64);
        for (int64_t i = 0; i < n_labels; i++)
            if (!n_allow || allow[n_allow - 1] != allow[i]) allow[n_allow++] = allow[i];
    }
    float qn_s[QUERY_STACK_FLOATS]; /* a few queries normalised on the stack: no malloc */
    if (n * d <= QUERY_STACK_FLOATS) {
        qn = qn_s;
        for (int64_t i = 0; i < n; i++) normalize_row(qn + i * d, q + i * d, d);
    } else if ((st = normalized_copy(&qn, what, n, q, d))) {
        free(allow);
        return st;
    }
    idx = out_idx ? out_idx : malloc((size_t)(n * k) * sizeof(int64_t));
    sim = out_sim ? out_sim : malloc((size_t)(n * k) * sizeof(float));
    if (!idx || !sim) {
        st = ml_set_error(ML_ERR_OOM, "%s: out of memory", what);
        goto done;
    }
    pthread_rwlock_rdlock(&mem->lock);
    if (nprobe > 0 && (!mem->ivf || nprobe > mem->ivf->nlist)) {
        st = mem->ivf
                 ? ml_set_error(ML_ERR_VALUE, "%s: nprobe must be in [1, nlist=%lld], got %lld",
                                what, (long long)mem->ivf->nlist, (long long)nprobe)
                 : ml_set_error(ML_ERR_VALUE,
                                "%s: nprobe=%lld asks for the approximate index, but the "
                                "memory has none (build_index first)",
                                what, (long long)nprobe);
    } else if (allow && n_allow == 0) { /* an empty allow list: nothing may be returned */
        for (int64_t i = 0; i < n * k; i++) idx[i] = -1, sim[i] = -INFINITY;
        st = ML_OK;
    } else {
        st = search(mem, n, qn, k, idx, sim, NULL, allow, n_allow, nprobe);
    }
    if (!st)
        for (int64_t i = 0; i < n * k; i++) {
            int64_t j = idx[i];
            if (out_labels) out_labels[i] = j >= 0 ? mem->labels[j] : -1;
            if (out_payloads && p) {
                if (j >= 0)
                    memcpy(out_payloads + i * p, mem->payloads + j * p, (size_t)p * sizeof(float));
                else
                    memset(out_payloads + i * p, 0, (size_t)p * sizeof(float));
            }
        }
    pthread_rwlock_unlock(&mem->lock);
done:
    if (idx != out_idx) free(idx);
    if (sim != out_sim) free(sim);
    if (qn != qn_s) free(qn);
    free(allow);
    return st;
}

/* ------------------------------------------------------------- update */

/* The slot a new pair goes to: the next empty one, else the oldest, ties at random. */
static int64_t oldest_slot(ml_memory *m) {
    if (m->n_removed) /* a removed slot is empty: the lowest first */
        for (int64_t i = 0; i < m->count; i++)
            if (m->labels[i] == -1) {
                m->n_removed--;
                return i;
            }
    if (m->count < m->capacity) return m->count++;
    int64_t best = -1, ties = 0;
    for (int64_t i = 0; i < m->capacity; i++) {
        if (m->ages[i] > best) {
            best = m->ages[i];
            ties = 1;
        } else if (m->ages[i] == best) {
            ties++;
        }
    }
    int64_t r = ties > 1 ? (int64_t)rng_below(m->rng, (uint64_t)ties) : 0;
    for (int64_t i = 0; i < m->capacity; i++)
        if (m->ages[i] == best && r-- == 0) return i;
    return m->capacity - 1; /* not reached */
}

static float dot(const float *a, const float *b, int64_t d) {
    float s = 0;
    for (int64_t i = 0; i < d; i++) s += a[i] * b[i];
    return s;
}

/* The arguments of an update, checked before anything changes. */
static ml_status check_update(const ml_memory *mem, int64_t n, const float *q,
                              const int64_t *labels, const float *payloads, const char *what) {
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    ml_status ro = refuse_read_only(mem, what);
    if (ro) return ro;
    if (n < 0 || (n > 0 && (!q || !labels)))
        return ml_set_error(ML_ERR_VALUE, "%s: bad batch (n=%lld)", what, (long long)n);
    int64_t p = mem->payload_size;
    ml_status st = check_queries(what, n, q, mem->key_size);
    if (st) return st;
    /* -1 is what query returns for an empty slot: a stored -1 would read as "nothing here" */
    for (int64_t i = 0; i < n; i++)
        if (labels[i] == -1)
            return ml_set_error(ML_ERR_VALUE,
                                "%s: label -1 (at position %lld) is the marker of "
                                "an empty slot and cannot be stored; use another integer",
                                what, (long long)i);
    if (payloads && p)
        for (int64_t i = 0; i < n * p; i++)
            if (!isfinite(payloads[i]))
                return ml_set_error(ML_ERR_VALUE, "%s: payload %lld holds a non-finite value", what,
                                    (long long)(i / p));
    return ML_OK;
}

/* The batch runs in chunks of UPDATE_CHUNK queries. Query j of a chunk needs the best slot
 * not modified by the chunk's earlier queries (at most j of them), so the top-min(chunk,
 * size) of the chunk against the memory as the chunk began is enough; the slots the chunk
 * modified are scored again with their current keys. What one update works in: */
typedef struct {
    int64_t chunk;
    int64_t *cidx; /* chunk x kk: each query's candidates, best first */
    float *csim; /* and their similarities */
    int64_t *touched; /* the slots the chunk modified, nt of them */
    uint8_t *dirty; /* per slot: modified by the chunk */
    search_buffers buf;
} update_work;

static void update_work_free(update_work *w) {
    free(w->cidx);
    free(w->csim);
    free(w->touched);
    free(w->dirty);
    free(w->buf.scratch);
    free(w->buf.lens);
    free(w->buf.tsim);
    free(w->buf.tidx);
    free(w->buf.probe);
    free(w->buf.psim);
    free(w->buf.isim);
    free(w->buf.iidx);
}

/* 0 when out of memory (update_work_free still frees what was made). */
static int update_work_alloc(update_work *w, const ml_memory *mem, int64_t n) {
    const int64_t chunk = n < UPDATE_CHUNK ? n : UPDATE_CHUNK;
    *w = (update_work){.chunk = chunk};
    w->cidx = malloc((size_t)(chunk * chunk) * sizeof(int64_t));
    w->csim = malloc((size_t)(chunk * chunk) * sizeof(float));
    w->touched = malloc((size_t)chunk * sizeof(int64_t));
    w->dirty = calloc((size_t)mem->capacity, 1);
    const size_t scan = (size_t)(scan_tasks(mem->capacity) * SCAN_MAX_QUERIES * SCAN_MAX_QUERIES);
    w->buf.scratch = malloc((size_t)(chunk * search_block(chunk, mem->capacity)) * sizeof(float));
    w->buf.lens = malloc((size_t)chunk * sizeof(int64_t));
    w->buf.tsim = malloc(scan * sizeof(float));
    w->buf.tidx = malloc(scan * sizeof(int64_t));
    if (mem->ivf) { /* the approximate search's buffers (caller holds the write lock) */
        const size_t np = (size_t)(chunk * mem->ivf->nprobe);
        w->buf.probe = malloc(np * sizeof(int64_t));
        w->buf.psim = malloc(np * sizeof(float));
        w->buf.isim = malloc(np * (size_t)chunk * sizeof(float));
        w->buf.iidx = malloc(np * (size_t)chunk * sizeof(int64_t));
        if (!w->buf.probe || !w->buf.psim || !w->buf.isim || !w->buf.iidx) return 0;
    }
    return w->cidx && w->csim && w->touched && w->dirty && w->buf.scratch && w->buf.lens &&
           w->buf.tsim && w->buf.tidx;
}

/* The slot query j of the chunk (normalised x) is nearest to: its best candidate (kk of
 * them) that the chunk has not modified, or a modified slot scored with its current key
 * when that is better (ties: the lower index); -1 when there is none. */
static int64_t nearest_slot(const ml_memory *mem, const update_work *w, int64_t j, int64_t kk,
                            int64_t nt, const float *x) {
    int64_t best = -1;
    float bs = -INFINITY;
    for (int64_t t = 0; t < kk; t++) {
        int64_t s = w->cidx[j * kk + t];
        if (s >= 0 && !w->dirty[s]) {
            best = s;
            bs = w->csim[j * kk + t];
            break;
        }
    }
    for (int64_t t = 0; t < nt; t++) {
        int64_t s = w->touched[t];
        float v = dot(x, mem->keys + s * mem->key_size, mem->key_size);
        if (v > bs || (v == bs && s < best)) {
            bs = v;
            best = s;
        }
    }
    return best;
}

/* The paper's rule for one query (normalised x, label y, payload pl or NULL) whose nearest
 * slot is best: returns the slot it wrote. */
static int64_t write_query(ml_memory *mem, int64_t best, const float *x, int64_t y,
                           const float *pl) {
    const int64_t d = mem->key_size, p = mem->payload_size;
    int64_t slot;
    if (best >= 0 && mem->labels[best] == y) {
        /* the memory already answers y: K[n1] <- normalize(q + K[n1]) */
        slot = best;
        float *key = mem->keys + slot * d;
        for (int64_t i = 0; i < d; i++) key[i] += x[i];
        normalize_row(key, key, d);
        key_written(mem, slot);
        if (pl) {
            float *v = mem->payloads + slot * p;
            for (int64_t i = 0; i < p; i++) v[i] = 0.5f * (v[i] + pl[i]);
        }
    } else {
        /* a new place: the oldest slot (empty ones first) */
        slot = oldest_slot(mem);
        memcpy(mem->keys + slot * d, x, (size_t)d * sizeof(float));
        mem->labels[slot] = y;
        key_written(mem, slot);
        if (p) {
            float *v = mem->payloads + slot * p;
            if (pl)
                memcpy(v, pl, (size_t)p * sizeof(float));
            else
                memset(v, 0, (size_t)p * sizeof(float));
        }
    }
    return slot;
}

ml_status ml_memory_update(ml_memory *mem, int64_t n, const float *q, const int64_t *labels,
                           const float *payloads) {
    return ml_memory_update_slots(mem, n, q, labels, payloads, NULL);
}

ml_status ml_memory_update_slots(ml_memory *mem, int64_t n, const float *q, const int64_t *labels,
                                 const float *payloads, int64_t *out_slots) {
    const char *what = "KnowledgeMemory.update";
    ml_status st = check_update(mem, n, q, labels, payloads, what);
    if (st || n == 0) return st;
    const int64_t d = mem->key_size, p = mem->payload_size;
    float *qn = NULL;
    if ((st = normalized_copy(&qn, what, n, q, d))) return st;
    update_work w;
    pthread_rwlock_wrlock(&mem->lock); /* first: the buffers depend on the index */
    if (!update_work_alloc(&w, mem, n)) {
        pthread_rwlock_unlock(&mem->lock);
        update_work_free(&w);
        free(qn);
        return ml_set_error(ML_ERR_OOM, "%s: out of memory", what);
    }
    /* one step: every occupied age grows by one, touched slots end at 0 */
    for (int64_t i = 0; i < mem->count; i++) mem->ages[i]++;
    for (int64_t j0 = 0; j0 < n; j0 += w.chunk) {
        int64_t nc = n - j0 < w.chunk ? n - j0 : w.chunk, c0 = mem->count;
        int64_t kk = nc < c0 ? nc : c0, nt = 0;
        if (kk) /* cannot fail */
            search(mem, nc, qn + j0 * d, kk, w.cidx, w.csim, &w.buf, NULL, 0, 0);
        for (int64_t j = 0; j < nc; j++) {
            const float *x = qn + (j0 + j) * d;
            const float *pl = payloads && p ? payloads + (j0 + j) * p : NULL;
            int64_t slot = write_query(mem, nearest_slot(mem, &w, j, kk, nt, x), x, labels[j0 + j],
                                       pl);
            mem->ages[slot] = 0;
            if (out_slots) out_slots[j0 + j] = slot;
            if (!w.dirty[slot]) {
                w.dirty[slot] = 1;
                w.touched[nt++] = slot;
            }
        }
        for (int64_t t = 0; t < nt; t++) w.dirty[w.touched[t]] = 0;
    }
    pthread_rwlock_unlock(&mem->lock);
    update_work_free(&w);
    free(qn);
    return st;
}

static int assign_lists(const ivf_index *v, const float *x, int64_t n, int64_t d, int64_t *out);

ml_status ml_memory_add(ml_memory *mem, int64_t n, const float *q, const int64_t *labels,
                        const float *payloads, int64_t *out_slots) {
    const char *what = "KnowledgeMemory.add";
    ml_status st = check_update(mem, n, q, labels, payloads, what);
    if (st || n == 0) return st;
    const int64_t d = mem->key_size, p = mem->payload_size;
    float *qn = NULL;
    if ((st = normalized_copy(&qn, what, n, q, d))) return st;
    pthread_rwlock_wrlock(&mem->lock);
    /* with an index, the lists of all the keys first (assign_lists: a GEMM, near ties by the
     * key scan, the same lists as one at a time); without memory for them, one at a time */
    int64_t *lists = mem->ivf ? malloc((size_t)n * sizeof(int64_t)) : NULL;
    if (lists && !assign_lists(mem->ivf, qn, n, d, lists)) free(lists), lists = NULL;
    for (int64_t i = 0; i < mem->count; i++) mem->ages[i]++;
    for (int64_t j = 0; j < n; j++) {
        int64_t slot = oldest_slot(mem);
        memcpy(mem->keys + slot * d, qn + j * d, (size_t)d * sizeof(float));
        mem->labels[slot] = labels[j];
        key_written_to(mem, slot, lists ? lists[j] : -1);
        mem->ages[slot] = 0;
        if (p) {
            float *v = mem->payloads + slot * p;
            if (payloads)
                memcpy(v, payloads + j * p, (size_t)p * sizeof(float));
            else
                memset(v, 0, (size_t)p * sizeof(float));
        }
        if (out_slots) out_slots[j] = slot;
    }
    pthread_rwlock_unlock(&mem->lock);
    free(lists);
    free(qn);
    return ML_OK;
}

ml_status ml_memory_remove(ml_memory *mem, int64_t n, const int64_t *ids) {
    const char *what = "KnowledgeMemory.remove";
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    ml_status ro = refuse_read_only(mem, what);
    if (ro) return ro;
    if (n < 0 || (n > 0 && !ids))
        return ml_set_error(ML_ERR_VALUE, "%s: bad batch (n=%lld)", what, (long long)n);
    if (n == 0) return ML_OK;
    int64_t *sorted = malloc((size_t)n * sizeof(int64_t));
    if (!sorted) return ml_set_error(ML_ERR_OOM, "%s: out of memory", what);
    memcpy(sorted, ids, (size_t)n * sizeof(int64_t));
    qsort(sorted, (size_t)n, sizeof(int64_t), cmp_i64);
    const int64_t d = mem->key_size, p = mem->payload_size;
    ml_status st = ML_OK;
    pthread_rwlock_wrlock(&mem->lock);
    /* every id checked before any slot changes */
    for (int64_t i = 0; i < n && !st; i++) {
        int64_t j = sorted[i];
        if (j < 0 || j >= mem->count || mem->labels[j] == -1)
            st = ml_set_error(ML_ERR_VALUE,
                              "%s: id %lld is not an occupied slot (%lld occupied among "
                              "the slots [0, %lld))",
                              what, (long long)j, (long long)(mem->count - mem->n_removed),
                              (long long)mem->count);
        else if (i > 0 && sorted[i - 1] == j)
            st = ml_set_error(ML_ERR_VALUE, "%s: id %lld is given twice", what, (long long)j);
    }
    if (!st)
        for (int64_t i = 0; i < n; i++) {
            int64_t j = sorted[i];
            memset(mem->keys + j * d, 0, (size_t)d * sizeof(float));
            mem->labels[j] = -1;
            key_written(mem, j);
            if (p) memset(mem->payloads + j * p, 0, (size_t)p * sizeof(float));
            mem->ages[j] = 0;
            mem->n_removed++;
        }
    pthread_rwlock_unlock(&mem->lock);
    free(sorted);
    return st;
}

/* ------------------------------------------------------ the IVF index's build */

/* Rows scored by one GEMM of the build (a constant: the GEMM's path is the shape's). */
#define IVF_GEMM_ROWS 256

/* The nearest centroid of np rows x by GEMM scores (s: IVF_GEMM_ROWS * nlist floats), ties
 * to the lower list. With `exact`, a row whose best two scores are closer than the two
 * roundings can differ is decided by nearest_lists (the key scan's bits), so the result is
 * what nearest_lists gives every row: unit rows of d terms round each dot product by at
 * most d * 2^-24 (plus second order) in any summation order, so a GEMM gap above 4 d 2^-24
 * leaves the order of the two unchanged. */
static void assign_gemm(const ivf_index *v, const float *x, int64_t np, int64_t d, int64_t *out,
                        float *s, int exact) {
    const int64_t nl = v->nlist;
    const float margin = 4.4f * (float)d * 0x1p-24f;
    for (int64_t r0 = 0; r0 < np; r0 += IVF_GEMM_ROWS) {
        const int64_t nr = np - r0 < IVF_GEMM_ROWS ? np - r0 : IVF_GEMM_ROWS;
        ml_sgemm(0, 1, nr, nl, d, 1.0f, x + r0 * d, d, v->centroids, d, 0.0f, s, nl);
        for (int64_t i = 0; i < nr; i++) {
            const float *row = s + i * nl;
            float b1 = -INFINITY, b2 = -INFINITY;
            int64_t best = 0;
            for (int64_t c = 0; c < nl; c++) {
                if (row[c] > b1) {
                    b2 = b1, b1 = row[c], best = c;
                } else if (row[c] > b2) {
                    b2 = row[c];
                }
            }
            if (exact && !(b1 - b2 > margin)) nearest_lists(v, 1, x + (r0 + i) * d, d, &best);
            out[r0 + i] = best;
        }
    }
}

/* The lists of n normalised rows x as nearest_lists gives them, by assign_gemm with its
 * near-tie recheck (a GEMM reuses each centroid across 256 rows; measured by
 * benchmarks/memory_scale.py). 0 when out of memory (nothing written). */
static int assign_lists(const ivf_index *v, const float *x, int64_t n, int64_t d, int64_t *out) {
    const int64_t rows = n < IVF_GEMM_ROWS ? n : IVF_GEMM_ROWS;
    float *s = malloc((size_t)(rows * v->nlist) * sizeof(float));
    if (!s) return 0;
    assign_gemm(v, x, n, d, out, s, 1);
    free(s);
    return 1;
}

ml_status ml_memory_build_index(ml_memory *mem, int64_t nlist, int64_t nprobe, uint64_t seed,
                                int64_t n_iter, int64_t sample) {
    const char *what = "KnowledgeMemory.build_index";
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    if (nprobe < 1 || nprobe > nlist)
        return ml_set_error(ML_ERR_VALUE, "%s: nprobe must be in [1, nlist=%lld], got %lld", what,
                            (long long)nlist, (long long)nprobe);
    if (n_iter < 1 || n_iter > 1000)
        return ml_set_error(ML_ERR_VALUE, "%s: n_iter must be in [1, 1000], got %lld", what,
                            (long long)n_iter);
    pthread_rwlock_wrlock(&mem->lock);
    const int64_t d = mem->key_size, live = mem->count - mem->n_removed, cap = mem->capacity;
    ml_status st = ML_OK;
    if (nlist < 1 || nlist > live) {
        pthread_rwlock_unlock(&mem->lock);
        return ml_set_error(ML_ERR_VALUE,
                            "%s: nlist must be in [1, size=%lld] (each centroid starts at a "
                            "stored key), got %lld",
                            what, (long long)live, (long long)nlist);
    }
    if (sample != 0 && (sample < nlist || sample > live)) {
        pthread_rwlock_unlock(&mem->lock);
        return ml_set_error(ML_ERR_VALUE,
                            "%s: sample must be in [nlist=%lld, size=%lld] (0: %d per list), got "
                            "%lld",
                            what, (long long)nlist, (long long)live, 64, (long long)sample);
    }
    const int64_t ns = sample ? sample : (64 * nlist < live ? 64 * nlist : live);
    ivf_index *v = calloc(1, sizeof *v);
    int64_t *pool = malloc((size_t)live * sizeof(int64_t)), *asg = NULL;
    float *xs = NULL;
    double *sums = NULL;
    float *gs = malloc((size_t)(IVF_GEMM_ROWS * nlist) * sizeof(float));
    if (!v || !pool || !gs) goto oom;
    *v = (ivf_index){
        .nlist = nlist, .nprobe = nprobe, .n_iter = n_iter, .sample = sample, .seed = seed};
    v->centroids = malloc((size_t)(nlist * d) * sizeof(float));
    v->ids = calloc((size_t)nlist, sizeof(int64_t *));
    v->vecs = calloc((size_t)nlist, sizeof(float *));
    v->len = calloc((size_t)nlist, sizeof(int64_t));
    v->cap = calloc((size_t)nlist, sizeof(int64_t));
    v->slot_list = malloc((size_t)cap * sizeof(int64_t));
    v->slot_pos = malloc((size_t)cap * sizeof(int64_t));
    xs = malloc((size_t)(ns * d) * sizeof(float));
    asg = malloc((size_t)(ns > cap ? ns : cap) * sizeof(int64_t));
    sums = malloc((size_t)(nlist * d + nlist) * sizeof(double));
    if (!v->centroids || !v->ids || !v->vecs || !v->len || !v->cap || !v->slot_list ||
        !v->slot_pos || !xs || !asg || !sums)
        goto oom;
    { /* the sample: the first ns of a seeded shuffle of the occupied slots (own stream, so
       * the memory's is untouched) */
        uint64_t rng[4];
        ml__xoshiro_seed(rng, seed);
        int64_t np = 0;
        for (int64_t j = 0; j < mem->count; j++)
            if (mem->labels[j] != -1) pool[np++] = j;
        for (int64_t i = 0; i < ns; i++) {
            int64_t r = i + (int64_t)rng_below(rng, (uint64_t)(live - i));
            int64_t tmp = pool[i];
            pool[i] = pool[r], pool[r] = tmp;
            memcpy(xs + i * d, mem->keys + pool[i] * d, (size_t)d * sizeof(float));
        }
    }
    /* spherical k-means, n_iter rounds from the first nlist sampled keys: assign (the
     * nearest centroid, ties to the lower), then each centroid is the normalised mean of
     * its points, summed in double in sample order; an empty one stays where it was */
    memcpy(v->centroids, xs, (size_t)(nlist * d) * sizeof(float));
    double *cnt = sums + nlist * d;
    for (int64_t it = 0; it < n_iter; it++) {
        assign_gemm(v, xs, ns, d, asg, gs, 0);
        memset(sums, 0, (size_t)(nlist * d + nlist) * sizeof(double));
        for (int64_t i = 0; i < ns; i++) {
            double *sl = sums + asg[i] * d;
            for (int64_t e = 0; e < d; e++) sl[e] += xs[i * d + e];
            cnt[asg[i]] += 1;
        }
        for (int64_t l = 0; l < nlist; l++) {
            if (cnt[l] == 0) continue;
            double ss = 0;
            for (int64_t e = 0; e < d; e++) ss += sums[l * d + e] * sums[l * d + e];
            if (!(ss > 0)) continue; /* points that cancel out: keep the old centroid */
            const double inv = 1.0 / sqrt(ss);
            for (int64_t e = 0; e < d; e++)
                v->centroids[l * d + e] = (float)(sums[l * d + e] * inv);
        }
    }
    /* the lists, each in slot order, sized exactly; their keys one block in list order */
    assign_gemm(v, mem->keys, mem->count, d, asg, gs, 1);
    for (int64_t j = 0; j < mem->count; j++)
        if (mem->labels[j] != -1) v->cap[asg[j]]++;
    for (int64_t l = 0; l < nlist; l++) v->slab_floats += v->cap[l] * d;
    if (!(v->slab = ml__alloc_huge((size_t)v->slab_floats * sizeof(float)))) goto oom;
    for (int64_t l = 0, at = 0; l < nlist; at += v->cap[l++] * d)
        if (v->cap[l]) {
            if (!(v->ids[l] = malloc((size_t)v->cap[l] * sizeof(int64_t)))) goto oom;
            v->vecs[l] = v->slab + at;
        }
    for (int64_t j = 0; j < cap; j++) v->slot_list[j] = v->slot_pos[j] = -1;
    for (int64_t j = 0; j < mem->count; j++)
        if (mem->labels[j] != -1) {
            int64_t l = asg[j];
            v->slot_list[j] = l;
            v->slot_pos[j] = v->len[l];
            memcpy(v->vecs[l] + v->len[l] * d, mem->keys + j * d, (size_t)d * sizeof(float));
            v->ids[l][v->len[l]++] = j;
        }
    build_prefilter(v, d);
    ivf_free(mem->ivf);
    mem->ivf = v;
    v = NULL;
    goto done;
oom:
    st = ml_set_error(ML_ERR_OOM, "%s: out of memory for %lld lists over %lld keys", what,
                      (long long)nlist, (long long)live);
done:
    pthread_rwlock_unlock(&mem->lock);
    ivf_free(v);
    free(pool);
    free(xs);
    free(asg);
    free(sums);
    free(gs);
    return st;
}

ml_status ml_memory_drop_index(ml_memory *mem) {
    if (!mem) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.drop_index: memory is NULL");
    pthread_rwlock_wrlock(&mem->lock);
    ivf_free(mem->ivf);
    mem->ivf = NULL;
    pthread_rwlock_unlock(&mem->lock);
    return ML_OK;
}

ml_status ml_memory_set_nprobe(ml_memory *mem, int64_t nprobe) {
    const char *what = "KnowledgeMemory.nprobe";
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    ml_status st = ML_OK;
    pthread_rwlock_wrlock(&mem->lock);
    if (!mem->ivf)
        st = ml_set_error(ML_ERR_VALUE, "%s: the memory has no index (build_index first)", what);
    else if (nprobe < 1 || nprobe > mem->ivf->nlist)
        st = ml_set_error(ML_ERR_VALUE, "%s: nprobe must be in [1, nlist=%lld], got %lld", what,
                          (long long)mem->ivf->nlist, (long long)nprobe);
    else
        mem->ivf->nprobe = nprobe;
    pthread_rwlock_unlock(&mem->lock);
    return st;
}

ml_status ml_memory_index_state(ml_memory *mem, int64_t *params, float *centroids, int64_t *lists) {
    if (!mem) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.index_state: memory is NULL");
    pthread_rwlock_rdlock(&mem->lock);
    const ivf_index *v = mem->ivf;
    if (params) {
        int64_t p[6] = {0, 0, 0, 0, 0, 0};
        if (v) {
            p[0] = v->nlist, p[1] = v->nprobe, p[2] = (int64_t)v->seed, p[3] = v->n_iter;
            p[4] = v->sample, p[5] = v->stale;
        }
        memcpy(params, p, sizeof p);
    }
    if (v && centroids)
        memcpy(centroids, v->centroids, (size_t)(v->nlist * mem->key_size) * sizeof(float));
    if (v && lists) memcpy(lists, v->slot_list, (size_t)mem->capacity * sizeof(int64_t));
    pthread_rwlock_unlock(&mem->lock);
    return ML_OK;
}

/* ------------------------------------------------- differentiable parts */

/* Validates q (n x d), finite; runs the top-k search on its normalised rows. */
static ml_status select_topk(ml_memory *m, const char *what, ml_tensor *q, int64_t k,
                             int64_t **idx_out, float **sim_out) {
    if (!q) return ml_set_error(ML_ERR_VALUE, "%s: query tensor is NULL", what);
    if (q->ndim != 2 || q->shape[1] != m->key_size)
        return ml_set_error(ML_ERR_SHAPE, "%s: expected queries of shape (n, %lld), got %s", what,
                            (long long)m->key_size, ML_SHAPE_STR(q));
    ml_status st = check_k(what, m, k);
    if (st) return st;
    int64_t n = q->shape[0], d = m->key_size;
    if ((st = check_queries(what, n, q->data, d))) return st;
    float *qn = NULL;
    if ((st = normalized_copy(&qn, what, n, q->data, d))) return st;
    size_t nk = (size_t)(n > 0 ? n * k : 1);
    int64_t *idx = malloc(nk * sizeof(int64_t));
    float *sim = malloc(nk * sizeof(float));
    if (!idx || !sim)
        st = ml_set_error(ML_ERR_OOM, "%s: out of memory", what);
    else
        st = search(m, n, qn, k, idx, sim, NULL, NULL, 0, 0);
    free(qn);
    if (st) {
        free(idx);
        free(sim);
        return st;
    }
    *idx_out = idx;
    *sim_out = sim;
    return ML_OK;
}

/* qn = q / sqrt(sum(q^2, -1) + eps), recorded. */
static ml_tensor *normalize_rows(ml_scope *s, ml_tensor *q) {
    int ax = -1;
    ml_tensor *ss = SUM_AXES(s, SQUARE(s, q), 1, &ax, 1);
    return MUL(s, q, POWS(s, ADDS(s, ss, NORM_EPS), -0.5f));
}

/* A constant tensor holding rows `idx` of a slab (zero rows for idx < 0). */
static ml_status gather_rows(ml_tensor **out, int ndim, const int64_t *shape, const float *slab,
                             int64_t width, int64_t n, const int64_t *idx) {
    ml_status st = ml__new(out, ndim, shape);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) {
        float *dst = (*out)->data + i * width;
        if (idx[i] >= 0)
            memcpy(dst, slab + idx[i] * width, (size_t)width * sizeof(float));
        else
            memset(dst, 0, (size_t)width * sizeof(float));
    }
    return ML_OK;
}

ml_status ml_memory_read(ml_tensor **out, ml_tensor **out_weights, ml_memory *mem, ml_tensor *q,
                         int64_t k, float temperature) {
    const char *what = "KnowledgeMemory.read";
    if (!mem) return ml_set_error(ML_ERR_VALUE, "%s: memory is NULL", what);
    if (!out && !out_weights) return ml_set_error(ML_ERR_VALUE, "%s: no output requested", what);
    if (out && mem->payload_size == 0)
        return ml_set_error(ML_ERR_VALUE,
                            "%s: the memory has no payload (payload_size=0); ask "
                            "for the attention weights only",
                            what);
    if (!(temperature > 0) || !isfinite(temperature))
        return ml_set_error(ML_ERR_VALUE,
                            "%s: temperature must be a positive finite number, "
                            "got %g",
                            what, (double)temperature);
    int64_t *idx = NULL;
    float *sim = NULL;
    ml_tensor *keys = NULL, *vals = NULL, *mask = NULL;
    pthread_rwlock_rdlock(&mem->lock);
    ml_status st = select_topk(mem, what, q, k, &idx, &sim);
    if (st) {
        pthread_rwlock_unlock(&mem->lock);
        return st;
    }
    int64_t n = q->shape[0], d = mem->key_size, p = mem->payload_size;
    int64_t kshape[3] = {n, k, d}, vshape[3] = {n, k, p}, mshape[2] = {n, k};
    st = gather_rows(&keys, 3, kshape, mem->keys, d, n * k, idx);
    if (!st && out) st = gather_rows(&vals, 3, vshape, mem->payloads, p, n * k, idx);
    pthread_rwlock_unlock(&mem->lock);
    if (!st && !(st = ml__new(&mask, 2, mshape)))
        for (int64_t i = 0; i < n * k; i++) mask->data[i] = idx[i] >= 0 ? 0.0f : MASKED;
    free(idx);
    free(sim);
    if (st) goto fail;
    {
        ml_scope s = {0};
        int64_t q3[3] = {n, 1, d}, w3[3] = {n, 1, k}, o2[2] = {n, p};
        ml_tensor *qn = RESHAPE(&s, normalize_rows(&s, q), 3, q3);
        ml_tensor *sims = RESHAPE(&s, MATMUL(&s, qn, keys, 0, 1), 2, mshape); /* (n, k) */
        ml_tensor *w = SOFTMAX(&s, ADD(&s, MULS(&s, sims, 1.0f / temperature), mask), -1);
        ml_tensor *o = out ? RESHAPE(&s, MATMUL(&s, RESHAPE(&s, w, 3, w3), vals, 0, 0), 2, o2)
                           : NULL;
        st = s.status;
        if (!st) {
            if (out) *out = ml__keep(o);
            if (out_weights) *out_weights = ml__keep(w);
        }
        ml__scope_end(&s);
    }
fail:
    ml_release(keys);
    ml_release(vals);
    ml_release(mask);
    return st;
}

ml_status ml_memory_loss(ml_tensor **out, ml_memory *mem, ml_tensor *q, int64_t n_labels,
                         const int64_t *labels, int64_t k, float margin) {
    const char *what = "KnowledgeMemory.loss";
    if (!mem || !out) return ml_set_error(ML_ERR_VALUE, "%s: memory or output is NULL", what);
    if (!isfinite(margin))
        return ml_set_error(ML_ERR_VALUE, "%s: margin must be finite, got %g", what,
                            (double)margin);
    if (q && q->ndim == 2 && (n_labels != q->shape[0] || (n_labels > 0 && !labels)))
        return ml_set_error(ML_ERR_SHAPE, "%s: %lld queries but %lld labels", what,
                            (long long)q->shape[0], (long long)n_labels);
    int64_t *idx = NULL;
    float *sim = NULL;
    ml_tensor *kpos = NULL, *kneg = NULL;
    pthread_rwlock_rdlock(&mem->lock);
    ml_status st = select_topk(mem, what, q, k, &idx, &sim);
    if (st) {
        pthread_rwlock_unlock(&mem->lock);
        return st;
    }
    int64_t n = q->shape[0], d = mem->key_size;
    /* nearest key with the right label and nearest with a wrong one among the top k */
    int64_t *pos = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    int64_t *neg = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!pos || !neg) {
        st = ml_set_error(ML_ERR_OOM, "%s: out of memory", what);
    } else {
        for (int64_t i = 0; i < n; i++) {
            pos[i] = neg[i] = -1;
            for (int64_t t = 0; t < k; t++) {
                int64_t j = idx[i * k + t];
                if (j < 0) break;
                if (mem->labels[j] == labels[i]) {
                    if (pos[i] < 0) pos[i] = j;
                } else if (neg[i] < 0) {
                    neg[i] = j;
                }
            }
        }
        int64_t shape[2] = {n, d};
        st = gather_rows(&kpos, 2, shape, mem->keys, d, n, pos);
        if (!st) st = gather_rows(&kneg, 2, shape, mem->keys, d, n, neg);
    }
    pthread_rwlock_unlock(&mem->lock);
    free(idx);
    free(sim);
    free(pos);
    free(neg);
    if (!st) {
        /* [q·k_neg - q·k_pos + alpha]_+ ; a missing key is a zero row (similarity 0), as
         * the paper's code does */
        ml_scope s = {0};
        int ax = -1;
        ml_tensor *qn = normalize_rows(&s, q);
        ml_tensor *sp = SUM_AXES(&s, MUL(&s, qn, kpos), 1, &ax, 0);
        ml_tensor *sn = SUM_AXES(&s, MUL(&s, qn, kneg), 1, &ax, 0);
        ml_tensor *l = RELU(&s, ADDS(&s, SUB(&s, sn, sp), margin));
        st = s.status;
        if (!st) *out = ml__keep(l);
        ml__scope_end(&s);
    }
    ml_release(kpos);
    ml_release(kneg);
    return st;
}

/* -------------------------------------------------------------- files */

/* The file format and its checks are memory/mmap.c's (version 2 written, 1 and 2 read). */

ml_status ml_memory_save(ml_memory *mem, const char *path) {
    if (!mem || !path) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.save: bad arguments");
    pthread_rwlock_rdlock(&mem->lock);
    const int64_t c = mem->count, d = mem->key_size, p = mem->payload_size;
    const size_t size = ml__memfile_bytes(c, d, p);
    uint8_t *buf = malloc(size);
    if (!buf) {
        pthread_rwlock_unlock(&mem->lock);
        return ml_set_error(ML_ERR_OOM, "KnowledgeMemory.save: out of memory (%zu bytes)", size);
    }
    ml__memfile_write(buf, mem->capacity, d, p, c, mem->seed, mem->rng, mem->keys, mem->labels,
                      mem->ages, mem->payloads);
    pthread_rwlock_unlock(&mem->lock);
    ml_status st = ml__write_atomic(path, buf, size);
    free(buf);
    return st;
}

/* A file states the capacity it needs; a corrupt one with valid CRCs could ask for gigabytes
 * while holding nothing. A memory read into RAM refuses slabs above ML_MEMORY_LOAD_MAX_BYTES
 * (4 GiB, ~8 million keys of 128 floats) before allocating (build a bigger memory with
 * ml_memory_new and fill it, or open the file mapped); a mapped one refuses as much beyond
 * what the file holds (the empty slots that state() or a compact copy would allocate). */
static ml_status check_capacity(const ml__memfile *f, const char *path, int64_t held) {
    double slots = (double)f->capacity - (double)held;
    if (slots * (double)(f->d + f->p) * 4.0 + slots * 16.0 <= ML_MEMORY_LOAD_MAX_BYTES)
        return ML_OK;
    return ml_set_error(ML_ERR_FORMAT,
                        "'%s' declares a memory of %lld slots of %lld + %lld floats, more than "
                        "the %.0f GiB a file may ask for",
                        path, (long long)f->capacity, (long long)f->d, (long long)f->p,
                        ML_MEMORY_LOAD_MAX_BYTES / 1073741824.0);
}

/* Maps and checks a whole memory file whose slabs are to be copied into RAM. */
static ml_status read_file(ml__memfile *f, const char *path) {
    ml_status st = ml__memfile_map(f, path);
    if (!st && (st = check_capacity(f, path, 0))) ml__memfile_unmap(f);
    return st;
}

static void get_floats(float *x, const uint8_t *r, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = ml__get_u32(r + 4 * i);
        memcpy(&x[i], &bits, 4);
    }
}

/* Copies a checked file into m (sizes already equal); caller holds the write lock. */
static void install(ml_memory *m, const ml__memfile *f) {
    clear_locked(m);
    const uint8_t *b = f->bytes;
    int64_t c = f->count, d = f->d, p = f->p;
    get_floats(m->keys, b + f->keys_at, c * d);
    for (int64_t i = 0; i < c; i++) m->labels[i] = (int64_t)ml__get_u64(b + f->labels_at + 8 * i);
    for (int64_t i = 0; i < c; i++) m->ages[i] = (int64_t)ml__get_u64(b + f->ages_at + 8 * i);
    if (p) get_floats(m->payloads, b + f->payloads_at, c * p);
    m->count = c;
    m->n_removed = f->n_removed;
    for (int64_t i = 0; i < c; i++) sync_compact(m, i);
    m->seed = f->seed;
    memcpy(m->rng, f->rng, sizeof m->rng);
}

ml_status ml_memory_load(ml_memory *mem, const char *path) {
    if (!mem) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.load: memory is NULL");
    ml_status st = refuse_read_only(mem, "KnowledgeMemory.load");
    if (st) return st;
    ml__memfile f;
    if ((st = read_file(&f, path))) return st;
    if (f.capacity != mem->capacity || f.d != mem->key_size || f.p != mem->payload_size) {
        st = ml_set_error(ML_ERR_VALUE,
                          "'%s' holds a memory of capacity %lld, key size %lld and "
                          "payload size %lld; this memory has %lld, %lld and %lld",
                          path, (long long)f.capacity, (long long)f.d, (long long)f.p,
                          (long long)mem->capacity, (long long)mem->key_size,
                          (long long)mem->payload_size);
    } else {
        pthread_rwlock_wrlock(&mem->lock);
        /* the file holds no index: the loaded keys are searched exactly until build_index
         * (KnowledgeMemory.load rebuilds one with the same parameters) */
        ivf_free(mem->ivf);
        mem->ivf = NULL;
        install(mem, &f);
        pthread_rwlock_unlock(&mem->lock);
    }
    ml__memfile_unmap(&f);
    return st;
}

/* A new memory in RAM holding a checked file (unmapped here). */
static ml_status open_copy(ml_memory **out, ml__memfile *f) {
    ml_memory *m = NULL;
    ml_status st = ml_memory_new(&m, f->capacity, f->d, f->p, f->seed);
    if (!st) {
        install(m, f);
        *out = m;
    }
    ml__memfile_unmap(f);
    return st;
}

ml_status ml_memory_open(ml_memory **out, const char *path) {
    if (!out) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.open: output pointer is NULL");
    ml__memfile f;
    ml_status st = read_file(&f, path);
    return st ? st : open_copy(out, &f);
}

ml_status ml_memory_open_mapped(ml_memory **out, const char *path) {
    if (!out) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory.open: output pointer is NULL");
    ml__memfile f;
    ml_status st = ml__memfile_map(&f, path);
    if (st) return st;
    if (!ml__memfile_in_place(&f)) {
        /* version 1 (keys at byte 84, unaligned) or a big-endian host: read into RAM, and
         * read-only all the same, so the contract does not depend on the file's version */
        if ((st = check_capacity(&f, path, 0))) {
            ml__memfile_unmap(&f);
            return st;
        }
        if (!(st = open_copy(out, &f))) (*out)->read_only = 1;
        return st;
    }
    ml_memory *m = NULL;
    if ((st = check_capacity(&f, path, f.count)) ||
        (!(m = calloc(1, sizeof *m)) &&
         (st = ml_set_error(ML_ERR_OOM, "KnowledgeMemory.open: out of memory")))) {
        ml__memfile_unmap(&f);
        return st;
    }
    m->capacity = f.capacity, m->key_size = f.d, m->payload_size = f.p;
    m->count = f.count, m->n_removed = f.n_removed;
    m->seed = f.seed;
    memcpy(m->rng, f.rng, sizeof m->rng);
    /* the slabs in place: 64-byte aligned, little-endian as the host (ml__memfile_in_place) */
    uint8_t *b = (uint8_t *)f.map;
    m->keys = (float *)(void *)(b + f.keys_at);
    m->labels = (int64_t *)(void *)(b + f.labels_at);
    m->ages = (int64_t *)(void *)(b + f.ages_at);
    m->payloads = f.p ? (float *)(void *)(b + f.payloads_at) : NULL;
    m->read_only = 1;
    m->file = f;
    if (pthread_rwlock_init(&m->lock, NULL) != 0) {
        ml__memfile_unmap(&m->file);
        free(m);
        return ml_set_error(ML_ERR_OOM, "KnowledgeMemory: cannot create its lock");
    }
    *out = m;
    return ML_OK;
}
