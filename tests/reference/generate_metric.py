#!/usr/bin/env python
"""PyTorch float64 references for the metric heads: Matching Networks (Vinyals et al. 2016,
cosine attention, no full-context embeddings) and R2D2 (Bertinetto et al. 2019, ridge
regression in closed form, Woodbury form, as the authors' code computes it: a column of
ones for a per-class bias, X and Y divided by sqrt(n); r2d2_nobias without the ones).

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_metric.py

Written from the papers, independently of metalearn; inputs are float32, the references
are computed in float64 from them.

metric.npz:
  enc/W, enc/b          encoder Dense(10, tanh) on 4 inputs (Keras layout: x @ W + b)
  xs, ys, xq, yq        a 3-way 2-shot episode (ys, yq int64), 4 queries per class
  v/W                   a direction for a Hessian-vector product in W
  r2d2/lam, scale       the ridge penalty lambda (> 0, per support example: X and Y are
                        divided by sqrt(n)) and the logits' scale
  <head>/logits         query logits (matching: log of the attention-weighted labels)
  <head>/loss           mean query cross-entropy
  <head>/grad/W, grad/b gradient of the loss w.r.t. the encoder
  <head>/hvp/W          d/dW <dL/dW, v>  (second order through the head)
  r2d2/grad/lam, grad/scale
  r2d2_nobias/...       the same keys without the bias column
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def embed(W, b, x):
    return torch.tanh(x @ W + b)


def cosine(a, b):
    # the same guard as metalearn's cosine: x / sqrt(|x|^2 + 1e-8)
    an = a / torch.sqrt((a * a).sum(1, keepdim=True) + 1e-8)
    bn = b / torch.sqrt((b * b).sum(1, keepdim=True) + 1e-8)
    return an @ bn.T


def matching(W, b, xs, ys, xq, n_way):
    s, q = embed(W, b, xs), embed(W, b, xq)
    att = torch.softmax(cosine(q, s), dim=1)  # a(x^, x_i), Vinyals et al. eq. (2)
    onehot = torch.nn.functional.one_hot(ys, n_way).double()
    return torch.log(att @ onehot)  # P(y = c | x^, S) = sum_i a(x^, x_i) y_i


def r2d2(W, b, xs, ys, xq, n_way, lam, scale, bias=True):
    X, Q = embed(W, b, xs), embed(W, b, xq)
    Y = torch.nn.functional.one_hot(ys, n_way).double()
    n = X.shape[0]
    if bias:  # the authors' code (bertinetto/r2d2 RRNet): a column of ones for a bias
        X = torch.cat([X, torch.ones(n, 1)], 1)
    # ... and X, Y divided by sqrt(n) before the Woodbury solve
    # W = X^T (X X^T + lam I)^-1 Y, an n x n system (n = support size)
    X, Y = X / n**0.5, Y / n**0.5
    Wr = X.T @ torch.linalg.solve(X @ X.T + lam * torch.eye(n), Y)
    out = Q @ Wr[: Q.shape[1]] + (Wr[Q.shape[1]] if bias else 0.0)
    return scale * out  # (the adjust layer's scalar offset would not change the softmax)


def main(outdir):
    rng = np.random.default_rng(2016)
    n_way, k, q, din, d = 3, 2, 4, 4, 10
    W0 = (rng.standard_normal((din, d)) * 0.6).astype(np.float32)
    b0 = (rng.standard_normal(d) * 0.1).astype(np.float32)
    centers = rng.standard_normal((n_way, din)) * 1.5
    ys = np.repeat(np.arange(n_way), k)
    yq = np.repeat(np.arange(n_way), q)
    xs = (centers[ys] + rng.standard_normal((len(ys), din))).astype(np.float32)
    xq = (centers[yq] + rng.standard_normal((len(yq), din))).astype(np.float32)
    v = rng.standard_normal((din, d)).astype(np.float32)
    lam, scale = np.float32(0.7), np.float32(3.0)
    out = {"enc/W": W0, "enc/b": b0, "xs": xs, "ys": ys, "xq": xq, "yq": yq, "v/W": v}
    out.update({"r2d2/lam": lam, "r2d2/scale": scale})
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    for head in ("matching", "r2d2", "r2d2_nobias"):
        W = t(W0).requires_grad_()
        b = t(b0).requires_grad_()
        extra = [t(lam).requires_grad_(), t(scale).requires_grad_()]
        args = (W, b, t(xs), torch.tensor(ys), t(xq), n_way)
        if head == "matching":
            logits = matching(*args)
        else:
            logits = r2d2(*args, *extra, bias=head == "r2d2")
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(yq))
        wrt = [W, b] + (extra if head != "matching" else [])
        grads = torch.autograd.grad(loss, wrt, create_graph=True)
        (hvp,) = torch.autograd.grad((grads[0] * t(v)).sum(), [W])
        out[f"{head}/logits"] = logits.detach().numpy()
        out[f"{head}/loss"] = np.float64(loss.item())
        out[f"{head}/grad/W"] = grads[0].detach().numpy()
        out[f"{head}/grad/b"] = grads[1].detach().numpy()
        out[f"{head}/hvp/W"] = hvp.numpy()
        if head != "matching":
            for name, g in zip(("lam", "scale"), grads[2:]):
                out[f"{head}/grad/{name}"] = np.float64(g.item())
    np.savez(os.path.join(outdir, "metric.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
