"""Adapter: learn2learn ``TaskDataset`` objects (or anything with ``.sample()``) as a task source.

learn2learn is an optional extra and is never imported here: the adapter relies only on l2l's
convention, ``taskset.sample() -> (data [N*(K+Q), ...], labels [N*(K+Q)])``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lightning_meta.checks import check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.sources import TaskSource


class Learn2LearnTasks(TaskSource):
    """Turns learn2learn tasksets into [TaskBatch][lightning_meta.TaskBatch] meta-batches.

    ``train`` / ``val`` / ``test`` are objects with a ``.sample()`` method in learn2learn's convention
    (a ``learn2learn.data.TaskDataset`` built with ``NWays``, ``KShots(shots + queries)``, ``LoadData``,
    or a split of ``learn2learn.vision.benchmarks.get_tasksets``). Each task is split per class into its
    first ``shots`` examples (support) and the next ``queries`` (query); labels are remapped to
    ``0..ways-1`` in a random order. Python's ``random`` (which learn2learn samples with) is seeded from
    the task's generator and restored afterwards, so tasks are reproducible.

    Examples:
        >>> import learn2learn as l2l  # doctest: +SKIP
        >>> tasksets = l2l.vision.benchmarks.get_tasksets("omniglot", train_ways=5, train_samples=16,
        ...     test_ways=5, test_samples=16, root="data")  # doctest: +SKIP
        >>> tasks = Learn2LearnTasks.from_tasksets(tasksets, ways=5, shots=1, queries=15)  # doctest: +SKIP
    """

    task_type = "classification"

    def __init__(self, train: Any, val: Any = None, test: Any = None, ways: int = 5, shots: int = 1,
                 queries: int = 15) -> None:
        check_positive("ways", ways, 2)
        check_positive("shots", shots)
        check_positive("queries", queries)
        for name, taskset in (("train", train), ("val", val), ("test", test)):
            if taskset is not None and not callable(getattr(taskset, "sample", None)):
                raise TypeError(f"{name} must have a .sample() method (a learn2learn TaskDataset), got {taskset!r}")
        self.tasksets = {"train": train, "val": val, "test": test}
        self.ways, self.shots, self.queries = ways, shots, queries

    @classmethod
    def from_tasksets(cls, tasksets: Any, ways: int = 5, shots: int = 1, queries: int = 15) -> Learn2LearnTasks:
        """From learn2learn's ``TaskSets(train, validation, test)`` named tuple."""
        return cls(tasksets.train, tasksets.validation, tasksets.test, ways, shots, queries)

    def sample(self, split: str, generators: list[torch.Generator]) -> TaskBatch:
        taskset = self.tasksets[split]
        if taskset is None:
            raise ValueError(f"no learn2learn taskset was given for the {split!r} split")
        tasks = [self._one(taskset, g) for g in generators]
        return TaskBatch(*(torch.stack(parts) for parts in zip(*tasks)))

    def _one(self, taskset: Any, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        state = random.getstate()
        random.seed(int(torch.randint(2**62, (1,), generator=g)))
        try:
            data, labels = taskset.sample()[:2]
        finally:
            random.setstate(state)
        return self.split_task(torch.as_tensor(data), torch.as_tensor(labels), g)

    def split_task(self, data: torch.Tensor, labels: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``(support_x, support_y, query_x, query_y)`` of one task in learn2learn's convention."""
        n, k, q = self.ways, self.shots, self.queries
        classes, remapped, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) != n or bool((counts != k + q).any()):
            raise ValueError(
                f"a learn2learn task has {len(classes)} classes with {counts.tolist()} examples; expected "
                f"ways={n} classes with shots + queries = {k + q} each (use NWays({n}), KShots({k + q}))"
            )
        order = torch.argsort(remapped, stable=True).view(n, k + q)
        new_label = torch.randperm(n, generator=g)
        s, qi = order[:, :k].reshape(-1), order[:, k:].reshape(-1)
        ps, pq = torch.randperm(n * k, generator=g), torch.randperm(n * q, generator=g)
        s, qi = s[ps], qi[pq]
        return data[s], new_label[remapped[s]], data[qi], new_label[remapped[qi]]
