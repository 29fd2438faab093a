"""Sample and print one episodic meta-batch of sinusoid tasks (and Omniglot, given a root)."""

from __future__ import annotations

import argparse

from lightning_meta import EpisodicDataModule, OmniglotTasks, SinusoidTasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--omniglot", default=None, help="local Omniglot root (images_*.zip or folders)")
    args = parser.parse_args()
    sources = {"sinusoid": SinusoidTasks(shots=10, queries=10)}
    if args.omniglot:
        sources["omniglot 5-way 1-shot"] = OmniglotTasks(args.omniglot, ways=5, shots=1, queries=15)
    for name, tasks in sources.items():
        dm = EpisodicDataModule(tasks, meta_batch_size=32, train_episodes_per_epoch=320, seed=0)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        print(f"{name}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch._asdict().items()))


if __name__ == "__main__":
    main()
