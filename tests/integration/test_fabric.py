"""The functional core drives Lightning Fabric: examples/fabric_maml.py follows the LightningModule's loss
trajectory step for step (same seed, tasks, initial weights and optimizer), and runs as a script."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, tiny_trainer

from lightning_meta import MAML, EpisodicDataModule, OmniglotTasks
from lightning_meta.models import Conv4

SCRIPT = REPO / "examples" / "fabric_maml.py"


def load_example():
    spec = importlib.util.spec_from_file_location("fabric_maml", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def datamodule(root) -> EpisodicDataModule:
    return EpisodicDataModule(OmniglotTasks(str(root), ways=5, shots=1, queries=3), meta_batch_size=4,
                              train_episodes_per_epoch=400, val_episodes=0, test_episodes=8, seed=7)


def conv4() -> Conv4:
    torch.manual_seed(0)
    return Conv4(out_features=5, hidden=8)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("mode", ["second_order", "first_order", "hvp"])
def test_fabric_loop_follows_the_lightning_module(omniglot, mode):
    example = load_example()
    fabric = example.Fabric(accelerator="cpu", devices=1)
    fabric_losses = example.train(fabric, datamodule(omniglot), conv4(), steps=4, mode=mode)

    recorder = LossRecorder()
    model = MAML(conv4(), inner_lr=0.4, meta_gradient=mode, channels_last=False)  # default Adam(lr=1e-3)
    trainer = tiny_trainer(max_steps=4, callbacks=[recorder])
    trainer.fit(model, datamodule(omniglot))
    assert len(fabric_losses) == 4
    torch.testing.assert_close(torch.tensor(fabric_losses), torch.tensor(recorder.losses), rtol=1e-5, atol=1e-6)
    assert fabric_losses[-1] != fabric_losses[0]  # the weights moved


def test_fabric_example_runs_as_a_script(omniglot, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(omniglot), "--steps", "2", "--meta-batch", "2",
                           "--test-episodes", "4", "--accelerator", "cpu"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy after 3 inner steps" in proc.stdout
