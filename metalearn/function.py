"""``metalearn.function``: trace a Python function once per input signature, replay from C.

The first call with a new signature (the shapes of the tensor arguments and the values of
the others) runs ``fn`` eagerly while the C core records every op it runs on this thread —
forward ops, the backward ops that ``metalearn.grad`` runs (second-order ones included),
optimizer steps, random draws. Later calls with the same signature replay that record
from C with the new tensors: no Python per op, no graph building.

What a trace sees, like ``tf.function``:

* tensors flow only through metalearn ops: a value read in Python (``.numpy()``,
  ``.item()``, an ``if`` on a tensor) is baked into the trace as it was the first time;
* weights and other tensors the function reads but does not take as arguments are
  captured by reference, so in-place updates (an optimizer step) are seen by every replay;
* Python side effects (appending to a list, printing) happen only while tracing.

``f.describe()`` shows what each signature replays: the trace's entries by op name with
their shapes, including the pairs of ops the trace fused into one pass.

Task parallelism: ``f.map(calls)`` replays one trace for many argument tuples (the tasks
of a meta-batch) over ``metalearn.get_num_threads()`` threads. Each call's outputs are its
own, so summing them in call order gives the same result for any thread count.

When a call runs eagerly instead of replaying (same values; Python runs ``fn`` again):

* under a recording ``GradientTape`` (with grad mode on), or with a tensor argument that
  requires grad while grad mode is on: a replay records no graph, so its outputs would
  have no gradient; the eager call gives every call the gradient of the first;
* inside another traced function (nested or recursive calls): the inner function's ops
  are recorded into the outer trace as they run.

Outside a tape, a replay's outputs carry no graph to the weights the function captured:
take gradients of them inside a ``GradientTape`` (or pass the weights as arguments).

Threads: a Function may be called from several threads at once. A trace is recorded on
the thread that makes the first call of its signature; once recorded, any thread replays
it, several at once (a trace is read-only; what they share is what the function itself
shares, e.g. the weights an optimizer step inside it writes).
"""

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from metalearn import _core

__all__ = ["function", "Function"]

_Tensor = _core.Tensor


def _flatten(obj, leaves):
    """Structure of obj with tensors replaced by their index in `leaves`."""
    if isinstance(obj, _Tensor):
        leaves.append(obj)
        return ("T", len(leaves) - 1)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_flatten(o, leaves) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _flatten(v, leaves)) for k, v in obj.items()))
    if obj is None:
        return ("None",)
    raise TypeError(
        f"metalearn.function: outputs must be tensors (or lists, tuples and dicts of "
        f"them), got {type(obj).__name__}; a Python value would be stale on replay"
    )


def _unflatten(spec, leaves):
    kind = spec[0]
    if kind == "flat":  # a tuple or list of tensors, in order (the common case, no recursion)
        return tuple(leaves) if spec[1] == "tuple" else list(leaves)
    if kind == "T":
        return leaves[spec[1]]
    if kind in ("list", "tuple"):
        items = [_unflatten(s, leaves) for s in spec[1]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _unflatten(s, leaves) for k, s in spec[1]}
    return None


def _flat_spec(spec):
    """("flat", "tuple"|"list") for a tuple or list of tensors in leaf order, else spec."""
    if spec[0] in ("tuple", "list") and all(
        s[0] == "T" and s[1] == i for i, s in enumerate(spec[1])
    ):
        return ("flat", spec[0])
    return spec


def _tensor_key(t):
    """A tensor argument's part of a call's signature (its shape)."""
    return ("T", t.shape)


def _signature_text(key):
    """A call signature (the key _split makes) for people: tensor(8, 4), 0.5, lr=0.1."""
    parts, keyword = [], ""
    for item in key:
        if item[0] == "K":
            keyword = f"{item[1]}="
            continue
        if item[0] == "T":
            text = "tensor(" + ", ".join(str(d) for d in item[1]) + ")"
        elif item[0] == "seq":
            text = f"{item[1]} of {item[2]}:"
        else:
            text = repr(item[1])
        parts.append(keyword + text)
        keyword = ""
    return " ".join(p if p.endswith(":") else p + "," for p in parts).rstrip(",")


def _visit(a, tensors, key):
    """One argument of a traced call: tensors (arrays made tensors) go to `tensors`, the
    signature to `key`. A module-level function on purpose: a recursive closure would be a
    reference cycle holding every argument until the garbage collector ran (a meta-batch of
    images kept alive per step, and fresh pages for the next one)."""
    if isinstance(a, np.ndarray):
        a = _core.tensor(a)
    if isinstance(a, _Tensor):
        tensors.append(a)
        key.append(_tensor_key(a))
        return a
    if isinstance(a, (list, tuple)):
        key.append(("seq", type(a).__name__, len(a)))
        items = [_visit(x, tensors, key) for x in a]
        return items if isinstance(a, list) else tuple(items)
    try:
        hash(a)
    except TypeError:
        raise TypeError(
            f"metalearn.function: argument of type {type(a).__name__} is "
            "neither a tensor nor hashable"
        ) from None
    key.append(("V", a))
    return a


class Function:
    """A traced function; see the module docstring. Made by :func:`function`."""

    def __init__(self, fn: Callable, n_threads: Optional[int] = None):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._n_threads = n_threads
        self._traces: Dict[Any, Tuple[Any, Any]] = {}

    # -- signature -------------------------------------------------------------
    def _split(self, args, kwargs):
        """(tensor arguments, hashable key) for a call; arrays become tensors."""
        tensors: List[_Tensor] = []
        key: List[Any] = []
        new_args = tuple(_visit(a, tensors, key) for a in args)
        new_kwargs = {}
        for k in sorted(kwargs):
            key.append(("K", k))
            new_kwargs[k] = _visit(kwargs[k], tensors, key)
        return new_args, new_kwargs, tensors, tuple(key)

    @property
    def n_traces(self) -> int:
        """How many signatures have been traced."""
        return len(self._traces)

    def n_ops(self) -> List[int]:
        """Ops recorded per traced signature."""
        return [_core.trace_n_ops(tr) for tr, _ in self._traces.values()]

    def describe(self) -> str:
        """What each traced signature replays, as text: a header naming the signature, then
        its trace's entries in replay order, one a line, by op name with the shapes of
        their outputs and inputs (``x``: the tensor arguments, ``c``: tensors the function
        captured, such as weights, ``t``: tensors the trace computes). An entry that runs
        several recorded ops in one pass says which: ``[fused: matmul + add + relu]``.
        An entry without ``=`` writes in place (an optimizer step). "" before any call."""
        n = len(self._traces)
        return "\n".join(
            f"signature {i + 1} of {n}: {_signature_text(key)}\n{trace.describe()}"
            for i, (key, (trace, _)) in enumerate(self._traces.items())
        )

    # -- calls -----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if not kwargs:
            # the common replay (tensors only): the key _split would make, without its walk
            key = []
            for a in args:
                if type(a) is not _Tensor:
                    break
                key.append(_tensor_key(a))
            else:
                entry = self._traces.get(tuple(key))
                if entry is not None:
                    out = _core.trace_try_replay(entry[0], list(args))
                    if out is not None:
                        return _unflatten(entry[1], out)
                    # under a recording tape, inside an outer trace, or an input requires
                    # grad: a replay would differ (the check is flags, in C)
                    return self._fn(*args)
        args, kwargs, tensors, key = self._split(args, kwargs)
        entry = self._traces.get(key)
        if entry is not None:
            trace, spec = entry
            out = _core.trace_try_replay(trace, tensors)
            if out is not None:
                return _unflatten(spec, out)
            return self._fn(*args, **kwargs)
        if len({id(t) for t in tensors}) != len(tensors) or _core.is_tracing():
            # the same tensor twice is not traceable; inside an outer trace the ops run (and
            # are recorded there): both run eagerly
            return self._fn(*args, **kwargs)
        trace = _core.trace_begin(tensors)
        try:
            out = self._fn(*args, **kwargs)
            leaves: List[_Tensor] = []
            spec = _flatten(out, leaves)
        except BaseException:
            _core.trace_abort(trace)
            raise
        _core.trace_end(trace, leaves)
        # two threads may have traced the same signature at once: the first one stays
        self._traces.setdefault(key, (trace, _flat_spec(spec)))
        return out

    def map(self, calls: Sequence[Sequence[Any]], n_threads: Optional[int] = None) -> list:
        """Runs the function on each argument tuple in `calls`, in parallel over threads.

        All calls must share one signature. The first call traces if needed (eagerly, on
        this thread), then every call is replayed from C over `n_threads` threads
        (default: the function's, else ``metalearn.get_num_threads()``). Where a call
        would run eagerly (see the module: a recording tape, an input that requires grad,
        inside an outer trace) every call runs eagerly, in order, on this thread.

        Returns:
            A list with one output structure per call, in call order.
        """
        calls = [tuple(c) if isinstance(c, (list, tuple)) else (c,) for c in calls]
        if not calls:
            return []
        prepared = [self._split(c, {}) for c in calls]
        keys = {p[3] for p in prepared}
        if len(keys) != 1:
            raise ValueError(
                "Function.map: every call must have the same signature "
                "(tensor shapes and other argument values)"
            )
        key = prepared[0][3]
        if _core.must_run_eagerly([t for p in prepared for t in p[2]]):
            return [self._fn(*p[0]) for p in prepared]
        if key not in self._traces:
            self(*prepared[0][0])
        trace, spec = self._traces[key]
        threads = n_threads or self._n_threads or 0
        outs = _core.trace_replay_many(trace, [p[2] for p in prepared], threads)
        return [_unflatten(spec, o) for o in outs]


def function(fn: Optional[Callable] = None, *, n_threads: Optional[int] = None):
    """Traces `fn` into a C graph per input signature and replays it from C.

    Usable as ``@metalearn.function`` or ``metalearn.function(fn, n_threads=2)``. A traced
    call returns the same values as an eager one (the test suite checks it op for op).

    Args:
        fn: a function of tensors (and hashable Python values) returning tensors.
        n_threads: threads for :meth:`Function.map` (default ``get_num_threads()``).
    """
    if fn is None:
        return lambda f: Function(f, n_threads)
    return Function(fn, n_threads)
