"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from metalearn._typing import Array, ArrayLike
import numpy as np

from metalearn import _core
from metalearn.keras.models import Model
from metalearn.tasks.base import Task

from ._base import (
    BaseMetaLearner,
    _core_no_grad,
    accuracy,
    check_count,
    check_support,
    clone_model,
    to_tensor,
)

__all__ = ["ProtoNet", "PrototypeClassifier", "prototype_logits"]


def prototype_logits(
    support_emb: ArrayLike,
    support_y: ArrayLike,
    query_emb: ArrayLike,
    n_way: int,
    distance: str = "euclidean",
) -> _core.Tensor:
    """Logits of queries against class prototypes (a differentiable core-op graph).

    ``prototype_c = mean of the support embeddings of class c``;
    euclidean: ``logit = -||q - prototype_c||^2``; cosine: ``logit = cos(q, prototype_c)``.

    Args:
        support_emb: ``(n_support, d)`` Tensor; support_y: ``(n_support,)`` int labels
            ``0..n_way-1``; query_emb: ``(n_query, d)``.

    Returns:
        ``(n_query, n_way)`` Tensor.
    """
    y = np.asarray(support_y).astype(np.int64)
    counts = np.bincount(y, minlength=n_way).astype(np.float32)
    if (counts == 0).any():
        raise ValueError(f"ProtoNet: class {int(np.argmin(counts))} has no support example")
    # averaging matrix (n_way, n_support): prototypes = A @ support_emb
    avg = np.zeros((n_way, len(y)), np.float32)
    avg[y, np.arange(len(y))] = 1.0 / counts[y]
    protos = _core.matmul(_core.as_tensor(avg), support_emb)  # (n_way, d)
    if distance == "euclidean":
        # -||q - p||^2 = 2 q.p - |q|^2 - |p|^2
        qp = _core.matmul(query_emb, protos, transpose_b=True)  # (q, n_way)
        qq = _core.reduce_sum(_core.square(query_emb), axis=1, keepdims=True)  # (q, 1)
        pp = _core.reshape(_core.reduce_sum(_core.square(protos), axis=1), (1, n_way))
        return 2.0 * qp - qq - pp
    if distance == "cosine":
        eps = 1e-8
        qn = query_emb / _core.sqrt(
            _core.reduce_sum(_core.square(query_emb), axis=1, keepdims=True) + eps
        )
        pn = protos / _core.sqrt(
            _core.reduce_sum(_core.square(protos), axis=1, keepdims=True) + eps
        )
        return _core.matmul(qn, pn, transpose_b=True)
    raise ValueError(f"ProtoNet: distance must be 'euclidean' or 'cosine', got {distance!r}")


def _flat(emb):
    if emb.ndim == 2:
        return emb
    return _core.reshape(emb, (int(emb.shape[0]), int(np.prod(emb.shape[1:]))))


class PrototypeClassifier(Model):
    """A classifier made by ``ProtoNet.adapt``: an encoder (a copy) and fixed prototypes.

    ``call(x)`` returns logits ``(batch, n_way)`` against the stored prototypes.
    """

    def __init__(
        self,
        encoder: Any,
        prototypes: ArrayLike,
        distance: str = "euclidean",
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        self.encoder = encoder
        self.prototypes = np.ascontiguousarray(prototypes, dtype=np.float32)
        self.distance = distance
        self.n_way = int(self.prototypes.shape[0])

    def get_config(self) -> Dict[str, Any]:
        """``name``, the encoder (``layers.serialize``), the prototypes (a nested list) and
        the distance: JSON-able, so the classifier round-trips through
        ``layers.serialize``/``deserialize`` like every layer metalearn ships. The weights
        travel apart (``get_weights``/``save_weights``)."""
        from metalearn.keras import layers as _layers

        return {
            "name": self.name,
            "encoder": _layers.serialize(self.encoder),
            "prototypes": self.prototypes.tolist(),
            "distance": self.distance,
        }

    @classmethod
    def from_config(
        cls, config: Dict[str, Any], custom_objects: Optional[Dict[str, Any]] = None
    ) -> "PrototypeClassifier":
        """A new classifier (unbuilt encoder) from ``get_config``'s dict; your own encoder
        classes go in `custom_objects`."""
        from metalearn.keras import layers as _layers

        config = dict(config)
        encoder = config.pop("encoder")
        if isinstance(encoder, dict):
            encoder = _layers.deserialize(encoder, custom_objects)
        return cls(encoder, **config)

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        """Logits of `inputs` against the stored prototypes.

        Args:
            inputs: ``(batch, ...)`` inputs of the encoder.

        Returns:
            Tensor ``(batch, n_way)``: negative squared euclidean distances (or cosine
            similarities) to the prototypes.
        """
        emb = _flat(self.encoder(inputs))
        y = np.arange(self.n_way)
        return prototype_logits(_core.as_tensor(self.prototypes), y, emb, self.n_way, self.distance)


class ProtoNet(BaseMetaLearner):
    """Prototypical Networks (Snell, Swersky & Zemel 2017).

    An encoder ``f`` maps inputs to embeddings. In each episode the prototype of class c
    is the mean embedding of its support examples, ``p_c = mean_{(x,y) in S, y=c} f(x)``,
    and a query is classified by a softmax over negative squared euclidean distances:

        p(y = c | x) = softmax_c( -||f(x) - p_c||^2 )

    Training minimises the query cross-entropy over episodes with the meta-optimizer
    (paper: Adam 1e-3, halved every 2000 episodes; 60-way training episodes for
    Omniglot). Adaptation needs no gradient steps: ``adapt`` computes the prototypes.

    Args:
        encoder: a Keras model mapping ``(batch, ...)`` to ``(batch, d)`` embeddings (or
            any shape, flattened), e.g. ``metalearn.meta.models.conv4()``.
        distance: ``"euclidean"`` (squared, the paper's) or ``"cosine"``.
        meta_optimizer, meta_lr: the optimizer of the encoder's weights.
    """

    def __init__(
        self,
        encoder: Any,
        distance: str = "euclidean",
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
    ) -> None:
        if distance not in ("euclidean", "cosine"):
            raise ValueError(
                f"ProtoNet: distance must be 'euclidean' or 'cosine', got {distance!r}"
            )
        super().__init__(
            encoder,
            loss="sparse_categorical_crossentropy",
            meta_optimizer=meta_optimizer,
            meta_lr=meta_lr,
        )
        self.encoder = encoder
        self.distance = distance
        self.inner_steps = 0

    def _outputs_probabilities(self):
        return False  # the loss reads prototype logits, whatever the encoder ends in

    def _prepare(self, task):
        super()._prepare(task)
        self.classification = True

    def episode_logits(
        self, support_x: Array, support_y: ArrayLike, query_x: Array, training: bool = True
    ) -> _core.Tensor:
        """Query logits ``(n_query, n_way)`` for one episode (differentiable w.r.t. the
        encoder's weights). Support and query go through the encoder in one batch."""
        n_s = len(support_x)
        n_way = int(np.max(support_y)) + 1
        x = np.concatenate([np.asarray(support_x, np.float32), np.asarray(query_x, np.float32)])
        emb = _flat(self.encoder(to_tensor(x), training=training))
        s_emb = _core.narrow(emb, 0, 0, n_s)
        q_emb = _core.narrow(emb, 0, n_s, int(emb.shape[0]) - n_s)
        return prototype_logits(s_emb, support_y, q_emb, n_way, self.distance)

    def episode_loss(
        self, support_x: Array, support_y: ArrayLike, query_x: Array, query_y: ArrayLike
    ) -> Tuple[_core.Tensor, _core.Tensor]:
        """Mean query cross-entropy of one episode (a scalar Tensor) and its logits."""
        logits = self.episode_logits(support_x, support_y, query_x)
        loss = _core.reduce_mean(
            _core.sparse_categorical_crossentropy(np.asarray(query_y), logits, from_logits=True)
        )
        return loss, logits

    def _meta_params(self):
        """What the meta-optimizer trains: the encoder (a metric head adds its own)."""
        return list(self.encoder.trainable_weights)

    def _meta_step(self, batch):
        n = len(batch.support_x)
        total, metrics = None, []
        for i in range(n):
            loss, logits = self.episode_loss(
                batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
            )
            total = loss if total is None else total + loss
            metrics.append(accuracy(logits, batch.query_y[i]))
        total = total * (1.0 / n)
        params = self._meta_params()
        grads = _core.grad(total, params)
        self._check_meta_step(total, grads, params)
        self._apply_meta_gradients(grads, params)
        return float(total.item()), float(np.mean(metrics))

    def adapt(
        self, support_x: Array, support_y: ArrayLike, steps: Optional[int] = None
    ) -> PrototypeClassifier:
        """A ``PrototypeClassifier`` (a copy of the encoder plus this task's prototypes);
        `steps` is ignored (prototypes need no gradient steps). The encoder is unchanged."""
        if steps is not None:
            check_count(steps, "steps", "ProtoNet.adapt")
        check_support(support_x, support_y, "ProtoNet.adapt")
        self._prepare(Task(support_x, support_y, support_x, support_y))
        y = np.asarray(support_y).astype(np.int64)
        n_way = int(y.max()) + 1
        with _core_no_grad():
            emb = np.asarray(_flat(self.encoder(to_tensor(support_x), training=False)))
        protos = np.stack([emb[y == c].mean(0) for c in range(n_way)])
        return PrototypeClassifier(clone_model(self.encoder), protos, self.distance)

    def _adaptation_curve(self, support_x, support_y, step_list):
        for s in step_list:
            yield s, (support_x, support_y)

    def _query_output(self, fast, query_x, support_x=None):
        support_x, support_y = fast
        return self.episode_logits(support_x, support_y, query_x, training=False)

    def _adapted_weights(self, support_x, support_y, steps):
        return self.encoder.trainable_weights
