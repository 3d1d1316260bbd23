#!/usr/bin/env python
"""PyTorch float64 reference for MAML through an LSTM (issue 22).

Run by hand (needs torch; the test suite does not):
    /work/kref/bin/python tests/reference/generate_lstm_maml.py

The model is ``torch.nn.LSTM`` (its own cell, independent of metalearn) followed by a
linear head on the last step's output, run through ``torch.func.functional_call`` with
the fast weights; MAML's inner steps differentiate with ``create_graph=True`` (second
order) or without (first order). Inputs and initial weights are float32, the reference is
computed in float64 from them.

Keras layout (what the test loads into metalearn's LSTM):
    kernel (in, 4u) = weight_ih_l0.T, recurrent_kernel (u, 4u) = weight_hh_l0.T, bias (4u)
    = bias_ih_l0 (bias_hh_l0 held at 0), gates i, f, c, o in both libraries;
    dense kernel (u, 1) = head.weight.T, dense bias = head.bias.

lstm_maml.npz:
  w/kernel w/recurrent_kernel w/bias w/dense_kernel w/dense_bias   initial weights
  xs ys xq yq            (tasks, n, steps, features) sequences and (tasks, n, 1) targets
  inner_lr, inner_steps
  loss                   the meta-loss (mean over tasks of the query MSE after adaptation)
  grad2/<w>, grad1/<w>   meta-gradients (second and first order) in Keras layout
"""

import os

import numpy as np
import torch
from torch.func import functional_call

torch.set_default_dtype(torch.float64)
NAMES = ["kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias"]


class Net(torch.nn.Module):
    def __init__(self, features, units):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, units, batch_first=True)
        self.head = torch.nn.Linear(units, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def params_of(leaves, units):
    k, r, b, dk, db = leaves
    return {
        "lstm.weight_ih_l0": k.T,
        "lstm.weight_hh_l0": r.T,
        "lstm.bias_ih_l0": b,
        "lstm.bias_hh_l0": torch.zeros(4 * units),
        "head.weight": dk.T,
        "head.bias": db,
    }


def mse(a, b):
    return ((a - b) ** 2).mean()


def meta_loss(net, leaves, data, inner_lr, inner_steps, units, second_order):
    xs, ys, xq, yq = data
    total = 0.0
    for t in range(xs.shape[0]):
        fast = list(leaves)
        for _ in range(inner_steps):
            loss = mse(functional_call(net, params_of(fast, units), (xs[t],)), ys[t])
            g = torch.autograd.grad(loss, fast, create_graph=second_order)
            fast = [w - inner_lr * gi for w, gi in zip(fast, g)]
        total = total + mse(functional_call(net, params_of(fast, units), (xq[t],)), yq[t])
    return total / xs.shape[0]


def main(outdir):
    rng = np.random.default_rng(22)
    tasks, n, steps, features, units = 2, 4, 5, 2, 6
    inner_lr, inner_steps = 0.1, 2
    w = [
        (rng.standard_normal((features, 4 * units)) * 0.5).astype(np.float32),
        (rng.standard_normal((units, 4 * units)) * 0.4).astype(np.float32),
        (rng.standard_normal(4 * units) * 0.1).astype(np.float32),
        (rng.standard_normal((units, 1)) * 0.7).astype(np.float32),
        (rng.standard_normal(1) * 0.1).astype(np.float32),
    ]
    # a few-shot sequence regression: the target is a task's weighted sum of the inputs
    xs = rng.uniform(-1, 1, (tasks, n, steps, features)).astype(np.float32)
    xq = rng.uniform(-1, 1, (tasks, n, steps, features)).astype(np.float32)
    coef = rng.uniform(-1, 1, (tasks, 1, 1, features))
    ys = (xs * coef).sum(axis=(2, 3))[..., None].astype(np.float32)
    yq = (xq * coef).sum(axis=(2, 3))[..., None].astype(np.float32)
    net = Net(features, units)
    data = [torch.tensor(a.astype(np.float64)) for a in (xs, ys, xq, yq)]
    out = {f"w/{k}": v for k, v in zip(NAMES, w)}
    out.update(xs=xs, ys=ys, xq=xq, yq=yq)
    out["inner_lr"], out["inner_steps"] = np.float64(inner_lr), np.int64(inner_steps)
    for order in (2, 1):
        leaves = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in w]
        loss = meta_loss(net, leaves, data, inner_lr, inner_steps, units, order == 2)
        grads = torch.autograd.grad(loss, leaves)
        if order == 2:
            out["loss"] = np.float64(loss.item())
        for k, g in zip(NAMES, grads):
            out[f"grad{order}/{k}"] = g.detach().numpy()
    diff = max(np.abs(out[f"grad2/{k}"] - out[f"grad1/{k}"]).max() for k in NAMES)
    assert diff > 1e-4, diff  # the orders differ on this problem
    np.savez(os.path.join(outdir, "lstm_maml.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
