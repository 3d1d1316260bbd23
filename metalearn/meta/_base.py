"""What every meta-learner shares: losses, cloning, the fit/evaluate loops, progress."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

from metalearn._typing import ArrayLike
import math
import operator
import sys
import time

import numpy as np

from metalearn import _budget, _core, debugging
from metalearn.functional import functional_call
from metalearn.progress import Progbar, _format_time, _format_value
from metalearn.tasks.base import Task

__all__ = ["BaseMetaLearner", "clone_model", "resolve_loss"]


# ------------------------------------------------------------------ tensors


def to_tensor(a: ArrayLike) -> _core.Tensor:
    """A float32 tensor for an array (shares memory when already float32 C-contiguous)."""
    if isinstance(a, _core.Tensor):
        return a
    if type(a) is np.ndarray and a.dtype == np.float32 and a.ndim:
        return _core.as_tensor(a)  # the common case: shared, or copied when not C-contiguous
    if np.iscomplexobj(a):  # a cast would drop the imaginary part (as Keras, refused)
        raise TypeError(f"expected real numbers, got complex values ({np.asarray(a).dtype})")
    return _core.as_tensor(np.ascontiguousarray(a, dtype=np.float32))


def _mse(y_true, y_pred):
    return _core.reduce_mean(_core.mean_squared_error(y_true, y_pred))


def _scce_logits(y_true, y_pred):
    return _core.reduce_mean(
        _core.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    )


def _scce_probs(y_true, y_pred):
    return _core.reduce_mean(_core.sparse_categorical_crossentropy(y_true, y_pred))


_LOSSES = {
    "mse": _mse,
    "mean_squared_error": _mse,
    "sparse_categorical_crossentropy": _scce_logits,
    "scce": _scce_logits,
    "sparse_categorical_crossentropy_from_probs": _scce_probs,
}


def resolve_loss(
    loss: Any, task: Any, probabilities: bool = False
) -> Tuple[Callable[..., Any], bool]:
    """(loss_fn(y_true, y_pred) -> scalar Tensor, is_classification) for `loss` and a task.

    ``None`` picks MSE for float targets and sparse categorical cross-entropy for integer
    labels: from logits, or from probabilities when `probabilities` (a model ending in
    softmax, as Keras' ``from_logits=False``). ``"sparse_categorical_crossentropy"``
    (``"scce"``) follows the model's output the same way. A string names one of those; a
    callable is used as is (its result is averaged when it is not a scalar).
    """
    classification = np.issubdtype(np.asarray(task.support_y).dtype, np.integer)
    scce = _scce_probs if probabilities else _scce_logits
    if loss is None:
        return (scce if classification else _mse), classification
    if isinstance(loss, str):
        fn = _LOSSES.get(loss)
        if fn is None:  # any other Keras loss name ("huber", "log_cosh", "kl_divergence", ...)
            from metalearn.keras import losses as _keras_losses

            try:
                keras_fn = _keras_losses.get(loss)
            except ValueError:
                keras_fn = None
            if keras_fn is None:
                raise ValueError(
                    f"unknown loss {loss!r}; use one of {sorted(_LOSSES)}, a Keras loss name "
                    "or a callable"
                )
            return _reduced(keras_fn), classification
        return (scce if fn is _scce_logits else fn), classification

    return _reduced(loss), classification


def _reduced(loss):
    """`loss` whose result is averaged when it is not a scalar (per-sample losses)."""

    def wrapped(y_true, y_pred):
        out = loss(y_true, y_pred)
        return out if not out.shape else _core.reduce_mean(out)

    return wrapped


def accuracy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


def _leaf_layers(layer, out):
    subs = getattr(layer, "_sublayers", [])
    if not subs:
        out.append(layer)
    for _, sub in subs:
        _leaf_layers(sub, out)
    return out


# layers that pass the last activation's values through unchanged in value
_PASS_THROUGH = ("Dropout", "Flatten", "Reshape", "InputLayer")


def ends_in_softmax(model: Any) -> bool:
    """Whether `model`'s last layer applies softmax (``Dense(n, activation="softmax")``,
    ``Activation("softmax")``), so its outputs are probabilities, not logits."""
    from metalearn.keras import activations

    softmax = activations.get("softmax")
    for layer in reversed(_leaf_layers(model, [])):
        if type(layer).__name__ in _PASS_THROUGH:
            continue
        return getattr(layer, "activation", None) is softmax
    return False


# ------------------------------------------------------------------ settings


def check_model(model: Any, who: str, name: str = "model") -> None:
    """TypeError unless `model` is a metalearn Keras model or layer."""
    from metalearn.keras.layers import Layer

    if not isinstance(model, Layer):
        raise TypeError(
            f"{who}: {name} must be a metalearn.keras model (keras.Sequential or a "
            f"keras.Model subclass), got {type(model).__name__}"
        )


def check_rate(value: Any, name: str, who: str) -> float:
    """`value` as a float; TypeError unless a real number, ValueError unless finite >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{who}: {name} must be a finite number >= 0, got {value!r}")
    return v


def check_real(value: Any, name: str, who: str) -> float:
    """`value` as a float; TypeError unless a real number, ValueError unless finite (any
    sign: a scale or a threshold, where check_rate's >= 0 does not apply)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{who}: {name} must be finite, got {value}")
    return v


def check_flag(value: Any, name: str, who: str) -> bool:
    """`value` as a bool; TypeError unless True or False (a NumPy bool too): a string such
    as "False" or a 0/1 would otherwise switch a setting the wrong way without a word."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{who}: {name} must be True or False, got {value!r}")
    return bool(value)


def check_count(value: Any, name: str, who: str, minimum: int = 0) -> int:
    """`value` as an int; TypeError unless an integer, ValueError when below `minimum`."""
    if isinstance(value, bool):
        raise TypeError(f"{who}: {name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{who}: {name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    if v < minimum:
        raise ValueError(f"{who}: {name} must be >= {minimum}, got {v}")
    return v


def check_batch(batch: Any, who: str) -> None:
    """ValueError naming the array when a task batch's labels and inputs differ in number
    (the meta-loss would fail on a broadcast of two unnamed shapes). Shapes only, and only
    of marked NumPy batches: it runs on every meta-step."""
    if not isinstance(batch, Task) or not batch.is_batch:
        return
    for x, y, kind in ((batch[0], batch[1], "support"), (batch[2], batch[3], "query")):
        if type(x) is np.ndarray and type(y) is np.ndarray and x.shape[:2] != y.shape[:2]:
            raise ValueError(
                f"{who}: {kind}_x has shape {x.shape} but {kind}_y {y.shape}: one label (row) "
                f"per {kind} example of each task"
            )


def check_support(support_x: Any, support_y: Any, who: str = "adapt") -> None:
    """ValueError when a support set holds NaN or inf (adaptation would return
    non-finite weights; one np.isfinite pass over each float array) or its inputs and
    labels differ in number; TypeError for complex values (their imaginary part would be
    dropped)."""
    shapes = []
    for name, arr in (("support_x", support_x), ("support_y", support_y)):
        a = np.asarray(arr)
        shapes.append(a.shape)
        if np.issubdtype(a.dtype, np.complexfloating):
            raise TypeError(f"{who}: {name} must hold real numbers, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.inexact) and a.size and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise ValueError(
                f"{who}: {name} holds {bad} NaN or inf value{'s' if bad > 1 else ''}; "
                "adapting to it would give non-finite weights"
            )
    if shapes[0][:1] != shapes[1][:1]:
        raise ValueError(
            f"{who}: support_x has shape {shapes[0]} but support_y {shapes[1]}: one label "
            "(row) per support example"
        )


# ------------------------------------------------------------------ cloning


def _input_shape_of(model):
    shape = getattr(model, "_build_input_shape", None)
    if shape is None:
        shape = getattr(model, "_batch_input_shape", None)
    if not isinstance(shape, tuple) or not shape:
        raise ValueError(
            f"clone_model: {model.name!r} has not been built; call it on a batch first"
        )
    return tuple(1 if d is None else int(d) for d in shape)


def clone_model(model: Any, weights: Optional[Sequence[ArrayLike]] = None) -> Any:
    """A new model of the same architecture with copies of `model`'s weights.

    ``Sequential`` models are rebuilt from ``get_config``; subclassed models from
    ``type(model).from_config(model.get_config())`` (so their ``get_config`` must return
    the constructor arguments, as Keras asks). The clone shares nothing with `model`.

    Args:
        model: a built Keras model.
        weights: optional tensors or arrays for the clone's ``trainable_weights`` (e.g.
            adapted fast weights); the other weights are copied from `model`.
    """
    from metalearn.keras.layers import Layer
    from metalearn.keras.models import Sequential

    shape = _input_shape_of(model)
    config = model.get_config()
    try:
        if isinstance(model, Sequential):
            # deserialize's registry holds every shipped layer but the bare base class
            clone = type(model).from_config(config, custom_objects={"Layer": Layer})
        else:
            cfg = dict(config)
            cfg.pop("name", None)
            clone = type(model).from_config(cfg)
    except Exception as exc:  # noqa: BLE001 - report what the user must provide
        raise TypeError(
            f"clone_model: cannot rebuild {type(model).__name__} from its get_config() "
            f"({exc}); give the model a get_config returning its constructor arguments"
        ) from exc
    with _core_no_grad():
        clone(np.zeros(shape, np.float32))
    src = model.get_weights()
    dst = clone.weights
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(src, dst)):
        raise TypeError(
            f"clone_model: the rebuilt {type(model).__name__} has other weights than "
            "the original; its get_config does not describe it"
        )
    clone.set_weights(src)
    if weights is not None:
        trainable = clone.trainable_weights
        weights = list(weights)
        if len(weights) != len(trainable):
            raise ValueError(
                f"clone_model: got {len(weights)} weights for {len(trainable)} trainable weights"
            )
        for v, w in zip(trainable, weights):
            _core.assign(v, np.ascontiguousarray(np.asarray(w), dtype=np.float32))
    return clone


class _core_no_grad:
    def __enter__(self):
        self._prev = _core.set_grad_enabled(False)

    def __exit__(self, *exc):
        _core.set_grad_enabled(self._prev)
        return False


# ------------------------------------------------------------------ sampling


def _input_shape(model):
    """The model's input batch shape (batch axis included, None for free axes), or None
    when the model declares no input shape and has not been built."""
    for attr in ("_batch_input_shape", "_build_input_shape"):
        shape = getattr(model, attr, None)
        if isinstance(shape, tuple) and shape:
            return shape
    layers = getattr(model, "layers", None)  # a Sequential declares it on its first layer
    if layers:
        shape = getattr(layers[0], "_batch_input_shape", None)
        if isinstance(shape, tuple) and shape:
            return shape
    return None


def _input_rank(model):
    """The number of axes of the model's input batch (batch axis included), or None when
    the model declares no input shape and has not been built."""
    shape = _input_shape(model)
    return None if shape is None else len(shape)


_FIT_MODULES = None


def _fit_modules():
    """(metalearn.distributed, FitSession), imported on the first fit (not with metalearn:
    _session imports this module) and kept: an import statement in fit cost ~1 us a call,
    and a fit of one iteration is a benchmark's MAML step."""
    global _FIT_MODULES
    if _FIT_MODULES is None:
        from metalearn import distributed

        from ._session import FitSession

        _FIT_MODULES = (distributed, FitSession)
    return _FIT_MODULES


def _check_example_shape(learner, task):
    """Refuses a task whose support examples do not hold as many values as the model's
    input, or whose query examples differ from its support examples, before anything
    runs: otherwise a vectorised step fails in the first layer's product with an error
    about matmul operands. Only the size is compared with the model's input, since a
    learner may reshape examples (a channel axis) on the way in."""
    batch = getattr(task, "is_batch", False) or (
        isinstance(task, Task) and _is_batch(task, learner.model)
    )
    lead = 2 if batch else 1
    sx, qx = np.shape(task.support_x), np.shape(getattr(task, "query_x", None))
    # fit checks every batch it draws: the shapes last found valid for this model pass
    # without the arithmetic (the fit of one iteration is a MAML sinusoid benchmark's step)
    key = (learner.model, lead, sx, qx)
    if getattr(learner, "_checked_example_shape", None) == key:
        return
    if len(sx) < lead:
        return  # (refused later, with the shapes)
    shape = _input_shape(learner.model)
    got = tuple(sx[lead:])
    if shape is not None and all(d is not None for d in shape[1:]):
        want, have = math.prod(int(d) for d in shape[1:]), math.prod(int(d) for d in got)
        if have != want:
            raise ValueError(
                f"{type(learner).__name__}: support_x examples have shape {got} ({have} "
                f"values), but the model takes inputs of shape {tuple(shape[1:])} "
                f"({want} values)"
            )
    if len(qx) >= lead and tuple(qx[lead:]) != got:
        raise ValueError(
            f"{type(learner).__name__}: support_x and query_x examples must have one "
            f"shape, got {got} and {tuple(qx[lead:])}"
        )
    if shape is not None:  # (a model not built yet may declare its shape when it is)
        learner._checked_example_shape = key


def _is_batch(task, model):
    """Whether a Task holds a batch of tasks: marked (``sample_batch``, ``Task.batch``,
    ``info["batched"]``), or else its support_x has one axis more than the model's input
    (integer labels of two axes, when the model's input rank is not known yet)."""
    if "batched" in task.info:
        return bool(task.info["batched"])
    rank = _input_rank(model) if model is not None else None
    if rank is not None:
        return np.ndim(task.support_x) == rank + 1
    sy = np.asarray(task.support_y)
    return np.issubdtype(sy.dtype, np.integer) and sy.ndim == 2


def _as_batch(tasks, model):
    """A Task (single or batch, marked or not) or a list of single Tasks, as a marked
    Task batch; None for anything else."""
    if isinstance(tasks, Task):
        if tasks.is_batch:
            return tasks
        if _is_batch(tasks, model):
            return Task(*tasks, info={**tasks.info, "batched": True})
        return Task.batch([tasks])
    if isinstance(tasks, (list, tuple)) and tasks and all(isinstance(t, Task) for t in tasks):
        return Task.batch(tasks)
    return None


def _next_batch(tasks, meta_batch_size, model=None, block=None):
    if hasattr(tasks, "sample_batch"):
        if block is not None:
            from metalearn.tasks.classification import NWayKShot

            # only NWayKShot's own sample_batch knows block= (a subclass's override or
            # another sampler draws the whole batch, which is the same result)
            if getattr(type(tasks), "sample_batch", None) is NWayKShot.sample_batch:
                return tasks.sample_batch(meta_batch_size, block=block)
        return tasks.sample_batch(meta_batch_size)
    batch = _as_batch(tasks, model)
    if batch is not None:
        return batch
    if callable(tasks):
        out = tasks(meta_batch_size)
        batch = _as_batch(out, model)
        return out if batch is None else batch
    raise TypeError(
        "tasks must be a sampler with sample_batch(n) (metalearn.tasks), a callable "
        f"n -> Task batch, a Task batch (Task.batch) or a list of Tasks; got "
        f"{type(tasks).__name__}"
    )


def _frozen(tasks, episodes):
    """(tasks, episodes) for evaluate: an EpisodeSet given as `episodes` is bound to the
    data of `tasks` (checked against the data it was drawn from) and becomes the tasks."""
    from metalearn.tasks.episodes import EpisodeSet

    if isinstance(episodes, EpisodeSet):
        if tasks is None or tasks is episodes:
            if not episodes.bound:
                raise ValueError(
                    "evaluate: the EpisodeSet is not bound to its dataset; pass the sampler "
                    "(evaluate(sampler, episodes=set)) or load it with dataset=(x, y)"
                )
            return episodes, None
        return episodes.bind(tasks), None
    if tasks is None:
        raise TypeError("evaluate: give the tasks, or episodes=EpisodeSet bound to its data")
    if isinstance(tasks, EpisodeSet) and not tasks.bound:
        raise ValueError("evaluate: the EpisodeSet is not bound to its dataset (see bind)")
    return tasks, episodes


def _fixed_tasks(tasks, model):
    """The single tasks of a Task (batch or not) or of a list of Tasks, else None."""
    if isinstance(tasks, Task):
        return _as_batch(tasks, model).tasks()
    if isinstance(tasks, (list, tuple)) and tasks and all(isinstance(t, Task) for t in tasks):
        out = []
        for t in tasks:
            if t.is_batch or _is_batch(t, model):
                out.extend(_as_batch(t, model).tasks())
            else:
                out.append(t)
        return out
    return None


def _episodes(tasks, episodes, model=None, singles=None):
    """Yields `episodes` single tasks from a sampler, a Task batch, a list of Tasks or an
    EpisodeSet (`singles`: _fixed_tasks(tasks, model) when known)."""
    if _is_episode_set(tasks):
        n = len(tasks) if episodes is None else int(episodes)
        if n > len(tasks):
            raise ValueError(f"evaluate: asked for {n} episodes, the EpisodeSet holds {len(tasks)}")
        for i in range(n):
            yield tasks.task(i)
        return
    if singles is None:
        singles = _fixed_tasks(tasks, model)
    if singles is not None:
        if episodes is None:
            episodes = len(singles)
        if episodes > len(singles):
            raise ValueError(
                f"evaluate: asked for {episodes} episodes, the tasks given hold {len(singles)}"
            )
        yield from singles[:episodes]
        return
    if episodes is None:
        episodes = 100
    for _ in range(int(episodes)):
        if hasattr(tasks, "sample"):
            yield tasks.sample()
        else:
            yield _next_batch(tasks, 1, model).task(0)


def _is_episode_set(obj):
    from metalearn.tasks.episodes import EpisodeSet

    return isinstance(obj, EpisodeSet)


# ------------------------------------------------------------------ progress


class _Progress:
    """Keras' Progbar on a terminal; on a pipe, one line every ~10 % with an ETA."""

    def __init__(self, target, verbose, unit="iteration", lines=10):
        self.target, self.verbose = target, int(verbose)
        if self.verbose == 0:  # silent: no bar at all (fit(iterations=1) in a loop)
            self.bar = None
            return
        self.bar = Progbar(target, verbose=self.verbose, unit_name=unit)
        self.plain = self.verbose == 1 and not self.bar._dynamic
        self.every = max(1, target // lines) if target else 1
        self.start = time.perf_counter()
        self.unit = unit

    def update(self, current, values):
        if self.bar is None:
            return
        if self.plain and current < self.target and current % self.every == 0:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / current * (self.target - current)
            text = "".join(f" - {k}: {_format_value(v)}" for k, v in values.items())
            sys.stdout.write(
                f"{self.unit} {current}/{self.target} - {_format_time(elapsed)} - "
                f"ETA: {_format_time(eta)}{text}\n"
            )
            sys.stdout.flush()
        self.bar.update(current, list(values.items()))


def _mean_ci(values):
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(len(v)))


# ------------------------------------------------------------------ base class


class BaseMetaLearner:
    """Base of the meta-learners: ``fit`` / ``adapt`` / ``clone`` / ``evaluate``.

    Subclasses implement ``_meta_step(batch) -> (loss, metric)`` (one meta-update on a
    Task batch) and ``_adapted_weights(support_x, support_y, steps)`` (fast weights for
    one task), and may override ``_query_logits`` for models that are not plain learners.
    """

    def __init__(
        self, model: Any, loss: Any = None, meta_optimizer: Any = "adam", meta_lr: float = 0.001
    ) -> None:
        who = type(self).__name__
        check_model(model, who)
        meta_lr = check_rate(meta_lr, "meta_lr", who)
        self.model = model
        self.loss = loss
        self._loss_fn = None
        self.classification = None
        self.meta_lr = meta_lr
        self.meta_optimizer = self._make_optimizer(meta_optimizer, self.meta_lr)
        self.history = None
        self.iterations = 0

    @staticmethod
    def _make_optimizer(opt, lr):
        from metalearn.keras import optimizers

        if isinstance(opt, str):
            # any Keras optimizer name ("adam", "sgd", "rmsprop", "adamw", "adagrad",
            # "nadam"), at the learner's meta_lr
            try:
                made = optimizers.get(opt.lower())
            except ValueError:
                raise ValueError(
                    f"meta_optimizer must be an optimizer or one of its names ('adam', 'sgd', "
                    f"'rmsprop', 'adamw', 'adagrad', 'nadam'), got {opt!r}"
                ) from None
            made.learning_rate = lr
            return made
        return opt

    @property
    def metric_name(self) -> str:
        """``"accuracy"`` for classification tasks, ``"mse"`` for regression (known after the first task)."""
        return "accuracy" if self.classification else "mse"

    # --------------------------------------------------------------- helpers
    def _outputs_probabilities(self):
        """Whether the model's outputs are probabilities (it ends in softmax): the
        cross-entropy then reads them as Keras' ``from_logits=False`` does."""
        return ends_in_softmax(self.model)

    def _prepare(self, task):
        """Resolves the loss and builds the model on the first task seen."""
        if self._loss_fn is None:
            self._loss_fn, self.classification = resolve_loss(
                self.loss, task, probabilities=self._outputs_probabilities()
            )
        model = self.model
        _check_example_shape(self, task)
        # model.weights walks every layer: checked once per model, not on every fit
        if getattr(self, "_prepared_model", None) is model:
            return
        if not model.built or not model.weights:
            sx = np.asarray(task.support_x)
            if getattr(task, "is_batch", False):
                sx = sx[0]
            with _core_no_grad():
                model(np.ascontiguousarray(sx[:1], dtype=np.float32))
        if model.built and model.weights:
            self._prepared_model = model

    def _apply_meta_gradients(self, grads, params):
        """The meta-optimizer's update of ``params`` (a learner with its own schedule, as
        MAML++'s cosine-annealed meta rate, overrides it; DataParallel calls it too)."""
        self.meta_optimizer.apply_gradients(zip(grads, params))

    def _metric(self, y_pred, y_true, loss_value):
        if self.classification:
            return accuracy(y_pred, y_true)
        return float(loss_value)

    def _build_with(self, tasks):
        batch = _next_batch(tasks, 1, self.model)
        self._prepare(batch)

    def _check_meta_step(self, loss, grads, params):
        """Under ``metalearn.debugging.enable_check_numerics()``: NonFiniteError when the
        meta-loss or a meta-gradient is NaN or inf, raised before the meta-optimizer's
        update (nothing changed). Off: nothing."""
        if debugging._numerics_checks:
            debugging._check_step(self.model, loss, grads, params)

    def _check_adapted(self, fast):
        """Under enable_check_numerics(): NonFiniteError naming the first adapted weight
        that is NaN or inf (an inner step size too large for the task)."""
        if not debugging._numerics_checks:
            return
        names = [getattr(w, "name", None) for w in self.model.trainable_weights]
        for i, w in enumerate(fast):
            label = names[i] if i < len(names) and names[i] else f"weight {i}"
            debugging.check_numerics(
                w, f"{type(self).__name__}.adapt: the adapted weight {label!r}"
            )

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        tasks: Any,
        iterations: int = 1000,
        meta_batch_size: int = 25,
        verbose: int = 1,
        callbacks: Optional[Sequence[Any]] = None,
        *,
        checkpoint_dir: Any = None,
        checkpoint_every: Optional[int] = None,
        validation: Any = None,
        validate_every: Optional[int] = None,
        validation_episodes: Optional[int] = None,
        keep_best: bool = False,
        time_budget: Optional[float] = None,
    ) -> Any:
        """Meta-trains on batches of tasks.

        Args:
            tasks: a task sampler (``metalearn.tasks.Sinusoid``, ``NWayKShot``, or any
                object with ``sample_batch(n)``), a callable ``n -> Task batch``, or a
                fixed batch used on every iteration: a Task batch (``Task.batch``), a
                list of Tasks, or a Task whose arrays have one axis more than the
                model's input.
            iterations: meta-updates to make.
            meta_batch_size: tasks per meta-update.
            verbose: 0 silent, 1 progress bar (on a pipe: a line every 10 %), 2 one
                line at the end.
            callbacks: Keras callbacks (``on_train_begin``, ``on_train_batch_end(i,
                logs)``, ``on_train_end``; ``model.stop_training = True`` stops) or plain
                callables ``f(iteration, logs)``.
            checkpoint_dir: a folder for exact resume (``metalearn.checkpoint``): a
                checkpoint is saved there every `checkpoint_every` iterations and at the
                end; when the folder already holds one, ``fit`` restores it (weights,
                optimizer state, every generator, the task stream's position, history) and
                continues to `iterations` in all, ending with the bits of an uninterrupted
                run. A checkpoint of another run (algorithm, hyper-parameters, weights,
                samplers) or a corrupt one raises ``CheckpointError``, changing nothing.
            checkpoint_every: iterations between checkpoints (default: a tenth of
                `iterations`).
            validation: held-out tasks (a sampler, a Task batch or a
                ``tasks.EpisodeSet``) evaluated every `validate_every` iterations (default: a
                tenth of `iterations`) on `validation_episodes` episodes (``evaluate``'s
                default); the history gains ``val_iteration``, ``val_loss`` and
                ``val_accuracy`` / ``val_mse``.
            keep_best: with `validation`, the weights of the best validation score
                (highest accuracy, lowest MSE) are put back at the end, as MAML's and
                ProtoNet's reference code select models; ``best_validation`` then says
                which iteration they are from.
            time_budget: seconds of wall-clock time (a positive number) after which
                training stops at the end of the running iteration (so at most one
                iteration past the budget); the history then has ``stopped =
                "time_budget"``. Checkpoints and ``keep_best`` end the run as usual.

        Returns:
            A history dict of lists, one entry per iteration: ``loss`` (mean query loss
            after adaptation) and ``accuracy`` or ``mse`` (post-adaptation, on the queries
            of the training tasks), plus the validation lists above; ``stopped`` (a
            string) when the run ended before `iterations`: ``"time_budget"``, or
            ``"stop_training"`` when a callback stopped it.
        """
        iterations = check_count(iterations, "iterations", "fit")
        meta_batch_size = check_count(meta_batch_size, "meta_batch_size", "fit", minimum=1)
        end = _budget.deadline(time_budget, "fit")
        # a metalearn.distributed strategy in force splits each meta-batch's tasks between
        # processes (the module imports nothing beyond NumPy until MPI is used)
        distributed, FitSession = _fit_modules()
        dist = distributed.distribution()
        if dist is not None:
            dist._check_learner(
                self, {"checkpoint_dir": checkpoint_dir, "time_budget": time_budget}
            )
        session = FitSession(
            self,
            tasks,
            iterations,
            meta_batch_size,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            validation=validation,
            validate_every=validate_every,
            validation_episodes=validation_episodes,
            keep_best=keep_best,
            write_checkpoints=dist is None or distributed.is_root(),
        )
        cbs = list(callbacks or [])
        for cb in cbs:
            if hasattr(cb, "set_model"):
                cb.set_model(self.model)
        history = {"loss": []}
        start = session.resume(history)  # 0, or the iteration a checkpoint reached
        progress = _Progress(iterations, verbose)
        if getattr(self.model, "stop_training", False):  # (a layer's __setattr__ is not free)
            self.model.stop_training = False
        for cb in cbs:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin({})
        step = start
        stopped = None
        for it in range(start, iterations):
            # under DataParallel on several processes each draws the images of its own
            # block of tasks only (the same draws: the sampler's stream is unchanged); the
            # first batch is whole, as the model's build may read any task
            block = None if dist is None or it == start else dist._own_block(meta_batch_size)
            batch = _next_batch(tasks, meta_batch_size, self.model, block)
            check_batch(batch, f"{type(self).__name__}.fit")
            if it == start:  # the loss and the model's build follow from the first batch
                self._prepare(batch)
                history.setdefault(self.metric_name, [])
                if dist is not None:
                    dist._begin(self)  # rank 0's weights on every rank
            if dist is None:
                loss, metric = self._meta_step(batch)
            else:
                loss, metric = dist._meta_step(self, batch)
            self.iterations += 1
            history["loss"].append(loss)
            history[self.metric_name].append(metric)
            logs = {"loss": loss, self.metric_name: metric}
            progress.update(it + 1, logs)
            for cb in cbs:
                if hasattr(cb, "on_train_batch_end"):
                    cb.on_train_batch_end(it, logs)
                elif callable(cb):
                    cb(it, logs)
            step = it + 1
            session.after_step(step, history)
            stop = bool(getattr(self.model, "stop_training", False))
            expired = _budget.expired(end) and step < iterations
            if dist is not None:  # every rank stops at the same iteration, or none does
                stop, expired = dist._agree(stop, expired)
            if stop:
                stopped = "stop_training"
                break
            if expired:
                stopped = _budget.STOPPED_TIME_BUDGET
                break
        session.finish(step, history)
        if stopped is not None:
            history["stopped"] = stopped
        for cb in cbs:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end({})
        self.history = history
        return history

    # ----------------------------------------------------------------- adapt
    def clone(self) -> Any:
        """A copy of the meta-model (architecture and current weights), sharing nothing
        with it (learn2learn's ``clone``)."""
        return clone_model(self.model)

    def adapt(self, support_x: ArrayLike, support_y: ArrayLike, steps: Optional[int] = None) -> Any:
        """Adapts to one task's support set; returns a new Keras model.

        The meta-model is not changed: the adapted weights live in a clone.

        Args:
            support_x: ``(n_support, ...)`` inputs of one task.
            support_y: ``(n_support, ...)`` targets (int labels for classification).
            steps: inner gradient steps (default: the learner's ``inner_steps``).

        Returns:
            A Keras model (same architecture) holding the adapted weights.
        """
        who = f"{type(self).__name__}.adapt"
        if steps is not None:
            steps = check_count(steps, "steps", who)
        check_support(support_x, support_y, who)
        task = Task(support_x, support_y, support_x, support_y)
        self._prepare(task)
        fast = self._adapted_weights(support_x, support_y, steps)
        self._check_adapted(fast)
        return clone_model(self.model, [np.asarray(w) for w in fast])

    # -------------------------------------------------------------- evaluate
    def _query_output(self, fast, query_x, support_x=None):
        """The query's output with the adapted weights; `support_x` for learners whose
        normalisation uses the support set (MAML's batch_norm modes)."""
        return functional_call(self.model, fast, to_tensor(query_x), training=True)

    def evaluate(
        self,
        tasks: Any = None,
        episodes: Any = None,
        steps: Any = None,
        verbose: int = 0,
        card: Any = None,
    ) -> Any:
        """Adapts to `episodes` held-out tasks and measures the query sets.

        Args:
            tasks: a task sampler (one task per episode), a Task batch (its tasks in
                order), a list of Tasks, one Task, or a ``tasks.EpisodeSet`` bound to its
                data.
            episodes: number of tasks, >= 1 (default: all tasks given or all of an
                EpisodeSet, 100 from a sampler), or a ``tasks.EpisodeSet``: exactly its
                frozen episodes, drawn from the data of `tasks` (a sampler or ``(x, y)``;
                other data is refused).
            steps: inner steps for adaptation (default ``inner_steps``); a list of step
                counts evaluates after each of them on the same tasks (one adaptation
                run), e.g. ``[0, 1, 10]`` for the MAML paper's curve.
            verbose: 1 shows a progress bar.
            card: a file name: also writes a result card there (``metalearn.report``:
                algorithm, hyper-parameters, backbone, dataset and episode-set hashes,
                mean ± 95 % interval, episodes, wall time, machine, version and commit);
                ``python -m metalearn.report`` prints cards as a table.

        Under a ``distributed.DataParallel`` strategy with several processes the episodes
        are split between the ranks in contiguous blocks (every rank draws every task, and
        adapts to its own block), the per-episode results are gathered in episode order,
        and every rank returns the same numbers, bit for bit, as one process would; only
        rank 0 shows progress and writes the card.

        Returns:
            ``{"accuracy" or "mse": mean over episodes, "ci95": 1.96 * std / sqrt(episodes),
            "loss": mean query loss, "episodes": n}``; with a list of steps, a dict from
            step count to such a dict.
        """
        who = f"{type(self).__name__}.evaluate"
        curve = isinstance(steps, (list, tuple))
        if curve and not steps:
            raise ValueError(f"{who}: steps is an empty list")
        step_list = [
            None if s is None else check_count(s, "steps", who)
            for s in (steps if curve else [steps])
        ]
        results = {s: {"metric": [], "loss": []} for s in step_list}
        started = time.perf_counter()
        if card is not None:
            from metalearn.report import check_card_path

            check_card_path(card)  # before the work, not after it
        tasks, episodes = _frozen(tasks, episodes)
        if episodes is not None:
            episodes = check_count(episodes, "episodes", who, minimum=1)
        singles = None if _is_episode_set(tasks) else _fixed_tasks(tasks, self.model)
        if _is_episode_set(tasks):
            n_total = len(tasks) if episodes is None else episodes
        elif singles is not None:
            n_total = episodes or len(singles)
        else:
            n_total = 100 if episodes is None else episodes
        shard = _evaluation_shard()
        if shard is not None:
            lo, hi = shard.block(n_total)
            verbose = verbose if shard.is_root else 0
        progress = _Progress(n_total, verbose, unit="episode")
        for i, task in enumerate(_episodes(tasks, episodes, self.model, singles)):
            if shard is not None and not lo <= i < hi:
                continue  # another rank's episode (drawn here all the same: one stream)
            self._prepare(task)
            for s, fast in self._adaptation_curve(task.support_x, task.support_y, step_list):
                with _core_no_grad():
                    out = self._query_output(fast, task.query_x, task.support_x)
                    lv = float(self._loss_fn(task.query_y, out).item())
                results[s]["loss"].append(lv)
                results[s]["metric"].append(self._metric(out, task.query_y, lv))
            last = results[step_list[-1]]
            progress.update(i + 1, {self.metric_name: float(np.mean(last["metric"]))})
        if shard is not None:  # every rank gets all episodes' results, in episode order
            for s in step_list:
                for key in ("metric", "loss"):
                    results[s][key] = shard.gather(results[s][key], n_total)
        out = {}
        for s in step_list:
            m, ci = _mean_ci(results[s]["metric"])
            out[s] = {
                self.metric_name: m,
                "ci95": ci,
                "loss": float(np.mean(results[s]["loss"])),
                "episodes": len(results[s]["metric"]),
            }
        if card is not None and (shard is None or shard.is_root):
            from metalearn.report import make_card, write_card

            write_card(card, make_card(self, tasks, out, time.perf_counter() - started))
        return out if curve else out[step_list[0]]

    def _adaptation_curve(self, support_x, support_y, step_list):
        """Yields (steps, fast weights) for each requested step count."""
        for s in step_list:
            yield s, self._adapted_weights(support_x, support_y, s)

    def __repr__(self):
        return f"<{type(self).__name__} model={getattr(self.model, 'name', '?')}>"


def _evaluation_shard():
    """The distributed strategy's share of an evaluation, or None in one process (the
    distributed module is looked at only if it was imported: a strategy needs it)."""
    import sys

    dist = sys.modules.get("metalearn.distributed")
    if dist is None or dist.distribution() is None or dist.size() < 2:
        return None
    return dist._EvaluationShard()
