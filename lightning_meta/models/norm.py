"""Batch normalization with batch statistics only, written with plain tensor ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class TransductiveBatchNorm(nn.Module):
    """Batch normalization with the statistics of the current batch in every mode, and no running statistics: the
    layer ``batch_norm="transductive"`` puts in place of each ``BatchNorm`` (MAML's setting).

    The same kernel and numbers as a ``BatchNorm`` built with ``track_running_stats=False``, and the same parameter
    names (``weight``, ``bias``; no buffers in the ``state_dict``), but deliberately not a subclass of torch's
    ``_BatchNorm``: tools that look for ``_BatchNorm`` layers do so to handle running statistics, which this layer
    neither has nor uses. Lightning's ``StochasticWeightAveraging`` then averages the weights and skips its extra
    epoch that recomputes running statistics (nothing to recompute), and ``sync_batchnorm=True`` leaves each task's
    statistics its own instead of pooling them across DDP ranks.

    Examples:
        >>> import torch
        >>> norm = TransductiveBatchNorm(3).eval()
        >>> y = norm(torch.randn(8, 3, 4, 4) + 2.0)  # batch statistics in eval mode too
        >>> torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6), sorted(norm.state_dict())
        (True, ['bias', 'weight'])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    @classmethod
    def from_batch_norm(cls, bn: nn.Module) -> TransductiveBatchNorm:
        """A layer sharing ``bn``'s ``weight`` and ``bias`` parameters (the same tensors, not copies)."""
        new = cls(bn.num_features, bn.eps, bn.weight is not None)
        if bn.weight is not None:
            new.weight, new.bias = bn.weight, bn.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


def transductive_batch_norm(model: nn.Module, elementary: bool = False) -> list[str]:
    """Replace every BatchNorm of ``model`` by a [TransductiveBatchNorm][lightning_meta.models.TransductiveBatchNorm]
    (batch statistics in every forward, no running statistics; the same parameters); returns their names. With
    ``elementary=True`` each one (a ``BatchNorm`` or an already transductive layer) becomes a
    [BatchStatNorm][lightning_meta.models.BatchStatNorm] instead (same numbers, built from plain ops so that
    second-order gradients are right under ``vmap``).

    Examples:
        >>> from lightning_meta.models import Conv4
        >>> transductive_batch_norm(Conv4())
        ['features.0.1', 'features.1.1', 'features.2.1', 'features.3.1']
    """
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, TransductiveBatchNorm)):
            layer = BatchStatNorm if elementary else TransductiveBatchNorm
            if not name:  # the model is itself a BatchNorm: it cannot be replaced in place of itself
                _drop_running_statistics(module)
            elif type(module) is not layer:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, layer.from_batch_norm(module))
            names.append(name)
    return names


def _drop_running_statistics(module: nn.Module) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.track_running_stats = False
        module.running_mean = module.running_var = module.num_batches_tracked = None


class PerStepBatchNorm(nn.Module):
    """MAML++'s per-step BatchNorm (Antoniou et al., 2019): one set of weights and biases (BNWB) and of running
    statistics (BNRS) per inner-loop iterate. The forward at ``phi_k`` uses slot ``min(step, slots - 1)``, where
    ``step`` is set by the learner before each forward (``set_norm_step``). In training mode it normalizes with
    the batch statistics and updates that slot's running statistics. In eval mode it normalizes with the batch
    statistics too (``transductive=True``, as MAML and MAML++'s reference implementation do: on 1-shot tasks
    running statistics trained for minutes score at chance), or with the slot's running statistics
    (``transductive=False``).

    Examples:
        >>> import torch
        >>> norm = PerStepBatchNorm(3, slots=2)
        >>> norm.weight.shape, norm.running_mean.shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
        >>> norm.step = 1
        >>> _ = norm(torch.randn(8, 3, 4, 4) + 5.0)  # updates slot 1 only
        >>> norm.running_mean[0].abs().max().item(), bool((norm.running_mean[1] > 0.4).all())
        (0.0, True)
    """

    def __init__(self, num_features: int, slots: int, eps: float = 1e-5, momentum: float = 0.1,
                 transductive: bool = True) -> None:
        super().__init__()
        self.num_features, self.slots, self.eps, self.momentum = num_features, slots, eps, momentum
        self.transductive = transductive
        self.weight = nn.Parameter(torch.ones(slots, num_features))
        self.bias = nn.Parameter(torch.zeros(slots, num_features))
        self.register_buffer("running_mean", torch.zeros(slots, num_features))
        self.register_buffer("running_var", torch.ones(slots, num_features))
        self.step = 0

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm, slots: int) -> PerStepBatchNorm:
        new = cls(bn.num_features, slots, bn.eps, bn.momentum if bn.momentum is not None else 0.1)
        if bn.affine:
            with torch.no_grad():
                new.weight.copy_(bn.weight.detach().expand(slots, -1))
                new.bias.copy_(bn.bias.detach().expand(slots, -1))
        return new

    def forward(self, x: Tensor) -> Tensor:
        k = min(self.step, self.slots - 1)
        weight, bias = self.weight[k], self.bias[k]
        if self.training:  # batch statistics, and this slot's running statistics move
            return F.batch_norm(x, self.running_mean[k], self.running_var[k], weight, bias, True, self.momentum,
                                self.eps)
        if self.transductive:  # batch statistics, nothing moves
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        return F.batch_norm(x, self.running_mean[k], self.running_var[k], weight, bias, False, 0.0, self.eps)


def per_step_batch_norm(model: nn.Module, slots: int) -> list[str]:
    """Replace every BatchNorm of ``model`` by a [PerStepBatchNorm][lightning_meta.models.PerStepBatchNorm] with
    ``slots`` slots (its weights copied to every slot); returns their names."""
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, PerStepBatchNorm.from_batch_norm(module, slots))
            names.append(name)
    return names


def set_norm_step(model: nn.Module, step: int) -> None:
    """Point every [PerStepBatchNorm][lightning_meta.models.PerStepBatchNorm] of ``model`` at inner iterate ``step``."""
    for module in model.modules():
        if isinstance(module, PerStepBatchNorm):
            module.step = step
