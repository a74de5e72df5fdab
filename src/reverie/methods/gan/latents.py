"""A seed's noise vector, and the spherical walk between noise vectors.

Each picture's z comes from its own CPU `torch.Generator` seeded with its seed, so a seed gives
the same z alone or in a batch, on any device. Gaussian z live near a sphere; walking along it
(slerp) keeps every frame a typical z, where a straight line would pass through the
low-norm middle and draw washed-out pictures.
"""

from __future__ import annotations

import torch


def seed_latent(seed: int, dim: int) -> torch.Tensor:
    """z [1, dim] for `seed`, drawn on the CPU."""
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(seed))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from a (t=0) to b (t=1), rows of [N, dim]; linear when they are parallel."""
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    cos = (a_unit * b_unit).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    if float(sin.abs().min()) < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / sin


def walk(keys: list[torch.Tensor], frames: int) -> list[tuple[int, float]]:
    """(key index, fraction toward the next key) for each frame of a loop through `keys`,
    `frames` frames per step from a key to the next, back to the first."""
    return [(i, f / frames) for i in range(len(keys)) for f in range(frames)]
