"""metalearn.function: a traced replay equals the eager run, op for op."""

import re

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core


def _mlp_weights(seed):
    rng = np.random.default_rng(seed)
    return [
        ml.tensor(rng.standard_normal((1, 40)).astype(np.float32) * 0.5, requires_grad=True),
        ml.tensor(np.zeros(40, np.float32), requires_grad=True),
        ml.tensor(rng.standard_normal((40, 1)).astype(np.float32) * 0.2, requires_grad=True),
        ml.tensor(np.zeros(1, np.float32), requires_grad=True),
    ]


def _forward(w, x):
    return ml.linear(ml.linear(x, w[0], w[1], "relu"), w[2], w[3])


def _maml_task_grads(w, sx, sy, qx, qy, inner_lr=0.01):
    """One inner SGD step, query loss, second-order meta-gradient (Finn et al. 2017)."""
    loss = ml.reduce_mean(ml.mean_squared_error(sy, _forward(w, sx)))
    grads = ml.grad(loss, w, create_graph=True)
    fast = [p - inner_lr * g for p, g in zip(w, grads)]
    qloss = ml.reduce_mean(ml.mean_squared_error(qy, _forward(fast, qx)))
    return [qloss] + ml.grad(qloss, w)


def _task(seed, k=10):
    rng = np.random.default_rng(seed)
    amp, phase = rng.uniform(0.1, 5), rng.uniform(0, np.pi)
    x = rng.uniform(-5, 5, (2 * k, 1)).astype(np.float32)
    y = (amp * np.sin(x - phase)).astype(np.float32)
    return [ml.tensor(a) for a in (x[:k], y[:k], x[k:], y[k:])]


def test_second_order_maml_step_replays_exactly():
    w = _mlp_weights(0)
    traced = ml.function(lambda sx, sy, qx, qy: _maml_task_grads(w, sx, sy, qx, qy))
    first = traced(*_task(1))  # traces (eager)
    assert traced.n_traces == 1 and traced.n_ops()[0] > 30
    for seed in (2, 3, 4):
        task = _task(seed)
        replayed = traced(*task)
        eager = _maml_task_grads(w, *task)
        for r, e in zip(replayed, eager):
            np.testing.assert_array_equal(r.numpy(), e.numpy())
        assert np.abs(replayed[1].numpy()).max() > 1e-3  # a real meta-gradient
    assert not np.array_equal(first[1].numpy(), replayed[1].numpy())


def test_train_step_with_optimizer_updates_captured_weights():
    w_traced, w_eager = _mlp_weights(5), _mlp_weights(5)
    opt_t, opt_e = _core.Adam(learning_rate=0.01), _core.Adam(learning_rate=0.01)

    def step(w, opt, x, y):
        loss = ml.reduce_mean(ml.mean_squared_error(y, _forward(w, x)))
        opt.step(w, ml.grad(loss, w))
        return loss

    traced = ml.function(lambda x, y: step(w_traced, opt_t, x, y))
    for seed in range(6):
        sx, sy, _, _ = _task(seed)
        lt = traced(sx, sy)
        le = step(w_eager, opt_e, sx, sy)
        np.testing.assert_array_equal(lt.numpy(), le.numpy())
    for a, b in zip(w_traced, w_eager):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert opt_t.iterations == opt_e.iterations == 6
    assert traced.n_traces == 1


def test_new_signature_retraces():
    f = ml.function(lambda x: ml.reduce_sum(x * x))
    assert f(np.ones((2, 3), np.float32)).item() == 6.0
    assert f(np.ones((4,), np.float32)).item() == 4.0
    assert f(np.full((2, 3), 2, np.float32)).item() == 24.0
    assert f.n_traces == 2


def test_replay_checks_shapes_and_rejects_python_outputs():
    tr = _core.trace_begin([ml.tensor(np.ones(3, np.float32))])
    _core.trace_end(tr, [])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        _core.trace_replay(tr, [ml.tensor(np.ones(4, np.float32))])
    f = ml.function(lambda x: 3.0)
    with pytest.raises(TypeError, match="outputs must be tensors"):
        f(ml.tensor([1.0]))
    assert not _core.is_grad_enabled() or True  # tracing left grad mode as it was
    g = ml.function(lambda x: ml.exp(x))  # a failed trace did not leave recording on
    np.testing.assert_allclose(g(ml.tensor([0.0])).numpy(), [1.0])


def test_map_over_tasks_is_independent_of_thread_count():
    w = _mlp_weights(7)
    traced = ml.function(lambda sx, sy, qx, qy: _maml_task_grads(w, sx, sy, qx, qy))
    tasks = [_task(s) for s in range(10, 18)]
    one = traced.map(tasks, n_threads=1)
    two = traced.map(tasks, n_threads=2)
    for a, b, task in zip(one, two, tasks):
        eager = _maml_task_grads(w, *task)
        for x, y, e in zip(a, b, eager):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
            np.testing.assert_array_equal(x.numpy(), e.numpy())
    # the meta-batch sum in task order is bit-identical
    s1 = sum(o[1].numpy() for o in one)
    s2 = sum(o[1].numpy() for o in two)
    np.testing.assert_array_equal(s1, s2)


def test_random_ops_draw_fresh_numbers_on_replay():
    f = ml.function(lambda x: x + _core.random_uniform((3,)))
    a = f(ml.tensor(np.zeros(3, np.float32))).numpy()
    b = f(ml.tensor(np.zeros(3, np.float32))).numpy()
    assert not np.array_equal(a, b)
    assert ((b >= 0) & (b < 1)).all()


def test_num_threads_setting():
    prev = ml.get_num_threads()
    ml.set_num_threads(3)
    assert ml.get_num_threads() == 3
    with pytest.raises(ValueError):
        ml.set_num_threads(0)
    ml.set_num_threads(prev)


def test_maml_fit_traced_equals_eager():
    """MAML.fit replays its vectorised meta-step from a trace; the weights it reaches are
    the eager run's, bit for bit (same seeds, same tasks)."""
    from metalearn.meta import MAML, models
    from metalearn.tasks import Sinusoid

    final = {}
    for trace in (False, True):
        ml.random.set_seed(0)
        model = models.sinusoid_mlp()
        maml = MAML(model, inner_lr=0.01, trace=trace)
        history = maml.fit(Sinusoid(k_shot=10, seed=3), iterations=40, meta_batch_size=5, verbose=0)
        final[trace] = (
            [w.numpy().copy() for w in model.trainable_weights],
            history["loss"],
            maml.meta_optimizer.iterations,
        )
        if trace:
            assert maml._traced_step is not None and maml._traced_step.n_traces == 1
    for a, b in zip(final[False][0], final[True][0]):
        np.testing.assert_array_equal(a, b)
    assert final[False][1] == final[True][1]
    assert int(final[False][2]) == int(final[True][2]) == 40


def _fit_traced_and_eager(make_layers, x_shape, n_classes, epochs):
    """Model.fit of the same network, data and seed, eagerly (compile(run_eagerly=True)) and
    traced by default: the losses and weights must agree bit for bit. Returns the traced
    model (batch size 16)."""
    from metalearn.keras import models

    def run(run_eagerly):
        ml.random.set_seed(0)
        m = models.Sequential(make_layers())
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=run_eagerly)
        rng = np.random.default_rng(0)
        x = rng.random(x_shape, dtype=np.float32)
        y = rng.integers(0, n_classes, x_shape[0])
        hist = m.fit(x, y, epochs=epochs, batch_size=16, verbose=0, shuffle=True)
        return hist.history["loss"], m.get_weights(), m

    eager_loss, eager_w, _ = run(True)
    traced_loss, traced_w, model = run(None)
    assert traced_loss == eager_loss
    for a, b in zip(eager_w, traced_w):
        np.testing.assert_array_equal(a, b)
    return model


def test_model_fit_traced_equals_eager():
    """Model.fit records its training step once per batch shape and replays it; the
    losses and weights equal an eager run (compile(run_eagerly=True)) bit for bit."""
    from metalearn.keras import layers

    model = _fit_traced_and_eager(
        lambda: [
            layers.Flatten(input_shape=(6, 6)),
            layers.Dense(16, activation="relu"),
            layers.Dense(4, activation="softmax"),
        ],
        (100, 6, 6),
        4,
        epochs=3,
    )
    assert model._train_fn is not None and model._train_fn.n_traces == 2  # 16 and the last 4
    assert int(model.optimizer.iterations) == 3 * 7


def test_untraceable_op_fails_loudly_instead_of_baking_values():
    """An op that records nothing inside a traced function would make every replay reuse
    the first call's value: the trace refuses instead."""
    from metalearn.memory import KnowledgeMemory

    memory = KnowledgeMemory(capacity=8, key_size=4, payload_size=2, seed=0)
    rng = np.random.default_rng(0)
    memory.update(
        rng.standard_normal((4, 4)).astype(np.float32),
        np.arange(4),
        rng.standard_normal((4, 2)).astype(np.float32),
    )
    # the memory's search picks keys by value inside C, outside any trace
    f = ml.function(lambda q: ml.reduce_sum(memory.read(q, k=2)) * 2.0)
    with pytest.raises(ValueError, match="cannot be traced"):
        f(ml.tensor(rng.standard_normal((3, 4)).astype(np.float32)))
    np.testing.assert_allclose(ml.function(lambda x: x * 2.0)(ml.tensor([1.0])).numpy(), [2.0])


def test_a_replay_keeps_no_reference_to_its_arguments():
    """After a traced call returns, its argument tensors are released at once, not at the
    next garbage collection (a cycle there kept each step's meta-batch alive)."""
    import gc
    import sys

    f = ml.function(lambda a, b: ml.matmul(a, b) * 2.0)
    w = ml.tensor(np.ones((3, 2), np.float32))
    f(ml.tensor(np.ones((4, 3), np.float32)), w)  # traces
    gc.disable()
    try:
        for _ in range(2):  # replays
            x = np.ones((4, 3), np.float32)
            before = sys.getrefcount(x)
            out = f(ml.as_tensor(x), w)
            del out
            assert sys.getrefcount(x) == before
    finally:
        gc.enable()


def _conv_weights(seed):
    rng = np.random.default_rng(seed)
    return [
        ml.tensor(rng.standard_normal((3, 3, 1, 4)).astype(np.float32) * 0.4, requires_grad=True),
        ml.tensor(rng.standard_normal(4).astype(np.float32) * 0.1, requires_grad=True),
        ml.tensor(rng.standard_normal((3, 3, 4, 3)).astype(np.float32) * 0.3, requires_grad=True),
        ml.tensor(rng.standard_normal((3, 2)).astype(np.float32) * 0.5, requires_grad=True),
    ]


def _conv_forward(w, x):
    h = ml.relu(ml.conv2d(x, w[0], w[1], padding="same"))
    h = ml.max_pool2d(h, 2)  # 8x8 -> 4x4: argmax per window
    h = ml.conv2d(h, w[2], strides=(1, 1), padding="valid")  # 4x4 -> 2x2
    h = ml.avg_pool2d(h, 2)  # -> 1x1
    return ml.matmul(ml.reshape(h, (int(h.shape[0]), 3)), w[3])


def _conv_maml_grads(w, sx, sy, qx, qy, inner_lr=0.1):
    loss = ml.reduce_mean(ml.mean_squared_error(sy, _conv_forward(w, sx)))
    grads = ml.grad(loss, w, create_graph=True)  # double backward through conv and pools
    fast = [p - inner_lr * g for p, g in zip(w, grads)]
    qloss = ml.reduce_mean(ml.mean_squared_error(qy, _conv_forward(fast, qx)))
    return [qloss] + ml.grad(qloss, w)


def test_conv_and_pool_second_order_step_replays_exactly():
    """Convolutions, max pooling (whose backward recomputes the argmax from the replay's own
    input) and average pooling, through a second-order meta-gradient: replays of new
    inputs equal the eager run bit for bit."""
    w = _conv_weights(0)

    def task(seed):
        rng = np.random.default_rng(seed)
        return [
            ml.tensor(rng.standard_normal(s).astype(np.float32))
            for s in ((4, 8, 8, 1), (4, 2), (6, 8, 8, 1), (6, 2))
        ]

    traced = ml.function(lambda *t: _conv_maml_grads(w, *t))
    first = traced(*task(1))
    for seed in (2, 3):
        t = task(seed)
        replayed, eager = traced(*t), _conv_maml_grads(w, *t)
        for r, e in zip(replayed, eager):
            np.testing.assert_array_equal(r.numpy(), e.numpy())
        assert min(np.abs(g.numpy()).max() for g in replayed[1:]) > 1e-4
    assert traced.n_traces == 1
    assert not np.array_equal(first[1].numpy(), replayed[1].numpy())


def test_model_fit_on_a_cnn_traced_equals_eager():
    from metalearn.keras import layers

    model = _fit_traced_and_eager(
        lambda: [
            layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)),
            layers.MaxPooling2D(),
            layers.AveragePooling2D(),
            layers.Flatten(),
            layers.Dense(3, activation="softmax"),
        ],
        (40, 8, 8, 1),
        3,
        epochs=2,
    )
    assert model._train_fn is not None and model._train_fn.n_traces == 2  # 16 and the last 8


def test_gradient_skips_inputs_that_were_not_asked_for():
    # w requires grad (a meta-parameter) but only d/dx is asked for: the matmuls' backward
    # computes dx alone, so the trace records as many ops as with a w that needs no grad
    rng = np.random.default_rng(0)
    w_np = rng.standard_normal((8, 4)).astype(np.float32)
    w, w_const = ml.tensor(w_np, requires_grad=True), ml.tensor(w_np)
    x0 = rng.standard_normal((5, 8)).astype(np.float32)

    def grads_of_x(weight):
        def fn(x):
            x.requires_grad = True
            return ml.grad(ml.reduce_sum(ml.matmul(x, weight) * ml.matmul(x, weight)), [x])

        return fn

    skipping, minimal = ml.function(grads_of_x(w)), ml.function(grads_of_x(w_const))
    gx = skipping(ml.tensor(x0))[0]
    minimal(ml.tensor(x0))
    assert skipping.n_ops()[0] == minimal.n_ops()[0]
    np.testing.assert_allclose(np.asarray(gx), 2.0 * (x0 @ w_np) @ w_np.T, rtol=1e-5, atol=1e-5)
    # asked for both, both come (the mask is per call, not per tensor)
    xt = ml.tensor(x0, requires_grad=True)
    y = ml.matmul(xt, w)
    gx2, gw = ml.grad(ml.reduce_sum(y * y), [xt, w])
    np.testing.assert_allclose(np.asarray(gx2), np.asarray(gx), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gw), 2.0 * x0.T @ (x0 @ w_np), rtol=1e-5, atol=1e-5)


def test_fused_add_relu_and_gradient_sum_replay_the_eager_bits():
    """A traced add read only by a relu, and a gradient sum read only by relu's backward,
    each replay as one pass: the same bits as the eager ops (NaN, -0, inf included), and
    one trace entry fewer each than when the add is a subtraction (never fused) or the
    sum is also returned (read twice)."""
    rng = np.random.default_rng(3)
    bias = rng.standard_normal((1, 16)).astype(np.float32)

    def make(add=True, return_dy=False):
        def fn(x, a1, a2):
            x.requires_grad = True
            z = x + ml.tensor(bias) if add else x - ml.tensor(-bias)  # same values, broadcast
            y = ml.relu(z)
            # dL/dy = a1 + a2 (two contributions summed), then relu's backward
            loss = ml.reduce_sum(y * a1) + ml.reduce_sum(y * a2)
            return [y] + ml.grad(loss, [x, y] if return_dy else [x])

        return fn

    def inputs(seed):
        r = np.random.default_rng(seed)
        x = r.standard_normal((6, 16)).astype(np.float32)
        x[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
        x[1, :2] = -bias[0, :2]  # z == 0 exactly
        a1 = r.standard_normal((6, 16)).astype(np.float32)
        a1[2, :3] = [np.inf, np.nan, -0.0]
        a2 = r.standard_normal((6, 16)).astype(np.float32)
        # NaN + NaN keeps one operand's sign and payload: the fused sum must pick the same
        x[3, :2] = 10.0
        pos, neg = np.array([0x7FC00000, 0xFFC00001], np.uint32).view(np.float32)
        a1[3, :2], a2[3, :2] = [pos, neg], [neg, pos]
        return x, a1, a2

    n_ops = {}
    for key in ((True, False), (False, False), (True, True)):
        f = ml.function(make(*key))
        f(*(ml.tensor(a) for a in inputs(0)))
        n_ops[key] = f.n_ops()[0]
    assert n_ops[True, False] == n_ops[False, False] - 1 == n_ops[True, True] - 1
    fused = ml.function(make())
    fused(*(ml.tensor(a) for a in inputs(0)))
    for seed in (1, 2):
        x, a1, a2 = inputs(seed)
        got = fused(ml.tensor(x), ml.tensor(a1), ml.tensor(a2))
        want = make()(ml.tensor(x), ml.tensor(a1), ml.tensor(a2))  # eager
        for g, w in zip(got, want):
            np.testing.assert_array_equal(
                np.asarray(g).view(np.uint32), np.asarray(w).view(np.uint32)
            )
        # and against NumPy: relu(x + b) = maximum(x + b, 0) (NaN passes), and PyTorch's
        # threshold_backward: 0 where relu's output is <= 0, else a1 + a2 (NaN included)
        z = x + bias
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(np.asarray(got[0]), np.maximum(z, 0.0).astype(np.float32))
            np.testing.assert_array_equal(
                np.asarray(got[1]), np.where(z <= 0, 0.0, a1 + a2).astype(np.float32)
            )


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("wanted", [(0, 1, 2), (1,), (0, 2), (1, 2), (0,)])
def test_batch_norm_gradients_replay_as_one_entry(grouped, wanted):
    """A first-order batch-norm backward is one trace entry with up to three outputs (dx,
    dgamma, dbeta from one pass): whichever of them are asked for, each replays the eager
    run's bits, and the trace holds one entry for them, not one each."""
    rng = np.random.default_rng(7)
    shape, pshape = ((3, 6, 5), (3, 5)) if grouped else ((8, 5), (5,))
    gamma = ml.tensor(rng.uniform(0.5, 1.5, pshape).astype(np.float32), requires_grad=True)
    beta = ml.tensor(rng.standard_normal(pshape).astype(np.float32), requires_grad=True)
    w = ml.tensor(rng.standard_normal(shape).astype(np.float32))

    def loss(x):
        y = (
            ml.batch_norm_grouped(x, gamma, beta)
            if grouped
            else ml.batch_norm(x, gamma, beta, None, None, training=True)
        )
        return ml.reduce_sum(ml.tanh(y) * w)

    def grads(x):
        return ml.grad(loss(x), [[x, gamma, beta][i] for i in wanted])

    def fresh(seed):
        return ml.tensor(
            np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3,
            requires_grad=True,
        )

    traced = ml.function(grads)
    traced(fresh(0))
    for seed in (1, 2):
        x = fresh(seed)
        replayed, eager = traced(x), grads(x)
        assert len(replayed) == len(wanted)
        for r, e in zip(replayed, eager):
            np.testing.assert_array_equal(r.numpy(), e.numpy())
            assert np.abs(r.numpy()).max() > 1e-3
    # dx, dgamma and dbeta come from one entry: asking for all three adds no entries
    traced_x = ml.function(lambda x: ml.grad(loss(x), [x]))
    traced_x(fresh(0))
    traced(fresh(0))
    assert traced.n_ops()[0] == traced_x.n_ops()[0]


def test_describe_lists_a_dense_step_by_op_name_with_shapes_and_fusions():
    """Function.describe(): per traced signature, its entries in replay order, by op name
    with their shapes; an entry fused from several recorded ops names them."""
    rng = np.random.default_rng(11)
    w = [
        ml.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
        for s in ((4, 16), (16,), (16, 3), (3,))
    ]
    opt = _core.SGD(learning_rate=0.1)

    def step(x, y, lr_scale=1.0):
        h = ml.relu(ml.matmul(x, w[0]) + w[1])
        p = ml.matmul(h, w[2]) + w[3]
        loss = ml.reduce_mean(ml.square(p - y))
        opt.step(w, ml.grad(loss, w))
        return loss

    f = ml.function(step)
    assert f.describe() == ""
    x = ml.tensor(rng.standard_normal((8, 4)).astype(np.float32))
    y = ml.tensor(rng.standard_normal((8, 3)).astype(np.float32))
    f(x, y)
    lines = f.describe().splitlines()
    n = f.n_ops()[0]
    assert lines[:3] == [
        "signature 1 of 1: tensor(8, 4), tensor(8, 3)",
        f"trace: 2 inputs, 1 output, {n} entries",
        "inputs: x0 (8, 4), x1 (8, 3)",
    ]
    entries, last = lines[3:-1], lines[-1]
    assert len(entries) == n and re.fullmatch(r"outputs: t\d+ \(\)", last)
    assert [int(e.split()[0]) for e in entries] == list(range(n))
    ops = [re.search(r"(\w+)\(", e).group(1) for e in entries]
    # the forward as the step runs it: each product with the bias add (and relu) that
    # reads it as one entry, then p - y, its square and their mean
    assert ops[:5] == ["matmul_into", "matmul_into", "sub", "square", "mean"]
    assert re.fullmatch(
        r" +0  t\d+ \(8, 16\) = matmul_into\(x0 \(8, 4\), c\d+ \(4, 16\), "
        r"c\d+ \(16,\)\)  \[fused: matmul \+ add \+ relu\]",
        entries[0],
    )
    assert re.fullmatch(
        r" +1  t\d+ \(8, 3\) = matmul_into\(t\d+ \(8, 16\), c\d+ \(16, 3\), "
        r"c\d+ \(3,\)\)  \[fused: matmul \+ add\]",
        entries[1],
    )
    assert re.fullmatch(r" +4  t\d+ \(\) = mean\(t\d+ \(8, 3\)\)", entries[4])
    # relu's backward reads dL/dh = dL/dp w2^T only: one pass with the product
    assert sum("[fused: matmul + relu_grad]" in e for e in entries) == 1
    # the step writes the four weights in place (no output), last
    assert ops[-1] == "optimizer_step" and " = " not in entries[-1]
    assert re.search(
        r"optimizer_step\(c\d+ \(4, 16\), c\d+ \(16,\), c\d+ \(16, 3\), "
        r"c\d+ \(3,\), t\d+ \(4, 16\), t\d+ \(16,\), t\d+ \(16, 3\), "
        r"t\d+ \(3,\)\)$",
        entries[-1],
    )
    # a second signature, by a keyword argument: a block of its own
    f(x, y, lr_scale=2.0)
    blocks = f.describe().split("\n\n")
    assert len(blocks) == 2 and blocks[1].startswith(
        "signature 2 of 2: tensor(8, 4), tensor(8, 3), lr_scale=2.0\ntrace: 2 inputs"
    )
