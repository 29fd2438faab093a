"""Weights & Biases logging that is offline by default and never blocks training."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn


class MetaWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline unless ``WANDB_MODE`` says otherwise, and falls back to offline.

    Runs are written under ``./wandb`` (``wandb sync`` uploads them later). With ``WANDB_MODE=online`` and
    no network, W&B's start-up error becomes a warning and the run continues offline, so training never
    waits on the network. All ``WandbLogger`` arguments apply.

    Example:
        >>> logger = MetaWandbLogger(project="lightning-meta")  # doctest: +SKIP
        >>> trainer = pl.Trainer(logger=logger)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        os.environ.setdefault("WANDB_MODE", "offline")
        kwargs.setdefault("settings", _quick_settings())
        super().__init__(*args, **kwargs)

    @property
    def experiment(self):
        try:
            return super().experiment
        except Exception as error:  # network or service failure: continue offline
            if self._wandb_init.get("mode") == "offline" or os.environ.get("WANDB_MODE") == "offline":
                raise
            rank_zero_warn(f"W&B could not start online ({error!r}); logging offline under ./wandb instead")
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return super().experiment


def _quick_settings():
    import wandb

    return wandb.Settings(init_timeout=30, silent=True)
