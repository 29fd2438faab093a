"""Reptile (Nichol et al., 2018): adapt each task with plain SGD or Adam, then move ``theta`` towards the adapted
weights: ``theta <- theta + eps * mean_tasks(phi_K - theta)``. The meta-update is expressed as a gradient,
``theta - mean_tasks(phi_K)``, so any outer optimizer (``SGD(lr=eps)`` is the paper's update), gradient
accumulation, clipping and DDP's all-reduce apply to it unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional.inner_loop import TaskLoss
from lightning_meta.functional.inner_optim import InnerAdam, InnerOptimizer, unroll
from lightning_meta.functional.meta_batch import MetaObjective, TaskGradient, gradient_objective
from lightning_meta.functional.params import Params

InnerOptimizerKind = Literal["sgd", "adam"]


def inner_train(
    task_loss: TaskLoss,
    theta: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    optimizer: InnerOptimizerKind = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    loss_scale: float = 1.0,
) -> tuple[Params, Tensor]:
    """``steps`` full-batch steps of SGD or Adam (``betas``; the paper uses ``beta1 = 0``) on ``(x, y)`` from
    ``theta``, without a graph to ``theta``: ``(phi_K, losses before each step [steps])``, detached.

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> phi, _ = inner_train(f, {"weight": torch.ones(1, 1)}, ["weight"], torch.ones(1, 1), torch.zeros(1, 1),
        ...                      steps=2, lr=0.5)
        >>> phi["weight"].item()  # w <- w - 0.5 w, twice
        0.25
    """
    return unroll(InnerAdam(names, lr, optimizer, betas, eps, loss_scale), task_loss, theta, x, y, steps).final()


def inner_train_trajectory(
    task_loss: TaskLoss,
    theta: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    optimizer: InnerOptimizerKind = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    loss_scale: float = 1.0,
) -> Iterator[tuple[int, Params]]:
    """``(k, phi_k)`` for ``k = 0..steps`` of [inner_train][lightning_meta.functional.inner_train]: evaluation."""
    return iter(unroll(InnerAdam(names, lr, optimizer, betas, eps, loss_scale), task_loss, theta, x, y, steps))


def reptile_gradient(theta: Params, adapted: Sequence[Params]) -> Params:
    """``theta - mean_tasks(phi_K)`` per tensor: the direction whose negative the Reptile update follows.

    Examples:
        >>> reptile_gradient({"w": torch.tensor(1.0)}, [{"w": torch.tensor(0.0)}, {"w": torch.tensor(0.5)}])
        {'w': tensor(0.7500)}
    """
    return {n: p.detach() - torch.stack([phi[n] for phi in adapted]).mean(0) for n, p in theta.items()}


def reptile_objective(
    task_loss: TaskLoss,
    theta: Params,
    batch: TaskBatch,
    optimizer: InnerOptimizer,
    steps: int,
    *,
    inner_data: Literal["all", "support"] = "all",
) -> MetaObjective:
    """Reptile's meta-batch objective: each task trains a copy of ``theta`` for ``steps`` of ``optimizer`` (an inner
    optimizer without a graph, e.g. [InnerAdam][lightning_meta.functional.InnerAdam]) on its support set (and its
    queries, ``inner_data="all"``: the paper's); ``loss.backward()`` puts ``theta - mean_tasks(phi_K)`` into
    ``.grad`` and ``loss``'s value is the mean query loss after adaptation.

    Examples:
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(2)])
        >>> theta = dict(model.named_parameters())
        >>> objective = reptile_objective(TaskLoss(model, torch.nn.functional.mse_loss), theta, batch,
        ...                               InnerAdam(list(theta), lr=0.01, kind="sgd"), steps=5)
        >>> objective.loss.backward()  # .grad = theta - mean(phi_5)
    """
    def tasks() -> Iterator[TaskGradient]:  # one task's adapted weights in memory at a time
        for t in range(batch.num_tasks):
            x, y = batch.support_x[t], batch.support_y[t]
            if inner_data == "all":
                x, y = torch.cat([x, batch.query_x[t]]), torch.cat([y, batch.query_y[t]])
            phi, losses = unroll(optimizer, task_loss, theta, x, y, steps).final()
            with torch.no_grad():
                q_loss, q_out = task_loss(phi, batch.query_x[t], batch.query_y[t])
            yield TaskGradient({n: p.detach() - phi[n] for n, p in theta.items()}, q_loss, q_out, losses)

    return gradient_objective(theta, tasks())
