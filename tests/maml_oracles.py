"""Independent references for MAML meta-gradients, written without lightning_meta's functional code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_meta import TaskBatch


def mlp_forward(w: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """tanh MLP with weights ``[W1, b1, W2, b2, W3, b3]`` (the layout of ``MLP(hidden=(h, h), 'tanh')``)."""
    h = torch.tanh(x @ w[0].T + w[1])
    h = torch.tanh(h @ w[2].T + w[3])
    return h @ w[4].T + w[5]


def meta_loss(w, batch: TaskBatch, lr: float, steps: int, first_order: bool = False, create_graph: bool = True):
    """Mean over tasks of the query MSE after ``steps`` explicit SGD steps on the support MSE."""
    losses = []
    for t in range(batch.num_tasks):
        fast = list(w)
        for _ in range(steps):
            loss = F.mse_loss(mlp_forward(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, fast, create_graph=create_graph and not first_order)
            fast = [p - lr * (g.detach() if first_order else g) for p, g in zip(fast, grads)]
        losses.append(F.mse_loss(mlp_forward(fast, batch.query_x[t]), batch.query_y[t]))
    return torch.stack(losses).mean()


def second_order_gradient(w, batch, lr, steps):
    leaves = [p.detach().clone().requires_grad_() for p in w]
    return torch.autograd.grad(meta_loss(leaves, batch, lr, steps), leaves)


def first_order_gradient(w, batch, lr, steps):
    """FOMAML: the query-loss gradient at the adapted weights, averaged over tasks."""
    total = [torch.zeros_like(p) for p in w]
    for t in range(batch.num_tasks):
        fast = [p.detach().clone().requires_grad_() for p in w]
        for _ in range(steps):
            loss = F.mse_loss(mlp_forward(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, fast)
            fast = [(p - lr * g).detach().requires_grad_() for p, g in zip(fast, grads)]
        q = F.mse_loss(mlp_forward(fast, batch.query_x[t]), batch.query_y[t])
        for acc, g in zip(total, torch.autograd.grad(q, fast)):
            acc += g / batch.num_tasks
    return total


def finite_difference_gradient(w, batch, lr, steps, h=1e-6):
    """Central differences of the meta-loss, element by element (float64)."""
    out = []
    with torch.enable_grad():
        for i, p in enumerate(w):
            g = torch.zeros_like(p).reshape(-1)
            for j in range(p.numel()):
                values = []
                for sign in (1, -1):
                    shifted = [q.detach().clone() for q in w]
                    shifted[i].reshape(-1)[j] += sign * h
                    shifted = [q.requires_grad_() for q in shifted]
                    values.append(meta_loss(shifted, batch, lr, steps, create_graph=False).item())
                g[j] = (values[0] - values[1]) / (2 * h)
            out.append(g.reshape(p.shape))
    return out
