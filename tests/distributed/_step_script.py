"""Run by tests/distributed (under mpiexec or alone): one data-parallel meta-step, rank 0
writing the mean meta-gradient the strategy hands the meta-optimizer, and each task's own
gradient (Reptile: direction) computed alone at the same weights, as rows.

    python _step_script.py ALGO META_BATCH OUT.npz     (ALGO: maml, reptile or protonet)
"""

import sys

import numpy as np

import metalearn as ml
from metalearn import distributed, keras
from metalearn.meta import MAML, ProtoNet, Reptile
from tests.distributed._fit_script import classification_sampler


def _flat(tensors):
    return np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors])


def main(algo, meta_batch, out):
    ml.random.set_seed(0)
    if algo == "protonet":
        model = keras.Sequential(
            [keras.layers.Dense(16, activation="relu", input_shape=(6,)), keras.layers.Dense(8)]
        )
        learner, tasks = ProtoNet(model, meta_optimizer="sgd"), classification_sampler(0)
    else:
        model = keras.Sequential(
            [
                keras.layers.Dense(32, activation="tanh", input_shape=(1,)),
                keras.layers.Dense(32, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        cls = Reptile if algo == "reptile" else MAML
        learner = cls(model, inner_lr=0.01)
        tasks = ml.tasks.Sinusoid(k_shot=5, q_queries=5, seed=0)
    batches, grads = [], []
    draw = tasks.sample_batch
    tasks.sample_batch = lambda b: batches.append(draw(b)) or batches[-1]
    apply = learner.meta_optimizer.apply_gradients

    def capture(pairs):
        pairs = list(pairs)
        grads.append(_flat([g for g, _ in pairs]))
        return apply(pairs)

    learner.meta_optimizer.apply_gradients = capture
    model(np.zeros((1,) + tuple(model.input_shape[1:]), np.float32))
    start = model.get_weights()
    with distributed.DataParallel().scope():
        learner.fit(tasks, iterations=1, meta_batch_size=meta_batch, verbose=0)
    if distributed.is_root():
        model.set_weights(start)  # each task alone, at the step's weights
        params = list(distributed._meta_params(learner))
        rows = [
            _flat(distributed._task_gradient(learner, batches[0], i, params)[2])
            for i in range(meta_batch)
        ]
        np.savez(out, mean=grads[0], rows=np.stack(rows), size=distributed.size())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
