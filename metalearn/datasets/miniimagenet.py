"""mini-ImageNet (Vinyals et al. 2016, "Matching Networks for One Shot Learning"; the class
split of Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning"): 100
ImageNet classes, 600 images each, 84x84 RGB; 64 classes to train on, 16 to validate, 20 to
test. Read from local files only (never downloaded).

Files, in either of two published layouts:

1. The CSV layout of Ravi & Larochelle (github.com/twitter/meta-learning-lstm): ``train.csv``,
   ``val.csv``, ``test.csv`` (header ``filename,label``; one row per image, label the
   wnid) beside ``images/`` holding the JPEGs named in them (decoded through Pillow, the
   ``images`` extra). Images not already 84x84 are resized to 84x84 with Pillow's LANCZOS,
   the recipe of MAML's ``proc_images.py``. Decoded once into the cache folder (``_cache``)
   and opened memory-mapped.
2. The pickled arrays learn2learn distributes, one per split, in one folder:

- ``mini-imagenet-cache-train.pkl`` (64 classes, 38 400 images),
- ``mini-imagenet-cache-validation.pkl`` (16 classes, 9 600 images),
- ``mini-imagenet-cache-test.pkl`` (20 classes, 12 000 images),

each a pickled dict ``{"image_data": uint8 array (N, 84, 84, 3), "class_dict": {wnid:
[row, ...]}}`` (wnid: the ImageNet synset, e.g. ``n01532829``; rows: that class's images
in ``image_data``). They are read with a restricted unpickler (``_pickle``: arrays, dicts,
lists, strings and numbers only). The folder is searched as every reader searches
(``_locate``: ``path``, ``$METALEARN_DATA``, the user data folder, ``../shared/data``; each
also with ``mini-imagenet/`` appended).
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ._cache import cached_arrays
from ._locate import locate
from .image_folder import _pillow
from ._pickle import UnsafePickleError, restricted_load

__all__ = ["mini_imagenet", "SPLITS", "CLASSES", "IMAGES_PER_CLASS"]

SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
#: the published class counts of the Ravi & Larochelle split
CLASSES = {"train": 64, "validation": 16, "test": 20}
IMAGES_PER_CLASS = 600
SHAPE = (84, 84, 3)

_HOW_TO_GET = (
    "mini-ImageNet comes as Ravi & Larochelle's train.csv/val.csv/test.csv with an images/ "
    "folder (github.com/twitter/meta-learning-lstm), or as the pickled arrays distributed "
    "with learn2learn (learn2learn.vision.datasets.MiniImagenet documents where): put the "
    "three CSV files and images/, or the three mini-imagenet-cache-*.pkl files, in one folder."
)
_CSV = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


def _file(split):
    return f"mini-imagenet-cache-{split}.pkl"


def mini_imagenet(
    path: Union[str, os.PathLike, None] = None,
    split: str = "train",
    strict: bool = True,
    return_names: bool = False,
    cache: bool = True,
) -> Tuple[np.ndarray, ...]:
    """Loads one split of mini-ImageNet from its CSV layout or its pickled arrays (the
    pickles are preferred when a folder holds both).

    Args:
        path: the folder holding ``mini-imagenet-cache-{train,validation,test}.pkl``, or
            ``{train,val,test}.csv`` and ``images/`` (searched first).
        split: ``"train"``, ``"validation"`` (or ``"val"``) or ``"test"``.
        strict: refuse a file whose class count or images per class differ from the
            published split (64/16/20 classes, 600 images each); False reads any file of
            the format (small fixtures, subsets).
        return_names: also return the class wnids, one per label.
        cache: for the CSV layout, keep the decoded images in the cache folder,
            memory-mapped (default); False decodes into memory and stores nothing.

    Returns:
        ``(x, y)``: ``x (N, 84, 84, 3)`` uint8 (as stored: convert with
        ``x.astype(np.float32) / 255``), ``y (N,)`` int64 labels ``0..C-1`` in the order of
        the sorted wnids; with `return_names`, ``(x, y, wnids)``.

    Raises:
        DataNotFoundError: no folder holds the split's file.
        ValueError: the file is not what the format says; the message says what it
            found and what it expected.
    """
    if split not in SPLITS:
        raise ValueError(f"mini_imagenet: split must be one of {sorted(SPLITS)}, got {split!r}")
    split = SPLITS[split]
    name = _file(split)
    folder = locate(
        "mini-imagenet",
        path,
        found=lambda d: (
            (d / name).is_file() or ((d / _CSV[split]).is_file() and (d / "images").is_dir())
        ),
        expects=f"{name}, or {_CSV[split]} and images/",
        how_to_get=_HOW_TO_GET,
    )
    if (folder / name).is_file():
        return _read(folder / name, split, strict, return_names)
    return _read_csv(folder, split, strict, return_names, cache)


def _image_84(path: Path) -> np.ndarray:
    Image = _pillow(path, "mini-ImageNet's images are JPEG")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != SHAPE[:2]:
                im = im.resize(SHAPE[:2], resample=Image.LANCZOS)
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise ValueError(f"mini_imagenet: cannot decode {path}: {exc}") from None


def _read_csv(folder: Path, split: str, strict: bool, return_names: bool, cache: bool):
    file = folder / _CSV[split]
    try:
        with open(file, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"mini_imagenet: cannot read {file}: {exc}") from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        head = rows[0] if rows else "nothing"
        raise ValueError(f"mini_imagenet: {file} starts with {head}; expected 'filename,label'")
    items = []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0] or not row[1]:
            raise ValueError(f"mini_imagenet: {file} line {n} is {row}; expected filename,label")
        image = folder / "images" / row[0]
        if not image.is_file():
            raise ValueError(f"mini_imagenet: {file} line {n} names {image}, which does not exist")
        items.append((row[0], row[1]))
    wnids = sorted({w for _, w in items})
    label_of = {w: k for k, w in enumerate(wnids)}
    y = np.array([label_of[w] for _, w in items], np.int64)
    if strict:
        counts = np.bincount(y, minlength=len(wnids)) if len(y) else np.zeros(1, np.int64)
        if len(wnids) != CLASSES[split] or np.any(counts != IMAGES_PER_CLASS):
            raise ValueError(
                f"mini_imagenet: {file} lists {len(wnids)} classes of {counts.min()} to "
                f"{counts.max()} images; the published {split} split has {CLASSES[split]} "
                f"classes of {IMAGES_PER_CLASS} (strict=False reads it anyway)"
            )

    def build():
        x = np.empty((len(items),) + SHAPE, np.uint8)
        for k, (fname, _) in enumerate(items):
            x[k] = _image_84(folder / "images" / fname)
        return (x,)

    sources = [file] + [folder / "images" / f for f, _ in items]
    recipe = {"reader": "mini-imagenet-csv", "split": split, "shape": SHAPE, "version": 1}
    (x,) = cached_arrays(recipe, sources, build, cache=cache)
    if return_names:
        return x, y, np.array(wnids)
    return x, y


def _read(file: Path, split: str, strict: bool, return_names: bool):
    try:
        with open(file, "rb") as f:
            data = restricted_load(f)
    except UnsafePickleError as exc:
        raise ValueError(f"mini_imagenet: {file}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"mini_imagenet: {file} is not a readable pickle (truncated or damaged?): {exc}"
        ) from None
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"mini_imagenet: {file} holds {found}; expected a dict with 'image_data' and "
            "'class_dict'"
        )
    x, classes = data["image_data"], data["class_dict"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[1:] != SHAPE:
        what = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(
            f"mini_imagenet: {file}: image_data is {what}; expected uint8 (N, 84, 84, 3)"
        )
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"mini_imagenet: {file}: class_dict is not a non-empty dict")
    y = np.full(len(x), -1, np.int64)
    wnids = sorted(classes)
    for label, wnid in enumerate(wnids):
        rows = np.asarray(classes[wnid])
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"mini_imagenet: {file}: class {wnid}'s rows are not integers")
        if rows.size and (rows.min() < 0 or rows.max() >= len(x)):
            raise ValueError(
                f"mini_imagenet: {file}: class {wnid} names rows outside image_data "
                f"(0..{len(x) - 1})"
            )
        if np.any(y[rows] >= 0) or len(np.unique(rows)) != len(rows):
            raise ValueError(f"mini_imagenet: {file}: class {wnid} shares images")
        y[rows] = label
    if np.any(y < 0):
        raise ValueError(f"mini_imagenet: {file}: {int(np.sum(y < 0))} images belong to no class")
    if strict:
        counts = np.bincount(y, minlength=len(wnids))
        if len(wnids) != CLASSES[split] or np.any(counts != IMAGES_PER_CLASS):
            raise ValueError(
                f"mini_imagenet: {file} holds {len(wnids)} classes of {counts.min()} to "
                f"{counts.max()} images; the published {split} split has {CLASSES[split]} "
                f"classes of {IMAGES_PER_CLASS} (strict=False reads it anyway)"
            )
    if return_names:
        return x, y, np.array(wnids)
    return x, y
