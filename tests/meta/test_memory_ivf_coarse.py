"""The IVF index's coarse step (issue 26): with many lists and few probed, an exact integer
pass over int8 copies of the centroids and of the query, with a proven bound, leaves a few
candidates that are scored in float32 (memory.c, coarse_probe). The lists it probes must be
the top-nprobe of the float32 lane sums of the query with every centroid (score down, list
up), whatever the thread count; the references here are NumPy's."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.memory import KnowledgeMemory
from tests.meta.test_memory_ivf import mixture
from tests.meta.test_memory_search import lane_dot, normalized, ref_topk


@pytest.fixture
def threads():
    before = ml.get_num_threads()
    yield
    ml.set_num_threads(before)


def int8_ranking(qn, centroids, p):
    """The top-p centroids by the int8 pass alone (each row scaled by max|x| / 127, rounded):
    what a coarse step without the float32 recheck would probe."""

    def quant(x):
        sc = np.abs(x).max(-1, keepdims=True) / 127
        return np.clip(np.rint(x / sc), -127, 127), sc

    c8, cs = quant(centroids.astype(np.float64))
    q8, qs = quant(qn.astype(np.float64))
    a = (c8 @ q8) * cs[:, 0] * qs[0]
    return set(np.lexsort((np.arange(len(a)), -a))[:p])


def expected(mem, ix, qn, p, k=8):
    keys, lists = mem.state()[0], ix.lists
    s = lane_dot(qn, ix.centroids)
    probe = np.lexsort((np.arange(len(s)), -s))[:p]
    scores = lane_dot(qn, keys)
    want = ref_topk(scores[None], k, np.isin(lists, probe))[0]
    n = len(want)
    return probe, np.r_[want, [-1] * (k - n)], np.r_[scores[want], [-np.inf] * (k - n)]


def test_prefiltered_coarse_step_probes_the_float32_top_lists(threads):
    # 1,000 lists over 6 tight clusters: ~170 centroids per cluster, their scores with a
    # query within the int8 copies' rounding of each other. d = 264: float32 centroids over
    # 1 MiB (the prefilter's rule) and a tail past the int8 kernel's 32-wide chunks.
    x, which, _ = mixture(12000, 264, 6, seed=31, spread=0.05)
    mem = KnowledgeMemory.from_arrays(x, which)
    ix = mem.build_index(nlist=1000, nprobe=1, seed=2, n_iter=2)
    rng = np.random.default_rng(8)
    q = x[rng.integers(0, 12000, 16)] + 0.01 * rng.standard_normal((16, 264)).astype(np.float32)
    qn = normalized(q)
    differs = 0
    # 1, 3, 16, 125 of 1,000: the prefilter (8 * nprobe <= nlist); 126: every centroid scored
    for p in (1, 3, 16, 125, 126):
        runs = []
        for t in (1, 2, 3):
            ml.set_num_threads(t)
            runs.append(mem.query(q, 8, nprobe=p)[:2])
            single = [mem.query(q[i], 8, nprobe=p)[:2] for i in range(len(q))]
            for i, (a, b) in enumerate(single):
                np.testing.assert_array_equal(a[0], runs[-1][0][i])
                np.testing.assert_array_equal(b[0], runs[-1][1][i])
        for r in runs[1:]:
            np.testing.assert_array_equal(r[0], runs[0][0])
            np.testing.assert_array_equal(r[1], runs[0][1])
        for i in range(len(q)):
            probe, want_i, want_s = expected(mem, ix, qn[i], p)
            differs += set(probe) != int8_ranking(qn[i], ix.centroids, p)
            np.testing.assert_array_equal(runs[0][0][i], want_i)
            np.testing.assert_array_equal(runs[0][1][i], want_s)
    # the int8 pass alone picks other lists on this data: the float32 recheck is needed
    assert differs > 0


def test_prefiltered_coarse_step_with_every_centroid_tied():
    """A zero query scores 0 with every centroid: the probed lists are the lowest ones."""
    x, which, _ = mixture(4000, 264, 4, seed=3, spread=0.3)
    mem = KnowledgeMemory.from_arrays(x, which)
    ix = mem.build_index(nlist=1000, nprobe=1, seed=1, n_iter=1)
    z = np.zeros((1, 264), np.float32)
    for p in (1, 5, 32):
        probe, want_i, want_s = expected(mem, ix, z[0], p)
        np.testing.assert_array_equal(probe, np.arange(p))
        got = mem.query(z, 8, nprobe=p)
        np.testing.assert_array_equal(got[0][0], want_i)
        np.testing.assert_array_equal(got[1][0], want_s)


def test_writes_go_to_the_float32_nearest_list():
    """update (one key at a time) and add (a GEMM with a near-tie recheck) put each written
    slot in the list of its key's nearest centroid by the float32 lane sums (ties to the
    lower list), the prefilter's coarse step deciding."""
    x, which, _ = mixture(12000, 264, 5, seed=13, spread=0.05)
    mem = KnowledgeMemory.from_arrays(x[:10000], which[:10000], capacity=12500)
    ix = mem.build_index(nlist=1000, nprobe=2, seed=3, n_iter=1)
    up = mem.update(x[10000:11000], which[10000:11000])
    added = mem.add(x[11000:], which[11000:])
    keys, lists = mem.state()[0], mem.index.lists
    for slots in (np.unique(up), added):
        want = np.array([int(np.argmax(lane_dot(keys[j], ix.centroids))) for j in slots])
        np.testing.assert_array_equal(lists[slots], want)
