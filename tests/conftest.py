"""Shared fixtures: the Omniglot root, an identifiable toy dataset, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ENV = "LIGHTNING_META_OMNIGLOT"


def omniglot_root() -> Path:
    """``$LIGHTNING_META_OMNIGLOT`` or ``../shared/data/omniglot`` next to the repository."""
    return Path(os.environ.get(OMNIGLOT_ENV, REPO.parent / "shared" / "data" / "omniglot"))


@pytest.fixture(scope="session")
def omniglot() -> Path:
    root = omniglot_root()
    if not (root / "images_background.zip").exists() and not (root / "images_background").exists():
        pytest.skip(f"Omniglot not found at {root}; set {OMNIGLOT_ENV} to a local copy")
    return root


def index_dataset(classes: int = 20, per_class: int = 10, dim: int = 3) -> TensorDataset:
    """Example ``i`` has input ``[i, i, ...]`` and label ``i % classes``: tasks are identifiable."""
    n = classes * per_class
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, dim)
    return TensorDataset(x, torch.arange(n) % classes)


def run_script(name: str, *args: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/NAME`` in a fresh interpreter (DDP launchers re-execute their script).

    With ``check`` a non-zero exit fails the test, showing the output's tail.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / name), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=args[0] if args else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
