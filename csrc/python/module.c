/* module.c — metalearn._core: creates the module and registers the binding's parts (see
 * binding.h for the layout). Multi-phase initialisation (PEP 489): the exec slot readies
 * the types and adds the parts' functions and types to the module object. */
#define MLPY_BINDING_MAIN /* the one file that imports NumPy's C API (binding.h) */
#include "binding.h"

/* The parts' functions, in the module's namespace. */
static PyMethodDef *const part_methods[] = {
    mlpy_ops_methods,     mlpy_grad_methods,      mlpy_files_methods,
    mlpy_runtime_methods, mlpy_optimizer_methods, mlpy_trace_methods,
    mlpy_nn_methods,      mlpy_memory_methods,    mlpy_tasks_methods,
};

/* The parts' types (and the runtime's warning at import). */
static int (*const part_inits[])(PyObject *) = {
    mlpy_tensor_init, mlpy_optimizer_init, mlpy_trace_init, mlpy_memory_init, mlpy_runtime_init,
};

static int core_exec(PyObject *m) {
    import_array1(-1);
    for (size_t i = 0; i < sizeof part_methods / sizeof *part_methods; i++)
        if (PyModule_AddFunctions(m, part_methods[i]) < 0) return -1;
    for (size_t i = 0; i < sizeof part_inits / sizeof *part_inits; i++)
        if (part_inits[i](m) < 0) return -1;
    return PyModule_AddIntConstant(m, "MAX_DIMS", ML_MAX_DIMS);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* the types are static and the thread-locals process-wide: one interpreter only */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "metalearn._core",
    .m_doc = "The metalearn C core: tensors, autograd, ops, optimizers, traces, the knowledge "
             "memory, random, files.",
    .m_size = 0,
    .m_slots = core_slots,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
