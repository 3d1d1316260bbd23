"""Knowledge memory search speed (issue 26): exact top-k cosine search of
KnowledgeMemory.query against the measured memory bandwidth and against FAISS IndexFlatIP
(when `faiss-cpu` is installed; an optional extra, never imported by the library) or else
NumPy (q @ K.T + argpartition), on the same normalised keys, same machine, same thread
count.

    python benchmarks/memory_query.py [--entries 100000] [--dim 128] [--k 8]
        [--batches 1 16 256] [--threads 1 2] [--rounds 7]

        [--stat min] [--small 1000 10000]

Bandwidth: a STREAM-like read, numpy's sum over the first keys-size bytes of a 256 MiB
array (the same bytes as the keys, so as cache-resident as they are), and over all 256 MiB
(from DRAM), timed in the same rounds. A query's keys-per-second figure is the bytes of keys
one call streams over its time (for a batch: once per call).

The contenders are timed interleaved (round r times each once, each over >= 0.1 s of
calls) and each figure is the minimum (--stat min, the default: the run least disturbed
by other processes on a shared machine) or the median over the rounds; the ratio is of
those figures. --small: the latency of one query at these memory sizes (where a call's fixed
cost shows), against FAISS IndexFlatIP, one thread.
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


DRAM_FLOATS = 64 << 20  # 256 MiB: larger than any cache


def per_call(fn, min_time=0.1):
    """Seconds per call of fn, over >= min_time of calls."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


STAT = min  # set from --stat


def interleaved(fns, rounds):
    """{name: min (or median) seconds per call} over `rounds` interleaved rounds."""
    for f in fns.values():
        f()  # warm up
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            times[name].append(per_call(f))
    return {name: STAT(t) for name, t in times.items()}


def fill(m, d, keys):
    mem = KnowledgeMemory(m, d, seed=0)
    # distinct labels: every update writes a new slot, so the memory holds exactly `keys`
    for s in range(0, m, 4096):
        mem.update(keys[s : s + 4096], np.arange(s, min(s + 4096, m)))
    assert len(mem) == m
    return mem


def set_threads(t):
    ml.set_num_threads(t)
    if faiss is not None:
        faiss.omp_set_num_threads(t)


def small_rows(args, rng):
    """One query's latency (us) at small memories, ours against FAISS (or NumPy), 1 thread."""
    set_threads(1)
    d, k = args.dim, args.k
    for m in args.small:
        keys = rng.standard_normal((m, d)).astype(np.float32)
        mem = KnowledgeMemory.from_arrays(keys, np.arange(m))
        K = mem.state()[0][:m]
        qs = rng.standard_normal((64, d)).astype(np.float32)
        qn = qs / np.linalg.norm(qs, axis=1, keepdims=True)
        it = {"i": 0}

        def ours():
            it["i"] = (it["i"] + 1) % 64
            return mem.query(qs[it["i"] : it["i"] + 1], k)

        if faiss is not None:
            index = faiss.IndexFlatIP(d)
            index.add(K)

            def ref():
                it["i"] = (it["i"] + 1) % 64
                return index.search(qn[it["i"] : it["i"] + 1], k)
        else:

            def ref():
                it["i"] = (it["i"] + 1) % 64
                s_ = qn[it["i"] : it["i"] + 1] @ K.T
                return np.argpartition(-s_, k - 1, axis=1)[:, :k]

        med = interleaved({"ours": ours, "ref": ref}, args.rounds)
        print_row(
            (
                f"exact, {m} keys, 1 query, 1 thread (latency)",
                1 / med["ours"],
                1 / med["ref"],
                med["ref"] / med["ours"],
                f"{med['ours'] * 1e6:.1f} us vs {med['ref'] * 1e6:.1f} us",
                "fixed cost per call",
            )
        )


def exact_rows(args, mem, K, rng, stream, dram):
    d, k = K.shape[1], args.k
    index = None
    if faiss is not None:
        index = faiss.IndexFlatIP(d)
        index.add(K)
    rows = []
    for t in args.threads:
        set_threads(t)
        for n in args.batches:
            q = rng.standard_normal((n, d)).astype(np.float32)
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)

            def ours():
                return mem.query(q, k)

            if index is not None:
                ref_name = "faiss"

                def ref():
                    return index.search(qn, k)[1]
            else:
                ref_name = "numpy"

                def ref():
                    s = qn @ K.T
                    return np.argpartition(-s, k - 1, axis=1)[:, :k]

            agree = np.mean(
                [len(set(a) & set(b)) / k for a, b in zip(ours()[0], np.asarray(ref()))]
            )
            med = interleaved(
                {"ours": ours, "ref": ref, "stream": stream, "dram": dram}, args.rounds
            )
            bw = K.nbytes / med["stream"]
            dram_bw = 4 * DRAM_FLOATS / med["dram"]
            ours_bw = K.nbytes / med["ours"]
            rows.append(
                (
                    f"exact, {n} quer{'y' if n == 1 else 'ies'}, {t} thread{'s' if t > 1 else ''}",
                    n / med["ours"],
                    n / med["ref"],
                    med["ref"] / med["ours"],
                    f"{ours_bw / 1e9:.1f} GB/s = {100 * ours_bw / bw:.0f}% of {bw / 1e9:.1f} "
                    f"({100 * ours_bw / dram_bw:.0f}% of DRAM {dram_bw / 1e9:.1f})",
                    f"{ref_name}; same neighbours {100 * agree:.1f}%",
                )
            )
            print_row(rows[-1])
    return rows


def compact_rows(args, keys, mem, rng, stream):
    """float16 / int8 keys against float32, one query: q/s (interleaved medians) and
    recall@k of the compact search against the exact one."""
    m, d, k = keys.shape[0], keys.shape[1], args.k
    mems = {"float32": mem}
    for dt in ("float16", "int8"):
        mems[dt] = KnowledgeMemory.from_arrays(keys, np.arange(m), key_dtype=dt)
    q = rng.standard_normal((200, d)).astype(np.float32)
    exact = [set(mem.query(q[i], k)[0][0]) for i in range(len(q))]
    rows = []
    for t in args.threads:
        set_threads(t)
        fns = {dt: (lambda mm=mm: mm.query(q[0], k)) for dt, mm in mems.items()}
        med = interleaved(fns, args.rounds)
        for dt, mm in mems.items():
            recall = np.mean(
                [len(set(mm.query(q[i], k)[0][0]) & exact[i]) / k for i in range(len(q))]
            )
            rows.append(
                (
                    f"{dt} keys, 1 query, {t} thread{'s' if t > 1 else ''}",
                    1 / med[dt],
                    1 / med["float32"],
                    med["float32"] / med[dt],
                    f"recall@{k} {recall:.4f}",
                    "reference: our float32 keys",
                )
            )
            print_row(rows[-1])
    return rows


def print_row(r):
    print(f"| {r[0]} | {r[1]:,.0f} | {r[2]:,.0f} | {r[3]:.2f}x | {r[4]} | {r[5]} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--parts", nargs="+", default=["exact", "compact"])
    ap.add_argument("--stat", choices=["min", "median"], default="min")
    ap.add_argument("--small", type=int, nargs="*", default=[1000, 10000])
    args = ap.parse_args()
    global STAT
    STAT = min if args.stat == "min" else statistics.median
    m, d = args.entries, args.dim
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    mem = fill(m, d, keys)
    K = mem.state()[0]  # the stored (normalised) keys, for the baselines
    big = np.ones(max(K.size, DRAM_FLOATS), np.float32)  # >= 256 MiB: a read from DRAM

    def dram():
        return big[:DRAM_FLOATS].sum()

    # the bandwidth of the same read, scaled to the keys' bytes in exact_rows
    def stream_keys():
        return big[: K.size].sum()

    print(
        f"# memory: {m} keys x {d}, top-{args.k}; kernel {ml._core.kernel_name()}; "
        f"{os.cpu_count()} CPUs; reference: "
        f"{'faiss ' + faiss.__version__ + ' IndexFlatIP' if faiss else 'numpy'}; "
        f"{args.stat} of {args.rounds} interleaved rounds"
    )
    print("| row | metalearn q/s | reference q/s | ratio | keys streamed (of DRAM read) | notes |")
    print("|---|---|---|---|---|---|")
    if args.small:
        small_rows(args, rng)
    if "exact" in args.parts:
        exact_rows(args, mem, K, rng, stream_keys, dram)
    if "compact" in args.parts:
        compact_rows(args, keys, mem, rng, stream_keys)


if __name__ == "__main__":
    main()
