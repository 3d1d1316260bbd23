"""Run under mpiexec by test_sharded_memory.py (or alone: one process): a ShardedMemory
against one KnowledgeMemory of the same capacity and seed, held by every rank as the
reference, on random streams of updates, adds, removals and queries; then the saved file's
bytes, and loading a one-process file. Writes "ok" to argv[1] on rank 0 when all agree."""

import sys

import numpy as np

from metalearn import distributed
from metalearn.distributed import ShardedMemory
from metalearn.memory import KnowledgeMemory

from _memory_common import (
    batch,
    both,
    finish,
    go_on_alike,
    refused_together,
    same_files,
    same_state,
)


def stream(cap, d, p, seed, steps, rs):
    rng = np.random.default_rng(rs)
    one = KnowledgeMemory(cap, d, p, seed=seed)
    sh = ShardedMemory(cap, d, p, seed=seed)
    live = set()  # the occupied slots, as the writes returned them
    centres = rng.standard_normal((6, d)).astype(np.float32)
    for it in range(steps):
        op = rng.integers(0, 10)
        n = int(rng.choice([1, 3, 8, 9, 20, 40]))  # the key scan (<= 8) and the GEMM
        q, y, pl = batch(rng, centres, d, p, n)
        where = f"capacity {cap}, step {it}"
        if op < 5:
            live.update(both(one, sh, "update", q, y, pl, where=where).tolist())
        elif op < 6:
            live.update(both(one, sh, "add", q, y, pl, where=where).tolist())
        elif op < 7 and len(live) > 2:
            ids = rng.choice(sorted(live), 2, replace=False)
            both(one, sh, "remove", ids, where=where)
            live.difference_update(ids.tolist())
        else:
            k = int(rng.integers(1, min(cap, 12) + 1))
            allow = None if rng.random() < 0.7 else rng.integers(0, 5, 2)
            both(one, sh, "query", q, k, allow, where=where)
        same_state(one, sh, where)
        assert sh.size == len(sh), where
    return one, sh


def main(out, folder):
    P, r = distributed.size(), distributed.rank()
    for cap, d, p in [(8, 5, 0), (12, 16, 3), (40, 33, 2), (8256, 20, 1)]:
        if cap % P:
            continue
        for s in range(2):
            one, sh = stream(cap, d, p, s, 40, s + 10 * cap)
        # a one-process file loads on P processes, and the stream goes on alike
        back = ShardedMemory.open(same_files(one, sh, folder, cap))
        same_state(one, back, f"capacity {cap}: loaded")
        q = go_on_alike(one, back, cap, d, 40)
    if P > 1:
        try:
            ShardedMemory(4 * P + 1, 3)
        except ValueError as exc:
            assert "not divisible" in str(exc), exc
        else:
            raise AssertionError("a capacity that P does not divide was accepted")
        # ranks given different arguments refuse together, and nothing changes
        refused_together(back, [lambda: back.update(q[:2], [r, 1])])
    finish(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
