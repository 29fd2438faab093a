"""Small synthetic stand-ins for miniImageNet, tieredImageNet and CIFAR-100 in their accepted layouts.

Random images under the real class names and file layouts, fewer per class: for tests, benchmarks, docs examples
and trying a config without the data. Nothing here resembles the real images.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from lightning_meta.data.readers import shipped_lines
from lightning_meta.data.sources import SPLITS

#: CIFAR-100's super-classes and their classes (the archive's ``meta`` lists both alphabetically)
CIFAR100_CLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


def random_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, size, size, 3]`` uint8 noise in 16 levels (compresses a little as PNG)."""
    return (rng.integers(0, 16, (n, size, size, 3), dtype=np.uint8) * 17).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _write_folders(root: Path, classes: dict[str, list[str]], per_class: int, size: int, seed: int,
                   flat: bool = False) -> None:
    rng = np.random.default_rng(seed)
    for split, names in classes.items():
        for name in names:
            folder = root / name if flat else root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j, image in enumerate(random_images(per_class, size, rng)):
                (folder / f"{name}_{j:05d}.png").write_bytes(png_bytes(image))


def synthetic_miniimagenet(root: str | os.PathLike, layout: str = "pickle", images_per_class: int = 20,
                           image_size: int = 84, seed: int = 0, classes: dict[str, list[str]] | None = None) -> Path:
    """Write a miniImageNet stand-in under ``root`` in ``layout`` (``"pickle"``, ``"csv"``, ``"folders"`` or
    ``"flat"``), with the 100 classes of the shipped split (or ``classes``: ``{split: [wnids]}``); returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    classes = classes or {s: shipped_lines("miniimagenet", f"{s}.txt") for s in SPLITS}
    if layout in ("folders", "flat"):
        _write_folders(root, classes, images_per_class, image_size, seed, flat=layout == "flat")
        return root
    rng = np.random.default_rng(seed)
    if layout == "csv":
        (root / "images").mkdir(exist_ok=True)
    for split, names in classes.items():
        images = random_images(len(names) * images_per_class, image_size, rng)
        if layout == "pickle":
            class_dict = {n: list(range(i * images_per_class, (i + 1) * images_per_class)) for i, n in enumerate(names)}
            with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
        elif layout == "csv":
            rows = ["filename,label"]
            for i, name in enumerate(names):
                for j in range(images_per_class):
                    filename = f"{name}{j + 1:08d}.jpg"  # Ravi's names; PNG data (PIL reads by content)
                    (root / "images" / filename).write_bytes(png_bytes(images[i * images_per_class + j]))
                    rows.append(f"{filename},{name}")
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        else:
            raise ValueError(f"layout must be 'pickle', 'csv', 'folders' or 'flat', got {layout!r}")
    return root


def synthetic_tieredimagenet(root: str | os.PathLike, layout: str = "png", images_per_class: int = 4,
                             image_size: int = 84, seed: int = 0) -> Path:
    """Write a tieredImageNet stand-in (all 608 classes) under ``root`` in ``layout`` (``"png"``: Ren et al.'s
    ``{split}_images_png.pkl``, ``"npz"``: ``{split}_images.npz``, both with ``{split}_labels.pkl``, or
    ``"folders"``); returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    splits = {s: [line.split(",") for line in shipped_lines("tieredimagenet", f"{s}.csv")] for s in SPLITS}
    if layout == "folders":
        _write_folders(root, {s: [c for c, _ in rows] for s, rows in splits.items()}, images_per_class, image_size,
                       seed)
        return root
    rng = np.random.default_rng(seed)
    for split, rows in splits.items():
        generals = sorted({g for _, g in rows})
        images = random_images(len(rows) * images_per_class, image_size, rng)
        labels = {
            "label_specific": np.repeat(np.arange(len(rows)), images_per_class),
            "label_general": np.repeat([generals.index(g) for _, g in rows], images_per_class),
            "label_specific_str": [c for c, _ in rows],
            "label_general_str": generals,
        }
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump(labels, f, protocol=2)
        if layout == "png":
            with open(root / f"{split}_images_png.pkl", "wb") as f:
                pickle.dump([np.frombuffer(png_bytes(im), dtype=np.uint8) for im in images], f, protocol=4)
        elif layout == "npz":
            np.savez(root / f"{split}_images.npz", images=images)
        else:
            raise ValueError(f"layout must be 'png', 'npz' or 'folders', got {layout!r}")
    return root


def synthetic_cifar100(root: str | os.PathLike, layout: str = "archive", images_per_class: int = 6,
                       seed: int = 0) -> Path:
    """Write a CIFAR-100 stand-in (``cifar-100-python.tar.gz`` for ``layout="archive"``, the extracted
    ``cifar-100-python/`` for ``"folder"``) with ``images_per_class`` images per class, a third of them in
    ``test``; returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    coarse = sorted(CIFAR100_CLASSES)
    fine = sorted(f for fs in CIFAR100_CLASSES.values() for f in fs)
    parent = {f: coarse.index(c) for c, fs in CIFAR100_CLASSES.items() for f in fs}
    rng = np.random.default_rng(seed)
    n_test = max(1, images_per_class // 3)
    parts = {}
    for part, per_class in (("train", images_per_class - n_test), ("test", n_test)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class)).tolist()
        data = random_images(len(labels), 32, rng).transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        parts[part] = {"data": data, "fine_labels": labels, "coarse_labels": [parent[fine[f]] for f in labels]}
    parts["meta"] = {"fine_label_names": fine, "coarse_label_names": coarse}
    blobs = {name: pickle.dumps(value, protocol=2) for name, value in parts.items()}
    if layout == "folder":
        (root / "cifar-100-python").mkdir(exist_ok=True)
        for name, blob in blobs.items():
            (root / "cifar-100-python" / name).write_bytes(blob)
    elif layout == "archive":
        with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as archive:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
    else:
        raise ValueError(f"layout must be 'archive' or 'folder', got {layout!r}")
    return root
