"""Dreaming: CLIP-steered search over a generator's inputs (VQGAN+CLIP, The Big Sleep, ...).

prompts.py (the `text:weight:stop | ...` syntax), guides.py (CLIP models that score pictures),
generators.py (what is optimized: latents, pixels, BigGAN vectors), sources.py (a --generator
reference -> a generator), cutouts.py, objective.py (the loss), run.py (the loop, saving,
continuing).
"""

from .run import Dream, DreamReport, start_dream

__all__ = ["Dream", "DreamReport", "start_dream"]
