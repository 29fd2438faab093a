"""Batch normalization with batch statistics only, written with plain tensor ops."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BatchStatNorm(nn.Module):
    """Normalizes with the statistics of the current batch in every mode; no running statistics.

    Numerically the transductive ``BatchNorm`` of MAML, but built from elementary ops, whose double
    backward is also correct under ``torch.func.vmap`` (the fused batch-norm kernel's is not: second-order
    meta-gradients through ``vmap`` disagreed with the loop by up to 13% before this module replaced it).
    Parameters ``weight`` and ``bias`` keep the names of the ``BatchNorm`` they replace.

    Examples:
        >>> import torch
        >>> norm = BatchStatNorm(3)
        >>> y = norm(torch.randn(8, 3, 4, 4))
        >>> torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6)
        True
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm) -> BatchStatNorm:
        new = cls(bn.num_features, bn.eps, bn.affine)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is None:
            return y
        shape = [1, -1] + [1] * (x.dim() - 2)
        return y * self.weight.view(shape) + self.bias.view(shape)


def transductive_batch_norm(model: nn.Module, elementary: bool = False) -> list[str]:
    """Make every BatchNorm use batch statistics in every forward and keep no running statistics; returns
    their names. With ``elementary=True`` each one is replaced by
    [BatchStatNorm][lightning_meta.models.BatchStatNorm] (same numbers, built from plain ops so that
    second-order gradients are right under ``vmap``).

    Examples:
        >>> from lightning_meta.models import Conv4
        >>> transductive_batch_norm(Conv4())
        ['features.0.1', 'features.1.1', 'features.2.1', 'features.3.1']
    """
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
            if elementary:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, BatchStatNorm.from_batch_norm(module))
            names.append(name)
    return names
