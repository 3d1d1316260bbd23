"""metalearn.distributed.ShardedMemory (issue 24): the knowledge memory over P processes,
capacity / P slots each, with the results of one memory, bit for bit; and MetaLearner.fit
under DataParallel with the same bits for one and two processes.

The `mpi` tests launch `mpiexec -n P --oversubscribe` (see test_data_parallel.py); the
reference of every comparison is one KnowledgeMemory of the same capacity and seed (the
single-process memory in C), never the sharded memory's own output."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

from metalearn.distributed import ShardedMemory
from metalearn.memory import KnowledgeMemory

from .test_data_parallel import HERE, _env, _mpiexec

MEMORY_SCRIPT = HERE / "_memory_script.py"
INDEX_SCRIPT = HERE / "_memory_index_script.py"
SYSTEM_SCRIPT = HERE / "_system_script.py"


def _launch(script, args, procs, timeout=600):
    cmd = [sys.executable, str(script), *map(str, args)]
    if procs is not None:
        cmd = [_mpiexec(), "--oversubscribe", "-n", str(procs)] + cmd
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def _memory_run(script, tmp_path, procs):
    """Runs a memory script in this process (``procs`` None: P = 1, one shard) or under
    mpiexec on ``procs`` processes; it writes "ok" when every comparison agreed."""
    if procs is None:
        sys.path.insert(0, str(HERE))  # as mpiexec's run: the script's folder first
        try:
            module = importlib.import_module(script.stem)
        finally:
            sys.path.remove(str(HERE))
        module.main(str(tmp_path / "ok"), str(tmp_path))
    else:
        _launch(script, [tmp_path / "ok", tmp_path], procs)
    assert (tmp_path / "ok").read_text() == "ok"


def test_one_process_sharded_memory_matches_one_memory(tmp_path):
    # the random stream of _memory_script.py in this process (P = 1: one shard)
    _memory_run(MEMORY_SCRIPT, tmp_path, None)


@pytest.mark.mpi
@pytest.mark.parametrize("procs", [2, 4])
def test_sharded_memory_matches_one_memory_on_random_streams(tmp_path, procs):
    # updates (the scan's and the GEMM's batches, equal keys), adds, removals, queries with
    # and without a label filter: slots, keys, labels, ages, payloads and answers; the
    # saved file's bytes; a one-process file loaded on P processes
    _memory_run(MEMORY_SCRIPT, tmp_path, procs)


def test_one_process_sharded_memory_with_compact_keys_and_the_index_matches_one_memory(tmp_path):
    _memory_run(INDEX_SCRIPT, tmp_path, None)


@pytest.mark.mpi
@pytest.mark.parametrize("procs", [2, 4])
def test_sharded_memory_with_compact_keys_and_the_index_matches_one_memory(tmp_path, procs):
    # float16 / int8 keys (the scan's top-k chosen by compact scores, rescored in float32)
    # and the IVF index (one k-means, lists over the ranks, probes, nprobe="exact", the
    # update rule on the index, adds over several GEMM blocks, removes, clear, rebuilds,
    # key_dtype changed mid-stream) against one KnowledgeMemory configured the same way:
    # slots, state, answers, the index's centroids and lists, the soft read and the memory
    # loss with their first and second order gradients, the file, a load; ranks given
    # different options refused together
    _memory_run(INDEX_SCRIPT, tmp_path, procs)


def _state_bytes(mem):
    return [np.asarray(a).tobytes() for a in mem.state()]


def test_bad_input_is_refused_and_changes_nothing():
    mem = ShardedMemory(8, 4, 2, seed=1)
    q = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    mem.update(q, [1, 2, 3])
    before = _state_bytes(mem)
    with pytest.raises(ValueError, match="label -1"):
        mem.update(q, [1, -1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        mem.update(np.where(q > 0, np.inf, q), [1, 2, 3])
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        mem.update(q[:, :3], [1, 2, 3])
    with pytest.raises(ValueError, match="payloads must have shape"):
        mem.update(q, [1, 2, 3], np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="3 integers"):
        mem.add(q, [1, 2])
    with pytest.raises(ValueError, match="not an occupied slot"):
        mem.remove([0, 5])
    with pytest.raises(ValueError, match="given twice"):
        mem.remove([1, 1])
    with pytest.raises(ValueError, match=r"k must be in \[1, capacity=8\]"):
        mem.query(q, 9)
    assert _state_bytes(mem) == before and mem.size == 3


def test_a_capacity_below_one_is_refused():
    with pytest.raises(ValueError, match="capacity must be an int >= 1"):
        ShardedMemory(0, 4)


def test_bad_read_and_loss_arguments_are_refused_and_change_nothing():
    mem = ShardedMemory(8, 4, 2, seed=1)
    q = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    mem.update(q, [1, 2, 3])
    before = _state_bytes(mem)
    with pytest.raises(ValueError, match="temperature must be a positive finite"):
        mem.read(q, 2, temperature=0.0)
    with pytest.raises(ValueError, match=r"k must be in \[1, capacity=8\]"):
        mem.read(q, 9)
    with pytest.raises(ValueError, match=r"expected queries of shape \(n, 4\)"):
        mem.read(q[:, :3])
    with pytest.raises(ValueError, match="non-finite"):
        mem.loss(np.where(q > 0, np.nan, q), [1, 2, 3])
    with pytest.raises(ValueError, match="3 queries but 2 labels"):
        mem.loss(q, [1, 2])
    with pytest.raises(ValueError, match="margin must be finite"):
        mem.loss(q, [1, 2, 3], margin=float("inf"))
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        mem.loss(q, [1, 2, 3], reduction="max")
    assert _state_bytes(mem) == before


def test_bad_index_and_key_type_arguments_are_refused_and_change_nothing():
    mem = ShardedMemory(16, 4, 1, seed=2, key_dtype="int8")
    q = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    mem.update(q, [1, 2, 3, 4, 5, 6])
    before = _state_bytes(mem)
    with pytest.raises(ValueError, match="asks for the approximate index"):
        mem.query(q, 1, nprobe=2)
    with pytest.raises(ValueError, match=r"nlist must be in \[1, size=6\]"):
        mem.build_index(7)
    with pytest.raises(ValueError, match=r"nprobe must be in \[1, nlist=2\]"):
        mem.build_index(2, nprobe=3)
    with pytest.raises(ValueError, match=r"sample must be in \[nlist=2, size=6\]"):
        mem.build_index(2, sample=7)
    with pytest.raises(TypeError, match="nlist must be an int"):
        mem.build_index(2.0)
    assert mem.index is None and mem.nprobe is None
    with pytest.raises(ValueError, match="key_dtype must be 'float32', 'float16' or 'int8'"):
        mem.key_dtype = "bfloat16"
    with pytest.raises(ValueError, match="key_dtype must be 'float32', 'float16' or 'int8'"):
        ShardedMemory(16, 4, key_dtype="int4")
    assert mem.key_dtype == "int8"
    mem.build_index(2, nprobe=1)
    with pytest.raises(ValueError, match=r"nprobe must be in \[1, nlist=2\]"):
        mem.query(q, 1, nprobe=3)
    with pytest.raises(ValueError, match=r"nprobe must be in \[1, nlist=2\]"):
        mem.nprobe = 0
    with pytest.raises(TypeError, match="nprobe must be an int, None or 'exact'"):
        mem.query(q, 1, nprobe="all")
    with pytest.raises(ValueError, match="can only be set to None"):
        mem.index = mem.index
    assert mem.index.nprobe == 1 and _state_bytes(mem) == before


def test_load_refuses_a_corrupt_or_differently_sized_file_and_changes_nothing(tmp_path):
    one = KnowledgeMemory(8, 4, seed=3)
    one.update(np.eye(4, dtype=np.float32), [0, 1, 2, 3])
    good = tmp_path / "m.mem"
    one.save(good)
    mem = ShardedMemory(8, 4)
    mem.add(np.ones((1, 4), np.float32), [5])
    before = _state_bytes(mem)
    other = ShardedMemory(16, 4)
    with pytest.raises(ValueError, match="capacity 8"):
        other.load(good)
    bad = tmp_path / "bad.mem"
    data = bytearray(good.read_bytes())
    data[140] ^= 1  # a key bit: the keys' CRC-32 no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        mem.load(bad)
    assert _state_bytes(mem) == before
    mem.load(good)
    assert _state_bytes(mem) == _state_bytes(one)


@pytest.mark.mpi
@pytest.mark.parametrize("algo", ["maml", "reptile"])
def test_metalearner_fit_has_the_same_bits_for_one_and_two_processes(tmp_path, algo):
    # the learner, the predictor, the memory and the history; rank 1 starts from other
    # weights (fit broadcasts rank 0's)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    _launch(SYSTEM_SCRIPT, [algo, one], None)
    _launch(SYSTEM_SCRIPT, [algo, two], 2)
    with np.load(one) as a, np.load(two) as b:
        assert sorted(a.files) == sorted(b.files)
        assert any(k.startswith("p") for k in a.files) and a["labels"].max() > 0
        for k in a.files:
            assert a[k].tobytes() == b[k].tobytes(), k
