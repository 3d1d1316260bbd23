"""MAML++'s per-step batch-norm weights (BNWB): the meta-gradient against a PyTorch float64
implementation written from the paper (tests/reference/generate_mamlpp_bn.py), the step
each pass uses, adapt, checkpoints, and bad input."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import conv_layers
from metalearn.meta import MAMLPlusPlus
from metalearn.tasks import Sinusoid, Task
from tests.helpers import REFERENCE, sinusoid_model

REF = np.load(REFERENCE / "mamlpp_bn.npz")
L = keras.layers
EPS = 1e-3


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            L.Dense(8, input_shape=(1,)),
            conv_layers.BatchNormalization(epsilon=EPS),
            L.Activation("tanh"),
            L.Dense(1),
        ]
    )
    model(np.zeros((2, 1), np.float32))
    return model


def _batch():
    return Task(REF["xs"], REF["ys"], REF["xq"], REF["yq"], {"batched": True})


def _learner(**kw):
    model = _model()
    w = model.trainable_weights  # W1, b1, gamma, beta, W2, b2
    for v, k in zip([w[0], w[1], w[4], w[5]], ["W1", "b1", "W2", "b2"]):
        v.assign(REF[k])
    learner = MAMLPlusPlus(
        model,
        inner_lr=0.01,
        inner_steps=2,
        msl_epochs=10,
        epoch_length=1,
        first_order_epochs=0,
        per_step_bn_weights=True,
        loss="mse",
        **kw,
    )
    learner._prepare(_batch())
    for s in range(2):
        learner.bn_weights[s][0].assign(REF["gamma"][s])
        learner.bn_weights[s][1].assign(REF["beta"][s])
        for a, v in zip(learner.learning_rates[s], REF["rates"][s]):
            a.assign(np.float32(v))
    learner.iterations = 4  # the multi-step loss's weights (0.3, 0.7)
    return learner


def _np_forward(p, gamma, beta, x):
    w1, b1, w2, b2 = (np.asarray(v, np.float64) for v in p)
    h = np.asarray(x, np.float64) @ w1 + b1
    h = gamma * (h - h.mean(0)) / np.sqrt(h.var(0) + EPS) + beta
    return np.tanh(h) @ w2 + b2


def test_meta_gradient_matches_pytorch_float64():
    learner = _learner()
    np.testing.assert_allclose(learner.step_weights(), REF["weights"], rtol=1e-12)
    loss, grads = learner.meta_gradients(_batch())
    assert abs(loss - float(REF["loss"])) < 1e-5 * max(1.0, float(REF["loss"]))
    # meta-parameters: W1 b1 W2 b2 (the adapted ones), 2 x 4 rates, then gamma/beta per step
    assert len(grads) == 4 + 8 + 4
    for k, g in zip(["W1", "b1", "W2", "b2"], grads[:4]):
        np.testing.assert_allclose(np.asarray(g), REF[f"grad/{k}"], rtol=5e-4, atol=5e-6, err_msg=k)
    rates = np.array([float(np.asarray(g)) for g in grads[4:12]]).reshape(2, 4)
    np.testing.assert_allclose(rates, REF["grad/rates"], rtol=5e-4, atol=5e-6)
    for s in range(2):
        gamma, beta = grads[12 + 2 * s], grads[13 + 2 * s]
        np.testing.assert_allclose(np.asarray(gamma), REF["grad/gamma"][s], rtol=5e-4, atol=5e-6)
        np.testing.assert_allclose(np.asarray(beta), REF["grad/beta"][s], rtol=5e-4, atol=5e-6)


def test_adapt_and_evaluate_use_the_last_steps_copy():
    learner = _learner()
    b = _batch()
    sx, sy, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
    gamma, beta = REF["gamma"].astype(np.float64), REF["beta"].astype(np.float64)
    # the inner loop in NumPy-free terms: adapted weights from metalearn, checked by
    # running the support pass of each step with that step's copy
    fast = learner.adapted_weights(sx, sy, steps=2)
    p = [fast[0], fast[1], fast[4], fast[5]]
    np.testing.assert_array_equal(np.asarray(fast[2]), REF["gamma"][1])  # step 1's copy
    want = np.mean((_np_forward(p, gamma[1], beta[1], qx) - qy) ** 2)
    got = learner.evaluate(Task(sx, sy, qx, qy), steps=2)["mse"]
    assert got == pytest.approx(want, rel=1e-5)
    after_one = learner.evaluate(Task(sx, sy, qx, qy), steps=1)["mse"]
    fast1 = learner.adapted_weights(sx, sy, steps=1)
    np.testing.assert_array_equal(np.asarray(fast1[2]), REF["gamma"][0])  # step 0's copy
    p1 = [fast1[0], fast1[1], fast1[4], fast1[5]]
    assert after_one == pytest.approx(
        np.mean((_np_forward(p1, gamma[0], beta[0], qx) - qy) ** 2), rel=1e-5
    )
    # adapt's Keras model holds the copy its query pass used, and predicts the same
    model = learner.adapt(sx, sy, steps=2)
    out = model(qx, training=True)
    np.testing.assert_allclose(
        np.asarray(out), _np_forward(p, gamma[1], beta[1], qx), rtol=1e-4, atol=1e-5
    )


def test_the_per_step_copies_learn_apart_and_the_model_is_unchanged_there():
    ml.random.set_seed(0)
    learner = MAMLPlusPlus(
        _model(3), inner_lr=0.05, inner_steps=2, per_step_bn_weights=True, epoch_length=10
    )
    gamma_before = np.array(learner.model.trainable_weights[2])
    learner.fit(Sinusoid(k_shot=10, seed=1), iterations=30, meta_batch_size=4, verbose=0)
    g0, g1 = (np.asarray(learner.bn_weights[s][0]) for s in range(2))
    assert np.abs(g0 - g1).max() > 1e-4
    assert np.abs(g0 - gamma_before).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(learner.model.trainable_weights[2]), gamma_before)


def test_first_order_after_the_multi_step_loss_gives_the_support_copies_zero():
    # DA's first-order epochs after MSL's (the paper's Omniglot schedule from epoch 10 to
    # 50): the last step's query loss alone, first order, does not reach the copies the
    # support passes use; they get zero meta-gradients (grad refused them: iteration 5000 of
    # the 20-way run stopped there) and the last step's copy a real one
    ml.random.set_seed(0)
    learner = MAMLPlusPlus(
        _model(3),
        inner_lr=0.05,
        inner_steps=3,
        per_step_bn_weights=True,
        msl_epochs=1,
        first_order_epochs=5,
        epoch_length=1,
    )
    tasks = Sinusoid(k_shot=10, seed=1)
    learner.fit(tasks, iterations=3, meta_batch_size=2, verbose=0)
    assert learner.epoch >= 1 and not learner.second_order()
    _, grads = learner.meta_gradients(tasks.sample_batch(2))
    named = dict(zip(map(id, learner._meta_params()), grads))
    for s in range(3):
        g = [np.asarray(named[id(w)]) for w in learner.bn_weights[s]]
        if s < 2:
            assert all(np.all(a == 0) for a in g), s
        else:
            assert any(np.abs(a).max() > 0 for a in g)


def test_off_by_default_and_off_is_the_old_mamlpp():
    a = MAMLPlusPlus(_model(), inner_steps=2, loss="mse")
    b = MAMLPlusPlus(_model(), inner_steps=2, loss="mse", per_step_bn_weights=False)
    la, ga = a.meta_gradients(_batch())
    lb, gb = b.meta_gradients(_batch())
    assert a.bn_weights is None and la == lb and len(ga) == 6 + 12
    on = _learner()
    assert on.meta_gradients(_batch())[0] != pytest.approx(la, rel=1e-3)


def test_checkpoint_resume_restores_the_copies(tmp_path):
    def make(seed):
        return MAMLPlusPlus(
            _model(seed), inner_lr=0.05, inner_steps=2, per_step_bn_weights=True, epoch_length=2
        )

    ref = make(1)
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=4, meta_batch_size=2, verbose=0)
    first = make(1)
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=2, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path)
    again = make(5)
    ml.random.set_seed(9)
    h = again.fit(
        Sinusoid(seed=8), iterations=4, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path
    )
    assert h["loss"] == ref.history["loss"]
    for s in range(2):
        for a, b in zip(again.bn_weights[s], ref.bn_weights[s]):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_settings_raise_and_change_nothing():
    model = sinusoid_model()  # no batch normalisation
    before = [np.array(w) for w in model.weights]
    with pytest.raises(ValueError, match="per_step_bn_weights=True needs"):
        MAMLPlusPlus(model, per_step_bn_weights=True)
    with pytest.raises(TypeError, match="per_step_bn_weights"):
        MAMLPlusPlus(_model(), per_step_bn_weights="yes")
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def _hidden_stats(fast, x):
    w1, b1 = (np.asarray(v, np.float64) for v in fast[:2])
    h = np.asarray(x, np.float64) @ w1 + b1
    return h.mean(0), h.var(0)


@pytest.mark.parametrize("bnwb", [False, True])
def test_per_step_statistics_move_towards_each_steps_support_statistics(bnwb):
    """One meta-iteration on one task (SGD meta-step: the weights move): pair s of the
    moving statistics becomes momentum * initial + (1 - momentum) * the support's
    statistics under the weights after s + 1 inner steps (before the meta-update);
    evaluate after k steps normalises the query with pair k - 1, and adapt's model holds
    it. NumPy forwards of the network as references."""
    b = _batch()
    sx, sy, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
    learner = MAMLPlusPlus(
        _model(2),
        inner_lr=1.0,  # steps that move the hidden layer: each step's pair differs
        inner_steps=2,
        meta_optimizer="sgd",
        meta_lr=0.5,
        batch_norm="running",
        per_step_bn_statistics=True,
        per_step_bn_weights=bnwb,
        loss="mse",
    )
    bn = learner.model.layers[1]
    bn.momentum = 0.5  # one update shows the support statistics plainly
    want = [_hidden_stats(learner.adapted_weights(sx, sy, steps=s + 1), sx) for s in range(2)]
    before = np.array(learner.model.trainable_weights[0])
    learner.fit([Task(sx, sy, qx, qy)], iterations=1, meta_batch_size=1, verbose=0)
    assert np.abs(before - np.asarray(learner.model.trainable_weights[0])).max() > 1e-5
    m = bn.momentum
    for s in range(2):
        mean, var = (np.asarray(v) for v in learner.bn_statistics[s])
        np.testing.assert_allclose(mean, (1 - m) * want[s][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(var, m + (1 - m) * want[s][1], rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(learner.bn_statistics[0][0]) - (1 - m) * want[1][0]).max() > 1e-3
    # the layer's own moving statistics are not used, nor moved
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), np.zeros(8, np.float32))
    for k in (1, 2, 3):
        pair = [np.asarray(v, np.float64) for v in learner.bn_statistics[min(k, 2) - 1]]
        fast = learner.adapted_weights(sx, sy, steps=k)
        w1, b1, gamma, beta, w2, b2 = (np.asarray(v, np.float64) for v in fast)
        h = qx @ w1 + b1
        h = gamma * (h - pair[0]) / np.sqrt(pair[1] + EPS) + beta
        out = np.tanh(h) @ w2 + b2
        got = learner.evaluate(Task(sx, sy, qx, qy), steps=k)["mse"]
        assert got == pytest.approx(np.mean((out - qy) ** 2), rel=1e-5), k
        model = learner.adapt(sx, sy, steps=k)
        np.testing.assert_allclose(model.predict(qx, verbose=0), out, rtol=1e-4, atol=1e-5)


def test_per_step_statistics_off_is_mamls_running_mode():
    b = _batch()
    sx, sy, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
    learner = MAMLPlusPlus(
        _model(2), inner_lr=0.05, inner_steps=2, batch_norm="running", loss="mse"
    )
    mean, _ = _hidden_stats(learner.adapted_weights(sx, sy, steps=2), sx)
    learner.fit([Task(sx, sy, qx, qy)], iterations=1, meta_batch_size=1, verbose=0)
    bn = learner.model.layers[1]
    assert learner.bn_statistics is None
    np.testing.assert_allclose(
        np.asarray(bn.moving_mean), (1 - bn.momentum) * mean, rtol=1e-4, atol=1e-6
    )


def test_checkpoint_resume_restores_the_per_step_statistics(tmp_path):
    def make(seed):
        return MAMLPlusPlus(
            _model(seed),
            inner_lr=0.05,
            inner_steps=2,
            batch_norm="running",
            per_step_bn_statistics=True,
            epoch_length=2,
        )

    ref = make(1)
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=4, meta_batch_size=2, verbose=0)
    first = make(1)
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=2, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path)
    again = make(5)
    ml.random.set_seed(9)
    h = again.fit(
        Sinusoid(seed=8), iterations=4, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path
    )
    assert h["loss"] == ref.history["loss"]
    for s in range(2):
        for a, b in zip(again.bn_statistics[s], ref.bn_statistics[s]):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(ref.bn_statistics[1][0])).max() > 1e-4  # they moved


def test_bad_per_step_statistics_settings_raise():
    with pytest.raises(ValueError, match="per_step_bn_statistics=True needs"):
        MAMLPlusPlus(sinusoid_model(), per_step_bn_statistics=True)
    with pytest.raises(TypeError, match="per_step_bn_statistics"):
        MAMLPlusPlus(_model(), per_step_bn_statistics=1)
