"""The source article's whole system: a learner, a performance predictor and a memory.

``MetaLearner`` ties together the article's three parts:

* an **AdaptiveNeuralNetwork** (or any classifier ending in a Dense layer), meta-trained
  with an algorithm of ``metalearn.meta`` (MAML by default) so that a few gradient steps
  adapt it to a new N-way task;
* a **MetaLearningNetwork**, trained with MSE to predict the accuracy the learner will
  reach on a task after adaptation, from the task's support set and its labels;
* a **KnowledgeMemory** (Kaiser et al. 2017) that keeps, for every task met while
  meta-training, what was learnt on it, and hands it back when a similar task comes.

What is stored, per training task (one memory slot; the slot's label is a running task id,
so the update rule never merges two tasks and the memory is a FIFO of the last
``memory_capacity`` tasks):

* **key**: the *task embedding*, the mean of the penultimate-layer embeddings ("body"
  features, the input of the final Dense layer, with the current meta-weights) of the
  support set, L2-normalised. It is invariant to the order and the labelling of the
  examples, and tasks made of the same characters land next to each other.
* **payload** (one float vector): the head's *knowledge delta* ``W_adapted - W_meta`` and
  ``b_adapted - b_meta`` of the final Dense layer after adapting the head alone to the
  task (``knowledge_steps`` steps of gradient descent on the cross-entropy, on its support
  and query sets: everything labelled that the task showed; the body stays at the
  meta-weights, so that the stored head fits the body it will be combined with: a head
  taken from a MAML adaptation of all layers does not, and warm-starting from it was
  measured to hurt), the task's class prototypes (mean L2-normalised body embedding per class,
  normalised) and the post-adaptation accuracy reached.

Recall (``adapt``): the task embedding of the new support set queries the memory for its
``recall_k`` nearest keys. Because a task's labels are an arbitrary numbering of its
classes (episode samplers relabel every episode), the recalled head cannot be used column
by column: each candidate's stored prototypes are matched to the new task's class
prototypes (greedy assignment on cosine similarity), and the candidate with the highest
mean matched similarity wins. When that *class similarity* reaches
``warm_start_threshold`` the adapted head starts from the recalled knowledge: the column
for new class ``c`` is ``W_meta[:, p(c)] + dW[:, p(c)]`` where ``p(c)`` is the stored class
matched to ``c`` (the recalled adapted head, permuted to the new labelling, re-based on
the current meta-head so that meta-training since the store does not make it stale);
likewise the bias. The algorithm's own inner loop then runs from there. Otherwise
adaptation starts from the meta-weights, exactly as the algorithm alone.

The predictor's input (``task_features``, laid out as ``feature_groups`` says), all from
the support set: the cosine Gram matrix of the centred support embeddings
``(n_support, n_support)`` (its diagonal replaced by each example's distance from the
centre over the centre's norm), flattened; the task's difficulty statistics
(``task_statistics``: the learner's support loss before and after its ``inner_steps``-step
adaptation, the adapted model's support accuracy, margin and entropy, prototype cosines
and distances); statistics of the support inputs themselves (level, spread, share of
values away from both ends of their range, cosines of the class means); the first inner
step (support loss before and after it, its relative drop, the gradient norm at the
meta-weights, support accuracy after it); the knowledge memory's top-1 and mean top-k
similarity to the task's key (how familiar the task is); prototype separation (min and
mean distance between class prototypes over the within-class spread, or for one-shot
tasks the examples' spread about the task's mean); and the number of inner steps the
prediction is for. The non-Gram features are standardised by their mean and spread over
the predictor's buffer (and clipped to +-5), and the network predicts the accuracy in
units of the buffer's accuracy spread about its mean, so that features of any scale are
usable from the first step. Its ``labels`` are the one-hot support labels flattened: the
network needs them to tell which entries of the Gram matrix are within a class and which
between classes. While training it sees the same tasks with their examples and class
numbers randomly permuted, so it learns that neither order matters. During ``fit`` each
task's query accuracy is measured after 1..``auto_max_steps`` inner steps (one run that
records the intermediate weights), and each predictor example takes one of those step
counts at random, so the one network predicts the accuracy after any of them;
``adapt(steps="auto")`` uses that curve. ``benchmarks/predictor.py`` measures the
Spearman correlation on held-out Omniglot tasks, what each feature group adds, and
``steps="auto"`` against fixed step counts.
"""

import json
import time
from pathlib import Path

import numpy as np

from metalearn import _budget, _core
from metalearn.functional import functional_call
from metalearn.memory import KnowledgeMemory
from metalearn.networks import AdaptiveNeuralNetwork, MetaLearningNetwork
from metalearn.tasks.base import Task

from ._base import BaseMetaLearner as _Algorithm
from ._base import (
    _core_no_grad,
    _next_batch,
    _Progress,
    check_count,
    check_flag,
    check_rate,
    check_real,
    check_support,
    to_tensor,
)
from .maml import ANIL, MAML, MetaSGD, _leaf_layers
from .reptile import Reptile

__all__ = ["MetaLearner", "spearman", "rankdata"]

_ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "metasgd")
# what the predictor's feature vector holds (saved with a system; load refuses another)
_PREDICTOR_FEATURES = "gram+statistics+support+first_step+recall+separation+pseudo_query+steps/2"


# ------------------------------------------------------------------ statistics


def rankdata(a):
    """Ranks 1..n of a 1-d array, ties given their mean rank (as ``scipy.stats.rankdata``)."""
    a = np.asarray(a, np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), np.float64)
    ranks[order] = np.arange(1, len(a) + 1, dtype=np.float64)
    sorted_a = a[order]
    # average the ranks of each run of equal values
    starts = np.flatnonzero(np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]]))
    ends = np.concatenate([starts[1:], [len(a)]])
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def spearman(x, y):
    """Spearman's rank correlation: the Pearson correlation of the ranks (ties averaged).

    NaN when either input is constant or has fewer than two values.
    """
    x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"spearman: inputs have {len(x)} and {len(y)} values")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x) - (len(x) + 1) / 2.0, rankdata(y) - (len(y) + 1) / 2.0
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


# ------------------------------------------------------------------ helpers


def _normalize(a, axis=-1):
    a = np.asarray(a, np.float64)
    n = np.linalg.norm(a, axis=axis, keepdims=True)
    return (a / np.maximum(n, 1e-12)).astype(np.float32)


# the task statistics run on B tasks at once that share their support labels sy (n,):
# arrays (B, n, ...), classes in sorted order


def _classes(sy):
    """(the classes of the labels `sy`, sorted; each example's position among them)."""
    classes = np.unique(sy)
    return classes, np.searchsorted(classes, sy)


def _class_means(x, sy, classes):
    """(B, classes, ...) means of the examples of each class of x (B, n, ...)."""
    return np.stack([x[:, sy == c].mean(1) for c in classes], 1)


def _cosines(a):
    """(B, k, k) cosines between the rows of a (B, k, h), in float64."""
    u = _normalize(a).astype(np.float64)
    return u @ np.swapaxes(u, 1, 2)


def _off_diagonal(a):
    """(B, k (k - 1)) off-diagonal entries of a (B, k, k); (B, 1) zeros when k is 1."""
    k = a.shape[1]
    return a[:, ~np.eye(k, dtype=bool)] if k > 1 else np.zeros((len(a), 1))


def _map_outputs(outs, f):
    """A task's (or tasks') network outputs (``_task_outputs``) with `f` applied to each
    array, and to each step's array of the lists."""
    return {
        k: [f(a) for a in v] if isinstance(v, list) else f(np.asarray(v)) for k, v in outs.items()
    }


def _greedy_match(sim):
    """perm with perm[c] = the stored class matched to new class c, by repeatedly taking
    the most similar unmatched pair; returns (perm, mean matched similarity)."""
    sim = np.array(sim, np.float64, copy=True)
    n = sim.shape[0]
    perm = np.full(n, -1, np.int64)
    total = 0.0
    for _ in range(n):
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        perm[i] = j
        total += sim[i, j]
        sim[i, :] = -np.inf
        sim[:, j] = -np.inf
    return perm, total / n


def _accuracy(out, y):
    return float(np.mean(np.argmax(np.asarray(out), -1) == np.asarray(y)))


class MetaLearner:
    """The article's system: a meta-trained learner, a performance predictor and a memory.

    Args:
        n_way: classes per task (N). Default: the model's output width.
        model: the learner, a Keras classifier whose last layer is a Dense head (default:
            ``AdaptiveNeuralNetwork(n_way, hidden_units, output_activation="linear")``).
            Its layers must run as a chain (a ``Sequential``, an AdaptiveNeuralNetwork, or
            any model whose ``call`` applies its layers in order); the input of the last
            Dense is the embedding. A softmax output is trained with cross-entropy on
            probabilities, a linear one with cross-entropy from logits.
        algorithm: ``"maml"`` (default, second order), ``"fomaml"``, ``"reptile"``,
            ``"anil"``, ``"metasgd"``, or an instance of one of them (then its model is
            the learner and ``model`` must be None or the same).
        hidden_units: width of the default model's hidden layer (128, the article's).
        inner_lr: inner step size (None: 0.4 for the MAML family, the paper's Omniglot
            value; Reptile's own default).
        inner_steps: inner steps while meta-training and the default for ``adapt``.
        meta_lr: the algorithm's outer learning rate (None: the algorithm's default).
        memory_capacity: memory slots (tasks remembered; the oldest is overwritten).
        recall_k: nearest stored tasks compared class by class on recall.
        warm_start_threshold: the class similarity (mean cosine of matched prototypes)
            from which a recalled task warm-starts adaptation.
        knowledge_steps: gradient steps of the head-only adaptation whose result is
            stored (None: ``max(inner_steps, 10)``), run on the task's support and query
            examples with the body at the meta-weights.
        predictor: a ``MetaLearningNetwork`` (default: ``MetaLearningNetwork(128)``).
        predictor_lr: Adam learning rate of the predictor.
        predictor_buffer: (features, accuracy) pairs kept to train the predictor on.
        predictor_batch: predictor minibatch per meta-iteration.
        auto_max_steps: the predictor learns the accuracy after 1..auto_max_steps inner
            steps (``adapt(steps="auto")`` chooses among them).
        auto_epsilon: ``steps="auto"`` takes the fewest steps whose predicted accuracy is
            within auto_epsilon of the best predicted one.
        query_features: True adds the ``QUERY`` group to the predictor's input: how the
            adapted learner and the class prototypes respond to the task's unlabelled
            query inputs (confidence, class balance of the predictions, agreement). This
            is transductive: predictions then need the query inputs
            (``predict_performance(..., query_x=...)``, ``adapt(..., query_x=...)``;
            ``evaluate_task`` passes its task's); the query labels are never used. It
            ranks tasks far better (Spearman about 0.75 against 0.55 on held-out
            Omniglot tasks, benchmarks/predictor.py) but is off by default: a
            prediction is meant to be available before any query is seen (to choose
            tasks, or how many steps to spend), and its strongest cue -- how evenly the
            adapted learner's predictions spread over the classes -- holds only for
            class-balanced query sets such as N-way episodes.
        encoder: optional Keras model giving the embeddings of the task keys, the
            prototypes and the predictor's features instead of the learner's body (e.g. a
            conv encoder trained with ProtoNet or a MemoryClassifier); it is not trained
            here.
        seed: seeds the memory's tie-breaks and the predictor's sampling.

    Example::

        x, y = metalearn.datasets.omniglot(split="vinyals_trainval")
        tasks = metalearn.tasks.NWayKShot((x, y), n_way=5, k_shot=1, q_queries=5)
        system = metalearn.MetaLearner(n_way=5)
        system.fit(tasks, iterations=500, meta_batch_size=8)
        model, expected = system.adapt(support_x, support_y)   # recalls, adapts
        system.last_recall                                    # what was recalled
        system.predict_performance(support_x, support_y)      # expected accuracy
        system.save("system/"); system = metalearn.MetaLearner.load("system/")
    """

    def __init__(
        self,
        n_way=None,
        model=None,
        algorithm="maml",
        hidden_units=128,
        inner_lr=None,
        inner_steps=1,
        meta_lr=None,
        memory_capacity=1000,
        recall_k=8,
        warm_start_threshold=0.8,
        knowledge_steps=None,
        predictor=None,
        predictor_lr=1e-3,
        predictor_buffer=2048,
        predictor_batch=64,
        encoder=None,
        seed=0,
        auto_max_steps=5,
        auto_epsilon=0.01,
        query_features=False,
    ):
        who = "MetaLearner"
        # every number checked before anything is built (int()/float() on a wrong type
        # raised messages that named neither the argument nor the class)
        if isinstance(n_way, _Algorithm):
            raise TypeError(
                f"{who}: n_way must be an integer, got a {type(n_way).__name__} algorithm "
                "(pass it as algorithm=...)"
            )
        n_way = None if n_way is None else check_count(n_way, "n_way", who, 1)
        hidden_units = check_count(hidden_units, "hidden_units", who, 1)
        inner_steps = check_count(inner_steps, "inner_steps", who)
        memory_capacity = check_count(memory_capacity, "memory_capacity", who, 1)
        recall_k = check_count(recall_k, "recall_k", who, 1)
        if knowledge_steps is not None:
            knowledge_steps = check_count(knowledge_steps, "knowledge_steps", who)
        predictor_lr = check_rate(predictor_lr, "predictor_lr", who)
        predictor_buffer = check_count(predictor_buffer, "predictor_buffer", who, 1)
        predictor_batch = check_count(predictor_batch, "predictor_batch", who, 1)
        seed = check_count(seed, "seed", who)
        warm_start_threshold = check_real(warm_start_threshold, "warm_start_threshold", who)
        auto_max_steps = check_count(auto_max_steps, "auto_max_steps", who, 1)
        auto_epsilon = check_rate(auto_epsilon, "auto_epsilon", who)
        query_features = check_flag(query_features, "query_features", who)
        if isinstance(algorithm, _Algorithm):
            if model is not None and model is not algorithm.model:
                raise ValueError("MetaLearner: model and algorithm.model differ; pass one of them")
            model = algorithm.model
            self.algorithm_name = type(algorithm).__name__.lower()
            if self.algorithm_name == "maml" and getattr(algorithm, "first_order", False):
                self.algorithm_name = "fomaml"
        elif isinstance(algorithm, str):
            if algorithm.lower() not in _ALGORITHMS:
                raise ValueError(
                    f"MetaLearner: algorithm must be one of {_ALGORITHMS} or an "
                    f"instance of metalearn.meta, got {algorithm!r}"
                )
            self.algorithm_name = algorithm.lower()
        else:
            raise TypeError(
                f"MetaLearner: algorithm must be a name or a metalearn.meta algorithm, "
                f"got {type(algorithm).__name__}"
            )
        if model is None:
            if n_way is None:
                raise ValueError("MetaLearner: give n_way (or a model)")
            model = AdaptiveNeuralNetwork(
                n_way, hidden_units=hidden_units, output_activation="linear"
            )
        self.model = model
        if n_way is None and getattr(model, "num_classes", None) is not None:
            n_way = model.num_classes
        self.n_way = None if n_way is None else int(n_way)
        self.hidden_units = hidden_units
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.meta_lr = meta_lr
        if isinstance(algorithm, _Algorithm):
            self.algorithm = algorithm
        else:
            self.algorithm = self._make_algorithm(self.algorithm_name, model)
        self.memory_capacity = memory_capacity
        self.recall_k = recall_k
        self.warm_start_threshold = warm_start_threshold
        self.knowledge_steps = (
            max(self.inner_steps, 10) if knowledge_steps is None else knowledge_steps
        )
        self.predictor = predictor if predictor is not None else MetaLearningNetwork(128)
        self.predictor_lr = predictor_lr
        from metalearn.keras import optimizers

        self.predictor_optimizer = optimizers.Adam(self.predictor_lr)
        self.predictor_buffer = predictor_buffer
        self.predictor_batch = predictor_batch
        self.seed = seed
        self.auto_max_steps = auto_max_steps
        self.auto_epsilon = auto_epsilon
        self.query_features = query_features
        self._rng = np.random.default_rng(seed)
        self.encoder = encoder
        self.task_info = {}
        self.memory = None
        self.center = None
        self.center_momentum = 0.9
        self._center_count = 0
        self.support_size = None
        self.input_shape = None
        self.tasks_stored = 0
        # per task: features (without the step count), one-hot labels, query accuracy
        # after inner_steps steps and after 1..auto_max_steps steps
        self._buffer_x, self._buffer_l, self._buffer_t, self._buffer_c = [], [], [], []
        # the predictor's input standardisation (from the buffer; saved with the system)
        self._feature_mean = self._feature_scale = None
        self._feature_mask = None  # benchmarks' ablations zero feature groups with it
        self._target = None  # (mean, spread) of the accuracies the predictor learns
        self.last_steps = None
        self._chain = None
        self.last_recall = None
        self.history = None

    # --------------------------------------------------------------- pieces
    def _make_algorithm(self, name, model):
        kw = {"inner_steps": self.inner_steps}
        if self.meta_lr is not None:
            kw["meta_lr"] = float(self.meta_lr)
        loss = self._loss_for(model)
        if name == "reptile":
            if self.inner_lr is not None:
                kw["inner_lr"] = float(self.inner_lr)
            return Reptile(model, loss=loss, **kw)
        kw["inner_lr"] = 0.4 if self.inner_lr is None else float(self.inner_lr)
        if name in ("maml", "fomaml"):
            return MAML(model, first_order=(name == "fomaml"), loss=loss, **kw)
        if name == "anil":
            return ANIL(model, loss=loss, **kw)
        return MetaSGD(model, loss=loss, **kw)

    @staticmethod
    def _loss_for(model):
        act = getattr(model, "output_activation", None)
        if act == "softmax":
            return "sparse_categorical_crossentropy_from_probs"
        return None

    def _setup(self, task):
        """Builds the model, finds the body and head, makes the memory (first task)."""
        single = task.task(0) if getattr(task, "is_batch", False) else task
        self.algorithm._prepare(single)
        if self._chain is not None:
            return
        sx = np.ascontiguousarray(np.asarray(single.support_x, np.float32))
        leaves = [l for l in _leaf_layers(self.model, []) if l is not self.model]
        leaves = [l for l in leaves if type(l).__name__ != "InputLayer"]
        head = leaves[-1] if leaves else None
        if head is None or not hasattr(head, "kernel") or len(head.trainable_weights) not in (1, 2):
            raise TypeError(
                f"MetaLearner: the model's last layer must be a Dense head, got "
                f"{type(head).__name__ if head is not None else 'nothing'}"
            )
        with _core_no_grad():
            ref = np.asarray(self.model(sx[:4], training=False))
            out = to_tensor(sx[:4])
            for layer in leaves:
                out = layer(out, training=False)
        if np.asarray(out).shape != ref.shape or not np.allclose(np.asarray(out), ref, atol=1e-5):
            raise TypeError(
                "MetaLearner: the model's layers do not run as a chain (model(x) is "
                "not its layers applied in order); use a Sequential or a model whose "
                "call applies its layers in order"
            )
        weights = self.model.trainable_weights
        ids = [id(w) for w in weights]
        self._head = head
        self._head_index = [ids.index(id(w)) for w in head.trainable_weights]
        self._chain = leaves[:-1]
        kernel = np.asarray(head.kernel)
        self.head_inputs = int(kernel.shape[0])
        if self.encoder is not None:
            with _core_no_grad():
                self.embedding_size = int(np.asarray(self.encoder(sx[:1], training=False)).size)
        else:
            self.embedding_size = self.head_inputs
        out_units = int(kernel.shape[1])
        if self.n_way is None:
            self.n_way = out_units
        elif self.n_way != out_units:
            raise ValueError(
                f"MetaLearner: n_way={self.n_way} but the model has {out_units} outputs"
            )
        self.support_size = int(len(single.support_y))
        self.input_shape = tuple(int(d) for d in sx.shape[1:])
        if self.center is None:
            self.center = np.zeros(self.embedding_size, np.float32)
        if self.memory is None:
            self.memory = KnowledgeMemory(
                self.memory_capacity, self.embedding_size, self.payload_size, seed=self.seed
            )

    @property
    def payload_size(self):
        """Floats per stored task: head delta (kernel and bias), prototypes, accuracy."""
        h, e, n = self.head_inputs, self.embedding_size, self.n_way
        return h * n + n + n * e + 1

    def _check_support(self, support_x, support_y):
        check_support(support_x, support_y, "MetaLearner")
        sx = np.ascontiguousarray(np.asarray(support_x, np.float32))
        sy = np.asarray(support_y).reshape(-1)
        if len(sx) != len(sy):
            raise ValueError(f"MetaLearner: {len(sx)} support inputs but {len(sy)} labels")
        if not np.issubdtype(sy.dtype, np.integer):
            if not np.all(sy == np.round(sy)):
                raise ValueError("MetaLearner: support labels must be class ids")
        sy = sy.astype(np.int64)
        if self.n_way is not None and (sy.min() < 0 or sy.max() >= self.n_way):
            raise ValueError(
                f"MetaLearner: labels must be in 0..{self.n_way - 1}, got {sy.min()}..{sy.max()}"
            )
        return sx, sy

    def embed(self, x):
        """Penultimate-layer embeddings ``(n, embedding_size)`` with the meta-weights (or
        the ``encoder``'s embeddings when one was given)."""
        if self._chain is None:
            raise ValueError("MetaLearner: not built yet; call fit (or adapt) first")
        with _core_no_grad():
            out = to_tensor(np.ascontiguousarray(np.asarray(x, np.float32)))
            if self.encoder is not None:
                out = self.encoder(out, training=False)
            else:
                for layer in self._chain:
                    out = layer(out, training=False)
            out = np.asarray(out)
        return out.reshape(len(out), -1)

    def _summaries(self, emb, sy):
        """(task key (h,), prototypes (n_way, h)) of support embeddings (the memory's)."""
        emb = emb - self.center
        key = _normalize(emb.mean(0))
        unit = _normalize(emb)
        protos = np.zeros((self.n_way, emb.shape[1]), np.float32)
        for c in range(self.n_way):
            m = sy == c
            if m.any():
                protos[c] = unit[m].mean(0)
        return key, _normalize(protos)

    def _grams(self, unit, centred):
        """Gram matrices (B, n, n) of tasks' unit centred support embeddings `unit`
        (B, n, h); the diagonal (always 1 for cosines) carries each example's distance from
        the centre instead (`centred` the embeddings less the centre), relative to the
        centre's norm: how atypical the example is."""
        gram = unit @ np.swapaxes(unit, 1, 2)
        scale = max(float(np.linalg.norm(self.center)), 1e-6)
        diag = np.arange(gram.shape[1])
        gram[:, diag, diag] = np.linalg.norm(centred, axis=-1) / scale
        return gram.astype(np.float32)

    def task_embedding(self, support_x, support_y=None):
        """The memory key of a task: its mean centred support embedding, L2-normalised."""
        return _normalize((self.embed(support_x) - self.center).mean(0))

    def _update_center(self, emb_means):
        """Moves the centre (a running mean of the embeddings) towards a batch's mean."""
        m = np.mean(emb_means, 0).astype(np.float32)
        if self._center_count == 0:
            self.center = m
        else:
            self.center = (
                self.center_momentum * self.center + (1 - self.center_momentum) * m
            ).astype(np.float32)
        self._center_count += 1

    # ------------------------------------------------------------ predictor
    #: names of the task statistics joined to the predictor's features, in order
    STATISTICS = (
        "support_loss_before",
        "support_loss_after",
        "support_loss_drop",
        "support_accuracy_after",
        "support_margin_after",
        "support_entropy_after",
        "prototype_cosine_mean",
        "prototype_cosine_max",
        "prototype_cosine_min",
        "prototype_raw_cosine_mean",
        "prototype_raw_cosine_max",
        "prototype_raw_cosine_min",
        "prototype_distance_mean",
        "prototype_distance_min",
        "within_class_spread",
        "centred_norm",
    )

    def task_statistics(self, support_x, support_y, fast=None):
        """Difficulty statistics of one task, computed from its support set alone.

        The learner's own view of the task: the support cross-entropy with the
        meta-weights and after the ``inner_steps``-step adaptation on the support set
        (`fast`, computed when None), their difference, the adapted model's support
        accuracy, mean logit margin of the right class over the best wrong one and mean
        prediction entropy; and how separable the classes are in the embedding: the
        cosines between class prototypes (mean, max, min; of the centred and of the raw
        embeddings), the distances between raw prototypes (mean, min) and the mean
        distance of an example to its class prototype (0 for 1-shot), all relative to
        the mean embedding norm, and the mean norm of the centred embeddings relative to
        the centre's norm. Every entry is invariant to the order of the examples; the
        embedding statistics also to the numbering of the classes, the learner's only
        as far as its meta-head treats the classes alike (MAML's does, roughly). Names in
        ``MetaLearner.STATISTICS``.

        Returns:
            float32 array ``(len(STATISTICS),)``.
        """
        self._require_built(support_x, support_y)
        sx, sy = self._check_support(support_x, support_y)
        return self._statistics(sx, sy, self.embed(sx), fast)

    def _statistics(self, sx, sy, emb, fast=None):
        if fast is None:
            fast = self.algorithm.adapted_weights(sx, sy, self.inner_steps)
        with _core_no_grad():
            before = np.asarray(self._run(list(self.model.trainable_weights), sx), np.float64)
            after = np.asarray(self._run(fast, sx), np.float64)
        return self._statistics_from(sy, emb[None], before[None], after[None])[0]

    def _log_probs(self, z):
        """Log-probabilities (float64) of the learner's outputs `z` along the last axis
        (logits, or probabilities from a softmax head)."""
        z = np.asarray(z, np.float64)
        if getattr(self.model, "output_activation", None) == "softmax":
            z = np.log(np.clip(z, 1e-7, 1.0))
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def _statistics_from(self, sy, emb, before, after):
        """The ``STATISTICS`` (B, 16) of B tasks sharing the support labels `sy` (n,) from
        the learner's support outputs before and after adaptation (B, n, classes) and the
        support embeddings (B, n, h)."""
        rows = np.arange(len(sy))
        lp0, lp1 = self._log_probs(before), self._log_probs(after)
        loss0, loss1 = -lp0[:, rows, sy].mean(1), -lp1[:, rows, sy].mean(1)
        # the margin on log-probabilities: they differ from the logits by a constant per
        # row, which the difference cancels
        wrong = np.where(np.eye(lp1.shape[-1], dtype=bool)[sy], -np.inf, lp1)
        margin = np.mean(lp1[:, rows, sy] - wrong.max(-1), axis=1)
        entropy = -np.mean((np.exp(lp1) * lp1).sum(-1), axis=1)
        acc = np.mean(lp1.argmax(-1) == sy, axis=1)

        emb = np.asarray(emb, np.float64)
        classes, at = _classes(sy)
        raw = _class_means(emb, sy, classes)
        centred = raw - self.center
        scale = np.maximum(np.linalg.norm(emb, axis=-1).mean(1), 1e-6)
        spread = np.mean(np.linalg.norm(emb - raw[:, at], axis=-1), axis=1) / scale
        cos_c = _off_diagonal(_cosines(centred))
        cos_r = _off_diagonal(_cosines(raw))
        dist = _off_diagonal(np.linalg.norm(raw[:, :, None] - raw[:, None], axis=-1))
        dist = dist / scale[:, None]
        centre_norm = max(float(np.linalg.norm(self.center)), 1e-6)
        cnorm = np.linalg.norm(emb - self.center, axis=-1).mean(1) / centre_norm
        stats = [
            loss0,
            loss1,
            loss0 - loss1,
            acc,
            margin,
            entropy,
            cos_c.mean(1),
            cos_c.max(1),
            cos_c.min(1),
            cos_r.mean(1),
            cos_r.max(1),
            cos_r.min(1),
            dist.mean(1),
            dist.min(1),
            spread,
            cnorm,
        ]
        stats = np.stack(stats, 1)
        return np.clip(np.nan_to_num(stats), -10.0, 10.0).astype(np.float32)

    #: statistics of the support inputs themselves (before any network)
    SUPPORT_STATISTICS = (
        "input_mean",
        "input_std",
        "input_grey_fraction",
        "input_class_cosine_mean",
        "input_class_cosine_max",
    )
    #: the first inner step: support loss before and after it, its relative drop, the
    #: norm of the support loss's gradient at the meta-weights, support accuracy after it
    FIRST_STEP = (
        "first_step_loss_before",
        "first_step_loss_after",
        "first_step_relative_drop",
        "first_step_gradient_norm",
        "first_step_accuracy_after",
    )
    #: the knowledge memory's similarities to the task's key (0 while the memory is empty)
    RECALL = ("recall_similarity_top1", "recall_similarity_topk_mean")
    #: min and mean distance between class prototypes over the within-class spread
    SEPARATION = ("prototype_separation_min", "prototype_separation_mean")
    #: pseudo-queries: the support examples slightly shifted (images) or jittered; the
    #: adapted model's accuracy, margin and loss on them after 1 and after
    #: auto_max_steps steps, and the accuracy and margin of the nearest class prototype
    #: in the embedding
    PSEUDO_QUERY = (
        "pseudo_query_accuracy_first_step",
        "pseudo_query_margin_first_step",
        "pseudo_query_loss_first_step",
        "pseudo_query_accuracy_last_step",
        "pseudo_query_margin_last_step",
        "pseudo_query_loss_last_step",
        "pseudo_query_prototype_accuracy",
        "pseudo_query_prototype_margin",
    )
    #: the unlabelled query inputs (``query_features=True``, transductive): the adapted
    #: learner's mean top-1 probability, entropy and top-1 minus top-2 margin; the same
    #: for the nearest-prototype classifier (softmax of minus squared distances); how
    #: often the two agree; the entropy of the predicted-class histogram (hard and soft)
    #: and of the prototypes' (N-way queries are balanced, so a skewed histogram means
    #: errors); the mean distance to the nearest prototype over the mean distance between
    #: prototypes; how often a query's nearest other query gets the same prediction
    QUERY = (
        "query_max_probability",
        "query_entropy",
        "query_margin",
        "query_prototype_max_probability",
        "query_prototype_margin",
        "query_prototype_agreement",
        "query_class_balance",
        "query_soft_class_balance",
        "query_prototype_class_balance",
        "query_prototype_distance_ratio",
        "query_neighbour_agreement",
    )
    #: the step count a prediction is for (the last entry of the predictor's input)
    STEPS = ("steps",)

    @property
    def feature_groups(self):
        """``{group: (start, stop)}`` column ranges of the predictor's feature vector."""
        n = self.support_size
        sizes = (
            ("gram", n * n),
            ("statistics", len(self.STATISTICS)),
            ("support", len(self.SUPPORT_STATISTICS)),
            ("first_step", len(self.FIRST_STEP)),
            ("recall", len(self.RECALL)),
            ("separation", len(self.SEPARATION)),
            ("pseudo_query", len(self.PSEUDO_QUERY)),
        ) + ((("query", len(self.QUERY)),) if self.query_features else ())
        sizes += (("steps", len(self.STEPS)),)
        out, at = {}, 0
        for name, size in sizes:
            out[name] = (at, at + size)
            at += size
        return out

    def _extra_statistics(self, sxs, sy, emb, outs):
        """The support, first-step, separation and pseudo-query groups of B tasks sharing
        the support labels `sy` ({group: (B, size) float64}): `sxs` (B, n, ...) their inputs,
        `emb` (B, n, h) their support embeddings, `outs` their network outputs with a
        leading task axis (``_batched_outputs``). The recall group, which reads the memory
        as each task finds it, is ``_recall_statistics``."""
        b = len(sxs)
        flat = np.asarray(sxs, np.float64).reshape(b, len(sy), -1)
        classes, at = _classes(sy)
        # inputs: level and spread of the values, share of values away from both ends of
        # their range (noise and blur raise it), similarity of the class means
        lo, hi = flat.min((1, 2)), flat.max((1, 2))
        width = np.maximum(hi - lo, 1e-12)[:, None, None]
        lo, hi = lo[:, None, None], hi[:, None, None]
        grey = np.mean((flat > lo + 0.1 * width) & (flat < hi - 0.1 * width), axis=(1, 2))
        cos_in = _off_diagonal(_cosines(_class_means(flat, sy, classes)))
        support = [flat.mean((1, 2)), flat.std((1, 2)), grey, cos_in.mean(1), cos_in.max(1)]

        # the first inner step, from the meta-weights
        lp1 = self._log_probs(outs["first"])
        rows = np.arange(len(sy))
        l0, l1 = np.asarray(outs["loss_before"], np.float64), -lp1[:, rows, sy].mean(1)
        first = [
            l0,
            l1,
            (l0 - l1) / np.maximum(l0, 1e-6),
            np.asarray(outs["gradient_norm"], np.float64),
            np.mean(lp1.argmax(-1) == sy, axis=1),
        ]

        # prototype separation relative to the within-class spread; with one example a
        # class has no spread of its own, so the examples' spread about the task's mean
        # embedding stands in for it
        e = np.asarray(emb, np.float64) - self.center
        protos = _class_means(e, sy, classes)
        within = np.linalg.norm(e - protos[:, at], axis=-1).mean(1)
        about_mean = np.linalg.norm(e - e.mean(1, keepdims=True), axis=-1).mean(1)
        within = np.where(within <= 1e-9, about_mean, within)
        d = _off_diagonal(np.linalg.norm(protos[:, :, None] - protos[:, None], axis=-1))
        within = np.maximum(within, 1e-6)
        separation = [d.min(1) / within, d.mean(1) / within]
        return {
            "support": np.stack(support, 1),
            "first_step": np.stack(first, 1),
            "separation": np.stack(separation, 1),
            "pseudo_query": self._pseudo_query(sy, e, outs),
        }

    def _recall_statistics(self, emb):
        """The ``RECALL`` group (2,) of one task from its support embeddings: how close
        the nearest stored tasks are (0 while the memory is empty)."""
        recall = [0.0, 0.0]
        if self.memory is not None and self.memory.size > 0:
            key = _normalize((np.asarray(emb) - self.center).mean(0))
            k = max(1, min(self.recall_k, self.memory.size))
            idx, sim = self.memory.query(key[None], k)[:2]
            sims = np.asarray(sim[0], np.float64)[np.asarray(idx[0]) >= 0]
            if len(sims):
                recall = [float(sims.max()), float(sims.mean())]
        return np.asarray(recall, np.float64)

    def _query_statistics(self, sy, emb, z, eq):
        """The ``QUERY`` group (B, 11; float64) of B tasks sharing the support labels `sy`:
        `z` (B, q, classes) the adapted learner's query outputs, `emb` and `eq` the support
        and query embeddings; the query labels are not used."""
        p = np.exp(self._log_probs(z))

        def entropy(p):
            return -(p * np.log(p + 1e-12)).sum(-1).mean(1)

        def balance(p):  # entropy of the histogram of predicted classes
            h = np.mean(p.argmax(-1)[..., None] == np.arange(p.shape[-1]), axis=1)
            return -(h * np.log(h + 1e-12)).sum(-1)

        def top_two(p):  # mean top-1 probability and top-1 minus top-2 margin
            ps = np.sort(p, -1)
            gap = (ps[..., -1] - ps[..., -2]).mean(1) if p.shape[-1] > 1 else np.zeros(len(p))
            return ps[..., -1].mean(1), gap

        e, eq = np.asarray(emb, np.float64), np.asarray(eq, np.float64)
        classes, _ = _classes(sy)
        protos = _class_means(e, sy, classes)
        dist = ((eq[:, :, None] - protos[:, None]) ** 2).sum(-1)
        pp = np.exp(-dist - (-dist).max(-1, keepdims=True))
        pp = pp / pp.sum(-1, keepdims=True)
        between = np.sqrt(((protos[:, :, None] - protos[:, None]) ** 2).sum(-1))
        upper = np.triu_indices(len(classes), 1)
        between = between[:, upper[0], upper[1]]
        spread = between.mean(1) if between.shape[1] else np.zeros(len(e))
        ratio = np.sqrt(dist.min(-1)).mean(1) / np.maximum(spread, 1e-6)
        n_q = eq.shape[1]
        dq = ((eq[:, :, None] - eq[:, None]) ** 2).sum(-1)
        dq[:, np.arange(n_q), np.arange(n_q)] = np.inf
        pred = p.argmax(-1)
        soft = p.mean(1)
        neighbour = np.take_along_axis(pred, dq.argmin(-1), 1)
        return np.stack(
            [
                *top_two(p)[:1],
                entropy(p),
                top_two(p)[1],
                *top_two(pp),
                np.mean(classes[pp.argmax(-1)] == pred, axis=1),
                balance(p),
                -(soft * np.log(soft + 1e-12)).sum(-1),
                balance(pp),
                ratio,
                np.mean(pred == neighbour, axis=1) if n_q > 1 else np.ones(len(p)),
            ],
            1,
        )

    @staticmethod
    def _pseudo_inputs(sx):
        """Deformed support examples standing in for a query: images shifted by 2 pixels
        in 8 directions, vectors jittered by a quarter of each feature's spread (fixed
        noise)."""
        sx = np.asarray(sx, np.float32)
        if sx.ndim >= 3:
            moves = [(-2, 0), (2, 0), (0, -2), (0, 2), (-2, -2), (2, 2), (-2, 2), (2, -2)]
            return np.concatenate([np.roll(sx, m, axis=(1, 2)) for m in moves])
        noise = np.random.default_rng(0).standard_normal((8,) + sx.shape)
        scale = 0.25 * (sx.std(0) + 1e-6)
        return (sx[None] + noise * scale).reshape((-1,) + sx.shape[1:]).astype(np.float32)

    def _pseudo_query(self, sy, emb_centred, outs):
        """How the adapted learner and the prototypes fare on deformed support examples
        (``_pseudo_inputs``), (B, 8; float64): with one example per class the support set
        holds no query, and these stand in. `emb_centred` (B, n, h) the centred support
        embeddings, `outs` the tasks' network outputs with a leading task axis."""
        py = np.tile(sy, np.shape(outs["pseudo_first"])[1] // len(sy))
        rows = np.arange(len(py))
        out = []
        for z in (outs["pseudo_first"], outs["pseudo_last"]):
            lp = self._log_probs(z)
            # the margin on log-probabilities: they differ from the logits by a constant
            # per row, which the difference cancels
            wrong = np.where(np.eye(lp.shape[-1], dtype=bool)[py], -np.inf, lp)
            out += [
                np.mean(lp.argmax(-1) == py, axis=1),
                np.mean(lp[:, rows, py] - wrong.max(-1), axis=1),
                -lp[:, rows, py].mean(1),
            ]
        # nearest prototype (cosine, centred embeddings): the metric learners' view
        pe = np.asarray(outs["pseudo_embedding"], np.float64) - self.center
        classes, _ = _classes(sy)
        protos = _normalize(_class_means(emb_centred, sy, classes))
        sims = _normalize(pe).astype(np.float64) @ np.swapaxes(protos, 1, 2).astype(np.float64)
        idx = np.searchsorted(classes, py)
        own = sims[:, rows, idx]
        other = np.where(np.eye(len(classes), dtype=bool)[idx], -np.inf, sims).max(-1)
        out += [np.mean(own > other, axis=1), np.mean(own - other, axis=1)]
        return np.stack(out, 1)

    def _curve_weights(self, sx, sy, steps):
        """Adapted weights after 1..steps inner steps (one run), all trainable weights."""
        alg = self.algorithm
        n = len(self.model.trainable_weights)
        out = []
        for _, w in alg._adaptation_curve(sx, sy, list(range(1, steps + 1))):
            w = list(w)
            out.append(w if len(w) == n else list(alg._full_weights(w)))
        return out

    def _task_record(self, sx, sy, query_x=None, query_y=None):
        """(features without the step count, one-hot labels, query accuracy after 1..K
        steps or None, the ``inner_steps`` adapted weights); `query_y` only measures the
        accuracies, `query_x` gives the ``QUERY`` group (``query_features=True``)."""
        self._check_record_query(query_x)
        k = max(self.auto_max_steps, self.inner_steps)
        curve = self._curve_weights(sx, sy, k)
        fast = curve[self.inner_steps - 1] if self.inner_steps >= 1 else None
        outs = self._task_outputs(sx, sy, curve, query_x, query_y is not None)
        feats, accs = self._record_from(sx, sy, outs, query_y)
        return feats, self._one_hot(sy), accs, fast

    def _check_record_query(self, query_x):
        if self.query_features and query_x is None:
            raise ValueError(
                "MetaLearner: query_features=True predicts from the task's query inputs; "
                "pass query_x"
            )
        if query_x is not None and len(query_x) == 0:
            raise ValueError("MetaLearner: query_x holds no examples")

    def _task_outputs(self, sx, sy, curve, query_x=None, accuracies=False):
        """What a task's record reads from the network, by functional calls on this task
        alone: the support loss with the meta-weights and its gradient's norm, the support
        outputs with the meta-weights ("before"), after ``inner_steps`` steps ("after") and
        after one ("first"), the pseudo-query outputs after the first and the last step of
        `curve`, the support and pseudo-query embeddings; the query outputs after every
        step of `curve` (`accuracies`) and, with ``query_features``, the adapted learner's
        query outputs and the query embeddings. ``_batched_outputs`` gives the same for a
        meta-batch at once."""
        weights = list(self.model.trainable_weights)
        px = self._pseudo_inputs(sx)
        out0 = self._run(weights, sx)
        loss = self.algorithm._loss_fn(sy, out0)
        grads = _core.grad(loss, weights)
        outs = {
            "loss_before": float(loss.item()),
            "gradient_norm": float(
                np.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))
            ),
            "before": np.asarray(out0, np.float64),
            "embedding": self.embed(sx),
            "pseudo_embedding": self.embed(px),
        }
        with _core_no_grad():
            fast = curve[self.inner_steps - 1] if self.inner_steps >= 1 else weights
            outs["after"] = np.asarray(self._run(fast, sx), np.float64)
            outs["first"] = np.asarray(self._run(curve[0], sx), np.float64)
            outs["pseudo_first"] = np.asarray(self._run(curve[0], px))
            outs["pseudo_last"] = np.asarray(self._run(curve[-1], px))
            if query_x is not None and accuracies:
                outs["query"] = [np.asarray(self._run(w, query_x)) for w in curve]
            if query_x is not None and self.query_features:
                step = max(self.inner_steps, 1) - 1
                outs["query_adapted"] = (
                    outs["query"][step]
                    if "query" in outs
                    else np.asarray(self._run(curve[step], query_x))
                )
                outs["query_embedding"] = self.embed(query_x)
        return outs

    def _batched_outputs(self, plan, supports, query_xs=None, accuracies=False):
        """``_task_outputs`` of a meta-batch's tasks at once (one dict, each entry with a
        leading task axis; "query" a list over steps of (B, q, classes)): the tasks'
        adapted weights, per-task copies or shared kernels with low-rank updates
        (``MAML._vectorised_steps``), run through the model's batched form, and the
        embeddings of all tasks are one pass. Only for an algorithm whose inner loop
        adapts every trainable weight by its vectorised step."""
        alg = self.algorithm
        b = len(supports)
        sxs = np.stack([sx for sx, _ in supports])
        sys_ = np.stack([sy for _, sy in supports])
        sx_t = to_tensor(sxs)
        params = list(alg._inner_params())
        fast = [_core.broadcast_to(w, (b,) + tuple(w.shape)) for w in params]
        # the sum over tasks of each task's mean loss: its gradient w.r.t. a task's copy
        # is that task's own (MAML._vectorised_loss)
        out0 = plan(fast, sx_t, {})
        grads = _core.grad(alg._loss_fn(sys_, out0) * float(b), fast)
        sq = sum(np.sum(np.asarray(g, np.float64).reshape(b, -1) ** 2, axis=1) for g in grads)
        out0 = np.asarray(out0)
        steps = max(self.auto_max_steps, self.inner_steps)
        # the curve's kernels kept shared with each task's updates as low-rank factors
        # where that pays (MAML's meta-step does the same): every pass below then runs
        # the shared kernel as one product over all tasks' rows
        low_rank = alg._low_rank_kernels(plan, sxs.shape[1], steps)
        start, *curve = alg._vectorised_steps(
            plan, sx_t, sys_, steps, low_rank=low_rank, first=None if low_rank else (fast, grads)
        )

        def run(state, x):
            return np.asarray(plan(state[0], x, state[1]))

        px = np.stack([self._pseudo_inputs(sx) for sx, _ in supports])
        flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
        emb = self.embed(flat(sxs)).reshape(b, sxs.shape[1], -1)
        pemb = self.embed(flat(px)).reshape(b, px.shape[1], -1)
        with _core_no_grad():
            adapted = curve[self.inner_steps - 1] if self.inner_steps >= 1 else start
            after = run(adapted, sx_t)
            out1 = run(curve[0], sx_t)
            px_t = to_tensor(px)
            pfirst = run(curve[0], px_t)
            plast = run(curve[-1], px_t)
            query = qemb = None
            if query_xs is not None and (accuracies or self.query_features):
                qxs = np.stack([np.asarray(q, np.float32) for q in query_xs])
                qx_t = to_tensor(qxs)
                query = [run(c, qx_t) for c in curve]
                if self.query_features:
                    qemb = self.embed(flat(qxs)).reshape(b, qxs.shape[1], -1)
        # each task's own mean loss (the batched loss above is their sum)
        losses = [
            float(alg._loss_fn(sy, to_tensor(np.ascontiguousarray(out0[i]))).item())
            for i, (_, sy) in enumerate(supports)
        ]
        out = {
            "loss_before": np.asarray(losses, np.float64),
            "gradient_norm": np.sqrt(sq),
            "before": out0.astype(np.float64),
            "embedding": emb,
            "pseudo_embedding": pemb,
            "after": after.astype(np.float64),
            "first": out1.astype(np.float64),
            "pseudo_first": pfirst,
            "pseudo_last": plast,
        }
        if query is not None and accuracies:
            out["query"] = query
        if qemb is not None:
            out["query_adapted"] = query[max(self.inner_steps, 1) - 1]
            out["query_embedding"] = qemb
        return out

    def _block_records(self, block, outputs):
        """``_records`` of a block of (support, task) pairs: at once when the tasks share
        their support labels (an N-way sampler's), else task by task."""
        sxs = np.stack([sx for (sx, _), _ in block])
        sys_ = [sy for (_, sy), _ in block]
        qys = np.stack([np.asarray(t.query_y) for _, t in block])
        if all(np.array_equal(sy, sys_[0]) for sy in sys_):
            return self._records(sys_[0], outputs, sxs, qys)
        rows = [
            self._records(
                sy, _map_outputs(outputs, lambda a: a[j : j + 1]), sxs[j : j + 1], qys[j : j + 1]
            )
            for j, sy in enumerate(sys_)
        ]
        return np.concatenate([f for f, _ in rows]), np.concatenate([a for _, a in rows])

    def _record_plan(self):
        """The model's batched form when the meta-batch's records may be computed at once
        (``_batched_outputs``), else None."""
        alg = self.algorithm
        plan_of = getattr(alg, "_vector_plan", None)
        if (
            plan_of is None
            or type(alg)._adapted_weights is not MAML._adapted_weights
            or type(alg)._inner_step is not MAML._inner_step
        ):
            return None
        plan = plan_of()
        if plan is None or len(alg._inner_params()) != len(self.model.trainable_weights):
            return None
        return plan

    def _record_from(self, sx, sy, outs, query_y=None):
        """(features without the step count, query accuracy after 1..K steps or None) of
        a task from its network outputs (``_task_outputs``)."""
        one = _map_outputs(outs, lambda a: a[None])
        qy = None if query_y is None else np.asarray(query_y)[None]
        feats, accs = self._records(sy, one, np.asarray(sx)[None], qy)
        return self._with_recall(feats[0], outs["embedding"]), None if accs is None else accs[0]

    def _records(self, sy, outs, sxs, query_ys=None):
        """(features without the step count (B, feature_size - 1), query accuracies after
        1..K steps (B, K) or None) of B tasks sharing the support labels `sy`, from their
        network outputs with a leading task axis (``_batched_outputs``): every statistic
        one NumPy pass over the tasks. The recall columns are left 0; ``_with_recall``
        fills them task by task, as each task finds the memory."""
        emb = np.asarray(outs["embedding"])
        centred = emb - self.center
        groups = {
            "gram": self._grams(_normalize(centred), centred).reshape(len(emb), -1),
            "statistics": self._statistics_from(sy, emb, outs["before"], outs["after"]),
            "recall": np.zeros((len(emb), len(self.RECALL))),
        }
        groups.update(self._extra_statistics(sxs, sy, emb, outs))
        if self.query_features:
            groups["query"] = self._query_statistics(
                sy, emb, outs["query_adapted"], outs["query_embedding"]
            )
        parts = []
        for name in self.feature_groups:
            if name in ("gram", "statistics"):
                parts.append(groups[name])
            elif name != "steps":
                parts.append(np.clip(np.nan_to_num(groups[name]), -1e3, 1e3))
        feats = np.concatenate(parts, 1).astype(np.float32)
        accs = None
        if query_ys is not None:
            qy = np.asarray(query_ys)
            accs = np.stack([np.mean(np.argmax(z, -1) == qy, axis=1) for z in outs["query"]], 1)
            accs = accs.astype(np.float32)
        return feats, accs

    def _with_recall(self, feats, emb):
        """`feats` (one task's ``_records`` row) with its recall columns filled from the
        memory as it is now."""
        a, b = self.feature_groups["recall"]
        feats[a:b] = np.clip(self._recall_statistics(emb), -1e3, 1e3)
        return feats

    @property
    def feature_size(self):
        """Length of the predictor's feature vector (``feature_groups``): the flattened
        Gram matrix, the task statistics, the support, first-step, recall and separation
        statistics and the step count."""
        return self.feature_groups["steps"][1]

    def task_features(self, support_x, support_y, fast=None, steps=None, query_x=None):
        """The predictor's input for one task: ``(features (1, feature_size), one-hot
        labels (1, n_support * n_way))``, the features laid out as ``feature_groups``
        says, the last entry the step count the prediction is for (default
        ``inner_steps``). `fast` is accepted for compatibility and not needed; `query_x`
        the task's query inputs (``query_features=True`` only)."""
        self._require_built(support_x, support_y)
        sx, sy = self._check_support(support_x, support_y)
        steps = self.inner_steps if steps is None else check_count(steps, "steps", "task_features")
        query_x = self._check_query(query_x, sx, "task_features")
        feats, labels, _, _ = self._task_record(sx, sy, query_x)
        return np.append(feats, np.float32(steps))[None], labels[None]

    def _one_hot(self, sy):
        oh = np.zeros((len(sy), self.n_way), np.float32)
        oh[np.arange(len(sy)), sy] = 1.0
        return oh.reshape(-1)

    #: how the predictor reads the buffer: "targets" (the default) trains it on the raw
    #: features and on the accuracies less the buffer's mean over their spread; True
    #: standardises the features too (clipped to +-5), False neither (benchmarks/
    #: predictor.py --variants trains all three alongside). Standardised inputs cost
    #: 0.05-0.1 of Spearman on the full Omniglot protocol (the clipped, rescaled
    #: features lose the scale the ranking needs); raw targets learn too slowly on a
    #: small budget (the network starts at 0, not at the mean accuracy)
    _STANDARDIZE = "targets"

    def _standardize(self, features):
        """The predictor's input (with ``_STANDARDIZE`` True: the features less the
        buffer's mean over its spread, the Gram part left as it is, clipped to +-5)."""
        f = np.asarray(features, np.float32)
        if self._STANDARDIZE is True and self._feature_mean is not None:
            n2 = self.support_size * self.support_size
            tail = (f[:, n2:] - self._feature_mean) / self._feature_scale
            f = np.concatenate([f[:, :n2], np.clip(tail, -5.0, 5.0)], 1)
        if self._feature_mask is not None:
            f = f * self._feature_mask
        return np.ascontiguousarray(f, np.float32)

    def _fit_standardization(self):
        n2 = self.support_size * self.support_size
        x = np.stack(self._buffer_x)[:, n2:].astype(np.float64)
        steps = np.arange(1, self.auto_max_steps + 1, dtype=np.float64)
        mean = np.append(x.mean(0), steps.mean())
        scale = np.append(x.std(0), steps.std() if len(steps) > 1 else 1.0)
        self._feature_mean = mean.astype(np.float32)
        self._feature_scale = np.maximum(scale, 1e-6).astype(np.float32)
        # the network predicts the accuracy in units of the buffer's spread about its mean
        t = np.asarray(self._buffer_c, np.float64)
        self._target = (float(t.mean()), max(float(t.std()), 1e-3))

    def _target_affine(self):
        if not self._STANDARDIZE:
            return (0.0, 1.0)
        return getattr(self, "_target", None) or (0.0, 1.0)

    def _predict_raw(self, features, labels):
        mean, scale = self._target_affine()
        with _core_no_grad():
            out = np.asarray(self.predictor(self._standardize(features), labels=labels))
        return mean + scale * out.reshape(-1).astype(np.float64)

    def _check_query(self, query_x, sx, where):
        """query_x as float32 with the support's input shape, or None (bad: ValueError)."""
        if query_x is None:
            if self.query_features:
                raise ValueError(
                    f"{where}: query_features=True predicts from the task's query inputs; "
                    "pass query_x"
                )
            return None
        if not self.query_features:
            raise ValueError(f"{where}: query_x is used only with query_features=True")
        q = np.asarray(query_x, np.float32)
        if q.ndim != np.ndim(sx) or q.shape[1:] != np.shape(sx)[1:] or len(q) == 0:
            raise ValueError(
                f"{where}: query_x must hold examples shaped like the support's "
                f"{tuple(np.shape(sx)[1:])}, got shape {q.shape}"
            )
        return q

    def _predicted_curve(self, sx, sy, query_x=None):
        """Predicted accuracy after 1..auto_max_steps steps (one feature computation)."""
        if len(sy) != self.support_size:
            raise ValueError(
                f"predict_performance: the predictor was trained on support sets of "
                f"{self.support_size} examples, got {len(sy)}"
            )
        feats, labels, _, _ = self._task_record(sx, sy, query_x)
        k = self.auto_max_steps
        x = np.concatenate(
            [np.tile(feats, (k, 1)), np.arange(1, k + 1, dtype=np.float32)[:, None]], 1
        )
        return np.clip(self._predict_raw(x, np.tile(labels, (k, 1))), 0.0, 1.0)

    def predict_performance(self, support_x, support_y, steps=None, query_x=None):
        """The accuracy the learner is expected to reach on this task after adapting
        `steps` inner steps from the meta-weights (default ``inner_steps``; counts above
        ``auto_max_steps`` are predicted as ``auto_max_steps``), clipped to [0, 1].
        `query_x`: the task's unlabelled query inputs, needed (and only accepted) with
        ``query_features=True``."""
        steps = (
            self.inner_steps
            if steps is None
            else check_count(steps, "steps", "predict_performance", 1)
        )
        self._require_built(support_x, support_y)
        sx, sy = self._check_support(support_x, support_y)
        query_x = self._check_query(query_x, sx, "predict_performance")
        curve = self._predicted_curve(sx, sy, query_x)
        return float(curve[min(steps, self.auto_max_steps) - 1])

    def _augment(self, features, labels):
        """Randomly reorders the examples and renumbers the classes of feature pairs (the
        Gram part of the features is permuted; the statistics are invariant)."""
        b, n = features.shape[0], self.support_size
        gram = features[:, : n * n].reshape(b, n, n)
        lab = labels.reshape(b, n, self.n_way)
        perm = np.empty((b, n), np.int64)
        renumber = np.empty((b, self.n_way), np.int64)
        for i in range(b):  # (the draws in the order they have always been made)
            perm[i] = self._rng.permutation(n)
            renumber[i] = self._rng.permutation(self.n_way)
        rows = np.arange(b)[:, None, None]
        g = gram[rows, perm[:, :, None], perm[:, None, :]]  # gram[i][ix_(p, p)]
        out = lab[rows, perm[:, :, None], renumber[:, None, :]]  # lab[i][p][:, c]
        return (
            np.concatenate([g.reshape(b, -1), features[:, n * n :]], 1).astype(np.float32),
            out.reshape(b, -1),
        )

    def _predictor_batch(self, index):
        """Features, labels and reached accuracy for the buffer's tasks `index`, each task
        once per step count 1..auto_max_steps (the step count the last feature): every
        example teaches the whole curve, none is spent on one point of it alone."""
        k = self.auto_max_steps
        index = np.repeat(np.asarray(index), k)
        steps = np.tile(np.arange(1, k + 1), len(index) // k)
        x = np.stack([self._buffer_x[i] for i in index])
        x = np.concatenate([x, steps[:, None].astype(np.float32)], 1)
        lab = np.stack([self._buffer_l[i] for i in index])
        t = np.asarray([self._buffer_c[i][s - 1] for i, s in zip(index, steps)], np.float32)
        return x, lab, t

    def _predictor_step(self, features, labels, target):
        from metalearn.tape import GradientTape

        features, labels = self._augment(features, labels)
        features = self._standardize(features)
        mean, scale = self._target_affine()
        t = ((np.asarray(target, np.float64).reshape(-1, 1) - mean) / scale).astype(np.float32)
        with GradientTape() as tape:
            pred = self.predictor(features, labels=labels)
            loss = _core.reduce_mean(_core.square(pred - to_tensor(t)))
        variables = self.predictor.trainable_weights
        grads = tape.gradient(loss, variables)
        self.predictor_optimizer.apply_gradients(zip(grads, variables))
        return float(loss.item()) * scale * scale  # the MSE in accuracy units

    def train_predictor(self, steps=100, batch_size=None):
        """Extra predictor steps on the stored (features, achieved accuracy) buffer;
        returns the losses."""
        if not self._buffer_t:
            raise ValueError("train_predictor: no tasks seen yet; call fit first")
        batch_size = self.predictor_batch if batch_size is None else int(batch_size)
        self._fit_standardization()
        losses = []
        n = len(self._buffer_t)
        for _ in range(int(steps)):
            i = self._rng.integers(0, n, min(batch_size, n))
            losses.append(self._predictor_step(*self._predictor_batch(i)))
        return losses

    # --------------------------------------------------------------- memory
    def _head_values(self):
        return [
            np.array(self.model.trainable_weights[i], np.float32, copy=True)
            for i in self._head_index
        ]

    def _pack(self, delta, protos, acc):
        h, n = self.head_inputs, self.n_way
        dk = np.asarray(delta[0], np.float32).reshape(h, n)
        db = (
            np.asarray(delta[1], np.float32).reshape(n)
            if len(delta) > 1
            else np.zeros(n, np.float32)
        )
        return np.concatenate([dk.reshape(-1), db, protos.reshape(-1), [np.float32(acc)]]).astype(
            np.float32
        )

    def _unpack(self, payload):
        h, e, n = self.head_inputs, self.embedding_size, self.n_way
        p = np.asarray(payload, np.float32)
        dk = p[: h * n].reshape(h, n)
        db = p[h * n : h * n + n]
        protos = p[h * n + n : h * n + n + n * e].reshape(n, e)
        return dk, db, protos, float(p[-1])

    def remember(self, support_x, support_y, query_x=None, query_y=None, accuracy=None, info=None):
        """Stores one task's knowledge in the memory (what ``fit`` does for every task).

        The head alone is adapted (gradient descent on the cross-entropy of its logits,
        ``knowledge_steps`` steps of ``inner_lr``, the body kept at the meta-weights) on the
        support (and query, when given) examples; its delta, the class prototypes and the
        accuracy (``accuracy`` or, when None and a query set is given, the query accuracy
        after ``inner_steps`` steps on the support) go under the task embedding.

        Returns:
            ``{"task_id", "index", "accuracy"}``: the task's id (its memory label) and slot.
        """
        self._require_built(support_x, support_y)
        sx, sy = self._check_support(support_x, support_y)
        if accuracy is None and query_x is not None:
            fast = self.algorithm.adapted_weights(sx, sy, self.inner_steps)
            with _core_no_grad():
                accuracy = _accuracy(self._run(fast, query_x), query_y)
        kx, ky = self._knowledge_examples(sx, sy, query_x, query_y)
        delta = self._head_knowledge(kx[None], ky[None])[0]
        return self._store(sx, sy, accuracy, info, self.embed(sx), delta)

    @staticmethod
    def _knowledge_examples(sx, sy, query_x=None, query_y=None):
        """The examples the stored head is adapted on: the support and the query."""
        if query_x is None:
            return sx, sy
        kx = np.concatenate([sx, np.asarray(query_x, np.float32)])
        ky = np.concatenate([sy, np.asarray(query_y).astype(np.int64)])
        return kx, ky

    def _store(self, sx, sy, accuracy, info, emb, delta):
        """``remember``'s write of one task: its key, head delta, prototypes, accuracy."""
        key, protos = self._summaries(emb, sy)
        task_id = self.tasks_stored
        self.memory.update(
            key[None],
            [task_id],
            self._pack(delta, protos, np.nan if accuracy is None else accuracy)[None],
        )
        self.tasks_stored += 1
        if info:
            self.task_info[task_id] = dict(info)
            old = task_id - self.memory_capacity
            self.task_info.pop(old, None)
        index = int(self.memory.query(key[None], 1)[0][0, 0])
        return {
            "task_id": task_id,
            "index": index,
            "accuracy": None if accuracy is None else float(accuracy),
        }

    def _run(self, weights, x):
        """The learner's output with `weights` (all trainable weights) on x."""
        return functional_call(
            self.model, weights, to_tensor(np.asarray(x, np.float32)), training=True
        )

    def _body_features(self, x):
        """The head's input for x, with the meta-weights (the learner's body)."""
        with _core_no_grad():
            out = to_tensor(np.ascontiguousarray(np.asarray(x, np.float32)))
            for layer in self._chain:
                out = layer(out, training=False)
            out = np.asarray(out, np.float64)
        return out.reshape(len(out), -1)

    def _head_knowledge(self, x, y):
        """[(dW, db)] of each task of x ``(B, m, ...)``, y ``(B, m)``: the change of the head
        after ``knowledge_steps`` steps of gradient descent (step ``inner_lr``,
        cross-entropy) on the task's examples with the body kept at the meta-weights, so
        that the stored head fits the body it will be used with. The B tasks' descents run
        as one batched product per step."""
        b, m = int(len(x)), int(np.shape(x)[1])
        feats = self._body_features(np.reshape(x, (b * m,) + np.shape(x)[2:])).reshape(b, m, -1)
        w0 = [np.asarray(v, np.float64) for v in self._head_values()]
        kernel = np.repeat(w0[0][None], b, 0)
        bias = np.repeat((w0[1] if len(w0) > 1 else np.zeros(kernel.shape[2]))[None], b, 0)
        lr = float(getattr(self.algorithm, "inner_lr", 0.4))
        onehot = np.eye(self.n_way)[np.asarray(y, np.int64)]
        for _ in range(self.knowledge_steps):
            logits = feats @ kernel + bias[:, None, :]
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            g = (p - onehot) / m
            kernel -= lr * feats.transpose(0, 2, 1) @ g
            bias -= lr * g.sum(1)
        out = []
        for i in range(b):
            delta = [kernel[i] - w0[0]]
            if len(w0) > 1:
                delta.append(bias[i] - w0[1])
            out.append([d.astype(np.float32) for d in delta])
        return out

    def recall(self, support_x, support_y):
        """The stored task most like this one.

        Returns:
            None when the memory is empty, else a dict: ``index`` (slot), ``task_id``,
            ``similarity`` (cosine of the task embeddings), ``class_similarity`` (mean
            cosine of matched class prototypes), ``permutation`` (stored class matched to
            each new class), ``accuracy`` (reached on the stored task), ``warm_start``
            (class_similarity >= warm_start_threshold) and the recalled head
            ``kernel_delta`` / ``bias_delta`` (stored class order).
        """
        self._require_built(support_x, support_y)
        sx, sy = self._check_support(support_x, support_y)
        if self.memory.size == 0:
            return None
        key, protos = self._summaries(self.embed(sx), sy)
        k = max(1, min(self.recall_k, self.memory.size))
        idx, sim, lab, pay = self.memory.query(key[None], k)
        best = None
        present = np.bincount(sy, minlength=self.n_way) > 0
        for j in range(k):
            if idx[0, j] < 0:
                continue
            dk, db, sp, acc = self._unpack(pay[0, j])
            m = protos @ sp.T
            m[~present] = 0.0  # absent classes match anything, count for nothing
            perm, score = _greedy_match(m)
            score = score * self.n_way / max(1, present.sum())
            if best is None or score > best["class_similarity"]:
                best = {
                    "index": int(idx[0, j]),
                    "task_id": int(lab[0, j]),
                    "similarity": float(sim[0, j]),
                    "class_similarity": float(score),
                    "permutation": perm,
                    "accuracy": acc,
                    "kernel_delta": dk,
                    "bias_delta": db,
                }
        best["warm_start"] = best["class_similarity"] >= self.warm_start_threshold
        return best

    # ---------------------------------------------------------------- adapt
    def _require_built(self, support_x, support_y):
        if self._chain is None:
            sx, sy = np.asarray(support_x), np.asarray(support_y)
            self._setup(Task(sx, sy, sx, sy))

    def _warm_head(self, rec):
        """Head weights from a recall: column c is the recalled adapted column p(c)."""
        perm = rec["permutation"]
        base = self._head_values()
        kernel = base[0][:, perm] + rec["kernel_delta"][:, perm]
        out = [kernel]
        if len(base) > 1:
            out.append(base[1][perm] + rec["bias_delta"][perm])
        return out

    def adapt(self, support_x, support_y, steps=None, warm_start=True, query_x=None):
        """Recalls, warm-starts, adapts; the meta-model is not changed.

        Args:
            support_x, support_y: one task's support set (labels ``0..n_way-1``).
            steps: inner steps (default ``inner_steps``; 0: the warm-started head alone),
                or ``"auto"``: the predictor's accuracy after 1..``auto_max_steps`` steps
                is predicted for this task and the fewest steps whose prediction is
                within ``auto_epsilon`` of the best prediction are taken
                (``self.last_steps`` says how many).
            warm_start: False ignores the memory (the algorithm's plain adaptation).
            query_x: the task's unlabelled query inputs, for the prediction (needed, and
                only accepted, with ``query_features=True``).

        Returns:
            ``(adapted_model, predicted_performance)``: a new Keras model holding the
            adapted weights, and the predictor's expected accuracy for this task after
            the steps taken (``auto_max_steps`` for more, 1 for 0 steps).
            ``self.last_recall`` tells what was recalled and whether it was used.
        """
        auto = isinstance(steps, str)
        if auto:
            if steps != "auto":
                raise ValueError(
                    f"MetaLearner.adapt: steps must be None, a non-negative integer or "
                    f"'auto', got {steps!r}"
                )
        elif steps is not None:
            check_count(steps, "steps", "MetaLearner.adapt")
        check_support(support_x, support_y, "MetaLearner.adapt")
        if auto and self._feature_mean is None:
            raise ValueError(
                "MetaLearner.adapt: steps='auto' needs a trained predictor; call fit first"
            )
        self._require_built(support_x, support_y)
        sx, sy = self._check_support(support_x, support_y)
        query_x = self._check_query(query_x, sx, "MetaLearner.adapt")
        curve = None
        try:
            curve = self._predicted_curve(sx, sy, query_x)
        except ValueError:
            if auto:  # a support set of another size: nothing to choose from
                raise
        if auto:
            # the fewest steps whose predicted accuracy is within epsilon of the best
            steps = int(np.flatnonzero(curve >= curve.max() - self.auto_epsilon)[0]) + 1
        steps = self.inner_steps if steps is None else int(steps)
        rec = self.recall(sx, sy) if warm_start else None
        self.last_recall = rec
        self.last_steps = steps
        weights = self.model.trainable_weights
        saved = None
        if rec is not None and rec["warm_start"]:
            saved = self._head_values()
            for i, w in zip(self._head_index, self._warm_head(rec)):
                _core.assign(weights[i], np.ascontiguousarray(w, np.float32))
        try:
            model = self.algorithm.adapt(sx, sy, steps=steps)
        finally:
            if saved is not None:
                for i, w in zip(self._head_index, saved):
                    _core.assign(weights[i], w)
        if curve is None:
            return model, float("nan")
        return model, float(curve[min(max(steps, 1), self.auto_max_steps) - 1])

    def evaluate_task(self, task, steps=None, warm_start=True):
        """Query accuracy of ``adapt`` on one task (a Task with a query set); `steps` as
        for ``adapt`` (``"auto"`` included)."""
        return _accuracy(self._query_outputs(task, steps, warm_start), task.query_y)

    def _query_outputs(self, task, steps=None, warm_start=True):
        """The adapted model's outputs on a task's query inputs (``evaluate_task``'s; the
        predictor benchmark reads which queries were right from them)."""
        model, _ = self.adapt(
            task.support_x,
            task.support_y,
            steps=steps,
            warm_start=warm_start,
            query_x=task.query_x if self.query_features else None,
        )
        with _core_no_grad():
            return model(np.ascontiguousarray(np.asarray(task.query_x, np.float32)), training=True)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        tasks,
        iterations=1000,
        meta_batch_size=25,
        verbose=1,
        remember=True,
        *,
        time_budget=None,
        checkpoint_dir=None,
        checkpoint_every=None,
    ):
        """Meta-trains the learner, fills the memory and trains the predictor.

        Each iteration: one meta-update of the algorithm on a batch of tasks; then, for
        every task of the batch, the accuracy reached after 1..``auto_max_steps`` (and
        ``inner_steps``) adaptation steps is measured on its query set, the task's
        features are computed (before its knowledge joins the memory, so the recall
        features see only earlier tasks), the knowledge is stored (``remember``) and
        (task features, accuracies) join the predictor's buffer; one predictor step (MSE,
        Adam; each example with a random step count) on the current batch plus a sample
        of the buffer.

        Args:
            tasks: an N-way task sampler (``metalearn.tasks.NWayKShot``), a callable
                ``n -> Task batch`` or a Task batch (integer labels, fixed support size).
            iterations, meta_batch_size, verbose: as for the algorithms' ``fit``.
            remember: store the tasks' knowledge in the memory.
            time_budget: seconds of wall-clock time (a positive number) after which
                training stops at the end of the running iteration; the history then has
                ``stopped = "time_budget"``.
            checkpoint_dir: a folder for exact resume (``metalearn.checkpoint``, as the
                algorithms' ``fit``): a checkpoint is saved there every
                `checkpoint_every` iterations and at the end; when the folder already
                holds one, ``fit`` restores it -- the algorithm's weights and
                meta-optimizer, the predictor's weights, optimizer and training buffer, the
                embedding centre, the knowledge memory (keys, labels, ages, payloads, its
                generator), the stored tasks' information, every generator, the task
                stream's position, the history -- and continues to `iterations` in all,
                ending with the bits of an uninterrupted run. A checkpoint of another run
                or a corrupt one raises ``CheckpointError``, changing nothing. Under
                ``DataParallel`` rank 0 writes and every rank resumes.
            checkpoint_every: iterations between checkpoints (default: a tenth of
                `iterations`); needs `checkpoint_dir`.

        Returns:
            A history dict of per-iteration lists: ``loss``, ``accuracy`` (the algorithm's
            meta-step), ``task_accuracy`` (measured after adaptation), ``predictor_loss``,
            ``memory_size``; ``stopped`` when the budget ended the run.
        """
        iterations, meta_batch_size = int(iterations), int(meta_batch_size)
        if iterations < 0 or meta_batch_size < 1:
            raise ValueError("fit: iterations must be >= 0 and meta_batch_size >= 1")
        end = _budget.deadline(time_budget, "MetaLearner.fit")
        from metalearn.distributed import distribution

        # under DataParallel the algorithm's meta-step is data-parallel (its tasks split
        # between the processes, their meta-gradients summed in one fixed tree over the
        # task indices: the same bits for any P); what follows it (adaptation, memory writes, predictor step) runs on
        # every process alike, so every process holds the same memory and predictor
        dist = distribution()
        if dist is not None:
            dist._check_learner(self.algorithm, None)
        from metalearn.distributed import is_root

        from ._system_session import SystemFitSession

        # every argument checked before anything changes; rank 0 alone writes checkpoints
        session = SystemFitSession(
            self,
            tasks,
            iterations,
            meta_batch_size,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            remember=remember,
            write_checkpoints=dist is None or is_root(),
        )
        history = {
            "loss": [],
            "accuracy": [],
            "task_accuracy": [],
            "predictor_loss": [],
            "memory_size": [],
        }
        start = session.resume(history)  # 0, or the iteration a checkpoint reached
        progress = _Progress(iterations, verbose)
        alg = self.algorithm
        step, stopped = start, None
        for it in range(start, iterations):
            batch = _next_batch(tasks, meta_batch_size, self.model)
            if not batch.is_batch:
                batch = Task(*(np.asarray(a)[None] for a in batch), info={"batched": True})
            self._setup(batch)
            alg._prepare(batch)
            if dist is None:
                loss, metric = alg._meta_step(batch)
            else:
                if it == start:  # (resumed: every rank restored the same checkpoint)
                    dist._begin(alg)  # rank 0's weights on every rank
                    self._build_predictor()  # and rank 0's predictor
                    dist._broadcast(self.predictor.weights)
                loss, metric = dist._meta_step(alg, batch)
            alg.iterations += 1
            feats, labs, accs, curves = [], [], [], []
            singles = batch.tasks()
            self._update_center([self.embed(t.support_x).mean(0) for t in singles])
            supports = [self._check_support(t.support_x, t.support_y) for t in singles]
            for sx, sy in supports:
                if len(sy) != self.support_size:
                    raise ValueError(
                        f"fit: support sets must all have {self.support_size} "
                        f"examples, got {len(sy)}"
                    )
            # each task's features, accuracy curve and accuracy (under DataParallel: this
            # rank's block of tasks, then every rank's rows in task order, same bits); the
            # features come first: the task's own knowledge is not in the memory yet
            lo, hi = (0, len(singles)) if dist is None else dist._task_block(len(singles))
            block = list(zip(supports[lo:hi], singles[lo:hi]))
            # the network passes of the block's records at once where the model has a
            # batched form (the numbers of the per-task calls up to float32 rounding)
            plan = self._record_plan() if block else None
            if plan is not None:
                for _, t in block:
                    self._check_record_query(t.query_x)
                outputs = self._batched_outputs(
                    plan, [s for s, _ in block], [t.query_x for _, t in block], True
                )
                records = self._block_records(block, outputs)
                if remember and dist is None:
                    known = [self._knowledge_examples(*s, t.query_x, t.query_y) for s, t in block]
                    deltas = self._head_knowledge(
                        np.stack([k for k, _ in known]), np.stack([k for _, k in known])
                    )
            for j, ((sx, sy), t) in enumerate(block):
                if plan is not None:
                    f, curve = (
                        self._with_recall(records[0][j], outputs["embedding"][j]),
                        records[1][j],
                    )
                    l = self._one_hot(sy)
                else:
                    f, l, curve, _ = self._task_record(sx, sy, t.query_x, t.query_y)
                acc = float(curve[self.inner_steps - 1]) if self.inner_steps >= 1 else None
                if acc is None:
                    fast = alg.adapted_weights(sx, sy, 0)
                    with _core_no_grad():
                        acc = _accuracy(self._run(fast, t.query_x), t.query_y)
                feats.append(np.asarray(f, np.float32))
                labs.append(np.asarray(l, np.float32))
                accs.append(acc)
                curves.append(np.asarray(curve[: self.auto_max_steps], np.float64))
                # one process: each task is written before the next one's features (its
                # recall features see the batch's earlier tasks); under DataParallel the
                # batch's tasks are written after every rank's features are gathered
                if remember and dist is None:
                    if plan is None:
                        self.remember(sx, sy, t.query_x, t.query_y, accuracy=acc, info=t.info)
                    else:  # (the heads' descents of the whole block at once, above)
                        self._store(sx, sy, acc, t.info, outputs["embedding"][j], deltas[j])
            if dist is not None:
                # the features without the step count, the labels, the curve, the accuracy
                wf, wl = self.feature_size - 1, self.support_size * self.n_way
                wc = self.auto_max_steps
                rows = np.zeros((hi - lo, wf + wl + wc + 1))
                for j in range(hi - lo):
                    rows[j] = np.concatenate([feats[j], labs[j], curves[j], [accs[j]]])
                rows = dist._gather_rows(rows, len(singles))
                feats = list(rows[:, :wf].astype(np.float32))
                labs = list(rows[:, wf : wf + wl].astype(np.float32))
                curves = list(rows[:, wf + wl : wf + wl + wc])
                accs = [float(a) for a in rows[:, -1]]
            if remember and dist is not None:  # every rank writes every task, in task order
                for (sx, sy), t, acc in zip(supports, singles, accs):
                    self.remember(sx, sy, t.query_x, t.query_y, accuracy=acc, info=t.info)
            self._buffer_x.extend(feats)
            self._buffer_l.extend(labs)
            self._buffer_t.extend(accs)
            self._buffer_c.extend(curves)
            over = len(self._buffer_t) - self.predictor_buffer
            if over > 0:
                del self._buffer_x[:over], self._buffer_l[:over]
                del self._buffer_t[:over], self._buffer_c[:over]
            self._fit_standardization()
            n_new, n_all = len(accs), len(self._buffer_t)
            extra = max(0, self.predictor_batch - n_new)
            index = np.arange(n_all - n_new, n_all)
            if extra and n_all > n_new:
                index = np.concatenate([index, self._rng.integers(0, n_all - n_new, extra)])
            ploss = self._predictor_step(*self._predictor_batch(index))
            history["loss"].append(float(loss))
            history["accuracy"].append(float(metric))
            history["task_accuracy"].append(float(np.mean(accs)))
            history["predictor_loss"].append(ploss)
            history["memory_size"].append(int(self.memory.size))
            progress.update(
                it + 1, {"loss": loss, "accuracy": float(np.mean(accs)), "predictor_loss": ploss}
            )
            step = it + 1
            session.after_step(step, history)
            expired = _budget.expired(end)
            if dist is not None:  # one rank's clock stops every rank after this iteration
                expired = dist._agree(False, expired)[1]
            if expired:
                stopped = _budget.STOPPED_TIME_BUDGET
                break
        session.finish(step, history)  # the last checkpoint
        if stopped is not None:
            history["stopped"] = stopped
        self.history = history
        return history

    # ------------------------------------------------------------ save/load
    def get_config(self):
        return {
            "n_way": self.n_way,
            "algorithm": self.algorithm_name,
            "hidden_units": self.hidden_units,
            "inner_lr": getattr(self.algorithm, "inner_lr", self.inner_lr),
            "inner_steps": self.inner_steps,
            "meta_lr": self.meta_lr,
            "memory_capacity": self.memory_capacity,
            "recall_k": self.recall_k,
            "warm_start_threshold": self.warm_start_threshold,
            "knowledge_steps": self.knowledge_steps,
            "predictor_hidden_units": getattr(self.predictor, "hidden_units", 128),
            "predictor_lr": self.predictor_lr,
            "predictor_buffer": self.predictor_buffer,
            "predictor_batch": self.predictor_batch,
            "seed": self.seed,
            "auto_max_steps": self.auto_max_steps,
            "auto_epsilon": self.auto_epsilon,
            "query_features": self.query_features,
        }

    def save(self, directory):
        """Saves the system into `directory`: ``config.json``, ``model.weights`` (the
        learner), ``predictor.weights``, ``memory.mlmem``, and for Meta-SGD
        ``learning_rates.weights``. Weight and memory files are metalearn's checked
        formats (each written atomically)."""
        if self._chain is None:
            raise ValueError("MetaLearner.save: nothing to save before fit (or adapt)")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self.get_config(),
            "support_size": self.support_size,
            "input_shape": list(self.input_shape),
            "tasks_stored": self.tasks_stored,
            "custom_model": not isinstance(self.model, AdaptiveNeuralNetwork),
            "model_output_activation": getattr(self.model, "output_activation", None),
            "center": [float(v) for v in self.center],
            "center_updates": self._center_count,
            "encoder": self.encoder is not None,
            "predictor_features": _PREDICTOR_FEATURES,
            "feature_mean": None
            if self._feature_mean is None
            else [float(v) for v in self._feature_mean],
            "feature_scale": None
            if self._feature_scale is None
            else [float(v) for v in self._feature_scale],
            "target": None if self._target is None else list(self._target),
            # how the predictor was trained to read its inputs and give its output
            "standardize": self._STANDARDIZE,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.model.save_weights(str(d / "model.weights"))
        self._build_predictor()
        self.predictor.save_weights(str(d / "predictor.weights"))
        self.memory.save(str(d / "memory.mlmem"))
        if self.encoder is not None:
            self.encoder.save_weights(str(d / "encoder.weights"))
        lrs = getattr(self.algorithm, "learning_rates", None)
        if lrs:
            _core.save_tensors(
                str(d / "learning_rates.weights"),
                [f"alpha/{i}" for i in range(len(lrs))],
                [to_tensor(np.asarray(a)) for a in lrs],
            )
        # written as the weight files are: a unique temporary file, fsync, rename (two
        # saves into one directory at once do not share a temporary name)
        _core.write_file(str(d / "config.json"), json.dumps(state, indent=1).encode())

    def _build_predictor(self):
        n = self.support_size
        feats = np.zeros((1, self.feature_size), np.float32)
        labels = np.zeros((1, n * self.n_way), np.float32)
        with _core_no_grad():
            self.predictor(feats, labels=labels)

    @classmethod
    def load(cls, directory, model=None, encoder=None):
        """A system saved by ``save``. A custom learner (not the default
        AdaptiveNeuralNetwork) must be passed as `model`, and a system saved with an
        ``encoder`` needs one of the same architecture as `encoder` (its weights are
        loaded from the directory)."""
        d = Path(directory)
        try:
            state = json.loads((d / "config.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"MetaLearner.load: {d / 'config.json'} not found") from None
        if state.get("predictor_features") != _PREDICTOR_FEATURES:
            raise ValueError(
                f"MetaLearner.load: {d} was saved by a version of metalearn whose "
                f"predictor takes other features ({state.get('predictor_features')!r}, "
                f"this one {_PREDICTOR_FEATURES!r})"
            )
        cfg = dict(state["config"])
        hidden = cfg.pop("predictor_hidden_units", 128)
        if model is None:
            if state.get("custom_model"):
                raise ValueError(
                    "MetaLearner.load: the system was saved with a custom model; pass "
                    "model=... (same architecture)"
                )
            model = AdaptiveNeuralNetwork(
                cfg["n_way"],
                hidden_units=cfg["hidden_units"],
                output_activation=state.get("model_output_activation") or "linear",
            )
        if state.get("encoder") and encoder is None:
            raise ValueError(
                "MetaLearner.load: the system was saved with an encoder; pass "
                "encoder=... (same architecture)"
            )
        system = cls(model=model, predictor=MetaLearningNetwork(hidden), encoder=encoder, **cfg)
        shape = (state["support_size"],) + tuple(state["input_shape"])
        sx = np.zeros(shape, np.float32)
        sy = np.arange(state["support_size"]) % cfg["n_way"]
        if encoder is not None:
            with _core_no_grad():
                encoder(sx[:1], training=False)
            encoder.load_weights(str(d / "encoder.weights"))
        system._setup(Task(sx, sy, sx, sy))
        system.center = np.asarray(state["center"], np.float32)
        system._center_count = int(state.get("center_updates", 1))
        system.model.load_weights(str(d / "model.weights"))
        system._build_predictor()
        system.predictor.load_weights(str(d / "predictor.weights"))
        if state.get("feature_mean") is not None:
            system._feature_mean = np.asarray(state["feature_mean"], np.float32)
            system._feature_scale = np.asarray(state["feature_scale"], np.float32)
        if state.get("target") is not None:
            system._target = tuple(float(v) for v in state["target"])
        if state.get("standardize", cls._STANDARDIZE) != cls._STANDARDIZE:
            system._STANDARDIZE = state["standardize"]  # (a benchmark's other recipe)
        system.memory.load(str(d / "memory.mlmem"))
        if getattr(system.algorithm, "learning_rates", None):
            arrs = [a for _, a in _core.load_tensors(str(d / "learning_rates.weights"))]
            for v, a in zip(system.algorithm.learning_rates, arrs):
                _core.assign(v, np.ascontiguousarray(a, np.float32))
        system.tasks_stored = int(state.get("tasks_stored", system.memory.size))
        return system

    def __repr__(self):
        return (
            f"<MetaLearner algorithm={self.algorithm_name} n_way={self.n_way} "
            f"memory={self.memory.size if self.memory is not None else 0}/"
            f"{self.memory_capacity}>"
        )
