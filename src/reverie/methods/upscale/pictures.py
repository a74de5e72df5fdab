"""Making pictures larger with the built-in 4x upscaler (x2 is x4, then halved)."""

from __future__ import annotations

from PIL import Image

from ...models.cache import ModelCache
from ...models.upscaler import load_upscaler, upscale_image
from ...progress import Progress, ProgressEvent

UPSCALER_KEY = ("upscaler",)
FACTORS = (1, 2, 4)


def upscaled(pictures: list[Image.Image], factor: int, models: ModelCache, progress: Progress | None = None) -> list[Image.Image]:
    """Each picture `factor` times larger (1, 2 or 4), by the built-in upscaler from `models`."""
    if factor == 1:
        return pictures
    if progress is not None:
        progress(ProgressEvent("upscale", message=f"upscaling x{factor}"))
    model = models.get(UPSCALER_KEY, load_upscaler)
    larger = [upscale_image(model, picture) for picture in pictures]
    if factor == 2:
        larger = [img.resize((img.width // 2, img.height // 2), Image.LANCZOS) for img in larger]
    return larger
