"""One inner-loop step over a parameter dict, with ``torch.func.functional_call`` (no module cloning).

[inner_step][lightning_meta.functional.inner_step] is the only place that writes ``phi <- phi - lr * grad``: MAML's
inner optimizer ([InnerSGD][lightning_meta.functional.InnerSGD], behind [adapt][lightning_meta.functional.adapt], the
per-task function that ``vmap`` maps and the evaluation trajectory) and the HVP recurrence's forward pass call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from lightning_meta.functional.params import Params

LossFn = Callable[[Tensor, Tensor], Tensor]


class TaskLoss:
    """``(params, x, y) -> (loss, output)`` of ``model`` run with ``params`` (missing names: the module's own).

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> f = TaskLoss(model, torch.nn.functional.mse_loss)
        >>> loss, out = f(dict(model.named_parameters()), torch.zeros(4, 2), torch.zeros(4, 1))
        >>> out.shape
        torch.Size([4, 1])
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, step_hook: Callable[[int], None] | None = None) -> None:
        self.model, self.loss_fn, self.step_hook = model, loss_fn, step_hook
        self._step: int | None = None

    def at_step(self, k: int) -> TaskLoss:
        """This loss for forwards at the ``k``-th inner iterate ``phi_k`` (``step_hook(k)`` runs first: models with
        per-step layers, e.g. MAML++'s per-step BatchNorm); without a ``step_hook``, this loss itself."""
        if self.step_hook is None:
            return self
        at = TaskLoss(self.model, self.loss_fn, self.step_hook)
        at._step = k
        return at

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._step is not None:
            self.step_hook(self._step)
        output = functional_call(self.model, params, (x,))
        return self.loss_fn(output, y), output


def scaled_grad(loss: Tensor, inputs: Sequence[Tensor], scale: float = 1.0, create_graph: bool = False) -> list[Tensor]:
    """``d loss / d inputs``, computed on ``loss * scale`` and divided back (fp16 underflow guard)."""
    if scale == 1.0:
        return list(torch.autograd.grad(loss, inputs, create_graph=create_graph))
    grads = torch.autograd.grad(loss * scale, inputs, create_graph=create_graph)
    return [g / scale for g in grads]


def lr_rows(inner_lrs: Tensor | float, names: Sequence[str], like: Tensor) -> Tensor:
    """Inner learning rates as ``[rows, len(names)]`` (step ``k`` uses row ``min(k, rows - 1)``)."""
    if isinstance(inner_lrs, Tensor):
        return inner_lrs
    return torch.full((1, len(names)), float(inner_lrs), dtype=like.dtype, device=like.device)


def step_row(lrs: Tensor, k: int) -> int:
    """The row of ``lrs [rows, n]`` that inner step ``k`` uses: ``k``, or the last row (one row: every step)."""
    return min(k, lrs.shape[0] - 1)


def inner_step(
    task_loss: TaskLoss,
    params: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    lr_row: Tensor,
    *,
    create_graph: bool = False,
    first_order: bool = False,
    loss_scale: float = 1.0,
    functional: bool = False,
) -> tuple[Params, Tensor, list[Tensor]]:
    """One SGD step on the support loss: ``(phi', support loss at phi, gradients of the tensors names)``.

    ``phi'[n] = phi[n] - lr_row[i] * grad_n`` for the ``i``-th name; other tensors are passed through.
    ``create_graph=True`` keeps the graph (second-order), ``first_order=True`` treats the gradient as a
    constant (FOMAML). ``functional=True`` differentiates with ``torch.func.grad_and_value``, which works
    under ``vmap`` and keeps the graph to the outer level like ``create_graph=True``. ``loss_scale``
    multiplies the loss before differentiation and divides the gradient back (float16 underflow guard).

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> theta = {"weight": torch.ones(1, 1, requires_grad=True)}
        >>> phi, loss, _ = inner_step(f, theta, ["weight"], torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([0.5]))
        >>> phi["weight"].item(), loss.item()  # grad = w * x^2 = 1
        (0.5, 0.5)
    """
    if functional:
        def scaled_support_loss(adapted: Params) -> Tensor:
            return task_loss({**params, **adapted}, x, y)[0] * loss_scale

        grad_dict, scaled = grad_and_value(scaled_support_loss)({n: params[n] for n in names})
        loss = scaled / loss_scale if loss_scale != 1.0 else scaled
        grads = [grad_dict[n] / loss_scale if loss_scale != 1.0 else grad_dict[n] for n in names]
    else:
        loss, _ = task_loss(params, x, y)
        grads = scaled_grad(loss, [params[n] for n in names], loss_scale, create_graph)
    new = dict(params)
    for i, (name, g) in enumerate(zip(names, grads)):
        new[name] = params[name] - lr_row[i] * (g.detach() if first_order else g)
    return new, loss, grads
