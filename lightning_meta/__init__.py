"""lightning-meta: meta-learning (MAML, black-box adaptation) as PyTorch Lightning plugins."""

from lightning_meta.algorithms import MAML, BlackBoxAdaptation, MetaLearner
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
    "BlackBoxAdaptation",
    "ClassificationTasks",
    "EpisodicDataModule",
    "Learn2LearnTasks",
    "MAML",
    "MetaLearner",
    "OmniglotTasks",
    "SinusoidTasks",
    "TaskBatch",
    "TaskSource",
    "__version__",
]
