"""The source article's two networks, made real.

``AdaptiveNeuralNetwork`` is the learner that meta-learning adapts to new tasks in a few
gradient steps; ``MetaLearningNetwork`` looks at a task (its features and, when given, its
labels) and predicts one number about it, e.g. the learner's loss or accuracy on the task
after adaptation, so tasks can be ranked or adaptation steps chosen.
"""

from typing import Any, Optional

import numpy as np

from metalearn import _core
from metalearn.keras import layers as _layers
from metalearn.keras import batched as _batched
from metalearn.keras.models import Model

__all__ = ["MetaLearningNetwork", "AdaptiveNeuralNetwork"]


class MetaLearningNetwork(Model):
    """Predicts a scalar about a task from its inputs and, optionally, its labels.

    ``Flatten → [concat labels] → Dense(hidden_units, relu) → Dense(1, linear)``.

    When `labels` are given they are joined to the flattened features, so the prediction
    depends on them: integer class labels are one-hot encoded (`num_classes` columns),
    float labels (e.g. already one-hot, or regression targets) are flattened per sample
    and appended as they are. The first call fixes whether labels are part of the input
    (and how many columns they add: the first Dense's kernel is built for it); later
    calls must agree, or a ValueError says what was expected.

    Args:
        hidden_units: width of the hidden layer (128).
        num_classes: number of classes for one-hot encoding integer labels (None: labels
            must be floats).
        output_units: width of the output (1).
        name: the model's name.

    Call arguments:
        inputs: ``(batch, ...)`` features (images are flattened).
        labels: None, integer class ids ``(batch,)``, or floats ``(batch, ...)``.

    Input shape:
        ``(batch, d1, ..., dn)``; labels ``(batch,)`` or ``(batch, k)``.

    Output shape:
        ``(batch, output_units)``.
    """

    def __init__(
        self,
        hidden_units: int = 128,
        num_classes: Optional[int] = None,
        output_units: int = 1,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.hidden_units = int(hidden_units)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.output_units = int(output_units)
        self.flatten = _layers.Flatten()
        self.dense1 = _layers.Dense(self.hidden_units, activation="relu")
        self.dense2 = _layers.Dense(self.output_units, activation="linear")
        self._label_columns = None  # fixed by the first call: 0 without labels

    def _encode_labels(self, labels, batch):
        if isinstance(labels, _core.Tensor):
            if tuple(labels.shape[:1]) != (batch,):
                raise ValueError(
                    f"{self.name}: labels have shape {tuple(labels.shape)}, expected "
                    f"{batch} samples"
                )
            if labels.ndim == 1 and self.num_classes is not None:
                labels = np.asarray(labels)  # class ids, one-hot encoded below
            elif labels.ndim == 2:
                return labels
            else:
                return _core.reshape(labels, (batch, int(labels.size) // batch))
        arr = np.asarray(labels)
        if arr.shape[:1] != (batch,):
            raise ValueError(
                f"{self.name}: labels have shape {arr.shape}, expected {batch} samples"
            )
        if arr.ndim == 1 and self.num_classes is not None:
            if np.issubdtype(arr.dtype, np.floating):
                if not np.all(arr == np.round(arr)):
                    raise ValueError(f"{self.name}: labels are not class ids (num_classes is set)")
            ids = arr.astype(np.int64)
            return _core.one_hot(ids, self.num_classes)
        if np.issubdtype(arr.dtype, np.integer) and arr.ndim == 1:
            raise ValueError(
                f"{self.name}: integer labels need num_classes to be one-hot encoded; "
                "pass num_classes=... or float labels"
            )
        return np.ascontiguousarray(arr.reshape(batch, -1), dtype=np.float32)

    def call(self, inputs: Any, labels: Any = None) -> _core.Tensor:
        """Predicts one row of `output_units` numbers per sample (or per task).

        Args:
            inputs: features ``(batch, ...)``, flattened to ``(batch, d)``.
            labels: None, integer class ids ``(batch,)`` (one-hot encoded; needs
                `num_classes`) or floats ``(batch, ...)`` (flattened and appended).

        Returns:
            Tensor ``(batch, output_units)``.

        Raises:
            ValueError: labels with another batch size than `inputs`, integer labels without
                `num_classes`, or labels given (or not) unlike the first call.
        """
        x = self.flatten(inputs)
        batch = x.shape[0]
        if labels is not None:
            y = self._encode_labels(labels, batch)
            columns = int(y.shape[1])
            if not isinstance(x, _core.Tensor):
                x = (
                    _core.tensor(np.ascontiguousarray(x, dtype=np.float32))
                    if x.dtype != np.float32
                    else _core.as_tensor(np.ascontiguousarray(x))
                )
            if not isinstance(y, _core.Tensor):
                y = _core.as_tensor(y)
            x = _core.concat([x, y], axis=1)
        else:
            columns = 0
        if self._label_columns is None:
            self._label_columns = columns
        elif columns != self._label_columns:
            if self._label_columns == 0:
                raise ValueError(
                    f"{self.name} was built without labels; call it without labels "
                    f"(got {columns} label columns)"
                )
            raise ValueError(
                f"{self.name} was built with {self._label_columns} label columns; got "
                f"{'no labels' if columns == 0 else columns}"
            )
        return self.dense2(self.dense1(x))

    def get_config(self):
        """The constructor arguments (``hidden_units``, ``num_classes``, ``output_units``, ``name``)."""
        config = super().get_config()
        config.update(
            hidden_units=self.hidden_units,
            num_classes=self.num_classes,
            output_units=self.output_units,
        )
        return config


class AdaptiveNeuralNetwork(Model):
    """The few-shot learner: ``Flatten → Dense(hidden_units, relu) → Dense(num_classes, softmax)``.

    Meta-trained (MAML, Reptile, …) so that a few gradient steps on a new task's support
    set adapt it; ``functional_call(model, fast_weights, x)`` runs it with adapted weights.

    Args:
        num_classes: number of output classes (10).
        hidden_units: width of the hidden layer (128).
        output_activation: ``"softmax"`` (probabilities, as the article) or ``"linear"``
            (logits, for ``from_logits=True`` losses).
        name: the model's name.

    Input shape:
        ``(batch, d1, ..., dn)``, e.g. ``(batch, 28, 28)`` images.

    Output shape:
        ``(batch, num_classes)``.
    """

    _traceable = True

    def __init__(
        self,
        num_classes: int = 10,
        hidden_units: int = 128,
        output_activation: str = "softmax",
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.hidden_units = int(hidden_units)
        self.output_activation = output_activation
        self.flatten = _layers.Flatten()
        self.dense1 = _layers.Dense(self.hidden_units, activation="relu")
        self.dense2 = _layers.Dense(self.num_classes, activation=output_activation)

    def call(self, inputs: Any) -> _core.Tensor:
        """Class scores for a batch.

        Args:
            inputs: ``(batch, d1, ..., dn)``, flattened to ``(batch, d1*...*dn)``.

        Returns:
            Tensor ``(batch, num_classes)``: probabilities with ``"softmax"``, logits with
            ``"linear"``.
        """
        return self.dense2(self.dense1(self.flatten(inputs)))

    def _batched_form(self, index):
        """Its three layers' batched forms in a chain, so that MAML and its kin run a
        meta-batch of these networks vectorised and traced, as a Sequential's (None for a
        subclass whose ``call`` is its own)."""
        if type(self).call is not AdaptiveNeuralNetwork.call:
            return None
        forms = [layer._batched_form(index) for layer in (self.flatten, self.dense1, self.dense2)]
        if any(f is None for f in forms):
            return None
        return _batched.Chain(forms)

    def get_config(self):
        """The constructor arguments (``num_classes``, ``hidden_units``, ``output_activation``, ``name``)."""
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            hidden_units=self.hidden_units,
            output_activation=self.output_activation,
        )
        return config
