"""SWA, the LR finder and BackboneFinetuning from the ``lightning.pytorch`` namespace, each with its promise checked
(tests/integration/test_lightning_callbacks.py runs this with LIGHTNING_META_BACKEND=lightning).

usage: callbacks_user.py OUT_DIR
"""

import sys
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, LearningRateFinder, StochasticWeightAveraging
from lightning.pytorch.tuner import Tuner
from torch.utils.data import TensorDataset

from lightning_meta import MAML, ClassificationTasks, EpisodicDataModule, ProtoNet, SinusoidTasks
from lightning_meta._lightning import BACKEND
from lightning_meta.models import MLP, Conv4


def trainer(out: str, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out,
                     **kwargs)


def sinusoids(steps: int = 2) -> EpisodicDataModule:
    return EpisodicDataModule(SinusoidTasks(shots=4, queries=4), meta_batch_size=2, train_episodes_per_epoch=2 * steps,
                              val_episodes=2, test_episodes=0, seed=1)


def images() -> EpisodicDataModule:
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    tasks = ClassificationTasks(TensorDataset(x, torch.arange(40) % 10), ways=2, shots=1, queries=1,
                                split_fractions=(0.6, 0.2, 0.2))
    return EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=4, val_episodes=2, test_episodes=0)


class EpochStarts(L.Callback):
    def __init__(self) -> None:
        self.weights = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.weights.append([p.detach().clone() for p in module.parameters()])


def check_swa(out: str) -> None:
    """MAML on Conv-4 (transductive BatchNorm): the weights end as the mean of the epoch-start weights of SWA's
    epochs 1 and 2."""
    torch.manual_seed(0)
    model, starts = MAML(Conv4(out_features=2, hidden=4, image_size=16), inner_lr=0.1), EpochStarts()
    trainer(out, max_epochs=3, callbacks=[starts, StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)]).fit(
        model, images())
    for p, a, b in zip(model.parameters(), *starts.weights[1:3]):
        torch.testing.assert_close(p.detach(), (a + b) / 2)


def check_lr_find(out: str) -> None:
    model = MAML(MLP(hidden=(8,)), inner_lr=0.05, optimizer=partial(torch.optim.SGD, lr=0.1))
    finder = Tuner(trainer(out, max_steps=1)).lr_find(model, datamodule=sinusoids(), num_training=15,
                                                       early_stop_threshold=None, update_attr=True)
    assert finder.suggestion() == model.learning_rate == model.configure_optimizers().param_groups[0]["lr"]
    callback = LearningRateFinder(num_training_steps=15, early_stop_threshold=None)
    fitted = trainer(out, max_steps=2, callbacks=[callback])
    fitted.fit(model, sinusoids())
    assert fitted.optimizers[0].param_groups[0]["lr"] == callback.optimal_lr.suggestion() == model.learning_rate


def check_backbone(out: str) -> None:
    """ProtoNet: the backbone (the encoder's body) is bitwise unchanged in epoch 0, then trains at 0.1 * lr."""
    torch.manual_seed(0)
    model = ProtoNet(Conv4(hidden=4, image_size=16, embed_only=True), optimizer=partial(torch.optim.SGD, lr=0.1))
    starts = EpochStarts()
    fitted = trainer(out, max_epochs=3, callbacks=[starts, BackboneFinetuning(unfreeze_backbone_at_epoch=1)])
    fitted.fit(model, images())
    ids = {id(p) for p in model.backbone.parameters()}
    frozen = [i for i, p in enumerate(model.parameters()) if id(p) in ids and p.dim() > 1]  # conv weights
    assert frozen and all(torch.equal(starts.weights[0][i], starts.weights[1][i]) for i in frozen)
    assert all(not torch.equal(starts.weights[1][i], starts.weights[2][i]) for i in frozen)
    assert abs(fitted.optimizers[0].param_groups[1]["lr"] - 0.02) < 1e-12  # 0.1 * 0.1 at epoch 1, doubled at 2


if __name__ == "__main__":
    check_swa(sys.argv[1])
    check_lr_find(sys.argv[1])
    check_backbone(sys.argv[1])
    print(f"backend {BACKEND}: swa ok, lr_find ok, backbone ok")
