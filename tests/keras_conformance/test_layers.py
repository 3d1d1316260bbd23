"""Layers and activations against the expected values of Keras 3's tests.

Sources (``keras/src/...``): ``layers/core/dense_test.py``,
``layers/regularization/dropout_test.py``, ``layers/reshaping/flatten_test.py`` and
``reshape_test.py``, ``layers/activations/activation_test.py``,
``layers/convolutional/conv_test.py``, ``layers/pooling/max_pooling_test.py``,
``average_pooling_test.py`` and ``global_average_pooling_test.py``,
``layers/normalization/batch_normalization_test.py``, ``layers/core/lambda_layer_test.py``,
``models/sequential_test.py`` and ``activations/activations_test.py``. Keras' tests compare
conv and pooling layers with NumPy references; ours are written here (channels last,
TensorFlow's "same" padding split, average pooling over the elements inside the input).

Keras' ``run_layer_test`` also round-trips every layer's config; ``layer_round_trip``
does that for each layer class here.
"""

import math

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import activations, layers, models

from ._helpers import all_close, assert_config_round_trip


def out(t):
    return np.asarray(t, dtype=np.float64)


def layer_round_trip(layer):
    assert_config_round_trip(layer, layers.serialize, layers.deserialize)


def n_weights(layer):
    return len(layer.trainable_weights), len(layer.non_trainable_weights)


# ------------------------------------------------------------------ config round trips
@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.Dense(
            4,
            activation="relu",
            kernel_initializer="random_uniform",
            bias_initializer="ones",
            use_bias=False,
        ),
        lambda: layers.Dense(5, activation="sigmoid"),
        lambda: layers.Dropout(rate=0.2),
        lambda: layers.Flatten(),
        lambda: layers.Reshape(target_shape=(2, -1)),
        lambda: layers.Activation("relu"),
        lambda: layers.InputLayer(shape=(2, 3), batch_size=4),
        lambda: layers.Conv2D(filters=5, kernel_size=2, strides=1, padding="valid"),
        lambda: layers.MaxPooling2D(pool_size=(2, 3), strides=(2, 2)),
        lambda: layers.AveragePooling2D(pool_size=2, strides=1, padding="same"),
        lambda: layers.GlobalAveragePooling2D(keepdims=True),
        lambda: layers.BatchNormalization(center=False, scale=False),
        lambda: layers.BatchNormalization(momentum=0.8, epsilon=1e-7),
    ],
    ids=[
        "Dense",
        "Dense_sigmoid",
        "Dropout",
        "Flatten",
        "Reshape",
        "Activation",
        "InputLayer",
        "Conv2D",
        "MaxPooling2D",
        "AveragePooling2D",
        "GlobalAveragePooling2D",
        "BatchNormalization",
        "BatchNormalization_momentum",
    ],
)
def test_layer_config_round_trip(make):
    # testing/test_case.py::run_class_serialization_test, which run_layer_test applies to
    # every layer of the tests above (dense_test, dropout_test, flatten_test, reshape_test,
    # activation_test, input_layer_test, conv_test, max/average/global_average_pooling_test,
    # batch_normalization_test::test_bn_basics and test_serialization): from_config and
    # layers.deserialize(layers.serialize(...)) give the same config, no custom_objects
    layer_round_trip(make())


# ------------------------------------------------------------------------- Dense
class TestDense:
    def test_dense_basics(self):
        # dense_test.py::DenseTest::test_dense_basics (without regularizers, which
        # metalearn does not have)
        layer = layers.Dense(
            4,
            activation="relu",
            kernel_initializer="random_uniform",
            bias_initializer="ones",
            use_bias=False,
        )
        assert out(layer(np.random.random((2, 3)).astype("float32"))).shape == (2, 4)
        assert n_weights(layer) == (1, 0)
        layer = layers.Dense(5, activation="sigmoid")
        assert out(layer(np.random.random((2, 3, 4)).astype("float32"))).shape == (2, 3, 5)
        assert n_weights(layer) == (2, 0)

    @pytest.mark.parametrize("units", [0, -3, 2.5, None, "64"])
    def test_dense_invalid_units_raises(self, units):
        # dense_test.py::DenseTest::test_dense_invalid_units_raises
        with pytest.raises(ValueError, match="positive integer"):
            layers.Dense(units)

    def test_dense_correctness(self):
        # dense_test.py::DenseTest::test_dense_correctness
        layer = layers.Dense(units=2, activation="relu")
        layer.build((1, 2))
        layer.set_weights([np.array([[1.0, -2.0], [3.0, -4.0]]), np.array([5.0, -6.0])])
        all_close(out(layer(np.array([[-1.0, 2.0]]))), [[10.0, 0.0]])
        layer = layers.Dense(units=2, use_bias=False)
        layer.build((1, 2))
        layer.set_weights([np.array([[1.0, -2.0], [3.0, -4.0]])])
        assert layer.bias is None
        all_close(out(layer(np.array([[-1.0, 2.0]]))), [[5.0, -6.0]])

    @pytest.mark.parametrize("activation,expected", [(None, [[5.0, -6.0]]), ("relu", [[5.0, 0.0]])])
    def test_dense_activation(self, activation, expected):
        # dense_test.py::DenseTest::test_dense_no_activation and test_dense_with_activation
        layer = layers.Dense(units=2, use_bias=False, activation=activation)
        layer.build((1, 2))
        layer.set_weights([np.array([[1.0, -2.0], [3.0, -4.0]])])
        all_close(out(layer(np.array([[-1.0, 2.0]]))), expected)

    def test_dense_errors(self):
        # dense_test.py::DenseTest::test_dense_errors: an input of another last dimension
        # than the one the layer was built for is refused
        layer = layers.Dense(units=2, activation="relu")
        layer(np.zeros((1, 2), np.float32))
        with pytest.raises(ValueError):
            layer(np.zeros((1, 3), np.float32))


# ----------------------------------------------------------------------- Dropout
class TestDropout:
    def test_dropout_basics(self):
        # dropout_test.py::DropoutTest::test_dropout_basics
        layer = layers.Dropout(rate=0.2)
        assert out(layer(np.random.random((2, 3)).astype("float32"), training=True)).shape == (2, 3)
        assert n_weights(layer) == (0, 0)

    def test_dropout_rescaling(self):
        # dropout_test.py::DropoutTest::test_dropout_rescaling
        outputs = out(layers.Dropout(0.5, seed=1337)(np.ones((20, 500), np.float32), training=True))
        all_close(np.mean(outputs), 1.0, atol=0.02)
        all_close(np.max(outputs), 2.0)

    def test_dropout_inference_is_identity(self):
        # Keras' Dropout: "only applied when training is set to True"
        x = np.random.random((4, 6)).astype("float32")
        all_close(out(layers.Dropout(0.5)(x, training=False)), x)
        all_close(out(layers.Dropout(0.5)(x)), x)

    @pytest.mark.parametrize("noise_shape", [(None, 1, None), (20, 1, 10)])
    def test_dropout_partial_noise_shape(self, noise_shape):
        # dropout_test.py::test_dropout_partial_noise_shape_dynamic / _static
        outputs = out(
            layers.Dropout(0.5, noise_shape=noise_shape)(
                np.ones((20, 5, 10), np.float32), training=True
            )
        )
        all_close(outputs[:, 0, :], outputs[:, 1, :])

    @pytest.mark.parametrize("rate", [-0.5, 1.5])
    def test_dropout_invalid_rate(self, rate):
        # dropout_test.py::test_dropout_negative_rate / test_dropout_rate_greater_than_one
        with pytest.raises(ValueError, match="rate"):
            layers.Dropout(rate=rate)

    def test_validate_noise_shape(self):
        # dropout_test.py::test_validate_noise_shape_none / _integer_tuple / _none_values /
        # _cast_to_a_tuple
        assert layers.Dropout(0.5, noise_shape=None).noise_shape is None
        assert layers.Dropout(0.5, noise_shape=(20, 1, 10)).noise_shape == (20, 1, 10)
        assert layers.Dropout(0.5, noise_shape=(None, 1, None)).noise_shape == (None, 1, None)
        shape = layers.Dropout(0.5, noise_shape=[20, 1, 10]).noise_shape
        assert shape == (20, 1, 10) and isinstance(shape, tuple)

    @pytest.mark.parametrize("noise_shape", ["Invalid", (20, 1.5, 10), (20, -1, 10), (20, 0, 10)])
    def test_invalid_noise_shape(self, noise_shape):
        # dropout_test.py::test_validate_noise_shape_non_iterable / _invalid_type /
        # _negative_value / _zero_value: refused at construction
        with pytest.raises(ValueError, match="noise_shape"):
            layers.Dropout(0.5, noise_shape=noise_shape)


# ------------------------------------------------------ Flatten, Reshape, Activation
class TestReshaping:
    def test_flatten(self):
        # flatten_test.py::FlattenTest::test_flatten (channels last)
        x = np.random.random((10, 3, 5, 5)).astype("float32")
        x = x * (x >= 0.8)
        for layer in (layers.Flatten(), layers.Flatten(data_format="channels_last")):
            all_close(out(layer(x)), np.reshape(x, (-1, 5 * 5 * 3)))

    def test_flatten_with_scalar_channels(self):
        # flatten_test.py::FlattenTest::test_flatten_with_scalar_channels
        x = np.random.random((10,)).astype("float32")
        all_close(out(layers.Flatten()(x)), np.expand_dims(x, -1))

    @pytest.mark.parametrize(
        "target,input_shape,expected",
        [
            ((8, 1), (3, 2, 4), (3, 8, 1)),
            ((8,), (3, 2, 4), (3, 8)),
            ((2, 4), (3, 8), (3, 2, 4)),
            ((-1, 1), (3, 2, 4), (3, 8, 1)),
            ((1, -1), (3, 2, 4), (3, 1, 8)),
            ((-1,), (3, 2, 4), (3, 8)),
            ((2, -1), (3, 2, 4), (3, 2, 4)),
        ],
    )
    def test_reshape(self, target, input_shape, expected):
        # reshape_test.py::ReshapeTest::test_reshape
        x = np.random.random(input_shape).astype("float32")
        layer = layers.Reshape(target_shape=target)
        y = out(layer(x))
        assert y.shape == expected
        all_close(y, x.reshape(expected))

    @pytest.mark.parametrize("target", [(-2, 5), (-1, -1, 5)])
    def test_reshape_rejects_invalid_target_shape(self, target):
        # reshape_test.py::ReshapeTest::test_reshape_rejects_invalid_target_shape
        with pytest.raises(ValueError):
            layers.Reshape(target_shape=target)

    def test_activation_basics(self):
        # activation_test.py::ActivationTest::test_activation_basics
        x = np.random.standard_normal((2, 3)).astype("float32")
        layer = layers.Activation("relu")
        all_close(out(layer(x)), np.maximum(x, 0))
        y = out(layers.Activation(activations.gelu)(x[:, :2]))
        assert y.shape == (2, 2)

    def test_lambda_correctness(self):
        # lambda_layer_test.py::LambdaTest::test_correctness
        layer = layers.Lambda(lambda x: ml.square(x))
        all_close(out(layer(2 * np.ones((2, 3), np.float32))), 4 * np.ones((2, 3)))

    def test_lambda_output_shape(self):
        # lambda_layer_test.py::LambdaTest::test_lambda_basics (stacker with output_shape
        # (6,) or a function of the input shape)
        def stacker(x):
            return ml.concat([x, x], 1)

        for shape in ((6,), lambda s: (s[0], s[1] * 2)):
            layer = layers.Lambda(stacker, output_shape=shape)
            assert tuple(layer.compute_output_shape((2, 3))) == (2, 6)
            assert out(layer(np.ones((2, 3), np.float32))).shape == (2, 6)


# ------------------------------------------------------------------------- Conv2D
def np_conv2d(x, kernel, bias, strides, padding):
    """channels-last 2-D cross-correlation; "same" pads as TensorFlow (extra on the end)."""
    n, h, w, _ = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph = max((oh - 1) * sh + kh - h, 0)
        pw = max((ow - 1) * sw + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            y[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return y + bias


class TestConv2D:
    def test_conv2d_basic(self):
        # conv_test.py::ConvBasicTest::test_conv2d_basic (first case: filters 5,
        # kernel 2, valid; (3, 5, 5, 4) -> (3, 4, 4, 5), two trainable weights)
        layer = layers.Conv2D(
            filters=5, kernel_size=2, strides=1, padding="valid", data_format="channels_last"
        )
        assert out(layer(np.random.random((3, 5, 5, 4)).astype("float32"))).shape == (3, 4, 4, 5)
        assert n_weights(layer) == (2, 0)

    @pytest.mark.parametrize(
        "filters,kernel_size,strides,padding", [(5, 2, 1, "valid"), (4, 3, 2, "same")]
    )
    def test_conv2d_correctness(self, filters, kernel_size, strides, padding):
        # conv_test.py::ConvCorrectnessTest::test_conv2d (its groups=1, dilation 1 cases)
        layer = layers.Conv2D(
            filters=filters, kernel_size=kernel_size, strides=strides, padding=padding
        )
        x = np.random.normal(size=[2, 8, 8, 4]).astype("float32")
        layer.build(x.shape)
        kernel = np.random.normal(size=tuple(layer.kernel.shape)).astype("float32")
        bias = np.random.normal(size=(filters,)).astype("float32")
        layer.set_weights([kernel, bias])
        s = (strides, strides)
        expected = np_conv2d(x.astype(np.float64), kernel.astype(np.float64), bias, s, padding)
        all_close(out(layer(x)), expected, rtol=5e-4, atol=1e-5)

    def test_bad_init_args(self):
        # conv_test.py::ConvBasicTest::test_bad_init_args (filters 0, a 0 in kernel_size,
        # a 0 in strides)
        with pytest.raises(ValueError, match="filters"):
            layers.Conv2D(filters=0, kernel_size=1)
        with pytest.raises(ValueError, match="kernel_size"):
            layers.Conv2D(filters=2, kernel_size=(1, 0))
        with pytest.raises(ValueError, match="strides"):
            layers.Conv2D(filters=2, kernel_size=(2, 2), strides=(1, 0))

    def test_conv_raises_exception_on_zero_dims(self):
        # conv_test.py::ConvCorrectnessTest::test_conv_raises_exception_on_zero_dims
        with pytest.raises(Exception):
            layers.Conv2D(6, [5, 5], 1, "valid")(np.random.rand(3, 4, 4, 4).astype("float32"))

    def test_dilation_matches_and_groups_are_refused(self):
        # conv_test.py test_conv2d (dilation_rate (2, 2), 'same'): the kernel's taps two
        # apart, i.e. the plain convolution with the zero-filled kernel.
        # DELIBERATE DIFFERENCE: groups > 1 is refused with a ValueError (no grouped conv).
        x = np.random.normal(size=(2, 8, 8, 4)).astype("float32")
        layer = layers.Conv2D(6, 2, padding="same", dilation_rate=(2, 2))
        layer.build(x.shape)
        k = np.random.normal(size=(2, 2, 4, 6)).astype("float32")
        layer.kernel.assign(k)
        dilated = np.zeros((3, 3, 4, 6), "float32")
        dilated[::2, ::2] = k
        plain = layers.Conv2D(6, 3, padding="same")
        plain.build(x.shape)
        plain.set_weights([dilated, np.asarray(layer.bias)])
        all_close(layer(x), plain(x), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="groups=1"):
            layers.Conv2D(6, 2, groups=2)


# ----------------------------------------------------------------------- pooling
def np_pool2d(x, pool, strides, padding, reduce):
    """channels-last pooling; "same" pads as TensorFlow, padding never counted."""
    n, h, w, c = x.shape
    (ph, pw), (sh, sw) = pool, strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        top = max((oh - 1) * sh + ph - h, 0) // 2
        left = max((ow - 1) * sw + pw - w, 0) // 2
    else:
        oh, ow, top, left = (h - ph) // sh + 1, (w - pw) // sw + 1, 0, 0
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * sh - top, j * sw - left
            win = x[:, max(r0, 0) : min(r0 + ph, h), max(c0, 0) : min(c0 + pw, w), :]
            y[:, i, j, :] = reduce(win, axis=(1, 2))
    return y


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class TestPooling:
    @pytest.mark.parametrize(
        "pool,strides,padding,shape,expected",
        [
            (2, 1, "valid", (3, 5, 5, 4), (3, 4, 4, 4)),
            ((2, 3), (2, 2), "valid", (3, 5, 5, 4), (3, 2, 2, 4)),
        ],
    )
    def test_max_pooling2d_basic(self, pool, strides, padding, shape, expected):
        # max_pooling_test.py::MaxPoolingBasicTest::test_max_pooling2d (channels last)
        layer = layers.MaxPooling2D(pool_size=pool, strides=strides, padding=padding)
        assert out(layer(np.random.random(shape).astype("float32"))).shape == expected
        assert n_weights(layer) == (0, 0)

    @pytest.mark.parametrize(
        "pool,strides,padding",
        [(2, 1, "valid"), ((2, 2), (2, 2), "same"), ((2, 3), (3, 3), "same")],
    )
    def test_max_pooling2d_correctness(self, pool, strides, padding):
        # max_pooling_test.py::MaxPoolingCorrectnessTest::test_max_pooling2d
        x = np.arange(100, dtype="float32").reshape((1, 5, 5, 4))
        y = layers.MaxPooling2D(pool_size=pool, strides=strides, padding=padding)(x)
        all_close(out(y), np_pool2d(x, pair(pool), pair(strides), padding, np.max))

    @pytest.mark.parametrize(
        "pool,strides,padding,expected",
        [
            (2, 1, "valid", (3, 4, 4, 4)),
            (2, 1, "same", (3, 5, 5, 4)),
            ((2, 3), (2, 2), "valid", (3, 2, 2, 4)),
            ((2, 3), (2, 2), "same", (3, 3, 3, 4)),
        ],
    )
    def test_average_pooling2d_basic(self, pool, strides, padding, expected):
        # average_pooling_test.py::AveragePoolingBasicTest::test_average_pooling2d
        layer = layers.AveragePooling2D(pool_size=pool, strides=strides, padding=padding)
        assert out(layer(np.random.random((3, 5, 5, 4)).astype("float32"))).shape == expected

    @pytest.mark.parametrize(
        "pool,strides,padding",
        [
            (2, 1, "valid"),
            ((2, 3), (2, 2), "valid"),
            # test_average_pooling2d_same_padding (skipped by Keras on torch, whose "same"
            # average differs; this is TensorFlow's, the padding not counted)
            (2, (2, 1), "same"),
            ((2, 2), (2, 2), "same"),
        ],
    )
    def test_average_pooling2d_correctness(self, pool, strides, padding):
        # average_pooling_test.py::AveragePoolingCorrectnessTest::test_average_pooling2d
        # and test_average_pooling2d_same_padding
        x = np.arange(16, dtype="float32").reshape((1, 4, 4, 1))
        y = layers.AveragePooling2D(pool_size=pool, strides=strides, padding=padding)(x)
        all_close(out(y), np_pool2d(x, pair(pool), pair(strides), padding, np.mean))

    @pytest.mark.parametrize("keepdims", [False, True])
    def test_global_average_pooling2d(self, keepdims):
        # global_average_pooling_test.py::test_global_average_pooling2d (shape and
        # correctness tests, channels last)
        layer = layers.GlobalAveragePooling2D(keepdims=keepdims)
        assert out(layer(np.random.random((3, 5, 6, 4)).astype("float32"))).shape == (
            (3, 1, 1, 4) if keepdims else (3, 4)
        )
        x = np.arange(96, dtype="float32").reshape((2, 3, 4, 4))
        all_close(out(layer(x)), np.mean(x, axis=(1, 2), keepdims=keepdims))


# ------------------------------------------------------------ BatchNormalization
class TestBatchNormalization:
    @pytest.mark.parametrize(
        "center_scale,shape,expected",
        [(True, (2, 3), (2, 2)), (False, (2, 3), (0, 2)), (True, (2, 4, 4, 3), (2, 2))],
    )
    def test_bn_basics(self, center_scale, shape, expected):
        # batch_normalization_test.py::BatchNormalizationTest::test_bn_basics
        layer = layers.BatchNormalization(center=center_scale, scale=center_scale)
        assert out(layer(np.random.random(shape).astype("float32"), training=True)).shape == shape
        assert n_weights(layer) == expected

    @pytest.mark.parametrize("input_shape", [(5, 2, 3), (5, 3, 3, 2)])
    @pytest.mark.parametrize("mm_init", ["zeros", "ones"])
    @pytest.mark.parametrize("mv_init", ["zeros", "ones"])
    def test_correctness(self, input_shape, mm_init, mv_init):
        # batch_normalization_test.py::BatchNormalizationTest::test_correctness (axis=-1)
        layer = layers.BatchNormalization(
            axis=-1,
            momentum=0,
            moving_mean_initializer=mm_init,
            moving_variance_initializer=mv_init,
        )
        x = np.random.normal(loc=5.0, scale=10.0, size=input_shape).astype("float32")
        y = x
        for _ in range(3):
            y = layer(y, training=True)
        y = (out(y) - out(layer.beta)) / out(layer.gamma)
        axes = tuple(range(len(input_shape) - 1))
        all_close(np.mean(y, axis=axes), 0.0, atol=1e-3)
        all_close(np.std(y, axis=axes), 1.0, atol=1e-3)
        all_close(out(layer.moving_mean), 0.0, atol=1e-3)
        all_close(out(layer.moving_variance), 1.0, atol=1e-3)
        # the moving statistics are not those of x yet: inference differs from training
        assert not np.allclose(
            out(layer(x, training=False)), out(layer(x, training=True)), atol=1e-6, rtol=1e-6
        )
        # momentum 0: after a training call on x, inference on x equals training on x
        training_out = out(layer(x, training=True))
        all_close(out(layer(x, training=False)), training_out, atol=1e-5, rtol=1e-5)

    def test_trainable_behavior(self):
        # batch_normalization_test.py::BatchNormalizationTest::test_trainable_behavior: a
        # frozen layer runs in inference mode even with training=True (initial moving
        # statistics 0 and 1: the output is x), and moves no statistic
        layer = layers.BatchNormalization(axis=-1, momentum=0.8, epsilon=1e-7)
        layer.build((1, 4, 4, 3))
        layer.trainable = False
        assert len(layer.weights) == 4 and n_weights(layer) == (0, 4)
        x = np.random.normal(loc=5.0, scale=10.0, size=(200, 4, 4, 3)).astype("float32")
        all_close(out(layer(x, training=True)), x, atol=1e-5, rtol=1e-5)
        all_close(out(layer.moving_mean), np.zeros(3))
        layer.trainable = True
        assert len(layer.weights) == 4 and n_weights(layer) == (2, 2)
        for _ in range(10):
            y = layer(x, training=True)
        y = (out(y) - out(layer.beta)) / out(layer.gamma)
        all_close(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-3)
        all_close(np.std(y, axis=(0, 1, 2)), 1.0, atol=1e-3)

    def test_axis_other_than_last_is_refused(self):
        # DELIBERATE DIFFERENCE (test_correctness also runs axis=1): metalearn's batch norm
        # is channels last only (documented); another axis is a ValueError.
        with pytest.raises(ValueError, match="axis"):
            layers.BatchNormalization(axis=1)


# --------------------------------------------------------------------- Sequential
class TestSequential:
    def test_basic_flow_with_input(self):
        # sequential_test.py::SequentialTest::test_basic_flow_with_input
        model = models.Sequential(name="seq")
        model.add(layers.Input(shape=(2,), batch_size=3))
        model.add(layers.Dense(4))
        model.add(layers.Dense(5))
        assert len(model.layers) == 2 and model.built and len(model.weights) == 4
        assert out(model(np.random.random((3, 2)).astype("float32"))).shape == (3, 5)
        model.pop()
        assert len(model.layers) == 1 and model.built and len(model.weights) == 2
        assert out(model(np.random.random((3, 2)).astype("float32"))).shape == (3, 4)

    def test_legacy_flow_with_input_shape(self):
        # sequential_test.py::SequentialTest::test_legacy_flow_with_input_shape
        for first in (layers.Dense(4, input_shape=(2,)), layers.Dense(4, input_dim=2)):
            model = models.Sequential(name="seq")
            model.add(first)
            model.add(layers.Dense(5))
            assert len(model.layers) == 2 and model.built and len(model.weights) == 4
        # a later layer's input_shape is ignored
        model = models.Sequential()
        model.add(layers.Dense(4, input_shape=(2,)))
        model.add(layers.Dense(5, input_shape=(3, 4)))
        assert model.built and len(model.weights) == 4

    def test_basic_flow_deferred(self):
        # sequential_test.py::SequentialTest::test_basic_flow_deferred
        model = models.Sequential([layers.Dense(4), layers.Dense(5)])
        assert out(model(np.random.random((3, 2)).astype("float32"))).shape == (3, 5)
        assert model.built
        model.pop()
        assert len(model.layers) == 1 and len(model.weights) == 2
        assert out(model(np.random.random((3, 2)).astype("float32"))).shape == (3, 4)

    # sequential_test.py::SequentialTest::test_errors, one case per test
    def test_errors_second_input(self):
        model = models.Sequential()
        model.add(layers.Input(shape=(2,), batch_size=3))
        with pytest.raises(ValueError):
            model.add(layers.Input(shape=(2,), batch_size=3))

    def test_errors_same_name_twice(self):
        # "All layers added to a Sequential model should have unique names"
        model = models.Sequential()
        model.add(layers.Dense(2, name="dense_conformance"))
        with pytest.raises(ValueError):
            model.add(layers.Dense(2, name="dense_conformance"))
        assert len(model.layers) == 1

    def test_errors_no_layers(self):
        # "Sequential model ... has no layers"
        with pytest.raises(ValueError):
            models.Sequential()(np.random.random((3, 2)).astype("float32"))

    def test_errors_build_conflict(self):
        model = models.Sequential([layers.Input(shape=(2,), batch_size=3), layers.Dense(2)])
        with pytest.raises(ValueError):
            model.build((3, 4))
        model.build((3, 2))

    def test_compute_output_shape(self):
        # sequential_test.py::SequentialTest::test_compute_output_shape
        model = models.Sequential([layers.Dense(4), layers.Dense(8)])
        assert tuple(model.compute_output_shape((1, 2))) == (1, 8)

    def test_hasattr(self):
        # sequential_test.py::SequentialTest::test_hasattr (input_shape / output_shape)
        model = models.Sequential()
        assert not hasattr(model, "input_shape") and not hasattr(model, "output_shape")
        model = models.Sequential([layers.Input((4,)), layers.Dense(8)])
        assert hasattr(model, "input_shape") and hasattr(model, "output_shape")

    def test_layers_setter(self):
        # sequential_test.py::SequentialTest::test_layers_setter: assigning .layers is an
        # AttributeError ("Use `add()` and `pop()`"). metalearn's rule on top: the failed
        # assignment changes nothing, so a layer named in it never becomes part of the
        # model, even once that layer is built elsewhere
        model = models.Sequential()
        stray = layers.Dense(5)
        with pytest.raises(AttributeError):
            model.layers = [layers.Dense(4), stray]
        assert model.layers == [] and model.weights == []
        model.add(layers.Dense(3, input_shape=(2,)))
        stray(np.zeros((1, 3), np.float32))
        assert len(model.weights) == 2

    def test_bad_layer(self):
        # sequential_test.py::SequentialTest::test_bad_layer refuses model.add({}) (Keras:
        # ValueError "Only instances of ..."). metalearn raises TypeError, Python's
        # exception for an argument of the wrong type: asserted as ours.
        with pytest.raises(TypeError):
            models.Sequential().add({})

    def test_serialization(self):
        # sequential_test.py::SequentialTest::test_serialization: unbuilt deferred, built
        # deferred, and with an Input; the revived config equals the original
        model = models.Sequential(name="seq")
        model.add(layers.Dense(4))
        model.add(layers.Dense(5))
        layer_round_trip(model)
        model.build((2, 3))
        layer_round_trip(model)
        model = models.Sequential(name="seq")
        model.add(layers.Input(shape=(2,), batch_size=3))
        for units in (4, 5, 6):
            model.add(layers.Dense(units))
        layer_round_trip(model)
        assert len(models.Sequential.from_config(model.get_config()).layers) == 3


# -------------------------------------------------------------------- activations
def ref_softmax(v, axis=-1):
    e = np.exp(v - np.max(v, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


class TestActivations:
    def test_softmax(self):
        # activations_test.py::test_softmax, test_softmax_1d, test_softmax_negative_axis,
        # test_softmax_2d_axis_0 (axis=1 of a 3-D input), test_temporal_softmax
        x = np.random.random((2, 5))
        all_close(out(activations.softmax(x[np.newaxis, :]))[0], ref_softmax(x), rtol=1e-5)
        all_close(out(activations.softmax(x[0])), ref_softmax(x[0]), rtol=1e-5)
        all_close(out(activations.softmax(x, axis=-1)), ref_softmax(x), rtol=1e-5)
        all_close(
            out(activations.softmax(x[np.newaxis, :], axis=1))[0], ref_softmax(x, 0), rtol=1e-5
        )
        t = np.random.random((2, 2, 3)) * 10
        all_close(
            out(activations.softmax(t[np.newaxis, :]))[0, 0, 0], ref_softmax(t[0, 0]), rtol=1e-5
        )

    def test_log_softmax(self):
        # activations_test.py::test_log_softmax_1d, _negative_axis, _2d_axis_0
        x = np.random.random((2, 5))
        all_close(
            out(activations.log_softmax(x[0])), np.log(ref_softmax(x[0])), rtol=1e-5, atol=1e-6
        )
        all_close(
            out(activations.log_softmax(x, axis=-1)), np.log(ref_softmax(x)), rtol=1e-5, atol=1e-6
        )
        all_close(
            out(activations.log_softmax(x[np.newaxis, :], axis=1))[0],
            np.log(ref_softmax(x, 0)),
            rtol=1e-5,
            atol=1e-6,
        )

    @pytest.mark.parametrize(
        "name,ref,lo,hi",
        [
            # activations_test.py::test_softplus, test_softsign, test_sigmoid, test_silu,
            # test_tanh, test_exponential, test_elu (on the ranges those tests draw from)
            ("softplus", lambda x: np.log1p(np.exp(x)), -10, 10),
            ("softsign", lambda x: x / (1 + np.abs(x)), -10, 10),
            ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), -10, 10),
            ("silu", lambda x: x / (1 + np.exp(-x)), -5.9, 5.9),
            ("tanh", np.tanh, -10, 10),
            ("exponential", np.exp, -5, 5),
            ("elu", lambda x: np.where(x > 0, x, np.expm1(x)), -2, 2),
            ("linear", lambda x: x, -10, 10),
        ],
    )
    def test_elementwise(self, name, ref, lo, hi):
        x = np.random.uniform(lo, hi, (3, 3, 3))
        all_close(
            out(activations.get(name)(x.astype("float32"))),
            ref(x.astype("float32")),
            rtol=1e-5,
            atol=1e-6,
        )

    def test_softplus_extremes(self):
        # activations_test.py::test_softplus: large positive and negative inputs
        for lo, hi in ((10, 100), (-100, -10)):
            x = np.random.uniform(lo, hi, (2, 5)).astype("float32")
            all_close(
                out(activations.softplus(x)), np.logaddexp(0, x.astype(np.float64)), rtol=1e-5
            )

    def test_relu(self):
        # activations_test.py::test_relu_negative_slope, _max_value, _threshold,
        # _combined_threshold_and_max_value, _combined_all_parameters, _to_trigger_relu6
        x = np.array([-10, -5, 0.0, 5, 10], dtype="float32")
        all_close(out(activations.relu(x, negative_slope=0.5)), [-5.0, -2.5, 0.0, 5.0, 10.0])
        all_close(out(activations.relu(x, max_value=5.0)), [0.0, 0.0, 0.0, 5.0, 5.0])
        all_close(out(activations.relu(x, threshold=5.0)), [0.0, 0.0, 0.0, 0.0, 10.0])
        all_close(out(activations.relu(x, threshold=5.0, max_value=5.0)), [0.0, 0.0, 0.0, 0.0, 5.0])
        all_close(
            out(activations.relu(x, negative_slope=0.5, max_value=5.0, threshold=5.0)),
            [-7.5, -5.0, -2.5, 0.0, 5.0],
        )
        all_close(
            out(activations.relu(np.array([-10, -5, 0.0, 5, 10, 12], "float32"), max_value=6.0)),
            [0.0, 0.0, 0.0, 5.0, 6.0, 6.0],
        )
        y = np.random.uniform(-10, 10, (3, 3, 3)).astype("float32")
        all_close(out(activations.relu(y)), np.maximum(0, y))

    @pytest.mark.parametrize("slope", [0.01, 0.3])
    def test_leaky_relu(self, slope):
        # activations_test.py::test_leaky_relu
        x = np.random.uniform(-1, 1, (2, 5)).astype("float32")
        all_close(
            out(activations.leaky_relu(x, negative_slope=slope)),
            np.where(x > 0, x, slope * x),
            rtol=1e-5,
        )

    def test_gelu(self):
        # activations_test.py::test_gelu (exact: x * Phi(x); approximate: the tanh form)
        x = np.random.random((2, 5)).astype("float32")
        exact = x * 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
        all_close(out(activations.gelu(x)), exact, rtol=1e-5, atol=1e-6)
        approx = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
        all_close(out(activations.gelu(x, approximate=True)), approx, rtol=1e-5, atol=1e-6)

    def test_get_method(self):
        # activations_test.py::ActivationsTest::test_get_method
        assert activations.get("relu") is activations.relu
        assert activations.get(None) is activations.linear
        with pytest.raises(ValueError):
            activations.get("typo")
