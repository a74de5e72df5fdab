"""An upscale request: one picture and how many times larger to make it."""

from __future__ import annotations

from typing import Any, Literal

from ...request import BaseRequest


class UpscaleRequest(BaseRequest):
    """`init_image` made `upscale` times larger by the built-in upscaler."""

    IMAGE_FIELDS = ("init_image",)

    mode: Literal["upscale"] = "upscale"
    init_image: Any  # a path or a PIL image
    upscale: Literal[2, 4] = 4


def upscaler_name(factor: int) -> str:
    """The upscaler of `factor` as a picture's metadata names it (A1111's fields)."""
    return f"reverie {factor}x"
