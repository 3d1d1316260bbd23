"""Meta-learning algorithms: learning to learn new tasks from a few examples.

=================  ==============================================================
``MAML``           Finn et al. 2017 — second-order (and ``first_order=True``) MAML
``FOMAML``         first-order MAML (``MAML(..., first_order=True)``)
``Reptile``        Nichol et al. 2018
``MetaSGD``        Li et al. 2017 — learned per-parameter inner learning rates
``ANIL``           Raghu et al. 2020 — adapt only the head
``MetaCurvature``  Park & Oliva 2019 — learned preconditioner of the inner gradient
``ProtoNet``       Snell et al. 2017 — prototypical networks
=================  ==============================================================

``MetaLearner`` is the whole system of the source article: a learner meta-trained by one
of these algorithms, a performance predictor (``MetaLearningNetwork``) and a knowledge
memory that warm-starts adaptation on tasks like earlier ones.

Each has ``fit(tasks, iterations, meta_batch_size)`` (progress bar, returns a history),
``adapt(support_x, support_y, steps=None)`` (a new adapted Keras model; the meta-model
is unchanged), ``clone()`` and ``evaluate(tasks, episodes)`` (mean and 95 % confidence
interval). ``fit`` and ``evaluate`` take a task sampler, a Task batch
(``metalearn.tasks.Task.batch([...])``) or a list of Tasks. ``metalearn.meta.models``
builds the papers' networks.

Also with that API: ``MAMLPlusPlus`` (Antoniou et al. 2019, MAML++: multi-step loss,
learned per-step inner rates, derivative-order and cosine annealing), ``IMAML``
(Rajeswaran et al. 2019, implicit meta-gradients by conjugate gradient), ``MatchingNet``
(Vinyals et al. 2016, cosine attention) and ``R2D2`` (Bertinetto et al. 2019, a closed-form
ridge-regression head) and ``MetaOptNet`` (Lee et al. 2019, a multi-class SVM head solved by
unrolled accelerated projected gradient).
"""

from . import models
from ._base import BaseMetaLearner, clone_model
from .maml import ANIL, MAML, MetaSGD
from .metacurvature import MetaCurvature
from .imaml import IMAML
from .mamlpp import MAMLPlusPlus, multi_step_loss_weights
from .metric import (
    R2D2,
    MatchingNet,
    MetaOptNet,
    RelationNet,
    matching_logits,
    ridge_logits,
    spd_solve,
    svm_dual,
    svm_logits,
)
from .protonet import ProtoNet, PrototypeClassifier, prototype_logits
from .reptile import Reptile
from .system import MetaLearner, rankdata, spearman


def FOMAML(
    model, inner_lr=0.01, inner_steps=1, meta_optimizer="adam", meta_lr=0.001, loss=None, **kwargs
):
    """First-order MAML: ``MAML(..., first_order=True)`` (Finn et al. 2017, §5.2). Every
    other MAML argument (``vectorize``, ``trace``, ``batch_norm``, ``inner_optimizer``,
    ``gradient_checkpointing`` ...) passes through."""
    if "first_order" in kwargs:
        raise TypeError(
            "FOMAML: first_order is not an argument (FOMAML is MAML with first_order=True)"
        )
    return MAML(
        model,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=True,
        meta_optimizer=meta_optimizer,
        meta_lr=meta_lr,
        loss=loss,
        **kwargs,
    )


__all__ = [
    "BaseMetaLearner",
    "MetaLearner",
    "spearman",
    "rankdata",
    "MAML",
    "FOMAML",
    "Reptile",
    "MetaSGD",
    "ANIL",
    "MetaCurvature",
    "MAMLPlusPlus",
    "IMAML",
    "multi_step_loss_weights",
    "MatchingNet",
    "RelationNet",
    "R2D2",
    "MetaOptNet",
    "matching_logits",
    "ridge_logits",
    "spd_solve",
    "svm_dual",
    "svm_logits",
    "ProtoNet",
    "PrototypeClassifier",
    "prototype_logits",
    "clone_model",
    "models",
]
