"""Every layer metalearn ships round-trips through get_config/from_config and
layers.serialize/deserialize (no custom_objects), as Keras 3's layers do: the rebuilt layer
has the same configuration and, given the same weights, the same output."""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers
from metalearn.meta.protonet import PrototypeClassifier
from metalearn.networks import AdaptiveNeuralNetwork, MetaLearningNetwork

RNG = np.random.default_rng(0)
IMG = RNG.standard_normal((2, 6, 6, 3)).astype(np.float32)
VEC = RNG.standard_normal((3, 4)).astype(np.float32)
SEQ = RNG.standard_normal((2, 5, 3)).astype(np.float32)


def _memory():
    mem = ml.KnowledgeMemory(16, 4, payload_size=3, seed=1)
    rng = np.random.default_rng(1)
    mem.update(
        rng.standard_normal((10, 4)).astype(np.float32),
        rng.integers(0, 5, 10),
        rng.standard_normal((10, 3)).astype(np.float32),
    )
    return mem


def _functional_model():
    inp = layers.Input((4,))
    h = layers.Dense(3, activation="relu")(inp)
    return keras.Model(inp, layers.Add()([h, layers.Dense(3)(h)]))


# name -> (a new layer, an input it takes); one entry per shipped class (checked below)
CASES = {
    "Dense": (
        lambda: layers.Dense(3, activation="tanh", use_bias=False, kernel_initializer="he_normal"),
        VEC,
    ),
    "Flatten": (lambda: layers.Flatten(), IMG),
    "Reshape": (lambda: layers.Reshape((-1, 9)), IMG),
    "Activation": (lambda: layers.Activation("sigmoid"), VEC),
    "LeakyReLU": (lambda: layers.LeakyReLU(0.15), VEC),
    "Dropout": (lambda: layers.Dropout(0.25, noise_shape=(None, 1), seed=3), VEC),
    "InputLayer": (lambda: layers.InputLayer((4,)), VEC),
    "Lambda": (lambda: layers.Lambda(lambda t, k: t * k, arguments={"k": 2.0}), VEC),
    "Conv2D": (
        lambda: layers.Conv2D(
            4, (3, 2), strides=(2, 1), padding="same", activation="relu", bias_initializer="ones"
        ),
        IMG,
    ),
    "MaxPool2D": (lambda: layers.MaxPool2D((3, 3), strides=2, padding="same"), IMG),
    "AveragePooling2D": (lambda: layers.AveragePooling2D(2, padding="same"), IMG),
    "GlobalAveragePooling2D": (lambda: layers.GlobalAveragePooling2D(keepdims=True), IMG),
    "BatchNormalization": (
        lambda: layers.BatchNormalization(
            momentum=0.9, epsilon=1e-2, center=False, gamma_initializer="ones"
        ),
        IMG,
    ),
    "MemoryRecall": (lambda: layers.MemoryRecall(_memory(), k=3, temperature=0.5), VEC),
    "LayerNormalization": (
        lambda: layers.LayerNormalization(
            axis=[-1], epsilon=1e-2, gamma_regularizer="l2", activity_regularizer="l1"
        ),
        VEC,
    ),
    "Add": (lambda: layers.Add(), [VEC, VEC]),
    "Subtract": (lambda: layers.Subtract(), [VEC, VEC]),
    "Multiply": (lambda: layers.Multiply(), [VEC, VEC]),
    "Average": (lambda: layers.Average(), [VEC, VEC]),
    "Concatenate": (lambda: layers.Concatenate(axis=1), [VEC, VEC]),
    "Functional": (lambda: _functional_model(), VEC),
    "Embedding": (
        lambda: layers.Embedding(6, 3, embeddings_regularizer=keras.regularizers.L1L2(0.1, 0.2)),
        np.array([[0, 5], [2, 2]]),
    ),
    "SimpleRNN": (lambda: layers.SimpleRNN(3, activation="relu", go_backwards=True), SEQ),
    "LSTM": (lambda: layers.LSTM(3, return_sequences=True, unit_forget_bias=False), SEQ),
    "GRU": (lambda: layers.GRU(3, reset_after=False, recurrent_regularizer="l2"), SEQ),
    "Masking": (lambda: layers.Masking(mask_value=0.5), SEQ),
    "Sequential": (
        lambda: keras.Sequential(
            [
                layers.InputLayer((6, 6, 3)),
                layers.Conv2D(2, 3, padding="same"),
                layers.BatchNormalization(),
                layers.Activation("relu"),
                layers.MaxPool2D(2),
                layers.Flatten(),
                layers.Dropout(0.5),
                layers.Dense(2),
            ],
            name="convnet",
        ),
        IMG,
    ),
    "Conv1D": (
        lambda: layers.Conv1D(
            3, 2, padding="causal", dilation_rate=2, kernel_constraint=keras.constraints.MaxNorm(2)
        ),
        IMG[:, :, :, 0],
    ),
    "DepthwiseConv2D": (
        lambda: layers.DepthwiseConv2D(
            3, padding="same", depth_multiplier=2, bias_constraint="non_neg"
        ),
        IMG,
    ),
    "SeparableConv2D": (
        lambda: layers.SeparableConv2D(4, 2, strides=2, pointwise_constraint="unit_norm"),
        IMG,
    ),
    "UpSampling2D": (lambda: layers.UpSampling2D((2, 1), interpolation="bilinear"), IMG),
    "ZeroPadding2D": (lambda: layers.ZeroPadding2D(((1, 0), (2, 3))), IMG),
    "Cropping2D": (lambda: layers.Cropping2D((1, 2)), IMG),
    "Permute": (lambda: layers.Permute((2, 1, 3)), IMG),
    "RepeatVector": (lambda: layers.RepeatVector(3), VEC),
    "AdaptiveNeuralNetwork": (
        lambda: AdaptiveNeuralNetwork(num_classes=3, hidden_units=5, output_activation="linear"),
        IMG,
    ),
    "MetaLearningNetwork": (lambda: MetaLearningNetwork(hidden_units=5, output_units=2), VEC),
    # ProtoNet.adapt's classifier: an encoder and this task's prototypes
    "PrototypeClassifier": (
        lambda: PrototypeClassifier(
            keras.Sequential([layers.Dense(3, activation="relu", input_shape=(4,))], name="enc"),
            RNG.standard_normal((2, 3)).astype(np.float32),
            distance="cosine",
            name="clf",
        ),
        VEC,
    ),
}


def _give_weights(layer, x):
    """Builds `layer` on x and gives it random weights (moving statistics included)."""
    layer(x)
    rng = np.random.default_rng(5)
    layer.set_weights(
        [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()]
    )


def _same_state(src, dst, tmp_path):
    dst.set_weights(src.get_weights())
    if isinstance(src, layers.MemoryRecall):  # the memory is the layer's state
        src.memory.save(tmp_path / "mem.bin")
        dst.memory.load(tmp_path / "mem.bin")


def _check_rebuilt(layer, rebuilt, x, tmp_path):
    assert type(rebuilt) is type(layer)
    rebuilt(x)
    _same_state(layer, rebuilt, tmp_path)
    assert rebuilt.get_config() == layer.get_config()
    np.testing.assert_array_equal(
        np.asarray(rebuilt(x, training=False)), np.asarray(layer(x, training=False))
    )


def _as_json(config):
    return json.loads(json.dumps(config))


@pytest.mark.parametrize("name", sorted(CASES))
def test_get_config_from_config_round_trip(name, tmp_path):
    make, x = CASES[name]
    layer = make()
    _give_weights(layer, x)
    _check_rebuilt(layer, type(layer).from_config(layer.get_config()), x, tmp_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_serialize_deserialize_without_custom_objects(name, tmp_path):
    make, x = CASES[name]
    layer = make()
    _give_weights(layer, x)
    config = layers.serialize(layer)
    assert config["class_name"] == name
    _check_rebuilt(layer, layers.deserialize(config), x, tmp_path)
    if name != "Lambda":  # a Python function is not JSON (Keras needs safe_mode=False)
        _check_rebuilt(layer, layers.deserialize(_as_json(config)), x, tmp_path)


def test_every_shipped_layer_is_covered():
    shipped = set(layers._shipped_layers()) - {"Model"}
    aliases = {"MaxPooling2D", "AvgPool2D", "GlobalAvgPool2D"}
    assert shipped - aliases == set(CASES)
    for alias in aliases:  # an alias deserializes to its class
        cls = layers._shipped_layers()[alias]
        assert type(layers.deserialize({"class_name": alias, "config": {}})) is cls


def test_memory_recall_config_describes_the_memory_and_rebuilds_an_empty_one():
    mem = _memory()
    layer = layers.MemoryRecall(mem, k=2)
    config = layer.get_config()
    assert config["memory"] == {
        "class_name": "KnowledgeMemory",
        "config": {"capacity": 16, "key_size": 4, "payload_size": 3},
    }
    rebuilt = layers.MemoryRecall.from_config(config)
    assert rebuilt.memory is not mem and len(rebuilt.memory) == 0
    assert (rebuilt.memory.capacity, rebuilt.memory.key_size, rebuilt.memory.payload_size) == (
        16,
        4,
        3,
    )
    with pytest.raises(ValueError, match="capacity and key_size"):
        layers.MemoryRecall({"capacity": 4}, k=1)
    with pytest.raises(TypeError, match="KnowledgeMemory"):
        layers.MemoryRecall("memory")


def test_custom_objects_still_resolve_your_own_layers():
    class Double(layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    model = keras.Sequential([layers.Dense(2, input_shape=(4,)), Double(name="double")])
    config = layers.serialize(model)
    with pytest.raises(ValueError, match="Unknown layer class 'Double'"):
        layers.deserialize(config)
    rebuilt = layers.deserialize(config, custom_objects={"Double": Double})
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(rebuilt(VEC)), np.asarray(model(VEC)))


def test_rebuilt_layers_initialise_as_the_original():
    """The initializers are part of the configuration (Keras' get_config has them), so a
    layer rebuilt from it makes the same weights on build."""
    bn = layers.BatchNormalization(
        gamma_initializer="zeros",
        beta_initializer="ones",
        moving_mean_initializer="ones",
        moving_variance_initializer="zeros",
    )
    conv = layers.Conv2D(2, 3, kernel_initializer="ones", bias_initializer="ones")
    for layer in (bn, conv):
        rebuilt = layers.deserialize(_as_json(layers.serialize(layer)))
        layer(IMG)
        rebuilt(IMG)
        for a, b in zip(rebuilt.get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_demo_history_is_written_by_the_safe_writer(tmp_path, monkeypatch):
    """``python -m metalearn --output DIR`` writes history.json as the weight files are
    written (``_core.write_file``: a unique temporary file, fsync, rename), never with a
    plain ``Path.write_text`` that leaves half a file when interrupted."""
    import argparse
    import sys
    from pathlib import Path

    from metalearn import _core
    from metalearn import __main__ as demo

    calls = []
    real = _core.write_file

    def recording(path, data):
        calls.append(path)
        return real(path, data)

    def refused(self, *args, **kwargs):
        raise AssertionError(f"plain write_text({self})")

    monkeypatch.setattr(_core, "write_file", recording)
    monkeypatch.setattr(Path, "write_text", refused)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # no plot: only the two files
    model = keras.Sequential([layers.Dense(1, input_shape=(1,))])
    args = argparse.Namespace(output=str(tmp_path), task="sinusoid", algorithm="maml")
    demo._save(args, None, model, {"loss": [0.5, 0.25]}, {1: 0.9}, {1: 0.1}, None, None)
    assert str(tmp_path / "history.json") in calls
    saved = json.loads((tmp_path / "history.json").read_text(encoding="utf-8"))
    assert saved["history"] == {"loss": [0.5, 0.25]} and saved["after"] == {"1": 0.1}


def test_custom_objects_do_not_stay_in_the_registry():
    # the registry of shipped layers is built once and handed out as a copy: one call's
    # custom_objects (here shadowing Dense) must not reach the next call
    class Dense(layers.Dense):
        pass

    config = layers.serialize(layers.Dense(3))
    assert type(layers.deserialize(config, custom_objects={"Dense": Dense})) is Dense
    assert type(layers.deserialize(config)) is layers.Dense
    layers._shipped_layers()["Dense"] = Dense  # a caller mutating its copy
    assert type(layers.deserialize(config)) is layers.Dense


def test_clone_reads_no_signature_once_warm(monkeypatch):
    # clone_model (every adapt) deserialises each layer with custom_objects: whether a
    # class's from_config takes them is read off its signature once per class, not per call
    import inspect

    from metalearn.meta._base import clone_model

    model = keras.Sequential(
        [layers.Dense(8, activation="relu", input_shape=(4,)), layers.Dense(2)]
    )
    first = clone_model(model)
    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = clone_model(model)
    assert calls == []
    np.testing.assert_array_equal(np.asarray(again(VEC)), np.asarray(first(VEC)))
