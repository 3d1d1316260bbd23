"""CIFAR-FS (Bertinetto et al. 2019: 64/16/20 CIFAR-100 classes) and FC100 (Oreshkin et
al. 2018: 60/20/20 classes, split by superclass: 12/4/4 superclasses) from CIFAR-100's
official Python pickles. Read from local files only (never downloaded).

Files: the ``cifar-100-python/`` folder of ``cifar-100-python.tar.gz``
(https://www.cs.toronto.edu/~kriz/cifar.html), extracted:

- ``train`` (50 000 images) and ``test`` (10 000): Python 2 pickles of dicts with
  ``data`` (N, 3072) uint8 (1024 red, 1024 green, 1024 blue values, row by row, of each
  32x32 image), ``fine_labels`` and ``coarse_labels`` (lists of N ints);
- ``meta``: ``fine_label_names`` (100) and ``coarse_label_names`` (20).

Both few-shot datasets pool ``train`` and ``test`` (600 images per class) and split the
classes: the published lists ship with metalearn (``datasets/splits/cifar_fs.json`` and
``fc100.json``, each naming its source). The pickles are read with the restricted unpickler
(``_pickle``). The folder is searched as every reader searches (``_locate``); each root is
also tried with ``cifar100/`` appended, and a folder holding ``cifar-100-python/`` is used.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from ._locate import locate
from ._pickle import UnsafePickleError, restricted_load

__all__ = ["cifar_fs", "fc100", "split_classes"]

SPLITS = ("train", "val", "test")
CLASSES = {
    "cifar_fs": {"train": 64, "val": 16, "test": 20},
    "fc100": {"train": 60, "val": 20, "test": 20},
}
IMAGES_PER_CLASS = 600
_FILES = ("train", "test", "meta")
_HOW_TO_GET = (
    "Download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
    "extract it: the folder cifar-100-python/ holds train, test and meta."
)


def _splits_file(name):
    return Path(__file__).resolve().parent / "splits" / f"{name}.json"


def split_classes(dataset: str, split: str) -> List[str]:
    """The published split: CIFAR-100 fine class names (CIFAR-FS) or superclass names
    (FC100), from the shipped lists."""
    if dataset not in CLASSES:
        raise ValueError(f"split_classes: dataset must be 'cifar_fs' or 'fc100', got {dataset!r}")
    if split not in SPLITS:
        raise ValueError(f"{dataset}: split must be one of {SPLITS}, got {split!r}")
    return list(json.loads(_splits_file(dataset).read_text())[split])


def _holds(d: Path) -> bool:
    return all((d / f).is_file() for f in _FILES) or all(
        (d / "cifar-100-python" / f).is_file() for f in _FILES
    )


def _folder(path):
    d = locate(
        "cifar100",
        path,
        found=_holds,
        expects="cifar-100-python/{train,test,meta}",
        how_to_get=_HOW_TO_GET,
    )
    return d / "cifar-100-python" if (d / "cifar-100-python" / "meta").is_file() else d


def _load(file: Path):
    try:
        with open(file, "rb") as f:
            data = restricted_load(f, encoding="bytes")  # Python 2 pickles: str keys as bytes
    except UnsafePickleError as exc:
        raise ValueError(f"cifar: {file}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"cifar: {file} is not a readable pickle (truncated or damaged?): {exc}")
    if not isinstance(data, dict):
        raise ValueError(f"cifar: {file} holds a {type(data).__name__}; expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _names(values, file, key):
    out = [v.decode() if isinstance(v, bytes) else v for v in values]
    if not all(isinstance(v, str) for v in out):
        raise ValueError(f"cifar: {file}: {key} is not a list of names")
    return out


def _read_all(folder: Path):
    """(images (N, 32, 32, 3) uint8, fine (N,), coarse (N,), fine names, coarse names)."""
    meta = _load(folder / "meta")
    for key in ("fine_label_names", "coarse_label_names"):
        if key not in meta:
            raise ValueError(f"cifar: {folder / 'meta'} lacks {key}; found {sorted(meta)}")
    fine_names = _names(meta["fine_label_names"], folder / "meta", "fine_label_names")
    coarse_names = _names(meta["coarse_label_names"], folder / "meta", "coarse_label_names")
    if len(fine_names) != 100 or len(coarse_names) != 20:
        raise ValueError(
            f"cifar: {folder / 'meta'} names {len(fine_names)} classes and {len(coarse_names)} "
            "superclasses; CIFAR-100 has 100 and 20"
        )
    xs, fs, cs = [], [], []
    for part in ("train", "test"):
        file = folder / part
        d = _load(file)
        missing = {"data", "fine_labels", "coarse_labels"} - set(d)
        if missing:
            raise ValueError(f"cifar: {file} lacks {sorted(missing)}; found {sorted(d)}")
        x = d["data"]
        if (
            not isinstance(x, np.ndarray)
            or x.dtype != np.uint8
            or x.ndim != 2
            or x.shape[1] != 3072
        ):
            what = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"cifar: {file}: data is {what}; expected uint8 (N, 3072)")
        fine = np.asarray(d["fine_labels"], np.int64)
        coarse = np.asarray(d["coarse_labels"], np.int64)
        if fine.shape != (len(x),) or coarse.shape != (len(x),):
            raise ValueError(f"cifar: {file}: {len(x)} images but labels of other lengths")
        if fine.size and (
            fine.min() < 0 or fine.max() >= 100 or coarse.min() < 0 or coarse.max() >= 20
        ):
            raise ValueError(f"cifar: {file}: labels outside 0..99 / 0..19")
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fs.append(fine)
        cs.append(coarse)
    return np.concatenate(xs), np.concatenate(fs), np.concatenate(cs), fine_names, coarse_names


def _select(x, fine, classes: List[int], names, strict, counts_name, split, return_names):
    index = np.full(100, -1, np.int64)
    index[classes] = np.arange(len(classes))
    keep = np.nonzero(index[fine] >= 0)[0]
    y = index[fine[keep]]
    if strict:
        counts = np.bincount(y, minlength=len(classes))
        if np.any(counts != IMAGES_PER_CLASS):
            raise ValueError(
                f"{counts_name}: the {split} classes hold {counts.min()} to {counts.max()} "
                f"images; CIFAR-100 (train + test) has {IMAGES_PER_CLASS} per class "
                "(strict=False reads it anyway)"
            )
    out = (np.ascontiguousarray(x[keep]), y)
    return out + (np.array([names[c] for c in classes]),) if return_names else out


def cifar_fs(
    path: Union[str, os.PathLike, None] = None,
    split: str = "train",
    strict: bool = True,
    return_names: bool = False,
) -> Tuple[np.ndarray, ...]:
    """CIFAR-FS (Bertinetto et al. 2019): one split of CIFAR-100's classes (64 train, 16
    val, 20 test), train and test images pooled.

    Returns:
        ``(x, y)``: ``x (N, 32, 32, 3)`` uint8, ``y`` int64 ``0..C-1`` in the order of the
        split list; with `return_names`, also the class names.

    Raises:
        DataNotFoundError / ValueError: missing or malformed files (``strict``: other than
            600 images per class).
    """
    names = split_classes("cifar_fs", split)
    x, fine, _, fine_names, _ = _read_all(_folder(path))
    lookup = {n: i for i, n in enumerate(fine_names)}
    missing = [n for n in names if n not in lookup]
    if missing:
        raise ValueError(f"cifar_fs: CIFAR-100's meta lacks the classes {missing}")
    classes = [lookup[n] for n in names]
    return _select(x, fine, classes, fine_names, strict, "cifar_fs", split, return_names)


def fc100(
    path: Union[str, os.PathLike, None] = None,
    split: str = "train",
    strict: bool = True,
    return_names: bool = False,
) -> Tuple[np.ndarray, ...]:
    """FC100 (Oreshkin et al. 2018): the classes of 12 / 4 / 4 CIFAR-100 superclasses
    (60 train, 20 val, 20 test), train and test images pooled.

    Returns:
        ``(x, y)``: ``x (N, 32, 32, 3)`` uint8, ``y`` int64 ``0..C-1``: the superclasses in
        the split list's order, each one's classes in CIFAR-100's label order; with
        `return_names`, also the class names.
    """
    supers = split_classes("fc100", split)
    x, fine, coarse, fine_names, coarse_names = _read_all(_folder(path))
    lookup = {n: i for i, n in enumerate(coarse_names)}
    missing = [n for n in supers if n not in lookup]
    if missing:
        raise ValueError(f"fc100: CIFAR-100's meta lacks the superclasses {missing}")
    # each fine class's superclass, as the images say
    parent: Dict[int, int] = {}
    for f, c in zip(fine.tolist(), coarse.tolist()):
        if parent.setdefault(f, c) != c:
            raise ValueError(f"fc100: class {fine_names[f]} is under two superclasses")
    classes = [f for s in supers for f in sorted(k for k, v in parent.items() if v == lookup[s])]
    want = CLASSES["fc100"][split]
    if strict and len(classes) != want:
        raise ValueError(
            f"fc100: the {split} superclasses hold {len(classes)} classes; expected {want}"
        )
    return _select(x, fine, classes, fine_names, strict, "fc100", split, return_names)
