"""DataLoader workers as users start them: flat scripts (no ``__main__`` guard), ``python - < script.py``, explicit
``forkserver``/``spawn``, ``ddp_spawn`` and ``ddp`` ranks; each script runs in a fresh interpreter and is checked
by its exit status and output. The rule is in docs/howto/workers.md."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import reserved_port, run_user_file, script_env

from lightning_meta.data.workers import fork_deadlock_fixed, resolve_start_method, unguarded_main_script

#: a user's first script: sinusoid MAML with DataLoader workers, no ``if __name__ == "__main__":`` guard
FLAT = """\
import pytorch_lightning as pl
from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.models import MLP

dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=4, train_episodes_per_epoch=16,
                        val_episodes=8, test_episodes=8, num_workers=2{dm_args})
model = MAML(MLP(), inner_lr=0.01)
trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False{trainer_args})
trainer.fit(model, dm)
trainer.test(model, dm)
print("start method:", dm.start_method, "| test/mse:", float(trainer.callback_metrics["test/mse"]))
"""
OUR_ERROR = 'has no `if __name__ == "__main__":` guard'
NOT_OURS = ("BrokenPipeError", "exited unexpectedly", "bootstrapping phase")


def flat(dm_args: str = "", trainer_args: str = "") -> str:
    return FLAT.format(dm_args=dm_args, trainer_args=trainer_args)


def run_user(tmp_path: Path, source: str, stdin: bool = False) -> subprocess.CompletedProcess:
    """``python train.py`` (or ``python - < train.py``) in a fresh directory, as a user runs it."""
    return run_user_file(source, tmp_path, stdin=stdin)


def assert_ran(proc: subprocess.CompletedProcess, method: str = "fork") -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert f"start method: {method} | test/mse:" in proc.stdout, proc.stdout[-2000:]


def assert_our_error(proc: subprocess.CompletedProcess, *names: str) -> None:
    """Exit 1 with our RuntimeError naming ``names``, and none of Python's or torch's own messages."""
    assert proc.returncode == 1, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    last = re.sub(r"^\[rank\d+\]: ", "", proc.stderr.strip().splitlines()[-1])  # torch prefixes a DDP rank's output
    assert last.startswith("RuntimeError: "), proc.stderr[-3000:]
    for name in names:
        assert name in last, last
    for message in NOT_OURS:
        assert message not in proc.stderr, proc.stderr[-3000:]
    assert "test/mse" not in proc.stdout  # raised before training


def test_flat_script_with_workers_runs(tmp_path):
    assert_ran(run_user(tmp_path, flat()))


def test_flat_script_piped_into_python_dash_runs(tmp_path):
    assert_ran(run_user(tmp_path, flat(), stdin=True))


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_explicit_new_interpreter_workers_need_the_guard_and_say_so(tmp_path, method):
    proc = run_user(tmp_path, flat(dm_args=f", worker_start_method={method!r}"))
    assert_our_error(proc, OUR_ERROR, f"worker_start_method={method!r}", "worker_start_method='fork'",
                     str(tmp_path / "train.py"))


def test_guarded_script_with_forkserver_runs(tmp_path):
    body = textwrap.indent(flat(dm_args=", worker_start_method='forkserver'"), "    ")
    assert_ran(run_user(tmp_path, f"if __name__ == \"__main__\":\n{body}"), method="forkserver")


def test_forkserver_from_stdin_is_our_error(tmp_path):
    proc = run_user(tmp_path, flat(dm_args=", worker_start_method='forkserver'"), stdin=True)
    assert_our_error(proc, "'<stdin>'", "worker_start_method='fork'")


def test_task_source_defined_in_python_c_with_forkserver_is_our_error(tmp_path):
    source = flat(dm_args=", worker_start_method='forkserver'").replace(
        "dm = EpisodicDataModule(SinusoidTasks(", "class MyTasks(SinusoidTasks):\n    pass\n\n"
        "dm = EpisodicDataModule(MyTasks(")
    with reserved_port() as port:
        proc = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True,
                              timeout=240, env=script_env(MASTER_PORT=str(port)))
    assert_our_error(proc, "['MyTasks']", "python -c", "worker_start_method='fork'")


def test_unpicklable_task_source_with_forkserver_is_our_error(tmp_path):
    source = flat(dm_args=", worker_start_method='forkserver'").replace(
        "dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5)",
        "import threading\ntasks = SinusoidTasks(shots=5, queries=5)\ntasks.lock = threading.Lock()\n"
        "dm = EpisodicDataModule(tasks")
    body = textwrap.indent(source, "    ")
    proc = run_user(tmp_path, f"if __name__ == \"__main__\":\n{body}")
    assert_our_error(proc, "does not pickle", "lock", "worker_start_method='fork'")


def test_ddp_spawn_flat_script_is_our_error_before_any_rank_starts(tmp_path):
    proc = run_user(tmp_path, flat(trainer_args=', accelerator="cpu", devices=2, strategy="ddp_spawn"'))
    assert_our_error(proc, OUR_ERROR, "ddp_spawn", "strategy='ddp'")
    assert "[rank1]" not in proc.stderr and "ProcessExitedException" not in proc.stderr


def test_ddp_flat_script_with_workers(tmp_path):
    """A ``ddp`` rank runs the user's script as it is; its workers start by ``forkserver`` on a CPython with the
    fork deadlock, which needs the guard (our error on every rank), and by ``fork`` on one without it."""
    proc = run_user(tmp_path, flat(trainer_args=', accelerator="cpu", devices=2, strategy="ddp"'))
    if fork_deadlock_fixed():
        assert_ran(proc)
    else:
        assert_our_error(proc, OUR_ERROR, "distributed rank", "python/cpython#112275")


#: traces each teardown barrier of the learner and the DataModule (lightning_meta.distributed) in a user script
TRACE_SETTLE = """\
import os
import lightning_meta.algorithms.base as base, lightning_meta.data.datamodule as datamodule
settle = base.settle_process_group
def traced():
    ran = settle()
    os.write(1, f"teardown barrier: {ran}\\n".encode())  # one write: two ranks share this stdout
    return ran
base.settle_process_group = datamodule.settle_process_group = traced
"""


def test_ddp_flat_script_without_workers_exits_0_after_teardown_barriers(tmp_path):
    """A flat ``ddp`` script (fit, then test) exits 0 on every rank, and each rank passed the learner's and the
    DataModule's teardown barrier after each Trainer call (2 ranks x 2 calls x 2 hooks); the loop of this launch
    is ``scripts/stress_exit.sh``."""
    source = flat(trainer_args=', accelerator="cpu", devices=2, strategy="ddp"')
    proc = run_user(tmp_path, TRACE_SETTLE + source.replace("num_workers=2", "num_workers=0"))
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "test/mse:" in proc.stdout
    assert proc.stdout.count("teardown barrier: True") == 8, proc.stdout[-3000:]


def test_no_teardown_barrier_on_one_device(tmp_path):
    proc = run_user(tmp_path, TRACE_SETTLE + flat())
    assert_ran(proc)
    assert proc.stdout.count("teardown barrier: False") == 4 and "barrier: True" not in proc.stdout


@pytest.mark.parametrize(("distributed", "expected"), [(False, "fork"), (True, "fork" if fork_deadlock_fixed()
                                                                          else "forkserver")])
def test_auto_rule(distributed, expected):
    assert resolve_start_method("auto", distributed) == expected
    assert resolve_start_method(None, distributed) == expected
    assert resolve_start_method("spawn", distributed) == "spawn"


def test_fork_deadlock_versions():
    assert [fork_deadlock_fixed(v) for v in [(3, 10, 13), (3, 11, 9), (3, 11, 10), (3, 12, 0), (3, 12, 1),
                                             (3, 13, 0), (3, 14, 0)]] == [False, False, True, False, True, True, True]


@pytest.mark.parametrize(("source", "guarded"), [
    ("import x\nx.fit()\n", False),
    ('def main():\n    pass\n\nif __name__ == "__main__":\n    main()\n', True),
    ("if '__main__' == __name__:\n    pass\n", True),
    ('if __name__ != "__main__":\n    pass\n', False),
    ('def f():\n    if __name__ == "__main__":\n        pass\n', False),  # not at top level
])
def test_guard_detection(tmp_path, monkeypatch, source, guarded):
    script = tmp_path / "script.py"
    script.write_text(source)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(script), raising=False)
    assert (unguarded_main_script() is None) == guarded
