"""Adagrad's and Nadam's variables in Keras 3's ``optimizer/vars`` layout (what
``.keras`` files hold; the h5py-free part: the arrays written and the restore from them):
Keras' order and values after one step from formulas (Adagrad: accumulator = initial +
g^2; Nadam: momentum (1 - beta_1) g, velocity (1 - beta_2) g^2, then its scalar
``_u_product`` = beta_1 (1 - 0.5 * 0.96)), and a restore that continues with the bits of
the uninterrupted run. Files both ways with Keras 3: test_live_saving_optimizers.py."""

import numpy as np
import pytest

from metalearn import keras
from metalearn.keras import saving

from ._optimizer_vars import restore, resumed_after

rng = np.random.default_rng(0)
X = rng.standard_normal((8, 3)).astype(np.float32)
Y = rng.standard_normal((8, 1)).astype(np.float32)
W = rng.standard_normal((3, 1)).astype(np.float32)


def model(opt):
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    m.set_weights([W])
    m.compile(opt, "mse")
    return m


def grad():
    x, y, w = (a.astype(np.float64) for a in (X, Y, W))
    return 2.0 / len(x) * x.T @ (x @ w - y)


def test_adagrad_layout_after_one_step():
    m = model(keras.optimizers.Adagrad(learning_rate=0.1, initial_accumulator_value=0.3))
    m.train_on_batch(X, Y)
    arrays = saving._optimizer_arrays(m)
    assert len(arrays) == 3 and int(arrays[0]) == 1
    np.testing.assert_allclose(float(arrays[1]), 0.1, rtol=1e-7)
    np.testing.assert_allclose(arrays[2], 0.3 + grad() ** 2, rtol=1e-5)


def test_nadam_layout_after_one_step():
    m = model(keras.optimizers.Nadam(learning_rate=0.01, beta_1=0.8, beta_2=0.95))
    m.train_on_batch(X, Y)
    arrays = saving._optimizer_arrays(m)
    assert len(arrays) == 5 and int(arrays[0]) == 1
    g = grad()
    np.testing.assert_allclose(arrays[2], 0.2 * g, rtol=1e-5)  # momentum
    np.testing.assert_allclose(arrays[3], 0.05 * g**2, rtol=1e-5)  # velocity
    assert arrays[4].shape == () and arrays[4].dtype == np.float32
    np.testing.assert_allclose(float(arrays[4]), 0.8 * (1 - 0.5 * 0.96), rtol=1e-7)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Adagrad(learning_rate=0.1),
        lambda: keras.optimizers.Nadam(learning_rate=0.01),
    ],
)
def test_restore_continues_the_uninterrupted_run(make):
    run, resumed, file = resumed_after(model, make, X, Y)
    for _ in range(2):
        run.train_on_batch(X, Y)
        resumed.train_on_batch(X, Y)
    np.testing.assert_array_equal(resumed.get_weights()[0], run.get_weights()[0])
    # Nadam's file without its u_product is not Keras' layout: a warning, and the state
    # starts afresh (as Keras 3 skips variables that do not fit)
    if len(file["optimizer/vars"]) == 5:
        short = dict(file["optimizer/vars"])
        short.pop("4")
        fresh = model(make())
        with pytest.warns(UserWarning, match="do not fit"):
            restore(fresh, {"optimizer/vars": short})
        assert fresh.optimizer.iterations == 0
