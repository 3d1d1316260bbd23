#!/usr/bin/env python
"""Generate tests/reference/ops_depthwise.npz: PyTorch references for depthwise_conv2d.

Run by hand with torch installed (the test suite itself does not need it):

    /work/kref/bin/python tests/reference/generate_depthwise.py [OUTDIR]

The layout (forward, gradient, Hessian-vector product and the backward's own backward, all
in float64 from float32 inputs) is generate_conv.py's, whose Builder this reuses. metalearn's
depthwise kernel is (KH, KW, C, M) with output channel c*M + m (Keras/TensorFlow); torch's is
a grouped convolution with groups=C and weight (C*M, 1, KH, KW) in the same channel order.
"""

import os
import sys

import numpy as np
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_conv as gc  # noqa: E402  (the Builder and the 'same' padding rule)

HERE = os.path.dirname(os.path.abspath(__file__))


def t_depthwise_conv2d(x, kernel, bias=None, strides=(1, 1), padding="valid"):
    sh, sw = gc._pair(strides)
    kh, kw, c, m = kernel.shape
    xc = gc._pad_nchw(x.permute(0, 3, 1, 2), kh, kw, sh, sw, padding)
    weight = kernel.permute(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
    y = F.conv2d(xc, weight, bias, stride=(sh, sw), groups=c)
    return y.permute(0, 2, 3, 1)


def build():
    gc.OPS["depthwise_conv2d"] = t_depthwise_conv2d
    b = gc.Builder(seed=2222)
    b.case(
        "depthwise_valid",
        "depthwise_conv2d",
        [b.normal(2, 6, 5, 3), b.normal(3, 3, 3, 1, scale=0.5), b.normal(3)],
        ["$x0", "$x1"],
        {"bias": "$x2", "strides": [1, 1], "padding": "valid"},
        [0, 1, 2],
    )
    b.case(
        "depthwise_same_m2",
        "depthwise_conv2d",
        [b.normal(2, 5, 6, 3), b.normal(3, 2, 3, 2, scale=0.5), b.normal(6)],
        ["$x0", "$x1"],
        {"bias": "$x2", "padding": "same"},
        [0, 1, 2],
        "depth multiplier 2: output channel c*2 + m",
    )
    b.case(
        "depthwise_same_stride2",
        "depthwise_conv2d",
        [b.normal(2, 7, 6, 2), b.normal(3, 3, 2, 3, scale=0.5)],
        ["$x0", "$x1"],
        {"strides": [2, 2], "padding": "same"},
        [0, 1],
        "asymmetric 'same' padding",
    )
    b.case(
        "depthwise_valid_stride2x3",
        "depthwise_conv2d",
        [b.normal(1, 8, 7, 4), b.normal(2, 3, 4, 1, scale=0.5), b.normal(4)],
        ["$x0", "$x1", "$x2"],
        {"strides": [2, 3], "padding": "valid"},
        [0, 1, 2],
    )
    return b.arrays


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    arrays = build()
    path = os.path.join(out, "ops_depthwise.npz")
    np.savez_compressed(path, **arrays)
    print("wrote", path, len(arrays), "arrays")


if __name__ == "__main__":
    main()
