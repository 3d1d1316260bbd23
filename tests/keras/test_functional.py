"""The functional API's start, as Keras 3 (keras/src/models/functional.py): keras.Input,
layers called on symbolic tensors, Model(inputs, outputs) with chains, merges and shared
layers; fit traces it like Sequential; get_config/from_config in Keras' layout; .keras
files; functional_call."""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras

L = keras.layers


def graph():
    inp = keras.Input((4,))
    h = L.Dense(8, activation="relu")(inp)
    shared = L.Dense(8, name="shared")
    a = shared(h)
    b = shared(L.Dense(8, activation="tanh")(a))
    merged = L.Concatenate()([L.Add()([a, b]), L.Multiply()([a, h])])
    out = L.Dense(3, activation="softmax")(L.LayerNormalization()(merged))
    return keras.Model(inp, out)


def numpy_forward(model, x):
    """The same graph in NumPy from the model's weights (the reference)."""
    w = {v.name: np.asarray(v, np.float64) for v in model.weights}
    layer = {l.name: l for l in model.layers}

    def dense(name, v, act=None):
        y = v @ w[f"{name}/kernel"] + w[f"{name}/bias"]
        return {"relu": lambda t: np.maximum(t, 0), "tanh": np.tanh, None: lambda t: t}[act](y)

    names = [l.name for l in model.layers]
    d0, d_t, ln, d_out = names[1], names[3], names[-2], names[-1]
    h = dense(d0, x, "relu")
    a = dense("shared", h)
    b = dense("shared", dense(d_t, a, "tanh"))
    m = np.concatenate([a + b, a * h], axis=-1)
    mu, var = m.mean(-1, keepdims=True), m.var(-1, keepdims=True)
    m = (m - mu) / np.sqrt(var + 1e-3) * w[f"{ln}/gamma"] + w[f"{ln}/beta"]
    z = dense(d_out, m)
    e = np.exp(z - z.max(-1, keepdims=True))
    assert layer[d_out] is model.layers[-1]
    return e / e.sum(-1, keepdims=True)


def test_structure_and_forward():
    model = graph()
    assert type(model).__name__ == "Functional" and isinstance(model, keras.Model)
    assert isinstance(model.layers[0], L.InputLayer)
    assert [type(l).__name__ for l in model.layers[1:]] == [
        "Dense", "Dense", "Dense", "Add", "Multiply", "Concatenate", "LayerNormalization", "Dense",
    ]  # fmt: skip
    assert model.layers[2].name == "shared" and len(model.weights) == 10
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.weights])
    x = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        numpy_forward(model, x.astype(np.float64)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert model.output_shape == (None, 3)


def test_symbolic_tensor():
    inp = keras.Input((4,))
    assert inp.shape == (None, 4)
    t = L.Dense(3)(inp)
    assert isinstance(t, keras.functional.KerasTensor) and t.shape == (None, 3)
    with pytest.raises(TypeError, match="symbolic"):
        np.asarray(t)


def test_fit_traced_equals_eager():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    runs = []
    for eager in (False, True):
        ml.random.set_seed(0)
        model = graph()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=eager)
        h = model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
        runs.append((h.history["loss"], model.get_weights(), model))
    assert runs[0][2]._train_fn is not None and runs[0][2]._train_fn.n_traces >= 1
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert runs[0][0][-1] < runs[0][0][0]


def test_config_round_trip_and_save(tmp_path):
    model = graph()
    config = json.loads(json.dumps(model.get_config()))
    assert {"layers", "input_layers", "output_layers"} <= set(config)
    shared = [e for e in config["layers"] if e["name"] == "shared"][0]
    assert len(shared["inbound_nodes"]) == 2  # a shared layer: two calls
    again = keras.Model.from_config(config)
    assert again.get_config() == model.get_config()
    again.set_weights(model.get_weights())
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    model.compile(optimizer="rmsprop", loss="mse")
    model.save(tmp_path / "f.metalearn")
    loaded = keras.models.load_model(tmp_path / "f.metalearn")
    assert type(loaded).__name__ == "Functional"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_functional_call_and_second_order():
    model = graph()
    x = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    ws = [ml.Variable(np.asarray(w)) for w in model.trainable_weights]
    out = ml.functional_call(model, ws, x)
    np.testing.assert_allclose(np.asarray(out), model.predict(x, verbose=0), rtol=1e-6)
    loss = ml.reduce_sum(ml.square(out))
    g = ml.grad(loss, ws, create_graph=True)
    gg = ml.grad(ml.reduce_sum(ml.square(g[0])), [ws[0]], allow_unused=True)
    assert gg[0] is not None and np.isfinite(np.asarray(gg[0])).all()


def test_refusals():
    inp, other = keras.Input((4,)), keras.Input((4,))
    out = L.Add()([L.Dense(2)(inp), L.Dense(2)(other)])
    with pytest.raises(ValueError, match="Graph disconnected"):
        keras.Model(inp, out)
    keras.Model([inp, other], out)  # several inputs: supported since (test_functional_multi)
    with pytest.raises(TypeError, match="keras.Input"):
        keras.Model(inp, np.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        L.Add()(L.Dense(2)(inp))
    a = L.Dense(2, name="same")(inp)
    with pytest.raises(ValueError, match="unique"):
        keras.Model(inp, L.Dense(2, name="same")(a))
    model = keras.Model(inp, L.Dense(2)(inp))
    with pytest.raises(ValueError, match="expected inputs of shape"):
        model.predict(np.zeros((2, 5), np.float32), verbose=0)


@pytest.mark.parametrize(
    "cls,fn",
    [
        (L.Add, lambda a, b: a + b),
        (L.Subtract, lambda a, b: a - b),
        (L.Multiply, lambda a, b: a * b),
        (L.Average, lambda a, b: (a + b) / 2),
        (L.Concatenate, lambda a, b: np.concatenate([a, b], -1)),
    ],
)
def test_merge_layers(cls, fn):
    rng = np.random.default_rng(4)
    a, b = (rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(np.asarray(cls()([a, b])), fn(a, b), rtol=1e-6)
