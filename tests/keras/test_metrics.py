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


# ---------------------------------------------------------------- issue 22's metrics
import metalearn as ml  # noqa: E402
from metalearn.keras import metrics as _m  # noqa: E402


def _state(m):
    return {k: np.array(v, copy=True) for k, v in vars(m).items() if isinstance(v, np.ndarray)}


_OK2 = (np.eye(2)[[0, 1, 1, 0]], np.eye(2)[[0, 1, 0, 0]] * 0.8 + 0.1)  # a valid first batch


@pytest.mark.parametrize(
    "metric, prime, y_true, y_pred",
    [
        (_m.Precision(), _OK2, np.ones((4, 3)), np.full((4, 2), 0.5)),
        (_m.Recall(thresholds=[0.2, 0.8]), _OK2, np.ones((4, 3)), np.full((5, 3), 0.5)),
        (_m.AUC(), _OK2, np.ones((4, 3)), np.full((4, 2), 0.5)),
        (_m.AUC(multi_label=True), _OK2, np.ones((4, 3)), np.full((4, 3), 0.5)),
        (_m.F1Score(), _OK2, np.ones((4, 3)), np.full((4, 2), 0.5)),
        (_m.TopKCategoricalAccuracy(k=1), _OK2, np.ones((4, 3)), np.full((4, 2), 0.5)),
        (
            _m.SparseTopKCategoricalAccuracy(k=1),
            ([0, 1], _OK2[1][:2]),
            np.ones((5,)),
            np.full((4, 2), 0.5),
        ),
        (_m.MeanIoU(3), ([0, 1], [0, 2]), np.ones((5,)), np.ones((4,))),
    ],
)
def test_new_metrics_refuse_mismatched_shapes_naming_both_and_keep_their_state(
    metric, prime, y_true, y_pred
):
    metric.update_state(*prime)
    before, result = _state(metric), metric.result()
    with pytest.raises(ValueError) as info:
        metric.update_state(y_true, y_pred)
    msg = str(info.value)
    if isinstance(metric, _m.AUC) and metric.multi_label:  # the label count is named
        assert "3 labels" in msg and "built for 2" in msg
    else:
        assert str(tuple(y_true.shape)) in msg and str(tuple(y_pred.shape)) in msg, msg
    after = _state(metric)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    np.testing.assert_array_equal(np.asarray(metric.result()), np.asarray(result))


def test_new_metrics_bad_arguments():
    with pytest.raises(ValueError, match="threshold values must be in"):
        _m.Precision(thresholds=[0.2, 1.5])
    with pytest.raises(ValueError, match="top_k"):
        _m.Recall(top_k=0)
    with pytest.raises(ValueError, match="class_id"):
        _m.Precision(class_id=-1)
    with pytest.raises(ValueError, match="out of range"):
        _m.Precision(class_id=5).update_state(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="num_labels"):
        _m.AUC(num_labels=3)
    with pytest.raises(ValueError, match="k must be"):
        _m.TopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match="num_classes"):
        _m.MeanIoU(0)
    with pytest.raises(TypeError, match="dtype"):
        _m.MeanIoU(2, dtype="float16")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        _m.SparseTopKCategoricalAccuracy().update_state([3], [[0.1, 0.2, 0.7]])


def test_new_metrics_in_fit_and_evaluate_equal_the_metric_on_predictions():
    """compile(metrics=[...]) with the new metrics: evaluate's values are the metric
    applied to predict's output (and fit logs them per epoch, val_ included)."""
    from metalearn.keras import layers, models

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.float32)
    ml.random.set_seed(0)
    model = models.Sequential([layers.Dense(1, activation="sigmoid", input_shape=(4,))])
    made = lambda: [  # noqa: E731
        _m.Precision(),
        _m.Recall(thresholds=0.3),
        _m.AUC(),
        _m.AUC(curve="PR", name="pr_auc"),
    ]
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=made())
    hist = model.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_split=0.25)
    for key in ("precision", "recall", "auc", "pr_auc", "val_auc"):
        assert len(hist.history[key]) == 3
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    pred = np.asarray(model.predict(x, verbose=0))
    for m in made():
        m.update_state(y, pred)
        assert logs[m.name] == pytest.approx(m.result(), abs=1e-7), m.name
    assert 0.5 < logs["auc"] <= 1.0


def test_f1_score_per_class_result_in_fit_logs_and_progress_bar(capsys):
    """An array-valued metric (F1Score, average=None) is logged as its array and shown by
    the progress bar as its mean, as Keras 3's Progbar does."""
    from metalearn.keras import layers, models

    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)]
    model = models.Sequential([layers.Dense(3, activation="softmax", input_shape=(4,))])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[_m.F1Score()])
    hist = model.fit(x, y, epochs=1, batch_size=8, verbose=2)
    f1 = hist.history["f1_score"][0]
    assert np.shape(f1) == (3,)
    assert f"f1_score: {np.mean(f1):.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, cls",
    [
        ("precision", _m.Precision),
        ("recall", _m.Recall),
        ("auc", _m.AUC),
        ("f1_score", _m.F1Score),
        ("top_k_categorical_accuracy", _m.TopKCategoricalAccuracy),
        ("sparse_top_k_categorical_accuracy", _m.SparseTopKCategoricalAccuracy),
        ("Precision", _m.Precision),
        ("AUC", _m.AUC),
    ],
)
def test_new_metrics_by_name(name, cls):
    """Keras 3 resolves a metric class by its name and its snake_case name."""
    m = _m.get(name)
    assert type(m) is cls and m.name == (name if name.islower() else m.name)
