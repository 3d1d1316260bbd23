#!/usr/bin/env bash
# Packaging: builds the source distribution, then a wheel from that sdist (python -m build
# does both, the wheel from the unpacked tarball, so a file missing from MANIFEST.in fails
# the compile), installs the wheel into a fresh venv and runs a smoke test from outside the
# source tree. Everything happens in a temporary folder, removed on exit. One wheel build:
# about a minute of compiling.
#
#   .ci/sdist.sh            # PYTHON=python3 by default; needs network for the build deps
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# from a copy of the files git knows (tracked and new, not ignored): setuptools would add
# a stale metalearn.egg-info/SOURCES.txt of the checkout to the sdist, hiding a gap in
# MANIFEST.in
mkdir "$tmp/src"
git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$tmp/src"

"$PYTHON" -m venv "$tmp/tools"
"$tmp/tools/bin/pip" install -q build
"$tmp/tools/bin/python" -m build --outdir "$tmp/dist" "$tmp/src" >"$tmp/build.log" 2>&1 || {
    tail -n 60 "$tmp/build.log"
    exit 1
}
sdist=$(ls "$tmp"/dist/metalearn-*.tar.gz)
wheel=$(ls "$tmp"/dist/metalearn-*.whl)
echo "   built $(basename "$sdist") and $(basename "$wheel")"

# what the sdist and the wheel must hold (the build above proves the C sources are there)
"$tmp/tools/bin/python" - "$sdist" "$wheel" <<'PY'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as t:
    names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
with zipfile.ZipFile(wheel) as z:
    in_wheel = set(z.namelist())
splits = [f"metalearn/datasets/splits/vinyals_{s}.txt" for s in ("train", "val", "trainval", "test")]
splits += ["metalearn/datasets/splits/cifar_fs.json", "metalearn/datasets/splits/fc100.json",
           "metalearn/tasks/frozen/omniglot-vinyals_test-5way-1shot.npz"]
need_sdist = ["LICENSE", "README.md", "MANIFEST.in", "setup.py", "pyproject.toml",
              "csrc/ops/ops.def", "csrc/include/metalearn.h", "csrc/core/internal.h",
              "csrc/Makefile", "examples/c/quickstart.c", "metalearn/py.typed", *splits]
missing = [n for n in need_sdist if n not in names]
missing += [f"wheel:{n}" for n in splits + ["metalearn/py.typed"] if n not in in_wheel]
if not any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in in_wheel):
    missing.append("wheel:LICENSE")
if missing:
    sys.exit(f"sdist/wheel lacks: {missing}")
print(f"   sdist holds {len(names)} files, the wheel {len(in_wheel)}; all required ones present")
PY

"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$wheel"
# from $tmp, so that `import metalearn` cannot find the checkout
(cd "$tmp" && env -u METALEARN_DATA "$tmp/venv/bin/python" - <<'PY'
import os
import numpy as np
import metalearn as ml
from metalearn.datasets import omniglot_search_paths
from metalearn.datasets._omniglot import vinyals_split
from metalearn.keras import layers, models, optimizers

here = os.path.dirname(ml.__file__)
assert "site-packages" in here, here
ml.random.set_seed(0)
x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
model = models.Sequential([layers.Dense(16, activation="relu", input_shape=(4,)), layers.Dense(1)])
model.compile(optimizer=optimizers.Adam(0.02), loss="mse")
h = model.fit(x, y, epochs=30, batch_size=16, verbose=0).history["loss"]
assert h[-1] < 0.05 * h[0], h  # a linear target: the fit is close (9.5 -> 0.03)
assert [len(vinyals_split(s)) for s in ("train", "val", "trainval", "test")] == [1028, 172, 1200, 423]
# an installed package does not look for a checkout's ../shared/data
assert not any("shared" in str(p) for p in omniglot_search_paths()), omniglot_search_paths()
print(f"   wheel works outside the tree: fit loss {h[0]:.3f} -> {h[-1]:.3f}, vinyals splits shipped")
PY
)
