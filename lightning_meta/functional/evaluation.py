"""Evaluation of the learners with an inner loop: query losses and outputs after each inner step, any inner
optimizer, no outer graph."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional.inner_loop import TaskLoss, lr_rows
from lightning_meta.functional.inner_optim import InnerOptimizer, InnerSGD, unroll
from lightning_meta.functional.params import Params


def query_trajectory(
    task_loss: TaskLoss,
    params: Params,
    batch: TaskBatch,
    inner_lrs: Tensor | float | None,
    steps: int,
    *,
    adapted: Sequence[str] | None = None,
    at: Iterable[int] | None = None,
    loss_scale: float = 1.0,
    optimizer: InnerOptimizer | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Evaluation: ``{k: (query losses [T], query outputs [T, M, ...])}`` after ``k`` inner steps, for ``k`` in
    ``at`` (default ``0..steps``), adapting each task without an outer graph (all results detached).

    ``optimizer`` is the inner optimizer that adapts each task ([unroll][lightning_meta.functional.unroll]); the
    default is MAML's SGD at ``inner_lrs`` on ``adapted`` ([InnerSGD][lightning_meta.functional.InnerSGD]; both are
    unused when ``optimizer`` is given); Reptile and iMAML pass theirs.

    Examples:
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.functional import TaskLoss
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> batch = SinusoidTasks().sample("test", [torch.Generator().manual_seed(i) for i in range(3)])
        >>> curve = query_trajectory(TaskLoss(model, torch.nn.functional.mse_loss),
        ...                          dict(model.named_parameters()), batch, inner_lrs=0.01, steps=10, at=(0, 10))
        >>> sorted(curve), curve[10][0].shape
        ([0, 10], torch.Size([3]))
    """
    wanted = set(range(steps + 1) if at is None else at)
    points: dict[int, list[tuple[Tensor, Tensor]]] = {k: [] for k in sorted(wanted)}
    if optimizer is None:
        names = list(params) if adapted is None else list(adapted)
        lrs = lr_rows(inner_lrs, names, next(iter(params.values()))).detach()
        optimizer = InnerSGD(names, lrs, loss_scale=loss_scale)
    for t in range(batch.num_tasks):
        for k, phi in unroll(optimizer, task_loss, params, batch.support_x[t], batch.support_y[t], max(wanted)):
            if k in wanted:
                with torch.no_grad():
                    loss, out = task_loss.at_step(k)(phi, batch.query_x[t], batch.query_y[t])
                points[k].append((loss.detach(), out.detach()))
    return {k: (torch.stack([p[0] for p in v]), torch.stack([p[1] for p in v])) for k, v in points.items()}
