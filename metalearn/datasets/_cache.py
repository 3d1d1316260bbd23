"""The decoded-image cache: a dataset published as compressed images (tiered-ImageNet's
PNG pickles, mini-ImageNet's and CUB's JPEG folders) is decoded once into uint8 arrays
kept in the user cache folder, then opened memory-mapped, so a split larger than RAM
(tiered-ImageNet's training split is ~9.5 GB as uint8) is never read whole.

Where: ``$METALEARN_CACHE``, else ``~/.cache/metalearn`` (data folders may be read-only).
Key: a SHA-256 of the recipe (reader, split, image size, crop, version of the decoding)
and of each source file's resolved path, size and modification time, so a changed source
or recipe builds a new entry and never reuses a stale one. An entry is written to a
temporary folder and renamed into place, so a killed build leaves nothing half-written
that a later run could read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

__all__ = ["cache_dir", "cached_arrays"]


def cache_dir() -> Path:
    """``$METALEARN_CACHE``, else ``~/.cache/metalearn``."""
    env = os.environ.get("METALEARN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metalearn"


def _key(recipe: Dict[str, object], sources: Sequence[Path]) -> str:
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for s in sources:
        st = os.stat(s)
        h.update(f"\0{Path(s).resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cached_arrays(
    recipe: Dict[str, object],
    sources: Sequence[Path],
    build: Callable[[], Tuple[np.ndarray, ...]],
    cache: bool = True,
) -> Tuple[np.ndarray, ...]:
    """The arrays `build()` makes from `sources`, from the cache when an entry for the
    same recipe and sources exists (memory-mapped read-only), else built now and stored.

    `cache=False` builds in memory and stores nothing. A cache folder that cannot be
    written (read-only, full) is not an error: the arrays are returned unstored."""
    if not cache:
        return build()
    folder = cache_dir() / "decoded" / f"{recipe.get('reader', 'data')}-{_key(recipe, sources)}"
    meta = folder / "arrays.json"
    if meta.is_file():
        try:
            names = json.loads(meta.read_text())["arrays"]
            return tuple(np.load(folder / f"{n}.npy", mmap_mode="r") for n in names)
        except (OSError, ValueError, KeyError):
            pass  # damaged entry: rebuild it below
    arrays = build()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        try:
            names = [f"a{i}" for i in range(len(arrays))]
            for n, a in zip(names, arrays):
                np.save(tmp / f"{n}.npy", np.ascontiguousarray(a))
            (tmp / "arrays.json").write_text(json.dumps({"arrays": names, "recipe": recipe}))
            if folder.exists():  # a damaged entry
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return arrays  # cannot cache here: still a correct result
    return tuple(np.load(folder / f"{n}.npy", mmap_mode="r") for n in names)
