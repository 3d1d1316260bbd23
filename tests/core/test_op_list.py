"""csrc/ops/ops.def, the one list of ops the C enum, the op table and the backward
declarations expand: its Python columns agree with metalearn._core."""
import re

import numpy as np
import pytest

from metalearn import _core
from tests.helpers import REPO

CSRC = REPO / "csrc"
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
