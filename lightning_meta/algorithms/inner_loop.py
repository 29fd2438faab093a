"""What every learner with a gradient inner loop shares (MAML, Reptile, iMAML): the model and its adapted tensors,
the inner learning rate and steps, BatchNorm policy, memory layout, non-finite handling, and evaluation by
adapting each task with gradient descent on its support set (``query_trajectory``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.base import LRSchedulerCallable, MetaLearner, OptimizerCallable
from lightning_meta.algorithms.grad_mode import grad_enabled, usable
from lightning_meta.algorithms.trainer_tools import body_of
from lightning_meta.checks import check_choice, check_number, check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.layout import channels_last_batch, channels_last_tasks
from lightning_meta.data.sources import TaskType
from lightning_meta.functional import InnerOptimizer, InnerSGD, Params, TaskLoss, query_trajectory, unroll
from lightning_meta.functional import select_adapted as select_adapted_tensors
from lightning_meta.functional.params import frozen_selection_error
from lightning_meta.models.adapted import ParametrizedNetwork
from lightning_meta.models.norm import per_step_batch_norm, set_norm_step, transductive_batch_norm
from lightning_meta.models.spec import build_module

FP16_INNER_LOSS_SCALE = 2.0**10


class InnerLoopLearner(MetaLearner):
    """Base of the optimization-based learners ([MAML][lightning_meta.MAML], [Reptile][lightning_meta.Reptile],
    [IMAML][lightning_meta.IMAML]): a subclass defines ``objective(batch)``, the training objective whose
    ``loss.backward()`` is its meta-gradient, and may name its inner optimizer (``make_inner_optimizer()``, default
    SGD at the inner learning rates); [MetaLearner][lightning_meta.MetaLearner] owns the steps, and this class the
    model, the adapted tensors and ``evaluate`` (the inner optimizer unrolled on each support set).

    Evaluation (validation, test, predict) adapts each task with ``eval_inner_steps`` of the inner optimizer on its
    support set and scores the queries, also before adaptation (``pre_``) and, with ``adaptation_curve``, after
    every step. ``task_type``, ``optimizer``, ``lr_scheduler`` and ``lr_scheduler_interval`` are every learner's
    options: see [MetaLearner][lightning_meta.MetaLearner].

    Args:
        model: the learner ``f_theta``; its output is the logits (``ways`` wide) or the regression target.
        inner_lr: the inner-loop learning rate ``alpha``.
        inner_steps: inner steps per task in training.
        eval_inner_steps: inner steps in validation, test and predict (default ``inner_steps``).
        adapt: what the inner loop adapts: ``"all"``, ``"head"`` (ANIL: the last child module) or
            ``fnmatch`` patterns over parameter names; of these, the tensors that require grad at each step
            (``adapted``: a frozen tensor is neither adapted nor updated).
        batch_norm: ``"transductive"`` (batch statistics in every forward, no running statistics: the MAML
            paper's setting; each BatchNorm becomes a
            [TransductiveBatchNorm][lightning_meta.models.TransductiveBatchNorm]) or ``"none"`` (the model must
            have no BatchNorm).
        nonfinite: ``"raise"`` stops naming the inner step and task of a non-finite loss; ``"skip"`` skips the
            meta-batch (under DDP every rank skips or raises together).
        inner_loss_scale: multiplies the inner loss before differentiation and divides the gradient back;
            ``None`` means 1, or ``2**10`` under 16-bit precision, where inner gradients underflow in float16.
        channels_last: image inputs and conv weights in channels-last memory order.
        pre_adaptation_metrics: also log the query metrics before adaptation (``val/pre_loss``, ...).
        adaptation_curve: record the query loss and score after each of ``0..eval_inner_steps`` inner steps
            (``adaptation_curves``; the W&B callback plots it).

    Examples:
        A first-order learner in a few lines: adapt each task by SGD, take the query gradient at ``phi_K``.

        >>> import torch
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.functional import MetaObjective, meta_objective
        >>> from lightning_meta.models import MLP
        >>> class FirstOrder(InnerLoopLearner):
        ...     def objective(self, batch):
        ...         batch, task_type = self.prepare_batch(batch)
        ...         return meta_objective(self.task_loss(task_type), self.theta(), batch,
        ...                               self.adapted_inner_lrs(), self.inner_steps, "first_order",
        ...                               adapted=self.adapted)
        >>> learner = FirstOrder(MLP(), inner_lr=0.01)
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(2)])
        >>> learner.objective(batch).query_losses.shape
        torch.Size([2])
    """

    batch_norm_policies: tuple[str, ...] = ("transductive", "none")  # MAML adds "per_step"

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        adapt: str | list[str] = "all",
        batch_norm: Literal["transductive", "none"] = "transductive",
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
        super().__init__(nonfinite=nonfinite, task_type=task_type, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         lr_scheduler_interval=lr_scheduler_interval)
        _check_inner_loop_args(inner_lr, inner_steps, eval_inner_steps, inner_loss_scale)
        check_choice("batch_norm", batch_norm, self.batch_norm_policies)
        model = build_module(model, "model", self.algorithm)
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.record_backbone("model", model)
        self.model = model
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.inner_loss_scale = inner_loss_scale
        self.batch_norm_layers = self._apply_batch_norm_policy(batch_norm)
        self.channels_last = channels_last
        self.pre_adaptation_metrics, self.adaptation_curve = pre_adaptation_metrics, adaptation_curve
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        #: the tensors ``adapt`` selects, frozen or not (``adapted``: those of them that require grad now)
        self.adapt_names = select_adapted_tensors(model, adapt, include_frozen=True)
        self.register_buffer("inner_lrs", torch.full((1, len(self.adapt_names)), float(inner_lr)))

    @property
    def eval_steps(self) -> int:
        """Evaluation adapts each task for ``eval_inner_steps``."""
        return self.eval_inner_steps

    def _apply_batch_norm_policy(self, policy: str) -> list[str]:
        if policy == "transductive":
            return transductive_batch_norm(self.model)
        if policy == "per_step":  # MAML++ BNRS + BNWB: one slot per inner iterate phi_0..phi_K
            return per_step_batch_norm(self.model, self.inner_steps + 1)
        layers = [n for n, m in self.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if layers:
            raise ValueError(
                f"batch_norm='none' but the model has BatchNorm layers {layers}; use batch_norm='transductive' "
                "or a model without BatchNorm (e.g. Conv4(batch_norm=False))"
            )
        return []

    def on_fit_start(self) -> None:
        policy = "transductive batch statistics" if self.batch_norm_layers else "no BatchNorm layers"
        self.print(f"{self.algorithm} BatchNorm policy: {self.hparams.batch_norm} ({policy}: "
                   f"{self.batch_norm_layers})")

    def layout(self, batch: TaskBatch) -> TaskBatch:
        """Image meta-batches in channels-last strides, if enabled (applied by ``prepare_batch``)."""
        return channels_last_batch(batch) if self.channels_last else batch

    def check_output_width(self, batch: TaskBatch, task_type: str) -> None:
        """One forward of ``theta`` on the first task's support set (eval mode: no dropout draw, no state change)
        compared with the targets: ``ways`` logits for classification, the target's shape for regression."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(self._image_layout(batch.support_x[0]))
        finally:
            self.model.train(was_training)
        name = self.algorithm
        if task_type == "classification":
            ways = int(batch.support_y.max()) + 1
            if out.dim() != 2 or out.shape[-1] != ways:
                raise ValueError(
                    f"{name}: the model outputs {tuple(out.shape[1:])} per example, but the tasks are {ways}-way "
                    f"(support labels 0..{ways - 1}): give the model out_features={ways} (e.g. "
                    f"Conv4(out_features={ways})), or sample {out.shape[-1]}-way tasks"
                )
        elif out.shape[1:] != batch.support_y.shape[2:]:
            raise ValueError(
                f"{name}: the model outputs {tuple(out.shape[1:])} per example, but the regression targets are "
                f"{tuple(batch.support_y.shape[2:])} (support_y {tuple(batch.support_y.shape)}): give the model "
                f"out_features={batch.support_y.shape[-1] if batch.support_y.dim() > 2 else 1}"
            )

    def default_backbone(self) -> nn.Module:
        """The model without its head (``body_of``: e.g. ``Conv4``'s ``features``, ``MLP``'s ``body``): what
        Lightning's ``BackboneFinetuning`` freezes; while frozen the inner loop adapts the head alone (ANIL-like)."""
        return body_of(self.model)

    # ------------------------------------------------------- adapted tensors
    @property
    def adapted(self) -> list[str]:
        """The tensors the inner loop adapts at this step: those ``adapt`` selects that require grad now. A tensor
        frozen with ``requires_grad_(False)`` after construction (e.g. by Lightning's ``BackboneFinetuning``) is
        neither adapted nor updated, and is adapted again once unfrozen; a selection that is all frozen is a
        ``ValueError`` naming it."""
        return self._adapted_and_lrs()[0]

    def adapted_inner_lrs(self) -> Tensor:
        """The inner learning rates of ``adapted``, ``[rows, len(adapted)]``: the columns of ``inner_lrs`` (a
        learned ``inner_lrs`` gets its gradient through them)."""
        return self._adapted_and_lrs()[1]

    def _adapted_and_lrs(self) -> tuple[list[str], Tensor]:
        params = dict(self.model.named_parameters())
        current = [_current_name(n, params) for n in self.adapt_names]
        keep = [i for i, n in enumerate(current) if params[n].requires_grad]
        if len(keep) == len(current):
            return current, self.inner_lrs
        if not keep:
            raise frozen_selection_error(self.hparams.adapt, self.adapt_names, who=f"{self.algorithm}: ")
        index = torch.tensor(keep, device=self.inner_lrs.device)
        return [current[i] for i in keep], self.inner_lrs.index_select(1, index)

    # ------------------------------------------------------------- utilities
    def _loss_scale(self) -> float:
        if self.inner_loss_scale is not None:
            return float(self.inner_loss_scale)
        precision = str(getattr(self._trainer, "precision", "")) if self._trainer is not None else ""
        return FP16_INNER_LOSS_SCALE if precision.startswith("16") else 1.0

    def task_loss(self, task_type: str | None = None) -> TaskLoss:
        """``(params, x, y) -> (loss, output)`` of the model for ``task_type`` tasks (default: the one read at
        ``setup``, else classification): what the functional inner loop differentiates."""
        task_type = task_type or self._score_task_type()
        hook = (lambda k: set_norm_step(self.model, k)) if self.hparams.batch_norm == "per_step" else None
        return TaskLoss(self.model, self.loss_fn(task_type), hook)

    def theta(self, detach: bool = False) -> Params:
        """The trainable tensors by name (``detach=True``: fresh leaves, for evaluation); a frozen one is left to
        the module (a constant of every forward)."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        return {n: p.detach().requires_grad_() for n, p in params.items()} if detach else params

    def nonfinite_message(self, bad_ranks: list[int], finite_here: bool, inner: Tensor, outer: Tensor) -> str:
        """Names the inner step and task of the first non-finite support loss (or the query loss's task), the rank,
        and what to lower."""
        if finite_here:
            where = f"rank(s) {bad_ranks} (this rank, {self.global_rank}, was finite)"
        else:
            bad = (~torch.isfinite(inner)).nonzero()
            where = (f"inner step {int(bad[0, 1])} of task {int(bad[0, 0])}" if len(bad)
                     else f"the query loss of task {int((~torch.isfinite(outer)).nonzero()[0, 0])}")
            where += f" on rank {self.global_rank}" if self._world_size() > 1 else ""
        scale = self._loss_scale()
        hint = (f"; under inner_loss_scale {scale:g} a float16 inner gradient above {65504 / scale:g} overflows: "
                "pass a smaller inner_loss_scale (1.0 turns it off)") if scale != 1.0 else ""
        return (f"{self.algorithm}: non-finite loss at {where} (global step {self.global_step}); lower inner_lr "
                f"(now {self.hparams.inner_lr}) or the optimizer's lr, or set nonfinite='skip'{hint}")

    # ------------------------------------------------------------ the hooks
    def evaluate(self, batch: TaskBatch, at: Iterable[int] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """``{k: (query losses [T], query outputs [T, M, ...])}`` after ``k`` inner steps, for ``k`` in ``at``
        (default ``0..eval_inner_steps``), adapting each task with ``make_inner_optimizer()``, without an outer
        graph."""
        batch, task_type = self.prepare_batch(batch)
        at = set(range(self.eval_inner_steps + 1)) if at is None else set(at)
        with grad_enabled():
            return query_trajectory(self.task_loss(task_type), self.theta(detach=True), usable(batch), None,
                                    self.eval_inner_steps, at=at, optimizer=self.make_inner_optimizer())

    def make_inner_optimizer(self) -> InnerOptimizer:
        """The inner optimizer (a value: ``init``/``step``) that adapts a task in evaluation, ``adapted_params`` and
        ``adapt``: here SGD at the inner learning rates on ``adapted``; Reptile and iMAML return theirs."""
        adapted, lrs = self._adapted_and_lrs()
        return InnerSGD(adapted, lrs.detach(), loss_scale=self._loss_scale())

    def adapted_params(self, support_x: Tensor, support_y: Tensor, steps: int | None = None,
                       task_type: str | None = None) -> Params:
        """The adapted parameters ``phi`` for one task's support set (no outer graph): every trainable tensor (a frozen
        one stays the module's, which ``forward(x, phi)`` uses)."""
        steps = self.eval_inner_steps if steps is None else steps
        task_loss = self.task_loss(task_type or self.task_type_of(support_y))
        with grad_enabled():
            x, y = self._image_layout(usable(support_x)), usable(support_y)
            phi, _ = unroll(self.make_inner_optimizer(), task_loss, self.theta(detach=True), x, y, steps).final()
        return {n: p.detach() for n, p in phi.items()}

    def adapted_core(self, support_x: Tensor, support_y: Tensor, task_type: str, steps: int | None,
                     classes: list | None) -> nn.Module:
        """The model with ``phi`` (``steps`` inner steps on the support set, default ``eval_inner_steps``) as its
        parameters; the head must have one output per class of the support set."""
        self._check_adapt_targets(support_x, support_y, task_type, classes)
        steps = self.eval_inner_steps if steps is None else steps
        phi = self.adapted_params(support_x, support_y, steps, task_type)
        hook = (lambda model: set_norm_step(model, steps)) if self.hparams.batch_norm == "per_step" else None
        return ParametrizedNetwork(self.model, phi, hook)

    def _check_adapt_targets(self, x: Tensor, y: Tensor, task_type: str, classes: list | None) -> None:
        with torch.no_grad():
            width = self.model(self._image_layout(x)).shape[1:]
        if task_type == "classification" and width != (len(classes),):
            raise ValueError(
                f"{self.algorithm}: the support set has {len(classes)} classes {classes[:10]}, but the model's head "
                f"outputs {tuple(width)} scores per example: adapt needs a support set of exactly "
                f"{width[-1] if len(width) == 1 else '?'} classes, or a learner trained with a {len(classes)}-way head")
        if task_type == "regression" and width != y.shape[1:]:
            raise ValueError(f"{self.algorithm}: the model predicts {tuple(width)} per example, but the support "
                             f"targets are {tuple(y.shape[1:])} per example")

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """The backbone's output with ``params`` (e.g. from ``adapted_params``), or with ``theta``."""
        x = self._image_layout(x)
        return self.model(x) if params is None else functional_call(self.model, params, (x,))

    def _image_layout(self, x: Tensor) -> Tensor:
        """One task's images ``[M, C, H, W]`` in channels-last strides, if enabled."""
        return channels_last_tasks(x[None])[0] if self.channels_last and x.dim() == 4 else x


def _check_inner_loop_args(inner_lr, inner_steps, eval_inner_steps, inner_loss_scale) -> None:
    check_number("inner_lr", inner_lr)
    check_positive("inner_steps", inner_steps)
    if eval_inner_steps is not None:
        check_positive("eval_inner_steps", eval_inner_steps, 0)
    if inner_loss_scale is not None:
        check_number("inner_loss_scale", inner_loss_scale)


def _current_name(name: str, params: dict[str, Tensor]) -> str:
    """``name``, or the tensor that holds it now: torch's pruning (Lightning's ``ModelPruning``) moves a parameter
    ``w`` to ``w_orig``, ``torch.nn.utils.parametrize`` to ``parametrizations.w.original``."""
    if name in params:
        return name
    module, _, leaf = name.rpartition(".")
    prefix = f"{module}." if module else ""
    for alias in (f"{name}_orig", f"{prefix}parametrizations.{leaf}.original"):
        if alias in params:
            return alias
    raise KeyError(f"the model has no parameter {name!r} any more (nor a pruned or parametrized one in its place)")
