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


@pytest.mark.parametrize("d", [40, 128])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_scan_equals_the_lane_sum_and_numpy_topk(n, d, threads):
    # three scan tasks; d = 40 leaves a tail past the 16 lanes (summed through memory by the
    # AVX2 scan), d = 128 none (the lane tree summed in registers)
    m, k = 9000, 8
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


# ------------------------------------------------------------- ids and deletion


def test_update_returns_the_slots_written():
    rng = np.random.default_rng(20)
    d = 6
    mem = KnowledgeMemory(4, d, seed=0)
    e = np.eye(d, dtype=np.float32)
    np.testing.assert_array_equal(mem.update(e[:3], [0, 1, 2]), [0, 1, 2])
    # a merge (nearest key has the label) returns the merged slot; a new label the next empty
    np.testing.assert_array_equal(mem.update(np.stack([e[1] + 0.1 * e[0], e[4]]), [1, 9]), [1, 3])
    # full: the oldest slot (slot 0, untouched for the longest)
    assert mem.update(e[5], 7).tolist() == [0]
    assert mem.state()[1].tolist() == [7, 1, 2, 9]
    assert mem.add(rng.standard_normal((2, d)), [3, 3]).dtype == np.int64


def test_remove_hides_slots_reuses_them_and_refuses_bad_ids(threads):
    m, d, k = 9000, 16, 5
    rng = np.random.default_rng(21)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    mem = KnowledgeMemory.from_arrays(keys, np.arange(m) % 100, capacity=m + 10)
    K = mem.state()[0][:m].astype(np.float64)
    q = rng.standard_normal((9, d)).astype(np.float32)
    s64 = normalized(q).astype(np.float64) @ K.T
    gone = np.unique(ref_topk(s64, 3).ravel())  # the best of every query
    gone = np.concatenate([gone, [0, 4096, 8999]])
    mem.remove(gone)
    assert len(mem) == m - len(gone)
    alive = np.ones(m, bool)
    alive[gone] = False
    for n in (1, 9):  # the scan and the GEMM path
        for t in (1, 2):
            ml.set_num_threads(t)
            idx, sim, lab, _ = mem.query(q[:n], k)
            np.testing.assert_array_equal(idx, ref_topk(s64[:n], k, alive))
            assert not np.isin(idx, gone).any()
    state = [a.copy() for a in mem.state()]
    bad = [[-1], [m], [m + 5], [gone[0]], [1, 2, 2], [1, float("nan")]]
    for ids in bad:
        with pytest.raises((ValueError, TypeError)):
            mem.remove(np.array(ids))
        for a, b in zip(mem.state(), state):
            np.testing.assert_array_equal(a, b)  # nothing changed, not even slot 1
    # removed slots are the first reused, lowest first, then the empty tail
    slots = mem.add(rng.standard_normal((len(gone) + 2, d)), np.full(len(gone) + 2, 5))
    np.testing.assert_array_equal(slots, list(np.sort(gone)) + [m, m + 1])
    assert len(mem) == m + 2


def test_query_filters_by_label(threads):
    m, d, k = 10000, 24, 6
    rng = np.random.default_rng(22)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    labels = rng.integers(0, 50, m)
    mem = KnowledgeMemory.from_arrays(keys, labels)
    s64 = normalized(keys[:12]).astype(np.float64) @ mem.state()[0].astype(np.float64).T
    for allow in ([3], [7, 3, 7, 41], np.arange(50)):
        ok = np.isin(labels, allow)
        for n in (1, 5, 12):
            idx, _, lab, _ = mem.query(keys[:n], k, labels=allow)
            np.testing.assert_array_equal(idx, ref_topk(s64[:n], k, ok))
            assert np.isin(lab, allow).all()
    idx, sim, lab, _ = mem.query(keys[:2], k, labels=[])  # nothing allowed
    assert (idx == -1).all() and np.isneginf(sim).all() and (lab == -1).all()
    # a label held by fewer slots than k: the rest is padding
    idx, _, lab, _ = mem.query(keys[:1], k, labels=[999])
    assert (idx == -1).all()


def test_from_arrays_keeps_every_key_in_its_slot():
    rng = np.random.default_rng(23)
    keys = rng.standard_normal((50, 8)).astype(np.float32)
    pay = rng.standard_normal((50, 3)).astype(np.float32)
    labels = np.zeros(50, np.int64)  # one label: update() would merge them, from_arrays not
    mem = KnowledgeMemory.from_arrays(keys, labels, pay, capacity=64, seed=3)
    K, lab, ages, P = mem.state()
    assert (mem.capacity, mem.key_size, mem.payload_size, len(mem)) == (64, 8, 3, 50)
    np.testing.assert_allclose(K[:50], normalized(keys), rtol=0, atol=0)
    np.testing.assert_array_equal(P[:50], pay)
    assert (lab[:50] == 0).all() and (ages == 0).all()
    with pytest.raises(ValueError, match="capacity"):
        KnowledgeMemory.from_arrays(keys, labels, capacity=10)
    with pytest.raises(ValueError):
        KnowledgeMemory.from_arrays(keys, np.full(50, -1))
    with pytest.raises(ValueError, match="payloads"):
        KnowledgeMemory.from_arrays(keys, labels, pay[:3])


def test_removed_slots_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(24)
    mem = KnowledgeMemory.from_arrays(rng.standard_normal((30, 5)), np.arange(30))
    mem.remove([2, 7])
    mem.save(tmp_path / "m.mlm")
    back = KnowledgeMemory.open(tmp_path / "m.mlm")
    assert len(back) == 28
    q = rng.standard_normal((3, 5))
    np.testing.assert_array_equal(back.query(q, 30)[0], mem.query(q, 30)[0])
    assert back.add(q[:1], [1]).tolist() == [2]


# ------------------------------------------------------------------ compact keys


@pytest.mark.parametrize("dtype,bound", [("float16", 0.99), ("int8", 0.97)])
def test_compact_keys_recall_and_exact_scores(dtype, bound, threads):
    """Compact keys pick the top-k (approximately), the float32 keys score it: recall@8
    against the exact search on seeded Gaussian keys, returned similarities are the exact
    lane sums of the slots returned, and the bits do not depend on the thread count."""
    m, d, k = 12000, 64, 8
    rng = np.random.default_rng(30)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    exact = KnowledgeMemory.from_arrays(keys, np.arange(m))
    mem = KnowledgeMemory.from_arrays(keys, np.arange(m), key_dtype=dtype)
    assert mem.key_dtype == dtype and exact.key_dtype == "float32"
    K = mem.state()[0]
    q = rng.standard_normal((64, d)).astype(np.float32)
    hits, runs = 0, []
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        got = [mem.query(q[i], k) for i in range(len(q))]
        runs.append(np.concatenate([g[1] for g in got]).view(np.uint32))
    for i, (idx, sim, _, _) in enumerate(got):
        want = exact.query(q[i], k)[0][0]
        hits += len(set(idx[0]) & set(want))
        np.testing.assert_array_equal(sim[0], lane_dot(normalized(q[i : i + 1])[0], K[idx[0]]))
        assert all(
            sim[0, j] > sim[0, j + 1] or (sim[0, j] == sim[0, j + 1] and idx[0, j] < idx[0, j + 1])
            for j in range(k - 1)
        )
    recall = hits / (len(q) * k)
    assert recall >= bound, recall
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_keys_follow_updates_removes_and_loads(dtype, tmp_path):
    rng = np.random.default_rng(31)
    d = 32
    mem = KnowledgeMemory(500, d, seed=1, key_dtype=dtype)
    x = rng.standard_normal((400, d)).astype(np.float32)
    mem.update(x, np.arange(400) % 40)  # merges and new slots
    K = mem.state()[0]
    slots = np.flatnonzero(mem.state()[1] >= 0)[:50]
    for j in slots:  # every stored key finds its own slot first
        assert mem.query(K[j], 1)[0][0, 0] == j
    mem.remove(slots[:10])
    assert not np.isin(mem.query(K[slots[:10]], 5)[0], slots[:10]).any()
    mem.save(tmp_path / "m.mlm")
    back = KnowledgeMemory.open(tmp_path / "m.mlm")
    back.key_dtype = dtype
    np.testing.assert_array_equal(back.query(x[:5], 6)[0], mem.query(x[:5], 6)[0])
    with pytest.raises(ValueError, match="key_dtype"):
        mem.key_dtype = "bfloat16"
    assert mem.key_dtype == dtype


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_soft_read_and_loss_gradients_through_the_scan_and_compact_keys(dtype):
    """The read and the loss on memories searched by the scan (a single query) with compact
    keys: first and second order gradients equal central differences of the NumPy formula
    over the neighbours returned (the float32 keys, constants)."""
    from tests.meta.test_memory import _check_orders

    rng = np.random.default_rng(32)
    m, d, p, k = 40, 6, 3, 5
    keys = rng.standard_normal((m, d)).astype(np.float32)
    pay = rng.standard_normal((m, p)).astype(np.float32)
    mem = KnowledgeMemory.from_arrays(keys, np.arange(m) % 4, pay, key_dtype=dtype)
    mem.remove([0, 1])
    K, labels, _, P = (a.astype(np.float64) if a.dtype == np.float32 else a for a in mem.state())
    q0 = rng.standard_normal((1, d))
    idx = mem.query(q0, k)[0][0]
    assert not np.isin(idx, [0, 1]).any()

    def read_np(x):
        xn = x / np.sqrt((x**2).sum(1, keepdims=True) + 1e-12)
        s = xn @ K[idx].T
        w = np.exp(s - s.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return w @ P[idx]

    _check_orders(lambda q: mem.read(q, k=k, temperature=1.0), read_np, q0, rng)
    y = np.array([labels[idx[2]]])
    pos = next(j for j in idx if labels[j] == y[0])
    neg = next(j for j in idx if labels[j] != y[0])

    def loss_np(x):
        xn = x / np.sqrt((x**2).sum(1, keepdims=True) + 1e-12)
        return np.maximum(xn @ K[neg] - xn @ K[pos] + 0.5, 0)

    _check_orders(lambda q: mem.loss(q, y, k=k, margin=0.5, reduction="none"), loss_np, q0, rng)


def compact_widened(keys, dtype):
    """The compact copy of normalised keys as the scan reads it, widened to float32 exactly,
    and the per-key scales (int8): float16 rounds to nearest even; int8 is x / scale rounded
    to nearest even with scale = max|x| / 127 (memory.c's sync_compact, in float32)."""
    if dtype == "float16":
        return keys.astype(np.float16).astype(np.float32), None
    amax = np.abs(keys).max(1)
    scale = amax / np.float32(127)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return np.clip(np.rint(keys * inv[:, None]), -127, 127).astype(np.float32), scale


@pytest.mark.parametrize("d", [40, 128])
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_scan_equals_numpy_topk_of_the_compact_keys(dtype, d, threads):
    """The compact scan's choice is NumPy's top-k of the compact scores (the lane sums over
    the widened compact keys, times the scale for int8; ties to the lower slot), re-ordered
    by the float32 keys' lane sums, bit for bit at 1, 2 and 3 threads."""
    m, k = 9000, 8
    rng = np.random.default_rng(40 + d)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    mem = KnowledgeMemory.from_arrays(keys, np.arange(m), key_dtype=dtype)
    K = mem.state()[0][:m]
    W, scale = compact_widened(K, dtype)
    q = rng.standard_normal((3, d)).astype(np.float32)
    qn = normalized(q)
    want_idx, want_sim = [], []
    for i in range(3):
        cs = lane_dot(qn[i], W) if scale is None else scale * lane_dot(qn[i], W)
        chosen = ref_topk(cs[None].astype(np.float64), k)[0]
        exact = lane_dot(qn[i], K[chosen])
        order = np.lexsort((chosen, -exact.astype(np.float64)))
        want_idx.append(chosen[order])
        want_sim.append(exact[order])
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        for n in (1, 3):
            idx, sim, _, _ = mem.query(q[:n], k)
            np.testing.assert_array_equal(idx, np.array(want_idx[:n]))
            np.testing.assert_array_equal(
                sim.view(np.uint32), np.array(want_sim[:n]).view(np.uint32)
            )
