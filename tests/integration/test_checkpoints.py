"""A checkpoint path naming a file that is not a PyTorch checkpoint gets an error naming the file (not torch's
``weights_only`` advice); a well-formed checkpoint keeps loading, and keeps torch's own errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_trainer

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.checkpoints import ReadableCheckpointIO, UnreadableCheckpointError, why_not_a_checkpoint
from lightning_meta.models import MLP


def trainer(root: Path, steps: int) -> pl.Trainer:
    return tiny_trainer(max_steps=steps, default_root_dir=str(root))


def data() -> EpisodicDataModule:
    return EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=2, train_episodes_per_epoch=8,
                              val_episodes=0)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real 2-step MAML checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    run = trainer(root, 2)
    run.fit(MAML(MLP(hidden=(8,)), inner_lr=0.01), data())
    run.save_checkpoint(root / "good.ckpt")
    return root / "good.ckpt"


def damaged(good: Path, root: Path, how: str) -> Path:
    path = root / f"{how}.ckpt"
    if how == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "html":
        path.write_text("<html><body>403 Forbidden</body></html>")
    else:  # a zip, but not one torch.save wrote
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("images/0001.png", b"not a checkpoint")
    return path


@pytest.mark.parametrize("how, reason", [("truncated", "neither a zip archive"), ("empty", "empty (0 bytes)"),
                                         ("html", "neither a zip archive"), ("other zip", "no data.pkl")])
def test_damaged_files_are_named_by_load_from_checkpoint_and_trainer_fit(good, tmp_path, how, reason):
    path = damaged(good, tmp_path, how)
    with pytest.raises(UnreadableCheckpointError) as info:
        MAML.load_from_checkpoint(path, model=MLP(hidden=(8,)))
    message = str(info.value)
    assert str(path) in message and "is not a readable PyTorch checkpoint" in message and reason in message
    assert "weights_only" not in message and info.value.__cause__ is not None  # chained from torch's error
    assert isinstance(info.value, ValueError)
    run = trainer(tmp_path, 4)
    with pytest.raises(UnreadableCheckpointError, match="is not a readable PyTorch checkpoint"):
        run.fit(MAML(MLP(hidden=(8,)), inner_lr=0.01), data(), ckpt_path=str(path))
    assert run.global_step == 0


def test_good_checkpoint_resumes_and_loads(good, tmp_path):
    assert why_not_a_checkpoint(good) is None
    model = MAML.load_from_checkpoint(good, model=MLP(hidden=(8,)))
    assert isinstance(model, MAML)
    run = trainer(tmp_path, 4)
    run.fit(MAML(MLP(hidden=(8,)), inner_lr=0.01), data(), ckpt_path=str(good))
    assert run.global_step == 4 and isinstance(run.strategy.checkpoint_io, ReadableCheckpointIO)
    run.fit(MAML(MLP(hidden=(8,)), inner_lr=0.01), data())  # wrapped once, not once per call
    assert not isinstance(run.strategy.checkpoint_io.inner, ReadableCheckpointIO)
    run.save_checkpoint(tmp_path / "again.ckpt")  # saving goes through the wrapped IO unchanged
    assert why_not_a_checkpoint(tmp_path / "again.ckpt") is None


class Unlisted:
    """A class that ``torch.load(weights_only=True)`` refuses."""


def test_a_well_formed_checkpoint_keeps_torchs_own_error(good, tmp_path):
    checkpoint = torch.load(good, weights_only=False)
    checkpoint["hyper_parameters"]["extra"] = Unlisted()
    path = tmp_path / "unlisted.ckpt"
    torch.save(checkpoint, path)
    assert why_not_a_checkpoint(path) is None
    with pytest.raises(pickle.UnpicklingError, match="weights_only") as info:  # torch's message is right here
        MAML.load_from_checkpoint(path, model=MLP(hidden=(8,)))
    assert not isinstance(info.value, UnreadableCheckpointError)


def test_legacy_torch_files_count_as_checkpoints(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": {}}, path, _use_new_zipfile_serialization=False)
    assert why_not_a_checkpoint(path) is None


def test_load_from_checkpoint_is_still_refused_on_an_instance(good):
    with pytest.raises(TypeError, match="cannot be called on an instance"):
        MAML(MLP(hidden=(8,)), inner_lr=0.01).load_from_checkpoint(good)
