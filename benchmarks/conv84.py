"""The 84x84x3 rows of the conv speed issue: metalearn against PyTorch 2.13 eager,
interleaved in one process (run_all.interleaved: medians of alternating chunks), and the
peak memory of the MAML row measured in separate processes, one per library.

    python benchmarks/conv84.py                       # every row, one thread
    python benchmarks/conv84.py --rows maml --quick
    python benchmarks/conv84.py --peak                # peak memory only (three processes)

Rows (synthetic images: speed does not depend on pixel values):
  maml      MAML conv4-32 (MAML's mini-ImageNet net: 4 x [Conv 3x3 32, BN, ReLU,
            MaxPool 2]), 84x84x3, 5-way 1-shot, 15 queries, meta-batch 4, 5 inner steps
            (lr 0.01), second order, Adam; PyTorch: a functional loop over tasks
            (F.conv2d, F.batch_norm in training mode, create_graph=True). The row also
            times metalearn with gradient_checkpointing=True (the tasks one at a time,
            each inner step re-run backwards), interleaved with the default, and prints
            the checkpointed / default time ratio of their least times.
  proto30   ProtoNet conv4-64, 84x84x3, a 30-way 1-shot training episode, 15 queries.
  resnet12  ProtoNet ResNet-12 (MetaOptNet's 64-160-320-640), 84x84x3, 5-way 5-shot, 15
            queries: one training episode.

Peak memory: each library runs the maml row's step in its own process (``--child``),
and so does metalearn with gradient_checkpointing=True; the figure is the peak resident
set (VmHWM: ru_maxrss would start at the parent's size) minus the resident set after
imports and the model's build, so the libraries' own sizes do not count. The metalearn child also
reports the core's storage counter at its peak (``_core._storage_stats``: tensor storage in
use, in buffer-pool classes, so up to 25 % above the bytes touched).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from conv_maml import torch_forward  # noqa: E402
from run_all import add_malloc_option, interleaved, set_malloc, set_threads, torch, torch_conv4  # noqa: E402

import metalearn as ml  # noqa: E402

HW, C = 84, 3


def _images(n_classes, per_class, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n_classes * per_class, HW, HW, C)).astype(np.float32)
    return x, np.repeat(np.arange(n_classes), per_class)


def _batch(n_way, k_shot, q, mb, seed=0):
    """A fixed meta-batch (support and query per task, NHWC) and its labels."""
    rng = np.random.default_rng(seed)
    sx = rng.uniform(0, 1, size=(mb, n_way * k_shot, HW, HW, C)).astype(np.float32)
    qx = rng.uniform(0, 1, size=(mb, n_way * q, HW, HW, C)).astype(np.float32)
    sy = np.tile(np.repeat(np.arange(n_way), k_shot), (mb, 1))
    qy = np.tile(np.repeat(np.arange(n_way), q), (mb, 1))
    return sx, sy, qx, qy


# ------------------------------------------------------------------ MAML conv4-32
MAML = dict(n_way=5, k_shot=1, q=15, mb=4, steps=5, lr=0.01, filters=32)


def ml_maml(gradient_checkpointing=False):
    from metalearn.meta import MAML as Maml
    from metalearn.meta import models
    from metalearn.tasks import Task

    s = MAML
    batch = Task(*_batch(s["n_way"], s["k_shot"], s["q"], s["mb"]), info={"batched": True})
    ml.random.set_seed(0)
    model = models.conv4(s["n_way"], filters=s["filters"], input_shape=(HW, HW, C))
    maml = Maml(
        model,
        inner_lr=s["lr"],
        inner_steps=s["steps"],
        meta_lr=1e-3,
        gradient_checkpointing=gradient_checkpointing,
    )
    return lambda: maml.fit(batch, iterations=1, meta_batch_size=s["mb"], verbose=0)


def torch_maml():
    import torch.nn.functional as F

    s = MAML
    g = torch.Generator().manual_seed(0)
    params, cin, f = [], C, s["filters"]
    for _ in range(4):
        params.append((torch.randn(f, cin, 3, 3, generator=g) * 0.1).requires_grad_())
        params += [torch.zeros(f, requires_grad=True), torch.ones(f, requires_grad=True)]
        params.append(torch.zeros(f, requires_grad=True))
        cin = f
    params.append((torch.randn(s["n_way"], f * 5 * 5, generator=g) * 0.05).requires_grad_())
    params.append(torch.zeros(s["n_way"], requires_grad=True))
    opt = torch.optim.Adam(params, lr=1e-3)
    sx, sy, qx, qy = (torch.from_numpy(a) for a in _batch(s["n_way"], s["k_shot"], s["q"], s["mb"]))
    sx, qx = sx.permute(0, 1, 4, 2, 3).contiguous(), qx.permute(0, 1, 4, 2, 3).contiguous()

    def step():
        total = 0.0
        for i in range(s["mb"]):
            fast = params
            for _ in range(s["steps"]):
                loss = F.cross_entropy(torch_forward(fast, sx[i]), sy[i])
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [w - s["lr"] * gr for w, gr in zip(fast, grads)]
            total = total + F.cross_entropy(torch_forward(fast, qx[i]), qy[i])
        opt.zero_grad()
        (total / s["mb"]).backward()
        opt.step()

    return step


# ------------------------------------------------------------------ ProtoNet episodes
def ml_proto(backbone, n_way, k_shot, q):
    from metalearn.meta import ProtoNet, models
    from metalearn.tasks import Task

    batch = Task(*_batch(n_way, k_shot, q, 1), info={"batched": True})
    ml.random.set_seed(0)
    if backbone == "conv4":
        enc = models.conv4(filters=64, input_shape=(HW, HW, C))
    else:
        enc = models.resnet12(input_shape=(HW, HW, C))
    pn = ProtoNet(enc)
    pn._prepare(batch)
    return lambda: pn._meta_step(batch)


def _torch_resnet12(nn):
    class Block(nn.Module):
        def __init__(self, cin, f):
            super().__init__()
            self.convs = nn.ModuleList(
                [nn.Conv2d(cin if i == 0 else f, f, 3, padding=1, bias=False) for i in range(3)]
            )
            self.bns = nn.ModuleList([nn.BatchNorm2d(f, eps=1e-3, momentum=0.01) for _ in range(3)])
            self.short = nn.Sequential(
                nn.Conv2d(cin, f, 1, bias=False), nn.BatchNorm2d(f, eps=1e-3, momentum=0.01)
            )
            self.act, self.pool = nn.LeakyReLU(0.1), nn.MaxPool2d(2)

        def forward(self, x):
            h = x
            for i in range(3):
                h = self.bns[i](self.convs[i](h))
                if i < 2:
                    h = self.act(h)
            return self.pool(self.act(h + self.short(x)))

    blocks, cin = [], C
    for f in (64, 160, 320, 640):
        blocks.append(Block(cin, f))
        cin = f
    return nn.Sequential(*blocks, nn.Flatten())


def torch_proto(backbone, n_way, k_shot, q):
    torch.manual_seed(0)
    if backbone == "conv4":
        enc = torch_conv4(torch.nn, channels=C)
    else:
        enc = _torch_resnet12(torch.nn)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    sx, _, qx, qy = _batch(n_way, k_shot, q, 1)
    x = torch.from_numpy(np.concatenate([sx[0], qx[0]]).transpose(0, 3, 1, 2).copy())
    tqy = torch.from_numpy(qy[0])
    ns = n_way * k_shot

    def step():
        emb = enc(x)
        protos = emb[:ns].reshape(n_way, k_shot, -1).mean(1)
        logits = -torch.cdist(emb[ns:], protos).pow(2)
        loss = torch.nn.functional.cross_entropy(logits, tqy)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


ROWS = {
    "maml": (
        "MAML conv4-32 84x84 5w1s q15, meta-batch 4, 5 steps, 2nd order",
        ml_maml,
        torch_maml,
        ">= 3x",
    ),
    "proto30": (
        "ProtoNet conv4-64 84x84 30w1s q15 episode",
        lambda: ml_proto("conv4", 30, 1, 15),
        lambda: torch_proto("conv4", 30, 1, 15),
        ">= 2x",
    ),
    "resnet12": (
        "ProtoNet ResNet-12 84x84 5w5s q15 episode",
        lambda: ml_proto("resnet12", 5, 5, 15),
        lambda: torch_proto("resnet12", 5, 5, 15),
        ">= 1.5x",
    ),
}


# ------------------------------------------------------------------ peak memory
def _rss_mib():
    """This process's peak resident set. VmHWM is the process's own high-water mark;
    ru_maxrss starts at the parent's resident size (kept across fork and exec), so a
    child of a large parent (run_all.py after the maml84 row) reported the parent's size."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


SIDES = {
    "ml": lambda: ml_maml(),
    "ml-ckpt": lambda: ml_maml(gradient_checkpointing=True),
    "torch": lambda: torch_maml(),
}


def child(side):
    """One library's maml step, twice, in this process; prints JSON with the peak
    resident set above the resident set after imports and the build."""
    set_threads(1)
    step = SIDES[side]()
    base = _current_rss_mib()
    step()
    step()
    out = {"side": side, "peak_mib": _rss_mib() - base, "base_mib": base}
    if side != "torch":  # the core's own count: tensor storage at its most (pool classes)
        out["storage_peak_mib"] = ml._core._storage_stats()["peak"] / 2**20
    print(json.dumps(out))


def peak():
    out = {}
    for side in ("ml", "ml-ckpt", "torch") if torch is not None else ("ml", "ml-ckpt"):
        r = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", side],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if r.returncode != 0:
            raise SystemExit(f"the {side} child failed:\n{r.stderr}")
        out[side] = json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]
    line = f"peak memory, {ROWS['maml'][0]}: metalearn {out['ml']:.0f} MiB"
    line += (
        f", metalearn gradient_checkpointing=True {out['ml-ckpt']:.0f} MiB "
        f"({out['ml'] / out['ml-ckpt']:.2f}x less)"
    )
    if "torch" in out:
        line += f", PyTorch {out['torch']:.0f} MiB (ratio metalearn/PyTorch {out['ml'] / out['torch']:.2f})"
    print(line)
    return out


def _interleaved_rounds(fns, repeats):
    """(medians, per-round seconds): one warm-up call of each, then `repeats` rounds of one
    call of each, names interleaved (a step here takes seconds: one call is a chunk)."""
    for f in fns.values():
        f()
    rounds = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            rounds[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in rounds.items()}, rounds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--peak", action="store_true", help="only the peak-memory comparison")
    p.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    add_malloc_option(p)
    args = p.parse_args(argv)
    if args.child:  # peak memory as installed: glibc's defaults in each child
        return child(args.child)
    if args.peak:
        return peak()
    print(f"malloc: {set_malloc(args.malloc)}")
    set_threads(args.threads)
    for key in args.rows:
        name, ml_fn, torch_fn, target = ROWS[key]
        fns = {"ml": ml_fn()}
        if key == "maml":
            fns["ml-ckpt"] = ml_maml(gradient_checkpointing=True)
        if torch is not None and not args.no_torch:
            fns["torch"] = torch_fn()
        if key == "maml":  # seconds a step: one call a chunk, and every round's ratio
            t, rounds = _interleaved_rounds(fns, 2 if args.quick else 5)
        else:
            t = interleaved(fns, 0.5 if args.quick else 3.0, 2 if args.quick else 5, warmup=1)
        line = f"{name}, {args.threads} thread(s): metalearn {1000 * t['ml']:.0f} ms/step"
        if "ml-ckpt" in t:
            ratio = min(rounds["ml-ckpt"]) / min(rounds["ml"])
            line += (
                f", gradient_checkpointing=True {1000 * t['ml-ckpt']:.0f} ms/step "
                f"(time ratio checkpointed/default {ratio:.2f}, min of {len(rounds['ml'])} each)"
            )
        if "torch" in t:
            line += f", PyTorch {1000 * t['torch']:.0f} ms/step, ratio {t['torch'] / t['ml']:.2f}x (target {target})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
