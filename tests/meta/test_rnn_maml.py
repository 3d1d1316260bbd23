"""Meta-learning through recurrent layers: the second-order MAML meta-gradient through an
LSTM against PyTorch (``nn.LSTM`` through ``torch.func.functional_call``, float64;
``tests/reference/generate_lstm_maml.py``), and MAML / FOMAML / ANIL / Reptile learning
a few-shot sequence regression on models with LSTM and GRU layers."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.meta import ANIL, FOMAML, MAML, Reptile
from metalearn.tasks import Task
from tests.helpers import REFERENCE

REF = np.load(REFERENCE / "lstm_maml.npz")
NAMES = ["kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias"]


def fixture_model():
    xs = REF["xs"]
    model = keras.Sequential(
        [
            keras.Input(xs.shape[2:]),
            keras.layers.LSTM(REF["w/dense_kernel"].shape[0]),
            keras.layers.Dense(1),
        ]
    )
    model.set_weights([REF["w/" + k] for k in NAMES])
    return model


def fixture_batch():
    return Task(REF["xs"], REF["ys"], REF["xq"], REF["yq"], {"batched": True})


@pytest.mark.parametrize("order", [2, 1])
def test_lstm_meta_gradient_matches_pytorch(order):
    model = fixture_model()
    before = model.get_weights()
    maml = MAML(
        model,
        inner_lr=float(REF["inner_lr"]),
        inner_steps=int(REF["inner_steps"]),
        first_order=(order == 1),
        loss="mse",
    )
    loss, grads = maml.meta_gradients(fixture_batch())
    np.testing.assert_allclose(loss, float(REF["loss"]), rtol=1e-5)
    for k, g in zip(NAMES, grads):
        ref = REF[f"grad{order}/{k}"]
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=2e-5, err_msg=k)
    # the other order is far from this one: the check tells the orders apart
    other = REF[f"grad{3 - order}/bias"]
    assert np.abs(np.asarray(grads[2]) - other).max() > 1e-3
    for a, b in zip(before, model.get_weights()):  # meta_gradients changes no weight
        np.testing.assert_array_equal(a, b)


class SequenceTasks:
    """Few-shot sequence regression: a task is a random linear read-out of a sequence
    (y = sum_t sum_f c_f x_tf with a task's own c), from 5 support sequences."""

    def __init__(self, seed, steps=6, features=2, k_shot=5, q_queries=10):
        self.rng = np.random.default_rng(seed)
        self.shape = (steps, features)
        self.k, self.q = k_shot, q_queries

    def sample_batch(self, n):
        c = self.rng.uniform(-1, 1, (n, 1, 1, self.shape[1]))
        x = self.rng.uniform(-1, 1, (n, self.k + self.q) + self.shape)
        y = (x * c).sum(axis=(2, 3))[..., None] / 3.0
        x, y = x.astype(np.float32), y.astype(np.float32)
        k = self.k
        return Task(x[:, :k], y[:, :k], x[:, k:], y[:, k:], {"batched": True})


def seq_model(kind):
    ml.random.set_seed(1)
    rnn = keras.layers.LSTM(16) if kind == "lstm" else keras.layers.GRU(16)
    return keras.Sequential([keras.Input((6, 2)), rnn, keras.layers.Dense(1)])


def query_mse_after_adapting(learner, tasks, steps=1):
    b = tasks.sample_batch(8)
    errs = []
    for t in range(8):
        adapted = learner.adapt(b.support_x[t], b.support_y[t], steps=steps)
        errs.append(float(np.mean((adapted.predict(b.query_x[t], verbose=0) - b.query_y[t]) ** 2)))
    return float(np.mean(errs))


@pytest.mark.parametrize(
    "algo,kind,kwargs,iterations,ratio",
    [
        (MAML, "lstm", {"inner_lr": 0.3, "meta_lr": 0.01}, 60, 0.7),  # second order
        (MAML, "gru", {"inner_lr": 0.3, "meta_lr": 0.01}, 60, 0.7),
        (FOMAML, "lstm", {"inner_lr": 0.3, "meta_lr": 0.01}, 60, 0.7),
        (ANIL, "gru", {"inner_lr": 0.3, "meta_lr": 0.01}, 60, 0.7),
        # Reptile's meta_lr is its epsilon (plain SGD on the difference); it learns slower
        (Reptile, "lstm", {"inner_lr": 0.3, "inner_steps": 3, "meta_lr": 1.0}, 200, 0.85),
    ],
)
def test_meta_learns_a_sequence_task(algo, kind, kwargs, iterations, ratio):
    learner = algo(seq_model(kind), loss="mse", **kwargs)
    steps = learner.inner_steps
    before = query_mse_after_adapting(learner, SequenceTasks(seed=99), steps)
    learner.fit(SequenceTasks(seed=0), iterations=iterations, meta_batch_size=4, verbose=0)
    after = query_mse_after_adapting(learner, SequenceTasks(seed=99), steps)
    assert np.isfinite(after) and after < ratio * before, (before, after)
