"""Black-box adaptation on sinusoids from Python: an attention aggregator reads (x, y) support pairs.

    python examples/blackbox_sinusoid.py [--steps 3000]
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl

from lightning_meta import BlackBoxAdaptation, EpisodicDataModule, SinusoidTasks
from lightning_meta.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    model = BlackBoxAdaptation(MLP(out_features=64, hidden=(64,)), feature_dim=64, aggregator="attention",
                               task_dim=32, hidden=64)
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25, train_episodes_per_epoch=25_000,
                            val_episodes=100, test_episodes=600, eval_meta_batch_size=100)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    h = model.task_vector(*next(iter(dm.test_dataloader()))[:2])
    print(f"test MSE {result['test/mse']:.3f} +- {result['test/mse_ci95']:.3f}; task vectors h_i: {tuple(h.shape)}")


if __name__ == "__main__":
    main()
