/* memory.c — binding of the knowledge memory (csrc/memory/). */
#include "binding.h"

PyMethodDef ml_memory_methods[] = {
    {NULL},
};

int ml_memory_init(PyObject *module) {
    (void)module;
    return 0;
}
