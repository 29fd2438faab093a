"""The ``lightning-meta`` command: LightningCLI over any meta-learner and any task source."""

from __future__ import annotations

import os

from lightning_meta._lightning import submodule
from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.checkpoints import check_checkpoint_file
from lightning_meta.data.datamodule import EpisodicDataModule

LightningCLI, SaveConfigCallback = submodule("cli").LightningCLI, submodule("cli").SaveConfigCallback


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves the full resolved config next to the run and logs it (model, data, trainer) as hyper-parameters.

    Examples:
        >>> cli = main(["fit", "--config", "examples/configs/sinusoid_maml.yaml"])  # doctest: +SKIP
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            config = self.config.as_dict()
            logger.log_hyperparams({k: config.get(k) for k in ("model", "data", "trainer", "seed_everything")})


class MetaLightningCLI(LightningCLI):
    """LightningCLI that checks ``--ckpt_path`` as soon as the arguments are parsed (LightningCLI then reads the
    file's hyper-parameters with ``torch.load``, before anything is built): a file that is not a PyTorch checkpoint
    is an [UnreadableCheckpointError][lightning_meta.checkpoints.UnreadableCheckpointError] naming it, not torch's
    unpickling error."""

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint_file(self.config[subcommand].get("ckpt_path"))


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and with ``run=True`` run) the CLI in-process; returns it, e.g. to read ``cli.trainer`` in a notebook.

    The console script is [cli_main][lightning_meta.cli.cli_main], not this function: a console script passes
    its function's return value to ``sys.exit``, and a returned object is an exit status of 1.
    """
    os.environ.setdefault("WANDB_MODE", "offline")
    return MetaLightningCLI(
        model_class=MetaLearner,
        datamodule_class=EpisodicDataModule,
        subclass_mode_model=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the optimizer is the model's `optimizer` argument: one place to set it
        args=args,
        run=run,
    )


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-meta`` and ``python -m lightning_meta`` (subcommands fit/validate/test/predict).

    Returns ``None``, so the process exits with status 0 after a good run; a bad option exits with
    jsonargparse's usage error (status 2) and an exception in training with its traceback (status 1).
    """
    main(args)


if __name__ == "__main__":
    cli_main()
