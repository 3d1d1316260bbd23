"""Central-difference gradient checks for every differentiable op of metalearn.

How a check works (see ``gradcheck`` below):

* The op ``fn(*xs)`` is evaluated by metalearn in float32.  Its output ``y`` is turned into a
  scalar with a fixed random objective ``L = sum(w * y + u * y * y / 2)``.  The quadratic term
  makes even linear ops (reshape, add, ...) have a non-zero second derivative, so second
  order checks exercise the differentiability of every backward.
* Order 1: ``ml.grad(L, xs)`` is compared with central differences of ``L``.
* Order k > 1: ``S_k = sum_i <grad(S_{k-1}, xs, create_graph=True)_i, v_i>`` for random ``v``;
  ``ml.grad(S_k, xs)`` is compared with central differences of ``S_k``.
* The scalar used for the finite differences is accumulated in float64 from the float32
  tensors (no float32 summation noise), and the step is the float64 difference of the two
  float32-rounded perturbed inputs (no rounding of the step itself).
* Every check asserts the gradient it compared is non-trivial, and every op's forward value
  is compared with a NumPy float64 reference.
"""

import math
import zlib

import numpy as np
import pytest

import metalearn as ml

from tests.helpers import F32


# --------------------------------------------------------------------------- helpers


def _np(t):
    """float64 copy of a metalearn tensor (or array-like)."""
    return np.array(np.asarray(t), dtype=np.float64)


def _leaves(arrays):
    return [ml.tensor(a, requires_grad=True) for a in arrays]


def _build_objective(fn, w, u, vs):
    """Returns F(list of leaf tensors) -> (metalearn scalar or None, float64 value)."""
    w_t, hu_t = ml.tensor(w), ml.tensor(0.5 * u)
    w64, hu64 = w.astype(np.float64), 0.5 * u.astype(np.float64)

    def level0(xs):
        y = fn(*xs)
        y64 = _np(y)
        val = float(np.sum(w64 * y64 + hu64 * y64 * y64))
        s = ml.reduce_sum(y * w_t + (y * y) * hu_t)
        return s, val

    F = level0
    for level_vs in vs:

        def F(xs, prev=F, level_vs=level_vs):
            s, _ = prev(xs)
            if s is None or not s.requires_grad:
                return None, 0.0
            gs = ml.grad(s, list(xs), create_graph=True, allow_unused=True)
            total, val = None, 0.0
            for g, v in zip(gs, level_vs):
                if g is None:
                    continue
                assert tuple(g.shape) == v.shape
                val += float(np.sum(_np(g) * v.astype(np.float64)))
                term = ml.reduce_sum(g * ml.tensor(v))
                total = term if total is None else total + term
            return total, val

    return F


def gradcheck(fn, inputs, order=1, eps=3e-3, rtol=2e-2, atol_frac=1e-2, min_grad=1e-3, seed=0):
    """Checks the order-th derivative of fn at inputs (float32 arrays) by central differences.

    Returns the analytic gradients (float64 arrays) for further assertions.
    """
    rng = np.random.default_rng(seed)
    inputs = [np.array(x, dtype=F32, order="C") for x in inputs]
    y = fn(*_leaves(inputs))
    yshape = tuple(y.shape)
    w = rng.uniform(-1.0, 1.0, yshape).astype(F32)
    u = (rng.choice([-1.0, 1.0], yshape) * rng.uniform(0.3, 1.0, yshape)).astype(F32)
    vs = [[rng.standard_normal(x.shape).astype(F32) for x in inputs] for _ in range(order - 1)]
    F = _build_objective(fn, w, u, vs)

    leaves = _leaves(inputs)
    s, _ = F(leaves)
    if s is None or not s.requires_grad:
        analytic = [np.zeros(x.shape) for x in inputs]
    else:
        gs = ml.grad(s, leaves, allow_unused=True)
        assert len(gs) == len(inputs)
        analytic = []
        for g, x in zip(gs, inputs):
            if g is None:
                analytic.append(np.zeros(x.shape))
            else:
                assert tuple(g.shape) == x.shape, (
                    f"gradient shape {g.shape} != input shape {x.shape}"
                )
                analytic.append(_np(g))

    numeric = []
    for i, x in enumerate(inputs):
        num = np.zeros(x.shape)
        for idx in np.ndindex(*x.shape):
            xp = [a.copy() for a in inputs]
            xm = [a.copy() for a in inputs]
            xp[i][idx] = F32(float(x[idx]) + eps)
            xm[i][idx] = F32(float(x[idx]) - eps)
            h = float(xp[i][idx]) - float(xm[i][idx])
            _, vp = F(_leaves(xp))
            _, vm = F(_leaves(xm))
            num[idx] = (vp - vm) / h
        numeric.append(num)

    scale = max(float(np.max(np.abs(n))) if n.size else 0.0 for n in numeric)
    assert scale > min_grad, f"vacuous check: max |numeric gradient| = {scale}"
    ascale = max(float(np.max(np.abs(a))) if a.size else 0.0 for a in analytic)
    assert ascale > min_grad, f"analytic gradient is (near) zero: {ascale} (numeric {scale})"
    for i, (a, n) in enumerate(zip(analytic, numeric)):
        tol = 1e-4 + atol_frac * scale + rtol * np.abs(n)
        bad = np.abs(a - n) > tol
        if np.any(bad):
            k = np.argwhere(bad)[0]
            k = tuple(int(j) for j in k)
            raise AssertionError(
                f"order {order} gradient of input {i} (shape {inputs[i].shape}) mismatch at "
                f"{k}: analytic {a[k]!r} vs numeric {n[k]!r}; {int(bad.sum())}/{bad.size} bad\n"
                f"analytic=\n{a}\nnumeric=\n{n}"
            )
    return analytic


# --------------------------------------------------------------------- input makers


def U(rng, shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(F32)


def away(rng, shape, lo=0.15, hi=1.5):
    """Values with |x| in [lo, hi] and random sign (away from kinks at 0)."""
    return (rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)).astype(F32)


def pos(rng, shape, lo=0.5, hi=2.0):
    return rng.uniform(lo, hi, shape).astype(F32)


def distinct(rng, shape, spacing=0.2):
    """Values pairwise at least ~spacing apart (unique maxima along any axis)."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) - n / 2.0) * spacing + rng.uniform(-0.02, 0.02, n)
    return v.reshape(shape).astype(F32)


def apart(rng, b, lo=0.1, hi=0.8):
    """An array of b's shape at distance in [lo, hi] from b (for maximum/minimum)."""
    return (b + away(rng, b.shape, lo, hi)).astype(F32)


def softmax_np(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_np(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


_erf = np.vectorize(math.erf)


def gelu_np(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def sigmoid_np(x):
    return 1.0 / (1.0 + np.exp(-x))


EPS_K = 1e-7


def cce_np(t, p):
    p = p / p.sum(-1, keepdims=True)
    p = np.clip(p, EPS_K, 1 - EPS_K)
    return -np.sum(t * np.log(p), -1)


def bce_np(t, p):
    p = np.clip(p, EPS_K, 1 - EPS_K)
    return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p), -1)


def bce_logits_np(t, z):
    return np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))), -1)


def linear_relu_inputs(rng, xshape, k, n, bias=True, margin=0.1):
    for _ in range(1000):
        x, w = U(rng, xshape + (k,)), U(rng, (k, n))
        b = U(rng, (n,), -0.5, 0.5)
        z = x.astype(np.float64) @ w + (b if bias else 0)
        if np.min(np.abs(z)) > margin and np.any(z > 0) and np.any(z < 0):
            return x, w, b
    raise RuntimeError("could not draw inputs away from the relu kink")


def clip_inputs(rng, shape, lo=-0.5, hi=0.7):
    centers = np.array([-1.1, -0.8, -0.3, 0.0, 0.2, 0.45, 0.95, 1.2])
    c = rng.choice(centers, shape)
    c.flat[: len(centers)] = centers[: min(len(centers), c.size)]
    return (c + rng.uniform(-0.05, 0.05, shape)).astype(F32)


ACTS = {
    None: lambda z: z,
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": sigmoid_np,
    "tanh": np.tanh,
}


# ----------------------------------------------------------------------------- cases
# Each case: id -> (make(rng) -> list of inputs, fn(*tensors) -> tensor, ref(*float64) or None)

CASES = {}


def case(name, make, fn, ref=None, eps=3e-3, orders=(1, 2)):
    assert name not in CASES, name
    CASES[name] = dict(make=make, fn=fn, ref=ref, eps=eps, orders=orders)


# element-wise binary, with broadcasting
case("add", lambda r: [U(r, (3, 4)), U(r, (3, 4))], lambda a, b: ml.add(a, b), np.add)
case("add_bcast_3d", lambda r: [U(r, (3, 1, 4)), U(r, (2, 4))], lambda a, b: ml.add(a, b), np.add)
case("add_scalar_tensor", lambda r: [U(r, (3, 4)), U(r, ())], lambda a, b: ml.add(a, b), np.add)
case("add_scalar_first", lambda r: [U(r, ()), U(r, (2, 3))], lambda a, b: ml.add(a, b), np.add)
case("sub", lambda r: [U(r, (3, 4)), U(r, (3, 4))], lambda a, b: ml.sub(a, b), np.subtract)
case("sub_bcast", lambda r: [U(r, (2, 3, 4)), U(r, (4,))], lambda a, b: ml.sub(a, b), np.subtract)
case(
    "sub_bcast_rev",
    lambda r: [U(r, (3, 1)), U(r, (2, 3, 4))],
    lambda a, b: ml.sub(a, b),
    np.subtract,
)
case("mul", lambda r: [U(r, (3, 4)), U(r, (3, 4))], lambda a, b: ml.mul(a, b), np.multiply)
case(
    "mul_bcast_outer",
    lambda r: [U(r, (4, 1)), U(r, (1, 5))],
    lambda a, b: ml.mul(a, b),
    np.multiply,
)
case("mul_same_input", lambda r: [U(r, (3, 4))], lambda a: ml.mul(a, a), lambda a: a * a)
case(
    "div", lambda r: [U(r, (3, 4)), away(r, (3, 4), 0.5, 2.0)], lambda a, b: ml.div(a, b), np.divide
)
case(
    "div_bcast",
    lambda r: [U(r, (3, 4)), away(r, (3, 1), 0.5, 2.0)],
    lambda a, b: ml.div(a, b),
    np.divide,
)
case(
    "divide_alias",
    lambda r: [U(r, (2, 3)), away(r, (3,), 0.5, 2.0)],
    lambda a, b: ml.divide(a, b),
    np.divide,
)
case(
    "div_bcast_num",
    lambda r: [U(r, (1, 4)), away(r, (3, 1), 0.5, 2.0)],
    lambda a, b: ml.div(a, b),
    np.divide,
)


def _mk_max(shape_a, shape_b):
    def make(r):
        b = U(r, shape_b)
        a = apart(r, np.broadcast_to(b, np.broadcast_shapes(shape_a, shape_b)))
        # collapse a to shape_a where it broadcasts (only used with shape_a == full shape)
        return [a.reshape(shape_a), b]

    return make


case("maximum", _mk_max((3, 4), (3, 4)), lambda a, b: ml.maximum(a, b), np.maximum)
case("maximum_bcast", _mk_max((3, 4), (4,)), lambda a, b: ml.maximum(a, b), np.maximum)
case("minimum", _mk_max((3, 4), (3, 4)), lambda a, b: ml.minimum(a, b), np.minimum)
case("minimum_bcast", _mk_max((2, 3, 4), (3, 1)), lambda a, b: ml.minimum(a, b), np.minimum)

# operators (Tensor methods, reflected forms, numbers and ndarrays as operands)
_C = np.random.default_rng(123).uniform(0.5, 1.5, (3, 4)).astype(F32)
case("op_add_number", lambda r: [U(r, (3, 4))], lambda a: a + 2.5, lambda a: a + 2.5)
case("op_radd_number", lambda r: [U(r, (3, 4))], lambda a: 2.5 + a, lambda a: 2.5 + a)
case("op_rsub_number", lambda r: [U(r, (3, 4))], lambda a: 2.0 - a, lambda a: 2.0 - a)
case("op_rmul_ndarray", lambda r: [U(r, (3, 4))], lambda a: a * _C, lambda a: a * _C)
case(
    "op_rtruediv_number",
    lambda r: [away(r, (3, 4), 0.5, 2.0)],
    lambda a: 1.5 / a,
    lambda a: 1.5 / a,
)
case(
    "op_truediv_tensor",
    lambda r: [U(r, (3, 4)), away(r, (4,), 0.5, 2.0)],
    lambda a, b: a / b,
    np.divide,
)
case(
    "op_sub_mul_chain",
    lambda r: [U(r, (3, 4)), U(r, (3, 4))],
    lambda a, b: (a - b) * (a + b) - a * 0.5,
    lambda a, b: (a - b) * (a + b) - a * 0.5,
)
case("op_neg", lambda r: [U(r, (3, 4))], lambda a: -a, np.negative)
case("op_pow", lambda r: [pos(r, (3, 4))], lambda a: a**2.5, lambda a: a**2.5)
case("op_matmul", lambda r: [U(r, (3, 4)), U(r, (4, 2))], lambda a, b: a @ b, np.matmul)

# element-wise unary
case("neg", lambda r: [U(r, (3, 4))], lambda a: ml.neg(a), np.negative)
case("negative_alias", lambda r: [U(r, (3, 4))], lambda a: ml.negative(a), np.negative)
case("square", lambda r: [U(r, (3, 4))], lambda a: ml.square(a), np.square)
case("sqrt", lambda r: [pos(r, (3, 4))], lambda a: ml.sqrt(a), np.sqrt)
case("exp", lambda r: [U(r, (3, 4), -1.5, 1.5)], lambda a: ml.exp(a), np.exp)
case("log", lambda r: [pos(r, (3, 4))], lambda a: ml.log(a), np.log)
case("abs", lambda r: [away(r, (3, 4))], lambda a: ml.abs(a), np.abs)
case("pow_2_5", lambda r: [pos(r, (3, 4))], lambda a: ml.pow(a, 2.5), lambda a: a**2.5)
case("pow_neg_1_5", lambda r: [pos(r, (3, 4))], lambda a: ml.pow(a, -1.5), lambda a: a**-1.5)
case("pow_0_5", lambda r: [pos(r, (3, 4))], lambda a: ml.pow(a, 0.5), lambda a: a**0.5)
case(
    "pow_3_negative_base",
    lambda r: [away(r, (3, 4), 0.3, 1.5)],
    lambda a: ml.pow(a, 3.0),
    lambda a: a**3.0,
)
case(
    "pow_2_negative_base",
    lambda r: [away(r, (3, 4), 0.3, 1.5)],
    lambda a: ml.pow(a, 2.0),
    lambda a: a**2.0,
)
case("relu", lambda r: [away(r, (3, 4))], lambda a: ml.relu(a), lambda a: np.maximum(a, 0))
case(
    "leaky_relu_default",
    lambda r: [away(r, (3, 4))],
    lambda a: ml.leaky_relu(a),
    lambda a: np.where(a > 0, a, 0.2 * a),
)
case(
    "leaky_relu_0_05",
    lambda r: [away(r, (3, 4))],
    lambda a: ml.leaky_relu(a, negative_slope=0.05),
    lambda a: np.where(a > 0, a, 0.05 * a),
)
case(
    "elu_default",
    lambda r: [away(r, (3, 4))],
    lambda a: ml.elu(a),
    lambda a: np.where(a > 0, a, np.expm1(a)),
)
case(
    "elu_alpha_0_5",
    lambda r: [away(r, (3, 4))],
    lambda a: ml.elu(a, alpha=0.5),
    lambda a: np.where(a > 0, a, 0.5 * np.expm1(a)),
)
case("gelu", lambda r: [U(r, (3, 4), -2.0, 2.0)], lambda a: ml.gelu(a), gelu_np)
case(
    "softplus",
    lambda r: [U(r, (3, 4), -3.0, 3.0)],
    lambda a: ml.softplus(a),
    lambda a: np.logaddexp(0, a),
)
case("erf", lambda r: [U(r, (3, 4), -1.5, 1.5)], lambda a: ml.erf(a), _erf)
case("sigmoid", lambda r: [U(r, (3, 4), -3.0, 3.0)], lambda a: ml.sigmoid(a), sigmoid_np)
case("tanh", lambda r: [U(r, (3, 4), -1.5, 1.5)], lambda a: ml.tanh(a), np.tanh)
case(
    "clip",
    lambda r: [clip_inputs(r, (3, 4))],
    lambda a: ml.clip(a, -0.5, 0.7),
    lambda a: np.clip(a, -0.5, 0.7),
)
case(
    "clip_by_value_alias",
    lambda r: [clip_inputs(r, (2, 4))],
    lambda a: ml.clip_by_value(a, -0.5, 0.7),
    lambda a: np.clip(a, -0.5, 0.7),
)
case("softmax", lambda r: [U(r, (3, 5), -2, 2)], lambda a: ml.softmax(a), softmax_np)
case(
    "softmax_axis0",
    lambda r: [U(r, (4, 3), -2, 2)],
    lambda a: ml.softmax(a, axis=0),
    lambda a: softmax_np(a, 0),
)
case(
    "softmax_3d_axis1",
    lambda r: [U(r, (2, 3, 4), -2, 2)],
    lambda a: ml.softmax(a, axis=1),
    lambda a: softmax_np(a, 1),
)
case("log_softmax", lambda r: [U(r, (3, 5), -2, 2)], lambda a: ml.log_softmax(a), log_softmax_np)
case(
    "log_softmax_3d_axis1",
    lambda r: [U(r, (2, 3, 4), -2, 2)],
    lambda a: ml.log_softmax(a, axis=1),
    lambda a: log_softmax_np(a, 1),
)
case(
    "log_softmax_axis_neg2",
    lambda r: [U(r, (3, 4), -2, 2)],
    lambda a: ml.log_softmax(a, axis=-2),
    lambda a: log_softmax_np(a, -2),
)

# matmul: every transpose, batched, broadcast batch
case("matmul", lambda r: [U(r, (3, 4)), U(r, (4, 5))], lambda a, b: ml.matmul(a, b), np.matmul)
case(
    "matmul_ta",
    lambda r: [U(r, (4, 3)), U(r, (4, 5))],
    lambda a, b: ml.matmul(a, b, transpose_a=True),
    lambda a, b: a.T @ b,
)
case(
    "matmul_tb",
    lambda r: [U(r, (3, 4)), U(r, (5, 4))],
    lambda a, b: ml.matmul(a, b, transpose_b=True),
    lambda a, b: a @ b.T,
)
case(
    "matmul_ta_tb",
    lambda r: [U(r, (4, 3)), U(r, (5, 4))],
    lambda a, b: ml.matmul(a, b, transpose_a=True, transpose_b=True),
    lambda a, b: a.T @ b.T,
)
case(
    "matmul_batched",
    lambda r: [U(r, (2, 3, 4)), U(r, (2, 4, 3))],
    lambda a, b: ml.matmul(a, b),
    np.matmul,
)
case(
    "matmul_batched_ta_tb",
    lambda r: [U(r, (2, 4, 3)), U(r, (2, 2, 4))],
    lambda a, b: ml.matmul(a, b, transpose_a=True, transpose_b=True),
    lambda a, b: np.swapaxes(a, -1, -2) @ np.swapaxes(b, -1, -2),
)
case(
    "matmul_bcast_batch",
    lambda r: [U(r, (2, 1, 3, 4)), U(r, (3, 4, 2))],
    lambda a, b: ml.matmul(a, b),
    np.matmul,
)
case(
    "matmul_batched_times_2d",
    lambda r: [U(r, (2, 3, 4)), U(r, (4, 2))],
    lambda a, b: ml.matmul(a, b),
    np.matmul,
)
case(
    "matmul_2d_times_batched_tb",
    lambda r: [U(r, (3, 4)), U(r, (2, 2, 4))],
    lambda a, b: ml.matmul(a, b, transpose_b=True),
    lambda a, b: a @ np.swapaxes(b, -1, -2),
)
case(
    "matmul_vector_like",
    lambda r: [U(r, (1, 4)), U(r, (4, 1))],
    lambda a, b: ml.matmul(a, b),
    np.matmul,
)


# linear with every activation
def _linear_case(act, bias=True, xshape=(4,), k=3, n=5):
    name = f"linear_{act}" + ("" if bias else "_nobias") + ("" if xshape == (4,) else "_batched")

    def make(r):
        if act == "relu":
            x, w, b = linear_relu_inputs(r, xshape, k, n, bias)
        else:
            x, w, b = U(r, xshape + (k,)), U(r, (k, n)), U(r, (n,), -0.5, 0.5)
        return [x, w, b] if bias else [x, w]

    if bias:
        fn = lambda x, w, b: ml.linear(x, w, b, activation=act)  # noqa: E731
        ref = lambda x, w, b: ACTS[act](x @ w + b)  # noqa: E731
    else:
        fn = lambda x, w: ml.linear(x, w, activation=act)  # noqa: E731
        ref = lambda x, w: ACTS[act](x @ w)  # noqa: E731
    case(name, make, fn, ref)


for _act in [None, "linear", "relu", "sigmoid", "tanh"]:
    _linear_case(_act)
_linear_case(None, bias=False)
_linear_case("tanh", bias=False)
_linear_case("relu", xshape=(2, 3))
_linear_case("sigmoid", xshape=(2, 3))

# shape ops
case(
    "reshape", lambda r: [U(r, (3, 4))], lambda a: ml.reshape(a, (2, 6)), lambda a: a.reshape(2, 6)
)
case(
    "reshape_to_3d",
    lambda r: [U(r, (2, 6))],
    lambda a: ml.reshape(a, (3, 2, 2)),
    lambda a: a.reshape(3, 2, 2),
)
case(
    "reshape_method",
    lambda r: [U(r, (2, 3, 2))],
    lambda a: a.reshape(4, 3),
    lambda a: a.reshape(4, 3),
)
case(
    "reshape_to_scalar",
    lambda r: [U(r, (1, 1))],
    lambda a: ml.reshape(a, ()),
    lambda a: a.reshape(()),
)
case("transpose_default", lambda r: [U(r, (3, 4))], lambda a: ml.transpose(a), lambda a: a.T)
case(
    "transpose_perm",
    lambda r: [U(r, (2, 3, 4))],
    lambda a: ml.transpose(a, (1, 2, 0)),
    lambda a: np.transpose(a, (1, 2, 0)),
)
case("transpose_3d_default", lambda r: [U(r, (2, 3, 4))], lambda a: ml.transpose(a), lambda a: a.T)
case("transpose_method_T", lambda r: [U(r, (3, 4))], lambda a: a.T, lambda a: a.T)
case(
    "transpose_method_perm",
    lambda r: [U(r, (2, 3, 4))],
    lambda a: a.transpose((2, 0, 1)),
    lambda a: np.transpose(a, (2, 0, 1)),
)
case(
    "broadcast_to",
    lambda r: [U(r, (3, 1))],
    lambda a: ml.broadcast_to(a, (2, 3, 4)),
    lambda a: np.broadcast_to(a, (2, 3, 4)),
)
case(
    "broadcast_to_vector",
    lambda r: [U(r, (4,))],
    lambda a: ml.broadcast_to(a, (3, 4)),
    lambda a: np.broadcast_to(a, (3, 4)),
)
case(
    "broadcast_to_from_scalar",
    lambda r: [U(r, ())],
    lambda a: ml.broadcast_to(a, (2, 3)),
    lambda a: np.broadcast_to(a, (2, 3)),
)
case(
    "sum_to",
    lambda r: [U(r, (2, 3, 4))],
    lambda a: ml.sum_to(a, (3, 1)),
    lambda a: a.sum(axis=(0, 2)).reshape(3, 1),
)
case(
    "sum_to_vector",
    lambda r: [U(r, (2, 3, 4))],
    lambda a: ml.sum_to(a, (4,)),
    lambda a: a.sum(axis=(0, 1)),
)
case("sum_to_scalar", lambda r: [U(r, (2, 3))], lambda a: ml.sum_to(a, ()), lambda a: a.sum())
case("sum_to_same", lambda r: [U(r, (2, 3))], lambda a: ml.sum_to(a, (2, 3)), lambda a: a)
case(
    "concat_axis0",
    lambda r: [U(r, (2, 3)), U(r, (1, 3)), U(r, (3, 3))],
    lambda a, b, c: ml.concat([a, b, c], axis=0),
    lambda a, b, c: np.concatenate([a, b, c], 0),
)
case(
    "concat_axis1",
    lambda r: [U(r, (2, 3)), U(r, (2, 1))],
    lambda a, b: ml.concat([a, b], axis=1),
    lambda a, b: np.concatenate([a, b], 1),
)
case(
    "concat_axis_neg1_3d",
    lambda r: [U(r, (2, 2, 1)), U(r, (2, 2, 3))],
    lambda a, b: ml.concat([a, b], axis=-1),
    lambda a, b: np.concatenate([a, b], -1),
)
case(
    "concat_same_tensor_twice",
    lambda r: [U(r, (2, 3))],
    lambda a: ml.concat([a, a], axis=0),
    lambda a: np.concatenate([a, a], 0),
)
case("narrow_axis1", lambda r: [U(r, (3, 5))], lambda a: ml.narrow(a, 1, 1, 3), lambda a: a[:, 1:4])
case("narrow_axis0", lambda r: [U(r, (4, 3))], lambda a: ml.narrow(a, 0, 2, 2), lambda a: a[2:4])
case(
    "narrow_3d_axis_neg1",
    lambda r: [U(r, (2, 3, 4))],
    lambda a: ml.narrow(a, -1, 0, 2),
    lambda a: a[..., 0:2],
)
_IDX = np.array([2, 0, 2, 1, 2], dtype=np.int64)
case(
    "gather_axis0_repeated",
    lambda r: [U(r, (3, 4))],
    lambda a: ml.gather(a, _IDX, axis=0),
    lambda a: a[_IDX],
)
case(
    "gather_axis1_repeated",
    lambda r: [U(r, (2, 3))],
    lambda a: ml.gather(a, _IDX, axis=1),
    lambda a: a[:, _IDX],
)
case(
    "gather_negative_indices",
    lambda r: [U(r, (4, 2))],
    lambda a: ml.gather(a, np.array([-1, 0, -1, 3]), axis=0),
    lambda a: a[np.array([-1, 0, -1, 3])],
)
case(
    "gather_list_indices_axis_neg1",
    lambda r: [U(r, (2, 4))],
    lambda a: ml.gather(a, [3, 3, 0], axis=-1),
    lambda a: a[:, [3, 3, 0]],
)
case("getitem_int", lambda r: [U(r, (3, 4))], lambda a: a[1], lambda a: a[1])
case("getitem_negative_int", lambda r: [U(r, (3, 4))], lambda a: a[-1], lambda a: a[-1])
case("getitem_slice", lambda r: [U(r, (5, 3))], lambda a: a[1:4], lambda a: a[1:4])
case("getitem_2d_slice", lambda r: [U(r, (3, 6))], lambda a: a[:, 2:5], lambda a: a[:, 2:5])
case(
    "getitem_index_array",
    lambda r: [U(r, (4, 3))],
    lambda a: a[np.array([3, 1, 3])],
    lambda a: a[np.array([3, 1, 3])],
)

# reductions
_RED_AXES = [
    (None, False),
    (None, True),
    (0, False),
    (-1, True),
    ((0, 2), False),
    ((0, 2), True),
    ([1], True),
    ((-1, 0), False),
]


def _red_ref(np_fn, axis, keepdims):
    def ref(a):
        ax = tuple(axis) if isinstance(axis, (list, tuple)) else axis
        if ax == ():
            ax = None  # empty axes means all axes
        return np_fn(a, axis=ax, keepdims=keepdims)

    return ref


def _axis_id(axis, keepdims):
    a = "all" if axis is None else ("empty" if axis == () else str(axis).replace(" ", ""))
    return f"axis={a}" + ("_keep" if keepdims else "")


for _name, _np_fn, _maker in [
    ("reduce_sum", np.sum, lambda r: [U(r, (2, 3, 4))]),
    ("reduce_mean", np.mean, lambda r: [U(r, (2, 3, 4))]),
    ("reduce_max", np.max, lambda r: [distinct(r, (2, 3, 4))]),
]:
    for _axis, _keep in _RED_AXES:
        _f = getattr(ml, _name)

        def _fn(a, _f=_f, _axis=_axis, _keep=_keep):
            if _axis is None:
                return _f(a, keepdims=_keep)
            return _f(a, axis=_axis, keepdims=_keep)

        case(f"{_name}_{_axis_id(_axis, _keep)}", _maker, _fn, _red_ref(_np_fn, _axis, _keep))

case(
    "reduce_max_2d_axis1",
    lambda r: [distinct(r, (3, 4))],
    lambda a: ml.reduce_max(a, axis=1),
    lambda a: a.max(axis=1),
)


# losses, both from_logits modes
def _onehot(r, n, c):
    return np.eye(c, dtype=F32)[r.integers(0, c, n)]


def _soft_labels(r, n, c):
    t = r.uniform(0.1, 1.0, (n, c))
    return (t / t.sum(-1, keepdims=True)).astype(F32)


_LAB = np.array([2, 0, 3], dtype=np.int64)

case(
    "mean_squared_error",
    lambda r: [U(r, (3, 4)), U(r, (3, 4))],
    lambda t, p: ml.mean_squared_error(t, p),
    lambda t, p: np.mean((t - p) ** 2, -1),
)
case(
    "mean_squared_error_3d",
    lambda r: [U(r, (2, 3, 4)), U(r, (2, 3, 4))],
    lambda t, p: ml.mean_squared_error(t, p),
    lambda t, p: np.mean((t - p) ** 2, -1),
)


def _loss_case(name, make_true, make_pred, fn, ref):
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 7)
    y_true = make_true(rng)
    case(
        name,
        lambda r: [make_pred(r)],
        lambda p: fn(y_true, p),
        lambda p: ref(y_true.astype(np.float64), p),
    )


_loss_case(
    "categorical_crossentropy_probs",
    lambda r: _soft_labels(r, 3, 4),
    lambda r: pos(r, (3, 4), 0.2, 1.0),
    lambda t, p: ml.categorical_crossentropy(t, p),
    cce_np,
)
_loss_case(
    "categorical_crossentropy_probs_onehot",
    lambda r: _onehot(r, 3, 4),
    lambda r: pos(r, (3, 4), 0.2, 1.0),
    lambda t, p: ml.categorical_crossentropy(t, p, from_logits=False),
    cce_np,
)
_loss_case(
    "categorical_crossentropy_logits",
    lambda r: _soft_labels(r, 3, 4),
    lambda r: U(r, (3, 4), -2, 2),
    lambda t, p: ml.categorical_crossentropy(t, p, from_logits=True),
    lambda t, z: -np.sum(t * log_softmax_np(z), -1),
)
_loss_case(
    "categorical_crossentropy_logits_3d",
    lambda r: _soft_labels(r, 6, 3).reshape(2, 3, 3),
    lambda r: U(r, (2, 3, 3), -2, 2),
    lambda t, p: ml.categorical_crossentropy(t, p, from_logits=True),
    lambda t, z: -np.sum(t * log_softmax_np(z), -1),
)


def _norm_probs(r, shape):
    p = r.uniform(0.2, 1.0, shape)
    return (p / p.sum(-1, keepdims=True)).astype(F32)


case(
    "sparse_categorical_crossentropy_probs",
    lambda r: [_norm_probs(r, (3, 4))],
    lambda p: ml.sparse_categorical_crossentropy(_LAB, p),
    lambda p: -np.log(p[np.arange(3), _LAB]),
)
case(
    "sparse_categorical_crossentropy_logits",
    lambda r: [U(r, (3, 4), -2, 2)],
    lambda p: ml.sparse_categorical_crossentropy(_LAB, p, from_logits=True),
    lambda z: -log_softmax_np(z)[np.arange(3), _LAB],
)
case(
    "sparse_categorical_crossentropy_logits_float_labels",
    lambda r: [U(r, (3, 4), -2, 2)],
    lambda p: ml.sparse_categorical_crossentropy(_LAB.astype(F32), p, from_logits=True),
    lambda z: -log_softmax_np(z)[np.arange(3), _LAB],
)
case(
    "sparse_categorical_crossentropy_logits_int32_col_labels",
    lambda r: [U(r, (3, 4), -2, 2)],
    lambda p: ml.sparse_categorical_crossentropy(
        _LAB.astype(np.int32).reshape(3, 1), p, from_logits=True
    ),
    lambda z: -log_softmax_np(z)[np.arange(3), _LAB],
)
_loss_case(
    "binary_crossentropy_probs",
    lambda r: r.integers(0, 2, (3, 4)).astype(F32),
    lambda r: pos(r, (3, 4), 0.1, 0.9),
    lambda t, p: ml.binary_crossentropy(t, p),
    bce_np,
)
_loss_case(
    "binary_crossentropy_probs_soft",
    lambda r: U(r, (3, 4), 0.0, 1.0),
    lambda r: pos(r, (3, 4), 0.1, 0.9),
    lambda t, p: ml.binary_crossentropy(t, p, from_logits=False),
    bce_np,
)
_loss_case(
    "binary_crossentropy_logits",
    lambda r: r.integers(0, 2, (3, 4)).astype(F32),
    lambda r: U(r, (3, 4), -3, 3),
    lambda t, p: ml.binary_crossentropy(t, p, from_logits=True),
    bce_logits_np,
)
_loss_case(
    "binary_crossentropy_logits_soft_3d",
    lambda r: U(r, (2, 2, 3), 0.0, 1.0),
    lambda r: U(r, (2, 2, 3), -3, 3),
    lambda t, p: ml.binary_crossentropy(t, p, from_logits=True),
    bce_logits_np,
)

# compositions
case(
    "mlp_tanh_softmax_cce",
    lambda r: [U(r, (3, 4)), U(r, (4, 5)), U(r, (5,), -0.3, 0.3), U(r, (5, 3))],
    lambda x, w1, b1, w2: ml.categorical_crossentropy(
        np.eye(3, dtype=F32)[[0, 2, 1]],
        ml.matmul(ml.linear(x, w1, b1, activation="tanh"), w2),
        from_logits=True,
    ),
    lambda x, w1, b1, w2: (
        -np.sum(np.eye(3)[[0, 2, 1]] * log_softmax_np(np.tanh(x @ w1 + b1) @ w2), -1)
    ),
)
case(
    "exp_mul",
    lambda r: [U(r, (2, 3)), U(r, (2, 3))],
    lambda a, b: ml.exp(ml.mul(a, b)),
    lambda a, b: np.exp(a * b),
)

IDS = sorted(CASES)


def _inputs(name):
    return CASES[name]["make"](np.random.default_rng(zlib.crc32(name.encode())))


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", IDS)
def test_forward_matches_numpy(name):
    c = CASES[name]
    xs = _inputs(name)
    y = c["fn"](*[ml.tensor(x) for x in xs])
    assert isinstance(y, ml.Tensor)
    expect = np.asarray(c["ref"](*[x.astype(np.float64) for x in xs]))
    got = np.asarray(y)
    assert got.dtype == np.float32
    assert got.shape == expect.shape, f"shape {got.shape} != numpy {expect.shape}"
    np.testing.assert_allclose(
        got, expect, rtol=1e-4, atol=1e-5 * max(1.0, float(np.max(np.abs(expect))))
    )


@pytest.mark.parametrize("name", IDS)
def test_grad_first_order(name):
    c = CASES[name]
    gradcheck(c["fn"], _inputs(name), order=1, eps=c["eps"])


@pytest.mark.parametrize("name", [n for n in IDS if 2 in CASES[n]["orders"]])
def test_grad_second_order(name):
    c = CASES[name]
    gradcheck(c["fn"], _inputs(name), order=2, eps=c["eps"], seed=1)


THIRD = {
    "tanh": (lambda a: ml.tanh(a), lambda r: [U(r, (2, 3), -1.5, 1.5)]),
    "exp_mul": (lambda a, b: ml.exp(ml.mul(a, b)), lambda r: [U(r, (2, 3)), U(r, (2, 3))]),
    "sigmoid": (lambda a: ml.sigmoid(a), lambda r: [U(r, (2, 3), -2, 2)]),
    "log_softmax": (lambda a: ml.log_softmax(a), lambda r: [U(r, (2, 3), -2, 2)]),
    "matmul_tanh": (lambda a, b: ml.tanh(ml.matmul(a, b)), lambda r: [U(r, (2, 3)), U(r, (3, 2))]),
}


@pytest.mark.parametrize("name", sorted(THIRD))
def test_grad_third_order(name):
    fn, make = THIRD[name]
    gradcheck(fn, make(np.random.default_rng(zlib.crc32(name.encode()))), order=3, eps=1e-2, seed=2)


def test_grad_fourth_order_tanh():
    gradcheck(lambda a: ml.tanh(a), [np.array([0.3, -0.7, 1.1], F32)], order=4, eps=1e-2, seed=3)


def test_second_derivative_scalar_closed_form():
    # f = a x^2 + b at x=3 (the header's example): f' = 12, f'' = 4
    x = ml.tensor(3.0, requires_grad=True)
    f = 2.0 * ml.square(x) + 1.0
    (df,) = ml.grad(f, x, create_graph=True)
    assert df.item() == pytest.approx(12.0)
    (d2f,) = ml.grad(df, x)
    assert d2f.item() == pytest.approx(4.0)


def test_third_derivative_exp_closed_form():
    x = ml.tensor(0.5, requires_grad=True)
    y = ml.exp(2.0 * x)
    (g1,) = ml.grad(y, x, create_graph=True)
    (g2,) = ml.grad(g1, x, create_graph=True)
    (g3,) = ml.grad(g2, x)
    e = math.exp(1.0)
    assert g1.item() == pytest.approx(2 * e, rel=1e-5)
    assert g2.item() == pytest.approx(4 * e, rel=1e-5)
    assert g3.item() == pytest.approx(8 * e, rel=1e-5)


@pytest.mark.parametrize("opname", ["sign", "sign_in_product"])
def test_sign_has_zero_gradient(opname):
    x = ml.tensor(np.array([[-1.5, 0.5], [2.0, -0.25]], F32), requires_grad=True)
    if opname == "sign":
        np.testing.assert_array_equal(np.asarray(ml.sign(x)), np.sign(np.asarray(x)))
        y = ml.reduce_sum(ml.sign(x) * 3.0)
        # zeros, as TensorFlow and PyTorch (not None: the output depends on x)
        (g,) = ml.grad(y, x, create_graph=True)
        np.testing.assert_array_equal(np.asarray(g), np.zeros((2, 2)))
        (h,) = ml.grad(ml.reduce_sum(g), x)
        np.testing.assert_array_equal(np.asarray(h), np.zeros((2, 2)))
    else:
        # d/dx sum(sign(x) * x) = sign(x) (sign contributes nothing); d2 = 0
        y = ml.reduce_sum(ml.sign(x) * x)
        (g,) = ml.grad(y, x, create_graph=True)
        np.testing.assert_array_equal(np.asarray(g), np.sign(np.asarray(x)))
        (h,) = ml.grad(ml.reduce_sum(g * g), x)
        np.testing.assert_array_equal(np.asarray(h), np.zeros((2, 2)))


def test_reduce_max_ties_split_gradient():
    # header: the gradient is split evenly between tied maxima
    x = ml.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], F32), requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(ml.reduce_max(x, axis=1)), x)
    np.testing.assert_allclose(np.asarray(g), [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_gradcheck_helper_detects_wrong_gradient():
    # the helper must fail when the analytic gradient is wrong: d/dx detach(x)*x is x, not 2x
    def f(a):
        return a.detach() * a

    with pytest.raises(AssertionError):
        gradcheck(f, [np.array([0.5, -1.0, 2.0], F32)])


def test_gradcheck_helper_refuses_vacuous_check():
    with pytest.raises(AssertionError, match="vacuous"):
        gradcheck(lambda a: a * 0.0, [np.array([0.5, -1.0], F32)])
