"""csrc/ops/ops.def, the one list of ops the C enum, the op table and the backward
declarations expand: its Python columns agree with metalearn._core."""
import inspect
import pathlib
import re

import numpy as np
import pytest

from metalearn import _core

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
OPS_DEF = CSRC / "ops" / "ops.def"
HEADER = (CSRC / "include" / "metalearn.h").read_text()


def _rows():
    text = re.sub(r"/\*.*?\*/", "", OPS_DEF.read_text(), flags=re.S)
    return [tuple(a.strip() for a in row.split(","))
            for row in re.findall(r"ML_OP\(([^)]*)\)", text)]


ROWS = _rows()


def test_rows_are_well_formed():
    assert len(ROWS) > 60 and all(len(r) == 7 for r in ROWS)
    ids, names = [r[0] for r in ROWS], [r[1] for r in ROWS]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)
    for op_id, name, inputs, grad, form, py, label in ROWS:
        assert grad in {"BACKWARD", "FLAT", "REPLAY"}, op_id
        assert form in {"UNARY", "BINARY", "CALL", "NONE"}, op_id
        assert int(inputs) >= -1, op_id
        assert label.startswith('"') and label.endswith('"'), op_id
        assert (py == "_") == (form == "NONE"), op_id


@pytest.mark.parametrize("row", [r for r in ROWS if r[4] != "NONE"], ids=lambda r: r[1])
def test_python_name_is_a_core_function(row):
    assert callable(getattr(_core, row[5], None)), f"ops.def: {row[1]} runs as _core.{row[5]}"


@pytest.mark.parametrize("row", [r for r in ROWS if r[4] in ("UNARY", "BINARY")],
                         ids=lambda r: r[1])
def test_unary_and_binary_rows_run_their_op(row):
    """What the binding's UNARY_OPS / BINARY_OPS lists hold: ml_<name> in the public
    header, _core.<py> making a tensor recorded as the row's op (Tensor.op is the table's
    name), its messages saying the row's label."""
    _, name, _, _, form, py, label = row
    args = "ml_tensor *x" if form == "UNARY" else "ml_tensor *a, ml_tensor *b"
    assert f"ml_status ml_{name}(ml_tensor **out, {args});" in HEADER
    fn = getattr(_core, py)
    x = _core.tensor(np.array([[0.5, 2.0]], np.float32), requires_grad=True)
    y = fn(x) if form == "UNARY" else fn(x, x)
    assert y.shape == (1, 2) and y.op == name
    with pytest.raises(TypeError, match="^" + label.strip('"') + ":"):
        fn("abc") if form == "UNARY" else fn("abc", x)


def _elementwise_functions(kind):
    """The _core functions whose docstring says they are the binding's element-wise
    UNARY ("(x), element-wise.") or BINARY ("(a, b), broadcasting.") functions."""
    tail = "(x), element-wise." if kind == "UNARY" else "(a, b), broadcasting."
    fns = {name: getattr(_core, name) for name in dir(_core)}
    return {name for name, fn in fns.items()
            if callable(fn) and (fn.__doc__ or "").endswith(tail)}


@pytest.mark.parametrize("form", ["UNARY", "BINARY"])
def test_the_binding_expands_exactly_the_rows_of_its_form(form):
    """The binding's element-wise functions are ops.def's rows of that form, no more, no
    less (a row added there is a _core function with nothing written in csrc/python/), each
    with its text signature."""
    rows = {r[5] for r in ROWS if r[4] == form}
    assert _elementwise_functions(form) == rows
    params = ["x"] if form == "UNARY" else ["a", "b"]
    for py in rows:
        sig = inspect.signature(getattr(_core, py))
        assert list(sig.parameters) == params, py
        assert all(p.kind is p.POSITIONAL_ONLY for p in sig.parameters.values()), py


def test_the_binding_writes_no_list_of_its_own():
    """csrc/python/ holds no op list of its own: the element-wise functions are ops.def's
    rows (the old hand-written UNARY_OPS / BINARY_OPS lists drifted from the table)."""
    for src in (CSRC / "python").glob("*.c"):
        text = src.read_text()
        assert not re.search(r"#define\s+(UNARY|BINARY)_OPS\b", text), src.name
    assert '#include "../ops/ops.def"' in (CSRC / "python" / "ops.c").read_text()
