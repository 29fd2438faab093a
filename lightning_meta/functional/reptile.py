"""Reptile (Nichol et al., 2018): adapt each task with plain SGD or Adam, then move ``theta`` towards the adapted
weights: ``theta <- theta + eps * mean_tasks(phi_K - theta)``. The meta-update is expressed as a gradient,
``theta - mean_tasks(phi_K)``, so any outer optimizer (``SGD(lr=eps)`` is the paper's update), gradient
accumulation, clipping and DDP's all-reduce apply to it unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_meta.functional.inner_loop import Params, TaskLoss, scaled_grad

InnerOptimizer = Literal["sgd", "adam"]


class InnerOptimizerState:
    """Per-task state of the inner optimizer: the step count and Adam's moments (unused by SGD).

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> state = InnerOptimizerState()
        >>> phi, loss = inner_update(f, {"weight": torch.ones(1, 1)}, ["weight"], torch.ones(1, 1),
        ...                          torch.zeros(1, 1), 0.1, state, "adam")
        >>> state.step, round(phi["weight"].item(), 4)  # Adam's first step moves by lr
        (1, 0.9)
    """

    def __init__(self) -> None:
        self.step: int = 0
        self.m: dict[str, Tensor] = {}
        self.v: dict[str, Tensor] = {}


def inner_update(
    task_loss: TaskLoss,
    phi: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    lr: float,
    state: InnerOptimizerState,
    optimizer: InnerOptimizer = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    loss_scale: float = 1.0,
) -> tuple[Params, Tensor]:
    """One full-batch SGD or Adam step on ``(x, y)`` without a graph: ``(phi', loss at phi)``, detached."""
    leaves = {**phi, **{n: phi[n].detach().requires_grad_() for n in names}}
    with torch.enable_grad():
        loss, _ = task_loss(leaves, x, y)
        grads = dict(zip(names, scaled_grad(loss, [leaves[n] for n in names], loss_scale)))
    state.step += 1
    new = {n: p.detach() for n, p in phi.items()}
    for n in names:
        if optimizer == "sgd":
            new[n] = new[n] - lr * grads[n]
            continue
        m = state.m[n] = betas[0] * state.m.get(n, 0.0) + (1 - betas[0]) * grads[n]
        v = state.v[n] = betas[1] * state.v.get(n, 0.0) + (1 - betas[1]) * grads[n] ** 2
        m_hat, v_hat = m / (1 - betas[0] ** state.step), v / (1 - betas[1] ** state.step)
        new[n] = new[n] - lr * m_hat / (v_hat.sqrt() + eps)
    return new, loss.detach()


def inner_train(
    task_loss: TaskLoss,
    theta: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    optimizer: InnerOptimizer = "sgd",
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
    phi, state, losses = {n: p.detach() for n, p in theta.items()}, InnerOptimizerState(), []
    for _ in range(steps):
        phi, loss = inner_update(task_loss, phi, names, x, y, lr, state, optimizer, betas, eps, loss_scale)
        losses.append(loss)
    return phi, torch.stack(losses) if losses else x.new_zeros(0)


def inner_train_trajectory(
    task_loss: TaskLoss,
    theta: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    optimizer: InnerOptimizer = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    loss_scale: float = 1.0,
) -> Iterator[tuple[int, Params]]:
    """``(k, phi_k)`` for ``k = 0..steps`` of [inner_train][lightning_meta.functional.inner_train]: evaluation."""
    phi, state = {n: p.detach() for n, p in theta.items()}, InnerOptimizerState()
    for k in range(steps + 1):
        yield k, phi
        if k < steps:
            phi, _ = inner_update(task_loss, phi, names, x, y, lr, state, optimizer, betas, eps, loss_scale)


def reptile_gradient(theta: Params, adapted: Sequence[Params]) -> Params:
    """``theta - mean_tasks(phi_K)`` per tensor: the direction whose negative the Reptile update follows.

    Examples:
        >>> reptile_gradient({"w": torch.tensor(1.0)}, [{"w": torch.tensor(0.0)}, {"w": torch.tensor(0.5)}])
        {'w': tensor(0.7500)}
    """
    return {n: p.detach() - torch.stack([phi[n] for phi in adapted]).mean(0) for n, p in theta.items()}
