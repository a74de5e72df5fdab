"""Random cutouts of the picture, as every CLIP-guided generator takes them.

CLIP scores one small square at a time. Scoring many random crops of random sizes (and
flips, and a little noise) instead of the whole picture keeps the optimizer from fooling the
guide with adversarial pixel patterns. All randomness comes from the dream's own generator,
so a run can be continued bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CutoutSettings:
    count: int = 32  # cutouts per guide per iteration
    power: float = 1.0  # >1 favours small cutouts (detail), <1 large ones (composition)
    augment: bool = True  # random flips and noise
    noise: float = 0.1  # the largest noise standard deviation, in pixel units


def _uniform(generator: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=generator)


def make_cutouts(image: torch.Tensor, size: int, settings: CutoutSettings, generator: torch.Generator) -> torch.Tensor:
    """image [1,3,H,W] in [0,1] -> [count,3,size,size], differentiable with respect to image."""
    height, width = image.shape[-2:]
    largest = min(height, width)
    smallest = min(largest, size)
    cutouts = []
    for _ in range(settings.count):
        side = int(_uniform(generator).item() ** settings.power * (largest - smallest) + smallest)
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        crop = image[:, :, top : top + side, left : left + side]
        cutouts.append(F.adaptive_avg_pool2d(crop, size))
    batch = torch.cat(cutouts)
    if settings.augment:
        flips = _uniform(generator, settings.count) < 0.5
        batch = torch.where(flips.view(-1, 1, 1, 1).to(batch.device), batch.flip(-1), batch)
        scale = _uniform(generator, settings.count).view(-1, 1, 1, 1) * settings.noise
        noise = torch.randn(batch.shape, generator=generator) * scale
        batch = batch + noise.to(batch)
    return batch
