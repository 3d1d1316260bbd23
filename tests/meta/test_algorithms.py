"""Reptile, Meta-SGD, ANIL, FOMAML and ProtoNet: each learns; their update rules check out."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.meta import ANIL, FOMAML, MAML, MetaSGD, ProtoNet, Reptile, models, prototype_logits
from metalearn.tasks import NWayKShot, Sinusoid
from tests.helpers import requires_omniglot
from tests.helpers import sinusoid_model as _model


@pytest.mark.parametrize("name", ["fomaml", "reptile", "metasgd", "anil"])
def test_algorithm_reduces_post_adaptation_loss_on_sinusoid(name):
    make = {
        "fomaml": lambda m: FOMAML(m, inner_lr=0.01),
        "reptile": lambda m: Reptile(m, inner_lr=0.02, inner_steps=5, meta_lr=1.0),
        "metasgd": lambda m: MetaSGD(m, inner_lr=0.01),
        "anil": lambda m: ANIL(m, inner_lr=0.01),
    }[name]
    alg = make(_model())
    test = Sinusoid(seed=42).sample_batch(60)
    steps = 1 if name in ("metasgd", "fomaml", "anil") else 5
    before = alg.evaluate(test, steps=steps)["mse"]
    h = alg.fit(Sinusoid(seed=1), iterations=400, meta_batch_size=10, verbose=0)
    after = alg.evaluate(test, steps=steps)["mse"]
    assert after < 0.75 * before, (before, after)
    assert np.mean(h["loss"][-50:]) < 0.8 * np.mean(h["loss"][:50])


def test_metasgd_learns_per_parameter_rates_and_uses_them():
    model = _model(1)
    alg = MetaSGD(model, inner_lr=0.01)
    alg.fit(Sinusoid(seed=0), iterations=30, meta_batch_size=5, verbose=0)
    rates = [np.asarray(a) for a in alg.learning_rates]
    assert [r.shape for r in rates] == [tuple(w.shape) for w in model.trainable_weights]
    assert any(np.abs(r - 0.01).max() > 1e-4 for r in rates)  # meta-trained
    assert len(np.unique(np.round(rates[0], 7))) > 1  # per parameter
    t = Sinusoid(seed=3).sample()
    w = model.get_weights()
    x = ml.tensor(t.support_x)
    params = [ml.tensor(a, requires_grad=True) for a in w]
    loss = ml.reduce_mean(ml.mean_squared_error(t.support_y, ml.functional_call(model, params, x)))
    g = ml.grad(loss, params)
    want = [a - r * np.asarray(gi) for a, r, gi in zip(w, rates, g)]
    got = alg.adapt(t.support_x, t.support_y).get_weights()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_anil_adapts_only_the_head():
    model = _model(2)
    alg = ANIL(model, inner_lr=0.05)
    t = Sinusoid(seed=3).sample()
    adapted = alg.adapt(t.support_x, t.support_y, steps=3).get_weights()
    orig = model.get_weights()
    for a, b in zip(adapted[:4], orig[:4]):  # body: two Dense layers
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(adapted[4:], orig[4:]))
    # ANIL's meta-gradient reaches the body (through the head's inner update and the query)
    batch = Sinusoid(seed=4).sample_batch(2)
    _, grads = alg.meta_gradients(batch)
    assert len(grads) == 6 and np.abs(np.asarray(grads[0])).max() > 0
    # with a 1-layer body the ANIL meta-gradient equals MAML's restricted inner loop, computed
    # by hand: head-only inner step
    fast_maml = MAML(model, inner_lr=0.05)
    _, g_maml = fast_maml.meta_gradients(batch)
    assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-6 for a, b in zip(grads, g_maml))


def test_reptile_update_rule():
    model = _model(3)
    theta = model.get_weights()
    alg = Reptile(model, inner_lr=0.02, inner_steps=3, meta_lr=0.5)
    batch = Sinusoid(seed=5).sample_batch(2)
    phis = [alg.adapt(t.support_x, t.support_y).get_weights() for t in batch.tasks()]
    for a, b in zip(theta, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    alg.fit(batch, iterations=1, meta_batch_size=2, verbose=0)
    for k, w in enumerate(model.get_weights()):
        want = theta[k] + 0.5 * (np.mean([p[k] for p in phis], axis=0) - theta[k])
        np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)
    assert Reptile(model, epsilon=0.25).meta_lr == 0.25


def test_fomaml_passes_maml_arguments_through():
    model = _model(3)
    alg = FOMAML(model, inner_lr=0.02, batch_norm="support", vectorize=False, trace=False)
    assert alg.first_order and alg.batch_norm == "support" and alg.vectorize is False
    assert FOMAML(model, inner_optimizer="adam").inner_optimizer == "adam"
    with pytest.raises(TypeError, match="first_order is not an argument"):
        FOMAML(model, first_order=False)
    with pytest.raises(TypeError):
        FOMAML(model, no_such_argument=1)


@pytest.mark.parametrize("trace", [True, False])
def test_reptile_meta_step_annealed_linearly_as_the_authors_code(trace):
    # openai/supervised-reptile train.py: iteration i steps with
    # frac_done * meta_step_size_final + (1 - frac_done) * meta_step_size, frac_done =
    # i / meta_iters; here SGD(PolynomialDecay(1.0, N, 0.0)), the decay Keras computes
    from metalearn.keras import optimizers
    from metalearn.keras.optimizers import schedules

    n, batch = 4, Sinusoid(seed=5).sample_batch(2)
    model = _model(3)
    theta = model.get_weights()
    sgd = optimizers.SGD(schedules.PolynomialDecay(1.0, n, 0.0))
    alg = Reptile(model, inner_lr=0.02, inner_steps=3, meta_optimizer=sgd, trace=trace)
    alg.fit(batch, iterations=n, meta_batch_size=2, verbose=0)
    ref_model = _model(3)
    ref = Reptile(ref_model, inner_lr=0.02, inner_steps=3)
    for i in range(n):
        ref_model.set_weights(theta)
        phis = [ref.adapt(t.support_x, t.support_y).get_weights() for t in batch.tasks()]
        eps = (i / n) * 0.0 + (1 - i / n) * 1.0
        theta = [t + eps * (np.mean([p[k] for p in phis], axis=0) - t) for k, t in enumerate(theta)]
    for w, want in zip(model.get_weights(), theta):
        np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)
    assert sgd.iterations == n and sgd.learning_rate == 0.0


# ------------------------------------------------------------------ ProtoNet


def _np_protonet_loss(W, sx, sy, qx, qy, n_way):
    es, eq = sx @ W, qx @ W
    protos = np.stack([es[sy == c].mean(0) for c in range(n_way)])
    d = ((eq[:, None, :] - protos[None]) ** 2).sum(-1)
    logits = -d
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(qy)), qy].mean(), -d


def test_protonet_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    n_way, k, q, d_in, d_emb = 3, 2, 4, 5, 4
    sx = rng.standard_normal((n_way * k, d_in)).astype(np.float32)
    qx = rng.standard_normal((n_way * q, d_in)).astype(np.float32)
    sy, qy = np.repeat(np.arange(n_way), k), np.repeat(np.arange(n_way), q)
    enc = keras.Sequential([keras.layers.Dense(d_emb, use_bias=False, input_shape=(d_in,))])
    W = (rng.standard_normal((d_in, d_emb)) * 0.5).astype(np.float32)
    enc.set_weights([W])
    pn = ProtoNet(enc)
    loss, logits = pn.episode_loss(sx, sy, qx, qy)
    want, want_logits = _np_protonet_loss(W.astype(np.float64), sx, sy, qx, qy, n_way)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss.item(), want, rtol=1e-5)
    (g,) = ml.grad(loss, enc.trainable_weights)
    eps, num = 1e-6, np.zeros_like(W, np.float64)
    for i in np.ndindex(W.shape):
        Wp, Wm = W.astype(np.float64), W.astype(np.float64)
        Wp[i] += eps
        Wm[i] -= eps
        num[i] = (
            _np_protonet_loss(Wp, sx, sy, qx, qy, n_way)[0]
            - _np_protonet_loss(Wm, sx, sy, qx, qy, n_way)[0]
        ) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), num, rtol=1e-3, atol=1e-5)
    # cosine: logits are cosines between queries and prototypes
    cos = prototype_logits(ml.tensor(sx @ W), sy, ml.tensor(qx @ W), n_way, "cosine")
    es, eq = sx @ W, qx @ W
    p = np.stack([es[sy == c].mean(0) for c in range(n_way)])
    want_cos = (eq / np.linalg.norm(eq, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(np.asarray(cos), want_cos, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        ProtoNet(enc, distance="manhattan")


def _omniglot_subset():
    from metalearn.datasets import omniglot

    x, y = omniglot(split="vinyals_trainval")
    xt, yt = omniglot(split="vinyals_test")
    return (x[y < 300], y[y < 300]), (xt[yt < 100], yt[yt < 100])


@requires_omniglot
def test_protonet_on_omniglot_subset_beats_chance():
    train, test = _omniglot_subset()
    ml.random.set_seed(0)
    enc = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(28, 28, 1)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64),
        ]
    )
    pn = ProtoNet(enc, meta_lr=0.001)
    episodes = NWayKShot(test, n_way=5, k_shot=1, q_queries=5, augment_rotations=False, seed=1)
    h = pn.fit(
        NWayKShot(train, n_way=20, k_shot=1, q_queries=5, seed=0),
        iterations=400,
        meta_batch_size=1,
        verbose=0,
    )
    assert set(h) == {"loss", "accuracy"}
    res = pn.evaluate(episodes, episodes=200)
    assert res["accuracy"] > 0.6, res  # chance is 0.2
    assert res["ci95"] < 0.05
    # adapt: a classifier over the support's prototypes; the encoder is unchanged
    t = NWayKShot(test, 5, 1, 5, augment_rotations=False, seed=9).sample()
    w = enc.get_weights()
    clf = pn.adapt(t.support_x, t.support_y)
    acc = np.mean(np.argmax(np.asarray(clf(t.query_x)), 1) == t.query_y)
    assert acc >= 0.4
    np.testing.assert_allclose(
        np.asarray(clf(t.query_x)),
        np.asarray(pn.episode_logits(t.support_x, t.support_y, t.query_x)),
        rtol=1e-4,
        atol=1e-3,
    )
    for a, b in zip(w, enc.get_weights()):
        np.testing.assert_array_equal(a, b)


@requires_omniglot
def test_maml_mlp_on_omniglot_subset_learns():
    train, test = _omniglot_subset()
    model = models.omniglot_mlp(5, hidden=(64, 64), batch_norm=False)
    ml.random.set_seed(0)
    maml = MAML(model, inner_lr=0.4, inner_steps=1, meta_lr=0.003)
    episodes = NWayKShot(test, n_way=5, k_shot=1, q_queries=5, augment_rotations=False, seed=2)
    maml.fit(NWayKShot(train, 5, 1, 5, seed=0), iterations=150, meta_batch_size=8, verbose=0)
    res = maml.evaluate(episodes, episodes=100, steps=[0, 3])
    assert res[3]["accuracy"] > 0.35 and res[3]["accuracy"] > res[0]["accuracy"] + 0.1, res
