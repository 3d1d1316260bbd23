"""MAML with a differentiable inner optimizer (momentum, Adam): the second-order
meta-gradient against a PyTorch float64 reference written from the update rules
(tests/reference/generate_inner_optim.py), plain SGD unchanged, learning, bad input."""

import numpy as np
import pytest

from metalearn import keras, meta
from metalearn.tasks import Sinusoid
from metalearn.tasks.base import Task
from tests.helpers import REFERENCE

REF = np.load(REFERENCE / "inner_optim.npz")


def _model():
    m = keras.Sequential(
        [keras.layers.Dense(8, activation="tanh", input_shape=(1,)), keras.layers.Dense(1)]
    )
    m.set_weights([REF[n] for n in ("W1", "b1", "W2", "b2")])
    return m


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_second_order_meta_gradient_through_the_moments_matches_pytorch(opt):
    learner = meta.MAML(
        _model(),
        inner_lr=float(REF["lr"]),
        inner_steps=2,
        inner_optimizer=opt,
        inner_momentum=float(REF["mu"]),
        inner_betas=(float(REF["beta1"]), float(REF["beta2"])),
        inner_epsilon=float(REF["eps"]),
    )
    batch = Task(REF["xs"][None], REF["ys"][None], REF["xq"][None], REF["yq"][None])
    loss, grads = learner.meta_gradients(batch)
    assert loss == pytest.approx(float(REF[f"{opt}/loss"]), rel=1e-5)
    for g, n in zip(grads, ("W1", "b1", "W2", "b2")):
        np.testing.assert_allclose(np.asarray(g), REF[f"{opt}/grad/{n}"], rtol=2e-3, atol=1e-5)


def test_the_inner_optimizers_differ_and_sgd_is_the_plain_step():
    batch = Task(REF["xs"][None], REF["ys"][None], REF["xq"][None], REF["yq"][None])
    losses = {}
    for opt in ("sgd", "momentum", "adam"):
        losses[opt] = meta.MAML(
            _model(), inner_lr=0.01, inner_steps=2, inner_optimizer=opt, vectorize=False
        ).meta_gradients(batch)[0]
    plain = meta.MAML(_model(), inner_lr=0.01, inner_steps=2, vectorize=False)
    assert losses["sgd"] == plain.meta_gradients(batch)[0]
    assert len({round(v, 6) for v in losses.values()}) == 3


def test_maml_with_inner_adam_learns_sinusoids():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Dense(40, activation="relu", input_shape=(1,)),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    learner = meta.MAML(model, inner_lr=0.01, inner_steps=2, inner_optimizer="adam")
    before = learner.evaluate(Sinusoid(seed=1), episodes=50)["mse"]
    learner.fit(Sinusoid(k_shot=10, seed=0), iterations=1000, meta_batch_size=10, verbose=0)
    after = learner.evaluate(Sinusoid(seed=1), episodes=50)["mse"]
    assert after < 0.7 * before  # (MAML with inner SGD: far lower; Adam steps are sign-like)


def test_bad_inner_optimizer_settings_are_refused():
    for kwargs, match in (
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer must be one of"),
        ({"inner_optimizer": "adam", "inner_betas": (0.9, 1.0)}, "inner_betas"),
        ({"inner_optimizer": "momentum", "inner_momentum": -0.1}, "inner_momentum"),
    ):
        with pytest.raises(ValueError, match=match):
            meta.MAML(_model(), **kwargs)
