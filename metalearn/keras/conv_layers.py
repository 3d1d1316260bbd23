"""Convolution, pooling and batch-normalisation layers, as ``keras.layers`` (channels last).

Every layer is a thin shell over one core op (``_core.conv2d``, ``max_pool2d``,
``avg_pool2d``, ``global_avg_pool2d``, ``batch_norm``), each with first- and
higher-order gradients in C, so second-order MAML runs through a conv net.
"""

import numpy as np

from metalearn import _core
from metalearn import functional as _functional

from . import activations, constraints, initializers, regularizers
from . import batched as _batched
from .layers import Layer

__all__ = [
    "Conv2D",
    "MaxPool2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "AvgPool2D",
    "GlobalAveragePooling2D",
    "GlobalAvgPool2D",
    "BatchNormalization",
]


def _pair(value, name, what):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name}: {what} must be a positive int or a pair of them, got {value!r}")
    return value


def _padding(value, name):
    p = str(value).lower()
    if p not in ("valid", "same"):
        raise ValueError(f"{name}: padding must be 'valid' or 'same', got {value!r}")
    return p


def _check_4d(layer, inputs):
    if len(inputs.shape) != 4:
        raise ValueError(
            f"{layer.name}: expected inputs of shape (batch, height, width, channels), "
            f"got {tuple(inputs.shape)}"
        )


def _as_core(x):
    if isinstance(x, _core.Tensor):
        return x
    return _core.as_tensor(np.ascontiguousarray(x, dtype=np.float32))


def _add_kernel_and_bias(layer, kernel_shape):
    """A convolution's ``kernel`` and (with ``use_bias``) ``bias`` of ``filters``, with the
    layer's initializers, regularizers and constraints (Conv1D, Conv2D)."""
    layer.kernel = layer.add_weight(
        "kernel",
        tuple(kernel_shape),
        layer.kernel_initializer,
        regularizer=layer.kernel_regularizer,
        constraint=layer.kernel_constraint,
    )
    layer.bias = (
        layer.add_weight(
            "bias",
            (layer.filters,),
            layer.bias_initializer,
            regularizer=layer.bias_regularizer,
            constraint=layer.bias_constraint,
        )
        if layer.use_bias
        else None
    )


class Conv2D(Layer):
    """2-D convolution layer (channels last): ``activation(conv2d(inputs, kernel) + bias)``.

    Args:
        filters: number of output channels.
        kernel_size: int or pair ``(kh, kw)``.
        strides: int or pair (default 1).
        padding: ``"valid"`` (no padding) or ``"same"`` (output size ``ceil(in / stride)``,
            TensorFlow's padding split).
        dilation_rate: int or pair (default 1): taps ``dilation_rate`` apart (the kernel
            with zeros between its taps); not with strides > 1, as Keras.
        groups: 1 only (the core has no grouped convolution).
        activation: activation (name or callable); None means linear.
        use_bias: whether to add a bias vector.
        kernel_initializer, bias_initializer: as for Dense.
        kernel_regularizer, bias_regularizer, activity_regularizer: as for Dense.

    Input shape:
        ``(batch, height, width, channels)``.

    Output shape:
        ``(batch, new_height, new_width, filters)``.
    """

    _traceable = True

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError("Conv2D: only data_format='channels_last' is supported")
        if groups != 1:
            raise ValueError(f"Conv2D: only groups=1 is supported, got groups={groups!r}")
        if not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"Conv2D: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "Conv2D", "kernel_size")
        self.strides = _pair(strides, "Conv2D", "strides")
        self.dilation_rate = _pair(dilation_rate, "Conv2D", "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "Conv2D: `strides > 1` not supported in conjunction with `dilation_rate > 1`. "
                f"Received: strides={self.strides} and dilation_rate={self.dilation_rate}"
            )
        self.groups = 1
        self.padding = _padding(padding, "Conv2D")
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self._channels = None

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: Conv2D needs inputs (batch, height, width, channels), got "
                f"{input_shape}"
            )
        self._channels = int(input_shape[-1])
        _add_kernel_and_bias(self, self.kernel_size + (self._channels, self.filters))
        self.built = True

    def _batched_form(self, index):
        # per-task kernels through conv2d_batched; a dilated kernel has no batched form
        kernel = index.get(id(self.kernel))
        bias = None if self.bias is None else index.get(id(self.bias))
        if kernel is None or (self.bias is not None and bias is None):
            return None
        if self.dilation_rate != (1, 1):
            return None
        act = None if self.activation is activations.linear else self.activation
        return _batched.Conv2D(kernel, bias, self.strides, self.padding, act)

    def call(self, inputs):
        _check_4d(self, inputs)
        if inputs.shape[-1] != self._channels:
            raise ValueError(
                f"{self.name}: expected {self._channels} input channels, got {tuple(inputs.shape)}"
            )
        kernel = self.kernel
        if self.dilation_rate != (1, 1):
            kernel = _dilate(kernel, self.dilation_rate)
        out = _core.conv2d(inputs, kernel, self.bias, self.strides, self.padding)
        if self.activation is not activations.linear:
            out = self.activation(out)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            groups=self.groups,
            activation=activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer)
            if isinstance(self.kernel_initializer, initializers.Initializer)
            else None,
            bias_initializer=initializers.serialize(self.bias_initializer)
            if isinstance(self.bias_initializer, initializers.Initializer)
            else None,
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            kernel_constraint=constraints.serialize(self.kernel_constraint),
            bias_constraint=constraints.serialize(self.bias_constraint),
        )
        return config


class _Pool2D(Layer):
    _op = None
    _label = ""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self._label}: only data_format='channels_last' is supported")
        self.pool_size = _pair(pool_size, self._label, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, self._label, "strides")
        self.padding = _padding(padding, self._label)

    def call(self, inputs):
        _check_4d(self, inputs)
        return getattr(_core, self._op)(
            _as_core(inputs), self.pool_size, self.strides, self.padding
        )

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return config


class MaxPool2D(_Pool2D):
    """Max pooling over ``pool_size`` windows (channels last); strides default to pool_size.

    Input shape:
        ``(batch, height, width, channels)``.

    Output shape:
        ``(batch, pooled_height, pooled_width, channels)``: ``floor((in - pool) / stride) + 1``
        for ``"valid"``, ``ceil(in / stride)`` for ``"same"``.
    """

    _traceable = True
    _op = "max_pool2d"
    _label = "MaxPool2D"

    def _batched_form(self, index):
        return _batched.Pool2D(_core.max_pool2d, self.pool_size, self.strides, self.padding)


class AveragePooling2D(_Pool2D):
    """Average pooling over ``pool_size`` windows (channels last); with ``"same"`` padding
    only the elements inside the input are averaged, as Keras does.

    Input shape:
        ``(batch, height, width, channels)``.

    Output shape:
        ``(batch, pooled_height, pooled_width, channels)``.
    """

    _traceable = True
    _op = "avg_pool2d"
    _label = "AveragePooling2D"

    def _batched_form(self, index):
        return _batched.Pool2D(_core.avg_pool2d, self.pool_size, self.strides, self.padding)


MaxPooling2D = MaxPool2D
AvgPool2D = AveragePooling2D


class GlobalAveragePooling2D(Layer):
    """Mean over height and width.

    Args:
        keepdims: keep the spatial dims (as size 1).

    Input shape:
        ``(batch, height, width, channels)``.

    Output shape:
        ``(batch, channels)``, or ``(batch, 1, 1, channels)`` with keepdims.
    """

    _traceable = True

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "GlobalAveragePooling2D: only data_format='channels_last' is supported"
            )
        self.keepdims = bool(keepdims)

    def call(self, inputs):
        _check_4d(self, inputs)
        return _core.global_avg_pool2d(_as_core(inputs), keepdims=self.keepdims)

    def get_config(self):
        config = super().get_config()
        config["keepdims"] = self.keepdims
        return config


GlobalAvgPool2D = GlobalAveragePooling2D


class BatchNormalization(Layer):
    """Normalises the last axis with batch statistics (training) or moving ones (inference).

    Training: ``gamma * (x - mean_batch) / sqrt(var_batch + epsilon) + beta`` (biased
    variance), and the moving statistics move towards the batch's:
    ``moving = moving * momentum + batch * (1 - momentum)``. Inference: the moving
    statistics replace the batch's. Gradients (of any order) flow through the batch
    statistics.

    A frozen layer (``trainable=False``, set on it or on an enclosing model) always runs
    in inference mode, also when called with ``training=True`` (Keras 3's rule): its
    moving statistics neither change nor give way to the batch's.

    Inside ``functional_call`` with substituted weights (the MAML inner loop, adapted
    evaluation) the layer uses the batch statistics in training mode but does not write
    its moving statistics: a functional call never changes the model, as in the MAML
    reference implementations, which always normalise with the batch's statistics.

    Args:
        axis: only -1 (channels last) is supported.
        momentum: of the moving averages (0.99).
        epsilon: added to the variance (1e-3).
        center: learn an offset ``beta``; scale: learn a factor ``gamma``.

    Input shape:
        Arbitrary; normalised over every axis but the last.

    Output shape:
        Same as the input.
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if axis not in (-1,):
            raise ValueError(f"BatchNormalization: only axis=-1 is supported, got {axis!r}")
        self.axis = -1
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"{self.name}: the last dimension of the input must be known")
        shape = (int(dim),)
        self.gamma = self.add_weight("gamma", shape, self.gamma_initializer) if self.scale else None
        self.beta = self.add_weight("beta", shape, self.beta_initializer) if self.center else None
        self.moving_mean = self.add_weight(
            "moving_mean", shape, self.moving_mean_initializer, trainable=False
        )
        self.moving_variance = self.add_weight(
            "moving_variance", shape, self.moving_variance_initializer, trainable=False
        )
        self.built = True

    def _batched_form(self, index):
        # batch statistics per task, as a per-task functional call uses them; a frozen
        # layer normalises with its moving statistics instead: no batched form
        if self.axis != -1 or not self.trainable:
            return None
        gamma = None if self.gamma is None else index.get(id(self.gamma))
        beta = None if self.beta is None else index.get(id(self.beta))
        if (self.gamma is not None and gamma is None) or (self.beta is not None and beta is None):
            return None
        return _batched.BatchNormalization(gamma, beta, self.epsilon)

    def call(self, inputs, training=None):
        # a frozen layer (trainable=False) runs in inference mode even in training, as
        # Keras 3 does: fine-tuning on top of it neither moves nor uses batch statistics
        training = bool(training) and self._trainable
        mm, mv = self.moving_mean, self.moving_variance
        if training:
            subst = _functional.substitution()
            if subst and any(id(v) in subst for v in self._own_weights):
                mode = _functional.batch_norm_mode()
                if isinstance(mode, tuple):  # ("rows", n): the first n rows' statistics
                    return self._normalise_by_rows(_as_core(inputs), int(mode[1]))
                if mode != "update":
                    mm = mv = None  # functional call: batch statistics, state untouched
        return _core.batch_norm(
            _as_core(inputs),
            self.gamma,
            self.beta,
            mm,
            mv,
            training=training,
            momentum=self.momentum,
            epsilon=self.epsilon,
        )

    def _normalise_by_rows(self, x, n):
        """gamma * (x - mean) / sqrt(var + epsilon) + beta with the mean and biased
        variance of the first n rows, as core ops (gradients of any order)."""
        if n > int(x.shape[0]):
            raise ValueError(
                f"{self.name}: statistics from the first {n} rows of a batch of {int(x.shape[0])}"
            )
        axes = tuple(range(len(x.shape) - 1))
        rows = _core.narrow(x, 0, 0, n)
        mean = _core.reduce_mean(rows, axis=axes, keepdims=True)
        var = _core.reduce_mean(_core.square(rows - mean), axis=axes, keepdims=True)
        y = (x - mean) / _core.sqrt(var + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y

    def get_config(self):
        config = super().get_config()
        config.update(
            axis=self.axis,
            momentum=self.momentum,
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
        )
        for key in (
            "beta_initializer",
            "gamma_initializer",
            "moving_mean_initializer",
            "moving_variance_initializer",
        ):
            init = getattr(self, key)
            config[key] = (
                initializers.serialize(init) if isinstance(init, initializers.Initializer) else None
            )
        return config


# ------------------------------------------------------------------------------------------
# Conv1D, DepthwiseConv2D, SeparableConv2D, UpSampling2D, ZeroPadding2D, Cropping2D
# (issue 22). Each is made of core ops with gradients of any order: conv2d, the
# depthwise_conv2d op, reshape/broadcast_to/matmul (upsampling), pad_axis and narrow.


def _ints(value, n, name, what, minimum=1):
    """Keras' standardize_tuple (and its messages): an int or n ints, each >= minimum."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * n
    bad = (
        f"{name}: The `{what}` argument must be a tuple of {n} integers. Received {what}={value!r}"
    )
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != n:
        raise ValueError(bad)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise ValueError(bad)
    value = tuple(int(v) for v in value)
    low = {v for v in value if v < minimum}
    if low:
        raise ValueError(
            f"{bad}, including values {low} that do not satisfy "
            f"`value {'> 0' if minimum == 1 else '>= 0'}`"
        )
    return value


def _check_rank(layer, inputs, rank, what):
    if len(inputs.shape) != rank:
        raise ValueError(
            f"{layer.name}: {type(layer).__name__} expects inputs of shape {what} "
            f"(rank {rank}), got shape {tuple(inputs.shape)}"
        )


def _out_size(size, window, stride, padding):
    """Keras' output length of one dim (None stays None)."""
    if size is None:
        return None
    if padding == "valid":
        return (size - window) // stride + 1 if size >= window else 0
    return (size + stride - 1) // stride  # same, causal


def _dilate(kernel, rates):
    """The kernel with rate - 1 zeros between its taps along its first len(rates) axes (a
    dilated convolution is the plain one with this kernel); made of reshape, pad_axis and
    narrow, so its gradient is the kernel's taps again, to any order."""
    for axis, d in enumerate(rates):
        if d == 1:
            continue
        shape = tuple(kernel.shape)
        k = shape[axis]
        t = _core.reshape(kernel, shape[: axis + 1] + (1,) + shape[axis + 1 :])
        t = _core.pad_axis(t, axis + 1, 0, d)
        t = _core.reshape(t, shape[:axis] + (k * d,) + shape[axis + 1 :])
        kernel = _core.narrow(t, axis, 0, (k - 1) * d + 1)
    return kernel


def _init_config(init):
    return initializers.serialize(init) if isinstance(init, initializers.Initializer) else None


def _conv_checks(name, strides, dilation_rate):
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(
            f"{name}: `strides > 1` not supported in conjunction with `dilation_rate > 1`. "
            f"Received: strides={strides} and dilation_rate={dilation_rate}"
        )


def _data_format(value, name):
    if value not in (None, "channels_last"):
        raise ValueError(f"{name}: only data_format='channels_last' is supported, got {value!r}")
    return "channels_last"


def _check_output(layer, sizes, input_shape):
    if any(s is not None and s <= 0 for s in sizes):
        raise ValueError(
            f"{layer.name}: Computed output size would be zero or negative: the kernel is "
            f"larger than the input {tuple(input_shape)} with padding {layer.padding!r} "
            f"(kernel_size={layer.kernel_size}, strides={layer.strides}, "
            f"dilation_rate={layer.dilation_rate})"
        )


class Conv1D(Layer):
    """1-D convolution (temporal), as Keras 3's ``Conv1D``: ``activation(conv1d(inputs,
    kernel) + bias)``, run as a 2-D convolution of height 1.

    Args:
        filters: number of output channels.
        kernel_size: int (or a tuple of one).
        strides: int (default 1).
        padding: ``"valid"``, ``"same"`` (TensorFlow's split) or ``"causal"`` (zeros
            ``dilation_rate * (kernel_size - 1)`` on the left: output t sees inputs <= t).
        dilation_rate: int (default 1); not with strides > 1 (as Keras).
        groups: 1 only.
        activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: as for ``Conv2D``.

    Input shape:
        ``(batch, steps, channels)``. Kernel ``(kernel_size, channels, filters)``.

    Output shape:
        ``(batch, new_steps, filters)``.
    """

    _traceable = True

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format, "Conv1D")
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(
                "Invalid value for argument `filters`. Expected a strictly positive value. "
                f"Received filters={filters!r}."
            )
        if groups != 1:
            raise ValueError(f"Conv1D: only groups=1 is supported, got groups={groups!r}")
        self.filters = int(filters)
        self.groups = 1
        self.kernel_size = _ints(kernel_size, 1, "Conv1D", "kernel_size")
        self.strides = _ints(strides, 1, "Conv1D", "strides")
        self.dilation_rate = _ints(dilation_rate, 1, "Conv1D", "dilation_rate")
        p = str(padding).lower() if isinstance(padding, str) else None
        if p not in ("valid", "same", "causal"):
            raise ValueError(
                f"Conv1D: padding must be 'valid', 'same' or 'causal', got {padding!r}"
            )
        self.padding = p
        _conv_checks("Conv1D", self.strides, self.dilation_rate)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self._channels = None

    def _span(self):
        return (self.kernel_size[0] - 1) * self.dilation_rate[0] + 1

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: Conv1D needs inputs (batch, steps, channels), got {input_shape}"
            )
        padding = "same" if self.padding == "causal" else self.padding
        _check_output(
            self, [_out_size(input_shape[1], self._span(), self.strides[0], padding)], input_shape
        )
        self._channels = int(input_shape[-1])
        _add_kernel_and_bias(self, self.kernel_size + (self._channels, self.filters))
        self.built = True

    def call(self, inputs):
        _check_rank(self, inputs, 3, "(batch, steps, channels)")
        n, steps, c = (int(d) for d in inputs.shape)
        if c != self._channels:
            raise ValueError(
                f"{self.name}: expected {self._channels} input channels, got {tuple(inputs.shape)}"
            )
        x = _core.reshape(_as_core(inputs), (n, 1, steps, c))
        padding = self.padding
        if padding == "causal":  # left zeros, then a valid convolution
            left = self._span() - 1
            if left:
                x = _core.pad_axis(x, 2, left, steps + left)
            padding = "valid"
        out = _out_size(int(x.shape[2]), self._span(), self.strides[0], padding)
        _check_output(self, [out], tuple(inputs.shape))
        k = _core.reshape(self.kernel, (1,) + tuple(self.kernel.shape))
        k = _dilate(k, (1, self.dilation_rate[0]))
        out = _core.conv2d(x, k, self.bias, (1, self.strides[0]), padding)
        out = _core.reshape(out, (n, int(out.shape[2]), self.filters))
        if self.activation is not activations.linear:
            out = self.activation(out)
        return out

    def compute_output_shape(self, input_shape):
        padding = "same" if self.padding == "causal" else self.padding
        steps = _out_size(input_shape[1], self._span(), self.strides[0], padding)
        return (input_shape[0], steps, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
            groups=self.groups,
            activation=activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=_init_config(self.kernel_initializer),
            bias_initializer=_init_config(self.bias_initializer),
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            kernel_constraint=constraints.serialize(self.kernel_constraint),
            bias_constraint=constraints.serialize(self.bias_constraint),
        )
        return config


class _DepthwiseBase(Layer):
    """What DepthwiseConv2D and SeparableConv2D share: the depthwise step's arguments."""

    _label = ""

    def _init_depthwise(
        self, kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier
    ):
        name = self._label
        self.data_format = _data_format(data_format, name)
        if (
            isinstance(depth_multiplier, bool)
            or not isinstance(depth_multiplier, (int, np.integer))
            or depth_multiplier < 1
        ):
            raise ValueError(
                "Invalid value for argument `depth_multiplier`. Expected a strictly positive "
                f"value. Received depth_multiplier={depth_multiplier!r}."
            )
        self.depth_multiplier = int(depth_multiplier)
        self.kernel_size = _ints(kernel_size, 2, name, "kernel_size")
        self.strides = _ints(strides, 2, name, "strides")
        self.dilation_rate = _ints(dilation_rate, 2, name, "dilation_rate")
        self.padding = _padding(padding, name)
        _conv_checks(name, self.strides, self.dilation_rate)

    def _spans(self):
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation_rate))

    def _out_hw(self, input_shape):
        return [
            _out_size(input_shape[i + 1], self._spans()[i], self.strides[i], self.padding)
            for i in range(2)
        ]

    def _check_build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: {self._label} needs inputs (batch, height, width, channels), "
                f"got {input_shape}"
            )
        _check_output(self, self._out_hw(input_shape), input_shape)
        return int(input_shape[-1])

    def _depthwise(self, inputs, kernel, bias):
        _check_4d(self, inputs)
        if inputs.shape[-1] != kernel.shape[2]:
            raise ValueError(
                f"{self.name}: expected {kernel.shape[2]} input channels, got {tuple(inputs.shape)}"
            )
        if min(self._out_hw(tuple(inputs.shape))) <= 0:
            _check_output(self, self._out_hw(tuple(inputs.shape)), tuple(inputs.shape))
        k = _dilate(kernel, self.dilation_rate)
        return _core.depthwise_conv2d(_as_core(inputs), k, bias, self.strides, self.padding)

    def _depthwise_config(self):
        config = super().get_config()
        config.update(
            depth_multiplier=self.depth_multiplier,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
            activation=activations.serialize(self.activation),
            use_bias=self.use_bias,
        )
        return config


class DepthwiseConv2D(_DepthwiseBase):
    """Depthwise 2-D convolution, as Keras 3's ``DepthwiseConv2D``: each input channel is
    convolved with its own ``depth_multiplier`` filters (output channel ``c * M + m``),
    one C op (``depthwise_conv2d``) with gradients of any order.

    Args:
        kernel_size: int or pair.
        strides: int or pair (default 1).
        padding: ``"valid"`` or ``"same"``.
        depth_multiplier: filters per input channel (default 1).
        dilation_rate: int or pair (default 1); not with strides > 1 (as Keras).
        activation, use_bias: as ``Conv2D``.
        depthwise_initializer, bias_initializer, depthwise_regularizer, bias_regularizer,
        depthwise_constraint, bias_constraint: of the kernel ``(kh, kw, channels,
            depth_multiplier)`` (named ``kernel``) and the bias ``(channels * M,)``.

    Input shape:
        ``(batch, height, width, channels)``.

    Output shape:
        ``(batch, new_height, new_width, channels * depth_multiplier)``.
    """

    _traceable = True
    _label = "DepthwiseConv2D"

    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        depth_multiplier=1,
        data_format=None,
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        depthwise_initializer="glorot_uniform",
        bias_initializer="zeros",
        depthwise_regularizer=None,
        bias_regularizer=None,
        depthwise_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_depthwise(
            kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier
        )
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.depthwise_constraint = constraints.get(depthwise_constraint)
        self.bias_constraint = constraints.get(bias_constraint)

    def build(self, input_shape):
        c = self._check_build(input_shape)
        self.kernel = self.add_weight(
            "kernel",
            self.kernel_size + (c, self.depth_multiplier),
            self.depthwise_initializer,
            regularizer=self.depthwise_regularizer,
            constraint=self.depthwise_constraint,
        )
        self.bias = (
            self.add_weight(
                "bias",
                (c * self.depth_multiplier,),
                self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
            if self.use_bias
            else None
        )
        self.built = True

    def call(self, inputs):
        out = self._depthwise(inputs, self.kernel, self.bias)
        if self.activation is not activations.linear:
            out = self.activation(out)
        return out

    def compute_output_shape(self, input_shape):
        oh, ow = self._out_hw(input_shape)
        return (input_shape[0], oh, ow, input_shape[-1] * self.depth_multiplier)

    def get_config(self):
        config = self._depthwise_config()
        config.update(
            depthwise_initializer=_init_config(self.depthwise_initializer),
            bias_initializer=_init_config(self.bias_initializer),
            depthwise_regularizer=regularizers.serialize(self.depthwise_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            depthwise_constraint=constraints.serialize(self.depthwise_constraint),
            bias_constraint=constraints.serialize(self.bias_constraint),
        )
        return config


class SeparableConv2D(_DepthwiseBase):
    """Depthwise separable 2-D convolution, as Keras 3's ``SeparableConv2D``: a depthwise
    convolution (``depthwise_kernel`` ``(kh, kw, channels, depth_multiplier)``), then a
    1x1 convolution (``pointwise_kernel`` ``(1, 1, channels * M, filters)``), then the bias.

    Args:
        filters: output channels.
        kernel_size, strides, padding, depth_multiplier, dilation_rate: the depthwise
            step's, as ``DepthwiseConv2D``.
        activation, use_bias: as ``Conv2D``.
        depthwise_*, pointwise_*, bias_* initializer / regularizer / constraint: of the
            three weights.

    Output shape:
        ``(batch, new_height, new_width, filters)``.
    """

    _traceable = True
    _label = "SeparableConv2D"

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        depth_multiplier=1,
        activation=None,
        use_bias=True,
        depthwise_initializer="glorot_uniform",
        pointwise_initializer="glorot_uniform",
        bias_initializer="zeros",
        depthwise_regularizer=None,
        pointwise_regularizer=None,
        bias_regularizer=None,
        depthwise_constraint=None,
        pointwise_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(
                "Invalid value for argument `filters`. Expected a strictly positive value. "
                f"Received filters={filters!r}."
            )
        self.filters = int(filters)
        self._init_depthwise(
            kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier
        )
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.depthwise_constraint = constraints.get(depthwise_constraint)
        self.pointwise_constraint = constraints.get(pointwise_constraint)
        self.bias_constraint = constraints.get(bias_constraint)

    def build(self, input_shape):
        c = self._check_build(input_shape)
        self.depthwise_kernel = self.add_weight(
            "depthwise_kernel",
            self.kernel_size + (c, self.depth_multiplier),
            self.depthwise_initializer,
            regularizer=self.depthwise_regularizer,
            constraint=self.depthwise_constraint,
        )
        self.pointwise_kernel = self.add_weight(
            "pointwise_kernel",
            (1, 1, c * self.depth_multiplier, self.filters),
            self.pointwise_initializer,
            regularizer=self.pointwise_regularizer,
            constraint=self.pointwise_constraint,
        )
        self.bias = (
            self.add_weight(
                "bias",
                (self.filters,),
                self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
            if self.use_bias
            else None
        )
        self.built = True

    def call(self, inputs):
        mid = self._depthwise(inputs, self.depthwise_kernel, None)
        out = _core.conv2d(mid, self.pointwise_kernel, self.bias, (1, 1), "valid")
        if self.activation is not activations.linear:
            out = self.activation(out)
        return out

    def compute_output_shape(self, input_shape):
        oh, ow = self._out_hw(input_shape)
        return (input_shape[0], oh, ow, self.filters)

    def get_config(self):
        config = self._depthwise_config()
        config.update(
            filters=self.filters,
            depthwise_initializer=_init_config(self.depthwise_initializer),
            pointwise_initializer=_init_config(self.pointwise_initializer),
            bias_initializer=_init_config(self.bias_initializer),
            depthwise_regularizer=regularizers.serialize(self.depthwise_regularizer),
            pointwise_regularizer=regularizers.serialize(self.pointwise_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            depthwise_constraint=constraints.serialize(self.depthwise_constraint),
            pointwise_constraint=constraints.serialize(self.pointwise_constraint),
            bias_constraint=constraints.serialize(self.bias_constraint),
        )
        return config


def _bilinear_matrix(size, factor):
    """(size * factor, size) weights of half-pixel bilinear upsampling (PyTorch's
    align_corners=False, Keras' image.resize without antialias): output i reads
    src = max((i + 0.5) / factor - 0.5, 0) between its two neighbours."""
    out = size * factor
    src = np.maximum((np.arange(out, dtype=np.float64) + 0.5) / factor - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = src - i0
    m = np.zeros((out, size), np.float64)
    np.add.at(m, (np.arange(out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(out), i1), frac)
    return m.astype(np.float32)


class UpSampling2D(Layer):
    """Upsampling of rows and columns by integer factors, as Keras 3's ``UpSampling2D``.

    Args:
        size: int or pair ``(rows, cols)`` (default ``(2, 2)``).
        interpolation: ``"nearest"`` (each pixel repeated: a reshape and a broadcast, whose
            gradient sums the copies) or ``"bilinear"`` (half-pixel centres, as Keras'
            ``image.resize``: two products with fixed interpolation matrices).

    Input shape:
        ``(batch, rows, cols, channels)``.

    Output shape:
        ``(batch, rows * size[0], cols * size[1], channels)``.
    """

    _traceable = True
    _INTERPOLATIONS = ("nearest", "bilinear")

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format, "UpSampling2D")
        self.size = _ints(size, 2, "UpSampling2D", "size")
        interp = interpolation.lower() if isinstance(interpolation, str) else None
        if interp not in self._INTERPOLATIONS:
            raise ValueError(
                f"UpSampling2D: interpolation must be one of {self._INTERPOLATIONS}, "
                f"got {interpolation!r}"
            )
        self.interpolation = interp

    def call(self, inputs):
        _check_rank(self, inputs, 4, "(batch, rows, cols, channels)")
        x = _as_core(inputs)
        n, h, w, c = (int(d) for d in x.shape)
        sh, sw = self.size
        if self.interpolation == "nearest":
            t = _core.reshape(x, (n, h, 1, w, 1, c))
            t = _core.broadcast_to(t, (n, h, sh, w, sw, c))
            return _core.reshape(t, (n, h * sh, w * sw, c))
        ah = _core.tensor(_bilinear_matrix(h, sh))
        awt = _core.tensor(np.ascontiguousarray(_bilinear_matrix(w, sw).T))
        t = _core.transpose(x, (0, 3, 1, 2))  # (n, c, h, w)
        t = _core.matmul(_core.matmul(ah, t), awt)  # (n, c, h*sh, w*sw)
        return _core.transpose(t, (0, 2, 3, 1))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        return (
            input_shape[0],
            None if h is None else h * self.size[0],
            None if w is None else w * self.size[1],
            input_shape[3],
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            size=self.size, data_format=self.data_format, interpolation=self.interpolation
        )
        return config


def _pairs(value, name, what):
    """Keras' ((top, bottom), (left, right)) from an int, a pair of ints or a pair of
    pairs; each >= 0."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name}: `{what}` cannot be negative. Received: {what}={value}.")
        return ((int(value),) * 2,) * 2
    if not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(
            f"{name}: `{what}` should be an int, a tuple of 2 ints or a tuple of 2 tuples of "
            f"2 ints. Received: {what}={value!r}."
        )
    return tuple(_ints(v, 2, name, f"{what} entry", minimum=0) for v in value)


class ZeroPadding2D(Layer):
    """Zero rows and columns around each image, as Keras 3's ``ZeroPadding2D``.

    Args:
        padding: int (all four sides), ``(rows, cols)`` (symmetric) or
            ``((top, bottom), (left, right))``; default ``(1, 1)``.

    Output shape:
        ``(batch, rows + top + bottom, cols + left + right, channels)``.
    """

    _traceable = True

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format, "ZeroPadding2D")
        self.padding = _pairs(padding, "ZeroPadding2D", "padding")

    def call(self, inputs):
        _check_rank(self, inputs, 4, "(batch, rows, cols, channels)")
        x = _as_core(inputs)
        for axis, (before, after) in zip((1, 2), self.padding):
            if before or after:
                x = _core.pad_axis(x, axis, before, int(x.shape[axis]) + before + after)
        return x

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for axis, (before, after) in zip((1, 2), self.padding):
            if out[axis] is not None:
                out[axis] += before + after
        return tuple(out)

    def get_config(self):
        config = super().get_config()
        config.update(padding=self.padding, data_format=self.data_format)
        return config


class Cropping2D(Layer):
    """Crops rows and columns off each image, as Keras 3's ``Cropping2D``.

    Args:
        cropping: int (all four sides), ``(rows, cols)`` (symmetric) or
            ``((top, bottom), (left, right))``; default no cropping.

    Raises:
        ValueError: the cropping leaves no rows or no columns.
    """

    _traceable = True

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format, "Cropping2D")
        self.cropping = _pairs(cropping, "Cropping2D", "cropping")

    def _check(self, input_shape):
        for axis, crop in zip((1, 2), self.cropping):
            if input_shape[axis] is not None and sum(crop) >= input_shape[axis]:
                raise ValueError(
                    "Values in `cropping` argument should be smaller than the corresponding "
                    f"spatial dimension of the input. Received: input_shape="
                    f"{tuple(input_shape)}, cropping={self.cropping}"
                )

    def call(self, inputs):
        _check_rank(self, inputs, 4, "(batch, rows, cols, channels)")
        self._check(tuple(inputs.shape))
        x = _as_core(inputs)
        for axis, (before, after) in zip((1, 2), self.cropping):
            if before or after:
                x = _core.narrow(x, axis, before, int(x.shape[axis]) - before - after)
        return x

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        out = list(input_shape)
        for axis, crop in zip((1, 2), self.cropping):
            if out[axis] is not None:
                out[axis] -= sum(crop)
        return tuple(out)

    def get_config(self):
        config = super().get_config()
        config.update(cropping=self.cropping, data_format=self.data_format)
        return config


__all__ += [
    "Conv1D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "UpSampling2D",
    "ZeroPadding2D",
    "Cropping2D",
]
