"""Samplers that hand each rank its share of episode keys ``(split, epoch, task indices)``."""

from __future__ import annotations

import math
from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler, SequentialSampler

from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.seeding import task_generator
from lightning_meta.data.sources import TaskSource
from lightning_meta.data.workers import check_spawned_process

EpisodeKey = tuple[str, int, tuple[int, ...]]


class EpisodeDataset(Dataset):
    """Maps an episode key ``(split, epoch, task indices)`` to a [TaskBatch][lightning_meta.TaskBatch].

    Every task is drawn from its own generator seeded by ``(seed, split, epoch, index)``, so a task's
    content never depends on the worker, the rank, or how tasks are grouped into meta-batches.

    Examples:
        >>> from lightning_meta.data import SinusoidTasks
        >>> EpisodeDataset(SinusoidTasks(), seed=0)[("val", 0, (0, 1, 2))].num_tasks
        3
    """

    def __init__(self, tasks: TaskSource, seed: int) -> None:
        self.tasks, self.seed = tasks, seed

    def __getstate__(self) -> dict:
        check_spawned_process(type(self).__name__)  # a worker in a new interpreter: fail here if it cannot start
        return self.__dict__.copy()

    def __getitem__(self, key: EpisodeKey) -> TaskBatch:  # type: ignore[override]
        split, epoch, indices = key
        return self.tasks.sample(split, [task_generator(self.seed, split, epoch, i) for i in indices])


class _RankSampler(DistributedSampler, SequentialSampler):
    """Base for samplers that shard by rank themselves.

    Subclassing ``DistributedSampler`` tells Lightning not to wrap the sampler again under DDP; subclassing
    ``SequentialSampler`` tells it that the order is already fixed (``Trainer(overfit_batches=...)`` would otherwise
    replace the sampler by a ``SequentialSampler`` over the dataset, which has no length). The parents'
    ``__init__`` is deliberately not called (no process group is needed).
    """

    def __init__(self, num_replicas: int = 1, rank: int = 0) -> None:  # noqa: D107
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TrainEpisodeSampler(_RankSampler):
    """The training stream: step ``s`` on rank ``r`` gets the tasks of global meta-batch ``s * W + r``.

    Meta-batch ``g`` holds tasks ``g*B .. g*B+B-1`` of the epoch, so ``W`` ranks with ``B`` tasks each see
    exactly the tasks one device with ``W*B`` tasks would, and ``accumulate_grad_batches=2`` with ``B/2``
    sees those of one batch of ``B``. ``skip`` batches of epoch ``skip_epoch`` are skipped once (resume).

    Examples:
        >>> [key[2] for key in TrainEpisodeSampler(episodes=8, meta_batch_size=2, num_replicas=2, rank=1)]
        [(2, 3), (6, 7)]
    """

    def __init__(self, episodes: int, meta_batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(num_replicas, rank)
        self.meta_batch_size = meta_batch_size
        self.steps = max(1, math.ceil(episodes / (meta_batch_size * num_replicas)))
        self.skip_epoch, self.skip = -1, 0
        #: every pass yields the same epoch's batches (``set_epoch`` leaves the epoch): ``overfit_batches``
        self.fixed_epoch = False

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        if not self.fixed_epoch:
            self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Set the epoch to ``epoch`` and start every pass over it after its first ``batches_done`` batches.

        Both are set here, before the loader exists: Lightning calls ``iter()`` on the training loader before
        it calls ``set_epoch``, and a loader with workers draws its first indices at ``iter()``. The skip is
        tied to the epoch, not consumed by one pass; a resumed run passes through that epoch once. A
        checkpoint taken after an epoch's last batch resumes at the start of the next epoch: Lightning then
        iterates the loader it built at ``setup`` for that next epoch, without a new ``iter()``.
        """
        if batches_done >= self.steps:
            epoch, batches_done = epoch + 1, 0
        self.epoch, self.skip_epoch, self.skip = epoch, epoch, batches_done

    def __iter__(self) -> Iterator[EpisodeKey]:
        start = self.skip if self.epoch == self.skip_epoch else 0
        b = self.meta_batch_size
        for step in range(start, self.steps):
            first = (step * self.num_replicas + self.rank) * b
            yield "train", self.epoch, tuple(range(first, first + b))


class EvalEpisodeSampler(_RankSampler):
    """A fixed set of ``episodes`` tasks (epoch 0 of ``split``); rank ``r`` takes tasks ``r, r+W, ...``.

    The union over ranks is the whole set, whatever the world size; no episode is repeated or padded.

    Examples:
        >>> [key[2] for key in EvalEpisodeSampler("val", episodes=5, meta_batch_size=2, num_replicas=2, rank=0)]
        [(0, 2), (4,)]
    """

    def __init__(self, split: str, episodes: int, meta_batch_size: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(num_replicas, rank)
        self.split, self.meta_batch_size = split, meta_batch_size
        self.indices = list(range(rank, episodes, num_replicas))

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.meta_batch_size)

    def __iter__(self) -> Iterator[EpisodeKey]:
        b = self.meta_batch_size
        for start in range(0, len(self.indices), b):
            yield self.split, 0, tuple(self.indices[start : start + b])
