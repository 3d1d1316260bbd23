"""Models, as ``keras.Model`` and ``keras.Sequential``: layers with a training loop.

A Model is a Layer that tracks the layers assigned to it, and adds ``compile``/``fit``/
``evaluate``/``predict``, ``summary`` and weight files. Subclass it (define ``__init__``
and ``call``) or stack layers in a ``Sequential``.

The training step is lean: the forward pass, the compiled loss, one ``_core.grad`` over
the trainable variables and one C optimizer step for all of them; metrics are NumPy on the
prediction.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from metalearn._typing import ArrayLike, Config, Shape
import math
import os
import warnings

import numpy as np

from metalearn import _budget, _core
from metalearn.tape import no_grad as _no_grad
from metalearn.progress import Progbar

from . import batched as _batched
from . import callbacks as _callbacks
from .. import debugging as _debugging  # enable_check_numerics() hook in _eager_train_step
from . import activations as _activations
from . import conv_layers as _conv_layers
from . import layers as _layers
from . import rnn as _rnn
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from .epoch_iterator import EpochIterator, train_validation_split
from .epoch_iterator import BatchIterator, RAN_OUT, is_batch_iterator
from .epoch_iterator import PyDatasetIterator, is_py_dataset
from .epoch_iterator import check_class_weight, class_weight_to_sample_weights
from . import saving as _saving
from . import utils as _utils
from . import functional as _graph
from . import compile_utils as _compile_utils

__all__ = ["Model", "Sequential", "Functional", "load_model", "load_weights_file"]


def _as_array(x, name):
    if x is None:
        return None
    if isinstance(x, _core.Tensor):
        return np.asarray(x)
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name}: expected real numbers (bool, int or float), got an array of dtype {arr.dtype}"
        )
    return arr


def _as_float_input(x):
    if x is None:
        raise TypeError("x: expected an array of inputs, got None")
    arr = _as_array(x, "x")
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def _as_target(y):
    arr = _as_array(y, "y")
    if arr is None:
        return None
    if np.issubdtype(arr.dtype, np.integer):
        return arr  # sparse labels stay integers
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def _tensors(a, targets=False):
    """A batch as the traced step takes it: a tensor, or a list of tensors for Columns."""
    if isinstance(a, _graph.Columns):
        return [_tensors(c, targets) for c in a.arrays]
    if targets:
        return _core.as_tensor(np.ascontiguousarray(a, dtype=np.float32))
    return _core.as_tensor(a)


_takes_training_cache: Dict[Any, bool] = {}


def _pythonify(logs):
    """A step's logs as Python numbers (a scalar tensor or array becomes a float)."""
    if logs is None:
        return {}
    if not isinstance(logs, dict):
        raise TypeError(
            f"train_step/test_step must return a dict of logs, got {type(logs).__name__}"
        )
    out = {}
    for k, v in logs.items():
        if isinstance(v, (_core.Tensor, np.ndarray, np.generic)):
            a = np.asarray(v)
            v = float(a) if a.size == 1 else np.array(a, copy=True)
        out[k] = v
    return out


class _grad_on:
    """Grad mode on inside a ``with`` block (restored after)."""

    def __enter__(self):
        self._prev = _core.is_grad_enabled()
        _core.set_grad_enabled(True)

    def __exit__(self, *exc):
        _core.set_grad_enabled(self._prev)
        return False


def _verbose(verbose):
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or not isinstance(verbose, (int, np.integer)) or verbose < 0:
        raise ValueError(f"verbose should be 'auto', 0, 1 or 2, got verbose={verbose!r}")
    return int(verbose)


def _count(where, name, value, default=None, minimum=1):
    """An integer argument (batch_size, epochs, ...), checked before any work is done.

    None gives `default` (when there is one). A bool, a float (2.5, and 2.0 too, as Keras'
    "batch_size should be a positive integer value") or a value below `minimum` is refused
    with a ValueError that names the argument.
    """
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{where}: {name} must be {kind}, got {name}={value!r}")
    if value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{where}: {name} must be {kind}, got {int(value)}")
    return int(value)


class Model(_layers.Layer):
    """A layer with training and inference features.

    Subclass it, create layers in ``__init__`` (after ``super().__init__()``) and use them
    in ``call``::

        class MLP(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense1 = keras.layers.Dense(32, activation="relu")
                self.dense2 = keras.layers.Dense(5, activation="softmax")

            def call(self, inputs):
                return self.dense2(self.dense1(inputs))

    The model builds on its first call. ``Model(inputs, outputs)`` makes a functional
    model (``Functional``; inputs and outputs each a tensor, a list or a dict), as Keras 3.

    Args:
        name: the model's name.
        trainable: whether its weights are trained.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        # Model(inputs, outputs) is a Functional model, as in Keras 3
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            return super().__new__(Functional)
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or "inputs" in kwargs or "outputs" in kwargs:
            raise TypeError(
                "metalearn.keras.Model: a subclass of Model cannot take (inputs, outputs); "
                "call Model(inputs, outputs) itself, or define call()"
            )
        super().__init__(**kwargs)
        self.optimizer = None
        self.loss = None
        self.compiled_loss = None
        self._pending_loss = None  # compile(loss="crossentropy"): resolved from the shapes
        self._compiled_metrics = []
        self._metric_entries = []
        self._metric_specs = []
        self._weighted_metric_specs = []
        self._metrics_resolved = False
        self.stop_evaluating = False
        self.stop_predicting = False
        self.stop_training = False
        self.history = None
        self._is_compiled = False
        self._fit_cache = None
        self._checked = {}  # data signature -> output shape, see _dry_run

    # a functional model with several inputs / outputs (Functional overrides these)
    _multi_in = False
    _multi_out = False

    # --------------------------------------------------------------- structure
    def build(self, input_shape: Optional[Shape] = None) -> None:
        """Builds the model by running it once on zeros of `input_shape` (batch dim may be
        None)."""
        if input_shape is None:
            if self._batch_input_shape is None:
                raise ValueError(f"{self.name}.build: an input_shape is required")
            input_shape = self._batch_input_shape
        shape = tuple(1 if d is None else int(d) for d in input_shape)
        self.built = True
        self._build_input_shape = shape
        with _no_grad():
            out = self.call(np.zeros(shape, np.float32))
        self._output_shape = _layers._shape_of(out)

    def _maybe_build(self, inputs):
        # A subclassed model builds its sub-layers while running call.
        self._build_input_shape = _layers._shape_of(inputs)
        self.built = True

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement call(inputs)")

    @property
    def layers(self) -> List[_layers.Layer]:
        """The layers assigned to the model, in assignment order."""
        return [layer for _, layer in self._sublayers]

    @layers.setter
    def layers(self, _):
        raise AttributeError(
            "`Model.layers` attribute is reserved and should not be used. Please use another name."
        )

    def get_layer(self, name: Optional[str] = None, index: Optional[int] = None) -> _layers.Layer:
        """A layer by name or by index in ``layers``."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"No such layer: {name}. Existing layers are: {[l.name for l in self.layers]}"
        )

    @property
    def metrics_names(self) -> List[str]:
        """``"loss"``, then the compiled metrics' keys in the logs (``metrics`` first, then
        ``weighted_metrics``), once the metrics are resolved by a first batch."""
        return ["loss"] + [key for key, _, _ in self._metric_entries]

    @property
    def metrics(self) -> List[Any]:
        return list(self._compiled_metrics)

    # ----------------------------------------------------------------- summary
    def summary(
        self,
        line_length: Optional[int] = None,
        positions: Optional[Sequence[float]] = None,
        print_fn: Optional[Callable[..., Any]] = None,
        expand_nested: bool = False,
    ) -> None:
        """Prints a table of the layers: name (type), output shape, parameter count.

        Args:
            line_length: total width (default 65).
            positions: relative or absolute column end positions.
            print_fn: function taking one line (default ``print``).
            expand_nested: also list the layers inside nested models.
        """
        if not self.built:
            raise ValueError(
                "This model has not yet been built. Build the model first by calling "
                "`build()` or by calling the model on a batch of data."
            )
        print_fn = print_fn or print
        # a functional model adds Keras' "Connected to" column (each call's inputs)
        conn = self._connected_to() if isinstance(self, Functional) else None
        line_length = line_length or (98 if conn is not None else 65)
        positions = positions or (
            [0.33, 0.55, 0.67, 1.0] if conn is not None else [0.45, 0.85, 1.0]
        )
        if positions[-1] <= 1:
            positions = [int(line_length * p) for p in positions]
        header = ["Layer (type)", "Output Shape", "Param #"]
        if conn is not None:
            header.append("Connected to")

        def row(fields):
            line = ""
            for i, f in enumerate(fields):
                if i > 0:
                    line = line[:-1] + " "
                line += str(f)
                line = line[: positions[i]]
                line += " " * (positions[i] - len(line))
            return line

        print_fn(f'Model: "{self.name}"')
        print_fn("_" * line_length)
        print_fn(row([" " + header[0]] + header[1:]))
        print_fn("=" * line_length)

        def shape_text(layer):
            try:
                return str(layer.output_shape)
            except AttributeError:
                return "?"

        def rows(layer, indent):
            for i, sub in enumerate(layer.layers if isinstance(layer, Model) else []):
                fields = [
                    " " + indent + f"{sub.name} ({type(sub).__name__})",
                    shape_text(sub),
                    str(sub.count_params()),
                ]
                links = (conn or {}).get(id(sub), ["-"]) if layer is self else []
                if conn is not None:
                    fields.append(links[0] if links else "")
                print_fn(row(fields))
                for more in links[1:] if conn is not None else []:  # one line per input
                    print_fn(row(["", "", "", more]))
                if expand_nested and isinstance(sub, Model):
                    rows(sub, indent + "  ")

        rows(self, "")
        print_fn("=" * line_length)
        trainable = int(sum(int(np.prod(v.shape)) for v in self.trainable_weights))
        total = self.count_params()
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn("_" * line_length)

    # ----------------------------------------------------------------- compile
    def compile(
        self,
        optimizer: Any = "adam",
        loss: Any = None,
        metrics: Any = None,
        loss_weights: Any = None,
        weighted_metrics: Any = None,
        run_eagerly: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        """Configures the model for training.

        Args:
            optimizer: name (``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"``) or optimizer
                instance. (Keras' default is ``"rmsprop"``; metalearn's stays Adam, as in
                its earlier releases.)
            loss: name, Loss instance or function ``f(y_true, y_pred)`` of per-sample values
                (a model with several outputs: a list in output order, a dict by output
                name, or one loss for every output; the training loss is the weighted sum);
                ``"crossentropy"``/``"ce"`` pick the binary, sparse categorical or
                categorical cross-entropy from the shapes of the first batch, as Keras 3.
            metrics: list of names (``"accuracy"`` is resolved from the shapes as Keras
                does), Metric instances or functions; they ignore ``sample_weight``. Several
                outputs: a list of lists in output order or a dict by output name; the
                logs name them ``<output>_<metric>`` and each output's loss
                ``<output>_loss``, as Keras 3.
            loss_weights: several outputs only: a list or dict of each output's weight in
                the total loss (default 1 each), as Keras 3.
            weighted_metrics: the same, weighted by ``sample_weight`` (Keras 3's split);
                in the logs a name already taken gets ``weighted_`` in front.
            run_eagerly: None (default) traces fit's step when the model allows it, True
                keeps it eager, False requires the trace.

        Raises:
            ValueError: `metrics`/`weighted_metrics` not a list or tuple, an unknown name;
                the previous compile then stays in place.
        """
        if kwargs:
            raise TypeError(f"compile: unexpected keyword argument(s) {sorted(kwargs)}")
        multi = self._multi_out
        if loss_weights is not None and not multi:
            raise NotImplementedError(
                "compile: loss_weights need a model with several outputs (Model(inputs, "
                "[out1, out2]))"
            )
        # everything is checked and resolved before the model changes: a refused compile
        # leaves the previous one in place
        for what, value in (("metrics", metrics), ("weighted_metrics", weighted_metrics)):
            if multi:
                break
            if value and not isinstance(value, (list, tuple)):  # Keras 3's CompileMetrics check
                raise ValueError(
                    f"Expected `{what}` argument to be a list, tuple, or dict. "
                    f"Received instead: {what}={value!r} of type {type(value)}"
                )
        if multi:
            names = self.output_names
            specs = []
            for what, value in (("metrics", metrics), ("weighted_metrics", weighted_metrics)):
                spread = (
                    _compile_utils.per_output(value, names, what, nested=True)
                    if value
                    else [None] * len(names)
                )
                flat = []
                for i, entry in enumerate(spread):
                    entry = [] if entry is None else entry
                    entry = [entry] if not isinstance(entry, (list, tuple)) else entry
                    flat.extend((i, e) for e in entry)
                specs.append(flat)
        else:
            specs = [list(metrics or []), list(weighted_metrics or [])]
        for spec in specs[0] + specs[1]:
            if spec is None or (multi and spec[1] is None):
                raise ValueError("Expected metric, received `None`")
        optimizer = _optimizers.get(optimizer)
        pending = None
        if multi:
            if loss is None:
                resolved = None
            else:
                resolved = _compile_utils.resolve_losses(loss, loss_weights, self.output_names)
        elif isinstance(loss, str) and loss.lower() in ("crossentropy", "ce"):
            # Keras 3 (compile_utils.get_loss) picks the cross-entropy from the shapes of
            # the first batch: resolved by _resolve_loss before the loss first runs
            resolved, pending = None, loss
        else:
            resolved = _losses.get(loss) if loss is not None else None
            if resolved is not None and not isinstance(resolved, _losses.Loss):
                resolved = _losses.LossFunctionWrapper(resolved)
        self.optimizer = optimizer
        self.loss = loss
        self.compiled_loss = resolved
        self._pending_loss = pending
        self._metric_specs, self._weighted_metric_specs = specs
        self._compiled_metrics = []
        self._metric_entries = []  # (log key, metric, weighted) once resolved
        self._metrics_resolved = False
        self._is_compiled = True
        # as given, for save's compile_config (several outputs: lists or dicts of them)
        self._compile_args = {
            "metrics": metrics,
            "weighted_metrics": weighted_metrics,
            "loss_weights": loss_weights,
        }
        self._output_loss_sums = None  # per-output loss totals of the running epoch
        self._fit_cache = None
        self._checked = {}
        # run_eagerly=None (default): fit's step is traced by metalearn.function when the
        # model allows it; True: always eager; False: traced (errors if it cannot be)
        self._run_eagerly = run_eagerly
        self._train_fn = None
        self._train_fn_config = None

    def _resolve_loss(self, y, y_pred):
        """compile(loss="crossentropy"/"ce"): binary when the prediction has one unit, sparse
        categorical when the labels have lower rank (or one column against several classes),
        categorical otherwise (Keras 3's is_binary_or_sparse_categorical)."""
        if self._pending_loss is None or self.compiled_loss is not None:
            return
        y_shape, p_shape = np.shape(y), tuple(y_pred.shape)
        if p_shape and p_shape[-1] == 1:
            fn = _losses.binary_crossentropy
        elif len(y_shape) < len(p_shape) or (y_shape and y_shape[-1] == 1 and p_shape[-1] > 1):
            fn = _losses.sparse_categorical_crossentropy
        else:
            fn = _losses.categorical_crossentropy
        self.compiled_loss = _losses.LossFunctionWrapper(fn, name=self._pending_loss)

    def _resolve_metrics(self, y, y_pred):
        """The compiled metrics from the first batch's shapes ("accuracy" is resolved as
        Keras 3 does), and their keys in the logs as Keras 3's CompileMetrics.result names
        them: a repeated name gets _1, _2; a weighted metric whose name is taken gets
        weighted_ in front."""
        if self._metrics_resolved:
            return
        entries, taken = [], {}
        if self._multi_out:
            names = self.output_names
            ys = _compile_utils.flat_outputs(y, names, "y")
            preds = _compile_utils.flat_outputs(y_pred, names, "the model's outputs")
        for weighted, specs in ((False, self._metric_specs), (True, self._weighted_metric_specs)):
            for spec in specs:
                if self._multi_out:  # (output index, spec): Keras 3 names it <output>_<name>
                    i, spec = spec
                    m = _metrics.resolve(spec, self.compiled_loss.losses[i], ys[i], preds[i])
                    m._output_index = i
                    key = f"{names[i]}_{m.name}"
                    entries.append((key, m, weighted))
                    continue
                m = _metrics.resolve(spec, self.compiled_loss, y, y_pred)
                key = m.name
                if key in taken:
                    if weighted:
                        key = f"weighted_{m.name}"
                    if key in taken:
                        taken[key] += 1
                        key = f"{key}_{taken[key] - 1}"
                taken.setdefault(key, 1)
                entries.append((key, m, weighted))
        self._metric_entries = entries
        self._compiled_metrics = [m for _, m, _ in entries]
        self._metrics_resolved = True

    def _check_compiled(self, what, custom=False):
        if not self._is_compiled:
            raise RuntimeError(
                f"You must compile your model before {what}. Use `model.compile(optimizer, loss)`."
            )
        # an overridden train_step/test_step may compute its own loss (Keras 3)
        if not custom and self.compiled_loss is None and self._pending_loss is None:
            raise ValueError(f"{what}: the model was compiled without a loss")
        if what == "training" and self.optimizer is None:
            raise ValueError(
                "training: the model was compiled without an optimizer "
                "(optimizer=None); compile it with one"
            )

    # ------------------------------------------------------ argument checks
    # Everything a call is given is checked before the first step, so that a refused
    # call changes nothing: no weight, no optimizer step, no moving statistic, no metric.
    def _check_data(self, where, x, y, sample_weight, need_y=True):
        """x, y and sample_weight as arrays, with one entry per sample each, x not empty."""
        if x is None:
            raise ValueError(f"{where}: x is required")
        if self._multi_in or self._multi_out:
            return self._check_structured_data(where, x, y, sample_weight, need_y)
        x = _as_float_input(x)
        if x.ndim == 0:
            raise ValueError(f"{where}: x must have a batch axis, got a scalar")
        n = len(x)
        if n == 0:
            raise ValueError(
                f"{where}: x is empty: no {'training ' if where == 'fit' else ''}samples"
            )
        y = _as_target(y)
        if y is None:
            if need_y:
                raise ValueError(f"{where}: y is required (metalearn has no unsupervised training)")
        elif y.ndim == 0 or len(y) != n:
            raise ValueError(
                f"{where}: x has {n} samples but y has "
                f"{'a scalar' if y.ndim == 0 else len(y)}; they need one target per sample"
            )
        sw = None
        if sample_weight is not None:
            sw = _as_array(sample_weight, "sample_weight").astype(np.float32, copy=False)
            if sw.ndim != 1 or len(sw) != n:
                raise ValueError(
                    f"{where}: sample_weight has shape {sw.shape} but x has {n} samples; "
                    "it needs one weight per sample"
                )
        return x, y, sw

    def _check_structured_data(self, where, x, y, sample_weight, need_y):
        """_check_data for a functional model with several inputs or outputs: x and y
        as Columns (one array per input / output, in the model's order), every array
        with one entry per sample."""
        if self._multi_in:
            xs = [_as_float_input(a) for a in self._flat_inputs(x, where)]
            names = [i.name for i in self._inputs_list]
        else:
            xs, names = [_as_float_input(x)], ["x"]
        for name, a in zip(names, xs):
            if a.ndim == 0:
                raise ValueError(f"{where}: the input {name!r} must have a batch axis")
        n = len(xs[0])
        if n == 0:
            raise ValueError(f"{where}: x is empty: no samples")
        for name, a in zip(names, xs):
            if len(a) != n:
                raise ValueError(
                    f"{where}: the inputs have different numbers of samples: {names[0]!r} "
                    f"has {n}, {name!r} has {len(a)}"
                )
        x = _graph.Columns(xs) if self._multi_in else xs[0]
        if y is None:
            if need_y:
                raise ValueError(f"{where}: y is required (metalearn has no unsupervised training)")
        elif self._multi_out:
            ys = [
                _as_target(a)
                for a in _compile_utils.flat_outputs(
                    y if isinstance(y, dict) else list(y) if isinstance(y, tuple) else y,
                    self.output_names,
                    f"{where}: y",
                )
            ]
            for name, a in zip(self.output_names, ys):
                if a.ndim == 0 or len(a) != n:
                    raise ValueError(
                        f"{where}: x has {n} samples but y for the output {name!r} has "
                        f"{'a scalar' if a.ndim == 0 else len(a)}; they need one target per "
                        "sample"
                    )
            y = _graph.Columns(ys)
        else:
            y = _as_target(y)
            if y.ndim == 0 or len(y) != n:
                raise ValueError(f"{where}: x has {n} samples but y has {np.shape(y)}")
        sw = None
        if sample_weight is not None:
            sw = _as_array(sample_weight, "sample_weight").astype(np.float32, copy=False)
            if sw.ndim != 1 or len(sw) != n:
                raise ValueError(
                    f"{where}: sample_weight has shape {sw.shape} but x has {n} samples; "
                    "it needs one weight per sample"
                )
        return x, y, sw

    def _dry_run(self, where, x, y, sw):
        """Refuses, before any step, inputs the model cannot take and targets the loss
        cannot match: runs the model and the loss on the first two samples in inference
        mode without gradients (nothing changes), once per data signature (shapes, dtype
        kind) per compile. Sparse labels are checked against the model's classes over all
        of y on every call (a NumPy min/max)."""

        def sig(a):
            return a.signature if isinstance(a, _graph.Columns) else (a.shape[1:], a.dtype.kind)

        key = (sig(x), None if y is None else sig(y), sw is None)
        out_shape = self._checked.get(key)
        if out_shape is not None:
            if y is not None:
                self._check_labels(where, y, out_shape)
            return
        # the messages name the shapes the caller passed, not those of the two samples
        with _no_grad():
            try:
                y_pred = self(x[:2], training=False)
            except ValueError as e:
                raise ValueError(
                    f"{where}: x of shape {tuple(x.shape)} does not fit the model: {e}"
                ) from e
            out_shape = _layers._shape_of(y_pred)
            if y is not None:
                # resolved from the shapes here, before any step: compile's "crossentropy"
                # and "accuracy" (so callbacks see the metrics from on_train_begin on)
                self._resolve_loss(y, y_pred)
                self._resolve_metrics(y[:2], y_pred)
                self._check_labels(where, y, out_shape)
                try:
                    self.compiled_loss(y[:2], y_pred, None if sw is None else sw[:2])
                except ValueError as e:
                    full = (
                        (len(x),) + tuple(out_shape[1:])
                        if isinstance(out_shape, tuple)
                        else out_shape
                    )
                    if isinstance(y, _graph.Columns):
                        raise ValueError(
                            f"{where}: y does not match the model's outputs: {e}"
                        ) from e
                    raise ValueError(
                        f"{where}: y of shape {tuple(y.shape)} does not match the "
                        f"model's output of shape {full} for the loss "
                        f"{getattr(self.compiled_loss, 'name', '')!r}: {e}"
                    ) from e
        self._checked[key] = out_shape

    def _check_labels(self, where, y, out_shape):
        """Every sparse label a class index of the model's output, checked over all of y:
        the loss checks each batch, but only when it comes."""
        if (
            isinstance(y, _graph.Columns)
            or getattr(self.compiled_loss, "fn", None)
            is not _losses.sparse_categorical_crossentropy
            or not isinstance(out_shape, tuple)
            or not out_shape
        ):
            return
        classes = out_shape[-1]
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y) | (y != np.floor(y))
            if bad.any():
                raise ValueError(
                    f"{where}: y holds {y[bad].flat[0]:g}, which is not a class index; "
                    "sparse_categorical_crossentropy needs integer labels"
                )
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= classes:
            at = int(np.argmin(y) if lo < 0 else np.argmax(y))
            raise ValueError(
                f"{where}: y holds label {y.flat[at]:g} at position {at}, outside "
                f"[0, {classes}): the model has {classes} outputs"
            )

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Optional[ArrayLike] = None,
        training: bool = True,
    ) -> _core.Tensor:
        """The compiled loss of `y_pred` against `y` plus ``sum(self.losses)`` (the
        regularizers' penalties), as Keras 3 (a scalar tensor). A subclass may override it
        (with or without the `training` argument): ``fit``, ``evaluate``, ``train_on_batch``
        and ``test_on_batch`` then call it through ``train_step``/``test_step``."""
        self._resolve_loss(y, y_pred)
        return self._total_loss(y, y_pred, sample_weight)

    # ------------------------------------------------ Keras 3's step methods
    # fit/evaluate/predict run the fast (traced or eager) step below when a subclass
    # overrides none of these; otherwise they call them, as Keras 3 does, batch by batch.
    _STEP_HOOKS = {
        "train": ("train_step", "compute_loss", "compute_metrics"),
        "test": ("test_step", "compute_loss", "compute_metrics"),
        "predict": ("predict_step",),
    }

    def _overrides(self, kind):
        """Whether a subclass overrides a step method that `kind` (train/test/predict)
        must call, so that the built-in loop (and its traced step) may not be used."""
        cls = type(self)
        return any(getattr(cls, n) is not getattr(Model, n) for n in self._STEP_HOOKS[kind])

    @property
    def _loss_tracker(self):
        tracker = self.__dict__.get("_loss_tracker_metric")
        if tracker is None:
            tracker = _metrics.Mean(name="loss")
            object.__setattr__(self, "_loss_tracker_metric", tracker)
        return tracker

    def _tracked_metrics(self):
        """Metrics assigned as attributes of the model or its layers (Keras 3 tracks
        them: they appear in the logs of the step methods and are reset each epoch)."""
        out, seen, stack = [], {id(m) for m in self._compiled_metrics}, [self]
        seen_layers = set()
        while stack:
            layer = stack.pop()
            if id(layer) in seen_layers:
                continue
            seen_layers.add(id(layer))
            for name, value in vars(layer).items():
                if isinstance(value, _metrics.Metric) and id(value) not in seen:
                    if name == "_loss_tracker_metric":
                        continue
                    seen.add(id(value))
                    out.append(value)
            stack.extend(sub for _, sub in reversed(layer._sublayers))
        return out

    def _compute_loss_call(self, x, y, y_pred, sample_weight, training):
        """self.compute_loss, with `training` only when an override takes it (Keras 3
        keeps overrides written before the argument working)."""
        fn = type(self).compute_loss
        takes = _takes_training_cache.get(fn)
        if takes is None:
            import inspect

            try:
                takes = "training" in inspect.signature(fn).parameters
            except (TypeError, ValueError):
                takes = False
            _takes_training_cache[fn] = takes
        if takes:
            return self.compute_loss(x, y, y_pred, sample_weight, training=training)
        return self.compute_loss(x, y, y_pred, sample_weight)

    def _track_loss(self, loss, x):
        """The loss tracker's update, weighted by the batch size (Keras 3)."""
        n = len(x.arrays[0]) if isinstance(x, _graph.Columns) else len(x)
        self._loss_tracker.update_state(
            np.array([float(np.asarray(loss))]), np.array([float(n)], np.float32)
        )

    def train_step(self, data: Any) -> Dict[str, Any]:
        """One training step on one batch, as Keras 3's ``train_step``: the forward pass,
        ``compute_loss``, the gradient of the loss over ``trainable_variables``, one
        optimizer step and ``compute_metrics``; returns the logs.

        `data` is ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``
        (``keras.utils.unpack_x_y_sample_weight`` takes it apart). Override it for a
        custom training step; a Keras 3 step ports as::

            def train_step(self, data):
                x, y = data
                with metalearn.GradientTape() as tape:   # TF backend: tf.GradientTape
                    y_pred = self(x, training=True)
                    loss = self.compute_loss(y=y, y_pred=y_pred)
                grads = tape.gradient(loss, self.trainable_variables)
                self.optimizer.apply(grads, self.trainable_variables)
                return self.compute_metrics(x, y, y_pred)

        (PyTorch backend: ``loss.backward()`` and ``p.value.grad`` become the tape's
        ``gradient``; JAX's stateless step has no counterpart.) ``fit`` then calls it for
        every batch with grad mode on, eagerly: the traced fast path is not used.
        """
        x, y, sample_weight = _utils.unpack_x_y_sample_weight(data)
        params = self.trainable_variables
        y_pred = self(x, training=True)
        loss = self._compute_loss_call(x, y, y_pred, sample_weight, training=True)
        if params:
            grads = _core.grad(loss, params, create_graph=False, allow_unused=True)
            if _debugging._numerics_checks:  # as the built-in eager step: before any change
                _debugging._check_step(self, loss, grads, params, x, y)
            if any(g is None for g in grads):
                self.optimizer.apply_gradients(zip(grads, params))
            else:
                self.optimizer._apply(params, grads)
        self._track_loss(loss, x)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def test_step(self, data: Any) -> Dict[str, Any]:
        """One evaluation step, as Keras 3's ``test_step``: the forward pass in inference
        mode, ``compute_loss(training=False)`` and ``compute_metrics``; returns the logs.
        ``evaluate`` (and fit's validation) call an override for every batch."""
        x, y, sample_weight = _utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self._compute_loss_call(x, y, y_pred, sample_weight, training=False)
        self._track_loss(loss, x)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def predict_step(self, data: Any) -> Any:
        """The model's output on one batch (``data``: ``(x,)`` or x), as Keras 3's
        ``predict_step``; ``predict`` calls an override for every batch."""
        x, _, _ = _utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    def compute_metrics(
        self, x: Any, y: Any, y_pred: Any, sample_weight: Optional[ArrayLike] = None
    ) -> Dict[str, Any]:
        """Updates the compiled metrics with a batch and returns
        ``get_metrics_result()``, as Keras 3."""
        if y is not None and self._is_compiled and self.compiled_loss is not None:
            self._update_metrics(y, y_pred, sample_weight)
        return self.get_metrics_result()

    def get_metrics_result(self) -> Dict[str, Any]:
        """The current value of every metric, by log key: ``loss`` (the loss tracker) and
        the compiled metrics when a loss is compiled, then the metrics the model tracks
        as attributes, as Keras 3."""
        logs = {}
        if self._is_compiled and (self.compiled_loss is not None or self._pending_loss):
            logs = self._logs(self._loss_tracker.result())
        for m in self._tracked_metrics():
            logs[m.name] = m.result()
        return logs

    def reset_metrics(self) -> None:
        """Resets the state of every metric (the loss tracker, compiled and tracked
        metrics, and what ``metrics`` lists), as Keras 3."""
        self._reset_metrics()
        self._loss_tracker.reset_state()
        for m in self._tracked_metrics() + list(self.metrics):
            m.reset_state()

    def _get_metrics_result_or_logs(self, logs):
        """The epoch's logs, as Keras 3: the metrics' results when the step's logs have
        the same keys, else the last step's logs (a custom step returning its own)."""
        metric_logs = self.get_metrics_result()
        if isinstance(logs, dict) and set(logs) == set(metric_logs):
            return metric_logs
        return logs

    def _total_loss(self, y, y_pred, sample_weight):
        """The compiled loss plus every penalty in ``self.losses`` (weight and activity
        regularizers), as Keras 3 adds them to the training and evaluation losses."""
        loss = self.compiled_loss(y, y_pred, sample_weight)
        for extra in self.losses:
            loss = _core.add(loss, extra)
        return loss

    # -------------------------------------------------------------- one batch
    def _train_params(self, stacklevel=3):
        params = self.trainable_weights
        if not params:  # Keras trains nothing (the forward pass and the loss still run)
            warnings.warn("The model does not have any trainable weights.", stacklevel=stacklevel)
        return params

    def _make_train_step(self, params, sample_weight):
        """The training step for a call of fit or train_on_batch, chosen once before its
        first step (as Keras 3's make_train_function): ``step(xb, yb, params, swb) ->
        (loss, y_pred)``. Traced (recorded once per batch shape, replayed from C) when
        compile's run_eagerly allows it and the model can be recorded; eager otherwise;
        the loss alone when the model has no trainable weights."""
        if not params:
            return self._forward_step
        strategy = _data_parallel()
        if strategy is not None:  # metalearn.distributed.DataParallel in force
            strategy._model_begin(self)
            return lambda xb, yb, ps, sw=None: strategy._model_step(self, xb, yb, ps, sw)
        if self._run_eagerly is False or (
            self._run_eagerly is None and self._can_trace(sample_weight)
        ):
            return self._traced_train_step
        return self._eager_train_step

    def _can_trace(self, sample_weight):
        """Whether the training step can be recorded: every layer declares itself
        traceable (Layer._traceable), the optimizer's update has a traced form, no sample
        weights, no numerics checks. Asking changes nothing."""
        if sample_weight is not None or _debugging._numerics_checks:
            return False
        return self.optimizer._traced_update() is not None and self._is_traceable()

    def _seeded_dropouts(self):
        """The seeded Dropout layers that draw a mask in training, each once, in model order
        (and seeded recurrent layers with a dropout, whose draw holds all their masks):
        their draws come from their own streams in Python, so fit's traced step takes them
        as inputs (a replay then sees a new mask, the one the eager step would draw)."""
        out, seen, stack = [], set(), [self]
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if (
                isinstance(layer, _layers.Dropout)
                and layer.seed is not None
                and 0.0 < layer.rate < 1.0
            ) or (isinstance(layer, _rnn._RNN) and layer._draws_seeded()):
                out.append(layer)
            stack.extend(sub for _, sub in reversed(layer._sublayers))
        return out

    def _seeded_draws(self, xb, seeded):
        """The next mask draw of each seeded Dropout for batch `xb` (advances their streams).
        The per-sample input shape of each is found once per input shape by running the
        model on one sample in inference mode (no draw, nothing changes)."""
        key = xb.signature if isinstance(xb, _graph.Columns) else tuple(xb.shape[1:])
        shapes = self._dropout_input_shapes.get(key)
        if shapes is None:
            with _no_grad():
                self(xb[:1], training=False)
            if any(layer._last_input_shape is None for layer in seeded):
                raise ValueError("fit: a seeded Dropout is not called by the model")
            shapes = [layer._last_input_shape[1:] for layer in seeded]
            self._dropout_input_shapes[key] = shapes
        n = len(xb)
        return [
            _core.tensor(layer._seeded_uniform(layer._mask_shape((n,) + tuple(shape))))
            for layer, shape in zip(seeded, shapes)
        ]

    def _traced_train_step(self, xb, yb, params, sample_weight=None):
        """One training step replayed from a trace (recorded on the first batch of a
        shape), equal to the eager step. The eager step instead while numerics checks are
        on, and for good once a step cannot be recorded (e.g. a weight the loss does not
        use)."""
        if self._run_eagerly or (self._run_eagerly is None and _debugging._numerics_checks):
            return self._eager_train_step(xb, yb, params, sample_weight)
        try:
            return self._replay_train_step(xb, yb, params, sample_weight)
        except (ValueError, TypeError):
            if self._train_fn is not None and self._train_fn.n_traces:
                raise
            self._run_eagerly = True
            self._train_fn = None
        return self._eager_train_step(xb, yb, params, sample_weight)

    def _replay_train_step(self, xb, yb, params, sample_weight):
        from metalearn.function import function

        if sample_weight is not None:  # (compile(run_eagerly=False) comes here with them)
            raise ValueError("a training step with sample weights cannot be traced")
        config = (id(self.optimizer), id(self.compiled_loss), tuple(map(id, params)))
        if self._train_fn is None or self._train_fn_config != config:
            update = self.optimizer._traced_update()
            if update is None:
                raise ValueError(
                    "the optimizer's update cannot be traced: gradient clipping runs in NumPy"
                )
            seeded = self._seeded_dropouts()

            def step(x, y, *draws):
                # Python runs only while recording: each seeded Dropout takes its draw as
                # a trace input, and must take it exactly once
                for layer, u in zip(seeded, draws):
                    layer._given_noise, layer._draws_given = u, True
                try:
                    y_pred = self(x, training=True)
                    unused = [layer.name for layer in seeded if layer._given_noise is not None]
                finally:
                    for layer in seeded:
                        layer._given_noise, layer._draws_given = None, False
                if unused:
                    raise ValueError(f"fit: seeded Dropout {unused} not called in training")
                loss = self._total_loss(y, y_pred, None)
                update(params, _core.grad(loss, params))
                if self._multi_out:  # the outputs' losses come back from each replay
                    return loss, y_pred, list(self.compiled_loss.last)
                return loss, y_pred

            self._train_fn, self._train_fn_config = function(step), config
            self._train_seeded = seeded
            self._dropout_input_shapes = {}
        seeded = self._train_seeded
        y = _tensors(yb, targets=True)
        x = _tensors(xb)
        if not seeded:  # the common step: nothing drawn in Python
            out = self._train_fn(x, y)
        else:
            calls = [layer._seed_calls for layer in seeded]
            try:
                out = self._train_fn(x, y, *self._seeded_draws(xb, seeded))
            except BaseException:
                for layer, c in zip(seeded, calls):  # the eager step that follows draws them
                    layer._seed_calls = c
                raise
        if self._multi_out:
            loss, y_pred, self.compiled_loss.last = out
        else:
            loss, y_pred = out
        self.optimizer._count_step()
        return loss, y_pred

    def _eager_train_step(self, xb, yb, params, sample_weight=None):
        y_pred = self(xb, training=True)
        loss = self._total_loss(yb, y_pred, sample_weight)
        grads = _core.grad(loss, params, create_graph=False, allow_unused=True)
        if _debugging._numerics_checks:  # metalearn.debugging.enable_check_numerics()
            _debugging._check_step(self, loss, grads, params, xb, yb)
        if any(g is None for g in grads):
            self.optimizer.apply_gradients(zip(grads, params))
        else:
            self.optimizer._apply(params, grads)
        return loss, y_pred

    def _forward_step(self, xb, yb, params, sample_weight=None):
        """fit's step for a model with no trainable weights: the loss, no update (Keras)."""
        y_pred = self(xb, training=True)
        return self._total_loss(yb, y_pred, sample_weight), y_pred

    def _update_metrics(self, yb, y_pred, sample_weight=None):
        # Keras 3 (CompileMetrics.update_state): sample weights go to weighted_metrics only
        if self._multi_out:
            self._track_output_losses(len(yb))
        if self._metric_specs or self._weighted_metric_specs:
            self._resolve_metrics(yb, y_pred)
            if self._multi_out:
                names = self.output_names
                ys = _compile_utils.flat_outputs(yb, names, "y")
                preds = [np.asarray(p) for p in _compile_utils.flat_outputs(y_pred, names, "")]
                for _, m, weighted in self._metric_entries:
                    i = m._output_index
                    m.update_state(ys[i], preds[i], sample_weight if weighted else None)
                return
            pred = np.asarray(y_pred)
            for _, m, weighted in self._metric_entries:
                m.update_state(yb, pred, sample_weight if weighted else None)

    def _track_output_losses(self, size):
        """Adds the last batch's per-output losses (weighted by its size) to the epoch's
        totals, as Keras 3's per-output loss trackers."""
        parts = self.compiled_loss.last
        sums = self._output_loss_sums
        if sums is None or len(sums) != len(parts) + 1:
            sums = self._output_loss_sums = [0.0] * (len(parts) + 1)
        for i, p in enumerate(parts):
            if p is not None:
                sums[i] += float(p.item()) * size
        sums[-1] += size

    def _reset_metrics(self):
        self._output_loss_sums = None
        for m in self._compiled_metrics:
            m.reset_state()

    def _logs(self, loss_mean):
        logs = {"loss": loss_mean}
        if self._multi_out and self.compiled_loss is not None:
            sums = self._output_loss_sums or [0.0] * (len(self.output_names) + 1)
            for name, loss, total in zip(self.output_names, self.compiled_loss.losses, sums):
                if loss is not None:
                    logs[f"{name}_loss"] = total / max(sums[-1], 1)
        for key, m, _ in self._metric_entries:
            logs[key] = m.result()
        return logs

    def train_on_batch(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Optional[ArrayLike] = None,
        class_weight: Optional[Dict[int, float]] = None,
        reset_metrics: bool = True,
        return_dict: bool = False,
    ) -> Any:
        """Runs one gradient step on one batch.

        The batch is checked as in ``fit`` before anything runs (an empty batch, lengths,
        sparse labels; the model and loss on two samples once per data signature): a
        refused batch changes no weight, no moving statistic, no optimizer step.
        `class_weight` (``{class index: weight}``) gives each sample the weight of its
        class, as Keras 3 (not together with `sample_weight`). An overridden
        ``train_step`` is called with the batch.

        Returns:
            The loss (a float), or ``[loss, *metrics]`` when metrics are compiled, or a dict
            with ``return_dict``.
        """
        custom = self._overrides("train")
        self._check_compiled("training", custom)
        x, y, sw = self._check_data("train_on_batch", x, y, sample_weight, need_y=not custom)
        sw = self._class_sample_weights("train_on_batch", y, sw, class_weight, sample_weight)
        self._dry_run("train_on_batch", x, self._y_for_checks(y), sw)
        if custom:
            if reset_metrics:
                self.reset_metrics()
            with _grad_on():
                logs = _pythonify(self.train_step(_utils.pack_x_y_sample_weight(x, y, sw)))
            return self._format_result(logs, return_dict, custom=True)
        params = self._train_params()
        if reset_metrics:
            self._reset_metrics()
        with _grad_on():
            loss, y_pred = self._make_train_step(params, sw)(x, y, params, sw)
        self._update_metrics(y, y_pred, sw)
        return self._format_result(self._logs(loss.item()), return_dict)

    def _y_for_checks(self, y):
        """y for _dry_run: None when no loss is compiled (a custom step computes its own)."""
        return y if (self.compiled_loss is not None or self._pending_loss) else None

    def _class_sample_weights(self, where, y, sw, class_weight, given_sw):
        """The sample weights `class_weight` gives (checked), or `sw` when it is None."""
        if class_weight is None:
            return sw
        if given_sw is not None:
            raise ValueError(
                f"{where}: Arguments `sample_weight` and `class_weight` cannot be specified "
                "at the same time"
            )
        class_weight = check_class_weight(class_weight, where)
        if self._multi_out:
            raise ValueError(
                f"{where}: `class_weight` is only supported for Models with a single output"
            )
        if y is None:
            raise ValueError(f"{where}: class_weight needs the targets y")
        return class_weight_to_sample_weights(y, class_weight)

    def test_on_batch(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Optional[ArrayLike] = None,
        reset_metrics: bool = True,
        return_dict: bool = False,
    ) -> Any:
        """The loss (and metrics) on one batch, without training (an overridden
        ``test_step`` is called with the batch)."""
        custom = self._overrides("test")
        self._check_compiled("evaluating", custom)
        x, y, sw = self._check_data("test_on_batch", x, y, sample_weight, need_y=not custom)
        self._dry_run("test_on_batch", x, self._y_for_checks(y), sw)
        if custom:
            if reset_metrics:
                self.reset_metrics()
            with _no_grad():
                logs = _pythonify(self.test_step(_utils.pack_x_y_sample_weight(x, y, sw)))
            return self._format_result(logs, return_dict, custom=True)
        if reset_metrics:
            self._reset_metrics()
        with _no_grad():
            y_pred = self(x, training=False)
            loss = self._total_loss(y, y_pred, sw)
        self._update_metrics(y, y_pred, sw)
        return self._format_result(self._logs(loss.item()), return_dict)

    def predict_on_batch(self, x: Any) -> np.ndarray:
        """The model's output on one batch, as a NumPy array (an overridden
        ``predict_step`` is called with ``(x,)``)."""
        x, _, _ = self._check_data("predict_on_batch", x, None, None, need_y=False)
        with _no_grad():
            return self._predict_outputs(x, "predict_on_batch")

    def _predict_outputs(self, xb, where):
        """One batch's outputs as NumPy arrays (through predict_step when overridden): an
        array, or for several outputs a list in output order."""
        if self._overrides("predict"):
            out = self.predict_step((xb,))
        else:
            out = self(xb, training=False)
        if self._multi_out:
            flat = _compile_utils.flat_outputs(out, self.output_names, where)
            return [np.array(o, copy=True) for o in flat]
        if isinstance(out, (list, tuple, dict)):  # a custom predict_step's structure
            return (
                type(out)(np.array(o, copy=True) for o in out)
                if not isinstance(out, dict)
                else {k: np.array(v, copy=True) for k, v in out.items()}
            )
        return np.array(out, copy=True)

    def _format_result(self, logs, return_dict, custom=False):
        if return_dict:
            return logs
        if custom:  # Keras 3's _flatten_metrics_in_order: known metrics first, then sorted
            names = ["loss"] + [k for k, _, _ in self._metric_entries]
            names += [m.name for m in self._tracked_metrics()]
            values = [logs[k] for k in names if k in logs]
            values += [logs[k] for k in sorted(logs) if k not in names]
        else:
            values = list(logs.values())
        return values[0] if len(values) == 1 else values

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: Optional[int] = None,
        epochs: int = 1,
        verbose: Union[str, int] = "auto",
        callbacks: Optional[Sequence[Any]] = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        sample_weight: Optional[ArrayLike] = None,
        validation_batch_size: Optional[int] = None,
        validation_freq: int = 1,
        steps_per_epoch: Optional[int] = None,
        validation_steps: Optional[int] = None,
        time_budget: Optional[float] = None,
        class_weight: Optional[Dict[int, float]] = None,
    ) -> _callbacks.History:
        """Trains the model for a fixed number of epochs.

        Args:
            x: inputs, array-like ``(samples, ...)``; or a ``keras.utils.PyDataset``; or a
                Python generator or iterator of batches ``(x, y)`` or ``(x, y,
                sample_weight)`` (y and sample_weight then not passed; batch_size does not
                apply), as Keras 3.
            y: targets, ``(samples, ...)`` (integers for sparse losses).
            batch_size: samples per gradient step (default 32).
            epochs: index of the last epoch (training runs ``initial_epoch..epochs-1``;
                callbacks and ``history.epoch`` see those indices).
            verbose: 0 silent, 1 progress bar (one line per epoch when stdout is not a
                terminal), 2 one line per epoch; "auto" is 1.
            callbacks: list of ``Callback``.
            validation_split: fraction in [0, 1) of the data, taken from the end before
                shuffling, held out for validation (sample weights are split alike).
            validation_data: ``(x_val, y_val)`` or ``(x_val, y_val, sample_weight_val)``,
                a PyDataset or a generator, evaluated at the end of each epoch (overrides
                `validation_split`).
            shuffle: reshuffle the training samples (a PyDataset: its batches) each pass
                (core generator, seeded by ``metalearn.random.set_seed``).
            initial_epoch: epoch at which to start (to resume a run).
            sample_weight: optional per-sample weights.
            validation_freq: validate after epoch ``e`` (counted from 1) when ``e`` is a
                multiple of it, as Keras 3 (so resumed runs validate at the same epochs).
            steps_per_epoch: batches per epoch: the next epoch goes on where the last
                stopped; a pass over arrays or a PyDataset that ends first ends the epoch
                with Keras' warning and the next epoch starts a new pass (training goes
                on, as Keras); a generator that runs out stops training with the warning.
                None: one pass (a generator: until exhausted). Required for an infinite
                PyDataset.
            validation_steps: with `validation_data` a generator or PyDataset, batches per
                validation (None: until it is exhausted; a validation that finds no batch
                left is left out of the logs, with Keras' warning).
            time_budget: seconds of wall-clock time (a positive number; not a Keras
                argument) after which training stops at the end of the running batch; the
                epoch's logs so far are recorded and ``history.stopped`` is
                ``"time_budget"`` (None when the run was not cut short by the budget).
            class_weight: ``{class index: weight}``: each training sample's loss is
                weighted by its class's weight (classes not listed: 1), the class being
                the label (sparse) or the argmax of a one-hot target, as Keras 3; not
                with `sample_weight`, a generator or several outputs (Keras refuses those
                too). Validation is not weighted.

        Every argument is checked before the first step (counts, lengths, the model and the
        loss run once on two samples, sparse labels against the model's classes, the same
        for `validation_data`): a refused call changes nothing. A PyDataset's or a
        generator's batches are checked as they come (an error names the batch; the bad
        batch changes nothing). A model with no trainable weights runs the loss and trains
        nothing, with Keras' warning. The validation pass calls the callbacks'
        ``on_test_*`` hooks, as Keras' evaluate does. A subclass that overrides
        ``train_step``, ``compute_loss`` or ``compute_metrics`` has them called for each
        batch, eagerly (see ``train_step``).

        Returns:
            A ``History``: ``history.history["loss"]`` etc., one value per epoch.

        Raises:
            ValueError: an argument that does not fit (named in the message).
        """
        custom = self._overrides("train")
        self._check_compiled("training", custom)
        batch_size = _count("fit", "batch_size", batch_size, 32)
        epochs = _count("fit", "epochs", epochs, minimum=0)
        initial_epoch = _count("fit", "initial_epoch", initial_epoch, minimum=0)
        validation_freq = _count("fit", "validation_freq", validation_freq)
        validation_batch_size = _count(
            "fit", "validation_batch_size", validation_batch_size, batch_size
        )
        verbose = _verbose(verbose)
        end = _budget.deadline(time_budget, "fit")
        if steps_per_epoch is not None:
            steps_per_epoch = _count("fit", "steps_per_epoch", steps_per_epoch)
        if validation_steps is not None:
            validation_steps = _count("fit", "validation_steps", validation_steps)
        if class_weight is not None:
            class_weight = check_class_weight(class_weight, "fit")
            if self._multi_out:
                raise ValueError(
                    "fit: `class_weight` is only supported for Models with a single output"
                )
            if is_batch_iterator(x):
                raise ValueError(
                    "Argument `class_weight` is not supported for Python generator inputs. "
                    f"Received: class_weight={class_weight}"
                )
            if sample_weight is not None:
                raise ValueError(
                    "fit: You cannot `class_weight` and `sample_weight` at the same time"
                )
        validation_iter = None
        if is_batch_iterator(validation_data):  # read batch by batch at each validation
            validation_iter = BatchIterator(
                validation_data,
                validation_steps,
                self._batch_checker("fit: validation_data", self._overrides("test")),
            )
            validation_data = None
        elif is_py_dataset(validation_data):
            validation_iter = PyDatasetIterator(
                validation_data,
                validation_steps,
                False,
                self._batch_checker("fit: validation_data", self._overrides("test")),
                where="fit: validation_data",
            )
            validation_data = None
        if is_batch_iterator(x) or is_py_dataset(x):
            data, validation = self._check_fit_iterator(
                x,
                y,
                sample_weight,
                validation_split,
                validation_data,
                steps_per_epoch,
                shuffle,
                class_weight,
                custom,
            )
            params = None
            built = []  # the variables, once the first batch has built the model

            def step_fn(xb, yb, _, swb):  # each batch may or may not carry weights
                if not built:
                    built.append(self._train_params(stacklevel=5))
                return self._make_train_step(built[0], swb)(xb, yb, built[0], swb)

        else:
            (x, y, sw), validation = self._check_fit_data(
                x, y, sample_weight, validation_split, validation_data, custom
            )
            if class_weight is not None:  # the training split's, as Keras' array adapter
                sw = class_weight_to_sample_weights(y, class_weight)
            data = EpochIterator(x, y, sw, batch_size, shuffle, steps_per_epoch)
            params = self._train_params()
            step_fn = None if custom else self._make_train_step(params, sw)
        history = _callbacks.History()
        cbs = _callbacks.CallbackList(
            list(callbacks or []) + [history],
            model=self,
            params={"epochs": epochs, "steps": data.num_batches, "verbose": verbose},
        )
        self.stop_training = False
        self._fit_deadline = end  # read by _train_epoch after each batch
        history.stopped = None
        self.history = history
        prev_grad = _core.is_grad_enabled()
        _core.set_grad_enabled(True)
        self._initial_epoch = None  # BackupAndRestore sets it in on_train_begin (Keras 3's)
        try:
            cbs.on_train_begin()
            initial_epoch = self._initial_epoch or initial_epoch
            logs = None
            for epoch in range(initial_epoch, epochs):
                if custom:
                    self.reset_metrics()
                else:
                    self._reset_metrics()
                cbs.on_epoch_begin(epoch)
                if verbose:
                    print(f"Epoch {epoch + 1}/{epochs}")
                bar = Progbar(data.num_batches, verbose=verbose)
                if custom:
                    logs = self._train_epoch_custom(data, cbs, bar if verbose else None)
                else:
                    logs = self._train_epoch(data, step_fn, params, cbs, bar if verbose else None)
                if isinstance(data, BatchIterator) and data.interrupted:
                    warnings.warn(RAN_OUT, stacklevel=2)
                    self.stop_training = True
                    if not data.steps_seen:  # nothing trained in this epoch: no record
                        break
                elif getattr(data, "interrupted", False):  # a pass ended early: go on
                    warnings.warn(RAN_OUT, stacklevel=2)
                if (epoch + 1) % validation_freq == 0:  # Keras 3's _should_eval
                    if validation is not None:
                        logs.update(self._validation_logs(validation, validation_batch_size, cbs))
                    if validation_iter is not None:
                        logs.update(self._validation_logs(validation_iter, None, cbs))
                if verbose:
                    bar.update(data.num_batches or data.steps_seen, logs, finalize=True)
                cbs.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
                if _budget.expired(end) and epoch + 1 < epochs:
                    history.stopped = _budget.STOPPED_TIME_BUDGET
                    break
            # Keras 3's fit ends so: with use_ema, the weights become their averages
            self.optimizer.finalize_variable_values(self.trainable_weights)
            cbs.on_train_end(logs)
        finally:
            _core.set_grad_enabled(prev_grad)
            self._fit_deadline = None
        return history

    def _check_fit_data(self, x, y, sample_weight, validation_split, validation_data, custom=False):
        """fit's data and validation data checked (as _check_data and _dry_run), the
        validation split taken: ``(x, y, sample_weight), (x_val, y_val, sw_val) or None``."""
        if (
            isinstance(validation_split, bool)
            or not isinstance(validation_split, (int, float, np.number))
            or not 0.0 <= validation_split < 1.0
        ):
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
        x, y, sw = self._check_data("fit", x, y, sample_weight, need_y=not custom)
        validation = None
        if validation_data is not None:
            validation = self._check_validation_only(validation_data)
        elif validation_split:
            if y is None:
                raise ValueError("fit: validation_split needs y")
            (x, y, sw), validation = train_validation_split(x, y, sw, validation_split)
        self._dry_run("fit", x, self._y_for_checks(y), sw)
        return (x, y, sw), validation

    def _check_fit_iterator(
        self,
        x,
        y,
        sample_weight,
        validation_split,
        validation_data,
        steps_per_epoch,
        shuffle=False,
        class_weight=None,
        custom=False,
    ):
        """fit's checks for generator or PyDataset input, as Keras 3's data adapters: the
        targets and weights come in the batches; each batch is checked (as _check_data and
        _dry_run) before its step."""
        kind = "a PyDataset" if is_py_dataset(x) else "a generator"
        for what, value, desc in (
            ("y", y, "the targets"),
            ("sample_weight", sample_weight, "the sample weights"),
        ):
            if value is not None:
                raise ValueError(
                    f"When providing `x` as {kind}, `{what}` should not be passed. "
                    f"Instead, {desc} should be included as part of the {kind[2:]}."
                )
        if validation_split:
            raise ValueError(
                "fit: `validation_split` is only supported for NumPy arrays, not for "
                f"{kind[2:]} input; pass validation_data"
            )
        validation = None
        if validation_data is not None:
            validation = self._check_validation_only(validation_data)
        check = self._batch_checker("fit", custom)
        if is_py_dataset(x):
            return PyDatasetIterator(x, steps_per_epoch, shuffle, check, class_weight), validation
        return BatchIterator(x, steps_per_epoch, check), validation

    def _check_validation_only(self, validation_data):
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError(
                "fit: validation_data must be a tuple (x_val, y_val) or "
                "(x_val, y_val, sample_weight_val), a PyDataset or a generator, got "
                f"{type(validation_data).__name__}"
                + (
                    f" of length {len(validation_data)}"
                    if isinstance(validation_data, (tuple, list))
                    else ""
                )
            )
        custom = self._overrides("test")
        validation = self._check_data(
            "fit: validation_data",
            *validation_data,
            *([None] * (3 - len(validation_data))),
            need_y=not custom,
        )
        xv, yv, swv = validation
        self._dry_run("fit: validation_data", xv, self._y_for_checks(yv), swv)
        return validation

    def _train_epoch_custom(self, data, cbs, bar):
        """One epoch through the model's own train_step (Keras 3's loop): the logs of
        each batch go to the callbacks; the epoch's logs are the metrics' results, or the
        last batch's logs when the step returns other keys."""
        logs = {}
        for step, (xb, yb, swb) in data.enumerate_epoch():
            cbs.on_train_batch_begin(step)
            logs = _pythonify(self.train_step(_utils.pack_x_y_sample_weight(xb, yb, swb)))
            if bar is not None:
                bar.update(step + 1, logs, finalize=False)
            cbs.on_train_batch_end(step, logs)
            if self.stop_training:
                break
            if _budget.expired(getattr(self, "_fit_deadline", None)):
                if data.num_batches is None or step + 1 < data.num_batches:
                    self.history.stopped = _budget.STOPPED_TIME_BUDGET
                    self.stop_training = True
                break
        return dict(self._get_metrics_result_or_logs(logs))

    def _train_epoch(self, data, step_fn, params, cbs, bar):
        """One pass of training over `data`: a step per batch, the metrics, the batch
        callbacks and the progress bar; the epoch's logs (mean loss, metrics)."""
        has_batch_begin = cbs.has("on_train_batch_begin")
        has_batch_end = cbs.has("on_train_batch_end")
        loss_total, seen = 0.0, 0
        for step, (xb, yb, swb) in data.enumerate_epoch():
            if has_batch_begin:
                cbs.on_train_batch_begin(step)
            loss, y_pred = step_fn(xb, yb, params, swb)
            size = xb.shape[0]
            loss_total += loss.item() * size
            seen += size
            self._update_metrics(yb, y_pred, swb)
            if bar is not None or has_batch_end:
                logs = self._logs(loss_total / seen)
                if bar is not None:
                    bar.update(step + 1, logs, finalize=False)
                if has_batch_end:
                    cbs.on_train_batch_end(step, logs)
            if self.stop_training:
                break
            if _budget.expired(getattr(self, "_fit_deadline", None)):
                if data.num_batches is None or step + 1 < data.num_batches:
                    self.history.stopped = _budget.STOPPED_TIME_BUDGET
                    self.stop_training = True
                break
        return self._logs(loss_total / max(seen, 1))

    def _validation_logs(self, validation, batch_size, cbs):
        """fit's validation pass, an evaluate with the test hooks (as Keras 3's): the
        ``val_`` logs."""
        cbs.on_test_begin()
        test_cbs = cbs if cbs.has("on_test_batch_begin") or cbs.has("on_test_batch_end") else None
        _core.set_grad_enabled(False)
        try:
            if isinstance(validation, (BatchIterator, PyDatasetIterator)):
                val = self._run_evaluation(validation.enumerate_epoch(), cbs=test_cbs)
                if not validation.steps_seen:  # nothing left to validate on
                    warnings.warn(RAN_OUT, stacklevel=3)
                    cbs.on_test_end({})
                    return {}
            else:
                batches = EpochIterator(*validation, batch_size).enumerate_epoch()
                val = self._run_evaluation(batches, cbs=test_cbs)
        finally:
            _core.set_grad_enabled(True)
        cbs.on_test_end(val)
        return {"val_" + k: v for k, v in val.items()}

    # ---------------------------------------------------------------- evaluate
    def _run_evaluation(self, batches, bar=None, cbs=None):
        """Loss and metrics over `batches`: through an overridden test_step (Keras 3's
        loop), else the built-in one (grad mode must be off)."""
        if not self._overrides("test"):
            return self._evaluate_batches(batches, bar, cbs)
        self.reset_metrics()
        logs = {}
        self.stop_evaluating = False
        for step, (xb, yb, swb) in batches:
            if cbs is not None:
                cbs.on_test_batch_begin(step)
            logs = _pythonify(self.test_step(_utils.pack_x_y_sample_weight(xb, yb, swb)))
            if bar is not None:
                bar.update(step + 1, logs, finalize=False)
            if cbs is not None:
                cbs.on_test_batch_end(step, logs)
            if self.stop_evaluating:
                break
        return dict(self._get_metrics_result_or_logs(logs))

    def _evaluate_batches(self, batches, bar=None, cbs=None):
        """Loss and metrics over `batches` (``(step, (x, y, sample_weight))``; grad mode
        must be off); the training metrics' states are kept."""
        saved = [(m, m.__dict__.copy()) for m in self._compiled_metrics]
        saved_sums = self._output_loss_sums
        self._reset_metrics()
        total, seen = 0.0, 0
        self.stop_evaluating = False  # a callback may set it to end the loop (Keras 3)
        for step, (xb, yb, swb) in batches:
            if cbs is not None:
                cbs.on_test_batch_begin(step)
            y_pred = self(xb, training=False)
            loss = self._total_loss(yb, y_pred, swb)
            size = xb.shape[0]
            total += loss.item() * size
            seen += size
            self._update_metrics(yb, y_pred, swb)
            if bar is not None or cbs is not None:
                logs = self._logs(total / seen)
                if bar is not None:
                    bar.update(step + 1, logs, finalize=False)
                if cbs is not None:
                    cbs.on_test_batch_end(step, logs)
            if self.stop_evaluating:
                break
        logs = self._logs(total / max(seen, 1))
        for m, state in saved:
            m.__dict__.update(state)
        self._output_loss_sums = saved_sums
        return logs

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: Optional[int] = None,
        verbose: Union[str, int] = "auto",
        sample_weight: Optional[ArrayLike] = None,
        steps: Optional[int] = None,
        callbacks: Optional[Sequence[Any]] = None,
        return_dict: bool = False,
    ) -> Any:
        """The loss and metrics of the model on (x, y), batch by batch.

        `x` may be a ``keras.utils.PyDataset`` or a Python generator or iterator of
        ``(x, y)`` or ``(x, y, sample_weight)`` batches, as Keras 3: `steps` batches are
        read (None: until it is exhausted, or the PyDataset's length). With arrays,
        `steps` limits the number of batches (more than there are: all of them, with
        Keras' "ran out of data" warning). A subclass's ``test_step`` (or
        ``compute_loss``/``compute_metrics``) is called for every batch when overridden.

        Returns:
            The loss (float) when no metrics are compiled, else ``[loss, *metrics]``; a dict
            with ``return_dict=True``.
        """
        custom = self._overrides("test")
        self._check_compiled("evaluating", custom)
        batch_size = _count("evaluate", "batch_size", batch_size, 32)
        verbose = _verbose(verbose)
        if steps is not None:
            steps = _count("evaluate", "steps", steps)
        generator = is_batch_iterator(x)
        if generator or is_py_dataset(x):
            kind = "a generator" if generator else "a PyDataset"
            for what, value, desc in (
                ("y", y, "the targets"),
                ("sample_weight", sample_weight, "the sample weights"),
            ):
                if value is not None:
                    raise ValueError(
                        f"When providing `x` as {kind}, `{what}` should not be passed. "
                        f"Instead, {desc} should be included as part of the {kind[2:]}."
                    )
            check = self._batch_checker("evaluate", custom)
            if generator:
                data = BatchIterator(x, steps, check)
            else:
                data = PyDatasetIterator(x, steps, False, check, where="evaluate")
        else:
            x, y, sw = self._check_data("evaluate", x, y, sample_weight, need_y=not custom)
            self._dry_run("evaluate", x, self._y_for_checks(y), sw)
            if steps is not None and steps >= math.ceil(len(x) / batch_size):
                steps = None if steps == math.ceil(len(x) / batch_size) else steps
            data = EpochIterator(x, y, sw, batch_size, steps_per_epoch=steps)
            if not custom:
                with _no_grad():
                    self._resolve_metrics_once(x, y)
        bar = Progbar(data.num_batches, verbose=verbose) if verbose else None
        cbs = (
            _callbacks.CallbackList(
                callbacks, model=self, params={"steps": data.num_batches, "verbose": verbose}
            )
            if callbacks
            else None
        )
        if cbs:
            cbs.on_test_begin()
        with _no_grad():
            logs = self._run_evaluation(data.enumerate_epoch(), bar, cbs)
        if not data.steps_seen:
            raise ValueError("evaluate: the generator gave no batch")
        if data.interrupted:
            warnings.warn(RAN_OUT, stacklevel=2)
        if bar is not None:
            bar.update(data.steps_seen, logs, finalize=True)
        if cbs:
            cbs.on_test_end(logs)
        return self._format_result(logs, return_dict, custom)

    def _batch_checker(self, where, custom=False):
        """Each batch of a generator or PyDataset checked as _check_data and _dry_run
        (y optional for an overridden step)."""

        def check(xb, yb, swb):
            xb, yb, swb = self._check_data(where, xb, yb, swb, need_y=not custom)
            self._dry_run(where, xb, self._y_for_checks(yb), swb)
            return xb, yb, swb

        return check

    def _resolve_metrics_once(self, x, y):
        if (self._metric_specs or self._weighted_metric_specs) and not self._metrics_resolved:
            y_pred = self(x[:1], training=False)
            self._resolve_metrics(y[:1], y_pred)

    # ----------------------------------------------------------------- predict
    def predict(
        self,
        x: Any,
        batch_size: Optional[int] = None,
        verbose: Union[str, int] = "auto",
        steps: Optional[int] = None,
        callbacks: Optional[Sequence[Any]] = None,
    ) -> np.ndarray:
        """The model's outputs for `x`, computed batch by batch, as one NumPy array.

        `x` may be arrays, a ``keras.utils.PyDataset`` or a Python generator or iterator
        whose items are ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` (only x
        is used), as Keras 3; `steps` batches are read (None: all of them, or until the
        generator is exhausted). An overridden ``predict_step`` is called for every
        batch.
        """
        batch_size = _count("predict", "batch_size", batch_size, 32)
        verbose = _verbose(verbose)
        if steps is not None:
            steps = _count("predict", "steps", steps)

        def check(xb, yb=None, swb=None):
            xb, _, _ = self._check_data("predict", xb, None, None, need_y=False)
            return xb, None, None

        if is_py_dataset(x):
            data = PyDatasetIterator(x, steps, False, check, where="predict")
        elif is_batch_iterator(x):
            it = x
            # only x is used: each item becomes (x, None), what BatchIterator reads
            items = ((_utils.unpack_x_y_sample_weight(item)[0], None) for item in it)
            data = BatchIterator(items, steps, lambda xb, yb, swb: check(xb))
        else:
            if self._multi_in or self._multi_out:
                x, _, _ = self._check_data("predict", x, None, None, need_y=False)
            else:
                x = _as_float_input(x)
            if getattr(x, "ndim", 1) == 0 or len(x) == 0:
                raise ValueError(
                    "predict: x is empty: no samples"
                    if x.ndim
                    else "predict: x must have a batch axis, got a scalar"
                )
            size = math.ceil(len(x) / batch_size)
            data = EpochIterator(
                x, batch_size=batch_size, steps_per_epoch=None if steps in (None, size) else steps
            )
        bar = Progbar(data.num_batches, verbose=verbose) if verbose else None
        cbs = (
            _callbacks.CallbackList(
                callbacks, model=self, params={"steps": data.num_batches, "verbose": verbose}
            )
            if callbacks
            else None
        )
        outs = []
        self.stop_predicting = False  # a callback may set it to end the loop (Keras 3)
        if cbs:
            cbs.on_predict_begin()
        with _no_grad():
            for step, (xb, _, _) in data.enumerate_epoch():
                if cbs:
                    cbs.on_predict_batch_begin(step)
                outs.append(self._predict_outputs(xb, "predict"))
                if bar is not None:
                    bar.update(step + 1)
                if cbs:
                    cbs.on_predict_batch_end(step, {"outputs": outs[-1]})
                if self.stop_predicting:  # the outputs of the batches run so far
                    break
        if not outs:
            raise ValueError("predict: the input gave no batch")
        if data.interrupted:
            warnings.warn(RAN_OUT, stacklevel=2)
        if cbs:
            cbs.on_predict_end()
        if self._multi_out:
            return self._by_output_names([np.concatenate(parts, axis=0) for parts in zip(*outs)])
        first = outs[0]
        if isinstance(first, dict):
            return {k: np.concatenate([o[k] for o in outs], axis=0) for k in first}
        if isinstance(first, (list, tuple)):
            return type(first)(np.concatenate(parts, axis=0) for parts in zip(*outs))
        return np.concatenate(outs, axis=0)

    # ----------------------------------------------------------------- weights
    def save_weights(
        self, filepath: Union[str, "os.PathLike[str]"], overwrite: bool = True
    ) -> None:
        """Saves all weights to `filepath` in metalearn's checked binary format.

        The file holds, for each weight, its path in the model (``"dense1/kernel"``,
        ``"layers/0/bias"``: stable across instances of the same architecture), its shape
        and its float32 data; then a CRC-32 of the whole (format in ``csrc/io``:
        ``"MLWEIGHT"`` magic, version, count, entries, checksum). Written atomically.

        A name ending in ``.weights.h5`` is written in Keras 3's HDF5 layout instead
        (``layers/<layer>/vars/<i>``, readable by Keras 3's ``load_weights``), through h5py
        (``pip install 'metalearn[keras-io]'``).

        Raises:
            ValueError: a name that promises a format metalearn does not write (another
                ``.h5``: Keras 2's whole-model format; ``.tf``, ``.pb``, ``.pt``, ...) or a
                whole-model name (``.keras``, ``.metalearn``: use ``save``).
            ImportError: a ``.weights.h5`` name without h5py (the message says what to
                install).
        """
        filepath = os.fspath(filepath)
        kind = _saving._check_weights_name(filepath, "save_weights")
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"save_weights: {filepath} exists and overwrite=False")
        paths = self._weight_paths()
        if not paths:
            raise ValueError(f"save_weights: {self.name} has no weights yet; build it first")
        if kind == "h5":  # Keras 3's format, through h5py
            return _saving.save_weights_h5(self, filepath)
        _core.save_tensors(filepath, [p for p, _ in paths], [v for _, v in paths])

    def load_weights(
        self, filepath: Union[str, "os.PathLike[str]"], skip_mismatch: bool = False
    ) -> None:
        """Loads weights saved by ``save_weights`` (``.mlw`` or Keras 3's ``.weights.h5``),
        or the weights of a whole model that ``save`` (or Keras 3) wrote (``.keras``,
        ``.metalearn``).

        The whole file is read and checked (magic, version, sizes, checksum), then every
        name and shape is compared with the model's before anything is assigned: on any
        mismatch ValueError is raised and the model is unchanged.

        Raises:
            OSError: the file is missing or unreadable.
            ValueError: the file is corrupt or truncated, or holds other weights, or its
                name promises a format metalearn does not read.
        """
        filepath = os.fspath(filepath)
        if skip_mismatch:
            raise NotImplementedError("load_weights: skip_mismatch is not supported")
        low = filepath.lower()
        if low.endswith((".keras", ".metalearn")):
            if not os.path.exists(filepath):
                raise FileNotFoundError(f"load_weights: no such file: {filepath!r}")
            if low.endswith(".keras"):
                return _saving._load_weights_keras(self, filepath)
            return _saving._load_weights_metalearn(self, filepath)
        if _saving._check_weights_name(filepath, "load_weights") == "h5":
            return _saving.load_weights_h5(self, filepath)
        paths = self._weight_paths()
        if not paths:
            raise ValueError(
                f"load_weights: {self.name} has no weights yet; call it on a batch or "
                "build it before loading weights"
            )
        entries = _core.load_tensors(filepath)
        expected = {p: v for p, v in paths}
        loaded = {}
        for name, arr in entries:
            if name in loaded:
                raise ValueError(f"load_weights: {filepath} holds {name!r} twice")
            loaded[name] = arr
        missing = [p for p in expected if p not in loaded]
        unexpected = [p for p in loaded if p not in expected]
        if missing or unexpected:
            raise ValueError(
                f"load_weights: {filepath} does not match the model {self.name!r}: "
                f"missing {missing}, unexpected {unexpected}"
            )
        for p, v in expected.items():
            if tuple(loaded[p].shape) != tuple(v.shape):
                raise ValueError(
                    f"load_weights: {filepath}: weight {p!r} has shape "
                    f"{tuple(loaded[p].shape)} in the file, {tuple(v.shape)} in the model"
                )
        for p, v in expected.items():
            _core.assign(v, np.ascontiguousarray(loaded[p], dtype=np.float32))
        return None

    def save(
        self, filepath: Union[str, "os.PathLike[str]"], overwrite: bool = True, **kwargs: Any
    ) -> None:
        """Saves the whole model, as Keras 3's ``model.save``; ``keras.models.load_model``
        reads it back (``metalearn.keras.saving``). Written atomically.

        ``"m.keras"``: Keras 3's own format (config.json, metadata.json, model.weights.h5
        with the optimizer's variables), which Keras 3 loads; needs h5py
        (``pip install 'metalearn[keras-io]'``). ``"m.metalearn"``: metalearn's own (a
        folder in its checkpoint format: configuration, weights, optimizer state, the
        generator's state), so training resumes with the same bits; no h5py needed.

        Raises:
            ValueError: another name (the message says what metalearn writes), a model with
                no weights yet, a compiled loss or metric that cannot be rebuilt.
            ImportError: a ``.keras`` name without h5py.
        """
        if kwargs.pop("zipped", True) is not True or kwargs:
            raise TypeError(f"save: unsupported argument(s) {sorted(kwargs) or ['zipped']}")
        _saving.save_model(self, filepath, overwrite=overwrite)

    def get_config(self) -> Config:
        config = super().get_config()
        return config

    @classmethod
    def from_config(cls, config: Config, custom_objects: Optional[Dict[str, Any]] = None):
        """A model from ``get_config``'s dict; a functional model's dict (with
        ``input_layers``) gives a ``Functional`` model, as Keras 3's ``Model.from_config``."""
        if cls is Model and "input_layers" in config and "output_layers" in config:
            return Functional.from_config(config, custom_objects)
        return cls(**config)


def _relu_then_max_pool(a: Any, b: Any) -> bool:
    """Whether layer `a` is ``Activation("relu")`` and `b`, after it, a MaxPool2D.

    Such a pair runs with the pool first: ``max_pool(relu(x)) == relu(max_pool(x))``, as
    relu is non-decreasing and max pooling only selects, so the relu and its backward
    touch a quarter of the elements (2x2 pools). The values are the same, NaN included (a
    NaN is the max of its window in either order, and relu passes it); so are the
    gradients of every order: a window's gradient reaches its first maximum when that is
    above zero, and nothing otherwise (relu's gradient is 0 where its output is <= 0). The
    one difference is a zero's sign: a window of -1.0 then -0.0 gives +0.0 in the written
    order and -0.0 pooled first (relu passes -0.0, as NumPy's maximum(x, 0)). A mask
    passed on ends at the pool in either order (relu passes it, MaxPool2D drops it).
    """
    return (
        type(a) is _layers.Activation
        and a.activation is _activations.relu
        and type(b) is _conv_layers.MaxPool2D
    )


def _run_order(layers: Sequence[Any]) -> List[Any]:
    """`layers` in the order a Sequential runs them: each relu-then-max-pool pair swapped
    (``_relu_then_max_pool``)."""
    order = list(layers)
    i = 0
    while i + 1 < len(order):
        if _relu_then_max_pool(order[i], order[i + 1]):
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    return order


class Sequential(Model):
    """A linear stack of layers, each feeding the next.

    ``Sequential([Flatten(), Dense(128, activation="relu"), Dense(10)])``. When the first
    layer declares an input shape (``input_shape=``/``input_dim=``, or an ``Input`` first)
    the model builds at once; otherwise on its first call.

    Args:
        layers: optional list of layers.
        name: the model's name.
    """

    _traceable = True

    def __init__(
        self,
        layers: Optional[Sequence[_layers.Layer]] = None,
        name: Optional[str] = None,
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, trainable=trainable)
        self._layers_list = []
        self._input_layer = None
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self) -> List[_layers.Layer]:
        """The layers in order (the InputLayer, if any, is not listed, as in Keras)."""
        return list(self._layers_list)

    @layers.setter
    def layers(self, _):
        # Keras 3's refusal; raised before anything is tracked (Layer.__setattr__ sets first)
        raise AttributeError(
            "`Sequential.layers` attribute is reserved and should not be used. "
            "Use `add()` and `pop()` to change the layers in this model."
        )

    def add(self, layer: _layers.Layer) -> None:
        """Appends a layer (an ``Input``/``InputLayer`` sets the input shape)."""
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        if isinstance(layer, _layers.InputLayer):
            if self._layers_list or self._input_layer is not None:
                raise ValueError("Sequential.add: an InputLayer must come first")
            self._input_layer = layer
            self._batch_input_shape = layer._batch_input_shape
            self._maybe_build_now()
            return
        if any(l is layer for l in self._layers_list):
            raise ValueError(f"Sequential.add: layer {layer.name!r} is already in the model")
        names = [l.name for l in self._layers_list]
        if self._input_layer is not None:
            names.append(self._input_layer.name)
        if layer.name in names:
            raise ValueError(
                "All layers added to a Sequential model should have unique names. "
                f"Name {layer.name!r} is already the name of a layer in this model. "
                "Update the `name` argument to pass a unique name."
            )
        first = not self._layers_list and self._input_layer is None
        if not first and layer._batch_input_shape is not None:
            # Keras reads input_shape/input_dim on the first layer only and ignores it on
            # the others: the layer takes whatever the previous one gives it
            layer._batch_input_shape = None
        self._layers_list.append(layer)
        self._track_layer(f"layers/{len(self._layers_list) - 1}", layer)
        self._checked = {}  # another model now: its data checks run again
        if first and layer._batch_input_shape is not None:
            self._batch_input_shape = layer._batch_input_shape
        self._output_shape = None
        if self._batch_input_shape is not None:
            self._maybe_build_now()
        else:
            self.built = False

    def pop(self) -> _layers.Layer:
        """Removes the last layer and returns it."""
        if not self._layers_list:
            raise TypeError("There are no layers in the model.")
        layer = self._layers_list.pop()
        self._checked = {}
        self._sublayers = [(k, l) for k, l in self._sublayers if l is not layer]
        self._output_shape = None
        if self._batch_input_shape is not None and self._layers_list:
            self._maybe_build_now()
        return layer

    def _maybe_build_now(self):
        if self._layers_list:
            self.build(self._batch_input_shape)

    def build(self, input_shape: Optional[Shape] = None) -> None:
        if not self._layers_list:
            raise ValueError(
                f"Sequential model {self.name} cannot be built because it has no "
                "layers. Call `model.add(layer)`."
            )
        if input_shape is None:
            input_shape = self._batch_input_shape
        if input_shape is None:
            raise ValueError(f"{self.name}.build: an input_shape is required")
        input_shape = tuple(input_shape)
        if self._batch_input_shape is None:
            self._batch_input_shape = (None,) + input_shape[1:]
        super().build(input_shape)

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        if not self._layers_list:
            raise ValueError(
                f"Sequential model {self.name} cannot be built because it has no "
                "layers. Call `model.add(layer)`."
            )
        x, mask = inputs, None
        for layer in _run_order(self._layers_list):  # masks passed on as Keras 3 (Masking, ...)
            x, mask = _rnn.call_masked(layer, x, mask)
        return x

    def _batched_form(self, index):
        """Its layers' batched forms, one after the other (None if one has none)."""
        forms = [layer._batched_form(index) for layer in _run_order(self._layers_list)]
        if not forms or any(f is None for f in forms):
            return None
        return _batched.Chain(forms)

    def get_config(self) -> Config:
        layer_configs = []
        if self._input_layer is not None:
            layer_configs.append(_layers.serialize(self._input_layer))
        layer_configs += [_layers.serialize(l) for l in self._layers_list]
        return {"name": self.name, "trainable": self.trainable, "layers": layer_configs}

    @classmethod
    def from_config(
        cls, config: Config, custom_objects: Optional[Dict[str, Any]] = None
    ) -> Sequential:
        """A new Sequential from ``get_config``'s dict: its layers rebuilt by class name
        (every shipped layer; your own classes via `custom_objects`), names kept as Keras
        does; built at once when the configuration declares an input shape."""
        model = cls(name=config.get("name"))
        for lc in config.get("layers", []):
            model.add(_layers.deserialize(lc, custom_objects))
        if "trainable" in config:
            model.trainable = config["trainable"]
        return model


class Functional(Model):
    """A model made of layers called on ``keras.Input`` (``Model(inputs, outputs)``), as
    Keras 3's functional API: one or several inputs and outputs (a tensor, a list, or a
    dict keyed by name), any graph of layers between them, merges (``Add``,
    ``Concatenate``, ...) and shared layers. Its ``call`` runs the recorded calls in
    order, so ``fit`` traces and replays it from C like a Sequential model;
    ``get_config`` is Keras 3's functional layout (``layers`` with their
    ``inbound_nodes``, ``input_layers``, ``output_layers``). Several outputs take a loss,
    a loss weight and metrics each in ``compile`` (a list in output order or a dict by
    output name), as Keras 3.

    Raises:
        TypeError: inputs that are not ``keras.Input`` results, outputs that are not
            symbolic tensors.
        ValueError: an output that does not depend on the given inputs only ("Graph
            disconnected"), two layers with one name.
    """

    _traceable = True

    def __init__(
        self, inputs: Any, outputs: Any, name: Optional[str] = None, trainable: bool = True
    ) -> None:
        in_kind, ins, in_keys = _graph.structure(inputs, "inputs")
        out_kind, outs, out_keys = _graph.structure(outputs, "outputs")
        for i in ins:
            _graph._input_layer_of(i, "inputs")
        if len({id(i) for i in ins}) != len(ins):
            raise ValueError("Model(inputs, outputs): an input is given twice")
        for o in outs:
            if not isinstance(o, _graph.KerasTensor):
                raise TypeError(
                    "Model(inputs, outputs): outputs must be the result of layers called on "
                    f"keras.Input, got {type(o).__name__}"
                )
        nodes = _graph.order_graph(ins, outs)
        # Keras 3 flattens a dict by sorted key: its walk, and output_names, go that way
        walk = [outputs[k] for k in sorted(outputs)] if out_kind == "dict" else outs
        ordered = _graph.layer_order(ins, walk)  # Keras 3's order of model.layers
        used = [l for l in ordered if not isinstance(l, _layers.InputLayer)]
        names = [l.name for l in ordered]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"The name {dup[0]!r} is used {names.count(dup[0])} times in the model. All "
                "layer names should be unique."
            )
        super().__init__(name=name, trainable=trainable)
        self._inputs_list, self._outputs_list, self._nodes = ins, outs, nodes
        self._input_kind, self._input_keys = in_kind, in_keys
        self._output_kind, self._output_keys = out_kind, out_keys
        # Keras 3 names each output by its dict key, else by the layer that made it
        self.output_names = sorted(out_keys) if out_keys else [o._layer.name for o in outs]
        self._layers_list = ordered
        for layer in used:
            self._track_layer(layer.name, layer)
        first = ins[0]
        self._batch_input_shape = first._batch_input_shape if in_kind == "single" else None
        self._build_input_shape = tuple(1 if d is None else d for d in first._batch_input_shape)
        self._output_shape = (1,) + tuple(outs[0].shape[1:])
        for i in ins:
            if i._output_shape is None:  # (summary's row of the input)
                i._output_shape = tuple(1 if d is None else d for d in i._batch_input_shape)
        self.built = True

    # (kept for code that reads the one-input model's attributes)
    @property
    def _input_layer(self):
        return self._inputs_list[0]

    @property
    def _output_tensor(self):
        return self._outputs_list[0]

    @property
    def _multi_in(self) -> bool:
        return self._input_kind != "single"

    @property
    def _multi_out(self) -> bool:
        return self._output_kind != "single"

    @property
    def layers(self) -> List[_layers.Layer]:
        """The layers, the InputLayers first, as Keras 3's functional models list them."""
        return list(self._layers_list)

    @layers.setter
    def layers(self, _):
        raise AttributeError("`Functional.layers` is read-only")

    @property
    def inputs(self) -> List[Any]:
        return list(self._inputs_list)

    @property
    def outputs(self) -> List[Any]:
        return list(self._outputs_list)

    def build(self, input_shape: Optional[Shape] = None) -> None:
        self.built = True  # built with its layers, by the symbolic calls

    def _flat_inputs(self, inputs, where="call"):
        """The model's inputs as a list in its input order, from one array, a list/tuple
        (or Columns) in order, or a dict keyed by input name (or by the dict's keys the
        model was made with)."""
        n = len(self._inputs_list)
        if isinstance(inputs, _graph.Columns):
            inputs = inputs.arrays
        if isinstance(inputs, dict):
            keys = self._input_keys or [i.name for i in self._inputs_list]
            missing = [k for k in keys if k not in inputs]
            if missing:
                raise ValueError(
                    f"{self.name}.{where}: the inputs dict lacks {missing}; the model's "
                    f"inputs are {keys}"
                )
            return [inputs[k] for k in keys]
        if isinstance(inputs, (list, tuple)) and (n > 1 or self._input_kind != "single"):
            if len(inputs) != n:
                raise ValueError(
                    f"{self.name}.{where}: the model has {n} inputs, got a list of {len(inputs)}"
                )
            return list(inputs)
        if n != 1:
            raise ValueError(
                f"{self.name}.{where}: the model has {n} inputs "
                f"{[i.name for i in self._inputs_list]}; pass a list or a dict"
            )
        return [inputs]

    def _by_output_names(self, flat):
        """Per-output values in output_names' order, as the model's structure."""
        if self._output_kind == "dict":
            return {k: flat[self.output_names.index(k)] for k in self._output_keys}
        return list(flat)

    def _structure_outputs(self, flat):
        if self._output_kind == "dict":
            return dict(zip(self._output_keys, flat))
        if self._output_kind == "list":
            return list(flat)
        return flat[0]

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        flat = self._flat_inputs(inputs)
        values = {}
        for layer, x in zip(self._inputs_list, flat):
            shape = tuple(getattr(x, "shape", ()))
            expected = layer._batch_input_shape[1:]
            if len(shape) != len(expected) + 1 or any(
                e is not None and d != e for d, e in zip(shape[1:], expected)
            ):
                raise ValueError(
                    f"{self.name}: expected inputs of shape (batch, "
                    f"{', '.join(map(str, expected))}) for {layer.name!r}, got {shape}"
                )
            values[id(layer)] = x
        masks = {}  # id(node) -> its output's mask, passed on as Keras 3 (rnn.call_masked)
        calls = {}  # id(call's head) -> (outputs, masks): a several-output layer runs once
        for t in self._nodes:
            head = t._head
            if id(head) not in calls:
                args = [values[id(p)] for p in head._parents[: head._n_args]]
                kwargs = _graph.substitute(head._kwargs, lambda p: values[id(p)])
                mask = None if head._merge else masks.get(id(head._parents[0]))
                calls[id(head)] = _rnn.call_masked(
                    head._layer, args if head._merge else args[0], mask, kwargs
                )
            out, mask = calls[id(head)]
            if head._n_outputs > 1:  # return_state: [output, *states], masks likewise
                k = t._output_index
                out, mask = out[k], mask[k] if isinstance(mask, (list, tuple)) else None
            values[id(t)], masks[id(t)] = out, mask
        return self._structure_outputs([values[id(o)] for o in self._outputs_list])

    def _calls(self):
        """The graph's layer calls (one per call, however many outputs it has), in order."""
        seen, heads = set(), []
        for t in self._nodes:
            if id(t._head) not in seen:
                seen.add(id(t._head))
                heads.append(t._head)
        return heads

    def _connected_to(self):
        """Summary's "Connected to" column, as Keras 3: ``layer[node][0]`` of each input
        of each call of the layer in this graph; ``-`` for inputs."""
        local, conn = self._local_node_index(), {}
        for t in sorted(self._calls(), key=lambda t: (id(t._layer), t._node_index)):
            for p in t._parents:
                if isinstance(p, _layers.InputLayer):
                    text = f"{p.name}[0][0]"
                else:
                    text = f"{p._layer.name}[{local[id(p)]}][{p._output_index}]"
                conn.setdefault(id(t._layer), []).append(text)
        return conn

    def _local_node_index(self):
        """id(KerasTensor) -> the rank of its call among its layer's calls in this graph
        (in call order), as Keras 3 renumbers a layer's nodes in a model's config."""
        calls = {}
        for t in self._calls():
            calls.setdefault(id(t._layer), []).append(t)
        local = {}
        for ts in calls.values():
            for k, t in enumerate(sorted(ts, key=lambda t: t._node_index)):
                local[id(t)] = k
        for t in self._nodes:  # a call's other outputs: the call's rank
            local[id(t)] = local[id(t._head)]
        return local

    def get_config(self) -> Config:
        local = self._local_node_index()

        def history(p):
            if isinstance(p, _layers.InputLayer):
                return [p.name, 0, 0]
            return [p._layer.name, local[id(p)], p._output_index]

        def tensor(p):
            return {
                "class_name": "__keras_tensor__",
                "config": {
                    "shape": list(_graph.symbolic_shape(p)),
                    "dtype": "float32",
                    "keras_history": history(p),
                },
            }

        # the layers in model.layers' order (Keras 3's), each call in call order
        entries = {
            l.name: {**_layers.serialize(l), "name": l.name, "inbound_nodes": []}
            for l in self._layers_list
        }
        for t in sorted(self._calls(), key=lambda t: local[id(t)]):
            name = t._layer.name
            args = [tensor(p) for p in t._parents[: t._n_args]]
            entries[name]["inbound_nodes"].append(
                {
                    "args": [args] if t._merge else args,
                    "kwargs": _graph.substitute(dict(t._kwargs), tensor),
                }
            )

        def layout(kind, items, keys):
            # Keras 3: a list for one or several, a dict keyed as the model's dict
            hist = [history(t) for t in items]
            return dict(zip(keys, hist)) if kind == "dict" else hist

        return {
            "name": self.name,
            "trainable": self.trainable,
            "layers": list(entries.values()),
            "input_layers": layout(self._input_kind, self._inputs_list, self._input_keys),
            "output_layers": layout(self._output_kind, self._outputs_list, self._output_keys),
        }

    @classmethod
    def from_config(
        cls, config: Config, custom_objects: Optional[Dict[str, Any]] = None
    ) -> "Functional":
        """A new functional model from ``get_config``'s dict: the layers rebuilt by class
        name (yours via `custom_objects`), then called on each other as the config's
        ``inbound_nodes`` say."""
        made, tensors, pending = {}, {}, []
        for entry in config.get("layers", []):
            layer = _layers.deserialize(
                {"class_name": entry["class_name"], "config": entry["config"]}, custom_objects
            )
            made[entry["name"]] = layer
            if isinstance(layer, _layers.InputLayer):
                tensors[(entry["name"], 0)] = layer
            for k, node in enumerate(entry.get("inbound_nodes", [])):
                pending.append((entry["name"], k, node))

        def resolve(arg):
            if isinstance(arg, list):
                return [resolve(a) for a in arg]
            if isinstance(arg, dict) and arg.get("class_name") != "__keras_tensor__":
                return {key: resolve(v) for key, v in arg.items()}
            if not isinstance(arg, dict):
                return arg  # a plain keyword value
            name, k, index = arg["config"]["keras_history"]
            made_call = tensors.get((name, k), missing)
            if isinstance(made_call, list):  # a call with several outputs
                return made_call[index]
            return made_call

        missing = object()  # a tensor whose call is not made yet

        def ready(value):
            if isinstance(value, list):
                return all(ready(v) for v in value)
            if isinstance(value, dict):
                return all(ready(v) for v in value.values())
            return value is not missing

        def node_kwargs(node):
            kwargs = dict(node.get("kwargs", {}))
            # Keras 3 records these defaults on some calls (an RNN's): our symbolic
            # call takes no fixed training flag, and the mask comes from the graph
            if kwargs.get("training") is False:
                del kwargs["training"]
            if "mask" in kwargs and kwargs["mask"] is None:
                del kwargs["mask"]
            return kwargs

        while pending:
            progress = False
            for item in list(pending):
                name, k, node = item
                if k and (name, k - 1) not in tensors:
                    continue  # a shared layer's calls in their order
                args = [resolve(a) for a in node.get("args", [])]
                kwargs = {key: resolve(v) for key, v in node_kwargs(node).items()}
                if not ready(args) or not ready(list(kwargs.values())):
                    continue
                if len(args) != 1:
                    raise ValueError(f"Functional.from_config: {name} takes one argument")
                tensors[(name, k)] = made[name](args[0], **kwargs)
                pending.remove(item)
                progress = True
            if not progress:
                raise ValueError(
                    "Functional.from_config: the layers' inbound nodes do not form a graph "
                    f"from the inputs (left: {[(n, k) for n, k, _ in pending]})"
                )

        def pick(spec, what):
            def one(h):
                name, k = h[0], h[1]
                if (name, k) not in tensors:
                    raise ValueError(f"Functional.from_config: no {what} {name!r}")
                got = tensors[(name, k)]
                return got[h[2] if len(h) > 2 else 0] if isinstance(got, list) else got

            if isinstance(spec, dict):
                return {key: one(h) for key, h in spec.items()}
            # Keras 3 writes one input as a one-item list, or as the bare history
            if spec and not isinstance(spec[0], list):
                return one(spec)
            items = [one(h) for h in spec]
            return items[0] if len(items) == 1 else items

        return cls(
            pick(config["input_layers"], "input layer"),
            pick(config["output_layers"], "output layer"),
            name=config.get("name"),
            trainable=config.get("trainable", True),
        )


def load_weights_file(filepath: Union[str, "os.PathLike[str]"]) -> List[_core.Tensor]:
    """The entries of a weights file: ``[(name, ndarray)]`` (checked; for inspection)."""
    return list(_core.load_tensors(os.fspath(filepath)))


load_model = _saving.load_model


def _data_parallel():
    """The metalearn.distributed strategy in force, or None (the module is looked at only
    if it was imported: a strategy needs it)."""
    import sys

    dist = sys.modules.get("metalearn.distributed")
    return None if dist is None else dist.distribution()
