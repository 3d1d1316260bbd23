"""Type aliases shared by the public API's annotations (PEP 484).

Only used in annotations (every annotated module has ``from __future__ import annotations``),
so importing this module costs nothing at run time beyond the import itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from metalearn._core import Tensor

__all__ = ["Array", "ArrayLike", "TensorLike", "Shape", "Config", "Logs", "LossLike"]

#: Anything the ops accept as data: a NumPy array, a Tensor, a Python scalar or a nested sequence.
ArrayLike = Union[np.ndarray, "Tensor", float, int, Sequence[Any]]
#: An array with a shape: a NumPy array or a Tensor (predictions, embeddings, batches).
Array = Union[np.ndarray, "Tensor"]
#: Something that is or converts to a Tensor.
TensorLike = ArrayLike
#: A shape: a tuple/list of dimensions, ``None`` for an unknown (batch) dimension.
Shape = Union[Tuple[Union[int, None], ...], List[Union[int, None]], Sequence[Union[int, None]]]
#: A serialisable configuration dictionary (``get_config`` / ``from_config``).
Config = Dict[str, Any]
#: The ``logs`` dictionary handed to callbacks.
Logs = Dict[str, Any]
#: A loss identifier: a name, a callable ``(y_true, y_pred) -> Tensor`` or ``None``.
LossLike = Union[str, Callable[..., Any], None]
