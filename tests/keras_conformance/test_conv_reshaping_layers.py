"""Keras 3's own tests of the layers of issue 22 and of keras.constraints, ported.

Sources (keras-team/keras at 3.15.1): layers/convolutional/conv_test.py (Conv1D),
depthwise_conv_test.py, separable_conv_test.py; layers/reshaping/up_sampling2d_test.py,
zero_padding2d_test.py, cropping2d_test.py, permute_test.py, repeat_vector_test.py;
constraints/constraints_test.py. Expected values are the tests' own (their arrays, shapes,
messages, or the NumPy formula the test compares with); tolerances Keras' (1e-6 unless the
test says otherwise).

Deliberately different (not ported): channels_first data (we are channels-last only, a
clear ValueError), Conv1D ``groups > 1`` (a ValueError: the core has no grouped
convolution), sparse inputs, bicubic/lanczos interpolation (ValueError), symbolic inputs
with unknown spatial dims (our functional API needs known sample shapes), LoRA.
"""

import json

import numpy as np
import pytest

from metalearn import keras
from metalearn.keras import constraints, layers

from ._helpers import all_close


def _conv1d_np(x, k, b, stride, padding, dilation):
    """conv_test.py's np_conv1d (channels_last, groups=1), as a formula: dilate the kernel,
    pad ('same': TF's split; 'causal': all on the left), then a strided valid correlation."""
    ks, cin, cout = k.shape
    if dilation > 1:
        kd = np.zeros(((ks - 1) * dilation + 1, cin, cout))
        kd[::dilation] = k
        k, ks = kd, kd.shape[0]
    if padding != "valid":
        n = x.shape[1]
        total = max(ks - stride, 0) if n % stride == 0 else max(ks - n % stride, 0)
        before, after = total // 2, total - total // 2
        pad = (total, 0) if padding == "causal" else (before, after)
        x = np.pad(x, ((0, 0), pad, (0, 0)))
    out = (x.shape[1] - ks) // stride + 1
    y = np.stack(
        [np.einsum("nkc,kcf->nf", x[:, i * stride : i * stride + ks], k) for i in range(out)], 1
    )
    return y + b


def _depthwise_np(x, k, b, strides, padding, dilation):
    """depthwise_conv_test.py's np_depthwise_conv2d as a formula: channel c, filter m ->
    output channel c * M + m."""
    kh, kw, c, m = k.shape
    kd = np.zeros(((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1, c, m))
    kd[:: dilation[0], :: dilation[1]] = k
    kh, kw = kd.shape[:2]
    if padding == "same":
        pads = []
        for n, kk, s in zip(x.shape[1:3], (kh, kw), strides):
            total = max(kk - s, 0) if n % s == 0 else max(kk - n % s, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (x.shape[1] - kh) // strides[0] + 1
    ow = (x.shape[2] - kw) // strides[1] + 1
    y = np.zeros((x.shape[0], oh, ow, c * m))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * strides[0] : i * strides[0] + kh, j * strides[1] : j * strides[1] + kw]
            y[:, i, j] = np.einsum("nhwc,hwcm->ncm", patch, kd).reshape(x.shape[0], c * m)
    return y + b


# ------------------------------------------------------------------------- Conv1D


# conv_test.py ConvBasicTest.test_conv1d_basic (groups=1: see the module docstring)
@pytest.mark.parametrize(
    "kwargs,input_shape,output_shape",
    [
        (dict(filters=5, kernel_size=2, strides=1, padding="valid"), (3, 5, 4), (3, 4, 5)),
        (
            dict(filters=6, kernel_size=2, strides=1, padding="same", dilation_rate=(2,)),
            (3, 4, 4),
            (3, 4, 6),
        ),
        (
            dict(filters=6, kernel_size=2, strides=1, padding="causal", dilation_rate=(2,)),
            (3, 4, 4),
            (3, 4, 6),
        ),
        (dict(filters=6, kernel_size=2, strides=(2,), padding="valid"), (3, 5, 4), (3, 2, 6)),
    ],
)
def test_conv1d_basic(kwargs, input_shape, output_shape):
    layer = layers.Conv1D(data_format="channels_last", **kwargs)
    y = layer(np.random.rand(*input_shape).astype(np.float32))
    assert tuple(y.shape) == output_shape
    assert len(layer.trainable_weights) == 2 and not layer.non_trainable_weights
    assert layer.compute_output_shape((None,) + input_shape[1:]) == (None,) + output_shape[1:]


# conv_test.py ConvCorrectnessTest.test_conv1d (groups=1)
@pytest.mark.parametrize(
    "filters,kernel_size,strides,padding,dilation",
    [
        (5, 2, 1, "valid", 1),
        (6, 2, 1, "same", 2),
        (6, 2, 1, "causal", 2),
        (6, 2, 2, "valid", 1),
        (4, 3, 2, "same", 1),
    ],
)
def test_conv1d_correctness(filters, kernel_size, strides, padding, dilation):
    layer = layers.Conv1D(
        filters, kernel_size, strides=strides, padding=padding, dilation_rate=dilation
    )
    x = np.random.normal(size=(2, 8, 4)).astype(np.float32)
    layer.build(x.shape)
    k = np.random.normal(size=layer.kernel.shape).astype(np.float32)
    b = np.random.normal(size=layer.bias.shape).astype(np.float32)
    layer.kernel.assign(k)
    layer.bias.assign(b)
    all_close(
        layer(x),
        _conv1d_np(x.astype(np.float64), k, b, strides, padding, dilation),
        atol=1e-5,
        rtol=1e-5,
    )


# conv_test.py test_bad_init_args / base_conv's checks (messages as Keras')
def test_conv1d_bad_init_args():
    with pytest.raises(ValueError, match="Invalid value for argument `filters`"):
        layers.Conv1D(filters=0, kernel_size=1)
    with pytest.raises(ValueError, match=r"`kernel_size` argument must be a tuple of 1"):
        layers.Conv1D(filters=1, kernel_size=0)
    with pytest.raises(ValueError, match=r"`strides` argument must be a tuple of 1"):
        layers.Conv1D(filters=1, kernel_size=2, strides=0)
    with pytest.raises(ValueError, match="`strides > 1` not supported in conjunction"):
        layers.Conv1D(filters=1, kernel_size=2, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="padding must be 'valid', 'same' or 'causal'"):
        layers.Conv1D(filters=1, kernel_size=2, padding="full")


# conv_test.py test_conv_raises_exception_on_zero_dims (1-D: the same rule)
def test_conv1d_raises_on_zero_dims():
    layer = layers.Conv1D(6, 5, padding="valid")
    with pytest.raises(ValueError, match="Computed output size would be zero or negative"):
        layer(np.random.rand(3, 4, 4).astype(np.float32))
    assert not layer.weights  # nothing built


# conv_test.py ConvBasicTest.test_conv2d_basic (groups=1)
@pytest.mark.parametrize(
    "kwargs,input_shape,output_shape",
    [
        (dict(filters=5, kernel_size=2, strides=1, padding="valid", dilation_rate=1),
         (3, 5, 5, 4), (3, 4, 4, 5)),
        (dict(filters=6, kernel_size=2, strides=1, padding="same", dilation_rate=(2, 2)),
         (3, 4, 4, 4), (3, 4, 4, 6)),
        (dict(filters=6, kernel_size=(2, 2), strides=(2, 1), padding="valid",
              dilation_rate=(1, 1)), (3, 5, 5, 4), (3, 2, 4, 6)),
    ],
)  # fmt: skip
def test_conv2d_basic(kwargs, input_shape, output_shape):
    layer = layers.Conv2D(data_format="channels_last", groups=1, **kwargs)
    assert tuple(layer(np.random.rand(*input_shape).astype(np.float32)).shape) == output_shape
    assert len(layer.trainable_weights) == 2
    config = layer.get_config()
    assert layers.Conv2D.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="only groups=1"):
        layers.Conv2D(4, 2, groups=2)
    with pytest.raises(ValueError, match="`strides > 1` not supported in conjunction"):
        layers.Conv2D(4, 2, strides=2, dilation_rate=2)


# conv_test.py test_conv_constraints
def test_conv_constraints():
    layer = layers.Conv2D(filters=4, kernel_size=3, kernel_constraint="non_neg")
    layer.build((None, 5, 5, 3))
    assert isinstance(layer.kernel.constraint, constraints.NonNeg)
    layer = layers.Conv2D(filters=4, kernel_size=3, bias_constraint="non_neg")
    layer.build((None, 5, 5, 3))
    assert isinstance(layer.bias.constraint, constraints.NonNeg)
    layer = layers.Conv1D(filters=4, kernel_size=3, kernel_constraint="max_norm")
    layer.build((None, 5, 3))
    assert isinstance(layer.kernel.constraint, constraints.MaxNorm)


# ---------------------------------------------------------------- DepthwiseConv2D


# depthwise_conv_test.py DepthwiseConvBasicTest.test_depthwise_conv2d_basic
@pytest.mark.parametrize(
    "kwargs,input_shape,output_shape",
    [
        (dict(depth_multiplier=5, kernel_size=2, strides=1, padding="valid", dilation_rate=1),
         (3, 5, 5, 4), (3, 4, 4, 20)),
        (dict(depth_multiplier=6, kernel_size=2, strides=1, padding="same", dilation_rate=(2, 2)),
         (3, 4, 4, 4), (3, 4, 4, 24)),
        (dict(depth_multiplier=6, kernel_size=(2, 2), strides=(2, 2), padding="valid",
              dilation_rate=(1, 1)), (3, 5, 5, 4), (3, 2, 2, 24)),
    ],
)  # fmt: skip
def test_depthwise_conv2d_basic(kwargs, input_shape, output_shape):
    layer = layers.DepthwiseConv2D(data_format="channels_last", **kwargs)
    y = layer(np.random.rand(*input_shape).astype(np.float32))
    assert tuple(y.shape) == output_shape
    assert len(layer.trainable_weights) == 2 and not layer.non_trainable_weights
    assert not layer.losses


# depthwise_conv_test.py DepthwiseConvCorrectnessTest.test_depthwise_conv2d
@pytest.mark.parametrize(
    "depth_multiplier,kernel_size,strides,padding,dilation",
    [
        (5, (2, 2), (1, 1), "valid", (1, 1)),
        (6, (2, 2), (1, 1), "same", (2, 2)),
        (6, (2, 2), (2, 2), "valid", (1, 1)),
    ],
)
def test_depthwise_conv2d_correctness(depth_multiplier, kernel_size, strides, padding, dilation):
    layer = layers.DepthwiseConv2D(
        depth_multiplier=depth_multiplier,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
    )
    x = np.random.normal(size=[2, 8, 8, 4]).astype(np.float32)
    layer.build(x.shape)
    k = np.random.normal(size=layer.kernel.shape).astype(np.float32)
    b = np.random.normal(size=(depth_multiplier * 4,)).astype(np.float32)
    layer.kernel.assign(k)
    layer.bias.assign(b)
    all_close(
        layer(x),
        _depthwise_np(x.astype(np.float64), k, b, strides, padding, dilation),
        atol=1e-5,
        rtol=1e-5,
    )


# depthwise_conv_test.py test_bad_init_args (messages as Keras')
def test_depthwise_bad_init_args():
    with pytest.raises(
        ValueError,
        match="Invalid value for argument `depth_multiplier`. Expected a strictly positive "
        "value. Received depth_multiplier=0.",
    ):
        layers.DepthwiseConv2D(depth_multiplier=0, kernel_size=1)
    with pytest.raises(
        ValueError,
        match=r"The `kernel_size` argument must be a tuple of 2 integers. Received "
        r"kernel_size=\(1, 0\), including values \{0\} that do not satisfy `value > 0`",
    ):
        layers.DepthwiseConv2D(depth_multiplier=2, kernel_size=(1, 0))
    with pytest.raises(
        ValueError,
        match=r"The `strides` argument must be a tuple of \d+ integers. Received "
        r"strides=\(1, 0\), including values \{0\} that do not satisfy `value > 0`",
    ):
        layers.DepthwiseConv2D(depth_multiplier=2, kernel_size=(2, 2), strides=(1, 0))


# depthwise_conv_test.py test_invalid_output_shape_raises
def test_depthwise_invalid_output_shape_raises():
    layer = layers.DepthwiseConv2D(5, strides=2, padding="valid", data_format="channels_last")
    with pytest.raises(ValueError, match="Computed output size would be zero or negative."):
        layer(np.random.rand(2, 4, 4, 3).astype(np.float32))
    assert not layer.weights


# ---------------------------------------------------------------- SeparableConv2D


# separable_conv_test.py SeparableConvBasicTest.test_separable_conv2d_basic
@pytest.mark.parametrize(
    "kwargs,input_shape,output_shape",
    [
        (dict(depth_multiplier=5, filters=5, kernel_size=2, strides=1, padding="valid",
              dilation_rate=1), (3, 5, 5, 4), (3, 4, 4, 5)),
        (dict(depth_multiplier=6, filters=6, kernel_size=2, strides=1, padding="same",
              dilation_rate=(2, 2)), (3, 4, 4, 4), (3, 4, 4, 6)),
        (dict(depth_multiplier=6, filters=6, kernel_size=(2, 2), strides=(2, 2), padding="valid",
              dilation_rate=(1, 1)), (3, 5, 5, 4), (3, 2, 2, 6)),
    ],
)  # fmt: skip
def test_separable_conv2d_basic(kwargs, input_shape, output_shape):
    layer = layers.SeparableConv2D(data_format="channels_last", **kwargs)
    y = layer(np.random.rand(*input_shape).astype(np.float32))
    assert tuple(y.shape) == output_shape
    assert len(layer.trainable_weights) == 3 and not layer.non_trainable_weights


# separable_conv_test.py SeparableConvCorrectnessTest: depthwise then 1x1, then the bias
@pytest.mark.parametrize(
    "depth_multiplier,filters,kernel_size,strides,padding,dilation",
    [
        (5, 5, (2, 2), (1, 1), "valid", (1, 1)),
        (6, 6, (2, 2), (1, 1), "same", (2, 2)),
        (6, 6, (2, 2), (2, 2), "valid", (1, 1)),
    ],
)
def test_separable_conv2d_correctness(
    depth_multiplier, filters, kernel_size, strides, padding, dilation
):
    layer = layers.SeparableConv2D(
        depth_multiplier=depth_multiplier,
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
    )
    x = np.random.normal(size=[2, 8, 8, 4]).astype(np.float32)
    layer.build(x.shape)
    dk = np.random.normal(size=layer.depthwise_kernel.shape).astype(np.float32)
    pk = np.random.normal(size=layer.pointwise_kernel.shape).astype(np.float32)
    b = np.random.normal(size=layer.bias.shape).astype(np.float32)
    layer.set_weights([dk, pk, b])
    mid = _depthwise_np(x.astype(np.float64), dk, 0.0, strides, padding, dilation)
    all_close(layer(x), np.einsum("nhwc,cf->nhwf", mid, pk[0, 0]) + b, atol=1e-4, rtol=1e-5)


# separable_conv_test.py test_bad_init_args
def test_separable_bad_init_args():
    with pytest.raises(ValueError, match="Received depth_multiplier=0."):
        layers.SeparableConv2D(depth_multiplier=0, filters=1, kernel_size=1)
    with pytest.raises(
        ValueError,
        match="Invalid value for argument `filters`. Expected a strictly positive value. "
        "Received filters=0.",
    ):
        layers.SeparableConv2D(depth_multiplier=1, filters=0, kernel_size=1)
    with pytest.raises(ValueError, match=r"kernel_size=\(1, 0\), including values \{0\}"):
        layers.SeparableConv2D(depth_multiplier=2, filters=2, kernel_size=(1, 0))


# --------------------------------------------------------------------- UpSampling2D


# up_sampling2d_test.py test_upsampling_2d (channels_last)
@pytest.mark.parametrize("length_row,length_col", [(2, 2), (2, 3)])
def test_upsampling_2d(length_row, length_col):
    x = np.random.rand(2, 11, 12, 2).astype(np.float32)
    y = layers.UpSampling2D(size=(length_row, length_col))(x)
    expected = np.repeat(np.repeat(x, length_row, axis=1), length_col, axis=2)
    all_close(y, expected)


# up_sampling2d_test.py test_upsampling_2d_bilinear: the shapes
@pytest.mark.parametrize("length_row,length_col", [(2, 2), (2, 3)])
def test_upsampling_2d_bilinear_shape(length_row, length_col):
    x = np.random.rand(2, 11, 12, 2).astype(np.float32)
    y = layers.UpSampling2D(size=(length_row, length_col), interpolation="bilinear")(x)
    assert tuple(y.shape) == (2, 11 * length_row, 12 * length_col, 2)


# up_sampling2d_test.py test_upsampling_2d_correctness
def test_upsampling_2d_correctness():
    x = np.arange(12).reshape((2, 2, 1, 3)).astype(np.float32)
    expected = np.array(
        [
            [[[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], [[3.0, 4.0, 5.0], [3.0, 4.0, 5.0]]],
            [[[6.0, 7.0, 8.0], [6.0, 7.0, 8.0]], [[9.0, 10.0, 11.0], [9.0, 10.0, 11.0]]],
        ]
    )
    all_close(layers.UpSampling2D(size=(1, 2))(x), expected)


# up_sampling2d_test.py test_upsampling_2d_various_interpolation_methods: nearest and
# bilinear run; bicubic is refused with the names we have (see the module docstring)
def test_upsampling_2d_interpolation_methods():
    x = np.arange(12).reshape((2, 2, 1, 3)).astype(np.float32)
    for interpolation in ["nearest", "bilinear"]:
        layers.UpSampling2D(size=(1, 2), interpolation=interpolation)(x)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        layers.UpSampling2D(size=(1, 2), interpolation="bicubic")


# ------------------------------------------------------------ ZeroPadding2D, Cropping2D


# zero_padding2d_test.py test_zero_padding_2d
def test_zero_padding_2d():
    x = np.random.rand(1, 2, 3, 4).astype(np.float32)
    y = np.asarray(layers.ZeroPadding2D(padding=((1, 2), (3, 4)))(x))
    for index in [0, -1, -2]:
        all_close(y[:, index, :, :], 0.0)
    for index in [0, 1, 2, -1, -2, -3, -4]:
        all_close(y[:, :, index, :], 0.0)
    all_close(y[:, 1:-2, 3:-4, :], x)


# zero_padding2d_test.py test_zero_padding_2d_with_same_padding
@pytest.mark.parametrize("padding", [((2, 2), (2, 2)), (2, 2), 2])
def test_zero_padding_2d_with_same_padding(padding):
    x = np.random.rand(1, 2, 3, 4).astype(np.float32)
    y = np.asarray(layers.ZeroPadding2D(padding=padding)(x))
    for index in [0, 1, -1, -2]:
        all_close(y[:, index, :, :], 0.0)
        all_close(y[:, :, index, :], 0.0)
    all_close(y[:, 2:-2, 2:-2, :], x)


# zero_padding2d_test.py test_zero_padding_2d_errors_if_padding_argument_invalid
@pytest.mark.parametrize(
    "padding", [(1,), (1, 2, 3), "1", ((1, 2), (3, 4, 5)), ((1, 2), (3, -4)), ((1, 2), "3")]
)
def test_zero_padding_2d_errors_if_padding_argument_invalid(padding):
    with pytest.raises(ValueError):
        layers.ZeroPadding2D(padding)


# zero_padding2d_test.py test_zero_padding_2d_get_config (less Keras' dtype policy)
def test_zero_padding_2d_get_config():
    layer = layers.ZeroPadding2D(padding=(1, 2), data_format="channels_last")
    config = layer.get_config()
    assert config["padding"] == ((1, 1), (2, 2))
    assert config["data_format"] == "channels_last"
    assert json.loads(json.dumps(config))["padding"] == [[1, 1], [2, 2]]


# cropping2d_test.py test_cropping_2d (channels_last)
@pytest.mark.parametrize(
    "cropping,expected_ranges",
    [
        (((1, 2), (3, 4)), ((1, 5), (3, 5))),
        (((2, 2), (2, 2)), ((2, 5), (2, 7))),
        ((2, 2), ((2, 5), (2, 7))),
        (2, ((2, 5), (2, 7))),
        (((0, 2), (0, 4)), ((0, 5), (0, 5))),
        (((1, 0), (3, 0)), ((1, 7), (3, 9))),
        (((1, 0), (3, 4)), ((1, 7), (3, 5))),
        (((1, 2), (3, 0)), ((1, 5), (3, 9))),
    ],
)
def test_cropping_2d(cropping, expected_ranges):
    x = np.random.rand(3, 7, 9, 5).astype(np.float32)
    (r0, r1), (c0, c1) = expected_ranges
    all_close(layers.Cropping2D(cropping=cropping)(x), x[:, r0:r1, c0:c1, :])


# cropping2d_test.py test_cropping_2d_errors_if_cropping_argument_invalid
@pytest.mark.parametrize(
    "cropping", [(1,), (1, 2, 3), "1", ((1, 2), (3, 4, 5)), ((1, 2), (3, -4)), ((1, 2), "3")]
)
def test_cropping_2d_errors_if_cropping_argument_invalid(cropping):
    with pytest.raises(ValueError):
        layers.Cropping2D(cropping=cropping)


# cropping2d_test.py test_cropping_2d_error_on_excessive_cropping and
# test_cropping_2d_errors_if_cropping_more_than_available (symbolic)
@pytest.mark.parametrize(
    "cropping,input_shape",
    [
        (((4, 5), (0, 0)), (3, 8, 9, 5)),
        (((0, 0), (5, 5)), (3, 8, 9, 5)),
        (((6, 3), (0, 0)), (3, 8, 9, 5)),
        (((0, 0), (7, 3)), (3, 8, 9, 5)),
        (((3, 6), (0, 0)), (3, 7, 9, 5)),
        (((0, 0), (5, 4)), (3, 7, 9, 5)),
    ],
)
def test_cropping_2d_error_on_excessive_cropping(cropping, input_shape):
    with pytest.raises(
        ValueError,
        match="Values in `cropping` argument should be smaller than the corresponding "
        "spatial dimension of the input.",
    ):
        layers.Cropping2D(cropping=cropping)(np.random.rand(*input_shape).astype(np.float32))
    with pytest.raises(ValueError, match="Values in `cropping` argument"):
        layers.Cropping2D(cropping=cropping)(keras.Input(input_shape[1:]))


# ------------------------------------------------------------ Permute, RepeatVector


# permute_test.py test_permute (dense)
def test_permute():
    x = np.random.random((10, 3, 5, 5)).astype(np.float32)
    x = x * (x >= 0.8)
    all_close(layers.Permute(dims=(3, 1, 2))(x), np.transpose(x, (0, 3, 1, 2)))


# permute_test.py test_permute_with_dynamic_batch_size
def test_permute_with_dynamic_batch_size():
    assert layers.Permute((2, 1))(keras.Input((3, 5))).shape == (None, 5, 3)


# permute_test.py test_permute_errors_on_invalid_starting_dims_index / _set_of_dims_indices
@pytest.mark.parametrize("dims", [(0, 1, 2), (1, 4, 2)])
def test_permute_errors_on_invalid_dims(dims):
    with pytest.raises(ValueError, match=r"Invalid permutation .*dims.*"):
        layers.Permute(dims)


# repeat_vector_test.py test_repeat_vector
def test_repeat_vector():
    x = np.random.random((2, 5)).astype(np.float32)
    all_close(layers.RepeatVector(n=3)(x), np.repeat(np.reshape(x, (2, 1, 5)), 3, axis=1))


# repeat_vector_test.py test_repeat_vector_with_dynamic_batch_size
def test_repeat_vector_with_dynamic_batch_size():
    assert layers.RepeatVector(n=3)(keras.Input((5,))).shape == (None, 3, 5)


# repeat_vector_test.py test_repeat_vector_with_invalid_n / _with_non_positive_n
def test_repeat_vector_invalid_n():
    for n in ("3", 3.5, [3]):
        with pytest.raises(TypeError, match="Expected an integer value for `n`"):
            layers.RepeatVector(n=n)
    for n in (0, -3):
        with pytest.raises(ValueError, match="should be a positive integer"):
            layers.RepeatVector(n=n)


# --------------------------------------------------------------------- constraints


def _example_array():
    """constraints_test.py's get_example_array."""
    np.random.seed(3537)
    a = np.random.random((100, 100)) * 100.0 - 50.0
    a[0, 0] = 0.0
    return a


# constraints_test.py test_max_norm
def test_max_norm():
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    target = np.array([[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [2.0 / np.sqrt(3)] * 3]).T
    all_close(constraints.MaxNorm(2.0)(x), target)


# constraints_test.py test_non_neg
def test_non_neg():
    out = np.asarray(constraints.NonNeg()(_example_array()))
    assert (np.min(out, axis=1) >= 0.0).all()


# constraints_test.py test_unit_norm
def test_unit_norm():
    out = np.asarray(constraints.UnitNorm()(_example_array()), np.float64)
    all_close(np.sqrt(np.sum(np.square(out), axis=0)), 1.0)


# constraints_test.py test_min_max_norm
def test_min_max_norm():
    out = np.asarray(constraints.MinMaxNorm(min_value=0.2, max_value=0.5)(_example_array()))
    l2 = np.sqrt(np.sum(np.square(out.astype(np.float64)), axis=0))
    assert np.all(l2 >= 0.2) and np.all(l2 <= 0.5 + 1e-6)


# constraints_test.py test_get_method
def test_get_method():
    assert isinstance(constraints.get("unit_norm"), constraints.UnitNorm)
    assert constraints.get(None) is None
    with pytest.raises(ValueError):
        constraints.get("typo")


# constraints_test.py test_default_constraint_call / get_config / from_config
def test_default_constraint():
    x = np.array([1.0, 2.0, 3.0])
    all_close(constraints.Constraint()(x), x)
    assert constraints.Constraint().get_config() == {}
    assert isinstance(constraints.Constraint.from_config({}), constraints.Constraint)


# constraints_test.py test_max_norm_get_config, test_unit_norm_get_config,
# test_min_max_norm_get_config
@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: constraints.MaxNorm(max_value=3.0, axis=1), {"max_value": 3.0, "axis": 1}),
        (lambda: constraints.UnitNorm(axis=1), {"axis": 1}),
        (
            lambda: constraints.MinMaxNorm(min_value=0.5, max_value=2.0, rate=0.7, axis=1),
            {"min_value": 0.5, "max_value": 2.0, "rate": 0.7, "axis": 1},
        ),
    ],
)
def test_constraint_get_config(make, expected):
    c = make()
    assert c.get_config() == expected
    restored = type(c).from_config(c.get_config())
    x = _example_array()
    all_close(restored(x), c(x))
    revived = constraints.deserialize(json.loads(json.dumps(constraints.serialize(c))))
    assert type(revived) is type(c) and revived.get_config() == expected
