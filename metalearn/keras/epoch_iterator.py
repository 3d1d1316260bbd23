"""The data side of fit, evaluate and predict, as Keras 3's ``EpochIterator`` and
``train_validation_split``: arrays cut into batches, shuffled each epoch, and the
validation samples split off the end.

The arrays come checked (``Model._check_data``): x, y and sample_weight with one entry
per sample each, x not empty.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import numpy as np

from metalearn import _core

__all__ = ["EpochIterator", "train_validation_split"]


def train_validation_split(
    x: np.ndarray, y: np.ndarray, sample_weight: Optional[np.ndarray], validation_split: float
):
    """``(x, y, sample_weight), (x_val, y_val, sample_weight_val)``: the first
    ``floor(len(x) * (1 - validation_split))`` samples for training and the rest held out,
    as Keras 3's ``train_validation_split``, taken before any shuffling, sample weights
    split alike.

    Raises:
        ValueError: the split leaves no training or no validation samples.
    """
    split = int(math.floor(len(x) * (1.0 - validation_split)))
    if split == len(x):
        raise ValueError("fit: validation_split leaves no validation samples")
    if split == 0:
        raise ValueError("fit: validation_split leaves no training samples")
    sw, sw_val = (
        (None, None) if sample_weight is None else (sample_weight[:split], sample_weight[split:])
    )
    return (x[:split], y[:split], sw), (x[split:], y[split:], sw_val)


class EpochIterator:
    """Batches of ``(x, y, sample_weight)``, one pass over the samples per epoch.

    Args:
        x, y, sample_weight: arrays with one entry per sample (y and sample_weight may be
            None; their batches are then None).
        batch_size: samples per batch; the last batch holds the rest.
        shuffle: visit the samples in a new order each epoch, drawn from the core
            generator (``metalearn.random.set_seed``) when the epoch's first batch is
            asked for.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: Optional[np.ndarray] = None,
        sample_weight: Optional[np.ndarray] = None,
        batch_size: int = 32,
        shuffle: bool = False,
    ) -> None:
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.num_samples = len(x)
        self.num_batches = -(-self.num_samples // self.batch_size)

    def enumerate_epoch(
        self,
    ) -> Iterator[Tuple[int, Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]]:
        """Yields ``(step, (x_batch, y_batch, sample_weight_batch))`` for one epoch."""
        x, y, sw, n, size = self.x, self.y, self.sample_weight, self.num_samples, self.batch_size
        order = np.asarray(_core.permutation(n), dtype=np.int64) if self.shuffle else None
        for step in range(self.num_batches):
            lo, hi = step * size, min(n, (step + 1) * size)
            if order is None:
                yield (
                    step,
                    (x[lo:hi], None if y is None else y[lo:hi], None if sw is None else sw[lo:hi]),
                )
            else:
                idx = order[lo:hi]
                yield step, (x[idx], None if y is None else y[idx], None if sw is None else sw[idx])
