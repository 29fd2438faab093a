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

from lightning_meta.functional.hvp import HvpMethod, hvp
from lightning_meta.functional.inner_loop import Params, TaskLoss, scaled_grad

Vector = dict[str, Tensor]


def proximal_step(task_loss: TaskLoss, phi: Params, theta: Params, names: Sequence[str], x: Tensor, y: Tensor,
                  lam: float, lr: float, loss_scale: float = 1.0) -> tuple[Params, Tensor]:
    """One gradient step on ``L(phi) + lam/2 ||phi - theta||^2``, without a graph: ``(phi', L(phi))``."""
    leaves = {**phi, **{n: phi[n].detach().requires_grad_() for n in names}}
    with torch.enable_grad():
        loss, _ = task_loss(leaves, x, y)
        grads = scaled_grad(loss, [leaves[n] for n in names], loss_scale)
    new = {n: p.detach() for n, p in phi.items()}
    for n, g in zip(names, grads):
        new[n] = new[n] - lr * (g + lam * (new[n] - theta[n].detach()))
    return new, loss.detach()


def proximal_adapt(task_loss: TaskLoss, theta: Params, names: Sequence[str], x: Tensor, y: Tensor, lam: float,
                   lr: float, steps: int, loss_scale: float = 1.0) -> tuple[Params, Tensor]:
    """``steps`` of gradient descent on ``L(phi) + lam/2 ||phi - theta||^2`` from ``phi = theta``, without any
    graph to ``theta``: ``(phi, support losses [steps])``, detached."""
    phi, losses = {n: p.detach() for n, p in theta.items()}, []
    for _ in range(steps):
        phi, loss = proximal_step(task_loss, phi, theta, names, x, y, lam, lr, loss_scale)
        losses.append(loss)
    return phi, torch.stack(losses) if losses else x.new_zeros(0)


def proximal_trajectory(task_loss: TaskLoss, theta: Params, names: Sequence[str], x: Tensor, y: Tensor, lam: float,
                        lr: float, steps: int, loss_scale: float = 1.0) -> Iterator[tuple[int, Params]]:
    """``(k, phi_k)`` for ``k = 0..steps`` of [proximal_adapt][lightning_meta.functional.proximal_adapt]."""
    phi = {n: p.detach() for n, p in theta.items()}
    for k in range(steps + 1):
        yield k, phi
        if k < steps:
            phi, _ = proximal_step(task_loss, phi, theta, names, x, y, lam, lr, loss_scale)


def conjugate_gradient(apply: Callable[[Vector], Vector], b: Vector, steps: int) -> Vector:
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


def _dot(a: Vector, b: Vector) -> Tensor:
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
) -> tuple[Vector, Tensor, Tensor, Tensor]:
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

        def system(v: Vector) -> Vector:  # (I + H / lam) v on the adapted tensors
            hv = hvp(task_loss, phi, v, xs, ys, hvp_method, loss_scale)
            return {n: v[n] + hv[n] / lam for n in v}

        v = conjugate_gradient(system, {n: q_grads[n].detach() for n in names}, cg_steps)
        others = [n for n in phi if n not in set(names)]
        mixed = hvp(task_loss, phi, v, xs, ys, hvp_method, loss_scale) if others else {}
    grads = {n: v[n] if n in v else q_grads[n].detach() - mixed[n] / lam for n in phi}
    return grads, q_loss.detach(), q_out.detach(), inner
