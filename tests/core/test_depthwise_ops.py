"""depthwise_conv2d: forward against a NumPy loop, gradients of first, second and third
order by central differences, PyTorch float64 fixtures to second order
(tests/reference/ops_depthwise.npz, made by generate_depthwise.py), traces, threads and bad
input. Also the layer-level compositions of issue 22 that have no op of their own: dilated
kernels, nearest/bilinear upsampling, zero padding and cropping, to third order."""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core
from metalearn.keras import layers
from tests.core.test_gradcheck import gradcheck
from tests.helpers import F32, REFERENCE as REF


def N(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def _pads(n, k, s, padding):
    if padding == "valid":
        return (n - k) // s + 1, 0
    out = -(-n // s)
    return out, max((out - 1) * s + k - n, 0) // 2


def depthwise_np(x, k, b=None, strides=(1, 1), padding="valid"):
    """The definition, in float64: y[n,o,p,c*M+m] = sum_ij x[n, o*sh+i-pt, p*sw+j-pl, c] k[i,j,c,m]."""
    n, h, w, c = x.shape
    kh, kw, _, m = k.shape
    sh, sw = strides
    oh, pt = _pads(h, kh, sh, padding)
    ow, pl = _pads(w, kw, sw, padding)
    y = np.zeros((n, oh, ow, c * m))
    for o in range(oh):
        for p in range(ow):
            for i in range(kh):
                for j in range(kw):
                    ih, iw = o * sh + i - pt, p * sw + j - pl
                    if 0 <= ih < h and 0 <= iw < w:
                        y[:, o, p, :] += (
                            x[:, ih, iw, :, None].astype(np.float64) * k[i, j].astype(np.float64)
                        ).reshape(n, c * m)
    return y if b is None else y + b


@pytest.mark.parametrize(
    "shape,kshape,strides,padding",
    [
        ((2, 5, 6, 3), (3, 3, 3, 1), (1, 1), "valid"),
        ((2, 5, 6, 3), (3, 2, 3, 2), (1, 1), "same"),
        ((1, 7, 8, 2), (3, 3, 2, 3), (2, 2), "same"),
        ((3, 9, 4, 5), (2, 1, 5, 1), (3, 1), "valid"),
        ((1, 1, 1, 4), (1, 1, 4, 2), (1, 1), "valid"),
    ],
)
def test_forward_matches_the_definition(shape, kshape, strides, padding):
    rng = np.random.default_rng(0)
    x, k, b = N(rng, *shape), N(rng, *kshape), N(rng, kshape[2] * kshape[3])
    y = _core.depthwise_conv2d(x, k, b, strides, padding)
    np.testing.assert_allclose(
        np.asarray(y), depthwise_np(x, k, b, strides, padding), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("padding,strides", [("same", (1, 1)), ("valid", (2, 1))])
def test_gradients_to_third_order(padding, strides):
    rng = np.random.default_rng(1)
    x, k = N(rng, 2, 5, 4, 2), N(rng, 3, 2, 2, 2, scale=0.5)

    def f(x, k):
        return ml.tanh(_core.depthwise_conv2d(x, k, None, strides, padding))

    for order in (1, 2, 3):
        gradcheck(f, [x, k], order=order, eps=1e-3)


def test_bias_gradient_second_order():
    rng = np.random.default_rng(2)
    x, k, b = N(rng, 2, 4, 4, 3), N(rng, 2, 2, 3, 1), N(rng, 3)
    gradcheck(
        lambda x, k, b: ml.square(_core.depthwise_conv2d(x, k, b, 1, "same")),
        [x, k, b],
        order=2,
        eps=1e-3,
    )


def _load():
    with np.load(REF / "ops_depthwise.npz", allow_pickle=False) as z:
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
    assert {c["meta"]["op"] for c in FIX} == {"depthwise_conv2d"}
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

    out = _core.depthwise_conv2d(
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
    k = ml.tensor(N(rng, 3, 3, 2, 2), requires_grad=True)

    def step(x):
        y = _core.depthwise_conv2d(x, k, None, (2, 1), "same")
        loss = ml.reduce_sum(ml.square(y))
        (g,) = ml.grad(loss, [k], create_graph=True)
        (gg,) = ml.grad(ml.reduce_sum(ml.square(g)), [k])  # second order inside the trace
        return loss, gg

    fn = ml.function(step)
    for seed in (4, 5):
        x = N(np.random.default_rng(seed), 2, 6, 5, 2)
        got = fn(ml.tensor(x))
        want = step(ml.tensor(x))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_same_bits_for_any_thread_count():
    rng = np.random.default_rng(6)
    x = ml.tensor(N(rng, 9, 8, 7, 5), requires_grad=True)
    k = ml.tensor(N(rng, 3, 3, 5, 2), requires_grad=True)
    before = ml.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            ml.set_num_threads(threads)
            y = _core.depthwise_conv2d(x, k, None, 1, "same")
            gx, gk = ml.grad(ml.reduce_sum(ml.square(y)), [x, k])
            results.append([np.asarray(t).copy() for t in (y, gx, gk)])
    finally:
        ml.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


def test_bad_input_raises_and_changes_nothing():
    x = np.zeros((2, 6, 6, 3), F32)
    k = np.ones((3, 3, 3, 2), F32)
    with pytest.raises(ValueError, match=r"input has 3 channels but kernel expects 2"):
        _core.depthwise_conv2d(x, np.zeros((3, 3, 2, 1), F32))
    with pytest.raises(ValueError, match="strides must be positive"):
        _core.depthwise_conv2d(x, k, strides=(0, 1))
    with pytest.raises(ValueError, match=r"larger than the input"):
        _core.depthwise_conv2d(x, np.zeros((7, 3, 3, 1), F32))
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        _core.depthwise_conv2d(x, k, padding="causal")
    with pytest.raises(ValueError, match=r"4-D input"):
        _core.depthwise_conv2d(x[0], k)
    with pytest.raises(ValueError, match=r"4-D kernel"):
        _core.depthwise_conv2d(x, k[0])
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        _core.depthwise_conv2d(x, k, np.zeros(3, F32))
    np.testing.assert_array_equal(k, 1.0)  # inputs untouched


# -------------------------------------------------- compositions used by the layers


def test_layer_compositions_to_third_order():
    """Dilated Conv1D (kernel taps spread by pad_axis/narrow), causal padding, bilinear and
    nearest upsampling, zero padding and cropping: each differentiable to third order."""
    rng = np.random.default_rng(7)
    conv = layers.Conv1D(2, 2, padding="causal", dilation_rate=2, use_bias=False)
    x1 = N(rng, 2, 6, 2)
    conv(x1)

    def f_conv(x, k):
        return ml.tanh(ml.functional_call(conv, {"kernel": k}, x))

    for order in (1, 2, 3):
        gradcheck(f_conv, [x1, N(rng, 2, 2, 2, scale=0.5)], order=order, eps=1e-3)
    img = N(rng, 2, 3, 4, 2)
    for layer in (
        layers.UpSampling2D((2, 3)),
        layers.UpSampling2D(2, interpolation="bilinear"),
        layers.ZeroPadding2D(((1, 0), (2, 1))),
        layers.Cropping2D(((1, 0), (1, 2))),
        layers.Permute((3, 1, 2)),
    ):
        for order in (1, 2, 3):
            gradcheck(lambda x, layer=layer: ml.tanh(layer(x)), [img], order=order, eps=1e-3)
