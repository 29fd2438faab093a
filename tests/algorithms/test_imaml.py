"""iMAML's implicit meta-gradient against closed forms, an explicit Hessian inverse and finite differences."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_trainer
from torch.func import functional_call

from lightning_meta import IMAML, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.functional import TaskLoss, conjugate_gradient, implicit_meta_gradient, proximal_adapt
from lightning_meta.models import MLP


def ridge_problem(seed: int = 0, n: int = 20, d: int = 3):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    ys = xs @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    yq = xq @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return xs, ys, xq, yq


def test_ridge_regression_inner_solution_and_implicit_gradient_match_the_closed_form():
    """Linear model, MSE ``(1/n)||X phi - y||^2`` (Hessian ``H = 2 X^T X / n``): the proximal inner problem has
    ``phi* = (H + lam I)^-1 (2 X^T y / n + lam theta)`` and ``d phi*/d theta = lam (H + lam I)^-1``, so the
    meta-gradient is ``(I + H/lam)^-1 grad L_q(phi*)``; float64, to 1e-8 with as many CG steps as dimensions."""
    xs, ys, xq, yq = ridge_problem()
    lam, n = 0.7, len(xs)
    model = torch.nn.Linear(3, 1, bias=False).double()
    theta = {"weight": model.weight.detach().clone()}
    f = TaskLoss(model, F.mse_loss)
    h = 2 * xs.T @ xs / n
    eye = torch.eye(3, dtype=torch.float64)
    phi_star = torch.linalg.solve(h + lam * eye, 2 * xs.T @ ys / n + lam * theta["weight"].T)
    phi, _ = proximal_adapt(f, theta, ["weight"], xs, ys, lam, lr=0.2, steps=400)
    torch.testing.assert_close(phi["weight"].T, phi_star, rtol=0, atol=1e-10)
    grads, q_loss, _, _ = implicit_meta_gradient(f, theta, ["weight"], (xs, ys), (xq, yq), lam=lam, lr=0.2, steps=400,
                                                 cg_steps=3)
    grad_q = 2 * xq.T @ (xq @ phi_star - yq) / n
    expected = torch.linalg.solve(torch.eye(3, dtype=torch.float64) + h / lam, grad_q)
    torch.testing.assert_close(grads["weight"].T, expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(q_loss, F.mse_loss(xq @ phi_star, yq), rtol=0, atol=1e-12)


def flat_params(model: torch.nn.Module) -> tuple[list[str], list[torch.Size], torch.Tensor]:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    return names, shapes, torch.cat([p.detach().flatten() for _, p in model.named_parameters()])


def unflatten(names, shapes, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in zip(names, shapes):
        out[name] = vector[i : i + shape.numel()].view(shape)
        i += shape.numel()
    return out


def tiny_mlp_task(seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(hidden=(4,), activation="tanh").double()
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.rand(10, 1, generator=g, dtype=torch.float64) * 4 - 2, torch.rand(10, 1, generator=g,
                                                                                  dtype=torch.float64) * 4 - 2
    return model, (xs, torch.sin(xs)), (xq, torch.sin(xq))


def test_small_mlp_implicit_gradient_equals_the_explicit_hessian_inverse():
    """All parameters adapted: ``(I + H/lam)^-1 grad L_q(phi*)`` with ``H`` the full Hessian (13 x 13, formed
    only here, by torch.autograd.functional.hessian), against CG on Hessian-vector products; float64, 1e-6."""
    model, support, query = tiny_mlp_task()
    lam = 2.0
    names, shapes, _ = flat_params(model)
    f = TaskLoss(model, F.mse_loss)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    grads, *_ = implicit_meta_gradient(f, theta, names, support, query, lam=lam, lr=0.1, steps=1500, cg_steps=13)
    phi, _ = proximal_adapt(f, theta, names, *support, lam, lr=0.1, steps=1500)
    phi_flat = torch.cat([phi[n].flatten() for n in names])

    def support_loss(v):
        return F.mse_loss(functional_call(model, unflatten(names, shapes, v), (support[0],)), support[1])

    def query_loss(v):
        return F.mse_loss(functional_call(model, unflatten(names, shapes, v), (query[0],)), query[1])

    h = torch.autograd.functional.hessian(support_loss, phi_flat)
    g_q = torch.autograd.grad(query_loss(phi_flat.requires_grad_()), phi_flat)[0]
    expected = torch.linalg.solve(torch.eye(len(h), dtype=torch.float64) + h / lam, g_q)
    actual = torch.cat([grads[n].flatten() for n in names])
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)


def test_partly_adapted_implicit_gradient_equals_finite_differences_of_the_solution_map():
    """Only the head adapted (ANIL-style): the body's gradient has the mixed-derivative term. Oracle: central
    finite differences of ``theta -> L_q(phi*(theta), psi)``, the inner problem solved to convergence each time;
    no derivative of ours is used."""
    model, support, query = tiny_mlp_task(3)
    lam, lr, steps = 2.0, 0.1, 1500
    adapted = ["head.weight", "head.bias"]
    f = TaskLoss(model, F.mse_loss)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    grads, *_ = implicit_meta_gradient(f, theta, adapted, support, query, lam=lam, lr=lr, steps=steps, cg_steps=5)

    def outer(point: dict) -> float:
        phi, _ = proximal_adapt(f, point, adapted, *support, lam, lr, steps)
        return float(f(phi, *query)[0])

    eps = 1e-5
    for name, value in theta.items():
        fd = torch.zeros_like(value)
        for i in range(value.numel()):
            bump = torch.zeros_like(value).view(-1)
            bump[i] = eps
            plus = outer({**theta, name: value + bump.view_as(value)})
            minus = outer({**theta, name: value - bump.view_as(value)})
            fd.view(-1)[i] = (plus - minus) / (2 * eps)
        torch.testing.assert_close(grads[name], fd, rtol=1e-5, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


def test_conjugate_gradient_solves_spd_systems_exactly_in_dim_steps():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, {"x": b}, steps=6)
    torch.testing.assert_close(x["x"], torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)


def test_lightning_step_applies_the_mean_implicit_gradient():
    """One Trainer step with SGD(lr): theta moves by -lr * the mean over tasks of the per-task implicit gradients."""
    torch.manual_seed(0)
    model = IMAML(MLP(hidden=(8,), activation="tanh"), inner_lr=0.05, inner_steps=20, lam=1.0, cg_steps=4,
                  optimizer=partial(torch.optim.SGD, lr=0.3))
    dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=3, train_episodes_per_epoch=12,
                            val_episodes=0, test_episodes=0, seed=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    f = TaskLoss(model.model, F.mse_loss)
    theta = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    per_task = [implicit_meta_gradient(f, theta, list(theta), (batch.support_x[t], batch.support_y[t]),
                                       (batch.query_x[t], batch.query_y[t]), lam=1.0, lr=0.05, steps=20, cg_steps=4)[0]
                for t in range(3)]
    tiny_trainer(max_steps=1, limit_val_batches=0).fit(model, dm)
    for name, param in model.model.named_parameters():
        expected = theta[name] - 0.3 * torch.stack([g[name] for g in per_task]).mean(0)
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)


def test_imaml_meta_learns_the_mean_of_the_task_weights():
    """Linear tasks ``y = x w_i`` with ``w_i = w_bar + noise`` and 3 support points in 5 dimensions: the proximal
    term is a Gaussian prior centred on ``theta``, so meta-training must move ``theta`` to ``w_bar`` (the
    post-adaptation query loss is lowest there). Tasks are fresh each step; 150 outer SGD steps."""
    torch.manual_seed(0)
    d, w_bar = 5, torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0]])
    model = IMAML(torch.nn.Linear(d, 1, bias=False), inner_lr=0.1, inner_steps=30, lam=1.0, cg_steps=5,
                  channels_last=False)
    with torch.no_grad():
        model.model.weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        w = w_bar + 0.1 * torch.randn(8, 1, d, generator=g)
        xs, xq = torch.randn(8, 3, d, generator=g), torch.randn(8, 10, d, generator=g)
        batch = TaskBatch(xs, xs @ w.transpose(1, 2), xq, xq @ w.transpose(1, 2))
        optimizer.zero_grad()
        model.objective(batch).loss.backward()
        optimizer.step()
    assert torch.linalg.norm(model.model.weight.detach() - w_bar) < 0.05 * torch.linalg.norm(w_bar)


def test_bad_imaml_options_are_refused_at_construction():
    with pytest.raises(ValueError, match="lam must be a finite number > 0, got 0"):
        IMAML(MLP(), lam=0)
    with pytest.raises(ValueError, match="cg_steps must be an integer >= 1, got 0"):
        IMAML(MLP(), cg_steps=0)
