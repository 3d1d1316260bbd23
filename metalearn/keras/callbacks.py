"""Callbacks, as ``keras.callbacks``: hooks called by ``fit``/``evaluate``/``predict``."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Union

from metalearn._typing import Logs
import os
import warnings

import numpy as np

__all__ = [
    "Callback",
    "CallbackList",
    "History",
    "MonitorCallback",
    "EarlyStopping",
    "ModelCheckpoint",
    "LambdaCallback",
]


class Callback:
    """Base class: override the ``on_*`` hooks you need.

    Attributes:
        model: the model being trained (set by ``fit``).
        params: ``{"epochs", "steps", "verbose"}`` of the run.
    """

    def __init__(self) -> None:
        self.model = None
        self.params = {}

    def set_model(self, model: Any) -> None:
        """Gives the callback the model being trained (``self.model``)."""
        self.model = model

    def set_params(self, params: Dict[str, Any]) -> None:
        """Gives the callback the run's parameters (``epochs``, ``steps``, ``verbose``)."""
        self.params = params

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        """Called once at the start of ``fit``; `logs` is a dict (empty here)."""

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        """Called once at the end of ``fit`` with the last epoch's logs."""

    def on_epoch_begin(self, epoch: int, logs: Optional[Logs] = None) -> None:
        """Called at the start of epoch `epoch` (0-based)."""

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        """Called at the end of epoch `epoch` with its logs (``loss``, metrics, ``val_*``)."""

    def on_train_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Called before training batch `batch` (0-based within the epoch)."""

    def on_train_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Called after training batch `batch` with the running means so far."""

    def on_test_begin(self, logs: Optional[Logs] = None) -> None:
        """Called at the start of ``evaluate`` (and of validation in ``fit``)."""

    def on_test_end(self, logs: Optional[Logs] = None) -> None:
        """Called at the end of ``evaluate`` with its logs."""

    def on_test_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Called before evaluation batch `batch`."""

    def on_test_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Called after evaluation batch `batch` with the running means."""

    def on_predict_begin(self, logs: Optional[Logs] = None) -> None:
        """Called at the start of ``predict``."""

    def on_predict_end(self, logs: Optional[Logs] = None) -> None:
        """Called at the end of ``predict``."""

    def on_predict_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Called before prediction batch `batch`."""

    def on_predict_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Called after prediction batch `batch`; ``logs['outputs']`` holds its output."""

    # Keras 2 names
    def on_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Keras 2 spelling of ``on_train_batch_begin``."""

    def on_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Keras 2 spelling of ``on_train_batch_end``."""


_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)


_ARITY = {
    h: 1
    if h.endswith(
        ("train_begin", "train_end", "test_begin", "test_end", "predict_begin", "predict_end")
    )
    else 2
    for h in _HOOKS
}


class CallbackList:
    """Calls a hook on every callback; skips callbacks that do not override it."""

    def __init__(
        self,
        callbacks: Optional[Iterable[Callback]] = None,
        model: Any = None,
        params: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if model is not None:
                cb.set_model(model)
            if params is not None:
                cb.set_params(params)
        for hook in _HOOKS:
            fns = [
                getattr(cb, hook)
                for cb in self.callbacks
                if getattr(type(cb), hook, None) is not getattr(Callback, hook)
                or hook in getattr(cb, "__dict__", {})
            ]
            if hook in ("on_train_batch_begin", "on_train_batch_end"):
                legacy = "on_batch_begin" if hook.endswith("begin") else "on_batch_end"
                fns += [
                    getattr(cb, legacy)
                    for cb in self.callbacks
                    if getattr(type(cb), legacy, None) is not getattr(Callback, legacy)
                ]
            setattr(self, "_" + hook, fns)

    def _call(self, hook, *args):
        # Keras always passes logs: pad a missing logs argument with {}
        if len(args) < _ARITY[hook]:
            args = args + ({},)
        for fn in getattr(self, "_" + hook):
            fn(*args)

    def has(self, hook: str) -> bool:
        """Whether any callback of the list overrides hook `hook` (a method name)."""
        return bool(getattr(self, "_" + hook))

    def __getattr__(self, name):
        if name in _HOOKS:
            return lambda *args: self._call(name, *args)
        raise AttributeError(name)


class History(Callback):
    """Records the logs of every epoch: ``history.history["loss"]`` is a list per epoch.

    ``fit`` adds one and returns it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self.epoch = []
        self.history = {}

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            self.model.history = self


def _metrics_resolved(model):
    """Whether `model` is a metalearn Model whose ``metrics`` already hold every compiled
    metric (fit resolves them from the shapes before the first step; a model compiled
    without metrics has none to wait for). Other models are asked at the first epoch's
    end, as Keras 3 does."""
    if not hasattr(model, "_metric_specs"):
        return False
    return bool(
        getattr(model, "_metrics_resolved", False)
        or not (model._metric_specs or getattr(model, "_weighted_metric_specs", None))
    )


class MonitorCallback(Callback):
    """Base of the callbacks that watch a quantity in the logs (Keras 3's MonitorCallback).

    In mode ``"auto"`` the direction comes from the quantity's name, as Keras 3 infers it:
    ``loss``/``val_loss`` is minimised; otherwise the compiled metric of that name (without
    ``val_``) says whether it is better high or low (``Metric._direction``: accuracies up,
    errors down). A quantity Keras cannot place (``"unknown"``, a metric from your own
    function) is a ValueError in mode "auto": pass ``mode="min"`` or ``"max"``. ``fit``
    checks it before the first step (Keras at the end of the first epoch).

    Args:
        monitor: the quantity in the logs.
        mode: ``"auto"``, ``"min"`` or ``"max"`` (another value warns and means "auto").
        baseline: the initial best value (None: the first value seen).
        min_delta: the least change that counts as an improvement.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        baseline: Optional[float] = None,
        min_delta: float = 0,
    ) -> None:
        super().__init__()
        if mode not in ("auto", "min", "max"):
            warnings.warn(
                f"{type(self).__name__} mode '{mode}' is unknown, fallback to auto mode.",
                stacklevel=3,
            )
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.best = baseline
        self.min_delta = abs(float(min_delta))
        self.monitor_op = None  # np.less or np.greater, set once the metrics are known

    def _set_monitor_op(self):
        if self.mode == "min":
            self.monitor_op = np.less
            return
        if self.mode == "max":
            self.monitor_op = np.greater
            return
        name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        op = np.less if name == "loss" else None
        for m in getattr(self.model, "metrics", None) or []:
            direction = getattr(m, "_direction", None)
            if getattr(m, "name", None) == name and direction is not None:
                op = np.greater if direction == "up" else np.less
        if op is None:
            raise ValueError(
                f"{type(self).__name__} callback received monitor={self.monitor}, but "
                "it is not possible to automatically determine whether that metric "
                "should be maximized or minimized. Pass `mode='max'` in order to "
                "monitor based on the highest metric value, or pass `mode='min'` in "
                "order to use the lowest value."
            )
        self.monitor_op = op

    def _check_monitor(self):
        """Sets the direction at the start of training when the model's metrics are known,
        so that a monitor "auto" cannot place is refused before the first step."""
        if self.monitor_op is None and self.model is not None and _metrics_resolved(self.model):
            self._set_monitor_op()

    def _is_improvement(self, current, reference):
        if reference is None:
            return True
        delta = -self.min_delta if self.monitor_op is np.less else self.min_delta
        return bool(self.monitor_op(current - delta, reference))


class EarlyStopping(MonitorCallback):
    """Stops training when a monitored quantity has stopped improving.

    An epoch improves when ``current`` beats the best by more than `min_delta`
    (``current < best - min_delta`` when minimising). After `patience` epochs without
    improvement ``model.stop_training`` is set.

    Args:
        monitor: the quantity in the logs (default ``"val_loss"``).
        min_delta: minimum change counted as an improvement.
        patience: epochs without improvement before stopping.
        verbose: 1 prints a message when stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (the direction from the monitored
            metric, as Keras 3: see ``MonitorCallback``).
        baseline: a value the quantity must beat.
        restore_best_weights: at the end of training (stopped early or not), restore the
            weights of the best epoch seen from `start_from_epoch` on.
        start_from_epoch: epochs to wait before monitoring.

    Raises:
        ValueError: in mode "auto", a monitor whose direction cannot be inferred (raised
            by ``fit`` before the first step).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: Optional[float] = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = int(start_from_epoch)
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        # reusable across fit calls, as Keras 3's
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0
        self._check_monitor()

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        if self.monitor_op is None:
            self._set_monitor_op()  # the model's metrics are all built by now
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {','.join(logs)}"
            )
            return
        if epoch < self.start_from_epoch:
            return
        current = float(current)
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, float(self.baseline)):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        # Keras 3 restores here, however training ended (stopped by this callback, by
        # another one, or out of epochs); nothing was recorded before start_from_epoch
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(
                    f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(MonitorCallback):
    """Saves the model's weights after epochs (``save_weights`` format).

    Args:
        filepath: path, may contain format fields from the epoch and logs, e.g.
            ``"ckpt-{epoch:02d}-{val_loss:.3f}.weights"`` (epoch counts from 1).
        monitor: quantity compared when `save_best_only` (when it is missing from the
            logs, a warning is given and the weights are saved, as Keras 3 does).
        verbose: 1 prints a message on each save.
        save_best_only: save only when the monitored quantity improves.
        save_weights_only: must be True: metalearn saves weights, not whole models.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (as ``EarlyStopping``'s: in "auto" a
            monitor whose direction cannot be inferred is a ValueError, as Keras 3).
        save_freq: ``"epoch"`` (only).
        initial_value_threshold: the value to beat before the first save.
    """

    def __init__(
        self,
        filepath: Union[str, "os.PathLike[str]"],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = True,
        mode: str = "auto",
        save_freq: Union[str, int] = "epoch",
        initial_value_threshold: Optional[float] = None,
    ) -> None:
        super().__init__(monitor, mode, initial_value_threshold)
        if not save_weights_only:
            raise ValueError(
                "ModelCheckpoint: metalearn saves weights only; use "
                "save_weights_only=True and rebuild the model in code"
            )
        if save_freq != "epoch":
            raise ValueError("ModelCheckpoint: only save_freq='epoch' is supported")
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = True

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self._check_monitor()

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        if self.monitor_op is None:
            self._set_monitor_op()
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        current = logs.get(self.monitor) if self.save_best_only else None
        if self.save_best_only and current is None:
            # Keras 3 warns and saves: a checkpoint every epoch beats none at all
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=2)
        if current is not None:
            current = float(current)
            prev = "None" if self.best is None else f"{self.best:.5f}"
            if not self._is_improvement(current, self.best):
                if self.verbose > 0:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {prev}")
                return
            if self.verbose > 0:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {prev} to {current:.5f}, "
                    f"saving model to {path}"
                )
            self.best = current
        elif self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saving model to {path}")
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.model.save_weights(path)


class LambdaCallback(Callback):
    """A callback made from functions.

    Args:
        on_epoch_begin, on_epoch_end: ``f(epoch, logs)``.
        on_batch_begin, on_batch_end: ``f(batch, logs)`` (training batches).
        on_train_begin, on_train_end: ``f(logs)``.
    """

    def __init__(
        self,
        on_epoch_begin: Optional[Callable[..., Any]] = None,
        on_epoch_end: Optional[Callable[..., Any]] = None,
        on_batch_begin: Optional[Callable[..., Any]] = None,
        on_batch_end: Optional[Callable[..., Any]] = None,
        on_train_begin: Optional[Callable[..., Any]] = None,
        on_train_end: Optional[Callable[..., Any]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        fns = dict(
            on_epoch_begin=on_epoch_begin,
            on_epoch_end=on_epoch_end,
            on_train_batch_begin=on_batch_begin,
            on_train_batch_end=on_batch_end,
            on_train_begin=on_train_begin,
            on_train_end=on_train_end,
        )
        fns.update(kwargs)
        for name, fn in fns.items():
            if name not in _HOOKS:
                raise TypeError(f"LambdaCallback: unknown hook {name!r}")
            if fn is not None:
                setattr(self, name, fn)


def __getattr__(name):
    # TerminateOnNaN lives in metalearn.debugging (beside check_numerics), which imports
    # this module: resolved on first use to keep the import order free
    if name == "TerminateOnNaN":
        from metalearn.debugging import TerminateOnNaN

        return TerminateOnNaN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
