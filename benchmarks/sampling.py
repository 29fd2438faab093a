"""Episodes/s of the Omniglot 5-way 1-shot 15-query sampler (meta-batch 32), beside learn2learn.

    python benchmarks/sampling.py [--seconds 5]

Our side: ``EpisodicDataModule(OmniglotTasks(...)).train_dataloader()`` with 0 and 2 workers.
learn2learn's side (when importable, see scripts/install_learn2learn.sh): ``TaskDataset`` with
``NWays, KShots, LoadData, RemapLabels`` over the *same* meta-train tensors, 32 ``.sample()`` calls
stacked into a meta-batch. Prints a table and saves ``benchmarks/results/sampling.json``.
"""

from __future__ import annotations

import argparse

import torch
from common import omniglot_root, rate, save
from torch.utils.data import TensorDataset

from lightning_meta import EpisodicDataModule, OmniglotTasks

WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 15, 32


def ours(tasks: OmniglotTasks, workers: int, seconds: float) -> float:
    dm = EpisodicDataModule(tasks, meta_batch_size=META_BATCH, train_episodes_per_epoch=10**7, num_workers=workers)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())

    def step() -> int:
        next(iterator)
        return META_BATCH

    return rate(step, seconds, warmup=3)


def learn2learn_rate(tasks: OmniglotTasks, seconds: float) -> float | None:
    try:
        from learn2learn.data import MetaDataset, TaskDataset
        from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels
    except ImportError:
        return None
    classes = tasks._split_classes["train"]
    rows = tasks._examples[classes].reshape(-1)
    x = tasks._inputs[rows].float().div_(255.0)  # the same meta-train tensors, already float
    y = torch.arange(len(classes)).repeat_interleave(tasks._examples.shape[1])
    meta = MetaDataset(TensorDataset(x, y))
    transforms = [NWays(meta, WAYS), KShots(meta, SHOTS + QUERIES), LoadData(meta), RemapLabels(meta)]
    taskset = TaskDataset(meta, task_transforms=transforms, num_tasks=-1)

    def step() -> int:
        batch = [taskset.sample() for _ in range(META_BATCH)]
        torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        return META_BATCH

    return rate(step, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    tasks = OmniglotTasks(str(omniglot_root()), ways=WAYS, shots=SHOTS, queries=QUERIES)
    tasks.setup()
    results = {f"lightning_meta_workers{w}": ours(tasks, w, args.seconds) for w in (0, 2)}
    results["learn2learn_taskdataset"] = learn2learn_rate(tasks, args.seconds)
    base = results["learn2learn_taskdataset"]
    print(f"{'sampler':32s} {'episodes/s':>12s} {'x learn2learn':>14s}")
    for name, value in results.items():
        ratio = f"{value / base:.1f}x" if base and value else "n/a"
        print(f"{name:32s} {value or float('nan'):12.0f} {ratio:>14s}")
    ratios = {k: (v / base if base and v else None) for k, v in results.items()}
    save("sampling", {"setting": {"ways": WAYS, "shots": SHOTS, "queries": QUERIES, "meta_batch": META_BATCH},
                      "episodes_per_s": results, "ratio_vs_learn2learn": ratios})


if __name__ == "__main__":
    main()
