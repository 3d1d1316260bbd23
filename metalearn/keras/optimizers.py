"""Optimizers, as ``keras.optimizers``: thin wrappers over the C core's SGD and Adam.

One ``apply_gradients`` is one C call that updates every parameter (shapes are checked
first; on an error nothing changes). The C optimizer keeps its slots for a fixed list of
variables, so the wrapper keeps one C optimizer per distinct variable list it is given
(almost always exactly one), while ``iterations`` counts every ``apply_gradients`` call as
Keras does.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple

from metalearn._typing import Config
import re
import warnings

import numpy as np

from metalearn import _core
from metalearn.tape import GradientTape

from . import backend as _backend
from . import constraints as _constraints
from . import schedules as _schedules

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "Nadam",
    "get",
    "serialize",
    "deserialize",
]


class _Iterations(int):
    """An int that also answers ``.numpy()`` (Keras returns a variable here)."""

    def numpy(self):
        return np.int64(self)


def _to_grad(g):
    if isinstance(g, _core.Tensor):
        return g
    return _core.tensor(g)  # refuses complex/object dtypes with a TypeError


class Optimizer:
    """Base class of the optimizers.

    Args:
        learning_rate: a float (settable later: ``opt.learning_rate = 1e-4``), a
            ``schedules.LearningRateSchedule`` (the rate of each step is computed from
            ``iterations``; the built-in schedules in C, inside ``fit``'s traced step) or a
            zero-argument callable returning the rate (called before each step).
        clipnorm: clip each gradient to this L2 norm.
        clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]``.
        global_clipnorm: clip all gradients together to this global L2 norm. At most one of
            the three may be set (ValueError otherwise, as Keras); 0 clips nothing (Keras).
            Clipping runs in the C step, so it is traced by ``fit`` too.
        weight_decay: None (default) or a float: Keras 3's decoupled weight decay, every
            variable decaying ``w = w - w * weight_decay * learning_rate`` before each update
            (in the same C call); see ``exclude_from_weight_decay``.
        use_ema: keep an exponential moving average of the variables (Keras 3's EMA):
            after each update ``average = m * average + (1 - m) * w`` with ``m = 0`` on the
            first step and ``ema_momentum`` after; ``finalize_variable_values`` copies it
            into the variables (``fit`` does so when it ends).
        ema_momentum: default 0.99, in [0, 1].
        ema_overwrite_frequency: None, or every how many steps the variables are set to
            their average.
        name: the optimizer's name; by default the class name in snake case made unique
            as Keras 3 names objects (``"adam"``, ``"adam_1"``, ``"sgd"``, ...; the counters
            are the layers' and ``clear_session`` resets them).
    """

    def __init__(
        self,
        learning_rate: Any,
        name: Optional[str] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        weight_decay: Optional[float] = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: Optional[int] = None,
        loss_scale_factor: Optional[float] = None,
        gradient_accumulation_steps: Optional[int] = None,
    ) -> None:
        # Keras 3 configs carry these two; metalearn has neither (a config with None loads)
        for what, value in (
            ("loss_scale_factor", loss_scale_factor),
            ("gradient_accumulation_steps", gradient_accumulation_steps),
        ):
            if value is not None:
                raise ValueError(f"`{what}` is not supported by metalearn; got {what}={value!r}")
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}"
            )
        for what, c in (
            ("clipnorm", clipnorm),
            ("clipvalue", clipvalue),
            ("global_clipnorm", global_clipnorm),
        ):
            if c is not None:
                _check_clip(what, c)
        if use_ema:  # Keras checks these only with use_ema
            if (
                isinstance(ema_momentum, bool)
                or not isinstance(ema_momentum, (int, float, np.number))
                or not 0.0 <= float(ema_momentum) <= 1.0
            ):
                raise ValueError(
                    "`ema_momentum` must be in the range [0, 1]. "
                    f"Received: ema_momentum={ema_momentum}"
                )
            if ema_overwrite_frequency is not None and (
                isinstance(ema_overwrite_frequency, bool)
                or not isinstance(ema_overwrite_frequency, (int, np.integer))
                or ema_overwrite_frequency < 1
            ):
                raise ValueError(
                    "`ema_overwrite_frequency` must be an integer >= 1 or None. "
                    f"Received: ema_overwrite_frequency={ema_overwrite_frequency}"
                )
        learning_rate = self._check_lr(learning_rate)
        weight_decay = None if weight_decay is None else _check_weight_decay(weight_decay)
        if name is None:  # named last: a refused optimizer takes no name
            name = _backend.unique_name(_backend.snake_case(type(self).__name__))
        self.name = name
        self._clip = {
            "clipnorm": clipnorm,
            "clipvalue": clipvalue,
            "global_clipnorm": global_clipnorm,
        }
        self.weight_decay = weight_decay
        self.use_ema = bool(use_ema)
        self.ema_momentum = ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self._learning_rate = learning_rate
        self._exclude_ids = set()  # exclude_from_weight_decay's variables (by id)
        self._exclude_pattern = None  # ... and its name pattern
        self._cores = {}  # tuple of variable ids -> (C optimizer, variables kept alive)
        self._iterations = 0

    @staticmethod
    def _check_lr(value):
        if isinstance(value, _schedules.LearningRateSchedule) or callable(value):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(
                "learning_rate must be a float, a LearningRateSchedule or a callable, "
                f"got {type(value).__name__}"
            )
        value = float(value)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"learning_rate must be a finite non-negative number, got {value}")
        return value

    def _make_core(self):
        raise NotImplementedError

    # ------------------------------------------------------------ clipping
    def _clip_property(what):  # noqa: N805 (a property factory run in the class body)
        def get(self):
            return self._clip[what]

        def set_(self, value):
            if value is not None:
                _check_clip(what, value)
                others = [k for k, v in self._clip.items() if k != what and v is not None]
                if others:
                    raise ValueError(
                        "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                        f"Received: {what}={value} with {others[0]}={self._clip[others[0]]}"
                    )
            self._clip[what] = value
            for opt, _ in self._cores.values():
                opt.clip = self._core_clip()

        return property(get, set_, doc=f"``{what}`` (None: off); applies to the next step.")

    clipnorm = _clip_property("clipnorm")
    clipvalue = _clip_property("clipvalue")
    global_clipnorm = _clip_property("global_clipnorm")
    del _clip_property

    def _core_clip(self):
        for what, value in self._clip.items():
            if value is not None:
                return (what, float(value))
        return None

    def _clip_gradients(self, grads):
        """The gradients as this optimizer's step clips them (Keras' private hook, which its
        tests call): computed by the C step itself, one plain SGD step of rate 1 from zero
        with this clipping, whose result is minus the clipped gradients."""
        grads = [_to_grad(g) for g in grads]
        clip = self._core_clip()
        if clip is None:
            return grads
        core = _core.SGD(learning_rate=1.0)
        core.clip = clip
        out = [_core.zeros(tuple(g.shape)) for g in grads]
        core.step(out, grads)
        return [_core.neg(t) for t in out]

    # ------------------------------------------------------------ learning rate
    def _schedule_form(self):
        """The C form of the learning rate when it is a built-in schedule, else None."""
        lr = self._learning_rate
        if isinstance(lr, _schedules.LearningRateSchedule):
            return lr._core_form()
        return None

    def _python_rate(self):
        """True when the rate is computed in Python before each step (a custom schedule or
        a callable): such a step is not recorded into a trace."""
        return callable(self._learning_rate) and self._schedule_form() is None

    def _current_rate(self):
        lr = self._learning_rate
        if isinstance(lr, _schedules.LearningRateSchedule):
            return lr(self._iterations)
        if callable(lr):
            return lr()
        return lr

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a float; with a schedule, its value at
        ``iterations``). Setting a float applies to the next step and keeps the state;
        a schedule or a callable may replace the rate.

        Raises:
            TypeError: on setting a float when the optimizer was made with a schedule
                (Keras 3's rule).
            ValueError: on setting a negative or non-finite value.
        """
        return float(self._current_rate())

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        value = self._check_lr(value)
        if not callable(value) and isinstance(self._learning_rate, _schedules.LearningRateSchedule):
            raise TypeError(
                "This optimizer was created with a `LearningRateSchedule` object as its "
                "`learning_rate` constructor argument, hence its learning rate is not "
                "settable. If you need the learning rate to be settable, you should "
                "instantiate the optimizer with a float `learning_rate` argument."
            )
        old = self._learning_rate
        self._learning_rate = value
        try:
            for opt, _ in self._cores.values():
                self._set_core_rate(opt)
        except BaseException:
            self._learning_rate = old
            for opt, _ in self._cores.values():
                self._set_core_rate(opt)
            raise

    lr = learning_rate

    def _set_core_rate(self, core):
        form = self._schedule_form()
        if form is not None:
            core.learning_rate_schedule = form
            return
        core.learning_rate_schedule = None
        if not callable(self._learning_rate):
            core.learning_rate = self._learning_rate

    @property
    def iterations(self) -> int:
        """Number of ``apply_gradients`` calls made (an int with ``.numpy()``)."""
        return _Iterations(self._iterations)

    # ------------------------------------------------------------ weight decay
    def exclude_from_weight_decay(
        self, var_list: Optional[Sequence[Any]] = None, var_names: Optional[Sequence[str]] = None
    ) -> None:
        """Exclude variables from weight decay (Keras 3): those of `var_list`, and those whose
        name contains (``re.search``) any string of `var_names`. Only before the first step.

        Raises:
            ValueError: the optimizer has already stepped (Keras' message).
        """
        if self._cores:
            raise ValueError(
                "`exclude_from_weight_decay()` can only be configured before the optimizer "
                "is built."
            )
        ids = set(map(id, var_list)) if var_list else set()
        pattern = re.compile("|".join(sorted(set(var_names)))) if var_names else None
        self._exclude_ids, self._exclude_pattern = ids, pattern
        self._exclude_vars = list(var_list) if var_list else []  # ids stay theirs

    def _use_weight_decay(self, variable) -> bool:
        if id(variable) in self._exclude_ids:
            return False
        if self._exclude_pattern is not None:
            name = getattr(variable, "name", None)
            if name is not None and self._exclude_pattern.search(name):
                return False
        return True

    # ------------------------------------------------------------ EMA
    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        """With ``use_ema``, sets the variables to their moving averages (Keras 3; ``fit``
        calls it when training ends). Nothing happens without EMA or before a step."""
        if not self.use_ema:
            return
        var_list = list(var_list)
        key = tuple(map(id, var_list))
        entry = self._cores.get(key)
        if entry is not None:
            entry[0].finalize_variable_values(var_list)
            return
        # variables of several lists (or a subset): each from the list that holds it
        for opt, variables in self._cores.values():
            index = {id(v): i for i, v in enumerate(variables)}
            if not any(id(v) in index for v in var_list):
                continue
            averages = [slots[-1] for slots in opt.slots()]
            for v in var_list:
                if id(v) in index:
                    _core.assign(v, averages[index[id(v)]])

    def _core_for(self, variables):
        key = tuple(map(id, variables))
        entry = self._cores.get(key)
        if entry is None:
            core = self._make_core()
            self._set_core_rate(core)
            if self.weight_decay:
                core.weight_decay = self.weight_decay
                if self._exclude_ids or self._exclude_pattern is not None:
                    core.exclude_from_weight_decay = [
                        not self._use_weight_decay(v) for v in variables
                    ]
            clip = self._core_clip()
            if clip is not None:
                core.clip = clip
            if self.use_ema:
                core.set_use_ema(
                    True, float(self.ema_momentum), int(self.ema_overwrite_frequency or 0)
                )
            entry = (core, list(variables))
            self._cores[key] = entry
        return entry[0]

    # ------------------------------------------------------------ traced form
    def _traced_update(self):
        """The update as core ops, for a training step that ``metalearn.function`` records
        once and replays from C: a function ``update(variables, grads)`` to call while
        recording (one C optimizer step, which the trace holds: clipping, weight decay, the
        update, EMA and the built-in schedules' rate all happen inside it, from the C
        optimizer's own step count). None when the update cannot be recorded: a rate
        computed in Python (a custom schedule or a callable). Asking changes nothing; after
        each replay the caller counts the step with ``_count_step``."""
        if self._python_rate():
            return None
        return self._core_step

    def _core_step(self, variables, grads):
        self._core_for(variables).step(variables, grads)
        _constraints._apply(variables)  # Keras 3: after the update (recorded with it)

    def _count_step(self):
        """One more step in ``iterations`` (a replayed trace updates the variables from C;
        the count lives here, in Python)."""
        self._iterations += 1

    def _apply(self, variables, grads):
        """Fast path: every gradient present, lists aligned."""
        core = self._core_for(variables)
        if self._python_rate():
            rate = self._check_lr(float(self._current_rate()))  # a bad rate changes nothing
            core.learning_rate = rate
        core.step(variables, grads)
        self._iterations += 1  # _count_step's count, without a call on the eager step
        _constraints._apply(variables)  # Keras 3: the variables' constraints, after the update

    def apply_gradients(
        self,
        grads_and_vars: Iterable[Tuple[Any, Any]],
        name: Optional[str] = None,
        skip_gradients_aggregation: bool = False,
    ) -> int:
        """Applies gradients to variables: one optimizer step.

        Args:
            grads_and_vars: iterable of ``(gradient, variable)`` pairs. A None gradient is
                skipped with a warning, as Keras does.

        Returns:
            The new ``iterations`` value.

        Raises:
            ValueError: every gradient is None ("No gradients provided for any variable."),
                or a gradient's shape differs from its variable's; nothing changes.
        """
        pairs = list(grads_and_vars)
        grads, variables, missing = [], [], []
        for g, v in pairs:
            if not isinstance(v, _core.Tensor):
                raise TypeError(f"apply_gradients: expected variables, got {type(v).__name__}")
            if g is None:
                missing.append(getattr(v, "name", repr(v)))
                continue
            grads.append(_to_grad(g))
            variables.append(v)
        if not variables:
            if pairs:  # Keras 3 refuses a step that would update nothing
                raise ValueError("No gradients provided for any variable.")
            raise ValueError("apply_gradients: no (gradient, variable) pairs were given")
        if missing:
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss. "
                "If you're using `model.compile()`, did you forget to provide a `loss` "
                "argument?",
                UserWarning,
                stacklevel=2,
            )
        for g, v in zip(grads, variables):
            if tuple(g.shape) != tuple(v.shape):
                raise ValueError(
                    f"apply_gradients: gradient of shape {tuple(g.shape)} for variable "
                    f"{getattr(v, 'name', '?')!r} of shape {tuple(v.shape)}"
                )
        self._apply(variables, grads)
        return self.iterations

    def apply(self, grads: Sequence[Any], trainable_variables: Optional[Sequence[Any]] = None):
        """Keras 3's ``apply(grads, trainable_variables)``: ``apply_gradients`` over the
        two aligned lists (what a Keras 3 custom ``train_step`` calls).

        Raises:
            ValueError: no variables, or lists of different lengths; nothing changes.
        """
        if trainable_variables is None:
            raise ValueError(
                "apply: pass the variables, apply(grads, trainable_variables) "
                "(metalearn's optimizers are not built on a fixed variable list)"
            )
        grads, trainable_variables = list(grads), list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"apply: {len(grads)} gradients for {len(trainable_variables)} variables"
            )
        return self.apply_gradients(zip(grads, trainable_variables))

    def minimize(
        self, loss: Any, var_list: Sequence[Any], tape: Optional[GradientTape] = None
    ) -> int:
        """Minimizes `loss` over `var_list`: computes gradients, then applies them.

        Args:
            loss: a scalar Tensor (its graph is already recorded), or a zero-argument
                callable returning one.
            var_list: list of Variables, or a callable returning it.
            tape: the GradientTape that recorded a tensor `loss` (optional in metalearn).
        """
        if callable(var_list):
            var_list = var_list()
        var_list = list(var_list)
        if callable(loss):
            with GradientTape() as t:
                value = loss()
            grads = t.gradient(value, var_list)
        elif tape is not None:
            grads = tape.gradient(loss, var_list)
        else:
            live = [v for v in var_list if v.requires_grad]
            gl = _core.grad(loss, live, allow_unused=True) if live else []
            it = iter(gl)
            grads = [next(it) if v.requires_grad else None for v in var_list]
        return self.apply_gradients(zip(grads, var_list))

    def variables(self) -> List[Any]:
        """The state tensors (copies) of the C optimizers, per variable list, in Keras 3's
        order after its iterations and learning rate: with ``use_ema`` the averages first
        (one per variable), then the slots in Keras' blocks (Adam's momentum and velocity
        interleaved per variable, then AMSGrad's maxima; RMSprop's velocities, momentums,
        average gradients), as ``optimizer/vars`` of a ``.keras`` file holds them."""
        groups = _keras_slot_groups(self)
        out = []
        for opt, _ in self._cores.values():
            per = opt.slots()
            if not per:
                continue
            if groups is None:  # a subclass we do not map: averages first, then per variable
                n, ema = len(per[0]), int(self.use_ema)
                blocks = ([[n - 1]] if ema else []) + [list(range(n - ema))]
            else:
                blocks = groups
            for block in blocks:
                for slots in per:
                    out.extend(slots[s] for s in block)
        return out

    def reset(self) -> None:
        """Forgets all state (moments, iterations)."""
        for opt, _ in self._cores.values():
            opt.reset()
        self._cores.clear()
        self._iterations = 0

    def get_config(self) -> Config:
        """The optimizer's hyper-parameters as a dict (``name``, ``learning_rate`` …)."""
        lr = self._learning_rate
        if isinstance(lr, _schedules.LearningRateSchedule):
            lr = _schedules.serialize(lr)
        elif not callable(lr):
            lr = float(np.float32(lr))  # Keras 3 holds the rate in a float32 variable
        else:
            raise ValueError(
                f"get_config: the learning rate {lr!r} is a callable, which has no config; "
                "use a LearningRateSchedule"
            )
        return {
            "name": self.name,
            "learning_rate": lr,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": None,
            "gradient_accumulation_steps": None,
        }

    @classmethod
    def from_config(cls, config: Config, custom_objects: Optional[Config] = None) -> Optimizer:
        """A new optimizer (fresh state) from the dict that ``get_config`` returned (a
        schedule's config is deserialized, as Keras 3)."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = _schedules.deserialize(
                config["learning_rate"], custom_objects=custom_objects
            )
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} learning_rate={self._learning_rate} iterations={self._iterations}>"


class SGD(Optimizer):
    """Gradient descent with momentum (and Nesterov momentum).

    With ``momentum == 0``: ``w = w - learning_rate * g``. Otherwise::

        velocity = momentum * velocity - learning_rate * g
        w = w + velocity                                      # plain
        w = w + momentum * velocity - learning_rate * g       # nesterov

    Args:
        learning_rate: a float, default 0.01.
        momentum: float >= 0, default 0.0.
        nesterov: whether to use Nesterov momentum.
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.SGD(learning_rate=0.0, momentum=self.momentum, nesterov=self.nesterov)

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), computed as Keras does::

        t = iterations + 1
        lr_t = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g^2 - v)
        w = w - lr_t * m / (sqrt(v) + epsilon)

    With ``amsgrad`` the max of past ``v`` is used (Reddi et al. 2018). On x86 the update
    runs with denormals flushed to zero, as TensorFlow's CPU kernels do: ``m`` of a unit
    whose gradient stopped reaches 0 instead of decaying through the denormal range,
    where the division is several times slower.

    Args:
        learning_rate: default 0.001.
        beta_1: decay of the first-moment estimate, default 0.9.
        beta_2: decay of the second-moment estimate, default 0.999.
        epsilon: default 1e-7.
        amsgrad: whether to use AMSGrad.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad = bool(amsgrad)
        for n, b in (("beta_1", self.beta_1), ("beta_2", self.beta_2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Adam: {n} must be in [0, 1), got {b}")
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.Adam(
            learning_rate=0.0,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            amsgrad=self.amsgrad,
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, amsgrad=self.amsgrad
        )
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as Keras 3's AdamW.

    Before each Adam step every variable decays: ``w = w - w * weight_decay *
    learning_rate`` (Keras 3 decays all variables, biases included), then the Adam
    update of ``Adam`` runs on the decayed ``w``; both in one C call (traced by ``fit``).

    Args:
        learning_rate: default 0.001.
        weight_decay: default 0.004 (Keras 3's).
        beta_1, beta_2, epsilon, amsgrad: as ``Adam``.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if weight_decay is None:  # Keras 3's message
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            name,
            weight_decay=weight_decay,
            **kwargs,
        )


def _check_clip(what, c):
    if (
        isinstance(c, bool)
        or not isinstance(c, (int, float, np.number))
        or not np.isfinite(c)
        or c < 0
    ):
        raise ValueError(f"`{what}` must be a finite non-negative number. Received: {what}={c!r}")


def _check_weight_decay(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"weight_decay must be a float, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"weight_decay must be a finite non-negative number, got {value}")
    return value


class RMSprop(Optimizer):
    """RMSprop, computed as Keras 3 does::

        velocity = rho * velocity + (1 - rho) * g^2
        average_grad = rho * average_grad + (1 - rho) * g          # centered only
        denominator = velocity - average_grad^2 + epsilon          # centered
                    = velocity + epsilon                           # otherwise
        increment = learning_rate * g / sqrt(denominator)
        momentum_v = momentum * momentum_v + increment; w = w - momentum_v   # momentum > 0
        w = w - increment                                                    # otherwise

    Args:
        learning_rate: default 0.001.
        rho: discounting factor of the gradients' moving average, default 0.9.
        momentum: default 0.0.
        epsilon: default 1e-7.
        centered: normalise by the gradients' estimated variance (default False).
        weight_decay: as every optimizer's (see ``Optimizer``).

    One C call updates every parameter (a refused step changes nothing), recorded in
    ``fit``'s traced step as Adam's is.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        for what, v in (("rho", rho), ("momentum", momentum), ("epsilon", epsilon)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise ValueError(f"RMSprop: {what} must be a float, got {v!r}")
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"RMSprop: {what} must be finite and >= 0, got {v}")
        if not 0.0 <= float(rho) <= 1.0:
            raise ValueError(f"RMSprop: rho must be in [0, 1], got {rho}")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.RMSprop(
            learning_rate=0.0,
            rho=self.rho,
            momentum=self.momentum,
            epsilon=self.epsilon,
            centered=self.centered,
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            rho=self.rho,
            momentum=self.momentum,
            epsilon=self.epsilon,
            centered=self.centered,
        )
        return config


def _unit_interval(cls_name, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{cls_name}: {what} must be a float, got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{cls_name}: {what} must be in [0, 1), got {value}")
    return float(value)


def _non_negative(cls_name, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{cls_name}: {what} must be a float, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{cls_name}: {what} must be finite and >= 0, got {value}")
    return float(value)


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), computed as Keras 3 does::

        accumulator = accumulator + g^2          # starts at initial_accumulator_value
        w = w - learning_rate * g / sqrt(accumulator + epsilon)

    Args:
        learning_rate: default 0.001.
        initial_accumulator_value: the accumulators' start, default 0.1 (>= 0).
        epsilon: default 1e-7.
        weight_decay, clipnorm, ..., use_ema: as every optimizer's (see ``Optimizer``).

    One C call updates every parameter (a refused step changes nothing), recorded in
    ``fit``'s traced step as Adam's is.
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        self.initial_accumulator_value = _non_negative(
            "Adagrad", "initial_accumulator_value", initial_accumulator_value
        )
        self.epsilon = _non_negative("Adagrad", "epsilon", epsilon)
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.Adagrad(
            learning_rate=0.0,  # the rate is set by _set_core_rate
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon
        )
        return config


class Nadam(Optimizer):
    """Nadam (Dozat 2016: Adam with Nesterov momentum), computed as Keras 3 does::

        t = iterations + 1
        u_t = beta_1 * (1 - 0.5 * 0.96^t);   u_prod = u_1 * ... * u_t
        m = m + (1 - beta_1) * (g - m);      v = v + (1 - beta_2) * (g^2 - v)
        m_hat = u_{t+1} * m / (1 - u_prod * u_{t+1}) + (1 - u_t) * g / (1 - u_prod)
        v_hat = v / (1 - beta_2^t)
        w = w - learning_rate * m_hat / (sqrt(v_hat) + epsilon)

    Args:
        learning_rate: default 0.001.
        beta_1, beta_2: default 0.9 and 0.999, in [0, 1).
        epsilon: default 1e-7.
        weight_decay, clipnorm, ..., use_ema: as every optimizer's (see ``Optimizer``).

    The product of the u's is not a slot: the C optimizer recomputes it from ``iterations``
    on restore, with the bits of the uninterrupted run.
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        self.beta_1 = _unit_interval("Nadam", "beta_1", beta_1)
        self.beta_2 = _unit_interval("Nadam", "beta_2", beta_2)
        self.epsilon = _non_negative("Nadam", "epsilon", epsilon)
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.Nadam(
            learning_rate=0.0, beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


_BY_NAME = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "nadam": Nadam,
}


def _keras_slot_groups(opt) -> Optional[List[List[int]]]:
    """Keras 3's optimizer variables after iterations and learning rate, as lists of our C
    slot indices, each list a block written interleaved per model variable (Keras'
    ``add_optimizer_variables`` with several names interleaves them; each call adds a
    block). With ``use_ema`` the averages (our last slot) come first: Keras' base ``build``
    adds them before the subclass adds its slots. None for an optimizer whose variables
    we do not map (a subclass)."""
    if type(opt) is SGD:
        groups = [[0]] if opt.momentum != 0 else []
    elif type(opt) in (Adam, AdamW):
        groups = [[0, 1]] + ([[2]] if opt.amsgrad else [])
    elif type(opt) is RMSprop:
        groups, k = [[0]], 1
        if opt.momentum > 0:
            groups.append([k])
            k += 1
        if opt.centered:
            groups.append([k])
    elif type(opt) is Adagrad:
        groups = [[0]]  # accumulator
    elif type(opt) is Nadam:
        groups = [[0, 1]]  # momentum, velocity; then Keras' scalar _u_product (saving.py)
    else:
        return None
    if opt.use_ema:
        groups = [[sum(len(g) for g in groups)]] + groups
    return groups


def get(identifier: Any) -> Optional[Optimizer]:
    """An optimizer from a name (``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"``,
    ``"adagrad"``, ``"nadam"``), config dict or instance; None
    gives None, as Keras 3.

    Raises:
        ValueError: an unknown name or config, or anything else (Keras 3's type).
    """
    if identifier is None:
        return None
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"Unknown optimizer: {identifier!r}; metalearn has {sorted(_BY_NAME)}")
        return cls()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(str(identifier.get("class_name", "")).lower())
        if cls is None:
            raise ValueError(f"Unknown optimizer config: {identifier!r}")
        return cls.from_config(identifier.get("config", {}))
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


def serialize(optimizer: Optimizer) -> Config:
    """An optimizer as ``{"class_name": ..., "config": optimizer.get_config()}``."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


deserialize = get


def __getattr__(name):
    # keras.optimizers.schedules: the module metalearn.keras.schedules, reached as an
    # attribute (and by `from ... import schedules`) without being offered by dir() or *
    if name == "schedules":
        return _schedules
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
