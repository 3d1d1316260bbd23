"""What a newcomer trips on (issue 21): softmax heads, hand-built task batches, settings
that make no sense, and NaN/inf in meta-learning."""

import math

import numpy as np
import pytest

import metalearn as ml
from metalearn import debugging, keras
from metalearn.meta import ANIL, MAML, MetaCurvature, MetaLearner, MetaSGD, ProtoNet, Reptile
from metalearn.tasks import NWayKShot, Sinusoid, Task

F32 = np.float32


def _classifier(head=None, seed=1, features=8, ways=3):
    ml.random.set_seed(seed)
    return keras.Sequential(
        [
            keras.layers.Dense(16, activation="relu", input_shape=(features,)),
            keras.layers.Dense(ways, activation=head),
        ]
    )


def _class_tasks(n, seed=0, ways=3, k=2, q=3, features=8):
    """Tasks whose classes are Gaussian blobs: learnable, so fit moves the weights."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        centers = rng.normal(size=(ways, features)) * 2
        sy, qy = np.repeat(np.arange(ways), k), np.repeat(np.arange(ways), q)
        sx = (centers[sy] + rng.normal(size=(len(sy), features))).astype(F32)
        qx = (centers[qy] + rng.normal(size=(len(qy), features))).astype(F32)
        out.append(Task(sx, sy, qx, qy))
    return out


def _sinusoid_mlp(seed=0):
    ml.random.set_seed(seed)
    return keras.Sequential(
        [
            keras.layers.Dense(40, activation="relu", input_shape=(1,)),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def _weights(model):
    return [np.array(w, copy=True) for w in model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ softmax heads


def _np_forward(weights, x, softmax):
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in weights)
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    if not softmax:
        return z
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("vectorize", ["auto", False])
def test_softmax_head_loss_is_the_crossentropy_of_its_probabilities(vectorize):
    # inner_steps=0: the meta-loss is the query cross-entropy of the model's outputs;
    # a softmax head gives probabilities, read as such (Keras' from_logits=False)
    model = _classifier("softmax")
    maml = MAML(model, inner_lr=0.5, inner_steps=0, vectorize=vectorize)
    batch = Task.batch(_class_tasks(4))
    loss, _ = maml.meta_gradients(batch)
    p = _np_forward(model.get_weights(), batch.query_x.astype(np.float64), softmax=True)
    ref = -np.mean(np.log(np.take_along_axis(p, batch.query_y[..., None], -1)))
    assert loss == pytest.approx(ref, rel=1e-5)
    # and evaluate's loss, after 0 steps, on one task
    t = batch.task(0)
    res = maml.evaluate([t], steps=0)
    p0 = _np_forward(model.get_weights(), t.query_x.astype(np.float64), softmax=True)
    assert res["loss"] == pytest.approx(
        -np.mean(np.log(p0[np.arange(len(t.query_y)), t.query_y])), rel=1e-5
    )


@pytest.mark.parametrize("first_order", [False, True])
def test_softmax_head_meta_learns_as_the_logits_head(first_order):
    # softmax(logits) under a cross-entropy from probabilities is the cross-entropy from
    # logits: the same initial weights must follow the same meta-training
    tasks = _class_tasks(24, seed=3)
    batches = [Task.batch(tasks[i : i + 4]) for i in range(0, 24, 4)]
    runs = []
    for head in ("softmax", None):
        model = _classifier(head)
        maml = MAML(model, inner_lr=0.5, inner_steps=2, first_order=first_order)
        it = iter(batches)
        maml.fit(lambda n: next(it), iterations=len(batches), meta_batch_size=4, verbose=0)
        runs.append((_weights(model), maml.evaluate(tasks[:6], steps=2)))
    (w_soft, r_soft), (w_logit, r_logit) = runs
    for a, b in zip(w_soft, w_logit):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert r_soft["accuracy"] == r_logit["accuracy"]
    assert r_soft["loss"] == pytest.approx(r_logit["loss"], rel=1e-4)


def test_protonet_reads_prototype_logits_whatever_the_encoder_ends_in():
    enc = _classifier("softmax", ways=4)
    proto = ProtoNet(enc)
    t = _class_tasks(1)[0]
    logits = np.asarray(proto.episode_logits(t.support_x, t.support_y, t.query_x), np.float64)
    z = logits - logits.max(1, keepdims=True)
    ref = -np.mean(
        (z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(t.query_y)), t.query_y]
    )
    assert proto.evaluate([t])["loss"] == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------ hand-built batches


def test_task_batch_stacks_single_tasks():
    sampler = Sinusoid(k_shot=5, q_queries=7, seed=4)
    singles = [sampler.sample() for _ in range(3)]
    batch = Task.batch(singles)
    assert (
        batch.is_batch and batch.support_x.shape == (3, 5, 1) and batch.query_y.shape == (3, 7, 1)
    )
    for i, t in enumerate(singles):
        back = batch.task(i)
        for a, b in zip(back, t):
            np.testing.assert_array_equal(a, b)
        assert back.info["amplitude"] == t.info["amplitude"]
    with pytest.raises(ValueError, match="query_x"):
        Task.batch([singles[0], Sinusoid(k_shot=5, q_queries=3).sample()])
    with pytest.raises(TypeError, match="element 1"):
        Task.batch([singles[0], tuple(singles[1])])
    with pytest.raises(ValueError, match="already a batch"):
        Task.batch([batch])
    with pytest.raises(ValueError, match="no tasks"):
        Task.batch([])


def test_evaluate_reads_a_hand_stacked_batch_a_list_and_task_batch_alike():
    sampler = Sinusoid(k_shot=5, q_queries=10, seed=5)
    singles = [sampler.sample() for _ in range(4)]
    maml = MAML(_sinusoid_mlp(), inner_lr=0.01)
    stacked = Task(*(np.stack(a) for a in zip(*singles)))  # no info: inferred from shapes
    per_task = [maml.evaluate(Task.batch([t]), steps=1)["mse"] for t in singles]
    for tasks in (stacked, singles, Task.batch(singles)):
        res = maml.evaluate(tasks, steps=1)
        assert res["episodes"] == 4
        assert res["mse"] == pytest.approx(float(np.mean(per_task)), rel=1e-6)
    # a single unmarked task is one episode
    assert maml.evaluate(singles[0], steps=1)["mse"] == pytest.approx(per_task[0], rel=1e-6)


def test_fit_takes_a_hand_stacked_batch_and_a_list_as_the_task_batch():
    sampler = Sinusoid(k_shot=5, q_queries=10, seed=6)
    singles = [sampler.sample() for _ in range(4)]
    stacked = Task(*(np.stack(a) for a in zip(*singles)))
    results = []
    for tasks in (Task.batch(singles), stacked, singles):
        model = _sinusoid_mlp()
        MAML(model, inner_lr=0.01).fit(tasks, iterations=3, verbose=0)
        results.append(_weights(model))
    assert not _same(results[0], _weights(_sinusoid_mlp()))  # it trained
    assert _same(results[0], results[1]) and _same(results[0], results[2])


# ------------------------------------------------------------------ settings


def test_settings_are_checked_by_name():
    model = _sinusoid_mlp()
    with pytest.raises(ValueError, match="inner_lr"):
        MAML(model, inner_lr=-1)
    with pytest.raises(ValueError, match="inner_lr"):
        MetaSGD(model, inner_lr=float("nan"))
    with pytest.raises(ValueError, match="inner_steps"):
        Reptile(model, inner_steps=-2)
    with pytest.raises(ValueError, match="meta_lr"):
        ANIL(model, meta_lr=-0.1)
    with pytest.raises(TypeError, match="inner_lr"):
        MAML(model, inner_lr="0.1")
    for cls in (MAML, Reptile, MetaSGD, ANIL, ProtoNet, MetaCurvature):
        with pytest.raises(TypeError, match="model"):
            cls(lambda x: x)


def test_bad_adapt_and_evaluate_arguments_change_nothing():
    sampler = Sinusoid(k_shot=5, q_queries=5, seed=7)
    model = _sinusoid_mlp()
    maml = MAML(model, inner_lr=0.01)
    maml.fit(sampler, iterations=2, meta_batch_size=2, verbose=0)
    before, step = _weights(model), maml.meta_optimizer.iterations
    t = sampler.sample()
    with pytest.raises(ValueError, match="steps"):
        maml.adapt(t.support_x, t.support_y, steps=-1)
    with pytest.raises(TypeError, match="steps"):
        maml.adapt(t.support_x, t.support_y, steps=1.5)
    with pytest.raises(ValueError, match="steps"):
        maml.adapted_weights(t.support_x, t.support_y, steps=-3)
    with pytest.raises(ValueError, match="episodes"):
        maml.evaluate(sampler, episodes=0)
    with pytest.raises(ValueError, match="steps"):
        maml.evaluate(sampler, episodes=2, steps=[0, -1])
    with pytest.raises(ValueError, match="meta_batch_size"):
        maml.fit(sampler, iterations=1, meta_batch_size=0, verbose=0)
    assert _same(before, _weights(model)) and maml.meta_optimizer.iterations == step


def test_nwaykshot_on_non_square_data_names_the_option():
    x = np.zeros((40, 6, 4), F32)
    y = np.repeat(np.arange(4), 10)
    with pytest.raises(ValueError, match="augment_rotations=False"):
        NWayKShot((x, y), 2, 1, 1)
    assert NWayKShot((x, y), 2, 1, 1, augment_rotations=False).sample().support_x.shape == (2, 6, 4)


# ------------------------------------------------------------------ NaN safety


@pytest.fixture
def check_numerics():
    debugging.enable_check_numerics()
    try:
        yield
    finally:
        debugging.disable_check_numerics()


def _learners():
    return [
        ("maml", lambda: MAML(_sinusoid_mlp(), inner_lr=0.01)),
        ("fomaml", lambda: MAML(_sinusoid_mlp(), inner_lr=0.01, first_order=True)),
        ("metasgd", lambda: MetaSGD(_sinusoid_mlp(), inner_lr=0.01)),
        ("metacurvature", lambda: MetaCurvature(_sinusoid_mlp(), inner_lr=0.01)),
        ("anil", lambda: ANIL(_sinusoid_mlp(), inner_lr=0.01)),
        ("reptile", lambda: Reptile(_sinusoid_mlp(), inner_lr=0.01)),
    ]


@pytest.mark.parametrize("name,make", _learners())
def test_adapt_refuses_a_non_finite_support_set(name, make):
    learner = make()
    t = Sinusoid(k_shot=5, seed=8).sample()
    before = _weights(learner.model)
    for bad in ("x", "y"):
        sx, sy = t.support_x.copy(), t.support_y.copy()
        (sx if bad == "x" else sy)[2, 0] = np.nan if bad == "x" else np.inf
        with pytest.raises(ValueError, match="support_" + bad):
            learner.adapt(sx, sy, steps=1)
    assert _same(before, _weights(learner.model))


def test_protonet_and_metalearner_adapt_refuse_a_non_finite_support_set():
    t = _class_tasks(1)[0]
    sx = t.support_x.copy()
    sx[0, 0] = np.nan
    with pytest.raises(ValueError, match="support_x"):
        ProtoNet(_classifier(None)).adapt(sx, t.support_y)
    learner = MetaLearner(model=_classifier(None), algorithm="maml", inner_lr=0.1)
    learner.fit(
        lambda n: Task.batch(_class_tasks(n, seed=9)), iterations=1, meta_batch_size=2, verbose=0
    )
    with pytest.raises(ValueError, match="support_x"):
        learner.adapt(sx, t.support_y)


def _nan_batch(sampler, b=3):
    batch = sampler.sample_batch(b)
    qy = batch.query_y.copy()
    qy[1, 0, 0] = np.nan
    return Task(batch.support_x, batch.support_y, batch.query_x, qy, {"batched": True})


@pytest.mark.parametrize("name,make", _learners())
def test_check_numerics_stops_meta_fit_before_the_update(name, make, check_numerics):
    learner = make()
    sampler = Sinusoid(k_shot=5, q_queries=5, seed=10)
    learner.fit(sampler, iterations=2, meta_batch_size=3, verbose=0)  # finite: runs
    before, step = _weights(learner.model), learner.meta_optimizer.iterations
    if name == "reptile":  # Reptile moves on the support sets: the NaN goes there
        b = sampler.sample_batch(3)
        sy = b.support_y.copy()
        sy[0, 0, 0] = np.nan
        bad = Task(b.support_x, sy, b.query_x, b.query_y, {"batched": True})
    else:
        bad = _nan_batch(sampler)
    with pytest.raises(debugging.NonFiniteError):
        learner.fit(bad, iterations=1, verbose=0)
    assert _same(before, _weights(learner.model))
    assert learner.meta_optimizer.iterations == step


def test_check_numerics_stops_protonet_and_metalearner_fit(check_numerics):
    tasks = _class_tasks(3, seed=11)
    bad = Task.batch(tasks)
    qx = bad.query_x.copy()
    qx[0, 0, 0] = np.inf
    bad = Task(bad.support_x, bad.support_y, qx, bad.query_y, {"batched": True})
    proto = ProtoNet(_classifier(None))
    proto.fit(Task.batch(tasks), iterations=1, verbose=0)
    before = _weights(proto.model)
    with pytest.raises(debugging.NonFiniteError):
        proto.fit(bad, iterations=1, verbose=0)
    assert _same(before, _weights(proto.model))
    learner = MetaLearner(model=_classifier(None), algorithm="fomaml", inner_lr=0.1)
    learner.fit(Task.batch(tasks), iterations=1, verbose=0)
    before = _weights(learner.model)
    with pytest.raises(debugging.NonFiniteError):
        learner.fit(bad, iterations=1, verbose=0)
    assert _same(before, _weights(learner.model))


def test_check_numerics_names_the_adapted_weight_that_overflows(check_numerics):
    maml = MAML(_sinusoid_mlp(), inner_lr=1e30)
    t = Sinusoid(k_shot=5, seed=12).sample()
    with pytest.raises(debugging.NonFiniteError, match="adapted weight"):
        maml.adapt(t.support_x, t.support_y, steps=3)
    debugging.disable_check_numerics()  # off: the overflow is the user's to see
    out = maml.adapt(t.support_x, t.support_y, steps=3)
    assert not all(np.isfinite(w).all() for w in out.get_weights())
    assert math.isfinite(float(np.asarray(_sinusoid_mlp().get_weights()[0]).sum()))


# ------------------------------------------------------------------ Reptile on a trace


@pytest.mark.parametrize("task", ["sinusoid", "classification"])
def test_traced_reptile_equals_the_loop_over_tasks(task):
    if task == "sinusoid":
        sampler = Sinusoid(k_shot=10, q_queries=10, seed=13)
        batches = [sampler.sample_batch(6) for _ in range(8)]
        make = _sinusoid_mlp
    else:
        batches = [Task.batch(_class_tasks(6, seed=20 + i)) for i in range(8)]
        make = lambda: _classifier(None)  # noqa: E731
    runs = []
    for kw in ({"vectorize": False}, {}):
        model = make()
        reptile = Reptile(model, inner_lr=0.02, inner_steps=4, meta_lr=0.5, **kw)
        it = iter(batches)
        hist = reptile.fit(
            lambda n: next(it), iterations=len(batches), meta_batch_size=6, verbose=0
        )
        runs.append((_weights(model), hist, reptile))
    (w_loop, h_loop, _), (w_trace, h_trace, traced) = runs
    assert traced._traced_step is not None and traced._traced_step.n_traces == 1  # replayed
    assert traced.meta_optimizer.iterations == len(batches)
    for a, b in zip(w_loop, w_trace):  # the mean over tasks summed in another order
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_trace["loss"], h_loop["loss"], rtol=1e-5)
    metric = "accuracy" if task == "classification" else "mse"
    np.testing.assert_allclose(h_trace[metric], h_loop[metric], rtol=1e-5)
