"""The one result type of a meta-batch objective, for every learner and meta-gradient mode, and the shared helper of
the learners that compute their meta-gradient themselves (MAML's HVP mode, iMAML, Reptile): per-task gradients,
their mean, handed to ``backward`` as a loss."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_meta.functional.params import Params, as_gradient_loss


class MetaObjective(NamedTuple):
    """What [meta_objective][lightning_meta.functional.meta_objective] returns for a meta-batch of ``T`` tasks.

    ``loss``: scalar whose ``.backward()`` gives the meta-gradient (mean over tasks); ``query_losses``
    ``[T]``, ``query_outputs`` ``[T, M, ...]`` and ``inner_losses`` ``[T, steps]`` (support loss before each
    inner step) are detached, for metrics and checks.

    Examples:
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.functional import TaskLoss, meta_objective
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(3)])
        >>> result = meta_objective(TaskLoss(model, torch.nn.functional.mse_loss), dict(model.named_parameters()),
        ...                         batch, inner_lrs=0.01, steps=2)
        >>> result.loss.requires_grad, result.query_losses.requires_grad, tuple(result.inner_losses.shape)
        (True, False, (3, 2))
    """

    loss: Tensor
    query_losses: Tensor
    query_outputs: Tensor
    inner_losses: Tensor

    @classmethod
    def without_inner_loop(cls, losses: Tensor, outputs: Tensor) -> MetaObjective:
        """The objective of a learner without an inner loop (ProtoNet, black-box): ``losses [T]`` with their
        graph, ``outputs [T, M, ...]``; ``loss`` is their mean and ``inner_losses`` is ``[T, 0]``."""
        return cls(losses.mean(), losses.detach(), outputs.detach(), losses.new_zeros(len(losses), 0))


class TaskGradient(NamedTuple):
    """One task's computed meta-gradient ``grads`` (by name) and its detached query loss, query output and support
    losses ``[steps]``: what [gradient_objective][lightning_meta.functional.gradient_objective] averages."""

    grads: Params
    query_loss: Tensor
    query_output: Tensor
    inner_losses: Tensor


def gradient_objective(params: Params, tasks: Iterable[TaskGradient]) -> MetaObjective:
    """The meta-batch objective of per-task meta-gradients: ``loss``'s gradient with respect to each ``params[n]`` is
    the mean over ``tasks`` of ``grads[n]``, its value the mean query loss
    ([as_gradient_loss][lightning_meta.functional.as_gradient_loss]). ``tasks`` may be a generator: the gradients
    are summed as they come, so memory holds one task's gradients beside the running sum, whatever the meta-batch.

    Examples:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> tasks = [TaskGradient({"w": torch.tensor([1.0, 2.0])}, torch.tensor(1.0), torch.zeros(3), torch.zeros(0)),
        ...          TaskGradient({"w": torch.tensor([3.0, 0.0])}, torch.tensor(3.0), torch.zeros(3), torch.zeros(0))]
        >>> objective = gradient_objective({"w": w}, tasks)
        >>> objective.loss.backward()
        >>> objective.loss.item(), w.grad
        (2.0, tensor([2., 1.]))
    """
    total: Params | None = None
    query_losses, query_outputs, inner_losses = [], [], []
    for task in tasks:
        grads = {n: task.grads[n] for n in params}
        total = grads if total is None else {n: total[n] + g for n, g in grads.items()}
        query_losses.append(task.query_loss), query_outputs.append(task.query_output)
        inner_losses.append(task.inner_losses)
    if total is None:
        raise ValueError("gradient_objective needs at least one task")
    losses = torch.stack(query_losses)
    mean = {n: g / len(query_losses) for n, g in total.items()}
    return MetaObjective(as_gradient_loss(params, mean, losses.mean()), losses, torch.stack(query_outputs),
                         torch.stack(inner_losses))
