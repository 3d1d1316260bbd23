"""``add`` on an IVF index assigns its keys' lists by a GEMM with a near-tie recheck (issue
26, update throughput): every added slot lands in the list whose centroid scores highest
by the key scan's lane sum (reproduced bit for bit in NumPy, ties to the lower list), as
when keys were assigned one at a time, including keys placed on near ties between two
centroids (where the GEMM's rounding may pick the other one), at 1, 2 and 3 threads."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.memory import KnowledgeMemory
from tests.meta.test_memory_ivf import mixture, nearest_list_ref


@pytest.fixture
def threads():
    before = ml.get_num_threads()
    yield
    ml.set_num_threads(before)


def tie_keys(centroids, n, rng):
    """Unit keys halfway between two centroids: their two best scores differ by rounding."""
    a = rng.integers(0, len(centroids), n)
    b = (a + 1 + rng.integers(0, len(centroids) - 1, n)) % len(centroids)
    x = centroids[a].astype(np.float64) + centroids[b]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_add_on_an_index_assigns_the_lists_of_the_key_scan(threads):
    d = 48
    x, _, _ = mixture(3000, d, 40, seed=2)
    rng = np.random.default_rng(3)
    results = []
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        mem = KnowledgeMemory(4000, d, seed=1)
        mem.add(x, rng.integers(0, 50, len(x)) * 0)
        ix = mem.build_index(40, nprobe=2, seed=5)
        cents = ix.centroids
        ties = tie_keys(cents, 300, np.random.default_rng(4))
        fresh = mixture(600, d, 40, seed=9)[0]
        keys = np.concatenate([ties, fresh, cents[:7], np.zeros((1, d), np.float32)])
        keys = keys[np.random.default_rng(6).permutation(len(keys))]
        slots = mem.add(keys, np.arange(len(keys)))
        lists = mem.index.lists
        stored = mem.state()[0]
        want = nearest_list_ref(stored[slots], cents)
        np.testing.assert_array_equal(lists[slots], want)
        results.append(lists.copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    # not vacuous: many added keys sit closer to their second centroid than the GEMM's
    # rounding bound, so the recheck decides them
    s = np.sort(stored[slots].astype(np.float64) @ cents.T.astype(np.float64), axis=1)
    assert np.sum(s[:, -1] - s[:, -2] < 4.4 * d * 2.0**-24) >= 100
