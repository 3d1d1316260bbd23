"""Run under mpiexec by test_sharded_memory.py (or alone: one process): a ShardedMemory
against one KnowledgeMemory of the same capacity and seed, held by every rank as the
reference, on random streams of updates, adds, removals and queries; then the saved file's
bytes, and loading a one-process file. Writes "ok" to argv[1] on rank 0 when all agree."""

import sys

import numpy as np

from metalearn import distributed
from metalearn.distributed import ShardedMemory
from metalearn.memory import KnowledgeMemory


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def stream(cap, d, p, seed, steps, rs):
    rng = np.random.default_rng(rs)
    one = KnowledgeMemory(cap, d, p, seed=seed)
    sh = ShardedMemory(cap, d, p, seed=seed)
    live = set()  # the occupied slots, as the writes returned them
    centres = rng.standard_normal((6, d)).astype(np.float32)
    for it in range(steps):
        op = rng.integers(0, 10)
        n = int(rng.choice([1, 3, 8, 9, 20, 40]))  # the key scan (<= 8) and the GEMM
        q = (centres[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
        if rng.random() < 0.2:
            q[: n // 2] = q[0]  # equal keys: ties between slots
        y = rng.integers(0, 5, n)
        pl = rng.standard_normal((n, p)).astype(np.float32) if p and rng.random() < 0.7 else None
        where = f"capacity {cap}, step {it}"
        if op < 5:
            slots = one.update(q, y, pl)
            assert same(slots, sh.update(q, y, pl)), where
            live.update(slots.tolist())
        elif op < 6:
            slots = one.add(q, y, pl)
            assert same(slots, sh.add(q, y, pl)), where
            live.update(slots.tolist())
        elif op < 7 and len(live) > 2:
            ids = rng.choice(sorted(live), 2, replace=False)
            one.remove(ids)
            sh.remove(ids)
            live.difference_update(ids.tolist())
        else:
            k = int(rng.integers(1, min(cap, 12) + 1))
            allow = None if rng.random() < 0.7 else rng.integers(0, 5, 2)
            for a, b in zip(one.query(q, k, allow), sh.query(q, k, allow)):
                assert same(a, b), where
        for a, b in zip(one.state(), sh.state()):
            assert same(a, b), where
        assert one.size == sh.size == len(sh), where
    return one, sh


def main(out, folder):
    P, r = distributed.size(), distributed.rank()
    for cap, d, p in [(8, 5, 0), (12, 16, 3), (40, 33, 2), (8256, 20, 1)]:
        if cap % P:
            continue
        for s in range(2):
            one, sh = stream(cap, d, p, s, 40, s + 10 * cap)
        # the saved file has one process' bytes
        one_path, sh_path = f"{folder}/one-{cap}-{r}.mem", f"{folder}/sharded-{cap}.mem"
        one.save(one_path)
        sh.save(sh_path)
        distributed.barrier()
        with open(one_path, "rb") as f1, open(sh_path, "rb") as f2:
            assert f1.read() == f2.read(), f"capacity {cap}: the files differ"
        # a one-process file loads on P processes, and the stream goes on alike
        back = ShardedMemory.open(one_path)
        for a, b in zip(one.state(), back.state()):
            assert same(a, b)
        q = np.random.default_rng(cap).standard_normal((40, d)).astype(np.float32)
        y = np.arange(40) % 3
        assert same(one.update(q, y), back.update(q, y))
        for a, b in zip(one.query(q[:5], min(4, cap)), back.query(q[:5], min(4, cap))):
            assert same(a, b)
    if P > 1:
        try:
            ShardedMemory(4 * P + 1, 3)
        except ValueError as exc:
            assert "not divisible" in str(exc), exc
        else:
            raise AssertionError("a capacity that P does not divide was accepted")
        # ranks given different arguments refuse together, and nothing changes
        before = [np.asarray(a).tobytes() for a in back.state()]
        try:
            back.update(q[:2], [r, 1])
        except ValueError as exc:
            assert "different arguments" in str(exc), exc
        else:
            assert P == 1, "ranks with different arguments were not refused"
        if P > 1:
            assert [np.asarray(a).tobytes() for a in back.state()] == before
    distributed.barrier()
    if r == 0:
        with open(out, "w") as f:
            f.write("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
