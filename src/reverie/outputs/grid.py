"""Contact sheets: many pictures in one image, optionally labelled like an X/Y plot."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

INK = (0, 0, 0)
PAPER = (255, 255, 255)
EMPTY = (230, 230, 230)  # a cell that was not made (a stopped grid)


def make_grid(images: Sequence[Image.Image | None], columns: int | None = None, gap: int = 2, *,
              column_labels: Sequence[str] = (), row_labels: Sequence[str] = (), title: str = "") -> Image.Image:
    """Lay `images` out in rows; `columns` defaults to a near-square layout.

    With labels (an X/Y plot) each column gets its label above it, each row its label at its
    left, and `title` goes above everything: the labels take a margin at the top and one at the
    left, so the pictures keep every pixel, at (left + col * (w + gap), top + row * (h + gap)).
    A None in `images` is a cell that was not made: drawn as a grey square.
    """
    made = [img for img in images if img is not None]
    if not made:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(img.width for img in made)
    cell_h = max(img.height for img in made)
    font = label_font(cell_w, cell_h)
    column_lines = [wrap(text, font, cell_w - 4) for text in column_labels]
    row_lines = [wrap(text, font, cell_w) for text in row_labels]
    title_lines = wrap(title, font, max(columns * cell_w, 2 * cell_w)) if title else []
    line_h = _line_height(font)
    pad = max(4, line_h // 3)
    top = (len(title_lines) + max((len(lines) for lines in column_lines), default=0)) * line_h
    top = top + 2 * pad if top else 0
    left = max((font.getlength(line) for lines in row_lines for line in lines), default=0)
    left = math.ceil(left) + 2 * pad if left else 0

    width = left + columns * cell_w + (columns - 1) * gap
    height = top + rows * cell_h + (rows - 1) * gap
    sheet = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(images):
        row, col = divmod(i, columns)
        x, y = left + col * (cell_w + gap), top + row * (cell_h + gap)
        if img is None:
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=EMPTY)
        else:
            sheet.paste(img.convert("RGB"), (x, y))
    y = pad
    for line in title_lines:
        draw.text((width / 2, y), line, fill=INK, font=font, anchor="ma")
        y += line_h
    for col, lines in enumerate(column_lines[:columns]):
        centre = left + col * (cell_w + gap) + cell_w / 2
        _lines(draw, lines, centre, top - pad - len(lines) * line_h, line_h, font)
    for row, lines in enumerate(row_lines[:rows]):
        middle = top + row * (cell_h + gap) + cell_h / 2
        _lines(draw, lines, left / 2, middle - len(lines) * line_h / 2, line_h, font)
    return sheet


def label_font(cell_w: int, cell_h: int) -> ImageFont.FreeTypeFont:
    """Pillow's own font (it ships with Pillow: nothing to find offline), sized to the cells."""
    return ImageFont.load_default(size=max(12, round(min(cell_w, cell_h) / 11)))


def wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` (a longer word keeps its own line)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + 2


def _lines(draw: ImageDraw.ImageDraw, lines: list[str], centre: float, y: float, line_h: int, font) -> None:
    for line in lines:
        draw.text((centre, y), line, fill=INK, font=font, anchor="ma")
        y += line_h
