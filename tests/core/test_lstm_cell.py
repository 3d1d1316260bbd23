"""The fused LSTM cell, ``_core.lstm_cell(z, c_prev) -> [h | c]`` (csrc/ops/lstm.c): values
and gradients to the third order against PyTorch float64 fixtures
(tests/reference/generate_lstm_cell.py), each order through both of its forms (the one-pass
kernel when nothing is recorded, the recorded op or formula under ``create_graph``), traces,
threads, bad input, and the LSTM layer's fused step against its op-by-op step."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, keras
from metalearn.functional import functional_call
from metalearn.keras.rnn import LSTM
from tests.helpers import REFERENCE

_FIX = np.load(REFERENCE / "lstm_cell.npz")
CASES = sorted({k.split("/")[0] for k in _FIX.files})


def case(name):
    return {k.split("/")[1]: _FIX[k] for k in _FIX.files if k.startswith(name + "/")}


def close(actual, expected, what, rtol=2e-5):
    actual = np.asarray(actual, np.float64)
    atol = 2e-5 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
    assert np.any(expected != 0) and np.any(actual != 0), what


def np_cell(z, cp):
    u = cp.shape[1]
    s = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    i, f, g, o = s(z[:, :u]), s(z[:, u : 2 * u]), np.tanh(z[:, 2 * u : 3 * u]), s(z[:, 3 * u :])
    c = f * cp + i * g
    return np.concatenate([o * np.tanh(c), c], 1)


def test_fixtures_present():
    assert len(CASES) == 4


@pytest.mark.parametrize("name", CASES)
def test_forward(name):
    c = case(name)
    y = _core.lstm_cell(c["z"], c["c_prev"])
    assert y.shape == c["out"].shape and y.dtype == np.float32
    close(y.numpy(), c["out"], "forward")


def _first(c, create_graph):
    z = ml.Variable(c["z"])
    cp = ml.Variable(c["c_prev"])
    w = ml.Variable(c["w"])
    y = _core.lstm_cell(z, cp)
    g = ml.grad(ml.reduce_sum(ml.mul(y, w)), [z, cp], create_graph=create_graph)
    return z, cp, w, g


@pytest.mark.parametrize("create_graph", [False, True], ids=["one-pass", "recorded"])
@pytest.mark.parametrize("name", CASES)
def test_first_order(name, create_graph):
    c = case(name)
    _, _, _, (gz, gc) = _first(c, create_graph)
    close(gz.numpy(), c["gz"], "dz")
    close(gc.numpy(), c["gc"], "dc_prev")


def _second(c, create_graph):
    z, cp, w, (gz, gc) = _first(c, True)
    s2 = ml.add(
        ml.reduce_sum(ml.mul(gz, ml.Tensor(c["vz"]))), ml.reduce_sum(ml.mul(gc, ml.Tensor(c["vc"])))
    )
    return z, cp, w, ml.grad(s2, [z, cp, w], create_graph=create_graph)


@pytest.mark.parametrize("create_graph", [False, True], ids=["one-pass", "formula"])
@pytest.mark.parametrize("name", CASES)
def test_second_order(name, create_graph):
    """The Hessian-vector products in z and c_prev, and the Jacobian-vector product through
    the output's weights (the gradient of the backward with respect to [dh | dc])."""
    c = case(name)
    _, _, _, (hz, hc, hw) = _second(c, create_graph)
    close(hz.numpy(), c["hz"], "d2 z")
    close(hc.numpy(), c["hc"], "d2 c_prev")
    close(hw.numpy(), c["hw"], "d2 w")


@pytest.mark.parametrize("name", CASES)
def test_third_order(name):
    c = case(name)
    z, cp, w, (hz, hc, hw) = _second(c, True)
    s3 = ml.reduce_sum(ml.mul(hz, ml.Tensor(c["uz"])))
    s3 = ml.add(s3, ml.reduce_sum(ml.mul(hc, ml.Tensor(c["uc"]))))
    s3 = ml.add(s3, ml.reduce_sum(ml.mul(hw, ml.Tensor(c["uw"]))))
    tz, tc, tw = ml.grad(s3, [z, cp, w])
    close(tz.numpy(), c["tz"], "d3 z", rtol=1e-4)
    close(tc.numpy(), c["tc"], "d3 c_prev", rtol=1e-4)
    close(tw.numpy(), c["tw"], "d3 w", rtol=1e-4)


def test_only_the_wanted_gradients():
    """A c_prev without grad (the first step's zeros) gets none, and z's is unchanged."""
    c = case("b3_u5")
    z = ml.Variable(c["z"])
    y = _core.lstm_cell(z, c["c_prev"])
    (gz,) = ml.grad(ml.reduce_sum(ml.mul(y, ml.Tensor(c["w"]))), [z])
    close(gz.numpy(), c["gz"], "dz")
    # second order with c_prev constant
    (gz,) = ml.grad(ml.reduce_sum(ml.mul(y, ml.Tensor(c["w"]))), [z], create_graph=True)
    (hz,) = ml.grad(ml.reduce_sum(ml.mul(gz, ml.Tensor(c["vz"]))), [z])
    assert hz.shape == z.shape and np.all(np.isfinite(hz.numpy()))


def test_bad_input_is_a_clear_error_and_changes_nothing():
    z = np.ones((3, 8), np.float32)
    cp = np.ones((3, 2), np.float32)
    zt, ct = ml.Variable(z), ml.Variable(cp)
    for bad_z, bad_c, what in [
        (np.ones((3, 7), np.float32), cp, "z must have shape"),
        (np.ones((2, 8), np.float32), cp, "z must have shape"),
        (np.ones((3, 8, 1), np.float32), cp, "z must have shape"),
        (z, np.ones((3,), np.float32), "c_prev must have shape"),
        (z, np.ones((3, 0), np.float32), "c_prev must have shape"),
    ]:
        with pytest.raises(ValueError, match="lstm_cell: " + what):
            _core.lstm_cell(bad_z, bad_c)
    with pytest.raises(TypeError, match="lstm_cell"):
        _core.lstm_cell("abc", ct)
    with pytest.raises(TypeError):
        _core.lstm_cell(zt)
    np.testing.assert_array_equal(zt.numpy(), z)
    np.testing.assert_array_equal(ct.numpy(), cp)


def _grads2(z, cp, w, v):
    y = _core.lstm_cell(z, cp)
    gz, gc = ml.grad(ml.reduce_sum(ml.mul(y, w)), [z, cp], create_graph=True)
    s2 = ml.add(ml.reduce_sum(ml.mul(gz, v[0])), ml.reduce_sum(ml.mul(gc, v[1])))
    return [y, gz, gc] + list(ml.grad(s2, [z, cp, w]))


def test_threads_give_the_same_bits():
    """Rows split over threads from 16 k elements a gate on: any thread count, one result."""
    rng = np.random.default_rng(3)
    b, u = 70, 256
    z = ml.Variable(rng.standard_normal((b, 4 * u)).astype(np.float32))
    cp = ml.Variable(rng.standard_normal((b, u)).astype(np.float32))
    w = ml.Variable(rng.standard_normal((b, 2 * u)).astype(np.float32))
    v = [ml.Tensor(rng.standard_normal(s).astype(np.float32)) for s in ((b, 4 * u), (b, u))]
    before = ml.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            ml.set_num_threads(n)
            results.append([t.numpy().copy() for t in _grads2(z, cp, w, v)])
    finally:
        ml.set_num_threads(before)
    for a, b_ in zip(*results):
        assert a.tobytes() == b_.tobytes()
    np.testing.assert_allclose(results[0][0], np_cell(z.numpy(), cp.numpy()), atol=2e-6)


def test_a_trace_replays_every_order():
    """A traced function through the cell, its gradient and the gradient of that (the
    forward's saved gates and the backwards' one-pass entries replayed), on new values."""
    rng = np.random.default_rng(4)
    b, u = 4, 8
    z = ml.Variable(rng.standard_normal((b, 4 * u)).astype(np.float32))
    cp = ml.Variable(rng.standard_normal((b, u)).astype(np.float32))
    w = ml.Variable(rng.standard_normal((b, 2 * u)).astype(np.float32))
    vc = ml.Tensor(rng.standard_normal((b, u)).astype(np.float32))

    def body(vz):
        return _grads2(z, cp, w, [vz, vc])

    traced = ml.function(body)
    for k in range(3):
        vz = ml.Tensor(rng.standard_normal((b, 4 * u)).astype(np.float32))
        z.assign(rng.standard_normal((b, 4 * u)).astype(np.float32))
        w.assign(rng.standard_normal((b, 2 * u)).astype(np.float32))
        got = traced(vz)
        want = body(vz)
        for a, e in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
    assert traced.n_traces == 1
    text = traced.describe()
    assert "= lstm_cell_grad2(" in text and "= lstm_cell_grad(" in text


# ------------------------------------------------------------------ the layer


def _lstm_model(units, seed=0):
    ml.random.set_seed(seed)
    return keras.Sequential([keras.Input((6, 5)), keras.layers.LSTM(units), keras.layers.Dense(1)])


@pytest.mark.parametrize("units", [8, 5])
def test_layer_fused_step_equals_the_op_by_op_step(units, monkeypatch):
    """LSTM's fused step against its generic one (the composed sigmoid, tanh, mul, add):
    the same forward bits where units is a multiple of 8 (the vector math's lane groups
    line up), and the same first and second-order gradients to float32 rounding."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    xq = rng.standard_normal((3, 6, 5)).astype(np.float32)
    y = rng.standard_normal((3, 1)).astype(np.float32)

    def run(fused):
        monkeypatch.setattr(LSTM, "_fused_cell", fused)
        model = _lstm_model(units)
        ws = model.trainable_weights
        out = model(x)
        loss = ml.reduce_mean(ml.square(ml.sub(out, y)))
        g = ml.grad(loss, ws, create_graph=True)
        fast = [ml.sub(w, ml.mul_scalar(gw, 0.1)) for w, gw in zip(ws, g)]
        qout = functional_call(model, fast, xq)
        q = ml.reduce_mean(ml.square(ml.sub(qout, y)))
        meta = ml.grad(q, ws)
        return out.numpy(), [t.numpy() for t in g], [t.numpy() for t in meta]

    out_f, g_f, m_f = run(True)
    out_o, g_o, m_o = run(False)
    if units % 8 == 0:
        np.testing.assert_array_equal(out_f, out_o)
    else:
        np.testing.assert_allclose(out_f, out_o, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_f + m_f, g_o + m_o):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b).max()))


def test_layer_uses_the_fused_cell_only_for_the_default_activations():
    x = np.random.default_rng(6).standard_normal((2, 3, 4)).astype(np.float32)
    layer = keras.layers.LSTM(4)
    layer.build((2, 3, 4))
    fused_ops = []

    def spy(z, c):
        fused_ops.append(z.shape)
        return _core.lstm_cell(z, c)

    import metalearn.keras.rnn as rnn

    real = rnn._core
    try:

        class Spy:
            def __getattr__(self, name):
                return spy if name == "lstm_cell" else getattr(real, name)

        rnn._core = Spy()
        layer(x)
        assert fused_ops == [(2, 16)] * 3
        fused_ops.clear()
        other = keras.layers.LSTM(4, activation="relu")
        other.build((2, 3, 4))
        other(x)
        assert fused_ops == []
    finally:
        rnn._core = real


@pytest.mark.parametrize(
    "m, n, k", [(32, 128, 512), (64, 128, 512), (32, 784, 128), (16, 100, 300)]
)
def test_recurrent_backward_product_b_transposed_has_the_bits_of_the_plain_product(m, n, k):
    # dz @ U^T runs as C^T = U A^T (gemm_small.c: A^T and C^T copied, not the larger B^T);
    # every element must still be the plain product's FMA chain over k, bit for bit, on 1
    # and 3 threads (the split runs parts that copy B^T instead)
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    want = ml.matmul(a, np.ascontiguousarray(b.T)).numpy()
    before = ml.get_num_threads()
    try:
        for threads in (1, 3):
            ml.set_num_threads(threads)
            got = ml.matmul(a, b, transpose_b=True).numpy()
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    finally:
        ml.set_num_threads(before)
    np.testing.assert_allclose(want, a.astype(np.float64) @ b.T.astype(np.float64), atol=1e-4)


@pytest.mark.parametrize("m", [7, 8, 14, 32])
def test_small_gemm_row_tiles_do_not_change_the_bits(m):
    # the last 7 or 8 rows of an unpacked product run as two tiles of 3-4 rows (gemm_small.c);
    # each element is one FMA chain over k whichever tile holds it: the rows of the whole
    # product equal those of products of 6 rows and of the rest, bit for bit
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, 128)).astype(np.float32)
    b = rng.standard_normal((128, 512)).astype(np.float32)
    whole = ml.matmul(a, b).numpy()
    cut = (m - 1) // 6 * 6 if m % 6 in (1, 2) else m - 6
    for lo, hi in ((0, cut), (cut, m)):
        if hi - lo >= 2:  # one row is another path (gemm_path.c: ROW)
            part = ml.matmul(a[lo:hi], b).numpy()
            np.testing.assert_array_equal(part.view(np.uint32), whole[lo:hi].view(np.uint32))
