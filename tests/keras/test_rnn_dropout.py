"""``dropout`` and ``recurrent_dropout`` of SimpleRNN, GRU and LSTM with Keras 3's
semantics: inference unchanged; in training one (batch, features) mask of the inputs and
one (batch, units) mask of the state drawn once per call and reused at every step, a mask
per gate for LSTM and GRU when ``recurrent_dropout`` is on (Keras 3's implementation 1),
checked against a NumPy float64 recurrence written from Keras' cells with the masks drawn
from the same seed; the masks redrawn by every replay of ``fit``'s traced step and of a
MAML step, and gradients through them."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.functional import functional_call
from metalearn.keras import layers
from metalearn.meta import MAML
from metalearn.tasks import Task
from tests.core.test_gradcheck import gradcheck


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def draw_masks(seed, shapes, rates):
    """The masks a layer draws after ``set_seed(seed)``: a uniform draw per mask in
    order, kept where >= rate, scaled by 1 / (1 - rate)."""
    ml.random.set_seed(seed)
    out = []
    for shape, rate in zip(shapes, rates):
        u = ml.random.uniform(shape).numpy().astype(np.float64)
        out.append((u >= rate) / (1.0 - rate))
    return out


def ref_dropped(kind, x, w, dms, rms, reset_after=True):
    """Keras 3's cells (implementation 1 for GRU/LSTM) in float64: `dms`/`rms` are the
    per-gate input and state masks (one entry for SimpleRNN); returns the sequence."""
    x = x.astype(np.float64)
    k, r, b = (a.astype(np.float64) for a in w)
    n, steps, _ = x.shape
    u = r.shape[0]
    h, c = np.zeros((n, u)), np.zeros((n, u))
    seq = []
    for t in range(steps):
        xt = x[:, t]
        if kind == "simple":
            h = np.tanh((xt * dms[0]) @ k + b + (h * rms[0]) @ r)
        elif kind == "lstm":
            z = [
                (xt * dms[g]) @ k[:, g * u : (g + 1) * u]
                + b[g * u : (g + 1) * u]
                + (h * rms[g]) @ r[:, g * u : (g + 1) * u]
                for g in range(4)
            ]
            c = sig(z[1]) * c + sig(z[0]) * np.tanh(z[2])
            h = sig(z[3]) * np.tanh(c)
        else:
            bi, br = (b[0], b[1]) if reset_after else (b, np.zeros_like(b))
            xz, xr, xh = (
                (xt * dms[g]) @ k[:, g * u : (g + 1) * u] + bi[g * u : (g + 1) * u]
                for g in range(3)
            )
            rz, rr = (
                (h * rms[g]) @ r[:, g * u : (g + 1) * u] + br[g * u : (g + 1) * u] for g in range(2)
            )
            zg, rg = sig(xz + rz), sig(xr + rr)
            if reset_after:
                rh = rg * ((h * rms[2]) @ r[:, 2 * u :] + br[2 * u :])
            else:
                rh = (rg * (h * rms[2])) @ r[:, 2 * u :]
            hh = np.tanh(xh + rh)
            h = zg * h + (1 - zg) * hh
        seq.append(h)
    return np.stack(seq, 1)


GATES = {"simple": 1, "gru": 3, "lstm": 4}
KINDS = {"simple": layers.SimpleRNN, "gru": layers.GRU, "lstm": layers.LSTM}


def random_layer(kind, units=3, features=5, **kw):
    layer = KINDS[kind](units, return_sequences=True, **kw)
    layer.build((None, 4, features))
    rng = np.random.default_rng(3)
    layer.set_weights(
        [rng.uniform(-0.6, 0.6, w.shape).astype(np.float32) for w in layer.get_weights()]
    )
    return layer


@pytest.mark.parametrize(
    "kind,reset_after", [("simple", True), ("lstm", True), ("gru", True), ("gru", False)]
)
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_recurrent_dropout_matches_keras_cell_with_the_same_masks(kind, reset_after, dropout):
    x = np.random.default_rng(5).standard_normal((6, 4, 5)).astype(np.float32)
    extra = {"reset_after": reset_after} if kind == "gru" else {}
    layer = random_layer(kind, dropout=dropout, recurrent_dropout=0.3, **extra)
    w = layer.get_weights()
    n = GATES[kind]
    # inference: no mask at all, the plain cell
    ones = [np.ones((6, 5))] * n, [np.ones((6, 3))] * n
    np.testing.assert_allclose(
        layer(x).numpy(), ref_dropped(kind, x, w, *ones, reset_after), rtol=1e-5, atol=1e-5
    )
    ml.random.set_seed(11)
    got = layer(x, training=True).numpy()
    shapes = ([(6, 5)] * n if dropout else []) + [(6, 3)] * n
    rates = ([dropout] * n if dropout else []) + [0.3] * n
    masks = draw_masks(11, shapes, rates)
    dms = masks[:n] if dropout else [np.ones((6, 5))] * n
    rms = masks[-n:]
    want = ref_dropped(kind, x, w, dms, rms, reset_after)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the masks act: the output differs from inference, and the complementary state
    # masks give other later steps
    assert np.abs(got - layer(x).numpy()).max() > 1e-2
    swapped = ref_dropped(kind, x, w, dms, [1.0 / 0.7 - m for m in rms], reset_after)
    assert np.abs(got[:, 1:] - swapped[:, 1:]).max() > 1e-2


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_dropout_gradients_to_second_order(kind):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)
    layer = KINDS[kind](3, return_sequences=True, dropout=0.2, recurrent_dropout=0.3)
    layer(x)
    w = [rng.standard_normal(v.shape).astype(np.float32) * 0.5 for v in layer.weights]

    def fn(xx, k, r, b):
        ml.random.set_seed(3)  # the same masks at every evaluation
        return functional_call(layer, [k, r, b], xx, training=True)

    gradcheck(fn, [x] + w, order=1)
    gradcheck(fn, [x] + w, order=2)


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
def test_recurrent_dropout_traced_in_fit_and_redrawn(kind):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    ml.random.set_seed(1)
    rnn = KINDS[kind](4, dropout=0.2, recurrent_dropout=0.5)
    model = keras.Sequential([keras.Input((4, 3)), rnn, layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    hist = model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0).history["loss"]
    assert not model._run_eagerly and model._train_fn.n_traces == 1
    assert len(set(np.round(hist, 7))) == 4
    # evaluate (inference) is deterministic: no mask
    assert model.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_recurrent_dropout_under_maml():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 10, 6, 2)).astype(np.float32)
    y = x.sum(axis=(2, 3))[..., None].astype(np.float32) / 3.0
    task = Task(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:], {"batched": True})

    def model(rd):
        ml.random.set_seed(1)
        rnn = layers.LSTM(8, recurrent_dropout=rd, dropout=rd)
        return keras.Sequential([keras.Input((6, 2)), rnn, layers.Dense(1)])

    plain = MAML(model(0.0), inner_lr=0.1, loss="mse")
    dropped = MAML(model(0.5), inner_lr=0.1, loss="mse")
    ml.random.set_seed(8)
    l0, g0 = plain.meta_gradients(task)
    ml.random.set_seed(8)
    l1, g1 = dropped.meta_gradients(task)
    l2, g2 = dropped.meta_gradients(task)
    for g in g1 + g2:
        assert np.all(np.isfinite(np.asarray(g)))
    # the masks are drawn in training (the inner and outer losses) and anew each time
    assert abs(l1 - l0) > 1e-4 and abs(l1 - l2) > 1e-6


def test_config_round_trip_and_bad_rates():
    layer = layers.GRU(3, dropout=0.25, recurrent_dropout=0.5, seed=7)
    config = layer.get_config()
    assert (config["dropout"], config["recurrent_dropout"], config["seed"]) == (0.25, 0.5, 7)
    again = layers.GRU.from_config(config)
    assert (again.dropout, again.recurrent_dropout) == (0.25, 0.5)
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ValueError, match="recurrent_dropout"):
            layers.LSTM(2, recurrent_dropout=bad)
