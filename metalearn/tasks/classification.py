"""N-way K-shot classification episodes over a labelled array dataset
(Vinyals et al. 2016, "Matching Networks for One Shot Learning"; Santoro et al. 2016,
"Meta-Learning with Memory-Augmented Neural Networks")."""

from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .base import Task, as_generator

__all__ = ["NWayKShot", "Augment"]


class Augment:
    """Training-episode augmentation of uint8 images, done in C as each episode is gathered
    (``_core.episode_images``): the recipe of the MetaOptNet and ProtoNet reproductions on
    mini-ImageNet, CIFAR-FS and FC100 (torchvision's ``RandomCrop(size, padding=pad)``,
    ``RandomHorizontalFlip()``, ``ColorJitter(brightness, contrast, saturation)``).

    In a fixed order: a crop of the image zero-padded by `pad` pixels on each side (offsets
    uniform in ``0..2*pad``), a horizontal flip with probability 1/2, then brightness
    (``v * f``), contrast (a blend with the image's mean luma) and saturation (a blend
    with each pixel's luma), each factor uniform in ``[1 - s, 1 + s]`` and each result
    clamped to [0, 1] (luma: ITU-R 601, as PIL's ``convert("L")``). The draws come from the
    sampler's generator, so the same seed gives the same augmented episodes. Unlike
    torchvision, values stay in float between steps (no rounding to 8 bits) and the jitter
    order is fixed, not shuffled.

    Args:
        pad: padding of the random crop (0: no crop).
        flip: random horizontal flips.
        brightness, contrast, saturation: jitter strengths in [0, 1] (0: off; saturation
            needs RGB images).
    """

    def __init__(
        self,
        pad: int = 0,
        flip: bool = False,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
    ) -> None:
        if isinstance(pad, bool) or int(pad) != pad or pad < 0:
            raise ValueError(f"Augment: pad must be an integer >= 0, got {pad!r}")
        for name, v in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"Augment: {name} must be in [0, 1], got {v!r}")
        self.pad, self.flip = int(pad), bool(flip)
        self.brightness, self.contrast, self.saturation = (
            float(brightness),
            float(contrast),
            float(saturation),
        )

    def __repr__(self) -> str:
        return (
            f"Augment(pad={self.pad}, flip={self.flip}, brightness={self.brightness}, "
            f"contrast={self.contrast}, saturation={self.saturation})"
        )


class NWayKShot:
    """Episodes of N-way K-shot classification drawn from a labelled dataset.

    Each episode picks `n_way` distinct classes, then `k_shot` support and `q_queries`
    query examples of each (all distinct). Labels are relabelled ``0..n_way-1`` per
    episode in a random order, so a model cannot memorise class identities. With
    ``augment_rotations`` every class also exists rotated by 90°, 180° and 270°, each a
    class of its own (4x the classes), as in the Omniglot experiments of Santoro et al.
    and Vinyals et al. (used by MAML and ProtoNets).

    Args:
        dataset: ``(x, y)``: ``x`` an array ``(N, H, W[, C])`` (or any ``(N, ...)`` when
            rotations are off), ``y`` integer labels ``(N,)``. An object with ``x`` and
            ``y`` attributes works too. uint8 images (as the 84x84 readers return them,
            memory-mapped) give float32 episodes in [0, 1] (``x / 255``), converted one
            episode at a time, so the whole dataset is never converted.
        n_way: classes per episode (N).
        k_shot: support examples per class (K).
        q_queries: query examples per class.
        augment_rotations: rotate by multiples of 90° to make new classes.
        seed: int, None or ``numpy.random.Generator``; same seed, same episodes.
        augment: an ``Augment`` applied to every episode's images (uint8 images only: the
            84x84 and 32x32 readers'); use it on the training sampler, not the test one.
        normalize: ``(mean, std)`` per channel, applied to uint8 images after the
            conversion to [0, 1] (and the augmentation): ``(v - mean) / std``.

    Shapes (single episode):
        ``support_x (n_way*k_shot, *x.shape[1:])``, ``support_y (n_way*k_shot,)`` int64,
        ``query_x (n_way*q_queries, ...)``, ``query_y (n_way*q_queries,)``; the support is
        ordered class by class (label ``i // k_shot``). ``sample_batch(B)`` adds a leading
        axis B. ``task.info`` holds ``classes`` (dataset labels) and ``rotations`` (0..3).

    Raises:
        ValueError: fewer than `n_way` classes, or a class with fewer than
            ``k_shot + q_queries`` examples.
    """

    def __init__(
        self,
        dataset: Any,
        n_way: int = 5,
        k_shot: int = 1,
        q_queries: int = 15,
        augment_rotations: bool = True,
        seed: Union[int, np.random.Generator, None] = None,
        augment: Optional[Augment] = None,
        normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
    ) -> None:
        if isinstance(dataset, (tuple, list)) and len(dataset) >= 2:
            x, y = dataset[0], dataset[1]
        elif hasattr(dataset, "x") and hasattr(dataset, "y"):
            x, y = dataset.x, dataset.y
        else:
            raise TypeError("NWayKShot: dataset must be a pair (x, y) of arrays")
        x = np.asarray(x)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"NWayKShot: labels must have shape ({len(x)},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(y == np.round(y)):
                raise ValueError("NWayKShot: labels must be integers")
            y = y.astype(np.int64)
        self.n_way, self.k_shot, self.q_queries = int(n_way), int(k_shot), int(q_queries)
        if self.n_way < 1 or self.k_shot < 1 or self.q_queries < 0:
            raise ValueError(
                f"NWayKShot: need n_way >= 1, k_shot >= 1, q_queries >= 0; got "
                f"{n_way}, {k_shot}, {q_queries}"
            )
        self.augment_rotations = bool(augment_rotations)
        if self.augment_rotations and (x.ndim < 3 or x.shape[1] != x.shape[2]):
            raise ValueError(
                f"NWayKShot: augment_rotations=True rotates square images (N, H, H[, C]) "
                f"by 90 degrees, got x of shape {x.shape}; pass augment_rotations=False "
                "for other data"
            )
        self.x, self.y = x, y
        self._x_tensor = None  # x as a core tensor (shared memory), made on first use
        # the episodes' dtype: uint8 images come as float32 in [0, 1]
        self._out_dtype = np.dtype(np.float32) if x.dtype == np.uint8 else x.dtype
        self.classes, inverse = np.unique(y, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._members = [order[s : s + c] for s, c in zip(starts, counts)]
        # every class the same size (Omniglot: 20 drawers): a (classes, count) table lets
        # sample_batch draw a whole meta-batch with one gather
        self._member_table = np.stack(self._members) if counts.min() == counts.max() else None
        need = self.k_shot + self.q_queries
        if counts.min() < need:
            bad = int(self.classes[np.argmin(counts)])
            raise ValueError(
                f"NWayKShot: class {bad} has {counts.min()} examples; k_shot + q_queries "
                f"= {need} are needed per class"
            )
        self.num_rotations = 4 if self.augment_rotations else 1
        self.num_classes = len(self.classes) * self.num_rotations
        if self.num_classes < self.n_way:
            raise ValueError(
                f"NWayKShot: {self.num_classes} classes, fewer than n_way={self.n_way}"
            )
        self.seed = seed
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"NWayKShot: augment must be an Augment, got {type(augment).__name__}")
        if (augment is not None or normalize is not None) and x.dtype != np.uint8:
            raise ValueError(
                f"NWayKShot: augment and normalize apply to uint8 images (as the dataset "
                f"readers return them); x is {x.dtype}"
            )
        self.augment = augment
        self.normalize = None
        if normalize is not None:
            channels = x.shape[3] if x.ndim == 4 else 1
            try:
                mean, std = (np.asarray(v, np.float64).reshape(-1) for v in normalize)
            except (TypeError, ValueError):
                raise ValueError(
                    "NWayKShot: normalize must be (mean, std), one value per channel"
                ) from None
            if mean.size == 1 and channels > 1:
                mean, std = np.repeat(mean, channels), np.repeat(std, channels)
            if mean.size != channels or std.size != channels or not np.all(std > 0):
                raise ValueError(
                    f"NWayKShot: normalize needs {channels} mean and {channels} positive std "
                    f"values, got {mean.size} and {std.size}"
                )
            self.normalize = (mean, std)
        self.rng = as_generator(seed)

    def __repr__(self):
        return (
            f"NWayKShot(n_way={self.n_way}, k_shot={self.k_shot}, q_queries={self.q_queries}, "
            f"classes={self.num_classes}, augment_rotations={self.augment_rotations})"
        )

    def _episode(self):
        r = self.rng
        picks = r.choice(self.num_classes, self.n_way, replace=False)
        base, rot = picks // self.num_rotations, picks % self.num_rotations
        k, q = self.k_shot, self.q_queries
        sx, qx = [], []
        for c, rt in zip(base, rot):
            members = self._members[c]
            idx = members[r.choice(len(members), k + q, replace=False)]
            imgs = self._gather(idx) if self.x.dtype == np.uint8 else self.x[idx]
            if rt:
                imgs = np.rot90(imgs, int(rt), axes=(1, 2))
            sx.append(imgs[:k])
            qx.append(imgs[k:])
        labels = np.arange(self.n_way, dtype=np.int64)
        support_x = np.ascontiguousarray(np.concatenate(sx))
        query_x = np.ascontiguousarray(np.concatenate(qx))
        return (
            support_x,
            np.repeat(labels, k),
            query_x,
            np.repeat(labels, q),
            self.classes[base],
            rot.astype(np.int64),
        )

    def sample(self) -> Task:
        """One episode (see the class docstring for shapes)."""
        sx, sy, qx, qy, cls, rot = self._episode()
        return Task(sx, sy, qx, qy, {"classes": cls, "rotations": rot})

    def _place(self, idx, rot):
        """(support_x, query_x) of the episodes whose (e, n_way, k + q) image indices and
        (e, n_way) rotations are given (a block of a batch). Each rotation's images are
        gathered and written, turned, straight into place: two passes over each image
        (before, a process gathered and turned every task's images, then kept its own)."""
        n, k = self.n_way, self.k_shot
        e, tail = len(idx), self.x.shape[1:]
        out = []
        for a, c in ((0, k), (k, k + self.q_queries)):
            m = c - a
            full = np.empty((e, n * m) + tail, self._out_dtype)
            out.append(full)
            if m == 0 or e == 0:
                continue
            view = full.reshape((e, n, m) + tail)  # a view: full is contiguous
            ii = idx[:, :, a:c]
            for rt in range(self.num_rotations):
                sel = rot == rt
                if not sel.any():
                    continue
                imgs = self._gather(ii[sel])
                view[sel] = np.rot90(imgs, rt, axes=(2, 3)) if rt else imgs
        return out[0], out[1]

    def _gather(self, idx):
        """self.x[idx] for a 2-D index array. Float32 images are gathered by the core into
        its pooled storage and returned as a NumPy view of it: a meta-batch of queries is
        megabytes, and a fresh NumPy array each step meant fresh pages from the kernel
        (zeroed on first touch) every step; pooled blocks are reused instead."""
        x = self.x
        if x.dtype == np.uint8:
            # the dataset readers' uint8 images (memory-mapped from the cache): only the
            # episode's rows are read, converted to float32 in [0, 1] (augmented and
            # normalised when asked) in one pass in C
            from .. import _core

            x4 = x if x.ndim == 4 else x.reshape(x.shape + (1,))
            if not x4.flags.c_contiguous:
                x4 = np.ascontiguousarray(x4)
            a, norm = self.augment, self.normalize
            mean, std = norm if norm is not None else (None, None)
            flat = np.ascontiguousarray(idx, np.int64).reshape(-1)
            if a is None:
                out = _core.episode_images(x4, flat, None, 0, False, 0.0, 0.0, 0.0, mean, std)
            else:
                bitgen = self.rng.bit_generator
                with bitgen.lock:
                    out = _core.episode_images(
                        x4,
                        flat,
                        bitgen,
                        a.pad,
                        a.flip,
                        a.brightness,
                        a.contrast,
                        a.saturation,
                        mean,
                        std,
                    )
            return out.reshape(idx.shape + x.shape[1:])
        if not (
            isinstance(x, np.ndarray)
            and x.dtype == np.float32
            and x.flags.c_contiguous
            and x.ndim <= 4
            and idx.size
        ):
            return x[idx]
        from .. import _core

        if self._x_tensor is None:
            self._x_tensor = _core.as_tensor(x)  # shares x's memory
        out = np.asarray(_core.gather(self._x_tensor, idx.reshape(-1)))
        return out.reshape(idx.shape + x.shape[1:])

    def sample_batch(self, meta_batch_size: int, block: Optional[Tuple[int, int]] = None) -> Task:
        """`meta_batch_size` episodes stacked: ``support_x (B, n_way*k_shot, ...)`` etc.

        ``block=(lo, hi)``: episodes lo..hi-1 of that batch only, row for row as the whole
        batch has them (``support_x (hi - lo, ...)`` etc., ``info`` sliced alike, plus
        ``info["block"] = (lo, hi, meta_batch_size)``); the random draws are the whole
        batch's, so the sampler's stream moves exactly as by ``sample_batch(B)``.
        DataParallel draws each process's own tasks this way: gathering and rotating the
        other processes' images was work every process repeated."""
        b = int(meta_batch_size)
        if b < 1:
            raise ValueError(f"sample_batch: meta_batch_size must be >= 1, got {meta_batch_size}")
        if block is not None:
            lo, hi = (int(v) for v in block)
            if not 0 <= lo < hi <= b:
                raise ValueError(
                    f"sample_batch: block must be (lo, hi) with 0 <= lo < hi <= {b}, got {block!r}"
                )
        if self._member_table is None:
            eps = [self._episode() for _ in range(b)]
            stack = lambda i: np.stack([e[i] for e in eps])  # noqa: E731
            whole = Task(
                stack(0),
                stack(1),
                stack(2),
                stack(3),
                {"batched": True, "classes": stack(4), "rotations": stack(5)},
            )
            return whole if block is None else _block_of(whole, lo, hi, b)
        r = self.rng
        n, k, q = self.n_way, self.k_shot, self.q_queries
        picks = np.stack([r.choice(self.num_classes, n, replace=False) for _ in range(b)])
        base, rot = picks // self.num_rotations, picks % self.num_rotations
        keys = r.random(base.shape + self._member_table.shape[1:])  # (b, n, count)
        # k + q distinct members per class: the first of a random permutation of each row
        # (the keys are drawn for the whole batch; only the episodes returned are sorted)
        part = slice(lo, hi) if block is not None and self.augment is None else slice(None)
        members = self._member_table[base[part]]
        order = np.argsort(keys[part], axis=-1)[..., : k + q]
        idx = np.take_along_axis(members, order, axis=-1)  # (episodes, n, k+q)
        labels = np.arange(n, dtype=np.int64)
        if block is not None and self.augment is None:
            support_x, query_x = self._place(idx, rot[lo:hi])
        else:
            # the whole batch, gathered straight into the final layout ((b, n*k) support,
            # (b, n*q) queries), the rotated classes turned in place. With augmentation a
            # block is cut from it: the augmentation draws from the stream image by image,
            # in this order (a block alone would move the stream less)
            support_x = self._gather(idx[:, :, :k].reshape(b, n * k))
            query_x = self._gather(idx[:, :, k:].reshape(b, n * q))
            tail = self.x.shape[1:]
            for rt in range(1, self.num_rotations):
                sel = rot == rt
                if sel.any():
                    for arr, m in ((support_x, k), (query_x, q)):
                        view = arr.reshape((b, n, m) + tail)  # a view: arr is contiguous
                        view[sel] = np.rot90(view[sel], rt, axes=(2, 3))
            if block is not None:
                whole = Task(
                    support_x,
                    np.broadcast_to(np.repeat(labels, k), (b, n * k)).copy(),
                    query_x,
                    np.broadcast_to(np.repeat(labels, q), (b, n * q)).copy(),
                    {
                        "batched": True,
                        "classes": self.classes[base],
                        "rotations": rot.astype(np.int64),
                    },
                )
                return _block_of(whole, lo, hi, b)
            lo, hi = 0, b
        e = hi - lo
        info = {
            "batched": True,
            "classes": self.classes[base[lo:hi]],
            "rotations": rot[lo:hi].astype(np.int64),
        }
        if block is not None:
            info["block"] = (lo, hi, b)
        return Task(
            support_x,
            np.broadcast_to(np.repeat(labels, k), (e, n * k)).copy(),
            query_x,
            np.broadcast_to(np.repeat(labels, q), (e, n * q)).copy(),
            info,
        )

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.sample()


def _block_of(whole, lo, hi, b):
    """Episodes lo..hi-1 of the batch `whole` of b episodes (copies: the rest is freed)."""
    info = {
        key: (np.array(v[lo:hi]) if isinstance(v, np.ndarray) and v.shape[:1] == (b,) else v)
        for key, v in whole.info.items()
    }
    info["block"] = (lo, hi, b)
    rows = [
        np.array(a[lo:hi]) for a in (whole.support_x, whole.support_y, whole.query_x, whole.query_y)
    ]
    return Task(*rows, info)
