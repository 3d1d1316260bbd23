"""Tensor semantics against NumPy and PyTorch (issue 18): NaN through relu and its fused
forms, zero gradients through piecewise-constant ops, Python number conversions, boolean
and mixed indexing, and writes through a NumPy view of a recorded tensor.

Reference values come from NumPy formulas, or from PyTorch 2.13 (CPU) where NumPy has no
gradient; each PyTorch number below was printed by torch and is cited as such.
"""

import math
import operator
import os
import subprocess
import sys

import numpy as np
import pytest

import metalearn as ml

from tests.helpers import F32, REPO

NAN, INF = float("nan"), float("inf")
SPECIAL = np.array([NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 1e-4, -1e-4], F32)


def _bits_or_nan_equal(a, b):
    """Equal values, NaN where NaN (any NaN), signed zeros told apart."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a.view(np.uint32) == b.view(np.uint32)) | both_nan
    assert same.all(), (a[~same], b[~same])


def _grad_of_sum(fn, x):
    xt = ml.tensor(x, requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(fn(xt)), xt)
    return np.asarray(g)


# ---------------------------------------------------------------- 1. NaN through relu


def test_relu_propagates_nan_like_numpy_maximum():
    """relu(NaN) was 0: a NaN input gave a finite loss while backprop wrote NaN into the
    weights. relu(x) is NumPy's maximum(0, x): NaN passes, -inf gives 0, and -0.0 stays
    -0.0 as in PyTorch (torch.relu(-0.0) is -0.0; NumPy's maximum keeps its second operand
    of two zeros, so maximum(x, 0) would give +0.0)."""
    _bits_or_nan_equal(ml.relu(SPECIAL), np.maximum(F32(0), SPECIAL))
    # a long array: the vectorised lanes and the scalar tail
    x = np.tile(SPECIAL, 37)
    _bits_or_nan_equal(ml.relu(x), np.maximum(F32(0), x))


def test_relu_gradient_at_nan_follows_pytorch():
    """PyTorch's threshold_backward passes g where relu's output is not <= 0, so at NaN
    too: torch.autograd.grad(relu(x).sum(), x) at [nan, inf, -inf, 0, -0, 1, -1] is
    [1, 1, 0, 0, 0, 1, 0] (PyTorch 2.13)."""
    got = _grad_of_sum(ml.relu, SPECIAL[:7])
    np.testing.assert_array_equal(got, [1, 1, 0, 0, 0, 1, 0])
    # an infinite or NaN upstream gradient below zero stays 0 (not inf * 0)
    x = ml.tensor([NAN, 1.0, -1.0, 0.0], requires_grad=True)
    (g,) = ml.grad(ml.relu(x), x, grad_outputs=ml.tensor([INF, NAN, NAN, INF]))
    np.testing.assert_array_equal(np.asarray(g), [INF, NAN, 0.0, 0.0])  # PyTorch 2.13


ACTIVATIONS = {
    # name: (metalearn, NumPy formula in float64)
    "leaky_relu": (lambda t: ml.leaky_relu(t, 0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    "elu": (ml.elu, lambda x: np.where(x > 0, x, np.expm1(x))),
    "sigmoid": (ml.sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x))),
    "tanh": (ml.tanh, np.tanh),
    "erf": (ml.erf, np.vectorize(math.erf)),
    "gelu": (ml.gelu, lambda x: x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))),
    "clip": (lambda t: ml.clip(t, -0.5, 0.5), lambda x: np.clip(x, -0.5, 0.5)),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_at_nan_and_infinities_match_numpy(name):
    fn, ref = ACTIVATIONS[name]
    with np.errstate(all="ignore"):
        want = ref(SPECIAL.astype(np.float64))
    got = np.asarray(fn(SPECIAL), np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=2e-6, atol=1e-12)


def test_elu_is_accurate_near_zero():
    """elu(x) = expm1(x) below 0: exp(x) - 1 in float32 lost ~4 digits at 1e-4."""
    x = np.array([-1e-4, -3e-6, -1e-7, -0.5], F32)
    np.testing.assert_allclose(np.asarray(ml.elu(x)), np.expm1(x.astype(np.float64)), rtol=1e-6)


def test_activation_gradients_at_nan_and_infinities_follow_pytorch():
    """Gradients of sum(act(x)) at [nan, inf, -inf, 0, -0, 1, -1], printed by PyTorch 2.13:
    elu's was NaN at +inf and at NaN (0 * (out + alpha)); PyTorch's elu_backward takes the
    x > 0 branch there."""
    x = SPECIAL[:7]
    e = math.exp(-1.0)
    np.testing.assert_allclose(_grad_of_sum(ml.elu, x), [1, 1, 0, 1, 1, 1, e], rtol=1e-6)
    np.testing.assert_allclose(
        _grad_of_sum(lambda t: ml.leaky_relu(t, 0.2), x), [0.2, 1, 0.2, 0.2, 0.2, 1, 0.2], rtol=1e-6
    )
    np.testing.assert_array_equal(
        _grad_of_sum(lambda t: ml.clip(t, -0.5, 0.5), x), [0, 0, 0, 1, 1, 0, 0]
    )
    np.testing.assert_array_equal(_grad_of_sum(ml.abs, x), [0, 1, -1, 0, 0, 1, -1])


def test_fused_linear_relu_propagates_nan():
    """linear(x, w, b, 'relu') applies relu in the GEMM's store: NaN rows of x and NaN
    bias entries stay NaN, as relu(x @ w + b) in NumPy."""
    rng = np.random.default_rng(0)
    for rows, k, n in [(5, 3, 4), (64, 40, 40), (33, 100, 13), (130, 520, 48)]:
        x = rng.standard_normal((rows, k)).astype(F32)
        w = rng.standard_normal((k, n)).astype(F32)
        b = rng.standard_normal(n).astype(F32)
        x[0, 0] = NAN
        x[1, 0] = INF
        b[1] = NAN
        got = np.asarray(ml.linear(x, w, b, "relu"))
        with np.errstate(invalid="ignore", over="ignore"):
            want = np.maximum(x.astype(np.float64) @ w + b, 0.0)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-4)
        assert np.isnan(got[0]).all() and np.isnan(got[:, 1]).all()


def _dense_step_fns():
    """A Dense(relu) network's training step (forward, loss, gradients) written two ways:
    Keras layers (linear with a fused relu) and matmul + bias row + relu, which a trace
    fuses as vectorised MAML's steps: the 40 x 40 products stored through add + relu
    (forward) and relu_grad (backward) by the GEMM's epilogue, the outer products of the
    1-wide input and output computed inside the op that reads them, and the gradient sum
    before a relu_grad (an activity penalty on the last hidden layer) in one pass."""
    from metalearn.keras import layers, models

    ml.random.set_seed(0)
    model = models.Sequential(
        [
            layers.Dense(40, activation="relu", input_shape=(1,)),
            layers.Dense(40, activation="relu"),
            layers.Dense(1),
        ]
    )
    model(np.zeros((2, 1), F32))
    params = model.trainable_variables

    def keras_step(x, y):
        loss = ml.reduce_mean(ml.mean_squared_error(y, model(x)))
        return [loss] + ml.grad(loss, params)

    def matmul_step(x, y):
        h = x
        for i in range(0, len(params) - 2, 2):
            bias_row = ml.reshape(params[i + 1], (1, -1))
            h = ml.relu(ml.matmul(h, params[i]) + bias_row)
        out = ml.matmul(h, params[-2]) + params[-1]
        loss = ml.reduce_mean(ml.mean_squared_error(y, out)) + 1e-3 * ml.reduce_mean(h * h)
        return [loss] + ml.grad(loss, params)

    return keras_step, matmul_step


def _dense_batch(seed, nan):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, (50, 1)).astype(F32)
    y = np.sin(x).astype(F32)
    if nan:
        x[3, 0] = NAN
    return ml.tensor(x), ml.tensor(y)


def check_traced_dense_relu_network_propagates_nan():
    """One NaN input row: the loss is NaN and so is every weight gradient that the row
    reaches (relu used to stop it in the forward only), in the eager step and in the
    traced replays, which equal the eager results (NaN for NaN)."""
    for step in _dense_step_fns():
        traced = ml.function(step)
        traced(*_dense_batch(0, nan=False))  # traces
        for seed, nan in ((1, True), (2, False), (3, True)):
            batch = _dense_batch(seed, nan)
            got, want = traced(*batch), step(*batch)
            assert traced.n_traces == 1
            for g, w in zip(got, want):
                _bits_or_nan_equal(g, w)
            assert np.isnan(np.asarray(want[0])) == nan  # the loss
            for g in want[1:]:  # every kernel and bias sees the NaN row
                assert np.isnan(np.asarray(g)).any() == nan


def test_traced_dense_relu_network_propagates_nan():
    check_traced_dense_relu_network_propagates_nan()


@pytest.mark.parametrize("kernel", ["portable", "avx2"])
def test_nan_through_relu_on_each_kernel(kernel):
    """The same checks in a process whose GEMM and vector math run the portable C kernels
    (ML_KERNEL=portable) or the default (AVX2 where the CPU has it)."""
    env = dict(os.environ)
    env.pop("ML_KERNEL", None)
    if kernel == "portable":
        env["ML_KERNEL"] = "portable"
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "import tests.core.test_tensor_semantics as t, metalearn as ml\n"
        "t.check_traced_dense_relu_network_propagates_nan()\n"
        "t.test_fused_linear_relu_propagates_nan()\n"
        "t.test_relu_propagates_nan_like_numpy_maximum()\n"
        "print(ml._core.kernel_name())\n" % str(REPO)
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    if kernel == "portable":
        assert r.stdout.split()[-1] == "portable"


# ------------------------------------------- 2. zero gradients through step-like ops

STEP_LIKE = {
    "sign": ml.sign,
    "abs": ml.abs,
    "relu": ml.relu,
    "clip": lambda t: ml.clip(t, -0.5, 0.5),
    "leaky_relu": lambda t: ml.leaky_relu(t, 0.2),
    "maximum": lambda t: ml.maximum(t, 0.0),
    "reduce_max": ml.reduce_max,
}


def test_sign_gradient_is_zeros_not_unused():
    """TensorFlow and PyTorch give sign a zero gradient (torch.autograd.grad(sign(x).sum(),
    x) is zeros); metalearn said "not used" (None under allow_unused)."""
    x = ml.tensor([-1.0, 0.0, 2.0, NAN], requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(ml.sign(x)), x)
    np.testing.assert_array_equal(np.asarray(g), np.zeros(4))
    (g,) = ml.grad(ml.reduce_sum(ml.sign(x)), x, allow_unused=True)
    np.testing.assert_array_equal(np.asarray(g), np.zeros(4))
    with ml.GradientTape() as tape:
        v = ml.Variable(np.array([3.0, -2.0], F32))
        y = ml.reduce_sum(ml.sign(v) * 5.0)
    np.testing.assert_array_equal(np.asarray(tape.gradient(y, v)), [0.0, 0.0])
    # an input that the outputs do not depend on is still "not used"
    z = ml.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="not used"):
        ml.grad(ml.reduce_sum(ml.sign(x)), [x, z])


@pytest.mark.parametrize("name", sorted(STEP_LIKE))
def test_second_order_through_step_like_ops_is_zeros(name):
    """d2/dx2 of a piecewise-linear function is zeros (PyTorch 2.13 gives zeros for abs
    and relu; for sign, clip and the rest it refuses, having no graph to differentiate):
    metalearn gave None ("not used")."""
    fn = STEP_LIKE[name]
    x = ml.tensor([-1.0, 0.25, 2.0], requires_grad=True)
    (g1,) = ml.grad(ml.reduce_sum(fn(x)), x, create_graph=True)
    assert g1.requires_grad
    (g2,) = ml.grad(ml.reduce_sum(g1), x, create_graph=True)
    np.testing.assert_array_equal(np.asarray(g2), np.zeros(3))
    (g3,) = ml.grad(ml.reduce_sum(g2), x)
    np.testing.assert_array_equal(np.asarray(g3), np.zeros(3))


def test_zero_gradient_next_to_a_real_one():
    """sign(x) * x: d/dx = sign(x) (the product rule's sign'(x) x term is zero), and the
    second derivative is 0 (PyTorch 2.13: [-1, 0, 1] and zeros)."""
    x = ml.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    (g,) = ml.grad(ml.reduce_sum(ml.sign(x) * x), x, create_graph=True)
    np.testing.assert_array_equal(np.asarray(g), [-1.0, 0.0, 1.0])
    (h,) = ml.grad(ml.reduce_sum(g), x)
    np.testing.assert_array_equal(np.asarray(h), np.zeros(3))


# ------------------------------------------------------- 3. Python number conversions


def test_int_of_a_tensor_like_int_of_its_float():
    """int(ml.tensor(2.0)) raised; it truncates toward zero as int(np.float32(2.7)) does,
    NaN and infinities raise as int(float) does."""
    for v in (2.0, 2.7, -2.7, 0.0, 3e9, -1e-30):
        assert int(ml.tensor(v)) == int(np.float32(v))
        assert int(ml.tensor([[v]])) == int(np.float32(v))  # one element, as float() takes
        assert float(ml.tensor(v)) == float(np.float32(v))
    assert isinstance(int(ml.tensor(2.0)), int)
    with pytest.raises(ValueError):
        int(ml.tensor(NAN))
    with pytest.raises(OverflowError):
        int(ml.tensor(INF))
    with pytest.raises(TypeError, match="one element"):
        int(ml.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="one element"):
        int(ml.tensor(np.zeros((0,), F32)))


def test_index_takes_integral_0d_tensors_only():
    """operator.index: NumPy's 0-d integer arrays are indices, np.array([2]) is not; a
    float32 tensor counts as an integer when its value is integral (2.5 is a TypeError,
    never a truncation)."""
    assert operator.index(ml.tensor(3.0)) == operator.index(np.array(3)) == 3
    assert operator.index(ml.tensor(-2.0)) == -2
    assert ["a", "b", "c", "d"][ml.tensor(3.0)] == "d"
    assert list(range(ml.tensor(4.0))) == [0, 1, 2, 3]
    assert np.zeros(ml.tensor(2.0)).shape == (2,)
    for bad in (2.5, NAN, INF, -0.5):
        with pytest.raises(TypeError, match="integral"):
            operator.index(ml.tensor(bad))
    with pytest.raises(TypeError, match="0-d"):  # as operator.index(np.array([2]))
        operator.index(ml.tensor([2.0]))
    # a 0-d tensor indexes a tensor as an int does (NumPy's a[np.array(1)]); 1-D gathers
    t = ml.tensor(np.arange(6, dtype=F32).reshape(3, 2))
    a = np.arange(6, dtype=F32).reshape(3, 2)
    np.testing.assert_array_equal(np.asarray(t[ml.tensor(1.0)]), a[np.array(1)])
    np.testing.assert_array_equal(np.asarray(t[ml.tensor([1.0, 0.0])]), a[[1, 0]])
    with pytest.raises(TypeError, match="integral"):
        t[ml.tensor(1.5)]


def test_bool_as_numpy():
    """One element: its truth value (NaN is true, as in NumPy); none or several: NumPy's
    ValueError."""
    for v in (0.0, -0.0, 1.0, -3.5, NAN, INF):
        assert bool(ml.tensor(v)) == bool(np.array(v, F32))
        assert bool(ml.tensor([[v]])) == bool(np.array([[v]], F32))
    with pytest.raises(ValueError, match="more than one element is ambiguous"):
        bool(ml.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="empty"):
        bool(ml.tensor(np.zeros((2, 0), F32)))


# -------------------------------------------------------------- 4. boolean indexing

A = np.arange(24, dtype=F32).reshape(4, 3, 2)

BOOL_KEYS = [
    np.array([True, False, True, False]),
    [True, False, True, True],  # a list of bools is a mask (NumPy), not ints 1, 0, 1, 1
    np.zeros(4, bool),
    np.array([[True, False, True], [False, False, True], [True, True, True], [False] * 3]),
    (slice(None), np.array([False, True, True])),
    (Ellipsis, np.array([True, False])),
    (1, slice(None), [False, True]),
    (None, np.array([True, True, False, True])),
    (np.array([True, False, True, False]), 1),
    True,
    False,
    np.True_,
    np.array(False),
    [True, 1, 0, 2],  # mixed: NumPy makes these ints
]


@pytest.mark.parametrize("key", BOOL_KEYS, ids=lambda k: repr(k).replace("\n", "")[:60])
def test_boolean_indexing_as_numpy(key):
    """t[mask] read a boolean array as integer indices (rows 1, 0, 1 for [True, False,
    True]): now NumPy's answer, shape and values."""
    got = ml.tensor(A)[key]
    want = A[key]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), want)


B = np.arange(120, dtype=F32).reshape(2, 3, 4, 5)
S = slice(None)
MIXED_KEYS = [
    (1, S, [1, 0]),  # an int and an array apart: NumPy puts the array's dim first
    (1, S, 2, [0, 3]),
    (S, 1, S, [0, 1]),
    (1, Ellipsis, [0, 1]),
    (1, None, [0, 1]),
    (np.array(1), S, [0, 1]),  # a 0-d integer array is an int
    (1, S, np.array([True, False, True, False])),
    (1, [0, 2], S, 2),  # adjacent: the array's dim stays in place
    (S, [0, 1], 0),
    (Ellipsis, 1, [0, 1]),
]


@pytest.mark.parametrize("key", MIXED_KEYS, ids=lambda k: repr(k).replace("\n", "")[:60])
def test_array_index_with_ints_placed_as_numpy(key):
    """t[1, :, [1, 0]] had the array's dim where the array stood, (3, 2) for NumPy's
    (2, 3): NumPy moves the dims of advanced indices (ints and an array) first when a
    slice, None or Ellipsis stands between them."""
    got = ml.tensor(B)[key]
    want = B[key]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), want)


def test_several_array_indices_are_refused():
    """t[[0, 1], [0, 1]] was an outer product, (2, 2, 4, 5) for NumPy's paired (2, 4, 5)."""
    t = ml.tensor(B)
    for key in (([0, 1], [0, 1]), ([0, 1], S, [1, 0]), (np.array([True, False]), [0, 1])):
        with pytest.raises(IndexError, match="one integer or boolean array"):
            t[key]


def test_boolean_mask_gradient_scatters_back():
    """Differentiable like gather: the selected entries get the upstream gradient, the
    others zero (NumPy's a[mask] with np.add.at as the reference)."""
    mask = np.array([[True, False, True], [False, False, True], [True, True, True], [False] * 3])
    x = ml.tensor(A, requires_grad=True)
    y = x[mask]
    w = np.arange(1, 1 + mask.sum() * 2, dtype=F32).reshape(-1, 2)
    (g,) = ml.grad(ml.reduce_sum(y * ml.tensor(w)), x)
    want = np.zeros_like(A)
    want[mask] = w
    np.testing.assert_array_equal(np.asarray(g), want)
    (g,) = ml.grad(ml.reduce_sum(x[np.array([False, True, False, True])]), x)
    np.testing.assert_array_equal(np.asarray(g), np.repeat([0, 1, 0, 1], 6).reshape(4, 3, 2))


def test_boolean_index_errors():
    t = ml.tensor(A)
    with pytest.raises(IndexError, match="boolean index did not match"):
        t[np.array([True, False])]
    with pytest.raises(IndexError, match="boolean index did not match"):
        t[:, [True, False]]
    with pytest.raises(IndexError, match="too many indices"):
        t[np.ones((4, 3, 2, 1), bool)]
    # a bool scalar inside a tuple was read as the int 1 / 0: refused (NumPy's answer there
    # follows its advanced-indexing rules; use None or a boolean array)
    with pytest.raises(TypeError, match="boolean scalar"):
        t[0, True]
    with pytest.raises(TypeError, match="boolean scalar"):
        t[False, :]


# ------------------------------------------ 5. writes through a NumPy view (documented)


def test_numpy_view_writes_are_documented_as_unchecked():
    """Exporting a tensor to NumPy does not count as an in-place write (reading the loss
    or a weight through NumPy before the gradient is common and must keep working); a write
    through the view is therefore not detected, which the Tensor docstring says, naming
    Variable.assign as the checked way to write."""
    doc = " ".join(ml.Tensor.__doc__.split())
    assert "not seen by that check" in doc and "Variable.assign" in doc
    assert "in-place check" in ml.Tensor.numpy.__doc__
    # reading through views between the forward and the gradient is fine
    w = ml.tensor([1.0, 2.0], requires_grad=True)
    x = ml.tensor([3.0, 4.0])
    loss = ml.reduce_sum(w * x)
    assert float(np.asarray(loss)) == 11.0 and np.asarray(w).sum() == 3.0
    memoryview(x)
    (g,) = ml.grad(loss, w)
    np.testing.assert_array_equal(np.asarray(g), [3.0, 4.0])
    # a checked write (assign) is refused at the gradient
    loss = ml.reduce_sum(w * x)
    ml._core.assign(x, np.array([5.0, 6.0], F32))
    with pytest.raises(ValueError, match="modified in place"):
        ml.grad(loss, w)
    # a write through a NumPy view is not seen: the gradient reads the new values
    loss = ml.reduce_sum(w * x)
    np.asarray(x)[:] = [7.0, 8.0]
    (g,) = ml.grad(loss, w)
    np.testing.assert_array_equal(np.asarray(g), [7.0, 8.0])
