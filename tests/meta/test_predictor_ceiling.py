"""benchmarks/predictor.py's ceiling (issue 25): the share of the held-out accuracies'
spread that belongs to the tasks rather than to the draw of their queries, and the
correlation it leaves to any predictor blind to the query set. Checked on simulated tasks
whose expected accuracies are known, so the oracle that knows them gives the reference."""

import os
import sys

import numpy as np
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from predictor import query_correct, reliability  # noqa: E402
from metalearn.tasks.base import Task  # noqa: E402


def _simulated(n=20000, c=5, q=15, seed=0):
    """Tasks of C classes with q queries each: a task's expected accuracy T, each class's
    own around it, and 0/1 correctness drawn from the class's."""
    rng = np.random.default_rng(seed)
    t = rng.beta(40, 20, n)
    p = np.clip(t[:, None] + rng.normal(0.0, 0.1, (n, c)), 0.0, 1.0)
    z = (rng.random((n, c, q)) < p[..., None]).astype(np.float64)
    return z, p.mean(1)


def test_the_ceiling_is_the_oracle_correlation():
    z, expected = _simulated()
    acc = z.mean((1, 2))
    rel = reliability(z, splits=20, boot=200)
    # the predictor that knows each task's expected accuracy reaches the bound exactly
    # (in expectation); no estimate of ours enters this reference
    oracle = np.corrcoef(expected, acc)[0, 1]
    assert rel["ceiling"] == pytest.approx(oracle, abs=0.008)
    assert rel["reliability"] == pytest.approx(expected.var() / acc.var(), abs=0.012)
    lo, hi = rel["interval"]
    assert lo < rel["ceiling"] < hi and hi - lo < 0.03
    # the second estimator (split halves, Spearman-Brown) agrees
    assert rel["split_half"] == pytest.approx(rel["reliability"], abs=0.02)
    # a predictor with a noisy view of the expected accuracy stays under the ceiling
    noisy = expected + np.random.default_rng(1).normal(0.0, 0.05, len(expected))
    assert np.corrcoef(noisy, acc)[0, 1] < rel["ceiling"]


def test_pure_draw_noise_has_no_ceiling_and_no_noise_has_one():
    rng = np.random.default_rng(2)
    # every task alike: the whole spread is the draw's
    z = (rng.random((5000, 5, 15)) < 0.6).astype(np.float64)
    assert reliability(z, splits=10, boot=50)["ceiling"] < 0.1
    # classes always right or always wrong: nothing is left to the draw
    right = rng.random((500, 5, 1)) < 0.6
    z = np.repeat(right, 15, axis=2).astype(np.float64)
    rel = reliability(z, splits=10, boot=50)
    assert rel["reliability"] == pytest.approx(1.0) and rel["ceiling"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(10, 5), (2, 5, 15), (10, 5, 1)])
def test_reliability_refuses_what_it_cannot_split(shape):
    with pytest.raises(ValueError, match="reliability: need"):
        reliability(np.zeros(shape))


class _Fixed:
    """A stand-in system whose adapted model gives fixed query outputs."""

    def __init__(self, outputs):
        self.outputs = outputs

    def _query_outputs(self, task, steps=None, warm_start=True):
        assert steps == 1 and warm_start is False
        return self.outputs


def test_query_correct_groups_the_queries_by_class():
    # queries interleaved 0, 1, 0, 1, 0, 1; the model says class 0 for all but the last
    y = np.array([0, 1, 0, 1, 0, 1])
    out = np.zeros((6, 2), np.float32)
    out[:, 0] = 1.0
    out[5] = [0.0, 1.0]
    t = Task(np.zeros((2, 3)), np.array([0, 1]), np.zeros((6, 3)), y)
    got = query_correct(_Fixed(out), [t])
    assert got.shape == (1, 2, 3)
    np.testing.assert_array_equal(got[0], [[1, 1, 1], [0, 0, 1]])


def test_query_correct_refuses_unequal_classes():
    t = Task(np.zeros((2, 3)), np.array([0, 1]), np.zeros((3, 3)), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match=r"classes hold \[2, 1\] queries"):
        query_correct(_Fixed(np.zeros((3, 2))), [t])
