"""The C example (examples/c/quickstart.c) builds against the public header and the static
library alone, runs, and prints the right numbers: f''(x) = 2a and a falling loss."""

import os
import re
import shutil
import subprocess
import pytest

from tests.helpers import REPO as ROOT

EXAMPLE = ROOT / "examples" / "c" / "quickstart.c"

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or shutil.which("make") is None,
    reason="needs a C compiler (cc) and make",
)


# make, cc and the example are plain programs: under .ci/sanitize-python.sh the ASan
# runtime preloaded into Python must not be preloaded into them
ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


@pytest.fixture(scope="module")
def quickstart_output(tmp_path_factory):
    # the library, as a user builds it (incremental: quick when already built)
    subprocess.run(
        ["make", "-C", str(ROOT / "csrc"), "-s"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    exe = tmp_path_factory.mktemp("c_example") / "quickstart"
    build = subprocess.run(
        [
            "cc",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            str(ROOT / "csrc" / "include"),
            str(EXAMPLE),
            str(ROOT / "csrc" / "build" / "libmetalearn.a"),
            "-lm",
            "-lpthread",
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _value(out, name):
    m = re.search(rf"^{re.escape(name)} = (\S+)$", out, re.M)
    assert m, f"{name!r} not printed:\n{out}"
    return float(m.group(1))


def test_example_uses_only_the_public_header():
    includes = re.findall(r'#include\s+[<"]([^>"]+)[>"]', EXAMPLE.read_text())
    standard = {"stdio.h", "stdlib.h", "stdint.h", "stddef.h", "string.h", "math.h"}
    assert "metalearn.h" in includes
    assert set(includes) <= standard | {"metalearn.h"}, includes


def test_derivatives(quickstart_output):
    out = quickstart_output
    a = float(re.search(r"^a = (\S+), b = (\S+), x = (\S+)$", out, re.M).group(1))
    b = float(re.search(r"^a = (\S+), b = (\S+), x = (\S+)$", out, re.M).group(2))
    x = float(re.search(r"^a = (\S+), b = (\S+), x = (\S+)$", out, re.M).group(3))
    assert _value(out, "f(x)") == pytest.approx(a * x * x + b)
    assert _value(out, "f'(x)") == pytest.approx(2 * a * x)
    assert _value(out, "f''(x)") == pytest.approx(2 * a)


def test_regression_loss_goes_down(quickstart_output):
    out = quickstart_output
    losses = [float(v) for v in re.findall(r"^epoch +\d+ loss (\S+)$", out, re.M)]
    assert len(losses) >= 5
    assert losses[-1] < 1e-3 * losses[0]
    assert all(b <= a * 1.5 for a, b in zip(losses, losses[1:])), losses  # no blow-up
    m = re.search(r"^learned w = \[(\S+), (\S+), (\S+)\], c = (\S+) ", out, re.M)
    learned = [float(v) for v in m.groups()]
    assert learned == pytest.approx([1.5, -2.0, 0.5, 0.3], abs=1e-2)
    assert _value(out, "adam iterations") == 200  # one optimizer for the whole run
