"""MAML on sinusoids with two of Lightning's own tools, unchanged: the LR finder picks the outer (meta) learning rate,
and stochastic weight averaging (SWA) averages the weights of the last epochs.

    python examples/maml_swa_lr_finder.py [--epochs 4] [--steps 200] [--swa-from 3]

The finder sweeps the meta learning rate over ``--lr-steps`` steps and writes its suggestion into the learner's
``learning_rate`` (the injected optimizer's lr), which the training optimizer then starts from. Prints the
suggestion, the number of epochs SWA averaged and the test MSE of the averaged weights.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LambdaCallback, StochasticWeightAveraging
from pytorch_lightning.tuner import Tuner

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="training steps per epoch")
    parser.add_argument("--swa-from", type=int, default=3, help="the first epoch SWA averages (1-based)")
    parser.add_argument("--lr-steps", type=int, default=30, help="steps of the LR finder's sweep")
    parser.add_argument("--test-episodes", type=int, default=600)
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    model = MAML(MLP(), inner_lr=0.01, inner_steps=1, eval_inner_steps=5)
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25,
                            train_episodes_per_epoch=25 * args.steps, val_episodes=0,
                            test_episodes=args.test_episodes, eval_meta_batch_size=100)
    options = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    # sinusoid meta-batch losses vary several-fold from batch to batch: no early stop of the sweep on a jump
    finder = Tuner(pl.Trainer(max_steps=1, **options)).lr_find(model, datamodule=dm, num_training=args.lr_steps,
                                                                early_stop_threshold=None, update_attr=True)
    if finder.suggestion() is None:
        raise SystemExit("the LR finder had too few points for a suggestion: raise --lr-steps")
    started = []
    swa = StochasticWeightAveraging(swa_lrs=model.learning_rate, swa_epoch_start=args.swa_from)
    record = LambdaCallback(on_train_start=lambda t, m: started.append(t.optimizers[0].param_groups[0]["lr"]))
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[record, swa], **options)
    trainer.fit(model, dm)
    print(f"lr finder suggestion {finder.suggestion():.6g} -> optimizer lr {started[0]:.6g}")
    print(f"SWA averaged {int(swa.n_averaged)} epochs (from epoch {args.swa_from} of {args.epochs})")
    result = trainer.test(model, dm, verbose=False)[0]
    print(f"test/mse after 5 inner steps {result['test/mse']:.3f} +- {result['test/mse_ci95']:.3f} "
          f"(before adaptation {result['test/pre_mse']:.3f})")


if __name__ == "__main__":
    main()
