"""Run by tests/distributed (under mpiexec or alone): a short meta-training under a
DataParallel strategy (or a plain fit), rank 0 writing the final weights and losses.

    python _fit_script.py ALGO MODE META_BATCH OUT.npz [CHECKPOINT_DIR ITERATIONS]
    (MODE: dp, plain, fail or stop)
"""

import contextlib
import sys

import numpy as np

import metalearn as ml
from metalearn import distributed, keras
from metalearn.meta import ANIL, MAML, MetaSGD, ProtoNet, Reptile


def classification_sampler(seed):
    rng = np.random.default_rng(123)
    x = rng.standard_normal((10 * 8, 6)).astype(np.float32)  # 10 classes of 8 examples
    y = np.repeat(np.arange(10), 8)
    return ml.tasks.NWayKShot(
        (x, y), n_way=3, k_shot=2, q_queries=3, augment_rotations=False, seed=seed
    )


def image_sampler(seed):
    """uint8 images, turned into new classes and augmented: the sampler draws the rotations
    and each image's augmentation from its stream, which every rank must move alike."""
    rng = np.random.default_rng(321)
    x = rng.integers(0, 256, (12 * 6, 8, 8, 1), dtype=np.uint8)  # 12 classes of 6 images
    y = np.repeat(np.arange(12), 6)
    aug = ml.tasks.Augment(pad=1, flip=True, brightness=0.2)
    return ml.tasks.NWayKShot((x, y), 3, 2, 3, seed=seed, augment=aug)


def main(algo, mode, meta_batch, out, checkpoint_dir=None, iterations=4):
    ml.random.set_seed(0)
    if algo in ("protonet-images", "protonet-rotations"):
        enc = keras.Sequential([keras.layers.Flatten(input_shape=(8, 8, 1)), keras.layers.Dense(8)])
        learner = ProtoNet(enc, meta_optimizer="sgd", meta_lr=0.1)
        tasks = image_sampler(0)
        if algo == "protonet-rotations":  # the same images, float32, rotations only
            tasks = ml.tasks.NWayKShot((tasks.x.astype(np.float32) / 255, tasks.y), 3, 2, 3, seed=0)
        model = enc
    elif algo == "protonet":
        enc = keras.Sequential(
            [keras.layers.Dense(16, activation="relu", input_shape=(6,)), keras.layers.Dense(8)]
        )
        # SGD: the last bias gets a zero gradient (distances ignore a shift), which Adam
        # would blow up from rounding noise to a full step
        learner = ProtoNet(enc, meta_optimizer="sgd", meta_lr=0.1)
        tasks = classification_sampler(0)
        model = enc
    else:
        model = keras.Sequential(
            [
                keras.layers.Dense(20, activation="relu", input_shape=(1,)),
                keras.layers.Dense(20, activation="relu"),
                keras.layers.Dense(1),
            ]
        )
        if mode == "dp" and distributed.rank() > 0:
            # the other ranks start elsewhere: fit must broadcast rank 0's weights
            model(np.zeros((1, 1), np.float32))
            model.set_weights([w + 1.0 for w in model.get_weights()])
        cls = {"maml": MAML, "fomaml": MAML, "metasgd": MetaSGD, "anil": ANIL, "reptile": Reptile}
        kwargs = {"first_order": True} if algo == "fomaml" else {}
        learner = Reptile(model) if algo == "reptile" else cls[algo](model, inner_lr=0.01, **kwargs)
        tasks = ml.tasks.Sinusoid(k_shot=5, q_queries=5, seed=0)
    scope = distributed.DataParallel(check_every=2).scope() if mode != "plain" else None
    kwargs = {}
    if checkpoint_dir:  # exact resume: this run goes to `iterations` from the checkpoint
        kwargs = {"checkpoint_dir": checkpoint_dir, "checkpoint_every": 1}
    if mode == "stop":  # rank 1 alone asks to stop after the second meta-step

        def stop_on_rank_1(it, logs):
            if distributed.rank() == 1 and it == 1:
                model.stop_training = True

        kwargs["callbacks"] = [stop_on_rank_1]
    with scope or contextlib.nullcontext():
        if mode == "fail" and distributed.rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
        hist = learner.fit(
            tasks, iterations=iterations, meta_batch_size=meta_batch, verbose=0, **kwargs
        )
    if distributed.size() > 1:  # every rank ran the same iterations
        assert len(set(distributed.comm().allgather(len(hist["loss"])))) == 1
    if distributed.is_root():
        arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        np.savez(out, loss=np.asarray(hist["loss"]), size=distributed.size(), **arrays)


if __name__ == "__main__":
    extra = sys.argv[5:7]
    main(
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        sys.argv[4],
        extra[0] if extra else None,
        int(extra[1]) if len(extra) > 1 else 4,
    )
