"""The notebooks in notebooks/: stored with their outputs (what a reader sees on a code host)
and executed here with nbclient, their key results checked.

The bounds live here, not in the notebooks: after a notebook has run, the test adds a cell
of its own that reads the notebook's variables (the expressions of EXPECTED) and checks them
against loose bounds (the notebooks train for seconds, so the bounds test "learnt something
real", not paper numbers). Notebooks run in a temporary directory (they must not write into
the repository) with matplotlib's inline backend. `python notebooks/run_all.py` stores them
again after a change.
"""

import json
import re

import pytest

from tests.helpers import REPO as ROOT
from tests.helpers import load_script, require_omniglot

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = ROOT / "notebooks"


run_all = load_script(NOTEBOOKS / "run_all.py", "notebooks_run_all")

# notebook -> {expression over the notebook's variables: (low, high)}
EXPECTED = {
    "01_quickstart.ipynb": {
        "test_accuracy": (0.5, 1.0),  # 10 drawn glyph classes, chance 0.1
        "mse_after / mse_before": (0.0, 0.3),  # MAML: 10 steps fit the new task
        "corr": (0.3, 1.0),  # meta network: predicted vs achieved, held-out tasks
        "fixed_losses[-1]": (0.0, 0.1),  # the corrected loop fits its training set
    },
    "02_maml_sinusoid.ipynb": {
        "maml_eval[0]['mse']": (1.0, 10.0),  # before adaptation: about the variance
        "maml_eval[1]['mse']": (0.0, 1.2),
        "maml_eval[10]['mse']": (0.0, 0.6),
        "base_eval[10]['mse']": (0.6, 10.0),  # the baseline adapts much worse
    },
    "03_omniglot_few_shot.ipynb": {
        "pn_eval['accuracy']": (0.5, 1.0),  # 5-way 1-shot, chance 0.2
        "pn_eval['ci95']": (0.0, 0.05),
        "maml_eval[0]['accuracy']": (0.1, 0.3),  # before adaptation: chance
        "maml_eval[3]['accuracy']": (0.35, 1.0),
    },
    "04_knowledge_memory.ipynb": {
        "recall[('trained encoder', 5)][0]": (0.6, 1.0),  # one-shot recall, chance 0.2
        "recall[('trained encoder', 20)][0]": (0.35, 1.0),  # chance 0.05
        "accuracy[-1]": (0.05, 1.0),  # growing memory, 300 classes, chance 0.003
        # MetaLearner: accuracy after 1 step on recurring tasks, with the memory's warm start
        # minus without; no harm on novel tasks where nothing stored fits
        "warm['recurring'][0].mean()": (0.3, 1.0),
        "warm['recurring'][1].mean()": (0.25, 1.0),  # MAML learnt something: chance 0.2
        "np.mean(warm['recurring'][0] - warm['recurring'][1])": (0.02, 1.0),
        "np.mean(warm['novel'][0] - warm['novel'][1])": (-0.03, 1.0),
        # the stored task recalled for a recurring task has its class set (1.0 measured on
        # 60 tasks; 0.80 with the encoder trained 200 episodes)
        "recalled_right['recurring']": (0.9, 1.0),
        "own_class['recurring']": (0.9, 1.0),  # and each new class found its own (0.97)
        # the recall shown under "Recall" found the task's own class set
        "set(stored.tolist()) == set(task.info['classes'].tolist())": (1, 1),
        "rho": (0.2, 1.0),  # predictor: predicted vs achieved, held-out tasks
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


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(outputs):
    """Everything a reader sees as text: streams and the text/plain of results."""
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _needs_omniglot(nb):
    return any("datasets.omniglot(" in c.source for c in _code(nb))


def test_every_notebook_is_checked():
    assert _notebooks() == sorted(EXPECTED)


def test_quickstart_needs_no_data():
    nb = _read("01_quickstart.ipynb")
    assert not _needs_omniglot(nb)
    assert not any("omniglot" in c.source.lower() for c in _code(nb))
    # it opens with metalearn itself, the article second
    text = "\n".join(c.source for c in nb.cells)
    assert text.index("compile(") < text.index("MAML(") < text.index("import metalearn as tf")


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_is_stored_with_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4, f"{name}: explain what happens"
    code = _code(nb)
    # run once, top to bottom, from a fresh kernel, by notebooks/run_all.py
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{name}: not stored as run top to bottom; run python notebooks/run_all.py"
    )
    assert nb.metadata.get("metalearn", {}).get("code_sha256") == run_all.code_digest(nb), (
        f"{name}: its code changed since its outputs were stored; run python notebooks/run_all.py"
    )
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{name}: stored an error"
    assert any(
        o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs
    ), f"{name}: no figure stored"
    text = _text(outputs)
    assert not re.search(r"^RESULT\b", text, re.M), f"{name}: a RESULT line is shown to readers"
    assert "Traceback" not in text
    for private in ("/tmp/", "/work/", "/home/"):  # no paths of the machine that ran it
        assert private not in text, f"{name}: its outputs show a local path ({private})"


def _snapshot():
    """Files where a careless notebook would write: the repository's top level and
    notebooks/ (other engineers' edits elsewhere must not fail this test)."""
    files = {p: p.stat().st_mtime_ns for p in ROOT.iterdir() if p.is_file()}
    files.update({p: p.stat().st_mtime_ns for p in NOTEBOOKS.rglob("*") if p.is_file()})
    return files


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_runs(name, tmp_path):
    nb = _read(name)
    if _needs_omniglot(nb):
        require_omniglot(name)
    for cell in _code(nb):  # run from the code alone
        cell.outputs, cell.execution_count = [], None
    expressions = list(EXPECTED[name])
    check = nbformat.v4.new_code_cell(
        "import json as _json\nprint('__CHECK__' + _json.dumps(["
        + ", ".join(f"float({e})" for e in expressions)
        + "]))"
    )
    nb.cells.append(check)
    before = _snapshot()
    run_all.execute(nb, tmp_path)

    outputs = [o for c in _code(nb)[:-1] for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(
        o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs
    ), f"{name}: no figure"
    assert not re.search(r"^RESULT\b", _text(outputs), re.M)

    line = re.search(r"^__CHECK__(.*)$", _text(check.outputs), re.M)
    assert line, f"{name}: the check cell printed nothing: {check.outputs}"
    for expr, value in zip(expressions, json.loads(line.group(1))):
        low, high = EXPECTED[name][expr]
        assert low <= value <= high, f"{name}: {expr} = {value} not in [{low}, {high}]"

    after = _snapshot()
    changed = sorted(str(p.relative_to(ROOT)) for p in after if before.get(p) != after[p])
    assert not changed, f"{name} wrote into the repository: {changed}"
