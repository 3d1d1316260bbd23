"""Convolution, pooling and batch-normalisation layers, as ``keras.layers`` (channels last).

Every layer is a thin shell over one core op (``_core.conv2d``, ``max_pool2d``,
``avg_pool2d``, ``global_avg_pool2d``, ``batch_norm``), each with first- and
higher-order gradients in C, so second-order MAML runs through a conv net.
"""

import numpy as np

from metalearn import _core
from metalearn import functional as _functional

from . import activations, initializers, regularizers
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


class Conv2D(Layer):
    """2-D convolution layer (channels last): ``activation(conv2d(inputs, kernel) + bias)``.

    Args:
        filters: number of output channels.
        kernel_size: int or pair ``(kh, kw)``.
        strides: int or pair (default 1).
        padding: ``"valid"`` (no padding) or ``"same"`` (output size ``ceil(in / stride)``,
            TensorFlow's padding split).
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
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError("Conv2D: only data_format='channels_last' is supported")
        if not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"Conv2D: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "Conv2D", "kernel_size")
        self.strides = _pair(strides, "Conv2D", "strides")
        self.padding = _padding(padding, "Conv2D")
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._channels = None

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: Conv2D needs inputs (batch, height, width, channels), got "
                f"{input_shape}"
            )
        self._channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            "kernel",
            self.kernel_size + (self._channels, self.filters),
            self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = (
            self.add_weight(
                "bias", (self.filters,), self.bias_initializer, regularizer=self.bias_regularizer
            )
            if self.use_bias
            else None
        )
        self.built = True

    def call(self, inputs):
        _check_4d(self, inputs)
        if inputs.shape[-1] != self._channels:
            raise ValueError(
                f"{self.name}: expected {self._channels} input channels, got {tuple(inputs.shape)}"
            )
        out = _core.conv2d(inputs, self.kernel, self.bias, self.strides, self.padding)
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
