"""``seed`` of SimpleRNN, GRU and LSTM, as Keras 3's per-layer SeedGenerator and as
``Dropout(seed=s)``: with a seed, training call ``i`` draws its dropout and
recurrent-dropout masks from child ``i`` of NumPy's ``SeedSequence(seed)`` (one uniform
draw holding the call's masks side by side: the input masks, then the state masks, one per
gate for LSTM and GRU with recurrent_dropout), so the masks are reproducible from the seed,
new on every call, independent of ``metalearn.random.set_seed``; fit's traced step draws
them before each replay (equal to the eager step, step by step); ``.metalearn`` files keep
the streams' positions. ``seed=None`` keeps the global generator (test_rnn_dropout.py)."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers
from metalearn.meta import MAML
from metalearn.tasks import Task
from tests.keras.test_rnn_dropout import GATES, KINDS, random_layer, ref_dropped

X = np.random.default_rng(5).standard_normal((6, 4, 5)).astype(np.float32)


def stream_masks(seed, call, shapes, rates):
    """The masks of training call `call` of a layer with `seed`, from NumPy alone: child
    `call` of SeedSequence(seed) draws one (batch, sum of widths) uniform array, cut into
    the masks in order; kept where > rate, scaled by 1 / (1 - rate)."""
    seq = np.random.SeedSequence(seed, spawn_key=(call,))
    batch = shapes[0][0]
    u = np.random.Generator(np.random.PCG64(seq)).random(
        (batch, sum(s[1] for s in shapes)), dtype=np.float32
    )
    out, start = [], 0
    for (_, w), rate in zip(shapes, rates):
        out.append((u[:, start : start + w].astype(np.float64) > rate) / (1.0 - rate))
        start += w
    return out


@pytest.mark.parametrize("kind", ["simple", "gru", "lstm"])
@pytest.mark.parametrize("dropout,recurrent", [(0.4, 0.0), (0.0, 0.3), (0.4, 0.3)])
def test_masks_come_from_the_layers_stream(kind, dropout, recurrent):
    layer = random_layer(kind, dropout=dropout, recurrent_dropout=recurrent, seed=21)
    w = layer.get_weights()
    n = GATES[kind] if recurrent else 1
    shapes = ([(6, 5)] * n if dropout else []) + ([(6, 3)] * n if recurrent else [])
    rates = ([dropout] * n if dropout else []) + ([recurrent] * n if recurrent else [])
    outs = []
    for call in range(3):
        ml.random.set_seed(100 + call)  # the global generator plays no part
        got = layer(X, training=True).numpy()
        masks = stream_masks(21, call, shapes, rates)
        g = GATES[kind]  # one mask shared by every gate when n is 1
        dms = masks[:n] * (g // n) if dropout else [np.ones((6, 5))] * g
        rms = masks[-n:] if recurrent else [np.ones((6, 3))] * g
        np.testing.assert_allclose(got, ref_dropped(kind, X, w, dms, rms), rtol=1e-5, atol=1e-5)
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).max() > 1e-3  # a new mask on every call
    assert layer._seed_calls == 3
    layer(X)  # inference draws nothing
    assert layer._seed_calls == 3


def test_same_seed_same_masks_other_seed_other_masks_global_untouched():
    def run(seed, global_seed):
        ml.random.set_seed(global_seed)
        layer = random_layer("lstm", dropout=0.3, recurrent_dropout=0.4, seed=seed)
        return [layer(X, training=True).numpy() for _ in range(2)]

    a, b, c = run(7, 0), run(7, 1), run(8, 0)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    assert all(np.abs(p - q).max() > 1e-3 for p, q in zip(a, c))
    # a seeded layer's draws leave the global generator where it was
    layer = random_layer("gru", dropout=0.3, recurrent_dropout=0.4, seed=3)
    ml.random.set_seed(5)
    ref = np.asarray(ml.random.uniform((4,)))
    ml.random.set_seed(5)
    layer(X, training=True)
    np.testing.assert_array_equal(np.asarray(ml.random.uniform((4,))), ref)


def test_seed_must_be_an_integer():
    for kind in KINDS.values():
        with pytest.raises(ValueError, match="seed"):
            kind(2, dropout=0.5, seed=1.5)
        with pytest.raises(ValueError, match="seed"):
            kind(2, seed="7")
    assert layers.LSTM(2, seed=np.int64(4)).get_config()["seed"] == 4


def _fit(kind, seed, run_eagerly, global_seed=0, epochs=3):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    ml.random.set_seed(0)  # the same initial weights
    rnn = KINDS[kind](4, dropout=0.2, recurrent_dropout=0.5, seed=seed)
    model = keras.Sequential([keras.Input((4, 3)), rnn, layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse", run_eagerly=run_eagerly)
    ml.random.set_seed(global_seed)
    seen = []
    cb = keras.callbacks.LambdaCallback(on_batch_end=lambda b, logs: seen.append(logs["loss"]))
    model.fit(x, y, batch_size=3, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
    return model, seen


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
def test_traced_fit_takes_the_seeded_masks_and_equals_the_eager_step(kind):
    traced, seen = _fit(kind, 9, None)
    assert not traced._run_eagerly and traced._train_fn.n_traces == 2  # batches of 3 and 2
    assert traced.layers[0]._seed_calls == 9  # one draw per step: 3 steps x 3 epochs
    assert len(set(np.round(seen, 7))) == len(seen)  # new masks every step
    eager, seen_eager = _fit(kind, 9, True)
    assert seen == pytest.approx(seen_eager, rel=1e-6)
    for a, b in zip(traced.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the same seed gives the same run whatever the global generator; another seed not
    again, seen_again = _fit(kind, 9, None, global_seed=123)
    assert seen_again == seen
    other, seen_other = _fit(kind, 10, None)
    assert seen_other != seen


def test_metalearn_file_keeps_the_streams_position(tmp_path):
    full, _ = _fit("lstm", 4, None, epochs=3)
    part, _ = _fit("lstm", 4, None, epochs=2)
    part.save(tmp_path / "m.metalearn")
    back = keras.models.load_model(tmp_path / "m.metalearn")
    assert back.layers[0]._seed_calls == 6
    ml.random.set_seed(77)  # the seeded masks do not depend on it
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    back.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(back.get_weights(), full.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_metalearn_file_without_rnn_streams_still_loads(tmp_path):
    # a file written before seeded recurrent layers kept a stream: no "rnn_streams" in its
    # state; it loads, the stream starting afresh
    import json

    from metalearn import checkpoint

    model, _ = _fit("gru", 4, None, epochs=1)
    model.save(tmp_path / "m.metalearn")
    ckpt = checkpoint.load(tmp_path / "m.metalearn")
    state = dict(ckpt.state)
    assert state.pop("rnn_streams") == [3]
    json.dumps(state)
    # rewrite the file as the older code wrote it (same tensors, state without the key)
    from metalearn.keras import saving

    checkpoint.save(
        tmp_path / "old.metalearn",
        saving._ModelState(model),
        step=ckpt.step,
        fingerprint=ckpt.fingerprint,
        state=state,
    )
    back = keras.models.load_model(tmp_path / "old.metalearn")
    assert back.layers[0]._seed_calls == 0
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_maml_draws_new_seeded_masks_on_every_call():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 10, 6, 2)).astype(np.float32)
    y = x.sum(axis=(2, 3))[..., None].astype(np.float32) / 3.0
    task = Task(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:], {"batched": True})

    def learner(seed):
        ml.random.set_seed(1)
        rnn = layers.LSTM(8, recurrent_dropout=0.5, dropout=0.5, seed=seed)
        return MAML(keras.Sequential([keras.Input((6, 2)), rnn, layers.Dense(1)]), 0.1, loss="mse")

    a, b = learner(5), learner(5)
    ml.random.set_seed(8)
    first = [a.meta_gradients(task)[0] for _ in range(2)]
    ml.random.set_seed(9)
    second = [b.meta_gradients(task)[0] for _ in range(2)]
    assert first == second  # the layer's stream, not the global generator
    assert abs(first[0] - first[1]) > 1e-6  # new masks on every call
    assert a.model.layers[0]._seed_calls > 1
