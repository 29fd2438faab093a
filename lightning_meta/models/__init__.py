"""Standard backbones for few-shot learning, the black-box adaptation network, and backbones as plain data."""

from lightning_meta.models.adapted import AdaptedLearner, ParametrizedNetwork, PrototypeClassifier, SupportReader
from lightning_meta.models.backbones import MLP, Conv4
from lightning_meta.models.blackbox import BlackBoxNetwork
from lightning_meta.models.norm import BatchStatNorm, PerStepBatchNorm, TransductiveBatchNorm
from lightning_meta.models.resnet import DropBlock, ResNet12
from lightning_meta.models.snail import SNAIL
from lightning_meta.models.spec import build_module, module_spec, records_init_args

__all__ = ["MLP", "AdaptedLearner", "BatchStatNorm", "BlackBoxNetwork", "Conv4", "DropBlock", "ParametrizedNetwork",
           "PerStepBatchNorm", "PrototypeClassifier", "ResNet12", "SNAIL", "SupportReader", "TransductiveBatchNorm",
           "build_module", "module_spec", "records_init_args"]
