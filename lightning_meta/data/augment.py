"""Training-time image augmentation for episodes, vectorized over a meta-batch and seeded per task.

The metric-learning recipe (Prototypical Networks' successors, MetaOptNet, FEAT): random crop with zero padding,
colour jitter (brightness, contrast, saturation 0.4) and horizontal flip, on images in ``[0, 1]`` before the
per-channel normalization. Every random number of a task comes from that task's generator, so an augmented task
is as reproducible as the task itself (any worker, any rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Augmentation:
    """What to draw per image: a crop offset in ``[0, 2 * padding]``, a flip with probability ``flip``, and
    brightness / contrast / saturation factors uniform in ``[1 - s, 1 + s]`` (0 turns one off)."""

    padding: int = 8
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4


def draw_parameters(aug: Augmentation, images: int, generator: torch.Generator) -> torch.Tensor:
    """``[images, 6]`` float: crop row offset, crop column offset, flip (0/1), brightness, contrast, saturation."""
    offsets = torch.randint(0, 2 * aug.padding + 1, (images, 2), generator=generator).float()
    flips = (torch.rand(images, 1, generator=generator) < aug.flip).float()
    strength = torch.tensor([aug.brightness, aug.contrast, aug.saturation])
    factors = 1.0 + (torch.rand(images, 3, generator=generator) * 2.0 - 1.0) * strength
    return torch.cat([offsets, flips, factors], dim=1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def apply(aug: Augmentation, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Augment ``x`` (``[B, 3, H, W]`` in ``[0, 1]``) with ``params`` (``[B, 6]`` from :func:`draw_parameters`).

    Crop: pad by ``padding`` zeros and cut an ``H x W`` window at the drawn offsets (one gather for the batch).
    Jitter: brightness, then contrast (blend with the image's mean gray), then saturation (blend with its gray
    image), each clamped to ``[0, 1]`` as torchvision does; the order is fixed where torchvision shuffles it.
    """
    b, _, h, w = x.shape
    p = aug.padding
    if p > 0:
        padded = F.pad(x, (p, p, p, p))
        rows = params[:, 0].long()[:, None] + torch.arange(h)  # [B, H]
        cols = params[:, 1].long()[:, None] + torch.arange(w)  # [B, W]
        batch = torch.arange(b)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = params[:, 2].bool().view(b, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    brightness, contrast, saturation = (params[:, i].view(b, 1, 1, 1).to(x.dtype) for i in (3, 4, 5))
    if aug.brightness:
        x = (x * brightness).clamp_(0.0, 1.0)
    if aug.contrast:
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (contrast * x + (1.0 - contrast) * mean).clamp_(0.0, 1.0)
    if aug.saturation:
        gray = _grayscale(x)
        x = (saturation * x + (1.0 - saturation) * gray).clamp_(0.0, 1.0)
    return x.contiguous()


def augment_tasks(aug: Augmentation, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Augment ``x`` (``[T, M, 3, H, W]``): task ``t``'s parameters are drawn from ``generators[t]``, then the
    whole meta-batch is transformed at once."""
    t, m = x.shape[:2]
    params = torch.cat([draw_parameters(aug, m, g) for g in generators])
    return apply(aug, x.reshape(t * m, *x.shape[2:]), params).reshape(x.shape)
