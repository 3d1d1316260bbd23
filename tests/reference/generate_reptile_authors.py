#!/usr/bin/env python
"""PyTorch float64 reference for Reptile's inner loop as the authors' code runs it
(openai/supervised-reptile, reptile.py and models.py): one Adam optimizer with beta_1 = 0,
created once, whose state (moments and step count) carries from task to task and across
meta-iterations while the model's weights are reset to theta for each task; inner steps on
mini-batches cut in order from random permutations of the support (their `_mini_batches`
without replacement); then theta + epsilon * (mean_i phi_i - theta). Evaluation adapts
from the carried state and restores it afterwards.

Run by hand (needs torch; the test suite does not):
    python tests/reference/generate_reptile_authors.py

The permutations are drawn here (numpy) and stored, so the test can hand the same ones to
metalearn's Reptile.

reptile_authors.npz:
  W1, b1, W2, b2          MLP 4 -> 8 (tanh) -> 3 logits (Keras layout: x @ W + b)
  sx<i>_<t>, sy<i>_<t>    support of task t of meta-iteration i (6 examples, 3 classes)
  qx, qy, ax, ay          a query set (unused by the update) and a task adapted after training
  perms                   every permutation drawn, in order (rows of 6), training then adapt
  lr, beta2, eps, epsilon, steps, batch, iterations, tasks
  <case>/W1 ...           theta after the meta-iterations (case: carry, reset)
  <case>/v/<name>         Adam's second moments after training (carry only)
  <case>/t                Adam's step count after training (carry only)
  <case>/adapted/<name>   the weights adapted on (ax, ay) from the trained theta
  reset/...               the same run with the optimizer's state reset for every task
                          (beta_1 = 0.9): Adam restarted per task, as MAML's inner Adam
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
NAMES = ["W1", "b1", "W2", "b2"]
N, K, D, H, C = 6, 2, 4, 8, 3


def forward(p, x):
    return torch.tanh(x @ p[0] + p[1]) @ p[2] + p[3]


def mini_batches(n, batch, steps, perms):
    """The authors' _mini_batches(replacement=False) over indices: permutations of the
    support cut in order into batches, a new permutation when one is used up."""
    out, cur = [], []
    while len(out) < steps:
        p = perms.pop(0)
        for i in p:
            cur.append(int(i))
            if len(cur) == batch:
                out.append(cur)
                cur = []
                if len(out) == steps:
                    break
    return out


def run(arrays, perms, carry, beta1):
    lr, b2, eps = float(arrays["lr"]), float(arrays["beta2"]), float(arrays["eps"])
    steps, batch = int(arrays["steps"]), int(arrays["batch"])
    epsilon = float(arrays["epsilon"])
    theta = [torch.tensor(np.asarray(arrays[n], np.float64)) for n in NAMES]
    params = [t.clone().requires_grad_(True) for t in theta]
    opt = torch.optim.Adam(params, lr=lr, betas=(beta1, b2), eps=eps)
    perms = list(perms)

    def adapt(x, y):
        x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.int64)
        for rows in mini_batches(len(y), batch, steps, perms):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(forward(params, x[rows]), y[rows])
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in params]

    for i in range(int(arrays["iterations"])):
        phis = []
        for t in range(int(arrays["tasks"])):
            with torch.no_grad():
                for p, th in zip(params, theta):
                    p.copy_(th)
            if not carry:
                opt.state.clear()  # a fresh Adam for the task
            phis.append(adapt(arrays[f"sx{i}_{t}"], arrays[f"sy{i}_{t}"]))
        theta = [
            th + epsilon * (torch.stack([ph[k] for ph in phis]).mean(0) - th)
            for k, th in enumerate(theta)
        ]
    out = {n: th.numpy() for n, th in zip(NAMES, theta)}
    if carry:
        out.update(
            {f"v/{n}": opt.state[p]["exp_avg_sq"].numpy().copy() for n, p in zip(NAMES, params)}
        )
        out["t"] = np.float64(float(opt.state[params[0]]["step"]))
    saved = {
        k: (dict((kk, vv.clone() if torch.is_tensor(vv) else vv) for kk, vv in s.items()))
        for k, s in opt.state.items()
    }
    with torch.no_grad():
        for p, th in zip(params, theta):
            p.copy_(th)
    if not carry:
        opt.state.clear()
    adapted = adapt(arrays["ax"], arrays["ay"])
    opt.state.clear()
    opt.state.update(saved)  # the authors restore the optimizer's state after evaluating
    out.update({f"adapted/{n}": a.numpy() for n, a in zip(NAMES, adapted)})
    return out, perms


def main(outdir):
    rng = np.random.default_rng(1803)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    arrays = {
        "W1": f32(D, H) * np.float32(0.6),
        "b1": f32(H) * np.float32(0.2),
        "W2": f32(H, C) * np.float32(0.6),
        "b2": f32(C) * np.float32(0.1),
        "lr": np.float64(0.05),
        "beta2": np.float64(0.999),
        "eps": np.float64(1e-8),
        "epsilon": np.float64(0.5),
        "steps": np.int64(3),
        "batch": np.int64(4),
        "iterations": np.int64(2),
        "tasks": np.int64(3),
    }
    labels = np.repeat(np.arange(C), K)
    for i in range(2):
        for t in range(3):
            arrays[f"sx{i}_{t}"] = f32(N, D)
            arrays[f"sy{i}_{t}"] = rng.permutation(labels).astype(np.int64)
    arrays["ax"], arrays["ay"] = f32(N, D), rng.permutation(labels).astype(np.int64)
    # 3 steps of 4 from 6 examples take 2 permutations a task; 7 tasks in all
    perms = [rng.permutation(N) for _ in range(2 * 7)]
    arrays["perms"] = np.stack(perms).astype(np.int64)
    out = dict(arrays)
    for case, carry, beta1 in (("carry", True, 0.0), ("reset", False, 0.9)):
        res, left = run(arrays, perms, carry, beta1)
        assert not left, "every permutation is used"
        out.update({f"{case}/{k}": v for k, v in res.items()})
    np.savez(os.path.join(outdir, "reptile_authors.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
