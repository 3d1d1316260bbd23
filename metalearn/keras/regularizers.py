"""Regularizers, as ``keras.regularizers``: penalties on weights or activations that
``fit`` adds to the training loss (``model.losses``).

``Dense(3, kernel_regularizer="l2")`` adds ``0.01 * sum(kernel ** 2)`` to every training
and evaluation loss, as Keras 3 does; an ``activity_regularizer`` adds its penalty of the
layer's output divided by the batch size. Each penalty is made of core ops, so it is
differentiable to any order and recorded in ``fit``'s traced step.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from metalearn import _core
from metalearn._typing import Config

__all__ = [
    "Regularizer",
    "L1",
    "L2",
    "L1L2",
    "l1",
    "l2",
    "l1_l2",
    "get",
    "serialize",
    "deserialize",
]


def _factor(value, name):
    """Keras 3's validate_float_arg: a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(
            f"Invalid value for argument {name}: expected a float. Received: {name}={value!r}"
        )
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"Invalid value for argument {name}: expected a non-negative float. "
            f"Received: {name}={value}"
        )
    return value


def _l1(x, factor):
    return _core.mul(_core.reduce_sum(_core.abs(x)), factor)


def _l2(x, factor):
    return _core.mul(_core.reduce_sum(_core.square(x)), factor)


class Regularizer:
    """Base class: ``regularizer(x)`` returns a scalar penalty tensor."""

    def __call__(self, x: Any) -> Any:
        return _core.tensor(np.float32(0.0))

    def get_config(self) -> Config:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_config")

    @classmethod
    def from_config(cls, config: Config) -> Regularizer:
        return cls(**config)


class L1(Regularizer):
    """``l1 * sum(abs(x))``; the string ``"l1"`` means ``L1(0.01)``."""

    def __init__(self, l1: Optional[float] = 0.01) -> None:
        self.l1 = _factor(0.01 if l1 is None else l1, "l1")

    def __call__(self, x):
        return _l1(_core.as_tensor(x), self.l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum(square(x))``; the string ``"l2"`` means ``L2(0.01)``."""

    def __init__(self, l2: Optional[float] = 0.01) -> None:
        self.l2 = _factor(0.01 if l2 is None else l2, "l2")

    def __call__(self, x):
        return _l2(_core.as_tensor(x), self.l2)

    def get_config(self):
        return {"l2": self.l2}


class L1L2(Regularizer):
    """``l1 * sum(abs(x)) + l2 * sum(square(x))``; defaults 0.0 and 0.0 as Keras 3 (also
    by the names ``"L1L2"`` and ``"l1l2"``)."""

    def __init__(self, l1: Optional[float] = 0.0, l2: Optional[float] = 0.0) -> None:
        self.l1 = _factor(0.0 if l1 is None else l1, "l1")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2")

    def __call__(self, x):
        x = _core.as_tensor(x)
        out = None
        if self.l1:
            out = _l1(x, self.l1)
        if self.l2:
            t = _l2(x, self.l2)
            out = t if out is None else _core.add(out, t)
        return _core.mul(_core.reduce_sum(x), 0.0) if out is None else out

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


# Keras 3's aliases: the classes themselves (so l1_l2() is L1L2(0.0, 0.0))
l1 = L1
l2 = L2
l1_l2 = L1L2

# the names Keras 3's get accepts ("l1_l2" is not one of them)
_BY_NAME = {"L1": L1, "L2": L2, "L1L2": L1L2, "l1": L1, "l2": L2, "l1l2": L1L2}


def serialize(regularizer: Optional[Regularizer]) -> Optional[Config]:
    """``{"class_name": ..., "config": ...}`` (None gives None)."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def get(identifier: Any) -> Optional[Any]:
    """A regularizer from a name (``"l1"``, ``"l2"``, ``"l1l2"``), a config dict, an
    instance or a callable; None gives None.

    Raises:
        ValueError: an unknown name or config, or anything else.
    """
    if identifier is None:
        return None
    if isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            raise ValueError(
                f"Could not interpret regularizer identifier: {identifier} "
                "(names: 'l1', 'l2', 'l1l2', 'L1', 'L2', 'L1L2')"
            )
        return cls()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}")
        return cls.from_config(dict(identifier.get("config", {})))
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}")


deserialize = get
