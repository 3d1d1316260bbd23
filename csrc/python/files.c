/* files.c — weight files from Python: save_tensors, load_tensors, and write_file for the
 * Python side's own files. The file work runs without the GIL; whatever it reads (the path,
 * the names, the tensors) is held by the call, not borrowed from the caller's lists. */
#include "binding.h"

static PyObject *mod_save_tensors(PyObject *m, PyObject *args) {
    PyObject *path_obj, *names_obj, *tensors_obj, *path_bytes = NULL;
    if (!PyArg_ParseTuple(args, "OOO:save_tensors", &path_obj, &names_obj, &tensors_obj))
        return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path_bytes)) return NULL;
    /* a tuple, not PySequence_Fast's list: the C strings below are read with the GIL
     * released, and another thread could clear a list (freeing the names) meanwhile */
    PyObject *names = PySequence_Check(names_obj) ? PySequence_Tuple(names_obj) : NULL;
    if (!names && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "save_tensors: names must be a list of str");
    Py_ssize_t n = 0;
    ml_tensor **ts = names ? mlpy_tensor_array(tensors_obj, &n, "save_tensors", "tensors",
                                               MLPY_LIST_CONVERT)
                           : NULL;
    const char **cnames = NULL;
    PyObject *result = NULL;
    if (!ts) goto done;
    if (n != PyTuple_GET_SIZE(names) || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "save_tensors: %zd names for %zd tensors",
                     PyTuple_GET_SIZE(names), n);
        goto done;
    }
    cnames = PyMem_Calloc((size_t)(n ? n : 1), sizeof *cnames);
    if (!cnames) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *nm = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(nm)) {
            PyErr_Format(PyExc_TypeError, "save_tensors: name %zd must be a str, got %.100s", i,
                         mlpy_type_name(nm));
            goto done;
        }
        Py_ssize_t len;
        if (!(cnames[i] = PyUnicode_AsUTF8AndSize(nm, &len))) goto done;
        /* the file stores C strings: a NUL would cut the name short without a word */
        if (strlen(cnames[i]) != (size_t)len) {
            PyErr_Format(PyExc_ValueError,
                         "save_tensors: tensor name %R (entry %zd) contains a "
                         "NUL character",
                         nm, i);
            goto done;
        }
    }
    ml_status st;
    Py_BEGIN_ALLOW_THREADS st = ml_save_tensors(PyBytes_AS_STRING(path_bytes), (int)n, cnames, ts);
    Py_END_ALLOW_THREADS if (st) {
        mlpy_raise_status(st);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    mlpy_release_tensors(ts, n);
    PyMem_Free(cnames);
    Py_XDECREF(names);
    Py_XDECREF(path_bytes);
    return result;
}

static PyObject *mod_load_tensors(PyObject *m, PyObject *path_obj) {
    PyObject *path_bytes = NULL;
    if (!PyUnicode_FSConverter(path_obj, &path_bytes)) return NULL;
    int n = 0;
    char **names = NULL;
    ml_tensor **ts = NULL;
    ml_status st;
    Py_BEGIN_ALLOW_THREADS st = ml_load_tensors(PyBytes_AS_STRING(path_bytes), &n, &names, &ts);
    Py_END_ALLOW_THREADS Py_DECREF(path_bytes);
    if (st) return mlpy_raise_status(st);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        ml_tensor *t = ts[i];
        npy_intp dims[ML_MAX_DIMS];
        for (int d = 0; d < ml_ndim(t); d++) dims[d] = (npy_intp)ml_shape(t)[d];
        PyObject *arr = PyArray_SimpleNew(ml_ndim(t), dims, NPY_FLOAT32);
        PyObject *name = PyUnicode_DecodeUTF8(names[i], (Py_ssize_t)strlen(names[i]), "replace");
        PyObject *pair = arr && name ? PyTuple_Pack(2, name, arr) : NULL;
        if (arr && ml_numel(t))
            memcpy(PyArray_DATA((PyArrayObject *)arr), ml_data(t), (size_t)ml_numel(t) * 4);
        Py_XDECREF(arr);
        Py_XDECREF(name);
        if (!pair) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    ml_free_loaded(n, names, ts);
    return list;
}

/* write_file(path, data): bytes written as weight files are (a unique temporary file,
 * fsync, rename; links followed, special files refused), for the Python side's own files
 * (MetaLearner's config.json) */
static PyObject *mod_write_file(PyObject *m, PyObject *args) {
    PyObject *path_bytes = NULL;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "O&y*:write_file", PyUnicode_FSConverter, &path_bytes, &data))
        return NULL;
    ml_status st;
    Py_BEGIN_ALLOW_THREADS st = ml_write_file(PyBytes_AS_STRING(path_bytes), data.buf,
                                              (size_t)data.len);
    Py_END_ALLOW_THREADS PyBuffer_Release(&data);
    Py_DECREF(path_bytes);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}


PyMethodDef mlpy_files_methods[] = {
    {"save_tensors", MLPY_FN(mod_save_tensors), METH_VARARGS,
     MLPY_SIG("save_tensors",
              "path, names, tensors, /") "Writes a checked weight file (a temporary file, "
                                         "fsync'ed, renamed over path)."},
    {"load_tensors", MLPY_FN(mod_load_tensors), METH_O,
     MLPY_SIG("load_tensors",
              "path, /") "Reads and checks a whole weight file -> [(name, ndarray)]."},
    {"write_file", MLPY_FN(mod_write_file), METH_VARARGS,
     MLPY_SIG("write_file", "path, data, /") "Bytes written atomically, as weight files are."},
    {NULL},
};
