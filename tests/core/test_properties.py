"""Property tests (hypothesis): broadcasting element-wise ops and reductions agree with NumPy, and
gradients of random compositions agree with central differences."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import metalearn as ml

from tests.helpers import F32

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finite_arrays(shape, lo=-4.0, hi=4.0):
    return hnp.arrays(
        F32, shape, elements=st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)
    )


def nonzero_arrays(shape):
    mag = st.floats(0.25, 4.0, width=32)
    return hnp.arrays(
        F32, shape, elements=st.tuples(st.sampled_from([-1.0, 1.0]), mag).map(lambda t: t[0] * t[1])
    )


BINARY = {
    "add": (ml.add, np.add),
    "sub": (ml.sub, np.subtract),
    "mul": (ml.mul, np.multiply),
    "div": (ml.div, np.divide),
    "maximum": (ml.maximum, np.maximum),
    "minimum": (ml.minimum, np.minimum),
}


@st.composite
def broadcast_pair(draw, nonzero_b=False):
    shapes = draw(
        hnp.mutually_broadcastable_shapes(
            num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=4
        )
    )
    sa, sb = shapes.input_shapes
    a = draw(finite_arrays(sa))
    b = draw(nonzero_arrays(sb) if nonzero_b else finite_arrays(sb))
    return a, b


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_broadcasting_matches_numpy(op):
    ml_op, np_op = BINARY[op]

    @SETTINGS
    @given(
        broadcast_pair(nonzero_b=(op == "div")), st.sampled_from(["func", "operator", "ndarray"])
    )
    def check(pair, form):
        a, b = pair
        expect = np_op(a, b)
        if form == "func":
            got = ml_op(ml.tensor(a), ml.tensor(b))
        elif form == "ndarray":
            got = ml_op(a, b)
        else:
            if op in ("maximum", "minimum"):
                got = ml_op(ml.tensor(a), b)
            else:
                sym = {"add": "__add__", "sub": "__sub__", "mul": "__mul__", "div": "__truediv__"}[
                    op
                ]
                got = getattr(ml.tensor(a), sym)(ml.tensor(b))
        assert isinstance(got, ml.Tensor)
        assert got.shape == expect.shape
        np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-6, atol=1e-6)

    check()


@st.composite
def array_and_axes(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    a = draw(finite_arrays(shape))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-nd, nd - 1))
    else:
        axs = draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
        axis = tuple(ax - nd if draw(st.booleans()) else ax for ax in axs)
    keepdims = draw(st.booleans())
    return a, axis, keepdims


REDUCE = {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max}


@pytest.mark.parametrize("name", sorted(REDUCE))
def test_reductions_match_numpy(name):
    np_fn = REDUCE[name]

    @SETTINGS
    @given(array_and_axes())
    def check(args):
        a, axis, keepdims = args
        f = getattr(ml, name)
        got = (
            f(ml.tensor(a), keepdims=keepdims)
            if axis is None
            else f(ml.tensor(a), axis=axis, keepdims=keepdims)
        )
        expect = np_fn(a.astype(np.float64), axis=axis, keepdims=keepdims)
        assert got.shape == np.shape(expect)
        tol = 1e-5 * max(1.0, float(np.max(np.abs(a))) * a.size)
        np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-5, atol=tol)

    check()


# ------------------------------------------------------------------ gradients of random compositions

SMOOTH_UNARY = {
    "tanh": lambda t: ml.tanh(t),
    "sigmoid": lambda t: ml.sigmoid(t),
    "exp_half": lambda t: ml.exp(t * 0.5),
    "square_scaled": lambda t: ml.square(t) * 0.3,
    "gelu": lambda t: ml.gelu(t),
    "erf": lambda t: ml.erf(t),
    "softmax": lambda t: ml.softmax(t, axis=-1),
    "log_softmax": lambda t: ml.log_softmax(t, axis=-1),
    "neg": lambda t: -t,
    "log_sigmoid": lambda t: ml.log(ml.sigmoid(t)),
    "sqrt_shifted": lambda t: ml.sqrt(ml.square(t) + 1.0),
    "elu": lambda t: ml.elu(
        t
    ),  # C1 at 0; finite differences straddling 0 are still accurate to O(eps)
    "transpose_back": lambda t: ml.transpose(ml.transpose(t)),
    "reshape_flat_back": lambda t: ml.reshape(ml.reshape(t, (t.size,)), t.shape),
}

SMOOTH_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div_safe": lambda a, b: a / (ml.square(b) + 1.0),
}


@st.composite
def composition(draw):
    shapes = draw(
        hnp.mutually_broadcastable_shapes(
            num_shapes=2, min_dims=1, max_dims=3, min_side=1, max_side=3
        )
    )
    sa, sb = shapes.input_shapes
    a = draw(finite_arrays(sa, -1.5, 1.5))
    b = draw(finite_arrays(sb, -1.5, 1.5))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(SMOOTH_UNARY)), st.sampled_from(sorted(SMOOTH_BINARY))
            ),
            min_size=1,
            max_size=3,
        )
    )
    final = draw(st.sampled_from(["sum", "mean", "sum_axis0", "mean_last_keep"]))
    return a, b, steps, final


def _compose(steps, final):
    def f(a, b):
        y = a
        for un, bi in steps:
            y = SMOOTH_BINARY[bi](SMOOTH_UNARY[un](y), b)
        if final == "sum":
            return ml.reduce_sum(y)
        if final == "mean":
            return ml.reduce_mean(y)
        if final == "sum_axis0":
            return ml.reduce_sum(y, axis=0)
        return ml.reduce_mean(y, axis=-1, keepdims=True)

    return f


def _numeric_grads(f, inputs, w, eps=3e-3):
    def value(xs):
        y = np.asarray(f(*[ml.tensor(x) for x in xs]), dtype=np.float64)
        return float(np.sum(y * w))

    out = []
    for i, x in enumerate(inputs):
        g = np.zeros(x.shape)
        for idx in np.ndindex(*x.shape):
            xp = [v.copy() for v in inputs]
            xm = [v.copy() for v in inputs]
            xp[i][idx] = F32(float(x[idx]) + eps)
            xm[i][idx] = F32(float(x[idx]) - eps)
            g[idx] = (value(xp) - value(xm)) / (float(xp[i][idx]) - float(xm[i][idx]))
        out.append(g)
    return out


@SETTINGS
@given(composition(), st.integers(0, 2**31 - 1))
def test_gradients_of_random_compositions(comp, seed):
    a, b, steps, final = comp
    f = _compose(steps, final)
    ta, tb = ml.tensor(a, requires_grad=True), ml.tensor(b, requires_grad=True)
    y = f(ta, tb)
    w = np.random.default_rng(seed).uniform(0.5, 1.5, y.shape).astype(F32)
    assert np.all(np.isfinite(np.asarray(y)))
    gs = ml.grad(y, [ta, tb], grad_outputs=ml.tensor(w), allow_unused=True)
    analytic = [
        np.zeros(x.shape) if g is None else np.asarray(g, dtype=np.float64)
        for g, x in zip(gs, (a, b))
    ]
    for g, x in zip(analytic, (a, b)):
        assert g.shape == x.shape
    numeric = _numeric_grads(f, [a, b], w.astype(np.float64))
    scale = max(float(np.max(np.abs(n))) for n in numeric)
    assume(scale > 1e-3)  # e.g. softmax followed by a sum has an exactly zero gradient
    for g, n in zip(analytic, numeric):
        np.testing.assert_allclose(
            g,
            n,
            rtol=2e-2,
            atol=2e-3 + 1e-2 * scale,
            err_msg=f"steps={steps} final={final} shapes={a.shape},{b.shape}",
        )


@SETTINGS
@given(composition(), st.integers(0, 2**31 - 1))
def test_second_order_of_random_compositions(comp, seed):
    """Hessian-vector products: d/dx <grad f(x), v> against central differences of grad f."""
    a, b, steps, final = comp
    assume(all(un != "elu" for un, _ in steps))  # elu'' jumps at 0, where hypothesis likes to look
    f = _compose(steps, final)
    rng = np.random.default_rng(seed)
    ta, tb = ml.tensor(a, requires_grad=True), ml.tensor(b, requires_grad=True)
    yshape = f(ta, tb).shape
    w = rng.uniform(0.5, 1.5, yshape).astype(F32)
    va = rng.standard_normal(a.shape).astype(F32)
    vb = rng.standard_normal(b.shape).astype(F32)

    def first(xs, create_graph):
        x1, x2 = ml.tensor(xs[0], requires_grad=True), ml.tensor(xs[1], requires_grad=True)
        y = f(x1, x2)
        gs = ml.grad(
            y, [x1, x2], grad_outputs=ml.tensor(w), create_graph=create_graph, allow_unused=True
        )
        return (x1, x2), gs

    (x1, x2), gs = first([a, b], True)
    terms = [
        ml.reduce_sum(g * v) for g, v in zip(gs, (va, vb)) if g is not None and g.requires_grad
    ]
    assume(terms)
    s = terms[0]
    for t in terms[1:]:
        s = s + t
    hs = ml.grad(s, [x1, x2], allow_unused=True)
    analytic = [
        np.zeros(x.shape) if h is None else np.asarray(h, dtype=np.float64)
        for h, x in zip(hs, (a, b))
    ]

    def value(xs):
        _, g2 = first(xs, False)
        return sum(
            float(np.sum(np.asarray(g, dtype=np.float64) * v))
            for g, v in zip(g2, (va, vb))
            if g is not None
        )

    eps = 3e-3
    numeric = []
    for i, x in enumerate((a, b)):
        n = np.zeros(x.shape)
        for idx in np.ndindex(*x.shape):
            xp, xm = [a.copy(), b.copy()], [a.copy(), b.copy()]
            xp[i][idx] = F32(float(x[idx]) + eps)
            xm[i][idx] = F32(float(x[idx]) - eps)
            n[idx] = (value(xp) - value(xm)) / (float(xp[i][idx]) - float(xm[i][idx]))
        numeric.append(n)
    scale = max(float(np.max(np.abs(n))) for n in numeric)
    assume(scale > 1e-3)
    for h, n in zip(analytic, numeric):
        np.testing.assert_allclose(
            h,
            n,
            rtol=3e-2,
            atol=3e-3 + 2e-2 * scale,
            err_msg=f"steps={steps} final={final} shapes={a.shape},{b.shape}",
        )


@SETTINGS
@given(
    hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=4),
    st.sampled_from(["add", "sub", "mul"]),
)
def test_broadcast_gradient_is_sum_to_input_shape(shapes, op):
    sa, sb = shapes.input_shapes
    out = shapes.result_shape
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, sa).astype(F32)
    b = rng.uniform(-1, 1, sb).astype(F32)
    w = rng.uniform(-1, 1, out).astype(F32)
    ta, tb = ml.tensor(a, requires_grad=True), ml.tensor(b, requires_grad=True)
    y = getattr(ml, op)(ta, tb)
    ga, gb = ml.grad(y, [ta, tb], grad_outputs=ml.tensor(w))
    assert ga.shape == sa and gb.shape == sb
    da = {"add": np.ones(out), "sub": np.ones(out), "mul": np.broadcast_to(b, out)}[op] * w
    db = {"add": np.ones(out), "sub": -np.ones(out), "mul": np.broadcast_to(a, out)}[op] * w
    np.testing.assert_allclose(
        np.asarray(ga), np.asarray(ml.sum_to(ml.tensor(da.astype(F32)), sa)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(ga), _np_sum_to(da, sa), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gb), _np_sum_to(db, sb), rtol=1e-5, atol=1e-5)


def _np_sum_to(x, shape):
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


# ------------------------------------------------------------------ matmul at kernel-blocking sizes


@st.composite
def matmul_case(draw):
    m, k, n = (draw(st.integers(1, 70)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,), (2, 1)]))
    bbatch = draw(st.sampled_from([(), batch, (1,) * len(batch)])) if batch else ()
    ta, tb = draw(st.booleans()), draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return m, k, n, batch, bbatch, ta, tb, seed


@SETTINGS
@given(matmul_case())
def test_matmul_matches_numpy_at_odd_sizes(c):
    m, k, n, batch, bbatch, ta, tb, seed = c
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, batch + ((k, m) if ta else (m, k))).astype(F32)
    b = rng.uniform(-1, 1, bbatch + ((n, k) if tb else (k, n))).astype(F32)
    got = ml.matmul(a, b, transpose_a=ta, transpose_b=tb)
    a64 = np.swapaxes(a, -1, -2) if ta else a
    b64 = np.swapaxes(b, -1, -2) if tb else b
    expect = np.matmul(a64.astype(np.float64), b64.astype(np.float64))
    assert got.shape == expect.shape
    np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-4, atol=1e-5 * k)


PORTABLE_SCRIPT = """
import numpy as np, metalearn as ml
rng = np.random.default_rng(0)
for m, k, n in [(1, 1, 1), (3, 5, 7), (8, 8, 8), (17, 33, 65), (64, 64, 64), (65, 129, 31), (1, 300, 1)]:
    for ta in (False, True):
        for tb in (False, True):
            a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
            b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
            got = np.asarray(ml.matmul(a, b, transpose_a=ta, transpose_b=tb))
            exp = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5 * k, err_msg=str((m, k, n, ta, tb)))
print(ml._core.kernel_name() if callable(getattr(ml._core, "kernel_name", None)) else "?")
"""


@pytest.mark.parametrize("kernel", ["portable", "default"])
def test_matmul_each_kernel(kernel):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if kernel == "portable":
        env["ML_KERNEL"] = "portable"
    else:
        env.pop("ML_KERNEL", None)
    r = subprocess.run(
        [sys.executable, "-c", PORTABLE_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    if kernel == "portable":
        assert "portable" in r.stdout or "?" in r.stdout


@pytest.mark.parametrize("name", sorted(REDUCE))
def test_reduction_with_empty_axes_is_identity_like_numpy(name):
    a = np.arange(6, dtype=F32).reshape(2, 3)
    got = getattr(ml, name)(ml.tensor(a), axis=())
    np.testing.assert_array_equal(np.asarray(got), REDUCE[name](a, axis=()))
