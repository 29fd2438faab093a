"""The episodic ``LightningDataModule``: seeded meta-batches of tasks for train, val and test."""

from __future__ import annotations

import multiprocessing
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from lightning_meta._lightning import pl
from lightning_meta.checks import check_positive
from lightning_meta.data.samplers import EpisodeDataset, EvalEpisodeSampler, TrainEpisodeSampler, _RankSampler
from lightning_meta.data.sources import TaskSource


class EpisodicDataModule(pl.LightningDataModule):
    """Yields [TaskBatch][lightning_meta.TaskBatch] meta-batches from any [TaskSource][lightning_meta.TaskSource].

    * Training: ``ceil(train_episodes_per_epoch / (meta_batch_size * world_size))`` steps per epoch, each a
      meta-batch of ``meta_batch_size`` tasks. The stream is a function of ``(seed, epoch, task index)``;
      ranks and workers never duplicate tasks.
    * Validation / test: a fixed set of ``val_episodes`` / ``test_episodes`` tasks decided by ``seed``
      alone, identical for any ``num_workers`` and any DDP world size (ranks evaluate disjoint shards
      whose union is the set), in meta-batches of ``eval_meta_batch_size`` (default ``meta_batch_size``).
    * ``state_dict`` records the epoch and the batches done in it, so a resumed run continues the stream.
    * Workers (``num_workers > 0``) start by ``worker_start_method``: ``"forkserver"`` by default where the
      platform has it. A plain ``fork`` from a process with other threads (DDP's gloo threads, a W&B run, a
      previous loader's feeder threads) can leave the worker deadlocked at birth: CPython before 3.11.10 and
      3.12.1 copies a runtime lock another thread holds (python/cpython#112275); measured here as a hung 2-rank
      run with workers. ``"fork"`` remains available (e.g. for task sources defined in a notebook, which a
      forkserver worker cannot import); tensors reach forkserver workers through shared memory, not copies.

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
        worker_start_method: Literal["forkserver", "spawn", "fork"] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(tasks, TaskSource):
            raise TypeError(f"tasks must be a lightning_meta TaskSource, got {type(tasks).__name__}")
        check_positive("meta_batch_size", meta_batch_size)
        check_positive("train_episodes_per_epoch", train_episodes_per_epoch)
        check_positive("val_episodes", val_episodes, 0)
        check_positive("test_episodes", test_episodes, 0)
        check_positive("num_workers", num_workers, 0)
        methods = multiprocessing.get_all_start_methods()
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
        default = "forkserver" if "forkserver" in methods else None  # None: the platform's default (spawn)
        self.worker_start_method = worker_start_method or default
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
            multiprocessing_context=self.worker_start_method if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = TrainEpisodeSampler(self.train_episodes_per_epoch, self.meta_batch_size, world, rank)
        # the epoch must be right before Lightning's first iter() (workers draw indices there; set_epoch is later)
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        if self._resume is not None:
            sampler.resume_at(*self._resume)
            self._resume = None
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
