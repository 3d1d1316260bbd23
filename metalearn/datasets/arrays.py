"""A labelled dataset from arrays a user has (images, tabular rows, time-series windows),
with class-level train/validation/test splits, ready for ``tasks.NWayKShot``."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["LabeledData", "from_arrays"]


class LabeledData:
    """Examples ``x (N, ...)`` with integer labels ``y (N,)`` in 0..C-1 and the name of
    each class (``class_names[c]``). ``x, y = data`` unpacks it; ``NWayKShot(data, ...)``
    samples episodes from it.

    Attributes:
        x, y, class_names: as above.
        files: for ``image_folder``, the file each example was read from (else None).
        preprocess: for ``image_folder``, the ``Preprocess`` that made ``x`` (else None).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        class_names: Sequence[str],
        files: Optional[List[str]] = None,
        preprocess: Any = None,
    ) -> None:
        self.x, self.y = x, y
        self.class_names = list(class_names)
        self.files = files
        self.preprocess = preprocess

    def __iter__(self):
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"LabeledData({len(self.y)} examples of shape {tuple(self.x.shape[1:])}, "
            f"{self.num_classes} classes)"
        )

    def subset(self, classes: Sequence[int]) -> "LabeledData":
        """The examples of `classes` (indices), relabelled 0..len(classes)-1 in the order
        given; examples keep their order."""
        classes = [int(c) for c in classes]
        new = np.full(self.num_classes, -1, np.int64)
        new[classes] = np.arange(len(classes))
        keep = np.flatnonzero(new[self.y] >= 0)
        return LabeledData(
            self.x[keep],
            new[self.y[keep]],
            [self.class_names[c] for c in classes],
            None if self.files is None else [self.files[i] for i in keep],
            self.preprocess,
        )

    def split(
        self, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
    ) -> Tuple["LabeledData", ...]:
        """Class-level splits: the classes are shuffled with `seed` and cut by
        `fractions` (they are normalised to sum to 1), so no class is in two splits, as
        few-shot learning needs. Each split gets at least one class. Returns one
        ``LabeledData`` per fraction (train, validation, test by default)."""
        f = np.asarray(fractions, np.float64)
        if f.ndim != 1 or len(f) < 1 or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
            raise ValueError(f"split: fractions must be non-negative numbers, got {fractions!r}")
        if len(f) > self.num_classes:
            raise ValueError(
                f"split: {len(f)} splits need at least {len(f)} classes, the data has "
                f"{self.num_classes}"
            )
        order = np.random.default_rng(seed).permutation(self.num_classes)
        counts = np.maximum(np.floor(f / f.sum() * self.num_classes + 1e-9).astype(int), 1)
        counts[np.argmax(f)] += self.num_classes - counts.sum()  # remainder to the largest
        if np.any(counts < 1):
            raise ValueError(
                f"split: {self.num_classes} classes cannot be cut into {len(f)} non-empty "
                f"splits by fractions {list(fractions)}"
            )
        cuts = np.cumsum(counts)[:-1]
        return tuple(self.subset(sorted(part.tolist())) for part in np.split(order, cuts))


def from_arrays(x: Any, y: Any, class_names: Optional[Sequence[str]] = None) -> LabeledData:
    """A ``LabeledData`` from arrays: `x` ``(N, ...)`` numbers (images, rows of features,
    windows of a series), `y` ``(N,)`` labels of any kind (ints, strings); the labels are
    numbered 0..C-1 in sorted order and their values become ``class_names`` (unless
    given). Refused with a ValueError naming the problem: lengths that differ, non-numeric
    or non-finite `x`, 2-D `y`, fewer than two classes."""
    xa = np.asarray(x)
    ya = np.asarray(y)
    if ya.ndim != 1:
        raise ValueError(
            f"from_arrays: y must be 1-D (one label per example), got shape {ya.shape}"
        )
    if xa.ndim < 1 or len(xa) != len(ya):
        raise ValueError(
            f"from_arrays: x and y must have the same length, got {xa.shape[:1]} and {len(ya)}"
        )
    if xa.dtype == bool:
        xa = xa.astype(np.float32)
    if not np.issubdtype(xa.dtype, np.number):
        raise ValueError(f"from_arrays: x must hold numbers, got dtype {xa.dtype}")
    if np.issubdtype(xa.dtype, np.inexact) and not np.all(np.isfinite(xa)):
        bad = int(xa.size - np.count_nonzero(np.isfinite(xa)))
        raise ValueError(f"from_arrays: x holds {bad} NaN or inf values")
    values, labels = np.unique(ya, return_inverse=True)
    if len(values) < 2:
        raise ValueError(f"from_arrays: need at least 2 classes, got {len(values)}")
    if class_names is None:
        names = [str(v) for v in values.tolist()]
    else:
        names = [str(n) for n in class_names]
        if len(names) != len(values):
            raise ValueError(
                f"from_arrays: {len(names)} class_names for {len(values)} classes in y"
            )
    if np.issubdtype(xa.dtype, np.floating) and xa.dtype != np.float32:
        xa = xa.astype(np.float32)
    return LabeledData(xa, labels.astype(np.int64).reshape(-1), names)
