"""benchmarks/run_all.py: issue 20's rows run at --quick sizes, and the ratio printed is the
one the two timings give."""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import run_all  # noqa: E402

# issue 20's rows (maml84-peak runs full-size child processes: not under --quick)
NEW_ROWS = ["maml-conv4", "fomaml-conv4", "anil-conv4", "metasgd-conv4", "maml84", "proto30"]
TARGETS = {
    "maml-conv4": ">= 2.5x",
    "fomaml-conv4": ">= 2.5x",
    "anil-conv4": ">= 2.5x",
    "metasgd-conv4": ">= 2.5x",
    "maml84": ">= 3x",
    "proto30": ">= 2x",
    "resnet12": ">= 1.5x",
    "reptile-sin": ">= 20x",
    "protonet": ">= 2.5x",
}


def _num(text):
    return float(text.strip().rstrip("x").replace(",", ""))


def _rows(stdout):
    """print_table's first line of each row, by its fixed columns: {row: (unit, metalearn,
    peer, peer value, ratio, target)}."""
    out = {}
    for line in stdout.splitlines():
        if not line or line.startswith(("==", "row ", "---", " ")):
            continue
        out[line[:22].strip()] = (
            line[22:33].strip(),
            line[33:44],
            line[46:62].strip(),
            line[62:73],
            line[74:83],
            line[85:].strip(),
        )
    return out


def _run(rows):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run_all.py"), "--quick", "--threads"]
        + ["1", "--rows", *rows],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert "failed" not in out.stderr, out.stderr
    return _rows(out.stdout)


def test_ratio_is_peer_over_metalearn():
    # the ratio column divides the two values (times: peer / metalearn; rates: metalearn /
    # peer) and shows each row's own target
    results = [
        dict(row="a", unit="iter/s", ml=30.0, peers={"torch": 10.0}, higher=True,
             targets={"torch": ">= 2.5x"}),
        dict(row="b", unit="us/op", ml=2.0, peers={"torch": 7.0}, higher=False,
             targets={"torch": ">= 3x"}),
    ]  # fmt: skip
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_all.print_table(results, 1)
    lines = [l for l in buf.getvalue().splitlines() if l.startswith(("a ", "b "))]
    assert "3.00x" in lines[0] and ">= 2.5x" in lines[0]
    assert "3.50x" in lines[1] and ">= 3x" in lines[1]


def test_new_rows_are_listed_with_issue_20_targets():
    names = [n for n, _ in run_all.ROWS]
    for row in NEW_ROWS + ["maml84-peak", "resnet12", "reptile-sin", "metalearner"]:
        assert row in names
    assert run_all.CONV4_ROWS["fomaml"][1] == ">= 2.5x"


def test_quick_rows_run():
    # metalearn's side of each new row (PyTorch's too where installed), at --quick sizes
    rows = _run(
        ["maml-conv4", "fomaml-conv4", "anil-conv4", "metasgd-conv4", "reptile-sin", "metalearner"]
    )
    for name in ("maml-conv4 2nd mb2", "fomaml-conv4 mb2", "anil-conv4 mb2", "metasgd-conv4 mb2"):
        assert _num(rows[name][1]) > 0
    assert _num(rows["reptile-sin 5 steps"][1]) > 0
    # the Reptile / FOMAML line needs no PyTorch: both sides are metalearn's
    unit, ours, peer, theirs, ratio, target = rows["reptile/fomaml 5 st"]
    assert peer == "ml FOMAML" and target == ">= 0.67x"
    assert _num(ratio) == pytest.approx(_num(ours) / _num(theirs), rel=0.02, abs=0.01)
    # the article's system against its own MAML alone (metalearn on both sides)
    unit, ours, peer, theirs, ratio, target = rows["metalearner mb4"]
    assert peer == "ml MAML alone" and _num(theirs) > 0
    assert _num(ratio) == pytest.approx(_num(ours) / _num(theirs), rel=0.02, abs=0.01)


def _check_time_row(rows, name):
    # a time per call, lower is better: the ratio is the peer's time over metalearn's
    unit, ours, peer, theirs, ratio, target = rows[name]
    assert unit == "us/call" and _num(ours) > 0 and target == "-"
    if peer != "-":
        assert peer == "torch" and _num(ratio) == pytest.approx(
            _num(theirs) / _num(ours), rel=0.02, abs=0.01
        )


def test_adapt_row_runs():
    # metalearn's per-call adapt (and PyTorch's deepcopy + step where installed)
    _check_time_row(_run(["adapt"]), "adapt sin 1 step")


def test_bnpool_row_runs():
    # the block's forward and folded backward (and PyTorch's where installed), quick size
    _check_time_row(_run(["bnpool"]), "bnpool 20x14x14x64")


@pytest.mark.slow
def test_quick_84_rows_run():
    rows = _run(["maml84", "proto30", "resnet12"])
    for name in ("maml84 mb1 1 step", "proto30 5w1s q2", "resnet12 2w1s q1"):
        assert _num(rows[name][1]) > 0


@pytest.mark.torch
def test_every_new_row_has_its_peer_and_ratio():
    pytest.importorskip("torch")
    rows = _run(NEW_ROWS + ["reptile-sin", "protonet"])
    for key in NEW_ROWS + ["reptile-sin", "protonet"]:
        name = next((r for r in rows if r.startswith(key + " ")), None)
        assert name is not None, (key, list(rows))
        unit, ours, peer, theirs, ratio, target = rows[name]
        assert peer.startswith("torch") and _num(theirs) > 0 and _num(ours) > 0, rows[name]
        assert _num(ratio) == pytest.approx(_num(ours) / _num(theirs), rel=0.02, abs=0.01)
        assert target == TARGETS[key], rows[name]


def test_peak_memory_is_the_child_own():
    # conv84's peak-memory children run under run_all.py's process, which holds GBs after
    # the maml84 row; ru_maxrss starts at the parent's resident size (kept across fork and
    # exec), so the child must read its own high-water mark. With a parent holding 1 GiB,
    # a child that only imports the benchmark must report a peak near its own size.
    ballast = np.ones(2**30 // 8)  # touched: resident
    code = (
        f"import sys; sys.path.insert(0, {os.path.join(REPO, 'benchmarks')!r}); "
        # the resident size first: the high-water mark read after it is at least that
        "import conv84; now = conv84._current_rss_mib(); print(now, conv84._rss_mib())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    now, peak = map(float, out.stdout.split()[-2:])
    assert ballast.sum() > 0
    assert now <= peak < now + 256, f"child's peak {peak:.0f} MiB at {now:.0f} MiB resident"


# A child that allocates, touches and frees a 64 MiB block (above glibc's largest mmap
# threshold, 32 MiB) twice, and prints the page faults of each round. Under glibc's
# defaults every round maps fresh pages and faults on each; under run_all's "steady" mode
# the second round reuses the first one's memory. This is what made the PyTorch peer's
# time depend on the rows run before it in the process.
_FAULTS = """
import resource, sys
sys.path.insert(0, {bench!r})
import run_all
print(run_all.set_malloc(sys.argv[1]))
import numpy as np
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(2**26 // 8)  # written: every page touched
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def _faults(mode):
    code = _FAULTS.format(bench=os.path.join(REPO, "benchmarks"))
    out = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    applied, counts = out.stdout.strip().splitlines()[-2:]
    return applied, [int(c) for c in counts.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
@pytest.mark.skipif(
    bool(os.environ.get("METALEARN_SANITIZED")),
    reason="under .ci/sanitize-python.sh ASan's allocator replaces glibc's malloc",
)
def test_steady_malloc_reuses_freed_memory():
    # relative counts: with transparent huge pages a fault may map 2 MiB, not one page
    applied, (first, second) = _faults("glibc")
    assert applied == "glibc defaults"
    assert first > 0 and second > first // 2, (first, second)  # mapped afresh: faults again
    applied, (first, second) = _faults("steady")
    if "refused" in applied or "no mallopt" in applied:
        pytest.fail(f"mallopt was not applied on this Linux machine: {applied}")
    assert applied.startswith("steady")
    assert first > 0 and second < max(first // 10, 4), (first, second)


def test_malloc_mode_is_checked():
    with pytest.raises(ValueError, match="malloc mode must be one of"):
        run_all.set_malloc("jemalloc")
