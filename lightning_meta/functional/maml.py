"""The MAML meta-objective of a meta-batch, one result type for every meta-gradient mode.

[task_objective][lightning_meta.functional.task_objective] is the pure per-task function (support adaptation,
then the query loss); the caller loops it or ``vmap``s it. [meta_objective][lightning_meta.functional.meta_objective]
does either over a [TaskBatch][lightning_meta.TaskBatch] and returns a
[MetaObjective][lightning_meta.functional.MetaObjective] whose ``loss.backward()`` yields the meta-gradient,
whatever the mode:

* ``"second_order"``: autograd through the unrolled inner loop (exact);
* ``"first_order"``: FOMAML, the inner gradients treated as constants;
* ``"hvp"``: the exact meta-gradient by the reverse Hessian-vector-product recurrence
  ([meta_gradient_hvp][lightning_meta.functional.meta_gradient_hvp]), one inner step in memory at a time; ``loss`` is
  then a surrogate whose gradient is that meta-gradient and whose value is the mean query loss.

[query_trajectory][lightning_meta.functional.query_trajectory] (``evaluation.py``) is the evaluation counterpart,
shared by every learner with an inner loop. It runs without any Lightning object, so the same functions drive a
LightningModule, a Fabric loop or plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.func import vmap

from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional.hvp import HvpMethod, meta_gradient_hvp
from lightning_meta.functional.inner_loop import TaskLoss, inner_step, lr_rows, step_row
from lightning_meta.functional.inner_optim import adapt
from lightning_meta.functional.meta_batch import MetaObjective, TaskGradient, gradient_objective
from lightning_meta.functional.params import Params

MetaGradient = Literal["second_order", "first_order", "hvp"]
#: the key under which a learned ``inner_lrs`` gets its HVP meta-gradient in ``gradient_objective``
INNER_LRS = "inner_lrs"
META_GRADIENTS: tuple[str, ...] = ("second_order", "first_order", "hvp")


def task_objective(
    task_loss: TaskLoss,
    params: Params,
    names: Sequence[str],
    lrs: Tensor,
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    steps: int,
    *,
    first_order: bool = False,
    loss_scale: float = 1.0,
    functional: bool = False,
    step_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One task: adapt on ``support`` for ``steps`` steps, then ``(query loss, query output, inner losses)``.

    Second-order unless ``first_order``; ``functional=True`` is the form ``vmap`` can map over tasks. With
    ``step_weights`` (``[steps]``, MAML++'s multi-step loss) the loss is ``sum_k w_k * query loss after step k``
    instead of the last step's alone; the output is still the last step's.
    """
    if step_weights is None:
        fast, inner = adapt(task_loss, params, names, *support, lrs, steps, create_graph=not first_order,
                            first_order=first_order, loss_scale=loss_scale, functional=functional)
        q_loss, q_out = task_loss.at_step(steps)(fast, *query)
        return q_loss, q_out, inner
    fast, inner_losses, weighted = dict(params), [], 0.0
    for k in range(steps):
        fast, loss, _ = inner_step(task_loss.at_step(k), fast, names, *support, lrs[step_row(lrs, k)],
                                   create_graph=not first_order, first_order=first_order, loss_scale=loss_scale,
                                   functional=functional)
        inner_losses.append(loss.detach())
        q_loss, q_out = task_loss.at_step(k + 1)(fast, *query)
        weighted = weighted + step_weights[k] * q_loss
    return weighted, q_out, torch.stack(inner_losses)


def multi_step_loss_weights(steps: int, epoch: int, anneal_epochs: int) -> Tensor:
    """MAML++'s per-step query-loss weights at ``epoch`` (Antoniou et al., 2019): uniform ``1/steps`` at epoch 0;
    every non-final weight then decays by ``epoch / (steps * anneal_epochs)`` down to ``0.03 / steps``, and the
    final one grows by the same total, up to ``1 - 0.03 (steps - 1) / steps``.

    Examples:
        >>> multi_step_loss_weights(4, 0, 10).tolist()
        [0.25, 0.25, 0.25, 0.25]
        >>> [round(w, 4) for w in multi_step_loss_weights(4, 10, 10).tolist()]
        [0.0075, 0.0075, 0.0075, 0.9775]
    """
    decay = epoch / steps / anneal_epochs
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    weights[:-1] = (weights[:-1] - decay).clamp_min(0.03 / steps)
    weights[-1] = min(float(weights[-1]) + (steps - 1) * decay, 1.0 - (steps - 1) * 0.03 / steps)
    return weights  # float64: cast to the model's dtype where used


def meta_objective(
    task_loss: TaskLoss,
    params: Params,
    batch: TaskBatch,
    inner_lrs: Tensor | float,
    steps: int = 1,
    mode: MetaGradient = "second_order",
    *,
    adapted: Sequence[str] | None = None,
    vectorize: bool = False,
    hvp_method: HvpMethod = "autograd",
    loss_scale: float = 1.0,
    step_weights: Tensor | None = None,
) -> MetaObjective:
    """The meta-objective of ``batch`` with ``params`` as ``theta``; ``loss.backward()`` gives the meta-gradient.

    ``mode``: ``"second_order"`` (autograd through the unrolled inner loop, exact), ``"first_order"`` (FOMAML:
    inner gradients as constants) or ``"hvp"`` (exact, by the reverse Hessian-vector-product recurrence, one
    inner step in memory at a time; ``loss`` is then a surrogate whose value is the mean query loss).
    ``adapted``: names of the tensors the inner loop adapts (default: all of ``params``); ``inner_lrs``: a
    float or a ``[rows, len(adapted)]`` tensor (a parameter when learned: it then gets a gradient too);
    ``vectorize`` maps [task_objective][lightning_meta.functional.task_objective] over the tasks with
    ``torch.func.vmap`` (not with ``"hvp"``);
    ``loss_scale`` multiplies the support loss before each inner gradient and divides the gradient back;
    ``step_weights`` (``[steps]``, not with ``"hvp"``) makes the objective MAML++'s multi-step loss
    (``query_losses`` are then each task's weighted sum; see
    [multi_step_loss_weights][lightning_meta.functional.multi_step_loss_weights]).

    Examples:
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> batch = SinusoidTasks(shots=5, queries=5).sample("train", [torch.Generator().manual_seed(i)
        ...                                                          for i in range(4)])
        >>> objective = meta_objective(TaskLoss(model, torch.nn.functional.mse_loss),
        ...                            dict(model.named_parameters()), batch, inner_lrs=0.01)
        >>> objective.loss.backward()  # the meta-gradient, now in model's .grad
        >>> objective.query_losses.shape, objective.inner_losses.shape
        (torch.Size([4]), torch.Size([4, 1]))
    """
    if mode not in META_GRADIENTS:
        raise ValueError(f"mode must be one of {list(META_GRADIENTS)}, got {mode!r}")
    names = list(params) if adapted is None else list(adapted)
    lrs = lr_rows(inner_lrs, names, next(iter(params.values())))
    if step_weights is not None and len(step_weights) != steps:
        raise ValueError(f"step_weights has {len(step_weights)} entries; it needs one per inner step ({steps})")
    if mode == "hvp":
        if vectorize:
            raise ValueError("vectorize=True does not apply to mode='hvp' (its recurrence runs per task)")
        if step_weights is not None:
            raise ValueError("step_weights (the multi-step loss) needs mode 'second_order' or 'first_order', not 'hvp'")
        return _hvp_objective(task_loss, params, names, lrs, batch, steps, hvp_method, loss_scale)
    first_order = mode == "first_order"
    if vectorize:
        def one(params: Params, lrs: Tensor, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor):
            return task_objective(task_loss, params, names, lrs, (xs, ys), (xq, yq), steps,
                                  first_order=first_order, loss_scale=loss_scale, functional=True,
                                  step_weights=step_weights)

        q_losses, q_outs, inner = vmap(one, in_dims=(None, None, 0, 0, 0, 0), randomness="same")(params, lrs, *batch)
    else:
        results = [task_objective(task_loss, params, names, lrs, (batch.support_x[t], batch.support_y[t]),
                                  (batch.query_x[t], batch.query_y[t]), steps, first_order=first_order,
                                  loss_scale=loss_scale, step_weights=step_weights)
                   for t in range(batch.num_tasks)]
        q_losses, q_outs, inner = (torch.stack(parts) for parts in zip(*results))
    return MetaObjective(q_losses.mean(), q_losses.detach(), q_outs.detach(), inner.detach())


def _hvp_objective(task_loss: TaskLoss, params: Params, names: list[str], lrs: Tensor, batch: TaskBatch,
                   steps: int, method: HvpMethod, loss_scale: float) -> MetaObjective:
    """Per-task exact meta-gradients by the HVP recurrence, averaged as a surrogate loss over ``params`` (and a
    learned ``lrs``)."""
    def tasks() -> Iterator[TaskGradient]:  # one task's gradients in memory at a time
        for t in range(batch.num_tasks):
            g, lr_g, q_loss, q_out, inner = meta_gradient_hvp(
                task_loss, params, names, lrs, (batch.support_x[t], batch.support_y[t]),
                (batch.query_x[t], batch.query_y[t]), steps, method, loss_scale)
            yield TaskGradient({**g, INNER_LRS: lr_g}, q_loss, q_out, torch.stack(inner))

    return gradient_objective({**params, INNER_LRS: lrs} if lrs.requires_grad else params, tasks())
