"""Small shared state of the Keras face: layer name counters and the training flag."""

import collections
import re
import threading

__all__ = [
    "floatx",
    "unique_name",
    "clear_session",
    "snake_case",
    "learning_phase",
    "current_training",
]

_uids = collections.defaultdict(int)
_ctx = threading.local()  # .training: the training flag of the call in progress (None outside)


def floatx():
    """The float type of every tensor: ``"float32"``."""
    return "float32"


def unique_name(prefix):
    """``prefix``, then ``prefix_1``, ``prefix_2`` … (as Keras names layers)."""
    n = _uids[prefix]
    _uids[prefix] = n + 1
    return prefix if n == 0 else f"{prefix}_{n}"


def clear_session():
    """Resets the layer name counters."""
    _uids.clear()


def snake_case(name):
    """``"CamelCase"`` → ``"camel_case"`` (how Keras names layers and metrics)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    # Keras 3's to_snake_case: no break after a digit (Conv2D is "conv2d", not "conv2_d")
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def learning_phase():
    """The training flag in effect (False outside a training call)."""
    return bool(getattr(_ctx, "training", None))


def current_training():
    """The ``training`` flag of the layer call in progress on this thread (None outside one)."""
    return getattr(_ctx, "training", None)
