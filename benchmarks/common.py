"""Helpers shared by the benchmark scripts: paths, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: where results are saved: ``$LIGHTNING_META_RESULTS`` if set (e.g. a device run's $OUT), else ``benchmarks/results``
RESULTS = Path(os.environ.get("LIGHTNING_META_RESULTS", ROOT / "benchmarks" / "results"))


def omniglot_root() -> Path:
    return Path(os.environ.get("LIGHTNING_META_OMNIGLOT", ROOT.parent / "shared" / "data" / "omniglot"))


def rate(fn: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Items per second of ``fn`` (returns the items it processed), run for at least ``seconds``."""
    for _ in range(warmup):
        fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    os.replace(tmp, path)
    print(f"saved {path}")
    return path


def step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Bytes one call of ``step`` adds at its peak: CUDA ``max_memory_allocated`` after a reset, or on CPU the peak
    RSS during the step minus the RSS before it (run it in a fresh process: RSS is a process-wide peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = rss_kib("VmRSS")
    step()
    return (rss_kib("VmHWM") - before) * 1024


def rss_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
