"""fit on Python generators, as Keras 3 (``keras/src/trainers/epoch_iterator.py`` and
``data_adapters/__init__.py``): batches ``(x, y)`` or ``(x, y, sample_weight)``;
``steps_per_epoch`` batches per epoch, the next epoch going on where the last stopped;
without it an epoch runs until the generator is exhausted; a generator that runs out
stops training with the warning "Your input ran out of data" (epoch_iterator_test.py::
test_insufficient_data); ``y``/``sample_weight`` beside a generator are refused with
Keras' message."""

import warnings

import numpy as np
import pytest

from metalearn import keras


def batches(n, size=4, seed=0, weights=False):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=(size, 3)).astype(np.float32)
        y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
        if weights:
            yield x, y, rng.uniform(0.5, 2.0, size).astype(np.float32)
        else:
            yield x, y


def model(opt="sgd"):
    m = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(1)])
    m.set_weights([np.array([[0.1], [0.2], [-0.3]], np.float32), np.zeros(1, np.float32)])
    m.compile(optimizer=keras.optimizers.SGD(0.05) if opt == "sgd" else opt, loss="mse")
    return m


def same_as_arrays(n, epochs, weights=False):
    """The same batches given to train_on_batch one by one: the reference run."""
    m = model()
    losses = []
    for item in batches(n, weights=weights):
        losses.append(m.train_on_batch(*item))
    return m, losses


def test_steps_per_epoch_carries_over_epochs():
    m = model()
    h = m.fit(batches(10), steps_per_epoch=3, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2
    assert int(m.optimizer.iterations) == 6
    ref, _ = same_as_arrays(6, 1)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_until_exhausted_then_ran_out():
    m = model()
    with pytest.warns(UserWarning, match="Your input ran out of data"):
        h = m.fit(batches(5), epochs=3, verbose=0)
    assert int(m.optimizer.iterations) == 5
    assert len(h.history["loss"]) == 1  # the epochs after it had no batch
    ref, losses = same_as_arrays(5, 1)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_insufficient_data():
    # epoch_iterator_test.py::test_insufficient_data: 6 steps asked, 4 batches there
    m = model()
    with pytest.warns(UserWarning, match="Your input ran out of data"):
        h = m.fit(batches(4), steps_per_epoch=6, epochs=2, verbose=0)
    assert int(m.optimizer.iterations) == 4
    assert len(h.history["loss"]) == 1


def test_exact_data_no_warning():
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.fit(batches(6), steps_per_epoch=3, epochs=2, verbose=0)
    assert int(m.optimizer.iterations) == 6


def test_sample_weights_in_batches():
    m = model()
    m.fit(batches(4, weights=True), epochs=1, verbose=0)
    ref, _ = same_as_arrays(4, 1, weights=True)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_iterator_and_validation_data():
    m = model()
    items = list(batches(3))
    x_val, y_val = items[0]
    h = m.fit(iter(items), epochs=1, verbose=0, validation_data=(x_val, y_val))
    assert set(h.history) == {"loss", "val_loss"}
    np.testing.assert_allclose(h.history["val_loss"][0], m.evaluate(x_val, y_val, verbose=0))


def test_refusals():
    m = model()
    with pytest.raises(ValueError, match="`y` should not be passed"):
        m.fit(batches(2), np.zeros((8, 1)), verbose=0)
    with pytest.raises(ValueError, match="`sample_weight` should not be passed"):
        m.fit(batches(2), sample_weight=np.ones(8), verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(batches(2), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        m.fit(batches(2), steps_per_epoch=0, verbose=0)
    before = m.get_weights()

    def bad():
        yield np.ones((2, 5), np.float32), np.ones((2, 1), np.float32)

    with pytest.raises(ValueError, match="does not fit the model"):
        m.fit(bad(), verbose=0)

    def not_pairs():
        yield np.ones((2, 3), np.float32)

    with pytest.raises(ValueError, match="tuple"):
        m.fit(not_pairs(), verbose=0)
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert int(m.optimizer.iterations) == 0


def test_callbacks_see_the_steps():
    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params["steps"])

        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    model().fit(batches(4), steps_per_epoch=2, epochs=2, verbose=0, callbacks=[Count()])
    assert seen == [2, 0, 1, 0, 1]


def test_verbose_runs(capsys):
    model().fit(batches(3), epochs=1, verbose=1)
    assert "Epoch 1/1" in capsys.readouterr().out


def test_evaluate_generator_equals_arrays():
    m = model()
    m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    items = list(batches(5, weights=True))
    x = np.concatenate([i[0] for i in items])
    y = np.concatenate([i[1] for i in items])
    sw = np.concatenate([i[2] for i in items])
    ref = m.evaluate(x, y, sample_weight=sw, batch_size=4, verbose=0)
    np.testing.assert_allclose(m.evaluate(iter(items), verbose=0), ref, rtol=1e-6)
    # steps: the first batches only, as Keras 3
    ref2 = m.evaluate(x[:8], y[:8], sample_weight=sw[:8], batch_size=4, verbose=0)
    np.testing.assert_allclose(m.evaluate(iter(items), steps=2, verbose=0), ref2, rtol=1e-6)
    np.testing.assert_allclose(
        m.evaluate(x, y, sample_weight=sw, batch_size=4, steps=2, verbose=0), ref2, rtol=1e-6
    )
    with pytest.raises(ValueError, match="`y` should not be passed"):
        m.evaluate(iter(items), y, verbose=0)
    with pytest.raises(ValueError, match="no batch"):
        m.evaluate(iter([]), verbose=0)


def test_validation_generator_with_steps():
    m = model()
    val = list(batches(4, seed=9))
    h = m.fit(
        batches(6),
        steps_per_epoch=3,
        epochs=2,
        verbose=0,
        validation_data=iter(val),
        validation_steps=2,
    )
    assert len(h.history["val_loss"]) == 2
    # the second validation reads the next two batches (a generator goes on), with the
    # weights after epoch 2
    x = np.concatenate([v[0] for v in val[2:]])
    y = np.concatenate([v[1] for v in val[2:]])
    np.testing.assert_allclose(h.history["val_loss"][1], m.evaluate(x, y, verbose=0), rtol=1e-6)
    # a validation that finds nothing left: left out of the logs, with Keras' warning
    m2 = model()
    with pytest.warns(UserWarning, match="ran out of data"):
        h2 = m2.fit(
            batches(4), steps_per_epoch=2, epochs=2, verbose=0, validation_data=batches(1, seed=3)
        )
    assert len(h2.history["loss"]) == 2 and len(h2.history["val_loss"]) == 1
