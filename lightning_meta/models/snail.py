"""SNAIL (Mishra et al., 2018): causal temporal convolutions interleaved with causal attention, over a task's
support set read as a sequence, with each query appended as the last element of its own sequence."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_meta.checks import check_positive


def _shift(x: Tensor, by: int) -> Tensor:
    """``x [T, S, D]`` delayed by ``by`` positions along the sequence (zeros enter at the start)."""
    if by >= x.shape[1]:
        return torch.zeros_like(x)
    return torch.cat([x.new_zeros(x.shape[0], by, x.shape[2]), x[:, : x.shape[1] - by]], 1)


class DenseBlock(nn.Module):
    """The paper's ``DenseBlock(R, D)``: a causal convolution with kernel size 2 and dilation ``R`` into ``D``
    filters and gate (``tanh(x_f) * sigmoid(x_g)``), concatenated to its input.

    The kernel-2 causal convolution at position ``t`` reads positions ``t`` and ``t - R``: ``now`` holds the
    weights of tap ``t``, ``past`` those of tap ``t - R``.
    """

    def __init__(self, in_features: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.dilation, self.filters = dilation, filters
        self.now = nn.Linear(in_features, 2 * filters)
        self.past = nn.Linear(in_features, 2 * filters, bias=False)

    def _gate(self, pre: Tensor) -> Tensor:
        xf, xg = pre.split(self.filters, -1)
        return torch.tanh(xf) * torch.sigmoid(xg)

    def forward(self, support: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """``support [T, S, D]`` (positions ``0..S-1``), ``queries [T, Q, D]`` (each at position ``S`` of its own
        sequence): both with ``filters`` more features."""
        s = support.shape[1]
        out_s = self._gate(self.now(support) + self.past(_shift(support, self.dilation)))
        pre_q = self.now(queries)
        if self.dilation <= s:  # the tap t - R of position S is support item S - R
            pre_q = pre_q + self.past(support[:, s - self.dilation])[:, None]
        return torch.cat([support, out_s], -1), torch.cat([queries, self._gate(pre_q)], -1)


class TCBlock(nn.Module):
    """The paper's ``TCBlock(T, D)``: dense blocks with dilations ``2, 4, ..., 2^ceil(log2 T)``, exponentially
    growing receptive fields over a sequence of length ``T``. As written in the paper, the last dilation can
    reach past the start of every sequence (8 for ``T = 6``); that block's past tap then reads only zeros."""

    def __init__(self, in_features: int, sequence_length: int, filters: int) -> None:
        super().__init__()
        depth = max(1, math.ceil(math.log2(sequence_length)))
        self.blocks = nn.ModuleList(
            DenseBlock(in_features + i * filters, 2 ** (i + 1), filters) for i in range(depth)
        )
        self.out_features = in_features + depth * filters

    def forward(self, support: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            support, queries = block(support, queries)
        return support, queries


class AttentionBlock(nn.Module):
    """The paper's ``AttentionBlock(key_size, value_size)``: single-head causal soft attention (scaled by
    ``sqrt(key_size)``), its read concatenated to the input. A support item attends to itself and the items
    before it; a query attends to every support item and itself, never to another query."""

    def __init__(self, in_features: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.key, self.query = nn.Linear(in_features, key_size), nn.Linear(in_features, key_size)
        self.value = nn.Linear(in_features, value_size)
        self.scale = 1.0 / math.sqrt(key_size)
        self.out_features = in_features + value_size

    def forward(self, support: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        s = support.shape[1]
        keys, values = self.key(support), self.value(support)  # [T, S, k], [T, S, v]
        logits = self.query(support) @ keys.transpose(1, 2) * self.scale  # [T, S, S]
        future = torch.ones(s, s, dtype=torch.bool, device=support.device).triu(1)
        read_s = logits.masked_fill(future, float("-inf")).softmax(-1) @ values
        q_query = self.query(queries)
        to_support = q_query @ keys.transpose(1, 2) * self.scale  # [T, Q, S]
        to_self = (q_query * self.key(queries)).sum(-1, keepdim=True) * self.scale  # [T, Q, 1]
        weights = torch.cat([to_support, to_self], -1).softmax(-1)
        read_q = weights[..., :s] @ values + weights[..., s:] * self.value(queries)
        return torch.cat([support, read_s], -1), torch.cat([queries, read_q], -1)


class SNAIL(nn.Module):
    """SNAIL's few-shot classification stack (Mishra et al., 2018, "A Simple Neural Attentive Meta-Learner",
    Appendix B, Omniglot and miniImageNet): ``AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128),
    TCBlock(T, 128), AttentionBlock(512, 256)`` over the sequence of support items (embedding and label)
    followed by the query (embedding, no label), ``T = N * K + 1``.

    Every query is the last element of its own sequence, as in the paper; the support prefix is shared, so one
    call reads the support set once and answers all the queries of a task, and no query sees another query.
    Causality: a support item's features depend on that item and the items before it only.

    Args:
        in_features: the width of a token (embedding and label).
        sequence_length: ``T`` of the paper (support size + 1): sets the depth of each TC block
            (``ceil(log2 T)`` dense blocks). Any support size runs; this sets the receptive field.
        filters: the dense blocks' filters ``D`` (128 in the paper).
        attention: ``(key_size, value_size)`` of the three attention blocks.

    Examples:
        >>> import torch
        >>> snail = SNAIL(in_features=69, sequence_length=6)
        >>> support, queries = snail(torch.randn(2, 5, 69), torch.randn(2, 75, 69))
        >>> queries.shape, snail.out_features
        (torch.Size([2, 75, 1253]), 1253)
    """

    def __init__(
        self,
        in_features: int,
        sequence_length: int,
        filters: int = 128,
        attention: tuple[tuple[int, int], ...] = ((64, 32), (256, 128), (512, 256)),
    ) -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("sequence_length (support size + 1)", sequence_length, 2)
        check_positive("filters", filters)
        pairs = isinstance(attention, tuple | list) and all(isinstance(p, tuple | list) for p in attention)
        if not pairs or len(attention) != 3 or not all(len(p) == 2 for p in attention):
            raise ValueError(f"attention must be three (key_size, value_size) pairs, got {attention!r}")
        for i, (key_size, value_size) in enumerate(attention):
            check_positive(f"attention[{i}] key_size", key_size)
            check_positive(f"attention[{i}] value_size", value_size)
        layers: list[nn.Module] = []
        width = in_features
        for i, (key_size, value_size) in enumerate(attention):
            layers.append(AttentionBlock(width, key_size, value_size))
            width = layers[-1].out_features
            if i < 2:
                layers.append(TCBlock(width, sequence_length, filters))
                width = layers[-1].out_features
        self.layers = nn.ModuleList(layers)
        self.out_features = width

    def forward(self, support: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """``(support features [T, S, out], query features [T, Q, out])`` of tokens ``[T, S, in]``, ``[T, Q, in]``."""
        for layer in self.layers:
            support, queries = layer(support, queries)
        return support, queries
