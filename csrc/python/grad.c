/* grad.c — autograd from Python: grad (as torch.autograd.grad), the thread's grad mode,
 * and assign (the in-place write that a later gradient checks for). */
#include "binding.h"

/* grad(outputs, inputs, grad_outputs=None, create_graph=False, allow_unused=False) ->
 * a list with a gradient (or None, allow_unused) per input. The flags are keywords or
 * positions; the core takes them as one bit set. */
static PyObject *mod_grad(PyObject *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"outputs",      "inputs",       "grad_outputs",
                             "create_graph", "allow_unused", NULL};
    PyObject *oo, *io, *go = Py_None;
    int create_graph = 0, allow_unused = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Opp:grad", kwlist, &oo, &io, &go,
                                     &create_graph, &allow_unused))
        return NULL;
    Py_ssize_t no = 0, ni = 0, ng = 0;
    ml_tensor **outs = NULL, **ins = NULL, **gouts = NULL, **grads = NULL;
    PyObject *result = NULL;
    /* references of the call's own: the GIL is released below */
    if (!(outs = mlpy_tensor_array(oo, &no, "grad", "outputs", MLPY_LIST_ONE))) goto done;
    if (!(ins = mlpy_tensor_array(io, &ni, "grad", "inputs", MLPY_LIST_ONE))) goto done;
    if (no < 1 || ni < 1 || no > INT32_MAX || ni > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "grad: needs at least one output and one input");
        goto done;
    }
    if (go != Py_None) {
        gouts = mlpy_tensor_array(go, &ng, "grad", "grad_outputs",
                                  MLPY_LIST_ONE | MLPY_LIST_CONVERT | MLPY_LIST_NONE);
        if (!gouts) goto done;
        if (ng != no) {
            PyErr_Format(PyExc_ValueError, "grad: %zd grad_outputs for %zd outputs", ng, no);
            goto done;
        }
    }
    grads = PyMem_Calloc((size_t)ni, sizeof *grads);
    if (!grads) {
        PyErr_NoMemory();
        goto done;
    }
    const unsigned flags = (create_graph ? ML_GRAD_CREATE_GRAPH : 0u) |
                           (allow_unused ? ML_GRAD_ALLOW_UNUSED : 0u);
    ml_status st;
    Py_BEGIN_ALLOW_THREADS st = ml_grad(grads, (int)no, outs, (int)ni, ins, gouts, flags);
    Py_END_ALLOW_THREADS if (st) {
        mlpy_raise_status(st);
        goto done;
    }
    result = mlpy_tensor_list(grads, ni);
done:
    mlpy_release_tensors(grads, ni);
    mlpy_release_tensors(outs, no);
    mlpy_release_tensors(ins, ni);
    mlpy_release_tensors(gouts, ng);
    return result;
}

static PyObject *mod_is_grad_enabled(PyObject *m, PyObject *unused) {
    return PyBool_FromLong(ml_is_grad_enabled());
}

static PyObject *mod_set_grad_enabled(PyObject *m, PyObject *v) {
    int b = PyObject_IsTrue(v);
    if (b < 0) return NULL;
    return PyBool_FromLong(ml_set_grad_enabled(b));
}

static PyObject *mod_assign(PyObject *m, PyObject *args) {
    PyObject *dst, *src;
    if (!PyArg_ParseTuple(args, "O!O:assign", &mlpy_TensorType, &dst, &src)) return NULL;
    ml_tensor *s = mlpy_as_ml(src, "assign");
    if (!s) return NULL;
    ml_status st = ml_assign(MLPY_T(dst), s);
    ml_release(s);
    if (st) return mlpy_raise_status(st);
    Py_RETURN_NONE;
}


PyMethodDef mlpy_grad_methods[] = {
    {"grad", MLPY_FN(mod_grad), MLPY_KW,
     MLPY_SIG("grad", "/, outputs, inputs, grad_outputs=None, create_graph=False, "
                      "allow_unused=False") "Gradients of sum(<grad_outputs[i], outputs[i]>) with "
                                            "respect to each input, as "
                                            "torch.autograd.grad: a list, None for an input no "
                                            "output uses (allow_unused). "
                                            "create_graph=True records the gradients, so they can "
                                            "be differentiated again."},
    {"is_grad_enabled", MLPY_FN(mod_is_grad_enabled), METH_NOARGS,
     MLPY_SIG("is_grad_enabled", "/") "Whether grad mode is on (this thread)."},
    {"set_grad_enabled", MLPY_FN(mod_set_grad_enabled), METH_O,
     MLPY_SIG("set_grad_enabled",
              "enabled, /") "Sets grad mode (this thread); returns the previous mode."},
    {"assign", MLPY_FN(mod_assign), METH_VARARGS,
     MLPY_SIG(
         "assign",
         "dst, src, /") "Copies src's values into the Tensor dst in place (bumps its version)."},
    {NULL},
};
