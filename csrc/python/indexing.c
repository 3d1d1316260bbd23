/* indexing.c — the Tensor's mapping protocol, t[key], as NumPy indexes (tensor.c holds the
 * rest of the type). Every selection is an op (narrow, gather, reshape, permute), so the
 * gradient flows back through any index. */
#include "binding.h"

#include <limits.h>

/* A boolean scalar index: Python's bool, NumPy's bool_, a 0-d bool array */
static int is_bool_scalar(PyObject *k) {
    if (PyLong_CheckExact(k) || PySlice_Check(k)) return 0; /* t[0], t[1:3]: no type walk */
    return PyBool_Check(k) || PyArray_IsScalar(k, Bool) ||
           (PyArray_Check(k) && PyArray_NDIM((PyArrayObject *)k) == 0 &&
            PyArray_ISBOOL((PyArrayObject *)k));
}

/* t[mask] along axis, NumPy's boolean indexing: mask (bool, ndim md >= 1) has the shape of
 * cur's dims axis .. axis + md - 1, which become one dim of the selected positions (C order),
 * taken with gather (so differentiable: the gradient scatters back, zeros elsewhere). */
static ml_status mask_select(ml_tensor **out, ml_tensor *cur, int axis, PyArrayObject *mask,
                             int64_t *count) {
    const int md = PyArray_NDIM(mask);
    const int64_t *cur_shape = ml_shape(cur);
    for (int d = 0; d < md; d++)
        if (cur_shape[axis + d] != (int64_t)PyArray_DIM(mask, d)) {
            PyErr_Format(PyExc_IndexError,
                         "boolean index did not match indexed tensor along "
                         "axis %d; size of axis is %lld but size of corresponding boolean axis "
                         "is %lld",
                         axis + d, (long long)cur_shape[axis + d], (long long)PyArray_DIM(mask, d));
            return ML_ERR_VALUE;
        }
    PyArrayObject *flat = (PyArrayObject *)
        PyArray_FromAny((PyObject *)mask, PyArray_DescrFromType(NPY_BOOL), 0, 0,
                        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!flat) return ML_ERR_VALUE;
    const npy_bool *m = PyArray_DATA(flat);
    const npy_intp n = PyArray_SIZE(flat);
    npy_intp k = 0;
    for (npy_intp i = 0; i < n; i++) k += m[i] != 0;
    if (k > INT_MAX) {
        Py_DECREF(flat);
        PyErr_SetString(PyExc_IndexError, "a boolean index selects more than 2^31 - 1 entries");
        return ML_ERR_VALUE;
    }
    int64_t *pos = PyMem_Malloc((size_t)(k ? k : 1) * sizeof *pos);
    if (!pos) {
        Py_DECREF(flat);
        PyErr_NoMemory();
        return ML_ERR_OOM;
    }
    for (npy_intp i = 0, j = 0; i < n; i++)
        if (m[i]) pos[j++] = i;
    Py_DECREF(flat);
    /* the mask's dims as one (a view of the same data), then the gather */
    int64_t shape[ML_MAX_DIMS];
    int nd = 0;
    for (int d = 0, cur_nd = ml_ndim(cur); d < cur_nd; d++) {
        if (d > axis && d < axis + md)
            shape[nd - 1] *= cur_shape[d];
        else
            shape[nd++] = cur_shape[d];
    }
    ml_tensor *merged = NULL;
    ml_status st = ml_reshape(&merged, cur, nd, shape);
    if (!st) st = ml_gather(out, merged, (int)k, pos, axis);
    ml_release(merged);
    PyMem_Free(pos);
    *count = k;
    if (st) mlpy_raise_status(st);
    return st;
}

/* An integer index: a Python or NumPy int, a 0-d integer array or a 0-d tensor (NumPy's
 * a[np.array(1)] is a[1]); not a bool (is_bool_scalar is asked first) */
static int is_int_index(PyObject *k) {
    if (PyArray_Check(k))
        return PyArray_NDIM((PyArrayObject *)k) == 0 && PyArray_ISINTEGER((PyArrayObject *)k);
    if (mlpy_Tensor_Check(k)) return ml_ndim(MLPY_T(k)) == 0;
    return PyIndex_Check(k);
}

/* ---- t[key] ----
 * Indexing: ints, slices (any step), None, Ellipsis, one integer array (gather), or one
 * boolean mask (NumPy's rule: the dims it covers become one, of the selected entries), and
 * a boolean scalar on its own (t[True]: a new axis of 1, t[False]: of 0, as NumPy). Python's
 * bools are ints: unless caught first, t[True] and t[[True, False, True]] would read rows 1
 * and 1, 0, 1. Where the array and an int are apart (t[0, :, idx]) NumPy puts the array's
 * dim first, and so does this. Several arrays (NumPy pairs them up) are refused rather than
 * read as an outer product. Every error is an exception; no index is read as another kind.
 *
 * Two passes over the key: scan_key sorts its entries (how many dims they cover, where the
 * ints and the array are), then apply_entry narrows, gathers or masks one entry at a time,
 * building the result's shape (ints drop a dim, None adds one); finish reshapes to it. */

typedef struct {
    PyObject *items;    /* the key as a tuple */
    Py_ssize_t nk;      /* its length */
    PyObject **arrs;    /* entry i as an ndarray (lists and arrays), else NULL */
    PyObject *arrs_inline[8]; /* arrs for the usual keys, on the stack: t[0] pays for no
                               * allocation */
    int ndim0;          /* the indexed tensor's rank */
    int n_real;         /* dims of the tensor the entries cover (a mask covers its ndim) */
    int has_ellipsis;
    /* the array index's place in the key and in the result; the ints' first and last place */
    Py_ssize_t array_at, int_lo, int_hi, n_int;
    int array_dim;
    int64_t final_shape[ML_MAX_DIMS * 2]; /* the result's shape, built entry by entry */
    int final_nd;
    int axis;           /* the dim of the current tensor the next entry indexes */
} index_plan;

static int too_many_dims(void) {
    PyErr_Format(PyExc_IndexError, "indexing gives more than %d dimensions", ML_MAX_DIMS);
    return -1;
}

/* Pass 1: counts the dims the entries cover, notes the ints and the array index, converts
 * lists and arrays to ndarrays once (a boolean mask covers as many dims as it has). */
static int scan_key(index_plan *p) {
    for (Py_ssize_t i = 0; i < p->nk; i++) {
        PyObject *k = PyTuple_GET_ITEM(p->items, i);
        if (PyLong_CheckExact(k) || PySlice_Check(k)) { /* the common keys, first */
            p->n_real++;
            if (PySlice_Check(k)) continue;
            if (p->int_lo < 0) p->int_lo = i;
            p->int_hi = i;
            p->n_int++;
        } else if (k == Py_Ellipsis) {
            p->has_ellipsis++;
        } else if (is_bool_scalar(k)) {
            if (p->nk != 1) {
                PyErr_SetString(PyExc_TypeError,
                                "a boolean scalar index is supported only on "
                                "its own (t[True] adds an axis of 1, t[False] of 0); use None "
                                "or a boolean array");
                return -1;
            }
        } else if (k != Py_None) {
            if ((PyArray_Check(k) || PyList_Check(k)) && !(p->arrs[i] = PyArray_FROM_O(k)))
                return -1;
            const int bool_mask = p->arrs[i] && PyArray_ISBOOL((PyArrayObject *)p->arrs[i]);
            p->n_real += bool_mask ? PyArray_NDIM((PyArrayObject *)p->arrs[i]) : 1;
            if (is_int_index(k)) {
                if (p->int_lo < 0) p->int_lo = i;
                p->int_hi = i;
                p->n_int++;
            } else if (p->arrs[i] || mlpy_Tensor_Check(k)) {
                if (p->array_at >= 0) {
                    PyErr_SetString(PyExc_IndexError,
                                    "only one integer or boolean array per "
                                    "index is supported (NumPy pairs several up); index in "
                                    "steps");
                    return -1;
                }
                p->array_at = i;
            }
        }
    }
    return 0;
}

/* t[True]: a new leading axis of 1; t[False]: of 0 (a gather of no rows). */
static PyObject *bool_scalar_index(ml_tensor *cur, PyObject *k) {
    const int keep = PyObject_IsTrue(k);
    if (keep < 0) return NULL;
    const int ndim0 = ml_ndim(cur);
    if (ndim0 >= ML_MAX_DIMS) {
        too_many_dims();
        return NULL;
    }
    int64_t shape[ML_MAX_DIMS];
    shape[0] = 1;
    memcpy(shape + 1, ml_shape(cur), (size_t)ndim0 * sizeof *shape);
    ml_tensor *one = NULL, *out = NULL;
    ml_status st = ml_reshape(&one, cur, ndim0 + 1, shape);
    if (!st && !keep) {
        const int64_t none = 0;
        st = ml_gather(&out, one, 0, &none, 0);
        ml_release(one);
    } else {
        out = one;
    }
    return mlpy_wrap_status(st, &out);
}

/* t[..., i, ...]: the dim narrowed to row i, dropped from the result's shape by finish. */
static ml_status int_entry(index_plan *p, PyObject *k, ml_tensor *cur, ml_tensor **next) {
    const int64_t dim = ml_shape(cur)[p->axis];
    Py_ssize_t v = PyNumber_AsSsize_t(k, PyExc_IndexError);
    if (v == -1 && PyErr_Occurred()) return ML_ERR_VALUE;
    if (v < -dim || v >= dim) {
        PyErr_Format(PyExc_IndexError, "index %zd is out of bounds for axis %d with size %lld", v,
                     p->axis, (long long)dim);
        return ML_ERR_VALUE;
    }
    if (v < 0) v += dim;
    ml_status st = ml_narrow(next, cur, p->axis, v, 1);
    if (st) mlpy_raise_status(st);
    return st;
}

/* t[..., start:stop:step, ...]: a narrow for step 1, else a gather of the positions. */
static ml_status slice_entry(index_plan *p, PyObject *k, ml_tensor *cur, ml_tensor **next,
                             int64_t *len_out) {
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(k, &start, &stop, &step) < 0) return ML_ERR_VALUE;
    Py_ssize_t len = PySlice_AdjustIndices((Py_ssize_t)ml_shape(cur)[p->axis], &start, &stop, step);
    ml_status st;
    if (step == 1) {
        st = ml_narrow(next, cur, p->axis, start, len);
    } else {
        int64_t *pos = PyMem_Malloc((size_t)(len ? len : 1) * sizeof(int64_t));
        if (!pos) {
            PyErr_NoMemory();
            return ML_ERR_OOM;
        }
        for (Py_ssize_t j = 0; j < len; j++) pos[j] = start + j * step;
        st = ml_gather(next, cur, (int)len, pos, p->axis);
        PyMem_Free(pos);
    }
    if (st) mlpy_raise_status(st);
    *len_out = len;
    return st;
}

/* t[..., idx, ...] for a 1-D integer array or Tensor: a gather along the dim. */
static ml_status array_entry(index_plan *p, PyObject *k, ml_tensor *cur, ml_tensor **next) {
    PyArrayObject *idx = mlpy_to_index_array(k, "index");
    if (!idx) return ML_ERR_VALUE;
    if (PyArray_NDIM(idx) != 1) {
        Py_DECREF(idx);
        PyErr_SetString(PyExc_IndexError, "only 1-D integer index arrays are supported");
        return ML_ERR_VALUE;
    }
    ml_status st = ml_gather(next, cur, (int)PyArray_SIZE(idx), PyArray_DATA(idx), p->axis);
    Py_DECREF(idx);
    if (st) mlpy_raise_status(st);
    return st;
}

/* Pass 2, entry i: replaces *cur (a reference of ours) by the tensor indexed by it and
 * extends the result's shape. 0, or -1 with an exception. */
static int apply_entry(index_plan *p, Py_ssize_t i, ml_tensor **cur) {
    PyObject *k = PyTuple_GET_ITEM(p->items, i);
    ml_tensor *next = NULL;
    int64_t kept = -1; /* the length of the dim this entry keeps (-1: it drops it) */
    if (k == Py_None) {
        if (p->final_nd >= ML_MAX_DIMS) return too_many_dims();
        p->final_shape[p->final_nd++] = 1;
        return 0;
    }
    if (k == Py_Ellipsis) {
        int span = p->ndim0 - p->n_real;
        const int64_t *shape = ml_shape(*cur);
        for (int j = 0; j < span; j++) p->final_shape[p->final_nd++] = shape[p->axis + j];
        p->axis += span;
        return 0;
    }
    const int is_slice = PySlice_Check(k), is_long = PyLong_CheckExact(k);
    if (!is_long && !is_slice && p->arrs[i] && PyArray_ISBOOL((PyArrayObject *)p->arrs[i])) {
        if (mask_select(&next, *cur, p->axis, (PyArrayObject *)p->arrs[i], &kept)) return -1;
        p->array_dim = p->final_nd;
    } else if (is_long || (!is_slice && is_int_index(k))) {
        if (int_entry(p, k, *cur, &next)) return -1;
    } else if (is_slice) {
        if (slice_entry(p, k, *cur, &next, &kept)) return -1;
    } else if (p->arrs[i] || mlpy_Tensor_Check(k)) {
        if (array_entry(p, p->arrs[i] ? p->arrs[i] : k, *cur, &next)) return -1;
        kept = ml_shape(next)[p->axis];
        p->array_dim = p->final_nd;
    } else {
        PyErr_Format(PyExc_IndexError, "unsupported index of type %.100s", mlpy_type_name(k));
        return -1;
    }
    ml_release(*cur);
    *cur = next;
    p->axis++;
    if (kept >= 0) {
        if (p->final_nd >= ML_MAX_DIMS) return too_many_dims();
        p->final_shape[p->final_nd++] = kept;
    }
    return 0;
}

/* The indexed tensor reshaped to the result's shape; the array's dim moved first when the
 * array and the ints are apart in the key (NumPy's rule for advanced indices). */
static PyObject *finish(index_plan *p, ml_tensor *cur) {
    const int nd = ml_ndim(cur);
    const int64_t *shape = ml_shape(cur);
    for (int j = p->axis; j < nd; j++) {
        if (p->final_nd >= ML_MAX_DIMS) {
            too_many_dims();
            return NULL;
        }
        p->final_shape[p->final_nd++] = shape[j];
    }
    ml_tensor *out = NULL;
    ml_status st = ml_reshape(&out, cur, p->final_nd, p->final_shape);
    const Py_ssize_t lo = p->int_lo < 0 || p->array_at < p->int_lo ? p->array_at : p->int_lo;
    const Py_ssize_t hi = p->int_hi > p->array_at ? p->int_hi : p->array_at;
    if (!st && p->array_at >= 0 && p->n_int > 0 && p->array_dim > 0 && hi - lo + 1 > p->n_int + 1) {
        int perm[ML_MAX_DIMS];
        perm[0] = p->array_dim;
        for (int d = 0, j = 1; d < p->final_nd; d++)
            if (d != p->array_dim) perm[j++] = d;
        ml_tensor *moved = NULL;
        st = ml_transpose(&moved, out, perm);
        ml_release(out);
        out = moved;
    }
    return mlpy_wrap_status(st, &out);
}

PyObject *mlpy_tensor_getitem(mlpy_TensorObject *self, PyObject *key) {
    /* field by field: final_shape is written before it is read, and zeroing the whole
     * struct would be a sizeable part of t[0] */
    index_plan p;
    p.n_real = p.has_ellipsis = p.final_nd = p.axis = 0;
    p.array_at = p.int_lo = p.int_hi = -1;
    p.n_int = 0;
    p.array_dim = -1;
    memset(p.arrs_inline, 0, sizeof p.arrs_inline);
    p.items = PyTuple_Check(key) ? (Py_INCREF(key), key) : PyTuple_Pack(1, key);
    if (!p.items) return NULL;
    ml_tensor *cur = self->t;
    ml_retain(cur);
    p.nk = PyTuple_GET_SIZE(p.items);
    p.ndim0 = ml_ndim(cur);
    p.arrs = p.nk <= 8 ? p.arrs_inline : PyMem_Calloc((size_t)p.nk, sizeof *p.arrs);
    PyObject *result = NULL;
    if (!p.arrs) {
        PyErr_NoMemory();
        goto done;
    }
    if (scan_key(&p) < 0) goto done;
    if (p.has_ellipsis > 1 || p.n_real > p.ndim0) {
        PyErr_Format(PyExc_IndexError, "too many indices for a tensor of shape %s",
                     MLPY_SHAPE_STR(cur));
        goto done;
    }
    if (p.nk == 1 && is_bool_scalar(PyTuple_GET_ITEM(p.items, 0))) {
        result = bool_scalar_index(cur, PyTuple_GET_ITEM(p.items, 0));
        goto done;
    }
    for (Py_ssize_t i = 0; i < p.nk; i++)
        if (apply_entry(&p, i, &cur) < 0) goto done;
    result = finish(&p, cur);
done:
    if (p.arrs)
        for (Py_ssize_t i = 0; i < p.nk; i++) Py_XDECREF(p.arrs[i]);
    if (p.arrs != p.arrs_inline) PyMem_Free(p.arrs);
    Py_DECREF(p.items);
    ml_release(cur);
    return result;
}
