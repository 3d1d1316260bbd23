"""SimpleRNN / GRU / LSTM / Masking beyond Keras' own values: a NumPy reference of each
cell (random weights, masks, go_backwards, return_state), gradients to second order by
finite differences, traced ``fit`` equal to eager steps, ``functional_call``, masks
through Sequential and functional models and ``Embedding(mask_zero=True)``, config round
trips and bad input (a clear exception, nothing changed)."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.functional import functional_call
from metalearn.keras import layers
from tests.core.test_gradcheck import gradcheck


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_rnn(kind, x, w, mask=None, go_backwards=False, reset_after=True, units=None):
    """NumPy float64 reference written from Keras' cell formulas; returns (seq, states)."""
    x = x.astype(np.float64)
    k, r = w[0].astype(np.float64), w[1].astype(np.float64)
    b = w[2].astype(np.float64) if len(w) > 2 else None
    n, steps, _ = x.shape
    u = r.shape[0]
    h = np.zeros((n, u))
    c = np.zeros((n, u))
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    seq = []
    for t in order:
        xt = x[:, t]
        if kind == "simple":
            hn = np.tanh(xt @ k + h @ r + (0 if b is None else b))
            new = [hn]
        elif kind == "lstm":
            z = xt @ k + h @ r + (0 if b is None else b)
            i, f, g, o = (
                sig(z[:, :u]),
                sig(z[:, u : 2 * u]),
                np.tanh(z[:, 2 * u : 3 * u]),
                sig(z[:, 3 * u :]),
            )
            cn = f * c + i * g
            new = [o * np.tanh(cn), cn]
        else:
            if reset_after:
                bi, br = (b[0], b[1]) if b is not None else (0, 0)
                xz = xt @ k + bi
                inner = h @ r + br
                zg = sig(xz[:, :u] + inner[:, :u])
                rg = sig(xz[:, u : 2 * u] + inner[:, u : 2 * u])
                hh = np.tanh(xz[:, 2 * u :] + rg * inner[:, 2 * u :])
            else:
                xz = xt @ k + (0 if b is None else b)
                zg = sig(xz[:, :u] + h @ r[:, :u])
                rg = sig(xz[:, u : 2 * u] + h @ r[:, u : 2 * u])
                hh = np.tanh(xz[:, 2 * u :] + (rg * h) @ r[:, 2 * u :])
            new = [zg * h + (1 - zg) * hh]
        if mask is not None:
            m = mask[:, t : t + 1].astype(np.float64)
            old = [h, c][: len(new)]
            new = [m * a + (1 - m) * o for a, o in zip(new, old)]
        h = new[0]
        if kind == "lstm":
            c = new[1]
        seq.append(h)
    return np.stack(seq, 1), ([h, c] if kind == "lstm" else [h])


KINDS = {"simple": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_random_weights_match_numpy(kind, go_backwards, masked):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = (rng.uniform(size=(3, 5)) > 0.35) if masked else None
    layer = KINDS[kind](6, return_sequences=True, return_state=True, go_backwards=go_backwards)
    layer(x)
    w = [rng.standard_normal(v.shape).astype(np.float32) * 0.5 for v in layer.weights]
    layer.set_weights(w)
    out = layer(x, mask=mask)
    seq, states = ref_rnn(kind, x, w, mask, go_backwards)
    np.testing.assert_allclose(out[0].numpy(), seq, rtol=1e-5, atol=1e-5)
    assert len(out) == 1 + len(states)
    for a, b in zip(out[1:], states):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)


def test_gru_reset_before_matches_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    layer = layers.GRU(5, reset_after=False)
    layer(x)
    assert layer.bias.shape == (15,)
    w = [rng.standard_normal(v.shape).astype(np.float32) * 0.5 for v in layer.weights]
    layer.set_weights(w)
    _, states = ref_rnn("gru", x, w, reset_after=False)
    np.testing.assert_allclose(layer(x).numpy(), states[0], rtol=1e-5, atol=1e-5)


def test_weight_layout_and_defaults():
    x = np.zeros((2, 3, 4), np.float32)
    lstm = layers.LSTM(5)
    lstm(x)
    assert [tuple(v.shape) for v in lstm.weights] == [(4, 20), (5, 20), (20,)]
    bias = lstm.bias.numpy()  # unit_forget_bias: ones on the forget gate's rows
    np.testing.assert_array_equal(bias, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])
    r = lstm.recurrent_kernel.numpy()  # orthogonal: rows orthonormal (5 x 20)
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-5)
    gru = layers.GRU(5)
    gru(x)
    assert [tuple(v.shape) for v in gru.weights] == [(4, 15), (5, 15), (2, 15)]
    cfg = gru.get_config()
    assert cfg["reset_after"] and cfg["activation"] == "tanh"
    assert cfg["recurrent_activation"] == "sigmoid"
    assert cfg["recurrent_initializer"]["class_name"] == "Orthogonal"
    assert "recurrent_activation" not in layers.SimpleRNN(2).get_config()


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
def test_gradients_to_second_order(kind):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)
    layer = KINDS[kind](3, return_sequences=True)
    layer(x)
    w = [rng.standard_normal(v.shape).astype(np.float32) * 0.5 for v in layer.weights]
    mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)

    def fn(xx, k, r, b):
        return functional_call(layer, [k, r, b], xx, mask=mask)

    gradcheck(fn, [x] + w, order=1)
    gradcheck(fn, [x] + w, order=2)


def test_traced_fit_equals_eager_steps():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((16, 5, 3)).astype(np.float32)
    x[:4, 3:] = 0.0  # padded steps
    y = rng.standard_normal((16, 1)).astype(np.float32)

    def make():
        ml.random.set_seed(2)
        m = keras.Sequential(
            [
                keras.Input((5, 3)),
                layers.Masking(),
                layers.LSTM(4, return_sequences=True),
                layers.GRU(3),
                layers.Dense(1),
            ]
        )
        m.compile(optimizer="adam", loss="mse")
        return m

    traced, eager = make(), make()
    assert traced._can_trace(None)
    traced.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    # the step was recorded and replayed from C, not run eagerly after a failed record
    assert not traced._run_eagerly and traced._train_fn.n_traces == 1
    for _ in range(3):
        for i in range(0, 16, 8):
            with ml.GradientTape() as tape:
                loss = ml.reduce_mean(ml.square(ml.sub(eager(x[i : i + 8]), y[i : i + 8])))
            eager.optimizer.apply_gradients(
                zip(tape.gradient(loss, eager.trainable_weights), eager.trainable_weights)
            )
    for a, b in zip(traced.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_masks_through_sequential_functional_and_embedding():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 2)).astype(np.float32)
    x[0, 4:] = 0.0
    x[1, 2:] = 0.0
    lstm = layers.LSTM(4)
    seq_model = keras.Sequential([keras.Input((6, 2)), layers.Masking(), lstm])
    out = seq_model(x).numpy()
    np.testing.assert_allclose(out[0], lstm(x[:1, :4]).numpy()[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], lstm(x[1:2, :2]).numpy()[0], rtol=1e-6, atol=1e-6)
    inp = keras.Input((6, 2))
    func = keras.Model(inp, lstm(layers.Dense(2)(layers.Masking()(inp))))
    dense = func.layers[2]
    fo = func(x).numpy()  # the mask passes through Dense, as Keras 3
    np.testing.assert_allclose(fo[1], lstm(dense(x[1:2, :2])).numpy()[0], rtol=1e-6, atol=1e-6)
    # Embedding(mask_zero): index 0 is padding
    ids = np.array([[3, 1, 0, 0], [2, 2, 4, 0]])
    emb = layers.Embedding(5, 3, mask_zero=True)
    gru = layers.GRU(2)
    model = keras.Sequential([emb, gru])
    got = model(ids).numpy()
    np.testing.assert_array_equal(emb.compute_mask(ids).numpy(), ids != 0)
    np.testing.assert_allclose(got[0], gru(emb(ids[:1, :2])).numpy()[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], gru(emb(ids[1:, :3])).numpy()[0], rtol=1e-6, atol=1e-6)
    assert layers.Embedding.from_config(emb.get_config()).mask_zero


def test_return_sequences_mask_reaches_the_next_rnn():
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3) / 24
    x[0, 2:] = 0.0
    first, second = layers.SimpleRNN(3, return_sequences=True), layers.SimpleRNN(2)
    model = keras.Sequential([layers.Masking(), first, second])
    out = model(x).numpy()
    np.testing.assert_allclose(out[0], second(first(x[:1, :2])).numpy()[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "make,call,err,match",
    [
        (lambda: layers.LSTM(0), None, ValueError, "units"),
        (lambda: layers.GRU(2.5), None, ValueError, "units"),
        (lambda: layers.LSTM(2, recurrent_dropout=1.2), None, ValueError, "recurrent_dropout"),
        (lambda: layers.GRU(2, dropout=1.5), None, ValueError, "dropout"),
        (lambda: layers.Masking("x"), None, TypeError, "mask_value"),
        (
            lambda: layers.LSTM(2),
            lambda l: l(np.zeros((2, 3), np.float32)),
            ValueError,
            "rank 3|timesteps",
        ),
        (
            lambda: layers.GRU(2),
            lambda l: l(np.zeros((2, 3, 4, 1), np.float32)),
            ValueError,
            "timesteps",
        ),
        (lambda: layers.Masking(), lambda l: l(np.zeros((3,), np.float32)), ValueError, "rank 2"),
    ],
)
def test_bad_arguments(make, call, err, match):
    with pytest.raises(err, match=match):
        layer = make()
        call(layer)


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
def test_bad_call_inputs_change_nothing(kind):
    layer = KINDS[kind](3)
    x = np.ones((2, 4, 5), np.float32)
    layer(x)
    before = layer.get_weights()
    with pytest.raises(ValueError, match="5 features|features"):
        layer(np.ones((2, 4, 6), np.float32))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(x, mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="mask must be boolean or numeric"):
        layer(x, mask=np.array([["a"] * 4] * 2))
    with pytest.raises(ValueError, match="initial_state"):
        layer(x, initial_state=[np.zeros((2, 3), np.float32)] * 3)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        layer(x, initial_state=[np.zeros((2, 4), np.float32)] * (2 if kind == "lstm" else 1))
    with pytest.raises(ValueError, match="no time steps"):
        layer(np.ones((2, 0, 5), np.float32))
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_keeps_everything():
    layer = layers.LSTM(
        3,
        activation="relu",
        return_sequences=True,
        return_state=True,
        go_backwards=True,
        unit_forget_bias=False,
        zero_output_for_mask=True,
        kernel_regularizer="l2",
    )
    again = layers.deserialize(layers.serialize(layer))
    assert type(again) is layers.LSTM
    assert {**again.get_config(), "name": None} == {**layer.get_config(), "name": None}


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (2, 3, 4), (5, 5)])
def test_orthogonal_initializer(shape):
    from metalearn.keras import initializers
    from metalearn.keras.initializers import _orthonormal_columns

    q = initializers.get({"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": 3}})(shape)
    q = q.numpy().reshape(-1, shape[-1])
    g = q @ q.T if q.shape[0] <= q.shape[1] else q.T @ q
    np.testing.assert_allclose(g, 4.0 * np.eye(len(g)), atol=1e-5)  # gain^2 * I
    again = initializers.Orthogonal(gain=2.0, seed=3)(shape).numpy().reshape(q.shape)
    np.testing.assert_array_equal(again, q)  # a seed repeats the draw
    # the Q of LAPACK's QR with R's diagonal made positive (Keras' convention)
    a = np.random.default_rng(0).standard_normal((9, 4))
    ref, r = np.linalg.qr(a)
    np.testing.assert_allclose(_orthonormal_columns(a), ref * np.sign(np.diag(r)), atol=1e-12)


def test_stateful_continues_from_the_last_states_and_is_not_traced():
    rng = np.random.default_rng(8)
    a, b = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(2))
    plain = layers.LSTM(3, return_state=True)
    _, h, c = plain(a)
    stateful = layers.LSTM(3, stateful=True)
    stateful(a)
    stateful.set_weights(plain.get_weights())
    stateful.reset_state()
    stateful(a)
    np.testing.assert_allclose(
        stateful(b).numpy(), plain(b, initial_state=[h, c])[0].numpy(), rtol=1e-6, atol=1e-6
    )
    model = keras.Sequential([keras.Input((3, 4)), layers.GRU(2, stateful=True), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    assert not model._can_trace(None)
    model.fit(a, np.zeros((2, 1), np.float32), epochs=2, verbose=0)  # eager steps
    assert model.layers[0]._kept_states[0].shape == (2, 2)


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
def test_dropout_in_training_only(kind):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    extra = {"recurrent_dropout": 0.3} if kind == "simple" else {}
    layer = KINDS[kind](3, dropout=0.5, **extra)
    plain = KINDS[kind](3)
    layer(x)
    plain(x)
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(layer(x).numpy(), plain(x).numpy())  # inference
    ml.random.set_seed(4)
    a = layer(x, training=True).numpy()
    b = layer(x, training=True).numpy()
    assert np.abs(a - plain(x).numpy()).max() > 1e-3 and np.abs(a - b).max() > 1e-3
    # the input mask is one per call: with the state's dropout off, the output equals the
    # layer run on x times a (batch, features) mask of 0 and 2 (rate 0.5) for every step
    if kind != "simple":
        ml.random.set_seed(4)
        keep = (ml.random.uniform((4, 5)).numpy() > 0.5) * 2.0
        want = plain(x * keep[:, None, :].astype(np.float32)).numpy()
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    assert layer.get_config()["dropout"] == 0.5


def test_dropout_is_traced_and_redrawn_in_fit():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 3)), layers.LSTM(4, dropout=0.5), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    hist = model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0).history["loss"]
    assert not model._run_eagerly and model._train_fn.n_traces == 1
    before = model.get_weights()
    model.train_on_batch(x, y)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, model.get_weights()))
    assert len(set(np.round(hist, 7))) > 1
