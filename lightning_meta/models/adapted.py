"""A learner fixed to one task: what ``learner.adapt(support_x, support_y)`` returns, a plain ``nn.Module`` that
answers query inputs on its own (no Lightning, no support set to pass), in evaluation mode, and exports with
``torch.export`` / ``torch.jit.trace``."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def encode_classes(labels: Any) -> tuple[Tensor, list[Hashable]]:
    """``(indices [S] int64, classes)``: each label's index into ``classes``, the distinct labels sorted (when they
    compare, e.g. names or numbers; else in order of first appearance).

    ``labels`` may be a 1-D integer tensor or any sequence of hashable class names.

    Examples:
        >>> encode_classes(["dog", "cat", "dog"])
        (tensor([1, 0, 1]), ['cat', 'dog'])
        >>> encode_classes(torch.tensor([7, 3, 7]))
        (tensor([1, 0, 1]), [3, 7])
    """
    if isinstance(labels, Tensor):
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"class labels must be a 1-D integer tensor or a sequence of class names, got a "
                             f"{labels.dtype} tensor of shape {tuple(labels.shape)}")
        labels = labels.tolist()
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"class labels must be a sequence (one per support example), got {type(labels).__name__}")
    for label in labels:
        if not isinstance(label, Hashable):
            raise ValueError(f"class labels must be hashable (names or ints), got {label!r}")
    distinct = list(dict.fromkeys(labels))
    try:
        classes = sorted(distinct)
    except TypeError:
        classes = distinct
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[label] for label in labels], dtype=torch.long), classes


class AdaptedLearner(nn.Module):
    """One task's predictor: ``forward(query_x [M, ...])`` gives class scores ``[M, len(classes)]`` (logits) or
    regression predictions ``[M, ...]``, equal to what the learner's ``predict_step`` gives for these queries.

    Built by [MetaLearner.adapt][lightning_meta.MetaLearner.adapt]; ``core`` is the learner's adapted network (the
    backbone with ``phi`` for MAML/iMAML/Reptile, the encoder with the prototypes for ProtoNet, the network with the
    read support set for black-box adaptation), frozen and in evaluation mode. ``classes`` maps score columns to
    the user's class names; ``predict`` returns names, ``predict_proba`` probabilities.

    Examples:
        >>> core = nn.Linear(2, 3)
        >>> adapted = AdaptedLearner(core, classes=["cat", "dog", "owl"], task_type="classification")
        >>> adapted(torch.zeros(4, 2)).shape, len(adapted.predict(torch.zeros(4, 2)))
        (torch.Size([4, 3]), 4)
    """

    def __init__(self, core: nn.Module, *, classes: Sequence[Hashable] | None, task_type: str,
                 preprocessing: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.core = core.eval().requires_grad_(False)
        self.classes = None if classes is None else list(classes)
        self.task_type = task_type
        #: the image preprocessing of the learner's training data (plain data; ``None`` when unknown or not images)
        self.preprocessing = None if preprocessing is None else dict(preprocessing)
        self.eval()

    def forward(self, query_x: Tensor) -> Tensor:
        """Class scores (logits) ``[M, ways]``, or the regression prediction ``[M, ...]``."""
        return self.core(query_x)

    @torch.no_grad()
    def predict_proba(self, query_x: Tensor) -> Tensor:
        """Class probabilities ``[M, ways]`` (softmax of the scores)."""
        self._require_classes("predict_proba")
        return self(query_x).float().softmax(-1)

    @torch.no_grad()
    def predict(self, query_x: Tensor) -> list[Hashable] | Tensor:
        """The predicted class name of each query (classification), or the regression prediction."""
        out = self(query_x)
        if self.task_type != "classification":
            return out
        return [self.classes[i] for i in out.argmax(-1).tolist()]

    def _require_classes(self, name: str) -> None:
        if self.task_type != "classification":
            raise ValueError(f"{name}() is for classification; this learner was adapted to a regression task")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in evaluation mode with no tensor requiring grad (the original is untouched)."""
    with torch.no_grad():
        out = copy.deepcopy(module)
    return out.eval().requires_grad_(False)


class ParametrizedNetwork(nn.Module):
    """A copy of ``model`` with the adapted tensors ``phi`` (by parameter name) as its own parameters: the
    gradient learners' adapted network (``model(x)`` at ``phi``).

    Examples:
        >>> model = nn.Linear(1, 1)
        >>> net = ParametrizedNetwork(model, {"bias": torch.tensor([5.0])})
        >>> float(net(torch.zeros(1, 1))), float(model.bias) != 5.0
        (5.0, True)
    """

    def __init__(self, model: nn.Module, phi: Mapping[str, Tensor], step_hook=None) -> None:
        super().__init__()
        self.model = frozen_copy(model)
        params = dict(self.model.named_parameters())
        unknown = sorted(set(phi) - set(params))
        if unknown:
            raise KeyError(f"the model has no parameters {unknown}")
        with torch.no_grad():
            for name, value in phi.items():
                params[name].copy_(value)
        if step_hook is not None:
            step_hook(self.model)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PrototypeClassifier(nn.Module):
    """ProtoNet fixed to one task: an encoder and the class prototypes ``[ways, D]``; the logits of ``x`` are
    ``-||f(x) - c_k||^2``.

    Examples:
        >>> net = PrototypeClassifier(nn.Identity(), torch.tensor([[0.0], [2.0]]))
        >>> net(torch.tensor([[1.0], [3.0]]))
        tensor([[-1., -1.],
                [-9., -1.]])
    """

    def __init__(self, encoder: nn.Module, prototypes: Tensor) -> None:
        super().__init__()
        self.encoder = frozen_copy(encoder)
        self.register_buffer("prototypes", prototypes.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        embeddings = self.encoder(x).flatten(1)
        return -(embeddings[:, None, :] - self.prototypes[None]).pow(2).sum(-1)


class SupportReader(nn.Module):
    """Black-box adaptation fixed to one task: the [BlackBoxNetwork][lightning_meta.models.BlackBoxNetwork] with
    what it read of the support set (features, pair embeddings, ``h_i``) as buffers; ``forward`` encodes the queries
    and answers them: the task's class logits ``[M, ways]`` or the regression mean ``[M, y_dim]``."""

    def __init__(self, network: nn.Module, support: Mapping[str, Tensor], ways: int, task_type: str) -> None:
        super().__init__()
        self.network = frozen_copy(network)
        self.ways, self.task_type, self.names = ways, task_type, tuple(support)
        for name, value in support.items():
            self.register_buffer(f"support_{name}", value.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        support = {name: getattr(self, f"support_{name}") for name in self.names}
        out = self.network.answer(support, self.network.features(x[None]), self.ways, self.task_type)
        if self.task_type == "classification":
            return out[0, :, : self.ways]
        return self.network.gaussian(out)[0][0]
