"""Bad input to the newer meta-learners (MAML++, iMAML, Meta-Curvature, Matching, Relation
Networks, R2D2, MetaOptNet): wrong shapes, dtypes, labels, non-finite values and
out-of-range hyper-parameters raise a clear Python exception naming what was wrong, and
change nothing: the weights, the meta-parameters (MAML++'s rates, the curvatures, R2D2's
lambda and scale), the optimizer's step and the learner's iteration count.

Non-finite values in a training batch are values, as in Keras (the meta-loss turns NaN);
under ``metalearn.debugging.enable_check_numerics()`` the step is refused before the
update. A support set given to ``adapt`` is checked always (its weights would be NaN)."""

import re
import warnings

import numpy as np
import pytest

import metalearn as ml
from metalearn import debugging, keras
from metalearn.keras import layers
from metalearn.meta import (
    ANIL,
    IMAML,
    MAML,
    MAMLPlusPlus,
    MatchingNet,
    MetaCurvature,
    MetaOptNet,
    MetaSGD,
    R2D2,
    RelationNet,
    Reptile,
)
from metalearn.tasks import Task

NAN, INF = float("nan"), float("inf")


def _regressor():
    ml.random.set_seed(0)
    return keras.Sequential(
        [keras.Input((1,)), layers.Dense(8, activation="relu"), layers.Dense(1)]
    )


def _encoder():
    ml.random.set_seed(0)
    return keras.Sequential([keras.Input((4,)), layers.Dense(6)])


REGRESSION = {
    "MAML++": lambda: MAMLPlusPlus(_regressor(), inner_steps=2),
    "iMAML": lambda: IMAML(_regressor(), inner_steps=2, cg_steps=2),
    "MetaCurvature": lambda: MetaCurvature(_regressor()),
}
CLASSIFICATION = {
    "MatchingNet": lambda: MatchingNet(_encoder()),
    "RelationNet": lambda: RelationNet(_encoder()),
    "R2D2": lambda: R2D2(_encoder()),
    "MetaOptNet": lambda: MetaOptNet(_encoder(), solver_steps=5),
}
LEARNERS = {**REGRESSION, **CLASSIFICATION}


def _batch(name):
    """Two tasks: 5 sinusoid points, or 3-way 2-shot episodes of 4 features."""
    rng = np.random.default_rng(0)
    if name in REGRESSION:
        x = rng.standard_normal((2, 5, 1)).astype(np.float32)
        return Task(x, np.sin(x), x.copy(), np.sin(x))
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(3), 2), (2, 1))
    return Task(x, y, x.copy(), y.copy())


def _trained(name):
    """The learner after one meta-step (the optimizer has state to keep)."""
    learner = LEARNERS[name]()
    _fit(learner, name)
    return learner


def _snapshot(learner):
    arrays = [np.array(w) for w in learner.model.weights]
    arrays += [np.array(p) for p in learner._meta_params()]
    return arrays, int(learner.meta_optimizer.iterations), learner.iterations


def _assert_unchanged(before, learner):
    after = _snapshot(learner)
    assert before[1:] == after[1:], "the optimizer step or the iteration count moved"
    assert len(before[0]) == len(after[0])
    for a, b in zip(before[0], after[0]):
        np.testing.assert_array_equal(a, b)


def _fit(learner, name, **replace):
    """fit on the good batch with some arrays replaced (a function of the good one)."""
    t = _batch(name)._asdict()
    t.update({k: f(t[k]) for k, f in replace.items()})
    tasks = [Task(*(t[k][i] for k in Task._fields)) for i in range(2)]
    learner.fit(Task.batch(tasks), iterations=1, meta_batch_size=2, verbose=0)


def _support(name, **replace):
    t = _batch(name)
    sx, sy = t.support_x[0], t.support_y[0]
    return replace.get("x", lambda a: a)(sx), replace.get("y", lambda a: a)(sy)


# ---------------------------------------------------------------- calls on a trained learner
# (id, learners, call(learner, name), exception, regex naming what was wrong)
CALLS = [
    # adapt: every learner
    (
        "adapt_nan_support",
        LEARNERS,
        lambda l, n: l.adapt(*_support(n, x=lambda a: np.where(a > 0, NAN, a))),
        ValueError,
        r"adapt: support_x holds \d+ NaN or inf",
    ),
    (
        "adapt_inf_support_y",
        REGRESSION,
        lambda l, n: l.adapt(*_support(n, y=lambda a: np.full_like(a, INF))),
        ValueError,
        r"adapt: support_y holds 5 NaN or inf",
    ),
    (
        "adapt_labels_fewer_than_examples",
        LEARNERS,
        lambda l, n: l.adapt(*_support(n, y=lambda a: a[:-2])),
        ValueError,
        r"adapt: support_x has shape \((5, 1|6, 4)\) but support_y \((3, 1|4),?\)",
    ),
    (
        "adapt_complex_support",
        LEARNERS,
        lambda l, n: l.adapt(*_support(n, x=lambda a: a + 1j)),
        TypeError,
        r"adapt: support_x must hold real numbers, got dtype complex",
    ),
    (
        "adapt_wrong_feature_count",
        LEARNERS,
        lambda l, n: l.adapt(*_support(n, x=lambda a: np.concatenate([a, a], -1))),
        ValueError,
        r"(expected input with last dimension (1|4), got \(\d+, (2|8)\)"
        r"|support_x examples have shape \((2|8),\) \((2|8) values\), but the model takes "
        r"inputs of shape \((1|4),\) \((1|4) values\))",
    ),
    (
        "adapt_negative_steps",
        LEARNERS,
        lambda l, n: l.adapt(*_support(n), steps=-1),
        ValueError,
        r"adapt: steps must be >= 0, got -1",
    ),
    (
        "adapt_fractional_steps",
        REGRESSION,
        lambda l, n: l.adapt(*_support(n), steps=1.5),
        TypeError,
        r"adapt: steps must be an integer, got float 1.5",
    ),
    # fit: what every learner refuses
    (
        "fit_complex_support",
        LEARNERS,
        lambda l, n: _fit(l, n, support_x=lambda a: a + 1j),
        TypeError,
        r"complex",
    ),
    # the MAML family (vectorised or not): the shape the model takes is named, not a
    # product's operands
    (
        "fit_wrong_feature_count",
        REGRESSION,
        lambda l, n: _fit(l, n, support_x=lambda a: np.concatenate([a, a], -1)),
        ValueError,
        r"support_x examples have shape \(2,\) \(2 values\), but the model takes inputs "
        r"of shape \(1,\) \(1 values\)",
    ),
    (
        "fit_query_feature_count",
        REGRESSION,
        lambda l, n: _fit(l, n, query_x=lambda a: np.concatenate([a, a], -1)),
        ValueError,
        r"support_x and query_x examples must have one shape, got \(1,\) and \(2,\)",
    ),
    # the metric learners' episodes
    (
        "fit_support_query_shapes_differ",
        CLASSIFICATION,
        lambda l, n: _fit(l, n, query_x=lambda a: a[..., :3]),
        ValueError,
        r"support_x and query_x examples must have one shape, got \(4,\) and \(3,\)",
    ),
    # fit: labels and inputs that differ in number, per task (every learner)
    (
        "fit_fewer_support_labels",
        LEARNERS,
        lambda l, n: _fit(l, n, support_y=lambda a: a[:, :4]),
        ValueError,
        r"fit: support_x has shape \(2, (5, 1|6, 4)\) but support_y \(2, 4(, 1)?\)",
    ),
    (
        "fit_fewer_query_labels",
        LEARNERS,
        lambda l, n: _fit(l, n, query_y=lambda a: a[:, :4]),
        ValueError,
        r"fit: query_x has shape \(2, (5, 1|6, 4)\) but query_y \(2, 4(, 1)?\)",
    ),
    # the metric learners' public episode calls check their own arrays
    (
        "episode_fewer_support_labels",
        CLASSIFICATION,
        lambda l, n: l.episode_loss(_support(n)[0], _support(n)[1][:4], *_support(n)),
        ValueError,
        r"6 support examples but 4 labels",
    ),
    (
        "episode_fewer_query_labels",
        CLASSIFICATION,
        lambda l, n: l.episode_loss(*_support(n), _support(n)[0], _support(n)[1][:4]),
        ValueError,
        r"4 labels for (predictions|scores) of shape \(6, 3\) \(expected 6\)",
    ),
    (
        "fit_fractional_support_labels",
        CLASSIFICATION,
        lambda l, n: _fit(l, n, support_y=lambda a: a + 0.5),
        ValueError,
        r"support_y must hold integer labels, got dtype float",
    ),
    (
        "fit_negative_support_label",
        CLASSIFICATION,
        lambda l, n: _fit(l, n, support_y=lambda a: np.where(a == 0, -1, a)),
        ValueError,
        r"labels must lie in 0\.\.2, got -1\.\.2",
    ),
    (
        "fit_class_without_support",
        CLASSIFICATION,
        lambda l, n: _fit(l, n, support_y=lambda a: np.where(a == 1, 2, a)),
        ValueError,
        r"class 1 has no support example",
    ),
    (
        "fit_negative_query_label",
        CLASSIFICATION,
        lambda l, n: _fit(l, n, query_y=lambda a: a - 1),
        ValueError,
        r"label -1 .*outside \[0, 3\)|labels must lie in 0\.\.2, got -1",
    ),
    (
        "fit_query_label_past_n_way",
        CLASSIFICATION,
        lambda l, n: _fit(l, n, query_y=lambda a: a + 5),
        ValueError,
        r"label 5 .*outside \[0, 3\)|labels must lie in 0\.\.2, got 5",
    ),
]


def _rows(table):
    return [
        pytest.param(name, call, exc, regex, id=f"{id_}-{name}")
        for id_, names, call, exc, regex in table
        for name in names
    ]


@pytest.mark.parametrize("name, call, exc, regex", _rows(CALLS))
def test_bad_call_raises_and_changes_nothing(name, call, exc, regex):
    learner = _trained(name)
    before = _snapshot(learner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (numpy's ComplexWarning is not the refusal)
        with pytest.raises(exc, match=re.compile(regex)):
            call(learner, name)
    _assert_unchanged(before, learner)


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("where", ["support_x", "query_y"])
def test_non_finite_batch_is_refused_under_check_numerics(name, where):
    learner = _trained(name)
    before = _snapshot(learner)
    debugging.enable_check_numerics()
    try:
        poison = lambda a: np.where(a > 0, NAN, a) if where == "support_x" else a  # noqa: E731
        with pytest.raises(debugging.NonFiniteError, match="not applied"):
            if where == "query_y" and name in CLASSIFICATION:
                _fit(learner, name, query_x=lambda a: np.full_like(a, INF))
            elif where == "query_y":
                _fit(learner, name, query_y=lambda a: np.full_like(a, INF))
            else:
                _fit(learner, name, support_x=poison)
    finally:
        debugging.disable_check_numerics()
    _assert_unchanged(before, learner)


# ---------------------------------------------------------------- hyper-parameters
SETTINGS = [
    ("MAML++", dict(meta_lr=-1), ValueError, r"meta_lr must be a finite number >= 0, got -1"),
    ("MAML++", dict(meta_lr=NAN), ValueError, r"meta_lr must be a finite number >= 0, got nan"),
    ("MAML++", dict(inner_lr=-0.1), ValueError, r"inner_lr must be a finite number >= 0"),
    ("MAML++", dict(inner_steps=0), ValueError, r"inner_steps must be >= 1, got 0"),
    ("MAML++", dict(inner_steps=2.5), TypeError, r"inner_steps must be an integer"),
    ("MAML++", dict(msl_epochs=0), ValueError, r"msl_epochs must be >= 1, got 0"),
    ("MAML++", dict(min_meta_lr=INF), ValueError, r"min_meta_lr must be a finite number"),
    ("MAML++", dict(min_meta_lr=0.01), ValueError, r"min_meta_lr \(0.01\) must be <= meta_lr"),
    ("MAML++", dict(epoch_length=0), ValueError, r"epoch_length must be >= 1, got 0"),
    ("MAML++", dict(batch_norm="batch"), ValueError, r"batch_norm must be one of"),
    ("MAML++", dict(per_step_bn_weights=True), ValueError, r"per_step_bn_weights=True needs"),
    ("iMAML", dict(lam=0), ValueError, r"lam must be > 0, got 0"),
    ("iMAML", dict(lam=NAN), ValueError, r"lam must be a finite number >= 0, got nan"),
    ("iMAML", dict(cg_steps=0), ValueError, r"cg_steps must be >= 1, got 0"),
    ("iMAML", dict(cg_steps=1.5), TypeError, r"cg_steps must be an integer"),
    ("iMAML", dict(inner_lr=INF), ValueError, r"inner_lr must be a finite number >= 0, got inf"),
    ("MetaCurvature", dict(inner_lr=NAN), ValueError, r"inner_lr must be a finite number"),
    ("MetaCurvature", dict(inner_steps=-1), ValueError, r"inner_steps must be >= 0, got -1"),
    ("MetaCurvature", dict(vectorize="yes"), ValueError, r"vectorize must be 'auto', True or"),
    ("MetaCurvature", dict(meta_lr=INF), ValueError, r"meta_lr must be a finite number"),
    ("R2D2", dict(lam=-1), ValueError, r"lam must be a finite number >= 0, got -1"),
    ("R2D2", dict(lam=0), ValueError, r"lam must be > 0"),
    ("R2D2", dict(scale=INF), ValueError, r"scale must be finite, got inf"),
    ("R2D2", dict(scale="1"), TypeError, r"scale must be a number, got str"),
    ("R2D2", dict(learn_lambda=1), TypeError, r"learn_lambda must be True or False"),
    ("MetaOptNet", dict(C=0), ValueError, r"C must be > 0, got 0"),
    ("MetaOptNet", dict(C=INF), ValueError, r"C must be a finite number >= 0, got inf"),
    ("MetaOptNet", dict(solver_steps=0), ValueError, r"solver_steps must be >= 1, got 0"),
    ("MetaOptNet", dict(ridge=NAN), ValueError, r"ridge must be a finite number >= 0"),
    ("MetaOptNet", dict(learn_scale="y"), TypeError, r"learn_scale must be True or False"),
    ("MatchingNet", dict(meta_lr=NAN), ValueError, r"meta_lr must be a finite number"),
    # (the optimizer's name is resolved for every learner alike, without the learner's)
    ("MatchingNet", dict(meta_optimizer="adamx"), ValueError, r"^meta_optimizer must be .*'adamx'"),
    ("RelationNet", dict(relation=3), TypeError, r"relation must be a Keras model, got int"),
    ("RelationNet", dict(meta_lr=-1), ValueError, r"meta_lr must be a finite number >= 0"),
    # a switch takes True or False only: "False", 0/1 or None would have switched it by
    # Python truthiness ("False" is true) without a word
    (
        "MAML",
        dict(first_order="False"),
        TypeError,
        r"first_order must be True or False, got 'False'",
    ),
    ("MAML", dict(first_order=1), TypeError, r"first_order must be True or False, got 1"),
    ("MAML", dict(trace=None), TypeError, r"trace must be True or False, got None"),
    ("MetaSGD", dict(first_order=0), TypeError, r"first_order must be True or False, got 0"),
    ("ANIL", dict(first_order="yes"), TypeError, r"first_order must be True or False"),
    ("Reptile", dict(trace="no"), TypeError, r"trace must be True or False, got 'no'"),
    ("MetaCurvature", dict(first_order=1.0), TypeError, r"first_order must be True or False"),
    ("MetaCurvature", dict(trace="True"), TypeError, r"trace must be True or False"),
    ("MAML++", dict(first_order="no"), TypeError, r"first_order must be True or False"),
]
CLASSES = {
    "MAML": (MAML, _regressor),
    "MetaSGD": (MetaSGD, _regressor),
    "ANIL": (ANIL, _regressor),
    "Reptile": (Reptile, _regressor),
    "MAML++": (MAMLPlusPlus, _regressor),
    "iMAML": (IMAML, _regressor),
    "MetaCurvature": (MetaCurvature, _regressor),
    "R2D2": (R2D2, _encoder),
    "MetaOptNet": (MetaOptNet, _encoder),
    "MatchingNet": (MatchingNet, _encoder),
    "RelationNet": (RelationNet, _encoder),
}


@pytest.mark.parametrize(
    "name, kw, exc, regex",
    [pytest.param(*row, id=f"{row[0]}-{'-'.join(map(str, row[1].items()))}") for row in SETTINGS],
)
def test_bad_setting_raises_naming_it_and_the_learner(name, kw, exc, regex):
    cls, make = CLASSES[name]
    model = make()
    before = [np.array(w) for w in model.weights]
    pattern = regex if regex.startswith("^") else f"{cls.__name__}: {regex}"
    with pytest.raises(exc, match=re.compile(pattern)):
        cls(model, **kw)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))  # the model is left as it was


@pytest.mark.parametrize("flag", ["keep_best", "remember"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_fit_switch_takes_true_or_false_only(flag, value):
    """fit(keep_best="yes") used to fail with "keep_best=True needs validation tasks" (a
    string is true); MetaLearner.fit(remember=0) silently stored nothing. Both now name
    the switch, and nothing trains."""
    from metalearn.meta import MetaLearner

    if flag == "keep_best":
        learner = MAML(_regressor())
        fit, who = learner.fit, "fit"
    else:
        learner = MetaLearner(algorithm=MAML(_regressor()), memory_capacity=4)
        fit, who = learner.fit, "MetaLearner.fit"
    algorithm = getattr(learner, "algorithm", learner)
    before = [np.array(w) for w in algorithm.model.weights]
    with pytest.raises(TypeError, match=rf"^{who}: {flag} must be True or False, got {value!r}"):
        fit(_batch("MAML++"), iterations=1, meta_batch_size=2, verbose=0, **{flag: value})
    assert algorithm.iterations == 0
    for a, b in zip(before, algorithm.model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


METALEARNER_SETTINGS = [
    (dict(n_way=0), ValueError, r"n_way must be >= 1, got 0"),
    (dict(n_way=2.5), TypeError, r"n_way must be an integer, got float 2.5"),
    (dict(n_way="5"), TypeError, r"n_way must be an integer, got str '5'"),
    (dict(hidden_units="128"), TypeError, r"hidden_units must be an integer"),
    (dict(hidden_units=0), ValueError, r"hidden_units must be >= 1, got 0"),
    (dict(inner_steps=-1), ValueError, r"inner_steps must be >= 0, got -1"),
    (dict(memory_capacity=0), ValueError, r"memory_capacity must be >= 1, got 0"),
    (dict(recall_k=1.0), TypeError, r"recall_k must be an integer"),
    (dict(knowledge_steps=-2), ValueError, r"knowledge_steps must be >= 0, got -2"),
    (dict(predictor_lr=NAN), ValueError, r"predictor_lr must be a finite number >= 0, got nan"),
    (dict(predictor_buffer=0), ValueError, r"predictor_buffer must be >= 1, got 0"),
    (dict(predictor_batch=None), TypeError, r"predictor_batch must be an integer"),
    (dict(seed=-1), ValueError, r"seed must be >= 0, got -1"),
    (dict(warm_start_threshold="0.8"), TypeError, r"warm_start_threshold must be a number"),
    (dict(warm_start_threshold=INF), ValueError, r"warm_start_threshold must be finite"),
    (dict(auto_max_steps=0), ValueError, r"auto_max_steps must be >= 1, got 0"),
    (dict(auto_epsilon=-0.1), ValueError, r"auto_epsilon must be a finite number >= 0"),
]


@pytest.mark.parametrize(
    "kw, exc, regex",
    [pytest.param(*row, id="-".join(map(str, row[0].items()))) for row in METALEARNER_SETTINGS],
)
def test_metalearner_bad_setting_names_it(kw, exc, regex):
    from metalearn.meta import MetaLearner

    with pytest.raises(exc, match=rf"^MetaLearner: {regex}"):
        MetaLearner(**{"n_way": 5, **kw})


def test_metalearner_algorithm_given_as_n_way_says_where_it_goes():
    """MetaLearner(MAML(model)) put the algorithm in n_way, and int() said "int() argument
    must be a string, a bytes-like object or a real number, not 'MAML'"."""
    from metalearn.meta import MetaLearner

    with pytest.raises(TypeError, match=r"n_way must be an integer, got a MAML .*algorithm="):
        MetaLearner(MAML(_regressor()))


@pytest.mark.parametrize("name", ["MAML", "FOMAML", "MetaSGD", "ANIL", "Reptile"])
@pytest.mark.parametrize("field", ["support_x", "query_x"])
def test_vectorised_maml_family_names_a_wrong_input_width(name, field):
    """The vectorised meta-step used to fail inside the first layer's batched product
    ("matmul: shapes (1, 2, 5, 2) and (1, 1, 8) do not align"); the task's shapes are
    now checked against the model's input before anything runs."""
    from metalearn import meta

    make = {
        "MAML": lambda m: meta.MAML(m),
        "FOMAML": lambda m: meta.MAML(m, first_order=True),
        "MetaSGD": lambda m: meta.MetaSGD(m),
        "ANIL": lambda m: meta.ANIL(m),
        "Reptile": lambda m: meta.Reptile(m),
    }[name]
    learner = make(_regressor())
    _fit(learner, "MAML++")  # the regression batch
    before = _snapshot(learner)
    wide = {field: lambda a: np.concatenate([a, a], -1)}
    regex = (
        r"support_x examples have shape \(2,\) \(2 values\), but the model takes inputs of "
        r"shape \(1,\)"
        if field == "support_x"
        else r"support_x and query_x examples must have one shape, got \(1,\) and \(2,\)"
    )
    with pytest.raises(ValueError, match=regex):
        _fit(learner, "MAML++", **wide)
    _assert_unchanged(before, learner)
