"""MAML on sinusoid regression, meta-iterations per second: metalearn vs PyTorch.

The MAML paper's setting: a 1-40-40-1 ReLU network, K=10 support and 10 query points
per task, meta-batch 25, one inner SGD step (lr 0.01), Adam 1e-3 on the meta-gradient;
second order (the gradient through the inner step) and first order.

Peers, all on the same task batches (from metalearn.tasks.Sinusoid) and the same thread
count:
  - metalearn: ``metalearn.meta.MAML.fit`` (the Keras model, a loop over the tasks);
  - PyTorch loop: the usual implementation, a Python loop over tasks with
    ``torch.autograd.grad(create_graph=True)``;
  - PyTorch batched: the tasks vectorised, one ``bmm`` forward for all 25 tasks with
    per-task weight copies (the per-task gradients come out of one backward);
  - PyTorch vmap: ``torch.func.vmap`` over ``torch.func.grad`` for the inner step.

    python benchmarks/maml_sinusoid.py [--threads 1] [--iterations 200] [--repeats 5]

Prints meta-iterations/s and the ratio metalearn / peer (> 1: metalearn is faster).
Runs without PyTorch too (metalearn only).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

K, Q, META_BATCH, INNER_LR, META_LR = 10, 10, 25, 0.01, 1e-3


def bench(step, iterations, repeats, warmup=10):
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iterations):
            step()
        rates.append(iterations / (time.perf_counter() - t0))
    return statistics.median(rates)


def sampler(seed=0):
    from metalearn.tasks import Sinusoid

    return Sinusoid(k_shot=K, q_queries=Q, seed=seed)


# ----------------------------------------------------------------- metalearn


def metalearn_step(first_order):
    import metalearn as ml
    from metalearn.meta import MAML, models

    ml.random.set_seed(0)
    maml = MAML(
        models.sinusoid_mlp(),
        inner_lr=INNER_LR,
        inner_steps=1,
        first_order=first_order,
        meta_lr=META_LR,
    )
    tasks = sampler()
    return lambda: maml.fit(tasks, iterations=1, meta_batch_size=META_BATCH, verbose=0)


# ------------------------------------------------------------------- PyTorch


def _torch_params(torch):
    g = torch.Generator().manual_seed(0)
    sizes = [(1, 40), (40, 40), (40, 1)]
    params = []
    for fan_in, fan_out in sizes:
        lim = (6.0 / (fan_in + fan_out)) ** 0.5
        params.append(((torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * lim).requires_grad_())
        params.append(torch.zeros(fan_out, requires_grad=True))
    return params


def torch_loop_step(first_order):
    import torch

    params = _torch_params(torch)
    opt = torch.optim.Adam(params, lr=META_LR)
    tasks = sampler()

    def forward(p, x):
        h = torch.relu(x @ p[0] + p[1])
        h = torch.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    def step():
        b = tasks.sample_batch(META_BATCH)
        sx, sy, qx, qy = (torch.from_numpy(a) for a in b)
        total = 0.0
        for i in range(META_BATCH):
            loss = ((forward(params, sx[i]) - sy[i]) ** 2).mean()
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            fast = [p - INNER_LR * g for p, g in zip(params, grads)]
            total = total + ((forward(fast, qx[i]) - qy[i]) ** 2).mean()
        meta = total / META_BATCH
        opt.zero_grad()
        meta.backward()
        opt.step()

    return step


def torch_bmm_step(first_order):
    import torch

    params = _torch_params(torch)
    opt = torch.optim.Adam(params, lr=META_LR)
    tasks = sampler()

    def forward(p, x):  # p: per-task weights (B, ...), x (B, n, 1)
        h = torch.relu(torch.baddbmm(p[1].unsqueeze(1), x, p[0]))
        h = torch.relu(torch.baddbmm(p[3].unsqueeze(1), h, p[2]))
        return torch.baddbmm(p[5].unsqueeze(1), h, p[4])

    def step():
        b = tasks.sample_batch(META_BATCH)
        sx, sy, qx, qy = (torch.from_numpy(a) for a in b)
        per_task = [p.unsqueeze(0).expand(META_BATCH, *p.shape) for p in params]
        # sum over tasks of each task's mean loss: its gradient w.r.t. the per-task copies is
        # each task's own gradient
        inner = ((forward(per_task, sx) - sy) ** 2).mean(dim=(1, 2)).sum()
        grads = torch.autograd.grad(inner, per_task, create_graph=not first_order)
        fast = [p - INNER_LR * g for p, g in zip(per_task, grads)]
        meta = ((forward(fast, qx) - qy) ** 2).mean()
        opt.zero_grad()
        meta.backward()
        opt.step()

    return step


def torch_vmap_step(first_order):
    import torch
    from torch.func import grad, vmap

    params = _torch_params(torch)
    opt = torch.optim.Adam(params, lr=META_LR)
    tasks = sampler()

    def forward(p, x):
        h = torch.relu(x @ p[0] + p[1])
        h = torch.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    def loss(p, x, y):
        return ((forward(p, x) - y) ** 2).mean()

    def task_loss(p, sx, sy, qx, qy):
        g = grad(loss)(p, sx, sy)
        if first_order:
            g = [gi.detach() for gi in g]
        fast = [w - INNER_LR * gi for w, gi in zip(p, g)]
        return loss(fast, qx, qy)

    batched = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))

    def step():
        b = tasks.sample_batch(META_BATCH)
        sx, sy, qx, qy = (torch.from_numpy(a) for a in b)
        meta = batched(params, sx, sy, qx, qy).mean()
        opt.zero_grad()
        meta.backward()
        opt.step()

    return step


def check_same_meta_gradient():
    """The metalearn and PyTorch-loop meta-gradients agree on one batch (a sanity check)."""
    import torch
    from metalearn.meta import MAML, models

    model = models.sinusoid_mlp()
    params = _torch_params(torch)
    model.set_weights([p.detach().numpy() for p in params])
    batch = sampler(5).sample_batch(4)
    _, g_ml = MAML(model, inner_lr=INNER_LR).meta_gradients(batch)

    def forward(p, x):
        h = torch.relu(x @ p[0] + p[1])
        h = torch.relu(h @ p[2] + p[3])
        return h @ p[4] + p[5]

    sx, sy, qx, qy = (torch.from_numpy(a) for a in batch)
    total = 0
    for i in range(4):
        g = torch.autograd.grad(
            ((forward(params, sx[i]) - sy[i]) ** 2).mean(), params, create_graph=True
        )
        fast = [p - INNER_LR * gi for p, gi in zip(params, g)]
        total = total + ((forward(fast, qx[i]) - qy[i]) ** 2).mean()
    g_t = torch.autograd.grad(total / 4, params)
    return max(float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(g_ml, g_t))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=100, help="meta-iterations per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import metalearn as ml

    setter = getattr(ml, "set_num_threads", None) or getattr(ml._core, "set_num_threads", None)
    if setter:
        setter(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
        tv = torch.__version__
    except ImportError:
        torch = None
        tv = None
    print(
        f"MAML sinusoid, 1-40-40-1 ReLU, K={K}, {Q} queries, meta-batch {META_BATCH}, 1 inner step; "
        f"threads={args.threads}; torch {tv or 'not installed'}"
    )
    if torch is not None:
        print(f"meta-gradient check, max |metalearn - torch| = {check_same_meta_gradient():.2e}")
    rows = []
    for order, fo in (("2nd order", False), ("1st order", True)):
        r_ml = bench(metalearn_step(fo), args.iterations, args.repeats, args.warmup)
        peers = {}
        if torch is not None:
            peers["torch loop"] = bench(
                torch_loop_step(fo), args.iterations, args.repeats, args.warmup
            )
            peers["torch bmm"] = bench(
                torch_bmm_step(fo), args.iterations, args.repeats, args.warmup
            )
            try:
                peers["torch vmap"] = bench(
                    torch_vmap_step(fo), args.iterations, args.repeats, args.warmup
                )
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"torch.func.vmap peer failed: {exc}", file=sys.stderr)
        rows.append((order, r_ml, peers))
    names = ["torch loop", "torch bmm", "torch vmap"]
    head = f"{'':10s}{'metalearn':>12s}" + "".join(
        f"{n:>12s}{'ratio':>8s}" for n in names if any(n in r[2] for r in rows)
    )
    print("\nmeta-iterations/s (median of repeats); ratio = metalearn / peer")
    print(head)
    for order, r_ml, peers in rows:
        line = f"{order:10s}{r_ml:12.1f}"
        for n in names:
            if n in peers:
                line += f"{peers[n]:12.1f}{r_ml / peers[n]:8.2f}"
        print(line)
    return rows


if __name__ == "__main__":
    main()
