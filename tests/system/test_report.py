"""Result cards (evaluate(card=...)) and their table (python -m metalearn.report)."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import layers
from metalearn.meta import MAML, ProtoNet
from metalearn.tasks import EpisodeSet, NWayKShot, Sinusoid, Task
from tests.helpers import REPO, sinusoid_model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * 5, 6, 6, 1)).astype(np.float32)
    return x, np.repeat(np.arange(8), 5)


def _protonet():
    ml.random.set_seed(0)
    enc = ml.keras.models.Sequential([layers.Flatten(input_shape=(6, 6, 1)), layers.Dense(5)])
    enc(np.zeros((1, 6, 6, 1), np.float32))
    return ProtoNet(enc, meta_lr=0.003)


def test_a_card_holds_what_the_evaluation_was(tmp_path):
    x, y = _data()
    sampler = NWayKShot((x, y), n_way=3, k_shot=1, q_queries=2)
    frozen = EpisodeSet.draw(sampler, 12, seed=2, name="toy-3w1s")
    learner = _protonet()
    path = tmp_path / "card.json"
    out = learner.evaluate(sampler, episodes=frozen, card=path)
    card = json.loads(path.read_text())
    assert card["format"] == "metalearn.card" and card["version"] == 1
    assert card["algorithm"] == "ProtoNet"
    assert card["hyperparameters"]["meta_lr"] == 0.003
    assert card["hyperparameters"]["distance"] == "euclidean"
    assert card["hyperparameters"]["meta_optimizer"]["class"] == "Adam"
    assert card["backbone"]["parameters"] == 36 * 5 + 5  # Dense(5) on 6*6 inputs
    assert card["backbone"]["layers"] == ["Flatten", "Dense"]
    # the data's checksum, computed here from its definition
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode() + x.tobytes())
    h.update(y.astype(np.int64).tobytes())
    assert card["dataset"]["sha256"] == h.hexdigest()
    assert card["episodes"]["hash"] == frozen.hash and card["episodes"]["name"] == "toy-3w1s"
    assert (card["episodes"]["n_way"], card["episodes"]["k_shot"]) == (3, 1)
    # mean and 95 % interval from the per-episode accuracies, each episode evaluated alone
    acc = []
    for t in frozen:
        one = Task(*(np.asarray(a)[None] for a in t), info={"batched": True})
        acc.append(learner.evaluate(one)["accuracy"])
    (row,) = card["results"]
    assert row["episodes"] == 12 and row["metric"] == "accuracy"
    assert row["mean"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert row["ci95"] == pytest.approx(1.96 * np.std(acc) / np.sqrt(12), abs=1e-12)
    assert (row["mean"], row["ci95"]) == (out["accuracy"], out["ci95"])
    assert card["wall_time_s"] > 0
    assert card["machine"]["platform"] and card["machine"]["cpus"] >= 1
    assert card["metalearn"]["version"] == ml.__version__
    if (REPO / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert card["metalearn"]["commit"] == head


def test_a_step_curve_card_and_a_sampler_card(tmp_path):
    ml.random.set_seed(0)
    learner = MAML(sinusoid_model(0), inner_lr=0.01)
    out = learner.evaluate(Sinusoid(seed=3), episodes=5, steps=[0, 1], card=tmp_path / "c.json")
    card = json.loads((tmp_path / "c.json").read_text())
    assert [r["steps"] for r in card["results"]] == [0, 1]
    assert [r["mean"] for r in card["results"]] == [out[0]["mse"], out[1]["mse"]]
    assert card["episodes"] is None and card["dataset"]["sha256"] is None
    assert "Sinusoid" in card["dataset"]["sampler"]


def test_a_card_that_cannot_be_written_is_refused_before_the_work(tmp_path):
    learner = _protonet()
    calls = []
    learner._adaptation_curve = lambda *a: calls.append(a)  # would run per episode
    with pytest.raises(ValueError, match="does not exist"):
        learner.evaluate(NWayKShot(_data(), n_way=3, q_queries=2), card=tmp_path / "no" / "c.json")
    with pytest.raises(ValueError, match="folder"):
        learner.evaluate(NWayKShot(_data(), n_way=3, q_queries=2), card=tmp_path)
    assert not calls


def _report(*args):
    return subprocess.run(
        [sys.executable, "-m", "metalearn.report", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )


def test_the_report_prints_the_cards_as_a_table(tmp_path):
    x, y = _data()
    sampler = NWayKShot((x, y), n_way=3, k_shot=1, q_queries=2)
    frozen = EpisodeSet.draw(sampler, 10, seed=2)
    learner = _protonet()
    a = learner.evaluate(sampler, episodes=frozen, card=tmp_path / "proto.json")
    ml.random.set_seed(0)
    maml = MAML(sinusoid_model(0))
    b = maml.evaluate(Sinusoid(seed=1), episodes=4, card=tmp_path / "maml.json")
    p = _report(tmp_path / "proto.json", tmp_path / "maml.json")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| card") and set(lines[1]) <= {"|", "-"}
    assert "proto" in lines[2] and "ProtoNet" in lines[2] and "3-way 1-shot" in lines[2]
    assert f"{100 * a['accuracy']:.2f} ± {100 * a['ci95']:.2f} %" in lines[2]
    assert frozen.hash[:8] in lines[2] and "Sequential (185)" in lines[2]
    assert "MAML" in lines[3] and f"mse {b['mse']:.4g}" in lines[3]


def test_the_report_refuses_a_file_that_is_not_a_card(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"accuracy": 0.9}))
    p = _report(bad)
    assert (
        p.returncode == 2 and "other.json" in p.stderr and "not a metalearn result card" in p.stderr
    )
    (tmp_path / "junk.json").write_bytes(b"\xff{")
    p = _report(tmp_path / "junk.json")
    assert p.returncode == 2 and "junk.json" in p.stderr


def test_shipped_cards_read_and_name_a_clean_commit():
    """Every card in docs/cards (the README's reproduction rows) is a card this version
    reads, made from a committed checkout (not a dirty tree), with a finite result whose
    interval is given; a card edited by hand into another shape fails here."""
    from metalearn import report

    paths = sorted((REPO / "docs" / "cards").glob("*.json"))
    assert len(paths) >= 20, paths
    for path in paths:
        card = report.read_card(path)
        assert len(card["metalearn"]["commit"]) == 40, path
        assert card["metalearn"]["dirty"] is False, path
        assert card["results"], path
        for r in card["results"]:
            assert np.isfinite(r["mean"]), (path, r)
            assert r.get("ci95") is not None or r.get("interval"), (path, r)
    text = report.table([report.read_card(p) for p in paths], [p.stem for p in paths])
    assert text.count("\n") >= len(paths)
