"""MetaOptNet's SVM head (Lee et al. 2019): a reproduction run within a wall-clock budget and
the head's speed beside a PyTorch peer.

    python benchmarks/metaoptnet.py run [--budget 600] [--threads 1] [--ridge 1.0]
                                        [--only MetaOptNet]
        conv4 on Omniglot 5-way 1-shot (the Vinyals split), trained for `budget` seconds
        (5 queries per class, meta-batch 8, Adam 1e-3, C = 0.1, 15 solver steps), then
        ProtoNet for the same budget and sampler; both tested on 600 episodes of the test
        characters (15 queries per class). The paper reports no Omniglot number (its
        tables: miniImageNet, tieredImageNet, CIFAR-FS, FC100).

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


def run(args):
    import metalearn as ml
    from metalearn import _core
    from metalearn.datasets import omniglot
    from metalearn.meta import MetaOptNet, ProtoNet, models
    from metalearn.tasks import NWayKShot

    _core.set_num_threads(args.threads)
    (x, y), (xt, yt) = omniglot(split="vinyals_trainval"), omniglot(split="vinyals_test")
    learners = {
        "MetaOptNet": lambda: MetaOptNet(models.conv4(), C=0.1, solver_steps=15, ridge=args.ridge),
        "ProtoNet": lambda: ProtoNet(models.conv4()),
    }
    for name in args.only or list(learners):
        make = learners[name]
        ml.random.set_seed(args.seed)
        learner = make()
        t0 = time.perf_counter()
        h = learner.fit(
            NWayKShot((x, y), 5, 1, 5, seed=args.seed),
            iterations=10**9,
            meta_batch_size=8,
            verbose=0,
            time_budget=args.budget,
        )
        seconds = time.perf_counter() - t0
        res = learner.evaluate(NWayKShot((xt, yt), 5, 1, 15, seed=args.seed + 1), episodes=600)
        print(
            f"{name}{f' ridge={args.ridge}' if name == 'MetaOptNet' else ''}: conv4, Omniglot 5-way 1-shot, {len(h['loss'])} meta-batches of 8 in "
            f"{seconds:.0f} s: {100 * res['accuracy']:.1f} +- {100 * res['ci95']:.1f} %",
            flush=True,
        )


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
    args = p.parse_args(argv)
    run(args) if args.what == "run" else speed(args)


if __name__ == "__main__":
    main()
