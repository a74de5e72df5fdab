"""Latent diffusion: txt2img, img2img, variations, inpaint and outpaint on diffusers pipelines."""

from ..registry import Method
from .request import MODES, GenerationRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="diffusion", modes=MODES, request=GenerationRequest, run=_run)
