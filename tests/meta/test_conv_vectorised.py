"""Conv MAML on the vectorised meta-batch path: conv4 (Conv2D + BatchNormalization + ReLU +
MaxPool2D) runs the tasks of a meta-batch together (conv2d_batched with each task's fast
kernels, batch statistics per task, pools over the tasks' images) and traced; the meta-loss
and meta-gradients equal the per-task eager loop's (vectorize=False) for MAML, FOMAML and
Meta-SGD, one and two inner steps."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import batched
from metalearn.meta import MAML, MetaSGD, models
from metalearn.tasks import Task


def _batch(seed=0, tasks=3, support=5, query=6, shape=(28, 28, 1), ways=5):
    rng = np.random.default_rng(seed)
    return Task(
        rng.random((tasks, support) + shape).astype(np.float32),
        rng.integers(0, ways, (tasks, support)),
        rng.random((tasks, query) + shape).astype(np.float32),
        rng.integers(0, ways, (tasks, query)),
        {"batched": True},
    )


def _conv4(seed=3):
    ml.random.set_seed(seed)
    return models.conv4(5, filters=8)  # 28x28x1, 8 filters: small but conv4's every layer


def test_conv4_has_a_batched_form():
    model = _conv4()
    # "auto" keeps conv nets on the loop (vectorised they were no faster and held every
    # task's activations at once); vectorize=True plans them
    assert MAML(model)._vector_plan() is None
    plan = MAML(model, vectorize=True)._vector_plan()
    assert plan is not None
    kinds = {type(f) for f in plan.forms}
    assert {batched.Conv2D, batched.Pool2D, batched.BatchNormalization} <= kinds
    assert sum(isinstance(f, batched.Conv2D) for f in plan.forms) == 4


def _compare(make, batch):
    """make(model, vectorize) -> learner; the meta-loss and meta-gradients both ways."""
    results = []
    model = _conv4()
    # conv4's conv biases feed BatchNormalization, which cancels them: their gradients are
    # zero in exact arithmetic and rounding noise here (checked as near zero, not compared)
    biases = {id(l.bias) for l in model.layers if isinstance(l, keras.layers.Conv2D)}
    cancelled = {i for i, w in enumerate(model.trainable_weights) if id(w) in biases}
    assert len(cancelled) == 4
    for vec in (True, False):
        learner = make(_conv4(), vec)
        assert (learner._vector_plan() is not None) == vec
        loss, grads = learner.meta_gradients(batch)
        results.append((loss, [np.asarray(g) for g in grads]))
    (lv, gv), (ll, gl) = results
    assert abs(lv - ll) <= 1e-5 * max(1.0, abs(ll))
    scale = max(float(np.abs(g).max()) for g in gl)
    assert len(gv) == len(gl)
    for i, (a, b) in enumerate(zip(gv, gl)):
        if i in cancelled:
            assert max(np.abs(a).max(), np.abs(b).max()) <= 1e-5 * scale
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * scale)
    return gv


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_vectorised_conv4_equals_the_loop(cls, first_order, steps):
    def make(model, vec):
        return cls(model, inner_lr=0.3, inner_steps=steps, first_order=first_order, vectorize=vec)

    _compare(make, _batch(seed=steps))


@pytest.mark.parametrize("steps", [1, 2])
def test_fomaml_vectorised_conv4_equals_the_loop(steps):
    def make(model, vec):
        if vec:
            return MAML(model, inner_lr=0.3, inner_steps=steps, first_order=True, vectorize=True)
        return MAML(model, inner_lr=0.3, inner_steps=steps, first_order=True, vectorize=False)

    grads = _compare(make, _batch(seed=10 + steps))
    assert any(np.abs(g).max() > 0 for g in grads)


def test_traced_conv4_training_equals_the_eager_loop():
    """fit on the vectorised path records the meta-step once and replays it from C; its
    trajectory equals the per-task eager loop's (plain SGD as the meta-optimizer, so that
    the near-zero gradients of conv biases before batch norm are not magnified as Adam
    would: they stay near zero either way)."""
    weights, losses = [], []
    for vec, trace in ((True, True), (True, False), (False, False)):
        model = _conv4(seed=5)
        maml = MAML(
            model,
            inner_lr=0.3,
            inner_steps=1,
            meta_optimizer="sgd",
            meta_lr=0.01,
            vectorize=vec,
            trace=trace,
        )
        # ten support images a task: batch norm of the last block (1x1 maps) over five
        # values would make the second-order step too ill-conditioned to compare paths
        batch = _batch(seed=7, support=10)
        history = maml.fit(batch, iterations=3, meta_batch_size=3, verbose=0)
        assert (maml._traced_step is not None) == trace  # the vectorised step was traced
        losses.append(history["loss"])
        weights.append(model.get_weights())
    # the replay is the eager vectorised step, bit for bit
    assert losses[0] == losses[1]
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_array_equal(a, b)
    # and the per-task loop's to float32 rounding
    np.testing.assert_allclose(losses[0], losses[2], rtol=1e-5)
    for a, b in zip(weights[0], weights[2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(weights[0][0], _conv4(seed=5).get_weights()[0])  # it trained


def test_bad_input_raises_and_changes_nothing():
    """Images of the wrong shape: a clear error from the batched convolution, and the
    model and the meta-optimizer as they were."""
    model = _conv4()
    maml = MAML(model, inner_lr=0.3, vectorize=True)
    assert maml._vector_plan() is not None
    maml.fit(_batch(), iterations=1, meta_batch_size=3, verbose=0)  # traced once
    before = [w.copy() for w in model.get_weights()]
    iterations = maml.iterations
    with pytest.raises(ValueError, match=r"shape \(28, 28, 3\) .*inputs of shape \(28, 28, 1\)"):
        maml.fit(_batch(shape=(28, 28, 3)), iterations=1, meta_batch_size=3, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert maml.iterations == iterations
