#!/usr/bin/env python
"""Generate tests/reference/ops_conv_batched.npz: PyTorch references for conv2d_batched.

Run by hand with torch installed (the test suite itself does not need it):

    /work/kref/bin/python tests/reference/generate_conv_batched.py [OUTDIR]

The layout (forward, gradient, Hessian-vector product and the backward's own backward, all
in float64 from float32 inputs) is generate_conv.py's, whose Builder this reuses. Task t of
conv2d_batched(x (T,N,H,W,C), kernel (T,KH,KW,C,F), bias (T,F)) is torch's conv2d of x[t]
with kernel[t] and bias[t]; the tasks are stacked.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_conv as gc  # noqa: E402  (the Builder and torch's conv2d in NHWC)

HERE = os.path.dirname(os.path.abspath(__file__))


def t_conv2d_batched(x, kernel, bias=None, strides=(1, 1), padding="valid"):
    return torch.stack(
        [
            gc.t_conv2d(x[t], kernel[t], None if bias is None else bias[t], strides, padding)
            for t in range(x.shape[0])
        ]
    )


def build():
    gc.OPS["conv2d_batched"] = t_conv2d_batched
    b = gc.Builder(seed=3131)
    b.case(
        "batched_valid",
        "conv2d_batched",
        [b.normal(2, 2, 6, 5, 3), b.normal(2, 3, 3, 3, 4, scale=0.5), b.normal(2, 4)],
        ["$x0", "$x1"],
        {"bias": "$x2", "strides": [1, 1], "padding": "valid"},
        [0, 1, 2],
    )
    b.case(
        "batched_same_3x3",
        "conv2d_batched",
        [b.normal(2, 2, 6, 6, 4), b.normal(2, 3, 3, 4, 4, scale=0.3), b.normal(2, 4)],
        ["$x0", "$x1"],
        {"bias": "$x2", "padding": "same"},
        [0, 1, 2],
        "conv4's layer shape: 3x3, stride 1, 'same' (the Winograd geometry)",
    )
    b.case(
        "batched_same_stride2",
        "conv2d_batched",
        [b.normal(2, 2, 7, 6, 2), b.normal(2, 3, 3, 2, 3)],
        ["$x0", "$x1"],
        {"strides": [2, 2], "padding": "same"},
        [0, 1],
        "asymmetric 'same' padding, no bias",
    )
    b.case(
        "batched_pointwise",
        "conv2d_batched",
        [b.normal(3, 2, 3, 4, 5), b.normal(3, 1, 1, 5, 2), b.normal(3, 2)],
        ["$x0", "$x1", "$x2"],
        {},
        [0, 1, 2],
        "1x1 kernel (no im2col), one image per task",
    )
    return b.arrays


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    arrays = build()
    path = os.path.join(out, "ops_conv_batched.npz")
    np.savez_compressed(path, **arrays)
    print("wrote", path, len(arrays), "arrays")


if __name__ == "__main__":
    main()
