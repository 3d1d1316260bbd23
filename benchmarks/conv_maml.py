"""MAML through conv4 at Omniglot shapes, metalearn against a PyTorch loop, and where
metalearn's step spends its time (convolutions or the rest).

    python benchmarks/conv_maml.py                    # meta-batch 8, one thread
    python benchmarks/conv_maml.py --meta-batch 32 --quick

The row of issue 20: conv4 (64 filters, batch norm, ReLU, 2x2 max pool) on 28x28x1,
5-way 1-shot, 15 queries per class, one inner step (lr 0.4), second order, Adam. PyTorch
2.13 runs the same network as a functional_call-style loop over tasks (F.conv2d,
F.batch_norm in training mode, create_graph=True), channels-first as it prefers.
Images are random (speed does not depend on pixel values). Interleaved chunks, medians,
ratio from the same run (run_all.interleaved).

    python benchmarks/conv_maml.py --loop --min      # + metalearn's per-task loop, min-of-N

--loop adds metalearn's vectorised meta-batch (vectorize=True; "auto", the main row,
keeps conv nets on the per-task loop), so the two are measured in the same process; --min reports each one's fastest chunk instead of the median (a shared machine).
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from run_all import _omniglot_like, interleaved, set_threads, torch  # noqa: E402

import metalearn as ml  # noqa: E402

N, KS, Q, LR = 5, 1, 15, 0.4


def ml_step(mb, vectorize="auto"):
    from metalearn.meta import MAML, models
    from metalearn.tasks import NWayKShot

    data = _omniglot_like()
    ml.random.set_seed(0)
    maml = MAML(models.conv4(N), inner_lr=LR, inner_steps=1, meta_lr=1e-3, vectorize=vectorize)
    tasks = NWayKShot(data, N, KS, Q, augment_rotations=False, seed=0)
    return lambda: maml.fit(tasks, iterations=1, meta_batch_size=mb, verbose=0)


def torch_step(mb):
    import torch.nn.functional as F

    from metalearn.tasks import NWayKShot

    g = torch.Generator().manual_seed(0)
    params, cin = [], 1
    for _ in range(4):
        params.append((torch.randn(64, cin, 3, 3, generator=g) * 0.1).requires_grad_())
        params.append(torch.zeros(64, requires_grad=True))
        params.append(torch.ones(64, requires_grad=True))
        params.append(torch.zeros(64, requires_grad=True))
        cin = 64
    params.append((torch.randn(N, 64, generator=g) * 0.05).requires_grad_())
    params.append(torch.zeros(N, requires_grad=True))
    opt = torch.optim.Adam(params, lr=1e-3)
    tasks = NWayKShot(_omniglot_like(), N, KS, Q, augment_rotations=False, seed=0)

    def fwd(p, x):
        h = x
        for i in range(4):
            w, b, ga, be = p[4 * i : 4 * i + 4]
            h = F.batch_norm(F.conv2d(h, w, b, padding=1), None, None, ga, be, True, 0.01, 1e-3)
            h = F.max_pool2d(F.relu(h), 2)
        return F.linear(h.flatten(1), p[16], p[17])

    def step():
        bt = tasks.sample_batch(mb)
        sx, sy, qx, qy = (torch.from_numpy(np.asarray(a)) for a in bt)
        sx, qx = sx.permute(0, 1, 4, 2, 3), qx.permute(0, 1, 4, 2, 3)
        total = 0.0
        for i in range(mb):
            loss = F.cross_entropy(fwd(params, sx[i]), sy[i])
            grads = torch.autograd.grad(loss, params, create_graph=True)
            fast = [w - LR * gr for w, gr in zip(params, grads)]
            total = total + F.cross_entropy(fwd(fast, qx[i]), qy[i])
        opt.zero_grad()
        (total / mb).backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--loop", action="store_true", help="also metalearn's vectorised meta-batch")
    p.add_argument("--min", action="store_true", help="min-of-N instead of the median")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    fns = {"ml": ml_step(args.meta_batch)}
    if args.loop:
        fns["ml vectorised"] = ml_step(args.meta_batch, vectorize=True)
    if torch is not None and not args.no_torch:
        fns["torch loop"] = torch_step(args.meta_batch)
    budget = 0.5 if args.quick else 2.0
    repeats = args.repeats or (3 if args.quick else 5)
    if args.min:
        t = _interleaved_min(fns, budget, repeats)
    else:
        t = interleaved(fns, budget, repeats, warmup=1)
    line = f"MAML conv4 Omniglot 5w1s q15, meta-batch {args.meta_batch}, 2nd order, "
    line += f"{args.threads} thread(s): metalearn {1 / t['ml']:.2f} iter/s"
    if "ml vectorised" in t:
        line += f", metalearn vectorised {1 / t['ml vectorised']:.2f} iter/s "
        line += f"({t['ml'] / t['ml vectorised']:.2f}x the loop)"
    if "torch loop" in t:
        line += f", torch loop {1 / t['torch loop']:.2f} iter/s, "
        line += f"ratio {t['torch loop'] / t['ml']:.2f}x"
        if "ml vectorised" in t:
            line += f" (vectorised {t['torch loop'] / t['ml vectorised']:.2f}x)"
    print(line + (" [min of N]" if args.min else " [median]"))


def _interleaved_min(fns, budget, repeats):
    """As run_all.interleaved, but each one's fastest chunk (seconds per call): on a
    machine shared with other work the minimum is the least disturbed measurement."""
    import time

    from run_all import calibrate

    for f in fns.values():
        f()
    number = {k: calibrate(f, budget) for k, f in fns.items()}
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(number[k]):
                f()
            best[k] = min(best[k], (time.perf_counter() - t0) / number[k])
    return best


if __name__ == "__main__":
    main()
