"""The layers of csrc/, from the built objects and the sources: core below ops below the
binding below Python, with nothing calling or including back up.

LAYERS is the one table of the order. A folder may use (call, read, include) only the
folders of a lower rank; folders of one rank are peers and do not use each other. The
public header csrc/include/metalearn.h sits below everything.

Checked three ways:
  * calls: `nm` on each object of `make -C csrc` (csrc/build/<folder>/*.o): no object has
    an undefined symbol that an object of its own rank or above (another folder) defines;
  * includes: no file includes a header of its own rank or above (another folder);
  * the two rules a rank cannot say: the kernels know nothing of tensors (of the core
    they include only its thread pool, core/threads.h), and the binding (csrc/python/)
    includes only the public header (and the op list, ops.def); the C core references no
    Python symbol.
"""

import os
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from tests.helpers import REPO

ROOT = REPO
CSRC = ROOT / "csrc"
BUILD = CSRC / "build"

# rank, folder, what it holds and what it uses
LAYERS = [
    (0, "core", "tensors, storage, graph nodes, grad mode, the trace recorder, threads, rng"),
    (1, "kernels", "float arrays only: GEMM, vector math, CPU dispatch, scratch (core's threads)"),
    (1, "io", "weight files: the core's tensors, the atomic write"),
    (2, "ops", "the differentiable ops and their table (ops.def): core, kernels"),
    (3, "autograd", "ml_grad, the reverse walk: runs the ops' backward formulas"),
    (3, "trace", "ending, fusing, replaying, printing traces: the ops' table and kernels"),
    (3, "optim", "SGD, Adam: core, kernels; a trace records their step as an op of ops.def"),
    (4, "memory", "the knowledge memory: its differentiable read and loss are ops; io, kernels"),
    (5, "python", "the binding, metalearn._core: the public header only"),
]
RANK = {folder: rank for rank, folder, _ in LAYERS}
PUBLIC = "include"  # csrc/include/metalearn.h: every layer's
NOT_LAYERS = {PUBLIC, "tests"} | {p.name for p in CSRC.glob("build*")}

# ASan's runtime preloaded into Python (.ci/sanitize-python.sh) must stay out of make and nm
ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _folders():
    return sorted(p.name for p in CSRC.iterdir() if p.is_dir() and p.name not in NOT_LAYERS)


def _sources(folder):
    return sorted(p for p in (CSRC / folder).iterdir() if p.suffix in (".c", ".h", ".def"))


def test_every_folder_has_a_place_in_the_table():
    assert _folders() == sorted(RANK), "add a new csrc/ folder to LAYERS, at its rank"


# ---------------------------------------------------------------------------- calls


@pytest.fixture(scope="module")
def objects():
    """{(folder, object name): (defined symbols, undefined symbols)} of make's build."""
    if shutil.which(ENV.get("CC", "cc")) is None or shutil.which("make") is None:
        pytest.skip("no C compiler (cc) or make: the objects cannot be built")
    if shutil.which("nm") is None:
        pytest.skip("no nm (binutils) to read the objects' symbols")
    subprocess.run(
        ["make", "-C", str(CSRC), "-s", "-j2", "all"],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    out = {}
    for folder in _folders():
        for src in sorted((CSRC / folder).glob("*.c")):
            obj = BUILD / folder / (src.stem + ".o")
            if not obj.exists():
                continue  # not built by make (the binding: setup.py builds it)
            defined, undefined = set(), set()
            for line in subprocess.run(
                ["nm", str(obj)], check=True, capture_output=True, text=True, env=ENV
            ).stdout.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in "TDBRCVWG":  # global, defined here
                    defined.add(parts[2])
                elif len(parts) == 2 and parts[0] in "Uw":
                    undefined.add(parts[1])
            out[(folder, obj.name)] = (defined, undefined)
    return out


def test_objects_of_every_c_folder_were_built(objects):
    built = {folder for folder, _ in objects}
    assert built == set(RANK) - {"python"}, built


def test_no_object_calls_its_own_rank_or_above(objects):
    where = {}
    for (folder, name), (defined, _) in objects.items():
        for sym in defined:
            where[sym] = (folder, name)
    wrong = defaultdict(set)
    for (folder, name), (_, undefined) in objects.items():
        for sym in undefined:
            if sym in where and where[sym][0] != folder and RANK[where[sym][0]] >= RANK[folder]:
                wrong[f"{folder}/{name}"].add(f"{sym} ({'/'.join(where[sym])})")
    assert not wrong, "calls up or across the layers:\n" + "\n".join(
        f"  {obj} -> {', '.join(sorted(syms))}" for obj, syms in sorted(wrong.items())
    )


def test_the_c_core_references_no_python(objects):
    python = {
        f"{folder}/{name}": sorted(s for s in undefined if s.startswith(("Py", "_Py", "mlpy_")))
        for (folder, name), (_, undefined) in objects.items()
    }
    assert not {k: v for k, v in python.items() if v}


# ---------------------------------------------------------------------------- includes

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _code(src):
    """src's text without its comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", src.read_text(), flags=re.S)


def _resolve(src, name):
    """Where the compiler finds `#include "name"` from src: src's folder, then the -I
    folders of the Makefile and setup.py (csrc/include, csrc)."""
    for base in (src.parent, CSRC / PUBLIC, CSRC):
        path = (base / name).resolve()
        if path.exists():
            return path.relative_to(CSRC.resolve())
    raise AssertionError(f'{src.relative_to(CSRC)}: #include "{name}" not found')


def _includes(folder):
    for src in _sources(folder):
        for name in INCLUDE.findall(_code(src)):
            yield src.relative_to(CSRC), _resolve(src, name)


@pytest.mark.parametrize("folder", sorted(RANK))
def test_no_file_includes_a_header_of_its_own_rank_or_above(folder):
    wrong = [
        f"{src} includes {target}"
        for src, target in _includes(folder)
        if target.parts[0] not in (folder, PUBLIC) and RANK.get(target.parts[0], 99) >= RANK[folder]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_kernels_know_nothing_of_tensors():
    wrong = [
        f"{src} includes {target}"
        for src, target in _includes("kernels")
        if target.parts[0] == "core" and target.as_posix() != "core/threads.h"
    ]
    wrong += [
        f"{src.relative_to(CSRC)} names ml_tensor"
        for src in _sources("kernels")
        if re.search(r"\bml_tensor\b", _code(src))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_binding_includes_only_the_public_header():
    # and the op list, a table of names with no declaration in it: the binding's element-wise
    # functions expand its rows
    wrong = [
        f"{src} includes {target}"
        for src, target in _includes("python")
        if target.parts[0] not in ("python", PUBLIC) and target.as_posix() != "ops/ops.def"
    ]
    assert not wrong, "\n".join(wrong)


def test_the_core_includes_nothing_above_it_not_even_the_op_list():
    # the op ids are the ops' vocabulary: the core stores what an op hands it
    texts = {src.name: _code(src) for src in _sources("core")}
    assert not [n for n, t in texts.items() if re.search(r"\bOP_[A-Z]|ops\.def|ml_op_table", t)]
