"""Relation Networks: scores, loss, every gradient and a second-order product against a
PyTorch float64 reference written from the paper (tests/reference/generate_relation.py);
the pair layout on feature maps against NumPy; learning; adapt; bad input."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, keras
from metalearn.meta import RelationNet
from metalearn.meta.metric import relation_scores
from metalearn.tasks import NWayKShot
from tests.helpers import REFERENCE

REF = np.load(REFERENCE / "relation.npz")


def _learner():
    enc = keras.Sequential([keras.layers.Dense(6, activation="tanh", input_shape=(4,))])
    enc.set_weights([REF["enc/W"], REF["enc/b"]])
    rel = keras.Sequential(
        [keras.layers.Dense(5, activation="tanh", input_shape=(12,)), keras.layers.Dense(1)]
    )
    rel.set_weights([REF["rel/W1"], REF["rel/b1"], REF["rel/W2"], REF["rel/b2"]])
    return RelationNet(enc, rel)


def test_scores_loss_gradients_and_second_order_match_pytorch():
    learner = _learner()
    learner._prepare(ml.tasks.Task(REF["xs"], REF["ys"], REF["xq"], REF["yq"]))
    loss, scores = learner.episode_loss(REF["xs"], REF["ys"], REF["xq"], REF["yq"])
    np.testing.assert_allclose(np.asarray(scores), REF["scores"], rtol=1e-5, atol=1e-6)
    assert abs(loss.item() - float(REF["loss"])) < 1e-6
    params = learner._meta_params()
    assert len(params) == 6  # the encoder's and the relation module's weights
    grads = _core.grad(loss, params, create_graph=True)
    names = ["enc/W", "enc/b", "rel/W1", "rel/b1", "rel/W2", "rel/b2"]
    for g, n in zip(grads, names):
        np.testing.assert_allclose(np.asarray(g), REF[f"grad/{n}"], rtol=1e-3, atol=1e-6)
    (hvp,) = _core.grad(_core.reduce_sum(grads[0] * _core.as_tensor(REF["v/W"])), [params[0]])
    np.testing.assert_allclose(np.asarray(hvp), REF["hvp/W"], rtol=2e-3, atol=1e-6)


def test_feature_map_pairs_are_class_then_query_on_the_channel_axis():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)  # 2-way 2-shot feature maps
    q = rng.normal(size=(3, 2, 2, 3)).astype(np.float32)
    ys = np.array([0, 1, 1, 0])
    w = rng.normal(size=(2 * 2 * 6, 1)).astype(np.float32)
    rel = keras.Sequential([keras.layers.Flatten(input_shape=(2, 2, 6)), keras.layers.Dense(1)])
    rel.set_weights([w, np.zeros(1, np.float32)])
    got = np.asarray(relation_scores(rel, _core.as_tensor(s), ys, _core.as_tensor(q), 2))
    want = np.empty((3, 2))
    for i in range(3):
        for c in range(2):
            pair = np.concatenate([s[ys == c].sum(0), q[i]], axis=-1)  # depth concatenation
            want[i, c] = 1 / (1 + np.exp(-(pair.reshape(-1) @ w[:, 0])))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_relation_net_learns_and_adapts_without_changing_itself():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 4)) * 2
    x = (centres.repeat(10, 0) + rng.normal(size=(80, 4)) * 0.3).astype(np.float32)
    tasks = NWayKShot((x, np.arange(80) // 10), 3, 2, 4, augment_rotations=False, seed=1)
    ml.random.set_seed(0)
    enc = keras.Sequential(
        [keras.layers.Dense(16, activation="relu", input_shape=(4,)), keras.layers.Dense(8)]
    )
    learner = RelationNet(enc)
    before = learner.evaluate(tasks, episodes=40)["accuracy"]
    learner.fit(tasks, iterations=150, meta_batch_size=4, verbose=0)
    after = learner.evaluate(
        NWayKShot((x, np.arange(80) // 10), 3, 2, 4, augment_rotations=False, seed=9), episodes=40
    )
    assert after["accuracy"] > max(0.6, before + 0.2)
    task = tasks.sample()
    weights = [np.array(w) for w in learner._meta_params()]
    model = learner.adapt(task.support_x, task.support_y)
    scores = model.predict(task.query_x, verbose=0)
    np.testing.assert_allclose(
        scores,
        np.asarray(learner.episode_logits(task.support_x, task.support_y, task.query_x, False)),
        rtol=1e-5,
        atol=1e-6,
    )
    for a, b in zip(weights, learner._meta_params()):
        np.testing.assert_array_equal(a, np.asarray(b))


def _norm(names):
    return float(np.sqrt(sum(np.sum(REF[f"grad/{n}"].astype(np.float64) ** 2) for n in names)))


@pytest.mark.parametrize("which", ["both", "relation"])
def test_module_clipnorm_scales_each_modules_meta_gradient_as_clip_grad_norm(which):
    # the PyTorch float64 gradients of the fixture, each module's clipped by
    # torch.nn.utils.clip_grad_norm_'s rule: g * min(1, max_norm / (norm + 1e-6))
    enc_names, rel_names = ["enc/W", "enc/b"], ["rel/W1", "rel/b1", "rel/W2", "rel/b2"]
    n_enc, n_rel = _norm(enc_names), _norm(rel_names)
    c = 0.5 * min(n_enc, n_rel) if which == "both" else 0.5 * (n_enc + n_rel)
    if which == "relation":  # the clip falls between the two modules' norms
        assert min(n_enc, n_rel) < c < max(n_enc, n_rel)
    base = _learner()
    learner = RelationNet(
        base.encoder, base.relation, meta_optimizer="sgd", meta_lr=1.0, module_clipnorm=c
    )
    before = [np.array(w, np.float64) for w in learner._meta_params()]
    batch = ml.tasks.Task(*(REF[k][None] for k in ("xs", "ys", "xq", "yq")), info={"batched": True})
    learner.fit(batch, iterations=1, meta_batch_size=1, verbose=0)
    for names, norm in ((enc_names, n_enc), (rel_names, n_rel)):
        coef = min(1.0, c / (norm + 1e-6))
        for n in names:
            i = (enc_names + rel_names).index(n)
            step = before[i] - np.asarray(learner._meta_params()[i], np.float64)
            np.testing.assert_allclose(step, coef * REF[f"grad/{n}"], rtol=2e-3, atol=1e-6)
    clipped = [min(1.0, c / (n + 1e-6)) < 1.0 for n in (n_enc, n_rel)]
    assert clipped == ([True, True] if which == "both" else [n_enc > n_rel, n_rel > n_enc])


def _bn_modules():
    ml.random.set_seed(5)
    enc = keras.Sequential(
        [
            keras.layers.Dense(6, input_shape=(4,)),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("tanh"),
        ]
    )
    rel = keras.Sequential(
        [
            keras.layers.Dense(5, input_shape=(12,)),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(1),
        ]
    )
    return enc, rel


def test_separate_batches_normalise_support_and_query_by_their_own_statistics():
    # the authors' code never calls .eval(): the support and the query pass the encoder as
    # two training-mode batches, the pairs the relation module as one, at test too
    enc, rel = _bn_modules()
    learner = RelationNet(enc, rel, separate_batches=True)
    rng = np.random.default_rng(2)
    sx, qx = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    sy = np.array([0, 1, 2, 0, 1, 2])
    learner._prepare(ml.tasks.Task(sx, sy, qx, np.zeros(9, np.int64)))
    moving = [np.array(w, copy=True) for w in learner._state_tensors() + list(enc.weights)]
    got = np.asarray(learner.episode_logits(sx, sy, qx, training=False))
    # the reference: training-mode calls of copies (which do move their own statistics)
    enc2, rel2 = _bn_modules()
    s_emb = enc2(_core.as_tensor(sx), training=True)
    q_emb = enc2(_core.as_tensor(qx), training=True)
    want = np.asarray(relation_scores(rel2, s_emb, sy, q_emb, 3, training=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the joint batch (the default) gives other scores: the switch is real
    joint = RelationNet(*_bn_modules())
    joint._prepare(ml.tasks.Task(sx, sy, qx, np.zeros(9, np.int64)))
    other = np.asarray(joint.episode_logits(sx, sy, qx, training=True))
    assert np.abs(other - want).max() > 1e-3
    # evaluating moved no moving statistic; adapt's classifier gives the same scores
    for a, b in zip(learner._state_tensors() + list(enc.weights), moving):
        np.testing.assert_array_equal(np.asarray(a), b)
    model = learner.adapt(sx, sy)
    np.testing.assert_allclose(model.predict(qx, verbose=0), got, rtol=1e-5, atol=1e-6)
    # training through the separate passes reaches every weight of both modules
    loss, _ = learner.episode_loss(sx, sy, qx, np.arange(9) % 3)
    grads = _core.grad(loss, learner._meta_params())
    assert len(grads) == 10  # (a bias before batch norm gets a zero gradient: skipped)
    for i in (0, 2, 3, 4, 6, 7, 8, 9):
        assert np.abs(np.asarray(grads[i])).max() > 1e-6, i


@pytest.mark.torch
def test_clip_by_module_norm_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    from metalearn.meta.metric import clip_by_module_norm

    rng = np.random.default_rng(4)
    arrays = [rng.normal(size=s).astype(np.float32) * 3 for s in ((5, 4), (4,), (7,), (2, 3))]
    for max_norm in (0.5, 4.0, 1e3):
        got = clip_by_module_norm([_core.as_tensor(a) for a in arrays], [2], max_norm)
        want = []
        for part in (arrays[:2], arrays[2:]):
            ps = [torch.nn.Parameter(torch.zeros(a.shape)) for a in part]
            for p, a in zip(ps, part):
                p.grad = torch.tensor(a)
            torch.nn.utils.clip_grad_norm_(ps, max_norm)
            want += [p.grad.numpy() for p in ps]
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-7)


def test_bad_input_is_refused():
    enc = keras.Sequential([keras.layers.Dense(4, input_shape=(2,))])
    with pytest.raises(TypeError, match="relation must be a Keras model"):
        RelationNet(enc, relation="mlp")
    for bad, err in ((0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError)):
        with pytest.raises(err, match="module_clipnorm"):
            RelationNet(enc, module_clipnorm=bad)
    with pytest.raises(TypeError, match="module_clipnorm"):
        RelationNet(enc, module_clipnorm="0.5")
    with pytest.raises(TypeError, match="separate_batches"):
        RelationNet(enc, separate_batches="yes")
    learner = RelationNet(enc)
    with pytest.raises(ValueError, match="class 1 has no support example"):
        learner.adapt(np.zeros((2, 2), np.float32), np.array([0, 2]))


def _bn_relation_learner():
    ml.random.set_seed(3)
    enc = keras.Sequential([keras.layers.Dense(6, activation="tanh", input_shape=(4,))])
    rel = keras.Sequential(
        [
            keras.layers.Dense(5, input_shape=(12,)),
            keras.layers.BatchNormalization(),  # moving statistics: no meta-parameter
            keras.layers.Dense(1),
        ]
    )
    return RelationNet(enc, rel)


def test_checkpoint_resume_keeps_the_relation_modules_moving_statistics(tmp_path):
    # a run resumed from a checkpoint ends with the bits of one made in one go, the
    # relation module's batch-norm moving statistics included (training moves them)
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(40, 4)).astype(np.float32), np.repeat(np.arange(8), 5))
    whole = _bn_relation_learner()
    whole.fit(
        NWayKShot(data, 3, 1, 2, seed=1, augment_rotations=False),
        iterations=4,
        meta_batch_size=2,
        verbose=0,
    )
    start = _bn_relation_learner()
    moving = [np.array(w) for w in start.relation.weights[4:]]
    for _ in range(2):  # two chunks of two iterations
        part = _bn_relation_learner()
        part.fit(
            NWayKShot(data, 3, 1, 2, seed=1, augment_rotations=False),
            iterations=4,
            meta_batch_size=2,
            verbose=0,
            checkpoint_dir=tmp_path,
            checkpoint_every=2,
            time_budget=1e-9 if _ == 0 else None,
        )
    assert part.iterations == 4
    assert any(
        not np.array_equal(a, np.array(w)) for a, w in zip(moving, whole.relation.weights[4:])
    )
    for a, b in zip(whole.relation.weights, part.relation.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for a, b in zip(whole.encoder.weights, part.encoder.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))
