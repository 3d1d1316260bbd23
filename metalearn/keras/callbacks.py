"""Callbacks, as ``keras.callbacks``: hooks called by ``fit``/``evaluate``/``predict``."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Union

from metalearn._typing import Logs
import collections
import csv
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
    "ReduceLROnPlateau",
    "LearningRateScheduler",
    "CSVLogger",
    "BackupAndRestore",
    "TensorBoard",
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


# ------------------------------------------------------------------ learning rate
_SCHEDULE_ERROR = (
    "This optimizer was created with a `LearningRateSchedule` object as its "
    "`learning_rate` constructor argument, hence its learning rate is not settable. If "
    "you need the learning rate to be settable, you should instantiate the optimizer "
    "with a float `learning_rate` argument."
)


def _has_schedule(opt):
    """Whether `opt` takes its rate from a schedule (an object called with the step)
    rather than a settable float."""
    for attr in ("_learning_rate", "_schedule", "learning_rate_schedule"):
        value = getattr(opt, attr, None)
        if value is not None and callable(value):
            return True
    return callable(getattr(opt, "learning_rate", None))


def _optimizer(callback):
    opt = getattr(callback.model, "optimizer", None)
    if opt is None or not hasattr(opt, "learning_rate"):
        raise ValueError(
            f'{type(callback).__name__}: Optimizer must have a "learning_rate" attribute '
            "(compile the model with an optimizer first)."
        )
    return opt


def _current_lr(opt):
    value = opt.learning_rate
    if callable(value):  # a schedule: its value at the optimizer's step
        value = value(int(getattr(opt, "iterations", 0)))
    return float(value)


def _set_lr(opt, value):
    if _has_schedule(opt):
        raise TypeError(_SCHEDULE_ERROR)
    opt.learning_rate = value  # the optimizer's setter checks the value


def _finite_number(name, what, value, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name}: {what} must be a number, got {value!r}")
    value = float(value)
    bad = not np.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        raise ValueError(f"{name}: {what} is out of range, got {value!r}")
    return value


class ReduceLROnPlateau(MonitorCallback):
    """Reduce the learning rate when a monitored quantity has stopped improving.

    After `patience` epochs without an improvement of more than `min_delta`, the rate
    becomes ``max(lr * factor, min_lr)``; then `cooldown` epochs pass before counting
    again. The current rate is added to the epoch's logs as ``learning_rate`` (so History
    and CSVLogger record it), as Keras 3.

    Args:
        monitor: the quantity in the logs (default ``"val_loss"``).
        factor: the multiplier, in [0, 1) (0.1).
        patience: epochs without improvement before a reduction (10).
        verbose: 1 prints a message on each reduction.
        mode: ``"auto"``, ``"min"`` or ``"max"`` (see ``MonitorCallback``).
        min_delta: the least change that counts as an improvement (1e-4).
        cooldown: epochs to wait after a reduction before counting again (0).
        min_lr: the lower bound of the rate (0).

    Raises:
        ValueError: `factor` >= 1 (Keras' message) or another argument out of range.
        TypeError: (from ``fit``, before the first step) an optimizer whose rate comes
            from a learning-rate schedule, with Keras' message.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if kwargs:  # Keras 3 ignores the Keras 2 "epsilon"/"lr" aliases silently; refuse typos
            raise TypeError(f"ReduceLROnPlateau: unexpected arguments {sorted(kwargs)}")
        factor = _finite_number("ReduceLROnPlateau", "factor", factor)
        if factor >= 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}"
            )
        if factor < 0.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be >= 0, got {factor}")
        super().__init__(monitor, mode, min_delta=min_delta)
        self.factor = factor
        self.min_lr = _finite_number("ReduceLROnPlateau", "min_lr", min_lr, low=0.0)
        self.patience = int(patience)
        self.verbose = verbose
        self.cooldown = int(cooldown)
        if self.patience < 0 or self.cooldown < 0:
            raise ValueError("ReduceLROnPlateau: patience and cooldown must be >= 0")
        self.cooldown_counter = 0
        self.wait = 0

    def _reset(self):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def in_cooldown(self) -> bool:
        """Whether the callback is waiting out its cooldown."""
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self._reset()
        if self.model is not None and getattr(self.model, "optimizer", None) is not None:
            if _has_schedule(self.model.optimizer):
                raise TypeError(_SCHEDULE_ERROR)  # before any step: nothing trained
        self._check_monitor()

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        if self.monitor_op is None:
            self._set_monitor_op()
        logs = logs if logs is not None else {}
        opt = _optimizer(self)
        logs["learning_rate"] = _current_lr(opt)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which "
                f"is not available. Available metrics are: {','.join(list(logs.keys()))}.",
                stacklevel=2,
            )
            return
        current = float(current)
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = _current_lr(opt)
                # compared in float32, as Keras' variable: a rate at min_lr stays
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    _set_lr(opt, new_lr)
                    if self.verbose > 0:
                        print(
                            f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning "
                            f"rate to {new_lr}."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of each epoch from ``schedule(epoch, lr)``.

    Args:
        schedule: ``f(epoch, lr) -> float`` (epoch counts from 0, lr is the current
            rate); a function of the epoch alone, ``f(epoch)``, works too (Keras 2).
        verbose: 1 prints the rate set.

    The rate is added to the epoch's logs as ``learning_rate``.

    Raises:
        ValueError: a schedule that returns anything but a float (Keras' message), or a
            negative or non-finite rate; the optimizer keeps its rate.
        TypeError: an optimizer whose rate comes from a schedule (Keras' message).
    """

    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"LearningRateScheduler: schedule must be callable, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch: int, logs: Optional[Logs] = None) -> None:
        opt = _optimizer(self)
        if _has_schedule(opt):
            raise TypeError(_SCHEDULE_ERROR)
        try:  # Keras 3's order: the two-argument form, then the Keras 2 one
            lr = self.schedule(epoch, _current_lr(opt))
        except TypeError:
            lr = self.schedule(epoch)
        if not isinstance(lr, (float, np.float32, np.float64)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {lr}")
        _set_lr(opt, float(lr))
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        if logs is not None:
            logs["learning_rate"] = _current_lr(_optimizer(self))


class CSVLogger(Callback):
    """Streams each epoch's logs to a CSV file (one row per epoch, ``epoch`` first, the
    other keys sorted; ``val_`` columns are reserved when the first epoch has none, and
    filled with ``NA`` until a validation runs), as Keras 3.

    Args:
        filename: the file.
        separator: the column delimiter (``","``).
        append: add to an existing file (its header kept) instead of overwriting it.

    Raises:
        OSError: (from ``fit``, before the first step) a file that cannot be opened for
            writing; the message names it.
    """

    def __init__(
        self, filename: Union[str, "os.PathLike[str]"], separator: str = ",", append: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = bool(append)
        self.writer = None
        self.keys = None
        self.append_header = True
        self.csv_file = None

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self.append_header = True
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename) as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        try:
            self.csv_file = open(self.filename, mode, newline="")
        except OSError as e:
            raise type(e)(
                e.errno,
                f"CSVLogger: cannot open the log file for writing ({e.strerror})",
                self.filename,
            ) from None
        self.writer = None
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        logs = logs or {}

        def handle_value(v):
            if isinstance(v, str):
                return v
            if isinstance(v, collections.abc.Iterable) and not (
                isinstance(v, np.ndarray) and v.ndim == 0
            ):
                return f'"[{", ".join(map(str, v))}]"'
            return v

        if self.keys is None:
            self.keys = sorted(logs.keys())
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys.extend([f"val_{k}" for k in self.keys])
        if not self.writer:

            class Dialect(csv.excel):
                delimiter = self.sep

            self.writer = csv.DictWriter(
                self.csv_file, fieldnames=["epoch"] + (self.keys or []), dialect=Dialect
            )
            if self.append_header:
                self.writer.writeheader()
        row = collections.OrderedDict({"epoch": epoch})
        row.update((k, handle_value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


# ------------------------------------------------------------------ BackupAndRestore
class _TrainingState:
    """A model seen as the learner metalearn.checkpoint saves: its weights (every weight,
    moving statistics included) and its optimizer."""

    def __init__(self, model):
        self.model = model
        self.meta_optimizer = model.optimizer


class BackupAndRestore(Callback):
    """Backs up the training state so that ``fit`` resumes after an interruption (an
    exception, a ``kill -9``), as Keras 3's callback.

    The state is a checkpoint in the library's one format (``metalearn.checkpoint``,
    written atomically: a process killed at any moment leaves the previous backup or the
    new one, whole): every weight of the model, the optimizer's slots, step count and
    learning rate, the core generator's state (so shuffling and dropout go on as if never
    stopped), and the epoch. The next ``fit`` with this callback finds it in
    `on_train_begin`, restores it and starts at the saved epoch. With ``save_freq="epoch"``
    the resumed run ends with the same bits as one never interrupted.

    Args:
        backup_dir: the folder of the backup (not to be shared with anything else).
        save_freq: ``"epoch"`` (at each epoch's end) or an integer N (every N training
            batches; the run then resumes at the start of the epoch in progress with the
            weights of the last backup, as Keras 3 does, so it is not bit-exact).
        double_checkpoint: accepted for Keras compatibility; a backup here is already
            atomic (never half written), so one is kept.
        delete_checkpoint: remove the backup when training ends normally (True).

    Raises:
        ValueError: an empty `backup_dir` or a bad `save_freq` (Keras' messages).
        metalearn.checkpoint.CheckpointError: (from ``fit``, before the first step) a
            backup that is corrupt or was made by another model or optimizer; nothing is
            restored.
    """

    def __init__(
        self,
        backup_dir: Union[str, "os.PathLike[str]"],
        save_freq: Union[str, int] = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, (int, np.integer))
            or save_freq < 1
        ):
            raise ValueError(
                "Invalid value for argument `save_freq`. "
                f"Received: save_freq={save_freq}. "
                "Expected either 'epoch' or an integer value."
            )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0
        self._current_epoch = 0
        self._saves = 0

    def _fingerprint(self):
        opt = self.model.optimizer
        return {
            "kind": "keras.callbacks.BackupAndRestore",
            "weights": [[int(d) for d in w.shape] for w in self.model.weights],
            "optimizer": type(opt).__name__,
        }

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        from metalearn import checkpoint

        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0
        self._current_epoch = 0
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("BackupAndRestore: compile the model with an optimizer first")
        if not checkpoint.exists(self.backup_dir):
            return
        ckpt = checkpoint.load(self.backup_dir)  # checks everything, changes nothing
        ckpt.check(self._fingerprint())
        epoch = ckpt.state.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise checkpoint.CheckpointError(
                f"checkpoint in {self.backup_dir}: the epoch {epoch!r} is not a count"
            )
        ckpt.restore(_TrainingState(self.model), {})
        self._current_epoch = epoch
        self._saves = int(ckpt.step)
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save()

    def on_train_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        if self.save_freq == "epoch":
            return
        if batch <= self._last_batch_seen:  # a new epoch
            added = batch + 1
        else:
            added = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += added
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            self._save()

    def _save(self):
        from metalearn import checkpoint

        self._saves += 1
        checkpoint.save(
            self.backup_dir,
            _TrainingState(self.model),
            step=self._saves,
            fingerprint=self._fingerprint(),
            state={"epoch": self._current_epoch, "batch": self._last_batch_seen},
        )

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        from metalearn import checkpoint

        if not self.delete_checkpoint or not os.path.isdir(self.backup_dir):
            return
        # only what a checkpoint consists of; the folder goes when nothing else is in it
        for name in os.listdir(self.backup_dir):
            if name == checkpoint.MANIFEST or checkpoint._TENSORS.match(name):
                os.remove(os.path.join(self.backup_dir, name))
        try:
            os.rmdir(self.backup_dir)
        except OSError:
            pass  # holds files that are not ours: left as they are

    def get_config(self) -> Dict[str, Any]:
        """The arguments (``backup_dir``, ``save_freq``, ``double_checkpoint``,
        ``delete_checkpoint``)."""
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
        }


# ------------------------------------------------------------------ TensorBoard
class TensorBoard(Callback):
    """Writes the logs as TensorBoard scalars, without TensorFlow
    (``metalearn.keras.tensorboard``: TFRecord-framed ``Event`` protos with masked
    CRC-32C).

    As Keras 3: ``log_dir/train`` gets ``epoch_<name>`` per epoch (step = epoch) and the
    learning rate as ``epoch_learning_rate``; ``log_dir/validation`` gets the ``val_``
    logs as ``epoch_<name>`` (prefix removed) and, at the end of each validation or
    ``evaluate``, ``evaluation_<name>_vs_iterations`` (step = the optimizer's iterations).
    With `update_freq` ``"batch"`` or N, ``batch_<name>`` goes to ``train`` every N
    batches (step = the global batch count).

    With `histogram_freq` N, every N epochs (those with ``epoch % N == 0``, as Keras)
    each layer's weights go to ``train`` as histograms tagged ``<weight path>/histogram``
    (Keras 3's tags: a Sequential model's name first, as Keras' variable paths have it;
    step = epoch), in TensorBoard's 30 equal-width buckets.

    Args:
        log_dir: the folder of the run (``"logs"``).
        histogram_freq: epochs between weight histograms (0: none).
        write_images, embeddings_freq, profile_batch: must stay 0/False: not written (a
            ValueError says so otherwise).
        write_graph: accepted and ignored (there is no graph to write).
        write_steps_per_second: also log ``steps_per_second`` per epoch.
        update_freq: ``"epoch"``, ``"batch"`` or an integer.
        embeddings_metadata: must be None.
    """

    def __init__(
        self,
        log_dir: Union[str, "os.PathLike[str]"] = "logs",
        histogram_freq: int = 0,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: Union[str, int] = "epoch",
        profile_batch: int = 0,
        embeddings_freq: int = 0,
        embeddings_metadata: Any = None,
    ) -> None:
        super().__init__()
        if (
            isinstance(histogram_freq, bool)
            or not isinstance(histogram_freq, (int, np.integer))
            or histogram_freq < 0
        ):
            raise ValueError(
                f"TensorBoard: histogram_freq must be a non-negative integer, got "
                f"{histogram_freq!r}"
            )
        for what, value in (
            ("write_images", write_images),
            ("profile_batch", profile_batch),
            ("embeddings_freq", embeddings_freq),
            ("embeddings_metadata", embeddings_metadata),
        ):
            if value:
                raise ValueError(
                    f"TensorBoard: {what}={value!r} is not supported; metalearn writes "
                    "scalars and weight histograms only (leave it at its default)"
                )
        if update_freq not in ("epoch", "batch") and (
            isinstance(update_freq, bool)
            or not isinstance(update_freq, (int, np.integer))
            or update_freq < 1
        ):
            raise ValueError(
                f"TensorBoard: update_freq must be 'epoch', 'batch' or a positive integer, "
                f"got {update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = bool(write_steps_per_second)
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._writers = {}
        self._global_train_batch = 0
        self._epoch_start = None
        self._epoch_steps = 0
        self._batch_start = 0.0

    def _writer(self, which):
        from .tensorboard import EventFileWriter

        w = self._writers.get(which)
        if w is None:  # made on first use, as Keras' (no validation folder without one)
            w = self._writers[which] = EventFileWriter(os.path.join(self.log_dir, which))
        return w

    def _write(self, which, items, step):
        w = self._writer(which)
        for name, value in items:
            for tag, v in _scalars(name, value):
                w.scalar(tag, v, step)
        w.flush()

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self._global_train_batch = 0
        self._writer("train")  # the folder must be writable: refused before any step

    def on_train_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        import time

        self._global_train_batch += 1
        self._epoch_steps += 1
        self._batch_start = time.time()

    def on_train_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        import time

        if self.update_freq == "epoch" or self._global_train_batch % self.update_freq:
            return
        items = [(f"batch_{k}", v) for k, v in (logs or {}).items()]
        if self.write_steps_per_second:
            items.append(
                ("batch_steps_per_second", 1.0 / max(time.time() - self._batch_start, 1e-9))
            )
        self._write("train", items, self._global_train_batch)

    def on_epoch_begin(self, epoch: int, logs: Optional[Logs] = None) -> None:
        import time

        self._epoch_start = time.time()
        self._epoch_steps = 0

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        import time

        if not logs:
            return
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        opt = getattr(self.model, "optimizer", None)
        if opt is not None and hasattr(opt, "learning_rate"):
            train["learning_rate"] = _current_lr(opt)
        if self.write_steps_per_second and self._epoch_start is not None:
            train["steps_per_second"] = self._epoch_steps / max(
                time.time() - self._epoch_start, 1e-9
            )
        if train:
            self._write("train", ((f"epoch_{k}", v) for k, v in train.items()), epoch)
        if val:
            self._write("validation", ((f"epoch_{k}", v) for k, v in val.items()), epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)

    def _log_weights(self, epoch):
        from .models import Sequential

        # Keras 3 tags each weight by its variable path, which starts with the model's
        # name in a Sequential model (its layers are built inside it), not in a
        # functional one
        prefix = f"{self.model.name}/" if isinstance(self.model, Sequential) else ""
        w = self._writer("train")
        for layer in self.model.layers:
            for weight in layer.weights:
                path = getattr(weight, "path", None) or weight.name
                tag = f"{prefix}{path}".replace(":", "_") + "/histogram"
                w.histogram(tag, np.asarray(weight.numpy()), epoch)
        w.flush()

    def on_test_end(self, logs: Optional[Logs] = None) -> None:
        opt = getattr(self.model, "optimizer", None)
        if not logs or opt is None or not hasattr(opt, "iterations"):
            return
        step = int(opt.iterations)
        self._write(
            "validation", ((f"evaluation_{k}_vs_iterations", v) for k, v in logs.items()), step
        )

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        for w in self._writers.values():
            w.close()
        self._writers = {}


def _scalars(name, value):
    """(tag, float) pairs of a log entry: a number as it is; an array-valued metric
    (F1Score per class) as its mean, as TensorBoard scalars are scalars."""
    try:
        return [(name, float(value))]
    except (TypeError, ValueError):
        return [(name, float(np.mean(np.asarray(value, dtype=np.float64))))]


def __getattr__(name):
    # TerminateOnNaN lives in metalearn.debugging (beside check_numerics), which imports
    # this module: resolved on first use to keep the import order free
    if name == "TerminateOnNaN":
        from metalearn.debugging import TerminateOnNaN

        return TerminateOnNaN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
