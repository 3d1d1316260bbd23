"""Behaviour of metalearn.Tensor: memory sharing, conversions, shapes, operators, autograd basics,
reference counting and the release of very deep graphs."""

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import metalearn as ml

from tests.helpers import F32


def arr(t):
    return np.asarray(t)


# ------------------------------------------------------------------ memory sharing


def test_asarray_shares_memory_with_tensor():
    t = ml.tensor([1.0, 2.0, 3.0])
    a = np.asarray(t)
    assert a.dtype == np.float32 and a.shape == (3,)
    a[0] = 42.0
    assert t.numpy()[0] == 42.0
    assert t[0].item() == 42.0
    assert np.shares_memory(np.asarray(t), t.numpy())


def test_numpy_shares_memory_and_outlives_tensor():
    t = ml.tensor(np.arange(6, dtype=F32).reshape(2, 3))
    a = t.numpy()
    a[1, 2] = -1.0
    assert np.asarray(t)[1, 2] == -1.0
    del t
    gc.collect()
    # the view keeps the tensor's memory alive
    np.testing.assert_array_equal(a, [[0, 1, 2], [3, 4, -1]])


def test_tensor_copies():
    src = np.ones((2, 2), F32)
    for t in (ml.tensor(src), ml.Tensor(src)):
        src[0, 0] = 7.0
        assert np.asarray(t)[0, 0] == 1.0
        assert not np.shares_memory(np.asarray(t), src)
        src[0, 0] = 1.0


def test_as_tensor_shares_float32_contiguous():
    src = np.zeros((3, 2), F32)
    t = ml.as_tensor(src)
    src[1, 1] = 5.0
    assert np.asarray(t)[1, 1] == 5.0
    np.asarray(t)[0, 0] = 3.0
    assert src[0, 0] == 3.0


def test_as_tensor_keeps_array_alive():
    src = np.arange(1000, dtype=F32)
    t = ml.as_tensor(src)
    del src
    gc.collect()
    _ = [np.ones(1000, F32) for _ in range(10)]  # reuse freed memory if it was freed
    np.testing.assert_array_equal(np.asarray(t), np.arange(1000, dtype=F32))


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(6, dtype=np.float64).reshape(2, 3),
        lambda: np.arange(12, dtype=F32).reshape(3, 4)[:, ::2],
        lambda: np.arange(6, dtype=F32).reshape(2, 3).T,
        lambda: np.arange(6, dtype=np.int64),
    ],
    ids=["float64", "strided", "transposed", "int64"],
)
def test_as_tensor_copies_otherwise(make):
    src = make()
    t = ml.as_tensor(src)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(arr(t), src.astype(F32))
    assert arr(t).flags["C_CONTIGUOUS"]


# ------------------------------------------------------------------ dtype conversion


@pytest.mark.parametrize(
    "dtype",
    [
        np.int32,
        np.int64,
        np.float64,
        np.bool_,
        np.uint8,
        np.float16,
        np.int8,
        np.uint16,
        np.float32,
    ],
)
def test_dtypes_converted_to_float32(dtype):
    src = (np.arange(6) % 3).astype(dtype).reshape(2, 3)
    for make in (ml.tensor, ml.Tensor, ml.as_tensor):
        t = make(src)
        assert t.dtype == np.float32
        assert t.shape == (2, 3)
        a = arr(t)
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, src.astype(F32))


def test_python_scalars_and_lists():
    assert ml.tensor(3).item() == 3.0
    assert ml.tensor(True).item() == 1.0
    assert ml.tensor(2.5).shape == ()
    t = ml.tensor([[1, 2], [3, 4]])
    assert t.shape == (2, 2)
    np.testing.assert_array_equal(arr(t), [[1, 2], [3, 4]])


def test_float64_rounding():
    t = ml.tensor(np.array([0.1, 1e-50, 1e50], np.float64))
    with np.errstate(over="ignore"):
        expect = np.array([0.1, 1e-50, 1e50]).astype(F32)
    np.testing.assert_array_equal(arr(t), expect)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1, "a"], dtype=object),
        np.array([1.0, 2.0], dtype=object),
        np.array([1 + 2j]),
        np.array([1 + 0j], dtype=np.complex64),
        1 + 2j,
    ],
    ids=["object_mixed", "object_numbers", "complex128", "complex64", "python_complex"],
)
def test_object_and_complex_refused(bad):
    for make in (ml.tensor, ml.Tensor, ml.as_tensor):
        with pytest.raises(TypeError):
            make(bad)


# ------------------------------------------------------------------ shapes and attributes


@pytest.mark.parametrize(
    "shape",
    [(), (1,), (5,), (2, 3), (2, 3, 4), (2, 1, 3, 2), (1, 2, 1, 3, 2), (2, 1, 2, 1, 2, 1, 2, 1)],
)
def test_shapes(shape):
    src = np.arange(int(np.prod(shape)), dtype=F32).reshape(shape)
    t = ml.tensor(src)
    assert t.shape == shape
    assert isinstance(t.shape, tuple) and all(type(d) is int for d in t.shape)
    assert t.ndim == len(shape)
    assert t.size == src.size
    assert t.dtype == np.float32
    np.testing.assert_array_equal(arr(t), src)
    if shape:
        assert len(t) == shape[0]
    else:
        with pytest.raises(TypeError):
            len(t)


def test_scalar_tensor_and_item():
    t = ml.tensor(3.25)
    assert t.shape == () and t.ndim == 0 and t.size == 1
    assert t.item() == 3.25
    assert isinstance(t.item(), float)
    assert ml.tensor([[4.5]]).item() == 4.5


def test_item_of_many_elements_refused():
    with pytest.raises((ValueError, TypeError)):
        ml.tensor([1.0, 2.0]).item()


def test_zeros_ones_full():
    np.testing.assert_array_equal(arr(ml.zeros((2, 3))), np.zeros((2, 3)))
    np.testing.assert_array_equal(arr(ml.ones((4,))), np.ones(4))
    np.testing.assert_array_equal(arr(ml.full((2, 2), 1.5)), np.full((2, 2), 1.5))
    assert ml.zeros(()).shape == ()
    assert ml.zeros((0, 3)).shape == (0, 3)
    for t in (ml.zeros((2, 3)), ml.ones((2,)), ml.full((1,), 2.0)):
        assert t.dtype == np.float32 and t.is_leaf and not t.requires_grad and t.op == ""


def test_repr():
    r = repr(ml.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert isinstance(r, str) and "tensor" in r.lower()
    assert "2" in r and "4" in r
    r = repr(ml.tensor([1.0], requires_grad=True))
    assert isinstance(r, str)
    assert isinstance(repr(ml.tensor(2.0)), str)
    assert isinstance(repr(ml.zeros((0, 2))), str)
    assert isinstance(str(ml.zeros((100, 100))), str)


def test_requires_grad_and_leaf_attributes():
    x = ml.tensor([1.0, 2.0])
    assert not x.requires_grad and x.is_leaf and x.op == ""
    x.requires_grad = True
    assert x.requires_grad
    y = x * 2.0
    assert y.requires_grad and not y.is_leaf
    assert isinstance(y.op, str) and y.op != ""
    with pytest.raises((ValueError, RuntimeError, AttributeError)):
        y.requires_grad = False
    x.requires_grad = False
    assert not x.requires_grad
    assert ml.tensor([1.0], requires_grad=True).requires_grad
    assert ml.Tensor([1.0], requires_grad=True).requires_grad


def test_detach_shares_memory_and_cuts_graph():
    x = ml.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.op == ""
    np.testing.assert_array_equal(arr(d), [3.0, 6.0])
    assert np.shares_memory(arr(d), arr(y))


def test_T_and_transpose_and_reshape_methods():
    src = np.arange(24, dtype=F32).reshape(2, 3, 4)
    t = ml.tensor(src)
    np.testing.assert_array_equal(arr(t.T), src.T)
    np.testing.assert_array_equal(arr(t.transpose()), src.T)
    np.testing.assert_array_equal(arr(t.transpose((1, 0, 2))), src.transpose(1, 0, 2))
    np.testing.assert_array_equal(arr(t.reshape(6, 4)), src.reshape(6, 4))
    assert arr(t.T).flags["C_CONTIGUOUS"]


def test_reshape_method_accepts_tuple():
    src = np.arange(24, dtype=F32).reshape(2, 3, 4)
    np.testing.assert_array_equal(arr(ml.tensor(src).reshape((4, 6))), src.reshape(4, 6))


def test_subclassable():
    class MyTensor(ml.Tensor):
        pass

    t = MyTensor([1.0, 2.0])
    assert isinstance(t, ml.Tensor) and isinstance(t, MyTensor)
    np.testing.assert_array_equal(arr(t + 1.0), [2.0, 3.0])


# ------------------------------------------------------------------ indexing

SRC = np.arange(24, dtype=F32).reshape(4, 6)


@pytest.mark.parametrize(
    "key",
    [
        1,
        -1,
        0,
        slice(1, 3),
        slice(0, 4),
        slice(None, 2),
        slice(2, None),
        slice(-3, -1),
        (slice(None), slice(2, 5)),
        np.array([3, 0, 3]),
        np.array([-1, 1]),
    ],
    ids=lambda k: repr(k).replace(" ", ""),
)
def test_indexing_matches_numpy(key):
    t = ml.tensor(SRC)
    got = t[key]
    assert isinstance(got, ml.Tensor)
    np.testing.assert_array_equal(arr(got), SRC[key])


def test_index_out_of_range():
    t = ml.tensor(SRC)
    with pytest.raises(IndexError):
        t[4]
    with pytest.raises(IndexError):
        t[-5]


def test_index_scalar_element():
    t = ml.tensor(SRC)
    assert t[2][3].item() == SRC[2, 3]


def test_indexing_gradient():
    x = ml.tensor(SRC, requires_grad=True)
    y = ml.reduce_sum(x[1]) + ml.reduce_sum(x[:, 2:5] * 2.0) + ml.reduce_sum(x[np.array([3, 3, 0])])
    (g,) = ml.grad(y, x)
    expect = np.zeros_like(SRC)
    expect[1] += 1
    expect[:, 2:5] += 2
    expect[3] += 2
    expect[0] += 1
    np.testing.assert_array_equal(arr(g), expect)


# ------------------------------------------------------------------ operators

A = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]], F32)
B = np.array([2.0, -0.5, 1.25], F32)

BINOPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b,
}


@pytest.mark.parametrize("op", sorted(BINOPS))
@pytest.mark.parametrize(
    "kind",
    [
        "tensor_tensor",
        "tensor_number",
        "number_tensor",
        "tensor_ndarray",
        "ndarray_tensor",
        "tensor_npscalar",
    ],
)
def test_operators_both_sides(op, kind):
    f = BINOPS[op]
    ta, tb = ml.tensor(A), ml.tensor(B)
    if kind == "tensor_tensor":
        got, expect = f(ta, tb), f(A, B)
    elif kind == "tensor_number":
        got, expect = f(ta, 2.5), f(A, F32(2.5))
    elif kind == "number_tensor":
        got, expect = f(2.5, ta), f(F32(2.5), A)
    elif kind == "tensor_ndarray":
        got, expect = f(ta, B), f(A, B)
    elif kind == "ndarray_tensor":
        got, expect = f(A, tb), f(A, B)
    else:
        got, expect = f(ta, np.float32(2.5)), f(A, F32(2.5))
    assert isinstance(got, ml.Tensor), f"{kind} {op} returned {type(got)}"
    np.testing.assert_allclose(arr(got), expect, rtol=1e-6)


def test_ndarray_on_left_keeps_graph():
    x = ml.tensor(B, requires_grad=True)
    y = A * x  # ndarray.__mul__ must defer to Tensor
    assert isinstance(y, ml.Tensor) and y.requires_grad
    (g,) = ml.grad(ml.reduce_sum(y), x)
    np.testing.assert_allclose(arr(g), A.sum(0), rtol=1e-6)


def test_unary_pow_matmul_operators():
    ta = ml.tensor(A)
    np.testing.assert_array_equal(arr(-ta), -A)
    np.testing.assert_allclose(arr(ta**2), A**2, rtol=1e-6)
    np.testing.assert_allclose(arr(ta**2.0), A**2, rtol=1e-6)
    np.testing.assert_allclose(arr(ml.tensor(np.abs(B)) ** 0.5), np.abs(B) ** 0.5, rtol=1e-6)
    m = np.arange(6, dtype=F32).reshape(3, 2)
    np.testing.assert_allclose(arr(ta @ ml.tensor(m)), A @ m, rtol=1e-6)
    np.testing.assert_allclose(arr(ta @ m), A @ m, rtol=1e-6)
    got = A.T @ ml.tensor(A)  # ndarray @ Tensor
    assert isinstance(got, ml.Tensor)
    np.testing.assert_allclose(arr(got), A.T @ A, rtol=1e-6)


def test_operator_results_are_float32():
    t = ml.tensor(A)
    for r in (t + 1, 1 + t, t * np.float64(2.0), t + np.arange(3), t / 3):
        assert r.dtype == np.float32 and arr(r).dtype == np.float32


BCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),
    ((4,), (3, 4)),
    ((3, 1), (1, 4)),
    ((2, 3, 4), (3, 1)),
    ((2, 1, 4), (1, 3, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (5,)),
    ((5, 1, 1, 2), (3, 1)),
    ((1, 1), (1, 1, 1)),
    ((0, 3), (1, 3)),
    ((2, 0), (2, 1)),
]


@pytest.mark.parametrize(
    "sa,sb", BCAST_SHAPES, ids=[f"{a}-{b}".replace(" ", "") for a, b in BCAST_SHAPES]
)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_broadcasting_agrees_with_numpy(sa, sb, op):
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 2, sa).astype(F32)
    b = (rng.choice([-1, 1], sb) * rng.uniform(0.5, 2, sb)).astype(F32)
    np_op = {
        "add": np.add,
        "sub": np.subtract,
        "mul": np.multiply,
        "div": np.divide,
        "maximum": np.maximum,
        "minimum": np.minimum,
    }[op]
    got = getattr(ml, op)(ml.tensor(a), ml.tensor(b))
    expect = np_op(a, b)
    assert got.shape == expect.shape
    np.testing.assert_allclose(arr(got), expect, rtol=1e-6)
    # ndarray and number operands accepted where a tensor is expected
    np.testing.assert_allclose(arr(getattr(ml, op)(a, b)), expect, rtol=1e-6)


@pytest.mark.parametrize(
    "sa,sb",
    [s for s in BCAST_SHAPES if 0 not in s[0] + s[1]],
    ids=[f"{a}-{b}".replace(" ", "") for a, b in BCAST_SHAPES if 0 not in a + b],
)
def test_grad_of_broadcast_inputs_reduced_to_input_shape(sa, sb):
    rng = np.random.default_rng(1)
    a = rng.uniform(-2, 2, sa).astype(F32)
    b = rng.uniform(-2, 2, sb).astype(F32)
    ta, tb = ml.tensor(a, requires_grad=True), ml.tensor(b, requires_grad=True)
    out_shape = np.broadcast_shapes(sa, sb)
    w = rng.uniform(-1, 1, out_shape).astype(F32)
    y = ml.reduce_sum((ta * tb) * w)
    ga, gb = ml.grad(y, [ta, tb])
    assert ga.shape == sa and gb.shape == sb
    bb = np.broadcast_to(b, out_shape).astype(np.float64)
    ab = np.broadcast_to(a, out_shape).astype(np.float64)
    exp_a = (
        (w * bb).sum(axis=tuple(range(len(out_shape) - len(sa))))
        if len(out_shape) > len(sa)
        else w * bb
    )
    exp_b = (
        (w * ab).sum(axis=tuple(range(len(out_shape) - len(sb))))
        if len(out_shape) > len(sb)
        else w * ab
    )
    exp_a = exp_a.sum(axis=tuple(i for i, d in enumerate(sa) if d == 1), keepdims=True).reshape(sa)
    exp_b = exp_b.sum(axis=tuple(i for i, d in enumerate(sb) if d == 1), keepdims=True).reshape(sb)
    np.testing.assert_allclose(arr(ga), exp_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arr(gb), exp_b, rtol=1e-5, atol=1e-5)


def test_broadcast_binary_ops_match_numpy_over_random_shapes():
    """Broadcasting walks the output with size-1 dims dropped and contiguous dims merged
    ((25, 10, 1) + (25, 1, 1) as 25 rows of 10): exact NumPy results over random shapes
    of up to 4 dims, each dim broadcast or not on either side, ranks differing."""
    r = np.random.default_rng(11)
    ops = [
        (ml.add, np.add),
        (ml.subtract, np.subtract),
        (ml.multiply, np.multiply),
        (ml.maximum, np.maximum),
    ]
    for _ in range(600):
        nd = int(r.integers(0, 5))
        out = tuple(int(v) for v in r.integers(1, 5, nd))
        sa = tuple(1 if r.random() < 0.4 else d for d in out)[int(r.integers(0, nd + 1)) :]
        sb = tuple(1 if r.random() < 0.4 else d for d in out)[int(r.integers(0, nd + 1)) :]
        a = r.standard_normal(sa).astype(F32)
        b = r.standard_normal(sb).astype(F32)
        f, g = ops[int(r.integers(0, len(ops)))]
        got = arr(f(ml.tensor(a), ml.tensor(b)))
        want = g(a, b)
        assert got.shape == want.shape, (sa, sb)
        np.testing.assert_array_equal(got, want, err_msg=f"{g.__name__} {sa} {sb}")


@pytest.mark.parametrize(
    "src,dst",
    [
        ((), ()),
        ((), (3, 2)),
        ((1,), (5,)),
        ((40, 1), (25, 40, 1)),
        ((40,), (25, 1, 40)),
        ((25, 1, 40), (25, 10, 40)),
        ((25, 1), (25, 40)),
        ((1, 40), (10, 40)),
        ((1, 1), (1, 1)),
        ((3, 1, 2, 1), (2, 3, 4, 2, 5)),
        ((2, 1, 3), (4, 2, 5, 3)),
        ((2, 3), (0, 2, 3)),
        ((25, 1, 1), (25, 10, 1)),
        ((2, 1, 1, 3), (2, 4, 5, 3)),
        ((3, 1, 1), (3, 4, 6)),
        ((1, 2, 1), (3, 2, 5)),
        ((2, 1, 1100), (2, 3, 1100)),
        ((1, 1), (7, 1)),
        ((5,), (0, 5)),
    ],
)
def test_broadcast_to_matches_numpy(src, dst):
    """Contiguous trailing blocks are copied whole, broadcast trailing dims element-wise;
    a broadcast dim just outside the block repeats it (single floats, short blocks and
    blocks past the memcpy size too)."""
    x = np.random.default_rng(2).uniform(-1, 1, src).astype(F32)
    got = ml.broadcast_to(ml.tensor(x), dst)
    assert got.shape == dst
    np.testing.assert_array_equal(arr(got), np.broadcast_to(x, dst))


@pytest.mark.parametrize("inner", [1, 3, 8, 37, 40, 45, 64, 77, 104, 256])
@pytest.mark.parametrize("red", [1, 2, 10, 75])
def test_sum_over_a_middle_axis_adds_row_after_row(red, inner):
    """sum_to / reduce_sum over axis 1 of (outer, red, inner): every column is the float32
    sum of its rows in order (column blocks of 64, 40, 32 and 8 and a scalar tail are summed
    in registers), so it equals NumPy adding the rows one after another, bit for bit, and
    float64 within rounding; a single column is four partial sums. Negative zeros and a NaN
    go through as NumPy's do."""
    x = np.random.default_rng(red * 1000 + inner).uniform(-1, 1, (3, red, inner)).astype(F32)
    x[0, 0, 0] = -0.0
    x[1, red - 1, inner - 1] = np.nan
    if inner > 1:
        want = np.zeros((3, inner), F32)
        for r in range(red):
            want = want + x[:, r, :]
    else:  # one column: four partial sums over rows r % 4, the rest into the first
        s = [np.zeros((3, 1), F32) for _ in range(4)]
        for r in range(red):
            q = r % 4 if r < red // 4 * 4 else 0
            s[q] = s[q] + x[:, r, :]
        want = (s[0] + s[1]) + (s[2] + s[3])
    got = arr(ml.sum_to(ml.tensor(x), (3, 1, inner)))
    np.testing.assert_array_equal(got[:, 0, :], want)
    np.testing.assert_array_equal(arr(ml.reduce_sum(ml.tensor(x), axis=1)), want)
    np.testing.assert_allclose(got[:, 0, :], x.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,axis", [((9000, 32), 0), ((2, 3000, 37), 1), ((40000, 3), 0)])
def test_long_sums_add_fixed_chunks_in_order_at_any_thread_count(shape, axis):
    """A sum over more than ~32k floats' worth of rows (a conv bias's gradient, (N H W, C))
    takes its rows in chunks fixed by the shape alone (32768 // columns rows): each chunk
    summed row after row from zero, the chunks' sums then added in order. The chunks run
    over the thread pool when the columns are few, so the result is NumPy doing exactly
    that, bit for bit, at 1, 2 and 3 threads (and float64 within rounding)."""
    x = np.random.default_rng(7).uniform(-1, 1, shape).astype(F32) + F32(0.5)
    xr = np.moveaxis(x, axis, 0)  # (red, ...)
    inner = int(np.prod(shape[axis + 1 :]))
    rc = max(1, 32768 // inner)
    want = np.zeros(xr.shape[1:], F32)
    for r0 in range(0, xr.shape[0], rc):
        part = np.zeros(xr.shape[1:], F32)
        for r in range(r0, min(r0 + rc, xr.shape[0])):
            part = part + xr[r]
        want = want + part
    assert xr.shape[0] > rc  # at least two chunks
    prev = ml.get_num_threads()
    try:
        for threads in (1, 2, 3):
            ml.set_num_threads(threads)
            np.testing.assert_array_equal(arr(ml.reduce_sum(ml.tensor(x), axis=axis)), want)
    finally:
        ml.set_num_threads(prev)
    np.testing.assert_allclose(want, x.astype(np.float64).sum(axis=axis), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ autograd basics


def test_no_grad_disables_recording():
    x = ml.tensor([1.0, 2.0], requires_grad=True)
    assert ml.is_grad_enabled()
    with ml.no_grad():
        assert not ml.is_grad_enabled()
        y = x * 2.0 + 1.0
        z = ml.exp(x)
        assert not y.requires_grad and y.op == "" and y.is_leaf
        assert not z.requires_grad and z.op == ""
        with ml.enable_grad():
            assert ml.is_grad_enabled()
            w = x * 2.0
            assert w.requires_grad and w.op != ""
        assert not ml.is_grad_enabled()
    assert ml.is_grad_enabled()
    np.testing.assert_array_equal(arr(y), [3.0, 5.0])
    assert (x * 2.0).requires_grad


def test_no_grad_restored_after_exception():
    with pytest.raises(RuntimeError):
        with ml.no_grad():
            raise RuntimeError("boom")
    assert ml.is_grad_enabled()


def test_set_grad_enabled():
    x = ml.tensor([1.0], requires_grad=True)
    try:
        ml.set_grad_enabled(False)
        assert not ml.is_grad_enabled()
        assert not (x * 2.0).requires_grad
        ml.set_grad_enabled(True)
        assert ml.is_grad_enabled()
        assert (x * 2.0).requires_grad
    finally:
        ml.set_grad_enabled(True)


def test_grad_allow_unused():
    x = ml.tensor([1.0, 2.0], requires_grad=True)
    z = ml.tensor([3.0], requires_grad=True)
    y = ml.reduce_sum(x * 3.0)
    gx, gz = ml.grad(y, [x, z], allow_unused=True)
    assert gz is None
    np.testing.assert_array_equal(arr(gx), [3.0, 3.0])
    with pytest.raises(ValueError):
        ml.grad(ml.reduce_sum(x * 3.0), [x, z])


def test_core_grad_takes_its_flags_by_keyword_or_by_position():
    # _core.grad(outputs, inputs, grad_outputs=None, create_graph=False, allow_unused=False):
    # the core takes the flags as one bit set (ML_GRAD_CREATE_GRAPH | ML_GRAD_ALLOW_UNUSED)
    from metalearn import _core

    x = ml.tensor([1.0, 2.0], requires_grad=True)
    z = ml.tensor([3.0], requires_grad=True)
    y = ml.reduce_sum(x * x)
    by_name = _core.grad(
        outputs=y, inputs=[x, z], grad_outputs=None, create_graph=True, allow_unused=True
    )
    by_position = _core.grad(y, [x, z], None, True, True)
    for gx, gz in (by_name, by_position):
        assert gz is None  # allow_unused
        np.testing.assert_array_equal(arr(gx), [2.0, 4.0])  # d sum(x^2) / dx = 2x
        assert gx.requires_grad  # create_graph: differentiable again
    (h,) = _core.grad(ml.reduce_sum(by_name[0]), x)
    np.testing.assert_array_equal(arr(h), [2.0, 2.0])  # d sum(2x) / dx
    (gx,) = _core.grad(y, x, create_graph=False)
    assert not gx.requires_grad
    with pytest.raises(ValueError, match="not used"):
        _core.grad(y, [x, z], allow_unused=False)


def test_grad_accepts_single_tensor_and_lists():
    x = ml.tensor(2.0, requires_grad=True)
    y = x * x
    gs = ml.grad(y, x)
    assert isinstance(gs, list) and len(gs) == 1 and gs[0].item() == 4.0
    gs = ml.grad([y], [x])
    assert gs[0].item() == 4.0
    assert not gs[0].requires_grad


def test_grad_multiple_outputs_with_grad_outputs():
    x = ml.tensor([1.0, 2.0], requires_grad=True)
    y1, y2 = x * 2.0, x * x
    (g,) = ml.grad([y1, y2], x, grad_outputs=[ml.tensor([1.0, 1.0]), ml.tensor([0.5, 2.0])])
    np.testing.assert_allclose(arr(g), [2.0 + 0.5 * 2 * 1, 2.0 + 2.0 * 2 * 2])


def test_gradient_accumulates_over_paths():
    x = ml.tensor([1.5, -2.0, 0.25], requires_grad=True)
    y = ml.reduce_sum(x * x + x)
    (g,) = ml.grad(y, x)
    np.testing.assert_allclose(arr(g), 2 * arr(x) + 1, rtol=1e-6)
    y = ml.reduce_sum(x) + ml.reduce_sum(x * 3.0) + ml.reduce_sum(ml.exp(x) * 0.0)
    (g,) = ml.grad(y, x)
    np.testing.assert_allclose(arr(g), [4.0, 4.0, 4.0])
    # diamond: a = x*2; y = a*a + a
    a = x * 2.0
    (g,) = ml.grad(ml.reduce_sum(a * a + a), x)
    np.testing.assert_allclose(arr(g), 8 * arr(x) + 2, rtol=1e-6)


def test_grad_does_not_modify_inputs_and_can_repeat():
    x = ml.tensor([1.0, 2.0], requires_grad=True)
    y = ml.reduce_sum(ml.exp(x))
    g1 = arr(ml.grad(y, x)[0]).copy()
    g2 = arr(ml.grad(y, x)[0]).copy()
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(arr(x), [1.0, 2.0])


def test_create_graph_gradient_is_differentiable():
    x = ml.tensor([0.5, -1.0], requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(x * x * x), x, create_graph=True)
    assert g.requires_grad
    (h,) = ml.grad(ml.reduce_sum(g), x)
    np.testing.assert_allclose(arr(h), 6 * arr(x), rtol=1e-6)


def test_relu_gradient_is_differentiable_in_the_upstream_gradient():
    # relu's backward is one op, g where x > 0 (PyTorch's threshold_backward); its own
    # derivative in g is the same mask (what second-order MAML differentiates), in x zero
    x = ml.tensor([0.7, -0.3, 2.0, -1.5, 0.0], requires_grad=True)
    w = ml.tensor([1.0, 2.0, -3.0, 4.0, 5.0], requires_grad=True)
    v = np.array([0.5, -1.0, 2.0, 3.0, -2.0], F32)
    (g,) = ml.grad(ml.reduce_sum(ml.relu(x) * w), x, create_graph=True)
    mask = (arr(x) > 0).astype(F32)
    np.testing.assert_array_equal(arr(g), arr(w) * mask)
    hw, hx = ml.grad(ml.reduce_sum(g * ml.tensor(v)), [w, x], allow_unused=True)
    np.testing.assert_array_equal(arr(hw), v * mask)
    assert hx is None or not np.any(arr(hx))
    # an infinite upstream gradient where relu is flat gives 0 there, not inf * 0 = NaN
    (g_inf,) = ml.grad(ml.reduce_sum(ml.relu(x) * ml.tensor([1.0, np.inf, 1.0, np.inf, np.inf])), x)
    np.testing.assert_array_equal(arr(g_inf), [1.0, 0.0, 1.0, 0.0, 0.0])


# ------------------------------------------------------------------ reference counting and memory


def test_refcounts_small_and_stable():
    x = ml.tensor(np.ones((10,), F32), requires_grad=True)
    base_x = sys.getrefcount(x)
    y = x * 2.0 + 1.0
    assert sys.getrefcount(y) <= 3
    z = ml.reduce_sum(y)
    (g,) = ml.grad(z, x)
    assert sys.getrefcount(g) <= 3
    assert sys.getrefcount(z) <= 3
    del y, z, g
    gc.collect()
    assert sys.getrefcount(x) == base_x
    for _ in range(1000):
        y = ml.reduce_sum(ml.exp(x * 2.0) + x)
        ml.grad(y, x)
        a = np.asarray(y)
        del a
    del y
    gc.collect()
    assert sys.getrefcount(x) == base_x


def test_numpy_view_refcount():
    t = ml.tensor([1.0, 2.0])
    base = sys.getrefcount(t)
    views = [t.numpy() for _ in range(100)]
    del views
    gc.collect()
    assert sys.getrefcount(t) == base


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pytest.skip("no /proc/self/statm")


def test_many_ops_do_not_leak_memory():
    x = ml.tensor(np.ones((1000,), F32), requires_grad=True)
    src = np.ones((1000,), F32)

    def work():
        y = ml.reduce_sum(x * 2.0 + ml.as_tensor(src))
        (g,) = ml.grad(y, x, create_graph=True)
        _ = np.asarray(g)
        _ = ml.tensor(src) + 1.0

    for _ in range(1000):
        work()
    gc.collect()
    before = _rss_bytes()
    for _ in range(10000):
        work()
    gc.collect()
    grown = _rss_bytes() - before
    # each iteration allocates >= 6 tensors of 4 kB: a leak would be > 200 MB
    assert grown < 40 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10^4 iterations"


DEEP_SCRIPT = textwrap.dedent("""
    import metalearn as ml
    x = ml.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(100000):
        y = y + 1.0
    assert abs(y.item() - 100001.0) < 1.0, y.item()
    (g,) = ml.grad(y, x)
    assert g.item() == 1.0, g.item()
    del y, g
    # a deep chain that is never differentiated, released at once
    z = ml.tensor([1.0, 2.0], requires_grad=True)
    for _ in range(100000):
        z = z * 1.0
    del z
    # deep chain of create_graph gradients released
    w = ml.tensor(0.5, requires_grad=True)
    v = w
    for _ in range(20000):
        v = ml.tanh(v) * 1.0
    (gw,) = ml.grad(v, w, create_graph=True)
    del v, gw
    print("ok")
""")


def test_deep_chain_grad_and_release_do_not_overflow_stack():
    # run in a child process: a C stack overflow would kill the whole test session
    r = subprocess.run(
        [sys.executable, "-c", DEEP_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, (
        f"child died with {r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr[-3000:]}"
    )
    assert r.stdout.strip().endswith("ok")


def test_grad_mode_is_thread_local():
    import threading

    seen = {}

    def worker():
        x = ml.tensor([1.0], requires_grad=True)
        seen["enabled"] = ml.is_grad_enabled()
        seen["requires_grad"] = (x * 2.0).requires_grad

    with ml.no_grad():
        th = threading.Thread(target=worker)
        th.start()
        th.join()
    assert seen == {"enabled": True, "requires_grad": True}


def test_numpy_reductions_accept_a_tensor():
    """np.mean / np.sum / np.max call the tensor's methods with dtype= and out=."""
    t = ml.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert float(np.mean(t)) == 2.5
    np.testing.assert_array_equal(np.asarray(np.sum(t, axis=0)), [3, 5, 7])
    assert float(np.max(t)) == 5.0
    with pytest.raises(TypeError, match="out=None"):
        t.sum(out=np.zeros(3, np.float32))


def test_large_gather_over_threads_matches_numpy():
    """A gather of many rows (a meta-batch of images) is split over the thread pool: the
    same rows as NumPy's take, negative indices included, for 1 and 2 threads."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 28, 28)).astype(F32)
    idx = rng.integers(-500, 500, 600)
    prev = ml.get_num_threads()
    try:
        for threads in (1, 2):
            ml.set_num_threads(threads)
            got = ml.gather(ml.tensor(x), idx)
            np.testing.assert_array_equal(arr(got), np.take(x, idx, axis=0))
    finally:
        ml.set_num_threads(prev)


@pytest.mark.parametrize("ta,tb", [(False, True), (True, False), (False, False)])
def test_batched_matmul_over_threads_matches_one_thread_and_numpy(ta, tb):
    """Many small products (MAML's per-task corrections) run as batch ranges over the
    thread pool: bit-identical to one thread, equal to NumPy, broadcast batch dims too."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, 8, 784, 75) if ta else (4, 8, 75, 784)).astype(F32)
    b = rng.standard_normal((8, 5, 784) if tb else (8, 784, 5)).astype(F32)
    prev = ml.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            ml.set_num_threads(threads)
            outs.append(
                arr(ml.matmul(ml.tensor(a), ml.tensor(b), transpose_a=ta, transpose_b=tb)).copy()
            )
    finally:
        ml.set_num_threads(prev)
    np.testing.assert_array_equal(outs[0], outs[1])
    an = np.swapaxes(a, -1, -2) if ta else a
    bn = np.swapaxes(b, -1, -2) if tb else b
    np.testing.assert_allclose(outs[0], np.matmul(an.astype(np.float64), bn), rtol=1e-4, atol=1e-3)
