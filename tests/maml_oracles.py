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


# ---------------------------------------------------------------------------------------------------------
# A general oracle: named parameters, a subset adapted, learned inner learning rates, MSE or cross-entropy,
# MLP or Conv-4 with transductive batch norm. Every forward and loss is written here with plain tensor ops
# (no lightning_meta code, no nn.Module, no F.cross_entropy / F.batch_norm / torch.func).


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((output - target) ** 2).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``labels`` under softmax(``logits``), by log-sum-exp."""
    picked = logits.gather(1, labels[:, None]).squeeze(1)
    return (logits.logsumexp(dim=1) - picked).mean()


def named_mlp_forward(w: dict[str, torch.Tensor], x: torch.Tensor, activation=torch.tanh) -> torch.Tensor:
    """``MLP(hidden=..., activation)``: linear layers ``body.0, body.2, ...`` with ``activation``, then ``head``."""
    h, i = x, 0
    while f"body.{i}.weight" in w:
        h = activation(h @ w[f"body.{i}.weight"].T + w[f"body.{i}.bias"])
        i += 2
    return h @ w["head.weight"].T + w["head.bias"]


def batch_statistics_norm(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5):
    """Transductive batch norm: the statistics of this batch (biased variance), per channel, in any mode."""
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (h - mean) * torch.rsqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def named_conv4_forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``Conv4``: four [3x3 conv, batch-statistics norm, ReLU, 2x2 max-pool] blocks (paper order), linear head."""
    h = x
    for b in range(4):
        p = f"features.{b}"
        h = F.conv2d(h, w[f"{p}.0.weight"], w[f"{p}.0.bias"], padding=1)
        h = batch_statistics_norm(h, w[f"{p}.1.weight"], w[f"{p}.1.bias"])
        h = F.max_pool2d(torch.relu(h), 2)
    return h.flatten(1) @ w["head.weight"].T + w["head.bias"]


def general_meta_loss(forward, loss_fn, theta: dict, lrs: torch.Tensor, adapted: list[str], batch: TaskBatch,
                      steps: int, first_order: bool = False) -> torch.Tensor:
    """Mean over tasks of the query loss after ``steps`` SGD steps on the support loss.

    Only the tensors named in ``adapted`` move; step ``k`` moves ``adapted[i]`` by ``lrs[min(k, rows - 1), i]``
    times its gradient (one row: a lr per tensor; one row per step: MAML++ per-step lrs). ``first_order``
    detaches the inner gradients (FOMAML); the value is the same either way.
    """
    losses = []
    for t in range(batch.num_tasks):
        fast = dict(theta)
        for k in range(steps):
            loss = loss_fn(forward(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, [fast[n] for n in adapted], create_graph=not first_order)
            row = lrs[min(k, lrs.shape[0] - 1)]
            for i, (n, g) in enumerate(zip(adapted, grads)):
                fast[n] = fast[n] - row[i] * (g.detach() if first_order else g)
        losses.append(loss_fn(forward(fast, batch.query_x[t]), batch.query_y[t]))
    return torch.stack(losses).mean()


def general_gradient(forward, loss_fn, theta: dict, lrs: torch.Tensor, adapted: list[str], batch: TaskBatch,
                     steps: int, first_order: bool = False, learn_lrs: bool = False) -> dict[str, torch.Tensor]:
    """d(meta-loss)/d(theta) by name, plus ``"inner_lrs"`` when ``learn_lrs`` (autograd through the unrolled loop)."""
    leaves = {n: p.detach().clone().requires_grad_() for n, p in theta.items()}
    lr_leaf = lrs.detach().clone().requires_grad_(learn_lrs)
    loss = general_meta_loss(forward, loss_fn, leaves, lr_leaf, adapted, batch, steps, first_order)
    inputs = list(leaves.values()) + ([lr_leaf] if learn_lrs else [])
    grads = torch.autograd.grad(loss, inputs)
    out = dict(zip(leaves, grads))
    if learn_lrs:
        out["inner_lrs"] = grads[-1]
    return out


def directional_finite_difference(forward, loss_fn, theta: dict, lrs: torch.Tensor, adapted: list[str],
                                  batch: TaskBatch, steps: int, direction: dict, h: float = 1e-6) -> float:
    """Central difference of the meta-loss along ``direction`` (names of ``theta`` and ``"inner_lrs"``), float64."""
    values = []
    for sign in (1.0, -1.0):
        moved = {n: (p.detach() + sign * h * direction[n]).requires_grad_() for n, p in theta.items()}
        moved_lrs = lrs.detach() + sign * h * direction.get("inner_lrs", torch.zeros_like(lrs))
        with torch.enable_grad():
            values.append(general_meta_loss(forward, loss_fn, moved, moved_lrs, adapted, batch, steps,
                                            first_order=True).item())
    return (values[0] - values[1]) / (2 * h)
