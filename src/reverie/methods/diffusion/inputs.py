"""What a run starts from: the input picture and mask at the size the model works at, how its
results are brought back to the input's size, and the steps an image mode asks of its sampler.
Torch-free: the torch pipeline (batches.py) and the OpenVINO path (compiled.py) share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from .images import (composite, feathered_alpha, load_image, load_mask, outpaint_canvas, pad_to_multiple, round_to_8,
                     to_rgb, txt2img_size, working_factor)
from .request import GenerationRequest


@dataclass
class PreparedInput:
    """The picture and mask a run starts from, at the size the model works at, and what its
    results are brought back to."""

    width: int
    height: int
    image: Image.Image | None = None  # the input at width x height
    mask: Image.Image | None = None  # 255 = repaint, at width x height
    factor: int = 1  # results are enlarged this many times by the upscaler ...
    target: Image.Image | None = None  # ... to this picture's size (image modes), and its kept pixels put back
    target_mask: Image.Image | None = None
    crop: tuple[int, int] | None = None  # the size to cut the result back to (padding removed)


def prepare_input(request: GenerationRequest, components) -> PreparedInput:
    """Resolve the working size and load the init image / mask the mode needs. `components`: the
    model's ModelComponents, or compiled.ModelFacts (its `native_size`, `size_multiple` and
    `default_upscale`)."""
    if request.mode == "txt2img":
        width, height = txt2img_size(request, components)
        return PreparedInput(width, height, factor=request.upscale or components.default_upscale)
    image = to_rgb(load_image(request.init_image, "init_image"))
    if request.mode == "outpaint":
        image, mask, _origin = outpaint_canvas(image, *request.outpaint_extents)
    else:
        mask = load_mask(request.mask_image, image.size, request.mask_mode) if request.mode == "inpaint" else None
    if request.width or request.height:
        width = request.width or round_to_8(image.width * request.height / image.height)
        height = request.height or round_to_8(image.height * request.width / image.width)
        image = image.resize((width, height), Image.LANCZOS)
        mask = mask.resize((width, height), Image.NEAREST) if mask else None
        return PreparedInput(width, height, image, mask, target=image, target_mask=mask)
    factor = request.upscale or working_factor(image.size, components.native_size, components.default_upscale)
    if factor > 1:
        width, height = round_to_8(image.width / factor), round_to_8(image.height / factor)
        small = image.resize((width, height), Image.LANCZOS)
        small_mask = mask.resize((width, height), Image.NEAREST) if mask else None
        return PreparedInput(width, height, small, small_mask, factor, image, mask)
    # Keep the user's size exactly: pad to a multiple of 8 now, cut the padding off afterwards.
    padded = pad_to_multiple(image)
    padded_mask = None
    if mask is not None:
        # The padding is marked "keep" so nothing is painted that will be cut off anyway.
        padded_mask = Image.new("L", padded.size, 0)
        padded_mask.paste(mask, (0, 0))
    crop = image.size if image.size != padded.size else None
    return PreparedInput(padded.width, padded.height, padded, padded_mask, 1, padded, padded_mask, crop)


def denoising_steps(steps: int, strength: float) -> int:
    """Steps to ask of an img2img pipeline so it runs at least one step (it runs steps*strength)."""
    return max(steps, math.ceil(1 / strength)) if strength > 0 else steps


def bring_back(pictures: list[Image.Image], prepared: PreparedInput, mask_blur: int,
               enlarge: Callable[[list[Image.Image], int], list[Image.Image]]) -> list[Image.Image]:
    """A batch at the input's size: enlarged back when the model worked smaller (`enlarge`:
    pictures and a factor to those pictures that many times larger), the kept pixels of the input
    put back exactly (the seam feathered inward only, `mask_blur` pixels), padding cut off."""
    if prepared.factor > 1:
        pictures = enlarge(pictures, prepared.factor)
        if prepared.target is not None:
            size = prepared.target.size
            pictures = [p if p.size == size else p.resize(size, Image.LANCZOS) for p in pictures]
    if prepared.target_mask is not None:
        alpha = feathered_alpha(prepared.target_mask, mask_blur)
        pictures = [composite(prepared.target, picture, alpha) for picture in pictures]
    if prepared.crop:
        pictures = [picture.crop((0, 0) + prepared.crop) for picture in pictures]
    return pictures
