"""Gradient checkpointing (MAML(gradient_checkpointing=True)): the meta-gradient task by
task, each second-order inner step re-run backwards from its kept fast weights.

The meta-gradients against the PyTorch float64 fixtures (tests/reference/generate.py,
generate_inner_optim.py) and against the default path (one graph for the meta-batch) on
conv4 with batch norm, MLPs, Meta-SGD, the inner optimizers and the batch-norm modes;
fit equal to the default's; a learning test; the tensor storage's peak (the core's own
counter) well below the default's, DataParallel's included; a resume with the other
setting; bad input."""

import numpy as np
import pytest

import metalearn as ml
from metalearn import _core, checkpoint, keras
from metalearn.meta import ANIL, MAML, MAMLPlusPlus, MetaSGD, models
from metalearn.tasks import Sinusoid, Task
from tests.helpers import REFERENCE, mlp_fixture_model, sinusoid_model, torch_mlp_meta_reference

REF = np.load(REFERENCE / "mlp.npz")
REF_OPT = np.load(REFERENCE / "inner_optim.npz")
NAMES = ["W1", "b1", "W2", "b2"]


_fixture_model = mlp_fixture_model


def _fixture_batch(copies):
    rep = lambda a: np.stack([a] * copies)
    keys = ("maml/xs", "maml/ys", "maml/xq", "maml/yq")
    return Task(*(rep(REF[k]) for k in keys), {"batched": True})


def _image_batch(tasks=3, hw=16, n_way=5, queries=2, seed=0):
    rng = np.random.default_rng(seed)
    sx = rng.uniform(0, 1, (tasks, n_way, hw, hw, 1)).astype(np.float32)
    qx = rng.uniform(0, 1, (tasks, n_way * queries, hw, hw, 1)).astype(np.float32)
    sy = np.tile(np.arange(n_way), (tasks, 1))
    qy = np.tile(np.repeat(np.arange(n_way), queries), (tasks, 1))
    return Task(sx, sy, qx, qy, {"batched": True})


def _regression_batch(tasks=3, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    return Task(f(tasks, 5, 4), f(tasks, 5, 1), f(tasks, 6, 4), f(tasks, 6, 1), {"batched": True})


def _conv4():
    return models.conv4(5, filters=8, input_shape=(16, 16, 1))


def _mlp():
    return keras.Sequential(
        [
            keras.layers.Dense(16, activation="tanh", input_shape=(4,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def _both(make_model, batch, cls=MAML, **kw):
    """(loss, grads) of the default path and of the checkpointed one, same start."""
    out = []
    for ck in (False, True):
        ml.random.set_seed(0)
        learner = cls(make_model(), gradient_checkpointing=ck, **kw)
        loss, grads = learner.meta_gradients(batch)
        out.append((loss, [np.asarray(g) for g in grads]))
    return out


def _assert_close(a, b, rtol=1e-5):
    """Equal to float32 rounding, on the scale of the largest gradient (a conv bias
    before a batch norm has a meta-gradient that is rounding noise around zero)."""
    (la, ga), (lb, gb) = a, b
    assert abs(la - lb) <= 1e-6 * max(1.0, abs(la))
    scale = max(float(np.abs(g).max()) for g in ga)
    assert scale > 0
    for i, (x, y) in enumerate(zip(ga, gb)):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, rtol=0, atol=rtol * scale, err_msg=f"gradient {i}")


# ------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("order", [2, 1])
def test_meta_gradient_matches_the_pytorch_fixture(order):
    maml = MAML(
        _fixture_model(),
        inner_lr=float(REF["maml/inner_lr"]),
        first_order=(order == 1),
        gradient_checkpointing=True,
    )
    loss, grads = maml.meta_gradients(_fixture_batch(3))  # three equal tasks: the mean
    assert abs(loss - float(REF["maml/loss_query"])) < 1e-5
    for k, g in zip(NAMES, grads):
        ref = REF["maml/grad%d/%s" % (order, k)]
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_inner_optimizer_state_is_carried_back_as_in_pytorch(opt):
    model = keras.Sequential(
        [keras.layers.Dense(8, activation="tanh", input_shape=(1,)), keras.layers.Dense(1)]
    )
    model.set_weights([REF_OPT[n] for n in NAMES])
    learner = MAML(
        model,
        inner_lr=float(REF_OPT["lr"]),
        inner_steps=2,
        inner_optimizer=opt,
        inner_momentum=float(REF_OPT["mu"]),
        inner_betas=(float(REF_OPT["beta1"]), float(REF_OPT["beta2"])),
        inner_epsilon=float(REF_OPT["eps"]),
        gradient_checkpointing=True,
    )
    r = REF_OPT
    batch = Task(*(np.stack([r[k]] * 2) for k in ("xs", "ys", "xq", "yq")))
    loss, grads = learner.meta_gradients(batch)
    assert loss == pytest.approx(float(REF_OPT[f"{opt}/loss"]), rel=1e-5)
    for g, n in zip(grads, NAMES):
        np.testing.assert_allclose(np.asarray(g), REF_OPT[f"{opt}/grad/{n}"], rtol=2e-3, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_sgd_matches_torch_float64(steps):
    """Meta-SGD's rates get their gradient from the re-run steps' products."""
    pytest.importorskip("torch")
    learner = MetaSGD(
        _fixture_model(), inner_lr=0.3, inner_steps=steps, gradient_checkpointing=True
    )
    loss, grads = learner.meta_gradients(_fixture_batch(2))
    ref_loss, ref = torch_mlp_meta_reference(steps, 0.3, learned_rates=True)
    assert abs(loss - ref_loss) < 1e-5
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=1e-6)


# ------------------------------------------------------ against the default path
@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_with_batch_norm_equals_the_default_path(steps, first_order):
    a, b = _both(_conv4, _image_batch(), inner_lr=0.1, inner_steps=steps, first_order=first_order)
    _assert_close(a, b)


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("first_order", [False, True])
def test_mlp_equals_the_default_path(steps, first_order):
    a, b = _both(
        _mlp, _regression_batch(), inner_lr=0.1, inner_steps=steps, first_order=first_order
    )
    _assert_close(a, b)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_sgd_equals_the_default_path(first_order):
    a, b = _both(
        _conv4, _image_batch(), cls=MetaSGD, inner_lr=0.1, inner_steps=2, first_order=first_order
    )
    assert len(a[1]) == 2 * len(_conv4().trainable_weights)  # the rates' gradients too
    _assert_close(a, b)


@pytest.mark.parametrize("mode", ["support", "running"])
def test_batch_norm_modes_equal_the_default_path(mode):
    a, b = _both(_conv4, _image_batch(), inner_lr=0.1, inner_steps=2, batch_norm=mode)
    _assert_close(a, b)


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_inner_optimizers_equal_the_default_path(opt):
    a, b = _both(_mlp, _regression_batch(), inner_lr=0.05, inner_steps=3, inner_optimizer=opt)
    _assert_close(a, b, rtol=2e-5)


def test_dropout_draws_the_same_masks_and_leaves_the_generator_as_the_default():
    def model():
        return keras.Sequential(
            [
                keras.layers.Dense(16, activation="tanh", input_shape=(4,)),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(1),
            ]
        )

    batch = _regression_batch()
    out = []
    for ck in (False, True):
        ml.random.set_seed(0)
        learner = MAML(model(), inner_lr=0.3, inner_steps=3, gradient_checkpointing=ck)
        learner._prepare(batch)
        ml.random.set_seed(5)
        loss, grads = learner.meta_gradients(batch)
        out.append(((loss, [np.asarray(g) for g in grads]), ml.random.get_state()))
    _assert_close(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


# -------------------------------------------------------------------------- fit
@pytest.mark.parametrize("mode", ["transductive", "running"])
def test_fit_gives_the_default_weights(mode):
    weights = []
    for ck in (False, True):
        ml.random.set_seed(0)
        learner = MAML(
            _conv4(),
            inner_lr=0.1,
            inner_steps=2,
            # SGD: Adam would turn the conv biases' meta-gradients, rounding noise around
            # zero before a batch norm, into full steps of either sign
            meta_optimizer="sgd",
            meta_lr=0.05,
            batch_norm=mode,
            gradient_checkpointing=ck,
        )
        learner.fit(_image_batch(), iterations=3, meta_batch_size=3, verbose=0)
        weights.append(learner.model.get_weights())  # the moving statistics too
    start = _conv4().get_weights()
    moved = 0
    for a, b, s in zip(*weights, start):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        moved += not np.allclose(a, s)
    assert moved >= len(start) // 2


def test_a_checkpointed_maml_learns_sinusoids():
    ml.random.set_seed(0)
    maml = MAML(
        sinusoid_model(), inner_lr=0.01, inner_steps=1, meta_lr=0.002, gradient_checkpointing=True
    )
    test = Sinusoid(k_shot=10, q_queries=20, seed=99).sample_batch(50)
    before = maml.evaluate(test, steps=[10])[10]["mse"]
    maml.fit(Sinusoid(k_shot=10, seed=0), iterations=1000, meta_batch_size=5, verbose=0)
    after = maml.evaluate(test, steps=[10])[10]["mse"]
    assert after < 0.3 * before


# ----------------------------------------------------------------------- memory
def _small_conv_maml(checkpointing, **kw):
    """MAML with 5 inner steps through a conv4 of 8 filters on 28x28 images, seeded."""
    ml.random.set_seed(0)
    return MAML(
        models.conv4(5, filters=8, input_shape=(28, 28, 1)),
        inner_lr=0.01,
        inner_steps=5,
        gradient_checkpointing=checkpointing,
        **kw,
    )


def _peak_storage(run):
    """The core's tensor storage at its peak above what was live before, over a second
    call of `run` (the first warms the pools and builds the model)."""
    run()
    base = _core._storage_stats(reset_peak=True)["live"]
    run()
    return _core._storage_stats()["peak"] - base


def test_peak_tensor_storage_is_well_below_the_default():
    """The core's storage counter (bytes of tensor storage in use, at their peak) for one
    second-order meta-gradient, conv4 with 5 inner steps, meta-batch 4."""
    batch = _image_batch(tasks=4, hw=28, queries=5)
    peaks = {}
    for ck in (False, True):
        learner = _small_conv_maml(ck)
        peaks[ck] = _peak_storage(lambda: learner.meta_gradients(batch))
    # measured: 7.3x (one inner step's graph or one query's, not 4 tasks x 5 steps); the
    # tasks one at a time without recomputing the steps give 3.5x, so this needs both
    assert peaks[False] >= 5.0 * peaks[True], peaks


# ---------------------------------------------------------- settings, bad input
def test_a_run_resumes_with_either_setting_and_old_fingerprints_still_match(tmp_path):
    learner = MAML(sinusoid_model(8), inner_lr=0.01, gradient_checkpointing=True)
    assert learner.gradient_checkpointing is True
    # no part of the fingerprint: a checkpoint written before the setting existed has
    # the same hyper-parameters as one of a learner with either value
    plain = checkpoint.hyperparameters(MAML(sinusoid_model(8), inner_lr=0.01))
    assert checkpoint.hyperparameters(learner) == plain
    assert not any("checkpointing" in k for k in plain)
    ck = tmp_path / "ck"
    kw = dict(meta_batch_size=2, verbose=0, checkpoint_dir=ck)
    learner.fit(Sinusoid(seed=6), iterations=2, **kw)
    # resumed without it (a machine with more memory): the same run, rounding apart
    resumed = MAML(sinusoid_model(8), inner_lr=0.01)
    resumed.fit(Sinusoid(seed=6), iterations=4, **kw)
    ml.random.set_seed(0)
    straight = MAML(sinusoid_model(8), inner_lr=0.01)
    straight.fit(Sinusoid(seed=6), iterations=4, meta_batch_size=2, verbose=0)
    assert resumed.iterations == 4
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_the_setting_may_be_changed_and_is_checked_the_same_way():
    learner = MAML(_mlp(), vectorize=False)
    learner.gradient_checkpointing = True
    assert learner.gradient_checkpointing is True
    with pytest.raises(TypeError, match="gradient_checkpointing must be True or False"):
        learner.gradient_checkpointing = "no"
    assert learner.gradient_checkpointing is True  # unchanged
    vectorised = MAML(_mlp(), vectorize=True)
    with pytest.raises(ValueError, match="vectorize"):
        vectorised.gradient_checkpointing = True
    assert vectorised.gradient_checkpointing is False
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        ANIL(_mlp()).gradient_checkpointing = True


def test_checkpointing_runs_the_loop_not_the_vectorised_trace():
    learner = MAML(_mlp(), gradient_checkpointing=True)  # "auto" would vectorise an MLP
    learner.fit(_regression_batch(), iterations=2, meta_batch_size=3, verbose=0)
    assert learner._traced_step is None


@pytest.mark.parametrize(
    "value,error", [("yes", TypeError), (1, TypeError), (None, TypeError), (0.0, TypeError)]
)
def test_a_bad_value_is_refused_naming_it(value, error):
    model = _mlp()
    before = model.get_weights()
    with pytest.raises(error, match="gradient_checkpointing must be True or False"):
        MAML(model, gradient_checkpointing=value)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_incompatible_combinations_are_refused():
    with pytest.raises(ValueError, match="vectorize"):
        MAML(_mlp(), vectorize=True, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        ANIL(_mlp(), gradient_checkpointing=True)
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        MAMLPlusPlus(_mlp(), gradient_checkpointing=True)
    MetaSGD(_mlp(), gradient_checkpointing=True)  # covered


def test_data_parallel_runs_the_checkpointed_task_gradients():
    """Under DataParallel each task's gradient is the learner's own: recomputed steps."""
    from metalearn import distributed

    batch = _image_batch(tasks=2, hw=28, queries=5)
    peaks, grads = {}, {}
    for ck in (False, True):
        learner = _small_conv_maml(ck, meta_optimizer="sgd", meta_lr=0.1)
        with distributed.DataParallel().scope():
            peaks[ck] = _peak_storage(
                lambda: learner.fit(batch, iterations=1, meta_batch_size=2, verbose=0)
            )
        grads[ck] = learner.model.get_weights()
    for a, b in zip(grads[False], grads[True]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    # one task at a time either way: what is left is the steps' recomputation (2.7x)
    assert peaks[False] >= 2.0 * peaks[True], peaks
