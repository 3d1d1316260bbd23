"""MAML and its first-order / head-only / learned-rate relatives through conv4 at Omniglot
shapes, metalearn against PyTorch functional loops, and where metalearn's step spends its
time (convolutions or the rest).

    python benchmarks/conv_maml.py                    # MAML, meta-batch 8, one thread
    python benchmarks/conv_maml.py --meta-batch 32 --quick
    python benchmarks/conv_maml.py --algorithm anil --meta-batch 32

The rows of issue 20: conv4 (64 filters, batch norm, ReLU, 2x2 max pool) on 28x28x1,
5-way 1-shot, 15 queries per class, one inner step (lr 0.4), Adam, for
  maml     second order (create_graph=True through the inner step);
  fomaml   first order (Finn et al. 2017, section 5.2): the inner gradients are constants,
           the meta-gradient is the query gradient at the adapted weights;
  anil     Raghu et al. 2020: the inner loop adapts only the head (the Dense layer); the
           body's features of the support and the query are computed once per task, with
           their graph back to the body, and the head's inner step is second order;
  metasgd  Li et al. 2017: one learned rate per weight (initialised to the inner lr),
           theta' = theta - alpha * grad, second order, meta-trained with the weights.
PyTorch 2.13 runs the same networks as functional loops over tasks (F.conv2d,
F.batch_norm in training mode, torch.autograd.grad), channels-first as it prefers; the
loss each loop differentiates is `torch_meta_loss`, which tests/system/test_benchmark_peers.py
checks against metalearn's meta-gradient (the two loops compute the same thing).
Images are random (speed does not depend on pixel values). Interleaved chunks, medians,
ratio from the same run (run_all.interleaved).

    python benchmarks/conv_maml.py --loop --min      # + metalearn's vectorised form, min-of-N

--loop adds metalearn's vectorised meta-batch (vectorize=True; "auto", the main row,
keeps conv nets on the per-task loop), so the two are measured in the same process; --min
reports each one's fastest chunk instead of the median (a shared machine).
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from run_all import (  # noqa: E402
    _omniglot_like,
    add_malloc_option,
    interleaved,
    set_malloc,
    set_threads,
    torch,
)

import metalearn as ml  # noqa: E402

N, KS, Q, LR = 5, 1, 15, 0.4
ALGORITHMS = ("maml", "fomaml", "anil", "metasgd")
NAMES = {"maml": "MAML 2nd order", "fomaml": "FOMAML", "anil": "ANIL", "metasgd": "Meta-SGD"}


def ml_learner(algorithm="maml", model=None, inner_lr=LR, inner_steps=1, vectorize="auto"):
    """metalearn's learner for `algorithm` on conv4 (N-way head) unless `model` is given."""
    from metalearn.meta import ANIL, MAML, MetaSGD, models

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    model = models.conv4(N) if model is None else model
    kw = dict(inner_lr=inner_lr, inner_steps=inner_steps, meta_lr=1e-3, vectorize=vectorize)
    if algorithm == "fomaml":
        return MAML(model, first_order=True, **kw)
    cls = {"maml": MAML, "anil": ANIL, "metasgd": MetaSGD}[algorithm]
    return cls(model, **kw)


def ml_step(mb, vectorize="auto", algorithm="maml"):
    from metalearn.tasks import NWayKShot

    data = _omniglot_like()
    ml.random.set_seed(0)
    learner = ml_learner(algorithm, vectorize=vectorize)
    tasks = NWayKShot(data, N, KS, Q, augment_rotations=False, seed=0)
    return lambda: learner.fit(tasks, iterations=1, meta_batch_size=mb, verbose=0)


# ------------------------------------------------------------------ PyTorch peers


def torch_params(weights=None, channels=1, filters=64, n_way=N):
    """conv4's weights as PyTorch leaves, in metalearn's order (per block: kernel, bias,
    BN gamma, BN beta; then the head's kernel and bias). `weights`: metalearn's
    ``model.trainable_weights`` as arrays (HWIO kernels, (in, out) head), converted to
    PyTorch's layouts (OIHW, (out, in)); the head's input must be 1x1 spatially, where
    channels-last and channels-first flatten alike. None: a seeded random draw."""
    if weights is not None:
        return [torch.tensor(torch_layout(w), requires_grad=True) for w in weights]
    g = torch.Generator().manual_seed(0)
    params, cin = [], channels
    for _ in range(4):
        params.append((torch.randn(filters, cin, 3, 3, generator=g) * 0.1).requires_grad_())
        params.append(torch.zeros(filters, requires_grad=True))
        params.append(torch.ones(filters, requires_grad=True))
        params.append(torch.zeros(filters, requires_grad=True))
        cin = filters
    params.append((torch.randn(n_way, filters, generator=g) * 0.05).requires_grad_())
    params.append(torch.zeros(n_way, requires_grad=True))
    return params


def torch_layout(w):
    """One of metalearn's conv4 weights (HWIO kernel, (in, out) head kernel) in PyTorch's
    layout (OIHW, (out, in)); vectors as they are."""
    w = np.asarray(w, dtype=np.float32)
    w = w.transpose(3, 2, 0, 1) if w.ndim == 4 else (w.T if w.ndim == 2 else w)
    return np.ascontiguousarray(w)


def ml_layout(w):
    """torch_layout's inverse (for gradients)."""
    w = np.asarray(w)
    return w.transpose(2, 3, 1, 0) if w.ndim == 4 else (w.T if w.ndim == 2 else w)


def torch_features(p, x):
    """conv4's body (the four blocks, flattened), BN on the batch's statistics."""
    import torch.nn.functional as F

    h = x
    for i in range(4):
        w, b, ga, be = p[4 * i : 4 * i + 4]
        h = F.batch_norm(F.conv2d(h, w, b, padding=1), None, None, ga, be, True, 0.01, 1e-3)
        h = F.max_pool2d(F.relu(h), 2)
    return h.flatten(1)


def torch_forward(p, x):
    import torch.nn.functional as F

    return F.linear(torch_features(p, x), p[16], p[17])


def torch_meta_loss(algorithm, params, rates, batch, inner_lr=LR, inner_steps=1):
    """The mean query loss over a meta-batch after each task's inner loop, with the graph
    `algorithm` differentiates: `batch` = (sx, sy, qx, qy) tensors, images NCHW with a
    leading task axis; `rates`: Meta-SGD's learned rates (one tensor per weight)."""
    import torch.nn.functional as F

    sx, sy, qx, qy = batch
    mb = sx.shape[0]
    total = 0.0
    for i in range(mb):
        if algorithm == "anil":
            # the body once per task; the inner loop re-runs only the head on its features
            fs, fq = torch_features(params, sx[i]), torch_features(params, qx[i])
            head = params[16:]
            for _ in range(inner_steps):
                loss = F.cross_entropy(F.linear(fs, *head), sy[i])
                grads = torch.autograd.grad(loss, head, create_graph=True)
                head = [w - inner_lr * g for w, g in zip(head, grads)]
            total = total + F.cross_entropy(F.linear(fq, *head), qy[i])
            continue
        fast = params
        for _ in range(inner_steps):
            loss = F.cross_entropy(torch_forward(fast, sx[i]), sy[i])
            # FOMAML: no graph through the inner gradients (constants), so the adapted
            # weights' derivative with respect to the initial ones is the identity
            grads = torch.autograd.grad(loss, fast, create_graph=algorithm != "fomaml")
            if algorithm == "metasgd":
                fast = [w - a * g for w, a, g in zip(fast, rates, grads)]
            else:
                fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        total = total + F.cross_entropy(torch_forward(fast, qx[i]), qy[i])
    return total / mb


def torch_rates(params, inner_lr=LR):
    """Meta-SGD's learned rates, initialised to the inner lr as metalearn's MetaSGD."""
    return [torch.full_like(p, inner_lr).requires_grad_() for p in params]


def torch_batch(bt):
    """A Task batch (NHWC images) as the PyTorch loops take it (NCHW, int64 labels)."""
    sx, sy, qx, qy = (np.asarray(a) for a in bt)
    return (
        torch.from_numpy(np.ascontiguousarray(sx.transpose(0, 1, 4, 2, 3))),
        torch.from_numpy(sy.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(qx.transpose(0, 1, 4, 2, 3))),
        torch.from_numpy(qy.astype(np.int64)),
    )


def torch_step(mb, algorithm="maml"):
    from metalearn.tasks import NWayKShot

    params = torch_params()
    rates = torch_rates(params) if algorithm == "metasgd" else []
    opt = torch.optim.Adam(params + rates, lr=1e-3)
    tasks = NWayKShot(_omniglot_like(), N, KS, Q, augment_rotations=False, seed=0)

    def step():
        meta = torch_meta_loss(algorithm, params, rates, torch_batch(tasks.sample_batch(mb)))
        opt.zero_grad()
        meta.backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--algorithm", choices=ALGORITHMS, default="maml")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--loop", action="store_true", help="also metalearn's vectorised meta-batch")
    p.add_argument("--min", action="store_true", help="min-of-N instead of the median")
    p.add_argument("--repeats", type=int, default=None)
    add_malloc_option(p)
    args = p.parse_args(argv)
    print(f"malloc: {set_malloc(args.malloc)}")
    set_threads(args.threads)
    a = args.algorithm
    fns = {"ml": ml_step(args.meta_batch, algorithm=a)}
    if args.loop:
        fns["ml vectorised"] = ml_step(args.meta_batch, vectorize=True, algorithm=a)
    if torch is not None and not args.no_torch:
        fns["torch loop"] = torch_step(args.meta_batch, algorithm=a)
    budget = 0.5 if args.quick else 2.0
    repeats = args.repeats or (3 if args.quick else 5)
    if args.min:
        t = _interleaved_min(fns, budget, repeats)
    else:
        t = interleaved(fns, budget, repeats, warmup=1)
    line = f"{NAMES[a]} conv4 Omniglot 5w1s q15, meta-batch {args.meta_batch}, "
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
