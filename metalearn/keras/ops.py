"""``keras.ops`` as far as the C core has the ops: Keras 3's names and argument
conventions over metalearn tensors, so a custom layer written against ``keras.ops``
ports by changing its import::

    from metalearn.keras import ops   # was: from keras import ops

Every function takes tensors, NumPy arrays or numbers and returns a metalearn
``Tensor`` (float32, differentiable to any order through the core's ops), except where
noted: ``argmax``/``argmin`` and ``cast`` to an integer or bool dtype return NumPy arrays
(metalearn tensors are float32 only, and indices carry no gradient); ``shape`` returns a
tuple; ``convert_to_numpy`` a NumPy array.

Present: abs, absolute, add, argmax, argmin, average_pool, broadcast_to, cast, clip,
concatenate, conv, convert_to_numpy, convert_to_tensor, divide, elu, erf, exp,
expand_dims, full, full_like, gelu, leaky_relu, log, log_softmax, logsumexp, matmul, max,
maximum, max_pool, mean, min, minimum, multiply, negative, one_hot, ones, ones_like,
power, relu, relu6, reshape, shape, sigmoid, sign, silu, softmax, softplus, sqrt, square,
squeeze, stack, subtract, sum, swish, take, tanh, transpose, true_divide, where, zeros,
zeros_like.

Not present (an ``AttributeError`` says so): everything else in ``keras.ops``, among
them the trigonometric functions (sin, cos, ...), cumsum/cumprod, sort/argsort/top_k,
einsum, the linear-algebra ops (``linalg``: inv, solve, svd, ...), fft, image ops,
``scan``/``while_loop``/``cond``, ``depthwise_conv``/``separable_conv``/``conv_transpose``,
and conv/pooling in 1 or 3 dimensions or with ``channels_first`` or ``dilation_rate > 1``
(those raise a ``ValueError`` naming the argument).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as _np

from metalearn import _core

__all__ = [
    "abs",
    "absolute",
    "add",
    "argmax",
    "argmin",
    "average_pool",
    "broadcast_to",
    "cast",
    "clip",
    "concatenate",
    "conv",
    "convert_to_numpy",
    "convert_to_tensor",
    "divide",
    "elu",
    "erf",
    "exp",
    "expand_dims",
    "full",
    "full_like",
    "gelu",
    "leaky_relu",
    "log",
    "log_softmax",
    "logsumexp",
    "matmul",
    "max",
    "maximum",
    "max_pool",
    "mean",
    "min",
    "minimum",
    "multiply",
    "negative",
    "one_hot",
    "ones",
    "ones_like",
    "power",
    "relu",
    "relu6",
    "reshape",
    "shape",
    "sigmoid",
    "sign",
    "silu",
    "softmax",
    "softplus",
    "sqrt",
    "square",
    "squeeze",
    "stack",
    "subtract",
    "sum",
    "swish",
    "take",
    "tanh",
    "transpose",
    "true_divide",
    "where",
    "zeros",
    "zeros_like",
]

Axis = Optional[Union[int, Sequence[int]]]


def _t(x: Any) -> Any:
    """A tensor as is; anything else as a float32 tensor."""
    if isinstance(x, _core.Tensor):
        return x
    return _core.tensor(_np.asarray(x, dtype=_np.float32))


def _float32(dtype: Any, where: str) -> None:
    if dtype is not None and _np.dtype(dtype) != _np.float32:
        raise TypeError(f"ops.{where}: metalearn tensors are float32, got dtype={dtype!r}")


# ----------------------------------------------------------------- conversion
def convert_to_tensor(x: Any, dtype: Any = None, sparse: Any = None, ragged: Any = None) -> Any:
    """`x` as a metalearn tensor (float32; a tensor is returned as is)."""
    _float32(dtype, "convert_to_tensor")
    if sparse or ragged:
        raise ValueError("ops.convert_to_tensor: sparse and ragged tensors are not supported")
    return _t(x)


def convert_to_numpy(x: Any) -> _np.ndarray:
    """`x` as a NumPy array (a copy)."""
    return _np.array(x, copy=True)


def shape(x: Any) -> Tuple[int, ...]:
    """The shape of `x`, a tuple of ints."""
    return (
        tuple(int(d) for d in _np.shape(x)) if not isinstance(x, _core.Tensor) else tuple(x.shape)
    )


def cast(x: Any, dtype: Any) -> Any:
    """`x` as `dtype`: float32 gives a tensor; an integer or bool dtype a NumPy array
    (truncating toward zero, as Keras); other float dtypes are refused."""
    dt = _np.dtype(dtype)
    if dt == _np.float32:
        return _t(x)
    if dt.kind in "biu":
        return _np.asarray(x).astype(dt)
    raise TypeError(f"ops.cast: metalearn tensors are float32, cannot cast to {dt}")


def ones(shape: Sequence[int], dtype: Any = None) -> Any:
    _float32(dtype, "ones")
    return _core.ones(tuple(shape))


def zeros(shape: Sequence[int], dtype: Any = None) -> Any:
    _float32(dtype, "zeros")
    return _core.zeros(tuple(shape))


def full(shape: Sequence[int], fill_value: float, dtype: Any = None) -> Any:
    _float32(dtype, "full")
    return _core.full(tuple(shape), float(fill_value))


def ones_like(x: Any, dtype: Any = None) -> Any:
    return ones(shape_of(x), dtype)


def zeros_like(x: Any, dtype: Any = None) -> Any:
    return zeros(shape_of(x), dtype)


def full_like(x: Any, fill_value: float, dtype: Any = None) -> Any:
    return full(shape_of(x), fill_value, dtype)


shape_of = shape


# ---------------------------------------------------------------- arithmetic
def add(x1: Any, x2: Any) -> Any:
    return _core.add(_t(x1), _t(x2))


def subtract(x1: Any, x2: Any) -> Any:
    return _core.sub(_t(x1), _t(x2))


def multiply(x1: Any, x2: Any) -> Any:
    return _core.mul(_t(x1), _t(x2))


def divide(x1: Any, x2: Any) -> Any:
    return _core.div(_t(x1), _t(x2))


true_divide = divide


def negative(x: Any) -> Any:
    return _core.neg(_t(x))


def power(x1: Any, x2: Any) -> Any:
    """``x1 ** x2``; `x2` a number (one op), or a tensor (``exp(x2 log x1)``, positive
    x1)."""
    if isinstance(x2, (int, float, _np.number)):
        return _core.pow(_t(x1), float(x2))
    return _core.exp(_core.mul(_t(x2), _core.log(_t(x1))))


def matmul(x1: Any, x2: Any) -> Any:
    """Matrix product over the last two axes (leading axes broadcast); a 1-D operand is
    a vector, as NumPy."""
    a, b = _t(x1), _t(x2)
    va, vb = len(a.shape) == 1, len(b.shape) == 1
    if va:
        a = _core.reshape(a, (1, a.shape[0]))
    if vb:
        b = _core.reshape(b, (b.shape[0], 1))
    out = _core.matmul(a, b)
    if va or vb:
        s = tuple(out.shape)
        s = s[:-2] + (() if va else s[-2:-1]) + (() if vb else s[-1:])
        out = _core.reshape(out, s)
    return out


def maximum(x1: Any, x2: Any) -> Any:
    return _core.maximum(_t(x1), _t(x2))


def minimum(x1: Any, x2: Any) -> Any:
    return _core.minimum(_t(x1), _t(x2))


def abs(x: Any) -> Any:  # noqa: A001 (Keras' name)
    return _core.abs(_t(x))


absolute = abs


def sign(x: Any) -> Any:
    return _core.sign(_t(x))


def exp(x: Any) -> Any:
    return _core.exp(_t(x))


def log(x: Any) -> Any:
    return _core.log(_t(x))


def sqrt(x: Any) -> Any:
    return _core.sqrt(_t(x))


def square(x: Any) -> Any:
    return _core.square(_t(x))


def erf(x: Any) -> Any:
    return _core.erf(_t(x))


def clip(x: Any, x_min: float, x_max: float) -> Any:
    return _core.clip(_t(x), float(x_min), float(x_max))


# ---------------------------------------------------------------- activations
def relu(x: Any) -> Any:
    return _core.relu(_t(x))


def relu6(x: Any) -> Any:
    return _core.clip(_t(x), 0.0, 6.0)


def sigmoid(x: Any) -> Any:
    return _core.sigmoid(_t(x))


def tanh(x: Any) -> Any:
    return _core.tanh(_t(x))


def softplus(x: Any) -> Any:
    return _core.softplus(_t(x))


def silu(x: Any) -> Any:
    x = _t(x)
    return _core.mul(x, _core.sigmoid(x))


swish = silu


def elu(x: Any, alpha: float = 1.0) -> Any:
    return _core.elu(_t(x), float(alpha))


def leaky_relu(x: Any, negative_slope: float = 0.2) -> Any:
    return _core.leaky_relu(_t(x), float(negative_slope))


def gelu(x: Any, approximate: bool = True) -> Any:
    """GELU; ``approximate=True`` (Keras ops' default) is the tanh form."""
    from .activations import gelu as _gelu

    return _gelu(_t(x), approximate=approximate)


def softmax(x: Any, axis: int = -1) -> Any:
    return _core.softmax(_t(x), axis=int(axis))


def log_softmax(x: Any, axis: int = -1) -> Any:
    return _core.log_softmax(_t(x), axis=int(axis))


# ----------------------------------------------------------------- reductions
def _axis(axis: Axis) -> Any:
    if axis is None or isinstance(axis, (int, _np.integer)):
        return None if axis is None else int(axis)
    return tuple(int(a) for a in axis)


def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    return _core.reduce_mean(_t(x), axis=_axis(axis), keepdims=bool(keepdims))


def sum(x: Any, axis: Axis = None, keepdims: bool = False) -> Any:  # noqa: A001
    return _core.reduce_sum(_t(x), axis=_axis(axis), keepdims=bool(keepdims))


def max(x: Any, axis: Axis = None, keepdims: bool = False, initial: Any = None) -> Any:  # noqa: A001
    out = _core.reduce_max(_t(x), axis=_axis(axis), keepdims=bool(keepdims))
    return out if initial is None else _core.maximum(out, _t(initial))


def min(x: Any, axis: Axis = None, keepdims: bool = False, initial: Any = None) -> Any:  # noqa: A001
    out = _core.neg(_core.reduce_max(_core.neg(_t(x)), axis=_axis(axis), keepdims=bool(keepdims)))
    return out if initial is None else _core.minimum(out, _t(initial))


def logsumexp(x: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """``log(sum(exp(x)))`` over `axis`, computed stably (the max taken out first)."""
    x = _t(x)
    ax = _axis(axis)
    m = _no_grad_value(_core.reduce_max(x, axis=ax, keepdims=True))
    out = _core.add(
        _core.log(_core.reduce_sum(_core.exp(_core.sub(x, m)), axis=ax, keepdims=True)), m
    )
    if not keepdims:
        out = _core.reshape(out, _reduced_shape(tuple(x.shape), ax))
    return out


def _no_grad_value(t: Any) -> Any:
    # the shift of logsumexp is a constant: its gradient cancels, so it is taken as data
    return _core.tensor(_np.asarray(t))


def _reduced_shape(s: Tuple[int, ...], ax: Any) -> Tuple[int, ...]:
    if ax is None:
        return ()
    axes = {a % len(s) for a in ((ax,) if isinstance(ax, int) else ax)}
    return tuple(d for i, d in enumerate(s) if i not in axes)


def argmax(x: Any, axis: Optional[int] = None, keepdims: bool = False) -> _np.ndarray:
    """Indices of the maxima (a NumPy int array: indices carry no gradient)."""
    return _np.argmax(_np.asarray(x), axis=axis, keepdims=keepdims).astype(_np.int32)


def argmin(x: Any, axis: Optional[int] = None, keepdims: bool = False) -> _np.ndarray:
    """Indices of the minima (a NumPy int array: indices carry no gradient)."""
    return _np.argmin(_np.asarray(x), axis=axis, keepdims=keepdims).astype(_np.int32)


# ------------------------------------------------------------------- shapes
def reshape(x: Any, newshape: Sequence[int]) -> Any:
    if isinstance(newshape, (int, _np.integer)):
        newshape = (int(newshape),)
    return _core.reshape(_t(x), tuple(int(d) for d in newshape))


def transpose(x: Any, axes: Optional[Sequence[int]] = None) -> Any:
    return _core.transpose(_t(x), None if axes is None else tuple(int(a) for a in axes))


def expand_dims(x: Any, axis: int) -> Any:
    x = _t(x)
    s = list(x.shape)
    a = int(axis)
    if not -len(s) - 1 <= a <= len(s):
        raise ValueError(f"ops.expand_dims: axis {a} is out of range for rank {len(s)}")
    s.insert(a if a >= 0 else len(s) + 1 + a, 1)
    return _core.reshape(x, tuple(s))


def squeeze(x: Any, axis: Axis = None) -> Any:
    x = _t(x)
    s = tuple(x.shape)
    if axis is None:
        keep = [d for d in s if d != 1]
    else:
        axes = {int(a) % len(s) for a in ((axis,) if isinstance(axis, int) else axis)}
        for a in axes:
            if s[a] != 1:
                raise ValueError(f"ops.squeeze: cannot squeeze axis {a} of size {s[a]} (shape {s})")
        keep = [d for i, d in enumerate(s) if i not in axes]
    return _core.reshape(x, tuple(keep))


def concatenate(xs: Sequence[Any], axis: int = 0) -> Any:
    return _core.concat([_t(x) for x in xs], axis=int(axis))


def stack(x: Sequence[Any], axis: int = 0) -> Any:
    return _core.concat([expand_dims(t, axis) for t in x], axis=int(axis))


def broadcast_to(x: Any, shape: Sequence[int]) -> Any:
    return _core.broadcast_to(_t(x), tuple(int(d) for d in shape))


def take(x: Any, indices: Any, axis: Optional[int] = None) -> Any:
    """The entries of `x` at integer `indices` along `axis` (None: of x flattened)."""
    x = _t(x)
    if axis is None:
        x, axis = _core.reshape(x, (-1,)), 0
    idx = _np.asarray(indices, dtype=_np.int64)
    out = _core.gather(x, idx.reshape(-1), axis=int(axis))
    s = tuple(out.shape)
    a = int(axis) % len(x.shape)
    return _core.reshape(out, s[:a] + idx.shape + s[a + 1 :])


def where(condition: Any, x1: Any = None, x2: Any = None) -> Any:
    """`x1` where `condition` holds, else `x2` (broadcast together); exact, whatever the
    other branch holds (inf or NaN included), and differentiable in x1 and x2. The
    one-argument form is not supported."""
    if x1 is None or x2 is None:
        raise ValueError("ops.where: the one-argument form (indices) is not supported")
    cond = _np.asarray(condition) != 0
    a, b = _t(x1), _t(x2)
    s = _np.broadcast_shapes(cond.shape, tuple(a.shape), tuple(b.shape))
    both = _core.concat(
        [_core.reshape(_core.broadcast_to(t, s), s + (1,)) for t in (a, b)], axis=-1
    )
    pick = _np.broadcast_to(~cond, s).astype(_np.int64)
    return _core.pick(both, pick)


def one_hot(
    x: Any, num_classes: int, axis: int = -1, dtype: Any = None, sparse: bool = False
) -> Any:
    """One-hot encoding of integer `x` along a new `axis`; an index outside
    ``[0, num_classes)`` gives a row of zeros, as Keras."""
    _float32(dtype, "one_hot")
    if sparse:
        raise ValueError("ops.one_hot: sparse=True is not supported")
    labels = _np.asarray(x).astype(_np.int64)
    out = (labels[..., None] == _np.arange(int(num_classes))).astype(_np.float32)
    if axis != -1:
        out = _np.moveaxis(out, -1, axis)
    return _core.tensor(_np.ascontiguousarray(out))


# --------------------------------------------------------- convolution, pooling
def _pair(value: Any, name: str, where: str) -> Tuple[int, int]:
    v = (value, value) if isinstance(value, (int, _np.integer)) else tuple(value)
    if len(v) != 2:
        raise ValueError(f"ops.{where}: {name} must be an int or 2 ints (2-D only), got {value!r}")
    return int(v[0]), int(v[1])


def _check_2d(inputs: Any, data_format: Optional[str], where: str) -> Any:
    x = _t(inputs)
    if len(x.shape) != 4:
        raise ValueError(
            f"ops.{where}: only 2-D inputs (batch, height, width, channels) are supported, "
            f"got shape {tuple(x.shape)}"
        )
    if data_format not in (None, "channels_last"):
        raise ValueError(f"ops.{where}: only data_format='channels_last' is supported")
    return x


def conv(
    inputs: Any,
    kernel: Any,
    strides: Any = 1,
    padding: str = "valid",
    data_format: Optional[str] = None,
    dilation_rate: Any = 1,
) -> Any:
    """2-D convolution, channels last: inputs ``(N, H, W, C)``, kernel ``(KH, KW, C, F)``
    (Keras' layout)."""
    x = _check_2d(inputs, data_format, "conv")
    if _pair(dilation_rate, "dilation_rate", "conv") != (1, 1):
        raise ValueError("ops.conv: dilation_rate > 1 is not supported")
    return _core.conv2d(
        x, _t(kernel), strides=_pair(strides, "strides", "conv"), padding=str(padding).lower()
    )


def max_pool(
    inputs: Any,
    pool_size: Any,
    strides: Any = None,
    padding: str = "valid",
    data_format: Optional[str] = None,
) -> Any:
    x = _check_2d(inputs, data_format, "max_pool")
    return _core.max_pool2d(
        x,
        pool_size=_pair(pool_size, "pool_size", "max_pool"),
        strides=None if strides is None else _pair(strides, "strides", "max_pool"),
        padding=str(padding).lower(),
    )


def average_pool(
    inputs: Any,
    pool_size: Any,
    strides: Any = None,
    padding: str = "valid",
    data_format: Optional[str] = None,
) -> Any:
    x = _check_2d(inputs, data_format, "average_pool")
    return _core.avg_pool2d(
        x,
        pool_size=_pair(pool_size, "pool_size", "average_pool"),
        strides=None if strides is None else _pair(strides, "strides", "average_pool"),
        padding=str(padding).lower(),
    )


# ------------------------------------------------------------ missing names
_KERAS_ONLY = frozenset(
    """sin cos tan arcsin arccos arctan arctan2 sinh cosh arcsinh arccosh arctanh cumsum
    cumprod sort argsort top_k in_top_k einsum tensordot dot vdot inner outer kron cross
    linalg inv solve svd qr cholesky eig eigh det norm fft fft2 rfft irfft stft istft
    image scan while_loop cond fori_loop switch associative_scan vectorized_map map
    depthwise_conv separable_conv conv_transpose ctc_loss ctc_decode moments
    batch_normalization log1p expm1 log2 log10 floor ceil round mod floor_divide
    logical_and logical_or logical_not equal not_equal greater greater_equal less
    less_equal isnan isinf isfinite tile repeat pad flip roll tril triu diag diagonal
    trace arange linspace eye identity meshgrid split unstack slice slice_update
    scatter scatter_update segment_sum segment_max var std median quantile any all
    count_nonzero nonzero unique hard_sigmoid hard_silu selu celu glu softsign
    sparse_categorical_crossentropy categorical_crossentropy binary_crossentropy
    multi_hot rsqrt reciprocal round dtype is_tensor erfinv""".split()
)


def __getattr__(name: str) -> Any:
    if name in _KERAS_ONLY:
        raise AttributeError(
            f"metalearn.keras.ops has no {name!r}: keras.ops has it but metalearn's C core "
            "does not (see this module's docstring for what is present)"
        )
    raise AttributeError(f"module 'metalearn.keras.ops' has no attribute {name!r}")
