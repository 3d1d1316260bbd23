"""MAML's batch_norm modes: the statistics the query is normalised with after adaptation.
References are NumPy forwards of the network written here (support statistics, moving
statistics), and finite differences for the meta-gradient through the support
statistics."""

import numpy as np
import pytest

from metalearn import keras, meta
from metalearn.keras import conv_layers
from metalearn.tasks.base import Task

L = keras.layers
EPS = 1e-3


def _model(seed=0, activation="relu"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            L.Input((4,)),
            L.Dense(6),
            conv_layers.BatchNormalization(epsilon=EPS),
            L.Activation(activation),
            L.Dense(3),
        ]
    )


def _task(seed=1, n_support=6, n_query=5):
    rng = np.random.default_rng(seed)
    sx = rng.normal(size=(n_support, 4)).astype(np.float32)
    qx = rng.normal(size=(n_query, 4)).astype(np.float32)
    return sx, np.arange(n_support) % 3, qx, np.arange(n_query) % 3


def _logits(w, x, mean=None, var=None, stats_from=None):
    """Dense -> BN (statistics given, or of `stats_from`'s hidden rows) -> ReLU -> Dense."""
    w1, b1, gamma, beta, w2, b2 = (np.asarray(v, np.float64) for v in w)
    h = np.asarray(x, np.float64) @ w1 + b1
    if stats_from is not None:
        hs = np.asarray(stats_from, np.float64) @ w1 + b1
        mean, var = hs.mean(0), hs.var(0)
    h = gamma * (h - mean) / np.sqrt(var + EPS) + beta
    return np.maximum(h, 0) @ w2 + b2


def _xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def test_support_mode_normalises_the_query_with_the_supports_statistics():
    sx, sy, qx, qy = _task()
    maml = meta.MAML(_model(), inner_lr=0.3, inner_steps=2, batch_norm="support")
    fast = maml.adapted_weights(sx, sy)
    want = _logits(fast, qx, stats_from=sx)
    res = maml.evaluate([Task(sx, sy, qx, qy)])
    assert res["loss"] == pytest.approx(_xent(want, qy), rel=1e-5)
    # adapt's model holds the support statistics as its moving ones: predict agrees
    adapted = maml.adapt(sx, sy)
    np.testing.assert_allclose(adapted.predict(qx, verbose=0), want, rtol=1e-4, atol=1e-5)
    # and the transductive mode (the query's own statistics) gives other numbers
    trans = meta.MAML(_model(), inner_lr=0.3, inner_steps=2)
    assert trans.evaluate([Task(sx, sy, qx, qy)])["loss"] != pytest.approx(res["loss"], rel=1e-3)


def test_support_mode_predicts_each_query_alone_and_transductive_does_not():
    sx, sy, qx, qy = _task(2)
    for mode, independent in (("support", True), ("transductive", False)):
        maml = meta.MAML(_model(), inner_lr=0.3, batch_norm=mode)
        whole = maml.evaluate([Task(sx, sy, qx, qy)])["loss"]
        alone = np.mean(
            [maml.evaluate([Task(sx, sy, qx[i : i + 2], qy[i : i + 2])])["loss"] for i in (0, 2)]
        )
        pair_mean = np.mean(
            [
                _xent(
                    _logits(maml.adapted_weights(sx, sy), qx[i : i + 2], stats_from=sx),
                    qy[i : i + 2],
                )
                for i in (0, 2)
            ]
        )
        if independent:
            assert alone == pytest.approx(pair_mean, rel=1e-5)
        else:
            assert alone != pytest.approx(pair_mean, rel=1e-3)
        assert np.isfinite(whole)


def test_support_mode_meta_gradient_flows_through_the_support_statistics():
    sx, sy, qx, qy = _task(3)
    batch = Task(sx[None], sy[None], qx[None], qy[None])
    # tanh: the inner step's gradient is smooth (with ReLU the adapted weights jump where a
    # unit switches, and finite differences across the jump mean nothing)
    maml = meta.MAML(_model(4, "tanh"), inner_lr=0.3, inner_steps=1, batch_norm="support")
    loss, grads = maml.meta_gradients(batch)
    weights = maml.model.trainable_weights
    base = [np.array(w) for w in weights]
    rng = np.random.default_rng(5)
    direction = [rng.normal(size=b.shape).astype(np.float32) for b in base]
    analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads, direction))
    eps = 1e-2

    trainable = {id(w): i for i, w in enumerate(weights)}
    everything = [np.array(w) for w in maml.model.weights]

    def set_trainable(values):
        maml.model.set_weights(
            [
                values[trainable[id(w)]] if id(w) in trainable else v
                for w, v in zip(maml.model.weights, everything)
            ]
        )

    def loss_at(t):
        set_trainable([b + t * d for b, d in zip(base, direction)])
        return maml.meta_gradients(batch)[0]

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    set_trainable(base)
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=2e-4)


def test_running_mode_collects_the_adapted_support_statistics_and_uses_them():
    sx, sy, qx, qy = _task(6)
    maml = meta.MAML(
        _model(7),
        inner_lr=0.3,
        inner_steps=1,
        batch_norm="running",
        meta_optimizer="sgd",
        meta_lr=0.0,
    )  # weights fixed: the stats alone move
    bn = maml.model.layers[1]
    fast = maml.adapted_weights(sx, sy)
    w1, b1 = (np.asarray(v, np.float64) for v in fast[:2])
    hs = sx @ w1 + b1
    maml.fit([Task(sx, sy, qx, qy)], iterations=1, meta_batch_size=1, verbose=0)
    m = bn.momentum
    np.testing.assert_allclose(
        np.asarray(bn.moving_mean), (1 - m) * hs.mean(0), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(bn.moving_variance), m + (1 - m) * hs.var(0), rtol=1e-4, atol=1e-6
    )
    res = maml.evaluate([Task(sx, sy, qx, qy)])
    want = _logits(
        maml.adapted_weights(sx, sy), qx, np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    )
    assert res["loss"] == pytest.approx(_xent(want, qy), rel=1e-5)


def test_support_and_running_modes_learn_and_metasgd_takes_them():
    from metalearn.tasks import NWayKShot

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 4)) * 2
    x = (centres.repeat(10, 0) + rng.normal(size=(80, 4)) * 0.3).astype(np.float32)
    y = np.arange(80) // 10
    tasks = NWayKShot((x, y), 3, 2, 4, augment_rotations=False, seed=1)
    for mode in ("support", "running"):
        maml = meta.MetaSGD(_model(), inner_lr=0.2, batch_norm=mode)
        hist = maml.fit(tasks, iterations=40, meta_batch_size=4, verbose=0)
        assert np.mean(hist["loss"][-10:]) < np.mean(hist["loss"][:10])


def test_bad_batch_norm_modes_are_refused_and_change_nothing():
    model = _model()
    before = [np.array(w) for w in model.weights]
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        meta.MAML(model, batch_norm="query")
    for cls in (meta.ANIL, meta.Reptile):
        with pytest.raises(ValueError, match="batch_norm must be one of"):
            cls(model, batch_norm="support-only")
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
