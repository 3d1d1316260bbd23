"""Learning-rate schedules, as ``keras.optimizers.schedules`` (Keras 3's formulas, defaults
and configs).

A schedule is passed as ``learning_rate=`` to any optimizer. The five built-in ones
(``ExponentialDecay``, ``InverseTimeDecay``, ``CosineDecay``, ``PiecewiseConstantDecay``,
``PolynomialDecay``) are handed to the C optimizer as numbers (``_core_form``), which computes each step's rate
from its own step count before the update. So ``fit``'s traced step, recorded once and
replayed from C, applies the rate of every iteration without being traced again, and the
eager and the replayed steps use the same rates bit for bit. A subclass of
``LearningRateSchedule`` with its own ``__call__`` runs in Python before each step (the
eager step; ``fit`` then does not trace the update).

Calling a schedule, ``schedule(step)``, gives the rate in float32 as Keras computes it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

__all__ = [
    "LearningRateSchedule",
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "CosineDecay",
    "InverseTimeDecay",
    "PolynomialDecay",
    "serialize",
    "deserialize",
]

_f32 = np.float32


def _number(what: str, value: Any, minimum: Optional[float] = 0.0, strict: bool = False):
    """A finite real number (a bool or a string is refused), >= minimum (> with strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{what}` must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"`{what}` must be finite, got {value!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ValueError(
            f"Argument `{what}` must be {'>' if strict else '>='} {minimum:g}. "
            f"Received: {what}={value!r}"
        )
    return value


class LearningRateSchedule:
    """The base class of learning-rate schedules (Keras 3's): a subclass implements
    ``__call__(step)`` (the step count, an int, to the rate) and, to be serializable,
    ``get_config``."""

    def __call__(self, step):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`__call__(self, step)`."
        )

    def get_config(self) -> Dict[str, Any]:
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`get_config()` in order to be serializable."
        )

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "LearningRateSchedule":
        return cls(**config)

    def _core_form(self):
        """(class name, numbers) for the C optimizer, or None: computed in Python."""
        return None


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (the exponent floored
    with ``staircase``).

    Raises:
        ValueError: ``decay_steps <= 0`` (Keras' message), a negative or non-finite rate.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        name: str = "ExponentialDecay",
    ) -> None:
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _number("decay_steps", decay_steps, 0.0, strict=True)
        self.decay_rate = _number("decay_rate", decay_rate)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _f32(step) / _f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return _f32(self.initial_learning_rate) * np.power(_f32(self.decay_rate), p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }

    def _core_form(self):
        return type(self).__name__, [
            float(self.initial_learning_rate),
            float(self.decay_steps),
            float(self.decay_rate),
            float(self.staircase),
        ]


class InverseTimeDecay(ExponentialDecay):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)`` (the quotient
    floored with ``staircase``).

    Raises:
        ValueError: ``decay_steps <= 0``, a negative or non-finite rate.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        name: str = "InverseTimeDecay",
    ) -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step):
        p = _f32(step) / _f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return _f32(self.initial_learning_rate) / (_f32(1) + _f32(self.decay_rate) * p)


class CosineDecay(LearningRateSchedule):
    """Cosine decay (Loshchilov & Hutter 2017) with an optional linear warmup (Goyal et al.
    2017), as Keras 3: without ``warmup_target`` the rate goes from
    ``initial_learning_rate`` to ``initial_learning_rate * alpha`` over ``decay_steps``;
    with it, it first rises linearly from ``initial_learning_rate`` to ``warmup_target``
    over ``warmup_steps``, then decays from ``warmup_target`` to ``warmup_target * alpha``.

    Raises:
        ValueError: ``decay_steps <= 0``, a negative ``warmup_steps``, a negative or
            non-finite rate.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        alpha: float = 0.0,
        name: str = "CosineDecay",
        warmup_target: Optional[float] = None,
        warmup_steps: int = 0,
    ) -> None:
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _number("decay_steps", decay_steps, 0.0, strict=True)
        self.alpha = _number("alpha", alpha, None)
        self.name = name
        self.warmup_target = (
            None if warmup_target is None else _number("warmup_target", warmup_target)
        )
        self.warmup_steps = _number("warmup_steps", warmup_steps)

    def _decay(self, step, decay_steps, from_lr):
        cosine = _f32(0.5) * (_f32(1) + np.cos(_f32(math.pi) * (step / decay_steps)))
        return from_lr * (_f32(1 - self.alpha) * cosine + _f32(self.alpha))

    def __call__(self, step):
        init = _f32(self.initial_learning_rate)
        decay_steps = _f32(self.decay_steps)
        s = _f32(step)
        if self.warmup_target is None:
            return self._decay(np.minimum(s, decay_steps), decay_steps, init)
        target, warmup = _f32(self.warmup_target), _f32(self.warmup_steps)
        s = np.minimum(s, decay_steps + warmup)
        if s < warmup:
            return (target - init) * (s / warmup) + init
        return self._decay(s - warmup, decay_steps, target)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }

    def _core_form(self):
        return type(self).__name__, [
            float(self.initial_learning_rate),
            float(self.decay_steps),
            float(self.alpha),
            float("nan") if self.warmup_target is None else float(self.warmup_target),
            float(self.warmup_steps),
        ]


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary.

    Raises:
        ValueError: ``len(boundaries) != len(values) - 1`` (Keras' message), boundaries
            that do not increase, a negative or non-finite value.
    """

    def __init__(
        self,
        boundaries: Sequence[float],
        values: Sequence[float],
        name: str = "PiecewiseConstant",
    ) -> None:
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundaries)}, and "
                f"values={values} of length {len(values)}."
            )
        for b in boundaries:
            _number("boundaries", b, None)
        for v in values:
            _number("values", v)
        if any(not b > a for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"PiecewiseConstantDecay: boundaries must increase, got {boundaries}")
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return _f32(v)
        return _f32(self.values[-1])

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}

    def _core_form(self):
        return type(self).__name__, [float(b) for b in self.boundaries] + [
            float(v) for v in self.values
        ]


class PolynomialDecay(LearningRateSchedule):
    """``(initial_learning_rate - end_learning_rate) * (1 - step / decay_steps) ** power +
    end_learning_rate``, the step held at `decay_steps` (then the rate stays at the end
    rate); with ``cycle``, `decay_steps` is first multiplied by the smallest whole number
    that reaches the step (1 at step 0), so the decay restarts. ``power=1`` is a linear
    decay: Reptile's annealed meta step size (Nichol et al. 2018, the authors' code:
    ``PolynomialDecay(1.0, meta_iterations, 0.0)``).

    Raises:
        ValueError: ``decay_steps <= 0`` (Keras' message), a negative or non-finite rate, or
            a negative `power` (the rate would be infinite at `decay_steps`; Keras takes it).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str = "PolynomialDecay",
    ) -> None:
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _number("decay_steps", decay_steps, 0.0, strict=True)
        self.end_learning_rate = _number("end_learning_rate", end_learning_rate)
        self.power = _number("power", power)
        self.cycle = bool(cycle)
        self.name = name

    def __call__(self, step):
        x, steps = _f32(step), _f32(self.decay_steps)
        if self.cycle:
            steps = steps * (_f32(1.0) if x == 0 else np.ceil(x / steps))
        else:
            x = np.minimum(x, steps)
        init, end = _f32(self.initial_learning_rate), _f32(self.end_learning_rate)
        return (init - end) * np.power(_f32(1.0) - x / steps, _f32(self.power)) + end

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }

    def _core_form(self):
        return type(self).__name__, [
            float(self.initial_learning_rate),
            float(self.decay_steps),
            float(self.end_learning_rate),
            float(self.power),
            float(self.cycle),
        ]


_BY_NAME = {
    c.__name__: c
    for c in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        CosineDecay,
        InverseTimeDecay,
        PolynomialDecay,
    )
}


def serialize(learning_rate_schedule: LearningRateSchedule) -> Dict[str, Any]:
    """A schedule as Keras 3 serializes it: ``{"module": "keras.optimizers.schedules",
    "class_name": ..., "config": get_config(), "registered_name": None}``."""
    if not isinstance(learning_rate_schedule, LearningRateSchedule):
        raise TypeError(
            f"serialize: expected a LearningRateSchedule, got {type(learning_rate_schedule).__name__}"
        )
    return {
        "module": "keras.optimizers.schedules",
        "class_name": type(learning_rate_schedule).__name__,
        "config": learning_rate_schedule.get_config(),
        "registered_name": None,
    }


def deserialize(config: Dict[str, Any], custom_objects: Optional[Dict[str, Any]] = None):
    """A schedule from ``serialize``'s dict (``custom_objects`` maps other class names).

    Raises:
        ValueError: an unknown class name or a config that is not such a dict.
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Could not interpret learning-rate schedule config: {config!r}")
    name = config["class_name"]
    cls = (custom_objects or {}).get(name) or _BY_NAME.get(name)
    if cls is None:
        raise ValueError(
            f"Unknown learning-rate schedule: {name!r}; metalearn has {sorted(_BY_NAME)}"
        )
    return cls.from_config(dict(config.get("config", {})))
