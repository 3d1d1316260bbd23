/* op_table.c — one row per op of ops.def: name, number of inputs (-1: any), backward
 * (ml__<name>_backward; ml__flat_backward for the piecewise-constant ops; NULL for the
 * ops only traces record). The rows, the enum ml_op_id and the backward declarations all
 * expand ops.def, so they cannot drift apart. */
#include "ops.h"

#define DECLARE_BACKWARD(name) \
    ml_status ml__##name##_backward(ml_tensor *, ml_tensor *, ml_tensor **);
#define DECLARE_FLAT(name)
#define DECLARE_REPLAY(name)
#define ML_OP(ID, name, inputs, grad, form, py, label) DECLARE_##grad(name)
#include "ops.def"
#undef ML_OP

#define GRAD_BACKWARD(name) ml__##name##_backward
#define GRAD_FLAT(name) ml__flat_backward
#define GRAD_REPLAY(name) NULL

const ml_op_def ml_op_table[] = {
#define ML_OP(ID, name, inputs, grad, form, py, label) \
    [OP_##ID] = {#name, inputs, GRAD_##grad(name)},
#include "ops.def"
#undef ML_OP
};

_Static_assert(sizeof ml_op_table / sizeof ml_op_table[0] == OP_COUNT,
               "ml_op_table needs one row per ml_op_id");
