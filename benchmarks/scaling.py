"""Strong scaling of data-parallel meta-training (metalearn.distributed.DataParallel).

Run it under mpiexec with P ranks of one thread each; rank 0 prints one table row per
workload with the time per meta-step, the part of it spent in communication (the most of
any rank: the exchange of the tree's sums, the gather of the per-task losses, the
agreement all-reduce), and the bytes summed per step, then a line with each rank's thread
CPU time per step outside the collectives (its work) and its wall and CPU time inside them
(MPI polls while it waits for the slower rank or the transfer); on a shared machine the
CPU times are the numbers to compare. ``--breakdown`` adds each rank's thread CPU time in
the tasks' gradients, the tree additions, the combination of the ranks' sums, the drawing
of the meta-batch (each rank draws the whole batch's random numbers and gathers the images
of its own tasks only), the meta-optimizer's step and the rest::

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \\
        mpiexec -n 1 python benchmarks/scaling.py
    ... mpiexec -n 2 python benchmarks/scaling.py

Workloads (synthetic data of Omniglot's shape, so no dataset is needed): MAML second
order on the MAML paper's Omniglot MLP, 5-way 1-shot, 15 queries, meta-batch 32; ProtoNet
on conv4, 20-way 5-shot, 5 queries, meta-batch 2. Speed-up and efficiency are the ratio of
the P = 1 and P = n rows (run both; the README's table gives them).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("METALEARN_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import metalearn as ml  # noqa: E402
from metalearn import distributed, meta  # noqa: E402
from metalearn.meta import models  # noqa: E402
from metalearn.tasks import NWayKShot  # noqa: E402


def omniglot_like(classes=200, per=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((classes * per, 28, 28, 1), dtype=np.float32)
    return x, np.repeat(np.arange(classes), per)


class _Timed:
    """Wraps the world's collectives to add up the wall time spent in them (waiting for
    the other ranks included) and this thread's CPU time in them."""

    NAMES = ("Allgatherv", "Allreduce", "Bcast", "allgather", "Send", "Recv", "Sendrecv")

    def __init__(self, world):
        self.world, self.seconds, self.cpu = world, 0.0, 0.0

    def __getattr__(self, name):
        fn = getattr(self.world, name)
        if name not in self.NAMES:
            return fn

        def timed(*a, **k):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t
                self.cpu += time.thread_time() - c

        return timed


class _Parts:
    """--breakdown: this thread's CPU time outside the collectives in the parts of the
    strategy's meta-step (the tasks' gradients, the local tree additions, the combination
    of the ranks' sums, the sampler's draw, the meta-optimizer's step)."""

    def __init__(self, timed, optimizer):
        self.seconds = {
            "tasks": 0.0,
            "adds": 0.0,
            "combine": 0.0,
            "sampling": 0.0,
            "optimizer": 0.0,
        }
        self._optimizer = optimizer
        self._saved, self._timed = [], timed

    def _wrap(self, owner, name, part):
        fn = getattr(owner, name)
        self._saved.append((owner, name, fn))
        seconds, world = self.seconds, self._timed

        def timed(*a, **k):  # (less the CPU time in collectives: MPI's polling)
            t, c = time.thread_time(), world.cpu
            try:
                return fn(*a, **k)
            finally:
                seconds[part] += time.thread_time() - t - (world.cpu - c)

        setattr(owner, name, timed)

    def __enter__(self):
        from metalearn import _tasksum
        from metalearn.meta import _base

        self._wrap(distributed, "_task_gradient", "tasks")
        self._wrap(_base, "_next_batch", "sampling")
        self._wrap(self._optimizer, "apply_gradients", "optimizer")
        self._wrap(distributed, "_tree_allreduce", "combine")
        self._wrap(_tasksum.TreeSum, "add", "adds")
        self._wrap(_tasksum.TreeSum, "add_parts", "adds")
        self._wrap(_tasksum.TreeSum, "result", "adds")
        return self

    def __exit__(self, *exc):
        for owner, name, fn in reversed(self._saved):
            if owner is self._optimizer:
                del owner.apply_gradients  # (an instance attribute over the class's method)
            else:
                setattr(owner, name, fn)

    def reset(self):
        for k in self.seconds:
            self.seconds[k] = 0.0


def run(name, learner, tasks, batch, steps, warmup, breakdown=False):
    world = distributed._world()
    timed = _Timed(world)
    distributed._world = lambda: timed  # the strategy's collectives, timed
    parts = _Parts(timed, learner.meta_optimizer) if breakdown else None
    try:
        with distributed.DataParallel(check_every=0).scope(), parts or _nothing():
            learner.fit(tasks, iterations=warmup, meta_batch_size=batch, verbose=0)
            distributed.barrier()
            timed.seconds = timed.cpu = 0.0
            if parts:
                parts.reset()
            t, c = time.perf_counter(), time.thread_time()
            learner.fit(tasks, iterations=steps, meta_batch_size=batch, verbose=0)
            wall, cpu = time.perf_counter() - t, time.thread_time() - c
    finally:
        distributed._world = lambda: world
    width = sum(int(np.prod(w.shape)) for w in learner._meta_params())
    # per rank, ms/step: this thread's CPU time outside the collectives (the work, what an
    # idle machine would take), and the wall and CPU time inside them (MPI polls while it
    # waits for the other ranks, so CPU there is not work)
    mine = np.array([cpu - timed.cpu, timed.seconds, timed.cpu]) * 1000 / steps
    if parts:
        mine = np.concatenate([mine, np.array(list(parts.seconds.values())) * 1000 / steps])
    every = np.empty((distributed.size(), len(mine)))
    if distributed.size() > 1:
        world.Allgather(mine, every)
    else:
        every[0] = mine
    if distributed.is_root():

        def ranks(col):
            return "/".join(f"{v:.1f}" for v in every[:, col])

        # the first columns are what scaling_peer.py parses: keep them
        print(
            f"{name:<34s} P={distributed.size()}  {1000 * wall / steps:8.1f} ms/step  "
            f"communication {np.max(every[:, 1]):6.1f} ms/step  "
            f"summed {width * 4 / 1e6:5.2f} MB/rank/step ({width} weights, {batch} tasks)"
        )
        print(
            f"{'':<34s}   per rank, ms/step: thread CPU outside the collectives "
            f"{ranks(0)}  in the collectives {ranks(1)} wall, {ranks(2)} CPU"
        )
        if parts:  # the CPU time outside the collectives = the parts + the rest
            rest = [every[q, 0] - sum(every[q, 3:8]) for q in range(len(every))]
            print(
                f"{'':<34s}   per rank, thread CPU ms/step: tasks {ranks(3)}  tree additions "
                f"{ranks(4)}  combining the ranks' sums {ranks(5)}  sampling {ranks(6)}  "
                f"optimizer {ranks(7)}  the rest (copies, Python) "
                + "/".join(f"{v:.1f}" for v in rest)
            )


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also print each rank's time per step in the tasks, the tree additions and "
        "the combination of the ranks' sums",
    )
    p.add_argument("--only", choices=("maml", "protonet"), help="run one workload (default: both)")
    args = p.parse_args(argv)
    ml.random.set_seed(0)
    data = omniglot_like()
    if args.only in (None, "maml"):
        maml = meta.MAML(models.omniglot_mlp(5), inner_lr=0.4)
        tasks = NWayKShot(data, 5, 1, 15, seed=0)
        run(
            "MAML Omniglot MLP 5w1s, batch 32",
            maml,
            tasks,
            32,
            args.steps,
            args.warmup,
            args.breakdown,
        )
    if args.only in (None, "protonet"):
        proto = meta.ProtoNet(models.conv4())
        tasks = NWayKShot(data, 20, 5, 5, seed=0)
        steps = max(2, args.steps // 2)
        run("ProtoNet conv4 20w5s, batch 2", proto, tasks, 2, steps, 1, args.breakdown)


if __name__ == "__main__":
    main()
