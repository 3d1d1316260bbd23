"""What _memory_script.py and _memory_index_script.py share (both run under mpiexec by
test_sharded_memory.py, or alone: one process): a ShardedMemory checked against one
KnowledgeMemory of the same configuration, held by every rank as the reference, bit for
bit. Imported by name: mpiexec runs the scripts with this folder first on sys.path."""

import numpy as np

from metalearn import distributed


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def batch(rng, centres, d, p, n):
    """``n`` queries near ``centres`` (a fifth of the time half of them equal: ties
    between slots), labels in [0, 5) and, with payloads, payloads 70% of the time."""
    q = (centres[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    if rng.random() < 0.2:
        q[: n // 2] = q[0]
    y = rng.integers(0, 5, n)
    pl = rng.standard_normal((n, p)).astype(np.float32) if p and rng.random() < 0.7 else None
    return q, y, pl


def both(one, sh, name, *args, where=""):
    """Calls ``name`` with the same arguments on the reference ``one`` and on ``sh``;
    their results (a tuple's items one by one) have the same bits. Returns ``one``'s."""
    a, b = getattr(one, name)(*args), getattr(sh, name)(*args)
    for u, v in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
        assert same(u, v), f"{where}: {name}"
    return a


def same_state(one, sh, where):
    for a, b in zip(one.state(), sh.state()):
        assert same(a, b), where
    assert one.size == sh.size, where


def same_files(one, sh, folder, cap):
    """Saves both; the sharded file has the one process' bytes. Returns the one's path."""
    r = distributed.rank()
    one_path, sh_path = f"{folder}/one-{cap}-{r}.mem", f"{folder}/sharded-{cap}.mem"
    one.save(one_path)
    sh.save(sh_path)
    distributed.barrier()
    with open(one_path, "rb") as f1, open(sh_path, "rb") as f2:
        assert f1.read() == f2.read(), f"capacity {cap}: the files differ"
    return one_path


def go_on_alike(one, other, cap, d, n):
    """An update of ``n`` rows and a query after a load give the same bits. Returns the
    rows."""
    q = np.random.default_rng(cap).standard_normal((n, d)).astype(np.float32)
    both(one, other, "update", q, np.arange(n) % 3, where=f"capacity {cap}: after load")
    both(one, other, "query", q[:5], min(4, cap), where=f"capacity {cap}: after load")
    return q


def refused_together(mem, calls):
    """Each call, given different arguments on different ranks, raises ValueError on all
    of them; ``mem``'s state is unchanged."""
    before = [np.asarray(a).tobytes() for a in mem.state()]
    for call in calls:
        try:
            call()
        except ValueError as exc:
            assert "different arguments" in str(exc), exc
        else:
            raise AssertionError("ranks given different arguments were not refused")
    assert [np.asarray(a).tobytes() for a in mem.state()] == before


def finish(out):
    """Rank 0 writes "ok" to ``out`` once every rank got here."""
    distributed.barrier()
    if distributed.rank() == 0:
        with open(out, "w") as f:
            f.write("ok")
