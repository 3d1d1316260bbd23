"""A restricted unpickler for the datasets published as pickles (mini-ImageNet's and
tiered-ImageNet's caches, CIFAR-100's ``cifar-100-python``).

A pickle is a program: loading one with ``pickle.load`` may call any function the file
names (``os.system`` included). These files only ever hold NumPy arrays, dicts, lists,
tuples, strings, bytes and numbers, so only what rebuilds those is admitted: NumPy's array
and scalar reconstructors (protocol 5's ``_frombuffer`` too), ``numpy.dtype``, ``_codecs.encode`` (how Python 3 pickles bytes
at protocol 2) and ``collections.OrderedDict``. Any other name the file asks for is refused
before it is looked up, and the result is checked to be made of those types only (no
object arrays).
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any, BinaryIO, Union

import numpy as np

__all__ = ["UnsafePickleError", "restricted_load", "restricted_loads"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5's arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than arrays, containers, strings and numbers."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"the pickle asks for {module}.{name}; only NumPy arrays, dicts, lists, strings "
            "and numbers are loaded from dataset pickles"
        )


_PLAIN = (str, bytes, int, float, bool, type(None), np.generic)


def _check(obj, depth=0):
    if depth > 64:
        raise UnsafePickleError("the pickle nests containers more than 64 deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError("the pickle holds an object array")
    elif isinstance(obj, (dict, collections.OrderedDict)):
        for k, v in obj.items():
            _check(k, depth + 1)
            _check(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check(v, depth + 1)
    elif not isinstance(obj, _PLAIN):
        raise UnsafePickleError(f"the pickle holds a {type(obj).__name__}")


def restricted_load(file: BinaryIO, encoding: str = "ASCII") -> Any:
    """``pickle.load`` that admits only NumPy arrays, dicts, lists, tuples, strings,
    bytes and numbers. `encoding="bytes"` or ``"latin1"`` reads Python 2 pickles
    (CIFAR-100's).

    Raises:
        UnsafePickleError: the file names anything else (nothing it names is called).
        pickle.UnpicklingError, EOFError: a damaged or truncated file.
    """
    obj = _Restricted(file, encoding=encoding).load()
    _check(obj)
    return obj


def restricted_loads(data: Union[bytes, bytearray], encoding: str = "ASCII") -> Any:
    """``restricted_load`` of bytes."""
    return restricted_load(io.BytesIO(data), encoding=encoding)
