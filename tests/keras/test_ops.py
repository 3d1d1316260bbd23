"""metalearn.keras.ops against NumPy (the formulas keras.ops documents) and Keras' own
ops tests (keras/src/ops/*_test.py) where they give values."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import ops

R = np.random.default_rng(0)
A = R.normal(size=(2, 3, 4)).astype(np.float32)
B = R.normal(size=(2, 3, 4)).astype(np.float32)
P = np.abs(A) + 0.5  # positive, for log / sqrt


def close(actual, expected, rtol=1e-5, atol=1e-6):
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), (actual.shape, np.shape(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


CASES = [
    ("add", lambda: ops.add(A, B), A + B),
    ("add_broadcast", lambda: ops.add(A, B[0, 0]), A + B[0, 0]),
    ("subtract", lambda: ops.subtract(A, B), A - B),
    ("multiply", lambda: ops.multiply(A, B), A * B),
    ("divide", lambda: ops.divide(A, P), A / P),
    ("true_divide", lambda: ops.true_divide(A, P), A / P),
    ("negative", lambda: ops.negative(A), -A),
    ("power_scalar", lambda: ops.power(P, 3), P**3),
    ("power_tensor", lambda: ops.power(P, B), P**B),
    ("matmul", lambda: ops.matmul(A, B.transpose(0, 2, 1)), A @ B.transpose(0, 2, 1)),
    ("matmul_vec", lambda: ops.matmul(A[0, 0], B[0].T), A[0, 0] @ B[0].T),
    ("matmul_mat_vec", lambda: ops.matmul(B[0], A[0, 0]), B[0] @ A[0, 0]),
    ("maximum", lambda: ops.maximum(A, B), np.maximum(A, B)),
    ("minimum", lambda: ops.minimum(A, B), np.minimum(A, B)),
    ("abs", lambda: ops.abs(A), np.abs(A)),
    ("absolute", lambda: ops.absolute(A), np.abs(A)),
    ("sign", lambda: ops.sign(A), np.sign(A)),
    ("exp", lambda: ops.exp(A), np.exp(A)),
    ("log", lambda: ops.log(P), np.log(P)),
    ("sqrt", lambda: ops.sqrt(P), np.sqrt(P)),
    ("square", lambda: ops.square(A), A * A),
    ("clip", lambda: ops.clip(A, -0.5, 0.5), np.clip(A, -0.5, 0.5)),
    ("relu", lambda: ops.relu(A), np.maximum(A, 0)),
    ("relu6", lambda: ops.relu6(A * 10), np.clip(A * 10, 0, 6)),
    ("sigmoid", lambda: ops.sigmoid(A), 1 / (1 + np.exp(-A))),
    ("tanh", lambda: ops.tanh(A), np.tanh(A)),
    ("softplus", lambda: ops.softplus(A), np.logaddexp(0, A)),
    ("silu", lambda: ops.silu(A), A / (1 + np.exp(-A))),
    ("swish", lambda: ops.swish(A), A / (1 + np.exp(-A))),
    ("elu", lambda: ops.elu(A, 0.5), np.where(A > 0, A, 0.5 * (np.exp(A) - 1))),
    ("leaky_relu", lambda: ops.leaky_relu(A), np.where(A > 0, A, 0.2 * A)),
    (
        "gelu_tanh",
        lambda: ops.gelu(A),
        0.5 * A * (1 + np.tanh(np.sqrt(2 / np.pi) * (A + 0.044715 * A**3))),
    ),
    ("softmax", lambda: ops.softmax(A), np_softmax(A)),
    ("softmax_axis1", lambda: ops.softmax(A, axis=1), np_softmax(A, 1)),
    ("log_softmax", lambda: ops.log_softmax(A), np.log(np_softmax(A))),
    ("mean", lambda: ops.mean(A), A.mean()),
    ("mean_axes", lambda: ops.mean(A, axis=(0, 2), keepdims=True), A.mean((0, 2), keepdims=True)),
    ("sum", lambda: ops.sum(A, axis=1), A.sum(1)),
    ("max", lambda: ops.max(A, axis=-1), A.max(-1)),
    ("min", lambda: ops.min(A, axis=0, keepdims=True), A.min(0, keepdims=True)),
    ("logsumexp", lambda: ops.logsumexp(A, axis=1), np.log(np.exp(A).sum(1))),
    ("logsumexp_all", lambda: ops.logsumexp(A), np.log(np.exp(A).sum())),
    ("reshape", lambda: ops.reshape(A, (4, -1)), A.reshape(4, -1)),
    ("transpose", lambda: ops.transpose(A), A.T),
    ("transpose_axes", lambda: ops.transpose(A, (1, 0, 2)), A.transpose(1, 0, 2)),
    ("expand_dims", lambda: ops.expand_dims(A, 1), A[:, None]),
    ("expand_dims_neg", lambda: ops.expand_dims(A, -1), A[..., None]),
    ("squeeze", lambda: ops.squeeze(A[:, :1]), A[:, 0]),
    ("squeeze_axis", lambda: ops.squeeze(A[None, :, :1], axis=0), A[:, :1]),
    ("concatenate", lambda: ops.concatenate([A, B], axis=1), np.concatenate([A, B], 1)),
    ("stack", lambda: ops.stack([A, B], axis=1), np.stack([A, B], 1)),
    ("broadcast_to", lambda: ops.broadcast_to(A[0, 0], (3, 4)), np.broadcast_to(A[0, 0], (3, 4))),
    ("take", lambda: ops.take(A, [[2, 0]], axis=1), np.take(A, [[2, 0]], axis=1)),
    ("take_flat", lambda: ops.take(A, [5, 1]), np.take(A, [5, 1])),
    ("where", lambda: ops.where(A > 0, A, B), np.where(A > 0, A, B)),
    ("where_inf_branch", lambda: ops.where(A > 0, A, np.inf), np.where(A > 0, A, np.inf)),
    ("ones", lambda: ops.ones((2, 3)), np.ones((2, 3))),
    ("zeros_like", lambda: ops.zeros_like(A), np.zeros_like(A)),
    ("full", lambda: ops.full((2,), 3.5), np.full((2,), 3.5)),
    ("convert_to_tensor", lambda: ops.convert_to_tensor([1, 2]), np.array([1.0, 2.0])),
]


@pytest.mark.parametrize("name,fn,expected", CASES, ids=[c[0] for c in CASES])
def test_against_numpy(name, fn, expected):
    out = fn()
    assert isinstance(out, ml.Tensor)
    close(out, np.asarray(expected, np.float64), rtol=2e-5, atol=2e-6)


def test_erf():
    import math

    close(ops.erf(A), np.vectorize(math.erf)(A.astype(np.float64)), atol=1e-6)


def test_index_and_conversion_ops():
    np.testing.assert_array_equal(ops.argmax(A, axis=-1), A.argmax(-1))
    np.testing.assert_array_equal(ops.argmin(A), A.argmin())
    assert ops.shape(ml.tensor(A)) == (2, 3, 4) and ops.shape(A) == (2, 3, 4)
    out = ops.convert_to_numpy(ml.tensor(A))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, A)
    # keras/src/ops/core_test.py: cast to an integer dtype truncates toward zero
    np.testing.assert_array_equal(ops.cast(np.array([-1.7, 2.9]), "int32"), [-1, 2])
    assert isinstance(ops.cast([1, 2], "float32"), ml.Tensor)
    with pytest.raises(TypeError, match="float32"):
        ops.cast(A, "float64")


def test_one_hot_as_keras():
    # keras/src/ops/nn_test.py::test_one_hot: [1, 3, 2, 0] -> eye rows; out-of-range and
    # negative indices give rows of zeros (Keras' documented behaviour)
    close(ops.one_hot(np.array([1, 3, 2, 0]), 4), np.eye(4)[[1, 3, 2, 0]])
    close(ops.one_hot(np.array([5, -1]), 3), np.zeros((2, 3)))
    close(ops.one_hot(np.array([[0, 1]]), 2, axis=0), np.moveaxis(np.eye(2)[[[0, 1]]], -1, 0))


def np_conv(x, k, stride):
    n, h, w, c = x.shape
    kh, kw, _, f = k.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out


def test_conv_and_pools():
    x = R.normal(size=(2, 7, 6, 3)).astype(np.float32)
    k = R.normal(size=(3, 2, 3, 4)).astype(np.float32)
    close(ops.conv(x, k), np_conv(x, k, 1), rtol=1e-4, atol=1e-5)
    close(ops.conv(x, k, strides=2), np_conv(x, k, 2), rtol=1e-4, atol=1e-5)
    mp = x[:, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
    close(ops.max_pool(x[:, :6], 2), mp)
    ap = x[:, :6].reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    close(ops.average_pool(x[:, :6], (2, 2), strides=2), ap, atol=1e-6)
    with pytest.raises(ValueError, match="dilation_rate"):
        ops.conv(x, k, dilation_rate=2)
    with pytest.raises(ValueError, match="2-D"):
        ops.conv(x[0], k)
    with pytest.raises(ValueError, match="channels_last"):
        ops.max_pool(x, 2, data_format="channels_first")


def test_gradients_flow_through_where_and_stack():
    # d/dx sum(where(c, x^2, 3x)) = 2x where c else 3 (the other branch gets zero)
    x = ml.Variable(A)
    with ml.GradientTape() as tape:
        y = ops.sum(ops.where(A > 0, ops.square(x), ops.multiply(x, 3.0)))
    g = np.asarray(tape.gradient(y, x))
    close(g, np.where(A > 0, 2 * A, 3.0), rtol=1e-6)
    with ml.GradientTape() as tape:
        y = ops.sum(ops.multiply(ops.stack([x, x], axis=0), 2.0))
    close(tape.gradient(y, x), np.full(A.shape, 4.0))


def test_missing_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="keras.ops has it but metalearn's C core"):
        ops.cumsum
    with pytest.raises(AttributeError, match="has no attribute 'not_an_op'"):
        ops.not_an_op
    assert not hasattr(ops, "einsum")
    for name in ops.__all__:  # everything listed exists and is in the docstring
        assert callable(getattr(ops, name)) and name in ops.__doc__


def test_bad_arguments():
    with pytest.raises(ValueError, match="squeeze axis 1 of size 3"):
        ops.squeeze(A, axis=1)
    with pytest.raises(ValueError, match="one-argument form"):
        ops.where(A > 0)
    with pytest.raises(TypeError, match="float32"):
        ops.ones((2,), dtype="int32")


class Linear(ml.keras.layers.Layer):
    """keras.io "Making new layers and models via subclassing": the Linear layer, as
    written there for Keras 3 with only the import changed."""

    def __init__(self, units=32, input_dim=32):
        super().__init__()
        self.w = self.add_weight(
            shape=(input_dim, units), initializer="random_normal", trainable=True
        )
        self.b = self.add_weight(shape=(units,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


def test_linear_layer_from_keras_docs():
    layer = Linear(4, 2)
    x = np.ones((2, 2), np.float32)
    w, b = [np.asarray(v) for v in layer.weights]
    close(layer(x), x @ w + b)
    assert len(layer.trainable_weights) == 2
