"""The networks of the meta-learning papers, as Keras models.

- ``sinusoid_mlp()``: MAML's regressor, 1-40-40-1 with ReLU (Finn et al. 2017, §5.1).
- ``omniglot_mlp(n_way)``: MAML's non-convolutional Omniglot network, 256-128-64-64
  with batch normalisation and ReLU, then a linear N-way output (Finn et al. 2017 §5.2,
  after Santoro et al. 2016). Without BatchNormalization in the build, BN is left out.
- ``conv4(n_way=None)``: four blocks [Conv 3x3 (64 filters, same padding), BatchNorm,
  ReLU, MaxPool 2x2] (Vinyals et al. 2016; used by MAML and ProtoNets). With `n_way`
  it ends in a Dense classifier (MAML), without it in a Flatten (ProtoNet's encoder: a
  64-d embedding for 28x28 inputs).
"""

from metalearn import _core
from metalearn.keras import conv_layers, layers
from metalearn.keras.models import Sequential

__all__ = ["sinusoid_mlp", "omniglot_mlp", "conv4", "has_conv"]


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


def conv4(n_way=None, filters=64, input_shape=(28, 28, 1), batch_norm=True, name=None):
    """The four-block conv network of Vinyals et al. / MAML / ProtoNets.

    Args:
        n_way: None for an embedding network ending in Flatten (ProtoNet), else the number
            of classes of a Dense logits head (MAML).
        filters: filters per block (64; MAML's MiniImagenet net used 32).
        input_shape: one image's shape (channels last).
        batch_norm: BatchNormalization after each conv.

    Raises:
        RuntimeError: the core was built without the conv ops.
    """
    if not has_conv():
        raise RuntimeError(
            "conv4: this build of metalearn has no Conv2D/MaxPool2D/"
            "BatchNormalization (metalearn._core lacks conv2d/max_pool2d/batch_norm)"
        )
    model = Sequential(name=name)
    model.add(layers.InputLayer(input_shape=tuple(input_shape)))
    for _ in range(4):
        model.add(conv_layers.Conv2D(filters, 3, padding="same"))
        if batch_norm:
            model.add(conv_layers.BatchNormalization())
        model.add(layers.Activation("relu"))
        model.add(conv_layers.MaxPool2D(2))
    model.add(layers.Flatten())
    if n_way is not None:
        model.add(layers.Dense(int(n_way)))
    return model
