"""Adagrad's and Nadam's state in ``.keras`` files, both ways with live Keras 3 (PyTorch
backend): Keras' optimizer variables (``optimizer/vars``: iterations, learning rate, then
Adagrad's accumulator per variable, or Nadam's momentum and velocity interleaved per
variable and its ``_u_product`` scalar last) are written and read so that, from the
file, one more epoch in each library gives the same weights. Marked ``keras``."""

import numpy as np
import pytest

from ._helpers import require_keras
from .test_live_saving import _train_data, mlp, np_of, randomised, same_weights

pytestmark = pytest.mark.keras
KERAS = require_keras()

OPTIMIZERS = [
    ("Adagrad", {"learning_rate": 0.05}),
    ("Adagrad", {"learning_rate": 0.05, "initial_accumulator_value": 0.5, "epsilon": 1e-3}),
    ("Nadam", {"learning_rate": 0.01}),
    ("Nadam", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99}),
]


@pytest.fixture
def mk():
    KERAS.utils.set_random_seed(0)
    from metalearn import keras as mk

    return mk


def _slots(model):
    return [
        np.asarray(a, np.float64)
        for c, _ in model.optimizer._cores.values()
        for s in c.slots()
        for a in s
    ]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o[0]}-{len(o[1])}")
def test_adagrad_nadam_state_both_ways(mk, tmp_path, opt):
    name, kw = opt
    x, y = _train_data()
    ours = randomised(mlp(mk))
    ours.compile(getattr(mk.optimizers, name)(**kw), "categorical_crossentropy")
    ours.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    ours.save(tmp_path / "ours.keras")
    theirs = KERAS.models.load_model(tmp_path / "ours.keras")
    assert type(theirs.optimizer).__name__ == name
    assert int(np_of(theirs.optimizer.iterations)) == 6
    variables = theirs.optimizer.variables
    if name == "Nadam":  # Keras' running product of the u's, as Keras had made it
        b1 = kw.get("beta_1", 0.9)
        want = np.prod([b1 * (1 - 0.5 * 0.96**t) for t in range(1, 7)])
        np.testing.assert_allclose(float(np_of(variables[-1])), want, rtol=1e-6)
        variables = variables[:-1]
    got = sorted(float(np_of(v).astype(np.float64).sum()) for v in variables[2:])
    want = sorted(float(a.sum()) for a in _slots(ours))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    ours.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    theirs.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    same_weights(ours, theirs, f"{name}: metalearn -> Keras, one more epoch")

    theirs2 = mlp(KERAS)
    for lo, lt in zip(ours.layers, theirs2.layers):
        lt.set_weights(lo.get_weights())
    theirs2.compile(getattr(KERAS.optimizers, name)(**kw), "categorical_crossentropy")
    theirs2.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    theirs2.save(tmp_path / "theirs.keras")
    ours2 = mk.models.load_model(tmp_path / "theirs.keras")
    assert type(ours2.optimizer).__name__ == name and ours2.optimizer.iterations == 6
    ref = sorted(float(np_of(v).astype(np.float64).sum()) for v in theirs2.optimizer.variables[2:])
    mine = sorted(float(a.sum()) for a in _slots(ours2))
    if name == "Nadam":  # u_product is not a slot of ours: recomputed from iterations
        ref.remove(min(ref, key=lambda v: abs(v - float(np_of(theirs2.optimizer.variables[-1])))))
    np.testing.assert_allclose(mine, ref, rtol=1e-6, atol=1e-7)
    theirs2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    ours2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    same_weights(ours2, theirs2, f"{name}: Keras -> metalearn, one more epoch")
