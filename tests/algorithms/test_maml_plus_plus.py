"""MAML++'s multi-step loss and derivative-order annealing against plain-autograd oracles (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_trainer
from maml_oracles import first_order_gradient, meta_loss, second_order_gradient

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.data.seeding import task_generator
from lightning_meta.functional import multi_step_loss_weights
from lightning_meta.models import MLP

LR, STEPS = 0.0625, 3  # an inner lr float32 holds exactly (the inner_lrs buffer starts in float32)


def sinusoid_batch(tasks=3) -> TaskBatch:
    generators = [task_generator(1, "train", 0, i) for i in range(tasks)]
    return TaskBatch(*(t.double() for t in SinusoidTasks(shots=5, queries=6).sample("train", generators)))


def maml(**kwargs) -> MAML:
    torch.manual_seed(0)
    return MAML(MLP(hidden=(6, 6), activation="tanh"), inner_lr=LR, inner_steps=STEPS, **kwargs).double()


def gradient(model: MAML, batch: TaskBatch, epoch: int) -> list[torch.Tensor]:
    model.zero_grad()
    model.objective(batch, epoch=epoch).loss.backward()
    return [p.grad.clone() for p in model.model.parameters()]


def weights_of(model: MAML) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.model.parameters()]


@pytest.mark.parametrize("epoch", [0, 3, 9])
def test_multi_step_loss_gradient_is_the_weighted_sum_of_per_step_second_order_gradients(epoch):
    """Oracle: for each k, the second-order meta-gradient of the query loss after k explicit SGD steps
    (tests/maml_oracles.py, plain autograd), weighted by the MSL weights of that epoch."""
    model, batch = maml(multi_step_loss=True, multi_step_loss_epochs=10), sinusoid_batch()
    w = weights_of(model)
    weights = multi_step_loss_weights(STEPS, epoch, 10).double()
    per_step = [second_order_gradient(w, batch, LR, k) for k in range(1, STEPS + 1)]
    expected = [sum(weights[k] * per_step[k][i] for k in range(STEPS)) for i in range(len(w))]
    for ours, ref in zip(gradient(model, batch, epoch), expected):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_multi_step_loss_value_is_the_weighted_sum_of_query_losses():
    model, batch = maml(multi_step_loss=True), sinusoid_batch()
    w = [p.requires_grad_() for p in weights_of(model)]
    weights = multi_step_loss_weights(STEPS, 2, 10).double()
    expected = sum(weights[k] * meta_loss(w, batch, LR, k + 1) for k in range(STEPS))
    torch.testing.assert_close(model.objective(batch, epoch=2).loss, expected, rtol=1e-12, atol=1e-12)


def test_multi_step_loss_ends_after_its_epochs_and_then_equals_plain_maml():
    model, batch = maml(multi_step_loss=True, multi_step_loss_epochs=4), sinusoid_batch()
    plain = second_order_gradient(weights_of(model), batch, LR, STEPS)
    for ours, ref in zip(gradient(model, batch, epoch=4), plain):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_multi_step_loss_weights_follow_the_papers_schedule():
    """Antoniou et al.'s schedule: uniform at epoch 0, non-final weights down by epoch/(K*E) to 0.03/K, the final
    one up to 1 - 0.03 (K-1)/K; the weights always sum to 1."""
    k, e = 5, 10
    for epoch in range(0, 13):
        w = multi_step_loss_weights(k, epoch, e).double()
        decay = epoch / k / e
        assert torch.allclose(w[:-1], torch.full((k - 1,), max(1 / k - decay, 0.03 / k), dtype=torch.float64))
        assert float(w[-1]) == pytest.approx(min(1 / k + (k - 1) * decay, 1 - 0.03 * (k - 1) / k), rel=1e-6)
        assert float(w.sum()) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("vectorize", [False, True])
def test_multi_step_loss_under_vmap_and_first_order(vectorize):
    """First-order MSL: each step's query gradient at phi_k, weighted; the same with the tasks under vmap."""
    model, batch = maml(multi_step_loss=True, meta_gradient="first_order", vectorize=vectorize), sinusoid_batch()
    w = weights_of(model)
    weights = multi_step_loss_weights(STEPS, 1, 10).double()
    per_step = [first_order_gradient(w, batch, LR, k) for k in range(1, STEPS + 1)]
    expected = [sum(weights[k] * per_step[k][i] for k in range(STEPS)) for i in range(len(w))]
    for ours, ref in zip(gradient(model, batch, epoch=1), expected):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_derivative_order_annealing_is_first_order_then_second_order():
    model, batch = maml(first_order_epochs=2), sinusoid_batch()
    w = weights_of(model)
    first, second = first_order_gradient(w, batch, LR, STEPS), second_order_gradient(w, batch, LR, STEPS)
    for epoch, expected in ((0, first), (1, first), (2, second), (5, second)):
        for ours, ref in zip(gradient(model, batch, epoch), expected):
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_annealing_follows_the_trainers_epoch():
    """In a Trainer run the schedule reads ``current_epoch``: epoch 0 trains first-order, epoch 1 second-order."""
    seen = []

    class Record(MAML):
        def objective(self, batch, epoch=None):
            seen.append(self.schedule(self.current_epoch)[0])
            return super().objective(batch, epoch)

    model = Record(MLP(hidden=(8,)), inner_lr=0.01, first_order_epochs=1, multi_step_loss=True)
    dm = EpisodicDataModule(SinusoidTasks(shots=3, queries=3), meta_batch_size=2, train_episodes_per_epoch=4,
                            val_episodes=0, test_episodes=0)
    tiny_trainer(max_epochs=2).fit(model, dm)
    assert seen == ["first_order", "first_order", "second_order", "second_order"]


def test_bad_maml_plus_plus_options_are_refused():
    with pytest.raises(ValueError, match="multi_step_loss needs meta_gradient 'second_order' or 'first_order'"):
        MAML(MLP(), multi_step_loss=True, meta_gradient="hvp")
    with pytest.raises(ValueError, match="multi_step_loss_epochs must be an integer >= 1, got 0"):
        MAML(MLP(), multi_step_loss_epochs=0)
    with pytest.raises(ValueError, match="first_order_epochs must be an integer >= 0, got -1"):
        MAML(MLP(), first_order_epochs=-1)
