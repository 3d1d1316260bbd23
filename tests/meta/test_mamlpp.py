"""MAML++: the meta-gradient against a PyTorch float64 implementation written from the
paper (tests/reference/generate_mamlpp.py), the schedules, learning, bad input."""

import math

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.meta import MAML, MAMLPlusPlus, multi_step_loss_weights
from metalearn.tasks import Sinusoid, Task
from tests.helpers import REFERENCE, sinusoid_model

REF = np.load(REFERENCE / "mamlpp.npz")
NAMES = ["W1", "b1", "W2", "b2", "W3", "b3"]


def _fixture_model():
    model = keras.Sequential(
        [
            keras.layers.Dense(8, activation="tanh", input_shape=(1,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.set_weights([REF["mlp/" + k] for k in NAMES])
    return model


def _fixture_batch():
    return Task(REF["xs"], REF["ys"], REF["xq"], REF["yq"], {"batched": True})


def _fixture_learner(**kw):
    epochs = int(REF["msl/epochs"])
    learner = MAMLPlusPlus(
        _fixture_model(),
        inner_lr=0.01,
        inner_steps=REF["rates"].shape[0],
        msl_epochs=epochs,
        epoch_length=1,
        **kw,
    )
    learner._prepare(_fixture_batch())
    for s, row in enumerate(REF["rates"]):
        for a, v in zip(learner.learning_rates[s], row):
            a.assign(np.float32(v))
    learner.iterations = int(REF["msl/epoch"])  # epoch_length 1: the fixture's epoch
    return learner


@pytest.mark.parametrize("order", [2, 1])
def test_meta_gradient_matches_pytorch_float64(order):
    learner = _fixture_learner(first_order_epochs=0, first_order=(order == 1))
    np.testing.assert_allclose(learner.step_weights(), REF["msl/weights"], rtol=1e-12)
    loss, grads = learner.meta_gradients(_fixture_batch())
    assert abs(loss - float(REF["loss"])) < 1e-5 * max(1.0, abs(float(REF["loss"])))
    n = len(NAMES)
    for k, g in zip(NAMES, grads[:n]):
        ref = REF[f"grad{order}/{k}"]
        np.testing.assert_allclose(np.asarray(g), ref, rtol=2e-4, atol=2e-6, err_msg=k)
    rates = np.array([float(np.asarray(g)) for g in grads[n:]]).reshape(REF["rates"].shape)
    np.testing.assert_allclose(rates, REF[f"grad{order}/rates"], rtol=2e-4, atol=2e-6)
    other = REF[f"grad{3 - order}/W1"]
    assert np.abs(np.asarray(grads[0]) - other).max() > 1e-4  # the order matters here


def test_derivative_order_annealing_switches_at_the_epoch():
    learner = _fixture_learner(first_order_epochs=int(REF["msl/epoch"]) + 1)
    assert not learner.second_order()
    _, g = learner.meta_gradients(_fixture_batch())
    np.testing.assert_allclose(np.asarray(g[0]), REF["grad1/W1"], rtol=2e-4, atol=2e-6)
    learner.iterations += 1
    assert learner.second_order()
    # past msl_epochs only the last step's loss counts
    learner.iterations = int(REF["msl/epochs"])
    np.testing.assert_array_equal(learner.step_weights(), [0.0, 1.0])


def test_loss_schedule_is_the_papers():
    for e in range(12):
        np.testing.assert_allclose(multi_step_loss_weights(2, e, 10), REF["msl/table"][e])
        np.testing.assert_allclose(multi_step_loss_weights(5, e, 10), REF["msl/table5"][e])
        assert abs(multi_step_loss_weights(5, e, 10).sum() - 1.0) < 1e-12


def test_cosine_annealing_of_the_meta_learning_rate():
    learner = MAMLPlusPlus(
        _fixture_model(), meta_lr=0.01, min_meta_lr=0.001, total_epochs=4, epoch_length=2
    )
    seen = []
    for it in range(12):
        learner.iterations = it
        seen.append(learner.current_meta_lr())
    expect = [0.001 + 0.0045 * (1 + math.cos(math.pi * min(it // 2, 4) / 4)) for it in range(12)]
    np.testing.assert_allclose(seen, expect, rtol=1e-12)
    # the update uses it, and the optimizer's configured rate is put back
    learner.iterations = 4  # epoch 2: lr 0.0055
    rng = np.random.default_rng(0)
    batch = Sinusoid(k_shot=5, seed=0).sample_batch(2)
    ref = learner.clone()
    plain = MAMLPlusPlus(
        ref,
        inner_lr=0.1,
        meta_optimizer="sgd",
        meta_lr=0.0055,
        cosine_annealing=False,
        first_order_epochs=0,
        epoch_length=2,
    )
    annealed = MAMLPlusPlus(
        learner.clone(),
        inner_lr=0.1,
        meta_optimizer="sgd",
        meta_lr=0.01,
        min_meta_lr=0.001,
        total_epochs=4,
        first_order_epochs=0,
        epoch_length=2,
    )
    plain.iterations = annealed.iterations = 4
    plain._prepare(batch), annealed._prepare(batch)
    plain._meta_step(batch)
    annealed._meta_step(batch)
    assert annealed.meta_optimizer.learning_rate == 0.01
    for a, b in zip(plain.model.get_weights(), annealed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    del rng


def test_each_component_can_be_switched_off():
    off = dict(
        multi_step_loss=False, learn_inner_rates=False, first_order_epochs=0, cosine_annealing=False
    )
    pp = MAMLPlusPlus(_fixture_model(), inner_lr=0.05, inner_steps=2, **off)
    plain = MAML(_fixture_model(), inner_lr=0.05, inner_steps=2, vectorize=False)
    l1, g1 = pp.meta_gradients(_fixture_batch())
    l2, g2 = plain.meta_gradients(_fixture_batch())
    assert pp._meta_params() == pp.model.trainable_weights  # no rates learned
    assert abs(l1 - l2) < 1e-6
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_learns_sinusoids():
    ml.random.set_seed(0)
    learner = MAMLPlusPlus(
        sinusoid_model(),
        inner_lr=0.01,
        inner_steps=2,
        meta_lr=0.003,
        msl_epochs=2,
        first_order_epochs=1,
        total_epochs=6,
        epoch_length=100,
        min_meta_lr=0.0003,
    )
    test = Sinusoid(k_shot=10, q_queries=20, seed=99).sample_batch(100)
    untrained = learner.evaluate(test, steps=[0, 2])
    hist = learner.fit(Sinusoid(k_shot=10, seed=0), iterations=600, meta_batch_size=10, verbose=0)
    res = learner.evaluate(test, steps=[0, 2])
    assert len(hist["loss"]) == 600
    # two adapted steps help a lot after meta-training, much more than before it
    assert res[2]["mse"] < 0.5 * res[0]["mse"], res
    assert res[2]["mse"] < 0.4 * untrained[2]["mse"], (res, untrained)
    rates = np.array([float(np.asarray(a)) for a in learner._rates()])
    assert np.abs(rates - 0.01).max() > 1e-2  # the per-step rates were learned


def test_adapt_uses_the_learned_rates_and_leaves_the_model():
    learner = _fixture_learner(first_order_epochs=0)
    before = learner.model.get_weights()
    b = _fixture_batch()
    adapted = learner.adapt(b.support_x[0], b.support_y[0], steps=3)  # past inner_steps
    after = adapted.get_weights()
    for w0, w1 in zip(before, learner.model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert any(np.abs(a - c).max() > 1e-6 for a, c in zip(after, before))


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(multi_step_loss=1), TypeError),
        (dict(learn_inner_rates="yes"), TypeError),
        (dict(msl_epochs=0), ValueError),
        (dict(epoch_length=0), ValueError),
        (dict(total_epochs=0), ValueError),
        (dict(first_order_epochs=-1), ValueError),
        (dict(min_meta_lr=0.1, meta_lr=0.01), ValueError),
        (dict(inner_steps=0), ValueError),
        (dict(first_order_epochs=1.5), TypeError),
    ],
)
def test_bad_settings_raise(kw, err):
    with pytest.raises(err):
        MAMLPlusPlus(_fixture_model(), **kw)


def test_checkpoint_resume_continues_the_schedules(tmp_path):
    """fit to 6 with checkpoints, a new learner resumes to 10: the same bits as 10 at once,
    with the epoch-driven schedules (MSL, first order, cosine rate) crossing epochs and the
    learned rates restored."""
    kw = dict(
        inner_lr=0.02,
        inner_steps=2,
        msl_epochs=2,
        first_order_epochs=1,
        total_epochs=3,
        epoch_length=3,
    )
    ref = MAMLPlusPlus(sinusoid_model(5), **kw)
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=10, meta_batch_size=3, verbose=0)
    first = MAMLPlusPlus(sinusoid_model(5), **kw)
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=5, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path)
    again = MAMLPlusPlus(sinusoid_model(9), **kw)
    ml.random.set_seed(77)
    h = again.fit(
        Sinusoid(seed=99), iterations=10, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path
    )
    assert h["loss"] == ref.history["loss"]
    for a, b in zip(again._meta_params(), ref._meta_params()):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert again.epoch == ref.epoch == 3
