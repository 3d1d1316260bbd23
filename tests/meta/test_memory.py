"""The knowledge memory (Kaiser, Nachum, Roy & Bengio 2017, "Learning to Remember Rare
Events", §3) against a NumPy implementation of the paper's formulas written here:

* the update rule (merge with the nearest key when its label is right, else write into the
  oldest slot with a random tie-break from the memory's own xoshiro256** stream, which is
  re-implemented here so the tie-breaks match bit for bit), ages, a full memory;
* the exact top-k query;
* the soft read and the memory loss, forward and gradients of first and second order by
  central differences of the float64 NumPy formulas;
* save/load round trip, corrupt/truncated/mismatched files refused with nothing changed;
* bad sizes refused;
* a small learning test: a Dense encoder trained with the memory loss on Omniglot background
  characters answers 5-way 1-shot episodes on held-out characters by memory lookup alone.
"""

import os
import time

import numpy as np
import pytest

import metalearn as ml
from metalearn.memory import KnowledgeMemory, MemoryClassifier
from tests.helpers import omniglot_file, requires_omniglot

EPS = 1e-12
M64 = (1 << 64) - 1


# ------------------------------------------------------------- NumPy reference


def _splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


class Xoshiro:
    """xoshiro256** seeded through splitmix64, as csrc/memory/memory.c."""

    def __init__(self, seed):
        x, self.s = seed & M64, []
        for _ in range(4):
            x, z = _splitmix(x)
            self.s.append(z)

    def next(self):
        s = self.s
        rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64  # noqa: E731
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def below(self, n):
        limit = M64 - M64 % n
        while True:
            r = self.next()
            if r < limit:
                return r % n


def normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + EPS)


class RefMemory:
    """The paper's memory in NumPy (float64)."""

    def __init__(self, capacity, d, p=0, seed=0):
        self.m, self.d, self.p = capacity, d, p
        self.keys = np.zeros((capacity, d))
        self.labels = np.zeros(capacity, np.int64)
        self.ages = np.zeros(capacity, np.int64)
        self.payloads = np.zeros((capacity, p))
        self.count = 0
        self.rng = Xoshiro(seed)

    def query(self, q, k):
        qn = normalize(q)
        s = qn @ self.keys[: self.count].T
        idx = np.full((len(q), k), -1)
        sim = np.full((len(q), k), -np.inf)
        for i in range(len(q)):
            order = np.argsort(-s[i], kind="stable")[:k]
            idx[i, : len(order)] = order
            sim[i, : len(order)] = s[i, order]
        return idx, sim

    def oldest(self):
        if self.count < self.m:
            self.count += 1
            return self.count - 1
        best = self.ages.max()
        ties = np.flatnonzero(self.ages == best)
        r = self.rng.below(len(ties)) if len(ties) > 1 else 0
        return int(ties[r])

    def update(self, q, labels, payloads=None):
        self.ages[: self.count] += 1  # one step of the paper
        for j, (x, y) in enumerate(zip(normalize(q), labels)):
            n1 = -1
            if self.count:
                s = self.keys[: self.count] @ x
                n1 = int(np.argmax(s))
            if n1 >= 0 and self.labels[n1] == y:  # K[n1] <- normalize(q + K[n1])
                self.keys[n1] = normalize(x + self.keys[n1])
                if payloads is not None:
                    self.payloads[n1] = 0.5 * (self.payloads[n1] + payloads[j])
                slot = n1
            else:
                slot = self.oldest()
                self.keys[slot] = x
                self.labels[slot] = y
                self.payloads[slot] = payloads[j] if payloads is not None else 0
            self.ages[slot] = 0


def ref_read(q, keys_top, vals_top, valid, temperature):
    """softmax(cos(q, K_top) / T) @ V_top (float64), keys as constants."""
    s = np.einsum("nd,nkd->nk", normalize(q), keys_top) / temperature
    s = np.where(valid, s, -1e30)
    w = np.exp(s - s.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return np.einsum("nk,nkp->np", w, vals_top), w


def ref_loss(q, k_pos, k_neg, margin):
    """[q·k_neg - q·k_pos + alpha]_+ with q normalised (float64)."""
    qn = normalize(q)
    return np.maximum(np.sum(qn * k_neg, 1) - np.sum(qn * k_pos, 1) + margin, 0.0)


def fill(mem, ref, rng, n, labels, d):
    q = rng.standard_normal((n, d)).astype(np.float32)
    mem.update(q, labels)
    ref.update(q.astype(np.float64), labels)
    return q


def assert_same_state(mem, ref, atol=1e-5):
    keys, labels, ages, payloads = mem.state()
    c = ref.count
    assert len(mem) == c
    np.testing.assert_allclose(keys[:c], ref.keys[:c], atol=atol)
    np.testing.assert_array_equal(labels[:c], ref.labels[:c])
    np.testing.assert_array_equal(ages[:c], ref.ages[:c])
    if ref.p:
        np.testing.assert_allclose(payloads[:c], ref.payloads[:c], atol=atol)


# ------------------------------------------------------------------ the rule


def test_update_rule_matches_paper():
    rng = np.random.default_rng(0)
    d, p = 6, 3
    mem, ref = KnowledgeMemory(12, d, p, seed=7), RefMemory(12, d, p, seed=7)
    for step in range(40):
        n = int(rng.integers(1, 6))
        # few labels and queries near earlier keys so that both branches happen
        labels = rng.integers(0, 4, n)
        q = rng.standard_normal((n, d))
        if step and rng.random() < 0.5:
            q[0] = ref.keys[int(rng.integers(0, ref.count))] + 0.1 * q[0]
        q = q.astype(np.float32)
        pay = rng.standard_normal((n, p)).astype(np.float32)
        mem.update(q, labels, pay)
        ref.update(q.astype(np.float64), labels, pay.astype(np.float64))
        assert_same_state(mem, ref)
    assert len(mem) == 12 and mem.occupancy == 1.0


def test_merge_branch_exactly():
    mem = KnowledgeMemory(4, 3, 2)
    mem.update([[1, 0, 0]], [5], [[2.0, 4.0]])
    mem.update([[1, 1, 0]], [5], [[0.0, 0.0]])  # nearest has label 5: merge
    keys, labels, ages, pay = mem.state()
    assert len(mem) == 1
    expect = normalize(np.array([1, 0, 0]) + normalize([1, 1, 0]))
    np.testing.assert_allclose(keys[0], expect, atol=1e-6)
    np.testing.assert_allclose(pay[0], [1.0, 2.0])  # running average (mean of the two)
    assert ages[0] == 0
    mem.update([[1, 0, 0]], [6])  # nearest has another label: a new slot
    keys, labels, ages, pay = mem.state()
    assert len(mem) == 2 and labels[1] == 6 and list(ages[:2]) == [1, 0]


def test_sequential_semantics_within_a_batch():
    """A batch of the same query twice: the second sees the first's write and merges."""
    mem = KnowledgeMemory(8, 4)
    q = np.array([[1, 2, 3, 4], [1, 2, 3, 4]], np.float32)
    mem.update(q, [3, 3])
    assert len(mem) == 1
    mem.update(q * -1, [4, 5])  # first writes a new slot, second is nearest to it but label 5
    assert len(mem) == 3


def test_full_memory_oldest_slot_and_random_tie_break():
    d = 4
    rng = np.random.default_rng(1)
    chosen = set()
    for seed in range(12):
        mem, ref = KnowledgeMemory(4, d, seed=seed), RefMemory(4, d, seed=seed)
        fill(mem, ref, rng, 4, np.arange(4), d)  # one call: four slots, all age 0
        assert list(mem.state()[2]) == [0, 0, 0, 0]
        # a new label: every age becomes 1, a tie among the four, broken by the stream
        fill(mem, ref, rng, 1, [100], d)
        assert_same_state(mem, ref)
        slot = int(np.flatnonzero(mem.state()[1] == 100)[0])
        chosen.add(slot)
        # no tie now: the oldest (age 2 after the next step) among the other three is random
        # again; then a strict oldest is taken deterministically
        fill(mem, ref, rng, 1, [101], d)
        fill(mem, ref, rng, 1, [102], d)
        fill(mem, ref, rng, 1, [103], d)
        assert_same_state(mem, ref)
    assert len(chosen) > 1  # the tie-break is random, not the first index


def test_oldest_slot_is_largest_age():
    d = 3
    mem = KnowledgeMemory(3, d, seed=0)
    for i in range(3):  # separate calls: ages 2, 1, 0
        mem.update(np.eye(d)[i : i + 1], [i])
    assert list(mem.state()[2]) == [2, 1, 0]
    mem.update([[1, 1, 1]], [9])  # after the step the ages are 3, 2, 1: slot 0 goes
    _, labels, ages, _ = mem.state()
    assert list(labels) == [9, 1, 2] and list(ages) == [0, 2, 1]


def test_same_seed_replays_and_clear_reseeds():
    rng = np.random.default_rng(3)
    data = [
        (rng.standard_normal((3, 5)).astype(np.float32), rng.integers(0, 50, 3)) for _ in range(30)
    ]

    def run(mem):
        for q, y in data:
            mem.update(q, y)
        return [a.copy() for a in mem.state()]

    a, b = KnowledgeMemory(6, 5, seed=11), KnowledgeMemory(6, 5, seed=11)
    sa, sb = run(a), run(b)
    for x, y in zip(sa, sb):
        np.testing.assert_array_equal(x, y)
    a.clear()
    assert len(a) == 0 and a.occupancy == 0.0
    for x, y in zip(run(a), sa):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------- query


def test_query_matches_numpy():
    rng = np.random.default_rng(4)
    d, p = 16, 2
    mem, ref = KnowledgeMemory(300, d, p, seed=0), RefMemory(300, d, p)
    q = rng.standard_normal((250, d)).astype(np.float32)
    pay = rng.standard_normal((250, p)).astype(np.float32)
    mem.update(q, np.arange(250), pay)
    ref.update(q.astype(np.float64), np.arange(250), pay.astype(np.float64))
    x = rng.standard_normal((7, d)).astype(np.float32)
    idx, sim, lab, out_pay = mem.query(x, k=5)
    ridx, rsim = ref.query(x.astype(np.float64), 5)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(sim, rsim, atol=1e-5)
    np.testing.assert_array_equal(lab, ref.labels[ridx])
    np.testing.assert_allclose(out_pay, ref.payloads[ridx], atol=1e-6)
    # more neighbours asked than stored: padding
    small = KnowledgeMemory(10, d)
    small.update(x[:2], [1, 2])
    idx, sim, lab, _ = small.query(x[:3], k=4)
    assert (idx[:, 2:] == -1).all() and np.isneginf(sim[:, 2:]).all() and (lab[:, 2:] == -1).all()
    # one query as a vector; empty memory
    assert KnowledgeMemory(5, d).query(x[0], 2)[0].tolist() == [[-1, -1]]
    assert list(mem.predict(x[:3])) == list(ref.labels[ridx[:3, 0]])


# ------------------------------------------------------ differentiable parts


def _memory_with_payload(rng, m=6, d=5, p=3):
    mem = KnowledgeMemory(m, d, p, seed=0)
    mem.update(
        rng.standard_normal((m, d)).astype(np.float32),
        np.arange(m) % 3,
        rng.standard_normal((m, p)).astype(np.float32),
    )
    keys, labels, _, pay = mem.state()
    return mem, keys.astype(np.float64), labels, pay.astype(np.float64)


def _fd_grad(f, x, h=1e-5):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _check_orders(ml_fn, np_fn, q0, rng):
    """First and second order gradients of L = sum(R * fn(q)) against central differences
    of the NumPy formula (float64). Second order: the gradient of <grad L, v>."""
    out0 = np_fn(q0)
    R = rng.standard_normal(out0.shape)
    v = rng.standard_normal(q0.shape)
    L = lambda x: float(np.sum(R * np_fn(x)))  # noqa: E731
    gL = lambda x: _fd_grad(L, x, 1e-5)  # noqa: E731
    S = lambda x: float(np.sum(gL(x) * v))  # noqa: E731

    q = ml.tensor(q0.astype(np.float32), requires_grad=True)
    out = ml_fn(q)
    np.testing.assert_allclose(np.asarray(out), out0, atol=1e-5)
    loss = ml.reduce_sum(out * ml.tensor(R.astype(np.float32)))
    (g,) = ml.grad(loss, q, create_graph=True)
    g_ref = gL(q0)
    assert np.abs(g_ref).max() > 1e-3, "degenerate check"
    np.testing.assert_allclose(np.asarray(g), g_ref, atol=2e-4, rtol=1e-3)
    s = ml.reduce_sum(g * ml.tensor(v.astype(np.float32)))
    (h,) = ml.grad(s, q)
    h_ref = _fd_grad(S, q0, 1e-3)
    assert np.abs(h_ref).max() > 1e-3, "degenerate second-order check"
    np.testing.assert_allclose(np.asarray(h), h_ref, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("k", [6, 3])
def test_soft_read_forward_and_gradients(k):
    rng = np.random.default_rng(5)
    mem, keys, labels, pay = _memory_with_payload(rng)
    q0 = rng.standard_normal((3, 5))
    T = 0.5
    idx, _, _, _ = mem.query(q0.astype(np.float32), k)  # selection: constants

    def np_fn(x):
        return ref_read(x, keys[idx], pay[idx], idx >= 0, T)[0]

    _check_orders(lambda q: mem.read(q, k=k, temperature=T), np_fn, q0, rng)
    out, w = mem.read(ml.tensor(q0.astype(np.float32)), k=k, temperature=T, return_weights=True)
    np.testing.assert_allclose(
        np.asarray(w), ref_read(q0, keys[idx], pay[idx], idx >= 0, T)[1], atol=1e-5
    )


def test_soft_read_partial_memory_and_weights_only():
    rng = np.random.default_rng(6)
    mem = KnowledgeMemory(10, 4, 2)
    mem.update(rng.standard_normal((2, 4)), [0, 1], [[1, 0], [0, 1]])
    q = rng.standard_normal((3, 4)).astype(np.float32)
    out, w = mem.read(q, k=5, return_weights=True)
    w = np.asarray(w)
    assert w.shape == (3, 5) and np.allclose(w[:, 2:], 0) and np.allclose(w.sum(1), 1)
    idx = mem.query(q, 2)[0]  # payloads are one-hot slot markers
    expect = np.zeros((3, 2))
    np.put_along_axis(expect, idx, w[:, :2], 1)
    np.testing.assert_allclose(np.asarray(out), expect, atol=1e-6)
    nopay = KnowledgeMemory(10, 4)
    nopay.update(rng.standard_normal((3, 4)), [0, 1, 2])
    assert tuple(nopay.read(rng.standard_normal((2, 4)), k=3).shape) == (2, 3)
    empty = KnowledgeMemory(4, 4, 2).read(np.ones((1, 4)), k=2)
    np.testing.assert_array_equal(np.asarray(empty), np.zeros((1, 2)))


def test_memory_loss_forward_and_gradients():
    rng = np.random.default_rng(7)
    mem, keys, labels, _ = _memory_with_payload(rng, m=8)
    q0 = rng.standard_normal((4, 5))
    y = np.array([0, 1, 2, 7])  # label 7 is nowhere: k_pos missing (similarity 0)
    k, margin = 8, 0.6  # a wide margin keeps every relu active (non-zero gradients)
    idx, _, lab, _ = mem.query(q0.astype(np.float32), k)
    pos = np.array([row[l == t][0] if (l == t).any() else -1 for row, l, t in zip(idx, lab, y)])
    neg = np.array([row[l != t][0] for row, l, t in zip(idx, lab, y)])
    kp = np.where(pos[:, None] >= 0, keys[pos], 0.0)
    kn = keys[neg]

    def np_fn(x):
        return ref_loss(x, kp, kn, margin)

    assert (np_fn(q0) > 0.05).all()
    _check_orders(lambda q: mem.loss(q, y, k=k, margin=margin, reduction="none"), np_fn, q0, rng)
    # the mean (as the paper) and the default margin 0.1
    m = mem.loss(q0, y, k=k)
    assert abs(float(np.asarray(m)) - ref_loss(q0, kp, kn, 0.1).mean()) < 1e-5


def test_memory_loss_when_right_key_is_nearest_is_zero_and_empty_memory():
    mem = KnowledgeMemory(4, 3)
    mem.update(np.eye(3), [0, 1, 2])
    loss = mem.loss(np.eye(3) * 2, [0, 1, 2], k=3, reduction="none")
    np.testing.assert_allclose(np.asarray(loss), 0.0)
    empty = KnowledgeMemory(4, 3).loss(np.eye(3), [0, 1, 2], k=3, reduction="none")
    np.testing.assert_allclose(np.asarray(empty), 0.1, rtol=1e-6)


# ----------------------------------------------------------------- save/load


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    mem = KnowledgeMemory(20, 6, 2, seed=5)
    for _ in range(12):
        mem.update(rng.standard_normal((3, 6)), rng.integers(0, 10, 3), rng.standard_normal((3, 2)))
    path = str(tmp_path / "mem.mlm")
    mem.save(path)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    other = KnowledgeMemory(20, 6, 2, seed=99)
    other.load(path)
    opened = KnowledgeMemory.open(path)
    assert isinstance(opened, KnowledgeMemory) and opened.capacity == 20
    for a, b, c in zip(mem.state(), other.state(), opened.state()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # the random stream travels with the file: the same future
    more = [(rng.standard_normal((4, 6)), rng.integers(10, 30, 4)) for _ in range(10)]
    for q, y in more:
        mem.update(q, y)
        other.update(q, y)
    for a, b in zip(mem.state(), other.state()):
        np.testing.assert_array_equal(a, b)


def test_corrupt_truncated_and_mismatched_files_refused(tmp_path):
    rng = np.random.default_rng(9)
    src = KnowledgeMemory(10, 4, 1, seed=1)
    src.update(rng.standard_normal((5, 4)), np.arange(5), rng.standard_normal((5, 1)))
    path = tmp_path / "m.mlm"
    src.save(str(path))
    good = path.read_bytes()
    assert good[:8] == b"MLMEMORY"

    target = KnowledgeMemory(10, 4, 1, seed=2)
    target.update(rng.standard_normal((3, 4)), [7, 8, 9])
    before = [a.copy() for a in target.state()]

    def refused(data, exc=ValueError, match=None):
        bad = tmp_path / "bad.mlm"
        bad.write_bytes(data)
        with pytest.raises(exc, match=match):
            target.load(str(bad))
        for a, b in zip(before, target.state()):
            np.testing.assert_array_equal(a, b)

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    refused(bytes(flipped), match="corrupt|checksum")
    refused(good[:-7], match="corrupt|truncated|checksum")
    refused(good[:10], match="truncated|corrupt")
    refused(b"MLWEIGHT" + good[8:], match="magic")
    refused(b"", match="magic")
    with pytest.raises(OSError):
        target.load(str(tmp_path / "missing.mlm"))
    for shape in [(11, 4, 1), (10, 5, 1), (10, 4, 0)]:
        other = KnowledgeMemory(*shape)
        other.save(str(tmp_path / "o.mlm"))
        refused((tmp_path / "o.mlm").read_bytes(), match="capacity")


# ------------------------------------------------------------------ bad input


def test_bad_sizes_and_inputs_refused():
    for args in [(0, 4), (-1, 4), (4, 0), (4, -2), (4, 4, -1)]:
        with pytest.raises(ValueError):
            KnowledgeMemory(*args)
    with pytest.raises((ValueError, MemoryError, OverflowError)):
        KnowledgeMemory(1 << 40, 1 << 20)
    mem = KnowledgeMemory(4, 3, 2)
    mem.update(np.eye(3), [0, 1, 2])
    before = [a.copy() for a in mem.state()]
    with pytest.raises(ValueError, match="k must be"):
        mem.query(np.ones((1, 3)), k=5)
    with pytest.raises(ValueError, match="k must be"):
        mem.query(np.ones((1, 3)), k=0)
    with pytest.raises(ValueError, match="shape"):
        mem.query(np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        mem.query([[1.0, np.nan, 0.0]])
    with pytest.raises(ValueError, match="non-finite"):
        mem.update([[1.0, 0.0, 0.0], [np.inf, 0.0, 0.0]], [5, 6])
    with pytest.raises(ValueError, match="labels"):
        mem.update(np.ones((2, 3)), [1])
    with pytest.raises(ValueError, match="payloads"):
        mem.update(np.ones((2, 3)), [1, 2], np.ones((2, 3)))
    with pytest.raises(ValueError, match="payload_size=0"):
        KnowledgeMemory(4, 3).update(np.ones((1, 3)), [1], np.ones((1, 2)))
    with pytest.raises(ValueError, match="temperature"):
        mem.read(np.ones((1, 3)), k=2, temperature=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        mem.read([[np.nan, 1, 1]], k=2)
    with pytest.raises(ValueError, match="labels"):
        mem.loss(np.ones((2, 3)), [1, 2, 3], k=2)
    with pytest.raises(TypeError):
        mem.update(np.ones((1, 3)), ["a"])
    for a, b in zip(before, mem.state()):
        np.testing.assert_array_equal(a, b)
    # a zero query is allowed: it stays a zero key (similarity 0 to everything)
    mem.update(np.zeros((1, 3)), [3])
    assert len(mem) == 4


def test_read_and_loss_refuse_k_above_capacity_as_query_does():
    """read and loss took any k (silently capped at the capacity) where query refused it:
    an explicit k outside [1, capacity] is now refused by all three, with the same
    message; the defaults (8 for read, the paper's 256 for loss) are capped."""
    mem = KnowledgeMemory(4, 3, 2)
    mem.update(np.eye(3), [0, 1, 2])
    before = [a.copy() for a in mem.state()]
    q = np.ones((1, 3), np.float32)
    for name, call in [
        ("query", lambda k: mem.query(q, k=k)),
        ("read", lambda k: mem.read(q, k=k)),
        ("loss", lambda k: mem.loss(q, [1], k=k)),
    ]:
        for k in (5, 0, -1):
            with pytest.raises(ValueError) as e:
                call(k)
            assert str(e.value) == (
                f"KnowledgeMemory.{name}: k must be in [1, capacity=4], got {k}"
            )
    for a, b in zip(before, mem.state()):
        np.testing.assert_array_equal(a, b)
    # the defaults fit any capacity: k = min(8, 4) and min(256, 4)
    assert tuple(mem.read(q, return_weights=True)[1].shape) == (1, 4)
    np.testing.assert_allclose(mem.loss(q, [1]).numpy(), mem.loss(q, [1], k=4).numpy())
    with pytest.raises(
        ValueError, match=r"MemoryClassifier: k must be in \[1, capacity=4\], got 5"
    ):
        MemoryClassifier(ml.keras.layers.Dense(3), mem, k=5)


def test_update_refuses_the_empty_slot_label_and_2d_labels():
    """Label -1 is what query returns for an empty slot (storing it made a written slot
    read as empty); 2-D labels were flattened silently. Both raise ValueError naming the
    problem, and nothing in the memory changes (no age moves either)."""
    mem = KnowledgeMemory(6, 3, 2, seed=3)
    mem.update(np.eye(3), [0, 1, 2], np.ones((3, 2)))
    before = [a.copy() for a in mem.state()]
    q = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 5.0]], np.float32)
    with pytest.raises(
        ValueError, match=r"label -1 \(at position 1\) is the marker of an empty slot"
    ):
        mem.update(q, [4, -1])
    with pytest.raises(ValueError, match=r"label -1 \(at position 0\)"):
        mem.update(q[:1], -1)
    with pytest.raises(ValueError, match=r"labels must be 1-D .* got an array of shape \(2, 1\)"):
        mem.update(q, [[4], [5]])
    with pytest.raises(ValueError, match=r"labels must be 1-D .* shape \(1, 2\)"):
        mem.update(q, np.array([[4, 5]]))
    for a, b in zip(before, mem.state()):
        np.testing.assert_array_equal(a, b)
    assert len(mem) == 3
    mem.update(q, [4, -7])  # other negative integers are ordinary labels
    mem.update(q[0], 9)  # one query, one scalar label
    assert set(mem.state()[1][: len(mem)]) >= {4, -7}


# --------------------------------------------------------------- learning


def _omniglot():
    d = np.load(omniglot_file())
    return d["images"], d["labels"]


@requires_omniglot
def test_one_shot_omniglot_by_memory_lookup():
    """Kaiser et al.'s recipe, small: an encoder trained only through the memory loss, then
    5-way 1-shot episodes on characters never trained on, answered by nearest key."""
    images, labels = _omniglot()
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    classes = np.unique(labels)
    rng = np.random.default_rng(0)
    rng.shuffle(classes)
    train_cls, test_cls = classes[:600], classes[600:]
    tr = np.isin(labels, train_cls)
    ml.random.set_seed(0)
    encoder = ml.keras.Sequential(
        [ml.keras.layers.Dense(256, activation="relu"), ml.keras.layers.Dense(64)]
    )
    memory = KnowledgeMemory(4096, 64, seed=0)
    clf = MemoryClassifier(encoder, memory, optimizer=ml.keras.optimizers.Adam(1e-3), k=64)

    def accuracy(episodes=150):
        hits, by = 0, {c: np.flatnonzero(labels == c) for c in test_cls}
        mem = KnowledgeMemory(64, 64, seed=1)
        for e in range(episodes):
            mem.clear()
            chosen = rng.choice(test_cls, 5, replace=False)
            picks = [rng.choice(by[c], 2, replace=False) for c in chosen]
            sup = np.array([p[0] for p in picks])
            qry = np.array([p[1] for p in picks])
            with ml.no_grad():
                mem.update(np.asarray(encoder(x[sup])), np.arange(5))
                pred = mem.predict(np.asarray(encoder(x[qry])))
            hits += int((pred == np.arange(5)).sum())
        return hits / (5 * episodes)

    encoder(x[:1])
    before = accuracy()
    t0 = time.perf_counter()
    losses = clf.fit(x[tr], labels[tr], steps=1000, batch_size=64, seed=0)
    train_time = time.perf_counter() - t0
    after = accuracy()
    print(
        f"5-way 1-shot by memory lookup: untrained {before:.3f}, trained {after:.3f} "
        f"(loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}, {train_time:.1f} s)"
    )
    assert np.mean(losses[-50:]) < np.mean(losses[:50])
    # chance is 0.2; nearest neighbour on raw pixels through the untrained encoder ~0.4
    assert after > 0.5 and after > before + 0.1
    # MemoryClassifier's own one-shot interface: memorize the support, predict the queries
    clf.memory.clear()
    by = {c: np.flatnonzero(labels == c) for c in test_cls[:5]}
    clf.memorize(x[[by[c][0] for c in test_cls[:5]]], np.arange(5))
    pred = clf.predict(x[[by[c][1] for c in test_cls[:5]]])
    assert pred.shape == (5,) and set(pred) <= set(range(5))


def test_memory_recall_layer_trains_the_encoder():
    from metalearn.keras.memory_layers import MemoryRecall

    rng = np.random.default_rng(10)
    mem = KnowledgeMemory(16, 4, 3, seed=0)
    mem.update(rng.standard_normal((6, 4)), np.arange(6), rng.standard_normal((6, 3)))
    model = ml.keras.Sequential([ml.keras.layers.Dense(4), MemoryRecall(mem, k=4, temperature=0.5)])
    x = rng.standard_normal((5, 7)).astype(np.float32)
    with ml.GradientTape() as tape:
        y = model(x)
        loss = ml.reduce_sum(y * y)
    assert tuple(y.shape) == (5, 3)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None and np.abs(np.asarray(g)).sum() > 0 for g in grads)
    labels = MemoryRecall(mem, output="labels")(x[:, :4])
    assert list(np.asarray(labels)) == list(mem.predict(x[:, :4]))
    assert tuple(MemoryRecall(mem, k=3, output="weights")(x[:, :4]).shape) == (5, 3)
    with pytest.raises(ValueError):
        MemoryRecall(KnowledgeMemory(4, 4), output="payload")
    with pytest.raises(ValueError):
        MemoryRecall(mem)(x)  # wrong key size


def test_memory_file_asking_for_gigabytes_is_refused(tmp_path):
    """A file with a valid checksum that declares a huge capacity and holds nothing is
    refused before anything is allocated (found by fuzzing)."""
    import struct
    import zlib

    mem = KnowledgeMemory(capacity=4, key_size=3, seed=0)
    good = tmp_path / "good.mlm"
    mem.save(str(good))
    raw = bytearray(good.read_bytes())
    head = bytes(raw[:8]) + struct.pack("<I", 1)  # magic, format version 1 (84-byte header)
    data = head + struct.pack("<QQQQ", 1028, 2360064, 0, 0) + struct.pack("<Q4Q", 0, 1, 2, 3, 4)
    bad = tmp_path / "huge.mlm"
    bad.write_bytes(data + struct.pack("<I", zlib.crc32(data)))
    with pytest.raises(ValueError, match="GiB"):
        KnowledgeMemory.open(str(bad))
