"""Prototypical Networks' classifier (Snell et al., 2017): class means of support embeddings, and logits that are
negative squared Euclidean distances to them. Pure functions over a meta-batch ``[T, ...]``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def class_prototypes(support_embeddings: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """``c_k = mean of the support embeddings of class k``: ``[T, S, D]``, labels ``[T, S]`` -> ``[T, ways, D]``.

    Raises a ``ValueError`` naming the task and class if some class of ``0..ways-1`` has no support example
    (its prototype would be 0/0).

    Examples:
        >>> import torch
        >>> e = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])
        >>> class_prototypes(e, torch.tensor([[0, 0, 1]]), ways=2)
        tensor([[[1., 0.],
                 [0., 4.]]])
    """
    one_hot = F.one_hot(support_y, ways).to(support_embeddings.dtype)  # [T, S, ways]
    counts = one_hot.sum(1)  # [T, ways]
    if bool((counts == 0).any()):
        task, k = (counts == 0).nonzero()[0].tolist()
        raise ValueError(f"class {k} of task {task} has no support example; every class 0..{ways - 1} needs one "
                         "to have a prototype")
    return one_hot.transpose(1, 2) @ support_embeddings / counts[..., None]


def prototypical_logits(support_embeddings: Tensor, support_y: Tensor, query_embeddings: Tensor, ways: int) -> Tensor:
    """``logits[t, q, k] = -||f(x_q) - c_k||^2``, ``[T, Q, ways]``: softmax over them is the ProtoNet posterior.

    Examples:
        >>> import torch
        >>> s = torch.tensor([[[0.0], [2.0]]])  # one task, 1-D embeddings, prototypes 0 and 2
        >>> prototypical_logits(s, torch.tensor([[0, 1]]), torch.tensor([[[1.0], [3.0]]]), ways=2)
        tensor([[[-1., -1.],
                 [-9., -1.]]])
    """
    prototypes = class_prototypes(support_embeddings, support_y, ways)
    return -(query_embeddings[:, :, None, :] - prototypes[:, None, :, :]).pow(2).sum(-1)
