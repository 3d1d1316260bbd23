"""Run by test_sharded_memory.py (under mpiexec or alone): MetaLearner.fit under a
DataParallel strategy, rank 0 writing the learner's and the predictor's weights, the
memory's state and the history to OUT.npz.

    python _system_script.py ALGO OUT.npz
"""

import sys

import numpy as np

import metalearn as ml
from metalearn import distributed
from metalearn.meta import MetaLearner


def main(algo, out):
    ml.random.set_seed(0 if distributed.rank() == 0 else 7)  # fit broadcasts rank 0's start
    rng = np.random.default_rng(123)
    x = rng.standard_normal((10 * 8, 6)).astype(np.float32)  # 10 classes of 8 examples
    y = np.repeat(np.arange(10), 8)
    tasks = ml.tasks.NWayKShot(
        (x, y), n_way=3, k_shot=2, q_queries=3, augment_rotations=False, seed=0
    )
    system = MetaLearner(
        n_way=3,
        algorithm=algo,
        hidden_units=16,
        memory_capacity=8,
        knowledge_steps=2,
        predictor=ml.networks.MetaLearningNetwork(16),
        predictor_batch=8,
        seed=0,
    )
    with distributed.DataParallel(check_every=1).scope():
        h = system.fit(tasks, iterations=3, meta_batch_size=3, verbose=0)  # blocks 1 + 2
    keys, labels, ages, payloads = system.memory.state()
    if distributed.rank() == 0:
        res = {f"w{i:02d}": w for i, w in enumerate(system.model.get_weights())}
        res.update({f"p{i:02d}": np.asarray(w) for i, w in enumerate(system.predictor.weights)})
        res.update(keys=keys, labels=labels, ages=ages, payloads=payloads)
        res.update({k: np.asarray(v) for k, v in h.items()})
        np.savez(out, **res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
