"""Grids that compare: A1111's X/Y/Z plot. Every combination of up to three axes' values is a
cell, made by its own method as a single run makes it; one labelled grid per z value.

axes.py (what an axis varies, values and ranges, labels), request.py (GridRequest, mode `grid`,
its cells), run.py (the method).
"""

from ..registry import Method
from .request import GridRequest


def _run(request, models, progress, outputs):
    from .run import run

    return run(request, models, progress, outputs)


METHOD = Method(name="grid", modes=("grid",), request=GridRequest, run=_run)

__all__ = ["METHOD", "GridRequest"]
