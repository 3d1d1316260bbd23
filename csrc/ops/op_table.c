/* op_table.c — one row per op: name, number of inputs (-1: any), backward (FLAT: none, the
 * piecewise-constant ops).
 * The static_assert keeps the table and enum ml_op_id in step (as ggml's op tables). */
#include "../core/internal.h"

#define BACKWARD(name) ml_status ml__##name##_backward(ml_tensor *, ml_tensor *, ml_tensor **);
BACKWARD(add) BACKWARD(sub) BACKWARD(mul) BACKWARD(div) BACKWARD(maximum) BACKWARD(minimum)
BACKWARD(neg) BACKWARD(square) BACKWARD(sqrt) BACKWARD(exp) BACKWARD(log) BACKWARD(abs)
BACKWARD(relu) BACKWARD(sigmoid) BACKWARD(tanh) BACKWARD(erf) BACKWARD(gelu)
BACKWARD(pow_scalar) BACKWARD(add_scalar) BACKWARD(mul_scalar) BACKWARD(leaky_relu)
BACKWARD(elu) BACKWARD(clip) BACKWARD(relu_grad) BACKWARD(matmul) BACKWARD(linear) BACKWARD(reshape)
BACKWARD(permute) BACKWARD(broadcast_to) BACKWARD(sum_to) BACKWARD(concat) BACKWARD(narrow)
BACKWARD(pad_axis) BACKWARD(gather) BACKWARD(scatter_add) BACKWARD(pick) BACKWARD(sum)
BACKWARD(mean) BACKWARD(max) BACKWARD(softmax) BACKWARD(log_softmax) BACKWARD(softmax_ce)
BACKWARD(sparse_softmax_ce)
BACKWARD(conv2d) BACKWARD(conv2d_input_grad) BACKWARD(conv2d_kernel_grad)
BACKWARD(max_pool2d) BACKWARD(max_pool2d_scatter) BACKWARD(max_pool2d_gather)
BACKWARD(avg_pool2d) BACKWARD(avg_pool2d_grad)
BACKWARD(batch_norm)
#undef BACKWARD

#define ROW(id, name, n) [id] = {#name, n, ml__##name##_backward}
#define FLAT(id, name, n) [id] = {#name, n, ml__flat_backward}

const ml_op_def ml_op_table[] = {
    ROW(OP_ADD, add, 2),
    ROW(OP_SUB, sub, 2),
    ROW(OP_MUL, mul, 2),
    ROW(OP_DIV, div, 2),
    ROW(OP_MAXIMUM, maximum, 2),
    ROW(OP_MINIMUM, minimum, 2),
    ROW(OP_NEG, neg, 1),
    ROW(OP_SQUARE, square, 1),
    ROW(OP_SQRT, sqrt, 1),
    ROW(OP_EXP, exp, 1),
    ROW(OP_LOG, log, 1),
    ROW(OP_ABS, abs, 1),
    ROW(OP_RELU, relu, 1),
    ROW(OP_SIGMOID, sigmoid, 1),
    ROW(OP_TANH, tanh, 1),
    ROW(OP_ERF, erf, 1),
    ROW(OP_GELU, gelu, 1),
    ROW(OP_POW_SCALAR, pow_scalar, 1),
    ROW(OP_ADD_SCALAR, add_scalar, 1),
    ROW(OP_MUL_SCALAR, mul_scalar, 1),
    ROW(OP_LEAKY_RELU, leaky_relu, 1),
    ROW(OP_ELU, elu, 1),
    ROW(OP_CLIP, clip, 1),
    ROW(OP_RELU_GRAD, relu_grad, 2),
    ROW(OP_MATMUL, matmul, 2),
    ROW(OP_LINEAR, linear, -1),
    ROW(OP_RESHAPE, reshape, 1),
    ROW(OP_PERMUTE, permute, 1),
    ROW(OP_BROADCAST_TO, broadcast_to, 1),
    ROW(OP_SUM_TO, sum_to, 1),
    ROW(OP_CONCAT, concat, -1),
    ROW(OP_NARROW, narrow, 1),
    ROW(OP_PAD_AXIS, pad_axis, 1),
    ROW(OP_GATHER, gather, 1),
    ROW(OP_SCATTER_ADD, scatter_add, 1),
    ROW(OP_PICK, pick, 1),
    ROW(OP_SUM, sum, 1),
    ROW(OP_MEAN, mean, 1),
    ROW(OP_MAX, max, 1),
    ROW(OP_SOFTMAX, softmax, 1),
    ROW(OP_LOG_SOFTMAX, log_softmax, 1),
    ROW(OP_SOFTMAX_CE, softmax_ce, 2),
    ROW(OP_SPARSE_SOFTMAX_CE, sparse_softmax_ce, 2),
    ROW(OP_CONV2D, conv2d, -1),
    ROW(OP_CONV2D_INPUT_GRAD, conv2d_input_grad, 2),
    ROW(OP_CONV2D_KERNEL_GRAD, conv2d_kernel_grad, 2),
    ROW(OP_MAX_POOL2D, max_pool2d, 1),
    ROW(OP_MAX_POOL2D_SCATTER, max_pool2d_scatter, 2),
    ROW(OP_MAX_POOL2D_GATHER, max_pool2d_gather, 2),
    ROW(OP_AVG_POOL2D, avg_pool2d, 1),
    ROW(OP_AVG_POOL2D_GRAD, avg_pool2d_grad, 1),
    ROW(OP_BATCH_NORM, batch_norm, -1),
    FLAT(OP_SIGN, sign, 1),
    FLAT(OP_STEP, step, 1),
    FLAT(OP_RANGE_MASK, range_mask, 1),
    FLAT(OP_EQUAL, equal, 2),
};

_Static_assert(sizeof ml_op_table / sizeof ml_op_table[0] == OP_COUNT,
               "ml_op_table needs one row per ml_op_id");
