"""``python -m metalearn``: the demo command."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from metalearn.__main__ import main
from metalearn.meta import models
from tests.helpers import REPO as ROOT
from tests.helpers import needs_omniglot


def test_help_lists_the_options():
    out = subprocess.run(
        [sys.executable, "-m", "metalearn", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for opt in (
        "--algorithm",
        "--task",
        "--ways",
        "--shots",
        "--iterations",
        "--meta-batch-size",
        "--seed",
        "--threads",
        "--output",
        "protonet",
        "reptile",
        "omniglot",
    ):
        assert opt in out.stdout


def test_sinusoid_demo_prints_before_and_after(capsys, tmp_path):
    assert (
        main(
            [
                "--iterations",
                "300",
                "--episodes",
                "30",
                "--verbose",
                "0",
                "--threads",
                "1",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "before adaptation" in out and "after 1 step" in out and "after 10 steps" in out
    rows = [ln for ln in out.splitlines() if ln.strip().startswith(("before", "after 10"))]
    values = [float(v) for v in re.findall(r"\d+\.\d+", rows[1])]  # mean, ci, mean, ci
    assert len(values) == 4
    untrained_10, trained_10 = values[0], values[2]
    assert trained_10 < 0.8 * untrained_10
    hist = json.loads((tmp_path / "history.json").read_text())
    assert len(hist["history"]["loss"]) == 300 and hist["args"]["algorithm"] == "maml"
    model = models.sinusoid_mlp()
    model.load_weights(tmp_path / "meta_model.weights")
    assert np.isfinite(model.get_weights()[0]).all()


@needs_omniglot
def test_omniglot_protonet_demo(capsys):
    assert (
        main(
            [
                "--task",
                "omniglot",
                "--algorithm",
                "protonet",
                "--iterations",
                "30",
                "--episodes",
                "20",
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Omniglot 5-way 1-shot" in out and "prototypes" in out and "%" in out


def test_protonet_needs_classification():
    with pytest.raises(SystemExit):
        main(["--algorithm", "protonet", "--verbose", "0"])


def test_reproduce_quick_runs():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "reproduce.py"),
            "--quick",
            "--only",
            "maml_sinusoid",
            "maml_mlp",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "maml_sinusoid" in out.stdout and "89.7 +- 1.1" in out.stdout and "total" in out.stdout


def test_reproduce_refuses_a_chunk_without_a_checkpoint():
    # a chunk that stops at its time budget with nowhere to save would lose its work
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "reproduce.py"),
            "--only",
            "protonet_conv4",
            "--chunk",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--chunk needs --checkpoint-dir" in out.stderr


def test_maml_sinusoid_benchmark_runs():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "maml_sinusoid.py"),
            "--iterations",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "2nd order" in out.stdout and "1st order" in out.stdout
    if "torch 2" in out.stdout:
        err = float(out.stdout.split("max |metalearn - torch| = ")[1].split()[0])
        assert err < 1e-4


# ------------------------------------------------ every variant, every wrong option (issue 21)

_ROW = re.compile(r"^\s+(before adaptation|after \d+ steps?|prototypes)\s+(.*)$")


def _rows(out):
    """{row label: [untrained mean, ci, meta-trained mean, ci]} of the printed table."""
    rows = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m:
            rows[m.group(1)] = [float(v) for v in re.findall(r"nan|inf|\d+\.\d+", m.group(2))]
    return rows


def _label(s):
    return "before adaptation" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"


# the step counts each algorithm is trained for and evaluated at (its demo settings)
SINUSOID_STEPS = {
    "maml": (0, 1, 10),
    "fomaml": (0, 1, 10),
    "metasgd": (0, 1),
    "anil": (0, 1),
    "reptile": (0, 1, 5),
}
# and the inner loop it is meta-trained with, which the demo prints: (steps, step size)
SINUSOID_INNER = {
    "maml": (1, 0.01),
    "fomaml": (1, 0.01),
    "metasgd": (1, 0.01),
    "anil": (1, 0.1),
    "reptile": (5, 0.02),
}


@pytest.mark.parametrize("algorithm", sorted(SINUSOID_STEPS))
def test_every_sinusoid_variant_converges(algorithm, capsys):
    # a fifth of the default meta-iterations: each variant must already beat the same
    # network untrained, at every step count it prints, with finite numbers
    assert (
        main(
            ["--algorithm", algorithm, "--iterations", "1000", "--episodes", "50", "--verbose", "0"]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = _rows(out)
    steps = SINUSOID_STEPS[algorithm]
    inner_steps, inner_lr = SINUSOID_INNER[algorithm]
    assert f"inner loop: {inner_steps} step(s) of size {inner_lr:g} while meta-training" in out
    assert list(rows) == [_label(s) for s in steps]
    for label, values in rows.items():
        assert len(values) == 4 and np.isfinite(values).all(), (label, values)
    last = rows[_label(steps[-1])]
    untrained, trained = last[0], last[2]
    # sin waves of amplitude U[0.1, 5]: predicting 0 costs E[A^2]/2 = 4.2
    assert trained < 0.6 * untrained and trained < 2.0
    assert trained < rows["before adaptation"][2]


# Omniglot: (inner steps, step size) trained with, and the step counts evaluated
OMNIGLOT_INNER = {
    "maml": (1, 0.4, (0, 1, 3)),
    "fomaml": (1, 0.4, (0, 1, 3)),
    "metasgd": (1, 0.4, (0, 1)),
    "anil": (1, 0.4, (0, 1)),
    "reptile": (3, 0.4, (0, 1, 3)),
}


@needs_omniglot
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(OMNIGLOT_INNER))
def test_every_omniglot_variant_learns(algorithm, capsys):
    args = ["--task", "omniglot", "--algorithm", algorithm, "--iterations", "100"]
    assert main(args + ["--episodes", "30", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    inner_steps, inner_lr, steps = OMNIGLOT_INNER[algorithm]
    assert f"inner loop: {inner_steps} step(s) of size {inner_lr:g} while meta-training" in out
    assert list(rows) == [_label(s) for s in steps]
    for values in rows.values():
        assert len(values) == 4 and np.isfinite(values).all()
    last = list(rows.values())[-1]
    assert last[2] > 35.0  # % accuracy, 5-way: chance is 20 %


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv,named",
    [
        (["--model", "conv4"], "--model conv4"),
        (["--task", "omniglot", "--shots", "10"], "shots + queries must be <= 20"),
        (["--task", "omniglot", "--shots", "5", "--queries", "16"], "<= 20"),
        (["--algorithm", "protonet"], "--task omniglot"),
        (["--iterations", "-1"], "--iterations"),
        (["--threads", "0"], "--threads"),
        (["--inner-lr", "nan"], "--inner-lr"),
        (["--episodes", "0"], "--episodes"),
        (["--task", "omniglot", "--ways", "1"], "--ways"),
        (["--algorithm", "nope"], "--algorithm"),
        (["--shots", "two"], "--shots"),
    ],
)
def test_a_wrong_option_is_one_line_and_status_2(argv, named, capsys):
    assert named in _usage_error(argv + ["--verbose", "0"], capsys)


def test_a_wrong_option_from_the_shell_shows_no_usage_block():
    out = subprocess.run(
        [sys.executable, "-m", "metalearn", "--algoritm", "maml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "--algoritm" in out.stderr


def test_missing_data_is_one_line_and_status_1(capsys, monkeypatch):
    import metalearn.datasets as datasets

    def absent(*args, **kwargs):  # what the loader raises when no folder holds Omniglot
        raise FileNotFoundError(
            "omniglot not found. Looked for omniglot_background.npz in:\n  - /a\n  - /b\n"
            "Pass the folder (--data FOLDER) or set METALEARN_DATA=FOLDER."
        )

    monkeypatch.setattr(datasets, "omniglot", absent)
    assert (
        main(["--task", "omniglot", "--iterations", "1", "--episodes", "2", "--verbose", "0"]) == 1
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--data FOLDER" in err and "/a" in err and "/b" in err


def test_a_data_folder_that_does_not_exist_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = ["--task", "omniglot", "--data", str(missing), "--iterations", "1", "--episodes", "2"]
    assert main(argv + ["--verbose", "0"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(missing) in err


def test_help_gives_a_time_for_every_variant():
    out = subprocess.run(
        [sys.executable, "-m", "metalearn", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    table = out[out.index("--algorithm  sinusoid") :]
    for algorithm in ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet"):
        line = next(ln for ln in table.splitlines() if ln.strip().startswith(algorithm + " "))
        assert len(re.findall(r"\d+ s\b", line)) == (1 if algorithm == "protonet" else 2), line
    assert "about 10 s" not in out
