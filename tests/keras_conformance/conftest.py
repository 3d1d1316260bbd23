"""Shared helpers of the Keras 3 conformance suite.

Every expected value in this folder is a fact taken from Keras 3's own tests
(keras-team/keras, ``keras/src/**/*_test.py`` at 3.15.1), cited by file and test name
next to the assertion, or a formula Keras documents; the test code is ours. Tolerances
mirror Keras': ``assertAlmostEqual`` checks 3 decimals, ``assertAllClose`` defaults to
atol = rtol = 1e-6.

The live comparison (``test_live_keras.py``, marked ``keras``) needs Keras 3 and PyTorch;
it skips with the reason when either is missing, so the default test run
(``pip install -e '.[test]' && python -m pytest -q``) needs neither.
"""

import numpy as np
import pytest

import metalearn as ml


@pytest.fixture(autouse=True)
def _seeded():
    # every test starts from the same core and NumPy streams
    ml.random.set_seed(0)
    np.random.seed(0)
    yield
