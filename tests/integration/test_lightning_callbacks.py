"""Lightning's own callbacks and common Trainer flags with every learner (MAML, IMAML, Reptile, ProtoNet,
BlackBoxAdaptation): each case asserts what the callback or flag promises (SWA averaged the weights, the LR finder's
suggestion reached the optimizer, a frozen layer did not move, ...), not only that the run ended.

Tiny real runs: sinusoid tasks for the gradient learners and black-box, 2-way vector tasks for ProtoNet; no mocks.
``docs/howto/callbacks.md`` lists every case; ``test_docs_list_every_case`` keeps the page in step with this file.
"""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys
from datetime import timedelta
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, script_env, tiny_trainer
from pytorch_lightning.callbacks import (
    BackboneFinetuning,
    BasePredictionWriter,
    BatchSizeFinder,
    Callback,
    DeviceStatsMonitor,
    EarlyStopping,
    EMAWeightAveraging,
    GradientAccumulationScheduler,
    LambdaCallback,
    LearningRateFinder,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelPruning,
    ModelSummary,
    OnExceptionCheckpoint,
    RichModelSummary,
    RichProgressBar,
    SpikeDetection,
    StochasticWeightAveraging,
    ThroughputMonitor,
    Timer,
    TQDMProgressBar,
    WeightAveraging,
)
from pytorch_lightning.loggers import Logger
from pytorch_lightning.tuner import Tuner
from pytorch_lightning.utilities.model_summary import get_human_readable_count
from torch import nn
from torch.utils.data import TensorDataset

from lightning_meta import (
    IMAML,
    MAML,
    BlackBoxAdaptation,
    ClassificationTasks,
    EpisodicDataModule,
    ProtoNet,
    Reptile,
    SinusoidTasks,
)
from lightning_meta.algorithms.inner_loop import InnerLoopLearner
from lightning_meta.models import MLP, Conv4

LEARNERS = ("maml", "imaml", "reptile", "protonet", "blackbox")
learners = pytest.mark.parametrize("learner", LEARNERS)
SGD = partial(torch.optim.SGD, lr=0.1)


# ----------------------------------------------------------------------------------------------- builders
def build(learner: str, optimizer=None, **kwargs) -> pl.LightningModule:
    """A tiny learner (seeded): MLP backbones with a body and a head."""
    torch.manual_seed(0)
    kw = {**kwargs, **({} if optimizer is None else {"optimizer": optimizer})}
    if learner == "maml":
        return MAML(MLP(hidden=(8, 8)), inner_lr=0.05, **kw)
    if learner == "imaml":
        return IMAML(MLP(hidden=(8, 8)), inner_lr=0.05, inner_steps=2, lam=1.0, cg_steps=2, **kw)
    if learner == "reptile":
        return Reptile(MLP(hidden=(8, 8)), inner_lr=0.02, inner_steps=2, inner_optimizer="sgd", **kw)
    if learner == "protonet":
        return ProtoNet(MLP(in_features=3, out_features=8, hidden=(8,)), **kw)
    return BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, task_dim=4, hidden=8, **kw)


def vector_tasks() -> ClassificationTasks:
    """2-way 2-shot tasks over 10 classes of random 3-vectors (6 train, 2 val, 2 test classes)."""
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    return ClassificationTasks(TensorDataset(x, torch.arange(40) % 10), ways=2, shots=2, queries=2,
                               split_fractions=(0.6, 0.2, 0.2))


def image_tasks() -> ClassificationTasks:
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return ClassificationTasks(TensorDataset(x, torch.arange(40) % 10), ways=2, shots=1, queries=1,
                               split_fractions=(0.6, 0.2, 0.2))


def data(learner: str, steps: int = 2, meta_batch: int = 2, tasks=None) -> EpisodicDataModule:
    """``steps`` training batches per epoch, one validation batch, one test batch."""
    tasks = tasks or (vector_tasks() if learner == "protonet" else SinusoidTasks(shots=4, queries=4))
    return EpisodicDataModule(tasks, meta_batch_size=meta_batch, train_episodes_per_epoch=meta_batch * steps,
                              val_episodes=2, test_episodes=2, seed=1)


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return tiny_trainer(**{"num_sanity_val_steps": 0, "default_root_dir": tmp_path, **kwargs})


def fit(model, dm, tmp_path, **kwargs) -> pl.Trainer:
    t = trainer(tmp_path, **kwargs)
    t.fit(model, dm)
    return t


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


class Record(Callback):
    """What a run did: weights at each epoch start and after each step, the batches, losses, lrs, flags."""

    def __init__(self) -> None:
        self.epoch_start, self.steps, self.batches, self.losses, self.lrs = [], [], [], [], []
        self.adapted, self.flags, self.val_losses = [], [], []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epoch_start.append(weights(module))

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append(batch)
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])
        self.adapted.append(list(module.adapted) if isinstance(module, InnerLoopLearner) else [])
        self.flags.append((torch.is_anomaly_enabled(), torch.are_deterministic_algorithms_enabled()))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps.append(weights(module))
        self.losses.append(outputs["loss"].detach().clone())

    def on_validation_end(self, trainer, module) -> None:
        self.val_losses.append(float(trainer.callback_metrics["val/loss"]))


class MemoryLogger(Logger):
    """A logger that keeps what it is given (for callbacks that log: LR monitor, throughput)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def values(self, key: str) -> list[float]:
        return [float(m[key]) for _, m in self.metrics if key in m]


def mean(snapshots: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([s[n] for s in snapshots]).mean(0) for n in snapshots[0]}


def assert_weights(module: nn.Module, expected: dict[str, torch.Tensor], **tol) -> None:
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], **(tol or {"rtol": 1e-6, "atol": 1e-7}))


def backbone_names(model) -> set[str]:
    ids = {id(p) for p in model.backbone.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ----------------------------------------------------------------------------- weight averaging
@learners
def test_stochastic_weight_averaging_averages_the_epoch_start_weights(learner, tmp_path):
    """SWA from epoch 1 of 3: the final weights are the mean of the weights at the starts of epochs 1 and 2."""
    model, record = build(learner), Record()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    fit(model, data(learner), tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[record, swa])
    assert int(swa.n_averaged) == 2
    assert_weights(model, mean(record.epoch_start[1:3]))
    assert any(not torch.equal(p, record.steps[-1][n]) for n, p in weights(model).items())


@pytest.mark.parametrize("learner", ["maml", "protonet"])
def test_stochastic_weight_averaging_on_conv4_with_each_batch_norm_policy(learner, tmp_path):
    """MAML's transductive BatchNorm keeps no running statistics: SWA averages the weights and has nothing to
    recompute (no extra epoch). ProtoNet's Conv-4 has ordinary BatchNorm: SWA averages, then resets the statistics and
    recomputes them in one extra epoch of forwards (2 batches of 2 tasks, one encoder pass per task: 4 batches
    tracked). In that epoch Lightning also takes one optimizer step with the last real step's gradient (upstream:
    the same with a plain LightningModule, docs/howto/callbacks.md), so there the average is checked in SWA's model."""
    torch.manual_seed(0)
    model = (MAML(Conv4(out_features=2, hidden=4, image_size=16), inner_lr=0.1) if learner == "maml"
             else ProtoNet(Conv4(hidden=4, image_size=16, embed_only=True)))
    record, swa = Record(), StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    t = fit(model, data(learner, tasks=image_tasks()), tmp_path, max_epochs=3, limit_val_batches=0,
            callbacks=[record, swa])
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if learner == "maml":
        assert_weights(model, mean(record.epoch_start[1:3]))
        assert not norms and len(record.epoch_start) == 3 and t.current_epoch == 3
    else:
        assert_weights(swa._average_model, mean(record.epoch_start[1:3]))
        assert len(record.epoch_start) == 4  # the statistics epoch
        assert all(int(m.num_batches_tracked) == 4 and m.momentum == 0.1 for m in norms)


@learners
def test_weight_averaging_is_the_mean_of_the_weights_after_each_step(learner, tmp_path):
    model, record = build(learner), Record()
    fit(model, data(learner), tmp_path, max_steps=4, limit_val_batches=0, callbacks=[record, WeightAveraging()])
    assert_weights(model, mean(record.steps))


@learners
def test_ema_weight_averaging_follows_the_ema_recurrence(learner, tmp_path):
    model, record = build(learner), Record()
    ema = EMAWeightAveraging(decay=0.5)
    fit(model, data(learner), tmp_path, max_steps=3, limit_val_batches=0, callbacks=[record, ema])
    expected = record.steps[0]
    for step in record.steps[1:]:
        expected = {n: 0.5 * expected[n] + 0.5 * step[n] for n in step}
    assert_weights(model, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- the LR finder
@learners
def test_tuner_lr_find_sets_the_learning_rate_the_next_fit_uses(learner, tmp_path):
    """``Tuner.lr_find(update_attr=True)`` finds ``learning_rate`` (the injected optimizer's lr, here the default
    optimizer's) and sets it; the next fit's optimizer starts from the suggestion."""
    model, dm = build(learner), data(learner, steps=4)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    assert model.learning_rate == (1.0 if learner == "reptile" else 1e-3)
    finder = Tuner(t).lr_find(model, datamodule=dm, num_training=15, early_stop_threshold=None, update_attr=True)
    suggestion = finder.suggestion()
    assert suggestion is not None and model.learning_rate == suggestion
    t.fit(model, dm)
    assert t.optimizers[0].param_groups[0]["lr"] == suggestion


@learners
def test_learning_rate_finder_callback_reaches_the_optimizer(learner, tmp_path):
    """The callback during fit: the training optimizer and the factory (the next ``configure_optimizers``) both hold
    the suggestion, and the injected optimizer's other settings are kept."""
    model = build(learner, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.5))
    finder = LearningRateFinder(num_training_steps=15, early_stop_threshold=None)
    t = fit(model, data(learner, steps=4), tmp_path, max_steps=2, limit_val_batches=0, callbacks=[finder])
    suggestion = finder.optimal_lr.suggestion()
    assert suggestion is not None and suggestion != 0.1
    assert t.optimizers[0].param_groups[0]["lr"] == suggestion == model.learning_rate
    rebuilt = model.configure_optimizers()
    assert rebuilt.param_groups[0]["lr"] == suggestion and rebuilt.param_groups[0]["momentum"] == 0.5


def test_learning_rate_of_a_cli_config_is_read_and_replaced_in_the_config(tmp_path):
    """LightningCLI's ``model.init_args.optimizer: {class_path, init_args: {lr}}`` (a partial from jsonargparse):
    ``learning_rate`` reads the config's lr; setting it replaces that lr and keeps every other setting."""
    from lightning_meta.cli import main

    config = REPO / "examples" / "configs" / "sinusoid_maml.yaml"
    cli = main(["--config", str(config), "--model.init_args.optimizer", "torch.optim.SGD",
                "--model.init_args.optimizer.lr", "0.25", "--model.init_args.optimizer.momentum", "0.5",
                "--trainer.logger", "false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.learning_rate == 0.25
    cli.model.learning_rate = 0.03
    optimizer = cli.model.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == 0.03 and optimizer.param_groups[0]["momentum"] == 0.5


def test_learning_rate_of_a_lambda_factory():
    model = MAML(MLP(hidden=(4,)), optimizer=lambda params: torch.optim.Adam(params, lr=0.02, betas=(0.5, 0.9)))
    assert model.learning_rate == 0.02
    model.learning_rate = 0.004
    group = model.configure_optimizers().param_groups[0]
    assert (group["lr"], group["betas"], model.learning_rate) == (0.004, (0.5, 0.9), 0.004)


# --------------------------------------------------------------------------- frozen parameters
@learners
def test_backbone_finetuning_freezes_then_trains_the_backbone_at_its_own_lr(learner, tmp_path, recwarn):
    """Epoch 0: the backbone is bitwise unchanged (and not adapted); epoch 1: it joins the optimizer as a new group
    at ``0.1 * lr``, moves, and the inner loop adapts it again; epoch 2: its lr doubles (Lightning's default)."""
    model, record = build(learner, optimizer=SGD), Record()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1)
    fit(model, data(learner), tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[record, finetuning])
    frozen, others = backbone_names(model), set(weights(model)) - backbone_names(model)
    assert frozen and others
    first, second, third = record.epoch_start
    assert all(torch.equal(first[n], second[n]) for n in frozen)
    assert all(not torch.equal(second[n], third[n]) for n in frozen)
    assert any(not torch.equal(first[n], second[n]) for n in others)
    assert record.lrs[0] == [0.1] and record.lrs[2] == [0.1, pytest.approx(0.01)]
    assert record.lrs[4] == [0.1, pytest.approx(0.02)]
    groups = [{id(p) for p in g["params"]} for g in model.trainer.optimizers[0].param_groups]
    assert groups[1] == {id(p) for p in model.backbone.parameters()}
    if isinstance(model, InnerLoopLearner):
        body = {n.removeprefix("model.") for n in frozen}
        assert not body & set(record.adapted[0]) and body <= set(record.adapted[2])
    assert not [w for w in recwarn if "already exist within another group" in str(w.message)]


def test_frozen_tensors_are_not_adapted_and_the_rest_gets_the_oracle_meta_gradient():
    """A layer frozen after building MAML: no gradient reaches it, and the meta-gradient of the others equals the
    plain-torch oracle in which the frozen tensors are constants and only the others are adapted (float64, learned
    per-tensor inner lrs, distinct, so that a lr on the wrong tensor would show)."""
    from maml_oracles import general_gradient, mse, named_mlp_forward

    torch.manual_seed(0)
    maml = MAML(MLP(hidden=(6, 6), activation="tanh"), inner_lr=0.05, inner_steps=2,
                learn_inner_lr="per_tensor").double()
    with torch.no_grad():
        maml.inner_lrs.copy_(0.03 + 0.01 * torch.arange(maml.inner_lrs.numel(), dtype=torch.float64)[None])
    maml.model.body[2].requires_grad_(False)
    batch = SinusoidTasks(shots=5, queries=5).sample("train", [torch.Generator().manual_seed(i) for i in range(3)])
    batch = type(batch)(*(t.double() if t.is_floating_point() else t for t in batch))
    maml.objective(batch).loss.backward()
    adapted = [n for n in maml.adapt_names if not n.startswith("body.2.")]
    assert maml.adapted == adapted and maml.model.body[2].weight.grad is None
    columns = [maml.adapt_names.index(n) for n in adapted]
    theta = dict(maml.model.named_parameters())
    oracle = general_gradient(named_mlp_forward, mse, theta, maml.inner_lrs.detach()[:, columns], adapted, batch,
                              2, learn_lrs=True)
    for name in adapted:
        torch.testing.assert_close(theta[name].grad, oracle[name], rtol=1e-9, atol=1e-12)
    lr_grad = torch.zeros_like(maml.inner_lrs)
    lr_grad[:, columns] = oracle["inner_lrs"]
    torch.testing.assert_close(maml.inner_lrs.grad, lr_grad, rtol=1e-9, atol=1e-12)


def test_an_adapt_pattern_of_frozen_tensors_only_is_a_clear_error():
    net = MLP(hidden=(4,))
    net.body.requires_grad_(False)
    with pytest.raises(ValueError, match=r"adapt='body\.\*' selects only frozen tensors.*body\.0\.weight"):
        MAML(net, adapt="body.*")
    maml = MAML(MLP(hidden=(4,)), adapt="head.*")
    maml.model.head.requires_grad_(False)  # frozen after building: the error comes at the step
    batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(0)])
    with pytest.raises(ValueError, match=r"MAML: adapt='head\.\*' selects only frozen tensors.*head\.weight"):
        maml.objective(batch)


@learners
def test_model_pruning_prunes_and_the_inner_loop_adapts_the_pruned_tensors(learner, tmp_path):
    """Global L1 pruning of half the weights at each epoch end: every pruned entry is zero in the final (made
    permanent) weights, and in the second epoch an inner loop adapts the ``*_orig`` tensors pruning put in place."""
    model, record, masks = build(learner), Record(), {}
    keep = LambdaCallback(on_train_epoch_end=lambda t, m: masks.update(
        {n.removesuffix("_mask"): b.clone() for n, b in m.named_buffers() if n.endswith("_mask")}))
    fit(model, data(learner), tmp_path, max_epochs=2, limit_val_batches=0,
        callbacks=[ModelPruning("l1_unstructured", amount=0.5), record, keep])
    assert any(n.endswith("_orig") for n in record.adapted[-1]) or not isinstance(model, InnerLoopLearner)
    assert sum(int((m == 0).sum()) for m in masks.values()) >= 0.5 * sum(m.numel() for m in masks.values())
    params = dict(model.named_parameters())
    assert all(bool((params[n][m == 0] == 0).all()) for n, m in masks.items())


# --------------------------------------------------------------------------------- other callbacks
@learners
def test_model_checkpoint_saves_the_best_and_the_last_weights(learner, tmp_path):
    """The best checkpoint holds the weights of the epoch with the lowest val/loss, ``last.ckpt`` those of its step."""
    model, record = build(learner), Record()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True)
    fit(model, data(learner), tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[record, checkpoint])
    best_epoch = min(range(3), key=lambda e: record.val_losses[e])
    assert float(checkpoint.best_model_score) == pytest.approx(record.val_losses[best_epoch])
    for path in (checkpoint.best_model_path, checkpoint.last_model_path):
        saved = torch.load(path, weights_only=False)
        step = record.steps[saved["global_step"] - 1]
        assert all(torch.equal(saved["state_dict"][n], w) for n, w in step.items())
    assert torch.load(checkpoint.best_model_path, weights_only=False)["global_step"] == 2 * (best_epoch + 1)


@learners
def test_on_exception_checkpoint_saves_the_weights_at_the_failure(learner, tmp_path):
    model = build(learner)

    def fail(trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fit(model, data(learner), tmp_path, max_epochs=3, limit_val_batches=0, enable_checkpointing=True,
            callbacks=[LambdaCallback(on_train_batch_end=fail), OnExceptionCheckpoint(dirpath=tmp_path)])
    saved = torch.load(tmp_path / "on_exception.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in model.state_dict().items())


@learners
def test_early_stopping_stops_at_the_threshold(learner, tmp_path):
    stop = EarlyStopping(monitor="val/loss", stopping_threshold=1e9)  # any finite loss is below it
    t = fit(build(learner), data(learner), tmp_path, max_epochs=5, callbacks=[stop])
    assert stop.stopped_epoch == 0 and t.current_epoch == 1 and t.global_step == 2


@learners
def test_gradient_accumulation_scheduler_steps_every_two_batches(learner, tmp_path):
    record = Record()
    t = fit(build(learner), data(learner, steps=4), tmp_path, max_epochs=1, limit_val_batches=0,
            callbacks=[record, GradientAccumulationScheduler({0: 2})])
    assert t.accumulate_grad_batches == 2 and len(record.batches) == 4 and t.global_step == 2
    assert all(torch.equal(record.steps[0][n], record.epoch_start[0][n]) for n in record.steps[0])


@learners
def test_lambda_callback_hooks_run_once_per_step(learner, tmp_path):
    calls = []
    t = fit(build(learner), data(learner), tmp_path, max_steps=3, limit_val_batches=0,
            callbacks=[LambdaCallback(on_train_batch_end=lambda *args: calls.append(args[-1]))])
    assert calls == [0, 1, 0] and t.global_step == 3


@learners
def test_learning_rate_monitor_logs_the_optimizers_lr_each_step(learner, tmp_path):
    model = build(learner, optimizer=SGD, lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1,
                                                                gamma=0.5), lr_scheduler_interval="step")
    logger = MemoryLogger()
    fit(model, data(learner), tmp_path, max_steps=3, limit_val_batches=0, logger=logger, log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="step")])
    assert logger.values("lr-SGD") == pytest.approx([0.1, 0.05, 0.025])


@learners
def test_model_summary_reports_the_trainable_parameters(learner, tmp_path, caplog):
    model = build(learner)
    summary_log = logging.getLogger("pytorch_lightning.callbacks.model_summary")
    summary_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=summary_log.name):
            fit(model, data(learner), tmp_path, max_steps=1, limit_val_batches=0, callbacks=[ModelSummary(2)])
    finally:
        summary_log.removeHandler(caplog.handler)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = next(line for line in caplog.text.splitlines() if "Trainable params" in line)
    assert line.split()[0] == get_human_readable_count(trainable).strip()
    assert re.search(rf"\| ({'model' if isinstance(model, InnerLoopLearner) else 'encoder'}) ", caplog.text)


@learners
def test_tqdm_progress_bar_shows_the_training_metrics(learner, tmp_path):
    bar = TQDMProgressBar(refresh_rate=1)
    t = fit(build(learner), data(learner), tmp_path, max_steps=2, limit_val_batches=0, enable_progress_bar=True,
            callbacks=[bar])
    assert bar.train_progress_bar.n == 2 and "train/loss" in bar.get_metrics(t, t.lightning_module)


@pytest.mark.parametrize("callback", ["RichProgressBar", "RichModelSummary"])
def test_rich_callbacks_run(callback, tmp_path):
    pytest.importorskip("rich", reason="rich is not installed (Lightning's Rich callbacks need it)")
    cb = RichProgressBar() if callback == "RichProgressBar" else RichModelSummary()
    t = fit(build("maml"), data("maml"), tmp_path, max_steps=2, limit_val_batches=0, enable_progress_bar=True,
            callbacks=[cb])
    assert t.global_step == 2


@learners
def test_device_stats_monitor_logs_cpu_stats(learner, tmp_path):
    pytest.importorskip("psutil", reason="psutil is not installed (DeviceStatsMonitor's CPU stats need it)")
    logger = MemoryLogger()
    fit(build(learner), data(learner), tmp_path, max_steps=2, limit_val_batches=0, logger=logger,
        log_every_n_steps=1, callbacks=[DeviceStatsMonitor(cpu_stats=True)])
    assert any("cpu_percent" in key for _, m in logger.metrics for key in m)


@learners
def test_prediction_writer_writes_every_predicted_batch(learner, tmp_path):
    class ListWriter(BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.written = []

        def write_on_batch_end(self, trainer, module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            self.written.append(prediction)

    writer, model, dm = ListWriter(), build(learner), data(learner)
    predictions = trainer(tmp_path, callbacks=[writer]).predict(model, dm)
    assert len(writer.written) == len(predictions) == 1
    assert torch.equal(writer.written[0], predictions[0]) and predictions[0].shape[:2] == (2, 4)  # tasks, queries


@learners
def test_spike_detection_tracks_the_training_loss(learner, tmp_path):
    spikes, record = SpikeDetection(rtol=1e9, window=10), Record()
    fit(build(learner), data(learner), tmp_path, max_steps=3, limit_val_batches=0, callbacks=[record, spikes])
    assert float(spikes.last_val) == float(record.losses[-1])
    assert float(spikes.running_mean.compute()) == pytest.approx(float(torch.stack(record.losses).mean()))


@learners
def test_throughput_monitor_counts_tasks(learner, tmp_path):
    logger = MemoryLogger()
    fit(build(learner), data(learner, steps=3), tmp_path, max_steps=3, limit_val_batches=0, logger=logger,
        log_every_n_steps=1, callbacks=[ThroughputMonitor(batch_size_fn=lambda batch: batch.num_tasks, window_size=2)])
    assert logger.values("train/samples") == [2, 4, 6] and logger.values("train/batches") == [1, 2, 3]
    assert len(logger.values("train/device/samples_per_sec")) == 2  # from the second step (a window of 2)


@learners
def test_timer_stops_training_at_its_duration(learner, tmp_path):
    """A duration already over when training starts: no step is taken."""
    timer = Timer(duration=timedelta(0))
    t = fit(build(learner), data(learner), tmp_path, max_epochs=5, limit_val_batches=0, callbacks=[timer])
    assert t.global_step == 0 and timer.time_remaining("train") <= 0


@learners
def test_batch_size_finder_scales_the_meta_batch_the_training_uses(learner, tmp_path):
    record, dm = Record(), data(learner, steps=4)
    finder = BatchSizeFinder(steps_per_trial=1, init_val=2, max_trials=2, batch_arg_name="meta_batch_size")
    fit(build(learner), dm, tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[finder, record])
    assert finder.optimal_batch_size == dm.meta_batch_size == 4
    assert {b.num_tasks for b in record.batches} == {4}


# ----------------------------------------------------------------------------------- Trainer flags
@learners
def test_gradient_clip_val_limits_the_update_norm(learner, tmp_path):
    model, clip = build(learner, optimizer=partial(torch.optim.SGD, lr=1.0)), 1e-3
    before = weights(model)
    fit(model, data(learner), tmp_path, max_steps=1, limit_val_batches=0, gradient_clip_val=clip)
    step = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    assert float(step.norm()) == pytest.approx(clip, rel=1e-3)


@learners
def test_accumulate_grad_batches_steps_with_the_mean_gradient_of_two_batches(learner, tmp_path):
    model, dm = build(learner, optimizer=partial(torch.optim.SGD, lr=0.5)), data(learner)
    dm.setup("fit")
    oracle = copy.deepcopy(model)
    for batch in list(dm.train_dataloader())[:2]:
        (oracle.objective(batch).loss / 2).backward()
    t = fit(model, data(learner), tmp_path, max_steps=1, limit_val_batches=0, accumulate_grad_batches=2)
    assert t.global_step == 1
    expected = {n: p.detach() - 0.5 * p.grad for n, p in oracle.named_parameters()}
    assert_weights(model, expected, rtol=1e-5, atol=1e-7)


@learners
def test_detect_anomaly_is_on_in_every_step(learner, tmp_path):
    record = Record()
    fit(build(learner), data(learner), tmp_path, max_steps=2, limit_val_batches=0, detect_anomaly=True,
        callbacks=[record])
    assert [flag[0] for flag in record.flags] == [True, True] and not torch.is_anomaly_enabled()


@learners
def test_simple_profiler_times_every_training_step(learner, tmp_path):
    t = fit(build(learner), data(learner), tmp_path, max_steps=3, limit_val_batches=0, profiler="simple")
    durations = [d for key, d in t.profiler.recorded_durations.items() if key.endswith(".training_step")]
    assert len(durations) == 1 and len(durations[0]) == 3


@learners
def test_fast_dev_run_takes_one_training_and_one_validation_batch(learner, tmp_path):
    record = Record()
    t = fit(build(learner), data(learner), tmp_path, fast_dev_run=True, callbacks=[record])
    assert t.global_step == 1 and len(record.batches) == 1 and record.val_losses


@learners
def test_overfit_batches_repeats_the_same_batch_every_epoch(learner, tmp_path, recwarn):
    record, plain = Record(), Record()
    fit(build(learner), data(learner), tmp_path, max_epochs=3, overfit_batches=1, callbacks=[record])
    fit(build(learner), data(learner), tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[plain])
    assert len(record.batches) == 3 and len(record.val_losses) == 3
    assert all(torch.equal(a, b) for batch in record.batches for a, b in zip(batch, plain.batches[0]))
    assert not torch.equal(plain.batches[2].query_x, plain.batches[0].query_x)  # the stream moves without the flag
    assert not [w for w in recwarn if "shuffling" in str(w.message)]


@learners
def test_val_check_interval_validates_twice_per_epoch(learner, tmp_path):
    record = Record()
    fit(build(learner), data(learner, steps=4), tmp_path, max_epochs=1, val_check_interval=2, callbacks=[record])
    assert len(record.val_losses) == 2


@learners
def test_max_time_stops_training(learner, tmp_path):
    t = fit(build(learner), data(learner), tmp_path, max_epochs=5, limit_val_batches=0, max_time={"seconds": 0})
    assert t.global_step == 0 and t.current_epoch == 0


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@learners
def test_deterministic_runs_are_bitwise_equal(learner, tmp_path, restore_determinism):
    runs = []
    for _ in range(2):
        model, record = build(learner), Record()
        fit(model, data(learner), tmp_path, max_steps=3, limit_val_batches=0, deterministic=True, callbacks=[record])
        runs.append(weights(model))
        assert all(flag[1] for flag in record.flags)
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


@learners
def test_bf16_mixed_runs_the_forwards_in_bfloat16(learner, tmp_path):
    model, dtypes = build(learner), []
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    record = Record()
    fit(model, data(learner), tmp_path, max_steps=2, limit_val_batches=0, precision="bf16-mixed", callbacks=[record])
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters()) and all(map(torch.isfinite, record.losses))


@learners
def test_64_true_trains_in_float64(learner, tmp_path):
    model, record = build(learner), Record()
    fit(model, data(learner), tmp_path, max_steps=2, limit_val_batches=0, precision="64-true", callbacks=[record])
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert {b.support_x.dtype for b in record.batches} == {x.dtype for x in record.losses} == {torch.float64}
    assert any(not torch.equal(p, record.epoch_start[0][n]) for n, p in weights(model).items())


# ------------------------------------------------------------------------------------------ scripts
def test_both_namespaces_run_swa_the_lr_finder_and_backbone_finetuning(tmp_path):
    """The same three callbacks from ``lightning.pytorch`` (classes built on it by LIGHTNING_META_BACKEND), in one
    subprocess, each with its promise asserted inside the script."""
    script = REPO / "tests" / "scripts" / "callbacks_user.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=script_env(LIGHTNING_META_BACKEND="lightning"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend lightning: swa ok, lr_find ok, backbone ok" in proc.stdout


def test_user_script_with_swa_and_the_lr_finder(tmp_path):
    """``examples/maml_swa_lr_finder.py`` as a user runs it: exit 0, the suggestion and the averaged weights printed."""
    command = [sys.executable, str(REPO / "examples" / "maml_swa_lr_finder.py"), "--steps", "3", "--lr-steps", "15",
               "--test-episodes", "50"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=script_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"lr finder suggestion ([\d.e-]+) -> optimizer lr ([\d.e-]+)", proc.stdout)
    assert found and float(found[1]) == float(found[2])
    assert "SWA averaged 2 epochs" in proc.stdout and "test/mse" in proc.stdout


def test_docs_list_every_case():
    page = (REPO / "docs" / "howto" / "callbacks.md").read_text()
    names = {n for n in globals() if n.startswith("test_") and n != "test_docs_list_every_case"}
    missing = sorted(n for n in names if f"`{n.removeprefix('test_')}`" not in page)
    assert not missing, f"docs/howto/callbacks.md does not list {missing}"
