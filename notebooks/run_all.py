"""Executes the notebooks and stores them with their outputs, so that they read (figures
included) on a code host without being run.

    python notebooks/run_all.py                       # all of them, in order
    python notebooks/run_all.py --only 02_maml_sinusoid

Needs the test extras (``pip install -e '.[test]'``: nbclient, nbformat, ipykernel,
matplotlib); 03 and 04 need the Omniglot data (see the README's "Data"). Each notebook runs
from a fresh kernel in a temporary folder (a notebook must not write into the repository),
top to bottom; the digest of its code is stored in its metadata, so the test suite can tell
stored outputs that no longer match the code (tests/system/test_notebooks.py).
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT_PER_CELL = 600


def code_digest(nb):
    """sha256 of the notebook's code cells, in order: what its stored outputs came from."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode() + b"\0")
    return h.hexdigest()


def execute(nb, cwd, timeout=TIMEOUT_PER_CELL):
    """Runs `nb` (a nbformat notebook, changed in place) from a fresh kernel in `cwd`, with
    matplotlib's inline backend, so that figures are stored as PNG outputs."""
    import nbclient

    before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
            record_timing=False,  # no timestamps in the stored file
        )
        client.execute()
    finally:
        if before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = before
    return nb


def main(argv=None):
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="notebook names (no .ipynb)")
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.only:
        wanted = {n.removesuffix(".ipynb") for n in args.only}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            parser.error(f"no notebook named {', '.join(sorted(unknown))} in {HERE}")
        paths = [p for p in paths if p.stem in wanted]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            execute(nb, tmp)
        nb.metadata["metalearn"] = {"code_sha256": code_digest(nb)}
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {time.perf_counter() - t0:.0f} s, outputs stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
