"""How a task source turns an image file into the tensor a learner was trained on, as plain data: recorded with the
learner, so a user's own images are prepared as the training images were."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class ImagePreprocessing:
    """Decode, resize (Lanczos), optionally invert and normalize an image to the learner's input ``[C, s, s]``.

    Task sources with images describe theirs ([OmniglotTasks][lightning_meta.OmniglotTasks]: 1 channel, inverted so
    ink is 1; miniImageNet, CIFAR-FS, ...: RGB normalized by the dataset's mean and std), and the learner records it
    in its checkpoint (``learner.task_info["preprocessing"]``).

    Args:
        image_size: the side ``s`` of the square input.
        channels: 1 (grayscale) or 3 (RGB).
        invert: ``255 - pixel`` before scaling to ``[0, 1]`` (Omniglot: dark ink on white becomes 1 on 0).
        mean: per-channel mean subtracted after scaling (``None``: none).
        std: per-channel standard deviation divided by (with ``mean``).

    Examples:
        >>> from PIL import Image
        >>> prep = ImagePreprocessing(image_size=4, channels=1, invert=True)
        >>> prep(Image.new("L", (8, 8), color=255)).shape  # a white image: no ink
        torch.Size([1, 4, 4])
        >>> ImagePreprocessing.from_dict(prep.to_dict()) == prep
        True
    """

    image_size: int
    channels: int = 3
    invert: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
                if len(getattr(self, name)) != self.channels:
                    raise ValueError(f"{name} needs {self.channels} values (one per channel), got {value!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean and std go together; got mean={self.mean!r}, std={self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers), as a checkpoint stores it."""
        out = asdict(self)
        out["mean"] = None if self.mean is None else list(self.mean)
        out["std"] = None if self.std is None else list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessing:
        return cls(**dict(data))

    def __call__(self, image: Any) -> torch.Tensor:
        """One image (a path or a ``PIL.Image``) as ``[channels, image_size, image_size]`` float32."""
        from PIL import Image

        if isinstance(image, str | os.PathLike):
            image = open_image(image)
        image = image.convert("L" if self.channels == 1 else "RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), resample=Image.LANCZOS)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        if self.invert:
            pixels = 255 - pixels  # in uint8, as the task source inverts: the same floats
        x = pixels.view(self.image_size, self.image_size, self.channels).permute(2, 0, 1).float().div_(255.0)
        if self.mean is not None:
            x = (x - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)
        return x.contiguous()

    def stack(self, images: Sequence[Any]) -> torch.Tensor:
        """Several images (paths or ``PIL.Image``\\ s) as ``[M, channels, image_size, image_size]``."""
        return torch.stack([self(image) for image in images])


def open_image(path: str | os.PathLike):
    """``PIL.Image.open(path)``, decoded now; an unreadable file is a ``ValueError`` naming its path."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(path)) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read the image {str(path)!r}: {error}") from error
