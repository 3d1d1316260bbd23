"""The functional API's start, as Keras 3's: ``keras.Input``, calling layers on symbolic
tensors, ``Model(inputs, outputs)``.

``x = keras.Input((4,))`` is an ``InputLayer`` that also stands for the symbolic tensor
of its input (its ``shape`` is ``(None, 4)``); a layer called on it, or on a
``KerasTensor`` a layer returned, gives a new ``KerasTensor``: the layer is built for
the shape (run once on zeros in inference mode, so nothing changes) and the call is
recorded. ``Model(inputs, outputs)`` orders the recorded calls between them into a
graph; its ``call`` runs them in that order, so ``fit`` traces and replays a functional
model as it does a Sequential one. Several inputs and outputs (lists or dicts, as Keras 3) are supported, with
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
        self._kwargs = kwargs  # may hold symbolic tensors (initial_state=[h, c])
        self._node_index = node_index  # the how-many-th call of its layer
        self._n_args = len(parents)  # _parents: the positional inputs, then kwargs' tensors
        # a layer with several outputs (return_state): one tensor per output, all of one
        # call; _primary is the first (None on it), _output_index Keras' tensor index
        self._primary = None
        self._output_index = 0
        self._n_outputs = 1

    @property
    def _head(self):
        """The tensor that stands for the call (the first output)."""
        return self._primary or self

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


def _is_symbolic_leaf(x):
    from .layers import InputLayer

    return isinstance(x, (KerasTensor, InputLayer))


def symbolic_in(value):
    """The symbolic tensors inside a call argument (a tensor, a list/tuple, a dict)."""
    if _is_symbolic_leaf(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in symbolic_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in symbolic_in(v)]
    return []


def substitute(value, fn):
    """`value` with each symbolic tensor `t` inside it replaced by ``fn(t)``."""
    if _is_symbolic_leaf(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(substitute(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: substitute(v, fn) for k, v in value.items()}
    return value


def _zeros_of(p):
    return np.zeros(tuple(1 if d is None else int(d) for d in symbolic_shape(p)), np.float32)


def call_symbolic(layer, inputs, args, kwargs) -> KerasTensor:
    """``layer(inputs)`` on symbolic inputs: builds the layer, finds its output shape by
    running it once on zeros (inference mode, no gradients), records the call. Keyword
    arguments may hold symbolic tensors (``initial_state=[h, c]``): they join the call's
    inputs. A layer with several outputs (``return_state=True``) gives a list."""
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
        out = layer(zeros if merge else zeros[0], training=False, **substitute(kwargs, _zeros_of))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    node_index = layer.__dict__.get("_symbolic_calls", 0)
    layer.__dict__["_symbolic_calls"] = node_index + 1
    everything = parents + symbolic_in(kwargs)
    made = []
    for k, o in enumerate(outs):
        t = KerasTensor((None,) + tuple(o.shape[1:]), layer, everything, kwargs, node_index)
        t._merge, t._n_args = merge, len(parents)
        t._primary, t._output_index, t._n_outputs = (made[0] if made else None), k, len(outs)
        made.append(t)
    return made if isinstance(out, (list, tuple)) else made[0]


class Columns:
    """Several arrays with one entry per sample each (a model's inputs or targets, in
    the model's order), sliced and indexed together, so fit's batching treats them as
    one array."""

    def __init__(self, arrays):
        self.arrays = list(arrays)

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, idx):
        return Columns([a[idx] for a in self.arrays])

    @property
    def shape(self):
        return (len(self),)

    @property
    def signature(self):
        return tuple((a.shape[1:], a.dtype.kind) for a in self.arrays)


def structure(value, what):
    """``(kind, items, keys)`` of Model(inputs, outputs)'s argument: kind "single",
    "list" or "dict"; items in order (a dict's in insertion order, as Keras 3)."""
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"Model(inputs, outputs): {what} is an empty dict")
        return "dict", list(value.values()), list(value.keys())
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"Model(inputs, outputs): {what} is empty")
        if len(value) == 1:  # Keras 3 unwraps a one-item list
            return "single", list(value), None
        return "list", list(value), None
    return "single", [value], None


def _input_layer_of(x, what):
    from .layers import InputLayer

    if not isinstance(x, InputLayer):
        raise TypeError(
            f"Model(inputs, outputs): {what} must be what keras.Input returned, got "
            f"{type(x).__name__}"
        )
    return x


def order_graph(inputs, outputs):
    """The recorded calls from `inputs` to `outputs` (lists), each after the calls it
    reads (a list of KerasTensors); ValueError when an output depends on another input."""
    from .layers import InputLayer

    allowed = {id(i) for i in inputs}
    order, state = [], {}
    stack = [(out, False) for out in reversed(outputs)]
    while stack:
        t, expanded = stack.pop()
        if isinstance(t, InputLayer):
            if id(t) not in allowed:
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


def layer_order(inputs, outputs):
    """The graph's layers in Keras 3's order (keras/src/ops/function.py, map_graph): by
    depth from the outputs, deepest first, and within a depth by when a depth-first walk
    from the outputs first meets them. It decides ``model.layers``, hence the order of
    ``model.weights``, of the config's layers and of Keras' weight files."""
    from .layers import InputLayer

    post, index, done = [], {}, set()

    def node_layer(t):
        return t if isinstance(t, InputLayer) else t._layer

    def walk(t):  # (graphs are small; recursion as Keras' own)
        if id(t) in done:
            return
        layer = node_layer(t)
        index.setdefault(id(layer), len(index))
        if not isinstance(t, InputLayer):
            for p in t._parents:
                walk(p)
        done.add(id(t))
        post.append(t)

    for out in outputs:
        walk(out)
    node_depth, layer_depth, layers = {}, {}, {}
    for t in reversed(post):
        layer = node_layer(t)
        depth = max(node_depth.setdefault(id(t), 0), layer_depth.get(id(layer), 0))
        layer_depth[id(layer)] = depth
        layers[id(layer)] = layer
        node_depth[id(t)] = depth
        for p in [] if isinstance(t, InputLayer) else t._parents:
            node_depth[id(p)] = max(depth + 1, node_depth.get(id(p), 0))
    for inp in inputs:  # an input no output reads: depth 0, first (as Keras)
        if id(inp) not in layers:
            layers[id(inp)], layer_depth[id(inp)], index[id(inp)] = inp, 0, -1
    return sorted(layers.values(), key=lambda l: (-layer_depth[id(l)], index[id(l)]))
