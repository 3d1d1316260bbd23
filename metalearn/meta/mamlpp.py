"""MAML++ (Antoniou, Edwards & Storkey, ICLR 2019, "How to train your MAML")."""

from __future__ import annotations

import math
from typing import Any, List

import numpy as np

from metalearn.functional import functional_call

from ._base import _core_no_grad, _leaf_layers, check_count, check_flag, check_rate
from .maml import MAML, _maml_arguments

__all__ = ["MAMLPlusPlus", "multi_step_loss_weights"]


def multi_step_loss_weights(steps: int, epoch: int, msl_epochs: int) -> np.ndarray:
    """The per-step importance weights of MAML++'s multi-step loss at `epoch`.

    Uniform ``1/N`` at epoch 0; each weight but the last decays by ``1/(N * msl_epochs)``
    per epoch down to ``0.03/N``, and the last grows by what the others lose, up to
    ``1 - (N-1) * 0.03/N`` (the schedule of the paper's code,
    ``get_per_step_loss_importance_vector``). Float64, sums to 1.
    """
    steps = check_count(steps, "steps", "multi_step_loss_weights", minimum=1)
    epoch = check_count(epoch, "epoch", "multi_step_loss_weights")
    msl_epochs = check_count(msl_epochs, "msl_epochs", "multi_step_loss_weights", minimum=1)
    w = np.full(steps, 1.0 / steps)
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    w[:-1] = np.maximum(w[:-1] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return w


class _Stepped(list):
    """Fast weights that know how many inner steps made them (`step`) and whether a query
    pass reads them (`query`): per-step batch-norm weights pick their step from these."""

    def __init__(self, weights, step, query=False):
        super().__init__(weights)
        self.step = step
        self.query = query


class MAMLPlusPlus(MAML):
    """MAML++ (Antoniou, Edwards & Storkey, ICLR 2019): MAML with the paper's fixes to its
    training instability, each switchable.

    - ``multi_step_loss`` (MSL): for the first `msl_epochs` epochs the meta-loss is the
      weighted sum over inner steps of the query loss after each step,
      ``sum_s w_s(epoch) L_query(theta_s)``, with the paper's annealed weights
      (``multi_step_loss_weights``: uniform at first, then shifting to the last step);
      afterwards (and with the flag off) only the last step's query loss.
    - ``learn_inner_rates`` (LSLR): one learned inner step size per layer weight and per
      inner step, initialised to `inner_lr` and meta-trained with the weights;
      ``learning_rates[s][i]`` is the rate of weight ``i`` at step ``s`` (``adapt`` with
      more steps than `inner_steps` uses the last step's rates).
    - ``first_order_epochs`` (derivative-order annealing): first-order meta-gradients
      while ``epoch < first_order_epochs``, second order afterwards (0: always second
      order; ``first_order=True``: always first order).
    - ``cosine_annealing`` (CA): the meta-optimizer's learning rate follows
      ``min_meta_lr + (meta_lr - min_meta_lr) (1 + cos(pi * epoch / total_epochs)) / 2``,
      held at `min_meta_lr` after `total_epochs` (set for each update and put back after
      it, so the optimizer's configuration, and a checkpoint's, stays `meta_lr`).

    - ``per_step_bn_weights`` (BNWB, §4 of the paper): every BatchNormalization layer's
      scale and offset get one learned copy per inner step, initialised to the layer's
      own and meta-trained; they are not adapted in the inner loop (the paper's code
      leaves them out of it). The support pass at inner step ``s`` (0-based, after ``s``
      updates) and the query pass after step ``s``'s update both use copy ``s``, as the
      official code's ``num_step``; more steps than `inner_steps` use the last copy.
      ``bn_weights[s][j]`` is copy ``s`` of the ``j``-th batch-norm weight (in the order of
      ``model.trainable_weights``); the model's own scales and offsets are then unused, and
      ``adapt`` returns a model holding the copy its query pass used.

    - ``per_step_bn_statistics`` (BNRS, §4): every BatchNormalization layer gets one pair of
      moving statistics per inner step, used where ``batch_norm="running"`` reads the
      moving statistics: the query pass after step ``s``'s update is normalised with pair
      ``s`` (``adapt`` and ``evaluate`` after ``k`` steps: pair ``k - 1``, the last for
      more steps than `inner_steps`), and meta-training moves pair ``s`` towards the
      support set's statistics under the weights of that query pass (after the
      meta-update, in task order, as MAML's running mode). ``bn_statistics[s]`` holds
      pair ``s`` of each layer (mean, variance, ...), saved by checkpoints. In the other
      modes nothing reads them.

    An epoch is `epoch_length` meta-iterations (the paper: 500), counted by
    ``self.iterations`` (so a resumed ``fit`` continues the schedules where it stopped).

    The tasks of a meta-batch run one by one (not MAML's vectorised path).

    Args:
        model, inner_lr, inner_steps, first_order, meta_optimizer, meta_lr, loss: as MAML
            (paper, Omniglot: inner_lr 0.1, inner_steps 5, meta_lr 0.001).
        multi_step_loss, msl_epochs: MSL and the epochs over which it anneals (paper and
            the official Omniglot configurations: 10; the mini-ImageNet ones: 15).
        learn_inner_rates: LSLR.
        first_order_epochs: derivative-order annealing (the paper's text: 50; the
            official configurations set ``first_order_to_second_order_epoch: -1``, second
            order from the first iteration, which is 0 here).
        cosine_annealing, total_epochs, min_meta_lr: CA (paper: 150 epochs, the official
            Omniglot configurations 100; the official code's minimum 1e-5).
        epoch_length: meta-iterations per epoch.
        batch_norm: the query's normalisation, as MAML's (each of the multi-step loss's
            query passes uses it).
        per_step_bn_weights, per_step_bn_statistics: BNWB and BNRS (off by default: a
            model without batch normalisation has nothing to give them).
    """

    _batched_inner_loop = False  # step-dependent rates and losses: the per-task loop
    _low_rank_inner_step = False
    # with BNWB, a first-order meta-gradient of the last step's query loss alone (DA's first
    # epochs after MSL's) does not reach the copies the support passes use: they get zero
    # meta-gradients (the authors' code leaves their .grad None and Adam skips them; here
    # Adam's moments of them decay), where grad would refuse them
    _meta_params_may_be_unused = True

    def __init__(
        self,
        model: Any,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        first_order: bool = False,
        meta_optimizer: Any = "adam",
        meta_lr: float = 0.001,
        loss: Any = None,
        multi_step_loss: bool = True,
        msl_epochs: int = 10,
        learn_inner_rates: bool = True,
        first_order_epochs: int = 50,
        cosine_annealing: bool = True,
        total_epochs: int = 150,
        min_meta_lr: float = 1e-5,
        epoch_length: int = 500,
        batch_norm: str = "transductive",
        per_step_bn_weights: bool = False,
        per_step_bn_statistics: bool = False,
    ) -> None:
        # the per-task loop only: step-dependent rates and losses are not vectorised
        maml_args = _maml_arguments(locals(), vectorize=False, trace=False)
        who = type(self).__name__
        # every setting checked before anything is stored: a bad one changes nothing
        multi_step_loss = check_flag(multi_step_loss, "multi_step_loss", who)
        per_step_bn_weights = check_flag(per_step_bn_weights, "per_step_bn_weights", who)
        per_step_bn_statistics = check_flag(per_step_bn_statistics, "per_step_bn_statistics", who)
        for name, on in (
            ("per_step_bn_weights", per_step_bn_weights),
            ("per_step_bn_statistics", per_step_bn_statistics),
        ):
            if on and not _bn_layers(model):
                raise ValueError(
                    f"{who}: {name}=True needs a model with a trainable BatchNormalization layer"
                )
        learn_inner_rates = check_flag(learn_inner_rates, "learn_inner_rates", who)
        cosine_annealing = check_flag(cosine_annealing, "cosine_annealing", who)
        msl_epochs = check_count(msl_epochs, "msl_epochs", who, minimum=1)
        first_order_epochs = check_count(first_order_epochs, "first_order_epochs", who)
        total_epochs = check_count(total_epochs, "total_epochs", who, minimum=1)
        epoch_length = check_count(epoch_length, "epoch_length", who, minimum=1)
        min_meta_lr = check_rate(min_meta_lr, "min_meta_lr", who)
        if isinstance(meta_lr, (int, float)):  # (MAML checks it too, after this comparison)
            meta_lr = check_rate(meta_lr, "meta_lr", who)
        if isinstance(meta_lr, (int, float)) and min_meta_lr > meta_lr:
            raise ValueError(f"{who}: min_meta_lr ({min_meta_lr}) must be <= meta_lr ({meta_lr})")
        check_count(inner_steps, "inner_steps", who, minimum=1)
        super().__init__(**maml_args)
        self.multi_step_loss = multi_step_loss
        self.msl_epochs = msl_epochs
        self.learn_inner_rates = learn_inner_rates
        self.first_order_epochs = first_order_epochs
        self.cosine_annealing = cosine_annealing
        self.total_epochs = total_epochs
        self.min_meta_lr = min_meta_lr
        self.epoch_length = epoch_length
        self.learning_rates = None
        self.per_step_bn_weights = per_step_bn_weights
        self.bn_weights = None
        self.per_step_bn_statistics = per_step_bn_statistics
        self.bn_statistics = None
        self._bn_index = None  # positions of the batch-norm weights in trainable_weights

    # ------------------------------------------------------------ schedules
    @property
    def epoch(self) -> int:
        """The current epoch: ``iterations // epoch_length``."""
        return self.iterations // self.epoch_length

    def step_weights(self) -> np.ndarray:
        """The weights of the inner steps' query losses in the meta-loss at this epoch."""
        n = self.inner_steps
        if self.multi_step_loss and self.epoch < self.msl_epochs:
            return multi_step_loss_weights(n, self.epoch, self.msl_epochs)
        w = np.zeros(n)
        w[-1] = 1.0
        return w

    def second_order(self) -> bool:
        """Whether this epoch's meta-gradient is second order."""
        return not self.first_order and self.epoch >= self.first_order_epochs

    def current_meta_lr(self) -> float:
        """The meta learning rate for this epoch (cosine annealing, or `meta_lr`)."""
        if not self.cosine_annealing:
            return self.meta_lr
        t = min(self.epoch, self.total_epochs) / self.total_epochs
        return self.min_meta_lr + 0.5 * (self.meta_lr - self.min_meta_lr) * (
            1.0 + math.cos(math.pi * t)
        )

    # ------------------------------------------------------------ parameters
    def _prepare(self, task):
        super()._prepare(task)
        from metalearn.tape import Variable

        if self.per_step_bn_weights and self._bn_index is None:
            ids = {id(w) for layer in _bn_layers(self.model) for w in layer.trainable_weights}
            every = self.model.trainable_weights
            self._bn_index = [i for i, w in enumerate(every) if id(w) in ids]
            self.bn_weights = [
                [
                    Variable(
                        np.array(every[i], np.float32),
                        name=f"bnwb/step{s}/{getattr(every[i], 'name', i)}",
                    )
                    for i in self._bn_index
                ]
                for s in range(self.inner_steps)
            ]
        if self.per_step_bn_statistics and self.bn_statistics is None:
            moving = [v for l in _bn_layers(self.model) for v in (l.moving_mean, l.moving_variance)]
            self._stat_index = {id(v): j for j, v in enumerate(moving)}
            self.bn_statistics = [
                [Variable(np.array(v, np.float32), name=f"bnrs/step{s}/{v.name}") for v in moving]
                for s in range(self.inner_steps)
            ]
        if self.learning_rates is None and self.learn_inner_rates:
            self.learning_rates = [  # one per weight the inner loop adapts
                [
                    Variable(np.float32(self.inner_lr), name=f"lslr/step{s}/{i}")
                    for i in range(len(self._inner_params()))
                ]
                for s in range(self.inner_steps)
            ]

    def _rates(self) -> List[Any]:
        return [a for step in (self.learning_rates or []) for a in step]

    def _meta_params(self):
        bn = [w for step in (self.bn_weights or []) for w in step]
        return list(self._inner_params()) + self._rates() + bn

    # ------------------------------------------------ per-step batch-norm weights
    def _inner_params(self):
        every = self.model.trainable_weights
        if not self._bn_index:
            return every
        skip = set(self._bn_index)
        return [w for i, w in enumerate(every) if i not in skip]

    def _full_weights(self, fast):
        """The model's trainable weights with the adapted ones and this pass's per-step
        batch-norm copies in place (`fast` a _Stepped list)."""
        if not self._bn_index:
            return fast
        copies = self.bn_weights[self._step_of(fast)]
        full = list(self.model.trainable_weights)
        skip = set(self._bn_index)
        for i, w in zip([i for i in range(len(full)) if i not in skip], fast):
            full[i] = w
        for i, w in zip(self._bn_index, copies):
            full[i] = w
        return full

    def _per_step(self):
        return bool(self._bn_index) or self.bn_statistics is not None

    def _step_of(self, fast):
        """The per-step copy a pass with `fast` uses: the support pass after s updates
        and the query pass after s + 1 both use copy s (the last one past inner_steps)."""
        step = getattr(fast, "step", 0) - (1 if getattr(fast, "query", False) else 0)
        return min(max(step, 0), self.inner_steps - 1)

    def _as_query(self, fast):
        if not self._per_step():
            return fast
        return _Stepped(fast, getattr(fast, "step", 0), query=True)

    def _state_tensors(self):
        """Tensors a checkpoint saves beside the model's weights and the meta-parameters
        (the per-step moving statistics)."""
        return [v for step in (self.bn_statistics or []) for v in step]

    def _all_weights(self, full, step):
        """``model.weights`` with the trainable ones from `full` and the moving statistics
        of per-step pair `step` in place (for functional calls of every weight)."""
        where = {id(w): i for i, w in enumerate(self.model.trainable_weights)}
        pair = self.bn_statistics[step]
        out = []
        for v in self.model.weights:
            if id(v) in where:
                out.append(full[where[id(v)]])
            elif id(v) in self._stat_index:
                out.append(pair[self._stat_index[id(v)]])
            else:
                out.append(v)
        return out

    def _per_step_running(self):
        return self.batch_norm == "running" and self.bn_statistics is not None

    def _forward(self, fast, x):
        return functional_call(self.model, self._full_weights(fast), x, training=True)

    def _query_output(self, fast, query_x, support_x=None):
        return super()._query_output(self._as_query(fast), query_x, support_x)

    def _query_forward(self, fast, qx, sx):
        fast = self._as_query(fast)
        if self._per_step_running():
            weights = self._all_weights(self._full_weights(fast), self._step_of(fast))
            return functional_call(self.model, weights, qx, training=False)
        return super()._query_forward(fast, qx, sx)

    def _collect_statistics(self, fast, sx):
        fast = self._as_query(fast)
        if not self._per_step_running():
            return super()._collect_statistics(fast, sx)
        with _core_no_grad():  # copies of the weights; the pair itself, moved in place
            full = [w.detach() * 1.0 for w in self._full_weights(fast)]
        self._pending_statistics.append((self._all_weights(full, self._step_of(fast)), sx.detach()))

    def adapt(self, support_x, support_y, steps=None):
        model = super().adapt(support_x, support_y, steps)
        if self._per_step_running():  # the moving statistics the query pass would use
            pair = self.bn_statistics[self._step_of(_Stepped([], self._steps(steps), True))]
            moving = [v for l in _bn_layers(model) for v in (l.moving_mean, l.moving_variance)]
            for v, src in zip(moving, pair):
                v.assign(np.asarray(src))
        return model

    def _adapted_weights(self, support_x, support_y, steps):
        fast = self._inner_loop(
            self._support_input(support_x),
            support_y,
            self._steps(steps),
            create_graph=False,
            detach=True,
        )
        return self._full_weights(self._as_query(fast))

    def _inner_step(self, step, fast, grads):
        """Inner step `step` (0-based): ``w - lr[step][i] * g``."""
        if not self.learn_inner_rates:
            lr = self.inner_lr
            new = [w - lr * g for w, g in zip(fast, grads)]
        else:
            rates = self.learning_rates[min(step, len(self.learning_rates) - 1)]
            new = [w - a * g for w, a, g in zip(fast, rates, grads)]
        return _Stepped(new, step + 1) if self._per_step() else new

    # ------------------------------------------------------------ meta-loss
    def _meta_loss(self, batch):
        weights = self.step_weights()
        used = [s + 1 for s in range(self.inner_steps) if weights[s] > 0.0]
        create_graph = self.second_order()
        total, metrics = None, []
        n = len(batch.support_x)
        for i in range(n):
            sx = self._support_input(batch.support_x[i])
            qx = self._support_input(batch.query_x[i])
            every = self._per_step_running()  # BNRS: each step's pair moves
            record = set(range(1, self.inner_steps + 1)) if every else set(used)
            trail = self._inner_loop(
                sx, batch.support_y[i], self.inner_steps, create_graph, record=record
            )
            lt = None
            for step, fast in trail:
                if every:
                    self._collect_statistics(fast, sx)
                if weights[step - 1] <= 0.0:
                    continue
                out = self._query_forward(fast, qx, sx)
                lq = self._loss_fn(batch.query_y[i], out)
                term = lq * float(weights[step - 1])
                lt = term if lt is None else lt + term
            if not every:
                self._collect_statistics(fast, sx)
            # the metric is the last step's (what adapt gives)
            metrics.append(
                self._metric(out, batch.query_y[i], lq.item()) if self.classification else lq.item()
            )
            total = lt if total is None else total + lt
        return total * (1.0 / n), float(np.mean(metrics))

    def _meta_step(self, batch):
        return self._eager_meta_step(batch)  # the per-task loop: nothing vectorised or traced

    def _apply_meta_gradients(self, grads, params):
        opt = self.meta_optimizer
        if not self.cosine_annealing:
            return opt.apply_gradients(zip(grads, params))
        base = opt.learning_rate
        opt.learning_rate = self.current_meta_lr()  # this step's rate, then the base back
        try:
            opt.apply_gradients(zip(grads, params))
        finally:
            opt.learning_rate = base

    def __repr__(self):
        return (
            f"<MAMLPlusPlus inner_lr={self.inner_lr} inner_steps={self.inner_steps} "
            f"multi_step_loss={self.multi_step_loss} learn_inner_rates={self.learn_inner_rates} "
            f"first_order_epochs={self.first_order_epochs} "
            f"cosine_annealing={self.cosine_annealing}>"
        )


def _bn_layers(model):
    """The model's trainable BatchNormalization layers (a frozen one runs in inference
    mode and has no trainable weights)."""
    from metalearn.keras.conv_layers import BatchNormalization

    return [
        layer
        for layer in _leaf_layers(model, [])
        if isinstance(layer, BatchNormalization)
        and layer.trainable
        and (layer.center or layer.scale)
    ]
