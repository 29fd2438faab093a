"""bf16-mixed and 16-mixed for Reptile, iMAML, ProtoNet and MAML with the MAML++ options on CPU, as for MAML
(tests/integration/test_precision.py): autocast on in every forward of the inner loop (or the embedding), and the
gradient Lightning hands the optimizer within the precision's tolerance of float32's."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_trainer
from test_precision import MIXED, Probe, relative_error, sinusoid_batch
from torch.utils.data import DataLoader

from lightning_meta import IMAML, MAML, ProtoNet, Reptile, TaskBatch

LEARNERS = {
    "reptile": lambda: Reptile(Probe(), inner_lr=0.05, inner_steps=2, inner_optimizer="sgd"),
    "imaml": lambda: IMAML(Probe(), inner_lr=0.05, inner_steps=3, lam=1.0, cg_steps=2),
    "protonet": lambda: ProtoNet(Probe(), channels_last=False),
    "maml_plus_plus": lambda: MAML(Probe(), inner_lr=0.1, inner_steps=2, learn_inner_lr="per_step",
                                   multi_step_loss=True),
}


def classification_batch() -> TaskBatch:
    """4 tasks, 3 ways, 2 shots, 3 queries, scalar inputs near their class's centre (Probe embeds in 1-D)."""
    g = torch.Generator().manual_seed(0)
    support_y, query_y = torch.arange(3).repeat(4, 2), torch.arange(3).repeat(4, 3)
    noise = lambda y: 0.3 * torch.randn(*y.shape, 1, generator=g)  # noqa: E731
    return TaskBatch(support_y[..., None].float() + noise(support_y), support_y,
                     query_y[..., None].float() + noise(query_y), query_y)


class Record(pl.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.grads = {n: p.grad.detach().float().clone() for n, p in module.named_parameters() if p.grad is not None}


def one_step(learner: str, **trainer_args) -> tuple[pl.LightningModule, Record]:
    model, record = LEARNERS[learner](), Record()
    batch = classification_batch() if learner == "protonet" else sinusoid_batch()
    tiny_trainer(max_steps=1, limit_val_batches=0, callbacks=[record], **trainer_args).fit(
        model, train_dataloaders=DataLoader([batch], batch_size=None))
    return model, record


def probe_of(model) -> Probe:
    return model.encoder if isinstance(model, ProtoNet) else model.model


@pytest.fixture(scope="module")
def float32_grads() -> dict[str, dict[str, torch.Tensor]]:
    return {learner: one_step(learner)[1].grads for learner in LEARNERS}


@pytest.mark.parametrize("learner", list(LEARNERS))
@pytest.mark.parametrize("precision", list(MIXED))
def test_mixed_precision_autocasts_and_matches_float32(learner, precision, float32_grads):
    trainer_args, dtype, _, tolerance = MIXED[precision]
    model, record = one_step(learner, **trainer_args())
    forwards = probe_of(model).forwards
    assert len(forwards) >= 4 and all(on and dt == dtype for _, on, dt in forwards), forwards
    want = float32_grads[learner]
    assert set(record.grads) == set(want) and want
    error = relative_error(record.grads, want)
    assert 0 < error < tolerance, error  # rounding shows (autocast acted), within the precision's tolerance
