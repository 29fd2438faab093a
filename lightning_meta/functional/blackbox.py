"""Black-box adaptation's per-batch losses as plain functions of the network's raw outputs ``[T, Q, out]``.

Losses are computed in at least float32 (``widen``): the outputs of a bf16/fp16 forward are widened before
cross-entropy, Gaussian NLL or MSE; float64 outputs stay float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` promoted to at least float32 (float64 is kept)."""
    return torch.promote_types(dtype, torch.float32)


def widen(x: Tensor) -> Tensor:
    """``x`` in at least float32 (losses of bf16/fp16 outputs in float32; float64 is kept)."""
    return x.to(wide_dtype(x.dtype))


def gaussian_outputs(out: Tensor, y_dim: int, predict_variance: bool) -> tuple[Tensor, Tensor | None]:
    """Regression outputs ``[..., out]`` as ``(mean, variance)``, each ``[..., y_dim]``: the first ``y_dim``
    values are the mean, the next ``y_dim`` the variance through ``softplus + 1e-3``; the variance is ``None``
    without ``predict_variance``.

    Examples:
        >>> mean, var = gaussian_outputs(torch.tensor([[0.5, 0.0]]), y_dim=1, predict_variance=True)
        >>> mean, var
        (tensor([[0.5000]]), tensor([[0.6941]]))
    """
    mean = out[..., :y_dim]
    if not predict_variance:
        return mean, None
    return mean, F.softplus(out[..., y_dim : 2 * y_dim]) + 1e-3


def classification_losses(out: Tensor, query_y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """Per-task mean cross-entropy ``[T]`` of logits ``out [T, Q, >= ways]`` (in at least float32) and the logits
    ``[T, Q, ways]``."""
    logits = out[..., :ways]
    t, q = logits.shape[:2]
    loss = F.cross_entropy(widen(logits).flatten(0, 1), query_y.flatten(), reduction="none")
    return loss.view(t, q).mean(1), logits


def regression_losses(out: Tensor, query_y: Tensor, y_dim: int, predict_variance: bool) -> tuple[Tensor, Tensor]:
    """Per-task mean Gaussian NLL (``predict_variance``) or MSE ``[T]`` of the queries, in at least float32, and
    the predicted means ``[T, Q, y_dim]``."""
    mean, var = gaussian_outputs(out, y_dim, predict_variance)
    target = query_y.to(wide_dtype(mean.dtype))
    if var is not None:
        loss = F.gaussian_nll_loss(widen(mean), target, widen(var), reduction="none")
    else:
        loss = F.mse_loss(widen(mean), target, reduction="none")
    return loss.flatten(1).mean(1), mean


def blackbox_losses(out: Tensor, query_y: Tensor, task_type: str, ways: int, y_dim: int,
                    predict_variance: bool) -> tuple[Tensor, Tensor]:
    """Per-task query losses ``[T]`` and point predictions of ``BlackBoxNetwork`` outputs ``out [T, Q, out]``:
    cross-entropy and the logits ``[T, Q, ways]`` for classification, Gaussian NLL (``predict_variance``) or MSE
    and the means ``[T, Q, y_dim]`` for regression.

    Examples:
        >>> logits = torch.tensor([[[2.0, 0.0, float("-inf")]]])  # one task, one query, a 2-way task of 3 ways
        >>> losses, predictions = blackbox_losses(logits, torch.tensor([[0]]), "classification", 3, 1, False)
        >>> losses
        tensor([0.1269])
    """
    if task_type == "classification":
        return classification_losses(out, query_y, ways)
    return regression_losses(out, query_y, y_dim, predict_variance)
