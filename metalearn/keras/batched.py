"""Layers on a meta-batch of tasks: the batched forms that MAML's vectorised path runs.

A batched form computes its layer for B tasks at once. Its input is ``x`` of shape
``(B, n, ...)``, n samples of each task, and it reads its weights by position from a list
in which each weight has a leading task axis ``(B, ...)``: task b's own adapted copy. A
layer class declares its form with ``Layer._batched_form(index)`` (None when it has
none); ``Sequential`` composes those of its layers; ``batched_plan(model, weights)`` gives
a model's form when it reads each of `weights` exactly once.

A dense kernel may come in low-rank form instead: an inner SGD step changes a kernel by
``-lr * X^T dZ`` (X the layer's input, dZ the loss's gradient at its output, a few
support rows each), so a task's adapted kernel is ``W + sum(c * A_b^T @ D_b)`` with W the
shared ``(K, N)`` kernel. ``factors[k]`` lists the ``(c, A (B, r, K), D (B, r, N))`` of the
kernel at position k (its entry in `weights` is then W), and ``record``, a dict, receives
``k -> (layer input, pre-activation output)``: what the next step's factors are made of.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from metalearn import _core

__all__ = [
    "BatchedForm",
    "Dense",
    "Conv2D",
    "Pool2D",
    "Activation",
    "Flatten",
    "BatchNormalization",
    "Chain",
    "batched_plan",
]


class BatchedForm:
    """A layer's forward on a meta-batch: ``form(weights, x, factors, record) -> y``."""

    weights: Tuple[int, ...] = ()  # positions of the weights it reads
    kernels: Tuple[int, ...] = ()  # positions of the dense kernels that take a low-rank form

    def __call__(
        self,
        weights: List[Any],
        x: Any,
        factors: Optional[Dict[int, list]] = None,
        record: Optional[Dict[int, tuple]] = None,
    ) -> Any:
        raise NotImplementedError


class Dense(BatchedForm):
    """``activation(x @ kernel_b + bias_b)`` per task: a batched matrix product with each
    task's kernel ``(B, K, N)``, or, for a kernel in low-rank form, one product with the
    shared kernel for all B * n rows plus each task's rank-r correction."""

    def __init__(self, kernel: int, bias: Optional[int], activation: Optional[Callable[..., Any]]):
        self.kernel, self.bias, self.activation = kernel, bias, activation
        self.weights = (kernel,) if bias is None else (kernel, bias)
        self.kernels = (kernel,)

    def __call__(self, weights, x, factors=None, record=None):
        b, n = int(x.shape[0]), int(x.shape[1])
        k = self.kernel
        x_in = x
        low_rank = factors is not None and k in factors
        if low_rank:
            w = weights[k]
            # one GEMM with the shared kernel for all B*n rows, then each task's rank-r
            # correction (c x A^T) D: never a (B, K, N) copy of the kernel. c scales the
            # (B, n, r) product, not the (B, n, N) one (r < N), here and in the backward pass
            x = _core.reshape(
                _core.matmul(_core.reshape(x_in, (b * n, int(w.shape[0]))), w),
                (b, n, int(w.shape[1])),
            )
            for c, a_, d_ in factors[k]:
                x = x + _core.matmul(_core.matmul(x_in, a_, transpose_b=True) * c, d_)
        else:
            x = _core.matmul(x_in, weights[k])  # (B, n, units)
        if self.bias is not None:
            bias = weights[self.bias]
            x = x + _core.reshape(bias, (b, 1, int(bias.shape[-1])))
        if record is not None and low_rank:
            record[k] = (x_in, x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class Conv2D(BatchedForm):
    """``activation(conv2d(x_b, kernel_b) + bias_b)`` per task: one ``conv2d_batched`` over
    x ``(B, n, H, W, C)`` with each task's kernel ``(B, KH, KW, C, F)`` and bias ``(B, F)``,
    the kernels looping over the tasks in C (each task's numbers are conv2d's)."""

    def __init__(
        self,
        kernel: int,
        bias: Optional[int],
        strides: Tuple[int, int],
        padding: str,
        activation: Optional[Callable[..., Any]],
    ):
        self.kernel, self.bias, self.activation = kernel, bias, activation
        self.strides, self.padding = tuple(strides), padding
        self.weights = (kernel,) if bias is None else (kernel, bias)

    def __call__(self, weights, x, factors=None, record=None):
        bias = None if self.bias is None else weights[self.bias]
        x = _core.conv2d_batched(x, weights[self.kernel], bias, self.strides, self.padding)
        if self.activation is not None:
            x = self.activation(x)
        return x


class Pool2D(BatchedForm):
    """A pooling op on each image of each task: the tasks folded into the batch axis
    (a pool reads no weights, so every image pools alike)."""

    def __init__(self, op: Callable[..., Any], pool_size, strides, padding: str):
        self.op, self.pool_size, self.strides, self.padding = op, pool_size, strides, padding

    def __call__(self, weights, x, factors=None, record=None):
        b, n = int(x.shape[0]), int(x.shape[1])
        y = self.op(
            _core.reshape(x, (b * n,) + tuple(int(d) for d in x.shape[2:])),
            self.pool_size,
            self.strides,
            self.padding,
        )
        return _core.reshape(y, (b, n) + tuple(int(d) for d in y.shape[1:]))


class Activation(BatchedForm):
    """An element-wise activation: the same on any shape."""

    def __init__(self, activation: Callable[..., Any]):
        self.activation = activation

    def __call__(self, weights, x, factors=None, record=None):
        return self.activation(x)


class Flatten(BatchedForm):
    """``(B, n, d1, ..., dk) -> (B, n, d1 * ... * dk)``."""

    def __call__(self, weights, x, factors=None, record=None):
        b, n = int(x.shape[0]), int(x.shape[1])
        return _core.reshape(x, (b, n, int(np.prod(x.shape[2:]))))


class BatchNormalization(BatchedForm):
    """Training-mode batch normalisation over the last axis with each task's own batch
    statistics (``_core.batch_norm_grouped``), as a per-task functional call computes it;
    the moving statistics are left alone, as there."""

    def __init__(self, gamma: Optional[int], beta: Optional[int], epsilon: float):
        self.gamma, self.beta, self.epsilon = gamma, beta, epsilon
        self.weights = tuple(i for i in (gamma, beta) if i is not None)

    def __call__(self, weights, x, factors=None, record=None):
        return _core.batch_norm_grouped(
            x,
            None if self.gamma is None else weights[self.gamma],
            None if self.beta is None else weights[self.beta],
            self.epsilon,
        )


class Chain(BatchedForm):
    """Forms applied one after the other (a Sequential's layers)."""

    def __init__(self, forms: Sequence[BatchedForm]):
        self.forms = list(forms)
        self.weights = tuple(i for f in self.forms for i in f.weights)
        self.kernels = tuple(k for f in self.forms for k in f.kernels)

    def __call__(self, weights, x, factors=None, record=None):
        for form in self.forms:
            x = form(weights, x, factors, record)
        return x


def batched_plan(model: Any, weights: Sequence[Any]) -> Optional[BatchedForm]:
    """`model`'s batched form over `weights` (the tensors the meta-batch gives per task),
    or None when a layer has no batched form or the form does not read each weight
    exactly once (a weight it does not know, one it would leave out)."""
    form_of = getattr(model, "_batched_form", None)
    if form_of is None:
        return None
    form = form_of({id(w): i for i, w in enumerate(weights)})
    if form is None or sorted(form.weights) != list(range(len(weights))):
        return None
    return form
