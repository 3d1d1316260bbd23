"""Conv layers (Keras face of the core's conv/pool/BN ops) and MAML through a conv net."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.functional import functional_call
from metalearn.meta import MAML, ProtoNet, clone_model, models
from metalearn.tasks import NWayKShot, Task

pytestmark = pytest.mark.skipif(not models.has_conv(), reason="core built without conv ops")
L = keras.layers


def _np_conv_same(x, k, b):
    n, h, w, c = x.shape
    kh, kw, _, f = k.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    out = np.zeros((n, h, w, f))
    for i in range(h):
        for j in range(w):
            out[:, i, j] = np.tensordot(
                xp[:, i : i + kh, j : j + kw], k, axes=([1, 2, 3], [0, 1, 2])
            )
    return out + b


def test_conv_pool_bn_layers_forward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    conv = L.Conv2D(4, 3, padding="same", bias_initializer="ones")
    y = np.asarray(conv(x))
    k = np.asarray(conv.kernel)
    np.testing.assert_allclose(y, _np_conv_same(x, k, 1.0), rtol=1e-4, atol=1e-5)
    assert L.Conv2D(4, (3, 2), strides=2)(x).shape == (2, 2, 3, 4)
    mp = np.asarray(L.MaxPooling2D(2)(x))
    np.testing.assert_allclose(mp, x.reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4)))
    ap = np.asarray(L.AveragePooling2D(2)(x))
    np.testing.assert_allclose(
        ap, x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(L.GlobalAveragePooling2D()(x)), x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )
    bn = L.BatchNormalization(momentum=0.9)
    out = np.asarray(bn(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), 0.1 * mean, rtol=1e-4, atol=1e-6)
    inf = np.asarray(bn(x))  # inference: moving statistics
    mm, mv = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    np.testing.assert_allclose(inf, (x - mm) / np.sqrt(mv + 1e-3), rtol=1e-4, atol=1e-4)
    assert [v.trainable for v in bn.weights] == [True, True, False, False]
    with pytest.raises(ValueError):
        L.Conv2D(4, 3, padding="full")
    with pytest.raises(ValueError):
        conv(np.zeros((2, 6, 6, 5), np.float32))


def test_bn_in_functional_call_uses_batch_stats_and_keeps_state():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(np.float32) * 3 + 2
    model = keras.Sequential([L.Dense(3, input_shape=(3,)), L.BatchNormalization()])
    before = [np.asarray(v).copy() for v in model.non_trainable_weights]
    w = [ml.tensor(np.asarray(v)) for v in model.trainable_weights]
    out = np.asarray(functional_call(model, w, x, training=True))
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
    for a, v in zip(before, model.non_trainable_weights):
        np.testing.assert_array_equal(a, np.asarray(v))
    model(x, training=True)  # an ordinary training call updates them
    assert not np.array_equal(before[0], np.asarray(model.non_trainable_weights[0]))


def test_conv4_builds_and_clones():
    enc = models.conv4()
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    assert enc(x).shape == (3, 64)
    clf = models.conv4(5)
    assert clf(x).shape == (3, 5) and len(clf.trainable_weights) == 4 * 4 + 2
    c = clone_model(clf)
    np.testing.assert_allclose(
        np.asarray(c(x, training=False)), np.asarray(clf(x, training=False)), rtol=1e-5, atol=1e-6
    )
    assert all(a is not b for a, b in zip(c.weights, clf.weights))


@pytest.mark.torch
def test_second_order_maml_through_conv_matches_torch():
    torch = pytest.importorskip("torch")
    ml.random.set_seed(0)
    model = keras.Sequential(
        [
            L.InputLayer(input_shape=(6, 6, 1)),
            L.Conv2D(3, 3, padding="same"),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(2),
        ]
    )
    rng = np.random.default_rng(0)
    model.set_weights(
        [
            rng.standard_normal(w.shape).astype(np.float32) * 0.5 if w.trainable else np.asarray(w)
            for w in model.weights
        ]
    )
    sx, qx = (rng.standard_normal((n, 6, 6, 1)).astype(np.float32) for n in (4, 6))
    sy, qy = np.array([0, 1, 0, 1]), np.array([0, 1, 1, 0, 1, 0])
    batch = Task(sx[None], sy[None], qx[None], qy[None], {"batched": True})
    lr = 0.3
    loss, grads = MAML(model, inner_lr=lr).meta_gradients(batch)

    P = [
        torch.tensor(np.asarray(w).astype(np.float64), requires_grad=True)
        for w in model.trainable_weights
    ]  # kernel, bias, gamma, beta, dense kernel, bias
    F = torch.nn.functional

    def f(p, x):
        x = torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2)
        h = F.conv2d(x, p[0].permute(3, 2, 0, 1), p[1], padding=1)
        h = F.batch_norm(h, None, None, p[2], p[3], training=True, eps=1e-3)
        h = F.max_pool2d(F.relu(h), 2)
        h = h.permute(0, 2, 3, 1).reshape(len(x), -1)  # channels-last flatten
        return h @ p[4] + p[5]

    ls = F.cross_entropy(f(P, sx), torch.tensor(sy))
    g = torch.autograd.grad(ls, P, create_graph=True)
    fast = [p - lr * gi for p, gi in zip(P, g)]
    lq = F.cross_entropy(f(fast, qx), torch.tensor(qy))
    ref = torch.autograd.grad(lq, P)
    assert abs(loss - lq.item()) < 1e-4
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=2e-3, atol=2e-5)


def test_protonet_conv4_runs_an_episode():
    rng = np.random.default_rng(0)
    x = rng.random((40, 28, 28, 1)).astype(np.float32)
    y = np.repeat(np.arange(8), 5)
    pn = ProtoNet(models.conv4(filters=8))
    h = pn.fit(NWayKShot((x, y), 4, 1, 2, seed=0), iterations=2, meta_batch_size=1, verbose=0)
    assert len(h["loss"]) == 2 and np.isfinite(h["loss"]).all()
