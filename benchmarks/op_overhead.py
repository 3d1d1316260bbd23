"""Per-op overhead from Python: metalearn vs PyTorch, side by side, as a ratio.

Times a tiny op (add of two 4-element tensors), a 40x40 matmul, and a small recorded
graph with its backward (40x40 linear + tanh + sum, then grad), median over repeats.
Both libraries run with the same number of threads (--threads, default 1).

    python benchmarks/op_overhead.py [--threads 1] [--repeats 7]

Target (issue 2): metalearn's tiny-op time at most a third of PyTorch's (ratio <= 0.33).
"""

import argparse
import os
import statistics
import sys
import timeit

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def median_time(fn, number, repeats):
    fn()  # warm up (allocator, caches)
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number


def metalearn_cases():
    import metalearn as ml

    a = ml.tensor(np.ones(4, np.float32))
    b = ml.tensor(np.ones(4, np.float32))
    m = ml.tensor(np.random.default_rng(0).standard_normal((40, 40)).astype(np.float32))
    w = ml.tensor(
        np.random.default_rng(1).standard_normal((40, 40)).astype(np.float32) * 0.1,
        requires_grad=True,
    )

    def graph():
        loss = ml.reduce_sum(ml.tanh(ml.matmul(m, w)))
        return ml.grad(loss, w)

    return {"add 4": lambda: a + b, "matmul 40x40": lambda: m @ m, "graph+grad 40x40": graph}


def torch_cases(threads):
    import torch

    torch.set_num_threads(threads)
    a, b = torch.ones(4), torch.ones(4)
    m = torch.from_numpy(np.random.default_rng(0).standard_normal((40, 40)).astype(np.float32))
    w = torch.from_numpy(
        np.random.default_rng(1).standard_normal((40, 40)).astype(np.float32) * 0.1
    )
    w.requires_grad_(True)

    def graph():
        loss = torch.tanh(m @ w).sum()
        return torch.autograd.grad(loss, w)

    return {"add 4": lambda: a + b, "matmul 40x40": lambda: m @ m, "graph+grad 40x40": graph}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    numbers = {"add 4": 100000, "matmul 40x40": 20000, "graph+grad 40x40": 5000}
    ours = {k: median_time(f, numbers[k], args.repeats) for k, f in metalearn_cases().items()}
    try:
        peer = {
            k: median_time(f, numbers[k], args.repeats)
            for k, f in torch_cases(args.threads).items()
        }
        import torch

        peer_name = f"torch {torch.__version__}"
    except ImportError:
        peer, peer_name = {}, "torch (not installed)"
    print(f"per-op overhead, {args.threads} thread(s); metalearn vs {peer_name}")
    print(f"{'case':<20} {'metalearn':>12} {'pytorch':>12} {'ratio ml/pt':>12}")
    for k in ours:
        pt = peer.get(k)
        pt_s = f"{pt * 1e6:10.2f}us" if pt else f"{'-':>12}"
        ratio = f"{ours[k] / pt:12.2f}" if pt else f"{'-':>12}"
        print(f"{k:<20} {ours[k] * 1e6:10.2f}us {pt_s} {ratio}")


if __name__ == "__main__":
    main()
