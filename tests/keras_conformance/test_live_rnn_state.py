"""Recurrent states in functional graphs against live Keras 3 (PyTorch backend): the
encoder-decoder of Keras' seq2seq tutorial (``return_state=True``, ``initial_state=``
symbolic) and a model returning ``[seq, h, c]`` predict as Keras does with the same
weights, write the config Keras writes (tensors in ``kwargs``, ``keras_history``'s output
index), and travel both ways in ``.keras`` files (Keras records ``training``/``mask``
on an RNN's call: read too). Marked ``keras``."""

import numpy as np
import pytest

from metalearn import keras as mk

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()

RNG = np.random.default_rng(7)
X = [
    RNG.standard_normal((5, 4, 3)).astype("float32"),
    RNG.standard_normal((5, 6, 2)).astype("float32"),
]


def seq2seq(lib, kind="LSTM"):
    L = lib.layers
    rnn = getattr(L, kind)
    enc_in = L.Input((None, 3), name="enc_in")
    _, *states = rnn(4, return_state=True, name="encoder")(enc_in)
    dec_in = L.Input((None, 2), name="dec_in")
    dec = rnn(4, return_sequences=True, return_state=True, name="decoder")
    seq = dec(dec_in, initial_state=states)[0]
    return lib.Model([enc_in, dec_in], L.Dense(3, activation="softmax", name="out")(seq))


def states_model(lib):
    L = lib.layers
    inp = L.Input((4, 3), name="inp")
    seq, h, c = L.LSTM(5, return_sequences=True, return_state=True, name="lstm")(inp)
    return lib.Model(inp, [seq, h, L.Dense(2, name="d")(c)])


ARCHS = {
    "seq2seq-lstm": (lambda lib: seq2seq(lib), X),
    "seq2seq-gru": (lambda lib: seq2seq(lib, "GRU"), X),
    "states": (states_model, X[0]),
}


def flat(p):
    return [np.asarray(KERAS.ops.convert_to_numpy(a)) for a in (p if isinstance(p, list) else [p])]


def close_all(a, b):
    a, b = flat(a), flat(b)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def nodes(config):
    """Each layer's inbound nodes' tensors (args and kwargs) as keras_history lists."""

    def hist(v):
        if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
            return list(v["config"]["keras_history"])
        if isinstance(v, dict):
            return {k: hist(x) for k, x in v.items() if k not in ("training", "mask")}
        if isinstance(v, (list, tuple)):  # (Keras' own get_config has tuples)
            return [hist(x) for x in v]
        return v

    return {l["name"]: hist(l["inbound_nodes"]) for l in config["layers"]}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_predictions_and_config_match_keras(arch):
    make, x = ARCHS[arch]
    ours, theirs = make(mk), make(KERAS)
    w = [RNG.normal(0, 0.5, v.shape).astype("float32") for v in ours.weights]
    ours.set_weights(w)
    theirs.set_weights(w)
    close_all(ours.predict(x, verbose=0), theirs.predict(x, verbose=0))
    assert nodes(ours.get_config()) == nodes(theirs.get_config())

    # (one output: Keras writes the bare history, we a one-item list; both read both)
    def outs(c):
        o = [list(h) if isinstance(h, (list, tuple)) else h for h in c["output_layers"]]
        return o if isinstance(o[0], list) else [o]

    assert outs(ours.get_config()) == outs(theirs.get_config())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_keras_files_both_ways(arch, tmp_path):
    make, x = ARCHS[arch]
    ours = make(mk)
    ours.set_weights([RNG.normal(0, 0.5, v.shape).astype("float32") for v in ours.weights])
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    close_all(theirs.predict(x, verbose=0), ours.predict(x, verbose=0))
    theirs = make(KERAS)
    theirs.set_weights([RNG.normal(0, 0.5, v.shape).astype("float32") for v in ours.weights])
    theirs.save(tmp_path / "theirs.keras")
    back = mk.models.load_model(tmp_path / "theirs.keras")
    close_all(back.predict(x, verbose=0), theirs.predict(x, verbose=0))
