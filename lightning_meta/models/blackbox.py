"""The black-box adaptation network: a support-set reader and a query predictor in one plain ``nn.Module``."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.checks import check_choice, check_positive
from lightning_meta.data.layout import channels_last_tasks
from lightning_meta.functional.blackbox import gaussian_outputs
from lightning_meta.models.snail import SNAIL

Aggregator = Literal["mean", "attention", "sequence", "snail"]
AGGREGATORS = ("mean", "attention", "sequence", "snail")
TASK_TYPES = ("classification", "regression")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of widths ``sizes`` with a ReLU between two of them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_encoder_tasks(value: Any) -> None:
    """Raise a ``ValueError`` unless ``value`` is ``"auto"``, ``"all"`` or an int >= 1."""
    if isinstance(value, str) and value in ("auto", "all"):
        return
    try:
        check_positive("encoder_tasks", value)
    except ValueError:
        raise ValueError(f"encoder_tasks must be 'auto', 'all' or an integer >= 1, got {value!r}") from None


def resolve_feature_dim(encoder: nn.Module, feature_dim: int | None) -> int:
    """``feature_dim``, else the encoder's ``feature_dim`` attribute; a ``ValueError`` when neither is an int >= 1."""
    feature_dim = feature_dim if feature_dim is not None else getattr(encoder, "feature_dim", None)
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError("feature_dim must be given (an int >= 1) when the encoder has no `feature_dim` attribute")
    return feature_dim


def check_sizes(**sizes: int) -> None:
    """Every size an int >= 1, and ``hidden`` divisible by ``heads`` (the attention heads split it)."""
    for name, value in sizes.items():
        check_positive(name, value)
    if sizes["hidden"] % sizes["heads"]:
        raise ValueError(f"hidden={sizes['hidden']} must be divisible by heads={sizes['heads']}")


def infer_task_type(y: Tensor) -> str:
    """Float targets regress, integer labels classify."""
    return "regression" if y.is_floating_point() else "classification"


class BlackBoxNetwork(nn.Module):
    """The network of [BlackBoxAdaptation][lightning_meta.BlackBoxAdaptation], usable without Lightning: an encoder
    reads the support set into a task vector ``h_i``, and a predictor ``g(x_query; h_i, theta_g)`` answers the
    queries in one forward pass, with no inner gradient steps.

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

    Classification: ``ways`` is the width of the one-hot label input and of the output head; a task with fewer
    ways has the unused logits masked to ``-inf`` (no prediction names a class the task does not have), more ways
    raise a clear error. Regression: ``y_dim`` target values; with ``predict_variance=True`` the outputs are the
    parameters of a Gaussian (``gaussian`` reads them as mean and variance).

    The encoder's output size is ``feature_dim`` or, when omitted, the encoder's ``feature_dim`` attribute
    (``Conv4(embed_only=True)`` has one). A task's support and query inputs go through the encoder together,
    ``encoder_tasks`` tasks per pass: ``"auto"`` (default) is one task per pass on CPU (measured fastest there:
    ``benchmarks/blackbox.py``) and the whole meta-batch (``"all"``) on other devices; an int sets it. In
    training mode BatchNorm in the encoder normalizes each pass with that pass's statistics, so with a BatchNorm
    encoder the pass size is part of the model (one task per pass: a task's features do not depend on the other
    tasks); encoders without batch statistics, and every encoder in evaluation, give the same numbers for any
    pass size. ``channels_last`` copies image inputs to channels-last strides per task and converts the encoder's
    conv weights (several times faster on CPU for one-channel images).

    Examples:
        >>> import torch
        >>> from lightning_meta.models import MLP
        >>> net = BlackBoxNetwork(MLP(out_features=32, hidden=(32,)), feature_dim=32, task_dim=16, ways=5)
        >>> support_x, support_y = torch.randn(4, 10, 1), torch.arange(5).repeat(4, 2)  # 4 tasks, 5 ways, 2 shots
        >>> logits = net(support_x, support_y, torch.randn(4, 3, 1), "classification")
        >>> logits.shape, net.task_vector(support_x, support_y, "classification").shape
        (torch.Size([4, 3, 5]), torch.Size([4, 16]))
        >>> torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([0, 1, 2]).repeat(4)).backward()
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
    ) -> None:
        super().__init__()
        check_choice("aggregator", aggregator, AGGREGATORS)
        check_encoder_tasks(encoder_tasks)
        feature_dim = resolve_feature_dim(encoder, feature_dim)
        support_size = ways if support_size is None else support_size
        check_sizes(task_dim=task_dim, hidden=hidden, ways=ways, y_dim=y_dim, heads=heads, layers=layers,
                    support_size=support_size)
        self.aggregator, self.feature_dim, self.task_dim, self.hidden = aggregator, feature_dim, task_dim, hidden
        self.ways, self.y_dim, self.predict_variance, self.support_size = ways, y_dim, predict_variance, support_size
        self.encoder_tasks, self.channels_last = encoder_tasks, channels_last
        self.label_dim = max(ways, y_dim)
        self.out_dim = max(ways, 2 * y_dim if predict_variance else y_dim)
        # registration order (and so parameter order and the random draws of the initialization) is fixed
        self.encoder = encoder.to(memory_format=torch.channels_last) if channels_last else encoder
        self.pair_net = mlp([feature_dim + self.label_dim, hidden, hidden])
        self.task_net = mlp([hidden, hidden, task_dim])
        readout = self._build_readout(heads, layers)
        self.predictor = mlp([feature_dim + task_dim + readout, hidden, hidden, self.out_dim])

    def _build_readout(self, heads: int, layers: int) -> int:
        """The aggregator's modules; returns the width of the per-query read-out (a mean pair, an attention read,
        a sequence token or a SNAIL output)."""
        token = self.feature_dim + self.label_dim
        if self.aggregator == "attention":
            self.query_proj = nn.Linear(self.feature_dim, self.hidden)
            self.key_proj = nn.Linear(self.feature_dim, self.hidden)
            self.attention = nn.MultiheadAttention(self.hidden, heads, batch_first=True)
        elif self.aggregator == "sequence":
            self.token_in = nn.Linear(token, self.hidden)
            # pre-LN: post-LN stayed at chance for 4,000 Omniglot tasks at lr 1e-3 and 3e-4; pre-LN reached 69 %
            block = nn.TransformerEncoderLayer(self.hidden, heads, 2 * self.hidden, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.sequence = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        elif self.aggregator == "snail":
            self.snail = SNAIL(token, self.support_size + 1)
            return self.snail.out_features
        return self.hidden

    # ------------------------------------------------------------- encoder
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
        per_pass = self.tasks_per_pass(t, x.device)
        if per_pass >= t:  # one pass (no split: torch.export keeps the number of examples symbolic)
            out = self.encoder(flat).flatten(1)
        else:
            out = torch.cat([self.encoder(chunk).flatten(1) for chunk in flat.split(per_pass * m)])
        return list(out.view(t, m, -1).split([i.shape[1] for i in inputs], 1))

    # -------------------------------------------------------------- labels
    def check_ways(self, labels: Tensor) -> int:
        """The number of ways ``labels`` (class indices) show, ``max + 1``; a ``ValueError`` above ``ways``."""
        ways = int(labels.max()) + 1
        if ways > self.ways:
            raise ValueError(
                f"this BlackBoxNetwork has a {self.ways}-way label input and head; a task with {ways} ways "
                f"cannot be answered. Use tasks with ways <= {self.ways} or build it with ways >= {ways}"
            )
        return ways

    def _check_targets(self, support_y: Tensor, task_type: str) -> int:
        """The ways of a classification support set (0 for regression), after checking it fits the network."""
        check_choice("task_type", task_type, TASK_TYPES)
        if task_type == "classification":
            return self.check_ways(support_y)
        if support_y.shape[-1] != self.y_dim:
            raise ValueError(f"regression targets have {support_y.shape[-1]} values, but y_dim={self.y_dim}")
        return 0

    def encode_labels(self, y: Tensor, task_type: str, dtype: torch.dtype) -> Tensor:
        """The label input ``[..., max(ways, y_dim)]``: one-hot classes, or the regression values zero-padded."""
        width = self.label_dim
        if task_type == "classification":
            return F.one_hot(y, width).to(dtype)
        return F.pad(y.to(dtype), (0, width - y.shape[-1]))

    # ------------------------------------------------------------- support
    def encode_support(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Pair embeddings ``[T, S, hidden]`` of the support set and its task vector ``h_i`` ``[T, task_dim]``."""
        pairs = self.pair_net(torch.cat([features, labels], -1))
        return pairs, self.task_net(pairs.mean(1))

    def task_vector(self, support_x: Tensor, support_y: Tensor, task_type: str | None = None) -> Tensor:
        """``h_i`` ``[T, task_dim]`` of each support set (``support_x [T, S, ...]``, ``support_y [T, S(, d)]``);
        ``task_type`` defaults to regression for float targets, classification for integer labels."""
        task_type = task_type or infer_task_type(support_y)
        check_choice("task_type", task_type, TASK_TYPES)
        (features,) = self._features(support_x)
        return self.encode_support(features, self.encode_labels(support_y, task_type, features.dtype))[1]

    # ------------------------------------------------------------- queries
    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, task_type: str | None = None) -> Tensor:
        """Raw outputs for the queries ``query_x [T, Q, ...]``, ``[T, Q, out_dim]``: logits (those of classes the
        task does not have at ``-inf``), or the regression mean (and variance parameters: see ``gaussian``)."""
        task_type = task_type or infer_task_type(support_y)
        ways = self._check_targets(support_y, task_type)
        fs, fq = self._features(support_x, query_x)
        return self.answer(self.read_support(fs, support_y, task_type), fq, ways, task_type)

    def read_support(self, features: Tensor, support_y: Tensor, task_type: str) -> dict[str, Tensor]:
        """What the network keeps of a support set (its encoder ``features [T, S, D]`` and targets): the label input,
        the pair embeddings and ``h_i``: all that answering a query needs (``answer``)."""
        labels = self.encode_labels(support_y, task_type, features.dtype)
        pairs, h = self.encode_support(features, labels)
        return {"features": features, "labels": labels, "pairs": pairs, "h": h}

    def answer(self, support: dict[str, Tensor], fq: Tensor, ways: int, task_type: str) -> Tensor:
        """Raw outputs ``[T, Q, out_dim]`` for query features ``fq [T, Q, D]`` given a ``read_support`` result (of a
        ``ways``-way task for classification)."""
        fs, labels, pairs, h = support["features"], support["labels"], support["pairs"], support["h"]
        parts = [fq, h[:, None].expand(-1, fq.shape[1], -1)]
        if self.aggregator == "mean" and task_type == "classification":
            return self._class_scores(parts, pairs, labels[..., :ways])
        parts.append(self._readout(fs, fq, labels, pairs))
        out = self.predictor(torch.cat(parts, -1))
        if task_type == "classification" and ways < self.ways:
            out = out.masked_fill(torch.arange(self.ways, device=out.device) >= ways, float("-inf"))
        return out

    def _readout(self, fs: Tensor, fq: Tensor, labels: Tensor, pairs: Tensor) -> Tensor:
        """The aggregator's read-out of the support set for each query, ``[T, Q, readout]``."""
        if self.aggregator == "attention":
            return self.attention(self.query_proj(fq), self.key_proj(fs), pairs, need_weights=False)[0]
        if self.aggregator == "sequence":
            return self._sequence(fs, labels, fq)
        if self.aggregator == "snail":
            return self.snail(torch.cat([fs, labels], -1), F.pad(fq, (0, labels.shape[-1])))[1]
        return pairs.mean(1, keepdim=True).expand(-1, fq.shape[1], -1)

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
        return self.sequence(tokens, mask=~allowed, is_causal=False)[:, s:]  # not causal: a query sees itself

    def features(self, x: Tensor) -> Tensor:
        """Encoder features ``[T, M, D]`` of inputs ``[T, M, ...]``."""
        return self._features(x)[0]

    def gaussian(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Regression outputs as ``(mean, variance)``, each ``[T, Q, y_dim]``; the variance is ``None`` without
        ``predict_variance``."""
        return gaussian_outputs(out, self.y_dim, self.predict_variance)
