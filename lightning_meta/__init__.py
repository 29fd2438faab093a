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
    CIFARFSTasks,
    ClassificationTasks,
    EpisodicDataModule,
    FC100Tasks,
    ImageTasks,
    Learn2LearnTasks,
    MiniImageNetTasks,
    OmniglotTasks,
    SinusoidTasks,
    TaskBatch,
    TaskSource,
    TieredImageNetTasks,
)
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.models.adapted import AdaptedLearner

__version__ = "0.1.0"

__all__ = [
    "IMAML",
    "AdaptedLearner",
    "BlackBoxAdaptation",
    "CIFARFSTasks",
    "ClassificationTasks",
    "EpisodicDataModule",
    "FC100Tasks",
    "ImagePreprocessing",
    "ImageTasks",
    "InnerLoopLearner",
    "Learn2LearnTasks",
    "MAML",
    "MetaLearner",
    "MiniImageNetTasks",
    "OmniglotTasks",
    "ProtoNet",
    "Reptile",
    "SinusoidTasks",
    "TaskBatch",
    "TaskSource",
    "TieredImageNetTasks",
    "__version__",
]
