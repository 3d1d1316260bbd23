"""meta.models.resnet12: MetaOptNet's ResNet-12. Its weight count against the paper's
arithmetic, its forward against a NumPy implementation of the architecture written here
from the paper's description, and meta-learning through it."""

import numpy as np
import pytest

from metalearn import meta
from metalearn.keras import layers
from metalearn.meta import models


def _paper_count(filters=(64, 160, 320, 640), channels=3):
    """Lee et al. 2019's ResNet-12 from its description: per block three 3x3 convs and a
    1x1 shortcut conv (no biases), four batch norms (scale + offset trainable)."""
    conv, bn, c = 0, 0, channels
    for f in filters:
        conv += 9 * c * f + 9 * f * f * 2 + c * f
        bn += 4 * 2 * f
        c = f
    return conv, bn


def test_resnet12_has_metaoptnets_weights_and_shapes():
    conv, bn = _paper_count()
    assert conv == 12_414_848  # "12.4M parameters" (MetaOptNet, Table 1 footnote)
    m = models.resnet12()
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert trainable == conv + bn
    assert m.count_params() == conv + 2 * bn  # + the running mean and variance
    assert m.output_shape == (None, 16000)  # 5 x 5 x 640 at 84 x 84
    assert models.resnet12(pool="avg").output_shape == (None, 640)
    assert models.resnet12(n_way=5, pool="avg").output_shape == (None, 5)


def _conv_same(x, k):
    """x (N,H,W,C), k (kh,kw,C,F): stride 1, 'same' padding (odd kernels)."""
    kh, kw = k.shape[:2]
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cf->nhwf", xp[:, i : i + h, j : j + w, :], k[i, j])
    return out


def _reference(model, x, slope=0.1):
    """The forward in inference mode, from the paper's block description."""

    def w(name, i):
        return np.asarray(model.get_layer(name).weights[i], np.float64)

    def bn(name, y):
        layer = model.get_layer(name)
        gamma, beta, mean, var = (w(name, i) for i in range(4))
        return gamma * (y - mean) / np.sqrt(var + layer.epsilon) + beta

    def lrelu(y):
        return np.where(y >= 0, y, slope * y)

    x = np.asarray(x, np.float64)
    for b in range(1, 5):
        short = bn(f"block{b}_shortcut_bn", _conv_same(x, w(f"block{b}_shortcut_conv", 0)))
        y = x
        for i in range(1, 4):
            y = bn(f"block{b}_bn{i}", _conv_same(y, w(f"block{b}_conv{i}", 0)))
            if i < 3:
                y = lrelu(y)
        y = lrelu(y + short)
        n, h, wd, c = y.shape
        h2, w2 = h // 2, wd // 2  # 2x2 max pool, floor (nn.MaxPool2d(2))
        x = y[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))
    return x.reshape(len(x), -1)


def test_resnet12_forward_is_the_papers_architecture():
    rng = np.random.default_rng(0)
    m = models.resnet12(input_shape=(20, 20, 3), filters=(4, 5, 6, 7))
    # random weights everywhere, running statistics included (variances positive)
    m.set_weights(
        [
            (
                rng.random(w.shape) + 0.5 if "variance" in w.name else rng.normal(0, 0.5, w.shape)
            ).astype(np.float32)
            for w in m.weights
        ]
    )
    x = rng.random((3, 20, 20, 3), dtype=np.float32)
    got = np.asarray(m(x, training=False))
    assert got.shape == (3, 7)  # 20 -> 10 -> 5 -> 2 -> 1
    np.testing.assert_allclose(got, _reference(m, x), rtol=2e-4, atol=2e-4)


def test_protonet_and_maml_train_through_resnet12():
    rng = np.random.default_rng(1)
    x = rng.random((4 * 6, 16, 16, 3), dtype=np.float32)
    y = np.repeat(np.arange(4), 6)
    from metalearn.tasks import NWayKShot

    tasks = NWayKShot((x, y), 2, 1, 2, augment_rotations=False, seed=0)
    enc = models.resnet12(input_shape=(16, 16, 3), filters=(4, 4, 4, 4), pool="avg")
    before = [np.array(w) for w in enc.trainable_weights]
    meta.ProtoNet(enc).fit(tasks, iterations=2, verbose=0)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, enc.trainable_weights))
    net = models.resnet12(2, input_shape=(16, 16, 3), filters=(4, 4, 4, 4), pool="avg")
    hist = meta.MAML(net, inner_lr=0.1, inner_steps=1).fit(
        tasks, iterations=2, meta_batch_size=2, verbose=0
    )
    assert np.all(np.isfinite(hist["loss"]))


def test_resnet12_refuses_bad_arguments():
    with pytest.raises(ValueError, match="four positive counts"):
        models.resnet12(filters=(64, 160, 320))
    with pytest.raises(ValueError, match="'flatten' or 'avg'"):
        models.resnet12(pool="max")
    with pytest.raises(ValueError, match="negative_slope"):
        layers.LeakyReLU(-1)


def test_leaky_relu_layer_is_keras_default_and_serialises():
    layer = layers.LeakyReLU()
    assert layer.negative_slope == 0.3  # Keras 3's layer default (the function's is 0.2)
    out = np.asarray(layer(np.array([[-2.0, 0.0, 3.0]], np.float32)))
    np.testing.assert_allclose(out, [[-0.6, 0.0, 3.0]], rtol=1e-6)
    again = layers.deserialize(layers.serialize(layers.LeakyReLU(0.1)))
    assert isinstance(again, layers.LeakyReLU) and again.negative_slope == pytest.approx(0.1)
