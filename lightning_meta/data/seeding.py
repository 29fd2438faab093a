"""Counter-based seeding: every task is a pure function of (seed, split, epoch, index)."""

from __future__ import annotations

import hashlib

import torch


def task_seed(seed: int, split: str, epoch: int, index: int) -> int:
    """A 63-bit seed for one task, independent of workers, ranks and batching."""
    key = f"{seed}/{split}/{epoch}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def task_generator(seed: int, split: str, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for one task (see ``task_seed``)."""
    return torch.Generator().manual_seed(task_seed(seed, split, epoch, index))
