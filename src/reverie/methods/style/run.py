"""The style method: an optimised transfer in its own run folder (new or continued), or a trained
style network applied in one pass."""

from __future__ import annotations

import time
from pathlib import Path

from ... import __version__
from ...device import pick_device
from ...models.cache import ModelCache
from ...outputs.files import Outputs
from ...outputs.metadata import a1111_parameters
from ...progress import Progress, ProgressEvent
from ...result import GeneratedImage, Result
from .fast import apply_style_network, style_network
from .pictures import working_picture
from .request import StyleRequest
from .transfer import StyleTransfer

CONTINUE_STEPS = 100  # when a continued run is not told how long to go on
NOT_CHANGES = {"mode", "continue_from", "device", "dtype", "made"}  # what a continuation request holds besides its changes


def run(request: StyleRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> Result:
    """Restyle `request.content_image`; the picture is written through `outputs` with its settings.

    An optimised transfer works in a run folder from `outputs` (NNNNN-content) or in the one
    `continue_from` names, saving snapshots and its state as it goes.
    """
    device = pick_device(request.device)
    if request.network is not None and request.continue_from is None:
        return _fast(request.with_seed(), models, progress, outputs, device)
    progress(ProgressEvent("load", message="loading the feature network"))
    if request.continue_from is not None:
        given = request.model_dump(exclude_unset=True)
        changes = {key: value for key, value in given.items() if key not in NOT_CHANGES}
        transfer = StyleTransfer.resume(request.continue_from, device, models, **changes)
        steps = given.get("steps", CONTINUE_STEPS)
        folder = Path(request.continue_from)
    else:
        transfer = StyleTransfer(request, device, models)
        transfer.check_memory()
        steps = request.steps
        name = Path(request.content_image).stem if isinstance(request.content_image, str) else "picture"
        folder = outputs.run_folder_for(f"style {name}")
    report = transfer.run(steps, folder, progress)
    image = report.images[0]
    image.path = outputs.picture(image.image, image.seed, f"style {folder.name}", image.parameters, image.metadata) or image.path
    progress(ProgressEvent("image", 1, 1, payload=image))
    return report


def _fast(request: StyleRequest, models: ModelCache, progress: Progress, outputs: Outputs, device) -> Result:
    started = time.perf_counter()
    progress(ProgressEvent("load", message="loading the style network"))
    network = style_network(models, request.network, device)
    picture = apply_style_network(network, working_picture(request.content_image, request.size), request.preserve_colour)
    content = Path(request.content_image).name if isinstance(request.content_image, str) else "<image>"
    parameters = a1111_parameters(f"style transfer: {content} by the style network {request.network}", "", {
        "Seed": request.seed, "Size": f"{picture.width}x{picture.height}", "Style network": request.network,
        "Preserve colour": "yes" if request.preserve_colour else None,
    })
    settings = request.settings() | {"reverie_version": __version__}
    image = GeneratedImage(picture, request.seed, 0, {"format": 1, "seed": request.seed, "index": 0, "settings": settings},
                           parameters)
    image.path = outputs.picture(picture, request.seed, f"style {Path(request.network).name}", parameters, image.metadata)
    progress(ProgressEvent("image", 1, 1, payload=image))
    return Result(request=request, images=[image], timings={"generate_s": time.perf_counter() - started})
