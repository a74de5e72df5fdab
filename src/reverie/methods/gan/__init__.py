"""GAN sampling: pictures from a trained GAN (`reverie train gan`), one seed each, and latent walks.

request.py (GANRequest, mode `gan`), run.py (the method), latents.py (a seed's z, slerp, the walk).
"""

from ..registry import Method
from .request import GANRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="gan", modes=("gan",), request=GANRequest, run=_run)

__all__ = ["METHOD", "GANRequest"]
