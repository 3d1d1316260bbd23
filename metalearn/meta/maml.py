"""Gradient-based meta-learning: MAML and first-order MAML, Meta-SGD, ANIL."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple, Union

from metalearn._typing import ArrayLike
import numpy as np

from metalearn import _core, debugging
from metalearn.functional import batch_norm_statistics, functional_call
from metalearn.keras.batched import batched_plan
from metalearn.keras.models import _run_order

from metalearn.tasks.base import Task

from ._base import (
    BaseMetaLearner,
    _core_no_grad,
    _leaf_layers,
    check_count,
    check_flag,
    check_model,
    check_rate,
    check_support,
    to_tensor,
)

__all__ = ["MAML", "MetaSGD", "ANIL", "BATCH_NORM_MODES"]

#: the statistics a gradient-based learner normalises the query with (MAML's batch_norm)
BATCH_NORM_MODES = ("transductive", "support", "running", "pooled")
#: the inner loop's update rules (MAML's inner_optimizer)
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")


class MAML(BaseMetaLearner):
    """Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

    MAML learns an initialisation ``theta`` of a model's weights from which a few
    gradient steps on a new task's support set give a model that does well on that
    task's query set. Algorithm 2 of the paper, one meta-iteration:

        sample a batch of tasks T_i
        for each task:   (inner loop, `inner_steps` times)
            theta_i' = theta_i' - inner_lr * grad_{theta_i'} L_support(T_i; theta_i')
                                                            (theta_i' starts at theta)
        theta = meta_optimizer step on  grad_theta  mean_i L_query(T_i; theta_i')

    The meta-gradient flows *through* the inner updates: it contains the Hessian term
    ``(I - inner_lr * H)`` of every inner step, so the inner gradients are computed with
    ``create_graph=True`` and ``metalearn.grad`` differentiates through them (a gradient
    of a gradient, done by the C core's autograd). With ``first_order=True`` the inner
    gradients are constants instead (FOMAML, §5.2 of the paper): the meta-gradient is the
    query gradient at the adapted weights, much cheaper and often nearly as good.

    Inner steps run on lists of tensors with core ops (``w - inner_lr * g``) and
    ``functional_call(model, fast_weights, x)``; the model's own weights change only in
    the meta-update. BatchNormalization layers use the batch's statistics inside the
    loop (``training=True``), as the reference implementations do; ``batch_norm`` chooses
    the statistics the query is normalised with after adaptation.

    Args:
        model: a Keras model (``Sequential`` or a subclassed ``Model``). A classifier may
            output logits or end in softmax (``Dense(n, activation="softmax")``, as the
            Keras quick start): the cross-entropy reads a softmax head's outputs as
            probabilities (Keras' ``from_logits=False``), so both learn alike.
        inner_lr: step size alpha of the inner SGD steps (paper: 0.01 sinusoid, 0.4
            Omniglot).
        inner_steps: inner steps during meta-training (and the default for ``adapt``).
        first_order: FOMAML (ignore second derivatives).
        meta_optimizer: ``"adam"``, ``"sgd"`` or a ``metalearn.keras.optimizers``
            instance, applied to the meta-gradient.
        meta_lr: learning rate beta of the meta-optimizer when given by name (paper:
            Adam 0.001).
        loss: None (MSE for float targets, sparse categorical cross-entropy for integer
            labels: from logits, or from probabilities when the model ends in softmax),
            ``"mse"``, ``"sparse_categorical_crossentropy"`` (the same rule), or a
            callable ``loss(y_true, y_pred)`` returning a Tensor (used as given).
        vectorize: ``"auto"`` runs the tasks of a meta-batch together (batched matrix
            products over per-task weight copies, one graph for the whole batch) when
            every layer of the model has a batched form (``Sequential`` models of Dense,
            Conv2D, MaxPooling2D, AveragePooling2D, Activation, Flatten,
            BatchNormalization and Sequential layers: conv4 included) and the loss is a
            built-in one; the result equals the loop over tasks (batch statistics per task,
            ``metalearn.batch_norm_grouped``; each task's convolution with its own fast
            kernel, ``metalearn.conv2d_batched``). A wide Dense
            kernel adapted from a few support rows is carried as the shared kernel plus
            each task's low-rank update ``-inner_lr * X^T dZ`` instead of a copy per task
            (the same numbers, far less memory traffic). Models with a Conv2D run the
            loop under ``"auto"`` (measured: vectorised they are no faster, and hold every
            task's activations at once); ``True`` vectorises them too (and raises when a
            layer has no batched form). False always loops.
        batch_norm: the statistics BatchNormalization layers normalise the query with
            after adaptation (the support always uses its own batch's, as the references):
            ``"transductive"`` (the default, as the MAML reference code: the query
            batch's own statistics, so each query's prediction depends on the other
            queries, which flatters the accuracy), ``"support"`` (the adapted network's
            statistics of the support set, applied to every query: predictions of one
            query at a time, non-transductive; gradients of any order flow through the
            support statistics), or ``"running"`` (the layers' moving statistics, which
            meta-training moves towards the adapted network's support statistics of every
            training task, with the layer's momentum). The modes other than
            transductive run the tasks one by one (not vectorised or traced). ``adapt``
            returns a model whose moving statistics are those the mode normalises with
            (``"support"``: the support set's), so its ``predict`` gives the same
            predictions as ``evaluate``. ``"pooled"`` is ANIL's only (see ANIL).
        inner_optimizer: the inner loop's update rule, differentiated through like the
            plain step (higher's ``DifferentiableOptimizer``): ``"sgd"`` (the paper's
            ``w - inner_lr * g``), ``"momentum"`` (``torch.optim.SGD``'s heavy ball:
            ``b = inner_momentum * b + g``, ``w - inner_lr * b``) or ``"adam"`` (Kingma &
            Ba 2015, as ``torch.optim.Adam``: bias-corrected moments with
            ``inner_betas``, ``w - inner_lr * m_hat / (sqrt(v_hat) + inner_epsilon)``),
            its state starting at zero for every task. Second-order meta-gradients flow
            through the moments (checked against PyTorch; under Adam's square root
            ``v_hat + 1e-30``, so that an exactly zero gradient, a ReLU unit that never
            fires, does not make them NaN). Other than "sgd", the tasks
            run one by one (not vectorised or traced).
        inner_momentum, inner_betas, inner_epsilon: the inner optimizer's settings.
        gradient_checkpointing: ``True`` trades time for memory in the meta-gradient, as
            ``torch.utils.checkpoint`` does: the tasks of a meta-batch run one at a time,
            each task's gradient taken and its graph freed before the next (so the peak
            holds one task, not the meta-batch), and a second-order task keeps no inner
            step's activations: its inner loop runs without a graph, keeping only the
            fast weights of each step, and the meta-gradient is taken backwards from the
            query, re-running one inner step at a time with its graph (the step's
            vector-Jacobian product, then the graph is dropped). Peak memory: about one
            inner step's graph or one query's instead of the meta-batch's whole unrolled
            loops; time: one more forward and backward of every inner step. First order
            (``first_order=True``): the tasks one at a time only (a first-order step keeps
            nothing for the meta-gradient, so there is nothing to recompute). A model with
            Dropout draws the same masks as without (the generator's state is put back
            for each re-run step, as ``torch.utils.checkpoint``'s ``preserve_rng_state``).
            The meta-gradients equal the default's up to float32 rounding (they are summed
            in another order: deterministic, not bit-identical), which is why it is
            opt-in. The tasks run the loop: ``vectorize=True`` is refused with it and
            ``"auto"`` loops. It is no part of a checkpoint's fingerprint: a run may
            resume with the other setting (to fit a smaller machine), its numbers then
            differing from an uninterrupted run's by rounding. Default ``False``.

    Example::

        model = keras.Sequential([keras.layers.Dense(40, activation="relu", input_shape=(1,)),
                                  keras.layers.Dense(40, activation="relu"),
                                  keras.layers.Dense(1)])
        maml = metalearn.meta.MAML(model, inner_lr=0.01, inner_steps=1)
        history = maml.fit(metalearn.tasks.Sinusoid(k_shot=10), iterations=1000,
                           meta_batch_size=25)
        adapted = maml.adapt(support_x, support_y, steps=10)   # a new Keras model
        maml.evaluate(metalearn.tasks.Sinusoid(seed=1), episodes=600)  # {'mse', 'ci95', ...}
    """

    # What the inner loop is, for the vectorised meta-batch; a subclass that changes it
    # says so here. _batched_inner_loop: the inner loop adapts _inner_params() through the
    # model's own forward with _inner_update, so a meta-batch may run as the model's
    # batched form (ANIL: no, it re-runs only the head on features computed once).
    # _low_rank_inner_step: an inner step changes a dense kernel by a term of the rank of
    # its gradient X^T dZ (w - inner_lr * g with one scalar rate; Meta-Curvature's
    # M_in g M_out, through _low_rank_factors), so it may ride low-rank factors (Meta-SGD:
    # no, its rates are per weight).
    _batched_inner_loop = True
    _low_rank_inner_step = True
    # the batch_norm modes other than "transductive" need _forward to be a functional
    # call of the whole model (a variant that cannot run one says False)
    _batch_norm_modes = True
    # batch_norm="pooled": support and query through the body as one batch (ANIL only: its
    # body is not adapted, so one pass serves the whole inner loop)
    _pooled_batch_norm = False
    # a meta-parameter the meta-loss may not reach gets a zero meta-gradient instead of
    # grad's error (MAML++'s per-step batch-norm copies of the support passes, once the
    # meta-gradient is first order and only the last step's query loss counts)
    _meta_params_may_be_unused = False

    # gradient_checkpointing re-runs inner steps one at a time: it needs the inner loop to
    # be _inner_apply on _inner_params() from the meta-weights, through _forward on a
    # support input with no graph (ANIL's body features have one: refused)
    _checkpointed_inner_loop = True

    def __init__(
        self,
        model: Any,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
        loss: Any = None,
        vectorize: Union[str, bool] = "auto",
        trace: bool = True,
        batch_norm: str = "transductive",
        inner_optimizer: str = "sgd",
        inner_momentum: float = 0.9,
        inner_betas: Tuple[float, float] = (0.9, 0.999),
        inner_epsilon: float = 1e-8,
        gradient_checkpointing: bool = False,
    ) -> None:
        who = type(self).__name__
        # every setting checked before anything is stored: a bad one changes nothing
        check_model(model, who)
        gradient_checkpointing = self._checked_checkpointing(gradient_checkpointing, vectorize)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"{who}: inner_optimizer must be one of {INNER_OPTIMIZERS}, got {inner_optimizer!r}"
            )
        if inner_optimizer != "sgd" and type(self)._inner_step is not MAML._inner_step:
            raise ValueError(
                f"{who}: inner_optimizer={inner_optimizer!r} is not supported (its inner step "
                "is its own); use 'sgd'"
            )
        inner_momentum = check_rate(inner_momentum, "inner_momentum", who)
        betas = tuple(inner_betas) if isinstance(inner_betas, (tuple, list)) else ()
        if len(betas) != 2 or not all(
            isinstance(b, (int, float)) and 0.0 <= float(b) < 1.0 for b in betas
        ):
            raise ValueError(
                f"{who}: inner_betas must be two numbers in [0, 1), got {inner_betas!r}"
            )
        inner_epsilon = check_rate(inner_epsilon, "inner_epsilon", who)
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(
                f"{who}: batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}"
            )
        if batch_norm == "pooled" and not self._pooled_batch_norm:
            raise ValueError(
                f"{who}: batch_norm='pooled' is ANIL's (its feature extractor runs once over "
                "support and query together); this inner loop re-runs the whole network on "
                "the support. Use 'transductive', 'support' or 'running'"
            )
        if batch_norm != "transductive" and not self._batch_norm_modes:
            raise ValueError(
                f"{who}: batch_norm={batch_norm!r} is not supported (its inner loop runs the "
                "feature extractor outside a functional call); use 'transductive'"
            )
        inner_lr = check_rate(inner_lr, "inner_lr", who)
        inner_steps = check_count(inner_steps, "inner_steps", who)
        first_order = check_flag(first_order, "first_order", who)
        trace = check_flag(trace, "trace", who)
        super().__init__(model, loss=loss, meta_optimizer=meta_optimizer, meta_lr=meta_lr)
        # trace=True: the vectorised meta-step (inner loop, second-order meta-gradient and
        # the meta-optimizer's update) is recorded once per batch shape by
        # metalearn.function and replayed from C on later iterations
        self.trace = trace
        self._traced_step = None
        self._traced_config = None
        if vectorize not in ("auto", True, False):
            raise ValueError(
                f"{type(self).__name__}: vectorize must be 'auto', True or False, got {vectorize!r}"
            )
        self.vectorize = vectorize
        self._plan = None
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.batch_norm = batch_norm
        self._pending_statistics = []
        self.inner_optimizer = inner_optimizer
        self.inner_momentum = float(inner_momentum)
        self.inner_betas = (float(betas[0]), float(betas[1]))
        self.inner_epsilon = float(inner_epsilon)
        # (kept out of vars(): not in a checkpoint's fingerprint, so a run may resume with
        # either setting, and checkpoints written before the setting existed still load)
        self._gradient_checkpointing = gradient_checkpointing

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the meta-gradient is taken task by task with each inner step recomputed
        (the constructor's argument; may be set, checked the same way)."""
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self._gradient_checkpointing = self._checked_checkpointing(value, self.vectorize)

    def _checked_checkpointing(self, value, vectorize):
        who = type(self).__name__
        value = check_flag(value, "gradient_checkpointing", who)
        if value and not self._checkpointed_inner_loop:
            raise ValueError(
                f"{who}: gradient_checkpointing=True is not supported (its inner loop is "
                "not a plain step of the inner weights from the meta-weights); use False"
            )
        if value and vectorize is True:
            raise ValueError(
                f"{who}: gradient_checkpointing=True runs the tasks one at a time, "
                "vectorize=True runs them together; use vectorize='auto' or False"
            )
        return bool(value)

    # ------------------------------------------------------------ the pieces
    def _meta_params(self):
        """The tensors the meta-optimizer updates."""
        return self.model.trainable_weights

    def _inner_params(self):
        """The weights the inner loop adapts (all trainable weights for MAML)."""
        return self.model.trainable_weights

    def _inner_update(self, fast, grads):
        lr = self.inner_lr
        return [w - lr * g for w, g in zip(fast, grads)]

    def _support_input(self, x):
        return to_tensor(x)

    def _forward(self, fast, x):
        """Model output with the adapted weights `fast` on input `x` (a prepared input)."""
        return functional_call(self.model, fast, x, training=True)

    def _query_output(self, fast, query_x, support_x=None):
        qx = self._support_input(query_x)
        if self.batch_norm == "transductive" or support_x is None:
            return self._forward(fast, qx)
        return self._query_forward(fast, qx, self._support_input(support_x))

    def _query_forward(self, fast, qx, sx):
        """The query's output with the adapted weights, normalised as ``batch_norm`` says
        (qx, sx prepared inputs)."""
        mode = self.batch_norm
        if mode == "support":
            n = int(sx.shape[0])
            with batch_norm_statistics(("rows", n)):
                out = self._forward(fast, _core.concat([sx, qx], axis=0))
            return _core.narrow(out, 0, n, int(out.shape[0]) - n)
        if mode == "running":
            return functional_call(self.model, self._full_weights(fast), qx, training=False)
        return self._forward(fast, qx)

    def _collect_statistics(self, fast, sx):
        """Running mode, meta-training: notes this task's adapted weights and support set;
        ``_flush_statistics`` moves the moving statistics towards their statistics after
        the meta-update (the query's graph reads the moving statistics, so they may not
        change before its gradient is taken)."""
        if self.batch_norm == "running":
            # copies of all the weights as they are now: ANIL's body weights are the
            # model's Variables, which the meta-update is about to overwrite
            with _core_no_grad():
                full = [w.detach() * 1.0 for w in self._full_weights(fast)]
            self._pending_statistics.append((full, sx.detach()))

    def _flush_statistics(self, apply=True):
        pending, self._pending_statistics = self._pending_statistics, []
        if not apply:
            return
        for full, sx in pending:  # in task order: the same bits for any thread count
            with _core_no_grad(), batch_norm_statistics("update"):
                functional_call(self.model, full, sx, training=True)

    def _full_weights(self, fast):
        """The model's trainable weights with the adapted ones in place."""
        return fast

    # ------------------------------------------------------------ inner loop
    def _inner_step(self, step, fast, grads):
        """Inner step `step` (0-based): ``_inner_update``. A variant whose update depends
        on the step (MAML++'s per-step rates) overrides this, not the loop."""
        return self._inner_update(fast, grads)

    def _inner_apply(self, step, fast, grads, state):
        """Inner step `step` (0-based) by the inner optimizer: (new weights, new state).
        Core ops throughout, so the meta-gradient differentiates through the moments."""
        opt = self.inner_optimizer
        if opt == "sgd":
            return self._inner_step(step, fast, grads), state
        lr = self.inner_lr
        if opt == "momentum":  # torch.optim.SGD(momentum=mu): b_1 = g, b_t = mu b + g
            mu = self.inner_momentum
            bufs = list(grads) if state is None else [b * mu + g for b, g in zip(state, grads)]
            return [w - lr * b for w, b in zip(fast, bufs)], bufs
        b1, b2 = self.inner_betas  # Adam (Kingma & Ba 2015, Algorithm 1), moments from 0
        t = step + 1
        if state is None:
            m = [g * (1.0 - b1) for g in grads]
            v = [g * g * (1.0 - b2) for g in grads]
        else:
            m = [mm * b1 + g * (1.0 - b1) for mm, g in zip(state[0], grads)]
            v = [vv * b2 + g * g * (1.0 - b2) for vv, g in zip(state[1], grads)]
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        eps = self.inner_epsilon
        # sqrt(v_hat + 1e-30): the same value in float32 wherever v_hat > 1e-23, and a
        # finite derivative where a gradient is exactly zero (a ReLU unit that never
        # fires), where sqrt'(0) = inf would make the second-order meta-gradient NaN
        # (as PyTorch's Adam differentiated twice does)
        new = [
            w - (mm * (lr / c1)) / (_core.sqrt(vv * (1.0 / c2) + 1e-30) + eps)
            for w, mm, vv in zip(fast, m, v)
        ]
        return new, (m, v)

    def _inner_loop(self, x, y, steps, create_graph, detach=False, record=None):
        """Runs `steps` inner SGD steps from the meta-weights.

        Args:
            x: prepared support input; y: targets.
            create_graph: record the inner gradients (second-order meta-gradients).
            detach: cut each step from the graph (evaluation: nothing to differentiate).
            record: optional set of step counts at which to yield intermediate weights.

        Returns:
            The list of adapted tensors (``record`` given: list of (step, weights)).
        """
        fast = list(self._inner_params())
        trail = []
        state = None  # the inner optimizer's moments (none for SGD)
        if record is not None and 0 in record:
            trail.append((0, fast))
        for step in range(1, steps + 1):
            loss = self._loss_fn(y, self._forward(fast, x))
            grads = _core.grad(loss, fast, create_graph=create_graph)
            if detach:
                with _core_no_grad():
                    fast, state = self._inner_apply(step - 1, fast, grads, state)
                for w in fast:
                    w.requires_grad = True
            else:
                fast, state = self._inner_apply(step - 1, fast, grads, state)
            if record is not None and step in record:
                trail.append((step, fast))
        return trail if record is not None else fast

    # ------------------------------------------------------ vectorised path
    def _vector_plan(self):
        """The model's batched form (``metalearn.keras.batched``) for running a meta-batch
        at once, or None when the tasks run one by one."""
        if self._plan is not None:
            return self._plan or None
        plan = None
        if (
            self._batched_inner_loop
            and self.batch_norm == "transductive"
            and self.inner_optimizer == "sgd"
            and self.vectorize is not False
            and (self.loss is None or isinstance(self.loss, str))
        ):
            plan = batched_plan(self.model, self._inner_params())
            if plan is not None and self.vectorize == "auto" and _has_conv(self.model):
                # measured, not guessed: a conv meta-batch vectorised runs the same per-task
                # conv kernels as the loop and holds every task's activations at once (MAML
                # conv4-32 84x84, 5 steps, meta-batch 4: 7.8 GB and 2x the loop's time;
                # conv4 28x28: 0.85-1.05x; conv4 28x28 5w1s q15 at meta-batch 32: 0.92x
                # the loop and 7.4 GB resident), so "auto" keeps conv nets on the loop;
                # vectorize=True still runs them vectorised and traced
                plan = None
            if plan is None and self.vectorize is True:
                raise ValueError(
                    f"{type(self).__name__}: vectorize=True needs a model whose "
                    "layers all have a batched form (a Sequential of Dense/Conv2D/"
                    "MaxPooling2D/AveragePooling2D/Activation/Flatten/BatchNormalization) "
                    "and a built-in loss"
                )
        self._plan = plan if plan is not None else False
        return plan

    def _low_rank_kernels(self, plan, n_support, steps=None):
        """Dense kernels whose per-task adapted copies are kept as shared kernel + low-rank
        updates. One inner SGD step changes a dense kernel by -lr * X^T dZ (X the layer's
        input, dZ the loss's gradient at its output, n_support rows each), so after s steps
        a task's kernel is W plus a rank-(s * n_support) term. Carrying the factors instead
        of (B, K, N) copies saves memory traffic and runs the shared part as one large
        GEMM. Per row a task then pays r * (K + N) multiply-adds for its correction
        (x A^T, then times D) instead of K * N with its own copy, which it would also have
        to build (K * N * n per step): the factors win when r * (K + N) < K * N (the
        784x256 first layer of MAML's Omniglot MLP at 5-way 1-shot: rank 5; the 40x40
        hidden layer of the sinusoid MLP at K = 10: rank 10; not its 1x40 and 40x1 ends).
        Only when an inner step keeps that rank (_low_rank_inner_step); `steps` the inner
        steps the factors must carry (default ``inner_steps``)."""
        if not self._low_rank_inner_step:
            return set()
        weights = self._inner_params()
        rank = max(1, self.inner_steps if steps is None else steps) * n_support
        out = set()
        for k in plan.kernels:
            kk, nn = (int(d) for d in weights[k].shape)
            if rank * (kk + nn) < kk * nn:
                out.add(k)
        return out

    def _weight_step(self, i, w, g):
        """The vectorised inner step of inner weight `i` beside low-rank kernels."""
        return w - self.inner_lr * g

    def _low_rank_factors(self, k, x_in, dz):
        """The factors a low-rank kernel's step ``-inner_lr * x_in^T dz`` is carried by
        (Meta-Curvature applies its curvature to each)."""
        return x_in, dz

    def _vectorised_loss(self, plan, sx, sy, qx, qy):
        """The meta-batch's mean query loss after the inner loop (a graph back to the
        meta-parameters) and the query output; sx/qx (B, n, ...) tensors."""
        low_rank = self._low_rank_kernels(plan, int(sx.shape[1]))
        steps = self._vectorised_steps(
            plan, sx, sy, self.inner_steps, not self.first_order, low_rank
        )
        for fast, factors in steps:
            pass
        out = plan(fast, qx, factors)
        return self._loss_fn(qy, out), out

    def _vectorised_steps(
        self, plan, sx, sy, steps, create_graph=False, low_rank=frozenset(), first=None
    ):
        """The meta-batch's inner loops at once: yields (fast, factors) before the first
        and after each of `steps` inner steps. `fast` holds the inner weights as per-task
        copies (B, ...), but for the kernels in `low_rank` (``_low_rank_kernels``), which
        stay shared and carry each task's updates as factors {k: [(-lr, X, dZ), ...]};
        ``plan(fast, x, factors)`` runs the adapted tasks. The loss differentiated is the
        sum over tasks of each task's mean support loss (all tasks have n points): its
        gradient w.r.t. a task's copy, or a task's rows of a layer's output, is that task's
        own. `first`: (fast, grads) of the first step when the caller has them (no
        low-rank kernels). MAML's meta-step, Reptile's and MetaLearner's records all step
        through here."""
        b = int(sx.shape[0])
        params = self._inner_params()
        if first is not None:
            fast, grads = first
        else:
            fast = [
                w if i in low_rank else _core.broadcast_to(w, (b,) + tuple(w.shape))
                for i, w in enumerate(params)
            ]
        ks = sorted(low_rank)
        dense = [i for i in range(len(params)) if i not in low_rank]
        factors = {k: [] for k in ks}
        yield fast, factors
        for step in range(steps):
            record = {}
            if step or first is None:
                inner = self._loss_fn(sy, plan(fast, sx, factors, record)) * float(b)
                grads = _core.grad(
                    inner,
                    [fast[i] for i in dense] + [record[k][1] for k in ks],
                    create_graph=create_graph,
                )
            if not ks:  # (Meta-SGD's learned per-weight rates come in here)
                fast = self._inner_update(fast, grads)
                yield fast, factors
                continue
            fast, factors = list(fast), {k: list(v) for k, v in factors.items()}
            for i, g in zip(dense, grads):
                fast[i] = self._weight_step(i, fast[i], g)
            for k, dz in zip(ks, grads[len(dense) :]):
                x_in = record[k][0]
                if not create_graph:  # first order: the update is a constant, as g is
                    x_in = x_in.detach()
                x_in, dz = self._low_rank_factors(k, x_in, dz)
                factors[k].append((-self.inner_lr, x_in, dz))  # W_b -= lr X_b^T dZ_b
            yield fast, factors

    def _meta_loss_vectorised(self, plan, batch):
        sx, qx = to_tensor(batch.support_x), to_tensor(batch.query_x)
        qy = batch.query_y
        meta_loss, out = self._vectorised_loss(plan, sx, batch.support_y, qx, qy)
        if self.classification:
            metric = float(np.mean(np.argmax(np.asarray(out), -1) == np.asarray(qy)))
        else:
            metric = float(meta_loss.item())
        return meta_loss, metric

    def _meta_loss(self, batch):
        """Mean query loss of the adapted weights over a task batch (a Tensor with a graph
        back to the meta-parameters), and the per-task post-adaptation metric."""
        plan = self._vector_plan()
        if plan is not None:
            return self._meta_loss_vectorised(plan, batch)
        total, metrics = None, []
        n = len(batch.support_x)
        for i in range(n):
            lq, metric = self._task_loss(batch, i)
            total = lq if total is None else total + lq
            metrics.append(metric)
        return total * (1.0 / n), float(np.mean(metrics))

    def _task_inputs(self, batch, i):
        """Task `i`'s prepared (support, query) inputs."""
        return self._support_input(batch.support_x[i]), self._support_input(batch.query_x[i])

    def _task_loss(self, batch, i):
        """Task `i`'s query loss after the inner loop (a graph back to the
        meta-parameters) and its metric."""
        sx, qx = self._task_inputs(batch, i)
        fast = self._inner_loop(sx, batch.support_y[i], self.inner_steps, not self.first_order)
        return self._query_loss(batch, i, fast, qx, sx)

    def _query_loss(self, batch, i, fast, qx, sx):
        out = self._query_forward(fast, qx, sx)
        self._collect_statistics(fast, sx)
        lq = self._loss_fn(batch.query_y[i], out)
        qy = batch.query_y[i]
        return lq, self._metric(out, qy, lq.item()) if self.classification else lq.item()

    # ------------------------------------------------ gradient checkpointing
    def _loss_and_gradients(self, batch, params):
        """(meta-loss, metric, meta-gradients of `params`) of a task batch: one graph for
        the batch, or (gradient_checkpointing) task by task."""
        if not self.gradient_checkpointing:
            meta_loss, metric = self._meta_loss(batch)
            if not self._meta_params_may_be_unused:
                return meta_loss, metric, _core.grad(meta_loss, params)
            grads = _core.grad(meta_loss, params, allow_unused=True)
            return meta_loss, metric, _zeros_where_unused(grads, params)
        n = len(batch.support_x)
        scale = 1.0 / n
        total, metrics, acc = None, [], None
        for i in range(n):
            if self.first_order:  # nothing to recompute: the task's graph, then freed
                lq, metric = self._task_loss(batch, i)
                grads = _core.grad(lq * scale, params, allow_unused=True)
            else:
                lq, metric, grads = self._recomputed_task_gradients(batch, i, params, scale)
            lq = lq.detach()
            total = lq if total is None else total + lq
            metrics.append(metric)
            with _core_no_grad():
                if acc is None:
                    acc = list(grads)
                else:
                    acc = [
                        a if g is None else g if a is None else a + g for a, g in zip(acc, grads)
                    ]
        # (a meta-parameter no task used: a zero gradient, as one graph gives)
        with _core_no_grad():
            acc = _zeros_where_unused(acc, params)
        return total * scale, float(np.mean(metrics)), acc

    def _state_list(self, state):
        """The inner optimizer's state as a flat list of tensors (none for SGD)."""
        if state is None:
            return []
        if self.inner_optimizer == "adam":
            return list(state[0]) + list(state[1])
        return list(state)

    def _recomputed_task_gradients(self, batch, i, params, scale):
        """Task `i`'s (query loss, metric, scale * its meta-gradients of `params`) with its
        inner steps recomputed: the loop runs without a graph keeping the fast weights
        (and the inner optimizer's state) of every step; the query's gradient is taken at
        the last; then, from the last step back, each step is re-run from its kept inputs
        with its graph and its vector-Jacobian product carries the gradient to its
        inputs (and to the meta-parameters the step reads: Meta-SGD's rates), and that
        graph is dropped before the step before it is re-run."""
        sx, qx = self._task_inputs(batch, i)
        sy = batch.support_y[i]
        inner = list(self._inner_params())
        m = len(inner)
        inner_ids = {id(w) for w in inner}
        extra = [p for p in params if id(p) not in inner_ids]
        # the forward: fast weights and state of each step, no graph between steps
        fast, state = inner, None
        kept, rng = [], []
        for k in range(self.inner_steps):
            kept.append((fast, state))
            rng.append(_core.rng_state())  # a re-run draws the same dropout masks
            loss = self._loss_fn(sy, self._forward(fast, sx))
            grads = _core.grad(loss, fast)
            with _core_no_grad():
                fast, state = self._inner_apply(k, fast, grads, state)
            del loss, grads  # (this step's graph, before the next step's forward)
            for w in fast + self._state_list(state):
                w.requires_grad = True
        lq, metric = self._query_loss(batch, i, fast, qx, sx)
        g = _core.grad(lq * scale, fast + extra, allow_unused=True)
        lq = lq.detach()  # the query's graph goes before the steps are re-run
        g_fast, g_extra, g_state = list(g[:m]), list(g[m:]), []
        after = _core.rng_state()
        try:
            for k in reversed(range(self.inner_steps)):
                fast, state = kept[k]
                flat_state = self._state_list(state)
                _core.rng_set_state(rng[k])
                loss = self._loss_fn(sy, self._forward(fast, sx))
                grads = _core.grad(loss, fast, create_graph=True)
                new, new_state = self._inner_apply(k, fast, grads, state)
                outputs, seeds = list(new), list(g_fast)
                if g_state:  # the next step read this step's state (its last one: no)
                    outputs += self._state_list(new_state)
                    seeds += g_state
                keep = [j for j, s in enumerate(seeds) if s is not None]
                vj = _core.grad(
                    [outputs[j] for j in keep],
                    fast + flat_state + extra,
                    grad_outputs=[seeds[j] for j in keep],
                    allow_unused=True,
                )
                del loss, grads, new, new_state, outputs  # this step's graph
                g_fast = list(vj[:m])
                g_state = list(vj[m : m + len(flat_state)])
                with _core_no_grad():
                    for j, v in enumerate(vj[m + len(flat_state) :]):
                        if v is not None:
                            g_extra[j] = v if g_extra[j] is None else g_extra[j] + v
        finally:
            _core.rng_set_state(after)
        by_id = {id(w): gw for w, gw in zip(inner, g_fast)}
        by_id.update({id(p): gp for p, gp in zip(extra, g_extra)})
        return lq, metric, [by_id[id(p)] for p in params]

    def meta_gradients(self, batch: Task) -> Tuple[float, Any]:
        """The meta-gradient of the mean query loss for a Task batch, without applying it.

        Returns:
            ``(meta_loss, grads)``: the loss as a float and one Tensor per meta-parameter
            (``model.trainable_weights``, plus the learned rates for Meta-SGD).
        """
        self._prepare(batch)
        params = self._meta_params()
        try:
            meta_loss, _, grads = self._loss_and_gradients(batch, params)
        finally:
            self._flush_statistics(apply=False)  # a query, not a training step
        return float(meta_loss.item()), grads

    def _traced_update(self, plan):
        """The meta-optimizer's update as core ops (Optimizer._traced_update) when the
        vectorised meta-step may be traced, else None."""
        traced_update = getattr(self.meta_optimizer, "_traced_update", None)
        if not self.trace or plan is None or traced_update is None:
            return None
        return traced_update()

    def _traced_meta_step(self, plan, update, batch):
        """The vectorised meta-step through a metalearn.function trace: the first batch of a
        shape runs eagerly while recording; later batches replay the record from C."""
        config = (self.inner_lr, self.inner_steps, self.first_order, id(self.meta_optimizer))
        if self._traced_step is None or self._traced_config != config:
            from metalearn.function import function

            self._traced_config = config
            params = self._meta_params()

            def step(sx, sy, qx, qy):
                meta_loss, out = self._vectorised_loss(plan, sx, sy, qx, qy)
                update(params, _core.grad(meta_loss, params))
                return meta_loss, out

            self._traced_step = function(step)
        labels = (
            (lambda y: to_tensor(np.asarray(y, dtype=np.float32)))
            if self.classification
            else to_tensor
        )
        meta_loss, out = self._traced_step(
            to_tensor(batch.support_x),
            labels(batch.support_y),
            to_tensor(batch.query_x),
            labels(batch.query_y),
        )
        self.meta_optimizer._count_step()
        loss = float(meta_loss.item())
        if self.classification:
            metric = float(np.mean(np.argmax(np.asarray(out), -1) == np.asarray(batch.query_y)))
        else:
            metric = loss
        return loss, metric

    def _meta_step(self, batch):
        if self.gradient_checkpointing:  # the tasks one at a time (not vectorised, traced)
            return self._eager_meta_step(batch)
        plan = self._vector_plan()
        # under enable_check_numerics the step runs eagerly, so that the gradients can be
        # checked before the update (the trace applies it inside)
        update = None if debugging._numerics_checks else self._traced_update(plan)
        if update is not None:
            return self._traced_meta_step(plan, update, batch)
        return self._eager_meta_step(batch)

    def _eager_meta_step(self, batch):
        """One meta-update through the tape (the meta-loss, its gradients, the checks, the
        update); a refused step changes nothing."""
        self._pending_statistics = []  # (what a failed earlier step may have left)
        params = self._meta_params()
        try:
            meta_loss, metric, grads = self._loss_and_gradients(batch, params)
            self._check_meta_step(meta_loss, grads, params)
        except BaseException:
            self._flush_statistics(apply=False)  # a refused step changes nothing
            raise
        self._apply_meta_gradients(grads, params)
        self._flush_statistics()
        return float(meta_loss.item()), metric

    # ------------------------------------------------------------ adaptation
    def _steps(self, steps):
        if steps is None:
            return self.inner_steps
        return check_count(steps, "steps", f"{type(self).__name__}.adapt")

    def adapted_weights(
        self, support_x: ArrayLike, support_y: ArrayLike, steps: Optional[int] = None
    ) -> Any:
        """The adapted weights (tensors, detached) for one task's support set, without
        building a model; ``functional_call(maml.model, weights, x)`` runs them."""
        who = f"{type(self).__name__}.adapted_weights"
        if steps is not None:
            steps = check_count(steps, "steps", who)
        check_support(support_x, support_y, who)
        self._prepare(Task(support_x, support_y, support_x, support_y))
        fast = self._adapted_weights(support_x, support_y, steps)
        self._check_adapted(fast)
        return fast

    def adapt(self, support_x: ArrayLike, support_y: ArrayLike, steps: Optional[int] = None) -> Any:
        model = super().adapt(support_x, support_y, steps)
        if self.batch_norm == "support":
            _store_support_statistics(model, support_x)
        return model

    def _adapted_weights(self, support_x, support_y, steps):
        fast = self._inner_loop(
            self._support_input(support_x),
            support_y,
            self._steps(steps),
            create_graph=False,
            detach=True,
        )
        return self._full_weights(fast)

    def _curve_input(self, support_x):
        """The prepared support input of ``_adaptation_curve`` (evaluate's episodes)."""
        return self._support_input(support_x)

    def _adaptation_curve(self, support_x, support_y, step_list):
        record = set(self._steps(s) for s in step_list)
        trail = dict(
            self._inner_loop(
                self._curve_input(support_x),
                support_y,
                max(record),
                create_graph=False,
                detach=True,
                record=record,
            )
        )
        for s in step_list:
            yield s, trail[self._steps(s)]

    def __repr__(self):
        return (
            f"<{type(self).__name__} inner_lr={self.inner_lr} inner_steps={self.inner_steps} "
            f"first_order={self.first_order}>"
        )


def _zeros_where_unused(grads, params):
    """`grads` with each None (a meta-parameter the loss did not reach) as zeros of its
    parameter's shape."""
    return [_core.zeros(tuple(p.shape)) if g is None else g for g, p in zip(grads, params)]


# MAML.__init__'s keyword arguments, which its subclasses pass through (_maml_arguments)
_MAML_ARGUMENTS = tuple(inspect.signature(MAML.__init__).parameters)[1:]


def _maml_arguments(args: Dict[str, Any], **fixed: Any) -> Dict[str, Any]:
    """MAML.__init__'s arguments from a subclass constructor's ``locals()``, taken as its
    first statement (so that only its parameters are there): those of MAML's names that
    its signature has, then ``fixed``, the ones it sets itself. A subclass keeps its own
    signature, defaults and documentation without listing the pass-through again."""
    kwargs = {name: args[name] for name in _MAML_ARGUMENTS if name in args}
    kwargs.update(fixed)
    return kwargs


class MetaSGD(MAML):
    """Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for
    Few-Shot Learning").

    Like MAML, but the inner step size is a learned tensor ``alpha`` of the same shape as
    each weight (a per-parameter learning rate *and* direction), meta-trained jointly
    with the initialisation:

        theta_i' = theta - alpha * grad_theta L_support(T_i; theta)      (elementwise)
        (theta, alpha) = meta_optimizer step on grad_(theta, alpha) mean_i L_query(T_i; theta_i')

    The paper uses one inner step; more are allowed. ``learning_rates`` holds the alphas
    (Variables, initialised to `inner_lr`).

    Args:
        model, inner_steps, first_order, meta_optimizer, meta_lr, loss, vectorize,
            batch_norm, gradient_checkpointing: as for MAML (checkpointed, the re-run
            steps' products carry the rates' gradients too).
        inner_lr: initial value of every alpha (paper: drawn from [0.005, 0.1]).
    """

    def __init__(
        self,
        model: Any,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
        loss: Any = None,
        vectorize: Union[str, bool] = "auto",
        batch_norm: str = "transductive",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(**_maml_arguments(locals()))
        self.learning_rates = None

    def _prepare(self, task):
        super()._prepare(task)
        if self.learning_rates is None:
            from metalearn.tape import Variable

            self.learning_rates = [
                Variable(
                    np.full(tuple(w.shape), self.inner_lr, np.float32),
                    name=f"meta_sgd_lr/{getattr(w, 'name', i)}",
                )
                for i, w in enumerate(self.model.trainable_weights)
            ]

    def _meta_params(self):
        return list(self.model.trainable_weights) + list(self.learning_rates)

    _low_rank_inner_step = False  # a learned rate per weight: full-rank kernel updates

    def _inner_update(self, fast, grads):
        return [w - a * g for w, a, g in zip(fast, self.learning_rates, grads)]


class ANIL(MAML):
    """Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, "Rapid Learning or
    Feature Reuse?").

    MAML where the inner loop adapts only the head (the last layer's weights); the body
    (feature extractor) is meta-learned in the outer loop only:

        phi_i' = phi - inner_lr * grad_phi L_support(T_i; body_theta, phi)   (head phi only)
        (theta, phi) = meta_optimizer step on grad mean_i L_query(T_i; body_theta, phi_i')

    For a ``Sequential`` model the body runs once per task and only the head is re-run
    in the inner loop, which is what makes ANIL fast.

    ``batch_norm`` has MAML's meaning (the body's BatchNormalization layers normalise the
    query with the query batch's statistics, the support set's, or the moving ones that
    meta-training moves towards each training task's support statistics). The modes
    other than ``"transductive"`` run the whole model in a functional call at each inner
    step (the body's features are not computed once per task), which costs more.
    ``"pooled"`` runs the body once over a task's support and query as one batch, so both
    are normalised with the statistics of the two together, as learn2learn's ANIL examples
    do (``features(data)`` on the whole batch before splitting it); in meta-training and
    ``evaluate``. ``adapt`` and ``adapted_weights`` see no query, so there the support is
    normalised with its own statistics. It needs a ``Sequential`` model ending in its head.

    Args: as for MAML (``gradient_checkpointing=True`` is refused: the head's inner loop
    keeps little, and the body's graph is what holds memory).
    """

    _batched_inner_loop = False  # the head re-run on features computed once per task
    _pooled_batch_norm = True
    # the head's inner loop keeps little (the body runs once per task, with a graph the
    # re-run steps would have to reach): gradient_checkpointing is refused
    _checkpointed_inner_loop = False

    def _prepare(self, task):
        super()._prepare(task)
        if getattr(self, "_head_layer", None) is None:
            leaves = [l for l in _leaf_layers(self.model, []) if l.trainable_weights]
            if not leaves:
                raise ValueError("ANIL: the model has no trainable layer")
            head = leaves[-1]
            self._head_layer = head
            head_ids = {id(w) for w in head.trainable_weights}
            all_w = self.model.trainable_weights
            self._head_index = [i for i, w in enumerate(all_w) if id(w) in head_ids]
            from metalearn.keras.models import Sequential

            self._split = isinstance(self.model, Sequential) and self.model.layers[-1] is head
        if self.batch_norm == "pooled" and not self._split:
            raise ValueError(
                "ANIL: batch_norm='pooled' needs a Sequential model whose last layer is the "
                f"head (the body runs once over support and query); got {type(self.model).__name__}"
            )
        # evaluate's episode: its query joins the support's batch in the adaptation curve
        self._episode = task if self.batch_norm == "pooled" else None
        # (its support_x, query_x, the query features of the curve's pass)
        self._episode_query = None

    def _inner_params(self):
        all_w = self.model.trainable_weights
        return [all_w[i] for i in self._head_index]

    def _full_weights(self, fast):
        full = list(self.model.trainable_weights)
        for i, w in zip(self._head_index, fast):
            full[i] = w
        return full

    def _body_once(self):
        """Whether the body runs once per task, as plain layer calls, and the inner loop
        re-runs only the head: for a Sequential model ending in the head, in the
        transductive mode (the others normalise the query through the support's
        statistics or the moving ones, in a functional call of the whole model)."""
        return self._split and self.batch_norm in ("transductive", "pooled")

    def _pooled_inputs(self, support_x, query_x):
        """(support features, query features) from one pass of the body over the support
        and query rows together (batch_norm="pooled")."""
        sx, qx = to_tensor(support_x), to_tensor(query_x)
        n, m = int(sx.shape[0]), int(qx.shape[0])
        both = self._support_input(_core.concat([sx, qx], axis=0))
        return _core.narrow(both, 0, 0, n), _core.narrow(both, 0, n, m)

    def _task_inputs(self, batch, i):
        if self.batch_norm != "pooled":
            return super()._task_inputs(batch, i)
        return self._pooled_inputs(batch.support_x[i], batch.query_x[i])

    def _curve_input(self, support_x):
        episode = getattr(self, "_episode", None)
        if self.batch_norm == "pooled" and episode is not None and episode.support_x is support_x:
            sf, qf = self._pooled_inputs(support_x, episode.query_x)
            # the same pass gave the query's features: evaluate's _query_output reads them
            # instead of running the body over support and query again
            self._episode_query = (support_x, episode.query_x, qf.detach())
            return sf
        return self._support_input(support_x)

    def _query_output(self, fast, query_x, support_x=None):
        if self.batch_norm == "pooled" and support_x is not None:
            kept = getattr(self, "_episode_query", None)
            # pooled features depend on both sets: reused only for the pass's own pair
            if kept is not None and kept[0] is support_x and kept[1] is query_x:
                return self._forward(fast, kept[2])
            return self._forward(fast, self._pooled_inputs(support_x, query_x)[1])
        return super()._query_output(fast, query_x, support_x)

    def _support_input(self, x):
        x = to_tensor(x)
        if self._body_once():  # body once per task: features with a graph back to the body
            for layer in _run_order(self.model.layers[:-1]):  # relu after a max pool
                own = layer.trainable_weights
                # a functional call, as MAML's forward: batch statistics that leave the
                # moving ones as they are (a plain call would move them on every pass)
                x = (
                    functional_call(layer, own, x, training=True)
                    if own
                    else layer(x, training=True)
                )
        return x

    def _forward(self, fast, x):
        if self._body_once():
            return functional_call(self._head_layer, fast, x, training=True)
        return functional_call(self.model, self._full_weights(fast), x, training=True)

    def _adapted_weights(self, support_x, support_y, steps):
        fast = self._inner_loop(
            self._support_input(support_x),
            support_y,
            self._steps(steps),
            create_graph=False,
            detach=True,
        )
        return self._full_weights(fast)


def _has_conv(model) -> bool:
    """Whether `model` (nested models included) has a Conv2D layer."""
    from metalearn.keras.conv_layers import Conv2D

    return any(isinstance(l, Conv2D) for l in _leaf_layers(model, []))


def _store_support_statistics(model, support_x):
    """Sets every trainable BatchNormalization layer's moving statistics to the batch
    statistics of `support_x` in `model` (momentum 0 for one training-mode call), so
    inference normalises with the support's statistics (batch_norm="support")."""
    from metalearn.keras.conv_layers import BatchNormalization

    layers = [l for l in _leaf_layers(model, []) if isinstance(l, BatchNormalization)]
    saved = [l.momentum for l in layers]
    try:
        for l in layers:
            l.momentum = 0.0
        with _core_no_grad():
            model(to_tensor(support_x), training=True)
    finally:
        for l, m in zip(layers, saved):
            l.momentum = m
