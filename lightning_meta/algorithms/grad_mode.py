"""Autograd inside Lightning's evaluation loops, which run under ``torch.inference_mode``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lightning_meta.data.episodes import TaskBatch


@contextmanager
def grad_enabled() -> Iterator[None]:
    """Autograd on inside validation/test/predict (the inner loop needs gradients there too)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def usable(data):
    """Tensors created under ``inference_mode`` cloned into normal tensors (autograd may save them); strides kept.

    Examples:
        >>> with torch.inference_mode():
        ...     x = torch.ones(2)
        >>> usable(x).is_inference()
        False
    """
    if isinstance(data, TaskBatch):
        return TaskBatch(*(usable(t) for t in data))
    return data.clone() if data.is_inference() else data
