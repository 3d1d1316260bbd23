"""metalearn against live Keras 3 (PyTorch backend) on fresh random inputs.

Marked ``keras``; skipped with the reason when keras or torch is not installed (the
default test run needs neither). CI installs ``torch==2.13.0`` and ``keras==3.15.1`` and
runs ``KERAS_BACKEND=torch python -m pytest -q -m "torch or keras"`` with
METALEARN_REQUIRE_KERAS=1, which turns a missing keras into an error, not a skip.

Each test builds the same thing in both libraries, copies metalearn's weights into the
Keras one layer by layer, and compares: forward outputs (inference and training mode),
every loss and metric, activations, optimizer steps, and a few epochs of
``fit(shuffle=False)`` (per-epoch history and final weights). Both compute in float32;
tolerances are float32's (rtol 1e-5 for one op, 1e-4 after several training steps).
"""

import numpy as np
import pytest

from metalearn.keras import activations, losses, metrics, optimizers

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()


@pytest.fixture
def keras_torch():
    KERAS.utils.set_random_seed(0)
    return KERAS


RTOL, ATOL = 1e-5, 1e-6


def close(actual, expected, rtol=RTOL, atol=ATOL, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def np_of(keras, t):
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


def copy_weights(ours, theirs):
    """metalearn layer -> Keras layer, layer by layer (both list a layer's weights as
    trainable then non-trainable: kernel, bias; gamma, beta, moving_mean, moving_variance)."""
    ours_layers = [l for l in ours.layers]
    theirs_layers = [l for l in theirs.layers]
    assert len(ours_layers) == len(theirs_layers)
    for a, b in zip(ours_layers, theirs_layers):
        b.set_weights(a.get_weights())


# ------------------------------------------------------------------ architectures
def mlp(lib, d_in, n_out, out_act):
    L = lib.layers
    first = L.Input((d_in,))
    return lib.Sequential(
        [
            first,
            L.Dense(16, activation="relu"),
            L.Dense(8, activation="tanh"),
            L.Dense(n_out, activation=out_act),
        ]
    )


def convnet(lib, n_out):
    L = lib.layers
    return lib.Sequential(
        [
            # no bias before batch norm: its gradient is zero up to rounding, which Adam would
            # blow up into steps that differ between any two implementations
            L.Input((8, 8, 2)),
            L.Conv2D(4, 3, padding="same", use_bias=False),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.MaxPooling2D(2),
            L.Conv2D(6, (2, 3), strides=(1, 1)),
            L.AveragePooling2D(2, strides=1),
            L.GlobalAveragePooling2D(),
            L.Dense(n_out, activation="softmax"),
        ]
    )


def ours_and_theirs(keras, build, *args):
    from metalearn import keras as mk

    ours = build(mk, *args)
    theirs = build(keras, *args)
    rng = np.random.default_rng(7)
    # random (not initial) values everywhere, moving statistics included, so that every
    # weight matters in the comparison
    ours.set_weights(
        [
            rng.normal(0.0, 0.5, w.shape).astype("float32")
            if "variance" not in w.name
            else rng.uniform(0.5, 2.0, w.shape).astype("float32")
            for w in ours.weights
        ]
    )
    copy_weights(ours, theirs)
    return ours, theirs


# ------------------------------------------------------------------- forward pass
@pytest.mark.parametrize("arch", ["mlp", "convnet"])
@pytest.mark.parametrize("training", [False, True])
def test_forward(keras_torch, arch, training):
    keras = keras_torch
    rng = np.random.default_rng(1)
    if arch == "mlp":
        ours, theirs = ours_and_theirs(keras, mlp, 5, 3, "softmax")
        x = rng.normal(size=(11, 5)).astype("float32")
    else:
        ours, theirs = ours_and_theirs(keras, convnet, 3)
        x = rng.normal(size=(6, 8, 8, 2)).astype("float32")
    close(
        ours(x, training=training),
        np_of(keras, theirs(x, training=training)),
        what=f"{arch} forward training={training}",
    )
    # training mode moves BatchNormalization's statistics the same way
    for a, b in zip(ours.layers, theirs.layers):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            close(wa, wb, what=f"{a.name} after the forward pass")


@pytest.mark.parametrize(
    "make",
    [
        lambda L: L.Dense(7, activation="sigmoid"),
        lambda L: L.Dropout(0.5),
        lambda L: L.Flatten(),
        lambda L: L.Reshape((-1, 2)),
        lambda L: L.Conv2D(3, 3, strides=2, padding="same", activation="relu"),
        lambda L: L.Conv2D(3, (3, 2), padding="valid"),
        lambda L: L.MaxPooling2D((2, 3), strides=(2, 2), padding="same"),
        lambda L: L.MaxPooling2D(3, strides=1),
        lambda L: L.AveragePooling2D((2, 3), strides=(2, 2), padding="valid"),
        lambda L: L.GlobalAveragePooling2D(keepdims=True),
        lambda L: L.BatchNormalization(momentum=0.8, epsilon=1e-2),
        lambda L: L.LayerNormalization(),
        # trailing axes only: Keras 3.15's torch path hands non-trailing axes to
        # F.layer_norm, which refuses them (test_ln_formula checks those against the formula)
        lambda L: L.LayerNormalization(axis=(2, 3), epsilon=1e-5),
        lambda L: L.LayerNormalization(axis=-1, center=False),
        lambda L: L.LayerNormalization(rms_scaling=True),
    ],
    ids=[
        "Dense",
        "Dropout_inference",
        "Flatten",
        "Reshape",
        "Conv2D_same_s2",
        "Conv2D_valid",
        "MaxPool_same",
        "MaxPool_valid",
        "AvgPool_valid",
        "GlobalAvgPool",
        "BatchNorm",
        "LayerNorm",
        "LayerNorm_axes23",
        "LayerNorm_nocenter",
        "LayerNorm_rms",
    ],
)
def test_layer(keras_torch, make):
    keras = keras_torch
    import metalearn.keras as mk

    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 7, 6, 4)).astype("float32")
    ours, theirs = make(mk.layers), make(keras.layers)
    ours(x)
    theirs(x)
    if ours.weights:
        ours.set_weights(
            [
                rng.normal(size=w.shape).astype("float32")
                if "variance" not in w.name
                else rng.uniform(0.5, 2, w.shape).astype("float32")
                for w in ours.weights
            ]
        )
        theirs.set_weights(ours.get_weights())
    close(ours(x, training=False), np_of(keras, theirs(x, training=False)), what="inference")
    if isinstance(ours, mk.layers.BatchNormalization):
        close(ours(x, training=True), np_of(keras, theirs(x, training=True)), what="training")
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            close(a, b, what="moving statistics")


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize(
    "name",
    [
        "relu",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
        "linear",
        "elu",
        "gelu",
        "leaky_relu",
        "softplus",
        "softsign",
        "swish",
        "silu",
        "exponential",
    ],
)
def test_activation(keras_torch, name):
    keras = keras_torch
    x = np.random.default_rng(3).normal(scale=3.0, size=(5, 7)).astype("float32")
    close(activations.get(name)(x), np_of(keras, keras.activations.get(name)(x)), what=name)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("relu", dict(negative_slope=0.3)),
        ("relu", dict(max_value=2.0)),
        ("relu", dict(threshold=0.5)),
        ("relu", dict(negative_slope=0.1, max_value=3.0, threshold=1.0)),
        # a negative threshold with max_value: Keras clips to [0, max_value] after the
        # threshold, so inputs in (threshold, 0) give 0
        ("relu", dict(negative_slope=0.1, max_value=3.0, threshold=-1.0)),
        ("gelu", dict(approximate=True)),
        ("elu", dict(alpha=0.4)),
        ("softmax", dict(axis=0)),
        ("leaky_relu", dict(negative_slope=0.05)),
    ],
)
def test_activation_arguments(keras_torch, name, kwargs):
    keras = keras_torch
    x = np.random.default_rng(4).normal(scale=4.0, size=(6, 5)).astype("float32")
    close(
        getattr(activations, name)(x, **kwargs),
        np_of(keras, getattr(keras.activations, name)(x, **kwargs)),
        what=f"{name}{kwargs}",
    )


# --------------------------------------------------------------------- losses
def loss_cases(rng):
    n, c = 9, 4
    probs = rng.dirichlet(np.ones(c), n).astype("float32")
    logits = rng.normal(scale=3.0, size=(n, c)).astype("float32")
    onehot = np.eye(c, dtype="float32")[rng.integers(0, c, n)]
    soft = rng.dirichlet(np.ones(c), n).astype("float32")
    labels = rng.integers(0, c, n)
    binary = (rng.random((n, c)) > 0.5).astype("float32")
    p01 = rng.uniform(0.0, 1.0, (n, c)).astype("float32")
    p01[0, :2] = [0.0, 1.0]  # exact 0 and 1: Keras 3's clipping decides these
    reg_true = rng.normal(size=(n, c)).astype("float32")
    reg_pred = rng.normal(size=(n, c)).astype("float32")
    return [
        ("MeanSquaredError", {}, reg_true, reg_pred),
        ("MeanAbsoluteError", {}, reg_true, reg_pred),
        ("CategoricalCrossentropy", {}, onehot, probs),
        ("CategoricalCrossentropy", {}, soft, probs),
        ("CategoricalCrossentropy", {"from_logits": True}, soft, logits),
        ("CategoricalCrossentropy", {"label_smoothing": 0.2}, onehot, probs),
        ("CategoricalCrossentropy", {"from_logits": True, "label_smoothing": 0.1}, onehot, logits),
        ("SparseCategoricalCrossentropy", {}, labels, probs),
        ("SparseCategoricalCrossentropy", {"from_logits": True}, labels, logits),
        ("SparseCategoricalCrossentropy", {}, labels[:, None], probs),
        ("BinaryCrossentropy", {}, binary, p01),
        ("BinaryCrossentropy", {"from_logits": True}, binary, logits),
        ("BinaryCrossentropy", {"label_smoothing": 0.1}, binary, p01),
        ("BinaryCrossentropy", {"from_logits": True, "label_smoothing": 0.2}, binary, logits),
    ]


@pytest.mark.parametrize("case", range(14))
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", None])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss(keras_torch, case, reduction, weighted):
    keras = keras_torch
    rng = np.random.default_rng(5)
    name, kwargs, y_true, y_pred = loss_cases(rng)[case]
    sw = rng.uniform(0, 2, len(y_pred)).astype("float32") if weighted else None
    ours = getattr(losses, name)(reduction=reduction, **kwargs)(y_true, y_pred, sample_weight=sw)
    theirs = getattr(keras.losses, name)(reduction=reduction, **kwargs)(
        y_true, y_pred, sample_weight=sw
    )
    close(ours, np_of(keras, theirs), what=f"{name}{kwargs}")


@pytest.mark.parametrize(
    "name",
    [
        "mean_squared_error",
        "mean_absolute_error",
        "binary_crossentropy",
        "categorical_crossentropy",
        "MeanSquaredError",
        "MeanAbsoluteError",
        "BinaryCrossentropy",
        "CategoricalCrossentropy",
    ],
)
@pytest.mark.parametrize(
    "shapes", [((9,), (9, 1)), ((9, 1), (9,)), ((9, 3), (9, 3, 1)), ((9, 1), (9, 3))]
)
def test_loss_rank_matching(keras_torch, name, shapes):
    # Keras' Loss classes (and its MSE/MAE functions) match ranks first
    # (squeeze_or_expand_to_same_rank); its cross-entropy functions refuse another shape.
    # Where Keras raises ValueError, so must we; elsewhere the values agree.
    keras = keras_torch
    rng = np.random.default_rng(6)
    y_true = (rng.random(shapes[0]) > 0.5).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, shapes[1]).astype("float32")
    ours = getattr(losses, name)
    theirs = getattr(keras.losses, name)
    if name[0].isupper():
        ours, theirs = ours(), theirs()
    try:
        expected = np_of(keras, theirs(y_true, y_pred))
    except ValueError:
        with pytest.raises(ValueError):
            ours(y_true, y_pred)
        return
    close(ours(y_true, y_pred), expected, what=f"{name} {shapes}")


# -------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    "name",
    [
        "Accuracy",
        "BinaryAccuracy",
        "CategoricalAccuracy",
        "SparseCategoricalAccuracy",
        "MeanSquaredError",
        "MeanAbsoluteError",
    ],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_metric(keras_torch, name, weighted):
    keras = keras_torch
    rng = np.random.default_rng(8)
    n, c = 12, 4
    probs = rng.dirichlet(np.ones(c), n).astype("float32")
    data = {
        "Accuracy": (rng.integers(0, 3, (n, 2)), rng.integers(0, 3, (n, 2))),
        "BinaryAccuracy": (
            (rng.random((n, 3)) > 0.5).astype("float32"),
            rng.random((n, 3)).astype("float32"),
        ),
        "CategoricalAccuracy": (np.eye(c, dtype="float32")[rng.integers(0, c, n)], probs),
        "SparseCategoricalAccuracy": (rng.integers(0, c, n), probs),
        "MeanSquaredError": (rng.normal(size=(n, c)), rng.normal(size=(n, c))),
        "MeanAbsoluteError": (rng.normal(size=(n, c)), rng.normal(size=(n, c))),
    }[name]
    ours, theirs = getattr(metrics, name)(), getattr(keras.metrics, name)()
    for half in (slice(0, n // 2), slice(n // 2, n)):  # two batches accumulate
        sw = rng.uniform(0, 2, n // 2).astype("float32") if weighted else None
        ours.update_state(data[0][half], data[1][half], sample_weight=sw)
        theirs.update_state(data[0][half], data[1][half], sample_weight=sw)
    close(float(ours.result()), float(np_of(keras, theirs.result())), what=name)


# ----------------------------------------------------------------- optimizers
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("SGD", {"learning_rate": 0.1}),
        ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
        ("SGD", {"learning_rate": 0.05, "momentum": 0.8, "nesterov": True}),
        ("Adam", {"learning_rate": 0.01}),
        (
            "Adam",
            {
                "learning_rate": 0.02,
                "beta_1": 0.8,
                "beta_2": 0.99,
                "epsilon": 1e-5,
                "amsgrad": True,
            },
        ),
        ("SGD", {"learning_rate": 0.1, "clipnorm": 0.5}),
        ("SGD", {"learning_rate": 0.1, "clipvalue": 0.2}),
        ("Adam", {"learning_rate": 0.01, "global_clipnorm": 1.0, "epsilon": 0.1}),
        ("RMSprop", {"learning_rate": 0.01}),
        ("RMSprop", {"learning_rate": 0.02, "rho": 0.8, "momentum": 0.7, "centered": True}),
        ("RMSprop", {"learning_rate": 0.01, "weight_decay": 0.1, "clipnorm": 0.5}),
        ("AdamW", {"learning_rate": 0.01}),
        ("AdamW", {"learning_rate": 0.05, "weight_decay": 0.2, "amsgrad": True}),
        ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
        ("Adam", {"learning_rate": 0.01, "weight_decay": 0.05}),
    ],
)
def test_optimizer_steps(keras_torch, name, kwargs):
    keras = keras_torch
    import metalearn as ml

    rng = np.random.default_rng(9)
    shapes = [(3, 4), (4,)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    ours_vars = [ml.Variable(w.copy()) for w in start]
    theirs_vars = [keras.Variable(w.copy()) for w in start]
    ours, theirs = getattr(optimizers, name)(**kwargs), getattr(keras.optimizers, name)(**kwargs)
    for _ in range(4):
        grads = [rng.normal(scale=2.0, size=s).astype("float32") for s in shapes]
        ours.apply_gradients(zip([ml.tensor(g) for g in grads], ours_vars))
        theirs.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], theirs_vars))
        for a, b in zip(ours_vars, theirs_vars):
            close(a.numpy(), np_of(keras, b), rtol=1e-5, atol=1e-6, what=f"{name}{kwargs}")
    assert int(ours.iterations) == int(np_of(keras, theirs.iterations))


# ------------------------------------------------------------------------ fit
def fit_both(
    keras,
    build,
    args,
    x,
    y,
    opt,
    loss,
    metric_names,
    epochs=3,
    batch_size=8,
    validation=None,
    sample_weight=None,
):
    import metalearn.keras as mk

    ours, theirs = ours_and_theirs(keras, build, *args)
    ours.compile(
        optimizer=getattr(mk.optimizers, opt[0])(**opt[1]), loss=loss, metrics=list(metric_names)
    )
    theirs.compile(
        optimizer=getattr(keras.optimizers, opt[0])(**opt[1]), loss=loss, metrics=list(metric_names)
    )
    kwargs = dict(
        batch_size=batch_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        validation_data=validation,
        sample_weight=sample_weight,
    )
    h_ours = ours.fit(x, y, **kwargs).history
    h_theirs = theirs.fit(x, y, **kwargs).history
    return ours, theirs, h_ours, h_theirs


def compare_fit(keras, ours, theirs, h_ours, h_theirs, rtol=1e-4):
    assert sorted(h_ours) == sorted(h_theirs)
    # the training itself first (weights, loss), then what is reported about it
    for a, b in zip(ours.layers, theirs.layers):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            close(wa, wb, rtol=rtol, atol=1e-5, what=f"weights of {a.name}")
    for key in sorted(h_theirs, key=lambda k: (k not in ("loss", "val_loss"), k)):
        close(h_ours[key], h_theirs[key], rtol=rtol, atol=1e-5, what=f"history[{key!r}]")


@pytest.mark.parametrize(
    "opt",
    [("SGD", {"learning_rate": 0.05, "momentum": 0.9}), ("Adam", {"learning_rate": 0.01})],
    ids=["SGD", "Adam"],
)
def test_fit_classifier(keras_torch, opt):
    keras = keras_torch
    rng = np.random.default_rng(10)
    x = rng.normal(size=(50, 5)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 50)]
    val = (
        rng.normal(size=(13, 5)).astype("float32"),
        np.eye(3, dtype="float32")[rng.integers(0, 3, 13)],
    )
    compare_fit(
        keras,
        *fit_both(
            keras,
            mlp,
            (5, 3, "softmax"),
            x,
            y,
            opt,
            "categorical_crossentropy",
            ["categorical_accuracy", "mse"],
            validation=val,
        ),
    )


def test_fit_sparse_labels(keras_torch):
    keras = keras_torch
    rng = np.random.default_rng(11)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = rng.integers(0, 3, 40)
    compare_fit(
        keras,
        *fit_both(
            keras,
            mlp,
            (5, 3, "softmax"),
            x,
            y,
            ("Adam", {"learning_rate": 0.01}),
            "sparse_categorical_crossentropy",
            ["sparse_categorical_accuracy"],
        ),
    )


def test_fit_regression_sample_weight(keras_torch):
    keras = keras_torch
    rng = np.random.default_rng(12)
    x = rng.normal(size=(48, 5)).astype("float32")
    y = rng.normal(size=(48, 2)).astype("float32")
    sw = rng.uniform(0.2, 2.0, 48).astype("float32")
    compare_fit(
        keras,
        *fit_both(
            keras,
            mlp,
            (5, 2, None),
            x,
            y,
            ("SGD", {"learning_rate": 0.02}),
            "mse",
            ["mae"],
            sample_weight=sw,
        ),
    )


def test_fit_rank_one_targets(keras_torch):
    # y of shape (N,) against a one-unit output (the Dense(1) + fit(x, y) case)
    keras = keras_torch
    rng = np.random.default_rng(13)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = (x[:, 0] - 2 * x[:, 1]).astype("float32")
    compare_fit(
        keras,
        *fit_both(
            keras, mlp, (5, 1, None), x, y, ("Adam", {"learning_rate": 0.01}), "mse", ["mae"]
        ),
    )


def test_fit_convnet_with_batch_norm(keras_torch):
    keras = keras_torch
    rng = np.random.default_rng(14)
    x = rng.normal(size=(24, 8, 8, 2)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 24)]
    compare_fit(
        keras,
        *fit_both(
            keras,
            convnet,
            (3,),
            x,
            y,
            ("Adam", {"learning_rate": 0.005}),
            "categorical_crossentropy",
            ["categorical_accuracy"],
        ),
        rtol=2e-4,
    )


def test_evaluate_predict_train_on_batch(keras_torch):
    keras = keras_torch
    import metalearn.keras as mk

    rng = np.random.default_rng(15)
    ours, theirs = ours_and_theirs(keras, mlp, 5, 3, "softmax")
    for model, lib in ((ours, mk), (theirs, keras)):
        model.compile(
            optimizer=lib.optimizers.SGD(0.1),
            loss="categorical_crossentropy",
            metrics=["categorical_accuracy"],
        )
    x = rng.normal(size=(30, 5)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 30)]
    close(ours.predict(x, batch_size=7, verbose=0), theirs.predict(x, batch_size=7, verbose=0))
    close(
        ours.evaluate(x, y, batch_size=7, verbose=0), theirs.evaluate(x, y, batch_size=7, verbose=0)
    )
    for _ in range(3):
        close(ours.train_on_batch(x[:10], y[:10]), theirs.train_on_batch(x[:10], y[:10]), rtol=1e-4)
    close(ours.test_on_batch(x, y), theirs.test_on_batch(x, y), rtol=1e-4)
    close(ours.predict_on_batch(x), np_of(keras, theirs.predict_on_batch(x)), rtol=1e-4)


# ------------------------------------------------------------------ regularizers
def regularized(lib, reg):
    L, R = lib.layers, lib.regularizers
    return lib.Sequential(
        [
            L.Input((6, 6, 2)),
            L.Conv2D(
                3,
                3,
                kernel_regularizer=R.L1L2(l1=0.01, l2=0.02),
                bias_regularizer="l1",
                activity_regularizer=R.L2(0.003),
            ),
            L.Flatten(),
            L.Dense(
                4,
                activation="tanh",
                kernel_regularizer=reg,
                bias_regularizer=R.L2(0.05),
                activity_regularizer="l1",
            ),
            L.Dense(2),
        ]
    )


@pytest.mark.parametrize("reg", ["l1", "l2", "l1l2"])
@pytest.mark.parametrize("opt", ["SGD", "RMSprop", "AdamW"])
def test_fit_regularized(keras_torch, reg, opt):
    # Keras 3 adds sum(model.losses) to the training and evaluation losses; activity
    # penalties are divided by the batch size
    keras = keras_torch
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(20, 2)).astype("float32")
    ours, theirs, h_ours, h_theirs = fit_both(
        keras, regularized, (reg,), x, y, (opt, {"learning_rate": 0.01}), "mse", []
    )
    compare_fit(keras, ours, theirs, h_ours, h_theirs)
    ours(x[:5])
    theirs(x[:5])
    assert len(ours.losses) == len(theirs.losses) == 6
    close(
        sorted(float(l.item()) for l in ours.losses),
        sorted(float(np_of(keras, l)) for l in theirs.losses),
        what="model.losses",
    )
    close(ours.evaluate(x, y, verbose=0), theirs.evaluate(x, y, verbose=0), what="evaluate")


# ------------------------------------------------------------------- generators
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_generator(keras_torch, weighted):
    keras = keras_torch
    rng = np.random.default_rng(4)
    items = []
    for _ in range(7):
        x = rng.normal(size=(6, 5)).astype("float32")
        y = np.eye(3, dtype="float32")[rng.integers(0, 3, 6)]
        items.append((x, y, rng.uniform(0.5, 2, 6).astype("float32")) if weighted else (x, y))
    ours, theirs = ours_and_theirs(keras, mlp, 5, 3, "softmax")
    import metalearn.keras as mk

    ours.compile(optimizer=mk.optimizers.RMSprop(0.01), loss="categorical_crossentropy")
    theirs.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="categorical_crossentropy")
    h_ours = ours.fit((i for i in items), steps_per_epoch=3, epochs=2, verbose=0).history
    h_theirs = theirs.fit((i for i in items), steps_per_epoch=3, epochs=2, verbose=0).history
    compare_fit(keras, ours, theirs, h_ours, h_theirs)
    assert int(ours.optimizer.iterations) == int(np_of(keras, theirs.optimizer.iterations)) == 6


# ------------------------------------------------- LayerNormalization, Embedding
def text_model(lib):
    L = lib.layers
    return lib.Sequential(
        [
            L.Input((5,)),
            L.Embedding(12, 4),
            L.LayerNormalization(),
            L.Flatten(),
            L.Dense(6, activation="relu"),
            L.LayerNormalization(epsilon=1e-4),
            L.Dense(3, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("opt", ["SGD", "Adam", "AdamW"])
def test_fit_embedding_layernorm(keras_torch, opt):
    keras = keras_torch
    rng = np.random.default_rng(8)
    x = rng.integers(0, 12, size=(40, 5))
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 40)]
    ours, theirs, h_ours, h_theirs = fit_both(
        keras,
        text_model,
        (),
        x,
        y,
        (opt, {"learning_rate": 0.02}),
        "categorical_crossentropy",
        ["accuracy"],
    )
    compare_fit(keras, ours, theirs, h_ours, h_theirs)
    close(ours.predict(x, verbose=0), np_of(keras, theirs.predict(x, verbose=0)), what="predict")


# .keras files both ways: test_live_saving.py


# ------------------------------------------------------------- functional API
def functional_graph(lib):
    L = lib.layers
    inp = lib.Input((5,))
    h = L.Dense(8, activation="relu")(inp)
    shared = L.Dense(8)
    a = shared(h)
    b = shared(L.Dense(8, activation="tanh")(a))
    merged = L.Concatenate()([L.Add()([a, b]), L.Multiply()([a, h])])
    out = L.Dense(3, activation="softmax")(L.LayerNormalization()(merged))
    return lib.Model(inp, out)


@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_fit_functional(keras_torch, opt):
    keras = keras_torch
    rng = np.random.default_rng(12)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 40)]
    ours, theirs, h_ours, h_theirs = fit_both(
        keras,
        functional_graph,
        (),
        x,
        y,
        (opt, {"learning_rate": 0.02}),
        "categorical_crossentropy",
        ["accuracy"],
    )
    assert [type(l).__name__ for l in ours.layers] == [type(l).__name__ for l in theirs.layers]
    compare_fit(keras, ours, theirs, h_ours, h_theirs)


@pytest.mark.parametrize("arch", ["convnet", "functional"])
def test_weights_h5_interchange(keras_torch, tmp_path, arch):
    # '.weights.h5' in Keras 3's layout: Keras reads ours and we read Keras', with the
    # same predictions
    keras = keras_torch
    build, args, shape = {
        "convnet": (convnet, (3,), (4, 8, 8, 2)),
        "functional": (functional_graph, (), (4, 5)),
    }[arch]
    ours, theirs = ours_and_theirs(keras, build, *args)
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    ours.save_weights(tmp_path / "ours.weights.h5")
    fresh_theirs = build(keras, *args)
    fresh_theirs.load_weights(tmp_path / "ours.weights.h5")
    close(
        np_of(keras, fresh_theirs.predict(x, verbose=0)),
        ours.predict(x, verbose=0),
        what="Keras reads ours",
    )
    theirs.save_weights(tmp_path / "theirs.weights.h5")
    import metalearn.keras as mk

    fresh_ours = build(mk, *args)
    fresh_ours.load_weights(tmp_path / "theirs.weights.h5")
    close(
        fresh_ours.predict(x, verbose=0),
        np_of(keras, theirs.predict(x, verbose=0)),
        what="we read Keras'",
    )


# ------------------------------------------------- several inputs and outputs
def two_output_graph(lib, kind):
    """Two inputs, a Dense shared by both branches, two outputs (a list or a dict)."""
    L = lib.layers
    a, b = lib.Input((3,), name="a"), lib.Input((2,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    h = L.Concatenate(name="cat")([shared(a), shared(L.Dense(3, name="proj")(b))])
    reg = L.Dense(1, name="reg")(h)
    cls = L.Dense(3, activation="softmax", name="cls")(h)
    if kind == "dict":
        return lib.Model({"a": a, "b": b}, {"reg": reg, "cls": cls})
    return lib.Model([a, b], [reg, cls])


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize(
    "opt", [("SGD", {"learning_rate": 0.05}), ("Adam", {"learning_rate": 0.01})]
)
def test_fit_two_outputs(keras_torch, kind, opt):
    # per-output losses, loss weights and metrics: the history's keys (Keras 3 names
    # them <output>_loss, <output>_<metric>), its values, the weights after training,
    # evaluate and predict, on the same weights
    from metalearn import keras as mk

    keras = keras_torch
    ours, theirs = two_output_graph(mk, kind), two_output_graph(keras, kind)
    rng = np.random.default_rng(3)
    ours.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in ours.weights])
    copy_weights(ours, theirs)
    xa = rng.normal(size=(20, 3)).astype("float32")
    xb = rng.normal(size=(20, 2)).astype("float32")
    y1 = rng.normal(size=(20, 1)).astype("float32")
    y2 = rng.integers(0, 3, 20)
    if kind == "list":
        x, y = [xa, xb], [y1, y2]
        spec = dict(
            loss=["mse", "sparse_categorical_crossentropy"],
            loss_weights=[0.5, 2.0],
            metrics=[["mae"], ["accuracy"]],
        )
    else:
        x, y = {"a": xa, "b": xb}, {"reg": y1, "cls": y2}
        spec = dict(
            loss={"reg": "mse", "cls": "sparse_categorical_crossentropy"},
            loss_weights={"reg": 0.5, "cls": 2.0},
            metrics={"reg": ["mae"], "cls": ["accuracy"]},
        )
    name, kw = opt
    ours.compile(getattr(optimizers, name)(**kw), **spec)
    theirs.compile(getattr(keras.optimizers, name)(**kw), **spec)
    for m in (ours, theirs):
        m.history_ = m.fit(x, y, batch_size=6, epochs=3, shuffle=False, verbose=0).history
    compare_fit(keras, ours, theirs, ours.history_, theirs.history_)
    e_ours = ours.evaluate(x, y, verbose=0, return_dict=True)
    e_theirs = theirs.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(e_ours) == sorted(e_theirs)
    for k in e_theirs:
        close(e_ours[k], e_theirs[k], rtol=1e-4, atol=1e-5, what=f"evaluate[{k!r}]")
    p_ours, p_theirs = ours.predict(x, verbose=0), theirs.predict(x, verbose=0)
    keys = ["reg", "cls"] if kind == "dict" else [0, 1]
    for k in keys:
        close(p_ours[k], np_of(keras, p_theirs[k]), rtol=1e-4, atol=1e-5, what=f"predict {k}")
    # the configs name the same inputs and outputs in the same layout
    c_theirs = theirs.get_config()
    c_ours = ours.get_config()
    norm = lambda v: json_norm(v)  # noqa: E731
    assert norm(c_ours["input_layers"]) == norm(c_theirs["input_layers"])
    assert norm(c_ours["output_layers"]) == norm(c_theirs["output_layers"])
    assert [l["name"] for l in c_ours["layers"]] == [l["name"] for l in c_theirs["layers"]]
    for lo, lt in zip(c_ours["layers"], c_theirs["layers"]):
        assert norm(lo["inbound_nodes"]) == norm(lt["inbound_nodes"]), lo["name"]


def json_norm(v):
    import json

    return json.loads(json.dumps(v))


def test_fit_two_outputs_one_loss_weighted(keras_torch):
    # one loss for every output (Keras 3 applies it to each), sample weights and
    # validation_data as lists: the history (val_ keys included) and the weights
    from metalearn import keras as mk

    keras = keras_torch

    def build(lib):
        L = lib.layers
        a, b = lib.Input((3,), name="a"), lib.Input((2,), name="b")
        h = L.Concatenate(name="cat")([L.Dense(4, name="da")(a), L.Dense(3, name="proj")(b)])
        return lib.Model([a, b], [L.Dense(1, name="reg")(h), L.Dense(2, name="reg2")(h)])

    ours, theirs = build(mk), build(keras)
    rng = np.random.default_rng(4)
    ours.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in ours.weights])
    copy_weights(ours, theirs)
    x = [rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")]
    y = [rng.normal(size=(16, 1)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")]
    sw = rng.uniform(0.1, 2.0, 16).astype("float32")
    val = ([v[:6] for v in x], [v[:6] for v in y])
    for m, lib in ((ours, mk), (theirs, keras)):
        m.compile(lib.optimizers.SGD(learning_rate=0.05), loss="mse", metrics=[["mae"], ["mae"]])
        m.history_ = m.fit(
            x, y, batch_size=5, epochs=2, shuffle=False, verbose=0, sample_weight=sw,
            validation_data=val,
        ).history  # fmt: skip
    assert "val_reg2_mae" in theirs.history_
    compare_fit(keras, ours, theirs, ours.history_, theirs.history_)
