"""Exact resume of ``MetaLearner.fit`` (``checkpoint_dir=``, ``checkpoint_every=``).

A run stopped half-way (in-process, or a process killed with SIGKILL mid-run) and resumed
from its checkpoint ends with the bits of a run that was never interrupted, for every
piece of the system's state: the algorithm's weights (and Meta-SGD's rates) and
meta-optimizer, the predictor's weights and Adam moments, its training buffer, the
embedding centre, the knowledge memory (its slots and its file, generator included), the
stored tasks' information, the system's, the core's and the sampler's generators, and the
history. Sizes are chosen so that every piece moves: the memory (5 slots) and the buffer
(7 rows) overflow, and the predictor's batch (6) draws rows from the buffer with the
system's generator. Synthetic 6x6 "images": no dataset needed.
"""

import json
import pickle
import textwrap

import numpy as np
import pytest

import metalearn as ml
from metalearn.checkpoint import CheckpointError
from metalearn.meta.system import MetaLearner
from metalearn.networks import MetaLearningNetwork
from metalearn.tasks import NWayKShot
from tests.helpers import run_script

ITERATIONS, BATCH = 8, 2


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10 * 6, 6, 6)).astype(np.float32)
    return x, np.repeat(np.arange(10), 6)


def _make(algorithm="maml", predictor_lr=1e-3, sampler_cls=NWayKShot, query_features=False):
    """A system and its sampler, made the same way each time."""
    ml.random.set_seed(3)
    system = MetaLearner(
        n_way=3,
        algorithm=algorithm,
        hidden_units=12,
        memory_capacity=5,
        predictor=MetaLearningNetwork(8),
        predictor_lr=predictor_lr,
        predictor_buffer=7,
        predictor_batch=6,
        seed=5,
        query_features=query_features,
    )
    tasks = sampler_cls(_data(), n_way=3, k_shot=2, q_queries=2, augment_rotations=False, seed=21)
    return system, tasks


def _snapshot(system, tasks, tmp_path, history=None):
    """Every piece of state, as bytes or plain values (copies)."""
    snap = {"global_rng": ml.random.get_state(), "tasks_rng": tasks.rng.bit_generator.state}
    if system.memory is None:  # never built
        snap["built"] = False
        return snap
    alg = system.algorithm
    snap["weights"] = [np.asarray(w).tobytes() for w in alg.model.weights]
    snap["rates"] = [np.asarray(a).tobytes() for a in getattr(alg, "learning_rates", None) or []]
    snap["meta_opt"] = [np.asarray(v).tobytes() for v in alg.meta_optimizer.variables()]
    snap["meta_opt_it"] = int(alg.meta_optimizer.iterations)
    snap["alg_iterations"] = alg.iterations
    snap["predictor"] = [np.asarray(w).tobytes() for w in system.predictor.weights]
    snap["pred_opt"] = [np.asarray(v).tobytes() for v in system.predictor_optimizer.variables()]
    snap["pred_opt_it"] = int(system.predictor_optimizer.iterations)
    snap["buffer_x"] = [r.tobytes() for r in system._buffer_x]
    snap["buffer_l"] = [r.tobytes() for r in system._buffer_l]
    snap["buffer_t"] = np.asarray(system._buffer_t, np.float64).tobytes()
    snap["buffer_c"] = [np.asarray(c, np.float64).tobytes() for c in system._buffer_c]
    # the predictor's input/target standardisation, when it is on
    snap["standardization"] = [
        None if a is None else np.asarray(a, np.float64).tobytes()
        for a in (system._feature_mean, system._feature_scale, system._target)
    ]
    snap["center"] = np.asarray(system.center).tobytes()
    snap["center_count"] = system._center_count
    snap["tasks_stored"] = system.tasks_stored
    snap["task_info"] = {
        k: {n: (np.asarray(v).dtype.str, np.asarray(v).tobytes()) for n, v in d.items()}
        for k, d in system.task_info.items()
    }
    snap["memory"] = [np.asarray(a).tobytes() for a in system.memory.state()]
    path = tmp_path / "snap.mlmem"
    system.memory.save(str(path))  # the file holds the memory's generator too
    snap["memory_file"] = path.read_bytes()
    snap["system_rng"] = system._rng.bit_generator.state
    if history is not None:
        snap["history"] = json.dumps(history)
    return snap


@pytest.mark.parametrize(
    "algorithm, query_features", [("maml", False), ("metasgd", False), ("maml", True)]
)
def test_half_then_resume_gives_the_uninterrupted_bits(tmp_path, algorithm, query_features):
    system, tasks = _make(algorithm, query_features=query_features)
    h = system.fit(tasks, iterations=ITERATIONS, meta_batch_size=BATCH, verbose=0)
    whole = _snapshot(system, tasks, tmp_path, h)
    assert system.memory.size == 5 and len(system._buffer_t) == 7  # both overflowed

    ck = tmp_path / "ck"
    system, tasks = _make(algorithm, query_features=query_features)
    system.fit(
        tasks, ITERATIONS // 2, BATCH, verbose=0, checkpoint_dir=ck, checkpoint_every=3
    )  # checkpoints at 3 and (the end) 4
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == ITERATIONS // 2
    ml.random.set_seed(99)  # resuming must not depend on the generator's state before it
    system, tasks = _make(algorithm, query_features=query_features)
    ml.random.set_seed(99)
    h = system.fit(tasks, ITERATIONS, BATCH, verbose=0, checkpoint_dir=ck, checkpoint_every=3)
    resumed = _snapshot(system, tasks, tmp_path, h)
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert resumed[key] == whole[key], key
    # one tensor file and one memory file are left, the final step's
    assert sorted(p.name for p in ck.iterdir()) == [
        "checkpoint.json",
        f"memory-{ITERATIONS:08d}.mlmem",
        f"tensors-{ITERATIONS:08d}.mlw",
    ]


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    ck = tmp_path / "ck"
    system, tasks = _make()
    h1 = system.fit(tasks, 4, BATCH, verbose=0, checkpoint_dir=ck)
    first = _snapshot(system, tasks, tmp_path, h1)
    system, tasks = _make()
    h2 = system.fit(tasks, 4, BATCH, verbose=0, checkpoint_dir=ck)
    assert _snapshot(system, tasks, tmp_path, h2) == first


# One run in a fresh process: the sampler kills the process with SIGKILL when asked for
# the batch of iteration KILL_AT (after the checkpoint of an earlier one); every piece of
# state is written to OUT.
RUNNER = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from pathlib import Path
    from metalearn.tasks import NWayKShot
    from tests.meta.test_metalearner_checkpoint import _make, _snapshot

    algorithm, ckpt, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = [0]

    class Killing(NWayKShot):
        def sample_batch(self, n):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().sample_batch(n)

    iterations = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    system, tasks = _make(algorithm, sampler_cls=Killing)
    kw = {} if ckpt == "-" else {"checkpoint_dir": ckpt, "checkpoint_every": 3}
    if len(sys.argv) > 6:  # under DataParallel (mpiexec): rank 0 writes, every rank resumes
        from metalearn import distributed

        with distributed.DataParallel(check_every=1).scope():
            h = system.fit(tasks, iterations, 2, verbose=0, **kw)
        out = f"{out}.{distributed.rank()}"
    else:
        h = system.fit(tasks, iterations, 2, verbose=0, **kw)
    snap = _snapshot(system, tasks, Path(out).parent, h)
    Path(out).write_bytes(pickle.dumps(sorted(snap.items())))
    """
)


def _run(tmp_path, *args, expect_kill=False, procs=None):
    launch, env = (), None
    if procs is not None:
        from tests.distributed.test_data_parallel import _env, _mpiexec

        env, launch = _env(), (_mpiexec(), "--oversubscribe", "-n", str(procs))
    run_script(tmp_path, RUNNER, args, expect_kill=expect_kill, launch=launch, env=env)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_sigkill_then_resume_ends_with_the_uninterrupted_bits(tmp_path, algorithm):
    whole, resumed, ck = tmp_path / "whole.bin", tmp_path / "resumed.bin", tmp_path / "ck"
    _run(tmp_path, algorithm, "-", whole, 0)
    # killed asking for iteration 8's batch: the checkpoint of iteration 6 is the last,
    # 7 and 8 are redone
    _run(tmp_path, algorithm, ck, resumed, 8, expect_kill=True)
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == 6
    assert not resumed.exists()
    _run(tmp_path, algorithm, ck, resumed, 0)
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == 8
    # (compared loaded: pickle's bytes depend on which objects happen to be shared)
    a, b = (dict(pickle.loads(p.read_bytes())) for p in (whole, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == a[key], key


def _load(path):
    return dict(pickle.loads(path.read_bytes()))


def test_data_parallel_in_one_process_resumes_to_the_same_bits(tmp_path):
    from metalearn import distributed

    def run(iterations, ck=None):
        system, tasks = _make()
        kw = {} if ck is None else {"checkpoint_dir": ck, "checkpoint_every": 3}
        with distributed.DataParallel(check_every=1).scope():
            h = system.fit(tasks, iterations, BATCH, verbose=0, **kw)
        return _snapshot(system, tasks, tmp_path, h)

    whole = run(ITERATIONS)
    run(ITERATIONS // 2, tmp_path / "ck")
    assert run(ITERATIONS, tmp_path / "ck") == whole


@pytest.mark.mpi
def test_data_parallel_over_two_processes_rank0_writes_every_rank_resumes(tmp_path):
    """Two processes: rank 0 alone writes the checkpoint; a second launch resumes it on
    both ranks, and each ends with the state of an uninterrupted two-process run."""
    ck = tmp_path / "ck"
    whole, half, resumed = (tmp_path / n for n in ("whole.bin", "half.bin", "resumed.bin"))
    _run(tmp_path, "maml", "-", whole, 0, ITERATIONS, "dp", procs=2)
    _run(tmp_path, "maml", ck, half, 0, ITERATIONS // 2, "dp", procs=2)
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == ITERATIONS // 2
    _run(tmp_path, "maml", ck, resumed, 0, ITERATIONS, "dp", procs=2)
    for rank in (0, 1):
        a = _load(tmp_path / f"whole.bin.{rank}")
        assert _load(tmp_path / f"resumed.bin.{rank}") == a
    assert _load(tmp_path / "whole.bin.0") == _load(tmp_path / "whole.bin.1")


# ------------------------------------------------------------------ refusals


def _trained_with_checkpoint(tmp_path, **kw):
    """A checkpoint of 3 iterations in tmp_path/ck, and another system trained 2
    iterations (no checkpoint) whose state a refused resume must leave alone."""
    ck = tmp_path / "ck"
    system, tasks = _make(**kw)
    system.fit(tasks, 3, BATCH, verbose=0, checkpoint_dir=ck)
    return ck


def _folder(ck):
    return {p.name: p.read_bytes() for p in ck.iterdir()}


def test_checkpoint_of_another_run_is_refused_and_changes_nothing(tmp_path):
    ck = _trained_with_checkpoint(tmp_path)
    files = _folder(ck)
    other, tasks = _make(predictor_lr=5e-3)  # one hyper-parameter of the system differs
    other.fit(tasks, 2, BATCH, verbose=0)
    before = _snapshot(other, tasks, tmp_path, other.history)
    with pytest.raises(CheckpointError, match="predictor_lr"):
        other.fit(tasks, 6, BATCH, verbose=0, checkpoint_dir=ck)
    assert _snapshot(other, tasks, tmp_path, other.history) == before
    assert _folder(ck) == files
    # another algorithm: refused as well
    other, tasks = _make("fomaml")
    with pytest.raises(CheckpointError):
        other.fit(tasks, 6, BATCH, verbose=0, checkpoint_dir=ck)


@pytest.mark.parametrize("which", ["memory", "tensors", "checkpoint"])
def test_corrupt_checkpoint_is_refused_and_changes_nothing(tmp_path, which):
    ck = _trained_with_checkpoint(tmp_path)
    (path,) = [p for p in ck.iterdir() if p.name.startswith(which)]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    files = _folder(ck)
    system, tasks = _make()
    system.fit(tasks, 2, BATCH, verbose=0)
    before = _snapshot(system, tasks, tmp_path, system.history)
    with pytest.raises(CheckpointError):
        system.fit(tasks, 6, BATCH, verbose=0, checkpoint_dir=ck)
    assert _snapshot(system, tasks, tmp_path, system.history) == before
    assert _folder(ck) == files


def test_memory_file_missing_from_the_manifest_is_refused(tmp_path):
    # a checkpoint of the algorithm alone (as MAML.fit writes) holds no system state
    ck = tmp_path / "ck"
    system, tasks = _make()
    system.algorithm.fit(tasks, 2, BATCH, verbose=0, checkpoint_dir=ck)
    system, tasks = _make()
    with pytest.raises(CheckpointError):
        system.fit(tasks, 4, BATCH, verbose=0, checkpoint_dir=ck)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"checkpoint_every": 2}, "checkpoint_every needs a checkpoint_dir"),
        ({"checkpoint_every": 0, "checkpoint_dir": "x"}, "checkpoint_every must be"),
    ],
)
def test_bad_checkpoint_arguments_are_refused_before_anything_changes(tmp_path, kw, match):
    system, tasks = _make()
    before = _snapshot(system, tasks, tmp_path)
    with pytest.raises(ValueError, match=match):
        system.fit(tasks, 4, BATCH, verbose=0, **kw)
    assert _snapshot(system, tasks, tmp_path) == before
    assert not (tmp_path / "x").exists()


def test_checkpoint_of_a_predictor_with_other_features_is_refused(tmp_path, monkeypatch):
    # another metalearn version's predictor features (MetaLearner.load refuses them too)
    from metalearn.meta import system as system_module

    ck = _trained_with_checkpoint(tmp_path)
    monkeypatch.setattr(system_module, "_PREDICTOR_FEATURES", "other-features/9")
    system, tasks = _make()
    with pytest.raises(CheckpointError, match="predictor_features"):
        system.fit(tasks, 6, BATCH, verbose=0, checkpoint_dir=ck)


@pytest.mark.parametrize("saved_with", [False, True])
def test_checkpoint_of_other_query_features_is_refused_and_changes_nothing(tmp_path, saved_with):
    # the predictor of a query_features=True run takes 11 more inputs: its weights,
    # buffer and optimizer mean nothing to a system without them (and the other way)
    ck = tmp_path / "ck"
    system, tasks = _make(query_features=saved_with)
    system.fit(tasks, 3, BATCH, verbose=0, checkpoint_dir=ck)
    files = _folder(ck)
    other, tasks = _make(query_features=not saved_with)
    other.fit(tasks, 2, BATCH, verbose=0)
    before = _snapshot(other, tasks, tmp_path, other.history)
    with pytest.raises(
        CheckpointError,
        match=f"saved with query_features={saved_with}, this MetaLearner has "
        f"query_features={not saved_with}",
    ):
        other.fit(tasks, 6, BATCH, verbose=0, checkpoint_dir=ck)
    assert _snapshot(other, tasks, tmp_path, other.history) == before
    assert _folder(ck) == files
