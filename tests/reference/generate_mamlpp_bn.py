#!/usr/bin/env python
"""PyTorch float64 reference for MAML++'s per-step batch-norm weights (BNWB; Antoniou,
Edwards & Storkey, ICLR 2019, section 4), with learned per-step inner rates (LSLR) and the
multi-step loss.

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_mamlpp_bn.py

Written from the paper and its official code's step indexing (the support pass at inner
step s and the query pass after step s's update use the batch-norm scale and offset of
step s; those are not adapted in the inner loop), independently of metalearn. Batch norm
in training mode: the batch's mean and biased variance, epsilon 1e-3. Inputs are float32;
the references are computed in float64 from them.

mamlpp_bn.npz:
  W1 b1 W2 b2          a 1 -> 8 Dense -> BN -> tanh -> 1 Dense MLP (Keras layout)
  gamma beta           (steps, 8) per-step scale and offset
  rates                (steps, 4) LSLR rates of W1, b1, W2, b2
  weights              (steps,) the multi-step loss's weights
  xs ys xq yq          (tasks, n, 1) sinusoid support/query sets
  loss                 the meta-loss (mean over tasks)
  grad/<p>             its gradient (second order) w.r.t. W1 b1 W2 b2 gamma beta rates
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
EPS = 1e-3


def forward(p, gamma, beta, x):
    h = x @ p[0] + p[1]
    mean = h.mean(0)
    var = ((h - mean) ** 2).mean(0)
    h = gamma * (h - mean) / torch.sqrt(var + EPS) + beta
    return torch.tanh(h) @ p[2] + p[3]


def mse(a, b):
    return ((a - b) ** 2).mean()


def meta_loss(p, gamma, beta, rates, weights, data):
    xs, ys, xq, yq = data
    total = 0.0
    for t in range(xs.shape[0]):
        fast = list(p)
        for s in range(len(weights)):
            loss = mse(forward(fast, gamma[s], beta[s], xs[t]), ys[t])
            g = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [w - rates[s, i] * gi for i, (w, gi) in enumerate(zip(fast, g))]
            total = total + weights[s] * mse(forward(fast, gamma[s], beta[s], xq[t]), yq[t])
    return total / xs.shape[0]


def main(outdir):
    rng = np.random.default_rng(2019_4)
    tasks, n, steps = 2, 6, 2
    out = {
        "W1": (rng.standard_normal((1, 8)) * 0.8).astype(np.float32),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "W2": (rng.standard_normal((8, 1)) * 0.8).astype(np.float32),
        "b2": (rng.standard_normal(1) * 0.1).astype(np.float32),
        "gamma": (1.0 + 0.2 * rng.standard_normal((steps, 8))).astype(np.float32),
        "beta": (0.1 * rng.standard_normal((steps, 8))).astype(np.float32),
        "rates": (0.05 + 0.04 * rng.uniform(size=(steps, 4))).astype(np.float32),
        "weights": np.array([0.3, 0.7]),
    }
    amp = rng.uniform(0.5, 2.0, (tasks, 1, 1))
    phase = rng.uniform(0, np.pi, (tasks, 1, 1))
    xs = rng.uniform(-5, 5, (tasks, n, 1))
    xq = rng.uniform(-5, 5, (tasks, n, 1))
    out.update(
        xs=xs.astype(np.float32),
        ys=(amp * np.sin(xs - phase)).astype(np.float32),
        xq=xq.astype(np.float32),
        yq=(amp * np.sin(xq - phase)).astype(np.float32),
    )
    names = ["W1", "b1", "W2", "b2", "gamma", "beta", "rates"]
    t = {k: torch.tensor(out[k].astype(np.float64), requires_grad=True) for k in names}
    data = [torch.tensor(out[k].astype(np.float64)) for k in ("xs", "ys", "xq", "yq")]
    p = [t["W1"], t["b1"], t["W2"], t["b2"]]
    loss = meta_loss(p, t["gamma"], t["beta"], t["rates"], torch.tensor(out["weights"]), data)
    grads = torch.autograd.grad(loss, [t[k] for k in names])
    out["loss"] = np.float64(loss.item())
    for k, g in zip(names, grads):
        out[f"grad/{k}"] = g.detach().numpy()
    assert np.abs(out["grad/gamma"][0] - out["grad/gamma"][1]).max() > 1e-3  # steps differ
    np.savez(os.path.join(outdir, "mamlpp_bn.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
