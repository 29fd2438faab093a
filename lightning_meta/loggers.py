"""Weights & Biases logging that is offline by default and never blocks training."""

from __future__ import annotations

import os
from typing import Any

from lightning_meta._lightning import Logger, WandbLogger, rank_zero_warn

#: Seconds ``wandb.init`` may take to start an online run before the logger gives up and logs offline
#: (W&B's ``init_timeout`` setting; W&B's own default is 90). ``WANDB_INIT_TIMEOUT`` or
#: ``settings={"init_timeout": ...}`` overrides it.
INIT_TIMEOUT_S = 30.0

_OFFLINE_MODES = ("offline", "dryrun", "disabled")


class _NullRun:
    """Stands in for a W&B run when wandb is not installed: every call does nothing."""

    id = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class MetaWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline unless ``WANDB_MODE`` says otherwise, and never stops training.

    * Runs are written under ``./wandb`` (``wandb sync`` uploads them later); ``WANDB_MODE=online`` logs live.
    * With ``WANDB_MODE=online`` and no network (or no API key), the run starts offline instead, after at most
      ``lightning_meta.loggers.INIT_TIMEOUT_S`` seconds (W&B's ``init_timeout`` setting), with one warning that says so.
    * Without the ``wandb`` package, the logger warns once and logs nothing; training runs as usual.

    All ``WandbLogger`` arguments apply, and so do ``wandb.init``'s (``settings`` as a dict or
    ``wandb.Settings``; ``mode`` overrides ``WANDB_MODE``).

    Examples:
        >>> logger = MetaWandbLogger(project="lightning-meta")  # doctest: +SKIP
        >>> trainer = pl.Trainer(logger=logger)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError as error:
            rank_zero_warn(f"wandb is not importable ({error}); MetaWandbLogger logs nothing. `pip install wandb`")
            Logger.__init__(self)
            self._disabled = True
            # what the Logger interface reports (checkpoint folders are named from it), as WandbLogger would
            self._null_run = _NullRun()
            self._null_save_dir = os.fspath(kwargs.get("save_dir") or kwargs.get("dir") or ".")
            self._null_name = kwargs.get("project") or os.environ.get("WANDB_PROJECT", "lightning_logs")
            self._null_version = kwargs.get("version") or kwargs.get("id")
            return
        self._disabled = False
        self._fell_back_offline = False
        # wandb.init(settings=<dict>) builds its Settings from this dict on every call; the logger keeps the
        # dict and turns it offline if an online start fails (the public wandb.init route for the mode)
        self._settings = _settings_dict(kwargs.pop("settings", None))
        mode = kwargs.pop("mode", None)  # LightningCLI passes every wandb.init argument, unset ones as None
        if mode is not None:
            self._settings["mode"] = mode
        elif "mode" not in self._settings and "WANDB_MODE" not in os.environ:
            self._settings["mode"] = "offline"
        if "init_timeout" not in self._settings and "WANDB_INIT_TIMEOUT" not in os.environ:
            self._settings["init_timeout"] = INIT_TIMEOUT_S
        self._settings.setdefault("silent", True)
        super().__init__(*args, settings=self._settings, **kwargs)

    @property
    def experiment(self):
        if self._disabled:
            return self._null_run
        try:
            return super().experiment
        except Exception as error:  # network, credentials or service failure: continue offline
            attempted = self._settings.get("mode") or os.environ.get("WANDB_MODE", "online")
            if self._fell_back_offline or attempted in _OFFLINE_MODES:
                raise
            rank_zero_warn(f"W&B could not start online ({error!r}); logging offline under "
                           f"{os.path.join(self.save_dir or '.', 'wandb')} instead (`wandb sync` uploads it later)")
            self._fell_back_offline = True
            self._settings["mode"] = "offline"
            return super().experiment  # WandbLogger keeps no run after a failed wandb.init: it starts again

    @property
    def save_dir(self) -> str | None:
        return self._null_save_dir if self._disabled else super().save_dir

    @property
    def name(self) -> str | None:
        return self._null_name if self._disabled else super().name

    @property
    def version(self) -> str | None:
        return self._null_version if self._disabled else super().version

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy() if self._disabled else super().__getstate__()

    def log_hyperparams(self, params: Any) -> None:
        if not self._disabled:
            super().log_hyperparams(params)

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        if not self._disabled:
            super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if not self._disabled:
            super().after_save_checkpoint(checkpoint_callback)

    def finalize(self, status: str) -> None:
        if not self._disabled:
            super().finalize(status)


def _settings_dict(settings: Any) -> dict[str, Any]:
    """``settings`` for ``wandb.init`` as a new dict: a dict is copied, a ``wandb.Settings`` gives the fields
    that were set on it."""
    if settings is None:
        return {}
    if isinstance(settings, dict):
        return dict(settings)
    fields_set = getattr(settings, "model_fields_set", None)  # wandb >= 0.19 (pydantic Settings)
    if fields_set is None:
        raise TypeError("MetaWandbLogger takes settings as a dict (or a wandb>=0.19 wandb.Settings), "
                        f"got {type(settings).__name__}")
    return {field: getattr(settings, field) for field in fields_set}
