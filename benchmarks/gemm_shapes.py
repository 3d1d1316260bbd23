"""GFLOP/s of ml.matmul on the shapes that set the GEMM's path thresholds.

    python benchmarks/gemm_shapes.py                 # every shape, 1 thread
    python benchmarks/gemm_shapes.py --threads 2     # the same split over two threads
    python benchmarks/gemm_shapes.py --shapes 784x128x256 5x256x56

csrc/kernels/gemm_config.h names, for each threshold of the path table
(csrc/kernels/gemm_path.c), the shapes on either side of it; this times them, so that a
threshold can be re-measured on the machine at hand before and after it is moved (rebuild
between the two runs; the rows of benchmarks/run_all.py that a threshold names are timed
there). Shapes are m x k x n, as run_all.py writes them; "A^T" / "B^T": that operand is
stored transposed (ml.matmul's transpose_a / transpose_b). Timing interleaves nothing:
run the before and after builds one after the other, twice, on a quiet machine.
"""

import argparse
import os
import re
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from metalearn import _core  # noqa: E402

# (m, k, n, transpose_a, transpose_b): what each bounds (gemm_config.h)
SHAPES = [
    # TINY_FLOPS: plain loops below, packing above
    (3, 5, 7, 0, 0),
    (8, 8, 8, 0, 0),
    (16, 16, 16, 0, 0),
    # DOTS_NT_MAX_N: A B^T with few columns as dot products
    (75, 784, 5, 0, 1),
    (10, 40, 10, 0, 1),
    # SMALL_MACS, SMALL_MAX_K, SMALL_KC: the unpacked kernel on MAML's per-task products
    # and few-shot shapes (the run_all.py sgemm rows 250x40x40, 5x784x256, 75x784x256)
    (10, 40, 40, 0, 0),
    (10, 10, 40, 0, 0),
    (40, 10, 40, 0, 0),
    (40, 250, 40, 1, 0),
    (250, 40, 40, 0, 0),
    (5, 784, 256, 0, 0),
    (75, 784, 256, 0, 0),
    # SMALL_LONG_K_MAX_M: past SMALL_MAX_K, few rows unpacked, many rows packed
    (16, 784, 256, 0, 0),
    (2400, 784, 256, 0, 0),
    # SMALL_AT_MAX_M: A^T with many rows packed
    (64, 256, 256, 1, 0),
    (784, 128, 256, 1, 0),
    # SMALL_W_MIN_M: 4 x 24 tiles for n % 16 == 8 from this many rows
    (5, 256, 56, 0, 0),
    (8, 256, 56, 0, 0),
    # the packed driver
    (512, 512, 512, 0, 0),
]


def parse(text):
    m, k, n = (int(v) for v in re.match(r"(\d+)x(\d+)x(\d+)", text).groups())
    return m, k, n, int("A^T" in text), int("B^T" in text)


def name(shape):
    m, k, n, ta, tb = shape
    return f"{m}x{k}x{n}" + (" A^T" if ta else "") + (" B^T" if tb else "")


def gflops(shape, budget=0.2, repeats=5):
    m, k, n, ta, tb = shape
    rng = np.random.default_rng(0)
    a = _core.as_tensor(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32))
    b = _core.as_tensor(rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32))

    def f():
        return _core.matmul(a, b, ta, tb)

    f()
    t0 = time.perf_counter()
    f()
    number = max(1, int(budget / max(time.perf_counter() - t0, 1e-7)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            f()
        times.append((time.perf_counter() - t0) / number)
    return 2.0 * m * n * k / statistics.median(times) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shapes", nargs="+", help="m x k x n [A^T] [B^T], e.g. 784x128x256A^T")
    args = p.parse_args(argv)
    _core.set_num_threads(args.threads)
    shapes = [parse(s) for s in args.shapes] if args.shapes else SHAPES
    print(f"kernel {_core.kernel_name()}, {args.threads} thread(s)")
    for shape in shapes:
        print(f"{name(shape):>22}  {gflops(shape):7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
