"""Activation functions, as ``keras.activations`` (names and defaults).

Each takes a tensor (or array-like) and returns a tensor; all are differentiable to any
order through the core's autograd.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from metalearn._typing import ArrayLike
import math

from metalearn import _core

__all__ = [
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "linear",
    "elu",
    "gelu",
    "leaky_relu",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "exponential",
    "get",
    "serialize",
    "deserialize",
]


def relu(
    x: ArrayLike,
    negative_slope: float = 0.0,
    max_value: Optional[float] = None,
    threshold: float = 0.0,
) -> _core.Tensor:
    """Rectified linear unit: ``max(x, 0)``.

    With the optional arguments, Keras 3's formula (``activations.ReLU.static_call``)::

        y = x if x > threshold else 0          # relu(x) when threshold == 0
        y = clip(y, 0, max_value)              # when max_value is given
        y = y - negative_slope * relu(threshold - x)

    So ``negative_slope * (x - threshold)`` below the threshold, ``x`` above it capped at
    `max_value`; with a negative threshold the inputs in ``(threshold, 0]`` stay ``x``,
    or give 0 once clipped by `max_value`. A NaN input gives NaN.
    """
    slope = float(negative_slope)
    threshold = float(threshold)
    if slope != 0.0 and max_value is None and threshold == 0.0:
        return _core.leaky_relu(x, slope)
    if threshold != 0.0:
        # x where x > threshold, else 0: the 0/1 mask is a step of x - threshold
        y = _core.mul(x, _core.clip(_core.sign(_core.sub(x, threshold)), 0.0, 1.0))
    else:
        y = _core.relu(x)
    if max_value is not None:
        y = _core.clip(y, 0.0, float(max_value))
    if slope != 0.0:
        below = _core.relu(_core.sub(threshold, x) if threshold != 0.0 else _core.neg(x))
        y = _core.sub(y, _core.mul(below, slope))
    return y


def leaky_relu(x: ArrayLike, negative_slope: float = 0.2) -> _core.Tensor:
    """``x`` if ``x > 0`` else ``negative_slope * x`` (Keras 3 default slope 0.2)."""
    return _core.leaky_relu(x, float(negative_slope))


def sigmoid(x: ArrayLike) -> _core.Tensor:
    """``1 / (1 + exp(-x))``."""
    return _core.sigmoid(x)


def tanh(x: ArrayLike) -> _core.Tensor:
    """Hyperbolic tangent."""
    return _core.tanh(x)


def softmax(x: ArrayLike, axis: int = -1) -> _core.Tensor:
    """``exp(x) / sum(exp(x), axis)``, computed stably."""
    return _core.softmax(x, int(axis))


def log_softmax(x: ArrayLike, axis: int = -1) -> _core.Tensor:
    """``x - log(sum(exp(x), axis))``, computed stably."""
    return _core.log_softmax(x, int(axis))


def linear(x: Any) -> Any:
    """The identity."""
    return x


def elu(x: ArrayLike, alpha: float = 1.0) -> _core.Tensor:
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    return _core.elu(x, float(alpha))


def gelu(x: ArrayLike, approximate: bool = False) -> _core.Tensor:
    """Gaussian error linear unit: ``x * Phi(x)`` (exact erf form).

    With ``approximate=True``:
    ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``.
    """
    if not approximate:
        return _core.gelu(x)
    inner = _core.mul(
        _core.add(x, _core.mul(_core.pow(x, 3.0), 0.044715)), math.sqrt(2.0 / math.pi)
    )
    return _core.mul(_core.mul(x, 0.5), _core.add(_core.tanh(inner), 1.0))


def softplus(x: ArrayLike) -> _core.Tensor:
    """``log(1 + exp(x))``, one op in the core (``metalearn.softplus``), computed stably as
    ``max(x, 0) + log1p(exp(-|x|))``; its gradient is ``sigmoid(x)``, to any order."""
    return _core.softplus(x)


def softsign(x: ArrayLike) -> _core.Tensor:
    """``x / (1 + |x|)``."""
    return _core.div(x, _core.add(_core.abs(x), 1.0))


def silu(x: ArrayLike) -> _core.Tensor:
    """``x * sigmoid(x)`` (also called swish)."""
    return _core.mul(x, _core.sigmoid(x))


swish = silu


def exponential(x: ArrayLike) -> _core.Tensor:
    """``exp(x)``."""
    return _core.exp(x)


_BY_NAME = {
    "relu": relu,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "linear": linear,
    "elu": elu,
    "gelu": gelu,
    "leaky_relu": leaky_relu,
    "softplus": softplus,
    "softsign": softsign,
    "swish": silu,
    "silu": silu,
    "exponential": exponential,
}


def get(identifier: Any) -> Callable[..., Any]:
    """An activation function from a name, a function, or None (→ linear)."""
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        fn = _BY_NAME.get(identifier.lower())
        if fn is None:
            raise ValueError(
                f"Unknown activation function: {identifier!r}; known: {sorted(_BY_NAME)}"
            )
        return fn
    if isinstance(identifier, dict):
        return get(identifier.get("config", identifier).get("name", identifier.get("class_name")))
    if callable(identifier):
        return identifier
    raise TypeError(f"Could not interpret activation identifier: {identifier!r}")


def serialize(fn: Callable[..., Any]) -> str:
    """The name of an activation function (its ``__name__`` for a custom one)."""
    for name, f in _BY_NAME.items():
        if f is fn and name != "swish":
            return name
    return getattr(fn, "__name__", repr(fn))


def deserialize(name: Any) -> Callable[..., Any]:
    """The activation function named `name` (as ``get``).

    Raises:
        ValueError: unknown name.
    """
    return get(name)
