"""Whole-model and weight files interchanged with live Keras 3 (PyTorch backend).

Marked ``keras`` (CI's torch/keras step, where Keras 3 brings h5py with it); skipped with
the reason when keras or torch is missing, as test_live_keras.py. For every layer both
libraries have (Dense, Conv2D, MaxPooling2D, AveragePooling2D, BatchNormalization,
Dropout, Flatten, Activation, LayerNormalization, Embedding, Reshape, the merges
Add/Subtract/Multiply/Average/Concatenate, InputLayer), in Sequential and functional models
(several inputs and outputs, a shared layer): a ``.keras`` file metalearn writes loads in
Keras 3 with the same predictions, one Keras 3 writes loads in metalearn with the same
predictions, and the same for ``.weights.h5``. A trained model's optimizer variables
travel too (Keras keeps them in ``optimizer/vars``).
"""

import json
import zipfile

import numpy as np
import pytest

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()

RTOL, ATOL = 1e-5, 1e-6


def close(actual, expected, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def np_of(t):
    return np.asarray(KERAS.ops.convert_to_numpy(t))


def flat(pred):
    """A model's predictions (one array, a list or a dict) as a list in a fixed order."""
    if isinstance(pred, dict):
        return [np_of(pred[k]) for k in sorted(pred)]
    if isinstance(pred, (list, tuple)):
        return [np_of(p) for p in pred]
    return [np_of(pred)]


# ------------------------------------------------------------------ architectures
def dense(lib):
    L = lib.layers
    return lib.Sequential(
        [
            L.Input((6,)),
            L.Dense(8, activation="relu"),
            L.Dropout(0.3),
            L.Dense(4, activation="tanh", kernel_regularizer="l2"),
            L.Activation("sigmoid"),
            L.Dense(3, activation="softmax"),
        ]
    )


def conv(lib):
    L = lib.layers
    return lib.Sequential(
        [
            L.Input((8, 8, 2)),
            L.Conv2D(4, 3, padding="same"),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.MaxPooling2D(2),
            L.Conv2D(3, (2, 2), strides=(1, 1)),
            L.AveragePooling2D(2),
            L.Flatten(),
            L.Dense(2),
        ]
    )


def sequence(lib):
    L = lib.layers
    return lib.Sequential(
        [
            L.Input((5,)),
            L.Embedding(11, 4),
            L.LayerNormalization(),
            L.Reshape((10, 2)),
            L.Flatten(),
            L.Dense(3),
        ]
    )


def merges(lib):
    """Two inputs, every merge, a shared layer, two outputs (a list)."""
    L = lib.layers
    a, b = lib.Input((4,), name="a"), lib.Input((4,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    sa, sb = shared(a), shared(b)
    parts = [L.Add()([sa, sb]), L.Subtract()([sa, sb]), L.Multiply()([sa, sb])]
    avg = L.Average()(parts)
    cat = L.Concatenate()([avg, L.Dense(3, name="proj")(b)])
    return lib.Model([a, b], [L.Dense(1, name="reg")(cat), L.Dense(2, name="cls")(cat)])


def dict_io(lib):
    """Inputs and outputs as dicts, with normalisation inside the graph."""
    L = lib.layers
    a, b = lib.Input((3,), name="a"), lib.Input((5,), name="b")
    h = L.Concatenate()([L.Dense(4, activation="relu")(a), L.LayerNormalization()(b)])
    return lib.Model({"a": a, "b": b}, {"y": L.Dense(2, name="y")(h), "z": L.Dense(1, name="z")(h)})


def nested(lib):
    """A Sequential inside a functional model, global pooling."""
    L = lib.layers
    inner = lib.Sequential(
        [L.Input((6, 6, 3)), L.Conv2D(4, 3), L.GlobalAveragePooling2D()], name="inner"
    )
    x = lib.Input((6, 6, 3), name="img")
    return lib.Model(x, L.Dense(2, name="head")(inner(x)))


def declared(lib):
    """The input declared on the first layer (no Input): Keras writes an InputLayer."""
    L = lib.layers
    return lib.Sequential([L.Dense(5, activation="relu", input_shape=(6,)), L.Dense(2)])


ARCHS = {
    "declared": declared,
    "dense": dense,
    "conv": conv,
    "sequence": sequence,
    "merges": merges,
    "dict": dict_io,
    "nested": nested,
}


def inputs(arch, seed=0):
    rng = np.random.default_rng(seed)
    if arch in ("dense", "declared"):
        return rng.normal(size=(7, 6)).astype("float32")
    if arch == "conv":
        return rng.normal(size=(5, 8, 8, 2)).astype("float32")
    if arch == "sequence":
        return rng.integers(0, 11, size=(6, 5)).astype("int32")
    if arch == "nested":
        return rng.normal(size=(4, 6, 6, 3)).astype("float32")
    if arch == "merges":
        return [rng.normal(size=(5, 4)).astype("float32") for _ in range(2)]
    return {
        "a": rng.normal(size=(5, 3)).astype("float32"),
        "b": rng.normal(size=(5, 5)).astype("float32"),
    }


def randomised(model, seed=3):
    """Random values in every weight (moving variances positive), so each one matters."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.uniform(0.5, 2.0, np.shape(w)).astype("float32")
            if "variance" in w.name
            else rng.normal(0.0, 0.5, np.shape(w)).astype("float32")
            for w in model.weights
        ]
    )
    return model


@pytest.fixture
def mk():
    KERAS.utils.set_random_seed(0)
    from metalearn import keras as mk

    return mk


# ------------------------------------------------------------------ .keras, both ways
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_ours_loads_in_keras(mk, tmp_path, arch):
    ours = randomised(ARCHS[arch](mk))
    x = inputs(arch)
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    assert [type(l).__name__ for l in theirs.layers] == [
        {"MaxPool2D": "MaxPooling2D"}.get(type(l).__name__, type(l).__name__) for l in ours.layers
    ]
    for a, b in zip(flat(theirs.predict(x, verbose=0)), flat(ours.predict(x, verbose=0))):
        close(a, b, f"{arch}: Keras 3 predicts with the model metalearn saved")
    # Keras' own serialization of what it loaded is the config we wrote
    with zipfile.ZipFile(tmp_path / "ours.keras") as z:
        ours_config = json.loads(z.read("config.json"))
    assert ours_config["class_name"] == {"Sequential": "Sequential"}.get(
        type(theirs).__name__, "Functional"
    )


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_keras_file_loads_in_ours(mk, tmp_path, arch):
    theirs = ARCHS[arch](KERAS)
    rng = np.random.default_rng(4)
    theirs.set_weights(
        [
            rng.uniform(0.5, 2.0, w.shape).astype("float32")
            if "variance" in w.path
            else rng.normal(0.0, 0.5, w.shape).astype("float32")
            for w in theirs.weights
        ]
    )
    x = inputs(arch, seed=1)
    theirs.save(tmp_path / "theirs.keras")
    ours = mk.models.load_model(tmp_path / "theirs.keras")
    assert [l.name for l in ours.layers] == [l.name for l in theirs.layers]
    for a, b in zip(flat(ours.predict(x, verbose=0)), flat(theirs.predict(x, verbose=0))):
        close(a, b, f"{arch}: metalearn predicts with the model Keras 3 saved")
    # and back: what we write of it, Keras reads again with the same predictions
    ours.save(tmp_path / "again.keras")
    again = KERAS.models.load_model(tmp_path / "again.keras")
    for a, b in zip(flat(again.predict(x, verbose=0)), flat(theirs.predict(x, verbose=0))):
        close(a, b, f"{arch}: Keras -> metalearn -> Keras")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_weights_h5_both_ways(mk, tmp_path, arch):
    ours = randomised(ARCHS[arch](mk))
    x = inputs(arch, seed=2)
    ours.save_weights(tmp_path / "ours.weights.h5")
    theirs = ARCHS[arch](KERAS)
    theirs.load_weights(tmp_path / "ours.weights.h5")
    for a, b in zip(flat(theirs.predict(x, verbose=0)), flat(ours.predict(x, verbose=0))):
        close(a, b, f"{arch}: Keras 3 reads our .weights.h5")
    randomised(ours, seed=9)  # other values: the file must bring them back
    theirs.save_weights(tmp_path / "theirs.weights.h5")
    ours.load_weights(tmp_path / "theirs.weights.h5")
    for a, b in zip(flat(ours.predict(x, verbose=0)), flat(theirs.predict(x, verbose=0))):
        close(a, b, f"{arch}: metalearn reads Keras 3's .weights.h5")


# ------------------------------------------------------------ compile + optimizer state
def _train_data():
    rng = np.random.default_rng(5)
    return rng.normal(size=(16, 6)).astype("float32"), np.eye(3, dtype="float32")[
        rng.integers(0, 3, 16)
    ]


OPTIMIZERS = [
    ("Adam", {"learning_rate": 0.01}),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.5, "centered": True}),
]


def same_weights(ours, theirs, what):
    """Layer by layer (Keras' model.get_weights lists trainable weights first)."""
    for lo, lt in zip(ours.layers, theirs.layers):
        for a, b in zip(lo.get_weights(), lt.get_weights()):
            np.testing.assert_allclose(a, np_of(b), rtol=1e-4, atol=1e-5, err_msg=what)


def mlp(lib):
    """No Dropout: its masks are each library's own draws, and training must agree."""
    L = lib.layers
    return lib.Sequential(
        [
            L.Input((6,)),
            L.Dense(8, activation="relu", kernel_regularizer="l2"),
            L.BatchNormalization(),
            L.Dense(3, activation="softmax"),
        ]
    )


def _keras_slots(opt):
    """Keras' optimizer variables after iterations and learning rate, as arrays."""
    return [np_of(v) for v in opt.variables[2:]]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o[0]}-{len(o[1])}")
def test_optimizer_state_both_ways(mk, tmp_path, opt):
    name, kw = opt
    x, y = _train_data()
    ours = randomised(mlp(mk))
    ours.compile(getattr(mk.optimizers, name)(**kw), "categorical_crossentropy", ["accuracy"])
    ours.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    assert type(theirs.optimizer).__name__ == name
    assert int(np_of(theirs.optimizer.iterations)) == 4
    ours_slots = [s for core, _ in ours.optimizer._cores.values() for s in core.slots()]
    theirs_slots = _keras_slots(theirs.optimizer)
    assert len(theirs_slots) == sum(len(s) for s in ours_slots) > 0
    flat_ours = sorted(float(np.asarray(a, np.float64).sum()) for s in ours_slots for a in s)
    flat_theirs = sorted(float(a.astype(np.float64).sum()) for a in theirs_slots)
    np.testing.assert_allclose(flat_theirs, flat_ours, rtol=1e-6, atol=1e-7)
    # one more epoch in each, from the same state: the same weights (float32's tolerance)
    ours.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    theirs.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    same_weights(ours, theirs, "metalearn -> Keras, one more epoch")

    # Keras -> metalearn: Keras trains, saves; we load and go on as Keras goes on
    theirs2 = mlp(KERAS)
    for lo, lt in zip(ours.layers, theirs2.layers):
        lt.set_weights(lo.get_weights())
    theirs2.compile(getattr(KERAS.optimizers, name)(**kw), "categorical_crossentropy")
    theirs2.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    theirs2.save(tmp_path / "theirs.keras")
    ours2 = mk.models.load_model(tmp_path / "theirs.keras")
    assert ours2.optimizer.iterations == 4
    theirs2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    ours2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    same_weights(ours2, theirs2, "Keras -> metalearn, one more epoch")


def test_compile_config_round_trips(mk, tmp_path):
    ours = dense(mk)
    ours.compile(
        mk.optimizers.AdamW(0.003, weight_decay=0.01),
        mk.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy", mk.metrics.CategoricalAccuracy(name="cat")],
    )
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    assert type(theirs.optimizer).__name__ == "AdamW"
    assert float(np_of(theirs.optimizer.learning_rate)) == pytest.approx(0.003)
    assert theirs.optimizer.weight_decay == pytest.approx(0.01)
    assert theirs.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    theirs.save(tmp_path / "theirs.keras")
    back = mk.models.load_model(tmp_path / "theirs.keras")
    assert type(back.optimizer).__name__ == "AdamW"
    assert back.optimizer.weight_decay == pytest.approx(0.01)
    assert back.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def test_keras_only_arguments_refused(mk, tmp_path):
    # a Keras 3 layer argument metalearn lacks, at a value that changes the model, is
    # refused by name (not silently dropped)
    L = KERAS.layers
    theirs = KERAS.Sequential([L.Input((6, 6, 2)), L.Conv2D(2, 3, groups=2)])
    theirs.save(tmp_path / "grouped.keras")
    with pytest.raises(ValueError, match="groups"):
        mk.models.load_model(tmp_path / "grouped.keras")
    # dilation, which metalearn has, loads with Keras' numbers
    dilated = KERAS.Sequential([L.Input((6, 6, 1)), L.Conv2D(2, 3, dilation_rate=2)])
    dilated.save(tmp_path / "dilated.keras")
    ours = mk.models.load_model(tmp_path / "dilated.keras")
    x = np.random.default_rng(0).random((2, 6, 6, 1), dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(ours.predict(x, verbose=0)),
        np.asarray(dilated.predict(x, verbose=0)),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_multi_output_compile_both_ways(mk, tmp_path, kind):
    # per-output losses, loss weights and metrics (lists, or dicts by output name) survive
    # the trip each way: the loaded model evaluates as the saved one
    def build(lib):
        model = merges(lib) if kind == "list" else dict_io(lib)
        names = ["reg", "cls"] if kind == "list" else ["y", "z"]
        losses = ["mse", "mae"]
        weights = [0.5, 2.0]
        if kind == "dict":
            losses, weights = dict(zip(names, losses)), dict(zip(names, weights))
            metrics = {names[0]: ["mae"]}
        else:
            metrics = [["mae"], []]
        model.compile("sgd", loss=losses, loss_weights=weights, metrics=metrics)
        return model

    x = inputs("merges" if kind == "list" else "dict", seed=6)
    rng = np.random.default_rng(8)
    n = len(x[0]) if kind == "list" else len(x["a"])
    if kind == "list":
        y = [rng.normal(size=(n, 1)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")]
    else:
        y = {
            "y": rng.normal(size=(n, 2)).astype("float32"),
            "z": rng.normal(size=(n, 1)).astype("float32"),
        }
    ours = randomised(build(mk))
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    got = theirs.evaluate(x, y, verbose=0, return_dict=True)
    want = ours.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    theirs.save(tmp_path / "theirs.keras")
    back = mk.models.load_model(tmp_path / "theirs.keras")
    again = back.evaluate(x, y, verbose=0, return_dict=True)
    for key in want:
        np.testing.assert_allclose(again[key], want[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_config_json_is_keras_schema(mk, tmp_path, arch):
    # the config.json we write has Keras 3's shape: the same entries at every level as
    # Keras' own for the same model (names aside), the same build configs and inbound
    # nodes, and every layer argument we write is one Keras writes too
    ours = ARCHS[arch](mk)
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")  # same names as ours
    theirs.save(tmp_path / "theirs.keras")

    def config(path):
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))

    a, b = config(tmp_path / "ours.keras"), config(tmp_path / "theirs.keras")
    assert set(a) == set(b)
    for key in ("module", "class_name", "registered_name", "build_config", "compile_config"):
        assert a[key] == b[key], key
    assert set(a["config"]) == set(b["config"])
    for key in set(a["config"]) - {"layers", "dtype"}:
        assert a["config"][key] == b["config"][key], key

    def same(x, y, where):
        """Ours against Keras': a serialized object's config may lack arguments Keras
        has (Keras-only options at their defaults), any other entry must be equal;
        Keras' object-sharing ids differ run to run."""
        if isinstance(x, dict) and isinstance(y, dict):
            y = {k: v for k, v in y.items() if k != "shared_object_id"}
            if "class_name" in x and isinstance(x.get("config"), dict) and "module" in x:
                assert set(x) == set(y), (where, set(x) ^ set(y))
                extra = set(x["config"]) - set(y["config"])
                assert not extra, (where, x["class_name"], extra)
                for k in x["config"]:
                    same(x["config"][k], y["config"][k], f"{where}/{x['class_name']}.{k}")
                for k in set(x) - {"config"}:
                    same(x[k], y[k], f"{where}/{k}")
                return
            assert set(x) == set(y), (where, set(x) ^ set(y))
            for k in x:
                same(x[k], y[k], f"{where}/{k}")
        elif isinstance(x, list) and isinstance(y, list):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        else:
            assert x == y, (where, x, y)

    same(a, b, "config.json")
