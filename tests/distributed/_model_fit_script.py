"""Run by tests/distributed (under mpiexec or alone): Model.fit of a small Keras model under
DataParallel(shards=4), rank 0 writing the final weights and the history.

    python _model_fit_script.py OUT.npz
"""

import sys

import numpy as np

import metalearn as ml
from metalearn import distributed, keras


def main(out):
    ml.random.set_seed(0)
    model = keras.Sequential(
        [keras.layers.Dense(16, activation="relu", input_shape=(5,)), keras.layers.Dense(3)]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if distributed.rank() > 0:  # the other ranks start elsewhere: fit broadcasts rank 0's
        model.set_weights([w + 1.0 for w in model.get_weights()])
    rng = np.random.default_rng(7)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    sw = rng.random(60).astype(np.float32)
    with distributed.DataParallel(shards=4, check_every=1).scope():
        hist = model.fit(x, y, batch_size=12, epochs=3, sample_weight=sw, verbose=0)
    if distributed.is_root():
        arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        np.savez(
            out,
            loss=np.asarray(hist.history["loss"]),
            accuracy=np.asarray(hist.history["accuracy"]),
            **arrays,
        )


if __name__ == "__main__":
    main(sys.argv[1])
