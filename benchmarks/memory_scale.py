"""Knowledge memory at scale (issue 26): write throughput, memory-mapped open, and approximate
search on conv4 embeddings of Omniglot, beside FAISS (`faiss-cpu`, optional: never imported
by the library).

    python benchmarks/memory_scale.py [--entries 1000000] [--dim 128] [--batch 20000]
        [--rounds 3] [--nlist 0] [--update 256] [--nprobe 4] [--no-mmap | --mmap-only]
    python benchmarks/memory_scale.py --omniglot [--train-seconds 180] [--nlist 0]
        [--queries 300] [--rounds 3] [--embeddings emb.npy] [--clock wall|cpu]
        [--faiss-lists own|ours]

Writes (one thread each, the same normalised keys of a seeded 1,000-cluster Gaussian
mixture):
  * filling:  `add` of --entries keys into an empty memory, beside FAISS IndexFlatIP.add and
    (after training both coarse quantisers on the same number of keys, nlist = 4 sqrt(N)
    unless given, 32 keys per list, 5 rounds) IndexIVFFlat.add: keys/s of one pass each;
  * at size:  `add` of --batch fresh keys into the full memory, exact and on an IVF index,
    beside FAISS `add` of the same keys; interleaved rounds (round r times each contender
    once, then removes what it added, untimed), medians;
  * `update` (the Kaiser rule: search, then merge or overwrite) of --update keys into the
    full memory, exact and on the index (--nprobe): FAISS has no update rule.
Memory-mapped open: the filled memory is saved, then `KnowledgeMemory.open(path)` (read into
RAM) and `open(path, mmap_mode="r")` (checked, searched in place) are timed, and the mapped
memory's single query is timed against the loaded one's.

--omniglot: a conv4 (64 filters, the ProtoNet/MAML encoder) trained with ProtoNet on
Omniglot background for --train-seconds (seeded), then every image of both splits with its
4 rotations and their horizontal flips (8 views) is embedded and L2-normalised into one
memory; exact search against IVF (recall@8 against exact, single-query q/s at one thread,
ratio to exact) beside FAISS IndexIVFFlat at the same nprobe (the queries: held-out views,
one per image sampled, not in the memory). --faiss-lists ours gives FAISS our centroids
(quantizer.add, no training): both indexes hold the same lists and reach the same recall at
each nprobe, so the speeds compare the searches alone (as memory_ann.py's option).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import metalearn as ml  # noqa: E402
from metalearn.memory import KnowledgeMemory  # noqa: E402

try:
    import faiss  # optional: pip install faiss-cpu
except ImportError:  # pragma: no cover
    faiss = None


def mixture(n, d, n_clusters, spread, rng, centres=None, chunk=100_000):
    """n unit points of a seeded Gaussian mixture, made in chunks (float32)."""
    if centres is None:
        centres = rng.standard_normal((n_clusters, d))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, d), np.float32)
    which = rng.integers(0, n_clusters, n)
    for i in range(0, n, chunk):
        w = which[i : i + chunk]
        x = centres[w] + spread * rng.standard_normal((len(w), d)) / np.sqrt(d)
        out[i : i + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, which, centres


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


CLOCK = time.perf_counter  # --clock cpu: time.thread_time


def qps(search, queries, min_time=0.3):
    """Single queries per second, cycling through `queries`, over >= min_time of CLOCK (wall
    time, or the CPU time of this thread with --clock cpu: on a shared machine, the time the
    search ran rather than the time it waited for a core)."""
    n, t0 = 0, CLOCK()
    while True:
        search(queries[n % len(queries)][None])
        n += 1
        dt = CLOCK() - t0
        if dt >= min_time:
            return n / dt


def recall(a, b):
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


def med(xs):
    return statistics.median(xs)


# ------------------------------------------------------------------ writes and mmap


def writes(a):
    rng = np.random.default_rng(0)
    n, d = a.entries, a.dim
    nlist = a.nlist or int(4 * np.sqrt(n))
    print(f"data: {n} x {d} keys, 1000 clusters, spread 0.8; nlist {nlist}; one thread")
    x, which, centres = mixture(n, d, 1000, 0.8, rng)
    fresh, fresh_y, _ = mixture(a.rounds * a.batch, d, 1000, 0.8, rng, centres)
    upd, upd_y, _ = mixture(a.update, d, 1000, 0.8, rng, centres)
    ml.set_num_threads(1)
    if faiss:
        faiss.omp_set_num_threads(1)

    rows = []
    cap = n + a.rounds * a.batch  # room to append every round's batch
    mem = KnowledgeMemory(cap, d, seed=0)
    step = 100_000
    t = sum(
        timed(lambda i=i: mem.add(x[i : i + step], which[i : i + step])) for i in range(0, n, step)
    )
    rows.append(("exact `add`, filling 0 -> N", n / t, None))
    if faiss:
        flat = faiss.IndexFlatIP(d)
        t = timed(lambda: flat.add(x))
        rows[-1] = rows[-1][:2] + (n / t,)

    train_n = 32 * nlist
    if a.mmap_only:
        return mapped_open(a, mem, fresh)
    mem_ivf = KnowledgeMemory(cap, d, seed=0)  # a second memory, with the index
    for i in range(0, n, step):
        mem_ivf.add(x[i : i + step], which[i : i + step])
    t_build = timed(
        lambda: mem_ivf.build_index(nlist, nprobe=a.nprobe, seed=0, n_iter=5, sample=train_n)
    )
    print(f"metalearn build_index: {t_build:.1f} s (sample {train_n}, 5 rounds)")
    if faiss:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 5
        sample = x[rng.permutation(n)[:train_n]]
        t_train = timed(lambda: ivf.train(sample))
        t = timed(lambda: ivf.add(x))
        print(f"FAISS IndexIVFFlat train: {t_train:.1f} s; add of {n}: {t:.1f} s")
        rows.append(("IVF `add`, filling 0 -> N (FAISS only)", None, n / t))

    # at size: interleaved rounds, each appending --batch fresh keys to every contender
    # (into empty slots: `add` into a full memory overwrites the oldest slot, a scan of the
    # ages per key, and FAISS has no such rule)
    ours_exact, ours_ivf, f_flat, f_ivf = [], [], [], []
    for r in range(a.rounds):
        b = fresh[r * a.batch : (r + 1) * a.batch]
        by = fresh_y[r * a.batch : (r + 1) * a.batch]
        ours_exact.append(a.batch / timed(lambda: mem.add(b, by)))
        ours_ivf.append(a.batch / timed(lambda: mem_ivf.add(b, by)))
        if faiss:
            f_flat.append(a.batch / timed(lambda: flat.add(b)))
            f_ivf.append(a.batch / timed(lambda: ivf.add(b)))
    rows.append((f"exact `add` of {a.batch} at N", med(ours_exact), med(f_flat) if faiss else None))
    rows.append((f"IVF `add` of {a.batch} at N", med(ours_ivf), med(f_ivf) if faiss else None))

    # the update rule at size (each call writes: merges and overwrites)
    up_exact, up_ivf = [], []
    for _ in range(a.rounds):
        up_exact.append(a.update / timed(lambda: mem.update(upd, upd_y)))
        up_ivf.append(a.update / timed(lambda: mem_ivf.update(upd, upd_y)))
    rows.append((f"exact `update` (Kaiser rule) of {a.update} at N", med(up_exact), None))
    rows.append((f"IVF `update` of {a.update} at N, nprobe {a.nprobe}", med(up_ivf), None))
    mem_ivf.close()  # its keys and lists: not needed for the mapped open

    print(f"\n| write, {n} x {d} | metalearn keys/s | FAISS keys/s | ratio |")
    print("|---|---|---|---|")
    for name, ours, theirs in rows:
        o = f"{ours:,.0f}" if ours else "–"
        f = f"{theirs:,.0f}" if theirs else "–"
        r = f"{ours / theirs:.2f}x" if ours and theirs else ""
        print(f"| {name} | {o} | {f} | {r} |")

    if not a.no_mmap:
        mapped_open(a, mem, fresh)


def mapped_open(a, mem, fresh):
    """Saves `mem`, then times open() against open(mmap_mode="r") and their queries."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.mlm")
        t_save = timed(lambda: mem.save(path))
        size = os.path.getsize(path)
        t_load, t_map, q_load, q_map = [], [], [], []
        qs = fresh[:200]
        for _ in range(a.rounds):
            t_load.append(timed(lambda: KnowledgeMemory.open(path)))
            t_map.append(timed(lambda: KnowledgeMemory.open(path, mmap_mode="r").close()))
        loaded = KnowledgeMemory.open(path)
        mapped = KnowledgeMemory.open(path, mmap_mode="r")
        same = all(
            np.array_equal(u, v) for u, v in zip(loaded.query(qs[:8], 8), mapped.query(qs[:8], 8))
        )
        for _ in range(a.rounds):
            q_load.append(qps(lambda v: loaded.query(v, 8), qs))
            q_map.append(qps(lambda v: mapped.query(v, 8), qs))
        print(f"\nfile: {size / 1e6:.0f} MB (version 2), save {t_save:.2f} s")
        print("| memory-mapped open | seconds / q/s |")
        print("|---|---|")
        print(
            f"| open(path): read into RAM | {med(t_load):.2f} s ({size / med(t_load) / 1e9:.2f} GB/s) |"
        )
        print(
            f"| open(path, mmap_mode='r'): checked, mapped | {med(t_map):.2f} s ({size / med(t_map) / 1e9:.2f} GB/s) |"
        )
        print(f"| exact single query, loaded | {med(q_load):,.1f} q/s |")
        print(
            f"| exact single query, mapped (page cache hot) | {med(q_map):,.1f} q/s ({med(q_map) / med(q_load):.2f}x) |"
        )
        print(f"| same indices and similarities | {same} |")
        mapped.close()


# ------------------------------------------------------------------ Omniglot embeddings


def omniglot(a):
    from metalearn.datasets import omniglot as load
    from metalearn.keras.utils import set_random_seed
    from metalearn.meta import ProtoNet, models
    from metalearn.tasks import NWayKShot

    if a.embeddings and os.path.exists(a.embeddings):
        emb = np.load(a.embeddings)  # a previous run's (--embeddings): no training
        print(f"embeddings: {a.embeddings}, {emb.shape[0]} x {emb.shape[1]}")
        return search_embeddings(a, emb)
    set_random_seed(0)
    ml.set_num_threads(a.threads)
    x_bg, y_bg = load(split="background")
    x_ev, _ = load(split="evaluation")
    # train: 20-way 5-shot episodes of background with rotated classes, as ProtoNets
    encoder = models.conv4()
    proto = ProtoNet(encoder, meta_lr=1e-3)
    tasks = NWayKShot((x_bg, y_bg), n_way=20, k_shot=5, q_queries=5, augment_rotations=True, seed=0)
    t0, episodes = time.perf_counter(), 0
    while time.perf_counter() - t0 < a.train_seconds:
        proto.fit(tasks, iterations=10, meta_batch_size=1, verbose=0)
        episodes += 10
    print(
        f"conv4 ProtoNet: {episodes} episodes (20-way 5-shot) in {time.perf_counter() - t0:.0f} s"
    )
    # every image of both sets, 4 rotations x (as is, flipped): 8 views
    images = np.concatenate([x_bg, x_ev])
    if a.images:
        images = images[np.random.default_rng(0).permutation(len(images))[: a.images]]
    views = []
    for r in range(4):
        rot = np.rot90(images, r, axes=(1, 2))
        views += [rot, rot[:, :, ::-1]]
    t0 = time.perf_counter()
    emb = []
    for v in views:
        for i in range(0, len(v), 512):
            emb.append(encoder.predict_on_batch(np.ascontiguousarray(v[i : i + 512])))
    emb = np.concatenate(emb).reshape(len(images) * 8, -1).astype(np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n, d = emb.shape
    print(
        f"embedded {n} views ({len(images)} images x 8) to {d} floats in {time.perf_counter() - t0:.0f} s"
    )
    if a.embeddings:
        np.save(a.embeddings, emb)
    search_embeddings(a, emb)


def search_embeddings(a, emb):
    n, d = emb.shape

    ml.set_num_threads(1)
    if faiss:
        faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    held = rng.permutation(n)[: a.queries]  # queries: views held out of the memory
    keep = np.setdiff1d(np.arange(n), held)
    keys, q = emb[keep], emb[held]
    mem = KnowledgeMemory.from_arrays(keys, np.zeros(len(keys), np.int64))
    nlist = a.nlist or int(4 * np.sqrt(len(keys)))
    exact = mem.query(q, 8, nprobe="exact")[0]
    t = timed(lambda: mem.build_index(nlist, nprobe=1, seed=0))
    print(f"memory: {len(keys)} x {d}; nlist {nlist}; build_index {t:.1f} s")
    fx = None
    if faiss:
        fx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        if a.faiss_lists == "ours":  # the same lists: the search alone is compared
            fx.quantizer.add(np.ascontiguousarray(mem.index.centroids, dtype=np.float32))
            fx.is_trained = True
            t = timed(lambda: fx.add(keys))
        else:
            t = timed(
                lambda: (fx.train(keys[rng.permutation(len(keys))[: 64 * nlist]]), fx.add(keys))
            )
        print(f"FAISS IndexIVFFlat ({a.faiss_lists} lists) train + add: {t:.1f} s")
    q_exact = med([qps(lambda v: mem.query(v, 8, nprobe="exact"), q) for _ in range(a.rounds)])
    print(f"\nexact single query: {q_exact:,.0f} q/s (one thread)")
    at_target = {}  # the smallest nprobe reaching recall@8 >= 0.95, per index
    print(
        "\n| nprobe | metalearn recall@8 | q/s | vs exact | FAISS recall@8 | FAISS q/s | ours / FAISS |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= nlist]:
        r = recall(mem.query(q, 8, nprobe=p)[0], exact)
        ours, theirs, rf = [], [], None
        if fx is not None:
            fx.nprobe = p
            rf = recall(fx.search(q, 8)[1], exact)
        for _ in range(a.rounds):
            ours.append(qps(lambda v, p=p: mem.query(v, 8, nprobe=p), q))
            if fx is not None:
                theirs.append(qps(lambda v: fx.search(v, 8), q))
        o = med(ours)
        f = f"{rf:.4f} | {med(theirs):,.0f} | {o / med(theirs):.2f}x" if fx else "– | – | –"
        print(f"| {p} | {r:.4f} | {o:,.0f} | {o / q_exact:.0f}x | {f} |")
        if r >= 0.95:
            at_target.setdefault("metalearn", (p, r, o))
        if fx is not None and rf >= 0.95:
            at_target.setdefault("FAISS", (p, rf, med(theirs)))
    for name, (p, r, o) in at_target.items():
        print(
            f"at recall@8 >= 0.95: {name} nprobe {p}, recall {r:.4f}, {o:,.0f} q/s, {o / q_exact:.0f}x our exact"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--update", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--nprobe", type=int, default=4)
    ap.add_argument("--no-mmap", action="store_true")
    ap.add_argument("--mmap-only", action="store_true", help="fill, then only the mapped open")
    ap.add_argument("--omniglot", action="store_true")
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="training and embedding (--omniglot)")
    ap.add_argument("--images", type=int, default=0, help="a sample of the images (smoke runs)")
    ap.add_argument(
        "--embeddings",
        default="",
        help="(--omniglot) .npy: saved after embedding, loaded if it exists",
    )
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument(
        "--faiss-lists",
        choices=["own", "ours"],
        default="own",
        help="(--omniglot) FAISS trains its own centroids, or is given ours",
    )
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.thread_time if a.clock == "cpu" else time.perf_counter
    print(f"faiss: {faiss.__version__ if faiss else 'not installed'}")
    if a.omniglot:
        omniglot(a)
    else:
        writes(a)


if __name__ == "__main__":
    main()
