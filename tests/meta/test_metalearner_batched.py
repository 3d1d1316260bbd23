"""MetaLearner.fit computes a meta-batch's predictor records at once (the network passes of
every task through the model's batched form): the same features and accuracy curves as
the per-task functional calls, and the same training run."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.meta.system import MetaLearner
from metalearn.tasks import NWayKShot


def _tasks(seed=0, q=4):
    # 20 classes of 12x12 "images": a class pattern plus noise (runs without Omniglot)
    rng = np.random.default_rng(7)
    protos = rng.random((20, 12, 12, 1)).astype(np.float32)
    y = np.repeat(np.arange(20), 6)
    x = protos[y] + 0.3 * rng.standard_normal((len(y), 12, 12, 1)).astype(np.float32)
    return NWayKShot((x, y), n_way=5, k_shot=1, q_queries=q, seed=seed)


def _system(algorithm, query_features=False, inner_steps=2):
    ml.random.set_seed(3)
    return MetaLearner(
        n_way=5,
        algorithm=algorithm,
        hidden_units=32,
        inner_steps=inner_steps,
        auto_max_steps=3,
        query_features=query_features,
        memory_capacity=50,
        seed=0,
    )


@pytest.mark.parametrize(
    "algorithm, query_features, inner_steps",
    [
        ("maml", False, 2),
        ("maml", True, 1),
        ("fomaml", False, 4),
        ("metasgd", True, 2),
        ("maml", False, 0),
    ],
)
def test_batched_records_equal_the_per_task_records(algorithm, query_features, inner_steps):
    tasks = _tasks()
    system = _system(algorithm, query_features, inner_steps)
    system.fit(tasks, iterations=3, meta_batch_size=4, verbose=0)
    assert system.memory.size == 12  # recall features read a filled memory
    plan = system._record_plan()
    assert plan is not None
    # MAML's curves carry the first kernel as shared weights plus low-rank updates; Meta-
    # SGD's learned rates keep per-task copies: both ways are checked here
    low_rank = system.algorithm._low_rank_kernels(plan, 5, max(3, inner_steps))
    assert bool(low_rank) == (algorithm != "metasgd")
    batch = tasks.sample_batch(4)
    singles = batch.tasks()
    supports = [system._check_support(t.support_x, t.support_y) for t in singles]
    outputs = system._batched_outputs(plan, supports, [t.query_x for t in singles], True)
    feats, accs = system._block_records(list(zip(supports, singles)), outputs)
    n_feats = system.feature_size - 1
    for j, ((sx, sy), t) in enumerate(zip(supports, singles)):
        f_b, acc_b = system._with_recall(feats[j], outputs["embedding"][j]), accs[j]
        f, labels, acc, _ = system._task_record(sx, sy, t.query_x, t.query_y)
        assert f_b.shape == f.shape == (n_feats,)
        np.testing.assert_allclose(f_b, f, rtol=2e-4, atol=2e-5)
        assert acc_b.shape == acc.shape == (max(3, inner_steps),)
        np.testing.assert_allclose(acc_b, acc, atol=1.0 / len(t.query_y) + 1e-6)
        assert np.mean(acc_b == acc) >= 2 / 3  # a tie broken the other way at most


def test_a_block_whose_tasks_order_their_labels_apart_takes_each_task_alone(monkeypatch):
    system = _system("maml", query_features=True)
    tasks = _tasks()
    system.fit(tasks, iterations=2, meta_batch_size=3, verbose=0)
    singles = tasks.sample_batch(3).tasks()
    supports = [system._check_support(t.support_x, t.support_y) for t in singles]
    order = np.array([4, 2, 0, 1, 3])  # the second task's support in another order
    supports[1] = (supports[1][0][order], supports[1][1][order])
    outputs = system._batched_outputs(
        system._record_plan(), supports, [t.query_x for t in singles], True
    )
    calls = []
    records = MetaLearner._records
    monkeypatch.setattr(
        MetaLearner, "_records", lambda self, sy, *a: calls.append(sy) or records(self, sy, *a)
    )
    feats, accs = system._block_records(list(zip(supports, singles)), outputs)
    assert [list(sy) for sy in calls] == [list(sy) for _, sy in supports]  # one call a task
    for j, ((sx, sy), t) in enumerate(zip(supports, singles)):
        f, _, acc, _ = system._task_record(sx, sy, t.query_x, t.query_y)
        f_b = system._with_recall(feats[j], outputs["embedding"][j])
        np.testing.assert_allclose(f_b, f, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(accs[j], acc, atol=1.0 / len(t.query_y) + 1e-6)


def test_batched_fit_follows_the_per_task_fit(monkeypatch):
    batched = _system("maml")
    hb = batched.fit(_tasks(seed=1), iterations=4, meta_batch_size=3, verbose=0)
    looped = _system("maml")
    monkeypatch.setattr(MetaLearner, "_record_plan", lambda self: None)
    hl = looped.fit(_tasks(seed=1), iterations=4, meta_batch_size=3, verbose=0)
    np.testing.assert_allclose(hb["loss"], hl["loss"], rtol=1e-5)
    np.testing.assert_allclose(hb["task_accuracy"], hl["task_accuracy"], atol=0.1)
    np.testing.assert_allclose(
        np.stack(batched._buffer_x), np.stack(looped._buffer_x), rtol=2e-4, atol=2e-5
    )
    np.testing.assert_allclose(hb["predictor_loss"], hl["predictor_loss"], rtol=1e-3, atol=1e-5)
    assert batched.memory.size == looped.memory.size == 12


def test_no_batched_records_where_the_inner_loop_is_its_own():
    for name in ("anil", "reptile"):
        system = _system(name)
        system.fit(_tasks(), iterations=1, meta_batch_size=2, verbose=0)
        if name == "anil":  # its inner loop runs the head on features computed once
            assert system._record_plan() is None
    reptile = MetaLearner(
        n_way=5,
        algorithm=ml.meta.Reptile(
            ml.networks.AdaptiveNeuralNetwork(5, 32, output_activation="linear"),
            inner_batch_size=2,
        ),
    )
    reptile.fit(_tasks(), iterations=1, meta_batch_size=2, verbose=0)
    assert reptile._record_plan() is None  # mini-batches: one task at a time


def test_augment_permutes_examples_and_renumbers_classes():
    system = _system("maml")
    system.fit(_tasks(), iterations=1, meta_batch_size=2, verbose=0)
    n, w = system.support_size, system.n_way
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, n * n + 7)).astype(np.float32)
    labels = rng.random((6, n * w)).astype(np.float32)
    ref = np.random.default_rng()
    ref.bit_generator.state = system._rng.bit_generator.state
    f, lab = system._augment(feats, labels)
    for i in range(6):  # one example order and one class numbering per row, drawn in turn
        p, c = ref.permutation(n), ref.permutation(w)
        gram = feats[i, : n * n].reshape(n, n)
        np.testing.assert_array_equal(f[i, : n * n].reshape(n, n), gram[np.ix_(p, p)])
        np.testing.assert_array_equal(lab[i].reshape(n, w), labels[i].reshape(n, w)[p][:, c])
        np.testing.assert_array_equal(f[i, n * n :], feats[i, n * n :])


def test_head_knowledge_of_a_block_is_each_tasks_gradient_descent():
    system = _system("maml")
    system.fit(_tasks(), iterations=1, meta_batch_size=2, verbose=0)
    batch = _tasks(seed=5).sample_batch(3)
    x = np.concatenate([batch.support_x, batch.query_x], 1)
    y = np.concatenate([batch.support_y, batch.query_y], 1).astype(np.int64)
    deltas = system._head_knowledge(x, y)
    kernel0, bias0 = (np.asarray(v, np.float64) for v in system._head_values())
    lr = system.algorithm.inner_lr
    for i, (dk, db) in enumerate(deltas):
        # plain gradient descent on the mean cross-entropy of the head's logits
        h = system._body_features(x[i])
        k, b = kernel0.copy(), bias0.copy()
        for _ in range(system.knowledge_steps):
            z = h @ k + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y[i])), y[i]] -= 1.0
            k, b = k - lr * h.T @ p / len(y[i]), b - lr * p.mean(0)
        np.testing.assert_allclose(dk, k - kernel0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(db, b - bias0, rtol=1e-5, atol=1e-6)
        assert np.abs(dk).max() > 1e-3  # it moved
