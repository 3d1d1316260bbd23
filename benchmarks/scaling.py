"""Strong scaling of data-parallel meta-training (metalearn.distributed.DataParallel).

Run it under mpiexec with P ranks of one thread each; rank 0 prints one table row per
workload with the time per meta-step, the part of it spent in communication (the
Allgatherv of the per-task gradients and the agreement all-reduce), and the bytes gathered
per step::

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
    """Wraps the world's collectives to add up the time spent in them."""

    def __init__(self, world):
        self.world, self.seconds = world, 0.0

    def __getattr__(self, name):
        fn = getattr(self.world, name)
        if name not in ("Allgatherv", "Allreduce", "Bcast", "allgather", "Send", "Recv"):
            return fn

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def run(name, learner, tasks, batch, steps, warmup):
    world = distributed._world()
    timed = _Timed(world)
    distributed._world = lambda: timed  # the strategy's collectives, timed
    try:
        with distributed.DataParallel(check_every=0).scope():
            learner.fit(tasks, iterations=warmup, meta_batch_size=batch, verbose=0)
            distributed.barrier()
            timed.seconds = 0.0
            t = time.perf_counter()
            learner.fit(tasks, iterations=steps, meta_batch_size=batch, verbose=0)
            wall = time.perf_counter() - t
    finally:
        distributed._world = lambda: world
    width = sum(int(np.prod(w.shape)) for w in learner._meta_params())
    if distributed.is_root():
        print(
            f"{name:<34s} P={distributed.size()}  {1000 * wall / steps:8.1f} ms/step  "
            f"communication {1000 * timed.seconds / steps:6.1f} ms/step  "
            f"summed {width * 4 / 1e6:5.2f} MB/rank/step ({width} weights, {batch} tasks)"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    ml.random.set_seed(0)
    data = omniglot_like()
    maml = meta.MAML(models.omniglot_mlp(5), inner_lr=0.4)
    tasks = NWayKShot(data, 5, 1, 15, seed=0)
    run("MAML Omniglot MLP 5w1s, batch 32", maml, tasks, 32, args.steps, args.warmup)
    proto = meta.ProtoNet(models.conv4())
    tasks = NWayKShot(data, 20, 5, 5, seed=0)
    run("ProtoNet conv4 20w5s, batch 2", proto, tasks, 2, max(2, args.steps // 2), 1)


if __name__ == "__main__":
    main()
