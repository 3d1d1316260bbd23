"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms")."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from metalearn import _core, _tasksum, debugging
from metalearn import random as _random

from ._base import _core_no_grad, check_count, to_tensor
from .maml import MAML

#: what the inner optimizer's state does between tasks
INNER_STATES = ("reset", "carry")

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile: move the initialisation towards the weights each task trains to.

    For each task of a meta-batch, train a copy of the weights with `inner_steps` plain
    SGD steps on the support set (no second derivatives, no graph across steps), then
    move the meta-weights towards the mean of the results (the batched version of the
    paper's Algorithm 2):

        phi_i = SGD^k(theta; support of T_i)              (k = inner_steps)
        theta = theta + epsilon * mean_i (phi_i - theta)

    The update is handed to the meta-optimizer as the gradient ``theta - mean_i phi_i``,
    so with ``meta_optimizer="sgd"`` (default) and ``meta_lr=epsilon`` it is exactly the
    rule above; ``"adam"`` gives the Adam variant the paper also reports.

    Args:
        model: a Keras model.
        inner_lr: inner SGD step size.
        inner_steps: k, inner steps per task (paper: 5-32; the gain over joint training
            needs k > 1).
        meta_lr: epsilon, the outer step size (``epsilon=`` is accepted as an alias).
            The authors' Omniglot runs anneal it linearly from 1.0 to 0 over the run:
            ``meta_optimizer=optimizers.SGD(schedules.PolynomialDecay(1.0, iterations,
            0.0))``, applied in C by the traced step too.
        meta_optimizer: ``"sgd"`` (the paper's rule), ``"adam"`` or an optimizer.
        loss: as for MAML.
        vectorize: ``"auto"`` adapts the tasks of a meta-batch together (per-task weight
            copies through the model's batched form, as MAML does) when the model has one
            and the loss is built in; False loops over the tasks.
        trace: with the vectorised form, the meta-iteration (inner loop, direction and the
            meta-optimizer's update) is recorded once per batch shape by
            ``metalearn.function`` and replayed from C afterwards; the numbers are the
            loop's up to float32 rounding (the mean over tasks is summed in another
            order).
        batch_norm: as for MAML: the statistics BatchNormalization layers normalise the
            query with after adaptation (``"transductive"``, ``"support"`` or
            ``"running"``; the support always uses its own batch's). Reptile's update
            does not read the query, so the mode changes what ``evaluate`` and ``adapt``
            give and the query loss ``fit`` reports; in ``"running"`` mode meta-training
            moves the moving statistics towards each task's adapted support statistics
            (after the meta-update, in task order). The modes other than transductive
            run the tasks one by one (not vectorised or traced).
        inner_optimizer, inner_momentum, inner_betas, inner_epsilon: the inner loop's
            update rule, as for MAML (``"sgd"``, ``"momentum"``, ``"adam"``); other than
            SGD the tasks run one by one.
        inner_batch_size: None (default) takes every inner step on the whole support set;
            an integer takes each on a mini-batch of that many support examples, cut in
            order from random permutations of the support (a new one when the last is
            used up), as the authors' ``_mini_batches`` (without replacement) does. A
            support set no larger than the batch is used whole at every step (the same
            loss, and the same batch statistics, as the authors' batches whenever the batch
            size is a multiple of the support's). The tasks then run one by one. Meta-
            training draws the permutations from metalearn's global generator (so
            ``metalearn.random.set_seed`` repeats a run, and checkpoints resume it
            exactly); ``adapt`` and ``evaluate`` from a fixed seed, so the same support
            set always gives the same adapted weights.
        inner_state: ``"reset"`` (default) starts each task's inner optimizer from zero
            moments; ``"carry"`` keeps its state (Adam's moments and step count, or the
            momentum buffer) from one task to the next and across meta-iterations, as the
            authors' code does: its TensorFlow optimizer, created once, resets the model's
            weights for each task but not its own slots. ``adapt`` and ``evaluate`` start
            from the carried state and leave it unchanged (the authors restore it after
            evaluating); a checkpoint saves it. Needs ``"momentum"`` or ``"adam"``.

    The authors' Omniglot setting (openai/supervised-reptile, run_omniglot.sh: Adam with
    beta_1 = 0 and learning rate 1e-3 in the inner loop, 5 steps on mini-batches of 10
    from 10 training shots, 5 tasks a meta-batch, the meta step annealed from 1 to 0)::

        Reptile(model, inner_lr=1e-3, inner_steps=5, inner_optimizer="adam",
                inner_betas=(0.0, 0.999), inner_batch_size=10, inner_state="carry",
                meta_optimizer=optimizers.SGD(schedules.PolynomialDecay(1.0, N, 0.0)))
    """

    def __init__(
        self,
        model: Any,
        inner_lr: float = 0.02,
        inner_steps: int = 5,
        meta_lr: float = 1.0,
        meta_optimizer: Any = "sgd",
        loss: Any = None,
        epsilon: Optional[float] = None,
        vectorize: Union[str, bool] = "auto",
        trace: bool = True,
        batch_norm: str = "transductive",
        inner_optimizer: str = "sgd",
        inner_momentum: float = 0.9,
        inner_betas: Tuple[float, float] = (0.9, 0.999),
        inner_epsilon: float = 1e-8,
        inner_batch_size: Optional[int] = None,
        inner_state: str = "reset",
    ) -> None:
        who = "Reptile"
        if epsilon is not None:
            meta_lr = epsilon
        # checked before anything is stored (the inner optimizer's name by MAML)
        if inner_batch_size is not None:
            inner_batch_size = check_count(inner_batch_size, "inner_batch_size", who, 1)
            if vectorize is True:
                raise ValueError(
                    f"{who}: inner_batch_size draws each task's mini-batches on its own; "
                    "use vectorize='auto' or False"
                )
        if inner_state not in INNER_STATES:
            raise ValueError(
                f"{who}: inner_state must be one of {INNER_STATES}, got {inner_state!r}"
            )
        if inner_state == "carry" and inner_optimizer == "sgd":
            raise ValueError(
                f"{who}: inner_state='carry' needs inner_optimizer 'momentum' or 'adam' "
                "(plain SGD has no state to carry)"
            )
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=True,
            meta_optimizer=meta_optimizer,
            meta_lr=meta_lr,
            loss=loss,
            vectorize=vectorize,
            trace=trace,
            batch_norm=batch_norm,
            inner_optimizer=inner_optimizer,
            inner_momentum=inner_momentum,
            inner_betas=inner_betas,
            inner_epsilon=inner_epsilon,
        )
        self.epsilon = self.meta_lr
        self.inner_batch_size = inner_batch_size
        self.inner_state = inner_state
        # inner_state="carry": the inner optimizer's state (tensors, so that checkpoints
        # save it) -- Adam's first moments, second moments, then the step count as a
        # (1,) tensor; momentum's buffers, then the count -- made once the model is built
        self._carried = None
        self._pending_carry = None  # a meta-step's state, kept once its update is applied

    # ------------------------------------------------ the authors' inner loop
    def _prepare(self, task):
        super()._prepare(task)
        if self.inner_state == "carry" and self._carried is None and self.model.built:
            params = self._inner_params()
            moments = 2 if self.inner_optimizer == "adam" else 1
            self._carried = [
                _core.zeros(tuple(w.shape)) for _ in range(moments) for w in params
            ] + [_core.zeros((1,))]

    def _state_tensors(self):
        """Tensors a checkpoint saves beside the weights: the carried inner state."""
        return list(self._carried or [])

    def _not_data_parallel(self):
        """Why metalearn.distributed cannot split this learner's tasks (None: it can)."""
        if self.inner_state == "carry":
            return (
                "Reptile with inner_state='carry' adapts the tasks in turn, each from the "
                "inner optimizer's state the previous one left"
            )
        if self.inner_batch_size is not None:
            return "Reptile with inner_batch_size draws the mini-batches from one generator"
        return None

    def _vector_plan(self):
        if self.inner_batch_size is not None:  # each task its own mini-batches
            return None
        return super()._vector_plan()

    def _start_state(self):
        """(inner optimizer state, steps taken) a task's inner loop starts from."""
        if self._carried is None:
            return None, 0
        n = len(self._inner_params())
        state = self._pending_carry if self._pending_carry is not None else self._carried
        *moments, count = state
        t = int(round(float(np.asarray(count)[0])))
        if t == 0:
            return None, 0
        moments = [_core.as_tensor(np.ascontiguousarray(m, np.float32)) for m in moments]
        if self.inner_optimizer == "adam":
            return (list(moments[:n]), list(moments[n:])), t
        return list(moments), t

    def _batches(self, n, steps):
        """Each inner step's support rows (None: the whole support), the authors' stream:
        permutations of the support cut in order into batches, a new one when used up."""
        b = self.inner_batch_size
        if b is None or n <= b:
            return [None] * steps
        out, cur = [], []
        while len(out) < steps:
            for i in _random.permutation(n):
                cur.append(int(i))
                if len(cur) == b:
                    out.append(np.asarray(cur, np.int64))
                    cur = []
                    if len(out) == steps:
                        break
        return out

    def _run_inner(self, x, y, steps, record=None):
        """The inner loop with mini-batches and the carried state (no graph): (adapted
        weights, or (step, weights) pairs at the steps in `record`; the final inner
        optimizer state as a carried list, or None)."""
        fast = list(self._inner_params())
        trail = [(0, fast)] if record is not None and 0 in record else []
        state, t0 = self._start_state()
        xs = np.asarray(x)
        ys = np.asarray(y)
        for step, rows in enumerate(self._batches(len(ys), steps), start=1):
            bx, by = (x, y) if rows is None else (to_tensor(xs[rows]), ys[rows])
            loss = self._loss_fn(by, self._forward(fast, bx))
            grads = _core.grad(loss, fast)
            with _core_no_grad():
                # step index t0 + step - 1: Adam's bias correction counts every step the
                # carried state has seen (TensorFlow's beta powers do)
                fast, state = self._inner_apply(t0 + step - 1, fast, grads, state)
            for w in fast:
                w.requires_grad = True
            if record is not None and step in record:
                trail.append((step, fast))
        carried = None
        if self._carried is not None and steps > 0:
            moments = (
                list(state[0]) + list(state[1]) if self.inner_optimizer == "adam" else list(state)
            )
            carried = [np.asarray(m, np.float32) for m in moments]
            carried.append(np.asarray([t0 + steps], np.float32))
        return (trail if record is not None else fast), carried

    def _inner_loop(self, x, y, steps, create_graph, detach=False, record=None):
        if self.inner_batch_size is None and self._carried is None:
            return super()._inner_loop(x, y, steps, create_graph, detach, record)
        # adapt / evaluate: mini-batches from a fixed seed, the carried state left as is
        with _random._maybe_seeded(0):
            out, _ = self._run_inner(x, y, steps, record)
        return out

    def _commit_carry(self):
        pending, self._pending_carry = self._pending_carry, None
        if pending is not None and self._carried is not None:
            for t, v in zip(self._carried, pending):
                _core.assign(t, np.ascontiguousarray(v, np.float32))

    def meta_gradients(self, batch: Any) -> Tuple[float, Any]:
        """Reptile's update direction for a Task batch, without applying it.

        Returns:
            ``(loss, grads)``: the mean query loss after the inner loop and, per weight,
            ``theta - mean_i phi_i`` (the meta-optimizer's "gradient").
        """
        self._prepare(batch)
        try:
            loss, _, grads = self._direction(batch)
        finally:
            self._flush_statistics(apply=False)  # a query, not a training step
            self._pending_carry = None  # (and the carried inner state stays)
        return loss, grads

    def _meta_step(self, batch):
        plan = self._vector_plan()
        # under enable_check_numerics the direction is checked before the update, which a
        # trace would apply inside: the step runs eagerly then
        update = None if debugging._numerics_checks else self._traced_update(plan)
        if update is not None:
            return self._traced_meta_step(plan, update, batch)
        self._pending_statistics = []  # (what a failed earlier step may have left)
        self._pending_carry = None
        try:
            loss, metric, grads = self._direction(batch)
            self._check_meta_step(loss, grads, self._meta_params())
        except BaseException:
            self._flush_statistics(apply=False)  # a refused step changes nothing
            self._pending_carry = None
            raise
        self._apply_meta_gradients(grads, self._meta_params())
        self._flush_statistics()  # running mode: towards the adapted support statistics
        self._commit_carry()  # the inner optimizer's state the last task left
        return loss, metric

    def _vectorised_direction(self, plan, sx, sy, qx, qy):
        """The meta-batch's inner loops at once (per-task weight copies, (B, ...)), as
        core ops: (theta - mean_i phi_i per weight, mean query loss, query output)."""
        params = self._inner_params()
        for fast, _ in self._vectorised_steps(plan, sx, sy, self.inner_steps):
            pass
        out = plan(fast, qx, {})
        loss = self._loss_fn(qy, out)
        direction = [w - _core.reduce_mean(f, axis=0) for w, f in zip(params, fast)]
        return direction, loss, out

    def _labels(self, y):
        if self.classification:  # a trace takes tensors: class ids as float32
            return to_tensor(np.asarray(y, dtype=np.float32))
        return to_tensor(y)

    def _traced_meta_step(self, plan, update, batch):
        """The vectorised meta-iteration through a metalearn.function trace: recorded on
        the first batch of a shape, replayed from C on the next ones."""
        config = (self.inner_lr, self.inner_steps, id(self.meta_optimizer))
        if self._traced_step is None or self._traced_config != config:
            from metalearn.function import function

            self._traced_config = config
            params = self._meta_params()

            def step(sx, sy, qx, qy):
                direction, loss, out = self._vectorised_direction(plan, sx, sy, qx, qy)
                update(params, [d.detach() for d in direction])
                return loss, out

            self._traced_step = function(step)
        loss, out = self._traced_step(
            to_tensor(batch.support_x),
            self._labels(batch.support_y),
            to_tensor(batch.query_x),
            self._labels(batch.query_y),
        )
        self.meta_optimizer._count_step()
        loss = float(loss.item())
        if self.classification:
            metric = float(np.mean(np.argmax(np.asarray(out), -1) == np.asarray(batch.query_y)))
        else:
            metric = loss
        return loss, metric

    def _direction(self, batch):
        params = self._meta_params()
        n = len(batch.support_x)
        with _core_no_grad():
            theta = [np.array(p, dtype=np.float32, copy=True) for p in params]
        sizes = [t.size for t in theta]
        # the sum over tasks in the fixed pairwise tree over task indices that
        # metalearn.distributed's DataParallel uses (_tasksum): the same bits for any split
        delta = _tasksum.TreeSum()
        losses, metrics = [], []
        sequential = self.inner_batch_size is not None or self._carried is not None
        for i in range(n):
            sx = self._support_input(batch.support_x[i])
            if sequential:
                # each task from the state the previous one left (carry), its mini-batches
                # from the global generator
                fast, carried = self._run_inner(sx, batch.support_y[i], self.inner_steps)
                if carried is not None:
                    self._pending_carry = carried
            else:
                fast = self._inner_loop(
                    sx, batch.support_y[i], self.inner_steps, create_graph=False, detach=True
                )
            with _core_no_grad():
                out = self._query_forward(fast, self._support_input(batch.query_x[i]), sx)
                lq = float(self._loss_fn(batch.query_y[i], out).item())
            self._collect_statistics(fast, sx)
            losses.append(lq)
            metrics.append(self._metric(out, batch.query_y[i], lq))
            delta.add_parts([t - np.asarray(w) for t, w in zip(theta, fast)], sum(sizes))
        total, grads, off = delta.result(), [], 0
        for t, k in zip(theta, sizes):
            grads.append(_core.as_tensor(total[off : off + k].reshape(t.shape) / n))
            off += k
        return float(np.mean(losses)), float(np.mean(metrics)), grads
