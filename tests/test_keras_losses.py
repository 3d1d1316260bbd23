"""Losses against the Keras formulas written in NumPy."""
import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import losses

EPS = 1e-7


def _np_cce(y, p):
    # Keras clips in float32: 1 - 1e-7 rounds to 0.99999988
    p = p / p.sum(-1, keepdims=True)
    return -np.sum(y * np.log(np.clip(p, EPS, float(np.float32(1 - EPS)))), axis=-1)


def test_categorical_crossentropy_with_clipping():
    y = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0.2, 0.3, 0.5]], np.float32)
    p = np.array([[0.0, 1.0, 0.0],       # exact 1 and 0: clipped
                  [0.0, 0.5, 0.5],       # true class has p = 0 -> log(1e-7)
                  [0.2, 0.2, 0.1],       # not normalised: rescaled first
                  [0.3, 0.3, 0.4]], np.float32)
    got = np.asarray(losses.categorical_crossentropy(y, p))
    np.testing.assert_allclose(got, _np_cce(y.astype(np.float64), p.astype(np.float64)), rtol=1e-5)
    assert got[1] == pytest.approx(-np.log(1e-7), rel=1e-5)
    cls = losses.CategoricalCrossentropy()
    assert float(cls(y, p).item()) == pytest.approx(_np_cce(y, p.astype(np.float64)).mean(), rel=1e-5)


def test_categorical_crossentropy_from_logits_and_label_smoothing():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4)).astype(np.float32) * 3
    y = np.eye(4, dtype=np.float32)[[0, 3, 1, 1, 2]]
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(losses.categorical_crossentropy(y, z, from_logits=True)),
                               -(y * logp).sum(1), rtol=1e-5)
    ys = y * 0.9 + 0.1 / 4
    np.testing.assert_allclose(
        np.asarray(losses.categorical_crossentropy(y, z, from_logits=True, label_smoothing=0.1)),
        -(ys * logp).sum(1), rtol=1e-5)


def test_categorical_crossentropy_gradients_both_arguments():
    """The article passes (prediction, labels): gradient flows to y_true as -log(clip(p))."""
    rng = np.random.default_rng(1)
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    q = rng.dirichlet(np.ones(3), size=2).astype(np.float32)
    a = ml.tensor(q, requires_grad=True)
    loss = ml.reduce_sum(losses.categorical_crossentropy(a, y))  # swapped on purpose
    (g,) = ml.grad(loss, [a])
    np.testing.assert_allclose(np.asarray(g), -np.log(np.clip(y, EPS, 1 - EPS)), rtol=1e-5)
    b = ml.tensor(q, requires_grad=True)
    loss = ml.reduce_sum(losses.categorical_crossentropy(y, b))
    (g,) = ml.grad(loss, [b])
    # d/dp of -sum y log(p / sum p) = -y/p + sum(y)/sum(p)
    ref = -y / q + y.sum(1, keepdims=True) / q.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4)


def test_sparse_categorical_crossentropy():
    p = np.array([[0.1, 0.7, 0.2], [0.0, 0.0, 1.0], [0.5, 0.25, 0.25]], np.float32)
    labels = np.array([1, 0, 2])
    ref = -np.log(np.clip(p[np.arange(3), labels], EPS, 1 - EPS))
    np.testing.assert_allclose(np.asarray(losses.sparse_categorical_crossentropy(labels, p)), ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.sparse_categorical_crossentropy(labels.reshape(3, 1), p)),
                               ref, rtol=1e-5)
    loss = losses.SparseCategoricalCrossentropy(reduction="sum")
    assert float(loss(labels, p).item()) == pytest.approx(ref.sum(), rel=1e-5)


def test_binary_crossentropy_with_clipping_and_logits():
    y = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    p = np.array([[1.0, 0.0, 0.3], [0.6, 0.2, 0.0]], np.float32)
    # Keras: clip to [eps, 1 - eps], then log(p + eps) and log(1 - p + eps)
    pc = np.clip(p.astype(np.float64), EPS, float(np.float32(1 - EPS)))
    ref = -np.mean(y * np.log(pc + EPS) + (1 - y) * np.log(1 - pc + EPS), axis=-1)
    np.testing.assert_allclose(np.asarray(losses.binary_crossentropy(y, p)), ref, rtol=1e-4)
    z = np.array([[3.0, -2.0, 0.5], [-0.1, 8.0, -30.0]], np.float32)
    ref_logits = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), axis=-1)
    np.testing.assert_allclose(np.asarray(losses.binary_crossentropy(y, z, from_logits=True)), ref_logits,
                               rtol=1e-5)


def test_mean_squared_error_and_broadcasting_like_the_article():
    rng = np.random.default_rng(2)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 6)]
    pred = rng.normal(size=(6, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(losses.mean_squared_error(y, pred)),
                               np.mean((y - pred) ** 2, axis=-1), rtol=1e-5)
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(losses.mse(a, b)), np.mean((a - b) ** 2, -1), rtol=1e-5)
    assert losses.get("mse") is losses.mean_squared_error


def test_reductions_and_sample_weight():
    a = np.array([[1.0, 2.0], [3.0, 5.0], [0.0, 0.0]], np.float32)
    b = np.zeros((3, 2), np.float32)
    per = np.mean(a ** 2, -1)
    assert float(losses.MeanSquaredError()(a, b).item()) == pytest.approx(per.mean())
    assert float(losses.MeanSquaredError(reduction="sum")(a, b).item()) == pytest.approx(per.sum())
    np.testing.assert_allclose(np.asarray(losses.MeanSquaredError(reduction="none")(a, b)), per)
    w = np.array([1.0, 0.0, 2.0], np.float32)
    assert float(losses.MeanSquaredError()(a, b, sample_weight=w).item()) == pytest.approx((per * w).mean())
    with pytest.raises(ValueError):
        losses.MeanSquaredError(reduction="average")


def test_get_by_string():
    assert losses.get("categorical_crossentropy") is losses.categorical_crossentropy
    assert isinstance(losses.get("CategoricalCrossentropy"), losses.CategoricalCrossentropy)
    assert losses.get("sparse_categorical_crossentropy") is losses.sparse_categorical_crossentropy
    with pytest.raises(ValueError):
        losses.get("no_such_loss")
