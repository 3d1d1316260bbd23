"""benchmarks/reproduce.py's rows trained by time (issues 23 and 25): each runs in --quick
mode and writes a result card; a run cut into chunks with exact resume ends with the
numbers of the same run made in one go; a spent --budget is not trained past."""

import json

import pytest

from metalearn.meta.models import has_conv
from tests.helpers import REPO, load_script, needs_omniglot

pytestmark = [needs_omniglot, pytest.mark.skipif(not has_conv(), reason="no conv ops")]

ROWS = [
    "mamlpp_conv4",
    "maml_conv4_20w",
    "matchingnet_conv4",
    "relationnet_conv4",
    "r2d2_conv4",
    "imaml_conv4",
    "metaoptnet_conv4",
    "reptile_conv4",
]
SETTING = {"mamlpp_conv4": "20w1s", "maml_conv4_20w": "20w1s"}


@pytest.fixture(scope="module")
def reproduce():
    return load_script(REPO / "benchmarks" / "reproduce.py", "reproduce")


def _card(folder, row):
    path = folder / f"{row}-omniglot-{SETTING.get(row, '5w1s')}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _numbers(card):
    """What must match bit for bit: every result's mean, interval and loss."""
    return [(r["mean"], r["ci95"], r["loss"], r["episodes"]) for r in card["results"]]


@pytest.mark.parametrize("row", ROWS)
def test_row_in_chunks_equals_the_row_in_one_go(reproduce, row, tmp_path, capsys):
    quick = ["--quick", "--only", row, "--iterations", "2", "--episodes", "2"]
    whole = reproduce.main(quick + ["--cards", str(tmp_path / "whole")])
    assert [r[0] for r in whole] == [row]
    out = capsys.readouterr().out
    # the paper's number is printed beside ours
    assert reproduce.PAPER[(row, 20 if row in SETTING else 5, 1)] in out
    card = _card(tmp_path / "whole", row)
    assert card["meta_iterations"] == 2 and card["results"][0]["metric"] == "accuracy"

    # a chunk of 1e-9 s stops after one iteration: two processes' worth of chunks
    chunked = quick + ["--cards", str(tmp_path / "chunks")]
    chunked += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--chunk", "1e-9"]
    assert reproduce.main(chunked) == []  # the first chunk: no result yet
    assert "run the same command again" in capsys.readouterr().out
    assert _card(tmp_path / "chunks", row) is None
    assert [r[0] for r in reproduce.main(chunked)] == [row]
    resumed = _card(tmp_path / "chunks", row)
    assert resumed["meta_iterations"] == 2
    assert _numbers(resumed) == _numbers(card)


def test_a_spent_budget_only_evaluates(reproduce, tmp_path, capsys):
    # a budget of 1e-9 s is spent by the first iteration; the same command again restores
    # the checkpoint and evaluates the same weights, training no further
    argv = ["--quick", "--only", "metaoptnet_conv4", "--episodes", "2", "--budget", "1e-9"]
    argv += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    first = reproduce.main(argv + ["--cards", str(tmp_path / "a")])
    again = reproduce.main(argv + ["--cards", str(tmp_path / "b")])
    assert "1 it in 0 s" in first[0][1] and first[0][1] == again[0][1]
    a, b = _card(tmp_path / "a", "metaoptnet_conv4"), _card(tmp_path / "b", "metaoptnet_conv4")
    assert a["meta_iterations"] == b["meta_iterations"] == 1
    assert _numbers(a) == _numbers(b)
    spent = json.loads((tmp_path / "ckpt" / "metaoptnet_conv4-seed0.budget.json").read_text())
    assert spent["iterations"] == 1 and spent["seconds"] > 0
