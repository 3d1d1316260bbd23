"""Layers and initializers against NumPy formulas."""

import math

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import activations, initializers, layers


def _np_act(name, z):
    if name in (None, "linear"):
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(z))
    if name == "gelu":
        erf = np.vectorize(math.erf)
        return 0.5 * z * (1 + erf(z / math.sqrt(2)))
    raise KeyError(name)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax", "elu", "gelu"])
def test_dense_forward_with_fixed_weights(activation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    dense = layers.Dense(3, activation=activation)
    dense.build((None, 5))
    dense.set_weights([kernel, bias])
    out = np.asarray(dense(x))
    ref = _np_act(activation, x.astype(np.float64) @ kernel + bias)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_dense_without_bias_on_3d_input_and_gradient():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 3)).astype(np.float32)
    dense = layers.Dense(3, use_bias=False, activation="relu")
    dense(x)
    assert len(dense.weights) == 1 and dense.bias is None
    dense.set_weights([kernel])
    with ml.GradientTape() as tape:
        y = ml.reduce_sum(dense(x))
    g = np.asarray(tape.gradient(y, dense.kernel))
    z = x.reshape(-1, 5) @ kernel
    ref = x.reshape(-1, 5).T @ (z > 0).astype(np.float64)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
    assert np.asarray(dense(x)).shape == (2, 4, 3)


def test_dense_names_shapes_and_errors():
    dense = layers.Dense(4, name="head")
    assert not dense.built
    dense(np.zeros((2, 6), np.float32))
    assert dense.built and dense.kernel.shape == (6, 4) and dense.bias.shape == (4,)
    assert dense.kernel.name == "head/kernel" and dense.bias.name == "head/bias"
    assert dense.output_shape == (None, 4)
    with pytest.raises(ValueError, match="last dimension 6"):
        dense(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError):
        layers.Dense(0)
    with pytest.raises(TypeError):
        layers.Dense(3, not_an_argument=1)


def test_dense_config_round_trip():
    dense = layers.Dense(5, activation="tanh", use_bias=False, kernel_initializer="he_normal")
    config = dense.get_config()
    assert config["units"] == 5 and config["activation"] == "tanh" and config["use_bias"] is False
    config.pop("name")
    clone = layers.Dense.from_config(config)
    assert clone.units == 5 and clone.activation is activations.tanh and not clone.use_bias
    assert isinstance(clone.kernel_initializer, initializers.HeNormal)


def test_glorot_uniform_is_the_dense_default_and_within_limits():
    ml.random.set_seed(123)
    dense = layers.Dense(128)
    dense(np.zeros((1, 784), np.float32))
    k = dense.kernel.numpy()
    limit = math.sqrt(6.0 / (784 + 128))
    assert np.abs(k).max() <= limit
    assert np.abs(k).max() > 0.99 * limit  # really spans the range
    assert k.std() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    assert abs(k.mean()) < 0.01 * limit
    np.testing.assert_array_equal(dense.bias.numpy(), np.zeros(128, np.float32))


def test_initializers_statistics_and_seeds():
    ml.random.set_seed(0)
    shape = (400, 300)
    he = initializers.get("he_normal")(shape).numpy()
    assert np.abs(he).max() <= 2 * math.sqrt(2 / 400) / 0.87962566103423978 + 1e-6
    assert he.std() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    heu = initializers.HeUniform()(shape).numpy()
    assert np.abs(heu).max() <= math.sqrt(6 / 400)
    rn = initializers.RandomNormal(mean=1.0, stddev=0.5)(shape).numpy()
    assert rn.mean() == pytest.approx(1.0, abs=0.01) and rn.std() == pytest.approx(0.5, rel=0.02)
    ru = initializers.RandomUniform(-0.2, 0.3)(shape).numpy()
    assert ru.min() >= -0.2 and ru.max() < 0.3 and ru.mean() == pytest.approx(0.05, abs=0.005)
    tn = initializers.TruncatedNormal(stddev=1.0)(shape).numpy()
    assert np.abs(tn).max() <= 2.0
    np.testing.assert_array_equal(initializers.Constant(2.5)((2, 2)).numpy(), np.full((2, 2), 2.5))
    np.testing.assert_array_equal(initializers.get("ones")((3,)).numpy(), np.ones(3))
    np.testing.assert_array_equal(initializers.get("zeros")((3,)).numpy(), np.zeros(3))
    # a seeded initializer repeats itself; set_seed makes the global stream repeat
    a = initializers.GlorotUniform(seed=7)((5, 5)).numpy()
    b = initializers.GlorotUniform(seed=7)((5, 5)).numpy()
    np.testing.assert_array_equal(a, b)
    ml.random.set_seed(9)
    c = initializers.GlorotUniform()((5, 5)).numpy()
    ml.random.set_seed(9)
    d = initializers.GlorotUniform()((5, 5)).numpy()
    np.testing.assert_array_equal(c, d)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError):
        initializers.get("no_such_initializer")


def test_flatten_activation_lambda_reshape():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10
    out = layers.Flatten()(x)
    np.testing.assert_array_equal(np.asarray(out), x.reshape(2, 12))
    t = ml.tensor(x)
    np.testing.assert_array_equal(np.asarray(layers.Flatten()(t)), x.reshape(2, 12))
    np.testing.assert_array_equal(np.asarray(layers.Activation("relu")(t)), np.maximum(x, 0))
    lam = layers.Lambda(lambda v: v * 2.0 + 1.0)
    np.testing.assert_array_equal(np.asarray(lam(t)), x * 2 + 1)
    np.testing.assert_array_equal(np.asarray(layers.Reshape((4, 3))(t)), x.reshape(2, 4, 3))


def test_dropout_training_flag_rate_and_scaling():
    x = np.ones((200, 50), np.float32)
    drop = layers.Dropout(0.3)
    np.testing.assert_array_equal(np.asarray(drop(x)), x)  # inference: identity
    np.testing.assert_array_equal(np.asarray(drop(x, training=False)), x)
    ml.random.set_seed(11)
    y = np.asarray(drop(x, training=True))
    kept = y != 0
    assert kept.mean() == pytest.approx(0.7, abs=0.02)
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    ml.random.set_seed(11)
    np.testing.assert_array_equal(np.asarray(drop(x, training=True)), y)
    # Keras 3 takes rate in [0, 1]: rate=1 drops everything (checked against Keras 3.15)
    np.testing.assert_array_equal(np.asarray(layers.Dropout(1.0)(x, training=True)), 0 * x)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            layers.Dropout(bad)


def test_custom_layer_add_weight_and_tracking():
    class Scale(layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight("w", (input_shape[-1],), initializer="ones")
            self.count = self.add_weight("count", (), initializer="zeros", trainable=False)

        def call(self, inputs):
            return inputs * self.w

    layer = Scale(name="scale")
    out = layer(np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(np.asarray(out), np.full((2, 3), 2.0))
    assert [v.name for v in layer.trainable_weights] == ["scale/w"]
    assert [v.name for v in layer.non_trainable_weights] == ["scale/count"]
    assert layer.count_params() == 4
    layer.trainable = False
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 2


def test_activation_functions_match_numpy():
    z = np.linspace(-4, 4, 41, dtype=np.float32).reshape(1, -1)
    for name in ["relu", "sigmoid", "tanh", "softmax", "elu", "gelu", "linear"]:
        np.testing.assert_allclose(
            np.asarray(activations.get(name)(ml.tensor(z))),
            _np_act(name, z.astype(np.float64)),
            rtol=1e-5,
            atol=1e-6,
        )
    np.testing.assert_allclose(
        np.asarray(activations.leaky_relu(ml.tensor(z))), np.where(z > 0, z, 0.2 * z), rtol=1e-6
    )
    assert activations.get(None) is activations.linear
    with pytest.raises(ValueError):
        activations.get("no_such_activation")


def test_set_weights_validates_before_writing():
    dense = layers.Dense(2)
    dense(np.zeros((1, 3), np.float32))
    before = dense.get_weights()
    with pytest.raises(ValueError):
        dense.set_weights([np.ones((3, 2)), np.ones((5,))])
    for a, b in zip(before, dense.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- frozen BatchNormalization
_BN_WEIGHTS = [
    np.array([1.5, 0.5, 2.0], np.float32),
    np.array([0.1, -0.2, 0.3], np.float32),
    np.array([0.5, 1.0, -1.0], np.float32),
    np.array([2.0, 0.5, 1.5], np.float32),
]


def _bn_inference(x, gamma, beta, mean, var, eps=1e-3):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_frozen_batch_norm_runs_in_inference_mode_when_training():
    """Keras 3 (BatchNormalization.call: ``if training and self.trainable``): a frozen layer
    normalises with its moving statistics and leaves them alone, even with training=True.
    Checked against Keras 3.15 on these weights (max difference 9e-8)."""
    x = (np.random.default_rng(0).standard_normal((6, 3)) * 2 + 1).astype(np.float32)
    bn = layers.BatchNormalization()
    bn(x[:1])
    bn.set_weights(_BN_WEIGHTS)
    bn.trainable = False
    out = np.asarray(bn(x, training=True))
    np.testing.assert_allclose(out, _bn_inference(x, *_BN_WEIGHTS), rtol=1e-5, atol=1e-6)
    for a, b in zip(bn.get_weights(), _BN_WEIGHTS):
        np.testing.assert_array_equal(a, b)
    # left trainable, the same call uses the batch's statistics and moves the moving ones
    bn.trainable = True
    out = np.asarray(bn(x, training=True))
    np.testing.assert_allclose(
        out,
        _bn_inference(x, _BN_WEIGHTS[0], _BN_WEIGHTS[1], x.mean(0), x.var(0)),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        bn.get_weights()[2], 0.99 * _BN_WEIGHTS[2] + 0.01 * x.mean(0), rtol=1e-5
    )


def test_batch_norm_in_a_frozen_model_runs_in_inference_mode():
    """model.trainable = False freezes every layer inside (Keras), BN included."""
    x = (np.random.default_rng(1).standard_normal((5, 3)) * 3).astype(np.float32)
    model = keras.Sequential(
        [
            layers.Dense(3, input_shape=(3,), kernel_initializer="identity"),
            layers.BatchNormalization(),
        ]
    )
    model.layers[1].set_weights(_BN_WEIGHTS)
    model.trainable = False
    out = np.asarray(model(x, training=True))
    np.testing.assert_allclose(out, _bn_inference(x, *_BN_WEIGHTS), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.layers[1].get_weights()[2], _BN_WEIGHTS[2])


@pytest.mark.parametrize("vectorize", ["auto", False])
@pytest.mark.parametrize("affine", [True, False])
def test_maml_with_a_frozen_batch_norm_uses_its_moving_statistics(vectorize, affine):
    """MAML's inner loop (per-task functional call, or the batched plan) through a frozen
    BatchNormalization: the moving statistics, as in Keras, not the task's batch statistics.
    With moving mean 0 and variance 1 - eps (and gamma 1, beta 0) the frozen layer is the
    identity, so the meta-loss and meta-gradients equal those of the model without it."""
    from metalearn.meta import MAML
    from metalearn.tasks import Task

    rng = np.random.default_rng(2)
    dense = [layers.Dense(5, input_shape=(4,)), layers.Activation("relu"), layers.Dense(3)]
    plain = keras.Sequential(dense)
    bn = layers.BatchNormalization(center=affine, scale=affine)
    frozen = keras.Sequential(
        [layers.Dense(5, input_shape=(4,)), bn, layers.Activation("relu"), layers.Dense(3)]
    )
    frozen.layers[0].set_weights(plain.layers[0].get_weights())
    frozen.layers[3].set_weights(plain.layers[2].get_weights())
    bn.set_weights(
        ([np.ones(5), np.zeros(5)] if affine else []) + [np.zeros(5), np.full(5, 1 - 1e-3)]
    )
    bn.trainable = False
    batch = Task(
        rng.standard_normal((3, 6, 4)).astype(np.float32),
        rng.integers(0, 3, (3, 6)),
        rng.standard_normal((3, 5, 4)).astype(np.float32),
        rng.integers(0, 3, (3, 5)),
        {"batched": True},
    )
    moving = [w.copy() for w in bn.get_weights()]
    ref_loss, ref_grads = MAML(plain, inner_lr=0.4, inner_steps=2, vectorize=False).meta_gradients(
        batch
    )
    loss, grads = MAML(frozen, inner_lr=0.4, inner_steps=2, vectorize=vectorize).meta_gradients(
        batch
    )
    assert abs(loss - ref_loss) < 1e-5
    assert len(grads) == len(ref_grads) == 4
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    for a, b in zip(bn.get_weights(), moving):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- Dropout noise_shape
def test_dropout_noise_shape_shares_the_mask_along_axes_of_size_one():
    """Keras 3 (backend random.dropout): a mask of noise_shape (None entries: the input's
    size) broadcast over the input; one entry per input axis."""
    x = np.ones((64, 5, 6), np.float32)
    ml.random.set_seed(3)
    y = np.asarray(layers.Dropout(0.5, noise_shape=(None, 1, 6))(x, training=True))
    assert set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1, :], y.shape))  # same on axis 1
    assert 0.4 < (y[:, 0, :] != 0).mean() < 0.6
    y = np.asarray(layers.Dropout(0.5, noise_shape=(1, 1, 1))(x, training=True))
    assert len(np.unique(y)) == 1  # one draw for everything
    # the gradient is the mask, scaled
    t = ml.Variable(x[:4])
    with ml.GradientTape() as tape:
        out = layers.Dropout(0.25, noise_shape=(4, 5, 1))(t, training=True)
        loss = ml.reduce_sum(out)
    g = np.asarray(tape.gradient(loss, t))
    np.testing.assert_allclose(g, np.asarray(out) / x[:4], rtol=1e-6)


@pytest.mark.parametrize("noise_shape", [(2, 3), (2, 3, 4, 1), (3, 1, 4), (None, 2, 4)])
def test_dropout_noise_shape_that_does_not_fit_the_input_is_refused(noise_shape):
    """Keras raises on these too (torch: "the number of sizes provided ... must be greater
    or equal", "The expanded size of the tensor ... must match"); before, (2, 3, 4, 1) was
    cut to its first three entries silently."""
    with pytest.raises(ValueError, match=r"noise_shape"):
        layers.Dropout(0.5, noise_shape=noise_shape)(np.ones((2, 3, 4), np.float32), training=True)
    for bad in ((0, 1), (-1,), ("a",)):
        with pytest.raises(ValueError, match="noise_shape entries"):
            layers.Dropout(0.5, noise_shape=bad)


def test_an_assignment_that_raises_tracks_nothing():
    """Layer.__setattr__ sets before it tracks: assigning a read-only property (Model.layers,
    Keras 3's "`Model.layers` attribute is reserved") raises and leaves the model as it
    was; before, the layers named in it became the model's sublayers (and weights)."""
    from metalearn import keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

        @property
        def head(self):
            return None

    net = Net()
    net(np.ones((1, 3), np.float32))
    stray = layers.Dense(4)
    stray(np.ones((1, 3), np.float32))
    with pytest.raises(AttributeError, match="`Model.layers` attribute is reserved"):
        net.layers = [stray]
    with pytest.raises(AttributeError):
        net.head = stray  # a property without a setter
    assert net.layers == [net.dense] and len(net.weights) == 2
    assert [p for p, _ in net._weight_paths()] == ["dense/kernel", "dense/bias"]


def test_input_layer_batch_shape_and_keras_config():
    """Keras 3's InputLayer: batch_shape (or shape + batch_size), the two forms refused
    together, and a config of batch_shape, so from_config keeps the batch size."""
    layer = layers.InputLayer(shape=(2, 3), batch_size=4, name="inp")
    assert layer.batch_shape == (4, 2, 3) and layer.batch_size == 4
    config = layer.get_config()
    assert config["batch_shape"] == (4, 2, 3) and config["name"] == "inp"
    assert layers.InputLayer.from_config(config).batch_shape == (4, 2, 3)
    assert layers.InputLayer(batch_shape=(None, 5)).batch_shape == (None, 5)
    assert layers.InputLayer(batch_input_shape=(2, 5)).batch_shape == (2, 5)  # legacy name
    with pytest.raises(ValueError, match="both `shape` and `batch_shape`"):
        layers.InputLayer(shape=(2,), batch_shape=(None, 2))
    with pytest.raises(ValueError, match="both `batch_size` and `batch_shape`"):
        layers.InputLayer(batch_size=3, batch_shape=(None, 2))
    with pytest.raises(ValueError, match="must pass a `shape`"):
        layers.InputLayer()


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        # keras.activations.relu on the torch backend, Keras 3.15.1
        (
            dict(negative_slope=0.1, max_value=3.0, threshold=-1.0),
            [-0.3, -0.05, 0.0, 0.0, 0.0, 0.5, 2.0, 3.0],
        ),
        (dict(threshold=-1.0), [0.0, 0.0, 0.0, -0.5, 0.0, 0.5, 2.0, 5.0]),
        (dict(negative_slope=0.2, threshold=-1.0), [-0.6, -0.1, 0.0, -0.5, 0.0, 0.5, 2.0, 5.0]),
        (
            dict(max_value=3.0, threshold=1.0, negative_slope=0.5),
            [-2.5, -1.25, -1.0, -0.75, -0.5, -0.25, 2.0, 3.0],
        ),
    ],
)
def test_relu_with_a_threshold_follows_keras_3(kwargs, expected):
    """Keras 3's relu keeps x where x > threshold (0 elsewhere), clips to [0, max_value],
    then subtracts negative_slope * relu(threshold - x): with a negative threshold the
    inputs in (threshold, 0] stay x, or become 0 once clipped by max_value. (Before,
    max_value clipped from above only and (threshold, 0] gave x + threshold.)"""
    from metalearn.keras import activations

    x = np.array([-4.0, -1.5, -1.0, -0.5, 0.0, 0.5, 2.0, 5.0], np.float32)
    np.testing.assert_allclose(
        np.asarray(activations.relu(x, **kwargs)), expected, rtol=1e-6, atol=1e-7
    )


def test_softplus_gradient_is_the_sigmoid_including_at_zero():
    """softplus'(x) = sigmoid(x) (PyTorch's softplus backward); at x = 0 it is 1/2. Written
    as relu(x) + log(1 + exp(-|x|)) it was 0 there (relu'(0) = abs'(0) = 0)."""
    import metalearn as ml
    from metalearn.keras import activations

    xs = np.array([-30.0, -3.0, -1e-3, 0.0, 1e-3, 2.0, 30.0], np.float32)
    x = ml.tensor(xs, requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(activations.softplus(x)), x)
    np.testing.assert_allclose(
        g.numpy(), 1 / (1 + np.exp(-xs.astype(np.float64))), rtol=1e-6, atol=1e-12
    )
    # (log(1 + u) for u below float32's epsilon is 0: an absolute error under 1e-7)
    np.testing.assert_allclose(
        activations.softplus(x).numpy(),
        np.logaddexp(0, xs.astype(np.float64)),
        rtol=1e-6,
        atol=1e-7,
    )
