"""miniImageNet from a local copy (Ravi & Larochelle's CSVs, class folders, or the pickled caches)."""

from __future__ import annotations

from pathlib import Path

from lightning_meta.data.image_cache import image_files
from lightning_meta.data.image_tasks import IMAGENET_MEAN, IMAGENET_STD, ImageTasks
from lightning_meta.data.readers import (
    WNID,
    Item,
    array_rows,
    folder_items,
    get_key,
    load_pickle,
    read_csv_rows,
    shipped_lines,
    text,
)
from lightning_meta.data.sources import SPLITS

PICKLES = tuple(f"mini-imagenet-cache-{s}.pkl" for s in SPLITS)
EXPECTED_LAYOUT = (
    "(a) ROOT/images/<file>.jpg with ROOT/train.csv, ROOT/val.csv and ROOT/test.csv (rows 'filename,label', "
    "Ravi & Larochelle's CSVs; ROOT/images/<wnid>/<file>.jpg also works); (b) one folder per class, "
    "ROOT/train/<wnid>/*.jpg, ROOT/val/<wnid>/..., ROOT/test/<wnid>/..., or all 100 ROOT/<wnid>/ folders in one "
    "place; (c) ROOT/mini-imagenet-cache-train.pkl, -val.pkl and -test.pkl (dicts with 'image_data' "
    "[N, 84, 84, 3] uint8 and 'class_dict' {wnid: [indices]})"
)


def miniimagenet_split(split: str) -> list[str]:
    """The WNIDs of a split (``"train"``, ``"val"``, ``"test"``) of Ravi & Larochelle's miniImageNet split."""
    return shipped_lines("miniimagenet", f"{split}.txt")


class MiniImageNetTasks(ImageTasks):
    """miniImageNet N-way K-shot tasks from a local root, in the Ravi & Larochelle (2017) split (64 / 16 / 20).

    100 ImageNet classes of 600 images, 84x84 RGB. Accepted layouts under ``root`` (never downloaded):

    * (a) ``images/`` with ``train.csv``, ``val.csv``, ``test.csv`` (rows ``filename,label``), as the
      authors distribute it; images of any size are resized to ``image_size`` (Lanczos);
    * (b) one folder per class: ``train/<wnid>/``, ``val/<wnid>/``, ``test/<wnid>/``, or all 100 ``<wnid>/``
      folders in one place (split by the WNID lists shipped with the package);
    * (c) the pickled caches ``mini-imagenet-cache-{train,val,test}.pkl``.

    Images are decoded once into a memory-mapped cache (``cache_dir``, ``$LIGHTNING_META_CACHE`` or
    ``~/.cache/lightning_meta``) that DataLoader workers share. ``normalize`` subtracts the per-channel mean and
    divides by the std below (the constants of MetaOptNet and FEAT, computed on miniImageNet's training images);
    ``augment`` adds random crops (8 px padding), colour jitter (0.4) and flips to meta-training tasks only,
    drawn from each task's generator. A layout whose train/val/test assignment differs from the shipped split is
    an error.

    Examples:
        >>> import torch
        >>> tasks = MiniImageNetTasks(miniimagenet_root, ways=5, shots=1, queries=2)  # local (tests: synthetic)
        >>> tasks.setup()
        >>> tasks.num_classes("train"), tasks.num_classes("val"), tasks.num_classes("test")
        (64, 16, 20)
        >>> tasks.sample("train", [torch.Generator().manual_seed(0)]).support_x.shape
        torch.Size([1, 5, 3, 84, 84])
    """

    dataset_name = "miniimagenet"
    split_dir = "miniimagenet"
    expected_layout = EXPECTED_LAYOUT
    default_image_size = 84
    crop_padding = 8
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def _layout(self, root: Path) -> tuple[str, list[Path]]:
        pickles = [root / name for name in PICKLES]
        if any(p.exists() for p in pickles):
            missing = [str(p) for p in pickles if not p.is_file()]
            if missing:
                raise self._not_found(root, f" ({', '.join(missing)} missing beside the other pickled caches)")
            return "pickle", pickles
        csvs = [root / f"{s}.csv" for s in SPLITS]
        if (root / "images").is_dir() or any(c.exists() for c in csvs):
            missing = [str(p) for p in [root / "images", *csvs] if not p.exists()]
            if missing:
                raise self._not_found(root, f" ({', '.join(missing)} missing for the CSV layout)")
            return "csv", csvs + [path for _, _, path in self._csv_rows(root)]
        found = folder_items(root, EXPECTED_LAYOUT, type(self).__name__)
        if found is None:
            raise self._not_found(root)
        self._folder = found
        return "folders", found[0]

    def _csv_rows(self, root: Path) -> list[tuple[str, str, Path]]:
        """``(wnid, split, image path)`` of every CSV row; a listed image that is missing is named."""
        images = root / "images"
        nested = any(p.is_dir() and WNID.match(p.name) for p in images.iterdir())
        by_name = {} if not nested else {p.name: p for d in sorted(images.iterdir()) if d.is_dir()
                                          for p in image_files(d)}
        rows = []
        for split in SPLITS:
            for filename, label in read_csv_rows(root / f"{split}.csv"):
                path = by_name.get(filename, images / label / filename) if nested else images / filename
                if not path.is_file():
                    raise self._not_found(root, f" ({path} is listed in {split}.csv but missing)")
                rows.append((label, split, path))
        return rows

    def _items(self, root: Path, layout: str) -> list[Item]:
        if layout == "folders":
            return self._folder[1]
        if layout == "csv":
            return [(label, split, path.read_bytes) for label, split, path in self._csv_rows(root)]
        items: list[Item] = []
        for split, name in zip(SPLITS, PICKLES):
            data = load_pickle(root / name)
            try:
                array, class_dict = get_key(data, "image_data"), get_key(data, "class_dict")
            except (KeyError, TypeError) as error:
                raise ValueError(f"{root / name} is not a miniImageNet cache ({error}). Expected layout: "
                                 f"{EXPECTED_LAYOUT}") from error
            for wnid, rows in class_dict.items():
                items += [(text(wnid), split, load) for load in array_rows(array, list(rows))]
        return items
