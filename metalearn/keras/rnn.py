"""Recurrent layers and masks, as Keras 3's: ``SimpleRNN``, ``GRU``, ``LSTM`` and
``Masking``.

Each layer unrolls its cell over the time axis with core ops (per step: the matrix products of
the input and the state, and the gates), so it is
differentiable to any order (MAML through an LSTM is second order), recorded by ``fit``'s
traced step and replayed from C, and reads its weights through ``functional_call``'s
substitution. The weights have Keras' layout and gate order (LSTM ``i, f, c, o``; GRU
``z, r, h``, its bias ``(2, 3 * units)`` when ``reset_after``), so ``.weights.h5`` files
interchange with Keras 3 (under ``layers/<name>/cell/vars``, where Keras keeps them).

Masks (Keras' convention: 1 for a step to use, 0 for one to skip) come from
``Masking(mask_value)`` or ``Embedding(mask_zero=True)``, are passed on by ``Sequential``
and functional models (``call_masked``) and taken by a recurrent layer's ``mask``
argument: a masked step keeps the previous state and output, as Keras.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Union

import numpy as np

from metalearn import _core
from metalearn._typing import Config

from . import activations, initializers, regularizers
from .layers import Layer

__all__ = ["SimpleRNN", "GRU", "LSTM", "Masking", "call_masked"]


def _as_tensor(x):
    if isinstance(x, _core.Tensor):
        return x
    return _core.as_tensor(np.ascontiguousarray(x, dtype=np.float32))


def _ser_init(init):
    return initializers.serialize(init) if isinstance(init, initializers.Initializer) else None


# Layers whose output keeps its input's time steps, so an incoming mask still applies to
# it (Keras 3 sets supports_masking on these): the mask passes through them unchanged.
def _passes_mask(layer):
    from .layers import Activation, Dense, Dropout, LayerNormalization

    return layer.supports_masking or isinstance(
        layer, (Dense, Activation, Dropout, LayerNormalization)
    )


_TAKES_MASK = {}


def _takes_mask(layer):
    cls = type(layer)
    known = _TAKES_MASK.get(cls)
    if known is None:
        try:
            known = "mask" in inspect.signature(cls.call).parameters
        except (TypeError, ValueError):
            known = False
        _TAKES_MASK[cls] = known
    return known


def call_masked(layer, x, mask, kwargs=None):
    """``layer(x)`` inside a model, with Keras 3's mask propagation: `mask` (or None) is
    given to a layer whose ``call`` takes ``mask``; returns ``(output, output mask)``, the
    output mask from the layer's ``compute_mask`` (Masking, Embedding, the recurrent
    layers), `mask` again for a layer that keeps the time steps, else None."""
    kwargs = kwargs or {}
    if mask is not None and "mask" not in kwargs and _takes_mask(layer):
        out = layer(x, mask=mask, **kwargs)
    else:
        out = layer(x, **kwargs)
    compute = getattr(layer, "compute_mask", None)
    if compute is not None:
        return out, compute(x, kwargs.get("mask", mask))
    if mask is not None and _passes_mask(layer):
        return out, mask
    return out, None


class Masking(Layer):
    """Masks the time steps of a sequence whose features all equal `mask_value`, as
    Keras 3's ``Masking``: the output is the input with those steps zeroed, and its mask
    (``compute_mask``) tells the layers after it (a recurrent layer) to skip them.

    Args:
        mask_value: the value of a padded step's features (default 0.0).

    Input shape:
        ``(batch, timesteps, features)`` (any rank of 2 or more: the last axis is the
        features').
    """

    _traceable = True

    def __init__(self, mask_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float, np.number)):
            raise TypeError(f"Masking: mask_value must be a number, got {mask_value!r}")
        self.mask_value = float(mask_value)
        self.supports_masking = True
        self.built = True

    def _keep(self, x, keepdims):
        # 1 where a step has a feature != mask_value: step(|x - v|) is x != v (a zero
        # gradient), its max over the features Keras' any()
        diff = _core.abs(_core.add_scalar(x, -self.mask_value))
        return _core.reduce_max(_core.step(diff, 0.0), axis=-1, keepdims=keepdims)

    def _check(self, inputs):
        x = _as_tensor(inputs)
        if x.ndim < 2:
            raise ValueError(
                f"{self.name}: Masking needs inputs of rank 2 or more, got {tuple(x.shape)}"
            )
        return x

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """The mask of `inputs`: ``(batch, timesteps)``, 1.0 for a step to use."""
        return self._keep(self._check(inputs), False)

    def call(self, inputs: Any) -> Any:
        x = self._check(inputs)
        return _core.mul(x, self._keep(x, True))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(mask_value=self.mask_value)
        return config


class _RNN(Layer):
    """What the three recurrent layers share: arguments, checks, the time loop, masks and
    the outputs. A subclass says its number of gates, its bias shape and its step."""

    _traceable = True
    _gates = 1
    _has_recurrent_activation = True

    def __init__(
        self,
        units: int,
        activation: Union[str, Callable[..., Any], None] = "tanh",
        recurrent_activation: Union[str, Callable[..., Any], None] = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: Optional[int] = None,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        zero_output_for_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("implementation", None)  # Keras 2's argument, ignored by Keras 3 as well
        super().__init__(**kwargs)
        kind = type(self).__name__
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(
                f"Received an invalid value for argument `units`, expected a positive "
                f"integer, got {units!r}."
            )
        for what, v in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{kind}: {what} must be in [0, 1], got {v!r}")
        if any(c is not None for c in (kernel_constraint, recurrent_constraint, bias_constraint)):
            raise NotImplementedError(f"{kind}: constraints are not supported")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dropout, self.recurrent_dropout = float(dropout), float(recurrent_dropout)
        self.seed = seed
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self._kept_states = None  # stateful: the last call's final states (NumPy copies)
        self.unroll = bool(unroll)  # always unrolled: one set of ops per step
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.supports_masking = True
        self._input_dim = None

    # Keras keeps the weights in the layer's cell (``lstm/lstm_cell/kernel``); its
    # .weights.h5 files hold them under layers/<name>/cell/vars
    _keras_vars_under = "/cell"

    _state_count = 1
    # _joint (with recurrent dropout, when the input projection is per step): a step's two
    # products as one, [x_t, h] @ [kernel; recurrent_kernel] (fewer ops and one larger
    # GEMM); GRU cannot (its reset gate scales the recurrent product alone)
    _joint = False

    def _bias_shape(self):
        return (self._gates * self.units,)

    def _bias_initial(self, shape):
        return self.bias_initializer(shape)

    def build(self, input_shape: Any) -> None:
        if not isinstance(input_shape, tuple) or len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: {type(self).__name__} needs inputs of shape (batch, timesteps, "
                f"features), got {input_shape}"
            )
        self._input_dim = int(input_shape[-1])
        n = self._gates * self.units
        self.kernel = self.add_weight(
            "kernel",
            (self._input_dim, n),
            self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.recurrent_kernel = self.add_weight(
            "recurrent_kernel",
            (self.units, n),
            self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias", self._bias_shape(), self._bias_initial, regularizer=self.bias_regularizer
            )
        else:
            self.bias = None
        self.built = True

    # ---------------------------------------------------------------- checks
    def _check_inputs(self, inputs):
        x = _as_tensor(inputs)
        if x.ndim != 3:
            raise ValueError(
                f"{self.name}: {type(self).__name__} needs inputs of shape (batch, timesteps, "
                f"features) (rank 3), got shape {tuple(x.shape)}"
            )
        if x.shape[2] != self._input_dim:
            raise ValueError(
                f"{self.name}: expected inputs with {self._input_dim} features (last "
                f"dimension), got shape {tuple(x.shape)}"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{self.name}: the input has no time steps: {tuple(x.shape)}")
        return x

    def _check_mask(self, mask, batch, steps):
        if mask is None:
            return None
        if isinstance(mask, _core.Tensor):
            m = mask
        else:
            a = np.asarray(mask)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{self.name}: mask must be boolean or numeric, got {a.dtype}")
            m = _as_tensor(a != 0)
        if tuple(m.shape) != (batch, steps):
            raise ValueError(
                f"{self.name}: mask must have shape (batch, timesteps) = {(batch, steps)}, "
                f"got {tuple(m.shape)}"
            )
        return m

    def _check_states(self, initial_state, batch):
        if initial_state is None:
            return None
        states = (
            list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        )
        if len(states) != self._state_count:
            raise ValueError(
                f"{self.name}: initial_state must hold {self._state_count} tensor(s) of shape "
                f"(batch, {self.units}), got {len(states)}"
            )
        out = []
        for s in states:
            t = _as_tensor(s)
            if tuple(t.shape) != (batch, self.units):
                raise ValueError(
                    f"{self.name}: initial_state must have shape {(batch, self.units)}, got "
                    f"{tuple(t.shape)}"
                )
            out.append(t)
        return out

    def _is_traceable(self):
        # a stateful layer's states live in Python between calls: not recordable
        return not self.stateful and super()._is_traceable()

    def reset_state(self) -> None:
        """Forgets a stateful layer's kept states: the next call starts from zeros."""
        self._kept_states = None

    reset_states = reset_state  # Keras 2's name, still accepted by Keras 3

    # ------------------------------------------------------------------ call
    def _gate_kernels(self, joint, in_bias):
        """[(kernel, bias)] per gate for ``_gate_step``, or None (one product per step)."""
        return None

    def _dropout_mask(self, shape, rate):
        # Keras' backend.random.dropout of ones: kept with probability 1 - rate, scaled by
        # 1 / (1 - rate); core ops on the global generator, so a traced step draws anew
        keep = _core.step(_core.random_uniform(shape, 0.0, 1.0), rate)
        return _core.mul_scalar(keep, 1.0 / (1.0 - rate))

    def call(
        self,
        inputs: Any,
        mask: Any = None,
        initial_state: Any = None,
        training: Optional[bool] = None,
    ) -> Any:
        x = self._check_inputs(inputs)
        batch, steps, feat = x.shape
        m = self._check_mask(mask, batch, steps)
        kept = self._kept_states
        # states of another batch size (the build's run on zeros) are not continued
        if initial_state is None and self.stateful and kept and kept[0].shape[0] == batch:
            initial_state = kept
        states = self._check_states(initial_state, batch)
        u = self.units
        kernel, rec = self.kernel, self.recurrent_kernel
        # time-major, so a step's inputs are a block of rows
        xt = _core.reshape(_core.transpose(x, (1, 0, 2)), (steps * batch, feat))
        in_bias = self._input_bias()
        if m is not None:  # (T, B, 1) rows of 1 (use) / 0 (skip), and their complements
            mt = _core.reshape(_core.transpose(m, (1, 0)), (steps, batch, 1))
        order = range(steps - 1, -1, -1) if self.go_backwards else range(steps)
        prep = self._prepare(rec)
        # dropout (training only): masks of the inputs and of the recurrent state, one
        # (batch, features) draw each for the whole sequence, as Keras draws them once per
        # call. With recurrent_dropout on, Keras 3 runs a gated cell (LSTM, GRU) as its
        # implementation 1: one mask per gate, for the inputs as for the state
        n = self._gates if self._gates > 1 and self.recurrent_dropout > 0.0 else 1
        dm = rm = None
        if training and 0.0 < self.dropout < 1.0:
            dm = [self._dropout_mask((batch, feat), self.dropout) for _ in range(n)]
        if training and 0.0 < self.recurrent_dropout < 1.0:
            rm = [self._dropout_mask((batch, u), self.recurrent_dropout) for _ in range(n)]
        # per-gate masks: each gate's products apart (training with recurrent_dropout only)
        cuts = self._gate_cuts(kernel, rec, in_bias) if n > 1 and (dm or rm) else None
        # without recurrent dropout (then n == 1), every step's input projection is one
        # GEMM over all steps (as cuDNN and PyTorch): a step narrows its rows and adds
        # h @ recurrent_kernel. ml_grad sums the narrows' gradients as one concat, so the
        # kernel's gradient is one GEMM too (the second-order MAML step 11% faster,
        # benchmarks/lstm.py)
        proj = joint = gates = None
        if rm is None:
            xin = xt
            if dm is not None:
                xin = _core.mul(_core.reshape(xt, (steps, batch, feat)), dm[0])
                xin = _core.reshape(xin, (steps * batch, feat))
            proj = _core.linear(xin, kernel, in_bias)
        elif cuts is None and self._joint:
            joint = _core.concat([kernel, rec], 0)
            # the joint kernel cut into its gates once per call, so a step computes each
            # gate by its own product
            gates = self._gate_kernels(joint, in_bias)
        outputs = []
        for t in order:
            if proj is not None:
                new = self._step(_core.narrow(proj, 0, t * batch, batch), states, prep)
            elif cuts is not None:
                xs = _core.narrow(xt, 0, t * batch, batch)
                if states is None:  # a zero state before the first step
                    states = [_core.zeros((batch, u)) for _ in range(self._state_count)]
                xg = [xs] * n if dm is None else [_core.mul(xs, d) for d in dm]
                hg = [states[0]] * n if rm is None else [_core.mul(states[0], r) for r in rm]
                new = self._dropped_step(xg, hg, states, cuts)
            else:
                xs = _core.narrow(xt, 0, t * batch, batch)
                if dm is not None:
                    xs = _core.mul(xs, dm[0])
                if joint is not None and states is not None:
                    xh = _core.concat([xs, _core.mul(states[0], rm[0])], 1)
                    if gates is not None:
                        new = self._gate_step([_core.linear(xh, w, b) for w, b in gates], states)
                    else:
                        new = self._step(_core.linear(xh, joint, in_bias), states, None)
                else:
                    z = _core.linear(xs, kernel, in_bias)
                    new = self._step(z, states, prep)
            if m is not None:
                keep = _core.reshape(_core.narrow(mt, 0, t, 1), (batch, 1))
                if states is None:  # a zero state before the first step
                    states = [_core.zeros((batch, u)) for _ in range(self._state_count)]
                new = [self._select(keep, n, s) for n, s in zip(new, states)]
                out = new[0]
                if self.zero_output_for_mask:
                    out = _core.mul(out, keep)
            else:
                out = new[0]
            states = new
            if self.return_sequences:
                outputs.append(out)
        if self.stateful:  # kept as values: the next call starts from them
            self._kept_states = [np.array(t.numpy(), np.float32) for t in states]
        if self.return_sequences:
            seq = _core.concat(outputs, 0) if len(outputs) > 1 else outputs[0]
            output = _core.transpose(_core.reshape(seq, (steps, batch, u)), (1, 0, 2))
        else:
            output = states[0] if not self.zero_output_for_mask or m is None else out
        if self.return_state:
            return [output] + list(states)
        return output

    def _gate_cuts(self, kernel, rec, in_bias):
        """Each gate's columns of the kernel, the recurrent kernel and the input bias."""
        u = self.units

        def cut(w, axis):
            return [_core.narrow(w, axis, k * u, u) for k in range(self._gates)]

        return cut(kernel, 1), cut(rec, 1), None if in_bias is None else cut(in_bias, 0)

    def _dropped_step(self, xs, hs, states, cuts):
        """A step of a gated cell with a mask per gate (Keras' implementation 1): `xs` and
        `hs` hold each gate's masked input and state."""
        raise NotImplementedError

    @staticmethod
    def _select(keep, new, old):
        # keep * new + (1 - keep) * old: exactly new or old for a 0/1 keep
        return _core.add(_core.mul(keep, new), _core.sub(old, _core.mul(keep, old)))

    def _input_bias(self):
        return self.bias

    def _prepare(self, rec):
        return rec

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """The output's mask: the input's when ``return_sequences`` (reversed steps kept
        as they come out with ``go_backwards``, as Keras), else None."""
        if not self.return_sequences or mask is None:
            return [None] * (1 + self._state_count) if self.return_state else None
        out = mask
        if self.return_state:
            return [out] + [None] * self._state_count
        return out

    def compute_output_shape(self, input_shape: Any) -> Any:
        b, t = input_shape[0], input_shape[1]
        out = (b, t, self.units) if self.return_sequences else (b, self.units)
        if self.return_state:
            return [out] + [(b, self.units)] * self._state_count
        return out

    def get_config(self) -> Config:
        config = super().get_config()
        config.update(
            return_sequences=self.return_sequences,
            return_state=self.return_state,
            go_backwards=self.go_backwards,
            stateful=self.stateful,
            unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask,
            units=self.units,
            activation=activations.serialize(self.activation),
        )
        if self._has_recurrent_activation:
            config["recurrent_activation"] = activations.serialize(self.recurrent_activation)
        config.update(
            use_bias=self.use_bias,
            kernel_initializer=_ser_init(self.kernel_initializer),
            recurrent_initializer=_ser_init(self.recurrent_initializer),
            bias_initializer=_ser_init(self.bias_initializer),
        )
        config.update(self._extra_config())
        config.update(
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            recurrent_regularizer=regularizers.serialize(self.recurrent_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            kernel_constraint=None,
            recurrent_constraint=None,
            bias_constraint=None,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout,
            seed=self.seed,
        )
        return config

    def _extra_config(self):
        return {}


class SimpleRNN(_RNN):
    """Fully-connected RNN where the output is fed back as the new input, as Keras 3's:
    ``h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)``.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: default ``"tanh"``.
        use_bias: whether the layer has a bias vector.
        kernel_initializer, recurrent_initializer, bias_initializer: defaults
            ``"glorot_uniform"``, ``"orthogonal"``, ``"zeros"``.
        kernel_regularizer, recurrent_regularizer, bias_regularizer, activity_regularizer:
            regularizers (their penalties join ``losses``).
        dropout: fraction of the inputs dropped in training (one mask per call, shared
            by the steps and the gates, as Keras when recurrent_dropout is 0).
        recurrent_dropout: fraction of the state dropped before its product in training,
            one (batch, units) mask per call reused at every step, as Keras 3; LSTM and
            GRU then draw one mask per gate for the inputs and one per gate for the state
            (Keras' implementation 1), SimpleRNN one of each.
        seed: kept in the config; the masks come from the global generator
            (``metalearn.random.set_seed``) by core ops, so a traced step (``fit``, MAML)
            draws new masks on every replay, as the eager step.
        return_sequences: return every step's output ``(batch, timesteps, units)``
            rather than the last ``(batch, units)``.
        return_state: also return the last state(s): ``[output, *states]``.
        go_backwards: process the sequence backwards (the sequence output is in
            processing order, as Keras).
        stateful: each call starts from the previous call's final states instead of
            zeros, until ``reset_state()`` (a call of another batch size starts from
            zeros); such a layer runs eagerly (its states live between calls): its
            training steps are not traced.
        unroll: accepted, always true here (every step is its own ops).
        zero_output_for_mask: a masked step's sequence output is zeros instead of the
            previous output.

    Call arguments:
        inputs: ``(batch, timesteps, features)``.
        mask: ``(batch, timesteps)``, true (1) for a step to use; a masked step keeps the
            previous state and output.
        initial_state: the first state(s), ``(batch, units)`` each.
    """

    _traceable = True
    _gates = 1
    _has_recurrent_activation = False
    _joint = True

    def __init__(
        self,
        units: int,
        activation: Union[str, Callable[..., Any], None] = "tanh",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units,
            activation=activation,
            recurrent_activation=None,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            **kwargs,
        )

    def _step(self, z, states, rec):
        if states is not None and rec is not None:
            z = _core.add(z, _core.matmul(states[0], rec))
        return [self.activation(z)]


class LSTM(_RNN):
    """Long Short-Term Memory layer (Hochreiter 1997), as Keras 3's.

    ``[i, f, c~, o] = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias`` (the gates in
    that order along the last axis of the weights, as Keras), ``i, f, o`` through
    `recurrent_activation`, ``c~`` through `activation`; ``c_t = f * c_{t-1} + i * c~``,
    ``h_t = o * activation(c_t)``. The state is ``[h, c]``.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: default ``"tanh"``; recurrent_activation: default ``"sigmoid"``.
        unit_forget_bias: add 1 to the forget gate's initial bias (default True), as
            Keras (Jozefowicz et al. 2015).
        others: as ``SimpleRNN``.

    Call arguments:
        inputs, mask: as ``SimpleRNN``; initial_state: ``[h, c]``.
    """

    _traceable = True
    _gates = 4
    _state_count = 2
    _joint = True

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_initial(self, shape):
        b = self.bias_initializer(shape)
        if not self.unit_forget_bias:
            return b
        a = np.array(b.numpy() if isinstance(b, _core.Tensor) else b, np.float32)
        u = self.units  # Keras: [init(u), ones(u), init(2u)]; init called on the whole
        a[u : 2 * u] = 1.0
        return _core.tensor(a)

    def _gate_kernels(self, joint, in_bias):
        u = self.units
        return [
            (
                _core.narrow(joint, 1, k * u, u),
                None if in_bias is None else _core.narrow(in_bias, 0, k * u, u),
            )
            for k in range(4)
        ]

    def _gate_step(self, zs, states):
        """A step from the four gates' pre-activations (i, f, c, o), each (batch, u)."""
        sig = self.recurrent_activation
        i, f, o = sig(zs[0]), sig(zs[1]), sig(zs[3])
        g = self.activation(zs[2])
        c = _core.add(_core.mul(f, states[1]), _core.mul(i, g))
        return [_core.mul(o, self.activation(c)), c]

    def _step(self, z, states, rec):
        u = self.units
        if states is not None and rec is not None:
            z = _core.add(z, _core.matmul(states[0], rec))
        # each gate its own narrow of z: their gradients tile z, so ml_grad joins them by one
        # concat (a sigmoid over z and narrows of it gave zero-padded copies, summed)
        sig = self.recurrent_activation
        i, f, o = (sig(_core.narrow(z, 1, k * u, u)) for k in (0, 1, 3))
        g = self.activation(_core.narrow(z, 1, 2 * u, u))
        if states is None:  # c_{-1} = 0
            c = _core.mul(i, g)
        else:
            c = _core.add(_core.mul(f, states[1]), _core.mul(i, g))
        h = _core.mul(o, self.activation(c))
        return [h, c]

    def _dropped_step(self, xs, hs, states, cuts):
        ks, rs, bs = cuts
        z = [
            _core.add(
                _core.linear(xs[k], ks[k], None if bs is None else bs[k]),
                _core.matmul(hs[k], rs[k]),
            )
            for k in range(4)
        ]
        sig, act = self.recurrent_activation, self.activation
        c = _core.add(_core.mul(sig(z[1]), states[1]), _core.mul(sig(z[0]), act(z[2])))
        return [_core.mul(sig(z[3]), act(c)), c]

    def _extra_config(self):
        return {"unit_forget_bias": self.unit_forget_bias}


class GRU(_RNN):
    """Gated Recurrent Unit (Cho et al. 2014), as Keras 3's.

    Gates ``z, r, h`` in that order along the weights' last axis. With ``reset_after``
    (default True, cuDNN's form) the bias is ``(2, 3 * units)`` (input bias, recurrent
    bias) and ``hh = activation(x_h + r * (h_{t-1} @ U_h + b_rh))``; otherwise the bias is
    ``(3 * units,)`` and ``hh = activation(x_h + (r * h_{t-1}) @ U_h)``. Then
    ``h_t = z * h_{t-1} + (1 - z) * hh``.

    Args:
        units: positive integer, dimensionality of the output space.
        reset_after: where the reset gate applies (see above).
        others: as ``SimpleRNN``; recurrent_activation: default ``"sigmoid"``.
    """

    _traceable = True
    _gates = 3

    def __init__(self, units: int, reset_after: bool = True, **kwargs: Any) -> None:
        super().__init__(units, **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self):
        n = 3 * self.units
        return (2, n) if self.reset_after else (n,)

    def _input_bias(self):
        if self.bias is None or not self.reset_after:
            return self.bias
        return _core.reshape(_core.narrow(self.bias, 0, 0, 1), (3 * self.units,))

    def _prepare(self, rec):
        u = self.units
        if self.reset_after:
            rb = None
            if self.bias is not None:
                rb = _core.reshape(_core.narrow(self.bias, 0, 1, 1), (3 * u,))
            return rec, rb
        return _core.narrow(rec, 1, 0, 2 * u), _core.narrow(rec, 1, 2 * u, u)

    def _step(self, z, states, prep):
        u = self.units
        act, ract = self.activation, self.recurrent_activation
        h_prev = None if states is None else states[0]
        if self.reset_after:
            rec, rb = prep
            if h_prev is not None:
                inner = _core.linear(h_prev, rec, rb)
            elif rb is not None:  # h = 0: the recurrent part is its bias alone
                inner = rb
            else:
                inner = None
            zr_in = _core.narrow(z, 1, 0, 2 * u)
            if inner is not None:
                zr_in = _core.add(zr_in, _core.narrow(inner, inner.ndim - 1, 0, 2 * u))
            zr = ract(zr_in)
            zg, r = _core.narrow(zr, 1, 0, u), _core.narrow(zr, 1, u, u)
            xh = _core.narrow(z, 1, 2 * u, u)
            if inner is not None:
                xh = _core.add(xh, _core.mul(r, _core.narrow(inner, inner.ndim - 1, 2 * u, u)))
        else:
            rzr, rh = prep
            zr_in = _core.narrow(z, 1, 0, 2 * u)
            if h_prev is not None:
                zr_in = _core.add(zr_in, _core.matmul(h_prev, rzr))
            zr = ract(zr_in)
            zg, r = _core.narrow(zr, 1, 0, u), _core.narrow(zr, 1, u, u)
            xh = _core.narrow(z, 1, 2 * u, u)
            if h_prev is not None:
                xh = _core.add(xh, _core.matmul(_core.mul(r, h_prev), rh))
        hh = act(xh)
        if h_prev is None:  # z * 0 + (1 - z) * hh
            return [_core.sub(hh, _core.mul(zg, hh))]
        # z * h + (1 - z) * hh, as Keras writes it
        return [_core.add(_core.mul(zg, h_prev), _core.sub(hh, _core.mul(zg, hh)))]

    def _dropped_step(self, xs, hs, states, cuts):
        ks, rs, bs = cuts
        u, h_prev = self.units, states[0]
        rb = None  # the recurrent bias (reset_after), cut by gate
        if self.reset_after and self.bias is not None:
            rb = [_core.reshape(_core.narrow(self.bias, 0, 1, 1), (3 * u,))]
            rb = [_core.narrow(rb[0], 0, k * u, u) for k in range(3)]
        x = [_core.linear(xs[k], ks[k], None if bs is None else bs[k]) for k in range(3)]
        rz, rr = (_core.linear(hs[k], rs[k], None if rb is None else rb[k]) for k in (0, 1))
        zg = self.recurrent_activation(_core.add(x[0], rz))
        r = self.recurrent_activation(_core.add(x[1], rr))
        if self.reset_after:
            rh = _core.mul(r, _core.linear(hs[2], rs[2], None if rb is None else rb[2]))
        else:
            rh = _core.matmul(_core.mul(r, hs[2]), rs[2])
        hh = self.activation(_core.add(x[2], rh))
        # z * h + (1 - z) * hh with the unmasked state, as Keras
        return [_core.add(_core.mul(zg, h_prev), _core.sub(hh, _core.mul(zg, hh)))]

    def _extra_config(self):
        return {"reset_after": self.reset_after}
