"""``use_ema``'s moving averages in Keras 3's ``optimizer/vars`` layout (what ``.keras``
files hold; the h5py-free part: the arrays written, the restore from them, and
``optimizer.variables()``'s order). Keras 3's base ``build`` adds the averages before the
optimizer's own slots, so a file holds iterations, learning rate, one average per
trainable variable, then the slots as without EMA (Adam: momentum and velocity
interleaved per variable, then AMSGrad's maxima). Values after one or two steps come from
the formulas (the average starts as the variable after the first step, momentum 0, then
``m * average + (1 - m) * w``). Files both ways with Keras 3: test_live_saving_ema.py."""

import numpy as np
import pytest

from metalearn import keras
from metalearn.keras import saving

from ._optimizer_vars import restore, resumed_after, vars_file

rng = np.random.default_rng(3)
X = rng.standard_normal((8, 3)).astype(np.float32)
Y = rng.standard_normal((8, 2)).astype(np.float32)
W = rng.standard_normal((3, 2)).astype(np.float32)
B = rng.standard_normal((2,)).astype(np.float32)


def model(opt):
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m.set_weights([W, B])
    m.compile(opt, "mse")
    return m


def grads(w, b):
    x, y = X.astype(np.float64), Y.astype(np.float64)
    r = 2.0 / Y.size * (x @ w + b - y)  # mse: the mean over every element
    return x.T @ r, r.sum(0)


def test_sgd_momentum_layout_after_two_steps():
    lr, mom, ema = 0.1, 0.5, 0.8
    m = model(keras.optimizers.SGD(lr, momentum=mom, use_ema=True, ema_momentum=ema))
    w, b = W.astype(np.float64), B.astype(np.float64)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for step in range(2):
        gw, gb = grads(w, b)
        vw, vb = mom * vw - lr * gw, mom * vb - lr * gb  # Keras' SGD momentum
        w, b = w + vw, b + vb
        if step == 0:
            aw, ab = w.copy(), b.copy()  # the first average is the variable
        else:
            aw, ab = ema * aw + (1 - ema) * w, ema * ab + (1 - ema) * b
        m.train_on_batch(X, Y)
    arrays = saving._optimizer_arrays(m)
    assert len(arrays) == 6 and int(arrays[0]) == 2
    assert arrays[0].dtype == np.int32 and arrays[1].dtype == np.float32
    np.testing.assert_allclose(float(arrays[1]), lr, rtol=1e-7)
    for got, want in zip(arrays[2:], [aw, ab, vw, vb]):  # averages, then momentums
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_adam_amsgrad_order_in_file_and_variables():
    b1, b2 = 0.8, 0.9
    opt = keras.optimizers.Adam(0.01, beta_1=b1, beta_2=b2, amsgrad=True, use_ema=True)
    m = model(opt)
    gw, gb = grads(W.astype(np.float64), B.astype(np.float64))
    m.train_on_batch(X, Y)
    # Adam's first step moves each element by lr * sign(g) (m_hat / sqrt(v_hat) = g/|g|)
    aw = W - 0.01 * np.sign(gw) * np.abs(gw) / (np.abs(gw) + 1e-7 * np.sqrt(1 - b2))
    ab = B - 0.01 * np.sign(gb) * np.abs(gb) / (np.abs(gb) + 1e-7 * np.sqrt(1 - b2))
    want = [
        aw, ab,  # averages (one block)
        (1 - b1) * gw, (1 - b2) * gw**2, (1 - b1) * gb, (1 - b2) * gb**2,  # m, v interleaved
        (1 - b2) * gw**2, (1 - b2) * gb**2,  # AMSGrad's maxima
    ]  # fmt: skip
    arrays = saving._optimizer_arrays(m)
    assert len(arrays) == 2 + len(want)
    variables = [np.asarray(v) for v in opt.variables()]  # Keras' order too, from the average
    assert len(variables) == len(want)
    for k, w in enumerate(want):
        for got in (arrays[2 + k], variables[k]):
            assert got.shape == w.shape, k
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6, err_msg=str(k))


def test_variables_lists_the_averages_first_for_every_optimizer():
    makers = [
        lambda: keras.optimizers.SGD(0.1, use_ema=True),
        lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True, use_ema=True),
        lambda: keras.optimizers.Adagrad(0.1, use_ema=True),
        lambda: keras.optimizers.Nadam(0.01, use_ema=True),
    ]
    for make in makers:
        m = model(make())
        m.train_on_batch(X, Y)
        v = m.optimizer.variables()
        # after one step the averages are the variables (ema momentum 0 on the first step)
        np.testing.assert_array_equal(np.asarray(v[0]), m.get_weights()[0])
        np.testing.assert_array_equal(np.asarray(v[1]), m.get_weights()[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.7),
        lambda: keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.7),
        lambda: keras.optimizers.Nadam(0.01, use_ema=True, ema_overwrite_frequency=3),
        lambda: keras.optimizers.RMSprop(0.01, momentum=0.3, centered=True, use_ema=True),
    ],
)
def test_restore_continues_the_uninterrupted_run(make):
    run, resumed, _ = resumed_after(model, make, X, Y)
    for _ in range(3):
        run.train_on_batch(X, Y)
        resumed.train_on_batch(X, Y)
    for a, b in zip(run.optimizer.variables(), resumed.optimizer.variables()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the averages too
    run.optimizer.finalize_variable_values(run.trainable_weights)
    resumed.optimizer.finalize_variable_values(resumed.trainable_weights)
    for a, b in zip(run.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_file_without_the_averages_starts_afresh_with_a_warning():
    # a file written without EMA (or by metalearn before it wrote the averages) does not
    # fit an optimizer with use_ema: a warning, and the state starts afresh, as Keras 3
    plain = model(keras.optimizers.Adam(0.01))
    plain.train_on_batch(X, Y)
    fresh = model(keras.optimizers.Adam(0.01, use_ema=True))
    with pytest.warns(UserWarning, match="do not fit"):
        restore(fresh, vars_file(plain))
    assert fresh.optimizer.iterations == 0 and fresh.optimizer.variables() == []


def test_metalearn_file_resumes_ema_exactly(tmp_path):
    # metalearn's own format keeps the C optimizer's slots by index (the average is the
    # last): unchanged by variables()' Keras order; fit, save, load, fit gives the bits of
    # the model that went on without the file, averages included. (Not those of one
    # longer fit: each fit ends by copying the averages into the weights, as Keras 3.)
    run = model(keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.6))
    run.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    run.save(tmp_path / "m.metalearn")
    back = keras.models.load_model(tmp_path / "m.metalearn")
    run.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    back.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(back.get_weights(), run.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(back.optimizer.variables()) == 6  # averages, then m and v per variable
    for a, b in zip(back.optimizer.variables(), run.optimizer.variables()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
