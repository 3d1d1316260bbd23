"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms")."""

from __future__ import annotations

from typing import Any, Optional, Tuple
import numpy as np

from metalearn import _core

from ._base import _core_no_grad
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
        meta_lr: epsilon, the outer step size (``epsilon=`` is accepted as an alias;
            the paper anneals it linearly from 1.0 to 0 in its Omniglot runs).
        meta_optimizer: ``"sgd"`` (the paper's rule), ``"adam"`` or an optimizer.
        loss: as for MAML.
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
        )
        self.epsilon = self.meta_lr

    def meta_gradients(self, batch: Any) -> Tuple[float, Any]:
        """Reptile's update direction for a Task batch, without applying it.

        Returns:
            ``(loss, grads)``: the mean query loss after the inner loop and, per weight,
            ``theta - mean_i phi_i`` (the meta-optimizer's "gradient").
        """
        self._prepare(batch)
        loss, _, grads = self._direction(batch)
        return loss, grads

    def _meta_step(self, batch):
        loss, metric, grads = self._direction(batch)
        self._check_meta_step(loss, grads, self._meta_params())
        self.meta_optimizer.apply_gradients(zip(grads, self._meta_params()))
        return loss, metric

    def _direction(self, batch):
        params = self._meta_params()
        n = len(batch.support_x)
        with _core_no_grad():
            theta = [np.array(p, dtype=np.float32, copy=True) for p in params]
        delta = [np.zeros_like(t) for t in theta]
        losses, metrics = [], []
        for i in range(n):
            sx = self._support_input(batch.support_x[i])
            fast = self._inner_loop(
                sx, batch.support_y[i], self.inner_steps, create_graph=False, detach=True
            )
            with _core_no_grad():
                out = self._forward(fast, self._support_input(batch.query_x[i]))
                lq = float(self._loss_fn(batch.query_y[i], out).item())
            losses.append(lq)
            metrics.append(self._metric(out, batch.query_y[i], lq))
            for d, t, w in zip(delta, theta, fast):
                d += t - np.asarray(w)
        grads = [_core.as_tensor(d / n) for d in delta]
        return float(np.mean(losses)), float(np.mean(metrics)), grads
