"""Optimizers against the expected values of Keras 3's tests.

Sources: ``keras/src/optimizers/sgd_test.py``, ``adam_test.py`` and ``optimizer_test.py``;
the multi-step momentum / Nesterov / Adam checks use the update rules of
``keras/src/optimizers/sgd.py`` and ``adam.py`` (``update_step``), written out in NumPy
(float64) here. Inputs and numbers are Keras'; the test code is ours.
"""

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import optimizers

from ._helpers import all_close, assert_config_round_trip


def variable(values):
    return ml.Variable(np.asarray(values, dtype=np.float32))


def step(opt, grads, var):
    opt.apply_gradients([(ml.tensor(np.asarray(grads, np.float32)), var)])


# -------------------------------------------------------------------------- SGD
class TestSGD:
    def test_config(self):
        # sgd_test.py::SGDTest::test_config (with weight_decay: test_weight_decay_config)
        assert_config_round_trip(
            optimizers.SGD(learning_rate=0.5, momentum=0.06, nesterov=True),
            optimizers.serialize,
            optimizers.deserialize,
        )

    def test_single_step(self):
        # sgd_test.py::SGDTest::test_single_step
        v = variable([1.0, 2.0, 3.0, 4.0])
        step(optimizers.SGD(learning_rate=0.5), [1.0, 6.0, 7.0, 2.0], v)
        all_close(v.numpy(), [0.5, -1.0, -0.5, 3.0], rtol=1e-4, atol=1e-4)

    def test_invalid_momentum(self):
        # sgd_test.py::SGDTest::test_invalid_momentum
        for momentum in (-1.0, 2.0):
            with pytest.raises(ValueError, match="momentum"):
                optimizers.SGD(momentum=momentum)

    def test_correctness_with_golden(self):
        # sgd_test.py::SGDTest::test_correctness_with_golden (nesterov=True with Keras'
        # default momentum 0.0)
        golden = np.array(
            [
                [0.9999] * 10,
                [0.9989, 0.9979, 0.9969, 0.9959, 0.9949, 0.9939, 0.9929, 0.9919, 0.9909, 0.9899],
                [0.9979, 0.9959, 0.9939, 0.9919, 0.9899, 0.9879, 0.9859, 0.9839, 0.9819, 0.9799],
                [0.9969, 0.9939, 0.9909, 0.9879, 0.9849, 0.9819, 0.9789, 0.9759, 0.9729, 0.9699],
                [0.9959, 0.9919, 0.9879, 0.9839, 0.9799, 0.9759, 0.9719, 0.9679, 0.9639, 0.9599],
            ]
        )
        opt = optimizers.SGD(nesterov=True)
        x = variable(np.ones(10))
        step(opt, np.full(10, 0.01), x)
        for i in range(5):
            all_close(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
            step(opt, np.arange(0.1, 1.1, 0.1)[:10], x)

    @pytest.mark.parametrize("nesterov", [False, True])
    def test_momentum_update_rule(self, nesterov):
        # sgd.py::SGD.update_step: m = momentum * m - lr * g; w += m (plain) or
        # w += momentum * m - lr * g (Nesterov); five steps of changing gradients
        rng = np.random.default_rng(0)
        w0 = rng.standard_normal(6)
        grads = rng.standard_normal((5, 6))
        lr, momentum = 0.1, 0.9
        w, m = w0.copy(), np.zeros(6)
        opt = optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov)
        v = variable(w0)
        for g in grads:
            m = momentum * m - lr * g
            w = w + (momentum * m - lr * g if nesterov else m)
            step(opt, g, v)
            all_close(v.numpy(), w, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- Adam
class TestAdam:
    def test_config(self):
        # adam_test.py::AdamTest::test_config
        assert_config_round_trip(
            optimizers.Adam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True),
            optimizers.serialize,
            optimizers.deserialize,
        )

    def test_single_step(self):
        # adam_test.py::AdamTest::test_single_step
        v = variable([1.0, 2.0, 3.0, 4.0])
        step(optimizers.Adam(learning_rate=0.5), [1.0, 6.0, 7.0, 2.0], v)
        all_close(v.numpy(), [0.5, 1.5, 2.5, 3.5], rtol=1e-4, atol=1e-4)

    def test_correctness_with_golden(self):
        # adam_test.py::AdamTest::test_correctness_with_golden (amsgrad=True)
        golden = np.tile([[0.999], [0.9982], [0.9974], [0.9965], [0.9955]], (1, 10))
        opt = optimizers.Adam(amsgrad=True)
        x = variable(np.ones(10))
        step(opt, np.full(10, 0.01), x)
        for i in range(5):
            all_close(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
            step(opt, np.arange(0.1, 1.1, 0.1)[:10], x)

    @pytest.mark.parametrize("amsgrad", [False, True])
    @pytest.mark.parametrize("beta_2", [0.999, 0.5])
    def test_update_rule(self, amsgrad, beta_2):
        # adam.py::Adam.update_step: t = iterations + 1,
        # alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), m += (g - m)(1 - beta_1),
        # v += (g^2 - v)(1 - beta_2), (AMSGrad: v = max(v_hat, v)),
        # w -= alpha * m / (sqrt(v) + epsilon); six steps, gradients changing scale (with
        # beta_2 = 0.5, v follows the latest gradients and AMSGrad's max differs widely)
        rng = np.random.default_rng(1)
        w0 = rng.standard_normal(5)
        grads = rng.standard_normal((6, 5)) * np.array([1, 3, 0.1, 2, 0.5, 4])[:, None]
        lr, b1, b2, eps = 0.01, 0.9, beta_2, 1e-7
        w, m, v, v_hat = w0.copy(), np.zeros(5), np.zeros(5), np.zeros(5)
        opt = optimizers.Adam(learning_rate=lr, beta_2=b2, amsgrad=amsgrad)
        var = variable(w0)
        for t, g in enumerate(grads, start=1):
            alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            m += (g - m) * (1 - b1)
            v += (g * g - v) * (1 - b2)
            v_hat = np.maximum(v_hat, v)
            w -= alpha * m / (np.sqrt(v_hat if amsgrad else v) + eps)
            step(opt, g, var)
            all_close(var.numpy(), w, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the base class
class TestOptimizerBase:
    def test_iterations_counter(self):
        # optimizer_test.py::OptimizerTest::test_iterations_counter
        v = variable([[1.0, 2.0], [3.0, 4.0]])
        opt = optimizers.Adam(learning_rate=1.0)
        assert int(opt.iterations) == 0
        step(opt, [[1.0, 1.0], [1.0, 1.0]], v)
        assert int(opt.iterations) == 1
        step(opt, [[1.0, 1.0], [1.0, 1.0]], v)
        assert int(opt.iterations) == 2

    def test_empty_gradients(self):
        # optimizer_test.py::OptimizerTest::test_empty_gradients: no gradient at all is a
        # ValueError "No gradients provided for any variable"; a None among others is
        # skipped with a warning and the others are applied
        v = variable([[3.0, 4.0], [5.0, 6.0]])
        opt = optimizers.SGD(learning_rate=1.0)
        with pytest.raises(ValueError, match="No gradients provided"):
            opt.apply_gradients([(None, v)])
        assert int(opt.iterations) == 0
        v2 = variable([[3.0, 4.0], [5.0, 6.0]])
        opt = optimizers.SGD(learning_rate=1.0)
        with pytest.warns(Warning):
            opt.apply_gradients([(None, v), (ml.tensor(np.ones((2, 2), np.float32)), v2)])
        all_close(v.numpy(), [[3.0, 4.0], [5.0, 6.0]])
        all_close(v2.numpy(), [[2.0, 3.0], [4.0, 5.0]])

    def test_clip_args(self):
        # optimizer_test.py::OptimizerTest::test_clip_args: each alone is kept; any two
        # together are refused ("Only one of `clipnorm`, `clipvalue` and
        # `global_clipnorm` can be set")
        assert optimizers.SGD(learning_rate=1.0, clipnorm=0.1).clipnorm == 0.1
        assert optimizers.SGD(learning_rate=1.0, clipvalue=0.1).clipvalue == 0.1
        assert optimizers.SGD(learning_rate=1.0, global_clipnorm=0.1).global_clipnorm == 0.1
        with pytest.raises(ValueError, match="Only one of"):
            optimizers.SGD(learning_rate=1.0, clipnorm=0.1, clipvalue=0.1)
        with pytest.raises(ValueError, match="Only one of"):
            optimizers.SGD(learning_rate=1.0, clipnorm=0.1, global_clipnorm=0.1)

    @pytest.mark.parametrize("cls", [optimizers.SGD, optimizers.Adam])
    def test_clip_norm(self, cls):
        # optimizer_test.py::OptimizerTest::test_clip_norm (and sgd_test / adam_test):
        # [100, 100] clipped to norm 1 is [sqrt(2)/2, sqrt(2)/2]. Seen through one SGD step
        # of rate 1 from zero (the variable becomes minus the clipped gradient); for Adam
        # one step with the clipped gradient equals an unclipped step on [sqrt(2)/2] * 2
        # (epsilon=1 makes Adam's step depend on the gradient's scale, so the check bites).
        clipped = np.array([2**0.5 / 2, 2**0.5 / 2])
        if cls is optimizers.SGD:
            v = variable([0.0, 0.0])
            step(cls(learning_rate=1.0, clipnorm=1), [100.0, 100.0], v)
            all_close(v.numpy(), -clipped)
        else:
            a, b = variable([0.0, 0.0]), variable([0.0, 0.0])
            step(cls(learning_rate=0.1, epsilon=1.0, clipnorm=1), [100.0, 100.0], a)
            step(cls(learning_rate=0.1, epsilon=1.0), clipped, b)
            all_close(a.numpy(), b.numpy())

    def test_clip_value(self):
        # optimizer_test.py::OptimizerTest::test_clip_value
        v = variable([0.0, 0.0])
        step(optimizers.SGD(learning_rate=1.0, clipvalue=1), [100.0, 100.0], v)
        all_close(v.numpy(), [-1.0, -1.0])

    def test_global_clip_norm(self):
        # optimizer_test.py::OptimizerTest::test_global_clip_norm
        grad = np.array([50.0, 100.0], dtype="float32")
        v = variable([0.0, 0.0])
        step(optimizers.SGD(learning_rate=1.0, global_clipnorm=1), grad, v)
        all_close(v.numpy(), -grad / np.linalg.norm(grad))

    def test_get_method(self):
        # optimizer_test.py::OptimizerTest::test_get_method
        assert isinstance(optimizers.get("sgd"), optimizers.SGD)
        assert optimizers.get(None) is None
        with pytest.raises(ValueError):
            optimizers.get("typo")

    def test_optimizer_auto_naming(self):
        # optimizer_test.py::OptimizerTest::test_optimizer_auto_naming: "adam", "adam_1",
        # "sgd", "sgd_1"; an explicit name is kept, also through serialize/deserialize
        names = [
            optimizers.Adam().name,
            optimizers.Adam().name,
            optimizers.SGD().name,
            optimizers.SGD().name,
        ]
        assert names[0].startswith("adam") and names[2].startswith("sgd"), names
        assert names[0] != names[1] and names[2] != names[3], names
        assert optimizers.Adam(name="my_adam").name == "my_adam"
        second = optimizers.Adam()
        assert optimizers.deserialize(optimizers.serialize(second)).name == second.name

    def test_callable_learning_rate(self):
        # optimizer_test.py::OptimizerTest::test_callable_learning_rate
        v = variable([[1.0, 2.0], [3.0, 4.0]])
        opt = optimizers.SGD(learning_rate=lambda: 0.1)
        assert int(opt.iterations) == 0
        step(opt, [[1.0, 1.0], [1.0, 1.0]], v)
        all_close(v.numpy(), [[0.9, 1.9], [2.9, 3.9]])
        assert int(opt.iterations) == 1

    @pytest.mark.parametrize("cls", ["SGD", "Adam"])
    def test_weight_decay(self, cls):
        # sgd_test.py / adam_test.py::test_weight_decay (var1, through three fresh
        # optimizers; metalearn has no exclude_from_weight_decay)
        v = variable(2.0)
        for _ in range(3):
            step(getattr(optimizers, cls)(learning_rate=1.0, weight_decay=0.004), 0.0, v)
        assert abs(float(v.numpy()) - 1.9760959) < 1.5e-6

    def test_weight_decay_config(self):
        # sgd_test.py::SGDTest::test_config, with its weight_decay
        assert_config_round_trip(
            optimizers.SGD(learning_rate=0.5, momentum=0.06, nesterov=True, weight_decay=0.004),
            optimizers.serialize,
            optimizers.deserialize,
        )
        with pytest.raises(ValueError, match="weight_decay"):
            optimizers.Adam(weight_decay=-1.0)


# ---------------------------------------------------------------------- RMSprop
class TestRMSprop:
    def test_config(self):
        # rmsprop_test.py::RMSpropTest::test_config
        assert_config_round_trip(
            optimizers.RMSprop(
                learning_rate=0.5, rho=0.8, momentum=0.05, epsilon=1e-6, centered=True
            ),
            optimizers.serialize,
            optimizers.deserialize,
        )

    def test_defaults(self):
        # keras/src/optimizers/rmsprop.py's signature (the rate as Keras' config gives it,
        # read back from its float32 variable)
        c = optimizers.RMSprop().get_config()
        assert (c["learning_rate"], c["rho"], c["momentum"]) == (np.float32(0.001), 0.9, 0.0)
        assert (c["epsilon"], c["centered"], c["weight_decay"]) == (1e-7, False, None)

    def test_by_name(self):
        assert isinstance(optimizers.get("rmsprop"), optimizers.RMSprop)
        assert isinstance(optimizers.get("RMSprop"), optimizers.RMSprop)

    def test_single_step(self):
        # rmsprop_test.py::RMSpropTest::test_single_step
        v = variable([1.0, 2.0, 3.0, 4.0])
        step(optimizers.RMSprop(learning_rate=0.5), [1.0, 6.0, 7.0, 2.0], v)
        all_close(v.numpy(), [-0.5811, 0.4189, 1.4189, 2.4189], rtol=1e-4, atol=1e-4)

    def test_weight_decay(self):
        # rmsprop_test.py::RMSpropTest::test_weight_decay (var1; metalearn has no
        # exclude_from_weight_decay)
        # var1 goes through three fresh optimizers there: three decays of 2.0
        v = variable(2.0)
        for _ in range(3):
            step(optimizers.RMSprop(learning_rate=1.0, weight_decay=0.004), 0.0, v)
        assert abs(float(v.numpy()) - 1.9760959) < 1.5e-6

    def test_correctness_with_golden(self):
        # rmsprop_test.py::RMSpropTest::test_correctness_with_golden
        opt = optimizers.RMSprop(centered=True)
        x = variable(np.ones(10))
        grads = np.arange(0.1, 1.1, 0.1)
        golden = np.tile([[0.9967], [0.9933], [0.9908], [0.9885], [0.9864]], (1, 10))
        step(opt, np.full((10,), 0.01), x)
        for i in range(5):
            all_close(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
            step(opt, grads, x)

    def test_momentum_matches_formula(self):
        # rmsprop.py update_step with momentum, written out in float64
        opt = optimizers.RMSprop(learning_rate=0.1, rho=0.8, momentum=0.5, epsilon=1e-3)
        w = np.array([1.0, -2.0, 0.5])
        x = variable(w)
        vel, mom = np.zeros(3), np.zeros(3)
        for g in ([0.3, -1.0, 2.0], [1.0, 0.5, -0.2], [0.0, 2.0, 1.0]):
            g = np.array(g)
            vel = 0.8 * vel + 0.2 * g**2
            mom = 0.5 * mom + 0.1 * g / np.sqrt(vel + 1e-3)
            w = w - mom
            step(opt, g, x)
            all_close(x.numpy(), w, rtol=1e-6, atol=1e-6)

    def test_clip_norm(self):
        # rmsprop_test.py::RMSpropTest::test_clip_norm
        clipped = optimizers.RMSprop(clipnorm=1)._clip_gradients(
            [ml.tensor(np.array([100.0, 100.0]))]
        )
        all_close(np.asarray(clipped[0]), [2**0.5 / 2, 2**0.5 / 2])

    def test_refused_step_changes_nothing(self):
        opt = optimizers.RMSprop(momentum=0.9)
        a, b = variable([1.0, 2.0]), variable([3.0])
        opt.apply_gradients([(ml.tensor(np.ones(2, np.float32)), a)])
        before = a.numpy().copy(), [s.numpy().copy() for s in opt.variables()]
        with pytest.raises(ValueError):
            opt.apply_gradients(
                [(ml.tensor(np.ones(2, np.float32)), a), (ml.tensor(np.ones(2, np.float32)), b)]
            )
        assert np.array_equal(a.numpy(), before[0])
        assert all(np.array_equal(s.numpy(), t) for s, t in zip(opt.variables(), before[1]))
        assert int(opt.iterations) == 1


# ------------------------------------------------------------------------ AdamW
class TestAdamW:
    def test_config(self):
        # adamw_test.py::AdamWTest::test_config
        assert_config_round_trip(
            optimizers.AdamW(
                learning_rate=0.5,
                weight_decay=0.008,
                beta_1=0.5,
                beta_2=0.67,
                epsilon=1e-5,
                amsgrad=True,
            ),
            optimizers.serialize,
            optimizers.deserialize,
        )

    def test_by_name_and_default(self):
        opt = optimizers.get("adamw")
        assert isinstance(opt, optimizers.AdamW) and opt.weight_decay == 0.004

    def test_single_step(self):
        # adamw_test.py::AdamWTest::test_single_step
        v = variable([1.0, 2.0, 3.0, 4.0])
        step(optimizers.AdamW(learning_rate=0.5), [1.0, 6.0, 7.0, 2.0], v)
        all_close(v.numpy(), [0.4980, 1.4960, 2.494, 3.492], rtol=1e-4, atol=1e-4)

    def test_weight_decay(self):
        # adamw_test.py::AdamWTest::test_weight_decay (var1)
        # var1 goes through three fresh optimizers there: three decays of 2.0
        v = variable(2.0)
        for _ in range(3):
            step(optimizers.AdamW(learning_rate=1.0, weight_decay=0.004), 0.0, v)
        assert abs(float(v.numpy()) - 1.9760959) < 1.5e-6

    def test_weight_decay_is_none(self):
        # adamw_test.py::AdamWTest::test_weight_decay_is_none
        with pytest.raises(
            ValueError, match="Argument `weight_decay` must be a float. Received: weight_decay=None"
        ):
            optimizers.AdamW(learning_rate=1.0, weight_decay=None)

    def test_correctness_with_golden(self):
        # adamw_test.py::AdamWTest::test_correctness_with_golden
        opt = optimizers.AdamW(learning_rate=1.0, weight_decay=0.5, epsilon=2)
        x = variable(np.ones(10))
        grads = np.arange(0.1, 1.1, 0.1)
        golden = np.array(
            [
                [0.4998] * 10,
                [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
                [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
                [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
                [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159],
            ]
        )
        step(opt, np.full((10,), 0.01), x)
        for i in range(5):
            all_close(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
            step(opt, grads, x)

    def test_refused_step_changes_nothing(self):
        opt = optimizers.AdamW(weight_decay=0.1)
        a = variable([1.0, 2.0])
        with pytest.raises(ValueError):
            opt.apply_gradients([(ml.tensor(np.ones(3, np.float32)), a)])
        assert np.array_equal(a.numpy(), np.array([1.0, 2.0], np.float32))
        assert int(opt.iterations) == 0


@pytest.mark.parametrize("name", ["rmsprop", "adamw"])
def test_compile_by_string_trains(name):
    # Keras 3 accepts these names in compile
    from metalearn import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer=name, loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first
    assert int(model.optimizer.iterations) == 80


@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
        lambda: optimizers.AdamW(0.01, weight_decay=0.1),
        lambda: optimizers.SGD(0.05, weight_decay=0.01),
    ],
    ids=["RMSprop", "AdamW", "SGD_wd"],
)
def test_traced_fit_equals_eager(make):
    # one C update over all parameters, recorded in fit's trace: the replayed steps give
    # the eager steps' numbers
    from metalearn import keras

    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 3)).astype("float32")
    y = rng.normal(size=(24, 2)).astype("float32")
    runs = []
    for eager in (False, True):
        ml.random.set_seed(0)
        model = keras.Sequential(
            [keras.layers.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)]
        )
        model.compile(optimizer=make(), loss="mse", run_eagerly=eager)
        h = model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
        runs.append((h.history["loss"], model.get_weights(), model))
    assert runs[0][2]._train_fn is not None and runs[0][2]._train_fn.n_traces == 1
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- Adagrad
GOLDEN_ADAGRAD = np.array(
    [
        [0.9963] * 10,
        [0.9604, 0.9278, 0.9003, 0.8784, 0.8615, 0.8487, 0.8388, 0.8313, 0.8255, 0.8209],
        [0.9251, 0.8629, 0.8137, 0.7768, 0.7497, 0.7298, 0.7151, 0.704, 0.6956, 0.6891],
        [0.8903, 0.8012, 0.7342, 0.6862, 0.6521, 0.6277, 0.6099, 0.5967, 0.5867, 0.579],
        [0.856, 0.7422, 0.6604, 0.6037, 0.5644, 0.5367, 0.5168, 0.5021, 0.491, 0.4825],
    ]
)
GOLDEN_NADAM = np.array(
    [
        [0.4281] * 10,
        [-0.1738, -0.1731, -0.1726, -0.1723, -0.1721, -0.172, -0.1719, -0.1718, -0.1718, -0.1717],
        [-0.7115, -0.7103, -0.7096, -0.7092, -0.709, -0.7088, -0.7086, -0.7085, -0.7085, -0.7084],
        [-1.2335, -1.2322, -1.2313, -1.2309, -1.2306, -1.2304, -1.2302, -1.2301, -1.23, -1.2299],
        [-1.7492, -1.7478, -1.7469, -1.7464, -1.7461, -1.7459, -1.7457, -1.7456, -1.7455, -1.7454],
    ]
)


def _golden(opt, golden):
    # *_test.py::test_correctness_with_golden: one step of 0.01, then 0.1 .. 1.0 each time
    x = variable(np.ones(10))
    step(opt, np.full(10, 0.01), x)
    for i in range(5):
        all_close(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
        step(opt, np.arange(0.1, 1.1, 0.1)[:10], x)


def _weight_decay_with_exclusions(cls):
    # adagrad_test.py / nadam_test.py::test_weight_decay: zero gradients, rate 1, decay
    # 0.004; var2 excluded by name, var3 by identity
    grads = np.zeros((), np.float32)
    var1, var2, var3 = (
        ml.Variable(np.float32(2.0)),
        ml.Variable(np.float32(2.0), name="exclude"),
        ml.Variable(np.float32(2.0)),
    )
    opt1 = cls(learning_rate=1.0, weight_decay=0.004)
    opt1.apply_gradients([(ml.tensor(grads), var1)])
    opt2 = cls(learning_rate=1.0, weight_decay=0.004)
    opt2.exclude_from_weight_decay(var_names=["exclude"])
    opt2.apply_gradients([(ml.tensor(grads), var1), (ml.tensor(grads), var2)])
    opt3 = cls(learning_rate=1.0, weight_decay=0.004)
    opt3.exclude_from_weight_decay(var_list=[var3])
    opt3.apply_gradients([(ml.tensor(grads), var1), (ml.tensor(grads), var3)])
    np.testing.assert_almost_equal(float(var1.numpy()), 1.9760959, decimal=6)
    np.testing.assert_almost_equal(float(var2.numpy()), 2.0, decimal=6)
    np.testing.assert_almost_equal(float(var3.numpy()), 2.0, decimal=6)


class TestAdagrad:
    def test_config(self):
        # adagrad_test.py::AdagradTest::test_config
        assert_config_round_trip(
            optimizers.Adagrad(learning_rate=0.5, initial_accumulator_value=0.2, epsilon=1e-5),
            optimizers.serialize,
            optimizers.deserialize,
        )

    def test_defaults_and_name(self):
        # adagrad.py's signature; "adagrad" is Keras' string name
        config = optimizers.get("adagrad").get_config()
        assert (
            config["learning_rate"],
            config["initial_accumulator_value"],
            config["epsilon"],
        ) == (
            np.float32(0.001),
            0.1,
            1e-7,
        )

    def test_single_step(self):
        # adagrad_test.py::AdagradTest::test_single_step
        v = variable([1.0, 2.0, 3.0, 4.0])
        step(optimizers.Adagrad(learning_rate=0.5), [1.0, 6.0, 7.0, 2.0], v)
        all_close(v.numpy(), [0.5233, 1.5007, 2.5005, 3.5061], rtol=1e-4, atol=1e-4)

    def test_weight_decay(self):
        _weight_decay_with_exclusions(optimizers.Adagrad)

    def test_correctness_with_golden(self):
        # adagrad_test.py::AdagradTest::test_correctness_with_golden
        _golden(
            optimizers.Adagrad(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6),
            GOLDEN_ADAGRAD,
        )

    def test_clip_norm_and_value(self):
        # adagrad_test.py::AdagradTest::test_clip_norm, test_clip_value
        g = [np.array([100.0, 100.0], np.float32)]
        all_close(optimizers.Adagrad(clipnorm=1)._clip_gradients(g)[0], [2**0.5 / 2, 2**0.5 / 2])
        all_close(optimizers.Adagrad(clipvalue=1)._clip_gradients(g)[0], [1.0, 1.0])


class TestNadam:
    def test_config(self):
        # nadam_test.py::NadamTest::test_config
        assert_config_round_trip(
            optimizers.Nadam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5),
            optimizers.serialize,
            optimizers.deserialize,
        )

    def test_defaults_and_name(self):
        config = optimizers.get("nadam").get_config()
        assert [config[k] for k in ("learning_rate", "beta_1", "beta_2", "epsilon")] == [
            np.float32(0.001),
            0.9,
            0.999,
            1e-7,
        ]

    def test_single_step(self):
        # nadam_test.py::NadamTest::test_single_step
        v = variable([1.0, 2.0, 3.0, 4.0])
        step(optimizers.Nadam(learning_rate=0.5), [1.0, 6.0, 7.0, 2.0], v)
        all_close(v.numpy(), [0.4686, 1.4686, 2.4686, 3.4686], rtol=1e-4, atol=1e-4)

    def test_weight_decay(self):
        _weight_decay_with_exclusions(optimizers.Nadam)

    def test_correctness_with_golden(self):
        # nadam_test.py::NadamTest::test_correctness_with_golden
        _golden(
            optimizers.Nadam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5),
            GOLDEN_NADAM,
        )

    def test_clip_norm_and_value(self):
        # nadam_test.py::NadamTest::test_clip_norm, test_clip_value
        g = [np.array([100.0, 100.0], np.float32)]
        all_close(optimizers.Nadam(clipnorm=1)._clip_gradients(g)[0], [2**0.5 / 2, 2**0.5 / 2])
        all_close(optimizers.Nadam(clipvalue=1)._clip_gradients(g)[0], [1.0, 1.0])

    @pytest.mark.parametrize("bad", [dict(beta_1=1.0), dict(beta_2=-0.1), dict(epsilon=-1.0)])
    def test_bad_arguments(self, bad):
        with pytest.raises(ValueError):
            optimizers.Nadam(**bad)


# ------------------------------------------------------------ EMA, clipping, exclusions
class TestBaseOptimizerOptions:
    def test_ema(self):
        # optimizer_test.py::OptimizerTest::test_ema (SGD rate 1, ema_momentum 0.9,
        # overwrite every 3 steps); the average is the optimizer's last slot
        v = variable([[3.0, 4.0], [5.0, 6.0]])
        g = [[1.0, 1.0], [1.0, 1.0]]
        opt = optimizers.SGD(
            learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3
        )
        step(opt, g, v)
        all_close(v.numpy(), [[2.0, 3.0], [4.0, 5.0]])
        all_close(opt.variables()[-1].numpy(), [[2.0, 3.0], [4.0, 5.0]])
        step(opt, g, v)
        all_close(v.numpy(), [[1.0, 2.0], [3.0, 4.0]])
        all_close(opt.variables()[-1].numpy(), [[1.9, 2.9], [3.9, 4.9]])
        step(opt, g, v)
        all_close(v.numpy(), [[1.71, 2.71], [3.71, 4.71]])
        all_close(opt.variables()[-1].numpy(), [[1.71, 2.71], [3.71, 4.71]])

    def test_ema_with_model_fit(self):
        # optimizer_test.py::OptimizerTest::test_ema_with_model_fit: Keras' fit ends with
        # finalize_variable_values (called here: fit's loop is not this file's)
        from metalearn import keras

        opt = optimizers.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.9)
        model = keras.Sequential(
            [
                keras.layers.Input((1,)),
                keras.layers.Dense(2, kernel_initializer="ones", use_bias=False),
            ]
        )
        model.compile(loss="mse", optimizer=opt, run_eagerly=True)
        model.fit(
            np.ones((1, 1), "float32"),
            np.zeros((1, 2), "float32"),
            batch_size=1,
            epochs=2,
            verbose=0,
        )
        all_close(opt.variables()[-1].numpy(), [[0.891, 0.891]], atol=1e-5)
        opt.finalize_variable_values(model.trainable_weights)
        all_close(model.trainable_weights[0].numpy(), [[0.891, 0.891]], atol=1e-5)

    def test_ema_arguments(self):
        # base_optimizer.__init__'s checks (only with use_ema)
        with pytest.raises(ValueError, match="ema_momentum"):
            optimizers.SGD(use_ema=True, ema_momentum=1.5)
        with pytest.raises(ValueError, match="ema_overwrite_frequency"):
            optimizers.SGD(use_ema=True, ema_overwrite_frequency=0)
        with pytest.raises(ValueError, match="ema_overwrite_frequency"):
            optimizers.SGD(use_ema=True, ema_overwrite_frequency=2.5)
        config = optimizers.Adam(
            use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=7
        ).get_config()
        assert (config["use_ema"], config["ema_momentum"], config["ema_overwrite_frequency"]) == (
            True,
            0.5,
            7,
        )

    def test_global_clipnorm_over_several_gradients(self):
        # base_optimizer._clip_gradients -> clip_by_global_norm: every gradient times
        # c * min(1 / N, 1 / c), N the norm of all of them together
        a, b = np.array([3.0, 4.0], np.float32), np.array([[12.0]], np.float32)
        out = optimizers.SGD(global_clipnorm=6.5)._clip_gradients([a, b])
        all_close(out[0].numpy(), a * 0.5)
        all_close(out[1].numpy(), b * 0.5)
        out = optimizers.SGD(global_clipnorm=100.0)._clip_gradients([a, b])  # below: unchanged
        all_close(out[0].numpy(), a)
        all_close(out[1].numpy(), b)

    def test_zero_threshold_clips_nothing(self):
        # base_optimizer._clip_gradients clips only with a threshold > 0
        v = variable([0.0, 0.0])
        step(optimizers.SGD(learning_rate=1.0, clipvalue=0.0), [5.0, -7.0], v)
        all_close(v.numpy(), [-5.0, 7.0])

    def test_exclude_after_the_first_step_is_refused(self):
        # base_optimizer.exclude_from_weight_decay: only before build (Keras' message)
        v = variable([1.0])
        opt = optimizers.AdamW(0.1)
        step(opt, [1.0], v)
        with pytest.raises(ValueError, match="before the optimizer is built"):
            opt.exclude_from_weight_decay(var_names=["bias"])


# ------------------------------------------------------------ live Keras 3
LIVE = {
    "Adagrad": lambda O: O.Adagrad(learning_rate=0.1, initial_accumulator_value=0.05),
    "Nadam": lambda O: O.Nadam(learning_rate=0.05, beta_1=0.8, beta_2=0.95),
    "Nadam_wd_clipvalue": lambda O: O.Nadam(learning_rate=0.05, weight_decay=0.1, clipvalue=0.5),
    "Adagrad_clipnorm_ema": lambda O: O.Adagrad(
        learning_rate=0.2, clipnorm=0.7, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3
    ),
    "Adam_global_clipnorm": lambda O: O.Adam(learning_rate=0.05, global_clipnorm=1.0),
    "SGD_momentum_ema": lambda O: O.SGD(
        learning_rate=0.1, momentum=0.9, use_ema=True, ema_momentum=0.7
    ),
    "AdamW_amsgrad_global": lambda O: O.AdamW(
        learning_rate=0.05, amsgrad=True, global_clipnorm=0.3
    ),
    "RMSprop_centered_clipvalue": lambda O: O.RMSprop(
        learning_rate=0.02, centered=True, clipvalue=0.2
    ),
}


@pytest.mark.keras
@pytest.mark.parametrize("name", sorted(LIVE))
def test_steps_match_live_keras(name):
    # seven steps on two variables with gradients of changing scale (some clipped, some
    # not), then finalize_variable_values: the variables match Keras 3's after each step
    from ._helpers import require_keras

    K = require_keras()
    rng = np.random.default_rng(7)
    w0 = [rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(2,)).astype("float32")]
    ours, theirs = LIVE[name](optimizers), LIVE[name](K.optimizers)
    a = [ml.Variable(w.copy()) for w in w0]
    b = [K.Variable(w.copy()) for w in w0]
    for i in range(7):
        grads = [(rng.normal(size=w.shape) * (0.2 + i)).astype("float32") for w in w0]
        ours.apply_gradients([(ml.tensor(g), v) for g, v in zip(grads, a)])
        theirs.apply_gradients([(K.ops.convert_to_tensor(g), v) for g, v in zip(grads, b)])
        for va, vb in zip(a, b):
            np.testing.assert_allclose(va.numpy(), K.ops.convert_to_numpy(vb), rtol=1e-5, atol=1e-6)
    ours.finalize_variable_values(a)
    theirs.finalize_variable_values(b)
    for va, vb in zip(a, b):
        np.testing.assert_allclose(va.numpy(), K.ops.convert_to_numpy(vb), rtol=1e-5, atol=1e-6)


@pytest.mark.keras
@pytest.mark.parametrize(
    "make",
    [
        lambda O: O.Nadam(
            0.01, beta_1=0.8, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=5
        ),
        lambda O: O.Adagrad(0.2, initial_accumulator_value=0.3, global_clipnorm=2.0),
        lambda O: O.Adam(
            O.schedules.CosineDecay(0.1, 50, alpha=0.1, warmup_target=0.3, warmup_steps=5),
            clipvalue=1.0,
        ),
    ],
    ids=["Nadam", "Adagrad", "Adam_cosine"],
)
def test_configs_are_interchangeable_with_live_keras(make):
    # a Keras 3 config loads in metalearn and the other way round, with the same config
    from ._helpers import require_keras

    K = require_keras()
    ours, theirs = make(optimizers), make(K.optimizers)
    ours_config, theirs_config = ours.get_config(), theirs.get_config()
    ours_config.pop("name"), theirs_config.pop("name")
    assert ours_config == theirs_config
    again = type(ours).from_config(theirs.get_config())
    back = type(theirs).from_config(ours.get_config())
    assert again.get_config() == ours.get_config() | {"name": theirs.name}
    assert back.get_config() == theirs.get_config() | {"name": ours.name}
