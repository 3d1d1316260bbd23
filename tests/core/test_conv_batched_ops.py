"""conv2d_batched (conv2d over T tasks, each with its own kernel: MAML's per-task fast
weights): each task's forward and gradients of first and second order are conv2d's, bit for
bit; PyTorch float64 fixtures to second order (tests/reference/ops_conv_batched.npz, made by
generate_conv_batched.py); central differences to third order; traces; bad input."""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core
from tests.core.test_gradcheck import gradcheck
from tests.helpers import F32, REFERENCE as REF


def N(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def _both_ways(x, k, b, strides, padding):
    """conv2d_batched's output, gradients and a second-order gradient, and the same from
    conv2d task by task (numpy arrays)."""
    T = x.shape[0]
    xs = ml.tensor(x, requires_grad=True)
    ks = ml.tensor(k, requires_grad=True)
    bs = None if b is None else ml.tensor(b, requires_grad=True)
    ins = [xs, ks] + ([] if b is None else [bs])
    y = _core.conv2d_batched(xs, ks, bs, strides, padding)
    g = ml.grad(ml.reduce_sum(ml.square(y)), ins, create_graph=True)
    gg = ml.grad(ml.reduce_sum(ml.square(g[1])), ins[:2])  # through the kernel gradient
    batched = [np.asarray(y)] + [np.asarray(t) for t in g] + [np.asarray(t) for t in gg]
    per_task = []
    for t in range(T):
        xt = ml.tensor(x[t], requires_grad=True)
        kt = ml.tensor(k[t], requires_grad=True)
        bt = None if b is None else ml.tensor(b[t], requires_grad=True)
        ins = [xt, kt] + ([] if b is None else [bt])
        yt = _core.conv2d(xt, kt, bt, strides, padding)
        gt = ml.grad(ml.reduce_sum(ml.square(yt)), ins, create_graph=True)
        ggt = ml.grad(ml.reduce_sum(ml.square(gt[1])), ins[:2])
        per_task.append(
            [np.asarray(yt)] + [np.asarray(a) for a in gt] + [np.asarray(a) for a in ggt]
        )
    return batched, [np.stack(parts) for parts in zip(*per_task)]


@pytest.mark.parametrize(
    "xshape,kshape,bias,strides,padding",
    [
        ((3, 2, 6, 5, 3), (3, 3, 3, 3, 4), True, (1, 1), "valid"),
        # conv4's layers at Omniglot shapes (3x3, stride 1, 'same': the Winograd geometry)
        ((2, 8, 14, 14, 16), (2, 3, 3, 16, 16), True, (1, 1), "same"),
        ((2, 5, 28, 28, 1), (2, 3, 3, 1, 8), True, (1, 1), "same"),
        ((2, 3, 7, 6, 2), (2, 3, 3, 2, 3), False, (2, 2), "same"),
        ((4, 3, 3, 4, 5), (4, 1, 1, 5, 2), True, (1, 1), "valid"),
        ((1, 2, 5, 5, 2), (1, 2, 3, 2, 2), False, (1, 2), "valid"),
    ],
)
def test_each_task_is_conv2d_bit_for_bit(xshape, kshape, bias, strides, padding):
    """Task t of conv2d_batched is conv2d(x[t], kernel[t], bias[t]): the same kernels on the
    task's own shape, so the same bits, for the output and for gradients of first and second
    order (the task-batched conv2d_input_grad / conv2d_kernel_grad)."""
    rng = np.random.default_rng(sum(xshape))
    x, k = N(rng, *xshape), N(rng, *kshape, scale=0.3)
    b = N(rng, kshape[0], kshape[-1]) if bias else None
    batched, per_task = _both_ways(x, k, b, strides, padding)
    assert len(batched) == len(per_task)
    for a, e in zip(batched, per_task):
        assert a.shape == e.shape
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("padding,strides", [("same", (1, 1)), ("valid", (2, 1))])
def test_gradients_to_third_order(padding, strides):
    rng = np.random.default_rng(1)
    x, k, b = N(rng, 2, 2, 5, 4, 2), N(rng, 2, 3, 2, 2, 2, scale=0.5), N(rng, 2, 2)

    def f(x, k, b):
        return ml.tanh(_core.conv2d_batched(x, k, b, strides, padding))

    for order in (1, 2, 3):
        gradcheck(f, [x, k, b], order=order, eps=1e-3)


def _load():
    with np.load(REF / "ops_conv_batched.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    cases = []
    for name in sorted({k.split("/")[0] for k in data}):
        pre = name + "/"
        case = {k[len(pre) :]: v for k, v in data.items() if k.startswith(pre)}
        case["meta"] = json.loads(str(case["meta"]))
        case["id"] = name
        cases.append(case)
    return cases


FIX = _load()


def _close(actual, expected, rtol, what):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    atol = 1e-5 * max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
    assert np.any(actual != 0) or not np.any(expected != 0), what


def test_fixture_file_covers_the_op():
    assert {c["meta"]["op"] for c in FIX} == {"conv2d_batched"}
    assert len(FIX) >= 4


@pytest.mark.parametrize("case", FIX, ids=[c["id"] for c in FIX])
def test_fixture_forward_grad_ggrad(case):
    meta = case["meta"]
    n = sum(1 for k in case if k.startswith("x") and k[1:].isdigit())
    ts = [ml.tensor(case["x%d" % i], requires_grad=i in meta["diff"]) for i in range(n)]

    def res(spec):
        if isinstance(spec, str) and spec.startswith("$x"):
            return ts[int(spec[2:])]
        return tuple(spec) if isinstance(spec, list) else spec

    out = _core.conv2d_batched(
        *[res(a) for a in meta["args"]], **{k: res(v) for k, v in meta["kwargs"].items()}
    )
    _close(out, case["out"], 1e-4, case["id"] + " forward")
    dx = [ts[i] for i in meta["diff"]]
    w = ml.tensor(case["w"], requires_grad=True)
    grads = ml.grad(ml.reduce_sum(out * w), dx, create_graph=True)
    s2 = None
    for i, g in zip(meta["diff"], grads):
        _close(g, case["grad%d" % i], 1e-4, "%s grad%d" % (case["id"], i))
        term = ml.reduce_sum(g * ml.tensor(case["v%d" % i]))
        s2 = term if s2 is None else s2 + term
    second = ml.grad(s2, dx + [w], allow_unused=True)
    for i, g in zip(meta["diff"], second[:-1]):
        exp = case["ggrad%d" % i]
        got = np.zeros_like(exp) if g is None else np.asarray(g)
        _close(got, exp, 2e-4, "%s ggrad%d" % (case["id"], i))
    _close(second[-1], case["jvp"], 2e-4, case["id"] + " jvp")


def test_traced_replay_equals_eager_with_new_inputs():
    rng = np.random.default_rng(3)
    k = ml.tensor(N(rng, 2, 3, 3, 2, 2), requires_grad=True)

    def step(x):
        y = _core.conv2d_batched(x, k, None, 1, "same")
        loss = ml.reduce_sum(ml.square(y))
        (g,) = ml.grad(loss, [k], create_graph=True)
        (gg,) = ml.grad(ml.reduce_sum(ml.square(g)), [k])  # second order inside the trace
        return loss, gg

    fn = ml.function(step)
    for seed in (4, 5):
        x = N(np.random.default_rng(seed), 2, 3, 6, 5, 2)
        got = fn(ml.tensor(x))
        want = step(ml.tensor(x))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_input_raises_and_changes_nothing():
    x = np.zeros((2, 3, 6, 6, 3), F32)
    k = np.ones((2, 3, 3, 3, 2), F32)
    with pytest.raises(ValueError, match=r"5-D input \(tasks, batch"):
        _core.conv2d_batched(x[0], k)
    with pytest.raises(ValueError, match=r"5-D kernel \(tasks, height"):
        _core.conv2d_batched(x, k[0])
    with pytest.raises(ValueError, match=r"same number of tasks"):
        _core.conv2d_batched(x, np.ones((3, 3, 3, 3, 2), F32))
    with pytest.raises(ValueError, match=r"input has 3 channels but kernel expects 2"):
        _core.conv2d_batched(x, np.zeros((2, 3, 3, 2, 2), F32))
    with pytest.raises(ValueError, match=r"bias must have shape \(2, 2\)"):
        _core.conv2d_batched(x, k, np.zeros(2, F32))
    with pytest.raises(ValueError, match=r"bias must have shape \(2, 2\)"):
        _core.conv2d_batched(x, k, np.zeros((1, 2), F32))
    with pytest.raises(ValueError, match="strides must be positive"):
        _core.conv2d_batched(x, k, strides=(0, 1))
    with pytest.raises(ValueError, match=r"larger than the input"):
        _core.conv2d_batched(x, np.zeros((2, 7, 3, 3, 1), F32))
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        _core.conv2d_batched(x, k, padding="causal")
    with pytest.raises(ValueError, match="at least 1"):
        _core.conv2d_batched(x[:0], k[:0])
    np.testing.assert_array_equal(k, 1.0)  # inputs untouched
    np.testing.assert_array_equal(x, 0.0)


def test_same_bits_for_any_thread_count():
    """The tasks run one after the other, each with conv2d's chunking (a function of the
    task's shape): the thread count shares out independent outputs only."""
    rng = np.random.default_rng(6)
    x = ml.tensor(N(rng, 3, 9, 8, 7, 5), requires_grad=True)
    k = ml.tensor(N(rng, 3, 3, 3, 5, 4), requires_grad=True)
    before = ml.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            ml.set_num_threads(threads)
            y = _core.conv2d_batched(x, k, None, 1, "same")
            gx, gk = ml.grad(ml.reduce_sum(ml.square(y)), [x, k])
            results.append([np.asarray(t).copy() for t in (y, gx, gk)])
    finally:
        ml.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)
