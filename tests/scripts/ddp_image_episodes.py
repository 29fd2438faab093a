"""2-rank CPU DDP (gloo) validate + test over a synthetic miniImageNet; each rank saves the episodes it evaluated.

usage: ddp_image_episodes.py OUT ROOT CACHE NUM_WORKERS

Each rank writes OUT/rank{r}.pt: ``{"val"|"test": {episode index: (support_x, support_y, query_x, query_y)}}`` plus
its world size, rank and loaders' workers (tests/data/test_image_sources.py compares them with one process's episodes).
The episode indices are those of the sampler of the loader Lightning actually iterated.
"""

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_meta import EpisodicDataModule, MiniImageNetTasks

#: the data module of the test and of every rank: odd set sizes, so that the two ranks' shards differ
EVAL = {"val_episodes": 7, "test_episodes": 9, "eval_meta_batch_size": 2, "meta_batch_size": 2, "seed": 5}
TASKS = {"ways": 5, "shots": 1, "queries": 2, "image_size": 32}


def datamodule(root: str, cache: str, num_workers: int = 0) -> EpisodicDataModule:
    return EpisodicDataModule(MiniImageNetTasks(root, cache_dir=cache, **TASKS), num_workers=num_workers, **EVAL)


def episodes(keys: list, batches: list) -> dict[int, tuple[torch.Tensor, ...]]:
    """``{episode index: its four tensors}`` of meta-batches ``batches`` drawn for sampler ``keys``."""
    assert len(keys) == len(batches), (len(keys), len(batches))
    out = {}
    for (_, epoch, indices), batch in zip(keys, batches):
        assert epoch == 0 and batch.num_tasks == len(indices)
        for row, index in enumerate(indices):
            assert index not in out
            out[index] = tuple(t[row].clone() for t in (batch.support_x, batch.support_y, batch.query_x,
                                                         batch.query_y))
    return out


class Record(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list] = {"val": [], "test": []}

    def validation_step(self, batch, batch_idx):
        assert batch_idx == len(self.seen["val"])
        self.seen["val"].append(batch)

    def test_step(self, batch, batch_idx):
        assert batch_idx == len(self.seen["test"])
        self.seen["test"].append(batch)


def loader_info(loader) -> dict:
    context = loader.multiprocessing_context
    return {"num_workers": loader.num_workers, "start_method": context.get_start_method() if context else None}


if __name__ == "__main__":
    out, root, cache, workers = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    dm, model = datamodule(root, cache, workers), Record()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, dm, verbose=False)
    val_loader, backend = trainer.val_dataloaders, torch.distributed.get_backend()
    trainer.test(model, dm, verbose=False)
    test_loader = trainer.test_dataloaders
    result = {
        "world_size": trainer.world_size, "rank": trainer.global_rank,
        "backend": backend,
        "val": episodes(list(val_loader.sampler), model.seen["val"]),
        "test": episodes(list(test_loader.sampler), model.seen["test"]),
        "loaders": [loader_info(val_loader), loader_info(test_loader)],
    }
    path = out / f"rank{trainer.global_rank}.pt"
    torch.save(result, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
