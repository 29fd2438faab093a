"""Reptile against closed forms and an independent torch.optim computation, through a real Trainer."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_trainer

from lightning_meta import EpisodicDataModule, Reptile, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP


def sinusoids(meta_batch: int = 4) -> EpisodicDataModule:
    return EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=meta_batch,
                              train_episodes_per_epoch=meta_batch * 8, val_episodes=6, test_episodes=6,
                              eval_meta_batch_size=3, seed=2)


def first_train_batch(dm: EpisodicDataModule) -> TaskBatch:
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def fit_one_step(model: Reptile, dm: EpisodicDataModule, **kwargs) -> None:
    tiny_trainer(max_steps=1, limit_val_batches=0, **kwargs).fit(model, dm)


def linear_gd_closed_form(w0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """``w_K`` of ``steps`` GD steps on ``mean((A w - y)^2)``, ``A = [x, 1]``: the linear recurrence
    ``w <- (I - lr H) w + lr b`` with ``H = 2 A^T A / n``, ``b = 2 A^T y / n``, summed in closed form:
    ``w_K = M^K w0 + (sum_{j<K} M^j) lr b``, ``M = I - lr H``."""
    a = torch.cat([x, torch.ones_like(x)], 1)
    n = len(a)
    h, b = 2 * a.T @ a / n, 2 * a.T @ y / n
    m = torch.eye(2, dtype=w0.dtype) - lr * h
    geometric = sum(torch.linalg.matrix_power(m, j) for j in range(steps))
    return torch.linalg.matrix_power(m, steps) @ w0 + geometric @ (lr * b)


@pytest.mark.parametrize("inner_data", ["all", "support"])
def test_sgd_reptile_step_on_a_quadratic_equals_the_closed_form(inner_data):
    """A linear model with MSE: each task's loss is quadratic, K SGD steps have a closed form, and one Trainer
    step with SGD(eps) must give theta + eps * mean(phi_K - theta), in float64 to 1e-10."""
    torch.manual_seed(0)
    lr, steps, eps = 0.1, 7, 0.5
    model = Reptile(MLP(hidden=()), inner_lr=lr, inner_steps=steps, inner_optimizer="sgd", inner_data=inner_data,
                    optimizer=partial(torch.optim.SGD, lr=eps)).double()
    theta = torch.cat([model.model.head.weight.detach().flatten(), model.model.head.bias.detach()]).double()[:, None]
    batch = first_train_batch(sinusoids())
    phis = []
    for t in range(batch.num_tasks):
        x, y = batch.support_x[t].double(), batch.support_y[t].double()
        if inner_data == "all":
            x, y = torch.cat([x, batch.query_x[t].double()]), torch.cat([y, batch.query_y[t].double()])
        phis.append(linear_gd_closed_form(theta, x, y, lr, steps))
    expected = theta + eps * (torch.stack(phis).mean(0) - theta)
    fit_one_step(model, sinusoids(), precision="64-true")
    actual = torch.cat([model.model.head.weight.detach().flatten(), model.model.head.bias.detach()])[:, None]
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def torch_adam_phi(model: torch.nn.Module, x, y, lr: float, steps: int, betas) -> dict[str, torch.Tensor]:
    """The oracle: a deep copy trained with torch.optim.Adam, full batch."""
    clone = copy.deepcopy(model)
    optimizer = torch.optim.Adam(clone.parameters(), lr=lr, betas=betas)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(clone(x), y).backward()
        optimizer.step()
    return {n: p.detach() for n, p in clone.named_parameters()}


def test_adam_reptile_gradient_equals_torch_adam_on_copies():
    torch.manual_seed(1)
    lr, steps, betas = 0.01, 4, (0.0, 0.999)
    model = Reptile(MLP(hidden=(8,), activation="tanh"), inner_lr=lr, inner_steps=steps, inner_optimizer="adam",
                    inner_betas=betas, inner_data="support").double()
    batch = TaskBatch(*(t.double() for t in first_train_batch(sinusoids(3))))
    model.objective(batch).loss.backward()
    phis = [torch_adam_phi(model.model, batch.support_x[t], batch.support_y[t], lr, steps, betas)
            for t in range(batch.num_tasks)]
    for name, param in model.model.named_parameters():
        expected = param.detach() - torch.stack([phi[name] for phi in phis]).mean(0)
        torch.testing.assert_close(param.grad, expected, rtol=1e-9, atol=1e-12)


def test_evaluation_adapts_with_the_inner_optimizer():
    """Validation's query loss after k steps is the query loss of the torch.optim.Adam copy after k steps."""
    torch.manual_seed(2)
    model = Reptile(MLP(hidden=(8,), activation="tanh"), inner_lr=0.02, inner_steps=2, eval_inner_steps=3).double()
    batch = TaskBatch(*(t.double() for t in first_train_batch(sinusoids(2))))
    curve = model.query_trajectory(batch)
    for t in range(batch.num_tasks):
        for k in (0, 3):
            phi = torch_adam_phi(model.model, batch.support_x[t], batch.support_y[t], 0.02, k, (0.0, 0.999))
            expected = F.mse_loss(torch.func.functional_call(model.model, phi, (batch.query_x[t],)), batch.query_y[t])
            torch.testing.assert_close(curve[k][0][t], expected, rtol=1e-10, atol=1e-12)


def test_reptile_learns_sinusoids_and_logs_like_maml():
    torch.manual_seed(0)
    model = Reptile(MLP(), inner_lr=0.02, inner_steps=5, inner_optimizer="sgd", eval_inner_steps=10,
                    optimizer=partial(torch.optim.SGD, lr=0.5))
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=5, train_episodes_per_epoch=5 * 300,
                            val_episodes=0, test_episodes=100, eval_meta_batch_size=50, seed=0)
    trainer = tiny_trainer(max_steps=300)
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    assert {"test/mse", "test/pre_mse", "test/loss_ci95"} <= set(result)
    assert result["test/mse"] < 0.6 * result["test/pre_mse"]  # adaptation helps after meta-training


def test_bad_reptile_options_are_refused_at_construction():
    with pytest.raises(ValueError, match="inner_optimizer must be one of.*'rmsprop'"):
        Reptile(MLP(), inner_optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"inner_betas\[1\] must be < 1, got 1.0"):
        Reptile(MLP(), inner_betas=(0.0, 1.0))
    with pytest.raises(ValueError, match="inner_data must be one of"):
        Reptile(MLP(), inner_data="query")
