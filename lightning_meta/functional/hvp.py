"""Hessian-vector products of a task loss, and the exact MAML meta-gradient by reverse recurrence.

Never forms a Hessian: ``H w`` is either a double backward (``"autograd"``) or a central difference of two
gradients (``"finite_difference"``, for layers without a double backward):

    H w ~= (grad L(phi + eps w) - grad L(phi - eps w)) / (2 eps),
    eps = cbrt(machine_eps) * max(1, rms(phi)) / ||w||

The displacement ``eps * w`` then has norm ``cbrt(machine_eps)`` (times the parameters' RMS when that
exceeds 1), which balances truncation (O(eps^2)) against rounding (O(machine_eps / eps)): about 5e-3 for
float32 and 6e-6 for float64. Measured on a tanh MLP in float32, displacement norms from 3e-3 to 1e-2 gave
3e-5 to 9e-5 relative error; 10x larger or smaller steps were 5-20x worse. So in float32 it is accurate
(~1e-4 relative) on smooth models; on ReLU + BatchNorm networks the gradient is only piecewise smooth and
the float32 estimate can be off by O(1) relative error at every step size (see ``benchmarks/maml.py``).
Use it for smooth models or in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_meta.functional.inner_loop import TaskLoss, inner_step, scaled_grad, step_row
from lightning_meta.functional.params import Params

HvpMethod = Literal["autograd", "finite_difference"]


def _leaves(params: Params) -> Params:
    return {n: p.detach().requires_grad_() for n, p in params.items()}


class _ReplayRng:
    """``task_loss`` run with a recorded random-number state (CPU, and the CUDA device's when recorded), the global
    state left as it was: a forward recomputed at ``phi_k`` draws the dropout / DropBlock masks of the original."""

    def __init__(self, task_loss: TaskLoss, device: torch.device) -> None:
        self.task_loss = task_loss
        self.cuda = device if device.type == "cuda" else None
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda is not None else None

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[] if self.cuda is None else [self.cuda]):
            torch.set_rng_state(self.cpu_state)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda)
            return self.task_loss(params, x, y)


def _grad_all(task_loss: TaskLoss, point: Params, x: Tensor, y: Tensor, scale: float) -> list[Tensor]:
    names = list(point)
    loss, _ = task_loss(point, x, y)
    grads = torch.autograd.grad(loss * scale, [point[n] for n in names], allow_unused=True)
    return [torch.zeros_like(point[n]) if g is None else g / scale for n, g in zip(names, grads)]


def hvp(
    task_loss: TaskLoss,
    point: Params,
    direction: Params,
    x: Tensor,
    y: Tensor,
    method: HvpMethod = "autograd",
    loss_scale: float = 1.0,
) -> Params:
    """``H w`` for every tensor of ``point``, where ``w`` = ``direction`` on its names and 0 elsewhere.

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: (out ** 2).sum() / 2)
        >>> x = torch.eye(3)  # loss = |w|^2 / 2, so H = I
        >>> hv = hvp(f, {"weight": model.weight}, {"weight": torch.ones(1, 3)}, x, None)
        >>> hv["weight"]
        tensor([[1., 1., 1.]])
    """
    names = list(point)
    if method == "autograd":
        leaves = _leaves(point)
        loss, _ = task_loss(leaves, x, y)
        grads = scaled_grad(loss, [leaves[n] for n in direction], loss_scale, create_graph=True)
        return _hvp_from_graph(leaves, grads, direction)
    if method == "finite_difference":
        eps = finite_difference_step(point, direction)
        plus = _leaves({n: p + eps * direction[n] if n in direction else p for n, p in point.items()})
        minus = _leaves({n: p - eps * direction[n] if n in direction else p for n, p in point.items()})
        g_plus = _grad_all(task_loss, plus, x, y, loss_scale)
        g_minus = _grad_all(task_loss, minus, x, y, loss_scale)
        return {n: ((a - b) / (2 * eps)).detach() for n, a, b in zip(names, g_plus, g_minus)}
    raise ValueError(f"hvp_method must be 'autograd' or 'finite_difference', got {method!r}")


def finite_difference_step(point: Params, direction: Params) -> float:
    """``cbrt(machine_eps) * max(1, rms(phi)) / ||w||`` in the dtype of the parameters."""
    dtype = next(iter(direction.values())).dtype
    w_norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values()))
    p_sq = sum((point[n].detach().double() ** 2).sum() for n in direction)
    p_rms = torch.sqrt(p_sq / sum(point[n].numel() for n in direction))
    return float(torch.finfo(dtype).eps ** (1 / 3) * p_rms.clamp_min(1.0) / w_norm.clamp_min(1e-30))


def meta_gradient_hvp(
    task_loss: TaskLoss,
    theta: Params,
    names: Sequence[str],
    lrs: Tensor,
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    steps: int,
    method: HvpMethod = "autograd",
    loss_scale: float = 1.0,
) -> tuple[Params, Tensor, Tensor, Tensor, list[Tensor]]:
    """Exact d(query loss of phi_K)/d(theta, lrs) by the reverse recurrence, one inner step in memory.

    Forward: ``phi_{k+1} = phi_k - a_k * g_k``, no graph kept except the last step's (``"autograd"``), which
    the first reverse HVP reuses instead of recomputing that support forward/backward. Backward, with
    ``v = dL_q/dphi_K``: ``u = H_k (a_k * v)``; ``v <- v - u`` on the adapted tensors, ``dL/dtheta_other -= u``
    on the others (the mixed second derivatives), ``dL/da_k[i] = -<g_k[i], v_i>``.

    The random-number state before each support forward is recorded and restored for the reverse recurrence's
    recomputations (in a forked RNG), so that stochastic layers (Dropout, DropBlock) draw the masks of the forward
    pass: the result is the exact meta-gradient of the sampled objective, as ``"second_order"`` computes it.

    Returns ``(grads by name, lr grads like lrs, query loss, query output, inner losses)``, all detached.
    """
    xs, ys = support
    rows = lrs.detach()
    point = {n: p.detach() for n, p in theta.items()}
    iterates, inner_grads, inner_losses, replays = [], [], [], []
    last_graph = None
    for k in range(steps):
        replays.append(_ReplayRng(task_loss, xs.device))
        keep = method == "autograd" and k == steps - 1  # reused by the first reverse HVP
        leaves = _leaves(point) if keep else {**point, **{n: point[n].detach().requires_grad_() for n in names}}
        nxt, loss, grads = inner_step(task_loss, leaves, names, xs, ys, rows[step_row(rows, k)],
                                      create_graph=keep, first_order=True, loss_scale=loss_scale)
        if keep:
            last_graph = (leaves, grads)
        iterates.append(point)
        inner_grads.append([g.detach() for g in grads])
        inner_losses.append(loss.detach())
        point = {n: p.detach() for n, p in nxt.items()}
    final = _leaves(point)
    q_loss, q_out = task_loss(final, *query)
    q_grads = scaled_grad(q_loss, list(final.values()), loss_scale)
    grad = {n: g.detach() for n, g in zip(final, q_grads)}
    lr_grad = torch.zeros_like(rows)
    for k in reversed(range(steps)):
        r = step_row(rows, k)
        for i, n in enumerate(names):
            lr_grad[r, i] -= (inner_grads[k][i] * grad[n]).sum()
        weighted = {n: rows[r, i] * grad[n] for i, n in enumerate(names)}
        if last_graph is not None:
            hv, last_graph = _hvp_from_graph(*last_graph, weighted), None
        else:
            hv = hvp(replays[k], iterates[k], weighted, xs, ys, method, loss_scale)
        grad = {n: g - hv[n] for n, g in grad.items()}
    return grad, lr_grad, q_loss.detach(), q_out.detach(), inner_losses


def _hvp_from_graph(leaves: Params, grads: Sequence[Tensor], direction: Params) -> Params:
    """``H w``: differentiate ``<grads, w>`` through a kept inner-step graph (``grads``: of ``direction``'s names)."""
    dot = sum((g * direction[n]).sum() for n, g in zip(direction, grads))
    out = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if h is None else h.detach() for (n, p), h in zip(leaves.items(), out)}
