"""ml_grad's gradient sums: a tensor used several times gets its contributions added. When
the running sum is held by nothing else (a backward's fresh result), the next one is added
into it in place (ml__add_into), else into a new tensor (ml_add). Either way the bits are
ml_add's, NaN payloads included, and nothing the caller holds is written."""

import itertools

import numpy as np

import metalearn as ml

POS, NEG = np.array([0x7FC00000, 0xFFC00001], np.uint32).view(np.float32)


def _factors(seed):
    """Three (5, 7) factors with NaN + NaN of different payloads, inf - inf, -0 + -0."""
    r = np.random.default_rng(seed)
    a, b, c = (r.standard_normal((5, 7)).astype(np.float32) for _ in range(3))
    a[0, :3], b[0, :3], c[0, :3] = [POS, NEG, np.inf], [NEG, POS, -np.inf], [POS, 1.0, 2.0]
    a[1, :2], b[1, :2], c[1, :2] = [-0.0, -0.0], [-0.0, 0.0], [-0.0, -0.0]
    return a, b, c


def _gradient(a, b, c, recorded):
    """d/dx of sum(x a) + sum(x b) + sum(x c): x's slot sums three contributions. With
    `recorded`, a, b and c require grad and the gradients are recorded (create_graph), so
    each sum is a new tensor made by ml_add; else the sums go in place."""
    x = ml.tensor(np.ones((5, 7), np.float32), requires_grad=True)
    fa, fb, fc = (ml.tensor(f, requires_grad=recorded) for f in (a, b, c))
    loss = ml.reduce_sum(x * fa) + ml.reduce_sum(x * fb) + ml.reduce_sum(x * fc)
    (gx,) = ml.grad(loss, [x], create_graph=recorded)
    return np.asarray(gx)


def test_in_place_sums_have_the_bits_of_new_ones():
    for seed in (0, 1):
        a, b, c = _factors(seed)
        in_place, new = _gradient(a, b, c, False), _gradient(a, b, c, True)
        np.testing.assert_array_equal(in_place.view(np.uint32), new.view(np.uint32))
        # and the values NumPy gives for one of the orders the sweep may add them in
        with np.errstate(invalid="ignore"):
            folds = [(p + q) + r for p, q, r in itertools.permutations((a, b, c))]
        assert any(np.array_equal(in_place, f, equal_nan=True) for f in folds)
        assert np.isnan(in_place[0, :3]).all() and np.signbit(in_place[1, 0])


def test_sums_never_write_what_the_caller_holds():
    """The first contribution of x's slot is the caller's own grad_output (an add passes
    its output's gradient through): the sum must be a new tensor, and g1 stay as it was."""
    x = ml.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    g1 = ml.tensor(np.full((2, 3), 1.5, np.float32))
    g2 = ml.tensor(np.full((2, 3), 0.25, np.float32))
    y1, y2 = x + 0.0, x + 0.0
    (gx,) = ml.grad([y1, y2], [x], grad_outputs=[g1, g2])
    np.testing.assert_array_equal(np.asarray(gx), np.full((2, 3), 1.75, np.float32))
    np.testing.assert_array_equal(np.asarray(g1), np.full((2, 3), 1.5, np.float32))
    np.testing.assert_array_equal(np.asarray(g2), np.full((2, 3), 0.25, np.float32))
    # a gradient handed out is the caller's: a second call sums anew
    (gx2,) = ml.grad([y1, y2], [x], grad_outputs=[g1, g2])
    np.testing.assert_array_equal(np.asarray(gx), np.asarray(gx2))


def test_sums_over_many_uses_and_a_view():
    """x used 12 times, once through a reshape (whose backward may hand back a view of its
    output's gradient): the sum is exact small integers, so any lost or doubled add shows."""
    x = ml.tensor(np.zeros((4, 6), np.float32), requires_grad=True)
    loss = ml.reduce_sum(ml.reshape(x, (6, 4)) * ml.tensor(np.full((6, 4), 100.0, np.float32)))
    for k in range(1, 12):
        loss = loss + ml.reduce_sum(x * float(k))
    (gx,) = ml.grad(loss, [x])
    np.testing.assert_array_equal(np.asarray(gx), np.full((4, 6), 100.0 + 66.0, np.float32))
