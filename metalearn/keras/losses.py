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


# functions that match shapes themselves (the cross-entropies refuse unequal shapes, as
# Keras 3's: their classes match ranks in LossFunctionWrapper.call first)
_SELF_MATCHING = (mean_squared_error, mean_absolute_error, sparse_categorical_crossentropy)
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
                f"Invalid reduction {reduction!r}; expected one of "
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

    def get_config(self) -> Config:
        config = super().get_config()
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

    def get_config(self) -> Config:
        return Loss.get_config(self)


class MeanAbsoluteError(LossFunctionWrapper):
    """Mean of absolute errors: ``loss = mean(abs(y_true - y_pred))``."""

    def __init__(
        self, reduction: str = "sum_over_batch_size", name: str = "mean_absolute_error"
    ) -> None:
        super().__init__(mean_absolute_error, reduction=reduction, name=name)

    def get_config(self) -> Config:
        return Loss.get_config(self)


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
}
_CLASSES = {
    c.__name__: c
    for c in (
        MeanSquaredError,
        MeanAbsoluteError,
        CategoricalCrossentropy,
        SparseCategoricalCrossentropy,
        BinaryCrossentropy,
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
