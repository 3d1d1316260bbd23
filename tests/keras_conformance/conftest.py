"""Shared helpers of the Keras 3 conformance suite.

Every expected value in this folder is a fact taken from Keras 3's own tests
(keras-team/keras, ``keras/src/**/*_test.py`` at 3.15.1), cited by file and test name
next to the assertion, or a formula Keras documents; the test code is ours. Tolerances
mirror Keras': ``assertAlmostEqual`` checks 3 decimals, ``assertAllClose`` defaults to
atol = rtol = 1e-6.

The live comparison (``test_live_keras.py``, marked ``keras``) needs Keras 3 and PyTorch;
``keras_torch`` skips with the reason when either is missing, so the default test run
(``pip install -e '.[test]' && python -m pytest -q``) needs neither.
"""
import os

import numpy as np
import pytest

import metalearn as ml


@pytest.fixture(autouse=True)
def _seeded():
    # every test starts from the same core and NumPy streams
    ml.random.set_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def keras_torch():
    """Keras 3 on the PyTorch backend, or a skip saying what is missing."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("live Keras comparison needs torch (pip install torch==2.13.0 keras)")
    try:
        import keras
    except ImportError:
        pytest.skip("live Keras comparison needs keras (pip install torch==2.13.0 keras)")
    if keras.backend.backend() != "torch":
        pytest.skip(f"live Keras comparison runs on the torch backend; KERAS_BACKEND is "
                    f"{keras.backend.backend()!r}")
    keras.utils.set_random_seed(0)
    return keras
