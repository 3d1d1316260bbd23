"""tasks.Regression: task samplers over a user's functions and time series (issue 27)."""

import numpy as np
import pytest

from metalearn.meta import MAML
from metalearn.tasks import Regression
from tests.helpers import sinusoid_model


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """Models built here draw from (or reseed) the global generator: its state is put
    back, so the tests that follow draw what they would have alone."""
    from metalearn import _core

    state = _core.rng_state()
    yield
    _core.rng_set_state(state)


def test_functions_give_their_values_on_fresh_points():
    fs = [lambda x: 2 * x[:, 0], lambda x: x[:, 0] ** 2]
    sampler = Regression(fs, k_shot=5, q_queries=7, x_range=(-1, 3), seed=0)
    for _ in range(6):
        t = sampler.sample()
        assert t.support_x.shape == (5, 1) and t.query_y.shape == (7, 1)
        f = fs[t.info["function"]]
        np.testing.assert_allclose(t.support_y[:, 0], f(t.support_x), rtol=1e-6)
        np.testing.assert_allclose(t.query_y[:, 0], f(t.query_x), rtol=1e-6)
        assert t.support_x.min() >= -1 and t.support_x.max() <= 3
        assert not np.intersect1d(t.support_x, t.query_x).size  # different points
    again = Regression(fs, k_shot=5, q_queries=7, x_range=(-1, 3), seed=0).sample_batch(3)
    first = Regression(fs, k_shot=5, q_queries=7, x_range=(-1, 3), seed=0).sample_batch(3)
    np.testing.assert_array_equal(again.support_x, first.support_x)
    assert again.support_x.shape == (3, 5, 1)


def test_family_and_vector_outputs_and_meta_training():
    def family(rng):
        a, b = rng.normal(size=2)
        return lambda x: a * x[:, 0] + b * x[:, 1]

    sampler = Regression(family=family, k_shot=4, q_queries=4, input_dim=2, seed=1)
    t = sampler.sample()
    assert t.support_x.shape == (4, 2) and t.support_y.shape == (4, 1)
    # a task's points lie on one plane: solving for (a, b) on the support fits the query
    coef, *_ = np.linalg.lstsq(t.support_x, t.support_y[:, 0], rcond=None)
    np.testing.assert_allclose(t.query_x @ coef, t.query_y[:, 0], rtol=1e-4, atol=1e-5)
    two = Regression([lambda x: np.stack([x[:, 0], -x[:, 0]], 1)], k_shot=3, q_queries=2, seed=0)
    assert two.sample().support_y.shape == (3, 2)
    # MAML trains on it
    sines = Regression(
        family=lambda r: lambda x, p=r.uniform(0, 3): np.sin(x[:, 0] - p),
        k_shot=10,
        q_queries=10,
        seed=0,
    )
    h = MAML(sinusoid_model(0)).fit(sines, iterations=5, meta_batch_size=4, verbose=0)
    assert len(h["loss"]) == 5 and np.all(np.isfinite(h["loss"]))


def test_series_windows_predict_the_future():
    s = np.arange(100, dtype=np.float32)  # value = time step: windows are checkable
    sampler = Regression(series=[s, s + 1000], k_shot=3, q_queries=2, window=4, horizon=2, seed=0)
    for _ in range(5):
        t = sampler.sample()
        base = (1000 if t.info["series"] == 1 else 0) + t.info["start"]
        assert t.support_x.shape == (3, 4) and t.support_y.shape == (3, 2)
        for i in range(3):  # consecutive windows, target = the next `horizon` values
            np.testing.assert_array_equal(t.support_x[i], base + i + np.arange(4))
            np.testing.assert_array_equal(t.support_y[i], base + i + 4 + np.arange(2))
        # the query starts after a gap of horizon - 1 = 1 window: its targets are all after
        # the support's last target
        np.testing.assert_array_equal(t.query_x[0], base + 4 + np.arange(4))
        assert t.query_y.min() > t.support_y.max()
    multi = Regression(series=[np.ones((50, 3))], k_shot=2, q_queries=1, window=5, seed=0)
    assert multi.sample().support_x.shape == (2, 15)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="exactly one of functions, family or series"):
        Regression()
    with pytest.raises(ValueError, match="exactly one"):
        Regression([np.sin], series=[np.zeros(50)], window=2)
    with pytest.raises(ValueError, match="series 1 has 8 steps.*needs 9"):
        Regression(series=[np.zeros(50), np.zeros(8)], k_shot=3, q_queries=3, window=3)
    with pytest.raises(ValueError, match="window >= 1"):
        Regression(series=[np.zeros(50)])
    with pytest.raises(ValueError, match="NaN"):
        Regression(series=[np.full(50, np.nan)], window=2)
    with pytest.raises(ValueError, match="callables"):
        Regression([1, 2])
    bad = Regression([lambda x: np.zeros(3)], k_shot=4, q_queries=4, seed=0)
    with pytest.raises(ValueError, match="one value .* per row"):
        bad.sample()
