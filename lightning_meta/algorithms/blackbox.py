"""Black-box adaptation: a network reads the support set into a task vector h_i; a predictor answers queries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_meta.algorithms.base import LRSchedulerCallable, MetaLearner, OptimizerCallable, check_no_inner_steps
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.sources import TaskType
from lightning_meta.functional import MetaObjective
from lightning_meta.functional.blackbox import blackbox_losses
from lightning_meta.models.adapted import SupportReader
from lightning_meta.models.blackbox import AGGREGATORS, Aggregator, BlackBoxNetwork, mlp
from lightning_meta.models.spec import build_module

__all__ = ["AGGREGATORS", "Aggregator", "BlackBoxAdaptation", "mlp"]


class BlackBoxAdaptation(MetaLearner):
    """``phi_i = {h_i, theta_g}``: an encoder reads the support set into a task vector ``h_i``, and a predictor
    ``g(x_query; h_i, theta_g)`` answers the queries. One forward pass per task, no inner gradient steps.

    The network is a [BlackBoxNetwork][lightning_meta.models.BlackBoxNetwork] (``self.network``, a plain
    ``nn.Module`` usable without Lightning), built from ``encoder`` and the options up to ``channels_last``, which
    its page describes: each support pair becomes ``e = pair_net([encoder(x), y])``, and ``aggregator`` chooses how
    ``h_i`` and the query read-out are formed: ``"mean"`` (DeepSets / CNP, with class-conditional scores for
    classification) and ``"attention"`` are invariant to the order of the support set, ``"sequence"`` (a causal
    transformer) and ``"snail"`` (SNAIL, Mishra et al., 2018, its temporal convolutions sized by
    ``support_size``, default ``ways``) are **sensitive to the order**. The learner registers the network's
    modules under their own names (``encoder``, ``pair_net``, ``task_net``, ..., ``predictor``), so parameter
    and ``state_dict`` names are those of the network, and the network loads a learner's ``state_dict``.

    Classification: ``ways`` is the width of the one-hot label input and of the output head. Training
    (``training_step``, ``objective``) needs tasks of exactly ``ways`` ways, and another number is a
    ``ValueError`` at the first batch naming both: a head wider than the tasks would be trained on scores of
    classes that do not exist. Evaluation (validation, test, predict, ``forward``) also accepts tasks with fewer
    ways (the unused logits are masked to ``-inf``, so no prediction names a class the task does not have), as a
    model trained on 20-way tasks is evaluated on 5-way ones; more ways raise a clear error. Any number of shots
    works. Regression: ``y_dim`` target values; with ``predict_variance=True`` the predictor outputs a
    mean and a variance trained by Gaussian NLL as in CNPs, and the reported metric is the MSE of the mean.

    The encoder's output size is ``feature_dim`` or, when omitted, the encoder's ``feature_dim`` attribute
    (``Conv4(embed_only=True)`` has one). ``encoder_tasks`` tasks go through the encoder per pass (``"auto"``:
    one on CPU, the whole meta-batch elsewhere); with a BatchNorm encoder in training mode the pass size is part
    of the model, as the batch size is of any BatchNorm network (one task per pass: a task's features do not
    depend on the other tasks, as in ``MAML`` and ``ProtoNet``). ``channels_last`` copies image inputs to
    channels-last strides per task and converts the encoder's conv weights. ``nonfinite`` and the outer-loop
    optimizer (``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``) are as for every
    [MetaLearner][lightning_meta.MetaLearner].

    Examples:
        >>> import torch
        >>> from lightning_meta.models import MLP
        >>> model = BlackBoxAdaptation(MLP(out_features=32, hidden=(32,)), feature_dim=32, task_dim=16)
        >>> h = model.task_vector(torch.randn(4, 10, 1), torch.randn(4, 10, 1))
        >>> h.shape
        torch.Size([4, 16])
    """

    network: BlackBoxNetwork

    def __init__(
        self,
        encoder: nn.Module,
        *,
        aggregator: Aggregator = "mean",
        task_dim: int = 64,
        hidden: int = 128,
        feature_dim: int | None = None,
        ways: int = 5,
        y_dim: int = 1,
        predict_variance: bool = False,
        heads: int = 4,
        layers: int = 2,
        support_size: int | None = None,
        encoder_tasks: int | Literal["auto", "all"] = "auto",
        channels_last: bool = True,
        nonfinite: Literal["raise", "skip"] = "raise",
        task_type: Literal["auto"] | TaskType = "auto",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__(nonfinite=nonfinite, task_type=task_type, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         lr_scheduler_interval=lr_scheduler_interval)
        encoder = build_module(encoder, "encoder", self.algorithm)
        network = BlackBoxNetwork(
            encoder, aggregator=aggregator, task_dim=task_dim, hidden=hidden, feature_dim=feature_dim, ways=ways,
            y_dim=y_dim, predict_variance=predict_variance, heads=heads, layers=layers, support_size=support_size,
            encoder_tasks=encoder_tasks, channels_last=channels_last,
        )
        # the hyperparameters record the resolved sizes (save_hyperparameters reads this frame's arguments)
        feature_dim, support_size = network.feature_dim, network.support_size
        self.save_hyperparameters(ignore=["encoder", "optimizer", "lr_scheduler"])
        self.record_backbone("encoder", encoder)
        self._attach(network)

    def _attach(self, network: BlackBoxNetwork) -> None:
        """Hold ``network`` and register its modules on the learner under their own names, so parameter and
        ``state_dict`` names stay ``encoder.*``, ``pair_net.*``, ... (the network is the same modules, not a
        registered child: its name would prefix every key)."""
        self.__dict__["network"] = network
        for name, module in network.named_children():
            self.add_module(name, module)

    def train(self, mode: bool = True) -> BlackBoxAdaptation:
        super().train(mode)
        self.network.training = mode  # the modules are shared; keep the network's own flag in step
        return self

    # ------------------------------------------------------------------ model
    @property
    def aggregator(self) -> str:
        return self.network.aggregator

    @property
    def ways(self) -> int:
        return self.network.ways

    @property
    def y_dim(self) -> int:
        return self.network.y_dim

    @property
    def out_dim(self) -> int:
        return self.network.out_dim

    @property
    def predict_variance(self) -> bool:
        return self.network.predict_variance

    @property
    def encoder_tasks(self) -> int | str:
        return self.network.encoder_tasks

    @property
    def channels_last(self) -> bool:
        return self.network.channels_last

    def default_backbone(self) -> nn.Module:
        """The ``encoder``: what Lightning's ``BackboneFinetuning`` freezes (the pair, task and predictor networks
        keep training)."""
        return self.encoder

    def tasks_per_pass(self, tasks: int, device: torch.device) -> int:
        """How many of ``tasks`` tasks one encoder pass reads (see ``encoder_tasks``)."""
        return self.network.tasks_per_pass(tasks, device)

    def task_vector(self, support_x: Tensor, support_y: Tensor, task_type: str | None = None) -> Tensor:
        """``h_i`` ``[T, task_dim]`` of each support set (``support_x [T, S, ...]``, ``support_y [T, S(, d)]``)."""
        return self.network.task_vector(support_x, support_y, task_type or self.task_type_of(support_y))

    def forward(self, batch: TaskBatch) -> Tensor:
        """Raw predictor outputs for the queries, ``[T, Q, out]`` (logits, or mean and variance parameters)."""
        task_type = self.task_type_of(batch.support_y)
        out = self.network(batch.support_x, batch.support_y, batch.query_x, task_type)
        if task_type == "classification":
            self.network.check_ways(batch.query_y)
        return out

    def _check_training_ways(self, batch: TaskBatch, task_type: str) -> None:
        """Training: the tasks' ways must be ``ways`` (a wider head would learn scores of absent classes)."""
        if task_type != "classification":
            return
        ways = int(batch.support_y.max()) + 1
        if ways != self.ways:
            why = (f"{self.ways - ways} of its {self.ways} class scores would be for classes these tasks do not have"
                   if ways < self.ways else f"its {self.ways} class scores cannot answer {ways} classes")
            raise ValueError(
                f"BlackBoxAdaptation(ways={self.ways}) is being trained on {ways}-way tasks (support labels "
                f"0..{ways - 1}), but training needs {self.ways}-way tasks: `ways` is the width of its label input and "
                f"head, and {why}. Build it with ways={ways}, or sample {self.ways}-way tasks (evaluation on tasks "
                f"with fewer ways than `ways` is allowed: the unused logits are masked)"
            )

    def adapted_core(self, support_x: Tensor, support_y: Tensor, task_type: str, steps: int | None,
                     classes: list | None) -> nn.Module:
        """The network with what it read of the support set (up to ``ways`` classes; regression ``y_dim`` targets)."""
        check_no_inner_steps(self.algorithm, None if not steps else {steps})
        with torch.no_grad():
            ways = self.network._check_targets(support_y[None], task_type)
            support = self.network.read_support(self.network.features(support_x[None]), support_y[None], task_type)
        return SupportReader(self.network, support, ways, task_type)

    # ------------------------------------------------------------- objective
    def _predict(self, batch: TaskBatch, task_type: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per-task loss ``[T]``, per-task score ``[T]`` and the point prediction."""
        losses, outputs = blackbox_losses(self(batch), batch.query_y, task_type, self.ways, self.y_dim,
                                          self.predict_variance)
        return losses, self.episode_score(task_type, outputs.detach(), batch.query_y), outputs

    def predictive(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The Gaussian predictive distribution of the queries of a regression ``batch`` (``predict_variance=True``):
        ``(mean, variance)``, each ``[T, Q, y_dim]``. E.g. the 95% interval is ``mean +- 1.96 * variance.sqrt()``."""
        batch, task_type = self.prepare_batch(batch)
        if task_type != "regression" or not self.predict_variance:
            raise ValueError(f"predictive() needs regression tasks and predict_variance=True; got {task_type} tasks "
                             f"and predict_variance={self.predict_variance}")
        return self.network.gaussian(self(batch))  # type: ignore[return-value]

    def objective(self, batch: TaskBatch) -> MetaObjective:
        """The objective of ``batch`` without logging or non-finite checks, in the same type as
        [MAML.objective][lightning_meta.MAML.objective]: ``objective(batch).loss.backward()`` is the gradient
        ``training_step`` takes (no inner loop, so ``inner_losses`` is ``[T, 0]``). Training needs tasks of
        exactly ``ways`` ways."""
        batch, task_type = self.prepare_batch(batch)
        self._check_training_ways(batch, task_type)
        losses, _, outputs = self._predict(batch, task_type)
        return MetaObjective.without_inner_loop(losses, outputs)

    def evaluate(self, batch: TaskBatch, at: Iterable[int] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """``{0: (query losses [T], predictions)}``: logits ``[T, Q, ways]`` (tasks with fewer ways have the
        unused logits masked) or means ``[T, Q, y_dim]``. No inner loop: one forward pass reads the support set."""
        check_no_inner_steps(self.algorithm, at)
        batch, task_type = self.prepare_batch(batch)
        losses, _, outputs = self._predict(batch, task_type)
        return {0: (losses.detach(), outputs.detach())}
