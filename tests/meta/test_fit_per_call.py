"""What ``fit`` does around each meta-step. A fit of one iteration is what a user's own
loop (and the MAML sinusoid benchmark row) calls again and again, so the work ``fit`` does
per batch beyond the step must stay small; these count that work instead of timing it."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.meta import MAML, _base, models
from metalearn.tasks import Sinusoid


def _maml():
    ml.random.set_seed(0)
    return MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1)


def test_example_shapes_are_checked_once_per_shape(monkeypatch):
    maml, tasks = _maml(), Sinusoid(k_shot=10, q_queries=10, seed=0)
    maml.fit(tasks, iterations=1, meta_batch_size=4, verbose=0)
    calls = []
    real = _base._input_shape
    monkeypatch.setattr(_base, "_input_shape", lambda m: calls.append(m) or real(m))
    for _ in range(3):
        maml.fit(tasks, iterations=2, meta_batch_size=4, verbose=0)
    assert calls == []  # the shapes it passed before, for this model: not worked out again
    # another shape is checked again, and refused, the weights unchanged
    before = [np.array(w) for w in maml.model.weights]
    wide = tasks.sample_batch(4)
    wide = type(wide)(
        np.concatenate([wide.support_x, wide.support_x], -1),
        wide.support_y,
        np.concatenate([wide.query_x, wide.query_x], -1),
        wide.query_y,
        info=wide.info,
    )
    with pytest.raises(ValueError, match=r"support_x examples have shape \(2,\)"):
        maml.fit(wide, iterations=1, verbose=0)
    assert len(calls) == 1
    for b, w in zip(before, maml.model.weights):
        np.testing.assert_array_equal(b, np.array(w))


def test_a_new_model_is_checked_again():
    # the shapes remembered are the model's: a learner given another model checks anew
    maml, tasks = _maml(), Sinusoid(k_shot=10, q_queries=10, seed=0)
    maml.fit(tasks, iterations=1, meta_batch_size=4, verbose=0)
    other = MAML(
        ml.keras.models.Sequential(
            [ml.keras.layers.Input((2,)), ml.keras.layers.Dense(4), ml.keras.layers.Dense(1)]
        )
    )
    other._checked_example_shape = maml._checked_example_shape  # the first model's key
    with pytest.raises(ValueError, match=r"but the model takes inputs of shape \(2,\)"):
        other.fit(tasks, iterations=1, meta_batch_size=4, verbose=0)
