"""Callbacks: History, EarlyStopping, ModelCheckpoint, LambdaCallback."""

import warnings

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

    stop = callbacks.EarlyStopping(
        monitor="val_score", mode="max", patience=2, restore_best_weights=True
    )
    hist = model.fit(
        x, y, epochs=7, verbose=0, callbacks=[callbacks.LambdaCallback(on_epoch_end=inject), stop]
    )
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

    # mode given: in "auto" Keras 3 cannot place a quantity no metric declares
    ckpt = callbacks.ModelCheckpoint(
        str(tmp_path / "ck-{epoch:02d}.weights"),
        monitor="val_fake",
        save_best_only=True,
        mode="min",
    )
    model.fit(
        x, y, epochs=4, verbose=0, callbacks=[callbacks.LambdaCallback(on_epoch_end=record), ckpt]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ck-01.weights",
        "ck-02.weights",
        "ck-04.weights",
    ]
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
        on_train_end=lambda logs: counts.__setitem__("end", counts["end"] + 1),
    )
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


class _EpochWeights:
    """A stand-in model whose 'weights' are the epoch number, as in Keras 3's
    early_stopping_test (test_early_stopping_final_weights_when_restoring_model_weights)."""

    def __init__(self):
        self.stop_training = False
        self.weights = -1

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


def _run_early_stopping(stop, losses, stop_at=None):
    stop.set_model(_EpochWeights())
    stop.on_train_begin()
    trained = 0
    for epoch, loss in enumerate(losses):
        trained += 1
        stop.model.weights = epoch
        stop.on_epoch_end(epoch, {"val_loss": loss})
        if epoch == stop_at:
            stop.model.stop_training = True  # another callback asks to stop
        if stop.model.stop_training:
            break
    stop.on_train_end()
    return trained, stop.model.get_weights()


def test_early_stopping_restores_at_the_end_of_training_as_keras_3():
    """The three cases of Keras 3's test, with its numbers: stopped by patience, no epoch
    beating the baseline, stopped by another callback: the best epoch's weights (2) every
    time. Before, only the first case restored."""
    es = lambda **kw: callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=True, **kw)
    assert _run_early_stopping(es(patience=2), [0.2, 0.15, 0.1, 0.11, 0.12]) == (5, 2)
    assert _run_early_stopping(es(patience=5, baseline=0.5), [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]) == (
        5,
        2,
    )
    assert _run_early_stopping(
        es(patience=5, baseline=0.5), [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], stop_at=3
    ) == (4, 2)
    # ran out of epochs without stopping: still the best epoch's
    assert _run_early_stopping(es(patience=10), [0.5, 0.2, 0.3, 0.4]) == (4, 1)
    # nothing monitored before start_from_epoch: no best weights, nothing restored
    assert _run_early_stopping(es(patience=10, start_from_epoch=9), [0.5, 0.2, 0.3]) == (3, 2)


def test_early_stopping_in_fit_restores_the_best_epoch_when_epochs_run_out():
    x, y = _data()
    model = _model()
    scores = [0.3, 0.1, 0.2, 0.25]
    seen = {}

    def inject(epoch, logs):
        logs["val_score"] = scores[epoch]
        seen[epoch] = model.get_weights()

    stop = callbacks.EarlyStopping(
        monitor="val_score", mode="min", patience=5, restore_best_weights=True
    )
    hist = model.fit(
        x, y, epochs=4, verbose=0, callbacks=[callbacks.LambdaCallback(on_epoch_end=inject), stop]
    )
    assert len(hist.epoch) == 4 and stop.stopped_epoch == 0 and stop.best_epoch == 1
    for a, b in zip(model.get_weights(), seen[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seen[1][0], seen[3][0])


def test_model_checkpoint_saves_when_the_monitored_value_is_missing(tmp_path):
    """Keras 3 (ModelCheckpoint._should_save_model): with save_best_only and no monitored
    value in the logs (val_loss without validation data), it warns and saves."""
    x, y = _data()
    model = _model()
    ckpt = callbacks.ModelCheckpoint(
        str(tmp_path / "ck-{epoch}.weights"), monitor="val_loss", save_best_only=True
    )
    with pytest.warns(UserWarning, match="Can save best model only with val_loss available"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck-1.weights", "ck-2.weights"]
    fresh = _model()
    fresh.load_weights(tmp_path / "ck-2.weights")
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_validation_inside_fit_calls_the_test_hooks():
    """Keras 3's fit runs validation through evaluate with fit's callbacks: on_test_begin,
    on_test_batch_begin/end per validation batch, on_test_end with the (unprefixed) logs."""

    class Recorder(callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_epoch_end(self, epoch, logs=None):
            self.events.append(("epoch_end", epoch, logs.get("val_loss")))

        def on_test_begin(self, logs=None):
            self.events.append(("test_begin",))

        def on_test_batch_begin(self, batch, logs=None):
            self.events.append(("test_batch_begin", batch))

        def on_test_batch_end(self, batch, logs=None):
            self.events.append(("test_batch_end", batch))

        def on_test_end(self, logs=None):
            self.events.append(("test_end", logs["loss"]))

    x, y = _data()
    model = _model()
    rec = Recorder()
    hist = model.fit(
        x[:30],
        y[:30],
        validation_data=(x[30:], y[30:]),
        validation_batch_size=4,
        epochs=2,
        verbose=0,
        callbacks=[rec],
    )
    val = hist.history["val_loss"]
    per_epoch = lambda e: (
        [("test_begin",)]
        + [(k, b) for b in range(3) for k in ("test_batch_begin", "test_batch_end")]
        + [("test_end", val[e]), ("epoch_end", e, val[e])]
    )
    assert rec.events == per_epoch(0) + per_epoch(1)
    # validation_freq=2: the hooks run only with the validation
    rec = Recorder()
    model.fit(
        x[:30],
        y[:30],
        validation_data=(x[30:], y[30:]),
        validation_freq=2,
        epochs=2,
        verbose=0,
        callbacks=[rec],
    )
    assert [e[0] for e in rec.events].count("test_begin") == 1


def _metric_model(metrics):
    ml.random.set_seed(0)
    model = keras.Sequential([layers.Dense(1, input_shape=(3,))])
    model.compile(keras.optimizers.SGD(0.05), "mae", metrics=metrics)
    return model


def _my_error(y_true, y_pred):
    return np.abs(np.asarray(y_true) - np.asarray(y_pred)).mean(axis=-1)


@pytest.mark.parametrize("cls", ["EarlyStopping", "ModelCheckpoint"])
@pytest.mark.parametrize(
    "monitor,metrics",
    [
        ("unknown", ["mse"]),
        ("my_error", [_my_error]),
        # the metric is named mean_squared_error: Keras 3 matches the metric's name
        ("mse", [keras.metrics.MeanSquaredError()]),
    ],
)
def test_auto_mode_refuses_a_monitor_it_cannot_place_before_the_first_step(
    cls, monitor, metrics, tmp_path
):
    """Keras 3 (monitor_callback.py::_set_monitor_op): in mode "auto" the direction comes
    from the model's metric of the monitored name; a name no metric with a direction has
    is a ValueError (Keras 3.15.1 raises for each case here). metalearn refuses it before
    the first step, so nothing trains; before, a name heuristic chose "min"."""
    x, y = _data()
    model = _metric_model(metrics)
    before = model.get_weights() if model.built else None
    cb = (
        callbacks.EarlyStopping(monitor=monitor)
        if cls == "EarlyStopping"
        else callbacks.ModelCheckpoint(str(tmp_path / "ck.weights"), monitor=monitor)
    )
    with pytest.raises(ValueError, match=f"monitor={monitor}, but it is not possible to"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert int(model.optimizer.iterations) == 0 and not list(tmp_path.iterdir())
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # a direction given explicitly is always accepted
    cb = (
        callbacks.EarlyStopping(monitor=monitor, mode="min")
        if cls == "EarlyStopping"
        else callbacks.ModelCheckpoint(str(tmp_path / "ck.weights"), monitor=monitor, mode="max")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EarlyStopping: "unknown" is not in the logs
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    assert int(model.optimizer.iterations) > 0


@pytest.mark.parametrize(
    "monitor,metrics,op",
    [
        ("loss", [], np.less),
        ("val_loss", [], np.less),
        ("val_mse", ["mse"], np.less),
        ("mean_absolute_error", [keras.metrics.MeanAbsoluteError()], np.less),
        ("acc", ["acc"], np.greater),
        ("val_accuracy", ["accuracy"], np.greater),
    ],
)
def test_auto_mode_takes_the_direction_from_the_metric(monitor, metrics, op):
    """The cases of early_stopping_test.py::test_early_stopping metalearn has metrics for:
    loss is minimised, errors ("down") too, accuracies ("up") maximised."""
    x, y = _data()
    model = _metric_model(metrics)
    stop = callbacks.EarlyStopping(monitor=monitor, patience=5)
    model.fit(
        x,
        (y > 0).astype(np.float32) if "acc" in monitor else y,
        epochs=1,
        verbose=0,
        validation_data=(x, y),
        callbacks=[stop],
    )
    assert stop.monitor_op is op


def test_auto_mode_without_model_metrics_raises_at_the_epoch_end_as_keras():
    """Driven by hand with a model that has no metrics, the direction is set at the first
    on_epoch_end (Keras 3): "loss" is known, "acc" is a ValueError there."""

    class Bare:
        stop_training = False

    stop = callbacks.EarlyStopping(monitor="val_loss")
    stop.set_model(Bare())
    stop.on_train_begin({})
    stop.on_epoch_end(0, {"val_loss": 1.0})
    assert stop.monitor_op is np.less
    stop = callbacks.EarlyStopping(monitor="acc")
    stop.set_model(Bare())
    stop.on_train_begin({})
    with pytest.raises(ValueError, match="monitor=acc"):
        stop.on_epoch_end(0, {"acc": 1.0})


# ---------------------------------------------------------------- issue 22's callbacks
import textwrap  # noqa: E402

from metalearn import checkpoint  # noqa: E402
from metalearn.keras import models, optimizers  # noqa: E402
from tests.helpers import run_script  # noqa: E402

# One fit in a fresh process, made the same way each time: Dropout and shuffling draw from
# the core's generator, Adam keeps moments, fit's step is traced (replayed from C).
# KILL_EPOCH / KILL_BATCH: SIGKILL at the end of that epoch (after the backup of it was
# written) or after that global training batch (in the middle of an epoch).
BACKUP_RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import metalearn as ml
    from metalearn.keras import callbacks, layers, models, optimizers

    backup, out, kill_epoch, kill_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ml.random.set_seed(5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(4, 2))).astype(np.float32)
    model = models.Sequential([layers.Dense(16, activation="relu", input_shape=(4,)),
                               layers.Dropout(0.3), layers.BatchNormalization(), layers.Dense(2)])
    model.compile(optimizer=optimizers.Adam(0.01), loss="mse")
    seen = [0]

    class Kill(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == kill_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_train_batch_end(self, batch, logs=None):
            seen[0] += 1
            if seen[0] == kill_batch:
                os.kill(os.getpid(), signal.SIGKILL)

    # (no ReduceLROnPlateau here: a callback's own counters are not backed up, in Keras
    # either, so a resumed one would reduce at other epochs)
    cbs = [callbacks.BackupAndRestore(backup), Kill()]
    h = model.fit(x, y, batch_size=8, epochs=6, shuffle=True, callbacks=cbs, verbose=0)
    tail = np.asarray(ml.random.uniform((4,)))  # the generator ended in the same place
    with open(out, "wb") as f:
        for w in model.weights:
            f.write(np.asarray(w).tobytes())
        for v in model.optimizer.variables():
            f.write(np.asarray(v).tobytes())
        f.write(np.asarray([model.optimizer.learning_rate, int(model.optimizer.iterations)]).tobytes())
        f.write(tail.tobytes())
    with open(out + ".epochs", "w") as f:
        f.write(" ".join(map(str, h.epoch)))
    """
)


def _run_backup(tmp_path, backup, out, kill_epoch=-1, kill_batch=-1, expect_kill=False):
    args = (backup, out, kill_epoch, kill_batch)
    return run_script(tmp_path, BACKUP_RUNNER, args, expect_kill=expect_kill)


@pytest.mark.parametrize("kill", [{"kill_epoch": 2}, {"kill_batch": 18}])
def test_backup_and_restore_after_sigkill_ends_with_the_bits_of_an_uninterrupted_run(
    tmp_path, kill
):
    """fit with BackupAndRestore killed by SIGKILL (at an epoch's end, or in the middle of
    epoch 3) and started again in a new process ends with the same weights, moving
    statistics, Adam moments, learning rate, step count and generator state as a run
    never interrupted; the backup is removed at the end."""
    _run_backup(tmp_path, tmp_path / "ref_backup", tmp_path / "ref.bin")
    assert not (tmp_path / "ref_backup").exists()
    backup = tmp_path / "backup"
    _run_backup(tmp_path, backup, tmp_path / "x.bin", expect_kill=True, **kill)
    assert checkpoint.exists(backup)  # a whole backup was left
    _run_backup(tmp_path, backup, tmp_path / "resumed.bin")
    ref, got = (tmp_path / "ref.bin").read_bytes(), (tmp_path / "resumed.bin").read_bytes()
    assert len(ref) == len(got) and ref == got
    assert (tmp_path / "ref.bin.epochs").read_text() == "0 1 2 3 4 5"
    # the last backup: the end of epoch 2, or of epoch 1 (batch 18 is the 4th of epoch 2)
    resumed_from = 3 if "kill_epoch" in kill else 2
    expected = " ".join(map(str, range(resumed_from, 6)))
    assert (tmp_path / "resumed.bin.epochs").read_text() == expected
    assert not backup.exists()


def _fit_model(seed=0):
    ml.random.set_seed(seed)
    m = models.Sequential([layers.Dense(4, input_shape=(3,)), layers.Dense(1)])
    m.compile(optimizer=optimizers.Adam(0.05), loss="mse")
    return m


def _assert_unchanged(model, before, lr, iterations):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.learning_rate == lr
    assert int(model.optimizer.iterations) == iterations


def test_new_callbacks_refuse_bad_input_before_the_first_step(tmp_path):
    x, y = _data()
    m = _fit_model()
    before = m.get_weights()
    bad = tmp_path / "not_a_dir"
    bad.write_text("x")
    cases = [
        (callbacks.ReduceLROnPlateau(monitor="val_bogus"), ValueError, "automatically determine"),
        (callbacks.CSVLogger(str(bad / "log.csv")), OSError, "not_a_dir"),
        (callbacks.TensorBoard(str(bad)), OSError, "not_a_dir"),
    ]
    for cb, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            m.fit(x, y, epochs=2, verbose=0, callbacks=[cb], validation_split=0.2)
        _assert_unchanged(m, before, 0.05, 0)
    assert not (bad / "log.csv").exists()
    with pytest.warns(UserWarning, match="mode 'bogus' is unknown"):
        assert callbacks.ReduceLROnPlateau(mode="bogus").mode == "auto"
    for kwargs, match in (
        ({"factor": 1.5}, "factor >= 1.0"),
        ({"factor": -0.1}, "factor must be >= 0"),
        ({"min_lr": -1.0}, "min_lr"),
        ({"patience": -1}, "patience"),
    ):
        with pytest.raises(ValueError, match=match):
            callbacks.ReduceLROnPlateau(**kwargs)
    with pytest.raises(TypeError, match="unexpected arguments"):
        callbacks.ReduceLROnPlateau(paitence=2)
    with pytest.raises(ValueError, match="separator"):
        callbacks.CSVLogger("x.csv", separator=";;")
    with pytest.raises(ValueError, match="histogram_freq"):
        callbacks.TensorBoard(str(tmp_path), histogram_freq=-1)
    with pytest.raises(ValueError, match="update_freq"):
        callbacks.TensorBoard(str(tmp_path), update_freq=0)
    with pytest.raises(TypeError, match="callable"):
        callbacks.LearningRateScheduler(0.1)


def test_learning_rate_scheduler_bad_output_keeps_the_rate():
    x, y = _data()
    m = _fit_model()
    before = m.get_weights()
    for schedule, exc, msg in (
        (lambda epoch: 1, ValueError, "should be a float"),
        (lambda epoch: -0.5, ValueError, "non-negative"),
        (lambda epoch: float("nan"), ValueError, "finite"),
    ):
        with pytest.raises(exc, match=msg):
            m.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.LearningRateScheduler(schedule)])
        _assert_unchanged(m, before, 0.05, 0)


def test_backup_of_another_model_or_a_corrupt_one_is_refused_and_changes_nothing(tmp_path):
    x, y = _data()
    backup = tmp_path / "b"
    m = _fit_model()
    m.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[callbacks.BackupAndRestore(backup, delete_checkpoint=False)],
    )
    assert checkpoint.exists(backup)
    ml.random.set_seed(1)
    other = models.Sequential([layers.Dense(5, input_shape=(3,)), layers.Dense(1)])
    other.compile(optimizer=optimizers.Adam(0.05), loss="mse")
    before = other.get_weights()
    state = ml.random.get_state()
    with pytest.raises(checkpoint.CheckpointError, match="weights"):
        other.fit(x, y, epochs=3, verbose=0, callbacks=[callbacks.BackupAndRestore(backup)])
    _assert_unchanged(other, before, 0.05, 0)
    assert ml.random.get_state() == state
    # a corrupt tensor file: refused by its checksum, nothing restored
    (tensors,) = [p for p in backup.iterdir() if p.suffix == ".mlw"]
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0xFF
    tensors.write_bytes(bytes(data))
    m2 = _fit_model(seed=3)
    before = m2.get_weights()
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        m2.fit(x, y, epochs=3, verbose=0, callbacks=[callbacks.BackupAndRestore(backup)])
    _assert_unchanged(m2, before, 0.05, 0)


def test_backup_keeps_files_that_are_not_its_own_and_restores_the_learning_rate(tmp_path):
    """delete_checkpoint removes the checkpoint's files only; a resumed run takes the
    learning rate ReduceLROnPlateau had set (the optimizer's state is restored)."""
    x, y = _data()
    backup = tmp_path / "b"
    backup.mkdir()
    (backup / "notes.txt").write_text("mine")
    m = _fit_model()
    reduce = callbacks.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=1e9)

    class Stop(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        m.fit(
            x,
            y,
            epochs=4,
            verbose=0,
            callbacks=[reduce, callbacks.BackupAndRestore(backup), Stop()],
        )
    m2 = _fit_model(seed=9)
    h = m2.fit(x, y, epochs=3, verbose=0, callbacks=[callbacks.BackupAndRestore(backup)])
    assert h.epoch == [2]
    assert m2.optimizer.learning_rate == pytest.approx(0.05 * 0.5)
    assert sorted(p.name for p in backup.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("eager", [False, True])
def test_learning_rate_callbacks_reach_the_traced_step(eager):
    """The rate a callback sets between epochs is the one the next epoch's steps use, in
    the traced step replayed from C as in the eager one: a rate of 0 leaves the weights
    as they were, and the traced and eager runs end with the same weights."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.normal(size=(40, 2)).astype(np.float32)
    ml.random.set_seed(0)
    m = models.Sequential([layers.Dense(2, input_shape=(3,))])
    m.compile(optimizer=optimizers.SGD(0.1), loss="mse", run_eagerly=eager)
    seen = []
    record = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(m.get_weights()))
    sched = callbacks.LearningRateScheduler(lambda e, lr: [0.1, 0.0, 0.05][e])
    h = m.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False, callbacks=[sched, record])
    assert h.history["learning_rate"] == [0.1, 0.0, 0.05]
    for a, b in zip(seen[0], seen[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seen[1][0], seen[2][0])
    # SGD by hand from epoch 1's weights at rate 0.05 (float64; the batches in order)
    w, b = [v.astype(np.float64) for v in seen[1]]
    for i in range(0, 40, 8):
        xb, yb = x[i : i + 8].astype(np.float64), y[i : i + 8].astype(np.float64)
        g = 2.0 * (xb @ w + b - yb) / yb.size
        w, b = w - 0.05 * xb.T @ g, b - 0.05 * g.sum(0)
    np.testing.assert_allclose(seen[2][0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[2][1], b, rtol=1e-5, atol=1e-6)
