"""Meta-learning algorithms as LightningModules."""

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.blackbox import BlackBoxAdaptation
from lightning_meta.algorithms.imaml import IMAML
from lightning_meta.algorithms.inner_loop import InnerLoopLearner
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.protonet import ProtoNet
from lightning_meta.algorithms.reptile import Reptile

__all__ = ["IMAML", "MAML", "BlackBoxAdaptation", "InnerLoopLearner", "MetaLearner", "ProtoNet", "Reptile"]
