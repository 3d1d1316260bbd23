"""Assertions shared by the conformance tests (Keras' tolerances and config round trips)."""
import json

import numpy as np


def almost_equal(actual, desired, decimal=3):
    """Keras' ``TestCase.assertAlmostEqual`` (3 decimals by default)."""
    np.testing.assert_almost_equal(np.asarray(actual, dtype=np.float64),
                                   np.asarray(desired, dtype=np.float64), decimal=decimal)


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
