"""Assertions shared by the conformance tests (Keras' tolerances and config round trips)."""

import json
import os

import numpy as np
import pytest


def almost_equal(actual, desired, decimal=3):
    """Keras' ``TestCase.assertAlmostEqual`` (3 decimals by default)."""
    np.testing.assert_almost_equal(
        np.asarray(actual, dtype=np.float64), np.asarray(desired, dtype=np.float64), decimal=decimal
    )


def all_close(actual, desired, atol=1e-6, rtol=1e-6):
    """Keras' ``TestCase.assertAllClose`` (atol = rtol = 1e-6 by default), shapes included."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape or desired.ndim == 0, (actual.shape, desired.shape)
    np.testing.assert_allclose(actual, desired, atol=atol, rtol=rtol)


def _json(config):
    return json.dumps(config, sort_keys=True, default=repr)


def assert_config_round_trip(instance, serialize=None, deserialize=None):
    """Keras' ``run_class_serialization_test``: ``cls.from_config(get_config())`` has the
    same config, and so has ``deserialize(serialize(instance))`` (no custom_objects)."""
    config = instance.get_config()
    revived = type(instance).from_config(config)
    assert _json(revived.get_config()) == _json(config)
    if serialize is not None:
        revived = deserialize(json.loads(json.dumps(serialize(instance))))
        assert type(revived) is type(instance)
        assert _json(revived.get_config()) == _json(config)


def require_keras():
    """Keras 3 on the PyTorch backend, or a module-level skip that says what is missing.

    With METALEARN_REQUIRE_KERAS=1 (CI's extras step) a missing keras or torch is an
    error instead: that run exists to execute these tests.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import torch  # noqa: F401
        import keras
    except ImportError as e:
        if os.environ.get("METALEARN_REQUIRE_KERAS"):
            raise
        pytest.skip(
            f"live Keras comparison needs keras and torch ({e}); "
            "pip install torch==2.13.0 keras==3.15.1",
            allow_module_level=True,
        )
    if keras.backend.backend() != "torch":
        reason = (
            f"live Keras comparison runs on the torch backend; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}"
        )
        if os.environ.get("METALEARN_REQUIRE_KERAS"):
            raise RuntimeError(reason)
        pytest.skip(reason, allow_module_level=True)
    return keras
