#!/usr/bin/env python
"""Generate tests/reference/ops_conv.npz: PyTorch references for the layer ops.

Run by hand (needs torch; the test suite itself does not):

    python tests/reference/generate_conv.py [OUTDIR]

Inputs are float32 (fixed seed); references are computed by torch in float64 from those
inputs. Layout is the one of ops_*.npz documented in generate.py:

  <case>/meta   JSON {"op": name of the metalearn._core function, "args", "kwargs",
                      "diff": indices of inputs that require grad, "note"}
                ("$x<i>" in args/kwargs stands for input <case>/x<i>)
  <case>/x<i>   float32 inputs
  <case>/out    forward output
  <case>/w      float32 weights of L = sum(out * w)
  <case>/grad<i>    dL/dx_i
  <case>/v<i>       float32 directions
  <case>/ggrad<i>   d/dx_i [sum_j <dL/dx_j, v_j>]     (Hessian-vector product)
  <case>/jvp        d/dw   [sum_j <dL/dx_j, v_j>]     (J v: the backward's own backward)

metalearn is channels-last (NHWC, kernels (KH, KW, C, F)) as Keras; torch is NCHW with
kernels (F, C, KH, KW), so the torch functions below permute. 'same' padding follows
Keras/TensorFlow: pad_total = max((ceil(n/s) - 1) * s + k - n, 0), the smaller half first.
Max pooling pads with -inf; 'same' average pooling counts only the elements inside the input.
Batch normalisation (training): batch mean and biased variance over all axes but the last.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pad_nchw(x, kh, kw, sh, sw, padding, value=0.0):
    if padding == "valid":
        return x
    pt, pb = _same_pads(x.shape[2], kh, sh)
    pl, pr = _same_pads(x.shape[3], kw, sw)
    return F.pad(x, (pl, pr, pt, pb), value=value)


def t_conv2d(x, kernel, bias=None, strides=(1, 1), padding="valid"):
    sh, sw = _pair(strides)
    kh, kw = kernel.shape[0], kernel.shape[1]
    xc = _pad_nchw(x.permute(0, 3, 1, 2), kh, kw, sh, sw, padding)
    y = F.conv2d(xc, kernel.permute(3, 2, 0, 1), bias, stride=(sh, sw))
    return y.permute(0, 2, 3, 1)


def t_max_pool2d(x, pool_size=(2, 2), strides=None, padding="valid"):
    ph, pw = _pair(pool_size)
    sh, sw = _pair(strides if strides is not None else (ph, pw))
    xc = _pad_nchw(x.permute(0, 3, 1, 2), ph, pw, sh, sw, padding, value=-float("inf"))
    return F.max_pool2d(xc, (ph, pw), (sh, sw)).permute(0, 2, 3, 1)


def t_avg_pool2d(x, pool_size=(2, 2), strides=None, padding="valid"):
    ph, pw = _pair(pool_size)
    sh, sw = _pair(strides if strides is not None else (ph, pw))
    xc = x.permute(0, 3, 1, 2)
    ones = torch.ones_like(xc[:1, :1])
    s = F.avg_pool2d(_pad_nchw(xc, ph, pw, sh, sw, padding), (ph, pw), (sh, sw), divisor_override=1)
    c = F.avg_pool2d(
        _pad_nchw(ones, ph, pw, sh, sw, padding), (ph, pw), (sh, sw), divisor_override=1
    )
    return (s / c).permute(0, 2, 3, 1)


def t_batch_norm(
    x,
    gamma,
    beta,
    moving_mean=None,
    moving_variance=None,
    training=True,
    momentum=0.99,
    epsilon=1e-3,
):
    assert training
    axes = tuple(range(x.dim() - 1))
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    return (x - mean) / torch.sqrt(var + epsilon) * gamma + beta


OPS = {
    "conv2d": t_conv2d,
    "max_pool2d": t_max_pool2d,
    "avg_pool2d": t_avg_pool2d,
    "batch_norm": t_batch_norm,
}


class Builder:
    def __init__(self, seed=1234):
        self.rng = np.random.default_rng(seed)
        self.arrays = {}

    def normal(self, *shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def distinct(self, *shape):
        """Values pairwise >= ~0.1 apart: the max of every window is unique."""
        n = int(np.prod(shape))
        v = (self.rng.permutation(n) - n / 2.0) * 0.1
        return v.reshape(shape).astype(np.float32)

    def case(self, name, op, inputs, args, kwargs, diff, note=""):
        meta = {"op": op, "args": args, "kwargs": kwargs, "diff": diff, "note": note}
        pre = name + "/"
        self.arrays[pre + "meta"] = np.array(json.dumps(meta))
        ts = []
        for i, x in enumerate(inputs):
            assert x.dtype == np.float32
            self.arrays[pre + "x%d" % i] = x
            ts.append(torch.tensor(x.astype(np.float64), requires_grad=(i in diff)))

        def resolve(spec):
            if isinstance(spec, str) and spec.startswith("$x"):
                return ts[int(spec[2:])]
            if isinstance(spec, list):
                return tuple(spec)
            return spec

        out = OPS[op](*[resolve(a) for a in args], **{k: resolve(v) for k, v in kwargs.items()})
        self.arrays[pre + "out"] = out.detach().numpy()
        w32 = self.rng.uniform(-1, 1, tuple(out.shape)).astype(np.float32)
        self.arrays[pre + "w"] = w32
        w = torch.tensor(w32.astype(np.float64), requires_grad=True)
        dx = [ts[i] for i in diff]
        grads = torch.autograd.grad((out * w).sum(), dx, create_graph=True, allow_unused=True)
        s2 = 0.0
        for i, g, x in zip(diff, grads, dx):
            g = torch.zeros_like(x) if g is None else g
            self.arrays[pre + "grad%d" % i] = g.detach().numpy()
            v32 = self.normal(*x.shape)
            self.arrays[pre + "v%d" % i] = v32
            s2 = s2 + (g * torch.tensor(v32.astype(np.float64))).sum()
        second = torch.autograd.grad(s2, dx + [w], allow_unused=True)
        for i, g, x in zip(diff, second[:-1], dx):
            g = torch.zeros_like(x) if g is None else g
            self.arrays[pre + "ggrad%d" % i] = g.detach().numpy()
        jvp = second[-1] if second[-1] is not None else torch.zeros_like(w)
        self.arrays[pre + "jvp"] = jvp.detach().numpy()


def build():
    b = Builder()
    # conv2d
    b.case(
        "conv2d_valid",
        "conv2d",
        [b.normal(2, 6, 5, 3), b.normal(3, 3, 3, 4, scale=0.5), b.normal(4)],
        ["$x0", "$x1"],
        {"bias": "$x2", "strides": [1, 1], "padding": "valid"},
        [0, 1, 2],
    )
    b.case(
        "conv2d_same",
        "conv2d",
        [b.normal(2, 5, 6, 3), b.normal(3, 3, 3, 4, scale=0.5), b.normal(4)],
        ["$x0", "$x1"],
        {"bias": "$x2", "strides": [1, 1], "padding": "same"},
        [0, 1, 2],
    )
    b.case(
        "conv2d_same_stride2",
        "conv2d",
        [b.normal(2, 7, 6, 2), b.normal(3, 3, 2, 3)],
        ["$x0", "$x1"],
        {"strides": [2, 2], "padding": "same"},
        [0, 1],
        "asymmetric 'same' padding: rows (1, 1), columns (0, 1)",
    )
    b.case(
        "conv2d_valid_stride2x3_rect",
        "conv2d",
        [b.normal(1, 8, 7, 2), b.normal(2, 3, 2, 3), b.normal(3)],
        ["$x0", "$x1", "$x2"],
        {"strides": [2, 3], "padding": "valid"},
        [0, 1, 2],
    )
    b.case(
        "conv2d_same_4x4_even",
        "conv2d",
        [b.normal(2, 5, 5, 2), b.normal(4, 4, 2, 2)],
        ["$x0", "$x1"],
        {"padding": "same"},
        [0, 1],
        "even kernel: pad (1, 2)",
    )
    b.case(
        "conv2d_1x1",
        "conv2d",
        [b.normal(2, 3, 4, 3), b.normal(1, 1, 3, 2)],
        ["$x0", "$x1"],
        {},
        [0, 1],
        "pointwise: no im2col",
    )
    # pools
    b.case(
        "max_pool2d_valid",
        "max_pool2d",
        [b.distinct(2, 6, 6, 3)],
        ["$x0"],
        {"pool_size": [2, 2]},
        [0],
    )
    b.case(
        "max_pool2d_same_s2",
        "max_pool2d",
        [b.distinct(2, 5, 7, 2)],
        ["$x0"],
        {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"},
        [0],
    )
    b.case(
        "max_pool2d_overlap",
        "max_pool2d",
        [b.distinct(1, 6, 5, 2)],
        ["$x0"],
        {"pool_size": [3, 2], "strides": [1, 1], "padding": "valid"},
        [0],
        "overlapping windows: an element can win several",
    )
    b.case(
        "avg_pool2d_valid",
        "avg_pool2d",
        [b.normal(2, 6, 6, 3)],
        ["$x0"],
        {"pool_size": [2, 2]},
        [0],
    )
    b.case(
        "avg_pool2d_same_s2",
        "avg_pool2d",
        [b.normal(2, 5, 7, 2)],
        ["$x0"],
        {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"},
        [0],
    )
    b.case(
        "avg_pool2d_same_s1",
        "avg_pool2d",
        [b.normal(1, 4, 5, 2)],
        ["$x0"],
        {"pool_size": [2, 2], "strides": [1, 1], "padding": "same"},
        [0],
    )
    # batch norm (training: batch statistics)
    b.case(
        "batch_norm_4d",
        "batch_norm",
        [b.normal(4, 3, 3, 2) * 2 + 1, b.normal(2) + 1, b.normal(2)],
        ["$x0", "$x1", "$x2", None, None, True],
        {},
        [0, 1, 2],
    )
    b.case(
        "batch_norm_2d",
        "batch_norm",
        [b.normal(6, 4), b.normal(4) + 1, b.normal(4)],
        ["$x0", "$x1", "$x2", None, None, True],
        {"epsilon": 0.01},
        [0, 1, 2],
    )
    return b.arrays


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    arrays = build()
    path = os.path.join(out, "ops_conv.npz")
    np.savez_compressed(path, **arrays)
    print("wrote", path, len(arrays), "arrays")


if __name__ == "__main__":
    main()
