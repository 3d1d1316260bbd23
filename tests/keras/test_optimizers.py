"""Optimizers against NumPy implementations of the Keras update rules."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import losses, optimizers
from metalearn.networks import AdaptiveNeuralNetwork


def _numpy_forward_backward(w, x, y):
    """Loss and gradients of mean categorical cross-entropy of the AdaptiveNeuralNetwork,
    float64 NumPy backprop: h = relu(x W1 + b1), p = softmax(h W2 + b2)."""
    W1, b1, W2, b2 = w
    xf = x.reshape(len(x), -1)
    z1 = xf @ W1 + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2 + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(x)
    loss = np.mean(-np.sum(y * np.log(np.clip(p, 1e-7, 1 - 1e-7)), axis=1))
    dz2 = (p - y) / n  # softmax + cross-entropy, one-hot targets
    gW2, gb2 = h.T @ dz2, dz2.sum(0)
    dz1 = (dz2 @ W2.T) * (z1 > 0)
    gW1, gb1 = xf.T @ dz1, dz1.sum(0)
    return loss, [gW1, gb1, gW2, gb2]


def test_adam_20_steps_on_adaptive_network_match_numpy_keras_adam():
    ml.random.set_seed(2024)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 28, 28)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    model = AdaptiveNeuralNetwork()
    model(x)
    params = model.trainable_variables
    opt = optimizers.Adam()  # Keras defaults: 1e-3, 0.9, 0.999, 1e-7
    w = [p.numpy().astype(np.float64) for p in params]
    m = [np.zeros_like(a) for a in w]
    v = [np.zeros_like(a) for a in w]
    lr, b1, b2, eps = 0.001, 0.9, 0.999, 1e-7
    for t in range(1, 21):
        with ml.GradientTape() as tape:
            loss = ml.reduce_mean(losses.categorical_crossentropy(y, model(x)))
        grads = tape.gradient(loss, params)
        opt.apply_gradients(zip(grads, params))
        ref_loss, g = _numpy_forward_backward(w, x, y)
        assert float(loss.item()) == pytest.approx(ref_loss, rel=1e-4, abs=1e-6)
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        for i in range(4):
            m[i] += (1 - b1) * (g[i] - m[i])
            v[i] += (1 - b2) * (g[i] * g[i] - v[i])
            w[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)
        for p, ref in zip(params, w):
            got = p.numpy().astype(np.float64)
            # float32 gradients vs float64 ones: Adam divides by sqrt(v), so an element whose
            # gradient is nearly zero may move by a slightly different fraction of a step.
            # Each tensor within 1e-5 relative (norm), each element within 1% of a step (lr).
            assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0.01 * lr)
        assert opt.iterations == t
    # it learned: the loss went down
    final = float(ml.reduce_mean(losses.categorical_crossentropy(y, model(x))).item())
    assert final < ref_loss


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_trajectory_matches_numpy(nesterov):
    a = np.array([1.0, 3.0, 0.5, 2.0], np.float32)
    w0 = np.array([1.0, -2.0, 3.0, 0.25], np.float32)
    var = ml.Variable(w0)
    opt = optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    w, vel = w0.astype(np.float64), np.zeros(4)
    for _ in range(15):
        with ml.GradientTape() as tape:
            loss = ml.reduce_sum(0.5 * a * var * var)  # gradient a * w
        opt.apply_gradients([(tape.gradient(loss, var), var)])
        g = a * w
        vel = 0.9 * vel - 0.05 * g
        w = w + (0.9 * vel - 0.05 * g if nesterov else vel)
        np.testing.assert_allclose(var.numpy(), w, rtol=1e-5, atol=1e-6)


def test_plain_sgd_learning_rate_is_settable():
    var = ml.Variable([1.0, 2.0])
    opt = optimizers.get("sgd")
    assert isinstance(opt, optimizers.SGD) and opt.learning_rate == pytest.approx(0.01)
    opt.apply_gradients([(np.array([1.0, 1.0], np.float32), var)])
    np.testing.assert_allclose(var.numpy(), [0.99, 1.99], rtol=1e-6)
    opt.learning_rate = 0.5
    opt.apply_gradients([(np.array([1.0, -1.0], np.float32), var)])
    np.testing.assert_allclose(var.numpy(), [0.49, 2.49], rtol=1e-6)
    assert opt.iterations == 2 and opt.iterations.numpy() == 2


def test_get_and_defaults():
    adam = optimizers.get("adam")
    assert isinstance(adam, optimizers.Adam)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == pytest.approx(
        (0.001, 0.9, 0.999, 1e-7)
    )
    assert optimizers.get(adam) is adam
    with pytest.raises(ValueError):
        optimizers.get("rmsprop_typo")


def test_apply_gradients_skips_none_with_warning_and_refuses_bad_shapes():
    a, b = ml.Variable([1.0, 1.0]), ml.Variable([5.0])
    opt = optimizers.SGD(learning_rate=0.1)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply_gradients([(np.array([1.0, 2.0], np.float32), a), (None, b)])
    np.testing.assert_allclose(a.numpy(), [0.9, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(b.numpy(), [5.0])
    before = a.numpy().copy()
    with pytest.raises(ValueError):
        opt.apply_gradients([(np.ones(3, np.float32), a)])
    np.testing.assert_array_equal(a.numpy(), before)
    assert opt.iterations == 1


def test_adam_state_accumulates_across_steps():
    """A persistent Adam's second step differs from a fresh Adam's first step."""
    g1, g2 = np.array([1.0], np.float32), np.array([0.1], np.float32)
    v1, v2 = ml.Variable([0.0]), ml.Variable([0.0])
    keep = optimizers.Adam(learning_rate=0.1)
    keep.apply_gradients([(g1, v1)])
    keep.apply_gradients([(g2, v1)])
    # reference: t=2 with both gradients
    m = 0.1 * 1.0
    v = 0.001 * 1.0
    m += 0.1 * (0.1 - m)
    v += 0.001 * (0.01 - v)
    lr_t = 0.1 * np.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    expected = -0.1 - lr_t * m / (np.sqrt(v) + 1e-7)
    assert float(v1.numpy()[0]) == pytest.approx(expected, rel=1e-5)
    for g in (g1, g2):
        optimizers.Adam(learning_rate=0.1).apply_gradients([(g, v2)])  # new Adam each time
    assert float(v2.numpy()[0]) == pytest.approx(-0.2, rel=1e-4)  # two sign steps of lr


def test_minimize_with_callable_loss():
    var = ml.Variable([3.0])
    opt = optimizers.SGD(learning_rate=0.25)
    for _ in range(30):
        opt.minimize(lambda: ml.reduce_sum((var - 1.0) * (var - 1.0)), [var])
    assert float(var.numpy()[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "amsgrad, clip", [(False, None), (True, None), (False, {"global_clipnorm": 50.0})]
)
def test_adam_over_two_threads_equals_one_thread_bit_for_bit(amsgrad, clip):
    """Above ~65k parameters the Adam update is split over the thread pool (element-wise
    chunks across parameter boundaries): the result must not depend on the thread count."""
    rng = np.random.default_rng(0)
    shapes = [(301, 257), (257,), (257, 11), (11,)]  # 77,357 + 257 + 2,827 + 11 floats
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    prev = ml.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            ml.set_num_threads(threads)
            params = [ml.Variable(a.copy()) for a in init]
            opt = optimizers.Adam(learning_rate=0.01, amsgrad=amsgrad, **(clip or {}))
            for g in grads:
                opt.apply_gradients(zip([ml.tensor(x) for x in g], params))
            results.append([np.asarray(p).copy() for p in params])
    finally:
        ml.set_num_threads(prev)
    for a, b, x0 in zip(results[0], results[1], init):
        assert not np.array_equal(a, x0)  # the update happened
        np.testing.assert_array_equal(a, b)


def test_adam_flushes_denormal_state_and_leaves_the_callers_fp_mode_alone():
    """A unit whose gradient stops (a dead ReLU) decays its m by beta_1 a step into the
    denormal range; Adam flushes it to 0 (as TensorFlow's CPU kernels do: the divider is
    ~2x slower on denormals), which must not leak into the caller's floating-point mode.
    Reference: Keras's Adam update in float64 with m below FLT_MIN set to 0."""
    tiny = np.finfo(np.float32).tiny
    var = ml.Variable([0.25, -0.5])
    opt = optimizers.Adam(learning_rate=1e-3)
    m, v, p = np.zeros(2), np.zeros(2), np.array([0.25, -0.5])
    for t in range(1, 851):
        g = np.array([1.0, -2.0]) if t == 1 else np.zeros(2)
        opt.apply_gradients([(np.asarray(g, np.float32), var)])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m[np.abs(m) < tiny] = 0.0
        lr_t = 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = p - lr_t * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(np.asarray(var), p, rtol=1e-5, atol=0)
    m_state, v_state = (np.asarray(s) for s in opt.variables())
    # gradual underflow would have left 0.1 * 0.9 ** 849 = 1.3e-40 (and twice that) in m.
    # Flushed, m is 0 when m - 0.1 m is one fused multiply-add (the AVX2 loop), or stays
    # at ~1e-37 when 0.1 m is rounded on its own first and flushes to 0 (the scalar loop
    # without FMA): never a denormal either way
    assert 0.1 * 0.9**849 > np.finfo(np.float32).smallest_subnormal
    assert np.all((m_state == 0) | (np.abs(m_state) >= tiny)), m_state
    assert np.abs(m_state).max() < 1e-36
    np.testing.assert_allclose(v_state, v, rtol=1e-4)  # v decays slower: still normal
    # the caller's mode is IEEE again: numpy still underflows gradually
    assert np.float32(1e-39) * np.float32(0.5) > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(clipnorm=1.0, clipvalue=1.0),
        dict(clipvalue=0.5, global_clipnorm=2.0),
        dict(clipnorm=1.0, global_clipnorm=1.0),
    ],
)
@pytest.mark.parametrize("cls", [optimizers.SGD, optimizers.Adam])
def test_only_one_clipping_argument_is_accepted(cls, kwargs):
    """Keras 3 (BaseOptimizer.__init__), word for word."""
    expected = (
        "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
        f"clipnorm={kwargs.get('clipnorm')}, clipvalue={kwargs.get('clipvalue')}, "
        f"global_clipnorm={kwargs.get('global_clipnorm')}"
    )
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert str(info.value) == expected
    with pytest.raises(ValueError, match="clipvalue"):
        cls(clipvalue=-1.0)


def test_apply_gradients_with_no_gradient_at_all_is_refused():
    """Keras 3: "No gradients provided for any variable." (a ValueError), and no step is
    counted; before, it warned and returned."""
    a, b = ml.Variable([1.0, 2.0]), ml.Variable([3.0])
    opt = optimizers.Adam(learning_rate=0.1)
    opt.apply_gradients([(np.ones(2, np.float32), a)])
    before = (a.numpy().copy(), [np.asarray(v).copy() for v in opt.variables()])
    with pytest.raises(ValueError, match=r"^No gradients provided for any variable\.$"):
        opt.apply_gradients([(None, a), (None, b)])
    assert opt.iterations == 1
    np.testing.assert_array_equal(a.numpy(), before[0])
    for u, v in zip(opt.variables(), before[1]):
        np.testing.assert_array_equal(np.asarray(u), v)


def test_get_none_is_none_and_other_objects_are_refused_as_keras():
    """Keras 3's optimizers.get: None -> None; something else -> ValueError "Could not
    interpret optimizer identifier"."""
    assert optimizers.get(None) is None
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier"):
        optimizers.get(3.0)
    # a model compiled without an optimizer says so when asked to train
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=None, loss="mse")
    with pytest.raises(ValueError, match="without an optimizer"):
        model.fit(np.ones((2, 2), np.float32), np.ones((2, 1), np.float32), verbose=0)


def test_optimizer_names_are_unique_as_keras_names_them():
    """Keras 3 (naming.auto_name): the class name in snake case, made unique by the counter
    the layers share: 'sgd', 'sgd_1', ...; 'SGD' was every SGD's name before, 'adam' every
    Adam's. An explicit name is kept, also through serialize/deserialize."""
    from metalearn.keras import backend

    backend.clear_session()
    names = [
        optimizers.Adam().name,
        optimizers.Adam().name,
        optimizers.SGD().name,
        optimizers.SGD().name,
        optimizers.get("sgd").name,
    ]
    assert names == ["adam", "adam_1", "sgd", "sgd_1", "sgd_2"]
    with pytest.raises(ValueError):
        optimizers.SGD(learning_rate=-1.0)  # a refused optimizer takes no name
    assert optimizers.SGD().name == "sgd_3"
    opt = optimizers.SGD(name="mine")
    assert optimizers.deserialize(optimizers.serialize(opt)).name == "mine"
    backend.clear_session()
    assert optimizers.SGD().name == "sgd"


def test_traced_update_is_the_core_step_and_asking_changes_nothing():
    """Optimizer._traced_update: the update as one C optimizer step, for a training step
    recorded by metalearn.function (fit, MAML), clipping included (it runs in the C step);
    None while the rate is computed in Python (a callable or a custom schedule). Asking
    creates no state; calling it steps as apply_gradients does, and the count moves by
    _count_step (a replay's update runs in C, the count in Python)."""
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    g = np.array([[0.3, -0.1], [2.0, 0.7]], np.float32)
    v = ml.Variable(w0.copy())
    assert optimizers.SGD(0.1, clipnorm=1.0)._traced_update() is not None
    assert optimizers.SGD(lambda: 0.1)._traced_update() is None
    opt = optimizers.Adam(0.1)
    update = opt._traced_update()
    assert update is not None and opt.variables() == [] and int(opt.iterations) == 0
    twin, u = optimizers.Adam(0.1), ml.Variable(w0.copy())
    for _ in range(2):
        update([v], [ml.tensor(g)])
        opt._count_step()
        twin.apply_gradients([(ml.tensor(g), u)])
    np.testing.assert_array_equal(np.asarray(v), np.asarray(u))
    assert int(opt.iterations) == int(twin.iterations) == 2


# ------------------------------------------------------------ issue 22's additions
def _bits(tensors):
    return [np.asarray(t).copy() for t in tensors]


@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.Adagrad(0.1, clipnorm=0.5, weight_decay=0.01),
        lambda: optimizers.Nadam(0.05, use_ema=True, ema_overwrite_frequency=2),
        lambda: optimizers.SGD(0.1, clipvalue=0.1, use_ema=True),
    ],
    ids=["Adagrad", "Nadam_ema", "SGD_clip_ema"],
)
def test_a_refused_step_changes_nothing(make):
    """A step with a misshapen gradient is refused before any write: variables, slots (the
    EMA's included), the step count and the scheduled rate are unchanged."""
    v = [
        ml.Variable(np.arange(6, dtype=np.float32).reshape(2, 3)),
        ml.Variable(np.ones(3, np.float32)),
    ]
    opt = make()
    g = [ml.tensor(np.full((2, 3), 0.3, np.float32)), ml.tensor(np.full(3, -2.0, np.float32))]
    opt.apply_gradients(zip(g, v))
    before = (_bits(v), _bits(opt.variables()), int(opt.iterations), opt.learning_rate)
    with pytest.raises(ValueError):
        opt.apply_gradients(zip([g[0], ml.tensor(np.ones(4, np.float32))], v))
    with pytest.raises(ValueError):
        opt._core_for(v).step(v, [g[0]])  # a gradient missing, straight to C
    after = (_bits(v), _bits(opt.variables()), int(opt.iterations), opt.learning_rate)
    for x, y in zip(before[0] + before[1], after[0] + after[1]):
        np.testing.assert_array_equal(x, y)
    assert before[2:] == after[2:]


def test_bad_optimizer_arguments_are_clear_and_change_nothing():
    opt = optimizers.Adam(0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = float("inf")
    assert opt.learning_rate == pytest.approx(0.1)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimizers.get("adagradd")
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        optimizers.Adagrad(initial_accumulator_value=-0.1)
    with pytest.raises(ValueError, match="Only one of"):
        optimizers.Nadam(clipnorm=1.0, global_clipnorm=1.0)
    sgd = optimizers.SGD(clipnorm=1.0)
    with pytest.raises(ValueError, match="Only one of"):
        sgd.clipvalue = 0.5
    assert sgd.clipvalue is None and sgd.clipnorm == 1.0
    with pytest.raises(ValueError, match="clipnorm"):
        sgd.clipnorm = -1.0
    assert sgd.clipnorm == 1.0


def test_the_c_optimizer_refuses_bad_settings():
    """The C layer checks what it is given (the binding's own users: MAML's meta-step)."""
    core = ml._core.Nadam()
    with pytest.raises(ValueError, match="clip"):
        core.clip = ("clipsomething", 1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        core.clip = ("clipnorm", float("nan"))
    with pytest.raises(ValueError, match="decay_steps"):
        core.learning_rate_schedule = ("ExponentialDecay", [0.1, 0.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="schedule"):
        core.learning_rate_schedule = ("ExponentialDecay", [0.1, 2.0])
    with pytest.raises(ValueError, match="increase"):
        core.learning_rate_schedule = ("PiecewiseConstantDecay", [3.0, 1.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="power must be >= 0"):
        core.learning_rate_schedule = ("PolynomialDecay", [0.1, 10.0, 0.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="schedule"):
        core.learning_rate_schedule = ("PolynomialDecay", [0.1, 10.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        core.learning_rate_schedule = ("LinearDecay", [0.1])
    with pytest.raises(ValueError, match="ema_momentum"):
        core.set_use_ema(True, 1.5)
    assert core.clip is None and core.learning_rate_schedule is None and not core.use_ema
    v = ml.Variable(np.ones(2, np.float32))
    core.step([v], [np.ones(2, np.float32)])
    with pytest.raises(ValueError, match="before the first step"):
        core.set_use_ema(True)
    with pytest.raises(ValueError, match="exclude_from_weight_decay"):
        core.exclude_from_weight_decay = [True, False]  # built for one parameter


def test_exclude_from_weight_decay_by_name_in_a_model():
    """var_names=["bias"] (Keras' example): the Dense biases keep their values under
    weight decay with zero gradients; the kernels decay."""
    model = keras.Sequential(
        [keras.layers.Input((3,)), keras.layers.Dense(2, bias_initializer="ones")]
    )
    opt = optimizers.AdamW(learning_rate=0.5, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    w = model.trainable_weights
    k0, b0 = np.asarray(w[0]).copy(), np.asarray(w[1]).copy()
    opt.apply_gradients([(ml.tensor(np.zeros(t.shape, np.float32)), t) for t in w])
    np.testing.assert_array_equal(np.asarray(w[1]), b0)
    np.testing.assert_allclose(np.asarray(w[0]), k0 * (1 - 0.1 * 0.5), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.Nadam(
            optimizers.schedules.CosineDecay(0.01, 6, warmup_target=0.02, warmup_steps=2),
            use_ema=True,
            ema_overwrite_frequency=4,
        ),
        lambda: optimizers.Adagrad(
            optimizers.schedules.ExponentialDecay(0.05, 2, 0.5), global_clipnorm=0.3
        ),
    ],
    ids=["Nadam_cosine_ema", "Adagrad_exponential_clip"],
)
def test_checkpoint_resume_gives_the_uninterrupted_bits(tmp_path, make):
    """issue 14's checkpoint with the new optimizers: fit 4 meta-iterations with
    checkpoints, then a fresh learner resumes to 8; the same bits as 8 at once (Adagrad's
    accumulator and Nadam's moments and EMA average are slots; Nadam's u-product and the
    schedule's rate follow from the restored step count)."""
    from metalearn.meta import MAML
    from metalearn.tasks import Sinusoid

    def learner(seed):
        ml.random.set_seed(seed)
        model = keras.Sequential(
            [
                keras.layers.Input((1,)),
                keras.layers.Dense(8, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        return MAML(model, inner_lr=0.01, meta_optimizer=make())

    ref = learner(3)
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=8, meta_batch_size=2, verbose=0)
    first = learner(3)
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=4, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path)
    again = learner(9)  # other initial weights: restored
    ml.random.set_seed(77)
    again.fit(
        Sinusoid(seed=99), iterations=8, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path
    )
    assert again.history["loss"] == ref.history["loss"]
    for a, b in zip(again.model.weights, ref.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(again.meta_optimizer.variables(), ref.meta_optimizer.variables()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(again.meta_optimizer.iterations) == 8
