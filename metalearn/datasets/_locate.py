"""Where every dataset reader looks for its files: one search order for all of them.

In order: the folder the caller passes (it must exist: a wrong path is an error, never a
silent fall-back to other data), ``$METALEARN_DATA``, the user data folder
(``$METALEARN_DATA_HOME``, else ``~/.cache/metalearn/data``), then ``../shared/data``
beside a source checkout. Each root is tried as given and with the dataset's name
appended (``$METALEARN_DATA/omniglot``). Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Union

__all__ = ["DataNotFoundError", "user_data_dir", "search_paths", "locate"]

PathLike = Union[str, os.PathLike]


class DataNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists where it looked and what it
    expected, and says how to point metalearn at the files."""


def user_data_dir() -> Path:
    """The user data folder: ``$METALEARN_DATA_HOME`` or ``~/.cache/metalearn/data``."""
    env = os.environ.get("METALEARN_DATA_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metalearn" / "data"


def _checkout_shared() -> Optional[Path]:
    """``<checkout>/../shared/data`` when metalearn runs from a source checkout, else None:
    installed, the folder above would be ``<venv>/lib/python3.X/shared/data``."""
    checkout = Path(__file__).resolve().parents[2]  # <checkout>/metalearn/datasets/_locate.py
    if not (checkout / "pyproject.toml").is_file():
        return None
    return checkout.parent / "shared" / "data"


def search_paths(name: str, path: Optional[PathLike] = None) -> List[Path]:
    """The folders searched for dataset `name`, in order, each once.

    Raises:
        DataNotFoundError: `path` was given and does not exist.
    """
    roots = []
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataNotFoundError(f"{name}: the folder {p} given as path does not exist")
        roots.append(p)
    env = os.environ.get("METALEARN_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(user_data_dir())
    shared = _checkout_shared()
    out: List[Path] = []
    candidates = [c for r in roots for c in (r, r / name)]
    if shared is not None:
        candidates.append(shared / name)
    for c in candidates:
        if c not in out:
            out.append(c)
    return out


def locate(
    name: str,
    path: Optional[PathLike] = None,
    *,
    found: Callable[[Path], bool],
    expects: str,
    how_to_get: str = "",
) -> Path:
    """The first folder of `search_paths(name, path)` for which `found(folder)` is true.

    Args:
        name: the dataset's folder name (``"omniglot"``, ``"mini-imagenet"``, ...).
        path: the caller's folder (``path=`` / ``--data``), searched first.
        found: tells whether a folder holds the files.
        expects: the files it looks for, for the error message.
        how_to_get: where the files come from, for the error message.

    Raises:
        DataNotFoundError: nothing found; the message is self-contained.
    """
    searched = search_paths(name, path)
    for folder in searched:
        if folder.is_dir() and found(folder):
            return folder
    places = "\n".join(f"  - {p}" for p in searched)
    msg = (
        f"{name} not found. Looked for {expects} in:\n{places}\n"
        f"Pass the folder (path=FOLDER, or --data FOLDER on the command line), set "
        f"METALEARN_DATA=FOLDER, or put the files in {user_data_dir() / name}."
    )
    if how_to_get:
        msg += "\n" + how_to_get
    raise DataNotFoundError(msg)
