"""Resident memory of the memory-mapped image cache with DataLoader workers, on a synthetic miniImageNet.

    python scripts/measure_cache_memory.py [--images-per-class 300] [--workers 4] [--batches 150]

Writes a synthetic miniImageNet (pickled-cache layout, 100 classes, 84x84 RGB; 600 images per class is the real
size, 1.27 GB decoded) to a temporary folder, decodes it into the cache, then draws ``--batches`` meta-batches
(4 tasks of 5-way 5-shot 15-query) through ``EpisodicDataModule`` with ``--workers`` forkserver workers, and prints
RSS and PSS (``/proc/<pid>/smaps_rollup``) of the main process and each worker, with their sum. File-backed pages of
the cache are counted in every process's RSS that touched them but exist once: PSS splits them among the sharers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lightning_meta import EpisodicDataModule, MiniImageNetTasks
from lightning_meta.data.synthetic import synthetic_miniimagenet


def memory(pid: int | str) -> dict[str, float]:
    """MiB: ``rss`` with its anonymous / file / shmem parts (``/proc/PID/status``) and ``pss`` (``smaps_rollup``)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[{"VmRSS": "rss"}.get(key, key.lower())] = int(value.split()[0]) / 1024
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images-per-class", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = synthetic_miniimagenet(Path(tmp) / "mini", "pickle", images_per_class=args.images_per_class)
        tasks = MiniImageNetTasks(str(root), ways=5, shots=5, queries=15, cache_dir=str(Path(tmp) / "cache"))
        tasks.setup()
        size_mb = tasks.cache_file.stat().st_size / 2**20
        print(f"synthetic miniImageNet: 100 classes x {args.images_per_class} images (the real one has 600), "
              f"cache {size_mb:.0f} MiB, written and decoded in {time.perf_counter() - start:.0f} s")
        dm = EpisodicDataModule(tasks, meta_batch_size=4, train_episodes_per_epoch=4 * args.batches,
                                num_workers=args.workers)
        dm.setup("fit")
        iterator = iter(dm.train_dataloader())
        images = 0
        for batch in iterator:
            images += batch.support_x.shape[0] * (batch.support_x.shape[1] + batch.query_x.shape[1])
        pids = {"main": "self", **{f"worker {i}": w.pid for i, w in enumerate(iterator._workers)}}
        rows = {name: memory(pid) for name, pid in pids.items()}
        print(f"after {args.batches} meta-batches ({images} images drawn) with {args.workers} workers:")
        print(f"{'process':10s} {'RSS':>8s} {'anon':>8s} {'file':>8s} {'shmem':>8s} {'PSS':>8s}   (MiB)")
        for name, m in rows.items():
            print(f"{name:10s} {m['rss']:8.0f} {m['rssanon']:8.0f} {m['rssfile']:8.0f} {m['rssshmem']:8.0f} "
                  f"{m.get('pss', float('nan')):8.0f}")
        total = {k: sum(m.get(k, 0.0) for m in rows.values()) for k in ("rss", "rssanon", "rssfile", "rssshmem", "pss")}
        print(f"{'sum':10s} {total['rss']:8.0f} {total['rssanon']:8.0f} {total['rssfile']:8.0f} "
              f"{total['rssshmem']:8.0f} {total['pss']:8.0f}")
        print(f"dataset (cache) {size_mb:.0f} MiB; a private copy per process would add {size_mb:.0f} MiB per worker")
        del iterator


if __name__ == "__main__":
    main()
