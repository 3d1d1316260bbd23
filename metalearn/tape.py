"""GradientTape and Variable: TensorFlow's eager autograd surface over the C core.

The core records a graph whenever grad mode is on and an input requires grad, and
``_core.grad`` walks it (with ``create_graph=True`` the walk is itself recorded, so
gradients of gradients work). ``GradientTape`` gives that machinery TensorFlow's shape:

    >>> x = ml.Variable(3.0)
    >>> with ml.GradientTape() as outer:
    ...     with ml.GradientTape() as inner:
    ...         y = x * x * x
    ...     dy_dx = inner.gradient(y, x)      # 27, recorded on the outer tape
    >>> d2y_dx2 = outer.gradient(dy_dx, x)    # 18
"""

from __future__ import annotations

from typing import Any, ContextManager, Literal, Optional, Tuple

from metalearn._typing import ArrayLike, Shape
import itertools
import threading

import numpy as np

from metalearn import _core

__all__ = ["GradientTape", "Variable"]

_state = threading.local()  # .tapes: the stack of tapes recording on this thread
_variable_uid = itertools.count()


class _GradMode:
    """Sets grad mode inside a ``with`` block and restores it after (no allocation per op)."""

    __slots__ = ("_enabled", "_prev")

    def __init__(self, enabled):
        self._enabled = enabled

    def __enter__(self):
        self._prev = _core.set_grad_enabled(self._enabled)
        return self

    def __exit__(self, *exc):
        _core.set_grad_enabled(self._prev)
        return False

    def __call__(self, fn):
        """Also a decorator: ``@metalearn.no_grad()``."""
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with _GradMode(self._enabled):
                return fn(*args, **kwargs)

        return wrapper


def no_grad() -> ContextManager[Any]:
    """Context manager (and decorator): ops inside record nothing (inference, updates)."""
    return _GradMode(False)


def enable_grad() -> ContextManager[Any]:
    """Context manager (and decorator): ops inside are recorded even within ``no_grad``."""
    return _GradMode(True)


def _tapes():
    stack = getattr(_state, "tapes", None)
    if stack is None:
        stack = _state.tapes = []
    return stack


# --------------------------------------------------------------------- Variable


def _initial_array(initial_value, shape):
    if callable(initial_value) and not isinstance(initial_value, _core.Tensor):
        initial_value = initial_value(shape) if shape is not None else initial_value()
    if isinstance(initial_value, _core.Tensor):
        return np.array(initial_value, dtype=np.float32, copy=True)
    arr = np.asarray(initial_value)
    if arr.dtype == object or np.iscomplexobj(arr):
        raise TypeError(
            f"Variable: cannot make a float32 variable from {type(initial_value).__name__} "
            f"of dtype {arr.dtype}"
        )
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        arr = np.broadcast_to(arr, tuple(shape)).copy()
    return arr


class Variable(_core.Tensor):
    """A tensor that holds a model's state: a leaf that requires grad when trainable.

    A Variable works wherever a tensor does (every op, ``@``, ``numpy()``); it changes
    only through ``assign``/``assign_add``/``assign_sub`` or an optimizer step, which
    write in place and record nothing.

    Args:
        initial_value: array-like, Tensor, or a callable returning one (called with
            `shape` when given, as an initializer is).
        trainable: whether gradients flow to it (``requires_grad``) and optimizers see it.
        name: a name; layers name their weights ``"<layer>/<weight>"``.
        dtype: only ``"float32"`` (or None) is accepted.
        shape: the shape, needed when `initial_value` is an initializer.
    """

    def __new__(cls, initial_value=None, trainable=True, name=None, dtype=None, shape=None):
        if dtype is not None and np.dtype(dtype) != np.float32:
            raise TypeError(f"Variable: metalearn holds float32 only, got dtype={dtype!r}")
        if initial_value is None:
            raise ValueError("Variable: initial_value is required")
        value = _initial_array(initial_value, shape)
        self = _core.Tensor.__new__(cls, value, requires_grad=bool(trainable))
        return self

    def __init__(
        self,
        initial_value: Any = None,
        trainable: bool = True,
        name: Optional[str] = None,
        dtype: Any = None,
        shape: Optional[Shape] = None,
    ) -> None:
        self._trainable = bool(trainable)
        self._name = str(name) if name is not None else f"Variable_{next(_variable_uid)}"

    @property
    def name(self) -> str:
        """The variable's name (``"<layer>/<weight>"`` for layer weights)."""
        return self._name

    @property
    def path(self) -> str:
        """Alias of `name` (Keras 3 spelling)."""
        return self._name

    @property
    def trainable(self) -> bool:
        """Whether optimizers and tapes see it; setting it switches ``requires_grad``."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = bool(value)
        self.requires_grad = value
        self._trainable = value

    @property
    def value(self) -> _core.Tensor:
        """A tensor sharing the variable's memory, cut from any graph."""
        return self.detach()

    def read_value(self) -> _core.Tensor:
        return self.detach()

    def _coerce(self, value):
        if isinstance(value, _core.Tensor):
            if tuple(value.shape) == tuple(self.shape):
                return value
            value = np.asarray(value)
        arr = np.asarray(value, dtype=np.float32)
        if arr.shape != tuple(self.shape):
            try:
                arr = np.broadcast_to(arr, tuple(self.shape))
            except ValueError:
                raise ValueError(
                    f"Variable {self._name!r}: cannot assign a value of shape "
                    f"{arr.shape} to a variable of shape {tuple(self.shape)}"
                ) from None
        return np.ascontiguousarray(arr)

    def assign(self, value: ArrayLike, read_value: bool = True) -> Optional[Variable]:
        """Writes `value` (broadcast to the variable's shape) in place; records nothing."""
        _core.assign(self, self._coerce(value))
        return self if read_value else None

    def assign_add(self, delta: ArrayLike, read_value: bool = True) -> Optional[Variable]:
        """``self += delta`` in place; records nothing."""
        with no_grad():
            _core.assign(self, _core.add(self, self._coerce(delta)))
        return self if read_value else None

    def assign_sub(self, delta: ArrayLike, read_value: bool = True) -> Optional[Variable]:
        """``self -= delta`` in place; records nothing."""
        with no_grad():
            _core.assign(self, _core.sub(self, self._coerce(delta)))
        return self if read_value else None

    def __repr__(self):
        return (
            f"<metalearn.Variable '{self._name}' shape={tuple(self.shape)} dtype=float32, "
            f"numpy=\n{np.array2string(np.asarray(self), precision=4)}>"
        )

    def __hash__(self):
        return id(self)

    # A Variable compares as a tensor does; identity lookups use id().


# ------------------------------------------------------------------ structures


def _flatten(structure):
    """Leaves of nested lists/tuples/dicts (dicts in sorted-key order)."""
    if isinstance(structure, dict):
        out = []
        for k in sorted(structure):
            out.extend(_flatten(structure[k]))
        return out
    if isinstance(structure, (list, tuple)):
        out = []
        for s in structure:
            out.extend(_flatten(s))
        return out
    return [structure]


def _pack(structure, flat_iter):
    if isinstance(structure, dict):
        packed = {k: _pack(structure[k], flat_iter) for k in sorted(structure)}
        return {k: packed[k] for k in structure}
    if isinstance(structure, (list, tuple)):
        items = [_pack(s, flat_iter) for s in structure]
        if isinstance(structure, tuple) and hasattr(structure, "_fields"):
            return type(structure)(*items)
        return type(structure)(items)
    return next(flat_iter)


# ---------------------------------------------------------------- GradientTape


def _live_targets(targets, out_grads):
    """The targets that depend on a variable, each with its output gradient (None for a
    scalar target without one: d target = 1; ones for a non-scalar one: its sum)."""
    live_targets, live_out = [], []
    for t, g in zip(targets, out_grads):
        if not isinstance(t, _core.Tensor):
            raise TypeError(
                f"GradientTape.gradient: target must be a Tensor, got {type(t).__name__}"
            )
        if not t.requires_grad:
            continue  # a constant: contributes nothing
        if g is None:
            g = None if t.ndim == 0 else _core.ones(t.shape)
        live_targets.append(t)
        live_out.append(g)
    return live_targets, live_out


class GradientTape:
    """Records operations for automatic differentiation, as ``tf.GradientTape``.

    Inside ``with GradientTape() as tape:`` grad mode is on; trainable Variables are
    watched automatically (``watch_accessed_variables=True``); plain tensors are watched
    with ``tape.watch``. ``tape.gradient(target, sources)`` returns the gradients in the
    structure of `sources`, with None for a source the target does not depend on.

    A gradient taken while another tape is recording is itself recorded (it is computed
    with ``create_graph=True``), so nested tapes give second and higher derivatives.

    Args:
        persistent: allow more than one ``gradient`` call on this tape.
        watch_accessed_variables: watch trainable Variables automatically. When False only
            what ``watch`` was given gets a gradient (others get None).
    """

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True) -> None:
        self._persistent = bool(persistent)
        self._watch_accessed = bool(watch_accessed_variables)
        self._watched = {}  # id -> tensor (kept alive)
        self._used = False
        self._recording = False
        self._prev_grad_mode = None

    # -- context
    def __enter__(self) -> GradientTape:
        if self._recording:
            raise ValueError("GradientTape: this tape is already recording")
        self._prev_grad_mode = _core.is_grad_enabled()
        _core.set_grad_enabled(True)
        _tapes().append(self)
        _core._set_tapes_recording(len(_tapes()))  # read by metalearn.function's replays
        self._recording = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        stack = _tapes()
        if stack and stack[-1] is self:
            stack.pop()
        elif self in stack:
            stack.remove(self)
        _core._set_tapes_recording(len(stack))
        self._recording = False
        _core.set_grad_enabled(self._prev_grad_mode)
        return False

    def stop_recording(self) -> ContextManager[Any]:
        """Context manager: operations inside it are not recorded (grad mode off)."""
        tape = self

        class _Stop:
            def __enter__(s):
                if not tape._recording:
                    raise ValueError("GradientTape.stop_recording: the tape is not recording")
                s.prev = _core.is_grad_enabled()
                _core.set_grad_enabled(False)
                tape._recording = False
                return s

            def __exit__(s, *exc):
                _core.set_grad_enabled(s.prev)
                tape._recording = True
                return False

        return _Stop()

    def reset(self) -> None:
        """Forgets what was watched (a fresh start inside the same ``with`` block)."""
        self._watched.clear()
        self._used = False

    def watch(self, tensor: Any) -> None:
        """Makes the tape track `tensor` (a Tensor, or a nested structure of them).

        A leaf tensor that does not require grad is switched to require it (the tensor
        object itself is marked, as metalearn records on tensors, not on tapes). A tensor
        computed by an op that was not recorded cannot be watched: its history is gone.
        """
        for t in _flatten(tensor):
            if not isinstance(t, _core.Tensor):
                raise TypeError(
                    f"GradientTape.watch: expected a Tensor or Variable, got "
                    f"{type(t).__name__}; convert it with metalearn.tensor(...) first"
                )
            if not t.requires_grad:
                if not t.is_leaf:
                    raise ValueError(
                        "GradientTape.watch: this tensor was computed without recording "
                        f"(op '{t.op}') and cannot be watched after the fact; watch its inputs "
                        "before computing it"
                    )
                t.requires_grad = True
            self._watched[id(t)] = t

    def watched_variables(self) -> Tuple[Variable, ...]:
        """The Variables watched explicitly (trainable Variables are watched implicitly)."""
        return tuple(t for t in self._watched.values() if isinstance(t, Variable))

    def _outer_recording(self):
        for tape in _tapes():
            if tape._recording:
                return True
        return False

    def gradient(
        self,
        target: Any,
        sources: Any,
        output_gradients: Any = None,
        unconnected_gradients: str = "none",
    ) -> Any:
        """Gradients of `target` with respect to `sources`.

        Args:
            target: a Tensor or a list of Tensors (their gradients are summed). A
                non-scalar target is differentiated as the sum of its elements unless
                `output_gradients` gives its weighting.
            sources: a Tensor/Variable or a nested list/tuple/dict of them.
            output_gradients: None, or one gradient per target (the vector of a
                vector-Jacobian product).
            unconnected_gradients: ``"none"`` (None for an unconnected source) or
                ``"zero"``.

        Returns:
            Gradients in the structure of `sources`.

        Raises:
            RuntimeError: on a second call to a non-persistent tape.
        """
        if self._used and not self._persistent:
            raise RuntimeError(
                "A non-persistent GradientTape can only be used to compute one set "
                "of gradients (or jacobians); use GradientTape(persistent=True)"
            )
        if unconnected_gradients not in ("none", "zero"):
            raise ValueError(
                f"unconnected_gradients must be 'none' or 'zero', got {unconnected_gradients!r}"
            )
        self._used = True

        flat_sources = _flatten(sources)
        targets = _flatten(target)
        if output_gradients is None:
            out_grads = [None] * len(targets)
        else:
            out_grads = _flatten(output_gradients)
            if len(out_grads) != len(targets):
                raise ValueError(
                    f"GradientTape.gradient: {len(targets)} targets but "
                    f"{len(out_grads)} output_gradients"
                )
        for s in flat_sources:
            if not isinstance(s, _core.Tensor):
                raise TypeError(
                    f"GradientTape.gradient: sources must be Tensors or Variables, got "
                    f"{type(s).__name__}"
                )

        live_targets, live_out = _live_targets(targets, out_grads)
        results = [None] * len(flat_sources)
        idx, inputs = [], []
        for i, s in enumerate(flat_sources):
            if not s.requires_grad:
                continue
            if not self._watch_accessed and id(s) not in self._watched:
                continue
            idx.append(i)
            inputs.append(s)

        if live_targets and inputs:
            create_graph = self._outer_recording() and _core.is_grad_enabled()
            if any(g is not None for g in live_out):
                live_out = [
                    g if g is not None else _core.ones(t.shape)
                    for t, g in zip(live_targets, live_out)
                ]
            else:
                live_out = None
            grads = _core.grad(
                live_targets,
                inputs,
                grad_outputs=live_out,
                create_graph=create_graph,
                allow_unused=True,
            )
            for i, g in zip(idx, grads):
                results[i] = g

        if unconnected_gradients == "zero":
            results = [
                r if r is not None else _core.zeros(s.shape) for r, s in zip(results, flat_sources)
            ]
        if isinstance(sources, (list, tuple, dict)):
            return _pack(sources, iter(results))
        return results[0]

    def jacobian(self, target: Any, sources: Any, unconnected_gradients: str = "none") -> Any:
        """Jacobian of `target` with respect to `sources`: shape target.shape + source.shape.

        Computed one row at a time (a vector-Jacobian product per target element); meant
        for small targets. Needs ``persistent=True`` only if called more than once.
        """
        if self._used and not self._persistent:
            raise RuntimeError(
                "A non-persistent GradientTape can only be used to compute one set "
                "of gradients (or jacobians); use GradientTape(persistent=True)"
            )
        flat_sources = _flatten(sources)
        n = int(target.size)
        rows = [[] for _ in flat_sources]
        persistent, self._persistent = self._persistent, True
        try:
            for k in range(n):
                onehot = np.zeros(n, np.float32)
                onehot[k] = 1.0
                g = self.gradient(
                    target,
                    flat_sources,
                    output_gradients=[_core.tensor(onehot.reshape(target.shape))],
                    unconnected_gradients="zero",
                )
                for j, gj in enumerate(g):
                    rows[j].append(np.asarray(gj))
        finally:
            self._persistent = persistent
            self._used = True
        out = [
            _core.tensor(np.stack(r).reshape(tuple(target.shape) + tuple(s.shape)))
            for r, s in zip(rows, flat_sources)
        ]
        if isinstance(sources, (list, tuple, dict)):
            return _pack(sources, iter(out))
        return out[0]
