"""The knowledge memory sharded over the processes of the world (issue 24).

``ShardedMemory(capacity, key_size, payload_size=0, seed=0)`` behaves as one
``KnowledgeMemory`` of the same capacity and seed, bit for bit (the slots every call writes,
the keys, labels, ages, payloads, the query answers and the saved file), while each of the P
processes holds the keys and payloads of ``capacity / P`` slots: slot s lives on rank
``s // (capacity / P)``, so a slot id is the one a single memory gives.

* ``query``: each rank searches its slots with the C key scan (a top-k of its own), the
  candidates are gathered on every rank (``Allgather``: k per rank and query) and merged in
  the single memory's order (similarity down, then slot up). The scan scores each key alone
  (``kernels/topk.c``), so a key's similarity has the same bits on any rank.
* ``update``: Kaiser et al.'s rule over the whole memory, in chunks of 32 queries as the C
  update: the chunk's candidates (the nearest ``min(chunk, count)`` slots of every query, with
  their keys and payloads) are gathered once, then every rank applies the rule to the whole
  chunk in the same order (the nearest same-label key anywhere is merged into, else the
  globally oldest slot is written, ties drawn from the memory's own xoshiro256** stream,
  replayed here), and the owner of each written slot stores it.
* ``add``, ``remove``, ``clear``, ``state``, ``size``, ``predict``: as the single memory.
* ``save``: rank 0 writes the single memory's file (format version 2), byte for byte,
  atomically, the other ranks streaming their keys and payloads to it; ``load`` (and
  ``ShardedMemory.open``) read a file written by one process or by any P.

Every method is collective: every rank calls it, in the same order, with the same arguments
(checked: ranks that disagree raise ValueError together). The labels and ages (16 bytes per
slot) are kept on every rank so that the rule's choice of a slot needs no communication;
the keys and payloads, the bulk, are sharded. What is refused, with the reason: the
approximate IVF index (one index's k-means runs over a sample of all the keys and its lists
span the ranks, so per-rank indexes would return other neighbours than one index of the same
data), compact keys (their scan chooses the top-k by compact scores that the ranks do not
exchange), and the differentiable ``read``/``loss``.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from typing import Any

import numpy as np

from metalearn.memory import KnowledgeMemory

__all__ = ["ShardedMemory"]

_M64 = (1 << 64) - 1
_CHUNK = 32  # queries searched together by an update (UPDATE_CHUNK of memory.c)
_NORM_EPS = float(np.float32(1e-12))  # NORM_EPS of memory.c, as a double
_V2_HEADER = 128
_SCAN_MAX_QUERIES = 8  # batches up to this size take the key scan, larger ones a GEMM


# ------------------------------------------------------------ the memory's stream


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return x, z ^ (z >> 31)


def _xoshiro_seed(seed):
    """core/xoshiro.h's state for a seed: four splitmix64 outputs."""
    x, s = seed & _M64, []
    for _ in range(4):
        x, z = _splitmix64(x)
        s.append(z)
    return s


def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & _M64


def _xoshiro_next(s):
    result = (_rotl((s[1] * 5) & _M64, 7) * 9) & _M64
    t = (s[1] << 17) & _M64
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


def _rng_below(s, n):
    """memory.c's rng_below: uniform in [0, n) by rejection."""
    limit = _M64 - _M64 % n
    while True:
        r = _xoshiro_next(s)
        if r < limit:
            return r % n


# ------------------------------------------------------------ the C core's arithmetic


def _normalize_rows(x):
    """memory.c's normalize_row: x / sqrt(sum x^2 + eps), the sum in double, in order."""
    x = np.asarray(x, np.float32)
    ss = np.cumsum(x.astype(np.float64) ** 2, axis=-1)[..., -1]  # sequential, as the C loop
    inv = (1.0 / np.sqrt(ss + _NORM_EPS)).astype(np.float32)
    return x * inv[..., None]


def _dot(a, b):
    """memory.c's dot: a float sum in order (no FMA: the core is built without it)."""
    return np.cumsum(np.multiply(a, b, dtype=np.float32), dtype=np.float32)[-1]


# ------------------------------------------------------------ the file (mmap.c)


def _up64(x):
    return (x + 63) // 64 * 64


def _slab(a):
    b = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    return b, b"\0" * (_up64(len(b)) - len(b))


def _header(capacity, d, p, count, seed, rng, crcs):
    h = bytearray(_V2_HEADER)
    h[0:8] = b"MLMEMORY"
    struct.pack_into("<II", h, 8, 2, _V2_HEADER)
    struct.pack_into("<4Q", h, 16, capacity, d, p, count)
    struct.pack_into("<Q", h, 48, seed & _M64)
    struct.pack_into("<4Q", h, 56, *rng)
    struct.pack_into("<4I", h, 88, *crcs)
    struct.pack_into("<I", h, 124, zlib.crc32(bytes(h[:124])))
    return bytes(h)


def _read_layout(path):
    """(version, capacity, d, p, count, seed, rng, keys_at, labels_at, ages_at, payloads_at) of
    a memory file the C loader has checked."""
    with open(path, "rb") as f:
        head = f.read(_V2_HEADER)
    version = struct.unpack_from("<I", head, 8)[0]
    if version == 1:
        cap, d, p, c, seed = struct.unpack_from("<5Q", head, 12)
        rng = list(struct.unpack_from("<4Q", head, 52))
        keys_at = 84
        labels_at = keys_at + c * d * 4
        ages_at = labels_at + c * 8
        return version, cap, d, p, c, seed, rng, keys_at, labels_at, ages_at, ages_at + c * 8
    cap, d, p, c, seed = struct.unpack_from("<5Q", head, 16)
    rng = list(struct.unpack_from("<4Q", head, 56))
    keys_at = _V2_HEADER
    labels_at = keys_at + _up64(c * d * 4)
    ages_at = labels_at + _up64(c * 8)
    return version, cap, d, p, c, seed, rng, keys_at, labels_at, ages_at, ages_at + _up64(c * 8)


class ShardedMemory:
    """A ``KnowledgeMemory`` of ``capacity`` slots held by the P processes of the world,
    ``capacity / P`` slots each; every call gives the results of one memory of the same
    capacity and seed, bit for bit (see the module).

    Args:
        capacity: number of slots, a multiple of the number of processes (ValueError
            otherwise, naming both).
        key_size, payload_size, seed: as ``KnowledgeMemory``.

    Every method is collective (all ranks call it in the same order with the same
    arguments). Exact search only: ``build_index`` and compact ``key_dtype`` are refused
    (see the module for why).
    """

    def __init__(self, capacity: int, key_size: int, payload_size: int = 0, seed: int = 0) -> None:
        from metalearn import distributed

        for name, v in (("capacity", capacity), ("key_size", key_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
                raise ValueError(f"ShardedMemory: {name} must be an int >= 1, got {v!r}")
        if isinstance(payload_size, bool) or int(payload_size) < 0:
            raise ValueError(f"ShardedMemory: payload_size must be >= 0, got {payload_size!r}")
        self._p, self._r = distributed.size(), distributed.rank()
        capacity, key_size, payload_size = int(capacity), int(key_size), int(payload_size)
        if capacity % self._p:
            raise ValueError(
                f"ShardedMemory: capacity={capacity} is not divisible by the {self._p} "
                "processes of the world (each holds capacity / P slots; choose a multiple of P)"
            )
        self.capacity, self.key_size, self.payload_size = capacity, key_size, payload_size
        self.seed = int(seed)
        self._m = capacity // self._p
        self._base = self._r * self._m
        # the search engine of this rank's slots (its ages and stream are not used)
        self._local = KnowledgeMemory(self._m, key_size, payload_size)
        self._dir = tempfile.mkdtemp(prefix="metalearn-shard-")
        self._reset()

    # ---------------------------------------------------------------- state
    def _reset(self):
        m, d, p = self._m, self.key_size, self.payload_size
        self._keys = np.zeros((m, d), np.float32)
        self._payloads = np.zeros((m, p), np.float32)
        self._labels = np.zeros(self.capacity, np.int64)  # every slot's, on every rank
        self._ages = np.zeros(self.capacity, np.int64)
        self._count = 0
        self._n_removed = 0
        self._rng = _xoshiro_seed(self.seed)
        self._stale = True

    def _local_count(self):
        return min(max(self._count - self._base, 0), self._m)

    def _sync(self):
        """Installs this rank's slots into its search engine (a local file and a load)."""
        if not self._stale:
            return
        c = self._local_count()
        path = os.path.join(self._dir, "shard.mem")
        with open(path, "wb") as f:
            f.write(
                _file_bytes(
                    self._m,
                    self.key_size,
                    self.payload_size,
                    c,
                    0,
                    _xoshiro_seed(0),
                    self._keys[:c],
                    self._labels[self._base : self._base + c],
                    np.zeros(c, np.int64),
                    self._payloads[:c],
                )
            )
        self._local.load(path)
        self._stale = False
        self._eng_count = c
        self._eng_removed = set(
            np.flatnonzero(self._labels[self._base : self._base + c] == -1).tolist()
        )

    def __del__(self):
        try:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)
        except Exception:
            pass

    def _owner(self, slot):
        return slot // self._m

    @property
    def size(self) -> int:
        """The number of occupied slots (every rank)."""
        return self._count - self._n_removed

    def __len__(self) -> int:
        return self.size

    @property
    def occupancy(self) -> float:
        return self.size / self.capacity

    def __repr__(self):
        return (
            f"ShardedMemory(capacity={self.capacity}, key_size={self.key_size}, "
            f"payload_size={self.payload_size}, size={self.size}, processes={self._p})"
        )

    # ---------------------------------------------------------------- collectives
    def _allgather(self, a):
        """(P,) + a.shape: every rank's array, in rank order."""
        a = np.ascontiguousarray(a)
        if self._p == 1:
            return a[None]
        from metalearn.distributed import _world

        out = np.empty((self._p,) + a.shape, a.dtype)
        _world().Allgather(a, out)
        return out

    def _agree(self, what, *arrays):
        """ValueError on every rank when the ranks were given different arguments."""
        if self._p == 1:
            return
        crc = 0
        for a in arrays:
            a = np.asarray(a) if a is not None else None
            if a is None or a.dtype == object:  # (bytes of an object array are pointers)
                crc = zlib.crc32(repr(None if a is None else a.tolist()).encode(), crc)
                continue
            crc = zlib.crc32(repr((a.dtype.str, a.shape)).encode(), crc)
            crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
        crcs = self._allgather(np.array([crc], np.int64))[:, 0]
        if len(set(crcs.tolist())) > 1:
            raise ValueError(
                f"ShardedMemory.{what}: the processes were given different arguments "
                "(every process must make the same calls with the same arguments)"
            )

    def _raise_together(self, error):
        """Raises on every rank when `error` (a message or None) is set on any."""
        if self._p == 1:
            if error:
                raise ValueError(error)
            return
        from metalearn.distributed import _world

        errors = _world().allgather(error)
        first = next((e for e in errors if e), None)
        if first:
            raise ValueError(first)

    # ---------------------------------------------------------------- checks
    def _queries(self, what, q):
        a = np.asarray(q, np.float32)
        if a.ndim == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2 or a.shape[1] != self.key_size:
            raise ValueError(
                f"ShardedMemory.{what}: queries must have shape (n, {self.key_size}), got "
                f"{np.shape(q)}"
            )
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            i, j = bad[0]
            raise ValueError(
                f"ShardedMemory.{what}: query {i} holds a non-finite value ({a[i, j]} at "
                f"position {j})"
            )
        return np.ascontiguousarray(a)

    def _batch(self, what, q, labels, payloads):
        # the ranks agree on the arguments before any check, so a refusal is on every rank
        self._agree(what, q, labels, payloads)
        q = self._queries(what, q)
        n = len(q)
        y = np.asarray(labels)
        if y.ndim == 0:
            y = y.reshape(1)
        if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"ShardedMemory.{what}: labels must be {n} integers (one per query), got "
                f"shape {y.shape} of {y.dtype}"
            )
        y = y.astype(np.int64)
        hit = np.flatnonzero(y == -1)
        if len(hit):
            raise ValueError(
                f"ShardedMemory.{what}: label -1 (at position {hit[0]}) is the marker of an "
                "empty slot and cannot be stored; use another integer"
            )
        pl = None
        if payloads is not None and self.payload_size:
            pl = np.asarray(payloads, np.float32)
            if pl.ndim == 1:
                pl = pl.reshape(1, -1)
            if pl.shape != (n, self.payload_size):
                raise ValueError(
                    f"ShardedMemory.{what}: payloads must have shape ({n}, "
                    f"{self.payload_size}), got {pl.shape}"
                )
            rows = np.flatnonzero(~np.isfinite(pl).all(axis=1))
            if len(rows):
                raise ValueError(
                    f"ShardedMemory.{what}: payload {rows[0]} holds a non-finite value"
                )
            pl = np.ascontiguousarray(pl)
        return q, y, pl

    # ---------------------------------------------------------------- search
    def _search(self, q, k, allow=None):
        """The merged top-k of raw queries q: (idx, sim, labels, payloads, keys)."""
        n, kl = len(q), min(k, self._m)
        if n <= _SCAN_MAX_QUERIES:  # the key scan: each key scored alone, on any rank
            self._sync()
            idx, sim, lab, pay = self._local.query(q, kl, allow)
            idx = np.where(idx >= 0, idx + self._base, -1)
        else:
            idx, sim, lab, pay = self._gemm_topk(q, kl, allow)
        keys = self._keys[np.maximum(idx - self._base, 0)]
        pay = np.asarray(pay, np.float32).reshape(n, kl, self.payload_size)
        g = [self._allgather(a) for a in (idx, sim, lab, pay, keys)]
        # (n, P * kl) candidates per query, merged: valid first, similarity down, slot up
        gi, gs, gl, gp, gk = (
            np.moveaxis(a, 0, 1).reshape((n, self._p * kl) + a.shape[3:]) for a in g
        )
        order = np.lexsort((gi, -gs.astype(np.float64), gi < 0), axis=-1)[:, :k]
        rows = np.arange(n)[:, None]
        out = [gi[rows, order], gs[rows, order], gl[rows, order], gp[rows, order], gk[rows, order]]
        if order.shape[1] < k:  # fewer candidates than k: padded as the single memory
            pad = k - order.shape[1]
            fills = (-1, -np.inf, -1, 0.0, 0.0)
            out = [
                np.concatenate([a, np.full((n, pad) + a.shape[2:], f, a.dtype)], axis=1)
                for a, f in zip(out, fills)
            ]
        return out

    def _gemm_topk(self, q, kl, allow):
        """This rank's top-kl of more than 8 queries with the single memory's bits: its GEMM
        over blocks of ``search_block(n, count)`` slots, each block of the same shape as
        there with this rank's keys in their places and zeros elsewhere (a GEMM's element
        depends on its operands and its place in the shape, not on the other rows)."""
        from metalearn import _core

        n, c = len(q), self._count
        lo, hi = self._base, self._base + self._local_count()
        scores = np.empty((n, hi - lo), np.float32)
        if hi > lo:
            qn = _normalize_rows(q)
            block = min(max(min(262144 // n, 8192), 256), c)
            for b0 in range((lo // block) * block, hi, block):
                nb = min(block, c - b0)
                a, b = max(b0, lo), min(b0 + nb, hi)
                keys = np.zeros((nb, self.key_size), np.float32)
                keys[a - b0 : b - b0] = self._keys[a - lo : b - lo]
                s = np.asarray(_core.matmul(qn, keys, False, True))
                scores[:, a - lo : b - lo] = s[:, a - b0 : b - b0]
        labels = self._labels[lo:hi]
        ok = labels != -1
        if allow is not None:
            ok &= np.isin(labels, np.asarray(allow, np.int64))
        slots = np.arange(lo, hi)
        order = np.lexsort(
            (
                np.broadcast_to(slots, scores.shape),
                -scores.astype(np.float64),
                np.broadcast_to(~ok, scores.shape),
            ),
            axis=-1,
        )[:, :kl]
        rows = np.arange(n)[:, None]
        idx = np.where(ok[order], slots[order], -1)
        sim = np.where(ok[order], scores[rows, order], np.float32(-np.inf)).astype(np.float32)
        lab = np.where(idx >= 0, self._labels[np.maximum(idx, 0)], -1)
        pay = np.where((idx >= 0)[..., None], self._payloads[np.maximum(idx - lo, 0)], 0)
        if order.shape[1] < kl:
            pad = kl - order.shape[1]
            idx = np.concatenate([idx, np.full((n, pad), -1, np.int64)], 1)
            sim = np.concatenate([sim, np.full((n, pad), -np.inf, np.float32)], 1)
            lab = np.concatenate([lab, np.full((n, pad), -1, np.int64)], 1)
            pay = np.concatenate([pay, np.zeros((n, pad, self.payload_size))], 1)
        return idx, sim, lab, pay.astype(np.float32)

    def query(self, q: Any, k: int = 1, labels: Any = None, nprobe: Any = None) -> Any:
        """``KnowledgeMemory.query`` over every rank's slots: ``(indices, similarities,
        labels, payloads)``, the single memory's bits (ties: the lower slot first)."""
        self._agree("query", q, repr(k), labels, repr(nprobe))
        if nprobe is not None and not (isinstance(nprobe, str) and nprobe == "exact"):
            raise ValueError(
                "ShardedMemory.query: nprobe asks for the approximate index, which a sharded "
                "memory does not have (exact search only); pass None or 'exact'"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"ShardedMemory.query: k must be an int, got {k!r}")
        k = int(k)
        if not 1 <= k <= self.capacity:
            raise ValueError(
                f"ShardedMemory.query: k must be in [1, capacity={self.capacity}], got {k}"
            )
        q = self._queries("query", q)
        allow = None if labels is None else np.asarray(labels).reshape(-1)
        idx, sim, lab, pay, _ = self._search(q, k, allow)
        return idx, sim, lab, pay

    def predict(self, q: Any) -> np.ndarray:
        """The label of the nearest key for each query (-1 when empty)."""
        return self.query(q, 1)[2][:, 0]

    # ---------------------------------------------------------------- writes
    def _oldest_slot(self):
        """memory.c's oldest_slot on the replicated labels, ages and stream."""
        if self._n_removed:
            i = int(np.flatnonzero(self._labels[: self._count] == -1)[0])
            self._n_removed -= 1
            return i
        if self._count < self.capacity:
            self._count += 1
            return self._count - 1
        best = self._ages.max()
        tied = np.flatnonzero(self._ages == best)
        r = _rng_below(self._rng, len(tied)) if len(tied) > 1 else 0
        return int(tied[r])

    def _store(self, slot, key, payload, raw=None, label=None):
        """The owner keeps a written slot's key and payload, and writes it into its search
        engine: `raw` is what the C core normalises into `key` (None: the slot is removed)."""
        if self._owner(slot) != self._r:
            return
        j = slot - self._base
        self._keys[j] = key
        if self.payload_size:
            self._payloads[j] = payload
        if self._stale:
            return  # the next search installs the whole shard
        eng, removed = self._local, self._eng_removed
        if raw is None:
            eng.remove([j])
            removed.add(j)
            return
        # the engine's add writes the lowest removed slot (else the next empty one): the
        # removed slots below j are filled with placeholders, j emptied, the key added, the
        # placeholders removed again (the engine's ages and stream are never read)
        below = sorted(r for r in removed if r < j)
        if below:
            eng.add(np.ones((len(below), self.key_size), np.float32), np.zeros(len(below), int))
        if j < self._eng_count and j not in removed:
            eng.remove([j])
        pay = np.asarray(payload, np.float32)[None] if self.payload_size else None
        got = int(eng.add(np.asarray(raw, np.float32)[None], [int(label)], pay)[0])
        if got != j:  # (not reached: the engine mirrors the shard)
            self._stale = True
        if below:
            eng.remove(below)
        removed.discard(j)
        self._eng_count = max(self._eng_count, j + 1)

    def update(self, q: Any, labels: Any, payloads: Any = None) -> np.ndarray:
        """``KnowledgeMemory.update`` (Kaiser et al.'s rule) over the whole memory; returns
        the slot each query wrote (int64, (n,)), the single memory's slots."""
        q, y, pl = self._batch("update", q, labels, payloads)
        n, p = len(q), self.payload_size
        out = np.empty(n, np.int64)
        if n == 0:
            return out
        qn = _normalize_rows(q)
        self._ages[: self._count] += 1  # one step: every occupied age grows by one
        for j0 in range(0, n, _CHUNK):
            nc = min(_CHUNK, n - j0)
            kk = min(nc, self._count)
            cand = None
            if kk:
                ci, cs, _, cp, ck = self._search(q[j0 : j0 + nc], kk)
                cand = (ci, cs, cp, ck)
            touched = {}  # slot -> (key, payload) written by this chunk, in write order
            for j in range(nc):
                x = qn[j0 + j]
                best, bs = -1, np.float32(-np.inf)
                if cand is not None:
                    for t in range(kk):
                        s = int(cand[0][j, t])
                        if s >= 0 and s not in touched:
                            best, bs = s, cand[1][j, t]
                            break
                for s, (key, _) in touched.items():
                    v = _dot(x, key)
                    if v > bs or (v == bs and s < best):
                        best, bs = s, v
                pj = None if pl is None else pl[j0 + j]
                if best >= 0 and self._labels[best] == y[j0 + j]:
                    if best in touched:
                        old_key, old_pay = touched[best]
                    else:
                        t = int(np.flatnonzero(cand[0][j] == best)[0])
                        old_key, old_pay = cand[3][j, t], cand[2][j, t]
                    slot = best
                    raw = old_key + x
                    key = _normalize_rows(raw)
                    pay = old_pay if pj is None or not p else np.float32(0.5) * (old_pay + pj)
                else:
                    slot = self._oldest_slot()
                    key, raw = x, q[j0 + j]
                    self._labels[slot] = y[j0 + j]
                    pay = np.zeros(p, np.float32) if pj is None else pj
                touched.pop(slot, None)
                touched[slot] = (np.array(key, np.float32), np.array(pay, np.float32))
                self._store(slot, key, pay, raw, self._labels[slot])
                self._ages[slot] = 0
                out[j0 + j] = slot
        return out

    def add(self, q: Any, labels: Any, payloads: Any = None) -> np.ndarray:
        """``KnowledgeMemory.add``: each key in a slot of its own (empty slots first, else the
        oldest); one step of ages. Returns the slots written."""
        q, y, pl = self._batch("add", q, labels, payloads)
        qn = _normalize_rows(q)
        self._ages[: self._count] += 1
        out = np.empty(len(q), np.int64)
        for j in range(len(q)):
            slot = self._oldest_slot()
            self._labels[slot] = y[j]
            pay = np.zeros(self.payload_size, np.float32) if pl is None else pl[j]
            self._store(slot, qn[j], pay, q[j], y[j])
            self._ages[slot] = 0
            out[j] = slot
        return out

    def remove(self, ids: Any) -> None:
        """``KnowledgeMemory.remove``: empties the slots ``ids``; an id that is not an
        occupied slot, or given twice, raises ValueError and nothing changes."""
        ids = np.asarray(ids).reshape(-1)
        self._agree("remove", ids)
        if len(ids) and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ShardedMemory.remove: ids must be integers, got {ids.dtype}")
        ids = np.sort(ids.astype(np.int64))
        for i, j in enumerate(ids.tolist()):
            if j < 0 or j >= self._count or self._labels[j] == -1:
                raise ValueError(
                    f"ShardedMemory.remove: id {j} is not an occupied slot ({self.size} "
                    f"occupied among the slots [0, {self._count}))"
                )
            if i and ids[i - 1] == j:
                raise ValueError(f"ShardedMemory.remove: id {j} is given twice")
        for j in ids.tolist():
            self._labels[j] = -1
            self._ages[j] = 0
            self._store(j, np.zeros(self.key_size, np.float32), np.zeros(self.payload_size))
            self._n_removed += 1

    def clear(self) -> None:
        """Empties every slot and reseeds the stream (as ``KnowledgeMemory.clear``)."""
        self._reset()

    # ---------------------------------------------------------------- refused
    def build_index(self, *args, **kwargs):
        raise NotImplementedError(
            "ShardedMemory: the approximate IVF index is not sharded: one index's k-means "
            "runs over a sample of all the keys and its lists span the processes, so indexes "
            "built per process would return other neighbours than one index of the same "
            "data. A sharded memory searches exactly (each process scans capacity / P keys); "
            "use one KnowledgeMemory with build_index for approximate search"
        )

    @property
    def index(self):
        return None

    @property
    def key_dtype(self) -> str:
        return "float32"

    @key_dtype.setter
    def key_dtype(self, value) -> None:
        if value != "float32":
            raise ValueError(
                "ShardedMemory: key_dtype must be 'float32': compact keys choose each top-k by "
                "their own scores, which the processes do not exchange, so the merged result "
                f"would differ from one memory's; got {value!r}"
            )

    def read(self, *args, **kwargs):
        raise NotImplementedError(
            "ShardedMemory.read: the differentiable read is not sharded yet (use query, or "
            "one KnowledgeMemory)"
        )

    def loss(self, *args, **kwargs):
        raise NotImplementedError(
            "ShardedMemory.loss: the memory loss is not sharded yet (use one KnowledgeMemory)"
        )

    # ---------------------------------------------------------------- whole state
    def state(self):
        """(keys, labels, ages, payloads) of every slot, on every rank (a gather)."""
        keys = self._allgather(self._keys).reshape(self.capacity, self.key_size)
        pay = self._allgather(self._payloads).reshape(self.capacity, self.payload_size)
        labels = self._labels.copy()
        ages = self._ages.copy()
        labels[self._count :] = 0
        ages[self._count :] = 0
        return keys, labels, ages, pay

    def save(self, path) -> None:
        """Writes the single memory's file (format version 2), byte for byte: rank 0
        gathers each rank's keys and payloads in turn and writes a temporary file renamed
        over `path` (atomic); an error on rank 0 raises on every rank."""
        from metalearn.distributed import _world

        path = os.fspath(path)
        c, d, p = self._count, self.key_size, self.payload_size
        parts_k, parts_p = [], []
        for q in range(self._p):  # rank q's occupied rows, in slot order
            rows = min(max(c - q * self._m, 0), self._m)
            if q == self._r:
                kq, pq = self._keys[:rows], self._payloads[:rows]
            elif self._r == 0 and rows:
                kq = np.empty((rows, d), np.float32)
                _world().Recv(kq, source=q, tag=11)
                pq = np.empty((rows, p), np.float32)
                if p:
                    _world().Recv(pq, source=q, tag=12)
            else:
                kq = pq = None
            if self._r != 0 and q == self._r and rows:
                _world().Send(np.ascontiguousarray(kq), dest=0, tag=11)
                if p:
                    _world().Send(np.ascontiguousarray(pq), dest=0, tag=12)
            if self._r == 0 and rows:
                parts_k.append(kq)
                parts_p.append(pq)
        error = None
        if self._r == 0:
            keys = np.concatenate(parts_k) if parts_k else np.zeros((0, d), np.float32)
            pays = np.concatenate(parts_p) if parts_p else np.zeros((0, p), np.float32)
            data = _file_bytes(
                self.capacity,
                d,
                p,
                c,
                self.seed,
                self._rng,
                keys,
                self._labels[:c],
                self._ages[:c],
                pays,
            )
            try:
                _write_atomic(path, data)
            except OSError as exc:
                error = f"ShardedMemory.save: cannot write '{path}': {exc}"
        self._raise_together(error)

    def load(self, path) -> None:
        """Loads a memory file (written by one process or a sharded memory on any P) after
        the C loader's checks (magic, version, sizes, CRC-32s); a corrupt or differently
        sized file raises ValueError on every rank and changes nothing."""
        path = os.fspath(path)
        error = None
        try:
            with KnowledgeMemory.open(path, mmap_mode="r") as f:  # checks all of it
                sizes = (f.capacity, f.key_size, f.payload_size)
            if sizes != (self.capacity, self.key_size, self.payload_size):
                error = (
                    f"'{path}' holds a memory of capacity {sizes[0]}, key size {sizes[1]} and "
                    f"payload size {sizes[2]}; this memory has {self.capacity}, "
                    f"{self.key_size} and {self.payload_size}"
                )
        except (ValueError, OSError) as exc:
            error = str(exc)
        self._raise_together(error)
        _, cap, d, p, c, seed, rng, k_at, l_at, a_at, p_at = _read_layout(path)
        raw = np.memmap(path, np.uint8, mode="r")
        lo, hi = min(self._base, c), min(self._base + self._m, c)
        self._reset()
        self.seed, self._rng, self._count = int(seed), list(rng), int(c)
        self._labels[:c] = raw[l_at : l_at + 8 * c].view("<i8")
        self._ages[:c] = raw[a_at : a_at + 8 * c].view("<i8")
        self._n_removed = int(np.count_nonzero(self._labels[:c] == -1))
        self._keys[: hi - lo] = (
            raw[k_at + 4 * d * lo : k_at + 4 * d * hi].view("<f4").reshape(-1, d)
        )
        if p:
            self._payloads[: hi - lo] = (
                raw[p_at + 4 * p * lo : p_at + 4 * p * hi].view("<f4").reshape(-1, p)
            )
        del raw
        self._stale = True

    @classmethod
    def open(cls, path) -> "ShardedMemory":
        """A sharded memory with the sizes, contents and stream of the file at `path` (on any
        number of processes dividing its capacity)."""
        with KnowledgeMemory.open(os.fspath(path), mmap_mode="r") as f:
            cap, d, p = f.capacity, f.key_size, f.payload_size
        mem = cls(cap, d, p)
        mem.load(path)
        return mem


def _file_bytes(capacity, d, p, count, seed, rng, keys, labels, ages, payloads):
    """mmap.c's version-2 file of `count` slots."""
    slabs = [
        _slab(np.asarray(keys, np.float32).reshape(count * d)),
        _slab(np.asarray(labels, np.int64).reshape(count)),
        _slab(np.asarray(ages, np.int64).reshape(count)),
        _slab(np.asarray(payloads, np.float32).reshape(count * p)),
    ]
    crcs = [zlib.crc32(b) for b, _ in slabs]
    return _header(capacity, d, p, count, seed, rng, crcs) + b"".join(b + pad for b, pad in slabs)


def _write_atomic(path, data):
    """A temporary file beside `path`, fsynced and renamed over it (as io/weights.c)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def __dir__():
    # the public names only (not the modules and helpers imported or defined above)
    return list(__all__)
