"""MetaOptNet's SVM head (Lee et al. 2019): a reproduction run within a wall-clock budget and
the head's speed beside a PyTorch peer.

    python benchmarks/metaoptnet.py run [--budget 600] [--threads 1] [--ridge 1.0]
                                        [--only MetaOptNet] [--cards DIR] [--quick]
        conv4 on Omniglot 5-way 1-shot (the Vinyals split), trained for `budget` seconds
        (5 queries per class, meta-batch 8, Adam 1e-3, C = 0.1, 15 solver steps), then
        ProtoNet for the same budget and sampler; both tested on the shipped frozen 600
        episodes of the test characters (15 queries per class). This is reproduce.py's
        metaoptnet_conv4 row (there with --ridge 1.0 by default) and the same row with
        ProtoNet. The paper reports no Omniglot number (its tables: miniImageNet,
        tieredImageNet, CIFAR-FS, FC100). Cards (--cards DIR):
        metaoptnet_conv4-omniglot-5w1s-{budget}s-ridge{ridge}.json and
        protonet_conv4_budget-omniglot-5w1s-{budget}s.json.

    python benchmarks/metaoptnet.py speed [--repeats 20]
        the head alone, forward + backward to the embeddings, 5-way 5-shot, 15 queries per
        class, 64-d embeddings, 15 and 50 solver steps: metalearn's svm_logits against the
        same unrolled solver in PyTorch (float32, 1 thread), interleaved in one process,
        min over repeats. Needs torch (e.g. /work/kref/bin/python with the repo on the path).
"""

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reproduce.py


def run(args):
    """MetaOptNet, then ProtoNet, each for `budget` seconds: reproduce.py's metaoptnet_conv4
    row (training, the frozen test set, the card) and the same row with ProtoNet."""
    import reproduce
    from metalearn.meta import ProtoNet, models

    argv = ["--budget", str(args.budget), "--threads", str(args.threads)]
    argv += ["--seed", str(args.seed), "--ridge", str(args.ridge), "--verbose", "0"]
    if args.cards:
        argv += ["--cards", args.cards]
    if args.quick:
        argv += ["--quick", "--episodes", "2"]
    ns = reproduce.parse_args(argv)
    reproduce.set_threads(ns)
    for name in args.only or ("MetaOptNet", "ProtoNet"):
        # the budget (and ridge) in the card's name: reproduce.py's own 300 s row keeps its card
        ns.card_tag = f"-{args.budget:g}s"
        if name == "MetaOptNet":
            ns.card_tag += f"-ridge{args.ridge:g}"
            reproduce.metaoptnet_conv4(ns)
        else:  # ProtoNet on the same episodes, meta-batch and budget
            make = lambda: ProtoNet(models.conv4())  # noqa: E731
            reproduce.episode_row(ns, "protonet_conv4_budget", make, 5, 1, 5, 8)


def torch_head(torch, s, y1h, q, c, iters):
    """The same unrolled solver as metalearn.meta.svm_dual, in PyTorch."""

    def project(v):
        u, _ = torch.sort(v, dim=1, descending=True)
        css = torch.cumsum(u, dim=1) - 1.0
        k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
        rho = (u - css / k > 0).sum(1, keepdim=True)
        return torch.clamp(v - torch.gather(css, 1, rho - 1) / rho, min=0.0)

    K = s @ s.T
    step = 1.0 / torch.sqrt((K * K).sum() + 1e-12)
    descent = torch.eye(len(K)) - step * K
    shift = step * (y1h / c - K @ y1h)
    u = z = y1h
    t = 1.0
    for _ in range(iters):
        u_new = project(descent @ z - shift)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = u_new + ((t - 1.0) / t_new) * (u_new - u)
        u, t = u_new, t_new
    return (q @ s.T) @ (c * (y1h - u))


def speed(args):
    import torch

    import metalearn as ml
    from metalearn import _core
    from metalearn.meta import svm_logits

    torch.set_num_threads(1)
    _core.set_num_threads(1)
    rng = np.random.default_rng(0)
    s = rng.standard_normal((25, 64)).astype(np.float32)
    q = rng.standard_normal((75, 64)).astype(np.float32)
    y = np.repeat(np.arange(5), 5)
    y1h = np.eye(5, dtype=np.float32)[y]
    for iters in (15, 50):
        sv = ml.Variable(s)
        qt = _core.as_tensor(q)

        def ours():
            _core.grad(_core.reduce_sum(svm_logits(sv, y, qt, 5, 0.1, 1.0, iters)), [sv])

        st = torch.from_numpy(s).requires_grad_()
        qtt, yt = torch.from_numpy(q), torch.from_numpy(y1h)

        def peer():
            torch.autograd.grad(torch_head(torch, st, yt, qtt, 0.1, iters).sum(), [st])

        best = {"ours": math.inf, "torch": math.inf}
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            for key, fn in (("ours", ours), ("torch", peer)):
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)
        print(
            f"SVM head fwd+bwd, 25 support x 64-d, {iters} steps: metalearn "
            f"{1e3 * best['ours']:.2f} ms, PyTorch {1e3 * best['torch']:.2f} ms, "
            f"ratio {best['ours'] / best['torch']:.2f}",
            flush=True,
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("run", "speed"))
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--ridge", type=float, default=0.0, help="MetaOptNet's ridge (authors': 1.0)")
    p.add_argument("--only", nargs="*", choices=("MetaOptNet", "ProtoNet"))
    p.add_argument("--cards", default=None, help="a folder for result cards (metalearn.report)")
    p.add_argument("--quick", action="store_true", help="run: 3 iterations, 2 test episodes")
    args = p.parse_args(argv)
    run(args) if args.what == "run" else speed(args)


if __name__ == "__main__":
    main()
