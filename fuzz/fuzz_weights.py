"""Fuzzes the weight-file loader: ``metalearn._core.load_tensors`` on mutated files.

Every input either loads (and then must round-trip: saving what was loaded and loading
it again gives the same names and bits) or is refused with OSError/ValueError. Anything
else — a crash, a sanitizer report, SystemError, another exception type — is a finding.

The format ends with a CRC-32 of everything before it, so a random mutation almost always
stops at the checksum. Half of the inputs therefore get their CRC recomputed after
mutation (the first byte of the input chooses), which sends them on into the parser
behind the checksum: counts, name lengths, ranks, shapes, sizes.

    python fuzz/fuzz_weights.py fuzz/corpus/weights -max_total_time=60
    python fuzz/fuzz_weights.py --make-corpus fuzz/corpus/weights   # (re)write the seeds
"""

import os
import struct
import sys
import tempfile
import zlib

import atheris

import numpy as np

import metalearn._core as core  # C: covered natively only in the clang build of fuzz.sh

_DIR = tempfile.mkdtemp(prefix="fuzz-weights-")
_PATH = os.path.join(_DIR, "w.mlw")
_PATH2 = os.path.join(_DIR, "w2.mlw")


def _check(path):
    try:
        entries = core.load_tensors(path)
    except (OSError, ValueError):
        return
    names = [n for n, _ in entries]
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for _, a in entries]
    for a in arrays:
        assert a.dtype == np.float32
    core.save_tensors(_PATH2, names, [core.as_tensor(a) for a in arrays])
    again = core.load_tensors(_PATH2)
    assert [n for n, _ in again] == names, "names changed in a round trip"
    for (_, a), b in zip(again, arrays):
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), "data changed in a round trip"


@atheris.instrument_func
def TestOneInput(data):
    if not data:
        return
    fix_crc, body = data[0] & 1, data[1:]
    if fix_crc and len(body) >= 4:
        body = body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]) & 0xFFFFFFFF)
    with open(_PATH, "wb") as f:
        f.write(body)
    _check(_PATH)


def make_corpus(folder):
    """Seeds: valid files of a few layouts (the binding writes them), each prefixed by the
    byte that selects CRC fixing."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    layouts = {
        "empty": [],
        "scalar": [("s", np.float32(3.5).reshape(()))],
        "dense": [("layers/0/kernel", rng.normal(size=(4, 3))), ("layers/0/bias", np.zeros(3))],
        "mlp": [
            ("d1/kernel", rng.normal(size=(6, 5))),
            ("d1/bias", rng.normal(size=5)),
            ("d2/kernel", rng.normal(size=(5, 2))),
            ("d2/bias", rng.normal(size=2)),
        ],
        "ranks": [
            ("r0", np.ones(())),
            ("r1", np.ones(2)),
            ("r4", np.ones((1, 2, 1, 2))),
            ("r8", np.ones((1,) * 8)),
            ("zero", np.ones((0, 3))),
        ],
        "specials": [("nan_inf", np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45]))],
        "unicode": [("Gewichte/ß/κ", np.ones(2))],
    }
    for name, entries in layouts.items():
        core.save_tensors(
            _PATH,
            [n for n, _ in entries],
            [core.tensor(np.asarray(a, np.float32)) for _, a in entries],
        )
        raw = open(_PATH, "rb").read()
        for flag in (0, 1):
            with open(os.path.join(folder, f"{name}-{flag}"), "wb") as f:
                f.write(bytes([flag]) + raw)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(sys.argv[2])
        sys.exit(0)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
