"""SimpleRNN, GRU, LSTM and Masking against live Keras 3 (PyTorch backend): the same
random weights give the same outputs (masks, go_backwards, return_sequences,
return_state, reset_after), a Masking + LSTM + GRU model's predictions agree, and
``.weights.h5`` files written by either library load in the other with the same
predictions. Marked ``keras``; skipped with the reason when keras or torch is missing."""

import numpy as np
import pytest

from metalearn import keras as mk

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()


def close(a, b, what=""):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-5, err_msg=what
    )


def np_of(t):
    return np.asarray(KERAS.ops.convert_to_numpy(t), np.float64)


CASES = [
    ("SimpleRNN", {}),
    ("SimpleRNN", {"go_backwards": True, "return_sequences": True, "activation": "relu"}),
    ("LSTM", {}),
    ("LSTM", {"return_sequences": True, "return_state": True}),
    ("LSTM", {"go_backwards": True, "return_state": True, "use_bias": False}),
    ("GRU", {}),
    ("GRU", {"return_sequences": True, "return_state": True, "go_backwards": True}),
    ("GRU", {"reset_after": False, "return_sequences": True}),
    ("GRU", {"recurrent_activation": "softsign"}),
    ("LSTM", {"recurrent_activation": "tanh", "activation": "softsign"}),
]


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_layer_matches_keras(name, kwargs, masked):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 7, 3)).astype("float32")
    mask = rng.uniform(size=(4, 7)) > 0.3 if masked else None
    ours = getattr(mk.layers, name)(5, **kwargs)
    theirs = getattr(KERAS.layers, name)(5, **kwargs)
    ours(x)
    theirs(x)
    w = [rng.normal(0, 0.5, v.shape).astype("float32") for v in ours.weights]
    ours.set_weights(w)
    theirs.set_weights(w)
    a = ours(x, mask=mask)
    b = theirs(x, mask=mask)
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b)
    for i, (p, q) in enumerate(zip(a, b)):
        close(p.numpy(), np_of(q), f"{name} {kwargs} output {i}")
    assert ours.get_config()["units"] == theirs.get_config()["units"]


def model(lib, masked=True):
    L = lib.layers
    first = [L.Input((6, 3))] + ([L.Masking(mask_value=0.0)] if masked else [])
    return lib.Sequential(
        first + [L.LSTM(4, return_sequences=True), L.GRU(3), L.Dense(2, activation="tanh")]
    )


def padded(seed=2):
    x = np.random.default_rng(seed).standard_normal((5, 6, 3)).astype("float32")
    x[0, 3:] = 0.0
    x[2, 1:] = 0.0
    return x


def test_masked_model_and_weights_h5_interchange(tmp_path):
    pytest.importorskip("h5py")
    x = padded()
    ours, theirs = model(mk), model(KERAS)
    rng = np.random.default_rng(5)
    ours.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in ours.weights])
    # metalearn -> Keras through a .weights.h5 file
    ours.save_weights(str(tmp_path / "ours.weights.h5"))
    theirs.load_weights(str(tmp_path / "ours.weights.h5"))
    close(ours.predict(x, verbose=0), np_of(theirs.predict(x, verbose=0)), "ours -> keras")
    # Keras -> metalearn
    again = model(KERAS)
    again.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in again.weights])
    again.save_weights(str(tmp_path / "keras.weights.h5"))
    mine = model(mk)
    mine.load_weights(str(tmp_path / "keras.weights.h5"))
    close(mine.predict(x, verbose=0), np_of(again.predict(x, verbose=0)), "keras -> ours")
    # the mask matters here: without Masking the padded rows differ
    plain = model(mk, masked=False)
    plain.set_weights(mine.get_weights())
    assert np.abs(plain.predict(x, verbose=0)[0] - mine.predict(x, verbose=0)[0]).max() > 1e-4


def test_functional_embedding_mask_zero_matches_keras():
    ids = np.array([[3, 1, 0, 0, 0], [2, 2, 4, 1, 0], [1, 0, 0, 0, 0]])

    def build(lib):
        L = lib.layers
        inp = L.Input((5,))
        h = L.Embedding(6, 4, mask_zero=True)(inp)
        h = L.LSTM(3, return_sequences=True)(h)
        return lib.Model(inp, L.SimpleRNN(2)(h))

    ours, theirs = build(mk), build(KERAS)
    rng = np.random.default_rng(9)
    ours.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in ours.weights])
    theirs.set_weights(ours.get_weights())
    close(ours.predict(ids, verbose=0), np_of(theirs.predict(ids, verbose=0)), "embedding mask")


@pytest.mark.parametrize("cls", ["SimpleRNN", "GRU", "LSTM"])
def test_keras_files_of_recurrent_models_move_both_ways(cls, tmp_path):
    x = np.random.default_rng(0).random((3, 5, 4)).astype("float32")
    ours = mk.Sequential(
        [
            mk.layers.Input((5, 4)),
            getattr(mk.layers, cls)(6, return_sequences=True),
            getattr(mk.layers, cls)(3),
        ]
    )
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    close(np_of(theirs.predict(x, verbose=0)), ours.predict(x, verbose=0), cls)
    theirs.save(tmp_path / "theirs.keras")
    back = mk.models.load_model(tmp_path / "theirs.keras")
    close(back.predict(x, verbose=0), np_of(theirs.predict(x, verbose=0)), cls)
