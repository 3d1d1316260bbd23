"""Regularizers against Keras 3's tests (``keras/src/regularizers/regularizers_test.py``)
and the documented rule of ``Layer.losses`` / ``Trainer.compute_loss``: the training and
evaluation losses are the compiled loss plus ``sum(model.losses)``; an activity penalty is
divided by the batch size (``keras/src/layers/layer.py``, ``__call__``)."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import regularizers

from ._helpers import all_close


def test_config():
    # regularizers_test.py::test_config (OrthogonalRegularizer: not in metalearn)
    for reg in (regularizers.L1(0.1), regularizers.L2(0.1), regularizers.L1L2(l1=0.1, l2=0.2)):
        again = regularizers.deserialize(regularizers.serialize(reg))
        assert type(again) is type(reg) and again.get_config() == reg.get_config()


@pytest.mark.parametrize(
    "reg,formula",
    [
        (regularizers.L1(0.1), lambda v: 0.1 * np.sum(np.abs(v))),
        (regularizers.L2(0.1), lambda v: 0.1 * np.sum(np.square(v))),
        (
            regularizers.L1L2(l1=0.1, l2=0.2),
            lambda v: 0.1 * np.sum(np.abs(v)) + 0.2 * np.sum(np.square(v)),
        ),
    ],
    ids=["l1", "l2", "l1_l2"],
)
def test_values(reg, formula):
    # regularizers_test.py::test_l1, test_l2, test_l1_l2
    value = np.random.random((4, 4)).astype(np.float32) - 0.5
    all_close(reg(ml.Variable(value)).item(), formula(value.astype(np.float64)))


def test_get_method():
    # regularizers_test.py::test_get_method; Keras 3 has no "l1_l2" name (its
    # keras.regularizers.l1_l2 is the class L1L2)
    assert isinstance(regularizers.get("l1l2"), regularizers.L1L2)
    assert isinstance(regularizers.get("l1"), regularizers.L1)
    assert isinstance(regularizers.get("l2"), regularizers.L2)
    assert regularizers.get(None) is None
    assert regularizers.l1_l2 is regularizers.L1L2
    assert regularizers.get("l1").get_config() == {"l1": 0.01}
    for bad in ("typo", "l1_l2"):
        with pytest.raises(ValueError):
            regularizers.get(bad)
    with pytest.raises(ValueError):
        regularizers.L1(-1.0)


def test_l1l2_get_config():
    # regularizers_test.py::test_l1l2_get_config
    reg = regularizers.L1L2(l1=0.01, l2=0.02)
    config = reg.get_config()
    assert config == {"l1": 0.01, "l2": 0.02}
    assert regularizers.L1L2.from_config(config).get_config() == config


def dense_model(**kwargs):
    return keras.Sequential([keras.layers.Dense(3, input_shape=(4,), **kwargs)])


def test_model_losses_and_training_loss():
    model = dense_model(
        kernel_regularizer=regularizers.L2(0.1),
        bias_regularizer="l1",
        activity_regularizer=regularizers.L1(0.5),
        bias_initializer="ones",
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    out = model(x)
    k, b = (w.astype(np.float64) for w in model.get_weights())
    o = np.asarray(out, np.float64)
    expected = [0.5 * np.abs(o).sum() / 8, 0.1 * np.square(k).sum(), 0.01 * np.abs(b).sum()]
    all_close([t.item() for t in model.losses], expected, rtol=1e-5, atol=1e-6)
    model.compile(optimizer="sgd", loss="mse")
    mse = np.mean(np.square(o - y))
    all_close(model.evaluate(x, y, verbose=0), mse + sum(expected), rtol=1e-5, atol=1e-6)
    # the penalty's gradient reaches the kernel: training with zero data error still
    # shrinks it (an unregularized model would not move)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = model.get_weights()[0].copy()
    model.fit(x, np.asarray(model(x)), epochs=1, batch_size=8, verbose=0)
    assert np.abs(model.get_weights()[0]).sum() < np.abs(before).sum()


def test_layer_config_round_trip():
    layer = keras.layers.Dense(
        2, kernel_regularizer=regularizers.L1L2(l1=0.1, l2=0.2), activity_regularizer="l2"
    )
    config = layer.get_config()
    assert config["kernel_regularizer"] == {
        "class_name": "L1L2",
        "config": {"l1": 0.1, "l2": 0.2},
    }
    assert config["bias_regularizer"] is None
    assert config["activity_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    again = keras.layers.Dense.from_config(config)
    assert again.kernel_regularizer.get_config() == {"l1": 0.1, "l2": 0.2}
    conv = keras.layers.Conv2D(2, 3, kernel_regularizer="l1", bias_regularizer="l2")
    again = keras.layers.Conv2D.from_config(conv.get_config())
    assert isinstance(again.kernel_regularizer, regularizers.L1)
    assert isinstance(again.bias_regularizer, regularizers.L2)


def test_second_order_through_penalty():
    # the penalty is made of core ops: its gradient is differentiable again
    model = dense_model(kernel_regularizer=regularizers.L2(0.5))
    model(np.zeros((1, 4), np.float32))
    k = model.layers[0].kernel
    (g,) = ml.grad(model.losses[0], [k], create_graph=True)
    (h,) = ml.grad(ml.reduce_sum(g), [k])
    all_close(np.asarray(g), 2 * 0.5 * np.asarray(k), rtol=1e-6)
    all_close(np.asarray(h), np.full((4, 3), 1.0), rtol=1e-6)
