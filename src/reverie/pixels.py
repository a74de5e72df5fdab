"""Pictures to tensors and back: the one conversion every part of reverie uses.

A tensor picture is float [N, 3, H, W] with values in [low, high] ([0, 1] by default, [-1, 1] for
autoencoders and the upscaler). Going back to 8-bit, values are clamped and rounded to the
nearest level, so a round trip of an 8-bit picture gives it back unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(pictures: Image.Image | list[Image.Image], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """One picture or a list of same-size pictures -> float [N, 3, H, W] in [low, high]."""
    pictures = [pictures] if isinstance(pictures, Image.Image) else pictures
    array = np.stack([np.asarray(picture.convert("RGB"), dtype=np.float32) for picture in pictures])
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return tensor * ((high - low) / 255.0) + low


def to_levels(tensor: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """float values in [low, high] -> uint8 levels, clamped and rounded to the nearest."""
    return ((tensor.detach().float().cpu() - low) * (255.0 / (high - low))).clamp(0, 255).round().to(torch.uint8)


def to_pictures(tensor: torch.Tensor, low: float = 0.0, high: float = 1.0) -> list[Image.Image]:
    """float [N, 3, H, W] (or [3, H, W]) in [low, high] -> 8-bit RGB pictures."""
    if tensor.dim() == 3:
        tensor = tensor[None]
    levels = to_levels(tensor, low, high)
    return [Image.fromarray(array) for array in levels.permute(0, 2, 3, 1).numpy()]


def to_picture(tensor: torch.Tensor, low: float = 0.0, high: float = 1.0) -> Image.Image:
    """The first picture of `tensor` (see `to_pictures`)."""
    return to_pictures(tensor[:1] if tensor.dim() == 4 else tensor, low, high)[0]
