"""Batch-norm modes on Omniglot: how much the transductive number flatters.

MAML (second order) on Omniglot 5-way 1-shot with the MAML paper's MLP (which has batch
normalisation), meta-trained once per mode (``batch_norm="transductive" | "support" |
"running"``) with the same seed and budget, each evaluated on the same 600 held-out
episodes (Vinyals test split, 15 queries per class) in every mode. Prints a table of mean
accuracy ± 95 % interval. ``--algorithms maml,anil,reptile`` adds ANIL (inner rate 0.4, one
step, as MAML) and Reptile (inner rate 0.1, 5 first-order steps, Adam meta-optimizer at
0.001) rows at the same budget, and ANIL also trains and evaluates in its ``"pooled"``
mode (support and query through the body as one batch, as learn2learn's ANIL examples);
``--quick`` is a smoke run (60 iterations, 100 episodes).
Usage::

    python benchmarks/bn_modes.py [--iterations 600] [--episodes 600] [--data FOLDER]
                                  [--algorithms maml,anil,reptile] [--quick]
"""

import argparse
import time


import metalearn as ml
from metalearn import meta, tasks
from metalearn.datasets import omniglot
from metalearn.meta import models

MODES = ("transductive", "support", "running")


def modes_of(algorithm):
    """The modes `algorithm` takes: ANIL's also "pooled"."""
    return MODES + (("pooled",) if algorithm == "anil" else ())


# each algorithm's learner for a batch-norm mode (the MLP of the MAML paper)
LEARNERS = {
    "maml": lambda mode: meta.MAML(models.omniglot_mlp(5), inner_lr=0.4, batch_norm=mode),
    "anil": lambda mode: meta.ANIL(models.omniglot_mlp(5), inner_lr=0.4, batch_norm=mode),
    "reptile": lambda mode: meta.Reptile(
        models.omniglot_mlp(5),
        inner_lr=0.1,
        inner_steps=5,
        meta_optimizer="adam",
        meta_lr=0.001,
        batch_norm=mode,
    ),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--meta-batch-size", type=int, default=16)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--data", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algorithms", default="maml", help="comma-separated: maml,anil,reptile")
    p.add_argument("--quick", action="store_true", help="60 iterations, 100 episodes")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.episodes = 60, 100
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in algorithms if a not in LEARNERS]
    if unknown or not algorithms:
        p.error(f"--algorithms: choose from {sorted(LEARNERS)}, got {args.algorithms!r}")
    x_tr, y_tr = omniglot(path=args.data, split="vinyals_trainval")
    x_te, y_te = omniglot(path=args.data, split="vinyals_test")
    print(
        f"Omniglot 5-way 1-shot, MLP with batch norm, "
        f"{args.iterations} meta-iterations of {args.meta_batch_size} tasks (MAML 2nd order, "
        f"inner lr 0.4, 1 step); {args.episodes} test episodes (the same for every row)"
    )
    columns = tuple(dict.fromkeys(m for a in algorithms for m in modes_of(a)))
    print(
        f"{'algorithm':>9s} | {'trained with':>14s} | "
        + " | ".join(f"{'eval ' + m:>22s}" for m in columns)
        + " | time"
    )
    for algorithm, train_mode in ((a, m) for a in algorithms for m in modes_of(a)):
        ml.random.set_seed(args.seed)
        learner = LEARNERS[algorithm](train_mode)
        train = tasks.NWayKShot((x_tr, y_tr), 5, 1, 15, seed=args.seed)
        t0 = time.perf_counter()
        learner.fit(
            train, iterations=args.iterations, meta_batch_size=args.meta_batch_size, verbose=0
        )
        wall = time.perf_counter() - t0
        cells = []
        for eval_mode in columns:
            if eval_mode not in modes_of(algorithm):
                cells.append("-")
                continue
            learner.batch_norm = eval_mode
            test = tasks.NWayKShot((x_te, y_te), 5, 1, 15, seed=args.seed + 10_000)
            r = learner.evaluate(test, episodes=args.episodes)
            cells.append(f"{100 * r['accuracy']:6.2f} ± {100 * r['ci95']:.2f} %")
        learner.batch_norm = train_mode
        print(
            f"{algorithm:>9s} | {train_mode:>14s} | "
            + " | ".join(f"{c:>22s}" for c in cells)
            + f" | {wall:.0f} s"
        )


if __name__ == "__main__":
    main()
