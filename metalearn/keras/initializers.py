"""Weight initializers, as ``keras.initializers`` (names, defaults, formulas).

Every random initializer draws from the core's seeded generator
(``metalearn.random.set_seed``). An initializer given ``seed=`` draws the same values on
every call, without disturbing the global stream's repeatability.

Fans follow Keras: for a kernel of shape ``(fan_in, fan_out)``, or
``(*receptive_field, in, out)`` with both fans multiplied by the receptive field size.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from metalearn._typing import Config, Shape
import math

import numpy as np

from metalearn import _core
from metalearn import random as _random

__all__ = [
    "Initializer",
    "Zeros",
    "Ones",
    "Constant",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "GlorotUniform",
    "GlorotNormal",
    "HeNormal",
    "HeUniform",
    "LecunNormal",
    "LecunUniform",
    "Identity",
    "Orthogonal",
    "get",
    "serialize",
    "zeros",
    "ones",
    "constant",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
]

# stddev of a standard normal truncated to [-2, 2]: Keras divides by it so the truncated
# draw keeps the intended variance.
_TRUNC_STD = 0.87962566103423978


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(d) for d in shape)


def compute_fans(shape: Sequence[int]) -> Tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, as Keras computes them."""
    shape = _shape(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Base class: ``initializer(shape, dtype=None)`` returns a Tensor of that shape."""

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def get_config(self) -> Config:
        """The initializer's arguments as a dict (``{}`` for one without arguments)."""
        return {}

    @classmethod
    def from_config(cls, config: Config) -> Initializer:
        """A new initializer from the dict that ``get_config`` returned."""
        return cls(**config)


class Zeros(Initializer):
    """All zeros."""

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        return _core.zeros(_shape(shape))


class Ones(Initializer):
    """All ones."""

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        return _core.ones(_shape(shape))


class Constant(Initializer):
    """Every element equal to `value` (a scalar)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        return _core.full(_shape(shape), self.value)

    def get_config(self) -> Config:
        return {"value": self.value}


class RandomNormal(Initializer):
    """Draws from N(mean, stddev²).

    Args:
        mean: mean of the distribution.
        stddev: standard deviation.
        seed: optional integer making the draw repeatable.
    """

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: Optional[int] = None) -> None:
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        return _random.normal(_shape(shape), self.mean, self.stddev, seed=self.seed)

    def get_config(self) -> Config:
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(Initializer):
    """Draws uniformly from ``[minval, maxval)``."""

    def __init__(
        self, minval: float = -0.05, maxval: float = 0.05, seed: Optional[int] = None
    ) -> None:
        self.minval, self.maxval, self.seed = float(minval), float(maxval), seed

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        return _random.uniform(_shape(shape), self.minval, self.maxval, seed=self.seed)

    def get_config(self) -> Config:
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class TruncatedNormal(Initializer):
    """Draws from N(mean, stddev²), redrawing values beyond two standard deviations."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: Optional[int] = None) -> None:
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        return _random.truncated_normal(_shape(shape), self.mean, self.stddev, seed=self.seed)

    def get_config(self) -> Config:
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class VarianceScaling(Initializer):
    """Scales to the weight's fans: ``n`` = fan_in, fan_out or their mean (`mode`).

    - ``distribution="truncated_normal"``: stddev ``sqrt(scale / n) / 0.8796…``, truncated.
    - ``"untruncated_normal"``: stddev ``sqrt(scale / n)``.
    - ``"uniform"``: within ``[-limit, limit]``, ``limit = sqrt(3 * scale / n)``.
    """

    def __init__(
        self,
        scale: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "truncated_normal",
        seed: Optional[int] = None,
    ) -> None:
        if scale <= 0:
            raise ValueError(f"VarianceScaling: scale must be positive, got {scale}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(
                f"VarianceScaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}"
            )
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(f"VarianceScaling: unknown distribution {distribution!r}")
        self.scale, self.mode, self.distribution, self.seed = float(scale), mode, distribution, seed

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        shape = _shape(shape)
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return _random.truncated_normal(
                shape, 0.0, math.sqrt(scale) / _TRUNC_STD, seed=self.seed
            )
        if self.distribution == "untruncated_normal":
            return _random.normal(shape, 0.0, math.sqrt(scale), seed=self.seed)
        limit = math.sqrt(3.0 * scale)
        return _random.uniform(shape, -limit, limit, seed=self.seed)

    def get_config(self) -> Config:
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
        }


class GlorotUniform(VarianceScaling):
    """Glorot (Xavier) uniform: ``U(-limit, limit)``, ``limit = sqrt(6 / (fan_in + fan_out))``.

    The default kernel initializer of Dense (Glorot & Bengio 2010).
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(1.0, "fan_avg", "uniform", seed)

    def get_config(self) -> Config:
        return {"seed": self.seed}


class GlorotNormal(VarianceScaling):
    """Glorot normal: truncated normal, stddev ``sqrt(2 / (fan_in + fan_out))``."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)

    def get_config(self) -> Config:
        return {"seed": self.seed}


class HeNormal(VarianceScaling):
    """He normal: truncated normal, stddev ``sqrt(2 / fan_in)`` (He et al. 2015)."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(2.0, "fan_in", "truncated_normal", seed)

    def get_config(self) -> Config:
        return {"seed": self.seed}


class HeUniform(VarianceScaling):
    """He uniform: ``U(-limit, limit)``, ``limit = sqrt(6 / fan_in)``."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(2.0, "fan_in", "uniform", seed)

    def get_config(self) -> Config:
        return {"seed": self.seed}


class LecunNormal(VarianceScaling):
    """LeCun normal: truncated normal, stddev ``sqrt(1 / fan_in)``."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(1.0, "fan_in", "truncated_normal", seed)

    def get_config(self) -> Config:
        return {"seed": self.seed}


class LecunUniform(VarianceScaling):
    """LeCun uniform: ``U(-limit, limit)``, ``limit = sqrt(3 / fan_in)``."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(1.0, "fan_in", "uniform", seed)

    def get_config(self) -> Config:
        return {"seed": self.seed}


class Identity(Initializer):
    """``gain`` times the identity matrix (2-D shapes only)."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = float(gain)

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        shape = _shape(shape)
        if len(shape) != 2:
            raise ValueError(f"Identity initializer needs a 2-D shape, got {shape}")
        return _core.tensor(np.eye(*shape, dtype=np.float32) * self.gain)

    def get_config(self) -> Config:
        return {"gain": self.gain}


def _orthonormal_columns(a):
    """The Q of ``a = QR`` with R's diagonal positive (Keras' sign convention), by
    Gram-Schmidt orthogonalising each column twice (Giraud et al. 2005: twice is enough),
    in float64 without the BLAS: np.linalg.qr goes through the BLAS's own
    thread pool, which on a loaded machine took seconds for a 512 x 128 matrix."""
    a = np.asarray(a, np.float64)
    q = np.empty_like(a)
    for j in range(a.shape[1]):
        v = a[:, j].copy()
        for _ in range(2):
            if j:
                # einsum's own loops (optimize off): no BLAS call, no temporaries
                coef = np.einsum("ij,i->j", q[:, :j], v)
                v -= np.einsum("ij,j->i", q[:, :j], coef)
        q[:, j] = v / np.sqrt((v * v).sum())
    return q


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times `gain`, as Keras 3's: the Q of the QR
    decomposition of a standard normal draw, its columns' signs fixed by R's diagonal;
    a shape of more than two dims is flattened to ``(prod(shape[:-1]), shape[-1])``.
    The recurrent kernels' default (``LSTM``, ``GRU``, ``SimpleRNN``)."""

    def __init__(self, gain: float = 1.0, seed: Optional[int] = None) -> None:
        self.gain, self.seed = float(gain), seed

    def __call__(self, shape: Shape, dtype: Any = None) -> _core.Tensor:
        shape = _shape(shape)
        if len(shape) < 2:
            raise ValueError(f"Orthogonal initializer needs a shape of 2 or more dims, got {shape}")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        flat = (max(rows, cols), min(rows, cols))
        q = _orthonormal_columns(_random.normal(flat, 0.0, 1.0, seed=self.seed).numpy())
        if rows < cols:
            q = q.T
        return _core.tensor((self.gain * q).reshape(shape).astype(np.float32))

    def get_config(self) -> Config:
        return {"gain": self.gain, "seed": self.seed}


zeros, ones, constant = Zeros, Ones, Constant
random_normal, random_uniform, truncated_normal = RandomNormal, RandomUniform, TruncatedNormal
glorot_uniform, glorot_normal = GlorotUniform, GlorotNormal
he_normal, he_uniform, lecun_normal, lecun_uniform = HeNormal, HeUniform, LecunNormal, LecunUniform
orthogonal = Orthogonal

_BY_NAME = {
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_normal": HeNormal,
    "he_uniform": HeUniform,
    "lecun_normal": LecunNormal,
    "lecun_uniform": LecunUniform,
    "identity": Identity,
    "orthogonal": Orthogonal,
    # Keras 3's short aliases (Embedding's default "uniform")
    "uniform": RandomUniform,
    "normal": RandomNormal,
}
_BY_CLASS = {cls.__name__: cls for cls in _BY_NAME.values()}


def serialize(initializer: Initializer) -> Config:
    """``{"class_name": ..., "config": ...}`` of an initializer."""
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def get(identifier: Any) -> Optional[Initializer]:
    """An initializer from a name (``"glorot_uniform"``, ``"GlorotUniform"``), a config
    dict, an Initializer, a callable ``f(shape)``, or None."""
    if identifier is None:
        return None
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _BY_CLASS.get(identifier)
        if cls is None:
            raise ValueError(f"Unknown initializer: {identifier!r}; known: {sorted(_BY_NAME)}")
        return cls()
    if isinstance(identifier, dict):
        cls = _BY_CLASS.get(identifier.get("class_name")) or _BY_NAME.get(
            str(identifier.get("class_name")).lower()
        )
        if cls is None:
            raise ValueError(f"Unknown initializer config: {identifier!r}")
        return cls.from_config(identifier.get("config", {}))
    if callable(identifier):
        return identifier
    raise TypeError(f"Could not interpret initializer identifier: {identifier!r}")
