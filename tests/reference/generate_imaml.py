#!/usr/bin/env python
"""PyTorch float64 reference for iMAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019).

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_imaml.py

The exact implicit meta-gradient of the proximal inner problem, written from the paper
(eq. 4-6 and Lemma 1), independently of metalearn:

    phi*(theta) = argmin_phi  L_S(phi) + lam/2 ||phi - theta||^2       (solved by Newton)
    d L_Q(phi*) / d theta = (I + H_S(phi*) / lam)^-1 grad L_Q(phi*)    (exact solve)

with H_S the full Hessian of the support loss at phi*. Inputs float32, computed in float64.

imaml.npz:
  mlp/W1 b1 W2 b2     a 2 -> 4 tanh -> 1 MLP (Keras layout: y = x @ W + b)
  xs ys xq yq         one regression task (n, 2) / (n, 1)
  lam                 the proximal strength lambda
  phi/<p>             the inner solution phi*
  loss                L_Q(phi*)
  grad/<p>            the exact implicit meta-gradient
  naive/<p>           grad L_Q(phi*) (first order), which must differ from it
  damping, lam_damping  the official code's CG damping (aravindr93/imaml_dev: 1.0, 10.0)
  damped/<p>          ((1 + damping) I + H_S(phi*) / (lam + lam_damping))^-1 grad L_Q(phi*),
                      the system that code's conjugate gradient solves
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
NAMES = ["W1", "b1", "W2", "b2"]
SHAPES = [(2, 4), (4,), (4, 1), (1,)]


def unflat(v):
    out, i = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(v[i : i + n].reshape(s))
        i += n
    return out


def loss(v, x, y):
    W1, b1, W2, b2 = unflat(v)
    return ((torch.tanh(x @ W1 + b1) @ W2 + b2 - y) ** 2).mean()


def main(outdir):
    rng = np.random.default_rng(2019)
    init = [(rng.standard_normal(s) * 0.7).astype(np.float32) for s in SHAPES]
    xs = rng.uniform(-2, 2, (8, 2)).astype(np.float32)
    xq = rng.uniform(-2, 2, (8, 2)).astype(np.float32)
    f = lambda x: np.sin(x[:, :1]) + 0.5 * x[:, 1:]
    ys, yq = f(xs).astype(np.float32), f(xq).astype(np.float32)
    lam = np.float32(2.0)
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    theta = torch.cat([t(a).reshape(-1) for a in init])
    Xs, Ys, Xq, Yq = t(xs), t(ys), t(xq), t(yq)
    prox = lambda v: loss(v, Xs, Ys) + 0.5 * float(lam) * ((v - theta) ** 2).sum()
    phi = theta.clone()
    for _ in range(50):  # Newton on the strongly convex (for this lam) proximal objective
        g = torch.autograd.functional.jacobian(prox, phi)
        h = torch.autograd.functional.hessian(prox, phi)
        phi = phi - torch.linalg.solve(h, g)
    g = torch.autograd.functional.jacobian(prox, phi)
    assert g.abs().max() < 1e-12, g.abs().max()
    H = torch.autograd.functional.hessian(lambda v: loss(v, Xs, Ys), phi)
    assert torch.linalg.eigvalsh(torch.eye(len(phi)) + H / float(lam)).min() > 0
    gq = torch.autograd.functional.jacobian(lambda v: loss(v, Xq, Yq), phi)
    meta = torch.linalg.solve(torch.eye(len(phi)) + H / float(lam), gq)
    damping, lam_damping = np.float32(1.0), np.float32(10.0)
    eye = torch.eye(len(phi))
    damped = torch.linalg.solve((1 + float(damping)) * eye + H / float(lam + lam_damping), gq)
    out = {f"mlp/{k}": v for k, v in zip(NAMES, init)}
    out.update(damping=damping, lam_damping=lam_damping)
    out.update(xs=xs, ys=ys, xq=xq, yq=yq, lam=lam, loss=np.float64(loss(phi, Xq, Yq).item()))
    for name, arr in (("phi", phi), ("grad", meta), ("naive", gq), ("damped", damped)):
        for k, a in zip(NAMES, unflat(arr)):
            out[f"{name}/{k}"] = a.numpy()
    assert (meta - gq).abs().max() > 1e-3  # the implicit term matters here
    np.savez(os.path.join(outdir, "imaml.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
