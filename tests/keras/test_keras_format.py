"""model.save("m.keras") / keras.models.load_model, as Keras 3: a zip archive in Keras'
layout (config.json with class_name, config, build_config, compile_config;
metadata.json; the weights), written atomically; corrupt and foreign files refused with
a clear error; HDF5 names refused with a message naming what is needed."""

import json
import os
import zipfile

import numpy as np
import pytest

from metalearn import keras
from metalearn.keras import layers


def trained_model():
    m = keras.Sequential(
        [
            layers.Input((4,)),
            layers.Dense(6, activation="relu", kernel_regularizer="l2"),
            layers.LayerNormalization(),
            layers.Dropout(0.1),
            layers.Dense(3, activation="softmax"),
        ]
    )
    m.compile(
        optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy(name="sca")],
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return m, x, y


def test_round_trip(tmp_path):
    m, x, y = trained_model()
    path = tmp_path / "m.keras"
    m.save(path)
    with zipfile.ZipFile(path) as z:
        assert set(z.namelist()) == {"config.json", "metadata.json", "model.weights.mlw"}
        config = json.loads(z.read("config.json"))
    assert config["class_name"] == "Sequential" and config["module"] == "keras"
    assert {"config", "build_config", "compile_config"} <= set(config)
    assert config["compile_config"]["optimizer"]["class_name"] == "AdamW"
    for load in (keras.models.load_model, keras.saving.load_model):
        m2 = load(path)
        np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))
        assert [l.name for l in m2.layers] == [l.name for l in m.layers]
        assert type(m2.optimizer) is keras.optimizers.AdamW
        assert m2.optimizer.get_config() == m.optimizer.get_config()
        assert m2.loss == "sparse_categorical_crossentropy"
        np.testing.assert_allclose(
            m2.evaluate(x, y, verbose=0), m.evaluate(x, y, verbose=0), rtol=1e-6
        )
        m2.fit(x, y, epochs=1, verbose=0)  # compiled: trains
    m3 = keras.models.load_model(path, compile=False)
    assert not getattr(m3, "_is_compiled", False)


def test_load_weights_from_keras_archive(tmp_path):
    m, x, _ = trained_model()
    m.save(tmp_path / "m.keras")
    fresh = keras.Sequential.from_config(m.get_config())
    fresh.load_weights(tmp_path / "m.keras")
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), m.predict(x, verbose=0))


def test_unbuilt_model_uses_build_config(tmp_path):
    m = keras.Sequential([layers.Dense(2)])
    m.build((None, 5))
    m.save(tmp_path / "m.keras")
    m2 = keras.models.load_model(tmp_path / "m.keras")
    x = np.ones((3, 5), np.float32)
    np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))


@pytest.mark.parametrize("name", ["m.h5", "m.hdf5"])
def test_hdf5_names_refused(tmp_path, name):
    # Keras 2's whole-model HDF5: neither written nor read; never our format under the name
    m, _, _ = trained_model()
    for call in (m.save, m.save_weights, m.load_weights):
        with pytest.raises(ValueError, match="h5py") as e:
            call(tmp_path / name)
        assert ".weights.h5" in str(e.value) and ".mlw" in str(e.value)
    with pytest.raises(ValueError, match="h5py"):
        m.save(tmp_path / "m.weights.h5")
    assert not os.listdir(tmp_path)


def test_weights_h5_without_h5py(tmp_path, monkeypatch):
    import sys

    m, _, _ = trained_model()
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if not installed
    for call in (m.save_weights, m.load_weights):
        with pytest.raises(ImportError, match=r"pip install 'metalearn\[keras-io\]'"):
            call(tmp_path / "m.weights.h5")
    assert not os.listdir(tmp_path)


def test_bad_names_and_overwrite(tmp_path):
    m, _, _ = trained_model()
    with pytest.raises(ValueError, match=".keras"):
        m.save(tmp_path / "m.bin")
    with pytest.raises(ValueError, match="model.save"):
        m.save_weights(tmp_path / "m.keras")
    m.save(tmp_path / "m.keras")
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m.keras", overwrite=False)
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_failed_save_leaves_nothing(tmp_path):
    unbuilt = keras.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="no weights"):
        unbuilt.save(tmp_path / "m.keras")
    m, _, _ = trained_model()
    m.compile(optimizer="sgd", loss=lambda a, b: (a - b) ** 2)  # not rebuildable by name
    with pytest.raises(ValueError, match="loss"):
        m.save(tmp_path / "m.keras")
    assert not os.listdir(tmp_path)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_corrupt_and_foreign_files_refused(tmp_path):
    m, _, _ = trained_model()
    good = tmp_path / "good.keras"
    m.save(good)
    data = good.read_bytes()

    cases = {}
    cases["random.keras"] = (np.random.default_rng(0).bytes(300), "not a '.keras' archive")
    cases["truncated.keras"] = (data[: len(data) // 2], "not a '.keras' archive|corrupt")
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    _zip(tmp_path / "noconfig.keras", {"model.weights.mlw": members["model.weights.mlw"]})
    _zip(
        tmp_path / "keras3.keras",
        {"config.json": members["config.json"], "model.weights.h5": b"\x89HDF\r\n"},
    )
    _zip(tmp_path / "badjson.keras", {"config.json": b"{", "model.weights.mlw": b""})
    bad_weights = bytearray(members["model.weights.mlw"])
    bad_weights[40] ^= 0xFF  # inside the weights: their own CRC catches it
    _zip(
        tmp_path / "badweights.keras",
        {"config.json": members["config.json"], "model.weights.mlw": bytes(bad_weights)},
    )
    for name, (blob, _) in cases.items():
        (tmp_path / name).write_bytes(blob)
    expect = {
        **{n: msg for n, (_, msg) in cases.items()},
        "noconfig.keras": "no config.json",
        "keras3.keras": "written by Keras 3",
        "badjson.keras": "not valid JSON",
        "badweights.keras": "checksum|corrupt|CRC",
    }
    for name, msg in expect.items():
        with pytest.raises(ValueError, match=msg):
            keras.models.load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        keras.models.load_model(tmp_path / "missing.keras")
