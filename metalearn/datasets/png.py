"""A small PNG decoder (zlib + NumPy, no Pillow) for the official Omniglot images, and
an encoder used by the tests to write PNGs.

Supports non-interlaced grayscale, gray+alpha, RGB, RGBA and palette images of bit depth
1, 2, 4, 8 (and 16 for gray/RGB), all five scanline filters. Output: a 2-D uint8 array
of luminance (alpha and colour are reduced to gray).
"""

import struct
import zlib

import numpy as np

__all__ = ["decode_png", "encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _unfilter(raw, height, stride, bpp):
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    pos = 0
    for row in range(height):
        ftype = raw[pos]
        line = np.frombuffer(raw, np.uint8, stride, pos + 1).astype(np.int32)
        pos += stride + 1
        if ftype == 0:
            cur = line
        elif ftype == 1:  # Sub
            cur = line.copy()
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 255
        elif ftype == 2:  # Up
            cur = (line + prev) & 255
        elif ftype == 3:  # Average
            cur = line.copy()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 255
        elif ftype == 4:  # Paeth
            cur = line.copy()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 255
        else:
            raise ValueError(f"PNG: unknown filter type {ftype} in row {row}")
        out[row] = cur
        prev = cur
    return out


def decode_png(data: bytes, channels: int = 1) -> np.ndarray:
    """Decodes PNG bytes to a 2-D uint8 gray image ``(height, width)``, or with
    ``channels=3`` an RGB image ``(height, width, 3)`` (gray repeated; alpha composited
    over white, as for gray).

    Raises:
        ValueError: not a PNG, interlaced, or an unsupported colour type/bit depth.
    """
    if channels not in (1, 3):
        raise ValueError(f"decode_png: channels must be 1 or 3, got {channels!r}")
    if data[:8] != _SIGNATURE:
        raise ValueError("PNG: bad signature (not a PNG file)")
    pos, idat, palette, header = 8, [], None, None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if header is None or not idat:
        raise ValueError("PNG: missing IHDR or IDAT chunk")
    width, height, depth, color, _, _, interlace = header
    if interlace:
        raise ValueError("PNG: interlaced images are not supported")
    if color not in _CHANNELS:
        raise ValueError(f"PNG: unsupported colour type {color}")
    bits = depth * _CHANNELS[color]
    stride = (width * bits + 7) // 8
    raw = zlib.decompress(b"".join(idat))
    rows = _unfilter(raw, height, stride, max(1, bits // 8))
    if depth < 8:
        vals = np.unpackbits(rows, axis=1)
        vals = vals.reshape(height, -1, depth)[:, : width * _CHANNELS[color]]
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint16)
        samples = (vals * weights).sum(-1).astype(np.uint16)
        if color != 3:
            samples = samples * (255 // ((1 << depth) - 1))
    elif depth == 16:
        samples = rows.reshape(height, -1, 2)[..., 0].astype(np.uint16)
    else:
        samples = rows.astype(np.uint16)
    samples = samples.reshape(height, width, _CHANNELS[color])
    if color == 3:
        if palette is None:
            raise ValueError("PNG: palette image without PLTE chunk")
        rgb = palette[samples[..., 0]].astype(np.float64)
        gray = rgb @ np.array([0.299, 0.587, 0.114])
    elif _CHANNELS[color] >= 3:
        gray = samples[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    else:
        gray = samples[..., 0].astype(np.float64)
    if channels == 3:  # colour kept: (H, W, 3)
        if color == 3:
            gray = rgb
        elif _CHANNELS[color] >= 3:
            gray = samples[..., :3].astype(np.float64)
        else:
            gray = np.repeat(gray[..., None], 3, axis=-1)
    if _CHANNELS[color] in (2, 4):  # composite over white paper
        alpha = samples[..., -1].astype(np.float64) / 255.0
        if channels == 3:
            alpha = alpha[..., None]
        gray = gray * alpha + 255.0 * (1 - alpha)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _chunk(ctype, body):
    return (
        struct.pack(">I", len(body))
        + ctype
        + body
        + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def encode_png(image: np.ndarray, bit_depth: int = 8) -> bytes:
    """Encodes a 2-D array (uint8 gray, or bool for ``bit_depth=1``: True = white) as PNG bytes."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"encode_png: expected a 2-D image, got shape {img.shape}")
    h, w = img.shape
    if bit_depth == 1:
        rows = np.packbits(img.astype(bool), axis=1)
    elif bit_depth == 8:
        rows = img.astype(np.uint8)
    else:
        raise ValueError("encode_png: bit_depth must be 1 or 8")
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))
    header = struct.pack(">IIBBBBB", w, h, bit_depth, 0, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )
