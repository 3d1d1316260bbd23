"""``use_ema``'s moving averages in ``.keras`` files, both ways with live Keras 3 (PyTorch
backend). Keras keeps them in ``optimizer/vars`` right after iterations and learning rate
(its base ``build`` adds one average per trainable variable before the optimizer's own
slots); a model trained with ``use_ema`` in one library and saved continues in the other
with the same averages: one more epoch in each (``fit`` ends by copying the averages into
the weights, in both) gives the same weights. ``optimizer.variables()`` lists the state in
Keras' order (Keras' ``optimizer.variables[2:]``). Marked ``keras``."""

import numpy as np
import pytest

from ._helpers import require_keras
from .test_live_saving import _train_data, mlp, np_of, randomised, same_weights

pytestmark = pytest.mark.keras
KERAS = require_keras()

OPTIMIZERS = [
    ("SGD", {"learning_rate": 0.1, "ema_momentum": 0.8}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "ema_momentum": 0.7}),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True, "ema_momentum": 0.8}),
    ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.01}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.5, "centered": True, "ema_momentum": 0.9}),
    ("Adagrad", {"learning_rate": 0.05, "ema_momentum": 0.8, "ema_overwrite_frequency": 5}),
    ("Nadam", {"learning_rate": 0.01, "ema_momentum": 0.8}),
]


@pytest.fixture
def mk():
    KERAS.utils.set_random_seed(0)
    from metalearn import keras as mk

    return mk


def _keras_state(opt, name):
    """Keras' optimizer variables after iterations and learning rate (Nadam's scalar
    ``_u_product`` left out: not a slot of ours, recomputed from iterations)."""
    vs = [np_of(v) for v in opt.variables[2:]]
    return vs[:-1] if name == "Nadam" else vs


def _same_state(ours_opt, theirs_opt, name, what):
    mine = [np.asarray(v) for v in ours_opt.variables()]
    ref = _keras_state(theirs_opt, name)
    assert len(mine) == len(ref) > 0, what
    for k, (a, b) in enumerate(zip(mine, ref)):  # in Keras' order: the averages first
        assert a.shape == b.shape, f"{what}: variable {k}: {a.shape} vs {b.shape}"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{what}: variable {k}")


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o[0]}-{len(o[1])}")
def test_ema_state_both_ways(mk, tmp_path, opt):
    name, kw = opt
    kw = dict(kw, use_ema=True)
    x, y = _train_data()
    ours = randomised(mlp(mk))
    ours.compile(getattr(mk.optimizers, name)(**kw), "categorical_crossentropy")
    ours.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    assert type(theirs.optimizer).__name__ == name and theirs.optimizer.use_ema
    assert int(np_of(theirs.optimizer.iterations)) == 6
    _same_state(ours.optimizer, theirs.optimizer, name, f"{name}: metalearn -> Keras")
    ours.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    theirs.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    same_weights(ours, theirs, f"{name}: metalearn -> Keras, one more epoch")
    _same_state(ours.optimizer, theirs.optimizer, name, f"{name}: metalearn -> Keras, +1")

    # Keras trains with EMA and saves; we load and go on as Keras goes on
    theirs2 = mlp(KERAS)
    for lo, lt in zip(ours.layers, theirs2.layers):
        lt.set_weights(lo.get_weights())
    theirs2.compile(getattr(KERAS.optimizers, name)(**kw), "categorical_crossentropy")
    theirs2.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    theirs2.save(tmp_path / "theirs.keras")
    ours2 = mk.models.load_model(tmp_path / "theirs.keras")
    assert type(ours2.optimizer).__name__ == name and ours2.optimizer.use_ema
    assert ours2.optimizer.iterations == 6
    _same_state(ours2.optimizer, theirs2.optimizer, name, f"{name}: Keras -> metalearn")
    theirs2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    ours2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    same_weights(ours2, theirs2, f"{name}: Keras -> metalearn, one more epoch")
    _same_state(ours2.optimizer, theirs2.optimizer, name, f"{name}: Keras -> metalearn, +1")


def test_variables_order_matches_keras_after_one_step(mk):
    # the same weights, one step each: optimizer.variables() in Keras' order, element by
    # element (Keras: variables[2:]), for an optimizer with several blocks and EMA
    x, y = _train_data()
    ours = randomised(mlp(mk))
    theirs = mlp(KERAS)
    for lo, lt in zip(ours.layers, theirs.layers):
        lt.set_weights(lo.get_weights())
    kw = {"learning_rate": 0.01, "momentum": 0.5, "centered": True, "use_ema": True}
    ours.compile(mk.optimizers.RMSprop(**kw), "categorical_crossentropy")
    theirs.compile(KERAS.optimizers.RMSprop(**kw), "categorical_crossentropy")
    ours.train_on_batch(x, y)
    theirs.train_on_batch(x, y)
    _same_state(ours.optimizer, theirs.optimizer, "RMSprop", "after one step")
