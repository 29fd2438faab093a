"""A new task's examples from files, as ``lightning-meta adapt`` reads them: class folders of images (the support
set), a folder of images (the queries), and CSV tables of ``x``/``y`` columns (regression).

Every reader returns tensors ready for [MetaLearner.adapt][lightning_meta.MetaLearner.adapt] and raises a
``ValueError`` naming the folder, file or column at fault. Images are prepared with the learner's recorded
[ImagePreprocessing][lightning_meta.data.preprocessing.ImagePreprocessing] (``learner.task_info["preprocessing"]``),
so they match what it was trained on. Files and folders whose names start with ``.`` are ignored; every other file
in an image folder is read as an image.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_meta.data.preprocessing import ImagePreprocessing

#: a regression CSV's column names: ``x`` or ``x0, x1, ...`` (inputs), ``y`` or ``y0, y1, ...`` (targets)
COLUMN = re.compile(r"^([xy])(\d*)$")


def _preprocessing(preprocessing: ImagePreprocessing | Mapping[str, Any]) -> ImagePreprocessing:
    if isinstance(preprocessing, ImagePreprocessing):
        return preprocessing
    if not isinstance(preprocessing, Mapping):
        raise ValueError(
            f"preprocessing must be an ImagePreprocessing or its dict (learner.task_info"
            f"['preprocessing']), got {type(preprocessing).__name__}"
        )
    try:
        return ImagePreprocessing.from_dict(preprocessing)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the recorded image preprocessing {dict(preprocessing)!r} is not valid: {error}") from error


def _folder(root: str | os.PathLike, what: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is not a folder")
    return path


def _visible(entries: Sequence[Path]) -> list[Path]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The files directly in ``folder`` (not in its subfolders), sorted by name, hidden files left out.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.png", ".DS_Store"):
        ...     _ = (root / name).write_bytes(b"")
        >>> [p.name for p in image_files(root)]
        ['a.png', 'b.png']
    """
    return _visible([p for p in Path(folder).iterdir() if p.is_file()])


def prepare_images(paths: Sequence[Path], preprocessing: ImagePreprocessing | Mapping[str, Any]) -> torch.Tensor:
    """``[len(paths), C, s, s]``: each image prepared as the learner's training images were; an image that cannot be
    read or prepared is a ``ValueError`` naming its path."""
    prep = _preprocessing(preprocessing)
    out = []
    for path in paths:
        try:
            out.append(prep(path))
        except ValueError as error:
            if str(path) in str(error):  # open_image's message names the file already
                raise
            raise ValueError(f"cannot prepare the image {str(path)!r}: {error}") from error
        except Exception as error:  # noqa: BLE001 - PIL's decoders and converters raise many types
            raise ValueError(
                f"cannot prepare the image {str(path)!r} ({prep}): {type(error).__name__}: {error}"
            ) from error
    return torch.stack(out)


def read_class_folders(
    root: str | os.PathLike, preprocessing: ImagePreprocessing | Mapping[str, Any], min_classes: int = 2
) -> tuple[torch.Tensor, list[str], list[Path]]:
    """A labeled support set from one folder per class, the folder's name being the class name
    (``support/cat/1.png``, ``support/dog/1.png``): ``(x [S, C, s, s], names [S], paths [S])``, classes in sorted
    order, images in sorted order within each class.

    An empty class folder, fewer than ``min_classes`` class folders, or an unreadable image is a ``ValueError``
    naming it. Files directly in ``root`` (outside class folders) are ignored.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("L", (20, 20)).save(root / name / "1.png")
        >>> x, names, paths = read_class_folders(root, {"image_size": 16, "channels": 1, "invert": True})
        >>> x.shape, names
        (torch.Size([2, 1, 16, 16]), ['cat', 'dog'])

        Then ``learner.adapt(x, names)``.
    """
    root = _folder(root, "the support folder")
    folders = _visible([p for p in root.iterdir() if p.is_dir()])
    if len(folders) < min_classes:
        found = ", ".join(repr(f.name) for f in folders) or "none"
        raise ValueError(
            f"the support folder {str(root)!r} needs at least {min_classes} class folders (one folder "
            f"of images per class, named after the class), found {len(folders)}: {found}"
        )
    paths, names = [], []
    for folder in folders:
        files = image_files(folder)
        if not files:
            raise ValueError(
                f"the class folder {str(folder)!r} is empty: put at least one image of class "
                f"{folder.name!r} in it, or remove it"
            )
        paths += files
        names += [folder.name] * len(files)
    return prepare_images(paths, preprocessing), names, paths


def read_image_folder(
    root: str | os.PathLike, preprocessing: ImagePreprocessing | Mapping[str, Any]
) -> tuple[torch.Tensor, list[Path]]:
    """Unlabeled queries: the images directly in ``root``, sorted by name (or ``root`` itself when it is one image
    file): ``(x [M, C, s, s], paths [M])``. No image, or an unreadable one, is a ``ValueError`` naming it.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("q2.png", "q1.png"):
        ...     Image.new("L", (20, 20)).save(root / name)
        >>> x, paths = read_image_folder(root, {"image_size": 16, "channels": 1})
        >>> x.shape, [p.name for p in paths]
        (torch.Size([2, 1, 16, 16]), ['q1.png', 'q2.png'])

        Then ``learner.adapt(support_x, names)(x)`` scores them.
    """
    path = Path(root)
    if path.is_file():
        return prepare_images([path], preprocessing), [path]
    folder = _folder(path, "the query folder")
    files = image_files(folder)
    if not files:
        sub = [p.name for p in _visible([p for p in folder.iterdir() if p.is_dir()])]
        hint = f" (it has only subfolders: {', '.join(sub)}; put the query images directly in it)" if sub else ""
        raise ValueError(f"the query folder {str(folder)!r} holds no images{hint}")
    return prepare_images(files, preprocessing), files


def _columns(header: list[str], path: Path) -> dict[str, list[int]]:
    """``{"x": [positions], "y": [positions]}`` in the order ``x``, ``x0``, ``x1``, ...; a bad name is a
    ``ValueError``."""
    found: dict[str, dict[int, int]] = {"x": {}, "y": {}}
    for position, raw in enumerate(header):
        name = raw.strip()
        match = COLUMN.match(name)
        if match is None:
            raise ValueError(
                f"{path}: column {raw!r} is neither an input (x, or x0, x1, ...) nor a target (y, or y0, y1, ...)"
            )
        kind, number = match.group(1), match.group(2)
        index = -1 if number == "" else int(number)
        if index in found[kind]:
            raise ValueError(f"{path}: column {name!r} appears twice")
        found[kind][index] = position
    out = {}
    for kind, columns in found.items():
        keys = sorted(columns)
        if -1 in columns and len(columns) > 1:
            raise ValueError(f"{path}: name one {kind} column {kind!r}, or several {kind}0, {kind}1, ..., not both")
        if -1 not in columns and keys != list(range(len(keys))):
            raise ValueError(
                f"{path}: the {kind} columns must be numbered {kind}0, {kind}1, ... without gaps, got "
                f"{', '.join(f'{kind}{k}' for k in keys)}"
            )
        out[kind] = [columns[k] for k in keys]
    return out


def _read_table(path: str | os.PathLike, what: str) -> tuple[Path, list[str], list[list[str]]]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(
            f"{what} {str(file)!r} is not a file" if file.exists() else f"{what} {str(file)!r} does not exist"
        )
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"cannot read the CSV file {str(file)!r}: {error}") from error
    if not rows:
        raise ValueError(f"the CSV file {str(file)!r} is empty: it needs a header (x,y or x0,x1,y) and rows")
    header, body = [c.strip() for c in rows[0]], rows[1:]
    if not body:
        raise ValueError(f"the CSV file {str(file)!r} has a header but no rows")
    return file, header, body


def _numbers(file: Path, header: list[str], body: list[list[str]], positions: list[int]) -> torch.Tensor:
    values = []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{file}, line {line}: {len(row)} values for {len(header)} columns")
        out = []
        for p in positions:
            try:
                value = float(row[p])
            except ValueError:
                raise ValueError(f"{file}, line {line}, column {header[p]!r}: {row[p]!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{file}, line {line}, column {header[p]!r}: {row[p]!r} is not a finite number")
            out.append(value)
        values.append(out)
    return torch.tensor(values, dtype=torch.float32).reshape(len(body), len(positions))


def read_xy_csv(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """A regression support set from a CSV file with a header: input columns ``x`` (or ``x0, x1, ...``) and target
    columns ``y`` (or ``y0, y1, ...``), in any order: ``(x [S, dx], y [S, dy], x_names, y_names)`` as float32.

    Examples:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "support.csv"
        >>> _ = file.write_text("x,y\\n0.5,1.0\\n-1.0,2.5\\n")
        >>> x, y, x_names, y_names = read_xy_csv(file)
        >>> x.shape, y.tolist(), x_names, y_names
        (torch.Size([2, 1]), [[1.0], [2.5]], ['x'], ['y'])

        Then ``learner.adapt(x, y)``.
    """
    file, header, body = _read_table(path, "the support CSV file")
    columns = _columns(header, file)
    for kind in ("x", "y"):
        if not columns[kind]:
            raise ValueError(
                f"{file}: a support CSV needs {kind} columns ({kind}, or {kind}0, {kind}1, ...); its "
                f"header is {','.join(header)}"
            )
    x, y = (_numbers(file, header, body, columns[kind]) for kind in ("x", "y"))
    return x, y, [header[p] for p in columns["x"]], [header[p] for p in columns["y"]]


def read_x_csv(path: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    """Regression queries from a CSV file with a header of input columns ``x`` (or ``x0, x1, ...``); target columns
    (``y``...), if any, are ignored: ``(x [M, dx], x_names)`` as float32.

    Examples:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "query.csv"
        >>> _ = file.write_text("x\\n0.0\\n1.5\\n")
        >>> x, names = read_x_csv(file)
        >>> x.tolist(), names
        ([[0.0], [1.5]], ['x'])

        Then ``learner.adapt(support_x, support_y)(x)`` predicts their ``y``.
    """
    file, header, body = _read_table(path, "the query CSV file")
    columns = _columns(header, file)
    if not columns["x"]:
        raise ValueError(f"{file}: a query CSV needs x columns (x, or x0, x1, ...); its header is {','.join(header)}")
    return _numbers(file, header, body, columns["x"]), [header[p] for p in columns["x"]]
