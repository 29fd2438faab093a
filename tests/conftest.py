"""Shared fixtures: the Omniglot root, an identifiable toy dataset, a tiny Trainer, subprocess helpers.

The tests live in folders that mirror the package (``tests/algorithms``, ``tests/functional``, ``tests/data``,
``tests/models``, plus ``tests/integration`` for whole programs and Lightning features); this file puts ``tests/``
and ``tests/scripts`` on ``sys.path``, so that every test imports the helper modules kept here (``conftest``,
``maml_oracles``, ``l2l``, ``recorder``, ``wandb_reader``) and the jobs of ``tests/scripts`` by name."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch.utils.data import TensorDataset

if TYPE_CHECKING:
    import pytorch_lightning as pl

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
for _path in (TESTS / "scripts", TESTS):  # where pytest has not put them already
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
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


def tiny_trainer(**overrides) -> pl.Trainer:
    """The tests' ``pytorch_lightning.Trainer``: one CPU device, no logger, no checkpoints, no progress bar, no
    model summary; every keyword overrides (or adds to) those. Everything else is Lightning's default, the sanity
    check's two validation batches included (``num_sanity_val_steps=0`` skips it). Lightning is imported here, at
    the first call, not when a test module that needs no Trainer imports this file."""
    import pytorch_lightning as pl

    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    return pl.Trainer(**{**options, **overrides})


class ListDataset(torch.utils.data.Dataset):
    """A map-style dataset over a list of ``(input, label)`` items (any types: no tensor of labels)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def mixed_sizes() -> ListDataset:
    """40 images of 10 classes, 1x28x28 except example 7 (1x32x32): a dataset a resize transform would fix."""
    return ListDataset([(torch.zeros(1, 32 if i == 7 else 28, 32 if i == 7 else 28), i % 10) for i in range(40)])


def run_user_file(source: str, cwd: Path, name: str = "train.py", stdin: bool = False, timeout: float = 240,
                  **env: str) -> subprocess.CompletedProcess:
    """Save ``source`` as ``CWD/NAME`` and run it as a user does, ``python NAME`` (or ``python - < NAME``), in a fresh
    interpreter with its own ``MASTER_PORT`` (and ``env``)."""
    script = cwd / name
    script.write_text(source)
    command = [sys.executable, "-"] if stdin else [sys.executable, str(script)]
    with reserved_port() as port, open(script) as code:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=code if stdin else None, env=script_env(MASTER_PORT=str(port), **env))


def launch_nodes(command: list[str], cwd: Path, nodes: int = 2, timeout: float = 300,
                 **env: str) -> list[subprocess.CompletedProcess]:
    """Start ``nodes`` launches of ``command`` at once, as separate machines would, with Lightning's environment
    for a cluster without a scheduler (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, plus ``env``); wait for all
    of them. Their output goes to files (CWD/node{n}.log), so that no launch blocks on a full pipe while another
    waits; it comes back as each process's ``stderr`` (stdout and stderr interleaved)."""
    logs = [cwd / f"node{node}.log" for node in range(nodes)]
    with reserved_port() as port, ExitStack() as files:
        procs = [subprocess.Popen(command, cwd=cwd, stdout=files.enter_context(open(log, "w")),
                                  stderr=subprocess.STDOUT, text=True,
                                  env=script_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                                 WORLD_SIZE=str(nodes), NODE_RANK=str(node), **env))
                 for node, log in enumerate(logs)]
        deadline = time.monotonic() + timeout
        try:
            codes = [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return [subprocess.CompletedProcess(proc.args, code, "", log.read_text())
            for proc, code, log in zip(procs, codes, logs)]


def index_dataset(classes: int = 20, per_class: int = 10, dim: int = 3) -> TensorDataset:
    """Example ``i`` has input ``[i, i, ...]`` and label ``i % classes``: tasks are identifiable."""
    n = classes * per_class
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, dim)
    return TensorDataset(x, torch.arange(n) % classes)


#: the TCP ports a launch may use as MASTER_PORT: below the kernel's ephemeral range, so that no outgoing
#: connection (of this machine's other processes, or of gloo itself) and no ``bind(port 0)`` can take one, and
#: below torchrun's defaults (29400, 29500)
PORT_RANGE = (20000, 29000)
PORT_LOCKS = Path(tempfile.gettempdir()) / "lightning_meta_test_ports"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free TCP port, held for this launch alone until the ``with`` block ends.

    Lightning's own choice (bind port 0, close, hand the number to the ranks) races: until rank 0's TCPStore
    binds it, seconds later on a busy machine, the kernel may give the same ephemeral port to any other socket.
    Here the port lies outside the ephemeral range, and an exclusive lock file per port keeps every other launch
    of this test suite (other pytest sessions, ``scripts/stress_ddp.sh``) off it while it is in use; the bind
    check (with ``SO_REUSEADDR``, as the TCPStore binds) skips ports that anything else listens on.
    """
    low, high = PORT_RANGE[0], min(PORT_RANGE[1], _ephemeral_low())
    if high - low < 100:
        raise RuntimeError(f"no port range below the ephemeral ports (from {_ephemeral_low()}) for MASTER_PORT")
    PORT_LOCKS.mkdir(exist_ok=True)
    start = random.Random(os.getpid() ^ time.monotonic_ns()).randrange(low, high)
    for port in [*range(start, high), *range(low, start)]:
        with open(PORT_LOCKS / f"{port}.lock", "w") as lock:  # closing it releases the lock
            if _locked(lock) and _bindable(port):
                yield port
                return
    raise RuntimeError(f"no free TCP port in {low}..{high - 1}")


def _locked(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _bindable(port: int) -> bool:
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


#: a cluster's or launcher's variables that would make a launched script join (or think it is) another job
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
            "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def script_env(**extra: str) -> dict[str, str]:
    """This environment without DIST_ENV and SLURM_* (the tests launch their own ranks), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith("SLURM_")}
    return {**env, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **extra}


def run_script(name: str, *args: str, timeout: int = 300, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/NAME`` in a fresh interpreter (DDP launchers re-execute their script).

    The launch gets its own ``MASTER_PORT`` (:func:`reserved_port`), so that DDP's rendezvous cannot meet a
    port another process took. With ``check`` a non-zero exit fails the test, showing the output's head and
    tail; without it the result is returned as it is (for tests of failures).
    """
    command = [sys.executable, str(REPO / "tests" / "scripts" / name), *args]
    with reserved_port() as port:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**script_env(MASTER_PORT=str(port)), **(env or {})}, cwd=args[0] if args else None)
    if check and proc.returncode != 0:  # any rank's non-zero exit, the upstream gloo abort included
        raise AssertionError(failure_report(name, proc))
    return proc


def failure_report(name: str, proc: subprocess.CompletedProcess) -> str:
    return (f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[:3000]}\n...\n{proc.stderr[-6000:]}")
