"""``dropout`` / ``recurrent_dropout`` of SimpleRNN, GRU and LSTM against live Keras 3
(PyTorch backend): inference ignores them as Keras does; in training, the masks our layer
draws (reproduced from the seed) given to Keras' cell as its cached masks
(``_dropout_mask`` / ``_recurrent_dropout_mask``, which Keras' RNN keeps for the whole
call) give Keras' output, so the masks' shapes, their count (one per gate for LSTM and GRU
with ``recurrent_dropout``, Keras' implementation 1), where they multiply and their reuse
at every step are Keras'; and the configs travel both ways in ``.keras`` files. Marked ``keras``."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras as mk

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()

GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
CASES = [
    ("SimpleRNN", {"dropout": 0.3, "recurrent_dropout": 0.4}),
    ("SimpleRNN", {"recurrent_dropout": 0.4, "return_sequences": True}),
    ("LSTM", {"dropout": 0.3}),
    ("LSTM", {"dropout": 0.3, "recurrent_dropout": 0.4, "return_sequences": True}),
    ("LSTM", {"recurrent_dropout": 0.5, "go_backwards": True}),
    ("GRU", {"dropout": 0.3}),
    ("GRU", {"dropout": 0.3, "recurrent_dropout": 0.4, "return_sequences": True}),
    ("GRU", {"recurrent_dropout": 0.4, "reset_after": False, "return_sequences": True}),
]


def masks_after_seed(seed, name, kwargs, batch, feat, units):
    """The masks our layer draws after ``set_seed(seed)``, in Keras' cell's form."""
    rec = kwargs.get("recurrent_dropout", 0.0)
    n = GATES[name] if name != "SimpleRNN" and rec > 0 else 1
    ml.random.set_seed(seed)

    def draw(shape, rate):
        u = ml.random.uniform(shape).numpy()
        return ((u >= rate) / (1.0 - rate)).astype("float32")

    dm = (
        [draw((batch, feat), kwargs["dropout"]) for _ in range(n)]
        if kwargs.get("dropout")
        else None
    )
    rm = [draw((batch, units), rec) for _ in range(n)] if rec else None
    # Keras caches a list when it draws one per gate, else a tensor
    form = (lambda m: m) if n > 1 else (lambda m: m[0])
    conv = KERAS.ops.convert_to_tensor
    return (
        None if dm is None else form([conv(m) for m in dm]),
        None if rm is None else form([conv(m) for m in rm]),
    )


@pytest.mark.parametrize("name,kwargs", CASES)
def test_training_with_our_masks_matches_keras(name, kwargs):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 5, 3)).astype("float32")
    ours = getattr(mk.layers, name)(4, **kwargs)
    theirs = getattr(KERAS.layers, name)(4, **kwargs)
    ours(x)
    theirs(x)
    w = [rng.normal(0, 0.5, v.shape).astype("float32") for v in ours.weights]
    ours.set_weights(w)
    theirs.set_weights(w)
    # inference: the rates do nothing, in both
    np.testing.assert_allclose(
        ours(x).numpy(), KERAS.ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5
    )
    ml.random.set_seed(21)
    a = ours(x, training=True).numpy()
    dm, rm = masks_after_seed(21, name, kwargs, 6, 3, 4)
    theirs.cell._dropout_mask = dm
    theirs.cell._recurrent_dropout_mask = rm
    b = KERAS.ops.convert_to_numpy(theirs(x, training=True))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.abs(a - ours(x).numpy()).max() > 1e-3  # the masks acted


def rnn_model(lib):
    L = lib.layers
    return lib.Sequential(
        [
            L.Input((5, 3)),
            L.SimpleRNN(4, dropout=0.1, recurrent_dropout=0.2, return_sequences=True),
            L.GRU(4, dropout=0.25, recurrent_dropout=0.5, seed=3, return_sequences=True),
            L.LSTM(2, recurrent_dropout=0.3),
        ]
    )


RATES = [(0.1, 0.2), (0.25, 0.5), (0.0, 0.3)]


def test_config_round_trip_through_keras_files(tmp_path):
    x = np.random.default_rng(13).standard_normal((6, 5, 3)).astype("float32")
    ours = rnn_model(mk)
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    for layer, (d, r) in zip(theirs.layers, RATES):
        assert (layer.dropout, layer.recurrent_dropout) == (d, r)
    np.testing.assert_allclose(
        ours.predict(x, verbose=0),
        KERAS.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
        rtol=1e-5,
        atol=1e-5,
    )
    theirs = rnn_model(KERAS)
    theirs.save(tmp_path / "theirs.keras")
    back = mk.models.load_model(tmp_path / "theirs.keras")
    for layer, ref in zip(back.layers, theirs.layers):
        assert (layer.dropout, layer.recurrent_dropout) == (ref.dropout, ref.recurrent_dropout)
    np.testing.assert_allclose(
        back.predict(x, verbose=0),
        KERAS.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
        rtol=1e-5,
        atol=1e-5,
    )
