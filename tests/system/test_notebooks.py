"""Executes every notebook in notebooks/ with nbclient and checks its key result.

Each notebook's last code cell prints one ``RESULT <name> key=value ...`` line; the test
parses it and checks the numbers against loose bounds (the notebooks train for seconds,
so the bounds test "learnt something real", not paper numbers). Notebooks run in a
temporary directory (they must not write into the repository) and with matplotlib's
non-interactive inline backend; nothing is displayed.
"""

import os
import re

import pytest

from tests.helpers import REPO as ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = ROOT / "notebooks"
TIMEOUT_PER_CELL = 240

# notebook -> {key: (low, high)} on the values of its RESULT line
EXPECTED = {
    "01_quickstart.ipynb": {
        "test_accuracy": (0.5, 1.0),  # 10 Omniglot characters, chance 0.1
        "meta_corr": (0.3, 1.0),  # predicted vs achieved, held-out tasks
        "fixed_loss": (0.0, 0.1),
    },
    "02_maml_sinusoid.ipynb": {
        "mse_0": (1.0, 10.0),  # before adaptation: about the variance
        "mse_1": (0.0, 1.2),
        "mse_10": (0.0, 0.6),
        "pretrained_mse_10": (0.6, 10.0),  # the baseline adapts much worse
    },
    "03_omniglot_few_shot.ipynb": {
        "protonet_acc": (0.5, 1.0),  # 5-way 1-shot, chance 0.2
        "protonet_ci95": (0.0, 0.05),
        "maml_acc_0": (0.1, 0.3),  # before adaptation: chance
        "maml_acc_3": (0.35, 1.0),
    },
    "04_knowledge_memory.ipynb": {
        "recall_5way": (0.5, 1.0),
        "recall_20way": (0.25, 1.0),  # chance 0.05
        "growing_final": (0.05, 1.0),  # 300 classes, chance 0.003
        # MetaLearner: accuracy after 1 step on recurring tasks, with the memory's warm start
        # minus without (measured +0.07); no harm on novel tasks where nothing stored fits
        "warm_acc": (0.3, 1.0),
        "cold_acc": (0.25, 1.0),  # MAML learnt something: chance 0.2
        "warm_gain": (0.02, 1.0),
        "novel_gain": (-0.03, 1.0),
        "recall_right": (0.5, 1.0),  # recalled task has the same classes (0.88)
        "predictor_spearman": (0.2, 1.0),  # predicted vs achieved, held-out tasks (0.50)
    },
    "05_your_own_data.ipynb": {
        "acc_trained": (0.6, 1.0),  # 5-way 1-shot on held-out glyph classes (0.81)
        "acc_untrained": (0.2, 0.8),  # the same encoder untrained (0.63)
        "gain": (0.05, 1.0),  # meta-training helps (+0.18)
        "recognised": (0.4, 1.0),  # new classes from one example each (0.84)
    },
}


def _notebooks():
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_checked():
    assert _notebooks() == sorted(EXPECTED)


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_is_stored_clean(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{name}: outputs must be cleared in the repository"
    )
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4, f"{name}: explain what happens"


def _run(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env_before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=TIMEOUT_PER_CELL,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_before
    return nb


def _snapshot():
    """Files where a careless notebook would write: the repository's top level and
    notebooks/ (other engineers' edits elsewhere must not fail this test)."""
    files = {p: p.stat().st_mtime_ns for p in ROOT.iterdir() if p.is_file()}
    files.update({p: p.stat().st_mtime_ns for p in NOTEBOOKS.rglob("*") if p.is_file()})
    return files


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_runs(name, tmp_path):
    before = _snapshot()
    nb = _run(name, tmp_path)

    # no cell raised (nbclient raises CellExecutionError), and none printed a traceback
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    # plots were made
    assert any(
        o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs
    ), f"{name}: no figure"

    # the key result
    lines = re.findall(r"^RESULT \S+ (.*)$", text, re.M)
    assert len(lines) == 1, f"{name}: expected one RESULT line, got {lines}"
    values = dict((k, float(v)) for k, v in re.findall(r"(\w+)=(\S+)", lines[0]))
    for key, (low, high) in EXPECTED[name].items():
        assert low <= values[key] <= high, f"{name}: {key}={values[key]} not in [{low}, {high}]"

    # nothing written into the repository
    after = _snapshot()
    changed = sorted(str(p.relative_to(ROOT)) for p in after if before.get(p) != after[p])
    assert not changed, f"{name} wrote into the repository: {changed}"
