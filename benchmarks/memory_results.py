"""What the knowledge memory and the whole system (metalearn.meta.system.MetaLearner) do on
Omniglot, measured. Three experiments, each printed with its wall time:

a. One-shot classification by memory lookup, no gradient step at test time (Kaiser et al.
   2017, "Learning to Remember Rare Events", §4.2: 98.4 % 5-way and 95.0 % 20-way 1-shot
   with a conv encoder). A conv4 encoder is trained with ProtoNet episodes (20-way 1-shot)
   on the 1200 Vinyals training characters within a CPU time budget; each held-out episode
   (Vinyals test split, 423 characters, with their rotations as in Vinyals et al.) clears
   a KnowledgeMemory, writes the support embeddings into it with the update rule, and
   answers every query with the label of its nearest key.
b. Warm start from the memory on recurring tasks: the system (AdaptiveNeuralNetwork +
   MAML) is meta-trained on tasks drawn from a fixed pool of 5-class sets (each recurs
   many times, with its labels renumbered every time) and ordinary random tasks, using
   drawings 0-14 of each character. Recurring test tasks take the pool's classes with the
   held-out drawings 15-19; accuracy after 1 adaptation step, with the memory's warm start
   and without it, same model, same tasks. Novel tasks (test characters) measure what the
   warm start costs where nothing fits (-0.7 +- 0.4 points in the card's run: a little).
c. The performance predictor: MetaLearningNetwork's predicted accuracy against the accuracy
   reached after adaptation on held-out tasks whose difficulty varies (classes from one
   alphabet or from several, and 0-50 % of the pixels replaced by noise); Spearman's rank
   correlation (target >= 0.5). The predictor's input: the support set's Gram matrix and
   labels, the task statistics of MetaLearner.task_statistics (the learner's support
   loss before and after adaptation, prototype separation) and the support-input,
   first-step, memory-recall and separation features (MetaLearner.feature_groups); no
   query set, no test task, is seen before the predictions are made. Here the memory is
   not filled (remember=False), so the recall features are 0: benchmarks/predictor.py
   measures the predictor with them, its ablation, seeds and adapt(steps="auto").

    python benchmarks/memory_results.py            # full settings (about 9 min on 2 cores)
    python benchmarks/memory_results.py --quick    # seconds, for CI
    python benchmarks/memory_results.py --only a   # one experiment
    python benchmarks/memory_results.py --only a --threads 1 --cards docs/cards
                                                   # and a result card per row

--cards DIR writes a result card per row (in evaluate's card format, through
reproduce.write_row_card; python -m metalearn.report DIR/*.json prints them):
memory_lookup-omniglot-{5,20}w1s (a), warm_start-omniglot-5w1s (b; the recurring tasks'
accuracy after 1 step with and without the warm start, their paired difference, and the
novel tasks' rows), memory_predictor-omniglot-5w1s (c: the Spearman correlation with its
95 % interval, and the achieved accuracy). With the conv encoder of a, b's and c's cards
are named *_conv-omniglot-5w1s.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reproduce.py

import metalearn  # noqa: E402
from metalearn import _core  # noqa: E402
from metalearn.datasets import omniglot  # noqa: E402
from metalearn.memory import KnowledgeMemory  # noqa: E402
from metalearn.meta import ProtoNet, models  # noqa: E402
from metalearn.meta.system import MetaLearner, spearman  # noqa: E402
from metalearn.tasks import NWayKShot  # noqa: E402
from metalearn.report import correlation, result  # noqa: E402
from metalearn.tasks.base import Task  # noqa: E402
from metalearn.tasks.episodes import dataset_checksum  # noqa: E402

from reproduce import set_threads, write_row_card  # noqa: E402

#: the MAML configuration of the system in b and c (and benchmarks/predictor.py): 5-way
#: AdaptiveNeuralNetwork, 1 inner step of lr 0.4
SYSTEM = dict(n_way=5, algorithm="maml", inner_steps=1, inner_lr=0.4)


def maml_system(memory_capacity=1000, encoder=None, seed=0, **kwargs):
    """The MetaLearner of experiments b and c (and predictor.py): SYSTEM's configuration,
    a memory of `memory_capacity` tasks, keys from `encoder` (None: the learner's body)."""
    return MetaLearner(
        **SYSTEM, memory_capacity=memory_capacity, encoder=encoder, seed=seed, **kwargs
    )


def mean_ci(v):
    """Mean and 95 % interval as evaluate and the result cards compute them."""
    r = result(v, "accuracy")
    return r["mean"], r["ci95"]


def pct(v):
    m, ci = mean_ci(v)
    return f"{100 * m:.1f} ± {100 * ci:.1f} %"


class _no_grad:
    def __enter__(self):
        self.prev = _core.set_grad_enabled(False)

    def __exit__(self, *a):
        _core.set_grad_enabled(self.prev)


# ------------------------------------------------------------------ a. memory one-shot


def memory_one_shot(args):
    t0 = time.perf_counter()
    xtr, ytr = omniglot(split="vinyals_trainval")
    xte, yte = omniglot(split="vinyals_test")
    if not models.has_conv():
        print("a. skipped: this build has no conv ops")
        return None
    enc = models.conv4(filters=args.filters)
    proto = ProtoNet(enc, meta_lr=1e-3)
    train = NWayKShot(
        (xtr, ytr), n_way=args.train_way, k_shot=1, q_queries=args.train_queries, seed=1
    )
    episodes, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.train_seconds and episodes < args.max_episodes:
        proto.fit(train, iterations=10, meta_batch_size=1, verbose=0)
        episodes += 10
    train_time = time.perf_counter() - start
    print(
        f"a. conv4({args.filters}) encoder: {episodes} ProtoNet episodes "
        f"({args.train_way}-way 1-shot, {args.train_queries} queries/class) in {train_time:.0f} s; "
        f"last train accuracy {np.mean(proto.history['accuracy']):.3f}"
    )
    results = {}
    for n_way, paper in ((5, 98.4), (20, 95.0)):
        t1 = time.perf_counter()
        test = NWayKShot(
            (xte, yte), n_way=n_way, k_shot=1, q_queries=args.test_queries, seed=100 + n_way
        )
        memory = KnowledgeMemory(
            256, int(np.prod(enc.output_shape[1:])) if getattr(enc, "output_shape", None) else 64
        )
        accs = []
        for _ in range(args.episodes):
            t = test.sample()
            memory.clear()
            with _no_grad():
                s = np.asarray(enc(t.support_x, training=False))
                q = np.asarray(enc(t.query_x, training=False))
            memory.update(s.reshape(len(s), -1), t.support_y)  # write the support set
            pred = memory.predict(q.reshape(len(q), -1))  # nearest key's label
            accs.append(float(np.mean(pred == t.query_y)))
        results[n_way] = accs
        write_row_card(
            args.cards,
            f"memory_lookup-omniglot-{n_way}w1s",
            proto,
            test,
            [result(accs, "accuracy", steps=0, label="nearest key")],
            time.perf_counter() - t1 + train_time,
            algorithm="KnowledgeMemory lookup (ProtoNet-trained encoder)",
            setting={
                "row": f"one-shot by memory lookup (Kaiser et al. 2017), {n_way}-way 1-shot",
                "task": f"{n_way}-way 1-shot",
                "queries": args.test_queries,
                "encoder_filters": args.filters,
                "train_seconds": round(train_time, 1),
                "train_episodes": episodes,
                "train_way": args.train_way,
                "train_queries": args.train_queries,
                "memory_capacity": 256,
                "paper": paper,
            },
        )
        print(
            f"   {n_way:2d}-way 1-shot by memory lookup: {pct(accs)} over {len(accs)} episodes "
            f"(paper {paper} %)  [{time.perf_counter() - t1:.1f} s]"
        )
    print(f"   wall time a: {time.perf_counter() - t0:.0f} s")
    return enc


# ------------------------------------------------------------------ b. warm start


def _describe(tasks, **more):
    """A task sampler's description for its result card: its class, N, K, queries, `more`."""
    fields = dict(n_way=tasks.n_way, k_shot=tasks.k, q_queries=tasks.q, **more)
    return f"{type(tasks).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"


class RecurringTasks:
    """N-way tasks from a fixed pool of class sets (each recurs, relabelled each time),
    mixed with fresh random class sets; drawings restricted to `drawings` per character."""

    def __init__(
        self, x, y, pool, n_way=5, k_shot=1, q_queries=5, drawings=slice(0, 15), p_recur=0.5, seed=0
    ):
        self.x, self.y, self.n_way, self.k, self.q = x, y, n_way, k_shot, q_queries
        self.drawings, self.seed = drawings, seed
        self.members = [np.flatnonzero(y == c)[drawings] for c in range(int(y.max()) + 1)]
        self.pool, self.p_recur = pool, p_recur
        self.rng = np.random.default_rng(seed)

    def __repr__(self):
        return _describe(self, pool=len(self.pool), drawings=self.drawings, p_recur=self.p_recur)

    def _classes(self):
        if self.rng.random() < self.p_recur:
            return self.pool[self.rng.integers(len(self.pool))], True
        return self.rng.choice(len(self.members), self.n_way, replace=False), False

    def sample(self, classes=None):
        recur = classes is not None
        if classes is None:
            classes, recur = self._classes()
        classes = np.asarray(classes)[self.rng.permutation(self.n_way)]  # renumber
        sx, qx = [], []
        for c in classes:
            m = self.members[c]
            idx = m[self.rng.choice(len(m), self.k + self.q, replace=False)]
            sx.append(self.x[idx[: self.k]])
            qx.append(self.x[idx[self.k :]])
        lab = np.arange(self.n_way)
        return Task(
            np.concatenate(sx),
            np.repeat(lab, self.k),
            np.concatenate(qx),
            np.repeat(lab, self.q),
            {"classes": classes, "recurring": recur},
        )

    def sample_batch(self, b):
        ts = [self.sample() for _ in range(b)]
        return Task(
            *(np.stack([t[i] for t in ts]) for i in range(4)),
            info={"batched": True, "classes": np.stack([t.info["classes"] for t in ts])},
        )


def warm_start(args, encoder=None):
    t0 = time.perf_counter()
    x, y = omniglot(split="vinyals_trainval")
    xte, yte = omniglot(split="vinyals_test")
    rng = np.random.default_rng(7)
    pool = [rng.choice(int(y.max()) + 1, 5, replace=False) for _ in range(args.pool)]
    train = RecurringTasks(x, y, pool, q_queries=5, drawings=slice(0, 15), seed=1)
    variants = [("learner's body", None)] + (
        [("conv encoder of a", encoder)] if encoder is not None else []
    )
    for vname, enc in variants:
        system = maml_system(args.iterations * args.meta_batch + 16, enc)
        train.rng = np.random.default_rng(1)
        start = time.perf_counter()
        system.fit(train, iterations=args.iterations, meta_batch_size=args.meta_batch, verbose=0)
        fit_time = time.perf_counter() - start
        print(
            f"b. keys from the {vname}: MAML (1 inner step, lr 0.4) on AdaptiveNeuralNetwork(5, 128), "
            f"{args.iterations} iterations x {args.meta_batch} tasks in {fit_time:.0f} s; memory "
            f"{system.memory.size} tasks; pool of {len(pool)} recurring 5-class sets"
        )
        # the warm-start threshold, set on training data only: midway between the median class
        # similarity of recalls for recurring training tasks and for fresh training tasks
        calib = RecurringTasks(x, y, pool, q_queries=1, drawings=slice(0, 15), seed=9)
        rec_sim = [
            system.recall(*calib.sample(pool[i % len(pool)])[:2])["class_similarity"]
            for i in range(50)
        ]
        calib.p_recur = 0.0
        new_sim = [system.recall(*calib.sample()[:2])["class_similarity"] for _ in range(50)]
        system.warm_start_threshold = float((np.median(rec_sim) + np.median(new_sim)) / 2)
        print(
            f"   class similarity of recalls on training tasks: recurring median "
            f"{np.median(rec_sim):.3f}, fresh median {np.median(new_sim):.3f} -> threshold "
            f"{system.warm_start_threshold:.3f}"
        )
        held = RecurringTasks(x, y, pool, q_queries=4, drawings=slice(15, 20), seed=2)
        novel = NWayKShot(
            (xte, yte), n_way=5, k_shot=1, q_queries=4, augment_rotations=False, seed=3
        )
        rows = []
        for name, sampler in (
            ("recurring", lambda: held.sample(pool[held.rng.integers(len(pool))])),
            ("novel", novel.sample),
        ):
            t1 = time.perf_counter()
            with_m, without, used, hit, zero = [], [], [], [], []
            for _ in range(args.episodes):
                t = sampler()
                with_m.append(system.evaluate_task(t, steps=1, warm_start=True))
                rec = system.last_recall
                used.append(bool(rec and rec["warm_start"]))
                if name == "recurring" and rec is not None:
                    stored = system.task_info.get(rec["task_id"], {}).get("classes")
                    hit.append(
                        stored is not None
                        and set(np.asarray(stored).tolist()) == set(t.info["classes"].tolist())
                    )
                without.append(system.evaluate_task(t, steps=1, warm_start=False))
                if name == "recurring" and len(zero) < 100:
                    zero.append(system.evaluate_task(t, steps=0, warm_start=True))
            diff = np.asarray(with_m) - np.asarray(without)
            rows += [
                result(with_m, "accuracy", steps=1, label=f"{name}, with warm start"),
                result(without, "accuracy", steps=1, label=f"{name}, without"),
                result(diff, "accuracy_gain", steps=1, label=f"{name}, paired difference"),
            ]
            print(
                f"   {name:9s} tasks, accuracy after 1 step: with memory warm start {pct(with_m)}, "
                f"without {pct(without)}; difference {pct(diff)}; warm start used on "
                f"{100 * np.mean(used):.0f} % of {len(with_m)} tasks  [{time.perf_counter() - t1:.1f} s]"
            )
            if hit:
                print(
                    f"   {'':9s} (recalled task has the same classes: {100 * np.mean(hit):.0f} %; "
                    f"recalled head alone, 0 steps: {pct(zero)})"
                )
        write_row_card(
            args.cards,
            "warm_start" + ("" if enc is None else "_conv") + "-omniglot-5w1s",
            system,
            held,
            rows,
            time.perf_counter() - start,
            algorithm="MetaLearner (MAML) with memory warm start",
            setting={
                "row": "warm start from the memory (MetaLearner), recurring 5-way tasks",
                "task": "5-way 1-shot",
                "keys": vname,
                "iterations": args.iterations,
                "meta_batch": args.meta_batch,
                "pool": len(pool),
                "warm_start_threshold": system.warm_start_threshold,
                "novel_tasks": {"dataset_sha256": dataset_checksum((xte, yte)), "seed": 3},
            },
        )
    print(f"   wall time b: {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------ c. predictor


class VariedTasks:
    """5-way 1-shot tasks of varied difficulty: classes from one alphabet (hard) or from
    distinct alphabets, and a random fraction in [0, max_noise] of the pixels replaced
    by uniform noise (the same fraction for the task's support and query)."""

    def __init__(self, x, y, names, n_way=5, k_shot=1, q_queries=15, max_noise=0.5, seed=0):
        self.x, self.n_way, self.k, self.q, self.max_noise = x, n_way, k_shot, q_queries, max_noise
        self.y, self.seed = y, seed
        alph = np.array([n.split("/")[0] for n in names])
        self.by_alphabet = [np.flatnonzero(alph == a) for a in np.unique(alph)]
        self.by_alphabet = [a for a in self.by_alphabet if len(a) >= n_way]
        self.members = [np.flatnonzero(y == c) for c in range(len(names))]
        self.n_classes = len(names)
        self.rng = np.random.default_rng(seed)

    def __repr__(self):
        return _describe(self, max_noise=self.max_noise)

    def sample(self):
        r = self.rng
        if r.random() < 0.5:
            a = self.by_alphabet[r.integers(len(self.by_alphabet))]
            classes = r.choice(a, self.n_way, replace=False)
        else:
            classes = r.choice(self.n_classes, self.n_way, replace=False)
        noise = r.uniform(0, self.max_noise)
        sx, qx = [], []
        for c in classes:
            idx = self.members[c][r.choice(len(self.members[c]), self.k + self.q, replace=False)]
            sx.append(self.x[idx[: self.k]])
            qx.append(self.x[idx[self.k :]])
        sx, qx = np.concatenate(sx), np.concatenate(qx)

        def corrupt(a):
            mask = r.random(a.shape) < noise
            return np.where(mask, r.random(a.shape).astype(np.float32), a).astype(np.float32)

        lab = np.arange(self.n_way)
        return Task(
            corrupt(sx),
            np.repeat(lab, self.k),
            corrupt(qx),
            np.repeat(lab, self.q),
            {"noise": noise},
        )

    def sample_batch(self, b):
        ts = [self.sample() for _ in range(b)]
        return Task(*(np.stack([t[i] for t in ts]) for i in range(4)), info={"batched": True})


def predictor(args, encoder=None):
    t0 = time.perf_counter()
    x, y, names = omniglot(split="vinyals_trainval", return_names=True)
    xte, yte, nte = omniglot(split="vinyals_test", return_names=True)
    variants = [("learner's body", None)] + (
        [("conv encoder of a", encoder)] if encoder is not None else []
    )
    rho = None
    for vname, enc in variants:
        train = VariedTasks(x, y, names, q_queries=5, seed=1)
        system = maml_system(1000, enc)
        start = time.perf_counter()
        system.fit(
            train,
            iterations=args.c_iterations,
            meta_batch_size=args.meta_batch,
            verbose=0,
            remember=False,
        )
        extra = system.train_predictor(args.predictor_steps)
        fit_time = time.perf_counter() - start
        h = system.history["predictor_loss"]
        k = max(1, len(h) // 10)
        print(
            f"c. predictor features (Gram matrix, labels, {len(system.STATISTICS)} task statistics) "
            f"from the {vname}: MAML + predictor on varied tasks, "
            f"{args.c_iterations} iterations x {args.meta_batch} tasks (+{args.predictor_steps} "
            f"predictor steps on the last {len(system._buffer_t)} tasks) in {fit_time:.0f} s; "
            f"predictor MSE {np.mean(h[:k]):.4f} (first 10 %) -> "
            f"{np.mean(extra[-k:]) if extra else np.mean(h[-k:]):.4f} (last)"
        )
        test = VariedTasks(xte, yte, nte, q_queries=15, seed=5)
        t1 = time.perf_counter()
        pred, achieved = [], []
        for _ in range(args.episodes):
            t = test.sample()
            pred.append(system.predict_performance(t.support_x, t.support_y))
            achieved.append(system.evaluate_task(t, warm_start=False))
        rho = spearman(pred, achieved)
        mae = float(np.mean(np.abs(np.asarray(pred) - np.asarray(achieved))))
        write_row_card(
            args.cards,
            "memory_predictor" + ("" if enc is None else "_conv") + "-omniglot-5w1s",
            system,
            test,
            [
                correlation(rho, len(pred), label="predicted vs achieved"),
                result(achieved, "accuracy", steps=1, label="achieved"),
            ],
            time.perf_counter() - start,
            algorithm="MetaLearner (MAML) performance predictor",
            setting={
                "row": "performance predictor (MetaLearningNetwork)",
                "task": "5-way 1-shot, varied",
                "iterations": args.c_iterations,
                "meta_batch": args.meta_batch,
                "predictor_steps": args.predictor_steps,
                "mean_abs_error": mae,
            },
        )
        print(
            f"   held-out tasks (test characters): Spearman {rho:.3f} between predicted and "
            f"achieved accuracy over {len(pred)} tasks (achieved {pct(achieved)}, range "
            f"{min(achieved):.2f}-{max(achieved):.2f}; mean |error| {mae:.3f})  "
            f"[{time.perf_counter() - t1:.1f} s]"
        )
    print(f"   wall time c: {time.perf_counter() - t0:.0f} s")
    return rho


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings (CI)")
    ap.add_argument("--only", choices=["a", "b", "c"], action="append")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-seconds",
        type=float,
        default=None,
        help="CPU budget for the conv encoder of a (default 240 s; quick 3 s)",
    )
    ap.add_argument(
        "--train-episodes",
        type=int,
        default=None,
        help="stop a's encoder training after this many episodes (rounded up to 10): a "
        "count that does not depend on the machine's load, as --train-seconds does",
    )
    ap.add_argument("--threads", type=int, default=None, help="the core's thread count")
    ap.add_argument("--cards", default=None, help="a folder for result cards (metalearn.report)")
    args = ap.parse_args(argv)
    if args.quick:
        cfg = dict(
            filters=16,
            train_way=5,
            train_queries=2,
            train_seconds=3,
            max_episodes=20,
            test_queries=1,
            episodes=20,
            pool=10,
            iterations=20,
            c_iterations=20,
            meta_batch=4,
            predictor_steps=20,
        )
    else:
        cfg = dict(
            filters=64,
            train_way=20,
            train_queries=5,
            train_seconds=240,
            max_episodes=10**6,
            test_queries=5,
            episodes=400,
            pool=100,
            iterations=600,
            c_iterations=2000,
            meta_batch=16,
            predictor_steps=2000,
        )
    if args.train_seconds is not None:
        cfg["train_seconds"] = args.train_seconds
    if args.train_episodes is not None:  # the count decides, not the clock
        cfg["max_episodes"] = args.train_episodes
        cfg["train_seconds"] = args.train_seconds or float("inf")
    for k, v in cfg.items():
        setattr(args, k, v)
    metalearn.random.set_seed(args.seed) if hasattr(metalearn, "random") and hasattr(
        metalearn.random, "set_seed"
    ) else None
    set_threads(args)
    only = args.only or ["a", "b", "c"]
    t0 = time.perf_counter()
    print(
        f"metalearn memory results ({'quick' if args.quick else 'full'} settings, "
        f"{os.cpu_count()} CPUs)"
    )
    encoder = None
    if "a" in only:
        encoder = memory_one_shot(args)
    if "b" in only:
        warm_start(args, encoder)
    if "c" in only:
        predictor(args, encoder)
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
