"""The meta-learners take any Keras loss name and any Keras optimizer name."""

import numpy as np
import pytest

from metalearn import keras, meta
from metalearn.meta import models
from metalearn.tasks import Sinusoid


def _model():
    keras.utils.set_random_seed(0)
    return models.sinusoid_mlp()


def test_a_keras_loss_name_is_the_keras_loss():
    batch = Sinusoid(seed=0).sample_batch(3)
    by_name = meta.MAML(_model(), loss="huber", vectorize=False).meta_gradients(batch)[0]
    by_fn = meta.MAML(_model(), loss=keras.losses.huber, vectorize=False).meta_gradients(batch)[0]
    mse = meta.MAML(_model(), vectorize=False).meta_gradients(batch)[0]
    assert by_name == pytest.approx(by_fn, rel=1e-6) and by_name != pytest.approx(mse, rel=1e-3)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        meta.MAML(_model(), loss="nope").fit(Sinusoid(seed=0), iterations=1, verbose=0)


@pytest.mark.parametrize(
    "name, cls", [("nadam", "Nadam"), ("adagrad", "Adagrad"), ("rmsprop", "RMSprop")]
)
def test_a_keras_optimizer_name_at_meta_lr(name, cls):
    learner = meta.MAML(_model(), meta_optimizer=name, meta_lr=0.005)
    assert type(learner.meta_optimizer).__name__ == cls
    assert learner.meta_optimizer.learning_rate == pytest.approx(0.005)
    before = [np.array(w) for w in learner.model.trainable_weights]
    learner.fit(Sinusoid(seed=0), iterations=2, meta_batch_size=2, verbose=0)
    assert any(
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(before, learner.model.trainable_weights)
    )


def test_an_unknown_optimizer_name_is_refused():
    with pytest.raises(ValueError, match="one of its names"):
        meta.MAML(_model(), meta_optimizer="adamax-ish")
