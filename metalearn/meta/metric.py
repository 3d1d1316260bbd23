"""Metric heads on a learned encoder: Matching Networks (Vinyals et al., NeurIPS 2016),
R2D2, ridge regression in closed form (Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019),
MetaOptNet, a multi-class SVM in its dual (Lee, Maji, Ravichandran & Soatto, CVPR 2019),
and Relation Networks, a learned comparison (Sung et al., CVPR 2018).

Both are episode learners with ProtoNet's interface (``fit``/``adapt``/``evaluate``): the
head is a differentiable function of the support embeddings, so meta-training is plain
gradient descent on the query cross-entropy and adaptation needs no gradient steps.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import math

import numpy as np

from metalearn import _core
from metalearn._typing import Array, ArrayLike
from metalearn.keras.models import Model
from metalearn.tasks.base import Task

from ._base import (
    BaseMetaLearner,
    _core_no_grad,
    check_count,
    check_flag,
    check_rate,
    check_real,
    check_support,
    clone_model,
    to_tensor,
)
from .protonet import ProtoNet, _flat

__all__ = [
    "MatchingNet",
    "MetaOptNet",
    "R2D2",
    "RelationNet",
    "relation_scores",
    "RelationClassifier",
    "matching_logits",
    "ridge_logits",
    "spd_solve",
    "svm_dual",
    "svm_logits",
    "MatchingClassifier",
    "LinearHeadClassifier",
]


def _int_labels(labels, who, name="support_y"):
    """``labels`` as int64; ValueError when they are not whole numbers (a cast would
    silently move 0.5 to class 0)."""
    a = np.asarray(labels)
    if a.dtype.kind not in "biu":
        if a.dtype.kind != "f" or not np.array_equal(a, np.round(a)):
            raise ValueError(f"{who}: {name} must hold integer labels, got dtype {a.dtype}")
    return a.astype(np.int64)


def _labels(support_y, n_way, who):
    y = _int_labels(support_y, who)
    if y.ndim != 1:
        raise ValueError(f"{who}: support_y must be 1-D integer labels, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= n_way):
        raise ValueError(f"{who}: labels must lie in 0..{n_way - 1}, got {y.min()}..{y.max()}")
    counts = np.bincount(y, minlength=n_way)
    if (counts == 0).any():
        raise ValueError(f"{who}: class {int(np.argmin(counts))} has no support example")
    onehot = np.zeros((len(y), n_way), np.float32)
    onehot[np.arange(len(y)), y] = 1.0
    return onehot


def _unit_rows(e):
    # the same guard as ProtoNet's cosine: e / sqrt(|e|^2 + 1e-8)
    return e / _core.sqrt(_core.reduce_sum(_core.square(e), axis=1, keepdims=True) + 1e-8)


def matching_logits(
    support_emb: ArrayLike, support_y: ArrayLike, query_emb: ArrayLike, n_way: int
) -> _core.Tensor:
    """Matching Networks' prediction as logits (a differentiable core-op graph).

    ``a(q, x_i) = softmax_i cos(q, x_i)`` over the support set, ``P(y = c | q) = sum_i
    a(q, x_i) [y_i = c]`` (Vinyals et al. 2016, eqs. 1-2, without full-context
    embeddings); the logits are ``log P``, so a softmax of them gives ``P`` back and the
    cross-entropy from logits is the paper's negative log-likelihood. ``P`` never
    vanishes (cosines lie in [-1, 1]), so its log is finite.

    Returns:
        ``(n_query, n_way)`` Tensor.
    """
    onehot = _core.as_tensor(_labels(support_y, n_way, "MatchingNet"))
    cos = _core.matmul(_unit_rows(query_emb), _unit_rows(support_emb), transpose_b=True)
    att = _core.softmax(cos, axis=1)
    return _core.log(_core.matmul(att, onehot))


def spd_solve(a: Any, b: Any) -> _core.Tensor:
    """``A^-1 B`` for a symmetric positive-definite ``A (n, n)`` and ``B (n, m)``, by
    Gauss-Jordan elimination composed of core ops (n steps of a rank-one update), so it is
    differentiable to any order. No pivoting: elimination is stable for a positive-definite
    matrix. Exact after n steps, unlike a fixed number of conjugate-gradient iterations,
    whose vanishing residuals would divide by ~0 in float32. Meant for small n (a support
    set): O(n^2 (n + m)) work."""
    n = int(a.shape[0])
    m = int(b.shape[1])
    aug = _core.concat([a, b], axis=1)  # (n, n + m)
    eye = np.eye(n, dtype=np.float32)
    for k in range(n):
        row = _core.narrow(aug, 0, k, 1)  # (1, n + m)
        pivot = _core.narrow(row, 1, k, 1)  # (1, 1)
        row = row / pivot
        col = _core.narrow(aug, 1, k, 1) - _core.as_tensor(eye[:, k : k + 1])  # (n, 1)
        # rows i != k lose a_ik * row; row k becomes row / pivot
        aug = aug - _core.matmul(col, row)
    return _core.narrow(aug, 1, n, m)


def ridge_logits(
    support_emb: Any,
    support_y: ArrayLike,
    query_emb: Any,
    n_way: int,
    lam: Any,
    scale: Any,
    bias: bool = False,
) -> _core.Tensor:
    """R2D2's head: ridge regression of one-hot labels on the support embeddings, in
    closed form and in the Woodbury form ``W = X^T (X X^T + lam I)^-1 Y`` (an n x n system
    for n support examples, not d x d), then ``logits = scale * Q W``.

    With `bias`, X gets a column of ones (Bertinetto et al.'s code): the ones column adds
    ``1 1^T`` to the Gram matrix, its row of the solution ``1^T (X X^T + 1 1^T + lam I)^-1 Y``
    is a per-class bias b (penalised by lam like the weights), and ``logits = scale *
    (Q W + b)``.

    Args:
        lam, scale: scalar Tensors (or floats); lam > 0.
        bias: fit a per-class bias with the weights.

    Returns:
        ``(n_query, n_way)`` Tensor.
    """
    onehot = _core.as_tensor(_labels(support_y, n_way, "R2D2"))
    n = int(support_emb.shape[0])
    gram = _core.matmul(support_emb, support_emb, transpose_b=True)
    gram = gram + lam * _core.as_tensor(np.eye(n, dtype=np.float32))
    if bias:
        gram = gram + _core.as_tensor(np.ones((n, n), np.float32))
    coef = spd_solve(gram, onehot)  # (n, n_way)
    w = _core.matmul(support_emb, coef, transpose_a=True)  # (d, n_way)
    logits = _core.matmul(query_emb, w)
    if bias:
        logits = logits + _core.reduce_sum(coef, axis=0, keepdims=True)  # b = 1^T coef
    return scale * logits


def _project_simplex(v: Any, z: float = 1.0) -> _core.Tensor:
    """Each row of ``v (n, m)`` projected onto the simplex ``{p >= 0, sum p = z}``, as core
    ops (differentiable to any order): ``relu(v - tau)``, ``tau = (sum of the kept entries
    - z) / their number``. The kept set by Michelot's algorithm (1986): start from all
    entries, drop those at or below tau, recompute; tau only grows and the largest entry
    is never dropped, so after m - 1 passes the set is final. The set is piecewise
    constant in v (zero gradient), so it is found without the tape; the gradient is the
    projection's Jacobian, ``diag(s) - s s^T / |s|`` on the kept set s. Branch-free, no
    sort."""
    m = int(v.shape[1])
    with _core_no_grad():
        # the row's largest entries are always kept: in float32, rows of ~1e7 can round
        # tau above them, and an empty set would divide by zero
        top = 1.0 - _core.step(_core.reduce_max(v, axis=1, keepdims=True) - v)
        tau = (_core.reduce_sum(v, axis=1, keepdims=True) - z) * (1.0 / m)
        for _ in range(m - 1):
            kept = _core.maximum(_core.step(v - tau), top)
            count = _core.reduce_sum(kept, axis=1, keepdims=True)
            tau = (_core.reduce_sum(kept * v, axis=1, keepdims=True) - z) / count
        kept = _core.maximum(_core.step(v - tau), top)
        count = _core.reduce_sum(kept, axis=1, keepdims=True)
        weights = kept / count
        offset = z / count
    tau = _core.reduce_sum(weights * v, axis=1, keepdims=True) - offset
    return _core.relu(v - tau)


def svm_dual(gram: Any, onehot: ArrayLike, c: float, solver_steps: int) -> _core.Tensor:
    """The dual of the Crammer-Singer multi-class SVM (Lee et al. 2019, eq. 10's dual),
    by ``solver_steps`` steps of accelerated projected gradient ascent (FISTA, Beck &
    Teboulle 2009) from ``A = 0``, as core ops (differentiable to any order):

        max_A  -1/2 tr(A^T K A) + tr(A^T Y)   s.t.  sum_k A_ik = 0,  A_ik <= c Y_ik

    ``K = gram (n, n)`` the support embeddings' Gram matrix, ``Y = onehot (n, m)``. Each
    row's feasible set is ``c y_i - c * simplex``: the iterates are kept as
    ``U = Y - A / c`` (rows on the simplex), where a gradient step is the affine map
    ``U -> (I - s K) U - s (Y / c - K Y)`` and the projection is ``_project_simplex``.
    The step s is ``1 / ||K||_F`` (``||K||_F >= ||K||_2``, the gradient's Lipschitz
    constant), as ``1 / sqrt(||K||_F^2 + 1e-12)``: finite at K = 0. A fixed count: the
    error after it depends on the conditioning of K (``MetaOptNet``'s docstring has
    measurements).

    Returns:
        ``A (n, m)``; the SVM's class weights are ``X^T A``.
    """
    y_np = np.asarray(onehot, np.float32)
    g_shape = tuple(int(d) for d in gram.shape)
    if y_np.ndim != 2 or g_shape != (len(y_np), len(y_np)):
        raise ValueError(
            f"svm_dual: gram must be (n, n) and onehot (n, n_way), got {g_shape} and {y_np.shape}"
        )
    c = check_rate(c, "c", "svm_dual")
    if c <= 0:
        raise ValueError(f"svm_dual: c must be > 0, got {c}")
    solver_steps = check_count(solver_steps, "solver_steps", "svm_dual", minimum=1)
    y = _core.as_tensor(y_np)
    n = int(y_np.shape[0])
    # 1 / ||K||_F, at most 1e6: K = 0 (dead embeddings) keeps a finite step and gradient
    step = 1.0 / _core.sqrt(_core.reduce_sum(_core.square(gram)) + 1e-12)
    descent = _core.as_tensor(np.eye(n, dtype=np.float32)) - step * gram  # I - s K
    shift = step * (_core.as_tensor(y_np * (1.0 / c)) - _core.matmul(gram, y))
    u = z = y  # A = 0
    t = 1.0
    for _ in range(solver_steps):
        u_new = _project_simplex(_core.matmul(descent, z) - shift)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = u_new + ((t - 1.0) / t_new) * (u_new - u)
        u, t = u_new, t_new
    return c * (y - u)


def _gram(x, ridge):
    gram = _core.matmul(x, x, transpose_b=True)
    if ridge:
        gram = gram + _core.as_tensor(ridge * np.eye(int(x.shape[0]), dtype=np.float32))
    return gram


def svm_logits(
    support_emb: Any,
    support_y: ArrayLike,
    query_emb: Any,
    n_way: int,
    c: float,
    scale: Any,
    solver_steps: int,
    ridge: float = 0.0,
) -> _core.Tensor:
    """MetaOptNet's SVM head: the Crammer-Singer SVM's dual ``A`` on the support
    embeddings X (``svm_dual``, linear kernel ``K = X X^T + ridge I``), class weights
    ``W = X^T A``, then ``logits = scale * Q W = scale * (Q X^T) A``.

    Args:
        c: the SVM's penalty C (> 0; the paper's 0.1).
        scale: a scalar Tensor (or float).
        solver_steps: the dual solver's step count.
        ridge: added to the Gram matrix's diagonal (>= 0): 0 is the paper's dual; the
            authors' code adds 1.0 ("to avoid PSD error from the QP solver"), which also
            bounds the condition number the solver's convergence depends on.

    Returns:
        ``(n_query, n_way)`` Tensor.
    """
    s_shape = tuple(int(d) for d in support_emb.shape)
    q_shape = tuple(int(d) for d in query_emb.shape)
    if len(s_shape) != 2 or len(q_shape) != 2 or s_shape[1] != q_shape[1]:
        raise ValueError(
            "MetaOptNet: support and query embeddings must be (n, d) with the same d, got "
            f"{s_shape} and {q_shape}"
        )
    if np.ndim(support_y) != 1 or len(support_y) != s_shape[0]:
        raise ValueError(
            f"MetaOptNet: support_y must hold one label per support embedding ({s_shape[0]}), "
            f"got shape {np.shape(support_y)}"
        )
    c = check_rate(c, "c", "MetaOptNet")
    if c <= 0:
        raise ValueError(f"MetaOptNet: c must be > 0, got {c}")
    solver_steps = check_count(solver_steps, "solver_steps", "MetaOptNet", minimum=1)
    ridge = check_rate(ridge, "ridge", "MetaOptNet")
    onehot = _labels(support_y, n_way, "MetaOptNet")
    gram = _gram(support_emb, ridge)
    a = svm_dual(gram, onehot, c, solver_steps)
    return scale * _core.matmul(_core.matmul(query_emb, support_emb, transpose_b=True), a)


class _EncoderClassifier(Model):
    """A classifier holding a copy of the encoder, whose config nests the encoder's
    (``layers.serialize``) beside the classifier's own arrays."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from metalearn.keras import layers as _layers

        config = dict(config)
        encoder = config.pop("encoder")
        if isinstance(encoder, dict):
            encoder = _layers.deserialize(encoder, custom_objects)
        return cls(encoder, **config)


class MatchingClassifier(_EncoderClassifier):
    """A classifier made by ``MatchingNet.adapt``: an encoder (a copy) and the support
    set's embeddings and labels; ``call(x)`` returns Matching Networks' logits."""

    def __init__(
        self,
        encoder: Any,
        support_embeddings: ArrayLike,
        support_labels: ArrayLike,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        self.encoder = encoder
        self.support_embeddings = np.ascontiguousarray(support_embeddings, dtype=np.float32)
        self.support_labels = np.asarray(support_labels).astype(np.int64)
        self.n_way = int(self.support_labels.max()) + 1

    def get_config(self) -> Dict[str, Any]:
        from metalearn.keras import layers as _layers

        return {
            "name": self.name,
            "encoder": _layers.serialize(self.encoder),
            "support_embeddings": self.support_embeddings.tolist(),
            "support_labels": self.support_labels.tolist(),
        }

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        emb = _flat(self.encoder(inputs))
        return matching_logits(
            _core.as_tensor(self.support_embeddings), self.support_labels, emb, self.n_way
        )


class LinearHeadClassifier(_EncoderClassifier):
    """A classifier made by ``R2D2.adapt``: an encoder (a copy) and the task's fitted
    linear head; ``call(x)`` returns ``scale * (f(x) @ weights + bias)``."""

    def __init__(
        self,
        encoder: Any,
        weights: ArrayLike,
        scale: float = 1.0,
        name: Optional[str] = None,
        bias: Optional[ArrayLike] = None,
    ) -> None:
        super().__init__(name=name)
        self.encoder = encoder
        self.head = np.ascontiguousarray(weights, dtype=np.float32)
        self.n_way = int(self.head.shape[1])
        if bias is None:
            bias = np.zeros(self.n_way, np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if self.bias.shape != (self.n_way,):
            raise ValueError(
                f"LinearHeadClassifier: bias must have {self.n_way} entries (one per class "
                f"of weights {self.head.shape}), got shape {np.shape(bias)}"
            )
        self.scale = float(scale)

    def get_config(self) -> Dict[str, Any]:
        from metalearn.keras import layers as _layers

        return {
            "name": self.name,
            "encoder": _layers.serialize(self.encoder),
            "weights": self.head.tolist(),
            "scale": self.scale,
            "bias": self.bias.tolist(),
        }

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        emb = _flat(self.encoder(inputs))
        logits = _core.matmul(emb, _core.as_tensor(self.head)) + _core.as_tensor(self.bias)
        return logits * self.scale


class _EpisodeHead(ProtoNet):
    """ProtoNet's episode loop with another head: subclasses define ``_head``."""

    def __init__(self, encoder: Any, meta_optimizer: Any = "adam", meta_lr: float = 0.001) -> None:
        BaseMetaLearner.__init__(
            self,
            encoder,
            loss="sparse_categorical_crossentropy",
            meta_optimizer=meta_optimizer,
            meta_lr=meta_lr,
        )
        self.encoder = encoder
        self.inner_steps = 0

    def _head(self, s_emb, support_y, q_emb, n_way):
        raise NotImplementedError

    def _episode_embeddings(self, support_x, support_y, query_x, training, flat=True):
        """``(support embeddings, query embeddings, n_way)``: support and query through the
        encoder in one batch, after the checks that name a bad episode's array."""
        xs, n_way = self._episode_inputs(support_x, support_y, query_x)
        n_s = len(xs[0])
        emb = self.encoder(to_tensor(np.concatenate(xs)), training=training)
        emb = _flat(emb) if flat else emb
        s_emb = _core.narrow(emb, 0, 0, n_s)
        q_emb = _core.narrow(emb, 0, n_s, int(emb.shape[0]) - n_s)
        return s_emb, q_emb, n_way

    def _episode_inputs(self, support_x, support_y, query_x):
        """``([support_x, query_x] as float32 arrays, n_way)`` after the checks that name a
        bad episode's array."""
        who = type(self).__name__
        xs = []
        for name, a in (("support_x", support_x), ("query_x", query_x)):
            a = np.asarray(a)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{who}: {name} must hold real numbers, got dtype {a.dtype}")
            xs.append(a.astype(np.float32, copy=False))
        if xs[0].shape[1:] != xs[1].shape[1:]:
            raise ValueError(
                f"{who}: support_x and query_x examples must have one shape, got "
                f"{xs[0].shape[1:]} and {xs[1].shape[1:]}"
            )
        n_s = len(xs[0])
        if len(support_y) != n_s:
            raise ValueError(f"{who}: {n_s} support examples but {len(support_y)} labels")
        n_way = int(np.max(_int_labels(support_y, who))) + 1
        return xs, n_way

    def episode_logits(
        self, support_x: Array, support_y: ArrayLike, query_x: Array, training: bool = True
    ) -> _core.Tensor:
        """Query logits ``(n_query, n_way)`` for one episode (differentiable w.r.t. the
        encoder's weights and the head's parameters)."""
        s_emb, q_emb, n_way = self._episode_embeddings(support_x, support_y, query_x, training)
        return self._head(s_emb, support_y, q_emb, n_way)

    def _support_embeddings(self, support_x, support_y, who):
        check_support(support_x, support_y, who)
        self._prepare(Task(support_x, support_y, support_x, support_y))
        with _core_no_grad():
            return _flat(self.encoder(to_tensor(support_x), training=False))


class MatchingNet(_EpisodeHead):
    """Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016).

    A query is labelled by attention over the support set: ``P(y | q, S) = sum_i a(q,
    x_i) y_i`` with ``a = softmax over i of cos(f(q), f(x_i))`` (``matching_logits``);
    training minimises the query negative log-likelihood. One encoder embeds support and
    query (the paper's f = g, without full-context embeddings, which are not
    implemented). ``adapt`` stores the support embeddings: no gradient steps.

    Args:
        encoder: a Keras model mapping inputs to embeddings (flattened when not 2-D).
        meta_optimizer, meta_lr: the encoder's optimizer.
    """

    def _head(self, s_emb, support_y, q_emb, n_way):
        return matching_logits(s_emb, support_y, q_emb, n_way)

    def adapt(
        self, support_x: Array, support_y: ArrayLike, steps: Optional[int] = None
    ) -> MatchingClassifier:
        """A ``MatchingClassifier`` (a copy of the encoder plus this task's support
        embeddings); `steps` is ignored. The encoder is unchanged."""
        if steps is not None:
            check_count(steps, "steps", "MatchingNet.adapt")
        _labels(support_y, int(np.max(support_y)) + 1, "MatchingNet.adapt")
        emb = np.asarray(self._support_embeddings(support_x, support_y, "MatchingNet.adapt"))
        return MatchingClassifier(clone_model(self.encoder), emb, support_y)

    def __repr__(self):
        return "<MatchingNet>"


class R2D2(_EpisodeHead):
    """R2D2 (Bertinetto, Henriques, Torr & Vedaldi 2019, "Meta-learning with
    differentiable closed-form solvers"): a ridge-regression head fitted in closed form
    to each episode's support embeddings, back-propagated through to the encoder.

        [W; b] = [X 1]^T ([X 1][X 1]^T + n lambda I)^-1 Y     (Woodbury: n x n, n = |support|)
        logits = alpha * (f(query) W + b)

    X the support embeddings, Y their one-hot labels. As in the authors' code
    (bertinetto/r2d2, ``RRNet``): a column of ones gives a per-class bias b, and X and Y
    are divided by sqrt(n) before the solve, which is the same solution as a penalty of
    n lambda, so `lam` is the penalty per support example and its scale does not change
    with the shot count. The system is solved exactly by ``spd_solve`` (Gauss-Jordan
    elimination as core ops: differentiable to any order). ``lambda`` and ``alpha`` are
    meta-learned with the encoder, as in the paper (lambda as ``exp(log_lambda)``, so it
    stays positive; the authors' scripts keep it fixed, ``learn_lambda=False``). Their
    adjust layer's scalar offset is left out: it does not change the softmax.

    Args:
        encoder: a Keras model mapping inputs to embeddings (flattened when not 2-D).
        lam: initial ridge penalty per support example (> 0; the authors' 50).
        scale: initial scale alpha of the logits (the authors' Omniglot scripts: 10; their
            mini-ImageNet and CIFAR-FS scripts use 1e-4 for their much wider embeddings).
        bias: fit the per-class bias b (``False``: ``alpha * f(query) W``).
        learn_lambda, learn_scale: meta-learn them (else fixed).
        meta_optimizer, meta_lr: the optimizer of the encoder and the head's parameters.
    """

    def __init__(
        self,
        encoder: Any,
        lam: float = 50.0,
        scale: float = 10.0,
        bias: bool = True,
        learn_lambda: bool = True,
        learn_scale: bool = True,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
    ) -> None:
        lam = check_rate(lam, "lam", "R2D2")
        if lam <= 0:
            raise ValueError(f"R2D2: lam must be > 0, got {lam}")
        scale = check_real(scale, "scale", "R2D2")
        bias = check_flag(bias, "bias", "R2D2")
        learn_lambda = check_flag(learn_lambda, "learn_lambda", "R2D2")
        learn_scale = check_flag(learn_scale, "learn_scale", "R2D2")
        super().__init__(encoder, meta_optimizer=meta_optimizer, meta_lr=meta_lr)
        from metalearn.tape import Variable

        self.lam = lam
        self.bias = bias
        self.learn_lambda = learn_lambda
        self.learn_scale = learn_scale
        self.log_lambda = Variable(np.float32(math.log(lam)), name="r2d2/log_lambda")
        self.scale = Variable(np.float32(scale), name="r2d2/scale")

    def _meta_params(self):
        extra = [self.log_lambda] if self.learn_lambda else []
        extra += [self.scale] if self.learn_scale else []
        return super()._meta_params() + extra

    def _head(self, s_emb, support_y, q_emb, n_way):
        n = float(s_emb.shape[0])
        lam = _core.exp(self.log_lambda) * n  # the penalty per support example, times n
        return ridge_logits(s_emb, support_y, q_emb, n_way, lam, self.scale, bias=self.bias)

    @property
    def ridge_lambda(self) -> float:
        """The current ridge penalty per support example, ``exp(log_lambda)``."""
        return float(np.exp(np.asarray(self.log_lambda)))

    def adapt(
        self, support_x: Array, support_y: ArrayLike, steps: Optional[int] = None
    ) -> LinearHeadClassifier:
        """A ``LinearHeadClassifier`` (a copy of the encoder plus this task's ridge
        solution); `steps` is ignored. The encoder is unchanged."""
        if steps is not None:
            check_count(steps, "steps", "R2D2.adapt")
        n_way = int(np.max(support_y)) + 1
        onehot = _labels(support_y, n_way, "R2D2.adapt")
        x = np.asarray(self._support_embeddings(support_x, support_y, "R2D2.adapt"), np.float64)
        # the head in float64 NumPy: the same formula, nothing to differentiate here
        gram = x @ x.T + len(x) * self.ridge_lambda * np.eye(len(x))
        if self.bias:
            gram += 1.0
        coef = np.linalg.solve(gram, onehot)
        b = coef.sum(axis=0) if self.bias else None
        scale = float(np.asarray(self.scale))
        return LinearHeadClassifier(clone_model(self.encoder), x.T @ coef, scale, bias=b)

    def __repr__(self):
        return f"<R2D2 lambda={self.ridge_lambda:.4g} scale={float(np.asarray(self.scale)):.4g}>"


class MetaOptNet(_EpisodeHead):
    """MetaOptNet (Lee, Maji, Ravichandran & Soatto 2019, "Meta-Learning with
    Differentiable Convex Optimization"), its SVM head: a multi-class (Crammer-Singer)
    linear SVM fitted to each episode's support embeddings, back-propagated through to
    the encoder.

        A = argmax  -1/2 tr(A^T X X^T A) + tr(A^T Y)
            s.t.    sum_k A_ik = 0,  A_ik <= C Y_ik
        logits = scale * f(query) X^T A          (class weights W = X^T A)

    X the support embeddings, Y their one-hot labels. The paper solves the dual QP with
    a differentiable interior-point solver (qpth); here it is solved by a fixed number
    of accelerated projected-gradient steps built from core ops (``svm_dual``), so the
    meta-gradient of the solver as run exists to any order (an unrolled solver needs no
    implicit-function argument, and a KKT solve needs a pivoting linear solver the core
    does not have). The solver's error after ``solver_steps`` steps shrinks with the
    conditioning of ``X X^T``: on the tests' 6-example episode (condition number ~100)
    the dual's largest error is 0.27 after 8 steps, 5e-3 after 50, 5e-4 after 100 and
    7e-6 after 200 (float64). On an untrained ``conv4``'s Omniglot embeddings (5-way;
    condition number 190 at 1 shot, 7800 at 5 shots) the class weights' relative error
    after 15 / 50 / 100 steps is 0.20 / 0.019 / 0.005 (1 shot) and 0.48 / 0.15 / 0.045
    (5 shots); with ``ridge=1.0`` (the authors' code) it is 2e-4 after 15 steps at 5
    shots. ``scale`` is meta-learned with the encoder, as in the authors' code; C is
    fixed.

    Args:
        encoder: a Keras model mapping inputs to embeddings (flattened when not 2-D); the
            paper's: ``meta.models.resnet12()`` (or ``conv4()``).
        C: the SVM's penalty (> 0; paper 0.1).
        solver_steps: the dual solver's step count (>= 1).
        ridge: added to the Gram matrix's diagonal (>= 0; 0 the paper's dual, 1.0 the
            authors' code: faster convergence, see ``svm_logits``).
        scale: initial scale of the logits.
        learn_scale: meta-learn it (else fixed).
        meta_optimizer, meta_lr: the optimizer of the encoder and the scale.
    """

    def __init__(
        self,
        encoder: Any,
        C: float = 0.1,
        solver_steps: int = 50,
        ridge: float = 0.0,
        scale: float = 1.0,
        learn_scale: bool = True,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
    ) -> None:
        c = check_rate(C, "C", "MetaOptNet")
        if c <= 0:
            raise ValueError(f"MetaOptNet: C must be > 0, got {C}")
        solver_steps = check_count(solver_steps, "solver_steps", "MetaOptNet", minimum=1)
        ridge = check_rate(ridge, "ridge", "MetaOptNet")
        scale = check_real(scale, "scale", "MetaOptNet")
        learn_scale = check_flag(learn_scale, "learn_scale", "MetaOptNet")
        super().__init__(encoder, meta_optimizer=meta_optimizer, meta_lr=meta_lr)
        from metalearn.tape import Variable

        self.C = c
        self.solver_steps = solver_steps
        self.ridge = ridge
        self.learn_scale = bool(learn_scale)
        self.scale = Variable(np.float32(scale), name="metaoptnet/scale")

    def _meta_params(self):
        return super()._meta_params() + ([self.scale] if self.learn_scale else [])

    def _head(self, s_emb, support_y, q_emb, n_way):
        return svm_logits(
            s_emb, support_y, q_emb, n_way, self.C, self.scale, self.solver_steps, self.ridge
        )

    def adapt(
        self, support_x: Array, support_y: ArrayLike, steps: Optional[int] = None
    ) -> LinearHeadClassifier:
        """A ``LinearHeadClassifier`` (a copy of the encoder plus this task's SVM class
        weights ``X^T A``, the dual solved as in training); `steps` is ignored. The
        encoder is unchanged."""
        if steps is not None:
            check_count(steps, "steps", "MetaOptNet.adapt")
        n_way = int(np.max(support_y)) + 1
        onehot = _labels(support_y, n_way, "MetaOptNet.adapt")
        x = self._support_embeddings(support_x, support_y, "MetaOptNet.adapt")
        with _core_no_grad():
            gram = _gram(x, self.ridge)
            w = _core.matmul(x, svm_dual(gram, onehot, self.C, self.solver_steps), transpose_a=True)
        return LinearHeadClassifier(
            clone_model(self.encoder), np.asarray(w), float(np.asarray(self.scale))
        )

    def __repr__(self):
        return (
            f"<MetaOptNet C={self.C:.4g} solver_steps={self.solver_steps} "
            f"scale={float(np.asarray(self.scale)):.4g}>"
        )


def relation_scores(
    relation: Any,
    s_emb: Any,
    support_y: ArrayLike,
    q_emb: Any,
    n_way: int,
    training: bool = True,
) -> Any:
    """Relation Networks' scores (Sung et al. 2018, eq. 1-2): each class's embedding is the
    sum of its support embeddings (``s_emb (n_s, *f)``), concatenated with each query's
    (``q_emb (n_q, *f)``) on the last axis, and scored by `relation` (a model mapping
    ``(pairs, *f[:-1], 2 f[-1])`` to one number per pair, called with `training`) through
    a sigmoid. Returns ``(n_q, n_way)`` scores in (0, 1), differentiable to any order."""
    onehot = _labels(support_y, n_way, "relation_scores")  # (n_s, n_way)
    feat = tuple(int(d) for d in s_emb.shape[1:])
    n_s, n_q = int(s_emb.shape[0]), int(q_emb.shape[0])
    flat = _core.reshape(s_emb, (n_s, -1))
    classes = _core.matmul(_core.as_tensor(onehot.T.copy()), flat)  # sum over the shots
    classes = _core.reshape(classes, (1, n_way) + feat)
    queries = _core.reshape(q_emb, (n_q, 1) + feat)
    shape = (n_q, n_way) + feat
    pairs = _core.concat(
        [_core.broadcast_to(classes, shape), _core.broadcast_to(queries, shape)], axis=-1
    )
    pairs = _core.reshape(pairs, (n_q * n_way,) + feat[:-1] + (2 * feat[-1],))
    out = relation(pairs, training=training)
    return _core.reshape(_core.sigmoid(out), (n_q, n_way))


def relation_mse(y_true: Any, scores: Any) -> Any:
    """Relation Networks' loss: the mean squared error between the scores and the one-hot
    labels (Sung et al. 2018, eq. 3), averaged over queries and classes."""
    y = _int_labels(y_true, "relation_mse", "y_true").reshape(-1)
    n_way = int(scores.shape[-1])
    if len(y) != int(scores.shape[0]):
        raise ValueError(
            f"relation_mse: {len(y)} labels for scores of shape {tuple(scores.shape)} "
            f"(expected {int(scores.shape[0])})"
        )
    if y.size and (y.min() < 0 or y.max() >= n_way):  # (-1 would index the last class)
        raise ValueError(
            f"relation_mse: labels must lie in 0..{n_way - 1}, got {y.min()}..{y.max()}"
        )
    onehot = np.zeros((len(y), n_way), np.float32)
    onehot[np.arange(len(y)), y] = 1.0
    return _core.reduce_mean(_core.square(scores - _core.as_tensor(onehot)))


class RelationClassifier(Model):
    """A Keras model for one task, made by ``RelationNet.adapt``: a copy of the encoder and
    of the relation module plus the task's support set; ``predict`` gives relation scores
    ``(n, n_way)`` in (0, 1)."""

    def __init__(
        self,
        encoder: Any,
        relation: Any,
        support_x: Any,
        support_y: Any,
        separate_batches: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.relation = relation
        self.support_x = np.asarray(support_x, np.float32)
        self.support_y = np.asarray(support_y).astype(np.int64)
        self.separate_batches = bool(separate_batches)

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        n_way = int(self.support_y.max()) + 1
        if self.separate_batches:  # the support and the inputs, each its own statistics
            return _separate_batch_scores(
                self.encoder, self.relation, self.support_x, self.support_y, inputs, n_way
            )
        s_emb = self.encoder(to_tensor(self.support_x), training=False)
        q_emb = self.encoder(inputs, training=False)
        return relation_scores(self.relation, s_emb, self.support_y, q_emb, n_way, training=False)


def _separate_batch_scores(encoder, relation, support_x, support_y, query_x, n_way):
    """Relation scores with the support and the query through `encoder` as two batches,
    each normalised by its own statistics, and the pairs through `relation` as one
    (``RelationNet(separate_batches=True)``, in training and at test)."""
    s_emb = _batch_statistics_pass(encoder, to_tensor(support_x))
    q_emb = _batch_statistics_pass(encoder, to_tensor(query_x))
    return relation_scores(_batch_statistics_model(relation), s_emb, support_y, q_emb, n_way)


def _batch_statistics_pass(model, x):
    """`model` on x with every BatchNormalization normalising by x's own statistics (its
    training-mode forward, gradients flowing to its weights) and its moving statistics
    left as they are (a functional call never writes them)."""
    from metalearn.functional import functional_call

    return functional_call(model, list(model.trainable_weights), x, training=True)


def _batch_statistics_model(model):
    """`model` as a callable ``(x, training=...) -> y`` that always runs
    ``_batch_statistics_pass``."""
    return lambda x, training=None: _batch_statistics_pass(model, x)


def clip_by_module_norm(grads, splits, max_norm):
    """`grads` (tensors) cut into modules at the positions `splits`, each module's scaled
    by ``min(1, max_norm / (its L2 norm + 1e-6))``, the rule of
    ``torch.nn.utils.clip_grad_norm_`` applied to each module's parameters on its own. The
    norms are summed in float64; a module whose norm is within `max_norm` is left as it
    is (the same tensors)."""
    grads = list(grads)
    bounds = [0] + [int(s) for s in splits] + [len(grads)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = grads[lo:hi]
        norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in part))
        coef = max_norm / (norm + 1e-6)
        out += part if coef >= 1.0 else [g * coef for g in part]
    return out


class RelationNet(_EpisodeHead):
    """Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales 2018, "Learning to
    Compare: Relation Network for Few-Shot Learning").

    The encoder f embeds support and query images (feature maps or vectors); a class is
    the sum of its support embeddings; a learned relation module g scores each (class,
    query) pair from their concatenation, ``r = sigmoid(g([f(class), f(query)]))``, and
    training minimises the mean squared error between the scores and the one-hot labels
    (``relation_scores``, ``relation_mse``). The encoder and the relation module are
    meta-learned together; ``adapt`` keeps the support set (no gradient steps).

    Args:
        encoder: a Keras model mapping inputs to embeddings. The paper's: four conv blocks,
            only the first two pooled (``meta.models.conv4`` minus two pools).
        relation: a Keras model mapping a batch of concatenated pairs (last axis twice the
            embedding's) to one number per pair (the sigmoid is applied here). The paper's:
            two conv blocks and two dense layers (8 units, ReLU; 1). Default: Dense(8,
            ReLU) and Dense(1), for vector embeddings.
        meta_optimizer, meta_lr: the optimizer of the encoder and the relation module
            (paper: Adam 0.001).
        module_clipnorm: None (default), or the largest L2 norm of each module's
            meta-gradient: the encoder's gradient over all its weights is scaled by
            ``min(1, module_clipnorm / (norm + 1e-6))``, and the relation module's by its
            own, before the meta-optimizer's update, as the authors' code clips each with
            ``torch.nn.utils.clip_grad_norm_(module.parameters(), 0.5)``
            (floodsung/LearningToCompare_FSL). Unlike the optimizer's ``global_clipnorm``,
            one module's large gradient does not shrink the other's.
        separate_batches: False (default) runs an episode's support and query through
            the encoder as one batch, and at test (``evaluate``, ``adapt``) normalises with
            the moving statistics. True does what the authors' code does, which never
            puts its modules in eval mode: the support and the query go through the
            encoder as two batches, each normalised by its own statistics, and the pairs
            through the relation module as one, in training and at test alike
            (transductive at test: a query's score depends on the other queries).
    """

    def __init__(
        self,
        encoder: Any,
        relation: Any = None,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
        module_clipnorm: Optional[float] = None,
        separate_batches: bool = False,
    ) -> None:
        from metalearn.keras import layers as _layers
        from metalearn.keras.models import Sequential

        if module_clipnorm is not None:
            module_clipnorm = check_rate(module_clipnorm, "module_clipnorm", "RelationNet")
            if module_clipnorm == 0:
                raise ValueError("RelationNet: module_clipnorm must be > 0 (or None)")
        separate_batches = check_flag(separate_batches, "separate_batches", "RelationNet")
        if relation is None:
            relation = Sequential([_layers.Dense(8, activation="relu"), _layers.Dense(1)])
        if not callable(relation) or not hasattr(relation, "trainable_weights"):
            raise TypeError(
                f"RelationNet: relation must be a Keras model, got {type(relation).__name__}"
            )
        super().__init__(encoder, meta_optimizer=meta_optimizer, meta_lr=meta_lr)
        self.relation = relation
        self.module_clipnorm = module_clipnorm
        self.separate_batches = separate_batches
        self.loss = relation_mse  # resolved on the first task (classification from labels)

    def _meta_params(self):
        seen = {id(w) for w in self.encoder.trainable_weights}
        extra = [w for w in self.relation.trainable_weights if id(w) not in seen]
        return super()._meta_params() + extra

    def _apply_meta_gradients(self, grads, params):
        if self.module_clipnorm is not None:
            grads = clip_by_module_norm(
                grads, [len(self.encoder.trainable_weights)], self.module_clipnorm
            )
        super()._apply_meta_gradients(grads, params)

    def _state_tensors(self):
        """The relation module's weights that are no meta-parameter (its batch-norm moving
        statistics): a checkpoint saves them beside the encoder's, for exact resume."""
        held = {id(w) for w in self.encoder.weights} | {id(w) for w in self._meta_params()}
        return [w for w in self.relation.weights if id(w) not in held]

    def episode_logits(
        self, support_x: Array, support_y: ArrayLike, query_x: Array, training: bool = True
    ) -> _core.Tensor:
        """Relation scores ``(n_query, n_way)`` in (0, 1) for one episode (differentiable
        w.r.t. the encoder's and the relation module's weights)."""
        if self.separate_batches:  # batch statistics of each batch, also at test
            (sx, qx), n_way = self._episode_inputs(support_x, support_y, query_x)
            return _separate_batch_scores(self.encoder, self.relation, sx, support_y, qx, n_way)
        s_emb, q_emb, n_way = self._episode_embeddings(
            support_x, support_y, query_x, training, flat=False
        )
        return relation_scores(self.relation, s_emb, support_y, q_emb, n_way, training=training)

    def episode_loss(
        self, support_x: Array, support_y: ArrayLike, query_x: Array, query_y: ArrayLike
    ) -> Any:
        """The episode's relation loss (mean squared error to the one-hot labels) and its
        scores."""
        scores = self.episode_logits(support_x, support_y, query_x)
        return relation_mse(query_y, scores), scores

    def adapt(
        self, support_x: Array, support_y: ArrayLike, steps: Optional[int] = None
    ) -> RelationClassifier:
        """A ``RelationClassifier`` (copies of the encoder and the relation module plus
        this task's support set); `steps` is ignored. The learner is unchanged."""
        if steps is not None:
            check_count(steps, "steps", "RelationNet.adapt")
        check_support(support_x, support_y, "RelationNet.adapt")
        _labels(support_y, int(np.max(support_y)) + 1, "RelationNet.adapt")
        self._prepare(Task(support_x, support_y, support_x, support_y))
        with _core_no_grad():  # one example through the encoder: its input checks, now
            self.encoder(to_tensor(np.asarray(support_x)[:1]), training=False)
        return RelationClassifier(
            clone_model(self.encoder),
            clone_model(self.relation),
            support_x,
            support_y,
            separate_batches=self.separate_batches,
        )

    def __repr__(self):
        return "<RelationNet>"
