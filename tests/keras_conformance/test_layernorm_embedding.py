"""LayerNormalization and Embedding against Keras 3's tests
(``keras/src/layers/normalization/layer_normalization_test.py``,
``keras/src/layers/core/embedding_test.py``), Keras' formula
(``keras/src/ops/nn.py::_layer_normalization``) and finite differences to second order."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers, regularizers
from tests.core.test_gradcheck import gradcheck

from ._helpers import all_close


def ln_ref(x, gamma, beta, axes, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    out = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        out = out * gamma.reshape(shape)
    if beta is not None:
        out = out + beta.reshape(shape)
    return out


# ------------------------------------------------------------- LayerNormalization
@pytest.mark.parametrize(
    "kwargs,shape,n_weights,n_losses",
    [
        # layer_normalization_test.py::test_ln_basics, case by case
        (
            {"gamma_regularizer": regularizers.L2(0.01), "beta_regularizer": regularizers.L2(0.01)},
            (3, 4, 2),
            2,
            2,
        ),
        ({"gamma_initializer": "ones", "beta_initializer": "ones"}, (3, 4, 2), 2, 0),
        ({"scale": False, "center": False}, (3, 3), 0, 0),
        ({"rms_scaling": True}, (3, 3), 1, 0),
        ({"axis": (-3, -2, -1)}, (2, 8, 8, 3), 2, 0),
        ({}, (1, 0, 10), 2, 0),
    ],
)
def test_ln_basics(kwargs, shape, n_weights, n_losses):
    layer = layers.LayerNormalization(**kwargs)
    x = np.random.normal(size=shape).astype(np.float32)
    out = layer(x)
    assert tuple(out.shape) == shape
    assert len(layer.trainable_weights) == n_weights
    assert len(layer.losses) == n_losses
    again = layers.LayerNormalization.from_config(layer.get_config())
    assert again.get_config() == {**layer.get_config(), "name": again.name}


def test_ln_defaults_and_weight_order():
    # Keras 3's signature and its build (gamma, then beta)
    layer = layers.LayerNormalization()
    c = layer.get_config()
    assert (c["axis"], c["epsilon"], c["center"], c["scale"], c["rms_scaling"]) == (
        -1,
        1e-3,
        True,
        True,
        False,
    )
    assert c["beta_initializer"]["class_name"] == "Zeros"
    assert c["gamma_initializer"]["class_name"] == "Ones"
    layer(np.zeros((2, 4), np.float32))
    assert [w.name.split("/")[-1] for w in layer.weights] == ["gamma", "beta"]


def test_invalid_axis():
    # layer_normalization_test.py::test_invalid_axis
    with pytest.raises(
        TypeError, match="Expected an int or a list/tuple of ints for the argument 'axis'"
    ):
        layers.LayerNormalization(axis={"axis": -1})
    with pytest.raises(ValueError, match="out of bounds"):
        layers.LayerNormalization(axis=3)(np.zeros((2, 3), np.float32))


def test_ln_correctness():
    # layer_normalization_test.py::test_correctness
    layer = layers.LayerNormalization()
    inputs = np.random.normal(loc=5.0, scale=10.0, size=(1000, 2, 2, 2)).astype(np.float32)
    out = np.asarray(layer(inputs))
    assert abs(out.mean()) < 1e-1 and abs(out.std() - 1.0) < 1e-1


@pytest.mark.parametrize(
    "kwargs,shape,axes",
    [
        ({}, (4, 5), (1,)),
        ({"axis": 1, "epsilon": 1e-5}, (3, 4, 5), (1,)),
        ({"axis": [1, 2]}, (3, 4, 5), (1, 2)),
        ({"center": False}, (4, 6), (1,)),
    ],
)
def test_ln_formula(kwargs, shape, axes):
    rng = np.random.default_rng(1)
    layer = layers.LayerNormalization(**kwargs)
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    layer(x)
    ws = [rng.normal(size=w.shape).astype(np.float32) for w in layer.weights]
    layer.set_weights(ws)
    gamma, beta = ws[0], (ws[1] if len(ws) > 1 else None)
    eps = kwargs.get("epsilon", 1e-3)
    all_close(np.asarray(layer(x)), ln_ref(x, gamma, beta, axes, eps), rtol=1e-5, atol=1e-5)


def test_ln_rms_scaling_formula():
    # keras/src/ops/nn.py::_layer_normalization, rms_scaling: x * rsqrt(var + eps) * gamma
    rng = np.random.default_rng(2)
    layer = layers.LayerNormalization(rms_scaling=True)
    x = rng.normal(1.0, 2.0, size=(4, 5)).astype(np.float32)
    layer(x)
    g = rng.normal(size=5).astype(np.float32)
    layer.set_weights([g])
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(x64.var(axis=1, keepdims=True) + 1e-3) * g
    all_close(np.asarray(layer(x)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [1, 2])
def test_ln_gradcheck(order):
    # composed of differentiable core ops: first and second derivatives match central
    # differences for the input, gamma and beta
    rng = np.random.default_rng(3)
    layer = layers.LayerNormalization(epsilon=0.1)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    layer(x)
    g = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)

    def fn(x, g, b):
        return ml.functional_call(layer, [g, b], x)

    gradcheck(fn, [x, g, b], order=order)


def test_ln_traced_fit_matches_eager():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.normal(size=(32, 2)).astype(np.float32)
    results = []
    for eager in (False, True):
        ml.random.set_seed(0)
        m = keras.Sequential(
            [layers.Input((6,)), layers.Dense(8), layers.LayerNormalization(), layers.Dense(2)]
        )
        m.compile(optimizer="adam", loss="mse", run_eagerly=eager)
        h = m.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
        results.append((h.history["loss"], m.get_weights()))
    assert m._is_traceable()
    all_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for a, b in zip(results[0][1], results[1][1]):
        all_close(a, b, rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------- Embedding
def test_embedding_basics():
    # embedding_test.py::test_embedding_basics (the mask_zero case: see test_mask_zero)
    layer = layers.Embedding(input_dim=4, output_dim=3)
    out = layer(np.array([1, 3], np.int32))
    assert tuple(out.shape) == (2, 3)
    assert len(layer.trainable_weights) == 1 and not layer.non_trainable_weights
    out = layers.Embedding(5, 4)(np.array([[1, 2, 0], [4, 4, 4]], np.int64))
    assert tuple(out.shape) == (2, 3, 4)


def test_embedding_correctness():
    # embedding_test.py::test_correctness
    layer = layers.Embedding(input_dim=3, output_dim=2)
    layer.build()
    layer.set_weights([np.array([[0.0, 0.0], [2.0, 2.0], [3.0, 3.0]], np.float32)])
    out = layer(np.array([2, 1, 0]))
    all_close(np.asarray(out), [[3.0, 3.0], [2.0, 2.0], [0.0, 0.0]])


@pytest.mark.parametrize("which", ["input_dim", "output_dim"])
def test_invalid_dims(which):
    # embedding_test.py::test_invalid_input_dim / test_invalid_output_dim
    for bad in (3.7, 4.0, "3", None, True, False, -1, 0):
        kwargs = {"input_dim": 10, "output_dim": 8, which: bad}
        with pytest.raises(ValueError, match=f"`{which}` must be a positive integer"):
            layers.Embedding(**kwargs)


def test_weights_constructor_arg():
    # embedding_test.py::test_weights_constructor_arg
    layer = layers.Embedding(3, 4, weights=np.ones((3, 4)))
    all_close(layer.embeddings.numpy(), np.ones((3, 4)))
    layer = layers.Embedding(3, 4, weights=[np.ones((3, 4))])
    all_close(layer.embeddings.numpy(), np.ones((3, 4)))


def test_embedding_defaults_config():
    c = layers.Embedding(5, 3).get_config()
    assert c["embeddings_initializer"] == {
        "class_name": "RandomUniform",
        "config": {"minval": -0.05, "maxval": 0.05, "seed": None},
    }
    assert c["mask_zero"] is False and c["embeddings_regularizer"] is None
    again = layers.Embedding.from_config(c)
    assert (again.input_dim, again.output_dim) == (5, 3)


def test_embedding_refusals():
    layer = layers.Embedding(4, 2)
    with pytest.raises(ValueError, match="outside"):
        layer(np.array([0, 4]))
    with pytest.raises(ValueError, match="outside"):
        layer(np.array([-1]))
    with pytest.raises(ValueError, match="integer"):
        layer(np.array([0.5]))
    # embedding_test.py::test_basics (mask_zero=True): shape (2, 3, 4), one weight, and a
    # mask (Keras' compute_mask: inputs != 0) that the recurrent layers consume
    masked = layers.Embedding(5, 4, mask_zero=True)
    ids = np.array([[1, 0, 3], [0, 0, 4]])
    assert tuple(masked(ids).shape) == (2, 3, 4) and len(masked.trainable_weights) == 1
    np.testing.assert_array_equal(masked.compute_mask(ids).numpy(), ids != 0)
    assert layers.Embedding(5, 4).compute_mask(ids) is None


@pytest.mark.parametrize("order", [1, 2])
def test_embedding_gradcheck(order):
    # the table's gradient is a scatter-add of rows (repeated indices add up); through a
    # nonlinearity so that the second derivative is not zero
    layer = layers.Embedding(5, 3)
    idx = np.array([[1, 4], [1, 0]])
    layer(idx)
    table = np.random.default_rng(5).normal(size=(5, 3)).astype(np.float32)

    def fn(t):
        return ml.tanh(ml.functional_call(layer, [t], idx))

    gradcheck(fn, [table], order=order)


def test_embedding_fit_learns():
    rng = np.random.default_rng(6)
    idx = rng.integers(0, 10, size=(64, 3))
    y = (idx.sum(axis=1, keepdims=True) % 2).astype(np.float32)
    m = keras.Sequential(
        [layers.Input((3,)), layers.Embedding(10, 4), layers.Flatten(), layers.Dense(1)]
    )
    m.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    first = m.evaluate(idx, y, verbose=0)
    m.fit(idx, y, epochs=30, batch_size=16, verbose=0)
    assert m.evaluate(idx, y, verbose=0) < 0.5 * first
