"""Reptile's inner loop as the authors' code runs it (openai/supervised-reptile): Adam with
its state carried across tasks and meta-iterations, mini-batches of the support cut from
permutations; checked against a PyTorch float64 run of their loop (one persistent
torch.optim.Adam, tests/reference/generate_reptile_authors.py)."""

from pathlib import Path

import numpy as np
import pytest

import metalearn as ml
from metalearn import distributed, keras
from metalearn.meta import Reptile
from metalearn.tasks import Sinusoid, Task
from tests.helpers import sinusoid_model

REF = np.load(Path(__file__).resolve().parents[1] / "reference" / "reptile_authors.npz")
NAMES = ["W1", "b1", "W2", "b2"]


def _reference_model():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )
    model.set_weights([REF[n] for n in NAMES])
    return model


def _batch(i):
    sx = np.stack([REF[f"sx{i}_{t}"] for t in range(3)])
    sy = np.stack([REF[f"sy{i}_{t}"] for t in range(3)])
    return Task(sx, sy, sx, sy, info={"batched": True})


def _feed_permutations(monkeypatch):
    """metalearn's Reptile draws the fixture's permutations, in the fixture's order."""
    perms = [p.copy() for p in REF["perms"]]

    def permutation(n, seed=None):
        assert n == perms[0].shape[0]
        return perms.pop(0)

    monkeypatch.setattr(ml.random, "permutation", permutation)
    return perms


@pytest.mark.parametrize("case", ["carry", "reset"])
def test_inner_loop_matches_the_authors_loop_in_pytorch(monkeypatch, case):
    perms = _feed_permutations(monkeypatch)
    model = _reference_model()
    alg = Reptile(
        model,
        inner_lr=float(REF["lr"]),
        inner_steps=int(REF["steps"]),
        meta_lr=float(REF["epsilon"]),
        inner_optimizer="adam",
        inner_betas=(0.0 if case == "carry" else 0.9, float(REF["beta2"])),
        inner_epsilon=float(REF["eps"]),
        inner_batch_size=int(REF["batch"]),
        inner_state=case,
    )
    for i in range(int(REF["iterations"])):
        alg.fit(_batch(i), iterations=1, meta_batch_size=3, verbose=0)
    for n, w in zip(NAMES, model.get_weights()):
        np.testing.assert_allclose(w, REF[f"{case}/{n}"], rtol=1e-4, atol=1e-5, err_msg=n)
    if case == "carry":
        carried = [np.array(t, copy=True) for t in alg._state_tensors()]
        assert carried[-1][0] == REF["carry/t"] == 18  # 2 iterations x 3 tasks x 3 steps
        for n, v in zip(NAMES, carried[4:8]):
            np.testing.assert_allclose(v, REF[f"carry/v/{n}"], rtol=1e-4, atol=1e-9, err_msg=n)
        assert np.abs(carried[0]).max() > 0  # beta_1 = 0: the last gradient
    else:
        assert alg._state_tensors() == []
    # adapting a new task starts from the carried state and leaves it as it was
    adapted = alg.adapt(REF["ax"], REF["ay"]).get_weights()
    assert not perms  # every permutation the reference drew was used, in order
    for n, w in zip(NAMES, adapted):
        np.testing.assert_allclose(w, REF[f"{case}/adapted/{n}"], rtol=1e-4, atol=1e-5, err_msg=n)
    if case == "carry":
        for a, b in zip(alg._state_tensors(), carried):
            assert np.array_equal(np.asarray(a), b)


def _authors(model, **kw):
    args = dict(
        inner_lr=0.01,
        inner_steps=3,
        inner_optimizer="adam",
        inner_betas=(0.0, 0.999),
        inner_batch_size=4,
        inner_state="carry",
    )
    args.update(kw)
    return Reptile(model, **args)


def test_checkpoint_resumes_the_carried_state_and_the_batches_exactly(tmp_path):
    ref = _authors(sinusoid_model(5))
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=6, meta_batch_size=3, verbose=0)
    first = _authors(sinusoid_model(5))
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=3, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path)
    again = _authors(sinusoid_model(9))  # other weights, state and generator: all restored
    ml.random.set_seed(77)
    h = again.fit(
        Sinusoid(seed=99), iterations=6, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path
    )
    assert h["loss"] == ref.history["loss"]
    for a, b in zip(again.model.weights, ref.model.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(again._state_tensors(), ref._state_tensors()):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert float(np.asarray(ref._state_tensors()[-1])[0]) == 6 * 3 * 3


def test_mini_batches_train_on_subsets_and_adapt_is_repeatable():
    task = Sinusoid(seed=3).sample()  # 10 support points
    whole = Reptile(sinusoid_model(2), inner_lr=0.01, inner_steps=3)
    batched = Reptile(sinusoid_model(2), inner_lr=0.01, inner_steps=3, inner_batch_size=4)
    a = whole.adapt(task.support_x, task.support_y).get_weights()
    b = batched.adapt(task.support_x, task.support_y).get_weights()
    c = batched.adapt(task.support_x, task.support_y).get_weights()
    assert any(not np.allclose(x, y) for x, y in zip(a, b))  # other points per step
    assert all(np.array_equal(x, y) for x, y in zip(b, c))  # the fixed seed of adapt
    # a batch no smaller than the support is the whole support: plain Reptile's weights
    big = Reptile(sinusoid_model(2), inner_lr=0.01, inner_steps=3, inner_batch_size=10)
    d = big.adapt(task.support_x, task.support_y).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, d))


def test_meta_gradients_and_a_refused_step_leave_the_carried_state():
    alg = _authors(sinusoid_model(1))
    alg.fit(Sinusoid(seed=1), iterations=2, meta_batch_size=2, verbose=0)
    before = [np.array(t, copy=True) for t in alg._state_tensors()]
    weights = alg.model.get_weights()
    alg.meta_gradients(Sinusoid(seed=2).sample_batch(2))
    # a step refused after the inner loops ran: a NaN target makes the direction NaN
    bad = Sinusoid(seed=2).sample_batch(2)
    sy = np.array(bad.support_y, copy=True)
    sy[1, 0] = np.nan
    bad = Task(bad.support_x, sy, bad.query_x, bad.query_y, info=bad.info)
    ml.debugging.enable_check_numerics()
    try:
        with pytest.raises(ml.debugging.NonFiniteError):
            alg.fit(bad, iterations=1, meta_batch_size=2, verbose=0)
    finally:
        ml.debugging.disable_check_numerics()
    for a, b in zip(alg._state_tensors(), before):
        assert np.array_equal(np.asarray(a), b)
    for a, b in zip(alg.model.get_weights(), weights):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inner_state": "keep"}, "inner_state must be one of"),
        ({"inner_state": "carry"}, "needs inner_optimizer 'momentum' or 'adam'"),
        ({"inner_batch_size": 0}, "inner_batch_size"),
        ({"inner_batch_size": 2.5}, "inner_batch_size"),
        ({"inner_batch_size": 4, "vectorize": True}, "inner_batch_size draws each task"),
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer must be one of"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Reptile(sinusoid_model(0), **kwargs)


@pytest.mark.parametrize("kw", [{}, {"inner_state": "reset"}])
def test_data_parallel_refuses_the_sequential_inner_loop(kw):
    alg = _authors(sinusoid_model(0), **kw)
    w = alg.model.get_weights() if alg.model.built else None
    with distributed.DataParallel().scope():
        with pytest.raises(ValueError, match="DataParallel: not supported: Reptile with"):
            alg.fit(Sinusoid(seed=0), iterations=1, meta_batch_size=2, verbose=0)
    if w is not None:
        for a, b in zip(alg.model.get_weights(), w):
            assert np.array_equal(a, b)
