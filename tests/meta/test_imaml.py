"""iMAML: the implicit meta-gradient against the exact one of the proximal problem solved
to convergence (PyTorch float64, tests/reference/generate_imaml.py), memory that does not
depend on the inner steps' graph, learning, bad input."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.meta import IMAML, MAML
from metalearn.tasks import Sinusoid, Task
from tests.helpers import REFERENCE, sinusoid_model

REF = np.load(REFERENCE / "imaml.npz")
NAMES = ["W1", "b1", "W2", "b2"]


def _model():
    model = keras.Sequential(
        [keras.layers.Dense(4, activation="tanh", input_shape=(2,)), keras.layers.Dense(1)]
    )
    model.set_weights([REF["mlp/" + k] for k in NAMES])
    return model


def _batch():
    return Task(
        REF["xs"][None], REF["ys"][None], REF["xq"][None], REF["yq"][None], {"batched": True}
    )


def test_implicit_gradient_matches_the_exact_one():
    # inner loop run to convergence (contraction 1 - lr * lam per step, plus the loss's
    # curvature) and CG with as many steps as parameters (17): the exact solve
    learner = IMAML(_model(), inner_lr=0.1, inner_steps=300, lam=float(REF["lam"]), cg_steps=17)
    loss, grads = learner.meta_gradients(_batch())
    phi = learner.adapted_weights(REF["xs"], REF["ys"])
    for k, w in zip(NAMES, phi):
        np.testing.assert_allclose(np.asarray(w), REF[f"phi/{k}"], rtol=1e-4, atol=1e-5, err_msg=k)
    assert abs(loss - float(REF["loss"])) < 1e-5
    for k, g in zip(NAMES, grads):
        np.testing.assert_allclose(np.asarray(g), REF[f"grad/{k}"], rtol=1e-3, atol=1e-5, err_msg=k)
    # the implicit correction matters: the plain query gradient is far off
    assert np.abs(np.asarray(grads[0]) - REF["naive/W1"]).max() > 1e-2


def test_damped_system_matches_the_official_codes():
    # aravindr93/imaml_dev's conjugate gradient solves ((1 + damping) I + H / (lam +
    # lam_damping)) v = g; with 17 CG steps (the dimension) the solve is exact
    learner = IMAML(
        _model(),
        inner_lr=0.1,
        inner_steps=300,
        lam=float(REF["lam"]),
        cg_steps=17,
        cg_damping=float(REF["damping"]),
        lam_damping=float(REF["lam_damping"]),
    )
    _, grads = learner.meta_gradients(_batch())
    for k, g in zip(NAMES, grads):
        np.testing.assert_allclose(
            np.asarray(g), REF[f"damped/{k}"], rtol=1e-3, atol=1e-5, err_msg=k
        )
    # damping changes the answer: it is not the undamped gradient
    assert np.abs(np.asarray(grads[0]) - REF["grad/W1"]).max() > 1e-2


def test_few_cg_steps_approximate_it():
    exact = IMAML(_model(), inner_lr=0.1, inner_steps=300, lam=float(REF["lam"]), cg_steps=17)
    few = IMAML(_model(), inner_lr=0.1, inner_steps=300, lam=float(REF["lam"]), cg_steps=5)
    _, g17 = exact.meta_gradients(_batch())
    _, g5 = few.meta_gradients(_batch())
    flat = lambda gs: np.concatenate([np.asarray(g).ravel() for g in gs])
    ref = np.concatenate([REF[f"grad/{k}"].ravel() for k in NAMES])
    naive = np.concatenate([REF[f"naive/{k}"].ravel() for k in NAMES])
    assert np.linalg.norm(flat(g5) - ref) < 0.2 * np.linalg.norm(naive - ref)
    assert np.linalg.norm(flat(g17) - ref) < 1e-3 * np.linalg.norm(ref)


_PEAK = """
import resource, sys


def peak():
    # VmHWM: this process's own high-water mark (ru_maxrss starts at the parent's
    # resident size, kept across fork and exec, and would hide a smaller peak)
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


import numpy as np
from metalearn import keras
from metalearn.meta import IMAML, MAML
from metalearn.tasks import Task
rng = np.random.default_rng(0)
model = keras.Sequential([keras.layers.Dense(512, activation="tanh", input_shape=(256,)),
                          keras.layers.Dense(512, activation="tanh"), keras.layers.Dense(1)])
x = rng.standard_normal((1, 200, 256)).astype(np.float32)
y = rng.standard_normal((1, 200, 1)).astype(np.float32)
batch = Task(x, y, x, y, {"batched": True})
cls, steps = sys.argv[1], int(sys.argv[2])
kw = dict(lam=1.0, cg_steps=2) if cls == "IMAML" else dict(vectorize=False)
learner = {"IMAML": IMAML, "MAML": MAML}[cls](model, inner_lr=1e-4, inner_steps=1, **kw)
learner.meta_gradients(batch)  # warm: allocator pools, the model's build
before = peak()
learner.inner_steps = steps
learner.meta_gradients(batch)
print(peak() - before)
"""


def _peak_kib(cls, steps):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PEAK, cls, str(steps)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_inner_steps():
    """Peak memory of one meta-gradient, each in a fresh process: MAML's grows with the
    inner steps (their graph is kept for the second-order meta-gradient), iMAML's does
    not (the steps are not recorded; only one Hessian-vector product at the solution)."""
    maml = {s: _peak_kib("MAML", s) for s in (1, 20)}
    imaml = {s: _peak_kib("IMAML", s) for s in (1, 5, 20)}
    maml_growth = maml[20] - maml[1]
    assert maml_growth > 20_000, maml  # > 20 MiB: the measurement sees the graph
    assert imaml[20] - imaml[1] < 0.1 * maml_growth, (imaml, maml)
    assert imaml[5] - imaml[1] < 0.1 * maml_growth, (imaml, maml)


def test_learns_sinusoids():
    ml.random.set_seed(0)
    # lam 5: the proximal problem is well conditioned and its gradient descent converges
    # (with lam 2 and inner_lr 0.02 the meta-learned init drifts to where it diverges)
    learner = IMAML(
        sinusoid_model(), inner_lr=0.01, inner_steps=10, lam=5.0, cg_steps=3, meta_lr=0.003
    )
    test = Sinusoid(k_shot=10, q_queries=20, seed=99).sample_batch(100)
    untrained = learner.evaluate(test, steps=[0, 10])
    learner.fit(Sinusoid(k_shot=10, seed=0), iterations=300, meta_batch_size=10, verbose=0)
    res = learner.evaluate(test, steps=[0, 10])
    assert res[10]["mse"] < 0.6 * res[0]["mse"], res
    assert res[10]["mse"] < 0.5 * untrained[10]["mse"], (res, untrained)


def test_adapt_is_the_proximal_inner_loop():
    learner = IMAML(_model(), inner_lr=0.1, inner_steps=3, lam=2.0)
    theta = [np.asarray(w).astype(np.float64) for w in learner.model.trainable_weights]
    phi = learner.adapted_weights(REF["xs"], REF["ys"])
    plain = MAML(_model(), inner_lr=0.1, inner_steps=3).adapted_weights(REF["xs"], REF["ys"])
    assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4 for a, b in zip(phi, plain))
    for a, b in zip(theta, learner.model.get_weights()):
        np.testing.assert_array_equal(a.astype(np.float32), b)


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(lam=0.0), ValueError),
        (dict(lam=-1.0), ValueError),
        (dict(lam="1"), TypeError),
        (dict(cg_steps=0), ValueError),
        (dict(cg_steps=2.5), TypeError),
        (dict(inner_steps=-1), ValueError),
        (dict(cg_damping=-0.5), ValueError),
        (dict(cg_damping="1"), TypeError),
        (dict(lam_damping=float("nan")), ValueError),
    ],
)
def test_bad_settings_raise(kw, err):
    with pytest.raises(err):
        IMAML(_model(), **kw)
