"""The classifiers MatchingNet, R2D2 and MetaOptNet's ``adapt`` return rebuild from their
config (through JSON: plain values) with the encoder's weights and give the same logits,
bit for bit, as the classifier they were written from."""

import json

import numpy as np
import pytest

import metalearn as ml
from metalearn import keras
from metalearn.keras import layers
from metalearn.meta import R2D2, MatchingNet, MetaOptNet


@pytest.mark.parametrize("learner", [MatchingNet, R2D2, MetaOptNet])
def test_adapted_classifier_rebuilds_from_its_config(learner):
    ml.random.set_seed(0)
    enc = keras.Sequential([keras.Input((4,)), layers.Dense(6)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.repeat(np.arange(3), 2)
    clf = learner(enc).adapt(x, y)
    config = json.loads(json.dumps(clf.get_config()))
    back = type(clf).from_config(config)
    assert isinstance(back.encoder, keras.Sequential)  # the nested config, deserialized
    back.encoder.set_weights(clf.encoder.get_weights())
    q = rng.standard_normal((5, 4)).astype(np.float32)
    want = np.asarray(clf(q))
    assert want.shape == (5, 3)
    np.testing.assert_array_equal(np.asarray(back(q)), want)
