"""A resumable training job for the kill -9 tests: MAML or black-box on sinusoids, Adam, accumulation 2,
validation inside and at the end of epochs, a checkpoint after every optimizer step.

usage: resume_job.py OUT LEARNER WORKERS DEVICES MAX_STEPS [--kill-at STEP] [--resume CKPT]

``--kill-at STEP`` SIGKILLs the job's whole process group (ranks and DataLoader workers) when optimizer step
``STEP + 1`` is about to start, i.e. right after step ``STEP``'s checkpoint was written, as a scheduler's
preemption would. Without it the job runs to ``MAX_STEPS`` and rank 0 saves the weights to OUT/final.pt.
"""

from __future__ import annotations

import argparse
import os
import signal
from functools import partial

import torch

from lightning_meta import MAML, BlackBoxAdaptation, EpisodicDataModule, SinusoidTasks
from lightning_meta._lightning import pl  # whichever namespace LIGHTNING_META_BACKEND picks (CI runs both)
from lightning_meta.models import MLP

BATCHES_PER_EPOCH = 10  # 5 optimizer steps per epoch with accumulate_grad_batches=2


class KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        accumulating = batch_idx % trainer.accumulate_grad_batches != 0
        if trainer.global_step == self.step and not accumulating and trainer.global_rank == 0:
            os.killpg(0, signal.SIGKILL)


def build(learner: str, devices: int):
    torch.manual_seed(0)
    if learner == "maml":
        model = MAML(MLP(hidden=(16, 16)), inner_lr=0.05, inner_steps=2, optimizer=partial(torch.optim.Adam, lr=1e-2))
    else:
        model = BlackBoxAdaptation(MLP(out_features=16, hidden=(16,)), feature_dim=16, aggregator="attention",
                                   task_dim=8, hidden=16, optimizer=partial(torch.optim.Adam, lr=1e-2))
    meta_batch = 4
    dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=meta_batch,
                            train_episodes_per_epoch=BATCHES_PER_EPOCH * meta_batch * devices, val_episodes=6,
                            test_episodes=0, eval_meta_batch_size=3, num_workers=ARGS.workers, seed=5,
                            worker_start_method=os.environ.get("LIGHTNING_META_WORKER_START"))  # stress_workers.sh
    return model, dm


def main() -> None:
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=ARGS.out, every_n_train_steps=1, save_top_k=-1, save_last=True)]
    if ARGS.kill_at is not None:
        callbacks.append(KillAt(ARGS.kill_at))
    model, dm = build(ARGS.learner, ARGS.devices)
    strategy = "ddp" if ARGS.devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=ARGS.devices, strategy=strategy, max_steps=ARGS.max_steps,
                         accumulate_grad_batches=2, val_check_interval=4, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         deterministic=True)
    trainer.fit(model, dm, ckpt_path=ARGS.resume)
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), os.path.join(ARGS.out, "final.pt"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("learner", choices=["maml", "blackbox"])
    parser.add_argument("workers", type=int)
    parser.add_argument("devices", type=int)
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume")
    ARGS = parser.parse_args()
    main()
