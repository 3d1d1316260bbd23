"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019)."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from metalearn import _core
from metalearn.tasks.base import Task

from ._base import check_count, check_rate
from .maml import MAML

__all__ = ["IMAML"]


class IMAML(MAML):
    """Implicit MAML (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with
    Implicit Gradients").

    The inner loop solves the proximal problem

        phi_i = argmin_phi  L_support(phi) + lam/2 ||phi - theta||^2

    approximately, by `inner_steps` gradient steps ``phi -= inner_lr * (grad L_support(phi)
    + lam (phi - theta))`` from ``phi = theta``, without recording them. At the solution
    the meta-gradient is implicit (Lemma 1 of the paper):

        d L_query(phi_i) / d theta = (I + H_support(phi_i) / lam)^-1 grad L_query(phi_i)

    and is computed by `cg_steps` conjugate-gradient iterations on that system, each one
    Hessian-vector product (a gradient of a gradient at ``phi_i`` only). So memory does not
    grow with `inner_steps`, unlike MAML's. The CG arithmetic runs in float64 NumPy on the
    flattened vectors; it stops early when the residual vanishes. ``adapt`` runs the same
    proximal inner loop.

    The implicit gradient is exact only at a solution of the inner problem: the inner steps
    must converge (``inner_lr * (curvature + lam) < 2``); nothing is differentiated
    through them, so meta-training does not steer away from an initialisation where they
    diverge, as MAML's does. A larger `lam` keeps the problem well conditioned.

    Where the support loss has negative curvature larger than `lam`, ``I + H / lam`` is not
    positive definite and conjugate gradient stops at the first such direction. The
    authors' code (aravindr93/imaml_dev, ``learner_model.py``) damps the system it solves:

        ((1 + cg_damping) I + H / (lam + lam_damping)) v = grad L_query(phi_i)

    with ``cg_damping`` 1.0 and ``lam_damping`` 10.0 in its Omniglot example. Both default
    to 0 here, the paper's Lemma 1; set them to solve the damped system.

    Args:
        model, inner_lr, inner_steps, meta_optimizer, meta_lr, loss: as MAML (the paper's
            Omniglot runs: 16 inner steps at 5-way, lam 2, 5 CG steps).
        lam: the proximal strength lambda (> 0).
        cg_steps: conjugate-gradient iterations per task (>= 1).
        cg_damping, lam_damping: the damping above (>= 0 each).
    """

    _batched_inner_loop = False  # the tasks run one by one (implicit gradients per task)
    _low_rank_inner_step = False

    def __init__(
        self,
        model: Any,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        lam: float = 1.0,
        cg_steps: int = 5,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
        loss: Any = None,
        cg_damping: float = 0.0,
        lam_damping: float = 0.0,
    ) -> None:
        who = type(self).__name__
        lam = check_rate(lam, "lam", who)
        if lam <= 0:
            raise ValueError(f"{who}: lam must be > 0, got {lam}")
        cg_steps = check_count(cg_steps, "cg_steps", who, minimum=1)
        cg_damping = check_rate(cg_damping, "cg_damping", who)
        lam_damping = check_rate(lam_damping, "lam_damping", who)
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=True,  # nothing is differentiated through the inner loop
            meta_optimizer=meta_optimizer,
            meta_lr=meta_lr,
            loss=loss,
            vectorize=False,
            trace=False,
        )
        self.lam = lam
        self.cg_steps = cg_steps
        self.cg_damping = cg_damping
        self.lam_damping = lam_damping

    def _inner_update(self, fast, grads):
        lr, lam = self.inner_lr, self.lam
        theta = self._inner_params()
        return [w - lr * (g + lam * (w - t)) for w, g, t in zip(fast, grads, theta)]

    def _implicit_gradient(self, phi, sx, sy, qx, qy):
        """(query loss, query output, the implicit meta-gradient as float64 arrays)."""
        out = self._forward(phi, qx)
        lq = self._loss_fn(qy, out)
        b = [np.asarray(g, np.float64) for g in _core.grad(lq, phi)]
        gs = _core.grad(self._loss_fn(sy, self._forward(phi, sx)), phi, create_graph=True)
        # (1 + 0) I + H / (lam + 0) undamped: the paper's Lemma 1
        diag, lam = 1.0 + self.cg_damping, self.lam + self.lam_damping

        def apply(v):  # (diag I + H / lam) v, H v by differentiating <grad L_support, v>
            dot = None
            for g, vi in zip(gs, v):
                term = _core.reduce_sum(g * _core.as_tensor(vi.astype(np.float32)))
                dot = term if dot is None else dot + term
            hv = _core.grad(dot, phi)
            return [diag * vi + np.asarray(h, np.float64) / lam for vi, h in zip(v, hv)]

        dot = lambda a, c: float(sum(np.vdot(x, y) for x, y in zip(a, c)))
        x = [np.zeros_like(bi) for bi in b]
        r = [bi.copy() for bi in b]
        p = [ri.copy() for ri in r]
        rr = dot(r, r)
        for _ in range(self.cg_steps):
            if rr == 0.0:
                break
            ap = apply(p)
            pap = dot(p, ap)
            if not pap > 0.0:  # not positive definite along p (lam too small): stop here
                break
            alpha = rr / pap
            x = [xi + alpha * pi for xi, pi in zip(x, p)]
            r = [ri - alpha * ai for ri, ai in zip(r, ap)]
            rr_new = dot(r, r)
            p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
            rr = rr_new
        return lq, out, x

    def _implicit_batch(self, batch):
        n = len(batch.support_x)
        total, losses, metrics = None, [], []
        for i in range(n):
            sx = self._support_input(batch.support_x[i])
            qx = self._support_input(batch.query_x[i])
            phi = self._inner_loop(sx, batch.support_y[i], self.inner_steps, False, detach=True)
            lq, out, g = self._implicit_gradient(phi, sx, batch.support_y[i], qx, batch.query_y[i])
            # the sum over tasks in task order (the determinism contract)
            total = g if total is None else [a + c for a, c in zip(total, g)]
            losses.append(lq.item())
            metrics.append(
                self._metric(out, batch.query_y[i], lq.item()) if self.classification else lq.item()
            )
        grads = [_core.as_tensor((a / n).astype(np.float32)) for a in total]
        return float(np.mean(losses)), float(np.mean(metrics)), grads

    def meta_gradients(self, batch: Task) -> Tuple[float, Any]:
        """The implicit meta-gradient (mean over the batch's tasks) without applying it:
        ``(mean query loss after adaptation, one Tensor per trainable weight)``."""
        self._prepare(batch)
        loss, _, grads = self._implicit_batch(batch)
        return loss, grads

    def _meta_step(self, batch):
        loss, metric, grads = self._implicit_batch(batch)
        params = self._meta_params()
        self._check_meta_step(_core.as_tensor(np.float32(loss)), grads, params)
        self._apply_meta_gradients(grads, params)
        return loss, metric

    def __repr__(self):
        return (
            f"<IMAML inner_lr={self.inner_lr} inner_steps={self.inner_steps} "
            f"lam={self.lam} cg_steps={self.cg_steps}>"
        )
