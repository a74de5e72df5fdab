"""Seeded procedural "paintings" for benchmarks/style.py: pictures with a strong, distinctive
texture (brush strokes, stripes, mosaic), drawn with numpy and PIL so that no file is needed.
The tests draw their own, different pictures: nothing here is tuned on by a test."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def brush_strokes(size: int = 256, seed: int = 0) -> Image.Image:
    """Short thick strokes in a warm/cool palette, all leaning one way, as a loose oil sketch."""
    rng = np.random.default_rng(seed)
    palette = [(32, 64, 160), (240, 200, 40), (220, 90, 30), (40, 140, 180), (250, 240, 210), (20, 30, 60)]
    picture = Image.new("RGB", (size, size), palette[0])
    draw = ImageDraw.Draw(picture)
    for _ in range(size * 6):
        x, y = rng.uniform(0, size, 2)
        angle = 0.6 + rng.normal(0, 0.25)
        length = rng.uniform(size / 24, size / 10)
        dx, dy = math.cos(angle) * length, math.sin(angle) * length
        colour = tuple(int(c) for c in np.clip(np.array(palette[rng.integers(len(palette))]) + rng.normal(0, 18, 3), 0, 255))
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=int(rng.integers(3, max(4, size // 40))))
    return picture.filter(ImageFilter.SMOOTH)


def stripes(size: int = 256, seed: int = 1) -> Image.Image:
    """Wavy black and red bands, a bold op-art pattern."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    phase = np.sin(2 * np.pi * (x * 1.5 + rng.uniform())) * 0.08
    bands = (np.sin(2 * np.pi * (y + phase) * 11) > 0)[..., None]
    array = np.where(bands, np.array([200, 30, 40]), np.array([15, 15, 20])).astype(np.float32)
    array += rng.normal(0, 6, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def mosaic(size: int = 256, seed: int = 2) -> Image.Image:
    """Irregular tiles (Voronoi cells) in greens and golds with dark grout."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (90, 2))
    colours = np.array([(40, 120, 70), (200, 170, 60), (90, 170, 120), (230, 210, 140), (30, 80, 60)], np.float32)
    cell_colours = colours[rng.integers(len(colours), size=len(points))] + rng.normal(0, 12, (len(points), 3))
    y, x = np.mgrid[0:size, 0:size]
    distances = np.sqrt((x[..., None] - points[:, 0]) ** 2 + (y[..., None] - points[:, 1]) ** 2)
    nearest = np.sort(distances, axis=-1)
    array = cell_colours[np.argmin(distances, axis=-1)]
    grout = (nearest[..., 1] - nearest[..., 0]) < size / 100
    array[grout] = (25, 25, 25)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


STYLES = {"strokes": brush_strokes, "stripes": stripes, "mosaic": mosaic}
