"""A minimal LightningModule that records which tasks it saw (for data-stream tests)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def task_ids(batch) -> list[tuple[int, ...]]:
    """A task's identity: the sorted example ids (inputs of ``index_dataset``) of support and query."""
    ids = torch.cat([batch.support_x[..., 0], batch.query_x[..., 0]], 1).long()
    return [tuple(sorted(row.tolist())) for row in ids]


class Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list] = {"train": [], "val": [], "test": []}

    def _record(self, split, batch):
        self.seen[split].append(task_ids(batch))

    def training_step(self, batch, batch_idx):
        self._record("train", batch)
        return (self.w * batch.query_x.float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        self._record("val", batch)

    def test_step(self, batch, batch_idx):
        self._record("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
