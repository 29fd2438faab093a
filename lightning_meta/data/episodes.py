"""The episodic batch: a meta-batch of tasks, each with a support and a query set."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """A meta-batch of ``T`` tasks; the first dimension of every tensor indexes the task.

    Classification (``N`` ways, ``K`` shots, ``Q`` queries per class; int64 labels in ``0..N-1``, remapped per
    task):

        support_x [T, N*K, *x_shape]   support_y [T, N*K]
        query_x   [T, N*Q, *x_shape]   query_y   [T, N*Q]

    Regression keeps the target's shape: ``support_y [T, K, d_y]``, ``query_y [T, Q, d_y]``.

    Being a ``NamedTuple`` of tensors, Lightning moves it to the device unchanged. For prediction the queries may
    be unlabeled: ``query_y=None`` (``predict_step`` and ``trainer.predict`` take it; training and evaluation need
    labels).

    Examples:
        >>> import torch
        >>> batch = TaskBatch(torch.zeros(2, 5, 1, 28, 28), torch.zeros(2, 5, dtype=torch.long),
        ...                   torch.zeros(2, 75, 1, 28, 28), torch.zeros(2, 75, dtype=torch.long))
        >>> batch.num_tasks, batch.task(0).support_x.shape
        (2, torch.Size([1, 5, 1, 28, 28]))
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor | None = None

    def check(self) -> None:
        """Raise a ``ValueError`` naming the shapes unless the four tensors describe the same tasks.

        Every tensor is ``[T, M, ...]`` with the same ``T``; inputs and targets agree on ``M`` within the
        support set and within the query set; support and query share the input shape and the target shape.

        Examples:
            >>> x, y = torch.zeros(2, 5, 3), torch.zeros(2, 5)
            >>> TaskBatch(x, y, x[:1], y[:1]).check()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: TaskBatch tensors disagree on the number of tasks T ...: ..., query_x (1, 5, 3), ...
        """
        if self.query_y is None:
            self.with_placeholder_targets().check()
            return
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(self._fields, self))
        if any(t.dim() < 2 for t in self):
            raise ValueError(f"TaskBatch tensors must be [T, M, ...] (tasks, examples per task, ...); got {shapes}")
        problem = None
        if len({t.shape[0] for t in self}) > 1:
            problem = "disagree on the number of tasks T (first dimension)"
        elif self.support_x.shape[1] != self.support_y.shape[1] or self.query_x.shape[1] != self.query_y.shape[1]:
            problem = "disagree on the number of examples per task (second dimension: inputs vs targets)"
        elif self.support_x.shape[2:] != self.query_x.shape[2:]:
            problem = "disagree on the input shape (support_x vs query_x after [T, M])"
        elif self.support_y.shape[2:] != self.query_y.shape[2:]:
            problem = "disagree on the target shape (support_y vs query_y after [T, M])"
        if problem:
            raise ValueError(f"TaskBatch tensors {problem}: {shapes}")

    @property
    def num_tasks(self) -> int:
        """The meta-batch size ``T``."""
        return int(self.support_x.shape[0])

    def task(self, index: int) -> TaskBatch:
        """The ``index``-th task as a meta-batch of one (the task dimension kept)."""
        return TaskBatch(*(None if t is None else t[index : index + 1] for t in self))

    def with_placeholder_targets(self) -> TaskBatch:
        """This batch with zero query targets where ``query_y`` is ``None`` (unlabeled queries): the shape and dtype
        of ``support_y``'s per-example targets, so a learner's prediction runs unchanged (no output depends on the
        query targets; only the losses do, and they are meaningless here).

        Examples:
            >>> batch = TaskBatch(torch.zeros(1, 4, 3), torch.tensor([[0, 1, 0, 1]]), torch.zeros(1, 2, 3))
            >>> batch.with_placeholder_targets().query_y
            tensor([[0, 0]])
        """
        if self.query_y is not None:
            return self
        y = self.support_y
        shape = (y.shape[0], self.query_x.shape[1], *y.shape[2:])
        return self._replace(query_y=torch.zeros(shape, dtype=y.dtype, device=y.device))

