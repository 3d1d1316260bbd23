"""AUC against the rest of Keras 3's ``metrics/confusion_metrics_test.py`` (3.15.1):
``AUCTest``'s precision-recall-gain cases (``curve="PRGAIN"``) and ``test_config``, and
``MultiAUCTest``'s manual thresholds, weighted ROC, PR interpolation (Davis & Goadrich,
per label) and reset; the expected values and tolerances are theirs, cited by test name.

Deliberately different: ``dtype="float64"`` of ``test_config`` (metrics keep float32:
a TypeError says so), so that case runs with the default dtype.
"""

import json

import numpy as np
import pytest

from metalearn.keras import metrics

from ._helpers import all_close


def call(m, *args, **kwargs):
    m.update_state(*args, **kwargs)
    return m.result()


# AUCTest.setUp
Y_PRED = np.array([0, 0.5, 0.3, 0.9], dtype="float32")
Y_TRUE = np.array([0, 0, 1, 1])
SW = [1, 2, 3, 4]
Y_PRED_ML = np.array([[0.0, 0.4], [0.5, 0.7], [0.3, 0.2], [0.9, 0.3]], dtype="float32")
Y_TRUE_ML = np.array([[0, 0], [1, 1], [1, 1], [1, 0]])


@pytest.mark.parametrize(
    "how,expected",
    [  # AUCTest.test_weighted_prgain_{majoring,minoring,interpolation}
        ("majoring", 1 * 1 + 0 * 1),
        ("minoring", 1 * 0 + 0 * 1),
        ("interpolation", 1 * 0.5 + 0 * 1),
    ],
)
def test_weighted_prgain(how, expected):
    m = metrics.AUC(num_thresholds=3, curve="PRGAIN", summation_method=how)
    all_close(call(m, Y_TRUE, Y_PRED, sample_weight=SW), expected, 1e-3)


def test_prgain_interpolation():
    # AUCTest.test_prgain_interpolation
    m = metrics.AUC(num_thresholds=3, curve="PRGAIN")
    y_true = np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1])
    y_pred = np.array([0.1, 0.2, 0.3, 0.3, 0.4, 0.4, 0.6, 0.6, 0.8, 0.9])
    all_close(call(m, y_true, y_pred), 0.666666 * 0.333333 + 0.333333 * 0.833333, 1e-3)


def test_invalid_curve_names_prgain():
    # AUCTest.test_invalid_curve (3.15.1's message lists PRGAIN)
    with pytest.raises(ValueError, match=r'Expected values are \["PR", "ROC", "PRGAIN"\]'):
        metrics.AUC(curve="Invalid")
    assert metrics.AUC(curve="PRGAIN").get_config()["curve"] == "PRGAIN"


def test_config():
    # AUCTest.test_config (float32: see the module docstring)
    kw = dict(num_thresholds=100, curve="PR", summation_method="majoring", name="auc_1")
    a = metrics.AUC(**kw, multi_label=True, num_labels=2, from_logits=True)
    a.update_state(Y_TRUE_ML, Y_PRED_ML)
    assert (a.name, a.num_thresholds, a.curve, a.summation_method) == (
        "auc_1",
        100,
        "PR",
        "majoring",
    )
    assert a.multi_label and a.num_labels == 2 and a._from_logits
    old = a.get_config()
    assert "thresholds" not in old and old == json.loads(json.dumps(old))
    b = metrics.AUC.from_config(a.get_config())
    b.update_state(Y_TRUE_ML, Y_PRED_ML)
    assert (b.name, b.num_thresholds, b.curve, b.summation_method) == (
        "auc_1",
        100,
        "PR",
        "majoring",
    )
    assert b.multi_label and b.num_labels == 2 and b._from_logits
    assert b.get_config() == old
    all_close(a.thresholds, b.thresholds)
    all_close(a.result(), b.result())


# MultiAUCTest.setUp
M_PRED = np.array([[0, 0.5, 0.3, 0.9], [0.1, 0.2, 0.3, 0.4]], dtype="float32").T
M_GOOD = np.array([[0, 0, 1, 1], [0, 0, 1, 1]]).T
M_BAD = np.array([[0, 0, 1, 1], [1, 1, 0, 0]]).T


def test_multi_manual_thresholds():
    # MultiAUCTest.test_manual_thresholds
    m = metrics.AUC(num_thresholds=2, thresholds=[0.5], multi_label=True)
    assert m.num_thresholds == 3
    all_close(m.thresholds, [0.0, 0.5, 1.0])
    all_close(call(m, M_GOOD, M_PRED), (0.75 + 0.5) / 2.0, 1e-3)


def test_multi_weighted_roc_interpolation():
    # MultiAUCTest.test_weighted_roc_interpolation
    m = metrics.AUC(num_thresholds=5, multi_label=True)
    all_close(call(m, M_GOOD, M_PRED, sample_weight=SW), 1.0 - 0.5 * 0.43 * 0.67, 1e-1)


def test_multi_pr_interpolation():
    # MultiAUCTest.test_pr_interpolation_unweighted: PR AUCs 0.917 and 1.0 (good),
    # 0.917 and 0.5 (bad)
    m = metrics.AUC(num_thresholds=5, curve="PR", multi_label=True)
    all_close(call(m, M_GOOD, M_PRED), (0.91667 + 1.0) / 2.0, 1e-1)
    all_close(call(m, M_BAD, M_PRED), (0.91667 + 0.5) / 2.0, 1e-1)
    # MultiAUCTest.test_pr_interpolation: 0.939 and 1.0
    m = metrics.AUC(num_thresholds=5, curve="PR", multi_label=True)
    all_close(call(m, M_GOOD, M_PRED, sample_weight=SW), (0.939 + 1.0) / 2.0, 1e-1)


def test_multi_reset_state_and_num_labels():
    # MultiAUCTest.test_reset_state
    m = metrics.AUC(num_thresholds=5, multi_label=True)
    call(m, M_GOOD, M_PRED)
    m.reset_state()
    all_close(m.true_positives, np.zeros((5, 2)))
    # num_labels builds the (thresholds, labels) counts at once (Keras' _build)
    m = metrics.AUC(num_thresholds=5, multi_label=True, num_labels=2)
    assert np.shape(m.true_positives) == (5, 2)
    with pytest.raises(ValueError, match="`num_labels` is needed only when `multi_label` is True"):
        metrics.AUC(num_labels=2)
