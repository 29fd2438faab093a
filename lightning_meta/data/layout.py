"""Memory layout of image meta-batches: channels-last strides per task."""

from __future__ import annotations

from torch import Tensor

from lightning_meta.data.episodes import TaskBatch


def channels_last_tasks(x: Tensor) -> Tensor:
    """A copy of images ``[T, M, C, H, W]`` whose every task slice ``[M, C, H, W]`` has NHWC strides.

    A fresh copy, not ``.contiguous()``: with one channel (Omniglot) a contiguous NCHW tensor already counts
    as channels-last and keeps ``stride(C) = H * W``; convolutions with adapted weights (NCHW strides) then
    produce NCHW outputs, on which BatchNorm and max-pool run several times slower on CPU.

    Examples:
        >>> import torch
        >>> channels_last_tasks(torch.zeros(2, 3, 1, 4, 4))[0].stride()
        (16, 1, 4, 1)
    """
    t, m, c, h, w = x.shape
    return x.new_empty((t, m, h, w, c)).copy_(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)


def channels_last_batch(batch: TaskBatch) -> TaskBatch:
    """``batch`` with image inputs ``[T, M, C, H, W]`` copied by ``channels_last_tasks`` (others unchanged)."""
    if batch.support_x.dim() != 5:
        return batch
    return batch._replace(support_x=channels_last_tasks(batch.support_x), query_x=channels_last_tasks(batch.query_x))
