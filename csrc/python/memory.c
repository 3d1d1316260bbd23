/* memory.c — binding of the knowledge memory (csrc/memory/): _core.KnowledgeMemory.
 * Queries and updates take array-likes (or Tensors) of shape (n, key_size) and return NumPy
 * arrays; read and loss take Tensors and return recorded Tensors. The GIL is released while
 * a large search or update runs (the C memory has its own lock).
 *
 * Threads: the C memory's rwlock lets queries (and saves) run together while updates,
 * clears and loads wait for them. What the lock cannot cover is the memory itself being
 * replaced: `__init__` on a live object frees the old C memory. So every call that may
 * release the GIL counts itself in `busy` (changed with the GIL held) for its duration,
 * and `__init__` refuses while the count is not zero; nothing else frees the C memory
 * while a method runs (the call holds a reference to the object). */
#include "binding.h"

#include <time.h>

typedef struct {
    PyObject_HEAD ml_memory *mem;
    Py_ssize_t busy; /* calls running on this memory that may have released the GIL */
    int closed;      /* close() freed it (and unmapped its file) */
} MemoryObject;

static PyTypeObject MemoryType;

/* Test hook (_core._debug_memory_pause): calls that release the GIL sleep this long (ns)
 * once the GIL is released, so a test can act while one is in flight. 0 (off) outside the
 * thread tests; reading it costs one load per call. */
static long long debug_pause_ns;
static int debug_paused; /* calls sleeping in the hook now */

static void debug_pause(void) {
    long long ns = __atomic_load_n(&debug_pause_ns, __ATOMIC_RELAXED);
    if (!ns) return;
    __atomic_add_fetch(&debug_paused, 1, __ATOMIC_RELAXED);
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    nanosleep(&ts, NULL);
    __atomic_sub_fetch(&debug_paused, 1, __ATOMIC_RELAXED);
}

static int Memory_init(MemoryObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"capacity", "key_size", "payload_size", "seed", NULL};
    long long capacity, key_size, payload_size = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL|LK:KnowledgeMemory", kwlist, &capacity,
                                     &key_size, &payload_size, &seed))
        return -1;
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "KnowledgeMemory.__init__: the memory is in use by "
                     "another thread (%zd call(s) running: query, update, save or load); "
                     "re-initialise it after they return, or make a new KnowledgeMemory",
                     self->busy);
        return -1;
    }
    ml_memory *m = NULL;
    ml_status st = ml_memory_new(&m, capacity, key_size, payload_size, seed);
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    ml_memory_free(self->mem);
    self->mem = m;
    self->closed = 0;
    return 0;
}

static void Memory_dealloc(MemoryObject *self) {
    ml_memory_free(self->mem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(MemoryObject *self) {
    if (self->mem) return 1;
    if (self->closed) /* as a closed file */
        PyErr_SetString(PyExc_ValueError, "KnowledgeMemory: operation on a closed memory");
    else
        PyErr_SetString(PyExc_RuntimeError, "KnowledgeMemory was not initialised");
    return 0;
}

/* Queries as an (n, key_size) float32 tensor (a new reference). */
static ml_tensor *as_queries(MemoryObject *self, PyObject *q, const char *what) {
    ml_tensor *t = mlpy_as_ml(q, what);
    if (!t) return NULL;
    int64_t d = ml_memory_key_size(self->mem);
    if (ml_ndim(t) != 2 || ml_shape(t)[1] != d) {
        PyErr_Format(PyExc_ValueError, "%s: expected queries of shape (n, %lld), got %s", what,
                     (long long)d, MLPY_SHAPE_STR(t));
        ml_release(t);
        return NULL;
    }
    return t;
}

/* Labels as int64, one per query. */
static PyArrayObject *as_labels(PyObject *labels, int64_t n, const char *what) {
    PyArrayObject *a = mlpy_to_index_array(labels, what);
    if (!a) return NULL;
    if (PyArray_NDIM(a) > 1) {
        PyObject *shape = PyObject_GetAttrString((PyObject *)a, "shape");
        if (shape)
            PyErr_Format(PyExc_ValueError,
                         "%s: labels must be 1-D (one integer per query), got "
                         "an array of shape %R",
                         what, shape);
        Py_XDECREF(shape);
        Py_DECREF(a);
        return NULL;
    }
    if (PyArray_SIZE(a) != n) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected %lld labels (one per query), got an array of "
                     "%zd",
                     what, (long long)n, (Py_ssize_t)PyArray_SIZE(a));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *Memory_query(MemoryObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "labels", "nprobe", NULL};
    PyObject *qo, *lo = Py_None;
    long long k = 1, nprobe = 0; /* 0: the index's own (exact without one), -1: exact */
    if (!ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "O|LOL:query", kwlist, &qo, &k, &lo, &nprobe))
        return NULL;
    /* A float32 (n, key_size) C-contiguous NumPy array (what KnowledgeMemory.query passes)
     * is read in place; anything else becomes a tensor first. A single query's fixed cost is
     * what this saves (benchmarks/memory_query.py at 10^3 keys). */
    ml_tensor *q = NULL;
    const float *qdata;
    int64_t n;
    if (PyArray_CheckExact(qo) && PyArray_TYPE((PyArrayObject *)qo) == NPY_FLOAT32 &&
        PyArray_NDIM((PyArrayObject *)qo) == 2 &&
        PyArray_DIM((PyArrayObject *)qo, 1) == ml_memory_key_size(self->mem) &&
        PyArray_ISCARRAY_RO((PyArrayObject *)qo) && PyArray_ISNOTSWAPPED((PyArrayObject *)qo)) {
        qdata = PyArray_DATA((PyArrayObject *)qo);
        n = PyArray_DIM((PyArrayObject *)qo, 0);
    } else {
        if (!(q = as_queries(self, qo, "KnowledgeMemory.query"))) return NULL;
        qdata = ml_data(q);
        n = ml_shape(q)[0];
    }
    PyArrayObject *allow = NULL; /* the labels a result may have (None: any) */
    if (lo != Py_None) {
        allow = mlpy_to_index_array(lo, "KnowledgeMemory.query: labels");
        if (!allow) {
            if (q) ml_release(q);
            return NULL;
        }
    }
    int64_t p = ml_memory_payload_size(self->mem);
    int64_t cap = ml_memory_capacity(self->mem);
    if (k < 1 || k > cap) {
        if (q) ml_release(q);
        Py_XDECREF(allow);
        return PyErr_Format(PyExc_ValueError,
                            "KnowledgeMemory.query: k must be in [1, "
                            "capacity=%lld], got %lld",
                            (long long)cap, k);
    }
    npy_intp d2[2] = {(npy_intp)n, (npy_intp)k}, d3[3] = {(npy_intp)n, (npy_intp)k, (npy_intp)p};
    PyObject *idx = PyArray_SimpleNew(2, d2, NPY_INT64);
    PyObject *sim = PyArray_SimpleNew(2, d2, NPY_FLOAT32);
    PyObject *lab = PyArray_SimpleNew(2, d2, NPY_INT64);
    PyObject *pay = PyArray_ZEROS(3, d3, NPY_FLOAT32, 0);
    PyObject *result = NULL;
    if (idx && sim && lab && pay) {
        ml_status st;
        ml_memory *m = self->mem;
        self->busy++;
        MLPY_CALL(st, n * ml_memory_size(m) * ml_memory_key_size(m),
                  (debug_pause(),
                   ml_memory_query_where(m, n, qdata, k, allow ? (int64_t)PyArray_SIZE(allow) : -1,
                                         allow ? PyArray_DATA(allow) : NULL, (int64_t)nprobe,
                                         PyArray_DATA((PyArrayObject *)idx),
                                         PyArray_DATA((PyArrayObject *)sim),
                                         PyArray_DATA((PyArrayObject *)lab),
                                         p ? PyArray_DATA((PyArrayObject *)pay) : NULL)));
        self->busy--;
        if (st)
            mlpy_raise_status(st);
        else
            result = PyTuple_Pack(4, idx, sim, lab, pay);
    }
    Py_XDECREF(idx);
    Py_XDECREF(sim);
    Py_XDECREF(lab);
    Py_XDECREF(pay);
    Py_XDECREF(allow);
    if (q) ml_release(q);
    return result;
}

/* update (merge = 1: the paper's rule) and add (merge = 0: a slot each); both return the
 * slots written as an int64 array. */
static PyObject *write_batch(MemoryObject *self, PyObject *args, PyObject *kw, int merge) {
    static char *kwlist[] = {"q", "labels", "payloads", NULL};
    PyObject *qo, *lo, *po = Py_None;
    if (!ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, merge ? "OO|O:update" : "OO|O:add",
                                                     kwlist, &qo, &lo, &po))
        return NULL;
    const char *what = merge ? "KnowledgeMemory.update" : "KnowledgeMemory.add";
    PyObject *slots = NULL;
    ml_tensor *q = as_queries(self, qo, what), *pay = NULL;
    if (!q) return NULL;
    int64_t n = ml_shape(q)[0], p = ml_memory_payload_size(self->mem);
    PyArrayObject *labels = as_labels(lo, n, what);
    if (!labels) goto fail;
    if (po != Py_None) {
        if (p == 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s: the memory has payload_size=0; payloads must be "
                         "None",
                         what);
            goto fail;
        }
        if (!(pay = mlpy_as_ml(po, what))) goto fail;
        if (ml_numel(pay) != n * p || (ml_ndim(pay) != 2 && !(ml_ndim(pay) == 1 && n == 1)) ||
            (ml_ndim(pay) == 2 && ml_shape(pay)[0] != n)) {
            PyErr_Format(PyExc_ValueError, "%s: expected payloads of shape (%lld, %lld), got %s",
                         what, (long long)n, (long long)p, MLPY_SHAPE_STR(pay));
            goto fail;
        }
    }
    npy_intp dn[1] = {(npy_intp)n};
    if (!(slots = PyArray_SimpleNew(1, dn, NPY_INT64))) goto fail;
    ml_status st;
    ml_memory *m = self->mem;
    int64_t *out = PyArray_DATA((PyArrayObject *)slots);
    self->busy++;
    MLPY_CALL(st, n * ml_memory_size(m) * ml_memory_key_size(m),
              (debug_pause(), merge ? ml_memory_update_slots(m, n, ml_data(q), PyArray_DATA(labels),
                                                             pay ? ml_data(pay) : NULL, out)
                                    : ml_memory_add(m, n, ml_data(q), PyArray_DATA(labels),
                                                    pay ? ml_data(pay) : NULL, out)));
    self->busy--;
    ml_release(q);
    ml_release(pay);
    Py_DECREF(labels);
    if (st) {
        Py_DECREF(slots);
        return mlpy_raise_status(st);
    }
    return slots;
fail:
    ml_release(q);
    ml_release(pay);
    Py_XDECREF(labels);
    Py_XDECREF(slots);
    return NULL;
}

static PyObject *Memory_update(MemoryObject *self, PyObject *args, PyObject *kw) {
    return write_batch(self, args, kw, 1);
}

static PyObject *Memory_add(MemoryObject *self, PyObject *args, PyObject *kw) {
    return write_batch(self, args, kw, 0);
}

static PyObject *Memory_remove(MemoryObject *self, PyObject *ids) {
    if (!ready(self)) return NULL;
    PyArrayObject *a = mlpy_to_index_array(ids, "KnowledgeMemory.remove");
    if (!a) return NULL;
    ml_status st = ml_memory_remove(self->mem, (int64_t)PyArray_SIZE(a), PyArray_DATA(a));
    Py_DECREF(a);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *Memory_read(MemoryObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "temperature", "payload", NULL};
    PyObject *qo;
    long long k = 1;
    float temperature = 1.0f;
    int want_payload = 1;
    if (!ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, "O|Lfp:read", kwlist, &qo, &k,
                                                     &temperature, &want_payload))
        return NULL;
    ml_tensor *q = as_queries(self, qo, "KnowledgeMemory.read");
    if (!q) return NULL;
    ml_tensor *out = NULL, *w = NULL;
    int payload = want_payload && ml_memory_payload_size(self->mem) > 0;
    ml_status st = ml_memory_read(payload ? &out : NULL, &w, self->mem, q, k, temperature);
    ml_release(q);
    if (st) return mlpy_raise_status(st);
    PyObject *wo = mlpy_wrap(w);
    if (!wo) {
        ml_release(out);
        return NULL;
    }
    if (!payload) return Py_BuildValue("(ON)", Py_None, wo);
    PyObject *oo = mlpy_wrap(out);
    if (!oo) {
        Py_DECREF(wo);
        return NULL;
    }
    return Py_BuildValue("(NN)", oo, wo);
}

static PyObject *Memory_loss(MemoryObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "labels", "k", "margin", NULL};
    PyObject *qo, *lo;
    long long k = 1;
    float margin = 0.1f;
    if (!ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "OO|Lf:loss", kwlist, &qo, &lo, &k, &margin))
        return NULL;
    const char *what = "KnowledgeMemory.loss";
    ml_tensor *q = as_queries(self, qo, what);
    if (!q) return NULL;
    int64_t n = ml_shape(q)[0];
    PyArrayObject *labels = as_labels(lo, n, what);
    if (!labels) {
        ml_release(q);
        return NULL;
    }
    ml_tensor *out = NULL;
    ml_status st = ml_memory_loss(&out, self->mem, q, n, PyArray_DATA(labels), k, margin);
    ml_release(q);
    Py_DECREF(labels);
    return mlpy_wrap_status(st, &out);
}

static PyObject *Memory_save(MemoryObject *self, PyObject *arg) {
    PyObject *bytes = NULL;
    if (!ready(self) || !PyUnicode_FSConverter(arg, &bytes)) return NULL;
    ml_status st;
    ml_memory *m = self->mem;
    const char *path = PyBytes_AS_STRING(bytes);
    self->busy++;
    Py_BEGIN_ALLOW_THREADS debug_pause();
    st = ml_memory_save(m, path);
    Py_END_ALLOW_THREADS self->busy--;
    Py_DECREF(bytes);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *Memory_load(MemoryObject *self, PyObject *arg) {
    PyObject *bytes = NULL;
    if (!ready(self) || !PyUnicode_FSConverter(arg, &bytes)) return NULL;
    ml_status st;
    ml_memory *m = self->mem;
    const char *path = PyBytes_AS_STRING(bytes);
    self->busy++;
    Py_BEGIN_ALLOW_THREADS debug_pause();
    st = ml_memory_load(m, path);
    Py_END_ALLOW_THREADS self->busy--;
    Py_DECREF(bytes);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

/* mmap_mode as NumPy's np.load: None reads the file into RAM, "r" maps it read-only */
static PyObject *Memory_open(PyObject *cls, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "mmap_mode", NULL};
    PyObject *bytes = NULL, *mode = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O:open", kwlist, PyUnicode_FSConverter, &bytes,
                                     &mode))
        return NULL;
    int mapped = mode != Py_None;
    if (mapped && !(PyUnicode_Check(mode) && !strcmp(PyUnicode_AsUTF8(mode), "r"))) {
        PyErr_Format(PyExc_ValueError,
                     "KnowledgeMemory.open: mmap_mode must be None (read into RAM) or 'r' "
                     "(mapped read-only), got %R",
                     mode);
        Py_DECREF(bytes);
        return NULL;
    }
    ml_memory *m = NULL;
    ml_status st;
    const char *path = PyBytes_AS_STRING(bytes);
    Py_BEGIN_ALLOW_THREADS st = mapped ? ml_memory_open_mapped(&m, path) : ml_memory_open(&m, path);
    Py_END_ALLOW_THREADS Py_DECREF(bytes);
    if (st) return mlpy_raise_status(st);
    MemoryObject *o = (MemoryObject *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (!o) {
        ml_memory_free(m);
        return NULL;
    }
    o->mem = m;
    return (PyObject *)o;
}

/* Frees the memory now (a mapped one is unmapped) instead of at garbage collection. */
static PyObject *Memory_close(MemoryObject *self, PyObject *unused) {
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "KnowledgeMemory.close: the memory is in use by another thread (%zd "
                     "call(s) running); close it after they return",
                     self->busy);
        return NULL;
    }
    ml_memory_free(self->mem);
    self->mem = NULL;
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *Memory_build_index(MemoryObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"nlist", "nprobe", "seed", "n_iter", "sample", NULL};
    long long nlist, nprobe = 1, n_iter = 10, sample = 0;
    unsigned long long seed = 0;
    if (!ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, "L|LKLL:build_index", kwlist, &nlist,
                                                     &nprobe, &seed, &n_iter, &sample))
        return NULL;
    ml_status st;
    ml_memory *m = self->mem;
    self->busy++;
    MLPY_CALL(st, ml_memory_size(m) * ml_memory_key_size(m),
              ml_memory_build_index(m, nlist, nprobe, seed, n_iter, sample));
    self->busy--;
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *Memory_drop_index(MemoryObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    ml_status st = ml_memory_drop_index(self->mem);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

/* -> None without an index, else (nlist, nprobe, seed, n_iter, sample, stale, centroids
 * (nlist, key_size) float32, lists (capacity,) int64: each slot's list, -1 for none) */
static PyObject *Memory_index_state(MemoryObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    int64_t pr[6];
    ml_status st = ml_memory_index_state(self->mem, pr, NULL, NULL);
    if (st) return mlpy_raise_status(st);
    if (pr[0] == 0) Py_RETURN_NONE;
    npy_intp dc[2] = {(npy_intp)pr[0], (npy_intp)ml_memory_key_size(self->mem)};
    npy_intp dl[1] = {(npy_intp)ml_memory_capacity(self->mem)};
    PyObject *c = PyArray_SimpleNew(2, dc, NPY_FLOAT32), *l = PyArray_SimpleNew(1, dl, NPY_INT64);
    PyObject *r = NULL;
    if (c && l) {
        int64_t again[6];
        st = ml_memory_index_state(self->mem, again, PyArray_DATA((PyArrayObject *)c),
                                   PyArray_DATA((PyArrayObject *)l));
        if (st)
            mlpy_raise_status(st);
        else if (again[0] != pr[0]) /* rebuilt by another thread in between */
            PyErr_SetString(PyExc_RuntimeError,
                            "KnowledgeMemory.index_state: the index changed while read");
        else
            r = Py_BuildValue("(LLKLLiOO)", (long long)again[0], (long long)again[1],
                              (unsigned long long)again[2], (long long)again[3],
                              (long long)again[4], (int)again[5], c, l);
    }
    Py_XDECREF(c);
    Py_XDECREF(l);
    return r;
}

static PyObject *Memory_get_nprobe(MemoryObject *self, void *c) {
    if (!ready(self)) return NULL;
    int64_t pr[6];
    ml_status st = ml_memory_index_state(self->mem, pr, NULL, NULL);
    if (st) return mlpy_raise_status(st);
    if (pr[0] == 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(pr[1]);
}

static int Memory_set_nprobe(MemoryObject *self, PyObject *v, void *c) {
    if (!ready(self)) return -1;
    long long np = v ? PyLong_AsLongLong(v) : -1;
    if (np == -1 && PyErr_Occurred()) return -1;
    ml_status st = ml_memory_set_nprobe(self->mem, np);
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    return 0;
}

static PyObject *Memory_clear(MemoryObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    ml_status st = ml_memory_clear(self->mem);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}

/* (keys (m, d), labels (m,), ages (m,), payloads (m, p)): copies of the whole slabs. */
static PyObject *Memory_state(MemoryObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    ml_memory *m = self->mem;
    npy_intp cap = (npy_intp)ml_memory_capacity(m);
    npy_intp dk[2] = {cap, (npy_intp)ml_memory_key_size(m)}, d1[1] = {cap},
             dp[2] = {cap, (npy_intp)ml_memory_payload_size(m)};
    PyObject *keys = PyArray_SimpleNew(2, dk, NPY_FLOAT32);
    PyObject *labels = PyArray_SimpleNew(1, d1, NPY_INT64);
    PyObject *ages = PyArray_SimpleNew(1, d1, NPY_INT64);
    PyObject *pay = PyArray_ZEROS(2, dp, NPY_FLOAT32, 0);
    PyObject *result = NULL;
    if (keys && labels && ages && pay) {
        ml_status st = ml_memory_state(m, PyArray_DATA((PyArrayObject *)keys),
                                       PyArray_DATA((PyArrayObject *)labels),
                                       PyArray_DATA((PyArrayObject *)ages),
                                       dp[1] ? PyArray_DATA((PyArrayObject *)pay) : NULL);
        if (st)
            mlpy_raise_status(st);
        else
            result = PyTuple_Pack(4, keys, labels, ages, pay);
    }
    Py_XDECREF(keys);
    Py_XDECREF(labels);
    Py_XDECREF(ages);
    Py_XDECREF(pay);
    return result;
}

static Py_ssize_t Memory_len(MemoryObject *self) {
    if (!ready(self)) return -1;
    return (Py_ssize_t)ml_memory_size(self->mem);
}

#define GETTER(name, expr)                                               \
    static PyObject *Memory_get_##name(MemoryObject *self, void *c) {    \
        if (!ready(self)) return NULL;                                   \
        return expr;                                                     \
    }
GETTER(capacity, PyLong_FromLongLong(ml_memory_capacity(self->mem)))
GETTER(key_size, PyLong_FromLongLong(ml_memory_key_size(self->mem)))
GETTER(payload_size, PyLong_FromLongLong(ml_memory_payload_size(self->mem)))
GETTER(size, PyLong_FromLongLong(ml_memory_size(self->mem)))
GETTER(occupancy, PyFloat_FromDouble(ml_memory_occupancy(self->mem)))
GETTER(read_only, PyBool_FromLong(ml_memory_read_only(self->mem)))
#undef GETTER

static const char *const KEY_DTYPES[] = {"float32", "float16", "int8"}; /* ML_KEY_* order */

static PyObject *Memory_get_key_dtype(MemoryObject *self, void *c) {
    if (!ready(self)) return NULL;
    return PyUnicode_FromString(KEY_DTYPES[ml_memory_key_dtype(self->mem)]);
}

static int Memory_set_key_dtype(MemoryObject *self, PyObject *v, void *c) {
    if (!ready(self)) return -1;
    const char *name = v && PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    int dtype = -1;
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, KEY_DTYPES[i])) dtype = i;
    if (dtype < 0) {
        PyErr_Format(PyExc_ValueError,
                     "KnowledgeMemory.key_dtype must be 'float32', 'float16' or 'int8', got %R",
                     v ? v : Py_None);
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "KnowledgeMemory.key_dtype: the memory is in use by another thread");
        return -1;
    }
    ml_status st = ml_memory_set_key_dtype(self->mem, dtype);
    if (st) {
        mlpy_raise_status(st);
        return -1;
    }
    return 0;
}

static PyGetSetDef Memory_getset[] = {
    {"capacity", (getter)Memory_get_capacity, NULL, "number of slots", NULL},
    {"key_size", (getter)Memory_get_key_size, NULL, "size of a key", NULL},
    {"payload_size", (getter)Memory_get_payload_size, NULL, "size of a payload (0: none)", NULL},
    {"size", (getter)Memory_get_size, NULL, "number of occupied slots", NULL},
    {"occupancy", (getter)Memory_get_occupancy, NULL, "size / capacity", NULL},
    {"read_only", (getter)Memory_get_read_only, NULL,
     "True when opened with mmap_mode='r': writes raise ValueError", NULL},
    {"nprobe", (getter)Memory_get_nprobe, (setter)Memory_set_nprobe,
     "lists an approximate search scans (None without an index)", NULL},
    {"key_dtype", (getter)Memory_get_key_dtype, (setter)Memory_set_key_dtype,
     "keys the scan reads: 'float32' (exact), 'float16' or 'int8' (a scale per key)", NULL},
    {NULL},
};

static PyMethodDef Memory_methods[] = {
    {"query", MLPY_FN(Memory_query), MLPY_KW,
     "query($self, /, q, k=1, labels=None, nprobe=0)\n--\n\n"
     "-> (indices, similarities, labels, payloads): exact top-k cosine search (among the "
     "slots with one of `labels` only, when given)."},
    {"update", MLPY_FN(Memory_update), MLPY_KW,
     "update($self, /, q, labels, payloads=None)\n--\n\n"
     "The update rule of Kaiser et al. 2017, query by query; -> the slots written."},
    {"add", MLPY_FN(Memory_add), MLPY_KW,
     "add($self, /, q, labels, payloads=None)\n--\n\n"
     "Stores each key in a slot of its own (no merge); -> the slots written."},
    {"remove", MLPY_FN(Memory_remove), METH_O,
     "remove($self, ids, /)\n--\n\nEmpties the slots `ids`; a bad id changes nothing."},
    {"read", MLPY_FN(Memory_read), MLPY_KW,
     "read($self, /, q, k=1, temperature=1.0, payload=True)\n--\n\n"
     "-> (payload read or None, weights): the differentiable soft read (recorded)."},
    {"loss", MLPY_FN(Memory_loss), MLPY_KW,
     "loss($self, /, q, labels, k=1, margin=0.1)\n--\n\n"
     "-> the per-query memory loss (recorded)."},
    {"save", MLPY_FN(Memory_save), METH_O, "save($self, path, /)\n--\n\nChecked, atomic."},
    {"load", MLPY_FN(Memory_load), METH_O,
     "load($self, path, /)\n--\n\nChecked; the memory is unchanged on failure."},
    {"open", MLPY_FN(Memory_open), MLPY_KW | METH_CLASS,
     "open($type, /, path, mmap_mode=None)\n--\n\nA new memory with the sizes, contents and "
     "stream of a file; mmap_mode='r' searches the file in place, read-only."},
    {"close", MLPY_FN(Memory_close), METH_NOARGS,
     "close($self, /)\n--\n\nFrees the memory now (unmaps its file); later calls raise."},
    {"build_index", MLPY_FN(Memory_build_index), MLPY_KW,
     "build_index($self, /, nlist, nprobe=1, seed=0, n_iter=10, sample=0)\n--\n\n"
     "The IVF-flat index (seeded k-means, lists kept consistent by every write)."},
    {"drop_index", MLPY_FN(Memory_drop_index), METH_NOARGS,
     "drop_index($self, /)\n--\n\nBack to exact search."},
    {"index_state", MLPY_FN(Memory_index_state), METH_NOARGS,
     "index_state($self, /)\n--\n\n"
     "None, or (nlist, nprobe, seed, n_iter, sample, stale, centroids, lists)."},
    {"clear", MLPY_FN(Memory_clear), METH_NOARGS,
     "clear($self, /)\n--\n\nEmpties every slot and reseeds the stream."},
    {"state", MLPY_FN(Memory_state), METH_NOARGS,
     "state($self, /)\n--\n\n-> (keys, labels, ages, payloads): copies of every slot."},
    {NULL},
};

static PySequenceMethods Memory_as_sequence = {
    .sq_length = (lenfunc)Memory_len,
};

static PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "metalearn._core.KnowledgeMemory",
    .tp_basicsize = sizeof(MemoryObject),
    .tp_dealloc = (destructor)Memory_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "KnowledgeMemory(capacity, key_size, payload_size=0, seed=0)\n--\n\n"
              "The key-value memory of Kaiser et al. 2017 (C core).",
    .tp_methods = Memory_methods,
    .tp_getset = Memory_getset,
    .tp_as_sequence = &Memory_as_sequence,
    .tp_init = (initproc)Memory_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *mod_debug_memory_pause(PyObject *m, PyObject *arg) {
    double s = PyFloat_AsDouble(arg);
    if (s == -1.0 && PyErr_Occurred()) return NULL;
    if (!(s >= 0 && s <= 10)) {
        PyErr_SetString(PyExc_ValueError, "_debug_memory_pause: seconds must be in [0, 10]");
        return NULL;
    }
    __atomic_store_n(&debug_pause_ns, (long long)(s * 1e9), __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *mod_debug_memory_paused(PyObject *m, PyObject *unused) {
    return PyLong_FromLong(__atomic_load_n(&debug_paused, __ATOMIC_RELAXED));
}

PyMethodDef mlpy_memory_methods[] = {
    {"_debug_memory_pause", MLPY_FN(mod_debug_memory_pause), METH_O,
     MLPY_SIG("_debug_memory_pause", "seconds, /") "Tests only. KnowledgeMemory calls that release "
                                                   "the GIL sleep this long without it "
                                                   "(0: off)."},
    {"_debug_memory_paused", MLPY_FN(mod_debug_memory_paused), METH_NOARGS,
     MLPY_SIG("_debug_memory_paused", "/") "Calls sleeping in the test hook now."},
    {NULL},
};

int mlpy_memory_init(PyObject *module) {
    if (PyType_Ready(&MemoryType) < 0) return -1;
    return PyModule_AddObjectRef(module, "KnowledgeMemory", (PyObject *)&MemoryType);
}
