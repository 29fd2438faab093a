"""The sinusoid regression family of the MAML paper (Finn et al., 2017)."""

from __future__ import annotations

import math

import torch

from lightning_meta.checks import check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.sources import TaskSource


class SinusoidTasks(TaskSource):
    """Regression tasks ``y = A sin(x - phase)``, generated on the fly, one seeded generator per task.

    ``A ~ U[amplitude]`` (default ``[0.1, 5.0]``), ``phase ~ U[phase]`` (default ``[0, pi]``),
    ``x ~ U[x_range]`` (default ``[-5, 5]``); ``shots`` support and ``queries`` query points per task.
    Targets keep their shape: ``support_y [T, shots, 1]``. The train, val and test splits draw from the
    same distribution with disjoint seeds.

    Examples:
        >>> import torch
        >>> tasks = SinusoidTasks(shots=10, queries=10)
        >>> batch = tasks.sample("train", [torch.Generator().manual_seed(i) for i in range(25)])
        >>> batch.support_x.shape, batch.query_y.shape
        (torch.Size([25, 10, 1]), torch.Size([25, 10, 1]))
    """

    task_type = "regression"

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        check_positive("shots", shots)
        check_positive("queries", queries)
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)!r}")
        self.ways, self.shots, self.queries = 1, shots, queries
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)

    def parameters_of(self, generators: list[torch.Generator]) -> torch.Tensor:
        """``[T, 2]`` (amplitude, phase) of the tasks these generators would produce."""
        return torch.stack([self._draw(g)[0] for g in generators])

    def _draw(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(2, generator=g)
        params = torch.stack(
            [self.amplitude[0] + u[0] * (self.amplitude[1] - self.amplitude[0]),
             self.phase[0] + u[1] * (self.phase[1] - self.phase[0])]
        )
        low, high = self.x_range
        x = low + torch.rand(self.shots + self.queries, 1, generator=g) * (high - low)
        return params, x

    def sample(self, split: str, generators: list[torch.Generator]) -> TaskBatch:
        params, xs = zip(*(self._draw(g) for g in generators))
        p, x = torch.stack(params), torch.stack(xs)  # [T, 2], [T, S, 1]
        y = p[:, 0, None, None] * torch.sin(x - p[:, 1, None, None])
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
