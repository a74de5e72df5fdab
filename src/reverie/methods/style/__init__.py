"""Neural style transfer: a picture in the style of others.

request.py (StyleRequest), colour.py (keeping the content's colours), pictures.py (content and
style pictures at the working size), transfer.py (the optimisation: run folder, snapshots,
continuing exactly), fast.py (a trained style network in one pass), run.py (the method). The
feature networks, the loss and the style networks live in models/ (style_features.py,
style_objective.py, style_network.py), shared with training/style.py.
"""

from ..registry import Method
from .request import StyleRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="style", modes=("style",), request=StyleRequest, run=_run)

__all__ = ["METHOD", "StyleRequest"]
