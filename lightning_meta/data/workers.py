"""How DataLoader workers start: the start method chosen from what is at risk, and the checks that a worker started
in a new interpreter (``forkserver``, ``spawn``) can be set up, made before any worker starts.

The rule for ``worker_start_method="auto"`` (docs/howto/workers.md):

* ``fork`` where the platform has it, as a plain PyTorch ``DataLoader`` on Linux before Python 3.14: a script
  without an ``if __name__ == "__main__":`` guard, code piped into ``python -`` and classes defined in a notebook
  all work.
* ``forkserver`` in a distributed rank (DDP: its gloo/NCCL threads take Python's runtime lock) on a CPython that
  still has python/cpython#112275 (before 3.11.10, and 3.12.0): a ``fork`` there can copy that lock while another
  thread holds it and leave the worker deadlocked at birth (measured: 2 of 12 two-rank launches hung).
* the platform's own default (``spawn``) on Windows, which has no ``fork``, and on macOS, where Python made ``spawn``
  the default because ``fork`` is unsafe beside the system frameworks.

A worker started by ``forkserver`` or ``spawn`` unpickles the task source in a new interpreter that re-imports the
main script. [check_workers_can_start][lightning_meta.data.workers.check_workers_can_start] raises a clear error
when that cannot work: a script without the guard (every worker would run it again), classes defined in
``python -c``/stdin/a notebook (a new interpreter cannot import them), or a task source that does not pickle.
"""

from __future__ import annotations

import ast
import multiprocessing
import pickle
import sys
import types
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any, Literal

import torch

StartMethod = Literal["auto", "fork", "forkserver", "spawn"]
FORK_DEADLOCK = "python/cpython#112275"
GUARD = 'if __name__ == "__main__":'


def fork_deadlock_fixed(version: tuple[int, ...] | None = None) -> bool:
    """Whether this CPython has the fix of python/cpython#112275 (3.11.10+, 3.12.1+, 3.13+).

    Examples:
        >>> fork_deadlock_fixed((3, 11, 7)), fork_deadlock_fixed((3, 11, 10)), fork_deadlock_fixed((3, 13, 0))
        (False, True, True)
    """
    v = tuple(sys.version_info[:3] if version is None else version)
    if sys.implementation.name != "cpython" and version is None:
        return True
    return v >= (3, 13) or (v[:2] == (3, 12) and v >= (3, 12, 1)) or (v[:2] == (3, 11) and v >= (3, 11, 10))


def resolve_start_method(requested: str | None, distributed: bool) -> str:
    """The start method ``"auto"`` (or ``None``) stands for in this process; an explicit choice is kept.

    Examples:
        >>> resolve_start_method("spawn", distributed=False)
        'spawn'
        >>> resolve_start_method("auto", distributed=False)  # Linux
        'fork'
    """
    if requested not in (None, "auto"):
        return requested
    methods = multiprocessing.get_all_start_methods()
    if "fork" not in methods or sys.platform == "darwin":  # macOS: fork is unsafe beside its system frameworks
        return multiprocessing.get_context().get_start_method()
    if distributed and not fork_deadlock_fixed() and "forkserver" in methods:
        return "forkserver"
    return "fork"


def auto_reason(distributed: bool) -> str:
    """Why ``"auto"`` chose what it chose here, for messages."""
    if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" and distributed \
            and not fork_deadlock_fixed():
        version = ".".join(map(str, sys.version_info[:3]))
        return (f"chosen by worker_start_method='auto' because this process is a distributed rank on CPython "
                f"{version}, where a fork can deadlock a worker at birth ({FORK_DEADLOCK}, fixed in 3.11.10 and "
                "3.12.1); worker_start_method='fork' accepts that risk")
    return "chosen by worker_start_method='auto': the platform's default, as fork is missing or unsafe here"


# ------------------------------------------------------------------ the main script
def unguarded_main_script() -> Path | None:
    """The main script, if a new interpreter would re-run it on import: a ``.py`` file without ``__main__`` guard.

    ``None`` when there is no main file to re-import (``python -c``, ``python -``, a notebook, a REPL), when its
    source cannot be read, or when it has an ``if __name__ == "__main__":`` block at top level.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    return None if any(_is_main_guard(node) for node in tree.body) else Path(path)


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.comparators) != 1:
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    values = {s.value for s in sides if isinstance(s, ast.Constant)}
    return isinstance(node.test.ops[0], ast.Eq) and names == {"__name__"} and values == {"__main__"}


def main_file() -> tuple[str | None, bool]:
    """``(__main__.__file__, whether it is a file)``: ``(None, False)`` for ``python -c``, a notebook or a REPL;
    ``("<stdin>", False)`` for ``python -``, which a new interpreter tries, and fails, to re-read."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path, bool(path) and Path(path).is_file()


def guard_message(started: str, script: Path, remedy: str) -> str:
    return (f"{started} in a new interpreter, which re-imports your script {script}; it has no `{GUARD}` guard, so "
            f"each new process would run the whole script again (Trainer and fit included). Put the code that runs "
            f"(Trainer, fit, test) under `{GUARD}` (docs/howto/workers.md), or {remedy}")


# ------------------------------------------------------------------ pickling probe
class _Sink:
    def write(self, data: bytes) -> int:
        return len(data)


class _Probe(pickle.Pickler):
    """Pickles the object graph without its tensor and array data, noting what lives in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(_Sink(), protocol=pickle.HIGHEST_PROTOCOL)
        self.in_main: list[str] = []

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor | torch.UntypedStorage) or type(obj).__module__.startswith("numpy"):
            return id(obj)
        return None

    def reducer_override(self, obj: Any) -> Any:
        named = obj if isinstance(obj, type | types.FunctionType) else type(obj)
        if getattr(named, "__module__", None) == "__main__":
            name = getattr(named, "__qualname__", repr(named))
            if name not in self.in_main:
                self.in_main.append(name)
        return NotImplemented


def check_workers_can_start(obj: Any, method: str, owner: str, reason: str = "") -> None:
    """Raise a ``RuntimeError`` now if ``method`` workers could not set ``obj`` up, else return.

    Nothing to check for ``fork`` (the worker is a copy of this process). For ``forkserver`` and ``spawn``: the main
    script must be guarded, ``obj`` must pickle, and whatever it needs from ``__main__`` must be importable.
    """
    if method == "fork":
        return
    how = f"worker_start_method={method!r}" + (f" ({reason})" if reason else "")
    started = f"{owner}: num_workers > 0 with {how} starts each DataLoader worker"
    fix = "pass worker_start_method='fork'" if "fork" in multiprocessing.get_all_start_methods() else ""
    fix = f"{fix} or num_workers=0" if fix else "num_workers=0"
    script = unguarded_main_script()
    if script is not None:
        raise RuntimeError(guard_message(started, script, fix))
    path, is_file = main_file()
    if path and not is_file:
        raise RuntimeError(f"{started} in a new interpreter, which re-runs the main script by its path, but this "
                           f"__main__ came from {path!r} (e.g. `python -`), not a file it could read again. Save the "
                           f"code as a script with the `{GUARD}` guard, or {fix}")
    probe = _Probe()
    try:
        probe.dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise RuntimeError(f"{started}, which receives the task source by pickling, and it does not pickle: {err}. "
                           f"Make the task source and its dataset picklable (no lambdas, open files or locks), or "
                           f"{fix}") from err
    if probe.in_main and not is_file:
        raise RuntimeError(f"{started}, which must import {probe.in_main} from __main__, but this __main__ has no "
                           "file a new interpreter could import (python -c, python -, a notebook or a REPL). Define "
                           f"them in a module you import, or {fix}")


def check_spawned_process(owner: str) -> None:
    """From ``__getstate__``: if this object is being pickled for a new interpreter (``spawn``/``forkserver``: a rank
    of ``strategy="ddp_spawn"``, a DataLoader worker), fail now, in this process, when the main script would be re-run
    by it (otherwise the new process dies in its bootstrap and this one sees a dead process or a broken pipe)."""
    popen = mp_context.get_spawning_popen()
    if popen is None:
        return
    script = unguarded_main_script()
    if script is not None:
        method = getattr(popen, "method", "spawn")
        raise RuntimeError(guard_message(
            f"{owner}: a process started by {method!r} (a rank of strategy='ddp_spawn', or a DataLoader worker) sets "
            "it up", script, "use strategy='ddp' (it runs your script once per rank, as it is) or, for DataLoader "
            "workers, worker_start_method='fork'"))


__all__ = ["FORK_DEADLOCK", "StartMethod", "auto_reason", "check_spawned_process", "check_workers_can_start",
           "fork_deadlock_fixed", "resolve_start_method", "unguarded_main_script"]
