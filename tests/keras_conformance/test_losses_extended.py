"""Keras 3 conformance of the losses added for issue 22 (Huber, LogCosh, KLDivergence,
Poisson, CosineSimilarity, Hinge, SquaredHinge, CategoricalHinge, CategoricalFocal- and
BinaryFocalCrossentropy). Expected values and the formulas they are built from come from
keras-team/keras ``keras/src/losses/losses_test.py`` (3.15.1), cited by test class."""

import json

import numpy as np
import pytest

from metalearn.keras import losses

from ._helpers import all_close, almost_equal

YT = np.array([[1, 9, 2], [-5, -2, 6]], dtype=np.float32)  # the regression fixture
YP = np.array([[4, 8, 12], [8, 1, 3]], dtype=np.float32)
HT = np.array([[0.0, 1.0], [0.0, 0.0]])  # HingeTest's
HP = np.array([[0.6, 0.4], [0.4, 0.6]])
CT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # the categorical fixture
CP = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], np.float32)
LOGITS = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]])


def v(x):
    return np.asarray(x, dtype=np.float64)


# -------------------------------------------------------------- HingeTest & friends
@pytest.mark.parametrize(
    "cls, mean, total, none, w_mean, w_sum, w_none",
    [
        (losses.Hinge, 1.3, 2.6, [1.1, 1.5], 0.55, 1.1, [1.1, 0.0]),
        (losses.SquaredHinge, 1.86, 3.72, [1.46, 2.26], 0.73, 1.46, [1.46, 0.0]),
        (losses.CategoricalHinge, 1.4, 2.8, [1.2, 1.6], 0.6, 1.2, [1.2, 0.0]),
    ],
)
def test_hinge_family(cls, mean, total, none, w_mean, w_sum, w_none):
    # HingeTest / SquaredHingeTest / CategoricalHingeTest: test_unweighted, test_weighted,
    # test_zero_weighted, and the bad reduction
    almost_equal(v(cls(reduction="sum_over_batch_size")(HT, HP)), mean)
    almost_equal(v(cls(reduction="sum")(HT, HP)), total)
    all_close(v(cls(reduction=None)(HT, HP)), none)
    sw = [1, 0]
    almost_equal(v(cls(reduction="sum_over_batch_size")(HT, HP, sample_weight=sw)), w_mean)
    almost_equal(v(cls(reduction="sum")(HT, HP, sample_weight=sw)), w_sum)
    almost_equal(v(cls(reduction=None)(HT, HP, sample_weight=sw)), w_none)
    assert float(v(cls()(HT, HP, sample_weight=0.0))) == 0.0
    with pytest.raises(ValueError, match="Invalid value for argument"):
        cls(reduction="abc")


# -------------------------------------------------------------- CosineSimilarityTest
def _l2(x, axis):
    return x / np.sqrt(np.maximum(np.sum(np.square(x), axis=axis, keepdims=True), 1e-12))


def test_cosine_similarity():
    expected = np.sum(_l2(v(YT), 1) * _l2(v(YP), 1), axis=1)
    obj = losses.CosineSimilarity()
    almost_equal(v(obj(YT, YP)), -np.mean(expected))  # test_unweighted
    almost_equal(v(obj(YT, YP, sample_weight=2.3)), -np.mean(expected * 2.3))
    sw = np.asarray([1.2, 3.4])
    almost_equal(v(obj(YT, YP, sample_weight=sw)), -np.mean(expected * sw))
    almost_equal(v(obj(YT, YP, sample_weight=0)), 0.0)
    almost_equal(v(losses.CosineSimilarity(axis=1)(YT, YP)), -np.mean(expected))  # test_axis
    # test_timestep_weighted
    t3, p3 = YT.reshape(2, 3, 1), YP.reshape(2, 3, 1)
    sw3 = np.asarray([3, 6, 5, 0, 4, 2]).reshape(2, 3)
    e3 = np.sum(_l2(v(t3), 2) * _l2(v(p3), 2), axis=2)
    almost_equal(v(obj(t3, p3, sample_weight=sw3)), -np.mean(e3 * sw3))
    # test_config: axis is not in Keras' config
    c = losses.CosineSimilarity(axis=2, reduction="sum", name="cosine_loss")
    assert c.name == "cosine_loss" and c.reduction == "sum"
    assert c.get_config() == {"name": "cosine_loss", "reduction": "sum"}


# -------------------------------------------------------------- HuberLossTest
def _huber(t, p, delta=1.0):
    a = np.abs(p - t)
    q = np.minimum(a, delta)
    return 0.5 * q * q + delta * (a - q)


HUT = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
HUP = np.array([[0.9, 0.2, 0.2], [0.8, 0.4, 0.6]])


def test_huber():
    e = _huber(HUT, HUP)
    h = losses.Huber()
    almost_equal(v(h(HUT, HUT)), 0.0)  # test_all_correct
    almost_equal(v(h(HUT, HUP)), np.sum(e) / 6)  # test_unweighted
    almost_equal(v(h(HUT, HUP, sample_weight=2.3)), 2.3 * np.sum(e) / 6)
    sw = np.array([[1.2], [3.4]])
    almost_equal(
        v(h(HUT, HUP, sample_weight=sw)),
        np.sum(e * np.asarray([1.2, 1.2, 1.2, 3.4, 3.4, 3.4]).reshape(2, 3)) / 6,
    )
    t3, p3 = HUT.reshape(2, 3, 1), HUP.reshape(2, 3, 1)
    sw3 = np.array([3, 6, 5, 0, 4, 2]).reshape(2, 3, 1)
    almost_equal(v(h(t3, p3, sample_weight=sw3)), np.sum(_huber(t3, p3) * sw3) / 6)
    almost_equal(v(h(HUT, HUP, sample_weight=0)), 0.0)
    e8 = _huber(HUT, HUP, 0.8)  # test_non_default_delta
    almost_equal(v(losses.Huber(delta=0.8)(HUT, HUP, sample_weight=2.3)), 2.3 * np.sum(e8) / 6)
    c = losses.Huber(reduction="sum", name="huber")  # test_config
    assert c.get_config() == {"name": "huber", "reduction": "sum"}


# -------------------------------------------------------------- LogCoshTest
def test_log_cosh():
    err = v(YP) - v(YT)
    e = np.log((np.exp(err) + np.exp(-err)) / 2)
    obj = losses.LogCosh()
    almost_equal(v(obj(YT, YP)), np.sum(e) / 6)
    almost_equal(v(obj(YT, YP, sample_weight=2.3)), 2.3 * np.sum(e) / 6)
    sw = np.asarray([1.2, 3.4])
    almost_equal(
        v(obj(YT, YP, sample_weight=sw)),
        np.sum(e * np.asarray([1.2, 1.2, 1.2, 3.4, 3.4, 3.4]).reshape(2, 3)) / 6,
    )
    sw3 = np.array([3, 6, 5, 0, 4, 2]).reshape(2, 3, 1)
    almost_equal(
        v(obj(YT.reshape(2, 3, 1), YP.reshape(2, 3, 1), sample_weight=sw3)),
        np.sum(e.reshape(2, 3, 1) * sw3) / 6,
    )
    almost_equal(v(obj(YT, YP, sample_weight=0)), 0.0)
    c = losses.LogCosh(reduction="sum", name="logcosh_loss")
    assert c.get_config() == {"name": "logcosh_loss", "reduction": "sum"}


# -------------------------------------------------------------- KLDivergenceTest
KP = np.asarray([0.4, 0.9, 0.12, 0.36, 0.3, 0.4], np.float32).reshape(2, 3)
KT = np.asarray([0.5, 0.8, 0.12, 0.7, 0.43, 0.8], np.float32).reshape(2, 3)


def test_kl_divergence():
    e = v(KT) * np.log(v(KT) / v(KP))
    k = losses.KLDivergence()
    almost_equal(v(k(KT, KP)), np.sum(e) / 2)
    almost_equal(v(k(KT, KP, sample_weight=2.3)), 2.3 * np.sum(e) / 2)
    sw = np.asarray([1.2, 3.4], np.float32).reshape(2, 1)
    almost_equal(v(k(KT, KP, sample_weight=sw)), np.sum(e * np.repeat(v(sw), 3, 1)) / 2)
    t3, p3 = KT.reshape(2, 3, 1), KP.reshape(2, 3, 1)
    sw3 = np.asarray([3, 6, 5, 0, 4, 2]).reshape(2, 3)
    e3 = np.sum(v(t3) * np.log(v(t3) / v(p3)), axis=-1)
    almost_equal(v(k(t3, p3, sample_weight=sw3)), np.sum(e3 * sw3) / 6)
    almost_equal(v(k(KT, KP, sample_weight=0)), 0.0)
    c = losses.KLDivergence(reduction="sum", name="kld")
    assert c.name == "kld" and c.reduction == "sum"


# -------------------------------------------------------------- PoissonTest
PP = np.asarray([1, 9, 2, 5, 2, 6], np.float32).reshape(2, 3)
PT = np.asarray([4, 8, 12, 8, 1, 3], np.float32).reshape(2, 3)


def test_poisson():
    e = v(PP) - v(PT) * np.log(v(PP))
    obj = losses.Poisson()
    almost_equal(v(obj(PT, PP)), np.sum(e) / 6)
    almost_equal(v(obj(PT, PP, sample_weight=2.3)), 2.3 * np.sum(e) / 6)
    sw = np.asarray([1.2, 3.4]).reshape(2, 1)
    almost_equal(v(obj(PT, PP, sample_weight=sw)), np.sum(e * np.repeat(sw, 3, 1)) / 6)
    sw3 = np.asarray([3, 6, 5, 0, 4, 2]).reshape(2, 3, 1)
    almost_equal(
        v(obj(PT.reshape(2, 3, 1), PP.reshape(2, 3, 1), sample_weight=sw3.reshape(2, 3))),
        np.sum(e.reshape(2, 3, 1) * sw3) / 6,
    )
    almost_equal(v(obj(PT, PP, sample_weight=0)), 0.0)


# -------------------------------------------------------------- CategoricalFocalCrossentropyTest
def test_categorical_focal_crossentropy():
    cls = losses.CategoricalFocalCrossentropy
    eye = np.eye(3, dtype=np.float32)
    almost_equal(v(cls(alpha=0.25, gamma=2.0)(CT, eye)), 0.0)  # test_all_correct_unweighted
    almost_equal(v(cls(from_logits=True)(CT, 10 * eye)), 0.0)
    almost_equal(v(cls()(CT, CP)), 0.02059)  # test_unweighted
    almost_equal(v(cls(from_logits=True)(CT, LOGITS)), 0.000345)
    almost_equal(v(cls()(CT, CP, sample_weight=2.3)), 0.047368)  # test_scalar_weighted
    almost_equal(v(cls(from_logits=True)(CT, LOGITS, sample_weight=2.3)), 0.000794, 4)
    sw = np.array([[1.2], [3.4], [5.6]])
    almost_equal(v(cls()(CT, CP, sample_weight=sw)), 0.06987)  # test_sample_weighted
    almost_equal(v(cls(from_logits=True)(CT, LOGITS, sample_weight=sw)), 0.001933)
    all_close(  # test_no_reduction
        v(cls(from_logits=True, reduction=None)(CT, LOGITS)),
        (1.5096224e-09, 2.4136547e-11, 1.0360638e-03),
    )
    almost_equal(  # test_label_smoothing
        v(cls(from_logits=True, label_smoothing=0.1)(np.array([[1, 0, 0]]), [[4.9, -0.5, 2.05]])),
        0.06685,
    )


def test_binary_focal_crossentropy():
    cls = losses.BinaryFocalCrossentropy
    eye = np.eye(3, dtype=np.float32)
    almost_equal(v(cls(gamma=1.5)(eye, eye)), 0.0)  # test_all_correct_unweighted
    almost_equal(v(cls(gamma=2.0, from_logits=True)(eye, 200 * eye - 100)), 0.0)
    t = np.asarray([1, 0, 1, 0]).reshape(2, 2)
    p = np.asarray([0.9, 0.8, 0.7, 0.2], np.float32).reshape(2, 2)
    tl = np.array([[1, 1, 0], [0, 1, 0]], np.float32)
    lg = np.array([[1.5, -2.7, 2.9], [-3.8, 1.2, -4.5]])
    almost_equal(v(cls(gamma=2.0)(t, p)), 0.268)  # test_unweighted
    almost_equal(v(cls(gamma=3.0, from_logits=True)(tl, lg)), 0.799)
    almost_equal(v(cls(gamma=2.0)(t, p, sample_weight=1.23)), 0.3296)  # test_scalar_weighted
    almost_equal(v(cls(gamma=3.0, from_logits=True)(tl, lg, sample_weight=3.21)), 2.565)
    sw = np.array([1.2, 3.4]).reshape(2, 1)
    almost_equal(v(cls(gamma=2.0)(t, p, sample_weight=sw)), 0.34415)  # test_sample_weighted
    almost_equal(v(cls(gamma=3.0, from_logits=True)(tl, lg, sample_weight=sw)), 0.95977)
    all_close(v(cls(gamma=2.0, reduction=None)(t, p)), (0.515547, 0.020513))


# -------------------------------------------------------------- configs and names
@pytest.mark.parametrize(
    "instance",
    [
        losses.CategoricalFocalCrossentropy(name="cfce"),
        losses.BinaryFocalCrossentropy(name="bfce"),
        losses.Hinge(name="h"),
        losses.Poisson(reduction="sum"),
    ],
)
def test_config_round_trip(instance):
    # run_class_serialization_test of CategoricalFocalCrossentropyTest / BinaryFocal...
    config = instance.get_config()
    revived = type(instance).from_config(json.loads(json.dumps(config)))
    assert revived.get_config() == config
    again = losses.get(losses.serialize(instance))
    assert type(again) is type(instance) and again.get_config() == config


def test_focal_config_keys_as_keras():
    # keras CategoricalFocalCrossentropy.get_config / BinaryFocalCrossentropy.get_config
    assert losses.CategoricalFocalCrossentropy().get_config() == {
        "name": "categorical_focal_crossentropy",
        "reduction": "sum_over_batch_size",
        "from_logits": False,
        "label_smoothing": 0.0,
        "axis": -1,
        "alpha": 0.25,
        "gamma": 2.0,
    }
    assert losses.BinaryFocalCrossentropy().get_config() == {
        "name": "binary_focal_crossentropy",
        "reduction": "sum_over_batch_size",
        "from_logits": False,
        "label_smoothing": 0.0,
        "axis": -1,
        "apply_class_balancing": False,
        "alpha": 0.25,
        "gamma": 2.0,
    }


@pytest.mark.parametrize(
    "name, default",
    [
        ("Huber", "huber_loss"),
        ("LogCosh", "log_cosh"),
        ("KLDivergence", "kl_divergence"),
        ("Poisson", "poisson"),
        ("CosineSimilarity", "cosine_similarity"),
        ("Hinge", "hinge"),
        ("SquaredHinge", "squared_hinge"),
        ("CategoricalHinge", "categorical_hinge"),
    ],
)
def test_default_names(name, default):
    # the name= defaults of keras.src.losses.losses
    assert getattr(losses, name)().name == default
    assert losses.get(name).name == default


@pytest.mark.parametrize(
    "name",
    [
        "huber",
        "log_cosh",
        "kl_divergence",
        "kld",
        "KLD",
        "poisson",
        "cosine_similarity",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
        "categorical_focal_crossentropy",
        "binary_focal_crossentropy",
    ],
)
def test_function_names(name):
    # keras.src.losses ALL_OBJECTS_DICT (function names and the kld/KLD aliases)
    fn = losses.get(name)
    assert callable(fn) and fn is getattr(losses, name)
