"""What a graph keeps (issue 20, bounded memory): the storage counter
(``_core._storage_stats``), the storage a node gives back when its backward reads only a
tensor's shape (ML_UNREAD_* in csrc/ops/op_table.c), and a bound on the bytes a
second-order MAML step through conv4 holds at once, from the activations it must keep."""

import numpy as np

import metalearn as ml
from metalearn import _core

MiB = 2**20


def live():
    return _core._storage_stats()["live"]


def test_storage_stats_count_a_computed_tensor_until_released():
    x = ml.tensor(np.ones((256, 1024), np.float32))
    before = live()
    y = x * 2.0  # 1 MiB of storage the core allocates
    assert live() - before >= MiB
    stats = _core._storage_stats()
    assert stats["peak"] >= stats["live"] and stats["pooled"] >= 0
    del y
    assert live() == before
    assert _core._storage_stats(reset_peak=True)["live"] == before
    assert _core._storage_stats()["peak"] == before


def test_relu_gives_back_its_input_and_its_gradient_is_unchanged():
    # relu's backward reads its output (the mask), never its input: once nothing else
    # holds y, its megabyte goes back while z's graph still leads to x
    rng = np.random.default_rng(0)
    xv = rng.uniform(-1, 1, size=(256, 1024)).astype(np.float32)
    x = ml.tensor(xv, requires_grad=True)
    base = live()
    y = x * 2.0
    z = ml.relu(y)
    assert live() - base >= 2 * MiB
    del y
    assert live() - base < 1.5 * MiB
    (g,) = ml.grad(ml.reduce_sum(z), [x])
    np.testing.assert_array_equal(np.asarray(g), np.where(xv > 0, 2.0, 0.0).astype(np.float32))


def test_second_order_through_given_back_tensors():
    # d/dx of sum((dL/dx)^2) for L = sum(relu(x * x - 0.25)): the terms (x * x, the sub)
    # are given back, the mask kept; against the formula 8 x (2 x^2 mask) ... = 8 x mask
    rng = np.random.default_rng(1)
    xv = rng.uniform(-1, 1, size=(64, 32)).astype(np.float32)
    x = ml.tensor(xv, requires_grad=True)
    loss = ml.reduce_sum(ml.relu(x * x - 0.25))
    (g,) = ml.grad(loss, [x], create_graph=True)
    (gg,) = ml.grad(ml.reduce_sum(g * g), [x])
    mask = (xv * xv - 0.25) > 0
    np.testing.assert_allclose(np.asarray(g), np.where(mask, 2 * xv, 0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gg), np.where(mask, 8 * xv, 0), rtol=1e-6)


# ------------------------------------------------------------- MAML conv4 bound
HW, N_WAY, Q, TASKS, STEPS, FILTERS = 16, 5, 5, 2, 2, 8


def _activation_bytes(images):
    """Bytes of each conv block's conv output (images x h x w x FILTERS floats)."""
    return [images * (HW >> b) ** 2 * FILTERS * 4 for b in range(4)]


def test_maml_conv_step_keeps_a_bounded_number_of_activations():
    # What a second-order meta-step must keep, as PyTorch does (benchmarks/conv84.py
    # --peak): per task, the query's forward (conv output, relu output, max-pool argmax
    # and output: < 3 activations a block) and per inner step the support's forward and
    # the recorded backward (conv and relu outputs, the relu gradient, the batch-norm
    # gradient and the terms its formula reads: < 9 a block). Pool classes round a block
    # up by at most 25 %, and the backward needs a few query activations on top. Before
    # the unread-input rule the step kept 13 a block per inner step and 3.5 per query.
    from metalearn.meta import MAML, models
    from metalearn.tasks import Task

    rng = np.random.default_rng(0)
    sx = rng.uniform(0, 1, size=(TASKS, N_WAY, HW, HW, 3)).astype(np.float32)
    qx = rng.uniform(0, 1, size=(TASKS, N_WAY * Q, HW, HW, 3)).astype(np.float32)
    sy = np.tile(np.arange(N_WAY), (TASKS, 1))
    qy = np.tile(np.repeat(np.arange(N_WAY), Q), (TASKS, 1))
    ml.random.set_seed(0)
    model = models.conv4(N_WAY, filters=FILTERS, input_shape=(HW, HW, 3))
    maml = MAML(model, inner_lr=0.01, inner_steps=STEPS, meta_lr=1e-3)
    batch = Task(sx, sy, qx, qy, info={"batched": True})
    maml.meta_gradients(batch)  # warm: weights, pools
    base = _core._storage_stats(reset_peak=True)["live"]
    loss, grads = maml.meta_gradients(batch)
    peak = _core._storage_stats()["peak"] - base
    assert np.isfinite(loss) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    query, support = sum(_activation_bytes(N_WAY * Q)), sum(_activation_bytes(N_WAY))
    bound = 1.25 * TASKS * (3 * query + STEPS * 9 * support) + 3 * _activation_bytes(N_WAY * Q)[0]
    assert peak < bound, (peak / MiB, bound / MiB)
