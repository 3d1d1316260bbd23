"""Packaging: the source distribution holds every file the build needs, and a failed C
build ends with what failed and what it needs. (.ci/sdist.sh builds a wheel from the sdist
in a fresh venv and runs it from outside the tree; this is the quick part of that.)"""

import os
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO

pytest.importorskip("setuptools")  # setup.py's own dependency, there wherever pip builds

SPLITS = [
    f"metalearn/datasets/splits/vinyals_{s}.txt" for s in ("train", "val", "trainval", "test")
]


def _build_inputs():
    """What building the extension reads: every file of csrc/ (sources, headers, ops.def)
    but build outputs, and the C example."""
    out = []
    for top in ("csrc", "examples"):
        for folder, dirs, files in os.walk(REPO / top):
            dirs[:] = [d for d in dirs if not d.startswith("build") and d != "__pycache__"]
            for f in files:
                if not f.endswith((".o", ".d", ".a", ".so", ".pyc")):
                    out.append(os.path.relpath(os.path.join(folder, f), REPO))
    return sorted(out)


def test_sdist_holds_every_file_the_build_needs(tmp_path):
    # a fresh egg-info: setuptools would otherwise reuse the file list of an earlier build
    egg = tmp_path / "egg"
    egg.mkdir()
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg)]
        + ["sdist", "--dist-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (sdist,) = tmp_path.glob("metalearn-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = _build_inputs()
    assert "csrc/ops/ops.def" in needed and "csrc/include/metalearn.h" in needed
    needed += ["LICENSE", "README.md", "setup.py", "pyproject.toml", "metalearn/py.typed"]
    missing = [n for n in needed + SPLITS if n not in names]
    assert not missing, f"the sdist lacks {missing}"
    assert "MIT License" in (REPO / "LICENSE").read_text()


def test_a_failed_compile_says_what_it_needs(tmp_path):
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"))
    out = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-temp",
            str(tmp_path / "temp"),
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    said = out.stderr
    assert "building the C extension metalearn._core failed" in said, said
    assert "C compiler" in said and "Python.h" in said and "pip install -v" in said
