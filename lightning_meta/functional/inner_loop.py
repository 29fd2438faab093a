"""The MAML inner loop over a parameter dict, with ``torch.func.functional_call`` (no module cloning)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


class TaskLoss:
    """``(params, x, y) -> (loss, output)`` of ``model`` run with ``params`` (missing names: the module's own).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> f = TaskLoss(model, torch.nn.functional.mse_loss)
        >>> loss, out = f(dict(model.named_parameters()), torch.zeros(4, 2), torch.zeros(4, 1))
        >>> out.shape
        torch.Size([4, 1])
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model, self.loss_fn = model, loss_fn

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        output = functional_call(self.model, params, (x,))
        return self.loss_fn(output, y), output


def scaled_grad(loss: Tensor, inputs: Sequence[Tensor], scale: float = 1.0, create_graph: bool = False) -> list[Tensor]:
    """``d loss / d inputs``, computed on ``loss * scale`` and divided back (fp16 underflow guard)."""
    if scale == 1.0:
        return list(torch.autograd.grad(loss, inputs, create_graph=create_graph))
    grads = torch.autograd.grad(loss * scale, inputs, create_graph=create_graph)
    return [g / scale for g in grads]


def adapt(
    task_loss: TaskLoss,
    params: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    lrs: Tensor,
    steps: int,
    *,
    create_graph: bool,
    first_order: bool = False,
    loss_scale: float = 1.0,
    on_step: Callable[[int, Params, Tensor], None] | None = None,
) -> Params:
    """``steps`` SGD steps on the support loss: ``phi <- phi - lrs[k, i] * grad_i``, for the tensors ``names``.

    ``lrs`` is ``[>= 1, len(names)]``; step ``k`` uses row ``min(k, rows - 1)``. ``create_graph=True`` keeps
    the graph for second-order meta-gradients; ``first_order=True`` treats the inner gradients as constants.
    ``on_step(k, phi_k, support_loss_k)`` is called before each step (for curves and checks).
    """
    fast = dict(params)
    for k in range(steps):
        loss, _ = task_loss(fast, x, y)
        if on_step is not None:
            on_step(k, fast, loss)
        grads = scaled_grad(loss, [fast[n] for n in names], loss_scale, create_graph)
        row = lrs[min(k, lrs.shape[0] - 1)]
        for i, (name, g) in enumerate(zip(names, grads)):
            fast[name] = fast[name] - row[i] * (g.detach() if first_order else g)
    return fast
