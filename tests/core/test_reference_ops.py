"""metalearn ops, gradients and second-order gradients against PyTorch fixtures.

The fixtures in tests/reference/*.npz were produced by tests/reference/generate.py
(torch, float64, from float32 inputs); that script's docstring documents the key
layout.  These tests need only numpy: torch is not imported here.

For every op case there are four tests:
  forward   out = op(*inputs)
  grad      dL/dx_i for L = sum(out * w)       (also via grad_outputs=[w])
  ggrad     d/dx_i [sum_j <dL/dx_j, v_j>]      (Hessian-vector product, create_graph)
  jvp       d/dw   [sum_j <dL/dx_j, v_j>]      (= J v: the backward's own backward)

Tolerances: metalearn computes in float32 (unit roundoff 6e-8).  We use rtol 1e-4
and an absolute tolerance of 1e-5 scaled by the largest reference magnitude
(max(1, max|ref|)): float32 rounding error of a result is relative to the size of
the terms that produced it, not to the (possibly cancelled, near-zero) result.
Second-order values go through two float32 backward passes (and, for the losses,
divisions by probabilities down to ~1e-2), so they get rtol 2e-4.
"""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core
from tests.helpers import REFERENCE as REF

OP_FILES = [
    "ops_elementwise.npz",
    "ops_nn.npz",
    "ops_shape.npz",
    "ops_reduce.npz",
    "ops_losses.npz",
]

RTOL = 1e-4
RTOL2 = 2e-4
ATOL = 1e-5


def _load(name):
    with np.load(REF / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _load_cases():
    cases = []
    for fn in OP_FILES:
        data = _load(fn)
        family = fn[len("ops_") : -len(".npz")]
        names = sorted({k.split("/")[0] for k in data})
        for name in names:
            pre = name + "/"
            case = {k[len(pre) :]: v for k, v in data.items() if k.startswith(pre)}
            case["meta"] = json.loads(str(case["meta"]))
            case["id"] = "%s:%s" % (family, name)
            cases.append(case)
    return cases


CASES = _load_cases()
CASE_IDS = [c["id"] for c in CASES]
DIFF_CASES = [c for c in CASES if c["meta"]["diff"]]
DIFF_IDS = [c["id"] for c in DIFF_CASES]


# ------------------------------------------------------------------ helpers


def assert_close(actual, expected, rtol=RTOL, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, "%s: shape %s, expected %s" % (
        what,
        actual.shape,
        expected.shape,
    )
    assert np.all(np.isfinite(actual)), "%s: non-finite values %s" % (what, actual)
    atol = ATOL * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(
        actual.astype(np.float64), expected, rtol=rtol, atol=atol, err_msg=what
    )
    if np.any(expected != 0):
        # a test that can fail: a gradient that is all zeros never passes for a
        # reference that is not
        assert np.any(actual != 0), "%s: all zeros, reference is not" % what


def _as_np(t, like):
    """A gradient as an ndarray; None (no path) reads as zeros of the input's shape."""
    if t is None:
        return np.zeros(np.shape(like), np.float64)
    return np.asarray(t)


def _grads(output, inputs, **kw):
    """ml.grad that reads 'no path to this input' as a zero gradient."""
    if not isinstance(output, ml.Tensor) or not output.requires_grad:
        return [None] * len(inputs)
    return ml.grad(output, inputs, allow_unused=True, **kw)


def _resolve(spec, tensors, case):
    if isinstance(spec, str) and spec.startswith("$x"):
        return tensors[int(spec[2:])]
    if isinstance(spec, str) and spec.startswith("@"):
        return case[spec[1:]]
    if isinstance(spec, dict) and "list" in spec:
        return [_resolve(s, tensors, case) for s in spec["list"]]
    if isinstance(spec, list):
        return tuple(spec)
    return spec


def _inputs(case):
    meta = case["meta"]
    n = sum(1 for k in case if k.startswith("x") and k[1:].isdigit())
    return [ml.Tensor(case["x%d" % i], requires_grad=(i in meta["diff"])) for i in range(n)]


def _forward(case, tensors):
    meta = case["meta"]
    fn = getattr(ml, meta["op"])
    args = [_resolve(a, tensors, case) for a in meta["args"]]
    kwargs = {k: _resolve(v, tensors, case) for k, v in meta["kwargs"].items()}
    return fn(*args, **kwargs)


# ---------------------------------------------------------------- op tests


def test_fixtures_present():
    assert len(CASES) >= 100
    total = sum((REF / f).stat().st_size for f in OP_FILES + ["mlp.npz", "optim.npz"])
    assert total < 2_000_000


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward(case):
    tensors = _inputs(case)
    out = _forward(case, tensors)
    assert isinstance(out, ml.Tensor)
    assert out.dtype == np.float32
    assert_close(out.numpy(), case["out"], what="%s forward" % case["id"])
    if case["meta"]["diff"]:
        assert out.requires_grad or not np.any(case["grad%d" % case["meta"]["diff"][0]])


@pytest.mark.parametrize("case", DIFF_CASES, ids=DIFF_IDS)
def test_grad(case):
    diff = case["meta"]["diff"]
    tensors = _inputs(case)
    dx = [tensors[i] for i in diff]
    out = _forward(case, tensors)
    w = ml.Tensor(case["w"])
    loss = ml.reduce_sum(ml.mul(out, w))
    grads = _grads(loss, dx)
    for i, g, x in zip(diff, grads, dx):
        assert_close(_as_np(g, x), case["grad%d" % i], what="%s grad%d" % (case["id"], i))
    # the same gradient with the weights passed as grad_outputs (on a fresh graph)
    tensors = _inputs(case)
    dx = [tensors[i] for i in diff]
    out = _forward(case, tensors)
    if out.requires_grad:
        grads = ml.grad([out], dx, grad_outputs=[w], allow_unused=True)
        for i, g, x in zip(diff, grads, dx):
            assert_close(
                _as_np(g, x),
                case["grad%d" % i],
                what="%s grad%d via grad_outputs" % (case["id"], i),
            )


def _second_order(case):
    diff = case["meta"]["diff"]
    tensors = _inputs(case)
    dx = [tensors[i] for i in diff]
    out = _forward(case, tensors)
    w = ml.Tensor(case["w"], requires_grad=True)
    loss = ml.reduce_sum(ml.mul(out, w))
    grads = _grads(loss, dx, create_graph=True)
    for i, g, x in zip(diff, grads, dx):  # create_graph must not change the values
        assert_close(
            _as_np(g, x), case["grad%d" % i], what="%s grad%d (create_graph)" % (case["id"], i)
        )
    s2 = None
    for i, g in zip(diff, grads):
        if g is None:
            continue
        term = ml.reduce_sum(ml.mul(g, ml.Tensor(case["v%d" % i])))
        s2 = term if s2 is None else ml.add(s2, term)
    second = _grads(s2, dx + [w])
    return dx, w, second


@pytest.mark.parametrize("case", DIFF_CASES, ids=DIFF_IDS)
def test_grad_of_grad(case):
    diff = case["meta"]["diff"]
    dx, _, second = _second_order(case)
    for i, g, x in zip(diff, second, dx):
        assert_close(
            _as_np(g, x), case["ggrad%d" % i], rtol=RTOL2, what="%s ggrad%d" % (case["id"], i)
        )


@pytest.mark.parametrize("case", DIFF_CASES, ids=DIFF_IDS)
def test_jvp_double_backward(case):
    _, w, second = _second_order(case)
    assert_close(
        _as_np(second[-1], case["w"]), case["jvp"], rtol=RTOL2, what="%s jvp (d/dw)" % case["id"]
    )


# ---------------------------------------------------------------------- MLP

MLP = _load("mlp.npz")
PNAMES = ["W1", "b1", "W2", "b2"]


def _mlp_logits(P, x):
    h = ml.linear(x, P[0], P[1], activation="tanh")
    return ml.linear(h, P[2], P[3])


def _mlp_params():
    return [ml.Tensor(MLP["mlp/" + k], requires_grad=True) for k in PNAMES]


def test_mlp_loss_grad_and_grad_of_grad():
    P = _mlp_params()
    logits = _mlp_logits(P, ml.Tensor(MLP["mlp/x"]))
    loss = ml.reduce_mean(
        ml.categorical_crossentropy(ml.Tensor(MLP["mlp/y"]), logits, from_logits=True)
    )
    assert loss.shape == ()
    assert_close(loss.numpy(), MLP["mlp/loss"], what="mlp loss")
    grads = ml.grad(loss, P, create_graph=True)
    for k, g in zip(PNAMES, grads):
        assert_close(g.numpy(), MLP["mlp/grad/" + k], what="mlp grad " + k)
    s2 = None
    for k, g in zip(PNAMES, grads):
        term = ml.reduce_sum(ml.mul(g, ml.Tensor(MLP["mlp/v/" + k])))
        s2 = term if s2 is None else ml.add(s2, term)
    gg = ml.grad(s2, P)
    for k, g in zip(PNAMES, gg):
        assert_close(g.numpy(), MLP["mlp/ggrad/" + k], rtol=RTOL2, what="mlp ggrad " + k)


def _maml_meta_grad(second_order):
    P = _mlp_params()
    lr = float(MLP["maml/inner_lr"])

    def loss(params, x, y):
        logits = _mlp_logits(params, ml.Tensor(x))
        return ml.reduce_mean(ml.sparse_categorical_crossentropy(y, logits, from_logits=True))

    ls = loss(P, MLP["maml/xs"], MLP["maml/ys"])
    g = ml.grad(ls, P, create_graph=second_order)
    adapted = [ml.sub(p, ml.mul(gi, lr)) for p, gi in zip(P, g)]
    lq = loss(adapted, MLP["maml/xq"], MLP["maml/yq"])
    assert_close(lq.numpy(), MLP["maml/loss_query"], what="maml query loss")
    return ml.grad(lq, P)


@pytest.mark.parametrize("order", [1, 2])
def test_maml_meta_gradient(order):
    meta = _maml_meta_grad(second_order=(order == 2))
    for k, g in zip(PNAMES, meta):
        assert_close(
            g.numpy(),
            MLP["maml/grad%d/%s" % (order, k)],
            rtol=RTOL2,
            what="maml order %d meta-gradient %s" % (order, k),
        )
    if order == 2:  # the second-order term is not negligible here
        for k, g in zip(PNAMES, meta):
            fo = MLP["maml/grad1/" + k]
            assert np.abs(g.numpy() - fo).max() > 1e-4


# --------------------------------------------------------------- optimizers

OPT = _load("optim.npz")
OPT_CASES = json.loads(str(OPT["optim/cases"]))
N_PARAMS = sum(1 for k in OPT if k.startswith("optim/a"))


def _make_opt(name):
    meta = json.loads(str(OPT[name + "/meta"]))
    cls = {"Adam": _core.Adam, "SGD": _core.SGD}[meta["optimizer"]]
    return cls(**meta["kwargs"]), meta["steps"]


@pytest.mark.parametrize("name", OPT_CASES)
def test_optimizer_given_gradients(name):
    """Feed the reference gradients: checks the update rule alone, step by step."""
    opt, steps = _make_opt(name)
    params = [ml.Tensor(OPT["optim/p%d_init" % k]) for k in range(N_PARAMS)]
    for t in range(steps):
        grads = [
            ml.Tensor(OPT["%s/g%d" % (name, k)][t].astype(np.float32)) for k in range(N_PARAMS)
        ]
        opt.step(params, grads)
        for k in range(N_PARAMS):
            ref = OPT["%s/p%d" % (name, k)]
            got = params[k].numpy()
            # float32 state over <= 20 steps: ~1e-7 per step, relative to |p| <= 3
            np.testing.assert_allclose(
                got,
                ref[t + 1],
                rtol=1e-5,
                atol=1e-5,
                err_msg="%s step %d param %d" % (name, t + 1, k),
            )
            assert np.any(got != ref[t].astype(np.float32)), "parameter did not move"
    assert opt.iterations == steps


@pytest.mark.parametrize("name", OPT_CASES)
def test_optimizer_trajectory_on_quadratic(name):
    """Closed loop: gradients of the quadratic computed from metalearn's own parameters."""
    opt, steps = _make_opt(name)
    params = [ml.Tensor(OPT["optim/p%d_init" % k]) for k in range(N_PARAMS)]
    a = [OPT["optim/a%d" % k] for k in range(N_PARAMS)]
    c = [OPT["optim/c%d" % k] for k in range(N_PARAMS)]
    for t in range(steps):
        grads = [ml.Tensor(a[k] * (params[k].numpy() - c[k])) for k in range(N_PARAMS)]
        opt.step(params, grads)
    for k in range(N_PARAMS):
        ref = OPT["%s/p%d" % (name, k)][steps]
        start = OPT["%s/p%d" % (name, k)][0]
        np.testing.assert_allclose(
            params[k].numpy(), ref, rtol=1e-4, atol=1e-4, err_msg="%s final param %d" % (name, k)
        )
        assert np.abs(ref - start).min() > 1e-3  # every entry really moved
    assert opt.iterations == steps
