"""lightning-meta: meta-learning (MAML, iMAML, Reptile, Prototypical Networks, black-box adaptation) as PyTorch
Lightning plugins."""

from lightning_meta.algorithms import (
    IMAML,
    MAML,
    BlackBoxAdaptation,
    InnerLoopLearner,
    MetaLearner,
    ProtoNet,
    Reptile,
)
from lightning_meta.data import (
    ClassificationTasks,
    EpisodicDataModule,
    Learn2LearnTasks,
    OmniglotTasks,
    SinusoidTasks,
    TaskBatch,
    TaskSource,
)

__version__ = "0.1.0"

__all__ = [
    "IMAML",
    "BlackBoxAdaptation",
    "ClassificationTasks",
    "EpisodicDataModule",
    "InnerLoopLearner",
    "Learn2LearnTasks",
    "MAML",
    "MetaLearner",
    "OmniglotTasks",
    "ProtoNet",
    "Reptile",
    "SinusoidTasks",
    "TaskBatch",
    "TaskSource",
    "__version__",
]
