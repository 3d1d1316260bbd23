"""Random numbers from the core's global seeded generator.

Every random draw in metalearn (initializers, Dropout, the shuffling in ``fit``) comes
from one generator in the C core, so a single ``set_seed`` makes a whole run repeatable:

    >>> import metalearn as ml
    >>> ml.random.set_seed(42)
    >>> a = ml.random.uniform((2, 3))
    >>> ml.random.set_seed(42)
    >>> b = ml.random.uniform((2, 3))      # the same values as a
"""

import contextlib

import numpy as np

from metalearn import _core

__all__ = [
    "set_seed",
    "get_state",
    "set_state",
    "uniform",
    "normal",
    "truncated_normal",
    "permutation",
    "shuffle",
]


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(d) for d in shape)


def set_seed(seed):
    """Seeds the global generator of the C core.

    Args:
        seed: a non-negative integer.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"set_seed: the seed must be non-negative, got {seed}")
    _core.seed(seed)


def get_state():
    """The global generator's position: a tuple of four unsigned 64-bit ints (xoshiro256**'s
    state). ``set_state`` of it makes the draws that follow repeat (checkpoints save it)."""
    return tuple(int(w) for w in _core.rng_state())


def set_state(state):
    """Puts the global generator back where ``get_state`` read it.

    Raises:
        ValueError / TypeError: not four ints in ``[0, 2**64)``, or all four zero (no
            state of the generator); the generator is unchanged.
    """
    _core.rng_set_state(tuple(state))


def uniform(shape, minval=0.0, maxval=1.0, seed=None):
    """Tensor of `shape` with values drawn uniformly from ``[minval, maxval)``."""
    with _maybe_seeded(seed):
        return _core.random_uniform(_shape(shape), float(minval), float(maxval))


def normal(shape, mean=0.0, stddev=1.0, seed=None):
    """Tensor of `shape` with values drawn from N(mean, stddev²)."""
    with _maybe_seeded(seed):
        return _core.random_normal(_shape(shape), float(mean), float(stddev))


def truncated_normal(shape, mean=0.0, stddev=1.0, seed=None):
    """Tensor of `shape` from N(mean, stddev²), values redrawn until within 2 stddev."""
    with _maybe_seeded(seed):
        return _core.truncated_normal(_shape(shape), float(mean), float(stddev))


def permutation(n, seed=None):
    """A random permutation of ``range(n)`` as an int64 ndarray."""
    with _maybe_seeded(seed):
        return np.asarray(_core.permutation(int(n)), dtype=np.int64)


def shuffle(x, seed=None):
    """`x` (array-like) with its first axis in random order (a NumPy copy)."""
    x = np.asarray(x)
    return x[permutation(len(x), seed)]


@contextlib.contextmanager
def _maybe_seeded(seed):
    """Draws inside use `seed` when it is not None, without breaking the global stream.

    The global generator is reseeded afterwards with a value drawn from it before, so a
    program stays repeatable after ``set_seed`` whether or not it uses seeded draws.
    """
    if seed is None:
        yield
        return
    bits = np.asarray(_core.random_uniform((2,), 0.0, 1.0), dtype=np.float64)
    resume = int(bits[0] * (1 << 24)) << 24 | int(bits[1] * (1 << 24))
    _core.seed(int(seed))
    try:
        yield
    finally:
        _core.seed(resume)
