"""Callbacks: meta-learning views logged to Weights & Biases (adaptation curves, episode grids), and where
``trainer.predict``'s query predictions go (``PredictionWriter``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_meta._lightning import WandbLogger, pl, submodule
from lightning_meta.data.episodes import TaskBatch

BasePredictionWriter = submodule("callbacks").BasePredictionWriter


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
    caption = (
        "support: "
        + " ".join(map(str, batch.support_y[0].tolist()))
        + " | queries true/pred: "
        + " ".join(f"{t}/{p}" for t, p in zip(labels, guessed))
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
            table = wandb.Table(
                columns=["inner_step", "query_loss", f"query_{curve['score_name']}"],
                data=[list(row) for row in zip(curve["step"], curve["loss"], curve["score"])],
            )
            payload["val/adaptation_curve_loss"] = wandb.plot.line(
                table, "inner_step", "query_loss", title="query loss after k inner steps"
            )
            key = f"query_{curve['score_name']}"
            payload[f"val/adaptation_curve_{curve['score_name']}"] = wandb.plot.line(
                table, "inner_step", key, title=f"query {curve['score_name']} after k inner steps"
            )
        if self.grid and self._batch is not None and self._batch.support_x.dim() == 5:
            with torch.inference_mode(False):
                predictions = pl_module.predict_step(self._batch, 0)
            if predictions.dim() == 3:
                image, caption = episode_grid(self._batch, predictions, self.max_queries)
                payload["val/episode"] = wandb.Image(image.numpy(), caption=caption)
        if payload:
            for lg in loggers:
                lg.experiment.log({**payload, "trainer/global_step": trainer.global_step})


class PredictionWriter(BasePredictionWriter):
    """Writes ``trainer.predict``'s query predictions to ``OUTPUT_DIR/predictions.pt`` when prediction ends (and
    prints where): ``torch.load`` gives a dict of plain tensors,

    * ``"predictions"``: ``[episodes, M, ...]``, every predict batch's ``[T, M, ...]`` concatenated in order: query
      logits ``[episodes, M, ways]`` (classification) or regression predictions ``[episodes, M, d_y]``;
    * ``"episodes"``: ``[episodes]``, the index of each episode in the predict set, where the DataLoader's sampler
      tells (lightning-meta's [EpisodicDataModule][lightning_meta.EpisodicDataModule] does).

    With several predict DataLoaders, ``"predictions"`` is a list (one tensor per DataLoader), and so is
    ``"episodes"``; batches whose query counts differ are kept as a list of ``[T, M, ...]`` tensors.

    Under several processes (DDP) each rank writes the episodes it predicted to ``predictions-rank{r}.pt``
    (no gather: no rank holds them all in memory); with the EpisodicDataModule rank ``r`` of ``W`` predicts episodes
    ``r, r+W, r+2W, ...``, so ``torch.cat`` the files' ``"predictions"`` and order them by their ``"episodes"``.

    ``lightning-meta predict`` adds one when the Trainer has no prediction writer; in Python pass it to the
    Trainer, e.g. ``Trainer(callbacks=[PredictionWriter("out")]).predict(learner, datamodule)``.

    Args:
        output_dir: where to write (created if missing); default: the Trainer's ``log_dir`` (the first logger's
            directory), else its ``default_root_dir``.
        filename: the file name (single process); under DDP ``{stem}-rank{r}{suffix}``.

    Examples:
        >>> import torch
        >>> from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> trainer = pl.Trainer(callbacks=[PredictionWriter(out)], logger=False, enable_progress_bar=False,
        ...                      enable_model_summary=False, accelerator="cpu")
        >>> data = EpisodicDataModule(SinusoidTasks(shots=5, queries=7), test_episodes=6, eval_meta_batch_size=4)
        >>> _ = trainer.predict(MAML(MLP(1, 1, hidden=[8])), data)  # doctest: +ELLIPSIS
        PredictionWriter: wrote ...predictions.pt (predictions [6, 7, 1])
        >>> torch.load(f"{out}/predictions.pt")["predictions"].shape
        torch.Size([6, 7, 1])
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.filename = filename
        #: the file written by the last ``trainer.predict`` (on this rank)
        self.path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # the episode samplers yield episode keys, not dataset indices: Lightning's batch indices, which this writer
        # does not use (it reads the sampler's episode indices), cannot be inferred, and it would warn every run
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")

    def directory(self, trainer: pl.Trainer) -> Path:
        """``output_dir``, else the Trainer's ``log_dir``, else its ``default_root_dir`` (call on every rank: the
        Trainer's ``log_dir`` broadcasts)."""
        if self.output_dir is not None:
            return self.output_dir
        log_dir = trainer.log_dir
        return Path(log_dir if log_dir is not None else trainer.default_root_dir)

    def file_for(self, trainer: pl.Trainer) -> Path:
        """The file this rank writes: ``predictions.pt``, or ``predictions-rank{r}.pt`` under several processes."""
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = Path(f"{name.stem}-rank{trainer.global_rank}{name.suffix}")
        return self.directory(trainer) / name

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        path = self.file_for(trainer)
        loaders = trainer.predict_dataloaders
        several = (
            isinstance(loaders, Sequence) and not isinstance(loaders, torch.utils.data.DataLoader) and len(loaders) > 1
        )
        if several:
            per_loader = [_stack(p) for p in predictions]
            episodes = [_episodes(loader) for loader in loaders]
            record: dict[str, Any] = {"predictions": per_loader}
            if all(e is not None for e in episodes):
                record["episodes"] = episodes
        else:
            loader = loaders[0] if isinstance(loaders, Sequence) else loaders
            record = {"predictions": _stack(predictions)}
            episodes = _episodes(loader)
            if (
                episodes is not None
                and isinstance(record["predictions"], Tensor)
                and len(episodes) == len(record["predictions"])
            ):
                record["episodes"] = episodes
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)
        self.path = path
        shapes = [list(t.shape) for t in _tensors(record["predictions"])]
        shown = shapes[0] if len(shapes) == 1 else shapes
        print(f"PredictionWriter: wrote {path} (predictions {shown})", flush=True)


def _stack(predictions: Sequence[Any]) -> Tensor | list:
    """One predict DataLoader's batches ``[T, M, ...]`` as ``[episodes, M, ...]`` (a list if their shapes differ)."""
    tensors = [p.detach().cpu() if isinstance(p, Tensor) else p for p in predictions]
    if tensors and all(isinstance(t, Tensor) and t.dim() >= 1 and t.shape[1:] == tensors[0].shape[1:] for t in tensors):
        return torch.cat(tensors)
    return tensors


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def _episodes(loader: Any) -> Tensor | None:
    """The episode indices a DataLoader's sampler yields, in order, where it has them (``EvalEpisodeSampler``)."""
    indices = getattr(getattr(loader, "sampler", None), "indices", None)
    if isinstance(indices, Sequence) and all(isinstance(i, int) for i in indices):
        return torch.tensor(list(indices), dtype=torch.long)
    return None
