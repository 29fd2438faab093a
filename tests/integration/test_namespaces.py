"""Both Lightning namespaces: ``import lightning as L`` and ``import pytorch_lightning as pl`` users run the same
code (fit with that namespace's callbacks and loggers, validate, test, resume, 2-rank DDP, the CLI) and get the
same numbers; the rule that picks the namespace is checked case by case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import REPO, reserved_port, script_env

from lightning_meta._lightning import ENV, MODULES, select_backend

SCRIPT = REPO / "tests" / "scripts" / "namespace_user.py"


def run_user(namespace: str, out, devices: int = 1, meta_batch: int = 4, env: dict | None = None) -> dict:
    with reserved_port() as port:  # the suite's MASTER_PORT reservation (a 2-rank launch binds it)
        environ = {k: v for k, v in script_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items() if k != ENV}
        environ.update(env or {})
        proc = subprocess.run([sys.executable, str(SCRIPT), namespace, str(out), str(devices), str(meta_batch)],
                              capture_output=True, text=True, timeout=600, env=environ)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "stderr": proc.stderr}


@pytest.fixture(scope="module")
def pl_run(tmp_path_factory):
    return run_user("pl", tmp_path_factory.mktemp("pl"))


def test_lightning_users_get_the_same_numbers(tmp_path, pl_run):
    ours = run_user("L", tmp_path)
    assert (pl_run["backend"], ours["backend"]) == ("pytorch_lightning", "lightning")
    assert ours["val"] == pytest.approx(pl_run["val"], rel=1e-6) and set(ours["val"]) >= {"val/mse", "val/pre_mse"}
    assert ours["test"] == pytest.approx(pl_run["test"], rel=1e-6)
    torch.testing.assert_close(torch.tensor(ours["weights"]), torch.tensor(pl_run["weights"]), rtol=1e-6, atol=1e-7)
    assert "imported before" not in pl_run["stderr"] + ours["stderr"]  # no late-import warning in either


def test_lightning_two_rank_ddp_equals_one_device(tmp_path, pl_run):
    ddp = run_user("L", tmp_path, devices=2, meta_batch=2)
    assert ddp["backend"] == "lightning"
    torch.testing.assert_close(torch.tensor(ddp["weights"]), torch.tensor(pl_run["weights"]), rtol=1e-5, atol=1e-6)
    assert ddp["test"] == pytest.approx(pl_run["test"], rel=1e-5)


def test_environment_variable_overrides_the_import_order(tmp_path):
    """``pytorch_lightning`` user code with LIGHTNING_META_BACKEND=lightning is refused by pl.Trainer: the variable
    decides; the same code under the default works (the fixture)."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), ENV: "lightning"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "pl", str(tmp_path), "1", "4"], capture_output=True,
                          text=True, timeout=300, env=environ)
    assert proc.returncode == 1 and "must be a `LightningModule`" in proc.stderr


def test_cli_under_each_namespace(tmp_path):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    results = {}
    for backend in MODULES:
        environ = {**os.environ, "PYTHONPATH": str(REPO), ENV: backend, "WANDB_MODE": "offline"}
        command = [sys.executable, "-m", "lightning_meta", "test", "--config", str(config), "--data.test_episodes=6",
                   "--data.eval_meta_batch_size=3"]  # with the config's MetaWandbLogger (offline)
        cwd = tmp_path / backend
        cwd.mkdir()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environ, cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(list(cwd.glob("wandb/offline-run-*"))) == 1
        results[backend] = [line for line in proc.stdout.splitlines() if "test/mse " in line or "test/mse  " in line]
    assert results["lightning"] == results["pytorch_lightning"] and results["lightning"]


@pytest.mark.parametrize(("environ", "modules", "expected"), [
    ({ENV: "lightning"}, {"pytorch_lightning": 1}, ("lightning", False)),
    ({ENV: "pytorch_lightning"}, {"lightning.pytorch": 1}, ("pytorch_lightning", False)),
    ({}, {"lightning.pytorch": 1}, ("lightning", False)),
    ({}, {"pytorch_lightning": 1}, ("pytorch_lightning", False)),
    ({}, {}, ("pytorch_lightning", True)),
    ({}, {"lightning.pytorch": 1, "pytorch_lightning": 1}, ("pytorch_lightning", False)),
])
def test_the_selection_rule(environ, modules, expected):
    assert select_backend(environ, modules) == expected


def test_a_bad_backend_name_is_refused():
    with pytest.raises(ValueError, match=r"LIGHTNING_META_BACKEND='lightning\.pytorch': use one of"):
        select_backend({ENV: "lightning.pytorch"}, {})


def test_late_import_of_the_other_namespace_warns_once():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import lightning_meta\nimport lightning\nimport lightning.pytorch\n")
    environ = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("lightning_meta was imported before lightning.pytorch") == 1
    assert f"{ENV}=lightning" in proc.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_backend({}, {})  # the rule itself never warns
