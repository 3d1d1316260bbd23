"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms")."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from metalearn import _core, _tasksum, debugging

from ._base import _core_no_grad, to_tensor
from .maml import MAML

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
            0.0))``, applied in C by the traced step too. (Their inner loop is Adam with
            beta_1 = 0 on mini-batches of 10 of the support; here it is full-batch SGD.)
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
    ) -> None:
        if epsilon is not None:
            meta_lr = epsilon
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
        )
        self.epsilon = self.meta_lr

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
        return loss, grads

    def _meta_step(self, batch):
        plan = self._vector_plan()
        # under enable_check_numerics the direction is checked before the update, which a
        # trace would apply inside: the step runs eagerly then
        update = None if debugging._numerics_checks else self._traced_update(plan)
        if update is not None:
            return self._traced_meta_step(plan, update, batch)
        self._pending_statistics = []  # (what a failed earlier step may have left)
        try:
            loss, metric, grads = self._direction(batch)
            self._check_meta_step(loss, grads, self._meta_params())
        except BaseException:
            self._flush_statistics(apply=False)  # a refused step changes nothing
            raise
        self._apply_meta_gradients(grads, self._meta_params())
        self._flush_statistics()  # running mode: towards the adapted support statistics
        return loss, metric

    def _vectorised_direction(self, plan, sx, sy, qx, qy):
        """The meta-batch's inner loops at once (per-task weight copies, (B, ...)), as
        core ops: (theta - mean_i phi_i per weight, mean query loss, query output)."""
        b = int(sx.shape[0])
        params = self._inner_params()
        fast = [_core.broadcast_to(w, (b,) + tuple(w.shape)) for w in params]
        lr = self.inner_lr
        for _ in range(self.inner_steps):
            # the sum over tasks of each task's mean loss: its gradient w.r.t. a task's
            # copy is that task's own gradient
            inner = self._loss_fn(sy, plan(fast, sx, {})) * float(b)
            grads = _core.grad(inner, fast)
            fast = [w - lr * g for w, g in zip(fast, grads)]
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
        for i in range(n):
            sx = self._support_input(batch.support_x[i])
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
