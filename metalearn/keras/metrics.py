"""Metrics, as ``keras.metrics``: stateful running values, computed in NumPy.

A metric accumulates with ``update_state(y_true, y_pred, sample_weight=None)``, reports
with ``result()`` and restarts with ``reset_state()``. The per-batch work is vectorised
NumPy on the prediction array (no Python loop over samples).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from metalearn._typing import Array, ArrayLike, Config
import numpy as np

from .backend import snake_case

__all__ = ["Metric", "Mean", "Sum", "MeanMetricWrapper", "Accuracy", "BinaryAccuracy",
           "CategoricalAccuracy", "SparseCategoricalAccuracy", "MeanSquaredError",
           "MeanAbsoluteError", "accuracy", "binary_accuracy", "categorical_accuracy",
           "sparse_categorical_accuracy", "get", "resolve"]


def _np(x):
    return np.asarray(x)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``mean(y_true == y_pred)`` over the last axis (exact equality)."""
    y_true, y_pred = _np(y_true), _np(y_pred)
    if y_true.shape != y_pred.shape and y_true.size == y_pred.size:
        y_true = y_true.reshape(y_pred.shape)
    eq = (y_true == y_pred).astype(np.float32)
    return eq.mean(axis=-1) if eq.ndim > 1 else eq


def binary_accuracy(y_true: ArrayLike, y_pred: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Per-sample fraction of ``(y_pred > threshold) == y_true`` over the last axis."""
    y_true, y_pred = _np(y_true), _np(y_pred)
    if y_true.shape != y_pred.shape and y_true.size == y_pred.size:
        y_true = y_true.reshape(y_pred.shape)
    eq = ((y_pred > threshold) == (y_true > 0.5)).astype(np.float32)
    return eq.mean(axis=-1) if eq.ndim > 1 else eq


def categorical_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``argmax(y_true) == argmax(y_pred)``."""
    return (np.argmax(_np(y_true), axis=-1) == np.argmax(_np(y_pred), axis=-1)).astype(np.float32)


def sparse_categorical_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per-sample ``y_true == argmax(y_pred)`` for integer labels."""
    y_pred = _np(y_pred)
    y_true = _np(y_true).reshape(y_pred.shape[:-1])
    return (y_true.astype(np.int64) == np.argmax(y_pred, axis=-1)).astype(np.float32)


def _squared_error(y_true, y_pred):
    d = _np(y_pred).astype(np.float64) - _np(y_true).astype(np.float64)
    return np.mean(d * d, axis=-1)


def _absolute_error(y_true, y_pred):
    d = _np(y_pred).astype(np.float64) - _np(y_true).astype(np.float64)
    return np.mean(np.abs(d), axis=-1)


class Metric:
    """Base class of stateful metrics.

    Args:
        name: the metric's name (the key in ``fit``'s logs).
    """

    def __init__(self, name: Optional[str] = None, dtype: Any = None) -> None:
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
        """The metric's configuration (``{"name": ...}``)."""
        return {"name": self.name}

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name} result={self.result():.4f}>"


class Mean(Metric):
    """The (weighted) mean of the values given: ``sum(values * w) / sum(w)``."""

    def reset_state(self) -> None:
        """Sets the running total and count to zero."""
        self.total = 0.0
        self.count = 0.0

    def update_state(self, values: ArrayLike, sample_weight: Optional[ArrayLike] = None) -> None:
        """Adds a batch of values to the (weighted) mean.

        Args:
            values: array-like of any shape.
            sample_weight: optional weights broadcastable to `values`.
        """
        values = np.asarray(values, dtype=np.float64)
        if sample_weight is None:
            self.total += float(values.sum())
            self.count += float(values.size)
        else:
            w = np.broadcast_to(np.asarray(sample_weight, dtype=np.float64).reshape(
                np.shape(sample_weight) + (1,) * max(values.ndim - np.ndim(sample_weight), 0)),
                values.shape)
            self.total += float((values * w).sum())
            self.count += float(w.sum())

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
            sample_weight: optional weights broadcastable to `values`.
        """
        values = np.asarray(values, dtype=np.float64)
        if sample_weight is not None:
            values = values * np.asarray(sample_weight, dtype=np.float64)
        self.total += float(values.sum())

    def result(self) -> Any:
        """The total since the last reset."""
        return self.total


class MeanMetricWrapper(Mean):
    """The mean over samples of ``fn(y_true, y_pred, **kwargs)``."""

    def __init__(self, fn: Callable[..., Any], name: Optional[str] = None, dtype: Any = None,
                 **kwargs: Any) -> None:
        self._fn = fn
        self._fn_kwargs = kwargs
        super().__init__(name=name or getattr(fn, "__name__", "metric"))

    def update_state(self, y_true: ArrayLike, y_pred: ArrayLike,  # type: ignore[override]
                     sample_weight: Optional[ArrayLike] = None) -> None:
        """Evaluates the wrapped function on a batch and adds its per-sample values to the mean.

        Args:
            y_true: targets ``(batch, ...)``.
            y_pred: predictions ``(batch, ...)``.
            sample_weight: optional per-sample weights ``(batch,)``.
        """
        super().update_state(self._fn(y_true, y_pred, **self._fn_kwargs), sample_weight)


class Accuracy(MeanMetricWrapper):
    """How often predictions equal labels exactly: ``mean(y_true == y_pred)``."""

    def __init__(self, name: str = "accuracy", dtype: Any = None) -> None:
        super().__init__(accuracy, name=name)


class BinaryAccuracy(MeanMetricWrapper):
    """How often ``(y_pred > threshold)`` matches binary labels.

    Args:
        threshold: the decision threshold (0.5).
    """

    def __init__(self, name: str = "binary_accuracy", dtype: Any = None, threshold: float = 0.5) -> None:
        super().__init__(binary_accuracy, name=name, threshold=threshold)


class CategoricalAccuracy(MeanMetricWrapper):
    """How often ``argmax(y_pred)`` equals ``argmax(y_true)`` (one-hot labels)."""

    def __init__(self, name: str = "categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(categorical_accuracy, name=name)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    """How often ``argmax(y_pred)`` equals integer labels."""

    def __init__(self, name: str = "sparse_categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(sparse_categorical_accuracy, name=name)


class MeanSquaredError(MeanMetricWrapper):
    """Mean of ``mean(square(y_true - y_pred), axis=-1)`` over samples."""

    def __init__(self, name: str = "mean_squared_error", dtype: Any = None) -> None:
        super().__init__(_squared_error, name=name)


class MeanAbsoluteError(MeanMetricWrapper):
    """Mean of ``mean(abs(y_true - y_pred), axis=-1)`` over samples."""

    def __init__(self, name: str = "mean_absolute_error", dtype: Any = None) -> None:
        super().__init__(_absolute_error, name=name)


_BY_NAME = {
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
}
_BY_CLASS = {c.__name__: c for c in (Accuracy, BinaryAccuracy, CategoricalAccuracy,
                                     SparseCategoricalAccuracy, MeanSquaredError,
                                     MeanAbsoluteError, Mean, Sum)}


def get(identifier: Any) -> Metric:
    """A Metric instance from a name, class name, Metric or function ``f(y_true, y_pred)``.

    ``"accuracy"``/``"acc"`` need the loss and shapes to be resolved: see ``resolve``.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        if identifier in ("accuracy", "acc"):
            return Accuracy(name=identifier)
        cls = _BY_NAME.get(identifier) or _BY_CLASS.get(identifier)
        if cls is None:
            raise ValueError(f"Unknown metric: {identifier!r}; known: "
                             f"{sorted(set(_BY_NAME) | set(_BY_CLASS) | {'accuracy', 'acc'})}")
        return cls(name=identifier) if identifier in _BY_NAME else cls()
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        return MeanMetricWrapper(identifier)
    raise TypeError(f"Could not interpret metric identifier: {identifier!r}")


def resolve(identifier: Any, loss: Any, y_true: ArrayLike, y_pred: Array) -> Metric:
    """Keras's resolution of ``"accuracy"``/``"acc"`` from the loss and the shapes.

    Binary when the loss is binary cross-entropy or the prediction has one unit;
    sparse categorical when the labels have one dim fewer than the predictions (or a last
    dim of 1 against several classes); categorical otherwise. The name stays as given.
    """
    if not (isinstance(identifier, str) and identifier in ("accuracy", "acc")):
        return get(identifier)
    loss_name = getattr(loss, "name", None) or getattr(loss, "__name__", "") or ""
    y_true_shape, y_pred_shape = np.shape(y_true), tuple(y_pred.shape)
    if "binary" in loss_name or (y_pred_shape and y_pred_shape[-1] == 1):
        return BinaryAccuracy(name=identifier)
    if "sparse" in loss_name or len(y_true_shape) < len(y_pred_shape) or (
            y_true_shape and y_true_shape[-1] == 1 and y_pred_shape[-1] > 1):
        return SparseCategoricalAccuracy(name=identifier)
    return CategoricalAccuracy(name=identifier)
