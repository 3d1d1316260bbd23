"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1623 handwritten characters from 50
alphabets, 20 drawings each, read from local files.

Where the data is looked for (``metalearn.datasets._locate``, the order every reader uses):

1. the ``path`` argument (``--data`` on the command line); a path that does not exist is
   an error, never a fall-back to other data,
2. the ``METALEARN_DATA`` environment variable,
3. the user data folder: ``$METALEARN_DATA_HOME``, else ``~/.cache/metalearn/data``,
4. ``<checkout>/../shared/data`` beside a source checkout of metalearn.

Each place may be the Omniglot folder itself or a folder holding ``omniglot/``. A folder
is used when it holds either metalearn's packaged arrays
(``omniglot_background.npz``/``omniglot_evaluation.npz``, 28x28 uint8 ink-positive, and
``*_nearest.npz``) or the official layout a user downloads from
https://github.com/brendenlake/omniglot (``python/images_background.zip`` and
``python/images_evaluation.zip``, or those zips extracted: PNG folders
``Alphabet/characterNN/XXXX_YY.png``, 105x105, black ink on white paper), which are
decoded without Pillow and shrunk to 28x28 by ``omniglot.preprocess``'s Lanczos filter
(the packaged arrays' recipe: the same bits as Pillow's LANCZOS).

Splits:

- ``"background"`` (30 alphabets, 964 characters) and ``"evaluation"`` (20 alphabets,
  659 characters): Lake et al.'s sets.
- ``"vinyals_train"`` (1028), ``"vinyals_val"`` (172), ``"vinyals_trainval"`` (1200),
  ``"vinyals_test"`` (423): the character split of Vinyals et al. 2016 used by MAML and
  ProtoNets (1200 characters to train on, the rest to test); it spans both sets, so
  they are concatenated and the characters looked up by name in the lists shipped with
  metalearn, ``metalearn/datasets/splits/vinyals_*.txt`` (their source: the README there).
"""

import os
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from ._locate import locate, search_paths
from .png import decode_png

__all__ = [
    "omniglot",
    "load_omniglot_arrays",
    "omniglot_search_paths",
    "vinyals_split",
    "resize_area",
]

SETS = ("background", "evaluation")
SPLITS = SETS + ("vinyals_train", "vinyals_val", "vinyals_trainval", "vinyals_test")
RESAMPLE = ("lanczos", "nearest")
_NEAREST_IDX = np.floor((np.arange(28) + 0.5) * 105 / 28).astype(np.int64)
_PNG_NAME = re.compile(r"(?:^|/)([^/]+)/(character(\d+))/(\d+)_(\d+)\.png$")
_CACHE = {}

_HOW_TO_GET = (
    "The files come from Omniglot's official repository, "
    "https://github.com/brendenlake/omniglot (its python/ folder): download "
    "images_background.zip and images_evaluation.zip into one folder (unzipping them is "
    "optional)."
)


def omniglot_search_paths(path: Union[str, os.PathLike, None] = None) -> List[Path]:
    """The folders searched for Omniglot, in order (see the module docstring), each once.

    Raises:
        DataNotFoundError: `path` was given and does not exist.
    """
    return search_paths("omniglot", path)


def _source_in(folder, which, resample):
    """How `which` set can be read from `folder`: ("npz"|"zip"|"dir", path) or None."""
    suffix = "_nearest" if resample == "nearest" else ""
    candidates = [
        ("npz", folder / f"omniglot_{which}{suffix}.npz"),
        ("zip", folder / f"images_{which}.zip"),
        ("dir", folder / f"images_{which}"),
    ]
    if resample == "nearest":  # the antialiased arrays cannot give nearest; PNGs can
        pass
    for kind, p in candidates:
        if (kind == "dir" and p.is_dir()) or (kind != "dir" and p.is_file()):
            return kind, p
    return None


def _find(which, resample, path):
    suffix = "_nearest" if resample == "nearest" else ""
    folder = locate(
        "omniglot",
        path,
        found=lambda f: _source_in(f, which, resample) is not None,
        expects=(
            f"the {which} set (omniglot_{which}{suffix}.npz, images_{which}.zip or the "
            f"extracted images_{which}/ folder)"
        ),
        how_to_get=_HOW_TO_GET,
    )
    return folder, _source_in(folder, which, resample)


def resize_area(images: np.ndarray, size: int = 28) -> np.ndarray:
    """Shrinks square images ``(N, S, S)`` to ``(N, size, size)`` with an area (box) filter:
    each output pixel is the mean of the input area it covers (fractional overlaps
    weighted). Returns float64."""
    images = np.asarray(images, dtype=np.float64)
    s = images.shape[-1]
    edges = np.arange(size + 1) * s / size
    w = np.zeros((size, s))
    for i in range(size):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), int(np.ceil(hi))):
            w[i, j] = min(hi, j + 1) - max(lo, j)
    w /= w.sum(1, keepdims=True)
    return np.einsum("ij,njk,lk->nil", w, images, w)


def _read_pngs(entries, read):
    """entries: list of names; read(name) -> bytes. Returns the arrays of one set."""
    chars = {}
    for name in entries:
        m = _PNG_NAME.search(name.replace("\\", "/"))
        if m is None:
            continue
        alphabet, char, nn, char_id, sample = (
            m.group(1),
            m.group(2),
            int(m.group(3)),
            int(m.group(4)),
            int(m.group(5)),
        )
        chars.setdefault((alphabet, nn, char), []).append((sample, char_id, name))
    if not chars:
        raise FileNotFoundError("Omniglot: no Alphabet/characterNN/XXXX_YY.png images found")
    keys = sorted(chars)
    images, labels, samples, ids = [], [], [], []
    for c, key in enumerate(keys):
        for sample, char_id, name in sorted(chars[key]):
            img = decode_png(read(name))
            images.append(255 - img)  # ink-positive
            labels.append(c)
            samples.append(sample - 1)
        ids.append(chars[key][0][1])
    alphabets = sorted({k[0] for k in keys})
    return {
        "images105": np.stack(images),
        "labels": np.asarray(labels, np.int32),
        "samples": np.asarray(samples, np.uint8),
        "char_names": np.array([f"{a}/{ch}" for a, _, ch in keys]),
        "alphabets": np.array(alphabets),
        "char_alphabet": np.array([alphabets.index(a) for a, _, _ in keys], np.int32),
        "char_ids": np.asarray(ids, np.int32),
    }


def _from_png_tree(kind, p, resample):
    if kind == "zip":
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.lower().endswith(".png")]
            arr = _read_pngs(names, z.read)
    else:
        names = [str(f.relative_to(p)) for f in sorted(p.rglob("*.png"))]
        arr = _read_pngs(names, lambda n: (p / n).read_bytes())
    big = arr.pop("images105")
    if big.shape[1:] == (105, 105) and resample == "nearest":
        small = big[:, _NEAREST_IDX][:, :, _NEAREST_IDX]
    elif resample == "nearest":
        idx = np.floor((np.arange(28) + 0.5) * big.shape[1] / 28).astype(np.int64)
        small = big[:, idx][:, :, idx]
    else:  # the packaged arrays' recipe (big is ink-positive already)
        from .preprocess import resize

        small = resize(big, (28, 28), "lanczos")
    arr["images"] = small
    return arr


def load_omniglot_arrays(
    which: str = "background", path: Union[str, os.PathLike, None] = None, resample: str = "lanczos"
) -> Dict[str, Any]:
    """The raw arrays of one Omniglot set, as in the packaged ``.npz`` files.

    Args:
        which: ``"background"`` or ``"evaluation"``.
        path: a folder to look in first, which must exist (see the module docstring for
            the search order).
        resample: ``"lanczos"`` (antialiased, the default) or ``"nearest"`` (binary, what
            MAML's and ProtoNets' preprocessing produces). From PNGs, ``"lanczos"`` is
            Pillow's LANCZOS, computed in NumPy (``datasets.preprocess.resize``).

    Returns:
        dict with ``images (N, 28, 28) uint8`` (ink = 255), ``labels (N,) int32``
        (0..C-1), ``char_names (C,)`` (``"Alphabet/characterNN"``), ``alphabets``,
        ``char_alphabet``, ``char_ids``, and ``source`` (the file or folder read).

    Raises:
        DataNotFoundError: (a FileNotFoundError) nowhere to be found, or `path` does not
            exist; the message lists every place searched.
        ValueError: bad `which` or `resample`.
    """
    if which not in SETS:
        raise ValueError(f"load_omniglot_arrays: which must be one of {SETS}, got {which!r}")
    if resample not in RESAMPLE:
        raise ValueError(f"omniglot: resample must be one of {RESAMPLE}, got {resample!r}")
    folder, (kind, p) = _find(which, resample, path)
    key = (str(p), resample)
    try:
        stamp = p.stat().st_mtime
    except OSError:
        stamp = None
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return dict(hit[1])
    if kind == "npz":
        with np.load(p) as d:
            arr = {
                k: d[k]
                for k in (
                    "images",
                    "labels",
                    "char_names",
                    "alphabets",
                    "char_alphabet",
                    "char_ids",
                )
                if k in d.files
            }
    else:
        arr = _from_png_tree(kind, p, resample)
    arr["source"] = str(p)
    arr["folder"] = str(folder)
    _CACHE[key] = (stamp, arr)
    return dict(arr)


def vinyals_split(which: str) -> List[str]:
    """The character names (``Alphabet/characterNN``) of one part of the Vinyals et al.
    split: ``"train"`` (1028), ``"val"`` (172), ``"trainval"`` (1200) or ``"test"`` (423),
    read from the lists shipped in the package (``metalearn/datasets/splits/``)."""
    parts = ("train", "val", "trainval", "test")
    if which not in parts:
        raise ValueError(f"vinyals_split: which must be one of {parts}, got {which!r}")
    text = (resources.files(__package__) / "splits" / f"vinyals_{which}.txt").read_text("utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def omniglot(
    path: Union[str, os.PathLike, None] = None,
    split: str = "background",
    resample: str = "lanczos",
    return_names: bool = False,
) -> Tuple[np.ndarray, ...]:
    """Loads Omniglot as float32 images in [0, 1] (ink = 1) and integer labels.

    Args:
        path: a folder holding the data, which must exist (searched first; then
            ``$METALEARN_DATA``, the user data folder ``~/.cache/metalearn/data``, and
            ``../shared/data`` beside a checkout).
        split: ``"background"``, ``"evaluation"``, ``"vinyals_train"``, ``"vinyals_val"``,
            ``"vinyals_trainval"`` (the 1200 training characters of MAML/ProtoNets) or
            ``"vinyals_test"`` (the other 423).
        resample: ``"lanczos"`` (antialiased grayscale) or ``"nearest"`` (binary).
        return_names: also return the character names, one per label.

    Returns:
        ``(x, y)``: ``x (N, 28, 28, 1)`` float32, ``y (N,)`` int64 labels 0..C-1 (for a
        Vinyals split, in the order of its split file); with `return_names`,
        ``(x, y, char_names)``.

    Raises:
        DataNotFoundError: (a FileNotFoundError) `path` does not exist, or the data is
            nowhere; the message says where it was looked for and how to get it.

    Example::

        x, y = metalearn.datasets.omniglot(split="vinyals_trainval")
        tasks = metalearn.tasks.NWayKShot((x, y), n_way=5, k_shot=1, q_queries=15)
    """
    if split not in SPLITS:
        raise ValueError(f"omniglot: split must be one of {SPLITS}, got {split!r}")
    if split in SETS:
        a = load_omniglot_arrays(split, path, resample)
        images, labels, names = a["images"], a["labels"].astype(np.int64), a["char_names"]
    else:
        bg = load_omniglot_arrays("background", path, resample)
        ev = load_omniglot_arrays("evaluation", path, resample)
        all_names = np.concatenate([bg["char_names"], ev["char_names"]])
        all_images = np.concatenate([bg["images"], ev["images"]])
        all_labels = np.concatenate(
            [bg["labels"].astype(np.int64), ev["labels"].astype(np.int64) + len(bg["char_names"])]
        )
        wanted = vinyals_split(split[len("vinyals_") :])
        index = {n: i for i, n in enumerate(all_names.tolist())}
        missing = [n for n in wanted if n not in index]
        if missing:
            raise ValueError(
                f"omniglot: {len(missing)} characters of {split} are not in the data, "
                f"e.g. {missing[:3]}"
            )
        new_label = np.full(len(all_names), -1, np.int64)
        new_label[[index[n] for n in wanted]] = np.arange(len(wanted))
        mapped = new_label[all_labels]
        keep = np.nonzero(mapped >= 0)[0]
        keep = keep[np.argsort(mapped[keep], kind="stable")]
        images, labels, names = all_images[keep], mapped[keep], np.array(wanted)
    x = (images.astype(np.float32) / np.float32(255.0))[..., None]
    if return_names:
        return x, labels, names
    return x, labels
