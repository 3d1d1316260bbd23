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
                  Both peers draw the same training tasks and test episodes (NWayKShot, seed
                  and seed + 1). --init picks the initialisation (docs/GAP.md): "native"
                  (each framework's default), "glorot" or "torch" (both the same);
                  --bn-epsilon sets both peers' batch-norm epsilon (Keras 1e-3, PyTorch 1e-5);
                  --iterations stops both at that count, --meta-batch sets both peers';
                  --curve FILE saves the per-iteration losses and times (JSON).

  mamlpp_conv4    MAML++ (Antoniou et al. 2019), conv4 (64 filters), Omniglot 20-way 1-shot,
                  the paper's settings: 5 inner steps (5 at test), inner lr 0.1 learned per
                  layer and step (LSLR), per-step batch-norm weights (BNWB), multi-step loss
                  annealed over 10 epochs, first order for the first 50 epochs (DA), meta lr
                  1e-3 cosine-annealed to 1e-5 over 150 epochs of 500 iterations (75 000),
                  meta-batch 8 (the authors' 20-way configuration), one query per class;
                  within --budget (default 3 hours, in chunks): paper 97.65 +- 0.05 %.
  maml_conv4_20w  plain MAML beside it at the same budget: conv4, Omniglot 20-way 1-shot, the
                  MAML paper's 20-way settings (5 inner steps of lr 0.1, meta-batch 16,
                  second order, one query per class, 5 steps at test): paper 95.8 +- 0.3 %.
  matchingnet_conv4  Matching Networks (Vinyals et al. 2016), conv4 embedding, cosine
                  attention, no full-context embeddings, 5-way 1-shot episodes with 15
                  queries, Adam 1e-3; within --budget: paper 98.1 % (5-way 1-shot).
  relationnet_conv4  Relation Networks (Sung et al. 2018): the paper's encoder (four conv
                  blocks, the first two unpadded and pooled) and relation module (two pooled
                  conv blocks, Dense 8 ReLU, Dense 1, sigmoid) with the authors' code's
                  initialisation, MSE loss, 5-way 1-shot with 19 queries, Adam 1e-3, each
                  module's gradient norm clipped at 0.5 and support and query normalised
                  as two batches in training and test as theirs (--relation-batches joint:
                  one batch, moving statistics at test); within --budget: paper 99.6 +- 0.2 %.
  r2d2_conv4      R2D2 (Bertinetto et al. 2019): ridge-regression head (lambda and scale
                  learned), conv4, 5-way 1-shot, 15 queries, Adam 1e-3; within --budget
                  (the paper's Omniglot table, Tab. 1, uses its own 4-layer CNN).
  imaml_conv4     iMAML (Rajeswaran et al. 2019), conv4, Omniglot 5-way 1-shot, the authors'
                  settings: 16 proximal inner steps of lr 0.1 (16 at test), lambda 2,
                  5 CG steps, meta-batch 32, one query per class, Adam 1e-3; within
                  --budget: paper 99.16 +- 0.35 %.
  metaoptnet_conv4  MetaOptNet (Lee et al. 2019), conv4, Omniglot 5-way 1-shot: SVM head,
                  C = 0.1, 15 solver steps, --ridge (default 1.0, the authors' code), 5
                  queries, meta-batch 8, Adam 1e-3; within --budget (no Omniglot number in
                  the paper). benchmarks/metaoptnet.py runs it beside ProtoNet.
  reptile_conv4   Reptile (Nichol et al. 2018) as the authors' Omniglot script runs it: their
                  network (four stride-2 conv blocks, no pooling), inner Adam (beta_1 = 0,
                  lr 1e-3) whose state carries across tasks, 5 steps on mini-batches of 10
                  from 10 training shots, meta-batch 5, meta step annealed 1 -> 0 over the
                  run's iterations (100 000 or --iterations), 50 steps at test; within
                  --budget (default 1 hour): paper 97.68 +- 0.04 % (transductive).
                  --inner-state reset restarts the inner Adam for each task instead.
                  These rows (mamlpp_conv4 .. metaoptnet_conv4) train until --budget seconds
                  of training (summed over chunks) or --iterations, whichever comes first.

Long runs go in chunks with exact resume (maml_mlp, protonet_conv4 and the rows above): with
--checkpoint-dir DIR and --chunk SECONDS a run stops after SECONDS with a checkpoint, and
the same command run again continues it, ending with the bits of an uninterrupted run
(a --budget row also keeps the seconds trained so far beside its checkpoint, so the budget
is the sum over chunks; once it is spent the same command only evaluates);
--cards DIR writes a result card per row (python -m metalearn.report DIR/*.json);
--card-tag TAG is appended to the cards' names (two runs of one row kept apart).
Omniglot rows are tested on the shipped frozen 600-episode sets (tasks.episodes.standard).

Accuracies are means over test episodes with 95 % confidence intervals.
"""

import argparse
import json
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
    ("mamlpp_conv4", 20, 1): "97.65 +- 0.05",
    ("maml_conv4_20w", 20, 1): "95.8 +- 0.3",
    ("matchingnet_conv4", 5, 1): "98.1",
    ("relationnet_conv4", 5, 1): "99.6 +- 0.2",
    ("r2d2_conv4", 5, 1): "Tab. 1, own CNN",
    ("imaml_conv4", 5, 1): "99.16 +- 0.35",
    ("metaoptnet_conv4", 5, 1): "no Omniglot row",
    ("reptile_conv4", 5, 1): "97.68 +- 0.04 (transductive)",
}
#: the default training budget (seconds, summed over chunks) of the rows trained by time
BUDGET = {
    "mamlpp_conv4": 10800.0,
    "maml_conv4_20w": 10800.0,
    "matchingnet_conv4": 300.0,
    "relationnet_conv4": 300.0,
    "r2d2_conv4": 300.0,
    "imaml_conv4": 300.0,
    "metaoptnet_conv4": 300.0,
    "reptile_conv4": 3600.0,
}
RESULTS = []


def report(name, setting, ours, paper, seconds, note=""):
    RESULTS.append((name, setting, ours, paper, seconds, note))
    print(
        f"  -> {name} {setting}: {ours}   (paper: {paper})   [{seconds:.1f} s] {note}", flush=True
    )


def card_path(folder, name, tag=""):
    """The result card's file for one row in `folder` (``--cards``; made if missing), or
    None when no folder is given. `tag` tells apart the same row run by another script
    with other settings (metaoptnet.py's budget and ridge)."""
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}{tag}.json")


def _card(args, name):
    """The result card's file for one row (``--cards``), or None."""
    return card_path(args.cards, name, getattr(args, "card_tag", "") or "")


def write_row_card(folder, name, learner, tasks, rows, wall_time, algorithm=None, setting=None):
    """Writes the card of a row measured outside ``evaluate`` (memory lookup, warm start,
    a Spearman correlation) into `folder` as `name`.json, in evaluate's card format
    (``metalearn.report.make_card``; `rows` from ``report.result`` or
    ``report.correlation``); the benchmark scripts' one way to write such a card.
    Returns the path, or None when `folder` is None."""
    from metalearn import report as cards

    path = card_path(folder, name)
    if path is None:
        return None
    card = cards.make_card(learner, tasks, rows, wall_time, algorithm=algorithm, setting=setting)
    return cards.write_card(path, card)


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


def torch_conv4(init="native", seed=0, bn_epsilon=1e-5):
    """The PyTorch peer's conv4 + BN (batch statistics) with a 5-way Linear head. `init`:
    "native" or "torch" (PyTorch's default, kaiming_uniform_(a=sqrt 5) and uniform biases
    in +-1/sqrt(fan_in)) or "glorot" (Keras': glorot_uniform kernels, zero biases)."""
    import torch
    from torch import nn

    if init not in ("native", "glorot", "torch"):
        raise ValueError(f"torch_conv4: init must be 'native', 'glorot' or 'torch', got {init!r}")
    torch.manual_seed(seed)
    layers = []
    c = 1
    for _ in range(4):
        layers += [
            nn.Conv2d(c, 64, 3, padding=1),
            nn.BatchNorm2d(64, eps=bn_epsilon, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c = 64
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))
    if init == "glorot":  # Keras' defaults: glorot_uniform kernels, zero biases
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
    return net


def _torch_maml_conv4(x, y, xt, yt, budget, args):
    """The PyTorch peer: conv4 + BN (batch statistics), MAML second order, same settings."""
    import torch
    from torch import nn
    from torch.func import functional_call
    from metalearn.tasks import NWayKShot

    net = torch_conv4(args.init, args.seed, args.bn_epsilon or 1e-5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    names = [n for n, _ in net.named_parameters()]
    tasks = NWayKShot((x, y), 5, 1, 15, seed=args.seed)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    mb = args.meta_batch or (4 if args.quick else 32)

    def adapt(params, sx, sy, steps, create_graph):
        for _ in range(steps):
            loss = nn.functional.cross_entropy(functional_call(net, params, (sx,)), sy)
            g = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {n: p - 0.4 * gi for (n, p), gi in zip(params.items(), g)}
        return params

    t0, it = time.perf_counter(), 0
    curve = {"loss": [], "seconds": []}
    while time.perf_counter() - t0 < budget and it < (args.iterations or float("inf")):
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
        _curve_step(args, curve, "maml_conv4 (torch)", float(total.detach()) / mb, t0)
    _save_curve(args, "torch", curve)
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


def _curve_step(args, curve, who, loss, t0):
    """Records one meta-iteration's loss and elapsed seconds in ``curve`` and, every 10
    iterations with --verbose, prints the mean of the last 10 losses."""
    curve["loss"].append(loss)
    curve["seconds"].append(time.perf_counter() - t0)
    it = len(curve["loss"])
    if args.verbose and it % 10 == 0:
        print(
            f"  {who}: {it} iterations, {curve['seconds'][-1]:.0f} s, "
            f"loss {np.mean(curve['loss'][-10:]):.3f} (mean of 10)",
            flush=True,
        )


def _save_curve(args, peer, curve):
    """``--curve``: one peer's per-iteration meta-losses and elapsed seconds, as JSON."""
    if not args.curve:
        return
    root, ext = os.path.splitext(args.curve)
    with open(f"{root}-{peer}{ext or '.json'}", "w") as f:
        json.dump(
            {"peer": peer, "init": args.init, "bn_epsilon": args.bn_epsilon, "seed": args.seed}
            | curve,
            f,
        )


def maml_conv4(args):
    import metalearn as ml
    from metalearn.keras import conv_layers
    from metalearn.meta import MAML, models
    from metalearn.tasks import NWayKShot

    (x, y), (xt, yt) = _data()
    budget = args.budget or (float("inf") if args.iterations else 5.0 if args.quick else 3600.0)
    if args.peer == "torch":
        return _maml_conv4_torch_report(x, y, xt, yt, budget, args)
    ml.random.set_seed(args.seed)
    init = {"native": "glorot_uniform", "glorot": "glorot_uniform", "torch": "torch"}[args.init]
    bias = "zeros" if init == "glorot_uniform" else "torch"
    model = models.conv4(5, kernel_initializer=init, bias_initializer=bias)
    for layer in model.layers:
        if args.bn_epsilon and isinstance(layer, conv_layers.BatchNormalization):
            layer.epsilon = args.bn_epsilon  # before the first call: not yet traced
    maml = MAML(model, inner_lr=0.4, inner_steps=1, meta_lr=0.001)
    tasks = NWayKShot((x, y), 5, 1, 15, seed=args.seed)
    t0, it = time.perf_counter(), 0
    curve = {"loss": [], "seconds": []}
    while time.perf_counter() - t0 < budget and it < (args.iterations or float("inf")):
        mb = args.meta_batch or (4 if args.quick else 32)
        maml.fit(tasks, iterations=1, meta_batch_size=mb, verbose=0)
        it += 1
        _curve_step(args, curve, "maml_conv4", float(maml.history["loss"][-1]), t0)
    _save_curve(args, "metalearn", curve)
    res = maml.evaluate(
        NWayKShot((xt, yt), 5, 1, 15, seed=args.seed + 1),
        episodes=args.episodes or (5 if args.quick else 600),
        steps=3,
        card=_card(args, "maml_conv4-omniglot-5w1s"),
    )
    report(
        "maml_conv4",
        f"5-way 1-shot, {it} it in {curve['seconds'][-1] if it else 0:.0f} s",
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
        f"5-way 1-shot, {it_t} it",
        pct(res_t),
        PAPER[("maml_conv4", 5, 1)],
        time.perf_counter() - t1,
        "PyTorch peer",
    )


# ------------------------------------------------- rows trained within a time budget


def _spent_file(ckpt):
    # beside the checkpoint folder, not in it: the checkpoint's files stay its own
    return None if ckpt is None else ckpt.rstrip(os.sep) + ".budget.json"


def _load_spent(ckpt):
    path = _spent_file(ckpt)
    if path is None or not os.path.exists(path):
        return {"seconds": 0.0, "iterations": 0}
    with open(path) as f:
        return json.load(f)


def _save_spent(ckpt, spent):
    path = _spent_file(ckpt)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(spent, f)
    os.replace(tmp, path)  # never half a file


def _train(args, name, learner, tasks, iters, meta_batch, budget):
    """Meta-trains `learner` up to `iters` iterations or `budget` seconds of training
    (summed over the chunks of a ``--checkpoint-dir`` run), in chunks of ``--chunk``
    seconds. Returns (seconds trained so far, done): done is False when this chunk ended
    before the run did (the same command continues it)."""
    ckpt = _checkpoint(args, name)
    spent = _load_spent(ckpt)
    limit = args.chunk
    if budget is not None:
        left = budget - spent["seconds"]
        if left <= 0:  # the budget is spent: restore the checkpoint, train no further
            iters, limit = spent["iterations"], None
        else:
            limit = left if limit is None else min(limit, left)
    t0 = time.perf_counter()
    history = learner.fit(
        tasks,
        iterations=iters,
        meta_batch_size=meta_batch,
        verbose=args.verbose,
        checkpoint_dir=ckpt,
        checkpoint_every=args.checkpoint_every if ckpt else None,
        time_budget=limit,
    )
    seconds = spent["seconds"] + (time.perf_counter() - t0 if limit is not None else 0.0)
    if ckpt is not None and limit is not None:
        _save_spent(ckpt, {"seconds": seconds, "iterations": learner.iterations})
    done = not history.get("stopped") or (budget is not None and seconds >= budget)
    if not done:
        print(
            f"  -> {name}: chunk ended after {seconds:.0f} s of training at iteration "
            f"{learner.iterations} (checkpoint in {ckpt}); run the same command again to "
            f"continue",
            flush=True,
        )
    return seconds, done


def episode_row(
    args, name, make, ways, shots, queries, meta_batch, steps=None, iters=None, train_shots=None
):
    """One Omniglot row: `make()` (a learner, built after seeding) meta-trained on
    `ways`-way `train_shots`-shot episodes (default `shots`) with `queries` queries per
    class (``_train``: the budget, chunks and exact resume), then tested `shots`-shot on
    the shipped frozen 600-episode set of that setting (``--quick``: a few sampled
    episodes; ``--episodes N``: N sampled), with `steps` inner steps, and a result card
    written to ``--cards``."""
    import metalearn as ml
    from metalearn.tasks import NWayKShot
    from metalearn.tasks.episodes import standard

    (x, y), (xt, yt) = _data()
    iters = args.iterations or (3 if args.quick else iters or 10**9)
    budget = args.budget
    if budget is None and not (args.quick or args.iterations):
        budget = BUDGET.get(name)
    ml.random.set_seed(args.seed)
    learner = make()
    tasks = NWayKShot((x, y), ways, train_shots or shots, queries, seed=args.seed)
    batch = min(meta_batch, 2) if args.quick else meta_batch
    seconds, done = _train(args, name, learner, tasks, iters, batch, budget)
    if not done:
        return None
    t1 = time.perf_counter()
    sampler = NWayKShot((xt, yt), ways, shots, 5 if args.quick else 15, seed=args.seed + 1)
    if args.quick or args.episodes:
        episodes = args.episodes or 3
    else:  # the shipped frozen set: the same 600 episodes every time
        episodes = standard(f"omniglot-vinyals_test-{ways}way-{shots}shot")
    card = _card(args, f"{name}-omniglot-{ways}w{shots}s")
    res = learner.evaluate(sampler, episodes=episodes, steps=steps, card=card)
    within = f" in {budget:.0f} s" if budget is not None else ""
    report(
        name,
        f"{ways}-way {shots}-shot, {learner.iterations} it{within}",
        pct(res),
        PAPER.get((name, ways, shots), "-"),
        seconds + time.perf_counter() - t1,
    )
    return res


def mamlpp_conv4(args):
    """MAML++ on Omniglot 20-way 1-shot with the paper's settings (see the module's
    docstring); batch statistics normalise every pass, as the authors' code does
    (``training=True`` throughout), so the per-step running statistics (BNRS) are off."""
    from metalearn.meta import MAMLPlusPlus, models

    def make():
        return MAMLPlusPlus(
            models.conv4(20),
            inner_lr=0.1,
            inner_steps=5,
            meta_lr=0.001,
            multi_step_loss=True,
            msl_epochs=10,
            learn_inner_rates=True,
            first_order_epochs=50,
            cosine_annealing=True,
            total_epochs=150,
            min_meta_lr=1e-5,
            epoch_length=500,
            per_step_bn_weights=True,
        )

    episode_row(args, "mamlpp_conv4", make, 20, 1, 1, 8, steps=5, iters=75000)


def maml_conv4_20w(args):
    """Plain MAML beside MAML++ at the same budget: the MAML paper's 20-way settings."""
    from metalearn.meta import MAML, models

    def make():
        return MAML(models.conv4(20), inner_lr=0.1, inner_steps=5, meta_lr=0.001)

    episode_row(args, "maml_conv4_20w", make, 20, 1, 1, 16, steps=5, iters=60000)


def matchingnet_conv4(args):
    from metalearn.meta import MatchingNet, models

    episode_row(args, "matchingnet_conv4", lambda: MatchingNet(models.conv4()), 5, 1, 15, 1)


def relation_modules():
    """Relation Networks' Omniglot encoder and relation module as the authors' code builds
    them (floodsung/LearningToCompare_FSL, omniglot_train_one_shot.py): four [Conv 3x3 64,
    BN, ReLU] blocks, the first two unpadded and max-pooled (28x28 -> 5x5x64), then two
    padded; the relation module two padded blocks, both pooled (5x5x128 -> 1x1x64), Dense 8
    ReLU and Dense 1 (Sung et al. 2018, Fig. 2). Their ``weights_init``: convolutions
    N(0, 2 / (9 * 64)) (He normal over fan-out), zero biases; Dense N(0, 0.01) with biases
    of one."""
    from metalearn.keras import conv_layers, initializers, layers
    from metalearn.keras.models import Sequential

    he_out = initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")

    def blocks(model, n, pooled, padded_from):
        for i in range(n):
            padding = "same" if i >= padded_from else "valid"
            model.add(conv_layers.Conv2D(64, 3, padding=padding, kernel_initializer=he_out))
            model.add(conv_layers.BatchNormalization())
            model.add(layers.Activation("relu"))
            if i < pooled:
                model.add(conv_layers.MaxPool2D(2))
        return model

    def dense(units, **kw):
        return layers.Dense(
            units,
            kernel_initializer=initializers.RandomNormal(0.0, 0.01),
            bias_initializer="ones",
            **kw,
        )

    encoder = blocks(Sequential([layers.InputLayer(input_shape=(28, 28, 1))]), 4, 2, 2)
    relation = blocks(Sequential([layers.InputLayer(input_shape=(5, 5, 128))]), 2, 2, 0)
    relation.add(layers.Flatten())
    relation.add(dense(8, activation="relu"))
    relation.add(dense(1))
    return encoder, relation


def relationnet_conv4(args):
    from metalearn.meta import RelationNet

    def make():  # each module's gradient norm clipped at 0.5, as the authors' code does
        return RelationNet(
            *relation_modules(),
            module_clipnorm=0.5,
            separate_batches=args.relation_batches == "separate",
        )

    episode_row(args, "relationnet_conv4", make, 5, 1, 19, 1)


def r2d2_conv4(args):
    from metalearn.meta import R2D2, models

    episode_row(args, "r2d2_conv4", lambda: R2D2(models.conv4()), 5, 1, 15, 1)


def imaml_conv4(args):
    from metalearn.meta import IMAML, models

    def make():
        return IMAML(
            models.conv4(5), inner_lr=0.1, inner_steps=16, lam=2.0, cg_steps=5, meta_lr=0.001
        )

    episode_row(args, "imaml_conv4", make, 5, 1, 1, 32, steps=16)


def metaoptnet_conv4(args):
    from metalearn.meta import MetaOptNet, models

    def make():
        return MetaOptNet(models.conv4(), C=0.1, solver_steps=15, ridge=args.ridge)

    return episode_row(args, "metaoptnet_conv4", make, 5, 1, 5, 8)


def reptile_net(n_way):
    """The Reptile authors' Omniglot network (openai/supervised-reptile, models.py): four
    [Conv 3x3 64 with stride 2 and 'same' padding, batch norm, ReLU] blocks, no pooling
    (28x28 -> 2x2x64), then a Dense head; TensorFlow's defaults, Keras' too (glorot_uniform
    kernels, zero biases, batch-norm epsilon 1e-3), and batch statistics in every pass."""
    from metalearn.keras import conv_layers, layers
    from metalearn.keras.models import Sequential

    model = Sequential([layers.InputLayer(input_shape=(28, 28, 1))])
    for _ in range(4):
        model.add(conv_layers.Conv2D(64, 3, strides=2, padding="same"))
        model.add(conv_layers.BatchNormalization())
        model.add(layers.Activation("relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(n_way))
    return model


def reptile_conv4(args):
    """Reptile with the authors' Omniglot 5-way 1-shot setting (run_omniglot.sh, the
    transductive row): inner Adam with beta_1 = 0 and learning rate 1e-3 whose state carries
    across tasks, 5 steps on mini-batches of 10 from 10 training shots, 5 tasks a
    meta-batch, the meta step annealed linearly from 1 to 0 over the run's iterations
    (100 000, or --iterations), 50 steps at test on the whole support."""
    from metalearn.keras import optimizers
    from metalearn.keras.optimizers import schedules
    from metalearn.meta import Reptile

    iters = args.iterations or 100000

    def make():
        return Reptile(
            reptile_net(5),
            inner_lr=1e-3,
            inner_steps=5,
            inner_optimizer="adam",
            inner_betas=(0.0, 0.999),
            inner_batch_size=10,
            inner_state=args.inner_state,
            meta_optimizer=optimizers.SGD(schedules.PolynomialDecay(1.0, iters, 0.0)),
        )

    episode_row(args, "reptile_conv4", make, 5, 1, 1, 5, steps=50, iters=iters, train_shots=10)


RUNS = {
    "maml_sinusoid": maml_sinusoid,
    "maml_mlp": maml_mlp,
    "protonet_conv4": protonet_conv4,
    "maml_conv4": maml_conv4,
    "mamlpp_conv4": mamlpp_conv4,
    "maml_conv4_20w": maml_conv4_20w,
    "matchingnet_conv4": matchingnet_conv4,
    "relationnet_conv4": relationnet_conv4,
    "r2d2_conv4": r2d2_conv4,
    "imaml_conv4": imaml_conv4,
    "metaoptnet_conv4": metaoptnet_conv4,
    "reptile_conv4": reptile_conv4,
}


def parse_args(argv=None):
    """The command line's options (``main``'s), as an argparse Namespace."""
    p = argparse.ArgumentParser(description="Reproduce the meta-learning papers' results.")
    p.add_argument("--quick", action="store_true", help="a few iterations of each run (CI)")
    p.add_argument("--only", nargs="+", choices=sorted(RUNS), help="runs to do (default: all)")
    p.add_argument("--iterations", type=int, default=None, help="override meta-iterations")
    p.add_argument("--episodes", type=int, default=None, help="override test episodes")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of training: maml_conv4 (each peer; default 3600) and the rows trained "
        "by time (mamlpp_conv4 .. metaoptnet_conv4; summed over chunks; default 10800 for "
        "mamlpp_conv4 and maml_conv4_20w, 300 for the others)",
    )
    p.add_argument(
        "--ridge", type=float, default=1.0, help="metaoptnet_conv4: the Gram's ridge (authors': 1)"
    )
    p.add_argument(
        "--relation-batches",
        choices=("separate", "joint"),
        default="separate",
        help="relationnet_conv4: support and query through the encoder as two batches with "
        "their own batch statistics, also at test (the authors' code), or as one batch "
        "with the moving statistics at test",
    )
    p.add_argument(
        "--inner-state",
        choices=("carry", "reset"),
        default="carry",
        help="reptile_conv4: the inner Adam's state carried across tasks (the authors' code) "
        "or reset for each task",
    )
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
        help="every run but maml_sinusoid and maml_conv4: a folder for exact-resume "
        "checkpoints (one per setting); running the same command again continues the run",
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="episodes between checkpoints")
    p.add_argument(
        "--chunk",
        type=float,
        default=None,
        help="seconds of training in this process (a chunk); the run stops there with a "
        "checkpoint (needs --checkpoint-dir)",
    )
    p.add_argument("--cards", default=None, help="a folder for result cards (metalearn.report)")
    p.add_argument(
        "--card-tag",
        default="",
        help="appended to each card's name, to keep two runs of a row apart (e.g. --card-tag=-600ep "
        "for protonet_conv4 at 600 episodes beside the 20 000-episode run)",
    )
    p.add_argument(
        "--peer",
        choices=("both", "metalearn", "torch"),
        default="both",
        help="maml_conv4: run metalearn, the PyTorch peer, or both one after the "
        "other (two processes with --threads 1 run the two side by side)",
    )
    p.add_argument(
        "--init",
        choices=("native", "glorot", "torch"),
        default="native",
        help="maml_conv4: each peer's own default initialisation (native: Keras' glorot_uniform "
        "+ zero biases, PyTorch's kaiming_uniform(a=sqrt 5) + uniform biases), or both Keras' "
        "(glorot) or both PyTorch's (torch); docs/GAP.md",
    )
    p.add_argument(
        "--meta-batch",
        type=int,
        default=None,
        help="maml_conv4: tasks per meta-iteration, both peers (default 32; 4 with --quick)",
    )
    p.add_argument(
        "--bn-epsilon",
        type=float,
        default=None,
        help="maml_conv4: both peers' batch-norm epsilon (default: each framework's own, "
        "Keras 1e-3, PyTorch 1e-5)",
    )
    p.add_argument(
        "--curve", default=None, help="maml_conv4: a JSON file (-PEER appended) of the losses"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=None)
    args = p.parse_args(argv)
    if args.chunk is not None and not args.checkpoint_dir:
        p.error("--chunk needs --checkpoint-dir (a chunk without a checkpoint is lost)")
    if args.verbose is None:
        args.verbose = 0 if args.quick else 1
    return args


def set_threads(args):
    """``--threads``: the core's thread count (and PyTorch's, for the peer)."""
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


def main(argv=None):
    args = parse_args(argv)
    set_threads(args)
    del RESULTS[:]  # one call's rows (tests call main more than once in a process)
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
    return list(RESULTS)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
