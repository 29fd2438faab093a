"""The episodic batch: a meta-batch of tasks, each with a support and a query set."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """A meta-batch of ``T`` tasks; the first dimension of every tensor indexes the task.

    Classification (``N`` ways, ``K`` shots, ``Q`` queries per class)::

        support_x [T, N*K, *x_shape]   support_y [T, N*K]  (int64 labels in 0..N-1, remapped per task)
        query_x   [T, N*Q, *x_shape]   query_y   [T, N*Q]

    Regression keeps the target's shape: ``support_y [T, K, d_y]``, ``query_y [T, Q, d_y]``.

    Being a ``NamedTuple`` of tensors, Lightning moves it to the device unchanged.

    Example:
        >>> import torch
        >>> batch = TaskBatch(torch.zeros(2, 5, 1, 28, 28), torch.zeros(2, 5, dtype=torch.long),
        ...                   torch.zeros(2, 75, 1, 28, 28), torch.zeros(2, 75, dtype=torch.long))
        >>> batch.num_tasks, batch.task(0).support_x.shape
        (2, torch.Size([1, 5, 1, 28, 28]))
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """The meta-batch size ``T``."""
        return int(self.support_x.shape[0])

    def task(self, index: int) -> TaskBatch:
        """The ``index``-th task as a meta-batch of one (the task dimension kept)."""
        return TaskBatch(*(t[index : index + 1] for t in self))

    def tasks(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start..stop-1`` as a smaller meta-batch."""
        return TaskBatch(*(t[start:stop] for t in self))

    @staticmethod
    def cat(batches: list[TaskBatch]) -> TaskBatch:
        """Concatenate meta-batches along the task dimension."""
        return TaskBatch(*(torch.cat(parts) for parts in zip(*batches)))
