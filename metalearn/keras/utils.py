"""Helpers, as ``keras.utils``."""

from typing import Any, Optional

import numpy as np

from metalearn import random as _random

__all__ = [
    "to_categorical",
    "set_random_seed",
    "PyDataset",
    "Sequence",
    "pack_x_y_sample_weight",
    "unpack_x_y_sample_weight",
]


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


class PyDataset:
    """Base class for a dataset read batch by batch by index, as Keras 3's
    ``keras.utils.PyDataset``: ``fit``, ``evaluate`` and ``predict`` take one as `x` (and
    ``fit`` as `validation_data`).

    Subclass it and define ``__getitem__(index)``, returning the batch at `index` as
    ``(x, y)``, ``(x, y, sample_weight)``, ``(x,)`` or ``x`` alone (predict), and
    ``__len__()``, the number of batches (or the ``num_batches`` property, None for an
    infinite dataset, which ``fit`` then reads with ``steps_per_epoch``).
    ``on_epoch_begin``/``on_epoch_end`` are called around each pass over it (each training
    epoch, each validation, each evaluate or predict). With ``fit(shuffle=True)`` the
    batches of a finite dataset are visited in a new order each pass, drawn from the core
    generator (``metalearn.random.set_seed``).

    Args:
        workers, use_multiprocessing, max_queue_size: accepted for Keras 3's signature
            and kept as attributes, but ignored: metalearn reads the batches in order on
            the calling thread (the C core already uses every core for each step).
    """

    def __init__(
        self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10
    ) -> None:
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    @property
    def workers(self) -> int:
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self) -> bool:
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self) -> int:
        return getattr(self, "_max_queue_size", 10)

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} must implement __getitem__(index), returning a batch"
        )

    @property
    def num_batches(self) -> Optional[int]:
        """The number of batches: ``len(self)`` (None: an infinite dataset)."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(
            f"{type(self).__name__} must implement __len__() or the num_batches property "
            "(None for an infinite dataset)"
        )

    def on_epoch_begin(self) -> None:
        """Called before each pass over the dataset."""

    def on_epoch_end(self) -> None:
        """Called after each pass over the dataset."""


Sequence = PyDataset  # Keras 3 keeps the Keras 2 name as an alias


def pack_x_y_sample_weight(x: Any, y: Any = None, sample_weight: Any = None) -> tuple:
    """``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``: a batch as ``train_step`` gets
    it, as Keras 3's."""
    if y is None:
        return (x,)
    if sample_weight is None:
        return (x, y)
    return (x, y, sample_weight)


def unpack_x_y_sample_weight(data: Any) -> tuple:
    """``(x, y, sample_weight)`` from a batch, missing parts None, as Keras 3's: a tuple
    of length 1 to 3 is unpacked, anything else is ``x`` alone.

    Raises:
        ValueError: a tuple longer than 3.
    """
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return (data, None, None)
    if len(data) == 1:
        return (data[0], None, None)
    if len(data) == 2:
        return (data[0], data[1], None)
    if len(data) == 3:
        return data
    raise ValueError(
        "Data is expected to be in format `x`, `(x,)`, `(x, y)`, or `(x, y, sample_weight)`, "
        f"found a tuple of length {len(data)}"
    )
