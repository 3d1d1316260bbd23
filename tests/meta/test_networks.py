"""The article's two networks."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import activations
from metalearn.networks import AdaptiveNeuralNetwork, MetaLearningNetwork


def _images(n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 28, 28)).astype(np.float32)


def test_adaptive_network_layers_and_output():
    ml.random.set_seed(0)
    model = AdaptiveNeuralNetwork()
    out = np.asarray(model(_images()))
    assert out.shape == (6, 10)
    np.testing.assert_allclose(out.sum(1), np.ones(6), rtol=1e-5)
    assert [tuple(v.shape) for v in model.trainable_variables] == [
        (784, 128),
        (128,),
        (128, 10),
        (10,),
    ]
    assert model.count_params() == 101770
    assert (
        model.dense1.activation is activations.relu
        and model.dense2.activation is activations.softmax
    )
    small = AdaptiveNeuralNetwork(num_classes=5, hidden_units=16)
    assert np.asarray(small(_images())).shape == (6, 5) and small.dense1.kernel.shape == (784, 16)


def test_meta_network_without_labels():
    ml.random.set_seed(1)
    model = MetaLearningNetwork()
    out = model(_images())
    assert out.shape == (6, 1)
    assert model.dense1.kernel.shape == (784, 128) and model.dense2.activation is activations.linear
    with pytest.raises(ValueError, match="without labels"):
        model(_images(), labels=np.eye(3, dtype=np.float32)[np.arange(6) % 3])


def test_meta_network_really_uses_labels():
    ml.random.set_seed(2)
    model = MetaLearningNetwork(num_classes=10)
    x = _images()
    labels = np.array([0, 1, 2, 3, 4, 5])
    out = np.asarray(model(x, labels=labels))
    assert model.dense1.kernel.shape == (784 + 10, 128)
    # same as passing the one-hot floats, and equal to the NumPy formula on [x, onehot]
    onehot = np.eye(10, dtype=np.float32)[labels]
    np.testing.assert_array_equal(np.asarray(model(x, labels=onehot)), out)
    w1, b1, w2, b2 = model.get_weights()
    feats = np.concatenate([x.reshape(6, -1), onehot], 1)
    ref = np.maximum(feats @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    other = np.asarray(model(x, labels=(labels + 3) % 10))
    assert not np.allclose(other, out)  # the labels change the prediction
    with pytest.raises(ValueError, match="label columns"):
        model(x)


def test_meta_network_float_labels_and_gradients():
    ml.random.set_seed(3)
    model = MetaLearningNetwork(hidden_units=8)
    x = _images(4)
    targets = np.array([[0.5], [1.0], [0.0], [2.0]], np.float32)
    with ml.GradientTape() as tape:
        pred = model(x, labels=targets)
        loss = ml.reduce_mean(ml.keras.losses.mean_squared_error(targets, pred))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert model.dense1.kernel.shape == (785, 8)
    with pytest.raises(ValueError, match="num_classes"):
        MetaLearningNetwork()(x, labels=np.array([0, 1, 2, 3]))
