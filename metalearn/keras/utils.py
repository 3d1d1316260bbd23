"""Helpers, as ``keras.utils``."""

from typing import Any, Optional

import numpy as np

from metalearn import random as _random

__all__ = ["to_categorical", "set_random_seed"]


def to_categorical(y: Any, num_classes: Optional[int] = None, dtype: Any = "float32") -> np.ndarray:
    """One-hot encodes integer labels: ``(n,)`` → ``(n, num_classes)``.

    Args:
        y: integer labels of any shape (a trailing axis of size 1 is dropped).
        num_classes: number of classes (default ``max(y) + 1``).
        dtype: dtype of the result.

    Returns:
        Array ``y.shape + (num_classes,)``.

    Raises:
        ValueError: a label outside ``[0, num_classes)``.
    """
    y = np.asarray(y, dtype=np.int64)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"to_categorical: labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]"
        )
    out = np.zeros(y.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, y[..., None], 1, axis=-1)
    return out


def set_random_seed(seed: int) -> None:
    """Seeds the core's generator and NumPy's global generator."""
    _random.set_seed(seed)
    np.random.seed(int(seed) % (2**32))
