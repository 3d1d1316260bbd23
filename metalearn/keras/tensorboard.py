"""TensorBoard event files without TensorFlow: scalars and histograms, in the format
TensorBoard reads.

An event file is a sequence of TFRecords, each framing one serialized ``Event`` protocol
buffer (tensorflow/core/util/event.proto):

    uint64 length (little-endian)
    uint32 masked CRC-32C of the 8 length bytes
    byte   data[length]
    uint32 masked CRC-32C of data

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2^32) and CRC-32C the
Castagnoli CRC (reflected polynomial 0x82f63b78). The first event of a file carries
``file_version = "brain.Event:2"``; each scalar is an event with ``wall_time``, ``step``
and a ``Summary`` holding one ``Value {tag, simple_value}``; a histogram one ``Value {tag,
histo}`` (``HistogramProto``, TensorBoard's buckets: ``histogram_buckets``). The protobuf
is written by hand (the few fields needed), so NumPy stays the only run-time dependency.

Files are named ``events.out.tfevents.<seconds>.<host>.<pid>.<n>.v2`` (TensorBoard finds
files whose name contains ``tfevents``) and flushed after each write call of ``flush``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Optional

import numpy as np

__all__ = ["EventFileWriter", "crc32c", "histogram_buckets", "masked_crc32c"]


def _make_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as an unsigned 32-bit integer."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: a rotation by 15 bits plus 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------ protobuf, by hand
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: two's complement, as protobuf writes negatives
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str = "", summary: bytes = b"") -> bytes:
    """An ``Event``: wall_time (1, double), step (2, int64), file_version (3, string),
    summary (5, Summary)."""
    out = bytearray(b"\x09" + struct.pack("<d", wall_time))
    out += b"\x10" + _varint(int(step))
    if file_version:
        out += _len_field(3, file_version.encode())
    if summary:
        out += _len_field(5, summary)
    return bytes(out)


def _scalar_summary(tag: str, value: float) -> bytes:
    """A ``Summary`` with one ``Value``: tag (1, string), simple_value (2, float)."""
    v = _len_field(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", float(value))
    return _len_field(1, v)


# TensorBoard's default number of buckets (tf.summary.histogram's, which Keras 3 uses)
DEFAULT_BUCKET_COUNT = 30


def histogram_buckets(values, bucket_count: int = DEFAULT_BUCKET_COUNT):
    """TensorBoard's bucketing (plugins/histogram/summary_v2.py): `bucket_count`
    equal-width buckets from the minimum to the maximum, in float64, the maximum counted in
    the last; all values equal: every edge at the value, the count in the last bucket.
    Returns ``(left_edges, right_edges, counts)``, float64 arrays; non-finite values are
    left out (they have no bucket)."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    if data.size == 0:
        z = np.zeros(bucket_count)
        return z, z.copy(), z.copy()
    lo, hi = float(data.min()), float(data.max())
    counts = np.zeros(bucket_count)
    if hi == lo:
        counts[-1] = data.size
        edges = np.full(bucket_count, hi)
        return edges, edges.copy(), counts
    width = (hi - lo) / bucket_count
    index = np.minimum(np.floor((data - lo) / width).astype(np.int64), bucket_count - 1)
    counts += np.bincount(index, minlength=bucket_count)
    edges = np.linspace(lo, hi, bucket_count + 1)
    edges[-1] = hi
    return edges[:-1], edges[1:], counts


def _packed_doubles(number: int, values) -> bytes:
    return _len_field(number, np.asarray(values, "<f8").tobytes())


def _histogram_summary(tag: str, values, bucket_count: int) -> bytes:
    """A ``Summary`` with one ``Value``: tag (1), histo (5, ``HistogramProto``: min 1,
    max 2, num 3, sum 4, sum_squares 5 (doubles), bucket_limit 6 and bucket 7 (packed
    doubles)). bucket_limit holds each bucket's right edge: TensorBoard turns this into
    ``[left, right, count]`` rows with ``min`` as the first left edge (data_compat), the
    rows tf.summary.histogram writes."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    _, right, counts = histogram_buckets(data, bucket_count)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    h = b"\x09" + struct.pack("<d", lo) + b"\x11" + struct.pack("<d", hi)
    h += b"\x19" + struct.pack("<d", float(data.size))
    h += b"\x21" + struct.pack("<d", float(data.sum()))
    h += b"\x29" + struct.pack("<d", float(np.dot(data, data)))
    h += _packed_doubles(6, right) + _packed_doubles(7, counts)
    return _len_field(1, _len_field(1, tag.encode("utf-8")) + _len_field(5, h))


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


_COUNTER = [0]  # tells apart the files one process opens in the same second


class EventFileWriter:
    """Writes scalar and histogram summaries to a new event file in `log_dir` (made if
    missing).

    Args:
        log_dir: the folder (one run: TensorBoard lists each folder as a run).

    Raises:
        OSError: the folder cannot be made or written (raised here, before any event).
    """

    def __init__(self, log_dir: str) -> None:
        os.makedirs(log_dir, exist_ok=True)
        _COUNTER[0] += 1
        name = "events.out.tfevents.%d.%s.%d.%d.v2" % (
            int(time.time()),
            socket.gethostname(),
            os.getpid(),
            _COUNTER[0],
        )
        self.path = os.path.join(log_dir, name)
        self._file: Optional[object] = open(self.path, "wb")
        self._file.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Adds one scalar event (`value` stored as float32, as TensorBoard's simple_value)."""
        if self._file is None:
            raise ValueError(f"EventFileWriter: {self.path} is closed")
        self._file.write(_record(_event(time.time(), step, summary=_scalar_summary(tag, value))))

    def histogram(self, tag: str, values, step: int, buckets: int = DEFAULT_BUCKET_COUNT) -> None:
        """Adds one histogram event of `values` (any shape, flattened) in `buckets`
        equal-width buckets, as tf.summary.histogram (see ``histogram_buckets``)."""
        if self._file is None:
            raise ValueError(f"EventFileWriter: {self.path} is closed")
        if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)) or buckets < 1:
            raise ValueError(f"EventFileWriter.histogram: buckets must be >= 1, got {buckets!r}")
        summary = _histogram_summary(tag, values, int(buckets))
        self._file.write(_record(_event(time.time(), step, summary=summary)))

    def flush(self) -> None:
        """Pushes the events written so far to the file."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flushes and closes the file (a second close does nothing)."""
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None


# dir() and tab completion offer the API only (metalearn/__init__.py's rule; this module is
# not imported with the package, so it applies the rule itself)
def __dir__():
    import sys

    from metalearn import _public_dir

    return _public_dir(sys.modules[__name__])()
