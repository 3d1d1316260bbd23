"""fit(..., time_budget=seconds) on every meta algorithm and on keras.Model.fit (issue
27): the run stops at the first iteration (batch) boundary at or past the budget, and the
history says why. A fake clock, advanced by a fixed amount per step from a callback,
makes the stopping point exact."""

import time

import numpy as np
import pytest

from metalearn import keras
from metalearn.meta import ANIL, FOMAML, MAML, MetaSGD, ProtoNet, Reptile
from metalearn.tasks import NWayKShot, Sinusoid
from tests.helpers import sinusoid_model


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """Models built here draw from (or reseed) the global generator: its state is put
    back, so the tests that follow draw what they would have alone."""
    from metalearn import _core

    state = _core.rng_state()
    yield
    _core.rng_set_state(state)


class FakeClock:
    """time.monotonic replaced: it moves only when `tick` is called."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def tick(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def _learner(name):
    if name == "protonet":
        model = keras.Sequential([keras.layers.Input((6,)), keras.layers.Dense(4)])
        return ProtoNet(model)
    make = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "metasgd": MetaSGD, "anil": ANIL}
    return make[name](sinusoid_model(5))


def _tasks(name):
    if name == "protonet":
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 6)).astype(np.float32)
        y = np.repeat(np.arange(8), 5)
        return NWayKShot((x, y), n_way=3, k_shot=1, q_queries=2, augment_rotations=False, seed=0)
    return Sinusoid(seed=0)


ALGORITHMS = ["maml", "fomaml", "reptile", "metasgd", "anil", "protonet"]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_meta_fit_stops_at_the_first_iteration_past_the_budget(name, clock):
    learner = _learner(name)
    # each iteration "takes" 1 s: the budget of 3.5 s runs out during the 4th, which
    # finishes; a 5th never starts
    h = learner.fit(
        _tasks(name),
        iterations=50,
        meta_batch_size=2,
        verbose=0,
        callbacks=[lambda i, logs: clock.tick(1.0)],
        time_budget=3.5,
    )
    assert len(h["loss"]) == 4 and learner.iterations == 4
    assert h["stopped"] == "time_budget"


def test_meta_fit_within_budget_runs_every_iteration_and_says_nothing(clock):
    learner = _learner("maml")
    h = learner.fit(
        Sinusoid(seed=0),
        iterations=3,
        meta_batch_size=2,
        verbose=0,
        callbacks=[lambda i, logs: clock.tick(1.0)],
        time_budget=10,
    )
    assert len(h["loss"]) == 3 and "stopped" not in h
    # the budget ending exactly with the last iteration is not a stop either
    h = learner.fit(
        Sinusoid(seed=0),
        iterations=3,
        meta_batch_size=2,
        verbose=0,
        callbacks=[lambda i, logs: clock.tick(1.0)],
        time_budget=3,
    )
    assert len(h["loss"]) == 3 and "stopped" not in h


@pytest.mark.parametrize(
    "bad, exc",
    [
        (0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("60", TypeError),
        (True, TypeError),
    ],
)
def test_bad_time_budget_refused_before_any_work(bad, exc):
    learner = _learner("maml")
    before = [np.array(w) for w in learner.model.get_weights()] if learner.model.built else None
    with pytest.raises(exc, match="time_budget"):
        learner.fit(Sinusoid(seed=0), iterations=3, meta_batch_size=2, verbose=0, time_budget=bad)
    assert learner.iterations == 0
    if before is not None:
        for a, b in zip(before, learner.model.get_weights()):
            np.testing.assert_array_equal(a, b)


def _dense_model():
    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


class Tick(keras.callbacks.Callback):
    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        self.clock.tick(self.seconds)


def test_model_fit_stops_at_the_first_batch_past_the_budget(clock):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = _dense_model()
    tick = Tick(clock, 1.0)
    # 10 batches an epoch, 1 s each: a 12.5 s budget ends during the 13th batch (the 3rd
    # of epoch 2), which finishes; that epoch's logs are recorded
    h = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[tick], time_budget=12.5)
    assert tick.batches == 13
    assert len(h.history["loss"]) == 2 and h.epoch == [0, 1]
    assert h.stopped == "time_budget" and model.history is h
    # a later fit without a budget is not stopped by the old one
    h2 = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[tick])
    assert tick.batches == 23 and h2.stopped is None


def test_model_fit_budget_at_epoch_end_and_refusals(clock):
    x = np.ones((8, 3), np.float32)
    y = np.ones((8, 1), np.float32)
    model = _dense_model()
    tick = Tick(clock, 1.0)
    # 2 batches an epoch; the budget runs out at the end of epoch 2: epoch 3 never starts
    h = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[tick], time_budget=4)
    assert tick.batches == 4 and len(h.history["loss"]) == 2 and h.stopped == "time_budget"
    # all epochs done inside the budget: not a stop
    h = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[tick], time_budget=100)
    assert h.stopped is None and len(h.history["loss"]) == 2
    w = [np.array(v) for v in model.get_weights()]
    for bad, exc in [(0, ValueError), ("1", TypeError), (float("nan"), ValueError)]:
        with pytest.raises(exc, match="time_budget"):
            model.fit(x, y, batch_size=4, epochs=1, verbose=0, time_budget=bad)
    for a, b in zip(w, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_metalearner_fit_stops_at_the_first_iteration_past_the_budget(clock, monkeypatch):
    from metalearn.meta import MetaLearner

    rng = np.random.default_rng(0)
    x = rng.random((40, 28, 28)).astype(np.float32)
    y = np.repeat(np.arange(8), 5)
    tasks = NWayKShot((x, y), n_way=3, k_shot=1, q_queries=2, augment_rotations=False, seed=0)
    system = MetaLearner(n_way=3, hidden_units=8, memory_capacity=64, seed=0)
    meta_step = system.algorithm._meta_step

    def step_taking_one_second(batch):  # MetaLearner.fit has no callbacks: the clock
        out = meta_step(batch)  # moves with each meta-step instead
        clock.tick(1.0)
        return out

    monkeypatch.setattr(system.algorithm, "_meta_step", step_taking_one_second)
    h = system.fit(tasks, iterations=50, meta_batch_size=2, verbose=0, time_budget=2.5)
    assert len(h["loss"]) == 3 and h["stopped"] == "time_budget"
    with pytest.raises(ValueError, match="time_budget"):
        system.fit(tasks, iterations=1, meta_batch_size=2, verbose=0, time_budget=-1)
