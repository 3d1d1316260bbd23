"""Losses against the expected values of Keras 3's tests.

Sources: ``keras/src/losses/losses_test.py`` (per class: ``test_unweighted``,
``test_scalar_weighted`` …) and ``keras/src/losses/loss_test.py`` (the ``Loss`` base:
reductions, sample weights, rank matching). Inputs and numbers are Keras'; each
assertion names the Keras test it holds us to.
"""

import numpy as np
import pytest

from metalearn.keras import losses

from ._helpers import all_close, almost_equal, assert_config_round_trip

# The regression tests' shared inputs (MeanSquaredErrorTest / MeanAbsoluteErrorTest)
Y_TRUE = np.array([[1, 9, 2], [-5, -2, 6]])
Y_PRED = np.array([[4, 8, 12], [8, 1, 3]], dtype="float32")


def value(t):
    return np.asarray(t, dtype=np.float64)


# ---------------------------------------------------------------- MeanSquaredError
class TestMeanSquaredError:
    def test_config(self):
        # losses_test.py::MeanSquaredErrorTest::test_config
        assert_config_round_trip(
            losses.MeanSquaredError(name="mymse"), losses.serialize, losses.get
        )

    def test_base_function_reduction(self):
        # losses_test.py::MeanSquaredErrorTest::test_base_function_reduction: y_true (3,)
        # against y_pred (3, 1) gives one value per sample, shape (3,). The values follow
        # from Keras' squeeze_or_expand_to_same_rank (loss_test.py::test_squeeze_or_expand):
        # y_true becomes (3, 1), so they are (4-3)^2, (8-0)^2, (12-1)^2.
        loss = losses.mean_squared_error(np.array([4, 8, 12]), np.array([[3], [0], [1]]))
        assert tuple(loss.shape) == (3,)
        all_close(value(loss), [1.0, 64.0, 121.0])

    def test_all_correct_unweighted(self):
        # losses_test.py::MeanSquaredErrorTest::test_all_correct_unweighted
        y = np.array([[4, 8, 12], [8, 1, 3]])
        almost_equal(value(losses.MeanSquaredError()(y, y.astype("float32"))), 0.0)

    def test_unweighted(self):
        # losses_test.py::MeanSquaredErrorTest::test_unweighted
        almost_equal(value(losses.MeanSquaredError()(Y_TRUE, Y_PRED)), 49.5)

    def test_scalar_weighted(self):
        # losses_test.py::MeanSquaredErrorTest::test_scalar_weighted
        almost_equal(value(losses.MeanSquaredError()(Y_TRUE, Y_PRED, sample_weight=2.3)), 113.85)

    def test_sample_weighted(self):
        # losses_test.py::MeanSquaredErrorTest::test_sample_weighted
        sw = np.array([[1.2], [3.4]])
        almost_equal(value(losses.MeanSquaredError()(Y_TRUE, Y_PRED, sample_weight=sw)), 767.8 / 6)

    def test_timestep_weighted(self):
        # losses_test.py::MeanSquaredErrorTest::test_timestep_weighted
        y_true = np.asarray([1, 9, 2, -5, -2, 6]).reshape(2, 3, 1)
        y_pred = np.asarray([4, 8, 12, 8, 1, 3]).reshape(2, 3, 1).astype("float32")
        sw = np.array([3, 6, 5, 0, 4, 2]).reshape((2, 3))
        almost_equal(value(losses.MeanSquaredError()(y_true, y_pred, sample_weight=sw)), 97.833336)

    def test_zero_weighted(self):
        # losses_test.py::MeanSquaredErrorTest::test_zero_weighted
        almost_equal(value(losses.MeanSquaredError()(Y_TRUE, Y_PRED, sample_weight=0)), 0.0)

    def test_no_reduction(self):
        # losses_test.py::MeanSquaredErrorTest::test_no_reduction
        loss = losses.MeanSquaredError(reduction=None)(Y_TRUE, Y_PRED, sample_weight=2.3)
        almost_equal(value(loss), [84.3333, 143.3666])

    def test_sum_reduction(self):
        # losses_test.py::MeanSquaredErrorTest::test_sum_reduction
        loss = losses.MeanSquaredError(reduction="sum")(Y_TRUE, Y_PRED, sample_weight=2.3)
        almost_equal(value(loss), 227.69998)


# --------------------------------------------------------------- MeanAbsoluteError
class TestMeanAbsoluteError:
    def test_config(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_config
        assert_config_round_trip(
            losses.MeanAbsoluteError(name="myname"), losses.serialize, losses.get
        )

    def test_all_correct_unweighted(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_all_correct_unweighted
        y = np.array([[4, 8, 12], [8, 1, 3]])
        almost_equal(value(losses.MeanAbsoluteError()(y, y.astype("float32"))), 0.0)

    def test_unweighted(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_unweighted
        almost_equal(value(losses.MeanAbsoluteError()(Y_TRUE, Y_PRED)), 5.5)

    def test_scalar_weighted(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_scalar_weighted
        almost_equal(value(losses.MeanAbsoluteError()(Y_TRUE, Y_PRED, sample_weight=2.3)), 12.65)

    def test_sample_weighted(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_sample_weighted
        sw = np.array([[1.2], [3.4]])
        almost_equal(value(losses.MeanAbsoluteError()(Y_TRUE, Y_PRED, sample_weight=sw)), 81.4 / 6)

    def test_timestep_weighted(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_timestep_weighted
        y_true = np.asarray([1, 9, 2, -5, -2, 6]).reshape(2, 3, 1)
        y_pred = np.asarray([4, 8, 12, 8, 1, 3]).reshape(2, 3, 1).astype("float32")
        sw = np.array([3, 6, 5, 0, 4, 2]).reshape((2, 3))
        almost_equal(value(losses.MeanAbsoluteError()(y_true, y_pred, sample_weight=sw)), 13.833333)

    def test_zero_weighted(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_zero_weighted
        almost_equal(value(losses.MeanAbsoluteError()(Y_TRUE, Y_PRED, sample_weight=0)), 0.0)

    def test_no_reduction(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_no_reduction
        loss = losses.MeanAbsoluteError(reduction=None)(Y_TRUE, Y_PRED, sample_weight=2.3)
        almost_equal(value(loss), [10.7333, 14.5666])

    def test_sum_reduction(self):
        # losses_test.py::MeanAbsoluteErrorTest::test_sum_reduction
        loss = losses.MeanAbsoluteError(reduction="sum")(Y_TRUE, Y_PRED, sample_weight=2.3)
        almost_equal(value(loss), 25.29999)


# ------------------------------------------------------------- BinaryCrossentropy
BCE_ONE_HOT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype="float32")
BCE_Y = np.array([1, 0, 1, 0]).reshape([2, 2])
BCE_P = np.array([1, 1, 1, 0], dtype="float32").reshape([2, 2])
BCE_LOGIT_Y = np.array([[1, 0, 1], [0, 1, 1]])
BCE_LOGITS = np.array([[10.0, -10.0, 10.0], [10.0, 10.0, -10.0]], dtype="float32")


class TestBinaryCrossentropy:
    def test_config(self):
        # losses_test.py::BinaryCrossentropyTest::test_config
        assert_config_round_trip(
            losses.BinaryCrossentropy(name="bce", axis=-1), losses.serialize, losses.get
        )

    def test_all_correct_unweighted(self):
        # losses_test.py::BinaryCrossentropyTest::test_all_correct_unweighted
        almost_equal(value(losses.BinaryCrossentropy()(BCE_ONE_HOT, BCE_ONE_HOT)), 0.0)
        logits = np.array(
            [[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0], [-10.0, -10.0, 10.0]], dtype="float32"
        )
        almost_equal(value(losses.BinaryCrossentropy(from_logits=True)(BCE_ONE_HOT, logits)), 0.0)

    def test_unweighted(self):
        # losses_test.py::BinaryCrossentropyTest::test_unweighted
        y_pred = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.1, 0.2, 0.7]], dtype="float32")
        all_close(value(losses.BinaryCrossentropy()(BCE_ONE_HOT, y_pred)), 0.20046903)
        # probabilities of exactly 0 and 1: Keras 3 clips p to [eps, 1 - eps] before the log
        almost_equal(value(losses.BinaryCrossentropy()(BCE_Y, BCE_P)), 3.98559)
        almost_equal(
            value(losses.BinaryCrossentropy(from_logits=True)(BCE_LOGIT_Y, BCE_LOGITS)), 3.3333
        )

    def test_scalar_weighted(self):
        # losses_test.py::BinaryCrossentropyTest::test_scalar_weighted
        almost_equal(value(losses.BinaryCrossentropy()(BCE_Y, BCE_P, sample_weight=2.3)), 9.1668)
        loss = losses.BinaryCrossentropy(from_logits=True)(
            BCE_LOGIT_Y, BCE_LOGITS, sample_weight=2.3
        )
        almost_equal(value(loss), 7.666)

    def test_sample_weighted(self):
        # losses_test.py::BinaryCrossentropyTest::test_sample_weighted
        sw = np.array([1.2, 3.4]).reshape((2, 1))
        almost_equal(value(losses.BinaryCrossentropy()(BCE_Y, BCE_P, sample_weight=sw)), 4.7827)
        loss = losses.BinaryCrossentropy(from_logits=True)(
            BCE_LOGIT_Y, BCE_LOGITS, sample_weight=np.array([4, 3])
        )
        almost_equal(value(loss), 10.0)

    def test_no_reduction(self):
        # losses_test.py::BinaryCrossentropyTest::test_no_reduction
        loss = losses.BinaryCrossentropy(from_logits=True, reduction=None)(BCE_LOGIT_Y, BCE_LOGITS)
        all_close(value(loss), [0.0, 6.666], atol=1e-3)

    def test_label_smoothing(self):
        # losses_test.py::BinaryCrossentropyTest::test_label_smoothing
        logits = np.array([[10.0, -10.0, -10.0]], dtype="float32")
        loss = losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1)(
            np.array([[1, 0, 1]]), logits
        )
        almost_equal(value(loss), (10.0 + 5.0 * 0.1) / 3.0)

    def test_shape_mismatch(self):
        # losses_test.py::BinaryCrossentropyTest::test_shape_mismatch: (3, 1) labels against
        # (3, 3) predictions cannot be matched; Keras raises "must have the same shape"
        y_true = np.array([[0], [1], [2]])
        y_pred = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], "float32")
        with pytest.raises(ValueError):
            losses.BinaryCrossentropy()(y_true, y_pred)

    def test_rank_one_targets_against_one_unit(self):
        # Keras' squeeze_or_expand_to_same_rank (loss_test.py::test_squeeze_or_expand): (4,)
        # labels against (4, 1) probabilities are the same 4 samples, so the loss is the
        # mean of -log p for the right class (the example; Keras 3 gives 0.2990).
        p = np.array([[0.9], [0.2], [0.6], [0.3]], dtype="float32")
        expected = -np.mean(np.log([0.9, 0.8, 0.6, 0.7]))
        almost_equal(value(losses.BinaryCrossentropy()(np.array([1, 0, 1, 0]), p)), expected)


# -------------------------------------------------------- CategoricalCrossentropy
CCE_Y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
CCE_P = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], dtype="float32")
CCE_LOGITS = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]], dtype="float32")


class TestCategoricalCrossentropy:
    def test_config(self):
        # losses_test.py::CategoricalCrossentropyTest::test_config
        assert_config_round_trip(
            losses.CategoricalCrossentropy(name="cce", axis=-1), losses.serialize, losses.get
        )

    def test_all_correct_unweighted(self):
        # losses_test.py::CategoricalCrossentropyTest::test_all_correct_unweighted
        y = CCE_Y.astype("int64")
        almost_equal(value(losses.CategoricalCrossentropy()(y, y.astype("float32"))), 0.0)
        logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], "float32")
        almost_equal(value(losses.CategoricalCrossentropy(from_logits=True)(y, logits)), 0.0)

    def test_unweighted(self):
        # losses_test.py::CategoricalCrossentropyTest::test_unweighted
        almost_equal(value(losses.CategoricalCrossentropy()(CCE_Y, CCE_P)), 0.3239)
        almost_equal(
            value(losses.CategoricalCrossentropy(from_logits=True)(CCE_Y, CCE_LOGITS)), 0.0573
        )

    def test_scalar_weighted(self):
        # losses_test.py::CategoricalCrossentropyTest::test_scalar_weighted
        almost_equal(
            value(losses.CategoricalCrossentropy()(CCE_Y, CCE_P, sample_weight=2.3)), 0.7449
        )
        loss = losses.CategoricalCrossentropy(from_logits=True)(
            CCE_Y, CCE_LOGITS, sample_weight=2.3
        )
        almost_equal(value(loss), 0.1317)

    def test_sample_weighted(self):
        # losses_test.py::CategoricalCrossentropyTest::test_sample_weighted
        sw = np.array([[1.2], [3.4], [5.6]]).reshape((3, 1))
        almost_equal(
            value(losses.CategoricalCrossentropy()(CCE_Y, CCE_P, sample_weight=sw)), 1.0696
        )
        loss = losses.CategoricalCrossentropy(from_logits=True)(CCE_Y, CCE_LOGITS, sample_weight=sw)
        almost_equal(value(loss), 0.31829)

    def test_no_reduction(self):
        # losses_test.py::CategoricalCrossentropyTest::test_no_reduction
        loss = losses.CategoricalCrossentropy(from_logits=True, reduction=None)(CCE_Y, CCE_LOGITS)
        all_close(value(loss), (0.001822, 0.000459, 0.169846))

    def test_label_smoothing(self):
        # losses_test.py::CategoricalCrossentropyTest::test_label_smoothing (and _ndarray)
        logits = np.array([[100.0, -100.0, -100.0]], dtype="float32")
        loss = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
            np.array([[1, 0, 0]]), logits
        )
        almost_equal(value(loss), 400.0 * 0.1 / 3.0)

    def test_shape_mismatch(self):
        # losses_test.py::CategoricalCrossentropyTest::test_shape_mismatch
        y_true = np.array([[0], [1], [2]])
        with pytest.raises(ValueError):
            losses.CategoricalCrossentropy()(y_true, CCE_P)


# -------------------------------------------------- SparseCategoricalCrossentropy
class TestSparseCategoricalCrossentropy:
    def test_config(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_config
        assert_config_round_trip(
            losses.SparseCategoricalCrossentropy(name="scce"), losses.serialize, losses.get
        )

    def test_all_correct_unweighted(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_all_correct_unweighted
        y = np.array([[0], [1], [2]], dtype="int64")
        p = np.eye(3, dtype="float32")
        almost_equal(value(losses.SparseCategoricalCrossentropy()(y, p)), 0.0)
        logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], "float32")
        almost_equal(value(losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)), 0.0)

    def test_unweighted(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_unweighted
        y = np.array([0, 1, 2])
        almost_equal(value(losses.SparseCategoricalCrossentropy()(y, CCE_P)), 0.3239)
        loss = losses.SparseCategoricalCrossentropy(from_logits=True)(y, CCE_LOGITS)
        almost_equal(value(loss), 0.0573)

    def test_scalar_weighted(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_scalar_weighted
        y = np.array([[0], [1], [2]])
        almost_equal(
            value(losses.SparseCategoricalCrossentropy()(y, CCE_P, sample_weight=2.3)), 0.7449
        )
        loss = losses.SparseCategoricalCrossentropy(from_logits=True)(
            y, CCE_LOGITS, sample_weight=2.3
        )
        almost_equal(value(loss), 0.1317)

    def test_sample_weighted(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_sample_weighted
        y = np.array([[0], [1], [2]])
        sw = np.array([[1.2], [3.4], [5.6]]).reshape((3, 1))
        almost_equal(
            value(losses.SparseCategoricalCrossentropy()(y, CCE_P, sample_weight=sw)), 1.0696
        )
        loss = losses.SparseCategoricalCrossentropy(from_logits=True)(
            y, CCE_LOGITS, sample_weight=sw
        )
        almost_equal(value(loss), 0.31829)

    def test_no_reduction(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_no_reduction
        y = np.array([[0], [1], [2]])
        loss = losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(y, CCE_LOGITS)
        all_close(value(loss), (0.001822, 0.000459, 0.169846))

    def test_binary_segmentation(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_binary_segmentation:
        # (4, 4) labels against (4, 4, 2) probabilities; two pixels are wrong
        y = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
        p = np.eye(2, dtype="float32")[y]
        all_close(value(losses.SparseCategoricalCrossentropy()(y, p)), 0.0)
        p[0, 3] = [0.2, 0.8]
        p[3, 3] = [0.6, 0.4]
        all_close(
            value(losses.SparseCategoricalCrossentropy()(y, p)), (-np.log(0.2) - np.log(0.4)) / 16.0
        )

    def test_multi_class_segmentation(self):
        # losses_test.py::SparseCategoricalCrossentropyTest::test_multi_class_segmentation
        y = np.array([[0, 1, 2, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
        p = np.eye(3, dtype="float32")[y]
        all_close(value(losses.SparseCategoricalCrossentropy()(y, p)), 0.0)
        p[0, 3] = [0.2, 0.0, 0.8]
        p[1, 0] = [0.7, 0.3, 0.0]
        p[3, 2] = [0.5, 0.5, 0.0]
        all_close(
            value(losses.SparseCategoricalCrossentropy()(y, p)),
            (-np.log(0.2) - np.log(0.3) - np.log(0.5)) / 16.0,
        )

    def test_ignore_class_is_refused(self):
        # DELIBERATE DIFFERENCE (losses_test.py::SparseCategoricalCrossentropyTest::
        # test_ignore_class gives [[0.0, 1.480129]]): metalearn does not implement
        # ignore_class (it needs masking through the reduction); it refuses it loudly
        # instead of ignoring the argument.
        with pytest.raises(NotImplementedError, match="ignore_class"):
            losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1, reduction=None)(
                np.array([[-1, 2]]),
                np.array([[[0.854, 0.698, 0.598], [0.088, 0.86, 0.018]]], "float32"),
            )


# ------------------------------------------------------------------ the Loss base
class SquaredDifference(losses.Loss):
    """loss_test.py's ExampleLoss: an element-wise loss, reduced by the base class."""

    def call(self, y_true, y_pred):
        return (np.asarray(y_true, np.float32) - np.asarray(y_pred, np.float32)) ** 2


LT_TRUE = np.array([1.0, 0.0, 1.0, 0.0])
LT_PRED = np.array([0.1, 0.2, 0.3, 0.4])
LT_SW = np.array([0.4, 0.3, 0.2, 0.1])


class TestLossBase:
    def test_reduction(self):
        # loss_test.py::LossTest::test_reduction
        sq = (LT_TRUE - LT_PRED) ** 2
        all_close(value(SquaredDifference(reduction=None)(LT_TRUE, LT_PRED)), sq)
        all_close(value(SquaredDifference(reduction="sum")(LT_TRUE, LT_PRED)), np.sum(sq))
        all_close(
            value(SquaredDifference(reduction="sum_over_batch_size")(LT_TRUE, LT_PRED)),
            np.sum(sq) / 4,
        )
        with pytest.raises(ValueError):
            SquaredDifference(reduction="abc")

    def test_sample_weight(self):
        # loss_test.py::LossTest::test_sample_weight: sum(w * l) / N, and 0 (not NaN) when
        # every weight is 0
        loss = SquaredDifference()(LT_TRUE, LT_PRED, sample_weight=LT_SW)
        all_close(value(loss), np.sum(LT_SW * (LT_TRUE - LT_PRED) ** 2) / 4)
        all_close(value(SquaredDifference()(LT_TRUE, LT_PRED, sample_weight=np.zeros(4))), 0.0)

    def test_rank_adjustment_of_sample_weight(self):
        # loss_test.py::LossTest::test_rank_adjustment ("sample_weight" case, without the
        # mask metalearn does not have): a (4, 1) weight against (4,) values is squeezed
        loss = SquaredDifference()(LT_TRUE, LT_PRED, sample_weight=LT_SW[:, None])
        all_close(value(loss), np.sum(LT_SW * (LT_TRUE - LT_PRED) ** 2) / 4)

    def test_mixed_dtypes(self):
        # loss_test.py::LossTest::test_mixed_dtypes: int32 targets, float64 weights, a
        # float32 result
        loss = SquaredDifference()(
            LT_TRUE.astype("int32"),
            LT_PRED.astype("float32"),
            sample_weight=LT_SW.astype("float64"),
        )
        assert np.asarray(loss).dtype == np.float32
        all_close(value(loss), np.sum(LT_SW * (LT_TRUE.astype("int32") - LT_PRED) ** 2) / 4)

    def test_get_method(self):
        # loss_test.py::LossTest::test_get_method
        assert losses.get("mse") is losses.mean_squared_error
        assert losses.get(None) is None
        with pytest.raises(ValueError):
            losses.get("typo")

    @pytest.mark.parametrize(
        "fn",
        [
            losses.mean_squared_error,
            losses.mean_absolute_error,
            losses.MeanSquaredError(reduction=None),
            losses.MeanAbsoluteError(reduction=None),
            losses.BinaryCrossentropy(reduction=None),
        ],
        ids=[
            "mean_squared_error",
            "mean_absolute_error",
            "MeanSquaredError",
            "MeanAbsoluteError",
            "BinaryCrossentropy",
        ],
    )
    def test_squeeze_or_expand(self, fn):
        # loss_test.py::LossTest::test_squeeze_or_expand: (3,) against (3, 1) both become
        # (3, 1); (3, 2) against (3, 2, 1) both become (3, 2). Keras applies it in every
        # Loss class (losses.py::LossFunctionWrapper.call) and in the MSE / MAE functions,
        # so a per-sample loss is (3,) in either argument order and equals the same-shape
        # loss.
        rng = np.random.default_rng(0)
        a = rng.uniform(0.1, 0.9, (3,)).astype("float32")
        b = rng.uniform(0.1, 0.9, (3, 1)).astype("float32")
        assert tuple(fn(a, b).shape) == (3,)
        all_close(value(fn(a, b)), value(fn(a[:, None], b)), atol=1e-6)
        all_close(value(fn(b, a)), value(fn(b, a[:, None])), atol=1e-6)
        c = rng.uniform(0.1, 0.9, (3, 2)).astype("float32")
        d = rng.uniform(0.1, 0.9, (3, 2, 1)).astype("float32")
        assert tuple(fn(c, d).shape) == (3,)
        all_close(value(fn(c, d)), value(fn(c, d[..., 0])), atol=1e-6)

    @pytest.mark.parametrize("fn", [losses.binary_crossentropy, losses.categorical_crossentropy])
    @pytest.mark.parametrize("shapes", [((3,), (3, 1)), ((3, 1), (3,)), ((3, 2), (3, 2, 1))])
    def test_crossentropy_functions_refuse_other_shapes(self, fn, shapes):
        # The cross-entropy functions do not match ranks in Keras 3: ops.binary_crossentropy
        # and ops.categorical_crossentropy raise ValueError "Arguments `target` and `output`
        # must have the same shape" (the test_shape_mismatch tests above, for the classes
        # whose shapes cannot be matched either)
        rng = np.random.default_rng(0)
        with pytest.raises(ValueError):
            fn(
                rng.uniform(0.1, 0.9, shapes[0]).astype("float32"),
                rng.uniform(0.1, 0.9, shapes[1]).astype("float32"),
            )
