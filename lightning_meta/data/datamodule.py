"""The episodic ``LightningDataModule``: seeded meta-batches of tasks for train, val and test."""

from __future__ import annotations

import multiprocessing
from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_meta._lightning import pl
from lightning_meta.checks import check_positive
from lightning_meta.data.samplers import EpisodeDataset, EvalEpisodeSampler, TrainEpisodeSampler, _RankSampler
from lightning_meta.data.sources import TaskSource
from lightning_meta.data.workers import (
    StartMethod,
    auto_reason,
    check_spawned_process,
    check_workers_can_start,
    resolve_start_method,
)
from lightning_meta.distributed import settle_process_group


class EpisodicDataModule(pl.LightningDataModule):
    """Yields [TaskBatch][lightning_meta.TaskBatch] meta-batches from any [TaskSource][lightning_meta.TaskSource].

    * Training: ``ceil(train_episodes_per_epoch / (meta_batch_size * world_size))`` steps per epoch, each a
      meta-batch of ``meta_batch_size`` tasks. The stream is a function of ``(seed, epoch, task index)``;
      ranks and workers never duplicate tasks.
    * Validation / test: a fixed set of ``val_episodes`` / ``test_episodes`` tasks decided by ``seed``
      alone, identical for any ``num_workers`` and any DDP world size (ranks evaluate disjoint shards
      whose union is the set), in meta-batches of ``eval_meta_batch_size`` (default ``meta_batch_size``).
    * ``state_dict`` records the epoch and the batches done in it, so a resumed run continues the stream.
    * Workers (``num_workers > 0``) start by ``worker_start_method``; ``"auto"`` picks ``fork`` where it is safe, so
      scripts without an ``if __name__ == "__main__":`` guard work, and ``setup`` raises a ``RuntimeError`` before any
      worker starts where a guard is needed but missing (the rule and its reasons: docs/howto/workers.md).

    Args:
        tasks: the [TaskSource][lightning_meta.TaskSource] episodes are drawn from.
        meta_batch_size: tasks per training meta-batch (per DDP rank).
        train_episodes_per_epoch: training tasks per epoch, over all ranks.
        val_episodes: the fixed validation tasks.
        test_episodes: the fixed test tasks.
        eval_meta_batch_size: tasks per validation/test meta-batch (default ``meta_batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: the DataLoaders' ``pin_memory``.
        seed: decides every episode (any int).
        worker_start_method: ``"auto"``, ``"fork"``, ``"forkserver"`` or ``"spawn"`` (``None``: ``"auto"``).

    Examples:
        >>> from lightning_meta.data import SinusoidTasks
        >>> dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=4,
        ...                         train_episodes_per_epoch=8)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch.support_x.shape
        torch.Size([4, 5, 1])
    """

    def __init__(
        self,
        tasks: TaskSource,
        meta_batch_size: int = 32,
        train_episodes_per_epoch: int = 1000,
        val_episodes: int = 100,
        test_episodes: int = 600,
        eval_meta_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        worker_start_method: StartMethod | None = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(tasks, TaskSource):
            raise TypeError(f"tasks must be a lightning_meta TaskSource, got {type(tasks).__name__}")
        check_positive("meta_batch_size", meta_batch_size)
        check_positive("train_episodes_per_epoch", train_episodes_per_epoch)
        check_positive("val_episodes", val_episodes, 0)
        check_positive("test_episodes", test_episodes, 0)
        check_positive("num_workers", num_workers, 0)
        if isinstance(seed, bool) or not isinstance(seed, int):  # any int: seeding.py hashes it into each task's seed
            raise ValueError(f"seed must be an integer, got {seed!r}")
        methods = ["auto", *multiprocessing.get_all_start_methods()]
        if worker_start_method is not None and worker_start_method not in methods:
            raise ValueError(f"worker_start_method must be one of {methods} on this platform, got "
                             f"{worker_start_method!r}")
        if eval_meta_batch_size is not None:
            check_positive("eval_meta_batch_size", eval_meta_batch_size)
        self.tasks = tasks
        self.meta_batch_size = meta_batch_size
        self.eval_meta_batch_size = eval_meta_batch_size or meta_batch_size
        self.train_episodes_per_epoch = train_episodes_per_epoch
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.worker_start_method = worker_start_method or "auto"
        self._resume: tuple[int, int] | None = None
        self.save_hyperparameters(ignore=["tasks"])

    @property
    def task_type(self) -> str:
        """``"classification"`` or ``"regression"``, from the task source."""
        return self.tasks.task_type

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the task source (errors name the bad value before any training)."""
        self.tasks.setup()
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        episodes = {"train": 1, "val": self.val_episodes, "test": self.test_episodes}
        for split in needed.get(stage or "", ["train", "val", "test"]):
            if episodes[split] > 0:
                self.tasks.validate_split(split)
                if split != "train":
                    self._check_eval_episodes(split, episodes[split])
        self.check_workers()

    @property
    def start_method(self) -> str:
        """The start method the workers use in this process (``worker_start_method`` with ``"auto"`` resolved)."""
        return resolve_start_method(self.worker_start_method, distributed=self._world()[0] > 1)

    def check_workers(self) -> None:
        """Raise a ``RuntimeError`` now if the workers' start method cannot set the task source up (``setup`` calls
        it; e.g. a ``forkserver`` worker and a script without the ``__main__`` guard), naming the fix."""
        if self.num_workers == 0:
            return
        distributed = self._world()[0] > 1
        method = resolve_start_method(self.worker_start_method, distributed)
        reason = auto_reason(distributed) if self.worker_start_method == "auto" else ""
        check_workers_can_start(EpisodeDataset(self.tasks, self.seed), method, type(self).__name__, reason)

    def __getstate__(self) -> dict[str, Any]:
        check_spawned_process(type(self).__name__)
        return self.__dict__.copy()

    def teardown(self, stage: str) -> None:
        """After a successful Trainer call: a barrier across gloo DDP ranks, so that no rank exits while a gloo
        worker thread still holds a finished gradient all-reduce
        ([settle_process_group][lightning_meta.distributed.settle_process_group])."""
        settle_process_group()

    def _check_eval_episodes(self, split: str, episodes: int) -> None:
        """Every rank needs an evaluation episode: a rank without one would get an empty loader."""
        world = self._world()[0]
        if 0 < episodes < world:
            raise ValueError(f"{split}_episodes={episodes} is fewer than the {world} ranks of this run: every rank "
                             f"needs an episode; use {split}_episodes >= {world}, or 0 to skip {split}")

    def _world(self) -> tuple[int, int]:
        """``(world size, rank)``: the Trainer's, else an initialized process group's (Fabric, torchrun), else one."""
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader(self, sampler: _RankSampler) -> DataLoader:
        return DataLoader(
            EpisodeDataset(self.tasks, self.seed),
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=self.start_method if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = TrainEpisodeSampler(self.train_episodes_per_epoch, self.meta_batch_size, world, rank)
        # the epoch must be right before Lightning's first iter() (workers draw indices there; set_epoch is later)
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        if self._resume is not None:
            sampler.resume_at(*self._resume)
            self._resume = None
        # Trainer(overfit_batches=n): the same first n batches in every epoch, as Lightning promises
        sampler.fixed_epoch = self.trainer is not None and self.trainer.overfit_batches > 0
        return self._loader(sampler)

    def _eval_loader(self, split: str, episodes: int) -> DataLoader | list:
        if episodes == 0:
            return []
        self._check_eval_episodes(split, episodes)
        world, rank = self._world()
        return self._loader(EvalEpisodeSampler(split, episodes, self.eval_meta_batch_size, world, rank))

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val", self.val_episodes)

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test", self.test_episodes)

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test", self.test_episodes)

    def state_dict(self) -> dict[str, Any]:
        """``seed``, the current ``epoch`` and the training ``batches_done`` in it (for resuming)."""
        trainer = self.trainer
        if trainer is None:
            return {"seed": self.seed, "epoch": 0, "batches_done": 0}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"seed": self.seed, "epoch": trainer.current_epoch, "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed and resume the training stream where the checkpoint left it."""
        if state_dict.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"the checkpoint's data seed {state_dict['seed']} differs from this DataModule's seed "
                f"{self.seed}; resuming would change the task stream. Construct it with seed={state_dict['seed']}"
            )
        self._resume = (int(state_dict.get("epoch", 0)), int(state_dict.get("batches_done", 0)))
