"""Inner optimizers as values, one protocol for every learner with an inner loop, and one ``unroll``.

An inner optimizer is an object with ``init(theta) -> (phi_0, state)`` and ``step(task_loss, phi, state, x, y, k)
-> (phi', support loss at phi, state)``, as torchopt's optimizers are (``init``/``update``):
[InnerSGD][lightning_meta.functional.InnerSGD] (MAML's differentiable SGD, and its evaluation without a graph),
[InnerAdam][lightning_meta.functional.InnerAdam] (Reptile's SGD or Adam, no graph) and
[ProximalDescent][lightning_meta.functional.ProximalDescent] (iMAML's proximal gradient descent).
[unroll][lightning_meta.functional.unroll] runs any of them on one task's support set and yields ``(k, phi_k)``;
training collects the support losses from it (``Unroll.losses``), evaluation reads the iterates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_meta.functional.inner_loop import TaskLoss, inner_step, scaled_grad, step_row
from lightning_meta.functional.params import Params


class InnerOptimizer(Protocol):
    """What [unroll][lightning_meta.functional.unroll] runs: ``init`` gives the first iterate and the optimizer
    state, ``step`` one update of the tensors ``names`` on the support loss."""

    names: Sequence[str]

    def init(self, theta: Params) -> tuple[Params, Any]: ...

    def step(self, task_loss: TaskLoss, phi: Params, state: Any, x: Tensor, y: Tensor, k: int
             ) -> tuple[Params, Tensor, Any]: ...


@dataclass
class InnerSGD:
    """``phi <- phi - lrs[k] * grad``: MAML's inner step (one place writes it: ``inner_step``).

    ``lrs`` is ``[rows, len(names)]`` (step ``k`` uses row ``min(k, rows - 1)``). ``differentiable=False`` (evaluation)
    starts from detached leaves and detaches every iterate; ``True`` keeps the graph as ``create_graph``,
    ``first_order`` and ``functional`` (the form ``vmap`` maps) ask.

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> sgd = InnerSGD(["weight"], torch.tensor([[0.5]]))
        >>> [round(float(phi["weight"]), 3) for _, phi in unroll(sgd, f, {"weight": torch.ones(1, 1)},
        ...                                                      torch.ones(1, 1), torch.zeros(1, 1), 2)]
        [1.0, 0.5, 0.25]
    """

    names: Sequence[str]
    lrs: Tensor
    differentiable: bool = False
    create_graph: bool = False
    first_order: bool = False
    functional: bool = False
    loss_scale: float = 1.0

    def init(self, theta: Params) -> tuple[Params, None]:
        return (dict(theta) if self.differentiable else _leaves(theta, self.names)), None

    def step(self, task_loss: TaskLoss, phi: Params, state: None, x: Tensor, y: Tensor, k: int
             ) -> tuple[Params, Tensor, None]:
        lr_row = self.lrs[step_row(self.lrs, k)]
        if self.differentiable:
            new, loss, _ = inner_step(task_loss, phi, self.names, x, y, lr_row, create_graph=self.create_graph,
                                      first_order=self.first_order, loss_scale=self.loss_scale,
                                      functional=self.functional)
            return new, loss, None
        with torch.enable_grad():
            new, loss, _ = inner_step(task_loss, phi, self.names, x, y, lr_row, loss_scale=self.loss_scale)
        return _leaves(new, self.names), loss.detach(), None


@dataclass
class AdamState:
    """Per-task state of [InnerAdam][lightning_meta.functional.InnerAdam]: the step count and Adam's moments."""

    step: int = 0
    m: Params | None = None
    v: Params | None = None


@dataclass
class InnerAdam:
    """Full-batch SGD (``kind="sgd"``) or Adam (``"adam"``, ``betas``; Reptile's paper uses ``beta1 = 0``) at ``lr``,
    without a graph: Reptile's inner optimizer.

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> adam = InnerAdam(["weight"], lr=0.1)
        >>> phi, state = adam.init({"weight": torch.ones(1, 1)})
        >>> phi, loss, state = adam.step(f, phi, state, torch.ones(1, 1), torch.zeros(1, 1), 0)
        >>> state.step, round(phi["weight"].item(), 4)  # Adam's first step moves by lr
        (1, 0.9)
    """

    names: Sequence[str]
    lr: float
    kind: str = "adam"
    betas: tuple[float, float] = (0.0, 0.999)
    eps: float = 1e-8
    loss_scale: float = 1.0

    def init(self, theta: Params) -> tuple[Params, AdamState]:
        return {n: p.detach() for n, p in theta.items()}, AdamState(0, {}, {})

    def step(self, task_loss: TaskLoss, phi: Params, state: AdamState, x: Tensor, y: Tensor, k: int
             ) -> tuple[Params, Tensor, AdamState]:
        grads, loss = _grads(task_loss, phi, self.names, x, y, self.loss_scale)
        state.step += 1
        new = {n: p.detach() for n, p in phi.items()}
        b1, b2 = self.betas
        for n in self.names:
            if self.kind == "sgd":
                new[n] = new[n] - self.lr * grads[n]
                continue
            m = state.m[n] = b1 * state.m.get(n, 0.0) + (1 - b1) * grads[n]
            v = state.v[n] = b2 * state.v.get(n, 0.0) + (1 - b2) * grads[n] ** 2
            m_hat, v_hat = m / (1 - b1**state.step), v / (1 - b2**state.step)
            new[n] = new[n] - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return new, loss, state


@dataclass
class ProximalDescent:
    """Gradient descent on ``L(phi) + lam/2 ||phi - theta||^2`` from ``phi = theta``, without a graph: iMAML's inner
    problem (the state is the anchor ``theta``).

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> rule = ProximalDescent(["weight"], lam=1.0, lr=0.5)
        >>> *_, (k, phi) = unroll(rule, f, {"weight": torch.ones(1, 1)}, torch.ones(1, 1), torch.zeros(1, 1), 60)
        >>> round(phi["weight"].item(), 4)  # argmin w^2/2 + (w - 1)^2/2 = 0.5
        0.5
    """

    names: Sequence[str]
    lam: float
    lr: float
    loss_scale: float = 1.0

    def init(self, theta: Params) -> tuple[Params, Params]:
        return {n: p.detach() for n, p in theta.items()}, {n: p.detach() for n, p in theta.items()}

    def step(self, task_loss: TaskLoss, phi: Params, state: Params, x: Tensor, y: Tensor, k: int
             ) -> tuple[Params, Tensor, Params]:
        grads, loss = _grads(task_loss, phi, self.names, x, y, self.loss_scale)
        new = {n: p.detach() for n, p in phi.items()}
        for n in self.names:
            new[n] = new[n] - self.lr * (grads[n] + self.lam * (new[n] - state[n]))
        return new, loss, state


class Unroll:
    """``(k, phi_k)`` for ``k = 0..steps`` of ``optimizer`` on one task's support set; ``losses`` collects the support
    loss before each step as the iteration goes (detached), ``final()`` runs to the end:
    ``(phi_steps, losses [steps])``."""

    def __init__(self, optimizer: InnerOptimizer, task_loss: TaskLoss, theta: Params, x: Tensor, y: Tensor,
                 steps: int) -> None:
        self.optimizer, self.task_loss, self.theta, self.steps = optimizer, task_loss, theta, steps
        self.x, self.y = x, y
        self.losses: list[Tensor] = []

    def __iter__(self) -> Iterator[tuple[int, Params]]:
        phi, state = self.optimizer.init(self.theta)
        for k in range(self.steps + 1):
            yield k, phi
            if k < self.steps:
                phi, loss, state = self.optimizer.step(self.task_loss.at_step(k), phi, state, self.x, self.y, k)
                self.losses.append(loss.detach())

    def final(self) -> tuple[Params, Tensor]:
        last = self.theta
        for _, phi in self:  # only the current iterate is held: memory flat in the number of steps
            last = phi
        return last, torch.stack(self.losses) if self.losses else self.x.new_zeros(0)


def unroll(optimizer: InnerOptimizer, task_loss: TaskLoss, theta: Params, x: Tensor, y: Tensor, steps: int) -> Unroll:
    """``steps`` of ``optimizer`` on ``(x, y)`` from ``theta``: iterate it for ``(k, phi_k)``, ``k = 0..steps``, or call
    ``.final()`` for ``(phi_steps, support losses [steps])``. Step ``k`` uses ``task_loss.at_step(k)``."""
    return Unroll(optimizer, task_loss, theta, x, y, steps)


def _leaves(params: Params, names: Sequence[str]) -> Params:
    """Detached copies; the tensors ``names`` require grad (the next inner gradient is taken with respect to them)."""
    wanted = set(names)
    return {n: p.detach().requires_grad_(n in wanted) for n, p in params.items()}


def _grads(task_loss: TaskLoss, phi: Params, names: Sequence[str], x: Tensor, y: Tensor, loss_scale: float
           ) -> tuple[Params, Tensor]:
    """Gradients of the support loss with respect to ``names`` at ``phi``, without a graph, and the loss."""
    leaves = {**phi, **{n: phi[n].detach().requires_grad_() for n in names}}
    with torch.enable_grad():
        loss, _ = task_loss(leaves, x, y)
        grads = dict(zip(names, scaled_grad(loss, [leaves[n] for n in names], loss_scale)))
    return grads, loss.detach()


def adapt(
    task_loss: TaskLoss,
    params: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    lrs: Tensor,
    steps: int,
    *,
    create_graph: bool = False,
    first_order: bool = False,
    loss_scale: float = 1.0,
    functional: bool = False,
) -> tuple[Params, Tensor]:
    """``steps`` of MAML's inner SGD on one task's support set: ``(phi_K, support losses [steps])``.

    ``lrs`` is ``[rows, len(names)]``; step ``k`` uses row ``min(k, rows - 1)``. The support losses are
    detached (for metrics and non-finite checks); ``phi_K`` keeps whatever graph the flags ask for.
    """
    sgd = InnerSGD(names, lrs, differentiable=True, create_graph=create_graph, first_order=first_order,
                   functional=functional, loss_scale=loss_scale)
    return unroll(sgd, task_loss, params, x, y, steps).final()


def adaptation_trajectory(
    task_loss: TaskLoss,
    params: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    lrs: Tensor,
    steps: int,
    *,
    loss_scale: float = 1.0,
) -> Iterator[tuple[int, Params]]:
    """``(k, phi_k)`` for ``k = 0..steps`` (``phi_0 = params``) of MAML's inner SGD, without an outer graph: for
    evaluation.

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> f = TaskLoss(model, lambda out, y: ((out - y) ** 2).sum() / 2)
        >>> theta = {"weight": torch.ones(1, 1, requires_grad=True)}
        >>> [round(float(phi["weight"]), 3) for _, phi in adaptation_trajectory(
        ...     f, theta, ["weight"], torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([[0.5]]), 2)]
        [1.0, 0.5, 0.25]
    """
    return iter(unroll(InnerSGD(names, lrs, loss_scale=loss_scale), task_loss, params, x, y, steps))
