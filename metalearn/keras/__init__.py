"""metalearn.keras: the tf.keras-style face of metalearn.

Same names and defaults as tf.keras, over the C core::

    from metalearn import keras
    model = keras.Sequential([keras.layers.Flatten(input_shape=(28, 28)),
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5)
"""

from . import activations, backend, callbacks, constraints, initializers, layers, losses, metrics
from . import models, ops, optimizers, regularizers, saving, utils
from .layers import Input, Layer
from .models import Model, Sequential

__all__ = [
    "activations",
    "backend",
    "callbacks",
    "constraints",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "models",
    "ops",
    "optimizers",
    "regularizers",
    "saving",
    "utils",
    "Input",
    "Layer",
    "Model",
    "Sequential",
]
