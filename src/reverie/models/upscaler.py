"""reverie's built-in 4x upscaler: a small residual network ending in pixel shuffles.

Trained by this project on vector art rendered at low and high resolution, it turns a 64 px
emoji into a crisp 256 px one. It works on any picture, but it learned flat-coloured art.

It runs in channels-last memory order, and in bf16 where the CPU computes bf16 natively
(AVX512-BF16, AMX): four 128 px pictures to 512 px take 0.47 s instead of 1.39 s on the
project's 2-core AMD EPYC, and the pixels differ from fp32's by less than half a level.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..pixels import to_picture, to_tensor
from .weights import load_weights, save_weights

UPSCALER_DIR = Path(__file__).resolve().parent.parent / "builtin" / "upscaler"
WEIGHTS = "upscaler.safetensors"


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class Upscaler(nn.Module):
    """x4: [N,3,h,w] in [-1,1] -> [N,3,4h,4w]; learns the residual over bicubic upsampling."""

    scale = 4

    def __init__(self, width: int = 48, blocks: int = 6):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[_Residual(width) for _ in range(blocks)])
        self.up = nn.Sequential(
            nn.Conv2d(width, width * 4, 3, padding=1), nn.PixelShuffle(2), nn.SiLU(),
            nn.Conv2d(width, width * 4, 3, padding=1), nn.PixelShuffle(2), nn.SiLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        features = self.head(x)
        return base + self.up(features + self.body(features))


@cache
def _native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@torch.no_grad()
def upscale_image(model: Upscaler, image: Image.Image) -> Image.Image:
    x = to_tensor(image, -1.0, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_native_bf16()):
        y = model(x.contiguous(memory_format=torch.channels_last))
    return to_picture(y, -1.0, 1.0)


def save_upscaler(model: Upscaler, folder: Path = UPSCALER_DIR, half: bool = True) -> Path:
    save_weights(model, folder / WEIGHTS, half)
    return folder


def load_upscaler(folder: Path = UPSCALER_DIR) -> Upscaler:
    model = load_weights(Upscaler(), folder / WEIGHTS, "the built-in upscaler")
    return model.to(memory_format=torch.channels_last)
