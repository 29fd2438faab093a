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


#: errors of the machine's networking, not of the code under test: a DDP launch that hits one is retried once
RENDEZVOUS_ERRORS = ("Address already in use", "EADDRINUSE", "Connection refused", "Connection reset by peer",
                     "DistNetworkError", "Socket Timeout")


def run_script(name: str, *args: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/NAME`` in a fresh interpreter (DDP launchers re-execute their script).

    With ``check`` a non-zero exit fails the test, showing the output's head and tail, and a launch that
    failed on a port or connection error of the process group's rendezvous is first retried once (and
    says so); without it the result is returned as it is (for tests of failures).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    command = [sys.executable, str(REPO / "tests" / "scripts" / name), *args]
    for attempt in range(2):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=args[0] if args else None)
        rendezvous = check and proc.returncode != 0 and any(e in proc.stderr for e in RENDEZVOUS_ERRORS)
        if not rendezvous or attempt == 1:
            break
        print(f"{name}: rendezvous error, retrying once:\n{proc.stderr[-2000:]}")
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[:3000]}\n...\n{proc.stderr[-6000:]}")
    return proc
