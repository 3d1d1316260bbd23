"""Keras 3 conformance of the metrics added for issue 22: Precision, Recall, AUC,
TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, FBetaScore/F1Score, MeanIoU (and
MeanSquaredError/MeanAbsoluteError). Expected values come from keras-team/keras
``keras/src/metrics/{confusion,f_score,iou,accuracy,regression}_metrics_test.py``, cited
by test class and name."""

import json

import numpy as np
import pytest

from metalearn.keras import metrics

from ._helpers import all_close, almost_equal


def call(m, *args, **kwargs):
    m.update_state(*args, **kwargs)
    return m.result()


# ------------------------------------------------------------------ PrecisionTest
def test_precision_config():
    p = metrics.Precision(name="my_precision", thresholds=[0.4, 0.9], top_k=15, class_id=12)
    assert (p.name, p.thresholds, p.top_k, p.class_id) == ("my_precision", [0.4, 0.9], 15, 12)
    p2 = metrics.Precision.from_config(p.get_config())
    assert (p2.name, p2.thresholds, p2.top_k, p2.class_id) == ("my_precision", [0.4, 0.9], 15, 12)
    assert metrics.Precision().get_config() == {  # as Keras 3.15.1 writes it
        "name": "precision",
        "dtype": "float32",
        "thresholds": None,
        "top_k": None,
        "class_id": None,
    }


def test_precision_values():
    almost_equal(call(metrics.Precision(), [0, 1, 1, 0], [1, 0, 1, 0]), 0.5)  # test_unweighted
    inputs = np.random.default_rng(0).integers(0, 2, size=(100, 1))
    almost_equal(call(metrics.Precision(thresholds=[0.5]), 1 - inputs, inputs), 0)
    almost_equal(  # test_weighted
        call(
            metrics.Precision(),
            np.array([[0, 1, 1, 0], [1, 0, 0, 1]]),
            np.array([[1, 0, 1, 0], [1, 0, 1, 0]]),
            sample_weight=np.array([[1, 2, 3, 4], [4, 3, 2, 1]]),
        ),
        7.0 / 10.0,
    )
    assert call(metrics.Precision(), [0, 0, 0, 0], [0, 0, 0, 0]) == 0  # test_div_by_zero
    almost_equal(  # test_unweighted_with_threshold
        call(metrics.Precision(thresholds=[0.5, 0.7]), [0, 1, 1, 0], [1, 0, 0.6, 0]), [0.5, 0.0], 0
    )
    yt, yp = np.array([[0, 1], [1, 0]]), np.array([[1, 0], [0.6, 0]], np.float32)
    w = np.array([[4, 0], [3, 1]], np.float32)
    almost_equal(
        call(metrics.Precision(thresholds=[0.5, 1.0]), yt, yp, sample_weight=w), [3 / 7, 0]
    )
    m = metrics.Precision(thresholds=[0.5, 1.0])  # test_multiple_updates
    for _ in range(2):
        m.update_state(yt, yp, sample_weight=w)
    almost_equal(m.result(), [6 / 14, 0])


def test_precision_top_k_and_class_id():
    almost_equal(  # test_unweighted_top_k
        call(metrics.Precision(top_k=3), [0, 1, 1, 0, 0], [0.2, 0.1, 0.5, 0, 0.2]), 1.0 / 3
    )
    p = metrics.Precision(top_k=3)  # test_weighted_top_k
    p.update_state(
        np.array([[0, 1, 1, 0, 1]]),
        np.array([[0.2, 0.1, 0.4, 0, 0.2]]),
        sample_weight=np.array([[1, 4, 2, 3, 5]]),
    )
    r = call(p, [1, 0, 1, 1, 1], [0.2, 0.6, 0.4, 0.2, 0.2], sample_weight=np.array(3))
    almost_equal(r, 13 / 17)
    with pytest.raises(ValueError, match=r"When class_id is provided, y_pred must be a 2D array"):
        call(metrics.Precision(class_id=2), [0, 1, 1, 0, 0], [0.2, 0.1, 0.6, 0, 0.2])
    yp = np.array(
        [[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    )
    yt = np.eye(3)[[2, 0, 1, 0, 2]]
    p = metrics.Precision(class_id=1)  # test_unweighted_class_id_multiclass
    almost_equal(call(p, yt, yp), 1.0)
    almost_equal(p.true_positives, [1.0])
    almost_equal(p.false_positives, [0.0])
    p = metrics.Precision(thresholds=0.7, top_k=2)  # test_unweighted_top_k_and_threshold
    almost_equal(call(p, [0, 1, 1, 0, 1], [0.2, 0.8, 0.6, 0, 0.2]), 1)
    almost_equal(p.true_positives, [1])
    almost_equal(p.false_positives, [0])


# ------------------------------------------------------------------ RecallTest
def test_recall_values():
    almost_equal(call(metrics.Recall(), [0, 1, 1, 0], [1, 0, 1, 0]), 0.5)  # test_unweighted
    almost_equal(  # test_weighted
        call(
            metrics.Recall(),
            np.array([[0, 1, 1, 0], [0, 1, 1, 0]]),
            np.array([[1, 0, 1, 0], [0, 1, 0, 1]]),
            sample_weight=np.array([[1, 2, 3, 4], [4, 3, 2, 1]]),
        ),
        (3.0 + 3.0) / ((2.0 + 3.0) + (3.0 + 2.0)),
    )
    assert call(metrics.Recall(), [0, 0, 0, 0], [0, 0, 0, 0]) == 0  # test_div_by_zero
    almost_equal(  # test_unweighted_with_threshold
        call(metrics.Recall(thresholds=[0.5, 0.7]), [1, 1, 1, 1], [1, 0, 0.6, 0]), [0.5, 0.0], 0
    )
    yt, yp = np.array([[0, 1], [1, 0]]), np.array([[1, 0], [0.6, 0]], np.float32)
    w = np.array([[1, 4], [3, 2]], np.float32)
    almost_equal(call(metrics.Recall(thresholds=[0.5, 1.0]), yt, yp, sample_weight=w), [3 / 7, 0])
    almost_equal(  # test_unweighted_top_k
        call(metrics.Recall(top_k=3), [0, 1, 1, 0, 0], [0.2, 0.1, 0.5, 0, 0.2]), 0.5
    )
    r = metrics.Recall(top_k=3)  # test_weighted_top_k
    r.update_state(
        np.array([[0, 1, 1, 0, 1]]),
        np.array([[0.2, 0.1, 0.4, 0, 0.2]]),
        sample_weight=np.array([[1, 4, 2, 3, 5]]),
    )
    res = call(r, [1, 0, 1, 1, 1], [0.2, 0.6, 0.4, 0.2, 0.2], sample_weight=np.array(3))
    almost_equal(res, (2 + 5 + 3 + 3) / ((4 + 2 + 5) + (3 + 3 + 3 + 3)))
    r = metrics.Recall(thresholds=0.7, top_k=2)  # test_unweighted_top_k_and_threshold
    almost_equal(call(r, [1, 1, 1, 0, 1], [0.2, 0.8, 0.6, 0, 0.2]), 0.25)
    almost_equal(r.true_positives, [1])
    almost_equal(r.false_negatives, [3])


# ------------------------------------------------------------------ AUCTest
Y_PRED = np.array([0, 0.5, 0.3, 0.9], np.float32)
Y_TRUE = np.array([0, 0, 1, 1])
SW = [1, 2, 3, 4]


def test_auc_binary():
    assert call(metrics.AUC(), Y_TRUE, Y_TRUE) == 1  # test_unweighted_all_correct
    all_close(call(metrics.AUC(num_thresholds=3), Y_TRUE, Y_PRED), 0.75, 1e-3)
    logits = -np.log(1.0 / (Y_PRED.astype(np.float64) + 1e-12) - 1.0)
    all_close(call(metrics.AUC(num_thresholds=3, from_logits=True), Y_TRUE, logits), 0.75, 1e-3)
    a = metrics.AUC(num_thresholds=2, thresholds=[0.5])  # test_manual_thresholds
    assert a.num_thresholds == 3
    all_close(a.thresholds, [0.0, 0.5, 1.0])
    all_close(call(a, Y_TRUE, Y_PRED), 0.75, 1e-3)
    cases = [  # test_weighted_*: (curve, summation, expected)
        ("ROC", "interpolation", 0.7855),
        ("ROC", "majoring", 1.0),
        ("ROC", "minoring", 0.571),
        ("PR", "majoring", 0.429 + 0.571),
        ("PR", "minoring", 0.7 * 0.429),
        ("PR", "interpolation", 2.416 / 7 + 4 / 7),
    ]
    for curve, how, expected in cases:
        m = metrics.AUC(num_thresholds=3, curve=curve, summation_method=how)
        all_close(call(m, Y_TRUE, Y_PRED, sample_weight=SW), expected, 1e-3)
    m = metrics.AUC(num_thresholds=3, curve="PR")  # ..._negative_weights
    all_close(call(m, Y_TRUE, Y_PRED, sample_weight=[-1, -2, -3, -4]), 0.0, 1e-3)
    # test_extra_dims
    logits = 1 / (
        1 + np.exp(np.array([[[-10.0, 10, -10], [10, -10, 10]], [[-12, 12, -12], [12, -12, 12]]]))
    )
    labels = np.array([[[1, 0, 0], [1, 0, 0]], [[0, 1, 1], [0, 1, 1]]])
    assert call(metrics.AUC(), labels, logits) == 0.5


def test_auc_errors_and_config():
    for bad in (-1, 1):  # test_invalid_num_thresholds
        with pytest.raises(ValueError, match="Argument `num_thresholds` must be an integer > 1"):
            metrics.AUC(num_thresholds=bad)
    with pytest.raises(ValueError, match='Invalid AUC curve value: "Invalid".'):
        metrics.AUC(curve="Invalid")
    with pytest.raises(ValueError, match='Invalid AUC summation method value: "Invalid".'):
        metrics.AUC(summation_method="Invalid")
    assert metrics.AUC().get_config() == {  # Keras 3.15.1's AUC().get_config()
        "name": "auc",
        "dtype": "float32",
        "num_thresholds": 200,
        "curve": "ROC",
        "summation_method": "interpolation",
        "multi_label": False,
        "num_labels": None,
        "label_weights": None,
        "from_logits": False,
    }
    # AUCTest.test_config_manual_thresholds
    a = metrics.AUC(num_thresholds=2, thresholds=[0.3, 0.5], name="auc_1", curve="PR")
    c = a.get_config()
    all_close(c["thresholds"], [0.3, 0.5])
    assert c["num_thresholds"] == 4 and c["curve"] == "PR"
    a2 = metrics.AUC.from_config(json.loads(json.dumps(c)))
    assert a2.num_thresholds == 4
    all_close(a2.thresholds, [0.0, 0.3, 0.5, 1.0])


# ------------------------------------------------------------------ MultiAUCTest
M_PRED = np.array([[0, 0.5, 0.3, 0.9], [0.1, 0.2, 0.3, 0.4]], np.float32).T
M_GOOD = np.array([[0, 0, 1, 1], [0, 0, 1, 1]]).T


def test_multi_label_auc():
    assert call(metrics.AUC(multi_label=True), M_GOOD, M_GOOD) == 1
    assert call(metrics.AUC(multi_label=False), M_GOOD, M_GOOD) == 1
    all_close(call(metrics.AUC(num_thresholds=5, multi_label=True), M_GOOD, M_PRED), 0.9375, 1e-3)
    logits = -np.log(1.0 / (M_PRED.astype(np.float64) + 1e-12) - 1.0)
    m = metrics.AUC(num_thresholds=5, multi_label=True, from_logits=True)
    all_close(call(m, M_GOOD, logits), 0.9375, 1e-3)
    m = metrics.AUC(num_thresholds=5)  # test_sample_weight_flat
    all_close(call(m, M_GOOD, M_PRED, sample_weight=SW), 1.0 - 0.3333 * (1 - 0.2857) / 2, 1e-3)
    m = metrics.AUC(num_thresholds=5)  # test_full_sample_weight_flat
    sw = np.arange(8).reshape(4, 2)
    all_close(call(m, M_GOOD, M_PRED, sample_weight=sw), 1.0 - 0.3333 * (1 - 0.2727) / 2, 1e-3)
    m = metrics.AUC(num_thresholds=5, multi_label=True, label_weights=[0.75, 0.25])
    all_close(call(m, M_GOOD, M_PRED), 0.875 * 0.75 + 0.25, 1e-3)
    m = metrics.AUC(num_thresholds=5, label_weights=[0.75, 0.25])  # test_label_weights_flat
    all_close(call(m, M_GOOD, M_PRED), 1.0 - (1 - 0.375) * 0.375 / 2, 1e-2)
    all_close(call(metrics.AUC(num_thresholds=5), M_GOOD, M_PRED), 1.0 - 3.0 / 32.0, 1e-3)


# ------------------------------------------------------------------ FBetaScoreTest
def _fbeta(yt, yp, sw, average, beta, threshold, ref):
    m = metrics.FBetaScore(average, beta, threshold, dtype="float32")
    m.update_state(yt, yp, sw)
    all_close(m.result(), ref, atol=1e-6)


@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_fbeta_perfect_and_worst(average, beta):
    yp = [[0.7, 0.7, 0.7], [1, 0, 0], [0.9, 0.8, 0]]
    _fbeta([[1, 1, 1], [1, 0, 0], [1, 1, 0]], yp, None, average, beta, 0.66, 1.0)
    _fbeta([[0, 0, 0], [0, 1, 0], [0, 0, 1]], yp, None, average, beta, 0.66, 0.0)


@pytest.mark.parametrize(
    "average, beta, result",
    [
        (None, 0.5, [0.71428573, 0.5, 0.833334]),
        (None, 1.0, [0.8, 0.5, 0.6666667]),
        (None, 2.0, [0.9090904, 0.5, 0.555556]),
        ("micro", 0.5, 0.6666667),
        ("macro", 0.5, 0.6825397),
        ("macro", 1.0, 0.6555555),
        ("macro", 2.0, 0.6548822),
        ("weighted", 0.5, 0.6825397),
        ("weighted", 2.0, 0.6548822),
    ],
)
def test_fbeta_random_score(average, beta, result):
    yp = [[0.7, 0.7, 0.7], [1, 0, 0], [0.9, 0.8, 0]]
    _fbeta([[0, 0, 1], [1, 1, 0], [1, 1, 1]], yp, None, average, beta, 0.66, result)


F_TRUE = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 1]]
F_PRED = [[0.9, 0.1, 0], [0.2, 0.6, 0.2], [0, 0, 1], [0.4, 0.3, 0.3], [0, 0.9, 0.1], [0, 0, 1]]


@pytest.mark.parametrize(
    "average, beta, sw, result",
    [
        (None, 0.5, None, [0.9090904, 0.555556, 1.0]),
        ("micro", 1.0, None, 0.833334),
        ("macro", 2.0, None, 0.849206),
        ("weighted", 0.5, None, 0.880471),
        (None, 0.5, [0.5, 1.0, 1.0, 1.0, 0.5, 1.0], [0.9375, 0.714286, 1.0]),
        (None, 2.0, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0]),
        ("micro", 2.0, [0.5, 1.0, 1.0, 1.0, 0.5, 1.0], 0.9),
        ("macro", 1.0, [0.5, 1.0, 1.0, 1.0, 0.5, 1.0], 0.885714),
        ("weighted", 2.0, [0.5, 1.0, 1.0, 1.0, 0.5, 1.0], 0.897608),
    ],
)
def test_fbeta_threshold_none_and_weights(average, beta, sw, result):
    # test_fbeta_random_score_none / test_fbeta_weighted_random_score_none
    m = metrics.FBetaScore(average, beta, None)
    m.update_state(F_TRUE, F_PRED, sw)
    all_close(m.result(), result, atol=1e-5)


def test_fbeta_weights_and_errors():
    yt, yp = np.array([[1, 1], [1, 0]], np.int32), np.array([[0.2, 0.6], [0.2, 0.6]], np.float32)
    m = metrics.FBetaScore(threshold=0.5)  # test_fbeta_scalar_weight
    m.update_state(yt, yp, sample_weight=0.5)
    all_close(m.result(), [0.0, 0.6666665], atol=1e-5)
    m = metrics.FBetaScore(threshold=0.5)  # test_fbeta_2d_weight
    m.update_state(yt, yp, sample_weight=np.array([[0.5, 0.2], [0.3, 0.8]], np.float32))
    all_close(m.result(), [0.0, 0.333333], atol=1e-5)
    with pytest.raises(ValueError, match="Invalid `average` argument value"):
        metrics.FBetaScore(average="wrong_value")
    for beta in (1, "1", None):
        with pytest.raises(
            ValueError, match="Invalid `beta` argument value. It should be a Python float"
        ):
            metrics.FBetaScore(beta=beta)
    for beta in (0.0, -1.0, -0.5):
        with pytest.raises(ValueError, match="It should be > 0"):
            metrics.FBetaScore(beta=beta)
    with pytest.raises(ValueError, match="Received: threshold=1 of type '<class 'int'>'"):
        metrics.FBetaScore(threshold=1)
    for t in (1.1, 0.0, -2.0):
        with pytest.raises(ValueError, match="It should verify 0 < threshold <= 1"):
            metrics.FBetaScore(threshold=t)
    with pytest.raises(ValueError, match="FBetaScore expects 2D inputs with shape"):
        metrics.FBetaScore().update_state([[[1]]], [[[0.5]]])
    fb = metrics.FBetaScore(beta=0.5, threshold=0.3, average=None, dtype="float32")  # test_config
    fb2 = metrics.FBetaScore.from_config(fb.get_config())
    assert (fb2.beta, fb2.average, fb2.threshold, fb2.dtype) == (0.5, None, 0.3, "float32")


def test_f1_score():
    c = metrics.F1Score(dtype="float32").get_config()  # F1ScoreTest.test_config
    assert "beta" not in c
    f = metrics.F1Score.from_config(c)
    assert f.average is None and f.dtype == "float32" and f.name == "f1_score"
    f1, fb = metrics.F1Score(), metrics.FBetaScore(beta=1.0)  # test_correctness
    f1.update_state(np.array(F_TRUE), np.array(F_PRED))
    fb.update_state(np.array(F_TRUE), np.array(F_PRED))
    all_close(f1.result(), fb.result(), atol=1e-6)


# ------------------------------------------------------------------ MeanIoUTest
def test_mean_iou():
    m = metrics.MeanIoU(num_classes=2, name="mean_iou")  # test_config
    m2 = metrics.MeanIoU.from_config(m.get_config())
    assert (m2.name, m2.num_classes) == ("mean_iou", 2)
    assert metrics.MeanIoU(3).get_config() == {  # Keras 3.15.1's
        "num_classes": 3,
        "name": "mean_io_u",
        "dtype": "int32",
        "ignore_class": None,
        "sparse_y_true": True,
        "sparse_y_pred": True,
        "axis": -1,
    }
    all_close(call(metrics.MeanIoU(2), [0, 0, 1, 1], [0, 1, 0, 1]), (1 / 3 + 1 / 3) / 2, atol=1e-3)
    expected = (1 / 1 + 1 / 2 + 0) / 3
    all_close(
        call(metrics.MeanIoU(3, ignore_class=255), [0, 1, 2, 255], [0, 1, 1, 1]),
        expected,
        atol=1e-3,
    )
    all_close(
        call(metrics.MeanIoU(3, ignore_class=-1), [0, 1, 2, -1], [0, 1, 1, 1]), expected, atol=1e-3
    )
    sw = np.array([0.2, 0.3, 0.4, 0.1])
    w = (0.2 / (0.6 + 0.5 - 0.2) + 0.1 / (0.4 + 0.5 - 0.1)) / 2
    m = metrics.MeanIoU(2, dtype="float32")  # test_weighted
    all_close(
        call(m, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1], np.float32), sample_weight=sw),
        w,
        atol=1e-3,
    )
    m = metrics.MeanIoU(2, ignore_class=-1, dtype="float32")  # test_weighted_ignore_class_1
    got = call(m, np.array([0, 0, 1, -1]), np.array([0, 1, 0, 1], np.float32), sample_weight=sw)
    all_close(got, (0.2 / (0.6 + 0.5 - 0.2)) / 2, atol=1e-3)
    m = metrics.MeanIoU(2, dtype="float32")  # test_multi_dim_input
    got = call(
        m,
        np.array([[0, 0], [1, 1]]),
        np.array([[0, 1], [0, 1]], np.float32),
        sample_weight=sw.reshape(2, 2),
    )
    all_close(got, w, atol=1e-3)
    all_close(metrics.MeanIoU(2).result(), 0, atol=1e-3)  # test_zero_valid_entries
    all_close(call(metrics.MeanIoU(2), np.array([1]), np.array([1.0])), 1.0, atol=1e-3)
    m = metrics.MeanIoU(2)  # test_out_of_range_ignored / test_negative_ignored
    m.update_state([0, 3], [0, 1])
    all_close(m.result(), 1.0, atol=1e-3)
    m = metrics.MeanIoU(2)
    m.update_state([0, -1], [0, 1])
    all_close(m.result(), 1.0, atol=1e-3)
    all_close(call(metrics.MeanIoU(3), [0, 0, 0, 0], [0, 0, 0, 0]), 1.0, atol=1e-3)


def test_mean_iou_int_dtype_truncates_float_weights_with_keras_warning():
    # Keras' default dtype "int": float weights are cast (0.5 -> 0), with its warning
    m = metrics.MeanIoU(2)
    with pytest.warns(UserWarning, match="You are passing weight as `float`"):
        m.update_state([0, 1, 1], [0, 1, 0], sample_weight=np.array([1.0, 1.0, 0.5]))
    all_close(m.result(), 1.0, atol=1e-3)


# ------------------------------------------------------------------ TopK accuracies
def test_top_k_categorical_accuracy():
    m = metrics.TopKCategoricalAccuracy(k=1, name="top_k_categorical_accuracy", dtype="float32")
    c = m.get_config()
    assert c == {"name": "top_k_categorical_accuracy", "dtype": "float32", "k": 1}
    assert metrics.TopKCategoricalAccuracy.from_config(c).k == 1
    yt = np.array([[0, 0, 1], [0, 1, 0]])
    yp = np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0]], np.float32)
    all_close(call(metrics.TopKCategoricalAccuracy(k=1), yt, yp), 0.5, atol=1e-3)
    m = metrics.TopKCategoricalAccuracy(k=1)
    all_close(call(m, yt, yp, sample_weight=np.array([0.7, 0.3])), 0.3, atol=1e-3)
    assert metrics.TopKCategoricalAccuracy().k == 5


def test_sparse_top_k_categorical_accuracy():
    m = metrics.SparseTopKCategoricalAccuracy(k=1, dtype="float32")
    c = m.get_config()
    assert c == {"name": "sparse_top_k_categorical_accuracy", "dtype": "float32", "k": 1}
    assert metrics.SparseTopKCategoricalAccuracy.from_config(c).from_sorted_ids is False
    s = metrics.SparseTopKCategoricalAccuracy(k=1, from_sorted_ids=True)
    assert s.get_config()["from_sorted_ids"] is True
    assert metrics.SparseTopKCategoricalAccuracy.from_config(s.get_config()).from_sorted_ids
    yp = np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0]], np.float32)
    all_close(
        call(metrics.SparseTopKCategoricalAccuracy(k=1), np.array([2, 1]), yp), 0.5, atol=1e-3
    )
    m = metrics.SparseTopKCategoricalAccuracy(k=1)
    all_close(call(m, np.array([2, 1]), yp, sample_weight=np.array([0.7, 0.3])), 0.3, atol=1e-3)
    # test_from_sorted_ids_unweighted / _weighted
    ids = np.array([[1, 0, 3], [1, 2, 3]])
    s = metrics.SparseTopKCategoricalAccuracy(k=1, from_sorted_ids=True)
    all_close(call(s, np.array([2, 1]), ids), 0.5, atol=1e-3)
    s = metrics.SparseTopKCategoricalAccuracy(k=1, from_sorted_ids=True)
    all_close(call(s, np.array([2, 1]), ids, sample_weight=np.array([0.7, 0.3])), 0.3, atol=1e-3)


# ------------------------------------------------------------------ regression_metrics_test
def test_mean_squared_error_and_mean_absolute_error():
    # MeanSquaredErrorTest / MeanAbsoluteErrorTest (test_config, test_unweighted,
    # test_weighted)
    yt = np.array([[0, 1, 0, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]])
    yp = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [1, 1, 1, 1, 1]])
    mse = metrics.MeanSquaredError(name="my_mse")
    assert mse.get_config() == {"name": "my_mse", "dtype": "float32"}
    all_close(call(mse, yt, yp), 0.5, atol=1e-5)
    mse = metrics.MeanSquaredError()
    all_close(call(mse, yt, yp, sample_weight=np.array([1.0, 1.5, 2.0, 2.5])), 0.54285, atol=1e-5)
    mae = metrics.MeanAbsoluteError(name="my_mae")
    assert mae.get_config() == {"name": "my_mae", "dtype": "float32"}
    all_close(call(mae, yt, yp), 0.5, atol=1e-5)
    mae = metrics.MeanAbsoluteError()
    all_close(call(mae, yt, yp, sample_weight=np.array([1.0, 1.5, 2.0, 2.5])), 0.54285, atol=1e-5)


@pytest.mark.parametrize(
    "metric",
    [
        metrics.Precision(thresholds=[0.3, 0.6], top_k=2, class_id=1),
        metrics.Recall(name="r"),
        metrics.AUC(curve="PR", summation_method="minoring", num_thresholds=50),
        metrics.TopKCategoricalAccuracy(k=2),
        metrics.SparseTopKCategoricalAccuracy(k=3),
        metrics.F1Score(average="macro", threshold=0.4),
        metrics.FBetaScore(beta=2.0),
        metrics.MeanIoU(4, ignore_class=0),
    ],
)
def test_serialize_round_trip(metric):
    # run_class_serialization_test: config -> from_config -> same config, through JSON
    config = metric.get_config()
    again = metrics.deserialize(json.loads(json.dumps(metrics.serialize(metric))))
    assert type(again) is type(metric) and again.get_config() == config
