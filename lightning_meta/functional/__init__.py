"""The meta-learning math as plain functions over parameter dicts (``torch.func``), usable without Lightning.

``inner_step`` -> ``adapt`` / ``adaptation_trajectory`` -> ``task_objective`` -> ``meta_objective`` (training,
every meta-gradient mode) and ``query_trajectory`` (evaluation); ``hvp`` and ``meta_gradient_hvp`` for the
Hessian-vector-product mode; ``select_adapted`` names the tensors an inner loop adapts.
"""

from lightning_meta.functional.hvp import finite_difference_step, hvp, meta_gradient_hvp
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
    MetaGradient,
    MetaObjective,
    meta_objective,
    query_trajectory,
    task_objective,
)
from lightning_meta.functional.params import select_adapted

__all__ = [
    "META_GRADIENTS",
    "MetaGradient",
    "MetaObjective",
    "Params",
    "TaskLoss",
    "adapt",
    "adaptation_trajectory",
    "finite_difference_step",
    "hvp",
    "inner_step",
    "lr_rows",
    "meta_gradient_hvp",
    "meta_objective",
    "query_trajectory",
    "scaled_grad",
    "select_adapted",
    "task_objective",
]
