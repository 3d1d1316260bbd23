"""Run under mpiexec by test_sharded_memory.py (or alone: one process): a ShardedMemory with
compact keys (float16, int8) and/or the approximate index (IVF) against one KnowledgeMemory
configured the same way (capacity, seed, key_dtype, build_index's parameters), held by
every rank as the reference, on random streams of updates, adds, removals, queries (exact
and approximate, with and without a label filter), index rebuilds, clears and key-type
changes, and the differentiable read and loss (values, first and second order gradients);
then the saved file's bytes and a load (the index rebuilt). Writes "ok" to argv[1]
on rank 0 when all agree."""

import sys

import numpy as np

import metalearn as ml
from metalearn import distributed
from metalearn.distributed import ShardedMemory
from metalearn.memory import KnowledgeMemory

from _memory_common import (
    batch,
    both,
    finish,
    go_on_alike,
    refused_together,
    same,
    same_files,
    same_state,
)


def same_index(one, sh, where):
    a, b = one.index, sh.index
    assert (a is None) == (b is None), where
    if a is None:
        return
    for name, u, v in zip(a._fields, a, b):
        assert same(u, v) if isinstance(u, np.ndarray) else u == v, f"{where}: index.{name}"


def diff_results(mem, q0, y, k):
    """The soft read, the memory loss, and first and second order gradients to q."""
    q = ml.tensor(q0, requires_grad=True)
    out = [mem.read(q, k=k, temperature=0.7, return_weights=mem.payload_size > 0)]
    out = list(out[0]) if isinstance(out[0], tuple) else out
    loss = mem.loss(q, y, k=k, margin=0.3, reduction="none")
    out.append(loss)
    total = ml.reduce_sum(
        out[0] * ml.tensor(np.linspace(-1, 1, out[0].size, dtype=np.float32).reshape(out[0].shape))
    )
    total = total + ml.reduce_sum(loss)
    (g,) = ml.grad(total, q, create_graph=True)
    (h,) = ml.grad(ml.reduce_sum(g * g), q)
    return out + [g, h]


def stream(cap, d, p, seed, steps, rs, dtype, nlist):
    rng = np.random.default_rng(rs)
    one = KnowledgeMemory(cap, d, p, seed=seed, key_dtype=dtype)
    sh = ShardedMemory(cap, d, p, seed=seed, key_dtype=dtype)
    live = set()
    grads = 0  # comparisons of non-zero second order gradients
    centres = rng.standard_normal((6, d)).astype(np.float32)
    for it in range(steps):
        where = f"capacity {cap}, {dtype}, nlist {nlist}, step {it}"
        if nlist and one.index is None and one.size >= 4 * nlist:
            kw = dict(nprobe=int(rng.integers(1, nlist + 1)), seed=int(rng.integers(0, 99)))
            kw["n_iter"] = int(rng.integers(1, 6))
            if rng.random() < 0.5:
                kw["sample"] = int(rng.integers(nlist, one.size + 1))
            one.build_index(nlist, **kw)
            sh.build_index(nlist, **kw)
            same_index(one, sh, where + " (build)")
        op = rng.integers(0, 20)
        n = int(rng.choice([1, 3, 8, 9, 20, 40]))  # the key scan (<= 8) and the GEMM
        if op == 19:
            n = 300  # an add over more than one of assign_lists' GEMM blocks
        q, y, pl = batch(rng, centres, d, p, n)
        if op < 9:
            live.update(both(one, sh, "update", q, y, pl, where=where).tolist())
        elif op < 10 or op == 19:
            live.update(both(one, sh, "add", q, y, pl, where=where).tolist())
        elif op < 12 and len(live) > 2:
            ids = rng.choice(sorted(live), 2, replace=False)
            both(one, sh, "remove", ids, where=where)
            live.difference_update(ids.tolist())
        elif op == 12 and rng.random() < 0.3:
            both(one, sh, "clear", where=where)
            live.clear()
        elif op == 13 and one.index is not None:
            if rng.random() < 0.5:
                one.nprobe = sh.nprobe = int(rng.integers(1, nlist + 1))
            else:  # dropped, rebuilt later from other keys
                one.index = sh.index = None
        elif op == 14:
            t = str(rng.choice(["float32", "float16", "int8"]))
            one.key_dtype = sh.key_dtype = t
        else:
            k = int(rng.integers(1, min(cap, 12) + 1))
            allow = None if rng.random() < 0.7 else rng.integers(0, 5, 2)
            probes = [None, "exact"]
            if one.index is not None:
                probes.append(int(rng.integers(1, nlist + 1)))
            for nprobe in probes:
                both(one, sh, "query", q, k, allow, nprobe, where=f"{where}, nprobe={nprobe}")
            if rng.random() < 0.5:  # the differentiable read and loss, and their gradients
                got = diff_results(sh, q, y, k)
                want = diff_results(one, q, y, k)
                grads += bool(np.abs(np.asarray(want[-1])).max() > 0)
                for a, b in zip(want, got):
                    assert same(a, b), f"{where}: read/loss"
        same_state(one, sh, where)
        assert one.key_dtype == sh.key_dtype, where
        same_index(one, sh, where)
    assert grads > 0, f"capacity {cap}: no non-zero gradient was compared"
    return one, sh


def main(out, folder):
    P, r = distributed.size(), distributed.rank()
    cases = [
        (16, 5, 0, "float16", 0),
        (40, 33, 2, "int8", 0),
        (48, 20, 1, "float32", 3),
        (48, 16, 0, "float16", 4),
        (96, 24, 2, "int8", 5),
        (2064, 20, 1, "float16", 8),
    ]
    for cap, d, p, dtype, nlist in cases:
        if cap % P:
            continue
        one, sh = stream(cap, d, p, 1, 40, cap + nlist, dtype, nlist)
        # the saved file has one process' bytes; a load rebuilds the index on both
        one_path = same_files(one, sh, folder, cap)
        one.load(one_path)
        sh.load(one_path)
        same_index(one, sh, f"capacity {cap}: after load")
        q = go_on_alike(one, sh, cap, d, 20)
        same_index(one, sh, f"capacity {cap}: after load and update")
    # keys halfway between two centroids: their GEMM scores tie within rounding, so the
    # list is decided by the key scan's score (assign_lists' near-tie rule, and update's)
    for dtype in ("float32", "int8"):
        one = KnowledgeMemory(64, 16, seed=4, key_dtype=dtype)
        sh = ShardedMemory(64, 16, seed=4, key_dtype=dtype)
        x = np.random.default_rng(5).standard_normal((24, 16)).astype(np.float32)
        where = f"{dtype}: keys between centroids"
        both(one, sh, "add", x, np.arange(24) % 4, where=where)
        one.build_index(4, 2, seed=1)
        sh.build_index(4, 2, seed=1)
        c = one.index.centroids
        mid = np.array([c[a] + c[b] for a in range(4) for b in range(a + 1, 4)] * 3, np.float32)
        both(one, sh, "add", mid, np.arange(18) % 4, where=where)
        both(one, sh, "update", -mid, np.arange(18) % 3, where=where)
        both(one, sh, "update", mid, np.arange(18) % 5, where=where)
        same_index(one, sh, where)
        both(one, sh, "query", mid, 5, where=where)
    if P > 1:
        # ranks given different options refuse together, and nothing changes
        refused_together(
            sh,
            [
                lambda: sh.build_index(2 + r),
                lambda: setattr(sh, "key_dtype", ["float16", "int8"][r % 2]),
                lambda: sh.query(q[:2], 2, nprobe=1 + r % 2),
                lambda: ShardedMemory(8 * P, 4, key_dtype=["float16", "int8"][r % 2]),
            ],
        )
    finish(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
