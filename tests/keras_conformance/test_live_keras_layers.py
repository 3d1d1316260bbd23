"""The layers of issue 22 (Conv1D, DepthwiseConv2D, SeparableConv2D, UpSampling2D,
ZeroPadding2D, Cropping2D, Permute, RepeatVector) and the weight constraints against live
Keras 3 (PyTorch backend): the same weights give the same outputs, the same input
gradients, and a constrained fit gives the same weights.

Marked ``keras``; skipped with the reason when keras or torch is missing (the default run
needs neither), an error under METALEARN_REQUIRE_KERAS=1 (CI).
"""

import numpy as np
import pytest

from metalearn import keras as mk

from ._helpers import require_keras

pytestmark = pytest.mark.keras
KERAS = require_keras()

RTOL, ATOL = 1e-5, 1e-5


def close(actual, expected, rtol=RTOL, atol=ATOL, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


# (class name, kwargs, per-sample input shape)
CASES = [
    ("Conv1D", dict(filters=4, kernel_size=3), (9, 3)),
    ("Conv1D", dict(filters=4, kernel_size=3, padding="same", strides=2), (9, 3)),
    ("Conv1D", dict(filters=2, kernel_size=3, padding="causal", dilation_rate=2), (9, 3)),
    ("Conv1D", dict(filters=2, kernel_size=2, padding="same", dilation_rate=3), (8, 2)),
    ("Conv1D", dict(filters=3, kernel_size=4, strides=3, activation="relu"), (10, 2)),
    ("Conv1D", dict(filters=2, kernel_size=3, strides=2, padding="causal"), (9, 3)),
    ("Conv1D", dict(filters=2, kernel_size=4, strides=3, padding="causal"), (9, 3)),
    ("Conv2D", dict(filters=3, kernel_size=2, padding="same", dilation_rate=2), (5, 6, 2)),
    ("Conv2D", dict(filters=2, kernel_size=(2, 3), dilation_rate=(2, 1)), (6, 6, 2)),
    ("DepthwiseConv2D", dict(kernel_size=3), (6, 7, 3)),
    ("DepthwiseConv2D", dict(kernel_size=(3, 2), padding="same", depth_multiplier=2), (6, 7, 3)),
    ("DepthwiseConv2D", dict(kernel_size=3, strides=2, padding="same", use_bias=False), (7, 8, 2)),
    ("DepthwiseConv2D", dict(kernel_size=2, dilation_rate=(2, 3), activation="tanh"), (7, 8, 2)),
    ("SeparableConv2D", dict(filters=5, kernel_size=3), (6, 7, 3)),
    (
        "SeparableConv2D",
        dict(filters=4, kernel_size=3, strides=2, padding="same", depth_multiplier=2),
        (7, 8, 3),
    ),
    (
        "SeparableConv2D",
        dict(filters=4, kernel_size=2, dilation_rate=2, activation="relu"),
        (6, 6, 2),
    ),
    ("UpSampling2D", dict(size=(2, 3)), (3, 4, 2)),
    ("UpSampling2D", dict(size=2, interpolation="bilinear"), (3, 4, 2)),
    ("UpSampling2D", dict(size=(3, 2), interpolation="bilinear"), (2, 5, 1)),
    ("ZeroPadding2D", dict(padding=((1, 2), (0, 3))), (3, 4, 2)),
    ("ZeroPadding2D", dict(), (3, 4, 2)),
    ("Cropping2D", dict(cropping=((1, 0), (2, 1))), (4, 5, 2)),
    ("Permute", dict(dims=(3, 1, 2)), (3, 4, 2)),
    ("RepeatVector", dict(n=4), (5,)),
]


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=lambda v: str(v))
def test_layer_matches_keras(name, kwargs, shape):
    import torch

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3,) + shape).astype(np.float32)
    ours = getattr(mk.layers, name)(**kwargs)
    theirs = getattr(KERAS.layers, name)(**kwargs)
    y = ours(x)
    theirs.build((3,) + shape)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in ours.get_weights()]
    assert [w.shape for w in weights] == [tuple(w.shape) for w in theirs.get_weights()]
    if weights:
        ours.set_weights(weights)
        theirs.set_weights(weights)
    y = ours(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    close(y, yt.detach().numpy(), what=f"{name} forward")
    assert ours.compute_output_shape((None,) + shape) == tuple(
        theirs.compute_output_shape((None,) + shape)
    )
    # input gradient of a weighted sum of the outputs
    g = rng.normal(size=tuple(y.shape)).astype(np.float32)
    (yt * torch.tensor(g)).sum().backward()
    import metalearn as ml

    xv = ml.tensor(x, requires_grad=True)
    (gx,) = ml.grad(ml.reduce_sum(ml.mul(ours(xv), ml.tensor(g))), [xv])
    close(gx, xt.grad.numpy(), what=f"{name} input gradient")
    # the same config keys as Keras (Keras may carry more: dtype, lora)
    ours_cfg, theirs_cfg = ours.get_config(), theirs.get_config()
    missing = set(ours_cfg) - set(theirs_cfg) - {"batch_input_shape"}
    assert not missing, f"{name}: config keys Keras does not have: {missing}"
    for key, value in ours_cfg.items():
        if key in ("name", "trainable", "activation") or not key.endswith(
            (
                "size",
                "strides",
                "padding",
                "rate",
                "multiplier",
                "dims",
                "n",
                "cropping",
                "filters",
                "interpolation",
            )
        ):
            continue
        assert _plain(value) == _plain(theirs_cfg[key]), (name, key)


def _plain(v):
    if isinstance(v, (list, tuple)):
        return tuple(_plain(i) for i in v)
    return v


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c.MaxNorm(1.5),
        lambda c: c.NonNeg(),
        lambda c: c.UnitNorm(axis=1),
        lambda c: c.MinMaxNorm(0.2, 0.8, rate=0.5),
        lambda c: c.MaxNorm(0.5, axis=[0, 1]),
    ],
)
def test_constraint_matches_keras(make):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3, 2)).astype(np.float32)
    ours = make(mk.constraints)(w)
    theirs = make(KERAS.constraints)(KERAS.ops.convert_to_tensor(w))
    close(ours, KERAS.ops.convert_to_numpy(theirs), what="constraint")


@pytest.mark.parametrize("eager", [True, False])
def test_constrained_fit_matches_keras(eager):
    """Two epochs of SGD on a Dense net with kernel constraints: the weights after fit agree
    (Keras projects each variable after each optimizer step)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = rng.normal(size=(32, 2)).astype(np.float32)

    def build(lib):
        L = lib.layers
        return lib.Sequential(
            [
                L.Input((5,)),
                L.Dense(
                    6,
                    activation="tanh",
                    kernel_constraint=lib.constraints.MaxNorm(0.7),
                    bias_constraint="non_neg",
                ),
                L.Dense(2, kernel_constraint=lib.constraints.UnitNorm()),
            ]
        )

    ours, theirs = build(mk), build(KERAS)
    theirs.set_weights(ours.get_weights())
    ours.compile(optimizer=mk.optimizers.SGD(0.1), loss="mse", run_eagerly=eager)
    theirs.compile(optimizer=KERAS.optimizers.SGD(0.1), loss="mse")
    ours.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    theirs.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert (ours._train_fn is None) == eager  # the traced step ran when not eager
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        close(a, b, rtol=1e-4, atol=1e-5, what="weights after fit")
    norms = np.linalg.norm(ours.get_weights()[0], axis=0)
    assert norms.max() <= 0.7 + 1e-5
    assert ours.get_weights()[1].min() >= 0.0


def test_activity_regularizer_matches_keras():
    """Conv1D with an activity regularizer: the training loss includes the penalty of the
    output divided by the batch size, as Keras 3's."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 7, 2)).astype(np.float32)
    y = rng.normal(size=(6, 5, 3)).astype(np.float32)

    def build(lib):
        L = lib.layers
        return lib.Sequential(
            [L.Input((7, 2)), L.Conv1D(3, 3, activity_regularizer=lib.regularizers.L2(0.1))]
        )

    ours, theirs = build(mk), build(KERAS)
    theirs.set_weights(ours.get_weights())
    ours.compile(optimizer="sgd", loss="mse")
    theirs.compile(optimizer="sgd", loss="mse")
    a = ours.evaluate(x, y, batch_size=6, verbose=0)
    b = theirs.evaluate(x, y, batch_size=6, verbose=0)
    close(a, b, what="loss with the activity penalty")
