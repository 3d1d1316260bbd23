"""Reproduction runs of the meta-learning papers' results (issue 4), with wall times.

    python benchmarks/reproduce.py --quick            # CI: a few iterations of each run
    python benchmarks/reproduce.py                    # the papers' settings (hours on 2 cores)
    python benchmarks/reproduce.py --only maml_sinusoid protonet_conv4 --iterations 2000

Runs (the papers' numbers are printed beside ours):

  maml_sinusoid   MAML, 1-40-40-1 ReLU, K=10, inner lr 0.01, 1 step, meta-batch 25, Adam 1e-3,
                  70 000 iterations; MSE on 600 held-out tasks after 0, 1 and 10 steps
                  (Finn et al. 2017, Fig. 3 shows the curve; no table).
  maml_mlp        MAML, the paper's MLP (256-128-64-64 + BN), Omniglot 5-way 1- and 5-shot,
                  inner lr 0.4, 1 step (3 at test), meta-batch 32, 60 000 iterations:
                  paper 89.7 +- 1.1 % and 97.5 +- 0.6 %.
  protonet_conv4  ProtoNet, conv4, Omniglot, trained 60-way with 5 queries, K as at test,
                  Adam 1e-3 halved every 2000 episodes; tested 5/20-way, 1/5-shot on the
                  Vinyals test characters: paper 98.8, 99.7, 96.0, 98.9 %.
  maml_conv4      MAML, conv4, Omniglot 5-way 1-shot, inner lr 0.4, 1 step (3 at test),
                  meta-batch 32, within a wall-clock budget (default 1 hour), and the same
                  budget for a PyTorch peer (torch.func.functional_call): paper 98.7 +- 0.4 %.
                  --peer metalearn / --peer torch run one side only, e.g. both at once:
                    python benchmarks/reproduce.py --only maml_conv4 --threads 1 --peer metalearn &
                    python benchmarks/reproduce.py --only maml_conv4 --threads 1 --peer torch

Long runs go in chunks with exact resume (maml_mlp, protonet_conv4): with
--checkpoint-dir DIR and --chunk SECONDS a run stops after SECONDS with a checkpoint, and
the same command run again continues it, ending with the bits of an uninterrupted run;
--cards DIR writes a result card per row (python -m metalearn.report DIR/*.json).
Omniglot rows are tested on the shipped frozen 600-episode sets (tasks.episodes.standard).

Accuracies are means over test episodes with 95 % confidence intervals.
"""

import argparse
import os
import sys
import time

import numpy as np

PAPER = {
    ("maml_mlp", 5, 1): "89.7 +- 1.1",
    ("maml_mlp", 5, 5): "97.5 +- 0.6",
    ("protonet_conv4", 5, 1): "98.8",
    ("protonet_conv4", 5, 5): "99.7",
    ("protonet_conv4", 20, 1): "96.0",
    ("protonet_conv4", 20, 5): "98.9",
    ("maml_conv4", 5, 1): "98.7 +- 0.4",
}
RESULTS = []


def report(name, setting, ours, paper, seconds, note=""):
    RESULTS.append((name, setting, ours, paper, seconds, note))
    print(
        f"  -> {name} {setting}: {ours}   (paper: {paper})   [{seconds:.1f} s] {note}", flush=True
    )


def _card(args, name):
    """The result card's file for one row (``--cards``), or None."""
    if not args.cards:
        return None
    os.makedirs(args.cards, exist_ok=True)
    return os.path.join(args.cards, f"{name}.json")


def _checkpoint(args, name):
    """The exact-resume checkpoint folder of one training run (``--checkpoint-dir``)."""
    if not args.checkpoint_dir:
        return None
    return os.path.join(args.checkpoint_dir, f"{name}-seed{args.seed}")


def _chunk_ended(history, what, learner, iters, ckpt, t0):
    """True (and says so) when ``--chunk``'s time budget ended training before `iters`."""
    if not history.get("stopped"):
        return False
    print(
        f"  -> {what}: chunk ended after {time.perf_counter() - t0:.0f} s at iteration "
        f"{learner.iterations} of {iters} (checkpoint in {ckpt}); run the same command "
        f"again to continue",
        flush=True,
    )
    return True


def pct(res):
    return f"{100 * res['accuracy']:.1f} +- {100 * res['ci95']:.1f} %"


def _data():
    from metalearn.datasets import omniglot

    return omniglot(split="vinyals_trainval"), omniglot(split="vinyals_test")


# ------------------------------------------------------------------------- runs


def maml_sinusoid(args):
    import metalearn as ml
    from metalearn.meta import MAML, models
    from metalearn.tasks import Sinusoid

    iters = args.iterations or (20 if args.quick else 70000)
    ml.random.set_seed(args.seed)
    t0 = time.perf_counter()
    maml = MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1, meta_lr=0.001)
    maml.fit(
        Sinusoid(k_shot=10, q_queries=10, seed=args.seed),
        iterations=iters,
        meta_batch_size=25,
        verbose=args.verbose,
    )
    test = Sinusoid(k_shot=10, q_queries=100, seed=args.seed + 1).sample_batch(600)
    res = maml.evaluate(test, steps=[0, 1, 10], card=_card(args, "maml_sinusoid"))
    dt = time.perf_counter() - t0
    for s in (0, 1, 10):
        report(
            "maml_sinusoid",
            f"K=10, {iters} it, {s} steps",
            f"MSE {res[s]['mse']:.3f} +- {res[s]['ci95']:.3f}",
            "Fig. 3 curve",
            dt,
        )


def maml_mlp(args):
    import metalearn as ml
    from metalearn.meta import MAML, models
    from metalearn.tasks import NWayKShot
    from metalearn.tasks.episodes import standard

    (x, y), (xt, yt) = _data()
    for shots in args.shots:
        iters = args.iterations or (5 if args.quick else 60000)
        ml.random.set_seed(args.seed)
        t0 = time.perf_counter()
        maml = MAML(models.omniglot_mlp(5), inner_lr=0.4, inner_steps=1, meta_lr=0.001)
        ckpt = _checkpoint(args, f"maml_mlp-{shots}shot")
        history = maml.fit(
            NWayKShot((x, y), 5, shots, 15, seed=args.seed),
            iterations=iters,
            meta_batch_size=4 if args.quick else 32,
            verbose=args.verbose,
            checkpoint_dir=ckpt,
            checkpoint_every=args.checkpoint_every if ckpt else None,
            time_budget=args.chunk,
        )
        if _chunk_ended(history, f"maml_mlp {shots}-shot", maml, iters, ckpt, t0):
            continue
        if args.quick or args.episodes:
            episodes = args.episodes or 20
        else:  # the shipped frozen set: the same 600 episodes every time
            episodes = standard(f"omniglot-vinyals_test-5way-{shots}shot")
        res = maml.evaluate(
            NWayKShot((xt, yt), 5, shots, 15, seed=args.seed + 1),
            episodes=episodes,
            steps=3,
            card=_card(args, f"maml_mlp-omniglot-5w{shots}s"),
        )
        report(
            "maml_mlp",
            f"5-way {shots}-shot, {iters} it",
            pct(res),
            PAPER[("maml_mlp", 5, shots)],
            time.perf_counter() - t0,
        )


def protonet_conv4(args):
    """ProtoNet conv4 on Omniglot (Snell et al. 2017): 60-way training episodes with 5
    queries, K as at test, Adam 1e-3 halved every 2000 episodes; tested on the shipped
    frozen Vinyals test sets (600 episodes each, ``tasks.episodes.standard``).

    The paper's 20 000 episodes take hours here, so the run goes in chunks: with
    ``--checkpoint-dir`` every chunk saves an exact-resume checkpoint (``fit``'s
    ``checkpoint_dir``: weights, Adam moments, the generators, the task stream's position),
    ``--chunk SECONDS`` ends a chunk at that wall time, and the same command run again
    continues where the last chunk stopped, with the bits of an uninterrupted run. The test
    episodes are evaluated (and result cards written to ``--cards``) once training is done.
    """
    import metalearn as ml
    from metalearn import keras
    from metalearn.meta import ProtoNet, models
    from metalearn.tasks import NWayKShot
    from metalearn.tasks.episodes import standard

    (x, y), (xt, yt) = _data()
    for shots in args.shots:
        iters = args.iterations or (3 if args.quick else 20000)
        train_way = 5 if args.quick else 60
        ml.random.set_seed(args.seed)
        t0 = time.perf_counter()
        # the paper halves the rate every 2000 episodes: a staircase schedule, so the rate
        # follows the optimizer's step count and a resumed chunk uses the right one
        rate = keras.optimizers.schedules.ExponentialDecay(1e-3, 2000, 0.5, staircase=True)
        pn = ProtoNet(models.conv4(), meta_optimizer=keras.optimizers.Adam(learning_rate=rate))
        ckpt = _checkpoint(args, f"protonet_conv4-{shots}shot")
        history = pn.fit(
            NWayKShot((x, y), train_way, shots, 5, seed=args.seed),
            iterations=iters,
            meta_batch_size=1,
            verbose=args.verbose,
            checkpoint_dir=ckpt,
            checkpoint_every=args.checkpoint_every if ckpt else None,
            time_budget=args.chunk,
        )
        train_time = time.perf_counter() - t0
        if _chunk_ended(history, f"protonet_conv4 {shots}-shot", pn, iters, ckpt, t0):
            continue
        for ways in (5, 20):
            t1 = time.perf_counter()
            sampler = NWayKShot(
                (xt, yt), ways, shots, 15 if not args.quick else 5, seed=args.seed + 1
            )
            if args.quick and not args.cards:
                episodes = args.episodes or 5
            else:  # the shipped frozen set: the same 600 episodes every time
                episodes = standard(f"omniglot-vinyals_test-{ways}way-{shots}shot")
            card = _card(args, f"protonet_conv4-omniglot-{ways}w{shots}s")
            res = pn.evaluate(sampler, episodes=episodes, card=card)
            report(
                "protonet_conv4",
                f"{ways}-way {shots}-shot, {iters} episodes",
                pct(res),
                PAPER[("protonet_conv4", ways, shots)],
                train_time + time.perf_counter() - t1,
            )


def _torch_maml_conv4(x, y, xt, yt, budget, args):
    """The PyTorch peer: conv4 + BN (batch statistics), MAML second order, same settings."""
    import torch
    from torch import nn
    from torch.func import functional_call
    from metalearn.tasks import NWayKShot

    torch.manual_seed(args.seed)
    layers = []
    c = 1
    for _ in range(4):
        layers += [
            nn.Conv2d(c, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c = 64
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    names = [n for n, _ in net.named_parameters()]
    tasks = NWayKShot((x, y), 5, 1, 15, seed=args.seed)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    mb = 4 if args.quick else 32

    def adapt(params, sx, sy, steps, create_graph):
        for _ in range(steps):
            loss = nn.functional.cross_entropy(functional_call(net, params, (sx,)), sy)
            g = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {n: p - 0.4 * gi for (n, p), gi in zip(params.items(), g)}
        return params

    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget:
        b = tasks.sample_batch(mb)
        total = 0
        for i in range(mb):
            params = dict(zip(names, net.parameters()))
            fast = adapt(params, nchw(b.support_x[i]), torch.from_numpy(b.support_y[i]), 1, True)
            total = total + nn.functional.cross_entropy(
                functional_call(net, fast, (nchw(b.query_x[i]),)), torch.from_numpy(b.query_y[i])
            )
        opt.zero_grad()
        (total / mb).backward()
        opt.step()
        it += 1
    test = NWayKShot((xt, yt), 5, 1, 15, seed=args.seed + 1)
    accs = []
    for _ in range(args.episodes or (5 if args.quick else 600)):
        t = test.sample()
        params = {n: p.detach().requires_grad_() for n, p in net.named_parameters()}
        fast = adapt(params, nchw(t.support_x), torch.from_numpy(t.support_y), 3, False)
        with torch.no_grad():
            pred = functional_call(net, fast, (nchw(t.query_x),)).argmax(1).numpy()
        accs.append(np.mean(pred == t.query_y))
    accs = np.array(accs)
    return it, {"accuracy": accs.mean(), "ci95": 1.96 * accs.std() / np.sqrt(len(accs))}


def maml_conv4(args):
    import metalearn as ml
    from metalearn.meta import MAML, models
    from metalearn.tasks import NWayKShot

    (x, y), (xt, yt) = _data()
    budget = args.budget or (5.0 if args.quick else 3600.0)
    if args.peer == "torch":
        return _maml_conv4_torch_report(x, y, xt, yt, budget, args)
    ml.random.set_seed(args.seed)
    maml = MAML(models.conv4(5), inner_lr=0.4, inner_steps=1, meta_lr=0.001)
    tasks = NWayKShot((x, y), 5, 1, 15, seed=args.seed)
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget:
        maml.fit(tasks, iterations=1, meta_batch_size=4 if args.quick else 32, verbose=0)
        it += 1
        if args.verbose and it % 10 == 0:
            print(
                f"  maml_conv4: {it} iterations, {time.perf_counter() - t0:.0f} s, "
                f"loss {maml.history['loss'][-1]:.3f}",
                flush=True,
            )
    res = maml.evaluate(
        NWayKShot((xt, yt), 5, 1, 15, seed=args.seed + 1),
        episodes=args.episodes or (5 if args.quick else 600),
        steps=3,
        card=_card(args, "maml_conv4-omniglot-5w1s"),
    )
    report(
        "maml_conv4",
        f"5-way 1-shot, {it} it in {budget:.0f} s",
        pct(res),
        PAPER[("maml_conv4", 5, 1)],
        time.perf_counter() - t0,
        "metalearn",
    )
    if args.peer == "both":
        _maml_conv4_torch_report(x, y, xt, yt, budget, args)


def _maml_conv4_torch_report(x, y, xt, yt, budget, args):
    try:
        import torch  # noqa: F401
    except ImportError:
        print("maml_conv4: PyTorch peer skipped (torch is not installed)")
        return
    t1 = time.perf_counter()
    it_t, res_t = _torch_maml_conv4(x, y, xt, yt, budget, args)
    report(
        "maml_conv4",
        f"5-way 1-shot, {it_t} it in {budget:.0f} s",
        pct(res_t),
        PAPER[("maml_conv4", 5, 1)],
        time.perf_counter() - t1,
        "PyTorch peer",
    )


RUNS = {
    "maml_sinusoid": maml_sinusoid,
    "maml_mlp": maml_mlp,
    "protonet_conv4": protonet_conv4,
    "maml_conv4": maml_conv4,
}


def main(argv=None):
    p = argparse.ArgumentParser(description="Reproduce the meta-learning papers' results.")
    p.add_argument("--quick", action="store_true", help="a few iterations of each run (CI)")
    p.add_argument("--only", nargs="+", choices=sorted(RUNS), help="runs to do (default: all)")
    p.add_argument("--iterations", type=int, default=None, help="override meta-iterations")
    p.add_argument("--episodes", type=int, default=None, help="override test episodes")
    p.add_argument("--budget", type=float, default=None, help="seconds for maml_conv4 (each peer)")
    p.add_argument(
        "--shots",
        type=int,
        nargs="+",
        default=[1, 5],
        help="maml_mlp, protonet_conv4: the K-shot settings to run (default: 1 5)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="maml_mlp, protonet_conv4: a folder for exact-resume checkpoints (one per "
        "setting); "
        "running the same command again continues the run",
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="episodes between checkpoints")
    p.add_argument(
        "--chunk",
        type=float,
        default=None,
        help="maml_mlp, protonet_conv4: seconds of training in this process (a chunk); the run "
        "stops there with a checkpoint (needs --checkpoint-dir)",
    )
    p.add_argument("--cards", default=None, help="a folder for result cards (metalearn.report)")
    p.add_argument(
        "--peer",
        choices=("both", "metalearn", "torch"),
        default="both",
        help="maml_conv4: run metalearn, the PyTorch peer, or both one after the "
        "other (two processes with --threads 1 run the two side by side)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=None)
    args = p.parse_args(argv)
    if args.chunk is not None and not args.checkpoint_dir:
        p.error("--chunk needs --checkpoint-dir (a chunk without a checkpoint is lost)")
    if args.verbose is None:
        args.verbose = 0 if args.quick else 1
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import metalearn as ml

        setter = getattr(ml, "set_num_threads", None) or getattr(ml._core, "set_num_threads", None)
        if setter:
            setter(args.threads)
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    from metalearn.meta.models import has_conv

    t0 = time.perf_counter()
    for name in args.only or list(RUNS):
        if "conv4" in name and not has_conv():
            print(f"{name}: skipped (no conv ops in this build)")
            continue
        print(f"== {name}", flush=True)
        RUNS[name](args)
    print(
        "\nrun             setting                              ours                    paper"
        "          wall"
    )
    for name, setting, ours, paper, seconds, note in RESULTS:
        print(f"{name:15s} {setting:36s} {ours:23s} {paper:14s} {seconds:7.1f} s {note}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return RESULTS


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
