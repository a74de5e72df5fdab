"""Latent diffusion: txt2img, img2img, variations, inpaint and outpaint on diffusers pipelines."""

from ..registry import Method
from .request import MODES, GenerationRequest


def _run(request, models, progress, outputs):
    from .request import resolve

    request = resolve(request)
    if request.progress_video:  # Midjourney's --video: the previews kept as a video
        from .progress_video import recorded

        return recorded(request, progress, outputs, lambda recording: _made(request, models, recording, outputs))
    return _made(request, models, progress, outputs)


def _made(request, models, progress, outputs):
    from . import compiled

    found = compiled.served(request)
    if found is not None:  # on OpenVINO alone (mini, SD): no torch imported
        try:
            return compiled.run(request, models, progress, outputs, found)
        except compiled.BundleUnavailable:  # before any picture: the torch pipeline makes them (int8: refuses)
            pass
    from .run import run

    return run(request, models, progress, outputs)


def _run_module(request):
    from . import compiled
    from .request import resolve

    return "compiled" if compiled.serves(resolve(request)) else "run"


def _refusal(request):
    """int8 runs only where the bundle path serves the request (compiled.serves, no torch):
    elsewhere run.py refuses it, and this says so first."""
    if request.quantize == "none":
        return None
    from . import compiled
    from ...errors import BadRequest
    from .request import resolve

    request = resolve(request)
    return None if compiled.serves(request) else BadRequest("quantize", compiled.int8_refused(request))


def _batch_key(request):
    from .shared import batch_key

    return batch_key(request)


def _run_shared(shares, models, limit):
    from .shared import run_shared

    return run_shared(shares, models, limit)


METHOD = Method(name="diffusion", modes=MODES, request=GenerationRequest, run=_run, batch_key=_batch_key,
                run_shared=_run_shared, run_module=_run_module, refusal=_refusal)
