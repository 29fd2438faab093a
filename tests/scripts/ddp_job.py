"""The jobs of the multi-process tests (tests/integration/test_ddp.py) and their one-device oracles.

Every multi-process script builds its job here, and the test builds the same job on one device with the
doubled meta-batch: the DDP ranks together see exactly the tasks the one device sees (the training stream is
a function of the global meta-batch index), so weights and metrics must agree.

:class:`SaveResults` writes each rank's results from inside the rank (the only place they exist under
``ddp_spawn``), completely (written to a temporary name, then renamed), and then waits at a barrier: no rank
leaves a ``fit``/``validate``/``test`` call, and no process can exit, before every rank's file is whole.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from blackbox_job import build as build_blackbox
from maml_job import build as build_maml
from maml_job import trainer
from torch.utils.data import TensorDataset

from lightning_meta import IMAML, MAML, ClassificationTasks, EpisodicDataModule, ProtoNet, Reptile, SinusoidTasks
from lightning_meta.models import MLP, Conv4

#: odd numbers of episodes in meta-batches of 10, so that the two ranks' shards differ in size and in number
#: of batches: val 41 -> rank 0 has 21 episodes (3 batches), rank 1 has 20 (2 batches); test 21 -> rank 0 has
#: 11 (2 batches), rank 1 has 10 (1 batch)
VAL_EPISODES, TEST_EPISODES, EVAL_META_BATCH = 41, 21, 10
STEPS = 3
CURVE_STEPS = 3  # eval_inner_steps of the MAML jobs: adaptation curves over 0..3 inner steps


def build(learner: str, meta_batch: int, mode: str = "second_order"):
    """``(model, datamodule)`` for ``learner`` ``"maml"`` (meta-gradient ``mode``, adaptation curve on) or
    ``"blackbox"``: the initial weights and the sinusoid task stream (seed 3) of ``maml_job``/``blackbox_job``,
    with the odd val/test sets above; the same whatever the world size."""
    tasks = SinusoidTasks(shots=5, queries=5)
    if learner == "maml":
        model, _ = build_maml(meta_batch, mode, adaptation_curve=True, eval_inner_steps=CURVE_STEPS)
    elif learner == "blackbox":
        model, _ = build_blackbox(meta_batch)
    else:
        model, tasks = build_other(learner)
    dm = EpisodicDataModule(tasks, meta_batch_size=meta_batch, train_episodes_per_epoch=1000,
                            val_episodes=VAL_EPISODES, test_episodes=TEST_EPISODES,
                            eval_meta_batch_size=EVAL_META_BATCH, seed=3)
    return model, dm


def image_tasks(seed: int) -> ClassificationTasks:
    """3-way 1-shot tasks over 40 synthetic 16x16 classes (a noisy copy of a random centre per class)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 1, 16, 16, generator=g).repeat_interleave(6, 0) + 0.3 * torch.rand(240, 1, 16, 16, generator=g)
    return ClassificationTasks(TensorDataset(x, torch.arange(40).repeat_interleave(6)), ways=3, shots=1, queries=2,
                               split_fractions=(0.5, 0.25, 0.25))


def build_other(learner: str):
    """``(model, task source)`` of the ``"reptile"``, ``"imaml"``, ``"maml_pp"`` and ``"protonet"`` jobs (SGD outer
    steps)."""
    torch.manual_seed(0)
    sgd = partial(torch.optim.SGD, lr=0.05)
    curve = {"eval_inner_steps": CURVE_STEPS, "adaptation_curve": True, "optimizer": sgd}
    if learner == "reptile":
        return Reptile(MLP(hidden=(16, 16)), inner_lr=0.01, inner_steps=2, **curve), SinusoidTasks(shots=5, queries=5)
    if learner == "imaml":
        model = IMAML(MLP(hidden=(16, 16), activation="tanh"), inner_lr=0.02, inner_steps=3, lam=1.0, cg_steps=2,
                      **curve)
        return model, SinusoidTasks(shots=5, queries=5)
    if learner == "maml_pp":  # MAML++ options: LSLR, MSL, DA (first-order in epoch 0) and per-step BatchNorm
        tasks = image_tasks(seed=1)
        model = MAML(Conv4(out_features=3, hidden=8, image_size=16), inner_lr=0.1, inner_steps=2,
                     learn_inner_lr="per_step", multi_step_loss=True, first_order_epochs=1, batch_norm="per_step",
                     **{**curve, "optimizer": partial(torch.optim.SGD, lr=0.5)})
        return model, tasks
    if learner == "protonet":
        tasks = image_tasks(seed=0)
        # no BatchNorm: running statistics are per rank under DDP (SyncBatchNorm is the Lightning way to share them)
        encoder = Conv4(embed_only=True, hidden=8, image_size=16, batch_norm=False)
        return ProtoNet(encoder, optimizer=partial(torch.optim.SGD, lr=20.0)), tasks  # its gradients are ~1e-4
    raise ValueError(f"unknown learner {learner!r}")


def fit_trainer(steps: int = STEPS, **kwargs) -> pl.Trainer:
    """``steps`` optimizer steps, then one validation over the whole val set (after the last step)."""
    return trainer(max_steps=steps, val_check_interval=steps, **kwargs)


def task_key(support_x: torch.Tensor, support_y: torch.Tensor) -> str:
    """A task's identity: a digest of its support set (sinusoid inputs are continuous draws, never repeated)."""
    digest = hashlib.sha1()
    for t in (support_x, support_y):
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def _metrics(trainer: pl.Trainer, stage: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}


class SaveResults(pl.Callback):
    """Writes ``OUT/{tag}-{stage}.rank{r}.pt`` (``stage``: fit, validate, test) on every rank at the end of each
    call, then waits for all ranks: weights, synced metrics, adaptation curves, train task keys, world info."""

    def __init__(self, out: str | Path | None, tag: str) -> None:
        self.out, self.tag = None if out is None else Path(out), tag  # None: record the train tasks only
        self.train_tasks: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train_tasks += [task_key(batch.support_x[t], batch.support_y[t]) for t in range(batch.num_tasks)]

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.out is None:
            return
        result = {
            "stage": stage, "global_rank": trainer.global_rank, "world_size": trainer.world_size,
            "node_rank": trainer.node_rank, "local_rank": trainer.local_rank, "pid": os.getpid(),
            "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "val": _metrics(trainer, "val"), "test": _metrics(trainer, "test"),
            "curves": dict(getattr(pl_module, "adaptation_curves", {})), "train_tasks": list(self.train_tasks),
            "global_step": trainer.global_step,
        }
        path = self.out / f"{self.tag}-{stage}.rank{trainer.global_rank}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(result, tmp)
        os.replace(tmp, path)  # complete or absent, never half-written
        trainer.strategy.barrier("lightning_meta_tests_results_saved")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "fit")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._save(trainer, pl_module, "validate")

    def on_test_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "test")


def load_ranks(out: str | Path, tag: str, stage: str, world_size: int = 2) -> list[dict]:
    """The files :class:`SaveResults` wrote, one per rank, in rank order."""
    return [torch.load(Path(out) / f"{tag}-{stage}.rank{r}.pt", weights_only=False) for r in range(world_size)]
