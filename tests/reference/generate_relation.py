#!/usr/bin/env python
"""PyTorch float64 reference for Relation Networks (Sung et al. 2018): class embeddings are
the sums of their support embeddings, each (class, query) pair is concatenated (class
first, on the feature axis) and scored by the relation module through a sigmoid, and the
loss is the mean squared error to the one-hot labels (eq. 1-3).

Run by hand (needs torch; the test suite does not):  python tests/reference/generate_relation.py

Written from the paper, independently of metalearn; inputs are float32, the references
are computed in float64 from them.

relation.npz:
  enc/W, enc/b          encoder Dense(6, tanh) on 4 inputs (Keras layout: x @ W + b)
  rel/W1, rel/b1        relation module Dense(5, tanh) on the 12 concatenated features
  rel/W2, rel/b2        then Dense(1) (the sigmoid is the head's)
  xs, ys, xq, yq        a 3-way 2-shot episode (ys, yq int64), 4 queries per class
  v/W                   a direction for a Hessian-vector product in enc/W
  scores                (n_query, 3) relation scores
  loss                  the mean squared error to the one-hot labels
  grad/<name>           gradient of the loss w.r.t. each weight above
  hvp/W                 d/d(enc/W) <dL/d(enc/W), v>
"""

import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def scores_of(p, xs, ys, xq, n_way):
    s = torch.tanh(xs @ p["enc/W"] + p["enc/b"])
    q = torch.tanh(xq @ p["enc/W"] + p["enc/b"])
    onehot = torch.nn.functional.one_hot(ys, n_way).double()
    classes = onehot.T @ s  # sum of each class's support embeddings (eq. 1's C)
    n_q = q.shape[0]
    pairs = torch.cat(
        [classes.unsqueeze(0).expand(n_q, -1, -1), q.unsqueeze(1).expand(-1, n_way, -1)], dim=2
    ).reshape(n_q * n_way, -1)
    h = torch.tanh(pairs @ p["rel/W1"] + p["rel/b1"])
    return torch.sigmoid(h @ p["rel/W2"] + p["rel/b2"]).reshape(n_q, n_way)


def main(outdir):
    rng = np.random.default_rng(2018)
    n_way, k, nq, din, d, hid = 3, 2, 4, 4, 6, 5
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    arrays = {
        "enc/W": f32(din, d) * np.float32(0.7),
        "enc/b": f32(d) * np.float32(0.1),
        "rel/W1": f32(2 * d, hid) * np.float32(0.5),
        "rel/b1": f32(hid) * np.float32(0.1),
        "rel/W2": f32(hid, 1) * np.float32(0.5),
        "rel/b2": f32(1) * np.float32(0.1),
        "xs": f32(n_way * k, din),
        "ys": np.repeat(np.arange(n_way), k).astype(np.int64),
        "xq": f32(n_way * nq, din),
        "yq": np.repeat(np.arange(n_way), nq).astype(np.int64),
        "v/W": f32(din, d),
    }
    names = ["enc/W", "enc/b", "rel/W1", "rel/b1", "rel/W2", "rel/b2"]
    p = {n: torch.tensor(arrays[n].astype(np.float64), requires_grad=True) for n in names}
    xs, xq = (torch.tensor(arrays[n].astype(np.float64)) for n in ("xs", "xq"))
    ys, yq = torch.tensor(arrays["ys"]), torch.tensor(arrays["yq"])
    scores = scores_of(p, xs, ys, xq, n_way)
    target = torch.nn.functional.one_hot(yq, n_way).double()
    loss = ((scores - target) ** 2).mean()  # eq. 3
    grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=True)
    v = torch.tensor(arrays["v/W"].astype(np.float64))
    (hvp,) = torch.autograd.grad((grads[0] * v).sum(), [p["enc/W"]])
    out = dict(arrays)
    out["scores"] = scores.detach().numpy()
    out["loss"] = np.float64(loss.item())
    for n, g in zip(names, grads):
        out[f"grad/{n}"] = g.detach().numpy()
    out["hvp/W"] = hvp.numpy()
    np.savez(os.path.join(outdir, "relation.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
