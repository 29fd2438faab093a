"""What a checkpoint records beside the weights, as plain data (``checkpoint["lightning_meta"]``): the learner's class,
``task_info`` (task type, ways/shots, image preprocessing), the outer optimizer and scheduler. A learner loaded with
no arguments resumes with the optimizer it was trained with, exactly where uninterrupted training would be."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import REPO, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_meta import MAML, EpisodicDataModule, MetaLearner, OmniglotTasks, ProtoNet, SinusoidTasks
from lightning_meta.models import MLP, Conv4
from lightning_meta.models.spec import build_callable, callable_spec

SGD = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)
STEP_LR = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)


def sinusoid_learner(**kw) -> MAML:
    torch.manual_seed(0)
    return MAML(MLP(hidden=(8,)), inner_lr=0.01, **kw)


def datamodule() -> EpisodicDataModule:
    return EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=2, train_episodes_per_epoch=20,
                              val_episodes=2)


def fit(learner, steps: int, ckpt_path=None, save=None, **options):
    trainer = tiny_trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, **options)
    trainer.fit(learner, datamodule(), ckpt_path=ckpt_path)
    if save:
        trainer.save_checkpoint(save)
    return learner


def test_the_checkpoint_records_learner_task_and_optimizer_as_plain_data(tmp_path):
    fit(sinusoid_learner(optimizer=SGD, lr_scheduler=STEP_LR, lr_scheduler_interval="step"), 1, save=tmp_path / "a")
    record = torch.load(tmp_path / "a", weights_only=True)["lightning_meta"]
    assert record["learner"] == "lightning_meta.algorithms.maml.MAML"
    assert record["task"] == {"source": "SinusoidTasks", "task_type": "regression", "ways": 1, "shots": 5,
                              "queries": 5, "train_ways": None, "preprocessing": None}
    assert record["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.01, "momentum": 0.9}}
    assert record["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.StepLR"
    loaded = MAML.load_from_checkpoint(tmp_path / "a")
    assert loaded.task_info == record["task"]
    optimizer = loaded.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_a_loaded_learner_resumes_with_its_own_optimizer_exactly(tmp_path):
    """Was ``KeyError: 'step'``: the loaded learner built the default Adam and Lightning loaded SGD's state into it.
    The oracle: four steps without interruption."""
    options = dict(optimizer=SGD, lr_scheduler=STEP_LR, lr_scheduler_interval="step")
    straight = fit(sinusoid_learner(**options), 4)
    every_2 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    fit(sinusoid_learner(**options), 2, callbacks=[every_2], enable_checkpointing=True)
    path = tmp_path / "epoch=0-step=2.ckpt"
    resumed = fit(MAML.load_from_checkpoint(path), 4, ckpt_path=path)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_an_optimizer_given_to_load_from_checkpoint_wins_over_the_recorded_one(tmp_path):
    fit(sinusoid_learner(optimizer=SGD), 1, save=tmp_path / "a")
    adam = functools.partial(torch.optim.Adam, lr=0.5)
    optimizer = MAML.load_from_checkpoint(tmp_path / "a", optimizer=adam).configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 0.5


def test_metalearner_loads_whichever_learner_the_checkpoint_holds_and_another_learner_is_refused(tmp_path):
    fit(sinusoid_learner(), 1, save=tmp_path / "maml.ckpt")
    assert type(MetaLearner.load_from_checkpoint(tmp_path / "maml.ckpt")) is MAML
    with pytest.raises(ValueError, match=r"maml\.ckpt is a checkpoint of MAML, not of ProtoNet: load it with "
                                         r"MAML\.load_from_checkpoint"):
        ProtoNet.load_from_checkpoint(tmp_path / "maml.ckpt")


def test_callable_specs_cover_partials_classes_and_cli_callables_and_skip_lambdas():
    assert callable_spec(SGD) == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.01, "momentum": 0.9}}
    assert callable_spec(torch.optim.Adam) == {"class_path": "torch.optim.adam.Adam", "init_args": {}}
    assert callable_spec(lambda params: torch.optim.SGD(params, lr=1)) is None
    assert callable_spec(functools.partial(torch.optim.SGD, lr=torch.tensor(1.0))) is None  # not plain data
    assert callable_spec(None) is None
    rebuilt = build_callable(callable_spec(SGD), "optimizer")
    assert rebuilt.func is torch.optim.SGD and rebuilt.keywords == SGD.keywords
    with pytest.raises(ValueError, match="cannot import the recorded optimizer class 'torch.optim.Nope'"):
        build_callable({"class_path": "torch.optim.Nope"}, "optimizer")


def test_an_omniglot_learner_records_the_preprocessing_that_prepares_new_images(omniglot, tmp_path):
    torch.manual_seed(0)
    tasks = OmniglotTasks(str(omniglot), ways=3, shots=1, queries=1)
    learner = MAML(Conv4(out_features=3, hidden=8), inner_lr=0.4)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(learner, EpisodicDataModule(tasks, meta_batch_size=1, train_episodes_per_epoch=1))
    trainer.save_checkpoint(tmp_path / "omniglot.ckpt")
    info = MetaLearner.load_from_checkpoint(tmp_path / "omniglot.ckpt").task_info
    assert info["ways"] == 3 and info["shots"] == 1 and info["source"] == "OmniglotTasks"
    assert info["preprocessing"] == {"image_size": 28, "channels": 1, "invert": True, "mean": None, "std": None}


USER_NET = '''
import torch


class Net(torch.nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)
'''


def test_a_users_backbone_class_configured_in_the_cli_is_recorded_and_rebuilt(tmp_path, monkeypatch):
    """A class without ``records_init_args``: LightningCLI's config names it and its arguments, and that is recorded."""
    (tmp_path / "usernet.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from lightning_meta.cli import main

    config = str(REPO / "examples/configs/sinusoid_maml.yaml")
    cli = main(["fit", "--config", config, "--model.init_args.model=usernet.Net", "--model.init_args.model.width=6",
                "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.logger=false",
                "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={tmp_path}"])
    path = tmp_path / "user.ckpt"
    cli.trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["model"] == {"class_path": "usernet.Net", "init_args": {"width": 6}}
    loaded = MetaLearner.load_from_checkpoint(path)
    assert type(loaded.model).__name__ == "Net" and loaded.model.net[0].out_features == 6
