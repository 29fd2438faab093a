"""Episodic data: task sources, the TaskBatch, samplers and the EpisodicDataModule."""

from lightning_meta.data.cifar100 import CIFARFSTasks, FC100Tasks
from lightning_meta.data.classification import ClassificationTasks
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.image_tasks import ImageTasks
from lightning_meta.data.learn2learn import Learn2LearnTasks
from lightning_meta.data.metadataset import (
    EpisodeDescription,
    EpisodeSampling,
    check_groups,
    compute_query_count,
    omniglot_groups,
    sample_episode,
    sample_support_counts,
    sample_support_size,
    sample_ways,
)
from lightning_meta.data.miniimagenet import MiniImageNetTasks
from lightning_meta.data.omniglot import OmniglotTasks
from lightning_meta.data.sinusoid import SinusoidTasks
from lightning_meta.data.sources import TaskSource
from lightning_meta.data.tieredimagenet import TieredImageNetTasks

__all__ = [
    "CIFARFSTasks",
    "ClassificationTasks",
    "EpisodeDescription",
    "EpisodeSampling",
    "EpisodicDataModule",
    "FC100Tasks",
    "ImageTasks",
    "Learn2LearnTasks",
    "MiniImageNetTasks",
    "OmniglotTasks",
    "SinusoidTasks",
    "TaskBatch",
    "TaskSource",
    "TieredImageNetTasks",
    "check_groups",
    "compute_query_count",
    "omniglot_groups",
    "sample_episode",
    "sample_support_counts",
    "sample_support_size",
    "sample_ways",
]
