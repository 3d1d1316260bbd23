"""Metrics against Keras 3: the expected values are those of Keras' own tests
(keras/src/metrics/*_test.py, cited by test name) or, where noted, Keras 3.15.1's output."""

import numpy as np
import pytest

from metalearn.keras import metrics


def _result(metric, *args, **kwargs):
    metric.update_state(*args, **kwargs)
    return metric.result()


# ---------------------------------------------------------------- element-wise sample_weight


def test_accuracy_with_element_wise_sample_weight():
    """accuracy_metrics_test.py AccuracyTest.test_weighted / test_weighted_rank_1 /
    test_weighted_nd_weights / test_weighted_nd_broadcast_weights (they raised before)."""
    y_true, y_pred = np.array([[1], [2], [3], [4]]), np.array([[0], [2], [3], [4]])
    assert _result(metrics.Accuracy(), y_true, y_pred) == pytest.approx(0.75)
    assert _result(
        metrics.Accuracy(), y_true, y_pred, sample_weight=np.array([1, 1, 0, 0])
    ) == pytest.approx(0.5)
    assert _result(
        metrics.Accuracy(),
        np.array([1, 2, 3, 4]),
        np.array([0, 2, 3, 4]),
        sample_weight=np.array([1, 1, 0, 0]),
    ) == pytest.approx(0.5)
    y_true, y_pred = np.array([[1, 2], [3, 4]]), np.array([[0, 2], [3, 4]])
    assert _result(
        metrics.Accuracy(), y_true, y_pred, sample_weight=np.array([[1, 0], [0, 1]])
    ) == pytest.approx(0.5)
    assert _result(
        metrics.Accuracy(), y_true, y_pred, sample_weight=np.array([[1, 0]])
    ) == pytest.approx(0.5)


def test_binary_accuracy_with_element_wise_sample_weight():
    """accuracy_metrics_test.py BinaryAccuracyTest: test_unweighted (with its broadcasting
    case), test_weighted, test_weighted_rank_1, test_weighted_nd_weights,
    test_weighted_nd_broadcast_weights, test_threshold."""
    y_true, y_pred = np.array([[1], [1], [0], [0]]), np.array([[0.98], [1], [0], [0.6]])
    assert _result(metrics.BinaryAccuracy(), y_true, y_pred) == pytest.approx(0.75)
    assert _result(metrics.BinaryAccuracy(), np.array([1, 1, 0, 0]), y_pred) == pytest.approx(0.75)
    assert _result(
        metrics.BinaryAccuracy(), y_true, y_pred, sample_weight=np.array([1, 0, 0, 1])
    ) == pytest.approx(0.5)
    assert _result(
        metrics.BinaryAccuracy(),
        np.array([1, 1, 0, 0]),
        np.array([0.98, 1, 0, 0.6]),
        sample_weight=np.array([1, 0, 0, 1]),
    ) == pytest.approx(0.5)
    y_true, y_pred = np.array([[1, 1], [0, 0]]), np.array([[0.98, 1], [0, 0.6]])
    assert _result(
        metrics.BinaryAccuracy(), y_true, y_pred, sample_weight=np.array([[1, 0], [0, 1]])
    ) == pytest.approx(0.5)
    assert _result(
        metrics.BinaryAccuracy(), y_true, y_pred, sample_weight=np.array([[1, 0]])
    ) == pytest.approx(1.0)
    y_true, y_pred = np.array([[1], [1], [0], [0]]), np.array([[0.98], [0.5], [0.1], [0.2]])
    assert _result(metrics.BinaryAccuracy(threshold=0.3), y_true, y_pred) == pytest.approx(1.0)
    assert _result(metrics.BinaryAccuracy(threshold=0.9), y_true, y_pred) == pytest.approx(0.75)


def test_accuracy_functions_are_element_wise():
    """Keras 3's accuracy and binary_accuracy return one value per element (Keras 2 and the
    old code averaged the last axis); binary_accuracy compares y_true itself with the
    thresholded prediction, so a soft label 0.7 never matches. Keras 3.15.1's values."""
    np.testing.assert_array_equal(
        metrics.accuracy(np.array([[1, 2], [3, 4]]), np.array([[0, 2], [3, 4]])), [[0, 1], [1, 1]]
    )
    np.testing.assert_array_equal(
        metrics.binary_accuracy(np.array([[1, 1], [0, 0]]), np.array([[0.98, 1], [0, 0.6]])),
        [[1, 1], [1, 0]],
    )
    np.testing.assert_array_equal(
        metrics.binary_accuracy(np.array([0.7, 1.0]), np.array([0.9, 0.9])), [0, 1]
    )
    # (N,) against (N, 1) pairs element by element (Keras' squeeze_or_expand_to_same_rank)
    assert metrics.accuracy(np.array([1, 2, 3]), np.array([[1], [0], [3]])).shape == (3, 1)


def test_mean_and_sum_with_element_wise_weights():
    """reduction_metrics_test.py SumTest / MeanTest: test_weighted, test_weighted_nd,
    test_weighted_nd_broadcast, test_weighted_negative_weights."""
    assert _result(metrics.Sum(), [1, 3, 5, 7], sample_weight=[1, 1, 0, 0]) == pytest.approx(4.0)
    assert _result(
        metrics.Sum(), [[1, 3], [5, 7]], sample_weight=[[1, 1], [1, 0]]
    ) == pytest.approx(9.0)
    assert _result(metrics.Sum(), [[1, 3], [5, 7]], sample_weight=[[1, 0]]) == pytest.approx(6.0)
    assert _result(metrics.Mean(), [1, 3, 5, 7], sample_weight=[1, 1, 0, 0]) == pytest.approx(2.0)
    assert _result(metrics.Mean(), [1, 3, 5, 7], sample_weight=[-1, -1, 0, 0]) == pytest.approx(2.0)
    assert _result(
        metrics.Mean(), [[1, 3], [5, 7]], sample_weight=[[1, 1], [1, 0]]
    ) == pytest.approx(3.0)
    assert _result(metrics.Mean(), [[1, 3], [5, 7]], sample_weight=[[1, 0]]) == pytest.approx(3.0)


def test_mean_metric_wrapper_with_broadcast_weights():
    """reduction_metrics_test.py MetricWrapperTest.test_unweighted / test_weighted /
    test_weighted_broadcast (an element-wise function)."""
    y_true = np.array([[0, 1, 0, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]])
    y_pred = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [1, 1, 1, 1, 1]])

    def mse(a, b):
        return (a - b) ** 2

    assert _result(metrics.MeanMetricWrapper(mse), y_true, y_pred) == pytest.approx(0.5)
    assert metrics.MeanMetricWrapper(mse)(
        y_true, y_pred, sample_weight=np.array([1.0, 1.5, 2.0, 2.5])
    ) == pytest.approx(0.54285, abs=1e-5)
    assert metrics.MeanMetricWrapper(mse)(
        y_true, y_pred, sample_weight=np.array([[1.0, 0.0, 0.5, 0.0, 1.0]])
    ) == pytest.approx(0.45, abs=1e-5)


def test_categorical_accuracies():
    """accuracy_metrics_test.py CategoricalAccuracyTest.test_weighted,
    SparseCategoricalAccuracyTest.test_weighted / test_squeeze_y_true / test_reshape_matches."""
    y_true = np.array([[0, 0, 1], [0, 1, 0]])
    y_pred = np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0]])
    assert _result(
        metrics.CategoricalAccuracy(), y_true, y_pred, sample_weight=np.array([0.7, 0.3])
    ) == pytest.approx(0.3)
    y_pred = np.array([[0.1, 0.6, 0.3], [0.05, 0.95, 0]])
    assert _result(
        metrics.SparseCategoricalAccuracy(),
        np.array([[2], [1]]),
        y_pred,
        sample_weight=np.array([0.7, 0.3]),
    ) == pytest.approx(0.3)
    assert _result(
        metrics.SparseCategoricalAccuracy(),
        np.array([[0], [1], [2]]),
        np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]),
    ) == pytest.approx(1.0)
    assert _result(
        metrics.SparseCategoricalAccuracy(),
        np.array([[0], [0]], np.int64),
        np.array([[[0.9, 0.1, 0.0], [0.8, 0.15, 0.05]]], np.float32),
    ) == pytest.approx(1.0)


# ---------------------------------------------------------------- rank matching, bad shapes


def test_regression_metrics_match_ranks():
    """Targets (N,) against predictions (N, 1): the mean of [1, 64, 121] and [1, 8, 11],
    not of an (N, N) broadcast (Keras 3.15.1: 62.0 and 6.6667)."""
    y_true, y_pred = np.array([4, 8, 12]), np.array([[3], [0], [1]])
    assert _result(metrics.MeanSquaredError(), y_true, y_pred) == pytest.approx(62.0)
    assert _result(metrics.MeanAbsoluteError(), y_true, y_pred) == pytest.approx(20 / 3)
    np.testing.assert_allclose(metrics.mean_squared_error(y_true, y_pred), [1, 64, 121])
    # per-sample weights on (N, T) values: each sample's mean over T, weighted
    a = np.arange(8.0).reshape(4, 2, 1)
    got = _result(
        metrics.MeanSquaredError(), np.zeros((4, 2, 1)), a, sample_weight=np.array([1.0, 0, 0, 1])
    )
    assert got == pytest.approx((np.mean(a[0] ** 2) + np.mean(a[3] ** 2)) / 2)


@pytest.mark.parametrize(
    "metric, y_true, y_pred, sw",
    [
        (metrics.Accuracy(), np.ones((4, 2)), np.ones((4, 3)), None),
        (metrics.BinaryAccuracy(), np.ones((4, 2)), np.ones((4, 3)), None),
        (metrics.MeanSquaredError(), np.ones((4, 2)), np.ones((4, 3)), None),
        (metrics.Accuracy(), np.ones((4, 2)), np.ones((4, 2)), np.ones(3)),
        (metrics.MeanSquaredError(), np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3))),
    ],
)
def test_unmatchable_shapes_raise_and_change_nothing(metric, y_true, y_pred, sw):
    before = (metric.total, metric.count)
    with pytest.raises(ValueError) as e:
        metric.update_state(y_true, y_pred, sample_weight=sw)
    shape = np.shape(sw) if sw is not None else y_pred.shape
    assert str(shape) in str(e.value)
    assert (metric.total, metric.count) == before


def test_accuracy_resolution_is_keras_3s():
    """compile(metrics=["accuracy"]) resolves from the shapes alone, as Keras 3's
    compile_utils.get_metric: multi-label (N, C) predictions with a binary cross-entropy loss
    get CategoricalAccuracy (tf.keras 2 looked at the loss and chose BinaryAccuracy)."""
    from metalearn.keras import losses

    bce = losses.BinaryCrossentropy()
    pred = np.zeros((4, 3), np.float32)
    assert isinstance(
        metrics.resolve("accuracy", bce, np.zeros((4, 3)), pred), metrics.CategoricalAccuracy
    )
    assert isinstance(
        metrics.resolve("acc", bce, np.zeros(4), np.zeros((4, 1))), metrics.BinaryAccuracy
    )
    assert isinstance(
        metrics.resolve("accuracy", None, np.zeros(4), pred), metrics.SparseCategoricalAccuracy
    )
    assert isinstance(
        metrics.resolve("accuracy", None, np.zeros((4, 1)), pred), metrics.SparseCategoricalAccuracy
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: metrics.Accuracy(name="acc2"),
        lambda: metrics.BinaryAccuracy(threshold=0.3),
        lambda: metrics.CategoricalAccuracy(),
        lambda: metrics.SparseCategoricalAccuracy(),
        lambda: metrics.MeanSquaredError(name="my_mse"),
        lambda: metrics.MeanAbsoluteError(),
        lambda: metrics.Mean(name="m"),
        lambda: metrics.Sum(),
        lambda: metrics.MeanMetricWrapper(metrics.binary_accuracy, name="ba", threshold=0.7),
    ],
    ids=[
        "Accuracy",
        "BinaryAccuracy",
        "CategoricalAccuracy",
        "SparseCategoricalAccuracy",
        "MeanSquaredError",
        "MeanAbsoluteError",
        "Mean",
        "Sum",
        "MeanMetricWrapper",
    ],
)
def test_metrics_round_trip_through_config_and_json(make):
    """Keras 3's metrics have from_config and metrics.serialize/deserialize; the config is
    {name, dtype} plus the metric's own arguments (BinaryAccuracy's threshold, a wrapper's
    function by name), JSON-able for shipped functions, and the revived metric computes
    the same numbers from a fresh state."""
    import json

    metric = make()
    config = metric.get_config()
    assert config["name"] == metric.name and config["dtype"] == "float32"
    for revived in (
        type(metric).from_config(config),
        metrics.deserialize(json.loads(json.dumps(metrics.serialize(metric)))),
    ):
        assert type(revived) is type(metric) and revived.get_config() == config
        y_true = np.array([[1.0], [0.0], [1.0], [0.0]])
        y_pred = np.array([[0.8], [0.6], [0.4], [0.1]])
        if isinstance(metric, (metrics.Mean, metrics.Sum)) and not isinstance(
            metric, metrics.MeanMetricWrapper
        ):
            args = (y_pred,)
        else:
            args = (y_true, y_pred)
        assert float(revived(*args)) == pytest.approx(float(make()(*args)))


def test_binary_accuracy_config_keeps_its_threshold():
    # accuracy_metrics.py::BinaryAccuracy.get_config has the threshold
    revived = metrics.BinaryAccuracy.from_config(metrics.BinaryAccuracy(threshold=0.3).get_config())
    assert revived.threshold == 0.3
    assert float(revived([[1], [1]], [[0.4], [0.35]])) == 1.0  # 0.0 at the default 0.5


def test_get_none_unknown_and_dict():
    """Keras 3's metrics.get: None gives None, a config dict is deserialized, anything it
    cannot interpret is a ValueError ("Could not interpret metric identifier")."""
    assert metrics.get(None) is None
    m = metrics.get({"class_name": "Mean", "config": {"name": "avg"}})
    assert isinstance(m, metrics.Mean) and m.name == "avg"
    with pytest.raises(ValueError, match="Could not interpret metric identifier"):
        metrics.get(3)
    with pytest.raises(ValueError, match="Unknown metric class"):
        metrics.deserialize({"class_name": "Nope", "config": {}})
