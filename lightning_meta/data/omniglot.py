"""Omniglot from a local copy (folders or the authors' zips), preprocessed once and cached."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_meta.data.classification import ClassificationTasks
from lightning_meta.data.image_cache import cache_base
from lightning_meta.data.preprocessing import ImagePreprocessing

SETS = ("images_background", "images_evaluation")
DRAWERS = 20
CACHE_VERSION = 1
EXPECTED_LAYOUT = (
    "ROOT/images_background/<Alphabet>/characterNN/XXXX_YY.png and ROOT/images_evaluation/... "
    "(folders), or ROOT/images_background.zip and ROOT/images_evaluation.zip as the authors distribute them"
)


def _set_source(root: Path, name: str) -> Path:
    folder, archive = root / name, root / f"{name}.zip"
    if folder.is_dir():
        return folder
    if archive.is_file():
        return archive
    raise FileNotFoundError(
        f"Omniglot: neither {folder} nor {archive} exists under root={str(root)!r}. Expected layout: "
        f"{EXPECTED_LAYOUT}. lightning-meta never downloads data."
    )


def _png_files(source: Path) -> Iterator[tuple[str, Any]]:
    """``("Alphabet/characterNN/file.png", opener)`` for every image of one set, sorted."""
    if source.is_dir():
        for path in sorted(source.glob("*/*/*.png")):
            yield "/".join(path.parts[-3:]), path.read_bytes
        return
    if not zipfile.is_zipfile(source):
        raise ValueError(f"Omniglot: {source} is not a zip archive (truncated download or another format?). "
                         f"Expected layout: {EXPECTED_LAYOUT}")
    with zipfile.ZipFile(source) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        for name in names:
            yield "/".join(name.split("/")[-3:]), (lambda n=name: archive.read(n))


def _decode(data: bytes, image_size: int) -> torch.Tensor:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), resample=Image.LANCZOS)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return 255 - pixels.view(image_size, image_size)  # ink = 255, background = 0


def load_omniglot(root: str | os.PathLike, image_size: int = 28) -> dict[str, Any]:
    """Decode every Omniglot image under ``root``: ``images [1623, 20, s, s]`` uint8, names, set flags."""
    root = Path(root)
    characters: dict[str, list[torch.Tensor]] = {}
    background: list[bool] = []
    for set_name in SETS:
        source = _set_source(root, set_name)
        for rel, read in _png_files(source):
            character = "/".join(rel.split("/")[:2])
            if character not in characters:
                characters[character] = []
                background.append(set_name == SETS[0])
            characters[character].append(_decode(read(), image_size))
    incomplete = {c: len(v) for c, v in characters.items() if len(v) != DRAWERS}
    if not characters or incomplete:
        raise ValueError(
            f"Omniglot under {str(root)!r} is incomplete: every character needs {DRAWERS} drawings; "
            f"found {len(characters)} characters, {len(incomplete)} with another count "
            f"(e.g. {dict(list(incomplete.items())[:3])}). Expected layout: {EXPECTED_LAYOUT}"
        )
    names = list(characters)
    images = torch.stack([torch.stack(characters[n]) for n in names])
    return {"images": images, "names": names, "background": torch.tensor(background)}


def _cache_file(root: Path, image_size: int, cache_dir: str | None) -> Path:
    stamp = []
    for name in SETS:
        source = _set_source(root, name)
        stat = source.stat()
        stamp.append(f"{source.resolve()}:{stat.st_size}:{int(stat.st_mtime)}")
    key = hashlib.sha1(f"{CACHE_VERSION}|{image_size}|{'|'.join(stamp)}".encode()).hexdigest()[:16]
    return cache_base(cache_dir) / f"omniglot-{image_size}px-{key}.pt"


def load_omniglot_cached(root: str | os.PathLike, image_size: int = 28, cache_dir: str | None = None) -> dict:
    """``load_omniglot`` through an atomically written cache file (seconds on the second start)."""
    path = _cache_file(Path(root), image_size, cache_dir)
    if path.is_file():
        try:
            return _check_cache(torch.load(path, weights_only=True), image_size)
        except Exception as error:  # derived data: any unreadable or inconsistent cache is rebuilt
            warnings.warn(f"Omniglot cache {path} is unreadable ({type(error).__name__}: {error}); rebuilding it "
                          f"from {root}", stacklevel=2)
    data = load_omniglot(root, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def _check_cache(data: Any, image_size: int) -> dict:
    """``data`` if it has the structure ``load_omniglot`` returns, else a ``ValueError`` saying what is off."""
    if not isinstance(data, dict) or not {"images", "names", "background"} <= data.keys():
        raise ValueError("not a dict with images, names and background")
    images = data["images"]
    n = len(data["names"])
    if images.dtype != torch.uint8 or tuple(images.shape) != (n, DRAWERS, image_size, image_size):
        raise ValueError(f"images {tuple(images.shape)} {images.dtype}, expected ({n}, {DRAWERS}, {image_size}, "
                         f"{image_size}) uint8")
    if len(data["background"]) != n:
        raise ValueError(f"{len(data['background'])} background flags for {n} characters")
    return data


def vinyals_split(name: str) -> list[str]:
    """The class names (``Alphabet/characterNN/rotDDD``) of a Vinyals et al. split shipped with the package."""
    text = resources.files("lightning_meta.data").joinpath("splits", "vinyals", f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class OmniglotTasks(ClassificationTasks):
    """Omniglot N-way K-shot tasks from a local root, in the standard few-shot protocol.

    Reads ``images_background`` / ``images_evaluation`` as folders or as the authors' zip files under
    ``root`` and never downloads. Images are resized to ``image_size`` (28 by default), inverted so that ink
    is 1.0, and the decoded tensor is cached (``cache_dir``, ``$LIGHTNING_META_CACHE`` or
    ``~/.cache/lightning_meta``), so a second start takes seconds.

    ``split="vinyals"`` (default) uses the Vinyals et al. (2016) class split shipped with the package:
    rotations by 0/90/180/270 degrees are distinct classes; 4,112 train, 688 val and 1,692 test classes.
    ``split="alphabets"`` uses the authors' alphabet split: ``images_background`` for meta-training except
    its last five alphabets (sorted by name), which are meta-validation, and ``images_evaluation`` for
    meta-test; ``rotations`` adds the rotated classes there too. With ``rotations=False`` the Vinyals
    split keeps only its ``rot000`` classes. ``train_ways`` makes meta-training tasks wider than the evaluation
    tasks (ProtoNet: 60-way training for 5-way testing).

    Examples:
        >>> tasks = OmniglotTasks(omniglot_root, ways=5, shots=1, queries=15)  # a local copy, never downloaded
        >>> tasks.setup()
        >>> tasks.num_classes("train"), tasks.num_classes("val"), tasks.num_classes("test")
        (4112, 688, 1692)
    """

    def __init__(
        self,
        root: str,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        split: Literal["vinyals", "alphabets"] = "vinyals",
        rotations: bool = True,
        image_size: int = 28,
        cache_dir: str | None = None,
        train_ways: int | None = None,
    ) -> None:
        super().__init__(None, ways=ways, shots=shots, queries=queries, train_ways=train_ways)
        if split not in ("vinyals", "alphabets"):
            raise ValueError(f"split must be 'vinyals' or 'alphabets', got {split!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size!r}")
        self.root, self.split, self.rotations = root, split, rotations
        self.image_size, self.cache_dir = image_size, cache_dir

    def preprocessing(self) -> ImagePreprocessing:
        """Grayscale, resized to ``image_size`` (Lanczos), inverted (ink is 1), scaled to ``[0, 1]``."""
        return ImagePreprocessing(image_size=self.image_size, channels=1, invert=True)

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        raw = load_omniglot_cached(self.root, self.image_size, self.cache_dir)
        images, characters = raw["images"], raw["names"]
        turns = 4 if self.rotations else 1
        rotated = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(turns)], dim=1)
        self.class_names = [f"{c}/rot{90 * k:03d}" for c in characters for k in range(turns)]
        x = rotated.reshape(-1, 1, self.image_size, self.image_size)  # [classes*20, 1, s, s]
        labels = torch.arange(len(self.class_names)).repeat_interleave(DRAWERS)
        self.splits = self._named_splits(characters, raw["background"].tolist())
        return x, labels

    def _named_splits(self, characters: list[str], background: list[bool]) -> dict[str, list[int]]:
        index = {name: i for i, name in enumerate(self.class_names)}
        if self.split == "vinyals":
            out = {}
            for split, file in (("train", "train"), ("val", "val"), ("test", "test")):
                names = [n for n in vinyals_split(file) if self.rotations or n.endswith("rot000")]
                missing = [n for n in names if n not in index]
                if missing:
                    raise ValueError(f"Omniglot under {self.root!r} lacks classes of the Vinyals split: {missing[:3]}")
                out[split] = [index[n] for n in names]
            return out
        alphabets = sorted({c.split("/")[0] for c, b in zip(characters, background) if b})
        val_alphabets = set(alphabets[-5:])
        out = {"train": [], "val": [], "test": []}
        for i, name in enumerate(self.class_names):
            alphabet = name.split("/")[0]
            is_background = background[i // (4 if self.rotations else 1)]
            split = "test" if not is_background else ("val" if alphabet in val_alphabets else "train")
            out[split].append(i)
        return out

    def class_name(self, label: int) -> str:
        return self.class_names[label] if hasattr(self, "class_names") else str(label)
