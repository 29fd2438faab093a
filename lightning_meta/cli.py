"""The ``lightning-meta`` command: LightningCLI over any meta-learner and any task source."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lightning_meta._lightning import submodule
from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.callbacks import BasePredictionWriter, PredictionWriter
from lightning_meta.checkpoints import (
    check_checkpoint_file,
    peek_checkpoint,
    read_lightning_checkpoint,
    recorded_learner,
)
from lightning_meta.data.datamodule import EpisodicDataModule

LightningCLI, SaveConfigCallback = submodule("cli").LightningCLI, submodule("cli").SaveConfigCallback

#: the subcommands that ``--ckpt_path`` alone configures (from the checkpoint's recorded learner and data)
CHECKPOINT_SUBCOMMANDS = ("validate", "test", "predict")
EPILOG = (
    "Also: 'lightning-meta adapt --ckpt_path CKPT --support DIR --query DIR' adapts a trained learner to a new task "
    "given as files (a folder of class folders of images, or a CSV of x,y rows) and writes the predictions for its "
    "queries as CSV (lightning-meta adapt --help). validate, test and predict take --ckpt_path alone (no --config, "
    "--model or --data): they use the learner and the data config the checkpoint records (lightning-meta fit records "
    "them); predict writes predictions.pt (lightning_meta.callbacks.PredictionWriter)."
)


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

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands and not self.parser.epilog:
            self.parser.epilog = EPILOG

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint_file(self.config[subcommand].get("ckpt_path"))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the hyper-parameters of ``--ckpt_path`` into the model config; those of a learner
        trained in Python carry no ``_class_path`` (LightningCLI's record of the class), and LightningCLI would then
        fail to parse them: they get the learner class the checkpoint records."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            try:
                checkpoint = peek_checkpoint(path)
            except Exception:  # noqa: BLE001 - LightningCLI's own load reports it
                checkpoint = None
            if isinstance(checkpoint, dict):
                hparams = checkpoint.get("hyper_parameters") or {}
                learner = (checkpoint.get("lightning_meta") or {}).get("learner")
                if hparams and "_class_path" not in hparams and learner:
                    hparams = {k: v for k, v in hparams.items() if k != "_instantiator"}
                    model = {"class_path": learner, "dict_kwargs": hparams}
                    self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
                    return
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        """LightningCLI's, then: the learner records the run's ``data`` config (``run_config``, saved in its
        checkpoints, so that ``lightning-meta test --ckpt_path`` alone rebuilds the data), and ``predict`` gets a
        ``lightning_meta.callbacks.PredictionWriter`` when the Trainer has no prediction writer."""
        super().instantiate_classes()
        if isinstance(self.model, MetaLearner):
            self.model.run_config = self.data_config()
        if self.subcommand == "predict" and not any(
            isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks
        ):
            self.trainer.callbacks.append(PredictionWriter())

    def data_config(self) -> dict[str, Any] | None:
        """The run's ``data`` config as plain data, as a YAML config holds it (``{"tasks": {"class_path": ...,
        "init_args": {...}}, "meta_batch_size": ...}``); ``None`` (with a warning) where it cannot be dumped."""
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        try:
            dumped = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False, skip_check=True))
        except Exception as error:  # noqa: BLE001 - a config value jsonargparse cannot serialize
            warnings.warn(
                f"lightning-meta: the data config is not recorded in checkpoints ({error}); "
                "`lightning-meta test --ckpt_path` will then need --data or --config",
                stacklevel=2,
            )
            return None
        data = dumped.get("data") if isinstance(dumped, dict) else None
        return data if isinstance(data, dict) else None


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and with ``run=True`` run) the CLI in-process; returns it, e.g. to read ``cli.trainer`` in a notebook.

    The console script is [cli_main][lightning_meta.cli.cli_main], not this function: a console script passes
    its function's return value to ``sys.exit``, and a returned object is an exit status of 1.
    """
    os.environ.setdefault("WANDB_MODE", "offline")
    argv = sys.argv[1:] if args is None else list(args)
    with checkpoint_config(argv) as config:
        if config is None:
            return _cli(args, run)
        subcommand_at = _subcommand_index(argv)
        rewritten = [*argv[: subcommand_at + 1], "--config", config, *argv[subcommand_at + 1 :]]
        if args is not None:
            return _cli(rewritten, run)
        saved = sys.argv  # as given on the command line: LightningCLI warns when both sys.argv and args are given
        sys.argv = [sys.argv[0], *rewritten]
        try:
            return _cli(None, run)
        finally:
            sys.argv = saved


def _cli(args: list[str] | None, run: bool) -> LightningCLI:
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


def _subcommand_index(argv: Sequence[str]) -> int:
    """Where the subcommand is in ``argv`` (-1: none)."""
    return next((i for i, a in enumerate(argv) if a in ("fit", *CHECKPOINT_SUBCOMMANDS)), -1)


def _ckpt_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
    return None


def _configures(argv: Sequence[str], key: str) -> bool:
    """Whether ``argv`` sets ``key`` (``--model``, ``--model=...``, ``--model.init_args...``)."""
    return any(arg == f"--{key}" or arg.startswith((f"--{key}=", f"--{key}.")) for arg in argv)


@contextmanager
def checkpoint_config(argv: Sequence[str]) -> Iterator[str | None]:
    """For ``validate``/``test``/``predict`` with ``--ckpt_path`` and no ``--config``: a temporary YAML config with
    the checkpoint's learner (``model``: the recorded class and its hyper-parameters) and data (``data``: the run's
    recorded data config), removed when the ``with`` block ends; else ``None``. It goes before the command line's
    own options, so ``--data.test_episodes=100`` or ``--model.init_args.eval_inner_steps=5`` override it.

    A checkpoint without a recorded data config (written from Python, or before lightning-meta recorded it) and no
    ``--data`` option is a usage error (status 2) saying to pass ``--data`` or ``--config``."""
    at = _subcommand_index(argv)
    subcommand = argv[at] if at >= 0 else None
    path = _ckpt_path(argv[at + 1 :]) if at >= 0 else None
    if (
        subcommand not in CHECKPOINT_SUBCOMMANDS
        or path is None
        or _configures(argv, "config")
        or "-c" in argv
        or any(arg in ("-h", "--help") for arg in argv)
    ):
        yield None
        return
    config = checkpoint_run_config(path, subcommand, _configures(argv, "model"), _configures(argv, "data"))
    if not config:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="lightning-meta-") as folder:
        file = Path(folder) / "checkpoint_config.yaml"
        file.write_text(yaml.safe_dump(config, sort_keys=False))
        yield str(file)


def _usage_error(subcommand: str, message: str) -> None:
    print(f"lightning-meta {subcommand}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_checkpoint(path: str, subcommand: str = "test") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a Lightning checkpoint; a missing or unreadable file is a usage
    error (a line on stderr, exit status 2)."""
    try:
        return read_lightning_checkpoint(path)
    except ValueError as error:
        _usage_error(subcommand, " ".join(str(error).split()))


def checkpoint_run_config(
    path: str, subcommand: str = "test", model_given: bool = False, data_given: bool = False
) -> dict[str, Any]:
    """``{"model": {"class_path", "init_args"}, "data": {...}}`` from the checkpoint at ``path``: the recorded
    learner with its hyper-parameters (those not starting with ``_``) and the recorded data config.

    Missing there: without ``model_given``/``data_given`` (the command line has ``--model...``/``--data...``
    options) a usage error (a line on stderr, exit status 2) saying what to pass; with them the key is left out."""
    checkpoint = read_checkpoint(path, subcommand)
    record = checkpoint.get("lightning_meta") or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    config: dict[str, Any] = {}
    learner = recorded_learner(checkpoint)
    if learner:
        init_args = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
        config["model"] = {"class_path": learner, "init_args": init_args}
    elif not model_given:
        _usage_error(
            subcommand,
            f"--ckpt_path {path} records no lightning-meta learner: pass the learner and data with --config "
            "(or --model and --data)",
        )
    if record.get("data"):
        config["data"] = record["data"]
    elif not data_given:
        _usage_error(
            subcommand,
            f"--ckpt_path {path} records no data config (written by training in Python, or before lightning-meta "
            "recorded it): pass the data with --data.tasks=... (e.g. --data.tasks=lightning_meta.SinusoidTasks) "
            "or --config",
        )
    return config


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-meta`` and ``python -m lightning_meta``: subcommands fit/validate/test/predict
    (LightningCLI) and ``adapt`` (``lightning_meta.adapt_cli``).

    Returns ``None``, so the process exits with status 0 after a good run; a bad option exits with
    jsonargparse's usage error (status 2) and an exception in training with its traceback (status 1); ``adapt``
    exits with its own status (one line on stderr on an error).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "adapt":
        from lightning_meta.adapt_cli import main as adapt_main

        status = adapt_main(argv[1:])
        if status:
            raise SystemExit(status)
        return
    main(args)


if __name__ == "__main__":
    cli_main()
