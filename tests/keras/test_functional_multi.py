"""The functional API with several inputs and outputs, as Keras 3
(keras/src/models/functional.py, keras/src/trainers/compile_utils.py): lists and dicts,
shared layers across branches, summary's "Connected to", get_config/from_config in
Keras 3's layout, per-output losses, loss weights and metrics in compile with Keras 3's
log names, fit traced and replayed, functional_call and second-order gradients, .keras
files. References: NumPy float64 forwards and losses from the weights; the log names
and the config layout are those Keras 3.15.1 gives for the same model (checked live,
tests/keras_conformance/test_live_keras.py::test_fit_two_outputs)."""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras

L = keras.layers


def two_branch(kind="list"):
    """Inputs a (3,) and b (2,); a Dense shared by both branches; outputs reg (1,) and
    cls (3, softmax)."""
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    sa = shared(a)
    sb = shared(L.Dense(3, name="proj")(b))  # the shared layer's second call
    h = L.Concatenate(name="cat")([sa, sb])
    reg = L.Dense(1, name="reg")(h)
    cls = L.Dense(3, activation="softmax", name="cls")(h)
    if kind == "dict":
        return keras.Model({"a": a, "b": b}, {"reg": reg, "cls": cls})
    return keras.Model([a, b], [reg, cls])


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.weights])


def numpy_forward(model, xa, xb):
    w = {v.name: np.asarray(v, np.float64) for v in model.weights}

    def dense(name, v):
        return v @ w[f"{name}/kernel"] + w[f"{name}/bias"]

    h = np.concatenate(
        [np.tanh(dense("shared", xa)), np.tanh(dense("shared", dense("proj", xb)))], -1
    )
    z = dense("cls", h)
    e = np.exp(z - z.max(-1, keepdims=True))
    return dense("reg", h), e / e.sum(-1, keepdims=True)


def data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 3)).astype(np.float32),
        rng.normal(size=(n, 2)).astype(np.float32),
        rng.normal(size=(n, 1)).astype(np.float32),
        rng.integers(0, 3, n),
    )


def test_structure_and_forward_list_and_dict():
    xa, xb, _, _ = data()
    for kind in ("list", "dict"):
        model = two_branch(kind)
        # Keras 3.15.1's orders for this graph (by depth, then by a walk from the
        # outputs; a dict's outputs in sorted key order)
        last = ["reg", "cls"] if kind == "list" else ["cls", "reg"]
        assert [l.name for l in model.layers] == ["b", "a", "proj", "shared", "cat"] + last
        assert model.output_names == last
        assert len(model.weights) == 8  # the shared Dense counted once
        randomize(model)
        ref_reg, ref_cls = numpy_forward(model, xa, xb)
        out = model([xa, xb]) if kind == "list" else model({"a": xa, "b": xb})
        if kind == "dict":
            assert set(out) == {"reg", "cls"}
            out = [out["reg"], out["cls"]]
        np.testing.assert_allclose(np.asarray(out[0]), ref_reg, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out[1]), ref_cls, rtol=1e-5, atol=1e-6)
        pred = model.predict([xa, xb] if kind == "list" else {"a": xa, "b": xb}, verbose=0)
        pred = pred if kind == "list" else [pred["reg"], pred["cls"]]
        np.testing.assert_allclose(pred[1], ref_cls, rtol=1e-5, atol=1e-6)
        # a dict keyed by input name works for a list model too (Keras 3)
        np.testing.assert_allclose(
            np.asarray(model({"a": xa, "b": xb})["cls" if kind == "dict" else 1]),
            ref_cls,
            rtol=1e-5,
            atol=1e-6,
        )


def test_summary_connected_to():
    lines = []
    two_branch().summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in lines[2]
    row = {l.split()[0]: l for l in lines if l.strip() and l.split()[0] in ("a", "shared", "cat")}
    assert row["a"].rstrip().endswith("-")
    # Keras 3's "layer[node][tensor]": the shared layer is called twice, on a and on proj
    assert "a[0][0]" in row["shared"] and "proj[0][0]" in text
    assert "shared[0][0]" in row["cat"] and "shared[1][0]" in text
    assert "Total params: 61" in text  # shared 3*4+4, proj 2*3+3, reg 8*1+1, cls 8*3+3


def test_config_layout_and_round_trip():
    xa, xb, _, _ = data()
    model = two_branch()
    randomize(model)
    config = model.get_config()
    # Keras 3.15.1's layout for the same graph
    assert config["input_layers"] == [["a", 0, 0], ["b", 0, 0]]
    assert config["output_layers"] == [["reg", 0, 0], ["cls", 0, 0]]
    entries = {e["name"]: e for e in config["layers"]}
    assert [
        n["args"][0]["config"]["keras_history"] for n in entries["shared"]["inbound_nodes"]
    ] == [
        ["a", 0, 0],
        ["proj", 0, 0],
    ]
    assert [
        a["config"]["keras_history"] for a in entries["cat"]["inbound_nodes"][0]["args"][0]
    ] == [
        ["shared", 0, 0],
        ["shared", 1, 0],
    ]
    again = keras.Model.from_config(json.loads(json.dumps(config)))
    assert json.loads(json.dumps(again.get_config())) == json.loads(json.dumps(config))
    again.set_weights(model.get_weights())
    for p, q in zip(again.predict([xa, xb], verbose=0), model.predict([xa, xb], verbose=0)):
        np.testing.assert_array_equal(p, q)
    d = two_branch("dict").get_config()
    assert d["input_layers"] == {"a": ["a", 0, 0], "b": ["b", 0, 0]}
    assert d["output_layers"] == {"reg": ["reg", 0, 0], "cls": ["cls", 0, 0]}
    again = keras.Model.from_config(json.loads(json.dumps(d)))
    assert again.output_names == ["cls", "reg"] and isinstance(again({"a": xa, "b": xb}), dict)


def reference_losses(model, xa, xb, y1, y2, w=(0.5, 2.0)):
    reg, cls = numpy_forward(model, xa, xb)
    mse = np.mean((reg - y1) ** 2)
    ce = -np.mean(np.log(cls[np.arange(len(y2)), y2]))
    return w[0] * mse + w[1] * ce, mse, ce, np.mean(np.abs(reg - y1)), np.mean(cls.argmax(-1) == y2)


@pytest.mark.parametrize("form", ["list", "dict"])
def test_compile_per_output_evaluate(form):
    xa, xb, y1, y2 = data()
    model = two_branch()
    randomize(model)
    if form == "list":
        model.compile(
            "sgd",
            loss=["mse", "sparse_categorical_crossentropy"],
            loss_weights=[0.5, 2.0],
            metrics=[["mae"], ["accuracy"]],
        )
        y = [y1, y2]
    else:
        model.compile(
            "sgd",
            loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
            loss_weights={"reg": 0.5, "cls": 2.0},
            metrics={"reg": "mae", "cls": ["accuracy"]},
        )
        y = {"cls": y2, "reg": y1}
    logs = model.evaluate([xa, xb], y, batch_size=12, verbose=0, return_dict=True)
    # Keras 3's names: <output>_loss (unweighted), <output>_<metric>
    assert set(logs) == {"loss", "reg_loss", "cls_loss", "reg_mae", "cls_accuracy"}
    total, mse, ce, mae, acc = reference_losses(model, xa, xb, y1, y2)
    np.testing.assert_allclose(
        [logs["loss"], logs["reg_loss"], logs["cls_loss"], logs["reg_mae"], logs["cls_accuracy"]],
        [total, mse, ce, mae, acc],
        rtol=1e-5,
    )


def test_fit_traced_equals_eager_and_history_keys():
    xa, xb, y1, y2 = data(16)
    runs = []
    for eager in (True, None):
        model = two_branch()
        randomize(model)
        model.compile(
            keras.optimizers.SGD(0.05),
            loss=["mse", "sparse_categorical_crossentropy"],
            loss_weights=[0.5, 2.0],
            metrics=[["mae"], ["accuracy"]],
            run_eagerly=eager,
        )
        h = model.fit([xa, xb], [y1, y2], batch_size=4, epochs=2, shuffle=False, verbose=0)
        runs.append((model, h.history))
    (eager, h_e), (traced, h_t) = runs
    assert traced._train_fn is not None and traced._train_fn.n_traces >= 1
    assert eager._train_fn is None
    assert sorted(h_t) == ["cls_accuracy", "cls_loss", "loss", "reg_loss", "reg_mae"]
    for a, b in zip(traced.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for k in h_e:
        np.testing.assert_allclose(h_t[k], h_e[k], rtol=1e-6)
    # the weighted sum of the per-output losses, per batch and so per epoch
    np.testing.assert_allclose(
        h_t["loss"], 0.5 * np.array(h_t["reg_loss"]) + 2.0 * np.array(h_t["cls_loss"]), rtol=1e-5
    )


def test_one_step_matches_numpy_gradient_descent():
    # one SGD step on the full batch changes the loss as the float64 reference says
    xa, xb, y1, y2 = data(8)
    model = two_branch()
    randomize(model)
    model.compile(keras.optimizers.SGD(0.1), loss=["mse", "sparse_categorical_crossentropy"])
    before = [np.asarray(w, np.float64) for w in model.trainable_weights]
    model.train_on_batch([xa, xb], [y1, y2])
    # finite differences of the reference total loss along the step taken
    after = [np.asarray(w, np.float64) for w in model.trainable_weights]
    direction = [a - b for a, b in zip(after, before)]

    def total_at(t):
        model.set_weights([(b + t * d).astype(np.float32) for b, d in zip(before, direction)])
        return reference_losses(model, xa, xb, y1, y2, w=(1.0, 1.0))[0]

    eps = 1e-2
    slope = (total_at(eps) - total_at(-eps)) / (2 * eps)
    # a gradient step's direction d = -lr * g, so dL/dt = g.d = -|d|^2 / lr
    expected = -sum(float((d**2).sum()) for d in direction) / 0.1
    np.testing.assert_allclose(slope, expected, rtol=2e-2)


def test_refusals_change_nothing():
    xa, xb, y1, y2 = data()
    model = two_branch()
    with pytest.raises(ValueError, match="Invalid `metrics`"):
        model.compile("sgd", loss="mse", metrics=["mae"])  # Keras 3 refuses a flat list
    with pytest.raises(ValueError, match="not outputs of the model"):
        model.compile("sgd", loss={"reg": "mse", "nope": "mse"})
    with pytest.raises(ValueError, match="2 outputs"):
        model.compile("sgd", loss=["mse"])
    model.compile("sgd", loss=["mse", "sparse_categorical_crossentropy"])
    w0 = model.get_weights()
    with pytest.raises(ValueError, match="outputs"):
        model.fit([xa, xb], [y1], verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        model.fit([xa, xb[:5]], [y1, y2], verbose=0)
    with pytest.raises(ValueError, match="2 inputs"):
        model.fit(xa, [y1, y2], verbose=0)
    with pytest.raises(ValueError, match="lacks"):
        model.predict({"a": xa}, verbose=0)
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0


def test_functional_call_and_second_order():
    xa, xb, _, _ = data(4)
    model = two_branch()
    randomize(model)
    params = [ml.tensor(np.asarray(w) * 1.5, requires_grad=True) for w in model.trainable_weights]
    reg, cls = ml.functional_call(model, params, [xa, xb])
    # the reference with the same substituted weights
    saved = model.get_weights()
    model.set_weights([np.asarray(p) for p in params])
    ref_reg, ref_cls = numpy_forward(model, xa, xb)
    model.set_weights(saved)
    np.testing.assert_allclose(np.asarray(cls), ref_cls, rtol=1e-5, atol=1e-6)
    loss = ml.add(ml.reduce_mean(ml.square(reg)), ml.reduce_mean(ml.square(cls)))
    g = ml.grad(loss, params, create_graph=True)
    gg = ml.grad(ml.reduce_sum(ml.square(g[0])), params, allow_unused=True)
    assert gg[0] is not None and np.isfinite(np.asarray(gg[0])).all()
    assert float(np.abs(np.asarray(gg[0])).sum()) > 0


def test_keras_file_round_trip(tmp_path):
    xa, xb, y1, y2 = data()
    model = two_branch("dict")
    randomize(model)
    model.compile(
        "sgd",
        loss={"reg": "mse", "cls": "sparse_categorical_crossentropy"},
        loss_weights={"reg": 0.5, "cls": 2.0},
        metrics={"cls": ["accuracy"]},
    )
    model.fit({"a": xa, "b": xb}, {"reg": y1, "cls": y2}, epochs=1, verbose=0)
    model.save(tmp_path / "m.metalearn")
    loaded = keras.models.load_model(tmp_path / "m.metalearn")
    assert type(loaded).__name__ == "Functional" and loaded.output_names == ["cls", "reg"]
    p, q = (
        loaded.predict({"a": xa, "b": xb}, verbose=0),
        model.predict({"a": xa, "b": xb}, verbose=0),
    )
    for k in ("reg", "cls"):
        np.testing.assert_array_equal(p[k], q[k])
    a = loaded.evaluate({"a": xa, "b": xb}, {"reg": y1, "cls": y2}, verbose=0, return_dict=True)
    b = model.evaluate({"a": xa, "b": xb}, {"reg": y1, "cls": y2}, verbose=0, return_dict=True)
    assert a == b and set(a) == {"loss", "reg_loss", "cls_loss", "cls_accuracy"}


def test_fit_generator_of_lists_equals_train_on_batch():
    # generator batches ([xa, xb], [y1, y2]) train as train_on_batch on the same batches
    xa, xb, y1, y2 = data(12)
    runs = []
    for mode in ("gen", "batch"):
        model = two_branch()
        randomize(model)
        model.compile(keras.optimizers.SGD(0.05), loss=["mse", "sparse_categorical_crossentropy"])
        batches = [
            ([xa[i : i + 4], xb[i : i + 4]], [y1[i : i + 4], y2[i : i + 4]]) for i in (0, 4, 8)
        ]
        if mode == "gen":
            h = model.fit(iter(batches), epochs=1, verbose=0).history
            assert sorted(h) == ["cls_loss", "loss", "reg_loss"]
        else:
            for bx, by in batches:
                model.train_on_batch(bx, by)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algo", ["MAML", "FOMAML", "ANIL", "MetaSGD"])
def test_meta_learners_on_a_functional_model(algo):
    # a functional chain and the Sequential model with the same weights give the same
    # meta-gradients (second order for MAML), so every algorithm runs through the graph
    from metalearn import meta
    from metalearn.tasks import Task

    rng = np.random.default_rng(0)
    inp = keras.Input((3,))
    h = L.Dense(6, activation="tanh")(inp)
    functional = keras.Model(inp, L.Dense(2)(L.Dense(5, activation="tanh")(h)))
    sequential = keras.Sequential(
        [
            keras.Input((3,)),
            L.Dense(6, activation="tanh"),
            L.Dense(5, activation="tanh"),
            L.Dense(2),
        ]
    )
    randomize(functional)
    sequential.set_weights(functional.get_weights())
    batch = Task(
        rng.normal(size=(3, 5, 3)).astype(np.float32),
        rng.integers(0, 2, (3, 5)),
        rng.normal(size=(3, 7, 3)).astype(np.float32),
        rng.integers(0, 2, (3, 7)),
        {"batched": True},
    )
    out = []
    for model in (functional, sequential):
        learner = getattr(meta, algo)(model, inner_lr=0.3, inner_steps=2)
        out.append(learner.meta_gradients(batch))
    (la, ga), (lb, gb) = out
    assert abs(la - lb) < 1e-5 and len(ga) == len(gb)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
