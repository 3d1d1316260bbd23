"""save_weights/load_weights with '.weights.h5': Keras 3's HDF5 layout
(keras/src/saving/saving_lib.py: ``layers/<class in snake case>[_k]/vars/<i>``), through
h5py, the optional extra metalearn[keras-io]. The interchange with Keras 3 itself is in
tests/keras_conformance/test_live_keras.py."""

import os

import numpy as np
import pytest

from metalearn import keras

L = keras.layers


def h5py_or_skip():
    try:
        import h5py

        return h5py
    except ImportError:
        if os.environ.get("METALEARN_REQUIRE_H5PY") or os.environ.get("METALEARN_REQUIRE_KERAS"):
            raise
        pytest.skip("the .weights.h5 format needs h5py: pip install 'metalearn[keras-io]'")


def model():
    return keras.Sequential(
        [
            L.Input((6, 6, 2)),
            L.Conv2D(3, 3),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(4),
            L.Dense(2),
        ]
    )


def test_layout_and_round_trip(tmp_path):
    h5py = h5py_or_skip()
    m = model()
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in m.weights])
    path = tmp_path / "m.weights.h5"
    m.save_weights(path)
    with h5py.File(path, "r") as f:
        groups = []
        f.visit(groups.append)
        assert "layers/conv2d/vars/0" in groups and "layers/dense_1/vars/1" in groups
        assert [f[f"layers/batch_normalization/vars/{i}"].shape for i in range(4)] == [(3,)] * 4
        np.testing.assert_array_equal(f["layers/dense/vars/0"][()], m.layers[3].get_weights()[0])
    fresh = model()
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mismatch_changes_nothing(tmp_path):
    h5py_or_skip()
    m = model()
    m.save_weights(tmp_path / "m.weights.h5")
    other = keras.Sequential(
        [
            L.Input((6, 6, 2)),
            L.Conv2D(3, 3),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(5),
            L.Dense(2),
        ]
    )
    before = other.get_weights()
    with pytest.raises(ValueError, match="shape"):
        other.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(other.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        m.load_weights(tmp_path / "bad.weights.h5")
