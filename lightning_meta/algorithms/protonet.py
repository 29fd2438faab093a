"""Prototypical Networks as a LightningModule: an embedding network and the prototype classifier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import LRSchedulerCallable, MetaLearner, OptimizerCallable, check_no_inner_steps
from lightning_meta.algorithms.trainer_tools import body_of
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.layout import channels_last_batch, channels_last_tasks
from lightning_meta.functional.meta_batch import MetaObjective
from lightning_meta.functional.protonet import class_prototypes, prototypical_logits
from lightning_meta.models.adapted import PrototypeClassifier
from lightning_meta.models.spec import build_module


class ProtoNet(MetaLearner):
    """Prototypical Networks (Snell et al., 2017): ``c_k`` is the mean embedding of class ``k``'s support
    examples, and a query's logits are ``-||f(x) - c_k||^2``; trained by cross-entropy on the queries. No inner
    loop: adapting to a task is computing its prototypes.

    Classification only: regression tasks are refused with a clear error. Any number of ways and shots works,
    and training may use more ways than evaluation (the paper trains Omniglot 5-way models on 60-way tasks:
    ``train_ways`` on the task source). The math is
    [prototypical_logits][lightning_meta.functional.prototypical_logits].

    ``nonfinite``, ``optimizer``, ``lr_scheduler`` and ``lr_scheduler_interval`` are every learner's options
    ([MetaLearner][lightning_meta.MetaLearner]); the paper halves the lr every 2000 episodes:
    ``lr_scheduler=partial(StepLR, step_size=2000, gamma=0.5)`` with ``lr_scheduler_interval="step"``.

    Args:
        encoder: the embedding network ``f``, e.g. ``Conv4(embed_only=True)``; its output is flattened to
            ``[examples, D]``.
        channels_last: image inputs and conv weights in channels-last memory order.
        task_type: ``"auto"`` or ``"classification"`` (``"regression"`` is refused).

    Examples:
        >>> import torch
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.models import Conv4
        >>> model = ProtoNet(Conv4(embed_only=True, hidden=8))
        >>> batch = TaskBatch(torch.rand(2, 5, 1, 28, 28), torch.arange(5).repeat(2, 1),
        ...                   torch.rand(2, 10, 1, 28, 28), torch.arange(5).repeat(2, 2))
        >>> model.objective(batch).query_outputs.shape  # logits of 10 queries over 5 prototypes, per task
        torch.Size([2, 10, 5])
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        channels_last: bool = True,
        nonfinite: Literal["raise", "skip"] = "raise",
        task_type: Literal["auto", "classification"] = "auto",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        if task_type == "regression":
            raise ValueError(_REGRESSION)
        super().__init__(nonfinite=nonfinite, task_type=task_type, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         lr_scheduler_interval=lr_scheduler_interval)
        encoder = build_module(encoder, "encoder", self.algorithm)
        self.save_hyperparameters(ignore=["encoder", "optimizer", "lr_scheduler"])
        self.record_backbone("encoder", encoder)
        self.encoder, self.channels_last = encoder, channels_last
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)

    def layout(self, batch: TaskBatch) -> TaskBatch:
        return channels_last_batch(batch) if self.channels_last else batch

    def default_backbone(self) -> nn.Module:
        """The encoder without its last block (``body_of``: e.g. the first three conv blocks of
        ``Conv4(embed_only=True)``): what Lightning's ``BackboneFinetuning`` freezes; the last block keeps training
        (the encoder is the whole model: frozen whole, nothing would train)."""
        return body_of(self.encoder)

    def check_output_width(self, batch: TaskBatch, task_type: str) -> None:
        if task_type != "classification":
            raise ValueError(_REGRESSION)

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``[T, M, D]`` of inputs ``[T, M, ...]``, one encoder call per task: a task's embeddings (and
        its BatchNorm batch statistics in training) do not depend on the other tasks of the meta-batch."""
        return torch.stack([self.encoder(task).flatten(1) for task in x])

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[T, Q, ways]``; ``ways`` is read from the support labels ``0..ways-1``."""
        ways = int(batch.support_y.max()) + 1
        s = batch.support_x.shape[1]
        embeddings = self.embed(torch.cat([batch.support_x, batch.query_x], 1))
        return prototypical_logits(embeddings[:, :s], batch.support_y, embeddings[:, s:], ways)

    def objective(self, batch: TaskBatch) -> MetaObjective:
        """Like [MAML.objective][lightning_meta.MAML.objective]: ``loss.backward()`` is the training gradient;
        ``query_outputs`` are the logits; no inner loop (``inner_losses`` is ``[T, 0]``)."""
        batch, _ = self.prepare_batch(batch)
        logits = self.logits(batch)
        wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 up, float64 kept
        losses = F.cross_entropy(wide.flatten(0, 1), batch.query_y.flatten(), reduction="none")
        return MetaObjective.without_inner_loop(losses.view(batch.query_y.shape).mean(1), logits)

    def evaluate(self, batch: TaskBatch, at: Iterable[int] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """``{0: (query losses [T], query logits [T, Q, ways])}``: no inner loop, adapting is computing the
        prototypes."""
        check_no_inner_steps(self.algorithm, at)
        objective = self.objective(batch)
        return {0: (objective.query_losses, objective.query_outputs)}

    def adapted_core(self, support_x: Tensor, support_y: Tensor, task_type: str, steps: int | None,
                     classes: list | None) -> nn.Module:
        """The encoder with the prototypes of the support set's classes (any number of ways)."""
        if task_type != "classification":
            raise ValueError(_REGRESSION)
        check_no_inner_steps(self.algorithm, None if not steps else {steps})
        with torch.no_grad():
            x = support_x[None]
            embeddings = self.embed(channels_last_tasks(x) if self.channels_last and x.dim() == 5 else x)
            prototypes = class_prototypes(embeddings, support_y[None], len(classes))[0]
        return PrototypeClassifier(self.encoder, prototypes)


_REGRESSION = ("ProtoNet classifies: regression tasks (float targets, e.g. SinusoidTasks) have no classes to "
               "average into prototypes; use MAML or BlackBoxAdaptation for regression")
