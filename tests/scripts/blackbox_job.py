"""A small black-box sinusoid job, shared by the single-device test and the DDP script."""

from __future__ import annotations

from functools import partial

import torch
from maml_job import trainer  # noqa: F401 - the same quiet CPU Trainer

from lightning_meta import BlackBoxAdaptation, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP


class SGDBlackBox(BlackBoxAdaptation):
    poison_rank: int | None = None  # this rank sees NaN query targets at global step 1

    def training_step(self, batch: TaskBatch, batch_idx: int):
        if self.global_step == 1 and self.global_rank == self.poison_rank:
            batch = batch._replace(query_y=batch.query_y * float("nan"))
        return super().training_step(batch, batch_idx)


def build(meta_batch: int, poison_rank: int | None = None):
    torch.manual_seed(0)
    SGDBlackBox.poison_rank = poison_rank
    model = SGDBlackBox(MLP(out_features=16, hidden=(16,)), feature_dim=16, aggregator="attention", task_dim=8,
                        hidden=16, optimizer=partial(torch.optim.SGD, lr=0.05))
    dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=meta_batch,
                            train_episodes_per_epoch=1000, val_episodes=0, test_episodes=0, seed=3)
    return model, dm

