"""MAML: meta-gradients against the PyTorch fixture, learning, adapt/clone/evaluate."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.functional import functional_call
from metalearn.meta import ANIL, MAML, MetaSGD, FOMAML, clone_model, models
from metalearn.tasks import Sinusoid, Task
from tests.helpers import REFERENCE, mlp_fixture_model, torch_mlp_meta_reference
from tests.helpers import sinusoid_model as _sinusoid_model

REF = np.load(REFERENCE / "mlp.npz")
NAMES = ["W1", "b1", "W2", "b2"]


_fixture_model = mlp_fixture_model


def _fixture_batch(copies=1):
    rep = lambda a: np.stack([a] * copies)
    return Task(
        rep(REF["maml/xs"]),
        rep(REF["maml/ys"]),
        rep(REF["maml/xq"]),
        rep(REF["maml/yq"]),
        {"batched": True},
    )


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("order", [2, 1])
def test_meta_gradient_matches_pytorch_fixture(order, vectorize):
    model = _fixture_model()
    maml = MAML(
        model, inner_lr=float(REF["maml/inner_lr"]), first_order=(order == 1), vectorize=vectorize
    )
    loss, grads = maml.meta_gradients(_fixture_batch())
    assert (maml._vector_plan() is not None) == vectorize
    assert abs(loss - float(REF["maml/loss_query"])) < 1e-5
    for k, g in zip(NAMES, grads):
        ref = REF["maml/grad%d/%s" % (order, k)]
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-6, err_msg=k)
    # the two orders really differ (the fixture asserts it too): order matters here
    other = REF["maml/grad%d/W1" % (3 - order)]
    assert np.abs(np.asarray(grads[0]) - other).max() > 1e-4


def test_meta_gradient_is_the_mean_over_tasks_and_leaves_weights_alone():
    model = _fixture_model()
    before = model.get_weights()
    maml = MAML(model, inner_lr=float(REF["maml/inner_lr"]))
    _, g1 = maml.meta_gradients(_fixture_batch(1))
    _, g3 = maml.meta_gradients(_fixture_batch(3))
    for a, b in zip(g1, g3):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorised_meta_batch_equals_the_loop_over_tasks(first_order):
    rng = np.random.default_rng(0)
    ml.random.set_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(3, 3, 1)),
            keras.layers.Dense(6),
            keras.layers.Activation("relu"),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    batch = Task(
        rng.random((4, 6, 3, 3, 1)).astype(np.float32),
        rng.integers(0, 3, (4, 6)),
        rng.random((4, 9, 3, 3, 1)).astype(np.float32),
        rng.integers(0, 3, (4, 9)),
        {"batched": True},
    )
    results = []
    for vec in (True, False):
        maml = MAML(model, inner_lr=0.3, inner_steps=2, first_order=first_order, vectorize=vec)
        results.append(maml.meta_gradients(batch))
        assert (maml._vector_plan() is not None) == vec
    (la, ga), (lb, gb) = results
    assert abs(la - lb) < 1e-5
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # a layer the batched path does not know (Dropout) falls back to the loop
    other = keras.Sequential(
        [keras.layers.Dense(4, input_shape=(2,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
    )
    assert MAML(other)._vector_plan() is None
    with pytest.raises(ValueError, match="vectorize"):
        MAML(other, vectorize=True)._vector_plan()


def _meta_grads_both_ways(model, batch, **kw):
    results = []
    for vec in (True, False):
        maml = MAML(model, vectorize=vec, **kw)
        results.append(maml.meta_gradients(batch))
        assert (maml._vector_plan() is not None) == vec
    (la, ga), (lb, gb) = results
    assert abs(la - lb) < 1e-5 * max(1.0, abs(lb))
    scale = max(float(np.abs(np.asarray(g)).max()) for g in gb)
    assert scale > 1e-3
    for a, b in zip(ga, gb):
        # biases before a BatchNormalization have a zero gradient: compare on the overall scale
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    return maml


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_vectorised_batch_norm_equals_the_loop(first_order, steps):
    """BatchNormalization in the batched path: each task normalised with its own statistics
    (batch_norm_grouped), as the per-task functional call does."""
    rng = np.random.default_rng(1)
    ml.random.set_seed(1)
    model = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(2, 3, 1)),
            keras.layers.Dense(5),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(3),
        ]
    )
    batch = Task(
        rng.random((3, 6, 2, 3, 1)).astype(np.float32),
        rng.integers(0, 3, (3, 6)),
        rng.random((3, 4, 2, 3, 1)).astype(np.float32),
        rng.integers(0, 3, (3, 4)),
        {"batched": True},
    )
    _meta_grads_both_ways(model, batch, inner_lr=0.3, inner_steps=steps, first_order=first_order)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_low_rank_fast_weights_equal_the_loop(first_order, steps):
    """Wide dense kernels with few support rows are carried as W + low-rank updates
    (MAML._low_rank_kernels): the meta-gradient must equal the per-task loop's.
    Four support rows, not two: over two rows BatchNormalization's output is +-1 whatever
    its input, the gradient to the layer below is a near-total cancellation, and float32
    rounding decides it (against a float64 PyTorch run, the loop itself was off by up to
    2.4e-4 of the gradients' scale with two rows, ~5e-6 with four)."""
    rng = np.random.default_rng(2)
    ml.random.set_seed(2)
    model = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(8, 8, 1)),
            keras.layers.Dense(48),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(40, activation="tanh"),
            keras.layers.Dense(2),
        ]
    )
    batch = Task(
        rng.random((3, 4, 8, 8, 1)).astype(np.float32),
        rng.integers(0, 2, (3, 4)),
        rng.random((3, 5, 8, 8, 1)).astype(np.float32),
        rng.integers(0, 2, (3, 5)),
        {"batched": True},
    )
    maml = _meta_grads_both_ways(
        model, batch, inner_lr=0.5, inner_steps=steps, first_order=first_order
    )
    vec = MAML(model, inner_lr=0.5, inner_steps=steps)
    assert vec._low_rank_kernels(vec._vector_plan(), 4) == {0, 4}  # both wide kernels
    # Meta-SGD's per-weight rates make the update full rank: never low-rank
    assert MetaSGD(model, inner_lr=0.5)._low_rank_kernels(vec._vector_plan(), 4) == set()
    assert maml is not None


@pytest.mark.parametrize("first_order", [False, True])
def test_sinusoid_hidden_kernel_low_rank_equals_the_loop(first_order):
    """The sinusoid MLP (1-40-40-1) at K=10: the 40x40 kernel is carried as W + rank-10
    update (10 * (40 + 40) < 40 * 40 multiply-adds per row), its 1x40 and 40x1 ends as
    per-task copies; with 5 inner steps (rank 50) the 40x40 kernel is copied too."""
    ml.random.set_seed(3)
    model = models.sinusoid_mlp()
    maml = MAML(model, inner_lr=0.05)
    assert maml._low_rank_kernels(maml._vector_plan(), 10) == {2}
    assert MAML(model, inner_steps=5)._low_rank_kernels(maml._vector_plan(), 10) == set()
    batch = Sinusoid(k_shot=10, q_queries=7, seed=3).sample_batch(4)
    _meta_grads_both_ways(model, batch, inner_lr=0.05, first_order=first_order)


def test_vectorised_plan_is_the_models_batched_form():
    """MAML's vectorised path runs the model's batched form (Layer._batched_form, composed
    by Sequential): a nested Sequential is batched too and equals the loop; a Dense whose
    bias is frozen has no batched form (the adapted weights would leave it out), so the
    meta-batch runs task by task, with the bias; a Dense subclass that does not declare a
    form of its own has none (its call may differ)."""
    rng = np.random.default_rng(6)
    ml.random.set_seed(6)
    batch = Task(
        rng.random((3, 5, 4)).astype(np.float32),
        rng.random((3, 5, 2)).astype(np.float32),
        rng.random((3, 7, 4)).astype(np.float32),
        rng.random((3, 7, 2)).astype(np.float32),
        {"batched": True},
    )
    inner = keras.Sequential([keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(5)])
    nested = keras.Sequential(
        [
            keras.layers.Dense(8, activation="relu", input_shape=(4,)),
            inner,
            keras.layers.Activation("relu"),
            keras.layers.Dense(2),
        ]
    )
    _meta_grads_both_ways(nested, batch, inner_lr=0.2, inner_steps=2)
    model = keras.Sequential(
        [keras.layers.Dense(6, activation="tanh", input_shape=(4,)), keras.layers.Dense(2)]
    )
    w = model.get_weights()
    w[1] = rng.standard_normal(6).astype(np.float32)  # a bias that matters
    model.set_weights(w)
    model.layers[0].bias.trainable = False
    assert MAML(model)._vector_plan() is None
    loop = MAML(model, inner_lr=0.2, vectorize=False).meta_gradients(batch)
    np.testing.assert_allclose(
        MAML(model, inner_lr=0.2).meta_gradients(batch)[0], loop[0], rtol=1e-6
    )

    class MyDense(keras.layers.Dense):
        pass

    mine = keras.Sequential([MyDense(3, input_shape=(4,)), keras.layers.Dense(2)])
    assert MAML(mine)._vector_plan() is None


def test_subclasses_declare_what_their_inner_loop_changes():
    """ANIL's inner loop re-runs only the head (_batched_inner_loop False: never batched,
    even with vectorize=True); Meta-SGD's per-weight rates run batched but make every
    kernel update full rank (_low_rank_inner_step False)."""
    ml.random.set_seed(7)
    model = models.sinusoid_mlp()
    assert ANIL(model, vectorize=True)._vector_plan() is None
    sgd = MetaSGD(model)
    plan = sgd._vector_plan()
    assert plan is not None and sgd._low_rank_kernels(plan, 10) == set()
    assert MAML(model)._low_rank_kernels(plan, 10) == {2}


@pytest.mark.torch
def test_two_inner_steps_match_torch():
    pytest.importorskip("torch")
    model = _fixture_model()
    lr = 0.3
    maml = MAML(model, inner_lr=lr, inner_steps=2)
    loss, grads = maml.meta_gradients(_fixture_batch())
    ref_loss, ref = torch_mlp_meta_reference(2, lr)
    assert abs(loss - ref_loss) < 1e-5
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=1e-6)


def test_fit_history_and_fixed_task_batch_updates_weights():
    ml.random.set_seed(0)
    model = _fixture_model()
    maml = MAML(model, inner_lr=0.5, meta_lr=0.01)
    h = maml.fit(_fixture_batch(2), iterations=20, meta_batch_size=2, verbose=0)
    assert set(h) == {"loss", "accuracy"} and len(h["loss"]) == 20 and len(h["accuracy"]) == 20
    assert h["loss"][-1] < h["loss"][0] - 0.2
    assert all(0.0 <= a <= 1.0 for a in h["accuracy"])
    assert maml.iterations == 20
    assert not np.array_equal(model.get_weights()[0], REF["mlp/W1"])


def test_maml_sinusoid_learns():
    maml = MAML(_sinusoid_model(), inner_lr=0.01, inner_steps=1, meta_lr=0.001)
    test = Sinusoid(k_shot=10, q_queries=20, seed=99).sample_batch(100)
    untrained = maml.evaluate(test, steps=[0, 10])
    maml.fit(Sinusoid(k_shot=10, seed=0), iterations=1000, meta_batch_size=25, verbose=0)
    res = maml.evaluate(test, steps=[0, 1, 10])
    assert set(res[1]) == {"mse", "ci95", "loss", "episodes"} and res[1]["episodes"] == 100
    # adaptation helps a lot after meta-training, much more than before it
    assert res[10]["mse"] < 0.3 * res[0]["mse"]
    assert res[1]["mse"] < 0.5 * res[0]["mse"]
    assert res[10]["mse"] < 0.5 * untrained[10]["mse"]


def test_adapt_returns_new_model_and_leaves_meta_model_alone():
    model = _sinusoid_model(1)
    maml = MAML(model, inner_lr=0.01)
    task = Sinusoid(seed=5).sample()
    before = model.get_weights()
    adapted = maml.adapt(task.support_x, task.support_y, steps=5)
    after = model.get_weights()
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert adapted is not model and isinstance(adapted, keras.Sequential)
    assert any(not np.array_equal(a, b) for a, b in zip(adapted.get_weights(), before))
    mse = lambda m: float(np.mean((np.asarray(m(task.support_x)) - task.support_y) ** 2))
    assert mse(adapted) < mse(model)
    # same as the fast weights run functionally; 5 plain SGD steps by hand agree
    fast = maml.adapted_weights(task.support_x, task.support_y, steps=5)
    np.testing.assert_allclose(
        np.asarray(adapted(task.query_x)),
        np.asarray(functional_call(model, fast, task.query_x)),
        rtol=1e-6,
    )
    w = [ml.tensor(a, requires_grad=True) for a in before]
    for _ in range(5):
        loss = ml.reduce_mean(
            ml.mean_squared_error(task.support_y, functional_call(model, w, task.support_x))
        )
        g = ml.grad(loss, w)
        w = [
            ml.tensor(np.asarray(a) - 0.01 * np.asarray(b), requires_grad=True)
            for a, b in zip(w, g)
        ]
    for a, b in zip(w, adapted.get_weights()):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    # changing the adapted model does not touch the meta-model
    adapted.set_weights([x * 0 for x in adapted.get_weights()])
    np.testing.assert_array_equal(model.get_weights()[0], before[0])


def test_clone_is_independent():
    model = _sinusoid_model(2)
    maml = MAML(model)
    c = maml.clone()
    for a, b in zip(c.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    c.trainable_weights[0].assign(np.zeros(c.trainable_weights[0].shape, np.float32))
    assert np.abs(model.get_weights()[0]).sum() > 0
    # a subclassed model with a get_config clones too
    net = ml.networks.AdaptiveNeuralNetwork(
        num_classes=3, hidden_units=8, output_activation="linear"
    )
    net(np.zeros((1, 4, 4), np.float32))
    c2 = clone_model(net)
    assert type(c2) is type(net)
    x = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(c2(x)), np.asarray(net(x)), rtol=1e-6)


def test_evaluate_mean_and_confidence_interval():
    model = _sinusoid_model(3)
    maml = MAML(model, inner_lr=0.02, inner_steps=2)
    test = Sinusoid(seed=11).sample_batch(12)
    res = maml.evaluate(test)
    per = []
    for t in test.tasks():
        fast = maml.adapted_weights(t.support_x, t.support_y)
        pred = np.asarray(functional_call(model, fast, t.query_x))
        per.append(np.mean((pred - t.query_y) ** 2))
    per = np.array(per)
    assert res["episodes"] == 12
    np.testing.assert_allclose(res["mse"], per.mean(), rtol=1e-5)
    np.testing.assert_allclose(res["ci95"], 1.96 * per.std() / np.sqrt(12), rtol=1e-4)
    # steps=0 is the meta-model itself
    r0 = maml.evaluate(test, steps=0)
    pred0 = [np.mean((np.asarray(model(t.query_x)) - t.query_y) ** 2) for t in test.tasks()]
    np.testing.assert_allclose(r0["mse"], np.mean(pred0), rtol=1e-5)
    # a sampler gives one episode per task it samples, reproducibly
    a = maml.evaluate(Sinusoid(seed=3), episodes=5)
    b = maml.evaluate(Sinusoid(seed=3), episodes=5)
    assert a == b and a["episodes"] == 5


def test_progress_output(capsys):
    maml = MAML(_sinusoid_model(4))
    maml.fit(Sinusoid(seed=0), iterations=20, meta_batch_size=2, verbose=0)
    assert capsys.readouterr().out == ""
    maml.fit(Sinusoid(seed=0), iterations=20, meta_batch_size=2, verbose=1)
    out = capsys.readouterr().out.strip().splitlines()
    # not a terminal: a line every 10 % with an ETA, then Keras' summary line
    assert len(out) == 10 and "ETA" in out[0] and "loss" in out[0]
    assert out[-1].startswith("20/20") and "mse" in out[-1]


def test_callbacks_and_stop_training():
    model = _sinusoid_model(5)
    maml = MAML(model)
    seen = []

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((batch, dict(logs)))
            if batch == 4:
                self.model.stop_training = True

    h = maml.fit(Sinusoid(seed=0), iterations=50, meta_batch_size=2, verbose=0, callbacks=[Stop()])
    assert len(h["loss"]) == 5 and [b for b, _ in seen] == [0, 1, 2, 3, 4]
    assert set(seen[0][1]) == {"loss", "mse"}
    calls = []
    maml.fit(
        Sinusoid(seed=0),
        iterations=3,
        meta_batch_size=2,
        verbose=0,
        callbacks=[lambda i, logs: calls.append(i)],
    )
    assert calls == [0, 1, 2]


def test_help_explains_the_algorithm():
    doc = MAML.__doc__
    assert "Finn" in doc and "2017" in doc and "create_graph" in doc and "inner_lr" in doc
    assert FOMAML(_sinusoid_model()).first_order


def test_bad_arguments():
    model = _sinusoid_model()
    with pytest.raises(ValueError):
        MAML(model, inner_steps=-1)
    with pytest.raises(ValueError):
        MAML(model, meta_optimizer="rmsprop_unknown")
    with pytest.raises(TypeError):
        MAML(model).fit(object(), iterations=1, meta_batch_size=1, verbose=0)
    with pytest.raises(ValueError):
        MAML(model, loss="hinge_unknown").fit(Sinusoid(seed=0), 1, 1, verbose=0)
