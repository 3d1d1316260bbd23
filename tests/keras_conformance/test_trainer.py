"""Model.fit / evaluate / predict / train_on_batch against Keras 3's trainer tests.

Source: ``keras/src/trainers/trainer_test.py`` (its ``ExampleModel`` is a Dense layer
without bias whose kernel starts at ones; here a one-layer Sequential) and
``keras/src/trainers/compile_utils_test.py`` (what compile does with losses and metrics).
Inputs and numbers are Keras'; the exact fit trajectories are also recomputed in NumPy
from SGD's and MSE's formulas.
"""

import numpy as np
import pytest

from metalearn.keras import callbacks, layers, losses, metrics, models, optimizers

from ._helpers import all_close, almost_equal


def example_model(units=3):
    """trainer_test.py::ExampleModel: Dense(units, use_bias=False, kernel ones)."""
    return models.Sequential([layers.Dense(units, use_bias=False, kernel_initializer="ones")])


def compiled_example(units=3, **compile_kwargs):
    model = example_model(units)
    kwargs = dict(
        optimizer=optimizers.SGD(),
        loss=losses.MeanSquaredError(),
        metrics=[metrics.MeanSquaredError()],
    )
    kwargs.update(compile_kwargs)
    model.compile(**kwargs)
    return model


class TrainingTestingModel(models.Model):
    """trainer_test.py::TrainingTestingLayer: no weights; x when training, else 0."""

    def call(self, x, training=False):
        if training:
            return x
        return x * 0


def identity_model(dim):
    """Outputs its inputs: evaluate(x=y_pred, y=y_true) evaluates losses and metrics on
    the given predictions (compile_utils_test's inputs)."""
    return models.Sequential(
        [layers.Dense(dim, use_bias=False, kernel_initializer="identity", input_shape=(dim,))]
    )


# ------------------------------------------------------------------------------ fit
class TestFit:
    def test_fit_flow(self):
        # trainer_test.py::TestTrainer::test_fit_flow: x ones (100, 4), y zeros (100, 3),
        # SGD(0.01), batch 20, 3 epochs: per-epoch MSE [14.5, 11.5, 8.5] within Keras' 1.0
        model = compiled_example()
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        history = model.fit(x, y, batch_size=20, epochs=3, verbose=0).history
        assert "loss" in history and "mean_squared_error" in history
        all_close(history["mean_squared_error"], [14.5, 11.5, 8.5], atol=1.0)
        # exactly: every kernel entry is one w; loss 16 w^2; dL/dw_ij = 8 w / 3
        w, per_epoch = 1.0, []
        for _ in range(3):
            seen = []
            for _ in range(5):
                seen.append(16 * w * w)
                w -= 0.01 * 8 * w / 3
            per_epoch.append(np.mean(seen))
        all_close(history["mean_squared_error"], per_epoch, rtol=1e-5)
        all_close(history["loss"], per_epoch, rtol=1e-5)
        assert int(model.optimizer.iterations) == 15  # one step per batch, 5 batches x 3

    def test_fit_with_val_split(self):
        # trainer_test.py::TestTrainer::test_fit_with_val_split
        model = compiled_example()
        history = model.fit(
            np.ones((100, 4), np.float32),
            np.zeros((100, 3), np.float32),
            batch_size=20,
            epochs=3,
            validation_split=0.2,
            verbose=0,
        ).history
        assert "loss" in history and "val_loss" in history

    def test_rank_one_targets(self):
        # Keras matches the ranks of y and y_pred before every loss and metric
        # (loss.py::squeeze_or_expand_to_same_rank, loss_test.py::test_squeeze_or_expand):
        # Dense(1) fitted on y of shape (N,) trains exactly as on y of shape (N, 1)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 3)).astype("float32")
        y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype("float32")
        start = None
        runs = []
        for target in (y, y[:, None]):
            model = models.Sequential([layers.Dense(1, input_shape=(3,))])
            if start is None:
                start = model.get_weights()
            model.set_weights(start)
            model.compile(optimizer=optimizers.SGD(0.05), loss="mse", metrics=["mae"])
            runs.append(
                model.fit(x, target, batch_size=16, epochs=5, shuffle=False, verbose=0).history
            )
        all_close(runs[0]["loss"], runs[1]["loss"], rtol=1e-5)
        all_close(runs[0]["mae"], runs[1]["mae"], rtol=1e-5)

    def test_fit_without_trainable_weights(self):
        # trainer_test.py::TestTrainer::test_fit_with_different_batch_size_same_loss: a
        # frozen model fits (nothing trains) and its loss does not depend on the batch size
        x, y = np.random.rand(100, 4).astype("float32"), np.ones((100, 1), np.float32)
        model = example_model(1)
        model.trainable = False
        model.compile(loss="mse")
        loss1 = model.fit(x, y, batch_size=80, verbose=0).history["loss"]
        loss2 = model.fit(x, y, batch_size=100, verbose=0).history["loss"]
        all_close(loss1, loss2)

    def test_training_arg(self):
        # trainer_test.py::TestTrainer::test_training_arg: a model with no weights whose
        # output depends on `training`: fit sees training=True (loss 1), evaluate and
        # predict see training=False (loss 0, zeros)
        model = TrainingTestingModel()
        model.compile(optimizer="sgd", loss="mse")
        x, y = np.ones((128, 1), np.float32), np.zeros((128, 1), np.float32)
        all_close(model.fit(x, y, batch_size=32, verbose=0).history["loss"], [1.0])
        all_close(model.evaluate(x, y, batch_size=32, verbose=0), 0.0)
        all_close(model.predict(x, verbose=0), np.zeros((128, 1)))

    def test_recompile(self):
        # trainer_test.py::TestTrainer::test_recompile: a new compile replaces the metrics
        model = example_model()
        x, y = np.ones((3, 2), np.float32), np.ones((3, 3), np.float32)
        model.compile(optimizer="sgd", loss="mse", metrics=["mean_squared_error"])
        assert sorted(model.fit(x, y, verbose=0).history) == ["loss", "mean_squared_error"]
        assert sorted(model.evaluate(x, y, return_dict=True, verbose=0)) == [
            "loss",
            "mean_squared_error",
        ]
        model.compile(optimizer="sgd", loss="mse", metrics=["mean_absolute_error"])
        assert sorted(model.fit(x, y, verbose=0).history) == ["loss", "mean_absolute_error"]
        assert sorted(model.evaluate(x, y, return_dict=True, verbose=0)) == [
            "loss",
            "mean_absolute_error",
        ]


# ------------------------------------------------------------ evaluate / predict
class TestEvaluatePredict:
    def test_evaluate_flow(self):
        # trainer_test.py::TestTrainer::test_evaluate_flow
        model = compiled_example()
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        all_close(model.evaluate(x, y, batch_size=16, verbose=0), [16.0, 16.0])
        out = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
        assert isinstance(out, dict) and "loss" in out and "mean_squared_error" in out
        all_close(out["mean_squared_error"], 16.0)

    def test_predict_flow(self):
        # trainer_test.py::TestTrainer::test_predict_flow
        outputs = example_model().predict(np.ones((100, 4), np.float32), batch_size=16, verbose=0)
        all_close(outputs, 4 * np.ones((100, 3)))

    def test_evaluate_with_different_batch_size_same_loss(self):
        # trainer_test.py::TestTrainer::test_evaluate_with_different_batch_size_same_loss
        x, y = np.random.rand(100, 4).astype("float32"), np.ones((100, 1), np.float32)
        model = example_model(1)
        model.compile(loss="mse")
        all_close(
            model.evaluate(x, y, batch_size=80, verbose=0),
            model.evaluate(x, y, batch_size=100, verbose=0),
            rtol=1e-6,
        )

    def test_evaluate_return_list_respect_metrics_order(self):
        # trainer_test.py::TestTrainer::test_evaluate_return_list_respect_metrics_order
        def metrics_zero(y_true, y_pred):
            return 0.0

        def metrics_one(y_true, y_pred):
            return 1.0

        model = example_model()
        x, y = np.ones((3, 2), np.float32), np.ones((3, 3), np.float32)
        model.compile(optimizer="sgd", loss="mse", metrics=[metrics_zero, metrics_one])
        out = model.evaluate(x, y, verbose=0)
        assert len(out) == 3 and out[1] == 0.0 and out[2] == 1.0
        model.compile(optimizer="sgd", loss="mse", metrics=[metrics_one, metrics_zero])
        out = model.evaluate(x, y, verbose=0)
        assert len(out) == 3 and out[1] == 1.0 and out[2] == 0.0


# ------------------------------------------------------------------ *_on_batch
class TestOnBatch:
    def test_on_batch_methods(self):
        # trainer_test.py::TestTrainer::test_on_batch_methods (its values to 3 decimals)
        model = compiled_example()
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        sw = np.arange(100).reshape((100,)).astype("float32") / 50.0
        logs = model.train_on_batch(x, y)
        assert isinstance(logs, list) and len(logs) == 2
        almost_equal(logs[0], 16.0)
        logs = model.train_on_batch(x, y, return_dict=True)
        assert isinstance(logs, dict) and len(logs) == 2
        almost_equal(logs["loss"], 15.158)
        logs = model.test_on_batch(x, y)
        assert isinstance(logs, list) and len(logs) == 2
        almost_equal(logs[0], 14.360)
        logs = model.test_on_batch(x, y, return_dict=True)
        assert isinstance(logs, dict) and len(logs) == 2
        almost_equal(logs["loss"], 14.360)
        output = model.predict_on_batch(x)
        assert isinstance(output, np.ndarray)
        all_close(output[0], [3.789511] * 3, atol=1e-5, rtol=1e-5)
        # with sample weights
        almost_equal(model.train_on_batch(x, y, sw)[0], 14.217)
        almost_equal(model.test_on_batch(x, y, sw)[0], 13.476)
        all_close(model.predict_on_batch(x)[0], [3.689468] * 3, atol=1e-5, rtol=1e-5)
        # with class weights: y is one-hot-shaped zeros, so every sample is class 0
        # (argmax), weight 0.2 (the value ends Keras' test_on_batch_methods)
        almost_equal(model.train_on_batch(x, y, class_weight={1: 0.3, 0: 0.2})[0], 2.722)

    def test_class_weight_with_sample_weight_is_refused(self):
        # Keras 3 (torch trainer's train_on_batch): "Arguments `sample_weight` and
        # `class_weight` cannot be specified at the same time"; nothing changes
        model = compiled_example()
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        model(x[:1])
        with pytest.raises(ValueError, match="`sample_weight` and `class_weight`"):
            model.train_on_batch(x, y, sample_weight=np.ones(100), class_weight={0: 0.2})
        all_close(model.get_weights()[0], np.ones((4, 3)))
        assert int(model.optimizer.iterations) == 0

    def test_on_batch_methods_without_training(self):
        # trainer_test.py::TestTrainer::test_on_batch_methods_without_training (compiled
        # with a loss and metrics only)
        model = example_model()
        model.compile(loss=losses.MeanSquaredError(), metrics=[metrics.MeanSquaredError()])
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        all_close(model.predict_on_batch(x)[0], [4.0, 4.0, 4.0])
        logs = model.test_on_batch(x, y)
        assert isinstance(logs, list) and len(logs) == 2
        almost_equal(logs[0], 16.0)
        almost_equal(model.test_on_batch(x, y, return_dict=True)["loss"], 16.0)


# ------------------------------------------------------------- compile's metrics
class TestCompile:
    def test_metrics_are_not_sample_weighted(self):
        # compile_utils_test.py::TestCompileMetrics::test_single_output_case: metrics given
        # as `metrics=` ignore sample_weight (compile_utils.py::CompileMetrics.update_state
        # passes it to weighted_metrics only). Two batches, weights [1, 0, 1]: the MSE
        # metric is 0.055833336 (the weighted one would be 0.0725); the loss is weighted.
        y_true = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype="float32")
        pred1 = np.array([[0.4, 0.1], [0.2, 0.6], [0.6, 0.1]], dtype="float32")
        pred2 = np.array([[0.3, 0.2], [0.1, 0.4], [0.2, 0.3]], dtype="float32")
        sw = np.array([1, 0.0, 1], dtype="float32")
        model = identity_model(2)
        model.compile(loss="mse", metrics=[metrics.MeanSquaredError()])
        logs = model.evaluate(
            np.concatenate([pred1, pred2]),
            np.concatenate([y_true, y_true]),
            sample_weight=np.concatenate([sw, sw]),
            batch_size=3,
            return_dict=True,
            verbose=0,
        )
        all_close(logs["mean_squared_error"], 0.055833336, atol=1e-6)

    def test_crossentropy_loss_name(self):
        # compile_utils_test.py::TestCompileLoss::test_single_output_case and
        # test_single_output_case_with_crossentropy_loss: "crossentropy" picks the
        # cross-entropy from the shapes (here categorical, 0.706595); MSE gives 0.068333
        y_true = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype="float32")
        y_pred = np.array([[0.4, 0.1], [0.2, 0.6], [0.6, 0.1]], dtype="float32")
        model = identity_model(2)
        model.compile(loss=losses.MeanSquaredError())
        all_close(model.evaluate(y_pred, y_true, verbose=0), 0.068333, atol=1e-5)
        model.compile(loss="crossentropy")
        all_close(model.evaluate(y_pred, y_true, verbose=0), 0.706595, atol=1e-5)


# -------------------------------------------------------------------- callbacks
class RecordingCallback(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def _record(name):
        def hook(self, *args):
            logs = args[-1] if args else None
            self.calls.append((name, sorted((logs or {}).keys())))

        return hook

    on_train_begin = _record("on_train_begin")
    on_train_end = _record("on_train_end")
    on_epoch_begin = _record("on_epoch_begin")
    on_epoch_end = _record("on_epoch_end")
    on_test_begin = _record("on_test_begin")
    on_test_end = _record("on_test_end")
    on_predict_begin = _record("on_predict_begin")
    on_predict_end = _record("on_predict_end")
    on_train_batch_begin = _record("on_train_batch_begin")
    on_train_batch_end = _record("on_train_batch_end")
    on_test_batch_begin = _record("on_test_batch_begin")
    on_test_batch_end = _record("on_test_batch_end")
    on_predict_batch_begin = _record("on_predict_batch_begin")
    on_predict_batch_end = _record("on_predict_batch_end")


def keys_fit_evaluate_predict():
    model = example_model()
    model.compile(optimizer="adam", loss="mse", metrics=["mean_absolute_error"])
    x, y = np.ones((16, 4), np.float32), np.zeros((16, 3), np.float32)
    in_fit, in_rest = RecordingCallback(), RecordingCallback()
    model.fit(x, y, callbacks=[in_fit], batch_size=4, validation_data=(x, y), verbose=0)
    model.evaluate(x, y, batch_size=4, callbacks=[in_rest], verbose=0)
    model.predict(x, batch_size=4, callbacks=[in_rest], verbose=0)
    return in_fit.calls, in_rest.calls


# trainer_test.py::TestTrainer::test_callback_methods_keys: the keys of `logs` per hook
EXPECTED_KEYS = {
    "on_train_begin": [],
    "on_epoch_begin": [],
    "on_train_batch_begin": [],
    "on_test_begin": [],
    "on_test_batch_begin": [],
    "on_predict_begin": [],
    "on_predict_end": [],
    "on_predict_batch_begin": [],
    "on_train_batch_end": ["loss", "mean_absolute_error"],
    "on_test_batch_end": ["loss", "mean_absolute_error"],
    "on_test_end": ["loss", "mean_absolute_error"],
    "on_epoch_end": ["loss", "mean_absolute_error", "val_loss", "val_mean_absolute_error"],
    "on_train_end": ["loss", "mean_absolute_error", "val_loss", "val_mean_absolute_error"],
    "on_predict_batch_end": ["outputs"],
}


class TestCallbackHooks:
    def test_callback_methods_keys(self):
        in_fit, in_rest = keys_fit_evaluate_predict()
        for name, keys in in_fit + in_rest:
            assert keys == EXPECTED_KEYS[name], (name, keys)
        assert {name for name, _ in in_rest} == {
            "on_test_begin",
            "on_test_batch_begin",
            "on_test_batch_end",
            "on_test_end",
            "on_predict_begin",
            "on_predict_batch_begin",
            "on_predict_batch_end",
            "on_predict_end",
        }

    def test_validation_inside_fit_calls_test_hooks(self):
        # Keras' fit runs validation through evaluate with fit's callbacks
        # (backend/torch/trainer.py::fit -> self.evaluate(..., callbacks=callbacks)), so
        # on_test_begin / on_test_batch_* / on_test_end are called once per validation;
        # test_callback_methods_keys checks their logs there
        in_fit, _ = keys_fit_evaluate_predict()
        names = [name for name, _ in in_fit]
        for hook in ("on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end"):
            assert hook in names, hook
        assert names.index("on_test_end") < names.index("on_epoch_end")

    @pytest.mark.parametrize(
        "method,flag,hook",
        [
            ("fit", "stop_training", "on_train_batch_end"),
            ("evaluate", "stop_evaluating", "on_test_batch_end"),
            ("predict", "stop_predicting", "on_predict_batch_end"),
        ],
    )
    def test_stop_loop(self, method, flag, hook):
        # trainer_test.py::TestTrainer::test_stop_loop: a callback setting
        # model.stop_training / stop_evaluating / stop_predicting at the 5th batch end
        # stops the loop there (Keras uses an endless generator; here 50 batches)
        model = example_model()
        model.compile(optimizer="sgd", loss="mse", metrics=["mse"])
        counter = []

        class Stopper(callbacks.Callback):
            pass

        def batch_end(batch, logs=None):
            counter.append(batch)
            if len(counter) == 5:
                setattr(model, flag, True)

        stopper = Stopper()
        setattr(stopper, hook, batch_end)
        x, y = np.ones((100, 2), np.float32), np.ones((100, 3), np.float32)
        if method == "predict":
            model.predict(x, batch_size=2, callbacks=[stopper], verbose=0)
        else:
            getattr(model, method)(x, y, batch_size=2, callbacks=[stopper], verbose=0)
        assert len(counter) == 5


# ------------------------------------------------- overridden step methods
class CustomTrainTestStepModel(models.Sequential):
    """trainer_test.py::CustomTrainTestStepModel: ExampleModel whose train_step and
    test_step add ``my_custom_metric`` to the logs of the default steps."""

    def __init__(self, units=3):
        super().__init__([layers.Dense(units, use_bias=False, kernel_initializer="ones")])

    def train_step(self, data):
        logs = super().train_step(data)
        logs["my_custom_metric"] = 10.0
        return logs

    def test_step(self, data):
        logs = super().test_step(data)
        logs["my_custom_metric"] = 5.0
        return logs


class TestCustomSteps:
    def test_fit_with_custom_train_step(self):
        # trainer_test.py::TestTrainer::test_fit_with_custom_train_step
        model = CustomTrainTestStepModel()
        model.compile(
            optimizer=optimizers.SGD(),
            loss=losses.MeanSquaredError(),
            metrics=[metrics.MeanSquaredError()],
        )
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        history = model.fit(x, y, batch_size=16, verbose=0).history
        assert "loss" in history and "mean_squared_error" in history
        all_close(history["my_custom_metric"], [10.0])
        # the step returns its own keys, so the epoch's logs are the last batch's
        # (Keras' _get_metrics_result_or_logs): the loss tracker's running mean over the
        # epoch, batches weighted by size (6 of 16, then 4): 16 w^2, w -= 0.01 * 8 w / 3
        w, total = 1.0, 0.0
        for n in [16] * 6 + [4]:
            total += 16 * w * w * n
            w -= 0.01 * 8 * w / 3
        all_close(history["loss"], [total / 100], rtol=1e-5)

    @pytest.mark.parametrize("return_dict", [False, True])
    def test_evaluate_with_custom_test_step(self, return_dict):
        # trainer_test.py::TestTrainer::test_evaluate_with_custom_test_step
        model = CustomTrainTestStepModel()
        model.compile(
            optimizer=optimizers.SGD(),
            loss=losses.MeanSquaredError(),
            metrics=[metrics.MeanSquaredError()],
        )
        x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
        output = model.evaluate(x, y, batch_size=16, return_dict=return_dict, verbose=0)
        assert len(output) == 3
        if return_dict:
            all_close(output["my_custom_metric"], 5.0)
            all_close(output["mean_squared_error"], 16.0)
        else:
            all_close(output[-1], 5.0)  # custom metrics go last
            all_close(output[:2], [16.0, 16.0])

    def test_validation_data_infinite_generator(self):
        # trainer_test.py::TestTrainer::test_validation_data_infinite_generator
        model = example_model()
        model.compile(optimizer="sgd", loss="mse", metrics=["mse"])

        class Recorder(callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.train_counter = self.val_counter = 0

            def on_train_batch_end(self, *args, **kwargs):
                self.train_counter += 1

            def on_test_batch_end(self, *args, **kwargs):
                self.val_counter += 1

        def infinite_gen():
            while True:
                yield np.ones((2, 2), np.float32), np.ones((2, 3), np.float32)

        recorder = Recorder()
        model.fit(
            infinite_gen(),
            validation_data=infinite_gen(),
            steps_per_epoch=3,
            validation_steps=4,
            epochs=1,
            shuffle=False,
            callbacks=[recorder],
            verbose=0,
        )
        assert recorder.train_counter == 3 and recorder.val_counter == 4


def _compute_loss_model(training_arg, expect_training, regularized=False):
    """trainer_test.py's MyModel of the compute_loss tests: a Dense(2) whose overridden
    compute_loss updates a tracked Mean metric named "custom" with 4 * loss (or with the
    regularization penalties)."""
    seen = []

    class MyModel(models.Model):
        def __init__(self):
            super().__init__()
            self.custom_metric = metrics.Mean(name="custom")
            self.dense = layers.Dense(2, activity_regularizer="l2" if regularized else None)

        def call(self, x):
            return self.dense(x)

    if training_arg:

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            seen.append(training)
            loss = models.Model.compute_loss(self, x, y, y_pred, sample_weight, training)
            if regularized:
                self.custom_metric.update_state(float(np.sum([np.asarray(l) for l in self.losses])))
            else:
                self.custom_metric.update_state(np.asarray(loss) * 4)
            return loss

    else:

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
            loss = models.Model.compute_loss(self, x, y, y_pred, sample_weight)
            self.custom_metric.update_state(np.asarray(loss) * 4)
            return loss

    MyModel.compute_loss = compute_loss
    model = MyModel()
    model.compile(optimizer="sgd", loss="mse")
    return model, seen


class TestCustomComputeLoss:
    x, y = np.ones((32, 4), np.float32), np.ones((32, 2), np.float32) * 2

    def test_metric_update_in_compute_loss(self):
        # trainer_test.py::TestTrainer::test_metric_update_in_compute_loss
        model, seen = _compute_loss_model(True, True)
        history = model.fit(self.x, self.y, verbose=0).history
        almost_equal(history["custom"][0], history["loss"][0] * 4)
        assert seen and all(seen)  # training=True in fit

    def test_fwd_pass_loss_presence_in_compute_loss(self):
        # trainer_test.py::TestTrainer::test_fwd_pass_loss_presence_in_compute_loss
        model, _ = _compute_loss_model(True, True, regularized=True)
        history = model.fit(self.x, self.y, verbose=0).history
        assert history["custom"][0] > 0.0

    def test_evaluate_with_custom_compute_loss(self):
        # trainer_test.py::TestTrainer::test_evaluate_with_custom_compute_loss
        model, seen = _compute_loss_model(True, False)
        logs = model.evaluate(self.x, self.y, return_dict=True, verbose=0)
        almost_equal(logs["custom"], logs["loss"] * 4)
        assert seen and not any(seen)  # training=False in evaluate

    def test_compute_loss_no_training_backwards_compatibility(self):
        # trainer_test.py::TestTrainer::test_compute_loss_no_training_backwards_compatibility
        model, _ = _compute_loss_model(False, None)
        logs = model.evaluate(self.x, self.y, return_dict=True, verbose=0)
        almost_equal(logs["custom"], logs["loss"] * 4)
        history = model.fit(self.x, self.y, verbose=0).history
        almost_equal(history["custom"][0], history["loss"][0] * 4)


class TestPyDatasetAdapter:
    @pytest.mark.parametrize(
        "dataset_kwargs,fit_kwargs",
        [
            ({}, {}),
            ({}, {"class_weight": {0: 1, 1: 2}}),
            ({"infinite": True}, {"steps_per_epoch": 20}),
            ({"infinite": True}, {"steps_per_epoch": 20, "class_weight": {0: 1, 1: 2}}),
            ({"workers": 2}, {}),
            ({"workers": 2, "use_multiprocessing": True}, {"class_weight": {0: 1, 1: 2}}),
        ],
    )
    def test_fit_with_data_adapter(self, dataset_kwargs, fit_kwargs):
        # trainer_test.py::TestTrainer::test_fit_with_data_adapter, the py_dataset cases
        # (TestPyDataset: 20 batches of ones (5, 4), zeros (5, 3), 3 epochs; Keras uses
        # Adagrad, here SGD, whose trajectory is the formula below).
        # With y all zeros every sample is class 0 (argmax), weight 1: the losses are
        # those of the unweighted run.
        from metalearn.keras import utils

        class TestPyDataset(utils.PyDataset):
            def __init__(self, infinite=False, **kwargs):
                super().__init__(**kwargs)
                self.infinite = infinite

            @property
            def num_batches(self):
                return None if self.infinite else 20

            def __getitem__(self, idx):
                return np.ones((5, 4), np.float32), np.zeros((5, 3), np.float32)

        model = example_model()
        model.compile(
            optimizer=optimizers.SGD(),
            loss=losses.MeanSquaredError(),
            metrics=[metrics.MeanSquaredError()],
        )
        history = model.fit(TestPyDataset(**dataset_kwargs), epochs=3, verbose=0, **fit_kwargs)
        assert int(model.optimizer.iterations) == 60
        # SGD(0.01) on 16 w^2: w -= 0.01 * 8 w / 3
        w, per_epoch = 1.0, []
        for _ in range(3):
            seen = []
            for _ in range(20):
                seen.append(16 * w * w)
                w -= 0.01 * 8 * w / 3
            per_epoch.append(np.mean(seen))
        all_close(history.history["loss"], per_epoch, rtol=1e-5)
