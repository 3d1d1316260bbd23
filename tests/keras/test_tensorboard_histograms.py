"""TensorBoard weight histograms (``histogram_freq``), read back by a minimal protobuf
reader written here from the wire format (independent of the writer: CRC-32C bit by bit,
varints, packed doubles) and, where the tensorboard package is installed, by TensorBoard's
own loader and its conversion to ``[left, right, count]`` rows. Buckets are checked
against NumPy's ``histogram`` over the same 30 equal-width bins (TensorBoard's bucketing,
which Keras 3 uses through tf.summary.histogram), tags against Keras 3's
``<weight path>/histogram``."""

import os
import struct

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import callbacks, layers, models
from metalearn.keras.tensorboard import EventFileWriter, histogram_buckets
from tests.keras_conformance.test_callbacks_extended import _fields, read_records


def read_histograms(path):
    """[(step, tag, {min, max, num, sum, sum_squares, bucket_limit, bucket})]."""
    out = []
    for rec in read_records(path):
        step, summary = 0, None
        for num, wt, val in _fields(rec):
            if num == 2 and wt == 0:
                step = val
            elif num == 5 and wt == 2:
                summary = val
        if summary is None:
            continue
        for _, _, value in _fields(summary):
            tag, histo = None, None
            for n, w, v in _fields(value):
                if n == 1:
                    tag = v.decode()
                elif n == 5 and w == 2:
                    histo = {}
                    for hn, hw, hv in _fields(v):
                        name = {1: "min", 2: "max", 3: "num", 4: "sum", 5: "sum_squares"}.get(hn)
                        if name:
                            assert hw == 1
                            histo[name] = struct.unpack("<d", hv)[0]
                        elif hn in (6, 7):
                            assert hw == 2  # packed
                            key = "bucket_limit" if hn == 6 else "bucket"
                            histo[key] = list(struct.unpack(f"<{len(hv) // 8}d", hv))
            if histo is not None:
                out.append((step, tag, histo))
    return out


def check_histo(histo, values):
    v = np.asarray(values, np.float64).ravel()
    counts, edges = np.histogram(v, bins=30, range=(v.min(), v.max()))
    assert histo["min"] == v.min() and histo["max"] == v.max() and histo["num"] == v.size
    np.testing.assert_allclose(histo["sum"], v.sum(), rtol=1e-12)
    np.testing.assert_allclose(histo["sum_squares"], (v * v).sum(), rtol=1e-12)
    np.testing.assert_array_equal(histo["bucket"], counts)
    np.testing.assert_allclose(histo["bucket_limit"], edges[1:], rtol=1e-12, atol=1e-15)
    assert histo["bucket_limit"][-1] == v.max()


def test_buckets_are_numpy_histograms_and_edge_cases(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((7, 13)).astype(np.float32)
    w = EventFileWriter(str(tmp_path))
    w.histogram("a/histogram", values, 3)
    w.histogram("same", np.full(5, 2.5, np.float32), 4)
    w.histogram("nan", np.array([1.0, np.nan, 3.0, np.inf], np.float32), 5)
    w.close()
    (step, tag, h), same, nan = read_histograms(w.path)
    assert (step, tag) == (3, "a/histogram")
    check_histo(h, values)
    # one value: every edge at it, the count in the last bucket (TensorBoard's rule)
    assert same[2]["bucket"] == [0.0] * 29 + [5.0] and set(same[2]["bucket_limit"]) == {2.5}
    # non-finite values have no bucket: left out
    check_histo(nan[2], [1.0, 3.0])
    left, right, counts = histogram_buckets(np.arange(10.0), 3)
    np.testing.assert_allclose(left, [0, 3, 6]) and np.testing.assert_allclose(right, [3, 6, 9])
    assert counts.tolist() == [3, 3, 4]  # the maximum in the last bucket
    with pytest.raises(ValueError, match="buckets"):
        EventFileWriter(str(tmp_path)).histogram("x", values, 0, buckets=0)


def _model():
    ml.random.set_seed(0)
    m = models.Sequential(
        [layers.Input((4,)), layers.Dense(3, name="d1"), layers.Dense(1, name="d2")],
        name="seq",
    )
    m.compile("sgd", "mse")
    return m


X, Y = (
    np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32),
    np.ones((16, 1), np.float32),
)


class _Snap(callbacks.Callback):
    """The weights at each epoch end, before TensorBoard (listed after it) reads them."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def on_epoch_end(self, epoch, logs=None):
        self.seen[epoch] = [w.copy() for w in self.model.get_weights()]


def test_fit_writes_weight_histograms_every_n_epochs(tmp_path):
    m, snap = _model(), _Snap()
    tb = callbacks.TensorBoard(str(tmp_path), histogram_freq=2)
    m.fit(X, Y, batch_size=8, epochs=5, callbacks=[snap, tb], verbose=0)
    (path,) = [os.path.join(d, n) for d, _, ns in os.walk(tmp_path / "train") for n in ns]
    got = read_histograms(path)
    tags = ["seq/d1/kernel/histogram", "seq/d1/bias/histogram"]
    tags += ["seq/d2/kernel/histogram", "seq/d2/bias/histogram"]
    assert [(s, t) for s, t, _ in got] == [(e, t) for e in (0, 2, 4) for t in tags]
    for step, _, histo in got[::4]:  # each epoch's first kernel: that epoch's values
        check_histo(histo, snap.seen[step][0])
    # the scalars are still there, and no histogram without histogram_freq
    m2 = _model()
    m2.fit(X, Y, epochs=1, callbacks=[callbacks.TensorBoard(str(tmp_path / "none"))], verbose=0)
    (p2,) = [os.path.join(d, n) for d, _, ns in os.walk(tmp_path / "none") for n in ns]
    assert read_histograms(p2) == []


def test_functional_tags_have_no_model_prefix(tmp_path):
    inp = layers.Input((4,))
    m = models.Model(inp, layers.Dense(1, name="out")(inp))
    m.compile("sgd", "mse")
    m.fit(
        X,
        Y,
        epochs=1,
        callbacks=[callbacks.TensorBoard(str(tmp_path), histogram_freq=1)],
        verbose=0,
    )
    (path,) = [os.path.join(d, n) for d, _, ns in os.walk(tmp_path / "train") for n in ns]
    assert [t for _, t, _ in read_histograms(path)] == [
        "out/kernel/histogram",
        "out/bias/histogram",
    ]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_histogram_freq(tmp_path, bad):
    with pytest.raises(ValueError, match="histogram_freq"):
        callbacks.TensorBoard(str(tmp_path), histogram_freq=bad)


def test_tensorboard_reads_our_histograms(tmp_path):
    """TensorBoard's own loader and its legacy-histogram conversion (data_compat), where
    the tensorboard package is installed (the default test run does not need it)."""
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    from tensorboard import data_compat
    from tensorboard.util import tensor_util

    values = np.random.default_rng(2).standard_normal(50)
    w = EventFileWriter(str(tmp_path))
    w.histogram("w/histogram", values, 7)
    w.close()
    events = [e for e in loader.EventFileLoader(w.path).Load() if e.HasField("summary")]
    (event,) = events
    assert event.step == 7 and event.summary.value[0].tag == "w/histogram"
    (value,) = data_compat.migrate_event(event).summary.value
    assert value.metadata.plugin_data.plugin_name == "histograms"
    rows = tensor_util.make_ndarray(value.tensor)
    counts, edges = np.histogram(values, bins=30, range=(values.min(), values.max()))
    assert rows.shape == (30, 3)
    np.testing.assert_allclose(rows[:, 0], edges[:-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rows[:, 1], edges[1:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rows[:, 2], counts)
