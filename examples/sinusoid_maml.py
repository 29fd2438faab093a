"""The main job: MAML on the sinusoid regression family (Finn et al., 2017), about two minutes on 2 CPU cores.

    python examples/sinusoid_maml.py [--steps 3000] [--meta-gradient second_order|first_order|hvp]

MLP 1-40-40-1 (ReLU), K=10 support and 10 query points, inner lr 0.01 with 1 inner step, meta-batch 25,
Adam 1e-3. Prints the test MSE over 600 tasks before adaptation and after 1 and 10 inner steps.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--meta-gradient", default="second_order", choices=["second_order", "first_order", "hvp"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pl.seed_everything(args.seed, verbose=False)
    model = MAML(MLP(), inner_lr=0.01, inner_steps=1, eval_inner_steps=10, meta_gradient=args.meta_gradient)
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25, train_episodes_per_epoch=25_000,
                            val_episodes=100, test_episodes=600, eval_meta_batch_size=100, seed=args.seed)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         val_check_interval=500, check_val_every_n_epoch=None, enable_model_summary=False,
                         enable_progress_bar=False)
    trainer.fit(model, dm)
    print("\nSinusoid MAML, test MSE over 600 tasks (mean +- 95% CI):")
    for steps in (1, 10):
        model.eval_inner_steps = steps
        result = trainer.test(model, dm, verbose=False)[0]
        if steps == 1:
            print(f"  before adaptation     {result['test/pre_mse']:.3f} +- {result['test/pre_mse_ci95']:.3f}")
        print(f"  after {steps:2d} inner step{'s' if steps > 1 else ' '} {result['test/mse']:.3f} "
              f"+- {result['test/mse_ci95']:.3f}")


if __name__ == "__main__":
    main()
