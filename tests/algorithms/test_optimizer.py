"""The injected outer-loop optimizer and LR scheduler: Python, checkpoint and LightningCLI, against hand math."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, script_env, tiny_trainer

from lightning_meta import MAML, BlackBoxAdaptation, EpisodicDataModule, SinusoidTasks
from lightning_meta.cli import main
from lightning_meta.models import MLP


def sinusoid_data(meta_batch: int = 3) -> EpisodicDataModule:
    return EpisodicDataModule(SinusoidTasks(shots=4, queries=4), meta_batch_size=meta_batch,
                              train_episodes_per_epoch=meta_batch * 4, val_episodes=4, test_episodes=0, seed=1)


def fit(model, dm, **kwargs) -> pl.Trainer:
    trainer = tiny_trainer(**kwargs)
    trainer.fit(model, dm)
    return trainer


def test_default_is_adam_with_lr_1e3():
    optimizer = MAML(MLP()).configure_optimizers()
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("learner", ["maml", "blackbox"])
def test_injected_sgd_step_is_theta_minus_lr_times_meta_gradient(learner):
    """One Trainer step with SGD(lr) moves every parameter by exactly -lr * the meta-gradient of that batch."""
    torch.manual_seed(0)
    optimizer = partial(torch.optim.SGD, lr=0.3)
    if learner == "maml":
        model = MAML(MLP(hidden=(8,)), inner_lr=0.05, optimizer=optimizer)
    else:
        model = BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, task_dim=4, hidden=8,
                                   optimizer=optimizer)
    dm = sinusoid_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.objective(batch).loss.backward()  # the oracle: the meta-gradient of the same first batch
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    model.zero_grad()
    fit(model, sinusoid_data(), max_steps=1, limit_val_batches=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), before[name] - 0.3 * grads[name], rtol=0, atol=1e-6)


def test_step_lr_scheduler_per_step_follows_the_closed_form():
    model = MAML(MLP(hidden=(8,)), inner_lr=0.05, optimizer=partial(torch.optim.SGD, lr=0.8),
                 lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                 lr_scheduler_interval="step")
    trainer = fit(model, sinusoid_data(), max_steps=3, limit_val_batches=0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.8 * 0.5**3, rel=1e-12)


def test_plateau_scheduler_monitors_val_loss():
    model = MAML(MLP(hidden=(8,)), inner_lr=0.05,
                 lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.1))
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss" and config["lr_scheduler"]["interval"] == "epoch"
    fit(model, sinusoid_data(), max_epochs=2)  # Lightning refuses a plateau scheduler whose metric is missing


def test_checkpoint_with_a_lambda_optimizer_saves_and_resumes(tmp_path):
    """The factories are not hyper-parameters (a lambda cannot be pickled); the optimizer state still is saved."""
    model = MAML(MLP(hidden=(8,)), inner_lr=0.05, optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    trainer = fit(model, sinusoid_data(), max_steps=2, limit_val_batches=0)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert "optimizer" not in checkpoint["hyper_parameters"]
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01
    assert checkpoint["optimizer_states"][0]["state"]  # Adam moments, restored on resume


def test_cli_config_sets_the_optimizer_in_one_place(tmp_path):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    cli = main(["--config", str(config), "--model.init_args.optimizer", "torch.optim.SGD",
                "--model.init_args.optimizer.lr", "0.25", "--model.init_args.optimizer.momentum", "0.5",
                "--trainer.logger", "false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    optimizer = cli.model.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == 0.25 and optimizer.param_groups[0]["momentum"] == 0.5


def test_cli_has_no_second_top_level_optimizer_block():
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    result = subprocess.run([sys.executable, "-m", "lightning_meta", "fit", "--config", str(config),
                             "--optimizer", "torch.optim.SGD"], capture_output=True, text=True, env=script_env(),
                            timeout=300)
    assert result.returncode == 2 and "--optimizer" in result.stderr
