"""Learning-rate schedules against Keras 3's tests and live Keras.

Sources: ``keras/src/optimizers/schedules/learning_rate_schedule_test.py`` (values, configs,
``TestFitLRSchedulesFlow::test_fit_lr_correctness``) and ``optimizer_test.py``; the
formulas are ``learning_rate_schedule.py``'s. The live comparisons (marked ``keras``) fit
the same model in both libraries with each schedule and compare the weights.
"""

import json
import math

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import optimizers
from metalearn.keras.optimizers import schedules

from ._helpers import all_close, assert_config_round_trip, require_keras


# ------------------------------------------------------------ Keras' own values
def test_exponential_decay_values():
    # ExponentialDecayTest::test_continuous, test_staircase, test_variables
    all_close(schedules.ExponentialDecay(0.05, 10, 0.96)(5), 0.05 * 0.96 ** (5.0 / 10.0), 1e-6)
    lr = schedules.ExponentialDecay(0.1, 3, 0.96, staircase=True)
    all_close(lr(1), 0.1, 1e-6)
    all_close(lr(2), 0.1, 1e-6)
    all_close(lr(100), 0.1 * 0.96 ** (100 // 3), 1e-6)


def test_piecewise_constant_values():
    # PiecewiseConstantDecayTest::test_piecewise_values, test_boundary_values
    lr = schedules.PiecewiseConstantDecay([100, 110, 120], [1.0, 0.1, 0.01, 0.001])
    for step, want in ((-999, 1.0), (100, 1.0), (105, 0.1), (110, 0.1), (120, 0.01), (999, 0.001)):
        all_close(lr(step), want, 1e-6)
    lr = schedules.PiecewiseConstantDecay([1, 2, 3], [0.4, 0.5, 0.6, 0.7])
    for step, want in ((0, 0.4), (1, 0.4), (2, 0.5), (3, 0.6), (4, 0.7)):
        all_close(lr(step), want, 1e-6)


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_decay_values(staircase):
    # InverseTimeDecayTest::test_decay, test_staircase
    lr = schedules.InverseTimeDecay(0.1, 10, 0.96, staircase=staircase)
    for i in range(11):
        p = i // 10 if staircase else i / 10
        all_close(lr(i), 0.1 / (1 + 0.96 * p), 1e-6)


def _np_cosine(step, decay_steps, alpha=0.0):
    step = min(step, decay_steps)
    return (1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * step / decay_steps)) + alpha


def test_cosine_decay_values():
    # CosineDecayTest::test_decay, test_alpha, test_float64, test_warmup, test_warmup_decay
    for step in range(0, 1500, 250):
        all_close(schedules.CosineDecay(1.0, 1000)(step), _np_cosine(step, 1000), 1e-6)
        all_close(schedules.CosineDecay(1.0, 1000, 0.1)(step), _np_cosine(step, 1000, 0.1), 1e-6)
        all_close(schedules.CosineDecay(np.float64(1.0), 1000)(step), _np_cosine(step, 1000), 1e-6)
        warm = schedules.CosineDecay(0.0, 10, warmup_target=10.0, warmup_steps=1500)
        all_close(warm(step), step / 1500 * 10.0)
    for step in range(0, 3000, 250):
        lr = schedules.CosineDecay(0.0, 1000, warmup_target=10.0, warmup_steps=2000)
        want = step / 2000 * 10.0 if step < 2001 else 10.0 * _np_cosine(step - 2000, 1000)
        all_close(lr(step), want)


def test_polynomial_decay_values():
    # LinearDecayTest and SqrtDecayTest (test_halfway, test_end, test_halfway_with_end,
    # test_beyond_end, test_beyond_end_with_cycle, test_begin_with_cycle)
    for power in (1.0, 0.5):
        lr = schedules.PolynomialDecay(0.05, 10, 0.0, power=power)
        all_close(lr(5), 0.05 * 0.5**power, 1e-6)
        lr = schedules.PolynomialDecay(0.05, 10, 0.001, power=power)
        all_close(lr(10), 0.001, 1e-6)
        all_close(lr(5), (0.05 - 0.001) * 0.5**power + 0.001, 1e-6)
        all_close(lr(15), 0.001, 1e-6)
        lr = schedules.PolynomialDecay(0.05, 10, 0.001, power=power, cycle=True)
        all_close(lr(15), (0.05 - 0.001) * 0.25**power + 0.001, 1e-6)
    all_close(schedules.PolynomialDecay(0.001, 10, cycle=True)(0), 0.001, 1e-6)
    # the default end rate is Keras' 0.0001
    all_close(schedules.PolynomialDecay(0.05, 10)(10), 0.0001, 1e-6)


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ExponentialDecay(
            0.05, decay_steps=10, decay_rate=0.96, staircase=True, name="my_ed"
        ),
        schedules.PolynomialDecay(
            0.05, decay_steps=10, end_learning_rate=0.01, power=0.5, cycle=True, name="my_pd"
        ),
        schedules.PiecewiseConstantDecay(boundaries=[10, 20], values=[1, 2, 3], name="my_pcd"),
        schedules.InverseTimeDecay(
            0.05, decay_steps=10, decay_rate=0.96, staircase=True, name="my_itd"
        ),
        schedules.CosineDecay(0.05, 10, alpha=0.1, warmup_target=0.2, warmup_steps=2, name="my_cd"),
    ],
    ids=lambda s: type(s).__name__,
)
def test_config(schedule):
    # *Test::test_config (run_class_serialization_test); serialize's dict is Keras'
    assert_config_round_trip(schedule, schedules.serialize, schedules.deserialize)
    s = schedules.serialize(schedule)
    assert s["module"] == "keras.optimizers.schedules" and s["registered_name"] is None
    assert s["class_name"] == type(schedule).__name__


def test_optimizer_config_holds_the_schedule():
    # base_optimizer.get_config serializes a schedule; from_config deserializes it
    opt = optimizers.Adam(
        learning_rate=schedules.CosineDecay(0.1, 100, warmup_target=0.5, warmup_steps=3)
    )
    config = opt.get_config()
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    revived = optimizers.deserialize(json.loads(json.dumps(optimizers.serialize(opt))))
    assert isinstance(revived._learning_rate, schedules.CosineDecay)
    assert revived.get_config() == config


def test_fit_lr_correctness():
    # TestFitLRSchedulesFlow::test_fit_lr_correctness: Adam with ExponentialDecay(0.05, 1,
    # 0.9), Dense(2) of ones, 3 epochs of 4 batches; the losses are Keras'
    model = keras.Sequential(
        [
            keras.layers.Input((2,)),
            keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="ones"),
        ]
    )
    opt = optimizers.Adam(
        learning_rate=schedules.ExponentialDecay(
            initial_learning_rate=0.05, decay_steps=1, decay_rate=0.9
        )
    )
    model.compile(optimizer=opt, loss="mse")
    x = np.arange(32).reshape((16, 2)).astype("float32")
    history = model.fit(x, x, epochs=3, batch_size=4, shuffle=False, verbose=0)
    assert int(opt.iterations) == 4 * 3
    assert model._train_fn is not None and model._train_fn.n_traces == 1  # traced, once
    np.testing.assert_allclose(
        history.history["loss"],
        [230.79457092285156, 128.30319213867188, 79.33648681640625],
        rtol=5e-5,
    )


# ------------------------------------------------------------ in the optimizers
def _each_step_rate(opt, n, schedule):
    """Steps plain SGD n times on w = 0 with gradient 1: w falls by each step's rate."""
    v = ml.Variable(np.zeros(1, np.float32))
    rates = []
    for _ in range(n):
        before = float(v.numpy()[0])
        assert opt.learning_rate == pytest.approx(float(schedule(int(opt.iterations))), rel=1e-6)
        opt.apply_gradients([(ml.tensor(np.ones(1, np.float32)), v)])
        rates.append(before - float(v.numpy()[0]))
    return np.array(rates)


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ExponentialDecay(0.5, 3, 0.5),
        schedules.ExponentialDecay(0.5, 3, 0.5, staircase=True),
        schedules.InverseTimeDecay(0.5, 2, 1.0),
        schedules.InverseTimeDecay(0.5, 2, 1.0, staircase=True),
        schedules.CosineDecay(0.5, 5, alpha=0.1),
        schedules.CosineDecay(0.1, 4, alpha=0.2, warmup_target=0.6, warmup_steps=3),
        schedules.PiecewiseConstantDecay([1, 4], [0.5, 0.25, 0.125]),
        schedules.PolynomialDecay(0.5, 7, 0.05),
        schedules.PolynomialDecay(0.5, 3, 0.0, power=0.5, cycle=True),
    ],
    ids=lambda s: type(s).__name__,
)
def test_the_c_step_applies_each_iterations_rate(schedule):
    # base_optimizer._get_current_learning_rate: step t uses schedule(iterations) before
    # the step. The C optimizer computes it in float32 from its own count; the rates it
    # applies are the schedule's (Keras' formula, computed in NumPy float32 here)
    rates = _each_step_rate(optimizers.SGD(learning_rate=schedule), 12, schedule)
    want = np.array([float(schedule(t)) for t in range(12)])
    np.testing.assert_allclose(rates, want, rtol=2e-6, atol=1e-7)
    assert len(set(np.round(want, 6))) > 1  # the schedule does change the rate


def test_setting_a_float_on_a_schedule_is_a_type_error():
    # base_optimizer.learning_rate's setter: a schedule's rate is not settable (Keras 3's
    # TypeError); replacing it by another schedule is allowed; a float optimizer takes a
    # schedule
    opt = optimizers.SGD(learning_rate=schedules.ExponentialDecay(0.1, 1, 0.5))
    v = ml.Variable(np.zeros(2, np.float32))
    opt.apply_gradients([(ml.tensor(np.ones(2, np.float32)), v)])
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.01
    assert opt.learning_rate == pytest.approx(0.05)
    opt.learning_rate = schedules.PiecewiseConstantDecay([5], [0.25, 0.5])
    assert opt.learning_rate == 0.25
    plain = optimizers.Adam(0.1)
    plain.learning_rate = schedules.ExponentialDecay(0.2, 1, 0.5)
    assert plain.learning_rate == pytest.approx(0.2)


def test_custom_schedule_runs_in_python():
    # learning_rate_schedule.LearningRateSchedule's docstring: a subclass with __call__
    class Halving(schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.4 / 2**step

    opt = optimizers.SGD(learning_rate=Halving())
    assert opt._traced_update() is None  # computed in Python: fit steps eagerly
    rates = _each_step_rate(opt, 3, Halving())
    np.testing.assert_allclose(rates, [0.4, 0.2, 0.1], rtol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: schedules.ExponentialDecay(0.1, 0, 0.9), "decay_steps"),
        (lambda: schedules.InverseTimeDecay(0.1, -2, 0.9), "decay_steps"),
        (lambda: schedules.CosineDecay(0.1, 0), "decay_steps"),
        (lambda: schedules.PolynomialDecay(0.1, 0), "decay_steps"),
        (lambda: schedules.PolynomialDecay(0.1, 10, -0.01), "end_learning_rate"),
        (lambda: schedules.PolynomialDecay(0.1, 10, power=-1.0), "power"),
        (lambda: schedules.PolynomialDecay(0.1, 10, power=float("inf")), "power"),
        (lambda: schedules.ExponentialDecay(-0.1, 10, 0.9), "initial_learning_rate"),
        (lambda: schedules.ExponentialDecay(float("nan"), 10, 0.9), "initial_learning_rate"),
        (
            lambda: schedules.CosineDecay(0.1, 10, warmup_target=-1.0, warmup_steps=2),
            "warmup_target",
        ),
        (lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.2]), "length of boundaries"),
        (lambda: schedules.PiecewiseConstantDecay([2, 1], [0.1, 0.2, 0.3]), "increase"),
        (lambda: schedules.PiecewiseConstantDecay([1], [0.1, -0.2]), "values"),
        (lambda: schedules.deserialize({"class_name": "NoSuchDecay", "config": {}}), "Unknown"),
        (lambda: optimizers.SGD(learning_rate=-0.1), "learning_rate"),
    ],
)
def test_bad_schedule_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_string_rate_is_a_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        optimizers.Adam(learning_rate="fast")
    with pytest.raises(TypeError, match="decay_rate"):
        schedules.ExponentialDecay(0.1, 10, "0.9")


# ------------------------------------------------------------ traced steps
def _fit(make_opt, eager, epochs=3):
    ml.random.set_seed(0)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 3)).astype("float32")
    y = rng.normal(size=(24, 2)).astype("float32")
    model = keras.Sequential(
        [keras.layers.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)]
    )
    model.compile(optimizer=make_opt(), loss="mse", run_eagerly=eager)
    h = model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0)
    return h.history["loss"], model.get_weights(), model


SCHEDULED = {
    "Adam_exponential": lambda: optimizers.Adam(schedules.ExponentialDecay(0.05, 2, 0.5)),
    "SGD_cosine_warmup": lambda: optimizers.SGD(
        schedules.CosineDecay(0.01, 5, alpha=0.1, warmup_target=0.1, warmup_steps=3), momentum=0.5
    ),
    "Nadam_piecewise": lambda: optimizers.Nadam(
        schedules.PiecewiseConstantDecay([2, 5], [0.05, 0.02, 0.005])
    ),
    "SGD_polynomial": lambda: optimizers.SGD(schedules.PolynomialDecay(0.05, 4, 0.005)),
    "Adagrad_inverse_clip": lambda: optimizers.Adagrad(
        schedules.InverseTimeDecay(0.2, 1, 0.5), global_clipnorm=0.5
    ),
    "AdamW_ema": lambda: optimizers.AdamW(
        schedules.ExponentialDecay(0.05, 3, 0.7), use_ema=True, ema_overwrite_frequency=4
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_traced_fit_with_a_schedule_equals_eager(name):
    # the replayed step is recorded once and applies each iteration's rate (computed in C
    # from the optimizer's count): the same bits as the eager path, step by step
    traced, eager = _fit(SCHEDULED[name], False), _fit(SCHEDULED[name], True)
    assert traced[2]._train_fn is not None and traced[2]._train_fn.n_traces == 1
    assert eager[2]._train_fn is None
    np.testing.assert_array_equal(traced[0], eager[0])
    for a, b in zip(traced[1], eager[1]):
        np.testing.assert_array_equal(a, b)
    # and the schedule mattered: a constant rate gives other weights
    const = _fit(lambda: type(SCHEDULED[name]())(learning_rate=0.01), False)
    assert any(not np.array_equal(a, b) for a, b in zip(traced[1], const[1]))


def test_maml_meta_optimizer_with_a_schedule():
    # the outer optimizer of MAML with a schedule: the traced meta-step (replayed from C)
    # applies each iteration's rate, as the eager meta-step does
    from metalearn.meta import MAML
    from metalearn.tasks import Sinusoid

    def run(trace, schedule=True):
        ml.random.set_seed(3)
        model = keras.Sequential(
            [
                keras.layers.Input((1,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(1),
            ]
        )
        lr = schedules.ExponentialDecay(0.02, 2, 0.5) if schedule else 0.02
        maml = MAML(model, inner_lr=0.01, meta_optimizer=optimizers.Adam(lr), trace=trace)
        ml.random.set_seed(4)
        maml.fit(Sinusoid(seed=1), iterations=6, meta_batch_size=2, verbose=0)
        return maml

    traced, eager, const = run(True), run(False), run(True, schedule=False)
    assert traced._traced_step is not None and eager._traced_step is None
    assert traced.meta_optimizer.iterations == 6
    assert traced.meta_optimizer.learning_rate == pytest.approx(0.02 * 0.5**3)
    for a, b, c in zip(traced.model.weights, eager.model.weights, const.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(c))
        for a, c in zip(traced.model.weights, const.model.weights)
    )


# ------------------------------------------------------------ live Keras 3
LIVE = {
    "Adam_exponential": (lambda S, O: O.Adam(S.ExponentialDecay(0.05, 2, 0.5)),),
    "SGD_cosine_warmup": (
        lambda S, O: O.SGD(
            S.CosineDecay(0.01, 5, alpha=0.1, warmup_target=0.1, warmup_steps=3), momentum=0.5
        ),
    ),
    "Nadam_piecewise": (
        lambda S, O: O.Nadam(S.PiecewiseConstantDecay([2, 5], [0.05, 0.02, 0.005])),
    ),
    "RMSprop_inverse": (lambda S, O: O.RMSprop(S.InverseTimeDecay(0.01, 1, 0.5, staircase=True)),),
    "Adagrad_cosine": (lambda S, O: O.Adagrad(S.CosineDecay(0.3, 6)),),
    "Adam_polynomial_cycle": (
        lambda S, O: O.Adam(S.PolynomialDecay(0.05, 3, 0.01, power=2.0, cycle=True)),
    ),
}


@pytest.mark.keras
@pytest.mark.parametrize("name", sorted(LIVE))
def test_fit_with_a_schedule_matches_live_keras(name):
    K = require_keras()
    K.utils.set_random_seed(0)
    (make,) = LIVE[name]
    rng = np.random.default_rng(11)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    ours = keras.Sequential(
        [keras.layers.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )
    theirs = K.Sequential(
        [K.layers.Input((3,)), K.layers.Dense(4, activation="tanh"), K.layers.Dense(2)]
    )
    theirs.set_weights(ours.get_weights())
    ours.compile(optimizer=make(schedules, optimizers), loss="mse")
    theirs.compile(optimizer=make(K.optimizers.schedules, K.optimizers), loss="mse")
    ha = ours.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    hb = theirs.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    assert ours._train_fn is not None  # the traced step
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(ours.optimizer.iterations) == int(theirs.optimizer.iterations) == 12
    assert ours.optimizer.learning_rate == pytest.approx(
        float(K.ops.convert_to_numpy(theirs.optimizer.learning_rate)), rel=1e-6
    )
