"""MAML on Omniglot 5-way 1-shot with Lightning Fabric, from the functional core alone (no LightningModule).

    python examples/fabric_maml.py --root ../shared/data/omniglot [--steps 1000] [--devices 2 --strategy ddp]

`lightning_meta.functional.meta_objective` is the whole algorithm: it returns a loss whose backward is the
meta-gradient (second-order, first-order or HVP). The objective is computed inside a module's `forward`, so
that under DDP Fabric's wrapper sees the forward and all-reduces the meta-gradient. The tasks come from
`EpisodicDataModule`'s loaders (each rank its own shard when a process group is running). Needs nothing
but this package (Fabric ships with Lightning).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from lightning_meta import EpisodicDataModule, OmniglotTasks, TaskBatch
from lightning_meta.functional import MetaObjective, TaskLoss, meta_objective, query_trajectory
from lightning_meta.models import Conv4
from lightning_meta.models.norm import transductive_batch_norm

try:  # the unified package, else the standalone one that pytorch-lightning installs
    from lightning.fabric import Fabric
except ImportError:
    from lightning_fabric import Fabric


class MetaObjectiveModule(nn.Module):
    """``forward(batch)`` is the meta-objective of ``model`` on a meta-batch (what DDP must see as forward)."""

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int, mode: str) -> None:
        super().__init__()
        self.model, self.inner_lr, self.inner_steps, self.mode = model, inner_lr, inner_steps, mode

    def forward(self, batch: TaskBatch) -> MetaObjective:
        return meta_objective(TaskLoss(self.model, F.cross_entropy), dict(self.model.named_parameters()), batch,
                              self.inner_lr, self.inner_steps, self.mode)


def train(fabric: Fabric, dm: EpisodicDataModule, model: nn.Module, steps: int, inner_lr: float = 0.4,
          inner_steps: int = 1, mode: str = "second_order", lr: float = 1e-3) -> list[float]:
    """``steps`` meta-updates with Adam; returns the mean query loss of each meta-batch (this rank's)."""
    transductive_batch_norm(model)  # batch statistics in every forward, as in the MAML paper
    learner = MetaObjectiveModule(model, inner_lr, inner_steps, mode)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    learner, optimizer = fabric.setup(learner, optimizer)
    dm.setup("fit")
    loader = fabric.setup_dataloaders(dm.train_dataloader(), use_distributed_sampler=False)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            objective = learner(batch)
            fabric.backward(objective.loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(objective.query_losses.mean()))
            if len(losses) == steps:
                break
    return losses


def evaluate(fabric: Fabric, dm: EpisodicDataModule, model: nn.Module, inner_lr: float, steps: int) -> float:
    """Query accuracy after ``steps`` inner steps, averaged over this rank's test episodes."""
    dm.setup("test")
    correct, total = 0.0, 0
    for batch in fabric.setup_dataloaders(dm.test_dataloader(), use_distributed_sampler=False):
        _, outputs = query_trajectory(TaskLoss(model, F.cross_entropy), dict(model.named_parameters()), batch,
                                      inner_lr, steps, at=[steps])[steps]
        correct += float((outputs.argmax(-1) == batch.query_y).float().sum())
        total += batch.query_y.numel()
    return correct / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--mode", default="second_order", choices=["second_order", "first_order", "hvp"])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
                    precision=args.precision)
    fabric.launch()
    fabric.seed_everything(0)
    dm = EpisodicDataModule(OmniglotTasks(args.root, ways=5, shots=1, queries=15), meta_batch_size=args.meta_batch,
                            train_episodes_per_epoch=32_000, test_episodes=args.test_episodes, num_workers=2)
    model = Conv4(out_features=5)
    losses = train(fabric, dm, model, args.steps, mode=args.mode)
    accuracy = evaluate(fabric, dm, model, inner_lr=0.4, steps=3)
    fabric.print(f"query loss: first {losses[0]:.3f}, last {losses[-1]:.3f}; "
                 f"test accuracy after 3 inner steps (rank 0's episodes): {100 * accuracy:.1f} %")


if __name__ == "__main__":
    main()
