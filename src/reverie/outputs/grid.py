"""Contact sheets: many pictures in one image."""

from __future__ import annotations

import math

from PIL import Image


def make_grid(images: list[Image.Image], columns: int | None = None, gap: int = 2) -> Image.Image:
    """Lay `images` out in rows; `columns` defaults to a near-square layout."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(img.width for img in images)
    cell_h = max(img.height for img in images)
    sheet = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), "white")
    for i, img in enumerate(images):
        row, col = divmod(i, columns)
        sheet.paste(img.convert("RGB"), (col * (cell_w + gap), row * (cell_h + gap)))
    return sheet
