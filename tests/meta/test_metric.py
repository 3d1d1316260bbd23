"""Matching Networks and R2D2: loss, encoder gradient and a second-order product against
PyTorch float64 references written from the papers (tests/reference/generate_metric.py),
the solver, learning on a synthetic N-way task set, adapt, bad input."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, keras
from metalearn.meta import R2D2, MatchingNet, spd_solve
from metalearn.tasks import NWayKShot
from tests.helpers import REFERENCE

REF = np.load(REFERENCE / "metric.npz")


def _encoder():
    enc = keras.Sequential([keras.layers.Dense(10, activation="tanh", input_shape=(4,))])
    enc.set_weights([REF["enc/W"], REF["enc/b"]])
    return enc


def _learner(head):
    if head == "matching":
        return MatchingNet(_encoder())
    lam, scale = float(REF["r2d2/lam"]), float(REF["r2d2/scale"])
    return R2D2(_encoder(), lam=lam, scale=scale, bias=head == "r2d2")


@pytest.mark.parametrize("head", ["matching", "r2d2", "r2d2_nobias"])
def test_loss_gradient_and_second_order_match_pytorch(head):
    learner = _learner(head)
    learner._prepare(ml.tasks.Task(REF["xs"], REF["ys"], REF["xq"], REF["yq"]))
    loss, logits = learner.episode_loss(REF["xs"], REF["ys"], REF["xq"], REF["yq"])
    np.testing.assert_allclose(np.asarray(logits), REF[f"{head}/logits"], rtol=1e-4, atol=1e-5)
    assert abs(loss.item() - float(REF[f"{head}/loss"])) < 1e-5
    params = learner._meta_params()
    grads = _core.grad(loss, params, create_graph=True)
    np.testing.assert_allclose(np.asarray(grads[0]), REF[f"{head}/grad/W"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grads[1]), REF[f"{head}/grad/b"], rtol=1e-3, atol=1e-5)
    if head != "matching":  # d/dlog(lam) = lam * d/dlam
        lam = float(REF["r2d2/lam"])
        assert abs(float(np.asarray(grads[2])) - lam * float(REF[f"{head}/grad/lam"])) < 1e-5
        assert abs(float(np.asarray(grads[3])) - float(REF[f"{head}/grad/scale"])) < 1e-5
    (hvp,) = _core.grad(_core.reduce_sum(grads[0] * _core.as_tensor(REF["v/W"])), [params[0]])
    np.testing.assert_allclose(np.asarray(hvp), REF[f"{head}/hvp/W"], rtol=2e-3, atol=2e-5)


def test_spd_solve_matches_numpy_and_differentiates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 12)).astype(np.float32)
    a = x @ x.T + 0.5 * np.eye(7, dtype=np.float32)
    b = rng.standard_normal((7, 3)).astype(np.float32)
    at = ml.Variable(a)
    got = spd_solve(at, _core.as_tensor(b))
    want = np.linalg.solve(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    # d sum(A^-1 B * w) / dA = -A^-T w^T... : -(A^-T W)(A^-1 B)^T
    w = rng.standard_normal((7, 3)).astype(np.float32)
    (g,) = _core.grad(_core.reduce_sum(got * _core.as_tensor(w)), [at])
    ainv = np.linalg.inv(a.astype(np.float64))
    np.testing.assert_allclose(np.asarray(g), -(ainv.T @ w) @ want.T, rtol=1e-3, atol=1e-5)


def _synthetic(seed, classes=40, per_class=20, dim=16):
    """Classes as cluster centres in 4 informative dimensions, hidden among 12 noisy ones
    of larger variance: an encoder must learn to read the informative ones."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, 4)) * 1.0
    x = np.concatenate(
        [
            np.repeat(centres, per_class, 0) + 0.3 * rng.standard_normal((classes * per_class, 4)),
            2.0 * rng.standard_normal((classes * per_class, dim - 4)),
        ],
        1,
    ).astype(np.float32)
    mix = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    return x @ mix, np.repeat(np.arange(classes), per_class)


@pytest.mark.parametrize("cls", [MatchingNet, R2D2])
def test_learns_a_synthetic_n_way_task_set(cls):
    ml.random.set_seed(0)
    x, y = _synthetic(0)
    mix_train = x[y < 30], y[y < 30]
    held_out = x[y >= 30], y[y >= 30] - 30
    enc = keras.Sequential(
        [keras.layers.Dense(32, activation="relu", input_shape=(16,)), keras.layers.Dense(16)]
    )
    learner = cls(enc, meta_lr=0.003)
    test = NWayKShot(held_out, n_way=5, k_shot=1, q_queries=5, augment_rotations=False, seed=7)
    episodes = test.sample_batch(60)
    before = learner.evaluate(episodes)["accuracy"]
    h = learner.fit(
        NWayKShot(mix_train, n_way=5, k_shot=1, q_queries=5, augment_rotations=False, seed=1),
        iterations=300,
        meta_batch_size=4,
        verbose=0,
    )
    after = learner.evaluate(episodes)["accuracy"]
    assert set(h) == {"loss", "accuracy"}
    assert after > before + 0.15 and after > 0.6, (before, after)  # chance is 0.2
    # adapt gives a classifier that agrees with evaluate's episode logits
    t = test.sample()
    clf = learner.adapt(t.support_x, t.support_y)
    want = np.asarray(learner.episode_logits(t.support_x, t.support_y, t.query_x, training=False))
    np.testing.assert_allclose(np.asarray(clf(t.query_x)), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cls", [MatchingNet, R2D2])
def test_adapt_leaves_the_encoder_and_refuses_bad_support(cls):
    learner = _learner("matching" if cls is MatchingNet else "r2d2")
    before = learner.encoder.get_weights()
    clf = learner.adapt(REF["xs"], REF["ys"])
    assert clf.encoder is not learner.encoder
    for a, b in zip(before, learner.encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    bad = REF["xs"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        learner.adapt(bad, REF["ys"])
    with pytest.raises(ValueError, match="class 1 has no support"):
        learner.adapt(REF["xs"], np.array([0, 0, 2, 2, 0, 2]))
    with pytest.raises(TypeError):
        learner.adapt(REF["xs"], REF["ys"], steps=1.5)


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(lam=0.0), ValueError),
        (dict(lam=-1.0), ValueError),
        (dict(lam="1"), TypeError),
        (dict(scale=float("inf")), ValueError),
        (dict(scale=None), TypeError),
        (dict(learn_lambda=1), TypeError),
        (dict(bias="yes"), TypeError),
    ],
)
def test_r2d2_bad_settings_raise(kw, err):
    with pytest.raises(err):
        R2D2(_encoder(), **kw)


def test_r2d2_fixed_head_parameters_are_not_meta_parameters():
    learner = R2D2(_encoder(), learn_lambda=False, learn_scale=False)
    assert learner._meta_params() == learner.encoder.trainable_weights


@pytest.mark.parametrize("head", ["r2d2", "r2d2_nobias"])
def test_r2d2_adapt_gives_the_episode_logits_with_and_without_bias(head, tmp_path):
    from metalearn.keras.models import load_model
    from metalearn.meta.metric import LinearHeadClassifier

    learner = _learner(head)
    clf = learner.adapt(REF["xs"], REF["ys"])
    assert np.any(clf.bias != 0) == (head == "r2d2")
    want = np.asarray(learner.episode_logits(REF["xs"], REF["ys"], REF["xq"], training=False))
    np.testing.assert_allclose(np.asarray(clf(REF["xq"])), want, rtol=1e-4, atol=1e-5)
    # and the PyTorch reference's logits (the encoder is untrained: the same weights)
    np.testing.assert_allclose(want, REF[f"{head}/logits"], rtol=1e-4, atol=1e-5)
    # a saved classifier keeps the bias
    clf.save(tmp_path / "clf.metalearn")
    again = load_model(tmp_path / "clf.metalearn", {"LinearHeadClassifier": LinearHeadClassifier})
    np.testing.assert_allclose(np.asarray(again(REF["xq"])), want, rtol=1e-5, atol=1e-6)


def test_linear_head_classifier_refuses_a_bias_of_the_wrong_size():
    from metalearn.meta.metric import LinearHeadClassifier

    with pytest.raises(ValueError, match="bias must have 3 entries"):
        LinearHeadClassifier(_encoder(), np.zeros((10, 3)), bias=np.zeros(4))
