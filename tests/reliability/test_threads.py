"""The thread-safety table of RELIABILITY.md, row by row: what may be shared between
threads, what is refused, what is serialised.

The race tests force their interleaving with events (the GIL makes a Python thread's
steps between two blocking calls atomic) or, where a call must be caught while it runs
without the GIL, with the test-only hook ``_core._debug_memory_pause`` (KnowledgeMemory
calls sleep that long once they have released the GIL). They also run under ASan with
``PYTHONMALLOC=malloc`` (``.ci/sanitize-python.sh``), where each of the old races was a
heap-use-after-free. Each test takes well under a second.
"""

import gc
import os
import queue
import threading
import time

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core
from metalearn.memory import KnowledgeMemory

from tests.helpers import F32, dense_model

SANITIZED = bool(os.environ.get("METALEARN_SANITIZED"))


def _run_threads(*targets):
    """Runs each target on its own thread; re-raises the first exception of any."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]


def _wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


# ------------------------------------------------------------------- tensors


def test_tensor_shared_for_reading_by_many_threads():
    """Ops on shared tensors from 4 threads at once (large enough to release the GIL)
    give the one-thread results bit for bit."""
    rng = np.random.default_rng(0)
    a = ml.tensor(rng.standard_normal((200, 200)).astype(F32))
    b = ml.tensor(rng.standard_normal((200, 200)).astype(F32))
    want = (ml.tanh(ml.matmul(a, b)) + a).numpy()
    got = []

    def work():
        for _ in range(5):
            got.append((ml.tanh(ml.matmul(a, b)) + a).numpy())

    _run_threads(*[work] * 4)
    assert len(got) == 20
    assert all(g.tobytes() == want.tobytes() for g in got)


def _deep_graph(n=400, depth=30, seed=0):
    """A loss whose gradient takes tens of ms (ml.grad runs without the GIL)."""
    rng = np.random.default_rng(seed)
    x = ml.tensor(rng.standard_normal((n, n)).astype(F32) / np.sqrt(n), requires_grad=True)
    y = x
    for _ in range(depth):
        y = ml.tanh(ml.matmul(y, x))
    return x, ml.reduce_sum(y)


def test_tensors_of_a_list_emptied_by_another_thread_stay_alive_during_grad():
    """_core.grad keeps its own references to the tensors of the lists it is given: another
    thread emptying the lists (their only owners) while the gradient runs without the GIL
    frees nothing under it (a heap-use-after-free before). The gradient equals the one
    computed with nobody interfering."""
    x, loss = _deep_graph()
    want = _core.grad([loss], [x])[0].numpy()
    outs, ins = [loss], [x]
    del x, loss
    started = threading.Event()
    result = []

    def grad():
        started.set()
        result.append(_core.grad(outs, ins)[0].numpy())

    def clear():
        started.wait()
        time.sleep(0.01)  # the gradient is running without the GIL
        outs.clear()
        ins.clear()
        gc.collect()

    _run_threads(grad, clear)
    np.testing.assert_array_equal(result[0], want)


def test_names_of_a_list_emptied_by_another_thread_stay_alive_during_save(tmp_path):
    """save_tensors reads its names from a tuple of its own while it writes without the
    GIL: another thread emptying the caller's list (the names' only owner) frees nothing
    under it (a heap-use-after-free under ASan before). The file holds every name."""
    n = 3000
    names = [f"tensor/{i:05d}/" + "x" * 40 for i in range(n)]
    tensors = [ml.tensor(np.full(64, i, F32)) for i in range(n)]
    path = tmp_path / "names.mlw"
    started = threading.Event()

    def save():
        started.set()
        _core.save_tensors(str(path), names, tensors)

    def clear():
        started.wait()
        time.sleep(0.001)  # the save is writing without the GIL
        names.clear()
        gc.collect()

    _run_threads(save, clear)
    loaded = _core.load_tensors(str(path))
    assert [k for k, _ in loaded] == [f"tensor/{i:05d}/" + "x" * 40 for i in range(n)]


def test_tensors_of_replay_lists_emptied_by_another_thread_stay_alive():
    """The same for trace_replay_many: each call's inputs are held for the whole replay."""
    rng = np.random.default_rng(1)
    w = ml.tensor(rng.standard_normal((300, 300)).astype(F32) / 17)
    f = ml.function(lambda x: ml.tanh(ml.matmul(ml.tanh(ml.matmul(x, w)), w)))
    xs = [ml.tensor(rng.standard_normal((300, 300)).astype(F32)) for _ in range(8)]
    want = [f(x).numpy() for x in xs]
    calls = [[x] for x in xs]
    del xs
    trace = next(iter(f._traces.values()))[0]
    started = threading.Event()
    result = []

    def replay():
        started.set()
        result.extend(o[0].numpy() for o in _core.trace_replay_many(trace, calls, 1))

    def clear():
        started.wait()
        time.sleep(0.005)
        for c in calls:
            c.clear()
        gc.collect()

    _run_threads(replay, clear)
    for r, w_ in zip(result, want):
        np.testing.assert_array_equal(r, w_)


def test_grad_mode_and_tapes_are_per_thread():
    """A GradientTape records on the thread that entered it; no_grad on one thread does not
    switch off recording on another."""
    x = ml.Variable(np.array([1.0, 2.0, 3.0], F32))
    inside, other = threading.Event(), threading.Event()
    seen = {}

    def taped():
        with ml.GradientTape() as tape:
            inside.set()
            other.wait()
            y = ml.reduce_sum(x * x * x)
        seen["grad"] = tape.gradient(y, x).numpy()

    def no_grad():
        inside.wait()
        with ml.no_grad():
            seen["other"] = (x * 2.0).requires_grad
        other.set()

    _run_threads(taped, no_grad)
    np.testing.assert_allclose(seen["grad"], 3 * np.array([1.0, 2.0, 3.0]) ** 2)
    assert seen["other"] is False


# -------------------------------------------------------------------- models


def _dense_model(seed):
    return dense_model(32, 64, 4, "tanh", ml.keras.optimizers.Adam(1e-3), seed=seed)


def test_two_models_on_two_threads_equal_sequential_training():
    rng = np.random.default_rng(2)
    data = [
        (rng.standard_normal((64, 32)).astype(F32), rng.standard_normal((64, 4)).astype(F32))
        for _ in range(2)
    ]
    seq = [_dense_model(s) for s in (1, 2)]
    par = [_dense_model(s) for s in (1, 2)]
    for a, b in zip(seq, par):
        b.set_weights(a.get_weights())
    for m, (x, y) in zip(seq, data):
        for _ in range(10):
            m.train_on_batch(x, y)

    def trainer(m, x, y):
        return lambda: [m.train_on_batch(x, y) for _ in range(10)]

    _run_threads(*[trainer(m, *d) for m, d in zip(par, data)])
    for a, b in zip(seq, par):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            assert wa.tobytes() == wb.tobytes()


def test_one_model_predicts_from_many_threads():
    """Inference reads the weights only: any number of threads, the one-thread answer."""
    m = _dense_model(3)
    x = np.random.default_rng(3).standard_normal((128, 32)).astype(F32)
    want = m.predict(x, verbose=0)
    got = []
    _run_threads(*[lambda: got.append(m.predict(x, verbose=0))] * 3)
    assert all(np.array_equal(g, want) for g in got)


# ---------------------------------------------------------------- optimizers


def test_two_first_steps_of_one_optimizer_are_serialised():
    """Two threads make the first step of one optimizer at once, with parameter lists of
    different shapes, large enough that the step runs without the GIL: the steps are
    serialised, so exactly one builds the optimizer's state and the other is refused
    (its shapes do not match that state). Before, both could build it (a leak, and a
    state sized for one list updating the other)."""
    n = 1 << 17  # well above the ~32k elements after which a step releases the GIL
    for attempt in range(20):
        opt = _core.Adam(0.01)
        lists = [
            ([ml.tensor(np.zeros(n, F32))], [ml.tensor(np.ones(n, F32))]),
            ([ml.tensor(np.zeros((2, n), F32))], [ml.tensor(np.ones((2, n), F32))]),
        ]
        go = threading.Barrier(2)
        outcome = []

        def step(params, grads):
            def run():
                go.wait()
                try:
                    opt.step(params, grads)
                    outcome.append("stepped")
                except ValueError:
                    outcome.append("refused")

            return run

        _run_threads(*[step(p, g) for p, g in lists])
        assert sorted(outcome) == ["refused", "stepped"], (attempt, outcome)
        assert opt.iterations == 1 and opt.n_params == 1
        moved = [p[0].numpy() for p, _ in lists if not np.all(p[0].numpy() == 0)]
        assert len(moved) == 1  # only the list that built the state was updated


def test_optimizer_kept_alive_per_trace_when_two_threads_trace_at_once():
    """Two threads record at once; the optimizer stepped in A's trace belongs to A's trace
    (one module-wide keep-alive list put it into B's). After the optimizer and B's trace
    are dropped, A's replay still steps it (it read freed memory before)."""
    w = ml.tensor(np.ones(4, F32), requires_grad=True)
    x = ml.tensor(np.ones(4, F32))
    a_began, b_began, a_done = threading.Event(), threading.Event(), threading.Event()
    traces = {}

    def a():
        opt = _core.SGD(0.1)
        tr = _core.trace_begin([x])
        a_began.set()
        b_began.wait()
        g = x * 2.0
        opt.step([w], [g])
        _core.trace_end(tr, [g])
        traces["a"] = tr
        a_done.set()

    def b():
        a_began.wait()
        tr = _core.trace_begin([x])
        b_began.set()
        a_done.wait()
        _core.trace_end(tr, [x + 1.0])
        traces["b"] = tr

    _run_threads(a, b)
    del traces["b"]
    gc.collect()
    np.testing.assert_allclose(w.numpy(), 0.8)  # 1 - 0.1 * 2 while recording
    _core.trace_replay(traces["a"], [ml.tensor(np.full(4, 3.0, F32))])
    np.testing.assert_allclose(w.numpy(), 0.2, rtol=1e-6)  # - 0.1 * 6 by the replay


# ------------------------------------------------------------ KnowledgeMemory


def _full_memory(capacity=512, d=64, seed=0):
    """A memory whose queries are large enough for the binding to release the GIL."""
    rng = np.random.default_rng(seed)
    mem = KnowledgeMemory(capacity, d, seed=seed)
    mem.update(rng.standard_normal((capacity, d)).astype(F32), np.arange(capacity))
    return mem, rng


@pytest.mark.parametrize("call", ["query", "update", "save", "load"])
def test_memory_reinit_while_another_thread_uses_it_is_refused(call, tmp_path):
    """__init__ on a memory that another thread is querying/updating/saving/loading raises
    RuntimeError and changes nothing (it freed the slots under that call before); the call
    completes with its normal result."""
    mem, rng = _full_memory()
    q = rng.standard_normal((1, 64)).astype(F32)
    path = str(tmp_path / "m.mlm")
    mem.save(path)
    before = mem.query(q, k=3)
    args = {"query": (q, 3), "update": (q, [7]), "save": (path,), "load": (path,)}[call]
    out = []
    _core._debug_memory_pause(0.3)
    try:
        t = threading.Thread(target=lambda: out.append(getattr(mem, call)(*args)))
        t.start()
        _wait_until(lambda: _core._debug_memory_paused() > 0)
        with pytest.raises(RuntimeError, match=r"__init__: the memory is in use by another thread"):
            mem.__init__(16, 4)
        t.join(30)
    finally:
        _core._debug_memory_pause(0)
    assert (mem.capacity, mem.key_size, len(mem)) == (512, 64, 512)
    if call == "query":
        for a, b in zip(out[0], before):
            np.testing.assert_array_equal(a, b)
    mem.__init__(16, 4)  # nobody uses it now: allowed
    assert (mem.capacity, mem.key_size, len(mem)) == (16, 4, 0)


def test_memory_queries_share_updates_are_serialised():
    """Queries from 3 threads while a fourth updates: every update is applied whole (the
    final state equals the same updates applied on one thread) and every query sees only
    labels that were written."""
    rng = np.random.default_rng(4)
    keys = rng.standard_normal((40, 64)).astype(F32)
    base = rng.standard_normal((400, 64)).astype(F32)
    ref = KnowledgeMemory(512, 64, seed=1)
    mem = KnowledgeMemory(512, 64, seed=1)
    for m in (ref, mem):
        m.update(base, np.arange(400) % 50)
    for i in range(0, 40, 4):
        ref.update(keys[i : i + 4], 100 + np.arange(i, i + 4))
    bad = []

    def updater():
        for i in range(0, 40, 4):
            mem.update(keys[i : i + 4], 100 + np.arange(i, i + 4))

    def reader():
        for _ in range(10):
            lab = mem.query(keys, k=5)[2]
            if not np.isin(lab, np.r_[-1, np.arange(50), 100 + np.arange(40)]).all():
                bad.append(lab)

    _run_threads(updater, reader, reader, reader)
    assert not bad
    for a, b in zip(mem.state(), ref.state()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------- traces / ml.function


def test_trace_end_and_abort_from_another_thread_are_refused():
    """Recording belongs to the thread that began it: trace_end/trace_abort elsewhere raise
    and change nothing (before, the other thread's end left the recorder stuck recording:
    its next trace_begin failed)."""
    x = ml.tensor(np.ones(4, F32))
    handed, tried = queue.Queue(), threading.Event()
    seen = {}

    def recorder():
        tr = _core.trace_begin([x])
        y = x * 2.0
        handed.put((tr, y))
        tried.wait()
        z = y + 1.0  # still recorded into the trace
        _core.trace_end(tr, [z])
        seen["replay"] = _core.trace_replay(tr, [ml.tensor(np.full(4, 5.0, F32))])[0].numpy()
        tr2 = _core.trace_begin([x])  # not stuck recording
        _core.trace_abort(tr2)

    def other():
        tr, y = handed.get()
        for attempt in (lambda: _core.trace_end(tr, [y]), lambda: _core.trace_abort(tr)):
            with pytest.raises(ValueError, match="recorded on another thread"):
                attempt()
        assert not _core.is_tracing()
        tried.set()

    _run_threads(recorder, other)
    np.testing.assert_array_equal(seen["replay"], np.full(4, 11.0, F32))


def test_trace_dropped_on_another_thread_while_recording_stays_alive():
    """The last reference of a recording trace dropped on another thread: the recorder's
    thread keeps it alive until its recording ends (the recorder wrote into freed memory
    before)."""
    x = ml.tensor(np.ones(4, F32))
    handed, dropped = queue.Queue(), threading.Event()
    seen = {}

    def recorder():
        handed.put(_core.trace_begin([x]))  # only the other thread holds it now
        dropped.wait()
        y = x * 2.0  # recorded into the (live) trace
        seen["y"] = y.numpy()
        seen["tracing"] = _core.is_tracing()

    def other():
        tr = handed.get()
        del tr
        gc.collect()
        dropped.set()

    _run_threads(recorder, other)
    np.testing.assert_array_equal(seen["y"], np.full(4, 2.0, F32))
    assert seen["tracing"] is True  # (the thread ended while recording: freed then)
    assert not _core.is_tracing()


def test_two_threads_record_at_once_each_their_own_trace():
    """ml.function on two threads recording at the same time, interleaved op by op: each
    trace holds its own thread's ops."""
    a_in, b_in = threading.Event(), threading.Event()

    def fa(x):
        a_in.set()
        b_in.wait()
        return x * 3.0 + 1.0

    def fb(x):
        a_in.wait()
        y = x - 2.0
        b_in.set()
        return y * 5.0

    f, g = ml.function(fa), ml.function(fb)
    x = ml.tensor(np.ones(3, F32))
    _run_threads(lambda: f(x), lambda: g(x))
    a_in.set(), b_in.set()
    x2 = ml.tensor(np.array([1.0, 2.0, 3.0], F32))
    np.testing.assert_array_equal(f(x2).numpy(), [4.0, 7.0, 10.0])
    np.testing.assert_array_equal(g(x2).numpy(), [-5.0, 0.0, 5.0])
    assert f.n_traces == g.n_traces == 1


def test_one_trace_replays_on_many_threads_at_once():
    """A finished trace is read-only: 4 threads replaying it at once get the one-thread
    results (each replay's intermediates are its own)."""
    rng = np.random.default_rng(5)
    w = ml.tensor(rng.standard_normal((64, 64)).astype(F32) / 8)
    f = ml.function(lambda x: ml.reduce_sum(ml.tanh(ml.matmul(x, w)) * 2.0, axis=1))
    xs = [ml.tensor(rng.standard_normal((256, 64)).astype(F32)) for _ in range(4)]
    want = [f(x).numpy() for x in xs]
    got = {i: [] for i in range(4)}

    def replayer(i):
        return lambda: [got[i].append(f(xs[i]).numpy()) for _ in range(25)]

    _run_threads(*[replayer(i) for i in range(4)])
    for i in range(4):
        assert all(g.tobytes() == want[i].tobytes() for g in got[i])


def test_random_draws_of_replays_on_two_threads_are_whole_blocks_of_the_stream():
    """Replays run without the GIL, and a traced function that draws random numbers may be
    replayed on two threads at once. Each draw takes a lock for the whole array, so every
    array drawn is a contiguous block of the seeded stream: the two threads' arrays are
    those of one thread drawing as many in a row, in some order. (Unlocked, the two
    threads tore the generator's state: arrays outside the stream, or repeated.)"""
    n, calls = 1 << 16, 40
    zero = ml.tensor(np.zeros(n, F32))
    f = ml.function(lambda x: x + ml.random.uniform((n,)))
    f(zero)  # traced (one draw), then replays only

    ml.random.set_seed(7)
    want = sorted(f(zero).numpy().tobytes() for _ in range(2 * calls))
    ml.random.set_seed(7)
    got = [[], []]
    go = threading.Barrier(2)

    def replayer(i):
        def run():
            go.wait()
            for _ in range(calls):
                got[i].append(f(zero).numpy().tobytes())

        return run

    _run_threads(replayer(0), replayer(1))
    assert sorted(got[0] + got[1]) == want


def test_function_replays_on_one_thread_while_another_uses_a_tape():
    """The eager fallback under a tape is per thread: thread A's tape makes A's calls
    differentiable, thread B keeps replaying."""
    w = ml.Variable(np.array([[1.0, 2.0], [3.0, 4.0]], F32))
    f = ml.function(lambda x: ml.reduce_sum(ml.matmul(x, w) ** 2))
    x = ml.tensor(np.array([[1.0, 1.0]], F32))
    f(x)  # traced
    in_tape, replayed = threading.Event(), threading.Event()
    seen = {}

    def taped():
        with ml.GradientTape() as tape:
            in_tape.set()
            replayed.wait()
            y = f(x)
        seen["grad"] = tape.gradient(y, w).numpy()

    def replaying():
        in_tape.wait()
        seen["replay"] = f(x)
        replayed.set()

    _run_threads(taped, replaying)
    np.testing.assert_allclose(seen["grad"], [[8.0, 12.0], [8.0, 12.0]])
    assert seen["replay"].requires_grad is False and float(seen["replay"].numpy()) == 52.0


# --------------------------------------------------------------- task samplers


def test_sinusoid_sampler_shared_by_threads_draws_whole_batches():
    """Each sample_batch draws under its generator's lock: two threads sharing a seeded
    sampler get, between them, exactly the batches one thread would draw (in some order)."""
    from metalearn.tasks import Sinusoid

    one = Sinusoid(k_shot=5, q_queries=5, seed=3)
    want = sorted(one.sample_batch(4).support_y.tobytes() for _ in range(20))
    shared = Sinusoid(k_shot=5, q_queries=5, seed=3)
    got = []

    def draw():
        for _ in range(10):
            got.append(shared.sample_batch(4).support_y.tobytes())

    _run_threads(draw, draw)
    assert sorted(got) == want


def test_nway_sampler_shared_by_threads_gives_well_formed_episodes():
    """NWayKShot draws an episode in several generator calls: shared by threads its
    episodes stay well formed (distinct classes, the right images), but the stream
    interleaves (one sampler per thread for reproducible runs)."""
    from metalearn.tasks import NWayKShot

    rng = np.random.default_rng(6)
    n_cls, per = 12, 6
    x = np.repeat(np.arange(n_cls, dtype=F32), per)[:, None, None] + rng.uniform(
        0, 0.1, (n_cls * per, 2, 2)
    ).astype(F32)
    y = np.repeat(np.arange(n_cls), per)
    sampler = NWayKShot((x, y), n_way=4, k_shot=2, q_queries=2, augment_rotations=False, seed=0)
    bad = []

    def draw():
        for _ in range(20):
            b = sampler.sample_batch(3)
            for i in range(3):
                cls = b.info["classes"][i]
                if len(set(cls)) != 4:
                    bad.append("classes repeat")
                img_cls = np.floor(b.support_x[i][:, 0, 0]).astype(int).reshape(4, 2)
                if not (img_cls == cls[:, None]).all():
                    bad.append("an image of another class")

    _run_threads(draw, draw)
    assert not bad, bad[:3]
