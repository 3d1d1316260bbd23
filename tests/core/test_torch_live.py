"""metalearn against live PyTorch on fresh random inputs of random shapes.

Skipped when torch is not installed (the default test run does not need it).
For each op and seed: forward, first-order gradients of L = sum(out * w), the
Hessian-vector product d/dx [sum <dL/dx, v>] (create_graph=True), and the
double-backward d/dw of the same (= J v).  Torch computes in float64 from the
same float32 inputs; tolerances as in test_reference_ops.py (rtol 1e-4 / 2e-4,
atol 1e-5 scaled by the largest reference magnitude: metalearn is float32).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import metalearn as ml  # noqa: E402

pytestmark = pytest.mark.torch

# METALEARN_TORCH_SEEDS=N runs N random draws per op (default 3)
SEEDS = list(range(int(os.environ.get("METALEARN_TORCH_SEEDS", "3"))))
ATOL = 1e-5


def _close(actual, expected, rtol, what):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, "%s: shape %s vs %s" % (
        what,
        actual.shape,
        expected.shape,
    )
    atol = ATOL * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
    if np.any(expected != 0):
        assert np.any(actual != 0), "%s: all zeros" % what


def _shape(rng, ndim_lo=1, ndim_hi=3, lo=1, hi=5):
    return tuple(int(s) for s in rng.integers(lo, hi + 1, rng.integers(ndim_lo, ndim_hi + 1)))


def _f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _axes(x, axis):
    if axis is None:
        return tuple(range(x.dim()))
    return tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)


# Each builder takes a numpy Generator and returns (inputs, ml_fn, torch_fn):
# float32 input arrays, and two functions of the list of input tensors.


def b_mul_bcast(rng):
    m, n = rng.integers(1, 6, 2)
    sb = [(n,), (m, 1), (1, n), (), (2, m, n)][rng.integers(5)]
    xs = [_f32(rng, (m, n)), _f32(rng, sb)]
    return xs, lambda t: ml.mul(t[0], t[1]), lambda t: t[0] * t[1]


def b_div_bcast(rng):
    m, n = rng.integers(1, 6, 2)
    sb = [(n,), (m, 1), (m, n)][rng.integers(3)]
    b = rng.uniform(0.5, 2.0, sb).astype(np.float32) * rng.choice([-1, 1], sb).astype(np.float32)
    return [_f32(rng, (m, n)), b], lambda t: ml.div(t[0], t[1]), lambda t: t[0] / t[1]


def b_unary(name):
    ml_fn = getattr(ml, name)
    t_fn = {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "exp": torch.exp,
        "erf": torch.erf,
        "gelu": lambda x: F.gelu(x, approximate="none"),
        "square": torch.square,
    }[name]

    def build(rng):
        return [_f32(rng, _shape(rng))], lambda t: ml_fn(t[0]), lambda t: t_fn(t[0])

    return build


def b_pow(rng):
    e = float(np.round(rng.uniform(-1.5, 2.5), 2))
    x = rng.uniform(0.5, 2.0, _shape(rng)).astype(np.float32)
    return [x], lambda t: ml.pow(t[0], e), lambda t: torch.pow(t[0], e)


def b_softmax(log):
    def build(rng):
        shape = _shape(rng, 1, 3, 2, 5)
        axis = int(rng.integers(-len(shape), len(shape)))
        if log:
            return (
                [_f32(rng, shape, 2.0)],
                lambda t: ml.log_softmax(t[0], axis=axis),
                lambda t: torch.log_softmax(t[0], dim=axis),
            )
        return (
            [_f32(rng, shape, 2.0)],
            lambda t: ml.softmax(t[0], axis=axis),
            lambda t: torch.softmax(t[0], dim=axis),
        )

    return build


def b_matmul(rng):
    m, k, n = (int(s) for s in rng.integers(1, 6, 3))
    batch = _shape(rng, 0, 2, 1, 3)
    ta, tb = bool(rng.integers(2)), bool(rng.integers(2))
    b_batch = batch if rng.integers(2) else ()
    a = _f32(rng, batch + ((k, m) if ta else (m, k)))
    b = _f32(rng, b_batch + ((n, k) if tb else (k, n)))

    def t_fn(t):
        x, y = t
        if ta:
            x = x.transpose(-1, -2)
        if tb:
            y = y.transpose(-1, -2)
        return x @ y

    return ([a, b], lambda t: ml.matmul(t[0], t[1], transpose_a=ta, transpose_b=tb), t_fn)


def b_linear(rng):
    lead = _shape(rng, 1, 2, 1, 4)
    k, n = (int(s) for s in rng.integers(1, 6, 2))
    act = [None, "sigmoid", "tanh"][rng.integers(3)]
    xs = [_f32(rng, lead + (k,)), _f32(rng, (k, n), 0.7), _f32(rng, (n,), 0.3)]
    t_act = {None: lambda y: y, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act]
    return (
        xs,
        lambda t: ml.linear(t[0], t[1], t[2], activation=act),
        lambda t: t_act(t[0] @ t[1] + t[2]),
    )


def b_reduce(name):
    def build(rng):
        shape = _shape(rng, 1, 4, 1, 4)
        nd = len(shape)
        choice = rng.integers(3)
        if choice == 0:
            axis = None
        elif choice == 1:
            axis = int(rng.integers(-nd, nd))
        else:
            axis = tuple(
                sorted(int(a) for a in rng.choice(nd, rng.integers(1, nd + 1), replace=False))
            )
        kd = bool(rng.integers(2))
        if name == "reduce_max":  # no ties
            size = int(np.prod(shape))
            x = rng.permutation(size) * 0.1 + rng.uniform(-0.02, 0.02, size) - size * 0.05
            x = x.reshape(shape).astype(np.float32)
            t_fn = lambda t: torch.amax(t[0], dim=_axes(t[0], axis), keepdim=kd)
        else:
            x = _f32(rng, shape)
            tf = torch.sum if name == "reduce_sum" else torch.mean
            t_fn = lambda t: tf(t[0], dim=_axes(t[0], axis), keepdim=kd)
        return [x], lambda t: getattr(ml, name)(t[0], axis=axis, keepdims=kd), t_fn

    return build


def b_cce_logits(rng):
    n, c = (int(s) for s in rng.integers(1, 6, 2))
    c += 1
    y = torch.softmax(torch.as_tensor(rng.standard_normal((n, c))), -1).numpy().astype(np.float32)
    return (
        [y, _f32(rng, (n, c), 2.0)],
        lambda t: ml.categorical_crossentropy(t[0], t[1], from_logits=True),
        lambda t: -(t[0] * torch.log_softmax(t[1], -1)).sum(-1),
    )


def b_bce_logits(rng):
    shape = _shape(rng, 1, 3, 1, 5)
    y = rng.uniform(0, 1, shape).astype(np.float32)
    x = _f32(rng, shape, 2.0)
    x[np.abs(x) < 0.05] = 0.5
    return (
        [y, x],
        lambda t: ml.binary_crossentropy(t[0], t[1], from_logits=True),
        lambda t: (torch.relu(t[1]) - t[1] * t[0] + torch.log1p(torch.exp(-torch.abs(t[1])))).mean(
            -1
        ),
    )


def b_mlp(rng):
    """A composite: tanh MLP with a softmax cross-entropy, per-sample losses."""
    n, d, h, c = 5, 3, 6, 4
    y = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
    xs = [_f32(rng, (n, d)), _f32(rng, (d, h), 0.5), _f32(rng, (h,), 0.1), _f32(rng, (h, c), 0.5)]

    def ml_fn(t):
        hid = ml.linear(t[0], t[1], t[2], activation="tanh")
        return ml.categorical_crossentropy(y, ml.matmul(hid, t[3]), from_logits=True)

    def t_fn(t):
        hid = torch.tanh(t[0] @ t[1] + t[2])
        return -(torch.as_tensor(y, dtype=torch.float64) * torch.log_softmax(hid @ t[3], -1)).sum(
            -1
        )

    return xs, ml_fn, t_fn


def b_maximum(rng):
    m, n = (int(s) for s in rng.integers(1, 6, 2))
    a, b = _f32(rng, (m, n)), _f32(rng, (n,))
    a[np.abs(a - b) < 1e-2] += 0.1  # no ties
    fn = ["maximum", "minimum"][rng.integers(2)]
    t_fn = torch.maximum if fn == "maximum" else torch.minimum
    return [a, b], lambda t: getattr(ml, fn)(t[0], t[1]), lambda t: t_fn(t[0], t[1])


def b_kinked(rng):
    x = _f32(rng, _shape(rng))
    x[np.abs(x) < 0.05] = 0.3  # away from the kink at 0
    fn = ["relu", "elu", "leaky_relu", "abs"][rng.integers(4)]
    t_fn = {
        "relu": torch.relu,
        "elu": lambda y: F.elu(y, 1.0),
        "leaky_relu": lambda y: F.leaky_relu(y, 0.2),
        "abs": torch.abs,
    }[fn]
    return [x], lambda t: getattr(ml, fn)(t[0]), lambda t: t_fn(t[0])


def b_log_sqrt(rng):
    x = rng.uniform(0.3, 3.0, _shape(rng)).astype(np.float32)
    fn = ["log", "sqrt"][rng.integers(2)]
    return [x], lambda t: getattr(ml, fn)(t[0]), lambda t: getattr(torch, fn)(t[0])


def b_transpose(rng):
    shape = _shape(rng, 2, 4, 1, 4)
    perm = [int(a) for a in rng.permutation(len(shape))]
    # composed with tanh so that the second order is not identically zero
    return (
        [_f32(rng, shape)],
        lambda t: ml.tanh(ml.transpose(t[0], perm)),
        lambda t: torch.tanh(t[0].permute(perm)),
    )


def b_concat(rng):
    base = list(_shape(rng, 1, 3, 1, 4))
    axis = int(rng.integers(len(base)))
    shapes = []
    for _ in range(int(rng.integers(1, 4))):
        sh = list(base)
        sh[axis] = int(rng.integers(1, 4))
        shapes.append(tuple(sh))
    xs = [_f32(rng, sh) for sh in shapes]
    return (
        xs,
        lambda t: ml.square(ml.concat(list(t), axis=axis)),
        lambda t: torch.square(torch.cat(list(t), dim=axis)),
    )


def b_gather(rng):
    shape = _shape(rng, 1, 3, 1, 4)
    axis = int(rng.integers(len(shape)))
    idx = rng.integers(0, shape[axis], int(rng.integers(1, 7)))
    return (
        [_f32(rng, shape)],
        lambda t: ml.square(ml.gather(t[0], idx, axis=axis)),
        lambda t: torch.square(torch.index_select(t[0], axis, torch.as_tensor(idx))),
    )


def b_scce(rng):
    n, c = int(rng.integers(1, 6)), int(rng.integers(2, 6))
    labels = rng.integers(0, c, n)
    if rng.integers(2):
        return (
            [_f32(rng, (n, c), 2.0)],
            lambda t: ml.sparse_categorical_crossentropy(labels, t[0], from_logits=True),
            lambda t: -torch.log_softmax(t[0], -1)[torch.arange(n), torch.as_tensor(labels)],
        )
    p = rng.uniform(0.05, 1.0, (n, c)).astype(np.float32)  # unnormalised: rescaled by the loss

    def t_fn(t):
        q = torch.clamp(t[0] / t[0].sum(-1, keepdim=True), 1e-7, 1 - 1e-7)
        return -torch.log(q)[torch.arange(n), torch.as_tensor(labels)]

    return [p], lambda t: ml.sparse_categorical_crossentropy(labels, t[0]), t_fn


BUILDERS = {
    "maximum": b_maximum,
    "kinked": b_kinked,
    "log_sqrt": b_log_sqrt,
    "transpose": b_transpose,
    "concat": b_concat,
    "gather": b_gather,
    "scce": b_scce,
    "mul_bcast": b_mul_bcast,
    "div_bcast": b_div_bcast,
    "tanh": b_unary("tanh"),
    "sigmoid": b_unary("sigmoid"),
    "exp": b_unary("exp"),
    "erf": b_unary("erf"),
    "gelu": b_unary("gelu"),
    "square": b_unary("square"),
    "pow": b_pow,
    "softmax": b_softmax(False),
    "log_softmax": b_softmax(True),
    "matmul": b_matmul,
    "linear": b_linear,
    "reduce_sum": b_reduce("reduce_sum"),
    "reduce_mean": b_reduce("reduce_mean"),
    "reduce_max": b_reduce("reduce_max"),
    "cce_logits": b_cce_logits,
    "bce_logits": b_bce_logits,
    "mlp": b_mlp,
}


def _ml_grads(out, inputs, **kw):
    if out is None or not out.requires_grad:
        return [None] * len(inputs)
    return ml.grad(out, inputs, allow_unused=True, **kw)


def _np(g, like):
    return np.zeros(like.shape) if g is None else np.asarray(g)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", list(BUILDERS))
def test_live(op, seed):
    rng = np.random.default_rng([seed, sorted(BUILDERS).index(op)])
    xs, ml_fn, t_fn = BUILDERS[op](rng)

    # torch reference, float64 from the float32 inputs
    tx = [torch.tensor(x.astype(np.float64), requires_grad=True) for x in xs]
    tout = t_fn(tx)
    w = _f32(rng, tuple(tout.shape))
    tw = torch.tensor(w.astype(np.float64), requires_grad=True)
    tg = torch.autograd.grad((tout * tw).sum(), tx, create_graph=True, allow_unused=True)
    tg = [torch.zeros_like(x) if g is None else g for g, x in zip(tg, tx)]
    vs = [_f32(rng, x.shape) for x in xs]
    ts2 = sum((g * torch.as_tensor(v.astype(np.float64))).sum() for g, v in zip(tg, vs))
    tgg = torch.autograd.grad(ts2, tx + [tw], allow_unused=True)
    tgg = [
        np.zeros(x.shape) if g is None else g.detach().numpy(force=True)
        for g, x in zip(tgg, tx + [tw])
    ]

    # metalearn
    mx = [ml.Tensor(x, requires_grad=True) for x in xs]
    out = ml_fn(mx)
    _close(out.numpy(), tout.detach().numpy(), 1e-4, "%s forward" % op)
    mw = ml.Tensor(w, requires_grad=True)
    g = _ml_grads(ml.reduce_sum(ml.mul(out, mw)), mx, create_graph=True)
    for i, (gi, ti) in enumerate(zip(g, tg)):
        _close(_np(gi, xs[i]), ti.detach().numpy(force=True), 1e-4, "%s grad%d" % (op, i))
    s2 = None
    for gi, v in zip(g, vs):
        if gi is not None:
            term = ml.reduce_sum(ml.mul(gi, ml.Tensor(v)))
            s2 = term if s2 is None else ml.add(s2, term)
    gg = _ml_grads(s2, mx + [mw])
    for i, (gi, ti) in enumerate(zip(gg, tgg)):
        what = "%s jvp (d/dw)" % op if i == len(xs) else "%s ggrad%d" % (op, i)
        _close(_np(gi, ti), ti, 2e-4, what)


def test_fixtures_match_generator(tmp_path, reference_dir):
    """tests/reference/*.npz are what generate.py produces (they are not stale)."""
    import importlib.util

    ref = reference_dir
    spec = importlib.util.spec_from_file_location("_ml_reference_generate", ref / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.main(str(tmp_path))
    produced = sorted(p.name for p in tmp_path.glob("*.npz"))
    # other generators (generate_conv.py) write their own files beside these
    assert produced and all((ref / name).exists() for name in produced)
    for name in produced:
        with np.load(tmp_path / name) as new, np.load(ref / name) as old:
            assert sorted(new.files) == sorted(old.files), name
            for k in new.files:
                a, b = new[k], old[k]
                assert a.dtype == b.dtype and a.shape == b.shape, (name, k)
                if a.dtype.kind == "f":
                    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=k)
                else:
                    assert np.array_equal(a, b), (name, k)
