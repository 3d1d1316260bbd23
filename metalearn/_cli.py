"""``python -m metalearn train | evaluate | recognise``: few-shot learning on a folder of
class folders of images (issue 27). ``python -m metalearn`` alone is the demo
(``__main__``).

The model folder that ``train --output M`` writes holds ``model.weights`` (the encoder's
weights), ``config.json`` (the encoder's architecture, the algorithm, the preprocessing and
the training settings) and ``history.json``; ``evaluate`` and ``recognise`` read it and
apply the same ``datasets.Preprocess`` to new images.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

PROG = "python -m metalearn"
COMMANDS = ("train", "evaluate", "recognise", "recognize")
FORMAT = "metalearn-fewshot-model"
VERSION = 1


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return v


def _parser():
    p = _Parser(
        prog=PROG,
        description="Few-shot learning on your own images: meta-train on a folder of class "
        "folders, then recognise new classes from one example each. Without a command: "
        "the demo (python -m metalearn --help).",
    )
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    t = sub.add_parser(
        "train",
        help="meta-train on DIR/<class>/<image> and write a model folder",
        description="Meta-train a ProtoNet on a folder of class folders of images (PNG; "
        "JPEG etc. with Pillow) and write the model folder --output (weights, config, "
        "preprocessing).",
    )
    t.add_argument("--data", required=True, metavar="DIR", help="folder of class folders")
    t.add_argument(
        "--algorithm",
        choices=("protonet",),
        default="protonet",
        help="meta-learning algorithm (protonet: recognition by the nearest class prototype)",
    )
    t.add_argument(
        "--model",
        choices=("mlp", "conv4"),
        default="mlp",
        help="encoder: an MLP (fast on CPU) or the conv4 net of ProtoNets (better, slower)",
    )
    t.add_argument("--output", required=True, metavar="DIR", help="the model folder to write")
    t.add_argument("--ways", type=_positive_int, default=5, help="classes per training task")
    t.add_argument("--shots", type=_positive_int, default=1, help="support examples per class")
    t.add_argument(
        "--queries",
        type=int,
        default=None,
        help="query examples per class (default: what the smallest class allows, up to 5)",
    )
    t.add_argument(
        "--iterations", type=_positive_int, default=1000, help="meta-iterations (default 1000)"
    )
    t.add_argument(
        "--time-budget",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop meta-training after this many seconds (at an iteration boundary)",
    )
    t.add_argument("--size", type=_positive_int, default=28, help="image side in pixels (28)")
    t.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 gray, 3 RGB")
    t.add_argument(
        "--polarity",
        choices=("auto", "keep", "invert"),
        default="auto",
        help="ink polarity: auto makes the background dark (inverting dark ink on white paper)",
    )
    t.add_argument(
        "--resize",
        choices=("lanczos", "area", "nearest"),
        default="lanczos",
        help="resize filter (lanczos: as Pillow's LANCZOS, the Omniglot arrays' recipe)",
    )
    _common(t)
    e = sub.add_parser(
        "evaluate",
        help="N-way K-shot accuracy of a model folder on DIR's classes",
        description="Evaluate a model folder on N-way K-shot episodes drawn from the class "
        "folders of --data (classes the model has not seen, for a fair test).",
    )
    e.add_argument("--model", required=True, metavar="DIR", help="a model folder (train --output)")
    e.add_argument("--data", required=True, metavar="DIR", help="folder of class folders")
    e.add_argument("--ways", type=_positive_int, default=5, help="classes per episode")
    e.add_argument("--shots", type=_positive_int, default=1, help="support examples per class")
    e.add_argument("--queries", type=int, default=None, help="queries per class (default: up to 5)")
    e.add_argument("--episodes", type=_positive_int, default=100, help="episodes (default 100)")
    _common(e)
    for name in ("recognise", "recognize"):
        r = sub.add_parser(
            name,
            help="recognise query images from support examples" if name == "recognise" else None,
            description="Recognise each query image as one of the support classes (the "
            "nearest class prototype): prints CSV (file, predicted class, distance, true "
            "class); with --output, writes predictions.csv and a contact sheet "
            "contact_sheet.png (query -> nearest support example; needs matplotlib).",
        )
        r.add_argument(
            "--model", required=True, metavar="DIR", help="a model folder (train --output)"
        )
        r.add_argument(
            "--support",
            required=True,
            metavar="DIR",
            help="DIR/<class>/<image>: one or more examples of each new class",
        )
        r.add_argument(
            "--query",
            required=True,
            metavar="DIR",
            help="images to recognise: in DIR, or in DIR/<class>/ (the true class is then "
            "reported and accuracy printed)",
        )
        r.add_argument("--output", default=None, metavar="DIR", help="folder for the CSV and image")
        _common(r)
    return p


def _common(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="progress output")


# ------------------------------------------------------------------ model folder


def _encoder(kind, input_shape):
    from metalearn import keras
    from metalearn.meta import models

    if kind == "conv4":
        return models.conv4(input_shape=tuple(input_shape))
    return keras.Sequential(
        [
            keras.layers.Input(tuple(input_shape)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(64),
        ]
    )


def save_model_folder(out: Path, encoder, preprocess, settings: dict, history: dict) -> None:
    """Writes the model folder: weights first, config last (each file atomically), so a
    folder with a config.json is complete."""
    from metalearn import _core
    from metalearn.keras import layers

    out.mkdir(parents=True, exist_ok=True)
    encoder.save_weights(out / "model.weights")
    _core.write_file(str(out / "history.json"), json.dumps(history, indent=1).encode())
    config = {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": "protonet",
        "encoder": layers.serialize(encoder),
        "input_shape": list(preprocess.output_shape),
        "preprocess": preprocess.get_config(),
        "training": settings,
    }
    _core.write_file(str(out / "config.json"), json.dumps(config, indent=1).encode())


def load_model_folder(path) -> tuple:
    """``(encoder, preprocess, config)`` from a model folder; CLIError naming the problem."""
    import numpy as np

    from metalearn.datasets import Preprocess
    from metalearn.keras import layers

    folder = Path(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CLIError(f"--model {path}: not a model folder (no config.json; make one with train)")
    try:
        config = json.loads(cfg_file.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format is {config.get('format')!r}, not {FORMAT!r}")
        if config.get("version") != VERSION:
            raise ValueError(f"version {config.get('version')!r} (this metalearn reads {VERSION})")
        preprocess = Preprocess.from_config(config["preprocess"])
        encoder = layers.deserialize(config["encoder"])
        encoder(np.zeros((1, *config["input_shape"]), np.float32))  # build
        encoder.load_weights(folder / "model.weights")
    except CLIError:
        raise
    except Exception as e:  # a damaged folder: one line naming it
        raise CLIError(f"--model {path}: cannot load the model: {_one_line(e)}") from None
    return encoder, preprocess, config


# ------------------------------------------------------------------ commands


def _one_line(exc) -> str:
    return " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())


def _load_folder(path, preprocess, what, min_per_class=1, verbose=1):
    from metalearn.datasets import image_folder

    try:
        return image_folder(path, preprocess=preprocess, min_per_class=min_per_class)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"{what} {path}: {_one_line(e)}") from None


def _queries(per_class_min, shots, asked):
    if asked is not None:
        if asked < 1 or shots + asked > per_class_min:
            raise CLIError(
                f"--queries {asked}: each class needs shots + queries images, the smallest "
                f"class has {per_class_min}"
            )
        return asked
    q = min(5, per_class_min - shots)
    if q < 1:
        raise CLIError(
            f"the smallest class has {per_class_min} images: training needs at least "
            f"--shots + 1 = {shots + 1} per class"
        )
    return q


def cmd_train(args) -> int:
    import numpy as np

    import metalearn as ml
    from metalearn import meta, tasks
    from metalearn.datasets import Preprocess

    t0 = time.perf_counter()
    pre = Preprocess(
        size=args.size, channels=args.channels, resize=args.resize, polarity=args.polarity
    )
    data = _load_folder(args.data, pre, "--data")
    counts = np.bincount(data.y, minlength=data.num_classes)
    if data.num_classes < 2:
        raise CLIError(
            f"--data {args.data}: needs at least 2 class folders, found {data.num_classes}"
        )
    ways = min(args.ways, data.num_classes)
    queries = _queries(int(counts.min()), args.shots, args.queries)
    print(
        f"train: {len(data)} images of {data.num_classes} classes from {args.data}, "
        f"{ways}-way {args.shots}-shot, {queries} queries per class",
        flush=True,
    )
    ml.random.set_seed(args.seed)
    encoder = _encoder(args.model, pre.output_shape)
    learner = meta.ProtoNet(encoder)
    sampler = tasks.NWayKShot(
        data,
        n_way=ways,
        k_shot=args.shots,
        q_queries=queries,
        augment_rotations=False,
        seed=args.seed,
    )
    history = learner.fit(
        sampler,
        iterations=args.iterations,
        meta_batch_size=1,
        verbose=args.verbose,
        time_budget=args.time_budget,
    )
    done = len(history["loss"])
    stopped = history.get("stopped")
    tail = history["accuracy"][-max(1, done // 10) :]
    print(
        f"train: {done} meta-iterations in {time.perf_counter() - t0:.1f} s"
        + (" (stopped by the time budget)" if stopped == "time_budget" else "")
        + f"; training query accuracy (last 10 %) {100 * float(np.mean(tail)):.1f} %",
        flush=True,
    )
    settings = {
        "data": str(args.data),
        "model": args.model,
        "ways": ways,
        "shots": args.shots,
        "queries": queries,
        "iterations": done,
        "stopped": stopped,
        "seed": args.seed,
        "classes": data.class_names,
    }
    save_model_folder(Path(args.output), encoder, pre, settings, history)
    print(f"train: wrote the model folder {args.output} (model.weights, config.json, history.json)")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from metalearn import meta, tasks

    encoder, pre, config = load_model_folder(args.model)
    data = _load_folder(args.data, pre, "--data")
    counts = np.bincount(data.y, minlength=data.num_classes)
    if args.ways > data.num_classes:
        raise CLIError(f"--ways {args.ways}: --data {args.data} has {data.num_classes} classes")
    queries = _queries(int(counts.min()), args.shots, args.queries)
    sampler = tasks.NWayKShot(
        data, args.ways, args.shots, queries, augment_rotations=False, seed=args.seed
    )
    res = meta.ProtoNet(encoder).evaluate(sampler, episodes=args.episodes, verbose=args.verbose)
    print(
        f"evaluate: {args.ways}-way {args.shots}-shot on {data.num_classes} classes of "
        f"{args.data}, {res['episodes']} episodes: accuracy {100 * res['accuracy']:.2f} "
        f"± {100 * res['ci95']:.2f} %"
    )
    return 0


def recognise(encoder, preprocess, support, query_files) -> List[dict]:
    """Each query's nearest class prototype: ``{"file", "predicted", "distance",
    "nearest_support"}`` (Euclidean distances in the embedding)."""
    import numpy as np

    from metalearn.datasets import read_image

    read_as = 3 if preprocess.channels == 3 else 1
    emb_s = np.asarray(encoder(support.x, training=False), np.float64)
    protos = np.stack([emb_s[support.y == c].mean(0) for c in range(support.num_classes)])
    out = []
    batch = 64
    for i in range(0, len(query_files), batch):
        files = query_files[i : i + batch]
        xq = np.stack([preprocess.one(read_image(f, read_as)) for f in files])
        eq = np.asarray(encoder(xq, training=False), np.float64)
        d = np.sqrt(np.maximum(((eq[:, None, :] - protos[None]) ** 2).sum(-1), 0.0))
        ds = np.sqrt(np.maximum(((eq[:, None, :] - emb_s[None]) ** 2).sum(-1), 0.0))
        for f, row, srow in zip(files, d, ds):
            c = int(np.argmin(row))
            out.append(
                {
                    "file": f,
                    "predicted": support.class_names[c],
                    "distance": float(row[c]),
                    "nearest_support": int(np.argmin(srow)),
                }
            )
    return out


def cmd_recognise(args) -> int:
    from metalearn.datasets import read_image
    from metalearn.datasets.image_folder import image_files

    encoder, pre, _ = load_model_folder(args.model)
    support = _load_folder(args.support, pre, "--support")
    try:
        queries = image_files(args.query)
    except FileNotFoundError as e:
        raise CLIError(f"--query {args.query}: {_one_line(e)}") from None
    if not queries:
        raise CLIError(f"--query {args.query}: no images (PNG; JPEG etc. with Pillow)")
    try:
        results = recognise(encoder, pre, support, [f for f, _ in queries])
    except ValueError as e:  # a query image that cannot be read: named
        raise CLIError(f"--query {args.query}: {_one_line(e)}") from None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "predicted_class", "distance", "true_class"])
    right = known = 0
    for r, (_, truth) in zip(results, queries):
        w.writerow([r["file"], r["predicted"], f"{r['distance']:.6g}", truth or ""])
        if truth is not None:
            known += 1
            right += r["predicted"] == truth
    text = buf.getvalue()
    sys.stdout.write(text)
    summary = f"recognise: {len(results)} queries, {support.num_classes} support classes"
    if known:
        summary += f"; accuracy on the {known} with a known class {100 * right / known:.1f} %"
    if args.output:
        from metalearn import _core

        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        _core.write_file(str(out / "predictions.csv"), text.encode())
        summary += f"; wrote {out / 'predictions.csv'}"
        sheet = _contact_sheet(out / "contact_sheet.png", results, queries, support, read_image)
        summary += f" and {sheet}" if sheet.endswith(".png") else f" ({sheet})"
    print(summary, file=sys.stderr)
    return 0


def _contact_sheet(path, results, queries, support, read_image) -> str:
    """query -> nearest support example, one row per query (at most 40); the path, or a
    note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no contact sheet: matplotlib is not installed"
    rows = results[:40]
    fig, axes = plt.subplots(len(rows), 2, figsize=(4, 1.6 * len(rows)), squeeze=False)
    for ax_row, r, (_, truth) in zip(axes, rows, queries):
        q = read_image(r["file"], 3)
        s = read_image(support.files[r["nearest_support"]], 3)
        ax_row[0].imshow(q)
        ax_row[0].set_title(Path(r["file"]).name + (f" ({truth})" if truth else ""), fontsize=7)
        ax_row[1].imshow(s)
        ax_row[1].set_title(f"-> {r['predicted']}  d={r['distance']:.3g}", fontsize=7)
        for a in ax_row:
            a.axis("off")
    fig.tight_layout()
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)  # no half-written image under the final name
    return str(path)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs a command; 0 on success, 1 on a failure (one line on stderr), 2 on a usage
    error."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        from metalearn.__main__ import _set_threads

        _set_threads(args.threads)
    run = {"train": cmd_train, "evaluate": cmd_evaluate}.get(args.command, cmd_recognise)
    try:
        return run(args)
    except CLIError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as e:  # anything else the user can fix
        print(f"{PROG} {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
