import csv
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from maml_job import PoisonedMAML, build, trainer
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP, Conv4


def fit(meta_batch, steps, **kwargs):
    model, dm = build(meta_batch, kwargs.pop("meta_gradient", "second_order"))
    trainer(max_steps=steps, devices=1, **kwargs).fit(model, dm)
    return model


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_same_weights(a, b, tol=1e-6):
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, atol=tol, rtol=tol)


def test_accumulate_grad_batches_equals_larger_meta_batch():
    assert_same_weights(fit(8, 3).state_dict(), fit(4, 3, accumulate_grad_batches=2).state_dict())


def test_checkpoint_resume_reaches_the_same_weights(tmp_path):
    full = fit(4, 6, meta_gradient="hvp")
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    fit(4, 3, meta_gradient="hvp", callbacks=[ckpt], enable_checkpointing=True)
    model, dm = build(4, "hvp")
    trainer(max_steps=6, devices=1).fit(model, dm, ckpt_path=str(tmp_path / "epoch=0-step=3.ckpt"))
    assert_same_weights(full.state_dict(), model.state_dict(), tol=1e-7)


def sinusoid_maml(**kwargs):
    torch.manual_seed(0)
    model = MAML(MLP(), inner_lr=0.01, inner_steps=1, eval_inner_steps=10, **kwargs)
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25, train_episodes_per_epoch=2500,
                            val_episodes=50, test_episodes=200, eval_meta_batch_size=50)
    return model, dm


def test_sinusoid_post_adaptation_mse_clearly_below_pre_adaptation():
    model, dm = sinusoid_maml()
    t = trainer(max_steps=300, devices=1, limit_val_batches=0)
    t.fit(model, dm)
    result = t.test(model, dm, verbose=False)[0]
    assert result["test/mse"] < 0.75 * result["test/pre_mse"]
    assert result["test/mse_ci95"] > 0


def test_bf16_mixed_trains_on_cpu(tmp_path):
    model, dm = sinusoid_maml()
    before = trainer(devices=1, precision="bf16-mixed").test(model, dm, verbose=False)[0]["test/mse"]
    logger = CSVLogger(tmp_path)
    t = trainer(max_steps=300, devices=1, precision="bf16-mixed", limit_val_batches=0, logger=logger,
                log_every_n_steps=10)
    t.fit(model, dm)
    after = t.test(model, dm, verbose=False)[0]["test/mse"]
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 25 and all(map(torch.isfinite, torch.tensor(losses)))
    assert after < 0.8 * before


def test_early_stopping_and_learning_rate_monitor(tmp_path):
    model, dm = sinusoid_maml(optimizer=partial(torch.optim.Adam, lr=1e-12))
    dm.train_episodes_per_epoch = 50
    stop = EarlyStopping(monitor="val/loss", patience=1, mode="min", min_delta=1.0)
    logger = CSVLogger(tmp_path)
    t = trainer(max_epochs=20, devices=1, callbacks=[stop, LearningRateMonitor()], logger=logger,
                log_every_n_steps=1)
    t.fit(model, dm)
    assert 0 < stop.stopped_epoch < 19 and t.current_epoch < 20
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert lrs and all(v == pytest.approx(1e-12) for v in lrs)


def test_model_checkpoint_monitors_val_acc_on_classification(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(40, 1, 16, 16)
    from torch.utils.data import TensorDataset

    from lightning_meta import ClassificationTasks

    data = TensorDataset(x, torch.arange(40) % 8)
    tasks = ClassificationTasks(data, ways=2, shots=1, queries=2, splits={"train": [0, 1, 2, 3], "val": [4, 5],
                                                                          "test": [6, 7]})
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=4, val_episodes=4, test_episodes=4)
    model = MAML(Conv4(out_features=2, hidden=4, image_size=16), inner_lr=0.4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    trainer(max_epochs=2, devices=1, callbacks=[ckpt], enable_checkpointing=True).fit(model, dm)
    assert ckpt.best_model_path and 0.0 <= float(ckpt.best_model_score) <= 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(inner_lr=-0.1), "inner_lr must be a finite number > 0, got -0.1"),
    (dict(meta_gradient="third_order"), "meta_gradient must be one of ['second_order', 'first_order', 'hvp']"),
    (dict(inner_steps=0), "inner_steps must be an integer >= 1, got 0"),
    (dict(adapt=["nothing.*"]), "adapt=['nothing.*'] matches no parameter"),
    (dict(hvp_method="forward"), "hvp_method must be one of ['autograd', 'finite_difference']"),
    (dict(learn_inner_lr="yes"), "learn_inner_lr must be one of ['off', 'per_tensor', 'per_step']"),
])
def test_bad_arguments_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError) as info:
        MAML(MLP(), **kwargs)
    assert message in str(info.value)


def test_batch_norm_none_refuses_a_model_with_batch_norm():
    with pytest.raises(ValueError, match="batch_norm='none' but the model has BatchNorm layers"):
        MAML(Conv4(), batch_norm="none")
    assert MAML(Conv4(batch_norm=False), batch_norm="none").batch_norm_layers == []


@pytest.mark.parametrize("mode", ["second_order", "hvp"])
def test_non_finite_loss_names_step_and_task(mode):
    model = MAML(MLP(), inner_lr=0.01, inner_steps=2, meta_gradient=mode)
    x = torch.zeros(3, 4, 1)
    x[1, 2, 0] = float("inf")
    batch = TaskBatch(x, torch.zeros(3, 4, 1), torch.zeros(3, 4, 1), torch.zeros(3, 4, 1))
    with pytest.raises(FloatingPointError, match="non-finite loss at inner step 0 of task 1"):
        model.training_step(batch, 0)
    skip = MAML(MLP(), inner_lr=0.01, nonfinite="skip", meta_gradient=mode)
    loss = skip.training_step(batch, 0)
    loss.backward()
    assert loss.item() == 0 and all(p.grad is not None and not p.grad.any() for p in skip.parameters())


def test_adaptation_curve_matches_separate_evaluations():
    model, dm = build(8)
    model.adaptation_curve, model.eval_inner_steps = True, 3
    result = trainer(devices=1).test(model, dm, verbose=False)[0]
    curve = model.adaptation_curves["test"]
    assert curve["step"] == [0, 1, 2, 3] and curve["score_name"] == "mse"
    assert curve["loss"][0] == pytest.approx(result["test/pre_loss"], rel=1e-5)
    assert curve["loss"][3] == pytest.approx(result["test/loss"], rel=1e-5)
    model.adaptation_curve = False
    for k in (1, 2):
        model.eval_inner_steps = k
        post = trainer(devices=1).test(model, dm, verbose=False)[0]["test/loss"]
        assert curve["loss"][k] == pytest.approx(post, rel=1e-5)


@pytest.mark.parametrize("accumulate, poison", [(1, {"poison_step": 1}), (2, {"poison_step": 1}),
                                               (2, {"poison_batch": 2})])
def test_skipped_meta_batch_takes_no_optimizer_step(accumulate, poison):
    """With Adam a zero gradient would still move the weights (momentum): a skipped step must not step.
    Under accumulation, a window with one finite meta-batch still steps on that one's gradient."""
    model, dm = build(4, model_cls=PoisonedMAML, nonfinite="skip",
                      optimizer=partial(torch.optim.Adam, lr=0.01))
    for key, value in poison.items():
        setattr(model, key, value)
    weights = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            weights.append(module.model.head.weight.detach().clone())

    trainer(devices=1, max_steps=3, accumulate_grad_batches=accumulate, callbacks=[Record()]).fit(model, dm)
    steps = int(model.trainer.optimizers[0].state[model.model.head.weight]["step"])
    if accumulate == 1:  # batch 1 poisoned: weights after it unchanged, Adam counted 2 steps of 3
        assert torch.equal(weights[1], weights[0]) and not torch.equal(weights[2], weights[1]) and steps == 2
    elif "poison_step" in poison:  # global step 1 = batches 2 and 3, both poisoned: that window takes no step
        assert torch.equal(weights[3], weights[1]) and not torch.equal(weights[5], weights[3]) and steps == 2
    else:  # only batch 2 poisoned: its window steps on batch 3's gradient alone
        assert not torch.equal(weights[3], weights[1]) and steps == 3
