"""The whole system (metalearn.meta.system.MetaLearner): learner + predictor + memory."""

import math

import numpy as np
import pytest

import metalearn as ml
from metalearn.meta import MAML
from metalearn.meta.system import MetaLearner, rankdata, spearman
from metalearn.networks import AdaptiveNeuralNetwork
from metalearn.tasks import NWayKShot
from metalearn.tasks.base import Task
from tests.helpers import REPO


@pytest.fixture(scope="module")
def data(requires_omniglot):
    from metalearn.datasets import omniglot

    x, y = omniglot(split="background")
    keep = y < 40  # a small subset: 40 characters
    return x[keep], y[keep]


def sampler(data, seed=0, q=3):
    return NWayKShot(data, n_way=5, k_shot=1, q_queries=q, augment_rotations=False, seed=seed)


@pytest.fixture(scope="module")
def trained(data):
    # the global generator seeded here, so the trained system (and the statistics the
    # tests below bound) does not depend on which test files ran before this one
    ml.random.set_seed(0)
    system = MetaLearner(n_way=5, hidden_units=32, memory_capacity=200, seed=0)
    history = system.fit(sampler(data), iterations=30, meta_batch_size=4, verbose=0)
    return system, history


# ------------------------------------------------------------------ spearman


def test_spearman_hand_computed():
    # y ranks with a tie: [1, 2, 3.5, 5, 3.5]; centred ranks x: [-2,-1,0,1,2],
    # y: [-2,-1,.5,2,.5]; sum of products 8, sums of squares 10 and 9.5
    x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    np.testing.assert_allclose(rankdata(y), [1, 2, 3.5, 5, 3.5])
    assert spearman(x, y) == pytest.approx(8 / math.sqrt(95), abs=1e-12)
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); d = [1, -1, 1, -1] -> 1 - 24/60 = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6, abs=1e-12)
    assert spearman([0.1, 0.5, 0.9], [3, 20, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


# ------------------------------------------------------------------ fit


def test_fit_fills_memory_with_normalised_keys(trained):
    system, history = trained
    assert history["memory_size"] == sorted(history["memory_size"])
    assert history["memory_size"][0] == 4 and history["memory_size"][-1] == 120
    assert system.memory.size == 120 == system.tasks_stored
    keys, labels, ages, payloads = system.memory.state()
    used = keys[: system.memory.size]
    np.testing.assert_allclose(np.linalg.norm(used, axis=1), 1.0, atol=1e-5)
    assert sorted(labels[: system.memory.size].tolist()) == list(range(120))  # one slot per task
    acc = payloads[: system.memory.size, -1]
    assert np.all((acc >= 0) & (acc <= 1))
    # the stored accuracies are the measured post-adaptation ones, in task order
    np.testing.assert_allclose(np.sort(acc).mean(), np.mean(history["task_accuracy"]), atol=1e-5)
    assert system.task_info[119]["classes"].shape == (5,)


def test_predictor_learns_and_predicts_in_range(trained, data):
    system, history = trained
    losses = history["predictor_loss"]
    assert np.all(np.isfinite(losses))
    # its loss falls during fit (0.029 over the first 3 iterations, 0.020 over the last
    # 5), and what it must learn is to beat the targets' mean (the targets are
    # standardised by the buffer's mean and spread, so the untrained predictor starts
    # near it): after 400 more steps its MSE is below 0.9 x the variance of the
    # accuracies it is trained on (all step counts; 0.81 x measured)
    assert np.mean(losses[:3]) > 1.2 * np.mean(losses[-5:])
    extra = system.train_predictor(400)
    assert np.mean(extra[-10:]) < 0.9 * np.var(np.concatenate(system._buffer_c))
    t = sampler(data, seed=5).sample()
    p = system.predict_performance(t.support_x, t.support_y)
    assert 0.0 <= p <= 1.0
    feats, labels = system.task_features(t.support_x, t.support_y)
    n_stats = len(MetaLearner.STATISTICS)
    assert feats.shape == (1, system.feature_size) and labels.shape == (1, 25)
    assert system.feature_groups["statistics"] == (25, 25 + n_stats)
    assert system.feature_groups["steps"] == (system.feature_size - 1, system.feature_size)
    # the labels are part of the predictor's input
    other = np.roll(labels.reshape(5, 5), 1, axis=1).reshape(1, 25)
    assert system._predict_raw(feats, labels)[0] != system._predict_raw(feats, other)[0]
    # so are the task statistics (the tail of the features)
    np.testing.assert_array_equal(
        feats[0, 25 : 25 + n_stats], system.task_statistics(t.support_x, t.support_y)
    )
    changed = feats.copy()
    changed[0, 25:] += 1.0
    assert system._predict_raw(feats, labels)[0] != system._predict_raw(changed, labels)[0]
    with pytest.raises(ValueError):
        system.predict_performance(t.support_x[:4], t.support_y[:4])


# ------------------------------------------------------------------ adapt


def test_adapt_leaves_meta_model_and_warm_starts_recurring_task(trained, data):
    system, _ = trained
    before = [w.copy() for w in system.model.get_weights()]
    t = sampler(data, seed=11, q=5).sample()
    stored = system.remember(t.support_x, t.support_y, t.query_x, t.query_y, info=t.info)
    assert stored["index"] >= 0 and 0 <= stored["accuracy"] <= 1

    # the same task again, its classes renumbered: recalled, matched, warm-started
    perm = np.array([3, 0, 4, 1, 2])  # new label of old class c is perm[c]
    sy = perm[t.support_y]
    model, predicted = system.adapt(t.support_x, sy, steps=0)
    rec = system.last_recall
    assert rec["index"] == stored["index"] and rec["task_id"] == stored["task_id"]
    assert rec["warm_start"] and rec["class_similarity"] > 0.99
    inv = np.argsort(perm)  # old class of new class c
    np.testing.assert_array_equal(rec["permutation"], inv)
    assert 0.0 <= predicted <= 1.0
    # 0 steps: the head is the recalled one, re-based on the meta-head, in the new numbering
    head_k, head_b = (np.asarray(system.model.trainable_weights[i]) for i in system._head_index)
    got_k, got_b = (model.get_weights()[-2], model.get_weights()[-1])
    np.testing.assert_allclose(got_k, (head_k + rec["kernel_delta"])[:, inv], atol=1e-6)
    np.testing.assert_allclose(got_b, (head_b + rec["bias_delta"])[inv], atol=1e-6)

    # one step from the warm start is not the plain adaptation
    warm, _ = system.adapt(t.support_x, sy, steps=1)
    cold, _ = system.adapt(t.support_x, sy, steps=1, warm_start=False)
    assert system.last_recall is None
    plain = system.algorithm.adapt(t.support_x, sy, steps=1)
    for a, b in zip(cold.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(warm.get_weights()[-2], cold.get_weights()[-2])
    # the recalled knowledge helps on the query set of that task
    acc_warm = system.evaluate_task(Task(t.support_x, sy, t.query_x, perm[t.query_y]), steps=1)
    acc_cold = system.evaluate_task(
        Task(t.support_x, sy, t.query_x, perm[t.query_y]), steps=1, warm_start=False
    )
    assert acc_warm >= acc_cold

    # a threshold above any similarity: no warm start, plain adaptation
    system.warm_start_threshold, old = 2.0, system.warm_start_threshold
    try:
        m2, _ = system.adapt(t.support_x, sy, steps=1)
        assert not system.last_recall["warm_start"]
        for a, b in zip(m2.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-6)
    finally:
        system.warm_start_threshold = old
    for a, b in zip(before, system.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_input(trained, data):
    system, _ = trained
    t = sampler(data).sample()
    with pytest.raises(ValueError):
        system.adapt(t.support_x, t.support_y + 5)
    with pytest.raises(ValueError):
        system.adapt(t.support_x, t.support_y[:3])
    with pytest.raises(ValueError):
        MetaLearner(n_way=5, algorithm="sgd")
    with pytest.raises(ValueError):
        MetaLearner()


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip(trained, data, tmp_path):
    system, _ = trained
    system.save(tmp_path / "sys")
    loaded = MetaLearner.load(tmp_path / "sys")
    for a, b in zip(system.model.get_weights(), loaded.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(system.memory.state(), loaded.memory.state()):
        np.testing.assert_array_equal(a, b)
    for seed in (21, 22):
        t = sampler(data, seed=seed).sample()
        assert system.predict_performance(t.support_x, t.support_y) == loaded.predict_performance(
            t.support_x, t.support_y
        )
        m1, p1 = system.adapt(t.support_x, t.support_y, steps=2)
        r1 = system.last_recall
        m2, p2 = loaded.adapt(t.support_x, t.support_y, steps=2)
        r2 = loaded.last_recall
        assert p1 == p2 and r1["index"] == r2["index"] and r1["warm_start"] == r2["warm_start"]
        np.testing.assert_array_equal(np.asarray(m1(t.query_x)), np.asarray(m2(t.query_x)))


def _statistics_reference(system, sx, sy):
    """The task statistics written out from their definitions, for a linear-output learner."""
    from metalearn import _core

    fast = system.algorithm.adapted_weights(sx, sy, system.inner_steps)
    prev = _core.set_grad_enabled(False)
    try:
        z0 = np.asarray(system.model(sx), np.float64)
        z1 = np.asarray(system._run(fast, sx), np.float64)
    finally:
        _core.set_grad_enabled(prev)

    def ce(z):
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return -np.mean(np.log(p[np.arange(len(sy)), sy])), p

    l0, _ = ce(z0)
    l1, p1 = ce(z1)
    margin = np.mean(
        [z1[i, sy[i]] - max(z1[i, j] for j in range(5) if j != sy[i]) for i in range(len(sy))]
    )
    ent = -np.mean(np.sum(p1 * np.log(p1), 1))
    emb = system.embed(sx).astype(np.float64)
    protos = np.stack([emb[sy == c].mean(0) for c in range(5)])
    scale = np.linalg.norm(emb, axis=1).mean()

    def cos_pairs(a):
        return [
            a[i] @ a[j] / np.linalg.norm(a[i]) / np.linalg.norm(a[j])
            for i in range(5)
            for j in range(5)
            if i != j
        ]

    cc = cos_pairs(protos - system.center)
    cr = cos_pairs(protos)
    d = [
        np.linalg.norm(protos[i] - protos[j]) / scale for i in range(5) for j in range(5) if i != j
    ]
    spread = np.mean([np.linalg.norm(emb[i] - protos[sy[i]]) for i in range(len(sy))]) / scale
    cnorm = np.linalg.norm(emb - system.center, axis=1).mean() / np.linalg.norm(system.center)
    return [
        l0,
        l1,
        l0 - l1,
        np.mean(z1.argmax(1) == sy),
        margin,
        ent,
        np.mean(cc),
        max(cc),
        min(cc),
        np.mean(cr),
        max(cr),
        min(cr),
        np.mean(d),
        min(d),
        spread,
        cnorm,
    ]


def test_task_statistics(trained, data):
    system, _ = trained
    # 2-shot tasks: the within-class spread is not trivially 0
    t = NWayKShot(data, n_way=5, k_shot=2, q_queries=1, augment_rotations=False, seed=8).sample()
    sx, sy = np.asarray(t.support_x, np.float32), np.asarray(t.support_y)
    stats = system.task_statistics(sx, sy)
    assert stats.shape == (len(MetaLearner.STATISTICS),) and np.all(np.isfinite(stats))
    np.testing.assert_allclose(stats, _statistics_reference(system, sx, sy), rtol=1e-4, atol=1e-4)
    assert stats[MetaLearner.STATISTICS.index("within_class_spread")] > 0
    # invariant to the order of the examples; the embedding statistics also to the numbering
    # of the classes (the learner's own ones only roughly: its meta-head is not symmetric)
    p, c = np.random.default_rng(0).permutation(len(sy)), np.array([2, 4, 0, 1, 3])
    np.testing.assert_allclose(system.task_statistics(sx[p], sy[p]), stats, rtol=1e-4, atol=1e-4)
    renumbered = system.task_statistics(sx[p], c[sy[p]])
    np.testing.assert_allclose(renumbered[6:], stats[6:], rtol=1e-4, atol=1e-4)
    # the learner's adapted-head statistics move when its (asymmetric) head rows meet other
    # classes: a few tenths here (0.22 on the margin for one seed), never a blow-up
    assert np.all(np.isfinite(renumbered[:6]))
    np.testing.assert_allclose(renumbered[:6], stats[:6], atol=0.5)
    # 1-shot: no spread; the features end with the statistics
    t1 = sampler(data, seed=9).sample()
    s1 = system.task_statistics(t1.support_x, t1.support_y)
    assert s1[MetaLearner.STATISTICS.index("within_class_spread")] == 0
    # a harder task (its inputs half noise) is seen as harder by the learner itself
    rng = np.random.default_rng(1)
    noisy = np.where(
        rng.random(t1.support_x.shape) < 0.5, rng.random(t1.support_x.shape), t1.support_x
    ).astype(np.float32)
    cos = MetaLearner.STATISTICS.index("prototype_raw_cosine_mean")
    assert system.task_statistics(noisy, t1.support_y)[cos] > s1[cos]


@pytest.mark.parametrize("name", ["fomaml", "reptile", "anil", "metasgd"])
def test_other_algorithms(name, data, tmp_path):
    system = MetaLearner(n_way=5, algorithm=name, hidden_units=16, memory_capacity=16, seed=1)
    system.fit(sampler(data, seed=2), iterations=2, meta_batch_size=2, verbose=0)
    assert system.memory.size == 4
    t = sampler(data, seed=3).sample()
    model, p = system.adapt(t.support_x, t.support_y)
    assert np.asarray(model(t.query_x)).shape == (len(t.query_x), 5) and 0 <= p <= 1
    system.save(tmp_path / name)
    loaded = MetaLearner.load(tmp_path / name)
    assert loaded.algorithm_name == name
    m2, p2 = loaded.adapt(t.support_x, t.support_y)
    assert p2 == p
    np.testing.assert_array_equal(np.asarray(model(t.query_x)), np.asarray(m2(t.query_x)))


def test_algorithm_instance_and_softmax_model(data):
    model = AdaptiveNeuralNetwork(5, hidden_units=16)  # softmax output, as the article
    system = MetaLearner(
        model=model,
        algorithm=MAML(
            model, inner_lr=0.4, first_order=True, loss="sparse_categorical_crossentropy_from_probs"
        ),
    )
    assert system.algorithm_name == "fomaml" and system.n_way == 5
    h = system.fit(sampler(data, seed=4), iterations=2, meta_batch_size=2, verbose=0)
    assert np.all(np.isfinite(h["loss"]))
    with pytest.raises(ValueError):
        MetaLearner(model=AdaptiveNeuralNetwork(5), algorithm=MAML(model))


def test_memory_results_quick(data):
    """benchmarks/memory_results.py --quick runs (the README's numbers come from its full run)."""
    import subprocess
    import sys

    script = str(REPO / "benchmarks" / "memory_results.py")
    out = subprocess.run(
        [sys.executable, script, "--quick"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for needle in (
        "5-way 1-shot by memory lookup",
        "20-way 1-shot",
        "with memory warm start",
        "Spearman",
    ):
        assert needle in out.stdout


def test_to_tensor_shares_float32_arrays_and_converts_the_rest_as_numpy_does():
    """The fast path (a float32 array handed to the core as is) covers float32 arrays of
    rank >= 1 only; everything else converts as np.ascontiguousarray(a, float32) does
    (0-d values become shape (1,), object arrays of numbers convert)."""
    from metalearn.meta._base import to_tensor

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.shares_memory(np.asarray(to_tensor(a)), a)
    np.testing.assert_array_equal(np.asarray(to_tensor(a.T)), a.T)
    assert to_tensor(np.float32(2.0)).shape == (1,)
    assert to_tensor(np.zeros((), np.float32)).shape == (1,)
    assert to_tensor(1.5).shape == (1,)
    np.testing.assert_array_equal(np.asarray(to_tensor(np.array([1, 2], dtype=object))), [1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(to_tensor(np.arange(3))), [0.0, 1.0, 2.0])
