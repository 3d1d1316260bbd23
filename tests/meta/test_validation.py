"""Validation and model selection in fit (validation=, validate_every=, keep_best=): the
scores are evaluate's on the weights of that iteration, validating does not change the
training, and keep_best ends with the weights of the best score."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import layers
from metalearn.meta import MAML, ProtoNet
from metalearn.tasks import EpisodeSet, NWayKShot, Sinusoid
from tests.helpers import sinusoid_model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10 * 6, 5, 5, 1)).astype(np.float32)
    x += np.repeat(rng.normal(size=(10, 1, 5, 5, 1)), 6, axis=0).reshape(x.shape) * 0.7
    return x, np.repeat(np.arange(10), 6)


def _protonet():
    ml.random.set_seed(2)
    enc = ml.keras.models.Sequential([layers.Flatten(input_shape=(5, 5, 1)), layers.Dense(6)])
    return ProtoNet(enc, meta_lr=0.2)  # large steps: the validation score goes up and down


def _weights(learner):
    return [np.asarray(w).copy() for w in learner.model.weights]


def test_validation_scores_are_evaluate_s_and_keep_best_restores_the_best():
    data = _data()
    val_set = EpisodeSet.draw(NWayKShot(data, n_way=3, k_shot=1, q_queries=2), 8, seed=4)
    # reference: the same training in blocks of 3 iterations, evaluated after each block
    ref = _protonet()
    tasks = NWayKShot(data, n_way=3, k_shot=1, q_queries=2, seed=1)
    scores, snapshots = [], []
    for _ in range(6):
        ref.fit(tasks, iterations=3, meta_batch_size=2, verbose=0)
        scores.append(ref.evaluate(val_set)["accuracy"])
        snapshots.append(_weights(ref))
    best = int(np.argmax(scores))  # the first of equal bests, as keep_best keeps it
    assert best != len(scores) - 1, "the scenario must have its best before the end"

    learner = _protonet()
    tasks = NWayKShot(data, n_way=3, k_shot=1, q_queries=2, seed=1)
    h = learner.fit(
        tasks, iterations=18, meta_batch_size=2, verbose=0, validation=val_set, validate_every=3
    )
    assert h["val_iteration"] == [3, 6, 9, 12, 15, 18]
    assert h["val_accuracy"] == scores and len(h["val_loss"]) == 6
    assert all(np.array_equal(a, b) for a, b in zip(_weights(learner), snapshots[-1]))

    learner = _protonet()
    tasks = NWayKShot(data, n_way=3, k_shot=1, q_queries=2, seed=1)
    h = learner.fit(
        tasks,
        iterations=18,
        meta_batch_size=2,
        verbose=0,
        validation=val_set,
        validate_every=3,
        keep_best=True,
    )
    assert h["val_accuracy"] == scores
    assert learner.best_validation == {"iteration": 3 * (best + 1), "val_accuracy": scores[best]}
    assert all(np.array_equal(a, b) for a, b in zip(_weights(learner), snapshots[best]))


def test_keep_best_for_regression_keeps_the_lowest_mse():
    ml.random.set_seed(0)
    learner = MAML(sinusoid_model(0), inner_lr=0.01, meta_lr=0.05)
    h = learner.fit(
        Sinusoid(seed=0),
        iterations=12,
        meta_batch_size=2,
        verbose=0,
        validation=Sinusoid(seed=1),
        validate_every=2,
        validation_episodes=4,
        keep_best=True,
    )
    i = int(np.argmin(h["val_mse"]))
    assert learner.best_validation["iteration"] == h["val_iteration"][i]
    assert learner.best_validation["val_mse"] == min(h["val_mse"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(keep_best=True), "keep_best"),
        (dict(validate_every=2), "validation"),
        (dict(validation="V", validate_every=0), "validate_every"),
        (dict(validation="V", validation_episodes=-1), "validation_episodes"),
    ],
)
def test_bad_validation_arguments_are_refused_before_training(kwargs, match):
    ml.random.set_seed(0)
    learner = MAML(sinusoid_model(0))
    learner.model(np.zeros((1, 1), np.float32))
    before = _weights(learner)
    if kwargs.get("validation") == "V":
        kwargs["validation"] = Sinusoid(seed=1)
    with pytest.raises(ValueError, match=match):
        learner.fit(Sinusoid(seed=0), iterations=4, meta_batch_size=2, verbose=0, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(learner), before))
    assert learner.meta_optimizer.iterations == 0
