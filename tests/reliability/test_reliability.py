"""Reliability of the Keras face and the binding: bad input never crashes and changes
nothing, a killed save loses nothing, nothing leaks or grows, threads are safe, and a
NaN can be caught where it appears.

The core's own bad-input matrix (every op, weight-file parser, optimizer steps) is in
tests/reliability/test_core_badinput.py; this file drives the *Keras face* through a table
of bad calls, then checks files, memory growth, reference counts and threads.

Environment:
    METALEARN_SANITIZED=1   set by .ci/sanitize-python.sh: RSS bounds are skipped (ASan
                            keeps freed memory in quarantine) and loops are shorter.
    METALEARN_LONG=1        ten times the default counts: 10^6 training steps and 10^5
                            second-order meta-steps (the default: 10^5 and 10^4, ~4 s).
"""

import gc
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, debugging
from metalearn.keras import layers, models, optimizers
from tests.helpers import F32, dense_model

SANITIZED = bool(os.environ.get("METALEARN_SANITIZED"))
LONG = bool(os.environ.get("METALEARN_LONG"))


# --------------------------------------------------------------------------- helpers
def _model(optimizer="adam", loss="mse", seed=0, width=8, inp=4, out=3):
    return dense_model(inp, width, out, optimizer=optimizer, loss=loss, seed=seed)


def _data(n=10, inp=4, out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, inp)).astype(F32), rng.normal(size=(n, out)).astype(F32)


def _trained_model(optimizer="adam"):
    """A model that has taken one step, so its optimizer has state (moments) to keep."""
    m = _model(optimizer)
    x, y = _data()
    m.train_on_batch(x, y)
    return m


def _snapshot(m):
    """Everything a failed call must leave as it was: weights (bits), optimizer state and
    step count."""
    opt = m.optimizer
    state = [np.array(s, copy=True) for s in opt.variables()] if opt is not None else []
    return (
        [w.tobytes() for w in m.get_weights()],
        [s.tobytes() for s in state],
        int(opt.iterations) if opt is not None else None,
    )


def _assert_unchanged(before, m):
    after = _snapshot(m)
    assert after[0] == before[0], "weights changed"
    assert after[1] == before[1], "optimizer state changed"
    assert after[2] == before[2], "optimizer iterations changed"


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------ the Keras bad-input matrix
# (id, call(model, tmp_path), exception, regex the message must match). The model has
# taken one Adam step; after the call its weights, Adam moments and step count must be
# bit-for-bit as before.
X, Y = _data()


def _other_model_file(tmp_path):
    other = models.Sequential([layers.Dense(5, input_shape=(4,)), layers.Dense(3)])
    p = tmp_path / "other.mlw"
    other.save_weights(p)
    return p


def _own_file(m, tmp_path, mutate):
    p = tmp_path / "own.mlw"
    m.save_weights(p)
    data = bytearray(p.read_bytes())
    p.write_bytes(bytes(mutate(data)))
    return p


def _flip(i):
    def f(data):
        data[i if i >= 0 else len(data) + i] ^= 0x04
        return data

    return f


KERAS_BAD = [
    # layers and calls
    (
        "dense-wrong-last-dim",
        lambda m, t: m(np.zeros((2, 5), F32)),
        ValueError,
        r"expected input with last dimension 4, got \(2, 5\)",
    ),
    (
        "dense-wrong-last-dim-3d",
        lambda m, t: m(np.zeros((2, 3, 7), F32)),
        ValueError,
        r"last dimension 4, got \(2, 3, 7\)",
    ),
    (
        "predict-wrong-shape",
        lambda m, t: m.predict(np.zeros((2, 5)), verbose=0),
        ValueError,
        r"last dimension 4, got \(2, 5\)",
    ),
    ("call-complex", lambda m, t: m(np.zeros((2, 4), np.complex64)), TypeError, r"complex"),
    ("call-object", lambda m, t: m(np.array([[object()] * 4])), TypeError, r"object"),
    ("call-str", lambda m, t: m("abcd"), ValueError, r"could not convert"),
    (
        "dense-units-0",
        lambda m, t: layers.Dense(0),
        ValueError,
        r"units must be a positive integer, got 0",
    ),
    ("dense-units-neg", lambda m, t: layers.Dense(-3), ValueError, r"positive integer, got -3"),
    (
        "dense-units-none",
        lambda m, t: layers.Dense(None),
        ValueError,
        r"positive integer, got None",
    ),
    ("dense-units-str", lambda m, t: layers.Dense("8"), ValueError, r"positive integer"),
    (
        "dense-units-huge",
        lambda m, t: layers.Dense(2**62)(np.zeros((1, 8), F32)),
        MemoryError,
        r"too large",
    ),
    # fit / evaluate / train_on_batch
    (
        "fit-x-y-lengths",
        lambda m, t: m.fit(X, Y[:9], verbose=0),
        ValueError,
        r"x has 10 samples but y has 9",
    ),
    (
        "evaluate-x-y-lengths",
        lambda m, t: m.evaluate(X, Y[:7], verbose=0),
        ValueError,
        r"x has 10 samples but y has 7",
    ),
    (
        "train_on_batch-x-y-lengths",
        lambda m, t: m.train_on_batch(X, Y[:9]),
        ValueError,
        r"x has 10 samples but y has 9",
    ),
    (
        "fit-y-wrong-width",
        lambda m, t: m.fit(X, np.zeros((10, 2), F32), verbose=0),
        ValueError,
        r"\(10, 3\).*\(10, 2\)|\(10, 2\).*\(10, 3\)",
    ),
    ("fit-x-none", lambda m, t: m.fit(None, Y, verbose=0), ValueError, r"x is required"),
    ("fit-y-none", lambda m, t: m.fit(X, None, verbose=0), ValueError, r"y is required"),
    (
        "fit-x-objects",
        lambda m, t: m.fit(np.array([object()] * 10), Y, verbose=0),
        TypeError,
        r"object",
    ),
    (
        "fit-x-ragged",
        lambda m, t: m.fit([[1.0, 2.0], [3.0]], Y[:2], verbose=0),
        ValueError,
        r"inhomogeneous|sequence",
    ),
    (
        "fit-x-str",
        lambda m, t: m.fit("abc", Y, verbose=0),
        (TypeError, ValueError),
        r"could not convert|dtype <U3",
    ),
    (
        "fit-empty",
        lambda m, t: m.fit(np.zeros((0, 4), F32), np.zeros((0, 3), F32), verbose=0),
        ValueError,
        r"no training samples",
    ),
    (
        "fit-batch-size-0",
        lambda m, t: m.fit(X, Y, batch_size=0, verbose=0),
        ValueError,
        r"batch_size must be positive, got 0",
    ),
    (
        "fit-validation-split",
        lambda m, t: m.fit(X, Y, validation_split=1.5, verbose=0),
        ValueError,
        r"validation_split must be in \[0, 1\), got 1.5",
    ),
    (
        "fit-wrong-input-width",
        lambda m, t: m.fit(np.zeros((10, 6), F32), Y, verbose=0),
        ValueError,
        r"last dimension 4, got \(\d+, 6\)",
    ),
    (
        "fit-scce-label-too-big",
        lambda m, t: (
            m.compile(optimizer=m.optimizer, loss="sparse_categorical_crossentropy"),
            m.fit(X, np.full(10, 7), verbose=0),
        ),
        ValueError,
        r"label 7 .*outside \[0, 3\)",
    ),
    (
        "fit-scce-label-negative",
        lambda m, t: (
            m.compile(optimizer=m.optimizer, loss="sparse_categorical_crossentropy"),
            m.fit(X, np.full(10, -1), verbose=0),
        ),
        ValueError,
        r"label -1 .*outside \[0, 3\)",
    ),
    (
        "compile-unknown-optimizer",
        lambda m, t: m.compile(optimizer="rmsprop-x", loss="mse"),
        ValueError,
        r"Unknown optimizer: 'rmsprop-x'",
    ),
    (
        "compile-unknown-loss",
        lambda m, t: m.compile(optimizer=m.optimizer, loss="nope"),
        ValueError,
        r"Unknown loss function: 'nope'",
    ),
    # set_weights
    (
        "set_weights-count",
        lambda m, t: m.set_weights(m.get_weights()[:2]),
        ValueError,
        r"expected 4 arrays, got 2",
    ),
    (
        "set_weights-too-many",
        lambda m, t: m.set_weights(m.get_weights() * 2),
        ValueError,
        r"expected 4 arrays, got 8",
    ),
    (
        "set_weights-transposed",
        lambda m, t: m.set_weights([w.T for w in m.get_weights()]),
        ValueError,
        r"array 0 has shape \(8, 4\), weight .* has shape \(4, 8\)",
    ),
    (
        "set_weights-last-wrong",  # the first three are fine: none may be written
        lambda m, t: m.set_weights([w + 1 for w in m.get_weights()[:3]] + [np.zeros(4)]),
        ValueError,
        r"array 3 has shape \(4,\), weight .* has shape \(3,\)",
    ),
    (
        "set_weights-nones",
        lambda m, t: m.set_weights([None] * 4),
        (ValueError, TypeError),
        r"shape|None|dtype object",
    ),
    (
        "set_weights-objects",
        lambda m, t: m.set_weights([np.array([object()])] * 4),
        TypeError,
        r"object",
    ),
    ("set_weights-not-a-list", lambda m, t: m.set_weights(None), TypeError, r"NoneType|iterable"),
    # optimizer
    (
        "apply_gradients-wrong-shape",
        lambda m, t: m.optimizer.apply_gradients(
            [(np.zeros((3, 3), F32), m.trainable_variables[0])]
        ),
        ValueError,
        r"gradient of shape \(3, 3\) for variable .*shape \(4, 8\)",
    ),
    (
        "apply_gradients-last-wrong",  # a good gradient first: it must not be applied
        lambda m, t: m.optimizer.apply_gradients(
            [(np.ones(tuple(v.shape), F32), v) for v in m.trainable_variables[:3]]
            + [(np.ones((5,), F32), m.trainable_variables[3])]
        ),
        ValueError,
        r"gradient of shape \(5,\) for variable .*shape \(3,\)",
    ),
    (
        "apply_gradients-variable-none",
        lambda m, t: m.optimizer.apply_gradients([(np.zeros((4, 8), F32), None)]),
        TypeError,
        r"expected variables, got NoneType",
    ),
    (
        "apply_gradients-variable-ndarray",
        lambda m, t: m.optimizer.apply_gradients([(np.zeros((4, 8), F32), np.zeros((4, 8), F32))]),
        TypeError,
        r"expected variables, got ndarray",
    ),
    (
        "apply_gradients-empty",
        lambda m, t: m.optimizer.apply_gradients([]),
        ValueError,
        r"no \(gradient, variable\) pairs",
    ),
    (
        "apply_gradients-object-grad",
        lambda m, t: m.optimizer.apply_gradients(
            [(np.array([[object()] * 8] * 4), m.trainable_variables[0])]
        ),
        TypeError,
        r"object",
    ),
    (
        "optimizer-lr-nan",
        lambda m, t: setattr(m.optimizer, "learning_rate", float("nan")),
        ValueError,
        r"finite",
    ),
    (
        "optimizer-lr-negative",
        lambda m, t: setattr(m.optimizer, "learning_rate", -1.0),
        ValueError,
        r"non-negative",
    ),
    # weight files
    ("load-missing", lambda m, t: m.load_weights(t / "nope.mlw"), OSError, r"nope\.mlw"),
    ("load-directory", lambda m, t: m.load_weights(t), OSError, r"not a regular file"),
    (
        "load-other-model",
        lambda m, t: m.load_weights(_other_model_file(t)),
        ValueError,
        r"shape \(4, 5\) in the file, \(4, 8\) in the model|does not match",
    ),
    (
        "load-empty-file",
        lambda m, t: m.load_weights(_own_file(m, t, lambda d: b"")),
        ValueError,
        r"bad magic",
    ),
    (
        "load-truncated-half",
        lambda m, t: m.load_weights(_own_file(m, t, lambda d: d[: len(d) // 2])),
        ValueError,
        r"corrupt or truncated",
    ),
    (
        "load-truncated-1",
        lambda m, t: m.load_weights(_own_file(m, t, lambda d: d[:-1])),
        ValueError,
        r"corrupt or truncated",
    ),
    (
        "load-extra-bytes",
        lambda m, t: m.load_weights(_own_file(m, t, lambda d: d + b"\0")),
        ValueError,
        r"corrupt",
    ),
    (
        "load-bitflip-magic",
        lambda m, t: m.load_weights(_own_file(m, t, _flip(0))),
        ValueError,
        r"bad magic",
    ),
    (
        "load-bitflip-header",
        lambda m, t: m.load_weights(_own_file(m, t, _flip(12))),
        ValueError,
        r"corrupt",
    ),
    (
        "load-bitflip-name",
        lambda m, t: m.load_weights(_own_file(m, t, _flip(21))),
        ValueError,
        r"corrupt",
    ),
    (
        "load-bitflip-data",
        lambda m, t: m.load_weights(_own_file(m, t, _flip(-40))),
        ValueError,
        r"corrupt",
    ),
    (
        "load-bitflip-crc",
        lambda m, t: m.load_weights(_own_file(m, t, _flip(-1))),
        ValueError,
        r"corrupt",
    ),
    (
        "load-text-file",
        lambda m, t: m.load_weights(_own_file(m, t, lambda d: b"hello\n" * 9)),
        ValueError,
        r"bad magic",
    ),
    (
        "save-into-missing-dir",
        lambda m, t: m.save_weights(t / "no" / "such" / "dir.mlw"),
        OSError,
        r"dir\.mlw",
    ),
]


@pytest.mark.parametrize("fn, exc, regex", [pytest.param(*c[1:], id=c[0]) for c in KERAS_BAD])
def test_keras_bad_input_raises_and_changes_nothing(fn, exc, regex, tmp_path):
    m = _trained_model()
    before = _snapshot(m)
    lr = float(m.optimizer.learning_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as info:
            fn(m, tmp_path)
    assert re.search(regex, str(info.value)), (
        f"message {str(info.value)!r} does not match {regex!r}"
    )
    _assert_unchanged(before, m)
    assert float(m.optimizer.learning_rate) == lr
    # and the model still trains and predicts afterwards
    m.compile(optimizer=m.optimizer, loss="mse")
    m.train_on_batch(X, Y)
    assert np.isfinite(m.predict(X, verbose=0)).all()


def test_keras_bad_input_matrix_size():
    # the figure quoted in RELIABILITY.md
    assert len(KERAS_BAD) >= 55


@pytest.mark.parametrize("values", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_inputs_are_values_not_errors(values):
    """As in NumPy/TF, NaN/inf inputs propagate (no crash, no exception); check_numerics
    and enable_check_numerics are the way to stop on them."""
    m = _trained_model()
    x = X.copy()
    x[0, 0] = values
    out = m.predict(x, verbose=0)
    assert out.shape == (10, 3)
    assert np.isfinite(out[1:]).all()


def test_empty_batch_predict_and_call():
    m = _trained_model()
    out = m(np.zeros((0, 4), F32))
    assert tuple(out.shape) == (0, 3)


def test_unusual_arrays_into_fit_and_predict_work():
    """float64, int, bool, non-contiguous, read-only and Fortran-ordered inputs all train."""
    m = _trained_model()
    base = np.arange(40, dtype=np.float64).reshape(10, 4) / 40
    ro = base.astype(F32)
    ro.flags.writeable = False
    for x in (
        base,
        (base * 4).astype(np.int32),
        base > 0.5,
        np.asfortranarray(base),
        np.repeat(base, 2, axis=1)[:, ::2],
        ro,
    ):
        m.train_on_batch(x, Y)
        assert np.isfinite(m.predict(x, verbose=0)).all()
    assert not ro.flags.writeable


# ------------------ bugs found by this file (fixed in d97e1fb, except model(None))
@pytest.mark.parametrize("call", ["fit", "predict", "set_weights", "apply_gradients"])
def test_complex_inputs_refused_everywhere(call):
    m = _trained_model()
    before = _snapshot(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="complex"):
            if call == "fit":
                m.fit(X.astype(np.complex64) + 1j, Y, verbose=0)
            elif call == "predict":
                m.predict(X.astype(np.complex64) + 1j, verbose=0)
            elif call == "set_weights":
                m.set_weights([w + 1j for w in m.get_weights()])
            else:
                m.optimizer.apply_gradients(
                    [(np.ones((4, 8), np.complex64) * 1j, m.trainable_variables[0])]
                )
    _assert_unchanged(before, m)


@pytest.mark.parametrize("call", ["call", "predict"])
def test_none_input_is_a_clear_error(call):
    m = _trained_model()
    with pytest.raises((TypeError, ValueError)):
        m(None) if call == "call" else m.predict(None, verbose=0)


def test_fit_sample_weight_length_checked_before_training():
    m = _trained_model()
    before = _snapshot(m)
    x, y = _data(100)
    with pytest.raises(ValueError, match="sample_weight"):
        m.fit(x, y, batch_size=10, sample_weight=np.ones(50, F32), shuffle=False, verbose=0)
    _assert_unchanged(before, m)


def test_non_integer_label_message_is_formatted():
    with pytest.raises(ValueError, match=r"got nan at position 0"):
        ml.sparse_categorical_crossentropy(
            np.array([np.nan, 1.0], F32), np.full((2, 3), 1 / 3, F32)
        )


# ------------------------------------------------------------ crash in a save
_SAVER = textwrap.dedent("""
    import sys, numpy as np
    from metalearn.keras import layers, models
    path = sys.argv[1]
    m = models.Sequential([layers.Dense(512, input_shape=(1024,)), layers.Dense(4)])
    i = 0
    while True:
        m.set_weights([np.full(w.shape, i % 2, np.float32) for w in m.get_weights()])
        m.save_weights(path)
        i += 1
        if i == 2:
            print("saving", flush=True)
""")


def test_kill_during_save_keeps_the_previous_file(tmp_path):
    """A process that saves weights (2 MB) in a loop is killed with SIGKILL at random
    moments: the file on disk is always one complete earlier save, loadable and intact."""
    path = tmp_path / "w.mlw"
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    m = models.Sequential([layers.Dense(512, input_shape=(1024,)), layers.Dense(4)])
    rng = np.random.default_rng(0)
    kills = 3 if not SANITIZED else 1
    for k in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert proc.stdout.readline().strip() == b"saving"
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        m.load_weights(path)  # complete, checksummed: raises if torn
        ws = m.get_weights()
        value = ws[0].flat[0]
        assert value in (0.0, 1.0)
        assert all((w == value).all() for w in ws), "a mix of two saves"


# ------------------------------------------------------------ leaks and growth
def _count_objects():
    gc.collect()
    return len(gc.get_objects())


def test_training_steps_flat_memory_and_objects():
    """10^5 Keras training steps (10^6 with METALEARN_LONG): RSS and the number of Python
    objects stay flat after a warm-up."""
    steps = 1_000_000 if LONG else (2_000 if SANITIZED else 100_000)
    m = _model(width=16)
    x, y = _data(16)
    for _ in range(200):
        m.train_on_batch(x, y)
    rss0, obj0 = _rss_bytes(), _count_objects()
    t0 = time.perf_counter()
    for _ in range(steps):
        m.train_on_batch(x, y)
    elapsed = time.perf_counter() - t0
    rss1, obj1 = _rss_bytes(), _count_objects()
    print(
        f"\n{steps} train_on_batch steps in {elapsed:.2f} s; RSS {rss0 / 2**20:.1f} -> "
        f"{rss1 / 2**20:.1f} MiB; objects {obj0} -> {obj1}"
    )
    assert obj1 - obj0 < 200, f"Python objects grew by {obj1 - obj0}"
    if not SANITIZED:
        # one leaked 16-float bias per step would be > 6 MB over 10^5 steps
        assert rss1 - rss0 < 8 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"


def test_fit_epochs_flat_memory():
    m = _model(width=16)
    x, y = _data(256)
    m.fit(x, y, epochs=3, batch_size=16, verbose=0)
    rss0, obj0 = _rss_bytes(), _count_objects()
    m.fit(x, y, epochs=40 if not SANITIZED else 5, batch_size=16, verbose=0)
    rss1, obj1 = _rss_bytes(), _count_objects()
    assert obj1 - obj0 < 200
    if not SANITIZED:
        assert rss1 - rss0 < 8 * 2**20


def _maml_step(w, b, xs, ys, xq, yq, opt_w, opt_b, lr_inner=0.1):
    inner = ml.reduce_mean(ml.square(ml.linear(xs, w, b, "tanh") - ys))
    gw, gb = ml.grad(inner, [w, b], create_graph=True)
    w2, b2 = w - lr_inner * gw, b - lr_inner * gb
    outer = ml.reduce_mean(ml.square(ml.linear(xq, w2, b2, "tanh") - yq))
    mw, mb = ml.grad(outer, [w, b])
    with ml.no_grad():
        _core.assign(w, np.asarray(w) - 0.01 * np.asarray(mw))
        _core.assign(b, np.asarray(b) - 0.01 * np.asarray(mb))
    return outer


def test_maml_second_order_meta_steps_flat_memory():
    """10^4 second-order (create_graph) MAML meta-steps (10^5 with METALEARN_LONG): the
    graphs of grad-of-grad are freed each step."""
    steps = 100_000 if LONG else (200 if SANITIZED else 10_000)
    rng = np.random.default_rng(0)
    w = ml.tensor(rng.normal(size=(8, 32)).astype(F32) * 0.3, requires_grad=True)
    b = ml.tensor(np.zeros(32, F32), requires_grad=True)
    xs, ys, xq, yq = (
        ml.tensor(rng.normal(size=s).astype(F32)) for s in [(10, 8), (10, 32), (10, 8), (10, 32)]
    )
    for _ in range(50):
        _maml_step(w, b, xs, ys, xq, yq, None, None)
    rss0, obj0 = _rss_bytes(), _count_objects()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = _maml_step(w, b, xs, ys, xq, yq, None, None)
    elapsed = time.perf_counter() - t0
    rss1, obj1 = _rss_bytes(), _count_objects()
    print(
        f"\n{steps} MAML meta-steps in {elapsed:.2f} s; RSS {rss0 / 2**20:.1f} -> "
        f"{rss1 / 2**20:.1f} MiB; objects {obj0} -> {obj1}"
    )
    assert np.isfinite(loss.item())
    assert obj1 - obj0 < 200
    if not SANITIZED:
        assert rss1 - rss0 < 8 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"


def test_failing_calls_do_not_leak():
    """10^4 refused calls (bad shapes, corrupt files): error paths free what they took."""
    m = _trained_model()
    n = 1_000 if SANITIZED else 10_000
    bad_x = np.zeros((2, 5), F32)
    bad_g = [(np.zeros((3, 3), F32), m.trainable_variables[0])]
    a, b = ml.tensor(np.ones((3, 4), F32)), ml.tensor(np.ones((5, 4), F32))

    def once():
        for fn in (
            lambda: m(bad_x),
            lambda: m.optimizer.apply_gradients(bad_g),
            lambda: ml.matmul(a, b),
            lambda: ml.add(a, b),
            lambda: _core.load_tensors("/nonexistent/file"),
        ):
            try:
                fn()
            except (ValueError, TypeError, OSError):
                pass

    for _ in range(200):
        once()
    rss0, obj0 = _rss_bytes(), _count_objects()
    for _ in range(n):
        once()
    rss1, obj1 = _rss_bytes(), _count_objects()
    assert obj1 - obj0 < 200
    if not SANITIZED:
        assert rss1 - rss0 < 8 * 2**20


# ------------------------------------------------------------ reference counts
def _rc(x):
    """References held by the caller (getrefcount's argument and this frame's x removed):
    1 for an object held only by one local variable."""
    return sys.getrefcount(x) - 2


def test_refcounts_of_tensors_returned_by_the_binding():
    a = ml.tensor(np.ones((3, 4), F32), requires_grad=True)
    b = ml.tensor(np.ones((4,), F32))
    assert _rc(a) == 1 and _rc(b) == 1
    outs = {
        "tensor": lambda: ml.tensor([1.0, 2.0]),
        "as_tensor": lambda: ml.as_tensor(np.ones(3, F32)),
        "zeros": lambda: ml.zeros((2, 2)),
        "add": lambda: ml.add(a, b),
        "mul-operator": lambda: a * 2.0,
        "matmul": lambda: ml.matmul(a, ml.transpose(a)),
        "reduce_sum": lambda: ml.reduce_sum(a),
        "reshape": lambda: ml.reshape(a, (12,)),
        "linear": lambda: ml.linear(a, ml.ones((4, 2)), None, "relu"),
        "softmax": lambda: ml.softmax(a),
        "index": lambda: a[1],
        "detach": lambda: a.detach(),
        "T": lambda: a.T,
    }
    for name, fn in outs.items():
        r = fn()
        assert _rc(r) == 1, f"{name}: refcount {_rc(r)}"
        del r
    assert _rc(a) == 1 and _rc(b) == 1, "an op kept a reference to its input"


def test_refcounts_of_grad_results_and_inputs():
    a = ml.tensor(np.ones((3, 4), F32), requires_grad=True)
    w = ml.tensor(np.ones((4, 2), F32), requires_grad=True)
    y = ml.reduce_sum(ml.tanh(ml.matmul(a, w)))
    grads = ml.grad(y, [a, w], create_graph=True)
    assert _rc(grads) == 1
    ga, gw = grads
    del grads
    assert _rc(ga) == 1 and _rc(gw) == 1
    (gga,) = ml.grad(ml.reduce_sum(ga), [a])
    assert _rc(gga) == 1
    del y, ga, gw, gga
    assert _rc(a) == 1 and _rc(w) == 1


def test_refcounts_with_numpy_views_and_failures():
    a = ml.tensor(np.ones((3, 4), F32))
    arr = np.asarray(a)  # shares memory: the array keeps the tensor alive
    assert _rc(a) >= 1
    base = _rc(a)
    del arr
    assert _rc(a) <= base
    before = _rc(a)
    for _ in range(100):
        with pytest.raises(ValueError):
            ml.matmul(a, a)  # (3,4)@(3,4): refused
        with pytest.raises(ValueError):
            ml.reshape(a, (5,))
    assert _rc(a) == before, "a failed op leaked a reference to its input"
    src = np.ones((2, 2), F32)
    rc_src = _rc(src)
    t = ml.as_tensor(src)
    del t
    gc.collect()
    assert _rc(src) == rc_src


def test_refcounts_of_loaded_arrays_and_model_weights(tmp_path):
    m = _trained_model()
    p = tmp_path / "w.mlw"
    m.save_weights(p)
    entries = _core.load_tensors(str(p))
    for name, arr in entries:
        assert _rc(arr) == 2 and _rc(name) >= 1  # the tuple and our loop variable
    rcs = [_rc(v) for v in m.weights]
    for _ in range(50):
        m.train_on_batch(X, Y)
    m.load_weights(p)
    assert [_rc(v) for v in m.weights] == rcs


# ------------------------------------------------------------ threads
def _thread_model(seed):
    return dense_model(64, 128, 10, "tanh", optimizers.Adam(1e-3), seed=seed)


def _train_fixed(m, x, y, steps):
    for i in range(steps):
        lo = (i % 4) * 64
        m.train_on_batch(x[lo : lo + 64], y[lo : lo + 64])


def test_two_threads_two_models_same_as_sequential():
    """Two threads training two different models at once give bit-for-bit the weights of
    training them one after the other (no shared state is corrupted; ml.grad runs with
    the GIL released, so the threads do overlap)."""
    steps = 20 if SANITIZED else 60
    rng = np.random.default_rng(0)
    data = [
        (rng.normal(size=(256, 64)).astype(F32), rng.normal(size=(256, 10)).astype(F32))
        for _ in range(2)
    ]
    seq = [_thread_model(s) for s in (1, 2)]
    init = [m.get_weights() for m in seq]
    for m, (x, y) in zip(seq, data):
        _train_fixed(m, x, y, steps)
    par = [_thread_model(s) for s in (1, 2)]
    for m, w in zip(par, init):
        m.set_weights(w)
    errors = []

    def run(m, x, y):
        try:
            _train_fixed(m, x, y, steps)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(m, *d)) for m, d in zip(par, data)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for a, b in zip(seq, par):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            assert wa.tobytes() == wb.tobytes()


def test_one_model_from_two_threads_never_crashes():
    """The same model trained from two threads at once: not supported for reproducible
    results, but safe. Each step either completes or raises ValueError ("... was modified
    in place after it was used") when the other thread's optimizer step rewrote a weight
    between this step's forward pass and its gradient; a refused step changes nothing.
    Weights stay finite; memory is never corrupted (this test also runs under ASan)."""
    steps = 30 if SANITIZED else 150
    m = _thread_model(3)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(256, 64)).astype(F32), rng.normal(size=(256, 10)).astype(F32)
    refused, other = [], []

    def run():
        for i in range(steps):
            try:
                m.train_on_batch(x, y)
            except ValueError as e:
                refused.append(str(e))
            except Exception as e:  # pragma: no cover - reported below
                other.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other, other
    assert all("modified in place" in r for r in refused), set(refused)
    assert int(m.optimizer.iterations) == 2 * steps - len(refused)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    m.train_on_batch(x, y)  # still usable


def test_threads_share_weight_files_safely(tmp_path):
    """Two threads saving and loading the same model's weights file at once: every load
    sees a complete file (saves are atomic renames)."""
    m = _trained_model()
    p = tmp_path / "w.mlw"
    m.save_weights(p)
    errors = []

    def saver():
        for _ in range(50):
            m.save_weights(p)

    def loader():
        other = _trained_model()
        for _ in range(50):
            try:
                other.load_weights(p)
            except Exception as e:  # pragma: no cover
                errors.append(e)

    ts = [threading.Thread(target=saver), threading.Thread(target=loader)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def _weights_value(path):
    """The one value every weight of a file saved by _filled_model holds."""
    m = _model()
    m.load_weights(path)  # complete and checksummed, or it raises
    ws = m.get_weights()
    value = float(ws[0].flat[0])
    assert all((w == value).all() for w in ws), "a mix of two saves"
    return value


def _filled_model(value):
    m = _model()
    m.set_weights([np.full(w.shape, value, F32) for w in m.get_weights()])
    return m


def test_two_threads_saving_to_one_path_all_succeed(tmp_path):
    """Two threads saving to one path shared the temporary name `path.tmp<pid>`: one's
    rename took the other's file and about half the saves failed. Every save succeeds and
    the file is one of the saved versions, with no temporary file left."""
    p = tmp_path / "w.mlw"
    models_ = [_filled_model(1.0), _filled_model(2.0)]
    errors = []
    n = 30 if not SANITIZED else 10

    def saver(m):
        for _ in range(n):
            try:
                m.save_weights(p)
            except Exception as e:
                errors.append(e)

    ts = [threading.Thread(target=saver, args=(m,)) for m in models_]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, f"{len(errors)} of {2 * n} saves failed: {errors[0]}"
    assert _weights_value(p) in (1.0, 2.0)
    assert os.listdir(tmp_path) == ["w.mlw"]


_PROC_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    import metalearn as ml
    from metalearn.keras import layers, models
    path, value, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    m = models.Sequential([layers.Dense(8, activation="relu", input_shape=(4,)), layers.Dense(3)])
    m.set_weights([np.full(w.shape, value, np.float32) for w in m.get_weights()])
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        m.save_weights(path)
""")


def test_two_processes_saving_to_one_path_all_succeed(tmp_path):
    p = tmp_path / "w.mlw"
    script = tmp_path.parent / f"{tmp_path.name}_saver.py"
    script.write_text(_PROC_SAVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    n = 50 if not SANITIZED else 10
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(p), str(v), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for v in (3.0, 4.0)
    ]
    try:
        for pr in procs:
            assert pr.stdout.readline().strip() == b"ready"
        for pr in procs:  # start both loops together
            pr.stdin.write(b"go\n")
            pr.stdin.flush()
        for pr in procs:
            _, err = pr.communicate(timeout=300)
            assert pr.returncode == 0, err.decode()
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        script.unlink()
    assert _weights_value(p) in (3.0, 4.0)
    assert os.listdir(tmp_path) == ["w.mlw"]


def test_saves_follow_symlinks_and_refuse_special_files(tmp_path, char_device):
    """Model.save_weights and KnowledgeMemory.save write a link's target (the link is
    kept); /dev/null, a FIFO and a directory are refused, never replaced by a file."""
    from metalearn.memory import KnowledgeMemory

    (tmp_path / "real").mkdir()
    wlink, mlink = tmp_path / "w.mlw", tmp_path / "m.mlmem"
    wlink.symlink_to("real/w.mlw")  # dangling until the first save
    mlink.symlink_to(tmp_path / "real" / "m.mlmem")
    _filled_model(5.0).save_weights(wlink)
    _filled_model(6.0).save_weights(wlink)
    mem = KnowledgeMemory(8, 4, seed=1)
    mem.update(np.eye(4, dtype=F32), np.arange(4))
    mem.save(str(mlink))
    mem.save(str(mlink))
    assert wlink.is_symlink() and mlink.is_symlink()
    assert _weights_value(tmp_path / "real" / "w.mlw") == 6.0
    other = KnowledgeMemory.open(str(tmp_path / "real" / "m.mlmem"))
    for a, b in zip(mem.state(), other.state()):
        np.testing.assert_array_equal(a, b)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    adir = tmp_path / "adir"
    adir.mkdir()
    null_link = tmp_path / "null_link"  # a link to the real /dev/null, and a device
    null_link.symlink_to("/dev/null")
    m = _filled_model(7.0)
    for target in (char_device, null_link, fifo, adir):
        with pytest.raises(OSError, match="regular file"):
            m.save_weights(target)
        with pytest.raises(OSError, match="regular file"):
            mem.save(str(target))
    assert fifo.is_fifo() and adir.is_dir() and os.listdir(adir) == [] and null_link.is_symlink()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(set(os.listdir(tmp_path)) - {"null"}) == [
        "adir",
        "fifo",
        "m.mlmem",
        "null_link",
        "real",
        "w.mlw",
    ]
    assert sorted(os.listdir(tmp_path / "real")) == ["m.mlmem", "w.mlw"]


def test_long_file_name_saves(tmp_path):
    """A 250-character file name failed: `<name>.tmp<pid>` is over the 255 bytes a file
    name may have. (A NUL inside a tensor name: tests/reliability/test_core_badinput.py.)"""
    p = tmp_path / ("w" * 250)
    _filled_model(1.0).save_weights(p)
    _filled_model(2.0).save_weights(p)
    assert _weights_value(p) == 2.0
    assert os.listdir(tmp_path) == [p.name]


def test_metalearner_saves_into_one_directory_from_two_threads(tmp_path):
    """MetaLearner.save wrote config.json through the fixed name `config.json.tmp`: two
    saves into one directory at once failed (FileNotFoundError on the rename)."""
    from metalearn.meta.system import MetaLearner
    from metalearn.tasks import NWayKShot

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 16)).astype(F32), np.arange(100) % 10
    system = MetaLearner(n_way=5, hidden_units=8, memory_capacity=20, seed=0)
    system.fit(
        NWayKShot((x, y), n_way=5, k_shot=1, q_queries=2, augment_rotations=False, seed=0),
        iterations=2,
        meta_batch_size=2,
        verbose=0,
    )
    d = tmp_path / "sys"
    system.save(d)
    errors = []

    def saver():
        for _ in range(40 if not SANITIZED else 10):
            try:
                system.save(d)
            except Exception as e:
                errors.append(e)

    ts = [threading.Thread(target=saver) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, f"{len(errors)} saves failed: {errors[0]!r}"
    assert sorted(os.listdir(d)) == [
        "config.json",
        "memory.mlmem",
        "model.weights",
        "predictor.weights",
    ]
    loaded = MetaLearner.load(d)
    for a, b in zip(system.model.get_weights(), loaded.model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ numerical safety
def test_check_numerics_passes_finite_and_names_the_message():
    t = ml.tensor(np.ones((2, 3), F32))
    assert debugging.check_numerics(t, "layer dense_1") is t
    assert debugging.check_numerics(np.arange(4), "ints") is not None
    bad = np.ones((3, 4), F32)
    bad[0, 1], bad[2, 2], bad[1, 0] = np.nan, np.inf, np.nan
    with pytest.raises(
        FloatingPointError,
        match=r"^layer dense_1: Tensor had 2 NaN and 1 inf "
        r"values in a tensor of shape \(3, 4\)",
    ):
        debugging.check_numerics(ml.tensor(bad), "layer dense_1")
    with pytest.raises(debugging.NonFiniteError, match=r"loss: Tensor had 1 inf value"):
        debugging.check_numerics(np.array(np.inf), "loss")
    with pytest.raises(TypeError):
        debugging.check_numerics(np.array(["a"]), "strings")
    with pytest.raises(TypeError):
        debugging.check_numerics(None, "none")


@pytest.fixture
def numerics_on():
    debugging.enable_check_numerics()
    try:
        yield
    finally:
        debugging.disable_check_numerics()


def test_enable_check_numerics_names_the_layer_and_changes_nothing(numerics_on):
    m = _trained_model()
    before = _snapshot(m)
    x = X.copy()
    x[3, 1] = np.nan
    with pytest.raises(debugging.NonFiniteError) as info:
        m.train_on_batch(x, Y)
    msg = str(info.value)
    # relu passes the NaN on (issue 18; it made it 0, and the first non-finite value was then
    # a kernel's gradient), so the loss is the first non-finite value
    assert re.search(r"the loss is nan", msg), msg
    assert "inputs already hold 1 NaN" in msg, msg
    assert "not applied" in msg
    _assert_unchanged(before, m)


def test_enable_check_numerics_finds_the_first_bad_layer(numerics_on):
    ml.random.set_seed(0)
    m = models.Sequential(
        [
            layers.Dense(4, input_shape=(4,), name="first"),
            layers.Lambda(lambda t: ml.log(t - 1e6), name="bad_log"),
            layers.Dense(2, name="last"),
        ]
    )
    m.compile(optimizer="sgd", loss="mse")
    before = _snapshot(m)
    with pytest.raises(debugging.NonFiniteError, match=r"layer 'bad_log' \(Lambda\) is the first"):
        m.fit(X, np.zeros((10, 2), F32), verbose=0)
    _assert_unchanged(before, m)


def test_enable_check_numerics_nan_target(numerics_on):
    m = _trained_model()
    y = Y.copy()
    y[0, 0] = np.inf
    with pytest.raises(debugging.NonFiniteError, match=r"targets hold 1 inf"):
        m.fit(X, y, verbose=0)


def test_check_numerics_off_by_default_and_clean_runs_pass(numerics_on):
    m = _trained_model()
    m.fit(X, Y, epochs=2, verbose=0)  # finite: no error under the checks
    debugging.disable_check_numerics()
    assert not debugging.is_check_numerics_enabled()
    x = X.copy()
    x[0, 0] = np.nan
    m.train_on_batch(x, Y)  # off: NaN flows into the weights, as in Keras


def test_terminate_on_nan_stops_fit(capsys):
    m = _trained_model()
    x = np.repeat(X, 10, axis=0)
    y = np.repeat(Y, 10, axis=0)
    y[50] = np.nan
    hist = m.fit(
        x,
        y,
        epochs=5,
        batch_size=10,
        shuffle=False,
        verbose=0,
        callbacks=[debugging.TerminateOnNaN()],
    )
    assert len(hist.history["loss"]) == 1
    assert "Invalid loss, terminating training" in capsys.readouterr().out
