"""Knowledge memory search speed: queries/s of KnowledgeMemory.query (exact top-k cosine
search in C: GEMM over cache-sized key blocks + partial top-k) against NumPy
(q @ K.T + argpartition + sort of the k best) and torch.topk(q @ K.T) when PyTorch is
installed, on the same normalised keys, same machine, same thread count.

    python benchmarks/memory_query.py [--entries 100000] [--dim 128] [--k 8]
"""

import argparse
import os
import time

import numpy as np

from metalearn import _core
from metalearn.memory import KnowledgeMemory


def best_time(fn, repeat, min_time=0.2):
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / n)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    m, d, k = args.entries, args.dim, args.k
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    mem = KnowledgeMemory(m, d, seed=0)
    # distinct labels: every update writes a new slot, so the memory holds exactly `keys`
    for s in range(0, m, 4096):
        mem.update(keys[s : s + 4096], np.arange(s, min(s + 4096, m)))
    K = mem.state()[0]  # the stored (normalised) keys, for the baselines
    assert len(mem) == m

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        Kt = torch.from_numpy(K)
    except ImportError:
        torch = None
    print(
        f"memory: {m} entries, d={d}, k={k}; kernel {_core.kernel_name() if hasattr(_core, 'kernel_name') else '?'}; "
        f"{os.cpu_count()} CPUs"
        + (f", torch {torch.__version__} threads={torch.get_num_threads()}" if torch else "")
    )
    for n in args.batches:
        q = rng.standard_normal((n, d)).astype(np.float32)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)

        def ours():
            return mem.query(q, k)

        def numpy_ref():
            s = qn @ K.T
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            ps = np.take_along_axis(s, part, 1)
            order = np.argsort(-ps, axis=1, kind="stable")
            return np.take_along_axis(part, order, 1), np.take_along_axis(ps, order, 1)

        idx, sim, _, _ = ours()
        ridx, rsim = numpy_ref()
        assert np.allclose(sim, rsim, atol=1e-4), "top-k similarities differ from NumPy"
        t_ours = best_time(ours, args.repeat)
        t_np = best_time(numpy_ref, args.repeat)
        line = (
            f"batch {n:4d}: metalearn {n / t_ours:10.0f} q/s ({t_ours * 1e3:7.2f} ms)  "
            f"numpy {n / t_np:10.0f} q/s  ratio numpy/metalearn time {t_np / t_ours:5.2f}x"
        )
        if torch is not None:
            qt = torch.from_numpy(qn)

            def torch_ref():
                with torch.no_grad():
                    return torch.topk(qt @ Kt.T, k, dim=1)

            t_torch = best_time(torch_ref, args.repeat)
            line += f"  torch {n / t_torch:10.0f} q/s  ratio torch/metalearn time {t_torch / t_ours:5.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
