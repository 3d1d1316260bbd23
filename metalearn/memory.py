"""The knowledge memory: a key-value memory with nearest-neighbour recall, after
Kaiser, Nachum, Roy & Bengio 2017, "Learning to Remember Rare Events" (ICLR), §3.

The memory holds ``capacity`` slots. Each slot is a key (a unit vector of ``key_size``
floats), a value (an integer label and, optionally, a payload vector of ``payload_size``
floats) and an age. Everything lives in C (``csrc/memory/memory.c``):

* ``query(q, k, labels=None)``: exact k-nearest search by cosine similarity over every
  stored key (or those with one of ``labels``): up to 8 queries scan the keys once, split
  across threads by blocks of 4096 slots (the same bits at any thread count); larger
  batches run a GEMM over cache-sized blocks; then a partial top-k selection;
* ``update(q, labels)``: the paper's rule. With ``n1`` the nearest key to ``q``: when its
  label is ``y`` the key becomes ``normalize(q + K[n1])`` and its age 0 (a payload is
  averaged with the stored one); otherwise ``(normalize(q), y)`` is written into the oldest
  slot (empty slots first, ties at random from the memory's own seeded stream) with age 0.
  One call is one step of the paper: every other age grows by one. It returns the slot
  each query wrote (a slot number is an id: ``remove(ids)`` empties those slots);
* ``add(q, labels)``: each key in a slot of its own (no merge); ``from_arrays`` builds a
  memory from arrays in one call;
* ``read(q, k, temperature)``: a differentiable soft read, the softmax of the top-k
  cosine similarities over the payloads; the gradient reaches ``q`` (through its
  normalisation), to any order;
* ``loss(q, labels, k, margin)``: the paper's memory loss
  ``[q·k_neg - q·k_pos + margin]_+`` where ``k_pos`` is the nearest of the top-k keys with
  the right label and ``k_neg`` the nearest with a wrong one, differentiable in ``q``;
* ``save``/``load``: a checked file (magic ``MLMEMORY``, version, sizes, CRC-32; written
  atomically); a corrupt or mismatched file is refused and the memory left unchanged.

``MemoryClassifier`` puts an encoder in front of a memory and trains it end to end as in
the paper, for one-shot classification with no gradient step at test time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, NamedTuple, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    import os

from metalearn._typing import ArrayLike
import numpy as np

from . import _core

__all__ = ["IVFIndex", "KnowledgeMemory", "MemoryClassifier"]


def _queries(q):
    """An (n, d) float32 array or Tensor from q ((d,) is one query)."""
    if isinstance(q, _core.Tensor):
        if len(q.shape) == 1:
            return _core.reshape(q, (1, -1))
        return q
    a = np.asarray(q, dtype=np.float32)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    return np.ascontiguousarray(a)


def _labels(labels):
    return np.asarray(labels).reshape(-1)


def _index_args(what, nlist, nprobe, seed, n_iter, sample):
    """build_index's arguments checked for type and sign (TypeError / ValueError naming
    `what`), as ints: (nlist, nprobe, seed, n_iter, sample; 0 for None). The ranges that
    depend on the memory's contents are the caller's (or the core's) to check."""
    for name, v in (("nlist", nlist), ("nprobe", nprobe), ("n_iter", n_iter), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{what}: {name} must be an int, got {v!r}")
    if sample is not None and (
        isinstance(sample, bool) or not isinstance(sample, (int, np.integer))
    ):
        raise TypeError(f"{what}: sample must be an int, got {sample!r}")
    if sample is not None and int(sample) < 1:
        raise ValueError(f"{what}: sample must be >= 1, got {sample}")
    if int(seed) < 0:
        raise ValueError(f"{what}: seed must be >= 0, got {seed}")
    return int(nlist), int(nprobe), int(seed), int(n_iter), int(sample or 0)


def _k(k, default, capacity):
    """k as an int; None is `default` capped at the capacity (an explicit k is checked by
    the core: 1 <= k <= capacity, the same rule and message as ``query``)."""
    return min(default, capacity) if k is None else int(k)


class IVFIndex(NamedTuple):
    """A snapshot of a memory's approximate index (``KnowledgeMemory.index``).

    ``centroids`` (nlist, key_size) are normalised; ``lists[j]`` is the list slot j is in
    (-1 for an empty or removed slot); ``stale`` is True when a list could not grow (out of
    memory) and searches are exact until ``build_index`` runs again."""

    nlist: int
    nprobe: int
    seed: int
    n_iter: int
    sample: int
    stale: bool
    centroids: np.ndarray
    lists: np.ndarray


class KnowledgeMemory(_core.KnowledgeMemory):
    """A key-value memory of ``capacity`` slots (Kaiser et al. 2017).

    Args:
        capacity: number of slots (m > 0).
        key_size: size of a key (d > 0); queries have shape ``(n, key_size)``.
        payload_size: size of the optional payload vector stored with each label (0: none).
        seed: seeds the memory's own random stream (tie-breaks between equally old slots),
            so a run replays exactly; ``clear()`` reseeds it.
        key_dtype: what the search of up to 8 queries reads: ``"float32"`` (exact, the
            default), ``"float16"`` (half the bytes) or ``"int8"`` with a scale per key (a
            quarter). Compact keys choose the top-k, the float32 keys (kept for updates,
            reads and files) score it: approximate, recall@k in benchmarks/memory_query.py.
            The ``key_dtype`` property may also be set later.

    ``len(memory)`` and ``memory.size`` are the number of occupied slots,
    ``memory.occupancy`` that number over ``capacity``.

    Threads: one memory may be shared. Queries, reads and saves run together; updates,
    clears and loads wait for them (a reader/writer lock in C; long calls release the
    GIL). Calling ``__init__`` again on a memory that another thread is querying, updating,
    saving or loading raises RuntimeError (it would free the slots under that call).

    Example::

        mem = KnowledgeMemory(1000, 64)
        mem.update(embeddings, labels)           # write what was seen
        idx, sim, lab, _ = mem.query(new, k=1)   # recall: lab[:, 0] is the prediction
    """

    def __init__(
        self,
        capacity: int,
        key_size: int,
        payload_size: int = 0,
        seed: int = 0,
        key_dtype: str = "float32",
    ) -> None:
        super().__init__(int(capacity), int(key_size), int(payload_size), int(seed))
        if key_dtype != "float32":
            self.key_dtype = key_dtype

    @classmethod
    def from_arrays(
        cls,
        keys: ArrayLike,
        labels: ArrayLike,
        payloads: Optional[ArrayLike] = None,
        capacity: Optional[int] = None,
        seed: int = 0,
        key_dtype: str = "float32",
    ) -> "KnowledgeMemory":
        """A memory holding ``keys`` (n, d) with their ``labels`` (n,) and optional
        ``payloads`` (n, p), key i in slot i (normalised; no merging of equal labels), in
        one call. ``capacity`` defaults to n and must be at least n."""
        k = np.ascontiguousarray(np.asarray(keys, dtype=np.float32))
        if k.ndim != 2:
            raise ValueError(
                f"KnowledgeMemory.from_arrays: keys must be 2-D (n, key_size), got shape {k.shape}"
            )
        n, d = k.shape
        cap = n if capacity is None else int(capacity)
        if cap < max(n, 1):
            raise ValueError(
                f"KnowledgeMemory.from_arrays: capacity={cap} cannot hold {n} keys "
                "(and must be at least 1)"
            )
        p = 0
        if payloads is not None:
            payloads = np.asarray(payloads, dtype=np.float32)
            if payloads.ndim != 2 or payloads.shape[0] != n:
                raise ValueError(
                    f"KnowledgeMemory.from_arrays: payloads must be ({n}, payload_size), got "
                    f"shape {payloads.shape}"
                )
            p = payloads.shape[1]
        mem = cls(cap, d, p, seed, key_dtype)
        if n:
            mem.add(k, labels, payloads)
        return mem

    def add(
        self, q: ArrayLike, labels: ArrayLike, payloads: Optional[ArrayLike] = None
    ) -> np.ndarray:
        """Stores each key (normalised) with its label and payload in a slot of its own,
        without the update rule's merge: the slot a new pair gets (empty slots first, else
        the oldest). One step of ages. Returns the slots written (int64, (n,))."""
        q, labels, payloads = self._batch(q, labels, payloads)
        return super().add(q, labels, payloads)

    def remove(self, ids: ArrayLike) -> None:
        """Empties the slots ``ids`` (as returned by ``update``/``add`` or ``query``): no
        query returns them again and they are the first slots reused. An id that is not an
        occupied slot, or given twice, raises ValueError and nothing changes."""
        super().remove(np.asarray(ids).reshape(-1))

    @staticmethod
    def _batch(q, labels, payloads):
        q = _queries(q)
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = labels.reshape(1)
        if payloads is not None:
            payloads = np.asarray(payloads, dtype=np.float32)
            if payloads.ndim == 1:
                payloads = payloads.reshape(1, -1)
        return q, labels, payloads

    def query(
        self,
        q: ArrayLike,
        k: int = 1,
        labels: Optional[ArrayLike] = None,
        nprobe: Optional[int] = None,
    ) -> Any:
        """k-nearest search by cosine similarity: exact, or approximate with an index.

        Args:
            q: queries ``(n, key_size)`` (array-like or Tensor; ``(key_size,)`` is one).
            k: number of neighbours, ``1 <= k <= capacity``.
            labels: only slots holding one of these labels are searched (None: all).
            nprobe: with an index (``build_index``), the number of lists scanned
                (``1 <= nprobe <= nlist``; None: ``self.nprobe``); ``"exact"`` searches every
                key whatever the index. Without an index, only None or ``"exact"``.

        Equal similarities are listed in slot order (the lower slot first); the result is
        the same, bit for bit, at any thread count.

        Returns:
            ``(indices, similarities, labels, payloads)`` NumPy arrays of shapes ``(n, k)``
            (int64), ``(n, k)`` (float32 cosine), ``(n, k)`` (int64) and
            ``(n, k, payload_size)``, best first. Positions beyond the occupied slots hold
            index -1, similarity -inf, label -1 and a zero payload.
        """
        if nprobe is None:
            np_arg = 0
        elif isinstance(nprobe, str) and nprobe == "exact":
            np_arg = -1
        elif isinstance(nprobe, (int, np.integer)) and not isinstance(nprobe, bool):
            np_arg = int(nprobe)
            if np_arg < 1:
                raise ValueError(f"KnowledgeMemory.query: nprobe must be >= 1, got {np_arg}")
        else:
            raise TypeError(
                f"KnowledgeMemory.query: nprobe must be an int, None or 'exact', got {nprobe!r}"
            )
        allow = None if labels is None else np.asarray(labels).reshape(-1)
        if not (type(q) is np.ndarray and q.dtype == np.float32 and q.ndim == 2):
            q = _queries(q)  # (the core reads a contiguous float32 (n, d) array in place)
        return super().query(q, int(k), allow, np_arg)

    def build_index(
        self,
        nlist: int,
        nprobe: int = 1,
        seed: int = 0,
        n_iter: int = 10,
        sample: Optional[int] = None,
    ) -> "IVFIndex":
        """Builds an approximate index (IVF-flat) over the stored keys.

        A seeded spherical k-means (``n_iter`` rounds, from ``nlist`` sampled keys, on
        ``sample`` keys drawn with ``seed``; None: 64 per list, at most ``size``) gives
        ``nlist`` centroids; every occupied slot goes to the list of its key's nearest
        centroid. From then on ``query``, ``update``, ``read`` and ``loss`` score the
        ``nprobe`` nearest lists only, and every write (update, add, remove, clear) moves
        the slot it changes to its key's list, so the lists always hold exactly the
        occupied slots. The result is the same at any thread count. ``memory.index = None``
        goes back to exact search. ``load`` rebuilds the index with the same parameters
        (the file holds none), or drops it when the loaded memory has fewer than ``nlist``
        keys.

        Refused with ValueError (nothing changed) for ``nlist`` outside ``[1, size]``,
        ``nprobe`` outside ``[1, nlist]``, ``n_iter`` outside ``[1, 1000]``, ``sample``
        outside ``[nlist, size]``.
        """
        args = _index_args("KnowledgeMemory.build_index", nlist, nprobe, seed, n_iter, sample)
        super().build_index(*args)
        return self.index

    @property
    def index(self) -> Optional["IVFIndex"]:
        """The approximate index (an ``IVFIndex`` snapshot), or None: exact search.
        Assign None to drop it."""
        st = self.index_state()
        return None if st is None else IVFIndex(*st[:5], bool(st[5]), *st[6:])

    @index.setter
    def index(self, value) -> None:
        if value is not None:
            raise ValueError(
                "KnowledgeMemory.index can only be set to None (exact search); build an "
                "index with build_index(nlist=..., nprobe=..., seed=...)"
            )
        self.drop_index()

    def update(
        self, q: ArrayLike, labels: ArrayLike, payloads: Optional[ArrayLike] = None
    ) -> np.ndarray:
        """Writes a batch with the update rule of Kaiser et al. 2017 §3 (see the module).

        Queries are applied in order, each seeing the writes of those before it; a matched
        slot's payload becomes the mean of the stored and the new one (kept when
        ``payloads`` is None); a new slot gets the payload (zeros when None).

        ``labels`` holds one integer per query (1-D; a scalar for one query). Label -1 is
        what ``query`` returns for an empty slot and cannot be stored. A refused call
        (ValueError) changes nothing.

        Returns the slot each query wrote or merged into (int64, (n,)).
        """
        q, labels, payloads = self._batch(q, labels, payloads)
        return super().update(q, labels, payloads)

    def read(
        self,
        q: ArrayLike,
        k: Optional[int] = None,
        temperature: float = 1.0,
        return_weights: bool = False,
    ) -> Any:
        """Differentiable soft read.

        ``w = softmax(cos(q, K_top) / temperature)`` over the top-k keys and the result is
        ``sum_j w_j payload_j`` (``(n, payload_size)``); with ``payload_size == 0`` the
        weights ``(n, k)`` are returned instead. The keys are constants; the gradient
        flows to ``q`` through the similarities and the normalisation of ``q``.

        Args:
            q: queries ``(n, key_size)``, a Tensor (possibly recorded) or array-like.
            k: number of neighbours read, ``1 <= k <= capacity`` (ValueError otherwise, as
                ``query``); None: 8, or the capacity when smaller.
            temperature: softmax temperature (> 0).
            return_weights: also return the attention weights ``(n, k)``.
        """
        k = _k(k, 8, self.capacity)
        out, w = super().read(_queries(q), k, float(temperature))
        if out is None:
            return w
        return (out, w) if return_weights else out

    def loss(
        self,
        q: ArrayLike,
        labels: ArrayLike,
        k: Optional[int] = None,
        margin: float = 0.1,
        reduction: str = "mean",
    ) -> _core.Tensor:
        """The memory loss of Kaiser et al. 2017 §3, differentiable in ``q``.

        Per query: ``relu(q·k_neg - q·k_pos + margin)`` with ``q`` normalised, ``k_pos`` the
        nearest of the top-k keys whose label is the query's and ``k_neg`` the nearest one
        with another label (a missing one counts as similarity 0, as the paper's code).

        Args:
            q: queries ``(n, key_size)``.
            labels: ``n`` integer labels.
            k: size of the neighbourhood searched for k_pos / k_neg, ``1 <= k <=
                capacity`` (ValueError otherwise, as ``query``); None: the paper's 256, or
                the capacity when smaller.
            margin: alpha, 0.1 in the paper.
            reduction: ``"mean"`` (a scalar, as the paper), ``"sum"`` or ``"none"`` (n,).
        """
        k = _k(k, 256, self.capacity)
        per = super().loss(_queries(q), _labels(labels), k, float(margin))
        if reduction == "none":
            return per
        if reduction == "mean":
            return _core.reduce_mean(per)
        if reduction == "sum":
            return _core.reduce_sum(per)
        raise ValueError(
            f"KnowledgeMemory.loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
        )

    def predict(self, q: ArrayLike) -> np.ndarray:
        """The label of the nearest key for each query (int64, -1 when empty)."""
        return self.query(q, 1)[2][:, 0]

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Saves to ``path`` atomically (a temporary file renamed over it), in format
        version 2: magic ``MLMEMORY``, version, sizes, CRC-32s, then the keys, labels, ages
        and payloads, each on a 64-byte boundary so that ``open(path, mmap_mode="r")`` can
        search them in place. A memory opened mapped keeps reading the file it opened when
        ``save`` replaces it."""
        super().save(path)

    @classmethod
    def open(
        cls, path: Union[str, "os.PathLike[str]"], mmap_mode: Optional[str] = None
    ) -> "KnowledgeMemory":
        """A new memory with the sizes, contents and random stream of the file at ``path``.

        ``mmap_mode`` is NumPy's (``np.load``): ``None`` reads the file into RAM (a memory
        like any other); ``"r"`` maps it read-only and searches it where it lies, so a file
        larger than RAM opens and only the pages a search touches are read. Either way the
        whole file is checked first (magic, version, sizes against its length, CRC-32s,
        finite keys) and a corrupt or truncated file raises ValueError naming it.

        A mapped memory answers ``query``, ``read``, ``loss``, ``predict``, ``state`` and
        ``save`` with the same results, bit for bit, as the loaded one; ``key_dtype`` and
        ``build_index`` work (their copies live in RAM); ``update``, ``add``, ``remove``,
        ``clear`` and ``load`` raise ValueError (``read_only`` is True). A file written
        before format version 2 is read into RAM instead, read-only all the same.
        ``close()`` (or leaving a ``with`` block, or garbage collection) unmaps the file.
        """
        return super().open(path, mmap_mode)

    def __enter__(self) -> "KnowledgeMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Loads ``path`` into this memory after checking all of it; a corrupt, truncated or
        differently sized file raises (ValueError/OSError) and changes nothing. An index is
        rebuilt with the same parameters over the loaded keys (the file holds none), or
        dropped when they are fewer than its ``nlist``."""
        ix = self.index
        super().load(path)
        if ix is not None and self.size >= ix.nlist and (ix.sample or 0) <= self.size:
            super().build_index(ix.nlist, ix.nprobe, ix.seed, ix.n_iter, ix.sample)

    def __repr__(self):
        return (
            f"KnowledgeMemory(capacity={self.capacity}, key_size={self.key_size}, "
            f"payload_size={self.payload_size}, size={self.size})"
        )


def _encoder_output_size(encoder: Any) -> Optional[int]:
    """The embedding size an encoder gives, from its output shape when known (seen on a
    call, or computed from its declared input shape); None when it cannot be known
    without data. ValueError when the output is not one vector per sample."""
    shape = None
    try:
        shape = encoder.output_shape
    except (AttributeError, TypeError, ValueError):
        try:
            in_shape = encoder.input_shape
        except (AttributeError, TypeError, ValueError):
            in_shape = None
        if isinstance(in_shape, tuple) and hasattr(encoder, "compute_output_shape"):
            shape = encoder.compute_output_shape(in_shape)
    if not isinstance(shape, tuple) or not shape:
        return None
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "MemoryClassifier: the encoder must give one embedding vector per sample, "
            f"(batch, key_size); its output shape is {shape} (end it with Flatten or Dense)"
        )
    return int(shape[-1])


class MemoryClassifier:
    """An encoder followed by a KnowledgeMemory, trained end to end as in Kaiser et al.

    Each training step embeds a batch, takes the memory loss of the embeddings (the
    gradient reaches the encoder's weights), applies one optimizer step, then writes the
    embeddings into the memory with the update rule. At test time a new class needs no
    gradient step: write its examples (``memorize``) and ``predict`` returns the label of
    the nearest key.

    Args:
        encoder: a Layer/Model mapping inputs to embeddings ``(batch, key_size)``. When its
            output shape is known (a model built with ``keras.Input``, or called once),
            the key size is read from it.
        memory: a KnowledgeMemory; None makes one of `capacity` slots with the encoder's
            output size as its key size (the encoder's output shape must then be known).
            A memory whose ``key_size`` differs from the encoder's output size is refused
            with a ValueError naming both.
        optimizer: a metalearn.keras optimizer (default Adam(1e-3)).
        k: neighbourhood of the loss (see ``KnowledgeMemory.loss``; None: 256, or the
            memory's capacity when smaller).
        margin: alpha of the loss.
        capacity: slots of the memory made when `memory` is None.
        seed: seed of the memory made when `memory` is None.
    """

    def __init__(
        self,
        encoder: Any,
        memory: Optional[KnowledgeMemory] = None,
        optimizer: Any = None,
        k: Optional[int] = None,
        margin: float = 0.1,
        *,
        capacity: int = 8192,
        seed: int = 0,
    ) -> None:
        from .keras import optimizers

        key_size = _encoder_output_size(encoder)
        if memory is None:
            if key_size is None:
                raise ValueError(
                    "MemoryClassifier: the encoder's output size is unknown (it has no input "
                    "shape and was never called): give it one (keras.Input(...)) or pass "
                    "memory=KnowledgeMemory(capacity, key_size)"
                )
            memory = KnowledgeMemory(capacity, key_size, seed=seed)
        elif key_size is not None and key_size != memory.key_size:
            raise ValueError(
                f"MemoryClassifier: the encoder's output size is {key_size} but the memory's "
                f"key_size is {memory.key_size}; they must be equal"
            )
        self.encoder = encoder
        self.memory = memory
        self.optimizer = optimizer if optimizer is not None else optimizers.Adam(1e-3)
        self.k = None if k is None else int(k)
        if self.k is not None and not 1 <= self.k <= memory.capacity:
            raise ValueError(
                f"MemoryClassifier: k must be in [1, capacity={memory.capacity}], got {self.k}"
            )
        self.margin = float(margin)

    def embed(self, x: ArrayLike, training: bool = False) -> _core.Tensor:
        return self.encoder(np.asarray(x, dtype=np.float32), training=training)

    def train_step(self, x: ArrayLike, y: ArrayLike) -> float:
        """One step: memory loss -> gradient to the encoder -> optimizer -> memory update.
        Returns the loss (float)."""
        from .tape import GradientTape

        y = _labels(y)
        with GradientTape() as tape:
            emb = self.embed(x, training=True)
            loss = self.memory.loss(emb, y, k=self.k, margin=self.margin)
        variables = self.encoder.trainable_weights
        grads = tape.gradient(loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if pairs:
            self.optimizer.apply_gradients(pairs)
        self.memory.update(emb.numpy(), y)
        return float(loss.numpy())

    def fit(
        self, x: ArrayLike, y: ArrayLike, steps: int = 100, batch_size: int = 32, seed: int = 0
    ) -> List[float]:
        """Trains on random batches of (x, y); returns the list of losses."""
        rng = np.random.default_rng(seed)
        x = np.asarray(x, dtype=np.float32)
        y = _labels(y)
        losses = []
        for _ in range(int(steps)):
            i = rng.integers(0, len(x), int(batch_size))
            losses.append(self.train_step(x[i], y[i]))
        return losses

    def fit_episodes(
        self,
        x: ArrayLike,
        y: ArrayLike,
        episodes: int = 100,
        n_way: int = 5,
        k_shot: int = 1,
        n_query: int = 1,
        seed: int = 0,
        clear_memory: bool = False,
    ) -> Any:
        """Episodic training as the paper's one-shot setup: each episode draws ``n_way``
        classes, and their ``k_shot + n_query`` examples are shown in rounds of one example
        per class; each round is a ``train_step`` (loss against what the memory holds,
        then written into it). Returns the mean loss per episode."""
        rng = np.random.default_rng(seed)
        x = np.asarray(x, dtype=np.float32)
        y = _labels(y)
        classes = np.unique(y)
        by_class = {c: np.flatnonzero(y == c) for c in classes}
        history = []
        for _ in range(int(episodes)):
            if clear_memory:
                self.memory.clear()
            chosen = rng.choice(classes, int(n_way), replace=False)
            picks = [
                rng.choice(
                    by_class[c], k_shot + n_query, replace=len(by_class[c]) < k_shot + n_query
                )
                for c in chosen
            ]
            losses = []
            for r in range(k_shot + n_query):
                idx = np.array([p[r] for p in picks])
                losses.append(self.train_step(x[idx], y[idx]))
            history.append(float(np.mean(losses)))
        return history

    def memorize(self, x: ArrayLike, y: ArrayLike) -> None:
        """Writes examples into the memory (no gradient)."""
        from .tape import no_grad

        with no_grad():
            emb = self.embed(x)
        self.memory.update(emb.numpy(), _labels(y))

    def predict(self, x: ArrayLike) -> np.ndarray:
        """The label of the nearest key for each example (no gradient step)."""
        from .tape import no_grad

        with no_grad():
            emb = self.embed(x)
        return self.memory.predict(emb.numpy())
