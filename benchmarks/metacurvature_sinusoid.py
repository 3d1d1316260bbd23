"""Meta-Curvature beside MAML on the MAML paper's sinusoid regression, at the same budget.

Both learners: the 1-40-40-1 ReLU MLP from the same initial weights, K=10, inner lr 0.01,
1 inner step, meta-batch 25, Adam 1e-3, the same task stream; evaluated on the same 600
held-out tasks (100 queries each) after 0, 1 and 10 inner steps. Meta-Curvature (Park &
Oliva 2019) learns a Kronecker-factored preconditioner of the inner gradient beside the
initialisation (metalearn.meta.MetaCurvature).

``--omniglot`` runs Omniglot 5-way 1-shot instead, with the MAML paper's MLP (batch norm,
transductive), inner lr 0.4, 1 step (3 at test), meta-batch 32, 600 test episodes of the
Vinyals test split; ``--learner`` runs one side only (two processes side by side). Usage::

    python benchmarks/metacurvature_sinusoid.py [--iterations 70000] [--quick]
    python benchmarks/metacurvature_sinusoid.py --omniglot --iterations 1000 [--learner maml]

``--cards DIR`` writes a result card per learner (evaluate's, through reproduce.card_path):
``metacurvature_sinusoid-{maml,metacurvature}.json`` (MSE after 0, 1 and 10 steps) and
``metacurvature_omniglot-{maml,metacurvature}-5w1s.json``; ``--threads N`` sets the core's
thread count (the README's rows: one thread).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reproduce.py

import metalearn as ml  # noqa: E402
from metalearn.meta import MAML, MetaCurvature, models  # noqa: E402
from metalearn.tasks import Sinusoid  # noqa: E402

from reproduce import card_path, set_threads  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=70000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="200 iterations (Omniglot: 20, and 2 test episodes)"
    )
    p.add_argument("--omniglot", action="store_true", help="Omniglot 5-way 1-shot, MLP")
    p.add_argument("--learner", choices=("both", "maml", "metacurvature"), default="both")
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=None, help="the core's thread count")
    p.add_argument("--cards", default=None, help="a folder for result cards (metalearn.report)")
    args = p.parse_args(argv)
    set_threads(args)
    learners = [c for c in (MAML, MetaCurvature) if args.learner in ("both", c.__name__.lower())]
    if args.omniglot:
        return omniglot_run(args, learners)
    iters = 200 if args.quick else args.iterations
    test = Sinusoid(k_shot=10, q_queries=100, seed=args.seed + 1).sample_batch(600)
    print(f"sinusoid K=10, {iters} meta-iterations of 25 tasks, 600 test tasks")
    print(f"{'learner':>14s} | {'0 steps':>15s} | {'1 step':>15s} | {'10 steps':>15s} | time")
    for cls in learners:
        ml.random.set_seed(args.seed)
        learner = cls(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1, meta_lr=0.001)
        t0 = time.perf_counter()
        learner.fit(
            Sinusoid(k_shot=10, q_queries=10, seed=args.seed),
            iterations=iters,
            meta_batch_size=25,
            verbose=0,
        )
        wall = time.perf_counter() - t0
        card = card_path(args.cards, f"metacurvature_sinusoid-{cls.__name__.lower()}")
        res = learner.evaluate(test, steps=[0, 1, 10], card=card)
        cells = [f"{res[s]['mse']:.3f} ± {res[s]['ci95']:.3f}" for s in (0, 1, 10)]
        print(
            f"{cls.__name__:>14s} | " + " | ".join(f"{c:>15s}" for c in cells) + f" | {wall:.0f} s"
        )


def omniglot_run(args, learners):
    from metalearn.datasets import omniglot
    from metalearn.tasks import NWayKShot

    iters = 20 if args.quick else args.iterations
    x_tr, y_tr = omniglot(path=args.data, split="vinyals_trainval")
    x_te, y_te = omniglot(path=args.data, split="vinyals_test")
    print(f"Omniglot 5-way 1-shot, MLP + BN, {iters} meta-iterations of 32 tasks, 600 episodes")
    for cls in learners:
        ml.random.set_seed(args.seed)
        learner = cls(models.omniglot_mlp(5), inner_lr=0.4, inner_steps=1)
        t0 = time.perf_counter()
        train = NWayKShot((x_tr, y_tr), 5, 1, 15, seed=args.seed)
        learner.fit(train, iterations=iters, meta_batch_size=32, verbose=0)
        wall = time.perf_counter() - t0
        test = NWayKShot((x_te, y_te), 5, 1, 15, seed=args.seed + 10_000)
        card = card_path(args.cards, f"metacurvature_omniglot-{cls.__name__.lower()}-5w1s")
        r = learner.evaluate(test, episodes=2 if args.quick else 600, steps=3, card=card)
        print(
            f"{cls.__name__:>14s} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} % "
            f"after 3 steps | {wall:.0f} s training"
        )


if __name__ == "__main__":
    main()
