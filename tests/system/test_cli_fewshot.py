"""python -m metalearn train / evaluate / recognise on a generated folder of glyph images
(issue 27), end to end: the model folder, the same preprocessing at recognition time, the
CSV and contact sheet, the time budget, one-line errors."""

import csv
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from metalearn import _cli
from metalearn.datasets import Preprocess, image_folder
from metalearn.datasets.png import decode_png, encode_png
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """Models built here draw from (or reseed) the global generator: its state is put
    back, so the tests that follow draw what they would have alone."""
    from metalearn import _core

    state = _core.rng_state()
    yield
    _core.rng_set_state(state)


def _glyph(strokes, rng, size):
    """Dark strokes on white paper, jittered per drawing."""
    img = np.full((size, size), 255, np.uint8)
    for r0, c0, r1, c1 in strokes:
        for t in np.linspace(0, 1, 3 * size):
            r = int(round(r0 + (r1 - r0) * t + rng.normal(0, 0.5)))
            c = int(round(c0 + (c1 - c0) * t + rng.normal(0, 0.5)))
            img[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 0
    return img


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    """train/: 10 classes x 4 drawings (odd sizes); new/: 4 other classes, whose first
    drawing is the support set and the rest the queries."""
    root = tmp_path_factory.mktemp("glyphs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("new", 4)):
        for c in range(n):
            size = 30 + 3 * (c % 3)
            strokes = [tuple(rng.integers(3, size - 3, 4)) for _ in range(3)]
            for i in range(4):
                img = _glyph(strokes, rng, size)
                if split == "train":
                    d = root / "train" / f"t{c}"
                else:
                    d = root / ("support" if i == 0 else "query") / f"n{c}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{i}.png").write_bytes(encode_png(img))
    return root


def _run(*args, timeout=120):
    env = dict(os.environ, METALEARN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "metalearn", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )


def _one_line_error(proc, *needles):
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def model_dir(glyphs, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "M"
    proc = _run(
        "train",
        "--data",
        glyphs / "train",
        "--algorithm",
        "protonet",
        "--iterations",
        150,
        "--time-budget",
        600,
        "--size",
        24,
        "--output",
        out,
        "--verbose",
        0,
    )
    assert proc.returncode == 0, proc.stderr
    assert "150 meta-iterations" in proc.stdout
    return out


def test_train_writes_the_model_folder_with_its_preprocessing(model_dir):
    assert {p.name for p in model_dir.iterdir()} >= {"model.weights", "config.json", "history.json"}
    config = json.loads((model_dir / "config.json").read_text())
    want = Preprocess(size=24, channels=1, resize="lanczos", polarity="auto")
    assert Preprocess.from_config(config["preprocess"]) == want
    assert config["input_shape"] == [24, 24, 1] and config["algorithm"] == "protonet"
    assert config["training"]["iterations"] == 150 and config["training"]["stopped"] is None
    history = json.loads((model_dir / "history.json").read_text())
    assert len(history["loss"]) == 150
    # the folder reloads to the trained encoder: same embeddings as re-reading its weights
    encoder, pre, _ = _cli.load_model_folder(model_dir)
    assert pre == want


def test_recognise_end_to_end(glyphs, model_dir, tmp_path):
    out = tmp_path / "out"
    proc = _run(
        "recognise",
        "--model",
        model_dir,
        "--support",
        glyphs / "support",
        "--query",
        glyphs / "query",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 12 and set(rows[0]) == {"file", "predicted_class", "distance", "true_class"}
    assert (out / "predictions.csv").read_text() == proc.stdout
    # the glyph classes are far apart: the nearest prototype is the true class
    right = sum(r["predicted_class"] == r["true_class"] for r in rows)
    assert right >= 11, rows
    # the distance is the Euclidean distance to the predicted class's prototype, with the
    # saved preprocessing applied to the images (recomputed here in NumPy)
    encoder, pre, _ = _cli.load_model_folder(model_dir)
    support = image_folder(glyphs / "support", preprocess=pre)
    protos = np.asarray(encoder(support.x)).astype(np.float64)  # one image per class
    query = image_folder(glyphs / "query", preprocess=pre)
    emb = np.asarray(encoder(query.x)).astype(np.float64)
    for r, e in zip(rows, emb):
        c = support.class_names.index(r["predicted_class"])
        d = np.sqrt(((protos - e) ** 2).sum(1))
        assert np.argmin(d) == c
        assert float(r["distance"]) == pytest.approx(d[c], rel=1e-4)
    sheet = decode_png((out / "contact_sheet.png").read_bytes())
    assert sheet.shape[0] > 100 and sheet.shape[1] > 100
    assert "accuracy" in proc.stderr


def test_recognise_without_matplotlib_notes_the_missing_sheet(
    glyphs, model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "o"
    rc = _cli.main(
        [
            "recognise",
            "--model",
            str(model_dir),
            "--support",
            str(glyphs / "support"),
            "--query",
            str(glyphs / "query" / "n1"),
            "--output",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and "matplotlib is not installed" in captured.err
    assert (out / "predictions.csv").exists() and not (out / "contact_sheet.png").exists()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 3 and all(r["true_class"] == "" for r in rows)  # images in DIR itself


def test_train_time_budget_stops_and_is_recorded(glyphs, tmp_path, monkeypatch, capsys):
    now = [0.0]

    def clock():  # each read moves one second: the budget of 5 s is spent in a few steps
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(time, "monotonic", clock)
    out = tmp_path / "M"
    rc = _cli.main(
        [
            "train",
            "--data",
            str(glyphs / "train"),
            "--iterations",
            "1000",
            "--time-budget",
            "5",
            "--output",
            str(out),
            "--verbose",
            "0",
        ]
    )
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["stopped"] == "time_budget"
    assert 1 <= config["training"]["iterations"] <= 6
    assert "stopped by the time budget" in capsys.readouterr().out


def test_evaluate_on_new_classes(glyphs, model_dir, tmp_path):
    # new/ as one folder of 4 classes x 4 drawings
    data = tmp_path / "new"
    for part in ("support", "query"):
        for d in (glyphs / part).iterdir():
            (data / d.name).mkdir(parents=True, exist_ok=True)
            for f in d.iterdir():
                (data / d.name / f.name).write_bytes(f.read_bytes())
    proc = _run(
        "evaluate",
        "--model",
        model_dir,
        "--data",
        data,
        "--ways",
        4,
        "--episodes",
        20,
        "--verbose",
        0,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4-way 1-shot" in proc.stdout and "20 episodes" in proc.stdout


def test_errors_are_one_line(glyphs, model_dir, tmp_path):
    _one_line_error(
        _run(
            "recognise",
            "--model",
            tmp_path,
            "--support",
            glyphs / "support",
            "--query",
            glyphs / "query",
        ),
        "not a model folder",
    )
    _one_line_error(
        _run("train", "--data", tmp_path / "none", "--output", tmp_path / "M"),
        "--data",
        "not a folder",
    )
    _one_line_error(_run("train", "--data", glyphs / "train"), "--output")  # usage: exit 2
    _one_line_error(
        _run(
            "train", "--data", glyphs / "train", "--output", tmp_path / "M", "--time-budget", "-3"
        ),
        "--time-budget",
    )
    bad = tmp_path / "q"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _one_line_error(
        _run("recognise", "--model", model_dir, "--support", glyphs / "support", "--query", bad),
        "broken.png",
    )
    damaged = tmp_path / "D"
    damaged.mkdir()
    for f in model_dir.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / "model.weights").write_bytes(b"truncated")
    _one_line_error(
        _run(
            "recognise",
            "--model",
            damaged,
            "--support",
            glyphs / "support",
            "--query",
            glyphs / "query",
        ),
        "cannot load the model",
    )
    # the demo is unchanged: no command still runs it (its flags; an unknown one is refused)
    _one_line_error(_run("--no-such-flag"), "unrecognized arguments")
