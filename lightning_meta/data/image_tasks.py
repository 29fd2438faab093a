"""Shared machinery of the RGB few-shot datasets: the cache, normalization, augmentation (file formats: readers.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from lightning_meta.data.augment import Augmentation, augment_tasks
from lightning_meta.data.classification import ClassificationTasks
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.image_cache import RawImage, cache_path, cached_images, file_stamps, open_images
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.data.readers import Item, shipped_lines
from lightning_meta.data.sources import SPLITS

#: per-channel mean and std of miniImageNet's training images (MetaOptNet, FEAT; used for tieredImageNet too)
IMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
IMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)


class ImageTasks(ClassificationTasks):
    """Base of the RGB few-shot datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100); see those classes.

    A subclass finds its layout (``_layout``), lists its images (``_items``) and names the classes of each split
    of its shipped split (``_split_keys``); this class caches the decoded images in a memory-mapped ``.npy``
    (``lightning_meta.data.image_cache``), assigns the classes to the splits, and turns fetched images into
    normalized (and, for meta-training with ``augment=True``, augmented) float tensors ``[T, M, 3, s, s]``.

    Pickling (how DataLoader workers receive the task source) drops the image array and keeps the cache's path;
    a worker maps the file again at its first sample, so workers share the pages instead of holding copies.

    Examples:
        >>> from lightning_meta import CIFARFSTasks, MiniImageNetTasks
        >>> MiniImageNetTasks.default_image_size, CIFARFSTasks.default_image_size, issubclass(CIFARFSTasks, ImageTasks)
        (84, 32, True)
    """

    dataset_name: ClassVar[str] = "images"
    split_dir: ClassVar[str] = ""
    expected_layout: ClassVar[str] = ""
    default_image_size: ClassVar[int] = 84
    crop_padding: ClassVar[int] = 8
    mean: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    std: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        root: str,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        image_size: int | None = None,
        normalize: bool = True,
        augment: bool = False,
        cache_dir: str | None = None,
        train_ways: int | None = None,
    ) -> None:
        super().__init__(None, ways=ways, shots=shots, queries=queries, train_ways=train_ways)
        image_size = self.default_image_size if image_size is None else image_size
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size!r}")
        self.root, self.image_size, self.cache_dir = str(root), image_size, cache_dir
        self.normalize, self.augment = normalize, augment
        self.augmentation = Augmentation(padding=self.crop_padding * image_size // self.default_image_size)
        self.cache_file: Path | None = None

    # ------------------------------------------------------------- subclass hooks
    def _layout(self, root: Path) -> tuple[str, list[Path]]:
        """``(layout name, the source files whose size and mtime key the cache)``; raises naming the path and the
        expected layout where none is found."""
        raise NotImplementedError

    def _items(self, root: Path, layout: str) -> list[Item]:
        """Every image of the layout, with its class name and the split the layout puts it in (if any)."""
        raise NotImplementedError

    def _split_keys(self) -> dict[str, list[str]]:
        """The shipped split: ``{split: [keys]}``; a class belongs to the split of ``_key(class name)``."""
        return {split: shipped_lines(self.split_dir, f"{split}.txt") for split in SPLITS}

    def _key(self, class_name: str) -> str:
        return class_name

    def _not_found(self, root: Path, detail: str = "") -> FileNotFoundError:
        return FileNotFoundError(
            f"{type(self).__name__}: no accepted layout under root={str(root)!r}{detail}. Expected layout: "
            f"{self.expected_layout}. lightning-meta never downloads data.")

    # ---------------------------------------------------------------------- load
    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        root = Path(self.root)
        if not root.is_dir():
            raise self._not_found(root, " (not a directory)")
        layout, files = self._layout(root)
        keys = self._split_keys()
        split_of = {key: split for split, names in keys.items() for key in names}
        split_stamp = hashlib.sha1(repr(sorted(keys.items())).encode()).hexdigest()[:8]
        self.cache_file = cache_path(self.dataset_name, self.image_size, file_stamps(files), self.cache_dir,
                                     f"{layout}|{split_stamp}")
        images, meta = cached_images(self.cache_file, lambda: self._wanted(root, layout, split_of), self.image_size)
        self.__dict__.pop("_folder", None)  # the layout's file list: not needed once cached (nor in workers)
        self.class_names: list[str] = meta["classes"]
        found = {self._key(c) for c in self.class_names}
        missing = [k for names in keys.values() for k in names if k not in found]
        if missing:
            raise ValueError(
                f"{type(self).__name__} under {self.root!r} lacks {len(missing)} classes of its standard split "
                f"(e.g. {missing[:3]}); found {len(found)}. Expected layout: {self.expected_layout}")
        self.splits = {s: [i for i, c in enumerate(self.class_names) if split_of[self._key(c)] == s] for s in SPLITS}
        labels = torch.arange(len(self.class_names)).repeat_interleave(torch.tensor(meta["counts"]))
        return images, labels

    def _wanted(self, root: Path, layout: str, split_of: dict[str, str]) -> list[tuple[str, Callable[[], RawImage]]]:
        """The layout's images of the split's classes, grouped by class (sorted); a class the layout puts in
        another split than the shipped one is an error (another split of the same classes)."""
        by_class: dict[str, list[Callable[[], RawImage]]] = {}
        for name, declared, load in self._items(root, layout):
            split = split_of.get(self._key(name))
            if split is None:
                continue
            if declared is not None and declared != split:
                raise ValueError(
                    f"{type(self).__name__}: class {name!r} is in the {declared!r} part of {str(root)!r}, but the "
                    f"standard split shipped with lightning-meta puts it in {split!r} (is this another split?)")
            by_class.setdefault(name, []).append(load)
        if not by_class:
            raise self._not_found(root, " (no image of the standard split's classes)")
        return [(name, load) for name in sorted(by_class) for load in by_class[name]]

    # ------------------------------------------------------------------ sampling
    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the image array (workers reopen the memory-mapped cache by its path)."""
        state = self.__dict__.copy()
        if isinstance(state.get("_inputs"), torch.Tensor):
            state["_inputs"] = None
        return state

    def _fetch(self, index: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_inputs", None) is None:
            self._inputs = open_images(self.cache_file)
        x = self._inputs[index.reshape(-1)]
        return x.reshape(*index.shape, *x.shape[1:]).float().div_(255.0)

    def sample(self, split: str, generators: list[torch.Generator]) -> TaskBatch:
        batch = super().sample(split, generators)
        support, query = batch.support_x, batch.query_x
        if self.augment and split == "train":  # drawn after the task's own numbers, from the same generator
            support = augment_tasks(self.augmentation, support, generators)
            query = augment_tasks(self.augmentation, query, generators)
        if self.normalize:
            support, query = self._normalize(support), self._normalize(query)
        return TaskBatch(support, batch.support_y, query, batch.query_y)

    def preprocessing(self) -> ImagePreprocessing:
        """RGB, resized to ``image_size`` (Lanczos), scaled to ``[0, 1]``, normalized by the dataset's mean and std
        (with ``normalize``); augmentation is training's alone."""
        mean, std = (tuple(self.mean), tuple(self.std)) if self.normalize else (None, None)
        return ImagePreprocessing(image_size=self.image_size, channels=3, mean=mean, std=std)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if hasattr(self, "class_names") else str(label)
