"""tiered-ImageNet (Ren et al. 2018, "Meta-Learning for Semi-Supervised Few-Shot
Classification"): 608 ImageNet classes grouped by 34 high-level categories of the ImageNet
hierarchy, split by category so that no category spans two splits: 351 classes in 20
categories to train on, 97 in 6 to validate, 160 in 8 to test; 84x84 RGB. Read from
local files only (never downloaded).

Files, as the authors distribute them (github.com/renmengye/few-shot-ssl-public), one
pair per split (``train``, ``val``, ``test``) in one folder:

- ``{split}_images_png.pkl``: a pickled list with one entry per image, each a 1-D uint8
  array holding a PNG file (84x84 RGB) — 448 695 / 124 261 / 206 209 images;
- ``{split}_labels.pkl``: a pickled dict with ``label_specific`` (the class of each
  image, ``0..C-1``), ``label_general`` (its category), ``label_specific_str`` (the
  class wnids, indexed by class) and ``label_general_str`` (the category names).

Both are Python 2 pickles, read with the restricted unpickler (``_pickle``: arrays, dicts,
lists, strings and numbers only). The PNGs decode through Pillow when it is installed (the
``images`` extra; fast), else through metalearn's own decoder (NumPy only; slow on the
full dataset). Decoding happens once: the uint8 arrays are kept in the cache folder
(``_cache``: ``$METALEARN_CACHE`` or ``~/.cache/metalearn``) and opened memory-mapped, so
the 9.5 GB training split never has to fit in memory. The images are returned as RGB; the
authors' own loader decodes with OpenCV, which gives BGR, so numbers computed by OpenCV
loaders see the channels reversed.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ._cache import cached_arrays
from ._locate import locate
from ._pickle import UnsafePickleError, restricted_load
from .png import decode_png

__all__ = ["tiered_imagenet", "CLASSES", "CATEGORIES", "IMAGES"]

SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
#: the published split (Ren et al. 2018, Table 5 and the released files)
CLASSES = {"train": 351, "val": 97, "test": 160}
CATEGORIES = {"train": 20, "val": 6, "test": 8}
IMAGES = {"train": 448695, "val": 124261, "test": 206209}
SHAPE = (84, 84, 3)

_HOW_TO_GET = (
    "tiered-ImageNet is distributed by its authors (github.com/renmengye/few-shot-ssl-public, "
    "'tiered-imagenet.tar'); put the six {train,val,test}_{images_png,labels}.pkl files in "
    "one folder."
)


def _decoder():
    try:
        from PIL import Image
    except ImportError:
        return lambda data: decode_png(data, channels=3)

    def pillow(data):
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    return pillow


def _load(file: Path):
    try:
        with open(file, "rb") as f:
            return restricted_load(f, encoding="latin1")
    except UnsafePickleError as exc:
        raise ValueError(f"tiered_imagenet: {file}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"tiered_imagenet: {file} is not a readable pickle (truncated or damaged?): {exc}"
        ) from None


def _labels(file: Path):
    data = _load(file)
    keys = ("label_specific", "label_general", "label_specific_str", "label_general_str")
    if not isinstance(data, dict) or not set(keys) <= set(data):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"tiered_imagenet: {file} holds {found}; expected a dict with {keys}")
    try:
        specific = np.asarray(data["label_specific"])
        general = np.asarray(data["label_general"])
    except ValueError:
        raise ValueError(f"tiered_imagenet: {file}: labels are not arrays") from None
    for name, a in (("label_specific", specific), ("label_general", general)):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"tiered_imagenet: {file}: {name} is {a.dtype} {a.shape}; expected 1-D integers"
            )
    if len(specific) != len(general):
        raise ValueError(
            f"tiered_imagenet: {file}: {len(specific)} class labels but {len(general)} "
            "category labels"
        )
    names = [str(s) for s in data["label_specific_str"]]
    if len(specific) and (specific.min() < 0 or specific.max() >= len(names)):
        raise ValueError(
            f"tiered_imagenet: {file}: class labels outside 0..{len(names) - 1} "
            "(label_specific_str names fewer classes)"
        )
    # a class belongs to one category: the category of each class, checked
    cat_of = np.full(len(names), -1, np.int64)
    for c in np.unique(specific):
        cats = np.unique(general[specific == c])
        if len(cats) != 1:
            raise ValueError(f"tiered_imagenet: {file}: class {names[c]} spans categories {cats}")
        cat_of[c] = cats[0]
    return specific.astype(np.int64), general.astype(np.int64), names, cat_of


def _decode_all(file: Path, n_expected: int):
    images = _load(file)
    if not isinstance(images, (list, tuple)):
        raise ValueError(
            f"tiered_imagenet: {file} holds a {type(images).__name__}; expected a list of "
            "PNG-encoded uint8 arrays"
        )
    if len(images) != n_expected:
        raise ValueError(
            f"tiered_imagenet: {file} holds {len(images)} images but the labels file "
            f"labels {n_expected}"
        )
    decode = _decoder()
    x = np.empty((len(images),) + SHAPE, np.uint8)
    for i, item in enumerate(images):
        data = item.tobytes() if isinstance(item, np.ndarray) else item
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"tiered_imagenet: {file}: image {i} is a {type(item).__name__}")
        try:
            img = decode(bytes(data))
        except Exception as exc:  # any decoder failure is a bad image: name it
            raise ValueError(f"tiered_imagenet: {file}: image {i} is not a PNG: {exc}") from None
        if img.shape != SHAPE:
            raise ValueError(f"tiered_imagenet: {file}: image {i} is {img.shape}; expected {SHAPE}")
        x[i] = img
    return x


def tiered_imagenet(
    path: Union[str, os.PathLike, None] = None,
    split: str = "train",
    strict: bool = True,
    return_names: bool = False,
    cache: bool = True,
) -> Tuple[np.ndarray, ...]:
    """Loads one split of tiered-ImageNet from the authors' pickles.

    Args:
        path: the folder holding ``{split}_images_png.pkl`` and ``{split}_labels.pkl``
            (searched first; then ``$METALEARN_DATA``, the user data folder,
            ``../shared/data``, each also with ``tiered-imagenet/``).
        split: ``"train"``, ``"val"`` (or ``"validation"``) or ``"test"``.
        strict: refuse files whose class, category or image counts differ from the
            published split (351/97/160 classes in 20/6/8 categories); False reads any
            file of the format (fixtures, subsets).
        return_names: also return the class wnids (one per label) and the category of each
            class.
        cache: keep the decoded images in the cache folder and open them memory-mapped
            (the default); False decodes into memory and stores nothing.

    Returns:
        ``(x, y, category)``: ``x (N, 84, 84, 3)`` uint8 RGB (memory-mapped, read-only,
        when cached), ``y (N,)`` int64 class labels ``0..C-1`` as the files number them,
        ``category (N,)`` int64 the high-level category of each image; with
        `return_names`, ``(x, y, category, wnids, class_category)``.

    Raises:
        DataNotFoundError: no folder holds the split's files.
        ValueError: a file is not what the format says; the message names it, and says
            what it found and what it expected.
    """
    if split not in SPLITS:
        raise ValueError(f"tiered_imagenet: split must be one of {sorted(SPLITS)}, got {split!r}")
    split = SPLITS[split]
    names = (f"{split}_images_png.pkl", f"{split}_labels.pkl")
    folder = locate(
        "tiered-imagenet",
        path,
        found=lambda d: all((d / n).is_file() for n in names),
        expects=" and ".join(names),
        how_to_get=_HOW_TO_GET,
    )
    images_file, labels_file = folder / names[0], folder / names[1]
    y, category, wnids, class_category = _labels(labels_file)
    if strict:
        n_classes, n_cats = len(np.unique(y)), len(np.unique(category))
        if (n_classes, n_cats, len(y)) != (CLASSES[split], CATEGORIES[split], IMAGES[split]):
            raise ValueError(
                f"tiered_imagenet: {labels_file} labels {len(y)} images of {n_classes} "
                f"classes in {n_cats} categories; the published {split} split has "
                f"{IMAGES[split]} images of {CLASSES[split]} classes in {CATEGORIES[split]} "
                "categories (strict=False reads it anyway)"
            )
    recipe = {"reader": "tiered-imagenet", "split": split, "shape": SHAPE, "version": 1}
    (x,) = cached_arrays(
        recipe, [images_file], lambda: (_decode_all(images_file, len(y)),), cache=cache
    )
    if len(x) != len(y):  # only a labels file replaced after the images were cached
        raise ValueError(
            f"tiered_imagenet: {labels_file} labels {len(y)} images but {images_file} "
            f"holds {len(x)}"
        )
    if return_names:
        return x, y, category, np.array(wnids), class_category
    return x, y, category
