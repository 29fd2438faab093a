"""The one module that names a Lightning package: ``lightning.pytorch`` (``import lightning as L``) or
``pytorch_lightning`` (``import pytorch_lightning as pl``).

The two are separate class hierarchies: a ``LightningModule`` of one is refused by the other's ``Trainer``,
so every class of this package is built on one of them, chosen once per process, at the first import of
``lightning_meta``:

1. ``$LIGHTNING_META_BACKEND`` (``lightning`` or ``pytorch_lightning``), when set;
2. else the one of the two that is already imported, when exactly one is (``import lightning as L`` or
   ``from lightning.pytorch import ...`` sorts before ``import lightning_meta``);
3. else ``pytorch_lightning`` when installed (every ``lightning`` install has it too), else ``lightning``.

When the choice was a guess (rule 3) and the other package is imported later, a warning says so once and
names the variable. Spawned processes (DDP, DataLoader workers) choose the same way as their parent.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings

ENV = "LIGHTNING_META_BACKEND"
MODULES = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def select_backend(environ: dict[str, str] | None = None, modules: dict | None = None) -> tuple[str, bool]:
    """``(backend, guessed)`` by the rule above (``environ``/``modules`` default to the process's own)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    requested = environ.get(ENV, "").strip()
    if requested:
        if requested not in MODULES:
            raise ValueError(f"{ENV}={requested!r}: use one of {sorted(MODULES)}")
        return requested, False
    imported = [name for name, module in MODULES.items() if module in modules]
    if len(imported) == 1:
        return imported[0], False
    if _installed("pytorch_lightning"):
        return "pytorch_lightning", not imported
    if _installed("lightning"):
        return "lightning", not imported
    raise ImportError("lightning-meta needs Lightning: pip install pytorch-lightning (or lightning)")


class _LateImportWarner:
    """A ``sys.meta_path`` entry that warns once if the package not chosen by a guess is imported later."""

    def __init__(self, chosen: str) -> None:
        self.chosen, self.other = chosen, next(m for n, m in MODULES.items() if n != chosen)

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.other:
            sys.meta_path.remove(self)
            warnings.warn(
                f"lightning_meta was imported before {self.other} and built its classes on {MODULES[self.chosen]}; "
                f"a {self.other} Trainer will refuse them. Import {self.other} first or set {ENV}="
                f"{next(n for n in MODULES if n != self.chosen)}", stacklevel=2)
        return None


def submodule(name: str):
    """``<chosen package>.<name>``: ``submodule("cli")`` is ``lightning.pytorch.cli`` or ``pytorch_lightning.cli``."""
    return importlib.import_module(f"{MODULES[BACKEND]}.{name}")


BACKEND, _guessed = select_backend()
pl = importlib.import_module(MODULES[BACKEND])
Logger, WandbLogger = submodule("loggers").Logger, submodule("loggers").WandbLogger
rank_zero_warn = submodule("utilities").rank_zero_warn
if _guessed and _installed(next(n for n in MODULES if n != BACKEND)):
    sys.meta_path.insert(0, _LateImportWarner(BACKEND))

__all__ = ["BACKEND", "ENV", "MODULES", "Logger", "WandbLogger", "pl", "rank_zero_warn", "select_backend", "submodule"]
