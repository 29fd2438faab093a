"""The one learner contract: every learner is ``objective`` + ``evaluate`` over MetaLearner's steps; the steps, the
non-finite policy and prediction are written once, so a feature of the base reaches all five learners."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_trainer
from torch.utils.data import TensorDataset

from lightning_meta import (
    IMAML,
    MAML,
    BlackBoxAdaptation,
    ClassificationTasks,
    EpisodicDataModule,
    MetaLearner,
    ProtoNet,
    Reptile,
    SinusoidTasks,
    TaskBatch,
)
from lightning_meta.functional import InnerAdam, InnerSGD, ProximalDescent, TaskLoss, unroll
from lightning_meta.models import MLP

STEPS = ("training_step", "validation_step", "test_step", "predict_step", "optimizer_step", "on_validation_epoch_end")


def learners() -> dict[str, MetaLearner]:
    """The five learners on 4-way tasks of 3-dimensional inputs."""
    return {
        "MAML": MAML(MLP(in_features=3, out_features=4, hidden=(8,)), inner_lr=0.1, eval_inner_steps=2),
        "IMAML": IMAML(MLP(in_features=3, out_features=4, hidden=(8,)), inner_lr=0.1, inner_steps=3, cg_steps=2),
        "Reptile": Reptile(MLP(in_features=3, out_features=4, hidden=(8,)), inner_lr=0.01, inner_steps=2),
        "ProtoNet": ProtoNet(MLP(in_features=3, out_features=8, hidden=(8,))),
        "BlackBoxAdaptation": BlackBoxAdaptation(MLP(in_features=3, out_features=8, hidden=(8,)), feature_dim=8,
                                                 ways=4, task_dim=4, hidden=8),
    }


def datamodule(meta_batch_size: int = 2) -> EpisodicDataModule:
    data = TensorDataset(torch.randn(96, 3, generator=torch.Generator().manual_seed(0)), torch.arange(96) % 16)
    tasks = ClassificationTasks(data, ways=4, shots=2, queries=2,
                                splits={"train": list(range(8)), "val": list(range(8, 12)),
                                        "test": list(range(12, 16))})
    return EpisodicDataModule(tasks, meta_batch_size=meta_batch_size, train_episodes_per_epoch=8, val_episodes=4,
                              test_episodes=4, seed=3)


@pytest.mark.parametrize("name", list(learners()))
def test_every_learner_inherits_the_steps(name):
    """No learner writes its own step: each is the base's (a feature added there reaches every learner)."""
    cls = type(learners()[name])
    assert {step: getattr(cls, step) for step in STEPS} == {step: getattr(MetaLearner, step) for step in STEPS}
    assert {"objective", "evaluate"} <= {n for c in cls.__mro__[:-1] if c is not MetaLearner for n in vars(c)}


@pytest.mark.parametrize("name", list(learners()))
def test_predict_step_is_evaluate_at_eval_steps(name):
    """``predict_step`` answers what ``evaluate`` gives after ``eval_steps`` (MAML: 2; the others: 0 or their own)."""
    learner = learners()[name].eval()
    batch = datamodule(meta_batch_size=3).train_dataloader().__iter__().__next__()
    torch.manual_seed(0)
    predicted = learner.predict_step(batch, 0)
    torch.manual_seed(0)
    losses, outputs = learner.evaluate(batch, {learner.eval_steps})[learner.eval_steps]
    assert predicted.shape == (3, 8, 4) and losses.shape == (3,)
    torch.testing.assert_close(predicted, outputs, rtol=0, atol=0)
    expected = torch.nn.functional.cross_entropy(outputs.transpose(1, 2), batch.query_y, reduction="none").mean(1)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ProtoNet", "BlackBoxAdaptation"])
def test_learners_without_inner_loop_evaluate_at_step_zero_only(name):
    learner = learners()[name]
    batch = datamodule().train_dataloader().__iter__().__next__()
    assert learner.eval_steps == 0 and set(learner.evaluate(batch)) == {0}
    with pytest.raises(ValueError, match=rf"{name} has no inner loop: evaluate\(batch, at\) takes at=\{{0\}}"):
        learner.evaluate(batch, {0, 1})


def poisoned(learner: MetaLearner, step: int) -> MetaLearner:
    """``learner`` whose training objective sees NaN inputs at global step ``step`` (every task of that meta-batch)."""
    objective = learner.objective

    def poisoned_objective(batch: TaskBatch):
        if learner._trainer is not None and learner.global_step == step:
            batch = TaskBatch(batch.support_x * float("nan"), batch.support_y, batch.query_x, batch.query_y)
        return objective(batch)

    learner.objective = poisoned_objective
    return learner


@pytest.mark.parametrize("name", ["ProtoNet", "BlackBoxAdaptation"])
def test_skip_takes_no_optimizer_step_for_learners_without_inner_loop(name):
    """``nonfinite="skip"`` (new for ProtoNet and black-box): the poisoned meta-batch of step 1 moves nothing (Adam
    would move on a zero gradient), the other two steps train; the weights after it equal those before it."""
    cls, args = type(learners()[name]), {k: v for k, v in learners()[name].hparams.items() if k != "encoder"}
    learner = poisoned(cls(MLP(in_features=3, out_features=8, hidden=(8,)), **{**args, "nonfinite": "skip"},
                           optimizer=partial(torch.optim.Adam, lr=0.01)), step=1)
    weights = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            weights.append(torch.cat([p.detach().flatten().clone() for p in module.parameters()]))

    trainer = tiny_trainer(max_steps=3, num_sanity_val_steps=0, callbacks=[Record()], limit_val_batches=0)
    trainer.fit(learner, datamodule())
    state = learner.trainer.optimizers[0].state
    assert {int(s["step"]) for s in state.values()} == {2}  # 3 meta-batches, one skipped
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


@pytest.mark.parametrize("name", ["ProtoNet", "BlackBoxAdaptation"])
def test_raise_names_the_learner_and_step(name):
    learner = poisoned(learners()[name], step=1)
    with pytest.raises(FloatingPointError, match=rf"^{name}: non-finite loss at global step 1; lower the optimizer's"):
        tiny_trainer(max_steps=3, num_sanity_val_steps=0, limit_val_batches=0).fit(learner, datamodule())


def test_task_type_is_read_once_from_the_datamodule():
    """Under ``task_type="auto"`` the DataModule's task source says (at ``setup``); direct calls infer it."""
    learner, dm = MAML(MLP(), inner_lr=0.01), EpisodicDataModule(SinusoidTasks(), meta_batch_size=2, val_episodes=2)
    tiny_trainer(max_steps=1, num_sanity_val_steps=0).fit(learner, dm)
    assert learner._data_task_type == "regression" and learner.task_type_of(torch.zeros(2, 3, dtype=torch.long)) == (
        "regression")
    assert MAML(MLP()).task_type_of(torch.zeros(2, 3, dtype=torch.long)) == "classification"
    metrics = tiny_trainer(max_steps=3, num_sanity_val_steps=0).validate(learner, dm, verbose=False)[0]
    assert set(metrics) >= {"val/mse", "val/pre_mse"}


def quadratic() -> tuple[TaskLoss, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Least squares ``||x w - y||^2 / 2n`` on fixed float64 data."""
    model = torch.nn.Linear(3, 1, bias=False).double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 1, generator=g, dtype=torch.float64)
    theta = {"weight": torch.randn(1, 3, generator=g, dtype=torch.float64)}
    return TaskLoss(model, lambda out, t: (out - t).pow(2).mean() / 2), theta, x, y


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_inner_adam_equals_torch_optim(kind):
    """The inner optimizer value against torch's own optimizer, step by step (float64)."""
    task_loss, theta, x, y = quadratic()
    w = theta["weight"].clone().requires_grad_()
    reference = torch.optim.Adam([w], lr=0.05, betas=(0.5, 0.9)) if kind == "adam" else torch.optim.SGD([w], lr=0.05)
    ours = unroll(InnerAdam(["weight"], lr=0.05, kind=kind, betas=(0.5, 0.9)), task_loss, theta, x, y, 6)
    for _, phi in ours:
        torch.testing.assert_close(phi["weight"], w.detach(), rtol=1e-12, atol=1e-12)
        reference.zero_grad()
        task_loss({"weight": w}, x, y)[0].backward()
        reference.step()
    assert len(ours.losses) == 6


def test_proximal_descent_reaches_the_closed_form():
    """``argmin ||x w - y||^2 / 2n + lam/2 ||w - theta||^2 = (X'X/n + lam I)^-1 (X'y/n + lam theta)``."""
    task_loss, theta, x, y = quadratic()
    lam, n = 0.5, len(x)
    phi, losses = unroll(ProximalDescent(["weight"], lam=lam, lr=0.5), task_loss, theta, x, y, 400).final()
    closed = torch.linalg.solve(x.T @ x / n + lam * torch.eye(3, dtype=x.dtype), x.T @ y / n + lam * theta["weight"].T)
    torch.testing.assert_close(phi["weight"], closed.T, rtol=1e-10, atol=1e-10)
    assert losses.shape == (400,) and bool((losses.diff() <= 1e-15).all())


def test_inner_sgd_differentiable_unroll_is_the_unrolled_graph():
    """Differentiable SGD through ``unroll``: ``d phi_2 / d theta`` equals ``(I - a H)^2`` (a quadratic, H = X'X/n)."""
    task_loss, theta, x, y = quadratic()
    w = theta["weight"].clone().requires_grad_()
    sgd = InnerSGD(["weight"], torch.tensor([[0.3]], dtype=torch.float64), differentiable=True, create_graph=True)
    jac = torch.autograd.functional.jacobian(
        lambda w: unroll(sgd, task_loss, {"weight": w}, x, y, 2).final()[0]["weight"], w)
    step = torch.eye(3, dtype=x.dtype) - 0.3 * x.T @ x / len(x)
    torch.testing.assert_close(jac.reshape(3, 3), (step @ step).T, rtol=1e-10, atol=1e-12)
