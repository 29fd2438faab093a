"""Parameter dicts: which tensors an inner loop adapts, and handing a computed meta-gradient to ``backward``."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import Tensor, nn

Params = dict[str, Tensor]


def select_adapted(model: nn.Module, adapt: str | Sequence[str], include_frozen: bool = False) -> list[str]:
    """Names of the parameters the inner loop adapts: ``"all"``, ``"head"`` (ANIL: the last child module with
    parameters) or ``fnmatch`` patterns over the parameter names, of those that require grad (a frozen tensor,
    ``requires_grad_(False)``, is not adapted; ``include_frozen=True`` keeps them, for callers that filter at each
    step). A selection of frozen tensors only is a ``ValueError`` naming them.

    Examples:
        >>> from lightning_meta.models import MLP
        >>> select_adapted(MLP(), "head")
        ['head.weight', 'head.bias']
    """
    chosen = _matching(model, adapt)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if chosen and not trainable.intersection(chosen):
        raise frozen_selection_error(adapt, chosen)
    return chosen if include_frozen else [n for n in chosen if n in trainable]


def frozen_selection_error(adapt: str | Sequence[str], names: Sequence[str], who: str = "") -> ValueError:
    """The error for an ``adapt`` selection whose tensors are all frozen (at construction or at a step)."""
    return ValueError(f"{who}adapt={adapt!r} selects only frozen tensors (requires_grad=False): {list(names)}; "
                      "unfreeze some of them or adapt others")


def children_with_parameters(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``module``'s direct children that hold parameters, in order (the last one is its head)."""
    return [(name, child) for name, child in module.named_children() if any(True for _ in child.parameters())]


def _matching(model: nn.Module, adapt: str | Sequence[str]) -> list[str]:
    """The parameters ``adapt`` names, frozen or not."""
    names = [n for n, _ in model.named_parameters()]
    if adapt == "all":
        return names
    if adapt == "head":
        children = children_with_parameters(model)
        if not children:
            raise ValueError("adapt='head' needs a model with child modules; give name patterns instead")
        return [n for n in names if n.startswith(children[-1][0] + ".")]
    patterns = [adapt] if isinstance(adapt, str) else list(adapt)
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"adapt={adapt!r} matches no parameter; use 'all', 'head' or patterns over {names}")
    return chosen


def as_gradient_loss(params: Params, grads: Params, value: Tensor) -> Tensor:
    """A scalar whose value is ``value`` and whose gradient with respect to each ``params[n]`` is ``grads[n]``:
    hands a computed meta-gradient to Lightning's ``backward`` (AMP scaling, accumulation, DDP all-reduce).

    Examples:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> loss = as_gradient_loss({"w": w}, {"w": torch.tensor([0.5, -1.0])}, torch.tensor(3.0))
        >>> loss.backward()
        >>> loss.item(), w.grad
        (3.0, tensor([ 0.5000, -1.0000]))
    """
    surrogate = sum((p * grads[n].detach()).sum() for n, p in params.items())
    return surrogate - surrogate.detach() + value.detach()
