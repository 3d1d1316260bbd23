#!/usr/bin/env python
"""PyTorch float64 reference for MAML with a differentiable inner optimizer (higher's
DifferentiableOptimizer; torch.func would compute the same): two inner steps of SGD with
momentum, or of Adam, from the meta-weights, recorded (create_graph=True), then the query
loss and its gradient w.r.t. the meta-weights (second order through the moments).

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_inner_optim.py

The update rules are torch.optim.SGD(momentum) and torch.optim.Adam's, written out as
functions (Kingma & Ba 2015, Algorithm 1; moments starting at zero for the task).

inner_optim.npz:
  W1, b1, W2, b2       MLP 1 -> 8 (tanh) -> 1 (Keras layout: x @ W + b)
  xs, ys, xq, yq       one sinusoid-like regression task (10 support, 12 query points)
  lr, mu, beta1, beta2, eps
  <opt>/loss           the query MSE after 2 inner steps (opt: momentum, adam)
  <opt>/grad/<name>    its second-order meta-gradient w.r.t. each weight
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
NAMES = ["W1", "b1", "W2", "b2"]


def forward(p, x):
    return torch.tanh(x @ p[0] + p[1]) @ p[2] + p[3]


def adapt(params, xs, ys, opt, lr, mu, b1, b2, eps, steps=2):
    fast, state = list(params), None
    for t in range(1, steps + 1):
        loss = ((forward(fast, xs) - ys) ** 2).mean()
        g = torch.autograd.grad(loss, fast, create_graph=True)
        if opt == "momentum":
            state = list(g) if state is None else [mu * b + gi for b, gi in zip(state, g)]
            fast = [w - lr * b for w, b in zip(fast, state)]
        else:
            if state is None:
                state = ([torch.zeros_like(w) for w in fast], [torch.zeros_like(w) for w in fast])
            m = [b1 * mm + (1 - b1) * gi for mm, gi in zip(state[0], g)]
            v = [b2 * vv + (1 - b2) * gi * gi for vv, gi in zip(state[1], g)]
            state = (m, v)
            c1, c2 = 1 - b1**t, 1 - b2**t
            fast = [
                w - lr * (mm / c1) / (torch.sqrt(vv / c2) + eps) for w, mm, vv in zip(fast, m, v)
            ]
    return fast


def main(outdir):
    rng = np.random.default_rng(2019)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    amp, phase = 2.0, 0.7
    xs = rng.uniform(-5, 5, (10, 1)).astype(np.float32)
    xq = rng.uniform(-5, 5, (12, 1)).astype(np.float32)
    arrays = {
        "W1": f32(1, 8) * np.float32(0.8),
        "b1": f32(8) * np.float32(0.3),
        "W2": f32(8, 1) * np.float32(0.5),
        "b2": f32(1) * np.float32(0.1),
        "xs": xs,
        "ys": (amp * np.sin(xs - phase)).astype(np.float32),
        "xq": xq,
        "yq": (amp * np.sin(xq - phase)).astype(np.float32),
        "lr": np.float64(0.01),
        "mu": np.float64(0.9),
        "beta1": np.float64(0.9),
        "beta2": np.float64(0.999),
        "eps": np.float64(1e-8),
    }
    t = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in arrays.items()}
    out = dict(arrays)
    for opt in ("momentum", "adam"):
        params = [t[n].clone().requires_grad_(True) for n in NAMES]
        fast = adapt(params, t["xs"], t["ys"], opt, 0.01, 0.9, 0.9, 0.999, 1e-8)
        loss = ((forward(fast, t["xq"]) - t["yq"]) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        out[f"{opt}/loss"] = np.float64(loss.item())
        for n, g in zip(NAMES, grads):
            out[f"{opt}/grad/{n}"] = g.numpy()
    np.savez(os.path.join(outdir, "inner_optim.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
