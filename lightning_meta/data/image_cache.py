"""A decoded-image cache shared by every DataLoader worker: one uint8 ``.npy`` file, memory-mapped read-only.

The images of a dataset are decoded once into ``<cache_dir>/<name>-<key>.npy`` (``[N, 3, H, W]`` uint8, sorted by
class) beside a ``.json`` that records the class names, the images per class, the array's shape and byte size and
a checksum of sampled blocks. Both files are written under temporary names and renamed into place, the ``.json``
last, so a reader never sees a half-written cache. ``key`` hashes the size and modification time of every source
file (and the decoding parameters), so changed data gives a new cache. A cache that does not pass the checks
(truncated, garbled, missing its ``.json``) is rebuilt with a warning.

Memory-mapped pages live in the page cache, once per machine, whatever the number of processes that map them:
workers reopen the file lazily (see ``ImageTasks.__getstate__``) instead of receiving a copy of the array.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE_VERSION = 1
SAMPLED_BLOCKS, BLOCK = 64, 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: one image to decode: PNG/JPEG bytes, or an ``[H, W, 3]`` uint8 array
RawImage = bytes | np.ndarray


def cache_base(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else ``$LIGHTNING_META_CACHE``, else ``~/.cache/lightning_meta``."""
    return Path(cache_dir or os.environ.get("LIGHTNING_META_CACHE") or Path.home() / ".cache" / "lightning_meta")


def file_stamps(files: Iterable[Path]) -> list[str]:
    """``path:size:mtime_ns`` of each file: what the cache key hashes."""
    out = []
    for path in files:
        stat = path.stat()
        out.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return out


def cache_path(name: str, image_size: int, stamps: Sequence[str], cache_dir: str | os.PathLike | None,
               extra: str = "") -> Path:
    """``<base>/<name>-<size>px-<key>.npy``; ``key`` changes with any stamp, the size or ``extra``."""
    text = "|".join([str(CACHE_VERSION), name, str(image_size), extra, *sorted(stamps)])
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    return cache_base(cache_dir) / f"{name}-{image_size}px-{key}.npy"


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))


def decode_image(raw: RawImage, image_size: int) -> np.ndarray:
    """``raw`` as a ``[3, image_size, image_size]`` uint8 array: PIL's RGB decoding, resized (Lanczos) if needed."""
    from PIL import Image

    if isinstance(raw, np.ndarray) and raw.ndim == 3 and raw.shape == (image_size, image_size, 3):
        return np.ascontiguousarray(raw.transpose(2, 0, 1), dtype=np.uint8)
    if isinstance(raw, np.ndarray) and raw.ndim == 3:
        image = Image.fromarray(np.asarray(raw, dtype=np.uint8))
    else:
        import io

        data = raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)  # PNG bytes stored as a uint8 array
        image = Image.open(io.BytesIO(data))
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), resample=Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _checksum(path: Path, size: int) -> int:
    """CRC32 of 64 evenly spaced 4 KiB blocks and the last block: catches garbled or swapped files cheaply."""
    crc = 0
    with open(path, "rb") as f:
        offsets = {min(size - BLOCK, i * size // SAMPLED_BLOCKS) for i in range(SAMPLED_BLOCKS)} | {size - BLOCK}
        for offset in sorted(o for o in offsets if o >= 0) or [0]:
            f.seek(offset)
            crc = zlib.crc32(f.read(BLOCK), crc)
    return crc


def open_images(path: Path) -> torch.Tensor:
    """The cached ``[N, 3, H, W]`` uint8 array as a tensor over a read-only memory map (no copy)."""
    array = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():  # read-only memory: the tensor is never written (sampling only gathers)
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(array)


def read_cache(path: Path) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """``(images, meta)`` if a valid cache is at ``path``; ``None`` if there is none; a warning and ``None`` if
    the files there are unusable (they are then rebuilt)."""
    meta_path = path.with_suffix(".json")
    if not path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {meta.get('version')}, expected {CACHE_VERSION}")
        size = path.stat().st_size
        if size != meta["npy_bytes"]:
            raise ValueError(f"{size} bytes, expected {meta['npy_bytes']} (truncated?)")
        images = open_images(path)
        if list(images.shape) != meta["shape"] or images.dtype != torch.uint8:
            raise ValueError(f"array {tuple(images.shape)} {images.dtype}, expected {meta['shape']} uint8")
        if sum(meta["counts"]) != images.shape[0] or len(meta["counts"]) != len(meta["classes"]):
            raise ValueError("class counts do not add up to the images")
        if _checksum(path, size) != meta["checksum"]:
            raise ValueError("checksum mismatch (garbled file)")
        return images, meta
    except Exception as error:  # derived data: anything unreadable is rebuilt from the source
        warnings.warn(f"image cache {path} is unusable ({type(error).__name__}: {error}); rebuilding it", stacklevel=3)
        return None


def write_cache(path: Path, items: Sequence[tuple[str, Callable[[], RawImage]]], image_size: int,
                workers: int | None = None) -> None:
    """Decode ``items`` (``(class name, loader)``, grouped by class in order) into the cache at ``path``.

    The array is filled through a memory map of a temporary file (the dataset never has to fit in memory twice)
    and renamed into place with its ``.json``; decoding runs in threads (PIL releases the GIL).
    """
    if not items:
        raise ValueError("no images to cache")
    classes: list[str] = []
    counts: list[int] = []
    for name, _ in items:
        if not classes or classes[-1] != name:
            if name in classes:
                raise ValueError(f"images of class {name!r} are not contiguous")
            classes.append(name)
            counts.append(0)
        counts[-1] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    shape = (len(items), 3, image_size, image_size)
    array: np.ndarray | None = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)

    def fill(i: int) -> None:
        array[i] = decode_image(items[i][1](), image_size)  # type: ignore[index]

    try:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for _ in pool.map(fill, range(len(items)), chunksize=64):
                pass
        array.flush()
        array = None  # unmap before the rename
        size = tmp.stat().st_size
        meta = {"version": CACHE_VERSION, "shape": list(shape), "classes": classes, "counts": counts,
                "npy_bytes": size, "checksum": _checksum(tmp, size)}
        meta_tmp = tmp.with_suffix(".json")
        meta_tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)
        os.replace(meta_tmp, path.with_suffix(".json"))
    finally:
        for leftover in (tmp, tmp.with_suffix(".json")):
            leftover.unlink(missing_ok=True)


def cached_images(path: Path, items: Callable[[], Sequence[tuple[str, Callable[[], RawImage]]]],
                  image_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The cache at ``path``, built from ``items()`` first if it is missing or unusable."""
    found = read_cache(path)
    if found is not None:
        return found
    write_cache(path, items(), image_size)
    found = read_cache(path)
    if found is None:
        raise RuntimeError(f"the image cache {path} was written but cannot be read back")
    return found
