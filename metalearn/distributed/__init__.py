"""Data-parallel meta-training over MPI (issue 24): the same bits on any number of processes.

The world::

    from metalearn import distributed
    distributed.rank(), distributed.size(), distributed.is_root(), distributed.barrier()

and the strategy, in Keras 3's shape (``keras.distribution.DataParallel`` is entered with
``scope()`` or made global with ``set_distribution``; the algorithm's own ``fit`` is unchanged)::

    with distributed.DataParallel().scope():
        maml.fit(metalearn.tasks.Sinusoid(seed=0), iterations=1000, meta_batch_size=24)

run with ``mpiexec -n 2 python train.py`` (``pip install 'metalearn[mpi]'`` brings mpi4py and
Open MPI). Every rank draws the same meta-batch from the same sampler; rank r computes the
meta-gradients of its contiguous block of tasks, one task at a time, adding them as they
come in one fixed pairwise tree over the task indices (``metalearn/_tasksum.py``), and the
ranks combine their subtrees' sums in that tree (P a power of two dividing a power-of-two
meta-batch: log2 P exchanges of halves, then one gather; otherwise one Allgatherv of each rank's few node
sums), so the meta-update, and the weights after any number of iterations, have the same
bits for P = 1, 2, 3, ... processes (P need not divide the meta-batch).

The knowledge memory over the processes: ``distributed.ShardedMemory(capacity, key_size)``
holds capacity / P slots on each and answers as one ``KnowledgeMemory`` of that capacity,
bit for bit (``metalearn/distributed/memory.py``).

mpi4py is imported only when the process was started by an MPI launcher (``mpiexec``,
``srun``: its environment says so) or ``METALEARN_MPI=1`` is set; otherwise the world is
this one process (size 1) and nothing beyond NumPy is needed.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
import zlib
from typing import Any, Iterator, Optional

import numpy as np

from metalearn import _tasksum

__all__ = [
    "DataParallel",
    "ShardedMemory",
    "barrier",
    "comm",
    "distribution",
    "is_root",
    "rank",
    "set_distribution",
    "size",
]

_INSTALL = "pip install 'metalearn[mpi]'"

# environment variables by which MPI launchers announce the number of processes
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")


def _launched_size() -> int:
    """The process count a launcher announced in the environment (1 when none did)."""
    for var in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def _wants_mpi() -> bool:
    if os.environ.get("METALEARN_MPI", "") not in ("", "0"):
        return True
    return any(var in os.environ for var in _LAUNCHER_SIZE_VARS + ("PMIX_RANK", "PMI_RANK"))


class _SelfComm:
    """The world of one process without MPI: the collectives are copies."""

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Barrier(self):
        pass


_comm_cache: Any = None


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"metalearn.distributed needs mpi4py and an MPI runtime for more than one "
            f"process: {_INSTALL} (or mpi4py built against your site's MPI); {exc}"
        ) from exc
    return MPI


def _world():
    """The world communicator: mpi4py's COMM_WORLD under a launcher, else a one-process
    stand-in. ImportError when a launcher started several processes and mpi4py is absent."""
    global _comm_cache
    if _comm_cache is None:
        if _wants_mpi():
            try:
                _comm_cache = _import_mpi().COMM_WORLD
            except ImportError:
                if _launched_size() > 1 or os.environ.get("METALEARN_MPI", "") not in ("", "0"):
                    raise
                _comm_cache = _SelfComm()  # `mpiexec -n 1` without mpi4py: one process
        else:
            _comm_cache = _SelfComm()
    return _comm_cache


def comm() -> Any:
    """mpi4py's ``MPI.COMM_WORLD`` (ImportError naming the extra when mpi4py is absent)."""
    w = _world()
    if isinstance(w, _SelfComm):
        return _import_mpi().COMM_WORLD
    return w


def rank() -> int:
    """This process' index in the world, 0 .. size() - 1."""
    return int(_world().Get_rank())


def size() -> int:
    """The number of processes in the world (1 without a launcher)."""
    return int(_world().Get_size())


def is_root() -> bool:
    """Whether this process is rank 0 (the one that writes files and prints)."""
    return rank() == 0


def barrier() -> None:
    """Waits until every process reaches it."""
    _world().Barrier()


# ------------------------------------------------------------------ the strategy

_global_distribution: Optional["DataParallel"] = None
_scoped: list = []


def distribution() -> Optional["DataParallel"]:
    """The strategy in force: the innermost ``scope()``, else ``set_distribution``'s."""
    return _scoped[-1] if _scoped else _global_distribution


def set_distribution(value: Optional["DataParallel"]) -> None:
    """Makes `value` the strategy of every later ``fit`` (None: back to one process), as
    ``keras.distribution.set_distribution``."""
    global _global_distribution
    if value is not None and not isinstance(value, DataParallel):
        raise TypeError(f"set_distribution: expected a DataParallel or None, got {value!r}")
    _global_distribution = value


def _block(n: int, p: int, r: int):
    """Rank r's contiguous block [lo, hi) of n tasks shared by p ranks (sizes differ by at
    most one, larger blocks first)."""
    return (n * r) // p, (n * (r + 1)) // p


class DataParallel:
    """Splits each meta-batch's tasks between the processes of the world; the same bits
    for any number of processes.

    Used by ``fit`` of MAML, FOMAML, MetaSGD, ANIL, Reptile, ProtoNet and MetaLearner while the strategy is in
    force (``with DataParallel().scope():`` or ``set_distribution``), and by every learner's
    ``evaluate``, which splits the episodes between the ranks and returns on every rank the
    numbers one process gives. ``checkpoint_dir`` works as in one process: rank 0 writes
    the checkpoints (every rank holds the same state) and every rank resumes from them, so
    the folder must be one that every rank can read (a shared file system across
    machines). A callback's ``stop_training`` or an expired ``time_budget`` on any rank
    stops every rank after the same iteration. At the start of
    ``fit`` the weights are broadcast from rank 0. Each meta-step: every rank draws the
    same meta-batch (the samplers are seeded alike), computes the meta-gradient of each of
    its tasks alone and adds it in one fixed pairwise tree over the task indices (the sum
    over tasks [lo, hi) is ``sum[lo, m) + sum[m, hi)``, m = lo + the largest power of two
    below hi - lo; for B = 4: ``(g_0 + g_1) + (g_2 + g_3)``), and the ranks combine their
    blocks' subtree sums in the same tree, so every rank holds the same sum, then divided by
    B; every rank applies the same optimizer step. ``MetaLearner.fit`` takes its algorithm's
    meta-step this way, splits the adaptation and measurement of the batch's tasks between
    the ranks too (their rows gathered in task order), and writes every task into its
    memory on every rank in task order (a replicated memory: the same writes in the same
    order give the same memory). The weights are therefore the same, bit for bit, for any number of
    processes (and for this strategy run in one process without MPI). Against a plain
    ``fit``: Reptile with ``vectorize=False`` gives the same bits (its loop sums the
    directions in the same tree); the MAML family and ProtoNet differ by float32
    rounding only, since their plain meta-step sums over tasks inside one graph (the
    vectorised batch, or autograd through the mean loss) in another order.

    ``Model.fit`` (and ``train_on_batch``) under the strategy cut each batch into `shards`
    row blocks (a fixed number, so the result does not depend on P, which must divide it);
    rank r computes the gradients of its contiguous block of shards, each shard's loss
    weighted by its share of the rows, and every rank sums all shards' gradients in shard
    order and applies the same optimizer step: the weights have the same bits for any P
    dividing `shards` (and differ from a plain ``fit`` by float32 rounding only). The
    predictions are gathered for the metrics. Models with BatchNormalization, Dropout or recurrent dropout
    are refused for now (their per-shard statistics and masks would depend on the rank),
    as are models with several outputs.

    Args:
        check_every: every this many steps the ranks compare a checksum (CRC-32) of their
            weights; a difference raises RuntimeError naming the step (0: never).
        shards: the row blocks ``Model.fit`` cuts each batch into (>= 1).
    """

    def __init__(self, check_every: int = 10, shards: int = 4) -> None:
        from metalearn.meta._base import check_count

        self.check_every = check_count(check_every, "check_every", "DataParallel")
        self.shards = check_count(shards, "shards", "DataParallel", minimum=1)
        self._buffers: list = []  # the meta-step's spare partial-sum buffers
        self._layout = None  # (tensors, shapes, sizes) of the meta-parameters last seen

    def __repr__(self):
        return f"<DataParallel size={size()} check_every={self.check_every} shards={self.shards}>"

    @contextlib.contextmanager
    def scope(self) -> Iterator["DataParallel"]:
        """The strategy for the ``fit`` calls inside the block. An exception escaping the
        block on one rank of several is printed and ends every rank
        (``MPI.COMM_WORLD.Abort``): the others would otherwise wait in a collective."""
        _scoped.append(self)
        try:
            yield self
        except BaseException:
            if size() > 1:
                sys.stderr.write(f"metalearn.distributed: rank {rank()} failed:\n")
                traceback.print_exc()
                sys.stderr.flush()
                _world().Abort(1)
            raise
        finally:
            _scoped.pop()

    # ---------------------------------------------------------- fit's hooks
    def _check_learner(self, learner, session_options):
        if _task_kind(learner) is None:
            raise TypeError(
                f"DataParallel: {type(learner).__name__}.fit is not data-parallel yet "
                "(MAML, FOMAML, MetaSGD, ANIL, Reptile and ProtoNet are)"
            )
        if getattr(learner, "batch_norm", "transductive") == "running":
            raise ValueError(
                "DataParallel: batch_norm='running' is not supported yet (the moving "
                "statistics are collected by the one-process meta-step)"
            )
        why = getattr(learner, "_not_data_parallel", lambda: None)()
        if why is not None:
            raise ValueError(f"DataParallel: not supported: {why}")

    def _begin(self, learner) -> None:
        """Broadcasts rank 0's weights (and every meta-parameter) to all ranks."""
        self._steps, self._buffers, self._layout = 0, [], None
        tensors = _state_tensors(learner)
        if size() == 1 or not tensors:
            return
        buf = np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors])
        _world().Bcast(buf, root=0)
        _assign_flat(tensors, buf)

    def _broadcast(self, tensors) -> None:
        """Rank 0's values of `tensors` on every rank (one Bcast)."""
        tensors = list(tensors)
        if size() == 1 or not tensors:
            return
        buf = np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors])
        _world().Bcast(buf, root=0)
        _assign_flat(tensors, buf)

    def _task_block(self, n):
        """This rank's contiguous block [lo, hi) of n tasks."""
        return _block(n, size(), rank())

    def _gather_rows(self, local, n):
        """Every rank's rows of its task block (float64, (hi - lo, w)), in task order on
        every rank: (n, w) (one Allgatherv; the values keep their bits)."""
        local = np.ascontiguousarray(local, np.float64)
        p = size()
        if p == 1:
            return local
        w = local.shape[1]
        counts = [(_block(n, p, q)[1] - _block(n, p, q)[0]) * w for q in range(p)]
        displs = [_block(n, p, q)[0] * w for q in range(p)]
        full = np.empty((n, w), np.float64)
        _world().Allgatherv(local, [full, (counts, displs), _import_mpi().DOUBLE])
        return full

    def _own_block(self, n):
        """This process's block of an n-task meta-batch, for the sampler, which then draws
        the whole batch but returns only these tasks (None in one process: all of it)."""
        p = size()
        return None if p == 1 else _block(n, p, rank())

    def _meta_step(self, learner, batch):
        """One data-parallel meta-step; returns (mean loss, mean metric) over the batch."""
        from metalearn import debugging
        from metalearn.meta._base import to_tensor

        params = list(_meta_params(learner))
        # the parameters' shapes and sizes, kept while the parameters are the same
        # tensors (per step they cost as much Python as a rank's share of the additions);
        # the tensors themselves are kept, not their ids, which a freed one could pass on
        held_params = self._layout[0] if self._layout is not None else ()
        if len(held_params) != len(params) or any(a is not b for a, b in zip(held_params, params)):
            shapes = [tuple(int(d) for d in t.shape) for t in params]
            self._layout = (tuple(params), shapes, [math.prod(x) for x in shapes])
        shapes, sizes = self._layout[1], self._layout[2]
        width = sum(sizes)
        p, r = size(), rank()
        # a block of the batch (NWayKShot.sample_batch(b, block=...)) holds this rank's
        # tasks only, row 0 being task lo; else the whole batch
        held = batch.info.get("block") if isinstance(batch.info, dict) else None
        n = len(batch.support_x) if held is None else int(held[2])
        lo, hi = _block(n, p, r)
        first = 0 if held is None else int(held[0])
        if held is not None and (first, int(held[1])) != (lo, hi):
            raise RuntimeError(
                f"DataParallel: rank {r} was given tasks {held[0]}..{held[1]} of {n}, "
                f"not its own {lo}..{hi}"
            )
        # the sum over tasks in one fixed pairwise tree over the task indices, whatever the
        # split (same bits for any P, _tasksum): this rank adds its block's tasks as they
        # come, into the tree's largest nodes inside the block (a binary-counter stack:
        # a few partial sums held, not every task's gradient); the ranks then combine
        # those node sums the same way on every rank (_tree_allreduce)
        local_stats = np.empty((hi - lo, 2), np.float64)
        # the partial sums' buffers are kept from step to step: fresh megabytes each step
        # were fresh pages from the kernel, zeroed on first touch, on every rank (the one
        # handed to the optimizer as the mean is not reused: the gradients share it)
        free = self._buffers if self._buffers and self._buffers[0].size == width else []
        self._buffers, sums = free, []
        for a, b in _tasksum.cover(n, lo, hi):
            acc = _tasksum.TreeSum(free)
            for i in range(a, b):
                loss, metric, grads = _task_gradient(learner, batch, i - first, params)
                acc.add_parts(grads, width)  # (the gradients' memory, read in place)
                local_stats[i - lo] = (loss, metric)
            sums.append(acc.result())
        total = _tree_allreduce(sums, n, width, p, r, free)
        stats = local_stats
        if p > 1:
            stats = np.empty((n, 2), np.float64)
            counts = [(_block(n, p, q)[1] - _block(n, p, q)[0]) for q in range(p)]
            displs = [_block(n, p, q)[0] for q in range(p)]
            MPI = _import_mpi()
            _world().Allgatherv(
                local_stats, [stats, ([c * 2 for c in counts], [d * 2 for d in displs]), MPI.DOUBLE]
            )
        total /= np.float32(n)  # the mean, correctly rounded (as Reptile's own loop)
        mean_grads, off = [], 0
        for s, k in zip(shapes, sizes):
            mean_grads.append(to_tensor(total[off : off + k].reshape(s)))
            off += k
        loss_value = float(np.mean(stats[:, 0]))
        metric_value = float(np.mean(stats[:, 1]))
        if debugging._numerics_checks:
            learner._check_meta_step(np.float32(loss_value), mean_grads, params)
        # the learner's own update (MAML++'s cosine-annealed meta rate)
        learner._apply_meta_gradients(mean_grads, params)
        self._steps += 1
        if p > 1 and self.check_every and self._steps % self.check_every == 0:
            self._compare_weights(learner, learner.iterations + 1)
        return loss_value, metric_value

    # ---------------------------------------------------------- Model.fit's hooks
    def _model_begin(self, model) -> None:
        """Checks the model can be split and broadcasts rank 0's weights (Model.fit)."""
        from metalearn.keras.conv_layers import BatchNormalization
        from metalearn.keras.layers import Dropout
        from metalearn.keras.rnn import _RNN
        from metalearn.meta._base import _leaf_layers

        p = size()
        if self.shards % p:
            raise ValueError(
                f"DataParallel: {p} processes do not divide shards={self.shards}: each "
                "process must take the same number of shards (choose shards as a multiple "
                "of the process count)"
            )
        for layer in _leaf_layers(model, []):
            if isinstance(layer, BatchNormalization) and layer.trainable:
                raise TypeError(
                    f"DataParallel: Model.fit with BatchNormalization ({layer.name}) is not "
                    "data-parallel yet (its batch statistics would be per shard)"
                )
            if isinstance(layer, Dropout) and layer.rate > 0:
                raise TypeError(
                    f"DataParallel: Model.fit with Dropout ({layer.name}) is not data-parallel "
                    "yet (its masks would depend on the process)"
                )
            if isinstance(layer, _RNN) and (layer.dropout > 0 or layer.recurrent_dropout > 0):
                raise TypeError(
                    f"DataParallel: Model.fit with a recurrent layer's dropout or "
                    f"recurrent_dropout ({layer.name}) is not data-parallel yet (its masks "
                    "would depend on the process)"
                )
        if getattr(model, "_multi_out", False):
            raise TypeError(
                "DataParallel: Model.fit of a model with several outputs is not supported yet"
            )
        self._steps = 0
        tensors = list(model.weights)
        if p > 1 and tensors:
            buf = np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors])
            _world().Bcast(buf, root=0)
            _assign_flat(tensors, buf)

    def _model_step(self, model, xb, yb, params, sample_weight=None):
        """Model.fit's data-parallel step: (loss tensor, y_pred of the whole batch)."""
        from metalearn import _core
        from metalearn.meta._base import to_tensor

        xs, ys = np.asarray(xb, np.float32), np.asarray(yb)
        sw = None if sample_weight is None else np.asarray(sample_weight, np.float32)
        n, s, p, r = len(xs), self.shards, size(), rank()
        if n < s:
            raise ValueError(
                f"DataParallel: a batch of {n} rows cannot be cut into shards={s} (use a "
                "batch_size of at least the shard count)"
            )
        shapes = [tuple(int(d) for d in t.shape) for t in params]
        width = sum(int(np.prod(x)) for x in shapes)
        first, last = _block(s, p, r)
        mine = range(first, last)
        local = np.empty((len(mine), width), np.float32)
        local_loss = np.empty(len(mine), np.float64)
        preds = []
        for j, k in enumerate(mine):
            lo, hi = _block(n, s, k)
            y_pred = model(to_tensor(xs[lo:hi]), training=True)
            part = model._total_loss(ys[lo:hi], y_pred, None if sw is None else sw[lo:hi])
            scaled = part * float((hi - lo) / n)  # its share of the batch's mean loss
            grads = _core.grad(scaled, params, create_graph=False, allow_unused=True)
            off = 0
            for g, shape in zip(grads, shapes):
                size_ = int(np.prod(shape))
                local[j, off : off + size_] = 0.0 if g is None else np.asarray(g).reshape(-1)
                off += size_
            local_loss[j] = float(scaled.item())
            preds.append(np.asarray(y_pred, np.float32))
        local_pred = np.concatenate(preds) if preds else np.empty((0,), np.float32)
        tail = local_pred.shape[1:]
        row = int(np.prod(tail)) if tail else 1
        if p == 1:
            full, losses, pred = local, local_loss, local_pred
        else:
            w, MPI = _world(), _import_mpi()
            counts = [_block(s, p, q)[1] - _block(s, p, q)[0] for q in range(p)]
            displs = [_block(s, p, q)[0] for q in range(p)]
            full = np.empty((s, width), np.float32)
            w.Allgatherv(
                local, [full, ([c * width for c in counts], [d * width for d in displs]), MPI.FLOAT]
            )
            losses = np.empty(s, np.float64)
            w.Allgatherv(local_loss, [losses, (counts, displs), MPI.DOUBLE])
            # rank q's shards [first_q, last_q) hold rows [n*first_q//s, n*last_q//s)
            starts = [(n * _block(s, p, q)[0]) // s for q in range(p)]
            rows = [(n * _block(s, p, q)[1]) // s - starts[q] for q in range(p)]
            pred = np.empty((n,) + tail, np.float32)
            w.Allgatherv(
                np.ascontiguousarray(local_pred),
                [pred, ([c * row for c in rows], [d * row for d in starts]), MPI.FLOAT],
            )
        total = full[0].copy()
        for k in range(1, s):  # in shard order, whatever the split: same bits for any P
            total += full[k]
        grads, off = [], 0
        for shape in shapes:
            size_ = int(np.prod(shape))
            grads.append(to_tensor(total[off : off + size_].reshape(shape)))
            off += size_
        loss = float(losses[0])
        for v in losses[1:]:
            loss += float(v)
        model.optimizer._apply(params, grads)
        self._steps += 1
        if p > 1 and self.check_every and self._steps % self.check_every == 0:
            crc = 0
            for t in model.weights:
                crc = zlib.crc32(np.ascontiguousarray(np.asarray(t, np.float32)).tobytes(), crc)
            crcs = _world().allgather(crc)
            if len(set(crcs)) > 1:
                raise RuntimeError(
                    f"DataParallel: the ranks' weights diverged at step {self._steps} "
                    f"(weight checksums by rank: {crcs})"
                )
        return _core.tensor(np.float32(loss)), _core.tensor(pred)

    def _agree(self, stop: bool, expired: bool):
        """(stop, expired) agreed by every rank: true on all if true on any. A callback's
        ``stop_training`` or a time budget read from one rank's clock would otherwise stop
        that rank alone, and the others would wait forever in the next collective."""
        if size() < 2:
            return stop, expired
        flags = np.array([int(stop), int(expired)], np.int64)
        both = np.empty_like(flags)
        _world().Allreduce(flags, both, op=_import_mpi().MAX)
        return bool(both[0]), bool(both[1])

    def _compare_weights(self, learner, step):
        crc = 0
        for t in _state_tensors(learner):
            crc = zlib.crc32(np.ascontiguousarray(np.asarray(t, np.float32)).tobytes(), crc)
        crcs = _world().allgather(crc)
        if len(set(crcs)) > 1:
            raise RuntimeError(
                f"DataParallel: the ranks' weights diverged at meta-step {step} "
                f"(weight checksums by rank: {crcs})"
            )


class _EvaluationShard:
    """``evaluate`` under the strategy: this rank's contiguous block of the episodes, and
    the gather of every rank's per-episode values into episode order (Allgatherv)."""

    def __init__(self):
        self.p, self.r = size(), rank()
        self.is_root = self.r == 0

    def block(self, n):
        return _block(n, self.p, self.r)

    def gather(self, values, n):
        local = np.asarray(values, np.float64)
        lo, hi = self.block(n)
        if len(local) != hi - lo:  # a sampler that ran out before n: the ranks disagree
            raise RuntimeError(
                f"DataParallel evaluate: rank {self.r} evaluated {len(local)} episodes of its "
                f"{hi - lo}"
            )
        counts = [_block(n, self.p, q)[1] - _block(n, self.p, q)[0] for q in range(self.p)]
        displs = [_block(n, self.p, q)[0] for q in range(self.p)]
        full = np.empty(n, np.float64)
        _world().Allgatherv(local, [full, (counts, displs), _import_mpi().DOUBLE])
        return full.tolist()


def _is_power_of_two(k):
    return k > 0 and k & (k - 1) == 0


def _halving_part(width, p, q):
    """The part [a, b) of a width-long vector rank q holds after _tree_allreduce's
    recursive halving over p ranks (p a power of two)."""
    a, b, k = 0, width, 1
    while k < p:
        mid = a + (b - a) // 2
        a, b = (a, mid) if not q & k else (mid, b)
        k *= 2
    return a, b


def _tree_allreduce(sums, n, width, p, r, free=None):
    """The tree's sum over n tasks on every rank, from each rank's sums of the tree nodes
    covering its block (``_tasksum.cover``, in order): the same additions, so the same
    bits, on every rank and for any P.

    When n and P are powers of two (P <= n) each rank's block is one node and the ranks'
    nodes are the leaves of the tree's top P - 1 additions: log2 P exchanges
    (``Sendrecv``) with the rank 1, 2, 4, ... away, each of half the part of the vector
    the last one left the rank, adding the left sibling to the right one (recursive
    halving; a + b is b + a bitwise, and the additions are elementwise), then one
    ``Allgatherv`` of the 1/P parts (the bytes sent are those of one sum; each rank adds
    1/P of it per level). Otherwise (P not dividing n into
    aligned blocks, or fewer tasks than ranks) every rank gathers every rank's node sums
    (``Allgatherv``) and adds the top of the tree itself. `free`: spare buffers of `width`
    to receive into, and to which the ones no longer needed return."""
    if p == 1:
        return sums[0]
    w, MPI = _world(), _import_mpi()
    if _is_power_of_two(n) and _is_power_of_two(p) and p <= n:
        # recursive halving, then one gather: at the exchange with the rank k away each
        # rank keeps half of the part of the vector it holds and adds the partner's
        # sum of that half to its own (the left sibling first: a + b is b + a bitwise,
        # and elementwise additions do not depend on how the vector is cut), so after
        # log2 P exchanges each rank holds 1/P of the tree's sum, and one Allgatherv
        # puts the parts together: each rank adds 1/P of the vector per level (it added
        # all of it) and sends the same bytes
        other = free.pop() if free else np.empty(width, np.float32)
        total, a, b, k = sums[0], 0, width, 1
        while k < p:
            mid = a + (b - a) // 2
            low = not r & k  # the lower rank of the pair keeps the lower half
            keep, give = ((a, mid), (mid, b)) if low else ((mid, b), (a, mid))
            w.Sendrecv(
                [total[give[0] : give[1]], MPI.FLOAT],
                dest=r ^ k,
                sendtag=3,
                recvbuf=[other[keep[0] : keep[1]], MPI.FLOAT],
                source=r ^ k,
                recvtag=3,
            )
            mine, theirs = total[keep[0] : keep[1]], other[keep[0] : keep[1]]
            if low:  # this rank holds the left sibling
                np.add(mine, theirs, out=mine)
            else:
                np.add(theirs, mine, out=mine)
            a, b = keep
            k *= 2
        parts = [_halving_part(width, p, q) for q in range(p)]
        w.Allgatherv(
            MPI.IN_PLACE,
            [total, ([hi - lo for lo, hi in parts], [lo for lo, _ in parts]), MPI.FLOAT],
        )
        if free is not None:
            free.append(other)
        return total
    covers = [_tasksum.cover(n, *_block(n, p, q)) for q in range(p)]
    counts = [len(c) * width for c in covers]
    displs = [sum(counts[:q]) for q in range(p)]
    local = np.stack(sums) if sums else np.empty((0, width), np.float32)
    if free is not None:
        free.extend(sums)
    every = np.empty((sum(len(c) for c in covers), width), np.float32)
    w.Allgatherv(local, [every, (counts, displs), MPI.FLOAT])
    nodes = [node for c in covers for node in c]
    return _tasksum.combine(n, {node: every[j] for j, node in enumerate(nodes)})


# ------------------------------------------------------------------ per algorithm


def _task_kind(learner):
    from metalearn.meta.maml import MAML
    from metalearn.meta.protonet import ProtoNet
    from metalearn.meta.reptile import Reptile

    if isinstance(learner, Reptile):  # (a MAML subclass: first)
        return "reptile"
    if isinstance(learner, MAML):
        return "maml"
    if isinstance(learner, ProtoNet):
        return "protonet"
    return None


def _meta_params(learner):
    if _task_kind(learner) == "protonet":
        return learner.encoder.trainable_weights
    return learner._meta_params()


def _state_tensors(learner):
    """Every tensor a rank must hold alike: the model's weights and the meta-parameters."""
    model = learner.encoder if _task_kind(learner) == "protonet" else learner.model
    seen, out = set(), []
    for t in list(model.weights) + list(_meta_params(learner)):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _assign_flat(tensors, buf):
    from metalearn import _core

    off = 0
    for t in tensors:
        k = int(np.prod(t.shape))
        _core.assign(t, np.ascontiguousarray(buf[off : off + k].reshape(tuple(t.shape))))
        off += k


def _task_gradient(learner, batch, i, params):
    """(query loss, metric, one tensor per meta-parameter) of task i of `batch` alone: its
    meta-gradient (MAML family, ProtoNet) or Reptile's direction theta - phi_i."""
    from metalearn import _core
    from metalearn.meta._base import accuracy
    from metalearn.tasks.base import Task

    kind = _task_kind(learner)
    if kind == "protonet":
        loss, logits = learner.episode_loss(
            batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        )
        return float(loss.item()), accuracy(logits, batch.query_y[i]), _core.grad(loss, params)
    sl = slice(i, i + 1)
    one = Task(
        batch.support_x[sl],
        batch.support_y[sl],
        batch.query_x[sl],
        batch.query_y[sl],
        info={"batched": True},
    )
    if kind == "reptile":  # the loop's direction of one task: (theta - phi_i) / 1
        loss, metric, grads = learner._direction(one)
        return loss, metric, grads
    # (the learner's own way: one graph, or gradient_checkpointing's recomputed steps)
    loss, metric, grads = learner._loss_and_gradients(one, params)
    return float(loss.item()), metric, grads


def __getattr__(name):
    # ShardedMemory lives in distributed/memory.py, imported on first use
    if name == "ShardedMemory":
        from metalearn.distributed.memory import ShardedMemory

        return ShardedMemory
    raise AttributeError(f"module 'metalearn.distributed' has no attribute {name!r}")


def __dir__():
    # the public names only (not the modules and typing names imported above)
    return list(__all__)
