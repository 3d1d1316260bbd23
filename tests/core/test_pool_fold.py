"""ml_grad's pool fold (csrc/autograd/grad.c, try_fold): in a first-order backward,
max_pool2d(batch_norm(x)) and max_pool2d(relu(batch_norm(x))) run the pool's, the relu's and
the batch norm's backwards as one, the pooled gradient made a chunk of rows at a time inside
batch norm's passes instead of as tensors of the block's input size.

What must hold: the gradients are the unfolded sweep's bit for bit (the fold is switched off
by asking for the batch norm's output's gradient too: an input's gradient is handed out, so
it is never folded), they match a float64 NumPy reference, the fold really skips the
input-sized gradient (the storage peak), it never applies where something else can see the
gradients it skips, and an in-place write is still refused."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core

F32 = np.float32


def _block(rng, shape, order, gamma=True, beta=True, ties=False, extra=False):
    """The gradients of <gp, block(x)> in x, gamma, beta (those present); with extra, the
    batch norm's output's too (which switches the fold off)."""
    xv = rng.standard_normal(shape).astype(F32)
    if ties:  # many equal values: the argmax's first-maximum rule decides
        xv = (np.round(xv * 2) / 2).astype(F32)
    c = shape[-1]
    x = _core.tensor(xv, requires_grad=True)
    g = _core.tensor(rng.uniform(0.5, 1.5, c).astype(F32), requires_grad=True) if gamma else None
    b = _core.tensor(rng.standard_normal(c).astype(F32), requires_grad=True) if beta else None
    mm, mv = _core.tensor(np.zeros(c, F32)), _core.tensor(np.ones(c, F32))
    y = _core.batch_norm(x, g, b, mm, mv, training=True)
    if order == "pool-relu":  # as Keras' Sequential runs Activation("relu"), MaxPool2D
        p = _core.relu(_core.max_pool2d(y))
    elif order == "relu-pool":
        p = _core.max_pool2d(_core.relu(y))
    else:
        p = _core.max_pool2d(y)
    gp = _core.tensor(rng.standard_normal(tuple(p.shape)).astype(F32))
    ins = [t for t in (x, g, b) if t is not None]
    out = _core.grad([p], ins + ([y] if extra else []), [gp])
    return [np.asarray(t) for t in out[: len(ins)]], (xv, g, b, gp)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


SHAPES = [(4, 8, 8, 16), (3, 7, 7, 64), (5, 6, 9, 3), (2, 28, 28, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", ["pool", "pool-relu", "relu-pool"])
@pytest.mark.parametrize("ties", [False, True])
def test_folded_gradients_are_the_unfolded_bits(shape, order, ties):
    state = np.random.default_rng(7).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    folded, _ = _block(rng, shape, order, ties=ties)
    rng.bit_generator.state = state
    unfolded, _ = _block(rng, shape, order, ties=ties, extra=True)
    for a, b in zip(folded, unfolded):
        np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("gamma,beta", [(False, False), (True, False), (False, True)])
def test_folded_without_scale_or_centre(gamma, beta):
    state = np.random.default_rng(3).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    folded, _ = _block(rng, (3, 6, 6, 8), "relu-pool", gamma=gamma, beta=beta)
    rng.bit_generator.state = state
    unfolded, _ = _block(rng, (3, 6, 6, 8), "relu-pool", gamma=gamma, beta=beta, extra=True)
    assert len(folded) == 1 + gamma + beta
    for a, b in zip(folded, unfolded):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def _reference(xv, gam, bet, gpv, order, eps=1e-3):
    """The block's gradients in float64, written from the formulas: batch norm over
    (N, H, W), relu, 2x2 max pooling whose gradient goes to the first maximum."""
    x = xv.astype(np.float64)
    n, h, w, c = x.shape
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    y = xhat * gam + bet
    a = np.maximum(y, 0.0) if order == "relu-pool" else y
    oh, ow = h // 2, w // 2
    win = a[:, : 2 * oh, : 2 * ow].reshape(n, oh, 2, ow, 2, c).transpose(0, 1, 3, 2, 4, 5)
    win = win.reshape(n, oh, ow, 4, c)
    arg = win.argmax(axis=3)  # the first maximum, as max_pool2d
    pooled = np.take_along_axis(win, arg[:, :, :, None], axis=3)[:, :, :, 0]
    g = gpv.astype(np.float64)
    if order == "pool-relu":
        g = g * (pooled > 0)
    ga = np.zeros_like(x)
    for p in range(4):
        hit = (arg == p) * g
        ga[:, p // 2 : 2 * oh : 2, p % 2 : 2 * ow : 2] += hit
    gy = ga * (y > 0) if order == "relu-pool" else ga
    m = x.size / c
    dbeta = gy.sum(axis=(0, 1, 2))
    dgamma = (gy * xhat).sum(axis=(0, 1, 2))
    dx = gam * inv * (gy - dbeta / m - xhat * dgamma / m)
    return dx, dgamma, dbeta


@pytest.mark.parametrize("order", ["pool", "pool-relu", "relu-pool"])
def test_folded_gradients_match_a_float64_reference(order):
    rng = np.random.default_rng(11)
    (dx, dg, db), (xv, g, b, gp) = _block(rng, (6, 9, 8, 16), order)
    rdx, rdg, rdb = _reference(xv, np.asarray(g), np.asarray(b), np.asarray(gp), order)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dg, rdg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, rdb, rtol=1e-4, atol=1e-4)


def _peak_of_grad(extra):
    rng = np.random.default_rng(5)
    shape = (64, 32, 32, 32)  # 8 MiB
    x = _core.tensor(rng.standard_normal(shape).astype(F32), requires_grad=True)
    g = _core.tensor(np.ones(32, F32), requires_grad=True)
    b = _core.tensor(np.zeros(32, F32), requires_grad=True)
    mm, mv = _core.tensor(np.zeros(32, F32)), _core.tensor(np.ones(32, F32))
    y = _core.batch_norm(x, g, b, mm, mv, training=True)
    p = _core.relu(_core.max_pool2d(y))
    gp = _core.tensor(np.ones(tuple(p.shape), F32))
    if not extra:
        del y  # as a Sequential drops it: only the pool's node holds it
    base = _core._storage_stats(reset_peak=True)["live"]
    out = _core.grad([p], [x, g, b] + ([y] if extra else []), [gp])
    peak = _core._storage_stats()["peak"] - base
    return peak, int(np.prod(shape)) * 4, out


def test_the_fold_never_makes_the_input_sized_pool_gradient():
    # unfolded: the pool's scatter (8 MiB) and dx (8 MiB) are alive at once; folded: dx,
    # the pooled gradients (2 MiB each) and one chunk's rows, under two input-sized tensors
    folded, nbytes, _ = _peak_of_grad(extra=False)
    unfolded, _, _ = _peak_of_grad(extra=True)
    assert unfolded >= 2 * nbytes
    assert folded < 1.75 * nbytes, (folded, unfolded, nbytes)


def _bn_pool_reference(xv, gp, gy_extra):
    """dx of <gp, max_pool2d(y)> + <gy_extra, y>, y = batch_norm(x) without gamma and
    beta, in float64 from the formulas"""
    xd = xv.astype(np.float64)
    n, h, w, c = xd.shape
    mean, var = xd.mean(axis=(0, 1, 2)), xd.var(axis=(0, 1, 2))
    inv = 1 / np.sqrt(var + 1e-3)
    xhat = (xd - mean) * inv
    win = xhat.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    arg = win.reshape(n, h // 2, w // 2, 4, c).argmax(axis=3)
    gy = gy_extra.astype(np.float64).copy()
    for q in range(4):
        gy[:, q // 2 :: 2, q % 2 :: 2] += (arg == q) * gp
    m = xd.size / c
    return inv * (gy - gy.sum((0, 1, 2)) / m - xhat * (gy * xhat).sum((0, 1, 2)) / m)


def _bn_pool(seed, shape):
    """x's values, x, y = batch_norm(x) (no gamma, beta), max_pool2d(y), and a gradient
    for the pool's output"""
    rng = np.random.default_rng(seed)
    xv = rng.standard_normal(shape).astype(F32)
    x = _core.tensor(xv, requires_grad=True)
    c = shape[-1]
    zeros, ones = _core.tensor(np.zeros(c, F32)), _core.tensor(np.ones(c, F32))
    y = _core.batch_norm(x, None, None, zeros, ones, training=True)
    p = _core.max_pool2d(y)
    return rng, xv, x, y, p, rng.standard_normal(tuple(p.shape)).astype(F32)


@pytest.mark.parametrize("pool_term_first", [True, False])
def test_no_fold_where_the_batch_norm_output_has_another_use(pool_term_first):
    # y also feeds a sum of squares: its gradient has two terms, so the pool's backward
    # cannot skip it, whichever of the two the sweep reaches first
    _, xv, x, y, p, gp = _bn_pool(2, (2, 4, 4, 8))
    pool_term, square_term = ml.reduce_sum(p * ml.tensor(gp)), ml.reduce_sum(y * y)
    loss = pool_term + square_term if pool_term_first else square_term + pool_term
    (dx,) = _core.grad([loss], [x])
    ref = _bn_pool_reference(xv, gp, 2 * np.asarray(y, np.float64))
    np.testing.assert_allclose(np.asarray(dx), ref, rtol=1e-4, atol=1e-5)


def test_no_fold_where_the_batch_norm_output_is_also_an_output():
    # grad([p, y], ...): y's seed is a term of its own the fold must not lose
    rng, xv, x, y, p, gp = _bn_pool(8, (2, 4, 6, 8))
    gy = rng.standard_normal(xv.shape).astype(F32)
    (dx,) = _core.grad([p, y], [x], [_core.tensor(gp), _core.tensor(gy)])
    np.testing.assert_allclose(np.asarray(dx), _bn_pool_reference(xv, gp, gy), rtol=1e-4, atol=1e-5)


def test_second_order_is_not_folded_and_agrees():
    # create_graph records the batch-norm backward as ops of its own: no fold there; the
    # first-order (folded) gradient equals it
    for create in (False, True):
        rng = np.random.default_rng(4)
        x = _core.tensor(rng.standard_normal((3, 6, 6, 8)).astype(F32), requires_grad=True)
        g = _core.tensor(np.full(8, 1.25, F32), requires_grad=True)
        y = _core.batch_norm(
            x, g, None, _core.tensor(np.zeros(8, F32)), _core.tensor(np.ones(8, F32)), training=True
        )
        p = _core.relu(_core.max_pool2d(y))
        gp = _core.tensor(rng.standard_normal(tuple(p.shape)).astype(F32))
        dx, dg = _core.grad([p], [x, g], [gp], create_graph=create)
        if not create:
            first = (np.asarray(dx), np.asarray(dg))
        else:
            np.testing.assert_allclose(np.asarray(dx), first[0], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(np.asarray(dg), first[1], rtol=1e-6, atol=1e-6)
            # and the recorded gradient differentiates: d/dx sum(dx^2) exists and is finite
            (ddx,) = _core.grad([ml.reduce_sum(dx * dx)], [x])
            assert np.isfinite(np.asarray(ddx)).all()


def test_the_fold_gives_the_same_bits_on_one_and_two_threads():
    before = ml.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            ml.set_num_threads(t)
            rng = np.random.default_rng(9)
            res.append(_block(rng, (16, 28, 28, 64), "pool-relu")[0])
    finally:
        ml.set_num_threads(before)
    for a, b in zip(*res):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_an_in_place_write_is_still_refused_when_folded():
    rng = np.random.default_rng(6)
    x = _core.tensor(rng.standard_normal((2, 4, 4, 8)).astype(F32), requires_grad=True)
    g = _core.tensor(np.ones(8, F32), requires_grad=True)
    y = _core.batch_norm(
        x, g, None, _core.tensor(np.zeros(8, F32)), _core.tensor(np.ones(8, F32)), training=True
    )
    p = _core.relu(_core.max_pool2d(y))
    del y
    _core.assign(g, np.full(8, 2.0, F32))  # gamma changed after the forward
    gp = _core.tensor(np.ones(tuple(p.shape), F32))
    with pytest.raises(ValueError, match="modified in place"):
        _core.grad([p], [x, g], [gp])
