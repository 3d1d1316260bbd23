"""ml_grad's deferred terms (csrc/autograd/grad.c): the gradients that narrows of one tensor
pass back are joined by one concat, and the terms of a 2-D weight b over its products a @ b
are one GEMM ([a0; a1; ...]^T [g0; g1; ...]). The values are held to NumPy's sums of the
per-use terms (tiled, gapped, overlapping and mixed narrows, several products, first and
second order); the traced backward is held to the one concat / one GEMM."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core

RNG = np.random.default_rng(22)


def arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def total(terms):
    out = terms[0]
    for t in terms[1:]:
        out = _core.add(out, t)
    return out


def pad(g, axis, start, size):
    shape = list(g.shape)
    shape[axis] = size
    out = np.zeros(shape, np.float64)
    idx = [slice(None)] * g.ndim
    idx[axis] = slice(start, start + g.shape[axis])
    out[tuple(idx)] = g
    return out


# (axis, start, length) per narrow of a (6, 5) tensor
CUTS = {
    "tiled": [(0, 2, 3), (0, 0, 2), (0, 5, 1)],
    "gaps": [(0, 4, 2), (0, 1, 2)],
    "one whole": [(0, 0, 6)],
    "overlapping": [(0, 0, 3), (0, 2, 3), (0, 2, 3)],
    "two axes": [(0, 1, 3), (1, 0, 2), (1, 2, 3)],
    "empty": [(0, 3, 0), (0, 0, 3), (0, 3, 3)],
}


@pytest.mark.parametrize("name", sorted(CUTS))
@pytest.mark.parametrize("through", ["leaf", "intermediate", "and a full use"])
def test_narrow_terms_first_and_second_order(name, through):
    cuts = CUTS[name]
    x0, v0 = arr(6, 5), arr(6, 5)
    cs = [arr(*(n, 5) if a == 0 else (6, n)) for a, s, n in cuts]
    c_full = arr(6, 5)
    x = ml.tensor(x0, requires_grad=True)
    y = _core.mul_scalar(x, 3.0) if through == "intermediate" else x
    scale = 3.0 if through == "intermediate" else 1.0
    # f = sum_p sum(c_p * narrow_p(y)^2) (+ sum(c_full * y^2))
    terms = [
        _core.reduce_sum(_core.mul(_core.square(_core.narrow(y, a, s, n)), ml.tensor(c)))
        for (a, s, n), c in zip(cuts, cs)
    ]
    if through == "and a full use":
        terms.append(_core.reduce_sum(_core.mul(_core.square(y), ml.tensor(c_full))))
    (g,) = _core.grad(total(terms), [x], create_graph=True)
    x64, v64 = x0.astype(np.float64) * scale, v0.astype(np.float64)
    want_g = np.zeros((6, 5))
    want_hv = np.zeros((6, 5))
    for (a, s, n), c in zip(cuts, cs):
        idx = [slice(None)] * 2
        idx[a] = slice(s, s + n)
        want_g += pad(2 * c * x64[tuple(idx)], a, s, 6 if a == 0 else 5) * scale
        want_hv += pad(2 * c * v64[tuple(idx)], a, s, 6 if a == 0 else 5) * scale**2
    if through == "and a full use":
        want_g += 2 * c_full * x64
        want_hv += 2 * c_full * v64
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-5, atol=1e-5)
    # second order: d<g, v>/dx, through the concat (or the padded copies) recorded above
    (hv,) = _core.grad(_core.reduce_sum(_core.mul(g, ml.tensor(v0))), [x])
    np.testing.assert_allclose(hv.numpy(), want_hv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [(3,), (2, 3, 5), (4, 4, 1, 7)])
def test_matmul_weight_terms_first_and_second_order(rows):
    w0, v0 = arr(4, 3), arr(4, 3)
    a0 = [arr(m, 4) for m in rows]
    w = ml.tensor(w0, requires_grad=True)
    a = [ml.tensor(x, requires_grad=True) for x in a0]
    # f = sum_i sum((a_i @ w)^2): df/dw = sum_i 2 a_i^T a_i w, df/da_i = 2 a_i w w^T
    f = total([_core.reduce_sum(_core.square(_core.matmul(x, w))) for x in a])
    grads = _core.grad(f, [w] + a, create_graph=True)
    w64 = w0.astype(np.float64)
    a64 = [x.astype(np.float64) for x in a0]
    want_w = sum(2 * x.T @ x @ w64 for x in a64)
    np.testing.assert_allclose(grads[0].numpy(), want_w, rtol=1e-5, atol=1e-5)
    for g, x in zip(grads[1:], a64):
        np.testing.assert_allclose(g.numpy(), 2 * x @ w64 @ w64.T, rtol=1e-5, atol=1e-5)
    # d<df/dw, v>/dw = sum_i 2 a_i^T a_i v; d<df/dw, v>/da_i = 2 a_i (v w^T + w v^T)
    hv = _core.grad(_core.reduce_sum(_core.mul(grads[0], ml.tensor(v0))), [w] + a)
    v64 = v0.astype(np.float64)
    np.testing.assert_allclose(
        hv[0].numpy(), sum(2 * x.T @ x @ v64 for x in a64), rtol=1e-5, atol=1e-5
    )
    for g, x in zip(hv[1:], a64):
        want = 2 * x @ (v64 @ w64.T + w64 @ v64.T)
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [(3,), (2, 5), (4, 1, 7)])
def test_weight_terms_of_products_with_the_weight_transposed(rows):
    # a_i @ w^T next to a @ w: b's term of a @ b^T is g^T a, joined with the others
    w0, v0 = arr(3, 4), arr(3, 4)
    a0, b0 = [arr(m, 4) for m in rows], arr(2, 3)
    w = ml.tensor(w0, requires_grad=True)
    a = [ml.tensor(x, requires_grad=True) for x in a0]
    terms = [_core.reduce_sum(_core.square(_core.matmul(x, w, transpose_b=True))) for x in a]
    terms.append(_core.reduce_sum(_core.square(_core.matmul(ml.tensor(b0), w))))
    grads = _core.grad(total(terms), [w] + a, create_graph=True)
    w64, b64 = w0.astype(np.float64), b0.astype(np.float64)
    a64 = [x.astype(np.float64) for x in a0]
    want_w = sum(2 * (x @ w64.T).T @ x for x in a64) + 2 * b64.T @ (b64 @ w64)
    np.testing.assert_allclose(grads[0].numpy(), want_w, rtol=1e-5, atol=1e-5)
    for g, x in zip(grads[1:], a64):
        np.testing.assert_allclose(g.numpy(), 2 * x @ w64.T @ w64, rtol=1e-5, atol=1e-5)
    (hv,) = _core.grad(_core.reduce_sum(_core.mul(grads[0], ml.tensor(v0))), [w])
    v64 = v0.astype(np.float64)
    want = sum(2 * v64 @ x.T @ x for x in a64) + 2 * b64.T @ b64 @ v64
    np.testing.assert_allclose(hv.numpy(), want, rtol=1e-5, atol=1e-5)


def test_batched_and_transposed_a_products_keep_their_own_terms():
    w0 = arr(3, 4)
    w = ml.tensor(w0, requires_grad=True)
    a0, b0 = arr(3, 2), arr(2, 5, 3)
    # a^T @ w (a transposed) and a batched b @ w (3-D): their own backward
    f = _core.add(
        _core.reduce_sum(_core.matmul(ml.tensor(a0), w, transpose_a=True)),
        _core.reduce_sum(_core.matmul(ml.tensor(b0), w)),
    )
    (g,) = _core.grad(f, [w])
    want = a0.astype(np.float64) @ np.ones((2, 4)) + np.einsum(
        "bmk,bmn->kn", b0, np.ones((2, 5, 4))
    )
    np.testing.assert_allclose(g.numpy(), want, rtol=1e-5, atol=1e-5)


def _entries(fn):
    return [
        line.split("=")[1].split("(")[0].strip()
        for line in fn.describe().splitlines()
        if " = " in line
    ]


def test_traced_backward_joins_narrow_terms_by_one_concat():
    # a (T*B, F) tensor cut into T steps, as an RNN's input projection: its gradient is one
    # concat of the steps' gradients, no zero-padded copy per step and no sum of them
    steps, batch = 6, 2
    x = ml.tensor(arr(steps * batch, 3), requires_grad=True)
    c = [ml.tensor(arr(batch, 3)) for _ in range(steps)]

    def f(x):
        p = _core.mul_scalar(x, 2.0)
        t = [
            _core.reduce_sum(_core.mul(_core.narrow(p, 0, k * batch, batch), c[k]))
            for k in range(steps)
        ]
        return _core.grad(total(t), [x])[0]

    fn = ml.function(f)
    eager = f(x).numpy()
    fn(x)
    np.testing.assert_array_equal(fn(x).numpy(), eager)
    ops = _entries(fn)
    assert ops.count("concat") == 1, fn.describe()
    assert "pad_axis" not in ops and ops.count("add") == steps - 1, fn.describe()
    want = 2.0 * np.concatenate([t.numpy() for t in c], 0)
    np.testing.assert_array_equal(eager, want)


def test_traced_backward_sums_a_weights_products_by_one_gemm():
    # a weight used at every step of a recurrence: its gradient is one GEMM over the steps'
    # rows, not one small GEMM per step and their sum
    steps = 5
    w = ml.tensor(arr(4, 4), requires_grad=True)
    h0 = ml.tensor(arr(2, 4))

    def f(w):
        h, out = h0, []
        for _ in range(steps):
            h = _core.tanh(_core.matmul(h, w))
            out.append(_core.reduce_sum(h))
        return _core.grad(total(out), [w])[0]

    fn = ml.function(f)
    eager = f(w).numpy()
    fn(w)
    np.testing.assert_array_equal(fn(w).numpy(), eager)
    ops = _entries(fn)
    # forward: steps products; backward: the state's gradient per step but the first
    # (steps - 1), and the weight's one
    assert ops.count("matmul") == steps + (steps - 1) + 1, fn.describe()
    # NumPy: backprop through time in float64
    w64, hs = w.numpy().astype(np.float64), [h0.numpy().astype(np.float64)]
    for _ in range(steps):
        hs.append(np.tanh(hs[-1] @ w64))
    gw, gh = np.zeros((4, 4)), np.zeros((2, 4))
    for k in range(steps, 0, -1):
        gh = gh + 1.0
        dz = gh * (1 - hs[k] ** 2)
        gw += hs[k - 1].T @ dz
        gh = dz @ w64.T
    np.testing.assert_allclose(eager, gw, rtol=1e-5, atol=1e-5)
