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
    p = np.array(
        [
            [0.0, 1.0, 0.0],  # exact 1 and 0: clipped
            [0.0, 0.5, 0.5],  # true class has p = 0 -> log(1e-7)
            [0.2, 0.2, 0.1],  # not normalised: rescaled first
            [0.3, 0.3, 0.4],
        ],
        np.float32,
    )
    got = np.asarray(losses.categorical_crossentropy(y, p))
    np.testing.assert_allclose(got, _np_cce(y.astype(np.float64), p.astype(np.float64)), rtol=1e-5)
    assert got[1] == pytest.approx(-np.log(1e-7), rel=1e-5)
    cls = losses.CategoricalCrossentropy()
    assert float(cls(y, p).item()) == pytest.approx(
        _np_cce(y, p.astype(np.float64)).mean(), rel=1e-5
    )


def test_categorical_crossentropy_from_logits_and_label_smoothing():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4)).astype(np.float32) * 3
    y = np.eye(4, dtype=np.float32)[[0, 3, 1, 1, 2]]
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(
        np.asarray(losses.categorical_crossentropy(y, z, from_logits=True)),
        -(y * logp).sum(1),
        rtol=1e-5,
    )
    ys = y * 0.9 + 0.1 / 4
    np.testing.assert_allclose(
        np.asarray(losses.categorical_crossentropy(y, z, from_logits=True, label_smoothing=0.1)),
        -(ys * logp).sum(1),
        rtol=1e-5,
    )


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
    np.testing.assert_allclose(
        np.asarray(losses.sparse_categorical_crossentropy(labels, p)), ref, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(losses.sparse_categorical_crossentropy(labels.reshape(3, 1), p)), ref, rtol=1e-5
    )
    loss = losses.SparseCategoricalCrossentropy(reduction="sum")
    assert float(loss(labels, p).item()) == pytest.approx(ref.sum(), rel=1e-5)


def test_binary_crossentropy_with_clipping_and_logits():
    y = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    p = np.array([[1.0, 0.0, 0.3], [0.6, 0.2, 0.0]], np.float32)
    # Keras 3: clip to [eps, 1 - eps] (in float32), then log(p) and log(1 - p); no eps
    # inside the logs (that was tf.keras 2)
    pc = np.clip(p, np.float32(EPS), np.float32(1 - EPS)).astype(np.float64)
    ref = -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc), axis=-1)
    np.testing.assert_allclose(np.asarray(losses.binary_crossentropy(y, p)), ref, rtol=1e-5)
    z = np.array([[3.0, -2.0, 0.5], [-0.1, 8.0, -30.0]], np.float32)
    ref_logits = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), axis=-1)
    np.testing.assert_allclose(
        np.asarray(losses.binary_crossentropy(y, z, from_logits=True)), ref_logits, rtol=1e-5
    )


def test_binary_crossentropy_clipped_as_keras_3():
    """keras losses_test.py BinaryCrossentropyTest.test_unweighted / test_scalar_weighted /
    test_sample_weighted: predictions of exactly 0 and 1 (tf.keras 2's formula gave 3.8123)."""
    y_true = np.array([1, 0, 1, 0]).reshape([2, 2])
    y_pred = np.array([1, 1, 1, 0], dtype=np.float32).reshape([2, 2])
    bce = losses.BinaryCrossentropy()
    assert float(bce(y_true, y_pred).item()) == pytest.approx(3.98559, abs=1e-5)
    assert float(bce(y_true, y_pred, sample_weight=2.3).item()) == pytest.approx(9.1668, abs=1e-4)
    sw = np.array([1.2, 3.4]).reshape((2, 1))
    assert float(bce(y_true, y_pred, sample_weight=sw).item()) == pytest.approx(4.7827, abs=1e-4)
    # the core op is the same formula
    np.testing.assert_allclose(
        np.asarray(ml.binary_crossentropy(y_true.astype(np.float32), y_pred)),
        [7.971192, 0.0],
        atol=1e-5,
    )  # 2 * 3.98559 and 0


def test_binary_crossentropy_gradient_is_the_clipped_formula_to_second_order():
    """Inside the clip range d/dp = (p - y) / (p (1 - p)) / d and d2/dp2 = (y / p^2 +
    (1 - y) / (1 - p)^2) / d; outside it both are 0 (the clip's gradient, as TensorFlow and
    PyTorch). p = 1e-6 is where tf.keras 2's log(p + eps) was 10 % off."""
    y = np.array([[1, 0, 1, 0, 1, 0]], np.float32)
    pv = np.array([[1e-6, 1e-6, 1 - 1e-6, 1 - 1e-6, 0.0, 1.0]], np.float32)
    p = ml.tensor(pv, requires_grad=True)
    loss = ml.reduce_sum(losses.binary_crossentropy(y, p))
    (g,) = ml.grad(loss, [p], create_graph=True)
    (h,) = ml.grad(ml.reduce_sum(g), [p])
    inside = np.array([[1, 1, 1, 1, 0, 0]], bool)
    q, t, d = np.where(inside, pv, 0.5).astype(np.float64), y.astype(np.float64), pv.shape[-1]
    g_ref = np.where(inside, (q - t) / (q * (1 - q)) / d, 0.0)
    h_ref = np.where(inside, (t / q**2 + (1 - t) / (1 - q) ** 2) / d, 0.0)
    np.testing.assert_allclose(np.asarray(g), g_ref, rtol=2e-3)
    np.testing.assert_allclose(np.asarray(h), h_ref, rtol=2e-3)


def test_mean_squared_error_and_broadcasting_like_the_article():
    rng = np.random.default_rng(2)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 6)]
    pred = rng.normal(size=(6, 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(losses.mean_squared_error(y, pred)), np.mean((y - pred) ** 2, axis=-1), rtol=1e-5
    )
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(losses.mse(a, b)), np.mean((a - b) ** 2, -1), rtol=1e-5)
    assert losses.get("mse") is losses.mean_squared_error


def test_reductions_and_sample_weight():
    a = np.array([[1.0, 2.0], [3.0, 5.0], [0.0, 0.0]], np.float32)
    b = np.zeros((3, 2), np.float32)
    per = np.mean(a**2, -1)
    assert float(losses.MeanSquaredError()(a, b).item()) == pytest.approx(per.mean())
    assert float(losses.MeanSquaredError(reduction="sum")(a, b).item()) == pytest.approx(per.sum())
    np.testing.assert_allclose(np.asarray(losses.MeanSquaredError(reduction="none")(a, b)), per)
    w = np.array([1.0, 0.0, 2.0], np.float32)
    assert float(losses.MeanSquaredError()(a, b, sample_weight=w).item()) == pytest.approx(
        (per * w).mean()
    )
    with pytest.raises(ValueError):
        losses.MeanSquaredError(reduction="average")


def test_get_by_string():
    assert losses.get("categorical_crossentropy") is losses.categorical_crossentropy
    assert isinstance(losses.get("CategoricalCrossentropy"), losses.CategoricalCrossentropy)
    assert losses.get("sparse_categorical_crossentropy") is losses.sparse_categorical_crossentropy
    with pytest.raises(ValueError):
        losses.get("no_such_loss")


# ---------------------------------------------------------------- rank matching (issue 18)


def test_squeeze_or_expand_to_same_rank_as_keras():
    """keras loss_test.py LossTest.test_squeeze_or_expand (shapes), on arrays and tensors."""
    f = losses.squeeze_or_expand_to_same_rank
    for make in (np.ones, lambda s: ml.tensor(np.ones(s, np.float32))):
        for a, b, want in [
            ((3,), (3, 1), ((3, 1), (3, 1))),
            ((3, 2), (3, 2, 1), ((3, 2), (3, 2))),
            ((3, 1), (3,), ((3, 1), (3, 1))),
            ((3, 2, 1), (3, 2), ((3, 2), (3, 2))),
            ((3,), (3, 4), ((3,), (3, 4))),
            ((2, 3), (2, 3), ((2, 3), (2, 3))),
        ]:
            x1, x2 = f(make(a), make(b))
            assert (tuple(x1.shape), tuple(x2.shape)) == want


def test_rank1_targets_pair_with_rank2_predictions():
    """Targets (N,) against predictions (N, 1) pair element by element; before, they
    broadcast to an (N, N) loss ([35.67, 74.67, 59.67] and 0.9035). Values: Keras 3.15.1
    (the shape (3,) is keras MeanSquaredErrorTest.test_base_function_reduction)."""
    y_true = np.array([4, 8, 12])
    y_pred = np.array([[3], [0], [1]])
    np.testing.assert_allclose(np.asarray(losses.mean_squared_error(y_true, y_pred)), [1, 64, 121])
    np.testing.assert_allclose(np.asarray(losses.mean_absolute_error(y_true, y_pred)), [1, 8, 11])
    np.testing.assert_allclose(np.asarray(losses.mean_squared_error(y_pred, y_true)), [1, 64, 121])
    assert float(losses.MeanSquaredError()(y_true, y_pred).item()) == pytest.approx(62.0)
    assert float(losses.MeanAbsoluteError()(y_true, y_pred).item()) == pytest.approx(20 / 3)
    # the core op (metalearn.mean_squared_error) matches ranks the same way
    np.testing.assert_allclose(
        np.asarray(ml.mean_squared_error(y_true.astype(np.float32), y_pred.astype(np.float32))),
        [1, 64, 121],
    )
    yb = np.array([1, 0, 1, 0])
    pb = np.array([[0.9], [0.2], [0.6], [0.3]])
    assert float(losses.BinaryCrossentropy()(yb, pb).item()) == pytest.approx(0.2990012, abs=1e-6)
    # the function, as Keras 3's, needs equal shapes; the class above paired them first
    with pytest.raises(ValueError, match=r"\(4,\).*\(4, 1\)"):
        losses.binary_crossentropy(yb, pb)
    np.testing.assert_allclose(
        np.asarray(losses.binary_crossentropy(yb[:, None], pb)),
        -np.log([0.9, 0.8, 0.6, 0.7]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(ml.binary_crossentropy(yb.astype(np.float32), pb.astype(np.float32))),
        -np.log([0.9, 0.8, 0.6, 0.7]),
        rtol=1e-5,
    )
    # (N, T) against (N, T, 1): the trailing 1 is squeezed
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = (a + np.array([1, 2, 3], np.float32)).reshape(2, 3, 1)
    np.testing.assert_allclose(
        np.asarray(losses.mean_squared_error(a, b)), [14 / 3, 14 / 3], rtol=1e-6
    )


def test_rank_matching_keeps_gradients_and_traces():
    """The reshape of a rank-1 target tensor is recorded: gradients reach it, and a traced
    function replays with each call's targets."""
    y = ml.tensor(np.array([4.0, 8.0, 12.0], np.float32), requires_grad=True)
    p = ml.tensor(np.array([[3.0], [0.0], [1.0]], np.float32), requires_grad=True)
    gy, gp = ml.grad(ml.reduce_sum(losses.mean_squared_error(y, p)), [y, p])
    np.testing.assert_allclose(np.asarray(gy), [2.0, 16.0, 22.0])
    np.testing.assert_allclose(np.asarray(gp), [[-2.0], [-16.0], [-22.0]])

    f = ml.function(lambda t, q: ml.reduce_mean(losses.BinaryCrossentropy()(t, q)))
    pred = ml.tensor(np.array([[0.9], [0.2], [0.6], [0.3]], np.float32))
    for labels in ([1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]):
        t = ml.tensor(np.array(labels, np.float32))
        pv = np.array([0.9, 0.2, 0.6, 0.3])
        ref = -np.mean(np.where(np.array(labels) == 1, np.log(pv), np.log(1 - pv)))
        assert float(f(t, pred).item()) == pytest.approx(ref, rel=1e-5)
    assert f.n_traces == 1


@pytest.mark.parametrize(
    "fn, y_true, y_pred",
    [
        # keras losses_test.py BinaryCrossentropyTest.test_shape_mismatch
        (losses.BinaryCrossentropy(), np.array([[0], [1], [2]]), np.full((3, 3), 0.5)),
        (losses.binary_crossentropy, np.ones((3, 1)), np.full((3, 3), 0.5)),
        (ml.binary_crossentropy, np.ones((3, 1), np.float32), np.full((3, 3), 0.5, np.float32)),
        (losses.CategoricalCrossentropy(), np.ones((4,)), np.full((4, 3), 0.3)),
        (losses.CategoricalCrossentropy(), np.ones((4, 1)), np.full((4, 3), 0.3)),
        (losses.SparseCategoricalCrossentropy(), np.zeros((1, 4), np.int64), np.full((4, 3), 0.3)),
        (losses.SparseCategoricalCrossentropy(), np.zeros((4, 2), np.int64), np.full((4, 3), 0.3)),
        (losses.MeanSquaredError(), np.ones((2, 4)), np.ones((3,))),
        (losses.mean_absolute_error, np.ones((4, 2)), np.ones((4, 3))),
    ],
)
def test_shapes_that_cannot_be_matched_raise_naming_both(fn, y_true, y_pred):
    with pytest.raises(ValueError) as e:
        fn(y_true, y_pred)
    msg = str(e.value)
    assert str(tuple(y_true.shape)) in msg and str(tuple(y_pred.shape)) in msg


def test_sparse_categorical_crossentropy_as_keras_3():
    """keras losses_test.py SparseCategoricalCrossentropyTest.test_unweighted and
    test_sample_weighted; labels (N,) and (N, 1) alike; and a row that does not sum to 1 is
    rescaled before the clip (Keras 3.15.1, PyTorch/JAX/NumPy backends: -log(5/6) = 0.18232;
    the old clip-first formula gave log 2)."""
    y_pred = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], np.float32)
    scce = losses.SparseCategoricalCrossentropy()
    assert float(scce(np.array([0, 1, 2]), y_pred).item()) == pytest.approx(0.3239, abs=1e-3)
    assert float(scce(np.array([[0], [1], [2]]), y_pred).item()) == pytest.approx(0.3239, abs=1e-3)
    sw = np.array([[1.2], [3.4], [5.6]])
    assert float(scce(np.array([[0], [1], [2]]), y_pred, sample_weight=sw).item()) == pytest.approx(
        1.0696, abs=1e-3
    )
    logits = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]], np.float32)
    assert float(
        losses.SparseCategoricalCrossentropy(from_logits=True)(
            np.array([[0], [1], [2]]), logits, sample_weight=sw
        ).item()
    ) == pytest.approx(0.31829, abs=1e-3)
    p = np.array([[0.5, 0.5, 5.0]], np.float32)
    assert float(
        losses.sparse_categorical_crossentropy(np.array([2]), p)[0].item()
    ) == pytest.approx(-np.log(5 / 6), rel=1e-5)
    # (N,) labels against (N, 1) predictions (one class) pair up too
    assert np.asarray(
        losses.SparseCategoricalCrossentropy(reduction="none")(
            np.zeros(3), np.ones((3, 1), np.float32)
        )
    ).shape == (3,)


def test_sparse_categorical_probabilities_gradient_and_trace():
    """d/dp of -log(clip(p_k / sum p)) = 1 / sum(p) - [j == k] / p_k where nothing is clipped
    (so 1/6 - 1/5 for the 5 of [0.5, 0.5, 5], that the old clip-first formula clipped to
    zero gradient); a traced call replays with each call's labels."""
    pv = np.array([[0.5, 0.5, 5.0], [0.2, 0.3, 0.5]], np.float32)
    p = ml.tensor(pv, requires_grad=True)
    labels = np.array([2, 0])
    (g,) = ml.grad(ml.reduce_sum(losses.sparse_categorical_crossentropy(labels, p)), [p])
    ref = 1 / pv.sum(1, keepdims=True) - np.eye(3)[labels] / pv
    np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-5)

    f = ml.function(lambda t, q: losses.sparse_categorical_crossentropy(t, q))
    for lab in ([2, 0], [1, 1], [0, 2]):
        out = f(ml.tensor(np.array(lab, np.float32)), ml.tensor(pv))
        np.testing.assert_allclose(np.asarray(out), -np.log(pv[[0, 1], lab] / pv.sum(1)), rtol=1e-5)
    assert f.n_traces == 1


# ---------------------------------------------------------------- sample weights, reductions


def test_sample_weight_shapes_and_reductions_as_keras_3():
    """keras losses_test.py MeanSquaredErrorTest: test_sample_weighted, test_timestep_weighted,
    test_no_reduction, test_sum_reduction, test_mean_with_sample_weight_reduction."""
    y_true = np.array([[1, 9, 2], [-5, -2, 6]])
    y_pred = np.array([[4, 8, 12], [8, 1, 3]], dtype="float32")
    mse = losses.MeanSquaredError()
    assert float(
        mse(y_true, y_pred, sample_weight=np.array([[1.2], [3.4]])).item()
    ) == pytest.approx(767.8 / 6, rel=1e-6)
    assert float(mse(y_true, y_pred, sample_weight=np.array([1.2, 3.4])).item()) == pytest.approx(
        767.8 / 6, rel=1e-6
    )
    yt = np.asarray([1, 9, 2, -5, -2, 6]).reshape(2, 3, 1)
    yp = np.asarray([4, 8, 12, 8, 1, 3]).reshape(2, 3, 1)
    sw = np.array([3, 6, 5, 0, 4, 2]).reshape((2, 3))
    assert float(mse(yt, yp, sample_weight=sw).item()) == pytest.approx(97.833336, rel=1e-6)
    np.testing.assert_allclose(
        np.asarray(losses.MeanSquaredError(reduction=None)(y_true, y_pred, sample_weight=2.3)),
        [84.3333, 143.3666],
        rtol=1e-5,
    )
    assert float(
        losses.MeanSquaredError(reduction="sum")(y_true, y_pred, sample_weight=2.3).item()
    ) == pytest.approx(227.69998, rel=1e-6)
    mws = losses.MeanSquaredError(reduction="mean_with_sample_weight")
    assert float(
        mws(y_true, y_pred, sample_weight=np.array([[1.2], [3.4]])).item()
    ) == pytest.approx((110 / 3 * 1.2 + 187 / 3 * 3.4) / (1.2 + 3.4), rel=1e-6)
    assert float(losses.MeanSquaredError(reduction="mean")(y_true, y_pred).item()) == pytest.approx(
        49.5
    )
    # weights (N, 1) with reduction "none": Keras 3.15.1 returns the values as (N, 1)
    none = losses.MeanSquaredError(reduction="none")(
        np.ones((3, 2)), np.zeros((3, 2)), sample_weight=np.array([[1.0], [0.0], [2.0]])
    )
    np.testing.assert_allclose(np.asarray(none), [[1.0], [0.0], [2.0]])


def test_sample_weight_per_sample_on_temporal_losses_and_bad_shapes():
    """(N,) weights on (N, T) per-sample losses weight each sample (Keras 3 raises there, as
    its broadcast aligns the weights with T); weights that cannot be matched, or would
    broadcast the losses to a bigger shape, raise naming both shapes."""
    rng = np.random.default_rng(3)
    yt, yp = (
        rng.normal(size=(4, 2, 3)).astype(np.float32),
        rng.normal(size=(4, 2, 3)).astype(np.float32),
    )
    w = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    per = np.mean((yt - yp) ** 2, -1)
    got = float(losses.MeanSquaredError()(yt, yp, sample_weight=w).item())
    assert got == pytest.approx(np.mean(per * w[:, None]), rel=1e-5)
    for bad in (np.ones(5), np.ones((4, 3)), np.ones((4, 4))):
        with pytest.raises(ValueError) as e:
            losses.MeanSquaredError()(yt[:, 0], yp[:, 0], sample_weight=bad)
        assert str(bad.shape) in str(e.value) and "(4,)" in str(e.value)


# ---------------------------------------------------------------- compile("mse") and fit


@pytest.mark.parametrize("run_eagerly", [None, True])
def test_dense1_fit_with_rank1_targets_learns_the_function(run_eagerly):
    """Dense(1) + compile(loss="mse") + fit(x, y) with y of shape (N,): the string "mse"
    resolves to losses.mean_squared_error, wrapped in LossFunctionWrapper, which matches the
    ranks; before, the (N, N) loss fitted only the mean of y (MSE ~4 here)."""
    from metalearn.keras import layers, models, optimizers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 3)).astype(np.float32)
    coef = np.array([1.0, -2.0, 0.5], np.float32)
    y = x @ coef + 0.3
    ml.random.set_seed(0)
    model = models.Sequential([layers.Dense(1)])
    model.compile(optimizer=optimizers.SGD(0.1), loss="mse", run_eagerly=run_eagerly)
    hist = model.fit(x, y, epochs=40, batch_size=16, verbose=0)  # last batch of 6
    pred = np.asarray(model.predict(x, verbose=0))
    assert pred.shape == (70, 1)
    assert np.mean((pred[:, 0] - y) ** 2) < 1e-6
    assert hist.history["loss"][-1] < 1e-6
    np.testing.assert_allclose(np.asarray(model.layers[0].kernel)[:, 0], coef, atol=1e-3)
    # evaluate and a sample-weighted step take the same (N,) targets
    assert model.evaluate(x, y, verbose=0) < 1e-6
    assert model.train_on_batch(x[:8], y[:8], sample_weight=np.ones(8, np.float32)) < 1e-6


# ---------------------------------------------------------------- issue 22's losses
from tests.core.test_gradcheck import gradcheck  # noqa: E402

_R = np.random.default_rng(22)
_PROB = _R.uniform(0.1, 0.9, (3, 4)).astype(np.float32)
_PROB_T = (_R.uniform(0.1, 0.9, (3, 4)) / 2).astype(np.float32)
_ONEHOT = np.eye(4, dtype=np.float32)[[0, 2, 3]]
_REG_T = _R.normal(size=(3, 4)).astype(np.float32)
# predictions away from the kinks (|e| = delta, 1 - y p = 0) so differences are smooth
_REG_P = (_REG_T + np.array([0.3, -1.7, 0.6, -2.2], np.float32)).astype(np.float32)

_NEW = [
    # name, fn(y_true, y_pred), y_true, y_pred, float64 NumPy reference of the values
    ("huber", lambda t, p: losses.huber(t, p, delta=1.0), _REG_T, _REG_P, None),
    ("log_cosh", losses.log_cosh, _REG_T, _REG_P, None),
    ("kl_divergence", losses.kl_divergence, _PROB_T, _PROB, None),
    ("poisson", losses.poisson, _PROB_T * 4, _PROB * 3, None),
    ("cosine_similarity", losses.cosine_similarity, _REG_T, _REG_P, None),
    ("hinge", losses.hinge, np.sign(_REG_T), _REG_P / 3, None),
    ("squared_hinge", losses.squared_hinge, np.sign(_REG_T), _REG_P / 3, None),
    ("categorical_hinge", losses.categorical_hinge, _ONEHOT, _REG_P, None),
    (
        "categorical_focal_crossentropy",
        losses.categorical_focal_crossentropy,
        _ONEHOT,
        _PROB,
        None,
    ),
    (
        "categorical_focal_crossentropy/logits",
        lambda t, p: losses.categorical_focal_crossentropy(t, p, from_logits=True, gamma=1.5),
        _ONEHOT,
        _REG_P,
        None,
    ),
    (
        "binary_focal_crossentropy",
        lambda t, p: losses.binary_focal_crossentropy(t, p, apply_class_balancing=True),
        (_PROB_T > 0.2).astype(np.float32),
        _PROB,
        None,
    ),
]


def _np_values(name, t, p):
    """float64 NumPy references written from Keras 3's formulas."""
    t, p = t.astype(np.float64), p.astype(np.float64)
    e = p - t
    if name == "huber":
        return np.mean(np.where(np.abs(e) <= 1, 0.5 * e * e, np.abs(e) - 0.5), -1)
    if name == "log_cosh":
        return np.mean(np.log(np.cosh(e)), -1)
    if name == "kl_divergence":
        return np.sum(t * np.log(t / p), -1)
    if name == "poisson":
        return np.mean(p - t * np.log(p + 1e-7), -1)
    if name == "cosine_similarity":
        n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        return -np.sum(n(t) * n(p), -1)
    if name == "hinge":
        return np.mean(np.maximum(1 - t * p, 0), -1)
    if name == "squared_hinge":
        return np.mean(np.maximum(1 - t * p, 0) ** 2, -1)
    if name == "categorical_hinge":
        return np.maximum(np.max((1 - t) * p, -1) - np.sum(t * p, -1) + 1, 0)
    if name.startswith("categorical_focal"):
        gamma = 2.0
        if name.endswith("logits"):
            p = np.exp(p - p.max(-1, keepdims=True))
            gamma = 1.5
        o = np.clip(p / p.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
        return np.sum(0.25 * (1 - o) ** gamma * -t * np.log(o), -1)
    if name == "binary_focal_crossentropy":
        bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        pt = t * p + (1 - t) * (1 - p)
        return np.mean((0.25 * t + 0.75 * (1 - t)) * (1 - pt) ** 2 * bce, -1)
    raise KeyError(name)


@pytest.mark.parametrize("name, fn, t, p, _", _NEW, ids=[c[0] for c in _NEW])
def test_new_losses_values_and_gradients_to_second_order(name, fn, t, p, _):
    """Values against a float64 NumPy formula; gradients with respect to y_pred by central
    differences, first and second order (they are built from differentiable core ops)."""
    np.testing.assert_allclose(
        np.asarray(fn(t, ml.tensor(p))), _np_values(name, t, p), rtol=2e-5, atol=1e-6
    )
    for order in (1, 2):
        gradcheck(lambda q: fn(t, q), [p], order=order, eps=1e-3)


def test_hinge_converts_binary_label_tensors_branch_free_in_a_trace():
    """0/1 labels become -1/1, other labels stay, decided per call, also when the labels are
    a tensor read by a replayed trace (no Python branch on their values)."""
    f = ml.function(lambda t, q: losses.hinge(t, q))
    p = np.array([[0.3, -0.8, 0.5]], np.float32)
    for labels in ([[0, 1, 1]], [[-1, 1, 1]], [[1, 1, 0]], [[0.5, -1, 2]]):
        y = np.array(labels, np.float32)
        ref = y if not np.all((y == 0) | (y == 1)) else 2 * y - 1
        expected = np.mean(np.maximum(1 - ref * p, 0), -1)
        np.testing.assert_allclose(np.asarray(f(ml.tensor(y), ml.tensor(p))), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(losses.hinge(y, p)), expected, rtol=1e-6)
    assert f.n_traces == 1


@pytest.mark.parametrize(
    "loss",
    ["huber", "log_cosh", "poisson", "cosine_similarity", "hinge", "squared_hinge"]
    + ["Huber", "LogCosh", "KLDivergence", "Poisson", "CategoricalHinge"],
)
def test_new_losses_train_by_name_traced_as_eagerly(loss):
    """compile(loss=<name>): the traced fit step (replayed from C) ends with the same
    weights as the eager one, and the loss goes down."""
    from metalearn.keras import layers, models, optimizers

    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 3)).astype(np.float32)
    y = np.abs(x @ rng.normal(size=(3, 2))).astype(np.float32) / 4 + 0.05
    weights, hists = [], []
    for eager in (False, True):
        ml.random.set_seed(3)
        m = models.Sequential([layers.Dense(2, activation="softplus", input_shape=(3,))])
        m.compile(optimizer=optimizers.SGD(0.05), loss=loss, run_eagerly=eager)
        hists.append(m.fit(x, y, epochs=4, batch_size=16, shuffle=False, verbose=0).history)
        weights.append(m.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert hists[0]["loss"][-1] < hists[0]["loss"][0]


@pytest.mark.parametrize(
    "loss", [losses.Huber(delta=0.5), losses.LogCosh(), losses.cosine_similarity]
)
def test_new_losses_in_second_order_maml(loss):
    """MAML's inner loop differentiates the loss twice: the second-order meta-gradient
    differs from the first-order one, and the vectorised meta-batch equals the loop."""
    from metalearn import keras
    from metalearn.meta import MAML
    from metalearn.tasks import Task

    rng = np.random.default_rng(0)
    ml.random.set_seed(0)
    model = keras.Sequential(
        [keras.layers.Dense(6, activation="tanh", input_shape=(2,)), keras.layers.Dense(3)]
    )
    batch = Task(
        rng.normal(size=(3, 5, 2)).astype(np.float32),
        rng.normal(size=(3, 5, 3)).astype(np.float32),
        rng.normal(size=(3, 7, 2)).astype(np.float32),
        rng.normal(size=(3, 7, 3)).astype(np.float32),
        {"batched": True},
    )
    grads = {}
    for first_order in (False, True):
        for vec in (True, False):
            maml = MAML(
                model,
                loss=loss,
                inner_lr=0.4,
                inner_steps=2,
                first_order=first_order,
                vectorize=vec,
            )
            grads[first_order, vec] = [np.asarray(g) for g in maml.meta_gradients(batch)[1]]
    for fo in (False, True):
        for a, b in zip(grads[fo, True], grads[fo, False]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(grads[False, True], grads[True, True]))
    assert diff > 1e-4


@pytest.mark.parametrize(
    "fn",
    [
        losses.huber,
        losses.log_cosh,
        losses.kl_divergence,
        losses.poisson,
        losses.cosine_similarity,
        losses.hinge,
        losses.Huber(),
        losses.CategoricalFocalCrossentropy(),
        losses.categorical_focal_crossentropy,
        losses.binary_focal_crossentropy,
    ],
)
def test_new_losses_name_both_shapes_on_mismatch(fn):
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)|\(4, 2\).*\(4, 3\)"):
        fn(np.ones((4, 3), np.float32), np.full((4, 2), 0.5, np.float32))


def test_new_losses_bad_arguments():
    with pytest.raises(ValueError, match="axis"):
        losses.CategoricalFocalCrossentropy(axis=1)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.BinaryFocalCrossentropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="gamma"):
        losses.categorical_focal_crossentropy(_ONEHOT, _PROB, gamma=float("nan"))
    with pytest.raises(TypeError, match="delta"):
        losses.Huber(delta="big")
    with pytest.raises(TypeError, match="float32"):
        losses.LogCosh(dtype="float16")
    with pytest.raises(ValueError, match="out of range"):
        losses.cosine_similarity(_REG_T, _REG_P, axis=2)
