"""Making pictures larger with the built-in upscalers: x2 and x4 each have a network of their own."""

from __future__ import annotations

import torch
from PIL import Image

from ...device import available_memory
from ...errors import OutOfMemory
from ...models.cache import ModelCache
from ...models.seamless import enlarged_seamlessly
from ...models.upscaler import load_upscaler, upscale_image, upscale_peak_bytes, wrap_margin
from ...progress import Progress, ProgressEvent

FACTORS = (1, 2, 4)
UPSCALER_DEVICE = torch.device("cpu")  # the built-in upscaler is small: it runs on the CPU


def upscale_memory(size: tuple[int, int], factor: int) -> int:
    """Bytes the upscaler needs to make a picture of `size` `factor` times larger (0 for 1)."""
    if factor == 1:
        return 0
    return upscale_peak_bytes(*size)  # measured for x4: the x2 network needs less


def check_upscale_fits(size: tuple[int, int], factor: int, field: str = "init_image") -> None:
    """Refuse, before any work, an upscale that would not fit in free memory; the message names
    the largest picture of the same shape that would."""
    need, free = upscale_memory(size, factor), available_memory(UPSCALER_DEVICE)
    if need <= free:
        return
    width, height = size
    low, high = 0, width  # the widest picture of this shape that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if upscale_memory((mid, max(1, mid * height // width)), factor) <= free:
            low = mid
        else:
            high = mid - 1
    fits = f"at most {low}x{max(1, low * height // width)} pixels" if low >= 16 else "a much smaller picture"
    raise OutOfMemory(
        f"{field}: making this {width}x{height} picture {factor} times larger needs about {need / 2**30:.1f} GiB "
        f"but only {free / 2**30:.1f} GiB is free; give {fits}, or a smaller upscale factor"
    )


def upscaled(pictures: list[Image.Image], factor: int, models: ModelCache, progress: Progress | None = None,
             wrap: bool = False) -> list[Image.Image]:
    """Each picture `factor` times larger (1, 2 or 4), by the built-in upscaler from `models`.
    Each is checked against free memory first and upscaled in tiles (models/upscaler.py).
    `wrap`: the pictures are seamless tiles, and the larger ones stay seamless
    (seamless.enlarged_seamlessly)."""
    if factor == 1:
        return pictures
    for picture in pictures:
        check_upscale_fits(picture.size, factor, "picture")
    if progress is not None:
        progress(ProgressEvent("upscale", message=f"upscaling x{factor}"))
    model = models.get(("upscaler", factor), lambda: load_upscaler(scale=factor))
    margin = wrap_margin(model) if wrap else 0
    return [enlarged_seamlessly(picture, factor, margin, lambda p: upscale_image(model, p)) for picture in pictures]
