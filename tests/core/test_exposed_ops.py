"""The public C ops that Python could not reach before (ml_step, ml_add_scalar,
ml_mul_scalar, ml_pad_axis, ml_scatter_add, ml_pick): values against NumPy, gradients
against central differences, the op each records, and refusals of bad input."""

import inspect

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core
from tests.helpers import F32

RNG = np.random.default_rng(19)


def _grad_fd(f, x0, eps=1e-2):
    """Central differences of the scalar f at x0 (float64 sums of float32 values). For the
    quadratic losses below (sum(w * op(x)^2) with op linear in x) they are exact but for
    rounding."""
    g = np.zeros(x0.shape)
    flat = g.reshape(-1)
    for i in range(x0.size):
        xp, xm = x0.copy(), x0.copy()
        xp.reshape(-1)[i] += eps
        xm.reshape(-1)[i] -= eps
        flat[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


def _check_grad(op, x0):
    """d/dx sum(w * op(x)^2) from ml.grad against central differences."""
    w = RNG.standard_normal(np.shape(op(ml.tensor(x0)).numpy())).astype(F32)

    def loss_np(xv):
        y = op(ml.tensor(xv.astype(F32))).numpy().astype(np.float64)
        return float(np.sum(w * y * y))

    x = ml.tensor(x0, requires_grad=True)
    y = op(x)
    (gx,) = ml.grad(ml.reduce_sum(ml.mul(w, ml.square(y))), [x])
    np.testing.assert_allclose(gx.numpy(), _grad_fd(loss_np, x0), rtol=2e-3, atol=2e-3)
    return y


def test_each_is_exported_with_its_text_signature_and_a_docstring():
    sigs = {
        "step": "(x, threshold=0.0)",
        "add_scalar": "(x, value)",
        "mul_scalar": "(x, value)",
        "pad_axis": "(x, axis, start, size)",
        "scatter_add": "(x, indices, axis, size)",
        "pick": "(x, labels)",
    }
    for name, sig in sigs.items():
        fn = getattr(ml, name)
        assert fn is getattr(_core, name)
        assert str(inspect.signature(fn)) == sig
        assert len(fn.__doc__.split("--\n\n")[-1]) > 20, name


# ---------------------------------------------------------------------------- step


def test_step_is_one_above_the_threshold_with_a_zero_gradient():
    x0 = np.array([[-1.0, 0.0, 0.5], [0.7, 2.0, np.nan]], F32)
    for t in (0.0, 0.5, -3.0):
        np.testing.assert_array_equal(ml.step(x0, t).numpy(), (x0 > t).astype(F32))
    np.testing.assert_array_equal(ml.step(x0).numpy(), (x0 > 0).astype(F32))
    x = ml.tensor(x0[:, :2], requires_grad=True)
    y = ml.step(x, threshold=0.5)
    assert y.op == "step"
    # piecewise constant: zeros, not "unused" (as TensorFlow and PyTorch)
    (g,) = ml.grad(ml.reduce_sum(y), [x])
    np.testing.assert_array_equal(g.numpy(), np.zeros((2, 2), F32))


# ------------------------------------------------------------- add_scalar, mul_scalar


@pytest.mark.parametrize("value", [0.0, 1.5, -3.25])
def test_add_and_mul_scalar_match_numpy_bit_for_bit(value):
    x0 = RNG.standard_normal((3, 4)).astype(F32)
    np.testing.assert_array_equal(ml.add_scalar(x0, value).numpy(), x0 + F32(value))
    np.testing.assert_array_equal(ml.mul_scalar(x0, value).numpy(), x0 * F32(value))


def test_add_and_mul_scalar_gradients():
    x0 = RNG.standard_normal((2, 3)).astype(F32)
    assert _check_grad(lambda x: ml.add_scalar(x, 0.75), x0).op == "add_scalar"
    assert _check_grad(lambda x: ml.mul_scalar(x, -1.5), x0).op == "mul_scalar"
    # d(value * x)/dx = value, to second order through create_graph
    x = ml.tensor(x0, requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(ml.square(ml.mul_scalar(x, 3.0))), [x], create_graph=True)
    np.testing.assert_allclose(g.numpy(), 18.0 * x0, rtol=1e-6)
    (h,) = ml.grad(ml.reduce_sum(g), [x])
    np.testing.assert_allclose(h.numpy(), np.full_like(x0, 18.0))


# ---------------------------------------------------------------------------- pad_axis


@pytest.mark.parametrize("axis,start,size", [(0, 1, 4), (1, 0, 3), (-1, 2, 6), (1, 3, 6)])
def test_pad_axis_matches_numpy_pad(axis, start, size):
    x0 = RNG.standard_normal((2, 3)).astype(F32)
    a = axis % 2
    width = [(0, 0), (0, 0)]
    width[a] = (start, size - start - x0.shape[a])
    np.testing.assert_array_equal(ml.pad_axis(x0, axis, start, size).numpy(), np.pad(x0, width))


def test_pad_axis_gradient_is_the_narrowed_upstream():
    x0 = RNG.standard_normal((3, 2)).astype(F32)
    assert _check_grad(lambda x: ml.pad_axis(x, 0, 1, 5), x0).op == "pad_axis"


# ------------------------------------------------------------------------- scatter_add


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_add_matches_numpy_add_at(axis):
    x0 = RNG.standard_normal((4, 4)).astype(F32)
    idx = np.array([2, 0, 2, -1])
    size = 5
    a = axis % 2
    shape = list(x0.shape)
    shape[a] = size
    want = np.zeros(shape, np.float64)
    for i, k in enumerate(idx):  # repeated indices add up, in index order
        sel = [slice(None)] * 2
        sel[a] = k % size
        src = [slice(None)] * 2
        src[a] = i
        want[tuple(sel)] += x0[tuple(src)]
    np.testing.assert_allclose(ml.scatter_add(x0, idx, axis, size).numpy(), want, rtol=1e-6)


def test_scatter_add_is_gathers_transpose():
    x0 = RNG.standard_normal((3, 2)).astype(F32)
    idx = [1, 3, 1]
    y = _check_grad(lambda x: ml.scatter_add(x, idx, 0, 4), x0)
    assert y.op == "scatter_add"
    # <scatter_add(x), g> == <x, gather(g)>
    g = RNG.standard_normal((4, 2)).astype(F32)
    lhs = np.sum(ml.scatter_add(x0, idx, 0, 4).numpy() * g)
    rhs = np.sum(x0 * ml.gather(g, idx, 0).numpy())
    assert lhs == pytest.approx(rhs, rel=1e-5)


# -------------------------------------------------------------------------------- pick


def test_pick_matches_take_along_axis():
    x0 = RNG.standard_normal((2, 3, 5)).astype(F32)
    labels = RNG.integers(0, 5, size=(2, 3))
    want = np.take_along_axis(x0, labels[..., None], axis=-1)[..., 0]
    np.testing.assert_array_equal(ml.pick(x0, labels).numpy(), want)
    # float labels holding integers, as the losses take them
    np.testing.assert_array_equal(ml.pick(x0, labels.astype(F32)).numpy(), want)


def test_pick_gradient_reaches_the_picked_entries_only():
    x0 = RNG.standard_normal((4, 3)).astype(F32)
    labels = np.array([2, 0, 0, 1])
    assert _check_grad(lambda x: ml.pick(x, labels), x0).op == "pick"


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x: ml.step(x, "high"), TypeError, "must be real number"),
        (lambda x: ml.add_scalar(x), TypeError, "value"),
        (lambda x: ml.mul_scalar("abc", 2.0), TypeError, "^mul_scalar"),
        (lambda x: ml.pad_axis(x, 0, 2, 3), ValueError, "pad_axis: 2 rows at start 2 do not fit"),
        (lambda x: ml.pad_axis(x, 2, 0, 3), ValueError, "pad_axis"),
        (
            lambda x: ml.scatter_add(x, [0, 5], 0, 3),
            ValueError,
            "scatter_add: index 5 is out of range",
        ),
        (lambda x: ml.scatter_add(x, [0, 1, 2], 0, 3), ValueError, "scatter_add: 3 indices"),
        (lambda x: ml.scatter_add(x, [[0, 1]], 0, 3), ValueError, "1-D"),
        (lambda x: ml.scatter_add(x, [0.5, 1], 0, 3), ValueError, "integer"),
        (lambda x: ml.pick(x, [0, 3]), ValueError, "label 3 at position 1 is outside"),
        (
            lambda x: ml.pick(x, [[0, 1]]),
            ValueError,
            "pick: labels of shape \\(1, 2\\) for x of shape",
        ),
        (lambda x: ml.pick(x, [0]), ValueError, "pick: labels of shape \\(1,\\)"),
        (lambda x: ml.pick(ml.tensor(1.0), []), ValueError, "pick"),
    ],
)
def test_bad_input_is_refused_naming_the_op(call, exc, match):
    x = ml.tensor(np.arange(6, dtype=F32).reshape(2, 3))
    before = x.numpy().copy()
    with pytest.raises(exc, match=match):
        call(x)
    np.testing.assert_array_equal(x.numpy(), before)
