"""Result cards: what one evaluation measured, on what, with what, where.

``learner.evaluate(tasks, episodes=..., card="cards/protonet-5w1s.json")`` writes a card;
``python -m metalearn.report cards/*.json`` prints them as one Markdown table.

A card (UTF-8 JSON, ``"format": "metalearn.card"``, version 1) holds:

- ``algorithm`` (``MAML``, ``ProtoNet`` ...) and its ``hyperparameters`` (inner_lr,
  inner_steps, first_order, meta_lr, the meta-optimizer's configuration ...) and
  ``meta_iterations`` (meta-updates the learner has made);
- ``backbone``: the model's name, class, layers, and parameter counts (all, trainable);
- ``dataset``: the SHA-256 of the evaluation data (``tasks.episodes.dataset_checksum``)
  and its shape (with the sampler's description and seed when episodes came from a
  sampler), or the sampler's description (and seed) for generated tasks (Sinusoid),
  or for a fixed Task batch the SHA-256 of its four arrays and their shapes;
- ``episodes``: the frozen episode set's hash, name, way, shot, queries and seed
  (``tasks.EpisodeSet``), or null when episodes came from a sampler;
- ``results``: per inner-step count, the metric's name, mean and 95 % interval
  (1.96 standard errors), the mean query loss and the number of episodes; a row made
  outside ``evaluate`` (``result``, ``correlation``: a benchmark's own measurement, such
  as accuracy by memory lookup or a Spearman correlation) may carry a ``label`` saying
  which variant it measured, a null ``loss``, and for a correlation a null ``ci95`` with
  its 95 % ``interval`` [low, high];
- ``setting`` (only in cards written with ``make_card(..., setting=...)``): what the
  benchmark row did beyond the learner's own hyper-parameters (its protocol, budget,
  task description);
- ``wall_time_s``, ``created`` (UTC), ``machine`` (platform, processor, CPU model,
  logical CPUs, metalearn's kernel and thread count), ``metalearn`` (version, and the git
  commit when run from a checkout, with ``dirty`` when it has uncommitted changes).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "make_card",
    "write_card",
    "read_card",
    "table",
    "main",
    "check_card_path",
    "result",
    "correlation",
]

FORMAT = "metalearn.card"
VERSION = 1


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> Dict[str, Any]:
    """Where a card was made: platform, processor, CPU model, CPUs, kernel, threads."""
    from metalearn import _core

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": _core.kernel_name(),
        "threads": _core.get_num_threads(),
    }


def version_info() -> Dict[str, Any]:
    """metalearn's version, and its git commit when it runs from a checkout."""
    import metalearn

    out: Dict[str, Any] = {"version": metalearn.__version__, "commit": None}
    root = Path(metalearn.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return out
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return out
    if commit.returncode == 0:
        out["commit"] = commit.stdout.strip()
        out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return out


def backbone(model: Any) -> Dict[str, Any]:
    """The model's name, class, layers and parameter counts."""
    weights = list(getattr(model, "weights", []))
    trainable = list(getattr(model, "trainable_weights", []))
    count = lambda ws: int(sum(int(np.prod(w.shape)) for w in ws))  # noqa: E731
    layers = [type(layer).__name__ for layer in getattr(model, "layers", [])]
    return {
        "name": getattr(model, "name", None),
        "class": type(model).__name__,
        "layers": layers,
        "parameters": count(weights),
        "trainable_parameters": count(trainable),
    }


def _dataset(tasks):
    from metalearn.tasks.episodes import EpisodeSet, dataset_checksum

    if isinstance(tasks, EpisodeSet):
        return dict(tasks.meta["dataset"])
    if hasattr(tasks, "x") and hasattr(tasks, "y"):
        x = np.asarray(tasks.x)
        return {
            "sha256": dataset_checksum(tasks),
            "x_shape": [int(d) for d in x.shape],
            "x_dtype": x.dtype.str,
            "classes": int(len(np.unique(np.asarray(tasks.y)))),
            **_sampler(tasks),
        }
    if isinstance(tasks, tuple) and hasattr(tasks, "support_x"):
        # a fixed Task batch: its arrays' hash, not their repr (megabytes of numbers)
        h = hashlib.sha256()
        shapes = []
        for a in tasks[:4]:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
            h.update(a.data)
            shapes.append([int(d) for d in a.shape])
        return {"sha256": h.hexdigest(), "task_batch": shapes}
    return {"sha256": None, **_sampler(tasks)}


def _sampler(tasks):
    """A sampler's description, and its seed when it was given one (episodes drawn from a
    sampler, not a frozen set, are told apart by it)."""
    out = {"sampler": repr(tasks)}
    seed = getattr(tasks, "seed", None)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        out["seed"] = int(seed)
    return out


def _episodes(tasks):
    from metalearn.tasks.episodes import EpisodeSet

    if not isinstance(tasks, EpisodeSet):
        return None
    m = tasks.meta
    return {
        "hash": tasks.hash,
        "name": m.get("name"),
        "n_way": m["n_way"],
        "k_shot": m["k_shot"],
        "q_queries": m["q_queries"],
        "augment_rotations": m["augment_rotations"],
        "seed": m["seed"],
        "episodes": len(tasks),
    }


def result(
    values: Any,
    metric: str,
    *,
    steps: Optional[int] = None,
    label: Optional[str] = None,
    loss: Any = None,
) -> Dict[str, Any]:
    """A card's result row from per-episode values of `metric` (``"accuracy"``, ``"mse"``
    ...): their mean and 95 % interval computed as ``evaluate`` does (1.96 standard
    errors), the mean of the per-episode `loss` values when given, the episode count, the
    inner-step count (None: no gradient step or the learner's default) and a `label`
    naming the variant measured (e.g. ``"with memory warm start"``)."""
    from metalearn.meta._base import _mean_ci

    if not isinstance(metric, str) or not metric:
        raise ValueError(f"result: metric must be a name such as 'accuracy', got {metric!r}")
    v = np.asarray(values, np.float64).reshape(-1)
    if len(v) == 0:
        raise ValueError(f"result: no values for {metric!r}")
    mean, ci = _mean_ci(v)
    return {
        "steps": steps,
        "label": label,
        "metric": metric,
        "mean": mean,
        "ci95": ci,
        "loss": None if loss is None else float(np.mean(np.asarray(loss, np.float64))),
        "episodes": int(len(v)),
    }


def correlation(
    rho: float,
    n: int,
    metric: str = "spearman",
    *,
    steps: Optional[int] = None,
    label: Optional[str] = None,
) -> Dict[str, Any]:
    """A card's result row for a rank correlation `rho` over `n` tasks: ``ci95`` is null
    (the interval is not symmetric) and ``interval`` is the 95 % interval from Fisher's z
    with Bonett & Wright's variance for Spearman's rho, ``1.06 / (n - 3)``
    (Pearson's: ``1 / (n - 3)``); null below 4 tasks."""
    if metric not in ("spearman", "pearson"):
        raise ValueError(f"correlation: metric must be 'spearman' or 'pearson', got {metric!r}")
    rho, n = float(rho), int(n)
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"correlation: rho must be in [-1, 1], got {rho!r}")
    interval = None
    if n >= 4 and abs(rho) < 1.0:
        half = 1.96 * math.sqrt((1.06 if metric == "spearman" else 1.0) / (n - 3))
        z = math.atanh(rho)
        interval = [math.tanh(z - half), math.tanh(z + half)]
    return {
        "steps": steps,
        "label": label,
        "metric": metric,
        "mean": rho,
        "ci95": None,
        "interval": interval,
        "loss": None,
        "episodes": n,
    }


def make_card(
    learner: Any,
    tasks: Any,
    results: Any,
    wall_time: float,
    *,
    algorithm: Optional[str] = None,
    setting: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The card of one evaluation (see the module docstring); `results` maps an inner-step
    count (None: the learner's default) to evaluate's dict, or is a list of rows made by
    `result` / `correlation` (a benchmark's own measurement). `algorithm` names what was
    measured when it is more than the learner's class (default: the class's name);
    `setting` holds what the row did beyond the learner's hyper-parameters."""
    from metalearn.checkpoint import hyperparameters

    if isinstance(results, dict):
        metric = learner.metric_name
        rows = []
        for steps, r in results.items():
            rows.append(
                {
                    "steps": steps,
                    "metric": metric,
                    "mean": float(r[metric]),
                    "ci95": float(r["ci95"]),
                    "loss": float(r["loss"]),
                    "episodes": int(r["episodes"]),
                }
            )
    else:
        rows = [dict(r) for r in results]
        for r in rows:
            if not {"metric", "mean", "ci95", "episodes"} <= set(r):
                raise ValueError(
                    "make_card: a result row needs metric, mean, ci95 and episodes "
                    f"(make it with report.result or report.correlation), got {sorted(r)}"
                )
    # MetaLearner counts its meta-updates in its algorithm
    inner = getattr(learner, "algorithm", None)
    iterations = getattr(learner, "iterations", getattr(inner, "iterations", 0))
    card = {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": algorithm or type(learner).__name__,
        "hyperparameters": hyperparameters(learner),
        "meta_iterations": int(iterations),
        "backbone": backbone(learner.model),
        "dataset": _dataset(tasks),
        "episodes": _episodes(tasks),
        "results": rows,
        "wall_time_s": float(wall_time),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "metalearn": version_info(),
    }
    if setting is not None:
        card["setting"] = dict(setting)
    return card


def check_card_path(path: Any) -> Path:
    """The card's path, refused before an evaluation runs when it cannot be written: its
    folder is missing or it names a folder."""
    p = Path(os.fspath(path))
    if p.is_dir():
        raise ValueError(f"card: {p} is a folder; give a file name such as result.json")
    if not p.parent.is_dir():
        raise ValueError(f"card: the folder {p.parent} does not exist")
    return p


def write_card(path: Any, card: Dict[str, Any]) -> Path:
    """Writes `card` as JSON to `path` atomically (temporary file, fsync, rename)."""
    from metalearn import _core

    p = check_card_path(path)
    _core.write_file(str(p), (json.dumps(card, indent=1, allow_nan=True) + "\n").encode())
    return p


def read_card(path: Any) -> Dict[str, Any]:
    """Reads a card, refusing a file that is not one (ValueError naming the file)."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable result card ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ValueError(f'{path}: not a metalearn result card (no "format": "{FORMAT}")')
    if card.get("version") != VERSION:
        raise ValueError(f"{path}: card version {card.get('version')!r}; this reads {VERSION}")
    return card


def _short(h, n=8):
    return h[:n] if isinstance(h, str) else "-"


def _task_name(card):
    e = card.get("episodes")
    if e:
        return f"{e['n_way']}-way {e['k_shot']}-shot"
    return str((card.get("setting") or {}).get("task", "-"))


def _result_text(r):
    """A result with its interval: accuracy in %, other metrics by name."""
    if r["metric"] == "accuracy_gain" and r.get("ci95") is not None:  # a paired difference
        return f"{100 * r['mean']:+.2f} ± {100 * r['ci95']:.2f} points"
    if r["metric"] == "accuracy" and r.get("ci95") is not None:
        return f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f} %"
    if r["metric"] == "accuracy":
        return f"{100 * r['mean']:.2f} %"
    if r.get("ci95") is not None:
        return f"{r['metric']} {r['mean']:.4g} ± {r['ci95']:.2g}"
    if r.get("interval"):
        lo, hi = r["interval"]
        return f"{r['metric']} {r['mean']:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{r['metric']} {r['mean']:.4g}"


def _steps_text(r):
    if r.get("label") and r.get("steps") is None:
        return r["label"]
    steps = "default" if r.get("steps") is None else str(r["steps"])
    return f"{r['label']}, {steps}" if r.get("label") else steps


def table(cards: Sequence[Dict[str, Any]], names: Optional[Sequence[str]] = None) -> str:
    """The cards as a Markdown table, one row per card and inner-step count."""
    head = [
        "card",
        "algorithm",
        "backbone (params)",
        "task",
        "steps",
        "result (± 95 %)",
        "episodes",
        "episode set",
        "dataset",
        "wall time",
        "commit",
    ]
    lines: List[List[str]] = []
    for i, card in enumerate(cards):
        bb = card.get("backbone", {})
        commit = card.get("metalearn", {}).get("commit")
        commit_s = _short(commit) + ("+" if card.get("metalearn", {}).get("dirty") else "")
        for r in card.get("results", []):
            lines.append(
                [
                    names[i] if names else str(i),
                    card.get("algorithm", "?"),
                    f"{bb.get('class', '?')} ({bb.get('parameters', 0):,})",
                    _task_name(card),
                    _steps_text(r),
                    _result_text(r),
                    str(r["episodes"]),
                    _short((card.get("episodes") or {}).get("hash")),
                    _short(card.get("dataset", {}).get("sha256")),
                    f"{card.get('wall_time_s', 0):.1f} s",
                    commit_s if commit else "-",
                ]
            )
    widths = [max(len(h), *(len(row[j]) for row in lines)) for j, h in enumerate(head)]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    out = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(row) for row in lines]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m metalearn.report CARD.json ...``: prints the cards' table."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m metalearn.report", description="Print result cards as a table."
    )
    parser.add_argument("cards", nargs="+", help="result card files (evaluate(card=...))")
    args = parser.parse_args(argv)
    cards, names = [], []
    for path in args.cards:
        try:
            cards.append(read_card(path))
        except ValueError as exc:
            print(f"metalearn.report: {exc}", file=sys.stderr)
            return 2
        names.append(Path(path).stem)
    print(table(cards, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# dir() and tab completion offer the API only (metalearn/__init__.py's rule; this module is
# not imported with the package, so it applies the rule itself)
def __dir__():
    import sys

    from metalearn import _public_dir

    return _public_dir(sys.modules[__name__])()
