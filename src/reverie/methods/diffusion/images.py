"""Input pictures for the image modes: loading, sizing, masks and outpaint canvases; and the size a
txt2img request draws at."""

from __future__ import annotations

import math

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ...errors import BadRequest, ImageInputError
from ...prompts.parameters import aspect_ratio
from ...request import MAX_SIDE

MAX_INPUT_PIXELS = 4096 * 4096


def load_image(ref, field: str) -> Image.Image:
    """Open a path or take a PIL image; the message names `field` when it cannot be read."""
    if isinstance(ref, Image.Image):
        return ref
    path = Path(ref)
    if not path.is_file():
        raise ImageInputError(f"{field}: no file at {path}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise ImageInputError(f"{field}: {path} is {img.width}x{img.height}; the limit is 4096x4096 pixels")
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{field}: {path} is not a readable image ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white, as an artist expects a transparent sticker to look."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, "white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def pad_to_multiple(image: Image.Image, multiple: int = 8) -> Image.Image:
    """Extend the right and bottom edges (edge pixels repeated) to a multiple of `multiple`."""
    width = -(-image.width // multiple) * multiple
    height = -(-image.height // multiple) * multiple
    if (width, height) == image.size:
        return image
    array = np.asarray(image)
    pad = [(0, height - image.height), (0, width - image.width)] + [(0, 0)] * (array.ndim - 2)
    return Image.fromarray(np.pad(array, pad, mode="edge"))


def load_mask(ref, size: tuple[int, int], mask_mode: str = "white") -> Image.Image:
    """A binary L-mode mask (255 = repaint) at `size`; a mask of another size is refused.

    `mask_mode` says what marks the area to repaint: "white" pixels (the default), "black" ones
    (A1111's inverted masks), or "transparent" ones (DALL-E 2's edits erase what is to change).
    """
    mask = load_image(ref, "mask_image")
    if mask_mode == "transparent":
        mask = mask_from_alpha(mask.convert("RGBA") if "transparency" in mask.info else mask, "mask_image")
    elif mask.mode in ("RGBA", "LA") and mask.getextrema()[-1][0] < 255:
        # A painted layer: opaque strokes mark what to repaint.
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != size:  # one rule for every front door: a mask is never stretched over the picture
        raise ImageInputError(
            f"mask_image: the mask is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}; "
            "give a mask of the same size as the image"
        )
    if mask_mode == "black":
        mask = invert_mask(mask)
    return mask.point(lambda v: 255 if v >= 128 else 0)


def feathered_alpha(mask: Image.Image, blur: int) -> np.ndarray:
    """Blend weights in [0, 1]: 0 wherever the mask keeps the original, softening inward only.

    Blurring the mask both ways would let the new content bleed over pixels the user chose to
    keep; here every kept pixel stays exactly as it was.
    """
    binary = np.asarray(mask, dtype=np.float32) / 255.0
    if blur <= 0:
        return binary
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255.0
    # The blurred mask is about 0.5 on the boundary and 1 deep inside: stretch [0.5, 1] to [0, 1].
    return np.where(binary > 0, np.clip(2 * soft - 1, 0, 1), 0.0).astype(np.float32)


def composite(original: Image.Image, generated: Image.Image, alpha: np.ndarray) -> Image.Image:
    """original where alpha is 0, generated where it is 1, blended between."""
    a = alpha[..., None]
    mixed = np.asarray(original, dtype=np.float32) * (1 - a) + np.asarray(generated, dtype=np.float32) * a
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def outpaint_canvas(
    image: Image.Image, left: int, right: int, up: int, down: int
) -> tuple[Image.Image, Image.Image, tuple[int, int]]:
    """The extended canvas, its mask (255 on the new area) and where the original sits on it.

    New area starts as the nearest edge pixels, blurred, which gives img2img-style samplers a
    plausible colour to start from. The canvas is rounded up to a multiple of 8 on the sides
    that grow (or the right/bottom when none do on that axis).
    """
    width, height = image.width + left + right, image.height + up + down
    extra_w, extra_h = (-width) % 8, (-height) % 8
    if right or not left:
        right += extra_w
    else:
        left += extra_w
    if down or not up:
        down += extra_h
    else:
        up += extra_h
    array = np.asarray(image)
    padded = np.pad(array, [(up, down), (left, right), (0, 0)], mode="edge")
    canvas = Image.fromarray(padded).filter(ImageFilter.GaussianBlur(8))
    canvas.paste(image, (left, up))
    mask = Image.new("L", canvas.size, 255)
    mask.paste(0, (left, up, left + image.width, up + image.height))
    return canvas, mask, (left, up)


def invert_mask(mask: Image.Image) -> Image.Image:
    """White <-> black: for clients that mark what to keep rather than what to repaint (A1111's
    `inpainting_mask_invert`)."""
    return ImageOps.invert(mask.convert("L"))


def mask_from_alpha(picture: Image.Image, field: str) -> Image.Image:
    """White where `picture` is fully transparent (to repaint), black where it is not: DALL-E 2's
    edits mark the area to change by erasing it."""
    if "A" not in picture.getbands() or picture.getchannel("A").getextrema()[0] == 255:
        raise ImageInputError(f"{field}: needs transparent pixels (an alpha channel) where the picture should change")
    return picture.getchannel("A").point(lambda a: 255 if a == 0 else 0)


def working_factor(size: tuple[int, int], native: int, default_upscale: int) -> int:
    """How many times smaller than `size` a model that draws small (`default_upscale` > 1) should
    work on an input picture: the least of 1, 2, 4 that brings its longest side near the model's
    native size. The result is then enlarged back by the built-in upscaler. Other models work at
    the input's own size."""
    if default_upscale <= 1:
        return 1
    longest = max(size)
    return next((factor for factor in (1, 2, 4) if longest / factor <= native * 1.5), 4)


def round_to_8(value: float) -> int:
    return max(64, int(round(value / 8)) * 8)


def aspect_size(width_ratio: int, height_ratio: int, area: int, multiple: int) -> tuple[int, int]:
    """(width, height) of about `area` pixels with the shape width_ratio:height_ratio, each side
    rounded to the nearest multiple of `multiple` and at least the smallest such multiple of 64 px.
    reverie-mini (128 px, multiple 32): 16:9 -> 160x96, 2:3 -> 96x160, 1:1 -> 128x128."""
    exact_width = math.sqrt(area * width_ratio / height_ratio)
    exact_height = area / exact_width
    least = math.ceil(64 / multiple) * multiple
    return tuple(max(least, round(side / multiple) * multiple) for side in (exact_width, exact_height))


def txt2img_size(request, components) -> tuple[int, int]:
    """The size a txt2img request (a GenerationRequest) draws at, for a model (`components`: its
    `native_size` and `size_multiple`). Width and height when given (both: an aspect ratio
    beside them is only recorded; that is how a picture made with one is made again). With an
    aspect ratio and neither side: about the model's native area (native_size squared) in that
    shape, each side a multiple of `components.size_multiple`; with one side: the other from the
    ratio, a multiple of 8. Else the model's own size for the sides left out."""
    native = components.native_size
    if request.aspect_ratio is None or (request.width and request.height):
        return request.width or native, request.height or native
    ratio_width, ratio_height = aspect_ratio(request.aspect_ratio)
    if not request.width and not request.height:
        # Sides are also multiples of 8, as every request's are (a toy model's grid may be finer).
        return aspect_size(ratio_width, ratio_height, native * native, math.lcm(8, components.size_multiple))
    width = request.width or round_to_8(request.height * ratio_width / ratio_height)
    height = request.height or round_to_8(request.width * ratio_height / ratio_width)
    if max(width, height) > MAX_SIDE:
        raise BadRequest("aspect_ratio", f"{request.aspect_ratio} makes this picture {width}x{height}, past {MAX_SIDE} "
                                         "pixels a side; give a smaller width or height")
    return width, height
