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
