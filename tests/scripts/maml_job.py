"""A small sinusoid MAML job, shared by the single-device tests and the DDP scripts."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.models import MLP


class SGDMAML(MAML):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def build(meta_batch: int, meta_gradient: str = "second_order", test_episodes: int = 600):
    torch.manual_seed(0)
    model = SGDMAML(MLP(hidden=(16, 16)), inner_lr=0.05, inner_steps=2, meta_gradient=meta_gradient, lr=0.05)
    dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=meta_batch,
                            train_episodes_per_epoch=1000, val_episodes=0, test_episodes=test_episodes,
                            eval_meta_batch_size=50, seed=3)
    return model, dm


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})
