"""Run by tests/distributed (under mpiexec or alone): evaluate a learner on held-out tasks
under a DataParallel strategy (or in one process), rank 0 writing the results as JSON.

    python _evaluate_script.py ALGO MODE OUT.json     (ALGO: maml or protonet; MODE: dp or plain)
"""

import contextlib
import json
import sys

import numpy as np

import metalearn as ml
from metalearn import distributed, keras
from metalearn.meta import MAML, ProtoNet


def main(algo, mode, out):
    ml.random.set_seed(0)
    if algo == "maml":
        model = keras.Sequential(
            [keras.layers.Dense(20, activation="relu", input_shape=(1,)), keras.layers.Dense(1)]
        )
        learner = MAML(model, inner_lr=0.01)
        tasks = ml.tasks.Sinusoid(k_shot=5, q_queries=5, seed=3)
        steps = [0, 1, 3]
    else:
        rng = np.random.default_rng(123)
        x = rng.standard_normal((10 * 8, 6)).astype(np.float32)
        enc = keras.Sequential(
            [keras.layers.Dense(16, activation="relu", input_shape=(6,)), keras.layers.Dense(8)]
        )
        learner = ProtoNet(enc)
        tasks = ml.tasks.NWayKShot(
            (x, np.repeat(np.arange(10), 8)), 3, 2, 3, augment_rotations=False, seed=4
        )
        steps = None
    scope = distributed.DataParallel().scope() if mode == "dp" else contextlib.nullcontext()
    with scope:
        res = learner.evaluate(tasks, episodes=7, steps=steps)
    text = json.dumps({str(k): v for k, v in res.items()}, sort_keys=True)
    if distributed.size() > 1:  # every rank must hold the same numbers
        texts = distributed.comm().allgather(text)
        assert len(set(texts)) == 1, texts
    if distributed.is_root():
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main(*sys.argv[1:4])
