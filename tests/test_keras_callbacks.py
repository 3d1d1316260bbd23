"""Callbacks: History, EarlyStopping, ModelCheckpoint, LambdaCallback."""
import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import callbacks, layers


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    return x, y


def _model(lr=0.05):
    ml.random.set_seed(0)
    model = keras.Sequential([layers.Dense(1, input_shape=(3,))])
    model.compile(keras.optimizers.SGD(lr), "mse")
    return model


def test_history_records_every_epoch():
    x, y = _data()
    model = _model()
    hist = model.fit(x, y, epochs=4, batch_size=40, shuffle=False, verbose=0)
    assert hist.epoch == [0, 1, 2, 3] and model.history is hist
    assert len(hist.history["loss"]) == 4
    assert all(b < a for a, b in zip(hist.history["loss"], hist.history["loss"][1:]))


def test_early_stopping_stops_when_the_loss_is_flat():
    x, y = _data()
    model = _model(lr=0.0)  # nothing improves
    stop = callbacks.EarlyStopping(monitor="loss", patience=2)
    hist = model.fit(x, y, epochs=20, verbose=0, callbacks=[stop])
    assert len(hist.epoch) == 3 and stop.stopped_epoch == 2 and model.stop_training


def test_early_stopping_restores_best_weights():
    x, y = _data()
    model = _model()
    scores = [0.1, 0.5, 0.3, 0.2, 0.4, 0.35, 0.3]
    seen = {}

    def inject(epoch, logs):
        logs["val_score"] = scores[epoch]
        seen[epoch] = model.get_weights()

    stop = callbacks.EarlyStopping(monitor="val_score", mode="max", patience=2, restore_best_weights=True)
    hist = model.fit(x, y, epochs=7, verbose=0, callbacks=[callbacks.LambdaCallback(on_epoch_end=inject), stop])
    assert len(hist.epoch) == 4 and stop.best_epoch == 1
    for a, b in zip(model.get_weights(), seen[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seen[1][0], seen[3][0])


def test_model_checkpoint_saves_only_improvements(tmp_path):
    x, y = _data()
    model = _model()
    losses_seen = {}

    def record(epoch, logs):
        logs["val_fake"] = [3.0, 1.0, 2.0, 0.5][epoch]
        losses_seen[epoch] = model.get_weights()

    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "ck-{epoch:02d}.weights"), monitor="val_fake",
                                     save_best_only=True)
    model.fit(x, y, epochs=4, verbose=0, callbacks=[callbacks.LambdaCallback(on_epoch_end=record), ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck-01.weights", "ck-02.weights", "ck-04.weights"]
    fresh = _model()
    fresh.load_weights(tmp_path / "ck-02.weights")
    for a, b in zip(fresh.get_weights(), losses_seen[1]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        callbacks.ModelCheckpoint("x", save_weights_only=False)


def test_lambda_callback_counts_batches_and_epochs():
    x, y = _data()
    model = _model()
    counts = {"batch": 0, "epoch": 0, "begin": 0, "end": 0}
    cb = callbacks.LambdaCallback(
        on_batch_end=lambda b, logs: counts.__setitem__("batch", counts["batch"] + 1),
        on_epoch_end=lambda e, logs: counts.__setitem__("epoch", counts["epoch"] + 1),
        on_train_begin=lambda logs: counts.__setitem__("begin", counts["begin"] + 1),
        on_train_end=lambda logs: counts.__setitem__("end", counts["end"] + 1))
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    assert counts == {"batch": 9, "epoch": 3, "begin": 1, "end": 1}  # ceil(40/16) * 3


def test_custom_callback_subclass_sees_model_and_params():
    class Probe(callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.info = (self.model, self.params["epochs"], self.params["steps"])

    x, y = _data()
    model = _model()
    probe = Probe()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[probe])
    assert probe.info == (model, 2, 5)
