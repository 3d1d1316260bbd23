"""Model/Sequential: structure, summary, training on real problems, weight files."""

import io
import time
from contextlib import redirect_stdout

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers
from metalearn.networks import AdaptiveNeuralNetwork
from tests.helpers import omniglot_file, requires_omniglot


def two_spirals(n_per_class=200, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, n_per_class)) * 3 * np.pi
    a = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (3 * np.pi)
    b = -a
    x = np.concatenate([a, b]) + rng.normal(scale=noise / (3 * np.pi), size=(2 * n_per_class, 2))
    y = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)]).astype(np.int32)
    return x.astype(np.float32), y


class TwoTower(keras.Model):
    def __init__(self):
        super().__init__(name="two_tower")
        self.blocks = [layers.Dense(8, activation="relu"), layers.Dense(8, activation="tanh")]
        self.head = layers.Dense(3)

    def call(self, inputs):
        return self.head(self.blocks[1](self.blocks[0](inputs)))


def test_subclassed_model_tracks_layers_and_builds_lazily():
    model = TwoTower()
    assert not model.built and model.trainable_variables == []
    out = model(np.zeros((4, 5), np.float32))
    assert out.shape == (4, 3)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    assert shapes == [(5, 8), (8,), (8, 8), (8,), (8, 3), (3,)]
    assert model.variables == model.weights and len(model.weights) == 6
    assert [p for p, _ in model._weight_paths()] == [
        "blocks/0/kernel",
        "blocks/0/bias",
        "blocks/1/kernel",
        "blocks/1/bias",
        "head/kernel",
        "head/bias",
    ]
    assert len(model.layers) == 3
    with pytest.raises(TypeError):
        keras.Model(inputs=None, outputs=None)


def test_sequential_summary_table():
    model = keras.Sequential(
        [
            layers.Flatten(input_shape=(28, 28)),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="seq",
    )
    assert model.built
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "seq"' in text
    rows = [l for l in lines if "(Flatten)" in l or "(Dense)" in l]
    assert len(rows) == 3
    assert "(None, 784)" in rows[0] and rows[0].split()[-1] == "0"
    assert "(None, 128)" in rows[1] and rows[1].split()[-1] == "100480"  # 784*128 + 128
    assert "(None, 10)" in rows[2] and rows[2].split()[-1] == "1290"
    assert "Total params: 101,770" in text and "Trainable params: 101,770" in text
    assert "Non-trainable params: 0" in text
    with pytest.raises(ValueError):
        keras.Sequential([layers.Dense(3)]).summary()


def test_sequential_with_input_add_and_pop():
    model = keras.Sequential()
    model.add(keras.Input(shape=(6,)))
    model.add(layers.Dense(4))
    assert model.built and model.output_shape == (None, 4)
    model.add(layers.Dense(2))
    assert model.count_params() == 6 * 4 + 4 + 4 * 2 + 2
    assert len(model.layers) == 2
    model.pop()
    assert len(model.layers) == 1 and model.output_shape == (None, 4)


def test_fit_learns_two_spirals():
    ml.random.set_seed(1)
    x, y = two_spirals()
    model = keras.Sequential(
        [
            layers.Dense(64, activation="relu", input_shape=(2,)),
            layers.Dense(64, activation="relu"),
            layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(x, y, epochs=150, batch_size=32, verbose=0)
    elapsed = time.perf_counter() - start
    assert len(history.history["loss"]) == 150
    assert history.history["loss"][-1] < history.history["loss"][0] / 5
    loss, acc = model.evaluate(x, y, verbose=0)
    pred = model.predict(x, verbose=0)
    manual = float(np.mean(pred.argmax(1) == y))
    assert acc == pytest.approx(manual)
    assert acc >= 0.95, f"train accuracy {acc:.3f} on two spirals"
    assert elapsed < 20


@requires_omniglot
def test_fit_learns_an_omniglot_10_class_subset():
    data = np.load(omniglot_file())
    images, labels = data["images"], data["labels"]
    chars = np.arange(0, 200, 20)[:10]  # 10 characters from different alphabets
    mask = np.isin(labels, chars)
    x = images[mask].astype(np.float32) / 255.0
    y = np.searchsorted(chars, labels[mask])
    samples = data["samples"][mask]
    train, test = samples < 15, samples >= 15  # 15 drawings to learn from, 5 held out
    ml.random.set_seed(0)
    model = AdaptiveNeuralNetwork(num_classes=10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=40, batch_size=16, verbose=0)
    _, train_acc = model.evaluate(x[train], y[train], verbose=0)
    _, test_acc = model.evaluate(x[test], y[test], verbose=0)
    assert train_acc >= 0.98, train_acc
    assert test_acc >= 0.6, test_acc  # chance is 0.1 (measured: 0.80)


def test_train_on_batch_test_on_batch_and_validation():
    ml.random.set_seed(2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    w = rng.normal(size=(5, 1)).astype(np.float32)
    y = x @ w
    model = keras.Sequential([layers.Dense(1, input_shape=(5,))])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    first = model.train_on_batch(x, y)
    for _ in range(100):
        last = model.train_on_batch(x, y)
    assert last[0] < first[0] / 100
    assert model.test_on_batch(x, y, return_dict=True)["loss"] == pytest.approx(
        float(np.mean((model.predict(x, verbose=0) - y) ** 2)), rel=1e-4
    )
    hist = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
    assert set(hist.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert all(len(v) == 3 for v in hist.history.values())
    xv, yv = x[48:], y[48:]
    assert hist.history["val_loss"][-1] == pytest.approx(
        float(np.mean((model.predict(xv, verbose=0) - yv) ** 2)), rel=1e-4
    )


def test_fit_is_repeatable_after_set_seed():
    x, y = two_spirals(50)

    def run():
        ml.random.set_seed(7)
        model = keras.Sequential(
            [layers.Dense(8, activation="relu", input_shape=(2,)), layers.Dense(2)]
        )
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=2, batch_size=10, verbose=0)
        return model.get_weights()

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_progress_output_one_line_per_epoch_when_not_a_terminal():
    x, y = two_spirals(20)
    model = keras.Sequential([layers.Dense(2, input_shape=(2,))])
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    buf = io.StringIO()
    with redirect_stdout(buf):
        model.fit(x, y, epochs=2, batch_size=8, verbose=1)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert lines[1].startswith("5/5 - ") and "loss: " in lines[1] and "accuracy: " in lines[1]
    buf = io.StringIO()
    with redirect_stdout(buf):
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert buf.getvalue() == ""


def _small_model(seed):
    ml.random.set_seed(seed)
    model = AdaptiveNeuralNetwork(num_classes=4, hidden_units=6)
    model(np.zeros((1, 3, 3), np.float32))
    return model


def test_save_load_round_trip_is_bit_exact(tmp_path):
    a, b = _small_model(1), _small_model(2)
    path = tmp_path / "w.weights"
    a.save_weights(path)
    b.load_weights(path)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.tobytes() == wb.tobytes()
    x = np.random.default_rng(0).normal(size=(2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))


def _assert_unchanged(model, before):
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


def test_corrupt_truncated_missing_and_mismatched_files_are_refused(tmp_path):
    a, b = _small_model(1), _small_model(2)
    path = tmp_path / "w.weights"
    a.save_weights(path)
    raw = path.read_bytes()
    before = b.get_weights()
    corrupt = tmp_path / "corrupt.weights"
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError):
        b.load_weights(corrupt)
    _assert_unchanged(b, before)
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(raw[:-9])
    with pytest.raises(ValueError):
        b.load_weights(truncated)
    _assert_unchanged(b, before)
    with pytest.raises(OSError):
        b.load_weights(tmp_path / "missing.weights")
    other = AdaptiveNeuralNetwork(num_classes=5, hidden_units=6)  # same names, other shapes
    other(np.zeros((1, 3, 3), np.float32))
    other.save_weights(tmp_path / "other.weights")
    with pytest.raises(ValueError, match="shape"):
        b.load_weights(tmp_path / "other.weights")
    _assert_unchanged(b, before)
    seq = keras.Sequential([layers.Dense(6, input_shape=(9,)), layers.Dense(4)])  # other names
    seq.save_weights(tmp_path / "seq.weights")
    with pytest.raises(ValueError, match="does not match"):
        b.load_weights(tmp_path / "seq.weights")
    _assert_unchanged(b, before)


def test_get_set_weights_validate_all_shapes_first():
    model = _small_model(3)
    before = model.get_weights()
    bad = [w + 1 for w in before]
    bad[-1] = np.zeros(7, np.float32)
    with pytest.raises(ValueError):
        model.set_weights(bad)
    _assert_unchanged(model, before)
    good = [w * 0 + i for i, w in enumerate(before)]
    model.set_weights(good)
    for w, g in zip(model.get_weights(), good):
        np.testing.assert_array_equal(w, g)


# ------------------------------------------------------------- Keras behaviours (issue 18)
def _frozen_bn_model():
    model = keras.Sequential([layers.Dense(2, input_shape=(3,)), layers.BatchNormalization()])
    model.layers[0].set_weights(
        [
            np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]], np.float32),
            np.array([0.1, -0.3], np.float32),
        ]
    )
    model.layers[1].set_weights(
        [
            np.array([1.5, 0.5], np.float32),
            np.array([0.2, -0.1], np.float32),
            np.array([0.3, -0.4], np.float32),
            np.array([2.0, 0.5], np.float32),
        ]
    )
    model.trainable = False
    return model


def _frozen_bn_reference(model, x):
    k, b = model.layers[0].get_weights()
    gamma, beta, mean, var = model.layers[1].get_weights()
    return ((x @ k + b) - mean) / np.sqrt(var + 1e-3) * gamma + beta


def test_fit_with_no_trainable_weights_runs_and_trains_nothing():
    """Keras 3 (torch trainer's train_step): a model with no trainable weights warns "The
    model does not have any trainable weights.", runs the loss and updates nothing; its
    frozen BatchNormalization runs in inference mode. Keras 3.15 gives the same: equal
    losses every epoch, iterations 0, every weight unchanged."""
    x = np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32)
    y = np.random.default_rng(4).standard_normal((6, 2)).astype(np.float32)
    model = _frozen_bn_model()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = model.get_weights()
    expected = float(np.mean((_frozen_bn_reference(model, x.astype(np.float64)) - y) ** 2))
    for run_eagerly in (None, True):
        model.compile(keras.optimizers.SGD(0.1), "mse", run_eagerly=run_eagerly)
        with pytest.warns(UserWarning, match="The model does not have any trainable weights"):
            hist = model.fit(x, y, epochs=2, batch_size=6, verbose=0)
        assert hist.history["loss"] == pytest.approx([expected] * 2, rel=1e-5)
        with pytest.warns(UserWarning, match="does not have any trainable weights"):
            assert model.train_on_batch(x, y) == pytest.approx(expected, rel=1e-5)
        assert int(model.optimizer.iterations) == 0
        for a, b in zip(model.get_weights(), before):
            np.testing.assert_array_equal(a, b)


def test_traced_fit_with_dropout_draws_a_new_mask_every_step():
    """fit's step is traced (metalearn.function) by default; Dropout's mask must be drawn in
    the trace, not baked into it, so the traced run equals the eager one step by step."""
    x = np.ones((4, 4), np.float32)
    y = np.zeros((4, 1), np.float32)
    runs = {}
    for run_eagerly in (None, True):
        ml.random.set_seed(0)
        model = keras.Sequential(
            [layers.Dropout(0.5, input_shape=(4,)), layers.Dense(1, kernel_initializer="ones")]
        )
        model.compile(keras.optimizers.SGD(0.01), "mse", run_eagerly=run_eagerly)
        seen = []
        cb = keras.callbacks.LambdaCallback(on_batch_end=lambda b, logs: seen.append(logs["loss"]))
        model.fit(x, y, batch_size=4, epochs=8, shuffle=False, verbose=0, callbacks=[cb])
        runs[run_eagerly] = (seen, model.get_weights())
        if run_eagerly is None:
            assert model._train_fn is not None and model._train_fn.n_traces == 1
    assert runs[None][0] == pytest.approx(runs[True][0], rel=1e-6)
    assert len(set(np.round(runs[True][0], 4))) > 1  # the masks differ from step to step
    for a, b in zip(*(runs[k][1] for k in runs)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_seeded_dropout_draws_a_new_reproducible_mask_every_call():
    """Keras 3's Dropout(seed=s) advances its SeedGenerator: every call draws a new mask,
    and a layer made with the same seed draws the same sequence, whatever the global
    generator does (before, every call repeated one mask)."""
    x = np.ones((6, 50), np.float32)
    first, second = layers.Dropout(0.5, seed=7), layers.Dropout(0.5, seed=7)
    masks = [np.asarray(first(x, training=True)) for _ in range(3)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    ml.random.set_seed(123)  # the global stream plays no part
    again = [np.asarray(second(x, training=True)) for _ in range(3)]
    for a, b in zip(masks, again):
        np.testing.assert_array_equal(a, b)
    assert set(np.unique(masks[0])) <= {0.0, 2.0} and 0.4 < (masks[0] != 0).mean() < 0.6
    other = np.asarray(layers.Dropout(0.5, seed=8)(x, training=True))
    assert not np.array_equal(other, masks[0])
    # the global generator is not touched by a seeded draw
    ml.random.set_seed(5)
    ref = np.asarray(ml.random.uniform((4,)))
    ml.random.set_seed(5)
    layers.Dropout(0.5, seed=1)(x, training=True)
    np.testing.assert_array_equal(np.asarray(ml.random.uniform((4,))), ref)
    with pytest.raises(ValueError, match="seed"):
        layers.Dropout(0.5, seed=1.5)


def test_traced_fit_with_seeded_dropouts_equals_eager_step_by_step():
    """fit's traced step takes each seeded Dropout's draw as an input, drawn from the
    layer's stream before the replay: the masks change every step, the run is traced (one
    trace per batch shape) and equals run_eagerly=True step by step, also next to an
    unseeded Dropout drawing from the global generator inside the trace."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    runs = {}
    for run_eagerly in (None, True):
        ml.random.set_seed(0)
        model = keras.Sequential(
            [
                layers.Dropout(0.5, seed=7, input_shape=(6,)),
                layers.Dense(4),
                layers.Dropout(0.3),
                layers.Dropout(0.4, seed=9, noise_shape=(None, 1)),
                layers.Dense(1),
            ]
        )
        model.compile(keras.optimizers.SGD(0.01), "mse", run_eagerly=run_eagerly)
        seen = []
        cb = keras.callbacks.LambdaCallback(on_batch_end=lambda b, logs: seen.append(logs["loss"]))
        model.fit(x, y, batch_size=3, epochs=4, verbose=0, callbacks=[cb])
        runs[run_eagerly] = (seen, model.get_weights(), model.layers[0]._seed_calls)
        if run_eagerly is None:
            assert model._train_fn is not None and model._train_fn.n_traces == 2  # 3 and 2
    assert runs[None][0] == pytest.approx(runs[True][0], rel=1e-6)
    assert runs[None][2] == runs[True][2] == 12  # one draw per step: 3 steps x 4 epochs
    for a, b in zip(runs[None][1], runs[True][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # the same seeds give the same run again
    ml.random.set_seed(0)
    model = keras.Sequential([layers.Dropout(0.5, seed=7, input_shape=(6,)), layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    first = model.fit(x, y, batch_size=4, epochs=2, verbose=0).history["loss"]
    ml.random.set_seed(0)
    model = keras.Sequential([layers.Dropout(0.5, seed=7, input_shape=(6,)), layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    assert model.fit(x, y, batch_size=4, epochs=2, verbose=0).history["loss"] == first


def test_traced_fit_falls_back_when_a_seeded_dropout_is_called_twice():
    """One seeded Dropout used twice in a step cannot take one draw per step as a trace
    input: the recording refuses it before the optimizer step, and fit runs that model
    eagerly (same numbers as run_eagerly=True, the stream rewound), each call drawing its
    own mask. (The model is declared traceable here to reach the check.)"""

    class Twice(keras.Model):
        _traceable = True

        def __init__(self):
            super().__init__()
            self.drop = layers.Dropout(0.5, seed=3)
            self.dense = layers.Dense(1)

        def call(self, x, training=None):
            return self.dense(self.drop(self.drop(x)))

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    runs = {}
    for run_eagerly in (None, True):
        ml.random.set_seed(0)
        model = Twice()
        model.compile(keras.optimizers.SGD(0.01), "mse", run_eagerly=run_eagerly)
        runs[run_eagerly] = (
            model.fit(x, y, batch_size=4, epochs=3, verbose=0).history["loss"],
            model.drop._seed_calls,
        )
        assert model._run_eagerly is True and model._train_fn is None  # fell back for good
    assert runs[None] == runs[True] and runs[None][1] == 6


def test_fit_traces_a_layer_when_its_class_declares_it():
    """fit records its step only through layers whose class declares ``_traceable`` in its
    own body: a layer of yours that declares it is traced (the same numbers as eager); a
    subclass of a shipped layer that does not declare it again runs eagerly, since its
    call may keep Python-side state (here a count that must move on every step)."""

    class Scale(layers.Layer):
        _traceable = True

        def call(self, x):
            return x * 2.0

    class CountingDense(layers.Dense):
        def call(self, x):
            self.count = getattr(self, "count", 0) + 1
            return super().call(x)

    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    runs = {}
    for run_eagerly in (None, True):
        ml.random.set_seed(0)
        model = keras.Sequential([Scale(input_shape=(3,)), layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse", run_eagerly=run_eagerly)
        runs[run_eagerly] = model.fit(
            x, y, batch_size=8, epochs=3, shuffle=False, verbose=0
        ).history["loss"]
        if run_eagerly is None:
            assert model._train_fn is not None and model._train_fn.n_traces == 1
    np.testing.assert_allclose(runs[None], runs[True], rtol=1e-6)
    counting = CountingDense(1, input_shape=(3,))
    model = keras.Sequential([counting])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    before = counting.count  # the build and fit's dry run
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert model._train_fn is None and counting.count - before == 6 + 1


@pytest.mark.parametrize("case", ["clipvalue", "sample_weight"])
def test_run_eagerly_false_runs_eagerly_what_a_trace_cannot_hold(case):
    """compile(run_eagerly=False) asks for the traced step; a step the trace cannot hold
    (gradient clipping measures norms in NumPy; sample weights) runs eagerly instead of
    being recorded without them: the same numbers as run_eagerly=True."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = 3.0 * rng.standard_normal((16, 1)).astype(np.float32)
    sw = rng.uniform(0.0, 3.0, 16).astype(np.float32) if case == "sample_weight" else None
    runs = {}
    for run_eagerly in (False, True):
        ml.random.set_seed(0)
        model = keras.Sequential([layers.Dense(1, input_shape=(3,))])
        opt = keras.optimizers.SGD(0.1, clipvalue=0.01 if case == "clipvalue" else None)
        model.compile(opt, "mse", run_eagerly=run_eagerly)
        loss = model.fit(
            x, y, sample_weight=sw, batch_size=8, epochs=2, shuffle=False, verbose=0
        ).history["loss"]
        runs[run_eagerly] = (loss, model.get_weights())
        assert int(opt.iterations) == 4
    np.testing.assert_allclose(runs[False][0], runs[True][0], rtol=1e-6)
    for a, b in zip(runs[False][1], runs[True][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_epoch_iterator_batches_shuffles_and_splits_as_fit_does():
    """fit's data side (metalearn.keras.epoch_iterator): batches of batch_size in order, the
    last one the rest; with shuffle a new order each epoch, the core generator's
    permutation drawn when the epoch starts, x, y and sample weights kept together; the
    validation split as Keras 3's (the first floor(n * (1 - split)) samples train: 7 of 10
    at 0.25, where holding out int(n * split) kept 8), before shuffling."""
    from metalearn.keras.epoch_iterator import EpochIterator, train_validation_split

    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y, sw = np.arange(10) * 3, np.linspace(0.5, 5.0, 10).astype(np.float32)
    data = EpochIterator(x, y, sw, batch_size=4)
    batches = list(data.enumerate_epoch())
    assert data.num_batches == 3 and [step for step, _ in batches] == [0, 1, 2]
    assert [len(b[0]) for _, b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for _, b in batches]), x)
    assert [b[1] for _, b in EpochIterator(x, batch_size=8).enumerate_epoch()] == [None, None]
    ml.random.set_seed(11)
    orders = [np.asarray(ml._core.permutation(10)) for _ in range(2)]
    ml.random.set_seed(11)
    shuffled = EpochIterator(x, y, sw, batch_size=4, shuffle=True)
    for order in orders:
        epoch = [b for _, b in shuffled.enumerate_epoch()]
        for i, whole in enumerate((x, y, sw)):
            np.testing.assert_array_equal(np.concatenate([b[i] for b in epoch]), whole[order])
    assert not np.array_equal(orders[0], orders[1])
    (xt, yt, swt), (xv, yv, swv) = train_validation_split(x, y, sw, 0.25)
    np.testing.assert_array_equal(xv, x[7:])
    np.testing.assert_array_equal(xt, x[:7])
    np.testing.assert_array_equal(yv, y[7:])
    np.testing.assert_array_equal(swt, sw[:7])
    assert train_validation_split(x, y, None, 0.5)[1][2] is None
    # Keras 3 holds out 1 of 10 at 0.05 (floor(9.5) = 9 train); a split too small to move
    # 1 - split leaves no validation sample, one sample leaves no training sample
    assert len(train_validation_split(x, y, sw, 0.05)[1][0]) == 1
    with pytest.raises(ValueError, match="no validation samples"):
        train_validation_split(x, y, sw, 1e-20)
    with pytest.raises(ValueError, match="no training samples"):
        train_validation_split(x[:1], y[:1], sw[:1], 0.5)


# ---------------------------------------------------------------- compile's metrics
CM_TRUE = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype="float32")
CM_PRED = np.array(
    [[0.4, 0.1], [0.2, 0.6], [0.6, 0.1], [0.3, 0.2], [0.1, 0.4], [0.2, 0.3]], dtype="float32"
)
CM_SW = np.array([1, 0.0, 1, 1, 0.0, 1], dtype="float32")


def _identity_model():
    """Outputs its input: evaluate(x=y_pred, y=y_true) evaluates on the given predictions."""
    return keras.Sequential(
        [layers.Dense(2, use_bias=False, kernel_initializer="identity", input_shape=(2,))]
    )


def test_weighted_metrics_take_sample_weight_and_metrics_do_not():
    """Keras 3 (compile_utils.CompileMetrics): sample_weight goes to weighted_metrics only,
    and their keys are those of CompileMetrics.result: a repeated metric gets _1, a
    weighted one whose name is taken gets weighted_ in front. Expected values: Keras
    3.15.1 (torch backend) on these inputs, two batches of three."""
    model = _identity_model()
    model.compile(
        loss="mse",
        metrics=["mse", "mae", "mse"],
        weighted_metrics=["mse", "mae", "mse", "accuracy"],
    )
    logs = model.evaluate(
        CM_PRED,
        np.concatenate([CM_TRUE, CM_TRUE]),
        sample_weight=CM_SW,
        batch_size=3,
        return_dict=True,
        verbose=0,
    )
    expected = {
        "loss": 0.048333332,
        "mse": 0.055833336,
        "mae": 0.19166668,
        "mse_1": 0.055833336,
        "weighted_mse": 0.0725,
        "weighted_mae": 0.225,
        "weighted_mse_1": 0.0725,
        "accuracy": 0.25,
    }
    assert list(logs) == list(expected)
    assert model.metrics_names == list(expected)
    for k, v in expected.items():
        assert logs[k] == pytest.approx(v, rel=1e-5), k
    # without sample weights a weighted metric is the plain one
    model.compile(loss="mse", weighted_metrics=["mse"])
    out = model.evaluate(
        CM_PRED, np.concatenate([CM_TRUE, CM_TRUE]), batch_size=3, return_dict=True, verbose=0
    )
    assert out["mse"] == pytest.approx(0.055833336, rel=1e-5)


def test_fit_with_weighted_metrics_traced_equals_eager():
    """fit's traced step (no sample weights) and the eager one give the same metrics,
    weighted_metrics included; with sample weights fit runs eagerly and only the
    weighted metrics are weighted (the loss is)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 3)).astype(np.float32)
    y = rng.standard_normal((24, 2)).astype(np.float32)
    sw = rng.uniform(0.1, 2.0, 24).astype(np.float32)
    runs = {}
    for run_eagerly in (None, True):
        ml.random.set_seed(0)
        model = keras.Sequential([layers.Dense(2, input_shape=(3,))])
        model.compile(
            keras.optimizers.SGD(0.05),
            "mse",
            metrics=["mae"],
            weighted_metrics=["mae"],
            run_eagerly=run_eagerly,
        )
        runs[run_eagerly] = model.fit(
            x, y, batch_size=8, epochs=3, shuffle=False, verbose=0
        ).history
        if run_eagerly is None:
            assert model._train_fn is not None and model._train_fn.n_traces == 1
    for key in ("loss", "mae", "weighted_mae"):
        np.testing.assert_allclose(runs[None][key], runs[True][key], rtol=1e-6)
    np.testing.assert_allclose(runs[None]["mae"], runs[None]["weighted_mae"], rtol=1e-12)
    ml.random.set_seed(0)
    model = keras.Sequential([layers.Dense(2, input_shape=(3,))])
    model.compile(keras.optimizers.SGD(0.0), "mse", metrics=["mae"], weighted_metrics=["mae"])
    h = model.fit(x, y, sample_weight=sw, batch_size=24, epochs=1, shuffle=False, verbose=0).history
    err = np.abs(np.asarray(model.predict(x, verbose=0)) - y).mean(axis=1)
    assert h["mae"][0] == pytest.approx(err.mean(), rel=1e-5)
    assert h["weighted_mae"][0] == pytest.approx((err * sw).sum() / sw.sum(), rel=1e-5)


def test_compile_refuses_metrics_that_are_not_a_list_and_changes_nothing():
    """Keras 3: "Expected `metrics` argument to be a list, tuple, or dict" (a ValueError),
    for weighted_metrics alike; the model keeps its previous compile."""
    model = _identity_model()
    model.compile(loss="mse", metrics=["mae"])
    for kwargs in (
        dict(metrics="mse"),
        dict(weighted_metrics="mse"),
        dict(metrics=keras.metrics.Mean()),
    ):
        with pytest.raises(ValueError, match="to be a list, tuple, or dict"):
            model.compile(loss="mae", **kwargs)
    with pytest.raises(ValueError, match="Expected metric, received `None`"):
        model.compile(loss="mae", metrics=[None])
    logs = model.evaluate(CM_PRED[:3], CM_TRUE, return_dict=True, verbose=0)
    assert list(logs) == ["loss", "mae"]
    assert logs["loss"] == pytest.approx(0.068333, rel=1e-4)  # still the MSE


@pytest.mark.parametrize("name", ["crossentropy", "ce", "CrossEntropy"])
def test_crossentropy_loss_name_is_picked_from_the_shapes(name):
    """compile_utils.get_loss: binary when the prediction has one unit, sparse categorical
    when the labels have lower rank or one column against several classes, categorical
    otherwise; the loss keeps the name given."""
    from metalearn.keras import losses

    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), 6).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)]
    labels = rng.integers(0, 3, 6)
    p1 = rng.uniform(0.05, 0.95, (6, 1)).astype(np.float32)
    b1 = (rng.random((6, 1)) > 0.5).astype(np.float32)
    cases = [
        (probs, onehot, losses.categorical_crossentropy),
        (probs, labels, losses.sparse_categorical_crossentropy),
        (probs, labels[:, None], losses.sparse_categorical_crossentropy),
        (p1, b1, losses.binary_crossentropy),
        (p1, b1[:, 0], losses.binary_crossentropy),
    ]
    for pred, y, fn in cases:
        model = keras.Sequential(
            [
                layers.Dense(
                    pred.shape[1],
                    use_bias=False,
                    kernel_initializer="identity",
                    input_shape=(pred.shape[1],),
                )
            ]
        )
        model.compile(loss=name)
        got = model.evaluate(pred, y, verbose=0)
        ref = float(
            np.mean(
                np.asarray(
                    fn(y.reshape(len(y), -1) if fn is losses.binary_crossentropy else y, pred)
                )
            )
        )
        assert got == pytest.approx(ref, rel=1e-5), fn.__name__
        assert model.compiled_loss.fn is fn and model.compiled_loss.name == name


def test_stop_predicting_returns_the_batches_run_so_far():
    """trainer.py (torch) predict: a callback setting model.stop_predicting ends the loop,
    and predict returns the outputs of the batches it ran."""
    model = _identity_model()
    x = np.arange(40, dtype=np.float32).reshape(20, 2)

    class Stop(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_predicting = True

    out = model.predict(x, batch_size=4, callbacks=[Stop()], verbose=0)
    np.testing.assert_array_equal(out, x[:12])
    # the flag is cleared at the start of the next call
    np.testing.assert_array_equal(model.predict(x, batch_size=4, verbose=0), x)
