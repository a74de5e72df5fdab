"""Where finished pictures go on disk, and under what names."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .grid import make_grid
from .metadata import save_png

_NUMBERED = re.compile(r"^(\d{5})-")


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe short form of a prompt."""
    words = re.sub(r"[^\w\s-]", "", text.lower()).split()
    return "-".join(words)[:limit].strip("-") or "untitled"


def next_number(outdir: Path) -> int:
    """The next free running number in `outdir` (files are NNNNN-seed-slug.png)."""
    numbers = [int(m.group(1)) for p in outdir.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_image(image: Image.Image, outdir: Path, seed: int, prompt: str, parameters: str, metadata: dict) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{next_number(outdir):05d}-{seed}-{slug(prompt)}.png"
    return save_png(image, path, parameters, metadata)


def save_grid(images: list[Image.Image], outdir: Path, prompt: str, parameters: str, metadata: dict) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    grids = outdir / "grids"
    grids.mkdir(exist_ok=True)
    path = grids / f"{next_number(grids):05d}-grid-{slug(prompt)}.png"
    return save_png(make_grid(images), path, parameters, metadata)
