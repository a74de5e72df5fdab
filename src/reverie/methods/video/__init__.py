"""Videos: walks, keyframed animation and dream videos."""

from ..registry import Method
from .request import VideoRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="video", modes=("video",), request=VideoRequest, run=_run)
