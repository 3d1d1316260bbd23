"""fit / evaluate / predict on PyDatasets and generators, steps_per_epoch, class_weight,
sample_weight, initial_epoch, and Keras 3's overridable step methods.

Reference values are formulas: the model is Keras' trainer_test ExampleModel (Dense
without bias, kernel ones) on x = ones, so every kernel entry stays one number w; with
SGD(lr) and MSE against y = 0 a batch's loss is (4w)^2 = 16 w^2 and each step sets
w -= lr * 8 w / 3 (weighted: both scaled by the batch's mean sample weight).
"""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import callbacks, layers, losses, metrics, models, optimizers, utils


def example_model(units=3, lr=0.01):
    m = models.Sequential([layers.Dense(units, use_bias=False, kernel_initializer="ones")])
    m.compile(optimizer=optimizers.SGD(lr), loss="mse", metrics=[metrics.MeanSquaredError()])
    return m


def sgd_losses(steps, lr=0.01, w=1.0, weights=None):
    """Per-step losses (before each step) and the final w of SGD on 16 w^2 * mean(sw)."""
    out = []
    for i in range(steps):
        s = 1.0 if weights is None else weights[i]
        out.append(16 * w * w * s)
        w -= lr * 8 * w / 3 * s
    return out, w


class Batches(utils.PyDataset):
    """trainer_test.py::TestPyDataset: batches of ones (5, 4) and zeros (5, 3); records
    the indices asked for and the epoch hooks."""

    def __init__(self, n=20, infinite=False, bad=None, **kwargs):
        super().__init__(**kwargs)
        self.n, self.infinite, self.bad = n, infinite, bad
        self.asked, self.begins, self.ends = [], 0, 0

    @property
    def num_batches(self):
        return None if self.infinite else self.n

    def __getitem__(self, idx):
        self.asked.append(idx)
        if self.bad is not None and idx == self.bad:
            return np.ones((5, 4), np.float32), np.zeros((5, 2), np.float32)
        return np.ones((5, 4), np.float32), np.zeros((5, 3), np.float32)

    def on_epoch_begin(self):
        self.begins += 1

    def on_epoch_end(self):
        self.ends += 1


class Counter(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.train_batches, self.test_batches, self.epochs, self.tests = [], 0, [], []
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.epochs.append(epoch)
        self.train_batches.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.train_batches[-1] += 1

    def on_test_begin(self, logs=None):
        self.tests.append(self._epoch)

    def on_test_batch_end(self, batch, logs=None):
        self.test_batches += 1


# -------------------------------------------------------------------- PyDataset
def test_py_dataset_fit_follows_sgd_and_calls_epoch_hooks():
    model = example_model()
    ds = Batches(workers=2, use_multiprocessing=True)  # accepted, ignored
    hist = model.fit(ds, epochs=2, shuffle=False, verbose=0).history
    per_step, w = sgd_losses(40)
    np.testing.assert_allclose(
        hist["loss"], [np.mean(per_step[:20]), np.mean(per_step[20:])], rtol=1e-5
    )
    np.testing.assert_allclose(model.get_weights()[0], np.full((4, 3), w), rtol=1e-5)
    assert int(model.optimizer.iterations) == 40
    assert ds.asked == list(range(20)) * 2 and ds.begins == 2 and ds.ends == 2
    assert ds.workers == 2 and ds.use_multiprocessing and ds.max_queue_size == 10


def test_py_dataset_steps_per_epoch_goes_on_then_wraps_as_keras():
    # Keras 3's EpochIterator: 7 steps an epoch over 20 batches: 0-6, 7-13, then 14-19
    # ends the pass early ("ran out" warning, training goes on), and a new pass begins
    model = example_model()
    ds = Batches()
    cb = Counter()
    with pytest.warns(UserWarning, match="ran out of data"):
        hist = model.fit(ds, epochs=4, steps_per_epoch=7, shuffle=False, verbose=0, callbacks=[cb])
    assert ds.asked == list(range(20)) + list(range(7))
    assert cb.train_batches == [7, 7, 6, 7] and len(hist.history["loss"]) == 4
    assert int(model.optimizer.iterations) == 27


def test_infinite_py_dataset_needs_steps_and_counts_on():
    model = example_model()
    with pytest.raises(ValueError, match="infinite.*steps_per_epoch"):
        model.fit(Batches(infinite=True), epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 0
    ds = Batches(infinite=True)
    model.fit(ds, epochs=2, steps_per_epoch=20, verbose=0)
    assert ds.asked == list(range(40))
    with pytest.raises(ValueError, match="infinite.*steps"):
        model.evaluate(Batches(infinite=True), verbose=0)
    assert model.evaluate(ds, steps=3, verbose=0) is not None


def test_py_dataset_shuffle_visits_each_batch_once_per_pass():
    ml.random.set_seed(3)
    ds = Batches()
    example_model().fit(ds, epochs=2, shuffle=True, verbose=0)
    first, second = ds.asked[:20], ds.asked[20:]
    assert sorted(first) == list(range(20)) and sorted(second) == list(range(20))
    assert first != list(range(20)) and first != second


def test_py_dataset_evaluate_predict_and_validation():
    model = example_model()
    out = model.evaluate(Batches(), return_dict=True, verbose=0)
    assert out == pytest.approx({"loss": 16.0, "mean_squared_error": 16.0})

    class Inputs(utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.full((2, 4), float(i), np.float32)  # x alone (predict)

    pred = model.predict(Inputs(), verbose=0)
    np.testing.assert_allclose(pred, np.repeat([0.0, 4.0, 8.0], 2)[:, None] * np.ones(3))
    cb = Counter()
    val = Batches()
    hist = model.fit(
        Batches(), validation_data=val, validation_steps=3, epochs=2, verbose=0, callbacks=[cb]
    ).history
    assert cb.test_batches == 6 and len(hist["val_loss"]) == 2
    assert val.asked == [0, 1, 2, 3, 4, 5]  # validation_steps go on over passes


def test_py_dataset_bad_batches_are_named_and_change_nothing():
    model = example_model()
    model(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="batch 0 of the PyDataset"):
        model.fit(Batches(bad=0), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((4, 3)))
    assert int(model.optimizer.iterations) == 0
    with pytest.raises(ValueError, match="batch 3 of the PyDataset"):
        model.fit(Batches(bad=3), epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 3  # the three before it; the bad one: none

    class Four(utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return (np.ones((2, 4)),) * 4

    with pytest.raises(ValueError, match="batch 0 of the PyDataset.*length 4"):
        model.evaluate(Four(), verbose=0)

    class Empty(utils.PyDataset):
        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="PyDataset is empty"):
        model.predict(Empty(), verbose=0)
    with pytest.raises(ValueError, match="`y` should not be passed"):
        model.fit(Batches(), np.zeros((5, 3)), verbose=0)

    class NoLen(utils.PyDataset):
        def __getitem__(self, i):
            return np.ones((2, 4))

    with pytest.raises(TypeError, match="__len__"):
        model.predict(NoLen(), verbose=0)


# ---------------------------------------------------------- generators, steps
def test_predict_and_evaluate_on_generators():
    model = example_model()  # not built: the first batch builds it
    w = np.ones((4, 3))
    xs = [np.full((2, 4), float(i), np.float32) for i in range(3)]

    def items():
        yield xs[0]
        yield (xs[1],)
        yield xs[2], np.zeros((2, 3))

    np.testing.assert_allclose(model.predict(items(), verbose=0), np.concatenate(xs) @ w)

    def forever():
        while True:
            yield np.ones((2, 4), np.float32), np.zeros((2, 3), np.float32)

    assert model.predict(forever(), steps=2, verbose=0).shape == (4, 3)
    cb = Counter()
    cb.on_epoch_begin(0)
    loss = model.evaluate(forever(), steps=3, verbose=0, callbacks=[cb], return_dict=True)
    assert cb.test_batches == 3 and loss["loss"] == pytest.approx(16.0)


def test_array_steps_per_epoch_as_keras():
    # Keras 3: 4 batches of 20, 3 steps an epoch: 3, then 1 (the pass ends: warning), 3
    model = example_model()
    cb = Counter()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(
            np.ones((80, 4)),
            np.zeros((80, 3)),
            batch_size=20,
            steps_per_epoch=3,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[cb],
        )
    assert cb.train_batches == [3, 1, 3] and int(model.optimizer.iterations) == 7
    # steps beyond the data in evaluate: all batches, Keras' warning
    with pytest.warns(UserWarning, match="ran out of data"):
        model.evaluate(np.ones((80, 4)), np.zeros((80, 3)), batch_size=20, steps=9, verbose=0)


# ------------------------------------------------------------------ class_weight
def softmax_model():
    m = models.Sequential([layers.Input((3,)), layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(1)
    m.set_weights([rng.normal(size=(3, 3)).astype(np.float32), np.zeros(3, np.float32)])
    m.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return m


def test_class_weight_weights_each_sample_by_its_class():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = np.array([0, 1, 2] * 4)
    cw = {0: 0.5, 2: 3.0}  # class 1 not listed: weight 1
    sw = np.array([cw.get(c, 1.0) for c in y], np.float32)
    m = softmax_model()
    w0, b0 = m.get_weights()
    z = x @ w0 + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.sum(sw * -np.log(p[np.arange(12), y])) / 12  # Keras' sum_over_batch_size
    h = m.fit(x, y, batch_size=12, class_weight=cw, verbose=0).history["loss"]
    np.testing.assert_allclose(h, [expected], rtol=1e-5)
    # the same step as with those sample weights, for sparse and for one-hot targets
    ref = softmax_model()
    ref.fit(x, y, batch_size=12, sample_weight=sw, verbose=0)
    onehot = softmax_model()
    onehot.compile(optimizer=optimizers.SGD(0.1), loss="categorical_crossentropy")
    onehot.fit(x, np.eye(3)[y], batch_size=12, class_weight=cw, verbose=0)
    for a, b, c in zip(m.get_weights(), ref.get_weights(), onehot.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(c, b, rtol=1e-6)
    # train_on_batch: the same weights
    tob = softmax_model()
    np.testing.assert_allclose(tob.train_on_batch(x, y, class_weight=cw), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "cw,err,match",
    [
        ({"a": 1.0}, ValueError, "keys must be class indices"),
        ({-1: 1.0}, ValueError, "keys must be class indices"),
        ({1.5: 1.0}, ValueError, "keys must be class indices"),
        ({True: 1.0}, ValueError, "keys must be class indices"),
        ({0: float("nan")}, ValueError, "must be finite"),
        ({0: "x"}, ValueError, "must be a number"),
        ([1.0, 2.0], TypeError, "must be a dict"),
    ],
)
def test_bad_class_weight_is_refused_and_changes_nothing(cw, err, match):
    m = softmax_model()
    before = [w.copy() for w in m.get_weights()]
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 2, 0])
    with pytest.raises(err, match=match):
        m.fit(x, y, class_weight=cw, verbose=0)
    with pytest.raises(err, match=match):
        m.train_on_batch(x, y, class_weight=cw)
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert int(m.optimizer.iterations) == 0


def test_class_weight_refused_with_generator_or_sample_weight():
    m = softmax_model()
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match="not supported for Python generator"):
        m.fit(iter([(x, y)]), class_weight={0: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="`class_weight` and `sample_weight`"):
        m.fit(x, y, sample_weight=np.ones(4), class_weight={0: 1.0}, verbose=0)
    assert int(m.optimizer.iterations) == 0


# -------------------------------------------------------- sample_weight, epochs
def test_sample_weight_in_validation_tuple_and_evaluate():
    model = example_model()
    x, y = np.ones((10, 4), np.float32), np.zeros((10, 3), np.float32)
    sw = np.linspace(0.0, 2.0, 10).astype(np.float32)
    h = model.fit(x, y, validation_data=(x, y, sw), epochs=1, batch_size=10, verbose=0).history
    _, w = sgd_losses(1)
    np.testing.assert_allclose(h["val_loss"], [16 * w * w * sw.mean()], rtol=1e-5)
    np.testing.assert_allclose(
        model.evaluate(x, y, sample_weight=sw, verbose=0)[0], 16 * w * w * sw.mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        model.test_on_batch(x, y, sample_weight=sw)[0], 16 * w * w * sw.mean(), rtol=1e-5
    )


def test_initial_epoch_numbers_epochs_and_validation_as_keras():
    # Keras 3's _should_eval: validate after epoch e (0-based) when (e + 1) % freq == 0
    model = example_model()
    x, y = np.ones((10, 4), np.float32), np.zeros((10, 3), np.float32)
    cb = Counter()
    hist = model.fit(
        x,
        y,
        epochs=5,
        initial_epoch=1,
        validation_data=(x, y),
        validation_freq=2,
        batch_size=10,
        verbose=0,
        callbacks=[cb],
    )
    assert cb.epochs == [1, 2, 3, 4] and hist.epoch == [1, 2, 3, 4]
    assert cb.tests == [1, 3] and len(hist.history["val_loss"]) == 2
    assert int(model.optimizer.iterations) == 4


# --------------------------------------------------------- overridden steps
class Small(models.Model):
    def __init__(self):
        super().__init__()
        self.dense = layers.Dense(3, use_bias=False, kernel_initializer="ones")

    def call(self, x):
        return self.dense(x)


def test_overridden_train_step_runs_eagerly_for_every_batch():
    calls = []

    class Counted(models.Sequential):
        def train_step(self, data):
            calls.append(len(data[0]))
            return super().train_step(data)

    m = Counted([layers.Dense(3, use_bias=False, kernel_initializer="ones")])
    m.compile(optimizer=optimizers.SGD(0.01), loss="mse")
    h = m.fit(np.ones((40, 4)), np.zeros((40, 3)), batch_size=10, epochs=2, verbose=0).history
    assert calls == [10] * 8 and m._train_fn is None  # the traced step was not used
    per_step, w = sgd_losses(8)
    np.testing.assert_allclose(h["loss"], [np.mean(per_step[:4]), np.mean(per_step[4:])], rtol=1e-5)
    np.testing.assert_allclose(m.get_weights()[0], np.full((4, 3), w), rtol=1e-5)
    # the same model without the override is traced
    plain = models.Sequential([layers.Dense(3, use_bias=False, kernel_initializer="ones")])
    plain.compile(optimizer=optimizers.SGD(0.01), loss="mse")
    plain.fit(np.ones((40, 4)), np.zeros((40, 3)), batch_size=10, epochs=2, verbose=0)
    assert plain._train_fn is not None
    np.testing.assert_allclose(plain.get_weights()[0], m.get_weights()[0], rtol=1e-6)


def test_gradient_tape_train_step_as_the_keras_guide():
    # keras.io "Customizing what happens in fit()", the lower-level example: its own
    # loss tracker and MAE, compile() without a loss, metrics listed in `metrics`
    class Custom(models.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(1, kernel_initializer="zeros")
            self.loss_tracker = metrics.Mean(name="loss")
            self.mae_metric = metrics.MeanAbsoluteError(name="mae")

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            x, y = data
            with ml.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = losses.mean_squared_error(y, y_pred)
                loss = ml.keras.ops.mean(loss)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            self.loss_tracker.update_state(loss)
            self.mae_metric.update_state(y, y_pred)
            return {"loss": self.loss_tracker.result(), "mae": self.mae_metric.result()}

        @property
        def metrics(self):
            return [self.loss_tracker, self.mae_metric]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2)).astype(np.float32)
    y = (x @ [[1.0], [-2.0]]).astype(np.float32)
    m = Custom()
    m.compile(optimizer=optimizers.SGD(0.1))
    h = m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    # NumPy: SGD on mean((x w + b - y)^2), batches of 8
    w, b, ls, maes = np.zeros((2, 1)), 0.0, [], []
    for _ in range(2):
        el, em = [], []
        for i in range(0, 16, 8):
            xb, yb = x[i : i + 8], y[i : i + 8]
            r = xb @ w + b - yb
            el.append(np.mean(r**2))
            em.append(np.mean(np.abs(r)))
            w = w - 0.1 * 2 * xb.T @ r / 8
            b = b - 0.1 * 2 * r.mean()
        ls.append(np.mean(el))
        maes.append(np.mean(em))
    np.testing.assert_allclose(h["loss"], ls, rtol=1e-5)
    np.testing.assert_allclose(h["mae"], maes, rtol=1e-5)
    np.testing.assert_allclose(m.get_weights()[0], w, rtol=1e-5, atol=1e-6)


def test_predict_step_and_test_step_overrides():
    class Doubled(Small):
        def predict_step(self, data):
            x = data[0] if isinstance(data, tuple) else data
            return self(x) * 2.0

        def test_step(self, data):
            logs = super().test_step(data)
            logs["extra"] = 1.0
            return logs

    m = Doubled()
    m.compile(optimizer="sgd", loss="mse")
    x = np.ones((6, 4), np.float32)
    np.testing.assert_allclose(m.predict(x, batch_size=4, verbose=0), np.full((6, 3), 8.0))
    np.testing.assert_allclose(m.predict_on_batch(x), np.full((6, 3), 8.0))
    h = m.fit(x, np.zeros((6, 3)), validation_data=(x, np.zeros((6, 3))), verbose=0).history
    assert h["val_extra"] == [1.0] and "val_loss" in h
    assert m.test_on_batch(x, np.zeros((6, 3)), return_dict=True)["extra"] == 1.0


def test_train_on_batch_calls_the_override_and_a_bad_return_is_refused():
    calls = []

    class Once(Small):
        def train_step(self, data):
            calls.append(1)
            return super().train_step(data)

    m = Once()
    m.compile(optimizer=optimizers.SGD(0.01), loss="mse")
    logs = m.train_on_batch(np.ones((4, 4)), np.zeros((4, 3)), return_dict=True)
    assert calls == [1] and logs["loss"] == pytest.approx(16.0)

    class Bad(Small):
        def train_step(self, data):
            return 3.0

    bad = Bad()
    bad.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="must return a dict"):
        bad.fit(np.ones((4, 4)), np.zeros((4, 3)), verbose=0)


def test_unpack_and_pack_helpers():
    assert utils.unpack_x_y_sample_weight((1, 2)) == (1, 2, None)
    assert utils.unpack_x_y_sample_weight(5) == (5, None, None)
    assert utils.pack_x_y_sample_weight(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="length 4"):
        utils.unpack_x_y_sample_weight((1, 2, 3, 4))


def test_generators_that_run_out_in_predict_and_evaluate():
    model = example_model()

    def two():
        for _ in range(2):
            yield np.ones((3, 4), np.float32), np.zeros((3, 3), np.float32)

    with pytest.warns(UserWarning, match="ran out of data"):
        assert model.predict(two(), steps=5, verbose=0).shape == (6, 3)
    with pytest.warns(UserWarning, match="ran out of data"):
        assert model.evaluate(two(), steps=5, verbose=0) == pytest.approx([16.0, 16.0])
    with pytest.raises(ValueError, match="gave no batch"):
        model.predict(iter([]), verbose=0)


def test_class_weight_refused_for_several_outputs():
    inp = layers.Input((3,))
    a, b = layers.Dense(2, name="a")(inp), layers.Dense(2, name="b")(inp)
    m = models.Model(inp, [a, b])
    m.compile(optimizer="sgd", loss=["mse", "mse"])
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    before = [w.copy() for w in m.get_weights()]
    with pytest.raises(ValueError, match="single output"):
        m.fit(x, [y, y], class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="single output"):
        m.train_on_batch(x, [y, y], class_weight={0: 2.0})
    for u, v in zip(m.get_weights(), before):
        np.testing.assert_array_equal(u, v)


def test_check_numerics_applies_to_the_default_train_step_of_an_override():
    class Passthrough(models.Sequential):
        def train_step(self, data):
            return super().train_step(data)

    m = Passthrough([layers.Input((4,)), layers.Dense(3, use_bias=False)])
    m.compile(optimizer="sgd", loss="mse")
    before = m.get_weights()[0].copy()
    y = np.zeros((4, 3), np.float32)
    y[0, 0] = np.nan
    ml.debugging.enable_check_numerics()
    try:
        with pytest.raises(ml.debugging.NonFiniteError, match="targets"):
            m.fit(np.ones((4, 4), np.float32), y, verbose=0)
    finally:
        ml.debugging.disable_check_numerics()
    np.testing.assert_array_equal(m.get_weights()[0], before)
    assert int(m.optimizer.iterations) == 0
