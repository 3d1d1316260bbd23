"""compile's losses and metrics for a model with several outputs, as Keras 3's
``CompileLoss``/``CompileMetrics`` (keras/src/trainers/compile_utils.py).

Each output has a loss (``loss`` as a list in output order, a dict keyed by output name,
or one loss for every output), a weight (``loss_weights``, default 1) and metrics
(``metrics`` as a list of lists or a dict). The training loss is the weighted sum of the
outputs' losses; the logs hold each output's unweighted loss as ``<output>_loss`` and
each metric as ``<output>_<metric>``, the names Keras 3 gives them.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from metalearn import _core

from . import functional as _graph
from . import losses as _losses

__all__ = ["OutputLosses", "per_output", "flat_outputs"]


def per_output(value, names, what, nested):
    """`value` spread over the outputs `names`: a list/tuple in output order, a dict by
    name (missing names get None), or (when not `nested`) one value for every output.
    ``nested`` says that a list is itself one output's entry (metrics)."""
    n = len(names)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"compile: {what} names {unknown}, which are not outputs of the model; its "
                f"outputs are {names}"
            )
        return [value.get(k) for k in names]
    if isinstance(value, (list, tuple)):
        if nested and not all(isinstance(v, (list, tuple)) or v is None for v in value):
            raise ValueError(
                f"Invalid `{what}`: for a model with several outputs it must be a dict or a "
                f"list matching the output names {names} (one list per output), as Keras 3; "
                f"got {what}={value!r}"
            )
        if len(value) != n:
            raise ValueError(
                f"compile: {what} has {len(value)} entries but the model has {n} outputs {names}"
            )
        return list(value)
    if nested:
        raise ValueError(
            f"Expected `{what}` argument to be a list, tuple, or dict. Received instead: "
            f"{what}={value!r} of type {type(value)}"
        )
    return [value] * n


def flat_outputs(value, names, what):
    """A structure of per-output values (list/tuple/Columns in output order, dict by
    output name) as a list in output order."""
    if isinstance(value, _graph.Columns):
        value = value.arrays
    if isinstance(value, dict):
        missing = [k for k in names if k not in value]
        if missing:
            raise ValueError(f"{what}: no entry for the outputs {missing} (outputs: {names})")
        return [value[k] for k in names]
    if isinstance(value, (list, tuple)) and len(value) == len(names):
        return list(value)
    raise ValueError(
        f"{what}: the model has {len(names)} outputs {names}; pass a list of "
        f"{len(names)} or a dict keyed by output name"
    )


class OutputLosses:
    """The compiled loss of a model with several outputs: ``sum(w_i * loss_i(y_i,
    y_pred_i, sample_weight))``, as Keras 3's CompileLoss. ``last`` holds the outputs'
    unweighted losses of the last call (tensors), which the logs report."""

    name = "loss"

    def __init__(self, names: List[str], losses: List[Any], weights: List[float]) -> None:
        self.names, self.losses, self.weights = names, losses, weights
        self.last: List[Any] = []

    def __call__(self, y_true, y_pred, sample_weight=None):
        ys = flat_outputs(y_true, self.names, "y")
        preds = flat_outputs(y_pred, self.names, "the model's outputs")
        total, parts = None, []
        for loss, w, yt, yp in zip(self.losses, self.weights, ys, preds):
            if loss is None:  # an output without a loss (Keras 3 allows it)
                parts.append(None)
                continue
            part = loss(yt, yp, sample_weight)
            parts.append(part)
            term = part if w == 1.0 else _core.mul(part, float(w))
            total = term if total is None else _core.add(total, term)
        self.last = parts
        return total


def resolve_losses(loss, loss_weights, names):
    """compile's `loss`/`loss_weights` for outputs `names`: an OutputLosses (checked)."""
    specs = per_output(loss, names, "loss", nested=False)
    resolved = []
    for name, spec in zip(names, specs):
        if spec is None:
            resolved.append(None)
            continue
        if isinstance(spec, str) and spec.lower() in ("crossentropy", "ce"):
            raise NotImplementedError(
                f"compile: loss={spec!r} for the output {name!r}: name the cross-entropy "
                "(e.g. 'sparse_categorical_crossentropy') for a model with several outputs"
            )
        fn = _losses.get(spec)
        if not isinstance(fn, _losses.Loss):
            fn = _losses.LossFunctionWrapper(fn)
        resolved.append(fn)
    if all(r is None for r in resolved):
        raise ValueError("compile: no output has a loss")
    if loss_weights is None:
        weights = [1.0] * len(names)
    else:
        raw = per_output(loss_weights, names, "loss_weights", nested=False)
        weights = []
        for name, w in zip(names, raw):
            w = 1.0 if w is None else w
            if isinstance(w, bool) or not isinstance(w, (int, float, np.number)):
                raise ValueError(f"compile: loss_weights for {name!r} must be a number, got {w!r}")
            weights.append(float(w))
    return OutputLosses(list(names), resolved, weights)
