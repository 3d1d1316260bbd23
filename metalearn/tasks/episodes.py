"""Frozen test episodes: the same N episodes for every run, every model, every paper.

"600 test episodes" means other episodes in every codebase; an ``EpisodeSet`` is drawn
once, saved as a small checked file and replayed exactly by ``evaluate``::

    x, y = metalearn.datasets.omniglot(split="vinyals_test")
    sampler = metalearn.tasks.NWayKShot((x, y), n_way=5, k_shot=1, q_queries=15)
    frozen = EpisodeSet.draw(sampler, episodes=600, seed=0)
    frozen.save("omniglot-5way-1shot.episodes.npz")        # -> its hash
    ...
    learner.evaluate(sampler, episodes=EpisodeSet.load("omniglot-5way-1shot.episodes.npz"))

The episodes are the ones ``NWayKShot(dataset, ..., seed=seed).sample()`` gives, in order.

File format (version 1): an ``.npz`` (NumPy's zip of ``.npy`` arrays; read without
pickle) holding

- ``classes`` (E, n_way) int32: each episode's classes, as positions in
  ``numpy.unique(y)``; ``rotations`` (E, n_way) uint8: each class's quarter turns (0-3);
- ``members`` (E, n_way, k_shot + q_queries) uint8 (uint16 or int32 when a class has more
  than 256 or 65536 examples): which examples of each class, as positions in that class's examples in
  dataset order; the first k_shot are the support, the rest the query;
- ``meta``: UTF-8 JSON as uint8: ``{"format": "metalearn.episodes", "version": 1,
  "n_way", "k_shot", "q_queries", "augment_rotations", "episodes", "seed", "dataset":
  {"sha256", "x_shape", "x_dtype", "classes"}, "name"}``;
- ``sha256``: the set's hash as uint8 text: SHA-256 of the meta JSON (sorted keys, compact)
  and of the three arrays' bytes, which identifies the set (``EpisodeSet.hash``).

Loading checks the hash (a damaged or edited file is refused) and, given the dataset, its
checksum (a set drawn from other data is refused): the SHA-256 of ``x``'s dtype, shape
and bytes and of ``y`` as int64 (``dataset_checksum``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np

from .base import Task

__all__ = ["EpisodeSet", "EpisodeSetError", "dataset_checksum"]

FORMAT = "metalearn.episodes"
VERSION = 1


class EpisodeSetError(ValueError):
    """An episode file that is damaged, of another format, or for other data."""


def _xy(dataset):
    if isinstance(dataset, (tuple, list)) and len(dataset) >= 2:
        return np.asarray(dataset[0]), np.asarray(dataset[1])
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        return np.asarray(dataset.x), np.asarray(dataset.y)
    raise TypeError(
        f"EpisodeSet: the dataset must be (x, y) or a sampler with x and y (NWayKShot), "
        f"got {type(dataset).__name__}"
    )


def dataset_checksum(dataset: Any) -> str:
    """SHA-256 (hex) of a dataset ``(x, y)``: x's dtype, shape and bytes, y as int64."""
    x, y = _xy(dataset)
    cached = getattr(dataset, "_episode_checksum", None)
    if cached is not None and cached[0] is x:
        return cached[1]
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{tuple(x.shape)}".encode())
    h.update(np.ascontiguousarray(x).data)  # large: hashed in place, not copied
    h.update(np.ascontiguousarray(y, dtype=np.int64).data)
    out = h.hexdigest()
    try:  # a sampler remembers it: evaluate binds a set to it more than once
        dataset._episode_checksum = (x, out)
    except AttributeError:
        pass
    return out


def _members_of(y):
    """np.unique(y) and each class's example rows in dataset order (as NWayKShot)."""
    classes, inverse = np.unique(y, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(classes))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return classes, [order[s : s + c] for s, c in zip(starts, counts)]


def _digest(meta, arrays):
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in ("classes", "rotations", "members"):
        a = arrays[name]
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


class EpisodeSet:
    """N-way K-shot episodes drawn once, replayed exactly (see the module docstring).

    Make one with ``EpisodeSet.draw(sampler, episodes, seed)``, read one with
    ``EpisodeSet.load(path, dataset=None)``. A set bound to its dataset (``draw``, ``load``
    with a dataset, ``bind``) yields its episodes as Tasks (``task(i)``, iteration);
    ``evaluate(sampler, episodes=episode_set)`` binds it to the sampler's data.

    Attributes:
        hash: the set's SHA-256 (hex), the same for every copy of the file.
        meta: n_way, k_shot, q_queries, augment_rotations, episodes, seed, dataset, name.
    """

    def __init__(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray], hash_: str) -> None:
        self.meta = meta
        self.classes = arrays["classes"]
        self.rotations = arrays["rotations"]
        self.members = arrays["members"]
        self.hash = hash_
        self._x = self._y = None
        self._labels = self._rows = None

    # ------------------------------------------------------------------ making
    @classmethod
    def draw(
        cls, sampler: Any, episodes: int, seed: int, name: Optional[str] = None
    ) -> "EpisodeSet":
        """Draws `episodes` episodes with `sampler`'s dataset and settings (``n_way``,
        ``k_shot``, ``q_queries``, ``augment_rotations``) from a generator seeded by
        `seed`: the episodes ``NWayKShot(..., seed=seed).sample()`` would give. The
        sampler's own generator is not used."""
        episodes = int(episodes)
        if episodes < 1:
            raise ValueError(f"EpisodeSet.draw: episodes must be >= 1, got {episodes}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"EpisodeSet.draw: seed must be a non-negative int, got {seed!r}")
        for a in ("n_way", "k_shot", "q_queries", "augment_rotations"):
            if not hasattr(sampler, a):
                raise TypeError(f"EpisodeSet.draw: the sampler has no {a} (use an NWayKShot)")
        x, y = _xy(sampler)
        labels, members = _members_of(y)
        n, k, q = int(sampler.n_way), int(sampler.k_shot), int(sampler.q_queries)
        rots = 4 if sampler.augment_rotations else 1
        r = np.random.default_rng(int(seed))
        largest = max(len(m) for m in members)
        small = np.uint8 if largest <= 256 else np.uint16 if largest <= 65536 else np.int32
        cl = np.empty((episodes, n), np.int32)
        rt = np.empty((episodes, n), np.uint8)
        mem = np.empty((episodes, n, k + q), small)
        for e in range(episodes):  # NWayKShot._episode's draws, in its order
            picks = r.choice(len(labels) * rots, n, replace=False)
            cl[e], rt[e] = picks // rots, picks % rots
            for j, c in enumerate(cl[e]):
                mem[e, j] = r.choice(len(members[c]), k + q, replace=False)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "n_way": n,
            "k_shot": k,
            "q_queries": q,
            "augment_rotations": bool(sampler.augment_rotations),
            "episodes": episodes,
            "seed": int(seed),
            "dataset": {
                "sha256": dataset_checksum(sampler),
                "x_shape": [int(d) for d in x.shape],
                "x_dtype": x.dtype.str,
                "classes": int(len(labels)),
            },
            "name": name,
        }
        arrays = {"classes": cl, "rotations": rt, "members": mem}
        out = cls(meta, arrays, _digest(meta, arrays))
        out._attach(x, y, labels, members)
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> str:
        """Writes the set to `path` (atomically: a temporary file, fsync, rename); returns
        its hash."""
        from metalearn import _core

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            classes=self.classes,
            rotations=self.rotations,
            members=self.members,
            meta=np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), np.uint8),
            sha256=np.frombuffer(self.hash.encode(), np.uint8),
        )
        _core.write_file(os.fspath(path), buf.getvalue())
        return self.hash

    @classmethod
    def load(cls, path: Union[str, os.PathLike], dataset: Any = None) -> "EpisodeSet":
        """Reads and checks an episode file; with `dataset` (``(x, y)`` or a sampler),
        binds the set to it after checking it is the data the set was drawn from.

        Raises:
            EpisodeSetError: a damaged file, another format, or other data.
        """
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                got = {k: z[k] for k in ("classes", "rotations", "members", "meta", "sha256")}
            meta = json.loads(got["meta"].tobytes().decode("utf-8"))
            stored = got["sha256"].tobytes().decode("ascii")
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise EpisodeSetError(f"EpisodeSet: {path} is not a readable episode file ({exc})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise EpisodeSetError(f"EpisodeSet: {path} is not a metalearn episode file")
        if meta.get("version") != VERSION:
            raise EpisodeSetError(
                f"EpisodeSet: {path} has format version {meta.get('version')!r}; this "
                f"metalearn reads version {VERSION}"
            )
        arrays = {k: got[k] for k in ("classes", "rotations", "members")}
        if _digest(meta, arrays) != stored:
            raise EpisodeSetError(f"EpisodeSet: {path} fails its checksum (damaged or edited)")
        e, n, m = meta["episodes"], meta["n_way"], meta["k_shot"] + meta["q_queries"]
        if (
            arrays["classes"].shape != (e, n)
            or arrays["rotations"].shape != (e, n)
            or arrays["members"].shape != (e, n, m)
        ):
            raise EpisodeSetError(f"EpisodeSet: {path}'s arrays do not match its header")
        out = cls(meta, arrays, stored)
        return out if dataset is None else out.bind(dataset)

    # ------------------------------------------------------------------ data
    def bind(self, dataset: Any) -> "EpisodeSet":
        """This set bound to `dataset` (``(x, y)`` or a sampler holding them), after
        checking it is the data the set was drawn from (its checksum, shape, classes).

        Raises:
            EpisodeSetError: other data; the message gives both checksums.
        """
        x, y = _xy(dataset)
        want = self.meta["dataset"]
        have = dataset_checksum(dataset)
        if have != want["sha256"]:
            raise EpisodeSetError(
                f"EpisodeSet {self.hash[:12]} was drawn from a dataset x{tuple(want['x_shape'])} "
                f"{want['x_dtype']} with {want['classes']} classes (sha256 "
                f"{want['sha256'][:16]}...), not this one: x{tuple(x.shape)} {x.dtype.str}, "
                f"sha256 {have[:16]}..."
            )
        labels, members = _members_of(y)
        rots = 4 if self.meta["augment_rotations"] else 1
        if self.classes.size and (
            int(self.classes.max()) >= len(labels) or int(self.rotations.max()) >= rots
        ):
            raise EpisodeSetError("EpisodeSet: classes or rotations outside the dataset")
        out = EpisodeSet(
            self.meta,
            {"classes": self.classes, "rotations": self.rotations, "members": self.members},
            self.hash,
        )
        out._attach(x, y, labels, members)
        return out

    def _attach(self, x, y, labels, members):
        sizes = np.array([len(m) for m in members])
        if self.members.size and np.any(self.members >= sizes[self.classes][..., None]):
            raise EpisodeSetError("EpisodeSet: an example position outside its class")
        self._x, self._y, self._labels = x, y, labels
        self._rows = np.stack(
            [
                np.stack([members[c][self.members[e, j]] for j, c in enumerate(self.classes[e])])
                for e in range(len(self))
            ]
        )  # (E, n, k+q) dataset rows

    @property
    def bound(self) -> bool:
        """Whether the set holds its dataset (it can make Tasks)."""
        return self._x is not None

    def __len__(self) -> int:
        return int(self.meta["episodes"])

    def rows(self) -> np.ndarray:
        """The dataset rows of every episode, ``(E, n_way, k_shot + q_queries)``."""
        self._need_data()
        return self._rows

    def _need_data(self):
        if self._x is None:
            raise ValueError(
                "EpisodeSet: not bound to its dataset; EpisodeSet.load(path, dataset=(x, y)), "
                "set.bind((x, y)), or evaluate(sampler, episodes=set)"
            )

    def task(self, i: int) -> Task:
        """Episode `i` as a Task (support class by class, labels 0..n_way-1 in the order
        its classes were drawn), as NWayKShot.sample() gives it."""
        self._need_data()
        k = self.meta["k_shot"]
        sx, qx = [], []
        for j in range(self.meta["n_way"]):
            imgs = self._x[self._rows[i, j]]
            rt = int(self.rotations[i, j])
            if rt:
                imgs = np.rot90(imgs, rt, axes=(1, 2))
            sx.append(imgs[:k])
            qx.append(imgs[k:])
        n, q = self.meta["n_way"], self.meta["q_queries"]
        labels = np.arange(n, dtype=np.int64)
        return Task(
            np.ascontiguousarray(np.concatenate(sx)),
            np.repeat(labels, k),
            np.ascontiguousarray(np.concatenate(qx)),
            np.repeat(labels, q),
            {
                "classes": self._labels[self.classes[i]],
                "rotations": self.rotations[i].astype(np.int64),
                "episode": i,
            },
        )

    def __iter__(self) -> Iterator[Task]:
        for i in range(len(self)):
            yield self.task(i)

    def __repr__(self):
        m = self.meta
        return (
            f"EpisodeSet({m.get('name') or ''}{' ' if m.get('name') else ''}"
            f"{m['n_way']}-way {m['k_shot']}-shot {m['q_queries']} queries, "
            f"{len(self)} episodes, seed={m['seed']}, hash={self.hash[:12]})"
        )


# ------------------------------------------------------------------ standard sets

#: The frozen Omniglot test sets shipped with metalearn (``metalearn/tasks/frozen/``):
#: Vinyals et al.'s 423 test characters (``datasets.omniglot(split="vinyals_test")``) with
#: their rotations as classes (1692), 15 queries per class, 600 episodes, seed 0.
OMNIGLOT_STANDARD = {
    f"omniglot-vinyals_test-{n}way-{k}shot": dict(n_way=n, k_shot=k, q_queries=15)
    for n in (5, 20)
    for k in (1, 5)
}


def _frozen_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent / "frozen"


def standard(name: str, dataset: Any = None) -> EpisodeSet:
    """A frozen episode set shipped with metalearn, by name (``OMNIGLOT_STANDARD``), e.g.
    ``standard("omniglot-vinyals_test-5way-1shot", dataset=omniglot(split="vinyals_test"))``.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones).
        EpisodeSetError: `dataset` is not the data the set was drawn from.
    """
    path = _frozen_dir() / f"{name}.npz"
    if name not in OMNIGLOT_STANDARD or not path.is_file():
        raise ValueError(f"no shipped episode set {name!r}; shipped: {sorted(OMNIGLOT_STANDARD)}")
    return EpisodeSet.load(path, dataset=dataset)


def make_omniglot_sets(
    out_dir: Any = None, path: Any = None, episodes: int = 600, seed: int = 0
) -> Dict[str, str]:
    """Draws the standard Omniglot sets (``OMNIGLOT_STANDARD``) from the local Omniglot
    data and saves them in `out_dir` (default: the package's ``tasks/frozen``); returns
    name -> hash. The same command makes the sets for another dataset: draw an
    ``EpisodeSet`` from an ``NWayKShot`` over its test split and ``save`` it.

    Run: ``python -c "from metalearn.tasks.episodes import make_omniglot_sets as m; print(m())"``.
    """
    from pathlib import Path

    from metalearn.datasets import omniglot

    from .classification import NWayKShot

    out = Path(out_dir) if out_dir is not None else _frozen_dir()
    out.mkdir(parents=True, exist_ok=True)
    data = omniglot(path=path, split="vinyals_test")
    hashes = {}
    for name, cfg in OMNIGLOT_STANDARD.items():
        sampler = NWayKShot(data, augment_rotations=True, **cfg)
        s = EpisodeSet.draw(sampler, episodes, seed=seed, name=name)
        hashes[name] = s.save(out / f"{name}.npz")
    return hashes
