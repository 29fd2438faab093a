"""Episode metrics: per-episode values aggregated into a mean and a 95% confidence interval."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_accuracy
from torchmetrics.utilities import dim_zero_cat


class EpisodeMeanCI(Metric):
    """Mean of per-episode values with the 95% confidence half-width ``1.96 * std / sqrt(n)``.

    ``update`` takes a tensor of per-episode values (one per task); ``compute`` returns
    ``{"mean": ..., "ci95": ..., "n": ...}``. The state is the list of values, concatenated across DDP
    ranks, so 2 ranks over disjoint shards give exactly the numbers of 1 rank over the union.

    Examples:
        >>> import torch
        >>> metric = EpisodeMeanCI()
        >>> metric.update(torch.tensor([0.8, 1.0, 0.9, 0.7]))
        >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
        {'mean': 0.85, 'ci95': 0.1265, 'n': 4.0}
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor) -> None:
        self.values.append(values.detach().reshape(-1).double())

    def compute(self) -> dict[str, Tensor]:
        values = dim_zero_cat(self.values)
        n = values.numel()
        std = values.std(unbiased=True) if n > 1 else torch.zeros((), dtype=values.dtype, device=values.device)
        return {"mean": values.mean(), "ci95": 1.96 * std / max(n, 1) ** 0.5, "n": torch.tensor(float(n))}


class AdaptationCurve(Metric):
    """Mean query loss and score after each of ``0..steps`` inner steps, over all episodes seen.

    ``update(losses, scores)`` takes ``[steps + 1, T]`` per-episode values; the states are sums and a count
    (``dist_reduce_fx="sum"``), so under DDP ``compute`` gives the mean over every rank's episodes.

    Examples:
        >>> import torch
        >>> curve = AdaptationCurve(steps=1)
        >>> curve.update(torch.tensor([[4.0, 2.0], [1.0, 0.0]]), torch.tensor([[0.25, 0.75], [0.5, 1.0]]))
        >>> {k: v.tolist() for k, v in curve.compute().items()}
        {'loss': [3.0, 0.5], 'score': [0.5, 0.75]}
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, steps: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps = steps
        for name in ("loss_sum", "score_sum"):
            self.add_state(name, default=torch.zeros(steps + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses: Tensor, scores: Tensor) -> None:
        self.loss_sum += losses.detach().double().sum(1)
        self.score_sum += scores.detach().double().sum(1)
        self.count += losses.shape[1]

    def compute(self) -> dict[str, Tensor]:
        return {"loss": self.loss_sum / self.count, "score": self.score_sum / self.count}


def episode_accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-episode accuracy ``[T]`` from query logits ``[T, M, N]`` and labels ``[T, M]`` (torchmetrics)."""
    ways = logits.shape[-1]
    return multiclass_accuracy(
        logits.float().transpose(1, 2), target, num_classes=ways, average="micro", multidim_average="samplewise"
    )


def episode_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-episode mean squared error ``[T]``."""
    return ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)
