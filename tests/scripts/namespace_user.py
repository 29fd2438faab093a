"""User code as people write it with either Lightning namespace: fit (with a checkpoint callback and a CSV
logger of that namespace), validate, test, resume from the checkpoint; prints the results as JSON.

usage: namespace_user.py L|pl OUT_DIR DEVICES META_BATCH
"""

import json
import sys
from functools import partial

if sys.argv[1] == "L":  # `import lightning as L` sorts before lightning_meta
    import lightning as L
    import torch

    from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
    from lightning_meta.models import MLP

    Trainer, ModelCheckpoint, CSVLogger = L.Trainer, L.pytorch.callbacks.ModelCheckpoint, L.pytorch.loggers.CSVLogger
else:  # ruff/isort put lightning_meta before pytorch_lightning
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
    from lightning_meta.models import MLP

    Trainer = pl.Trainer


def build(meta_batch: int):
    torch.manual_seed(0)
    model = MAML(MLP(hidden=(16, 16)), inner_lr=0.05, inner_steps=2, eval_inner_steps=3,
                 optimizer=partial(torch.optim.Adam, lr=1e-2))
    dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=meta_batch, train_episodes_per_epoch=64,
                            val_episodes=10, test_episodes=20, eval_meta_batch_size=5, seed=1)
    return model, dm


if __name__ == "__main__":
    out, devices, meta_batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    options = dict(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                   enable_progress_bar=False, enable_model_summary=False)
    model, dm = build(meta_batch)
    trainer = Trainer(max_steps=3, logger=CSVLogger(out), callbacks=[ModelCheckpoint(dirpath=out, save_last=True)],
                      **options)
    trainer.fit(model, dm)
    val = trainer.validate(model, dm, verbose=False)[0]
    test = trainer.test(model, dm, verbose=False)[0]
    resumed, dm2 = build(meta_batch)
    Trainer(max_steps=5, logger=False, enable_checkpointing=False, **options).fit(resumed, dm2,
                                                                                  ckpt_path=f"{out}/last.ckpt")
    if trainer.global_rank == 0:
        from lightning_meta._lightning import BACKEND

        weights = torch.cat([p.detach().flatten() for p in resumed.parameters()])
        print("RESULT " + json.dumps({"backend": BACKEND, "val": val, "test": test, "weights": weights.tolist()}))
