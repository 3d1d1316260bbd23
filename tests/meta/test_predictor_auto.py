"""MetaLearner's performance predictor (its features rank tasks by the accuracy adaptation
reaches) and ``adapt(steps="auto")`` (the fewest inner steps predicted to be as good as
the best)."""

import numpy as np
import pytest

from metalearn.meta.system import MetaLearner, spearman
from metalearn.tasks.base import Task
from tests.helpers import requires_omniglot


class NoisyTasks:
    """5-way 1-shot tasks from `chars`, a random share in [0, 0.6] of the pixels of the
    whole task replaced by uniform noise: tasks of widely varied difficulty."""

    def __init__(self, x, y, chars, q=6, seed=0, max_noise=0.6):
        self.x, self.q, self.max_noise = x, q, max_noise
        self.members = [np.flatnonzero(y == c) for c in chars]
        self.rng = np.random.default_rng(seed)

    def sample(self):
        r = self.rng
        classes = r.choice(len(self.members), 5, replace=False)
        noise = r.uniform(0.0, self.max_noise)
        sx, qx = [], []
        for c in classes:
            idx = r.choice(self.members[c], 1 + self.q, replace=False)
            sx.append(self.x[idx[:1]])
            qx.append(self.x[idx[1:]])
        sx, qx = np.concatenate(sx), np.concatenate(qx)

        def corrupt(a):
            m = r.random(a.shape) < noise
            return np.where(m, r.random(a.shape), a).astype(np.float32)

        lab = np.arange(5)
        return Task(corrupt(sx), lab, corrupt(qx), np.repeat(lab, self.q))

    def sample_batch(self, b):
        ts = [self.sample() for _ in range(b)]
        return Task(*(np.stack([t[i] for t in ts]) for i in range(4)), info={"batched": True})


@pytest.fixture(scope="module")
def omniglot_system(requires_omniglot):
    import metalearn
    from metalearn.datasets import omniglot

    x, y = omniglot(split="background")
    metalearn.random.set_seed(0)  # the learner's initial weights, whatever ran before
    system = MetaLearner(n_way=5, hidden_units=64, meta_lr=0.005, memory_capacity=200, seed=0)
    system.fit(NoisyTasks(x, y, range(300), seed=1), iterations=150, meta_batch_size=8, verbose=0)
    system.train_predictor(300)
    held_out = NoisyTasks(x, y, range(600, 700), q=15, seed=2)  # characters not trained on
    return system, [held_out.sample() for _ in range(100)]


@requires_omniglot
def test_predictor_ranks_held_out_tasks(omniglot_system):
    # A small budget (1200 training tasks, a weak learner): with the support-input,
    # first-step, memory, separation and pseudo-query features, trained on raw features
    # and standardised accuracies, the predictor ranks these 100 held-out tasks at
    # Spearman 0.458; the Gram matrix and task statistics alone (metalearn before them)
    # reached 0.432 with the same learner on the same tasks, and standardising the
    # features too 0.480 at this budget but 0.05-0.1 less on the full one.
    # Deterministic (set_seed(0) in the fixture). benchmarks/predictor.py measures the
    # full budget.
    system, tasks = omniglot_system
    pred = [system.predict_performance(t.support_x, t.support_y) for t in tasks]
    achieved = [system.evaluate_task(t, warm_start=False) for t in tasks]
    assert np.ptp(achieved) > 0.3  # the tasks do differ in difficulty
    assert spearman(pred, achieved) >= 0.44


@requires_omniglot
def test_auto_steps_on_omniglot_matches_its_prediction(omniglot_system):
    system, tasks = omniglot_system
    t = tasks[0]
    model, predicted = system.adapt(t.support_x, t.support_y, steps="auto", warm_start=False)
    k = system.last_steps
    curve = system._predicted_curve(*system._check_support(t.support_x, t.support_y))
    assert 1 <= k <= system.auto_max_steps
    assert curve[k - 1] >= curve.max() - system.auto_epsilon
    assert np.all(curve[: k - 1] < curve.max() - system.auto_epsilon)
    assert predicted == pytest.approx(curve[k - 1])
    # the model is the algorithm's own adaptation with that many steps
    ref = system.algorithm.adapt(t.support_x, t.support_y, steps=k)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------- the rule, constructed case


@pytest.fixture
def small_system():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = np.arange(5)
    system = MetaLearner(n_way=5, hidden_units=8, memory_capacity=10, auto_max_steps=5, seed=0)
    tasks = lambda b: Task(  # noqa: E731
        np.stack([x] * b), np.stack([y] * b), np.stack([x] * b), np.stack([y] * b), {}
    )
    system.fit(tasks, iterations=2, meta_batch_size=2, verbose=0)
    return system, x, y


CURVES = {
    # easy: as good after one step as after five
    "easy": np.array([0.90, 0.905, 0.90, 0.90, 0.90]),
    # hard: keeps gaining until the fourth step
    "hard": np.array([0.30, 0.45, 0.55, 0.60, 0.605]),
}


def test_auto_takes_fewer_steps_on_easy_tasks(small_system, monkeypatch):
    system, x, y = small_system
    chosen = {}
    for name, curve in CURVES.items():
        monkeypatch.setattr(system, "_predicted_curve", lambda sx, sy, qx=None, c=curve: c)
        model, predicted = system.adapt(x, y, steps="auto", warm_start=False)
        chosen[name] = system.last_steps
        assert predicted == curve[system.last_steps - 1]
        ref = system.algorithm.adapt(x, y, steps=system.last_steps)
        for a, b in zip(model.get_weights(), ref.get_weights()):
            np.testing.assert_array_equal(a, b)
    # within epsilon 0.01 of the best: step 1 (0.90 >= 0.895), step 4 (0.60 >= 0.595)
    assert chosen == {"easy": 1, "hard": 4}
    system.auto_epsilon = 0.0  # only the best itself
    monkeypatch.setattr(system, "_predicted_curve", lambda sx, sy, qx=None: CURVES["hard"])
    system.adapt(x, y, steps="auto")
    assert system.last_steps == 5


@pytest.mark.parametrize(
    "steps,error,match",
    [
        ("fast", ValueError, "None, a non-negative integer or 'auto'"),
        ("AUTO", ValueError, "'auto'"),
        ("", ValueError, "'auto'"),
        (1.5, TypeError, "steps must be an integer"),
        (-1, ValueError, "steps must be >= 0"),
        (True, TypeError, "steps must be an integer"),
    ],
)
def test_adapt_bad_steps_changes_nothing(small_system, steps, error, match):
    system, x, y = small_system
    weights = [w.copy() for w in system.model.get_weights()]
    pweights = [w.copy() for w in system.predictor.get_weights()]
    size, last = system.memory.size, (system.last_steps, system.last_recall)
    with pytest.raises(error, match=match):
        system.adapt(x, y, steps=steps)
    for a, b in zip(system.model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(system.predictor.get_weights(), pweights):
        np.testing.assert_array_equal(a, b)
    assert system.memory.size == size and (system.last_steps, system.last_recall) == last


def test_auto_needs_a_trained_predictor():
    x = np.zeros((5, 6), np.float32)
    system = MetaLearner(n_way=5, hidden_units=8)
    with pytest.raises(ValueError, match="trained predictor"):
        system.adapt(x, np.arange(5), steps="auto")
    assert system.last_steps is None


@pytest.mark.parametrize(
    "kw,error",
    [
        ({"auto_max_steps": 0}, ValueError),
        ({"auto_max_steps": 2.5}, TypeError),
        ({"auto_epsilon": -0.1}, ValueError),
        ({"auto_epsilon": float("nan")}, ValueError),
    ],
)
def test_bad_auto_settings(kw, error):
    with pytest.raises(error, match=next(iter(kw))):
        MetaLearner(n_way=5, **kw)


def test_predictions_survive_save_and_load(small_system, tmp_path):
    system, x, y = small_system
    system.save(tmp_path / "s")
    loaded = MetaLearner.load(tmp_path / "s")
    assert loaded.auto_max_steps == system.auto_max_steps
    np.testing.assert_array_equal(loaded._predicted_curve(x, y), system._predicted_curve(x, y))
    system.adapt(x, y, steps="auto")
    loaded.adapt(x, y, steps="auto")
    assert loaded.last_steps == system.last_steps


@pytest.fixture
def varied_system():
    """A system fitted on tasks of varied inputs (the accuracies it learns differ)."""
    import metalearn

    metalearn.random.set_seed(0)
    rng = np.random.default_rng(1)
    y = np.arange(5)

    def tasks(b):
        x = rng.normal(size=(b, 5, 6)).astype(np.float32)
        q = x + rng.normal(scale=rng.uniform(0.1, 2.0, (b, 1, 1)), size=x.shape)
        return Task(x, np.stack([y] * b), q.astype(np.float32), np.stack([y] * b), {})

    system = MetaLearner(n_way=5, hidden_units=8, memory_capacity=10, seed=0)
    system.fit(tasks, iterations=6, meta_batch_size=4, verbose=0)
    return system, tasks(1)


def test_predictor_reads_raw_features_and_standardised_accuracies(varied_system):
    # the default recipe: the features go in as they are (standardising them cost
    # 0.05-0.1 of Spearman on the full protocol); the network's output is in units of
    # the buffer's accuracy spread about its mean
    system, task = varied_system
    curves = np.asarray(system._buffer_c, np.float64)
    assert curves.std() > 0.01  # the accuracies differ
    mean, scale = system._target_affine()
    assert mean == pytest.approx(curves.mean(), rel=1e-12)
    assert scale == pytest.approx(curves.std(), rel=1e-12)
    feats, labels = system.task_features(task.support_x[0], task.support_y[0], steps=2)
    np.testing.assert_array_equal(system._standardize(feats), feats)
    from metalearn.meta.system import _core_no_grad

    with _core_no_grad():
        out = float(np.asarray(system.predictor(feats, labels=labels)).reshape(-1)[0])
    assert system._predict_raw(feats, labels)[0] == pytest.approx(mean + scale * out, rel=1e-6)
    curve = system._predicted_curve(task.support_x[0], task.support_y[0])
    assert curve[1] == pytest.approx(np.clip(mean + scale * out, 0.0, 1.0), rel=1e-6)


def test_another_predictor_recipe_survives_save_and_load(varied_system, tmp_path):
    # a system trained with another recipe (benchmarks/predictor.py --raw) is read back
    # with it, so its predictions do not change
    system, task = varied_system
    system._STANDARDIZE = False
    sx, sy = task.support_x[0], task.support_y[0]
    before = system._predicted_curve(sx, sy)
    system.save(tmp_path / "s")
    loaded = MetaLearner.load(tmp_path / "s")
    assert loaded._STANDARDIZE is False and MetaLearner._STANDARDIZE == "targets"
    np.testing.assert_array_equal(loaded._predicted_curve(sx, sy), before)
    del loaded._STANDARDIZE  # read with the default recipe, the same weights mean else
    assert not np.allclose(loaded._predicted_curve(sx, sy), before)


# ------------------------------------------------------- query features (transductive)


@pytest.fixture
def query_system():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = np.arange(5)
    qy = np.repeat(y, 3)
    qx = (x[qy] + 0.7 * rng.normal(size=(15, 6))).astype(np.float32)
    system = MetaLearner(n_way=5, hidden_units=8, memory_capacity=10, seed=0, query_features=True)
    tasks = lambda b: Task(  # noqa: E731
        np.stack([x] * b), np.stack([y] * b), np.stack([qx] * b), np.stack([qy] * b), {}
    )
    system.fit(tasks, iterations=3, meta_batch_size=2, verbose=0)
    return system, x, y, qx


def _entropy(p):
    return -(p * np.log(p + 1e-12)).sum(-1)


def test_query_features_follow_their_formulas(query_system):
    system, x, y, qx = query_system
    groups = system.feature_groups
    a, b = groups["query"]
    assert b - a == len(MetaLearner.QUERY) == 11 and groups["steps"] == (b, b + 1)
    feats, _ = system.task_features(x, y, query_x=qx)
    got = feats[0, a:b].astype(np.float64)
    # reference: the algorithm's own adapted model and embeddings, formulas in NumPy
    model = system.algorithm.adapt(x, y, steps=system.inner_steps)
    assert system.model.output_activation == "linear"  # logits
    z = np.asarray(model(qx, training=True), np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    es, eq = np.asarray(system.embed(x), np.float64), np.asarray(system.embed(qx), np.float64)
    d = np.array([[np.sum((q - s) ** 2) for s in es] for q in eq])  # one support per class
    pp = np.exp(-(d - d.min(1, keepdims=True)))
    pp /= pp.sum(1, keepdims=True)
    top = np.sort(p, 1)
    ptop = np.sort(pp, 1)
    hist = lambda c: np.bincount(c, minlength=5) / len(c)  # noqa: E731
    between = [np.sqrt(np.sum((es[i] - es[j]) ** 2)) for i in range(5) for j in range(i + 1, 5)]
    near = np.array(
        [
            np.argmin([np.sum((q - r) ** 2) if k != i else np.inf for k, r in enumerate(eq)])
            for i, q in enumerate(eq)
        ]
    )
    want = [
        top[:, -1].mean(),
        _entropy(p).mean(),
        (top[:, -1] - top[:, -2]).mean(),
        ptop[:, -1].mean(),
        (ptop[:, -1] - ptop[:, -2]).mean(),
        np.mean(p.argmax(1) == pp.argmax(1)),
        _entropy(hist(p.argmax(1))),
        _entropy(p.mean(0)),
        _entropy(hist(pp.argmax(1))),
        np.sqrt(d.min(1)).mean() / np.mean(between),
        np.mean(p.argmax(1) == p.argmax(1)[near]),
    ]
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    # the prediction reads them: other query inputs, another prediction
    p1 = system.predict_performance(x, y, query_x=qx)
    p2 = system.predict_performance(x, y, query_x=qx[::-1][:5] * 0.0)
    assert 0.0 <= p1 <= 1.0 and p1 != p2


def test_query_features_are_off_by_default(small_system):
    system, x, y = small_system
    assert not system.query_features and "query" not in system.feature_groups


@pytest.mark.parametrize(
    "call",
    [
        lambda s, x, y, qx: s.predict_performance(x, y),  # query_x missing
        lambda s, x, y, qx: s.adapt(x, y, steps="auto"),
        lambda s, x, y, qx: s.task_features(x, y),
        lambda s, x, y, qx: s.predict_performance(x, y, query_x=qx[:, :4]),  # wrong shape
        lambda s, x, y, qx: s.predict_performance(x, y, query_x=qx[:0]),  # empty
        lambda s, x, y, qx: s.adapt(x, y, steps="auto", query_x=qx[None]),
    ],
)
def test_bad_query_inputs_change_nothing(query_system, call):
    system, x, y, qx = query_system
    before = [w.copy() for w in system.model.get_weights()]
    pred = [np.asarray(w).copy() for w in system.predictor.weights]
    size, steps = system.memory.size, system.last_steps
    with pytest.raises(ValueError, match="query_x"):
        call(system, x, y, qx)
    for a, b in zip(before, system.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(pred, system.predictor.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert system.memory.size == size and system.last_steps == steps


def test_query_x_without_query_features_is_refused(small_system):
    system, x, y = small_system
    with pytest.raises(ValueError, match="query_features=True"):
        system.predict_performance(x, y, query_x=x)


def test_query_features_flag_must_be_a_bool():
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="query_features must be True or False"):
            MetaLearner(n_way=5, query_features=bad)


def test_query_predictions_survive_save_and_load(query_system, tmp_path):
    system, x, y, qx = query_system
    system.save(tmp_path / "s")
    loaded = MetaLearner.load(tmp_path / "s")
    assert loaded.query_features
    assert loaded.predict_performance(x, y, query_x=qx) == system.predict_performance(
        x, y, query_x=qx
    )
    task = Task(x, y, qx, np.repeat(y, 3))
    assert loaded.evaluate_task(task, steps="auto") == system.evaluate_task(task, steps="auto")
    assert loaded.last_steps == system.last_steps


@requires_omniglot
def test_query_features_rank_held_out_tasks(requires_omniglot):
    # The small budget of omniglot_system, with query_features=True: the predictor sees
    # the held-out tasks' unlabelled query inputs and ranks the same 100 tasks at
    # Spearman 0.491 (0.458 from the support set alone, test_predictor_ranks_held_out_
    # tasks; 0.432 for metalearn before both). benchmarks/predictor.py --query-features
    # measures the full budget (about 0.75 there).
    import metalearn
    from metalearn.datasets import omniglot

    x, y = omniglot(split="background")
    metalearn.random.set_seed(0)
    system = MetaLearner(
        n_way=5, hidden_units=64, meta_lr=0.005, memory_capacity=200, seed=0, query_features=True
    )
    system.fit(NoisyTasks(x, y, range(300), seed=1), iterations=150, meta_batch_size=8, verbose=0)
    system.train_predictor(300)
    held_out = NoisyTasks(x, y, range(600, 700), q=15, seed=2)
    tasks = [held_out.sample() for _ in range(100)]
    pred = [system.predict_performance(t.support_x, t.support_y, query_x=t.query_x) for t in tasks]
    achieved = [system.evaluate_task(t, warm_start=False) for t in tasks]
    assert spearman(pred, achieved) >= 0.47
