"""The data side of fit, evaluate and predict, as Keras 3's ``EpochIterator`` and
``train_validation_split``: arrays cut into batches, shuffled each epoch, and the
validation samples split off the end.

The arrays come checked (``Model._check_data``): x, y and sample_weight with one entry
per sample each, x not empty.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from metalearn import _core

__all__ = [
    "EpochIterator",
    "BatchIterator",
    "PyDatasetIterator",
    "is_batch_iterator",
    "is_py_dataset",
    "check_class_weight",
    "class_weight_to_sample_weights",
    "train_validation_split",
]


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


class _IndexedBatches:
    """Batches read by index, one pass over them after another, as Keras 3's
    ``EpochIterator`` over an array or PyDataset adapter.

    Without ``steps_per_epoch`` an epoch is one whole pass. With it, an epoch takes that
    many batches and the next epoch goes on where it stopped; a pass that ends before the
    epoch's steps are done ends the epoch there (``interrupted``: Keras warns that the
    input ran out) and the next epoch starts a new pass. Training goes on either way, as
    in Keras. An infinite source (``size`` None) is read with ``steps_per_epoch`` only,
    its index counting on across epochs.
    """

    def __init__(self, size: Optional[int], steps_per_epoch: Optional[int], shuffle: bool):
        self.size = size
        self.steps_per_epoch = steps_per_epoch
        self.shuffle = bool(shuffle)
        self.num_batches = steps_per_epoch or size
        self._pos = None  # position in the running pass; None: the next epoch starts one
        self._order = None
        self.steps_seen = 0  # in the last epoch
        self.interrupted = False  # the last epoch came short of steps_per_epoch

    def _start_pass(self):
        self._pos = 0
        self._order = (
            np.asarray(_core.permutation(self.size), dtype=np.int64)
            if self.shuffle and self.size
            else None
        )

    def _batch(self, index):
        raise NotImplementedError

    def _begin(self):
        pass

    def _end(self):
        pass

    def enumerate_epoch(self):
        """Yields ``(step, (x_batch, y_batch, sample_weight_batch))`` for one epoch."""
        self.steps_seen, self.interrupted = 0, False
        self._begin()
        try:
            if self.steps_per_epoch is None or self._pos is None:
                self._start_pass()  # (a shuffled order is drawn when the first batch is asked)
            step = 0
            while step < self.num_batches:
                if self.size is not None and self._pos >= self.size:
                    self.interrupted = self.steps_per_epoch is not None
                    break
                index = self._pos if self._order is None else int(self._order[self._pos])
                batch = self._batch(index)
                self._pos += 1
                self.steps_seen = step + 1
                yield step, batch
                step += 1
            if self.size is not None and self._pos >= self.size:
                self._pos = None
        finally:
            self._end()


class EpochIterator(_IndexedBatches):
    """Batches of ``(x, y, sample_weight)`` cut from arrays, one pass over the samples
    per epoch (or ``steps_per_epoch`` batches per epoch, see ``_IndexedBatches``).

    Args:
        x, y, sample_weight: arrays with one entry per sample (y and sample_weight may be
            None; their batches are then None).
        batch_size: samples per batch; the last batch holds the rest.
        shuffle: visit the samples in a new order each pass, drawn from the core
            generator (``metalearn.random.set_seed``) when the pass's first batch is
            asked for.
        steps_per_epoch: batches per epoch, or None (one pass).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: Optional[np.ndarray] = None,
        sample_weight: Optional[np.ndarray] = None,
        batch_size: int = 32,
        shuffle: bool = False,
        steps_per_epoch: Optional[int] = None,
    ) -> None:
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batch_size = int(batch_size)
        self.num_samples = len(x)
        super().__init__(-(-self.num_samples // self.batch_size), steps_per_epoch, False)
        self.shuffle = bool(shuffle)  # over samples, not over batches

    def _start_pass(self):
        self._pos = 0
        self._order = None
        self._samples = (
            np.asarray(_core.permutation(self.num_samples), dtype=np.int64)
            if self.shuffle
            else None
        )

    def _batch(self, index):
        x, y, sw, size = self.x, self.y, self.sample_weight, self.batch_size
        lo, hi = index * size, min(self.num_samples, (index + 1) * size)
        if self._samples is None:
            return x[lo:hi], None if y is None else y[lo:hi], None if sw is None else sw[lo:hi]
        idx = self._samples[lo:hi]
        return x[idx], None if y is None else y[idx], None if sw is None else sw[idx]


class PyDatasetIterator(_IndexedBatches):
    """The batches of a ``PyDataset`` (``metalearn.keras.utils.PyDataset``), as Keras 3's
    ``PyDatasetAdapter``: ``dataset[i]`` is ``(x, y)``, ``(x, y, sample_weight)``,
    ``(x,)`` or ``x``; ``on_epoch_begin``/``on_epoch_end`` around each epoch.

    Args:
        dataset: the PyDataset.
        steps_per_epoch: batches per epoch (required for an infinite dataset).
        shuffle: visit the batches in a new order each pass (a finite dataset).
        check: ``check(x, y, sample_weight) -> (x, y, sample_weight)``, each batch checked
            before its step; an error names the batch index.
        class_weight: checked ``{class: weight}`` (see ``check_class_weight``), turned into
            the batch's sample weights; a batch that has its own is refused, as Keras.
        where: the calling method, for messages.
    """

    def __init__(self, dataset, steps_per_epoch, shuffle, check, class_weight=None, where="fit"):
        try:
            size = dataset.num_batches
        except NotImplementedError as e:
            raise TypeError(f"{where}: {e}") from None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
                raise ValueError(
                    f"{where}: the PyDataset's length (num_batches) must be a non-negative "
                    f"integer or None, got {size!r}"
                )
            size = int(size)
            if size == 0:
                raise ValueError(f"{where}: the PyDataset is empty (its length is 0)")
        elif steps_per_epoch is None:
            raise ValueError(
                f"{where}: the PyDataset is infinite (num_batches is None); pass "
                + ("steps_per_epoch" if where == "fit" else "steps")
            )
        super().__init__(size, steps_per_epoch, shuffle)
        self.dataset, self.check, self.class_weight, self.where = (
            dataset,
            check,
            class_weight,
            where,
        )

    def _begin(self):
        self.dataset.on_epoch_begin()

    def _end(self):
        self.dataset.on_epoch_end()

    def _batch(self, index):
        item = self.dataset[index]
        if isinstance(item, list):
            item = tuple(item)
        if not isinstance(item, tuple):
            item = (item,)
        if len(item) not in (1, 2, 3):
            raise ValueError(
                f"{self.where}: batch {index} of the PyDataset: __getitem__ must return "
                "(inputs,), (inputs, targets) or (inputs, targets, sample_weights), "
                f"got a tuple of length {len(item)}"
            )
        x, y, sw = item + (None,) * (3 - len(item))
        if self.class_weight is not None and y is not None:
            if sw is not None:
                raise ValueError(
                    f"{self.where}: batch {index} of the PyDataset: you cannot specify "
                    "`class_weight` and `sample_weight` at the same time"
                )
            sw = class_weight_to_sample_weights(y, self.class_weight)
        try:
            return self.check(x, y, sw)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{self.where}: batch {index} of the PyDataset: {e}") from e


def check_class_weight(class_weight, where="fit"):
    """``{class index: weight}`` as given to fit or train_on_batch, checked: keys
    non-negative integers, weights finite real numbers. Returns a plain dict."""
    if not isinstance(class_weight, dict):
        raise TypeError(
            f"{where}: class_weight must be a dict {{class index: weight}}, got "
            f"{type(class_weight).__name__}"
        )
    out = {}
    for k, v in class_weight.items():
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(
                f"{where}: class_weight keys must be class indices (non-negative integers), "
                f"got {k!r}"
            )
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise ValueError(
                f"{where}: class_weight[{k!r}] must be a number, got {type(v).__name__}"
            )
        if not np.isfinite(float(v)):
            raise ValueError(f"{where}: class_weight[{k!r}] must be finite, got {v!r}")
        out[int(k)] = float(v)
    return out


def class_weight_to_sample_weights(y, class_weight):
    """Each sample's weight, the weight of its class (1 for a class not in the dict), as
    Keras 3's ``class_weight_to_sample_weights``: the class is the label itself (sparse
    labels, or one column), else the argmax of the last axis (one-hot or probabilities);
    labels are rounded to integers."""
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else np.squeeze(y, axis=-1)
    labels = np.round(y).astype(np.int64).reshape(len(y), -1)[:, 0] if y.ndim else y
    return np.array([class_weight.get(int(c), 1.0) for c in labels], dtype=np.float32)


def is_py_dataset(x) -> bool:
    """Whether `x` is a ``metalearn.keras.utils.PyDataset``."""
    from .utils import PyDataset

    return isinstance(x, PyDataset)


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
