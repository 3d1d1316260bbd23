"""The functional API's start, as Keras 3's: ``keras.Input``, calling layers on symbolic
tensors, ``Model(inputs, outputs)``.

``x = keras.Input((4,))`` is an ``InputLayer`` that also stands for the symbolic tensor
of its input (its ``shape`` is ``(None, 4)``); a layer called on it, or on a
``KerasTensor`` a layer returned, gives a new ``KerasTensor``: the layer is built for
the shape (run once on zeros in inference mode, so nothing changes) and the call is
recorded. ``Model(inputs, outputs)`` orders the recorded calls between them into a
graph; its ``call`` runs them in that order, so ``fit`` traces and replays a functional
model as it does a Sequential one. This start supports one input and one output, with
merges (``Add``, ``Concatenate``, ...) and shared layers inside the graph.
"""

from __future__ import annotations


import numpy as np

from metalearn.tape import no_grad as _no_grad

__all__ = ["KerasTensor"]


class KerasTensor:
    """A symbolic tensor: the output of a layer called on symbolic inputs.

    Attributes:
        shape: the shape with the batch dimension None.
        dtype: ``"float32"``.
    """

    def __init__(self, shape, layer, parents, kwargs, node_index):
        self.shape = tuple(shape)
        self.dtype = "float32"
        self._layer = layer
        self._parents = parents  # symbolic inputs (KerasTensor or InputLayer), flat
        self._merge = None  # True when the layer took a list
        self._kwargs = kwargs
        self._node_index = node_index  # the how-many-th call of its layer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def name(self) -> str:
        return f"{self._layer.name}/output_{self._node_index}"

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype=float32, name={self.name}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "A KerasTensor is symbolic: it has no values. Build a Model(inputs, outputs) "
            "and call the model on data"
        )


def is_symbolic(x) -> bool:
    from .layers import InputLayer

    if isinstance(x, (KerasTensor, InputLayer)):
        return True
    if isinstance(x, (list, tuple)) and x:
        kinds = [isinstance(t, (KerasTensor, InputLayer)) for t in x]
        if any(kinds) and not all(kinds):
            raise TypeError("a layer's inputs are either all symbolic or all data")
        return all(kinds)
    return False


def symbolic_shape(x):
    from .layers import InputLayer

    if isinstance(x, InputLayer):
        return tuple(x._batch_input_shape)
    return x.shape


def call_symbolic(layer, inputs, args, kwargs) -> KerasTensor:
    """``layer(inputs)`` on symbolic inputs: builds the layer, finds its output shape by
    running it once on zeros (inference mode, no gradients), records the call."""
    if args:
        raise TypeError(
            f"{layer.name}: extra positional arguments are not supported on symbolic inputs"
        )
    kwargs = dict(kwargs)
    if "training" in kwargs:
        raise TypeError(f"{layer.name}: training= cannot be fixed on a symbolic call")
    merge = isinstance(inputs, (list, tuple))
    parents = list(inputs) if merge else [inputs]
    shapes = [symbolic_shape(p) for p in parents]
    zeros = [np.zeros(tuple(1 if d is None else int(d) for d in s), np.float32) for s in shapes]
    with _no_grad():
        out = layer(zeros if merge else zeros[0], training=False, **kwargs)
    if isinstance(out, (list, tuple)):
        raise NotImplementedError(f"{layer.name}: layers with several outputs are not supported")
    node_index = layer.__dict__.get("_symbolic_calls", 0)
    layer.__dict__["_symbolic_calls"] = node_index + 1
    t = KerasTensor((None,) + tuple(out.shape[1:]), layer, parents, kwargs, node_index)
    t._merge = merge
    return t


def _one(value, what):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise NotImplementedError(
                f"Model(inputs, outputs): {len(value)} {what} given; metalearn's functional "
                f"API takes one input and one output for now"
            )
        return value[0]
    if isinstance(value, dict):
        raise NotImplementedError(f"Model(inputs, outputs): dicts of {what} are not supported")
    return value


def _input_layer_of(x, what):
    from .layers import InputLayer

    if not isinstance(x, InputLayer):
        raise TypeError(
            f"Model(inputs, outputs): {what} must be what keras.Input returned, got "
            f"{type(x).__name__}"
        )
    return x


def order_graph(inp, out):
    """The recorded calls from `inp` to `out`, each after the calls it reads (a list of
    KerasTensors); ValueError when `out` depends on another input."""
    from .layers import InputLayer

    order, state = [], {}
    stack = [(out, False)]
    while stack:
        t, expanded = stack.pop()
        if isinstance(t, InputLayer):
            if t is not inp:
                raise ValueError(
                    f"Graph disconnected: the output depends on the input {t.name!r}, which "
                    "is not among the model's inputs"
                )
            continue
        if expanded:
            if state.get(id(t)) != "done":
                state[id(t)] = "done"
                order.append(t)
            continue
        if id(t) in state:
            continue
        state[id(t)] = "open"
        stack.append((t, True))
        for p in reversed(t._parents):
            if id(p) not in state:
                stack.append((p, False))
    return order
