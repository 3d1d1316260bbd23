"""Optimizers, as ``keras.optimizers``: thin wrappers over the C core's SGD and Adam.

One ``apply_gradients`` is one C call that updates every parameter (shapes are checked
first; on an error nothing changes). The C optimizer keeps its slots for a fixed list of
variables, so the wrapper keeps one C optimizer per distinct variable list it is given
(almost always exactly one), while ``iterations`` counts every ``apply_gradients`` call as
Keras does.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple

from metalearn._typing import Config
import warnings

import numpy as np

from metalearn import _core
from metalearn.tape import no_grad as _no_grad
from metalearn.tape import GradientTape

from . import backend as _backend
from . import constraints as _constraints

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "get",
    "serialize",
    "deserialize",
]


class _Iterations(int):
    """An int that also answers ``.numpy()`` (Keras returns a variable here)."""

    def numpy(self):
        return np.int64(self)


def _to_grad(g):
    if isinstance(g, _core.Tensor):
        return g
    return _core.tensor(g)  # refuses complex/object dtypes with a TypeError


class Optimizer:
    """Base class of the optimizers.

    Args:
        learning_rate: a float (settable later: ``opt.learning_rate = 1e-4``).
        clipnorm: clip each gradient to this L2 norm.
        clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]``.
        global_clipnorm: clip all gradients together to this global L2 norm. At most one of
            the three may be set (ValueError otherwise, as Keras).
        weight_decay: None (default) or a float: Keras 3's decoupled weight decay, every
            variable decaying ``w = w - w * weight_decay * learning_rate`` before each update
            (in the same C call).
        name: the optimizer's name; by default the class name in snake case made unique
            as Keras 3 names objects (``"adam"``, ``"adam_1"``, ``"sgd"``, ...; the counters
            are the layers' and ``clear_session`` resets them).
    """

    def __init__(
        self,
        learning_rate: float,
        name: Optional[str] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        weight_decay: Optional[float] = None,
    ) -> None:
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}"
            )
        for what, c in (
            ("clipnorm", clipnorm),
            ("clipvalue", clipvalue),
            ("global_clipnorm", global_clipnorm),
        ):
            if c is not None and (
                isinstance(c, bool)
                or not isinstance(c, (int, float, np.number))
                or not np.isfinite(c)
                or c < 0
            ):
                raise ValueError(
                    f"`{what}` must be a finite non-negative number. Received: {what}={c!r}"
                )
        learning_rate = self._check_lr(learning_rate)
        weight_decay = None if weight_decay is None else _check_weight_decay(weight_decay)
        if name is None:  # named last: a refused optimizer takes no name
            name = _backend.unique_name(_backend.snake_case(type(self).__name__))
        self.name = name
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        self.weight_decay = weight_decay
        self._learning_rate = learning_rate
        self._cores = {}  # tuple of variable ids -> (C optimizer, variables kept alive)
        self._iterations = 0

    @staticmethod
    def _check_lr(value):
        if callable(value):
            raise TypeError(
                "learning-rate schedules are not supported; set "
                "optimizer.learning_rate between steps instead"
            )
        value = float(value)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"learning_rate must be a finite non-negative number, got {value}")
        return value

    def _make_core(self):
        raise NotImplementedError

    @property
    def learning_rate(self) -> float:
        """The learning rate (a float; setting it applies to the next step, keeps the state).

        Raises:
            ValueError: on setting a negative or non-finite value.
        """
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        value = self._check_lr(value)
        for opt, _ in self._cores.values():
            opt.learning_rate = value
        self._learning_rate = value

    lr = learning_rate

    @property
    def iterations(self) -> int:
        """Number of ``apply_gradients`` calls made (an int with ``.numpy()``)."""
        return _Iterations(self._iterations)

    def _core_for(self, variables):
        key = tuple(map(id, variables))
        entry = self._cores.get(key)
        if entry is None:
            core = self._make_core()
            if self.weight_decay:
                core.weight_decay = self.weight_decay
            entry = (core, list(variables))
            self._cores[key] = entry
        return entry[0]

    # ------------------------------------------------------------ traced form
    def _traced_update(self):
        """The update as core ops, for a training step that ``metalearn.function`` records
        once and replays from C: a function ``update(variables, grads)`` to call while
        recording (one C optimizer step, which the trace holds). None when the update
        cannot be recorded: gradient clipping measures norms in NumPy, outside any trace.
        Asking changes nothing; after each replay the caller counts the step with
        ``_count_step``."""
        if (
            self.clipvalue is not None
            or self.clipnorm is not None
            or self.global_clipnorm is not None
        ):
            return None
        return self._core_step

    def _core_step(self, variables, grads):
        self._core_for(variables).step(variables, grads)
        _constraints._apply(variables)  # Keras 3: after the update (recorded with it)

    def _count_step(self):
        """One more step in ``iterations`` (a replayed trace updates the variables from C;
        the count lives here, in Python)."""
        self._iterations += 1

    def _clip(self, grads):
        if self.clipvalue is not None:
            c = float(self.clipvalue)
            grads = [_core.clip(g, -c, c) for g in grads]
        if self.clipnorm is not None:
            out = []
            for g in grads:
                norm = float(np.sqrt(np.sum(np.square(np.asarray(g, np.float64)))))
                out.append(_core.mul(g, float(self.clipnorm) / norm) if norm > self.clipnorm else g)
            grads = out
        if self.global_clipnorm is not None:
            norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in grads)))
            if norm > self.global_clipnorm:
                scale = float(self.global_clipnorm) / norm
                grads = [_core.mul(g, scale) for g in grads]
        return grads

    def _apply(self, variables, grads):
        """Fast path: every gradient present, lists aligned."""
        if (
            self.clipvalue is not None
            or self.clipnorm is not None
            or self.global_clipnorm is not None
        ):
            with _no_grad():
                grads = self._clip(grads)
        self._core_for(variables).step(variables, grads)
        self._iterations += 1  # _count_step's count, without a call on the eager step
        _constraints._apply(variables)  # Keras 3: the variables' constraints, after the update

    def apply_gradients(
        self,
        grads_and_vars: Iterable[Tuple[Any, Any]],
        name: Optional[str] = None,
        skip_gradients_aggregation: bool = False,
    ) -> int:
        """Applies gradients to variables: one optimizer step.

        Args:
            grads_and_vars: iterable of ``(gradient, variable)`` pairs. A None gradient is
                skipped with a warning, as Keras does.

        Returns:
            The new ``iterations`` value.

        Raises:
            ValueError: every gradient is None ("No gradients provided for any variable."),
                or a gradient's shape differs from its variable's; nothing changes.
        """
        pairs = list(grads_and_vars)
        grads, variables, missing = [], [], []
        for g, v in pairs:
            if not isinstance(v, _core.Tensor):
                raise TypeError(f"apply_gradients: expected variables, got {type(v).__name__}")
            if g is None:
                missing.append(getattr(v, "name", repr(v)))
                continue
            grads.append(_to_grad(g))
            variables.append(v)
        if not variables:
            if pairs:  # Keras 3 refuses a step that would update nothing
                raise ValueError("No gradients provided for any variable.")
            raise ValueError("apply_gradients: no (gradient, variable) pairs were given")
        if missing:
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss. "
                "If you're using `model.compile()`, did you forget to provide a `loss` "
                "argument?",
                UserWarning,
                stacklevel=2,
            )
        for g, v in zip(grads, variables):
            if tuple(g.shape) != tuple(v.shape):
                raise ValueError(
                    f"apply_gradients: gradient of shape {tuple(g.shape)} for variable "
                    f"{getattr(v, 'name', '?')!r} of shape {tuple(v.shape)}"
                )
        self._apply(variables, grads)
        return self.iterations

    def apply(self, grads: Sequence[Any], trainable_variables: Optional[Sequence[Any]] = None):
        """Keras 3's ``apply(grads, trainable_variables)``: ``apply_gradients`` over the
        two aligned lists (what a Keras 3 custom ``train_step`` calls).

        Raises:
            ValueError: no variables, or lists of different lengths; nothing changes.
        """
        if trainable_variables is None:
            raise ValueError(
                "apply: pass the variables, apply(grads, trainable_variables) "
                "(metalearn's optimizers are not built on a fixed variable list)"
            )
        grads, trainable_variables = list(grads), list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"apply: {len(grads)} gradients for {len(trainable_variables)} variables"
            )
        return self.apply_gradients(zip(grads, trainable_variables))

    def minimize(
        self, loss: Any, var_list: Sequence[Any], tape: Optional[GradientTape] = None
    ) -> int:
        """Minimizes `loss` over `var_list`: computes gradients, then applies them.

        Args:
            loss: a scalar Tensor (its graph is already recorded), or a zero-argument
                callable returning one.
            var_list: list of Variables, or a callable returning it.
            tape: the GradientTape that recorded a tensor `loss` (optional in metalearn).
        """
        if callable(var_list):
            var_list = var_list()
        var_list = list(var_list)
        if callable(loss):
            with GradientTape() as t:
                value = loss()
            grads = t.gradient(value, var_list)
        elif tape is not None:
            grads = tape.gradient(loss, var_list)
        else:
            live = [v for v in var_list if v.requires_grad]
            gl = _core.grad(loss, live, allow_unused=True) if live else []
            it = iter(gl)
            grads = [next(it) if v.requires_grad else None for v in var_list]
        return self.apply_gradients(zip(grads, var_list))

    def variables(self) -> List[Any]:
        """The state tensors (copies) of the C optimizers, per variable list."""
        out = []
        for opt, _ in self._cores.values():
            for slots in opt.slots():
                out.extend(slots)
        return out

    def reset(self) -> None:
        """Forgets all state (moments, iterations)."""
        for opt, _ in self._cores.values():
            opt.reset()
        self._cores.clear()
        self._iterations = 0

    def get_config(self) -> Config:
        """The optimizer's hyper-parameters as a dict (``name``, ``learning_rate`` …)."""
        return {
            "name": self.name,
            "learning_rate": self._learning_rate,
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
            "weight_decay": self.weight_decay,
        }

    @classmethod
    def from_config(cls, config: Config) -> Optimizer:
        """A new optimizer (fresh state) from the dict that ``get_config`` returned."""
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} learning_rate={self._learning_rate} iterations={self._iterations}>"


class SGD(Optimizer):
    """Gradient descent with momentum (and Nesterov momentum).

    With ``momentum == 0``: ``w = w - learning_rate * g``. Otherwise::

        velocity = momentum * velocity - learning_rate * g
        w = w + velocity                                      # plain
        w = w + momentum * velocity - learning_rate * g       # nesterov

    Args:
        learning_rate: a float, default 0.01.
        momentum: float >= 0, default 0.0.
        nesterov: whether to use Nesterov momentum.
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.SGD(
            learning_rate=self._learning_rate, momentum=self.momentum, nesterov=self.nesterov
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), computed as Keras does::

        t = iterations + 1
        lr_t = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g^2 - v)
        w = w - lr_t * m / (sqrt(v) + epsilon)

    With ``amsgrad`` the max of past ``v`` is used (Reddi et al. 2018). On x86 the update
    runs with denormals flushed to zero, as TensorFlow's CPU kernels do: ``m`` of a unit
    whose gradient stopped reaches 0 instead of decaying through the denormal range,
    where the division is several times slower.

    Args:
        learning_rate: default 0.001.
        beta_1: decay of the first-moment estimate, default 0.9.
        beta_2: decay of the second-moment estimate, default 0.999.
        epsilon: default 1e-7.
        amsgrad: whether to use AMSGrad.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad = bool(amsgrad)
        for n, b in (("beta_1", self.beta_1), ("beta_2", self.beta_2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Adam: {n} must be in [0, 1), got {b}")
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.Adam(
            learning_rate=self._learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            amsgrad=self.amsgrad,
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, amsgrad=self.amsgrad
        )
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as Keras 3's AdamW.

    Before each Adam step every variable decays: ``w = w - w * weight_decay *
    learning_rate`` (Keras 3 decays all variables, biases included), then the Adam
    update of ``Adam`` runs on the decayed ``w``; both in one C call (traced by ``fit``).

    Args:
        learning_rate: default 0.001.
        weight_decay: default 0.004 (Keras 3's).
        beta_1, beta_2, epsilon, amsgrad: as ``Adam``.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if weight_decay is None:  # Keras 3's message
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            name,
            weight_decay=weight_decay,
            **kwargs,
        )


def _check_weight_decay(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"weight_decay must be a float, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"weight_decay must be a finite non-negative number, got {value}")
    return value


class RMSprop(Optimizer):
    """RMSprop, computed as Keras 3 does::

        velocity = rho * velocity + (1 - rho) * g^2
        average_grad = rho * average_grad + (1 - rho) * g          # centered only
        denominator = velocity - average_grad^2 + epsilon          # centered
                    = velocity + epsilon                           # otherwise
        increment = learning_rate * g / sqrt(denominator)
        momentum_v = momentum * momentum_v + increment; w = w - momentum_v   # momentum > 0
        w = w - increment                                                    # otherwise

    Args:
        learning_rate: default 0.001.
        rho: discounting factor of the gradients' moving average, default 0.9.
        momentum: default 0.0.
        epsilon: default 1e-7.
        centered: normalise by the gradients' estimated variance (default False).
        weight_decay: as every optimizer's (see ``Optimizer``).

    One C call updates every parameter (a refused step changes nothing), recorded in
    ``fit``'s traced step as Adam's is.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        for what, v in (("rho", rho), ("momentum", momentum), ("epsilon", epsilon)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise ValueError(f"RMSprop: {what} must be a float, got {v!r}")
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"RMSprop: {what} must be finite and >= 0, got {v}")
        if not 0.0 <= float(rho) <= 1.0:
            raise ValueError(f"RMSprop: rho must be in [0, 1], got {rho}")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)
        super().__init__(learning_rate, name, **kwargs)

    def _make_core(self):
        return _core.RMSprop(
            learning_rate=self._learning_rate,
            rho=self.rho,
            momentum=self.momentum,
            epsilon=self.epsilon,
            centered=self.centered,
        )

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            rho=self.rho,
            momentum=self.momentum,
            epsilon=self.epsilon,
            centered=self.centered,
        )
        return config


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier: Any) -> Optional[Optimizer]:
    """An optimizer from a name (``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"``), config dict or instance; None
    gives None, as Keras 3.

    Raises:
        ValueError: an unknown name or config, or anything else (Keras 3's type).
    """
    if identifier is None:
        return None
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"Unknown optimizer: {identifier!r}; metalearn has {sorted(_BY_NAME)}")
        return cls()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(str(identifier.get("class_name", "")).lower())
        if cls is None:
            raise ValueError(f"Unknown optimizer config: {identifier!r}")
        return cls.from_config(identifier.get("config", {}))
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


def serialize(optimizer: Optimizer) -> Config:
    """An optimizer as ``{"class_name": ..., "config": optimizer.get_config()}``."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


deserialize = get
