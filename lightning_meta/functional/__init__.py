"""The meta-learning math as plain functions over parameter dicts (``torch.func``), usable without Lightning.

``inner_step`` -> ``adapt`` / ``adaptation_trajectory`` -> ``task_objective`` -> ``meta_objective`` (training,
every meta-gradient mode) and ``query_trajectory`` (evaluation); ``hvp`` and ``meta_gradient_hvp`` for the
Hessian-vector-product mode; ``select_adapted`` names the tensors an inner loop adapts. Beside MAML:
``inner_train`` and ``reptile_gradient`` (Reptile), ``proximal_adapt``, ``conjugate_gradient`` and
``implicit_meta_gradient`` (iMAML), ``prototypical_logits`` (Prototypical Networks).
"""

from lightning_meta.functional.hvp import finite_difference_step, hvp, meta_gradient_hvp
from lightning_meta.functional.implicit import (
    conjugate_gradient,
    implicit_meta_gradient,
    proximal_adapt,
    proximal_trajectory,
)
from lightning_meta.functional.inner_loop import (
    Params,
    TaskLoss,
    adapt,
    adaptation_trajectory,
    inner_step,
    lr_rows,
    scaled_grad,
)
from lightning_meta.functional.objective import (
    META_GRADIENTS,
    Adaptation,
    MetaGradient,
    MetaObjective,
    meta_objective,
    multi_step_loss_weights,
    query_trajectory,
    task_objective,
)
from lightning_meta.functional.params import as_gradient_loss, select_adapted
from lightning_meta.functional.prototypes import class_prototypes, prototypical_logits
from lightning_meta.functional.reptile import inner_train, inner_train_trajectory, inner_update, reptile_gradient

__all__ = [
    "Adaptation",
    "META_GRADIENTS",
    "MetaGradient",
    "MetaObjective",
    "Params",
    "TaskLoss",
    "adapt",
    "adaptation_trajectory",
    "as_gradient_loss",
    "class_prototypes",
    "conjugate_gradient",
    "implicit_meta_gradient",
    "inner_train",
    "inner_train_trajectory",
    "inner_update",
    "proximal_adapt",
    "proximal_trajectory",
    "prototypical_logits",
    "reptile_gradient",
    "finite_difference_step",
    "hvp",
    "inner_step",
    "lr_rows",
    "meta_gradient_hvp",
    "meta_objective",
    "multi_step_loss_weights",
    "query_trajectory",
    "scaled_grad",
    "select_adapted",
    "task_objective",
]
