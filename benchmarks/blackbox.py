"""Black-box adaptation beside MAML on the same data and the same wall-clock budget.

    python benchmarks/blackbox.py [--budget-sinusoid 60] [--budget-omniglot 120]

For each setting both learners train for the same number of seconds (``Trainer(max_time=...)``) on the same
task stream, then are tested on the same 600 episodes. Reports training tasks/s, steps reached and test
MSE / accuracy with 95% CIs. Saves ``benchmarks/results/blackbox.json``.
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from common import omniglot_root, save

from lightning_meta import MAML, BlackBoxAdaptation, EpisodicDataModule, OmniglotTasks, SinusoidTasks
from lightning_meta.models import MLP, Conv4


def learners(setting: str) -> dict:
    if setting == "sinusoid":
        return {
            "blackbox_attention": lambda: BlackBoxAdaptation(MLP(out_features=64, hidden=(64,)), feature_dim=64,
                                                             aggregator="attention", task_dim=32, hidden=64),
            "maml_second_order": lambda: MAML(MLP(), inner_lr=0.01, inner_steps=1, eval_inner_steps=10),
        }
    return {
        "blackbox_attention": lambda: BlackBoxAdaptation(Conv4(embed_only=True), aggregator="attention", ways=5,
                                                         task_dim=64, hidden=128),
        "maml_second_order": lambda: MAML(Conv4(out_features=5), inner_lr=0.4, inner_steps=1, eval_inner_steps=3),
    }


def datamodule(setting: str) -> EpisodicDataModule:
    if setting == "sinusoid":
        tasks, batch = SinusoidTasks(shots=10, queries=10), 25
    else:
        tasks, batch = OmniglotTasks(str(omniglot_root()), ways=5, shots=1, queries=15), 32
    return EpisodicDataModule(tasks, meta_batch_size=batch, train_episodes_per_epoch=10**7, val_episodes=0,
                              test_episodes=600, eval_meta_batch_size=50, seed=0)


def run(setting: str, name: str, build, budget: float) -> dict:
    torch.manual_seed(0)
    model, dm = build(), datamodule(setting)
    trainer = pl.Trainer(accelerator="cpu", max_time={"seconds": budget}, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, dm)
    elapsed = time.perf_counter() - start
    result = trainer.test(model, dm, verbose=False)[0]
    metric = "mse" if setting == "sinusoid" else "acc"
    return {"steps": trainer.global_step, "tasks_per_s": trainer.global_step * dm.meta_batch_size / elapsed,
            metric: result[f"test/{metric}"], f"{metric}_ci95": result[f"test/{metric}_ci95"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-sinusoid", type=float, default=60)
    parser.add_argument("--budget-omniglot", type=float, default=120)
    args = parser.parse_args()
    budgets = {"sinusoid": args.budget_sinusoid, "omniglot_5way1shot": args.budget_omniglot}
    results = {s: {n: run(s, n, b, budgets[s]) for n, b in learners(s).items()} for s in budgets}
    for setting, rows in results.items():
        print(f"\n{setting} ({budgets[setting]:.0f} s of training each)")
        for name, row in rows.items():
            metric = "mse" if "mse" in row else "acc"
            print(f"  {name:20s} {row['tasks_per_s']:8.1f} tasks/s  {row['steps']:6d} steps  "
                  f"test {metric} {row[metric]:.3f} +- {row[metric + '_ci95']:.3f}")
    save("blackbox", {"budget_seconds": budgets, "results": results})


if __name__ == "__main__":
    main()
