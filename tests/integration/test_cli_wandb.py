import os
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, omniglot_root
from wandb_reader import read_run

from lightning_meta.cli import main
from lightning_meta.loggers import INIT_TIMEOUT_S

#: configs of the RGB datasets need a local copy; tests/integration/test_image_configs.py runs them on synthetic
#: stand-ins
IMAGE_SOURCES = ("MiniImageNetTasks", "TieredImageNetTasks", "CIFARFSTasks", "FC100Tasks")
CONFIGS = sorted(c for c in (REPO / "examples" / "configs").glob("*.yaml")
                 if not any(source in c.read_text() for source in IMAGE_SOURCES))
SMALL = ["--data.meta_batch_size=2", "--data.eval_meta_batch_size=2", "--data.num_workers=0"]


FALLBACK = "W&B could not start online"


@pytest.fixture
def refused_url():
    """``http://127.0.0.1:PORT`` where every connection is refused: the port is bound (so nothing else takes
    it) but not listening, for as long as the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, refused_url):
    """A fresh working directory and a fresh W&B state (its settings singleton reads the environment once);
    any run a test leaves open (e.g. after a failed setup) is finished. W&B's server address refuses
    connections and its config folder is the test's own, so nothing here can reach the internet."""
    import wandb

    wandb.teardown()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", refused_url)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path
    wandb.finish()
    wandb.teardown()


def uses_omniglot(config: Path) -> bool:
    return "OmniglotTasks" in config.read_text()


def data_args(config: Path) -> list[str]:
    return [f"--data.tasks.init_args.root={omniglot_root()}"] if uses_omniglot(config) else []


def fallback_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if FALLBACK in str(w.message)]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_example_config_runs(config, in_tmp, request):
    if uses_omniglot(config):
        request.getfixturevalue("omniglot")  # skips (with the reason) where the Omniglot data is missing
    cli = main(["fit", "--config", str(config), "--trainer.fast_dev_run=1", *SMALL, *data_args(config)])
    assert cli.trainer.global_step == 1


def test_sinusoid_example_configs_do_not_need_omniglot():
    """The example-config test above skips only the configs that read Omniglot."""
    sinusoid = [c.stem for c in CONFIGS if not uses_omniglot(c)]
    assert {"sinusoid_maml", "blackbox_sinusoid"} <= set(sinusoid)
    assert all("omniglot" in c.stem for c in CONFIGS if uses_omniglot(c))


def test_print_config_is_complete_and_valid(in_tmp, capsys):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    parsed = yaml.safe_load(printed)
    assert parsed["model"]["init_args"]["meta_gradient"] == "second_order"
    assert parsed["model"]["init_args"]["hvp_method"] == "autograd"  # defaults are filled in
    assert parsed["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.Adam"
    assert "optimizer" not in parsed  # one place to set it: under the model
    (in_tmp / "full.yaml").write_text(printed)
    cli = main(["fit", "--config", "full.yaml", "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1
    assert type(cli.trainer.optimizers[0]) is torch.optim.Adam and cli.trainer.optimizers[0].defaults["lr"] == 1e-3


def test_unknown_meta_gradient_names_the_choices(in_tmp, capsys):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--model.init_args.meta_gradient=third_order"])
    err = capsys.readouterr().err
    assert "meta_gradient" in err and "third_order" in err and "second_order" in err and "hvp" in err


def test_negative_lr_rejected_before_training(in_tmp):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with pytest.raises(ValueError, match="inner_lr must be a finite number > 0, got -0.5"):
        main(["fit", "--config", str(config), "--model.init_args.inner_lr=-0.5"])


def test_ways_the_data_cannot_provide_rejected_before_training(in_tmp, omniglot):
    config = REPO / "examples" / "configs" / "omniglot_maml_5way1shot.yaml"
    cli = main(["--config", str(config), "--data.tasks.init_args.ways=700", *data_args(config)], run=False)
    with pytest.raises(ValueError, match="ways=700 is larger than the 688 classes of the 'val' split"):
        cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 0


def test_wandb_offline_run_has_metrics_curves_and_config(in_tmp):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    cli = main(["--config", str(config), "--trainer.max_steps=20",
                f"--trainer.logger.init_args.save_dir={in_tmp}", "--trainer.val_check_interval=10",
                "--trainer.log_every_n_steps=5", "--model.init_args.eval_inner_steps=4"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    cli.trainer.logger.experiment.finish()
    run = read_run(next((in_tmp / "wandb").glob("offline-run-*")))
    keys = set().union(*run["history"])
    for key in ("train/loss", "train/mse", "val/mse", "val/pre_mse", "val/mse_ci95", "lr-Adam",
                "val/adaptation_curve_loss_table/nrows", "test/mse", "test/mse_ci95", "test/pre_mse"):
        assert key in keys, key
    curve_rows = [h["val/adaptation_curve_loss_table/nrows"] for h in run["history"]
                  if "val/adaptation_curve_loss_table/nrows" in h]
    assert curve_rows and set(curve_rows) == {5}  # steps 0..4
    assert run["summary"]["test/mse_ci95"] == pytest.approx(result["test/mse_ci95"], rel=1e-6)
    assert run["config"]["model"]["init_args"]["inner_lr"] == 0.01
    assert run["config"]["trainer"]["max_steps"] == 20 and run["config"]["data"]["meta_batch_size"] == 25
    lrs = [h["lr-Adam"] for h in run["history"] if "lr-Adam" in h]
    assert lrs and all(v == pytest.approx(1e-3) for v in lrs)


def test_wandb_episode_grid_for_omniglot(in_tmp, omniglot):
    config = REPO / "examples" / "configs" / "omniglot_maml_5way1shot.yaml"
    cli = main(["--config", str(config), "--trainer.max_steps=1",
                f"--trainer.logger.init_args.save_dir={in_tmp}", "--trainer.limit_val_batches=1",
                "--trainer.val_check_interval=1", *SMALL, *data_args(config)], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    cli.trainer.logger.experiment.finish()
    run = read_run(next((in_tmp / "wandb").glob("offline-run-*")))
    images = [h for h in run["history"] if h.get("val/episode/_type") == "image-file"]
    assert images and images[0]["val/episode/width"] > images[0]["val/episode/height"] > 0
    assert os.path.exists(next((in_tmp / "wandb").glob("offline-run-*")) / "files" / images[0]["val/episode/path"])


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_evaluation_subcommands(in_tmp, subcommand):
    config = REPO / "examples" / "configs" / "blackbox_sinusoid.yaml"
    stage = "val" if subcommand == "validate" else "test"
    # one batch of 100 episodes (`limit_*_batches=1` reaches the Trainer as 1.0, i.e. every batch)
    cli = main([subcommand, "--config", str(config), f"--data.{stage}_episodes=100", "--trainer.logger=false"])
    assert cli.trainer.state.finished
    metrics = cli.trainer.callback_metrics
    assert {f"{stage}/loss", f"{stage}/mse", f"{stage}/mse_ci95"} <= set(metrics)
    assert 0 < float(metrics[f"{stage}/mse"]) < 100 and float(metrics[f"{stage}/mse_ci95"]) > 0


def test_predict_subcommand_returns_the_models_query_predictions(in_tmp):
    """``predict`` gives ``[T, Q, y_dim]`` query means: those of the model's own ``predict_step`` on the same
    test episodes, whose MSE against the query targets is the ``test`` subcommand's ``test/mse``."""
    config = REPO / "examples" / "configs" / "blackbox_sinusoid.yaml"
    cli = main(["predict", "--config", str(config), "--data.test_episodes=100", "--trainer.logger=false"])
    assert cli.trainer.state.finished
    (predictions,) = cli.trainer.predict_loop.predictions  # one batch
    batch = next(iter(cli.datamodule.predict_dataloader()))
    assert predictions.shape == (100, 10, 1) == batch.query_y.shape  # eval_meta_batch_size tasks, 10 queries
    assert predictions.dtype == torch.float32 and predictions.std() > 0
    cli.model.eval()
    with torch.inference_mode():
        expected = cli.model.predict_step(batch, 0)
    torch.testing.assert_close(predictions, expected)
    mse = ((predictions - batch.query_y) ** 2).flatten(1).mean(1).mean()
    result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)  # the same 100 test episodes
    assert result[0]["test/mse"] == pytest.approx(float(mse), rel=1e-5)


def test_wandb_online_without_network_falls_back_to_offline(in_tmp, monkeypatch, refused_url):
    """W&B online, with an API key, against a server that refuses connections: the run starts offline
    within the logger's init timeout, says so once, and logs everything to ./wandb as usual."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a key, so W&B goes to the network rather than stopping
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    cli = main(["--config", str(config), "--trainer.max_steps=3", "--trainer.log_every_n_steps=1",
                "--trainer.val_check_interval=3", "--data.val_episodes=25", "--data.test_episodes=25"], run=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        run = cli.trainer.logger.experiment  # Lightning starts the run here, at the first log
        started_s = time.monotonic() - start
        cli.trainer.fit(cli.model, cli.datamodule)
        train_loss = float(cli.trainer.callback_metrics["train/loss"])
        result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
        run.finish()
    print(f"online start without network gave up after {started_s:.1f} s")
    assert started_s < INIT_TIMEOUT_S + 15  # W&B's init_timeout, plus its 10 s grace and service start-up
    (message,) = fallback_warnings(caught)  # said once
    assert refused_url in message and "connection refused" in message  # it did go to the network
    assert run.settings.mode == "offline" and cli.trainer.logger.version == run.id
    (run_dir,) = (in_tmp / "wandb").glob("offline-run-*")
    assert run_dir.name.endswith(run.id)
    logged = read_run(run_dir)
    train = [h for h in logged["history"] if "train/loss" in h]
    assert [h["trainer/global_step"] for h in train] == [0, 1, 2]
    assert train[-1]["train/loss"] == pytest.approx(train_loss, rel=1e-6)
    assert logged["summary"]["test/mse"] == pytest.approx(result["test/mse"], rel=1e-6)
    assert logged["config"]["trainer"]["max_steps"] == 3 and logged["config"]["data"]["test_episodes"] == 25


def test_wandb_online_without_api_key_falls_back_to_offline_at_once(in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the fixture removed WANDB_API_KEY
    from lightning_meta.loggers import MetaWandbLogger

    logger = MetaWandbLogger(project="p")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        logger.log_metrics({"m": 1.5}, step=4)
        logger.log_metrics({"m": 2.5}, step=5)
        started_s = time.monotonic() - start
        logger.experiment.finish()
    (message,) = fallback_warnings(caught)
    assert "API key" in message and started_s < 15
    (run_dir,) = (in_tmp / "wandb").glob("offline-run-*")
    history = read_run(run_dir)["history"]
    assert [(h["m"], h["trainer/global_step"]) for h in history] == [(1.5, 4), (2.5, 5)]


def test_cli_without_wandb_mode_logs_offline(in_tmp, monkeypatch):
    """``WANDB_MODE`` unset (a user's shell): the example config logs offline at once, with no warning."""
    monkeypatch.delenv("WANDB_MODE")
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        cli = main(["fit", "--config", str(config), "--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
                    "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2", "--data.val_episodes=25"])
        elapsed = time.monotonic() - start
        cli.trainer.logger.experiment.finish()
    assert not fallback_warnings(caught) and elapsed < 60
    assert cli.trainer.logger.experiment.settings.mode == "offline"
    (run_dir,) = (in_tmp / "wandb").glob("offline-run-*")
    logged = read_run(run_dir)
    train = [h["train/loss"] for h in logged["history"] if "train/loss" in h]
    assert len(train) == 2 and train[-1] == pytest.approx(float(cli.trainer.callback_metrics["train/loss"]))
    assert logged["config"]["trainer"]["max_steps"] == 2


def test_logger_without_wandb_mode_is_offline_and_leaves_the_environment(in_tmp, monkeypatch):
    """Outside the CLI (which sets ``WANDB_MODE`` itself) the logger's own default is offline too, without
    changing the process environment."""
    monkeypatch.delenv("WANDB_MODE")
    from lightning_meta.loggers import MetaWandbLogger

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = MetaWandbLogger(project="p")
        logger.log_metrics({"m": 0.25}, step=7)
        logger.experiment.finish()
    assert not fallback_warnings(caught) and "WANDB_MODE" not in os.environ
    (run_dir,) = (in_tmp / "wandb").glob("offline-run-*")
    (row,) = read_run(run_dir)["history"]
    assert row["m"] == 0.25 and row["trainer/global_step"] == 7


def test_training_runs_without_wandb_installed(in_tmp, monkeypatch):
    import sys

    from lightning_meta.loggers import MetaWandbLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    with pytest.warns(UserWarning, match="wandb is not importable"):
        logger = MetaWandbLogger(project="p", save_dir=str(in_tmp))
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    cli = main(["--config", str(config), "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
                "--trainer.val_check_interval=3"], run=False)
    cli.trainer.loggers = [logger]
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 3 and not (in_tmp / "wandb").exists()
    assert (logger.save_dir, logger.name, logger.version) == (str(in_tmp), "p", None)
    assert len(list((in_tmp / "p").glob("*/checkpoints/*.ckpt"))) == 1  # checkpoints still go where they did
