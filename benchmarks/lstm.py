"""An LSTM (hidden 128, 50 steps, batch 32): a training step and a second-order MAML step
through it, metalearn vs PyTorch eager, interleaved in one process.

Model: ``LSTM(128)`` over ``(32, 50, 32)`` inputs, then ``Dense(1)``; MSE, Adam.
  - train step: metalearn ``Model.train_on_batch`` (its traced step, replayed from C)
    vs PyTorch ``nn.LSTM`` + ``nn.Linear``, ``backward``, ``Adam.step``;
  - MAML step (second order, one task of 32 support and 32 query sequences, one inner
    SGD step): metalearn ``meta.MAML`` (``fit`` on a fixed batch, one iteration) vs
    PyTorch ``torch.func.functional_call`` with ``autograd.grad(create_graph=True)``,
    the query loss's backward through it and ``Adam.step``.

    python benchmarks/lstm.py [--threads 1] [--repeats 5] [--budget 0.5] [--cpu-time]

Prints seconds per step (min of N interleaved chunks) and the ratio PyTorch / metalearn
(> 1: metalearn is faster). Runs without PyTorch too (metalearn only). ``--cpu-time``
times by this thread's CPU time (``time.thread_time``) rather than the wall clock: with
one thread each, the steadier measure on a machine that other jobs share (it counts the
calling thread only: meaningful with ``--threads 1``).
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

B, T, F, U = 32, 50, 32, 128
INNER_LR, LR = 0.01, 1e-3


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    y = rng.standard_normal((B, 1)).astype(np.float32)
    xq = rng.standard_normal((B, T, F)).astype(np.float32)
    yq = rng.standard_normal((B, 1)).astype(np.float32)
    return x, y, xq, yq


# ----------------------------------------------------------------- metalearn
def ml_model():
    import metalearn as ml
    from metalearn import keras

    ml.random.set_seed(0)
    return keras.Sequential([keras.Input((T, F)), keras.layers.LSTM(U), keras.layers.Dense(1)])


def ml_train_step():
    model = ml_model()
    model.compile(optimizer="adam", loss="mse")
    x, y, _, _ = data()
    return lambda: model.train_on_batch(x, y)


def ml_maml_step():
    from metalearn.meta import MAML
    from metalearn.tasks import Task

    maml = MAML(ml_model(), inner_lr=INNER_LR, meta_lr=LR, loss="mse")
    x, y, xq, yq = data()
    batch = Task(x[None], y[None], xq[None], yq[None], {"batched": True})
    return lambda: maml.fit(batch, iterations=1, meta_batch_size=1, verbose=0)


# ------------------------------------------------------------------- PyTorch
def torch_model():
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(F, U, batch_first=True)
            self.head = torch.nn.Linear(U, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    return Net()


def torch_train_step():
    import torch

    net = torch_model()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x, y = (torch.tensor(a) for a in data()[:2])

    def step():
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()

    return step


def torch_maml_step():
    import torch
    from torch.func import functional_call

    net = torch_model()
    names = [n for n, _ in net.named_parameters()]
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    x, y, xq, yq = (torch.tensor(a) for a in data())

    def step():
        opt.zero_grad()
        loss = ((functional_call(net, dict(zip(names, params)), (x,)) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        fast = [p - INNER_LR * g for p, g in zip(params, grads)]
        qloss = ((functional_call(net, dict(zip(names, fast)), (xq,)) - yq) ** 2).mean()
        qloss.backward()
        opt.step()

    return step


# -------------------------------------------------------------------- timing
def interleaved_min(fns, budget, repeats, clock=time.perf_counter):
    """Each callable: a warm-up call, a chunk sized to about `budget` seconds, `repeats`
    rounds of chunks with the callables interleaved; the min seconds per call of each, by
    `clock`."""
    number = {}
    for k, f in fns.items():
        f()
        t0 = clock()
        f()
        number[k] = max(1, int(budget / max(clock() - t0, 1e-7)))
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = clock()
            for _ in range(number[k]):
                f()
            best[k] = min(best[k], (clock() - t0) / number[k])
    return best


def set_threads(n):
    import metalearn as ml

    ml.set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def rows(budget=0.5, repeats=5, clock=time.perf_counter):
    """``[(name, {peer: seconds per step})]`` for the two steps."""
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    out = []
    for name, ours, theirs in (
        ("lstm train step", ml_train_step, torch_train_step),
        ("lstm maml 2nd step", ml_maml_step, torch_maml_step),
    ):
        fns = {"metalearn": ours()}
        if have_torch:
            fns["torch eager"] = theirs()
        out.append((name, interleaved_min(fns, budget, repeats, clock)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per timed chunk")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this thread's CPU time (time.thread_time), not the wall clock",
    )
    args = ap.parse_args()
    set_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(
        f"LSTM hidden {U}, seq {T}, batch {B}, features {F}; {args.threads} thread(s); "
        f"{'thread CPU time' if args.cpu_time else 'wall clock'}"
    )
    for name, t in rows(args.budget, args.repeats, clock):
        line = f"{name:<20} metalearn {t['metalearn'] * 1e3:8.2f} ms"
        if "torch eager" in t:
            ratio = t["torch eager"] / t["metalearn"]
            line += f"   torch eager {t['torch eager'] * 1e3:8.2f} ms   ratio {ratio:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
