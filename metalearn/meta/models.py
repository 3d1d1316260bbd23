"""The networks of the meta-learning papers, as Keras models.

- ``sinusoid_mlp()``: MAML's regressor, 1-40-40-1 with ReLU (Finn et al. 2017, §5.1).
- ``omniglot_mlp(n_way)``: MAML's non-convolutional Omniglot network, 256-128-64-64
  with batch normalisation and ReLU, then a linear N-way output (Finn et al. 2017 §5.2,
  after Santoro et al. 2016). Without BatchNormalization in the build, BN is left out.
- ``conv4(n_way=None)``: four blocks [Conv 3x3 (64 filters, same padding), BatchNorm,
  ReLU, MaxPool 2x2] (Vinyals et al. 2016; used by MAML and ProtoNets). With `n_way`
  it ends in a Dense classifier (MAML), without it in a Flatten (ProtoNet's encoder: a
  64-d embedding for 28x28 inputs). ``kernel_initializer`` / ``bias_initializer`` take
  Keras initializer names or ``"torch"`` (PyTorch's Conv2d/Linear default), see docs/GAP.md.
- ``resnet12()``: MetaOptNet's ResNet-12 (Lee et al. 2019, after Oreshkin et al. 2018):
  four residual blocks of 64-160-320-640 filters, each three [Conv 3x3, BatchNorm,
  LeakyReLU(0.1)] with a [Conv 1x1, BatchNorm] shortcut, then a 2x2 max pool; 84x84x3
  images give a 5x5x640 map, flattened to 16 000 features (MetaOptNet's embedding) or
  averaged to 640 (``pool="avg"``). 12.4 M trainable weights, as the paper states.
"""

import math

from metalearn import _core
from metalearn.keras import conv_layers, initializers, layers
from metalearn.keras.models import Model, Sequential

__all__ = ["sinusoid_mlp", "omniglot_mlp", "conv4", "resnet12", "has_conv"]


def has_conv():
    """Whether the core has the convolution, pooling and batch-norm ops."""
    return all(hasattr(_core, op) for op in ("conv2d", "max_pool2d", "batch_norm"))


def _bn_available():
    return hasattr(_core, "batch_norm")


def sinusoid_mlp(hidden=(40, 40), activation="relu", name=None):
    """MAML's sinusoid regressor: ``1 -> 40 -> 40 -> 1``, ReLU (built)."""
    model = Sequential(name=name)
    model.add(layers.InputLayer(input_shape=(1,)))
    for units in hidden:
        model.add(layers.Dense(units, activation=activation))
    model.add(layers.Dense(1))
    return model


def omniglot_mlp(
    n_way=5, hidden=(256, 128, 64, 64), batch_norm=None, input_shape=(28, 28, 1), name=None
):
    """MAML's fully-connected Omniglot classifier (outputs logits).

    Args:
        n_way: classes (output units).
        hidden: hidden widths (paper: 256, 128, 64, 64).
        batch_norm: put BatchNormalization after each hidden Dense (paper: yes); None uses
            it when the build has it.
        input_shape: one image's shape.
    """
    if batch_norm is None:
        batch_norm = _bn_available()
    if batch_norm and not _bn_available():
        raise RuntimeError("omniglot_mlp: BatchNormalization is not available in this build")
    model = Sequential(name=name)
    model.add(layers.InputLayer(input_shape=tuple(input_shape)))
    model.add(layers.Flatten())
    for units in hidden:
        if batch_norm:
            model.add(layers.Dense(units))
            model.add(conv_layers.BatchNormalization())
            model.add(layers.Activation("relu"))
        else:
            model.add(layers.Dense(units, activation="relu"))
    model.add(layers.Dense(int(n_way)))
    return model


#: the name that asks for PyTorch's default initialisation of Conv2d / Linear
TORCH_INIT = "torch"


def _check_initializer(who, what, identifier):
    """Fails early, naming the argument, for an initializer Keras does not know (nothing
    is built yet); ``"torch"`` is resolved per layer by `_initializer`."""
    if isinstance(identifier, str) and identifier.lower() == TORCH_INIT:
        return
    try:
        initializers.get(identifier)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{who}: {what}={identifier!r} is not an initializer ({e})") from None


def _initializer(identifier, fan_in, bias=False):
    """`identifier` for one layer. ``"torch"`` is PyTorch's default for Conv2d and Linear
    (``kaiming_uniform_(a=sqrt(5))``): kernel and bias uniform in ``+-1/sqrt(fan_in)``,
    i.e. Keras' VarianceScaling(1/3, "fan_in", "uniform") for the kernel; the bias has no
    shape-derived Keras form, so its bound is computed from the layer's fan_in here."""
    if not (isinstance(identifier, str) and identifier.lower() == TORCH_INIT):
        return identifier
    if bias:
        bound = 1.0 / math.sqrt(fan_in)
        return initializers.RandomUniform(-bound, bound)
    return initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def conv4(
    n_way=None,
    filters=64,
    input_shape=(28, 28, 1),
    batch_norm=True,
    name=None,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
):
    """The four-block conv network of Vinyals et al. / MAML / ProtoNets.

    Args:
        n_way: None for an embedding network ending in Flatten (ProtoNet), else the number
            of classes of a Dense logits head (MAML).
        filters: filters per block (64; MAML's MiniImagenet net used 32).
        input_shape: one image's shape (channels last).
        batch_norm: BatchNormalization after each conv.
        kernel_initializer: of the convolutions and the Dense head: a Keras initializer
            (name, config or object; default ``"glorot_uniform"``, the Keras layers'
            default and the MAML authors' ``xavier_initializer``), or ``"torch"`` for
            PyTorch's default (uniform in ``+-1/sqrt(fan_in)``; see docs/GAP.md).
        bias_initializer: likewise for the biases (default ``"zeros"``); ``"torch"``:
            uniform in ``+-1/sqrt(fan_in)`` of each layer.

    Raises:
        ValueError: an initializer name Keras does not know (nor ``"torch"``).
        RuntimeError: the core was built without the conv ops.
    """
    if not has_conv():
        raise RuntimeError(
            "conv4: this build of metalearn has no Conv2D/MaxPool2D/"
            "BatchNormalization (metalearn._core lacks conv2d/max_pool2d/batch_norm)"
        )
    _check_initializer("conv4", "kernel_initializer", kernel_initializer)
    _check_initializer("conv4", "bias_initializer", bias_initializer)
    model = Sequential(name=name)
    model.add(layers.InputLayer(input_shape=tuple(input_shape)))
    channels = int(input_shape[-1])
    height, width = int(input_shape[0]), int(input_shape[1])
    for _ in range(4):
        fan_in = 9 * channels  # a 3x3 kernel over `channels` inputs
        model.add(
            conv_layers.Conv2D(
                filters,
                3,
                padding="same",
                kernel_initializer=_initializer(kernel_initializer, fan_in),
                bias_initializer=_initializer(bias_initializer, fan_in, bias=True),
            )
        )
        if batch_norm:
            model.add(conv_layers.BatchNormalization())
        model.add(layers.Activation("relu"))
        model.add(conv_layers.MaxPool2D(2))
        channels, height, width = filters, height // 2, width // 2
    model.add(layers.Flatten())
    if n_way is not None:
        fan_in = max(1, height * width * channels)
        model.add(
            layers.Dense(
                int(n_way),
                kernel_initializer=_initializer(kernel_initializer, fan_in),
                bias_initializer=_initializer(bias_initializer, fan_in, bias=True),
            )
        )
    return model


def resnet12(
    n_way=None,
    input_shape=(84, 84, 3),
    filters=(64, 160, 320, 640),
    pool="flatten",
    negative_slope=0.1,
    name=None,
):
    """MetaOptNet's ResNet-12 (Lee et al. 2019, "Meta-Learning with Differentiable Convex
    Optimization"; the residual network of Oreshkin et al. 2018), a functional model.

    Each of the four blocks: three [Conv 3x3 (same, no bias), BatchNormalization,
    LeakyReLU(0.1)] (the third without its LeakyReLU), plus a shortcut [Conv 1x1 (no bias),
    BatchNormalization] of the block's input, summed, LeakyReLU, then MaxPool 2x2. With
    MetaOptNet's 64-160-320-640 filters: 12.4 M trainable weights (12 414 848 in the convs,
    9 472 batch-norm scales and offsets) and 9 472 running statistics. DropBlock is not
    included.

    Args:
        n_way: None for the embedding network (ProtoNet, MetaOptNet), else the classes of
            a Dense logits head.
        input_shape: one image's shape (channels last).
        filters: the four blocks' filters.
        pool: ``"flatten"`` (MetaOptNet: 5x5x640 = 16 000 features at 84x84) or
            ``"avg"`` (global average pooling to the last block's filters).
        negative_slope: LeakyReLU's slope (0.1 in MetaOptNet).

    Raises:
        ValueError: `filters` is not four positive counts, or `pool` is neither.
        RuntimeError: the core was built without the conv ops.
    """
    if not has_conv():
        raise RuntimeError("resnet12: this build of metalearn has no Conv2D/MaxPool2D/BN")
    filters = tuple(int(f) for f in filters)
    if len(filters) != 4 or min(filters) < 1:
        raise ValueError(f"resnet12: filters must be four positive counts, got {filters}")
    if pool not in ("flatten", "avg"):
        raise ValueError(f"resnet12: pool must be 'flatten' or 'avg', got {pool!r}")
    inputs = layers.Input(tuple(input_shape))
    x = inputs
    # named as Keras' applications name theirs: block{b}_conv{i}, block{b}_shortcut_bn, ...
    for b, f in enumerate(filters, 1):
        shortcut = conv_layers.Conv2D(f, 1, use_bias=False, name=f"block{b}_shortcut_conv")(x)
        shortcut = conv_layers.BatchNormalization(name=f"block{b}_shortcut_bn")(shortcut)
        for i in range(1, 4):
            x = conv_layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{b}_conv{i}")(
                x
            )
            x = conv_layers.BatchNormalization(name=f"block{b}_bn{i}")(x)
            if i < 3:
                x = layers.LeakyReLU(negative_slope, name=f"block{b}_relu{i}")(x)
        x = layers.Add(name=f"block{b}_add")([x, shortcut])
        x = layers.LeakyReLU(negative_slope, name=f"block{b}_out")(x)
        x = conv_layers.MaxPool2D(2, name=f"block{b}_pool")(x)
    if pool == "avg":
        x = conv_layers.GlobalAveragePooling2D()(x)
    else:
        x = layers.Flatten()(x)
    if n_way is not None:
        x = layers.Dense(int(n_way))(x)
    return Model(inputs, x, name=name or "resnet12")
