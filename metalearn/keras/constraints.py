"""Weight constraints, as ``keras.constraints``: projections the optimizer applies to a
weight after each update (``Dense(4, kernel_constraint="non_neg")``).

As Keras 3 (``BaseOptimizer.apply``): after the gradient step, every variable whose
``constraint`` is set is assigned ``constraint(variable)``; in ``fit``'s traced step the
projection is recorded with the update and replayed from C. Each constraint is made of core
ops (``MaxNorm``: ``w * clip(norm, 0, max_value) / (epsilon + norm)`` with Keras' epsilon
1e-7).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import numpy as np

from metalearn import _core
from metalearn._typing import Config
from metalearn.tape import no_grad as _no_grad

__all__ = [
    "Constraint",
    "MaxNorm",
    "max_norm",
    "NonNeg",
    "non_neg",
    "UnitNorm",
    "unit_norm",
    "MinMaxNorm",
    "min_max_norm",
    "get",
    "serialize",
    "deserialize",
]

_EPSILON = 1e-7  # keras.backend.epsilon()


def _axis(axis, name):
    if isinstance(axis, (list, tuple)):
        if not axis or not all(isinstance(a, (int, np.integer)) for a in axis):
            raise ValueError(f"{name}: axis must be an int or a list of ints, got {axis!r}")
        return [int(a) for a in axis]
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"{name}: axis must be an int or a list of ints, got {axis!r}")
    return int(axis)


def _number(value, name, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name}: {what} must be a number, got {value!r}")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name}: {what} must be finite, got {value!r}")
    return value


def _tensor(w):
    if isinstance(w, _core.Tensor):
        return w
    return _core.as_tensor(np.ascontiguousarray(w, dtype=np.float32))


def _norms(w, axis):
    return _core.sqrt(_core.reduce_sum(_core.square(w), axis, True))


class Constraint:
    """Base class: ``constraint(w)`` returns the projected weight (the base returns `w`)."""

    def __call__(self, w: Any) -> Any:
        return w

    def get_config(self) -> Config:
        return {}

    @classmethod
    def from_config(cls, config: Config) -> Constraint:
        return cls(**config)


class MaxNorm(Constraint):
    """Rescales the weights incident to each unit to a norm of at most `max_value`.

    Args:
        max_value: the largest norm (default 2).
        axis: the axis (or axes) the norms are taken over (default 0: a Dense kernel's
            input axis; ``[0, 1, 2]`` for a Conv2D kernel).
    """

    def __init__(self, max_value: float = 2, axis: Any = 0) -> None:
        self.max_value = _number(max_value, "MaxNorm", "max_value")
        self.axis = _axis(axis, "MaxNorm")

    def __call__(self, w):
        w = _tensor(w)
        norms = _norms(w, self.axis)
        desired = _core.clip(norms, 0.0, float(self.max_value))
        return _core.mul(w, _core.div(desired, _core.add_scalar(norms, _EPSILON)))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Constrains the weights to be non-negative: ``maximum(w, 0)``."""

    def __call__(self, w):
        return _core.relu(_tensor(w))


class UnitNorm(Constraint):
    """Rescales the weights incident to each unit to unit norm: ``w / (epsilon + norm)``.

    Args:
        axis: the axis (or axes) the norms are taken over (default 0).
    """

    def __init__(self, axis: Any = 0) -> None:
        self.axis = _axis(axis, "UnitNorm")

    def __call__(self, w):
        w = _tensor(w)
        return _core.div(w, _core.add_scalar(_norms(w, self.axis), _EPSILON))

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Rescales each unit's weights towards a norm in ``[min_value, max_value]``: to
    ``rate * clip(norm, min_value, max_value) + (1 - rate) * norm``.

    Args:
        min_value, max_value: the bounds (defaults 0.0 and 1.0).
        rate: 1.0 enforces the bounds at once; less moves towards them (default 1.0).
        axis: the axis (or axes) the norms are taken over (default 0).
    """

    def __init__(
        self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis: Any = 0
    ) -> None:
        self.min_value = _number(min_value, "MinMaxNorm", "min_value")
        self.max_value = _number(max_value, "MinMaxNorm", "max_value")
        if float(min_value) > float(max_value):
            raise ValueError(
                f"MinMaxNorm: min_value ({min_value}) must not exceed max_value ({max_value})"
            )
        self.rate = _number(rate, "MinMaxNorm", "rate")
        self.axis = _axis(axis, "MinMaxNorm")

    def __call__(self, w):
        w = _tensor(w)
        norms = _norms(w, self.axis)
        rate = float(self.rate)
        desired = _core.mul_scalar(
            _core.clip(norms, float(self.min_value), float(self.max_value)), rate
        )
        if rate != 1.0:
            desired = _core.add(desired, _core.mul_scalar(norms, 1.0 - rate))
        return _core.mul(w, _core.div(desired, _core.add_scalar(norms, _EPSILON)))

    def get_config(self):
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": self.axis,
        }


# Keras 3's aliases: the classes themselves
max_norm = MaxNorm
non_neg = NonNeg
unit_norm = UnitNorm
min_max_norm = MinMaxNorm

_CLASSES = (Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm)
# Keras 3's names: each class name and its snake case ("max_norm", "non_neg", ...)
_BY_NAME = {cls.__name__: cls for cls in _CLASSES}
_BY_NAME.update(
    constraint=Constraint,
    max_norm=MaxNorm,
    min_max_norm=MinMaxNorm,
    non_neg=NonNeg,
    unit_norm=UnitNorm,
)


def serialize(constraint: Optional[Any]) -> Optional[Config]:
    """``{"class_name": ..., "config": ...}`` (None gives None)."""
    if constraint is None:
        return None
    if not isinstance(constraint, Constraint):
        raise ValueError(
            f"serialize: cannot serialize {constraint!r}; subclass keras.constraints."
            "Constraint and implement get_config"
        )
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def deserialize(config: Any, custom_objects: Optional[dict] = None) -> Constraint:
    """A constraint from ``serialize``'s output (or a name)."""
    if isinstance(config, str):
        return get(config)
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Could not interpret constraint identifier: {config!r}")
    registry = dict(_BY_NAME)
    registry.update(custom_objects or {})
    cls = registry.get(config["class_name"])
    if cls is None:
        raise ValueError(f"Could not interpret constraint identifier: {config!r}")
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier: Any) -> Optional[Any]:
    """A constraint from a name (``"max_norm"``, ``"NonNeg"``), a config dict, a class, an
    instance or a callable; None gives None.

    Raises:
        ValueError: an unknown name or config, or anything else.
    """
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        return deserialize(identifier)
    obj = _BY_NAME.get(identifier) if isinstance(identifier, str) else identifier
    if callable(obj):
        return obj() if inspect.isclass(obj) else obj
    raise ValueError(f"Could not interpret constraint identifier: {identifier}")


def _apply(variables) -> None:
    """Assigns ``constraint(v)`` to each variable that has a constraint, in place and
    unrecorded on any tape (Keras 3: after the optimizer's update). Inside a trace the
    assignments are recorded and replayed with the update."""
    # (on every eager optimizer step: one attribute read per variable when none is set)
    pending = [(v, c) for v in variables if (c := getattr(v, "constraint", None)) is not None]
    if not pending:
        return
    with _no_grad():
        # every projection first, then every write: a constraint that raises (or returns a
        # wrong shape) leaves every weight as the update left it
        values = [(v, _tensor(c(v))) for v, c in pending]
        for v, value in values:
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(
                    f"constraint of {getattr(v, 'name', '?')!r} returned shape "
                    f"{tuple(value.shape)} for a weight of shape {tuple(v.shape)}"
                )
        for v, value in values:
            _core.assign(v, value)
