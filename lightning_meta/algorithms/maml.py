"""MAML (Finn et al., 2017) as a LightningModule: second-order, first-order and HVP meta-gradients."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from lightning_meta.algorithms.base import MetaLearner, TaskType, check_choice, check_number
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.functional import Params, TaskLoss, adapt, meta_gradient_hvp
from lightning_meta.models.norm import BatchStatNorm

MetaGradient = Literal["second_order", "first_order", "hvp"]
FP16_INNER_LOSS_SCALE = 2.0**10


def transductive_batch_norm(model: nn.Module, elementary: bool = False) -> list[str]:
    """Make every BatchNorm use batch statistics in every forward and keep no running statistics.

    With ``elementary=True`` each one is replaced by :class:`~lightning_meta.models.BatchStatNorm` (same
    numbers, built from plain ops so that second-order gradients are right under ``vmap``).
    """
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
            if elementary:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, BatchStatNorm.from_batch_norm(module))
            names.append(name)
    return names


def channels_last_tasks(x: Tensor) -> Tensor:
    """A copy of images ``[T, M, C, H, W]`` whose every task slice ``[M, C, H, W]`` has NHWC strides.

    A fresh copy, not ``.contiguous()``: with one channel (Omniglot) a contiguous NCHW tensor already counts
    as channels-last and keeps ``stride(C) = H * W``; convolutions with adapted weights (NCHW strides) then
    produce NCHW outputs, on which BatchNorm and max-pool run several times slower on CPU.

    Example:
        >>> channels_last_tasks(torch.zeros(2, 3, 1, 4, 4))[0].stride()
        (16, 1, 4, 1)
    """
    t, m, c, h, w = x.shape
    return x.new_empty((t, m, h, w, c)).copy_(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)


def channels_last_batch(batch: TaskBatch) -> TaskBatch:
    """``batch`` with its image inputs ``[T, M, C, H, W]`` copied by :func:`channels_last_tasks`."""
    return batch._replace(support_x=channels_last_tasks(batch.support_x), query_x=channels_last_tasks(batch.query_x))


def select_adapted(model: nn.Module, adapt: str | Sequence[str]) -> list[str]:
    """Names of the parameters the inner loop adapts: ``"all"``, ``"head"`` or ``fnmatch`` patterns."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if adapt == "all":
        return names
    if adapt == "head":
        children = [c for c, m in model.named_children() if any(True for _ in m.parameters())]
        if not children:
            raise ValueError("adapt='head' needs a model with child modules; give name patterns instead")
        return [n for n in names if n.startswith(children[-1] + ".")]
    patterns = [adapt] if isinstance(adapt, str) else list(adapt)
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"adapt={adapt!r} matches no parameter; use 'all', 'head' or patterns over {names}")
    return chosen


@contextmanager
def grad_enabled() -> Iterator[None]:
    """Autograd on inside validation/test/predict, which Lightning runs under ``inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def usable(data):
    """Tensors created under ``inference_mode`` cloned into normal tensors (autograd may save them)."""
    if isinstance(data, TaskBatch):
        return TaskBatch(*(usable(t) for t in data))
    return data.clone() if data.is_inference() else data


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning on any ``nn.Module``, with the inner loop in ``torch.func``.

    For each task: ``phi = theta - inner_lr * grad L(theta, support)``, ``inner_steps`` times; the loss is
    the query loss of ``phi`` averaged over the meta-batch, and ``training_step`` returns a loss whose
    ``.backward()`` yields the meta-gradient, so AMP scaling, accumulation, clipping and DDP apply unchanged.

    ``meta_gradient``:
      * ``"second_order"``: autograd through the unrolled inner loop (exact).
      * ``"first_order"``: FOMAML, inner gradients treated as constants.
      * ``"hvp"``: the exact meta-gradient by the reverse recurrence ``v <- v - a H_k v`` with
        Hessian-vector products (``hvp_method="autograd"`` or ``"finite_difference"``), holding the graph of
        one inner step at a time; returns a surrogate whose gradient is the meta-gradient and whose value is
        the query loss.

    Other options: ``eval_inner_steps`` for validation/test (default ``inner_steps``); ``learn_inner_lr``
    ``"off"``, ``"per_tensor"`` (Meta-SGD style, one lr per adapted tensor) or ``"per_step"`` (MAML++
    LSLR); ``adapt`` ``"all"``, ``"head"`` (ANIL: the last child module) or name patterns; ``batch_norm``
    ``"transductive"`` (batch statistics in every forward, no running statistics, the MAML paper's setting)
    or ``"none"`` (the model must have no BatchNorm); ``vectorize=True`` runs the tasks of a meta-batch in
    one ``torch.func.vmap`` call (same numbers; on 2 CPU cores the loop was faster, so it is off by
    default); ``nonfinite="raise"`` stops with the step and task of a non-finite loss, ``"skip"`` skips the
    meta-batch (under DDP the ranks agree first: all skip or all raise). ``inner_loss_scale`` multiplies the
    inner loss before differentiation and divides the gradient back; ``None`` means 1, or ``2**10`` under
    ``16-mixed`` precision, where inner gradients would otherwise underflow in float16. ``channels_last``
    stores image inputs and conv weights channels-last (faster convolutions and pooling on CPU). In
    validation/test, ``pre_adaptation_metrics`` adds the query metrics before adaptation (``val/pre_loss``,
    ``val/pre_acc``: one more query forward per task), and ``adaptation_curve=True`` records the query loss
    and score after each of the ``0..eval_inner_steps`` inner steps (see :attr:`adaptation_curves`; the W&B
    callback plots it).

    Example:
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

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        meta_gradient: MetaGradient = "second_order",
        hvp_method: Literal["autograd", "finite_difference"] = "autograd",
        learn_inner_lr: Literal["off", "per_tensor", "per_step"] = "off",
        adapt: str | list[str] = "all",
        batch_norm: Literal["transductive", "none"] = "transductive",
        vectorize: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
        inner_loss_scale: float | None = None,
        channels_last: bool = True,
        pre_adaptation_metrics: bool = True,
        adaptation_curve: bool = False,
        task_type: TaskType = "auto",
        lr: float = 1e-3,
    ) -> None:
        super().__init__(task_type=task_type, lr=lr)
        self._check_args(inner_lr, inner_steps, eval_inner_steps, meta_gradient, hvp_method, learn_inner_lr,
                         batch_norm, nonfinite, inner_loss_scale)
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.meta_gradient, self.hvp_method, self.vectorize = meta_gradient, hvp_method, vectorize
        self.nonfinite, self.inner_loss_scale = nonfinite, inner_loss_scale
        self._window_contributed = False  # a meta-batch since the last optimizer step had a finite loss
        self.batch_norm_layers = self._apply_batch_norm_policy(batch_norm)  # after self.vectorize
        self.channels_last = channels_last
        self.pre_adaptation_metrics, self.adaptation_curve = pre_adaptation_metrics, adaptation_curve
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.adapted = select_adapted(model, adapt)
        rows = inner_steps if learn_inner_lr == "per_step" else 1
        lrs = torch.full((rows, len(self.adapted)), float(inner_lr))
        if learn_inner_lr == "off":
            self.register_buffer("inner_lrs", lrs)
        else:
            self.inner_lrs = nn.Parameter(lrs)

    @staticmethod
    def _check_args(inner_lr, inner_steps, eval_inner_steps, meta_gradient, hvp_method, learn_inner_lr,
                    batch_norm, nonfinite, inner_loss_scale) -> None:
        check_number("inner_lr", inner_lr)
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be an integer >= 1, got {inner_steps!r}")
        if eval_inner_steps is not None and (not isinstance(eval_inner_steps, int) or eval_inner_steps < 0):
            raise ValueError(f"eval_inner_steps must be an integer >= 0, got {eval_inner_steps!r}")
        check_choice("meta_gradient", meta_gradient, ("second_order", "first_order", "hvp"))
        check_choice("hvp_method", hvp_method, ("autograd", "finite_difference"))
        check_choice("learn_inner_lr", learn_inner_lr, ("off", "per_tensor", "per_step"))
        check_choice("batch_norm", batch_norm, ("transductive", "none"))
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        if inner_loss_scale is not None:
            check_number("inner_loss_scale", inner_loss_scale)

    def _apply_batch_norm_policy(self, policy: str) -> list[str]:
        if policy == "transductive":
            return transductive_batch_norm(self.model, elementary=self.vectorize)
        layers = [n for n, m in self.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if layers:
            raise ValueError(
                f"batch_norm='none' but the model has BatchNorm layers {layers}; use batch_norm='transductive' "
                "or a model without BatchNorm (e.g. Conv4(batch_norm=False))"
            )
        return []

    def on_fit_start(self) -> None:
        policy = "transductive batch statistics" if self.batch_norm_layers else "no BatchNorm layers"
        self.print(f"MAML BatchNorm policy: {self.hparams.batch_norm} ({policy}: {self.batch_norm_layers})")

    # ------------------------------------------------------------- utilities
    def _loss_scale(self) -> float:
        if self.inner_loss_scale is not None:
            return float(self.inner_loss_scale)
        trainer = self._trainer
        precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
        return FP16_INNER_LOSS_SCALE if precision.startswith("16") else 1.0

    def _layout(self, batch: TaskBatch) -> TaskBatch:
        """Image inputs ``[T, M, C, H, W]`` in channels-last order (faster conv and max-pool on CPU), if enabled."""
        return channels_last_batch(batch) if self.channels_last and batch.support_x.dim() == 5 else batch

    def _params(self, detach: bool) -> Params:
        params = dict(self.model.named_parameters())
        return {n: p.detach().requires_grad_() for n, p in params.items()} if detach else params

    def _check_finite(self, inner: Tensor, outer: Tensor) -> bool:
        """``inner [T, steps]`` support losses, ``outer [T]`` query losses; raise or report non-finite.

        Under DDP the ranks agree first (one all-gather of a flag), so that every rank skips the same step
        or every rank raises: none is left waiting in the gradient all-reduce.
        """
        finite = bool(torch.isfinite(outer).all() & torch.isfinite(inner).all())
        bad_ranks = self._ranks_where(not finite)
        if not bad_ranks:
            return True
        if self.nonfinite == "skip":
            return False
        if finite:
            where = f"rank(s) {bad_ranks} (this rank, {self.global_rank}, was finite)"
        else:
            bad = (~torch.isfinite(inner)).nonzero()
            where = (f"inner step {int(bad[0, 1])} of task {int(bad[0, 0])}" if len(bad)
                     else f"the query loss of task {int((~torch.isfinite(outer)).nonzero()[0, 0])}")
            where += f" on rank {self.global_rank}" if self._world_size() > 1 else ""
        raise FloatingPointError(
            f"MAML: non-finite loss at {where} (global step {self.global_step}); lower inner_lr "
            f"(now {self.hparams.inner_lr}) or lr, or set nonfinite='skip'"
        )

    # --------------------------------------------------------- unrolled path
    def _run_tasks(self, batch: TaskBatch, steps: int, task_type: str, *, training: bool) -> tuple[Tensor, ...]:
        """Query losses ``[T]``, query outputs ``[T, M, ...]`` and support losses ``[T, steps]``."""
        task_loss = TaskLoss(self.model, self.loss_fn(task_type))
        batch = self._layout(batch)
        create_graph = training and self.meta_gradient == "second_order"
        first_order = training and self.meta_gradient == "first_order"
        params = self._params(detach=not training)
        lrs = self.inner_lrs if training else self.inner_lrs.detach()
        if self.vectorize:
            return self._run_vmap(task_loss, params, lrs, batch, steps, first_order)
        results, scale = [], self._loss_scale()
        for t in range(batch.num_tasks):
            inner: list[Tensor] = []
            fast = adapt(task_loss, params, self.adapted, batch.support_x[t], batch.support_y[t], lrs, steps,
                         create_graph=create_graph, first_order=first_order, loss_scale=scale,
                         on_step=lambda k, phi, loss, inner=inner: inner.append(loss.detach()))
            q_loss, q_out = task_loss(fast, batch.query_x[t], batch.query_y[t])
            results.append((q_loss, q_out, torch.stack(inner) if inner else q_loss.detach().new_zeros(0)))
        q_losses, q_outs, inner_losses = zip(*results)
        return torch.stack(q_losses), torch.stack(q_outs), torch.stack(inner_losses)

    def _run_vmap(self, task_loss, params, lrs, batch, steps, first_order) -> tuple[Tensor, ...]:
        names, scale = self.adapted, self._loss_scale()

        def support_loss(adapted, fast, x, y):
            return task_loss({**fast, **adapted}, x, y)[0] * scale

        def one_task(params, xs, ys, xq, yq):
            fast, inner = dict(params), []
            for k in range(steps):
                g, scaled_loss = grad_and_value(support_loss)({n: fast[n] for n in names}, fast, xs, ys)
                inner.append(scaled_loss / scale)
                row = lrs[min(k, lrs.shape[0] - 1)]
                for i, n in enumerate(names):
                    step = g[n].detach() if first_order else g[n]
                    fast[n] = fast[n] - row[i] * step / scale
            q_loss, q_out = task_loss(fast, xq, yq)
            return q_loss, q_out, torch.stack(inner) if inner else q_loss.new_zeros(0)

        return vmap(one_task, in_dims=(None, 0, 0, 0, 0), randomness="same")(params, *batch)

    # -------------------------------------------------------------- hvp path
    def _run_hvp(self, batch: TaskBatch, task_type: str) -> tuple[Tensor, ...]:
        """Surrogate loss (value: mean query loss; gradient: exact meta-gradient) and metrics inputs."""
        task_loss = TaskLoss(self.model, self.loss_fn(task_type))
        batch = self._layout(batch)
        params = dict(self.model.named_parameters())
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        lr_total = torch.zeros_like(self.inner_lrs)
        q_losses, q_outs, inner, scale = [], [], [], self._loss_scale()
        for t in range(batch.num_tasks):
            g, lr_g, q_loss, q_out, inner_t = meta_gradient_hvp(
                task_loss, params, self.adapted, self.inner_lrs, (batch.support_x[t], batch.support_y[t]),
                (batch.query_x[t], batch.query_y[t]), self.inner_steps, self.hvp_method, scale)
            for n in total:
                total[n] += g[n]
            lr_total += lr_g
            q_losses.append(q_loss), q_outs.append(q_out), inner.append(torch.stack(inner_t))
        t_count = batch.num_tasks
        surrogate = sum((p * (total[n] / t_count)).sum() for n, p in params.items())
        if isinstance(self.inner_lrs, nn.Parameter):
            surrogate = surrogate + (self.inner_lrs * (lr_total / t_count)).sum()
        q_losses_t = torch.stack(q_losses)
        loss = surrogate - surrogate.detach() + q_losses_t.mean()
        return loss, q_losses_t, torch.stack(q_outs), torch.stack(inner)

    # ------------------------------------------------------------ Lightning
    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        task_type = self._last_task_type = self.resolve_task_type(batch)
        if self.meta_gradient == "hvp":
            loss, q_losses, q_outs, inner = self._run_hvp(batch, task_type)
        else:
            q_losses, q_outs, inner = self._run_tasks(batch, self.inner_steps, task_type, training=True)
            loss = q_losses.mean()
        if not self._check_finite(inner, q_losses):
            return self._zero_loss()
        self._window_contributed = True
        score = self.episode_score(task_type, q_outs.detach(), batch.query_y)
        self.log_train(task_type, q_losses.detach().mean(), score, batch.num_tasks)
        return loss

    def _zero_loss(self) -> Tensor:
        """A skipped meta-batch's loss: zero gradient on every parameter, so DDP's all-reduce still runs."""
        return sum((p * 0).sum() for p in self.parameters() if p.requires_grad)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, except that an accumulation window of only skipped meta-batches takes none."""
        if self.nonfinite != "skip" or optimizer_closure is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        result = optimizer_closure()
        contributed, self._window_contributed = self._window_contributed, False
        if contributed:
            super().optimizer_step(epoch, batch_idx, optimizer, lambda: result)

    def _eval_step(self, batch: TaskBatch, stage: str) -> None:
        """Adapt without an outer graph; query metrics after 0 (pre) and K (post) steps, or every step."""
        task_type = self._last_task_type = self.resolve_task_type(batch)
        task_loss = TaskLoss(self.model, self.loss_fn(task_type))
        steps = self.eval_inner_steps
        wanted = set(range(steps)) if self.adaptation_curve else ({0} if self.pre_adaptation_metrics else set())
        points: list[dict[int, tuple[Tensor, Tensor]]] = []
        scale, lrs = self._loss_scale(), self.inner_lrs.detach()
        with grad_enabled():
            batch, params = self._layout(usable(batch)), self._params(detach=True)
            for t in range(batch.num_tasks):
                xq, yq = batch.query_x[t], batch.query_y[t]
                seen: dict[int, tuple[Tensor, Tensor]] = {}

                def on_step(k: int, phi: Params, _loss: Tensor, seen=seen, xq=xq, yq=yq) -> None:
                    if k in wanted:
                        seen[k] = self._query(task_loss, phi, xq, yq)

                fast = adapt(task_loss, params, self.adapted, batch.support_x[t], batch.support_y[t],
                             lrs, steps, create_graph=False, loss_scale=scale, on_step=on_step)
                seen[steps] = self._query(task_loss, fast, xq, yq)
                points.append(seen)
        curve = {k: self._stack_point(points, k, task_type, batch) for k in sorted(points[0])}
        self.update_eval(stage, "loss", curve[steps][0])
        self.update_eval(stage, "score", curve[steps][1])
        if 0 in curve:
            self.update_eval(stage, "pre_loss", curve[0][0])
            self.update_eval(stage, "pre_score", curve[0][1])
        if self.adaptation_curve:
            self.update_curve(stage, [curve[k][0] for k in range(steps + 1)], [curve[k][1] for k in range(steps + 1)])

    def _stack_point(self, points, k: int, task_type: str, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        losses = torch.stack([p[k][0] for p in points])
        outputs = torch.stack([p[k][1] for p in points])
        return losses, self.episode_score(task_type, outputs, batch.query_y)

    @staticmethod
    def _query(task_loss: TaskLoss, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Query loss and output of one task with ``params``, without a graph."""
        with torch.no_grad():
            loss, out = task_loss(params, x, y)
        return loss.detach(), out.detach()

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        """Query predictions ``[T, M, ...]`` after ``eval_inner_steps`` of adaptation."""
        task_type = self.resolve_task_type(batch)
        with grad_enabled():
            _, q_outs, _ = self._run_tasks(usable(batch), self.eval_inner_steps, task_type, training=False)
        return q_outs.detach()

    def adapted_params(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Params:
        """The adapted parameters ``phi`` for one task's support set (no outer graph)."""
        task_loss = TaskLoss(self.model, self.loss_fn(self.task_type_of(support_y)))
        with grad_enabled():
            support_x, support_y = self._image_layout(usable(support_x)), usable(support_y)
            fast = adapt(task_loss, self._params(detach=True), self.adapted, support_x, support_y,
                         self.inner_lrs.detach(), self.eval_inner_steps if steps is None else steps,
                         create_graph=False, loss_scale=self._loss_scale())
        return {n: p.detach() for n, p in fast.items()}

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """The backbone's output with ``params`` (e.g. from :meth:`adapted_params`), or with ``theta``."""
        x = self._image_layout(x)
        return self.model(x) if params is None else functional_call(self.model, params, (x,))

    def _image_layout(self, x: Tensor) -> Tensor:
        """One task's images ``[M, C, H, W]`` in channels-last strides, if enabled."""
        return channels_last_tasks(x[None])[0] if self.channels_last and x.dim() == 4 else x



