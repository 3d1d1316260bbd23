"""CUB-200-2011 (Wah et al. 2011, Caltech-UCSD Birds) in the few-shot split of Chen et al.
2019 ("A Closer Look at Few-shot Classification", ICLR): 200 bird species, 11 788 images;
100 classes to train on, 50 to validate, 50 to test. Read from local files only (never
downloaded).

Files: the official ``CUB_200_2011/`` folder as its publishers distribute it
(``CUB_200_2011.tgz``, www.vision.caltech.edu/datasets/cub_200_2011/):

- ``classes.txt``: ``<class id> <folder>`` per line (``1 001.Black_footed_Albatross``);
- ``images.txt``: ``<image id> <folder>/<file>.jpg`` per line;
- ``image_class_labels.txt``: ``<image id> <class id>`` per line;
- ``images/<folder>/<file>.jpg``: the JPEGs (decoded through Pillow, the ``images``
  extra).

The split is the published rule of Chen et al.'s ``write_CUB_filelist.py``: the 200 class
folders in sorted order, numbered i = 0..199; class i trains if i % 2 == 0, validates if
i % 4 == 1 and tests if i % 4 == 3. Images are prepared as their evaluation transform
does: converted to RGB, resized to 96x96 (``int(84 * 1.15)``; bilinear, as torchvision's
``Resize`` on a PIL image) and centre-cropped to 84x84 (offset ``round((96 - 84) / 2)``).
Decoded once into the cache folder (``_cache``) and opened memory-mapped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from ._cache import cached_arrays
from ._locate import locate
from .image_folder import _pillow

__all__ = ["cub", "CLASSES", "IMAGES", "split_of_class"]

SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
CLASSES = {"train": 100, "val": 50, "test": 50}
IMAGES = 11788
SIZE, RESIZE = 84, int(84 * 1.15)
_FILES = ("classes.txt", "images.txt", "image_class_labels.txt")

_HOW_TO_GET = (
    "CUB-200-2011 is distributed by Caltech (www.vision.caltech.edu/datasets/cub_200_2011/, "
    "CUB_200_2011.tgz); unpack it so that the folder CUB_200_2011/ (with classes.txt, "
    "images.txt, image_class_labels.txt and images/) is in the data folder."
)


def split_of_class(i: int) -> str:
    """The split of the i-th class folder in sorted order (Chen et al. 2019)."""
    return "train" if i % 2 == 0 else ("val" if i % 4 == 1 else "test")


def _table(file: Path, what: str) -> List[Tuple[int, str]]:
    rows = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cub: cannot read {file}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"cub: {file} line {n} is {line!r}; expected '<id> {what}'")
        rows.append((int(parts[0]), parts[1].strip()))
    return rows


def _prepare(path: Path) -> np.ndarray:
    Image = _pillow(path, "CUB's images are JPEG")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((RESIZE, RESIZE), Image.BILINEAR)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cub: cannot decode {path}: {exc}") from None
    top = int(round((RESIZE - SIZE) / 2.0))
    return np.asarray(im)[top : top + SIZE, top : top + SIZE]


def _index(root: Path) -> Tuple[List[str], Dict[str, List[Tuple[str, int]]]]:
    """The class folders in sorted order, and each split's (image path, class number)."""
    classes = dict(_table(root / "classes.txt", "<folder>"))
    images = _table(root / "images.txt", "<folder>/<file>")
    labels = dict((i, int(c)) for i, c in _table(root / "image_class_labels.txt", "<class id>"))
    folders = sorted(classes.values())
    number = {f: i for i, f in enumerate(folders)}
    by_split: Dict[str, List[Tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for image_id, rel in images:
        if image_id not in labels:
            raise ValueError(f"cub: image {image_id} ({rel}) has no row in image_class_labels.txt")
        cls = labels[image_id]
        if cls not in classes:
            raise ValueError(f"cub: image {image_id} has class {cls}, not in classes.txt")
        folder = rel.split("/", 1)[0]
        if folder != classes[cls]:
            raise ValueError(
                f"cub: image {image_id} ({rel}) is labelled class {cls} ({classes[cls]}) "
                "but lies in another class's folder"
            )
        i = number[folder]
        by_split[split_of_class(i)].append((rel, i))
    return folders, by_split


def cub(
    path: Union[str, os.PathLike, None] = None,
    split: str = "train",
    strict: bool = True,
    return_names: bool = False,
    cache: bool = True,
) -> Tuple[np.ndarray, ...]:
    """Loads one split of CUB-200-2011 (Chen et al. 2019's few-shot split).

    Args:
        path: the folder holding ``CUB_200_2011/``, or that folder itself (searched first;
            then ``$METALEARN_DATA``, the user data folder, ``../shared/data``, each also
            with ``cub/`` appended).
        split: ``"train"``, ``"val"`` (or ``"validation"``) or ``"test"``.
        strict: refuse a folder whose class or image counts differ from the published
            dataset (200 classes, 11 788 images); False reads any folder of the layout.
        return_names: also return the class folder names, one per label.
        cache: keep the prepared images in the cache folder, memory-mapped (default).

    Returns:
        ``(x, y)``: ``x (N, 84, 84, 3)`` uint8 RGB, ``y (N,)`` int64 labels ``0..C-1`` in
        the order of the split's sorted class folders; with `return_names`, ``(x, y,
        names)``.

    Raises:
        DataNotFoundError: no folder holds ``CUB_200_2011``.
        ValueError: a listing is malformed or inconsistent, an image cannot be decoded, or
            Pillow is missing; the message names the file.
    """
    if split not in SPLITS:
        raise ValueError(f"cub: split must be one of {sorted(SPLITS)}, got {split!r}")
    split = SPLITS[split]

    def holds(d: Path) -> bool:
        return all((d / f).is_file() for f in _FILES) or all(
            (d / "CUB_200_2011" / f).is_file() for f in _FILES
        )

    folder = locate(
        "cub",
        path,
        found=holds,
        expects="CUB_200_2011/" + ", ".join(_FILES),
        how_to_get=_HOW_TO_GET,
    )
    root = folder if all((folder / f).is_file() for f in _FILES) else folder / "CUB_200_2011"
    folders, by_split = _index(root)
    if strict:
        n_images = sum(len(v) for v in by_split.values())
        if len(folders) != 200 or n_images != IMAGES:
            raise ValueError(
                f"cub: {root} lists {len(folders)} classes and {n_images} images; "
                f"CUB-200-2011 has 200 and {IMAGES} (strict=False reads it anyway)"
            )
    items = sorted(by_split[split], key=lambda t: (t[1], t[0]))
    class_numbers = sorted({i for _, i in items})
    label_of = {c: k for k, c in enumerate(class_numbers)}
    y = np.array([label_of[i] for _, i in items], np.int64)

    def build():
        x = np.empty((len(items), SIZE, SIZE, 3), np.uint8)
        for k, (rel, _) in enumerate(items):
            x[k] = _prepare(root / "images" / rel)
        return (x,)

    # every image is a source: a changed file makes a new cache entry
    listing = [root / f for f in _FILES] + [root / "images" / rel for rel, _ in items]
    recipe = {"reader": "cub", "split": split, "size": SIZE, "resize": RESIZE, "version": 1}
    (x,) = cached_arrays(recipe, listing, build, cache=cache)
    if return_names:
        return x, y, np.array([folders[c] for c in class_numbers])
    return x, y
