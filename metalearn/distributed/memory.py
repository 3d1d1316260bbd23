"""The knowledge memory sharded over the processes of the world (issue 24).

``ShardedMemory(capacity, key_size, payload_size=0, seed=0, key_dtype="float32")`` behaves as
one ``KnowledgeMemory`` of the same capacity, seed and key type, bit for bit (the slots every
call writes, the keys, labels, ages, payloads, the query answers, the index and the saved
file), while each of the P processes holds the keys and payloads of ``capacity / P`` slots:
slot s lives on rank ``s // (capacity / P)``, so a slot id is the one a single memory gives.

* ``query``: each rank finds the top-k of its own slots under the single memory's order
  (score down, then slot up), the candidates are gathered on every rank (``Allgather``: k
  per rank and query) and merged under the same order. The key scan's score of a key
  (``kernels/topk.c``: 16 lanes and a fixed tree) depends on the key and the query only, so
  it has the same bits on any rank; batches of more than 8 queries run the single memory's
  GEMM blocks (each rank its rows of them).
* compact keys (``key_dtype`` "float16" or "int8" with a scale per key): each rank keeps
  its slots' compact copies; the scan chooses each rank's top-k by the compact scores, the
  merge chooses the global top-k by them (the same order), and the chosen k are scored
  again in float32 and re-sorted, as the single memory's rescore.
* the approximate index (``build_index``, IVF-flat): the coarse quantiser is one object.
  The k-means sample is the single memory's (its seeded shuffle of the occupied slots,
  replayed on every rank); the sampled keys are gathered on rank 0, which runs the single
  memory's k-means on them in that order, and the centroids are broadcast. Each rank puts
  its own slots in their lists (the single memory's GEMM blocks and near-tie rule), and the
  list of every slot (8 bytes) is kept on every rank, like the labels; every write moves its
  slot to its key's list, as there. A query probes the same nprobe lists on every rank (the
  same centroid scores), each rank scans its slots in them, and the merge gives one index's
  answer.
* ``update``: Kaiser et al.'s rule over the whole memory, in chunks of 32 queries as the C
  update: the chunk's candidates (the nearest ``min(chunk, count)`` slots of every query, by
  the memory's own search: exact, compact or approximate, with their keys and payloads) are
  gathered once, then every rank applies the rule to the whole chunk in the same order (the
  nearest same-label key anywhere is merged into, else the globally oldest slot is written,
  ties drawn from the memory's own xoshiro256** stream, replayed here), and the owner of each
  written slot stores it.
* ``read`` and ``loss`` (differentiable): the merged top-k's keys and payloads (zero rows
  where a position is empty) reach every rank in the single memory's order, and the core's
  ops run on them as memory.c runs them (the recorded normalisation, the batched matmul,
  the masked softmax; k_pos / k_neg chosen as there): the same bits, and gradients of any
  order reach ``q``, which every rank holds.
* ``add``, ``remove``, ``clear``, ``state``, ``size``, ``predict``: as the single memory.
* ``save``: rank 0 writes the single memory's file (format version 2), byte for byte,
  atomically, the other ranks streaming their keys and payloads to it; ``load`` (and
  ``ShardedMemory.open``) read a file written by one process or by any P (an index is
  rebuilt with its parameters, as ``KnowledgeMemory.load``).

Every method is collective: every rank calls it, in the same order, with the same arguments
(checked: ranks that disagree raise ValueError together, before anything changes). The
labels, ages and lists (24 bytes per slot) are kept on every rank so that the rule's choice
of a slot needs no communication; the keys and payloads, the bulk, are sharded.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from typing import Any

import numpy as np

from metalearn.memory import KnowledgeMemory, _index_args

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


_LANES = 16  # LANES of kernels/topk.c


def _lanes_dot(a, b):
    """kernels/topk.c's key score of a and b (broadcast over the leading axes): position i
    summed into lane i mod 16 in order (a float32 product, then a float32 add: no FMA),
    then the lanes added in lanes_sum's fixed tree. A score depends on its two rows only,
    so it has the same bits on any rank and in any batch."""
    d = a.shape[-1]
    acc = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]) + (_LANES,), np.float32)
    for t in range(0, d, _LANES):
        w = min(_LANES, d - t)
        acc[..., :w] += np.multiply(a[..., t : t + w], b[..., t : t + w], dtype=np.float32)
    h = acc[..., :8] + acc[..., 8:]
    c = h[..., :4] + h[..., 4:]
    return (c[..., 0] + c[..., 2]) + (c[..., 1] + c[..., 3])


def _key_scores(qn, keys, scales=None, block=2048):
    """(n, m) scores of normalised queries qn (n, d) against keys (m, d) read as float32
    (float16 and int8 keys widen exactly), times the int8 scale of each key: the scan's
    ml__key_scores / _f16 / _i8."""
    n, m = len(qn), len(keys)
    out = np.empty((n, m), np.float32)
    for b0 in range(0, m, block):
        kb = keys[b0 : b0 + block].astype(np.float32)
        s = _lanes_dot(qn[:, None, :], kb[None])
        if scales is not None:
            s = np.multiply(scales[b0 : b0 + block][None], s, dtype=np.float32)
        out[:, b0 : b0 + len(kb)] = s
    return out


def _compact(keys, dtype):
    """memory.c's sync_compact of float32 rows: float16 (round to nearest even), or int8
    with scale = max|x| / 127 and x * (127 / max|x|) rounded to nearest even (a zero row:
    zeros, scale 0). Returns (compact rows, scales or None)."""
    keys = np.asarray(keys, np.float32)
    if dtype == "float16":
        return keys.astype(np.float16), None
    amax = np.abs(keys).max(axis=-1) if keys.shape[-1] else np.zeros(len(keys), np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    v = np.rint(np.multiply(keys, inv[:, None], dtype=np.float32))
    return np.clip(v, -127, 127).astype(np.int8), scale


_KEY_DTYPES = ("float32", "float16", "int8")
_IVF_GEMM_ROWS = 256  # IVF_GEMM_ROWS of memory.c: rows scored by one GEMM of an assignment


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
        key_size, payload_size, seed, key_dtype: as ``KnowledgeMemory``.

    Every method is collective (all ranks call it in the same order with the same
    arguments). ``build_index``, ``index``, ``nprobe`` and ``key_dtype`` are those of
    ``KnowledgeMemory``, with its results (see the module for how).
    """

    def __init__(
        self,
        capacity: int,
        key_size: int,
        payload_size: int = 0,
        seed: int = 0,
        key_dtype: str = "float32",
    ) -> None:
        from metalearn import distributed

        self._p, self._r = distributed.size(), distributed.rank()
        # the ranks agree on the arguments first, so a refusal below is on every rank
        self._agree("__init__", repr((capacity, key_size, payload_size, seed, key_dtype)))
        for name, v in (("capacity", capacity), ("key_size", key_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
                raise ValueError(f"ShardedMemory: {name} must be an int >= 1, got {v!r}")
        if isinstance(payload_size, bool) or int(payload_size) < 0:
            raise ValueError(f"ShardedMemory: payload_size must be >= 0, got {payload_size!r}")
        if key_dtype not in _KEY_DTYPES:
            raise ValueError(
                f"ShardedMemory: key_dtype must be 'float32', 'float16' or 'int8', got "
                f"{key_dtype!r}"
            )
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
        # the search engine of this rank's slots (its ages and stream are not used); with
        # compact keys its C scan holds their compact copies
        self._local = KnowledgeMemory(self._m, key_size, payload_size, key_dtype=key_dtype)
        self._dir = tempfile.mkdtemp(prefix="metalearn-shard-")
        self._key_dtype = key_dtype
        self._ivf = None  # the approximate index's parameters and centroids (every rank)
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
        # per slot, every rank: its list in the index (-1: in none); clear keeps the
        # centroids and empties the lists, as the single memory
        self._lists = np.full(self.capacity, -1, np.int64)

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
            f"payload_size={self.payload_size}, size={self.size}, processes={self._p}, "
            f"key_dtype={self._key_dtype!r})"
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
    def _search(self, q, k, allow=None, nprobe=0):
        """The merged top-k of raw queries q: (idx, sim, labels, payloads, keys).

        nprobe as the core's search: 0, the index's own (exact without an index); > 0, that
        many lists; -1, exact. Each rank finds the top-min(k, m) of its own slots under the
        single memory's order (score down, slot up), which holds every one of its slots in
        the global top-k; the candidates are gathered and merged under the same order. With
        compact keys the score that chooses is the compact one, and the chosen k are then
        scored again in float32 and re-sorted, as rescore_f32."""
        n, kl = len(q), min(k, self._m)
        rescore = False
        if self._ivf is not None and nprobe >= 0:
            idx, prim, sim = self._ivf_topk(q, kl, allow, nprobe or self._ivf["nprobe"])
            rescore = self._key_dtype != "float32"
        elif n <= _SCAN_MAX_QUERIES and self._key_dtype != "float32":
            idx, prim, sim = self._compact_topk(q, kl, allow)
            rescore = True
        elif n <= _SCAN_MAX_QUERIES:  # the key scan: each key scored alone, on any rank
            self._sync()
            idx, sim, _, _ = self._local.query(q, kl, allow)
            idx = np.where(idx >= 0, idx + self._base, -1)
            prim = sim
        else:
            idx, sim = self._gemm_topk(q, kl, allow)
            prim = sim
        rows = np.maximum(idx - self._base, 0)
        valid = (idx >= 0)[..., None]
        keys = np.where(valid, self._keys[rows], np.float32(0))
        pay = np.where(valid, self._payloads[rows], np.float32(0)).astype(np.float32)
        lab = np.where(idx >= 0, self._labels[np.maximum(idx, 0)], -1)
        g = [self._allgather(a) for a in (idx, prim, sim, lab, pay, keys)]
        # (n, P * kl) candidates per query, merged: valid first, score down, slot up
        gi, gp, gs, gl, gy, gk = (
            np.moveaxis(a, 0, 1).reshape((n, self._p * kl) + a.shape[3:]) for a in g
        )
        order = np.lexsort((gi, -gp.astype(np.float64), gi < 0), axis=-1)[:, :k]
        r = np.arange(n)[:, None]
        gi, gs = gi[r, order], gs[r, order]
        if rescore:  # the float32 scores of the chosen k decide their order
            again = np.lexsort((gi, -gs.astype(np.float64), gi < 0), axis=-1)
            order = order[r, again]
            gi, gs = gi[r, again], gs[r, again]
        out = [gi, gs, gl[r, order], gy[r, order], gk[r, order]]
        if order.shape[1] < k:  # fewer candidates than k: padded as the single memory
            pad = k - order.shape[1]
            fills = (-1, -np.inf, -1, 0.0, 0.0)
            out = [
                np.concatenate([a, np.full((n, pad) + a.shape[2:], f, a.dtype)], axis=1)
                for a, f in zip(out, fills)
            ]
        return out

    @staticmethod
    def _best_row(si, c, kl):
        """The top-kl of scores si of the candidates c (ascending), score down then
        candidate up: (positions in c, their scores). A partition finds the kl-th score
        first, so only those at least as high are sorted."""
        if len(c) > kl:
            keep = np.flatnonzero(si >= np.partition(si, len(c) - kl)[len(c) - kl])
            c, si = c[keep], si[keep]
        o = np.lexsort((c, -si.astype(np.float64)))[:kl]
        return c[o], si[o]

    def _best(self, prim, ok, slots, kl):
        """This rank's top-kl of scores prim (n, L) of `slots` (L, ascending), where ok (n,
        L): (idx, scores), score down then slot up, padded with -1 / -inf."""
        n = len(prim)
        idx = np.full((n, kl), -1, np.int64)
        sc = np.full((n, kl), -np.inf, np.float32)
        for i in range(n):
            c = np.flatnonzero(ok[i])
            c, si = self._best_row(prim[i, c], c, kl)
            idx[i, : len(c)] = slots[c]
            sc[i, : len(c)] = si
        return idx, sc

    def _allowed(self, labels, allow):
        ok = labels != -1
        if allow is not None:
            ok &= np.isin(labels, np.asarray(allow, np.int64))
        return ok

    def _scores(self, qn, rows):
        """The scan's scores of normalised queries against this rank's rows (local indices):
        of their compact copies when the keys are compact (made from the float32 keys as
        sync_compact makes them), else of the float32 keys."""
        if self._key_dtype == "float32":
            return _key_scores(qn, self._keys[rows])
        ck, cs = _compact(self._keys[rows], self._key_dtype)
        return _key_scores(qn, ck, cs)

    def _f32_scores(self, qn, idx):
        """rescore_f32's float32 score of each chosen slot idx (n, kl) (-inf where -1)."""
        rows = self._keys[np.maximum(idx - self._base, 0)]
        s = _lanes_dot(qn[:, None, :], rows)
        return np.where(idx >= 0, s, np.float32(-np.inf)).astype(np.float32)

    def _compact_topk(self, q, kl, allow):
        """The key scan over compact keys on this rank: (idx, compact scores, float32). The
        rank's search engine (a KnowledgeMemory of the same key type, whose C scan keeps the
        compact copies) chooses its top-kl by the compact scores and rescores them; the
        compact scores of those kl, which the merge orders by, are computed here."""
        self._sync()
        idx, sim, _, _ = self._local.query(q, kl, allow)
        idx = np.where(idx >= 0, idx + self._base, -1)
        qn = _normalize_rows(q)
        n, d = len(q), self.key_size
        ck, cs = _compact(
            self._keys[np.maximum(idx - self._base, 0)].reshape(-1, d), self._key_dtype
        )
        prim = _lanes_dot(qn[:, None, :], ck.astype(np.float32).reshape(n, kl, d))
        if cs is not None:
            prim = np.multiply(cs.reshape(n, kl), prim, dtype=np.float32)
        prim = np.where(idx >= 0, prim, np.float32(-np.inf)).astype(np.float32)
        return idx, prim, sim

    def _ivf_topk(self, q, kl, allow, nprobe):
        """The approximate search on this rank: per query the nprobe lists whose centroids
        score highest (the same on every rank: the centroids are one object), this rank's
        slots in them scored as the single memory's scan_list scores them (compact or
        float32), the top-kl under (score down, slot up). (idx, scores, float32 scores)."""
        n, qn = len(q), _normalize_rows(q)
        cen = self._ivf["centroids"]
        L = self._local_count()
        lists = self._lists[self._base : self._base + L]
        base_ok = self._allowed(self._labels[self._base : self._base + L], allow) & (lists >= 0)
        cs = _key_scores(qn, cen)  # coarse_probe: score down, list up
        probes = np.lexsort(
            (np.broadcast_to(np.arange(len(cen)), cs.shape), -cs.astype(np.float64)), axis=-1
        )[:, :nprobe]
        idx = np.full((n, kl), -1, np.int64)
        prim = np.full((n, kl), -np.inf, np.float32)
        for i in range(n):  # this rank's slots in the query's lists, scored as scan_list
            hit = np.zeros(len(cen), bool)
            hit[probes[i]] = True
            c = np.flatnonzero(base_ok & hit[np.maximum(lists, 0)])
            c, si = self._best_row(self._scores(qn[i : i + 1], c)[0], c, kl)
            idx[i, : len(c)] = c + self._base
            prim[i, : len(c)] = si
        sim = self._f32_scores(qn, idx) if self._key_dtype != "float32" else prim
        return idx, prim, sim

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
        ok = np.broadcast_to(self._allowed(self._labels[lo:hi], allow), scores.shape)
        return self._best(scores, ok, np.arange(lo, hi), kl)

    def query(self, q: Any, k: int = 1, labels: Any = None, nprobe: Any = None) -> Any:
        """``KnowledgeMemory.query`` over every rank's slots: ``(indices, similarities,
        labels, payloads)``, the single memory's bits (ties: the lower slot first). With an
        index (``build_index``) the search is the approximate one, ``nprobe`` as there."""
        self._agree("query", q, repr(k), labels, repr(nprobe))
        if nprobe is None:
            np_arg = 0
        elif isinstance(nprobe, str) and nprobe == "exact":
            np_arg = -1
        elif isinstance(nprobe, (int, np.integer)) and not isinstance(nprobe, bool):
            np_arg = int(nprobe)
            if np_arg < 1:
                raise ValueError(f"ShardedMemory.query: nprobe must be >= 1, got {np_arg}")
            if self._ivf is None:
                raise ValueError(
                    f"ShardedMemory.query: nprobe={np_arg} asks for the approximate index, "
                    "but the memory has none (build_index first)"
                )
            if np_arg > self._ivf["nlist"]:
                raise ValueError(
                    f"ShardedMemory.query: nprobe must be in [1, nlist={self._ivf['nlist']}], "
                    f"got {np_arg}"
                )
        else:
            raise TypeError(
                f"ShardedMemory.query: nprobe must be an int, None or 'exact', got {nprobe!r}"
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
        idx, sim, lab, pay, _ = self._search(q, k, allow, np_arg)
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
                if self._ivf is not None:  # key_written: the slot moves to its key's list
                    self._lists[slot] = self._nearest_list(np.asarray(key, np.float32))
                self._ages[slot] = 0
                out[j0 + j] = slot
        return out

    def add(self, q: Any, labels: Any, payloads: Any = None) -> np.ndarray:
        """``KnowledgeMemory.add``: each key in a slot of its own (empty slots first, else the
        oldest); one step of ages. Returns the slots written."""
        q, y, pl = self._batch("add", q, labels, payloads)
        qn = _normalize_rows(q)
        # with an index, the lists of all the keys first (memory.c's assign_lists)
        lists = (
            self._assign(qn, 0, len(qn), 0, len(qn)) if self._ivf is not None and len(q) else None
        )
        self._ages[: self._count] += 1
        out = np.empty(len(q), np.int64)
        for j in range(len(q)):
            slot = self._oldest_slot()
            self._labels[slot] = y[j]
            pay = np.zeros(self.payload_size, np.float32) if pl is None else pl[j]
            self._store(slot, qn[j], pay, q[j], y[j])
            if lists is not None:
                self._lists[slot] = lists[j]
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
            self._lists[j] = -1  # an emptied slot leaves its list
            self._ages[j] = 0
            self._store(j, np.zeros(self.key_size, np.float32), np.zeros(self.payload_size))
            self._n_removed += 1

    def clear(self) -> None:
        """Empties every slot and reseeds the stream (as ``KnowledgeMemory.clear``)."""
        self._reset()

    # ---------------------------------------------------------------- the index
    def _nearest_list(self, x):
        """nearest_lists of one normalised key: the centroid of the highest key-scan score,
        ties to the lower list."""
        return int(np.argmax(_lanes_dot(x[None, :], self._ivf["centroids"])))

    def _assign(self, x, lo, hi, base, total):
        """memory.c's assign_gemm(exact) of rows [lo, hi) of a matrix whose row r is x[r -
        base] for r in [lo, hi), of `total` rows (the rows of other ranks: zeros): GEMMs over blocks of
        IVF_GEMM_ROWS rows from row 0, each of the single memory's shape with these rows in
        their places (a GEMM element depends on its operands and its place in the shape),
        the best list by GEMM score, and a near tie (a gap within the two roundings) decided
        by the key scan's score. Returns the lists of rows [lo, hi)."""
        from metalearn import _core

        cen = self._ivf["centroids"]
        nl, d = cen.shape
        margin = np.float32(np.float32(4.4) * np.float32(d)) * np.float32(2.0**-24)
        out = np.empty(hi - lo, np.int64)
        for r0 in range((lo // _IVF_GEMM_ROWS) * _IVF_GEMM_ROWS, hi, _IVF_GEMM_ROWS):
            nr = min(_IVF_GEMM_ROWS, total - r0)
            a, b = max(r0, lo), min(r0 + nr, hi)
            blk = np.zeros((nr, d), np.float32)
            blk[a - r0 : b - r0] = x[a - base : b - base]
            s = np.asarray(_core.matmul(blk, cen, False, True))[a - r0 : b - r0]
            best = np.argmax(s, axis=1)
            b1 = s[np.arange(len(s)), best]
            b2 = np.partition(s, nl - 2, axis=1)[:, nl - 2] if nl > 1 else np.full_like(b1, -np.inf)
            gap = (b1 - b2).astype(np.float32)
            for i in np.flatnonzero(~(gap > margin)):
                best[i] = self._nearest_list(np.ascontiguousarray(x[a - base + i]))
            out[a - lo : b - lo] = best
        return out

    def build_index(
        self, nlist: int, nprobe: int = 1, seed: int = 0, n_iter: int = 10, sample: Any = None
    ) -> Any:
        """``KnowledgeMemory.build_index`` over every rank's keys: the index one memory of
        the same contents builds, bit for bit. The k-means sample is the one the single
        memory draws (its seeded shuffle of the occupied slots, replayed on every rank); its
        keys are gathered and the k-means runs on rank 0 exactly as one memory runs it (on
        those keys in that order); the centroids are broadcast, so the coarse quantiser is
        one object on every rank. Each rank then assigns its own slots to their lists (the
        single memory's GEMM blocks and near-tie rule) and the lists are shared (8 bytes a
        slot on every rank, as the labels). Returns the ``IVFIndex``."""
        from metalearn.memory import IVFIndex  # noqa: F401 (the type returned)

        self._agree("build_index", repr((nlist, nprobe, seed, n_iter, sample)))
        what = "ShardedMemory.build_index"
        nlist, nprobe, seed, n_iter, sample = _index_args(what, nlist, nprobe, seed, n_iter, sample)
        live = self.size
        if nprobe < 1 or nprobe > nlist:
            raise ValueError(f"{what}: nprobe must be in [1, nlist={nlist}], got {nprobe}")
        if n_iter < 1 or n_iter > 1000:
            raise ValueError(f"{what}: n_iter must be in [1, 1000], got {n_iter}")
        if nlist < 1 or nlist > live:
            raise ValueError(
                f"{what}: nlist must be in [1, size={live}] (each centroid starts at a stored "
                f"key), got {nlist}"
            )
        if sample and (sample < nlist or sample > live):
            raise ValueError(
                f"{what}: sample must be in [nlist={nlist}, size={live}] (0: 64 per list), "
                f"got {sample}"
            )
        self._install_index(nlist, nprobe, seed, n_iter, sample)
        return self.index

    def _install_index(self, nlist, nprobe, seed, n_iter, sample):
        from metalearn.distributed import _world

        d, live = self.key_size, self.size
        ns = sample if sample else min(64 * nlist, live)
        # the sample: the first ns of the seeded shuffle of the occupied slots
        pool = np.flatnonzero(self._labels[: self._count] != -1)
        rng = _xoshiro_seed(seed)
        for i in range(ns):
            r = i + _rng_below(rng, live - i)
            pool[i], pool[r] = pool[r], pool[i]
        pick = pool[:ns]
        mine = (pick >= self._base) & (pick < self._base + self._m)
        part = np.zeros((ns, d), np.float32)
        part[mine] = self._keys[pick[mine] - self._base]
        if self._p > 1:
            g = np.empty((self._p, ns, d), np.float32) if self._r == 0 else None
            _world().Gather(part, g, root=0)
            xs = g[pick // self._m, np.arange(ns)] if self._r == 0 else None
        else:
            xs = part
        cen = np.empty((nlist, d), np.float32)
        if self._r == 0:
            # the single memory's k-means on exactly these keys in this order: one memory of
            # ns slots whose own shuffle (seed, sample=ns) draws them in that order
            perm = np.arange(ns)
            rng = _xoshiro_seed(seed)
            for i in range(ns):
                r = i + _rng_below(rng, ns - i)
                perm[i], perm[r] = perm[r], perm[i]
            keys = np.empty((ns, d), np.float32)
            keys[perm] = xs
            km = KnowledgeMemory(ns, d)
            path = os.path.join(self._dir, "sample.mem")
            z = np.zeros(ns, np.int64)
            with open(path, "wb") as f:
                f.write(
                    _file_bytes(ns, d, 0, ns, 0, _xoshiro_seed(0), keys, z, z, np.zeros((ns, 0)))
                )
            km.load(path)
            km.build_index(nlist, 1, seed, n_iter, ns)
            cen[:] = km.index.centroids
        if self._p > 1:
            _world().Bcast(cen, root=0)
        self._ivf = {
            "nlist": nlist,
            "nprobe": nprobe,
            "seed": seed,
            "n_iter": n_iter,
            "sample": sample,
            "centroids": cen,
        }
        self._assign_all()

    def _assign_all(self):
        """Every occupied slot to its list: this rank's slots by _assign, then shared."""
        lo, hi = self._base, self._base + self._local_count()
        mine = np.full(self._m, -1, np.int64)
        if hi > lo:
            mine[: hi - lo] = self._assign(self._keys, lo, hi, self._base, self._count)
            mine[: hi - lo][self._labels[lo:hi] == -1] = -1
        self._lists = self._allgather(mine).reshape(self.capacity)

    @property
    def index(self) -> Any:
        """The approximate index (``metalearn.memory.IVFIndex``, the same on every rank), or
        None: exact search. Assign None to drop it (collective)."""
        from metalearn.memory import IVFIndex

        v = self._ivf
        if v is None:
            return None
        return IVFIndex(
            v["nlist"],
            v["nprobe"],
            v["seed"],
            v["n_iter"],
            v["sample"],
            False,
            v["centroids"].copy(),
            self._lists.copy(),
        )

    @index.setter
    def index(self, value) -> None:
        self._agree("index", repr(value is None))
        if value is not None:
            raise ValueError(
                "ShardedMemory.index can only be set to None (exact search); build an "
                "index with build_index(nlist=..., nprobe=..., seed=...)"
            )
        self._ivf = None
        self._lists[:] = -1

    @property
    def nprobe(self) -> Any:
        """The index's number of lists a query scans (None without an index)."""
        return None if self._ivf is None else self._ivf["nprobe"]

    @nprobe.setter
    def nprobe(self, value) -> None:
        self._agree("nprobe", repr(value))
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"ShardedMemory.nprobe must be an int, got {value!r}")
        if self._ivf is None:
            raise ValueError("ShardedMemory.nprobe: the memory has no index (build_index first)")
        if not 1 <= int(value) <= self._ivf["nlist"]:
            raise ValueError(
                f"ShardedMemory.nprobe: nprobe must be in [1, nlist={self._ivf['nlist']}], "
                f"got {value}"
            )
        self._ivf["nprobe"] = int(value)

    @property
    def key_dtype(self) -> str:
        """What the key scan reads: "float32", "float16" or "int8" (as ``KnowledgeMemory``;
        setting it is collective)."""
        return self._key_dtype

    @key_dtype.setter
    def key_dtype(self, value) -> None:
        self._agree("key_dtype", repr(value))
        if value not in _KEY_DTYPES:
            raise ValueError(
                f"ShardedMemory.key_dtype must be 'float32', 'float16' or 'int8', got {value!r}"
            )
        self._key_dtype = value
        self._local.key_dtype = value  # the engine's C scan keeps the compact copies

    # ---------------------------------------------------------------- differentiable
    def _diff_queries(self, what, q, k, default):
        """(q as a Tensor or float32 array, its values, k) checked as the core's
        select_topk checks them."""
        from metalearn.memory import _k, _queries

        qt = _queries(q)
        a = np.asarray(qt)
        if a.ndim != 2 or a.shape[1] != self.key_size:
            raise ValueError(
                f"{what}: expected queries of shape (n, {self.key_size}), got {a.shape}"
            )
        k = _k(k, default, self.capacity)
        if not 1 <= k <= self.capacity:
            raise ValueError(f"{what}: k must be in [1, capacity={self.capacity}], got {k}")
        self._queries(what.split(".")[-1], a)  # finite
        return qt, np.ascontiguousarray(a, np.float32), k

    @staticmethod
    def _normalized(qt):
        """memory.c's recorded normalize_rows: q * (sum(q^2, -1) + eps) ** -0.5, the same
        ops, so the same bits and the same gradients."""
        from metalearn import _core

        ss = _core.reduce_sum(_core.square(qt), axis=-1, keepdims=True)
        return _core.mul(qt, _core.pow(_core.add_scalar(ss, _NORM_EPS), -0.5))

    def read(
        self, q: Any, k: Any = None, temperature: float = 1.0, return_weights: bool = False
    ) -> Any:
        """``KnowledgeMemory.read``, the differentiable soft read, over every rank's slots:
        the top-k neighbours (the memory's own search: exact, compact or the index) and
        their keys and payloads are gathered to every rank in the single memory's order,
        and the softmax read runs on them with the core's ops, as the single memory runs
        it: the same bits, and the gradient reaches ``q`` (held by every rank) as there."""
        from metalearn import _core

        what = "ShardedMemory.read"
        self._agree("read", np.asarray(q, np.float32), repr((k, temperature, return_weights)))
        qt, a, k = self._diff_queries(what, q, k, 8)
        t = np.float32(temperature)
        if not (t > 0) or not np.isfinite(t):
            raise ValueError(
                f"{what}: temperature must be a positive finite number, got {temperature}"
            )
        n, d, p = len(a), self.key_size, self.payload_size
        idx, pay, keys = self._neighbours(a, k)
        mask = np.where(idx >= 0, np.float32(0), np.float32(-1e30)).astype(np.float32)
        qn = _core.reshape(self._normalized(qt), (n, 1, d))
        sims = _core.reshape(_core.matmul(qn, keys, False, True), (n, k))
        w = _core.softmax(_core.add(_core.mul_scalar(sims, float(np.float32(1) / t)), mask), -1)
        if p == 0:
            return w
        o = _core.reshape(_core.matmul(_core.reshape(w, (n, 1, k)), pay, False, False), (n, p))
        return (o, w) if return_weights else o

    def _neighbours(self, a, k):
        """The merged top-k of the queries a: (idx, payloads, keys), zero rows where -1."""
        n = len(a)
        if n == 0:
            d, p = self.key_size, self.payload_size
            z = np.zeros((0, k), np.int64)
            return z, np.zeros((0, k, p), np.float32), np.zeros((0, k, d), np.float32)
        idx, _, _, pay, keys = self._search(a, k)
        return idx, np.ascontiguousarray(pay, np.float32), np.ascontiguousarray(keys, np.float32)

    def loss(
        self, q: Any, labels: Any, k: Any = None, margin: float = 0.1, reduction: str = "mean"
    ) -> Any:
        """``KnowledgeMemory.loss`` (Kaiser et al.'s memory loss) over every rank's slots:
        k_pos and k_neg are chosen among the merged top-k as the single memory chooses them
        (the first with the query's label, the first with another), gathered to every
        rank, and the loss runs on them with the core's ops: the same bits and gradients."""
        from metalearn import _core

        what = "ShardedMemory.loss"
        self._agree("loss", np.asarray(q, np.float32), labels, repr((k, margin, reduction)))
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                f"{what}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
            )
        m = np.float32(margin)
        if not np.isfinite(m):
            raise ValueError(f"{what}: margin must be finite, got {margin}")
        qt, a, k = self._diff_queries(what, q, k, 256)
        y = np.asarray(labels).reshape(-1)
        if len(y) and not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{what}: labels must be integers, got {y.dtype}")
        n = len(a)
        if len(y) != n:
            raise ValueError(f"{what}: {n} queries but {len(y)} labels")
        idx, _, keys = self._neighbours(a, k)
        lab = np.where(idx >= 0, self._labels[np.maximum(idx, 0)], -1)
        kpos = np.zeros((n, self.key_size), np.float32)
        kneg = np.zeros((n, self.key_size), np.float32)
        for i in range(n):
            pos = neg = -1
            for t in range(k):
                if idx[i, t] < 0:
                    break
                if lab[i, t] == y[i]:
                    pos = t if pos < 0 else pos
                elif neg < 0:
                    neg = t
            if pos >= 0:
                kpos[i] = keys[i, pos]
            if neg >= 0:
                kneg[i] = keys[i, neg]
        qn = self._normalized(qt)
        sp = _core.reduce_sum(_core.mul(qn, kpos), axis=-1, keepdims=False)
        sn = _core.reduce_sum(_core.mul(qn, kneg), axis=-1, keepdims=False)
        per = _core.relu(_core.add_scalar(_core.sub(sn, sp), float(m)))
        if reduction == "none":
            return per
        if reduction == "mean":
            return _core.reduce_mean(per)
        return _core.reduce_sum(per)

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
        # the file holds no index: as KnowledgeMemory.load, one with the same parameters is
        # built over the loaded keys, or the index is dropped when they are too few
        ix, self._ivf = self._ivf, None
        if ix is not None and self.size >= ix["nlist"] and ix["sample"] <= self.size:
            self._install_index(ix["nlist"], ix["nprobe"], ix["seed"], ix["n_iter"], ix["sample"])

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
