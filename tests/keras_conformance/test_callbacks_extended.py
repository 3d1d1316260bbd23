"""Issue 22's callbacks against Keras 3's tests: ReduceLROnPlateau, LearningRateScheduler,
CSVLogger, BackupAndRestore, TensorBoard.

Sources (keras-team/keras ``keras/src/callbacks/``): ``reduce_lr_on_plateau_test.py``,
``learning_rate_scheduler_test.py``, ``csv_logger_test.py``, ``backup_and_restore_test.py``
(its CanaryLayer counts calls; here the optimizer's ``iterations``, restored with the
backup, counts the same training steps) and ``tensorboard_test.py`` (the scalar tags and
the folder each lands in). TensorBoard's files are read by a reader written here from the
TFRecord and protobuf specifications, sharing no code with the writer."""

import csv
import io
import os
import re
import struct

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import callbacks, layers, models, optimizers

from ._helpers import almost_equal


def _data(n=10, d=3, classes=2, seed=1337):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return x, y


def _model(opt):
    ml.random.set_seed(0)
    m = models.Sequential([layers.Dense(5, input_shape=(3,)), layers.Dense(2)])
    m.compile(loss="mse", optimizer=opt)
    return m


def _scheduled_optimizer():
    schedule = optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    return optimizers.Adam(schedule)


# ------------------------------------------------------------------ ReduceLROnPlateau
X, Y = _data()
XT, YT = _data(seed=7)


def test_reduces_lr_with_model_fit():
    m = _model(optimizers.Adam(0.1))
    cb = callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100)
    m.fit(X, Y, validation_data=(XT, YT), callbacks=[cb], epochs=2, verbose=0)
    almost_equal(m.optimizer.learning_rate, 0.01, 7)


def test_reduce_lr_throws_when_optimizer_has_schedule():
    m = _model(_scheduled_optimizer())
    before = m.get_weights()
    cb = callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100)
    with pytest.raises(TypeError, match="This optimizer was created with a `LearningRateSchedule`"):
        m.fit(X, Y, validation_data=(XT, YT), callbacks=[cb], epochs=2, verbose=0)
    for a, b in zip(before, m.get_weights()):  # refused before the first step
        np.testing.assert_array_equal(a, b)


def test_reduce_lr_verbose_logging(capsys):
    m = _model(optimizers.Adam(0.1))
    cb = callbacks.ReduceLROnPlateau(
        patience=1, factor=0.1, monitor="val_loss", min_delta=100, verbose=1
    )
    m.fit(X, Y, validation_data=(XT, YT), callbacks=[cb], epochs=2, verbose=0)
    assert "ReduceLROnPlateau reducing learning rate to 0.01" in capsys.readouterr().out


def test_reduce_lr_honors_min_lr_and_cooldown():
    m = _model(optimizers.Adam(0.1))
    cb = callbacks.ReduceLROnPlateau(
        patience=1, factor=0.1, monitor="val_loss", min_delta=10, min_lr=0.005
    )
    m.fit(X, Y, validation_data=(XT, YT), callbacks=[cb], epochs=4, verbose=0)
    almost_equal(m.optimizer.learning_rate, 0.005, 7)
    m = _model(optimizers.Adam(0.1))
    cb = callbacks.ReduceLROnPlateau(
        patience=1, factor=0.1, monitor="val_loss", min_delta=100, cooldown=2
    )
    m.fit(X, Y, validation_data=(XT, YT), callbacks=[cb], epochs=4, verbose=0)
    almost_equal(m.optimizer.learning_rate, 0.001, 7)  # two reductions in four epochs


def test_reduce_lr_state_reset_across_fit_calls():
    m = _model(optimizers.Adam(0.1))
    cb = callbacks.ReduceLROnPlateau(
        patience=1, factor=0.1, monitor="loss", min_delta=0, cooldown=2
    )
    cb.set_model(m)
    cb.on_train_begin()
    cb.best, cb.wait, cb.cooldown_counter = 0.5, 3, 2
    cb.on_train_begin()
    assert cb.best is None and cb.wait == 0 and cb.cooldown_counter == 0


def test_reduce_lr_factor_error():
    with pytest.raises(ValueError, match="does not support a factor >= 1.0"):
        callbacks.ReduceLROnPlateau(factor=1.0)


# ------------------------------------------------------------------ LearningRateScheduler
def test_scheduler_updates_learning_rate(capsys):
    m = _model("sgd")
    m.fit(
        X,
        Y,
        callbacks=[callbacks.LearningRateScheduler(lambda step: 1.0 / (2.0 + step), verbose=1)],
        epochs=1,
        verbose=0,
    )
    assert m.optimizer.learning_rate == 0.5
    m = _model("sgd")
    m.fit(
        X,
        Y,
        callbacks=[callbacks.LearningRateScheduler(lambda step: 1.0 / (1.0 + step), verbose=1)],
        epochs=1,
        verbose=0,
    )
    assert "LearningRateScheduler setting learning rate to 1.0" in capsys.readouterr().out


def test_schedule_dependent_on_previous_learning_rate():
    m = _model(optimizers.Adam(0.03))
    m.fit(
        X,
        Y,
        callbacks=[callbacks.LearningRateScheduler(lambda step, lr: lr / 2)],
        epochs=2,
        verbose=0,
    )
    almost_equal(m.optimizer.learning_rate, 0.03 / 4.0, 9)


def test_scheduler_throws_when_optimizer_has_schedule():
    m = _model(_scheduled_optimizer())
    with pytest.raises(TypeError, match="This optimizer was created with a `LearningRateSchedule`"):
        m.fit(
            X,
            Y,
            callbacks=[callbacks.LearningRateScheduler(lambda step, lr: lr / 2)],
            epochs=2,
            verbose=0,
        )


def test_learning_rate_in_history():
    m = _model("sgd")
    h = m.fit(
        X, Y, callbacks=[callbacks.LearningRateScheduler(lambda step, lr: 0.5)], epochs=1, verbose=0
    )
    assert type(h.history["learning_rate"][0]) is float
    assert h.history["learning_rate"][0] == 0.5


# ------------------------------------------------------------------ CSVLogger
def _csv_model():
    ml.random.set_seed(1337)
    m = models.Sequential([layers.Dense(2, activation="relu", input_shape=(3,)), layers.Dense(1)])
    m.compile(loss="mse", optimizer="sgd", metrics=["mse"])
    return m


def test_csv_logger(tmp_path):
    rng = np.random.default_rng(1337)
    x, y = rng.random((10, 3)).astype(np.float32), rng.random((10, 1)).astype(np.float32)
    xt, yt = rng.random((10, 3)).astype(np.float32), rng.random((10, 1)).astype(np.float32)
    path, sep = str(tmp_path / "log.tsv"), "\t"
    m = _csv_model()  # case 1: a new file with the separator
    m.fit(
        x,
        y,
        batch_size=4,
        validation_data=(xt, yt),
        callbacks=[callbacks.CSVLogger(path, separator=sep)],
        epochs=1,
        verbose=0,
    )
    with open(path) as f:
        assert csv.Sniffer().sniff(f.read()).delimiter == sep
    m = _csv_model()  # case 2: append, header kept once; case 3: the logger reused
    cbks = [callbacks.CSVLogger(path, separator=sep, append=True)]
    m.fit(x, y, batch_size=4, validation_data=(xt, yt), callbacks=cbks, epochs=1, verbose=0)
    m.fit(x, y, batch_size=4, validation_data=(xt, yt), callbacks=cbks, epochs=2, verbose=0)
    with open(path) as f:
        lines = f.readlines()
    assert all(line.count(sep) == 4 for line in lines)
    assert len(lines) == 5
    assert len(re.findall("epoch", " ".join(lines))) == 1
    os.remove(path)
    m = _csv_model()  # val_loss with validation_freq > 1: NA until it runs
    hist = m.fit(
        x,
        y,
        batch_size=4,
        validation_data=(xt, yt),
        validation_freq=3,
        callbacks=[callbacks.CSVLogger(path, separator=sep)],
        epochs=5,
        verbose=0,
    )
    with open(path) as f:
        for idx, row in enumerate(csv.DictReader(f, delimiter=sep), 1):
            assert "val_loss" in row
            assert row["val_loss"] == (str(hist.history["val_loss"][0]) if idx == 3 else "NA")


def test_stop_training_csv(tmp_path):
    from metalearn.keras import initializers

    rng = np.random.default_rng(1337)
    x = rng.random((10, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 10)]
    m = models.Sequential(
        [
            layers.Dense(
                2,
                activation="relu",
                kernel_initializer=initializers.Constant(1e5),
                input_shape=(3,),
            )
        ]
        + [
            layers.Dense(2, activation="relu", kernel_initializer=initializers.Constant(1e5))
            for _ in range(4)
        ]
        + [layers.Dense(2)]
    )
    m.compile(loss="mean_squared_error", optimizer="sgd")
    path = str(tmp_path / "csv_logger.csv")
    h = m.fit(
        x,
        y,
        batch_size=4,
        validation_data=(x, y),
        callbacks=[callbacks.TerminateOnNaN(), callbacks.CSVLogger(path)],
        epochs=20,
        verbose=0,
    )
    loss = h.history["loss"]
    assert len(loss) == 1 and (np.isnan(loss[0]) or np.isinf(loss[0]))
    with open(path) as f:
        values = [r for r in csv.reader(f) if r]
    assert "nan" in values[-1] or "inf" in values[-1]


# ------------------------------------------------------------------ BackupAndRestore
class _Interrupt(callbacks.Callback):
    def __init__(self, steps_int, epoch_int):
        super().__init__()
        self.batch_count = self.epoch_count = 0
        self.steps_int, self.epoch_int = steps_int, epoch_int

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_count += 1
        if self.epoch_int is not None and self.epoch_count == self.epoch_int:
            raise RuntimeError("EpochInterruption")

    def on_batch_end(self, batch, logs=None):
        self.batch_count += 1
        if self.steps_int is not None and self.batch_count == self.steps_int:
            raise RuntimeError("StepsInterruption")


def _bar_model():
    ml.random.set_seed(0)
    m = models.Sequential([layers.Dense(1, input_shape=(3,))])
    m.compile(loss="mse", optimizer="sgd", metrics=["mse"])
    return m


BX = np.random.default_rng(0).random((10, 3)).astype(np.float32)
BY = np.random.default_rng(1).random((10, 1)).astype(np.float32)


def test_save_freq_unknown_error():
    for bad in ("batch", 0.15):
        with pytest.raises(ValueError, match="Invalid value"):
            callbacks.BackupAndRestore(backup_dir="backup_dir", save_freq=bad)
    for empty in ("", None):
        with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
            callbacks.BackupAndRestore(backup_dir=empty, save_freq="epoch")


def test_best_case_step(tmp_path):
    backup = tmp_path / "subdir"
    m, cbk = _bar_model(), callbacks.BackupAndRestore(backup, save_freq=1)
    with pytest.raises(RuntimeError, match="StepsInterruption"):
        m.fit(BX, BY, batch_size=4, callbacks=[cbk, _Interrupt(2, None)], epochs=2, verbose=0)
    assert backup.exists()
    assert (cbk._current_epoch, cbk._last_batch_seen, int(m.optimizer.iterations)) == (0, 1, 2)
    m2 = _bar_model()  # a fresh model, as after a crash
    hist = m2.fit(BX, BY, batch_size=4, callbacks=[cbk], epochs=5, verbose=0)
    assert cbk._current_epoch == 5 and hist.epoch[-1] == 4
    assert int(m2.optimizer.iterations) == 17


def test_best_case_epoch(tmp_path):
    backup = tmp_path / "subdir"
    m, cbk = _bar_model(), callbacks.BackupAndRestore(backup_dir=backup, save_freq="epoch")
    assert int(m.optimizer.iterations) == 0
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        m.fit(BX, BY, batch_size=4, callbacks=[cbk, _Interrupt(None, 2)], epochs=6, verbose=0)
    assert cbk._current_epoch == 2 and backup.exists() and int(m.optimizer.iterations) == 6
    m2 = _bar_model()
    hist = m2.fit(BX, BY, batch_size=4, callbacks=[cbk], epochs=5, verbose=0)
    assert cbk._current_epoch == 5 and hist.epoch == [2, 3, 4]
    assert int(m2.optimizer.iterations) == 5 * 3


def test_model_deleted_case_epoch(tmp_path):
    backup = tmp_path / "subdir"
    m = _bar_model()
    m.fit(BX, BY, batch_size=4, callbacks=[callbacks.BackupAndRestore(backup)], epochs=2, verbose=0)
    assert not backup.exists()


# ------------------------------------------------------------------ TensorBoard
def _crc32c_bitwise(data):
    """CRC-32C, bit by bit from its definition (Castagnoli, reflected 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path):
    """TFRecord framing: u64 length, u32 masked crc of length, data, u32 masked crc."""
    raw = open(path, "rb").read()
    f, out = io.BytesIO(raw), []
    while True:
        head = f.read(8)
        if not head:
            return out
        assert len(head) == 8, "truncated length"
        (n,) = struct.unpack("<Q", head)
        (hc,) = struct.unpack("<I", f.read(4))
        assert hc == _masked(_crc32c_bitwise(head)), "bad length crc"
        data = f.read(n)
        (dc,) = struct.unpack("<I", f.read(4))
        assert len(data) == n and dc == _masked(_crc32c_bitwise(data)), "bad data crc"
        out.append(data)


def _fields(buf):
    """Protobuf wire format: [(field number, wire type, value)]."""
    i, out = 0, []

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            out.append((num, wt, varint()))
        elif wt == 1:
            out.append((num, wt, buf[i : i + 8]))
            i += 8
        elif wt == 2:
            n = varint()
            out.append((num, wt, buf[i : i + n]))
            i += n
        elif wt == 5:
            out.append((num, wt, buf[i : i + 4]))
            i += 4
        else:
            raise AssertionError(f"wire type {wt}")
    return out


def read_events(path):
    """Each Event as {"wall_time", "step", "file_version", "scalars": [(tag, value)]}."""
    events = []
    for rec in read_records(path):
        ev = {"step": 0, "scalars": []}
        for num, wt, val in _fields(rec):
            if num == 1 and wt == 1:
                ev["wall_time"] = struct.unpack("<d", val)[0]
            elif num == 2 and wt == 0:
                ev["step"] = val
            elif num == 3 and wt == 2:
                ev["file_version"] = val.decode()
            elif num == 5 and wt == 2:  # Summary
                for vnum, vwt, value in _fields(val):
                    assert (vnum, vwt) == (1, 2)
                    tag, x = None, None
                    for n2, w2, v2 in _fields(value):
                        if n2 == 1:
                            tag = v2.decode()
                        elif n2 == 2 and w2 == 5:
                            x = struct.unpack("<f", v2)[0]
                    ev["scalars"].append((tag, x))
        events.append(ev)
    return events


def list_scalars(logdir):
    """{(folder, tag)} over every event file under `logdir`, and the events by file."""
    found, files = set(), {}
    for dirpath, _, names in os.walk(logdir):
        for name in names:
            if name.startswith("events.out."):
                evs = read_events(os.path.join(dirpath, name))
                assert evs[0]["file_version"] == "brain.Event:2"
                files[os.path.join(dirpath, name)] = evs
                for ev in evs:
                    for tag, _ in ev["scalars"]:
                        found.add((dirpath, tag))
    return found, files


def _tb_model():
    ml.random.set_seed(0)
    m = models.Sequential([layers.Flatten(input_shape=(10, 10, 1)), layers.Dense(1)])
    m.compile("sgd", "mse")
    return m


TX, TY = np.ones((10, 10, 10, 1), np.float32), np.ones((10, 1), np.float32)


def test_tensorboard_basic_and_across_invocations(tmp_path):
    logdir = str(tmp_path / "tb")
    train, val = os.path.join(logdir, "train"), os.path.join(logdir, "validation")
    expected = {
        (train, "epoch_loss"),
        (val, "epoch_loss"),
        (train, "epoch_learning_rate"),
        (val, "evaluation_loss_vs_iterations"),
    }
    m, cb = _tb_model(), callbacks.TensorBoard(logdir)
    h = m.fit(TX, TY, batch_size=2, epochs=2, validation_data=(TX, TY), callbacks=[cb], verbose=0)
    found, files = list_scalars(logdir)
    assert found == expected
    # the values and steps are the run's: epoch_loss at steps 0 and 1
    train_events = [ev for p, evs in files.items() if p.startswith(train) for ev in evs]
    losses = [(ev["step"], x) for ev in train_events for t, x in ev["scalars"] if t == "epoch_loss"]
    assert [s for s, _ in losses] == [0, 1]
    np.testing.assert_allclose([x for _, x in losses], h.history["loss"], rtol=1e-6)
    evals = [
        (ev["step"], x)
        for p, evs in files.items()
        if p.startswith(val)
        for ev in evs
        for t, x in ev["scalars"]
        if t.startswith("evaluation")
    ]
    assert [s for s, _ in evals] == [5, 10]  # the optimizer's iterations
    m.fit(TX, TY, batch_size=2, epochs=2, validation_data=(TX, TY), callbacks=[cb], verbose=0)
    assert list_scalars(logdir)[0] == expected


def test_tensorboard_no_spurious_event_files(tmp_path):
    logdir = str(tmp_path / "tb")
    _tb_model().fit(
        TX, TY, batch_size=2, epochs=2, callbacks=[callbacks.TensorBoard(logdir)], verbose=0
    )
    dirs = {
        os.path.basename(d)
        for d, _, names in os.walk(logdir)
        if any(n.startswith("events.out.") for n in names)
    }
    assert dirs == {"train"}


def test_tensorboard_batch_metrics_and_global_step(tmp_path):
    logdir = str(tmp_path / "tb")
    train, val = os.path.join(logdir, "train"), os.path.join(logdir, "validation")
    m = _tb_model()
    m.fit(
        TX,
        TY,
        batch_size=2,
        epochs=2,
        validation_data=(TX, TY),
        callbacks=[callbacks.TensorBoard(logdir, update_freq=1)],
        verbose=0,
    )
    found, files = list_scalars(logdir)
    assert found == {
        (train, "batch_loss"),
        (train, "epoch_loss"),
        (val, "epoch_loss"),
        (train, "epoch_learning_rate"),
        (val, "evaluation_loss_vs_iterations"),
    }
    steps = [
        ev["step"]
        for evs in files.values()
        for ev in evs
        for t, _ in ev["scalars"]
        if t == "batch_loss"
    ]
    assert steps == list(range(1, 11))  # the global batch count
    logdir2 = str(tmp_path / "tb2")
    train2 = os.path.join(logdir2, "train")
    cb = callbacks.TensorBoard(logdir2, update_freq=1, profile_batch=0, write_steps_per_second=True)
    _tb_model().fit(TX, TY, batch_size=2, epochs=2, callbacks=[cb], verbose=0)
    assert list_scalars(logdir2)[0] == {
        (train2, "batch_loss"),
        (train2, "epoch_loss"),
        (train2, "epoch_learning_rate"),
        (train2, "epoch_steps_per_second"),
        (train2, "batch_steps_per_second"),
    }


def test_tensorboard_event_file_loader_reads_our_files(tmp_path):
    """TensorBoard's own reader, where the tensorboard package is installed (the
    default test run does not need it)."""
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    logdir = str(tmp_path / "tb")
    h = _tb_model().fit(
        TX, TY, batch_size=2, epochs=3, callbacks=[callbacks.TensorBoard(logdir)], verbose=0
    )
    (path,) = [os.path.join(d, n) for d, _, names in os.walk(logdir) for n in names]
    got = []
    for ev in loader.EventFileLoader(path).Load():
        for v in ev.summary.value:
            if v.tag == "epoch_loss":
                got.append(
                    (
                        ev.step,
                        v.simple_value
                        if v.HasField("simple_value")
                        else float(v.tensor.float_val[0]),
                    )
                )
    assert [s for s, _ in got] == [0, 1, 2]
    np.testing.assert_allclose([x for _, x in got], h.history["loss"], rtol=1e-6)
