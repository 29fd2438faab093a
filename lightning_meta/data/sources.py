"""The task-source protocol shared by every family of tasks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch

from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.preprocessing import ImagePreprocessing

SPLITS: tuple[str, ...] = ("train", "val", "test")
TaskType = Literal["classification", "regression"]


class TaskSource(ABC):
    """A family of tasks that can be sampled per split, one seeded generator per task.

    Subclasses set ``task_type`` and implement [sample][lightning_meta.TaskSource.sample]; data-dependent checks
    go in [setup][lightning_meta.TaskSource.setup], which the [EpisodicDataModule][lightning_meta.EpisodicDataModule]
    calls from its own ``setup``.

    Examples:
        >>> import torch
        >>> from lightning_meta.data.episodes import TaskBatch
        >>> class Lines(TaskSource):
        ...     task_type = "regression"
        ...     def sample(self, split, generators):
        ...         slopes = torch.stack([torch.randn(1, generator=g) for g in generators])  # [T, 1]
        ...         x = torch.linspace(-1, 1, 8).expand(len(generators), 8)[..., None]
        ...         y = slopes[:, None] * x
        ...         return TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])
        >>> Lines().sample("train", [torch.Generator().manual_seed(0)]).query_y.shape
        torch.Size([1, 4, 1])
    """

    task_type: TaskType = "classification"
    ways: int = 1
    shots: int = 1
    queries: int = 1

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load data and validate it against the configuration (idempotent)."""

    def preprocessing(self) -> ImagePreprocessing | None:
        """How an image file becomes one of this source's inputs (image sources), else ``None``: a learner records
        it, so that a new task's images are prepared as the training images were."""
        return None

    def describe(self) -> dict:
        """What a learner trained on this source records for adapting to a new task (plain data): the task type,
        ``ways``/``shots``/``queries`` and the image preprocessing (``None`` for other inputs)."""
        prep = self.preprocessing()
        return {"source": type(self).__name__, "task_type": self.task_type, "ways": int(self.ways),
                "shots": int(self.shots), "queries": int(self.queries),
                "train_ways": getattr(self, "train_ways", None),
                "preprocessing": None if prep is None else prep.to_dict()}

    def validate_split(self, split: str) -> None:  # noqa: B027 - optional hook
        """Raise a ``ValueError`` naming the problem if ``split`` cannot provide tasks (after setup)."""

    @abstractmethod
    def sample(self, split: str, generators: list[torch.Generator]) -> TaskBatch:
        """One task per generator, from ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
