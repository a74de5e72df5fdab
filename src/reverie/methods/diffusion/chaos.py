"""Midjourney's `--chaos` for a batch's starting noise, torch-free: both paths' (batches.py, compiled.py).

At chaos 100 (or without it) each picture starts from its own seed's noise. Below, each
picture's noise is slerped toward a noise the whole batch shares, drawn from the batch's first
seed on a stream no picture's own seed draws from (`CHAOS_STREAM`): at 0 the pictures are
variations of one picture, and they part as chaos grows. A function of the batch's seeds alone,
so the batch made again (`keep_only`, `--from`) makes it again exactly.
"""

from __future__ import annotations

import numpy as np

from ...request import MAX_SEED
from ...torch_noise import TorchCPUGenerator

# A batch's shared noise comes from its first seed plus this: a stream no picture's own seed draws from.
CHAOS_STREAM = MAX_SEED + 1


def chaos_mix(chaos: int) -> float:
    """How far each picture's noise goes from the batch's shared noise toward its own (slerp's t):
    0.2 at chaos 0 (two pictures' noises correlate by about cos(0.1 pi)^2 = 0.9: variations of one
    picture), 0.4 at 50 (0.66), 1 at 100 (each picture's own noise, as without chaos). Squared,
    because the pictures part quickly once their noises do."""
    return 0.2 + 0.8 * (chaos / 100) ** 2


def chaos_noise(noise: np.ndarray, first_seed: int, chaos: int) -> np.ndarray:
    """A batch's starting noise [N, C, h, w] (float32) with `chaos` (0..100): each picture's own
    `noise` slerped toward the noise the batch's first seed draws from its own stream."""
    if chaos >= 100:
        return noise
    shared = TorchCPUGenerator(first_seed + CHAOS_STREAM).randn(noise.shape[1:]).reshape(1, -1)
    own = noise.reshape(len(noise), -1)
    return _slerp(np.broadcast_to(shared, own.shape), own, chaos_mix(chaos)).reshape(noise.shape)


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from rows `a` (t=0) to rows `b` (t=1), float32; linear where they are parallel."""
    cos = np.clip(np.sum((a / np.linalg.norm(a, axis=-1, keepdims=True))
                         * (b / np.linalg.norm(b, axis=-1, keepdims=True)), axis=-1, keepdims=True), -1.0, 1.0)
    angle = np.arccos(cos)
    sin = np.sin(angle)
    if float(np.abs(sin).min()) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    return ((np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / sin).astype(np.float32)
