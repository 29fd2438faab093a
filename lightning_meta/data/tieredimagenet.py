"""tieredImageNet from a local copy (class folders, or Ren et al.'s pickles, or the ``.npz`` variant)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_meta.data.image_tasks import IMAGENET_MEAN, IMAGENET_STD, ImageTasks
from lightning_meta.data.readers import (
    Item,
    array_rows,
    folder_items,
    get_key,
    load_pickle,
    npz_array,
    png_item,
    shipped_lines,
    text,
)
from lightning_meta.data.sources import SPLITS

EXPECTED_LAYOUT = (
    "(a) one folder per class, ROOT/train/<wnid>/*.jpg, ROOT/val/<wnid>/..., ROOT/test/<wnid>/..., or all 608 "
    "ROOT/<wnid>/ folders in one place; (b) Ren et al.'s caches ROOT/{train,val,test}_images_png.pkl (a list of "
    "PNG-encoded images) with ROOT/{train,val,test}_labels.pkl (a dict with 'label_specific', 'label_general', "
    "'label_specific_str', 'label_general_str'); (c) ROOT/{train,val,test}_images.npz (key 'images', "
    "[N, 84, 84, 3] uint8) with the same ROOT/{split}_labels.pkl"
)


def tieredimagenet_split(split: str) -> dict[str, str]:
    """``{class wnid: super-category wnid}`` of a split of Ren et al.'s tieredImageNet split."""
    return dict(line.split(",")[:2] for line in shipped_lines("tieredimagenet", f"{split}.csv"))


class TieredImageNetTasks(ImageTasks):
    """tieredImageNet N-way K-shot tasks from a local root, in the Ren et al. (2018) split.

    608 ImageNet classes in 34 super-categories; meta-train / val / test take 20 / 6 / 8 super-categories
    (351 / 97 / 160 classes), so test classes are semantically far from the training ones. 84x84 RGB.
    Accepted layouts under ``root`` (never downloaded): class folders (``train/<wnid>/``, ``val/``, ``test/``, or
    all ``<wnid>/`` in one place, split by the lists shipped with the package), Ren et al.'s
    ``{split}_images_png.pkl`` + ``{split}_labels.pkl``, or ``{split}_images.npz`` + ``{split}_labels.pkl``
    (the uncompressed ``.npz`` is memory-mapped while the cache is built, not read into memory).

    Decoding, the memory-mapped cache, ``normalize`` (miniImageNet's constants, as MetaOptNet uses them for
    tieredImageNet too) and ``augment`` work as in [MiniImageNetTasks][lightning_meta.MiniImageNetTasks].
    ``super_category(label)`` gives a class's super-category WNID.

    Examples:
        >>> import torch
        >>> tasks = TieredImageNetTasks(tieredimagenet_root, ways=5, shots=1, queries=2)  # local (tests: synthetic)
        >>> tasks.setup()
        >>> tasks.num_classes("train"), tasks.num_classes("val"), tasks.num_classes("test")
        (351, 97, 160)
    """

    dataset_name = "tieredimagenet"
    split_dir = "tieredimagenet"
    expected_layout = EXPECTED_LAYOUT
    default_image_size = 84
    crop_padding = 8
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def _split_keys(self) -> dict[str, list[str]]:
        return {split: list(tieredimagenet_split(split)) for split in SPLITS}

    def super_category(self, label: int) -> str:
        """The super-category WNID of class ``label`` (after ``setup()``)."""
        wnid = self.class_names[label]
        return next(s[wnid] for s in map(tieredimagenet_split, SPLITS) if wnid in s)

    def _layout(self, root: Path) -> tuple[str, list[Path]]:
        labels = [root / f"{s}_labels.pkl" for s in SPLITS]
        pngs = [root / f"{s}_images_png.pkl" for s in SPLITS]
        npzs = [root / f"{s}_images.npz" for s in SPLITS]
        for name, images in (("png", pngs), ("npz", npzs)):
            if any(p.exists() for p in images):
                missing = [str(p) for p in images + labels if not p.is_file()]
                if missing:
                    raise self._not_found(root, f" ({', '.join(missing)} missing for the {name} cache layout)")
                return name, images + labels
        if any(p.exists() for p in labels):
            raise self._not_found(root, " (labels pickles without {split}_images_png.pkl or {split}_images.npz)")
        found = folder_items(root, EXPECTED_LAYOUT, type(self).__name__)
        if found is None:
            raise self._not_found(root)
        self._folder = found
        return "folders", found[0]

    def _items(self, root: Path, layout: str) -> list[Item]:
        if layout == "folders":
            return self._folder[1]
        items: list[Item] = []
        for split in SPLITS:
            labels_path = root / f"{split}_labels.pkl"
            try:
                info = load_pickle(labels_path)
                specific = np.asarray(get_key(info, "label_specific")).reshape(-1)
                names = [text(n) for n in get_key(info, "label_specific_str")]
            except (KeyError, TypeError) as error:
                raise ValueError(f"{labels_path} is not a tieredImageNet labels pickle ({error}). Expected layout: "
                                 f"{EXPECTED_LAYOUT}") from error
            if layout == "png":
                images = load_pickle(root / f"{split}_images_png.pkl")
                loads = [png_item(v) for v in images]
            else:
                array = npz_array(root / f"{split}_images.npz", "images")
                loads = array_rows(array, range(len(array)))
            if len(loads) != len(specific):
                raise ValueError(f"tieredImageNet {split}: {len(loads)} images but {len(specific)} labels in "
                                 f"{labels_path}")
            items += [(names[int(c)], split, load) for c, load in zip(specific, loads)]
        return items
