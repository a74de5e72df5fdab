"""Making pictures larger with the built-in 4x upscaler (x2 is x4, then halved)."""

from __future__ import annotations

from PIL import Image

from ..models.upscaler import Upscaler, upscale_image


def upscale_pictures(pictures: list[Image.Image], factor: int, model: Upscaler) -> list[Image.Image]:
    """Each picture `factor` times larger (1, 2 or 4)."""
    if factor == 1:
        return pictures
    larger = [upscale_image(model, picture) for picture in pictures]
    if factor == 2:
        larger = [img.resize((img.width // 2, img.height // 2), Image.LANCZOS) for img in larger]
    return larger
