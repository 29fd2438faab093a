"""MAML++'s per-step BatchNorm (BNRS + BNWB) against a hand-built per-step model, unrolled with plain autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_trainer
from torch import nn

from lightning_meta import MAML, EpisodicDataModule, OmniglotTasks, TaskBatch
from lightning_meta.models import Conv4, PerStepBatchNorm

STEPS, LR, MOMENTUM = 2, 0.0625, 0.1


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.head(F.relu(self.norm(self.conv(x))).flatten(1))


def oracle_forward(w: dict, x, k: int, stats: dict, training: bool = True):
    """The per-step model written out: slot ``k``'s gamma/beta and running statistics, by F.batch_norm."""
    h = F.conv2d(x, w["conv.weight"], w["conv.bias"])
    h = F.batch_norm(h, stats["mean"][k], stats["var"][k], w["norm.weight"][k], w["norm.bias"][k], training,
                     MOMENTUM, 1e-5)
    return F.linear(F.relu(h).flatten(1), w["head.weight"], w["head.bias"])


def batch(seed: int = 0, tasks: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, 12, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(tasks, 4)
    return TaskBatch(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])


def model() -> MAML:
    torch.manual_seed(0)
    return MAML(TinyConv(), inner_lr=LR, inner_steps=STEPS, batch_norm="per_step", channels_last=False).double()


def test_gradients_and_running_statistics_equal_the_hand_built_per_step_model():
    """Second-order meta-gradient of every tensor (per-step gamma/beta included, all adapted) and the running
    statistics of every slot after one objective: support forwards at phi_0, phi_1 use slots 0, 1; the query
    forward at phi_2 uses slot 2 (float64, plain autograd through the unrolled loop)."""
    maml, b = model(), batch()
    w0 = {n: p.detach().clone().requires_grad_() for n, p in maml.model.named_parameters()}
    slots = (STEPS + 1, 3)
    stats = {"mean": torch.zeros(slots, dtype=torch.float64), "var": torch.ones(slots, dtype=torch.float64)}
    losses = []
    for t in range(b.num_tasks):
        fast = dict(w0)
        for k in range(STEPS):
            loss = F.cross_entropy(oracle_forward(fast, b.support_x[t], k, stats), b.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads)}
        losses.append(F.cross_entropy(oracle_forward(fast, b.query_x[t], STEPS, stats), b.query_y[t]))
    expected = dict(zip(w0, torch.autograd.grad(torch.stack(losses).mean(), list(w0.values()))))

    maml.objective(b).loss.backward()
    for name, param in maml.model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-10, atol=1e-12,
                                   msg=lambda m, n=name: f"{n}: {m}")
    norm = maml.model.norm
    assert isinstance(norm, PerStepBatchNorm) and norm.weight.shape == (STEPS + 1, 3)
    torch.testing.assert_close(norm.running_mean, stats["mean"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(norm.running_var, stats["var"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("transductive", [True, False])
def test_evaluation_uses_each_slots_weights_and_statistics(transductive):
    """In eval mode the query after k steps is scored with slot k's gamma/beta (steps beyond ``inner_steps``: the
    last slot) and the batch statistics (transductive, the default) or slot k's running statistics (BNRS); no
    running statistic moves during evaluation."""
    maml, b = model(), batch(1)
    maml.objective(b)  # fills the running statistics
    maml.eval_inner_steps = STEPS + 1
    maml.model.norm.transductive = transductive
    maml.eval()
    curve = maml.query_trajectory(b)
    norm = maml.model.norm
    running = {"mean": norm.running_mean.clone(), "var": norm.running_var.clone()}
    stats = {"mean": [None] * (STEPS + 1), "var": [None] * (STEPS + 1)} if transductive else running
    w0 = {n: p.detach() for n, p in maml.model.named_parameters()}
    for t in range(b.num_tasks):
        fast = {n: p.clone().requires_grad_() for n, p in w0.items()}
        for k in range(STEPS + 2):
            slot = min(k, STEPS)
            out = oracle_forward(fast, b.query_x[t], slot, stats, training=transductive)
            torch.testing.assert_close(curve[k][0][t], F.cross_entropy(out, b.query_y[t]).detach(), rtol=1e-10,
                                       atol=1e-12)
            if k <= STEPS:
                s = F.cross_entropy(oracle_forward(fast, b.support_x[t], slot, stats, training=transductive),
                                    b.support_y[t])
                grads = torch.autograd.grad(s, list(fast.values()))
                fast = {n: (p - LR * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads)}
    torch.testing.assert_close(norm.running_mean, running["mean"], rtol=0, atol=0)


def test_per_step_policy_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="batch_norm='per_step' updates running statistics in place"):
        MAML(Conv4(), batch_norm="per_step", meta_gradient="hvp")
    with pytest.raises(ValueError, match="batch_norm='per_step' updates running statistics in place"):
        MAML(Conv4(), batch_norm="per_step", vectorize=True)


def test_per_step_maml_trains_on_omniglot(omniglot):
    torch.manual_seed(0)
    tasks = OmniglotTasks(str(omniglot), ways=5, shots=1, queries=5)
    dm = EpisodicDataModule(tasks, meta_batch_size=4, train_episodes_per_epoch=4 * 40, val_episodes=0,
                            test_episodes=100, eval_meta_batch_size=50)
    maml = MAML(Conv4(out_features=5, hidden=16), inner_lr=0.4, inner_steps=2, batch_norm="per_step")
    trainer = tiny_trainer(max_steps=40)
    trainer.fit(maml, dm)
    assert trainer.test(maml, dm, verbose=False)[0]["test/acc"] > 0.35  # chance is 0.2
