"""SimpleRNN, GRU, LSTM and Masking against Keras 3's own tests
(``keras/src/layers/rnn/{simple_rnn,gru,lstm}_test.py``,
``keras/src/layers/core/masking_test.py`` at 3.15.1): the expected values below are
theirs, cited by test name; the tolerance is theirs (atol = rtol = 1e-5).

Deliberately different: ``unroll`` is accepted and every step is always its own ops;
dropout masks come from the global generator, not a per-layer seed (so no seed generator
among the non-trainable variables).
"""

import numpy as np
import pytest

from metalearn import keras
from metalearn.keras import initializers, layers

from ._helpers import all_close, assert_config_round_trip


def close(actual, desired):
    all_close(actual, desired, atol=1e-5, rtol=1e-5)


def constant_layer(cls, units, **kwargs):
    return cls(
        units,
        kernel_initializer=initializers.Constant(0.01),
        recurrent_initializer=initializers.Constant(0.02),
        bias_initializer=initializers.Constant(0.03),
        **kwargs,
    )


def rows(values, units):
    """Keras' expected arrays repeat one value per row across the units."""
    return np.repeat(np.asarray(values, np.float64)[:, None], units, axis=1)


SEQ72 = np.arange(72).reshape((3, 6, 4)).astype("float32")
SEQ24 = np.arange(24).reshape((2, 4, 3)).astype("float32")
SEQ24B = np.arange(24).reshape((2, 3, 4)).astype("float32")


# ------------------------------------------------------------------------ test_correctness
@pytest.mark.parametrize(
    "kwargs,expected",
    [  # lstm_test.py::test_correctness
        ({}, [0.6288687, 0.86899155, 0.9460773]),
        ({"go_backwards": True}, [0.35622165, 0.74789524, 0.8872726]),
        ({"unroll": True}, [0.6288687, 0.86899155, 0.9460773]),
        ({"unit_forget_bias": False}, [0.57019705, 0.8661914, 0.9459622]),
        ({"use_bias": False}, [0.54986924, 0.86226785, 0.9443936]),
    ],
)
def test_lstm_correctness(kwargs, expected):
    close(constant_layer(layers.LSTM, 3, **kwargs)(SEQ72), rows(expected, 3))


@pytest.mark.parametrize(
    "kwargs,expected",
    [  # gru_test.py::test_correctness
        ({}, [0.5217289, 0.6371659, 0.39384964]),
        ({"go_backwards": True}, [0.24406259, 0.611516, 0.3928808]),
        ({"unroll": True}, [0.5217289, 0.6371659, 0.39384964]),
        ({"reset_after": False}, [0.51447755, 0.6426879, 0.40208298]),
        ({"use_bias": False}, [0.49988455, 0.64701194, 0.4103359]),
    ],
)
def test_gru_correctness(kwargs, expected):
    close(constant_layer(layers.GRU, 3, **kwargs)(SEQ72), rows(expected, 3))


@pytest.mark.parametrize(
    "kwargs,expected",
    [  # simple_rnn_test.py::test_correctness
        ({}, [0.405432, 0.73605347]),
        ({"unroll": True}, [0.405432, 0.73605347]),
        ({"go_backwards": True}, [0.11144729, 0.5528889]),
        ({"go_backwards": True, "unroll": True}, [0.11144729, 0.5528889]),
    ],
)
def test_simple_rnn_correctness(kwargs, expected):
    close(constant_layer(layers.SimpleRNN, 4, **kwargs)(SEQ24B), rows(expected, 4))


def test_gru_legacy_implementation_argument():
    # gru_test.py::test_legacy_implementation_argument
    config = constant_layer(layers.GRU, 3).get_config()
    config["implementation"] = 0
    layer = layers.GRU.from_config(config)
    close(layer(SEQ72), rows([0.5217289, 0.6371659, 0.39384964], 3))


# ------------------------------------------------------------------ test_pass_initial_state
def test_lstm_pass_initial_state():
    # lstm_test.py::test_pass_initial_state
    state = [np.arange(4).reshape((2, 2)).astype("float32")] * 2
    out = constant_layer(layers.LSTM, 2)(SEQ24, initial_state=state)
    close(out, [[0.20574439, 0.3558822], [0.64930826, 0.66276]])
    out = constant_layer(layers.LSTM, 2, go_backwards=True)(SEQ24, initial_state=state)
    close(out, [[0.13281618, 0.2790356], [0.5839337, 0.5992567]])


def test_gru_pass_initial_state_and_return_state():
    # gru_test.py::test_pass_initial_state, test_pass_return_state
    state = np.arange(4).reshape((2, 2)).astype("float32")
    fwd = [[0.23774096, 0.33508456], [0.83659905, 1.0227708]]
    bwd = [[0.13486053, 0.23261218], [0.78257304, 0.9691353]]
    close(constant_layer(layers.GRU, 2)(SEQ24, initial_state=state), fwd)
    close(constant_layer(layers.GRU, 2, go_backwards=True)(SEQ24, initial_state=state), bwd)
    out, h = constant_layer(layers.GRU, 2, return_state=True)(SEQ24, initial_state=state)
    close(out, fwd)
    close(h, out.numpy())
    out, h = constant_layer(layers.GRU, 2, return_state=True, go_backwards=True)(
        SEQ24, initial_state=state
    )
    close(out, bwd)
    close(h, out.numpy())


def test_simple_rnn_pass_initial_state():
    # simple_rnn_test.py::test_pass_initial_state
    state = np.arange(8).reshape((2, 4)).astype("float32")
    out = constant_layer(layers.SimpleRNN, 4)(SEQ24, initial_state=state)
    close(out, rows([0.33621645, 0.6262637], 4))
    out = constant_layer(layers.SimpleRNN, 4, go_backwards=True)(SEQ24, initial_state=state)
    close(out, rows([0.07344437, 0.43043602], 4))


# ---------------------------------------------------------------------- test_statefulness
@pytest.mark.parametrize(
    "cls,expected",
    [
        (layers.LSTM, [0.3124785, 0.6863672]),  # lstm_test.py::test_statefulness
        (layers.GRU, [0.29542392, 0.5885018]),  # gru_test.py::test_statefulness
        (layers.SimpleRNN, [0.40559256, 0.7361247]),  # simple_rnn_test.py::test_statefulness
    ],
)
def test_statefulness(cls, expected):
    layer = constant_layer(cls, 4, stateful=True)
    layer(SEQ24B)
    close(layer(SEQ24B), rows(expected, 4))
    layer.reset_state()
    layer(SEQ24B)
    close(layer(SEQ24B), rows(expected, 4))
    assert not layer._is_traceable()


# --------------------------------------------------------------------------- test_masking
def test_lstm_masking():
    # lstm_test.py::test_masking
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    out = constant_layer(layers.LSTM, 2, unroll=True)(SEQ24, mask=mask)
    close(out, rows([0.11755939, 0.28556206], 2))
    out = constant_layer(layers.LSTM, 2, return_sequences=True)(SEQ24, mask=mask).numpy()
    close(out[0], rows([0.01588910, 0.05552048, 0.11755939, 0.11755939], 2))
    close(out[1], rows([0.14185596, 0.28556206, 0.28556206, 0.28556206], 2))
    out = constant_layer(layers.LSTM, 2, return_sequences=True, zero_output_for_mask=True)(
        SEQ24, mask=mask
    ).numpy()
    close(out[0], rows([0.01588910, 0.05552048, 0.11755939, 0.0], 2))
    close(out[1], rows([0.14185596, 0.28556206, 0.0, 0.0], 2))
    backwards_mask = np.array([[False, True, True, True], [False, False, True, True]])
    out = constant_layer(layers.LSTM, 2, go_backwards=True)(SEQ24, mask=backwards_mask)
    close(out, rows([0.15341201, 0.3844719], 2))


def test_gru_masking():
    # gru_test.py::test_masking
    mask = np.array([[True, True, False, True], [True, False, False, True]])
    out = constant_layer(layers.GRU, 2, unroll=True)(SEQ24, mask=mask)
    close(out, rows([0.19393763, 0.30818558], 2))
    out = constant_layer(layers.GRU, 2, return_sequences=True)(SEQ24, mask=mask).numpy()
    close(out[0], rows([0.03606692, 0.09497581, 0.09497581, 0.19393763], 2))
    close(out[1], rows([0.16051409, 0.16051409, 0.16051409, 0.30818558], 2))
    out = constant_layer(layers.GRU, 2, return_sequences=True, zero_output_for_mask=True)(
        SEQ24, mask=mask
    ).numpy()
    close(out[0], rows([0.03606692, 0.09497581, 0.0, 0.19393763], 2))
    close(out[1], rows([0.16051409, 0.0, 0.0, 0.30818558], 2))
    out = constant_layer(layers.GRU, 2, go_backwards=True)(SEQ24, mask=mask)
    close(out, rows([0.11669192, 0.28380975], 2))


def test_simple_rnn_masking():
    # simple_rnn_test.py::test_masking
    mask = np.array([[True, True, False, True], [True, False, False, True]])
    out = constant_layer(layers.SimpleRNN, 4, unroll=True)(SEQ24, mask=mask)
    close(out, rows([0.32951632, 0.61799484], 4))
    out = constant_layer(layers.SimpleRNN, 2, return_sequences=True)(SEQ24, mask=mask).numpy()
    close(out[0], rows([0.0599281, 0.15122814, 0.15122814, 0.32394567], 2))
    close(out[1], rows([0.3969304, 0.3969304, 0.3969304, 0.608085], 2))
    out = constant_layer(layers.SimpleRNN, 2, return_sequences=True, zero_output_for_mask=True)(
        SEQ24, mask=mask
    ).numpy()
    close(out[0], rows([0.0599281, 0.15122814, 0.0, 0.32394567], 2))
    close(out[1], rows([0.3969304, 0.0, 0.0, 0.608085], 2))
    out = constant_layer(layers.SimpleRNN, 4, go_backwards=True)(SEQ24, mask=mask)
    close(out, rows([0.07376196, 0.43645123], 4))


# -------------------------------------------------------------------------- test_basics
@pytest.mark.parametrize("cls", [layers.SimpleRNN, layers.GRU, layers.LSTM])
def test_basics(cls):
    # {simple_rnn,gru,lstm}_test.py::test_basics (the dropout-free case): 3 weights,
    # return_sequences' shape, one loss per regularizer, masking supported
    layer = cls(
        3,
        return_sequences=True,
        bias_regularizer="l1",
        kernel_regularizer="l2",
        recurrent_regularizer="l2",
    )
    out = layer(np.random.normal(size=(3, 2, 4)).astype("float32"))
    assert tuple(out.shape) == (3, 2, 3)
    assert len(layer.trainable_weights) == 3 and not layer.non_trainable_weights
    assert len(layer.losses) == 3
    assert layer.supports_masking
    assert tuple(cls(3)(np.zeros((3, 2, 4), "float32")).shape) == (3, 3)
    assert_config_round_trip(layer, layers.serialize, layers.deserialize)


@pytest.mark.parametrize(
    "cls,kwargs",
    [  # the dropout cases of test_basics: training=True, shape (3, 3), 3 weights
        (layers.LSTM, {"dropout": 0.5}),
        (layers.GRU, {"dropout": 0.5}),
        (layers.LSTM, {"dropout": 0.5, "recurrent_dropout": 0.5}),
        (layers.GRU, {"dropout": 0.5, "recurrent_dropout": 0.5}),
        (layers.SimpleRNN, {"dropout": 0.5, "recurrent_dropout": 0.5}),
    ],
)
def test_basics_dropout(cls, kwargs):
    layer = cls(3, **kwargs)
    out = layer(np.random.normal(size=(3, 2, 4)).astype("float32"), training=True)
    assert tuple(out.shape) == (3, 3)
    assert len(layer.trainable_weights) == 3 and not layer.non_trainable_weights


# ------------------------------------------------------------------------ masking_test.py
def test_masking_basics():
    # masking_test.py::test_masking_basics: built at once, no weights, shape kept
    layer = layers.Masking(mask_value=0.0)
    assert layer.built and not layer.weights
    assert tuple(layer(np.ones((2, 3, 2), "float32")).shape) == (2, 3, 2)
    assert layer.supports_masking
    assert_config_round_trip(layer, layers.serialize, layers.deserialize)


def test_masking_correctness():
    # masking_test.py::test_masking_correctness: the mask, and a layer after Masking in a
    # Sequential receives it as its call's `mask`
    x = np.array([[[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0], [2.0, 1.0]]])
    expected_mask = [[False, True, False], [True, False, True]]
    layer = layers.Masking(mask_value=0.0)
    close(layer.compute_mask(x), np.asarray(expected_mask, np.float64))
    seen = []

    class TestLayer(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, mask=None):
            seen.append(None if mask is None else mask.numpy())
            return inputs

    keras.Sequential([layers.Masking(mask_value=0.0), TestLayer()])(x.astype("float32"))
    assert seen and seen[-1] is not None
    close(seen[-1], np.asarray(expected_mask, np.float64))


def test_masking_with_tensor(tmp_path):
    # masking_test.py::test_masking_with_tensor: the padded steps change nothing (checked
    # against the unpadded sequences run alone), and the model survives save / load_model
    x = np.array([[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 1.0], [0.0, 0.0]]])
    model = keras.Sequential([layers.Masking(mask_value=0.0), layers.LSTM(1)])
    out = model(x.astype("float32")).numpy()
    lstm = model.layers[1]
    close(out[0], lstm(x[:1, :1].astype("float32")).numpy()[0])
    close(out[1], lstm(x[1:, :2].astype("float32")).numpy()[0])
    # (Keras' test saves a .keras file, which needs h5py: the default run has none, and
    # the .metalearn format is the same round trip without it)
    model.save(str(tmp_path / "model.metalearn"))
    reloaded = keras.models.load_model(str(tmp_path / "model.metalearn"))
    assert [type(l).__name__ for l in reloaded.layers] == ["Masking", "LSTM"]
    close(reloaded(x.astype("float32")).numpy(), out)
