"""A small sinusoid MAML job, shared by the single-device tests and the DDP scripts."""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP


class PoisonedMAML(MAML):
    """Feeds NaN support inputs at global step ``poison_step`` (or at ``poison_batch``, a batch index), on
    ``poison_rank`` only, or on every rank if None."""

    poison_step, poison_batch, poison_rank = 1, None, None

    def training_step(self, batch: TaskBatch, batch_idx: int):
        when = batch_idx == self.poison_batch if self.poison_batch is not None else self.global_step == self.poison_step
        if when and self.poison_rank in (None, self.global_rank):
            batch = batch._replace(support_x=batch.support_x * float("nan"))
        return super().training_step(batch, batch_idx)


def build(meta_batch: int, meta_gradient: str = "second_order", test_episodes: int = 600,
          model_cls: type[MAML] = MAML, **maml_kwargs):
    torch.manual_seed(0)
    model = model_cls(MLP(hidden=(16, 16)), inner_lr=0.05, inner_steps=2, meta_gradient=meta_gradient,
                      **{"optimizer": partial(torch.optim.SGD, lr=0.05), **maml_kwargs})
    dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=meta_batch,
                            train_episodes_per_epoch=1000, val_episodes=0, test_episodes=test_episodes,
                            eval_meta_batch_size=50, seed=3)
    return model, dm


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})
