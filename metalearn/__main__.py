"""``python -m metalearn``: a short meta-learning demo.

By default: MAML (second order) meta-trains the paper's 1-40-40-1 network on sinusoid
tasks, then reports the mean squared error on held-out tasks before adaptation and
after 1 and 10 gradient steps, for the meta-trained model and for the same network
untrained. ``--task omniglot`` runs N-way K-shot classification on the shipped Omniglot
data instead. ``python -m metalearn --help`` lists the options.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil", "protonet")


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m metalearn",
        description="Meta-train a network on few-shot tasks and show how well it adapts to new "
        "ones (MAML on sinusoid regression by default; about 10 s on 2 cores).",
    )
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="maml",
        help="meta-learning algorithm (default: maml, second order)",
    )
    p.add_argument(
        "--task",
        choices=("sinusoid", "omniglot"),
        default="sinusoid",
        help="sinusoid regression (no data needed) or Omniglot classification",
    )
    p.add_argument("--ways", type=int, default=5, help="classes per Omniglot task (N)")
    p.add_argument(
        "--shots",
        type=int,
        default=None,
        help="support examples per class (K; default 1 for Omniglot, 10 sinusoid points)",
    )
    p.add_argument("--queries", type=int, default=None, help="query examples per class/task")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="meta-iterations (default: 5000 sinusoid, 300 Omniglot, 1000 ProtoNet)",
    )
    p.add_argument(
        "--meta-batch-size",
        type=int,
        default=None,
        help="tasks per meta-update (default: 25 sinusoid, 16 Omniglot, 1 ProtoNet)",
    )
    p.add_argument("--inner-lr", type=float, default=None, help="inner step size")
    p.add_argument("--inner-steps", type=int, default=None, help="inner steps while meta-training")
    p.add_argument(
        "--model",
        choices=("mlp", "conv4"),
        default="mlp",
        help="Omniglot network: the MAML paper's MLP or the conv4 net (slower)",
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="held-out tasks to evaluate on (default 200 sinusoid, 100 Omniglot)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="Omniglot folder (else $METALEARN_DATA, then the checkout's ../shared/data/omniglot)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="number of CPU threads (sets OMP_NUM_THREADS and metalearn's thread count)",
    )
    p.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="save the meta-trained weights, the history (JSON) and a plot (PNG, when "
        "matplotlib is installed) in DIR",
    )
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="progress output")
    return p


def _set_threads(n):
    if n is None:
        return
    if n < 1:
        raise SystemExit("--threads must be >= 1")
    for var in ("OMP_NUM_THREADS", "METALEARN_NUM_THREADS"):
        os.environ[var] = str(n)
    import metalearn as ml

    setter = getattr(ml, "set_num_threads", None) or getattr(ml._core, "set_num_threads", None)
    if setter is not None:
        setter(n)


def _learner(args, model):
    from metalearn import meta

    a = args.algorithm
    kw = {}
    if args.inner_lr is not None:
        kw["inner_lr"] = args.inner_lr
    if args.inner_steps is not None:
        kw["inner_steps"] = args.inner_steps
    if a == "protonet":
        return meta.ProtoNet(model)
    if a == "reptile":
        kw.setdefault("inner_lr", 0.02 if args.task == "sinusoid" else 0.1)
        kw.setdefault("inner_steps", 5)
        return meta.Reptile(model, **kw)
    kw.setdefault("inner_lr", 0.01 if args.task == "sinusoid" else 0.4)
    cls = {"maml": meta.MAML, "fomaml": meta.MAML, "metasgd": meta.MetaSGD, "anil": meta.ANIL}[a]
    if a == "fomaml":
        kw["first_order"] = True
    return cls(model, **kw)


def _fmt(res, metric):
    pct = metric == "accuracy"
    v, ci = res[metric], res["ci95"]
    return f"{100 * v:6.2f} ± {100 * ci:.2f} %" if pct else f"{v:7.3f} ± {ci:.3f}"


def main(argv=None):
    args = _parser().parse_args(argv)
    _set_threads(args.threads)
    import metalearn as ml
    from metalearn import keras, tasks
    from metalearn.meta import models

    ml.random.set_seed(args.seed)
    t_start = time.perf_counter()
    if args.task == "sinusoid":
        if args.algorithm == "protonet":
            raise SystemExit("protonet classifies; use --task omniglot with it")
        k = args.shots or 10
        q = args.queries or 10
        train = tasks.Sinusoid(k_shot=k, q_queries=q, seed=args.seed)
        held_out = tasks.Sinusoid(k_shot=k, q_queries=100, seed=args.seed + 10_000)
        test = held_out.sample_batch(args.episodes or 200)
        make_model = models.sinusoid_mlp
        iterations = args.iterations if args.iterations is not None else 5000
        batch = args.meta_batch_size or 25
        steps = [0, 1, 10]
        title = f"{args.algorithm.upper()} on sinusoid regression, K={k}"
    else:
        from metalearn.datasets import omniglot

        k = args.shots or 1
        q = args.queries or (5 if args.algorithm == "protonet" else 15)
        x_tr, y_tr = omniglot(path=args.data, split="vinyals_trainval")
        x_te, y_te = omniglot(path=args.data, split="vinyals_test")
        ways = args.ways
        train_ways = max(ways, 20) if args.algorithm == "protonet" else ways  # ProtoNets: more ways
        train = tasks.NWayKShot((x_tr, y_tr), train_ways, k, q, seed=args.seed)
        test = tasks.NWayKShot((x_te, y_te), ways, k, q, seed=args.seed + 10_000)
        if args.algorithm == "protonet":
            if args.model == "conv4":
                make_model = lambda: models.conv4()  # noqa: E731
            else:
                make_model = lambda: keras.Sequential(
                    [  # noqa: E731
                        keras.layers.Flatten(input_shape=(28, 28, 1)),
                        keras.layers.Dense(256, activation="relu"),
                        keras.layers.Dense(64),
                    ]
                )
        else:
            make_model = (
                (lambda: models.conv4(ways))
                if args.model == "conv4"
                else (lambda: models.omniglot_mlp(ways))
            )
        iterations = (
            args.iterations
            if args.iterations is not None
            else (1000 if args.algorithm == "protonet" else 300)
        )
        batch = args.meta_batch_size or (1 if args.algorithm == "protonet" else 16)
        steps = [0, 1, 3] if args.algorithm != "protonet" else [None]
        title = f"{args.algorithm.upper()} on Omniglot {ways}-way {k}-shot ({args.model})"

    model = make_model()
    learner = _learner(args, model)
    episodes = args.episodes or (None if args.task == "sinusoid" else 100)
    print(f"metalearn demo: {title}")
    print(f"  {model.count_params()} weights, {iterations} meta-iterations of {batch} task(s)")
    before = learner.evaluate(test, episodes=episodes, steps=steps)
    history = learner.fit(train, iterations=iterations, meta_batch_size=batch, verbose=args.verbose)
    after = learner.evaluate(test, episodes=episodes, steps=steps, verbose=0)
    metric = learner.metric_name
    n_eval = (after[steps[0]] if isinstance(after, dict) and steps[0] in after else after)[
        "episodes"
    ]
    print(f"\nHeld-out tasks ({n_eval}): query {metric} (mean ± 95 % CI)")
    print(f"  {'':26s}{'untrained':>22s}{'meta-trained':>22s}")
    for s in steps:
        label = (
            "prototypes"
            if s is None
            else ("before adaptation" if s == 0 else f"after {s} step{'s' if s > 1 else ''}")
        )
        print(f"  {label:26s}{_fmt(before[s], metric):>22s}{_fmt(after[s], metric):>22s}")
    print(f"Wall time: {time.perf_counter() - t_start:.1f} s")
    if args.output:
        _save(args, learner, model, history, before, after, steps, test)
    return 0


def _save(args, learner, model, history, before, after, steps, test):
    import numpy as np

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "meta_model.weights"
    model.save_weights(weights)
    # the safe writer of the weight files (a unique temporary file, fsync, rename), as
    # MetaLearner.save writes its config: an interrupted run never leaves half a history
    from metalearn import _core

    _core.write_file(
        str(out / "history.json"),
        json.dumps(
            {
                "args": vars(args),
                "history": history,
                "before": {str(k): v for k, v in before.items()},
                "after": {str(k): v for k, v in after.items()},
            },
            indent=1,
        ).encode(),
    )
    print(f"Saved {weights} and {out / 'history.json'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(history["loss"], lw=0.6)
    axes[0].set_xlabel("meta-iteration")
    axes[0].set_ylabel("query loss after adaptation")
    axes[0].set_title("meta-training")
    if args.task == "sinusoid":
        t = test.task(0)
        xs = np.linspace(-5, 5, 200, dtype=np.float32)[:, None]
        amp, ph = t.info["amplitude"], t.info["phase"]
        ax = axes[1]
        ax.plot(xs, amp * np.sin(xs - ph), "k", label="ground truth")
        for s in (0, 1, 10):
            adapted = learner.adapt(t.support_x, t.support_y, steps=s)
            ax.plot(xs, np.asarray(adapted(xs)), label=f"{s} steps")
        ax.plot(t.support_x, t.support_y, "^", label="support points")
        ax.legend()
        ax.set_title("a held-out task")
    else:
        metric = learner.metric_name
        axes[1].plot(history[metric], lw=0.6)
        axes[1].set_xlabel("meta-iteration")
        axes[1].set_ylabel(f"training query {metric}")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=100)
    print(f"Saved {out / 'demo.png'}")


if __name__ == "__main__":
    sys.exit(main())
