"""Metrics against the expected values of Keras 3's tests.

Sources: ``keras/src/metrics/accuracy_metrics_test.py``, ``reduction_metrics_test.py``,
``regression_metrics_test.py``, ``metric_test.py`` and, for how ``compile`` resolves
``"accuracy"``, ``keras/src/trainers/compile_utils_test.py``. Inputs and numbers are
Keras'; the test code is ours.
"""

import numpy as np
import pytest

from metalearn.keras import metrics

from ._helpers import all_close


def result_of(metric, *args, **kwargs):
    metric.update_state(*args, **kwargs)
    return float(metric.result())


# ------------------------------------------------------------------------ Accuracy
class TestAccuracy:
    def test_config(self):
        # accuracy_metrics_test.py::AccuracyTest::test_config (name kept through
        # get_config / from_config)
        m = metrics.Accuracy(name="accuracy", dtype="float32")
        assert m.name == "accuracy"
        config = m.get_config()
        assert config["name"] == "accuracy"
        assert metrics.Accuracy.from_config(config).name == "accuracy"

    def test_unweighted(self):
        # accuracy_metrics_test.py::AccuracyTest::test_unweighted
        m = metrics.Accuracy()
        all_close(
            result_of(m, np.array([[1], [2], [3], [4]]), np.array([[0], [2], [3], [4]])),
            0.75,
            atol=1e-3,
        )

    def test_weighted(self):
        # accuracy_metrics_test.py::AccuracyTest::test_weighted
        m = metrics.Accuracy()
        all_close(
            result_of(
                m,
                np.array([[1], [2], [3], [4]]),
                np.array([[0], [2], [3], [4]]),
                sample_weight=np.array([1, 1, 0, 0]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted_rank_1(self):
        # accuracy_metrics_test.py::AccuracyTest::test_weighted_rank_1
        m = metrics.Accuracy()
        all_close(
            result_of(
                m,
                np.array([1, 2, 3, 4]),
                np.array([0, 2, 3, 4]),
                sample_weight=np.array([1, 1, 0, 0]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted_nd_weights(self):
        # accuracy_metrics_test.py::AccuracyTest::test_weighted_nd_weights: an element-wise
        # weight; Keras averages element by element
        m = metrics.Accuracy()
        all_close(
            result_of(
                m,
                np.array([[1, 2], [3, 4]]),
                np.array([[0, 2], [3, 4]]),
                sample_weight=np.array([[1, 0], [0, 1]]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted_nd_broadcast_weights(self):
        # accuracy_metrics_test.py::AccuracyTest::test_weighted_nd_broadcast_weights
        m = metrics.Accuracy()
        all_close(
            result_of(
                m,
                np.array([[1, 2], [3, 4]]),
                np.array([[0, 2], [3, 4]]),
                sample_weight=np.array([[1, 0]]),
            ),
            0.5,
            atol=1e-3,
        )


# ------------------------------------------------------------------ BinaryAccuracy
BA_TRUE = np.array([[1], [1], [0], [0]])
BA_PRED = np.array([[0.98], [1], [0], [0.6]])


class TestBinaryAccuracy:
    def test_config(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_config
        m = metrics.BinaryAccuracy(name="binary_accuracy", dtype="float32")
        config = m.get_config()
        assert config["name"] == "binary_accuracy"
        assert metrics.BinaryAccuracy.from_config(config).name == "binary_accuracy"
        # the threshold is part of the config (BinaryAccuracy.get_config); revived with
        # threshold 0.3, test_threshold's data gives 1.0 (0.75 at the default 0.5)
        revived = metrics.BinaryAccuracy.from_config(
            metrics.BinaryAccuracy(threshold=0.3).get_config()
        )
        all_close(result_of(revived, BA_TRUE, np.array([[0.98], [0.5], [0.1], [0.2]])), 1.0)

    def test_unweighted(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_unweighted (and its
        # broadcasting case: (4,) labels against (4, 1) predictions)
        all_close(result_of(metrics.BinaryAccuracy(), BA_TRUE, BA_PRED), 0.75, atol=1e-3)
        all_close(
            result_of(metrics.BinaryAccuracy(), np.array([1, 1, 0, 0]), BA_PRED), 0.75, atol=1e-3
        )

    def test_weighted(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_weighted
        all_close(
            result_of(
                metrics.BinaryAccuracy(), BA_TRUE, BA_PRED, sample_weight=np.array([1, 0, 0, 1])
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted_rank_1(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_weighted_rank_1
        all_close(
            result_of(
                metrics.BinaryAccuracy(),
                np.array([1, 1, 0, 0]),
                np.array([0.98, 1, 0, 0.6]),
                sample_weight=np.array([1, 0, 0, 1]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted_nd_weights(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_weighted_nd_weights
        all_close(
            result_of(
                metrics.BinaryAccuracy(),
                np.array([[1, 1], [0, 0]]),
                np.array([[0.98, 1], [0, 0.6]]),
                sample_weight=np.array([[1, 0], [0, 1]]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted_nd_broadcast_weights(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_weighted_nd_broadcast_weights
        all_close(
            result_of(
                metrics.BinaryAccuracy(),
                np.array([[1, 1], [0, 0]]),
                np.array([[0.98, 1], [0, 0.6]]),
                sample_weight=np.array([[1, 0]]),
            ),
            1.0,
            atol=1e-3,
        )

    def test_threshold(self):
        # accuracy_metrics_test.py::BinaryAccuracyTest::test_threshold
        y_pred = np.array([[0.98], [0.5], [0.1], [0.2]])
        all_close(result_of(metrics.BinaryAccuracy(threshold=0.3), BA_TRUE, y_pred), 1.0)
        all_close(result_of(metrics.BinaryAccuracy(threshold=0.9), BA_TRUE, y_pred), 0.75)


# ----------------------------------------------------- (Sparse)CategoricalAccuracy
class TestCategoricalAccuracy:
    def test_config(self):
        # accuracy_metrics_test.py::CategoricalAccuracyTest::test_config
        config = metrics.CategoricalAccuracy(name="categorical_accuracy").get_config()
        assert config["name"] == "categorical_accuracy"
        assert metrics.CategoricalAccuracy.from_config(config).name == "categorical_accuracy"

    def test_unweighted(self):
        # accuracy_metrics_test.py::CategoricalAccuracyTest::test_unweighted
        all_close(
            result_of(
                metrics.CategoricalAccuracy(),
                np.array([[0, 0, 1], [0, 1, 0]]),
                np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0]]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted(self):
        # accuracy_metrics_test.py::CategoricalAccuracyTest::test_weighted
        all_close(
            result_of(
                metrics.CategoricalAccuracy(),
                np.array([[0, 0, 1], [0, 1, 0]]),
                np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0]]),
                sample_weight=np.array([0.7, 0.3]),
            ),
            0.3,
            atol=1e-3,
        )


class TestSparseCategoricalAccuracy:
    def test_config(self):
        # accuracy_metrics_test.py::SparseCategoricalAccuracyTest::test_config
        name = "sparse_categorical_accuracy"
        config = metrics.SparseCategoricalAccuracy(name=name).get_config()
        assert config["name"] == name
        assert metrics.SparseCategoricalAccuracy.from_config(config).name == name

    def test_unweighted(self):
        # accuracy_metrics_test.py::SparseCategoricalAccuracyTest::test_unweighted
        all_close(
            result_of(
                metrics.SparseCategoricalAccuracy(),
                np.array([[2], [1]]),
                np.array([[0.1, 0.6, 0.3], [0.05, 0.95, 0]]),
            ),
            0.5,
            atol=1e-3,
        )

    def test_weighted(self):
        # accuracy_metrics_test.py::SparseCategoricalAccuracyTest::test_weighted
        all_close(
            result_of(
                metrics.SparseCategoricalAccuracy(),
                np.array([[2], [1]]),
                np.array([[0.1, 0.6, 0.3], [0.05, 0.95, 0]]),
                sample_weight=np.array([0.7, 0.3]),
            ),
            0.3,
            atol=1e-3,
        )

    def test_squeeze_y_true(self):
        # accuracy_metrics_test.py::SparseCategoricalAccuracyTest::test_squeeze_y_true
        y_pred = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
        all_close(
            result_of(metrics.SparseCategoricalAccuracy(), np.array([[0], [1], [2]]), y_pred),
            1.0,
            atol=1e-4,
        )

    def test_cast_y_pred_dtype(self):
        # accuracy_metrics_test.py::SparseCategoricalAccuracyTest::test_cast_y_pred_dtype
        # and test_cast_y_pred_to_match_y_true_dtype
        all_close(
            result_of(
                metrics.SparseCategoricalAccuracy(),
                np.array([0, 1], np.int64),
                np.array([[0.9, 0.1], [0.1, 0.9]], np.float32),
            ),
            1.0,
            atol=1e-4,
        )
        y_pred = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.9]], np.float64)
        all_close(
            result_of(metrics.SparseCategoricalAccuracy(), np.array([0, 1, 2], np.int32), y_pred),
            1.0,
            atol=1e-4,
        )

    def test_reshape_matches(self):
        # accuracy_metrics_test.py::SparseCategoricalAccuracyTest::test_reshape_matches
        y_pred = np.array([[[0.9, 0.1, 0.0], [0.8, 0.15, 0.05]]], dtype=np.float32)
        all_close(result_of(metrics.SparseCategoricalAccuracy(), np.array([[0], [0]]), y_pred), 1.0)


# -------------------------------------------------------------------- Sum and Mean
class TestSum:
    def test_config(self):
        # reduction_metrics_test.py::SumTest::test_config
        assert metrics.Sum.from_config(metrics.Sum(name="sum").get_config()).name == "sum"

    def test_values(self):
        # reduction_metrics_test.py::SumTest::test_unweighted, test_weighted,
        # test_weighted_nd, test_weighted_nd_broadcast
        all_close(result_of(metrics.Sum(), [1, 3, 5, 7]), 16.0, atol=1e-3)
        all_close(
            result_of(metrics.Sum(), [1, 3, 5, 7], sample_weight=[1, 1, 0, 0]), 4.0, atol=1e-3
        )
        all_close(
            result_of(metrics.Sum(), [[1, 3], [5, 7]], sample_weight=[[1, 1], [1, 0]]),
            9.0,
            atol=1e-3,
        )
        all_close(
            result_of(metrics.Sum(), [[1, 3], [5, 7]], sample_weight=[[1, 0]]), 6.0, atol=1e-3
        )


class TestMean:
    def test_config(self):
        # reduction_metrics_test.py::MeanTest::test_config
        assert metrics.Mean.from_config(metrics.Mean(name="mean").get_config()).name == "mean"

    def test_values(self):
        # reduction_metrics_test.py::MeanTest::test_unweighted, test_weighted,
        # test_weighted_negative_weights, test_weighted_nd, test_weighted_nd_broadcast
        all_close(result_of(metrics.Mean(), [1, 3, 5, 7]), 4.0, atol=1e-3)
        all_close(
            result_of(metrics.Mean(), [1, 3, 5, 7], sample_weight=[1, 1, 0, 0]), 2.0, atol=1e-3
        )
        all_close(
            result_of(metrics.Mean(), [1, 3, 5, 7], sample_weight=[-1, -1, 0, 0]), 2.0, atol=1e-3
        )
        all_close(
            result_of(metrics.Mean(), [[1, 3], [5, 7]], sample_weight=[[1, 1], [1, 0]]),
            3.0,
            atol=1e-3,
        )
        all_close(
            result_of(metrics.Mean(), [[1, 3], [5, 7]], sample_weight=[[1, 0]]), 3.0, atol=1e-3
        )

    def test_reset_state(self):
        # metric_test.py::MetricTest::test_end_to_end_flow: reset_state returns the metric
        # to 0
        m = metrics.Mean()
        m.update_state([1, 3, 5, 7])
        m.reset_state()
        assert float(m.result()) == 0.0


# ------------------------------------------------------------ MeanMetricWrapper etc.
MW_TRUE = np.array([[0, 1, 0, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]])
MW_PRED = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [1, 1, 1, 1, 1]])


def elementwise_mse(y_true, y_pred):
    return (np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64)) ** 2


class TestMeanMetricWrapper:
    def test_config(self):
        # reduction_metrics_test.py::MetricWrapperTest::test_config
        m = metrics.MeanMetricWrapper(fn=elementwise_mse, name="mse")
        revived = metrics.MeanMetricWrapper.from_config(m.get_config())
        assert revived.name == "mse"

    def test_values(self):
        # reduction_metrics_test.py::MetricWrapperTest::test_unweighted, test_weighted,
        # test_weighted_broadcast
        all_close(
            result_of(metrics.MeanMetricWrapper(fn=elementwise_mse), MW_TRUE, MW_PRED),
            0.5,
            atol=1e-5,
        )
        all_close(
            metrics.MeanMetricWrapper(fn=elementwise_mse)(
                MW_TRUE, MW_PRED, sample_weight=np.array([1.0, 1.5, 2.0, 2.5])
            ),
            0.54285,
            atol=1e-5,
        )
        all_close(
            metrics.MeanMetricWrapper(fn=elementwise_mse)(
                MW_TRUE, MW_PRED, sample_weight=np.array([[1.0, 0.0, 0.5, 0.0, 1.0]])
            ),
            0.45,
            atol=1e-5,
        )


class TestRegressionMetrics:
    @pytest.mark.parametrize("cls", [metrics.MeanSquaredError, metrics.MeanAbsoluteError])
    def test_values(self, cls):
        # regression_metrics_test.py::MeanSquaredErrorTest / MeanAbsoluteErrorTest::
        # test_unweighted and test_weighted (0/1 data: squared and absolute errors agree)
        all_close(result_of(cls(), MW_TRUE, MW_PRED), 0.5, atol=1e-5)
        all_close(
            cls()(MW_TRUE, MW_PRED, sample_weight=np.array([1.0, 1.5, 2.0, 2.5])),
            0.54285,
            atol=1e-5,
        )

    def test_config(self):
        # regression_metrics_test.py::MeanAbsoluteErrorTest::test_config
        m = metrics.MeanAbsoluteError(name="my_mae")
        assert metrics.MeanAbsoluteError.from_config(m.get_config()).name == "my_mae"


class TestGet:
    def test_get_method(self):
        # metric_test.py::MetricTest::test_get_method
        assert isinstance(metrics.get("mse"), metrics.MeanSquaredError)
        assert isinstance(metrics.get("mean_squared_error"), metrics.MeanSquaredError)
        assert isinstance(metrics.get("categorical_accuracy"), metrics.CategoricalAccuracy)
        assert metrics.get(None) is None
        with pytest.raises(ValueError):
            metrics.get("typo")


class TestAccuracyResolution:
    """``compile(metrics=["accuracy"])``: Keras 3 picks the accuracy from the shapes only
    (compile_utils.py::get_metric / is_binary_or_sparse_categorical), not from the loss."""

    def test_name_conversions(self):
        # compile_utils_test.py::TestCompileMetrics::test_name_conversions: "acc" and
        # "accuracy" on (3, 2) float targets are categorical accuracy, 1/3
        y_true = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
        y_pred = np.array([[0.4, 0.1], [0.2, 0.6], [0.6, 0.1]], dtype="float32")
        for name in ("acc", "accuracy"):
            m = metrics.resolve(name, None, y_true, y_pred)
            assert m.name == name
            all_close(result_of(m, y_true, y_pred), 0.333333)

    def test_loss_does_not_choose(self):
        # Same inputs with binary cross-entropy compiled: Keras 3's get_metric never looks
        # at the loss, so the (3, 2) predictions still get categorical accuracy (1/3);
        # element-wise binary accuracy would give 0.5.
        from metalearn.keras import losses

        y_true = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
        y_pred = np.array([[0.4, 0.1], [0.2, 0.6], [0.6, 0.1]], dtype="float32")
        m = metrics.resolve("accuracy", losses.BinaryCrossentropy(), y_true, y_pred)
        all_close(result_of(m, y_true, y_pred), 0.333333)

    @pytest.mark.parametrize(
        "y_true_shape,y_pred_shape,cls",
        [
            ((4, 1), (4, 1), "BinaryAccuracy"),
            ((4,), (4, 3), "SparseCategoricalAccuracy"),
            ((4, 1), (4, 3), "SparseCategoricalAccuracy"),
            ((4, 3), (4, 3), "CategoricalAccuracy"),
        ],
    )
    def test_shape_rule(self, y_true_shape, y_pred_shape, cls):
        # compile_utils.py::is_binary_or_sparse_categorical: binary when the prediction has
        # one unit, sparse when the labels have lower rank or one column against several
        m = metrics.resolve(
            "accuracy", None, np.zeros(y_true_shape), np.zeros(y_pred_shape, np.float32)
        )
        assert type(m).__name__ == cls
