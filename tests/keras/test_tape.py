"""GradientTape, Variable and functional_call against closed-form derivatives."""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import layers
from metalearn.networks import AdaptiveNeuralNetwork


def test_variable_is_a_trainable_leaf_tensor():
    v = ml.Variable([[1.0, 2.0], [3.0, 4.0]], name="w")
    assert isinstance(v, ml.Tensor)
    assert v.name == "w" and v.trainable and v.requires_grad and v.is_leaf
    assert v.shape == (2, 2)
    np.testing.assert_array_equal(v.numpy(), [[1, 2], [3, 4]])
    out = v @ np.eye(2, dtype=np.float32) * 2.0 + 1.0
    np.testing.assert_allclose(np.asarray(out), [[3, 5], [7, 9]])
    frozen = ml.Variable(np.ones(3), trainable=False)
    assert not frozen.requires_grad and not frozen.trainable
    frozen.trainable = True
    assert frozen.requires_grad


def test_variable_assign_in_place_records_nothing():
    v = ml.Variable(np.zeros((2, 3), np.float32))
    view = v.numpy()
    v.assign(np.arange(6, dtype=np.float32).reshape(2, 3))
    v.assign_add(1.0)
    v.assign_sub(np.full((2, 3), 0.5, np.float32))
    expected = np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5
    np.testing.assert_array_equal(view, expected)  # same memory, changed in place
    assert v.is_leaf and v.op == ""
    with pytest.raises(ValueError):
        v.assign(np.zeros((4, 4)))
    np.testing.assert_array_equal(v.numpy(), expected)


def test_gradient_of_cubic_and_structures():
    x = ml.Variable(2.0)
    y = ml.Variable(5.0)
    with ml.GradientTape(persistent=True) as tape:
        f = x * x * x + 3.0 * x
    assert float(tape.gradient(f, x).item()) == pytest.approx(3 * 4 + 3)
    grads = tape.gradient(f, [x, y])
    assert isinstance(grads, list) and grads[1] is None
    assert float(grads[0].item()) == pytest.approx(15.0)
    d = tape.gradient(f, {"a": x, "b": (y, x)})
    assert set(d) == {"a", "b"} and isinstance(d["b"], tuple)
    assert d["b"][0] is None and float(d["b"][1].item()) == pytest.approx(15.0)
    z = tape.gradient(f, [y], unconnected_gradients="zero")[0]
    assert float(z.item()) == 0.0


def test_non_persistent_tape_refuses_second_gradient():
    x = ml.Variable(1.5)
    with ml.GradientTape() as tape:
        f = x * x
    tape.gradient(f, x)
    with pytest.raises(RuntimeError):
        tape.gradient(f, x)


def test_watch_plain_tensor_and_refuse_unrecorded_nonleaf():
    t = ml.tensor(np.array([1.0, -2.0, 3.0], np.float32))
    assert not t.requires_grad
    with ml.GradientTape() as tape:
        tape.watch(t)
        f = ml.reduce_sum(t * t)
    np.testing.assert_allclose(np.asarray(tape.gradient(f, t)), [2.0, -4.0, 6.0])
    with ml.no_grad():
        s = ml.Variable([1.0, 2.0]) * 2.0
    if not s.is_leaf:  # a non-leaf computed without recording cannot be watched
        with pytest.raises(ValueError):
            with ml.GradientTape() as tape:
                tape.watch(s)


def test_non_scalar_target_and_output_gradients():
    x = ml.Variable([1.0, 2.0, 3.0])
    with ml.GradientTape(persistent=True) as tape:
        y = x * x
    np.testing.assert_allclose(np.asarray(tape.gradient(y, x)), [2, 4, 6])
    w = ml.tensor(np.array([1.0, 0.0, -1.0], np.float32))
    np.testing.assert_allclose(np.asarray(tape.gradient(y, x, output_gradients=w)), [2, 0, -6])


def test_watch_accessed_variables_false():
    a, b = ml.Variable(2.0), ml.Variable(3.0)
    with ml.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(a)
        f = a * b
    ga, gb = tape.gradient(f, [a, b])
    assert float(ga.item()) == pytest.approx(3.0) and gb is None


def test_nested_tapes_give_second_derivative():
    x = ml.Variable(1.7)
    with ml.GradientTape() as outer:
        with ml.GradientTape() as inner:
            f = x * x * x * x  # x^4
        df = inner.gradient(f, x)  # 4x^3, recorded on the outer tape
    d2f = outer.gradient(df, x)  # 12x^2
    assert float(df.item()) == pytest.approx(4 * 1.7**3, rel=1e-5)
    assert float(d2f.item()) == pytest.approx(12 * 1.7**2, rel=1e-5)


def test_nested_tapes_through_a_dense_layer_match_finite_differences():
    ml.random.set_seed(3)
    dense = layers.Dense(4, activation="tanh")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    dense(x)
    k = dense.kernel

    def grad_norm_sq(kernel_value):
        # ||d sum(dense(x)^2) / d kernel||^2 computed analytically in NumPy (float64)
        kk = kernel_value.astype(np.float64)
        b = dense.bias.numpy().astype(np.float64)
        z = x.astype(np.float64) @ kk + b
        h = np.tanh(z)
        g = x.T.astype(np.float64) @ (2 * h * (1 - h * h))
        return float(np.sum(g * g))

    with ml.GradientTape() as outer:
        with ml.GradientTape() as inner:
            out = ml.reduce_sum(dense(x) * dense(x))
        g = inner.gradient(out, k)
        penalty = ml.reduce_sum(g * g)
    hess_vec = np.asarray(outer.gradient(penalty, k), np.float64)
    assert float(penalty.item()) == pytest.approx(grad_norm_sq(k.numpy()), rel=1e-4)
    base = k.numpy().astype(np.float64)
    eps = 1e-3
    for idx in [(0, 0), (1, 2), (2, 3)]:
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (grad_norm_sq(plus) - grad_norm_sq(minus)) / (2 * eps)
        assert hess_vec[idx] == pytest.approx(fd, rel=2e-3, abs=1e-3)


def test_functional_call_uses_given_weights_and_leaves_model_unchanged():
    ml.random.set_seed(0)
    model = AdaptiveNeuralNetwork(num_classes=5, hidden_units=8)
    x = np.random.default_rng(1).normal(size=(4, 6, 6)).astype(np.float32)
    model(x)
    own = model.get_weights()
    rng = np.random.default_rng(2)
    other = [rng.normal(size=w.shape).astype(np.float32) for w in own]
    out = ml.functional_call(model, [ml.tensor(w) for w in other], x)
    h = np.maximum(x.reshape(4, -1) @ other[0] + other[1], 0)
    z = h @ other[2] + other[3]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), p, rtol=1e-5, atol=1e-6)
    for a, b in zip(own, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the keyword form and the dict-by-name form give the same
    out2 = model(x, weights=[ml.tensor(w) for w in other])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    by_name = {v.name: ml.tensor(w) for v, w in zip(model.trainable_variables, other)}
    np.testing.assert_array_equal(
        np.asarray(ml.functional_call(model, by_name, x)), np.asarray(out)
    )
    # the model's own output is untouched afterwards
    h0 = np.maximum(x.reshape(4, -1) @ own[0] + own[1], 0) @ own[2] + own[3]
    p0 = np.exp(h0 - h0.max(1, keepdims=True))
    np.testing.assert_allclose(
        np.asarray(model(x)), p0 / p0.sum(1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError):
        ml.functional_call(model, other[:2], x)


def test_functional_call_second_order_maml_step():
    """Meta-gradient through one inner SGD step equals central differences."""
    ml.random.set_seed(5)
    model = ml.keras.Sequential(
        [layers.Dense(3, activation="tanh", input_shape=(2,)), layers.Dense(1)]
    )
    rng = np.random.default_rng(7)
    xs, ys = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 1)).astype(np.float32)
    xq, yq = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 1)).astype(np.float32)
    params = model.trainable_variables
    inner_lr = 0.3

    def meta_loss(weights, create_graph):
        support = ml.reduce_mean(
            ml.keras.losses.mean_squared_error(ys, ml.functional_call(model, weights, xs))
        )
        grads = ml.grad(support, weights, create_graph=create_graph)
        fast = [w - inner_lr * g for w, g in zip(weights, grads)]
        return ml.reduce_mean(
            ml.keras.losses.mean_squared_error(yq, ml.functional_call(model, fast, xq))
        )

    loss = meta_loss(list(params), True)
    meta_grads = ml.grad(loss, params)
    base = [p.numpy().astype(np.float64) for p in params]
    eps = 1e-2
    for i in range(len(params)):
        for idx in list(np.ndindex(base[i].shape))[:2]:
            vals = []
            for sign in (1, -1):
                ws = [ml.tensor(b.astype(np.float32), requires_grad=True) for b in base]
                arr = base[i].copy()
                arr[idx] += sign * eps
                ws[i] = ml.tensor(arr.astype(np.float32), requires_grad=True)
                vals.append(float(meta_loss(ws, False).item()))
            fd = (vals[0] - vals[1]) / (2 * eps)
            assert float(np.asarray(meta_grads[i])[idx]) == pytest.approx(fd, rel=2e-2, abs=2e-4)
