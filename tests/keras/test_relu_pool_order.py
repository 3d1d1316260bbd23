"""A Sequential's Activation("relu") directly before a MaxPool2D runs after the pool
(models._relu_then_max_pool): the relu and its backward touch a quarter of the elements.
These tests hold the swapped order to the written one: the values against NumPy's
relu-then-pool, the gradients against NumPy's routing of the written order, the
meta-gradient of a MAML step (second order) against the written order's ops."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import batched
from metalearn.meta import models

pytestmark = pytest.mark.skipif(not models.has_conv(), reason="core built without conv ops")
L = keras.layers


def _awkward_input():
    """(2, 6, 6, 3) with the windows an order swap could get wrong: ties above zero,
    all-negative windows, exact zeros of both signs beside negatives, and NaNs."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    x[0, 0:2, 0:2, 0] = [[0.5, 0.5], [0.1, 0.5]]  # a tie above zero: the first one wins
    x[0, 0:2, 2:4, 1] = [[-1.0, -2.0], [-0.5, -3.0]]  # all negative: no gradient
    x[0, 2:4, 0:2, 2] = [[-1.0, 0.0], [-2.0, -0.0]]  # max exactly 0: relu's gradient is 0
    x[1, 0:2, 0:2, 0] = [[-1.0, -0.0], [-4.0, -2.0]]  # the sign of zero may differ
    x[1, 2:4, 2:4, 1] = [[0.3, np.nan], [2.0, np.nan]]  # the first NaN is the max
    x[1, 4:6, 4:6, 2] = [[np.nan, -1.0], [-1.0, -2.0]]
    return x


def _written_order_np(x, g):
    """NumPy's relu then 2x2 max pool of `x`, and the gradient `g` at the pool's output
    sends back through them in that order: to each window's first maximum of relu(x) (a
    NaN is the max once met), then through relu, whose gradient passes where its output
    is not zero (NaN included)."""
    r = np.where(np.isnan(x), x, np.maximum(x, 0.0))
    n, h, w, c = x.shape
    out = np.empty((n, h // 2, w // 2, c), np.float32)
    dr = np.zeros_like(x)
    for b, i, j, k in np.ndindex(out.shape):
        win = r[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, k].reshape(-1)
        nan = np.flatnonzero(np.isnan(win))
        p = int(nan[0]) if nan.size else int(np.argmax(win))  # argmax: the first maximum
        out[b, i, j, k] = win[p]
        dr[b, 2 * i + p // 2, 2 * j + p % 2, k] = g[b, i, j, k]
    return out, np.where(r != 0, dr, 0.0)


def test_relu_before_max_pool_runs_pooled_with_the_written_orders_values_and_gradient():
    x = _awkward_input()
    g = np.random.default_rng(4).standard_normal((2, 3, 3, 3)).astype(np.float32)
    model = keras.Sequential([L.Activation("relu"), L.MaxPool2D(2)])
    xt = ml.tensor(x, requires_grad=True)
    y = model(xt)
    assert y.op == "relu"  # the pool ran first
    (dx,) = ml.grad(ml.reduce_sum(y * ml.tensor(g)), [xt])
    want_y, want_dx = _written_order_np(x, g)
    np.testing.assert_array_equal(np.asarray(y), want_y)  # +0 == -0, NaN where NaN
    np.testing.assert_array_equal(np.asarray(dx), want_dx)
    assert np.isnan(np.asarray(y)[1, 1, 1, 1]) and np.asarray(dx)[1, 2, 3, 1] == g[1, 1, 1, 1]


@pytest.mark.parametrize(
    "layers_",
    [
        lambda: [L.Activation("tanh"), L.MaxPool2D(2)],  # only relu is swapped
        lambda: [L.Activation("relu"), L.AveragePooling2D(2)],  # an average does not commute
        lambda: [L.Activation(lambda t: ml.relu(t)), L.MaxPool2D(2)],  # not known as relu
        lambda: [L.MaxPool2D(2), L.Activation("relu")],  # already pooled first
    ],
)
def test_other_pairs_run_as_written(layers_):
    layers = layers_()
    x = ml.tensor(_awkward_input(), requires_grad=True)
    y = keras.Sequential(layers)(x)
    last = layers[-1]
    assert y.op == ("relu" if isinstance(last, L.Activation) else last._op)


def _net():
    ml.random.set_seed(11)
    return keras.Sequential(
        [
            L.InputLayer(input_shape=(8, 8, 2)),
            L.Conv2D(4, 3, padding="same"),
            L.Activation("relu"),
            L.MaxPool2D(2),
            L.Conv2D(4, 3, padding="same"),
            L.Activation("relu"),
            L.MaxPool2D(2),
            L.Flatten(),
            L.Dense(3),
        ]
    )


def _written_forward(model, w, x):
    """`model`'s layers one at a time in their written order (relu, then the pool), each
    a functional call on its own weights taken from `w` in turn."""
    it = iter(w)
    for layer in model.layers:
        own = [next(it) for _ in layer.trainable_weights]
        x = ml.functional_call(layer, own, x) if own else layer(x)
    return x


def _maml_meta_gradient(forward, weights, xs, ys, xq, yq):
    """One inner SGD step on the support set, the query loss's gradient through it
    (second order)."""
    loss = lambda out, y: ml.reduce_mean((out - y) * (out - y))  # noqa: E731
    grads = ml.grad(loss(forward(weights, xs), ys), weights, create_graph=True)
    fast = [w - 0.1 * g for w, g in zip(weights, grads)]
    return ml.grad(loss(forward(fast, xq), yq), weights)


def test_maml_meta_gradient_through_the_swap_equals_the_written_order():
    model = _net()
    rng = np.random.default_rng(5)
    xs, xq = (rng.standard_normal((n, 8, 8, 2)).astype(np.float32) for n in (5, 7))
    ys, yq = (rng.standard_normal((n, 3)).astype(np.float32) for n in (5, 7))
    weights = [ml.tensor(np.asarray(v), requires_grad=True) for v in model.trainable_variables]
    swapped = _maml_meta_gradient(
        lambda w, x: ml.functional_call(model, w, x), weights, xs, ys, xq, yq
    )
    written = _maml_meta_gradient(
        lambda w, x: _written_forward(model, w, x), weights, xs, ys, xq, yq
    )
    for a, b in zip(swapped, written):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batched_plan_pools_first_and_equals_each_tasks_written_order():
    model = _net()
    rng = np.random.default_rng(6)
    b = 3
    weights = [
        np.stack([np.asarray(v) + 0.01 * t for t in range(b)]).astype(np.float32)
        for v in model.trainable_variables
    ]
    plan = batched.batched_plan(model, model.trainable_variables)
    kinds = [type(f).__name__ for f in plan.forms]
    assert kinds[:3] == ["Conv2D", "Pool2D", "Activation"]
    x = rng.standard_normal((b, 4, 8, 8, 2)).astype(np.float32)
    y = np.asarray(plan([ml.tensor(w) for w in weights], ml.tensor(x)))
    for t in range(b):
        want = _written_forward(model, [ml.tensor(w[t]) for w in weights], ml.tensor(x[t]))
        np.testing.assert_allclose(y[t], np.asarray(want), rtol=1e-5, atol=1e-6)
