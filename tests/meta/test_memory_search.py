"""The knowledge memory's exact search paths (issue 26) against NumPy:

* the key scan (batches of up to 8 queries, csrc/kernels/topk.c): each similarity is the
  documented sum by 16 lanes (position i into lane i mod 16, in order, then the fixed tree
  ((l + l+8) + (l+4)) ...), reproduced here in float32 bit for bit; the top-k is NumPy's
  on float64 scores with ties broken by the lower slot first;
* the GEMM path (larger batches) equals the float64 top-k;
* every path gives the same bits at 1, 2 and 3 threads, for memories spanning many scan
  tasks (4096 slots each).
"""

import numpy as np
import pytest

import metalearn as ml
from metalearn.memory import KnowledgeMemory

LANES = 16


def lane_dot(q, k):
    """float32 dot products of q (d,) with rows k (m, d), summed as the scan kernel does."""
    q, k = q.astype(np.float32), k.astype(np.float32)
    m, d = k.shape
    acc = np.zeros((m, LANES), np.float32)
    for i in range(d):
        acc[:, i % LANES] += q[i] * k[:, i]
    b = acc[:, :8] + acc[:, 8:]
    c = b[:, :4] + b[:, 4:]
    return (c[:, 0] + c[:, 2]) + (c[:, 1] + c[:, 3])


def ref_topk(scores, k, alive=None):
    """Top-k indices of each row of scores: higher first, equal scores by lower slot."""
    out = []
    for row in scores:
        slots = np.arange(row.size) if alive is None else np.flatnonzero(alive)
        order = np.lexsort((slots, -row[slots]))[:k]
        out.append(slots[order])
    return np.array(out)


def filled(m, d, seed=0, dup_every=0):
    """A memory holding m keys written with distinct labels (each update writes a new slot);
    with dup_every, slot j repeats slot j - dup_every's key (exact ties)."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    if dup_every:
        for j in range(dup_every, m, dup_every):
            keys[j] = keys[j - dup_every]
    mem = KnowledgeMemory(m, d, seed=0)
    for s in range(0, m, 4096):
        mem.update(keys[s : s + 4096], np.arange(s, min(s + 4096, m)))
    assert len(mem) == m
    return mem, mem.state()[0]


def normalized(q):
    """q / sqrt(|q|^2 + eps) as memory.c computes it: the norm in float64, then a float32
    reciprocal multiplied in."""
    q = q.astype(np.float32)
    ss = (q.astype(np.float64) ** 2).sum(1, keepdims=True) + float(np.float32(1e-12))
    return q * (1.0 / np.sqrt(ss)).astype(np.float32)


@pytest.fixture
def threads():
    before = ml.get_num_threads()
    yield
    ml.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_scan_equals_the_lane_sum_and_numpy_topk(n, threads):
    m, d, k = 9000, 40, 8  # three scan tasks, d not a multiple of 16 (the lanes' tail)
    mem, K = filled(m, d, seed=n)
    q = np.random.default_rng(100 + n).standard_normal((n, d)).astype(np.float32)
    qn = normalized(q)
    want_sim = np.stack([lane_dot(qn[i], K[:m]) for i in range(n)])
    want_idx = ref_topk(want_sim.astype(np.float64), k)
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        idx, sim, lab, _ = mem.query(q, k)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(
            sim.view(np.uint32), np.take_along_axis(want_sim, idx, 1).view(np.uint32)
        )
        np.testing.assert_array_equal(lab, idx)  # labels were the slots
        # the float64 truth: the same neighbours (these seeds have no near-ties)
        s64 = qn.astype(np.float64) @ K[:m].astype(np.float64).T
        np.testing.assert_array_equal(idx, ref_topk(s64, k))


@pytest.mark.parametrize("n", [1, 3, 8, 9, 40])
def test_ties_lower_slot_first_at_every_thread_count(n, threads):
    """Slot j repeats the key of slot j - 3000: every score comes in exact ties, across scan
    tasks; the lower slot is listed first and a tie at the k-th place keeps the lower."""
    m, d, k = 12000, 32, 7
    mem, K = filled(m, d, seed=1, dup_every=3000)
    q = np.random.default_rng(7).standard_normal((n, d)).astype(np.float32)
    s64 = normalized(q).astype(np.float64) @ K[:m].astype(np.float64).T
    want = ref_topk(s64, k)
    results = []
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        idx, sim, _, _ = mem.query(q, k)
        np.testing.assert_array_equal(idx, want)
        assert (sim[:, 1:] <= sim[:, :-1]).all()
        results.append((idx, sim.view(np.uint32).copy()))
    for idx, bits in results[1:]:
        np.testing.assert_array_equal(idx, results[0][0])
        np.testing.assert_array_equal(bits, results[0][1])


def test_gemm_path_equals_numpy_and_is_thread_independent(threads):
    m, d, k = 10000, 64, 8
    mem, K = filled(m, d, seed=3)
    q = np.random.default_rng(9).standard_normal((33, d)).astype(np.float32)
    s64 = normalized(q).astype(np.float64) @ K[:m].astype(np.float64).T
    want = ref_topk(s64, k)
    bits = None
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        idx, sim, _, _ = mem.query(q, k)
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_allclose(sim, np.take_along_axis(s64, want, 1), atol=1e-5)
        bits = sim.view(np.uint32).copy() if bits is None else bits
        np.testing.assert_array_equal(sim.view(np.uint32), bits)


def test_update_through_the_scan_is_thread_independent(threads):
    """The update rule searches chunks of <= 8 queries by the scan: the whole state after
    a run of updates is the same bits at 1, 2 and 3 threads."""
    rng = np.random.default_rng(11)
    d = 24
    q = rng.standard_normal((9000, d)).astype(np.float32)
    y = rng.integers(0, 50, 9000)
    states = []
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        mem = KnowledgeMemory(6000, d, seed=5)
        mem.update(q[:5000], y[:5000])
        for s in range(5000, 9000, 5):  # batches of 5: the scan path
            mem.update(q[s : s + 5], y[s : s + 5])
        states.append(mem.state())
    for st in states[1:]:
        for a, b in zip(st, states[0]):
            np.testing.assert_array_equal(a, b)
