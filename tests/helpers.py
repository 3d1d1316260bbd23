"""Constants and builders the test files import by name (``from tests.helpers import F32``).

Fixtures are in tests/conftest.py; what a test needs at import time (a dtype, a path, a
skip mark, a model builder called from module-level helpers) is here.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

F32 = np.float32

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# the PyTorch fixtures (*.npz) and the scripts that made them (generate.py, generate_conv.py)
REFERENCE = TESTS / "reference"


# Data the tests do not ship (Omniglot) is looked for where metalearn looks (path-less:
# $METALEARN_DATA, the user data folder, ../shared/data beside the checkout). A test that
# needs it skips with a reason naming those places; with METALEARN_REQUIRE_DATA=1 (CI)
# the same condition fails instead, so a run never passes by silently skipping them.
REQUIRE_DATA = os.environ.get("METALEARN_REQUIRE_DATA", "") not in ("", "0")


def data_missing(reason):
    """Skips the test (fails it under METALEARN_REQUIRE_DATA=1) because data is absent."""
    if REQUIRE_DATA:
        pytest.fail(f"{reason} [METALEARN_REQUIRE_DATA=1 turns this skip into a failure]")
    pytest.skip(reason)


_FOUND = {}


def find_omniglot():
    """``(folder, None)`` when metalearn's search order finds both Omniglot sets (the
    packaged .npz arrays, the official zips or their extracted folders), else
    ``(None, reason)``; the reason lists every folder searched. Looked up once."""
    if "omniglot" not in _FOUND:
        from metalearn.datasets import DataNotFoundError, omniglot_search_paths
        from metalearn.datasets._omniglot import _find

        try:
            folder = _find("background", "lanczos", None)[0]
            _find("evaluation", "lanczos", None)
            _FOUND["omniglot"] = (folder, None)
        except DataNotFoundError:
            places = ", ".join(str(p) for p in omniglot_search_paths())
            _FOUND["omniglot"] = (
                None,
                f"needs Omniglot, not found in {places} "
                "(set METALEARN_DATA to the folder holding it)",
            )
    return _FOUND["omniglot"]


# the mark that tests/conftest.py acts on: skip (or fail) without Omniglot
requires_omniglot = pytest.mark.requires_omniglot
needs_omniglot = requires_omniglot  # the older name


def omniglot_file(name="omniglot_background.npz"):
    """The path of one of metalearn's packaged Omniglot files (.npz arrays, ``raw/...``),
    or a data skip (a failure under METALEARN_REQUIRE_DATA=1) that names it."""
    folder, reason = find_omniglot()
    if folder is None:
        data_missing(reason)
    path = folder / name
    if not path.is_file():
        data_missing(f"needs {path} (metalearn's packaged Omniglot files), not found")
    return path


def dense_model(inp=4, width=8, out=3, activation="relu", optimizer="adam", loss="mse", seed=0):
    """Sequential([Dense(width, activation), Dense(out)]) on ``inp`` features, compiled; the
    core's stream is seeded first, so the same arguments give the same weights."""
    import metalearn as ml
    from metalearn.keras import layers, models

    ml.random.set_seed(seed)
    model = models.Sequential(
        [layers.Dense(width, activation=activation, input_shape=(inp,)), layers.Dense(out)]
    )
    model.compile(optimizer=optimizer, loss=loss)
    return model


def sinusoid_model(seed=0):
    """The sinusoid regression MLP of the MAML paper (40-40 ReLU), seeded."""
    import metalearn as ml
    from metalearn.meta import models

    ml.random.set_seed(seed)
    return models.sinusoid_mlp()


def load_script(path, name):
    """A script that is not a package module (a benchmark, a notebook runner), imported
    from its file as module `name`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp_fixture_model():
    """The 4-8(tanh)-3 MLP with the weights of the PyTorch fixture tests/reference/mlp.npz
    (the MAML meta-gradient references are taken from it)."""
    from metalearn import keras

    ref = np.load(REFERENCE / "mlp.npz")
    model = keras.Sequential(
        [keras.layers.Dense(8, activation="tanh", input_shape=(4,)), keras.layers.Dense(3)]
    )
    model.set_weights([ref["mlp/" + k] for k in ("W1", "b1", "W2", "b2")])
    return model


def torch_mlp_meta_reference(steps, lr, learned_rates=False):
    """PyTorch float64 reference for ``mlp_fixture_model`` on the fixture's task: the
    query loss after `steps` inner SGD steps of rate `lr` (second order), and its gradient
    with respect to the weights, followed by the per-weight rates' with `learned_rates`
    (Meta-SGD, Li et al. 2017: theta - alpha * grad, alpha starting at `lr`)."""
    import torch

    ref = np.load(REFERENCE / "mlp.npz")
    P = [
        torch.tensor(ref["mlp/" + k].astype(np.float64), requires_grad=True)
        for k in ("W1", "b1", "W2", "b2")
    ]
    A = [torch.full(p.shape, lr, dtype=torch.float64, requires_grad=True) for p in P]
    xs, xq = (torch.tensor(ref[k].astype(np.float64)) for k in ("maml/xs", "maml/xq"))
    ys, yq = (torch.tensor(ref[k]) for k in ("maml/ys", "maml/yq"))

    def f(W, x, y):
        logits = torch.tanh(x @ W[0] + W[1]) @ W[2] + W[3]
        return torch.nn.functional.cross_entropy(logits, y)

    fast = P
    for _ in range(steps):
        g = torch.autograd.grad(f(fast, xs, ys), fast, create_graph=True)
        fast = [w - (a if learned_rates else lr) * gi for w, a, gi in zip(fast, A, g)]
    lq = f(fast, xq, yq)
    grads = torch.autograd.grad(lq, P + A if learned_rates else P)
    return lq.item(), [g.numpy() for g in grads]


def require_omniglot(what):
    """Skips `what` (fails it under METALEARN_REQUIRE_DATA=1) when Omniglot is absent: the
    call form of the ``requires_omniglot`` mark, for a test that needs the data only in some
    of its cases (a README block, a notebook)."""
    folder, reason = find_omniglot()
    if folder is None:
        data_missing(f"{what}: {reason}")
    return folder


def run_script(tmp_path, source, args, *, expect_kill=False, launch=(), env=None):
    """Writes `source` to tmp_path/runner.py and runs it from the repository root with the
    checkout on PYTHONPATH (under `launch`, e.g. an mpiexec command line, when given; `env`
    replaces os.environ as the base); asserts it exited 0, or was killed by SIGKILL when
    `expect_kill` (the kill-and-resume tests). Returns the CompletedProcess."""
    script = tmp_path / "runner.py"
    script.write_text(source)
    p = subprocess.run(
        [*launch, sys.executable, str(script), *map(str, args)],
        env=dict(os.environ if env is None else env, PYTHONPATH=str(REPO)),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if expect_kill:
        assert p.returncode == -signal.SIGKILL, p.stderr
    else:
        assert p.returncode == 0, p.stderr
    return p
