"""Checkpoints for exact resume: the library's one checkpoint format.

``fit(tasks, iterations, checkpoint_dir=DIR, checkpoint_every=N)`` saves one every N
meta-iterations and at the end; calling the same ``fit`` again (in a new process, after a
crash or a ``kill -9``) finds it, restores it and goes on, and ends with the same bits as a
run that was never interrupted. A checkpoint holds everything the rest of the run depends
on: the weights (every weight of the model, and a learner's own tensors such as Meta-SGD's
learned rates), the meta-optimizer's state (its moments and its step count), the state of
every random generator (the C core's global generator, ``metalearn.random.get_state``, and
the NumPy generator of each task sampler: the task stream's position), the history so far,
and, with ``keep_best``, the best weights and their validation score.

Format (version 1): a directory holding

``checkpoint.json`` -- the manifest, UTF-8 JSON::

    {"format": "metalearn.checkpoint", "version": 1,
     "step": 120,                       # meta-iterations of this fit completed
     "files": {"tensors": {"name": "tensors-00000120.mlw", "bytes": 5321,
                           "sha256": "<hex>"}},
     "fingerprint": {...},              # what must match to resume (below)
     "state": {...},                    # generators, optimizer steps, history, best score
     "sha256": "<hex>"}                 # of this JSON without "sha256" (sorted keys, compact)

``tensors-<step>.mlw`` -- a metalearn weight file (``MLWEIGHT``, CRC-32, as
``save_weights``) with the tensors by name: ``model/<i>`` (``model.weights[i]``),
``extra/<i>`` (the learner's tensors outside the model), ``optimizer/<k>/<p>/<s>`` (slot
``s`` of parameter ``p`` of the optimizer's ``k``-th parameter list) and ``best/<i>``;
a learner with state beyond these (``MetaLearner``: its predictor, the predictor's
optimizer and training buffer, the embedding centre) adds tensors under a name of its own
(``system/...``).

Other files of the checkpoint (``MetaLearner``'s knowledge memory, ``memory-<step>.mlmem``
in ``KnowledgeMemory``'s own checked format) are named by the step as the tensors are and
listed in ``files`` beside ``tensors`` with their size and SHA-256, checked the same way;
a version-1 reader finds none in the checkpoints of the other learners.

The fingerprint names the algorithm, its hyper-parameters, the weights' names and shapes,
the optimizer's class and configuration, the meta-batch size and the samplers' types; a
checkpoint whose fingerprint differs from the run resuming it is refused.

Writing is atomic: the tensors go to a new file named by the step, the manifest is written
last (each through the core's safe writer: a temporary file beside the target, fsync,
rename, fsync of the folder), and only then are the older tensor files removed. A process
killed at any point leaves the previous checkpoint or the new one, whole. Reading checks
the manifest's checksum, the tensor file's size and SHA-256 and its CRC, the fingerprint and
every tensor's name and shape before anything is changed; a corrupt or mismatched
checkpoint raises ``CheckpointError`` (a ``ValueError``) saying what is wrong, and the
learner, its optimizer, the generators and the samplers are left as they were.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from metalearn import _core

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save",
    "load",
    "exists",
    "sampler_state",
    "set_sampler_state",
    "hyperparameters",
]

FORMAT = "metalearn.checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
_TENSORS = re.compile(r"^tensors-\d{8,}\.mlw$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: corrupt, of another format version, or saved by
    another run (other algorithm, hyper-parameters, weights or samplers)."""


# ------------------------------------------------------------------ what is saved


def hyperparameters(learner: Any) -> Dict[str, Any]:
    """The learner's hyper-parameters: its public attributes that are plain numbers,
    strings or booleans (``inner_lr``, ``inner_steps``, ``first_order``, ``meta_lr`` ...),
    and the meta-optimizer's class and configuration."""
    out = {}
    for k, v in sorted(vars(learner).items()):
        if k.startswith("_") or k in ("iterations", "classification", "history"):
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
    opt = getattr(learner, "meta_optimizer", None)
    if opt is not None:
        cfg = dict(opt.get_config()) if hasattr(opt, "get_config") else {}
        cfg.pop("name", None)
        out["meta_optimizer"] = {"class": type(opt).__name__, **cfg}
    return out


def _learner_tensors(learner):
    """(names, tensors): every weight of the model, then the learner's own meta-parameters
    that the model does not hold (Meta-SGD's rates)."""
    model_w = list(learner.model.weights)
    ids = {id(w) for w in model_w}
    meta = learner._meta_params() if hasattr(learner, "_meta_params") else []
    # (and state that is no meta-parameter: MAML++'s per-step moving statistics)
    meta = list(meta) + list(getattr(learner, "_state_tensors", list)())
    extra = [w for w in meta if id(w) not in ids]
    names = [f"model/{i}" for i in range(len(model_w))] + [f"extra/{i}" for i in range(len(extra))]
    return names, model_w + extra


def _describe_weights(learner):
    _, ts = _learner_tensors(learner)
    return [[str(getattr(t, "name", "")), [int(d) for d in t.shape]] for t in ts]


def sampler_state(tasks: Any) -> Any:
    """The position of a task stream, as JSON: a sampler's ``get_state()``, the state of
    its ``rng`` (a ``numpy.random.Generator``), or None for a fixed Task batch (no stream).

    Raises:
        TypeError: a stream whose position cannot be read (a plain function).
    """
    from metalearn.tasks.base import Task

    if tasks is None or isinstance(tasks, Task) or _is_episode_set(tasks):
        return None
    if hasattr(tasks, "get_state") and hasattr(tasks, "set_state"):
        return {"get_state": tasks.get_state()}
    rng = getattr(tasks, "rng", None)
    if isinstance(rng, np.random.Generator):
        return {"numpy": rng.bit_generator.state}
    raise TypeError(
        f"checkpoints need tasks whose position can be saved: a metalearn.tasks sampler "
        f"(its numpy Generator `rng`), an object with get_state()/set_state(), a Task batch "
        f"or an EpisodeSet; got {type(tasks).__name__}"
    )


def _check_sampler_state(tasks, state, what):
    """Raises CheckpointError when `state` cannot be set on `tasks` (nothing changes)."""
    kind = None if state is None else next(iter(state))
    have = sampler_state(tasks)
    have_kind = None if have is None else next(iter(have))
    if kind != have_kind:
        raise CheckpointError(
            f"checkpoint: the {what} stream was saved as {kind or 'none'}, this run's is "
            f"{have_kind or 'none'}"
        )
    if kind == "numpy":
        name = state["numpy"].get("bit_generator")
        if name != have["numpy"].get("bit_generator"):
            raise CheckpointError(
                f"checkpoint: the {what} sampler's generator was {name}, this run's is "
                f"{have['numpy'].get('bit_generator')}"
            )


def set_sampler_state(tasks: Any, state: Any) -> None:
    """Puts a task stream back where ``sampler_state`` read it."""
    if state is None:
        return
    if "get_state" in state:
        tasks.set_state(state["get_state"])
    else:
        tasks.rng.bit_generator.state = state["numpy"]


def _is_episode_set(obj):
    return type(obj).__name__ == "EpisodeSet" and hasattr(obj, "episodes")


def _optimizer_state(opt, tensors, prefix="optimizer"):
    """(JSON state, names, slot tensors) of a metalearn optimizer, its parameter lists given
    as indices into `tensors`; the slots are named ``<prefix>/<k>/<p>/<s>``."""
    if not hasattr(opt, "_cores"):
        raise TypeError(
            f"checkpoints need a metalearn.keras.optimizers optimizer, got {type(opt).__name__}"
        )
    index = {id(t): i for i, t in enumerate(tensors)}
    lists, names, slots = [], [], []
    for core, variables in opt._cores.values():
        if not core.n_params:
            continue  # made but never stepped: no state yet
        missing = [getattr(v, "name", "?") for v in variables if id(v) not in index]
        if missing:
            raise TypeError(
                f"checkpoint: the optimizer updates tensors that are neither the model's "
                f"weights nor the learner's: {missing}"
            )
        k = len(lists)
        per_param = core.slots()
        lists.append(
            {
                "params": [index[id(v)] for v in variables],
                "iterations": int(core.iterations),
                "slots": len(per_param[0]) if per_param else 0,
            }
        )
        for p, ps in enumerate(per_param):
            for s, t in enumerate(ps):
                names.append(f"{prefix}/{k}/{p}/{s}")
                slots.append(t)
    state = {"iterations": int(opt._iterations), "lists": lists}
    if not callable(opt._learning_rate):
        # a float rate may have been changed since (callbacks); a schedule is part of the
        # configuration and is computed from the restored step count
        state["learning_rate"] = float(opt.learning_rate)
    return state, names, slots


# ------------------------------------------------------------------ files


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def exists(directory: Any) -> bool:
    """Whether `directory` holds a checkpoint manifest (not whether it is valid)."""
    return (Path(directory) / MANIFEST).is_file()


def save(
    directory: Any,
    learner: Any,
    *,
    step: int,
    fingerprint: Dict[str, Any],
    state: Dict[str, Any],
    best: Optional[Sequence[Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    files: Optional[Dict[str, Any]] = None,
) -> Path:
    """Writes a checkpoint of `learner` at `step` into `directory` (made if missing).

    Args:
        directory: the checkpoint folder.
        learner: a meta-learner (``BaseMetaLearner``).
        step: meta-iterations completed.
        fingerprint: what a resuming run must match (``fit`` builds it).
        state: JSON-serialisable state (generators, samplers, history, ...); the
            optimizer's and the global generator's are added here.
        best: optional copies of the tensors (same order as the learner's) to keep as the
            best so far.
        extra: optional float32 tensors by name (outside ``model/``, ``extra/``,
            ``optimizer/`` and ``best/``) for state beyond the learner's, such as
            ``MetaLearner``'s predictor and buffers.
        files: optional ``{key: (extension, write)}``: ``write(path)`` writes a file of its
            own format (a ``KnowledgeMemory``'s) to ``<key>-<step>.<extension>`` in the
            folder; its size and SHA-256 join the manifest under ``files[key]``.

    Returns:
        The manifest's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names, tensors = _learner_tensors(learner)
    opt_state, opt_names, opt_slots = _optimizer_state(learner.meta_optimizer, tensors)
    all_names = list(names) + opt_names
    all_tensors = [np.asarray(t, dtype=np.float32) for t in tensors] + [
        np.asarray(t, dtype=np.float32) for t in opt_slots
    ]
    if best is not None:
        all_names += [f"best/{i}" for i in range(len(best))]
        all_tensors += [np.asarray(b, dtype=np.float32) for b in best]
    for n, t in (extra or {}).items():
        if n.split("/")[0] in ("model", "extra", "optimizer", "best"):
            raise ValueError(f"checkpoint.save: extra tensor name {n!r} is reserved")
        all_names.append(n)
        all_tensors.append(np.asarray(t, dtype=np.float32))
    entries = {}
    for key, (ext, write) in (files or {}).items():
        if not re.match(r"^[a-z_]+$", key) or key == "tensors" or not re.match(r"^[a-z]+$", ext):
            raise ValueError(f"checkpoint.save: bad file key or extension {key!r}, {ext!r}")
        fname = f"{key}-{int(step):08d}.{ext}"
        write(str(directory / fname))  # (the writer is atomic itself: a new name per step)
        fpath = directory / fname
        entries[key] = {"name": fname, "bytes": fpath.stat().st_size, "sha256": _sha256_file(fpath)}
    tensor_name = f"tensors-{int(step):08d}.mlw"
    tensor_path = directory / tensor_name
    _core.save_tensors(str(tensor_path), all_names, all_tensors)
    full_state = dict(state)
    full_state["optimizer"] = opt_state
    full_state["rng"] = [str(w) for w in _core.rng_state()]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "files": {
            "tensors": {
                "name": tensor_name,
                "bytes": tensor_path.stat().st_size,
                "sha256": _sha256_file(tensor_path),
            },
            **entries,
        },
        "fingerprint": fingerprint,
        "state": full_state,
    }
    manifest["sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
    path = directory / MANIFEST
    _core.write_file(str(path), json.dumps(manifest, indent=1, sort_keys=True).encode())
    # the new checkpoint is committed: the older tensor files are no longer referenced
    keep = {tensor_name} | {e["name"] for e in entries.values()}
    olds = [_TENSORS] + [
        re.compile(rf"^{key}-\d{{8,}}\.{ext}$") for key, (ext, _) in (files or {}).items()
    ]
    for f in directory.iterdir():
        if any(r.match(f.name) for r in olds) and f.name not in keep:
            try:
                f.unlink()
            except OSError:
                pass  # another process's, or already gone: harmless
    return path


class Checkpoint:
    """A checkpoint read and checked by ``load``: ``step``, ``fingerprint``, ``state`` and
    ``tensors`` (name -> float32 array)."""

    def __init__(self, directory, manifest, tensors, files=None):
        self.directory = Path(directory)
        #: the checked files beside the tensors (key -> path), e.g. ``memory``
        self.files = dict(files or {})
        self.step = int(manifest["step"])
        self.fingerprint = manifest["fingerprint"]
        self.state = manifest["state"]
        self.tensors = tensors

    def check(self, fingerprint: Dict[str, Any]) -> None:
        """Raises CheckpointError naming each entry of `fingerprint` that differs."""
        diffs = []
        for key in sorted(set(fingerprint) | set(self.fingerprint)):
            a, b = self.fingerprint.get(key), _jsonable(fingerprint.get(key))
            if a != b:
                diffs.append(f"{key}: checkpoint {a!r}, this run {b!r}")
        if diffs:
            raise CheckpointError(
                f"checkpoint in {self.directory} was saved by another run; it differs in\n  "
                + "\n  ".join(diffs)
                + "\nuse another checkpoint_dir, or remove this one to start afresh"
            )

    def _optimizer_plans(self, ostate, tensors, prefix="optimizer"):
        """Checks an optimizer's saved state (``_optimizer_state``'s, its slots named
        ``<prefix>/...``) against `tensors`; returns what ``_apply_optimizer`` sets.
        Raises CheckpointError; changes nothing."""
        plans = []
        for k, entry in enumerate(ostate.get("lists", [])):
            idx = entry["params"]
            if any(not isinstance(i, int) or not 0 <= i < len(tensors) for i in idx):
                raise CheckpointError(f"checkpoint: {prefix} list {k} names unknown tensors")
            slots = []
            for p, i in enumerate(idx):
                row = []
                for s in range(int(entry["slots"])):
                    a = self.tensors.get(f"{prefix}/{k}/{p}/{s}")
                    if a is None or tuple(a.shape) != tuple(tensors[i].shape):
                        raise CheckpointError(
                            f"checkpoint: {prefix} slot {k}/{p}/{s} is missing or misshapen"
                        )
                    row.append(a)
                slots.append(row)
            plans.append(([tensors[i] for i in idx], int(entry["iterations"]), slots))
        return plans

    def restore(self, learner: Any, samplers: Dict[str, Any]) -> Optional[List[np.ndarray]]:
        """Sets the learner's weights, its optimizer, the global generator and each
        sampler (``{"tasks": sampler, "validation": sampler}``) to the checkpoint's; checks
        everything first. Returns the best weights (or None)."""
        names, tensors = _learner_tensors(learner)
        for n, t in zip(names, tensors):
            a = self.tensors.get(n)
            if a is None or tuple(a.shape) != tuple(t.shape):
                raise CheckpointError(
                    f"checkpoint: tensor {n} is {None if a is None else a.shape}, the learner's "
                    f"is {tuple(t.shape)}"
                )
        opt = learner.meta_optimizer
        ostate = self.state.get("optimizer", {})
        plans = self._optimizer_plans(ostate, tensors)
        for what, tasks in samplers.items():
            _check_sampler_state(tasks, self.state.get("samplers", {}).get(what), what)
        rng = [int(w) for w in self.state["rng"]]
        if len(rng) != 4 or not all(0 <= w < 1 << 64 for w in rng) or not any(rng):
            raise CheckpointError("checkpoint: the generator's state is not 4 64-bit words")
        n_best = sum(1 for n in self.tensors if n.startswith("best/"))
        if n_best not in (0, len(tensors)):
            raise CheckpointError(f"checkpoint: {n_best} best tensors for {len(tensors)} weights")
        # everything checked (the slot counts follow from the optimizer's configuration,
        # which the fingerprint holds): now set
        _apply_optimizer(opt, ostate, plans)
        for n, t in zip(names, tensors):
            _core.assign(t, np.ascontiguousarray(self.tensors[n]))
        _core.rng_set_state(tuple(rng))
        for what, tasks in samplers.items():
            set_sampler_state(tasks, self.state.get("samplers", {}).get(what))
        if n_best:
            return [self.tensors[f"best/{i}"] for i in range(n_best)]
        return None


def _apply_optimizer(opt: Any, ostate: Dict[str, Any], plans: List[Any]) -> None:
    """Sets an optimizer's slots, step counts and float rate from checked `plans`."""
    for vs, it, sl in plans:
        opt._core_for(vs).restore(vs, it, sl)
    opt._iterations = int(ostate.get("iterations", 0))
    if "learning_rate" in ostate and not callable(opt._learning_rate):
        opt.learning_rate = float(ostate["learning_rate"])


def _jsonable(obj):
    """`obj` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj, allow_nan=True))


def load(directory: Any) -> Checkpoint:
    """Reads and checks the checkpoint in `directory` (its manifest, its checksums, its
    tensor file); changes nothing.

    Raises:
        FileNotFoundError: no manifest in `directory`.
        CheckpointError: anything corrupt or of another format.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint: {path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a metalearn checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint: {path} has format version {manifest.get('version')!r}; this "
            f"metalearn reads version {VERSION}"
        )
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    if hashlib.sha256(_canonical(body)).hexdigest() != manifest.get("sha256"):
        raise CheckpointError(f"checkpoint: {path} fails its checksum (edited or corrupt)")
    try:
        info = manifest["files"]["tensors"]
        tpath = directory / info["name"]
        step = int(manifest["step"])
        manifest["state"]["rng"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path} lacks {exc}") from None
    if not _TENSORS.match(info["name"]) or step < 0:
        raise CheckpointError(f"checkpoint: {path} names a bad tensor file {info['name']!r}")
    if not tpath.is_file():
        raise CheckpointError(f"checkpoint: {tpath} is missing")
    if tpath.stat().st_size != info["bytes"] or _sha256_file(tpath) != info["sha256"]:
        raise CheckpointError(f"checkpoint: {tpath} does not match its checksum (corrupt)")
    files = {}
    for key, extra in manifest["files"].items():
        if key == "tensors":
            continue
        try:
            name, size, sha = extra["name"], extra["bytes"], extra["sha256"]
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint: {path}: files.{key} lacks {exc}") from None
        if not isinstance(name, str) or not re.match(rf"^{re.escape(key)}-\d{{8,}}\.[a-z]+$", name):
            raise CheckpointError(f"checkpoint: {path} names a bad {key} file {name!r}")
        fpath = directory / name
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint: {fpath} is missing")
        if fpath.stat().st_size != size or _sha256_file(fpath) != sha:
            raise CheckpointError(f"checkpoint: {fpath} does not match its checksum (corrupt)")
        files[key] = fpath
    try:
        entries = _core.load_tensors(str(tpath))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint: {tpath}: {exc}") from None
    return Checkpoint(directory, manifest, dict(entries), files)


# dir() and tab completion offer the API only (metalearn/__init__.py's rule; this module is
# not imported with the package, so it applies the rule itself)
def __dir__():
    import sys

    from metalearn import _public_dir

    return _public_dir(sys.modules[__name__])()
