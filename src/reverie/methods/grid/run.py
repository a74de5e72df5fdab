"""The grid method: each cell made by its own method, exactly as a single run makes it, then one
labelled grid per z value.

1. Fix the grid's seed (every cell's, unless the seed axis varies it).
2. Run the cells one by one through `method_for(cell.mode)`, with the same model cache: each
   picture is written with its full metadata (plus the cell's axis values) as it is finished and
   reported with its index in the whole grid. A stop between cells or inside one keeps what is
   finished.
3. Lay the cells out on one labelled sheet per z value (x across, y down), written into
   `grids/`; a stopped grid gets a partial sheet (grey where a cell is missing).
A resumed request (`made`) makes again the cells it already has, without writing or reporting
them: the sheets need their pictures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from PIL import Image

from ... import __version__
from ...errors import BadRequest
from ...models.cache import ModelCache
from ...outputs.files import Outputs
from ...outputs.grid import make_grid
from ...outputs.metadata import reverie_metadata
from ...progress import Interrupted, Progress, ProgressEvent
from ...result import GeneratedImage, Result
from ..registry import method_for, refusal
from .axes import LABELS
from .request import Cell, GridRequest


@dataclass
class GridResult(Result):
    """`images`: every cell's pictures (their metadata's `grid` names the cell's axis values);
    `grids`: one labelled sheet per z value (partial when the grid was stopped)."""

    grids: list[GeneratedImage] = field(default_factory=list)


def run(request: GridRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> GridResult:
    started = time.perf_counter()
    request = request.with_seed()
    cells = request.cells()
    per_cell = request.cell_pictures()
    total = request.picture_count()
    _refuse_early(cells)
    result = GridResult(request=request)
    shown: dict[int, Image.Image] = {}  # cell number -> what the sheet shows for it
    try:
        for number, cell in enumerate(cells):
            if progress.stop_requested():
                raise Interrupted
            names = ", ".join(value["label"] for value in cell.values.values())
            progress(ProgressEvent("cell", number, len(cells), message=f"cell {number + 1}/{len(cells)}: {names}"))
            made = _run_cell(cell, number * per_cell, request, models, progress, outputs, result, total)
            if made.interrupted:
                raise Interrupted
            pictures = [image.image for image in made.images]
            shown[number] = pictures[0] if len(pictures) == 1 else make_grid(pictures)
            progress(ProgressEvent("cell", number + 1, len(cells), message=f"cell {number + 1}/{len(cells)}: {names}"))
    except (Interrupted, KeyboardInterrupt):
        result.interrupted = True
    if shown:
        _sheets(request, cells, shown, per_cell, progress, outputs, result, total)
    if result.grids:
        result.grid_path = result.grids[0].path
    result.timings["generate_s"] = time.perf_counter() - started
    return result


def _refuse_early(cells: list[Cell]) -> None:
    """A cell its method would refuse stops the grid now, naming the cell, before any cell runs
    (each method's `refusal`)."""
    for number, cell in enumerate(cells):
        error = refusal(cell.request)
        if error is not None:
            names = ", ".join(value["label"] for value in cell.values.values())
            raise BadRequest(error.field, f"cell {number + 1} ({names}) would be refused: {error.message}")


def _run_cell(cell: Cell, first: int, request: GridRequest, models: ModelCache, progress: Progress, outputs: Outputs,
              result: GridResult, total: int) -> Result:
    """Run one cell by its own method; its pictures are reported with their index in the grid
    (`first` + their index in the cell), those an earlier run made (`made`) not at all."""
    tags = {"grid": cell.values}

    def forward(event: ProgressEvent) -> None:
        if event.stage != "image":
            progress(event)
            return
        index = first + event.payload.index
        if index < request.made:
            return
        image = replace(event.payload, index=index, metadata=event.payload.metadata | tags)
        result.images.append(image)
        progress(ProgressEvent("image", index + 1, total, payload=image))

    already = first + cell.request.picture_count() <= request.made
    cell_outputs = Outputs(None if already else outputs.folder, grid=False, tags=tags)
    method = method_for(cell.request.mode)
    return method.run(cell.request, models, Progress(forward, progress.should_stop, progress.previews), cell_outputs)


def _sheets(request: GridRequest, cells: list[Cell], shown: dict[int, Image.Image], per_cell: int, progress: Progress,
            outputs: Outputs, result: GridResult, total: int) -> None:
    """One labelled sheet per z value; a complete one is reported as a picture of the grid."""
    columns, rows, sheets = request.shape()
    axes = request.axes()
    column_labels = [cell.values["x"]["label"] for cell in cells[:columns]] if "x" in axes else []
    row_labels = [cells[row * columns].values["y"]["label"] for row in range(rows)] if "y" in axes else []
    first_cell = result.images[0] if result.images else None
    for sheet in range(sheets):
        numbers = range(sheet * columns * rows, (sheet + 1) * columns * rows)
        if not any(number in shown for number in numbers):
            continue
        title = cells[numbers[0]].values["z"]["label"] if "z" in axes else ""
        picture = make_grid([shown.get(number) for number in numbers], columns=columns,
                            column_labels=column_labels, row_labels=row_labels, title=title)
        index = len(cells) * per_cell + sheet
        complete = all(number in shown for number in numbers)
        settings = request.settings() | {"reverie_version": __version__}
        metadata = reverie_metadata(settings, request.seed, index) | {
            "grid": {"sheet": sheet, "title": title, "complete": complete, "columns": column_labels, "rows": row_labels},
            "image_size": list(picture.size)}
        parameters = _parameters(request, first_cell)
        image = GeneratedImage(picture, request.seed, index, metadata, parameters)
        image.path = outputs.sheet(picture, request.base.get("prompt", "") or "grid", parameters, metadata)
        result.grids.append(image)
        if complete and index >= request.made:
            progress(ProgressEvent("image", index + 1, total, payload=image))


def _parameters(request: GridRequest, first: GeneratedImage | None) -> str:
    """A1111's text for a grid: the first cell's, then the axes as its X/Y/Z plot writes them."""
    text = first.parameters if first is not None else request.base.get("prompt", "")
    axes = [f'{which.upper()} Type: {LABELS.get(axis.field, axis.name)}, {which.upper()} Values: "{",".join(map(str, request.values(which)))}"'
            for which, axis in request.axes().items()]
    return ", ".join([text, "Script: X/Y/Z plot", *axes]) if axes else text

