"""File-format readers of the RGB few-shot datasets: shipped split lists, Python 2 pickles, ``.npz`` arrays
(memory-mapped), Ravi & Larochelle CSVs, and the class-folder layout."""

from __future__ import annotations

import csv
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lightning_meta.data.image_cache import RawImage, image_files
from lightning_meta.data.sources import SPLITS

#: ``(class name, the split the layout puts it in or None, loader of one image)``
Item = tuple[str, str | None, Callable[[], RawImage]]
WNID = re.compile(r"^n\d{8}$")


def shipped_lines(dataset: str, file: str) -> list[str]:
    """The non-empty lines of ``splits/<dataset>/<file>`` shipped with the package."""
    text = resources.files("lightning_meta.data").joinpath("splits", dataset, file).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_pickle(data: bytes | Path) -> Any:
    """A pickle written by Python 2 or 3 (``latin1`` reads Python 2's numpy arrays and str keys)."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    return pickle.loads(raw, encoding="latin1")


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def get_key(mapping: dict, key: str) -> Any:
    """``mapping[key]`` where a Python 2 pickle may have stored the key as bytes."""
    if key in mapping:
        return mapping[key]
    if key.encode() in mapping:
        return mapping[key.encode()]
    raise KeyError(f"no key {key!r} (keys: {sorted(text(k) for k in mapping)[:8]})")


def npz_array(path: Path, key: str) -> np.ndarray:
    """``key`` of an ``.npz`` file, memory-mapped when stored uncompressed (``np.savez``), else read."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(
                    local[28:30], "little")
                f.seek(start)
                version = np.lib.format.read_magic(f)
                fmt = np.lib.format
                header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = header(f)
                offset = f.tell()
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    return np.load(path)[key]


def folder_items(root: Path, expected: str, dataset: str) -> tuple[list[Path], list[Item]] | None:
    """The folder layout: ``ROOT/{train,val,test}/<class>/*.jpg``, or every ``ROOT/<wnid>/`` in one place."""
    split_dirs = [root / s for s in SPLITS]
    if any(d.is_dir() for d in split_dirs):
        missing = [str(d) for d in split_dirs if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"{dataset}: {', '.join(missing)} missing under root={str(root)!r} (the folder "
                                    f"layout needs train/, val/ and test/). Expected layout: {expected}")
        classes = [(c, s) for d, s in zip(split_dirs, SPLITS) for c in sorted(p for p in d.iterdir() if p.is_dir())]
    else:
        classes = [(p, None) for p in sorted(root.iterdir()) if p.is_dir() and WNID.match(p.name)]
        if not classes:
            return None
    files, items = [], []
    for folder, split in classes:
        for path in image_files(folder):
            files.append(path)
            items.append((folder.name, split, path.read_bytes))
    return files, items


def read_csv_rows(path: Path) -> list[tuple[str, str]]:
    """``(filename, label)`` rows of a Ravi & Larochelle CSV (header ``filename,label``)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
        raise ValueError(f"{path} does not start with the header 'filename,label'")
    return [(r[0].strip(), r[1].strip()) for r in rows[1:]]


def png_item(value: Any) -> Callable[[], RawImage]:
    """A loader for one PNG stored as bytes or as a uint8 array (``cv2.imencode``'s output)."""
    return lambda: value if isinstance(value, bytes | np.ndarray) else bytes(value)


def array_rows(array: np.ndarray, rows: Sequence[int]) -> list[Callable[[], RawImage]]:
    return [lambda i=i: np.asarray(array[i]) for i in rows]
