"""``python -m metalearn``: a short meta-learning demo.

By default: MAML (second order) meta-trains the paper's 1-40-40-1 network on sinusoid
tasks, then reports the mean squared error on held-out tasks before adaptation and
after 1 and 10 gradient steps, for the meta-trained model and for the same network
untrained. ``--task omniglot`` runs N-way K-shot classification on the shipped Omniglot
data instead. ``python -m metalearn --help`` lists the options.

``--dataset mini-imagenet | tiered-imagenet | cifar-fs | fc100 | cub --data FOLDER`` runs
the same on another few-shot benchmark (its files read from FOLDER, never downloaded) with
the conv4 network sized for its images.

Under an MPI launcher (``mpiexec -n P python -m metalearn ...``, with ``pip install
'metalearn[mpi]'``) the demo meta-trains and evaluates data-parallel
(``metalearn.distributed.DataParallel``): the weights it writes with ``--output`` are the
same bits for any P, and only rank 0 prints and writes.

``python -m metalearn train | evaluate | recognise`` learn from and recognise a folder of
your own images (``metalearn._cli``; ``python -m metalearn train --help``).
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil", "protonet")
PROG = "python -m metalearn"
# --dataset NAME: (reader in metalearn.datasets, its train and test splits, image shape)
DATASETS = {
    "omniglot": None,  # the --task omniglot path (vinyals splits, 28x28 gray, rotations)
    "mini-imagenet": ("mini_imagenet", "train", "test", (84, 84, 3)),
    "tiered-imagenet": ("tiered_imagenet", "train", "test", (84, 84, 3)),
    "cifar-fs": ("cifar_fs", "train", "test", (32, 32, 3)),
    "fc100": ("fc100", "train", "test", (32, 32, 3)),
    "cub": ("cub", "train", "test", (84, 84, 3)),
}
OMNIGLOT_DRAWINGS = 20  # drawings of each Omniglot character: support + queries per class

# Each algorithm's demo settings, the ones it converges with: (meta-iterations, tasks per
# meta-update, inner step size, inner steps while training, step counts evaluated). A
# learner is evaluated at the step counts it was trained for: Meta-SGD's learned rates and
# ANIL's head step are tuned to `inner steps` steps and diverge when run for many more.
SETTINGS = {
    "sinusoid": {
        "maml": (5000, 25, 0.01, 1, (0, 1, 10)),
        "fomaml": (5000, 25, 0.01, 1, (0, 1, 10)),
        "metasgd": (5000, 25, 0.01, 1, (0, 1)),
        "anil": (2000, 25, 0.1, 1, (0, 1)),
        "reptile": (5000, 25, 0.02, 5, (0, 1, 5)),
    },
    "omniglot": {
        "maml": (300, 16, 0.4, 1, (0, 1, 3)),
        "fomaml": (300, 16, 0.4, 1, (0, 1, 3)),
        "metasgd": (300, 16, 0.4, 1, (0, 1)),
        "anil": (300, 16, 0.4, 1, (0, 1)),
        "reptile": (300, 16, 0.4, 3, (0, 1, 3)),
        "protonet": (1000, 1, None, 0, (None,)),
    },
    # the MAML paper's mini-ImageNet settings (inner step 0.01, 5 steps, 4 tasks per
    # meta-update for 1-shot) on a short budget; evaluated after 10 steps as in the paper
    "images": {
        "maml": (300, 4, 0.01, 5, (0, 5, 10)),
        "fomaml": (300, 4, 0.01, 5, (0, 5, 10)),
        "metasgd": (300, 4, 0.01, 1, (0, 1)),
        "anil": (300, 4, 0.1, 5, (0, 5)),
        "reptile": (300, 4, 0.01, 5, (0, 5)),
        "protonet": (1000, 1, None, 0, (None,)),
    },
}

# Measured with the defaults (python -m metalearn [--task omniglot] --algorithm A, seed 0)
# on 2 CPU cores shared with other work, start-up and data loading included
TIMES = """\
Each variant with its defaults: wall time on 2 CPU cores, and the meta-trained model's
held-out result at the last step count it prints:
  --algorithm  sinusoid (query MSE; untrained ~3.8)  --task omniglot (5-way 1-shot accuracy)
  maml         4 s, 0.18 after 10 steps              27 s, 65 % after 3 steps
  fomaml       3 s, 0.22 after 10 steps              22 s, 72 % after 3 steps
  metasgd      7 s, 0.22 after 1 step                45 s, 60 % after 1 step
  anil         11 s, 1.43 after 1 step               32 s, 69 % after 1 step
  reptile      8 s, 0.25 after 5 steps               30 s, 50 % after 3 steps (*)
  protonet     (classification only)                 11 s, 84 % (prototypes)
(*) the untrained network fine-tuned for 3 steps reaches 53 %: Reptile needs far more
    meta-iterations on Omniglot (the paper ran 100,000) to beat it.
Omniglot is read from --data FOLDER, $METALEARN_DATA or ~/.cache/metalearn/data.
Your own images: python -m metalearn train | evaluate | recognise (each with --help).
"""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser():
    p = _Parser(
        prog=PROG,
        description="Meta-train a network on few-shot tasks and show how well it adapts to new "
        "ones (MAML on sinusoid regression by default).",
        epilog=TIMES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        default=None,
        help="few-shot classification on this dataset (read from --data; omniglot is "
        "--task omniglot): conv4 with 32 filters (ProtoNet 64) sized for its images",
    )
    p.add_argument("--ways", type=int, default=5, help="classes per Omniglot task (N)")
    p.add_argument(
        "--shots",
        type=int,
        default=None,
        help="support examples per class (K; default 1 for Omniglot, 10 sinusoid points)",
    )
    p.add_argument(
        "--queries",
        type=int,
        default=None,
        help="query examples per class (Omniglot: shots + queries <= 20; default 15, "
        "ProtoNet 5) or per sinusoid task (default 10)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="meta-iterations (default: 5000 sinusoid, ANIL 2000; 300 Omniglot, ProtoNet 1000)",
    )
    p.add_argument(
        "--meta-batch-size",
        type=int,
        default=None,
        help="tasks per meta-update (default: 25 sinusoid, 16 Omniglot, 1 ProtoNet)",
    )
    p.add_argument(
        "--inner-lr",
        type=float,
        default=None,
        help="inner step size (default: each algorithm's, e.g. MAML 0.01 sinusoid, 0.4 Omniglot)",
    )
    p.add_argument(
        "--inner-steps",
        type=int,
        default=None,
        help="inner steps while meta-training (default: 1; ANIL sinusoid and Reptile 5); "
        "the evaluation adapts with 0, 1 and this many steps (MAML also 10 sinusoid, 3 "
        "Omniglot)",
    )
    p.add_argument(
        "--model",
        choices=("mlp", "conv4"),
        default=None,
        help="Omniglot network: the MAML paper's MLP or the conv4 net (slower); sinusoid "
        "tasks use the paper's 1-40-40-1 MLP",
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
        metavar="FOLDER",
        help="Omniglot folder (searched first; then $METALEARN_DATA, the user data folder "
        "$METALEARN_DATA_HOME or ~/.cache/metalearn/data, then ../shared/data beside a checkout)",
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


def _check_args(args):
    """The first thing wrong with the options (a sentence), or None: checked before any
    work, so a bad option costs nothing and shows no traceback."""
    if args.dataset == "omniglot":
        args.task, args.dataset = "omniglot", None
    if args.dataset is not None:
        if args.task != "sinusoid":
            return f"--dataset {args.dataset} replaces --task: give one of them"
        if args.model == "mlp":
            return f"--dataset {args.dataset} uses the conv4 network: --model mlp is Omniglot's"
        args.task, args.model = "images", "conv4"
    if args.model is None:
        args.model = "mlp"
    omniglot = args.task in ("omniglot", "images")
    if not omniglot and args.algorithm == "protonet":
        return "--algorithm protonet classifies: use it with --task omniglot"
    if not omniglot and args.model != "mlp":
        return f"--model {args.model} is an Omniglot network: sinusoid tasks use the MLP"
    if not omniglot and args.ways != 5:
        return "--ways is the number of Omniglot classes per task: use it with --task omniglot"
    for name, value, low in (
        ("--ways", args.ways, 2),
        ("--shots", args.shots, 1),
        ("--queries", args.queries, 1),
        ("--iterations", args.iterations, 0),
        ("--meta-batch-size", args.meta_batch_size, 1),
        ("--inner-steps", args.inner_steps, 0),
        ("--episodes", args.episodes, 1),
        ("--threads", args.threads, 1),
    ):
        if value is not None and value < low:
            return f"{name} must be >= {low}, got {value}"
    if args.inner_lr is not None and not (args.inner_lr >= 0 and args.inner_lr < float("inf")):
        return f"--inner-lr must be a finite number >= 0, got {args.inner_lr}"
    if args.algorithm == "protonet" and (args.inner_lr is not None or args.inner_steps is not None):
        return "protonet has no inner loop: --inner-lr and --inner-steps do not apply"
    if args.task == "omniglot":
        k = args.shots or 1
        q = args.queries or (5 if args.algorithm == "protonet" else 15)
        if k + q > OMNIGLOT_DRAWINGS:
            return (
                f"--shots {k} + --queries {q} = {k + q}, but Omniglot has "
                f"{OMNIGLOT_DRAWINGS} drawings per character: shots + queries must be <= "
                f"{OMNIGLOT_DRAWINGS}"
            )
    return None


def _one_line(exc):
    """An exception's message as one line (the data-not-found message lists folders)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines)


def _set_threads(n):
    if n is None:
        return
    for var in ("OMP_NUM_THREADS", "METALEARN_NUM_THREADS"):
        os.environ[var] = str(n)
    import metalearn as ml

    setter = getattr(ml, "set_num_threads", None) or getattr(ml._core, "set_num_threads", None)
    if setter is not None:
        setter(n)


def _settings(args):
    """(iterations, meta-batch size, inner_lr, inner_steps, evaluated step counts): the
    algorithm's demo settings with the options given on top."""
    its, batch, lr, steps, evaluated = SETTINGS[args.task][args.algorithm]
    its = args.iterations if args.iterations is not None else its
    batch = args.meta_batch_size or batch
    lr = args.inner_lr if args.inner_lr is not None else lr
    if args.inner_steps is not None:
        steps = args.inner_steps
        # 0 and 1 steps, the count trained for, and the extrapolation MAML is known for
        extra = max(evaluated) if args.algorithm in ("maml", "fomaml") else 0
        evaluated = tuple(sorted({0, 1, steps, max(extra, steps)}))
    return its, batch, lr, steps, list(evaluated)


def _learner(args, model, inner_lr, inner_steps):
    from metalearn import meta

    a = args.algorithm
    if a == "protonet":
        return meta.ProtoNet(model)
    kw = {"inner_lr": inner_lr, "inner_steps": inner_steps}
    if a == "reptile":
        return meta.Reptile(model, **kw)
    cls = {"maml": meta.MAML, "fomaml": meta.MAML, "metasgd": meta.MetaSGD, "anil": meta.ANIL}[a]
    if a == "fomaml":
        kw["first_order"] = True
    return cls(model, **kw)


def _fmt(res, metric):
    pct = metric == "accuracy"
    v, ci = res[metric], res["ci95"]
    return f"{100 * v:6.2f} ± {100 * ci:.2f} %" if pct else f"{v:7.3f} ± {ci:.3f}"


def main(argv=None):
    """Runs the demo; returns the exit status (0, or 1 when the data is missing). A usage
    error exits with status 2 and one line on stderr. ``train``, ``evaluate`` and
    ``recognise`` as the first argument run those commands (``metalearn._cli``)."""
    first = (sys.argv[1:] if argv is None else list(argv))[:1]
    if first and first[0] in ("train", "evaluate", "recognise", "recognize"):
        from metalearn import _cli

        return _cli.main(sys.argv[1:] if argv is None else list(argv))
    parser = _parser()
    args = parser.parse_args(argv)
    problem = _check_args(args)
    if problem:
        parser.error(problem)
    if args.data is not None and not Path(args.data).expanduser().is_dir():
        print(f"{PROG}: error: --data {args.data}: no such folder", file=sys.stderr)
        return 1
    _set_threads(args.threads)
    return _run(args)


def _run(args):
    import metalearn as ml
    from metalearn import keras, tasks
    from metalearn.meta import models

    ml.random.set_seed(args.seed)
    t_start = time.perf_counter()
    iterations, batch, inner_lr, inner_steps, steps = _settings(args)
    if args.task == "sinusoid":
        k = args.shots or 10
        q = args.queries or 10
        train = tasks.Sinusoid(k_shot=k, q_queries=q, seed=args.seed)
        held_out = tasks.Sinusoid(k_shot=k, q_queries=100, seed=args.seed + 10_000)
        test = held_out.sample_batch(args.episodes or 200)
        make_model = models.sinusoid_mlp
        title = f"{args.algorithm.upper()} on sinusoid regression, K={k}"
    elif args.task == "images":
        import numpy as np

        from metalearn import datasets

        reader, train_split, test_split, shape = DATASETS[args.dataset]
        k = args.shots or 1
        q = args.queries or (5 if args.algorithm == "protonet" else 15)
        load = getattr(datasets, reader)
        try:
            tr, te = load(args.data, train_split), load(args.data, test_split)
        except FileNotFoundError as exc:
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        except ValueError as exc:  # a file that is not what its format says
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        ways = args.ways
        # ProtoNets train with more ways than they test (20 or 30 in the paper), as many
        # as the training split has
        n_train = len(np.unique(tr[1]))
        train_ways = max(ways, min(20, n_train)) if args.algorithm == "protonet" else ways
        try:
            # uint8 images stay as read (memory-mapped); episodes convert to float32
            train = tasks.NWayKShot(
                tr[:2], train_ways, k, q, augment_rotations=False, seed=args.seed
            )
            test = tasks.NWayKShot(
                te[:2], ways, k, q, augment_rotations=False, seed=args.seed + 10_000
            )
        except ValueError as exc:
            print(f"{PROG}: error: {exc} (see --help)", file=sys.stderr)
            return 2
        if args.algorithm == "protonet":
            make_model = lambda: models.conv4(filters=64, input_shape=shape)  # noqa: E731
        else:
            make_model = lambda: models.conv4(ways, filters=32, input_shape=shape)  # noqa: E731
        title = f"{args.algorithm.upper()} on {args.dataset} {ways}-way {k}-shot (conv4)"
    else:
        from metalearn.datasets import omniglot

        k = args.shots or 1
        q = args.queries or (5 if args.algorithm == "protonet" else 15)
        try:
            x_tr, y_tr = omniglot(path=args.data, split="vinyals_trainval")
            x_te, y_te = omniglot(path=args.data, split="vinyals_test")
        except FileNotFoundError as exc:  # the loader's not-found error: self-contained
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        ways = args.ways
        train_ways = max(ways, 20) if args.algorithm == "protonet" else ways  # ProtoNets: more ways
        try:
            train = tasks.NWayKShot((x_tr, y_tr), train_ways, k, q, seed=args.seed)
            test = tasks.NWayKShot((x_te, y_te), ways, k, q, seed=args.seed + 10_000)
        except ValueError as exc:  # --ways beyond the classes of a split
            print(f"{PROG}: error: {exc} (see --help)", file=sys.stderr)
            return 2
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
        title = f"{args.algorithm.upper()} on Omniglot {ways}-way {k}-shot ({args.model})"

    model = make_model()
    learner = _learner(args, model, inner_lr, inner_steps)
    episodes = args.episodes or (None if args.task == "sinusoid" else 100)
    from metalearn import distributed

    # under an MPI launcher (even with one process, so that P = 1 gives the bits of P = 2)
    # the strategy splits each meta-batch and the evaluations between the ranks
    launched = distributed._wants_mpi()
    scope = distributed.DataParallel().scope() if launched else contextlib.nullcontext()
    quiet = launched and not distributed.is_root()
    with scope, contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return _train_and_report(
            args,
            learner,
            model,
            train,
            test,
            dict(episodes=episodes, iterations=iterations, batch=batch, steps=steps),
            title,
            (inner_lr, inner_steps),
            t_start,
            quiet,
        )


def _train_and_report(args, learner, model, train, test, budget, title, inner, t_start, quiet):
    """Meta-trains, evaluates before and after, prints the table (and saves with
    --output); `budget`: episodes, iterations, meta-batch size and the step counts."""
    episodes, iterations = budget["episodes"], budget["iterations"]
    batch, steps = budget["batch"], budget["steps"]
    inner_lr, inner_steps = inner
    print(f"metalearn demo: {title}")
    print(f"  {model.count_params()} weights, {iterations} meta-iterations of {batch} task(s)")
    if inner_lr is not None:
        print(f"  inner loop: {inner_steps} step(s) of size {inner_lr:g} while meta-training")
    before = learner.evaluate(test, episodes=episodes, steps=steps)
    history = learner.fit(
        train, iterations=iterations, meta_batch_size=batch, verbose=0 if quiet else args.verbose
    )
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
    if args.output and not quiet:
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
        for s in steps:
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
