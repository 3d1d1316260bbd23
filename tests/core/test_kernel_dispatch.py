"""The one run-time choice of kernels (csrc/kernels/cpu.h): ML_KERNEL=portable reaches every
dispatch site of the C core, and the portable and AVX2 variants give the same results
(within float32 rounding where the AVX2 kernels fuse multiply-adds or use their own
polynomials: GEMM, exp/tanh/sigmoid/gelu; the same bits where both do the same float
operations: the loops compiled twice)."""

import json
import os
import re
import subprocess
import sys

import numpy as np

from metalearn import _core
from tests.helpers import REPO as ROOT

# every dispatch site the core registers (a new one must be added here, so its
# ML_KERNEL=portable path is tested)
SITES = {
    "gemm",
    "vmath",
    "sinusoid_row",
    "binary_range_at",
    "un_kernel",
    "outer_rows_direct",
    "relu_grad_mask_inplace",
    "red_block",
    "maxpool_kernel",
    "bn_chunk",
    "pool_relu_rows",
    "key_scores",
    "key_scores_f16",
    "key_scores_i8",
    "int8_dots",
    "wino_tiles",
    "wino4_tiles",
    "wino_kernel",
    "lstm_rows",
}

# Computes results through every site and saves them; prints the kernel variants.
SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import metalearn as ml
from metalearn import _core
from metalearn.meta import MAML, models
from metalearn.tasks import Sinusoid

F32 = np.float32
rng = np.random.default_rng(0)
out = {}
# a product for each kind of GEMM kernel (outer product, matrix-vector, A B^T, small, packed)
shapes = [(250, 40, 40, 0), (10, 40, 40, 0), (10, 1, 40, 0), (40, 10, 1, 0), (1, 10, 40, 0),
          (75, 784, 5, 1), (5, 784, 256, 0), (300, 200, 150, 0)]
for i, (m, k, n, tb) in enumerate(shapes):
    a = rng.standard_normal((m, k)).astype(F32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
    out[f"matmul {m}x{k}x{n}"] = np.asarray(ml.matmul(a, b.T if tb else b))
x = rng.standard_normal((25, 10, 40)).astype(F32)
out["broadcast add"] = np.asarray(ml.add(x, rng.standard_normal((25, 1, 40)).astype(F32)))
out["sum over a middle axis"] = np.asarray(ml.reduce_sum(x, axis=1, keepdims=True))
for f in ("relu", "exp", "tanh", "sigmoid", "gelu"):
    out[f] = np.asarray(getattr(ml, f)(x))
img = rng.standard_normal((2, 9, 9, 5)).astype(F32)
out["max pool"] = np.asarray(ml.max_pool2d(img, (3, 3), (2, 2), "same"))
# a 3x3 'same' convolution of 16 channels: the Winograd transforms (wino_tiles)
xw = rng.standard_normal((2, 6, 6, 16)).astype(F32)
kw = rng.standard_normal((3, 3, 16, 16)).astype(F32)
out["winograd conv"] = np.asarray(ml.conv2d(xw, kw, None, 1, "same"))
# and by F(4x4, 3x3) (wino4_tiles), forced through the benchmarks' switch
import ctypes
force = ctypes.c_int.in_dll(ctypes.CDLL(_core.__file__), "ml__wino_force")
force.value = 4
out["winograd F4 conv"] = np.asarray(ml.conv2d(xw, kw, None, 1, "same"))
force.value = 0
# batch norm, forward and its first-order gradient (the fused C backward)
xb = ml.Variable(rng.standard_normal((8, 4, 4, 6)).astype(F32))
gamma = ml.Variable(rng.standard_normal(6).astype(F32))
beta = ml.Variable(rng.standard_normal(6).astype(F32))
w = rng.standard_normal((8, 4, 4, 6)).astype(F32)
with ml.GradientTape() as tape:
    y = ml.batch_norm(xb, gamma, beta, None, None, training=True)
    loss = ml.reduce_sum(ml.mul(y, w))
out["batch norm"] = np.asarray(y)
for name, g in zip(("dx", "dgamma", "dbeta"), tape.gradient(loss, [xb, gamma, beta])):
    out["batch norm " + name] = np.asarray(g)
# batch norm, max pooling, relu: the pooled gradient folded into batch norm's backward
# (pool_relu_rows)
w2 = rng.standard_normal((8, 2, 2, 6)).astype(F32)
with ml.GradientTape() as tape:
    p = ml.relu(ml.max_pool2d(ml.batch_norm(xb, gamma, beta, None, None, training=True)))
    loss = ml.reduce_sum(ml.mul(p, w2))
for name, g in zip(("dx", "dgamma", "dbeta"), tape.gradient(loss, [xb, gamma, beta])):
    out["folded pool " + name] = np.asarray(g)
# the LSTM cell (lstm_rows): [h | c] and its gradient in z
zl = ml.Variable(rng.standard_normal((3, 64)).astype(F32))
cl = rng.standard_normal((3, 16)).astype(F32)
yl = ml.lstm_cell(zl, cl)
out["lstm cell"] = np.asarray(yl)
(out["lstm cell dz"],) = [np.asarray(g) for g in ml.grad(ml.reduce_sum(ml.mul(yl, yl)), [zl])]
# the sinusoid tasks' sines, and MAML's vectorised, traced, fused meta-steps on them
batch = Sinusoid(k_shot=10, q_queries=10, seed=0).sample_batch(25)
out["sinusoid support_y"] = np.asarray(batch.support_y)
out["sinusoid query_y"] = np.asarray(batch.query_y)
ml.random.set_seed(0)
maml = MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1, meta_lr=1e-3)
maml.fit(Sinusoid(k_shot=10, q_queries=10, seed=0), iterations=5, meta_batch_size=25,
         verbose=0)
for i, v in enumerate(maml.model.weights):
    out[f"maml weight {i}"] = np.asarray(v)
np.savez(sys.argv[2], **out)
print(json.dumps({"variants": _core._kernel_variants(), "kernel": _core.kernel_name()}))
"""

# the same bits on both variants: the same float operations, none fused (the loops compiled
# twice are compiled without FMA)
EXACT = {
    "broadcast add",
    "sum over a middle axis",
    "relu",
    "max pool",
    "sinusoid support_y",
    "sinusoid query_y",
    "batch norm",
    "batch norm dx",
    "batch norm dgamma",
    "batch norm dbeta",
    "folded pool dx",
    "folded pool dgamma",
    "folded pool dbeta",
}


def run(tmp_path, kernel):
    env = dict(os.environ)
    env.pop("ML_KERNEL", None)
    if kernel == "portable":
        env["ML_KERNEL"] = "portable"
    path = tmp_path / f"{kernel}.npz"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    with np.load(path) as f:
        return info, {k: f[k] for k in f.files}


def test_every_site_is_listed_and_follows_the_one_choice():
    variants = _core._kernel_variants()
    assert set(variants) == SITES
    assert set(variants.values()) == {_core.kernel_name()}


def test_ml_kernel_portable_reaches_every_site_and_results_agree(tmp_path):
    portable_info, portable = run(tmp_path, "portable")
    default_info, default = run(tmp_path, "default")
    assert portable_info["kernel"] == "portable"
    assert portable_info["variants"] == {site: "portable" for site in SITES}
    # without ML_KERNEL every site runs the CPU's choice (avx2 where it has AVX2 + FMA)
    assert default_info["variants"] == {site: default_info["kernel"] for site in SITES}
    assert portable.keys() == default.keys()
    for name in portable:
        p, d = portable[name], default[name]
        assert p.shape == d.shape and p.dtype == d.dtype == np.float32, name
        if name in EXACT:
            assert np.array_equal(p.view(np.uint32), d.view(np.uint32)), name
        else:  # float32 rounding of sums of products; MAML: five meta-steps of it
            np.testing.assert_allclose(d, p, rtol=1e-4, atol=1e-5, err_msg=name)


def test_no_target_clones_in_the_core():
    """GCC's target_clones resolver picks a clone from the CPU alone, ignoring ML_KERNEL:
    every dispatch goes through kernels/cpu.h instead."""
    attribute = re.compile(r"target_clones\s*\(")
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "csrc").rglob("*.[ch]")
        if attribute.search(p.read_text())
    ]
    assert offenders == []
