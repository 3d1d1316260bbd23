"""Running a model with weights other than its own: the MAML inner loop's tool.

``functional_call(model, weights, x)`` runs ``model(x)`` with each of its Variables
replaced by the tensor given for it, without touching the model. The replacement is a
thread-local map from a Variable to a tensor; layers read their weights through it (a
weight a layer stores as an attribute, ``self.kernel = self.add_weight(...)``, is looked
up there on every read), so ``call`` stays as simple as in Keras. The output is an
ordinary differentiable function of the given tensors, second order included:

    >>> fast = [w - 0.4 * g for w, g in zip(weights, grads)]   # one inner SGD step
    >>> query_loss = loss_fn(y_q, ml.functional_call(model, fast, x_q))
    >>> meta_grads = ml.grad(query_loss, weights)                # through the inner step
"""

from __future__ import annotations

from typing import Any, Dict, Optional
import threading

import numpy as np

from metalearn import _core

__all__ = ["functional_call", "substitution"]

_state = threading.local()  # .subst: None or {id(variable): tensor}


class batch_norm_statistics:
    """Inside functional calls, where BatchNormalization layers in training mode take their
    statistics (the meta-learners' ``batch_norm`` modes; this thread only):

    - ``("rows", n)``: from the first `n` rows of the batch, which are applied to every
      row (a support + query batch normalised by the support's statistics: the
      non-transductive mode). Gradients of any order flow through them.
    - ``"update"``: from the batch, as usual, and they also move the layer's moving
      statistics (``moving = moving * momentum + batch * (1 - momentum)``), which a
      functional call otherwise never writes (the running-statistics mode's collection).
    """

    def __init__(self, mode: Any) -> None:
        ok = mode == "update" or (
            isinstance(mode, tuple) and len(mode) == 2 and mode[0] == "rows" and int(mode[1]) >= 1
        )
        if not ok:
            raise ValueError(f"batch_norm_statistics: ('rows', n >= 1) or 'update', got {mode!r}")
        self.mode = mode

    def __enter__(self):
        self._prev = getattr(_state, "bn", None)
        _state.bn = self.mode
        return self

    def __exit__(self, *exc):
        _state.bn = self._prev
        return False


def batch_norm_mode() -> Any:
    """The active ``batch_norm_statistics`` mode of this thread, or None."""
    return getattr(_state, "bn", None)


def substitution() -> Optional[Dict[int, _core.Tensor]]:
    """The active map ``{id(variable): tensor}`` of this thread, or None."""
    return getattr(_state, "subst", None)


def _as_tensor(value, variable):
    if not isinstance(value, _core.Tensor):
        arr = np.asarray(value, dtype=np.float32)
        value = _core.tensor(arr)
    if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(
            f"functional_call: weight for {variable.name!r} has shape "
            f"{tuple(value.shape)}, the variable has shape {tuple(variable.shape)}"
        )
    return value


def _model_paths(model):
    paths = getattr(model, "_weight_paths", None)
    return paths() if paths is not None else [(v.name, v) for v in model.weights]


def resolve_weights(model: Any, weights: Any) -> Dict[int, _core.Tensor]:
    """Maps `weights` (list or dict) onto `model`'s Variables: ``{id(var): tensor}``."""
    if not getattr(model, "built", True) or not model.weights:
        raise ValueError(
            f"functional_call: {getattr(model, 'name', type(model).__name__)!r} has no "
            "weights yet; call it once on a batch (or build it) first"
        )
    mapping = {}
    if isinstance(weights, dict):
        by_key = {}
        for path, v in _model_paths(model):
            by_key.setdefault(path, v)
            by_key.setdefault(v.name, v)
        for key, value in weights.items():
            v = by_key.get(key)
            if v is None:
                raise KeyError(
                    f"functional_call: the model has no variable named {key!r}; "
                    f"its names are {sorted(by_key)}"
                )
            mapping[id(v)] = _as_tensor(value, v)
        return mapping
    weights = list(weights)
    trainable = model.trainable_weights
    if len(weights) == len(trainable):
        targets = trainable
    elif len(weights) == len(model.weights):
        targets = model.weights
    else:
        raise ValueError(
            f"functional_call: got {len(weights)} weights; the model has "
            f"{len(trainable)} trainable and {len(model.weights)} weights in all"
        )
    for v, value in zip(targets, weights):
        mapping[id(v)] = _as_tensor(value, v)
    return mapping


def functional_call(model: Any, weights: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs ``model(*args, **kwargs)`` with `weights` in place of the model's own.

    Args:
        model: a built Layer or Model.
        weights: a list of tensors in the order of ``model.trainable_weights`` (or of
            ``model.weights``), or a dict from variable name (``"dense/kernel"``) or
            weight path (as in ``save_weights``) to tensor. Variables not mentioned keep
            their own values.
        *args, **kwargs: passed to the model's call.

    Returns:
        The model's output, differentiable with respect to the given tensors (to any
        order). The model's Variables are neither read for the replaced weights nor
        changed.
    """
    mapping = resolve_weights(model, weights)
    prev = getattr(_state, "subst", None)
    if prev:
        merged = dict(prev)
        merged.update(mapping)
        mapping = merged
    _state.subst = mapping
    try:
        return model(*args, **kwargs)
    finally:
        _state.subst = prev
