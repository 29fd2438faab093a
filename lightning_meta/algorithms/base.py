"""Shared machinery of the meta-learners: task type, losses, episode metrics, logging, optimizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_meta._lightning import pl, submodule
from lightning_meta.algorithms.trainer_tools import optimizer_lr, with_lr
from lightning_meta.checkpoints import (
    peek_checkpoint,
    readable_checkpoint,
    recorded_learner,
    report_unreadable_checkpoints,
)
from lightning_meta.checks import check_choice, check_factory, check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.sources import TaskType
from lightning_meta.data.workers import check_spawned_process
from lightning_meta.distributed import settle_process_group
from lightning_meta.functional.meta_batch import MetaObjective
from lightning_meta.metrics import AdaptationCurve, EpisodeMeanCI, episode_accuracy, episode_mse
from lightning_meta.models.adapted import AdaptedLearner, encode_classes
from lightning_meta.models.spec import (
    build_callable,
    build_module_error,
    callable_spec,
    import_class,
    is_plain,
    module_spec,
)

EVAL_STAGES = ("val", "test")
EVAL_METRICS = ("loss", "score", "pre_loss", "pre_score")
DEFAULT_LR = 1e-3  # of the default optimizer, Adam

#: ``load_from_checkpoint`` stays a classmethod that refuses to be called on an instance, as Lightning's is
_restricted_classmethod = getattr(submodule("utilities.model_helpers"), "_restricted_classmethod", classmethod)

#: ``params -> Optimizer``, the type LightningCLI's ``OptimizerCallable`` names (configurable by ``class_path``).
OptimizerCallable = Callable[[Iterable], Optimizer]
#: ``optimizer -> LR scheduler``, the type LightningCLI's ``LRSchedulerCallable`` names.
LRSchedulerCallable = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]


class MetaLearner(pl.LightningModule):
    """The one learner contract: every learner ([MAML][lightning_meta.MAML], [IMAML][lightning_meta.IMAML],
    [Reptile][lightning_meta.Reptile], [ProtoNet][lightning_meta.ProtoNet],
    [BlackBoxAdaptation][lightning_meta.BlackBoxAdaptation]) defines two hooks, and this base owns the rest.

    * ``objective(batch) -> MetaObjective``: the training objective of a meta-batch, whose ``loss.backward()`` is
      the meta-gradient, with detached ``query_losses [T]``, ``query_outputs [T, M, ...]`` and ``inner_losses
      [T, steps]`` (``[T, 0]`` without an inner loop).
    * ``evaluate(batch, at) -> {k: (query losses [T], query outputs [T, M, ...])}``: evaluation after ``k``
      adaptation steps for each ``k`` in ``at`` (default ``0..eval_steps``), without an outer graph; a learner
      with no inner loop answers ``{0: ...}``.

    The base writes ``training_step`` (logging, the ``nonfinite`` policy, the accumulation-window rule),
    ``validation_step``, ``test_step``, ``predict_step``, the adaptation curve, the episode metrics with their
    95% confidence intervals, the optimizer and Lightning's tools (LR finder, ``BackboneFinetuning``).

    Logged keys: ``train/loss`` and ``train/acc`` (classification) or ``train/mse`` (regression);
    ``val/...`` and ``test/...`` with ``loss``, ``acc``/``mse`` and their ``_ci95`` half-widths, aggregated
    over all episodes (synced across DDP ranks), plus ``pre_`` variants where the learner has a
    pre-adaptation prediction.

    The outer-loop (meta) optimizer is injected, Lightning's dependency-injection way: ``optimizer`` is a
    callable ``params -> Optimizer`` (default: Adam, lr 1e-3), ``lr_scheduler`` an optional callable
    ``optimizer -> scheduler``, stepped every ``lr_scheduler_interval`` (a ``ReduceLROnPlateau`` monitors
    ``val/loss``). In Python pass e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``; in a LightningCLI config
    they are ``model.init_args.optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}``, the only place
    the optimizer is set (the CLI has no top-level ``optimizer:`` block).

    Args:
        nonfinite: ``"raise"`` stops naming the step (and, with an inner loop, the task) of a non-finite loss;
            ``"skip"`` skips the meta-batch (under DDP every rank skips or raises together).
        task_type: ``"auto"`` (the DataModule's task source says; without one, float targets regress and
            integer labels classify), or either explicitly.
        optimizer: the outer-loop optimizer, a callable ``params -> Optimizer`` (default Adam, lr 1e-3).
        lr_scheduler: an optional callable ``optimizer -> LR scheduler``.
        lr_scheduler_interval: step the scheduler every ``"epoch"`` or ``"step"``.

    Examples:
        A regression baseline that predicts 0 for every query, trained, logged and evaluated like any learner:

        >>> import torch
        >>> from lightning_meta import SinusoidTasks
        >>> from lightning_meta.functional import MetaObjective
        >>> class Zero(MetaLearner):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.bias = torch.nn.Parameter(torch.zeros(1))
        ...     def objective(self, batch):
        ...         batch, _ = self.prepare_batch(batch)
        ...         outputs = self.bias.expand_as(batch.query_y)
        ...         losses = (outputs - batch.query_y).pow(2).flatten(1).mean(1)
        ...         return MetaObjective.without_inner_loop(losses, outputs)
        ...     def evaluate(self, batch, at=None):
        ...         objective = self.objective(batch)
        ...         return {0: (objective.query_losses, objective.query_outputs)}
        >>> batch = SinusoidTasks().sample("train", [torch.Generator().manual_seed(i) for i in range(2)])
        >>> Zero().evaluate(batch)[0][0].shape
        torch.Size([2])
    """

    #: adaptation steps evaluation reports (``InnerLoopLearner``: ``eval_inner_steps``); 0 without an inner loop
    eval_steps: int = 0
    #: also log ``pre_`` metrics (before adaptation); learners with an inner loop have the option
    pre_adaptation_metrics: bool = False
    #: record the query loss and score after every adaptation step (``adaptation_curves``)
    adaptation_curve: bool = False

    def __init__(
        self,
        *,
        nonfinite: Literal["raise", "skip"] = "raise",
        task_type: Literal["auto"] | TaskType = "auto",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__()
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        check_choice("task_type", task_type, ("auto", "classification", "regression"))
        check_factory("optimizer", optimizer, "functools.partial(torch.optim.Adam, lr=1e-3)")
        check_factory("lr_scheduler", lr_scheduler, "functools.partial(torch.optim.lr_scheduler.StepLR, step_size=100)")
        check_choice("lr_scheduler_interval", lr_scheduler_interval, ("epoch", "step"))
        self.task_type, self.nonfinite = task_type, nonfinite
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.curve_metrics = nn.ModuleDict()  # stage -> AdaptationCurve, created at the first curve update
        #: the last validation / test adaptation curve: ``{"val": {"step", "loss", "score", "score_name"}}``
        self.adaptation_curves: dict[str, dict] = {}
        #: the task type read once at ``setup`` (configured, else the DataModule's), or from the first batch
        self._data_task_type: str | None = None
        self._window_contributed = False  # a meta-batch since the last optimizer step had a finite loss
        self._checked_shapes: tuple = ()  # batch shapes the output width was last checked against
        #: what adapting to a new task needs, recorded in the checkpoint: task type, ways/shots/queries, the image
        #: preprocessing (from the DataModule's task source at ``setup``, else the first batch's shapes)
        self.task_info: dict[str, Any] = {}
        #: the LightningCLI run's ``data`` config (plain data), recorded so ``lightning-meta test --ckpt_path`` alone
        #: rebuilds the data
        self.run_config: dict[str, Any] | None = None
        self.episode_metrics = nn.ModuleDict(
            {f"{stage}_{name}": EpisodeMeanCI() for stage in EVAL_STAGES for name in EVAL_METRICS}
        )

    # ------------------------------------------------------------ checkpoints
    def setup(self, stage: str) -> None:
        """Runs before the Trainer loads ``ckpt_path``: a file there that is not a PyTorch checkpoint is then reported
        as such, naming it ([ReadableCheckpointIO][lightning_meta.checkpoints.ReadableCheckpointIO]); subclasses that
        override ``setup`` call ``super().setup(stage)``."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            report_unreadable_checkpoints(trainer.strategy)
        self._data_task_type = self._read_task_type(trainer)
        source = getattr(getattr(trainer, "datamodule", None), "tasks", None)
        if stage == "fit" and callable(getattr(source, "describe", None)):
            self.task_info = source.describe()

    def _read_task_type(self, trainer) -> str | None:
        """The task type, read once: configured, else the attached DataModule's (its task source's); ``None`` leaves
        it to the first batch."""
        if self.task_type != "auto":
            return self.task_type
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        found = getattr(datamodule, "task_type", None)
        return found if found in ("classification", "regression") else None

    @_restricted_classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, with no arguments needed: the backbone, the outer optimizer and what
        adaptation needs (``task_info``) come from the checkpoint. Called on ``MetaLearner`` it loads whichever
        learner the checkpoint holds; called on another learner than the checkpoint's, it is a ``ValueError`` naming
        both. A file that is not a PyTorch checkpoint raises an
        [UnreadableCheckpointError][lightning_meta.checkpoints.UnreadableCheckpointError] (a ``ValueError``)
        naming it, chained from torch's error."""
        with readable_checkpoint(checkpoint_path):
            target = _checkpoint_learner(cls, checkpoint_path)
            if target is MetaLearner:
                raise ValueError(f"{checkpoint_path} does not record which learner it holds (written before "
                                 "lightning-meta recorded it): load it with that learner's class, e.g. "
                                 "MAML.load_from_checkpoint(path)")
            if target is not cls:
                return target.load_from_checkpoint(checkpoint_path, *args, **kwargs)
            try:
                return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
            except TypeError as error:
                missing = next((n for n in ("model", "encoder") if f"argument: '{n}'" in str(error)), None)
                if missing is None or missing in kwargs:
                    raise
                raise build_module_error(cls.__name__, missing) from error

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records, as plain data under ``checkpoint["lightning_meta"]``: the learner's class, ``task_info``, the
        outer optimizer and scheduler (class path and arguments, where they can be captured) and the CLI's data
        config (subclasses call ``super()``)."""
        cls = type(self)
        checkpoint["lightning_meta"] = {
            "learner": f"{cls.__module__}.{cls.__qualname__}", "task": dict(self.task_info),
            "optimizer": callable_spec(self.optimizer_factory),
            "lr_scheduler": callable_spec(self.lr_scheduler_factory),
            "data": self.run_config,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores ``task_info`` and, where none was given, the recorded outer optimizer and scheduler, so that a
        learner loaded with ``load_from_checkpoint`` resumes (``ckpt_path``) with the optimizer it was trained
        with (subclasses call ``super()``)."""
        record = checkpoint.get("lightning_meta") or {}
        self.task_info = dict(record.get("task") or self.task_info)
        self.run_config = record.get("data") or self.run_config
        if self.optimizer_factory is None and record.get("optimizer"):
            self.optimizer_factory = build_callable(record["optimizer"], "optimizer")
        if self.lr_scheduler_factory is None and record.get("lr_scheduler"):
            self.lr_scheduler_factory = build_callable(record["lr_scheduler"], "lr_scheduler")

    def record_backbone(self, name: str, module: nn.Module) -> None:
        """Record ``module`` (the ``model``/``encoder`` argument) in the hyper-parameters as plain data
        ([module_spec][lightning_meta.models.spec.module_spec]), so ``load_from_checkpoint(path)`` rebuilds it; a
        module built by LightningCLI from a config is recorded as its config gives it (any class with plain-data
        arguments); a module whose arguments are unknown is left out (loading then needs ``name=``, and says so)."""
        spec = module_spec(module) or _cli_given_spec(name, module)
        if spec is not None:
            self.hparams[name] = spec

    # --------------------------------------------------------------- task type
    def prepare_batch(self, batch: TaskBatch) -> tuple[TaskBatch, str]:
        """Every step's first call: ``(batch in the learner's memory layout, its task type)``.

        Checks the batch (every step) and the model's output width against it (on the first batch of each new
        shape), so bad input fails here, naming the shapes, not deep in torch; then applies ``layout``.
        """
        batch.check()
        task_type = self.task_type_of(batch.support_y)
        if self._data_task_type is None and getattr(self, "_trainer", None) is not None:
            self._data_task_type = task_type  # no DataModule said: the first batch of a Trainer run does
        shapes = (task_type, *(tuple(t.shape) for t in batch))
        if shapes != self._checked_shapes:
            self.check_output_width(batch, task_type)
            self._checked_shapes = shapes
        return self.layout(batch), task_type

    def layout(self, batch: TaskBatch) -> TaskBatch:
        """The memory layout the learner computes in (subclasses; e.g. channels-last images)."""
        return batch

    def check_output_width(self, batch: TaskBatch, task_type: str) -> None:  # noqa: B027 - optional hook
        """Raise a ``ValueError`` if the learner's output cannot fit ``batch``'s targets (subclasses)."""

    def task_type_of(self, support_y: Tensor) -> str:
        """The configured ``task_type``, else the one read at ``setup``, else (direct calls under ``"auto"``): float
        targets regress, integer labels classify."""
        if self.task_type != "auto":
            return self.task_type
        if self._data_task_type is not None:
            return self._data_task_type
        return "regression" if support_y.is_floating_point() else "classification"

    def loss_fn(self, task_type: str):
        return F.cross_entropy if task_type == "classification" else F.mse_loss

    @staticmethod
    def score_name(task_type: str) -> str:
        return "acc" if task_type == "classification" else "mse"

    def episode_score(self, task_type: str, output: Tensor, target: Tensor) -> Tensor:
        """Per-episode accuracy or MSE, ``[T]``."""
        if task_type == "classification":
            return episode_accuracy(output, target)
        return episode_mse(output, target)

    # ----------------------------------------------------------------- logging
    def log_train(self, task_type: str, loss: Tensor, score: Tensor, batch_size: int) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log(f"train/{self.score_name(task_type)}", score.mean(), prog_bar=True, batch_size=batch_size)

    def update_eval(self, stage: str, name: str, values: Tensor) -> None:
        self.episode_metrics[f"{stage}_{name}"].update(values)

    def update_curve(self, stage: str, losses: list[Tensor], scores: list[Tensor]) -> None:
        """Accumulate per-episode query losses / scores after 0..K inner steps (lists of ``[T]`` tensors)."""
        metric = self.curve_metrics[stage] if stage in self.curve_metrics else None  # noqa: SIM401 (ModuleDict)
        if metric is None or metric.steps != len(losses) - 1:
            with torch.inference_mode(False):  # states must outlive Lightning's inference-mode evaluation
                metric = self.curve_metrics[stage] = AdaptationCurve(len(losses) - 1).to(self.device)
        metric.update(torch.stack(losses), torch.stack(scores))

    def _finish_curve(self, stage: str) -> None:
        if stage not in self.curve_metrics or not self.curve_metrics[stage].update_called:
            return
        metric = self.curve_metrics[stage]
        result = {k: v.float().cpu() for k, v in metric.compute().items()}  # synced over DDP ranks
        metric.reset()
        self.adaptation_curves[stage] = {"step": list(range(metric.steps + 1)), "loss": result["loss"].tolist(),
                                         "score": result["score"].tolist(),
                                         "score_name": self.score_name(self._score_task_type())}

    def _score_task_type(self) -> str:
        """The task type that names the score metric (``acc`` or ``mse``) at epoch end."""
        return self._data_task_type or (self.task_type if self.task_type != "auto" else "classification")

    # -------------------------------------------------------------- DDP ranks
    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _ranks_where(self, flag: bool) -> list[int]:
        """The ranks on which ``flag`` holds (all-gathered under several processes)."""
        if self._world_size() == 1:
            return [0] if flag else []
        flags = self.all_gather(torch.tensor(int(flag), device=self.device))
        return flags.flatten().nonzero().flatten().tolist()

    @property
    def algorithm(self) -> str:
        """The package's learner this is (``"MAML"`` also for a user's ``MAML`` subclass): messages name it."""
        for cls in type(self).__mro__:
            if cls.__module__.startswith("lightning_meta.algorithms"):
                return cls.__name__
        return type(self).__name__

    # ------------------------------------------------------------ non-finite
    def check_finite(self, objective: MetaObjective) -> bool:
        """``True`` if ``objective``'s losses are finite on every rank; else raise (``nonfinite="raise"``) or
        ``False`` (``"skip"``). Under DDP the ranks agree first (one all-gather of a flag), so every rank skips the
        same step or every rank raises: none is left waiting in the gradient all-reduce."""
        inner, outer = objective.inner_losses, objective.query_losses
        finite = bool(torch.isfinite(outer).all() & torch.isfinite(inner).all())
        bad_ranks = self._ranks_where(not finite)
        if not bad_ranks:
            return True
        if self.nonfinite == "skip":
            return False
        raise FloatingPointError(self.nonfinite_message(bad_ranks, finite, inner, outer))

    def nonfinite_message(self, bad_ranks: list[int], finite_here: bool, inner: Tensor, outer: Tensor) -> str:
        """What ``nonfinite="raise"`` says (learners with an inner loop name the task and step)."""
        where = f" on rank(s) {bad_ranks}" if self._world_size() > 1 else ""
        return (f"{self.algorithm}: non-finite loss{where} at global step {self.global_step}; lower the optimizer's "
                "lr or set nonfinite='skip'")

    def _zero_loss(self) -> Tensor:
        """A skipped meta-batch's loss: zero gradient on every parameter, so DDP's all-reduce still runs."""
        return sum((p * 0).sum() for p in self.parameters() if p.requires_grad)

    def _eval_epoch_end(self, stage: str) -> None:
        self._finish_curve(stage)
        score = self.score_name(self._score_task_type())
        for name in EVAL_METRICS:
            metric = self.episode_metrics[f"{stage}_{name}"]
            if not metric.update_called:
                continue
            result = metric.compute()
            key = name.replace("score", score)
            self.log(f"{stage}/{key}", result["mean"].float(), sync_dist=True, prog_bar=name == "score")
            self.log(f"{stage}/{key}_ci95", result["ci95"].float(), sync_dist=True)
            metric.reset()

    # ------------------------------------------------------------- the hooks
    def objective(self, batch: TaskBatch) -> MetaObjective:
        """The training objective of ``batch`` without logging or non-finite checks: ``loss.backward()`` is the
        gradient ``training_step`` takes (each learner defines it)."""
        raise NotImplementedError

    def evaluate(self, batch: TaskBatch, at: Iterable[int] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """``{k: (query losses [T], query outputs [T, M, ...])}`` after ``k`` adaptation steps, for ``k`` in ``at``
        (default ``0..eval_steps``), without an outer graph (each learner defines it)."""
        raise NotImplementedError

    def query_trajectory(self, batch: TaskBatch, at: Iterable[int] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
        """The former name of [evaluate][lightning_meta.MetaLearner.evaluate] (kept as an alias)."""
        return self.evaluate(batch, at)

    def eval_points(self) -> set[int]:
        """The adaptation steps a validation/test step evaluates: ``eval_steps``, plus 0 with
        ``pre_adaptation_metrics``, or every step with ``adaptation_curve``."""
        steps = self.eval_steps
        if self.adaptation_curve:
            return set(range(steps + 1))
        return {0, steps} if self.pre_adaptation_metrics else {steps}

    # ----------------------------------------------------------------- steps
    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        if batch.query_y is None:
            raise ValueError(f"{self.algorithm}: training needs query labels (query_y is None)")
        objective = self.objective(batch)
        if not self.check_finite(objective):
            return self._zero_loss()
        self._window_contributed = True
        task_type = self.task_type_of(batch.support_y)
        score = self.episode_score(task_type, objective.query_outputs, batch.query_y)
        self.log_train(task_type, objective.query_losses.mean(), score, batch.num_tasks)
        return objective.loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, except that an accumulation window of only skipped meta-batches takes none."""
        if self.nonfinite != "skip" or optimizer_closure is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        result = optimizer_closure()
        contributed, self._window_contributed = self._window_contributed, False
        if contributed:
            super().optimizer_step(epoch, batch_idx, optimizer, lambda: result)

    def _eval_step(self, batch: TaskBatch, stage: str) -> None:
        """Query metrics after ``eval_steps`` (and 0: pre-adaptation), or after every step for the curve."""
        if batch.query_y is None:
            raise ValueError(f"{self.algorithm}: {stage} needs query labels (query_y is None); predict (predict_step, "
                             "trainer.predict, lightning-meta predict) takes tasks without them")
        steps, points = self.eval_steps, self.evaluate(batch, self.eval_points())
        task_type = self.task_type_of(batch.support_y)
        curve = {k: (loss, self.episode_score(task_type, out, batch.query_y)) for k, (loss, out) in points.items()}
        self.update_eval(stage, "loss", curve[steps][0])
        self.update_eval(stage, "score", curve[steps][1])
        if self.pre_adaptation_metrics and 0 in curve:
            self.update_eval(stage, "pre_loss", curve[0][0])
            self.update_eval(stage, "pre_score", curve[0][1])
        if self.adaptation_curve:
            self.update_curve(stage, [curve[k][0] for k in range(steps + 1)], [curve[k][1] for k in range(steps + 1)])

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        """Query predictions ``[T, M, ...]`` after ``eval_steps`` of adaptation: logits (classification) or the
        regression prediction."""
        if batch.query_y is None:  # unlabeled queries: the losses are not wanted, and no output depends on labels
            batch = batch.with_placeholder_targets()
        return self.evaluate(batch, {self.eval_steps})[self.eval_steps][1]

    # ------------------------------------------------------ a new task
    def adapt(self, support_x: Tensor, support_y: Tensor | Sequence[Any], steps: int | None = None) -> AdaptedLearner:
        """Adapt to one new task's labeled examples: an [AdaptedLearner][lightning_meta.AdaptedLearner], a frozen
        ``nn.Module`` in evaluation mode whose ``forward(query_x)`` equals what ``predict_step`` gives for a task with
        this support set (class scores ``[M, ways]``, or the regression prediction).

        ``support_x`` is ``[S, ...]``, prepared as the training inputs were (images: ``task_info["preprocessing"]``,
        [ImagePreprocessing][lightning_meta.data.preprocessing.ImagePreprocessing]); ``support_y`` holds one label per
        example, any hashable class names (kept in ``adapted.classes``, sorted) or integers, or regression targets
        ``[S, d]`` (a float tensor). ``steps`` is the number of inner steps (default ``eval_steps``; 0 or ``None``
        for learners without an inner loop). The learner itself is unchanged and left in the mode it was in.

        Examples:
            >>> import torch
            >>> from lightning_meta import ProtoNet
            >>> from lightning_meta.models import Conv4
            >>> learner = ProtoNet(Conv4(embed_only=True, hidden=8, image_size=16))
            >>> adapted = learner.adapt(torch.rand(4, 1, 16, 16), ["cat", "cat", "dog", "dog"])
            >>> adapted.classes, adapted(torch.rand(3, 1, 16, 16)).shape
            (['cat', 'dog'], torch.Size([3, 2]))
        """
        task_type = self._adaptation_task_type(support_y)
        x = torch.as_tensor(support_x, device=self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        if task_type == "classification":
            y, classes = encode_classes(support_y)
        else:
            y, classes = torch.as_tensor(support_y, dtype=x.dtype), None
            y = y[:, None] if y.dim() == 1 else y
        if x.dim() < 2 or len(x) != len(y):
            raise ValueError(f"{self.algorithm}.adapt: support_x {tuple(x.shape)} needs one row per label, and there "
                             f"are {len(y)} labels")
        if steps is not None:
            check_positive("steps", steps, 0)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(False):
                core = self.adapted_core(x, y.to(self.device), task_type, steps, classes)
        finally:
            self.train(was_training)
        return AdaptedLearner(core, classes=classes, task_type=task_type,
                              preprocessing=self.task_info.get("preprocessing"))

    def _adaptation_task_type(self, support_y: Any) -> str:
        """Configured, else recorded at training, else float targets regress and labels classify."""
        if self.task_type != "auto":
            return self.task_type
        known = self._data_task_type or self.task_info.get("task_type")
        if known in ("classification", "regression"):
            return known
        return "regression" if isinstance(support_y, Tensor) and support_y.is_floating_point() else "classification"

    def adapted_core(self, support_x: Tensor, support_y: Tensor, task_type: str, steps: int | None,
                     classes: list | None) -> nn.Module:
        """The module ``adapt`` wraps: query inputs ``[M, ...]`` to outputs for this task (each learner defines it;
        called in evaluation mode; ``support_y`` holds class indices ``0..ways-1`` or targets ``[S, d]``)."""
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def teardown(self, stage: str) -> None:
        """After a successful Trainer call: a barrier across gloo DDP ranks, so that no rank exits while a gloo
        worker thread still holds a finished gradient all-reduce
        ([settle_process_group][lightning_meta.distributed.settle_process_group]; subclasses call ``super()``)."""
        settle_process_group()

    def __getstate__(self) -> dict:
        check_spawned_process(self.algorithm)  # strategy="ddp_spawn" from a script without the __main__ guard
        return super().__getstate__()

    def default_optimizer(self, params: Iterable[Tensor]) -> Optimizer:
        """The optimizer when none is injected: Adam, lr 1e-3 (a learner whose paper says otherwise overrides it)."""
        return torch.optim.Adam(params, lr=DEFAULT_LR)

    # ------------------------------------------------- Lightning's own tools
    @property
    def learning_rate(self) -> float:
        """The outer optimizer's learning rate, read from the injected ``optimizer`` factory (or
        ``default_optimizer``), which stays its one source: setting it (Lightning's LR finder does, with
        ``update_attr=True``) replaces the factory's ``lr`` (a ``functools.partial``'s or a LightningCLI config's
        ``lr`` keyword), so the next ``configure_optimizers`` builds the optimizer with it."""
        return optimizer_lr(self.optimizer_factory or self.default_optimizer)

    @learning_rate.setter
    def learning_rate(self, lr: float) -> None:
        self.optimizer_factory = with_lr(self.optimizer_factory or self.default_optimizer, float(lr))

    @property
    def backbone(self) -> nn.Module:
        """The feature extractor that Lightning's ``BackboneFinetuning`` freezes and later trains at its own learning
        rate: a module registered as ``backbone`` (a subclass may set ``self.backbone = ...``), else the learner's
        default (``default_backbone``)."""
        registered = self._modules.get("backbone")
        return registered if registered is not None else self.default_backbone()

    def default_backbone(self) -> nn.Module:
        """The learner's feature extractor (subclasses); ``AttributeError`` where there is none."""
        raise AttributeError(f"{self.algorithm} has no default backbone; register one as self.backbone")

    def configure_optimizers(self):
        """The injected ``optimizer`` (default: ``default_optimizer``) over the parameters that require grad (a frozen
        one is not updated; ``BackboneFinetuning`` adds it as its own param group when it unfreezes it), and
        ``lr_scheduler``."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{self.algorithm}: every parameter is frozen (requires_grad=False): nothing to train")
        optimizer = (self.optimizer_factory or self.default_optimizer)(params)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def _cli_given_spec(name: str, module: nn.Module) -> dict | None:
    """The ``name`` entry of the config LightningCLI is instantiating this learner from (Lightning's given
    hyper-parameters), if it describes ``module``'s class in plain data; else ``None``."""
    given = getattr(submodule("core.mixins.hparams_mixin"), "_given_hyperparameters", None)
    config = (given.get() or {}).get(name) if given is not None else None
    if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
        return None
    cls = type(module)
    if config["class_path"] not in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        return None
    spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(config.get("init_args") or {})}
    return spec if is_plain(spec) else None


def _checkpoint_learner(cls: type, path: Any) -> type:
    """The learner class recorded in the checkpoint at ``path`` (``cls`` if none is): ``cls`` or a subclass of it,
    else a ``ValueError`` naming both."""
    try:
        checkpoint = peek_checkpoint(path)
    except Exception:  # noqa: BLE001 - not readable here (a remote path, another format): Lightning reports it
        return cls
    class_path = recorded_learner(checkpoint) if isinstance(checkpoint, dict) else None
    if not class_path:
        return cls
    name = class_path.rpartition(".")[2]
    try:
        found = import_class(class_path)
    except (ImportError, AttributeError, ValueError):
        return cls
    if isinstance(found, type) and issubclass(found, cls):
        return found
    if isinstance(found, type) and issubclass(cls, found):
        return cls  # a user's subclass loading its parent's checkpoint
    raise ValueError(f"{path} is a checkpoint of {name}, not of {cls.__name__}: load it with "
                     f"{name}.load_from_checkpoint(path) (or MetaLearner.load_from_checkpoint(path))")


def check_no_inner_steps(algorithm: str, at: Iterable[int] | None) -> None:
    """A learner without an inner loop evaluates at step 0 only: any other step in ``at`` is a ``ValueError``."""
    if at is not None and set(at) - {0}:
        raise ValueError(f"{algorithm} has no inner loop: evaluate(batch, at) takes at={{0}} (or None), got "
                         f"{sorted(set(at))}")
