"""ANIL's and Reptile's batch_norm modes, with MAML's meaning: the query normalised with the
query batch's statistics (transductive), the adapted network's support statistics
(support), or the moving statistics that meta-training moves towards each task's adapted
support statistics (running). References are NumPy forwards of the network written here
(tests/meta/test_batch_norm_modes.py's), and finite differences for the meta-gradient."""

import numpy as np
import pytest

from metalearn import meta
from metalearn.tasks.base import Task
from tests.meta.test_batch_norm_modes import _logits, _model, _task, _xent

LEARNERS = {
    "anil": lambda model, **kw: meta.ANIL(model, inner_lr=0.3, inner_steps=2, **kw),
    "reptile": lambda model, **kw: meta.Reptile(model, inner_lr=0.3, inner_steps=2, **kw),
}


def _hidden_stats(weights, x):
    """Mean and biased variance of the first Dense layer's outputs (what BN normalises)."""
    w1, b1 = (np.asarray(v, np.float64) for v in weights[:2])
    h = np.asarray(x, np.float64) @ w1 + b1
    return h.mean(0), h.var(0)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_each_mode_normalises_the_query_as_it_promises(name):
    sx, sy, qx, qy = _task(11)
    task = Task(sx, sy, qx, qy)
    losses = {}
    for mode in ("transductive", "support"):
        learner = LEARNERS[name](_model(), batch_norm=mode)
        fast = learner.adapted_weights(sx, sy)
        stats_from = sx if mode == "support" else qx
        want = _logits(fast, qx, stats_from=stats_from)
        losses[mode] = learner.evaluate([task])["loss"]
        assert losses[mode] == pytest.approx(_xent(want, qy), rel=1e-5), mode
        if mode == "support":  # adapt's model holds the support statistics: predict agrees
            adapted = learner.adapt(sx, sy)
            np.testing.assert_allclose(adapted.predict(qx, verbose=0), want, rtol=1e-4, atol=1e-5)
    # learner = the support mode's; its adapted weights are the transductive mode's (the
    # support is normalised by its own statistics in both)
    other = LEARNERS[name](_model(), batch_norm="transductive").adapted_weights(sx, sy)
    for a, b in zip(fast, other):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert losses["support"] != pytest.approx(losses["transductive"], rel=1e-3)
    # running: the moving statistics (here the initial 0 and 1)
    learner.batch_norm = "running"
    bn = learner.model.layers[1]
    want = _logits(fast, qx, np.asarray(bn.moving_mean), np.asarray(bn.moving_variance))
    assert learner.evaluate([task])["loss"] == pytest.approx(_xent(want, qy), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_support_mode_predicts_each_query_alone(name):
    sx, sy, qx, qy = _task(12)
    learner = LEARNERS[name](_model(), batch_norm="support")
    fast = learner.adapted_weights(sx, sy)
    for i in (0, 2):
        got = learner.evaluate([Task(sx, sy, qx[i : i + 1], qy[i : i + 1])])["loss"]
        want = _xent(_logits(fast, qx[i : i + 1], stats_from=sx), qy[i : i + 1])
        assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_running_mode_moves_the_statistics_towards_the_adapted_support_statistics(name):
    """One meta-iteration of one task (SGD meta-step of 0.5: the weights move) moves the
    moving statistics to momentum * initial + (1 - momentum) * the support's statistics
    under the weights the task adapted to, before the update; transductive and support
    modes leave them alone (ANIL's body once moved them on every pass), and
    meta_gradients does not move them."""
    sx, sy, qx, qy = _task(13)
    task = Task(sx, sy, qx, qy)
    moved = {}
    for mode in ("running", "transductive", "support"):
        learner = LEARNERS[name](_model(7), batch_norm=mode, meta_optimizer="sgd", meta_lr=0.5)
        bn = learner.model.layers[1]
        fast = learner.adapted_weights(sx, sy)  # ANIL: the body is the model's own
        mean, var = _hidden_stats(fast, sx)
        learner.meta_gradients(Task(sx[None], sy[None], qx[None], qy[None]))
        np.testing.assert_array_equal(np.asarray(bn.moving_mean), np.zeros(6, np.float32))
        before = [np.array(w) for w in learner.model.trainable_weights]
        learner.fit([task], iterations=1, meta_batch_size=1, verbose=0)
        assert any(
            np.abs(a - np.asarray(b)).max() > 1e-5
            for a, b in zip(before, learner.model.trainable_weights)
        )
        moved[mode] = (np.array(bn.moving_mean), np.array(bn.moving_variance))
        if mode == "running":
            m = bn.momentum
            np.testing.assert_allclose(moved[mode][0], (1 - m) * mean, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(moved[mode][1], m + (1 - m) * var, rtol=1e-4, atol=1e-6)
            # and evaluate normalises the query with them
            want = _logits(learner.adapted_weights(sx, sy), qx, *moved[mode])
            assert learner.evaluate([task])["loss"] == pytest.approx(_xent(want, qy), rel=1e-5)
    assert np.abs(moved["running"][0]).max() > 1e-3
    np.testing.assert_array_equal(moved["transductive"][0], np.zeros(6, np.float32))
    np.testing.assert_array_equal(moved["support"][0], np.zeros(6, np.float32))
    np.testing.assert_array_equal(moved["support"][1], np.ones(6, np.float32))


def test_reptile_direction_does_not_depend_on_the_mode_and_its_loss_does():
    sx, sy, qx, qy = _task(14)
    batch = Task(sx[None], sy[None], qx[None], qy[None])
    got = {
        mode: LEARNERS["reptile"](_model(), batch_norm=mode).meta_gradients(batch)
        for mode in ("transductive", "support", "running")
    }
    for mode in ("support", "running"):
        for a, b in zip(got[mode][1], got["transductive"][1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert got[mode][0] != pytest.approx(got["transductive"][0], rel=1e-3)


def test_non_transductive_modes_run_the_tasks_one_by_one():
    for name in ("reptile",):
        assert LEARNERS[name](_model())._vector_plan() is not None
        for mode in ("support", "running"):
            assert LEARNERS[name](_model(), batch_norm=mode)._vector_plan() is None


def test_anil_support_mode_meta_gradient_flows_through_the_support_statistics():
    """Finite differences of the meta-loss along a random direction in all the weights
    (the body's reach the query through the support's statistics)."""
    sx, sy, qx, qy = _task(15)
    batch = Task(sx[None], sy[None], qx[None], qy[None])
    learner = meta.ANIL(_model(4, "tanh"), inner_lr=0.3, inner_steps=1, batch_norm="support")
    loss, grads = learner.meta_gradients(batch)
    weights = learner.model.trainable_weights
    base = [np.array(w) for w in weights]
    rng = np.random.default_rng(5)
    direction = [rng.normal(size=b.shape).astype(np.float32) for b in base]
    analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads, direction))
    trainable = {id(w): i for i, w in enumerate(weights)}
    everything = [np.array(w) for w in learner.model.weights]

    def loss_at(t):
        values = [b + t * d for b, d in zip(base, direction)]
        learner.model.set_weights(
            [
                values[trainable[id(w)]] if id(w) in trainable else v
                for w, v in zip(learner.model.weights, everything)
            ]
        )
        return learner.meta_gradients(batch)[0]

    eps = 1e-2
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    loss_at(0.0)
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=2e-4)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_modes_learn(name):
    from metalearn.tasks import NWayKShot

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 4)) * 2
    x = (centres.repeat(10, 0) + rng.normal(size=(80, 4)) * 0.3).astype(np.float32)
    y = np.arange(80) // 10
    for mode in ("support", "running") + (("pooled",) if name == "anil" else ()):
        tasks = NWayKShot((x, y), 3, 2, 4, augment_rotations=False, seed=1)
        kw = dict(meta_lr=0.01, meta_optimizer="adam") if name == "anil" else {}
        learner = LEARNERS[name](_model(), batch_norm=mode, **kw)
        hist = learner.fit(tasks, iterations=40, meta_batch_size=4, verbose=0)
        assert np.mean(hist["loss"][-10:]) < np.mean(hist["loss"][:10]), (name, mode)


# ------------------------------------------------------------------ ANIL's pooled mode
def _pooled_reference(weights, sx, sy, qx, qy, lr=0.3, steps=2, activation="relu"):
    """learn2learn's ANIL in NumPy (float64): the body over support and query as one batch
    (their joint statistics), the head adapted by `steps` SGD steps on the support's mean
    cross-entropy, the query's loss with the adapted head."""
    w1, b1, gamma, beta, w2, b2 = (np.asarray(v, np.float64) for v in weights)
    h = np.concatenate([sx, qx]).astype(np.float64) @ w1 + b1
    f = gamma * (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-3) + beta
    f = np.tanh(f) if activation == "tanh" else np.maximum(f, 0)
    fs, fq = f[: len(sx)], f[len(sx) :]
    onehot = np.eye(w2.shape[1])[sy]
    for _ in range(steps):
        z = fs @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d = (p - onehot) / len(sx)
        w2, b2 = w2 - lr * fs.T @ d, b2 - lr * d.sum(0)
    return _xent(fq @ w2 + b2, qy)


def test_anil_pooled_normalises_support_and_query_together():
    sx, sy, qx, qy = _task(21)
    task = Task(sx, sy, qx, qy)
    learner = LEARNERS["anil"](_model(3), batch_norm="pooled")
    weights = [np.array(w) for w in learner.model.trainable_weights]
    want = _pooled_reference(weights, sx, sy, qx, qy)
    assert learner.evaluate([task])["loss"] == pytest.approx(want, rel=1e-5)
    # the meta-step's query loss is the same number
    batch = Task(sx[None], sy[None], qx[None], qy[None])
    assert learner.meta_gradients(batch)[0] == pytest.approx(want, rel=1e-5)
    # and it is not the transductive mode's (support and query normalised apart)
    trans = LEARNERS["anil"](_model(3)).evaluate([task])["loss"]
    assert trans != pytest.approx(want, rel=1e-3)
    # the body's moving statistics are left alone (functional calls)
    bn = learner.model.layers[1]
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), np.zeros(6, np.float32))


def test_anil_pooled_meta_gradient_matches_finite_differences():
    sx, sy, qx, qy = _task(22)
    batch = Task(sx[None], sy[None], qx[None], qy[None])
    learner = meta.ANIL(_model(5, "tanh"), inner_lr=0.3, inner_steps=2, batch_norm="pooled")
    loss, grads = learner.meta_gradients(batch)
    base = [np.array(w, np.float64) for w in learner.model.trainable_weights]
    rng = np.random.default_rng(6)
    direction = [rng.normal(size=b.shape) for b in base]
    analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads, direction))

    def ref(t):
        moved = [b + t * d for b, d in zip(base, direction)]
        return _pooled_reference(moved, sx, sy, qx, qy, activation="tanh")

    assert loss == pytest.approx(ref(0.0), rel=1e-5)
    eps = 1e-4
    numeric = (ref(eps) - ref(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-5)


def test_pooled_is_refused_where_it_has_no_meaning():
    for make in (meta.MAML, meta.Reptile, meta.MetaSGD, meta.FOMAML):
        with pytest.raises(ValueError, match="pooled"):
            make(_model(), batch_norm="pooled")
    # ANIL needs the body and the head apart: a functional model is refused at its first
    # task, before any weight moves
    from metalearn import keras

    inp = keras.layers.Input((4,))
    h = keras.layers.Dense(6)(inp)
    out = keras.layers.Dense(3)(keras.layers.Activation("relu")(h))
    model = keras.Model(inp, out)
    learner = meta.ANIL(model, batch_norm="pooled")
    before = [np.array(w) for w in model.weights]
    sx, sy, qx, qy = _task(23)
    with pytest.raises(ValueError, match="Sequential"):
        learner.fit([Task(sx, sy, qx, qy)], iterations=1, meta_batch_size=1, verbose=0)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
