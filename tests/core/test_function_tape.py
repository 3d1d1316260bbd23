"""metalearn.function under a GradientTape, with inputs that require grad, and nested or
recursive: every call gives what the eager function gives (values and gradients), not
only the first (the traced one).

Reference gradients are the closed forms of the functions (checked against the eager
run too); the eager run is the function called without metalearn.function.
"""

import numpy as np

import metalearn as ml
from metalearn import _core

from tests.helpers import F32

W0 = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
X0 = np.array([[1.0, 1.0], [2.0, -1.0]], F32)


def _loss(w):
    return lambda x: ml.reduce_sum(ml.matmul(x, w) ** 2)


def _closed_form_grad_w(x, w):
    """d/dW sum((xW)^2) = 2 x^T (x W)."""
    return 2.0 * x.T @ (x @ w)


def test_replayed_calls_under_a_tape_have_the_first_calls_gradient():
    """Calls 1, 2 and 3 under a GradientTape: the same gradient, equal to the eager one and
    the closed form (calls 2 and 3 replayed with no graph: the tape returned None)."""
    w = ml.Variable(W0)
    f = ml.function(_loss(w))
    x = ml.tensor(X0)
    grads = []
    for _ in range(3):
        with ml.GradientTape() as tape:
            y = f(x)
        grads.append(tape.gradient(y, w))
    with ml.GradientTape() as tape:
        y_eager = _loss(w)(x)
    eager = tape.gradient(y_eager, w).numpy()
    assert all(g is not None for g in grads)
    for g in grads:
        np.testing.assert_array_equal(g.numpy(), eager)
    np.testing.assert_allclose(eager, _closed_form_grad_w(X0, W0), rtol=1e-6)
    assert f.n_traces == 1


def test_input_that_requires_grad_gives_a_gradient_on_every_call():
    """An argument that requires grad (grad mode on): every call's output has a graph to
    it, as the eager call's has (ml.grad raised "not used" on the replayed calls)."""
    w = ml.tensor(W0)
    f = ml.function(lambda x: ml.reduce_sum(ml.matmul(x, w) ** 2))
    for _ in range(3):
        x = ml.tensor(X0, requires_grad=True)
        (g,) = ml.grad(f(x), [x])
        np.testing.assert_allclose(g.numpy(), 2.0 * (X0 @ W0) @ W0.T, rtol=1e-6)


def test_replay_without_tape_or_grad_inputs_still_replays():
    """The fast path is kept: no tape and no input requiring grad replays (no graph, the
    traced values)."""
    w = ml.Variable(W0)
    f = ml.function(_loss(w))
    x = ml.tensor(X0)
    first = f(x)
    second = f(x)
    assert first.requires_grad and not second.requires_grad  # the replay records nothing
    assert float(second.numpy()) == float(first.numpy())
    with ml.no_grad():
        with ml.GradientTape():
            pass
    assert f.n_traces == 1


def test_tape_in_stop_recording_replays():
    w = ml.Variable(W0)
    f = ml.function(_loss(w))
    x = ml.tensor(X0)
    f(x)
    with ml.GradientTape() as tape:
        with tape.stop_recording():
            y = f(x)
    assert not y.requires_grad
    np.testing.assert_allclose(float(y.numpy()), float(np.sum((X0 @ W0) ** 2)))


def test_second_order_through_replayed_calls_under_nested_tapes():
    """Nested tapes around a traced function: the second derivative is the same on every
    call (d2/dx2 of sum(x^3) = 6x)."""
    f = ml.function(lambda x: ml.reduce_sum(x * x * x))
    for _ in range(3):
        x = ml.Variable(np.array([1.0, -2.0, 0.5], F32))
        with ml.GradientTape() as outer:
            with ml.GradientTape() as inner:
                y = f(x)
            g = inner.gradient(y, x)
        h = outer.gradient(g, x)
        np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 2, rtol=1e-6)
        np.testing.assert_allclose(h.numpy(), 6 * x.numpy(), rtol=1e-6)


def test_map_under_a_tape_gives_gradients():
    w = ml.Variable(W0)
    f = ml.function(_loss(w))
    xs = [ml.tensor(X0), ml.tensor(X0 * 2.0)]
    f(xs[0])
    with ml.GradientTape() as tape:
        outs = f.map([(x,) for x in xs])
        total = outs[0] + outs[1]
    g = tape.gradient(total, w)
    want = _closed_form_grad_w(X0, W0) + _closed_form_grad_w(2 * X0, W0)
    np.testing.assert_allclose(g.numpy(), want, rtol=1e-6)


# ------------------------------------------------------------ nested / recursive


def test_nested_traced_function_runs_inside_the_outer_trace():
    """An ml.function called inside another one (traced before, or not) runs eagerly
    inside the outer trace instead of raising; the outer one then replays both."""
    inner = ml.function(lambda x: x * 3.0 + 1.0)
    inner(ml.tensor(np.zeros(2, F32)))  # the inner one already traced
    outer = ml.function(lambda x: inner(x) * 2.0 + inner(x + 1.0))
    fresh_inner = ml.function(lambda x: ml.exp(x))
    outer2 = ml.function(lambda x: fresh_inner(x) - 1.0)  # the inner one never traced
    for v in ([1.0, 2.0], [-1.0, 0.5], [3.0, 0.0]):
        x = ml.tensor(np.array(v, F32))
        xv = np.array(v, F32)
        np.testing.assert_allclose(outer(x).numpy(), (xv * 3 + 1) * 2 + ((xv + 1) * 3 + 1))
        np.testing.assert_allclose(outer2(x).numpy(), np.exp(xv) - 1, rtol=1e-6)
    assert outer.n_traces == outer2.n_traces == 1
    assert fresh_inner.n_traces == 0  # it ran inside the trace only
    assert not _core.is_tracing()


def test_recursive_traced_function():
    """A traced function that calls itself: the inner calls run inside the outer trace."""

    def power_of_two(x, n):
        return x if n == 0 else rec(x * 2.0, n - 1)

    rec = ml.function(power_of_two)
    for v in (1.0, 3.0, -0.5):
        x = ml.tensor(np.full(3, v, F32))
        np.testing.assert_allclose(rec(x, 4).numpy(), np.full(3, 16 * v))
    assert rec.n_traces == 1


def test_map_inside_a_trace_runs_eagerly():
    inner = ml.function(lambda x: x + 1.0)
    outer = ml.function(lambda a, b: inner.map([(a,), (b,)])[0] * inner.map([(a,), (b,)])[1])
    for v in (1.0, 2.0):
        a, b = ml.tensor(np.full(2, v, F32)), ml.tensor(np.full(2, v * 3, F32))
        np.testing.assert_allclose(outer(a, b).numpy(), np.full(2, (v + 1) * (3 * v + 1)))
