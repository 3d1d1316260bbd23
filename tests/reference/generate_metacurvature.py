#!/usr/bin/env python
"""PyTorch float64 reference for Meta-Curvature (Park & Oliva, NeurIPS 2019).

Run by hand (needs torch; the test suite does not):
    python tests/reference/generate_metacurvature.py

Written from the paper (section 3: the inner update theta - alpha * MC(g), with MC a tensor
product of one matrix per axis of the gradient, ``G x_1 M_f x_2 M_in x_3 M_out`` for a
convolution kernel and ``M_in G M_out`` for a dense one; biases element-wise as in
learn2learn's MetaCurvatureTransform), independently of metalearn, with einsum. Inputs are
float32; the references are computed in float64 from them. The curvatures are random
near the identity so that every factor matters.

metacurvature.npz, for each model <m> in (mlp, conv):
  <m>/w<i>                 the model's weights (Keras layouts: Dense x @ W + b, Conv2D
                           kernel (kh, kw, in, out), NHWC inputs)
  <m>/c<i>_<j>             curvature j of weight i: (m,) for a bias; (M_in, M_out) for a
                           dense kernel; (M_f, M_in, M_out) for a conv kernel
  <m>/xs ys xq yq          (tasks, n, ...) support and query sets (MSE regression)
  <m>/steps, <m>/lr        inner steps and inner rate
  <m>/loss                 the meta-loss (mean query MSE over tasks)
  <m>/grad<o>/w<i>         meta-gradient w.r.t. the weights (o = 2: second order; 1: the
  <m>/grad<o>/c<i>_<j>     inner gradients held constant) and w.r.t. the curvatures
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def mlp_forward(p, x):
    h = torch.tanh(x @ p[0] + p[1])
    h = torch.tanh(h @ p[2] + p[3])
    return h @ p[4] + p[5]


def conv_forward(p, x):
    # Conv2D(3, 3x3, valid, tanh) on NHWC, Flatten (H, W, C order), Dense(2)
    h = F.conv2d(x.permute(0, 3, 1, 2), p[0].permute(3, 2, 0, 1), p[1])
    h = torch.tanh(h).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return h @ p[2] + p[3]


def precondition(curv, g):
    """MC(g): the paper's tensor product of the gradient with one matrix per axis."""
    if len(curv) == 1:
        return curv[0] * g
    if len(curv) == 2:
        return torch.einsum("ab,bc,cd->ad", curv[0], g, curv[1])
    m_f, m_in, m_out = curv
    kh, kw, n_in, n_out = g.shape
    g3 = g.reshape(kh * kw, n_in, n_out)
    u = torch.einsum("fg,ij,gjk,kl->fil", m_f, m_in, g3, m_out)
    return u.reshape(g.shape)


def meta_loss(forward, params, curvs, data, steps, lr, second_order):
    xs, ys, xq, yq = data
    total = 0.0
    for t in range(xs.shape[0]):
        fast = list(params)
        for _ in range(steps):
            loss = ((forward(fast, xs[t]) - ys[t]) ** 2).mean()
            g = torch.autograd.grad(loss, fast, create_graph=second_order)
            fast = [w - lr * precondition(c, gi) for w, c, gi in zip(fast, curvs, g)]
        total = total + ((forward(fast, xq[t]) - yq[t]) ** 2).mean()
    return total / xs.shape[0]


def curvature_for(rng, shape):
    if len(shape) == 1:
        return [(1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)]
    dims = [shape[-2], shape[-1]]
    if len(shape) > 2:
        dims.insert(0, int(np.prod(shape[:-2])))
    return [(np.eye(n) + 0.15 * rng.standard_normal((n, n))).astype(np.float32) for n in dims]


def make_problem(rng, name):
    tasks = 2
    if name == "mlp":
        shapes = [(1, 8), (8,), (8, 8), (8,), (8, 1), (1,)]
        n, steps, lr = 5, 2, 0.05
        amp = rng.uniform(0.5, 2.0, (tasks, 1, 1))
        phase = rng.uniform(0, np.pi, (tasks, 1, 1))
        xs = rng.uniform(-5, 5, (tasks, n, 1))
        xq = rng.uniform(-5, 5, (tasks, n, 1))
        ys, yq = amp * np.sin(xs - phase), amp * np.sin(xq - phase)
    else:
        shapes = [(3, 3, 2, 3), (3,), (27, 2), (2,)]
        n, steps, lr = 4, 2, 0.1
        xs = rng.standard_normal((tasks, n, 5, 5, 2))
        xq = rng.standard_normal((tasks, n, 5, 5, 2))
        ys = rng.standard_normal((tasks, n, 2))
        yq = rng.standard_normal((tasks, n, 2))
    weights = [
        (rng.standard_normal(s) * (0.1 if len(s) == 1 else 0.5)).astype(np.float32) for s in shapes
    ]
    data = [a.astype(np.float32) for a in (xs, ys, xq, yq)]
    curvs = [curvature_for(rng, s) for s in shapes]
    return weights, curvs, data, steps, np.float32(lr)


def main(outdir):
    rng = np.random.default_rng(2019)
    out = {}
    for name, forward in (("mlp", mlp_forward), ("conv", conv_forward)):
        weights, curvs, data, steps, lr = make_problem(rng, name)
        for i, w in enumerate(weights):
            out[f"{name}/w{i}"] = w
            for j, c in enumerate(curvs[i]):
                out[f"{name}/c{i}_{j}"] = c
        for k, a in zip(("xs", "ys", "xq", "yq"), data):
            out[f"{name}/{k}"] = a
        out[f"{name}/steps"], out[f"{name}/lr"] = np.int64(steps), lr
        tdata = [torch.tensor(a.astype(np.float64)) for a in data]
        for order in (2, 1):
            p = [torch.tensor(w.astype(np.float64), requires_grad=True) for w in weights]
            c = [
                [torch.tensor(m.astype(np.float64), requires_grad=True) for m in cs] for cs in curvs
            ]
            flat = [m for cs in c for m in cs]
            loss = meta_loss(forward, p, c, tdata, steps, float(lr), order == 2)
            grads = torch.autograd.grad(loss, p + flat)
            if order == 2:
                out[f"{name}/loss"] = np.float64(loss.item())
            keys = [f"w{i}" for i in range(len(p))]
            keys += [f"c{i}_{j}" for i, cs in enumerate(c) for j in range(len(cs))]
            for k, g in zip(keys, grads):
                out[f"{name}/grad{order}/{k}"] = g.detach().numpy()
        diff = np.abs(out[f"{name}/grad2/w0"] - out[f"{name}/grad1/w0"]).max()
        assert diff > 1e-4, (name, diff)  # the orders differ on this problem
    np.savez(os.path.join(outdir, "metacurvature.npz"), **out)


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)))
