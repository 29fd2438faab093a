"""A checkpoint path that is not a PyTorch checkpoint at all (garbage bytes, a truncated copy, an HTML error page, an
unrelated zip) gets a ``ValueError`` naming the file, not ``torch.load``'s unpickling message (which, under
``weights_only=True``, blames the PyTorch 2.6 change of default and suggests ``weights_only=False``: the wrong cause).

A file that *is* a PyTorch archive keeps torch's own error (e.g. a checkpoint holding a class that ``weights_only``
refuses: there torch's message is the right one).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning_meta._lightning import submodule

#: how ``torch.save(..., _use_new_zipfile_serialization=False)`` files begin: pickle protocol 2, then the 10-byte
#: magic number ``0x1950a86a20f9469cfc6c`` as a LONG1
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
#: ``ckpt_path`` values that Lightning resolves itself (not file names)
_SPECIAL = ("last", "best", "hpc", "registry")


class UnreadableCheckpointError(ValueError):
    """The file given as a checkpoint is not a readable PyTorch checkpoint."""


def _local_file(path: Any) -> Path | None:
    """``path`` as a local file that exists, or ``None`` (file objects, URLs, Lightning's special values)."""
    if not isinstance(path, str | os.PathLike):
        return None
    text = os.fspath(path)
    if text in _SPECIAL or text.startswith("registry:") or "://" in text:
        return None
    file = Path(text)
    return file if file.is_file() else None


def why_not_a_checkpoint(file: Path) -> str | None:
    """Why ``file`` cannot be a file ``torch.save`` wrote (a reason), or ``None`` when it has the layout of one.

    Reads the zip directory only (not the tensors): torch's zip archives name a ``data.pkl``; the legacy format
    starts with torch's magic number.
    """
    with open(file, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        return None
    if not head:
        return "it is empty (0 bytes)"
    if not zipfile.is_zipfile(file):
        return ("it is neither a zip archive (what torch.save writes) nor a legacy torch file; a truncated or "
                "partial copy, or not a checkpoint at all?")
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"its zip directory cannot be read ({err}); a truncated or damaged copy?"
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "it is a zip archive but not one torch.save wrote (no data.pkl inside); the wrong file?"
    return None


def _message(file: Path, reason: str) -> str:
    return (f"{file} is not a readable PyTorch checkpoint: {reason} Pass a .ckpt file written by Lightning "
            "(ModelCheckpoint or trainer.save_checkpoint), copied whole")


def check_checkpoint_file(path: Any) -> None:
    """Raise an [UnreadableCheckpointError][lightning_meta.checkpoints.UnreadableCheckpointError] now if ``path`` is
    a local file that cannot be a PyTorch checkpoint (``None``, missing files, URLs, ``"last"``/``"best"`` pass:
    Lightning handles those)."""
    file = _local_file(path)
    reason = why_not_a_checkpoint(file) if file is not None else None
    if reason is not None:
        raise UnreadableCheckpointError(_message(file, reason))  # type: ignore[arg-type]


@contextmanager
def readable_checkpoint(path: Any) -> Iterator[None]:
    """Run a load of ``path``; if it fails and the file cannot be a PyTorch checkpoint, raise an
    [UnreadableCheckpointError][lightning_meta.checkpoints.UnreadableCheckpointError] naming it, chained from
    torch's error. Any other failure (of a well-formed file) is raised unchanged."""
    try:
        yield
    except Exception as err:
        file = _local_file(path)
        reason = why_not_a_checkpoint(file) if file is not None else None
        if reason is None:
            raise
        raise UnreadableCheckpointError(_message(file, reason)) from err  # type: ignore[arg-type]


def peek_checkpoint(path: Any) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped where the file allows it (the tensors are
    not read: a cheap look at what a checkpoint records before Lightning loads it)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def read_lightning_checkpoint(path: Any) -> dict[str, Any]:
    """[peek_checkpoint][lightning_meta.checkpoints.peek_checkpoint] of a file that must be a Lightning checkpoint;
    a ``ValueError`` (an [UnreadableCheckpointError][lightning_meta.checkpoints.UnreadableCheckpointError] where the
    file cannot be a PyTorch checkpoint) naming ``--ckpt_path`` and what is wrong: a missing file, one torch cannot
    load, a PyTorch file without a ``state_dict``."""
    file = Path(path)
    if not file.is_file():
        problem = " is not a file" if file.exists() else ": no such file"
        raise ValueError(f"--ckpt_path {path}{problem}")
    check_checkpoint_file(file)
    try:
        checkpoint = peek_checkpoint(file)
    except Exception as error:  # noqa: BLE001 - torch's unpickler raises many types
        first = " ".join(str(error).split()[:40]) or type(error).__name__
        raise ValueError(f"--ckpt_path {path} cannot be read with torch.load(weights_only=True): {first}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"--ckpt_path {path} is a PyTorch file but not a Lightning checkpoint (no state_dict): pass "
                         "a .ckpt written by lightning-meta fit or a Lightning Trainer")
    return checkpoint


def recorded_learner(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the learner a checkpoint holds: lightning-meta's record, else LightningCLI's
    ``_class_path`` hyper-parameter; ``None`` where neither says."""
    record = checkpoint.get("lightning_meta") or {}
    return record.get("learner") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")


CheckpointIO = submodule("plugins").CheckpointIO


class ReadableCheckpointIO(CheckpointIO):
    """A Trainer strategy's checkpoint IO, unchanged except that loading a file that is not a PyTorch checkpoint
    raises an [UnreadableCheckpointError][lightning_meta.checkpoints.UnreadableCheckpointError]
    ([MetaLearner][lightning_meta.MetaLearner] installs it in its ``setup`` hook, before the Trainer loads
    ``ckpt_path``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with readable_checkpoint(path):
            return self.inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()

    def __getattr__(self, name: str) -> Any:  # anything else the wrapped plugin offers
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def report_unreadable_checkpoints(strategy: Any) -> None:
    """Wrap ``strategy``'s checkpoint IO in a [ReadableCheckpointIO][lightning_meta.checkpoints.ReadableCheckpointIO]
    (once; a strategy without a settable ``checkpoint_io`` is left alone)."""
    try:
        io = strategy.checkpoint_io
    except (AttributeError, NotImplementedError):
        return
    if io is None or isinstance(io, ReadableCheckpointIO):
        return
    try:
        strategy.checkpoint_io = ReadableCheckpointIO(io)
    except (AttributeError, TypeError):
        return
