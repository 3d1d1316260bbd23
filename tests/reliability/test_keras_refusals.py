"""Arguments Keras checks, and calls refused before they change anything.

Every refused call below leaves the weights (moving statistics included), the optimizer's
step count and slots, and the compiled metrics as they were: the arguments are checked,
and the model and loss run once on two samples without gradients, before the first step.
Messages and exception types follow Keras 3.15 where it has a check (quoted per case).
"""

import warnings

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers, optimizers

RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 4)).astype(np.float32)
Y = RNG.integers(0, 3, 10)


def _model():
    ml.random.set_seed(0)
    model = keras.Sequential(
        [
            layers.InputLayer((4,)),
            layers.Dense(8, activation="relu"),
            layers.BatchNormalization(),
            layers.Dense(3),
        ]
    )
    model.compile(
        optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(X, Y, batch_size=5, epochs=1, verbose=0)  # Adam has state, metrics are resolved
    return model


def _state(model):
    return (
        model.get_weights(),
        int(model.optimizer.iterations),
        [np.asarray(v).copy() for v in model.optimizer.variables()],
        [m.result() for m in model.metrics],
    )


def _assert_same(a, b):
    assert a[1] == b[1], "the optimizer counted a step"
    assert a[3] == b[3], "the metrics changed"
    for u, v in zip(a[0] + a[2], b[0] + b[2]):
        np.testing.assert_array_equal(u, v)


bad_label_last = Y.copy()
bad_label_last[-1] = 3  # in the last batch: every earlier step would have run

REFUSED = [
    # (id, call, exception, message)
    (
        "validation-data-lengths",
        lambda m: m.fit(X, Y, validation_data=(X[:5], Y[:3]), verbose=0),
        ValueError,
        r"validation_data: x has 5 samples but y has 3",
    ),
    (
        "validation-data-width",
        lambda m: m.fit(X, Y, validation_data=(X[:5, :3], Y[:5]), verbose=0),
        ValueError,
        r"validation_data: x of shape \(5, 3\) does not fit the model",
    ),
    (
        "validation-data-labels",
        lambda m: m.fit(X, Y, validation_data=(X[:5], Y[:5] + 3), verbose=0),
        ValueError,
        r"validation_data: y holds label \d at position \d, outside \[0, 3\)",
    ),
    (
        "validation-data-sample-weight",
        lambda m: m.fit(X, Y, validation_data=(X, Y, np.ones(4)), verbose=0),
        ValueError,
        r"validation_data: sample_weight has shape \(4,\)",
    ),
    (
        "validation-data-not-a-tuple",
        lambda m: m.fit(X, Y, validation_data=X, verbose=0),
        ValueError,
        r"validation_data must be a tuple",
    ),
    (
        "validation-data-one-element",
        lambda m: m.fit(X, Y, validation_data=(X,), verbose=0),
        ValueError,
        r"validation_data must be a tuple .* of length 1",
    ),
    (
        "label-out-of-range-in-last-batch",
        lambda m: m.fit(X, bad_label_last, batch_size=3, verbose=0),
        ValueError,
        r"fit: y holds label 3 at position 9, outside \[0, 3\): the model has 3 outputs",
    ),
    (
        "label-not-integral",
        lambda m: m.fit(X, Y + 0.5, batch_size=3, verbose=0),
        ValueError,
        r"not a class index",
    ),
    (
        "label-nan",
        lambda m: m.fit(X, np.where(np.arange(10) == 9, np.nan, Y), verbose=0),
        ValueError,
        r"nan.*not a class index",
    ),
    (
        "sample-weight-length",
        lambda m: m.fit(X, Y, sample_weight=np.ones(9), verbose=0),
        ValueError,
        r"fit: sample_weight has shape \(9,\) but x has 10 samples",
    ),
    (
        "x-width",
        lambda m: m.fit(X[:, :3], Y, verbose=0),
        ValueError,
        r"fit: x of shape \(10, 3\) does not fit the model",
    ),
    (
        "y-width",
        lambda m: m.fit(X, np.zeros((10, 2)), verbose=0),
        ValueError,
        r"y of shape \(10, 2\)",
    ),
    (
        "validation-split-1",
        lambda m: m.fit(X, Y, validation_split=1.0, verbose=0),
        ValueError,
        r"validation_split must be in \[0, 1\), got 1.0",
    ),
    (
        "validation-split-negative",
        lambda m: m.fit(X, Y, validation_split=-0.1, verbose=0),
        ValueError,
        r"validation_split must be in \[0, 1\)",
    ),
    (
        "validation-split-nan",
        lambda m: m.fit(X, Y, validation_split=float("nan"), verbose=0),
        ValueError,
        r"validation_split must be in \[0, 1\)",
    ),
    # sizes and counts: Keras/torch "batch_size should be a positive integer value"
    (
        "fit-batch-size-float",
        lambda m: m.fit(X, Y, batch_size=2.5, verbose=0),
        ValueError,
        r"fit: batch_size must be a positive integer, got batch_size=2.5",
    ),
    (
        "fit-batch-size-integral-float",
        lambda m: m.fit(X, Y, batch_size=2.0, verbose=0),
        ValueError,
        r"batch_size must be a positive integer",
    ),
    (
        "fit-batch-size-negative",
        lambda m: m.fit(X, Y, batch_size=-4, verbose=0),
        ValueError,
        r"fit: batch_size must be positive, got -4",
    ),
    (
        "fit-batch-size-bool",
        lambda m: m.fit(X, Y, batch_size=True, verbose=0),
        ValueError,
        r"batch_size must be a positive integer",
    ),
    (
        "fit-epochs-negative",
        lambda m: m.fit(X, Y, epochs=-1, verbose=0),
        ValueError,
        r"fit: epochs must be non-negative, got -1",
    ),
    (
        "fit-epochs-float",
        lambda m: m.fit(X, Y, epochs=2.5, verbose=0),
        ValueError,
        r"fit: epochs must be a non-negative integer",
    ),
    (
        "fit-initial-epoch-negative",
        lambda m: m.fit(X, Y, initial_epoch=-1, verbose=0),
        ValueError,
        r"initial_epoch must be non-negative",
    ),
    (
        "fit-validation-freq-0",
        lambda m: m.fit(X, Y, validation_split=0.2, validation_freq=0, verbose=0),
        ValueError,
        r"validation_freq must be positive, got 0",
    ),
    (
        "fit-validation-batch-size-0",
        lambda m: m.fit(X, Y, validation_split=0.2, validation_batch_size=0, verbose=0),
        ValueError,
        r"validation_batch_size must be positive, got 0",
    ),
    ("fit-verbose", lambda m: m.fit(X, Y, verbose="loud"), ValueError, r"verbose should be"),
    (
        "evaluate-batch-size-0",
        lambda m: m.evaluate(X, Y, batch_size=0, verbose=0),
        ValueError,
        r"evaluate: batch_size must be positive, got 0",
    ),
    (
        "predict-batch-size-0",
        lambda m: m.predict(X, batch_size=0, verbose=0),
        ValueError,
        r"predict: batch_size must be positive, got 0",
    ),
    (
        "predict-batch-size-float",
        lambda m: m.predict(X, batch_size=2.5, verbose=0),
        ValueError,
        r"predict: batch_size must be a positive integer",
    ),
    # empty inputs: a loss of nothing is NaN, and a step on it would still count
    (
        "train-on-batch-empty",
        lambda m: m.train_on_batch(X[:0], Y[:0]),
        ValueError,
        r"train_on_batch: x is empty",
    ),
    (
        "test-on-batch-empty",
        lambda m: m.test_on_batch(X[:0], Y[:0]),
        ValueError,
        r"test_on_batch: x is empty",
    ),
    (
        "predict-on-batch-empty",
        lambda m: m.predict_on_batch(X[:0]),
        ValueError,
        r"predict_on_batch: x is empty",
    ),
    (
        "evaluate-empty",
        lambda m: m.evaluate(X[:0], Y[:0], verbose=0),
        ValueError,
        r"evaluate: x is empty",
    ),
    ("predict-empty", lambda m: m.predict(X[:0], verbose=0), ValueError, r"predict: x is empty"),
    ("fit-empty", lambda m: m.fit(X[:0], Y[:0], verbose=0), ValueError, r"fit: x is empty"),
    # train_on_batch / test_on_batch: checked before the forward pass moves BN's statistics
    (
        "train-on-batch-label",
        lambda m: m.train_on_batch(X, bad_label_last),
        ValueError,
        r"train_on_batch: y holds label 3 at position 9",
    ),
    (
        "train-on-batch-lengths",
        lambda m: m.train_on_batch(X, Y[:9]),
        ValueError,
        r"train_on_batch: x has 10 samples but y has 9",
    ),
    (
        "train-on-batch-sample-weight",
        lambda m: m.train_on_batch(X, Y, sample_weight=np.ones(3)),
        ValueError,
        r"train_on_batch: sample_weight has shape \(3,\)",
    ),
    (
        "test-on-batch-label",
        lambda m: m.test_on_batch(X, bad_label_last),
        ValueError,
        r"test_on_batch: y holds label 3 at position 9",
    ),
]


@pytest.mark.parametrize("call, exc, message", [pytest.param(*c[1:], id=c[0]) for c in REFUSED])
def test_refused_calls_change_nothing(call, exc, message):
    model = _model()
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=message):
            call(model)
    _assert_same(before, _state(model))
    # and the model still trains afterwards, traced as before
    model.fit(X, Y, batch_size=5, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == before[1] + 2


def test_validation_checks_run_once_per_signature_and_then_cost_nothing():
    """train_on_batch checks its data signature once (a forward of two samples), then
    only the cheap checks (lengths, label range) run on later calls."""
    model = _model()
    calls = []
    dense = model.layers[0]
    original = type(dense).call

    def counting(self, inputs):
        if self is dense:  # (the class's other instance, the last layer, is not counted)
            calls.append(int(inputs.shape[0]))
        return original(self, inputs)

    type(dense).call = counting
    try:
        model._checked = {}
        for _ in range(3):
            model.train_on_batch(X, Y)
    finally:
        type(dense).call = original
    assert calls == [2, 10, 10, 10]


# -------------------------------------------------------------------- Sequential
def test_duplicate_layer_names_in_a_sequential_are_refused():
    """Keras 3: "All layers added to a Sequential model should have unique names. Name 'a'
    is already the name of a layer in this model. Update the `name` argument to pass a
    unique name." (the InputLayer counts; layers nested in a sub-model do not)."""
    message = r"unique names\. Name 'a' is already the name of a layer in this model"
    with pytest.raises(ValueError, match=message):
        keras.Sequential([layers.Dense(2, name="a"), layers.Dense(2, name="a")])
    with pytest.raises(ValueError, match=message):
        keras.Sequential([layers.InputLayer((3,), name="a"), layers.Dense(2, name="a")])
    model = keras.Sequential([layers.InputLayer((3,)), layers.Dense(2, name="a")])
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        model.add(layers.Dense(2, name="a"))
    assert len(model.layers) == 1 and model.output_shape == (None, 2)
    for u, v in zip(before, model.get_weights()):
        np.testing.assert_array_equal(u, v)
    nested = keras.Sequential(
        [layers.Dense(2, name="a"), keras.Sequential([layers.Dense(2, name="a")])]
    )
    assert nested(np.ones((1, 3), np.float32)).shape == (1, 2)


def test_an_empty_sequential_cannot_be_called_or_built():
    """Keras 3: "Sequential model <name> cannot be built because it has no layers. Call
    `model.add(layer)`." (before, it returned its input unchanged)."""
    message = r"cannot be built because it has no layers"
    with pytest.raises(ValueError, match=message):
        keras.Sequential(name="empty")(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=message):
        keras.Sequential().build((None, 3))
    model = keras.Sequential([layers.Dense(2, input_shape=(3,))])
    model.pop()
    with pytest.raises(ValueError, match=message):
        model(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=message):
        model.predict(np.ones((1, 3), np.float32), verbose=0)


@pytest.mark.parametrize("op", ["batch_norm", "batch_norm_grouped"])
@pytest.mark.parametrize("axis", [2**40, -(2**40), 2**31])
def test_batch_norm_axis_out_of_the_int_range_is_a_value_error(op, axis):
    """batch_norm's axis is read as every other op reads one (reduce_sum, softmax, concat):
    a value outside the C int range is the ValueError naming the axis, not the
    OverflowError of a C-int conversion; a non-integer stays a TypeError."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    fn = getattr(ml._core, op)
    with pytest.raises(ValueError, match=rf"{op}: axis {axis} is out of range"):
        fn(x, axis=axis)
    with pytest.raises(TypeError, match="axis must be an int"):
        fn(x, axis=1.0)
    # an in-range axis that does not fit the input keeps the shape message
    with pytest.raises(ValueError, match="out of range"):
        fn(x, axis=7)
