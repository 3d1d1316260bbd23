"""MemoryClassifier(encoder) sizes its memory from the encoder (issue 27)."""

import numpy as np
import pytest

from metalearn import _core, keras
from metalearn.memory import KnowledgeMemory, MemoryClassifier


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """The layers built here draw their initial weights from the global generator: its
    state is put back, so the tests that follow draw what they would have alone."""
    state = _core.rng_state()
    yield
    _core.rng_set_state(state)


def _conv_encoder():
    # 6x6x1 -> Conv2D(4, 3, valid) -> 4x4x4 -> Flatten: 64 features (by the formula)
    return keras.Sequential(
        [keras.layers.Input((6, 6, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()]
    )


def test_key_size_inferred_from_the_encoder_output_shape():
    clf = MemoryClassifier(keras.Sequential([keras.layers.Input((5,)), keras.layers.Dense(7)]))
    assert clf.memory.key_size == 7 and clf.memory.capacity == 8192
    clf = MemoryClassifier(_conv_encoder(), capacity=32, seed=3)
    assert clf.memory.key_size == 64 and clf.memory.capacity == 32
    # it trains: keys of the inferred size are written
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 1)).astype(np.float32)
    y = np.arange(8) % 4
    clf.train_step(x, y)
    assert clf.memory.size > 0
    # an encoder called once (no declared input) is sized from that call
    dense = keras.layers.Dense(3)
    dense(np.zeros((2, 4), np.float32))
    assert MemoryClassifier(dense).memory.key_size == 3


def test_a_mismatched_memory_is_refused_naming_both_sizes():
    with pytest.raises(ValueError, match=r"output size is 64 but the memory's key_size is 32"):
        MemoryClassifier(_conv_encoder(), KnowledgeMemory(16, 32))
    # a matching memory is used as given
    mem = KnowledgeMemory(16, 64)
    assert MemoryClassifier(_conv_encoder(), mem).memory is mem


def test_unknown_or_non_vector_output_is_a_clear_error():
    with pytest.raises(ValueError, match="output size is unknown"):
        MemoryClassifier(keras.layers.Dense(3))
    # a memory given for an encoder of unknown output keeps working as before
    mem = KnowledgeMemory(4, 3)
    assert MemoryClassifier(keras.layers.Dense(3), mem).memory is mem
    no_flatten = keras.Sequential([keras.layers.Input((6, 6, 1)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match=r"one embedding vector per sample.*\(None, 4, 4, 4\)"):
        MemoryClassifier(no_flatten)
