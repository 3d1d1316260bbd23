#!/usr/bin/env python
"""Generate the PyTorch reference fixtures used by tests/core/test_reference_ops.py.

Run by hand (needs torch; the test suite itself does not):

    python tests/reference/generate.py [OUTDIR]

Everything is deterministic (fixed seeds) and the .npz files are written next to
this script.  Inputs are float32; every reference value is computed by torch in
float64 from those float32 inputs, so the fixtures are accurate to far better than
the float32 tolerance the tests use.

File layout
-----------
ops_*.npz (one file per op family).  A "case" is a group of keys sharing a prefix
``<case>/``:

  <case>/meta      0-d unicode array holding JSON:
                     {"op": name of the metalearn function,
                      "args": positional args, "kwargs": keyword args,
                      "diff": indices of the inputs that require grad,
                      "note": free text}
                   In args/kwargs a string "$x<i>" stands for the float32 input
                   tensor <case>/x<i>, "@<name>" for the integer array
                   <case>/<name>, {"list": [...]} for a Python list of such specs;
                   any other JSON value is passed literally (JSON lists are
                   passed as tuples).
  <case>/x<i>      float32 input i
  <case>/<name>    int64 arrays referenced by "@<name>" (indices, labels)
  <case>/out       float64 forward output
  <case>/w         float32 weights of the first-order objective L = sum(out * w)
  <case>/grad<i>   float64 dL/dx_i                         (i in diff)
  <case>/v<i>      float32 direction for input i            (i in diff)
  <case>/ggrad<i>  float64 d/dx_i [ sum_j sum(dL/dx_j * v_j) ]   (i in diff)
                   -- a Hessian-vector product; exactly zero where the gradient
                   does not depend on the inputs (stored as zeros).
  <case>/jvp       float64 d/dw [ sum_j sum(dL/dx_j * v_j) ] = J v, the Jacobian of
                   out applied to v (double-backward through w): it checks that
                   every op's backward is itself differentiable, also for ops whose
                   Hessian is zero (add, reshape, relu, ...).

mlp.npz      -- 2-layer MLP (4 -> 8 tanh -> 3, softmax cross-entropy from logits):
  mlp/x, mlp/y (one-hot), mlp/W1, mlp/b1, mlp/W2, mlp/b2 (float32),
  mlp/loss, mlp/grad/<p>, mlp/v/<p>, mlp/ggrad/<p>   (p in W1 b1 W2 b2)
  maml/{xs,ys,xq,yq} support/query data (ys, yq int64 labels), maml/inner_lr,
  maml/loss_query, maml/grad2/<p> (second-order MAML meta-gradient of the query
  loss after one inner SGD step), maml/grad1/<p> (first-order MAML: the inner
  gradient treated as a constant).

optim.npz    -- optimizer trajectories on the quadratic
  L(p0, p1) = sum_k 0.5 * sum(a_k * (p_k - c_k)**2)    (gradient a_k * (p_k - c_k))
  optim/a<k>, optim/c<k>, optim/p<k>_init (float32).
  Per case <name>: <name>/meta (JSON: optimizer class, kwargs, steps),
  <name>/p<k> (float64, shape (steps + 1, *shape): row t = parameters after t steps),
  <name>/g<k> (float64, shape (steps, *shape): gradient used at step t + 1).
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
EPS = 1e-7  # Keras backend epsilon


# ----------------------------------------------------------------- torch ops
# Same names and signatures as the metalearn functions, computed in float64.


def _axes(x, axis):
    if axis is None:
        return tuple(range(x.dim()))
    if isinstance(axis, (list, tuple)):
        return tuple(axis)
    return (axis,)


def t_matmul(a, b, transpose_a=False, transpose_b=False):
    if transpose_a:
        a = a.transpose(-1, -2)
    if transpose_b:
        b = b.transpose(-1, -2)
    return torch.matmul(a, b)


def t_linear(x, kernel, bias=None, activation=None):
    y = x @ kernel
    if bias is not None:
        y = y + bias
    return {
        None: lambda t: t,
        "linear": lambda t: t,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }[activation](y)


def t_sum_to(x, shape):
    shape = tuple(shape)
    lead = x.dim() - len(shape)
    if lead:
        x = x.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and x.shape[i] != 1)
    if axes:
        x = x.sum(dim=axes, keepdim=True)
    return x


def t_cce(y_true, y_pred, from_logits=False):
    if from_logits:
        return -(y_true * torch.log_softmax(y_pred, dim=-1)).sum(-1)
    p = y_pred / y_pred.sum(-1, keepdim=True)
    p = torch.clamp(p, EPS, 1 - EPS)
    return -(y_true * torch.log(p)).sum(-1)


def t_scce(labels, y_pred, from_logits=False):
    if from_logits:
        logp = torch.log_softmax(y_pred, dim=-1)
    else:  # Keras 3 keras.ops.sparse_categorical_crossentropy: rescale, clip, log
        p = y_pred / y_pred.sum(-1, keepdim=True)
        logp = torch.log(torch.clamp(p, EPS, 1 - EPS))
    idx = torch.as_tensor(np.asarray(labels, dtype=np.int64)).unsqueeze(-1)
    return -torch.gather(logp, -1, idx).squeeze(-1)


def t_bce(y_true, y_pred, from_logits=False):
    if from_logits:  # stable form: max(x, 0) - x*z + log(1 + exp(-|x|))
        x = y_pred
        per = torch.relu(x) - x * y_true + torch.log1p(torch.exp(-torch.abs(x)))
    else:
        p = torch.clamp(y_pred, EPS, 1 - EPS)
        per = -(y_true * torch.log(p) + (1 - y_true) * torch.log(1 - p))
    return per.mean(-1)


TORCH_OPS = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "neg": torch.neg,
    "pow": lambda x, exponent: torch.pow(x, exponent),
    "square": torch.square,
    "sqrt": torch.sqrt,
    "exp": torch.exp,
    "log": torch.log,
    "abs": torch.abs,
    "sign": torch.sign,
    "clip": lambda x, lo, hi: torch.clamp(x, lo, hi),
    "relu": torch.relu,
    "leaky_relu": lambda x, negative_slope=0.2: F.leaky_relu(x, negative_slope),
    "elu": lambda x, alpha=1.0: F.elu(x, alpha),
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "softplus": F.softplus,
    "erf": torch.erf,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x, axis=-1: torch.softmax(x, dim=axis),
    "log_softmax": lambda x, axis=-1: torch.log_softmax(x, dim=axis),
    "matmul": t_matmul,
    "linear": t_linear,
    "reshape": lambda x, shape: torch.reshape(x, tuple(shape)),
    "transpose": lambda x, perm=None: x.permute(
        tuple(perm) if perm is not None else tuple(reversed(range(x.dim())))
    ),
    "broadcast_to": lambda x, shape: torch.broadcast_to(x, tuple(shape)),
    "sum_to": t_sum_to,
    "concat": lambda xs, axis=0: torch.cat(xs, dim=axis),
    "narrow": lambda x, axis, start, length: torch.narrow(x, axis, start, length),
    "gather": lambda x, indices, axis=0: torch.index_select(
        x, axis, torch.as_tensor(np.asarray(indices, dtype=np.int64))
    ),
    "reduce_sum": lambda x, axis=None, keepdims=False: torch.sum(
        x, dim=_axes(x, axis), keepdim=keepdims
    ),
    "reduce_mean": lambda x, axis=None, keepdims=False: torch.mean(
        x, dim=_axes(x, axis), keepdim=keepdims
    ),
    "reduce_max": lambda x, axis=None, keepdims=False: torch.amax(
        x, dim=_axes(x, axis), keepdim=keepdims
    ),
    "mean_squared_error": lambda y_true, y_pred: torch.square(y_pred - y_true).mean(-1),
    "categorical_crossentropy": t_cce,
    "sparse_categorical_crossentropy": t_scce,
    "binary_crossentropy": t_bce,
}


# ------------------------------------------------------------ case builder


class Family:
    def __init__(self, filename, seed, outdir):
        self.filename = filename
        self.outdir = outdir
        self.rng = np.random.default_rng(seed)
        self.arrays = {}
        self.names = []

    # input generators (all float32) ------------------------------------
    def normal(self, *shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def uniform(self, lo, hi, *shape):
        return self.rng.uniform(lo, hi, shape).astype(np.float32)

    def away(self, *shape, points=(0.0,), margin=0.05, scale=1.0):
        """Normal values at least `margin` away from every kink in `points`."""
        x = self.normal(*shape, scale=scale)
        for _ in range(1000):
            bad = np.zeros(x.shape, bool)
            for p in points:
                bad |= np.abs(x - p) < margin
            if not bad.any():
                return x
            x[bad] = self.normal(int(bad.sum()), scale=scale)
        raise RuntimeError("could not draw inputs away from the kinks")

    def distinct(self, *shape):
        """Values with no ties (gaps >= 0.05), in random order."""
        n = int(np.prod(shape)) if shape else 1
        vals = (np.arange(n) - n / 2) * 0.1 + self.rng.uniform(-0.025, 0.025, n)
        return self.rng.permutation(vals).reshape(shape).astype(np.float32)

    def probs(self, *shape):
        return torch.softmax(torch.as_tensor(self.normal(*shape)), -1).numpy().astype(np.float32)

    # a case ---------------------------------------------------------------
    def case(self, name, op, inputs, args=None, kwargs=None, diff=None, ints=None, note=""):
        assert name not in self.names, name
        ints = ints or {}
        kwargs = kwargs or {}
        if args is None:
            args = ["$x%d" % i for i in range(len(inputs))]
        if diff is None:
            diff = list(range(len(inputs)))
        inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
        leaves = [
            torch.tensor(x.astype(np.float64), requires_grad=(i in diff))
            for i, x in enumerate(inputs)
        ]

        def resolve(spec):
            if isinstance(spec, str) and spec.startswith("$x"):
                return leaves[int(spec[2:])]
            if isinstance(spec, str) and spec.startswith("@"):
                return ints[spec[1:]]
            if isinstance(spec, dict) and "list" in spec:
                return [resolve(s) for s in spec["list"]]
            if isinstance(spec, list):
                return tuple(spec)
            return spec

        out = TORCH_OPS[op](
            *[resolve(a) for a in args], **{k: resolve(v) for k, v in kwargs.items()}
        )
        w = self.normal(*out.shape)
        p = "%s/" % name
        self.arrays[p + "meta"] = np.array(
            json.dumps({"op": op, "args": args, "kwargs": kwargs, "diff": diff, "note": note})
        )
        for i, x in enumerate(inputs):
            self.arrays[p + "x%d" % i] = x
        for k, v in ints.items():
            self.arrays[p + k] = np.asarray(v, dtype=np.int64)
        self.arrays[p + "out"] = out.detach().numpy(force=True).copy()
        self.arrays[p + "w"] = w
        if not diff:
            self.names.append(name)
            return
        dleaves = [leaves[i] for i in diff]
        wt = torch.tensor(w.astype(np.float64), requires_grad=True)
        loss = (out * wt).sum()
        grads = torch.autograd.grad(loss, dleaves, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(l) if g is None else g for g, l in zip(grads, dleaves)]
        s2 = 0.0
        for i, g in zip(diff, grads):
            v = self.normal(*g.shape)
            self.arrays[p + "grad%d" % i] = g.detach().numpy(force=True).copy()
            self.arrays[p + "v%d" % i] = v
            s2 = s2 + (g * torch.as_tensor(v.astype(np.float64))).sum()
        if torch.is_tensor(s2) and s2.requires_grad:
            gg = torch.autograd.grad(s2, dleaves + [wt], allow_unused=True)
        else:
            gg = [None] * (len(dleaves) + 1)
        for i, g, l in zip(diff + ["jvp"], gg, dleaves + [wt]):
            key = "jvp" if i == "jvp" else "ggrad%d" % i
            self.arrays[p + key] = (
                (torch.zeros_like(l) if g is None else g).detach().numpy(force=True).copy()
            )
        self.names.append(name)

    def save(self):
        path = os.path.join(self.outdir, self.filename)
        np.savez_compressed(path, **self.arrays)
        print(
            "%-22s %3d cases  %7d bytes" % (self.filename, len(self.names), os.path.getsize(path))
        )


# ------------------------------------------------------------------ families


def elementwise(outdir):
    f = Family("ops_elementwise.npz", 1, outdir)
    # binary, with broadcasting
    shapes = {
        "same": ((3, 4), (3, 4)),
        "bcast_row": ((3, 4), (4,)),
        "bcast_col": ((3, 4), (3, 1)),
        "bcast_outer": ((3, 1), (1, 4)),
        "bcast_3d": ((2, 1, 4), (3, 1)),
        "scalar": ((2, 3), ()),
    }
    for op in ("add", "sub", "mul"):
        for tag, (sa, sb) in shapes.items():
            f.case("%s_%s" % (op, tag), op, [f.normal(*sa), f.normal(*sb)])
    for tag, (sa, sb) in shapes.items():
        # denominators in [0.5, 2] with random sign: far from 0
        b = f.uniform(0.5, 2.0, *sb) * np.where(f.rng.random(sb) < 0.5, -1, 1).astype(np.float32)
        f.case("div_%s" % tag, "div", [f.normal(*sa), b])
    for op in ("maximum", "minimum"):
        for tag in ("same", "bcast_row", "bcast_col"):
            sa, sb = shapes[tag]
            a, b = f.normal(*sa), f.normal(*sb)
            for _ in range(1000):  # no ties: |a - b| > 1e-2 everywhere (a has the broadcast shape)
                close = np.abs(a - b) < 1e-2
                if not close.any():
                    break
                a[close] = f.normal(int(close.sum()))
            assert not (np.abs(a - b) < 1e-2).any()
            f.case("%s_%s" % (op, tag), op, [a, b])
    # unary
    f.case("neg", "neg", [f.normal(3, 4)])
    for e in (2.0, 3.0, 0.5, -1.0, 1.5, -2.0):
        f.case("pow_%g" % e, "pow", [f.uniform(0.5, 2.0, 3, 4)], args=["$x0", e])
    f.case(
        "pow_2_mixed_sign",
        "pow",
        [f.away(3, 4, margin=0.1)],
        args=["$x0", 2.0],
        note="integer exponent on negative inputs",
    )
    f.case(
        "pow_3_mixed_sign",
        "pow",
        [f.away(3, 4, margin=0.1)],
        args=["$x0", 3.0],
        note="integer exponent on negative inputs",
    )
    f.case("square", "square", [f.normal(3, 4)])
    f.case("sqrt", "sqrt", [f.uniform(0.5, 3.0, 3, 4)])
    f.case("exp", "exp", [f.normal(3, 4)])
    f.case("log", "log", [f.uniform(0.5, 3.0, 3, 4)])
    f.case("abs", "abs", [f.away(3, 4, margin=0.05)])
    f.case("sign", "sign", [f.away(3, 4, margin=0.05)], note="zero gradient")
    f.case("clip", "clip", [f.away(4, 5, points=(-0.5, 0.5), margin=1e-2)], args=["$x0", -0.5, 0.5])
    f.case(
        "clip_asym",
        "clip",
        [f.away(4, 5, points=(-1.0, 0.25), margin=1e-2)],
        args=["$x0", -1.0, 0.25],
    )
    f.case("relu", "relu", [f.away(4, 5)])
    f.case("leaky_relu", "leaky_relu", [f.away(4, 5)], kwargs={"negative_slope": 0.2})
    f.case("leaky_relu_default", "leaky_relu", [f.away(4, 5)], note="default slope 0.2")
    f.case("elu", "elu", [f.away(4, 5)], kwargs={"alpha": 1.0})
    f.case("elu_alpha", "elu", [f.away(4, 5)], kwargs={"alpha": 0.5})
    f.case("gelu", "gelu", [f.normal(4, 5, scale=1.5)])
    f.case("erf", "erf", [f.normal(4, 5)])
    f.case("sigmoid", "sigmoid", [f.normal(4, 5, scale=2.0)])
    f.case("tanh", "tanh", [f.normal(4, 5)])
    f.case("softplus", "softplus", [f.normal(4, 5, scale=3.0)])
    f.save()


def nn(outdir):
    f = Family("ops_nn.npz", 2, outdir)
    for op in ("softmax", "log_softmax"):
        f.case("%s_last" % op, op, [f.normal(3, 5, scale=2.0)], kwargs={"axis": -1})
        f.case("%s_axis0" % op, op, [f.normal(3, 5, scale=2.0)], kwargs={"axis": 0})
        f.case("%s_3d_axis1" % op, op, [f.normal(2, 3, 4, scale=2.0)], kwargs={"axis": 1})
        f.case("%s_default" % op, op, [f.normal(2, 3, 4, scale=2.0)], note="default axis -1")
    # matmul: all four transpose combinations of (3,4) @ (4,5)
    for ta in (False, True):
        for tb in (False, True):
            a = f.normal(*((4, 3) if ta else (3, 4)))
            b = f.normal(*((5, 4) if tb else (4, 5)))
            f.case(
                "matmul_t%d%d" % (ta, tb),
                "matmul",
                [a, b],
                kwargs={"transpose_a": ta, "transpose_b": tb},
            )
    f.case("matmul_batched", "matmul", [f.normal(2, 3, 4), f.normal(2, 4, 5)])
    f.case("matmul_bcast_b", "matmul", [f.normal(2, 3, 4), f.normal(4, 5)])
    f.case("matmul_bcast_a", "matmul", [f.normal(3, 4), f.normal(2, 4, 5)])
    f.case("matmul_bcast_batch1", "matmul", [f.normal(1, 3, 4), f.normal(2, 4, 5)])
    f.case(
        "matmul_batched_tt",
        "matmul",
        [f.normal(2, 4, 3), f.normal(2, 5, 4)],
        kwargs={"transpose_a": True, "transpose_b": True},
    )
    # linear = act(x @ kernel + bias)
    for act in (None, "linear", "relu", "sigmoid", "tanh"):
        for _ in range(1000):
            x, k, b = f.normal(5, 4), f.normal(4, 3, scale=0.7), f.normal(3, scale=0.3)
            pre = x.astype(np.float64) @ k + b
            if np.abs(pre).min() > 0.05:  # relu kink not hit
                break
        f.case(
            "linear_%s" % (act or "none"),
            "linear",
            [x, k, b],
            args=["$x0", "$x1"],
            kwargs={"bias": "$x2", "activation": act},
        )
    f.case(
        "linear_nobias_tanh",
        "linear",
        [f.normal(5, 4), f.normal(4, 3)],
        kwargs={"activation": "tanh"},
    )
    f.case(
        "linear_3d_sigmoid",
        "linear",
        [f.normal(2, 5, 4), f.normal(4, 3), f.normal(3)],
        args=["$x0", "$x1"],
        kwargs={"bias": "$x2", "activation": "sigmoid"},
    )
    f.save()


def shape_ops(outdir):
    f = Family("ops_shape.npz", 3, outdir)
    f.case("reshape_2d", "reshape", [f.normal(3, 4)], args=["$x0", [2, 6]])
    f.case("reshape_3d_to_2d", "reshape", [f.normal(2, 3, 4)], args=["$x0", [4, 6]])
    f.case("reshape_to_4d", "reshape", [f.normal(6, 4)], args=["$x0", [2, 3, 2, 2]])
    f.case("transpose_perm", "transpose", [f.normal(2, 3, 4)], kwargs={"perm": [1, 2, 0]})
    f.case("transpose_perm_021", "transpose", [f.normal(2, 3, 4)], kwargs={"perm": [0, 2, 1]})
    f.case("transpose_default", "transpose", [f.normal(2, 3, 4)], note="perm None reverses")
    f.case(
        "concat_axis1",
        "concat",
        [f.normal(2, 3), f.normal(2, 1), f.normal(2, 4)],
        args=[{"list": ["$x0", "$x1", "$x2"]}],
        kwargs={"axis": 1},
    )
    f.case(
        "concat_axis0",
        "concat",
        [f.normal(2, 3), f.normal(4, 3)],
        args=[{"list": ["$x0", "$x1"]}],
        kwargs={"axis": 0},
    )
    f.case(
        "concat_3d_axis1",
        "concat",
        [f.normal(2, 1, 3), f.normal(2, 2, 3)],
        args=[{"list": ["$x0", "$x1"]}],
        kwargs={"axis": 1},
    )
    f.case("narrow_axis1", "narrow", [f.normal(3, 5)], args=["$x0", 1, 1, 2])
    f.case("narrow_axis0", "narrow", [f.normal(4, 3)], args=["$x0", 0, 2, 2])
    f.case(
        "gather_axis0",
        "gather",
        [f.normal(4, 3)],
        args=["$x0", "@indices"],
        kwargs={"axis": 0},
        ints={"indices": [2, 0, 2, 1, 2]},
        note="repeated indices",
    )
    f.case(
        "gather_axis0_3d",
        "gather",
        [f.normal(3, 2, 2)],
        args=["$x0", "@indices"],
        kwargs={"axis": 0},
        ints={"indices": [1, 1, 0, 2]},
    )
    f.case(
        "gather_axis1",
        "gather",
        [f.normal(3, 4)],
        args=["$x0", "@indices"],
        kwargs={"axis": 1},
        ints={"indices": [3, 0, 3]},
    )
    f.case("broadcast_to_row", "broadcast_to", [f.normal(4)], args=["$x0", [3, 4]])
    f.case("broadcast_to_3d", "broadcast_to", [f.normal(3, 1)], args=["$x0", [2, 3, 4]])
    f.case("sum_to_row", "sum_to", [f.normal(3, 4)], args=["$x0", [4]])
    f.case("sum_to_3d", "sum_to", [f.normal(2, 3, 4)], args=["$x0", [3, 1]])
    f.save()


def reductions(outdir):
    f = Family("ops_reduce.npz", 4, outdir)
    axes = {"all": None, "axis1": 1, "axis_neg1": -1, "axes02": [0, 2]}
    for op in ("reduce_sum", "reduce_mean", "reduce_max"):
        for tag, ax in axes.items():
            for kd in (False, True):
                x = f.distinct(3, 4, 5) if op == "reduce_max" else f.normal(3, 4, 5)
                kw = {"keepdims": kd}
                if ax is not None:
                    kw["axis"] = ax
                f.case("%s_%s_kd%d" % (op, tag, kd), op, [x], kwargs=kw)
        f.case(
            "%s_default" % op,
            op,
            [f.distinct(3, 4) if op == "reduce_max" else f.normal(3, 4)],
            note="all axes, keepdims False by default",
        )
    f.save()


def losses(outdir):
    f = Family("ops_losses.npz", 5, outdir)
    n, c = 6, 4
    f.case("mse", "mean_squared_error", [f.normal(n, c), f.normal(n, c)], diff=[1])
    f.case(
        "mse_ytrue",
        "mean_squared_error",
        [f.normal(n, c), f.normal(n, c)],
        note="gradient w.r.t. y_true too",
    )
    f.case("mse_3d", "mean_squared_error", [f.normal(2, 3, c), f.normal(2, 3, c)], diff=[1])
    labels = f.rng.integers(0, c, n)
    onehot = np.eye(c, dtype=np.float32)[labels]
    soft = f.probs(n, c)  # soft targets
    # probabilities: unnormalised (rows sum to ~0.5..2), rescaled by the loss
    p = f.probs(n, c) * f.uniform(0.5, 2.0, n, 1)
    f.case("cce_probs", "categorical_crossentropy", [onehot, p], diff=[1])
    f.case("cce_probs_soft", "categorical_crossentropy", [soft, f.probs(n, c)], diff=[1])
    f.case(
        "cce_probs_ytrue",
        "categorical_crossentropy",
        [soft, f.probs(n, c)],
        note="gradient w.r.t. y_true too",
    )
    pc = f.probs(n, c)
    pc[0, 1] = 1e-9  # rescaled value < 1e-7: the lower clip is active for this element
    pc[3, 2] = 0.0
    f.case(
        "cce_probs_clipped",
        "categorical_crossentropy",
        [soft, pc],
        diff=[1],
        note="two elements are clipped to 1e-7",
    )
    f.case(
        "cce_logits",
        "categorical_crossentropy",
        [onehot, f.normal(n, c, scale=2.0)],
        kwargs={"from_logits": True},
        diff=[1],
    )
    f.case(
        "cce_logits_soft",
        "categorical_crossentropy",
        [soft, f.normal(n, c, scale=2.0)],
        kwargs={"from_logits": True},
        diff=[1],
    )
    f.case(
        "cce_logits_ytrue",
        "categorical_crossentropy",
        [soft, f.normal(n, c, scale=2.0)],
        kwargs={"from_logits": True},
        note="gradient w.r.t. y_true too",
    )
    f.case(
        "scce_logits",
        "sparse_categorical_crossentropy",
        [f.normal(n, c, scale=2.0)],
        args=["@labels", "$x0"],
        kwargs={"from_logits": True},
        ints={"labels": labels},
    )
    f.case(
        "scce_probs",
        "sparse_categorical_crossentropy",
        [f.probs(n, c)],
        args=["@labels", "$x0"],
        ints={"labels": labels},
        note="rows sum to 1 (up to float32 rounding); Keras 3 semantics: rescale, clip, log",
    )
    f.case(
        "scce_logits_3d",
        "sparse_categorical_crossentropy",
        [f.normal(2, 3, c, scale=2.0)],
        args=["@labels", "$x0"],
        kwargs={"from_logits": True},
        ints={"labels": f.rng.integers(0, c, (2, 3))},
    )
    yb = (f.rng.random((n, c)) < 0.5).astype(np.float32)
    ysoft = f.uniform(0.0, 1.0, n, c)
    f.case("bce_probs", "binary_crossentropy", [yb, f.uniform(0.05, 0.95, n, c)], diff=[1])
    f.case(
        "bce_probs_soft_ytrue",
        "binary_crossentropy",
        [ysoft, f.uniform(0.05, 0.95, n, c)],
        note="gradient w.r.t. y_true too",
    )
    f.case(
        "bce_logits",
        "binary_crossentropy",
        [yb, f.away(n, c, scale=2.0)],
        kwargs={"from_logits": True},
        diff=[1],
    )
    f.case(
        "bce_logits_soft_ytrue",
        "binary_crossentropy",
        [ysoft, f.away(n, c, scale=2.0)],
        kwargs={"from_logits": True},
        note="gradient w.r.t. y_true too",
    )
    f.save()


# ----------------------------------------------------------------------- MLP


def mlp(outdir):
    rng = np.random.default_rng(6)
    arr = {}
    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    params = {
        "W1": f32(4, 8, scale=0.5),
        "b1": f32(8, scale=0.1),
        "W2": f32(8, 3, scale=0.5),
        "b2": f32(3, scale=0.1),
    }
    names = list(params)

    def forward(P, x):
        h = torch.tanh(x @ P["W1"] + P["b1"])
        return h @ P["W2"] + P["b2"]

    def loss_onehot(P, x, y):
        return t_cce(y, forward(P, x), from_logits=True).mean()

    def loss_sparse(P, x, labels):
        return t_scce(labels, forward(P, x), from_logits=True).mean()

    T = lambda a: torch.as_tensor(np.asarray(a).astype(np.float64))

    # loss, gradient, gradient of <grad, v>
    x = f32(10, 4)
    labels = rng.integers(0, 3, 10)
    y = np.eye(3, dtype=np.float32)[labels]
    P = {k: T(v).requires_grad_() for k, v in params.items()}
    loss = loss_onehot(P, T(x), T(y))
    grads = torch.autograd.grad(loss, [P[k] for k in names], create_graph=True)
    vs = {k: f32(*params[k].shape) for k in names}
    s2 = sum((g * T(vs[k])).sum() for k, g in zip(names, grads))
    gg = torch.autograd.grad(s2, [P[k] for k in names])
    arr["mlp/meta"] = np.array(
        json.dumps(
            {
                "model": "logits = linear(linear(x, W1, b1, 'tanh'), W2, b2); "
                "loss = reduce_mean(categorical_crossentropy(y, logits, from_logits=True))",
                "params": names,
            }
        )
    )
    arr["mlp/x"], arr["mlp/y"] = x, y
    for k in names:
        arr["mlp/" + k] = params[k]
        arr["mlp/grad/" + k] = grads[names.index(k)].detach().numpy()
        arr["mlp/v/" + k] = vs[k]
        arr["mlp/ggrad/" + k] = gg[names.index(k)].numpy()
    arr["mlp/loss"] = np.float64(loss.item())

    # one-step MAML (sparse CE from logits), second and first order
    xs, xq = f32(6, 4), f32(8, 4)
    ys, yq = rng.integers(0, 3, 6), rng.integers(0, 3, 8)
    inner_lr = 0.5
    P = {k: T(v).requires_grad_() for k, v in params.items()}
    ls = loss_sparse(P, T(xs), ys)
    g = torch.autograd.grad(ls, [P[k] for k in names], create_graph=True)
    adapted = {k: P[k] - inner_lr * gi for k, gi in zip(names, g)}
    lq = loss_sparse(adapted, T(xq), yq)
    meta2 = torch.autograd.grad(lq, [P[k] for k in names])
    g_const = [gi.detach() for gi in g]
    adapted1 = {k: P[k] - inner_lr * gi for k, gi in zip(names, g_const)}
    lq1 = loss_sparse(adapted1, T(xq), yq)
    meta1 = torch.autograd.grad(lq1, [P[k] for k in names])
    assert abs(lq1.item() - lq.item()) < 1e-12
    arr["maml/meta"] = np.array(
        json.dumps(
            {
                "model": "loss(P, x, y) = reduce_mean(sparse_categorical_crossentropy(y, mlp(P, x), "
                "from_logits=True)); adapted = P - inner_lr * grad(loss(P, xs, ys), P); "
                "grad2 = d loss(adapted, xq, yq) / dP (through the inner gradient); "
                "grad1 = the same with the inner gradient held constant",
                "params": names,
                "inner_lr": inner_lr,
            }
        )
    )
    arr["maml/xs"], arr["maml/ys"], arr["maml/xq"], arr["maml/yq"] = xs, ys, xq, yq
    arr["maml/inner_lr"] = np.float64(inner_lr)
    arr["maml/loss_query"] = np.float64(lq.item())
    for k, a, b in zip(names, meta2, meta1):
        arr["maml/grad2/" + k] = a.numpy()
        arr["maml/grad1/" + k] = b.numpy()
        assert np.abs(a.numpy() - b.numpy()).max() > 1e-4  # second order matters
    path = os.path.join(outdir, "mlp.npz")
    np.savez_compressed(path, **arr)
    print("%-22s %3d cases  %7d bytes" % ("mlp.npz", 2, os.path.getsize(path)))


# ----------------------------------------------------------------- optimizers


def optim(outdir):
    rng = np.random.default_rng(7)
    arr = {}
    shapes = [(3, 4), (5,)]
    a = [rng.uniform(0.5, 2.0, s).astype(np.float32) for s in shapes]
    c = [rng.uniform(-1.0, 1.0, s).astype(np.float32) for s in shapes]
    # start at least 0.5 from the optimum so no gradient changes sign within 20 Adam steps
    p0 = [
        (ci + np.where(rng.random(s) < 0.5, -1, 1) * rng.uniform(0.5, 1.5, s)).astype(np.float32)
        for ci, s in zip(c, shapes)
    ]
    for k in range(len(shapes)):
        arr["optim/a%d" % k], arr["optim/c%d" % k], arr["optim/p%d_init" % k] = a[k], c[k], p0[k]
    steps = 20

    def run(kind, kw):
        P = [p.astype(np.float64) for p in p0]
        A = [x.astype(np.float64) for x in a]
        C = [x.astype(np.float64) for x in c]
        slots = [dict(m=np.zeros_like(p), v=np.zeros_like(p), vhat=np.zeros_like(p)) for p in P]
        traj = [[p.copy()] for p in P]
        gtraj = [[] for _ in P]
        for t in range(1, steps + 1):
            for k in range(len(P)):
                g = A[k] * (P[k] - C[k])
                gtraj[k].append(g)
                s = slots[k]
                if kind == "SGD":
                    lr, mom = kw["learning_rate"], kw.get("momentum", 0.0)
                    s["m"] = mom * s["m"] - lr * g
                    if kw.get("nesterov", False):
                        P[k] = P[k] + mom * s["m"] - lr * g
                    else:
                        P[k] = P[k] + s["m"]
                else:
                    lr, b1, b2 = kw["learning_rate"], kw.get("beta_1", 0.9), kw.get("beta_2", 0.999)
                    eps = kw.get("epsilon", 1e-7)
                    lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
                    s["m"] += (1 - b1) * (g - s["m"])
                    s["v"] += (1 - b2) * (g * g - s["v"])
                    vv = s["v"]
                    if kw.get("amsgrad", False):
                        s["vhat"] = np.maximum(s["vhat"], s["v"])
                        vv = s["vhat"]
                    P[k] = P[k] - lr_t * s["m"] / (np.sqrt(vv) + eps)
                traj[k].append(P[k].copy())
        return [np.stack(tr) for tr in traj], [np.stack(g) for g in gtraj]

    cases = {
        "adam": ("Adam", {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
        "adam_fast": (
            "Adam",
            {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.9, "epsilon": 1e-7},
        ),
        "amsgrad": (
            "Adam",
            {
                "learning_rate": 0.01,
                "beta_1": 0.9,
                "beta_2": 0.999,
                "epsilon": 1e-7,
                "amsgrad": True,
            },
        ),
        "amsgrad_fast": (
            "Adam",
            {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.9, "epsilon": 1e-7, "amsgrad": True},
        ),
        "sgd": ("SGD", {"learning_rate": 0.1}),
        "sgd_momentum": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
        "sgd_nesterov": ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    }
    results = {}
    for name, (kind, kw) in cases.items():
        ps, gs = run(kind, kw)
        results[name] = ps
        arr[name + "/meta"] = np.array(
            json.dumps({"optimizer": kind, "kwargs": kw, "steps": steps})
        )
        for k in range(len(shapes)):
            arr[name + "/p%d" % k] = ps[k]
            arr[name + "/g%d" % k] = gs[k]
    # the AMSGrad case with a fast beta_2 must actually differ from plain Adam
    diff = max(np.abs(x - y).max() for x, y in zip(results["amsgrad_fast"], results["adam_fast"]))
    assert diff > 1e-3, diff
    arr["optim/cases"] = np.array(json.dumps(list(cases)))
    path = os.path.join(outdir, "optim.npz")
    np.savez_compressed(path, **arr)
    print("%-22s %3d cases  %7d bytes" % ("optim.npz", len(cases), os.path.getsize(path)))


def main(outdir=HERE):
    """Write every fixture file into outdir (default: next to this script)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for family in (elementwise, nn, shape_ops, reductions, losses, mlp, optim):
            family(outdir)
    finally:
        torch.set_default_dtype(old)


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
