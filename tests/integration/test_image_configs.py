"""The example configs of the RGB datasets: each parses with the CLI without the data, and fits on a synthetic copy."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from lightning_meta.cli import main
from lightning_meta.data import synthetic

SOURCES = {"MiniImageNetTasks": 84, "TieredImageNetTasks": 84, "CIFARFSTasks": 32, "FC100Tasks": 32}
CONFIGS = sorted(c for c in (REPO / "examples" / "configs").glob("*.yaml")
                 if any(s in c.read_text() for s in SOURCES))
OFFLINE = ["--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"]


def test_every_dataset_has_maml_protonet_and_blackbox_configs():
    stems = {c.stem for c in CONFIGS}
    for dataset in ("miniimagenet", "tieredimagenet", "cifar_fs", "fc100"):
        assert {f"{dataset}_maml_5way1shot", f"{dataset}_protonet_5way1shot", f"{dataset}_blackbox_5way1shot"} <= stems
    assert "miniimagenet_maml_5way5shot" in stems and len(CONFIGS) == 13


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_without_the_data(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    parsed = yaml.safe_load(capsys.readouterr().out)
    source = parsed["data"]["tasks"]["class_path"].rsplit(".", 1)[-1]
    backbone = parsed["model"]["init_args"].get("model") or parsed["model"]["init_args"]["encoder"]
    assert backbone["class_path"] == "lightning_meta.models.Conv4"
    assert backbone["init_args"]["in_channels"] == 3 and backbone["init_args"]["image_size"] == SOURCES[source]
    assert parsed["data"]["tasks"]["init_args"]["ways"] == 5
    text = config.read_text()
    assert "Published" in text or "Yardsticks" in text


@pytest.fixture(scope="module")
def synthetic_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("config_data")
    cifar = synthetic.synthetic_cifar100(base / "cifar", images_per_class=6)
    return {"MiniImageNetTasks": synthetic.synthetic_miniimagenet(base / "mini", images_per_class=3),
            "TieredImageNetTasks": synthetic.synthetic_tieredimagenet(base / "tiered", "npz", images_per_class=3),
            "CIFARFSTasks": cifar, "FC100Tasks": cifar}


@pytest.mark.parametrize("name", ["miniimagenet_maml_5way1shot", "tieredimagenet_protonet_5way1shot",
                                  "cifar_fs_blackbox_5way1shot", "fc100_maml_5way1shot"])
def test_config_fits_one_step_on_synthetic_data(name, synthetic_roots, tmp_path, monkeypatch):
    config = REPO / "examples" / "configs" / f"{name}.yaml"
    source = next(s for s in SOURCES if s in config.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_META_CACHE", str(tmp_path / "cache"))
    cli = main(["fit", "--config", str(config), "--trainer.fast_dev_run=1", *OFFLINE,
                f"--data.tasks.init_args.root={synthetic_roots[source]}", "--data.meta_batch_size=1",
                "--data.eval_meta_batch_size=1", "--data.num_workers=0",
                "--data.tasks.init_args.queries=2"])
    assert cli.trainer.global_step == 1
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0
