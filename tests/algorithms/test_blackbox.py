from functools import partial

import pytest
import torch
from conftest import tiny_trainer

from lightning_meta import BlackBoxAdaptation, EpisodicDataModule, OmniglotTasks, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP, Conv4


def regression_model(aggregator, **kw):
    torch.manual_seed(0)
    return BlackBoxAdaptation(MLP(out_features=32, hidden=(32,)), feature_dim=32, aggregator=aggregator,
                              task_dim=16, hidden=32, **kw)


def classification_batch(tasks=3, ways=5, shots=2, queries=3):
    torch.manual_seed(1)
    return TaskBatch(torch.rand(tasks, ways * shots, 1, 16, 16), torch.arange(ways).repeat(tasks, shots),
                     torch.rand(tasks, ways * queries, 1, 16, 16), torch.arange(ways).repeat(tasks, queries))


def classifier(aggregator, ways=5):
    torch.manual_seed(0)
    return BlackBoxAdaptation(Conv4(embed_only=True, hidden=8, image_size=16), aggregator=aggregator, ways=ways,
                              task_dim=16, hidden=32).double()


def permuted(batch: TaskBatch, generator_seed=0) -> TaskBatch:
    perm = torch.randperm(batch.support_x.shape[1], generator=torch.Generator().manual_seed(generator_seed))
    return TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y)


def double(batch):
    return TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch))


@pytest.mark.parametrize("aggregator", ["mean", "attention"])
def test_invariant_to_support_order(aggregator):
    model, batch = classifier(aggregator), double(classification_batch())
    other = permuted(batch)
    assert not torch.equal(batch.support_y, other.support_y)
    torch.testing.assert_close(model.task_vector(batch.support_x, batch.support_y),
                               model.task_vector(other.support_x, other.support_y), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(batch), model(other), atol=1e-6, rtol=1e-6)


def test_sequence_is_sensitive_to_support_order():
    model, batch = classifier("sequence"), double(classification_batch())
    diff = (model(batch) - model(permuted(batch))).abs().max()
    assert diff > 1e-4


@pytest.mark.parametrize("aggregator", ["mean", "attention", "sequence"])
@pytest.mark.parametrize("ways, shots, queries", [(5, 1, 2), (5, 3, 1), (3, 2, 4)])
def test_shapes_for_several_ways_and_shots(aggregator, ways, shots, queries):
    model = classifier(aggregator, ways=5).float()
    batch = classification_batch(2, ways, shots, queries)
    out = model.predict_step(batch, 0)
    assert out.shape == (2, ways * queries, 5)
    if ways < 5:  # the logits of classes the task does not have are masked
        assert torch.isinf(out[..., ways:]).all() and torch.isfinite(out[..., :ways]).all()


def test_too_many_ways_is_a_clear_error():
    with pytest.raises(ValueError, match="a task with 7 ways cannot be answered. Use tasks with ways <= 5"):
        classifier("mean", ways=5).float()(classification_batch(1, 7, 1, 1))


@pytest.mark.parametrize("aggregator", ["mean", "attention", "sequence"])
def test_gradients_reach_every_parameter(aggregator):
    model = classifier(aggregator).float()
    model.objective(classification_batch()).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_regression_with_variance_uses_gaussian_nll_and_reports_mse():
    model = regression_model("mean", predict_variance=True)
    batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(4)])
    losses, mse, mean = model._predict(batch, "regression")
    out = model(batch)
    var = torch.nn.functional.softplus(out[..., 1:2]) + 1e-3
    nll = 0.5 * (torch.log(var) + (out[..., :1] - batch.query_y) ** 2 / var)
    torch.testing.assert_close(losses, nll.flatten(1).mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mse, ((mean - batch.query_y) ** 2).flatten(1).mean(1))


def test_training_needs_exactly_ways_but_evaluation_accepts_fewer():
    """A 5-way model: training on 3-way tasks is an error naming both numbers (a 5-wide head would be trained on
    two classes that do not exist); trained on 5-way tasks it validates and tests on 3-way ones, masked."""
    from conftest import index_dataset

    from lightning_meta import ClassificationTasks

    model = BlackBoxAdaptation(MLP(in_features=3, out_features=8, hidden=(8,)), feature_dim=8, ways=5, task_dim=8,
                               hidden=16).double()  # index_dataset's inputs are float64
    with pytest.raises(ValueError, match=r"BlackBoxAdaptation\(ways=5\) is being trained on 3-way tasks"):
        model.objective(TaskBatch(torch.rand(2, 3, 3), torch.arange(3).repeat(2, 1), torch.rand(2, 3, 3),
                                  torch.arange(3).repeat(2, 1)))
    tasks = ClassificationTasks(index_dataset(), ways=3, train_ways=5, shots=1, queries=2,
                                split_fractions=(0.5, 0.25, 0.25))
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=8, val_episodes=4, test_episodes=4)
    trainer = tiny_trainer(max_steps=4)
    trainer.fit(model, dm)
    assert trainer.global_step == 4 and 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    assert 0.0 <= trainer.test(model, dm, verbose=False)[0]["test/acc"] <= 1.0
    wrong = ClassificationTasks(index_dataset(), ways=3, shots=1, queries=2, split_fractions=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="Build it with ways=3, or sample 5-way tasks"):
        tiny_trainer(max_steps=1, num_sanity_val_steps=0).fit(model, EpisodicDataModule(wrong, meta_batch_size=2))


def test_sinusoid_mse_well_below_predicting_zero():
    model = regression_model("attention")
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25, train_episodes_per_epoch=5000,
                            val_episodes=0, test_episodes=200, eval_meta_batch_size=100)
    trainer = tiny_trainer(max_steps=200)
    trainer.fit(model, dm)
    mse = trainer.test(model, dm, verbose=False)[0]["test/mse"]
    dm.setup("test")
    zero = torch.cat([b.query_y for b in dm.test_dataloader()]).pow(2).mean().item()  # MSE of predicting 0
    assert mse < 0.5 * zero


@pytest.mark.parametrize("aggregator", ["mean", "attention"])
def test_omniglot_five_way_accuracy_well_above_chance(omniglot, aggregator):
    torch.manual_seed(0)
    tasks = OmniglotTasks(str(omniglot), ways=5, shots=1, queries=5)
    dm = EpisodicDataModule(tasks, meta_batch_size=8, train_episodes_per_epoch=8 * 300, val_episodes=0,
                            test_episodes=100, eval_meta_batch_size=50)
    model = BlackBoxAdaptation(Conv4(embed_only=True, hidden=16), aggregator=aggregator, ways=5, task_dim=32,
                               hidden=64, optimizer=partial(torch.optim.Adam, lr=2e-3))
    trainer = tiny_trainer(max_steps=300)
    trainer.fit(model, dm)
    acc = trainer.test(model, dm, verbose=False)[0]["test/acc"]
    assert acc > 0.4  # chance is 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="aggregator must be one of \\['mean', 'attention', 'sequence', 'snail'\\]"):
        BlackBoxAdaptation(Conv4(embed_only=True), aggregator="max")
    with pytest.raises(ValueError, match="feature_dim must be given"):
        BlackBoxAdaptation(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="task_dim must be an integer >= 1, got 0"):
        BlackBoxAdaptation(Conv4(embed_only=True), task_dim=0)


def fit_blackbox(meta_batch, steps, **kwargs):
    from blackbox_job import build, trainer

    model, dm = build(meta_batch)
    trainer(max_steps=steps, devices=1, **kwargs).fit(model, dm, ckpt_path=kwargs.pop("ckpt", None))
    return model


def test_accumulation_and_resume_behave_as_for_maml(tmp_path):
    from blackbox_job import build, trainer
    from pytorch_lightning.callbacks import ModelCheckpoint

    eight = fit_blackbox(8, 3).state_dict()
    accumulated = fit_blackbox(4, 3, accumulate_grad_batches=2).state_dict()
    for name in eight:
        torch.testing.assert_close(accumulated[name], eight[name], atol=1e-6, rtol=1e-5)
    full = fit_blackbox(4, 6).state_dict()
    fit_blackbox(4, 3, callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)],
                 enable_checkpointing=True)
    model, dm = build(4)
    trainer(max_steps=6, devices=1).fit(model, dm, ckpt_path=str(tmp_path / "epoch=0-step=3.ckpt"))
    for name, value in full.items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=1e-7, rtol=1e-7)


def test_bf16_mixed_trains_on_cpu():
    model = regression_model("mean")
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25, train_episodes_per_epoch=5000,
                            val_episodes=0, test_episodes=200, eval_meta_batch_size=100)
    trainer = tiny_trainer(max_steps=150, precision="bf16-mixed")
    before = trainer.test(model, dm, verbose=False)[0]["test/mse"]
    trainer.fit(model, dm)
    after = trainer.test(model, dm, verbose=False)[0]["test/mse"]
    assert after < 0.8 * before


def test_predictive_is_the_gaussian_the_nll_is_trained_on():
    """``predictive`` returns the mean that is scored and the variance the Gaussian NLL uses."""
    model = regression_model("attention", predict_variance=True)
    batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(3)])
    mean, var = model.predictive(batch)
    out = model(batch)
    torch.testing.assert_close(mean, out[..., :1])
    torch.testing.assert_close(var, torch.nn.functional.softplus(out[..., 1:2]) + 1e-3)
    torch.testing.assert_close(mean, model.predict_step(batch, 0))
    losses = model.objective(batch).query_losses
    nll = torch.nn.functional.gaussian_nll_loss(mean, batch.query_y, var, reduction="none").flatten(1).mean(1)
    torch.testing.assert_close(losses, nll)
