"""TensorBoard event files without TensorFlow: scalars, in the format TensorBoard reads.

An event file is a sequence of TFRecords, each framing one serialized ``Event`` protocol
buffer (tensorflow/core/util/event.proto):

    uint64 length (little-endian)
    uint32 masked CRC-32C of the 8 length bytes
    byte   data[length]
    uint32 masked CRC-32C of data

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2^32) and CRC-32C the
Castagnoli CRC (reflected polynomial 0x82f63b78). The first event of a file carries
``file_version = "brain.Event:2"``; each scalar is an event with ``wall_time``, ``step``
and a ``Summary`` holding one ``Value {tag, simple_value}``. The protobuf is written by
hand (the few fields needed), so NumPy stays the only run-time dependency.

Files are named ``events.out.tfevents.<seconds>.<host>.<pid>.<n>.v2`` (TensorBoard finds
files whose name contains ``tfevents``) and flushed after each write call of ``flush``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Optional

__all__ = ["EventFileWriter", "crc32c", "masked_crc32c"]


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
    """Writes scalar summaries to a new event file in `log_dir` (made if missing).

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
