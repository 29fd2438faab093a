"""The ``lightning-meta`` command: LightningCLI over any meta-learner and any task source."""

from __future__ import annotations

import os

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.data.datamodule import EpisodicDataModule


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves the full resolved config next to the run and logs it (model, data, trainer) as hyper-parameters.

    Example:
        >>> cli = MetaCLI(save_config_callback=LoggerSaveConfigCallback)  # doctest: +SKIP
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            config = self.config.as_dict()
            logger.log_hyperparams({k: config.get(k) for k in ("model", "data", "trainer", "optimizer",
                                                               "lr_scheduler", "seed_everything")})


class MetaCLI(LightningCLI):
    """``LightningCLI`` with ``MetaLearner`` subclasses as models and :class:`EpisodicDataModule` as data.

    Example:
        >>> cli = main(["--config", "examples/configs/sinusoid_maml.yaml"], run=False)  # doctest: +SKIP
        >>> cli.trainer.fit(cli.model, cli.datamodule)  # doctest: +SKIP
    """


def main(args: list[str] | None = None, run: bool = True) -> MetaCLI:
    """Entry point of ``lightning-meta`` / ``python -m lightning_meta`` (subcommands fit/validate/test/predict)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    return MetaCLI(
        model_class=MetaLearner,
        datamodule_class=EpisodicDataModule,
        subclass_mode_model=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
