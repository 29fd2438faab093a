"""2-rank CPU DDP ``trainer.predict`` with the PredictionWriter: each rank writes OUT/predictions-rank{r}.pt.

usage: ddp_predict.py OUT
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.callbacks import PredictionWriter
from lightning_meta.models import MLP


def build() -> tuple[MAML, EpisodicDataModule]:
    """Both processes (and the one-device oracle) build the same learner and the same 7 test episodes."""
    torch.manual_seed(0)
    learner = MAML(MLP(hidden=(8,)), inner_lr=0.01, eval_inner_steps=2)
    data = EpisodicDataModule(SinusoidTasks(shots=5, queries=4), test_episodes=7, eval_meta_batch_size=2, seed=3)
    return learner, data


if __name__ == "__main__":
    out = Path(sys.argv[1])
    learner, data = build()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                         callbacks=[PredictionWriter(out)])
    trainer.predict(learner, data)
