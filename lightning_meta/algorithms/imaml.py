"""Implicit MAML (Rajeswaran et al., 2019) as a LightningModule over the functional core."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from lightning_meta.algorithms.inner_loop import InnerLoopLearner
from lightning_meta.checks import check_choice, check_number, check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional import MetaObjective, ProximalDescent, imaml_objective


class IMAML(InnerLoopLearner):
    """Implicit MAML: each task solves ``phi* = argmin L_support(phi) + lam/2 ||phi - theta||^2`` approximately
    (``inner_steps`` of gradient descent at ``inner_lr``), and the meta-gradient is the implicit one,
    ``(I + H / lam)^-1 grad L_query(phi*)`` with ``H`` the support-loss Hessian at ``phi*``, by ``cg_steps`` of
    conjugate gradient on Hessian-vector products. Nothing is unrolled: memory is flat in ``inner_steps``.

    The meta-gradient reaches Lightning as a gradient (``objective(batch).loss.backward()``), so accumulation,
    clipping, AMP and DDP apply unchanged. Evaluation solves the same proximal problem for
    ``eval_inner_steps`` steps. The math is [implicit_meta_gradient][lightning_meta.functional.implicit_meta_gradient].

    Args:
        model: the learner ``f_theta``.
        inner_lr: the step size of the inner gradient descent (stable below ``2 / (L + lam)`` for an
            ``L``-smooth support loss).
        inner_steps: inner gradient steps per task (the paper: 16 for Omniglot 5-way, 25 for 20-way).
        lam: the proximal regularization strength ``lambda`` (the paper: 2.0 on Omniglot, 0.5 on miniImageNet).
        cg_steps: conjugate-gradient iterations (the paper: 5).
        hvp_method: ``"autograd"`` (double backward) or ``"finite_difference"``.
        **kwargs: the other options of [InnerLoopLearner][lightning_meta.InnerLoopLearner]
            (``eval_inner_steps``, ``adapt``, ``batch_norm``, ``optimizer``, ...).

    Examples:
        >>> import torch
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> model = IMAML(MLP(), inner_lr=0.01, inner_steps=10, lam=1.0, cg_steps=5)
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(4)])
        >>> model.objective(batch).loss.backward()  # the implicit meta-gradient, averaged over the 4 tasks
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 16,
        lam: float = 2.0,
        cg_steps: int = 5,
        hvp_method: Literal["autograd", "finite_difference"] = "autograd",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, **kwargs)
        check_number("lam", lam)
        check_positive("cg_steps", cg_steps)
        check_choice("hvp_method", hvp_method, ("autograd", "finite_difference"))
        self.lam, self.cg_steps, self.hvp_method = float(lam), cg_steps, hvp_method

    def make_inner_optimizer(self) -> ProximalDescent:
        """Gradient descent on the proximal problem around ``theta`` (evaluation solves the same problem)."""
        return ProximalDescent(self.adapted, self.lam, self.inner_lr, self._loss_scale())

    def objective(self, batch: TaskBatch) -> MetaObjective:
        """``loss.backward()`` puts the mean implicit meta-gradient into ``.grad``; ``loss``'s value is the mean
        query loss at ``phi*`` ([imaml_objective][lightning_meta.functional.imaml_objective])."""
        batch, task_type = self.prepare_batch(batch)
        return imaml_objective(self.task_loss(task_type), self.theta(), batch, self.adapted, lam=self.lam,
                               lr=self.inner_lr, steps=self.inner_steps, cg_steps=self.cg_steps,
                               hvp_method=self.hvp_method, loss_scale=self._loss_scale())
