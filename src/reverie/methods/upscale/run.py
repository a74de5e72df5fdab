"""The upscale method: a picture made larger, keeping the settings it was made with.

The result carries the source picture's own settings (prompt, seed, sampler...) with the upscale
step added, so its metadata still says how it was made; a picture without settings gets only the
upscale step.
"""

from __future__ import annotations

import time

from ... import __version__
from ...models.cache import ModelCache
from ...outputs.files import Outputs
from ...outputs.metadata import read_png_info
from ...progress import Progress, ProgressEvent
from ...result import GeneratedImage, Result
from ..diffusion.images import load_image, to_rgb
from .pictures import check_upscale_fits, upscaled
from .request import UpscaleRequest, upscaler_name


def run(request: UpscaleRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> Result:
    started = time.perf_counter()
    source = to_rgb(load_image(request.init_image, "init_image"))
    check_upscale_fits(source.size, request.upscale)  # before the upscaler is loaded
    info = read_png_info(request.init_image) if isinstance(request.init_image, str) else {"parameters": None, "reverie": None}
    made = info["reverie"] or {}
    seed = int(made.get("seed", 0))
    settings = dict(made.get("settings") or {})
    prompt = settings.get("prompt", "")
    [picture] = upscaled([source], request.upscale, models, progress)
    step = {"factor": request.upscale, "upscaler": upscaler_name(request.upscale), "from_size": list(source.size)}
    metadata = {"format": made.get("format", 1), "seed": seed, "index": made.get("index", 0),
                "settings": settings | {"reverie_version": __version__},
                "upscaled": [*made.get("upscaled", []), step], "image_size": list(picture.size)}
    parameters = (info["parameters"] or "").rstrip()
    extra = f"Postprocess upscale by: {request.upscale}, Postprocess upscaler: {upscaler_name(request.upscale)}"
    parameters = f"{parameters}, {extra}" if parameters else extra
    image = GeneratedImage(picture, seed, 0, metadata, parameters)
    image.path = outputs.picture(picture, seed, prompt, parameters, metadata)
    progress(ProgressEvent("image", 1, 1, payload=image))
    return Result(request=request, images=[image], timings={"generate_s": time.perf_counter() - started})
