"""Episodic data: task sources, the TaskBatch, samplers and the EpisodicDataModule."""

from lightning_meta.data.classification import ClassificationTasks
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.learn2learn import Learn2LearnTasks
from lightning_meta.data.omniglot import OmniglotTasks
from lightning_meta.data.sinusoid import SinusoidTasks
from lightning_meta.data.sources import TaskSource

__all__ = [
    "ClassificationTasks",
    "EpisodicDataModule",
    "Learn2LearnTasks",
    "OmniglotTasks",
    "SinusoidTasks",
    "TaskBatch",
    "TaskSource",
]
