/* nn.c — binding of the neural-network layer ops (conv, pooling, normalisation). */
#include "binding.h"

PyMethodDef ml_nn_methods[] = {
    {NULL},
};
