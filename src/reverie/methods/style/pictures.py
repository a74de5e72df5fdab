"""Content and style pictures at the size the transfer works at."""

from __future__ import annotations

from PIL import Image

from ..diffusion.images import load_image, to_rgb


def working_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) with the longest side `longest`, the aspect kept (each side at least 16)."""
    width, height = size
    scale = longest / max(width, height)
    return max(16, round(width * scale)), max(16, round(height * scale))


def working_picture(reference, longest: int, field: str = "content_image") -> Image.Image:
    """A content or style picture (`field` names it in errors) as RGB, transparency on white, its
    longest side `longest`: style pictures at the content's scale, so brush strokes keep their
    size relative to the picture."""
    picture = to_rgb(load_image(reference, field))
    return picture.resize(working_size(picture.size, longest), Image.LANCZOS)
