"""Reptile (Nichol et al., 2018) as a LightningModule over the functional core."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_meta.algorithms.inner_loop import InnerLoopLearner
from lightning_meta.checks import check_choice, check_number
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional import InnerAdam, MetaObjective, reptile_objective
from lightning_meta.functional.reptile import InnerOptimizerKind


class Reptile(InnerLoopLearner):
    """Reptile: train each task's copy ``phi`` with ``inner_steps`` of SGD or Adam on the task's data, then move
    ``theta`` towards the adapted weights, ``theta <- theta + eps * mean_tasks(phi_K - theta)``.

    The update is handed to the configured optimizer as the gradient ``theta - mean_tasks(phi_K)`` (the paper
    treats the difference as a gradient), so the default ``SGD(lr=1.0)`` is the paper's update with
    ``eps = 1``, the paper's linear annealing of ``eps`` is an LR scheduler (``LinearLR`` to 0), and gradient
    accumulation, clipping, AMP and DDP apply unchanged (DDP averages over every rank's tasks). No second
    derivatives, no graph through the inner loop: memory is flat in ``inner_steps``.

    Evaluation adapts with the same inner optimizer on the support set for ``eval_inner_steps`` (the paper:
    50 steps). ``train/loss`` is the query loss after adaptation (with ``inner_data="all"`` the queries are part
    of the inner training data, as in the paper, so it is optimistic).

    Args:
        model: the learner ``f_theta``.
        inner_lr: the inner optimizer's learning rate (the paper: Adam 0.001 for few-shot classification).
        inner_steps: inner steps per task in training (the paper: 5 for Omniglot, 8 for miniImageNet).
        inner_optimizer: ``"adam"`` (the paper's, with ``beta1 = 0``) or ``"sgd"``.
        inner_betas: Adam's ``(beta1, beta2)``.
        inner_data: ``"all"`` (support and query: all the task's data, the paper's training) or ``"support"``.
        **kwargs: the other options of [InnerLoopLearner][lightning_meta.InnerLoopLearner]
            (``eval_inner_steps``, ``adapt``, ``batch_norm``, ``optimizer``, ...).

    Examples:
        >>> import torch
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> model = Reptile(MLP(), inner_lr=0.02, inner_steps=5, inner_optimizer="sgd")
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(4)])
        >>> model.objective(batch).loss.backward()  # .grad = theta - mean(phi_K): SGD(lr=eps) steps to Reptile
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.001,
        inner_steps: int = 5,
        inner_optimizer: InnerOptimizerKind = "adam",
        inner_betas: tuple[float, float] = (0.0, 0.999),
        inner_data: Literal["all", "support"] = "all",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, **kwargs)
        check_choice("inner_optimizer", inner_optimizer, ("sgd", "adam"))
        check_choice("inner_data", inner_data, ("all", "support"))
        for i, beta in enumerate(inner_betas):
            check_number(f"inner_betas[{i}]", beta, 0.0, strict=False)
            if beta >= 1:
                raise ValueError(f"inner_betas[{i}] must be < 1, got {beta!r}")
        self.inner_optimizer, self.inner_betas, self.inner_data = inner_optimizer, tuple(inner_betas), inner_data

    def default_optimizer(self, params: Iterable[Tensor]) -> Optimizer:
        """``SGD(lr=1.0)``: the paper's outer update ``theta + eps (phi - theta)`` with ``eps = 1``."""
        return torch.optim.SGD(params, lr=1.0)

    def make_inner_optimizer(self) -> InnerAdam:
        """The configured inner SGD or Adam on ``adapted`` (training and evaluation alike)."""
        return InnerAdam(self.adapted, self.inner_lr, self.inner_optimizer, self.inner_betas,
                         loss_scale=self._loss_scale())

    def objective(self, batch: TaskBatch) -> MetaObjective:
        """``loss.backward()`` puts ``theta - mean_tasks(phi_K)`` into ``.grad``; ``loss``'s value is the mean query
        loss after adaptation ([reptile_objective][lightning_meta.functional.reptile_objective])."""
        batch, task_type = self.prepare_batch(batch)
        return reptile_objective(self.task_loss(task_type), self.theta(), batch, self.make_inner_optimizer(),
                                 self.inner_steps, inner_data=self.inner_data)
