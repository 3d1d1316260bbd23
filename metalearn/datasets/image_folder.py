"""A folder of class folders of images as a labelled dataset.

PNG is read by metalearn's own decoder (``datasets.png``), so PNG folders need NumPy
only; JPEG, BMP, GIF, TIFF and WebP need Pillow (``pip install metalearn[images]``),
imported only when such a file is met.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from .arrays import LabeledData
from .png import decode_png
from .preprocess import Preprocess

__all__ = ["image_folder", "read_image", "IMAGE_SUFFIXES"]

PNG_SUFFIXES = (".png",)
PILLOW_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_SUFFIXES = PNG_SUFFIXES + PILLOW_SUFFIXES


def _pillow(path: Any, why: str) -> Any:
    """Pillow's ``Image`` module, imported only when a file needs it; ValueError naming the
    file and `why` it needs Pillow when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(
            f"reading {path} needs Pillow ({why}): "
            "pip install 'metalearn[images]' (or pip install Pillow)"
        ) from None
    return Image


def read_image(path: Union[str, os.PathLike], channels: int = 1) -> np.ndarray:
    """One image file as uint8: ``(H, W)`` gray for ``channels=1`` (or None), ``(H, W, 3)``
    for 3. ValueError naming the file when it cannot be decoded (corrupt, truncated, not
    an image) or when Pillow, needed for its format, is not installed."""
    p = Path(path)
    want = 3 if channels == 3 else 1
    suffix = p.suffix.lower()
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read image {p}: {e.strerror or e}") from None
    if suffix in PNG_SUFFIXES:
        try:
            return decode_png(data, channels=want)
        except Exception as e:  # any decoder failure is a bad file: name it
            raise ValueError(f"corrupt or unsupported PNG {p}: {e}") from None
    if suffix not in PILLOW_SUFFIXES:
        raise ValueError(f"not an image file (suffix {p.suffix!r}): {p}")
    Image = _pillow(p, f"{suffix[1:].upper()} images; PNG needs nothing")
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # composite over white paper, as the PNG decoder does
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im2 = Image.alpha_composite(white, rgba)
            else:
                im2 = im
            arr = np.asarray(im2.convert("RGB" if want == 3 else "L"))
    except Exception as e:  # Pillow's errors for bad files are of several types
        raise ValueError(f"corrupt or unsupported image {p}: {e}") from None
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _class_folders(root: Path) -> List[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path) -> List[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
    )


def image_folder(
    path: Union[str, os.PathLike],
    size: Union[int, Sequence[int], None] = None,
    channels: Optional[int] = 1,
    preprocess: Optional[Preprocess] = None,
    min_per_class: int = 1,
    verbose: int = 0,
) -> LabeledData:
    """Loads ``path/<class>/<image>`` (one sub-folder per class, images of any sizes) as a
    ``LabeledData``: ``x (N, h, w, channels)`` float32 in [0, 1], ``y`` 0..C-1 in the
    sorted order of the class folders, ``class_names`` the folder names, ``files``.

    Args:
        path: the folder of class folders.
        size: ``(height, width)`` or an int: every image is resized to it (Lanczos);
            None keeps the sizes, which must then all be equal.
        channels: 1 (gray) or 3 (RGB).
        preprocess: a ``Preprocess`` used instead of ``Preprocess(size, channels)`` (for
            polarity, another filter, normalisation); it is kept as ``data.preprocess`` so
            that the same one can be applied to new images at recognition time.
        min_per_class: classes with fewer images are refused (few-shot episodes need
            ``k_shot + q_queries`` per class).
        verbose: 1 prints a line per 10 % of the classes read.

    Files other than images (by suffix) and hidden files are ignored. Raises ValueError
    naming the file for a corrupt image or one whose format needs Pillow when it is not
    installed; FileNotFoundError when `path` is missing; ValueError when there are no
    class folders, a class has too few images, or sizes differ without `size`.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder: {root} is not a folder")
    if preprocess is None:
        preprocess = Preprocess(size=size, channels=channels)
    elif not isinstance(preprocess, Preprocess):
        raise TypeError(
            f"image_folder: preprocess must be a datasets.Preprocess, got {type(preprocess).__name__}"
        )
    classes = _class_folders(root)
    if not classes:
        raise ValueError(
            f"image_folder: {root} has no class folders (expected {root}/<class>/<image>.png)"
        )
    read_as = 3 if preprocess.channels == 3 else 1
    xs: List[np.ndarray] = []
    ys: List[int] = []
    files: List[str] = []
    shapes: dict = {}
    for c, folder in enumerate(classes):
        images = _images_in(folder)
        if len(images) < min_per_class:
            raise ValueError(
                f"image_folder: class {folder.name!r} has {len(images)} images, fewer than "
                f"min_per_class={min_per_class}"
            )
        for f in images:
            out = preprocess.one(read_image(f, read_as))
            shapes.setdefault(out.shape, f)
            if len(shapes) > 1:
                (s0, f0), (s1, f1) = list(shapes.items())[:2]
                raise ValueError(
                    f"image_folder: images of different sizes ({f0}: {s0}, {f1}: {s1}); "
                    "pass size=(height, width) to resize them"
                )
            xs.append(out)
            ys.append(c)
            files.append(str(f))
        if verbose and (c + 1) % max(1, len(classes) // 10) == 0:
            print(f"image_folder: {c + 1}/{len(classes)} classes, {len(xs)} images", flush=True)
    if not xs:
        raise ValueError(f"image_folder: no images under {root}")
    return LabeledData(
        np.stack(xs), np.asarray(ys, np.int64), [d.name for d in classes], files, preprocess
    )


def image_files(path: Union[str, os.PathLike]) -> List[Tuple[str, Optional[str]]]:
    """The images of a recognition folder: ``(file, class)`` for ``path/<class>/<img>``
    and ``(file, None)`` for images directly in `path` (sorted)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    out: List[Tuple[str, Optional[str]]] = [(str(f), None) for f in _images_in(root)]
    for d in _class_folders(root):
        out.extend((str(f), d.name) for f in _images_in(d))
    return out
