"""Issue 22's losses and metrics against live Keras 3 (PyTorch backend) on random inputs.

Marked ``keras``; skipped with the reason when keras or torch is missing (see
``test_live_keras.py``). Both compute in float32: losses to rtol 1e-5, metrics (counts in
float64 here, float32 in Keras) to 1e-5."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import losses, metrics

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()


def knp(t):
    return np.asarray(KERAS.ops.convert_to_numpy(t), dtype=np.float64)


R = np.random.default_rng(2026)
N, C = 24, 5
PROB = R.dirichlet(np.ones(C), N).astype(np.float32)
ONEHOT = np.eye(C, dtype=np.float32)[R.integers(0, C, N)]
REG_T = R.normal(size=(N, C)).astype(np.float32)
REG_P = R.normal(size=(N, C)).astype(np.float32) * 2
BIN_T = (R.random((N, C)) < 0.4).astype(np.float32)
SW = R.uniform(0.1, 2.0, N).astype(np.float32)


@pytest.mark.parametrize(
    "name, kwargs, y_true, y_pred",
    [
        ("Huber", {"delta": 0.7}, REG_T, REG_P),
        ("LogCosh", {}, REG_T, REG_P),
        ("KLDivergence", {}, PROB[::-1].copy(), PROB),
        ("Poisson", {}, np.abs(REG_T), np.abs(REG_P) + 0.1),
        ("CosineSimilarity", {}, REG_T, REG_P),
        ("Hinge", {}, BIN_T, REG_P),
        ("Hinge", {}, np.sign(REG_T), REG_P),
        ("SquaredHinge", {}, BIN_T, REG_P),
        ("CategoricalHinge", {}, ONEHOT, REG_P),
        ("CategoricalFocalCrossentropy", {}, ONEHOT, PROB),
        (
            "CategoricalFocalCrossentropy",
            {"from_logits": True, "gamma": 1.3, "alpha": 0.4, "label_smoothing": 0.1},
            ONEHOT,
            REG_P,
        ),
        ("BinaryFocalCrossentropy", {"apply_class_balancing": True, "gamma": 2.5}, BIN_T, PROB),
        ("BinaryFocalCrossentropy", {"from_logits": True, "label_smoothing": 0.2}, BIN_T, REG_P),
    ],
)
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", None])
def test_losses_match_keras(name, kwargs, y_true, y_pred, reduction):
    ours = getattr(losses, name)(reduction=reduction, **kwargs)
    theirs = getattr(KERAS.losses, name)(reduction=reduction, **kwargs)
    for sw in (None, SW):
        a = np.asarray(ours(y_true, ml.tensor(y_pred), sample_weight=sw), np.float64)
        b = knp(theirs(y_true, y_pred, sample_weight=sw))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def _both(make, *batches):
    ours, theirs = make(metrics), make(KERAS.metrics)
    for batch in batches:
        ours.update_state(*batch)
        theirs.update_state(*batch)
    return np.asarray(ours.result(), np.float64), knp(theirs.result())


SCORES = R.random((N, C)).astype(np.float32)
SCORES2 = R.random((N, C)).astype(np.float32)


@pytest.mark.parametrize(
    "make",
    [
        lambda M: M.Precision(),
        lambda M: M.Precision(thresholds=[0.1, 0.35, 0.8]),
        lambda M: M.Precision(top_k=2),
        lambda M: M.Precision(class_id=3, thresholds=0.4),
        lambda M: M.Recall(),
        lambda M: M.Recall(top_k=3, class_id=1),
        lambda M: M.AUC(),
        lambda M: M.AUC(curve="PR"),
        lambda M: M.AUC(num_thresholds=17, summation_method="minoring"),
        lambda M: M.AUC(curve="PR", summation_method="majoring"),
        lambda M: M.AUC(multi_label=True),
        lambda M: M.AUC(multi_label=True, label_weights=[0.1, 0.2, 0.3, 0.2, 0.2], curve="PR"),
        lambda M: M.AUC(thresholds=[0.25, 0.5, 0.6]),
        lambda M: M.F1Score(),
        lambda M: M.F1Score(average="macro", threshold=0.5),
        lambda M: M.F1Score(average="micro"),
        lambda M: M.FBetaScore(average="weighted", beta=2.0),
    ],
)
def test_confusion_metrics_match_keras(make):
    sw = SW
    a, b = _both(make, (BIN_T, SCORES), (BIN_T[::-1], SCORES2, sw))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_accuracies_match_keras(k):
    labels = ONEHOT.argmax(-1)
    a, b = _both(lambda M: M.TopKCategoricalAccuracy(k=k), (ONEHOT, SCORES), (ONEHOT, SCORES2, SW))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    a, b = _both(
        lambda M: M.SparseTopKCategoricalAccuracy(k=k), (labels, SCORES), (labels, SCORES2, SW)
    )
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mean_iou_matches_keras():
    t = R.integers(0, 4, 40)
    p = R.integers(0, 4, 40)
    a, b = _both(lambda M: M.MeanIoU(4), (t, p), (p, t))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    w = R.uniform(0, 2, 40).astype(np.float32)
    a, b = _both(lambda M: M.MeanIoU(4, dtype="float32", ignore_class=2), (t, p, w))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    s = R.random((40, 4)).astype(np.float32)
    a, b = _both(lambda M: M.MeanIoU(4, sparse_y_pred=False), (t, s))
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------ callbacks
class _Holder:
    """The model a callback sees: an optimizer and the metrics it may read."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.metrics = []
        self.stop_training = False


def _drive(cb, model, values, key="val_loss"):
    cb.set_model(model)
    cb.on_train_begin({})
    rates, logs_seen = [], []
    for epoch, v in enumerate(values):
        logs = {"loss": float(v) + 1.0, key: float(v)}
        cb.on_epoch_begin(epoch, {})
        cb.on_epoch_end(epoch, logs)
        rates.append(float(np.asarray(KERAS.ops.convert_to_numpy(model.optimizer.learning_rate))))
        logs_seen.append(dict(logs))
    cb.on_train_end({})
    return rates, logs_seen


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 1, "factor": 0.5},
        {"patience": 2, "factor": 0.1, "cooldown": 1, "min_lr": 1e-3},
        {"patience": 0, "factor": 0.3, "min_delta": 0.05, "mode": "min"},
        {"patience": 1, "factor": 0.5, "mode": "max", "monitor": "val_acc"},
    ],
)
def test_reduce_lr_on_plateau_rates_match_keras(kwargs):
    from metalearn.keras import callbacks, optimizers

    values = [1.0, 0.9, 0.95, 0.93, 0.97, 0.5, 0.6, 0.6, 0.61, 0.4, 0.45, 0.45, 0.44, 0.46]
    key = kwargs.get("monitor", "val_loss")
    ours, our_logs = _drive(
        callbacks.ReduceLROnPlateau(**kwargs), _Holder(optimizers.SGD(0.1)), values, key
    )
    theirs, their_logs = _drive(
        KERAS.callbacks.ReduceLROnPlateau(**kwargs), _Holder(KERAS.optimizers.SGD(0.1)), values, key
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(
        [l["learning_rate"] for l in our_logs], [l["learning_rate"] for l in their_logs], rtol=1e-6
    )


def test_csv_logger_file_matches_keras(tmp_path):
    from metalearn.keras import callbacks

    rows = [
        {"loss": 0.5, "acc": 0.25},
        {"loss": 0.25, "acc": 0.5, "val_loss": 0.75},
        {"loss": 0.125, "acc": np.float32(0.75), "f1": np.array([0.5, 0.25])},
    ]
    files = []
    for lib in (callbacks, KERAS.callbacks):
        for append in (False, True):
            path = tmp_path / f"{lib.__name__}.csv"
            cb = lib.CSVLogger(str(path), separator=";", append=append)
            cb.set_model(_Holder(None))
            cb.on_train_begin({})
            for epoch, logs in enumerate(rows):
                cb.on_epoch_end(epoch, dict(logs))
            cb.on_train_end({})
        files.append(path.read_text())
    assert files[0] == files[1]
