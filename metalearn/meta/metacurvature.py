"""Meta-Curvature (Park & Oliva, NeurIPS 2019): a learned preconditioner of the inner gradient."""

from __future__ import annotations

from typing import Any, List, Union

import numpy as np

from metalearn import _core

from .maml import MAML, _maml_arguments

__all__ = ["MetaCurvature"]


class MetaCurvature(MAML):
    """Meta-Curvature (Park & Oliva, NeurIPS 2019, "Meta-Curvature").

    MAML whose inner step multiplies each weight's gradient by a learned curvature, a
    Kronecker-factored matrix kept as one small matrix per axis of the weight, meta-trained
    with the initialisation (as Meta-SGD's rates are):

        theta_i' = theta - inner_lr * MC(grad_theta L_support(T_i; theta))
        (theta, M) = meta_optimizer step on grad_(theta, M) mean_i L_query(T_i; theta_i')

    The parameterisation is learn2learn's ``MetaCurvatureTransform``
    (learn2learn/optim/transforms/metacurvature_transform.py, which follows the paper's
    TensorFlow code and its kernel layouts, the ones Keras uses):

    - a vector (bias, batch-norm scale and offset) of shape ``(n,)``: ``m * g``, a learned
      vector ``m`` initialised to ones (Meta-SGD's per-weight rate, times `inner_lr`);
    - a dense kernel ``(in, out)``: ``M_in @ G @ M_out`` with ``M_in`` ``(in, in)`` and
      ``M_out`` ``(out, out)``;
    - a convolution kernel ``(kh, kw, in, out)`` (any kernel of three or more axes,
      ``(*window, in, out)``), read as ``G[f, i, o]`` with ``f`` the ``n_f = kh * kw``
      window positions: ``U[f, i, o] = sum M_f[f, f'] M_in[i, i'] G[f', i', o'] M_out[o', o]``
      (the paper's tensor product ``G x_1 M_f x_2 M_in x_3 M_out``).

    Every matrix starts at the identity (every vector at ones), where the step is MAML's
    exactly. ``curvatures[i]`` holds the Variables of trainable weight ``i``: ``(m,)``,
    ``(M_in, M_out)`` or ``(M_f, M_in, M_out)``. They are meta-parameters beside the
    model's weights (``meta_gradients`` returns their gradients after the weights', in that
    order), saved and restored by checkpoints as Meta-SGD's rates are; ``adapt`` uses them.
    A dense kernel of ``in`` inputs adds ``in**2 + out**2`` parameters (the paper's cost).

    Args:
        model, inner_lr, inner_steps, first_order, meta_optimizer, meta_lr, loss,
            vectorize, trace, batch_norm: as for MAML (the vectorised meta-batch and its
            trace carry a wide dense kernel's step as MAML's low-rank factors, each
            multiplied by its curvature, and other weights as per-task copies).
    """

    # a dense kernel's step M_in X^T dZ M_out = (X M_in^T)^T (dZ M_out) keeps the rank of
    # X^T dZ: the vectorised meta-batch carries it as factors, as MAML's (_low_rank_factors)
    _low_rank_inner_step = True

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
    ) -> None:
        super().__init__(**_maml_arguments(locals()))
        self.curvatures = None

    def _prepare(self, task):
        super()._prepare(task)
        if self.curvatures is None:
            from metalearn.tape import Variable

            made = []
            for i, w in enumerate(self._inner_params()):
                shape = tuple(int(d) for d in w.shape)
                name = f"meta_curvature/{getattr(w, 'name', i)}"
                if len(shape) <= 1:  # a vector (or a scalar): element-wise, from ones
                    made.append((Variable(np.ones(shape, np.float32), name=name + "/m"),))
                    continue
                axes = [("in", shape[-2]), ("out", shape[-1])]
                if len(shape) > 2:  # the window positions of a kernel, as one axis
                    axes.insert(0, ("f", int(np.prod(shape[:-2]))))
                made.append(
                    tuple(
                        Variable(np.eye(n, dtype=np.float32), name=f"{name}/M_{a}") for a, n in axes
                    )
                )
            self.curvatures = made

    def _curvature_params(self) -> List[Any]:
        return [m for mats in (self.curvatures or []) for m in mats]

    def _meta_params(self):
        return list(self.model.trainable_weights) + self._curvature_params()

    def _precondition(self, mats, w, g):
        """MC(g) for the weight `w` (its shape) with curvature `mats`; g may carry leading
        axes (the vectorised meta-batch's tasks), which the products broadcast over."""
        if len(mats) == 1:
            return mats[0] * g
        shape = tuple(int(d) for d in g.shape)
        lead = shape[: len(shape) - len(w.shape)]
        if len(mats) == 2:
            return _core.matmul(_core.matmul(mats[0], g), mats[1])
        m_f, m_in, m_out = mats
        n_f, n_in, n_out = (int(m.shape[0]) for m in mats)
        u = _core.reshape(g, lead + (n_f, n_in, n_out))
        u = _core.matmul(_core.matmul(m_in, u), m_out)  # over each window position
        u = _core.matmul(m_f, _core.reshape(u, lead + (n_f, n_in * n_out)))
        return _core.reshape(u, shape)

    def _weight_step(self, i, w, g):
        mats, p = self.curvatures[i], self._inner_params()[i]
        return w - self.inner_lr * self._precondition(mats, p, g)

    def _low_rank_factors(self, k, x_in, dz):
        m_in, m_out = self.curvatures[k]
        return _core.matmul(x_in, _core.transpose(m_in)), _core.matmul(dz, m_out)

    def _inner_update(self, fast, grads):
        lr = self.inner_lr
        return [
            w - lr * self._precondition(mats, p, g)
            for w, mats, p, g in zip(fast, self.curvatures, self._inner_params(), grads)
        ]
