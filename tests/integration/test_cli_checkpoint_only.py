"""``lightning-meta validate|test|predict --ckpt_path CKPT`` with no ``--config``, ``--model`` or ``--data``: the
checkpoint's recorded learner and data config (``lightning-meta fit`` records the run's ``data`` config as
``run_config``) configure the run; and where ``predict``'s predictions go (``PredictionWriter``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, run_script, run_user_file, tiny_trainer

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.callbacks import PredictionWriter
from lightning_meta.cli import main
from lightning_meta.models import MLP

CONFIG = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
EPISODES, QUERIES = 6, 10  # the tiny run's test episodes; the config's queries per task
TINY = [
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=1",
    "--data.meta_batch_size=2",
    "--data.val_episodes=4",
    f"--data.test_episodes={EPISODES}",
    "--data.eval_meta_batch_size=4",
    "--trainer.logger=false",
    "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "lightning_meta", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step ``lightning-meta fit`` (in this process: ``main`` is what the console script runs), its checkpoint
    written by the Trainer's default ModelCheckpoint; returns (directory, checkpoint)."""
    cwd = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", str(CONFIG), *TINY, f"--trainer.default_root_dir={cwd}"])
    checkpoints = sorted(cwd.glob("**/*.ckpt"))
    assert checkpoints, f"no checkpoint under {cwd}"
    return cwd, checkpoints[0]


def test_fit_records_the_data_config_as_plain_data(fitted):
    _, ckpt = fitted
    data = torch.load(ckpt, weights_only=True)["lightning_meta"]["data"]
    assert data["tasks"]["class_path"] == "lightning_meta.SinusoidTasks"
    assert data["tasks"]["init_args"]["shots"] == 10 and data["tasks"]["init_args"]["queries"] == QUERIES
    assert data["meta_batch_size"] == 2 and data["test_episodes"] == EPISODES
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # what a YAML config holds


def test_test_with_the_checkpoint_alone_prints_metrics(fitted):
    cwd, ckpt = fitted
    proc = run(["test", "--ckpt_path", str(ckpt)], cwd)
    assert_ok(proc)
    assert "test/mse" in proc.stdout and "test/pre_mse" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_predict_with_the_checkpoint_alone_writes_predictions(fitted, tmp_path):
    _, ckpt = fitted
    proc = run(["predict", f"--ckpt_path={ckpt}", "--trainer.logger=false"], tmp_path)
    assert_ok(proc)
    written = tmp_path / "predictions.pt"  # no logger: the Trainer's default_root_dir, the working directory
    assert f"PredictionWriter: wrote {written} (predictions [{EPISODES}, {QUERIES}, 1])" in proc.stdout
    record = torch.load(written, weights_only=True)
    assert record["predictions"].shape == (EPISODES, QUERIES, 1)
    assert record["episodes"].tolist() == list(range(EPISODES))


def test_validate_with_the_checkpoint_alone_and_overrides(fitted, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # LightningCLI saves config.yaml in the working directory (no logger)
    _, ckpt = fitted
    cli = main(
        [
            "validate",
            "--ckpt_path",
            str(ckpt),
            "--data.val_episodes=3",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert type(cli.model).__name__ == "MAML" and cli.model.eval_inner_steps == 10  # the recorded learner
    assert cli.datamodule.val_episodes == 3 and cli.datamodule.tasks.shots == 10  # recorded data + the override
    assert "val/mse" in capsys.readouterr().out


def test_predict_with_a_config_writes_predictions_of_the_right_shape(fitted, tmp_path):
    _, ckpt = fitted
    main(
        [
            "predict",
            "--config",
            str(CONFIG),
            *TINY,
            "--data.test_episodes=5",
            f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    record = torch.load(tmp_path / "predictions.pt", weights_only=True)
    assert record["predictions"].shape == (5, QUERIES, 1) and record["predictions"].isfinite().all()


def test_a_checkpoint_without_a_data_config_says_to_pass_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learner = MAML(MLP(1, 1, hidden=[8]), inner_lr=0.01)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(learner, EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=2, val_episodes=0))
    trainer.save_checkpoint(tmp_path / "python.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["test", "--ckpt_path", str(tmp_path / "python.ckpt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "records no data config" in err and "--data.tasks=" in err and "--config" in err
    cli = main(
        [
            "test",
            "--ckpt_path",
            str(tmp_path / "python.ckpt"),
            "--data.tasks=lightning_meta.SinusoidTasks",
            "--data.test_episodes=2",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.trainer.callback_metrics["test/mse"].isfinite()  # the learner from the checkpoint, --data given


def test_a_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["test", "--ckpt_path", str(tmp_path / "missing.ckpt")])
    assert exit_.value.code == 2
    assert "missing.ckpt: no such file" in capsys.readouterr().err


def test_prediction_writer_file_per_rank(tmp_path):
    writer = PredictionWriter(tmp_path, filename="out.pt")
    one = SimpleNamespace(world_size=1, global_rank=0)
    two = SimpleNamespace(world_size=2, global_rank=1)
    assert writer.file_for(one) == tmp_path / "out.pt"
    assert writer.file_for(two) == tmp_path / "out-rank1.pt"


def test_prediction_writer_with_the_lightning_namespace(tmp_path):
    """``import lightning as L`` users: the writer is a ``lightning.pytorch`` callback there (the doctest of
    ``PredictionWriter`` runs the ``pytorch_lightning`` one)."""
    source = """
import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.callbacks import PredictionWriter
from lightning_meta.models import MLP

writer = PredictionWriter("out")
assert isinstance(writer, BasePredictionWriter)
trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
data = EpisodicDataModule(SinusoidTasks(shots=3, queries=4), test_episodes=5, eval_meta_batch_size=2)
trainer.predict(MAML(MLP(1, 1, hidden=[8])), data)
print("SHAPE", list(torch.load("out/predictions.pt")["predictions"].shape))
"""
    proc = run_user_file(source, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SHAPE [5, 4, 1]" in proc.stdout


def test_prediction_writer_under_two_rank_ddp_equals_one_device(tmp_path):
    """Real DDP (gloo, 2 ranks): each rank writes its episodes; together, ordered by ``"episodes"``, they are the
    one-device predictions (7 episodes: the ranks predict 4 and 3)."""
    from ddp_predict import build

    run_script("ddp_predict.py", str(tmp_path))
    ranks = [torch.load(tmp_path / f"predictions-rank{r}.pt", weights_only=True) for r in range(2)]
    assert sorted(len(r["episodes"]) for r in ranks) == [3, 4]
    episodes = torch.cat([r["episodes"] for r in ranks])
    predictions = torch.cat([r["predictions"] for r in ranks])[episodes.argsort()]
    learner, data = build()
    oracle = tiny_trainer(callbacks=[PredictionWriter(tmp_path / "one")])
    oracle.predict(learner, data)
    expected = torch.load(tmp_path / "one" / "predictions.pt", weights_only=True)
    assert sorted(episodes.tolist()) == expected["episodes"].tolist() == list(range(7))
    torch.testing.assert_close(predictions, expected["predictions"], rtol=1e-6, atol=1e-6)


def test_prediction_writer_with_two_dataloader_workers_equals_none(tmp_path):
    """``num_workers=2`` (worker processes) and 0 write the same predictions and episode indices."""
    written = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        learner = MAML(MLP(1, 1, hidden=[8]), eval_inner_steps=2)
        data = EpisodicDataModule(SinusoidTasks(shots=5, queries=4), test_episodes=7, eval_meta_batch_size=2,
                                  num_workers=workers)
        tiny_trainer(callbacks=[PredictionWriter(tmp_path / str(workers))]).predict(learner, data)
        written[workers] = torch.load(tmp_path / str(workers) / "predictions.pt", weights_only=True)
    assert written[2]["episodes"].tolist() == written[0]["episodes"].tolist() == list(range(7))
    torch.testing.assert_close(written[2]["predictions"], written[0]["predictions"], rtol=0, atol=0)
