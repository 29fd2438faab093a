"""What users run first, run as they run it: the installed ``lightning-meta`` console script,
``python -m lightning_meta`` and the example scripts, each in a fresh process, checked by exit status and output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

CONFIG = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
TINY = ["--trainer.max_steps=2", "--trainer.val_check_interval=1", "--data.meta_batch_size=2",
        "--data.val_episodes=4", "--data.test_episodes=6", "--data.eval_meta_batch_size=3"]


def console_script() -> str:
    """The ``lightning-meta`` that ``pip install`` put beside this interpreter."""
    path = Path(sys.executable).parent / "lightning-meta"
    found = str(path) if path.exists() else shutil.which("lightning-meta")
    if found is None:
        pytest.skip(f"lightning-meta is not installed beside {sys.executable} (pip install -e . installs it)")
    return found


def run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "object at 0x" not in proc.stderr  # what `sys.exit(<object>)` prints


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step ``lightning-meta fit`` in a fresh directory; returns (directory, its best checkpoint)."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = run([console_script(), "fit", "--config", str(CONFIG), *TINY], cwd)
    assert_ok(proc)
    checkpoints = sorted(cwd.glob("wandb/**/checkpoints/*.ckpt")) + sorted(cwd.glob("**/checkpoints/*.ckpt"))
    assert checkpoints, f"no checkpoint under {cwd}"
    assert list(cwd.glob("wandb/offline-run-*")), "no offline W&B run"
    return cwd, checkpoints[0]


def test_fit_exits_0_with_nothing_stray(fitted):
    cwd, _ = fitted
    assert (cwd / "config.yaml").exists() or list(cwd.glob("**/config.yaml"))


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_eval_subcommands_exit_0_and_print_metrics(fitted, subcommand):
    cwd, ckpt = fitted
    proc = run([console_script(), subcommand, "--config", str(CONFIG), *TINY, f"--ckpt_path={ckpt}"], cwd)
    assert_ok(proc)
    stage = "val" if subcommand == "validate" else "test"
    assert f"{stage}/mse" in proc.stdout and f"{stage}/pre_mse" in proc.stdout


def test_predict_exits_0(fitted):
    cwd, ckpt = fitted
    assert_ok(run([console_script(), "predict", "--config", str(CONFIG), *TINY, f"--ckpt_path={ckpt}"], cwd))


def test_print_config_exits_0_with_yaml(tmp_path):
    proc = run([console_script(), "fit", "--config", str(CONFIG), "--print_config"], tmp_path)
    assert_ok(proc)
    assert yaml.safe_load(proc.stdout)["model"]["init_args"]["inner_lr"] == 0.01


def test_bad_option_is_a_usage_error_naming_it(tmp_path):
    proc = run([console_script(), "fit", "--config", str(CONFIG), "--trainer.max_stepz=3"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "max_stepz" in proc.stderr and "usage" in proc.stderr.lower()


def test_exception_in_training_exits_1_with_traceback(tmp_path):
    proc = run([console_script(), "fit", "--config", str(CONFIG), *TINY, "--model.init_args.inner_lr=1e30"],
               tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "FloatingPointError" in proc.stderr and "non-finite" in proc.stderr


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_corrupt_checkpoint_is_named_not_blamed_on_weights_only(tmp_path, subcommand):
    garbage = tmp_path / "last.ckpt"
    garbage.write_bytes(bytes(range(256)) * 16)
    proc = run([console_script(), subcommand, "--config", str(CONFIG), *TINY, f"--ckpt_path={garbage}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{garbage} is not a readable PyTorch checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr


def test_python_dash_m_exits_0(tmp_path):
    proc = run([sys.executable, "-m", "lightning_meta", "fit", "--config", str(CONFIG), *TINY,
                "--trainer.logger=false", "--trainer.callbacks=[]"], tmp_path)
    assert_ok(proc)


def test_main_example_prints_the_mse_table(tmp_path):
    proc = run([sys.executable, str(REPO / "examples" / "sinusoid_maml.py"), "--steps", "5"], tmp_path)
    assert_ok(proc)
    for line in ("before adaptation", "after  1 inner step", "after 10 inner steps"):
        assert line in proc.stdout, proc.stdout


def test_blackbox_example(tmp_path):
    proc = run([sys.executable, str(REPO / "examples" / "blackbox_sinusoid.py"), "--steps", "5"], tmp_path)
    assert_ok(proc)
    assert "test MSE" in proc.stdout and "task vectors h_i: (100, 32)" in proc.stdout


def test_sample_episodes_example(tmp_path, omniglot):
    proc = run([sys.executable, str(REPO / "examples" / "sample_episodes.py"), "--omniglot", str(omniglot)], tmp_path)
    assert_ok(proc)
    assert "sinusoid: support_x (32, 10, 1)" in proc.stdout
    assert "omniglot 5-way 1-shot: support_x (32, 5, 1, 28, 28)" in proc.stdout


def test_omniglot_example(tmp_path, omniglot):
    proc = run([sys.executable, str(REPO / "examples" / "omniglot_maml.py"), "--root", str(omniglot), "--steps", "2",
                "--test-episodes", "8"], tmp_path)
    assert_ok(proc)
    assert "Omniglot 5-way 1-shot:" in proc.stdout





@pytest.mark.parametrize("data", ["synthetic", "omniglot"])
def test_adapt_new_task_example(tmp_path, request, data):
    """``examples/adapt_new_task.py``: trains, then a new process loads the checkpoint with no arguments, adapts to a
    folder of PNG images of new classes, predicts and exports; on synthetic glyphs (no data needed) and on Omniglot."""
    extra = ["--synthetic"] if data == "synthetic" else ["--root", str(request.getfixturevalue("omniglot"))]
    proc = run([sys.executable, str(REPO / "examples" / "adapt_new_task.py"), "--steps", "2", *extra], tmp_path)
    assert_ok(proc)
    source = "GlyphTasks" if data == "synthetic" else "OmniglotTasks"
    for line in (f"loaded MAML, trained on {source} (5-way 1-shot)", "support: 15 images of classes",
                 "accuracy on the 25 query images: ", "answers as the adapted learner (max difference"):
        assert line in proc.stdout, proc.stdout
