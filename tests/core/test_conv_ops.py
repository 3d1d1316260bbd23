"""Layer ops of the C core: conv2d, max/avg pooling, global average pooling, batch norm.

* forward against naive NumPy loops (float64), channels-last as Keras, with Keras/TF 'same'
  padding;
* central-difference gradient checks, first and second order (the checker of
  test_gradcheck.py: each asserts a non-trivial gradient);
* PyTorch fixtures (tests/reference/ops_conv.npz, made by generate_conv.py): forward,
  gradient, grad-of-grad and the backward's own backward (jvp);
* errors name the shapes and change nothing.
"""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core
from tests.core.test_gradcheck import distinct, gradcheck
from tests.helpers import F32, REFERENCE as REF


# ------------------------------------------------------------ NumPy references


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(n, k, s, padding):
    if padding == "valid":
        return (n - k) // s + 1, 0, 0
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def conv_np(x, k, b=None, strides=1, padding="valid"):
    x = np.asarray(x, np.float64)
    k = np.asarray(k, np.float64)
    sh, sw = _pair(strides)
    N, H, W, C = x.shape
    KH, KW, _, Fo = k.shape
    OH, pt, pb = _pads(H, KH, sh, padding)
    OW, pl, pr = _pads(W, KW, sw, padding)
    xp = np.zeros((N, H + pt + pb, W + pl + pr, C))
    xp[:, pt : pt + H, pl : pl + W] = x
    y = np.zeros((N, OH, OW, Fo))
    for i in range(OH):
        for j in range(OW):
            win = xp[:, i * sh : i * sh + KH, j * sw : j * sw + KW, :]
            y[:, i, j, :] = np.tensordot(win, k, axes=([1, 2, 3], [0, 1, 2]))
    if b is not None:
        y += np.asarray(b, np.float64)
    return y


def pool_np(x, pool=2, strides=None, padding="valid", kind="max"):
    x = np.asarray(x, np.float64)
    ph, pw = _pair(pool)
    sh, sw = _pair(strides if strides is not None else (ph, pw))
    N, H, W, C = x.shape
    OH, pt, _ = _pads(H, ph, sh, padding)
    OW, pl, _ = _pads(W, pw, sw, padding)
    y = np.zeros((N, OH, OW, C))
    for i in range(OH):
        for j in range(OW):
            h0, w0 = i * sh - pt, j * sw - pl
            win = x[:, max(h0, 0) : min(h0 + ph, H), max(w0, 0) : min(w0 + pw, W), :]
            y[:, i, j, :] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return y


def bn_np(x, gamma, beta, eps=1e-3):
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    m = x.mean(axes)
    v = ((x - m) ** 2).mean(axes)
    return (x - m) / np.sqrt(v + eps) * gamma + beta, m, v


def _rng(seed=0):
    return np.random.default_rng(seed)


def N(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


# --------------------------------------------------------------------- forward

CONV_CASES = [
    # x shape, kernel shape, strides, padding
    ((2, 6, 5, 3), (3, 3, 3, 4), 1, "valid"),
    ((2, 6, 5, 3), (3, 3, 3, 4), 1, "same"),
    ((2, 7, 6, 2), (3, 3, 2, 3), 2, "same"),
    ((2, 7, 6, 2), (3, 3, 2, 3), 2, "valid"),
    ((1, 8, 9, 2), (2, 4, 2, 3), (2, 3), "same"),
    ((1, 5, 5, 2), (4, 4, 2, 2), 1, "same"),
    ((3, 4, 4, 5), (1, 1, 5, 2), 1, "valid"),
    ((1, 3, 3, 1), (5, 5, 1, 2), 1, "same"),
    ((2, 28, 28, 1), (3, 3, 1, 8), 1, "same"),
    ((3, 14, 14, 16), (3, 3, 16, 16), 1, "same"),
]


@pytest.mark.parametrize("xs,ks,s,pad", CONV_CASES)
def test_conv2d_forward(xs, ks, s, pad):
    rng = _rng(1)
    x, k, b = N(rng, *xs), N(rng, *ks), N(rng, ks[-1])
    y = _core.conv2d(x, k, b, strides=s, padding=pad)
    ref = conv_np(x, k, b, s, pad)
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4 * max(1, np.abs(ref).max()))
    y2 = _core.conv2d(x, k, strides=s, padding=pad)
    np.testing.assert_allclose(
        np.asarray(y2),
        conv_np(x, k, None, s, pad),
        rtol=1e-4,
        atol=1e-4 * max(1, np.abs(ref).max()),
    )


def test_conv2d_large_batch_chunks():
    # many images: the im2col buffer is processed in chunks; every chunk must be right
    rng = _rng(2)
    x, k = N(rng, 40, 14, 14, 16), N(rng, 3, 3, 16, 8)
    y = np.asarray(_core.conv2d(x, k, padding="same"))
    ref = conv_np(x, k, None, 1, "same")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # gradients over several chunks too
    xt, kt = ml.tensor(x, requires_grad=True), ml.tensor(k, requires_grad=True)
    w = N(rng, *ref.shape)
    gx, gk = ml.grad(ml.reduce_sum(_core.conv2d(xt, kt, padding="same") * ml.tensor(w)), [xt, kt])
    # adjoint identities: <w, conv(x, k)> = <gx, x> = <gk, k>
    lhs = float(np.sum(w * ref))
    assert np.isclose(float(np.sum(np.asarray(gx, np.float64) * x)), lhs, rtol=1e-4)
    assert np.isclose(float(np.sum(np.asarray(gk, np.float64) * k)), lhs, rtol=1e-4)


POOL_CASES = [
    ((2, 6, 6, 3), 2, None, "valid"),
    ((2, 5, 7, 2), 3, 2, "same"),
    ((2, 5, 7, 2), 3, 2, "valid"),
    ((1, 6, 5, 2), (3, 2), 1, "valid"),
    ((1, 4, 5, 2), 2, 1, "same"),
    ((2, 7, 7, 3), 2, None, "same"),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs,p,s,pad", POOL_CASES)
def test_pool_forward(kind, xs, p, s, pad):
    x = N(_rng(3), *xs)
    fn = _core.max_pool2d if kind == "max" else _core.avg_pool2d
    y = fn(x, pool_size=p, strides=s, padding=pad)
    ref = pool_np(x, p, s, pad, kind)
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-6)


def test_pool_defaults():
    x = N(_rng(4), 1, 4, 4, 1)
    np.testing.assert_allclose(np.asarray(_core.max_pool2d(x)), pool_np(x, 2), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(_core.avg_pool2d(x)), pool_np(x, 2, kind="avg"), rtol=1e-6
    )


def test_avg_pool_same_counts_only_valid():
    x = np.ones((1, 3, 3, 1), F32)
    y = np.asarray(_core.avg_pool2d(x, 2, 1, "same"))
    np.testing.assert_array_equal(y, np.ones((1, 3, 3, 1)))  # no zeros averaged in


def test_max_pool_ties_first_max():
    x = ml.tensor(np.full((1, 2, 2, 1), 3.0, F32), requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(_core.max_pool2d(x)), [x])
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[1, 0], [0, 0]])


def test_max_pool_same_never_picks_padding():
    x = np.full((1, 3, 3, 1), -5.0, F32)
    y = np.asarray(_core.max_pool2d(x, 2, 2, "same"))
    np.testing.assert_array_equal(y, np.full((1, 2, 2, 1), -5.0))


def test_global_avg_pool():
    x = N(_rng(5), 2, 4, 3, 5)
    np.testing.assert_allclose(np.asarray(_core.global_avg_pool2d(x)), x.mean((1, 2)), rtol=1e-5)
    assert _core.global_avg_pool2d(x, keepdims=True).shape == (2, 1, 1, 5)
    np.testing.assert_allclose(
        np.asarray(ml.reduce_mean(ml.tensor(x), axis=(1, 2))), x.mean((1, 2)), rtol=1e-5
    )


def test_batch_norm_training_forward_and_moving_update():
    rng = _rng(6)
    x = N(rng, 4, 3, 3, 2) * 2 + 1
    gamma, beta = N(rng, 2) + 1, N(rng, 2)
    mm0, mv0 = N(rng, 2), np.abs(N(rng, 2)) + 0.5
    mm, mv = ml.tensor(mm0), ml.tensor(mv0)
    v0 = mm._version
    y = _core.batch_norm(x, gamma, beta, mm, mv, training=True)
    ref, m, v = bn_np(x, gamma, beta)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mm), mm0 * 0.99 + m * 0.01, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mv), mv0 * 0.99 + v * 0.01, rtol=1e-5, atol=1e-6)
    assert mm._version > v0
    # momentum and epsilon
    mm2 = ml.tensor(mm0)
    y = _core.batch_norm(x, gamma, beta, mm2, None, training=True, momentum=0.5, epsilon=0.1)
    np.testing.assert_allclose(np.asarray(y), bn_np(x, gamma, beta, 0.1)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mm2), mm0 * 0.5 + m * 0.5, rtol=1e-5, atol=1e-6)


def test_batch_norm_inference_and_2d():
    rng = _rng(7)
    x = N(rng, 5, 3)
    gamma, beta, mm, mv = N(rng, 3), N(rng, 3), N(rng, 3), np.abs(N(rng, 3)) + 0.5
    mmt, mvt = ml.tensor(mm), ml.tensor(mv)
    y = _core.batch_norm(x, gamma, beta, mmt, mvt, training=False)
    ref = (x - mm) / np.sqrt(mv.astype(np.float64) + 1e-3) * gamma + beta
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mmt), mm)  # inference updates nothing
    y = _core.batch_norm(x, gamma, beta, None, None, training=True)
    np.testing.assert_allclose(np.asarray(y), bn_np(x, gamma, beta)[0], rtol=1e-4, atol=1e-5)
    # no gamma / beta (scale=False, center=False)
    y = _core.batch_norm(x, None, None, None, None, training=True)
    np.testing.assert_allclose(np.asarray(y), bn_np(x, 1.0, 0.0)[0], rtol=1e-4, atol=1e-5)
    # channels-first axis
    x4 = N(rng, 2, 3, 4, 4)
    y = _core.batch_norm(x4, N(rng, 3) * 0 + 1, None, None, None, training=True, axis=1)
    ref = bn_np(np.moveaxis(x4, 1, -1), 1.0, 0.0)[0]
    np.testing.assert_allclose(np.asarray(y), np.moveaxis(ref, -1, 1), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- gradient checks

GRAD_CONV = [
    ((1, 5, 4, 2), (3, 3, 2, 2), 1, "valid"),
    ((1, 5, 4, 2), (3, 3, 2, 2), 1, "same"),
    ((1, 5, 6, 2), (3, 3, 2, 2), 2, "same"),
    ((1, 6, 5, 2), (3, 2, 2, 2), 2, "valid"),
]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("xs,ks,s,pad", GRAD_CONV)
def test_conv2d_gradcheck(order, xs, ks, s, pad):
    rng = _rng(10)
    x, k, b = N(rng, *xs), N(rng, *ks, scale=0.5), N(rng, ks[-1])
    gradcheck(lambda x, k, b: _core.conv2d(x, k, b, strides=s, padding=pad), [x, k, b], order=order)


def test_conv2d_third_order():
    rng = _rng(11)
    x, k = N(rng, 1, 4, 4, 1), N(rng, 3, 3, 1, 2, scale=0.5)
    gradcheck(lambda x, k: _core.conv2d(x, k, strides=2, padding="same"), [x, k], order=3)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("p,s,pad", [(2, None, "valid"), (3, 2, "same"), ((3, 2), 1, "valid")])
def test_max_pool_gradcheck(order, p, s, pad):
    x = distinct(_rng(12), (2, 5, 6, 2))
    g = gradcheck(lambda x: _core.max_pool2d(x, p, s, pad), [x], order=order)
    assert np.count_nonzero(g[0]) > 0


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("p,s,pad", [((15, 17), 3, "valid"), (16, 3, "same")])
def test_max_pool_gradcheck_large_windows(order, p, s, pad):
    # the argmax is the position in the window: a byte up to 255 positions (15 x 17), an
    # int32 above (16 x 16); clipped 'same' windows shift the corner outside the image
    x = distinct(_rng(15), (1, 19, 20, 2))
    np.testing.assert_allclose(
        np.asarray(_core.max_pool2d(x, p, s, pad)), pool_np(x, p, s, pad), rtol=1e-6
    )
    g = gradcheck(lambda x: _core.max_pool2d(x, p, s, pad), [x], order=order)
    assert np.count_nonzero(g[0]) > 0


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("p,s,pad", [(2, None, "valid"), (3, 2, "same"), (2, 1, "same")])
def test_avg_pool_gradcheck(order, p, s, pad):
    x = N(_rng(13), 2, 5, 6, 2)
    gradcheck(lambda x: _core.avg_pool2d(x, p, s, pad), [x], order=order)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("xs", [(4, 3), (3, 3, 2, 2)])
def test_batch_norm_gradcheck(order, xs):
    rng = _rng(14)
    x = N(rng, *xs) * 1.5 + 0.5
    c = xs[-1]
    gamma, beta = N(rng, c) + 1.0, N(rng, c)
    gradcheck(
        lambda x, g, b: _core.batch_norm(x, g, b, None, None, training=True),
        [x, gamma, beta],
        order=order,
        eps=1e-3,
    )


def _bn_grouped_np(x, gamma, beta, eps=1e-3):
    """Each x[g] normalised over every axis but the first and the last (float64)."""
    x64 = x.astype(np.float64)
    axes = tuple(range(1, x.ndim - 1))
    m = x64.mean(axes, keepdims=True)
    v = ((x64 - m) ** 2).mean(axes, keepdims=True)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return (x64 - m) / np.sqrt(v + eps) * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("xs", [(3, 5, 4), (2, 3, 2, 2, 3)])
def test_batch_norm_grouped_forward(xs):
    rng = _rng(16)
    x = N(rng, *xs) * 2 + 1
    g, c = xs[0], xs[-1]
    gamma, beta = N(rng, g, c) + 1, N(rng, g, c)
    y = _core.batch_norm_grouped(x, gamma, beta)
    np.testing.assert_allclose(np.asarray(y), _bn_grouped_np(x, gamma, beta), rtol=1e-4, atol=1e-5)
    y = _core.batch_norm_grouped(x, None, None, epsilon=0.1)
    np.testing.assert_allclose(
        np.asarray(y),
        _bn_grouped_np(x, np.ones((g, c)), np.zeros((g, c)), 0.1),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("order", [1, 2])
def test_batch_norm_grouped_gradcheck(order):
    rng = _rng(17)
    x = N(rng, 2, 4, 3) * 1.5 + 0.5
    gamma, beta = N(rng, 2, 3) + 1.0, N(rng, 2, 3)
    gradcheck(
        lambda x, g, b: _core.batch_norm_grouped(x, g, b), [x, gamma, beta], order=order, eps=1e-3
    )


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(
    "xs,axis,gamma",
    [((4, 3), -1, True), ((3, 3, 2, 2), -1, False), ((2, 3, 2, 2), 1, True)],
    ids=["2d", "last-no-gamma", "first"],
)
def test_batch_norm_higher_order_gradcheck(order, xs, axis, gamma):
    """Batch norm's backward under grad mode is two ops of their own (batch_norm_dx,
    batch_norm_dgamma): at order 2 their one-pass backwards run (grad mode off), at order 3
    their backwards' formulas in differentiable ops. Central differences hold both, with and
    without gamma, with the channel last and with axes after it."""
    rng = _rng(24)
    x = N(rng, *xs) * 1.5 + 0.5
    c = xs[axis]
    beta = N(rng, c)
    if gamma:
        inputs, fn = (
            [x, N(rng, c) + 1.0, beta],
            (lambda x, g, b: _core.batch_norm(x, g, b, None, None, training=True, axis=axis)),
        )
    else:
        inputs, fn = (
            [x, beta],
            (lambda x, b: _core.batch_norm(x, None, b, None, None, training=True, axis=axis)),
        )
    gradcheck(fn, inputs, order=order, eps=1e-3)


def test_batch_norm_grouped_third_order_gradcheck():
    rng = _rng(25)
    x = N(rng, 2, 4, 3) * 1.5 + 0.5
    gamma, beta = N(rng, 2, 3) + 1.0, N(rng, 2, 3)
    gradcheck(
        lambda x, g, b: _core.batch_norm_grouped(x, g, b), [x, gamma, beta], order=3, eps=1e-3
    )


def test_batch_norm_first_order_same_bits_with_grad_mode_on_and_off():
    """dx and dgamma come from the same fused passes whether the backward is recorded (MAML's
    inner step: batch_norm_dx, batch_norm_dgamma) or not (the fused first-order backward)."""
    rng = _rng(26)
    for shape, axis in (((6, 5, 5, 7), -1), ((4, 7, 3, 5), 1)):
        x = ml.tensor(N(rng, *shape) * 2 + 1, requires_grad=True)
        c = shape[axis]
        g = ml.tensor(N(rng, c) + 1, requires_grad=True)
        b = ml.tensor(N(rng, c), requires_grad=True)
        loss = ml.reduce_sum(
            _core.batch_norm(x, g, b, None, None, True, axis=axis) * N(rng, *shape)
        )
        recorded = ml.grad(loss, [x, g], create_graph=True)
        fused = ml.grad(loss, [x, g])
        assert recorded[0].requires_grad and not fused[0].requires_grad
        for r, f in zip(recorded, fused):
            np.testing.assert_array_equal(np.asarray(r), np.asarray(f))


@pytest.mark.parametrize("case", ["last", "first", "no-gamma", "grouped"])
def test_batch_norm_second_order_agrees_with_grad_mode_on_and_off(case):
    """batch_norm_dx's backward has two forms: one fused pass (grad mode off, MAML's outer
    gradient) and its formulas in differentiable ops (grad mode on, for a third order, whose
    central-difference check tests their derivatives but not their values). Both give the
    same second-order gradients of S = <v, dx> for x, the upstream w and gamma."""
    rng = _rng(28)
    shape, axis = ((5, 3, 4, 6), 1) if case == "first" else ((2, 5, 3, 6), -1)
    x = ml.tensor(N(rng, *shape) * 1.5 + 0.5, requires_grad=True)
    w = ml.tensor(N(rng, *shape), requires_grad=True)
    v = ml.tensor(N(rng, *shape))
    c = shape[axis]
    if case == "grouped":
        g = ml.tensor(N(rng, shape[0], c) + 1, requires_grad=True)
        y = _core.batch_norm_grouped(x, g, None, axis=axis)
    else:
        g = None if case == "no-gamma" else ml.tensor(N(rng, c) + 1, requires_grad=True)
        y = _core.batch_norm(x, g, None, None, None, True, axis=axis)
    leaves = [x, w] + ([g] if g is not None else [])
    (dx,) = ml.grad(ml.reduce_sum(y * w), [x], create_graph=True)
    s = ml.reduce_sum(dx * v)
    fused = ml.grad(s, leaves)
    composed = ml.grad(s, leaves, create_graph=True)
    assert composed[0].requires_grad and not fused[0].requires_grad
    for f, k in zip(fused, composed):
        f, k = np.asarray(f), np.asarray(k)
        assert np.abs(f).max() > 1e-2
        np.testing.assert_allclose(k, f, rtol=1e-4, atol=1e-5 * np.abs(f).max())


def _bn_chunk_case(case, seed):
    """The inputs of a large batch norm case (shape, axis, grouped): x, gamma, beta and an
    upstream gradient w, float32; the reduced axes and the shape gamma broadcasts to."""
    shape, axis, grouped = case
    rng = _rng(seed)
    c = shape[axis]
    x = N(rng, *shape) * 2 + 1
    pshape = (shape[0], c) if grouped else (c,)
    gamma, beta = N(rng, *pshape) + 1, N(rng, *pshape)
    w = N(rng, *shape)
    ax = axis % x.ndim
    red = tuple(d for d in range(1 if grouped else 0, x.ndim) if d != ax)
    bshape = [1] * x.ndim
    bshape[ax] = c
    if grouped:
        bshape[0] = shape[0]
    return rng, x, gamma, beta, w, red, tuple(bshape)


def _bn_second_order_np(x, w, v, gamma, red, bshape, eps=1e-3):
    """Of S = <v, dx>, dx batch norm's input gradient for upstream w (float64): dS/dx, dS/dw
    and dS/dgamma by the closed forms of norm.c (the small central-difference checks above
    hold the C to them; they are PyTorch's batchnorm_double_backward terms)."""
    x, w, v = (a.astype(np.float64) for a in (x, w, v))
    gam = gamma.astype(np.float64).reshape(bshape)
    n = x.size // np.prod(bshape)
    m = x.mean(red, keepdims=True)
    inv = 1 / np.sqrt(((x - m) ** 2).mean(red, keepdims=True) + eps)
    xh = (x - m) * inv
    wm, vm = w.mean(red, keepdims=True), v.mean(red, keepdims=True)
    a, p = (w * xh).mean(red, keepdims=True), (v * xh).mean(red, keepdims=True)
    vw = (v * w).mean(red, keepdims=True)
    dx = -gam * inv**2 * (xh * (vw - wm * vm - 3 * a * p) + p * (w - wm) + a * (v - vm))
    dw = gam * inv * (v - vm - xh * p)
    dgam = inv * n * (vw - wm * vm - a * p)
    return dx, dw, dgam


@pytest.mark.parametrize(
    "case",
    [
        ((80, 14, 14, 134), -1, False),
        ((6, 134, 11, 9), 1, False),
        ((2, 75, 6, 9, 134), -1, True),
    ],
    ids=["last", "first", "grouped"],
)
def test_batch_norm_second_order_over_threads_equals_one_thread_and_numpy(case):
    """MAML's outer gradient through a large batch norm: batch_norm_dx's one-pass backward
    runs its sums and outputs over chunks of rows on the thread pool; dS/dx, dS/dw and
    dS/dgamma of S = <v, dx> equal the one-thread run bit for bit and the float64 formulas."""
    shape, axis, grouped = case
    rng, x, gamma, beta, w, red, bshape = _bn_chunk_case(case, 27)
    v = N(rng, *shape)
    prev = ml.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            ml.set_num_threads(threads)
            xt, gt, wt = (ml.tensor(a, requires_grad=True) for a in (x, gamma, w))
            if grouped:
                y = _core.batch_norm_grouped(xt, gt, ml.tensor(beta), axis=axis)
            else:
                y = _core.batch_norm(xt, gt, ml.tensor(beta), None, None, True, axis=axis)
            (dx,) = ml.grad(ml.reduce_sum(y * wt), [xt], create_graph=True)
            grads = ml.grad(ml.reduce_sum(dx * ml.tensor(v)), [xt, wt, gt])
            runs.append([np.asarray(g).copy() for g in grads])
    finally:
        ml.set_num_threads(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    refs = _bn_second_order_np(x, w, v, gamma, red, bshape)
    for got, ref in zip(runs[0], refs):
        ref = ref.reshape(got.shape)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_batch_norm_grouped_first_order_fast_path_and_bad_input():
    """The fused C backward (grad mode off) agrees with the differentiable one; bad shapes
    raise ValueError naming them."""
    rng = _rng(18)
    x = ml.tensor(N(rng, 3, 4, 2), requires_grad=True)
    g = ml.tensor(N(rng, 3, 2) + 1, requires_grad=True)
    b = ml.tensor(N(rng, 3, 2), requires_grad=True)
    w = ml.tensor(N(rng, 3, 4, 2))
    loss = ml.reduce_sum(_core.batch_norm_grouped(x, g, b) * w)
    slow = ml.grad(loss, [x, g, b], create_graph=True)
    fast = ml.grad(loss, [x, g, b])
    for s_, f_ in zip(slow, fast):
        np.testing.assert_allclose(np.asarray(f_), np.asarray(s_), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3, 2\)"):
        _core.batch_norm_grouped(x, N(rng, 2))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        _core.batch_norm_grouped(N(rng, 4, 2))
    with pytest.raises(ValueError, match="group axis"):
        _core.batch_norm_grouped(x, axis=0)
    with pytest.raises(ValueError, match="empty"):
        _core.batch_norm_grouped(np.zeros((2, 0, 3), np.float32))


def test_batch_norm_grouped_over_threads_equals_one_thread_and_numpy():
    """A large grouped batch norm (a meta-batch of 7 tasks, 70k floats) runs its groups over
    the thread pool: forward and fused backward equal the one-thread run bit for bit, and
    the float64 NumPy reference."""
    rng = _rng(19)
    x = N(rng, 7, 75, 134) * 2 + 1
    gamma, beta = N(rng, 7, 134) + 1, N(rng, 7, 134)
    w = N(rng, 7, 75, 134)
    prev = ml.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            ml.set_num_threads(threads)
            xt, gt, bt = (ml.tensor(a, requires_grad=True) for a in (x, gamma, beta))
            y = _core.batch_norm_grouped(xt, gt, bt)
            grads = ml.grad(ml.reduce_sum(y * w), [xt, gt, bt])  # the fused C backward
            runs.append([np.asarray(y).copy()] + [np.asarray(g).copy() for g in grads])
    finally:
        ml.set_num_threads(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(runs[0][0], _bn_grouped_np(x, gamma, beta), rtol=1e-4, atol=1e-4)
    # dbeta is the per-group sum of w; dgamma the per-group sum of w * xhat
    np.testing.assert_allclose(runs[0][3], w.astype(np.float64).sum(1), rtol=1e-4, atol=1e-3)
    xhat = _bn_grouped_np(x, np.ones_like(gamma), np.zeros_like(beta))
    np.testing.assert_allclose(runs[0][2], (w * xhat).sum(1), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "case",
    [
        ((80, 14, 14, 134), -1, False),  # channels last: 62 chunks of 256 rows, the last short
        ((6, 134, 11, 9), 1, False),  # channels first (runs of 99 floats): 3 chunks of 2 rows
        ((2, 75, 6, 9, 134), -1, True),  # 2 groups: over groups on 2 threads, chunks on 3 and 5
    ],
    ids=["last", "first", "grouped"],
)
def test_batch_norm_chunks_over_threads_equal_one_thread_and_numpy(case):
    """A large batch norm with fewer groups than threads (one task's conv layer in MAML's
    task-by-task loop) runs each pass over chunks of its rows on the thread pool, the
    chunks' partial sums added in order: the output, the moving statistics' update and the
    fused backward equal the one-thread run bit for bit, at any thread count, and the
    float64 NumPy reference."""
    shape, axis, grouped = case
    c = shape[axis]
    rng, x, gamma, beta, w, red, bshape = _bn_chunk_case(case, 23)
    mm0, mv0 = N(rng, c), np.abs(N(rng, c)) + 0.5
    prev = ml.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3, 5):
            ml.set_num_threads(threads)
            xt, gt, bt = (ml.tensor(a, requires_grad=True) for a in (x, gamma, beta))
            if grouped:
                y = _core.batch_norm_grouped(xt, gt, bt, axis=axis)
                moving = []
            else:
                mm, mv = ml.tensor(mm0), ml.tensor(mv0)
                y = _core.batch_norm(xt, gt, bt, mm, mv, training=True, axis=axis)
                moving = [np.asarray(mm).copy(), np.asarray(mv).copy()]
            grads = ml.grad(ml.reduce_sum(y * w), [xt, gt, bt])  # the fused C backward
            runs.append([np.asarray(y).copy()] + [np.asarray(g).copy() for g in grads] + moving)
    finally:
        ml.set_num_threads(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    # float64 references: the output, dbeta = sum(w), dgamma = sum(w * xhat), the moving
    # statistics (Keras' momentum 0.99, biased variance)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    m = x64.mean(red, keepdims=True)
    v = ((x64 - m) ** 2).mean(red, keepdims=True)
    xhat = (x64 - m) / np.sqrt(v + 1e-3)
    ref = xhat * gamma.reshape(bshape) + beta.reshape(bshape)
    np.testing.assert_allclose(runs[0][0], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(runs[0][3].ravel(), w64.sum(red).ravel(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        runs[0][2].ravel(), (w64 * xhat).sum(red).ravel(), rtol=1e-4, atol=1e-3
    )
    if not grouped:
        np.testing.assert_allclose(runs[0][4], mm0 * 0.99 + m.ravel() * 0.01, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(runs[0][5], mv0 * 0.99 + v.ravel() * 0.01, rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_survive_values_near_the_float_range():
    """The statistics sum blocks of rows in float first; a block that leaves the float range
    (an outlier of 2e19 squares past it, values of 3e37 sum past it) is summed in double:
    the result matches NumPy's float64 instead of collapsing to beta or NaN."""
    c = 2
    outlier = np.zeros((100, c), np.float32)
    outlier[0] = 2e19
    big = np.full((32, c), 3e37, np.float32)
    big[::2] = 2.9e37
    for x in (outlier, big):
        y = _core.batch_norm(ml.tensor(x), None, None, None, None, training=True, epsilon=1e-3)
        x64 = x.astype(np.float64)
        ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-3)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
        yg = _core.batch_norm_grouped(ml.tensor(x[None]), None, None)
        np.testing.assert_allclose(np.asarray(yg)[0], ref, rtol=1e-4, atol=1e-4)
    # the fused backward with gradients near the float range: dbeta is their sum
    xt = ml.tensor(N(_rng(20), 1, 40, c), requires_grad=True)
    b = ml.tensor(np.zeros((1, c), np.float32), requires_grad=True)
    w = np.full((1, 40, c), 3e37, np.float32)
    w[:, ::2] = -2.9e37
    (db,) = ml.grad(ml.reduce_sum(_core.batch_norm_grouped(xt, None, b) * w), [b])
    np.testing.assert_allclose(np.asarray(db), w.astype(np.float64).sum(1), rtol=1e-5)


def test_conv_net_second_order():
    """conv -> bn -> relu -> maxpool -> conv -> global avg: a MAML-like inner loop graph."""
    rng = _rng(15)
    x = N(rng, 2, 6, 6, 1)
    k1, k2 = N(rng, 3, 3, 1, 2, scale=0.6), N(rng, 3, 3, 2, 2, scale=0.6)

    def net(k1, k2):
        h = _core.conv2d(x, k1, padding="same")
        h = _core.batch_norm(h, None, None, None, None, training=True)
        h = ml.tanh(h)
        h = _core.max_pool2d(h, 2)
        h = _core.conv2d(h, k2, padding="same")
        return _core.global_avg_pool2d(h)

    gradcheck(net, [k1, k2], order=2, eps=1e-3)


# ------------------------------------------------------------------ fixtures


def _load_fixture_cases():
    with np.load(REF / "ops_conv.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    cases = []
    for name in sorted({k.split("/")[0] for k in data}):
        pre = name + "/"
        case = {k[len(pre) :]: v for k, v in data.items() if k.startswith(pre)}
        case["meta"] = json.loads(str(case["meta"]))
        case["id"] = name
        cases.append(case)
    return cases


FIX = _load_fixture_cases()


def _close(actual, expected, rtol, what):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    atol = 1e-5 * max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
    if np.any(expected != 0):
        assert np.any(actual != 0), what


def _run(case):
    meta = case["meta"]
    n = sum(1 for k in case if k.startswith("x") and k[1:].isdigit())
    ts = [ml.tensor(case["x%d" % i], requires_grad=i in meta["diff"]) for i in range(n)]

    def res(spec):
        if isinstance(spec, str) and spec.startswith("$x"):
            return ts[int(spec[2:])]
        if isinstance(spec, list):
            return tuple(spec)
        return spec

    out = getattr(_core, meta["op"])(
        *[res(a) for a in meta["args"]], **{k: res(v) for k, v in meta["kwargs"].items()}
    )
    return ts, out


def test_fixture_file_covers_ops():
    ops = {c["meta"]["op"] for c in FIX}
    assert ops == {"conv2d", "max_pool2d", "avg_pool2d", "batch_norm"}
    assert len(FIX) >= 12


@pytest.mark.parametrize("case", FIX, ids=[c["id"] for c in FIX])
def test_fixture_forward_grad_ggrad(case):
    diff = case["meta"]["diff"]
    ts, out = _run(case)
    _close(out, case["out"], 1e-4, case["id"] + " forward")
    dx = [ts[i] for i in diff]
    w = ml.tensor(case["w"], requires_grad=True)
    grads = ml.grad(ml.reduce_sum(out * w), dx, create_graph=True)
    s2 = None
    for i, g in zip(diff, grads):
        _close(g, case["grad%d" % i], 1e-4, "%s grad%d" % (case["id"], i))
        term = ml.reduce_sum(g * ml.tensor(case["v%d" % i]))
        s2 = term if s2 is None else s2 + term
    second = ml.grad(s2, dx + [w], allow_unused=True)
    for i, g in zip(diff, second[:-1]):
        exp = case["ggrad%d" % i]
        got = np.zeros_like(exp) if g is None else np.asarray(g)
        _close(got, exp, 2e-4, "%s ggrad%d" % (case["id"], i))
    _close(second[-1], case["jvp"], 2e-4, case["id"] + " jvp")


# -------------------------------------------------------------------- errors


def test_conv2d_errors():
    x = np.zeros((2, 28, 28, 3), F32)
    with pytest.raises(
        ValueError,
        match=r"input has 3 channels but kernel expects 1, got shapes "
        r"\(2, 28, 28, 3\) and \(3, 3, 1, 64\)",
    ):
        _core.conv2d(x, np.zeros((3, 3, 1, 64), F32))
    with pytest.raises(ValueError, match="strides must be positive"):
        _core.conv2d(x, np.zeros((3, 3, 3, 4), F32), strides=0)
    with pytest.raises(ValueError, match="strides must be positive"):
        _core.conv2d(x, np.zeros((3, 3, 3, 4), F32), strides=(1, -2))
    with pytest.raises(ValueError, match=r"larger than the input.*\(2, 28, 28, 3\)"):
        _core.conv2d(x, np.zeros((29, 3, 3, 4), F32))
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        _core.conv2d(x, np.zeros((3, 3, 3, 4), F32), padding="full")
    with pytest.raises(ValueError, match=r"4-D input.*\(28, 28, 3\)"):
        _core.conv2d(x[0], np.zeros((3, 3, 3, 4), F32))
    with pytest.raises(ValueError, match=r"4-D kernel"):
        _core.conv2d(x, np.zeros((3, 3, 3), F32))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        _core.conv2d(x, np.zeros((3, 3, 3, 4), F32), np.zeros(5, F32))
    with pytest.raises(ValueError, match="strides must be an int or a pair"):
        _core.conv2d(x, np.zeros((3, 3, 3, 4), F32), strides=(1, 2, 3))
    # 'same' never gives an empty output
    assert _core.conv2d(
        np.zeros((1, 2, 2, 1), F32), np.zeros((5, 5, 1, 1), F32), padding="same"
    ).shape == (1, 2, 2, 1)


def test_pool_errors():
    x = np.zeros((1, 3, 3, 2), F32)
    for fn in (_core.max_pool2d, _core.avg_pool2d):
        with pytest.raises(ValueError, match="pool size must be positive"):
            fn(x, 0)
        with pytest.raises(ValueError, match="strides must be positive"):
            fn(x, 2, (0, 1))
        with pytest.raises(ValueError, match=r"window 4x4 is larger than the input 3x3"):
            fn(x, 4)
        with pytest.raises(ValueError, match=r"4-D input"):
            fn(np.zeros((3, 3), F32))
        assert fn(x, 4, padding="same").shape == (1, 1, 1, 2)


def test_batch_norm_errors_change_nothing():
    x = N(_rng(8), 4, 3)
    mm = ml.tensor(np.zeros(3, F32))
    mv = ml.tensor(np.ones(3, F32))
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*got \(4,\)"):
        _core.batch_norm(x, np.ones(4, F32), None, mm, mv, training=True)
    with pytest.raises(ValueError, match=r"moving_variance must have shape \(3,\)"):
        _core.batch_norm(x, None, None, mm, ml.tensor(np.ones(2, F32)), training=True)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        _core.batch_norm(x, None, None, mm, mv, training=True, axis=3)
    with pytest.raises(ValueError, match="inference mode needs"):
        _core.batch_norm(x, None, None, None, None, training=False)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        _core.batch_norm(np.zeros(3, F32), None, None, None, None, training=True)
    with pytest.raises(TypeError, match="updated in place"):
        _core.batch_norm(x, None, None, np.zeros(3, F32), None, training=True)
    np.testing.assert_array_equal(np.asarray(mm), 0)
    np.testing.assert_array_equal(np.asarray(mv), 1)


def test_max_pool_nan_propagates():
    x = np.arange(16, dtype=F32).reshape(1, 4, 4, 1)
    x[0, 1, 0, 0] = np.nan
    y = np.asarray(_core.max_pool2d(x, 2))
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 0])
    xt = ml.tensor(x, requires_grad=True)
    w = ml.tensor(np.ones((1, 2, 2, 1), F32))
    (g,) = ml.grad(ml.reduce_sum(_core.max_pool2d(xt, 2) * w), [xt])
    assert np.asarray(g)[0, 1, 0, 0] == 1.0  # the first NaN of the window is its max


def test_conv_strides_default_and_list():
    rng = _rng(20)
    x, k = N(rng, 1, 5, 5, 2), N(rng, 3, 3, 2, 2)
    np.testing.assert_allclose(
        np.asarray(_core.conv2d(x, k, None, [2, 1], "SAME")),
        conv_np(x, k, None, (2, 1), "same"),
        rtol=1e-4,
        atol=1e-5,
    )
    assert _core.conv2d(x, k, strides=None).shape == (1, 3, 3, 2)


# ------------------------------------------- Winograd F(2x2, 3x3) (kernels/winograd.c)
# 3x3 kernels at stride 1 with 'same' padding, >= 16 channels each way, images >= 4x4 run
# through Winograd: forward, input gradient and kernel gradient, each against float64
# references. The error bound is element-wise, against the same formula on absolute
# values (|x| * |k| for the forward): 2e-6 of it, about 16 float32 ulps of the sum of the
# absolute terms; measured at most 2.7e-7 (the direct path's, in float32, up to ~2e-7).

WINO = [
    ((2, 8, 8, 16), 16),
    ((3, 7, 5, 16), 24),  # odd sizes: the last row and column of tiles half outside
    ((2, 4, 9, 32), 17),  # a channel count that is not a multiple of 8
    ((2, 14, 14, 64), 64),  # Omniglot conv4's second block, several chunks of tiles
    # 96 + 112 channels: the wide layers' chunks of 128 tiles (ResNet-12's), 3 chunks (the
    # last one partial) summed in 3 kernel-gradient parts
    ((12, 10, 9, 96), 112),
]


def _wino_refs(x, k, g):
    """float64 forward conv2d(x, k), input gradient and kernel gradient for upstream g."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y, dx, dk = np.zeros(g.shape), np.zeros(x.shape), np.zeros(k.shape)
    for i in range(3):
        for j in range(3):
            win = xp[:, i : i + h, j : j + w, :]
            y += np.tensordot(win, k[i, j], axes=([3], [0]))
            dk[i, j] = np.tensordot(win, g, axes=([0, 1, 2], [0, 1, 2]))
            dx += np.tensordot(
                gp[:, 2 - i : 2 - i + h, 2 - j : 2 - j + w, :], k[i, j], axes=([3], [1])
            )
    return y, dx, dk


@pytest.mark.parametrize("xs,f", WINO)
def test_conv2d_winograd_against_float64(xs, f):
    _wino_check(xs, f, 2e-6)  # (defined with the F(4x4) tests below)


@pytest.mark.parametrize(
    "xs,f", [((2, 14, 14, 64), 64), ((12, 10, 9, 96), 112), ((3, 21, 21, 32), 32)]
)
def test_conv2d_winograd_same_bits_for_any_thread_count(xs, f):
    """The chunks of tiles and the kernel gradient's parts are the shape's (narrow and wide
    layers alike): forward, input and kernel gradient are the same bits on 1, 2 and 3
    threads (ARCHITECTURE's determinism contract)."""
    rng = _rng(33)
    x = rng.standard_normal(xs).astype(F32)
    k = (rng.standard_normal((3, 3, xs[-1], f)) / np.sqrt(9 * xs[-1])).astype(F32)
    g = ml.tensor(rng.standard_normal(xs[:3] + (f,)).astype(F32))
    prev = ml.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            ml.set_num_threads(threads)
            xt, kt = ml.tensor(x, requires_grad=True), ml.tensor(k, requires_grad=True)
            y = _core.conv2d(xt, kt, strides=1, padding="same")
            runs.append([np.asarray(a) for a in (y, *ml.grad(y, [xt, kt], [g]))])
    finally:
        ml.set_num_threads(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("order", [1, 2])
def test_conv2d_winograd_gradcheck(order):
    rng = _rng(31)
    x, k = N(rng, 1, 4, 4, 16), N(rng, 3, 3, 16, 16, scale=0.2)
    gradcheck(lambda x, k: _core.conv2d(x, k, strides=1, padding="same"), [x, k], order=order)


def test_conv2d_winograd_second_order_against_float64():
    """MAML's term: d/dk <dx, H> with dx = input_grad(G, k) = <G, conv2d(H, k)>, so the
    exact answer is kernel_grad(H, G), through the Winograd kernel gradient of the
    recorded input gradient."""
    _wino_second_order_check((2, 8, 6), 2e-6)


def _wino_second_order_check(hw, tol, algo=0):
    """d/dk <dx, H> against kernel_grad(H, G) in float64, with every 3x3 'same' conv by
    `algo` (0: the shape's table)."""
    rng = _rng(32)
    x = rng.standard_normal(hw + (16,)).astype(F32)
    k = (rng.standard_normal((3, 3, 16, 24)) / 12).astype(F32)
    G = rng.standard_normal(hw + (24,)).astype(F32)
    H = rng.standard_normal(x.shape).astype(F32)
    with _Force(algo):
        xt, kt = ml.tensor(x, requires_grad=True), ml.tensor(k, requires_grad=True)
        y = _core.conv2d(xt, kt, strides=1, padding="same")
        (dx,) = ml.grad(y, [xt], [ml.tensor(G)], create_graph=True)
        (dk2,) = ml.grad(ml.reduce_sum(dx * ml.tensor(H)), [kt])
    _, _, ref = _wino_refs(H.astype(np.float64), k.astype(np.float64), G.astype(np.float64))
    _, _, s = _wino_refs(np.abs(H).astype(np.float64), np.abs(k), np.abs(G).astype(np.float64))
    err = np.abs(np.asarray(dk2, np.float64) - ref)
    assert np.all(err <= tol * s), np.max(err / (tol * s))


@pytest.mark.parametrize("p,hw", [(2, (7, 7)), ((3, 2), (8, 7)), (2, (6, 4))])
def test_max_pool_tiling_backward_writes_every_element(p, hw):
    # windows that tile the input (stride = window, 'valid') take the scatter that writes
    # each input element once, the gradient at its window's first maximum and zero
    # elsewhere, rows and columns no window covers (7 = 3 x 2 + 1) included, into a block
    # the pool hands back dirty; a -0 gradient lands as +0 (0 + g, as the scatter-add)
    rng = _rng(21)
    ph, pw = (p, p) if isinstance(p, int) else p
    h, w = hw
    xv = rng.integers(-3, 3, size=(3, h, w, 5)).astype(np.float32)  # ties in windows
    oh, ow = h // ph, w // pw
    gv = rng.standard_normal((3, oh, ow, 5)).astype(np.float32)
    gv[0, 0, 0, :] = -0.0
    want = np.zeros_like(xv)
    for n in range(3):
        for i in range(oh):
            for j in range(ow):
                for c in range(5):
                    win = xv[n, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw, c]
                    a, b = np.unravel_index(np.argmax(win), win.shape)  # first maximum
                    want[n, i * ph + a, j * pw + b, c] += gv[n, i, j, c]
    for fill in (7.0, np.nan):  # dirty blocks of dx's size, freed into the pool first
        junk = [ml.tensor(np.full(xv.shape, fill, np.float32)) * 1.0 for _ in range(4)]
        del junk
        x = ml.tensor(xv, requires_grad=True)
        (dx,) = ml.grad(ml.reduce_sum(_core.max_pool2d(x, p) * ml.tensor(gv)), [x])
        got = np.asarray(dx)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# ------------------------------------------- Winograd F(4x4, 3x3) (kernels/winograd.c)
# 36 multiplies for 16 outputs, with interpolation points 0, +-1, +-2 and infinity: its
# transforms multiply by up to 5 (input) and 8 (output), so it is less accurate than
# F(2x2). Measured against float64 at the layers' shapes (random normal inputs, kernels
# scaled by 1/sqrt(9 c)), per element relative to the same formula on absolute values:
# forward <= 3.3e-6, input gradient <= 3.3e-6, kernel gradient <= 1.7e-6 (F(2x2): <= 1.5e-7,
# direct <= 1.6e-7). Asserted: 1e-5. A wrong transform coefficient errs by the order of
# the terms themselves (checked: each of B^T's, A^T's and G's coefficients changed in turn
# fails this bound by a factor of >= 1e3).
#
# The shape's table (ml__wino_tile) sends only some layers to F(4x4); the kernels are
# tested at every kind of shape through the benchmarks' switch ml__wino_force.

WINO4_TOL = 1e-5


class _Force:
    """with _Force(4): every 3x3 stride-1 'same' conv2d by F(4x4) (1 direct, 2 F(2x2))."""

    def __init__(self, algo):
        import ctypes

        self.flag = ctypes.c_int.in_dll(ctypes.CDLL(_core.__file__), "ml__wino_force")
        self.algo = algo

    def __enter__(self):
        self.flag.value = self.algo

    def __exit__(self, *exc):
        self.flag.value = 0


def _wino_check(xs, f, tol, seed=30):
    rng = _rng(seed)
    x = rng.standard_normal(xs).astype(F32)
    k = (rng.standard_normal((3, 3, xs[-1], f)) / np.sqrt(9 * xs[-1])).astype(F32)
    b = rng.standard_normal(f).astype(F32)
    g = rng.standard_normal(xs[:3] + (f,)).astype(F32)
    xt, kt = ml.tensor(x, requires_grad=True), ml.tensor(k, requires_grad=True)
    y = _core.conv2d(xt, kt, ml.tensor(b), strides=1, padding="same")
    dx, dk = ml.grad(y, [xt, kt], [ml.tensor(g)])
    refs = _wino_refs(*(a.astype(np.float64) for a in (x, k, g)))
    scale = _wino_refs(*(np.abs(a).astype(np.float64) for a in (x, k, g)))
    worst = {}
    for name, got, ref, s in zip(("forward", "dx", "dk"), (y, dx, dk), refs, scale):
        if name == "forward":
            ref, s = ref + b, s + np.abs(b)
        err = np.abs(np.asarray(got, np.float64) - ref)
        worst[name] = float(np.max(err / s))
        assert np.all(err <= tol * s), f"{name}: max error / bound {np.max(err / (tol * s))}"
    return worst


WINO4 = [
    ((2, 16, 16, 32), 32),
    ((2, 21, 21, 32), 32),  # 21 = 5 tiles and one pixel: the last tiles 3/4 outside
    ((3, 10, 10, 64), 64),  # 10 = 2 tiles and a half
    ((4, 7, 5, 16), 24),
    ((5, 5, 5, 32), 32),
    ((3, 3, 3, 16), 16),  # one tile, most of it outside the image
    ((2, 9, 6, 5), 11),  # channel counts below 8 and not a multiple of 8
    ((2, 14, 14, 64), 64),  # Omniglot conv4's second block, several chunks of tiles
    ((4, 10, 9, 96), 112),  # wide layers' chunks of 128 tiles, kernel gradient in parts
]


@pytest.mark.parametrize("xs,f", WINO4)
def test_conv2d_winograd4_against_float64(xs, f):
    with _Force(4):
        _wino_check(xs, f, WINO4_TOL)


def test_conv2d_winograd4_bound_is_tight_enough_to_matter():
    """The F(4x4) bound catches an F(2x2)-sized error on neither side: F(2x2) and the direct
    path are within F(2x2)'s 2e-6, and F(4x4)'s measured error stays above a tenth of its
    bound at a large layer (so 1e-5 is no looser than needed by more than ~3x)."""
    with _Force(4):
        worst = _wino_check((2, 42, 42, 32), 32, WINO4_TOL)
    assert max(worst.values()) > 0.1 * WINO4_TOL, worst
    for algo in (1, 2):
        with _Force(algo):
            _wino_check((2, 42, 42, 32), 32, 2e-6)


def test_conv2d_winograd4_second_order_against_float64():
    """d/dk <dx, H> = kernel_grad(H, G) through F(4x4)'s kernel gradient of the recorded
    F(4x4) input gradient (MAML's term), against float64."""
    _wino_second_order_check((2, 11, 9), WINO4_TOL, algo=4)


@pytest.mark.parametrize("order", [1, 2])
def test_conv2d_winograd4_gradcheck(order):
    rng = _rng(31)
    x, k = N(rng, 1, 6, 5, 16), N(rng, 3, 3, 16, 16, scale=0.2)
    with _Force(4):
        gradcheck(lambda x, k: _core.conv2d(x, k, strides=1, padding="same"), [x, k], order=order)


def _table(pass_, n, h, w, c, f):
    import ctypes

    rule = ctypes.CDLL(_core.__file__).ml__wino_tile
    rule.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 5
    return rule(pass_, n, h, w, c, f)


# the layers the table sends to F(4x4): conv4-32 / conv4-64 at 84x84 inputs (42 and 21),
# and a ResNet-12 block's first convolution at 21x21 (wide: chunks of 128 tiles)
WINO4_LAYERS = [
    ((2, 42, 42, 32), 32),
    ((2, 21, 21, 64), 64),
    ((3, 21, 21, 32), 32),
    ((1, 21, 21, 160), 320),
]


@pytest.mark.parametrize("xs,f", WINO4_LAYERS)
def test_conv2d_winograd4_layers_take_it_and_meet_its_bound(xs, f):
    """Without the switch: the table picks F(4x4) for all three passes of these layers (and
    F(2x2) for the 14x14 and 10x10 ones, wide or not, direct at 3x3), and the results are
    within F(4x4)'s bound of float64."""
    for p in range(3):
        assert _table(p, *xs, f) == 4
        assert _table(p, 100, 42, 42, 160, 160) == 4
        assert _table(p, 80, 14, 14, 64, 64) == 2
        assert _table(p, 80, 10, 10, 32, 32) == 2
        assert _table(p, 100, 10, 10, 640, 640) == 2
        assert _table(p, 80, 3, 3, 64, 64) == 0
    _wino_check(xs, f, WINO4_TOL)
