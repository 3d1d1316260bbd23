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

__all__ = ["EpochIterator", "BatchIterator", "is_batch_iterator", "train_validation_split"]


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


def is_batch_iterator(x) -> bool:
    """Whether `x` is a Python generator or iterator of batches (what fit and evaluate
    read batch by batch), not an array or a list of arrays."""
    return hasattr(x, "__next__") and hasattr(x, "__iter__") and not hasattr(x, "shape")


class BatchIterator:
    """The batches of a Python generator or iterator, as Keras 3's ``EpochIterator`` over a
    ``GeneratorDataAdapter``: each item is ``(x, y)`` or ``(x, y, sample_weight)``, one
    batch each.

    With ``steps_per_epoch`` an epoch takes that many batches and the next epoch goes on
    from where it stopped; without it an epoch runs until the iterator is exhausted. An
    iterator that runs out stops training with Keras' warning ("Your input ran out of
    data; interrupting training."), as Keras does.

    Args:
        iterator: the generator or iterator.
        steps_per_epoch: batches per epoch, or None (until exhausted).
        check: ``check(x, y, sample_weight) -> (x, y, sample_weight)``: each batch as
            arrays, checked before its step (a refused batch changes nothing).
    """

    def __init__(self, iterator, steps_per_epoch: Optional[int], check) -> None:
        self.iterator = iterator
        self.num_batches = steps_per_epoch
        self.check = check
        self.ran_out = False
        self.steps_seen = 0  # in the current epoch

    def _next(self):
        try:
            item = next(self.iterator)
        except StopIteration:
            return None
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(
                "fit: each batch of a generator must be a tuple (x, y) or "
                f"(x, y, sample_weight), got {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
            )
        return self.check(*item, *([None] * (3 - len(item))))

    def enumerate_epoch(self):
        """Yields ``(step, (x_batch, y_batch, sample_weight_batch))`` for one epoch."""
        self.steps_seen = 0
        step = 0
        while self.num_batches is None or step < self.num_batches:
            batch = None if self.ran_out else self._next()
            if batch is None:
                self.ran_out = True
                return
            self.steps_seen = step + 1
            yield step, batch
            step += 1

    @property
    def interrupted(self) -> bool:
        """Whether the last epoch came short of its steps: ran out with
        ``steps_per_epoch`` set, or took no batch at all."""
        return self.ran_out and (self.num_batches is not None or self.steps_seen == 0)


RAN_OUT = (
    "Your input ran out of data; interrupting training. Make sure that your dataset or "
    "generator can generate at least `steps_per_epoch * epochs` batches."
)
