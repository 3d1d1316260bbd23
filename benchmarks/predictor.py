"""The performance predictor of metalearn.meta.system.MetaLearner, measured on Omniglot:
how well it ranks held-out tasks by the accuracy adaptation reaches on them, what each
group of its features adds, and what ``adapt(steps="auto")`` saves.

Protocol (as benchmarks/memory_results.py's experiment c, which it extends): MAML (1 inner
step, inner lr 0.4) on AdaptiveNeuralNetwork(5, 128) meta-trained on 5-way 1-shot tasks
of varied difficulty (classes from one alphabet or from several, 0-50 % of the pixels
replaced by noise) from the 1200 Vinyals training characters, 2000 iterations x 16 tasks,
the predictor trained alongside (and 2000 more steps on its buffer of the last 2048
tasks); the memory stores every training task. Then 400 held-out tasks of the same kind
from the 423 test characters (15 queries per class): Spearman's rank correlation between
the predicted accuracy and the accuracy reached after 1 step (the predictor sees only the
support set; no held-out task is seen before its prediction).

Ceiling: part of a task's accuracy is the luck of its 15 queries a class, which no
predictor blind to them can see. ``reliability`` splits the accuracies' variance into the
tasks' own and the draw's (the within-class variance of the 0/1 correctness, checked by
split halves); the square root of the tasks' share bounds the correlation of any such
predictor (printed, and a card row).

Ablation: fresh predictors of the same shape, trained the same number of steps on the
same buffer, each with one feature group zeroed (and one with the older features only:
Gram matrix and task statistics), ranked on the same held-out tasks.

Recipe: the predictor reads the raw features and learns the accuracies standardised by
its buffer's mean and spread (MetaLearner's default); --raw leaves the accuracies raw.
--query-features adds the held-out tasks' unlabelled query inputs (transductive);
--variants (with it) trains predictors of each recipe alongside the system's own, from the
support set only and with the query features, in the same fit, and reports each one's
Spearman and steps="auto" (its choice applied to the measured 1..5-step accuracies).

steps="auto": on the same held-out tasks and on plain 5-way 1-shot test episodes (no
noise), the query accuracy after 1..5 fixed inner steps and with ``steps="auto"`` (the
fewest steps whose predicted accuracy is within ``auto_epsilon`` of the best predicted),
with 95 % intervals and the mean number of steps taken.

    python benchmarks/predictor.py --seed 0         # full settings (minutes on 2 cores)
    python benchmarks/predictor.py --quick          # seconds
    python benchmarks/predictor.py --seed 0 --raw --threads 1 --cards docs/cards

--cards DIR writes the run's result card, predictor-omniglot-5w1s-seed{N}[-query][-raw]
(in evaluate's card format, through reproduce.write_row_card): the Spearman correlation
with its 95 % interval, the achieved accuracy, and one Spearman row per ablation and
variant.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # memory_results, reproduce

import metalearn  # noqa: E402
from metalearn.datasets import omniglot  # noqa: E402
from metalearn.keras import optimizers  # noqa: E402
from metalearn.meta.system import MetaLearner, spearman  # noqa: E402
from metalearn.networks import MetaLearningNetwork  # noqa: E402
from metalearn.report import correlation, result  # noqa: E402
from metalearn.tasks import NWayKShot  # noqa: E402

from memory_results import VariedTasks, maml_system, pct  # noqa: E402
from reproduce import set_threads, write_row_card  # noqa: E402


ABLATIONS = (
    ("all features", ()),
    (
        "older features only (gram + statistics)",
        ("support", "first_step", "recall", "separation", "pseudo_query", "query"),
    ),
    ("without support", ("support",)),
    ("without first_step", ("first_step",)),
    ("without recall", ("recall",)),
    ("without separation", ("separation",)),
    ("without pseudo_query", ("pseudo_query",)),
    ("without gram", ("gram",)),
    ("without statistics", ("statistics",)),
    ("without query", ("query",)),
    (
        "query features only (+ gram + statistics)",
        ("support", "first_step", "recall", "separation", "pseudo_query"),
    ),
)


def held_out(system, tasks):
    """Per task: features (no step count), labels, accuracy after 1..K steps."""
    f, l, c = [], [], []
    for t in tasks:
        sx, sy = system._check_support(t.support_x, t.support_y)
        feats, labels, curve, _ = system._task_record(sx, sy, t.query_x, t.query_y)
        f.append(feats)
        l.append(labels)
        c.append(curve[: system.auto_max_steps])
    return np.stack(f), np.stack(l), np.stack(c)


def query_correct(system, tasks, steps=1):
    """Whether each query of each task is classified right after `steps` inner steps (no
    warm start), as ``evaluate_task`` counts it: float array (tasks, n_way, queries per
    class), the queries grouped by class. Every class of every task needs the same
    number of queries."""
    out = []
    for t in tasks:
        y = np.asarray(t.query_y).reshape(-1)
        z = np.asarray(system._query_outputs(t, steps=steps, warm_start=False))
        counts = np.bincount(y)
        if len(set(counts.tolist())) != 1:
            raise ValueError(f"query_correct: a task's classes hold {counts.tolist()} queries")
        order = np.argsort(y, kind="stable")
        out.append((z.argmax(-1) == y)[order].reshape(len(counts), -1))
    return np.asarray(out, np.float64)


def reliability(correct, splits=200, boot=2000, seed=0):
    """How much of the spread of the tasks' query accuracies belongs to the tasks, and how
    much to which queries were drawn; hence the best correlation any predictor that does
    not see the query set can reach.

    A task's accuracy is acc = T + e: T its expected accuracy over query sets drawn from
    its classes (given its support set and the learner), e the draw's error, with
    E[e | support, classes] = 0 when a class's drawings are exchangeable (Omniglot's 20
    drawers). For a predictor f of the support set (or of anything but the queries),
    corr(f, acc) = cov(f, T) / (sd f sd acc) <= sd T / sd acc = sqrt(r), with the
    reliability r = 1 - E[Var(e | task)] / Var(acc). Var(e | task) is the stratified-
    sampling variance of a mean of q draws from each of C classes, sum_c s_c^2 / (q C^2),
    s_c^2 the class's unbiased variance of the 0/1 correctness (Cochran, Sampling
    Techniques, 5.5). The bound is Pearson's; Spearman's is close to it at these sizes.

    `correct`: (tasks, C, q) from ``query_correct``. Returns a dict: ``reliability``,
    ``ceiling`` = sqrt(max(r, 0)) and its 95 % ``interval`` over `boot` bootstrap
    resamples of the tasks, and ``split_half``: r from a second estimator, the correlation
    of the accuracies on two random halves of each class's queries, averaged over `splits`
    splits and stepped up to the whole set by Spearman-Brown (2 r / (1 + r))."""
    z = np.asarray(correct, np.float64)
    if z.ndim != 3 or z.shape[0] < 3 or z.shape[2] < 2:
        raise ValueError(f"reliability: need (tasks >= 3, classes, queries >= 2), got {z.shape}")
    n, c, q = z.shape
    acc = z.mean((1, 2))
    var_e = z.var(2, ddof=1).sum(1) / (q * c * c)
    rng = np.random.default_rng(seed)

    def r_of(i):
        v = acc[i].var(ddof=1)
        return 1.0 - var_e[i].mean() / v if v > 0 else float("nan")

    r = r_of(np.arange(n))
    draws = np.asarray([r_of(rng.integers(0, n, n)) for _ in range(boot)])
    lo, hi = np.sqrt(np.clip(np.nanpercentile(draws, [2.5, 97.5]), 0.0, None))
    halves = []
    for _ in range(splits):
        zp = np.take_along_axis(z, np.argsort(rng.random(z.shape), 2), 2)
        a, b = zp[:, :, : q // 2].mean((1, 2)), zp[:, :, q // 2 :].mean((1, 2))
        halves.append(np.corrcoef(a, b)[0, 1])
    rh = float(np.mean(halves))
    return {
        "reliability": float(r),
        "ceiling": float(np.sqrt(max(r, 0.0))),
        "interval": [float(lo), float(hi)],
        "split_half": 2 * rh / (1 + rh),
        "tasks": n,
    }


def predicted_curves(system, f, l):
    k = system.auto_max_steps
    out = []
    for s in range(1, k + 1):
        x = np.concatenate([f, np.full((len(f), 1), s, np.float32)], 1)
        out.append(system._predict_raw(x, l))
    return np.clip(np.stack(out, 1), 0.0, 1.0)


def mask_for(system, groups):
    m = np.ones(system.feature_size, np.float32)
    for g in groups:
        a, b = system.feature_groups[g]
        m[a:b] = 0.0
    return m


class Alongside:
    """Extra predictors trained alongside the system's own, in the same ``fit``: each
    takes the same batches (features, labels, accuracy curves) with its own network, Adam,
    augmentation generator, standardisation and feature mask. The system's own predictor
    and everything else keep their bits (the extras' steps run with the core's generator
    put back after them), so one learner compares several predictor recipes."""

    RECIPES = {"raw": False, "targets": "targets", "both": True}

    def __init__(self, system, specs):
        self.system = system
        self.states = [
            {
                "name": name,
                "standardize": self.RECIPES[recipe],
                "groups": groups,
                "predictor": MetaLearningNetwork(128),
                "optimizer": optimizers.Adam(system.predictor_lr),
                "rng": np.random.default_rng(2000 + k),
                "mask": None,
            }
            for k, (name, recipe, groups) in enumerate(specs)
        ]
        own = system._predictor_step

        def step(features, labels, target):
            out = own(features, labels, target)
            for st in self.states:
                with self.use(st):
                    own(features, labels, target)
            return out

        system._predictor_step = step

    class use:
        def __init__(self, st):
            self.st = st

        def __enter__(self):
            s, st = _ALONG.system, self.st
            self.saved = (
                s.predictor,
                s.predictor_optimizer,
                s._rng,
                s._feature_mask,
                s.__dict__.get("_STANDARDIZE"),
                metalearn.random.get_state(),
            )
            if st["mask"] is None:
                st["mask"] = mask_for(s, st["groups"])
            s.predictor, s.predictor_optimizer, s._rng = st["predictor"], st["optimizer"], st["rng"]
            s._feature_mask, s._STANDARDIZE = st["mask"], st["standardize"]
            s._fit_standardization()

        def __exit__(self, *exc):
            s = _ALONG.system
            pred, opt, rng, mask, std, core = self.saved
            s.predictor, s.predictor_optimizer, s._rng, s._feature_mask = pred, opt, rng, mask
            if std is None:
                del s._STANDARDIZE
            else:
                s._STANDARDIZE = std
            s._fit_standardization()
            metalearn.random.set_state(core)


_ALONG = None


def auto_rows(pred, a, eps=0.01):
    """steps="auto" from predicted curves `pred` and measured curves `a` (tasks x K):
    accuracy and steps taken, against the best fixed step count."""
    steps = np.asarray([int(np.flatnonzero(p >= p.max() - eps)[0]) + 1 for p in pred])
    got = a[np.arange(len(a)), steps - 1]
    best = int(np.argmax(a.mean(0)))
    return got, steps, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--iterations", type=int, help="meta-training iterations (default 2000)")
    ap.add_argument("--save", help="save the trained system into this folder and stop")
    ap.add_argument(
        "--query-features",
        action="store_true",
        help="the predictor also sees the held-out task's unlabelled query inputs "
        "(MetaLearner(query_features=True), transductive)",
    )
    ap.add_argument(
        "--raw",
        action="store_true",
        help="train the predictor on raw features and accuracies (the default standardises "
        "the accuracies by the buffer's mean and spread)",
    )
    ap.add_argument(
        "--variants",
        nargs="?",
        const="raw,targets,both",
        help="with --query-features: also train, alongside the system's own predictor, "
        "predictors with these standardisations (a comma list of raw, targets, both; "
        "default all three), each from the support set only and with the query features, "
        "and report their Spearman and steps='auto'",
    )
    ap.add_argument("--threads", type=int, default=None, help="the core's thread count")
    ap.add_argument("--cards", default=None, help="a folder for result cards (metalearn.report)")
    args = ap.parse_args(argv)
    set_threads(args)
    if args.raw:
        MetaLearner._STANDARDIZE = False
    iters, batch, psteps, episodes, plain = (
        (20, 4, 20, 20, 20) if args.quick else (2000, 16, 2000, 400, 300)
    )
    if args.iterations is not None:
        iters = args.iterations
    seed = args.seed
    metalearn.random.set_seed(seed)
    t0 = time.perf_counter()
    x, y, names = omniglot(split="vinyals_trainval", return_names=True)
    xte, yte, nte = omniglot(split="vinyals_test", return_names=True)
    train = VariedTasks(x, y, names, q_queries=5, seed=1 + 10 * seed)
    system = maml_system(1000, seed=seed, query_features=args.query_features)
    global _ALONG
    if args.variants:
        specs = [
            (
                f"{'support only' if so else 'with query'}, {recipe}",
                recipe,
                ("query",) if so else (),
            )
            for so in (True, False)
            for recipe in args.variants.split(",")
        ]
        _ALONG = Alongside(system, specs)
    system.fit(train, iterations=iters, meta_batch_size=batch, verbose=0, remember=True)
    system.train_predictor(psteps)
    if _ALONG is not None:
        for st in _ALONG.states:
            with Alongside.use(st):
                system.train_predictor(psteps)
    fit_time = time.perf_counter() - t0
    if args.save:
        system.save(args.save)
        np.savez(
            os.path.join(args.save, "buffer.npz"),
            x=np.stack(system._buffer_x),
            l=np.stack(system._buffer_l),
            c=np.stack(system._buffer_c),
        )
        print(f"saved into {args.save} after {fit_time:.0f} s")
        return None
    print(
        f"seed {seed}: MAML + predictor, {iters} iterations x {batch} varied tasks "
        f"(+{psteps} predictor steps on the last {len(system._buffer_t)} tasks) in "
        f"{fit_time:.0f} s; features {system.feature_size} "
        f"({', '.join(f'{g} {b - a}' for g, (a, b) in system.feature_groups.items())})"
    )

    test = VariedTasks(xte, yte, nte, q_queries=15, seed=5 + 10 * seed)
    tasks = [test.sample() for _ in range(episodes)]
    t1 = time.perf_counter()
    f, l, acc = held_out(system, tasks)
    pred = predicted_curves(system, f, l)
    # the protocol's achieved accuracy: evaluate_task (1 step, no warm start)
    achieved = np.asarray([system.evaluate_task(t, warm_start=False) for t in tasks[:50]])
    assert np.allclose(achieved, acc[:50, 0]), "curve accuracies differ from evaluate_task"
    rho = spearman(pred[:, 0], acc[:, 0])
    mae = float(np.mean(np.abs(pred[:, 0] - acc[:, 0])))
    print(
        f"  held-out varied tasks: Spearman {rho:.3f} of predicted vs achieved accuracy after "
        f"1 step over {episodes} tasks (achieved {pct(acc[:, 0])}, mean |error| {mae:.3f})  "
        f"[{time.perf_counter() - t1:.0f} s]"
    )
    rows = [
        correlation(rho, episodes, steps=1, label="predicted vs achieved"),
        result(acc[:, 0], "accuracy", steps=1, label="achieved"),
    ]
    # how far a predictor blind to the query set could go: the share of the accuracies'
    # spread that is the tasks' own rather than the draw of their queries
    correct = query_correct(system, tasks)
    assert np.allclose(correct.mean((1, 2)), acc[:, 0]), "query_correct differs from the curve"
    rel = reliability(correct, seed=seed)
    pearson = float(np.corrcoef(pred[:, 0], acc[:, 0])[0, 1])
    print(
        f"  reliability of the achieved accuracy {rel['reliability']:.3f} (split halves "
        f"{rel['split_half']:.3f}): ceiling of a predictor blind to the query set "
        f"{rel['ceiling']:.3f} [{rel['interval'][0]:.3f}, {rel['interval'][1]:.3f}] "
        f"(Pearson; this predictor's Pearson {pearson:.3f})"
    )
    if np.isfinite(rel["ceiling"]) and np.isfinite(pearson):  # NaN when all tasks score alike
        ceiling = correlation(rel["ceiling"], episodes, "pearson", steps=1, label="ceiling")
        ceiling["interval"] = rel["interval"]  # the bootstrap's, not Fisher's
        ceiling["reliability"], ceiling["split_half"] = rel["reliability"], rel["split_half"]
        rows += [ceiling, correlation(pearson, episodes, "pearson", steps=1, label="predicted")]

    if _ALONG is not None:
        plain_ts = NWayKShot(
            (xte, yte), n_way=5, k_shot=1, q_queries=15, augment_rotations=False, seed=7 + seed
        )
        pf, pl, pa = held_out(system, [plain_ts.sample() for _ in range(plain)])
        for st in _ALONG.states:
            with Alongside.use(st):
                p = predicted_curves(system, f, l)
                pp = predicted_curves(system, pf, pl)
            rho_v = spearman(p[:, 0], acc[:, 0])
            rows.append(correlation(rho_v, episodes, steps=1, label=f"variant {st['name']}"))
            line = f"  variant {st['name']:28s}: Spearman {rho_v:.3f}"
            for tag, pc, a in (("held-out", p, acc), ("plain", pp, pa)):
                got, steps, best = auto_rows(pc, a)
                line += (
                    f"; auto {tag} {pct(got)} with {steps.mean():.2f} steps (best fixed "
                    f"{best + 1}: {pct(a[:, best])}, paired {pct(got - a[:, best])})"
                )
            print(line, flush=True)

    if not args.no_ablation:
        saved = (system.predictor, system.predictor_optimizer, system._rng)
        for name, groups in ABLATIONS:
            if "query" in name and not system.query_features:
                continue  # the rows about the query group
            groups = tuple(g for g in groups if g in system.feature_groups)
            system.predictor = MetaLearningNetwork(128)
            system.predictor_optimizer = optimizers.Adam(system.predictor_lr)
            system._rng = np.random.default_rng(1000 + seed)
            system._feature_mask = mask_for(system, groups)
            system.train_predictor(psteps)
            p = predicted_curves(system, f, l)
            rho_a = spearman(p[:, 0], acc[:, 0])
            rows.append(correlation(rho_a, episodes, steps=1, label=f"ablation: {name}"))
            print(f"  ablation, {name:48s}: Spearman {rho_a:.3f}")
        system.predictor, system.predictor_optimizer, system._rng = saved
        system._feature_mask = None

    # steps="auto" against fixed step counts
    plain_test = NWayKShot(
        (xte, yte), n_way=5, k_shot=1, q_queries=15, augment_rotations=False, seed=7 + seed
    )
    sets = (
        ("held-out varied tasks", tasks, acc),
        ("plain 5-way 1-shot test episodes", None, None),
    )
    for name, ts, a in sets:
        if ts is None:
            ts = [plain_test.sample() for _ in range(plain)]
            _, _, a = held_out(system, ts)
        line = ", ".join(f"{s + 1} steps {pct(a[:, s])}" for s in range(a.shape[1]))
        best = int(np.argmax(a.mean(0)))
        print(f"  {name}: fixed {line}")
        rows.append(result(a[:, best], "accuracy", steps=best + 1, label=f"{name}: best fixed"))
        for eps in (0.0, 0.005, 0.01, 0.02):
            system.auto_epsilon = eps
            got, steps = [], []
            for t in ts:
                got.append(system.evaluate_task(t, steps="auto", warm_start=False))
                steps.append(system.last_steps)
            d = np.asarray(got) - a[:, best]
            print(
                f"    auto (epsilon {eps}): {pct(got)} with {np.mean(steps):.2f} steps on "
                f"average (best fixed: {best + 1} steps {pct(a[:, best])}; paired "
                f"difference {pct(d)}); steps taken {np.bincount(steps, minlength=6)[1:].tolist()}"
            )
            # the card keeps the default epsilon's row (the others are printed): the
            # accuracy, its paired difference to the best fixed count, the mean step count
            if eps == 0.01:
                label = f"{name}: steps='auto', {np.mean(steps):.2f} steps on average"
                rows.append(result(got, "accuracy", label=label))
                rows.append(
                    result(d, "accuracy_gain", label=f"{label}, paired difference to best fixed")
                )
        system.auto_epsilon = 0.01
    print(f"  wall time {time.perf_counter() - t0:.0f} s")
    write_row_card(
        args.cards,
        f"predictor-omniglot-5w1s-seed{seed}"
        + ("-query" if args.query_features else "")
        + ("-raw" if args.raw else ""),
        system,
        test,
        rows,
        time.perf_counter() - t0,
        algorithm="MetaLearner (MAML) performance predictor",
        setting={
            "row": "performance predictor (MetaLearningNetwork)"
            + (", query features (transductive)" if args.query_features else ""),
            "task": "5-way 1-shot, varied",
            "iterations": iters,
            "meta_batch": batch,
            "predictor_steps": psteps,
            "raw": bool(args.raw),
            "query_features": bool(args.query_features),
            "mean_abs_error": mae,
        },
    )
    return rho


if __name__ == "__main__":
    main()
