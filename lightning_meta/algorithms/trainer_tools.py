"""What Lightning's tools expect of a LightningModule, for the learners: a ``learning_rate`` the LR finder can read
and set (kept inside the injected optimizer factory) and a ``backbone`` for ``BackboneFinetuning``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_meta.functional.params import children_with_parameters

OptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]


def optimizer_lr(factory: OptimizerFactory) -> float:
    """The learning rate ``factory`` builds its optimizer with: a ``partial``'s ``lr`` keyword, else the first param
    group's of an optimizer it builds over a one-element probe.

    Examples:
        >>> optimizer_lr(partial(torch.optim.SGD, lr=0.25)), optimizer_lr(torch.optim.Adam)
        (0.25, 0.001)
    """
    if isinstance(factory, partial) and "lr" in factory.keywords:
        return float(factory.keywords["lr"])
    return float(factory([nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"])


class OptimizerWithLR:
    """``factory`` whose optimizers start at ``lr`` in every param group (for factories that do not take ``lr`` as a
    keyword, e.g. a lambda).

    Examples:
        >>> opt = OptimizerWithLR(lambda params: torch.optim.SGD(params, lr=0.1), 0.5)([nn.Parameter(torch.zeros(1))])
        >>> opt.param_groups[0]["lr"], opt.defaults["lr"]
        (0.5, 0.5)
    """

    def __init__(self, factory: OptimizerFactory, lr: float) -> None:
        self.factory, self.lr = factory, lr

    def __call__(self, params: Iterable[Tensor]) -> Optimizer:
        optimizer = self.factory(params)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        optimizer.defaults["lr"] = self.lr
        return optimizer

    def __repr__(self) -> str:
        name = getattr(self.factory, "__qualname__", None) or repr(self.factory)
        return f"OptimizerWithLR({name}, lr={self.lr!r})"


def with_lr(factory: OptimizerFactory, lr: float) -> OptimizerFactory:
    """``factory`` with its learning rate replaced by ``lr``: a ``partial`` (what Python code and LightningCLI configs
    give) with its ``lr`` keyword replaced, anything else wrapped in an ``OptimizerWithLR``.

    Examples:
        >>> with_lr(partial(torch.optim.SGD, lr=0.1, momentum=0.9), 0.3).keywords
        {'lr': 0.3, 'momentum': 0.9}
    """
    if isinstance(factory, partial) and "lr" in factory.keywords:
        return partial(factory.func, *factory.args, **{**factory.keywords, "lr": lr})
    if isinstance(factory, OptimizerWithLR):
        factory = factory.factory
    return OptimizerWithLR(factory, lr)


def body_of(module: nn.Module) -> nn.Module:
    """``module`` without its head: its children with parameters but the last one (one module, or a ``ModuleList``
    of several); a module with a single such child is looked into. ``AttributeError`` if there is no body.

    Examples:
        >>> from lightning_meta.models import MLP, Conv4
        >>> mlp = MLP()
        >>> body_of(mlp) is mlp.body
        True
        >>> len(body_of(Conv4(embed_only=True)))  # the first three of the four conv blocks
        3
    """
    children = [child for _, child in children_with_parameters(module)]
    if len(children) == 1:
        return body_of(children[0])
    if not children:
        raise AttributeError(f"{type(module).__name__} has no child modules to split into a backbone and a head")
    return children[0] if len(children) == 2 else nn.ModuleList(children[:-1])
