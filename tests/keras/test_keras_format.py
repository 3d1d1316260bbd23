"""model.save / keras.models.load_model.

``.metalearn`` (metalearn's own whole model: a folder in the checkpoint format of
metalearn/checkpoint.py, no h5py needed) runs in the default test run: round trip, exact
resume of training (N epochs, save, load, M more == N + M in one go, bit for bit),
corrupt and foreign files refused with nothing changed.

``.keras`` (Keras 3's format: config.json in Keras' schema, metadata.json,
model.weights.h5) needs h5py: these tests skip without it in the default run and run in
CI's keras-io step (METALEARN_REQUIRE_H5PY=1 turns the skip into a failure there). The
interchange with Keras 3 itself is tests/keras_conformance/test_live_saving.py.
"""

import json
import os
import sys
import zipfile

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers


def h5py_or_skip():
    try:
        import h5py

        return h5py
    except ImportError:
        if os.environ.get("METALEARN_REQUIRE_H5PY") or os.environ.get("METALEARN_REQUIRE_KERAS"):
            raise
        pytest.skip("the .keras format needs h5py: pip install 'metalearn[keras-io]'")


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    return x, y


def make_model(seed_dropout=None):
    m = keras.Sequential(
        [
            layers.Input((4,)),
            layers.Dense(6, activation="relu", kernel_regularizer="l2"),
            layers.LayerNormalization(),
            layers.Dropout(0.2),
            layers.Dense(5, activation="tanh"),
            layers.Dropout(0.3, seed=seed_dropout),
            layers.Dense(3, activation="softmax"),
        ]
    )
    m.compile(
        optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy(name="sca")],
    )
    return m


def trained_model():
    m = make_model()
    x, y = data()
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return m, x, y


def slots(model):
    return [
        [np.asarray(t) for t in per_param]
        for core, _ in model.optimizer._cores.values()
        for per_param in core.slots()
    ]


def assert_same_state(a, b, x):
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations)
    sa, sb = slots(a), slots(b)
    assert len(sa) == len(sb) == len(a.trainable_weights)
    for pa, pb in zip(sa, sb):
        for u, v in zip(pa, pb):
            np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- .metalearn (no h5py)
def test_metalearn_round_trip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # works without h5py
    m, x, y = trained_model()
    path = tmp_path / "m.metalearn"
    m.save(path)
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert manifest["format"] == "metalearn.checkpoint"  # the library's one format
    assert manifest["fingerprint"]["kind"] == "metalearn.keras.model"
    m2 = keras.models.load_model(path)
    assert_same_state(m2, m, x)
    assert type(m2.optimizer) is keras.optimizers.AdamW
    assert m2.optimizer.get_config() == m.optimizer.get_config()
    assert m2.loss == "sparse_categorical_crossentropy"
    np.testing.assert_allclose(m2.evaluate(x, y, verbose=0), m.evaluate(x, y, verbose=0))
    m3 = keras.models.load_model(path, compile=False)
    assert not getattr(m3, "_is_compiled", False)
    fresh = make_model()
    fresh.load_weights(path)  # the weights alone, as from a .keras file
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), m.predict(x, verbose=0))


@pytest.mark.parametrize("seed_dropout", [None, 7])
def test_metalearn_resume_is_exact(tmp_path, seed_dropout):
    # fit N epochs, save, load, fit M more == fit N + M epochs in one go, bit for bit:
    # weights, optimizer moments and step, the core generator (shuffling, unseeded
    # Dropout) and a seeded Dropout's own stream all travel in the file
    x, y = data()
    ml.random.set_seed(3)
    whole = make_model(seed_dropout)
    whole.fit(x, y, epochs=5, batch_size=8, verbose=0)

    ml.random.set_seed(3)
    first = make_model(seed_dropout)
    first.fit(x, y, epochs=2, batch_size=8, verbose=0)
    first.save(tmp_path / "m.metalearn")
    ml.random.set_seed(12345)  # the generator moves on elsewhere: loading puts it back
    np.asarray(ml.random.uniform((10,)))
    resumed = keras.models.load_model(tmp_path / "m.metalearn")
    resumed.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert_same_state(resumed, whole, x)


def test_metalearn_resume_in_a_fresh_process(tmp_path):
    # the saved generator state makes the resumed run exact in another process too
    import subprocess

    x, y = data()
    ml.random.set_seed(3)
    whole = make_model(seed_dropout=5)
    whole.fit(x, y, epochs=4, batch_size=8, verbose=0)
    ml.random.set_seed(3)
    first = make_model(seed_dropout=5)
    first.fit(x, y, epochs=1, batch_size=8, verbose=0)
    first.save(tmp_path / "m.metalearn")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    script = (
        "import sys, numpy as np\n"
        "from metalearn import keras\n"
        "d = np.load(sys.argv[1] + '/data.npz')\n"
        "m = keras.models.load_model(sys.argv[1] + '/m.metalearn')\n"
        "m.fit(d['x'], d['y'], epochs=3, batch_size=8, verbose=0)\n"
        "np.savez(sys.argv[1] + '/out.npz', *m.get_weights())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    out = np.load(tmp_path / "out.npz")
    got = [out[f"arr_{i}"] for i in range(len(out.files))]
    for a, b in zip(got, whole.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_metalearn_overwrite_and_names(tmp_path):
    m, _, _ = trained_model()
    m.save(tmp_path / "m.metalearn")
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m.metalearn", overwrite=False)
    m.fit(*data(), epochs=1, verbose=0)
    m.save(tmp_path / "m.metalearn")  # overwritten in place: one tensor file left
    files = sorted(os.listdir(tmp_path / "m.metalearn"))
    assert len(files) == 2 and files[0] == "checkpoint.json"
    np.testing.assert_array_equal(
        keras.models.load_model(tmp_path / "m.metalearn").get_weights()[0], m.get_weights()[0]
    )
    (tmp_path / "other.metalearn").mkdir()
    (tmp_path / "other.metalearn" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no metalearn model"):
        m.save(tmp_path / "other.metalearn")
    assert os.listdir(tmp_path / "other.metalearn") == ["notes.txt"]
    # a save killed before its manifest leaves a tensor file alone: the next save goes on
    (tmp_path / "killed.metalearn").mkdir()
    (tmp_path / "killed.metalearn" / "tensors-00000000.mlw").write_bytes(b"partial")
    m.save(tmp_path / "killed.metalearn")
    np.testing.assert_array_equal(
        keras.models.load_model(tmp_path / "killed.metalearn").get_weights()[0],
        m.get_weights()[0],
    )


@pytest.mark.parametrize(
    "name", ["m.h5", "m.hdf5", "m.tf", "m.pb", "m", "m.pt", "m.weights.h5", "m.mlw", "m.zip"]
)
def test_names_we_do_not_write_refused(tmp_path, name):
    m, _, _ = trained_model()
    with pytest.raises(ValueError) as e:
        m.save(tmp_path / name)
    if name in ("m.h5", "m.hdf5"):
        assert ".weights.h5" in str(e.value)
    assert ".keras" in str(e.value) and ".metalearn" in str(e.value)
    with pytest.raises(ValueError, match=".keras"):
        keras.models.load_model(tmp_path / name)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "name", ["m.h5", "m.hdf5", "m.tf", "m.pb", "m.pt", "m.keras", "m.metalearn"]
)
def test_weight_names_we_do_not_write_refused(tmp_path, name):
    m, _, _ = trained_model()
    for call in (m.save_weights, m.load_weights):
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            call(tmp_path / name)
        if call is m.save_weights:
            assert isinstance(e.value, ValueError)
            assert ".mlw" in str(e.value) or "model.save" in str(e.value)
    assert not os.listdir(tmp_path)


def test_failed_save_leaves_nothing(tmp_path):
    unbuilt = keras.Sequential([layers.Dense(2)])
    for name in ("m.metalearn", "m.keras"):
        with pytest.raises(ValueError, match="no weights"):
            unbuilt.save(tmp_path / name)
    m, _, _ = trained_model()
    m.compile(optimizer="sgd", loss=lambda a, b: (a - b) ** 2)  # not rebuildable by name
    with pytest.raises(ValueError, match="loss"):
        m.save(tmp_path / "m.metalearn")
    assert not os.listdir(tmp_path)


def test_corrupt_metalearn_refused_and_nothing_changes(tmp_path):
    m, x, _ = trained_model()
    good = tmp_path / "good.metalearn"
    m.save(good)
    tensor = [f for f in os.listdir(good) if f.startswith("tensors-")][0]

    def copy(name):
        import shutil

        shutil.copytree(good, tmp_path / name)
        return tmp_path / name

    flipped = copy("flipped.metalearn")
    blob = bytearray((flipped / tensor).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (flipped / tensor).write_bytes(bytes(blob))
    truncated = copy("truncated.metalearn")
    (truncated / tensor).write_bytes((good / tensor).read_bytes()[:100])
    edited = copy("edited.metalearn")
    manifest = json.loads((edited / "checkpoint.json").read_text())
    manifest["state"]["compile_config"]["loss"] = "mse"
    (edited / "checkpoint.json").write_text(json.dumps(manifest))
    empty = tmp_path / "empty.metalearn"
    empty.mkdir()
    afile = tmp_path / "file.metalearn"
    afile.write_bytes(b"not a folder")
    other = copy("other.metalearn")  # another model's file: shapes differ
    other_model = keras.Sequential([layers.Input((4,)), layers.Dense(3)])
    other_model.save(other)

    target = make_model()
    before = target.get_weights()
    for path, msg in [
        (flipped, "checksum|corrupt"),
        (truncated, "checksum|corrupt"),
        (edited, "checksum"),
        (empty, "not a '.metalearn' model"),
        (afile, "not a '.metalearn' model"),
    ]:
        with pytest.raises(ValueError, match=msg) as e:
            keras.models.load_model(path)
        assert str(path) in str(e.value)
        with pytest.raises(ValueError) as e:
            target.load_weights(path)
        assert str(path) in str(e.value)
    with pytest.raises(ValueError, match=str(other)):
        target.load_weights(other)
    for a, b in zip(target.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        keras.models.load_model(tmp_path / "missing.metalearn")


def test_without_h5py_keras_names_say_what_to_install(tmp_path, monkeypatch):
    m, _, _ = trained_model()
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if not installed
    calls = [
        lambda: m.save(tmp_path / "m.keras"),
        lambda: m.save_weights(tmp_path / "m.weights.h5"),
    ]
    for call in calls:
        with pytest.raises(ImportError, match=r"pip install 'metalearn\[keras-io\]'") as e:
            call()
        assert ".metalearn" in str(e.value) and ".mlw" in str(e.value)
    (tmp_path / "k.keras").write_bytes(b"PK")
    (tmp_path / "k.weights.h5").write_bytes(b"x")
    for call in (
        lambda: keras.models.load_model(tmp_path / "k.keras"),
        lambda: m.load_weights(tmp_path / "k.weights.h5"),
    ):
        with pytest.raises(ImportError, match="h5py"):
            call()
    assert sorted(os.listdir(tmp_path)) == ["k.keras", "k.weights.h5"]


# ------------------------------------------------------------------- .keras (h5py)
def test_keras_archive_layout(tmp_path):
    h5py = h5py_or_skip()
    m, x, y = trained_model()
    path = tmp_path / "m.keras"
    m.save(path)
    with zipfile.ZipFile(path) as z:
        assert set(z.namelist()) == {"config.json", "metadata.json", "model.weights.h5"}
        config = json.loads(z.read("config.json"))
        metadata = json.loads(z.read("metadata.json"))
        weights = z.read("model.weights.h5")
    # Keras 3's serialization schema (keras/src/saving/serialization_lib.py)
    assert set(config) == {
        "module",
        "class_name",
        "config",
        "registered_name",
        "build_config",
        "compile_config",
    }
    assert (config["module"], config["class_name"]) == ("keras", "Sequential")
    assert config["build_config"] == {"input_shape": [None, 4]}
    first, dense = config["config"]["layers"][:2]
    assert first["class_name"] == "InputLayer" and first["config"]["batch_shape"] == [None, 4]
    assert dense["module"] == "keras.layers" and dense["registered_name"] is None
    assert dense["config"]["dtype"]["class_name"] == "DTypePolicy"
    assert dense["config"]["kernel_initializer"]["module"] == "keras.initializers"
    assert dense["build_config"] == {"input_shape": [None, 4]}
    cc = config["compile_config"]
    assert cc["optimizer"]["class_name"] == "AdamW"
    assert cc["optimizer"]["module"] == "keras.optimizers"
    assert cc["metrics"][1]["module"] == "keras.metrics"
    assert metadata["keras_version"].startswith("3.")
    import io

    with h5py.File(io.BytesIO(weights), "r") as f:
        assert f["layers/dense/vars/0"].shape == (4, 6)
        assert f["layers/layer_normalization/vars/1"].shape == (6,)
        assert f["layers/dense_2/vars/1"].shape == (3,)
        opt = f["optimizer/vars"]
        # iterations, learning rate, then (momentum, velocity) per trainable variable
        assert len(opt) == 2 + 2 * len(m.trainable_weights)
        assert int(opt["0"][()]) == int(m.optimizer.iterations)
        np.testing.assert_array_equal(opt["3"][()], slots(m)[0][1])  # v of the kernel
    m2 = keras.models.load_model(path)
    assert_same_state(m2, m, x)
    assert type(m2.optimizer) is keras.optimizers.AdamW
    assert m2.loss == "sparse_categorical_crossentropy"
    np.testing.assert_allclose(m2.evaluate(x, y, verbose=0), m.evaluate(x, y, verbose=0))
    fresh = make_model()
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), m.predict(x, verbose=0))


def test_keras_functional_round_trip(tmp_path):
    h5py_or_skip()
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    shared = layers.Dense(4, name="shared")
    h = layers.Concatenate(name="cat")([shared(a), shared(layers.Dense(3)(b))])
    model = keras.Model([a, b], [layers.Dense(1, name="r")(h), layers.Add()([h, h])])
    model.save(tmp_path / "f.keras")
    with zipfile.ZipFile(tmp_path / "f.keras") as z:
        config = json.loads(z.read("config.json"))
    assert config["class_name"] == "Functional" and config["registered_name"] == "Functional"
    entries = {e["name"]: e for e in config["config"]["layers"]}
    assert len(entries["shared"]["inbound_nodes"]) == 2
    arg = entries["r"]["inbound_nodes"][0]["args"][0]
    assert arg["class_name"] == "__keras_tensor__"
    assert arg["config"]["keras_history"] == ["cat", 0, 0]
    loaded = keras.models.load_model(tmp_path / "f.keras")
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(5, 2)).astype("float32")]
    for p, q in zip(loaded.predict(xs, verbose=0), model.predict(xs, verbose=0)):
        np.testing.assert_array_equal(p, q)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_corrupt_keras_refused_and_nothing_changes(tmp_path):
    h5py_or_skip()
    m, _, _ = trained_model()
    good = tmp_path / "good.keras"
    m.save(good)
    data_ = good.read_bytes()
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "truncated.keras").write_bytes(data_[: len(data_) // 2])
    _zip(tmp_path / "noconfig.keras", {"model.weights.h5": members["model.weights.h5"]})
    _zip(tmp_path / "noweights.keras", {"config.json": members["config.json"]})
    _zip(tmp_path / "badjson.keras", {"config.json": b"{", "model.weights.h5": b""})
    _zip(
        tmp_path / "badh5.keras",
        {"config.json": members["config.json"], "model.weights.h5": b"\x89HDF\r\n\x1a\nzz"},
    )
    other = keras.Sequential([layers.Input((4,)), layers.Dense(6), layers.Dense(3)])
    other.save(tmp_path / "other.keras")
    expect = {
        "random.keras": "not a '.keras' archive",
        "truncated.keras": "not a '.keras' archive|corrupt",
        "noconfig.keras": "no config.json",
        "noweights.keras": "no model.weights.h5",
        "badjson.keras": "not valid JSON",
        "badh5.keras": "not an HDF5 file|corrupt",
    }
    target = make_model()
    before = target.get_weights()
    for name, msg in expect.items():
        with pytest.raises(ValueError, match=msg) as e:
            keras.models.load_model(tmp_path / name)
        assert name in str(e.value)
        if name != "noweights.keras":
            with pytest.raises(ValueError):
                target.load_weights(tmp_path / name)
    with pytest.raises(ValueError, match="other.keras"):
        target.load_weights(tmp_path / "other.keras")  # another model's weights
    for a, b in zip(target.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        keras.models.load_model(tmp_path / "missing.keras")


def test_older_metalearn_keras_archive_still_loads(tmp_path, monkeypatch):
    # before Keras' layout, metalearn's '.keras' held config.json in its own schema and
    # model.weights.mlw; such files still load, without h5py
    monkeypatch.setitem(sys.modules, "h5py", None)
    m, x, y = trained_model()
    m.save_weights(tmp_path / "w.mlw")
    from metalearn.keras import saving

    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": layers.serialize(m)["config"],
        "registered_name": None,
        "build_config": {"input_shape": [None, 4]},
        "compile_config": saving._compile_config(m),
    }
    _zip(
        tmp_path / "old.keras",
        {
            "config.json": json.dumps(config),
            "metadata.json": "{}",
            "model.weights.mlw": (tmp_path / "w.mlw").read_bytes(),
        },
    )
    m2 = keras.models.load_model(tmp_path / "old.keras")
    np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))
    assert m2.loss == "sparse_categorical_crossentropy"
    fresh = make_model()
    fresh.load_weights(tmp_path / "old.keras")
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), m.predict(x, verbose=0))


def test_keras_layer_we_do_not_have_is_named(tmp_path):
    h5py_or_skip()
    m = keras.Sequential([layers.Input((4,)), layers.Dense(2)])
    m.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["class_name"] = "Bidirectional"
    members["config.json"] = json.dumps(config)
    _zip(tmp_path / "bi.keras", members)
    with pytest.raises(ValueError, match="'Bidirectional' is not one metalearn has") as e:
        keras.models.load_model(tmp_path / "bi.keras")
    assert "bi.keras" in str(e.value)
    config["config"]["layers"][1]["class_name"] = "Dense"
    config["config"]["layers"][1]["config"]["dtype"] = "float64"
    members["config.json"] = json.dumps(config)
    _zip(tmp_path / "f64.keras", members)
    with pytest.raises(ValueError, match="float32 only"):
        keras.models.load_model(tmp_path / "f64.keras")
