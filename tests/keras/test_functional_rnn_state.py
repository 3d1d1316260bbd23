"""Recurrent layers' states in functional graphs, as Keras 3: ``return_state=True`` gives
one symbolic tensor per output (``Model(inputs, [seq, h, c])``), ``initial_state=`` takes
symbolic tensors (the encoder-decoder of Keras' seq2seq tutorial, training and inference
models sharing the layers), each checked against the layers run eagerly on the same
arrays; ``fit`` traces such a model and equals eager steps; configs (Keras' layout:
``keras_history`` ``[layer, call, output]``, tensors inside ``kwargs``) and
``.metalearn`` files round trip (``.keras`` both ways with Keras 3:
keras_conformance/test_live_rnn_state.py); MAML runs through such a graph."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers
from metalearn.meta import MAML
from metalearn.tasks import Task

RNG = np.random.default_rng(0)
X_ENC = RNG.standard_normal((8, 4, 5)).astype(np.float32)
X_DEC = RNG.standard_normal((8, 3, 7)).astype(np.float32)
Y = np.eye(7, dtype=np.float32)[RNG.integers(0, 7, (8, 3))]


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def seq2seq(kind="lstm", fixed=False):
    """Keras' lstm_seq2seq tutorial: the training model and the inference models."""
    ml.random.set_seed(3)
    rnn = layers.LSTM if kind == "lstm" else layers.GRU
    n_states = 2 if kind == "lstm" else 1
    enc_in = keras.Input((4 if fixed else None, 5))
    encoder = rnn(6, return_state=True)
    _, *states = encoder(enc_in)
    dec_in = keras.Input((3 if fixed else None, 7))
    dec_rnn = rnn(6, return_sequences=True, return_state=True)
    dec_seq = dec_rnn(dec_in, initial_state=states)[0]
    dense = layers.Dense(7, activation="softmax")
    model = keras.Model([enc_in, dec_in], dense(dec_seq))
    enc_model = keras.Model(enc_in, states)
    state_ins = [keras.Input((6,)) for _ in range(n_states)]
    out, *dec_states = dec_rnn(dec_in, initial_state=state_ins)
    dec_model = keras.Model([dec_in] + state_ins, [dense(out)] + dec_states)
    return model, enc_model, dec_model, (encoder, dec_rnn, dense)


def eager(parts, x_enc, x_dec):
    encoder, dec_rnn, dense = parts
    _, *states = encoder(x_enc)
    return dense(dec_rnn(x_dec, initial_state=states)[0]).numpy()


def test_return_state_outputs_in_a_model():
    inp = keras.Input((4, 5))
    lstm = layers.LSTM(6, return_state=True, return_sequences=True)
    seq, h, c = lstm(inp)
    assert (seq.shape, h.shape, c.shape) == ((None, 4, 6), (None, 6), (None, 6))
    model = keras.Model(inp, [seq, h, c])
    got = model.predict(X_ENC, verbose=0)
    want = lstm(X_ENC)
    assert len(got) == 3
    for a, b in zip(got, want):
        close(a, b.numpy())
    # the states alone, and one state in a list with another layer's output
    close(keras.Model(inp, c).predict(X_ENC, verbose=0), want[2].numpy())
    d = layers.Dense(2)(h)
    both = keras.Model(inp, [d, c]).predict(X_ENC, verbose=0)
    close(both[1], want[2].numpy())
    assert model.output_names == ["lstm", "lstm", "lstm"] or len(set(model.output_names)) == 1


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("fixed", [False, True])
def test_seq2seq_training_and_inference_models(kind, fixed):
    model, enc_model, dec_model, parts = seq2seq(kind, fixed)
    close(model.predict([X_ENC, X_DEC], verbose=0), eager(parts, X_ENC, X_DEC))
    states = enc_model.predict(X_ENC, verbose=0)
    states = states if isinstance(states, list) else [states]
    out = dec_model.predict([X_DEC] + states, verbose=0)
    close(out[0], eager(parts, X_ENC, X_DEC))
    # the decoder's returned states continue the sequence: one step at a time equals all
    step_states = states
    for t in range(0 if fixed else 3):
        o, *step_states = dec_model.predict([X_DEC[:, t : t + 1]] + step_states, verbose=0)
        close(o[:, 0], out[0][:, t])
    assert len(model.layers) == 5 and len(dec_model.layers) == 3 + len(states)


def test_seq2seq_fit_is_traced_and_equals_eager_steps():
    traced, _, _, _ = seq2seq()
    traced.compile(optimizer="sgd", loss="categorical_crossentropy")
    _, _, _, parts = seq2seq()  # the same initial weights (same seed)
    traced.fit([X_ENC, X_DEC], Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert not traced._run_eagerly and traced._train_fn.n_traces == 1
    weights = [w for p in parts for w in p.trainable_weights]
    opt = keras.optimizers.SGD()
    for _ in range(2):
        for i in range(0, 8, 4):
            with ml.GradientTape() as tape:
                encoder, dec_rnn, dense = parts
                _, *states = encoder(X_ENC[i : i + 4])
                p = dense(dec_rnn(X_DEC[i : i + 4], initial_state=states)[0])
                loss = keras.losses.categorical_crossentropy(Y[i : i + 4], p)
                loss = ml.reduce_mean(loss)
            opt.apply_gradients(zip(tape.gradient(loss, weights), weights))
    ours = [w for l in traced.layers for w in l.get_weights()]
    for a, b in zip(ours, [np.asarray(w.numpy()) for w in weights]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_config_layout_and_round_trip(tmp_path):
    model, enc_model, dec_model, parts = seq2seq()
    config = model.get_config()
    by_name = {l["name"]: l for l in config["layers"]}
    enc_name, dec_name = parts[0].name, parts[1].name
    node = by_name[dec_name]["inbound_nodes"][0]
    hist = [t["config"]["keras_history"] for t in node["kwargs"]["initial_state"]]
    assert hist == [[enc_name, 0, 1], [enc_name, 0, 2]]  # as Keras 3 writes it
    assert len(by_name[enc_name]["inbound_nodes"]) == 1
    again = keras.Model.from_config(config)
    again.set_weights(model.get_weights())
    close(again.predict([X_ENC, X_DEC], verbose=0), model.predict([X_ENC, X_DEC], verbose=0))
    # the inference decoder: a shared layer's second call, states out
    dconf = dec_model.get_config()
    # Keras 3 numbers a layer's calls within the model: the only call here is 0
    assert dconf["output_layers"][1:] == [[dec_name, 0, 1], [dec_name, 0, 2]]
    dec_again = keras.Model.from_config(dconf)
    dec_again.set_weights(dec_model.get_weights())
    h = np.ones((8, 6), np.float32) * 0.1
    for a, b in zip(
        dec_again.predict([X_DEC, h, -h], verbose=0), dec_model.predict([X_DEC, h, -h], verbose=0)
    ):
        close(a, b)
    model.save(tmp_path / "s2s.metalearn")
    loaded = keras.models.load_model(tmp_path / "s2s.metalearn")
    close(loaded.predict([X_ENC, X_DEC], verbose=0), model.predict([X_ENC, X_DEC], verbose=0))


def test_maml_through_states():
    # one input read twice: an encoder's final states start a decoder over the same steps
    ml.random.set_seed(5)
    inp = keras.Input((4, 5))
    _, h, c = layers.LSTM(6, return_state=True)(inp)
    seq = layers.LSTM(6)(inp, initial_state=[h, c])
    model = keras.Model(inp, layers.Dense(1)(seq))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 4, 5)).astype(np.float32)
    y = x.sum(axis=(2, 3))[..., None].astype(np.float32) / 5
    task = Task(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:], {"batched": True})
    grads = {}
    for order in (1, 2):
        maml = MAML(model, inner_lr=0.1, loss="mse", first_order=order == 1)
        loss, grads[order] = maml.meta_gradients(task)
        assert np.isfinite(loss) and len(grads[order]) == len(model.trainable_weights)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads[order])
        # the encoder's kernel gets a meta-gradient through the decoder's initial state
        assert np.abs(np.asarray(grads[order][0])).max() > 1e-6
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(*grads.values())) > 1e-7


def test_bad_initial_state_is_refused():
    inp = keras.Input((4, 5))
    h = layers.Dense(3)(keras.Input((2,)))
    with pytest.raises(ValueError, match="initial_state"):
        layers.LSTM(6)(inp, initial_state=[h, h])
