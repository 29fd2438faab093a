"""Implicit MAML (Rajeswaran et al., 2019): a proximal inner problem, and its meta-gradient by conjugate
gradient on Hessian-vector products, without unrolling (memory flat in the number of inner steps).

Inner problem, from ``theta``: ``phi* = argmin_phi L_support(phi) + (lam / 2) ||phi - theta||^2``, solved
approximately by ``steps`` of gradient descent. At its solution ``grad L_support(phi*) = lam (theta - phi*)``, so
``d phi* / d theta = (I + H / lam)^-1`` with ``H`` the support-loss Hessian at ``phi*``, and the meta-gradient is
``v = (I + H / lam)^-1 grad L_query(phi*)``, solved by ``cg_steps`` of conjugate gradient. A tensor the inner loop
does not adapt (``psi``) gets ``dL_query/dpsi - (d^2 L_support / dpsi dphi) v / lam``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional.hvp import HvpMethod, hvp
from lightning_meta.functional.inner_loop import TaskLoss, scaled_grad
from lightning_meta.functional.inner_optim import ProximalDescent, unroll
from lightning_meta.functional.meta_batch import MetaObjective, TaskGradient, gradient_objective
from lightning_meta.functional.params import Params


def proximal_adapt(task_loss: TaskLoss, theta: Params, names: Sequence[str], x: Tensor, y: Tensor, lam: float,
                   lr: float, steps: int, loss_scale: float = 1.0) -> tuple[Params, Tensor]:
    """``steps`` of gradient descent on ``L(phi) + lam/2 ||phi - theta||^2`` from ``phi = theta``, without any
    graph to ``theta``: ``(phi, support losses [steps])``, detached
    ([ProximalDescent][lightning_meta.functional.ProximalDescent], unrolled)."""
    return unroll(ProximalDescent(names, lam, lr, loss_scale), task_loss, theta, x, y, steps).final()


def proximal_trajectory(task_loss: TaskLoss, theta: Params, names: Sequence[str], x: Tensor, y: Tensor, lam: float,
                        lr: float, steps: int, loss_scale: float = 1.0) -> Iterator[tuple[int, Params]]:
    """``(k, phi_k)`` for ``k = 0..steps`` of [proximal_adapt][lightning_meta.functional.proximal_adapt]."""
    return iter(unroll(ProximalDescent(names, lam, lr, loss_scale), task_loss, theta, x, y, steps))


def conjugate_gradient(apply: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """Approximately solve ``A x = b`` for a symmetric positive-definite ``A`` given as ``apply(x) = A x``,
    by ``steps`` iterations of conjugate gradient from ``x = 0`` (exact after ``dim`` steps, in exact arithmetic).

    Examples:
        >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> x = conjugate_gradient(lambda v: {"w": a @ v["w"]}, {"w": torch.tensor([1.0, 2.0])}, steps=2)
        >>> torch.allclose(a @ x["w"], torch.tensor([1.0, 2.0]))
        True
    """
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r = {n: t.clone() for n, t in b.items()}
    p = {n: t.clone() for n, t in b.items()}
    rr = _dot(r, r)
    for _ in range(steps):
        if float(rr) == 0.0:
            break
        ap = apply(p)
        alpha = rr / _dot(p, ap)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_next = _dot(r, r)
        p = {n: r[n] + (rr_next / rr) * p[n] for n in p}
        rr = rr_next
    return x


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def implicit_meta_gradient(
    task_loss: TaskLoss,
    theta: Params,
    names: Sequence[str],
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    *,
    lam: float,
    lr: float,
    steps: int,
    cg_steps: int,
    hvp_method: HvpMethod = "autograd",
    loss_scale: float = 1.0,
) -> tuple[Params, Tensor, Tensor, Tensor]:
    """One task's implicit meta-gradient: ``(grads by name, query loss, query output, support losses)``, detached.

    Examples:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> f = TaskLoss(model, torch.nn.functional.mse_loss)
        >>> data = (torch.randn(8, 2), torch.randn(8, 1))
        >>> g, *_ = implicit_meta_gradient(f, dict(model.named_parameters()), ["weight"], data, data,
        ...                                lam=1.0, lr=0.1, steps=50, cg_steps=2)
        >>> g["weight"].shape
        torch.Size([1, 2])
    """
    xs, ys = support
    phi, inner = proximal_adapt(task_loss, theta, names, xs, ys, lam, lr, steps, loss_scale)
    with torch.enable_grad():
        final = {n: p.detach().requires_grad_() for n, p in phi.items()}
        q_loss, q_out = task_loss(final, *query)
        q_grads = dict(zip(final, scaled_grad(q_loss, list(final.values()), loss_scale)))

        def system(v: Params) -> Params:  # (I + H / lam) v on the adapted tensors
            hv = hvp(task_loss, phi, v, xs, ys, hvp_method, loss_scale)
            return {n: v[n] + hv[n] / lam for n in v}

        v = conjugate_gradient(system, {n: q_grads[n].detach() for n in names}, cg_steps)
        others = [n for n in phi if n not in set(names)]
        mixed = hvp(task_loss, phi, v, xs, ys, hvp_method, loss_scale) if others else {}
    grads = {n: v[n] if n in v else q_grads[n].detach() - mixed[n] / lam for n in phi}
    return grads, q_loss.detach(), q_out.detach(), inner


def imaml_objective(
    task_loss: TaskLoss,
    theta: Params,
    batch: TaskBatch,
    names: Sequence[str],
    *,
    lam: float,
    lr: float,
    steps: int,
    cg_steps: int,
    hvp_method: HvpMethod = "autograd",
    loss_scale: float = 1.0,
) -> MetaObjective:
    """iMAML's meta-batch objective: ``loss.backward()`` puts the mean over tasks of
    [implicit_meta_gradient][lightning_meta.functional.implicit_meta_gradient] into ``theta``'s ``.grad``; ``loss``'s
    value is the mean query loss at ``phi*``.

    Examples:
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(2)])
        >>> theta = dict(model.named_parameters())
        >>> objective = imaml_objective(TaskLoss(model, torch.nn.functional.mse_loss), theta, batch, list(theta),
        ...                             lam=1.0, lr=0.01, steps=3, cg_steps=2)
        >>> objective.loss.backward()
        >>> tuple(objective.inner_losses.shape)
        (2, 3)
    """
    tasks = (TaskGradient(*implicit_meta_gradient(
        task_loss, theta, names, (batch.support_x[t], batch.support_y[t]), (batch.query_x[t], batch.query_y[t]),
        lam=lam, lr=lr, steps=steps, cg_steps=cg_steps, hvp_method=hvp_method, loss_scale=loss_scale))
        for t in range(batch.num_tasks))  # a generator: one task's gradients in memory at a time
    return gradient_objective(theta, tasks)
