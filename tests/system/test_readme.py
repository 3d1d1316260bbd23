"""The README's first lines hold the two set-up commands, and every Python block in it runs
as it stands, pasted into a fresh interpreter: each block runs alone in a new process, in an
empty folder, with nothing defined beforehand.

A block that takes over a minute as written (the README states its time) runs with smaller
budgets here, and as written in the `slow` test. After each block the test runs a few lines
of its own that check what the block's comments promise.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers import require_omniglot

README = REPO / "README.md"


def _blocks():
    """(line number, code) of every ```python block of the README."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]


# Each block is recognised by a string only it holds. The check runs after the block, in
# the same interpreter, and must raise (an assert) when what the README promises is false.
CHECKS = {
    "distributed.ShardedMemory(4096, 128)": (
        # one KnowledgeMemory of the same capacity and seed: the same slots, answers, file
        "from metalearn.memory import KnowledgeMemory\n"
        "one = KnowledgeMemory(4096, 128)\n"
        "assert np.array_equal(np.asarray(one.update(keys, labels)), np.asarray(slots))\n"
        "a = one.query(keys[:5], k=8)\n"
        "assert np.array_equal(np.asarray(a[0]), np.asarray(idx))\n"
        "assert np.array_equal(np.asarray(a[1]), np.asarray(sim))\n"
        "one.save('one.mlmem')\n"
        "assert open('one.mlmem', 'rb').read() == open('memory.mlmem', 'rb').read()"
    ),
    "distributed.DataParallel().scope()": (
        "import os\n"
        "assert distributed.size() == 1 and distributed.is_root()\n"
        "assert os.path.getsize('meta_model.mlw') > 0 and learner.iterations == 100"
    ),
    "checkpoint_dir=": (
        "import os\n"
        "assert os.path.isfile('runs/maml/checkpoint.json')  # the checkpoint was written\n"
        "assert len(history['val_mse']) == 4 and len(history['loss']) == 200, history.keys()\n"
        "assert learner.best_validation is not None"
    ),
    'model.save_weights("model.mlw")': (
        "import os\nassert os.path.getsize('model.mlw') > 0\n"
        "assert len(model.trainable_variables) == 4"
    ),
    "for step in range(20):": (
        # 20 Adam steps on a fixed batch lower the loss below its start (about ln 10)
        "assert float(loss) < 2.2, float(loss)"
    ),
    "maml = MAML(model": (
        "r = maml.evaluate(Sinusoid(seed=1), episodes=100, steps=[0, 10])\n"
        "assert r[10]['mse'] < r[0]['mse'] / 3, r  # adaptation fits the new task\n"
        "import numpy as np\n"
        "assert not np.allclose(np.asarray(adapted(task.support_x)), "
        "np.asarray(model(task.support_x)))  # a new model; `model` untouched"
    ),
    "protonet = ProtoNet(": (
        "r = protonet.evaluate(test, episodes=EVAL_EPISODES)\n"
        "assert MIN_ACCURACY <= r['accuracy'] <= 1.0, r"
    ),
    "(d2f,) = ml.grad(df, x)": "assert float(df.item()) == 12.0 and float(d2f.item()) == 4.0",
    "memory = ml.KnowledgeMemory(": (
        "import os\n"
        "assert (found[:, 0] == labels[:16]).all()  # each query's nearest key is its own\n"
        "assert soft.shape == (16, 64) and os.path.getsize('memory.mlm') > 0\n"
        "assert np.isfinite(float(loss))"
    ),
    "@ml.function": (
        # 2 * 0.05 * mean(x^2) ... a linear target the net fits; 25 gradient tuples
        "assert float(loss) < 0.05, float(loss)\n"
        "assert train_step.n_traces == 1 and len(per_task) == 25\n"
        "assert [tuple(g.shape) for g in per_task[0]] == "
        "[tuple(v.shape) for v in model.trainable_variables]"
    ),
}

# blocks that take over a minute as written: (replacements for the fast run) and, for the
# slow run as written, the evaluation budget and accuracy bound of the check
SLOW = {
    "protonet = ProtoNet(": {
        "fast": [("iterations=2000", "iterations=3"), ("episodes=600", "episodes=3")],
        "fast_check": {"EVAL_EPISODES": "3", "MIN_ACCURACY": "0.0"},
        # 5-way 1-shot after 2000 episodes: the reproduction runs reach 96 % with 600
        # 60-way episodes; chance is 20 %
        "slow_check": {"EVAL_EPISODES": "100", "MIN_ACCURACY": "0.85"},
    },
}


def _key(code):
    keys = [k for k in CHECKS if k in code]
    assert len(keys) == 1, f"a README block must match exactly one check, got {keys}:\n{code}"
    return keys[0]


def _run(code, cwd, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _program(code, check, values):
    for name, value in values.items():
        check = check.replace(name, value)
    return code + "\n# --- the test's check\n" + check + "\nprint('README-BLOCK-OK')\n"


def _ids():
    return [f"line{line}" for line, _ in _blocks()]


def test_setup_commands_come_first():
    head = README.read_text().split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert head[0].startswith("pip install -e . && python -m metalearn")
    assert head[1].startswith("pip install -e '.[test]' && python -m pytest -q")
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]' && python -m pytest -q" in ci


def test_every_block_is_checked():
    blocks = _blocks()
    assert len(blocks) >= len(CHECKS)
    assert sorted(_key(code) for _, code in blocks) == sorted(CHECKS)


@pytest.mark.parametrize("line,code", _blocks(), ids=_ids())
def test_block_runs_alone(line, code, tmp_path):
    key = _key(code)
    values = {}
    if key in SLOW:
        for old, new in SLOW[key]["fast"]:
            assert old in code, f"README line {line}: {old!r} is gone; update SLOW"
            code = code.replace(old, new)
        values = SLOW[key]["fast_check"]
    if "omniglot(" in code:
        require_omniglot(f"README block at line {line}")
    r = _run(_program(code, CHECKS[key], values), tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("README-BLOCK-OK"), (
        f"README block at line {line} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "line,code",
    [(line, code) for line, code in _blocks() if any(k in code for k in SLOW)],
    ids=lambda v: f"line{v}" if isinstance(v, int) else "as-written",
)
def test_slow_block_runs_as_written(line, code, tmp_path):
    key = _key(code)
    if "omniglot(" in code:
        require_omniglot(f"README block at line {line}")
    r = _run(_program(code, CHECKS[key], SLOW[key]["slow_check"]), tmp_path, timeout=1200)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("README-BLOCK-OK"), (
        f"README block at line {line} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    )
