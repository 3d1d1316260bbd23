"""Every benchmark row of issues 6 and 20 in one command, metalearn side by side with PyTorch.

    python benchmarks/run_all.py                  # full run, 1 and 2 threads
    python benchmarks/run_all.py --quick          # CI-sized (each row a fraction of a second)
    python benchmarks/run_all.py --rows sgemm protonet --threads 1
    python benchmarks/run_all.py --callgrind      # instructions per MAML sinusoid meta-iteration

Rows (issue 6):
  sgemm 2048^3 and the few-shot shapes 250x40x40, 5x784x256, 75x784x256 (m x k x n), in
      GFLOP/s, against the measured FMA peak of one core (a C loop of independent FMAs,
      compiled here when a C compiler is present) and torch.matmul;
  dense b32 / b256: AdaptiveNeuralNetwork 784-128-10, Adam, cross-entropy, a training step,
      against PyTorch eager;
  maml-sin 2nd / 1st: MAML sinusoid (1-40-40-1, K=10, meta-batch 25), MAML.fit, against a
      plain PyTorch loop over tasks and PyTorch vectorised over tasks (bmm and vmap;
      functions of benchmarks/maml_sinusoid.py);
  maml-omniglot: MAML, Omniglot MLP (256-128-64-64 + BN), 5-way 1-shot, 15 queries per
      class, one inner step (lr 0.4), second order, meta-batch 32, against a PyTorch loop;
  protonet: conv4 (64 filters, BN) on 28x28x1, 20-way 5-shot, 5 queries per class (200
      images per episode), forward + backward + Adam, against PyTorch (target: issue 20's);
  add: per-op overhead from Python, a 4-element add, against PyTorch;
  adapt: MAML.adapt on the sinusoid MLP (a copy of the model, one inner step, K=10)
      against PyTorch's copy.deepcopy and one autograd step (no target: it watches the
      per-call overhead of adapting one task);
  lstm train / lstm maml 2nd (issue 22): LSTM(128) over 50 steps, batch 32, a training step
      and a second-order MAML step through it, against PyTorch eager (benchmarks/lstm.py).

Rows (issue 20; --quick shrinks the meta-batch / episode, the row's name says to what):
  maml-conv4 / fomaml-conv4 / anil-conv4 / metasgd-conv4: conv4 (64 filters, BN) on
      28x28x1, 5-way 1-shot, 15 queries, one inner step (lr 0.4), meta-batch 32, MAML
      second order, FOMAML, ANIL (head-only inner loop) and Meta-SGD (learned per-weight
      rates), against PyTorch functional loops (benchmarks/conv_maml.py; that each loop
      computes metalearn's meta-gradient is tests/system/test_benchmark_peers.py's check);
  maml84 / maml84-peak: MAML conv4-32 on 84x84x3, 5-way 1-shot, 15 queries, meta-batch 4,
      5 steps, second order, and its peak memory, each library in its own process
      (benchmarks/conv84.py; the peak row is not run under --quick);
  proto30 / resnet12: ProtoNet conv4-64 84x84x3 30-way 1-shot and ResNet-12 5-way 5-shot
      training episodes, 15 queries (benchmarks/conv84.py);
  bnpool: the conv4 block after its convolution (batch norm, max pool 2, relu), forward and
      first-order backward, at the ProtoNet 20w5s episode's first block (200 x 28x28x64):
      the memory-bound part the pool fold works on (no target);
  reptile-sin: Reptile with the demo's settings (1-40-40-1, K=10, 10 queries, meta-batch
      25, inner lr 0.02, 5 steps, epsilon 1) against a PyTorch loop of Reptile, and
      Reptile's meta-iteration against metalearn's FOMAML at the same inner steps
      (reptile/fomaml; ratio = FOMAML's time / Reptile's, target: within 1.5x);
  metalearner: the article's system (MetaLearner: MAML + knowledge memory + performance
      predictor) per meta-iteration, Omniglot 5-way 1-shot shapes, meta-batch 16, against
      its MAML alone (what the memory and the predictor cost; metalearn only).

Images are random (speed does not depend on pixel values; no dataset is needed).

Timing on a shared machine is noisy: every row interleaves the two libraries (a chunk of
metalearn, a chunk of each peer, repeated) and reports medians of the chunks, and ratios
from the same run. `ratio` is how many times metalearn is faster (peer time / metalearn
time, or metalearn GFLOP/s / peer GFLOP/s); `target` is issue 6's.

Works without PyTorch (prints metalearn only).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

try:
    import torch
except ImportError:  # metalearn only
    torch = None

import metalearn as ml  # noqa: E402
from metalearn import _core  # noqa: E402


def set_threads(n):
    setter = getattr(ml, "set_num_threads", None) or getattr(_core, "set_num_threads", None)
    if setter:
        setter(n)
    # the core's own count (ml_set_num_threads: threads inside one GEMM / convolution),
    # in case the binding's setter does not forward to it
    try:
        import ctypes

        fn = ctypes.CDLL(_core.__file__).ml_set_num_threads
        fn.argtypes = [ctypes.c_int]
        fn(n)
    except (OSError, AttributeError):
        pass
    if torch is not None:
        torch.set_num_threads(n)


# ------------------------------------------------------------------ the process's allocator
# PyTorch's CPU tensors come from malloc. glibc hands blocks above its mmap threshold back to
# the kernel on free, and trims the top of its heap, so a step that frees and re-allocates
# the same activations pays their page faults and zeroing every time. How much depends on
# what ran before in the process: glibc raises the threshold (up to 32 MiB) after freeing a
# mapped block, so one row's PyTorch time depended on the rows before it. ProtoNet 20w5s:
# 420 ms an episode in a fresh process, 255 ms after the conv rows; maml84: 4.2 s against
# 2.9 s. PyTorch's CPU tuning guide has its users swap in a caching allocator (jemalloc,
# tcmalloc); "steady" gets that from glibc itself: nothing is mapped per block or trimmed,
# freed memory is reused. metalearn keeps its own pool of storage (csrc/core/tensor.c), so
# its times barely move. Both libraries share the process, so both run under it.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MALLOC_MODES = ("steady", "glibc")


def add_malloc_option(parser):
    parser.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="steady",
        help="steady (default): glibc keeps freed memory for reuse, as a caching allocator "
        "would, so the PyTorch peer does not pay page faults per step and a row does not "
        "depend on the rows before it; glibc: its defaults (PyTorch as installed, in whatever "
        "state the process is in)",
    )


def set_malloc(mode):
    """Applies `mode` (MALLOC_MODES) to this process; returns what was applied: "steady
    ...", or what runs instead (glibc's defaults, ASan's allocator, a C library without
    mallopt)."""
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc mode must be one of {MALLOC_MODES}, got {mode!r}")
    if mode == "glibc":
        return "glibc defaults"
    import ctypes
    import ctypes.util

    try:
        if hasattr(ctypes.CDLL(None), "__asan_init"):  # ASan's malloc replaces glibc's
            return "the sanitizer's allocator (mallopt does not reach it)"
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "the C library's defaults (no mallopt)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return (
        "steady (mallopt: no mmap per block, no trim)" if ok else "glibc defaults (mallopt refused)"
    )


# ------------------------------------------------------------------ timing


def interleaved(fns, budget, repeats, warmup=1):
    """fns: {name: callable}. Runs `warmup` calls of each, sizes each one's chunk to about
    `budget` seconds, then runs `repeats` rounds in which each callable runs its chunk
    (names interleaved). Returns the median seconds per call of each."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    number = {k: calibrate(f, budget) for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(number[k]):
                f()
            times[k].append((time.perf_counter() - t0) / number[k])
    return {k: statistics.median(v) for k, v in times.items()}


def calibrate(f, budget):
    """Calls per chunk so that a chunk takes about `budget` seconds."""
    f()
    t0 = time.perf_counter()
    f()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(budget / dt))


# ------------------------------------------------------------------ FMA peak

FMA_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
/* 10 independent accumulator chains (FMA latency 4-5 cycles x 2 ports), 8 floats each. */
__attribute__((target("avx2,fma"))) static double run(long iters) {
    __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0, a8 = a0, a9 = a0;
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c); a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c); a9 = _mm256_fmadd_ps(a9, m, c);
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                         "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a8, a9)));
    return out[0];
}
int main(void) {
    long iters = 20000000;
    double best = 0;
    for (int r = 0; r < 7; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        volatile double sink = run(iters);
        (void)sink;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        double gf = iters * 10.0 * 16.0 / s / 1e9;
        if (gf > best) best = gf;
    }
    printf("%.2f\n", best);
    return 0;
}
"""

_PEAK = {}
MALLOC = "glibc defaults"  # what main() set (set_malloc)


def fma_peak():
    """GFLOP/s of one core running only FMAs (best of 7), or None without a C compiler."""
    if "v" in _PEAK:
        return _PEAK["v"]
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    val = None
    if cc:
        d = tempfile.mkdtemp(prefix="ml_fma_")
        try:
            src, exe = os.path.join(d, "fma.c"), os.path.join(d, "fma")
            with open(src, "w") as f:
                f.write(FMA_C)
            subprocess.run([cc, "-O2", src, "-o", exe], check=True, capture_output=True)
            val = float(subprocess.run([exe], check=True, capture_output=True, text=True).stdout)
        except (subprocess.CalledProcessError, ValueError, OSError):
            val = None
        finally:
            shutil.rmtree(d, ignore_errors=True)
    _PEAK["v"] = val
    return val


# ------------------------------------------------------------------ rows


def _rate_row(row, unit, t, targets):
    """A table row of rates (calls per second) from `interleaved` timings: metalearn's
    under "ml", each peer's under its own name."""
    return dict(
        row=row,
        unit=unit,
        ml=1 / t["ml"],
        peers={k: 1 / v for k, v in t.items() if k != "ml"},
        higher=True,
        targets=targets,
    )


def _us_row(row, unit, t, targets):
    """A table row of microseconds a call (lower is better) from `interleaved` timings."""
    return dict(
        row=row,
        unit=unit,
        ml=t["ml"] * 1e6,
        peers={k: v * 1e6 for k, v in t.items() if k != "ml"},
        higher=False,
        targets=targets,
    )


# Each row function returns a list of result dicts:
#   {row, unit, ml, peers: {name: value}, higher_is_better, targets: {name: target text}}


def row_sgemm(threads, quick):
    out = []
    shapes = [(2048, 2048, 2048), (250, 40, 40), (5, 784, 256), (75, 784, 256)]
    if quick:
        shapes[0] = (512, 512, 512)
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        ma, mb = _core.as_tensor(a), _core.as_tensor(b)
        fns = {"ml": lambda: _core.matmul(ma, mb)}
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fns["torch.matmul"] = lambda: torch.matmul(ta, tb)
        reps = 3 if quick else (5 if m >= 1024 else 9)
        t = interleaved(fns, 0.02 if quick else 0.15, reps)
        gf = {kk: 2.0 * m * n * k / v / 1e9 for kk, v in t.items()}
        peers = {kk: v for kk, v in gf.items() if kk != "ml"}
        targets = {"torch.matmul": ">= 1.0x"}
        if m == 2048 or (quick and m == 512):
            pk = fma_peak()
            if pk:
                peers["FMA peak x%d" % threads] = pk * threads
                targets["FMA peak x%d" % threads] = ">= 0.85 (1 thread)" if threads == 1 else "-"
        out.append(
            dict(
                row=f"sgemm {m}x{k}x{n}",
                unit="GFLOP/s",
                ml=gf["ml"],
                peers=peers,
                higher=True,
                targets=targets,
            )
        )
    return out


def row_dense(threads, quick):
    import dense_step

    out = []
    for batch, target in ((32, ">= 3x"), (256, ">= 1.2x")):
        fns = {"ml": dense_step.metalearn_step(batch)}
        if torch is not None:
            fns["torch eager"] = dense_step.torch_step(batch)
        t = interleaved(fns, 0.02 if quick else 0.2, 3 if quick else 7, warmup=5)
        out.append(_rate_row(f"dense b{batch}", "steps/s", t, {"torch eager": target}))
    return out


def row_maml_sin(threads, quick):
    import maml_sinusoid as ms

    out = []
    for order, fo, tl, tv in (("2nd", False, ">= 50x", ">= 10x"), ("1st", True, ">= 30x", ">= 5x")):
        fns = {"ml": ms.metalearn_step(fo)}
        if torch is not None:
            fns["torch loop"] = ms.torch_loop_step(fo)
            fns["torch bmm"] = ms.torch_bmm_step(fo)
            try:
                f = ms.torch_vmap_step(fo)
                f()
                fns["torch vmap"] = f
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  (torch vmap peer failed: {exc})", file=sys.stderr)
        t = interleaved(fns, 0.03 if quick else 0.2, 3 if quick else 7, warmup=3)
        out.append(
            _rate_row(
                f"maml-sin {order}",
                "iter/s",
                t,
                {"torch loop": tl, "torch bmm": tv, "torch vmap": tv},
            )
        )
    return out


# Reptile on sinusoid regression with the demo's settings (python -m metalearn
# --algorithm reptile: 1-40-40-1, K=10 support and 10 query points, meta-batch 25, inner SGD
# lr 0.02, 5 inner steps, meta-update theta += epsilon * mean_i (phi_i - theta), epsilon 1)
REPTILE = dict(meta_batch=25, k_shot=10, queries=10, inner_lr=0.02, inner_steps=5, epsilon=1.0)


def reptile_ml_step(algorithm="reptile", inner_steps=None):
    """metalearn's meta-iteration on the Reptile demo's settings: Reptile, or FOMAML
    (Adam, as MAML's default) at the same inner steps and inner lr for the time ratio."""
    from metalearn.meta import MAML, Reptile, models
    from metalearn.tasks import Sinusoid

    s = REPTILE
    steps = s["inner_steps"] if inner_steps is None else inner_steps
    ml.random.set_seed(0)
    if algorithm == "reptile":
        learner = Reptile(
            models.sinusoid_mlp(), inner_lr=s["inner_lr"], inner_steps=steps, epsilon=s["epsilon"]
        )
    else:
        learner = MAML(
            models.sinusoid_mlp(), inner_lr=s["inner_lr"], inner_steps=steps, first_order=True
        )
    tasks = Sinusoid(k_shot=s["k_shot"], q_queries=s["queries"], seed=0)
    return lambda: learner.fit(tasks, iterations=1, meta_batch_size=s["meta_batch"], verbose=0)


def torch_reptile_direction(params, batch, inner_lr, inner_steps):
    """Reptile's direction theta - mean_i phi_i (phi_i: `inner_steps` plain SGD steps on
    task i's support, MSE, from theta) and the mean query loss at the phi_i (what fit
    reports), as a PyTorch loop over tasks. `params`: the 1-40-40-1 MLP's weights
    ((in, out) kernels, as metalearn's Dense), `batch`: (sx, sy, qx, qy) tensors."""

    def forward(p, x):
        h = torch.relu(x @ p[0] + p[1])
        h = torch.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    sx, sy, qx, qy = batch
    b = sx.shape[0]
    total = [torch.zeros_like(p) for p in params]
    qloss = 0.0
    for i in range(b):
        fast = [p.detach().requires_grad_() for p in params]
        for _ in range(inner_steps):
            loss = ((forward(fast, sx[i]) - sy[i]) ** 2).mean()
            grads = torch.autograd.grad(loss, fast)
            fast = [(w - inner_lr * g).detach().requires_grad_() for w, g in zip(fast, grads)]
        with torch.no_grad():
            qloss += float(((forward(fast, qx[i]) - qy[i]) ** 2).mean())
            for t, w in zip(total, fast):
                t += w
    with torch.no_grad():
        direction = [p - t / b for p, t in zip(params, total)]
    return direction, qloss / b


def reptile_torch_step():
    """The Reptile demo's meta-iteration as a PyTorch loop: torch_reptile_direction, then
    theta -= epsilon * direction (SGD on the direction, as metalearn's Reptile)."""
    import maml_sinusoid as ms

    from metalearn.tasks import Sinusoid

    s = REPTILE
    params = ms._torch_params(torch)
    tasks = Sinusoid(k_shot=s["k_shot"], q_queries=s["queries"], seed=0)

    def step():
        batch = tuple(torch.from_numpy(np.asarray(a)) for a in tasks.sample_batch(s["meta_batch"]))
        direction, _ = torch_reptile_direction(params, batch, s["inner_lr"], s["inner_steps"])
        with torch.no_grad():
            for p, d in zip(params, direction):
                p -= s["epsilon"] * d

    return step


def row_reptile_sin(threads, quick):
    fns = {"ml": reptile_ml_step()}
    if torch is not None:
        fns["torch loop"] = reptile_torch_step()
    t = interleaved(fns, 0.03 if quick else 0.3, 3 if quick else 7, warmup=3)
    # Reptile against metalearn's own FOMAML at the same inner steps (issue 20: Reptile's
    # meta-iteration within 1.5x of FOMAML's), interleaved in the same way
    r = interleaved(
        {"ml": reptile_ml_step(), "ml FOMAML": reptile_ml_step("fomaml")},
        0.03 if quick else 0.3,
        3 if quick else 7,
        warmup=3,
    )
    steps = REPTILE["inner_steps"]
    return [
        _rate_row(f"reptile-sin {steps} steps", "iter/s", t, {"torch loop": ">= 20x"}),
        dict(
            row=f"reptile/fomaml {steps} st",
            unit="iter/s",
            ml=1 / r["ml"],
            peers={"ml FOMAML": 1 / r["ml FOMAML"]},
            higher=True,
            # ratio = FOMAML's time / Reptile's: Reptile within 1.5x of FOMAML's time
            targets={"ml FOMAML": ">= 0.67x"},
        ),
    ]


def _omniglot_like(n_classes=40, per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n_classes * per_class, 28, 28, 1)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    return x, y


def row_maml_omniglot(threads, quick):
    from metalearn.meta import MAML, models
    from metalearn.tasks import NWayKShot

    N, KS, Q, MB, LR = 5, 1, 15, 32, 0.4
    data = _omniglot_like()
    ml.random.set_seed(0)
    maml = MAML(models.omniglot_mlp(N), inner_lr=LR, inner_steps=1, meta_lr=1e-3)
    tasks = NWayKShot(data, N, KS, Q, augment_rotations=False, seed=0)
    fns = {"ml": lambda: maml.fit(tasks, iterations=1, meta_batch_size=MB, verbose=0)}
    if torch is not None:
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(0)
        sizes = [784, 256, 128, 64, 64]
        params = []
        for i in range(4):
            params.append(
                (torch.randn(sizes[i + 1], sizes[i], generator=g) * 0.05).requires_grad_()
            )
            params.append(torch.zeros(sizes[i + 1], requires_grad=True))
            params.append(torch.ones(sizes[i + 1], requires_grad=True))  # BN gamma
            params.append(torch.zeros(sizes[i + 1], requires_grad=True))  # BN beta
        params.append((torch.randn(N, 64, generator=g) * 0.05).requires_grad_())
        params.append(torch.zeros(N, requires_grad=True))
        opt = torch.optim.Adam(params, lr=1e-3)
        ttasks = NWayKShot(data, N, KS, Q, augment_rotations=False, seed=0)

        def fwd(p, x):
            h = x.reshape(x.shape[0], -1)
            for i in range(4):
                w, b, ga, be = p[4 * i : 4 * i + 4]
                h = F.relu(
                    F.batch_norm(F.linear(h, w, b), None, None, ga, be, training=True, eps=1e-3)
                )
            return F.linear(h, p[16], p[17])

        def tstep():
            bt = ttasks.sample_batch(MB)
            sx, sy, qx, qy = (torch.from_numpy(np.asarray(a)) for a in bt)
            total = 0.0
            for i in range(MB):
                loss = F.cross_entropy(fwd(params, sx[i]), sy[i])
                grads = torch.autograd.grad(loss, params, create_graph=True)
                fast = [w - LR * gr for w, gr in zip(params, grads)]
                total = total + F.cross_entropy(fwd(fast, qx[i]), qy[i])
            opt.zero_grad()
            (total / MB).backward()
            opt.step()

        fns["torch loop"] = tstep
    t = interleaved(fns, 0.05 if quick else 0.4, 3 if quick else 5, warmup=1)
    return [_rate_row("maml-omniglot 5w1s", "iter/s", t, {"torch loop": ">= 5x"})]


def protonet_steps(n_way=20, k_shot=5, q=5, seed=0):
    """(metalearn step, torch step or None) for one ProtoNet conv4 episode."""
    from metalearn.meta import ProtoNet, models
    from metalearn.tasks import Task

    rng = np.random.default_rng(seed)
    sx = rng.uniform(0, 1, size=(1, n_way * k_shot, 28, 28, 1)).astype(np.float32)
    qx = rng.uniform(0, 1, size=(1, n_way * q, 28, 28, 1)).astype(np.float32)
    sy = np.repeat(np.arange(n_way), k_shot)[None]
    qy = np.repeat(np.arange(n_way), q)[None]
    batch = Task(sx, sy, qx, qy, info={"batched": True})
    ml.random.set_seed(0)
    pn = ProtoNet(models.conv4())
    pn._prepare(batch)
    ml_step = lambda: pn._meta_step(batch)  # noqa: E731
    if torch is None:
        return ml_step, None
    torch.manual_seed(0)
    enc = torch_conv4(torch.nn)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    x = torch.from_numpy(np.concatenate([sx[0], qx[0]]).transpose(0, 3, 1, 2).copy())
    tqy = torch.from_numpy(qy[0])
    ns = n_way * k_shot

    def torch_step():
        emb = enc(x)
        s, qe = emb[:ns], emb[ns:]
        protos = s.reshape(n_way, k_shot, -1).mean(1)
        logits = -torch.cdist(qe, protos).pow(2)
        loss = torch.nn.functional.cross_entropy(logits, tqy)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return ml_step, torch_step


def torch_conv4(nn, channels=1, filters=64):
    """PyTorch's twin of ``meta.models.conv4()`` (no head): 4 x [Conv 3x3 same, BatchNorm
    with Keras' eps and momentum, ReLU, MaxPool 2], then Flatten; the PyTorch peer of
    every conv4 row (run_all, conv84, scaling_peer)."""
    layers, cin = [], channels
    for _ in range(4):
        layers += [
            nn.Conv2d(cin, filters, 3, padding=1),
            nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        cin = filters
    return nn.Sequential(*layers, nn.Flatten())


def row_protonet(threads, quick):
    ml_step, t_step = protonet_steps()
    fns = {"ml": ml_step}
    if t_step:
        fns["torch"] = t_step
    t = interleaved(fns, 0.05 if quick else 0.3, 3 if quick else 7, warmup=1)
    return [_rate_row("protonet conv4 20w5s", "episodes/s", t, {"torch": ">= 2.5x"})]


# ------------------------------------------------------------------ issue 20's conv rows
# MAML and relatives through conv4 at Omniglot shapes (benchmarks/conv_maml.py: 5-way
# 1-shot, 15 queries, one inner step, lr 0.4, meta-batch 32; PyTorch functional loops whose
# meta-gradients tests/system/test_benchmark_peers.py checks against metalearn's), and the
# 84x84x3 rows of benchmarks/conv84.py.
CONV4_ROWS = {
    "maml": ("maml-conv4 2nd", ">= 2.5x"),
    "fomaml": ("fomaml-conv4", ">= 2.5x"),
    "anil": ("anil-conv4", ">= 2.5x"),
    "metasgd": ("metasgd-conv4", ">= 2.5x"),
}


def _conv4_row(algorithm):
    def row(threads, quick):
        import conv_maml

        mb = 2 if quick else 32
        fns = {"ml": conv_maml.ml_step(mb, algorithm=algorithm)}
        if torch is not None:
            fns["torch loop"] = conv_maml.torch_step(mb, algorithm=algorithm)
        t = interleaved(fns, 0.05 if quick else 1.0, 2 if quick else 5, warmup=1)
        name, target = CONV4_ROWS[algorithm]
        return [_rate_row(f"{name} mb{mb}", "iter/s", t, {"torch loop": target})]

    return row


class _quick_maml84:
    """conv84's MAML row at meta-batch 1 and one inner step (--quick), restored after."""

    def __init__(self, conv84, quick):
        self.conv84, self.quick = conv84, quick

    def __enter__(self):
        self.saved = self.conv84.MAML
        if self.quick:
            self.conv84.MAML = dict(self.saved, mb=1, steps=1)
        return self.conv84.MAML

    def __exit__(self, *exc):
        self.conv84.MAML = self.saved


def row_maml84(threads, quick):
    import conv84

    with _quick_maml84(conv84, quick) as s:
        fns = {"ml": conv84.ml_maml()}
        if torch is not None:
            fns["torch loop"] = conv84.torch_maml()
    t = interleaved(fns, 0.05 if quick else 3.0, 2 if quick else 5, warmup=1)
    return [
        _rate_row(f"maml84 mb{s['mb']} {s['steps']} step", "iter/s", t, {"torch loop": ">= 3x"})
    ]


_PEAK84 = {}


def row_maml84_peak(threads, quick):
    """Peak memory of the maml84 step (full size), each library in its own process at one
    thread (conv84.peak); measured once per run."""
    import conv84

    if quick:  # the children run the full-size step: not a CI-sized row
        print("  (maml84-peak: skipped under --quick; it runs the full-size step)", file=sys.stderr)
        return []
    if "r" not in _PEAK84:
        try:
            _PEAK84["r"] = conv84.peak()
        except SystemExit as exc:  # a child failed: the row fails, the run goes on
            raise RuntimeError(str(exc)) from None
    r = _PEAK84["r"]
    return [
        dict(
            row="maml84 peak (1 thr)",
            unit="MiB",
            ml=r["ml"],
            peers={"torch": r["torch"]} if "torch" in r else {},
            higher=False,
            targets={"torch": ">= 1.0x"},
        )
    ]


def _proto84_row(key, full, small, target):
    def row(threads, quick):
        import conv84

        backbone = "conv4" if key == "proto30" else "resnet12"
        n_way, k_shot, q = small if quick else full
        fns = {"ml": conv84.ml_proto(backbone, n_way, k_shot, q)}
        if torch is not None:
            fns["torch"] = conv84.torch_proto(backbone, n_way, k_shot, q)
        t = interleaved(fns, 0.05 if quick else 2.0, 2 if quick else 5, warmup=1)
        return [_rate_row(f"{key} {n_way}w{k_shot}s q{q}", "episodes/s", t, {"torch": target})]

    return row


def row_metalearner(threads, quick):
    """The article's system (metalearn.meta.MetaLearner: MAML on the default
    AdaptiveNeuralNetwork, the knowledge memory and the performance predictor), Omniglot
    shapes 5-way 1-shot 15 queries, meta-batch 16 (the demo's Omniglot size), per
    meta-iteration, against its own MAML alone on the same network: what the memory and
    the predictor add. metalearn only (PyTorch has no such system)."""
    from metalearn.meta import MetaLearner
    from metalearn.tasks import NWayKShot

    mb = 4 if quick else 16
    data = _omniglot_like()
    fns = {}
    for key in ("ml", "ml MAML alone"):
        ml.random.set_seed(0)
        system = MetaLearner(n_way=5, seed=0)
        tasks = NWayKShot(data, 5, 1, 15, augment_rotations=False, seed=0)
        system.fit(tasks, iterations=1, meta_batch_size=mb, verbose=0)  # builds, sets up
        target = system if key == "ml" else system.algorithm
        fns[key] = lambda t=target, s=tasks: t.fit(s, iterations=1, meta_batch_size=mb, verbose=0)
    t = interleaved(fns, 0.05 if quick else 0.5, 3 if quick else 5, warmup=1)
    return [
        dict(
            row=f"metalearner mb{mb}",
            unit="iter/s",
            ml=1 / t["ml"],
            peers={"ml MAML alone": 1 / t["ml MAML alone"]},
            higher=True,
            targets={},
        )
    ]


def row_add(threads, quick):
    a = ml.tensor(np.ones(4, np.float32))
    b = ml.tensor(np.ones(4, np.float32))
    fns = {"ml": lambda: a + b}
    if torch is not None:
        ta, tb = torch.ones(4), torch.ones(4)
        fns["torch"] = lambda: ta + tb
    t = interleaved(fns, 0.005 if quick else 0.05, 3 if quick else 7, warmup=100)
    return [_us_row("add 4 (per-op)", "us/op", t, {"torch": ">= 3x"})]


def row_adapt(threads, quick):
    """One task's adaptation from Python, as a user's evaluation loop calls it: metalearn's
    MAML.adapt (a copy of the meta-model, one inner SGD step on the support, K=10) on the
    sinusoid MLP, against PyTorch's learn2learn-style equivalent (copy.deepcopy of the
    module, one autograd step). Per-call overhead: the row that would have caught
    clone_model's registry walks (docs/PERFORMANCE.md)."""
    import copy

    from metalearn.meta import MAML, models
    from metalearn.tasks import Sinusoid

    ml.random.set_seed(0)
    maml = MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1)
    task = Sinusoid(k_shot=10, q_queries=10, seed=0).sample()
    sx, sy = task.support_x, task.support_y
    fns = {"ml": lambda: maml.adapt(sx, sy, steps=1)}
    if torch is not None:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(1, 40),
            torch.nn.ReLU(),
            torch.nn.Linear(40, 40),
            torch.nn.ReLU(),
            torch.nn.Linear(40, 1),
        )
        tx, ty = torch.from_numpy(np.asarray(sx)), torch.from_numpy(np.asarray(sy))

        def torch_adapt():
            fast = copy.deepcopy(net)
            loss = torch.nn.functional.mse_loss(fast(tx), ty)
            grads = torch.autograd.grad(loss, list(fast.parameters()))
            with torch.no_grad():
                for p_, g in zip(fast.parameters(), grads):
                    p_.sub_(0.01 * g)
            return fast

        fns["torch"] = torch_adapt
    t = interleaved(fns, 0.02 if quick else 0.2, 3 if quick else 7, warmup=20)
    return [_us_row("adapt sin 1 step", "us/call", t, {})]


def row_bnpool(threads, quick):
    """The conv4 block after its convolution, forward and first-order backward (the
    gradients of x, gamma and beta): batch norm (training), max pooling 2, relu, at the
    ProtoNet 20w5s episode's first block (200 images, 28x28, 64 channels). metalearn runs
    it as a Sequential does (the pool before the relu) and folds the pool's backward into
    batch norm's (docs/PERFORMANCE.md); PyTorch as ``torch_conv4`` (NCHW, BatchNorm2d,
    ReLU, MaxPool2d). Memory-bound: the row that watches the fold."""
    n, hw = (20, 14) if quick else (200, 28)
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((n, hw, hw, 64)).astype(np.float32)
    gv = rng.standard_normal((n, hw // 2, hw // 2, 64)).astype(np.float32)
    x = _core.tensor(xv, requires_grad=True)
    gamma = _core.tensor(np.ones(64, np.float32), requires_grad=True)
    beta = _core.tensor(np.zeros(64, np.float32), requires_grad=True)
    mm, mv = _core.tensor(np.zeros(64, np.float32)), _core.tensor(np.ones(64, np.float32))
    gp = _core.tensor(gv)

    def ml_block():
        y = _core.batch_norm(x, gamma, beta, mm, mv, training=True, momentum=0.99)
        p = _core.relu(_core.max_pool2d(y))
        return _core.grad([p], [x, gamma, beta], [gp])

    fns = {"ml": ml_block}
    if torch is not None:
        tx = torch.from_numpy(xv.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        tg = torch.from_numpy(gv.transpose(0, 3, 1, 2).copy())
        bn = torch.nn.BatchNorm2d(64, eps=1e-3, momentum=0.01)
        params = [tx, bn.weight, bn.bias]

        def torch_block():
            p = torch.nn.functional.max_pool2d(torch.relu(bn(tx)), 2)
            return torch.autograd.grad([p], params, [tg])

        fns["torch"] = torch_block
    t = interleaved(fns, 0.05 if quick else 0.3, 3 if quick else 7, warmup=2)
    return [_us_row(f"bnpool {n}x{hw}x{hw}x64", "us/call", t, {})]


def row_lstm(threads, quick):
    import lstm

    out = []
    for name, ours, theirs, target in (
        ("lstm train", lstm.ml_train_step, lstm.torch_train_step, "-"),
        ("lstm maml 2nd", lstm.ml_maml_step, lstm.torch_maml_step, ">= 2x"),
    ):
        fns = {"ml": ours()}
        if torch is not None:
            fns["torch eager"] = theirs()
        t = interleaved(fns, 0.1 if quick else 0.5, 3 if quick else 5)
        out.append(_rate_row(name, "steps/s", t, {"torch eager": target}))
    return out


ROWS = [
    ("sgemm", row_sgemm),
    ("dense", row_dense),
    ("maml-sin", row_maml_sin),
    ("maml-omniglot", row_maml_omniglot),
    ("protonet", row_protonet),
    ("bnpool", row_bnpool),
    ("add", row_add),
    ("adapt", row_adapt),
    ("lstm", row_lstm),
    ("maml-conv4", _conv4_row("maml")),
    ("fomaml-conv4", _conv4_row("fomaml")),
    ("anil-conv4", _conv4_row("anil")),
    ("metasgd-conv4", _conv4_row("metasgd")),
    ("maml84", row_maml84),
    ("maml84-peak", row_maml84_peak),
    ("proto30", _proto84_row("proto30", (30, 1, 15), (5, 1, 2), ">= 2x")),
    ("resnet12", _proto84_row("resnet12", (5, 5, 15), (2, 1, 1), ">= 1.5x")),
    ("reptile-sin", row_reptile_sin),
    ("metalearner", row_metalearner),
]


def fmt(v):
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(results, threads):
    print(
        f"\n== {threads} thread(s); metalearn kernel {_core.kernel_name()}; "
        f"torch {torch.__version__ if torch else 'not installed'}; malloc {MALLOC}"
    )
    head = f"{'row':<22}{'unit':<11}{'metalearn':>11}  {'peer':<16}{'peer value':>11} {'ratio':>9}  target"
    print(head)
    print("-" * (len(head) + 12))
    for r in results:
        first = True
        peers = r["peers"] or {"-": None}
        for name, v in peers.items():
            if v is None:
                ratio = "-"
            else:
                x = r["ml"] / v if r["higher"] else v / r["ml"]
                ratio = f"{x:.2f}x" if not name.startswith("FMA") else f"{x:.0%}"
            lead = f"{r['row']:<22}{r['unit']:<11}{fmt(r['ml']):>11}" if first else " " * 44
            print(f"{lead}  {name:<16}{fmt(v):>11} {ratio:>9}  {r['targets'].get(name, '-')}")
            first = False
    sys.stdout.flush()


# ------------------------------------------------------------------ callgrind

CALLGRIND_SCRIPT = r"""
import sys
sys.path.insert(0, {root!r})
import metalearn as ml
from metalearn.meta import MAML, models
from metalearn.tasks import Sinusoid
ml.set_num_threads(1)
ml.random.set_seed(0)
maml = MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1, first_order={fo}, meta_lr=1e-3)
tasks = Sinusoid(k_shot=10, q_queries=10, seed=0)
maml.fit(tasks, iterations=3, meta_batch_size=25, verbose=0)   # warm up (trace, pools)
import gc
gc.collect()
gc.disable()  # a collection landing in one run and not the other would skew the difference
maml.fit(tasks, iterations=int(sys.argv[1]), meta_batch_size=25, verbose=0)
"""


def callgrind(first_order=False, few=2, many=12):
    """Instructions per meta-iteration: total Ir of `many` minus `few` iterations, divided
    by the difference (start-up and warm-up cancel)."""
    vg = shutil.which("valgrind")
    if not vg:
        print("valgrind not found")
        return None
    d = tempfile.mkdtemp(prefix="ml_cg_")
    try:
        script = os.path.join(d, "maml_cg.py")
        with open(script, "w") as f:
            f.write(CALLGRIND_SCRIPT.format(root=os.path.join(HERE, ".."), fo=first_order))
        totals = []
        for iters in (few, many):
            outf = os.path.join(d, f"cg.{iters}")
            env = dict(
                os.environ,
                OMP_NUM_THREADS="1",
                METALEARN_NUM_THREADS="1",
                PYTHONMALLOC="malloc",
                PYTHONHASHSEED="0",
            )
            cmd = [
                vg,
                "--tool=callgrind",
                f"--callgrind-out-file={outf}",
                sys.executable,
                script,
                str(iters),
            ]
            setarch = shutil.which("setarch")
            if setarch:  # no address randomisation: id()-keyed dicts and sets iterate alike
                cmd = [setarch, os.uname().machine, "-R"] + cmd
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            m = re.search(r"Collected\s*:\s*(\d+)", p.stderr)
            if p.returncode != 0 or not m:
                print(p.stderr[-2000:])
                return None
            totals.append(int(m.group(1)))
        per = (totals[1] - totals[0]) / (many - few)
        order = "1st" if first_order else "2nd"
        print(
            f"callgrind: MAML sinusoid {order} order, meta-batch 25, K=10: "
            f"{per:,.0f} instructions per meta-iteration "
            f"(total Ir {totals[0]:,} for {few}, {totals[1]:,} for {many} iterations)"
        )
        return per
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized runs")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="run only rows whose name contains one of these ("
        + ", ".join(n for n, _ in ROWS)
        + ")",
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    add_malloc_option(p)
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="only: instructions per MAML sinusoid meta-iteration under callgrind",
    )
    args = p.parse_args(argv)
    if args.callgrind:
        callgrind(False)
        callgrind(True)
        return
    selected = [(n, f) for n, f in ROWS if not args.rows or any(s in n for s in args.rows)]
    if not selected:
        p.error(f"--rows matched nothing; rows are {[n for n, _ in ROWS]}")
    global MALLOC
    MALLOC = set_malloc(args.malloc)
    all_results = {}
    for threads in args.threads:
        set_threads(threads)
        results = []
        for name, f in selected:
            t0 = time.perf_counter()
            try:
                results += f(threads, args.quick)
            except Exception as exc:  # noqa: BLE001 - one failed row does not stop the rest
                print(f"row {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            if not args.quick:
                print(f"  [{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
        print_table(results, threads)
        all_results[threads] = results
    return all_results


if __name__ == "__main__":
    main()
