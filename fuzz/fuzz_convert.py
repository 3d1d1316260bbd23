"""Fuzzes the binding's array conversion and the ops behind it.

From the fuzzer's bytes: a dtype (float16/32/64, both byte orders, ints, uints, bool,
complex, object, str), a shape of rank 0-5 with sizes 0-6, a view (reversed, strided,
transposed, broadcast with stride 0, read-only, misaligned) and the values (raw bytes, so
NaN, inf, denormals and huge integers all occur). The array then goes through
``ml.tensor``, ``ml.as_tensor``, ``np.asarray`` of the tensor and a few ops (elementwise
with broadcasting, reductions over an axis, matmul, reshape, softmax, a gradient).

Oracles: conversion either succeeds and equals ``arr.astype(float32)`` bit for bit (NaN
for NaN), or raises TypeError/ValueError (MemoryError/OverflowError for absurd sizes);
an op either matches NumPy's shape or raises ValueError/TypeError; a read-only input is
never written. Anything else (a crash, a sanitizer report, SystemError) is a finding.

    python fuzz/fuzz_convert.py fuzz/corpus/convert -max_total_time=60
"""

import sys
import warnings

import atheris

import numpy as np

with atheris.instrument_imports(include=["metalearn"]):
    import metalearn as ml

warnings.simplefilter("ignore")
np.seterr(all="ignore")

DTYPES = [
    "<f4",
    ">f4",
    "<f8",
    ">f8",
    "<f2",
    "i1",
    "<i2",
    "<i4",
    "<i8",
    ">i8",
    "u1",
    "<u2",
    "<u4",
    "<u8",
    "?",
    "<c8",
    "<c16",
    "O",
    "U3",
    "V4",
    "<M8[s]",
]
ALLOWED = (TypeError, ValueError, MemoryError, OverflowError)
REAL = set("fiub")


@atheris.instrument_func
def _make_array(fdp):
    dtype = np.dtype(DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)])
    ndim = fdp.ConsumeIntInRange(0, 5)
    shape = tuple(fdp.ConsumeIntInRange(0, 6) for _ in range(ndim))
    n = int(np.prod(shape)) if shape else 1
    if dtype.kind == "O":
        pool = [1.5, None, "x", float("nan"), 2**80, object(), [1.0], 3]
        flat = np.empty(n, dtype=object)
        for i in range(n):
            flat[i] = pool[fdp.ConsumeIntInRange(0, len(pool) - 1)]
        arr = flat.reshape(shape)
    else:
        raw = fdp.ConsumeBytes(n * dtype.itemsize)
        raw = raw + bytes(n * dtype.itemsize - len(raw))
        if dtype.kind == "b":  # canonical bools (NumPy itself misbehaves on other bytes)
            arr = (np.frombuffer(raw, np.uint8, count=n) & 1).astype(bool).reshape(shape)
        else:
            arr = np.frombuffer(raw, dtype=dtype, count=n).reshape(shape).copy()
    view = fdp.ConsumeIntInRange(0, 7)
    if view == 1 and ndim:
        arr = arr[..., ::-1]
    elif view == 2 and ndim:
        arr = arr[..., ::2]
    elif view == 3 and ndim >= 2:
        arr = np.swapaxes(arr, 0, -1)
    elif view == 4 and ndim and dtype.kind != "O":
        arr = np.broadcast_to(arr[..., :1], arr.shape)  # stride 0, read-only
    elif view == 5:
        arr.flags.writeable = False
    elif view == 6 and dtype.kind != "O" and n:
        buf = np.zeros(n * dtype.itemsize + 1, np.uint8)  # misaligned data
        arr2 = np.frombuffer(buf.data, dtype=dtype, count=n, offset=1).reshape(shape)
        arr2[...] = arr
        arr = arr2
    return arr


def _same(t, arr):
    got = np.asarray(t)
    want = arr.astype(np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    gb, wb = got.view(np.uint32), want.view(np.uint32)
    both_nan = np.isnan(got) & np.isnan(want)
    assert np.array_equal(np.where(both_nan, 0, gb), np.where(both_nan, 0, wb)), "values differ"


def _expect_ok_or(exc_types, fn):
    try:
        return fn()
    except exc_types:
        return None


@atheris.instrument_func
def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    arr = _make_array(fdp)
    before = arr.copy() if arr.dtype.kind != "O" else None
    real = arr.dtype.kind in REAL

    t = _expect_ok_or(ALLOWED, lambda: ml.tensor(arr))
    if real and t is None and arr.size < 10**6:
        raise AssertionError(
            f"ml.tensor refused a real array of dtype {arr.dtype} shape {arr.shape}"
        )
    if not real and t is not None and arr.dtype.kind not in "O":
        raise AssertionError(f"ml.tensor accepted dtype {arr.dtype}")
    if t is not None and arr.dtype.kind != "O":
        _same(t, arr)
    a = _expect_ok_or(ALLOWED, lambda: ml.as_tensor(arr))
    if a is not None and arr.dtype.kind != "O":
        _same(a, arr)
    if before is not None:
        # Bytes, not values: NaT (datetime) and NaN are unequal to themselves.
        assert arr.tobytes() == before.tobytes(), "input was written"
    if t is None:
        return

    op = fdp.ConsumeIntInRange(0, 9)
    other = _make_array(fdp) if op < 3 else None
    x = t
    try:
        if op == 0:
            r = ml.add(x, other)
            assert r.shape == np.broadcast_shapes(arr.shape, other.shape)
        elif op == 1:
            r = ml.mul(other, x)
        elif op == 2:
            r = ml.matmul(x, other)
        elif op == 3:
            axis = fdp.ConsumeIntInRange(-6, 6)
            r = ml.reduce_sum(x, axis=axis, keepdims=fdp.ConsumeBool())
        elif op == 4:
            r = ml.reduce_max(x, axis=fdp.ConsumeIntInRange(-6, 6))
        elif op == 5:
            shape = [fdp.ConsumeIntInRange(-2, 8) for _ in range(fdp.ConsumeIntInRange(0, 4))]
            r = ml.reshape(x, shape)
            assert r.size == x.size
        elif op == 6:
            r = ml.softmax(x, axis=fdp.ConsumeIntInRange(-3, 3))
        elif op == 7:
            v = ml.tensor(np.asarray(t), requires_grad=True)
            (g,) = ml.grad(ml.reduce_sum(ml.tanh(v) * v), v, create_graph=fdp.ConsumeBool())
            assert g.shape == v.shape
            r = g
        elif op == 8:
            r = ml.transpose(x)
            assert r.shape == tuple(reversed(x.shape))
        else:
            idx = fdp.ConsumeIntInRange(-8, 8)
            r = x[idx]
        np.asarray(r).sum()
    except ALLOWED + (IndexError,):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
