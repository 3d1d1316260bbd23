"""Meta-Curvature: the meta-gradient w.r.t. the weights and the curvatures against a PyTorch
float64 implementation written from the paper (tests/reference/generate_metacurvature.py),
MAML at the identity, the vectorised and traced paths, learning, checkpoints, bad input."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.meta import MAML, MetaCurvature
from metalearn.tasks import Sinusoid, Task
from tests.helpers import REFERENCE, sinusoid_model

REF = np.load(REFERENCE / "metacurvature.npz")
L = keras.layers


def _model(name):
    if name == "mlp":
        model = keras.Sequential(
            [
                L.Dense(8, activation="tanh", input_shape=(1,)),
                L.Dense(8, activation="tanh"),
                L.Dense(1),
            ]
        )
    else:
        model = keras.Sequential(
            [L.Input((5, 5, 2)), L.Conv2D(3, 3, activation="tanh"), L.Flatten(), L.Dense(2)]
        )
    n = len([k for k in REF.files if k.startswith(f"{name}/w")])
    model(np.zeros((1,) + REF[f"{name}/xs"].shape[2:], np.float32))
    model.set_weights([REF[f"{name}/w{i}"] for i in range(n)])
    return model


def _batch(name):
    r = [REF[f"{name}/{k}"] for k in ("xs", "ys", "xq", "yq")]
    return Task(*r, {"batched": True})


def _learner(name, **kw):
    learner = MetaCurvature(
        _model(name),
        inner_lr=float(REF[f"{name}/lr"]),
        inner_steps=int(REF[f"{name}/steps"]),
        loss="mse",
        **kw,
    )
    learner._prepare(_batch(name))
    for i, mats in enumerate(learner.curvatures):
        for j, m in enumerate(mats):
            m.assign(REF[f"{name}/c{i}_{j}"])
    return learner


def _keys(learner):
    n = len(learner.model.trainable_weights)
    keys = [f"w{i}" for i in range(n)]
    keys += [f"c{i}_{j}" for i, mats in enumerate(learner.curvatures) for j in range(len(mats))]
    return keys


@pytest.mark.parametrize(
    "name, vectorize", [("mlp", False), ("mlp", "auto"), ("conv", False), ("conv", "auto")]
)
@pytest.mark.parametrize("order", [2, 1])
def test_meta_gradient_matches_pytorch_float64(name, vectorize, order):
    learner = _learner(name, first_order=(order == 1), vectorize=vectorize)
    if name == "mlp" and vectorize == "auto":
        assert learner._vector_plan() is not None  # the meta-batch's batched form
    loss, grads = learner.meta_gradients(_batch(name))
    want = float(REF[f"{name}/loss"])
    assert abs(loss - want) < 2e-5 * max(1.0, abs(want))
    keys = _keys(learner)
    assert len(grads) == len(keys)
    for k, g in zip(keys, grads):
        ref = REF[f"{name}/grad{order}/{k}"]
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(np.asarray(g), ref, rtol=5e-4, atol=5e-6 * scale, err_msg=k)
    # the curvature's gradient is not zero and the two orders differ here
    assert all(np.abs(np.asarray(g)).max() > 1e-4 for g in grads[len(learner.model.weights) :])
    other = REF[f"{name}/grad{3 - order}/w0"]
    assert np.abs(np.asarray(grads[0]) - other).max() > 1e-4


def test_curvature_layout_follows_the_weights():
    learner = _learner("conv")
    shapes = [[tuple(m.shape) for m in mats] for mats in learner.curvatures]
    assert shapes == [[(9, 9), (2, 2), (3, 3)], [(3,)], [(27, 27), (2, 2)], [(2,)]]
    fresh = MetaCurvature(_model("conv"))
    fresh._prepare(_batch("conv"))
    for mats in fresh.curvatures:  # the identity (ones for vectors) at the start
        for m in mats:
            a = np.asarray(m)
            np.testing.assert_array_equal(a, np.eye(a.shape[0]) if a.ndim == 2 else np.ones_like(a))


def test_batched_preconditioning_equals_one_task_at_a_time():
    """The vectorised meta-batch hands (B, kh, kw, in, out) gradients: each task's slice
    is preconditioned as the task alone would be (NumPy einsum reference)."""
    learner = _learner("conv")
    rng = np.random.default_rng(3)
    w = learner.model.trainable_weights[0]
    g = rng.normal(size=(3,) + tuple(w.shape)).astype(np.float32)
    mats = learner.curvatures[0]
    got = np.asarray(learner._precondition(mats, w, ml.as_tensor(g)))
    m_f, m_in, m_out = (np.asarray(m, np.float64) for m in mats)
    g3 = g.reshape(3, 9, 2, 3).astype(np.float64)
    want = np.einsum("fg,ij,bgjk,kl->bfil", m_f, m_in, g3, m_out).reshape(g.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for b in range(3):
        one = np.asarray(learner._precondition(mats, w, ml.as_tensor(g[b])))
        np.testing.assert_allclose(one, got[b], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_identity_curvature_is_maml_exactly(name):
    batch = _batch(name)
    kw = dict(inner_lr=0.05, inner_steps=2, loss="mse", vectorize=False)
    mc, maml = MetaCurvature(_model(name), **kw), MAML(_model(name), **kw)
    l1, g1 = mc.meta_gradients(batch)
    l2, g2 = maml.meta_gradients(batch)
    assert l1 == l2
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    a1 = mc.adapt(batch.support_x[0], batch.support_y[0]).get_weights()
    a2 = maml.adapt(batch.support_x[0], batch.support_y[0]).get_weights()
    for a, b in zip(a1, a2):
        np.testing.assert_array_equal(a, b)


def test_traced_meta_step_equals_the_eager_one():
    runs = []
    for trace in (True, False):
        ml.random.set_seed(4)
        learner = MetaCurvature(sinusoid_model(2), inner_lr=0.02, trace=trace)
        h = learner.fit(Sinusoid(k_shot=5, seed=3), iterations=4, meta_batch_size=3, verbose=0)
        runs.append((h["loss"], [np.asarray(m) for m in learner._curvature_params()]))
    assert learner._traced_step is None
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(np.abs(a - np.eye(a.shape[0])).max() > 1e-5 for a in runs[0][1] if a.ndim == 2)


def test_learns_sinusoids_at_least_as_well_as_maml():
    """The same budget (400 meta-iterations of 10 tasks, one inner step) from the same
    initial weights: Meta-Curvature adapts at least as well as MAML and far better than
    the untrained network."""
    test = Sinusoid(k_shot=10, q_queries=20, seed=99).sample_batch(100)
    results = {}
    for cls in (MAML, MetaCurvature):
        ml.random.set_seed(0)
        learner = cls(sinusoid_model(), inner_lr=0.01, inner_steps=1, meta_lr=0.001)
        before = learner.evaluate(test, steps=1)["mse"]
        learner.fit(Sinusoid(k_shot=10, seed=0), iterations=400, meta_batch_size=10, verbose=0)
        results[cls.__name__] = learner.evaluate(test, steps=1)["mse"]
    assert results["MetaCurvature"] < 0.45 * before, (results, before)
    assert results["MetaCurvature"] <= results["MAML"], results


def test_checkpoint_resume_restores_the_curvatures(tmp_path):
    ref = MetaCurvature(sinusoid_model(5), inner_lr=0.02)
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=6, meta_batch_size=3, verbose=0)
    first = MetaCurvature(sinusoid_model(5), inner_lr=0.02)
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=3, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path)
    again = MetaCurvature(sinusoid_model(9), inner_lr=0.02)
    ml.random.set_seed(77)
    h = again.fit(
        Sinusoid(seed=99), iterations=6, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path
    )
    assert h["loss"] == ref.history["loss"]
    for a, b in zip(again._curvature_params(), ref._curvature_params()):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(inner_lr=-1.0), ValueError, "inner_lr"),
        (dict(inner_lr=float("nan")), ValueError, "inner_lr"),
        (dict(inner_steps=-1), ValueError, "inner_steps"),
        (dict(batch_norm="query"), ValueError, "batch_norm"),
        (dict(vectorize="yes"), ValueError, "vectorize"),
        (dict(meta_optimizer="nope"), ValueError, "meta_optimizer"),
    ],
)
def test_bad_settings_raise_and_change_nothing(kw, err, match):
    model = _model("mlp")
    before = [np.array(w) for w in model.weights]
    with pytest.raises(err, match=match):
        MetaCurvature(model, **kw)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_bad_adapt_input_changes_nothing():
    learner = _learner("mlp")
    before = [np.array(m) for m in learner._meta_params()]
    b = _batch("mlp")
    with pytest.raises(ValueError):
        learner.adapt(b.support_x[0], b.support_y[0][:3])  # 5 inputs, 3 targets
    with pytest.raises((ValueError, TypeError)):
        learner.adapt(b.support_x[0], b.support_y[0], steps=-1)
    for a, m in zip(before, learner._meta_params()):
        np.testing.assert_array_equal(a, np.asarray(m))


@pytest.mark.parametrize("order", [2, 1])
def test_low_rank_vectorised_path_equals_the_loop(order):
    """The 40x40 kernel of the sinusoid MLP adapted from 5 support rows is carried as
    MAML's low-rank factors, each multiplied by its curvature (X M_in^T, dZ M_out): the
    meta-gradient equals the per-task loop's (checked against PyTorch above), with random
    curvatures."""
    batch = Sinusoid(k_shot=5, seed=1).sample_batch(4)
    got = []
    for vectorize in (False, "auto"):
        learner = MetaCurvature(
            sinusoid_model(1),
            inner_lr=0.05,
            inner_steps=2,
            vectorize=vectorize,
            first_order=(order == 1),
        )
        learner._prepare(batch)
        rng = np.random.default_rng(0)
        for m in learner._curvature_params():
            a = np.asarray(m)
            m.assign((a + 0.1 * rng.standard_normal(a.shape)).astype(np.float32))
        if vectorize:
            assert learner._low_rank_kernels(learner._vector_plan(), 5) == {2}
        got.append(learner.meta_gradients(batch))
    (l1, g1), (l2, g2) = got
    assert l2 == pytest.approx(l1, rel=1e-6)
    for a, b in zip(g1, g2):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()))
