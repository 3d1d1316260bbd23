"""Result cards for every row of the README's reproduction table (issue 23): the rows that
benchmarks/memory_results.py, metacurvature_sinusoid.py, metaoptnet.py and predictor.py
make write a card with --cards, in evaluate's card format, through one function
(reproduce.write_row_card / reproduce.card_path); report.result and report.correlation
make the rows measured outside evaluate (memory lookup, warm start, a Spearman
correlation) and python -m metalearn.report prints them with their metric and interval."""

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import metalearn as ml
from metalearn import report
from metalearn.meta import MAML
from metalearn.meta.models import has_conv
from metalearn.tasks import Sinusoid
from tests.helpers import REPO, needs_omniglot, sinusoid_model


def _sha(x, y):
    """A dataset's hash as the card format defines it: x's dtype, shape, bytes; y int64."""
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{tuple(x.shape)}".encode())
    h.update(np.ascontiguousarray(x).data)
    h.update(np.ascontiguousarray(y, dtype=np.int64).data)
    return h.hexdigest()


def _script(name, *args, timeout=300):
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=timeout,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _card(folder, name):
    card = report.read_card(folder / f"{name}.json")  # refuses a file that is no card
    assert card["metalearn"]["version"] == ml.__version__ and card["machine"]["cpus"] >= 1
    assert card["wall_time_s"] > 0
    return card


def _rows(card):
    return {r.get("label"): r for r in card["results"]}


# ------------------------------------------------------------------ the rows' functions


def test_a_result_row_is_the_mean_and_evaluates_interval():
    v = [1.0, 0.5, 0.75, 0.25, 1.0]
    r = report.result(v, "accuracy", steps=1, label="with", loss=[0.1, 0.3])
    want_ci = 1.96 * np.std(v) / math.sqrt(5)  # 1.96 standard errors, as evaluate's
    assert r["mean"] == pytest.approx(0.7) and r["ci95"] == pytest.approx(want_ci)
    assert (r["metric"], r["steps"], r["label"], r["episodes"]) == ("accuracy", 1, "with", 5)
    assert r["loss"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no values"):
        report.result([], "accuracy")
    with pytest.raises(ValueError, match="metric"):
        report.result([1.0], "")


def test_a_correlation_row_has_its_fisher_z_interval():
    r = report.correlation(0.537, 400, label="predicted vs achieved")
    # Fisher's z with Bonett & Wright's variance 1.06 / (n - 3) for Spearman's rho
    half = 1.96 * math.sqrt(1.06 / 397)
    lo, hi = math.tanh(math.atanh(0.537) - half), math.tanh(math.atanh(0.537) + half)
    assert r["interval"] == pytest.approx([lo, hi]) and lo < 0.537 < hi
    assert r["metric"] == "spearman" and r["ci95"] is None and r["episodes"] == 400
    p = report.correlation(0.5, 28, "pearson")["interval"]
    assert p == pytest.approx([math.tanh(math.atanh(0.5) + s * 1.96 / 5) for s in (-1, 1)])
    assert report.correlation(0.3, 3)["interval"] is None  # too few tasks for one
    with pytest.raises(ValueError, match="rho"):
        report.correlation(1.5, 10)
    with pytest.raises(ValueError, match="metric"):
        report.correlation(0.5, 10, "kendall")


def test_make_card_refuses_a_row_without_its_metric():
    ml.random.set_seed(0)
    maml = MAML(sinusoid_model(0))
    with pytest.raises(ValueError, match="report.result"):
        report.make_card(maml, Sinusoid(seed=1), [{"mean": 0.5}], 1.0)


def test_a_task_batch_card_holds_the_batch_hash_not_its_numbers(tmp_path):
    ml.random.set_seed(0)
    maml = MAML(sinusoid_model(0))
    batch = Sinusoid(k_shot=5, q_queries=7, seed=3).sample_batch(6)
    maml.evaluate(batch, card=tmp_path / "c.json")
    card = json.loads((tmp_path / "c.json").read_text())
    h = hashlib.sha256()
    for a in batch[:4]:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
        h.update(a.data)
    assert card["dataset"]["sha256"] == h.hexdigest()
    assert card["dataset"]["task_batch"] == [[6, 5, 1], [6, 5, 1], [6, 7, 1], [6, 7, 1]]
    assert "sampler" not in card["dataset"]
    # and a sampler's card says its seed
    maml.evaluate(Sinusoid(seed=11), episodes=2, card=tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["dataset"]["seed"] == 11


def test_the_report_prints_labels_gains_and_correlations(tmp_path):
    ml.random.set_seed(0)
    maml = MAML(sinusoid_model(0))
    rows = [
        report.result([1.0, 0.5], "accuracy", steps=1, label="with warm start"),
        report.result([0.25, 0.0], "accuracy_gain", steps=1, label="paired difference"),
        report.correlation(0.6, 100, label="predicted vs achieved"),
    ]
    card = report.make_card(maml, Sinusoid(seed=1), rows, 2.0, setting={"task": "5-way 1-shot"})
    report.write_card(tmp_path / "w.json", card)
    p = subprocess.run(
        [sys.executable, "-m", "metalearn.report", str(tmp_path / "w.json")],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()[2:]
    assert "with warm start, 1" in lines[0] and "75.00 ± 34.65 %" in lines[0]
    assert "5-way 1-shot" in lines[0]  # the setting's task where no episode set says it
    assert "paired difference, 1" in lines[1] and "+12.50 ± 17.32 points" in lines[1]
    lo, hi = report.correlation(0.6, 100)["interval"]
    assert f"spearman 0.600 [{lo:.3f}, {hi:.3f}]" in lines[2]
    assert "| predicted vs achieved " in lines[2]  # no step count for a correlation


# ------------------------------------------------------------------ each script's cards


@pytest.fixture(scope="module")
def omniglot_test_sha():
    from metalearn.datasets import omniglot

    x, y = omniglot(split="vinyals_test")
    xtr, ytr = omniglot(split="vinyals_trainval")
    return _sha(np.asarray(x), np.asarray(y)), _sha(np.asarray(xtr), np.asarray(ytr))


@needs_omniglot
@pytest.mark.skipif(not has_conv(), reason="no conv ops")
def test_memory_results_writes_a_card_per_row(tmp_path, omniglot_test_sha):
    test_sha, train_sha = omniglot_test_sha
    out = _script("memory_results.py", "--quick", "--threads", "1", "--cards", tmp_path)
    for n_way in (5, 20):
        card = _card(tmp_path, f"memory_lookup-omniglot-{n_way}w1s")
        assert card["algorithm"].startswith("KnowledgeMemory lookup")
        assert card["backbone"]["class"] == "Sequential" and card["backbone"]["parameters"] > 0
        assert card["dataset"]["sha256"] == test_sha and card["dataset"]["seed"] == 100 + n_way
        assert card["setting"]["task"] == f"{n_way}-way 1-shot"
        (row,) = card["results"]
        assert (row["metric"], row["steps"], row["episodes"]) == ("accuracy", 0, 20)
        printed = f"{n_way:2d}-way 1-shot by memory lookup: {100 * row['mean']:.1f} ± "
        assert printed + f"{100 * row['ci95']:.1f} %" in out
        assert card["machine"]["threads"] == 1
    for name in ("warm_start", "warm_start_conv"):  # keys from the body, from a's encoder
        card = _card(tmp_path, f"{name}-omniglot-5w1s")
        assert card["algorithm"] == "MetaLearner (MAML) with memory warm start"
        assert card["dataset"]["sha256"] == train_sha  # held-out drawings of training classes
        assert card["setting"]["novel_tasks"]["dataset_sha256"] == test_sha
        assert card["dataset"]["sampler"].startswith(
            "RecurringTasks(n_way=5, k_shot=1, q_queries=4"
        )
        assert card["dataset"]["seed"] == 2
        assert card["hyperparameters"]["inner_lr"] == 0.4 and card["meta_iterations"] == 20
        r = _rows(card)
        gain = r["recurring, paired difference"]
        assert gain["metric"] == "accuracy_gain" and gain["episodes"] == 20
        with_m, without = r["recurring, with warm start"], r["recurring, without"]
        assert gain["mean"] == pytest.approx(with_m["mean"] - without["mean"])
        assert {"novel, with warm start", "novel, without"} <= set(r)
    for name in ("memory_predictor", "memory_predictor_conv"):
        card = _card(tmp_path, f"{name}-omniglot-5w1s")
        rho = _rows(card)["predicted vs achieved"]
        assert rho["metric"] == "spearman" and rho["episodes"] == 20 and rho["ci95"] is None
        assert card["dataset"]["sha256"] == test_sha
        assert (
            card["dataset"]["sampler"]
            == "VariedTasks(n_way=5, k_shot=1, q_queries=15, max_noise=0.5)"
        )
        assert f"Spearman {rho['mean']:.3f} between" in out
        lo, hi = rho["interval"]
        assert lo < rho["mean"] < hi
    table = subprocess.run(
        [sys.executable, "-m", "metalearn.report", *sorted(map(str, tmp_path.glob("*.json")))],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )
    assert table.returncode == 0 and "spearman" in table.stdout and "points" in table.stdout


@needs_omniglot
def test_predictor_writes_its_card(tmp_path, omniglot_test_sha):
    out = _script("predictor.py", "--quick", "--seed", "1", "--threads", "1", "--cards", tmp_path)
    card = _card(tmp_path, "predictor-omniglot-5w1s-seed1")
    assert card["dataset"]["sha256"] == omniglot_test_sha[0]
    assert card["setting"]["raw"] is False and card["setting"]["iterations"] == 20
    assert card["hyperparameters"]["seed"] == 1
    r = _rows(card)
    rho = r["predicted vs achieved"]
    assert rho["metric"] == "spearman" and rho["episodes"] == 20
    assert f"Spearman {rho['mean']:.3f} of predicted vs achieved" in out
    assert r["achieved"]["metric"] == "accuracy" and r["achieved"]["steps"] == 1
    # the ceiling of a predictor blind to the query set: sqrt of the reliability, inside
    # its bootstrap interval, printed beside the predictor's own Pearson correlation
    ceiling, pearson = r["ceiling"], r["predicted"]
    assert ceiling["metric"] == "pearson" == pearson["metric"] and ceiling["episodes"] == 20
    assert ceiling["mean"] == pytest.approx(math.sqrt(max(ceiling["reliability"], 0.0)))
    lo, hi = ceiling["interval"]
    assert 0.0 <= lo <= hi <= 1.0
    assert f"ceiling of a predictor blind to the query set {ceiling['mean']:.3f}" in out
    assert f"this predictor's Pearson {pearson['mean']:.3f}" in out
    ablation = {k: v for k, v in r.items() if k.startswith("ablation: ")}
    assert "ablation: all features" in ablation
    for k, v in ablation.items():
        assert f"ablation, {k[10:]:48s}: Spearman {v['mean']:.3f}" in out


def test_metacurvature_sinusoid_writes_a_card_per_learner(tmp_path):
    out = _script("metacurvature_sinusoid.py", "--quick", "--threads", "1", "--cards", tmp_path)
    test = Sinusoid(k_shot=10, q_queries=100, seed=1).sample_batch(600)
    h = hashlib.sha256()
    for a in test[:4]:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
        h.update(a.data)
    for cls in ("MAML", "MetaCurvature"):
        card = _card(tmp_path, f"metacurvature_sinusoid-{cls.lower()}")
        assert card["algorithm"] == cls and card["meta_iterations"] == 200
        assert card["dataset"]["sha256"] == h.hexdigest()
        assert [r["steps"] for r in card["results"]] == [0, 1, 10]
        assert {r["metric"] for r in card["results"]} == {"mse"}
        assert {r["episodes"] for r in card["results"]} == {600}
        cells = " | ".join(f"{r['mean']:.3f} ± {r['ci95']:.3f}" for r in card["results"])
        assert cells in " | ".join(s.strip() for s in out.split("|"))


@needs_omniglot
def test_metacurvature_omniglot_writes_its_card(tmp_path, omniglot_test_sha):
    argv = ["--omniglot", "--quick", "--learner", "maml", "--threads", "1", "--cards", tmp_path]
    _script("metacurvature_sinusoid.py", *argv)
    card = _card(tmp_path, "metacurvature_omniglot-maml-5w1s")
    assert card["algorithm"] == "MAML" and card["meta_iterations"] == 20
    assert card["dataset"]["sha256"] == omniglot_test_sha[0]
    (row,) = card["results"]
    assert (row["metric"], row["steps"], row["episodes"]) == ("accuracy", 3, 2)
    assert not (tmp_path / "metacurvature_omniglot-metacurvature-5w1s.json").exists()


@needs_omniglot
@pytest.mark.skipif(not has_conv(), reason="no conv ops")
def test_metaoptnet_run_writes_its_cards_beside_reproduces(tmp_path, omniglot_test_sha):
    argv = ["run", "--quick", "--budget", "1e-9", "--ridge", "1.0", "--cards", tmp_path]
    _script("metaoptnet.py", *argv)
    m = _card(tmp_path, "metaoptnet_conv4-omniglot-5w1s-1e-09s-ridge1")
    p = _card(tmp_path, "protonet_conv4_budget-omniglot-5w1s-1e-09s")
    assert (m["algorithm"], p["algorithm"]) == ("MetaOptNet", "ProtoNet")
    assert m["hyperparameters"]["ridge"] == 1.0 and m["hyperparameters"]["C"] == 0.1
    for card in (m, p):
        assert card["meta_iterations"] == 1  # the budget is spent by the first iteration
        assert card["dataset"]["sha256"] == omniglot_test_sha[0]
        (row,) = card["results"]
        assert (row["metric"], row["episodes"]) == ("accuracy", 2)
    # reproduce.py's own metaoptnet_conv4 row keeps its card's name
    assert not (tmp_path / "metaoptnet_conv4-omniglot-5w1s.json").exists()


def test_reproduce_card_tag_keeps_two_runs_of_a_row_apart(tmp_path):
    argv = ["--quick", "--only", "maml_sinusoid", "--cards", tmp_path]
    _script("reproduce.py", *argv, "--card-tag=-short")  # = : the tag starts with -
    assert [p.name for p in tmp_path.iterdir()] == ["maml_sinusoid-short.json"]
    card = _card(tmp_path, "maml_sinusoid-short")
    assert card["algorithm"] == "MAML" and [r["metric"] for r in card["results"]] == ["mse"] * 3
    assert len(json.dumps(card)) < 20_000  # the test batch's hash, not its numbers
