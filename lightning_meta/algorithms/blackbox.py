"""Black-box adaptation: a network reads the support set into a task vector h_i; a predictor answers queries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import LRSchedulerCallable, MetaLearner, OptimizerCallable, check_no_inner_steps
from lightning_meta.checks import check_choice
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.layout import channels_last_tasks
from lightning_meta.data.sources import TaskType
from lightning_meta.functional.objective import MetaObjective
from lightning_meta.models.snail import SNAIL

Aggregator = Literal["mean", "attention", "sequence", "snail"]
AGGREGATORS = ("mean", "attention", "sequence", "snail")


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BlackBoxAdaptation(MetaLearner):
    """``phi_i = {h_i, theta_g}``: an encoder reads the support set into a task vector ``h_i``, and a predictor
    ``g(x_query; h_i, theta_g)`` answers the queries. One forward pass per task, no inner gradient steps.

    Each support pair becomes ``e = pair_net([encoder(x), y])`` (``y`` one-hot for classification, the
    value for regression). ``aggregator`` chooses how ``h_i`` and the query read-out are formed:

    * ``"mean"``: ``h_i = task_net(mean e)`` (DeepSets / CNP); invariant to the order of the support set. For
      classification the predictor scores each query against each class's mean pair embedding (the
      class-conditional aggregation of CNPs), which also serves any number of ways up to ``ways``.
    * ``"attention"``: ``h_i`` as for mean, plus each query attends (multi-head) over the support pairs;
      invariant to the order of the support set.
    * ``"sequence"``: a causal transformer reads the support pairs in order, then each query (which sees every
      support token, not the other queries); **sensitive to the order** of the support set.
    * ``"snail"``: SNAIL (Mishra et al., 2018): causal temporal convolutions interleaved with causal attention
      ([SNAIL][lightning_meta.models.SNAIL], the paper's Omniglot/miniImageNet block structure) over the support
      items in order, each query the last element of its own sequence; **sensitive to the order** of the support
      set. ``support_size`` (default ``ways``, i.e. one shot) sizes its temporal convolutions as the paper's
      ``T = N * K + 1``.

    Classification: ``ways`` is the width of the one-hot label input and of the output head. Training
    (``training_step``, ``objective``) needs tasks of exactly ``ways`` ways, and another number is a
    ``ValueError`` at the first batch naming both: a head wider than the tasks would be trained on scores of
    classes that do not exist. Evaluation (validation, test, predict, ``forward``) also accepts tasks with fewer
    ways (the unused logits are masked to ``-inf``, so no prediction names a class the task does not have), as a
    model trained on 20-way tasks is evaluated on 5-way ones; more ways raise a clear error. Any number of shots
    works. Regression: ``y_dim`` target values; with ``predict_variance=True`` the predictor outputs a
    mean and a variance trained by Gaussian NLL as in CNPs, and the reported metric is the MSE of the mean.

    The encoder's output size is ``feature_dim`` or, when omitted, the encoder's ``feature_dim`` attribute
    (``Conv4(embed_only=True)`` has one). A task's support and query inputs go through the encoder together,
    ``encoder_tasks`` tasks per pass: ``"auto"`` (default) is one task per pass on CPU (measured fastest there:
    ``benchmarks/blackbox.py``) and the whole meta-batch (``"all"``) on other devices; an int sets it. In
    training mode BatchNorm in the encoder normalizes each pass with that pass's statistics, so with a BatchNorm
    encoder the pass size is part of the model, as the batch size is of any BatchNorm network (one task per pass:
    a task's features do not depend on the other tasks, as in ``MAML`` and ``ProtoNet``); encoders without batch
    statistics, and every encoder in evaluation, give the same numbers for any pass size. ``channels_last``
    copies image inputs to channels-last strides per task and converts the encoder's conv weights (several
    times faster on CPU for one-channel images). ``nonfinite`` and the outer-loop optimizer (``optimizer``,
    ``lr_scheduler``, ``lr_scheduler_interval``) are as for every [MetaLearner][lightning_meta.MetaLearner].

    Examples:
        >>> import torch
        >>> from lightning_meta.models import MLP
        >>> model = BlackBoxAdaptation(MLP(out_features=32, hidden=(32,)), feature_dim=32, task_dim=16)
        >>> h = model.task_vector(torch.randn(4, 10, 1), torch.randn(4, 10, 1))
        >>> h.shape
        torch.Size([4, 16])
    """

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
        check_choice("aggregator", aggregator, AGGREGATORS)
        if encoder_tasks not in ("auto", "all") and (
            isinstance(encoder_tasks, bool) or not isinstance(encoder_tasks, int) or encoder_tasks < 1
        ):
            raise ValueError(f"encoder_tasks must be 'auto', 'all' or an integer >= 1, got {encoder_tasks!r}")
        feature_dim = feature_dim if feature_dim is not None else getattr(encoder, "feature_dim", None)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError("feature_dim must be given (an int >= 1) when the encoder has no `feature_dim` attribute")
        support_size = ways if support_size is None else support_size
        for name, value in (("task_dim", task_dim), ("hidden", hidden), ("ways", ways), ("y_dim", y_dim),
                            ("heads", heads), ("layers", layers), ("support_size", support_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.save_hyperparameters(ignore=["encoder", "optimizer", "lr_scheduler"])
        self.encoder, self.aggregator, self.ways, self.y_dim = encoder, aggregator, ways, y_dim
        self.predict_variance, self.encoder_tasks, self.channels_last = predict_variance, encoder_tasks, channels_last
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        label_dim = max(ways, y_dim)
        self.pair_net = mlp([feature_dim + label_dim, hidden, hidden])
        self.task_net = mlp([hidden, hidden, task_dim])
        readout = hidden  # width of the per-query read-out: a mean pair, an attention read or a sequence token
        if aggregator == "attention":
            self.query_proj, self.key_proj = nn.Linear(feature_dim, hidden), nn.Linear(feature_dim, hidden)
            self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        elif aggregator == "sequence":
            self.token_in = nn.Linear(feature_dim + label_dim, hidden)
            # pre-LN: post-LN stayed at chance for 4,000 Omniglot tasks at lr 1e-3 and 3e-4; pre-LN reached 69 %
            block = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.sequence = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        elif aggregator == "snail":
            self.snail = SNAIL(feature_dim + label_dim, support_size + 1)
            readout = self.snail.out_features
        self.out_dim = max(ways, 2 * y_dim if predict_variance else y_dim)
        self.predictor = mlp([feature_dim + task_dim + readout, hidden, hidden, self.out_dim])

    # ------------------------------------------------------------------ model
    def default_backbone(self) -> nn.Module:
        """The ``encoder``: what Lightning's ``BackboneFinetuning`` freezes (the pair, task and predictor networks
        keep training)."""
        return self.encoder

    def tasks_per_pass(self, tasks: int, device: torch.device) -> int:
        """How many of ``tasks`` tasks one encoder pass reads (see ``encoder_tasks``)."""
        if self.encoder_tasks == "all" or (self.encoder_tasks == "auto" and device.type != "cpu"):
            return tasks
        return 1 if self.encoder_tasks == "auto" else min(int(self.encoder_tasks), tasks)

    def _features(self, *inputs: Tensor) -> list[Tensor]:
        """Encoder features ``[T, M_i, D]`` of each of ``inputs [T, M_i, ...]``: a task's inputs are encoded
        together, ``tasks_per_pass`` tasks per encoder call."""
        x = torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]
        if self.channels_last and x.dim() == 5:
            x = channels_last_tasks(x)
        t, m = x.shape[:2]
        flat = x.flatten(0, 1)
        chunks = flat.split(self.tasks_per_pass(t, x.device) * m)
        out = torch.cat([self.encoder(chunk).flatten(1) for chunk in chunks]) if len(chunks) > 1 else (
            self.encoder(flat).flatten(1))
        return list(out.view(t, m, -1).split([i.shape[1] for i in inputs], 1))

    def _labels(self, y: Tensor, task_type: str, dtype: torch.dtype) -> Tensor:
        width = max(self.ways, self.y_dim)
        if task_type == "classification":
            return F.one_hot(y, width).to(dtype)
        return F.pad(y.to(dtype), (0, width - y.shape[-1]))

    def _check(self, batch: TaskBatch, task_type: str) -> int:
        if task_type == "classification":
            ways = int(batch.support_y.max()) + 1
            if ways > self.ways or int(batch.query_y.max()) >= self.ways:
                raise ValueError(
                    f"this BlackBoxAdaptation has a {self.ways}-way label input and head; a task with {ways} ways "
                    f"cannot be answered. Use tasks with ways <= {self.ways} or build it with ways >= {ways}"
                )
            return ways
        if batch.support_y.shape[-1] != self.y_dim:
            raise ValueError(f"regression targets have {batch.support_y.shape[-1]} values, but y_dim={self.y_dim}")
        return 0

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

    def _encode_support(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Pair embeddings ``[T, S, hidden]`` of the support set and its task vector ``h_i`` ``[T, task_dim]``."""
        pairs = self.pair_net(torch.cat([features, labels], -1))
        return pairs, self.task_net(pairs.mean(1))

    def task_vector(self, support_x: Tensor, support_y: Tensor, task_type: str | None = None) -> Tensor:
        """``h_i`` ``[T, task_dim]`` of each support set (``support_x [T, S, ...]``, ``support_y [T, S(, d)]``)."""
        task_type = task_type or self.task_type_of(support_y)
        (features,) = self._features(support_x)
        return self._encode_support(features, self._labels(support_y, task_type, features.dtype))[1]

    def forward(self, batch: TaskBatch) -> Tensor:
        """Raw predictor outputs for the queries, ``[T, Q, out]`` (logits, or mean and variance parameters)."""
        task_type = self.task_type_of(batch.support_y)
        ways = self._check(batch, task_type)
        fs, fq = self._features(batch.support_x, batch.query_x)
        labels = self._labels(batch.support_y, task_type, fs.dtype)
        pairs, h = self._encode_support(fs, labels)
        parts = [fq, h[:, None].expand(-1, fq.shape[1], -1)]
        if self.aggregator == "mean" and task_type == "classification":
            return self._class_scores(parts, pairs, labels[..., :ways])
        if self.aggregator == "attention":
            read, _ = self.attention(self.query_proj(fq), self.key_proj(fs), pairs, need_weights=False)
            parts.append(read)
        elif self.aggregator == "sequence":
            parts.append(self._sequence(fs, labels, fq))
        elif self.aggregator == "snail":
            parts.append(self.snail(torch.cat([fs, labels], -1), F.pad(fq, (0, labels.shape[-1])))[1])
        else:
            parts.append(pairs.mean(1, keepdim=True).expand(-1, fq.shape[1], -1))
        out = self.predictor(torch.cat(parts, -1))
        if task_type == "classification" and ways < self.ways:
            out = out.masked_fill(torch.arange(self.ways, device=out.device) >= ways, float("-inf"))
        return out

    def _class_scores(self, parts: list[Tensor], pairs: Tensor, onehot: Tensor) -> Tensor:
        """Mean aggregator, classification: the predictor scores each query against each class's mean pair
        embedding (CNP's class-conditional aggregation); output ``c`` is the logit of class ``c``. ``[T, Q, ways]``."""
        onehot = onehot.to(pairs.dtype)
        class_mean = onehot.transpose(1, 2) @ pairs / onehot.sum(1).clamp_min(1)[..., None]  # [T, N, H]
        query = torch.cat(parts, -1)  # [T, Q, F + D]
        q, n = query.shape[1], class_mean.shape[1]
        pairs_in = torch.cat([query[:, :, None].expand(-1, -1, n, -1), class_mean[:, None].expand(-1, q, -1, -1)], -1)
        logits = self.predictor(pairs_in)[..., :n].diagonal(dim1=2, dim2=3)  # [T, Q, N]
        return F.pad(logits, (0, self.ways - n), value=float("-inf"))

    def _sequence(self, fs: Tensor, labels: Tensor, fq: Tensor) -> Tensor:
        s, q = fs.shape[1], fq.shape[1]
        tokens = self.token_in(torch.cat([torch.cat([fs, labels], -1), F.pad(fq, (0, labels.shape[-1]))], 1))
        n = s + q
        allowed = torch.ones(n, n, dtype=torch.bool, device=fs.device).tril()  # support: causal
        allowed[s:, s:] = torch.eye(q, dtype=torch.bool, device=fs.device)  # a query sees supports and itself
        return self.sequence(tokens, mask=~allowed)[:, s:]

    # ------------------------------------------------------------- objective
    def _predict(self, batch: TaskBatch, task_type: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per-task loss ``[T]``, per-task score ``[T]`` and the point prediction."""
        out = self(batch)
        t, q = out.shape[:2]
        if task_type == "classification":
            logits = out[..., : self.ways]
            loss = F.cross_entropy(_widen(logits).flatten(0, 1), batch.query_y.flatten(), reduction="none")
            return loss.view(t, q).mean(1), self.episode_score(task_type, logits.detach(), batch.query_y), logits
        mean, var = self._gaussian(out)
        target = batch.query_y.to(_wide(mean.dtype))
        if self.predict_variance:
            loss = F.gaussian_nll_loss(_widen(mean), target, _widen(var), reduction="none")
        else:
            loss = F.mse_loss(_widen(mean), target, reduction="none")
        score = self.episode_score(task_type, mean.detach(), batch.query_y)
        return loss.flatten(1).mean(1), score, mean

    def _gaussian(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Regression outputs as ``(mean, variance)``; the variance is ``None`` without ``predict_variance``."""
        mean = out[..., : self.y_dim]
        if not self.predict_variance:
            return mean, None
        return mean, F.softplus(out[..., self.y_dim : 2 * self.y_dim]) + 1e-3

    def predictive(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The Gaussian predictive distribution of the queries of a regression ``batch`` (``predict_variance=True``):
        ``(mean, variance)``, each ``[T, Q, y_dim]``. E.g. the 95% interval is ``mean +- 1.96 * variance.sqrt()``."""
        batch, task_type = self.prepare_batch(batch)
        if task_type != "regression" or not self.predict_variance:
            raise ValueError(f"predictive() needs regression tasks and predict_variance=True; got {task_type} tasks "
                             f"and predict_variance={self.predict_variance}")
        return self._gaussian(self(batch))  # type: ignore[return-value]

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


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _widen(x: Tensor) -> Tensor:
    """``x`` in at least float32 (losses of bf16/fp16 outputs in float32; float64 is kept)."""
    return x.to(_wide(x.dtype))
