"""Constants and builders the test files import by name (``from tests.helpers import F32``).

Fixtures are in tests/conftest.py; what a test needs at import time (a dtype, a path, a
skip mark, a model builder called from module-level helpers) is here.
"""

import os
from pathlib import Path

import numpy as np
import pytest

F32 = np.float32

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# the PyTorch fixtures (*.npz) and the scripts that made them (generate.py, generate_conv.py)
REFERENCE = TESTS / "reference"


def _omniglot_dir():
    # METALEARN_DATA names the Omniglot folder or the folder above it (the loader accepts
    # both); without it, the shared data beside the checkout
    base = os.environ.get("METALEARN_DATA")
    root = Path(base) if base else REPO.parent / "shared" / "data"
    for d in (root, root / "omniglot"):
        if (d / "omniglot_background.npz").is_file():
            return d
    return root / "omniglot"


OMNIGLOT = _omniglot_dir()
needs_omniglot = pytest.mark.skipif(
    not (OMNIGLOT / "omniglot_background.npz").is_file(),
    reason="no Omniglot data (set METALEARN_DATA)",
)


def omniglot_file(name="omniglot_background.npz"):
    """The path of one of the shared Omniglot files, or a skip that names it."""
    path = OMNIGLOT / name
    if not path.is_file():
        pytest.skip(f"Omniglot data not found: {path} (set METALEARN_DATA)")
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
