"""Numerical safety: find the NaN or inf before it spreads through a model.

metalearn, like NumPy and TensorFlow, lets NaN and inf flow through ops (they are values,
not errors). These tools stop a run at the first non-finite value and say where it is:

* ``check_numerics(tensor, message)`` — the tensor itself, or ``FloatingPointError`` naming
  `message` and how many NaN/inf values it holds (``tf.debugging.check_numerics``).
* ``enable_check_numerics()`` / ``disable_check_numerics()`` — every
  ``Model.fit``/``train_on_batch`` step checks the loss and every gradient *before* the
  optimizer applies them; on a non-finite value it raises ``NonFiniteError`` naming the
  weight and layer whose gradient went bad (or, when the loss itself is non-finite, the
  first layer whose output is), and the weights and optimizer state stay as they were
  before that step. (``tf.debugging.enable_check_numerics``.) The meta-learners
  (``MAML``, ``Reptile``, ``ProtoNet``, ``MetaLearner``) check their meta-loss and
  meta-gradients the same way before each meta-update, and ``adapt`` its adapted
  weights. The cost is one pass over the gradients per step; it is off by default.
* ``TerminateOnNaN`` — the Keras callback: stops ``fit`` (after the step) when the loss
  becomes NaN or inf.
"""

import math

import numpy as np

from metalearn import _core

__all__ = [
    "NonFiniteError",
    "check_numerics",
    "enable_check_numerics",
    "disable_check_numerics",
    "is_check_numerics_enabled",
    "TerminateOnNaN",
]

# Read by metalearn.keras.models.Model._make_train_step and its steps (one attribute test per step).
_numerics_checks = False


class NonFiniteError(FloatingPointError):
    """A tensor checked by ``check_numerics`` (or a training step under
    ``enable_check_numerics``) holds NaN or inf."""


def _counts(arr):
    """(number of NaN, number of +-inf) in a float array."""
    nan = int(np.count_nonzero(np.isnan(arr)))
    inf = int(np.count_nonzero(np.isinf(arr)))
    return nan, inf


def _as_float_array(tensor):
    if isinstance(tensor, _core.Tensor):
        return np.asarray(tensor)
    arr = np.asarray(tensor)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(
            f"check_numerics: expected a tensor or an array of numbers, got "
            f"{type(tensor).__name__}" + (f" of dtype {arr.dtype}" if hasattr(arr, "dtype") else "")
        )
    return arr


def _describe(nan, inf, shape):
    parts = []
    if nan:
        parts.append(f"{nan} NaN")
    if inf:
        parts.append(f"{inf} inf")
    return f"{' and '.join(parts)} value{'s' if nan + inf > 1 else ''} in a tensor of shape {tuple(shape)}"


def check_numerics(tensor, message):
    """Returns `tensor` unchanged when every value is finite; raises otherwise.

    Args:
        tensor: a metalearn Tensor or an array-like of numbers (integers are always finite).
        message: text naming what is checked (a layer, "loss", ...); it starts the error.

    Raises:
        NonFiniteError (a FloatingPointError): `tensor` holds NaN or inf; the message says
            ``"<message>: Tensor had 2 NaN values in a tensor of shape (3, 4)"``.
        TypeError: `tensor` is not numeric.
    """
    arr = _as_float_array(tensor)
    if np.issubdtype(arr.dtype, np.inexact) and arr.size:
        if not np.isfinite(arr).all():
            nan, inf = _counts(arr)
            raise NonFiniteError(f"{message}: Tensor had {_describe(nan, inf, arr.shape)}")
    return tensor


def enable_check_numerics():
    """Makes every ``Model.fit``/``train_on_batch`` step check its loss and gradients.

    A non-finite loss or gradient raises ``NonFiniteError`` before the optimizer step, so
    the weights and the optimizer's moments are those of the last good step. The message
    names the weight (``'dense_1/kernel'``) and its layer; when the loss is non-finite it
    also names the first layer (of a Sequential model) whose output is non-finite, or says
    that the inputs or targets already were.
    """
    global _numerics_checks
    _numerics_checks = True


def disable_check_numerics():
    """Turns off the checks of ``enable_check_numerics``."""
    global _numerics_checks
    _numerics_checks = False


def is_check_numerics_enabled():
    return _numerics_checks


def _layer_of(var):
    name = getattr(var, "name", None) or "?"
    return name.rsplit("/", 1)[0] if "/" in name else name, name


def _first_bad_layer(model, xb):
    """For a Sequential model: the first layer whose output is non-finite (a sentence), or
    None. Runs the layers once more without recording."""
    layers = getattr(model, "_layers_list", None)
    if not layers:
        return None
    prev = _core.set_grad_enabled(False)
    try:
        x = xb
        arr = np.asarray(x)
        if not np.isfinite(arr).all():
            nan, inf = _counts(arr)
            return f"the inputs already hold {_describe(nan, inf, arr.shape)}"
        for layer in layers:
            x = layer(x)
            out = np.asarray(x)
            if not np.isfinite(out).all():
                nan, inf = _counts(out)
                return (
                    f"layer {layer.name!r} ({type(layer).__name__}) is the first whose "
                    f"output is non-finite: {_describe(nan, inf, out.shape)}"
                )
    except Exception:  # a diagnostic only: never mask the real error with another
        return None
    finally:
        _core.set_grad_enabled(prev)
    return None


def _check_step(model, loss, grads, params, xb=None, yb=None):
    """Called by Model._eager_train_step between the gradient and the optimizer step when the
    checks are on. Raises NonFiniteError; changes nothing."""
    value = float(np.asarray(loss).reshape(-1)[0]) if np.asarray(loss).size == 1 else None
    if value is not None and not math.isfinite(value):
        where = None
        if (
            yb is not None
            and np.issubdtype(np.asarray(yb).dtype, np.inexact)
            and not np.isfinite(np.asarray(yb)).all()
        ):
            nan, inf = _counts(np.asarray(yb))
            where = f"the targets hold {_describe(nan, inf, np.asarray(yb).shape)}"
        if where is None and xb is not None:
            where = _first_bad_layer(model, xb)
        raise NonFiniteError(
            f"{model.name}: the loss is {value} at this training step"
            + (f"; {where}" if where else "")
            + " (the optimizer step was not applied)"
        )
    for g, v in zip(grads, params):
        if g is None:
            continue
        arr = np.asarray(g)
        if not np.isfinite(arr).all():
            layer, wname = _layer_of(v)
            nan, inf = _counts(arr)
            where = _first_bad_layer(model, xb) if xb is not None else None
            raise NonFiniteError(
                f"{model.name}: the gradient of weight {wname!r} (layer "
                f"{layer!r}) has {_describe(nan, inf, arr.shape)}; the loss is "
                f"{value}"
                + (f"; {where}" if where else "")
                + " (the optimizer step was not applied)"
            )


try:  # the Keras callback (exported by metalearn.keras.callbacks when wired there)
    from metalearn.keras.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover - metalearn.keras still importing
    _Callback = object


class TerminateOnNaN(_Callback):
    """Callback that stops training when a NaN or inf loss is seen (Keras'
    ``TerminateOnNaN``): the batch that produced it has been applied; ``fit`` returns
    after it, and prints which batch it was."""

    def __init__(self):
        if _Callback is not object:
            super().__init__()
        self.model = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"Batch {batch}: Invalid loss, terminating training")
            if self.model is not None:
                self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)
