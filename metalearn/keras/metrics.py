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
    "Precision",
    "Recall",
    "AUC",
    "TopKCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
    "FBetaScore",
    "F1Score",
    "MeanIoU",
    "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
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

    @property
    def dtype(self) -> str:
        """The metric's dtype name (``"float32"``; MeanIoU's may be ``"int32"``)."""
        return getattr(self, "_dtype", "float32")

    def __repr__(self):
        r = self.result()
        shown = f"{r:.4f}" if np.ndim(r) == 0 else np.array2string(np.asarray(r), precision=4)
        return f"<{type(self).__name__} name={self.name} result={shown}>"


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


# ------------------------------------------------------------------ issue 22's metrics
# Keras 3's confusion-matrix metrics (keras.src.metrics.confusion_metrics, metrics_utils):
# counts of true/false positives/negatives per threshold, accumulated in float64 NumPy;
# a prediction is positive at threshold t when y_pred > t.
_NEG_INF = -1e10  # metrics_utils.NEG_INF: what top_k filtering gives the other entries
_EPSILON = 1e-7  # backend.epsilon()


def _divide_no_nan(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _check_thresholds(name, thresholds):
    values = thresholds if isinstance(thresholds, (list, tuple, np.ndarray)) else [thresholds]
    for t in values:
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, float, np.number))
            or not 0.0 <= float(t) <= 1.0
        ):
            raise ValueError(
                f"{name}: threshold values must be in [0, 1]. Received: {thresholds!r}"
            )
    return [float(t) for t in values]


def _check_optional_int(name, what, value, minimum):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: {what} must be an integer >= {minimum} or None, got {value!r}")
    return int(value)


def _confusion_inputs(name, y_true, y_pred, sample_weight, top_k=None, class_id=None):
    """Keras' update_confusion_matrix_variables up to the comparison: rank matching, the
    weights expanded and matched, top-k filtering and the class column; returns flat
    float64 (labels, predictions, weights or None)."""
    # compared in float32, as Keras' variables: a score equal to a threshold in float32
    # is not above it
    y_pred = np.asarray(y_pred, dtype=np.float32)
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred, y_true = squeeze_or_expand_to_same_rank(y_pred, y_true)
    try:
        shape = np.broadcast_shapes(y_true.shape, y_pred.shape)
    except ValueError:
        raise ValueError(
            f"{name}: y_true of shape {y_true.shape} and y_pred of shape {y_pred.shape} "
            "cannot be matched"
        ) from None
    if shape != y_pred.shape:
        raise ValueError(
            f"{name}: y_true of shape {y_true.shape} does not match y_pred of shape {y_pred.shape}"
        )
    y_true = np.broadcast_to(y_true, shape)
    sw = None
    if sample_weight is not None:
        sw = np.expand_dims(np.asarray(sample_weight, dtype=np.float64), -1)
        _, sw = squeeze_or_expand_to_same_rank(y_true, sw, expand_rank_1=False)
        try:
            sw = np.broadcast_to(sw, shape)
        except ValueError:
            raise ValueError(
                f"{name}: sample_weight of shape {np.shape(sample_weight)} does not match "
                f"y_pred of shape {y_pred.shape}"
            ) from None
    if top_k is not None:
        if y_pred.ndim == 0:
            raise ValueError(f"{name}: top_k needs y_pred with a class axis, got a scalar")
        k = min(top_k, y_pred.shape[-1])
        # the k largest per row (ties broken by position, as top_k's indices)
        order = np.argsort(-y_pred, axis=-1, kind="stable")[..., :k]
        keep = np.zeros(y_pred.shape, bool)
        np.put_along_axis(keep, order, True, axis=-1)
        y_pred = np.where(keep, y_pred, _NEG_INF)
    if class_id is not None:
        if y_pred.ndim < 2:
            raise ValueError(
                f"{name}: When class_id is provided, y_pred must be a 2D array with shape "
                f"(num_samples, num_classes), found shape: {y_pred.shape}"
            )
        if not class_id < y_pred.shape[-1]:
            raise ValueError(
                f"{name}: class_id {class_id} is out of range for {y_pred.shape[-1]} classes"
            )
        y_true, y_pred = y_true[..., class_id], y_pred[..., class_id]
        sw = None if sw is None else sw[..., class_id]
    return y_true, y_pred, sw


def _confusion_counts(y_true, y_pred, sw, thresholds, label_axis=None):
    """(tp, fp, tn, fn) per threshold (and per label when `label_axis` keeps the last
    axis): weighted sums of label_is_pos & (pred > t) and the other three."""
    t = np.asarray(thresholds, dtype=np.float32)
    if label_axis is None:
        y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
        sw = None if sw is None else sw.reshape(-1)
    else:  # multi_label: (samples, labels)
        y_true = y_true.reshape(-1, y_true.shape[-1])
        y_pred = y_pred.reshape(-1, y_pred.shape[-1])
        sw = None if sw is None else sw.reshape(-1, sw.shape[-1])
    pos = (y_true != 0)[None]
    pred_pos = y_pred[None] > t.reshape((-1,) + (1,) * y_pred.ndim)
    w = np.ones(y_pred.shape) if sw is None else sw
    w = w[None]

    def total(mask):
        return np.sum(np.where(mask, w, 0.0), axis=1)

    return (
        total(pos & pred_pos),
        total(~pos & pred_pos),
        total(~pos & ~pred_pos),
        total(pos & ~pred_pos),
    )


class _ThresholdMetric(Metric):
    """Precision and Recall: counts per threshold, ``result()`` a float for one threshold,
    an array for several (as Keras 3)."""

    _counts = ()  # the confusion counts the metric keeps

    def __init__(
        self,
        thresholds: Any = None,
        top_k: Optional[int] = None,
        class_id: Optional[int] = None,
        name: Optional[str] = None,
        dtype: Any = None,
    ) -> None:
        cls = type(self).__name__
        self.init_thresholds = thresholds
        self.top_k = _check_optional_int(cls, "top_k", top_k, 1)
        self.class_id = _check_optional_int(cls, "class_id", class_id, 0)
        default = 0.5 if top_k is None else _NEG_INF
        self.thresholds = [default] if thresholds is None else _check_thresholds(cls, thresholds)
        super().__init__(name=name, dtype=dtype)
        self._direction = "up"

    def reset_state(self) -> None:
        """Sets every count to zero."""
        for c in self._counts:
            setattr(self, c, np.zeros(len(self.thresholds)))

    def update_state(
        self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: Optional[ArrayLike] = None
    ) -> None:
        """Adds a batch's weighted counts at each threshold.

        Args:
            y_true: labels (nonzero is positive), shaped as `y_pred` (Keras' rank matching).
            y_pred: scores, usually in [0, 1].
            sample_weight: optional weights, per sample or element-wise.

        Raises:
            ValueError: shapes that do not match (both named); nothing is counted.
        """
        yt, yp, sw = _confusion_inputs(
            self.name, y_true, y_pred, sample_weight, self.top_k, self.class_id
        )
        tp, fp, tn, fn = _confusion_counts(yt, yp, sw, self.thresholds)
        found = {"true_positives": tp, "false_positives": fp, "false_negatives": fn}
        for c in self._counts:
            setattr(self, c, getattr(self, c) + found[c])

    def _value(self, other):
        r = _divide_no_nan(self.true_positives, self.true_positives + other)
        return float(r[0]) if len(self.thresholds) == 1 else r

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(thresholds=self.init_thresholds, top_k=self.top_k, class_id=self.class_id)
        return config


class Precision(_ThresholdMetric):
    """Precision ``tp / (tp + fp)``: how many of the predicted positives are positive.

    Args:
        thresholds: a float or list of floats in [0, 1] (default 0.5; with `top_k`, no
            threshold beyond being among the top k); several give an array result.
        top_k: count only the k highest scores of each sample as predicted positive.
        class_id: compute for this class (column) only.
        name: default ``"precision"``.
    """

    _counts = ("true_positives", "false_positives")

    def result(self) -> Any:
        """``tp / (tp + fp)`` (0 when there is no predicted positive)."""
        return self._value(self.false_positives)


class Recall(_ThresholdMetric):
    """Recall ``tp / (tp + fn)``: how many of the positives are predicted positive.

    Args: as ``Precision``'s; name default ``"recall"``.
    """

    _counts = ("true_positives", "false_negatives")

    def result(self) -> Any:
        """``tp / (tp + fn)`` (0 when there is no positive label)."""
        return self._value(self.false_negatives)


class AUC(Metric):
    """Area under the ROC or precision-recall curve, by a Riemann sum over thresholds
    (Keras 3's ``AUC``).

    Args:
        num_thresholds: thresholds spread evenly over [0, 1] (200), the first just below 0
            and the last just above 1 (by 1e-7).
        curve: ``"ROC"``, ``"PR"`` or ``"PRGAIN"`` (precision-recall gain, Flach & Kull
            2015, as Keras 3).
        summation_method: ``"interpolation"`` (the trapezoidal rule; for PR, Davis &
            Goadrich's interpolation), ``"minoring"`` or ``"majoring"``.
        name: default ``"auc"``.
        thresholds: explicit thresholds in [0, 1] (then `num_thresholds` is their count + 2).
        multi_label: one curve per label (last axis), averaged (or weighted by
            `label_weights`); otherwise all labels are flattened into one curve.
        num_labels: with `multi_label`, the number of labels (else taken from the data).
        label_weights: per-label weights of the average (multi-label) or of the counts.
        from_logits: apply a sigmoid to `y_pred` first.
    """

    def __init__(
        self,
        num_thresholds: int = 200,
        curve: str = "ROC",
        summation_method: str = "interpolation",
        name: Optional[str] = None,
        dtype: Any = None,
        thresholds: Any = None,
        multi_label: bool = False,
        num_labels: Optional[int] = None,
        label_weights: Any = None,
        from_logits: bool = False,
    ) -> None:
        curve_up = curve.upper() if isinstance(curve, str) else curve
        if curve_up not in ("ROC", "PR", "PRGAIN"):
            raise ValueError(
                f'Invalid AUC curve value: "{curve}". Expected values are ["PR", "ROC", "PRGAIN"]'
            )
        method = summation_method.lower() if isinstance(summation_method, str) else None
        if method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(
                f'Invalid AUC summation method value: "{summation_method}". Expected values '
                'are ["interpolation", "majoring", "minoring"]'
            )
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            inner = sorted(_check_thresholds("AUC", thresholds))
            self.num_thresholds = len(inner) + 2
        else:
            if (
                isinstance(num_thresholds, bool)
                or not isinstance(num_thresholds, (int, np.integer))
                or num_thresholds <= 1
            ):
                raise ValueError(
                    "Argument `num_thresholds` must be an integer > 1. "
                    f"Received: num_thresholds={num_thresholds}"
                )
            self.num_thresholds = int(num_thresholds)
            inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        if not multi_label and num_labels:
            raise ValueError("`num_labels` is needed only when `multi_label` is True.")
        self._thresholds = np.array([0.0 - _EPSILON] + inner + [1.0 + _EPSILON])
        self.curve = curve_up
        self.summation_method = method
        self.multi_label = bool(multi_label)
        self.num_labels = _check_optional_int("AUC", "num_labels", num_labels, 1)
        self.label_weights = (
            None if label_weights is None else np.asarray(label_weights, dtype=np.float64)
        )
        self._from_logits = bool(from_logits)
        super().__init__(name=name, dtype=dtype)
        self._direction = "up"

    @property
    def thresholds(self) -> Any:
        """The thresholds, the two outer ones included (a list)."""
        return [float(t) for t in self._thresholds]

    def reset_state(self) -> None:
        """Sets every count to zero (the per-label shape is kept once known)."""
        labels = getattr(self, "_num_labels", None) or (
            self.num_labels if self.multi_label else None
        )
        shape = (
            (self.num_thresholds,) if not self.multi_label else (self.num_thresholds, labels or 0)
        )
        self._num_labels = labels
        for c in ("true_positives", "false_positives", "true_negatives", "false_negatives"):
            setattr(self, c, np.zeros(shape))

    def update_state(
        self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: Optional[ArrayLike] = None
    ) -> None:
        """Adds a batch's weighted counts at every threshold.

        Raises:
            ValueError: shapes that do not match (both named), or with `multi_label`, a
                `y_pred` that is not ``(samples, labels)`` or whose label count changed.
        """
        yp = np.asarray(y_pred, dtype=np.float32)
        if self._from_logits:
            yp = (1.0 / (1.0 + np.exp(-yp.astype(np.float64)))).astype(np.float32)
        yt, yp, sw = _confusion_inputs(self.name, y_true, yp, sample_weight)
        if self.multi_label:
            if yp.ndim != 2:
                raise ValueError(
                    "`y_pred` must have rank 2 when `multi_label=True`. Found rank "
                    f"{yp.ndim}. Full shape received for `y_pred`: {yp.shape}"
                )
            if self._num_labels is None:
                self._num_labels = yp.shape[1]
                self.reset_state()
            elif yp.shape[1] != self._num_labels:
                raise ValueError(
                    f"{self.name}: y_pred has {yp.shape[1]} labels, the metric was built "
                    f"for {self._num_labels}"
                )
        elif self.label_weights is not None:
            lw = np.broadcast_to(self.label_weights, yp.shape)
            sw = lw if sw is None else sw * lw
        counts = _confusion_counts(
            yt, yp, sw, self._thresholds, label_axis=-1 if self.multi_label else None
        )
        self.true_positives = self.true_positives + counts[0]
        self.false_positives = self.false_positives + counts[1]
        self.true_negatives = self.true_negatives + counts[2]
        self.false_negatives = self.false_negatives + counts[3]

    def _by_label(self, terms):
        if not self.multi_label:
            return float(np.sum(terms))
        by_label = np.sum(terms, axis=0)
        if self.label_weights is None:
            return float(np.mean(by_label)) if by_label.size else 0.0
        return float(
            _divide_no_nan(np.sum(by_label * self.label_weights), np.sum(self.label_weights))
        )

    def _interpolate_pr_auc(self):
        n = self.num_thresholds
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        dtp = tp[: n - 1] - tp[1:]
        p = tp + fp
        dp = p[: n - 1] - p[1:]
        slope = _divide_no_nan(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        both = (p[: n - 1] > 0) & (p[1:] > 0)
        ratio = np.where(both, _divide_no_nan(p[: n - 1], np.maximum(p[1:], 0)), 1.0)
        terms = _divide_no_nan(
            slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0)
        )
        return self._by_label(terms)

    def result(self) -> Any:
        """The area (a float)."""
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self._interpolate_pr_auc()
        tp, fp, tn, fn = (
            self.true_positives,
            self.false_positives,
            self.true_negatives,
            self.false_negatives,
        )
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        elif self.curve == "PR":
            x, y = recall, _divide_no_nan(tp, tp + fp)
        else:
            # precision-recall gain (Flach & Kull 2015), as Keras 3: gains scaled by P/N;
            # no true positive: recall gain 0 and precision gain 1; a negative recall
            # gain (recall below the positives' share) clipped to 0
            scale = _divide_no_nan(tp + fn, tn + fp)
            none = tp == 0
            x = np.where(none, 0.0, 1.0 - scale * _divide_no_nan(fn, tp))
            x = np.maximum(x, 0.0)
            y = np.where(none, 1.0, 1.0 - scale * _divide_no_nan(fp, tp))
        n = self.num_thresholds
        if self.summation_method == "interpolation":
            heights = (y[: n - 1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[: n - 1], y[1:])
        else:
            heights = np.maximum(y[: n - 1], y[1:])
        return self._by_label((x[: n - 1] - x[1:]) * heights)

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            num_thresholds=self.num_thresholds,
            curve=self.curve,
            summation_method=self.summation_method,
            multi_label=self.multi_label,
            num_labels=self.num_labels,
            label_weights=None if self.label_weights is None else self.label_weights.tolist(),
            from_logits=self._from_logits,
        )
        if self._init_from_thresholds:
            config["thresholds"] = self.thresholds[1:-1]
        return config


def _in_top_k(labels, y_pred, k, name):
    """Whether each label's score is among the k largest of its row (ties count in, as
    Keras' in_top_k: the label's score >= the k-th largest)."""
    c = y_pred.shape[-1]
    if not np.all((labels >= 0) & (labels < c)):
        raise ValueError(f"{name}: labels must be in [0, {c}), got {np.unique(labels)}")
    target = np.take_along_axis(y_pred, labels[:, None].astype(np.int64), axis=-1)[:, 0]
    if k >= c:
        return np.ones(labels.shape, np.float32)
    kth = -np.partition(-y_pred, k - 1, axis=-1)[:, k - 1]
    return (target >= kth).astype(np.float32)


def top_k_categorical_accuracy(y_true: ArrayLike, y_pred: ArrayLike, k: int = 5) -> np.ndarray:
    """Per sample: whether the one-hot label's class is among the `k` highest scores."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    y_true = np.asarray(y_true)
    if y_true.shape != y_pred.shape or y_pred.ndim < 2:
        raise ValueError(
            f"top_k_categorical_accuracy: y_true of shape {y_true.shape} and y_pred of shape "
            f"{y_pred.shape} must be equal, (samples, ..., classes)"
        )
    labels = np.argmax(y_true, axis=-1)
    out = _in_top_k(labels.reshape(-1), y_pred.reshape(-1, y_pred.shape[-1]), k, "top_k")
    return out.reshape(labels.shape)


def sparse_top_k_categorical_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, k: int = 5, from_sorted_ids: bool = False
) -> np.ndarray:
    """Per sample: whether the integer label is among the `k` highest scores (with
    `from_sorted_ids`, `y_pred` holds class ids sorted by score: the label is among the
    first k)."""
    y_pred = np.asarray(y_pred)
    y_true = np.asarray(y_true)
    shape = y_true.shape
    if y_pred.ndim < 1 or shape != y_pred.shape[:-1] and shape != y_pred.shape[:-1] + (1,):
        raise ValueError(
            f"sparse_top_k_categorical_accuracy: y_true of shape {shape} does not match "
            f"y_pred of shape {y_pred.shape} (labels: y_pred's shape without its last axis)"
        )
    labels = y_true.reshape(-1)
    rows = y_pred.reshape(-1, y_pred.shape[-1])
    if from_sorted_ids:
        out = np.any(labels[:, None] == rows[:, :k], axis=1).astype(np.float32)
    else:
        out = _in_top_k(labels.astype(np.int64), rows.astype(np.float64), k, "sparse_top_k")
    return out.reshape(shape)


def _check_k(name, k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}: k must be a positive integer, got {k!r}")
    return int(k)


class TopKCategoricalAccuracy(_BuiltinWrapper):
    """How often the one-hot label is among the `k` highest predictions (k = 5)."""

    def __init__(
        self, k: int = 5, name: str = "top_k_categorical_accuracy", dtype: Any = None
    ) -> None:
        k = _check_k("TopKCategoricalAccuracy", k)
        super().__init__(top_k_categorical_accuracy, name=name, dtype=dtype, k=k)
        self.k = k
        self._direction = "up"

    def get_config(self) -> Config:
        config = super().get_config()
        config["k"] = self.k
        return config


class SparseTopKCategoricalAccuracy(_BuiltinWrapper):
    """How often the integer label is among the `k` highest predictions (k = 5)."""

    def __init__(
        self,
        k: int = 5,
        name: str = "sparse_top_k_categorical_accuracy",
        dtype: Any = None,
        from_sorted_ids: bool = False,
    ) -> None:
        k = _check_k("SparseTopKCategoricalAccuracy", k)
        super().__init__(
            sparse_top_k_categorical_accuracy,
            name=name,
            dtype=dtype,
            k=k,
            from_sorted_ids=bool(from_sorted_ids),
        )
        self.k = k
        self.from_sorted_ids = bool(from_sorted_ids)
        self._direction = "up"

    def get_config(self) -> Config:
        config = super().get_config()
        config["k"] = self.k
        if self.from_sorted_ids:
            config["from_sorted_ids"] = True
        return config


class FBetaScore(Metric):
    """F-beta score per class (Keras 3's ``FBetaScore``), for 2-D ``(samples, classes)``.

    A prediction is positive where it exceeds `threshold`, or, with ``threshold=None``,
    where it is its row's maximum (and not 0).

    Args:
        average: None (one score per class), ``"micro"`` (counts pooled over classes),
            ``"macro"`` (the mean of the per-class scores) or ``"weighted"`` (weighted by
            the support of each class).
        beta: a float > 0 (1.0).
        threshold: a float in (0, 1], or None.
        name: default ``"fbeta_score"``.
    """

    def __init__(
        self,
        average: Optional[str] = None,
        beta: float = 1.0,
        threshold: Optional[float] = None,
        name: str = "fbeta_score",
        dtype: Any = None,
    ) -> None:
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError(
                "Invalid `average` argument value. Expected one of: {None, 'micro', "
                f"'macro', 'weighted'}}. Received: average={average}"
            )
        if not isinstance(beta, float):
            raise ValueError(
                "Invalid `beta` argument value. It should be a Python float. "
                f"Received: beta={beta} of type '{type(beta)}'"
            )
        if beta <= 0.0:
            raise ValueError(
                f"Invalid `beta` argument value. It should be > 0. Received: beta={beta}"
            )
        if threshold is not None:
            if not isinstance(threshold, float):
                raise ValueError(
                    "Invalid `threshold` argument value. It should be a Python float. "
                    f"Received: threshold={threshold} of type '{type(threshold)}'"
                )
            if threshold > 1.0 or threshold <= 0.0:
                raise ValueError(
                    "Invalid `threshold` argument value. It should verify 0 < threshold "
                    f"<= 1. Received: threshold={threshold}"
                )
        self.average = average
        self.beta = beta
        self.threshold = threshold
        self.axis = None if average == "micro" else 0
        self._classes = None
        super().__init__(name=name, dtype=dtype)
        self._direction = "up"

    def reset_state(self) -> None:
        """Sets the counts to zero (their shape is kept once known)."""
        shape = () if self.axis is None or self._classes is None else (self._classes,)
        self.true_positives = np.zeros(shape)
        self.false_positives = np.zeros(shape)
        self.false_negatives = np.zeros(shape)
        self.intermediate_weights = np.zeros(shape)

    def update_state(
        self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: Optional[ArrayLike] = None
    ) -> None:
        """Adds a batch's weighted counts per class.

        Raises:
            ValueError: inputs that are not 2-D of equal shapes (both named), a class
                count other than the first batch's, weights not one per sample.
        """
        yt = np.asarray(y_true, dtype=np.float64)
        yp = np.asarray(y_pred, dtype=np.float64)
        if yp.ndim != 2 or yt.ndim != 2 or yt.shape != yp.shape:
            raise ValueError(
                "FBetaScore expects 2D inputs with shape (batch_size, output_dim). Received "
                f"input shapes: y_pred.shape={yp.shape} and y_true.shape={yt.shape}."
            )
        if self._classes is not None and yp.shape[1] != self._classes:
            raise ValueError(
                f"{self.name}: y_pred has {yp.shape[1]} classes, the metric was built for "
                f"{self._classes}"
            )
        sw = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float64)
            if sw.ndim == 2 and sw.shape[1] == 1:
                sw = sw[:, 0]
            if sw.ndim == 1:  # one weight per sample
                sw = sw[:, None]
            if sw.shape not in ((), (yp.shape[0], 1), yp.shape):  # or element-wise
                raise ValueError(
                    f"{self.name}: sample_weight of shape {np.shape(sample_weight)} does "
                    f"not match y_pred of shape {yp.shape} (expected a scalar, one weight "
                    "per sample, or y_pred's shape)"
                )
        if self._classes is None:
            self._classes = yp.shape[1]
            self.reset_state()
        if self.threshold is None:
            pred = (yp >= yp.max(axis=-1, keepdims=True)) & (np.abs(yp) > 1e-9)
        else:
            pred = yp > self.threshold
        pred = pred.astype(np.float64)

        def wsum(v):
            return np.sum(v if sw is None else v * sw, axis=self.axis)

        self.true_positives = self.true_positives + wsum(pred * yt)
        self.false_positives = self.false_positives + wsum(pred * (1 - yt))
        self.false_negatives = self.false_negatives + wsum((1 - pred) * yt)
        self.intermediate_weights = self.intermediate_weights + wsum(yt)

    def result(self) -> Any:
        """The score: an array per class (``average=None``) or a float."""
        tp = self.true_positives
        precision = tp / (tp + self.false_positives + _EPSILON)
        recall = tp / (tp + self.false_negatives + _EPSILON)
        b2 = self.beta**2
        f = precision * recall / (b2 * precision + recall + _EPSILON) * (1 + b2)
        if self.average == "weighted":
            weights = self.intermediate_weights / (np.sum(self.intermediate_weights) + _EPSILON)
            return float(np.sum(f * weights))
        if self.average is not None:
            return float(np.mean(f))
        return f

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(average=self.average, beta=self.beta, threshold=self.threshold)
        return config


class F1Score(FBetaScore):
    """F1 score, the F-beta score with ``beta = 1`` (see ``FBetaScore``); name default
    ``"f1_score"``."""

    def __init__(
        self,
        average: Optional[str] = None,
        threshold: Optional[float] = None,
        name: str = "f1_score",
        dtype: Any = None,
    ) -> None:
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name, dtype=dtype)

    def get_config(self) -> Config:
        config = super().get_config()
        del config["beta"]
        return config


class MeanIoU(Metric):
    """Mean intersection-over-union over classes (Keras 3's ``MeanIoU``), from a running
    ``(num_classes, num_classes)`` confusion matrix: per class ``tp / (tp + fp + fn)``,
    averaged over the classes that occur.

    Args:
        num_classes: the number of classes.
        name: default ``"mean_io_u"``.
        dtype: ``"int32"`` (Keras' default: the matrix counts integers, float sample
            weights are truncated, with Keras' warning) or ``"float32"``.
        ignore_class: a label to leave out of the counts.
        sparse_y_true, sparse_y_pred: False when the labels (predictions) are one-hot or
            scores along `axis` (argmax is taken).
        axis: the class axis of non-sparse inputs (-1).
    """

    def __init__(
        self,
        num_classes: int,
        name: Optional[str] = None,
        dtype: Any = None,
        ignore_class: Optional[int] = None,
        sparse_y_true: bool = True,
        sparse_y_pred: bool = True,
        axis: int = -1,
    ) -> None:
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, (int, np.integer))
            or (num_classes < 1)
        ):
            raise ValueError(
                f"MeanIoU: num_classes must be a positive integer, got {num_classes!r}"
            )
        dt = "int32" if dtype is None or dtype == "int" else str(np.dtype(dtype))
        if dt not in ("int32", "float32"):
            raise TypeError(f"MeanIoU: dtype must be 'int32' or 'float32', got {dtype!r}")
        self.num_classes = int(num_classes)
        self.ignore_class = ignore_class
        self.sparse_y_true = bool(sparse_y_true)
        self.sparse_y_pred = bool(sparse_y_pred)
        self.axis = axis
        self._dtype = dt
        Metric.__init__(self, name=name)
        self._direction = "up"

    def reset_state(self) -> None:
        """Sets the confusion matrix to zero."""
        self.total_cm = np.zeros((self.num_classes, self.num_classes))

    def update_state(
        self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: Optional[ArrayLike] = None
    ) -> None:
        """Adds a batch to the confusion matrix (labels or predictions outside
        ``[0, num_classes)`` and `ignore_class` are left out).

        Raises:
            ValueError: label and prediction counts (or the weights') that differ.
        """
        yt, yp = np.asarray(y_true), np.asarray(y_pred)
        if not self.sparse_y_true:
            yt = np.argmax(yt, axis=self.axis)
        if not self.sparse_y_pred:
            yp = np.argmax(yp, axis=self.axis)
        yt, yp = yt.reshape(-1), yp.reshape(-1)
        if yt.shape != yp.shape:
            raise ValueError(
                f"{self.name}: y_true of shape {np.shape(y_true)} and y_pred of shape "
                f"{np.shape(y_pred)} hold different numbers of labels"
            )
        is_int = self._dtype == "int32"
        yt = yt.astype(np.int64) if is_int else yt.astype(np.float64)
        yp = yp.astype(np.int64) if is_int else yp.astype(np.float64)
        if sample_weight is None:
            sw = np.ones(yt.shape)
        else:
            sw = np.asarray(sample_weight)
            if is_int and np.issubdtype(sw.dtype, np.floating):
                import warnings

                warnings.warn(
                    "You are passing weight as `float`, but dtype is `int`. This may "
                    "result in an incorrect weight due to type casting Consider using "
                    "integer weights.",
                    stacklevel=2,
                )
            sw = sw.astype(np.int64) if is_int else sw.astype(np.float64)
            sw = sw.reshape(-1) if sw.ndim > 1 else sw
            try:
                sw = np.broadcast_to(sw, yt.shape)
            except ValueError:
                raise ValueError(
                    f"{self.name}: sample_weight of shape {np.shape(sample_weight)} does not "
                    f"match {yt.shape[0]} labels"
                ) from None
        keep = (yt >= 0) & (yt < self.num_classes) & (yp >= 0) & (yp < self.num_classes)
        if self.ignore_class is not None:
            keep &= yt != self.ignore_class
        yt = np.where(keep, yt, 0).astype(np.int64)
        yp = np.where(keep, yp, 0).astype(np.int64)
        cm = np.zeros((self.num_classes, self.num_classes))
        np.add.at(cm, (yt, yp), np.where(keep, sw, 0).astype(np.float64))
        self.total_cm = self.total_cm + cm

    def result(self) -> Any:
        """The mean IoU over the classes present (a float; Keras' epsilons included)."""
        cm = self.total_cm
        tp = np.diag(cm)
        denominator = cm.sum(axis=0) + cm.sum(axis=1) - tp
        valid = denominator > 1e-9
        iou = np.where(valid, tp / (denominator + _EPSILON), 0.0)
        return float(np.sum(iou) / (np.sum(valid) + _EPSILON))

    def get_config(self) -> Config:
        return {
            "num_classes": self.num_classes,
            "name": self.name,
            "dtype": self._dtype,
            "ignore_class": self.ignore_class,
            "sparse_y_true": self.sparse_y_true,
            "sparse_y_pred": self.sparse_y_pred,
            "axis": self.axis,
        }


_FUNCTIONS.update(
    top_k_categorical_accuracy=top_k_categorical_accuracy,
    sparse_top_k_categorical_accuracy=sparse_top_k_categorical_accuracy,
)
_BY_NAME.update(
    precision=Precision,
    recall=Recall,
    auc=AUC,
    top_k_categorical_accuracy=TopKCategoricalAccuracy,
    sparse_top_k_categorical_accuracy=SparseTopKCategoricalAccuracy,
    f1_score=F1Score,
    fbeta_score=FBetaScore,
)
_BY_CLASS.update(
    {
        c.__name__: c
        for c in (
            Precision,
            Recall,
            AUC,
            TopKCategoricalAccuracy,
            SparseTopKCategoricalAccuracy,
            FBetaScore,
            F1Score,
            MeanIoU,
        )
    }
)
