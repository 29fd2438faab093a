"""Meta-learning algorithms as LightningModules."""

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.blackbox import BlackBoxAdaptation
from lightning_meta.algorithms.maml import MAML

__all__ = ["MAML", "BlackBoxAdaptation", "MetaLearner"]
