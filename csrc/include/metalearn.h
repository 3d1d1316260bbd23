/*
 * metalearn.h — the one public header of the metalearn C core.
 *
 * float32 tensors, reverse-mode autograd of any order, the ops behind Keras-style
 * layers, SGD/Adam, a seeded random generator and checked weight files. No Python.
 *
 * A short tour: f(x) = a*x^2 + b, its first and second derivative, one Adam step.
 *
 *     ml_tensor *x, *a, *b, *x2, *ax2, *f, *df, *d2f;
 *     ml_tensor_scalar(&x, 3.0f);  ml_set_requires_grad(x, 1);
 *     ml_tensor_scalar(&a, 2.0f);  ml_tensor_scalar(&b, 1.0f);
 *     ml_square(&x2, x);                    // records a graph: x is a leaf that needs grad
 *     ml_mul(&ax2, a, x2);
 *     ml_add(&f, ax2, b);                   // f = 19
 *     ml_grad(&df, 1, &f, 1, &x, NULL, ML_GRAD_CREATE_GRAPH); // df = 2ax = 12, itself a graph
 *     ml_grad(&d2f, 1, &df, 1, &x, NULL, 0);                  // d2f = 2a = 4
 *
 *     ml_optimizer *opt;
 *     ml_adam_new(&opt, 0.001f, 0.9f, 0.999f, 1e-7f, 0);   // Keras defaults
 *     ml_optimizer_step(opt, 1, &x, &df);   // x <- x - lr * m_hat / (sqrt(v_hat) + eps)
 *     // every object is refcounted: release what you made
 *     ml_release(x); ml_release(a); ...; ml_optimizer_free(opt);
 *
 * Conventions
 *  - Every public function returns an ml_status; on failure it leaves a message for
 *    ml_last_error() (thread-local) and changes nothing the caller passed in.
 *  - Outputs come first (`ml_add(&out, a, b)`), and a returned tensor is a new reference
 *    the caller releases with ml_release().
 *  - Element-wise binary ops broadcast as NumPy does; the gradient of a broadcast input
 *    is summed back to the input's shape.
 *  - Recording follows grad mode (thread-local, on by default): an op records a node when
 *    grad mode is on and one of its inputs requires grad. Every op's backward is written
 *    with the same differentiable ops, so ml_grad(..., ML_GRAD_CREATE_GRAPH) returns
 *    gradients that can be differentiated again: second-order MAML needs no special case.
 *  - Options are named bit sets (ML_GRAD_CREATE_GRAPH | ML_GRAD_ALLOW_UNUSED), 0 for none;
 *    an unknown bit is refused (ML_ERR_VALUE).
 *
 * Names in C and Python (metalearn._core, re-exported by metalearn): a function is ml_ and
 * its Python name, parameters included (ml_conv2d(out, x, kernel, bias, ...) is conv2d); a
 * type's function is ml_<type>_<name> for the Python type's method or property <name>
 * (ml_optimizer_step: Optimizer.step, ml_memory_query: KnowledgeMemory.query), a tensor's
 * is ml_<name>(t) (ml_ndim: Tensor.ndim, ml_detach: Tensor.detach()); a setter adds set_.
 * Where Python takes a tuple, a list, a string or keyword flags, C takes ints, a count and
 * an array, an enum or a bit set: shape=(2, 3) is ndim, shape; strides=(2, 1) is stride_h,
 * stride_w; padding="same" is ML_PAD_SAME; create_graph=True is ML_GRAD_CREATE_GRAPH; and
 * what Python returns, C writes through its first pointers. The rest differ, each for its
 * reason below (tests/test_op_list.py reads this table):
 *
 *   C                                     Python                             why
 *   ml_sum                                reduce_sum                         [R]
 *   ml_mean                               reduce_mean                        [R]
 *   ml_max                                reduce_max                         [R]
 *   ml_pow_scalar                         pow                                [S]
 *   ml_sparse_categorical_crossentropy_t  sparse_categorical_crossentropy    [O]
 *   ml_tensor_zeros                       zeros                              [T]
 *   ml_tensor_full                        full                               [T]
 *   ml_tensor_from_data                   tensor                             [T]
 *   ml_tensor_scalar                      tensor                             [T]
 *   ml_tensor_wrap                        as_tensor                          [T]
 *   ml_copy                               tensor                             [T]
 *   ml_sgd_new                            SGD                                [T]
 *   ml_adam_new                           Adam                               [T]
 *   ml_rmsprop_new                        RMSprop                            [T]
 *   ml_adagrad_new                        Adagrad                            [T]
 *   ml_nadam_new                          Nadam                              [T]
 *   ml_memory_new                         KnowledgeMemory                    [T]
 *   ml_numel                              Tensor.size                        [N]
 *   ml_data                               Tensor.numpy()                     [N]
 *   ml_op_name                            Tensor.op                          [N]
 *   ml_version                            Tensor._version                    [N]
 *   ml_memory_query_where                 KnowledgeMemory.query              [O]
 *   ml_memory_update_slots                KnowledgeMemory.update             [O]
 *   ml_memory_open_mapped                 KnowledgeMemory.open               [O]
 *   ml_optimizer_n_slots                  Optimizer.slots()                  [O]
 *   ml_optimizer_slot                     Optimizer.slots()                  [O]
 *   ml_trace_format                       Trace.describe()                   [O]
 *   ml_trace_print                        Trace.describe()                   [O]
 *   ml_rng_seed                           random.set_seed                    [G]
 *   ml_rng_permutation                    random.permutation                 [G]
 *   ml_sgemm                              matmul                             [K]
 *   ml_sinusoid                           tasks.Sinusoid                     [K]
 *   ml_kernel_variants                    _kernel_variants                   [K]
 *   ml_storage_stats                      _storage_stats                     [K]
 *   ml_recompute_count                    _storage_stats                     [K]
 *   ml_last_error                         -                                  [C]
 *   ml_set_error                          -                                  [C]
 *   ml_retain                             -                                  [C]
 *   ml_release                            -                                  [C]
 *   ml_optimizer_free                     -                                  [C]
 *   ml_trace_free                         -                                  [C]
 *   ml_memory_free                        -                                  [C]
 *   ml_free_loaded                        -                                  [C]
 *   ml_shape_str                          -                                  [C]
 *   ml_crc32                              -                                  [C]
 *   ml_rng_next_u64                       -                                  [C]
 *   ml_trace_n_inputs                     -                                  [C]
 *   ml_trace_n_outputs                    -                                  [C]
 *   ml_num_threads_env_warning            -                                  [C]
 *
 *   [R] C and the op table name the op as NumPy and keras.ops do (Tensor.op, traces, and
 *       the methods Tensor.sum / mean / max say "sum"); Python's module functions keep
 *       TensorFlow's reduce_ names, which its callers use.
 *   [S] An op of a tensor and a number: C's _scalar ops (add_scalar, mul_scalar,
 *       pow_scalar); Python's pow is the builtin's name.
 *   [O] One Python function or method where C, without overloading or lists, has several:
 *       the labels as a tensor, a slot at a time, a trace as text into a buffer or a file,
 *       a file read into RAM or mapped (mmap_mode).
 *   [T] A constructor: in C the type's prefix and a verb (ml_tensor_zeros, ml_adam_new);
 *       in Python the function NumPy names or the type itself.
 *   [N] NumPy's name for a tensor's attribute (size, numpy()), or Python's for a private
 *       one (_version); C names what it returns.
 *   [G] The global generator's own functions carry rng_ in C; in Python they are
 *       metalearn.random's (the random tensors are ops, named alike: ml_random_normal).
 *   [K] A kernel on float arrays: Python reaches it through an op (matmul), the task
 *       sampler (tasks.Sinusoid, through _core.sinusoid_batch) or a private test hook.
 *   [C] C only: references, memory, errors and buffers that Python manages itself; the
 *       environment warning is a RuntimeWarning at import.
 */
#ifndef METALEARN_H
#define METALEARN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ML_MAX_DIMS 8
#define ML_VERSION_MAJOR 0
#define ML_VERSION_MINOR 1

typedef enum ml_status {
    ML_OK = 0,
    ML_ERR_VALUE = 1,  /* a bad argument value: axis out of range, negative size, NaN lr */
    ML_ERR_SHAPE = 2,  /* shapes that do not fit together */
    ML_ERR_TYPE = 3,   /* wrong kind of argument (e.g. an index that is not an integer) */
    ML_ERR_OOM = 4,    /* an allocation failed or a size overflowed */
    ML_ERR_IO = 5,     /* a file could not be opened, read or written */
    ML_ERR_FORMAT = 6, /* a file is not a metalearn file, is truncated, or fails its checksum */
    ML_ERR_GRAPH = 7, /* autograd misuse: no path to an input, a non-scalar without grad_outputs */
} ml_status;

/* The message of the last failure on this thread ("" when none). */
const char *ml_last_error(void);
/* Sets the thread's error message (printf-style) and returns `status`. */
ml_status ml_set_error(ml_status status, const char *fmt, ...);

/* ------------------------------------------------------------------ tensors */

typedef struct ml_tensor ml_tensor;
typedef void (*ml_free_fn)(void *ctx);

/* New tensor of `shape` (ndim 0..ML_MAX_DIMS; ndim 0 is a scalar), zero-filled. */
ml_status ml_tensor_zeros(ml_tensor **out, int ndim, const int64_t *shape);
/* New tensor holding a copy of `data` (product of shape floats). */
ml_status ml_tensor_from_data(ml_tensor **out, int ndim, const int64_t *shape, const float *data);
/* New tensor that uses `data` in place; `free_fn(ctx)` runs when the tensor is released.
 * The memory must hold the product of shape floats, C-contiguous. */
ml_status ml_tensor_wrap(ml_tensor **out, int ndim, const int64_t *shape, float *data,
                         ml_free_fn free_fn, void *ctx);
ml_status ml_tensor_scalar(ml_tensor **out, float value);
ml_status ml_tensor_full(ml_tensor **out, int ndim, const int64_t *shape, float value);

void ml_retain(ml_tensor *t);
void ml_release(ml_tensor *t); /* NULL is allowed */

int ml_ndim(const ml_tensor *t);
const int64_t *ml_shape(const ml_tensor *t);
int64_t ml_numel(const ml_tensor *t);
float *ml_data(ml_tensor *t);
int ml_requires_grad(const ml_tensor *t);
/* Only a leaf (a tensor no op made) may change whether it requires grad. */
ml_status ml_set_requires_grad(ml_tensor *t, int requires_grad);
int ml_is_leaf(const ml_tensor *t);
/* Name of the op that made t ("" for a leaf). */
const char *ml_op_name(const ml_tensor *t);
/* A leaf sharing t's memory, cut from its graph. */
ml_status ml_detach(ml_tensor **out, ml_tensor *t);
/* A new leaf with a copy of t's data. */
ml_status ml_copy(ml_tensor **out, const ml_tensor *t);
/* Copies src's values into dst in place (same number of elements); records nothing. */
ml_status ml_assign(ml_tensor *dst, const ml_tensor *src);
/* Bumped by every in-place write; a graph that saved the tensor checks it in backward. */
uint64_t ml_version(const ml_tensor *t);
/* Writes a shape as the error messages do, "(3, 4)" ("(3,)" for one dim, "()" for none),
 * into buf (size bytes, NUL-terminated) and returns buf. */
const char *ml_shape_str(char *buf, size_t size, int ndim, const int64_t *shape);

/* ---------------------------------------------------------------- grad mode */

int ml_is_grad_enabled(void);
/* Sets grad mode for this thread and returns the previous mode. */
int ml_set_grad_enabled(int enabled);

/* ml_grad's flags (or them together; 0: neither). */
typedef enum ml_grad_flags {
    ML_GRAD_CREATE_GRAPH = 1u << 0, /* record the gradient's computation: differentiable again */
    ML_GRAD_ALLOW_UNUSED = 1u << 1, /* an input no output reaches gets NULL, not ML_ERR_GRAPH */
} ml_grad_flags;

/* Gradients of sum_i <grad_outputs[i], outputs[i]> with respect to each input, as
 * torch.autograd.grad. grad_outputs may be NULL when every output is a scalar.
 * grads[j] is NULL (ML_GRAD_ALLOW_UNUSED) when inputs[j] does not reach any output. */
ml_status ml_grad(ml_tensor **grads, int n_outputs, ml_tensor *const *outputs, int n_inputs,
                  ml_tensor *const *inputs, ml_tensor *const *grad_outputs, unsigned flags);

/* ----------------------------------------------------------------------- ops */

typedef enum ml_activation {
    ML_ACT_NONE = 0,
    ML_ACT_RELU = 1,
    ML_ACT_SIGMOID = 2,
    ML_ACT_TANH = 3,
} ml_activation;

/* element-wise, broadcasting */
ml_status ml_add(ml_tensor **out, ml_tensor *a, ml_tensor *b);
ml_status ml_sub(ml_tensor **out, ml_tensor *a, ml_tensor *b);
ml_status ml_mul(ml_tensor **out, ml_tensor *a, ml_tensor *b);
ml_status ml_div(ml_tensor **out, ml_tensor *a, ml_tensor *b);
ml_status ml_maximum(ml_tensor **out, ml_tensor *a, ml_tensor *b);
ml_status ml_minimum(ml_tensor **out, ml_tensor *a, ml_tensor *b);
/* element-wise, one input */
ml_status ml_neg(ml_tensor **out, ml_tensor *x);
ml_status ml_square(ml_tensor **out, ml_tensor *x);
ml_status ml_sqrt(ml_tensor **out, ml_tensor *x);
ml_status ml_exp(ml_tensor **out, ml_tensor *x);
ml_status ml_log(ml_tensor **out, ml_tensor *x);
ml_status ml_abs(ml_tensor **out, ml_tensor *x);
ml_status ml_sign(ml_tensor **out, ml_tensor *x); /* zero gradient */
ml_status ml_relu(ml_tensor **out, ml_tensor *x);
ml_status ml_sigmoid(ml_tensor **out, ml_tensor *x);
ml_status ml_tanh(ml_tensor **out, ml_tensor *x);
ml_status ml_erf(ml_tensor **out, ml_tensor *x);
ml_status ml_gelu(ml_tensor **out, ml_tensor *x); /* exact: x * Phi(x) */
ml_status ml_softplus(ml_tensor **out, ml_tensor *x); /* log(1 + exp(x)), stable */
ml_status ml_pow_scalar(ml_tensor **out, ml_tensor *x, float exponent);
ml_status ml_add_scalar(ml_tensor **out, ml_tensor *x, float value);
ml_status ml_mul_scalar(ml_tensor **out, ml_tensor *x, float value);
ml_status ml_leaky_relu(ml_tensor **out, ml_tensor *x, float negative_slope);
ml_status ml_elu(ml_tensor **out, ml_tensor *x, float alpha);
/* min(max(x, clip_value_min), clip_value_max); the gradient passes where
 * clip_value_min <= x <= clip_value_max. */
ml_status ml_clip(ml_tensor **out, ml_tensor *x, float clip_value_min, float clip_value_max);
/* 1 where x > threshold, else 0; zero gradient. */
ml_status ml_step(ml_tensor **out, ml_tensor *x, float threshold);

/* matmul: a (..., m, k) @ b (..., k, n), transposes applied to the last two dims first.
 * Leading (batch) dims broadcast as NumPy does; both inputs need at least 2 dims. */
ml_status ml_matmul(ml_tensor **out, ml_tensor *a, ml_tensor *b, int transpose_a, int transpose_b);
/* activation(x @ kernel + bias): x (..., k), kernel (k, n), bias (n) or NULL. */
ml_status ml_linear(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias,
                    ml_activation activation);

/* shape */
ml_status ml_reshape(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape);
/* perm NULL reverses the dims. */
ml_status ml_transpose(ml_tensor **out, ml_tensor *x, const int *perm);
ml_status ml_broadcast_to(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape);
/* Sums x down to `shape` (the reverse of broadcasting). */
ml_status ml_sum_to(ml_tensor **out, ml_tensor *x, int ndim, const int64_t *shape);
ml_status ml_concat(ml_tensor **out, int n, ml_tensor *const *values, int axis);
/* x[..., start:start+length, ...] along axis. */
ml_status ml_narrow(ml_tensor **out, ml_tensor *x, int axis, int64_t start, int64_t length);
/* Zero tensor with dim `axis` of size `size` holding x at [start, start + x.shape[axis]). */
ml_status ml_pad_axis(ml_tensor **out, ml_tensor *x, int axis, int64_t start, int64_t size);
/* Rows of x along axis picked by indices (negative indices count from the end). */
ml_status ml_gather(ml_tensor **out, ml_tensor *x, int n_indices, const int64_t *indices, int axis);
/* Zero tensor with dim `axis` of size `size`, x's slices added at rows `indices`. */
ml_status ml_scatter_add(ml_tensor **out, ml_tensor *x, int n_indices, const int64_t *indices,
                         int axis, int64_t size);
/* out[i...] = x[i..., labels[i...]] along the last axis: x (..., c), labels (...). */
ml_status ml_pick(ml_tensor **out, ml_tensor *x, int64_t n_labels, const int64_t *labels);
/* One-hot rows: (n_labels, depth). Refuses labels outside [0, depth). */
ml_status ml_one_hot(ml_tensor **out, int64_t n_labels, const int64_t *labels, int64_t depth);

/* reductions: axes NULL / n_axes 0 means all axes; negative axes count from the end */
ml_status ml_sum(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims);
ml_status ml_mean(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims);
/* The gradient is split evenly between tied maxima. */
ml_status ml_max(ml_tensor **out, ml_tensor *x, int n_axes, const int *axes, int keepdims);
ml_status ml_softmax(ml_tensor **out, ml_tensor *x, int axis);
ml_status ml_log_softmax(ml_tensor **out, ml_tensor *x, int axis);

/* losses: per-sample values reduced over the last axis, as keras.losses functions */
ml_status ml_mean_squared_error(ml_tensor **out, ml_tensor *y_true, ml_tensor *y_pred);
/* Keras: probabilities are rescaled to sum 1 and clipped to [1e-7, 1 - 1e-7]. */
ml_status ml_categorical_crossentropy(ml_tensor **out, ml_tensor *y_true, ml_tensor *y_pred,
                                      int from_logits);
/* y_true: n_labels integer class labels, one per row of y_pred (..., c). */
ml_status ml_sparse_categorical_crossentropy(ml_tensor **out, int64_t n_labels,
                                             const int64_t *y_true, ml_tensor *y_pred,
                                             int from_logits);
/* The same with the labels in a tensor (integer values held as floats), read when the op
 * runs: a trace replays it with each call's labels. */
ml_status ml_sparse_categorical_crossentropy_t(ml_tensor **out, ml_tensor *y_true,
                                               ml_tensor *y_pred, int from_logits);
ml_status ml_binary_crossentropy(ml_tensor **out, ml_tensor *y_true, ml_tensor *y_pred,
                                 int from_logits);

/* --------------------------------------------------------------- layer ops */

/* Channels-last (NHWC) as Keras. Padding as Keras/TensorFlow: VALID uses no padding;
 * SAME gives ceil(H / stride) outputs with pad_total = max((out - 1) * stride + window - H, 0),
 * pad_top = pad_total / 2 (the extra row, if any, at the bottom; likewise for columns). */
typedef enum ml_padding {
    ML_PAD_VALID = 0,
    ML_PAD_SAME = 1,
} ml_padding;

/* x (N, H, W, C), kernel (KH, KW, C, F), bias (F) or NULL -> (N, OH, OW, F).
 * Gradients of any order (the backward ops are conv2d's transposes, themselves recorded). */
ml_status ml_conv2d(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias, int stride_h,
                    int stride_w, ml_padding padding);
/* conv2d for T tasks at once, each with its own kernel (MAML's per-task fast weights):
 * x (T, N, H, W, C), kernel (T, KH, KW, C, F), bias (T, F) or NULL -> (T, N, OH, OW, F);
 * task t's slice is conv2d(x[t], kernel[t], bias[t]), with the same numbers. Gradients of any
 * order. */
ml_status ml_conv2d_batched(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias,
                            int stride_h, int stride_w, ml_padding padding);
/* Depthwise convolution: x (N, H, W, C), kernel (KH, KW, C, M), bias (C*M) or NULL ->
 * (N, OH, OW, C*M); output channel c*M + m is channel c convolved with kernel[:, :, c, m]
 * (Keras' DepthwiseConv2D with depth_multiplier M). Padding and strides as conv2d; gradients
 * of any order. */
ml_status ml_depthwise_conv2d(ml_tensor **out, ml_tensor *x, ml_tensor *kernel, ml_tensor *bias,
                              int stride_h, int stride_w, ml_padding padding);
/* Max over each window; the gradient goes to the first maximum of a window (row-major
 * order inside the window, as PyTorch). SAME padding never picks a padded position. */
ml_status ml_max_pool2d(ml_tensor **out, ml_tensor *x, int pool_h, int pool_w, int stride_h,
                        int stride_w, ml_padding padding);
/* Mean over each window; with SAME padding only the window's elements inside the input
 * count (as Keras). */
ml_status ml_avg_pool2d(ml_tensor **out, ml_tensor *x, int pool_h, int pool_w, int stride_h,
                        int stride_w, ml_padding padding);
/* Mean over H and W: (N, H, W, C) -> (N, C) (keepdims: (N, 1, 1, C)). */
ml_status ml_global_avg_pool2d(ml_tensor **out, ml_tensor *x, int keepdims);
/* Batch normalisation over every axis but `axis` (the channel axis, negative counts from
 * the end; Keras' default is -1). gamma, beta, moving_mean, moving_variance have shape (C);
 * gamma and beta may be NULL (scale=False / center=False).
 *  training: y = (x - mean) / sqrt(var + epsilon) * gamma + beta with the batch's mean and
 *    biased variance, one fused op whose backward is written with differentiable ops
 *    (gradients of any order; a fused C backward when nothing is recorded); then, with no
 *    gradient, moving = moving * momentum + batch_stat * (1 - momentum) in place (skipped
 *    when a moving tensor is NULL).
 *  inference: the moving statistics replace the batch's; nothing is updated.
 * Keras defaults: momentum 0.99, epsilon 1e-3. */
ml_status ml_batch_norm(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                        ml_tensor *moving_mean, ml_tensor *moving_variance, int training,
                        float momentum, float epsilon, int axis);
/* Training-mode batch normalisation of G independent groups at once: x is (G, ..., C, ...)
 * (channel axis `axis` >= 1), group g is normalised with its own batch statistics and
 * its own gamma[g], beta[g] (shape (G, C); either may be NULL). The same as calling
 * ml_batch_norm on each x[g] with no moving statistics; what vectorised MAML runs for the
 * tasks of a meta-batch, each with its own copy of the weights. Gradients of any order. */
ml_status ml_batch_norm_grouped(ml_tensor **out, ml_tensor *x, ml_tensor *gamma, ml_tensor *beta,
                                float epsilon, int axis);
/* One LSTM step's gates, as Keras' LSTM cell with its default activations: z (B, 4u) holds
 * the pre-activations of the gates i, f, c, o (in that order), c_prev (B, u) the previous
 * cell state; out is (B, 2u), [h | c] with c = sigmoid(z_f) c_prev + sigmoid(z_i) tanh(z_c)
 * and h = sigmoid(z_o) tanh(c). Gradients of any order. */
ml_status ml_lstm_cell(ml_tensor **out, ml_tensor *z, ml_tensor *c_prev);

/* --------------------------------------------------------------- optimizers */

typedef struct ml_optimizer ml_optimizer;

/* SGD with momentum and Nesterov as Keras: v = momentum*v - lr*g;
 * p += v (or p += momentum*v - lr*g with nesterov). momentum 0 is plain SGD. */
ml_status ml_sgd_new(ml_optimizer **out, float learning_rate, float momentum, int nesterov);
/* Adam (Kingma & Ba 2015, Algorithm 1) as Keras computes it:
 * lr_t = lr*sqrt(1-beta_2^t)/(1-beta_1^t); m += (1-beta_1)(g-m); v += (1-beta_2)(g^2-v);
 * p -= lr_t*m/(sqrt(v)+epsilon); AMSGrad (Reddi et al. 2018) uses max over past v. */
ml_status ml_adam_new(ml_optimizer **out, float learning_rate, float beta_1, float beta_2,
                      float epsilon, int amsgrad);
/* RMSprop as Keras 3 computes it: v = rho*v + (1-rho)*g^2; centered: a = rho*a + (1-rho)*g
 * and the denominator v - a^2 + epsilon, else v + epsilon; inc = lr*g/sqrt(denominator);
 * momentum > 0: m = momentum*m + inc, p -= m; else p -= inc. */
ml_status ml_rmsprop_new(ml_optimizer **out, float learning_rate, double rho, float momentum,
                         float epsilon, int centered);
/* Keras 3's decoupled weight decay, for any optimizer: before each update every parameter
 * decays, p = p - p * weight_decay * learning_rate (0, the default, turns it off). */
ml_status ml_optimizer_set_weight_decay(ml_optimizer *opt, float weight_decay);
float ml_optimizer_weight_decay(const ml_optimizer *opt);
/* Adagrad as Keras 3: accumulator (starting at initial_accumulator_value) += g^2;
 * p -= lr*g/sqrt(accumulator + epsilon). */
ml_status ml_adagrad_new(ml_optimizer **out, float learning_rate, float initial_accumulator_value,
                         float epsilon);
/* Nadam (Dozat 2016) as Keras 3: Adam's moments with Nesterov momentum under the schedule
 * u_t = beta_1*(1 - 0.5*0.96^t). */
ml_status ml_nadam_new(ml_optimizer **out, float learning_rate, float beta_1, float beta_2,
                       float epsilon);
/* Parameters that do not decay: exclude[i] != 0 for parameter i of the step's list (n
 * flags, the list's length; n = 0 clears). Keras' exclude_from_weight_decay. */
ml_status ml_optimizer_set_exclude_from_weight_decay(ml_optimizer *opt, int n, const int *exclude);
int ml_optimizer_exclude_from_weight_decay(const ml_optimizer *opt, int param);
/* Gradient clipping before each update, as Keras 3: one kind at a time, a threshold > 0
 * (0 turns it off). ml_optimizer_clip gives the threshold of `clip`, 0 if another is on. */
typedef enum { ML_CLIP_NONE, ML_CLIP_VALUE, ML_CLIP_NORM, ML_CLIP_GLOBAL_NORM } ml_clip_kind;
ml_status ml_optimizer_set_clip(ml_optimizer *opt, ml_clip_kind clip, float value);
float ml_optimizer_clip(const ml_optimizer *opt, ml_clip_kind clip);
/* Keras 3's EMA: after each update avg = m*avg + (1-m)*p (m = 0 on the first step, then
 * ema_momentum); every ema_overwrite_frequency steps (0: never) p = avg. The average is the
 * last state slot. use_ema is fixed by the first step. */
ml_status ml_optimizer_set_use_ema(ml_optimizer *opt, int use_ema, float ema_momentum,
                                   int64_t ema_overwrite_frequency);
int ml_optimizer_use_ema(const ml_optimizer *opt);
/* Copies the moving average into the parameters (nothing without EMA or before a step). */
ml_status ml_optimizer_finalize_variable_values(ml_optimizer *opt, int n, ml_tensor *const *params);
/* Keras 3's learning-rate schedules, evaluated in float32 from the step count before each
 * step (so a replayed trace applies each step's rate). args:
 *   EXPONENTIAL_DECAY, INVERSE_TIME_DECAY: initial_learning_rate, decay_steps, decay_rate,
 *     staircase (0 or 1);
 *   COSINE_DECAY: initial_learning_rate, decay_steps, alpha, warmup_target (NaN: none),
 *     warmup_steps;
 *   PIECEWISE_CONSTANT_DECAY: k increasing boundaries then k + 1 values (2k + 1 numbers);
 *   POLYNOMIAL_DECAY: initial_learning_rate, decay_steps, end_learning_rate (>= 0), power
 *     (>= 0), cycle (0 or 1).
 * ML_SCHEDULE_NONE returns to learning_rate. */
typedef enum {
    ML_SCHEDULE_NONE,
    ML_SCHEDULE_EXPONENTIAL_DECAY,
    ML_SCHEDULE_INVERSE_TIME_DECAY,
    ML_SCHEDULE_COSINE_DECAY,
    ML_SCHEDULE_PIECEWISE_CONSTANT_DECAY,
    ML_SCHEDULE_POLYNOMIAL_DECAY
} ml_schedule;
ml_status ml_optimizer_set_learning_rate_schedule(ml_optimizer *opt, ml_schedule kind,
                                                  const double *args, int n_args);
ml_schedule ml_optimizer_learning_rate_schedule(const ml_optimizer *opt);
void ml_optimizer_free(ml_optimizer *opt);
/* One update of every parameter. All shapes are checked before anything changes.
 * The first call fixes the parameter list's shapes; later calls must match it. */
ml_status ml_optimizer_step(ml_optimizer *opt, int n, ml_tensor *const *params,
                            ml_tensor *const *grads);
ml_status ml_optimizer_set_learning_rate(ml_optimizer *opt, float learning_rate);
/* The rate of the next step (the schedule's, when one is set). */
float ml_optimizer_learning_rate(const ml_optimizer *opt);
int64_t ml_optimizer_iterations(const ml_optimizer *opt);
/* The optimizer's state slots (momentum, m, v, vhat) per parameter, for checkpoints. */
int ml_optimizer_n_slots(const ml_optimizer *opt);
ml_status ml_optimizer_slot(ml_tensor **out, ml_optimizer *opt, int param, int slot);
ml_status ml_optimizer_reset(ml_optimizer *opt);
/* Sets the state a checkpoint saved: the parameter list (as a first step fixes it; `n`
 * params, each the shape the optimizer was built for when it has been built), the step
 * count, and slots[i * n_slots + s], a tensor of params[i]'s shape, for every parameter
 * i and slot s. Everything is checked before anything changes. */
ml_status ml_optimizer_restore(ml_optimizer *opt, int n, ml_tensor *const *params,
                               int64_t iterations, ml_tensor *const *slots);
int ml_optimizer_n_params(const ml_optimizer *opt);

/* ------------------------------------------------------------------- random */

/* The global generator (one per process; seeded from 0 by default). */
void ml_rng_seed(uint64_t seed);
/* Uniform in [minval, maxval). */
ml_status ml_random_uniform(ml_tensor **out, int ndim, const int64_t *shape, float minval,
                            float maxval);
ml_status ml_random_normal(ml_tensor **out, int ndim, const int64_t *shape, float mean,
                           float stddev);
/* Normal values redrawn until they lie within two standard deviations (as Keras). */
ml_status ml_truncated_normal(ml_tensor **out, int ndim, const int64_t *shape, float mean,
                              float stddev);
ml_status ml_rng_permutation(int64_t *out, int64_t n);
uint64_t ml_rng_next_u64(void);
/* The generator's four state words (a checkpoint's copy), and setting them back: the
 * draws that follow are those that followed when the state was read. An all-zero state
 * is refused (ML_ERR_VALUE) and nothing changes. */
void ml_rng_state(uint64_t out[4]);
ml_status ml_rng_set_state(const uint64_t state[4]);

/* ------------------------------------------------------------- weight files */

/* File layout (little-endian): "MLWEIGHT" | u32 version=1 | u32 count |
 *   count * { u32 name_len | name bytes | u32 ndim | ndim * i64 shape | float32 data } |
 *   u32 crc32 of everything before it.
 * Written to a new temporary file `.mlw.XXXXXXXXXX` in the target's directory (unique per
 * call: threads and processes saving to one path do not collide), fsync'ed, renamed over
 * `path`, and the directory fsync'ed: a crash keeps the old file. A symbolic link is
 * followed (its target is replaced, the link kept); an existing `path` that is not a
 * regular file (directory, device, FIFO) is refused (ML_ERR_IO) and left as it is. A
 * failed save removes its temporary file and leaves `path` unchanged. */
ml_status ml_save_tensors(const char *path, int n, const char *const *names,
                          ml_tensor *const *tensors);
/* Reads and checks the whole file before returning anything. On success *n_out tensors
 * and names (each malloc'ed; free with ml_free_loaded). */
ml_status ml_load_tensors(const char *path, int *n_out, char ***names_out,
                          ml_tensor ***tensors_out);
void ml_free_loaded(int n, char **names, ml_tensor **tensors);
/* Writes `size` bytes to `path` as weight files are written (a unique temporary file,
 * fsync'ed, renamed over `path`; links followed, special files refused): readers of `path`
 * see the old contents or the new, never a part. */
ml_status ml_write_file(const char *path, const void *data, size_t size);
uint32_t ml_crc32(uint32_t crc, const void *data, size_t len);

/* -------------------------------------------------------------------- traces */

/* Record what a computation does once, replay it from C with new inputs: no Python, no
 * graph building per op. Between begin and end, every op run on this thread is recorded
 * (ml_grad's backward ops too). Tensors that no recorded op made and that are not inputs
 * are captured by reference: a replay reads their current values. Replays record nothing.
 *
 * Threads: recording belongs to the thread that called ml_trace_begin; ml_trace_end and
 * ml_trace_abort from any other thread fail (ML_ERR_GRAPH) and change nothing. Freeing a
 * trace that another thread is recording is deferred until that thread ends or aborts it.
 * A finished trace is read-only: any thread may replay it, several at once. */
typedef struct ml_trace ml_trace;
ml_status ml_trace_begin(ml_trace **out, int n_inputs, ml_tensor *const *inputs);
/* Ends recording (on the thread that began it); on failure the trace can only be freed. */
ml_status ml_trace_end(ml_trace *trace, int n_outputs, ml_tensor *const *outputs);
/* Stops recording (after a failure; on the thread that began it); the trace can only be
 * freed. A trace that is not recording: nothing to do, ML_OK. */
ml_status ml_trace_abort(ml_trace *trace);
void ml_trace_free(ml_trace *trace);
/* 1 while this thread records a trace (ops run now are recorded), else 0. */
int ml_is_tracing(void);
/* Inputs must have the recorded shapes; outputs get new references. Not while this thread
 * records a trace. */
ml_status ml_trace_replay(ml_trace *trace, ml_tensor *const *inputs, ml_tensor **outputs);
/* n_calls independent replays (inputs n_calls x n_inputs, outputs n_calls x n_outputs,
 * row-major) over n_threads threads; the results do not depend on n_threads. */
ml_status ml_trace_replay_many(ml_trace *trace, int n_calls, ml_tensor *const *inputs,
                               ml_tensor **outputs, int n_threads);
int ml_trace_n_ops(const ml_trace *trace);
int ml_trace_n_inputs(const ml_trace *trace);
int ml_trace_n_outputs(const ml_trace *trace);
/* A finished trace as text, one line per entry in replay order: the op's name, its outputs
 * and inputs with their shapes (x: the trace's inputs, c: tensors it captured, t: tensors
 * entries compute), and for an entry fused from several recorded ops, those ops:
 *    0  t6 (8, 16) = matmul_into(x0 (8, 4), c2 (4, 16), c4 (16,))  [fused: matmul + add + relu]
 * ml_trace_format writes at most size bytes of it, NUL-terminated, into buf and returns
 * the text's length, as snprintf does (size 0: only the length); a trace that is not
 * finished gives "" and 0. ml_trace_print writes it to f. */
size_t ml_trace_format(const ml_trace *trace, char *buf, size_t size);
ml_status ml_trace_print(const ml_trace *trace, FILE *f);

/* ------------------------------------------------------------------- kernels */

/* C = alpha * op(A) @ op(B) + beta * C, row-major; op(A) is m x k, op(B) is k x n. */
void ml_sgemm(int transpose_a, int transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
              int64_t ldc);
/* "avx2" or "portable": the kernel chosen at run time (ML_KERNEL=portable forces it). */
const char *ml_kernel_name(void);
/* Every run-time dispatch site of the library and the variant it runs ("avx2" or
 * "portable"): fills up to cap entries of names and variants (strings that live as long as
 * the process), returns how many sites there are. */
int ml_kernel_variants(const char **names, const char **variants, int cap);
/* y[i] = amplitude * sin(x[i] - phase) for i < m, float32 with the sine rounded once from
 * double: the same bits on every x86-64 build and kernel variant (sinusoid tasks). */
void ml_sinusoid(const float *x, float phase, float amplitude, float *y, int64_t m);

/* Tensor storage the core allocated: stats[0] the bytes in use now, stats[1] the most in
 * use at once since the start or the last reset (reset_peak != 0 sets it to the bytes in
 * use now, after reading it), stats[2] the bytes of freed blocks the threads' buffer pools
 * keep for reuse. Memory wrapped with ml_tensor_wrap is not counted. */
void ml_storage_stats(int64_t stats[3], int reset_peak);
/* How many tensors ml_grad has recomputed since the process started: outputs of a
 * subtraction or a batch norm that only graph nodes held, whose storage went back and which
 * a backward then read. Each is one more pass of its forward, the time paid for the memory
 * saved. */
int64_t ml_recompute_count(void);

/* Threads used inside one large op (GEMM, convolution): n <= 0 restores the default
 * (METALEARN_NUM_THREADS, else the online CPUs). Results do not depend on it. */
void ml_set_num_threads(int n);
int ml_get_num_threads(void);
/* When METALEARN_NUM_THREADS holds a value the core refuses and no one has reported it yet:
 * writes what was refused and what is used instead into `why` (cap bytes), marks it
 * reported and returns 1 (an embedding program reports it its own way: the Python binding
 * as a warning at import); else 0. Unclaimed, the core prints it on stderr at first use. */
int ml_num_threads_env_warning(char *why, size_t cap);

/* ---------------------------------------------------------- knowledge memory */

/* The key-value memory of Kaiser, Nachum, Roy & Bengio 2017, "Learning to Remember Rare
 * Events" (ICLR), §3. `capacity` slots, each a key of `key_size` floats kept L2-normalised
 * (|q| is computed as sqrt(sum q^2 + 1e-12), so a zero query stays zero), a value (an int64
 * label and an optional payload of `payload_size` floats) and an int64 age.
 *  - Occupied slots are the prefix [0, size): empty slots count as the oldest and are
 *    filled in index order, so a search costs in proportion to what is stored.
 *  - Queries must be finite (NaN/Inf refused with ML_ERR_VALUE, nothing changes).
 *  - Thread safe: queries, reads and saves share a read lock; updates, clears and loads
 *    take it exclusively. ml_memory_free must wait until no call on the memory runs (the
 *    Python binding refuses to re-initialise a memory in use). `seed` seeds the memory's own xoshiro256** stream (tie-breaks);
 *    clear() reseeds it, save/load carry it, so a run replays bit for bit. */
typedef struct ml_memory ml_memory;

ml_status ml_memory_new(ml_memory **out, int64_t capacity, int64_t key_size, int64_t payload_size,
                        uint64_t seed);
void ml_memory_free(ml_memory *mem); /* NULL is allowed */
int64_t ml_memory_capacity(const ml_memory *mem);
int64_t ml_memory_key_size(const ml_memory *mem);
int64_t ml_memory_payload_size(const ml_memory *mem);
/* Number of occupied slots, and that number over the capacity. */
int64_t ml_memory_size(ml_memory *mem);
double ml_memory_occupancy(ml_memory *mem);
/* Empties every slot and reseeds the stream with the creation seed. */
ml_status ml_memory_clear(ml_memory *mem);
/* Copies of the whole slabs (capacity rows each; any pointer may be NULL). */
ml_status ml_memory_state(ml_memory *mem, float *keys, int64_t *labels, int64_t *ages,
                          float *payloads);
/* Exact k-nearest search by cosine similarity over every occupied slot: q (n x key_size),
 * 1 <= k <= capacity. Outputs (n x k, any may be NULL), best first, equal similarities in
 * slot order: slot indices, cosine similarities, labels, payloads (n x k x payload_size).
 * When fewer than k slots are occupied the rest is index -1, similarity -inf, label -1,
 * zero payload. Scores come from the GEMM kernel over cache-sized blocks of keys. */
ml_status ml_memory_query(ml_memory *mem, int64_t n, const float *q, int64_t k, int64_t *out_idx,
                          float *out_sim, int64_t *out_labels, float *out_payloads);
/* ml_memory_query over the slots whose label is one of labels[0 : n_labels] only
 * (n_labels < 0: every slot, as ml_memory_query). Batches of up to 8 queries scan the keys
 * once, split over threads by blocks of 4096 slots: the same bits at any thread count.
 * nprobe: 0, the memory's index with its own nprobe (exact when it has none); > 0, the
 * index with that many lists (ML_ERR_VALUE without an index or above nlist); -1, exact. */
ml_status ml_memory_query_where(ml_memory *mem, int64_t n, const float *q, int64_t k,
                                int64_t n_labels, const int64_t *labels, int64_t nprobe,
                                int64_t *out_idx, float *out_sim, int64_t *out_labels,
                                float *out_payloads);
/* The approximate index (IVF-flat): nlist centroids of a seeded spherical k-means (n_iter
 * rounds on `sample` keys drawn with seed; 0: 64 per list, at most size), then every
 * occupied slot in the list of its key's nearest centroid. From then on query, update, read
 * and loss search the nprobe nearest lists (the update rule acts on the neighbours found)
 * and every key write moves its slot's list. Refused (ML_ERR_VALUE, nothing changed) for
 * nlist outside [1, size], nprobe outside [1, nlist], n_iter outside [1, 1000]. Replaces
 * an index already there; load drops it (the file holds none). */
ml_status ml_memory_build_index(ml_memory *mem, int64_t nlist, int64_t nprobe, uint64_t seed,
                                int64_t n_iter, int64_t sample);
ml_status ml_memory_drop_index(ml_memory *mem); /* back to exact search */
ml_status ml_memory_set_nprobe(ml_memory *mem, int64_t nprobe);
/* params (6): nlist (0: no index), nprobe, seed, n_iter, sample, stale (a list could not
 * grow: exact search until rebuilt); centroids (nlist x key_size); lists (capacity: each
 * slot's list, -1 for none). NULL outputs are skipped. */
ml_status ml_memory_index_state(ml_memory *mem, int64_t *params, float *centroids, int64_t *lists);
/* The update rule of the paper, applied to the n queries in order (each sees the writes of
 * those before it). For query q with label y and n1 its nearest occupied slot:
 *   label[n1] == y: key[n1] <- normalize(normalize(q) + key[n1]);
 *                   payload[n1] <- (payload[n1] + payload) / 2 (kept when payloads is NULL)
 *   otherwise:      (normalize(q), y, payload or zeros) goes to the oldest slot: the next
 *                   empty one, else the largest age, ties broken at random by the stream.
 * Ages: one call is one step of the paper: every occupied age grows by 1 and every slot the
 * call wrote or merged ends at age 0. payloads (n x payload_size) may be NULL. A label of
 * -1 (what query returns for an empty slot) is refused (ML_ERR_VALUE), nothing changed. */
ml_status ml_memory_update(ml_memory *mem, int64_t n, const float *q, const int64_t *labels,
                           const float *payloads);
/* ml_memory_update that also writes the slot each query wrote or merged into (n; a slot is
 * a key's id until it is overwritten or removed). */
ml_status ml_memory_update_slots(ml_memory *mem, int64_t n, const float *q, const int64_t *labels,
                                 const float *payloads, int64_t *out_slots);
/* Stores each (normalize(q), label, payload) in a slot of its own, without the merge rule:
 * the slot a new pair gets in an update (empty first, else the oldest); one step of ages.
 * out_slots (n, may be NULL): the slots written. */
ml_status ml_memory_add(ml_memory *mem, int64_t n, const float *q, const int64_t *labels,
                        const float *payloads, int64_t *out_slots);
/* Empties the slots ids[0 : n] (label -1, zero key and payload): no search returns them and
 * they are the first reused. An id that is not an occupied slot, or repeated, is refused
 * (ML_ERR_VALUE) and nothing changes. */
ml_status ml_memory_remove(ml_memory *mem, int64_t n, const int64_t *ids);
/* Compact keys (opt-in): the scan of up to 8 queries reads a float16 copy of the keys (half
 * the bytes) or an int8 one with a scale per key (max|x| / 127, rounded to nearest even: a
 * quarter), picks its top-k by them and scores those k with the float32 keys, which stay
 * the truth for updates, reads, larger batches and files. Approximate: see recall@k in
 * benchmarks/memory_query.py. ML_KEY_FLOAT32 (the default) turns it off. */
enum { ML_KEY_FLOAT32 = 0, ML_KEY_FLOAT16 = 1, ML_KEY_INT8 = 2 };
ml_status ml_memory_set_key_dtype(ml_memory *mem, int dtype);
int ml_memory_key_dtype(const ml_memory *mem);
/* Differentiable soft read, q (n x key_size) a tensor: with s_j the cosine similarities of
 * normalize(q) to its top-k keys (held as constants), w = softmax(s / temperature) (n x k)
 * and out = sum_j w_j payload_j (n x payload_size). Both are recorded, the gradient reaches
 * q through the normalisation, to any order. Positions beyond the occupied slots get
 * weight 0. `out` needs payload_size > 0; either output may be NULL (not both). */
ml_status ml_memory_read(ml_tensor **out, ml_tensor **out_weights, ml_memory *mem, ml_tensor *q,
                         int64_t k, float temperature);
/* The memory loss of the paper, per query (n): relu(qn·k_neg - qn·k_pos + margin), qn =
 * normalize(q), k_pos the nearest of the top-k keys whose label is labels[i], k_neg the
 * nearest whose label differs; a missing one counts as similarity 0 (as the paper's code).
 * Recorded: the gradient reaches q (the keys are constants). The paper's margin is 0.1. */
ml_status ml_memory_loss(ml_tensor **out, ml_memory *mem, ml_tensor *q, int64_t n_labels,
                         const int64_t *labels, int64_t k, float margin);
/* File layout (little-endian), version 2: "MLMEMORY" | u32 version=2 | u32 header bytes=128 |
 *   u64 capacity | u64 key_size | u64 payload_size | u64 size | u64 seed | 4 * u64 stream
 *   state | 4 * u32 crc32 of the keys, labels, ages, payloads | 20 zero bytes | u32 crc32 of
 *   the header's first 124 bytes | then size*key_size f32 keys, size i64 labels, size i64
 *   ages, size*payload_size f32 payloads, each starting on a multiple of 64 bytes (zero
 *   padding). Version 1 (read, no longer written): the same fields up to the stream state,
 *   the slabs unpadded from byte 84, then a crc32 of all before it (memory/mmap.c).
 * Saved as weight files are (see ml_save_tensors): a unique temporary file in the target's
 * directory, fsync'ed and renamed over `path`; links followed, special files refused. */
ml_status ml_memory_save(ml_memory *mem, const char *path);
/* Checks the whole file (magic, version, sizes, checksum, finite keys) before touching the
 * memory; a file of another capacity/key size/payload size is refused (ML_ERR_VALUE). On
 * failure the memory is unchanged. */
ml_status ml_memory_load(ml_memory *mem, const char *path);
/* A new memory with the sizes, contents and stream of a file. */
ml_status ml_memory_open(ml_memory **out, const char *path);
/* A new read-only memory searching a file where it lies: the file is checked as by
 * ml_memory_load (once, here) and mapped read-only; a version-2 file's 64-byte aligned slabs
 * are searched in place (a file larger than RAM opens), a version-1 file is read into RAM.
 * Searches, reads, losses, compact keys and an index work as on a loaded memory, with the
 * same results; writes (update, add, remove, clear, load) are refused (ML_ERR_VALUE).
 * ml_memory_free unmaps the file. */
ml_status ml_memory_open_mapped(ml_memory **out, const char *path);
int ml_memory_read_only(const ml_memory *mem); /* 1 when opened by ml_memory_open_mapped */

#ifdef __cplusplus
}
#endif
#endif /* METALEARN_H */
