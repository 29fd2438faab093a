"""Prototypical Networks: logits by hand and by learn2learn, training on Omniglot with wider training tasks."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import tiny_trainer
from l2l import learn2learn, needs_l2l
from torch.utils.data import TensorDataset

from lightning_meta import ClassificationTasks, EpisodicDataModule, OmniglotTasks, ProtoNet, SinusoidTasks, TaskBatch
from lightning_meta.functional import prototypical_logits
from lightning_meta.models import Conv4


def random_batch(tasks=3, ways=4, shots=2, queries=3, dim=5, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.stack([torch.randperm(ways * shots, generator=g) % ways for _ in range(tasks)])
    query_y = torch.stack([torch.randperm(ways * queries, generator=g) % ways for _ in range(tasks)])
    return TaskBatch(torch.randn(tasks, ways * shots, dim, generator=g), support_y,
                     torch.randn(tasks, ways * queries, dim, generator=g), query_y)


def test_logits_are_negative_squared_distances_to_class_means_by_hand():
    """An identity embedding (``nn.Flatten``): every logit recomputed with Python loops over tasks, queries and
    classes, in float64."""
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in random_batch()))
    model = ProtoNet(torch.nn.Flatten(), channels_last=False)
    logits = model.objective(batch).query_outputs
    t_count, q_count, ways = logits.shape
    for t in range(t_count):
        for k in range(ways):
            members = [batch.support_x[t, i] for i in range(batch.support_x.shape[1]) if batch.support_y[t, i] == k]
            prototype = sum(members) / len(members)
            for q in range(q_count):
                expected = -float(sum((batch.query_x[t, q, j] - prototype[j]) ** 2 for j in range(len(prototype))))
                assert float(logits[t, q, k]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@needs_l2l
def test_logits_equal_learn2learns_prototypical_classifier():
    batch = random_batch(seed=1)
    ours = prototypical_logits(batch.support_x, batch.support_y, batch.query_x, ways=4)
    for t in range(batch.num_tasks):
        classifier = learn2learn.nn.PrototypicalClassifier(batch.support_x[t], batch.support_y[t])
        torch.testing.assert_close(ours[t], classifier(batch.query_x[t]), rtol=1e-5, atol=1e-5)


def test_a_class_without_support_examples_is_named():
    batch = random_batch(tasks=1, ways=3, shots=1)
    with pytest.raises(ValueError, match="class 2 of task 0 has no support example"):
        prototypical_logits(batch.support_x[:, :2], torch.tensor([[0, 1]]), batch.query_x, ways=3)


def test_regression_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="ProtoNet classifies: regression tasks"):
        ProtoNet(torch.nn.Flatten(), task_type="regression")
    dm = EpisodicDataModule(SinusoidTasks(), meta_batch_size=2, val_episodes=0)
    trainer = tiny_trainer(fast_dev_run=1, enable_checkpointing=True)
    with pytest.raises(ValueError, match="use MAML or BlackBoxAdaptation for regression"):
        trainer.fit(ProtoNet(torch.nn.Linear(1, 4)), dm)


def test_gradient_equals_cross_entropy_through_hand_built_prototypes():
    """The training gradient equals autograd through an independent computation: embeddings by the encoder,
    prototypes by masked means, logits by cdist, cross-entropy averaged per task then over tasks."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in random_batch()))
    model = ProtoNet(encoder, channels_last=False)
    model.objective(batch).loss.backward()
    ours = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    losses = []
    for t in range(batch.num_tasks):
        es, eq = encoder(batch.support_x[t]), encoder(batch.query_x[t])
        protos = torch.stack([es[batch.support_y[t] == k].mean(0) for k in range(4)])
        logits = -torch.cdist(eq, protos, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        losses.append(torch.nn.functional.cross_entropy(logits, batch.query_y[t]))
    torch.stack(losses).mean().backward()
    for a, p in zip(ours, encoder.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-9, atol=1e-12)


def image_tasks(train_ways: int | None = None) -> ClassificationTasks:
    g = torch.Generator().manual_seed(0)
    classes = 40
    centers = torch.rand(classes, 1, 16, 16, generator=g)
    x = centers.repeat_interleave(6, 0) + 0.3 * torch.rand(classes * 6, 1, 16, 16, generator=g)
    y = torch.arange(classes).repeat_interleave(6)
    return ClassificationTasks(TensorDataset(x, y), ways=3, shots=1, queries=2, train_ways=train_ways,
                               split_fractions=(0.5, 0.25, 0.25))


def test_training_tasks_may_have_more_ways_than_evaluation_tasks():
    tasks = image_tasks(train_ways=10)
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=8, val_episodes=4, test_episodes=4)
    dm.setup("fit")
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    assert train.support_y.shape == (2, 10) and int(train.support_y.max()) == 9
    assert val.support_y.shape[1] == 3 and int(val.support_y.max()) == 2
    model = ProtoNet(Conv4(embed_only=True, hidden=8, image_size=16))
    trainer = tiny_trainer(max_steps=4)
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    assert set(result) == {"test/loss", "test/loss_ci95", "test/acc", "test/acc_ci95"}


def test_too_many_train_ways_is_refused_naming_the_split():
    tasks = image_tasks(train_ways=25)  # the train split has 20 classes
    with pytest.raises(ValueError, match=r"ways=25 is larger than the 20 classes of the 'train' split"):
        tasks.setup()


def test_omniglot_60_way_training_5_way_test_well_above_chance(omniglot):
    torch.manual_seed(0)
    tasks = OmniglotTasks(str(omniglot), ways=5, shots=1, queries=5, train_ways=20)
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=2 * 150, val_episodes=0,
                            test_episodes=100, eval_meta_batch_size=50)
    model = ProtoNet(Conv4(embed_only=True, hidden=32), optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = tiny_trainer(max_steps=150)
    trainer.fit(model, dm)
    assert trainer.test(model, dm, verbose=False)[0]["test/acc"] > 0.8  # chance is 0.2
