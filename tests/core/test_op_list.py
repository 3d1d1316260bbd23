"""csrc/ops/ops.def, the one list of ops the C enum, the op table and the backward
declarations expand: its Python columns agree with metalearn._core."""

import inspect
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
    return [
        tuple(a.strip() for a in row.split(",")) for row in re.findall(r"ML_OP\(([^)]*)\)", text)
    ]


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


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r[4] in ("UNARY", "BINARY")], ids=lambda r: r[1]
)
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
    return {name for name, fn in fns.items() if callable(fn) and (fn.__doc__ or "").endswith(tail)}


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


# ------------------------------------------------------- one naming across C and Python

import metalearn  # noqa: E402  (the package: where the Python names are exported)


def _trace_type():
    tr = _core.trace_begin([])
    _core.trace_abort(tr)
    return type(tr)


# The C prefix of a type's functions -> the Python type (ml_optimizer_step: Optimizer.step).
TYPES = {
    "tensor": _core.Tensor,
    "optimizer": _core.Optimizer,
    "memory": _core.KnowledgeMemory,
    "trace": _trace_type(),
}
PY_TYPES = {tp.__name__: tp for tp in TYPES.values()}


def _header_functions():
    code = re.sub(r"/\*.*?\*/", " ", HEADER, flags=re.S)
    return dict(re.findall(r"\b(ml_\w+)\s*\(([^)]*)\)\s*;", code))


HEADER_FUNCTIONS = _header_functions()
# the header's table of the names that differ: C name, Python name ("-": C only), reason
NAMES_TABLE = re.findall(r"^ \*   (ml_\w+) +(\S+) +\[([A-Z])\]$", HEADER, re.M)
REASONS = set(re.findall(r"^ \*   \[([A-Z])\] ", HEADER, re.M))


def _by_rule(name, params):
    """The Python function, method or property the header's naming rule gives a C
    function, or None."""
    n = name[len("ml_") :]
    if hasattr(_core, n):  # ml_conv2d: conv2d
        return getattr(_core, n)
    for prefix, tp in TYPES.items():  # ml_optimizer_step: Optimizer.step
        if n.startswith(prefix + "_"):
            attr = n[len(prefix) + 1 :]
            attr = attr[len("set_") :] if attr.startswith("set_") else attr
            if hasattr(tp, attr):
                return getattr(tp, attr)
    # a tensor's: ml_ndim(t): Tensor.ndim, ml_detach(&out, t): Tensor.detach
    first = [p.strip() for p in params.split(",") if p.strip() != "ml_tensor **out"][:1]
    if first and re.fullmatch(r"(const )?ml_tensor \*t", first[0]):
        attr = n[len("set_") :] if n.startswith("set_") else n
        return getattr(_core.Tensor, attr, None)
    return None


def _resolve(path):
    """A Python name of the table: a metalearn name (random.set_seed), a _core one
    (_kernel_variants) or a type's attribute (Tensor.size, Trace.describe())."""
    head, *rest = path.removesuffix("()").split(".")
    obj = getattr(metalearn, head, None) or getattr(_core, head, None) or PY_TYPES.get(head)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj


def test_the_header_parses():
    # not vacuous: the ops, the types' functions and the table are all read
    assert len(HEADER_FUNCTIONS) > 120 and len(NAMES_TABLE) > 30
    assert {"ml_add", "ml_grad", "ml_optimizer_step", "ml_memory_query"} <= set(HEADER_FUNCTIONS)


def test_every_public_c_function_has_its_python_name_by_the_rule_or_the_table():
    """Same names in C and Python: each function of metalearn.h is ml_ + its Python name
    (a function, a type's method or property), or a row of the header's table says what
    Python calls it and why. Every public C op is reachable from Python."""
    table = {c: py for c, py, _ in NAMES_TABLE}
    missing = sorted(
        n
        for n, params in HEADER_FUNCTIONS.items()
        if _by_rule(n, params) is None and n not in table
    )
    assert not missing, f"not reachable from Python under its own name, nor in the table: {missing}"


def test_the_names_table_holds_only_real_differences():
    """No stale row: each names a header function that the rule does not cover, a Python
    name that exists (or '-' for C only) and an explained reason."""
    for c, py, why in NAMES_TABLE:
        assert c in HEADER_FUNCTIONS, f"{c}: not in the header"
        assert _by_rule(c, HEADER_FUNCTIONS[c]) is None, f"{c}: follows the rule, drop its row"
        assert py == "-" or _resolve(py) is not None, f"{c}: Python has no {py}"
        assert why in REASONS, f"{c}: reason [{why}] is not explained"
    assert len({c for c, _, _ in NAMES_TABLE}) == len(NAMES_TABLE)


# The ops metalearn does not re-export under their _core name, and where they are.
ELSEWHERE = {
    "assign": "Variable.assign",
    "random_uniform": "random.uniform",
    "random_normal": "random.normal",
    "truncated_normal": "random.truncated_normal",
}


@pytest.mark.parametrize("row", [r for r in ROWS if r[4] != "NONE"], ids=lambda r: r[1])
def test_every_python_op_is_exported_by_the_package(row):
    py = row[5]
    if py in ELSEWHERE:
        assert _resolve(ELSEWHERE[py]) is not None
    else:
        assert getattr(metalearn, py, None) is getattr(_core, py), f"metalearn.{py}"


def test_a_row_the_header_declares_is_reachable_from_python():
    """ops.def's NONE rows are internal ops, except those Python reaches as methods."""
    for _, name, _, _, form, _, _ in ROWS:
        fn = f"ml_{name}"
        if fn in HEADER_FUNCTIONS:
            assert form != "NONE" or _by_rule(fn, HEADER_FUNCTIONS[fn]) is not None, fn
