"""Every function and method of metalearn._core carries a text signature, so
inspect.signature and IDEs see its parameters, and the signature is the truth: each callable
is called with its parameters passed the way the signature says (positional-or-keyword and
keyword-only ones by name, positional-only ones by position), and a positional-only
parameter passed by name is refused.

The callables are enumerated, not listed: a function or method added to the binding is
checked here without an edit, as long as its parameters have sample values below (the
failure names a parameter that has none)."""

import inspect

import numpy as np
import pytest

from metalearn import _core

from tests.helpers import F32


def t(*shape, requires_grad=False):
    """A tensor of distinct values in (0, 1) (valid for every loss and op sampled here)."""
    n = int(np.prod(shape)) if shape else 1
    data = (np.arange(1, n + 1, dtype=F32) / (n + 1)).reshape(shape)
    return _core.tensor(data, requires_grad=requires_grad)


def finished_trace():
    x = t(2, 3)
    tr = _core.trace_begin([x])
    _core.trace_end(tr, [_core.mul(x, x)])
    return tr


RECORDING = []  # traces a test began: stopped after it, whatever happened


def recording_trace():
    tr = _core.trace_begin([t(2, 3)])
    RECORDING.append(tr)
    return tr


@pytest.fixture(autouse=True)
def stop_recordings():
    yield
    while RECORDING:
        _core.trace_abort(RECORDING.pop())  # nothing to do for one that ended
    assert not _core.is_tracing()


def memory():
    return _core.KnowledgeMemory(capacity=4, key_size=3, payload_size=2, seed=0)


def filled_memory():
    m = memory()
    m.update(t(2, 3), [0, 1])
    return m


def saved_memory(path):
    m = memory()
    m.update(t(2, 3), [0, 1])
    m.save(str(path))
    return str(path)


def saved_weights(path):
    _core.save_tensors(str(path), ["a"], [t(2)])
    return str(path)


def graph():
    w = t(2, 2, requires_grad=True)
    return {"outputs": _core.reduce_sum(_core.mul(w, w)), "inputs": [w]}


# Sample values by parameter name (each a function of tmp_path: fresh objects per call) ...
BY_NAME = {
    "x": lambda p: t(2, 3),
    "a": lambda p: t(2, 2),
    "b": lambda p: t(2, 2),
    "data": lambda p: np.ones((2, 3), F32),
    "array": lambda p: np.ones((2, 3), F32),
    "shape": lambda p: (2, 3),
    "value": lambda p: 1.5,
    "exponent": lambda p: 2.0,
    "clip_value_min": lambda p: 0.25,
    "clip_value_max": lambda p: 0.75,
    "kernel": lambda p: t(3, 4),
    "values": lambda p: [t(2, 3), t(2, 3)],
    "axis": lambda p: 0,
    "start": lambda p: 0,
    "length": lambda p: 1,
    "size": lambda p: 4,
    "indices": lambda p: [1, 0],
    "ids": lambda p: [],
    "labels": lambda p: [0, 1],
    "depth": lambda p: 3,
    "y_true": lambda p: t(2, 3),
    "y_pred": lambda p: t(2, 3),
    "enabled": lambda p: True,
    "dst": lambda p: t(2, 3),
    "src": lambda p: np.zeros((2, 3), F32),
    "n": lambda p: 5,
    "path": lambda p: str(p / "file.bin"),
    "names": lambda p: ["a"],
    "tensors": lambda p: [t(2)],
    "seconds": lambda p: 0.0,
    "inputs": lambda p: [t(2, 3)],
    "outputs": lambda p: [t(2, 3)],
    "trace": lambda p: finished_trace(),
    "calls": lambda p: [[t(2, 3)], [t(2, 3)]],
    "params": lambda p: [t(2)],
    "grads": lambda p: [np.ones(2, F32)],
    "q": lambda p: t(2, 3),
    "capacity": lambda p: 4,
    "key_size": lambda p: 3,
    "learning_rate": lambda p: 0.1,
}

# ... and where one callable needs others (shapes that fit together, state set up first).
BY_CALLABLE = {
    "reshape": {"shape": lambda p: (3, 2)},
    "broadcast_to": {"shape": lambda p: (4, 2, 3)},
    "sum_to": {"shape": lambda p: (3,)},
    "gather": {"indices": lambda p: [1, 0, 1]},
    "sparse_categorical_crossentropy": {"y_true": lambda p: [0, 2]},
    "categorical_crossentropy": {"y_true": lambda p: np.eye(3, dtype=F32)[:2]},
    "grad": lambda p: graph(),
    "set_num_threads": {"n": lambda p: _core.get_num_threads()},
    "_set_tapes_recording": {"n": lambda p: 0},
    "seed": {"n": lambda p: 0},
    "rng_set_state": {"state": lambda p: _core.rng_state()},
    "Optimizer.restore": {
        "params": lambda p: [t(2, 3)],
        "iterations": lambda p: 0,
        "slots": lambda p: [[]],
    },
    "Optimizer.set_use_ema": {"use_ema": lambda p: True},
    "Optimizer.finalize_variable_values": {"params": lambda p: [t(2, 3)]},
    "load_tensors": {"path": lambda p: saved_weights(p / "w.bin")},
    "write_file": {"data": lambda p: b"metalearn"},
    "trace_end": {"trace": lambda p: recording_trace()},
    "trace_abort": {"trace": lambda p: recording_trace()},
    "conv2d": {"x": lambda p: t(1, 4, 4, 2), "kernel": lambda p: t(2, 2, 2, 3)},
    "conv2d_batched": {"x": lambda p: t(2, 1, 4, 4, 2), "kernel": lambda p: t(2, 2, 2, 2, 3)},
    "depthwise_conv2d": {"x": lambda p: t(1, 4, 4, 2), "kernel": lambda p: t(2, 2, 2, 3)},
    "max_pool2d": {"x": lambda p: t(1, 4, 4, 2)},
    "avg_pool2d": {"x": lambda p: t(1, 4, 4, 2)},
    "global_avg_pool2d": {"x": lambda p: t(1, 4, 4, 2)},
    "batch_norm": {"axis": lambda p: -1, "training": lambda p: True},
    "batch_norm_grouped": {"x": lambda p: t(2, 4, 3), "axis": lambda p: -1},
    "sinusoid_batch": lambda p: dict(
        bit_generator=np.random.PCG64(0),
        b=2,
        k=3,
        q=4,
        amp_lo=0.1,
        amp_hi=5.0,
        phase_lo=0.0,
        phase_hi=np.pi,
        x_lo=-5.0,
        x_hi=5.0,
    ),
    "episode_images": lambda p: dict(
        x=np.zeros((3, 4, 4, 3), np.uint8),
        rows=np.array([2, 0]),
        bit_generator=np.random.PCG64(0),
        pad=1,
        flip=True,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
    ),
    "Tensor.reshape": {"shape": lambda p: (3, 2)},
    "Tensor.transpose": {"perm": lambda p: (1, 0)},
    "KnowledgeMemory.load": {"path": lambda p: saved_memory(p / "m.bin")},
    "KnowledgeMemory.open": {
        "path": lambda p: saved_memory(p / "m.bin"),
        "mmap_mode": lambda p: "r",
    },
    "KnowledgeMemory.build_index": {"nlist": lambda p: 2},
}

# The object a method is called on.
SELF = {
    "Tensor": lambda: t(2, 3),
    "Optimizer": lambda: _core.SGD(),
    "KnowledgeMemory": memory,
    "Trace": finished_trace,
    "Tensor.item": lambda: t(),  # one element
    "KnowledgeMemory.build_index": filled_memory,  # an index needs keys
}


def trace_type():
    tr = _core.trace_begin([])
    _core.trace_abort(tr)
    return type(tr)


def is_builtin_method(obj):
    return type(obj).__name__ in ("method_descriptor", "classmethod_descriptor")


def callables():
    """(qualified name, how to get the callable) for every function of the module, every
    method of its types, and the types one constructs."""
    found = []
    types = {
        "Tensor": _core.Tensor,
        "Optimizer": _core.Optimizer,
        "KnowledgeMemory": _core.KnowledgeMemory,
        "Trace": trace_type(),
    }
    for name in sorted(dir(_core)):
        obj = getattr(_core, name)
        if name.startswith("__") or isinstance(obj, type) or not callable(obj):
            continue
        found.append((name, lambda obj=obj: obj))
    for tname, tp in types.items():
        if tp.__new__ is not object.__new__ or tp.__init__ is not object.__init__:
            if tname in ("Tensor", "KnowledgeMemory"):  # the constructible ones
                found.append((tname, lambda tp=tp: tp))
        for mname, raw in sorted(vars(tp).items()):
            if not is_builtin_method(raw):
                continue
            if type(raw).__name__ == "classmethod_descriptor":
                found.append((f"{tname}.{mname}", lambda tp=tp, mname=mname: getattr(tp, mname)))
            else:
                make = SELF.get(f"{tname}.{mname}", SELF[tname])
                found.append(
                    (f"{tname}.{mname}", lambda make=make, mname=mname: getattr(make(), mname))
                )
    return found


CALLABLES = callables()
IDS = [name for name, _ in CALLABLES]


def test_enumeration_sees_the_whole_binding():
    # not vacuous: the module's functions and the types' methods are all enumerated
    assert len(CALLABLES) > 100
    for name in (
        "matmul",
        "grad",
        "trace_replay",
        "conv2d",
        "KnowledgeMemory.query",
        "Tensor.sum",
        "Optimizer.step",
        "KnowledgeMemory.open",
        "Tensor",
    ):
        assert name in IDS


def sample_values(name, tmp_path):
    special = BY_CALLABLE.get(name)
    if callable(special):  # a whole argument set that must fit together
        return special(tmp_path)
    makers = dict(BY_NAME)
    makers.update(special or {})
    return {k: make for k, make in makers.items()}


def split_arguments(sig, values, tmp_path):
    """Positional-only parameters by position, the others by name; parameters without a
    sample value take their declared default (which is then checked to be accepted)."""
    args, kwargs = [], {}
    for p in sig.parameters.values():
        if p.name in values:
            v = values[p.name]
            v = v(tmp_path) if callable(v) and not isinstance(v, np.random.BitGenerator) else v
        elif p.default is not p.empty:
            v = p.default
        else:
            pytest.fail(
                f"no sample value for the parameter {p.name!r}: add one to BY_NAME or "
                f"BY_CALLABLE in {__file__}"
            )
        if p.kind is p.VAR_POSITIONAL:
            args.extend(v)
        elif p.kind is p.POSITIONAL_ONLY:
            args.append(v)
        else:
            kwargs[p.name] = v
    return args, kwargs


@pytest.mark.parametrize("name,get", CALLABLES, ids=IDS)
def test_has_a_text_signature(name, get):
    fn = get()
    assert fn.__text_signature__, f"{name} has no text signature in its docstring"
    inspect.signature(fn)  # parses


@pytest.mark.parametrize("name,get", CALLABLES, ids=IDS)
def test_takes_its_parameters_as_the_signature_says(name, get, tmp_path):
    fn = get()
    sig = inspect.signature(fn)
    args, kwargs = split_arguments(sig, sample_values(name, tmp_path), tmp_path)
    result = fn(*args, **kwargs)  # every name in the signature is a keyword it accepts
    if name == "trace_begin":
        RECORDING.append(result)


@pytest.mark.parametrize("name,get", CALLABLES, ids=IDS)
def test_positional_only_parameters_are_refused_by_name(name, get, tmp_path):
    fn = get()
    sig = inspect.signature(fn)
    positional_only = [p for p in sig.parameters.values() if p.kind is p.POSITIONAL_ONLY]
    if not positional_only:
        return
    args, kwargs = split_arguments(sig, sample_values(name, tmp_path), tmp_path)
    first = positional_only[0]
    kwargs[first.name] = args.pop(0)
    with pytest.raises(TypeError, match="keyword"):
        fn(*args, **kwargs)
