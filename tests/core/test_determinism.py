"""The determinism contract (ARCHITECTURE.md): every choice of kernel, path, algorithm or
reduction order depends only on the shapes of one task's work, never on the thread count,
the number of processes or timings, so results are the same bits for any thread count.

Each program below is run at 1, 2 and 3 threads in this process (``set_num_threads``),
and in fresh processes with METALEARN_NUM_THREADS=1, 2, 3, with the default kernels and
with ML_KERNEL=portable; the bits must agree across thread counts for each kernel variant
(the portable and AVX2 kernels round differently: they are compared each with itself).
Sizes are chosen so that every op really is split over the threads at 2 and 3 (past each
split threshold: csrc/kernels/gemm_config.h's PAR_MIN_MACS, the element-wise, reduction,
pooling, batch-norm and Adam thresholds) and the GEMMs cover every path of the path table
(csrc/kernels/gemm_path.c), threaded by rows and by columns where the path allows it.

Random ops are left out: a replay's random draws on several threads take blocks of one
stream in an order that depends on timing (RELIABILITY.md, thread-safety table).
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, keras
from metalearn.meta import MAML, ProtoNet, models
from metalearn.tasks import NWayKShot, Sinusoid
from tests.helpers import F32, REPO, sinusoid_model

THREADS = (1, 2, 3)


# A known bug, seen only in the -O1 build of .ci/sanitize-python.sh (which sets this): an
def _rng(seed):
    return np.random.default_rng(seed)


def _arrays(xs):
    return [np.asarray(x).copy() for x in xs]


def _grads(loss, params, **kw):
    return _arrays(ml.grad(loss, params, **kw))


# ------------------------------------------------------------------ the programs
# Each returns a list of arrays; it seeds everything it draws.

# m x k x n, transpose_a, transpose_b: a product for each path of gemm_path.c's table
# (AVX2 kernels), first at a size that runs on one thread, then past PAR_MIN_MACS so that
# it splits over the threads (by rows or by columns, as gemm_thread.c's SPLIT_UNIT allows)
GEMM_SHAPES = [
    (250, 40, 40, 0, 0),  # SMALL_W (24 + 16 tiles)
    (10, 40, 40, 0, 0),  # SMALL_W, 2 x 40 tiles
    (10, 1, 40, 0, 0),  # OUTER
    (40, 10, 1, 0, 0),  # DOTS
    (40, 10, 1, 1, 0),  # GEMV_T
    (1, 10, 40, 0, 0),  # ROW
    (75, 784, 5, 0, 1),  # DOTS_NT
    (5, 784, 256, 0, 0),  # SMALL, long k
    # SMALL with B^T as C^T = B A^T (an LSTM's dz @ U^T); split by columns into parts
    # that copy B^T instead: the same FMA chain an element either way
    (32, 512, 128, 0, 1),
    (160, 90, 70, 1, 1),  # PACKED, both transposed
    (3, 5, 7, 0, 0),  # PACKED, tiny (plain loops)
    (4096, 40, 40, 0, 0),  # SMALL_W, split by rows
    (2048, 64, 64, 0, 0),  # SMALL, split by rows
    (96, 256, 2048, 0, 0),  # SMALL, split by columns
    (8192, 256, 8, 0, 1),  # DOTS_NT, split by rows
    (4096, 1, 1024, 0, 0),  # OUTER, split by rows
    (40000, 64, 1, 0, 0),  # DOTS, split by rows
    (40000, 64, 1, 1, 0),  # GEMV_T, split by rows
    (1, 512, 8192, 0, 0),  # ROW, split by columns
    (256, 784, 128, 0, 0),  # PACKED, split by rows
    (40, 784, 300, 1, 0),  # PACKED (A^T), split by columns
    # PACKED (n past SMALL_MAX_N), split by columns into parts whose own shape the table
    # would send to SMALL: each part must run the whole product's path
    (16, 300, 4096, 0, 0),
]


def gemm():
    rng, out = _rng(1), []
    for m, k, n, ta, tb in GEMM_SHAPES:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
        out.append(ml.matmul(a, b, transpose_a=bool(ta), transpose_b=bool(tb)))
    # a dense layer's product with its bias and activation applied as the GEMM stores C
    x, w, b = (rng.standard_normal(s).astype(F32) for s in ((256, 784), (784, 128), (128,)))
    out.append(ml.linear(x, w, b, "relu"))
    # many small products of one shape (MAML's per-task ones), split by batch ranges
    a3, b3 = rng.standard_normal((64, 75, 784)).astype(F32), rng.standard_normal((64, 784, 5))
    out.append(ml.matmul(a3, b3.astype(F32)))
    return _arrays(out)


def elementwise():
    rng = _rng(2)
    # 61,705 elements: split in 2 or 3, blocks of an odd length would end inside a vector
    x = ml.tensor(rng.standard_normal((301, 205)).astype(F32), requires_grad=True)
    r = ml.tensor(rng.standard_normal((205,)).astype(F32), requires_grad=True)
    y = ml.gelu(x) * ml.tanh(x + r) + ml.exp(-ml.square(x)) / (ml.sigmoid(x) + 1.0)
    y = ml.maximum(y, ml.relu(x - r) * 0.5)
    loss = ml.reduce_sum(y * y)
    return _arrays([y, loss]) + _grads(loss, [x, r])


def reductions():
    rng = _rng(3)
    x = ml.tensor(rng.standard_normal((64, 300, 40)).astype(F32), requires_grad=True)
    out = [
        ml.reduce_sum(x, axis=0),
        ml.reduce_sum(x, axis=1, keepdims=True),
        ml.reduce_sum(x, axis=2),
        ml.reduce_sum(x, axis=(0, 1)),
        ml.reduce_mean(x, axis=1),
        ml.reduce_max(x, axis=0),
        ml.reduce_max(x, axis=2),
        ml.reduce_sum(x),
        # long and narrow (a conv bias's gradient): fixed chunks of rows over the pool
        ml.reduce_sum(ml.reshape(x, (19200, 40)), axis=0),
    ]
    loss = ml.reduce_sum(ml.reduce_max(x, axis=1) * ml.reduce_mean(x, axis=1))
    return _arrays(out) + _grads(loss, [x])


def softmax_crossentropy():
    rng = _rng(4)
    logits = ml.tensor(rng.standard_normal((4096, 10)).astype(F32) * 3, requires_grad=True)
    labels = rng.integers(0, 10, 4096)
    onehot = np.eye(10, dtype=F32)[labels]
    sparse = ml.reduce_mean(ml.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    dense = ml.reduce_mean(ml.categorical_crossentropy(onehot, logits, from_logits=True))
    sm, lsm = ml.softmax(logits), ml.log_softmax(logits, axis=0)
    loss = sparse + dense + ml.reduce_sum(sm * lsm)
    return _arrays([sparse, dense, sm, lsm]) + _grads(loss, [logits])


def conv2d():
    rng, out = _rng(5), []
    x = ml.tensor(rng.standard_normal((16, 14, 14, 8)).astype(F32), requires_grad=True)
    for kshape, strides, padding in (
        ((3, 3, 8, 16), (1, 1), "same"),
        ((3, 3, 8, 12), (2, 2), "valid"),
        ((1, 1, 8, 16), (1, 1), "valid"),
    ):  # pointwise: no im2col
        k = ml.tensor(rng.standard_normal(kshape).astype(F32) * 0.3, requires_grad=True)
        b = ml.tensor(rng.standard_normal(kshape[-1:]).astype(F32), requires_grad=True)
        y = ml.conv2d(x, k, b, strides=strides, padding=padding)
        w = rng.standard_normal(tuple(y.shape)).astype(F32)
        loss = ml.reduce_sum(y * w)
        # the input and kernel gradients, and a second-order term (both transposes' own
        # backward: the kernel gradient summed over image chunks in a fixed order)
        gx, gk, gb = ml.grad(loss, [x, k, b], create_graph=True)
        out += [y, gx, gk, gb] + _grads(ml.reduce_sum(gx * gx) + ml.reduce_sum(gk * gk), [x, k])
    return _arrays(out)


def conv2d_winograd():
    """3x3 stride-1 'same' layers of >= 16 channels: Winograd F(2x2, 3x3) or F(4x4), its chunks of
    tiles and its kernel gradient's parts fixed by the shape (kernels/winograd.c)."""
    rng, out = _rng(13), []
    # the third and fifth: F(4x4, 3x3) (the table's choice from 20x20 on); the last two have
    # >= WINO_PAR_KERNELS kernels, so their kernel transforms and the kernel gradient's last
    # step run on the pool too
    for xshape, filters in (
        ((16, 14, 14, 16), 24),
        ((6, 7, 9, 32), 16),
        ((3, 22, 21, 32), 24),
        ((4, 10, 10, 48), 32),
        ((2, 22, 20, 40), 32),
    ):
        x = ml.tensor(rng.standard_normal(xshape).astype(F32), requires_grad=True)
        k = ml.tensor(
            rng.standard_normal((3, 3, xshape[-1], filters)).astype(F32) * 0.1, requires_grad=True
        )
        b = ml.tensor(rng.standard_normal(filters).astype(F32), requires_grad=True)
        y = ml.conv2d(x, k, b, strides=1, padding="same")
        w = rng.standard_normal(tuple(y.shape)).astype(F32)
        gx, gk, gb = ml.grad(ml.reduce_sum(y * w), [x, k, b], create_graph=True)
        out += [y, gx, gk, gb] + _grads(ml.reduce_sum(gx * gx) + ml.reduce_sum(gk * gk), [x, k])
    return _arrays(out)


def pooling():
    rng, out = _rng(6), []
    x = ml.tensor(rng.standard_normal((32, 28, 28, 16)).astype(F32), requires_grad=True)
    for pool in (ml.max_pool2d, ml.avg_pool2d):
        for size, strides, padding in (((2, 2), None, "valid"), ((3, 3), (2, 2), "same")):
            y = pool(x, size, strides, padding)
            w = rng.standard_normal(tuple(y.shape)).astype(F32)
            out += [y] + _grads(ml.reduce_sum(y * w), [x])
    y = ml.global_avg_pool2d(x)
    return _arrays(out + [y]) + _grads(ml.reduce_sum(y * y), [x])


def batch_norm():
    rng = _rng(7)
    x = ml.tensor(rng.standard_normal((64, 8, 8, 32)).astype(F32) * 2 + 1, requires_grad=True)
    gamma = ml.tensor(rng.standard_normal(32).astype(F32) + 1, requires_grad=True)
    beta = ml.tensor(rng.standard_normal(32).astype(F32), requires_grad=True)
    y = ml.batch_norm(x, gamma, beta, None, None, training=True)
    w = rng.standard_normal((64, 8, 8, 32)).astype(F32)
    out = [y] + _grads(ml.reduce_sum(y * w), [x, gamma, beta])
    # second order (MAML's outer gradient): batch_norm_dx's one-pass backward over chunks
    y = ml.batch_norm(x, gamma, beta, None, None, training=True)
    gx, gg = ml.grad(ml.reduce_sum(y * w), [x, gamma], create_graph=True)
    out += [gx, gg] + _grads(ml.reduce_sum(gx * gx) + ml.reduce_sum(gg * gg), [x, gamma])
    # per-task statistics of a meta-batch (MAML's vectorised batch norm), split by groups
    xg = ml.tensor(rng.standard_normal((7, 75, 134)).astype(F32), requires_grad=True)
    gg = ml.tensor(rng.standard_normal((7, 134)).astype(F32) + 1, requires_grad=True)
    bg = ml.tensor(rng.standard_normal((7, 134)).astype(F32), requires_grad=True)
    yg = _core.batch_norm_grouped(xg, gg, bg)
    wg = rng.standard_normal((7, 75, 134)).astype(F32)
    return _arrays(out + [yg]) + _grads(ml.reduce_sum(yg * wg), [xg, gg, bg])


def dense_fit():
    """A few Adam steps of a Dense network through Model.fit (its traced training step;
    Adam's update of >= 65k weights is split over the threads)."""
    rng = _rng(8)
    x = rng.standard_normal((512, 784)).astype(F32)
    y = rng.integers(0, 10, 512)
    ml.random.set_seed(0)
    model = keras.Sequential(
        [keras.layers.Dense(128, activation="relu", input_shape=(784,)), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    hist = model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model.get_weights() + [np.array(hist.history["loss"], np.float64)]


def _maml_sinusoid(first_order):
    maml = MAML(sinusoid_model(0), inner_lr=0.01, first_order=first_order, meta_lr=0.001)
    hist = maml.fit(Sinusoid(k_shot=10, seed=0), iterations=3, meta_batch_size=25, verbose=0)
    return maml.model.get_weights() + [np.array(hist["loss"], np.float64)]


def maml_sinusoid_second_order():
    return _maml_sinusoid(False)


def maml_sinusoid_first_order():
    return _maml_sinusoid(True)


def _images(classes, per_class, size, seed):
    rng = _rng(seed)
    x = rng.random((classes * per_class, size, size, 1)).astype(F32)
    return x, np.repeat(np.arange(classes), per_class)


def maml_omniglot_mlp():
    """MAML's vectorised meta-batch through an MLP with batch norm (per-task statistics,
    the low-rank inner update), second order."""
    ml.random.set_seed(0)
    model = models.omniglot_mlp(5, hidden=(64, 64), batch_norm=True)
    maml = MAML(model, inner_lr=0.4, inner_steps=1, meta_lr=0.003)
    tasks = NWayKShot(
        _images(20, 6, 28, 9), n_way=5, k_shot=1, q_queries=5, augment_rotations=False, seed=0
    )
    hist = maml.fit(tasks, iterations=2, meta_batch_size=8, verbose=0)
    return maml.model.get_weights() + [np.array(hist["loss"], np.float64)]


def protonet():
    """ProtoNet episodes through a conv encoder (conv, batch norm, pooling)."""
    ml.random.set_seed(0)
    encoder = keras.Sequential(
        [
            keras.layers.Conv2D(8, 3, padding="same", input_shape=(14, 14, 1)),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(16),
        ]
    )
    pn = ProtoNet(encoder, meta_lr=0.001)
    tasks = NWayKShot(
        _images(20, 6, 14, 10), n_way=5, k_shot=2, q_queries=3, augment_rotations=False, seed=0
    )
    hist = pn.fit(tasks, iterations=2, meta_batch_size=2, verbose=0)
    return encoder.get_weights() + [np.array(hist["loss"], np.float64)]


def function_map(n_threads=None):
    """Function.map over the tasks of a meta-batch: each call replayed from C, the calls
    spread over n_threads threads (default: get_num_threads())."""
    rng = _rng(11)
    w1 = ml.tensor(rng.standard_normal((40, 64)).astype(F32) * 0.2)
    w2 = ml.tensor(rng.standard_normal((64, 1)).astype(F32) * 0.2)

    @ml.function
    def task_loss(x, y):
        pred = ml.matmul(ml.tanh(ml.matmul(x, w1)), w2)
        return ml.reduce_mean(ml.square(pred - y)), ml.reduce_sum(pred, axis=0)

    calls = [
        (rng.standard_normal((500, 40)).astype(F32), rng.standard_normal((500, 1)).astype(F32))
        for _ in range(12)
    ]
    outs = task_loss.map([(ml.tensor(x), ml.tensor(y)) for x, y in calls], n_threads=n_threads)
    return _arrays([t for out in outs for t in out])


PROGRAMS = {
    f.__name__: f
    for f in (
        gemm,
        elementwise,
        reductions,
        softmax_crossentropy,
        conv2d,
        conv2d_winograd,
        pooling,
        batch_norm,
        dense_fit,
        maml_sinusoid_second_order,
        maml_sinusoid_first_order,
        maml_omniglot_mlp,
        protonet,
        function_map,
    )
}


def run_all():
    """Every program, its arrays under "<program>/<index>" (what a subprocess saves)."""
    out = {}
    for name, program in PROGRAMS.items():
        for i, a in enumerate(program()):
            out[f"{name}/{i}"] = a
    return out


# ------------------------------------------------------------------ comparisons


def _assert_same_bits(expected, got, what):
    assert len(expected) == len(got), f"{what}: {len(got)} results, expected {len(expected)}"
    for i, (a, b) in enumerate(zip(expected, got)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}, result {i}: {b.shape} {b.dtype}"
        if a.tobytes() != b.tobytes():
            differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
            where = np.argwhere(differ)
            first = tuple(int(j) for j in where[0]) if len(where) else "a NaN's or a zero's sign"
            most = float(np.max(np.abs(a[differ] - b[differ]))) if len(where) else 0.0
            pytest.fail(
                f"{what}, result {i} of shape {a.shape}: {len(where)} elements differ, "
                f"first at {first}; max |difference| {most:.3g}"
            )


def _with_threads(n, fn, *args):
    prev = ml.get_num_threads()
    ml.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        ml.set_num_threads(prev)


@pytest.mark.parametrize("name", PROGRAMS)
def test_same_bits_at_1_2_3_threads(name):
    runs = [_with_threads(n, PROGRAMS[name]) for n in THREADS]
    assert runs[0] and all(r.size for r in runs[0])
    for n, run in zip(THREADS[1:], runs[1:]):
        _assert_same_bits(runs[0], run, f"{name} at {n} threads against 1")


def test_function_map_same_bits_for_any_n_threads():
    """Function.map's own thread count (the calls spread over n threads), whatever the
    core's thread count inside each call."""
    runs = [_with_threads(1, function_map, n) for n in THREADS]
    runs += [_with_threads(2, function_map, n) for n in THREADS]
    for i, run in enumerate(runs[1:], 1):
        _assert_same_bits(runs[0], run, f"Function.map run {i} against n_threads=1")


SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from metalearn import _core
from tests.core.test_determinism import run_all
np.savez(sys.argv[2], **run_all())
print(_core.kernel_name(), _core.get_num_threads())
"""


def _in_process(kernel, threads, path):
    env = {k: v for k, v in os.environ.items() if k not in ("ML_KERNEL", "METALEARN_NUM_THREADS")}
    env["METALEARN_NUM_THREADS"] = str(threads)
    if kernel == "portable":
        env["ML_KERNEL"] = "portable"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    variant, n = r.stdout.split()[-2:]
    assert int(n) == threads
    if kernel == "portable":
        assert variant == "portable"
    with np.load(path) as z:
        return variant, {k: z[k] for k in z.files}


@pytest.mark.parametrize("kernel", ["default", "portable"])
def test_same_bits_in_processes_with_1_2_3_threads(kernel, tmp_path):
    """Fresh processes, the thread count from METALEARN_NUM_THREADS (as a worker process of
    a distributed run would set it), for each kernel variant."""
    runs = [_in_process(kernel, n, tmp_path / f"{n}.npz") for n in THREADS]
    (variant, first), names = runs[0], sorted(runs[0][1])
    assert {key.split("/")[0] for key in names} == set(PROGRAMS)
    for n, (v, run) in zip(THREADS[1:], runs[1:]):
        assert v == variant and sorted(run) == sorted(first)
        for key in names:
            _assert_same_bits([first[key]], [run[key]], f"{key} ({v}) at {n} threads against 1")
    if kernel == "default" and variant == _core.kernel_name():
        # another process gives this process's bits
        here = _with_threads(2, run_all)
        for key in names:
            _assert_same_bits([here[key]], [first[key]], f"{key}: this process against another")


# ------------------------------------------------------------------ the choices themselves


def _code(path):
    text = (REPO / "csrc" / path).read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # comments may name what is not used
    return re.sub(r"//[^\n]*", "", text)


@pytest.mark.parametrize("path", ["kernels/gemm_path.c", "ops/conv.c", "kernels/winograd.c"])
def test_kernel_and_algorithm_choices_read_no_thread_count_and_no_clock(path):
    """The GEMM path table and the convolution's plan (im2col or pointwise, its chunks of
    images, the order its partial kernel gradients are summed in) are functions of the
    shapes: neither file reads the thread count or a clock."""
    code = _code(path)
    for name in (
        "ml_get_num_threads",
        "get_num_threads",
        "ml__split_step",
        "clock",
        "time(",
        "rdtsc",
        "getenv",
    ):
        assert name not in code, f"csrc/{path} reads {name}"
