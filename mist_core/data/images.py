"""Image tensors resized to the size an encoder sees."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_images", "to_uint8"]


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``images [N, 3, H, W]`` float -> ``[N, 3, *size]`` (``size`` is (height, width)).

    Bilinear with antialiasing, so a downscale averages every source pixel instead of
    sampling a few (aliasing would change the features with the image's resolution). Images
    already of that size are returned as they are.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 (nearest grey level), any shape."""
    return images.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
