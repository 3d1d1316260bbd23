"""Metrics, as ``keras.metrics``: stateful running values, computed in NumPy.

A metric accumulates with ``update_state(y_true, y_pred, sample_weight=None)``, reports
with ``result()`` and restarts with ``reset_state()``. The per-batch work is vectorised
NumPy on the prediction array (no Python loop over samples).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from metalearn._typing import Array, ArrayLike, Config
import numpy as np

from .backend import snake_case
from .losses import squeeze_or_expand_to_same_rank

__all__ = [
    "Metric",
    "Mean",
    "Sum",
    "MeanMetricWrapper",
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "SparseCategoricalAccuracy",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "mean_squared_error",
    "mean_absolute_error",
    "get",
    "resolve",
    "serialize",
    "deserialize",
]


def _np(x):
    return np.asarray(x)


def _broadcast(name, a, b):
    """Raises a ValueError naming both shapes when `a` and `b` cannot broadcast."""
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{name}: y_true of shape {a.shape} and y_pred of shape {b.shape} cannot be matched"
        ) from None


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Element-wise ``y_true == y_pred`` as 0/1 floats (Keras 3), after Keras' rank
    matching (``(N,)`` against ``(N, 1)`` pairs element by element)."""
    y_pred = _np(y_pred)
    y_true = _np(y_true).astype(y_pred.dtype, copy=False)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    _broadcast("accuracy", y_true, y_pred)
    return np.equal(y_true, y_pred).astype(np.float32)


def binary_accuracy(y_true: ArrayLike, y_pred: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Element-wise ``y_true == (y_pred > threshold)`` as 0/1 floats (Keras 3), after
    Keras' rank matching."""
    y_true, y_pred = squeeze_or_expand_to_same_rank(_np(y_true), _np(y_pred))
    _broadcast("binary_accuracy", y_true, y_pred)
    return np.equal(y_true, (y_pred > threshold).astype(y_true.dtype)).astype(np.float32)


def categorical_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``argmax(y_true) == argmax(y_pred)`` (one-hot labels)."""
    y_pred = _np(y_pred)
    y_true = np.argmax(_np(y_true), axis=-1)
    shape = y_true.shape
    squeezed = y_true.ndim == y_pred.ndim  # as Keras: labels with one more axis than y_pred
    if squeezed:
        y_true = np.squeeze(y_true, -1)
    y_pred = np.argmax(y_pred, axis=-1)
    _broadcast("categorical_accuracy", y_true, y_pred)
    matches = np.equal(y_true, y_pred).astype(np.float32)
    return matches.reshape(shape) if squeezed else matches


def sparse_categorical_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``y_true == argmax(y_pred)`` for integer labels, shaped ``(N,)`` or
    ``(N, 1)``."""
    y_pred = _np(y_pred)
    y_true = _np(y_true)
    shape = y_true.shape
    squeezed = y_true.ndim == y_pred.ndim and y_true.ndim > 0 and shape[-1] == 1
    if squeezed:
        y_true = np.squeeze(y_true, -1)
    y_pred = np.argmax(y_pred, axis=-1)
    _broadcast("sparse_categorical_accuracy", y_true, y_pred)
    matches = np.equal(y_true, y_pred).astype(np.float32)
    if squeezed:
        matches = matches.reshape(shape)
    if matches.ndim > 1 and matches.shape[-1] == 1:
        matches = np.squeeze(matches, -1)
    return matches


def _errors(name, y_true, y_pred):
    y_true, y_pred = squeeze_or_expand_to_same_rank(
        _np(y_true).astype(np.float64), _np(y_pred).astype(np.float64)
    )
    _broadcast(name, y_true, y_pred)
    return y_pred - y_true


def mean_squared_error(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``mean(square(y_true - y_pred), axis=-1)``, shapes matched as the loss."""
    d = _errors("mean_squared_error", y_true, y_pred)
    return np.mean(d * d, axis=-1)


def mean_absolute_error(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``mean(abs(y_true - y_pred), axis=-1)``, shapes matched as the loss."""
    return np.mean(np.abs(_errors("mean_absolute_error", y_true, y_pred)), axis=-1)


def _samplewise(name, values, sample_weight, reduce_fn):
    """Keras 3's reduce_to_samplewise_values: the values, weighted and reduced to one per
    sample, and the weights reduced to one per sample (None when not given)."""
    values = np.asarray(values, dtype=np.float64)
    sw = None
    if sample_weight is not None:
        sw = np.asarray(sample_weight, dtype=np.float64)
        values, sw = squeeze_or_expand_to_same_rank(values, sw)
        if values.ndim > sw.ndim:
            values = reduce_fn(values, axis=tuple(range(sw.ndim, values.ndim)))
        try:
            sw = np.broadcast_to(sw, values.shape)
        except ValueError:
            raise ValueError(
                f"{name}: sample_weight of shape {np.shape(sample_weight)} does not "
                f"match values of shape {values.shape}"
            ) from None
        values = values * sw
        if sw.ndim > 1:
            sw = reduce_fn(sw, axis=tuple(range(1, sw.ndim)))
    if values.ndim > 1:
        values = reduce_fn(values, axis=tuple(range(1, values.ndim)))
    return values, sw


class Metric:
    """Base class of stateful metrics.

    Args:
        name: the metric's name (the key in ``fit``'s logs).
        dtype: only float32 (results are Python floats).

    ``type(m).from_config(m.get_config())`` makes an equal metric with a fresh state, as
    ``deserialize(serialize(m))`` does. A metric that knows whether it is better high or
    low says so in ``_direction`` (``"up"``/``"down"``, as Keras 3): callbacks in mode
    ``"auto"`` read it.
    """

    def __init__(self, name: Optional[str] = None, dtype: Any = None) -> None:
        if dtype is not None and np.dtype(dtype) != np.float32:
            raise TypeError(
                f"{type(self).__name__}: only float32 is supported, got dtype={dtype!r}"
            )
        self.name = name or snake_case(type(self).__name__)
        self.reset_state()

    def reset_state(self) -> None:
        """Clears the accumulated state (called at the start of each epoch)."""
        raise NotImplementedError

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        """Accumulates the metric over a batch (subclasses define the arguments,
        usually ``(y_true, y_pred, sample_weight=None)``).
        """
        raise NotImplementedError

    def result(self) -> Any:
        """The metric's current value (a Python float)."""
        raise NotImplementedError

    reset_states = lambda self: self.reset_state()  # noqa: E731 (Keras 2 spelling)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.update_state(*args, **kwargs)
        return self.result()

    def get_config(self) -> Config:
        """The metric's configuration (``{"name": ..., "dtype": "float32"}`` and its own
        arguments), as Keras 3's."""
        return {"name": self.name, "dtype": "float32"}

    @classmethod
    def from_config(cls, config: Config) -> Metric:
        """A new metric (fresh state) from the dict that ``get_config`` returned."""
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name} result={self.result():.4f}>"


class Mean(Metric):
    """The (weighted) mean of the values given: ``sum(values * w) / sum(w)``."""

    def reset_state(self) -> None:
        """Sets the running total and count to zero."""
        self.total = 0.0
        self.count = 0.0

    def update_state(self, values: ArrayLike, sample_weight: Optional[ArrayLike] = None) -> None:
        """Adds a batch of values to the (weighted) mean, as Keras 3: values are reduced to
        one per sample (the mean over the axes the weights do not cover), each sample
        counts its weight (the mean of its element-wise weights).

        Args:
            values: array-like of any shape.
            sample_weight: optional weights: a scalar, ``(batch,)``, ``(batch, 1)``, or
                broadcastable to `values` (element-wise).
        """
        values, sw = _samplewise(self.name, values, sample_weight, np.mean)
        total = float(values.sum())
        count = float(sw.sum()) if sw is not None else float(values.shape[0] if values.ndim else 1)
        self.total += total
        self.count += count

    def result(self) -> Any:
        """The weighted mean of every value seen since the last reset (0 when none)."""
        return self.total / self.count if self.count else 0.0


class Sum(Metric):
    """The sum of the values given."""

    def reset_state(self) -> None:
        """Sets the running total to zero."""
        self.total = 0.0

    def update_state(self, values: ArrayLike, sample_weight: Optional[ArrayLike] = None) -> None:
        """Adds the (weighted) sum of a batch of values.

        Args:
            values: array-like of any shape.
            sample_weight: optional weights, matched to `values` as in ``Mean``.
        """
        values, _ = _samplewise(self.name, values, sample_weight, np.sum)
        self.total += float(values.sum())

    def result(self) -> Any:
        """The total since the last reset."""
        return self.total


class MeanMetricWrapper(Mean):
    """The mean over samples of ``fn(y_true, y_pred, **kwargs)``."""

    def __init__(
        self, fn: Callable[..., Any], name: Optional[str] = None, dtype: Any = None, **kwargs: Any
    ) -> None:
        if isinstance(fn, str):  # a shipped function by name (what get_config writes)
            fn = _function(fn)
        if not callable(fn):
            raise TypeError(f"MeanMetricWrapper: fn must be callable, got {type(fn).__name__}")
        self._fn = fn
        self._fn_kwargs = kwargs
        super().__init__(name=name or getattr(fn, "__name__", "metric"), dtype=dtype)
        if _is_loss_function(fn):  # Keras 3: a wrapped loss is to be minimised
            self._direction = "down"

    def get_config(self) -> Config:
        """``name``, ``dtype`` and ``fn``: a shipped function by name (JSON), your own
        function as it is (not JSON, as Keras' needs ``safe_mode=False``)."""
        config = super().get_config()
        name = getattr(self._fn, "__name__", None)
        config["fn"] = name if name is not None and _FUNCTIONS.get(name) is self._fn else self._fn
        config.update(self._fn_kwargs)
        return config

    def update_state(
        self,
        y_true: ArrayLike,
        y_pred: ArrayLike,  # type: ignore[override]
        sample_weight: Optional[ArrayLike] = None,
    ) -> None:
        """Evaluates the wrapped function on a batch and adds its per-sample values to the mean.

        Args:
            y_true: targets ``(batch, ...)``.
            y_pred: predictions ``(batch, ...)``.
            sample_weight: optional weights, per sample ``(batch,)`` or element-wise.
        """
        super().update_state(self._fn(y_true, y_pred, **self._fn_kwargs), sample_weight)


class _BuiltinWrapper(MeanMetricWrapper):
    """A shipped wrapper: its function is fixed by the class, so its config is
    ``{"name", "dtype"}`` (and its own arguments), as Keras 3's."""

    def get_config(self) -> Config:
        return Metric.get_config(self)


class Accuracy(_BuiltinWrapper):
    """How often predictions equal labels exactly: ``mean(y_true == y_pred)``."""

    def __init__(self, name: str = "accuracy", dtype: Any = None) -> None:
        super().__init__(accuracy, name=name, dtype=dtype)
        self._direction = "up"


class BinaryAccuracy(_BuiltinWrapper):
    """How often ``(y_pred > threshold)`` matches binary labels.

    Args:
        threshold: the decision threshold (0.5).
    """

    def __init__(
        self, name: str = "binary_accuracy", dtype: Any = None, threshold: float = 0.5
    ) -> None:
        super().__init__(binary_accuracy, name=name, dtype=dtype, threshold=threshold)
        self.threshold = threshold
        self._direction = "up"

    def get_config(self) -> Config:
        config = super().get_config()
        config["threshold"] = self.threshold
        return config


class CategoricalAccuracy(_BuiltinWrapper):
    """How often ``argmax(y_pred)`` equals ``argmax(y_true)`` (one-hot labels)."""

    def __init__(self, name: str = "categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(categorical_accuracy, name=name, dtype=dtype)
        self._direction = "up"


class SparseCategoricalAccuracy(_BuiltinWrapper):
    """How often ``argmax(y_pred)`` equals integer labels."""

    def __init__(self, name: str = "sparse_categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(sparse_categorical_accuracy, name=name, dtype=dtype)
        self._direction = "up"


class MeanSquaredError(_BuiltinWrapper):
    """Mean of ``mean(square(y_true - y_pred), axis=-1)`` over samples."""

    def __init__(self, name: str = "mean_squared_error", dtype: Any = None) -> None:
        super().__init__(mean_squared_error, name=name, dtype=dtype)
        self._direction = "down"


class MeanAbsoluteError(_BuiltinWrapper):
    """Mean of ``mean(abs(y_true - y_pred), axis=-1)`` over samples."""

    def __init__(self, name: str = "mean_absolute_error", dtype: Any = None) -> None:
        super().__init__(mean_absolute_error, name=name, dtype=dtype)
        self._direction = "down"


# the shipped metric functions by name (MeanMetricWrapper's config names them)
_FUNCTIONS = {
    f.__name__: f
    for f in (
        accuracy,
        binary_accuracy,
        categorical_accuracy,
        sparse_categorical_accuracy,
        mean_squared_error,
        mean_absolute_error,
    )
}


def _function(name):
    fn = _FUNCTIONS.get(name)
    if fn is None:
        from . import losses as _losses

        fn = getattr(_losses, name, None) if name in getattr(_losses, "__all__", ()) else None
    if not callable(fn):
        raise ValueError(f"Unknown metric function: {name!r}; known: {sorted(_FUNCTIONS)}")
    return fn


def _is_loss_function(fn):
    """Whether fn is one of the shipped losses (a function or a Loss object) or the
    metrics' own mean squared / absolute error."""
    from . import losses as _losses

    if fn is mean_squared_error or fn is mean_absolute_error:
        return True
    return getattr(fn, "__module__", None) == _losses.__name__ or isinstance(fn, _losses.Loss)


_BY_NAME = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
}
_BY_CLASS = {
    c.__name__: c
    for c in (
        Accuracy,
        BinaryAccuracy,
        CategoricalAccuracy,
        SparseCategoricalAccuracy,
        MeanSquaredError,
        MeanAbsoluteError,
        Mean,
        Sum,
    )
}


def serialize(metric: Metric) -> Config:
    """A metric as ``{"class_name": ..., "config": metric.get_config()}``."""
    if not isinstance(metric, Metric):
        raise TypeError(f"serialize: expected a Metric, got {type(metric).__name__}")
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(config: Any, custom_objects: Optional[Dict[str, Any]] = None) -> Metric:
    """A metric from ``serialize``'s output (or a name, as ``get``); classes of your own go
    in `custom_objects` (``{"MyMetric": MyMetric}``).

    Raises:
        ValueError: an unknown class name.
    """
    if isinstance(config, str):
        return get(config)
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            f"deserialize: expected a dict with 'class_name' and 'config' (what "
            f"serialize returns), got {config!r}"
        )
    registry = dict(_BY_CLASS, MeanMetricWrapper=MeanMetricWrapper)
    registry.update(custom_objects or {})
    cls = registry.get(config["class_name"])
    if cls is None:
        raise ValueError(
            f"Unknown metric class {config['class_name']!r}; pass it in custom_objects"
        )
    return cls.from_config(dict(config.get("config", {})))


def get(identifier: Any) -> Optional[Metric]:
    """A Metric instance from a name, class name, config dict, Metric or function
    ``f(y_true, y_pred)``; None gives None, as Keras 3.

    ``"accuracy"``/``"acc"`` need the loss and shapes to be resolved: see ``resolve``.

    Raises:
        ValueError: an unknown name, or anything else (Keras 3's type).
    """
    if identifier is None:
        return None
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        if identifier in ("accuracy", "acc"):
            return Accuracy(name=identifier)
        cls = _BY_NAME.get(identifier) or _BY_CLASS.get(identifier)
        if cls is None:
            raise ValueError(
                f"Unknown metric: {identifier!r}; known: "
                f"{sorted(set(_BY_NAME) | set(_BY_CLASS) | {'accuracy', 'acc'})}"
            )
        return cls(name=identifier) if identifier in _BY_NAME else cls()
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        return MeanMetricWrapper(identifier)
    raise ValueError(f"Could not interpret metric identifier: {identifier!r}")


def resolve(identifier: Any, loss: Any, y_true: ArrayLike, y_pred: Array) -> Metric:
    """Keras 3's resolution of ``"accuracy"``/``"acc"`` from the shapes alone
    (``keras.src.trainers.compile_utils.get_metric``; the loss is not consulted).

    Binary when the prediction has one unit; sparse categorical when the labels have
    fewer dims than the predictions (or a last dim of 1 against several classes);
    categorical otherwise. The name stays as given.
    """
    if not (isinstance(identifier, str) and identifier in ("accuracy", "acc")):
        return get(identifier)
    y_true_shape, y_pred_shape = np.shape(y_true), tuple(y_pred.shape)
    if y_pred_shape and y_pred_shape[-1] == 1:
        return BinaryAccuracy(name=identifier)
    if len(y_true_shape) < len(y_pred_shape) or (
        y_true_shape and y_true_shape[-1] == 1 and y_pred_shape[-1] > 1
    ):
        return SparseCategoricalAccuracy(name=identifier)
    return CategoricalAccuracy(name=identifier)
