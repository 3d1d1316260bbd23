"""The layers of issue 22 in models: Sequential and functional, fit traced and eager (the
same numbers), functional_call and second-order MAML through them; weight constraints and
activity regularizers in both fit paths; bad input (a clear exception, nothing changed)."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.functional import functional_call
from metalearn.meta import MAML
from metalearn.tasks import Task

L = keras.layers


def _image_model():
    return keras.Sequential(
        [
            L.Input((6, 6, 2)),
            L.ZeroPadding2D(((1, 0), (0, 1))),
            L.DepthwiseConv2D(3, depth_multiplier=2, activation="tanh"),
            L.UpSampling2D(2, interpolation="bilinear"),
            L.SeparableConv2D(3, 3, strides=2, padding="same", activation="tanh"),
            L.Cropping2D(1),
            L.Permute((2, 1, 3)),
            L.Flatten(),
            L.Dense(3),
        ]
    )


def _sequence_model():
    inp = keras.Input((5,))
    h = L.RepeatVector(6)(inp)
    a = L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="tanh")(h)
    b = L.Conv1D(4, 2, padding="same")(h)
    h = L.Add()([a, b])
    h = L.Conv1D(2, 3, strides=2)(h)
    return keras.Model(inp, L.Flatten()(h))


def _data(model_fn, n, seed):
    rng = np.random.default_rng(seed)
    shape = (6, 6, 2) if model_fn is _image_model else (5,)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    out = model_fn()(x).shape[1]
    return x, rng.standard_normal((n, out)).astype(np.float32)


@pytest.mark.parametrize("model_fn", [_image_model, _sequence_model])
def test_traced_fit_equals_eager_fit(model_fn):
    """fit records the step once and replays it from C; it matches the eager step."""
    x, y = _data(model_fn, 16, 0)
    traced, eager = model_fn(), model_fn()
    eager.set_weights(traced.get_weights())
    traced.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", run_eagerly=False)
    eager.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", run_eagerly=True)
    ht = traced.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    he = eager.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert traced._train_fn is not None and traced._train_fn.n_traces >= 1
    assert eager._train_fn is None
    np.testing.assert_allclose(ht, he, rtol=1e-5)
    assert ht[-1] < ht[0]
    for a, b in zip(traced.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_fn", [_image_model, _sequence_model])
def test_functional_call_and_second_order_maml(model_fn):
    """functional_call with given weights equals the model with those weights; MAML's
    second-order meta-gradient through the new layers matches central differences of the
    meta-loss along random directions."""
    ml.random.set_seed(1)
    model = model_fn()
    sx, sy = _data(model_fn, 4, 2)
    qx, qy = _data(model_fn, 5, 3)
    rng = np.random.default_rng(4)
    new = [rng.standard_normal(w.shape).astype(np.float32) * 0.3 for w in model.get_weights()]
    out = functional_call(model, [ml.tensor(w) for w in new], sx)
    before = [w.copy() for w in model.get_weights()]
    model.set_weights(new)
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(sx)), rtol=1e-6, atol=1e-6)
    model.set_weights(before)

    lr = 0.1
    maml = MAML(model, inner_lr=lr, loss="mse")
    batch = Task(sx[None], sy[None], qx[None], qy[None], {"batched": True})
    _, grads = maml.meta_gradients(batch)
    theta = model.get_weights()

    def meta_loss(ws):
        model.set_weights(ws)
        params = [ml.tensor(w, requires_grad=True) for w in ws]
        ls = ml.reduce_mean(ml.square(functional_call(model, params, sx) - sy))
        g = ml.grad(ls, params)
        fast = [ml.tensor(np.asarray(p, np.float64) - lr * np.asarray(gi, np.float64))
                for p, gi in zip(ws, g)]  # fmt: skip
        return float(np.mean((np.asarray(functional_call(model, fast, qx), np.float64) - qy) ** 2))

    eps = 1e-2
    for d in range(3):
        v = [
            np.random.default_rng(10 + d).standard_normal(w.shape).astype(np.float32) for w in theta
        ]
        plus = meta_loss([(w + eps * u).astype(np.float32) for w, u in zip(theta, v)])
        minus = meta_loss([(w - eps * u).astype(np.float32) for w, u in zip(theta, v)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float(np.sum(np.asarray(g, np.float64) * u)) for g, u in zip(grads, v))
        assert abs(numeric - analytic) <= 2e-2 * max(1.0, abs(numeric)), (d, numeric, analytic)
    model.set_weights(theta)


@pytest.mark.parametrize("eager", [True, False])
def test_constraints_applied_after_each_step_in_both_paths(eager):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 7, 3)).astype(np.float32)
    y = rng.standard_normal((24, 5, 2)).astype(np.float32) * 5
    model = keras.Sequential(
        [
            L.Input((7, 3)),
            L.Conv1D(
                2,
                3,
                kernel_constraint=keras.constraints.MaxNorm(0.5, axis=[0, 1]),
                bias_constraint="non_neg",
            ),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", run_eagerly=eager)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert (model._train_fn is None) == eager
    k, b = model.get_weights()
    norms = np.sqrt((k.astype(np.float64) ** 2).sum(axis=(0, 1)))
    np.testing.assert_allclose(norms, 0.5, rtol=1e-5)  # the large targets push them past 0.5
    assert b.min() >= 0.0


def test_apply_gradients_applies_constraints_as_keras():
    var_layer = L.Dense(
        2, kernel_constraint="non_neg", bias_constraint=keras.constraints.UnitNorm()
    )
    var_layer.build((None, 3))
    opt = keras.optimizers.SGD(1.0)
    grads = [np.ones((3, 2), np.float32), np.array([-3.0, -4.0], np.float32)]
    opt.apply_gradients(zip(grads, [var_layer.kernel, var_layer.bias]))
    assert np.asarray(var_layer.kernel).min() >= 0.0
    np.testing.assert_allclose(np.asarray(var_layer.bias), [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("eager", [True, False])
def test_activity_regularizer_in_the_training_loss(eager):
    """Keras 3: the penalty of the layer's output divided by the batch size joins the loss,
    in the traced step as in the eager one (SGD at rate 0: the weights stay, so the first
    batch's loss is known)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 6, 6, 2)).astype(np.float32)
    model = keras.Sequential(
        [L.Input((6, 6, 2)), L.DepthwiseConv2D(3, activity_regularizer=keras.regularizers.L2(0.3))]
    )
    out = np.asarray(model(x), np.float64)
    y = np.zeros(out.shape, np.float32)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", run_eagerly=eager)
    loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]
    assert (model._train_fn is None) == eager
    expected = np.mean(out**2) + 0.3 * np.sum(out**2) / 4
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises_clearly_and_changes_nothing():
    x = np.random.default_rng(7).standard_normal((2, 5, 5, 3)).astype(np.float32)
    for layer, bad, match in [
        (L.DepthwiseConv2D(3), x[:, :, :, 0], r"shape \(batch, height, width, channels\)"),
        (L.SeparableConv2D(2, 3), np.zeros((2, 5, 5, 4), np.float32), "expected 3 input channels"),
        (L.Conv1D(2, 3), x[0], r"input channels|rank 3"),
        (L.UpSampling2D(), x[0], "rank 4"),
        (L.ZeroPadding2D(), x[0], "rank 4"),
        (L.Cropping2D(1), x[0], "rank 4"),
        (L.Permute((2, 1)), x, "expects inputs of rank 3"),
        (L.RepeatVector(2), x, r"\(batch, features\)"),
    ]:
        good = x if not isinstance(layer, (L.Conv1D, L.Permute, L.RepeatVector)) else None
        if isinstance(layer, L.Conv1D):
            good = x[:, :, :, 0]
        elif isinstance(layer, L.Permute):
            good = x[:, :, 0]
        elif isinstance(layer, L.RepeatVector):
            good = x[:, 0, 0]
        layer(good)
        weights = [w.copy() for w in layer.get_weights()]
        with pytest.raises(ValueError, match=match):
            layer(bad)
        for a, b in zip(weights, layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        L.DepthwiseConv2D(3, padding="causal")
    with pytest.raises(ValueError, match="padding must be 'valid', 'same' or 'causal'"):
        L.Conv1D(2, 3, padding="full")
    with pytest.raises(ValueError, match="Computed output size would be zero or negative"):
        L.SeparableConv2D(2, 6)(x)
    with pytest.raises(ValueError, match="only data_format='channels_last'"):
        L.UpSampling2D(data_format="channels_first")
    with pytest.raises(ValueError, match="Could not interpret constraint identifier"):
        L.Dense(2, kernel_constraint="positive")
    with pytest.raises(ValueError, match="min_value .* must not exceed max_value"):
        keras.constraints.MinMaxNorm(2.0, 1.0)


def test_constraint_returning_a_wrong_shape_changes_no_weight_after_the_update():
    """The projections are all computed before any is written: a constraint that fails
    leaves every weight as the optimizer's update left it (and the step counted)."""
    layer = L.Dense(2, kernel_constraint="non_neg", bias_constraint=lambda w: ml.reduce_sum(w))
    layer.build((None, 3))
    layer.kernel.assign(-np.ones((3, 2), np.float32))
    opt = keras.optimizers.SGD(1.0)
    with pytest.raises(ValueError, match="returned shape"):
        opt.apply_gradients(
            zip([np.zeros((3, 2), np.float32), np.zeros(2, np.float32)], [layer.kernel, layer.bias])
        )
    np.testing.assert_array_equal(np.asarray(layer.kernel), -1.0)  # non_neg not written
    assert int(opt.iterations) == 1  # the update itself happened and is counted


def test_embedding_and_layer_normalization_constraints():
    """embeddings_constraint, gamma_constraint and beta_constraint as Keras 3: applied after
    each step, and in get_config (from_config rebuilds them)."""
    model = keras.Sequential(
        [
            L.Input((4,)),
            L.Embedding(10, 3, embeddings_constraint="non_neg"),
            L.LayerNormalization(
                gamma_constraint=keras.constraints.MaxNorm(0.2, axis=0), beta_constraint="non_neg"
            ),
            L.Flatten(),
            L.Dense(1),
        ]
    )
    rng = np.random.default_rng(8)
    x = rng.integers(0, 10, (16, 4))
    y = rng.standard_normal((16, 1)).astype(np.float32) * 3
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    emb, gamma, beta = model.get_weights()[:3]
    assert emb.min() >= 0.0 and beta.min() >= 0.0
    assert np.sqrt(np.sum(gamma.astype(np.float64) ** 2)) <= 0.2 + 1e-6
    for layer in model.layers[:2]:
        config = layer.get_config()
        rebuilt = type(layer).from_config(config)
        assert rebuilt.get_config() == config
    assert model.layers[0].get_config()["embeddings_constraint"] == {
        "class_name": "NonNeg",
        "config": {},
    }
