"""``<Learner>.load_from_checkpoint(path)`` with no arguments: the backbone is recorded as plain data (class path and
init arguments), so a fresh process rebuilds every learner from its checkpoint alone, under ``weights_only=True`` and
both Lightning namespaces, and predicts what the saved learner predicted."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_user_file, tiny_trainer
from torch import nn

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP
from lightning_meta.models.spec import build_module, module_spec

#: each learner as a user builds it (the package's backbones), and the task type it predicts
LEARNERS = {
    "MAML": ("MAML(Conv4(out_features=3, hidden=8, image_size=16), inner_lr=0.1, eval_inner_steps=2)", "images"),
    "IMAML": ("IMAML(MLP(hidden=(8,)), inner_lr=0.01, inner_steps=3, cg_steps=2)", "sinusoid"),
    "Reptile": ("Reptile(MLP(hidden=(8,)), inner_lr=0.01, inner_steps=2, inner_optimizer='sgd')", "sinusoid"),
    "ProtoNet": ("ProtoNet(Conv4(embed_only=True, hidden=8, image_size=16))", "images"),
    "BlackBoxAdaptation": ("BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, task_dim=4, hidden=8)",
                           "sinusoid"),
}

TASKS = {"images": "ClassificationTasks(images, ways=3, shots=2, queries=1, splits={'train': [0, 1, 2], "
                     "'val': [3, 4, 5]})",
         "sinusoid": "SinusoidTasks()"}

SAVE = '''
import json, sys
import torch
from {namespace} import Trainer
from torch.utils.data import TensorDataset
from lightning_meta import (IMAML, MAML, BlackBoxAdaptation, ClassificationTasks, EpisodicDataModule, ProtoNet,
                            Reptile, SinusoidTasks)
from lightning_meta.models import MLP, Conv4

torch.manual_seed(0)
learner = {build}
images = TensorDataset(torch.rand(60, 1, 16, 16), torch.arange(60) % 6)
tasks = {tasks}
trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0)
trainer.fit(learner, EpisodicDataModule(tasks, meta_batch_size=2))  # one step moves the weights
trainer.save_checkpoint("learner.ckpt")
'''

LOAD = '''
import sys
import torch
import {namespace}
from lightning_meta import {name}, TaskBatch

learner = {name}.load_from_checkpoint("learner.ckpt", weights_only=True)  # in training mode, as Lightning returns it
batch = TaskBatch(**torch.load("batch.pt", weights_only=True))
adapted = learner.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0])  # predicts in eval mode anyway
learner.eval()
torch.save({{"predictions": learner.predict_step(batch, 0), "state": learner.state_dict(), "adapted": adapted}},
           "loaded.pt")
'''


def batch_for(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind == "images":
        return {"support_x": torch.rand(2, 6, 1, 16, 16, generator=g), "support_y": torch.arange(3).repeat(2, 2),
                "query_x": torch.rand(2, 3, 1, 16, 16, generator=g), "query_y": torch.arange(3).repeat(2, 1)}
    x = torch.rand(2, 10, 1, generator=g) * 10 - 5
    y = torch.sin(x)
    return {"support_x": x[:, :5], "support_y": y[:, :5], "query_x": x[:, 5:], "query_y": y[:, 5:]}


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
@pytest.mark.parametrize("name", list(LEARNERS))
def test_a_fresh_process_loads_every_learner_from_its_checkpoint_alone(tmp_path, name, namespace):
    build, kind = LEARNERS[name]
    torch.save(batch_for(kind), tmp_path / "batch.pt")
    backend = namespace.split(".")[0]
    tasks = TASKS[kind]
    for step, source in (("save", SAVE), ("load", LOAD)):
        code = source.format(namespace=namespace, build=build, name=name, tasks=tasks)
        proc = run_user_file(code, tmp_path, f"{step}.py", LIGHTNING_META_BACKEND=backend)
        assert proc.returncode == 0, f"{step}.py failed:\n{proc.stderr[-3000:]}"
    checkpoint = torch.load(tmp_path / "learner.ckpt", weights_only=True)  # plain data only: no pickled module
    spec = checkpoint["hyper_parameters"]["model" if name in ("MAML", "IMAML", "Reptile") else "encoder"]
    assert spec["class_path"].startswith("lightning_meta.models.") and json.dumps(spec)
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    assert loaded["state"].keys() == checkpoint["state_dict"].keys()
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(loaded["state"][key], value, rtol=0, atol=0)
    # the saved learner, rebuilt here from its own spec and weights, predicts what the fresh process predicted
    learner = LEARNERS_BY_NAME[name](build_module(spec, "model", name), checkpoint)
    expected = learner.eval().predict_step(TaskBatch(**batch_for(kind)), 0)
    torch.testing.assert_close(loaded["predictions"], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loaded["adapted"], expected[0], rtol=1e-5, atol=1e-5)  # adapt(): task 0 alone


def _rebuild(name: str):
    import lightning_meta

    def build(backbone: nn.Module, checkpoint: dict):
        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k not in ("model", "encoder")}
        learner = getattr(lightning_meta, name)(backbone, **hparams)
        learner.load_state_dict(checkpoint["state_dict"])
        return learner
    return build


LEARNERS_BY_NAME = {name: _rebuild(name) for name in LEARNERS}


def hand_built() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))


def test_a_hand_built_backbone_is_named_as_the_way_to_load(tmp_path):
    """A module whose arguments cannot be recorded is left out of the hyper-parameters (so the CLI's ``--ckpt_path``
    keeps the configured model): loading without it is an error saying to pass ``model=``; passing it loads the
    same weights."""
    learner = MAML(hand_built(), inner_lr=0.01)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(learner, EpisodicDataModule(SinusoidTasks(), meta_batch_size=2))
    trainer.save_checkpoint(tmp_path / "hand.ckpt")
    assert "model" not in torch.load(tmp_path / "hand.ckpt", weights_only=True)["hyper_parameters"]
    with pytest.raises(ValueError, match=r"MAML: this checkpoint does not record how to build its model .*"
                                         r"MAML.load_from_checkpoint\(path, model=<the same architecture>\)"):
        MAML.load_from_checkpoint(tmp_path / "hand.ckpt", weights_only=True)
    loaded = MAML.load_from_checkpoint(tmp_path / "hand.ckpt", model=hand_built(), weights_only=True)
    for (key, value), other in zip(learner.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(other, value, rtol=0, atol=0, msg=key)


def test_module_spec_round_trips_and_refuses_what_it_cannot_record():
    mlp = MLP(in_features=2, out_features=3, hidden=(5, 7), activation="tanh")
    spec = module_spec(mlp)
    assert spec == {"class_path": "lightning_meta.models.backbones.MLP",
                    "init_args": {"in_features": 2, "out_features": 3, "hidden": [5, 7], "activation": "tanh"}}
    rebuilt = build_module(spec, "model", "MAML")
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in mlp.parameters()]
    assert module_spec(hand_built()) is None
    with pytest.raises(ValueError, match="cannot import the model class 'lightning_meta.models.Nothing'"):
        build_module({"class_path": "lightning_meta.models.Nothing"}, "model", "MAML")
    with pytest.raises(TypeError, match="model must be an nn.Module or a"):
        build_module(3, "model", "MAML")
