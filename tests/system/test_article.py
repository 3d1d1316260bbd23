"""The source article's program, run unchanged except for its imports.

The program below is the article's, with ``import tensorflow as tf`` and the two
``tensorflow.keras`` imports pointed at metalearn. ``inputs`` and ``labels`` are defined
by the test. Its defects are reproduced, not fixed:

- a new Adam is built every step, so every update is a fresh Adam's first step
  (``iterations`` never exceeds 1 and each weight moves by about ``lr * sign(g)``);
- ``categorical_crossentropy(adaptive_output, labels)`` swaps y_true and y_pred, so the
  adaptive network is trained on ``-sum(p * log(clip(labels)))``;
- the meta network never feeds the adaptive one.

The test replays the whole run in NumPy (its own forward and backward passes, the swapped
loss, a fresh Adam per step) and compares the final weights.
"""

import numpy as np
import pytest

import metalearn

ARTICLE_PROGRAM = """
import metalearn as tf
from metalearn.keras.layers import Dense, Flatten
from metalearn.keras.models import Sequential

# Define the meta-learning network
class MetaLearningNetwork(tf.keras.Model):
    def __init__(self):
        super(MetaLearningNetwork, self).__init__()
        self.model = Sequential([
            Flatten(),
            Dense(128, activation='relu'),
            Dense(1, activation='linear')
        ])

    def call(self, inputs):
        return self.model(inputs)

# Define the adaptive neural network
class AdaptiveNeuralNetwork(tf.keras.Model):
    def __init__(self):
        super(AdaptiveNeuralNetwork, self).__init__()
        self.model = Sequential([
            Flatten(),
            Dense(128, activation='relu'),
            Dense(10, activation='softmax')
        ])

    def call(self, inputs):
        return self.model(inputs)

# Define the memory mechanism
class MemoryMechanism:
    def __init__(self):
        self.memory = {}

    def store(self, key, knowledge):
        self.memory[key] = knowledge

    def retrieve(self, key):
        return self.memory.get(key)

# Create the networks and the memory
meta_network = MetaLearningNetwork()
adaptive_network = AdaptiveNeuralNetwork()
memory = MemoryMechanism()

# Training loop
num_epochs = 10
for epoch in range(num_epochs):
    with tf.GradientTape() as tape:
        meta_output = meta_network(inputs)
        adaptive_output = adaptive_network(inputs)
        meta_loss = tf.reduce_mean(tf.keras.losses.mean_squared_error(labels, meta_output))
        adaptive_loss = tf.reduce_mean(tf.keras.losses.categorical_crossentropy(adaptive_output, labels))
        total_loss = meta_loss + adaptive_loss

    gradients = tape.gradient(total_loss, meta_network.trainable_variables + adaptive_network.trainable_variables)
    optimizer = tf.keras.optimizers.Adam(learning_rate=0.001)
    optimizer.apply_gradients(zip(gradients, meta_network.trainable_variables + adaptive_network.trainable_variables))

    # Store the knowledge gained in this epoch
    memory.store(epoch, total_loss.numpy())
    print(f"Epoch {epoch + 1}/{num_epochs}, Loss: {total_loss.numpy()}")
"""

LR, B1, B2, EPS = 0.001, 0.9, 0.999, 1e-7


def _fresh_adam_step(w, g):
    # t = 1 of Keras Adam: m = (1-b1) g, v = (1-b2) g^2, lr_t = lr sqrt(1-b2) / (1-b1)
    m, v = (1 - B1) * g, (1 - B2) * g * g
    return w - LR * np.sqrt(1 - B2) / (1 - B1) * m / (np.sqrt(v) + EPS)


def _replay(meta_w, ada_w, x, y, epochs):
    """The article's run in float64 NumPy."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    n = len(x)
    log_clip_labels = np.log(np.clip(y / y.sum(1, keepdims=True), EPS, float(np.float32(1 - EPS))))
    losses = []
    for _ in range(epochs):
        W1, b1, W2, b2 = meta_w
        z1 = xf @ W1 + b1
        h = np.maximum(z1, 0)
        o = h @ W2 + b2  # (n, 1)
        meta_loss = np.mean(np.mean((y - o) ** 2, axis=1))  # labels broadcast against (n, 1)
        do = np.sum(2 * (o - y), axis=1, keepdims=True) / (y.shape[1] * n)
        gW2, gb2 = h.T @ do, do.sum(0)
        dz1 = (do @ W2.T) * (z1 > 0)
        meta_g = [xf.T @ dz1, dz1.sum(0), gW2, gb2]

        V1, c1, V2, c2 = ada_w
        u1 = xf @ V1 + c1
        k = np.maximum(u1, 0)
        z = k @ V2 + c2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ada_loss = np.mean(-np.sum(p * log_clip_labels, axis=1))  # y_true = p, y_pred = labels
        dp = -log_clip_labels / n
        dz = p * (dp - np.sum(dp * p, axis=1, keepdims=True))
        gV2, gc2 = k.T @ dz, dz.sum(0)
        du1 = (dz @ V2.T) * (u1 > 0)
        ada_g = [xf.T @ du1, du1.sum(0), gV2, gc2]

        losses.append(meta_loss + ada_loss)
        meta_w = [_fresh_adam_step(w, g) for w, g in zip(meta_w, meta_g)]
        ada_w = [_fresh_adam_step(w, g) for w, g in zip(ada_w, ada_g)]
    return meta_w, ada_w, losses


def test_article_program_runs_unchanged_and_keeps_its_defects(capsys):
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, size=(32, 28, 28)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]
    metalearn.random.set_seed(42)
    namespace = {"inputs": inputs, "labels": labels}
    exec(compile(ARTICLE_PROGRAM, "article.py", "exec"), namespace)

    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and out[0].startswith("Epoch 1/10, Loss: ")
    assert len(namespace["memory"].memory) == 10

    # defect 1: the optimizer is new every step, so its iterations never exceed 1
    assert namespace["optimizer"].iterations == 1

    # replay the same run in NumPy from the same initial weights
    metalearn.random.set_seed(42)
    meta0, ada0 = namespace["MetaLearningNetwork"](), namespace["AdaptiveNeuralNetwork"]()
    meta0(inputs)
    ada0(inputs)  # same draw order as the program: meta network first
    meta_w = [w.astype(np.float64) for w in meta0.get_weights()]
    ada_w = [w.astype(np.float64) for w in ada0.get_weights()]
    meta_ref, ada_ref, ref_losses = _replay(meta_w, ada_w, inputs, labels, 10)

    stored = [float(namespace["memory"].retrieve(e)) for e in range(10)]
    np.testing.assert_allclose(stored, ref_losses, rtol=1e-4)
    got_meta = namespace["meta_network"].get_weights()
    got_ada = namespace["adaptive_network"].get_weights()
    for got, ref in zip(got_meta + got_ada, meta_ref + ada_ref):
        # every step moves a weight by ~lr * sign(g): allow 1% of a step per element
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0.01 * LR * 10)
        assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref) + 1e-4

    # each weight moved by at most one lr-sized step per epoch (a fresh Adam's first step)
    for got, start in zip(got_meta + got_ada, meta_w + ada_w):
        assert np.abs(got - start).max() <= 10 * LR * 1.0001

    # defect 2: with the swapped arguments the adaptive loss is -sum(p * log(clip(labels))),
    # not the cross-entropy of the labels under the prediction
    p = np.asarray(namespace["adaptive_output"], np.float64)
    swapped = np.mean(-np.sum(p * np.log(np.clip(labels, EPS, float(np.float32(1 - EPS)))), axis=1))
    proper = np.mean(-np.sum(labels * np.log(np.clip(p, EPS, 1 - EPS)), axis=1))
    assert float(namespace["adaptive_loss"].item()) == pytest.approx(swapped, rel=1e-4)
    assert abs(swapped - proper) > 1.0
