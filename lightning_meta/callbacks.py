"""Callbacks that log meta-learning views to Weights & Biases: adaptation curves and episode grids."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_meta._lightning import WandbLogger, pl
from lightning_meta.data.episodes import TaskBatch


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger) and not getattr(lg, "_disabled", False)]


def episode_grid(batch: TaskBatch, predictions: Tensor, max_queries: int = 20) -> tuple[Tensor, str]:
    """One task's support images (top row) and query images (below) as a ``[H, W]`` grid, and a caption
    listing ``true/predicted`` labels of the queries shown."""
    support, query = batch.support_x[0], batch.query_x[0, :max_queries]
    pad = lambda x: torch.nn.functional.pad(x[:, 0], (1, 1, 1, 1))  # noqa: E731
    s, q = pad(support.float().cpu()), pad(query.float().cpu())
    width = max(len(s), min(len(q), 10))
    rows = [s] + [q[i : i + width] for i in range(0, len(q), width)]
    blank = torch.zeros_like(s[0])
    lines = [torch.cat([*r, *([blank] * (width - len(r)))], dim=1) for r in rows]
    labels = batch.query_y[0, :max_queries].tolist()
    guessed = predictions[0, : len(labels)].argmax(-1).tolist()
    caption = "support: " + " ".join(map(str, batch.support_y[0].tolist())) + " | queries true/pred: " + " ".join(
        f"{t}/{p}" for t, p in zip(labels, guessed)
    )
    return torch.cat(lines, dim=0), caption


class WandbEpisodeLogger(pl.Callback):
    """After each validation: the adaptation curve (query loss and accuracy/MSE after 0..K inner steps) as a
    W&B line plot, and a grid of one episode's support and query images with predictions.

    The curve needs a model that records one (``MAML(adaptation_curve=True)``); the grid is drawn for image
    tasks. Without a ``WandbLogger`` the callback does nothing.

    Examples:
        >>> trainer = pl.Trainer(logger=MetaWandbLogger(), callbacks=[WandbEpisodeLogger()])  # doctest: +SKIP
    """

    def __init__(self, grid: bool = True, max_queries: int = 20) -> None:
        self.grid, self.max_queries = grid, max_queries
        self._batch: TaskBatch | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and isinstance(batch, TaskBatch):
            self._batch = batch.task(0)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or trainer.sanity_checking or not trainer.is_global_zero:
            return
        import wandb

        payload = {}
        curve = getattr(pl_module, "adaptation_curves", {}).get("val")
        if curve:
            table = wandb.Table(columns=["inner_step", "query_loss", f"query_{curve['score_name']}"],
                                data=[list(row) for row in zip(curve["step"], curve["loss"], curve["score"])])
            payload["val/adaptation_curve_loss"] = wandb.plot.line(table, "inner_step", "query_loss",
                                                                   title="query loss after k inner steps")
            key = f"query_{curve['score_name']}"
            payload[f"val/adaptation_curve_{curve['score_name']}"] = wandb.plot.line(
                table, "inner_step", key, title=f"query {curve['score_name']} after k inner steps")
        if self.grid and self._batch is not None and self._batch.support_x.dim() == 5:
            with torch.inference_mode(False):
                predictions = pl_module.predict_step(self._batch, 0)
            if predictions.dim() == 3:
                image, caption = episode_grid(self._batch, predictions, self.max_queries)
                payload["val/episode"] = wandb.Image(image.numpy(), caption=caption)
        if payload:
            for lg in loggers:
                lg.experiment.log({**payload, "trainer/global_step": trainer.global_step})
