"""Upscale: any picture 2 or 4 times larger with the built-in upscaler."""

from ..registry import Method
from .request import UpscaleRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="upscale", modes=("upscale",), request=UpscaleRequest, run=_run)
