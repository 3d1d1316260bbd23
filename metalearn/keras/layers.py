"""Layers, as ``keras.layers``: the Layer base class and the core layers.

A layer stores its configuration in ``__init__``, makes its weights in
``build(input_shape)`` with ``add_weight`` (called lazily on the first call, when the
input shape is known), and computes in ``call``. Weights a layer keeps as attributes
(``self.kernel = self.add_weight(...)``) are read through ``metalearn.functional``'s
substitution map, so ``functional_call(model, other_weights, x)`` works for any layer
written this way.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from metalearn._typing import ArrayLike, Config, Shape
import inspect
import math

import numpy as np

from metalearn import _core
from metalearn.tape import no_grad as _no_grad
from metalearn import functional as _functional
from metalearn.tape import Variable

from . import activations, constraints, initializers, regularizers
from . import backend as _backend
from . import batched as _batched
from . import functional as _graph

__all__ = [
    "MemoryRecall",
    "Layer",
    "Dense",
    "Flatten",
    "Activation",
    "LeakyReLU",
    "Dropout",
    "InputLayer",
    "Input",
    "Lambda",
    "Reshape",
    "LayerNormalization",
    "Embedding",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Concatenate",
    "SimpleRNN",
    "GRU",
    "LSTM",
    "Masking",
    "serialize",
    "deserialize",
    "get",
]

_FUSED = {
    activations.linear: "linear",
    activations.relu: "relu",
    activations.sigmoid: "sigmoid",
    activations.tanh: "tanh",
}


def _shape_of(x):
    shape = getattr(x, "shape", None)
    if shape is not None:
        return tuple(int(d) for d in shape)
    if isinstance(x, (list, tuple)) and x and hasattr(x[0], "shape"):
        return [_shape_of(t) for t in x]
    return tuple(np.shape(x))


def _as_input(x):
    """Tensors and float32 arrays pass through; other array-likes become float32 arrays."""
    if isinstance(x, (_core.Tensor, np.ndarray)) or x is None:
        return x
    if isinstance(x, (dict, _graph.Columns)):  # a functional model's several inputs
        return x
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (_core.Tensor, np.ndarray)):
        return x
    return np.asarray(x, dtype=np.float32)


class Layer:
    """Base class of all layers (and of ``Model``).

    Subclasses override ``__init__`` (store configuration), ``build(input_shape)`` (make
    weights with ``add_weight``) and ``call(inputs, ...)`` (compute). ``layer(x)`` builds
    the layer on its first call, then runs ``call``. A ``training`` argument of ``call``
    receives the training flag (given explicitly or inherited from the enclosing call).

    Args:
        trainable: whether the layer's weights are trained.
        name: the layer's name (unique by default: ``dense``, ``dense_1``, …).
        dtype: only float32 is supported.
        input_shape: shape of one sample (without the batch dim); lets ``Sequential`` build
            at construction.
        input_dim: for 2-D inputs, the same as ``input_shape=(input_dim,)``.
        activity_regularizer: a regularizer of the layer's output (``"l1"``, ``L2(...)``);
            its penalty over the batch, divided by the batch size (Keras 3), joins
            ``losses`` after each call and so the training loss.
    """

    # What a layer can do, declared by each class in its own body; a subclass that does
    # not declare it again cannot (its call may differ from its parent's: see
    # __init_subclass__), so a layer of yours is never traced or batched by mistake.
    # _traceable: its call is a pure function of tensors (no Python-side state, no
    # in-place statistics), so a training step through it may be recorded once by
    # metalearn.function and replayed from C. _batched_form: its forward on a meta-batch
    # of tasks, for MAML's vectorised path.
    _traceable = False
    activity_regularizer = None  # (for subclasses that skip Layer.__init__)
    _activity_losses = ()  # the activity penalties of the last call

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_traceable" not in cls.__dict__:
            cls._traceable = False
        if "_batched_form" not in cls.__dict__:
            cls._batched_form = Layer._batched_form

    def _is_traceable(self):
        """Whether this layer and every layer in it declare themselves traceable."""
        return self._traceable and all(sub._is_traceable() for _, sub in self._sublayers)

    def _batched_form(self, index):
        """This layer's forward on a meta-batch of tasks (a ``metalearn.keras.batched``
        form), or None when it has none.

        Args:
            index: ``{id(weight): position}`` of the weights the meta-batch gives per task
                (with a leading task axis); the form reads them by position. A weight of
                the layer that is not indexed means no form (it would be left out).
        """
        return None

    def __init__(
        self,
        trainable: bool = True,
        name: Optional[str] = None,
        dtype: Any = None,
        input_shape: Optional[Shape] = None,
        batch_input_shape: Optional[Shape] = None,
        input_dim: Optional[int] = None,
        activity_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}: unexpected keyword argument(s) {sorted(kwargs)}"
            )
        if dtype is not None and np.dtype(dtype) != np.float32:
            raise TypeError(
                f"{type(self).__name__}: only float32 is supported, got dtype={dtype!r}"
            )
        self._init_tracking()
        self.name = (
            name
            if name is not None
            else _backend.unique_name(_backend.snake_case(type(self).__name__))
        )
        self._trainable = bool(trainable)
        self.built = False
        self.supports_masking = False
        if input_dim is not None and input_shape is None:
            input_shape = (int(input_dim),)
        if batch_input_shape is not None:
            self._batch_input_shape = tuple(batch_input_shape)
        elif input_shape is not None:
            shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
            self._batch_input_shape = (None,) + shape
        else:
            self._batch_input_shape = None
        self._build_input_shape = None
        self._output_shape = None
        self.activity_regularizer = regularizers.get(activity_regularizer)

    # ---------------------------------------------------------------- tracking
    def _init_tracking(self):
        d = self.__dict__
        if "_var_attrs" in d:
            return
        d["_var_attrs"] = {}  # attribute name -> Variable (read via __getattr__)
        d["_own_weights"] = []  # Variables owned by this layer, in creation order
        d["_own_weight_names"] = {}  # id(variable) -> short name
        d["_sublayers"] = []  # (key, Layer) in assignment order
        d["_regularized"] = []  # (Variable, regularizer) of add_weight(regularizer=...)
        cls = type(self)
        if "_call_takes_training" not in cls.__dict__:
            try:
                params = inspect.signature(cls.call).parameters
                cls._call_takes_training = "training" in params
            except (TypeError, ValueError):
                cls._call_takes_training = False

    def __setattr__(self, name, value):
        d = self.__dict__
        if "_var_attrs" not in d:
            self._init_tracking()
        if name.startswith("__"):
            object.__setattr__(self, name, value)
            return
        var_attrs = d["_var_attrs"]
        if isinstance(value, Variable):
            d.pop(name, None)
            var_attrs[name] = value
            self._track_weight(value, name)
            return
        # set first, track after: an assignment that raises (a read-only property such as
        # Sequential.layers) leaves the layer as it was, nothing tracked
        object.__setattr__(self, name, value)
        if name in var_attrs:
            del var_attrs[name]
        if isinstance(value, Layer) and not name.startswith("_"):
            self._track_layer(name, value)
        elif (
            isinstance(value, (list, tuple))
            and not name.startswith("_")
            and value
            and all(isinstance(v, Layer) for v in value)
        ):
            for i, v in enumerate(value):
                self._track_layer(f"{name}/{i}", v)

    def __getattr__(self, name):
        # Only reached when normal lookup fails: Variables live in _var_attrs so that every
        # read goes through the substitution map of functional_call.
        d = self.__dict__
        var_attrs = d.get("_var_attrs")
        if var_attrs is not None:
            v = var_attrs.get(name)
            if v is not None:
                subst = getattr(_functional._state, "subst", None)
                if subst:
                    return subst.get(id(v), v)
                return v
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        var_attrs = self.__dict__.get("_var_attrs", {})
        if name in var_attrs:
            del var_attrs[name]
        else:
            object.__delattr__(self, name)

    def _track_weight(self, variable, short_name):
        ids = self._own_weight_names
        if id(variable) not in ids:
            self._own_weights.append(variable)
            ids[id(variable)] = short_name

    def _track_layer(self, key, layer):
        for i, (k, l) in enumerate(self._sublayers):
            if l is layer:
                return
            if k == key:
                self._sublayers[i] = (key, layer)
                return
        self._sublayers.append((key, layer))

    # ----------------------------------------------------------------- weights
    def add_weight(
        self,
        name: Optional[str] = None,
        shape: Optional[Shape] = None,
        initializer: Any = None,
        dtype: Any = None,
        trainable: bool = True,
        regularizer: Any = None,
        constraint: Any = None,
    ) -> Variable:
        """Creates a Variable owned by this layer.

        Args:
            name: short name (the variable is named ``"<layer>/<name>"``).
            shape: tuple of ints.
            initializer: name, Initializer or callable ``f(shape)``; default
                ``"glorot_uniform"`` (``"zeros"`` for 0-d and 1-d shapes as Keras 3 does).
            trainable: whether optimizers train it.
            regularizer: a regularizer (``"l2"``, ``L1(...)``) whose penalty of the weight
                joins ``losses`` (and so the training loss).
            constraint: a constraint (``"non_neg"``, ``MaxNorm(...)``) the optimizer
                applies to the weight after each update (the variable's ``constraint``).
        """
        regularizer = regularizers.get(regularizer)
        constraint = constraints.get(constraint)
        shape = () if shape is None else tuple(int(d) for d in shape)
        if initializer is None:
            initializer = "glorot_uniform" if len(shape) >= 2 else "zeros"
        init = initializers.get(initializer)
        short = name or f"variable_{len(self._own_weights)}"
        value = init(shape)
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{self.name}: initializer {init!r} returned shape {tuple(value.shape)} "
                f"for weight {short!r} of shape {shape}"
            )
        var = Variable(value, trainable=trainable, name=f"{self.name}/{short}")
        var.constraint = constraint
        self._track_weight(var, short)
        if regularizer is not None:
            self._regularized.append((var, regularizer))
        return var

    @property
    def losses(self) -> List[Any]:
        """The scalar penalties of this layer and its sublayers (Keras 3's ``losses``): the
        activity regularizers' of the last call, then each regularized weight's penalty,
        computed now from the weight's current value (so differentiable to any order)."""
        out, weights, seen, stack = [], [], set(), [self]
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            out.extend(layer._activity_losses)
            weights.extend(layer._regularized)
            stack.extend(sub for _, sub in reversed(layer._sublayers))
        return out + [reg(var) for var, reg in weights]

    @property
    def trainable(self) -> bool:
        """Whether the layer's weights are trained (setting it applies to every sublayer)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = bool(value)
        self._trainable = value
        for _, layer in self._sublayers:
            layer.trainable = value

    def _all_weights(self):
        """Every Variable, own first (creation order), then sub-layers depth-first."""
        out, seen = [], set()
        self._collect(out, seen)
        return out

    def _collect(self, out, seen):
        for v in self._own_weights:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        for _, layer in self._sublayers:
            layer._collect(out, seen)

    @property
    def trainable_weights(self) -> List[Variable]:
        """Variables trained by ``fit``/optimizers: trainable ones of trainable layers."""
        if not self._trainable:
            return []
        out, seen = [], set()
        self._collect_trainable(out, seen)
        return out

    def _collect_trainable(self, out, seen):
        if not self._trainable:
            return
        for v in self._own_weights:
            if v.trainable and id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        for _, layer in self._sublayers:
            layer._collect_trainable(out, seen)

    @property
    def non_trainable_weights(self) -> List[Variable]:
        """The other Variables (non-trainable ones, and all weights of frozen layers)."""
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self._all_weights() if id(v) not in trainable]

    @property
    def weights(self) -> List[Variable]:
        """``trainable_weights + non_trainable_weights`` (Keras order)."""
        return self.trainable_weights + self.non_trainable_weights

    trainable_variables = trainable_weights
    non_trainable_variables = non_trainable_weights
    variables = weights

    def _weight_paths(self, prefix=""):
        """``[(path, variable)]``: names relative to this layer, stable across instances
        (``"dense1/kernel"``, ``"layers/0/bias"``), in ``weights`` order."""
        paths, seen, used = {}, set(), set()
        self._walk_paths(prefix, paths, seen, used)
        return [(paths[id(v)], v) for v in self.weights]

    def _walk_paths(self, prefix, paths, seen, used):
        for v in self._own_weights:
            if id(v) in seen:
                continue
            seen.add(id(v))
            base = prefix + self._own_weight_names[id(v)]
            path, n = base, 1
            while path in used:
                path, n = f"{base}_{n}", n + 1
            used.add(path)
            paths[id(v)] = path
        for key, layer in self._sublayers:
            layer._walk_paths(f"{prefix}{key}/", paths, seen, used)

    def count_params(self) -> int:
        """Number of scalars in all weights."""
        return int(sum(int(np.prod(v.shape)) for v in self.weights))

    def get_weights(self) -> List[np.ndarray]:
        """The weights as a list of NumPy arrays (copies), in ``weights`` order."""
        return [np.array(v.numpy(), copy=True) for v in self.weights]

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        """Sets the weights from NumPy arrays in ``weights`` order.

        Every shape is checked before anything is written: on a mismatch ValueError is
        raised and no weight changes.
        """
        variables = self.weights
        weights = list(weights)
        if len(weights) != len(variables):
            raise ValueError(
                f"{self.name}.set_weights: expected {len(variables)} arrays, got {len(weights)}"
            )
        arrays = []
        for i, (v, w) in enumerate(zip(variables, weights)):
            a = np.asarray(w)
            if a.dtype.kind not in "biuf":
                raise TypeError(
                    f"{self.name}.set_weights: array {i} has dtype {a.dtype}; expected real numbers"
                )
            a = a.astype(np.float32, copy=False)
            if a.shape != tuple(v.shape):
                raise ValueError(
                    f"{self.name}.set_weights: array {i} has shape {a.shape}, "
                    f"weight {v.name!r} has shape {tuple(v.shape)}"
                )
            arrays.append(np.ascontiguousarray(a))
        for v, a in zip(variables, arrays):
            _core.assign(v, a)

    # -------------------------------------------------------------------- call
    def build(self, input_shape: Any) -> None:
        """Creates the weights for inputs of `input_shape` (batch dim included)."""
        self._build_input_shape = input_shape
        self.built = True

    def call(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """The layer's computation; subclasses override it.

        Args:
            inputs: a Tensor (or array) of shape ``(batch, ...)``.
            *args, **kwargs: extra call arguments (e.g. ``training``).

        Returns:
            The output Tensor (the base class returns `inputs` unchanged).
        """
        return inputs

    def __call__(self, inputs: Any, *args: Any, weights: Any = None, **kwargs: Any) -> Any:
        if weights is not None:
            return _functional.functional_call(self, weights, inputs, *args, **kwargs)
        if isinstance(inputs, _SYMBOLIC) or (
            type(inputs) in (list, tuple) and inputs and isinstance(inputs[0], _SYMBOLIC)
        ):  # the functional API: a symbolic call, recorded (keras.functional)
            return _graph.call_symbolic(self, inputs, args, kwargs)
        if inputs is None:
            raise TypeError(f"{self.name}: expected inputs (a tensor or an array), got None")
        inputs = _as_input(inputs)
        if not self.built:
            self._maybe_build(inputs)
            first = True
        else:
            first = self._output_shape is None
        training = kwargs.pop("training", None)
        ctx = _backend._ctx
        prev = getattr(ctx, "training", None)
        if training is None:
            training = prev
        elif not isinstance(training, bool):
            training = bool(training)
        if self._call_takes_training:
            kwargs["training"] = training
        if training is prev:
            out = self.call(inputs, *args, **kwargs)
        else:
            ctx.training = training
            try:
                out = self.call(inputs, *args, **kwargs)
            finally:
                ctx.training = prev
        if first:
            self._output_shape = _shape_of(out)
        if self.activity_regularizer is not None:
            self._activity_losses = self._activity_penalties(out)
        return out

    def _activity_penalties(self, out):
        """The activity regularizer's penalty of each output tensor divided by its batch
        size, as Keras 3's Layer.__call__ (a call replaces the previous call's)."""
        outs = out if isinstance(out, (list, tuple)) else [out]
        losses = []
        for o in outs:
            if isinstance(o, _core.Tensor):
                loss = self.activity_regularizer(o)
                if o.ndim > 0 and o.shape[0] > 0:
                    loss = _core.mul(loss, 1.0 / o.shape[0])
                losses.append(loss)
        return losses

    def _maybe_build(self, inputs):
        input_shape = _shape_of(inputs)
        if self._batch_input_shape is not None and isinstance(input_shape, tuple):
            expected = self._batch_input_shape[1:]
            if tuple(input_shape[1:]) != tuple(expected):
                raise ValueError(
                    f"{self.name}: expected inputs of shape (batch, "
                    f"{', '.join(map(str, expected))}), got {input_shape}"
                )
        with _no_grad():
            self.build(input_shape)
        self._build_input_shape = input_shape
        self.built = True

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Output shape for `input_shape` (runs the layer on zeros when not overridden)."""
        shape = tuple(1 if d is None else int(d) for d in input_shape)
        with _no_grad():
            out = self(np.zeros(shape, np.float32))
        return (input_shape[0],) + tuple(out.shape[1:])

    @property
    def output_shape(self) -> Any:
        """The output shape seen on the first call, with the batch dim as None."""
        if self._output_shape is None:
            raise AttributeError(
                f"The layer {self.name!r} has never been called and thus has no "
                "defined output shape."
            )
        s = self._output_shape
        if isinstance(s, list):
            return [(None,) + tuple(x[1:]) for x in s]
        return (None,) + tuple(s[1:]) if len(s) else s

    @property
    def input_shape(self) -> Any:
        """The input shape the layer was built or declared with, batch dimension as None.

        Raises:
            AttributeError: the layer has never been called and declares no input shape.
        """
        if self._batch_input_shape is not None:
            return self._batch_input_shape
        if self._build_input_shape is None:
            raise AttributeError(f"The layer {self.name!r} has never been called.")
        s = self._build_input_shape
        return (None,) + tuple(s[1:]) if isinstance(s, tuple) and len(s) else s

    # ------------------------------------------------------------------ config
    def get_config(self) -> Config:
        """The layer's configuration: the constructor arguments as a JSON-able dict.

        ``type(layer).from_config(layer.get_config())`` makes an equal (unbuilt) layer.

        Returns:
            dict of argument name to value.
        """
        config = {"name": self.name, "trainable": self._trainable}
        if self._batch_input_shape is not None:
            config["batch_input_shape"] = self._batch_input_shape
        if getattr(self, "activity_regularizer", None) is not None:
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return config

    @classmethod
    def from_config(cls, config: Config) -> Layer:
        """A new layer from the dict that ``get_config`` returned.

        Args:
            config: the configuration dict.

        Returns:
            A new, unbuilt layer of this class.
        """
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


class Dense(Layer):
    """Just your regular densely-connected NN layer.

    ``output = activation(dot(input, kernel) + bias)``, where `kernel` is a weight matrix
    made by the layer and `bias` a bias vector (when ``use_bias``). Linear, ReLU, sigmoid
    and tanh activations run fused with the matrix product in one core op.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation function (name or callable); None means linear.
        use_bias: whether the layer uses a bias vector.
        kernel_initializer: initializer of the kernel (default ``"glorot_uniform"``).
        bias_initializer: initializer of the bias (default ``"zeros"``).
        kernel_regularizer, bias_regularizer: regularizers of the weights (``"l1"``,
            ``"l2"``, ``keras.regularizers.L1L2(...)``); their penalties join ``losses``.
        activity_regularizer: a regularizer of the output (see ``Layer``).

    Input shape:
        N-D tensor ``(batch_size, ..., input_dim)``; most commonly ``(batch_size, input_dim)``.

    Output shape:
        N-D tensor ``(batch_size, ..., units)``.
    """

    _traceable = True

    def __init__(
        self,
        units: int,
        activation: Union[str, Callable[..., Any], None] = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        units = (
            int(units)
            if isinstance(units, (int, np.integer, float)) and units == int(units)
            else units
        )
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        self.units = units
        self.activation = activations.get(activation)
        self._fused = _FUSED.get(self.activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self._input_dim = None

    def build(self, input_shape: Any) -> None:
        if not isinstance(input_shape, tuple) or len(input_shape) < 1 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: Dense needs inputs with a known last dimension, got {input_shape}"
            )
        self._input_dim = int(input_shape[-1])
        self.kernel = self.add_weight(
            "kernel",
            (self._input_dim, self.units),
            self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias",
                (self.units,),
                self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.built = True

    def _batched_form(self, index):
        kernel = index.get(id(self.kernel))
        bias = None if self.bias is None else index.get(id(self.bias))
        if kernel is None or (self.bias is not None and bias is None):
            return None
        act = None if self.activation is activations.linear else self.activation
        return _batched.Dense(kernel, bias, act)

    def call(self, inputs: Any) -> Any:
        shape = inputs.shape
        if len(shape) < 1 or shape[-1] != self._input_dim:
            raise ValueError(
                f"{self.name}: expected input with last dimension {self._input_dim}, "
                f"got {tuple(shape)}"
            )
        if self._fused is not None:
            return _core.linear(inputs, self.kernel, self.bias, self._fused)
        return self.activation(_core.linear(inputs, self.kernel, self.bias))

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            units=self.units,
            activation=activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer)
            if isinstance(self.kernel_initializer, initializers.Initializer)
            else None,
            bias_initializer=initializers.serialize(self.bias_initializer)
            if isinstance(self.bias_initializer, initializers.Initializer)
            else None,
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            kernel_constraint=constraints.serialize(self.kernel_constraint),
            bias_constraint=constraints.serialize(self.bias_constraint),
        )
        return config


class Flatten(Layer):
    """Flattens the input; does not affect the batch size.

    Input shape:
        ``(batch_size, d1, ..., dn)``.

    Output shape:
        ``(batch_size, d1 * ... * dn)``; a 1-D input becomes ``(batch_size, 1)``.
    """

    _traceable = True

    def __init__(self, data_format: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError("Flatten: only data_format='channels_last' is supported")
        self.data_format = data_format

    def _batched_form(self, index):
        return _batched.Flatten()

    def call(self, inputs: Any) -> Any:
        shape = inputs.shape
        n = shape[0] if len(shape) else 1
        flat = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        if len(shape) == 2:
            return inputs
        if isinstance(inputs, np.ndarray):
            return inputs.reshape(n, flat)
        return _core.reshape(inputs, (n, flat))

    def get_config(self) -> Config:
        config = super().get_config()
        config["data_format"] = self.data_format
        return config


class Reshape(Layer):
    """Reshapes each sample to `target_shape` (one entry may be -1).

    Input shape:
        ``(batch_size, ...)``.

    Output shape:
        ``(batch_size,) + target_shape``.
    """

    def __init__(self, target_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        target_shape = tuple(target_shape)
        # Keras 3's validate_reshape_shape: non-negative integers and at most one -1
        for d in target_shape:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < -1:
                raise ValueError(
                    "Each dimension in `target_shape` must be a non-negative "
                    "integer, or `-1` for a single unknown dimension. Received: "
                    f"target_shape={target_shape}."
                )
        if sum(d == -1 for d in target_shape) > 1:
            raise ValueError(
                "There must be at most one unknown dimension (-1) in "
                f"`target_shape`. Received: target_shape={target_shape}."
            )
        self.target_shape = tuple(int(d) for d in target_shape)

    def call(self, inputs: Any) -> Any:
        shape = inputs.shape
        n, size = shape[0], int(math.prod(shape[1:]))
        target = list(self.target_shape)
        if -1 in target:
            known = int(math.prod(d for d in target if d != -1))
            if known == 0 or size % known:
                raise ValueError(
                    f"{self.name}: cannot reshape {tuple(shape[1:])} to {self.target_shape}"
                )
            target[target.index(-1)] = size // known
        if int(math.prod(target)) != size:
            raise ValueError(
                f"{self.name}: cannot reshape {tuple(shape[1:])} to {self.target_shape}"
            )
        return _core.reshape(inputs, (n, *target))

    def get_config(self) -> Config:
        config = super().get_config()
        config["target_shape"] = self.target_shape
        return config


class Activation(Layer):
    """Applies an activation function to its input.

    Args:
        activation: name (``"relu"``, ``"softmax"``, …) or callable.

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input.
    """

    _traceable = True

    def __init__(self, activation: Union[str, Callable[..., Any], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def _batched_form(self, index):
        return _batched.Activation(self.activation)

    def call(self, inputs: Any) -> Any:
        return self.activation(inputs)

    def get_config(self) -> Config:
        config = super().get_config()
        config["activation"] = activations.serialize(self.activation)
        return config


class LeakyReLU(Layer):
    """Leaky rectified linear unit: ``x`` where ``x >= 0``, else ``negative_slope * x``
    (Keras 3's layer; its default slope 0.3, unlike the activation function's 0.2).

    Args:
        negative_slope: the slope for negative inputs, >= 0.
    """

    _traceable = True

    def __init__(self, negative_slope: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        slope = float(negative_slope)
        if not slope >= 0:  # also NaN
            raise ValueError(
                f"LeakyReLU: negative_slope must be a number >= 0, got {negative_slope!r}"
            )
        self.negative_slope = slope

    def call(self, inputs: Any) -> Any:
        return activations.leaky_relu(inputs, self.negative_slope)

    def get_config(self) -> Config:
        config = super().get_config()
        config["negative_slope"] = self.negative_slope
        return config


class Dropout(Layer):
    """Sets input units to 0 with frequency `rate` during training, scaling the others.

    In training ``output = input * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)``
    (``rate=1`` gives zeros); at inference the input passes unchanged.

    Without a seed the mask is drawn from the core's global generator (``set_seed``) by a
    core op, so a traced training step (``metalearn.function``, ``fit``) draws a new mask
    on every replay, as the eager step. With a seed the layer has its own stream, as Keras
    3's SeedGenerator: call ``i`` draws from child ``i`` of ``SeedSequence(seed)`` (NumPy's
    PCG64), a new mask on every call, the same sequence for every layer made with that
    seed, and the global generator untouched. ``fit``'s traced step draws that mask before
    each replay and passes it in, so it equals the eager step step by step; inside a
    ``metalearn.function`` of your own the seeded mask is a Python value and is recorded
    as drawn.

    Args:
        rate: float in [0, 1], the fraction of units to drop.
        noise_shape: shape of the mask, one entry per input axis, broadcast over the input:
            each entry is None (the input's size), 1 (one draw shared along the axis) or
            the input's size; ``(batch, 1, features)`` drops the same features at every
            timestep, as Keras.
        seed: optional integer: the layer's own reproducible stream of masks.

    Call arguments:
        training: whether to drop (defaults to the flag of the enclosing call: True inside
            ``fit``, False otherwise).
    """

    _traceable = True

    def __init__(
        self,
        rate: float,
        noise_shape: Optional[Sequence[Optional[int]]] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float, np.integer, np.floating))
            or not 0.0 <= float(rate) <= 1.0
        ):
            raise ValueError(
                "Invalid value received for argument `rate`. Expected a float value "
                f"between 0 and 1. Received: rate={rate!r}"
            )
        self.rate = float(rate)
        if noise_shape is not None:
            # Keras 3 (Dropout._validate_noise_shape): a ValueError for a string or a
            # non-iterable as for a bad entry
            given = noise_shape
            try:
                if isinstance(noise_shape, (str, bytes)):
                    raise TypeError
                noise_shape = tuple(noise_shape)
            except TypeError:
                raise ValueError(
                    "Dropout: invalid value received for argument `noise_shape`: "
                    f"expected a tuple or list of integers, got noise_shape={given!r}"
                ) from None
            for d in noise_shape:
                if d is not None and (
                    isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                ):
                    raise ValueError(
                        f"Dropout: noise_shape entries must be positive ints or None, "
                        f"got noise_shape={tuple(noise_shape)!r}"
                    )
            noise_shape = tuple(None if d is None else int(d) for d in noise_shape)
        self.noise_shape = noise_shape
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"Argument `seed` must be an integer. Received: seed={seed!r}")
        self.seed = None if seed is None else int(seed)
        self._seed_calls = 0  # draws made from (seed, i): the state of the layer's stream
        self._given_noise = None  # fit's traced step passes the seeded draw in (a trace input)
        self._draws_given = False
        self._last_input_shape = None

    def _seeded_uniform(self, shape):
        """The next uniform [0, 1) draw of the layer's own stream (advances it)."""
        # the i-th child of the seed's SeedSequence (what SeedSequence.spawn gives):
        # independent streams, one per call
        seq = np.random.SeedSequence(self.seed % (1 << 64), spawn_key=(self._seed_calls,))
        self._seed_calls += 1
        return np.random.Generator(np.random.PCG64(seq)).random(shape, dtype=np.float32)

    def _mask_shape(self, shape):
        if self.noise_shape is None:
            return shape
        if len(self.noise_shape) != len(shape):
            raise ValueError(
                f"{self.name}: noise_shape {self.noise_shape} has {len(self.noise_shape)} "
                f"entries but the inputs of shape {shape} have {len(shape)} axes"
            )
        mask = tuple(s if d is None else d for s, d in zip(shape, self.noise_shape))
        if any(d != 1 and d != s for s, d in zip(shape, mask)):
            raise ValueError(
                f"{self.name}: noise_shape {self.noise_shape} cannot be broadcast to "
                f"inputs of shape {shape}: each entry must be None, 1 or the input's size"
            )
        return mask

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        self._last_input_shape = tuple(int(d) for d in inputs.shape)  # for fit's traced step
        if not training or self.rate == 0.0:
            return inputs
        shape = self._mask_shape(self._last_input_shape)
        if self.rate == 1.0:
            return _core.mul(inputs, np.zeros(shape, np.float32))
        if self.seed is None:
            u = _core.random_uniform(shape, 0.0, 1.0)
        elif self._given_noise is not None:
            u, self._given_noise = self._given_noise, None
            if tuple(u.shape) != shape:
                raise ValueError(
                    f"{self.name}: the seeded draw given has shape {tuple(u.shape)}, "
                    f"the mask needs {shape}"
                )
        elif getattr(self, "_draws_given", False):
            # inside fit's traced step a draw made here would be recorded as a constant
            raise ValueError(f"{self.name}: called again inside one traced step")
        else:
            u = _core.tensor(self._seeded_uniform(shape))
        # keep where u >= rate: sign(u - rate) + 1 is 0 below, 1 at, 2 above the rate
        keep = _core.clip(_core.add(_core.sign(_core.sub(u, self.rate)), 1.0), 0.0, 1.0)
        return _core.mul(inputs, _core.mul(keep, 1.0 / (1.0 - self.rate)))

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(rate=self.rate, noise_shape=self.noise_shape, seed=self.seed)
        return config


class InputLayer(Layer):
    """The entry point of a model: declares the shape of one sample.

    ``Sequential([InputLayer((28, 28)), Flatten(), Dense(10)])`` builds at construction.

    Args:
        shape: shape of one sample, without the batch dim (``input_shape`` is accepted).
        batch_size: optional fixed batch size.
        batch_shape: the whole shape, batch dim first (instead of `shape` and
            `batch_size`; ``batch_input_shape`` is accepted).
        name: the layer's name.

    Input/Output shape:
        ``(batch_size,) + shape``; the layer passes its input through.

    Its configuration is Keras 3's: ``{"batch_shape", "dtype", "sparse", "ragged", "name",
    "optional"}``, so the batch size survives ``from_config``.
    """

    _traceable = True

    def __init__(
        self,
        shape: Optional[Shape] = None,
        batch_size: Optional[int] = None,
        dtype: Any = None,
        sparse: Optional[bool] = None,
        ragged: Optional[bool] = None,
        batch_shape: Optional[Shape] = None,
        name: Optional[str] = None,
        optional: bool = False,
        input_shape: Optional[Shape] = None,
        batch_input_shape: Optional[Shape] = None,
    ) -> None:
        if shape is None:
            shape = input_shape
        if batch_shape is None:
            batch_shape = batch_input_shape
        # Keras 3's checks (input_layer.py), in its words
        if shape is not None and batch_shape is not None:
            raise ValueError("You cannot pass both `shape` and `batch_shape` at the same time.")
        if batch_size is not None and batch_shape is not None:
            raise ValueError(
                "You cannot pass both `batch_size` and `batch_shape` at the same time."
            )
        if shape is None and batch_shape is None:
            raise ValueError("You must pass a `shape` argument.")
        if sparse or ragged or optional:
            raise NotImplementedError(
                "InputLayer: sparse, ragged and optional inputs are not supported"
            )
        if batch_shape is not None:
            batch_shape = tuple(batch_shape)
            if not batch_shape:
                raise ValueError("InputLayer: batch_shape needs a batch dimension, got ()")
        else:
            shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
            batch_shape = (batch_size,) + shape
        super().__init__(name=name, dtype=dtype, batch_input_shape=batch_shape)
        self.batch_size = batch_shape[0]

    @property
    def batch_shape(self) -> Shape:
        """``(batch_size,) + shape`` (the batch dim None when not fixed)."""
        return self._batch_input_shape

    # the symbolic tensor of the functional API (keras.Input's result), as Keras 3's
    @property
    def shape(self) -> Shape:
        """The input's shape, batch dim first (None when not fixed), as a KerasTensor's."""
        return self._batch_input_shape

    @property
    def ndim(self) -> int:
        return len(self._batch_input_shape)

    def call(self, inputs: Any) -> Any:
        return inputs

    def get_config(self) -> Config:
        return {
            "batch_shape": self._batch_input_shape,
            "dtype": "float32",
            "sparse": False,
            "ragged": False,
            "name": self.name,
            "optional": False,
        }


def Input(
    shape: Optional[Shape] = None,
    batch_size: Optional[int] = None,
    name: Optional[str] = None,
    **kwargs: Any,
) -> InputLayer:
    """The model's input: the first entry of a ``Sequential``, or the symbolic input of
    the functional API (``x = Input((4,)); y = Dense(2)(x); Model(x, y)``).

    It returns an ``InputLayer``, which stands for its symbolic tensor as well (``shape``
    ``(None, 4)``; see ``metalearn.keras.functional``).

    Args:
        shape: shape of one sample, without the batch dim.
        batch_size: optional fixed batch size.
        name: optional name.
    """
    return InputLayer(shape=shape, batch_size=batch_size, name=name, **kwargs)


class Lambda(Layer):
    """Wraps an arbitrary function of tensors as a layer (no weights).

    Args:
        function: ``f(inputs)`` or ``f(inputs, **arguments)``, built from metalearn ops.
        output_shape: optional, for ``compute_output_shape``.
        arguments: optional dict of keyword arguments passed to `function`.

    Input/Output shape:
        Whatever `function` takes and returns.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        output_shape: Any = None,
        arguments: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda: function must be callable, got {type(function).__name__}")
        self.function = function
        self._lambda_output_shape = output_shape
        self.arguments = dict(arguments or {})

    def call(self, inputs: Any) -> Any:
        return self.function(inputs, **self.arguments)

    def compute_output_shape(self, input_shape: Any) -> Any:
        if self._lambda_output_shape is None:
            return super().compute_output_shape(input_shape)
        shape = self._lambda_output_shape
        return (input_shape[0],) + tuple(shape(input_shape)[1:] if callable(shape) else shape)

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            function=self.function, output_shape=self._lambda_output_shape, arguments=self.arguments
        )
        return config


class LayerNormalization(Layer):
    """Layer normalization (Ba et al. 2016), as Keras 3's.

    Over the axes `axis` of each sample: ``(x - mean) / sqrt(variance + epsilon) * gamma +
    beta`` (population variance). Composed of core ops, so it is differentiable to any
    order (MAML through it is second order) and recorded in ``fit``'s traced step.

    Args:
        axis: int or list of ints, the axes to normalise (default -1).
        epsilon: added to the variance, default 1e-3 (Keras 3's).
        center: add the learned offset ``beta`` (default True).
        scale: multiply by the learned ``gamma`` (default True).
        rms_scaling: as Keras 3.15: ``x / sqrt(variance + epsilon) * gamma`` (no centring,
            no beta).
        beta_initializer, gamma_initializer: default ``"zeros"`` and ``"ones"``.
        beta_regularizer, gamma_regularizer: regularizers of the weights.
    """

    _traceable = True

    def __init__(
        self,
        axis: Union[int, Sequence[int]] = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rms_scaling: bool = False,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            self.axis = [int(a) for a in axis]
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            self.axis = int(axis)
        else:
            raise TypeError(
                "Expected an int or a list/tuple of ints for the argument 'axis', "
                f"but received: {axis!r}"
            )
        epsilon = float(epsilon)
        if not np.isfinite(epsilon) or epsilon < 0:
            raise ValueError(f"LayerNormalization: epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon
        self.center, self.scale = bool(center), bool(scale)
        self.rms_scaling = bool(rms_scaling)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self._axes = None

    def _resolve_axes(self, ndim):
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        out = []
        for a in axes:
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"Axis {a} is out of bounds for input shape of rank {ndim}. "
                    f"Received: axis={self.axis}"
                )
            out.append(a % ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"Duplicate axis: {self.axis}")
        return sorted(out)

    def build(self, input_shape: Any) -> None:
        ndim = len(input_shape)
        self._axes = self._resolve_axes(ndim)
        shape = tuple(int(input_shape[a]) for a in self._axes)
        # gamma first, as Keras 3 creates them
        self.gamma = (
            self.add_weight(
                "gamma",
                shape,
                self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
            )
            if self.scale or self.rms_scaling
            else None
        )
        self.beta = (
            self.add_weight(
                "beta",
                shape,
                self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
            )
            if self.center and not self.rms_scaling
            else None
        )
        self._ndim = ndim
        self.built = True

    def call(self, inputs: Any) -> Any:
        x = _core.as_tensor(inputs) if not isinstance(inputs, _core.Tensor) else inputs
        if x.ndim != self._ndim:
            raise ValueError(
                f"{self.name}: expected inputs of rank {self._ndim}, got {tuple(x.shape)}"
            )
        axes = tuple(self._axes)
        bshape = [1] * x.ndim
        for a in axes:
            bshape[a] = x.shape[a]
        mean = _core.reduce_mean(x, axis=axes, keepdims=True)
        centred = _core.sub(x, mean)
        var = _core.reduce_mean(_core.square(centred), axis=axes, keepdims=True)
        inv = _core.pow(_core.add_scalar(var, self.epsilon), -0.5)
        out = _core.mul(x if self.rms_scaling else centred, inv)
        if self.gamma is not None:
            out = _core.mul(out, _core.reshape(self.gamma, tuple(bshape)))
        if self.beta is not None:
            out = _core.add(out, _core.reshape(self.beta, tuple(bshape)))
        return out

    def compute_output_shape(self, input_shape: Any) -> Any:
        self._resolve_axes(len(input_shape))
        return input_shape

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            axis=self.axis,
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
            rms_scaling=self.rms_scaling,
            beta_initializer=initializers.serialize(self.beta_initializer),
            gamma_initializer=initializers.serialize(self.gamma_initializer),
            beta_regularizer=regularizers.serialize(self.beta_regularizer),
            gamma_regularizer=regularizers.serialize(self.gamma_regularizer),
            beta_constraint=constraints.serialize(self.beta_constraint),
            gamma_constraint=constraints.serialize(self.gamma_constraint),
        )
        return config


class Embedding(Layer):
    """Turns non-negative integers (indices) into dense vectors of fixed size, as Keras 3's
    ``Embedding``: ``embeddings[indices]``, output shape ``indices.shape + (output_dim,)``.

    The lookup is a gather whose gradient (a scatter-add of rows) is differentiable again.
    The indices are read in Python, so a model with an Embedding trains with eager steps
    (its training step is not recorded as a trace).

    Args:
        input_dim: size of the vocabulary (largest index + 1).
        output_dim: size of each vector.
        embeddings_initializer: default ``"uniform"`` (RandomUniform(-0.05, 0.05)).
        embeddings_regularizer: a regularizer of the table.
        mask_zero: index 0 is padding: ``compute_mask`` gives ``indices != 0`` (the
            layers after it, a recurrent layer, skip those steps), as Keras 3.
        weights: initial table (an array, or a list of one): the layer is built at once.

    Raises:
        ValueError: an index outside ``[0, input_dim)`` or not an integer.
    """

    _traceable = False  # the indices become a Python-side list: not recordable

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        weights: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("input_length", None)  # Keras 2's argument, ignored by Keras 3 as well
        super().__init__(**kwargs)
        for what, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"`{what}` must be a positive integer. Received: {what}={v!r}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = constraints.get(embeddings_constraint)
        self.mask_zero = bool(mask_zero)
        if weights is not None:  # built now with these values, as Keras 3
            if isinstance(weights, np.ndarray):
                weights = [weights]
            self.build()
            self.set_weights(weights)

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        self.embeddings = self.add_weight(
            "embeddings",
            (self.input_dim, self.output_dim),
            self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
        )
        self.built = True

    def call(self, inputs: Any) -> Any:
        idx = np.asarray(inputs)
        if idx.dtype.kind == "f":
            as_int = idx.astype(np.int64)
            if not np.array_equal(as_int, idx):
                raise ValueError(f"{self.name}: Embedding needs integer indices")
            idx = as_int
        elif idx.dtype.kind not in "iu":
            raise ValueError(f"{self.name}: Embedding needs integer indices, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self.input_dim):
            bad = idx[(idx < 0) | (idx >= self.input_dim)].flat[0]
            raise ValueError(
                f"{self.name}: index {bad} is outside [0, {self.input_dim}) (input_dim)"
            )
        rows = _core.gather(self.embeddings, idx.reshape(-1), 0)
        return _core.reshape(rows, tuple(idx.shape) + (self.output_dim,))

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """``inputs != 0`` (1.0 / 0.0) when ``mask_zero``, else None (Keras 3)."""
        if not self.mask_zero:
            return None
        return _core.tensor((np.asarray(inputs) != 0).astype(np.float32))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            embeddings_initializer=initializers.serialize(self.embeddings_initializer),
            embeddings_regularizer=regularizers.serialize(self.embeddings_regularizer),
            embeddings_constraint=constraints.serialize(self.embeddings_constraint),
            mask_zero=self.mask_zero,
        )
        return config


class _Merge(Layer):
    """Base of the merge layers: ``call`` takes a list of at least two tensors."""

    _traceable = True
    _min_inputs = 2

    def _check_list(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < self._min_inputs:
            raise ValueError(
                f"A merge layer should be called on a list of at least {self._min_inputs} "
                f"inputs. Got {type(inputs).__name__}"
                + (f" of {len(inputs)} inputs" if isinstance(inputs, (list, tuple)) else "")
            )
        return [
            _core.as_tensor(np.ascontiguousarray(t, np.float32))
            if not isinstance(t, _core.Tensor)
            else t
            for t in inputs
        ]

    def build(self, input_shape: Any) -> None:
        if not isinstance(input_shape, list) or len(input_shape) < self._min_inputs:
            raise ValueError(
                f"A merge layer should be called on a list of at least {self._min_inputs} "
                f"inputs. Got {input_shape}"
            )
        self.built = True


class Add(_Merge):
    """Sum of a list of tensors of the same shape (Keras 3's ``Add``)."""

    _traceable = True

    def call(self, inputs: Any) -> Any:
        xs = self._check_list(inputs)
        out = xs[0]
        for t in xs[1:]:
            out = _core.add(out, t)
        return out


class Subtract(_Merge):
    """``inputs[0] - inputs[1]`` (exactly two inputs, as Keras 3)."""

    _traceable = True

    def call(self, inputs: Any) -> Any:
        xs = self._check_list(inputs)
        if len(xs) != 2:
            raise ValueError(
                f"A `Subtract` layer should be called on exactly 2 inputs. Received: {len(xs)}"
            )
        return _core.sub(xs[0], xs[1])


class Multiply(_Merge):
    """Element-wise product of a list of tensors (Keras 3's ``Multiply``)."""

    _traceable = True

    def call(self, inputs: Any) -> Any:
        xs = self._check_list(inputs)
        out = xs[0]
        for t in xs[1:]:
            out = _core.mul(out, t)
        return out


class Average(_Merge):
    """Element-wise mean of a list of tensors (Keras 3's ``Average``)."""

    _traceable = True

    def call(self, inputs: Any) -> Any:
        xs = self._check_list(inputs)
        out = xs[0]
        for t in xs[1:]:
            out = _core.add(out, t)
        return _core.mul(out, 1.0 / len(xs))


class Concatenate(_Merge):
    """Joins a list of tensors along `axis` (default -1), as Keras 3's ``Concatenate``."""

    _traceable = True

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, inputs: Any) -> Any:
        xs = self._check_list(inputs)
        nd = xs[0].ndim
        if any(t.ndim != nd for t in xs) or not -nd <= self.axis < nd:
            raise ValueError(
                f"{self.name}: Concatenate needs inputs of one rank with axis {self.axis} in "
                f"range; got shapes {[tuple(t.shape) for t in xs]}"
            )
        return _core.concat(xs, self.axis % nd)

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(axis=self.axis)
        return config


def serialize(layer: Layer) -> Config:
    """``{"class_name": ..., "config": ...}`` of a layer."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


_SHIPPED_MODULES = (
    "metalearn.keras.layers",
    "metalearn.keras.conv_layers",
    "metalearn.keras.memory_layers",
    "metalearn.keras.rnn",
    "metalearn.keras.models",
    "metalearn.networks",
    "metalearn.meta.protonet",
)


_SHIPPED_LAYERS: Optional[Dict[str, Any]] = None


def _shipped_layers():
    """Every public Layer class metalearn ships, by class name (and alias): what
    ``deserialize`` finds without ``custom_objects``, as Keras' registry of built-ins. Built
    once, with every shipped module imported (their classes are all defined at import), and
    copied for each caller: walking the subclasses cost ~40 us, and ``clone_model`` (every
    ``adapt``) deserializes each layer."""
    global _SHIPPED_LAYERS
    if _SHIPPED_LAYERS is None:
        import importlib

        for name in _SHIPPED_MODULES:
            importlib.import_module(name)
        from . import conv_layers

        out, stack = {}, [Layer]
        while stack:
            for cls in stack.pop().__subclasses__():
                stack.append(cls)
                if cls.__module__ in _SHIPPED_MODULES and not cls.__name__.startswith("_"):
                    out.setdefault(cls.__name__, cls)
        for alias in conv_layers.__all__:  # MaxPooling2D, AvgPool2D, GlobalAvgPool2D
            out.setdefault(alias, getattr(conv_layers, alias))
        _SHIPPED_LAYERS = out
    return dict(_SHIPPED_LAYERS)


def deserialize(config: Config, custom_objects: Optional[Dict[str, Any]] = None) -> Layer:
    """A layer from ``serialize``'s output.

    Every layer metalearn ships (core, convolution, pooling, normalisation, memory layers,
    ``Sequential``, the article's models and ProtoNet's ``PrototypeClassifier``) is found
    by its class name; classes of your
    own go in `custom_objects` (``{"MyLayer": MyLayer}``), which takes precedence.

    Raises:
        ValueError: the class name is unknown.
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            f"deserialize: expected a dict with 'class_name' and 'config' (what "
            f"serialize returns), got {config!r}"
        )
    registry = _shipped_layers()
    registry.update(custom_objects or {})
    cls = registry.get(config["class_name"])
    if cls is None:
        raise ValueError(f"Unknown layer class {config['class_name']!r}; pass it in custom_objects")
    inner = dict(config.get("config", {}))
    if custom_objects and _takes_custom_objects(cls):
        return cls.from_config(inner, custom_objects=custom_objects)
    return cls.from_config(inner)


_TAKES_CUSTOM_OBJECTS: Dict[Any, bool] = {}


def _takes_custom_objects(cls) -> bool:
    """Whether ``cls.from_config`` takes ``custom_objects``: read off its signature once per
    class (inspect.signature cost ~15 us, once per layer of every ``clone_model``)."""
    takes = _TAKES_CUSTOM_OBJECTS.get(cls)
    if takes is None:
        takes = "custom_objects" in inspect.signature(cls.from_config).parameters
        _TAKES_CUSTOM_OBJECTS[cls] = takes
    return takes


get = deserialize

from .conv_layers import *  # noqa: E402,F401,F403  (Conv2D, pooling, BatchNormalization)
from .memory_layers import MemoryRecall  # noqa: E402,F401  (Kaiser et al. 2017 recall)
from .rnn import GRU, LSTM, Masking, SimpleRNN  # noqa: E402,F401  (recurrent layers, masks)

_SYMBOLIC = (_graph.KerasTensor, InputLayer)  # what makes a layer call symbolic


class Permute(Layer):
    """Permutes the dims of each sample, as Keras 3's ``Permute``: ``dims`` is a
    permutation of ``1..rank`` (the batch dim stays first); a transpose.

    Args:
        dims: tuple of ints, e.g. ``(2, 1)`` swaps the two sample dims.

    Raises:
        ValueError: `dims` is not a permutation of ``1..len(dims)``, or the input's rank is
            not ``len(dims) + 1``.
    """

    _traceable = True

    def __init__(self, dims: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            dims = tuple(dims)
        except TypeError:
            raise ValueError(f"Permute: dims must be a tuple of ints, got {dims!r}") from None
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims) or (
            sorted(int(d) for d in dims) != list(range(1, len(dims) + 1))
        ):
            raise ValueError(
                "Invalid permutation argument `dims` for Permute Layer. The set of indices in "
                f"`dims` must be consecutive and start from 1. Received dims={dims}"
            )
        self.dims = tuple(int(d) for d in dims)

    def _check(self, shape):
        if len(shape) != len(self.dims) + 1:
            raise ValueError(
                f"{self.name}: Permute{self.dims} expects inputs of rank {len(self.dims) + 1}, "
                f"got shape {tuple(shape)}"
            )

    def call(self, inputs: Any) -> Any:
        self._check(inputs.shape)
        x = inputs if isinstance(inputs, _core.Tensor) else _core.as_tensor(inputs)
        return _core.transpose(x, (0,) + self.dims)

    def compute_output_shape(self, input_shape: Any) -> Any:
        self._check(input_shape)
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def get_config(self) -> Config:
        config = super().get_config()
        config["dims"] = self.dims
        return config


class RepeatVector(Layer):
    """Repeats each input vector `n` times, as Keras 3's ``RepeatVector``: ``(batch,
    features)`` to ``(batch, n, features)`` (a broadcast; its gradient sums the copies).

    Raises:
        TypeError: `n` is not an int. ValueError: `n` < 1, or the input is not 2-D.
    """

    _traceable = True

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise TypeError(f"Expected an integer value for `n`, got {type(n)}.")
        if n <= 0:
            raise ValueError(f"Argument `n` should be a positive integer. Received: n={n}")
        self.n = int(n)

    def _check(self, shape):
        if len(shape) != 2:
            raise ValueError(
                f"{self.name}: RepeatVector expects inputs of shape (batch, features), got "
                f"shape {tuple(shape)}"
            )

    def call(self, inputs: Any) -> Any:
        self._check(inputs.shape)
        x = inputs if isinstance(inputs, _core.Tensor) else _core.as_tensor(inputs)
        b, d = (int(s) for s in x.shape)
        return _core.broadcast_to(_core.reshape(x, (b, 1, d)), (b, self.n, d))

    def compute_output_shape(self, input_shape: Any) -> Any:
        self._check(input_shape)
        return (input_shape[0], self.n, input_shape[1])

    def get_config(self) -> Config:
        config = super().get_config()
        config["n"] = self.n
        return config


__all__ += ["Permute", "RepeatVector"]
