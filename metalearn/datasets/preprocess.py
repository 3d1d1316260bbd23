"""One image preprocessing, the same at training and at recognition time.

``Preprocess`` turns images of any size (2-D gray, or ``(H, W, C)`` with 1, 3 or 4
channels; uint8 in 0..255, bool, or float in 0..1) into the model's input: channels,
ink polarity, resize, normalisation, in that order. Its ``get_config()`` is saved with a
model (``python -m metalearn train --output``) and ``from_config`` rebuilds it.

The resize filters, in NumPy:

* ``"lanczos"``: the windowed sinc ``sinc(x) sinc(x / 3)`` on ``|x| < 3`` (Lanczos, a = 3),
  stretched by the scale when shrinking (antialiasing), as Pillow's ``Image.LANCZOS``.
  On uint8 images it is Pillow's arithmetic: coefficients rounded to 22-bit fixed point,
  a horizontal then a vertical pass, each rounded to uint8, so the result has Pillow's
  bits; on float images the same two passes in floating point.
* ``"area"``: each output pixel is the mean of the input area it covers, fractional
  overlaps weighted by their size (OpenCV's ``INTER_AREA`` when shrinking).
* ``"nearest"``: the input pixel under each output pixel's centre (Pillow's NEAREST).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Preprocess", "resize"]

FILTERS = ("lanczos", "area", "nearest")
POLARITIES = ("keep", "invert", "auto")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as the PNG decoder and Pillow's "L"
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit resampling


def _lanczos(x: np.ndarray) -> np.ndarray:
    """sinc(x) sinc(x/3) on [-3, 3), 0 outside (Pillow's lanczos_filter)."""

    def sinc(t):
        t = np.asarray(t, np.float64)
        out = np.ones_like(t)
        nz = t != 0.0
        pt = t[nz] * math.pi
        out[nz] = np.sin(pt) / pt
        return out

    return np.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3.0), 0.0)


def _lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_in, n_out) matrix of Pillow's normalised Lanczos coefficients
    (precompute_coeffs: same centres, bounds and order of operations)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    m = np.zeros((n_in, n_out), np.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        x = np.arange(xmin, xmax, dtype=np.float64)
        w = _lanczos((x - center + 0.5) * (1.0 / filterscale))
        total = w.sum()
        if total != 0.0:
            w = w / total
        m[xmin:xmax, o] = w
    return m


def _fixed_point(m: np.ndarray) -> np.ndarray:
    """Coefficients as Pillow's 8-bit path rounds them (half away from zero)."""
    scaled = m * (1 << _PRECISION_BITS)
    return np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out): the share of output pixel o's span [o s, (o+1) s) that input pixel i
    covers, s = n_in / n_out (each column sums to 1)."""
    s = n_in / n_out
    lo = np.arange(n_out) * s
    hi = lo + s
    i = np.arange(n_in)[:, None]
    overlap = np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0.0, None)
    return overlap / s


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """The source pixel of each output pixel: Pillow's scaling transform, which steps a
    double from the first centre by n_in / n_out (the accumulated rounding is part of
    which pixel is picked, so it is kept)."""
    step = n_in / n_out
    pos = step * 0.5
    idx = np.empty(n_out, np.int64)
    for o in range(n_out):
        idx[o] = min(int(pos), n_in - 1)
        pos += step
    return idx


def resize(image: np.ndarray, size: Tuple[int, int], filter: str = "lanczos") -> np.ndarray:
    """Resizes images ``(..., H, W)`` (channels first or none; see ``Preprocess`` for
    channels-last) to ``(..., h, w)`` with `filter` (module docstring). uint8 in, uint8 out
    (rounded, clipped); float in, float32 out."""
    if filter not in FILTERS:
        raise ValueError(f"resize: filter must be one of {FILTERS}, got {filter!r}")
    img = np.asarray(image)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: size must be positive, got {size}")
    H, W = img.shape[-2:]
    if (H, W) == (h, w):
        return img.astype(np.float32) if img.dtype != np.uint8 else img.copy()
    if filter == "nearest":
        out = img[..., _nearest_index(H, h)[:, None], _nearest_index(W, w)[None, :]]
        return out if out.dtype == np.uint8 else out.astype(np.float32)
    if filter == "area":
        mh, mw = _area_matrix(H, h), _area_matrix(W, w)
        out = np.einsum("...ij,jk->...ik", mh.T @ img.astype(np.float64), mw)
        if img.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(np.float32)
    # a pass whose size is unchanged is skipped, as Pillow does (its weights are not
    # exactly 0 and 1 in floating point)
    mh = None if H == h else _lanczos_matrix(H, h)
    mw = None if W == w else _lanczos_matrix(W, w)
    if img.dtype == np.uint8:
        # Pillow's 8-bit passes: integer sums (exact in float64: < 2^53) plus a half,
        # shifted down, clipped to 0..255; horizontal first, rounded to uint8 between.
        half = float(1 << (_PRECISION_BITS - 1))
        out = img
        if mw is not None:
            out = np.clip(
                np.floor(
                    (out.astype(np.float64) @ _fixed_point(mw) + half) / (1 << _PRECISION_BITS)
                ),
                0,
                255,
            )
        if mh is not None:
            t = np.swapaxes(out.astype(np.float64), -1, -2) @ _fixed_point(mh) + half
            out = np.swapaxes(np.clip(np.floor(t / (1 << _PRECISION_BITS)), 0, 255), -1, -2)
        return out.astype(np.uint8)
    out = img.astype(np.float32)
    if mw is not None:
        out = (out.astype(np.float64) @ mw).astype(np.float32)
    if mh is not None:
        out = np.swapaxes(np.swapaxes(out.astype(np.float64), -1, -2) @ mh, -1, -2).astype(
            np.float32
        )
    return out


def _as_size(size: Any) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (operator_index(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(
            f"Preprocess: size must be an int or (height, width), got {size!r}"
        ) from None
    if h < 1 or w < 1:
        raise ValueError(f"Preprocess: size must be positive, got {size!r}")
    return (h, w)


def operator_index(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError(v)
    import operator

    return operator.index(v)


class Preprocess:
    """Images in, model inputs out; one object, saved with the model.

    Args:
        size: output ``(height, width)`` or an int for a square; None keeps the size
            (every image must then have the same one).
        channels: 1 (gray, ``(h, w, 1)``), 3 (RGB, ``(h, w, 3)``; gray is repeated) or
            None (gray without a channel axis, ``(h, w)``). Colour becomes gray by ITU-R
            601 luma (as the PNG decoder and Pillow's ``convert("L")``); an alpha channel
            is composited over white paper.
        resize: ``"lanczos"``, ``"area"`` or ``"nearest"`` (module docstring).
        polarity: ``"keep"``; ``"invert"`` (``255 - x``: dark ink on white paper becomes
            bright ink on black, as the Omniglot arrays); ``"auto"`` inverts an image whose
            border is brighter than mid-gray (paper light), so the background ends up dark.
        normalize: ``"unit"`` (float32 in [0, 1]: uint8 / 255), None (uint8 stays uint8)
            or ``(mean, std)`` (``(unit - mean) / std``, float32).

    Calling it on a batch (an array ``(N, ...)`` or a list of images of any sizes) gives
    an array ``(N, h, w[, c])``; ``one(image)`` does one image.
    """

    def __init__(
        self,
        size: Union[int, Sequence[int], None] = None,
        channels: Optional[int] = 1,
        resize: str = "lanczos",
        polarity: str = "keep",
        normalize: Any = "unit",
    ) -> None:
        self.size = _as_size(size)
        if channels not in (None, 1, 3) or isinstance(channels, bool):
            raise ValueError(f"Preprocess: channels must be 1, 3 or None, got {channels!r}")
        if resize not in FILTERS:
            raise ValueError(f"Preprocess: resize must be one of {FILTERS}, got {resize!r}")
        if polarity not in POLARITIES:
            raise ValueError(f"Preprocess: polarity must be one of {POLARITIES}, got {polarity!r}")
        if normalize is not None and normalize != "unit":
            try:
                mean, std = (float(v) for v in normalize)
            except (TypeError, ValueError):
                raise ValueError(
                    f"Preprocess: normalize must be 'unit', None or (mean, std), got {normalize!r}"
                ) from None
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ValueError(f"Preprocess: normalize's std must be > 0, got {normalize!r}")
            normalize = (mean, std)
        self.channels = channels
        self.resize = resize
        self.polarity = polarity
        self.normalize = normalize

    # ---------------------------------------------------------------- config
    def get_config(self) -> Dict[str, Any]:
        return {
            "size": None if self.size is None else list(self.size),
            "channels": self.channels,
            "resize": self.resize,
            "polarity": self.polarity,
            "normalize": list(self.normalize)
            if isinstance(self.normalize, tuple)
            else self.normalize,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Preprocess":
        known = {"size", "channels", "resize", "polarity", "normalize"}
        extra = set(config) - known
        if extra:
            raise ValueError(f"Preprocess.from_config: unknown keys {sorted(extra)}")
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Preprocess({args})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Preprocess) and self.get_config() == other.get_config()

    @property
    def output_shape(self) -> Optional[Tuple[int, ...]]:
        """One image's output shape, when `size` is set."""
        if self.size is None:
            return None
        return self.size if self.channels is None else self.size + (self.channels,)

    # ------------------------------------------------------------- applying
    def one(self, image: Any) -> np.ndarray:
        """One image ``(H, W)`` or ``(H, W, C)`` (C in 1, 3, 4) preprocessed."""
        img = np.asarray(image)
        if img.dtype == bool:
            img = img.astype(np.uint8) * np.uint8(255)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
            raise ValueError(
                "Preprocess: an image must be (H, W) or (H, W, C) with C in 1, 3, 4; got "
                f"shape {img.shape}"
            )
        if not (img.dtype == np.uint8 or np.issubdtype(img.dtype, np.floating)):
            if (
                np.issubdtype(img.dtype, np.integer)
                and img.size
                and (img.min() < 0 or img.max() > 255)
            ):
                raise ValueError("Preprocess: integer images must be in 0..255")
            img = img.astype(np.uint8)
        peak = 255.0 if img.dtype == np.uint8 else 1.0
        if img.ndim == 3:
            if img.shape[-1] == 4:  # composite over white paper
                alpha = img[..., 3:].astype(np.float64) / peak
                rgb = img[..., :3].astype(np.float64) * alpha + peak * (1 - alpha)
                img = _back(rgb, img.dtype)
            if self.channels == 3:
                img = np.moveaxis(img[..., :3], -1, 0)  # channels first for resize
            else:
                img = _back(img[..., :3].astype(np.float64) @ _LUMA, img.dtype)
        elif self.channels == 3:
            img = np.repeat(img[None], 3, axis=0)
        if self.polarity == "invert" or (self.polarity == "auto" and _paper_light(img, peak)):
            img = (np.uint8(255) - img) if img.dtype == np.uint8 else (1.0 - img).astype(np.float32)
        if self.size is not None:
            img = resize(img, self.size, self.resize)
        if self.channels == 3:
            img = np.moveaxis(img, 0, -1)
        elif self.channels == 1:
            img = img[..., None]
        if self.normalize is None:
            return img
        unit = (
            img.astype(np.float32) / np.float32(255.0)
            if img.dtype == np.uint8
            else img.astype(np.float32)
        )
        if self.normalize == "unit":
            return unit
        mean, std = self.normalize
        return ((unit - np.float32(mean)) / np.float32(std)).astype(np.float32)

    def __call__(self, images: Any) -> np.ndarray:
        """A batch: an array ``(N, H, W[, C])`` or a list of images (any sizes when
        `size` is set); returns ``(N, *output_shape)``."""
        if (
            isinstance(images, np.ndarray)
            and self.size is not None
            and images.dtype == np.uint8
            and (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1))
            and self.channels != 3
        ):
            return self._gray_batch(images)
        out = [self.one(im) for im in images]
        if not out:
            raise ValueError("Preprocess: no images")
        shapes = {o.shape for o in out}
        if len(shapes) > 1:
            raise ValueError(
                f"Preprocess: the images have different sizes {sorted(shapes)[:3]}...; "
                "give a size to resize them to"
            )
        return np.stack(out)

    def _gray_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 gray batches in one pass (the same arithmetic as `one`, vectorised)."""
        img = images[..., 0] if images.ndim == 4 else images
        if self.polarity == "invert":
            img = np.uint8(255) - img
        elif self.polarity == "auto":
            flip = np.array([_paper_light(i, 255.0) for i in img])
            img = np.where(flip[:, None, None], np.uint8(255) - img, img)
        img = resize(img, self.size, self.resize)
        if self.channels == 1:
            img = img[..., None]
        if self.normalize is None:
            return img
        unit = img.astype(np.float32) / np.float32(255.0)
        if self.normalize == "unit":
            return unit
        mean, std = self.normalize
        return ((unit - np.float32(mean)) / np.float32(std)).astype(np.float32)


def _back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(np.float32)


def _paper_light(img: np.ndarray, peak: float) -> bool:
    """Whether the image's border (the paper, for a drawing) is brighter than mid-gray."""
    border = np.concatenate(
        [
            img[..., 0, :].ravel(),
            img[..., -1, :].ravel(),
            img[..., :, 0].ravel(),
            img[..., :, -1].ravel(),
        ]
    )
    return float(border.astype(np.float64).mean()) > peak / 2
