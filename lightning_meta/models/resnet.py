"""ResNet-12, the few-shot backbone of MetaOptNet, FEAT and many ProtoNet re-implementations, and DropBlock."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.checks import check_choice, check_fraction, check_int_sequence, check_number, check_positive
from lightning_meta.models.spec import records_init_args

#: MetaOptNet's widths (Lee et al., 2019): 12.4 M parameters without a head
RESNET12_CHANNELS = (64, 160, 320, 640)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., 2018): drops contiguous ``block_size x block_size`` squares of each feature map
    instead of single activations, and rescales the kept ones by ``count / count_kept`` of the tensor (the
    expected activation is preserved). A no-op in eval mode and at ``drop_rate=0``.

    Block corners are drawn from the positions where a whole block fits, each with probability
    ``gamma = drop_rate / block_size**2 * H * W / ((H - block_size + 1) * (W - block_size + 1))``, so the
    expected number of dropped cells (counted with overlaps) is ``drop_rate * H * W``; overlapping blocks make
    the dropped fraction slightly smaller. ``block_size`` is clamped to the feature map's side.

    The mask is drawn with ``torch.rand``, so it follows the global RNG: seeded runs repeat, it works inside
    ``torch.func.functional_call`` (MAML's inner loop) and under ``torch.func.vmap`` with
    ``randomness="same"`` (every vmapped element gets the same mask, as MAML's ``vectorize=True`` runs it) or
    ``"different"`` (one mask each); vmap's default ``randomness="error"`` refuses any random op.

    Examples:
        >>> import torch
        >>> drop = DropBlock(drop_rate=0.2, block_size=3)
        >>> x = torch.ones(8, 4, 10, 10)
        >>> y = drop(x)
        >>> bool((y == 0).any()), round(float(y.mean()), 4)  # some blocks dropped, the mean kept
        (True, 1.0)
        >>> drop.eval()(x) is x
        True
    """

    def __init__(self, drop_rate: float = 0.1, block_size: int = 5) -> None:
        super().__init__()
        check_fraction("drop_rate", drop_rate)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        self.drop_rate, self.block_size = float(drop_rate), block_size

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}"

    def gamma(self, height: int, width: int) -> tuple[float, int]:
        """``(gamma, block size)`` for a ``height x width`` feature map: the corner probability and the block side
        after clamping to the map."""
        size = min(self.block_size, height, width)
        valid = (height - size + 1) * (width - size + 1)
        return min(1.0, self.drop_rate / size**2 * height * width / valid), size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        if x.dim() != 4:
            raise ValueError(f"DropBlock expects feature maps [N, C, H, W], got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        gamma, size = self.gamma(h, w)
        corners = torch.rand(n, c, h - size + 1, w - size + 1, device=x.device) < gamma
        # at least float32: a float16 count of the kept cells overflows past 65504
        dtype = torch.promote_types(x.dtype, torch.float32)
        # a cell is dropped when a block corner lies within size - 1 cells above and to its left
        dropped = F.max_pool2d(F.pad(corners.to(dtype), (size - 1,) * 4), size, stride=1)
        keep = 1.0 - dropped
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        return x * (keep * scale).to(x.dtype)  # x first: the product keeps x's memory format (channels-last)


class ResidualBlock(nn.Module):
    """One ResNet-12 block: three ``3x3 conv -> BatchNorm`` layers with LeakyReLU between them, a ``1x1 conv ->
    BatchNorm`` shortcut added before the last LeakyReLU, then a 2x2 max-pool and the optional ``drop``
    (Dropout or DropBlock), as in MetaOptNet's ``BasicBlock``. Convolutions have no bias (BatchNorm follows)."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.1,
                 drop: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.act = nn.LeakyReLU(negative_slope)
        self.pool = nn.MaxPool2d(2)
        self.drop = drop if drop is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.act(out + self.shortcut(x))
        return self.drop(self.pool(out))


@records_init_args
class ResNet12(nn.Module):
    """ResNet-12: four residual blocks of widths ``channels`` (default 64-160-320-640), each halving the
    resolution, then global average pooling (``feature_dim = channels[-1]``, 640) or flattening
    (``avg_pool=False``: ``channels[-1] * side**2``, 16000 at 84x84), and a linear head unless ``embed_only``.

    ResNet-12 came with TADAM (Oreshkin et al., 2018; widths 64-128-256-512); these are the widths of MetaOptNet
    (Lee et al., 2019), FEAT (Ye et al., 2020) and the ProtoNet re-implementations that followed them: 12.4 M
    parameters without the head. Each block is three ``3x3 conv, BatchNorm,
    LeakyReLU(0.1)`` layers with a ``1x1 conv + BatchNorm`` shortcut added before the last activation, and a
    2x2 max-pool. With ``drop_rate > 0`` the first two blocks end in Dropout and the last two in
    [DropBlock][lightning_meta.models.DropBlock] (Ghiasi et al., 2018) of side ``drop_block_size``, as MetaOptNet's
    code does (it uses ``drop_rate=0.1``, block 5 on miniImageNet, 2 on CIFAR-FS); the rate here is constant
    (MetaOptNet ramps DropBlock's up over its first 40000 forwards). Both are no-ops in eval mode.

    Works as MAML's learner: ``batch_norm="transductive"`` makes its 16 BatchNorms use batch statistics, and the
    dropout and DropBlock masks come from the global RNG inside the functional call (seeded runs repeat). The
    per-task loop draws masks per task; ``vectorize=True`` draws one per forward for all tasks of the meta-batch
    (MAML's vmap runs with ``randomness="same"``); ``meta_gradient="hvp"`` replays the forward pass's masks in its
    recomputations. With ``embed_only=True`` it is the encoder of [ProtoNet][lightning_meta.ProtoNet] or
    [BlackBoxAdaptation][lightning_meta.BlackBoxAdaptation] (which reads ``feature_dim``). Channels-last inputs
    give the same outputs.

    Args:
        out_features: the head's width (``ways``); ignored with ``embed_only``.
        in_channels: input channels (3 for RGB images).
        channels: the four blocks' widths.
        image_size: the input side; sets ``feature_dim`` without ``avg_pool`` (four floor-halvings: 84 -> 5) and
            must be at least 16.
        drop_rate: Dropout rate of blocks 1-2 and DropBlock rate of blocks 3-4 (0: none).
        drop_block_size: DropBlock's block side (clamped to the feature map).
        embed_only: no head; the forward returns the ``feature_dim`` features.
        avg_pool: global average pooling of the last feature map (else it is flattened).
        negative_slope: the LeakyReLU slope.

    Examples:
        >>> import torch
        >>> net = ResNet12(out_features=5, channels=(8, 16, 32, 64), image_size=32)
        >>> net(torch.zeros(10, 3, 32, 32)).shape
        torch.Size([10, 5])
        >>> ResNet12(embed_only=True).feature_dim, ResNet12(embed_only=True, avg_pool=False).feature_dim
        (640, 16000)

    References:
        K. Lee, S. Maji, A. Ravichandran, S. Soatto. Meta-Learning with Differentiable Convex Optimization
        (MetaOptNet). CVPR 2019. H.-J. Ye, H. Hu, D.-C. Zhan, F. Sha. Few-Shot Learning via Embedding Adaptation
        with Set-to-Set Functions (FEAT). CVPR 2020. G. Ghiasi, T.-Y. Lin, Q. V. Le. DropBlock: A regularization
        method for convolutional networks. NeurIPS 2018. B. Oreshkin, P. Rodriguez, A. Lacoste. TADAM:
        Task dependent adaptive metric for improved few-shot learning. NeurIPS 2018.
    """

    def __init__(
        self,
        out_features: int = 5,
        in_channels: int = 3,
        channels: Sequence[int] = RESNET12_CHANNELS,
        image_size: int = 84,
        drop_rate: float = 0.0,
        drop_block_size: int = 5,
        embed_only: bool = False,
        avg_pool: bool = True,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        channels = check_int_sequence("channels", channels, 4, RESNET12_CHANNELS)  # one width per residual block
        check_positive("in_channels", in_channels)
        if not embed_only:
            check_positive("out_features", out_features)
        check_positive("image_size (four 2x2 max-poolings)", image_size, 16)
        check_fraction("drop_rate", drop_rate)
        check_positive("drop_block_size", drop_block_size)
        check_choice("embed_only", embed_only, (True, False))
        check_choice("avg_pool", avg_pool, (True, False))
        check_number("negative_slope", negative_slope, 0.0, strict=False)
        self.channels, self.drop_rate, self.drop_block_size = channels, float(drop_rate), drop_block_size
        widths = (in_channels, *channels)
        blocks = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            drop = None
            if drop_rate > 0:
                drop = nn.Dropout(drop_rate) if i < 2 else DropBlock(drop_rate, drop_block_size)
            blocks.append(ResidualBlock(a, b, negative_slope, drop))
        self.blocks = nn.Sequential(*blocks)
        self.avg_pool = avg_pool
        side = image_size
        for _ in range(4):
            side //= 2
        self.feature_dim = channels[-1] if avg_pool else channels[-1] * side * side
        self.head = None if embed_only else nn.Linear(self.feature_dim, out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")  # as MetaOptNet
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        z = self.blocks(x)
        z = z.mean(dim=(2, 3)) if self.avg_pool else z.flatten(1)
        return z if self.head is None else self.head(z)

