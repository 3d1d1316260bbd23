#!/usr/bin/env python
"""PyTorch float64 reference for MAML++ (Antoniou, Edwards & Storkey, ICLR 2019).

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_mamlpp.py

Written from the paper (section 4) and the per-step loss schedule of its official code
(``get_per_step_loss_importance_vector``), independently of metalearn. Inputs are float32;
the references are computed in float64 from them.

mamlpp.npz:
  mlp/W1 b1 W2 b2 W3 b3   a 1 -> 8 tanh -> 8 tanh -> 1 MLP (Keras layout: y = x @ W + b)
  xs ys xq yq             (tasks, n, 1) sinusoid support/query sets
  rates                   (steps, 6) LSLR inner rates, one per layer weight per step
  msl/epoch, msl/epochs   the epoch at which the weights are taken, the annealing length
  msl/weights             (steps,) per-step importance weights at that epoch
  msl/table               (12, steps) weights at epochs 0..11 (the schedule itself)
  loss                    the multi-step meta-loss (mean over tasks)
  grad2/<p>, grad1/<p>    meta-gradient w.r.t. each weight and rates (second order;
                          first order: inner gradients held constant)
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
NAMES = ["W1", "b1", "W2", "b2", "W3", "b3"]


def msl_weights(steps, epoch, msl_epochs):
    """The paper's annealed multi-step loss: uniform 1/N at epoch 0; each non-final weight
    decays linearly by 1/(N * msl_epochs) per epoch down to 0.03/N; the final one grows by
    what they lose, capped at 1 - (N-1) * 0.03/N."""
    w = np.full(steps, 1.0 / steps)
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    for i in range(steps - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return w


def forward(p, x):
    h = torch.tanh(x @ p[0] + p[1])
    h = torch.tanh(h @ p[2] + p[3])
    return h @ p[4] + p[5]


def mse(a, b):
    return ((a - b) ** 2).mean()


def meta_loss(params, rates, data, weights, second_order):
    xs, ys, xq, yq = data
    total = 0.0
    for t in range(xs.shape[0]):
        fast = list(params)
        lt = 0.0
        for s in range(len(weights)):
            g = torch.autograd.grad(
                mse(forward(fast, xs[t]), ys[t]), fast, create_graph=second_order
            )
            fast = [w - rates[s, i] * gi for i, (w, gi) in enumerate(zip(fast, g))]
            lt = lt + weights[s] * mse(forward(fast, xq[t]), yq[t])
        total = total + lt
    return total / xs.shape[0]


def main(outdir):
    rng = np.random.default_rng(2019)
    shapes = [(1, 8), (8,), (8, 8), (8,), (8, 1), (1,)]
    init = [
        (rng.standard_normal(s) * (0.8 if len(s) == 2 else 0.1)).astype(np.float32) for s in shapes
    ]
    tasks, n, steps = 2, 5, 2
    amp = rng.uniform(0.5, 2.0, (tasks, 1, 1))
    phase = rng.uniform(0, np.pi, (tasks, 1, 1))
    xs = rng.uniform(-5, 5, (tasks, n, 1)).astype(np.float32)
    xq = rng.uniform(-5, 5, (tasks, n, 1)).astype(np.float32)
    ys = (amp * np.sin(xs - phase)).astype(np.float32)
    yq = (amp * np.sin(xq - phase)).astype(np.float32)
    rates = (0.05 + 0.04 * rng.uniform(size=(steps, 6))).astype(np.float32)
    epoch, epochs = 3, 10
    weights = msl_weights(steps, epoch, epochs)
    out = {f"mlp/{k}": v for k, v in zip(NAMES, init)}
    out.update(xs=xs, ys=ys, xq=xq, yq=yq, rates=rates)
    out["msl/epoch"], out["msl/epochs"] = np.int64(epoch), np.int64(epochs)
    out["msl/weights"] = weights
    out["msl/table"] = np.stack([msl_weights(steps, e, epochs) for e in range(12)])
    out["msl/table5"] = np.stack([msl_weights(5, e, epochs) for e in range(12)])
    data = [torch.tensor(a.astype(np.float64)) for a in (xs, ys, xq, yq)]
    for order in (2, 1):
        params = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in init]
        r = torch.tensor(rates.astype(np.float64), requires_grad=True)
        loss = meta_loss(params, r, data, torch.tensor(weights), order == 2)
        grads = torch.autograd.grad(loss, params + [r])
        if order == 2:
            out["loss"] = np.float64(loss.item())
        for k, g in zip(NAMES + ["rates"], grads):
            out[f"grad{order}/{k}"] = g.detach().numpy()
    diff = np.abs(out["grad2/W1"] - out["grad1/W1"]).max()
    assert diff > 1e-4, diff  # the orders differ on this problem
    np.savez(os.path.join(outdir, "mamlpp.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
