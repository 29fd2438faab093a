import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO, omniglot_root
from wandb_reader import read_run

from lightning_meta.cli import main

CONFIGS = sorted((REPO / "examples" / "configs").glob("*.yaml"))
SMALL = ["--data.meta_batch_size=2", "--data.eval_meta_batch_size=2", "--data.num_workers=0"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh working directory and a fresh W&B state (its settings singleton reads the environment once);
    any run a test leaves open (e.g. after a failed setup) is finished."""
    import wandb

    wandb.teardown()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield tmp_path
    wandb.finish()
    wandb.teardown()


def data_args(config: Path) -> list[str]:
    text = config.read_text()
    return [f"--data.tasks.init_args.root={omniglot_root()}"] if "OmniglotTasks" in text else []


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_example_config_runs(config, in_tmp, omniglot):
    cli = main(["fit", "--config", str(config), "--trainer.fast_dev_run=1", *SMALL, *data_args(config)])
    assert cli.trainer.global_step == 1


def test_print_config_is_complete_and_valid(in_tmp, capsys):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    parsed = yaml.safe_load(printed)
    assert parsed["model"]["init_args"]["meta_gradient"] == "second_order"
    assert parsed["model"]["init_args"]["hvp_method"] == "autograd"  # defaults are filled in
    assert parsed["optimizer"]["class_path"] == "torch.optim.Adam"
    (in_tmp / "full.yaml").write_text(printed)
    cli = main(["fit", "--config", "full.yaml", "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1


def test_unknown_meta_gradient_names_the_choices(in_tmp, capsys):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--model.init_args.meta_gradient=third_order"])
    err = capsys.readouterr().err
    assert "meta_gradient" in err and "third_order" in err and "second_order" in err and "hvp" in err


def test_negative_lr_rejected_before_training(in_tmp):
    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    with pytest.raises(ValueError, match="inner_lr must be a number > 0, got -0.5"):
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


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_subcommands(in_tmp, subcommand):
    config = REPO / "examples" / "configs" / "blackbox_sinusoid.yaml"
    args = [subcommand, "--config", str(config), "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.limit_predict_batches=1", "--trainer.logger=false"]
    if subcommand != "validate":
        args = [a for a in args if a != "--trainer.limit_val_batches=1"]
    cli = main([a for a in args if not (subcommand == "predict" and "test_batches" in a)])
    assert cli.trainer.state.finished


def test_wandb_online_without_network_falls_back_to_offline(in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(in_tmp / "wandb-config"))
    from lightning_meta.loggers import MetaWandbLogger

    logger = MetaWandbLogger(project="p", save_dir=str(in_tmp))
    with pytest.warns(UserWarning, match="W&B could not start online"):
        run = logger.experiment
    run.log({"x": 1.0})
    run.finish()
    assert list((in_tmp / "wandb").glob("offline-run-*"))


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
