"""Knowledge memory approximate search (issue 26): the IVF-flat index of KnowledgeMemory
(build_index, query(nprobe=)) against our exact single query and FAISS IndexIVFFlat (when
`faiss-cpu` is installed; optional, never imported by the library), on a seeded Gaussian
mixture (uniformly random keys have no neighbours worth approximating).

    python benchmarks/memory_ann.py [--entries 100000] [--dim 128] [--clusters 1000]
        [--spread 0.8] [--nlist 0] [--k 8] [--queries 200] [--rounds 5] [--target 0.95]
        [--clock wall|cpu]

Data: unit-norm cluster centres, points = centre + spread * N(0, I) / sqrt(dim), labels =
cluster; the queries are fresh points of the same mixture. recall@k is against our exact
search (which equals NumPy's top-k: tests/meta/test_memory_search.py). Both indexes train
on 64 keys per list (FAISS: the same count, its own sample), nlist = 4 sqrt(entries) unless
given. For each nprobe in the sweep: recall and one-query-at-a-time speed at one thread,
cycling through the queries (so the lists of one query are not kept hot in cache). "At
equal recall" takes each index's smallest nprobe reaching --target and times both with the
exact search interleaved (round r times each once): the best round (--stat best, the
default: the least disturbed on a shared machine) or the median. --clock cpu times by the
thread's CPU time (one thread searches), for machines where other jobs take the cores.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import metalearn as ml  # noqa: E402
from metalearn.memory import KnowledgeMemory  # noqa: E402

try:
    import faiss  # optional: pip install faiss-cpu
except ImportError:  # pragma: no cover
    faiss = None


def mixture(n, d, n_clusters, spread, rng, centres=None):
    if centres is None:
        centres = rng.standard_normal((n_clusters, d))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, n_clusters, n)
    x = centres[which] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), which, centres


CLOCK = time.perf_counter  # --clock cpu: time.thread_time


def qps(search, queries, min_time=0.2):
    """Single queries per second, cycling through `queries`, over >= min_time of CLOCK (wall
    time, or with --clock cpu the CPU time of this thread: on a machine shared with other
    jobs, the time the search ran rather than the time it waited for a core)."""
    n, t0 = 0, CLOCK()
    while True:
        search(queries[n % len(queries)][None])
        n += 1
        dt = CLOCK() - t0
        if dt >= min_time:
            return n / dt


def recall(a, b):
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.8)
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--stat", choices=["best", "median"], default="best")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.thread_time if a.clock == "cpu" else time.perf_counter
    rng = np.random.default_rng(0)
    x, which, centres = mixture(a.entries, a.dim, a.clusters, a.spread, rng)
    q, _, _ = mixture(a.queries, a.dim, a.clusters, a.spread, rng, centres)
    nlist = a.nlist or int(4 * np.sqrt(a.entries))
    ml.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    print(
        f"{a.entries} x {a.dim} keys, {a.clusters} clusters (spread {a.spread}), top-{a.k}, "
        f"nlist {nlist}, 1 thread, {os.cpu_count()} CPUs"
    )

    extra, ew, _ = mixture(10_000, a.dim, a.clusters, a.spread, rng, centres)
    t0 = time.perf_counter()
    mem = KnowledgeMemory.from_arrays(x, which, capacity=a.entries + len(extra))
    print(f"from_arrays: {time.perf_counter() - t0:.2f} s")
    exact = mem.query(q, a.k)[0]
    t0 = time.perf_counter()
    mem.build_index(nlist=nlist, nprobe=1, seed=0)
    print(f"metalearn build_index: {time.perf_counter() - t0:.2f} s (64 keys per list, 10 rounds)")
    fx = None
    if faiss is not None:
        quant = faiss.IndexFlatIP(a.dim)
        fx = faiss.IndexIVFFlat(quant, a.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        fx.cp.max_points_per_centroid = 64
        t0 = time.perf_counter()
        fx.train(x[rng.permutation(a.entries)[: 64 * nlist]])
        fx.add(x)
        print(f"FAISS IndexIVFFlat train + add: {time.perf_counter() - t0:.2f} s")

    def ours(p):
        return lambda v: mem.query(v, a.k, nprobe=p)

    def theirs(p):
        def f(v):  # (fx.nprobe is set before each timing: a call pays no attribute write)
            return fx.search(v, a.k)[1]

        return f

    exact_f = lambda v: mem.query(v, a.k, nprobe="exact")  # noqa: E731
    print(f"\nexact single query: {qps(exact_f, q):.0f} q/s")
    print("\n| nprobe | metalearn recall@8 | metalearn q/s | FAISS recall@8 | FAISS q/s |")
    print("|---|---|---|---|---|")
    best = {}
    for p in [p for p in a.nprobes if p <= nlist]:
        r_ours = recall(mem.query(q, a.k, nprobe=p)[0], exact)
        row = f"| {p} | {r_ours:.4f} | {qps(ours(p), q):.0f} |"
        if r_ours >= a.target and "ours" not in best:
            best["ours"] = (p, r_ours)
        if fx is not None:
            fx.nprobe = p
            r_f = recall(fx.search(q, a.k)[1], exact)
            row += f" {r_f:.4f} | {qps(theirs(p), q):.0f} |"  # (fx.nprobe = p above)
            if r_f >= a.target and "faiss" not in best:
                best["faiss"] = (p, r_f)
        else:
            row += " - | - |"
        print(row)

    fns = {"exact": exact_f}
    if "ours" in best:
        fns["metalearn IVF"] = ours(best["ours"][0])
    if "faiss" in best:
        fx.nprobe = best["faiss"][0]
        fns["FAISS IVFFlat"] = theirs(best["faiss"][0])
    times = {n: [] for n in fns}
    for _ in range(a.rounds):
        for n, f in fns.items():
            times[n].append(qps(f, q))
    stat = max if a.stat == "best" else statistics.median  # (q/s: the best round is the min time)
    med = {n: stat(t) for n, t in times.items()}
    print(f"\nAt recall@{a.k} >= {a.target} ({a.stat} of {a.rounds} interleaved rounds, 1 thread):")
    print("| search | nprobe | recall@8 | q/s | vs exact |")
    print("|---|---|---|---|---|")
    print(f"| exact | - | 1.0000 | {med['exact']:.0f} | 1.0x |")
    for key, name in (("ours", "metalearn IVF"), ("faiss", "FAISS IVFFlat")):
        if name in med:
            p, r = best[key]
            print(f"| {name} | {p} | {r:.4f} | {med[name]:.0f} | {med[name] / med['exact']:.1f}x |")

    # add throughput: exact (a fresh memory) and on the index (each key to its list)
    m2 = KnowledgeMemory.from_arrays(x, which, capacity=a.entries + len(extra))
    t0 = time.perf_counter()
    m2.add(extra, ew)
    print(f"\nmetalearn add, exact: {len(extra) / (time.perf_counter() - t0):.0f} keys/s")
    del m2
    t0 = time.perf_counter()
    mem.add(extra, ew)
    print(f"metalearn add, IVF: {len(extra) / (time.perf_counter() - t0):.0f} keys/s")
    if fx is not None:
        t0 = time.perf_counter()
        fx.add(extra)
        print(f"FAISS IVFFlat add: {len(extra) / (time.perf_counter() - t0):.0f} keys/s")


if __name__ == "__main__":
    main()
