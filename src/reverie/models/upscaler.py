"""reverie's built-in upscalers, x4 and x2: a small residual network ending in pixel shuffles.

Trained by this project on vector art rendered at low and high resolution, the x4 network turns
a 64 px emoji into a crisp 256 px one. The x2 network is the same network with one pixel
shuffle instead of two, trained from the x4's weights on the same art at half size; it does in
a third of the time what the x4 network then a halving did (reverie-mini's 128 px pictures
shown at 256 px), and comes closer to the true picture (benchmarks/eval_upscaler.py). Both
work on any picture, but they learned flat-coloured art.

It runs in channels-last memory order, and in bf16 where the CPU computes bf16 natively
(AVX512-BF16, AMX): four 128 px pictures to 512 px take 0.47 s instead of 1.39 s on the
project's 2-core AMD EPYC, and the pixels differ from fp32's by less than half a level.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..device import cpu_has_native_bf16
from ..pixels import to_levels, to_picture, to_tensor
from .upscaler_files import UPSCALER_DIR, weights_name
from .weights import load_weights, save_weights

SCALES = (2, 4)


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def _doubling(width: int) -> list[nn.Module]:
    """One stage that doubles the picture's side: features to 4x as many, then a pixel shuffle."""
    return [nn.Conv2d(width, width * 4, 3, padding=1), nn.PixelShuffle(2), nn.SiLU()]


class Upscaler(nn.Module):
    """x`scale` (2 or 4): [N,3,h,w] in [-1,1] -> [N,3,scale*h,scale*w]; learns the residual over
    bicubic upsampling. One pixel-shuffle stage doubles the side; the x2 network's layers are
    the x4's, less its second stage (`up.0` to `up.2` the same, its last convolution `up.3`
    where the x4's is `up.6`)."""

    def __init__(self, width: int = 48, blocks: int = 6, scale: int = 4):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"the upscaler doubles its side once or twice: scale 2 or 4, not {scale}")
        self.scale = scale
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[_Residual(width) for _ in range(blocks)])
        doublings = [layer for _ in range(int(math.log2(scale))) for layer in _doubling(width)]
        self.up = nn.Sequential(*doublings, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        features = self.head(x)
        return base + self.up(features + self.body(features))


# -- tiles: memory bounded by a tile, whatever the picture's size --------------------------------
TILE = 192  # input pixels per side of a tile's own area, at most (the network also sees its context)
BLEND = 8  # input pixels over which neighbouring tiles cross-fade; their overlap is at least this
ACTIVATION_BYTES = 8 * 1024  # peak working memory per input pixel of one pass (measured: 6.4 KiB in fp32)


def reach(model: Upscaler) -> int:
    """Input pixels the network looks at on each side of a pixel: the radius of its convolutions'
    receptive field (or the bicubic base's two pixels). A tile with this much context around it
    comes out as the same part of the whole picture would."""
    radius, scale = 0.0, 1
    for module in model.modules():
        if isinstance(module, nn.PixelShuffle):
            scale *= module.upscale_factor
        elif isinstance(module, nn.Conv2d):
            radius += (module.kernel_size[0] // 2) * module.dilation[0] / scale
    return max(2, math.ceil(radius))


def wrap_margin(model: Upscaler) -> int:
    """Pixels of a seamless tile wrapped around it before `model` enlarges it
    (seamless.enlarged_seamlessly): wider than the network and the bicubic base look (`reach`),
    so that its middle, cut out, is what a circular pass would give."""
    return reach(model) + 4


@cache
def _default_reach() -> int:
    return reach(Upscaler())


def _spans(length: int, tile: int, blend: int) -> list[tuple[int, int]]:
    """[start, end) of the tiles along one side: as few as cover `length` with at most `tile`
    pixels each, all of one size, neighbours overlapping by at least `blend`."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - blend) / (tile - blend))
    size = math.ceil((length + (count - 1) * blend) / count)
    step = (length - size) / (count - 1)
    return [(round(i * step), round(i * step) + size) for i in range(count)]


def _weights(spans: list[tuple[int, int]], length: int, blend: int, scale: int) -> list[torch.Tensor]:
    """Each tile's cross-fade weights along one side, in output pixels: ramps over `blend` input
    pixels at the edges it shares with a neighbour, normalized so that every pixel's sum is 1."""
    ramp = blend * scale
    weights, total = [], torch.zeros(length * scale)
    for start, end in spans:
        x = torch.arange(start * scale, end * scale, dtype=torch.float32) + 0.5
        weight = torch.ones_like(x)
        if start > 0:
            weight = torch.minimum(weight, (x - start * scale) / ramp)
        if end < length:
            weight = torch.minimum(weight, (end * scale - x) / ramp)
        weights.append(weight)
        total[start * scale : end * scale] += weight
    return [weight / total[start * scale : end * scale] for (start, end), weight in zip(spans, weights)]


def _forward(model: Upscaler, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16()):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def _tiled(model: Upscaler, x: torch.Tensor, tile: int) -> torch.Tensor:
    """[1,3,h,w] in [-1,1] -> uint8 [4h,4w,3], a tile (with its context) at a time.

    The tiles of a row are cross-faded into a strip; each strip is cross-faded into the rows
    still open, and rows no later strip reaches are written out as levels at once: at any time
    only one tile's activations and about two strips of floats are held, besides the result.
    """
    scale, context = model.scale, reach(model)
    _, _, height, width = x.shape
    rows, cols = _spans(height, tile, BLEND), _spans(width, tile, BLEND)
    row_weights, col_weights = _weights(rows, height, BLEND, scale), _weights(cols, width, BLEND, scale)
    out = torch.empty((height * scale, width * scale, 3), dtype=torch.uint8)
    open_rows, top = torch.zeros(3, 0, width * scale), 0  # output rows [top, top + len) still summing
    for r, (y0, y1) in enumerate(rows):
        strip = torch.zeros(3, (y1 - y0) * scale, width * scale)
        for c, (x0, x1) in enumerate(cols):
            a0, a1 = max(0, y0 - context), min(height, y1 + context)
            b0, b1 = max(0, x0 - context), min(width, x1 + context)
            y = _forward(model, x[:, :, a0:a1, b0:b1])[0]
            y = y[:, (y0 - a0) * scale : (y1 - a0) * scale, (x0 - b0) * scale : (x1 - b0) * scale]
            strip[:, :, x0 * scale : x1 * scale] += y * col_weights[c]
        strip *= row_weights[r][:, None]
        end = y1 * scale
        if open_rows.shape[1] < end - top:
            grow = torch.zeros(3, end - top - open_rows.shape[1], width * scale)
            open_rows = torch.cat([open_rows, grow], dim=1)
        open_rows[:, y0 * scale - top : end - top] += strip
        done = rows[r + 1][0] * scale if r + 1 < len(rows) else height * scale
        out[top:done] = to_levels(open_rows[:, : done - top], -1.0, 1.0).permute(1, 2, 0)
        open_rows, top = open_rows[:, done - top :], done
    return out


@torch.no_grad()
def upscale_image(model: Upscaler, image: Image.Image, tile: int = TILE) -> Image.Image:
    """`image` `model.scale` times larger. A picture with a side past `tile` pixels is done in
    overlapping tiles (`_tiled`), each with `reach(model)` pixels of context, so that memory is
    bounded by a tile and the result matches a whole pass to within a level."""
    x = to_tensor(image, -1.0, 1.0)
    if max(x.shape[-2:]) <= tile:
        return to_picture(_forward(model, x), -1.0, 1.0)
    return Image.fromarray(_tiled(model, x, tile).numpy())


def upscale_peak_bytes(width: int, height: int, tile: int = TILE) -> int:
    """A generous estimate of the memory `upscale_image` needs for a width x height picture:
    one tile's pass, the strips of floats being summed, and the result (as levels and as a
    picture). Measured: 435 MiB for 512 px (this says 481), 578 MiB for 1024 px (625)."""
    context = _default_reach()
    if max(width, height) <= tile:
        return ACTIVATION_BYTES * width * height + 2 * 3 * 16 * width * height
    tile_pixels = (min(height, tile) + 2 * context) * (min(width, tile) + 2 * context)
    strips = 4 * 3 * 4 * (4 * tile) * (4 * width)  # float32 RGB strips: the one made, the rows open, their copies
    result = 2 * 3 * 16 * width * height  # uint8 levels, then the picture made from them
    return ACTIVATION_BYTES * tile_pixels + strips + result


def save_upscaler(model: Upscaler, folder: Path = UPSCALER_DIR, half: bool = True) -> Path:
    save_weights(model, folder / weights_name(model.scale), half)
    return folder


def load_upscaler(folder: Path = UPSCALER_DIR, scale: int = 4) -> Upscaler:
    model = load_weights(Upscaler(scale=scale), folder / weights_name(scale), f"the built-in x{scale} upscaler")
    return model.to(memory_format=torch.channels_last)
