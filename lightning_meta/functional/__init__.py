"""The meta-learning math as plain functions over parameter dicts (``torch.func``), usable without Lightning.

One file per learner it serves, beside the learner's module in ``algorithms/``: ``maml.py`` (``task_objective``,
the pure per-task function that is looped or ``vmap``ped, and ``meta_objective`` over a meta-batch, every
meta-gradient mode), ``imaml.py`` (``imaml_objective``, ``implicit_meta_gradient``, ``conjugate_gradient``),
``reptile.py`` (``reptile_objective``), ``protonet.py`` (``prototypical_logits``), ``blackbox.py``
(``blackbox_losses``). Shared by them: ``inner_loop.py`` (``TaskLoss``, ``inner_step``), ``inner_optim.py`` (inner
optimizers as values, ``InnerSGD``, ``InnerAdam``, ``ProximalDescent``, and one ``unroll`` giving ``(k, phi_k)``),
``evaluation.py`` (``query_trajectory``), ``meta_batch.py`` (the one result type ``MetaObjective`` and
``gradient_objective``, per-task gradients handed to ``backward``), ``hvp.py`` (Hessian-vector products),
``params.py`` (``Params``, ``select_adapted``).
"""

from lightning_meta.functional.blackbox import blackbox_losses, gaussian_outputs
from lightning_meta.functional.evaluation import query_trajectory
from lightning_meta.functional.hvp import finite_difference_step, hvp, meta_gradient_hvp
from lightning_meta.functional.imaml import (
    conjugate_gradient,
    imaml_objective,
    implicit_meta_gradient,
    proximal_adapt,
    proximal_trajectory,
)
from lightning_meta.functional.inner_loop import TaskLoss, inner_step, lr_rows, scaled_grad
from lightning_meta.functional.inner_optim import (
    AdamState,
    InnerAdam,
    InnerOptimizer,
    InnerSGD,
    ProximalDescent,
    Unroll,
    adapt,
    adaptation_trajectory,
    unroll,
)
from lightning_meta.functional.maml import (
    META_GRADIENTS,
    MetaGradient,
    meta_objective,
    multi_step_loss_weights,
    task_objective,
)
from lightning_meta.functional.meta_batch import MetaObjective, TaskGradient, gradient_objective
from lightning_meta.functional.params import Params, as_gradient_loss, select_adapted
from lightning_meta.functional.protonet import class_prototypes, prototypical_logits
from lightning_meta.functional.reptile import inner_train, inner_train_trajectory, reptile_gradient, reptile_objective

__all__ = [
    "AdamState",
    "InnerAdam",
    "InnerOptimizer",
    "InnerSGD",
    "META_GRADIENTS",
    "MetaGradient",
    "MetaObjective",
    "Params",
    "ProximalDescent",
    "TaskGradient",
    "TaskLoss",
    "Unroll",
    "adapt",
    "adaptation_trajectory",
    "as_gradient_loss",
    "blackbox_losses",
    "class_prototypes",
    "conjugate_gradient",
    "finite_difference_step",
    "gaussian_outputs",
    "gradient_objective",
    "hvp",
    "imaml_objective",
    "implicit_meta_gradient",
    "inner_step",
    "inner_train",
    "inner_train_trajectory",
    "lr_rows",
    "meta_gradient_hvp",
    "meta_objective",
    "multi_step_loss_weights",
    "proximal_adapt",
    "proximal_trajectory",
    "prototypical_logits",
    "query_trajectory",
    "reptile_gradient",
    "reptile_objective",
    "scaled_grad",
    "select_adapted",
    "task_objective",
    "unroll",
]
