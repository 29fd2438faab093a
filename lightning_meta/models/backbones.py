"""Standard few-shot backbones: Conv-4 (MAML / ProtoNets) and the sinusoid MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from lightning_meta.checks import check_choice, check_positive
from lightning_meta.models.spec import records_init_args

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """3x3 conv -> BatchNorm (optional) -> 2x2 max-pool -> ReLU.

    ``relu(maxpool(x)) == maxpool(relu(x))`` (both are monotone), so this is the classic
    conv-BN-ReLU-pool block; pooling first runs the ReLU on a quarter of the values.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.MaxPool2d(2), nn.ReLU()]
    return nn.Sequential(*layers)


@records_init_args
class Conv4(nn.Module):
    """Four ``[3x3 conv hidden, BatchNorm, ReLU, 2x2 max-pool]`` blocks and a linear head (pool and ReLU swapped,
    which computes the same function).

    The backbone of MAML and Prototypical Networks (64 filters). ``image_size`` sets the flattened feature
    size (28 -> 64 features, 84 -> 1600). With ``embed_only=True`` there is no head and the forward returns
    the features (for black-box encoders); ``out_features`` is then ignored.

    Examples:
        >>> import torch
        >>> Conv4(out_features=5)(torch.zeros(10, 1, 28, 28)).shape
        torch.Size([10, 5])
        >>> Conv4(embed_only=True).feature_dim
        64
    """

    def __init__(
        self,
        out_features: int = 5,
        in_channels: int = 1,
        hidden: int = 64,
        image_size: int = 28,
        batch_norm: bool = True,
        embed_only: bool = False,
    ) -> None:
        super().__init__()
        if not embed_only:
            check_positive("out_features", out_features)
        check_positive("in_channels", in_channels)
        check_positive("hidden", hidden)
        check_positive("image_size (four 2x2 poolings)", image_size, 16)
        check_choice("batch_norm", batch_norm, (True, False))
        check_choice("embed_only", embed_only, (True, False))
        channels = [in_channels, hidden, hidden, hidden, hidden]
        self.features = nn.Sequential(*(conv_block(a, b, batch_norm) for a, b in zip(channels, channels[1:])))
        side = image_size
        for _ in range(4):
            side //= 2
        self.feature_dim = hidden * side * side
        self.head = None if embed_only else nn.Linear(self.feature_dim, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x).flatten(1)
        return z if self.head is None else self.head(z)


@records_init_args
class MLP(nn.Module):
    """A fully connected network; the default is the MAML sinusoid regressor 1-40-40-1 with ReLU.

    Examples:
        >>> import torch
        >>> MLP()(torch.zeros(7, 1)).shape
        torch.Size([7, 1])
    """

    def __init__(
        self,
        in_features: int = 1,
        out_features: int = 1,
        hidden: Sequence[int] = (40, 40),
        activation: Literal["relu", "tanh"] = "relu",
    ) -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("out_features", out_features)
        if isinstance(hidden, str) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a sequence of layer widths (e.g. (40, 40)), got {hidden!r}")
        for i, width in enumerate(hidden):
            check_positive(f"hidden[{i}]", width)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
