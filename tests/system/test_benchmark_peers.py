"""The PyTorch peers of benchmarks/run_all.py's meta-learning rows compute what metalearn
computes: on one small batch, the gradient of each peer loop's loss (the function the
benchmark times, float64) equals metalearn's meta-gradient (FOMAML, ANIL, Meta-SGD and
MAML through conv4 at Omniglot shapes), and the Reptile peer's update equals metalearn's
Reptile step on the sinusoid demo's settings. A peer that computed something else would
make the speed ratio a wrong comparison. Skipped without torch (CI's torch step runs
them)."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import metalearn as ml  # noqa: E402

pytestmark = pytest.mark.torch

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCH))

import conv_maml  # noqa: E402
import run_all  # noqa: E402


def _close(actual, expected, scale, what):
    """float32 against float64: `scale` is the largest reference magnitude of the whole
    gradient (a conv bias ahead of batch norm has a gradient of exactly 0, which float32
    meets only to rounding)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=1e-4 * scale, err_msg=what)


@pytest.mark.parametrize("algorithm", ["fomaml", "anil", "metasgd", "maml"])
def test_conv4_peer_meta_gradient_matches_metalearn(algorithm):
    from metalearn.tasks import NWayKShot

    ml.random.set_seed(3)
    learner = conv_maml.ml_learner(algorithm)
    tasks = NWayKShot(
        run_all._omniglot_like(), conv_maml.N, conv_maml.KS, 4, augment_rotations=False, seed=1
    )
    batch = tasks.sample_batch(2)
    loss, grads = learner.meta_gradients(batch)
    weights = [np.asarray(w) for w in learner.model.trainable_weights]
    params = [p.detach().double().requires_grad_() for p in conv_maml.torch_params(weights)]
    rates = []
    if algorithm == "metasgd":
        rates = [
            torch.tensor(conv_maml.torch_layout(a), dtype=torch.float64, requires_grad=True)
            for a in learner.learning_rates
        ]
    tb = conv_maml.torch_batch(batch)
    tb = (tb[0].double(), tb[1], tb[2].double(), tb[3])
    meta = conv_maml.torch_meta_loss(algorithm, params, rates, tb)
    ref = torch.autograd.grad(meta, params + rates)
    assert abs(loss - meta.item()) < 1e-4 * max(1.0, abs(meta.item()))
    assert len(grads) == len(ref)
    scale = max(float(r.abs().max()) for r in ref)
    for i, (g, r) in enumerate(zip(grads, ref)):
        # back to metalearn's layouts (HWIO kernels, (in, out) head); Meta-SGD's rates last
        _close(g, conv_maml.ml_layout(r.numpy()), scale, f"{algorithm}: meta-gradient {i}")
    if algorithm == "fomaml":
        # not MAML's: the second-order term is absent (the two peers differ measurably)
        full = conv_maml.torch_meta_loss("maml", params, [], tb)
        second = torch.autograd.grad(full, params)
        assert any(
            not np.allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-6) for a, b in zip(second, ref)
        )


def test_reptile_peer_update_matches_metalearn():
    # the timed path: Reptile.fit on the demo's settings (vectorised, traced from the second
    # meta-iteration on), one meta-iteration on a fixed batch after a first one
    from metalearn.meta import Reptile, models
    from metalearn.tasks import Sinusoid, Task

    s = run_all.REPTILE
    ml.random.set_seed(5)
    learner = Reptile(
        models.sinusoid_mlp(), inner_lr=s["inner_lr"], inner_steps=s["inner_steps"], epsilon=1.0
    )
    sampler = Sinusoid(k_shot=s["k_shot"], q_queries=s["queries"], seed=2)
    for _ in range(2):  # the second fit replays the recorded trace
        bt = sampler.sample_batch(s["meta_batch"])
        batch = Task(*bt, info={"batched": True})
        theta = [np.asarray(w, dtype=np.float64).copy() for w in learner.model.trainable_weights]
        hist = learner.fit(batch, iterations=1, meta_batch_size=s["meta_batch"], verbose=0)
        params = [torch.tensor(t) for t in theta]
        tb = tuple(torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in bt)
        direction, qloss = run_all.torch_reptile_direction(
            params, tb, s["inner_lr"], s["inner_steps"]
        )
        moved = max(float(d.abs().max()) for d in direction)
        assert moved > 1e-3  # the update is not vacuous
        for w, t, d in zip(learner.model.trainable_weights, theta, direction):
            expected = t - s["epsilon"] * d.numpy()
            np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-4, atol=1e-5 * moved)
        assert abs(hist["loss"][-1] - qloss) < 1e-4 * max(1.0, qloss)
