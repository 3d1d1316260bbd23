"""The README's Python examples run as written (with smaller budgets), and its first
lines hold the two set-up commands."""

import os
import re

import numpy as np

from tests.helpers import REPO

README = REPO / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_setup_commands_come_first():
    head = README.read_text().split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert head[0].startswith("pip install -e . && python -m metalearn")
    assert head[1].startswith("pip install -e '.[test]' && python -m pytest -q")
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]' && python -m pytest -q" in ci


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # save_weights writes model.mlw here, not in the checkout
    wanted = ("model.fit", "GradientTape", "ml.grad(f, x", "MAML(model", "ProtoNet(")
    ran = []
    namespace = {}
    for block in _blocks():
        if not any(w in block for w in wanted):
            continue
        code = (
            block.replace("iterations=2000", "iterations=3")
            .replace("episodes=600", "episodes=3")
            .replace("epochs=2", "epochs=1")
        )
        exec(compile(code, "README.md", "exec"), namespace)
        ran.append(block)
    assert len(ran) == len(wanted)
    # values the README states in its comments
    assert float(namespace["df"].item()) == 12.0 and float(namespace["d2f"].item()) == 4.0
    assert os.path.exists(tmp_path / "model.mlw")
    assert 0.0 <= namespace["protonet"].evaluate(namespace["test"], episodes=2)["accuracy"] <= 1.0
    assert np.isfinite(float(namespace["loss"].item()))
