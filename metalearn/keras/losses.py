"""Losses, as ``keras.losses``.

Functions return one value per sample (reduced over the last axis), thin over the C
core's fused losses; classes reduce them (``"sum_over_batch_size"``: the mean) and are
what ``compile`` uses. Clipping follows Keras: probabilities are rescaled to sum to 1
over the class axis and clipped to ``[1e-7, 1 - 1e-7]`` before the log.

    categorical_crossentropy(y, p)      = -sum_c y_c * log(clip(p_c / sum(p)))
    sparse_categorical_crossentropy(k, p) = -log(clip(p_k / sum(p)))
    binary_crossentropy(y, p)           = -mean(y log(clip p) + (1 - y) log(1 - clip p))
    mean_squared_error(y, p)            = mean((y - p)^2)

Shapes follow Keras 3's ``squeeze_or_expand_to_same_rank``: when the ranks of ``y_true``
and ``y_pred`` differ by one and the longer ends in 1, targets ``(N,)`` against
predictions ``(N, 1)`` pair element by element (they never broadcast to ``(N, N)``).
After that, the mean errors broadcast as NumPy does. The cross-entropy *functions* need
equal shapes, as Keras 3's (sparse: labels shaped as ``y_pred`` without its class axis, or
with a trailing 1); their classes, and ``compile``, match ranks first. Other mismatches
raise a ValueError naming both shapes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from metalearn._typing import Array, ArrayLike, Config
import numpy as np

from metalearn import _core

__all__ = [
    "Loss",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "BinaryCrossentropy",
    "LossFunctionWrapper",
    "mean_squared_error",
    "mse",
    "MSE",
    "mean_absolute_error",
    "mae",
    "MAE",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "Huber",
    "LogCosh",
    "KLDivergence",
    "Poisson",
    "CosineSimilarity",
    "Hinge",
    "SquaredHinge",
    "CategoricalHinge",
    "CategoricalFocalCrossentropy",
    "BinaryFocalCrossentropy",
    "huber",
    "log_cosh",
    "kl_divergence",
    "kld",
    "KLD",
    "poisson",
    "cosine_similarity",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "categorical_focal_crossentropy",
    "binary_focal_crossentropy",
    "squeeze_or_expand_to_same_rank",
    "get",
    "serialize",
]


def _float_target(y):
    if isinstance(y, _core.Tensor):
        return y
    arr = np.asarray(y)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def _check_axis(axis, name):
    if axis != -1:
        raise ValueError(f"{name}: only axis=-1 is supported, got axis={axis}")


def _reshape(x, shape):
    if isinstance(x, _core.Tensor):
        return _core.reshape(x, shape)  # a view, recorded: gradients and traces see it
    return np.reshape(x, shape)


def squeeze_or_expand_to_same_rank(x1: Any, x2: Any, expand_rank_1: bool = True) -> Any:
    """Keras 3's rank matching of two arrays or tensors (``keras.src.losses.loss``).

    When the ranks differ by exactly one and the longer one's last axis is 1: a rank-1
    shorter one gains a trailing axis (with `expand_rank_1`), otherwise the longer one
    loses its last axis. So ``(N,)`` against ``(N, 1)`` pairs element by element. Other
    shapes are returned as they are.

    Returns:
        The pair ``(x1, x2)``, reshaped (views; tensors through a recorded reshape).
    """
    r1, r2 = len(x1.shape), len(x2.shape)
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = _reshape(x2, tuple(x2.shape) + (1,))
        else:
            x1 = _reshape(x1, tuple(x1.shape)[:-1])
    elif r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = _reshape(x1, tuple(x1.shape) + (1,))
        else:
            x2 = _reshape(x2, tuple(x2.shape)[:-1])
    return x1, x2


def _matched(y_true, y_pred, name, equal_shapes):
    """(y_true, y_pred) as float32 arrays or tensors, rank-matched as Keras; with
    `equal_shapes` (the cross-entropies) any other shape mismatch is a ValueError."""
    y_true, y_pred = _float_target(y_true), _float_target(y_pred)
    if y_true.shape == y_pred.shape:  # the common case: nothing to match
        return y_true, y_pred
    if equal_shapes:  # as Keras 3's functions; the Loss classes match ranks before calling
        raise ValueError(
            f"{name}: y_true has shape {tuple(y_true.shape)} but y_pred has shape "
            f"{tuple(y_pred.shape)}; they must be equal (the {name} loss class, "
            f"and compile, first pair (N,) with (N, 1))"
        )
    t, p = y_true, y_pred
    if y_true.ndim and y_pred.ndim:  # a scalar broadcasts (and y_pred keeps its last axis)
        t, p = squeeze_or_expand_to_same_rank(y_true, y_pred)
    ts, ps = tuple(t.shape), tuple(p.shape)
    if ts != ps:
        try:
            np.broadcast_shapes(ts, ps)
        except ValueError:
            raise ValueError(
                f"{name}: y_true of shape {tuple(y_true.shape)} and y_pred of shape "
                f"{tuple(y_pred.shape)} cannot be broadcast together"
            ) from None
    return t, p


def mean_squared_error(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Mean squared error per sample: ``mean(square(y_true - y_pred), axis=-1)``.

    Args:
        y_true: targets, shape ``(batch, ..., d)``; ``(batch,)`` against ``(batch, 1)``
            predictions pairs element by element (Keras' rank matching), other shapes
            broadcast against `y_pred`.
        y_pred: predictions, shape ``(batch, ..., d)``.

    Returns:
        Tensor of shape ``(batch, ...)``.
    """
    y_true, y_pred = _matched(y_true, y_pred, "mean_squared_error", False)
    return _core.mean_squared_error(y_true, y_pred)


def mean_absolute_error(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Mean absolute error per sample: ``mean(abs(y_true - y_pred), axis=-1)`` (shapes
    matched as in ``mean_squared_error``)."""
    y_true, y_pred = _matched(y_true, y_pred, "mean_absolute_error", False)
    return _core.reduce_mean(_core.abs(_core.sub(y_pred, y_true)), -1)


def categorical_crossentropy(
    y_true: ArrayLike,
    y_pred: Array,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
) -> _core.Tensor:
    """Categorical cross-entropy per sample between one-hot (or soft) targets and
    predicted class probabilities.

    Args:
        y_true: targets, shape ``(batch, ..., classes)``.
        y_pred: probabilities (or logits with ``from_logits=True``), same shape.
        from_logits: whether `y_pred` are logits (softmax applied inside, stably).
        label_smoothing: in [0, 1]: targets become ``y * (1 - s) + s / classes``.

    Returns:
        Tensor of shape ``(batch, ...)``: ``-sum(y_true * log(y_pred), axis=-1)`` with
        Keras's rescaling and clipping (eps = 1e-7) when `from_logits` is False.
    """
    _check_axis(axis, "categorical_crossentropy")
    y_true, y_pred = _matched(y_true, y_pred, "categorical_crossentropy", True)
    if label_smoothing:
        classes = y_true.shape[-1]
        y_true = _core.add(
            _core.mul(y_true, 1.0 - float(label_smoothing)), float(label_smoothing) / classes
        )
    return _core.categorical_crossentropy(y_true, y_pred, from_logits=bool(from_logits))


def sparse_categorical_crossentropy(
    y_true: ArrayLike,
    y_pred: Array,
    from_logits: bool = False,
    ignore_class: Optional[int] = None,
    axis: int = -1,
) -> _core.Tensor:
    """Categorical cross-entropy per sample with integer class targets.

    Args:
        y_true: class indices, shape ``(batch, ...)`` or ``(batch, ..., 1)``: `y_pred`'s
            shape without its class axis, or with a last axis of 1 in its place.
        y_pred: probabilities (or logits), shape ``(batch, ..., classes)``.
        from_logits: whether `y_pred` are logits.

    Returns:
        Tensor of shape ``(batch, ...)``: ``-log(y_pred[y_true])`` (rescaled and clipped
        as Keras 3 when `from_logits` is False).
    """
    _check_axis(axis, "sparse_categorical_crossentropy")
    if ignore_class is not None:
        raise NotImplementedError("sparse_categorical_crossentropy: ignore_class is not supported")
    y_pred = _float_target(y_pred)
    pred_shape = tuple(y_pred.shape)
    labels = y_true if isinstance(y_true, _core.Tensor) else np.asarray(y_true)
    shape = tuple(labels.shape)
    if not pred_shape or (shape != pred_shape[:-1] and shape != pred_shape[:-1] + (1,)):
        raise ValueError(
            f"sparse_categorical_crossentropy: y_true has shape {shape} but y_pred has "
            f"shape {pred_shape}; the labels must have y_pred's shape without its "
            f"class axis, {pred_shape[:-1]}, or with a last axis of 1"
        )
    # a tensor of labels stays a tensor: the C op reads it when it runs, so a traced step
    # (metalearn.function) replays with each call's labels
    return _core.sparse_categorical_crossentropy(labels, y_pred, from_logits=bool(from_logits))


def binary_crossentropy(
    y_true: ArrayLike,
    y_pred: Array,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
) -> _core.Tensor:
    """Binary cross-entropy per sample, averaged over the last axis.

    Args:
        y_true: targets in [0, 1], shape ``(batch, ..., d)``.
        y_pred: probabilities (or logits with ``from_logits=True``), same shape.
        label_smoothing: targets become ``y * (1 - s) + 0.5 * s``.

    Returns:
        Tensor of shape ``(batch, ...)``:
        ``-mean(y log p + (1 - y) log(1 - p), axis=-1)``, p clipped to [1e-7, 1 - 1e-7]
        (Keras 3; no epsilon is added inside the logs).

    Raises:
        ValueError: shapes that differ (as Keras 3's function; ``BinaryCrossentropy``
            pairs ``(batch,)`` targets with ``(batch, 1)`` predictions first).
    """
    _check_axis(axis, "binary_crossentropy")
    y_true, y_pred = _matched(y_true, y_pred, "binary_crossentropy", True)
    if label_smoothing:
        y_true = _core.add(
            _core.mul(y_true, 1.0 - float(label_smoothing)), 0.5 * float(label_smoothing)
        )
    return _core.binary_crossentropy(y_true, y_pred, from_logits=bool(from_logits))


# ------------------------------------------------------------------ more losses
# Each is a formula of differentiable core ops (gradients of any order, recorded by traces
# and usable in meta-learning inner loops), Keras 3's formula (keras.src.losses.losses).
_EPS = 1e-7  # Keras' backend.epsilon()


def _t(x):
    """`x` as a Tensor (NumPy targets become constants of the graph)."""
    return x if isinstance(x, _core.Tensor) else _core.tensor(np.asarray(x, dtype=np.float32))


def huber(y_true: ArrayLike, y_pred: Array, delta: float = 1.0) -> _core.Tensor:
    """Huber loss per sample: ``mean(0.5 e^2 if |e| <= delta else delta |e| - 0.5 delta^2)``
    over the last axis, ``e = y_pred - y_true``; written as ``0.5 q^2 + delta (|e| - q)``
    with ``q = min(|e|, delta)`` (the same values, one branch-free formula).

    Args:
        y_true: targets ``(batch, ..., d)`` (shapes matched as ``mean_squared_error``).
        y_pred: predictions, same shape.
        delta: where the loss turns from quadratic to linear (1.0).

    Returns:
        Tensor ``(batch, ...)``.
    """
    y_true, y_pred = _matched(y_true, y_pred, "huber", False)
    delta = float(delta)
    a = _core.abs(_core.sub(_t(y_pred), y_true))
    q = _core.minimum(a, _t(np.float32(delta)))
    values = _core.add(_core.mul(_core.square(q), 0.5), _core.mul(_core.sub(a, q), delta))
    return _core.reduce_mean(values, -1)


def log_cosh(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Log-cosh per sample: ``mean(log(cosh(y_pred - y_true)), axis=-1)``, computed as
    ``x + softplus(-2x) - log(2)`` (no overflow for large errors, as Keras 3)."""
    y_true, y_pred = _matched(y_true, y_pred, "log_cosh", False)
    x = _core.sub(_t(y_pred), y_true)
    values = _core.add(_core.add(x, _core.softplus(_core.mul(x, -2.0))), -float(np.log(2.0)))
    return _core.reduce_mean(values, -1)


def kl_divergence(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Kullback-Leibler divergence per sample: ``sum(y log(y / p), axis=-1)`` with both
    clipped to ``[1e-7, 1]`` (Keras 3)."""
    y_true, y_pred = _matched(y_true, y_pred, "kl_divergence", False)
    t = _core.clip(_t(y_true), _EPS, 1.0)
    p = _core.clip(_t(y_pred), _EPS, 1.0)
    return _core.reduce_sum(_core.mul(t, _core.log(_core.div(t, p))), -1)


def poisson(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Poisson loss per sample: ``mean(y_pred - y_true * log(y_pred + 1e-7), axis=-1)``."""
    y_true, y_pred = _matched(y_true, y_pred, "poisson", False)
    p = _t(y_pred)
    return _core.reduce_mean(_core.sub(p, _core.mul(y_true, _core.log(_core.add(p, _EPS)))), -1)


def _l2_normalize(x, axis):
    # Keras' ops.normalize: x * min(rsqrt(sum x^2), 1 / eps); sqrt(max(s, eps^2)) is the
    # same value with a finite gradient at x = 0
    s = _core.reduce_sum(_core.square(x), axis, True)
    return _core.div(x, _core.sqrt(_core.maximum(s, _t(np.float32(_EPS * _EPS)))))


def cosine_similarity(y_true: ArrayLike, y_pred: Array, axis: int = -1) -> _core.Tensor:
    """Negative cosine similarity per sample: ``-sum(l2_normalize(y_true) *
    l2_normalize(y_pred), axis)`` (-1 for parallel vectors, 0 for orthogonal ones)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"cosine_similarity: axis must be an int, got {axis!r}")
    y_true, y_pred = _matched(y_true, y_pred, "cosine_similarity", False)
    p = _t(y_pred)
    if not -p.ndim <= int(axis) < p.ndim:
        raise ValueError(f"cosine_similarity: axis {axis} is out of range for shape {p.shape}")
    t = _l2_normalize(_t(y_true), int(axis))
    return _core.neg(_core.reduce_sum(_core.mul(t, _l2_normalize(p, int(axis))), int(axis)))


def _hinge_labels(y_true):
    """Keras' convert_binary_labels_to_hinge: labels all in {0, 1} become -1/1, other
    labels stay. On a tensor (a traced step's labels) the test is made of ops, branch-free:
    b = 1 - step(sum |y (1 - y)|), then y + b (y - 1)."""
    if not isinstance(y_true, _core.Tensor):
        y = np.asarray(y_true, dtype=np.float32)
        return 2.0 * y - 1.0 if np.all((y == 0) | (y == 1)) else y
    off = _core.reduce_sum(_core.abs(_core.mul(y_true, _core.add(_core.neg(y_true), 1.0))))
    b = _core.add(_core.neg(_core.step(off)), 1.0)
    return _core.add(y_true, _core.mul(b, _core.add(y_true, -1.0)))


def hinge(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Hinge loss per sample: ``mean(max(1 - y_true * y_pred, 0), axis=-1)``; labels given
    as 0/1 are turned into -1/1 first (Keras 3)."""
    y_true, y_pred = _matched(y_true, y_pred, "hinge", False)
    m = _core.add(_core.neg(_core.mul(_hinge_labels(y_true), _t(y_pred))), 1.0)
    return _core.reduce_mean(_core.relu(m), -1)


def squared_hinge(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Squared hinge per sample: ``mean(square(max(1 - y_true * y_pred, 0)), axis=-1)``
    (0/1 labels turned into -1/1)."""
    y_true, y_pred = _matched(y_true, y_pred, "squared_hinge", False)
    m = _core.add(_core.neg(_core.mul(_hinge_labels(y_true), _t(y_pred))), 1.0)
    return _core.reduce_mean(_core.square(_core.relu(m)), -1)


def categorical_hinge(y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
    """Categorical hinge per sample: ``max(max((1 - y) p) - sum(y p) + 1, 0)`` over the
    last axis (one-hot `y_true`)."""
    y_true, y_pred = _matched(y_true, y_pred, "categorical_hinge", False)
    p = _t(y_pred)
    pos = _core.reduce_sum(_core.mul(y_true, p), -1)
    neg = _core.reduce_max(_core.mul(_core.add(_core.neg(_t(y_true)), 1.0), p), -1)
    return _core.relu(_core.add(_core.sub(neg, pos), 1.0))


def _check_focal(name, alpha, gamma, label_smoothing, axis):
    if isinstance(axis, bool) or axis != -1:
        raise ValueError(f"{name}: only axis=-1 is supported, got axis={axis!r}")
    for what, v in (("alpha", alpha), ("gamma", gamma), ("label_smoothing", label_smoothing)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
            raise ValueError(f"{name}: {what} must be a finite number, got {v!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}")


def categorical_focal_crossentropy(
    y_true: ArrayLike,
    y_pred: Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
) -> _core.Tensor:
    """Categorical focal cross-entropy per sample (Keras 3):
    ``sum(alpha (1 - p)^gamma * -y log(p), axis=-1)``, p the predictions rescaled to sum
    to 1 and clipped to ``[1e-7, 1 - 1e-7]`` (softmax first with `from_logits`); targets
    smoothed as ``categorical_crossentropy``'s.

    Raises:
        ValueError: shapes that differ, axis other than -1, a bad alpha/gamma/smoothing.
    """
    name = "categorical_focal_crossentropy"
    _check_focal(name, alpha, gamma, label_smoothing, axis)
    y_true, y_pred = _matched(y_true, y_pred, name, True)
    t, p = _t(y_true), _t(y_pred)
    if label_smoothing:
        ls = float(label_smoothing)
        t = _core.add(_core.mul(t, 1.0 - ls), ls / t.shape[-1])
    if from_logits:
        p = _core.softmax(p, -1)
    out = _core.div(p, _core.reduce_sum(p, -1, True))
    out = _core.clip(out, _EPS, 1.0 - _EPS)
    cce = _core.neg(_core.mul(t, _core.log(out)))
    factor = _core.mul(_core.pow(_core.add(_core.neg(out), 1.0), float(gamma)), float(alpha))
    return _core.reduce_sum(_core.mul(factor, cce), -1)


def binary_focal_crossentropy(
    y_true: ArrayLike,
    y_pred: Array,
    apply_class_balancing: bool = False,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
) -> _core.Tensor:
    """Binary focal cross-entropy per sample (Keras 3): ``mean((1 - p_t)^gamma * bce,
    axis=-1)``, ``p_t = y p + (1 - y)(1 - p)``, bce the element-wise binary cross-entropy
    with p clipped to ``[1e-7, 1 - 1e-7]`` (sigmoid first with `from_logits`); with
    `apply_class_balancing` each term is weighted ``alpha y + (1 - alpha)(1 - y)``."""
    name = "binary_focal_crossentropy"
    _check_focal(name, alpha, gamma, label_smoothing, axis)
    y_true, y_pred = _matched(y_true, y_pred, name, True)
    t, p = _t(y_true), _t(y_pred)
    if label_smoothing:
        ls = float(label_smoothing)
        t = _core.add(_core.mul(t, 1.0 - ls), 0.5 * ls)
    if from_logits:
        p = _core.sigmoid(p)
    c = _core.clip(p, _EPS, 1.0 - _EPS)
    one_t = _core.add(_core.neg(t), 1.0)
    one_c = _core.add(_core.neg(c), 1.0)
    bce = _core.neg(_core.add(_core.mul(t, _core.log(c)), _core.mul(one_t, _core.log(one_c))))
    p_t = _core.add(_core.mul(t, p), _core.mul(one_t, _core.add(_core.neg(p), 1.0)))
    focal = _core.mul(_core.pow(_core.add(_core.neg(p_t), 1.0), float(gamma)), bce)
    if apply_class_balancing:
        a = float(alpha)
        focal = _core.mul(_core.add(_core.mul(t, a), _core.mul(one_t, 1.0 - a)), focal)
    return _core.reduce_mean(focal, -1)


kld = KLD = kl_divergence


# functions that match shapes themselves (the cross-entropies refuse unequal shapes, as
# Keras 3's: their classes match ranks in LossFunctionWrapper.call first)
_SELF_MATCHING = (
    mean_squared_error,
    mean_absolute_error,
    sparse_categorical_crossentropy,
    huber,
    log_cosh,
    kl_divergence,
    poisson,
    cosine_similarity,
    hinge,
    squared_hinge,
    categorical_hinge,
)
mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error

_REDUCTIONS = (
    "sum_over_batch_size",
    "sum",
    "none",
    None,
    "mean",
    "mean_with_sample_weight",
    "auto",
)


def _as_array(x):
    return x if isinstance(x, _core.Tensor) else np.asarray(x)


class Loss:
    """Base class: ``loss(y_true, y_pred, sample_weight=None)`` returns the reduced loss.

    Subclasses implement ``call(y_true, y_pred)`` returning per-sample values.

    Args:
        reduction: ``"sum_over_batch_size"`` or ``"mean"`` (the sum of the weighted values
            over their count; the default), ``"mean_with_sample_weight"`` (the sum over the
            sum of the weights), ``"sum"``, or ``"none"`` (per-sample values).
        name: the loss's name.

    ``sample_weight`` is matched to the per-sample values as Keras 3 does (rank matching,
    then broadcasting: a scalar, ``(batch,)``, ``(batch, 1)``, or the values' own shape);
    weights ``(batch,)`` for values ``(batch, T)`` weight each sample (Keras 3 raises
    there). Weights that would change the values' shape raise a ValueError.
    """

    def __init__(self, name: Optional[str] = None, reduction: str = "sum_over_batch_size") -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"Invalid value for argument `reduction`: {reduction!r}; expected one of "
                "'sum_over_batch_size', 'sum', 'none', 'mean', 'mean_with_sample_weight'"
            )
        self.name = name or _snake(type(self).__name__)
        self.reduction = "sum_over_batch_size" if reduction == "auto" else reduction

    def call(self, y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
        """Per-sample loss values; subclasses implement it.

        Args:
            y_true: targets ``(batch, ...)``.
            y_pred: predictions ``(batch, ...)``.

        Returns:
            Tensor ``(batch, ...)`` (reduced over the last axis), before the reduction.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement call(y_true, y_pred)")

    def __call__(
        self, y_true: ArrayLike, y_pred: Array, sample_weight: Optional[ArrayLike] = None
    ) -> _core.Tensor:
        values = self.call(y_true, y_pred)
        sw = None
        if sample_weight is not None:
            values, sw = self._weigh(values, sample_weight)
        reduction = self.reduction
        if (
            reduction == "sum_over_batch_size"
            or reduction == "mean"
            or (reduction == "mean_with_sample_weight" and sw is None)
        ):
            # an empty batch gives 0, as Keras' divide_no_nan
            return _core.reduce_mean(values) if values.size else _core.reduce_sum(values)
        if reduction == "sum":
            return _core.reduce_sum(values)
        if reduction == "mean_with_sample_weight":  # the sum over the sum of the weights
            total = _core.reduce_sum(values)
            if isinstance(sw, _core.Tensor):
                return _core.div(total, _core.reduce_sum(sw))
            count = float(np.sum(sw))
            return _core.mul(total, 1.0 / count if count else 0.0)
        return values  # "none"

    def _weigh(self, values, sample_weight):
        """values * sample_weight (Keras 3's reduce_weighted_values), and the weights."""
        sw = (
            sample_weight
            if isinstance(sample_weight, _core.Tensor)
            else np.asarray(sample_weight, dtype=np.float32)
        )
        if sw.ndim == 0:
            return _core.mul(values, sw if isinstance(sw, _core.Tensor) else float(sw)), sw
        v, w = squeeze_or_expand_to_same_rank(values, sw)
        vshape, wshape = tuple(v.shape), tuple(w.shape)
        try:
            fits = np.broadcast_shapes(vshape, wshape) == vshape
        except ValueError:
            fits = False
        if not fits and len(wshape) < len(vshape) and vshape[: len(wshape)] == wshape:
            # (batch,) weights for (batch, T) values: one weight per sample
            w = _reshape(w, wshape + (1,) * (len(vshape) - len(wshape)))
            fits = True
        if not fits:
            raise ValueError(
                f"{self.name}: sample_weight has shape {tuple(sw.shape)} but the "
                f"per-sample losses have shape {tuple(values.shape)} (y_pred's "
                "shape without its last axis); expected a scalar, that shape, "
                "or a shape that broadcasts to it"
            )
        return _core.mul(v, w), w

    def get_config(self) -> Config:
        """The loss's configuration (``name``, ``reduction`` and its own arguments)."""
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config: Config) -> Loss:
        """A new loss from the dict that ``get_config`` returned."""
        return cls(**config)


def _snake(name):
    from .backend import snake_case

    return snake_case(name)


class LossFunctionWrapper(Loss):
    """Wraps a per-sample loss function ``fn(y_true, y_pred, **kwargs)`` as a Loss."""

    def __init__(
        self,
        fn: Callable[..., Any],
        reduction: str = "sum_over_batch_size",
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction)
        self.fn = fn
        self._fn_kwargs = kwargs
        # the functions here match shapes themselves: no second pass in call()
        self._matches_itself = any(fn is f for f in _SELF_MATCHING)

    def call(self, y_true: ArrayLike, y_pred: Array) -> _core.Tensor:
        """The wrapped loss function applied to ``(y_true, y_pred)`` with the stored keyword
        arguments, after Keras' rank matching (``squeeze_or_expand_to_same_rank``)."""
        if self._matches_itself:
            return self.fn(y_true, y_pred, **self._fn_kwargs)
        y_true, y_pred = _as_array(y_true), _as_array(y_pred)
        if y_true.shape != y_pred.shape and y_true.ndim and y_pred.ndim:  # a scalar broadcasts
            y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    # a subclass whose Keras 3 config is {name, reduction} only sets this False
    _config_has_fn_kwargs = True

    def get_config(self) -> Config:
        config = super().get_config()
        if self._config_has_fn_kwargs:
            config.update(self._fn_kwargs)
        return config


class MeanSquaredError(LossFunctionWrapper):
    """Mean of squares of errors: ``loss = mean(square(y_true - y_pred))``.

    Args:
        reduction: see ``Loss``.
        name: default ``"mean_squared_error"``.
    """

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "mean_squared_error"
    ) -> None:
        super().__init__(mean_squared_error, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class MeanAbsoluteError(LossFunctionWrapper):
    """Mean of absolute errors: ``loss = mean(abs(y_true - y_pred))``."""

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "mean_absolute_error"
    ) -> None:
        super().__init__(mean_absolute_error, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class CategoricalCrossentropy(LossFunctionWrapper):
    """Cross-entropy between one-hot (or soft) labels and predicted probabilities.

    ``loss = -sum(y_true * log(y_pred), axis=-1)`` per sample, then reduced.

    Args:
        from_logits: whether `y_pred` are logits (recommended for stability).
        label_smoothing: in [0, 1]; smooths the targets towards uniform.
        axis: the class axis (only -1).
        reduction: see ``Loss``.
        name: default ``"categorical_crossentropy"``.
    """

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str = "categorical_crossentropy",
    ) -> None:
        super().__init__(
            categorical_crossentropy,
            reduction=reduction,
            name=name,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
        )
        self.from_logits = from_logits


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    """Cross-entropy between integer labels and predicted probabilities.

    ``loss = -log(y_pred[y_true])`` per sample, then reduced.

    Args:
        from_logits: whether `y_pred` are logits.
        reduction: see ``Loss``.
        name: default ``"sparse_categorical_crossentropy"``.
    """

    def __init__(
        self,
        from_logits: bool = False,
        ignore_class: Optional[int] = None,
        reduction: str = "sum_over_batch_size",
        name: str = "sparse_categorical_crossentropy",
    ) -> None:
        super().__init__(
            sparse_categorical_crossentropy,
            reduction=reduction,
            name=name,
            from_logits=from_logits,
            ignore_class=ignore_class,
        )
        self.from_logits = from_logits


class BinaryCrossentropy(LossFunctionWrapper):
    """Cross-entropy between binary labels and predicted probabilities.

    ``loss = -mean(y log(p) + (1 - y) log(1 - p), axis=-1)`` per sample, then reduced.

    Args:
        from_logits: whether `y_pred` are logits.
        label_smoothing: in [0, 1]; targets become ``y * (1 - s) + 0.5 * s``.
        reduction: see ``Loss``.
        name: default ``"binary_crossentropy"``.
    """

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str = "binary_crossentropy",
    ) -> None:
        super().__init__(
            binary_crossentropy,
            reduction=reduction,
            name=name,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
        )
        self.from_logits = from_logits


def _check_dtype(name, dtype):
    if dtype is not None and np.dtype(dtype) != np.float32:
        raise TypeError(f"{name}: only float32 is supported, got dtype={dtype!r}")


class Huber(LossFunctionWrapper):
    """Huber loss: quadratic for ``|e| <= delta``, linear beyond (see ``huber``).

    Args:
        delta: the switch point (1.0).
        reduction: see ``Loss``.
        name: default ``"huber_loss"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's (delta is not in it).
    """

    def __init__(
        self,
        delta: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "huber_loss",
        dtype: Any = None,
    ) -> None:
        _check_dtype("Huber", dtype)
        if isinstance(delta, bool) or not isinstance(delta, (int, float, np.number)):
            raise TypeError(f"Huber: delta must be a number, got {delta!r}")
        super().__init__(huber, reduction=reduction, name=name, delta=float(delta))
        self.delta = float(delta)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class LogCosh(LossFunctionWrapper):
    """Log-cosh of the error: ``mean(log(cosh(y_pred - y_true)), axis=-1)`` (see
    ``log_cosh``).

    Args:
        reduction: see ``Loss``.
        name: default ``"log_cosh"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's.
    """

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "log_cosh", dtype: Any = None
    ) -> None:
        _check_dtype("LogCosh", dtype)
        super().__init__(log_cosh, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class KLDivergence(LossFunctionWrapper):
    """Kullback-Leibler divergence ``sum(y log(y / p), axis=-1)``, both clipped to
    ``[1e-7, 1]`` (see ``kl_divergence``).

    Args:
        reduction: see ``Loss``.
        name: default ``"kl_divergence"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's.
    """

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "kl_divergence", dtype: Any = None
    ) -> None:
        _check_dtype("KLDivergence", dtype)
        super().__init__(kl_divergence, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class Poisson(LossFunctionWrapper):
    """Poisson loss ``mean(y_pred - y_true log(y_pred + 1e-7), axis=-1)``.

    Args:
        reduction: see ``Loss``.
        name: default ``"poisson"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's.
    """

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "poisson", dtype: Any = None
    ) -> None:
        _check_dtype("Poisson", dtype)
        super().__init__(poisson, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class Hinge(LossFunctionWrapper):
    """Hinge loss ``mean(max(1 - y_true y_pred, 0), axis=-1)``, 0/1 labels turned into
    -1/1 (see ``hinge``).

    Args:
        reduction: see ``Loss``.
        name: default ``"hinge"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's.
    """

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "hinge", dtype: Any = None
    ) -> None:
        _check_dtype("Hinge", dtype)
        super().__init__(hinge, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class SquaredHinge(LossFunctionWrapper):
    """Squared hinge loss ``mean(max(1 - y_true y_pred, 0)^2, axis=-1)`` (see
    ``squared_hinge``).

    Args:
        reduction: see ``Loss``.
        name: default ``"squared_hinge"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's.
    """

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "squared_hinge", dtype: Any = None
    ) -> None:
        _check_dtype("SquaredHinge", dtype)
        super().__init__(squared_hinge, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class CategoricalHinge(LossFunctionWrapper):
    """Categorical hinge loss ``max(max((1 - y) p) - sum(y p) + 1, 0)`` (see
    ``categorical_hinge``).

    Args:
        reduction: see ``Loss``.
        name: default ``"categorical_hinge"``.

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's.
    """

    def __init__(
        self,
        reduction: str = "sum_over_batch_size",
        name: str = "categorical_hinge",
        dtype: Any = None,
    ) -> None:
        _check_dtype("CategoricalHinge", dtype)
        super().__init__(categorical_hinge, reduction=reduction, name=name)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class CosineSimilarity(LossFunctionWrapper):
    """Negative cosine similarity along `axis` (see ``cosine_similarity``).

    ``get_config`` is ``{"name", "reduction"}``, as Keras 3's (axis is not in it).
    """

    def __init__(
        self,
        axis: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str = "cosine_similarity",
        dtype: Any = None,
    ) -> None:
        _check_dtype("CosineSimilarity", dtype)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"CosineSimilarity: axis must be an int, got {axis!r}")
        super().__init__(cosine_similarity, reduction=reduction, name=name, axis=int(axis))
        self.axis = int(axis)

    _config_has_fn_kwargs = False  # Keras 3's get_config: name and reduction only


class CategoricalFocalCrossentropy(LossFunctionWrapper):
    """Focal cross-entropy for one-hot labels (see ``categorical_focal_crossentropy``).

    Args:
        alpha: weighting factor (0.25).
        gamma: focusing parameter (2.0).
        from_logits: whether `y_pred` are logits.
        label_smoothing: in [0, 1].
        axis: the class axis (only -1).
        reduction: see ``Loss``.
        name: default ``"categorical_focal_crossentropy"``.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str = "categorical_focal_crossentropy",
        dtype: Any = None,
    ) -> None:
        _check_dtype("CategoricalFocalCrossentropy", dtype)
        _check_focal("CategoricalFocalCrossentropy", alpha, gamma, label_smoothing, axis)
        super().__init__(
            categorical_focal_crossentropy,
            reduction=reduction,
            name=name,
            alpha=alpha,
            gamma=gamma,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
        )
        self.alpha, self.gamma, self.axis = alpha, gamma, axis
        self.from_logits, self.label_smoothing = from_logits, label_smoothing

    def get_config(self) -> Config:
        config = Loss.get_config(self)
        config.update(
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
            alpha=self.alpha,
            gamma=self.gamma,
        )
        return config


class BinaryFocalCrossentropy(LossFunctionWrapper):
    """Focal cross-entropy for binary labels (see ``binary_focal_crossentropy``).

    Args:
        apply_class_balancing: weight the terms by `alpha` / ``1 - alpha``.
        alpha: the class-balancing weight (0.25).
        gamma: focusing parameter (2.0).
        from_logits: whether `y_pred` are logits.
        label_smoothing: in [0, 1]: targets become ``y (1 - s) + 0.5 s``.
        axis: only -1.
        reduction: see ``Loss``.
        name: default ``"binary_focal_crossentropy"``.
    """

    def __init__(
        self,
        apply_class_balancing: bool = False,
        alpha: float = 0.25,
        gamma: float = 2.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str = "binary_focal_crossentropy",
        dtype: Any = None,
    ) -> None:
        _check_dtype("BinaryFocalCrossentropy", dtype)
        _check_focal("BinaryFocalCrossentropy", alpha, gamma, label_smoothing, axis)
        super().__init__(
            binary_focal_crossentropy,
            reduction=reduction,
            name=name,
            apply_class_balancing=apply_class_balancing,
            alpha=alpha,
            gamma=gamma,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
            axis=axis,
        )
        self.apply_class_balancing = apply_class_balancing
        self.alpha, self.gamma, self.axis = alpha, gamma, axis
        self.from_logits, self.label_smoothing = from_logits, label_smoothing

    def get_config(self) -> Config:
        config = Loss.get_config(self)
        config.update(
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
            apply_class_balancing=self.apply_class_balancing,
            alpha=self.alpha,
            gamma=self.gamma,
        )
        return config


_FUNCTIONS = {
    "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error,
    "MSE": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "mae": mean_absolute_error,
    "MAE": mean_absolute_error,
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "huber": huber,
    "log_cosh": log_cosh,
    "kl_divergence": kl_divergence,
    "kld": kl_divergence,
    "KLD": kl_divergence,
    "poisson": poisson,
    "cosine_similarity": cosine_similarity,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    "categorical_hinge": categorical_hinge,
    "categorical_focal_crossentropy": categorical_focal_crossentropy,
    "binary_focal_crossentropy": binary_focal_crossentropy,
}
_CLASSES = {
    c.__name__: c
    for c in (
        MeanSquaredError,
        MeanAbsoluteError,
        CategoricalCrossentropy,
        SparseCategoricalCrossentropy,
        BinaryCrossentropy,
        Huber,
        LogCosh,
        KLDivergence,
        Poisson,
        CosineSimilarity,
        Hinge,
        SquaredHinge,
        CategoricalHinge,
        CategoricalFocalCrossentropy,
        BinaryFocalCrossentropy,
    )
}


def get(identifier: Any) -> Optional[Callable[..., Any]]:
    """A loss from a name (function or class name), a config dict, a Loss or a callable.

    ``get("mse")`` returns the function ``mean_squared_error``; ``get("MeanSquaredError")``
    an instance of the class.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        if identifier in _FUNCTIONS:
            return _FUNCTIONS[identifier]
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        raise ValueError(
            f"Unknown loss function: {identifier!r}; known: "
            f"{sorted(set(_FUNCTIONS) | set(_CLASSES))}"
        )
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"Unknown loss config: {identifier!r}")
        return cls.from_config(identifier.get("config", {}))
    if callable(identifier):
        return identifier
    raise TypeError(f"Could not interpret loss identifier: {identifier!r}")


def serialize(loss: Any) -> Any:
    """A loss as a JSON-able value: ``{"class_name", "config"}`` for a ``Loss`` object,
    the function's name for a loss function.
    """
    if isinstance(loss, Loss):
        return {"class_name": type(loss).__name__, "config": loss.get_config()}
    return getattr(loss, "__name__", repr(loss))
