"""Episodes/s of the Omniglot 5-way 1-shot 15-query sampler (meta-batch 32), beside learn2learn; and of the RGB
sources (miniImageNet, tieredImageNet, CIFAR-FS, FC100) on 5-way 5-shot 15-query meta-batches of 4.

    python benchmarks/sampling.py [--seconds 5] [--images-only | --omniglot-only] [--images-per-class 20]

Our side: ``EpisodicDataModule(OmniglotTasks(...)).train_dataloader()`` with 0 and 2 workers.
learn2learn's side (when importable, see scripts/install_learn2learn.sh): ``TaskDataset`` with
``NWays, KShots, LoadData, RemapLabels`` over the *same* meta-train tensors, 32 ``.sample()`` calls
stacked into a meta-batch. Prints a table and saves ``benchmarks/results/sampling.json``.

The RGB sources read synthetic copies written to a temporary folder (``lightning_meta.data.synthetic``: the real
class lists and layouts, ``--images-per-class`` random images per class instead of the real 600 or ~1,300), through
``EpisodicDataModule`` with 0 and 2 workers, normalization on, augmentation off and on; saved to
``benchmarks/results/sampling_images.json``. Sampling cost depends on the images drawn, not on the dataset size,
apart from page-cache misses on a cold cache (not measured here: the synthetic cache is warm).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import omniglot_root, rate, save
from torch.utils.data import TensorDataset

from lightning_meta import (
    CIFARFSTasks,
    EpisodicDataModule,
    FC100Tasks,
    MiniImageNetTasks,
    OmniglotTasks,
    TieredImageNetTasks,
)
from lightning_meta.data import synthetic

WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 15, 32


IMAGE_SHOTS, IMAGE_META_BATCH = 5, 4


def ours(tasks, workers: int, seconds: float, meta_batch: int = META_BATCH) -> float:
    dm = EpisodicDataModule(tasks, meta_batch_size=meta_batch, train_episodes_per_epoch=10**7, num_workers=workers)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())

    def step() -> int:
        next(iterator)
        return meta_batch

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


def image_rates(seconds: float, per_class: int) -> dict[str, dict[str, float]]:
    """Episodes/s of each RGB source on a synthetic copy, with 0 and 2 workers, augmentation off and on."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cifar = synthetic.synthetic_cifar100(base / "cifar", images_per_class=per_class)
        sources = {
            "miniimagenet (pickle)": (MiniImageNetTasks,
                                      synthetic.synthetic_miniimagenet(base / "mini", images_per_class=per_class)),
            "tieredimagenet (npz)": (TieredImageNetTasks, synthetic.synthetic_tieredimagenet(
                base / "tiered", "npz", images_per_class=per_class)),
            "cifar_fs (archive)": (CIFARFSTasks, cifar),
            "fc100 (archive)": (FC100Tasks, cifar),
        }
        for name, (cls, root) in sources.items():
            for augment in (False, True):
                tasks = cls(str(root), ways=WAYS, shots=IMAGE_SHOTS, queries=QUERIES, augment=augment,
                            cache_dir=str(base / "cache"))
                tasks.setup()
                for workers in (0, 2):
                    key = f"workers{workers}" + ("_augment" if augment else "")
                    results.setdefault(name, {})[key] = ours(tasks, workers, seconds, IMAGE_META_BATCH)
    return results


def print_images(results: dict[str, dict[str, float]], per_class: int) -> None:
    print(f"\nRGB sources, {WAYS}-way {IMAGE_SHOTS}-shot {QUERIES}-query, meta-batch {IMAGE_META_BATCH}: "
          f"synthetic copies with {per_class} images per class (real: 600, ~1,300 for tieredImageNet), episodes/s")
    columns = ["workers0", "workers2", "workers0_augment", "workers2_augment"]
    print(f"{'source':24s}" + "".join(f"{c:>18s}" for c in columns))
    for name, row in results.items():
        print(f"{name:24s}" + "".join(f"{row[c]:18.1f}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--images-only", action="store_true")
    parser.add_argument("--omniglot-only", action="store_true")
    args = parser.parse_args()
    if not args.omniglot_only:
        images = image_rates(args.seconds, args.images_per_class)
        print_images(images, args.images_per_class)
        save("sampling_images", {"setting": {"ways": WAYS, "shots": IMAGE_SHOTS, "queries": QUERIES,
                                             "meta_batch": IMAGE_META_BATCH, "synthetic_images_per_class":
                                             args.images_per_class}, "episodes_per_s": images})
    if args.images_only:
        return
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
