"""Each conv4 layer's convolution on its own: forward, data gradient and kernel gradient,
metalearn against PyTorch 2.13, in GFLOP/s of the direct algorithm's multiply-adds.

    python benchmarks/conv_layers.py                 # every shape, one thread
    python benchmarks/conv_layers.py --quick         # shorter chunks and fewer rounds
    python benchmarks/conv_layers.py --only omni     # shapes whose name contains 'omni'
    python benchmarks/conv_layers.py --algos         # direct vs F(2x2) vs F(4x4), no PyTorch

Shapes (3x3 kernels, stride 1, 'same' padding, channels last, as meta.models.conv4):
  omni   28x28x1 -> 64, then 64 -> 64 at 14, 7 and 3 (after each 2x2 pool);
  mini32 84x84x3 -> 32, then 32 -> 32 at 42, 21 and 10;
  mini64 84x84x3 -> 64, then 64 -> 64 at 42, 21 and 10.
  proto30  conv4-64's layers at 480 images (a ProtoNet 30-way 1-shot episode, 15 queries);
  r12    ResNet-12 (64-160-320-640) at 100 images (a ProtoNet 5-way 5-shot episode, 15
         queries): each block's first, second/third 3x3 convolution and its 1x1 shortcut.
Batches: 80 images (one 5-way 1-shot task with 15 queries per class, MAML's per-task
forward) and, for Omniglot, 200 (a ProtoNet 20-way 5-shot episode with 5 queries).

GFLOP/s counts 2 * N*OH*OW*F*KH*KW*C per product (the direct algorithm's work), whatever
the algorithm that ran, so an algorithm with fewer multiplies can read above the FMA peak.
`peak%` is against the FMA peak of one core (run_all.fma_peak: a loop of independent
FMAs). metalearn's data and kernel gradients are timed through _core.grad on a recorded
forward (one conv2d_input_grad or conv2d_kernel_grad op each); PyTorch's through
aten.convolution_backward with the one output asked for, in NCHW and channels-last memory
formats (the faster is shown). The libraries are interleaved and medians reported: on a
shared machine only the ratios of one run compare.

--algos times each 3x3 layer's three passes by each algorithm metalearn has for it (the
direct im2col path, Winograd F(2x2, 3x3) and F(4x4, 3x3), forced through
kernels/winograd.c's ml__wino_force), interleaved in one process, the minimum of the
rounds; it prints the direct-equivalent GFLOP/s of each, the ratios F4/F2 and F4/direct and
the algorithm the fixed table (ml__wino_tile) gives the shape. The table in winograd.c was
written from these ratios (F(4x4) where it measured >= 10 % faster than the better of the
other two).
"""

import argparse
import ctypes
import os
import time
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from run_all import (  # noqa: E402
    add_malloc_option,
    fma_peak,
    interleaved,
    set_malloc,
    set_threads,
    torch,
)

from metalearn import _core  # noqa: E402


def shapes():
    out = []
    for batch in (80, 200):
        out += [
            (f"omni b{batch} L1", batch, 28, 1, 64),
            (f"omni b{batch} L2", batch, 14, 64, 64),
            (f"omni b{batch} L3", batch, 7, 64, 64),
            (f"omni b{batch} L4", batch, 3, 64, 64),
        ]
    for f in (32, 64):
        out += [
            (f"mini{f} b80 L1", 80, 84, 3, f),
            (f"mini{f} b80 L2", 80, 42, f, f),
            (f"mini{f} b80 L3", 80, 21, f, f),
            (f"mini{f} b80 L4", 80, 10, f, f),
        ]
    out += [
        (f"proto30 L{i + 1}", 480, hw, 3 if i == 0 else 64, 64)
        for i, hw in enumerate((84, 42, 21, 10))
    ]
    cin = 3
    for b, (hw, f) in enumerate(zip((84, 42, 21, 10), (64, 160, 320, 640)), 1):
        out += [
            (f"r12 B{b} a", 100, hw, cin, f),
            (f"r12 B{b} b", 100, hw, f, f),
            (f"r12 B{b} 1x1", 100, hw, cin, f, 1),
        ]
        cin = f
    return out


def ml_fns(n, hw, c, f, rng, ks=3):
    x = _core.tensor(rng.standard_normal((n, hw, hw, c)).astype(np.float32), requires_grad=True)
    k = _core.tensor(
        (rng.standard_normal((ks, ks, c, f)) / np.sqrt(ks * ks * c)).astype(np.float32),
        requires_grad=True,
    )
    g = rng.standard_normal((n, hw, hw, f)).astype(np.float32)
    y = _core.conv2d(x, k, None, 1, "same")
    gt = _core.tensor(g)
    fns = {"ml fwd": lambda: _core.conv2d(x, k, None, 1, "same"), "ml bwd-k": None}
    fns["ml bwd-k"] = lambda: _core.grad(y, [k], [gt])
    if c > 3:  # the first layer's data gradient is never computed
        fns["ml bwd-x"] = lambda: _core.grad(y, [x], [gt])
    return fns


def torch_fns(n, hw, c, f, rng, fmt, ks=3):
    mf = torch.channels_last if fmt == "nhwc" else torch.contiguous_format
    pad = ks // 2
    x = torch.from_numpy(rng.standard_normal((n, c, hw, hw)).astype(np.float32))
    x = x.contiguous(memory_format=mf)
    w = torch.from_numpy(
        (rng.standard_normal((f, c, ks, ks)) / np.sqrt(ks * ks * c)).astype(np.float32)
    )
    w = w.contiguous(memory_format=mf)
    g = torch.from_numpy(rng.standard_normal((n, f, hw, hw)).astype(np.float32))
    g = g.contiguous(memory_format=mf)
    conv = torch.nn.functional.conv2d
    bwd = torch.ops.aten.convolution_backward

    def back(mask):
        return lambda: bwd(g, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    fns = {
        f"torch-{fmt} fwd": lambda: conv(x, w, None, 1, pad),
        f"torch-{fmt} bwd-k": back([False, True, False]),
    }
    if c > 3:
        fns[f"torch-{fmt} bwd-x"] = back([True, False, False])
    return fns


ALGOS = {"direct": 1, "F2": 2, "F4": 4}


def wino_force():
    """kernels/winograd.c's benchmark switch (0: the shape's table; 1 direct; 2, 4 F(m x m))."""
    return ctypes.c_int.in_dll(ctypes.CDLL(_core.__file__), "ml__wino_force")


def algo_fns(n, hw, c, f, rng, force):
    """{(algo, pass): callable}: each call sets the switch, then runs the pass."""
    fns = {}
    base = ml_fns(n, hw, c, f, rng)
    for algo, code in ALGOS.items():
        for key, fn in base.items():

            def run(fn=fn, code=code):
                force.value = code
                fn()

            fns[(algo, key.split()[1])] = run
    return fns


def min_interleaved(fns, budget, repeats, clock=time.process_time):
    """Like run_all.interleaved, but the minimum of the rounds (the least disturbed one),
    timed by the process's CPU time: on a machine with more runnable jobs than cores the
    wall time of a round mostly measures how long the process waited for a core (one
    thread, so CPU time is the time the work took; caches shared with the other jobs
    still add noise)."""
    number = {}
    for k, fn in fns.items():
        fn()
        t0 = clock()
        fn()
        number[k] = max(1, int(budget / max(clock() - t0, 1e-6)))
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            for _ in range(number[k]):
                fn()
            best[k] = min(best[k], (clock() - t0) / number[k])
    return best


def main_algos(args):
    force = wino_force()
    table = {"fwd": 0, "bwd-x": 1, "bwd-k": 2}  # ML_WINO_FORWARD, _INPUT_GRAD, _KERNEL_GRAD
    rule = ctypes.CDLL(_core.__file__).ml__wino_tile
    rule.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 5
    print("one thread; direct-equivalent GFLOP/s by CPU time, minimum of interleaved rounds")
    print("(ratios only compare on a shared machine); 'table': what ml__wino_tile picks")
    hdr = f"{'shape':<16}{'pass':<7}{'direct':>8}{'F2':>8}{'F4':>8}{'F4/F2':>7}{'F4/dir':>7}"
    print(hdr + f"{'table':>7}")
    rng = np.random.default_rng(0)
    try:
        for name, n, hw, c, f, *ks in shapes():
            if ks or c < 16 or (args.only and not any(s in name for s in args.only)):
                continue
            fns = algo_fns(n, hw, c, f, rng, force)
            t = min_interleaved(fns, 0.05 if args.quick else 0.15, 3 if args.quick else 5)
            flops = 2.0 * n * hw * hw * f * 9 * c
            for pas in ("fwd", "bwd-x", "bwd-k"):
                gf = {a: flops / t[(a, pas)] / 1e9 for a in ALGOS}
                force.value = 0
                pick = rule(table[pas], n, hw, hw, c, f)
                print(
                    f"{name:<16}{pas:<7}{gf['direct']:>8.1f}{gf['F2']:>8.1f}{gf['F4']:>8.1f}"
                    f"{gf['F4'] / gf['F2']:>7.2f}{gf['F4'] / gf['direct']:>7.2f}"
                    f"{('direct', '', 'F2', '', 'F4')[pick]:>7}"
                )
            sys.stdout.flush()
    finally:
        force.value = 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", default=None, help="shapes whose name has one of these")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--algos", action="store_true", help="direct vs F(2x2) vs F(4x4), no torch")
    add_malloc_option(p)
    args = p.parse_args(argv)
    print(f"malloc: {set_malloc(args.malloc)}")
    set_threads(args.threads)
    if args.algos:
        return main_algos(args)
    use_torch = torch is not None and not args.no_torch
    if use_torch:
        torch.set_grad_enabled(False)
    peak = fma_peak()
    print(f"FMA peak of one core: {peak if peak else '-'} GFLOP/s; threads {args.threads}")
    hdr = f"{'shape':<16}{'pass':<7}{'ml GF/s':>9}{'peak%':>7}{'torch GF/s':>11}{'ratio':>7}"
    print(hdr)
    rng = np.random.default_rng(0)
    for name, n, hw, c, f, *ks in shapes():
        if args.only and not any(s in name for s in args.only):
            continue
        ks = ks[0] if ks else 3
        fns = ml_fns(n, hw, c, f, rng, ks)
        if use_torch:
            for fmt in ("nchw", "nhwc"):
                fns.update(torch_fns(n, hw, c, f, rng, fmt, ks))
        t = interleaved(fns, 0.05 if args.quick else 0.15, 3 if args.quick else 5, warmup=1)
        flops = 2.0 * n * hw * hw * f * ks * ks * c
        for pas in ("fwd", "bwd-x", "bwd-k"):
            if f"ml {pas}" not in t:
                continue
            gf = flops / t[f"ml {pas}"] / 1e9
            tg = [flops / t[k] / 1e9 for k in t if k.startswith("torch") and k.endswith(pas)]
            best = max(tg) if tg else None
            pk = f"{gf / peak:.0%}" if peak else "-"
            tb = f"{best:.1f}" if best else "-"
            ratio = f"{gf / best:.2f}x" if best else "-"
            print(f"{name:<16}{pas:<7}{gf:>9.1f}{pk:>7}{tb:>11}{ratio:>7}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
