"""Callbacks against the expected behaviour in Keras 3's tests.

Sources: ``keras/src/callbacks/early_stopping_test.py``, ``model_checkpoint_test.py``,
``lambda_callback_test.py`` and ``monitor_callback.py`` (how ``mode="auto"`` picks a
direction). Sequences of monitored values and the expected stopping epochs are Keras';
the test code is ours.
"""

import os
import warnings

import numpy as np
import pytest

from metalearn.keras import callbacks, layers, metrics, models, utils

from ._helpers import all_close


class EpochModel:
    """early_stopping_test.py's DummyModel: its "weights" are the epoch number. Its metrics
    are those of the model Keras' test_early_stopping compiles (metrics=["mse", "acc",
    "accuracy"]): in mode "auto" Keras 3 takes the direction from the model's metric of
    the monitored name (monitor_callback.py::_set_monitor_op) and raises ValueError for a
    name no metric declares, so a model without them cannot monitor "mse" or "acc"."""

    def __init__(self):
        self.stop_training = False
        self.weights = -1
        self.metrics = [
            metrics.MeanSquaredError(name="mse"),
            metrics.BinaryAccuracy(name="acc"),
            metrics.BinaryAccuracy(name="accuracy"),
        ]

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


def run_epochs(stopper, values, stop_from_outside_at=None, monitor="val_loss"):
    """Feeds one monitored value per epoch as fit would; returns the epochs trained."""
    stopper.on_train_begin({})
    trained = 0
    for epoch, value in enumerate(values):
        trained += 1
        stopper.model.weights = epoch
        stopper.on_epoch_end(epoch, {monitor: value})
        if epoch == stop_from_outside_at:
            stopper.model.stop_training = True
        if stopper.model.stop_training:
            break
    stopper.on_train_end({})
    return trained


def small_model(units=3, input_dim=3):
    model = models.Sequential(
        [
            layers.Dense(5, activation="relu", input_shape=(input_dim,)),
            layers.Dense(units, activation="softmax"),
        ]
    )
    return model


def classification_data(n=30, classes=3, dim=3, seed=42):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)).astype("float32") + y[:, None].astype("float32")
    return x, utils.to_categorical(y, classes)


# ------------------------------------------------------------------ EarlyStopping
class TestEarlyStopping:
    @pytest.mark.parametrize("patience", [0, 1, 2, 3])
    def test_early_stopping_patience(self, patience):
        # early_stopping_test.py::EarlyStoppingTest::test_early_stopping_patience
        stopper = callbacks.EarlyStopping(monitor="loss", patience=patience)
        stopper.set_model(EpochModel())
        run_epochs(stopper, [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5], monitor="loss")
        assert stopper.stopped_epoch == max(patience, 1) + 2

    def test_state_reset_across_fit_calls(self):
        # early_stopping_test.py::EarlyStoppingTest::test_state_reset_across_fit_calls
        stopper = callbacks.EarlyStopping(monitor="loss", patience=3)
        stopper.set_model(EpochModel())
        stopper.on_train_begin({})
        stopper.best, stopper.wait, stopper.stopped_epoch = 0.1, 3, 5
        stopper.best_epoch, stopper.best_weights = 5, object()
        stopper.on_train_begin({})
        assert stopper.best is None and stopper.wait == 0 and stopper.stopped_epoch == 0
        assert stopper.best_epoch == 0 and stopper.best_weights is None

    def test_restore_best_weights_when_stopping(self):
        # early_stopping_test.py::test_early_stopping_final_weights_when_restoring_model_
        # weights (first case): the best epoch is 2 (0.1); patience 2 stops at epoch 4 and
        # restores epoch 2's weights
        stopper = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
        stopper.set_model(EpochModel())
        run_epochs(stopper, [0.2, 0.15, 0.1, 0.11, 0.12])
        assert stopper.model.get_weights() == 2

    def test_restore_best_weights_with_baseline(self):
        # same Keras test, second case: nothing beats the baseline 0.5, so training stops
        # after 5 epochs (patience 5) and epoch 2's weights (0.7) are restored
        stopper = callbacks.EarlyStopping(
            monitor="val_loss", patience=5, baseline=0.5, restore_best_weights=True
        )
        stopper.set_model(EpochModel())
        assert run_epochs(stopper, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]) == 5
        assert stopper.model.get_weights() == 2

    def test_restore_best_weights_at_end_of_training(self):
        # same Keras test, third case: another callback stops training at epoch 3; the
        # best weights (epoch 2) are restored at the end of training all the same
        stopper = callbacks.EarlyStopping(
            monitor="val_loss", patience=5, baseline=0.5, restore_best_weights=True
        )
        stopper.set_model(EpochModel())
        assert run_epochs(stopper, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], stop_from_outside_at=3) == 4
        assert stopper.model.get_weights() == 2

    def test_start_from_epoch(self):
        # early_stopping_test.py::test_early_stopping_with_start_from_epoch: with
        # start_from_epoch=2 and patience=3 on a quantity that never improves, training
        # runs at least patience + start_from_epoch epochs (Keras: stops at epoch 5)
        stopper = callbacks.EarlyStopping(monitor="mse", patience=3, start_from_epoch=2)
        stopper.set_model(EpochModel())
        trained = run_epochs(stopper, [1.0] * 20, monitor="mse")
        assert trained >= 3 + 2
        assert stopper.stopped_epoch == 5

    @pytest.mark.parametrize(
        "mode,monitor,direction",
        [
            # early_stopping_test.py::EarlyStoppingTest::test_early_stopping cases (those of
            # metrics metalearn has)
            ("max", "val_mse", "max"),
            ("min", "val_loss", "min"),
            ("auto", "val_mse", "min"),
            ("auto", "loss", "min"),
            ("auto", "acc", "max"),
            ("auto", "val_accuracy", "max"),
        ],
    )
    def test_mode(self, mode, monitor, direction):
        # seen through behaviour: with patience 0, a rise stops training in "min"
        # direction and is an improvement in "max" direction
        stopper = callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=0)
        stopper.set_model(EpochModel())
        run_epochs(stopper, [0.5, 0.6], monitor=monitor)
        assert stopper.model.stop_training == (direction == "min")

    def test_unknown_monitor_in_auto_mode(self):
        # early_stopping_test.py::EarlyStoppingTest::test_early_stopping ends with
        # monitor="unknown": in mode "auto" Keras cannot tell the direction and fit raises
        # ValueError (monitor_callback.py::_set_monitor_op)
        x, y = np.random.random((10, 5)).astype("float32"), np.random.random((10, 1))
        model = models.Sequential(
            [layers.Dense(1, activation="relu"), layers.Dense(1, activation="relu")]
        )
        model.compile(loss="mae", optimizer="adam", metrics=["mse"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError):
                model.fit(
                    x,
                    y,
                    batch_size=5,
                    validation_data=(x, y),
                    epochs=2,
                    verbose=0,
                    callbacks=[callbacks.EarlyStopping(patience=0, monitor="unknown")],
                )

    def test_fit_stops(self):
        # early_stopping_test.py::test_early_stopping_reuse: a reused stopper stops each of
        # two fits after at least `patience` epochs
        x = np.random.random((100, 1)).astype("float32")
        y = np.where(x > 0.5, 1, 0).astype("float32")
        model = models.Sequential(
            [layers.Dense(1, activation="relu"), layers.Dense(1, activation="relu")]
        )
        model.compile(optimizer="sgd", loss="mae", metrics=["mse"])
        stopper = callbacks.EarlyStopping(monitor="mse", patience=3)
        for _ in range(2):
            history = model.fit(x, y, callbacks=[stopper], verbose=0, epochs=20)
            assert len(history.epoch) >= 3


# ---------------------------------------------------------------- ModelCheckpoint
@pytest.fixture
def fitted_setup(tmp_path):
    x, y = classification_data()
    model = small_model()
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["acc"])
    return model, x, y, tmp_path


def fit_one(model, x, y, cbs, epochs=1):
    return model.fit(
        x, y, batch_size=5, validation_data=(x, y), callbacks=cbs, epochs=epochs, verbose=0
    )


class TestModelCheckpoint:
    @pytest.mark.parametrize(
        "monitor,mode,save_best_only",
        [
            ("val_loss", "auto", False),
            ("val_loss", "min", False),
            ("val_acc", "max", False),
            ("val_acc", "max", True),
        ],
    )
    def test_saves(self, fitted_setup, monitor, mode, save_best_only):
        # model_checkpoint_test.py::test_model_checkpoint_options cases 1-4 (the file goes
        # into a subdirectory that the callback creates)
        model, x, y, tmp = fitted_setup
        path = os.path.join(tmp, "subdir", "checkpoint.weights")
        fit_one(
            model,
            x,
            y,
            [
                callbacks.ModelCheckpoint(
                    path, monitor=monitor, mode=mode, save_best_only=save_best_only
                )
            ],
        )
        assert os.path.exists(path)

    def test_missing_monitor_saves_with_a_warning(self, fitted_setup):
        # model_checkpoint_test.py::test_model_checkpoint_options case 5: an unknown
        # monitor with save_best_only warns and saves (Keras 3)
        model, x, y, tmp = fitted_setup
        path = os.path.join(tmp, "checkpoint.weights")
        with pytest.warns(UserWarning):
            fit_one(
                model,
                x,
                y,
                [
                    callbacks.ModelCheckpoint(
                        path, monitor="unknown", save_best_only=True, mode="min"
                    )
                ],
            )
        assert os.path.exists(path)

    def test_unknown_mode_warns(self, tmp_path):
        # model_checkpoint_test.py::test_model_checkpoint_options case 6 (Keras' message:
        # "ModelCheckpoint mode 'unknown' is unknown")
        with pytest.warns(UserWarning, match="mode 'unknown' is unknown"):
            callbacks.ModelCheckpoint(os.path.join(tmp_path, "c.weights"), mode="unknown")

    def test_invalid_save_freq(self, tmp_path):
        # model_checkpoint_test.py::test_model_checkpoint_options case 9
        with pytest.raises(ValueError, match="save_freq"):
            callbacks.ModelCheckpoint(
                os.path.join(tmp_path, "c.weights"), save_freq="invalid_save_freq"
            )

    def test_integer_save_freq_is_refused(self, tmp_path):
        # DELIBERATE DIFFERENCE (test_model_checkpoint_options cases 8 and 10 save every N
        # batches): metalearn's ModelCheckpoint saves at epoch ends only (documented), and
        # refuses an integer save_freq with a ValueError.
        with pytest.raises(ValueError, match="save_freq"):
            callbacks.ModelCheckpoint(os.path.join(tmp_path, "c.weights"), save_freq=15)

    def test_full_model_saving_is_refused(self, tmp_path):
        # DELIBERATE DIFFERENCE (Keras' default save_weights_only=False writes a .keras
        # model file): metalearn saves weights only, in its checked format, and refuses
        # save_weights_only=False with a ValueError (its default is True).
        with pytest.raises(ValueError, match="save_weights_only"):
            callbacks.ModelCheckpoint(os.path.join(tmp_path, "c.keras"), save_weights_only=False)

    @pytest.mark.parametrize(
        "monitor,mode,threshold,saved",
        [
            # test_model_checkpoint_options cases 11, 12, 13 and 14
            ("val_acc", "max", -0.01, True),
            ("val_loss", "auto", None, True),
            ("val_loss", "min", 0, False),
            ("val_loss", "auto", 0, False),
        ],
    )
    def test_initial_value_threshold(self, fitted_setup, monitor, mode, threshold, saved):
        model, x, y, tmp = fitted_setup
        path = os.path.join(tmp, "checkpoint.weights")
        fit_one(
            model,
            x,
            y,
            [
                callbacks.ModelCheckpoint(
                    path,
                    monitor=monitor,
                    save_best_only=True,
                    initial_value_threshold=threshold,
                    mode=mode,
                )
            ],
        )
        assert os.path.exists(path) == saved

    def test_epoch_in_filepath(self, fitted_setup):
        # model_checkpoint_test.py (filepath "checkpoint.epoch{epoch:02d}...", epochs
        # counted from 1); the logs are format fields too
        model, x, y, tmp = fitted_setup
        path = os.path.join(tmp, "checkpoint.epoch{epoch:02d}.weights")
        fit_one(model, x, y, [callbacks.ModelCheckpoint(path)], epochs=3)
        for epoch in (1, 2, 3):
            assert os.path.exists(path.format(epoch=epoch))
        assert not os.path.exists(path.format(epoch=4))

    def test_model_checkpoint_loading(self, fitted_setup):
        # model_checkpoint_test.py::test_model_checkpoint_loading (weights): the saved
        # weights load into a new model of the same architecture
        model, x, y, tmp = fitted_setup
        path = os.path.join(tmp, "checkpoint.weights")
        fit_one(
            model,
            x,
            y,
            [
                callbacks.ModelCheckpoint(
                    path, monitor="val_loss", save_best_only=True, save_weights_only=True
                )
            ],
        )
        new = small_model()
        new.load_weights(path)
        for a, b in zip(model.get_weights(), new.get_weights()):
            all_close(b, a)


# ---------------------------------------------------------- History, LambdaCallback
class TestHistoryAndLambda:
    def test_history(self):
        # History (Keras: fit returns it; history[key] has one value per epoch; epoch is the
        # list of epoch indices; model.history is the same object)
        x, y = classification_data()
        model = small_model()
        model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["acc"])
        history = model.fit(x, y, epochs=3, batch_size=5, validation_split=0.2, verbose=0)
        assert history.epoch == [0, 1, 2]
        assert sorted(history.history) == ["acc", "loss", "val_acc", "val_loss"]
        assert all(len(v) == 3 for v in history.history.values())
        assert model.history is history

    def test_lambda_callback(self):
        # lambda_callback_test.py::test_lambda_callback and test_lambda_callback_with_batches
        # (fit with validation_split=0.2, 5 epochs, batch size 4)
        calls = []
        cb = callbacks.LambdaCallback(
            on_train_begin=lambda logs: calls.append("on_train_begin"),
            on_epoch_begin=lambda epoch, logs: calls.append("on_epoch_begin"),
            on_epoch_end=lambda epoch, logs: calls.append("on_epoch_end"),
            on_train_end=lambda logs: calls.append("on_train_end"),
            on_train_batch_begin=lambda batch, logs: calls.append("on_train_batch_begin"),
            on_train_batch_end=lambda batch, logs: calls.append("on_train_batch_end"),
        )
        model = models.Sequential([layers.Input(shape=(2,), batch_size=4), layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(
            np.random.randn(16, 2).astype("float32"),
            np.random.randn(16, 1),
            batch_size=4,
            validation_split=0.2,
            callbacks=[cb],
            epochs=5,
            verbose=0,
        )
        for hook in (
            "on_train_begin",
            "on_epoch_begin",
            "on_epoch_end",
            "on_train_end",
            "on_train_batch_begin",
            "on_train_batch_end",
        ):
            assert hook in calls, hook
        assert calls.count("on_epoch_end") == 5

    def test_lambda_callback_evaluate_and_predict(self):
        # lambda_callback_test.py::test_lambda_callback_with_kwargs (on_test_begin through
        # evaluate) and test_lambda_callback_during_prediction (on_predict_begin)
        calls = []
        model = models.Sequential([layers.Input(shape=(2,), batch_size=4), layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        x, y = np.random.randn(16, 2).astype("float32"), np.random.randn(16, 1)
        model.evaluate(
            x,
            y,
            batch_size=4,
            verbose=0,
            callbacks=[
                callbacks.LambdaCallback(on_test_begin=lambda logs: calls.append("on_test_begin"))
            ],
        )
        model.predict(
            x,
            batch_size=4,
            verbose=0,
            callbacks=[
                callbacks.LambdaCallback(
                    on_predict_begin=lambda logs: calls.append("on_predict_begin")
                )
            ],
        )
        assert calls == ["on_test_begin", "on_predict_begin"]

    def test_lambda_callback_no_args(self):
        # lambda_callback_test.py::test_lambda_callback_no_args
        assert isinstance(callbacks.LambdaCallback(), callbacks.LambdaCallback)

    def test_lambda_callback_unknown_hook_is_refused(self):
        # DELIBERATE DIFFERENCE (lambda_callback_test.py::
        # test_lambda_callback_with_additional_kwargs sets any keyword as an attribute):
        # metalearn accepts the hook names only and refuses others with a TypeError, so a
        # misspelt hook (on_epoch_ends=...) is an error instead of a hook never called.
        with pytest.raises(TypeError, match="custom_method"):
            callbacks.LambdaCallback(custom_method=lambda logs: None)
