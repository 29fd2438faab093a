"""MAML (Finn et al., 2017) as a LightningModule: configuration and Lightning hooks over the functional core."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from lightning_meta.algorithms.base import LRSchedulerCallable, OptimizerCallable
from lightning_meta.algorithms.inner_loop import FP16_INNER_LOSS_SCALE, InnerLoopLearner
from lightning_meta.checks import check_choice, check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.sources import TaskType
from lightning_meta.functional import (
    META_GRADIENTS,
    MetaGradient,
    MetaObjective,
    meta_objective,
    multi_step_loss_weights,
)
from lightning_meta.models.norm import transductive_batch_norm

__all__ = ["FP16_INNER_LOSS_SCALE", "MAML"]


class MAML(InnerLoopLearner):
    """Model-Agnostic Meta-Learning on any ``nn.Module``, with the inner loop in ``torch.func``.

    For each task: ``phi = theta - inner_lr * grad L(theta, support)``, ``inner_steps`` times; the loss is the
    query loss of ``phi`` averaged over the meta-batch, and ``training_step`` returns a loss whose
    ``.backward()`` is the meta-gradient, so AMP scaling, accumulation, clipping and DDP apply unchanged. The
    math is [meta_objective][lightning_meta.functional.meta_objective] (training) and
    [query_trajectory][lightning_meta.functional.query_trajectory] (evaluation); this class configures and logs
    them.

    ``adapt``, ``nonfinite``, ``inner_loss_scale``, ``channels_last``, ``pre_adaptation_metrics`` and
    ``adaptation_curve`` are the options of every learner with an inner loop
    ([InnerLoopLearner][lightning_meta.InnerLoopLearner]); ``task_type``, ``optimizer``, ``lr_scheduler`` and
    ``lr_scheduler_interval`` those of every learner ([MetaLearner][lightning_meta.MetaLearner]).

    Args:
        model: the learner ``f_theta``; its output is the logits (``ways`` wide) or the regression target.
        inner_lr: the inner-loop learning rate ``alpha`` (the initial value when learned).
        inner_steps: inner steps per task in training.
        eval_inner_steps: inner steps in validation, test and predict (default ``inner_steps``).
        meta_gradient: ``"second_order"`` (autograd through the unrolled inner loop, exact),
            ``"first_order"`` (FOMAML: inner gradients as constants) or ``"hvp"`` (exact, by the reverse
            Hessian-vector-product recurrence; memory flat in ``inner_steps``).
        hvp_method: ``"autograd"`` (double backward) or ``"finite_difference"`` (for layers without one).
        learn_inner_lr: ``"off"``, ``"per_tensor"`` (Meta-SGD style, one rate per adapted tensor) or
            ``"per_step"`` (MAML++ LSLR: one per tensor and step).
        multi_step_loss: MAML++'s MSL: for the first ``multi_step_loss_epochs`` epochs the outer loss is the
            weighted sum of the query losses after every inner step, the weights annealed from uniform towards
            the last step ([multi_step_loss_weights][lightning_meta.functional.multi_step_loss_weights]);
            afterwards the last step's loss alone. Not with ``"hvp"``.
        multi_step_loss_epochs: the epochs over which MSL anneals (the paper: 10 to 15).
        first_order_epochs: MAML++'s derivative-order annealing: ``"first_order"`` for the first
            ``first_order_epochs`` epochs, then ``meta_gradient`` (0: from the start).
        batch_norm: as for [InnerLoopLearner][lightning_meta.InnerLoopLearner] (``"transductive"``, ``"none"``),
            or ``"per_step"`` (MAML++'s BNRS + BNWB: each BatchNorm becomes a
            [PerStepBatchNorm][lightning_meta.models.PerStepBatchNorm] with its own weights, biases and running
            statistics for every inner iterate ``phi_0..phi_K``, normalizing with batch statistics like
            ``"transductive"``; steps beyond ``inner_steps`` use the last slot; not with ``"hvp"`` or
            ``vectorize``).
        vectorize: run the tasks of a meta-batch in one ``torch.func.vmap`` call (same numbers; not with
            ``"hvp"``; measure before choosing: see docs/benchmarks.md).

    Examples:
        >>> import pytorch_lightning as pl
        >>> from lightning_meta import EpisodicDataModule, SinusoidTasks
        >>> from lightning_meta.models import MLP
        >>> model = MAML(MLP(), inner_lr=0.01, inner_steps=1, eval_inner_steps=10)
        >>> dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25)
        >>> trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False, limit_val_batches=1)
        >>> trainer.fit(model, dm)
        MAML BatchNorm policy: transductive (no BatchNorm layers: [])
        >>> sorted(trainer.validate(model, dm, verbose=False)[0])  # doctest: +NORMALIZE_WHITESPACE
        ['val/loss', 'val/loss_ci95', 'val/mse', 'val/mse_ci95',
         'val/pre_loss', 'val/pre_loss_ci95', 'val/pre_mse', 'val/pre_mse_ci95']
    """

    batch_norm_policies = ("transductive", "none", "per_step")

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        meta_gradient: MetaGradient = "second_order",
        hvp_method: Literal["autograd", "finite_difference"] = "autograd",
        learn_inner_lr: Literal["off", "per_tensor", "per_step"] = "off",
        multi_step_loss: bool = False,
        multi_step_loss_epochs: int = 10,
        first_order_epochs: int = 0,
        adapt: str | list[str] = "all",
        batch_norm: Literal["transductive", "none", "per_step"] = "transductive",
        vectorize: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
        inner_loss_scale: float | None = None,
        channels_last: bool = True,
        pre_adaptation_metrics: bool = True,
        adaptation_curve: bool = False,
        task_type: Literal["auto"] | TaskType = "auto",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
                         adapt=adapt, batch_norm=batch_norm, nonfinite=nonfinite, inner_loss_scale=inner_loss_scale,
                         channels_last=channels_last, pre_adaptation_metrics=pre_adaptation_metrics,
                         adaptation_curve=adaptation_curve, task_type=task_type, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, lr_scheduler_interval=lr_scheduler_interval)
        check_choice("meta_gradient", meta_gradient, META_GRADIENTS)
        check_choice("hvp_method", hvp_method, ("autograd", "finite_difference"))
        check_choice("learn_inner_lr", learn_inner_lr, ("off", "per_tensor", "per_step"))
        if batch_norm == "per_step" and (meta_gradient == "hvp" or vectorize):
            raise ValueError("batch_norm='per_step' updates running statistics in place at every inner step: it "
                             "needs meta_gradient 'second_order' or 'first_order' without vectorize")
        if vectorize and meta_gradient == "hvp":
            raise ValueError("vectorize=True does not apply to meta_gradient='hvp' (its reverse recurrence runs per "
                             "task); use vectorize=False with 'hvp', or 'second_order'/'first_order' with vmap")
        check_positive("multi_step_loss_epochs", multi_step_loss_epochs)
        check_positive("first_order_epochs", first_order_epochs, 0)
        if multi_step_loss and meta_gradient == "hvp":
            raise ValueError("multi_step_loss needs meta_gradient 'second_order' or 'first_order' (the HVP recurrence "
                             "differentiates the last step's query loss only)")
        self.meta_gradient, self.hvp_method, self.vectorize = meta_gradient, hvp_method, vectorize
        self.multi_step_loss, self.multi_step_loss_epochs = multi_step_loss, multi_step_loss_epochs
        self.first_order_epochs = first_order_epochs
        if vectorize and self.batch_norm_layers:  # plain-op BatchNorm: its double backward is right under vmap
            self.batch_norm_layers = transductive_batch_norm(self.model, elementary=True)
        if learn_inner_lr != "off":
            rows = inner_steps if learn_inner_lr == "per_step" else 1
            self.inner_lrs = nn.Parameter(self._buffers.pop("inner_lrs").expand(rows, -1).clone())

    # ------------------------------------------------------------ Lightning
    def schedule(self, epoch: int) -> tuple[MetaGradient, Tensor | None]:
        """``(meta-gradient mode, multi-step loss weights or None)`` at ``epoch``: MAML++'s annealing."""
        mode = "first_order" if epoch < self.first_order_epochs else self.meta_gradient
        if not self.multi_step_loss or epoch >= self.multi_step_loss_epochs:
            return mode, None
        return mode, multi_step_loss_weights(self.inner_steps, epoch, self.multi_step_loss_epochs)

    def objective(self, batch: TaskBatch, epoch: int | None = None) -> MetaObjective:
        """The meta-objective of ``batch`` under this configuration at ``epoch`` (default: the trainer's), without
        logging or non-finite checks: ``objective(batch).loss.backward()`` is one meta-gradient (what
        ``training_step`` returns)."""
        batch, task_type = self.prepare_batch(batch)
        mode, weights = self.schedule(self.current_epoch if epoch is None else epoch)
        if weights is not None:
            weights = weights.to(self.inner_lrs)
        adapted, inner_lrs = self._adapted_and_lrs()
        return meta_objective(
            self.task_loss(task_type), self.theta(), batch, inner_lrs, self.inner_steps,
            mode, adapted=adapted, vectorize=self.vectorize, hvp_method=self.hvp_method,
            loss_scale=self._loss_scale(), step_weights=weights)
