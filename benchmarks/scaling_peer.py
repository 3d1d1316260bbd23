"""The PyTorch peer of benchmarks/scaling.py: the same two workloads data-parallel with
``torch.distributed`` (gloo, one process per rank, gradients all-reduced once per
meta-step as learn2learn's ``examples/vision/distributed_maml.py`` does through cherry's
``Distributed`` optimizer: one flat all-reduce of the summed gradients, then Adam on every
rank), beside metalearn's DataParallel under mpiexec, alternated, min of the rounds.

    python benchmarks/scaling_peer.py                      # both, P = 1 and 2, the table
    python benchmarks/scaling_peer.py --torch-python /path/to/python-with-torch \\
        --ml-python /path/to/python-with-mpi4py

The two sides need different extras (mpi4py for metalearn, torch for the peer), so each
runs in its own processes: metalearn as ``mpiexec -n P python benchmarks/scaling.py``,
PyTorch as ``python benchmarks/scaling_peer.py --worker --procs P`` (which spawns its P
ranks on 127.0.0.1). Workloads, synthetic data of Omniglot's shape as in scaling.py:
MAML second order on the paper's MLP (256-128-64-64 + batch norm), 5-way 1-shot, 15
queries, meta-batch 32; ProtoNet conv4, 20-way 5-shot, 5 queries, meta-batch 2.
Prints ms per meta-step for each side and P, the speed-up of P = 2 over P = 1 for each,
and the ratio PyTorch / metalearn (> 1: metalearn is faster).
"""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

MAML_ROW = "MAML Omniglot MLP 5w1s, batch 32"
PROTO_ROW = "ProtoNet conv4 20w5s, batch 2"


# ------------------------------------------------------------------ the PyTorch peer
def _omniglot_like(classes=200, per=20, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((classes * per, 28, 28, 1), dtype=np.float32)
    return x, np.repeat(np.arange(classes), per)


def _episode(rng, x, y, n_way, k_shot, q):
    """One N-way K-shot episode drawn from (x, y) as NWayKShot draws it (classes without
    replacement, then examples without replacement), NCHW tensors."""
    import numpy as np
    import torch

    classes = rng.choice(np.unique(y), n_way, replace=False)
    s, qs = [], []
    for c in classes:
        idx = rng.choice(np.flatnonzero(y == c), k_shot + q, replace=False)
        s.append(idx[:k_shot])
        qs.append(idx[k_shot:])
    s, qs = np.concatenate(s), np.concatenate(qs)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(x[a].transpose(0, 3, 1, 2)))

    return (
        t(s),
        torch.from_numpy(np.repeat(np.arange(n_way), k_shot)),
        t(qs),
        torch.from_numpy(np.repeat(np.arange(n_way), q)),
    )


def _mlp(torch, n_way=5):
    nn = torch.nn
    layers, width = [nn.Flatten()], 784
    for units in (256, 128, 64, 64):
        layers += [nn.Linear(width, units), nn.BatchNorm1d(units, eps=1e-3, momentum=0.01)]
        layers += [nn.ReLU()]
        width = units
    return nn.Sequential(*layers, nn.Linear(width, n_way))


def _conv4(torch):
    sys.path.insert(0, HERE)
    from run_all import torch_conv4

    return torch_conv4(torch.nn)


def _worker(rank, procs, port, steps, warmup, out):
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.func import functional_call

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=procs
    )
    x, y = _omniglot_like()
    F = torch.nn.functional
    comm = [0.0]

    def all_reduce_mean(params, batch):
        # one flat buffer, summed over ranks, divided by the meta-batch
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        t = time.perf_counter()
        dist.all_reduce(flat)
        comm[0] += time.perf_counter() - t
        flat /= batch
        i = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[i : i + n].view_as(p))
            i += n

    def maml_step(model, opt, rng, batch):
        params = dict(model.named_parameters())
        opt.zero_grad()
        for _ in range(batch // procs):  # this rank's block of the meta-batch
            sx, sy, qx, qy = _episode(rng, x, y, 5, 1, 15)
            loss = F.cross_entropy(functional_call(model, params, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            fast = {k: w - 0.4 * g for (k, w), g in zip(params.items(), grads)}
            F.cross_entropy(functional_call(model, fast, (qx,)), qy).backward()
        all_reduce_mean(list(model.parameters()), batch)
        opt.step()

    def proto_step(model, opt, rng, batch):
        opt.zero_grad()
        for _ in range(batch // procs):
            sx, _, qx, qy = _episode(rng, x, y, 20, 5, 5)
            emb = model(torch.cat([sx, qx]))
            protos = emb[: len(sx)].reshape(20, 5, -1).mean(1)
            logits = -torch.cdist(emb[len(sx) :], protos).pow(2)
            F.cross_entropy(logits, qy).backward()
        all_reduce_mean(list(model.parameters()), batch)
        opt.step()

    rows = []
    for name, make, step, batch, n in (
        (MAML_ROW, _mlp, maml_step, 32, steps),
        (PROTO_ROW, _conv4, proto_step, 2, max(2, steps // 2)),
    ):
        torch.manual_seed(0)
        model = make(torch)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(1000 + rank)  # a rank's own task stream
        for _ in range(warmup):
            step(model, opt, rng, batch)
        dist.barrier()
        comm[0] = 0.0
        t = time.perf_counter()
        for _ in range(n):
            step(model, opt, rng, batch)
        wall = time.perf_counter() - t
        rows.append((name, 1000 * wall / n, 1000 * comm[0] / n))
    if rank == 0:
        with open(out, "w") as f:
            for name, ms, cms in rows:
                f.write(f"{name}\t{ms}\t{cms}\n")
    dist.destroy_process_group()


def torch_side(procs, steps, warmup):
    import tempfile

    import torch.multiprocessing as mp

    port = 29500 + (os.getpid() % 1000)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.tsv")
        mp.spawn(_worker, args=(procs, port, steps, warmup, out), nprocs=procs, join=True)
        with open(out) as f:
            for line in f:
                name, ms, cms = line.rstrip("\n").split("\t")
                print(
                    f"{name:<34s} P={procs}  {float(ms):8.1f} ms/step  communication {float(cms):6.1f} ms/step"
                )


# ------------------------------------------------------------------------ the driver
_ROW = re.compile(r"^(.+?)\s+P=(\d+)\s+([\d.]+) ms/step")


def _rows(text):
    return {
        (m.group(1).strip(), int(m.group(2))): float(m.group(3))
        for m in map(_ROW.match, text.splitlines())
        if m
    }


def _run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return _rows(out.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--worker", action="store_true", help="run the PyTorch side only (--procs ranks)"
    )
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two sides")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--torch-python", default=sys.executable)
    p.add_argument("--ml-python", default=sys.executable)
    p.add_argument("--mpiexec", default="mpiexec")
    args = p.parse_args(argv)
    if args.worker:
        return torch_side(args.procs, args.steps, args.warmup)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", METALEARN_NUM_THREADS="1")
    best = {}
    for _ in range(args.rounds):
        for procs in args.ranks:
            extra = ["--oversubscribe"] if procs > (os.cpu_count() or 1) else []
            ml = _run(
                [
                    args.mpiexec,
                    "-n",
                    str(procs),
                    *extra,
                    args.ml_python,
                    os.path.join(HERE, "scaling.py"),
                    "--steps",
                    str(args.steps),
                ],
                env,
            )
            th = _run(
                [
                    args.torch_python,
                    os.path.abspath(__file__),
                    "--worker",
                    "--procs",
                    str(procs),
                    "--steps",
                    str(args.steps),
                ],
                env,
            )
            for side, rows in (("metalearn", ml), ("torch", th)):
                for (name, pp), ms in rows.items():
                    key = (side, name, pp)
                    best[key] = min(best.get(key, float("inf")), ms)
    print(f"\n{'workload':<34s} {'P':>2s} {'metalearn ms':>13s} {'torch ms':>9s} {'ratio':>6s}")
    for name in (MAML_ROW, PROTO_ROW):
        for procs in args.ranks:
            m, t = best.get(("metalearn", name, procs)), best.get(("torch", name, procs))
            if m is None or t is None:
                continue
            print(f"{name:<34s} {procs:2d} {m:13.1f} {t:9.1f} {t / m:5.2f}x")
        lo, hi = min(args.ranks), max(args.ranks)
        if lo != hi:
            for side in ("metalearn", "torch"):
                a, b = best.get((side, name, lo)), best.get((side, name, hi))
                if a and b:
                    print(
                        f"  {side}: speed-up P={hi} over P={lo} {a / b:.2f}x (efficiency {a / b / (hi / lo):.0%})"
                    )


if __name__ == "__main__":
    main()
