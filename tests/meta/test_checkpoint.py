"""Exact resume (metalearn.checkpoint, fit(checkpoint_dir=..., checkpoint_every=...)).

A run killed with SIGKILL after a checkpoint and started again ends with the bits of a run
that was never interrupted (sinusoid MAML with its traced second-order step and Adam, and
ProtoNet with dropout, so training draws from the core's generator, on a small synthetic
N-way task set), each in fresh processes. Corrupt or
mismatched checkpoints are refused and change nothing. The core's pieces a checkpoint needs
(the generator's state, an optimizer's restore) are tested against their own definitions.
"""

import json
import textwrap

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, checkpoint
from metalearn.meta import MAML, MetaSGD
from metalearn.tasks import Sinusoid
from tests.helpers import run_script, sinusoid_model

# One training run in a fresh process: the learner, its samplers and its seeds are made
# the same way each time; KILL_AT kills the process with SIGKILL inside the callback of
# that iteration (after the checkpoint of an earlier one); the final weights are written
# as raw bytes to OUT.
RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import metalearn as ml
    from metalearn.meta import MAML, ProtoNet, models
    from metalearn.keras import layers
    from metalearn.tasks import NWayKShot, Sinusoid

    algo, ckpt, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ml.random.set_seed(3)
    if algo == "maml":
        learner = MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1)
        tasks = Sinusoid(k_shot=5, q_queries=5, seed=11)
        validation = Sinusoid(k_shot=5, q_queries=5, seed=12)
        iterations, mb = 14, 4
    else:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(12 * 6, 8, 8)).astype(np.float32)
        y = np.repeat(np.arange(12), 6)
        enc = ml.keras.models.Sequential(
            [layers.Flatten(input_shape=(8, 8)), layers.Dense(16, activation="relu"),
             layers.Dropout(0.25), layers.Dense(8)])  # draws from the core's generator
        learner = ProtoNet(enc, meta_lr=0.01)
        tasks = NWayKShot((x, y), n_way=3, k_shot=2, q_queries=2, seed=21)
        validation = NWayKShot((x, y), n_way=3, k_shot=2, q_queries=2, seed=22)
        iterations, mb = 14, 2

    def kill(it, logs):
        if it + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    kwargs = {}
    if ckpt != "-":
        kwargs = dict(checkpoint_dir=ckpt, checkpoint_every=4)
    h = learner.fit(tasks, iterations=iterations, meta_batch_size=mb, verbose=0,
                    callbacks=[kill], validation=validation, validate_every=3,
                    validation_episodes=3, keep_best=True, **kwargs)
    # a draw after the run: the global generator ended in the same place
    tail = np.asarray(ml.random.uniform((4,)))
    with open(out, "wb") as f:
        for w in learner.model.weights:
            f.write(np.asarray(w).tobytes())
        for v in learner.meta_optimizer.variables():
            f.write(np.asarray(v).tobytes())
        f.write(np.asarray(h["loss"], np.float64).tobytes())
        f.write(np.asarray(h["val_loss"], np.float64).tobytes())
        f.write(tail.tobytes())
        f.write(np.asarray(tasks.rng.random(3)).tobytes())
    """
)


def _run(tmp_path, *args, expect_kill=False):
    run_script(tmp_path, RUNNER, args, expect_kill=expect_kill)


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_sigkill_then_resume_ends_with_the_uninterrupted_bits(tmp_path, algo):
    whole, resumed, ck = tmp_path / "whole.bin", tmp_path / "resumed.bin", tmp_path / "ck"
    _run(tmp_path, algo, "-", whole, 0)
    # killed at iteration 10: the checkpoint of iteration 8 is the last; 9 and 10 are redone
    _run(tmp_path, algo, ck, resumed, 10, expect_kill=True)
    manifest = json.loads((ck / "checkpoint.json").read_text())
    assert manifest["step"] == 8 and not resumed.exists()
    _run(tmp_path, algo, ck, resumed, 0)
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == 14
    a, b = whole.read_bytes(), resumed.read_bytes()
    assert len(a) == len(b) and a == b
    # one tensor file is left: the older ones go once the new manifest is in place
    assert sorted(p.name for p in ck.iterdir() if p.suffix == ".mlw") == ["tensors-00000014.mlw"]


def _sinusoid_learner(seed=3, opt="adam"):
    ml.random.set_seed(seed)
    return MAML(sinusoid_model(seed), inner_lr=0.01, meta_optimizer=opt)


def _state(learner, tasks):
    return (
        [np.asarray(w).copy() for w in learner.model.weights],
        [np.asarray(v).copy() for v in learner.meta_optimizer.variables()],
        learner.meta_optimizer.iterations,
        ml.random.get_state(),
        tasks.rng.bit_generator.state,
    )


def _same_state(a, b):
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0])) and len(a[0]) == len(b[0])
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1])) and len(a[1]) == len(b[1])
    assert a[2:] == b[2:]


def test_in_process_resume_matches_and_extends(tmp_path):
    """fit to 6 with checkpoints, then a new learner resumes to 10: the same as 10 at once
    (the default first-order-free path without a trace: MetaSGD's extra tensors)."""
    ref = MetaSGD(sinusoid_model(5), inner_lr=0.02)
    ml.random.set_seed(1)
    ref.fit(Sinusoid(seed=4), iterations=10, meta_batch_size=3, verbose=0)
    first = MetaSGD(sinusoid_model(5), inner_lr=0.02)
    ml.random.set_seed(1)
    first.fit(Sinusoid(seed=4), iterations=6, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path)
    again = MetaSGD(sinusoid_model(9), inner_lr=0.02)  # other initial weights: restored
    ml.random.set_seed(77)
    h = again.fit(
        Sinusoid(seed=99), iterations=10, meta_batch_size=3, verbose=0, checkpoint_dir=tmp_path
    )
    assert len(h["loss"]) == 10 and h["loss"][:6] == first.history["loss"]
    assert h["loss"] == ref.history["loss"]
    for a, b in zip(again.model.weights, ref.model.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(again.learning_rates, ref.learning_rates):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert again.meta_optimizer.iterations == ref.meta_optimizer.iterations == 10


def _saved(tmp_path, iterations=4):
    learner = _sinusoid_learner()
    tasks = Sinusoid(seed=2)
    learner.fit(tasks, iterations=iterations, meta_batch_size=2, verbose=0, checkpoint_dir=tmp_path)
    return tmp_path


def _fresh():
    learner = _sinusoid_learner(seed=8)
    tasks = Sinusoid(seed=6)
    learner.fit(tasks, iterations=1, meta_batch_size=2, verbose=0)  # built, stepped once
    return learner, tasks


@pytest.mark.parametrize(
    "damage",
    ["manifest_bytes", "manifest_field", "tensor_bit", "tensor_missing", "version", "truncated"],
)
def test_a_corrupt_checkpoint_is_refused_and_changes_nothing(tmp_path, damage):
    ck = _saved(tmp_path)
    man = ck / "checkpoint.json"
    tensors = ck / "tensors-00000004.mlw"
    if damage == "manifest_bytes":
        man.write_bytes(man.read_bytes()[:-20])
    elif damage == "manifest_field":  # valid JSON, edited: the checksum tells
        m = json.loads(man.read_text())
        m["step"] = 3
        man.write_text(json.dumps(m))
    elif damage == "version":
        m = json.loads(man.read_text())
        m["version"] = 99
        man.write_text(json.dumps(m))
    elif damage == "tensor_bit":
        raw = bytearray(tensors.read_bytes())
        raw[len(raw) // 2] ^= 1
        tensors.write_bytes(bytes(raw))
    elif damage == "tensor_missing":
        tensors.unlink()
    else:
        tensors.write_bytes(tensors.read_bytes()[:100])
    learner, tasks = _fresh()
    before = _state(learner, tasks)
    with pytest.raises(checkpoint.CheckpointError):
        learner.fit(tasks, iterations=8, meta_batch_size=2, verbose=0, checkpoint_dir=ck)
    _same_state(before, _state(learner, tasks))


@pytest.mark.parametrize("change", ["inner_lr", "architecture", "meta_batch_size", "optimizer"])
def test_a_checkpoint_of_another_run_is_refused_and_changes_nothing(tmp_path, change):
    ck = _saved(tmp_path)
    ml.random.set_seed(8)
    kw = dict(iterations=8, meta_batch_size=2, verbose=0, checkpoint_dir=ck)
    if change == "inner_lr":
        learner = MAML(sinusoid_model(8), inner_lr=0.05)
    elif change == "architecture":
        from metalearn.meta import models

        learner = MAML(models.sinusoid_mlp(hidden=(40, 20)), inner_lr=0.01)
    elif change == "optimizer":
        learner = MAML(sinusoid_model(8), inner_lr=0.01, meta_optimizer="sgd")
    else:
        learner = MAML(sinusoid_model(8), inner_lr=0.01)
        kw["meta_batch_size"] = 3
    tasks = Sinusoid(seed=6)
    learner.model(np.zeros((1, 1), np.float32))
    before = _state(learner, tasks)
    with pytest.raises(checkpoint.CheckpointError, match="another run"):
        learner.fit(tasks, **kw)
    _same_state(before, _state(learner, tasks))


def test_a_stale_tensor_file_or_temporary_does_not_matter(tmp_path):
    """A kill between the tensor file and the manifest leaves a newer tensor file (and
    perhaps a temporary) that no manifest names: the committed checkpoint still loads."""
    ck = _saved(tmp_path)
    (ck / "tensors-00000099.mlw").write_bytes(b"half a file")
    (ck / ".mlw.deadbeef00").write_bytes(b"temp")
    c = checkpoint.load(ck)
    assert c.step == 4 and "model/0" in c.tensors


def test_function_tasks_cannot_be_checkpointed(tmp_path):
    learner = _sinusoid_learner()
    s = Sinusoid(seed=0)
    with pytest.raises(TypeError, match="position"):
        learner.fit(s.sample_batch, iterations=2, checkpoint_dir=tmp_path, verbose=0)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="checkpoint_every"):
        learner.fit(s, iterations=2, checkpoint_every=0, checkpoint_dir=tmp_path, verbose=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        learner.fit(s, iterations=2, checkpoint_every=1, verbose=0)


# ------------------------------------------------------------------ core pieces


def test_generator_state_round_trip_repeats_the_draws():
    ml.random.set_seed(5)
    ml.random.uniform((7,))
    state = ml.random.get_state()
    a = np.asarray(ml.random.normal((5,)))
    p = ml.random.permutation(9)
    ml.random.set_seed(123)  # elsewhere
    ml.random.set_state(state)
    assert np.array_equal(np.asarray(ml.random.normal((5,))), a)
    assert np.array_equal(ml.random.permutation(9), p)
    assert len(state) == 4 and all(0 <= w < 2**64 for w in state)


@pytest.mark.parametrize(
    "bad, err",
    [
        ((0, 0, 0, 0), ValueError),
        ((1, 2, 3), ValueError),
        ((1, 2, 3, -1), ValueError),
        ((1, 2, 3, 2**64), ValueError),
        ((1, 2, 3, 1.5), TypeError),
    ],
)
def test_a_bad_generator_state_is_refused_and_changes_nothing(bad, err):
    ml.random.set_seed(9)
    state = ml.random.get_state()
    with pytest.raises(err):
        ml.random.set_state(bad)
    assert ml.random.get_state() == state


def _adam_reference(p, grads, lr=0.1, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' Adam in float64: the moments and the weights after the gradients."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m += (1 - b1) * (g - m)
        v += (1 - b2) * (g * g - v)
        p -= lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return p, m, v


def test_optimizer_restore_continues_as_if_never_stopped():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
    start = rng.normal(size=(3, 4)).astype(np.float32)
    a = _core.Adam(0.1)
    pa = _core.tensor(start.copy())
    for g in grads[:3]:
        a.step([pa], [g])
    b = _core.Adam(0.1)  # a new optimizer given the first's state
    pb = _core.tensor(np.asarray(pa).copy())
    b.restore([pb], a.iterations, [[np.asarray(s) for s in a.slots()[0]]])
    assert b.iterations == 3
    for g in grads[3:]:
        a.step([pa], [g])
        b.step([pb], [g])
    assert np.array_equal(np.asarray(pa), np.asarray(pb))
    ref, m, v = _adam_reference(start, grads)
    np.testing.assert_allclose(np.asarray(pb), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(b.slots()[0][0]), m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(b.slots()[0][1]), v, rtol=1e-4, atol=1e-9)


def test_optimizer_restore_refuses_bad_state_and_changes_nothing():
    o = _core.Adam(0.1)
    p = _core.tensor(np.ones((2, 2), np.float32))
    o.step([p], [np.ones((2, 2), np.float32)])
    before = [np.asarray(s).copy() for s in o.slots()[0]]
    z = np.zeros((2, 2), np.float32)
    for args, err in [
        (([p], 1, [[np.zeros(3, np.float32), z]]), ValueError),  # a slot of another shape
        (([p], 1, [[z]]), ValueError),  # one slot, Adam keeps two
        (([p], -1, [[z, z]]), ValueError),
        (([p], 1, []), ValueError),
        (([_core.tensor(np.ones(3, np.float32))], 1, [[z, z]]), ValueError),  # other param
    ]:
        with pytest.raises(err):
            o.restore(*args)
        assert o.iterations == 1
        assert all(np.array_equal(np.asarray(s), b) for s, b in zip(o.slots()[0], before))
    s = _core.SGD(0.1)  # no momentum: no slots
    q = _core.tensor(np.ones(2, np.float32))
    s.restore([q], 7, [[]])
    assert s.iterations == 7 and s.n_params == 1


@pytest.mark.parametrize("algo", ["Reptile", "ANIL"])
def test_resume_in_process_for_reptile_sgd_and_anil(tmp_path, algo):
    """Reptile's plain SGD keeps no slots, ANIL adapts only the head: both resume exactly."""
    from metalearn import meta

    def run(iterations, directory=None, model_seed=0):
        ml.random.set_seed(model_seed)
        learner = getattr(meta, algo)(meta.models.sinusoid_mlp())
        kw = {} if directory is None else dict(checkpoint_dir=directory, checkpoint_every=2)
        h = learner.fit(Sinusoid(seed=1), iterations=iterations, meta_batch_size=2, verbose=0, **kw)
        return learner, h

    ref, h_ref = run(7)
    run(3, tmp_path)
    learner, h = run(7, tmp_path, model_seed=5)  # other initial weights: the checkpoint's win
    assert h["loss"] == h_ref["loss"]
    for a, b in zip(learner.model.weights, ref.model.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b))
