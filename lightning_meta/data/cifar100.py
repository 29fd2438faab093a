"""CIFAR-FS and FC100: few-shot splits of CIFAR-100, read from the standard python archive or its folder."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from lightning_meta.data.image_tasks import ImageTasks
from lightning_meta.data.readers import Item, array_rows, get_key, load_pickle, text

ARCHIVE, FOLDER, MEMBERS = "cifar-100-python.tar.gz", "cifar-100-python", ("train", "test", "meta")
EXPECTED_LAYOUT = (
    "ROOT/cifar-100-python.tar.gz (the CIFAR-100 python version, containing cifar-100-python/train, test and "
    "meta pickles), or that archive extracted: ROOT/cifar-100-python/{train,test,meta} (or ROOT/{train,test,meta})"
)


def _read_cifar(root: Path, layout: str) -> dict[str, Any]:
    """``{"train": ..., "test": ..., "meta": ...}``: the archive's three pickles."""
    if layout == "archive":
        try:
            with tarfile.open(root / ARCHIVE) as archive:
                return {m: load_pickle(archive.extractfile(f"{FOLDER}/{m}").read()) for m in MEMBERS}
        except (tarfile.TarError, KeyError, EOFError, OSError) as error:
            raise ValueError(f"{root / ARCHIVE} is not a complete CIFAR-100 python archive ({error}). Expected "
                             f"layout: {EXPECTED_LAYOUT}") from error
    folder = root / FOLDER if layout == "folder" else root
    return {m: load_pickle(folder / m) for m in MEMBERS}


class _CIFAR100Tasks(ImageTasks):
    """The 100 CIFAR-100 classes (train and test images together: 600 per class), named ``superclass/class``."""

    default_image_size = 32
    crop_padding = 4
    expected_layout = EXPECTED_LAYOUT
    mean = (129.37731888 / 255.0, 124.10583864 / 255.0, 112.47758569 / 255.0)
    std = (68.20947949 / 255.0, 65.43124043 / 255.0, 70.45866994 / 255.0)

    def _layout(self, root: Path) -> tuple[str, list[Path]]:
        if (root / ARCHIVE).is_file():
            return "archive", [root / ARCHIVE]
        for layout, folder in (("folder", root / FOLDER), ("extracted", root)):
            files = [folder / m for m in MEMBERS]
            if any(f.exists() for f in files):
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise self._not_found(root, f" ({', '.join(missing)} missing)")
                return layout, files
        raise self._not_found(root)

    def _items(self, root: Path, layout: str) -> list[Item]:
        data = _read_cifar(root, layout)
        fine_names = [text(n) for n in get_key(data["meta"], "fine_label_names")]
        coarse_names = [text(n) for n in get_key(data["meta"], "coarse_label_names")]
        items: list[Item] = []
        for part in ("train", "test"):
            pixels = np.asarray(get_key(data[part], "data"), dtype=np.uint8)
            images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes of 32x32
            fine, coarse = get_key(data[part], "fine_labels"), get_key(data[part], "coarse_labels")
            names = [f"{coarse_names[c]}/{fine_names[f]}" for f, c in zip(fine, coarse)]
            items += [(name, None, load) for name, load in zip(names, array_rows(images, range(len(images))))]
        return items


class CIFARFSTasks(_CIFAR100Tasks):
    """CIFAR-FS N-way K-shot tasks (Bertinetto et al. 2019): the CIFAR-100 classes split 64 / 16 / 20.

    Reads ``cifar-100-python.tar.gz`` (or its extracted ``cifar-100-python/`` folder) under ``root``; never
    downloads. 600 images per class (CIFAR-100's train and test images together), 32x32 RGB; classes are named
    ``superclass/class``. ``normalize`` uses MetaOptNet's CIFAR-FS constants (mean 129.38, 124.11, 112.48 and
    std 68.21, 65.43, 70.46 on the 0-255 scale); ``augment`` adds random crops (4 px padding), colour jitter and
    flips to meta-training tasks. The decoded images are cached as for
    [MiniImageNetTasks][lightning_meta.MiniImageNetTasks].

    Examples:
        >>> import torch
        >>> tasks = CIFARFSTasks(cifar100_root, ways=5, shots=1, queries=2)  # local (tests: synthetic)
        >>> tasks.setup()
        >>> tasks.num_classes("train"), tasks.num_classes("val"), tasks.num_classes("test")
        (64, 16, 20)
        >>> tasks.sample("val", [torch.Generator().manual_seed(0)]).query_x.shape
        torch.Size([1, 10, 3, 32, 32])
    """

    dataset_name = "cifar_fs"
    split_dir = "cifar_fs"

    def _key(self, class_name: str) -> str:
        return class_name.split("/")[-1]


class FC100Tasks(_CIFAR100Tasks):
    """FC100 N-way K-shot tasks (Oreshkin et al. 2018): CIFAR-100 split by its 20 super-classes, 12 / 4 / 4.

    A split holds every class of its super-classes (60 / 20 / 20 classes), so test classes share no
    super-class with training ones, a harder setting than CIFAR-FS. Data, layout, constants and augmentation as
    in [CIFARFSTasks][lightning_meta.CIFARFSTasks].

    Examples:
        >>> import torch
        >>> tasks = FC100Tasks(cifar100_root, ways=5, shots=1, queries=2)  # local (tests: synthetic)
        >>> tasks.setup()
        >>> tasks.num_classes("train"), tasks.num_classes("val"), tasks.num_classes("test")
        (60, 20, 20)
    """

    dataset_name = "fc100"
    split_dir = "fc100"

    def _key(self, class_name: str) -> str:
        return class_name.split("/")[0]
