"""Standard backbones for few-shot learning."""

from lightning_meta.models.backbones import MLP, Conv4
from lightning_meta.models.norm import BatchStatNorm, PerStepBatchNorm

__all__ = ["MLP", "BatchStatNorm", "Conv4", "PerStepBatchNorm"]
