"""2-rank CPU DDP run that saves each rank's train/val/test tasks to OUT/rank{r}.pt.

usage: ddp_data.py OUT STRATEGY [one-val-episode]   (the last: val_episodes=1, fewer than the ranks)
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import index_dataset  # noqa: E402
from recorder import Recorder  # noqa: E402

from lightning_meta import ClassificationTasks, EpisodicDataModule  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    tasks = ClassificationTasks(index_dataset(), ways=3, shots=1, queries=2, split_fractions=(0.5, 0.25, 0.25))
    val_episodes = 1 if sys.argv[3:] == ["one-val-episode"] else 7  # fewer than the ranks: a clear error
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=8, val_episodes=val_episodes,
                            test_episodes=9, eval_meta_batch_size=2, seed=11)
    model = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=sys.argv[2], max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    trainer.test(model, dm)
    torch.save(model.seen, out / f"rank{trainer.global_rank}.pt")
