"""The training loop against live Keras 3 (PyTorch backend): PyDataset and array
``steps_per_epoch`` schedules, ``class_weight``, ``initial_epoch`` with
``validation_freq``, a custom ``train_step``, and a custom layer from Keras' guide
written against ``keras.ops`` (ported by changing the import).

Marked ``keras``; skipped with the reason when keras or torch is missing (see
test_live_keras.py)."""

import warnings

import numpy as np
import pytest

from metalearn import keras as mk

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()


def both(fn):
    """fn(lib) for metalearn's keras and for Keras 3."""
    return fn(mk), fn(KERAS)


def counter_cb(lib):
    class Counter(lib.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.per_epoch, self.tests, self.epochs = [], [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)
            self.per_epoch.append(0)

        def on_train_batch_end(self, batch, logs=None):
            self.per_epoch[-1] += 1

        def on_test_begin(self, logs=None):
            self.tests.append(self.epochs[-1] if self.epochs else None)

    return Counter()


def example(lib, lr=0.01):
    m = lib.Sequential(
        [lib.layers.Input((4,)), lib.layers.Dense(3, use_bias=False, kernel_initializer="ones")]
    )
    m.compile(optimizer=lib.optimizers.SGD(lr), loss="mse")
    return m


def test_py_dataset_steps_per_epoch_schedule():
    def run(lib):
        class Batches(lib.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.asked = []

            def __len__(self):
                return 20

            def __getitem__(self, idx):
                self.asked.append(idx)
                return np.ones((5, 4), np.float32), np.zeros((5, 3), np.float32)

        ds, cb = Batches(), counter_cb(lib)
        m = example(lib)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = m.fit(ds, epochs=4, steps_per_epoch=7, shuffle=False, verbose=0, callbacks=[cb])
        return ds.asked, cb.per_epoch, h.history["loss"], m.get_weights()[0]

    (a1, p1, l1, w1), (a2, p2, l2, w2) = both(run)
    assert p1 == p2
    assert a1 == a2[1:]  # Keras reads batch 0 once more first, for its data spec
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(w1, w2, rtol=1e-5)


def test_array_steps_per_epoch_schedule():
    def run(lib):
        cb = counter_cb(lib)
        m = example(lib)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = m.fit(
                np.ones((80, 4), np.float32),
                np.zeros((80, 3), np.float32),
                batch_size=20,
                steps_per_epoch=3,
                epochs=4,
                shuffle=False,
                verbose=0,
                callbacks=[cb],
            )
        return cb.per_epoch, h.history["loss"]

    (p1, l1), (p2, l2) = both(run)
    assert p1 == p2
    np.testing.assert_allclose(l1, l2, rtol=1e-5)


@pytest.mark.parametrize("one_hot", [False, True])
def test_class_weight_fit(one_hot):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = np.array([0, 1, 2] * 4)
    w0 = rng.normal(size=(3, 3)).astype(np.float32)
    cw = {0: 0.5, 2: 3.0}

    def run(lib):
        m = lib.Sequential([lib.layers.Input((3,)), lib.layers.Dense(3, activation="softmax")])
        m.set_weights([w0, np.zeros(3, np.float32)])
        loss = "categorical_crossentropy" if one_hot else "sparse_categorical_crossentropy"
        m.compile(optimizer=lib.optimizers.SGD(0.1), loss=loss, metrics=["accuracy"])
        target = np.eye(3, dtype=np.float32)[y] if one_hot else y
        h = m.fit(x, target, batch_size=4, epochs=2, shuffle=False, class_weight=cw, verbose=0)
        tob = m.train_on_batch(x, target, class_weight=cw, return_dict=True)
        return h.history, m.get_weights(), tob

    (h1, w1, t1), (h2, w2, t2) = both(run)
    for k in h2:
        np.testing.assert_allclose(h1[k], h2[k], rtol=1e-5, err_msg=k)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t1["loss"], float(t2["loss"]), rtol=1e-5)


def test_initial_epoch_and_validation_freq():
    def run(lib):
        cb = counter_cb(lib)
        m = example(lib)
        x, y = np.ones((10, 4), np.float32), np.zeros((10, 3), np.float32)
        h = m.fit(
            x,
            y,
            epochs=6,
            initial_epoch=1,
            validation_data=(x, y),
            validation_freq=2,
            batch_size=10,
            verbose=0,
            callbacks=[cb],
        )
        return cb.epochs, cb.tests, h.epoch, h.history

    (e1, t1, he1, h1), (e2, t2, he2, h2) = both(run)
    assert e1 == e2 and t1 == t2 and list(he1) == list(he2)
    for k in h2:
        np.testing.assert_allclose(h1[k], h2[k], rtol=1e-5, err_msg=k)


def test_custom_train_step_and_test_step():
    def run(lib):
        class Custom(lib.Model):
            def __init__(self):
                super().__init__()
                self.dense = lib.layers.Dense(3, use_bias=False, kernel_initializer="ones")

            def call(self, x):
                return self.dense(x)

            def train_step(self, data):
                logs = super().train_step(data)
                logs["my_custom_metric"] = 10.0
                return logs

            def test_step(self, data):
                logs = super().test_step(data)
                logs["my_custom_metric"] = 5.0
                return logs

        m = Custom()
        m.compile(optimizer=lib.optimizers.SGD(), loss="mse", metrics=["mse"])
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        h = m.fit(x, y, batch_size=16, epochs=2, verbose=0).history
        ev = m.evaluate(x, y, batch_size=16, verbose=0)
        return h, [float(v) for v in ev], m.get_weights()[0]

    (h1, e1, w1), (h2, e2, w2) = both(run)
    assert sorted(h1) == sorted(h2)
    for k in h2:
        np.testing.assert_allclose(h1[k], np.asarray(h2[k], np.float64), rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(e1, e2, rtol=1e-5)
    np.testing.assert_allclose(w1, w2, rtol=1e-5)


def linear_layer(keras):
    """keras.io "Making new layers and models via subclassing", the Linear layer, with
    keras and keras.ops as the only names it uses (the import is all that changes)."""
    ops = keras.ops

    class Linear(keras.layers.Layer):
        def __init__(self, units=32, input_dim=32):
            super().__init__()
            self.w = self.add_weight(
                shape=(input_dim, units), initializer="random_normal", trainable=True
            )
            self.b = self.add_weight(shape=(units,), initializer="zeros", trainable=True)

        def call(self, inputs):
            return ops.matmul(inputs, self.w) + self.b

    return Linear


def test_linear_layer_from_keras_guide_ported_by_import():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2)).astype(np.float32)
    y = rng.normal(size=(5, 4)).astype(np.float32)
    ours, theirs = linear_layer(mk)(4, 2), linear_layer(KERAS)(4, 2)
    theirs.set_weights([np.asarray(w) for w in ours.weights])
    np.testing.assert_allclose(
        np.asarray(ours(x)), KERAS.ops.convert_to_numpy(theirs(x)), rtol=1e-6, atol=1e-6
    )

    def fit(lib, layer):
        m = lib.Sequential([lib.layers.Input((2,)), layer])
        m.compile(optimizer=lib.optimizers.SGD(0.1), loss="mse")
        return m.fit(x, y, batch_size=5, epochs=3, shuffle=False, verbose=0).history["loss"]

    np.testing.assert_allclose(fit(mk, ours), fit(KERAS, theirs), rtol=1e-5)
