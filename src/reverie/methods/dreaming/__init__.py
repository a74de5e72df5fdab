"""Dreaming: CLIP-steered search over a generator's inputs (VQGAN+CLIP, The Big Sleep, ...).

request.py (DreamRequest), prompts.py (the `text:weight:stop | ...` syntax), guides.py (CLIP
models that score pictures), generators.py (what is optimized: latents, pixels, BigGAN vectors),
sources.py (a --generator reference -> a generator), cutouts.py, objective.py (the loss),
prior.py (score distillation from a diffusion model), dream.py (the loop, saving, continuing),
run.py (the method: a new dream or a continued one).
"""

from ..registry import Method
from .request import DreamRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


def start_dream(request, device="cpu", models=None):
    """A Dream object to drive step by step (tests, notebooks)."""
    from .dream import start_dream as start

    return start(request, device, models)


METHOD = Method(name="dreaming", modes=("dream",), request=DreamRequest, run=_run)

__all__ = ["METHOD", "DreamRequest", "start_dream"]
