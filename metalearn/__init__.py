"""metalearn: meta-learning with a C core and a Keras face.

Tensors, autograd of any order and every op live in the C extension ``metalearn._core``;
this package re-exports them directly (no Python wrapper sits between a call and C), and
adds the Keras-style layers and models (``metalearn.keras``), ``GradientTape`` and
``Variable``, the source article's two networks (``metalearn.networks``) and seeding
(``metalearn.random``).

    >>> import metalearn as ml
    >>> x = ml.tensor([3.0], requires_grad=True)
    >>> f = 2 * x * x + 1
    >>> (df,) = ml.grad(f, x, create_graph=True)   # 4x = 12
    >>> (d2f,) = ml.grad(df, x)                    # 4
"""

import sys as _sys
import types as _types

from . import _core
from ._core import (  # noqa: F401  (the public core API)
    Tensor,
    abs,
    avg_pool2d,
    batch_norm,
    batch_norm_grouped,
    conv2d,
    conv2d_batched,
    depthwise_conv2d,
    global_avg_pool2d,
    max_pool2d,
    add,
    add_scalar,
    as_tensor,
    binary_crossentropy,
    broadcast_to,
    categorical_crossentropy,
    clip,
    concat,
    div,
    elu,
    erf,
    exp,
    full,
    gather,
    gelu,
    grad,
    is_grad_enabled,
    leaky_relu,
    linear,
    log,
    log_softmax,
    matmul,
    maximum,
    mean_squared_error,
    minimum,
    mul,
    mul_scalar,
    narrow,
    neg,
    one_hot,
    ones,
    pad_axis,
    pick,
    pow,
    reduce_max,
    reduce_mean,
    reduce_sum,
    relu,
    reshape,
    scatter_add,
    sigmoid,
    sign,
    softmax,
    softplus,
    sparse_categorical_crossentropy,
    sqrt,
    square,
    step,
    sub,
    sum_to,
    tanh,
    tensor,
    transpose,
    zeros,
)

# NumPy / TensorFlow spellings of the same ops
divide = div
multiply = mul
subtract = sub
negative = neg
clip_by_value = clip


def set_grad_enabled(enabled):
    """Turns grad mode on or off for this thread; returns the previous mode."""
    return _core.set_grad_enabled(bool(enabled))


from ._core import get_num_threads, set_num_threads  # noqa: E402,F401
from .function import Function, function  # noqa: E402,F401
from .tape import GradientTape, Variable, enable_grad, no_grad  # noqa: E402,F401
from . import keras, networks, random  # noqa: E402
from . import datasets, meta, tasks  # noqa: E402,F401
from .memory import KnowledgeMemory, MemoryClassifier  # noqa: E402,F401
from .meta.system import MetaLearner  # noqa: E402,F401
from .functional import functional_call  # noqa: E402

__version__ = "0.1.0"

# what `from metalearn import *` gives; dir() and tab completion list it too (below)
__all__ = [
    "Tensor",
    "abs",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_grouped",
    "conv2d",
    "conv2d_batched",
    "depthwise_conv2d",
    "global_avg_pool2d",
    "max_pool2d",
    "add",
    "add_scalar",
    "as_tensor",
    "binary_crossentropy",
    "broadcast_to",
    "categorical_crossentropy",
    "clip",
    "concat",
    "div",
    "elu",
    "erf",
    "exp",
    "full",
    "gather",
    "gelu",
    "grad",
    "is_grad_enabled",
    "leaky_relu",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "maximum",
    "mean_squared_error",
    "minimum",
    "mul",
    "mul_scalar",
    "narrow",
    "neg",
    "one_hot",
    "ones",
    "pad_axis",
    "pick",
    "pow",
    "reduce_max",
    "reduce_mean",
    "reduce_sum",
    "relu",
    "reshape",
    "scatter_add",
    "sigmoid",
    "sign",
    "softmax",
    "softplus",
    "sparse_categorical_crossentropy",
    "sqrt",
    "square",
    "step",
    "sub",
    "sum_to",
    "tanh",
    "tensor",
    "transpose",
    "zeros",
    "divide",
    "multiply",
    "subtract",
    "negative",
    "clip_by_value",
    "set_grad_enabled",
    "get_num_threads",
    "set_num_threads",
    "function",
    "Function",
    "GradientTape",
    "Variable",
    "enable_grad",
    "no_grad",
    "random",
    "debugging",
    "keras",
    "networks",
    "datasets",
    "tasks",
    "meta",
    "KnowledgeMemory",
    "MemoryClassifier",
    "MetaLearner",
    "functional_call",
]


def _public_dir(module):
    """A module's ``__dir__`` (PEP 562): its ``__all__``, its submodules and its dunders, so
    that dir() and tab completion (``layers.<TAB>``) offer the API, not the typing names
    (``Any``, ``Callable``) and modules (``np``, ``math``) it imports for itself."""

    def __dir__():
        own = vars(module)
        subs = [
            n
            for n, v in own.items()
            if isinstance(v, _types.ModuleType) and v.__name__ == f"{module.__name__}.{n}"
        ]
        dunders = [n for n in own if n.startswith("__") and n.endswith("__")]
        return sorted({*own["__all__"], *subs, *dunders})

    return __dir__


# every public module of the package is imported above; each gets that __dir__ here, in one
# place (tests/system/test_public_api.py checks every module, so a new one cannot be missed)
for _name, _module in list(_sys.modules.items()):
    if (
        (_name == __name__ or _name.startswith(__name__ + "."))
        and not any(part.startswith("_") for part in _name.split(".")[1:])
        and "__all__" in vars(_module)
    ):
        _module.__dir__ = _public_dir(_module)
del _name, _module
